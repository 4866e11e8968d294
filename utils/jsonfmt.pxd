# Compiled with the matching modules (see setup.py); the .py stays the source.
cimport cython

cpdef str format_real(x)
@cython.locals(text=str, mantissa=str, exp=str, sign=str)
cpdef str _format_real(x)
