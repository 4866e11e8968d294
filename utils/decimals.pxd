# Types for the compiled build of decimals.py (see setup.py); the .py stays the source.
cimport cython

cpdef str to_display(d)
@cython.locals(last=Py_ssize_t)
cpdef str display_of(str text)

cdef class KnownTexts:
    cdef public Py_ssize_t kept
    cdef public list entries

    @cython.locals(entry=tuple, raw=str)
    cpdef tuple of(self, value)
