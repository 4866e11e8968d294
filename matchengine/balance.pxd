# Types for the compiled build of balance.py (see setup.py); the .py stays the source.
cimport cython

cdef object _total(object available, object frozen)

cdef class AssetBalances:
    cdef public object name, fees, exp, cut, room
    cdef public dict entries

    @cython.locals(entries=dict, entry=tuple)
    cpdef bint move(self, object user_id, object amount, int source, int target) except -1

cdef class Balances:
    cdef public dict assets, by_asset

    @cython.locals(balances=AssetBalances)
    cdef tuple _entry(self, object user_id, object asset)
    @cython.locals(entry=tuple)
    cpdef available(self, object user_id, object asset)
    @cython.locals(entry=tuple)
    cpdef total(self, object user_id, object asset)
    @cython.locals(entry=tuple, index=Py_ssize_t, entries=dict, charged=bint)
    cpdef trade(self, object user_id, int kind, AssetBalances gives, object given,
                AssetBalances gets, object got, object fee, bint totals=*)
    @cython.locals(balances=AssetBalances)
    cpdef bint freeze(self, object user_id, object asset, object amount) except -1
    @cython.locals(balances=AssetBalances)
    cpdef bint unfreeze(self, object user_id, object asset, object amount) except -1
