# Types for the compiled build of decimals.py (see setup.py); the .py stays the source.
cimport cython

cpdef str to_display(d)
@cython.locals(last=Py_ssize_t)
cpdef str display_of(str text)
