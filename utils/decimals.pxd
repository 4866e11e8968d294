# Types for the compiled build of decimals.py (see setup.py); the .py stays the source.
cimport cython

@cython.locals(text=str, last=Py_ssize_t)
cpdef str to_display(d)
