# Types for the compiled build of effects.py (see setup.py); the .py stays the source.
cimport cython

from matchengine.balance cimport AssetBalances, Balances
from utils.decimals cimport KnownTexts, display_of, negated, raw_among
from utils.jsonfmt cimport TextTable, format_real, int_text
from matchengine.market cimport Market, Order

cdef long SHARDS
cdef long _shard(long number) except? -1

cdef TextTable _texts
cdef KnownTexts _fee_texts

cdef class Effects:
    cdef public Balances balances
    cdef public list history, messages
    cdef public object _fill
    cdef public str _amount_shown, _price_shown, _event_text
    cdef public Order _event_order
    cdef public Order _latest, _before
    cdef public str _latest_id, _before_id

    @cython.locals(text=str)
    cdef str _id_text(self, Order order)
    @cython.locals(text=str)
    cpdef str order_text(self, Order order)

    @cython.locals(history=list, fill=tuple, amount_text=str,
                   market_text=str, price_text=str, rate_text=str)
    cpdef trade_balances(self, now, Order order, Market market, price, amount,
                         AssetBalances gives, given, AssetBalances gets, got, fee, fee_rate,
                         tuple totals)
    @cython.locals(event_text=str)
    cpdef order_event(self, event, Order order, Market market)
    @cython.locals(fill=tuple)
    cpdef order_finished(self, Order order)
    @cython.locals(history=list, fill=tuple, price_raw=str, amount_raw=str, deal_raw=str,
                   ask_fee_raw=str, bid_fee_raw=str, side_text=str)
    cpdef deal(self, now, deal_id, Market market, Order ask, Order bid, price, amount, deal,
               ask_fee, bid_fee, taker_side)
