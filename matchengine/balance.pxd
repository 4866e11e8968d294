# Types for the compiled build of balance.py (see setup.py); the .py stays the source.
cimport cython

cdef object _total(object available, object frozen)

cdef class Balances:
    cdef public dict assets, entries, fees, _exp, _cut, _room

    @cython.locals(entry=tuple, entries=dict)
    cpdef available(self, object user_id, object asset)
    @cython.locals(entry=tuple)
    cpdef total(self, object user_id, object asset)
    @cython.locals(entry=tuple, index=Py_ssize_t, entries=dict, cut=dict, charged=bint)
    cpdef trade(self, object user_id, int kind, object gives, object given, object gets,
                object got, object fee, bint totals=*)
    cpdef bint freeze(self, object user_id, object asset, object amount)
    cpdef bint unfreeze(self, object user_id, object asset, object amount)
    @cython.locals(entry=tuple)
    cpdef bint _move(self, object user_id, object asset, object amount, int source,
                     int target)
