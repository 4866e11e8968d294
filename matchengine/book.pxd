# Types for the compiled build of book.py (see setup.py); the .py stays the source.
cimport cython

cdef class Level:
    cdef public object price, amount
    cdef public dict orders

cdef class Book:
    cdef public bint highest_first
    cdef public dict levels
    cdef public list _chunks, _lasts

    @cython.locals(chunks=list)
    cpdef Level best(self)
    @cython.locals(chunks=list, chunk=list, index=Py_ssize_t, position=Py_ssize_t)
    cpdef Level after(self, Level level)
    cdef bint _before(self, price, other) except -1
    @cython.locals(lasts=list, low=Py_ssize_t, high=Py_ssize_t, mid=Py_ssize_t)
    cdef Py_ssize_t _chunk_of(self, price) except -1
    @cython.locals(low=Py_ssize_t, high=Py_ssize_t, mid=Py_ssize_t, level=Level)
    cdef Py_ssize_t _index_in(self, list chunk, price) except -1
    @cython.locals(chunks=list, chunk=list, last=Py_ssize_t, index=Py_ssize_t)
    cpdef add(self, Level level)
    @cython.locals(chunks=list, chunk=list, last=Py_ssize_t, index=Py_ssize_t, end=Level)
    cpdef remove(self, Level level)
    @cython.locals(chunk=list, half=Py_ssize_t, level=Level)
    cdef _split(self, Py_ssize_t index)
    @cython.locals(chunk=list)
    cdef _join(self, Py_ssize_t index)
