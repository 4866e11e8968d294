# Types for the compiled build of engine.py (see setup.py); the .py stays the source.
cimport cython

from matchengine.balance cimport Balances
from matchengine.effects cimport Effects
from matchengine.market cimport Market, Order, new_order
from utils.jsonfmt cimport TextTable

cpdef _error(code, message)
cpdef _int(value)
cpdef _str(value)
@cython.locals(cache=dict, cached=tuple)
cpdef tuple _decimal_texts(value, prec)
cpdef _decimal(value, prec)
@cython.locals(cache=dict)
cpdef _fee(value, prec)
cpdef _source(value)
cdef TextTable _texts

cdef class Engine:
    cdef public dict assets, markets, dedup, show_exp, _depth_cache, handlers
    cdef public Balances balances
    cdef public Effects effects
    cdef public object order_id, deal_id, context

    cpdef use_context(self)

    @cython.locals(market=Market)
    cpdef Market _market(self, value)
    @cython.locals(market=Market)
    cpdef tuple _order_head(self, params, count)
    @cython.locals(market=Market, order=Order, amount_texts=tuple, price_texts=tuple)
    cpdef put_limit(self, params, now, real)
    @cython.locals(market=Market, order=Order, amount_texts=tuple)
    cpdef put_market(self, params, now, real)
    @cython.locals(market=Market, order=Order)
    cpdef cancel(self, params, now, real)
