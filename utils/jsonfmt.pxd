# Compiled with the matching modules (see setup.py); the .py stays the source.
