# -*- test-case-name: matchengine.test.test_engine -*-
"""One market's order book and its matching, without I/O.

Each side is a `Book` of price levels in matching priority; a resting order points to its
level, and the market to the best level of each side (`top_ask`, `top_bid`), which matching
takes at every fill.  Matching follows the original to the digit: the maker's price, fees on
what each side receives, market buys spending money, and the same order of balance
movements, history rows and messages.

Side effects leave through `sink` (see `matchengine.effects`); a market built with no sink
only changes memory, which is how the operation log is replayed.
"""

from decimal import ROUND_DOWN

try:
    import cython
except ImportError:         # run uncompiled, without Cython installed
    from utils import pure_cython as cython

from matchengine.balance import AVAILABLE, FREEZE
from matchengine.book import Book, Level
from utils.decimals import (RATE_TEXTS, WIDE, ZERO, display_of, exponent, raw_among,
                            to_display, to_raw)
from utils.jsonfmt import DIGITS, SCALAR_TEXTS, format_real, int_text, quote

# the shared texts of fee rates, markets and sources (typed for the compiled build)
_fee_texts = RATE_TEXTS
_texts = SCALAR_TEXTS

LIMIT, MARKET = 1, 2
ASK, BID = 1, 2
EVENT_PUT, EVENT_UPDATE, EVENT_FINISH = 1, 2, 3


def _first_order(level):
    """The oldest order of a level: the first in matching priority (a level's orders are
    kept in the order they came).  A loop rather than `next(iter(...))`, which the
    compiled build runs without making a view and an iterator."""
    for order in level.orders.values():
        return order
    return None


# Compiled, an order is not tracked by the garbage collector: a book holds up to millions of
# them, and the only cycle one takes part in (the order and its level's dict) is broken when
# it leaves the level, so reference counting frees every order.  A full collection over a
# million tracked ones held the matching thread for about half a second.
@cython.no_gc
@cython.cclass
class Order:
    __slots__ = ("id", "type", "side", "create_time", "update_time", "user_id", "market",
                 "source", "price", "amount", "taker_fee", "maker_fee", "left", "freeze",
                 "deal_stock", "deal_money", "deal_fee", "level", "price_raw", "amount_raw",
                 "_head", "_mid")

    def __init__(self, order_id, order_type, side, now, user_id, market, source, price,
                 amount, taker_fee, maker_fee, price_raw=None, amount_raw=None):
        self._setup(order_id, order_type, side, now, user_id, market, source, price, amount,
                    taker_fee, maker_fee, price_raw, amount_raw)

    def _setup(self, order_id, order_type, side, now, user_id, market, source, price,
               amount, taker_fee, maker_fee, price_raw, amount_raw):
        self.id = order_id
        self.type = order_type
        self.side = side
        self.create_time = self.update_time = now
        self.user_id = user_id
        self.market = market
        self.source = source
        self.price = price
        self.amount = amount
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.left = amount
        self.freeze = ZERO
        self.deal_stock = ZERO
        self.deal_money = ZERO
        self.deal_fee = ZERO
        self.level = None          # the book level it rests in
        # the raw texts of price and amount when the caller has them (None: made when
        # needed), shared by the orders of the same request texts
        self.price_raw = price_raw
        self.amount_raw = amount_raw
        self._head = None
        self._mid = None

    def info_json(self, known=None, id_text=None) -> str:
        """The order info as JSON text, built from cached pieces of its fixed fields.
        `known` gives texts already made of some of its numbers (see `raw_among`), and
        `id_text` the text of its id, when the caller has it."""
        amount = None       # the amount's text, when made here
        if self._head is None:
            if id_text is None:
                id_text = int_text(self.id)
            kind, side = DIGITS[self.type], DIGITS[self.side]
            if self.source is None:
                self._head = '{"id": %s, "market": %s, "type": %s, "side": %s, "user": %s, ' \
                             '"ctime": %s, "mtime": ' % (
                                 id_text, _texts.of(self.market), kind, side,
                                 _texts.of(self.user_id), format_real(self.create_time))
            else:
                self._head = '{"id": %s, "market": %s, "source": %s, "type": %s, "side": %s, ' \
                             '"user": %s, "ctime": %s, "mtime": ' % (
                                 id_text, _texts.of(self.market), _texts.of(self.source), kind,
                                 side, _texts.of(self.user_id), format_real(self.create_time))
            amount = display_of(self.raw_amount())
            taker_fee, maker_fee = (_fee_texts.of(self.taker_fee)[2],
                                    _fee_texts.of(self.maker_fee)[2])
            self._mid = ', "price": "%s", "amount": "%s", "taker_fee": "%s", ' \
                        '"maker_fee": "%s", "left": "' % (
                            display_of(self.raw_price()), amount, taker_fee, maker_fee)
        if amount is not None and self.left is self.amount:
            left = amount
        else:
            left = to_display(self.left)
        if self.deal_stock is ZERO:     # no fill yet: the deal sums are still the shared zero
            return '%s%s%s%s", "deal_stock": "0", "deal_money": "0", "deal_fee": "0"}' % (
                self._head, format_real(self.update_time), self._mid, left)
        return '%s%s%s%s", "deal_stock": "%s", "deal_money": "%s", "deal_fee": "%s"}' % (
            self._head, format_real(self.update_time), self._mid, left,
            display_of(raw_among(known, self.deal_stock)),
            display_of(raw_among(known, self.deal_money)),
            display_of(raw_among(known, self.deal_fee)))

    def raw_price(self):
        """The price's raw text."""
        return to_raw(self.price) if self.price_raw is None else self.price_raw

    def raw_amount(self):
        """The amount's raw text."""
        return to_raw(self.amount) if self.amount_raw is None else self.amount_raw

    def info(self):
        """The order info object of replies and messages, keys in the original's order."""
        info = {"id": self.id, "market": self.market}
        if self.source is not None:
            info["source"] = self.source
        info.update((
            ("type", self.type), ("side", self.side), ("user", self.user_id),
            ("ctime", self.create_time), ("mtime", self.update_time),
            ("price", to_display(self.price)), ("amount", to_display(self.amount)),
            ("taker_fee", to_display(self.taker_fee)), ("maker_fee", to_display(self.maker_fee)),
            ("left", to_display(self.left)), ("deal_stock", to_display(self.deal_stock)),
            ("deal_money", to_display(self.deal_money)), ("deal_fee", to_display(self.deal_fee))))
        return info


def new_order(order_id, order_type, side, now, user_id, market, source, price, amount,
              taker_fee, maker_fee, price_raw, amount_raw):
    """`Order(...)` for the engine's order commands: compiled, a C call that fills the new
    order's fields without packing its thirteen arguments for `__init__`."""
    order = Order.__new__(Order)
    order._setup(order_id, order_type, side, now, user_id, market, source, price, amount,
                 taker_fee, maker_fee, price_raw, amount_raw)
    return order


class Market:
    """A market's books, orders by id and by user; matching against `balances`."""

    def __init__(self, desc, balances):
        self.desc = desc
        self.name = desc.name
        self.stock = desc.stock
        self.money = desc.money
        # the three names as JSON strings, for the messages
        self.quoted_name, self.quoted_stock, self.quoted_money = (
            quote(desc.name), quote(desc.stock), quote(desc.money))
        # the precisions and the least amount, which every order reads
        self.stock_prec, self.money_prec, self.fee_prec = (
            desc.stock_prec, desc.money_prec, desc.fee_prec)
        self.min_amount = desc.min_amount
        self.stock_exp = exponent(desc.stock_prec)
        # At positive precisions, a fill's amount, deal and positive fee have negative
        # exponents, so zero plus each is that same value to the digit: an order's first fill
        # makes its sums the fill's own objects, whose texts the history rows and messages
        # already hold (see `Effects`, `_add_fill`).  A zero precision allows parsed values
        # with positive exponents, whose sum with zero is written otherwise.
        self.first_fill_kept = desc.stock_prec > 0 and desc.money_prec > 0
        self.balances = balances
        # the entries of the two assets, which matching moves
        self.stock_balances = balances.by_asset[desc.stock]
        self.money_balances = balances.by_asset[desc.money]
        self.asks = Book(False)
        self.bids = Book(True)
        self.top_ask = None        # the best level of `asks`, None when it is empty
        self.top_bid = None        # the best level of `bids`, None when it is empty
        self.orders = {}           # id -> Order
        self.users = {}            # user_id -> {id: Order}, ascending id
        self.version = 0           # bumped by every command that changes the book

    # -- book --------------------------------------------------------------------------

    def insert(self, order):
        """Put a resting order into the book and the indexes (freeze is the caller's)."""
        order_id, price = order.id, order.price
        book = self.asks if order.side == ASK else self.bids
        level = book.levels.get(price)
        if level is None:
            level = Level(price)
            book.add(level)
            if order.side == ASK:
                self.top_ask = book.best()
            else:
                self.top_bid = book.best()
        order.level = level
        level.orders[order_id] = order
        level.amount += order.left
        self.orders[order_id] = order
        users = self.users
        user = users.get(order.user_id)
        if user is None:
            user = users[order.user_id] = {}
        user[order_id] = order

    def remove(self, order):
        level = order.level
        order.level = None
        del level.orders[order.id]
        if level.orders:
            level.amount -= order.left
        elif order.side == ASK:
            self.asks.remove(level)
            self.top_ask = self.asks.best()
        else:
            self.bids.remove(level)
            self.top_bid = self.bids.best()
        del self.orders[order.id]
        user = self.users[order.user_id]
        del user[order.id]
        if not user:
            del self.users[order.user_id]

    def side_book(self, side):
        return self.asks if side == ASK else self.bids

    def iter_side(self, side):
        """Resting orders of one side in matching priority."""
        for level in self.side_book(side).values():
            yield from level.orders.values()

    def best(self, side):
        """The first order of a side in matching priority, None when the side is empty."""
        level = self.top_ask if side == ASK else self.top_bid
        return None if level is None else _first_order(level)

    def user_orders(self, user_id):
        """The user's open orders, newest first."""
        return list(reversed(self.users.get(user_id, {}).values()))

    def side_summary(self, side):
        book = self.side_book(side)
        count, amount = 0, ZERO
        for level in book.values():
            count += len(level.orders)
            amount += level.amount
        return count, amount

    def depth(self, side, limit, interval):
        """[[price, amount], ...] best first, at most `limit` levels, merged by `interval`."""
        book = self.side_book(side)
        out = []
        if limit <= 0:
            return out
        if not interval:
            for level in book.values():
                if len(out) >= limit:
                    break
                out.append([to_display(level.price), to_display(level.amount)])
            return out
        current, total = None, ZERO
        for level in book.values():
            if current is not None and (level.price <= current if side == ASK
                                        else level.price >= current):
                total += level.amount
                continue
            if current is not None:
                out.append([to_display(current), to_display(total)])
                if len(out) >= limit:
                    return out
            quotient, remainder = divmod(level.price, interval)
            current = quotient * interval
            if side == ASK and remainder:
                current += interval
            total = ZERO + level.amount
        if current is not None and len(out) < limit:
            out.append([to_display(current), to_display(total)])
        return out

    # -- finishing ---------------------------------------------------------------------

    def finish(self, order, sink, real):
        """Take a resting order off the book: unfreeze what it holds, record its history."""
        self.remove(order)
        if order.freeze > ZERO:
            (self.stock_balances if order.side == ASK else self.money_balances).move(
                order.user_id, order.freeze, 1, 0)
        if real and order.deal_stock:       # never negative: the sum of its fills
            sink.order_finished(order)

    def cancel(self, order, sink, real):
        self.version += 1
        if real:
            sink.order_event(EVENT_FINISH, order, self)
        self.finish(order, sink, real)

    # -- matching ----------------------------------------------------------------------

    def put_limit(self, order, sink, real, next_deal_id):
        """Match a new limit order, then rest what is left.  Returns the deal counter."""
        self.version += 1
        if order.side == ASK:
            next_deal_id = self._sell(order, sink, real, next_deal_id)
        else:
            next_deal_id = self._buy(order, sink, real, next_deal_id)
        if not order.left:
            if real:
                sink.order_finished(order)
                sink.order_event(EVENT_FINISH, order, self)
            return next_deal_id
        if real:
            sink.order_event(EVENT_PUT, order, self)
        if order.side == ASK:
            order.freeze = order.left
            self.stock_balances.move(order.user_id, order.left, 0, 1)
        else:
            order.freeze = order.price * order.left
            self.money_balances.move(order.user_id, order.freeze, 0, 1)
        self.insert(order)
        return next_deal_id

    def put_market(self, order, sink, real, next_deal_id):
        """Match a market order against the book; it never rests.  Returns the deal counter."""
        self.version += 1
        if order.side == ASK:
            next_deal_id = self._sell(order, sink, real, next_deal_id)
        else:
            next_deal_id = self._market_buy(order, sink, real, next_deal_id)
        if real:
            sink.order_finished(order)
            sink.order_event(EVENT_FINISH, order, self)
        return next_deal_id

    def _sell(self, taker, sink, real, deal_id):
        stock, money = self.stock_balances, self.money_balances
        limit = taker.price if taker.type == LIMIT else None
        now = taker.update_time
        while taker.left:
            level = self.top_bid
            if level is None:
                break
            maker = _first_order(level)
            price = maker.price
            if limit is not None and limit > price:
                break
            amount = taker.left if taker.left < maker.left else maker.left
            deal = price * amount
            ask_fee = deal * taker.taker_fee
            bid_fee = amount * maker.maker_fee
            maker.update_time = now
            deal_id += 1
            if real:
                sink.deal(now, deal_id, self, taker, maker, price, amount, deal, ask_fee,
                          bid_fee, ASK)
            taker.left -= amount
            self._add_fill(taker, amount, deal, ask_fee)
            maker.left -= amount
            maker.freeze -= deal
            self._add_fill(maker, amount, deal, bid_fee)
            level.amount -= amount
            if real:
                self._settle(taker, AVAILABLE, stock, amount, money, deal, ask_fee,
                             taker.taker_fee, price, amount, now, sink)
                self._settle(maker, FREEZE, money, deal, stock, amount, bid_fee,
                             maker.maker_fee, price, amount, now, sink)
            else:
                balances = self.balances
                balances.trade(taker.user_id, AVAILABLE, stock, amount, money, deal, ask_fee)
                balances.trade(maker.user_id, FREEZE, money, deal, stock, amount, bid_fee)
            self._maker_done(maker, sink, real)
        return deal_id

    def _buy(self, taker, sink, real, deal_id):
        limit = taker.price
        now = taker.update_time
        while taker.left:
            level = self.top_ask
            if level is None:
                break
            maker = _first_order(level)
            price = maker.price
            if limit < price:
                break
            amount = taker.left if taker.left < maker.left else maker.left
            deal_id = self._bid_deal(taker, maker, level, price, amount, now, sink, real,
                                     deal_id)
        return deal_id

    def _market_buy(self, taker, sink, real, deal_id):
        step = self.stock_exp
        now = taker.update_time
        maker = None
        while taker.left:
            if maker is None or not maker.left:
                level = self.top_ask
                if level is None:
                    break
                maker = _first_order(level)
            else:
                # the maker is left partly filled: as the original, which walks the asks
                # once, go on to the next one (the money left buys no more at its price,
                # unless a deal's digits were cut to the context's 34)
                maker = self._next_ask(maker)
                if maker is None:
                    break
                level = maker.level
            price = maker.price
            amount = (taker.left / price).quantize(step, ROUND_DOWN, WIDE)
            while amount * price > taker.left:
                amount -= step
            if maker.left < amount:
                amount = maker.left
            if not amount:
                break
            deal_id = self._bid_deal(taker, maker, level, price, amount, now, sink, real,
                                     deal_id)
        return deal_id

    def _next_ask(self, order):
        """The ask that follows `order` in matching priority, None after the last."""
        found = False
        for other in order.level.orders.values():
            if found:
                return other
            found = other is order
        level = self.asks.after(order.level)
        return None if level is None else _first_order(level)

    def _bid_deal(self, taker, maker, level, price, amount, now, sink, real, deal_id):
        stock, money = self.stock_balances, self.money_balances
        deal = price * amount
        ask_fee = deal * maker.maker_fee
        bid_fee = amount * taker.taker_fee
        maker.update_time = now
        deal_id += 1
        if real:
            sink.deal(now, deal_id, self, maker, taker, price, amount, deal, ask_fee, bid_fee,
                      BID)
        taker.left -= deal if taker.type == MARKET else amount
        self._add_fill(taker, amount, deal, bid_fee)
        maker.left -= amount
        maker.freeze -= amount
        self._add_fill(maker, amount, deal, ask_fee)
        level.amount -= amount
        if real:
            self._settle(taker, AVAILABLE, money, deal, stock, amount, bid_fee,
                         taker.taker_fee, price, amount, now, sink)
            self._settle(maker, FREEZE, stock, amount, money, deal, ask_fee, maker.maker_fee,
                         price, amount, now, sink)
        else:
            balances = self.balances
            balances.trade(taker.user_id, AVAILABLE, money, deal, stock, amount, bid_fee)
            balances.trade(maker.user_id, FREEZE, stock, amount, money, deal, ask_fee)
        self._maker_done(maker, sink, real)
        return deal_id

    def _add_fill(self, order, amount, deal, fee):
        """Add a fill's amount, deal and fee to the order's sums (see `first_fill_kept`).
        A fee is kept only when positive (rates are never negative, so when not zero): a
        zero rate may be written "-0", and a negative zero plus zero is a positive one."""
        if order.deal_stock is ZERO and self.first_fill_kept:
            order.deal_stock, order.deal_money = amount, deal
            order.deal_fee = fee if fee else order.deal_fee + fee
        else:
            order.deal_stock += amount
            order.deal_money += deal
            order.deal_fee += fee

    def _settle(self, order, kind, gives, given, gets, got, fee, fee_rate, price, amount, now,
                sink):
        """One side of a fill: `given` of `gives` leaves its `kind` balance, `got` of `gets`
        arrives available, then the fee leaves it, with a history row for each movement.  A
        replay makes no rows: it calls `Balances.trade` alone."""
        sink.trade_balances(now, order, self, price, amount, gives, given, gets, got, fee,
                            fee_rate, self.balances.trade(order.user_id, kind, gives, given,
                                                          gets, got, fee, True))

    def _maker_done(self, maker, sink, real):
        if not maker.left:
            if real:
                sink.order_event(EVENT_FINISH, maker, self)
            self.finish(maker, sink, real)
        elif real:
            sink.order_event(EVENT_UPDATE, maker, self)
