# Types for the compiled build of market.py (see setup.py); the .py stays the source.
cimport cython

from matchengine.balance cimport AssetBalances, Balances
from matchengine.book cimport Book, Level
from utils.decimals cimport KnownTexts, display_of, raw_among, to_display
from utils.jsonfmt cimport TextTable, format_real, int_text
from matchengine.effects cimport Effects

cdef KnownTexts _fee_texts
cdef TextTable _texts

cdef object _first_order(Level level)
@cython.locals(order=Order)
cpdef Order new_order(order_id, order_type, side, now, user_id, market, source, price, amount,
                      taker_fee, maker_fee, str price_raw, str amount_raw)

cdef class Order:
    cdef public object id, type, side, create_time, update_time, user_id, market, source
    cdef public object price, amount, taker_fee, maker_fee, left, freeze
    cdef public object deal_stock, deal_money, deal_fee
    cdef public Level level
    cdef public str price_raw, amount_raw, _head, _mid

    cdef _setup(self, order_id, order_type, side, now, user_id, market, source, price,
                amount, taker_fee, maker_fee, str price_raw, str amount_raw)
    @cython.locals(amount=str, left=str, kind=str, side=str, taker_fee=str,
                   maker_fee=str)
    cpdef str info_json(self, tuple known=*, str id_text=*)
    cpdef str raw_price(self)
    cpdef str raw_amount(self)

cdef class Market:
    cdef public object desc, name, stock, money
    cdef public str quoted_name, quoted_stock, quoted_money
    cdef public object stock_prec, money_prec, fee_prec, min_amount, stock_exp, version
    cdef public bint first_fill_kept
    cdef public Book asks, bids
    cdef public Balances balances
    cdef public AssetBalances stock_balances, money_balances
    cdef public dict orders, users
    cdef public Level top_ask, top_bid

    @cython.locals(book=Book, level=Level, user=dict, users=dict)
    cpdef insert(self, Order order)
    @cython.locals(level=Level, user=dict)
    cpdef remove(self, Order order)
    cpdef finish(self, Order order, Effects sink, bint real)
    cpdef cancel(self, Order order, Effects sink, bint real)
    cpdef put_limit(self, Order order, Effects sink, bint real, next_deal_id)
    cpdef put_market(self, Order order, Effects sink, bint real, next_deal_id)
    @cython.locals(level=Level, maker=Order, balances=Balances, stock=AssetBalances,
                   money=AssetBalances)
    cpdef _sell(self, Order taker, Effects sink, bint real, deal_id)
    @cython.locals(level=Level, maker=Order)
    cpdef _buy(self, Order taker, Effects sink, bint real, deal_id)
    @cython.locals(level=Level, maker=Order)
    cpdef _market_buy(self, Order taker, Effects sink, bint real, deal_id)
    @cython.locals(other=Order, level=Level)
    cpdef Order _next_ask(self, Order order)
    @cython.locals(balances=Balances, stock=AssetBalances, money=AssetBalances)
    cpdef _bid_deal(self, Order taker, Order maker, Level level, price, amount, now,
                    Effects sink, bint real, deal_id)
    cdef _add_fill(self, Order order, amount, deal, fee)
    cpdef _settle(self, Order order, int kind, AssetBalances gives, given, AssetBalances gets,
                  got, fee, fee_rate, price, amount, now, Effects sink)
    cpdef _maker_done(self, Order maker, Effects sink, bint real)
