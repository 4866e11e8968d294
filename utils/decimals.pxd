# Types for the compiled build of decimals.py (see setup.py); the .py stays the source.
cimport cython

@cython.locals(text=str)
cpdef str to_display(d)
