# -*- test-case-name: matchengine.test.test_engine -*-
"""The matchengine's commands over balances and markets, without I/O.

`Engine.execute(command, params, now)` validates a request as the original does, changes
state, and returns the result object; refusals raise `RPCError` with the original's code and
message and change nothing.  A successful write also returns its operation-log entry
(`(method, params)`), and leaves its history rows and messages in `engine.effects`.

`Engine.replay(method, params, now)` re-executes an operation-log entry: same code path,
no history, no messages, no log entry (the original's "not real" mode); with `rebuild`, it
leaves the entry's history rows and messages in `engine.effects` as the write made them
(`matchengine.rebuild`).

Each command takes `real`: REPLAY (false), LIVE (true: the checks of a new request, and its
effects) or REBUILD (a logged entry, and its effects).
"""

import collections
import decimal
import json
import sys
from itertools import islice

from matchengine.balance import AVAILABLE, FREEZE, Balances
from matchengine.effects import Effects
from matchengine.market import ASK, BID, LIMIT, MARKET, Market, Order, new_order
from utils import decimals
from utils.decimals import WIDE, ZERO, exponent, to_display, to_raw
from utils.jsonfmt import SCALAR_TEXTS, RawJSON, dumps
from utils.rpc import INVALID_ARGUMENT, RPCError, signed64

__all__ = ["Engine", "WRITE_COMMANDS", "REPLAY_METHODS", "load_detail", "sorted_json",
           "whole_assets", "REPLAY", "LIVE", "REBUILD"]

REPLAY, LIVE, REBUILD = 0, 1, 2

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
LIST_MAX = 101
SOURCE_MAX = 30
BUSINESS_MAX = 30
DEDUP_KEEP = 86400.0
SLICE_FREEZE_PLACES = 8      # places slice_order_<t> keeps of an order's `freeze`

BALANCE_QUERY, BALANCE_UPDATE, ASSET_LIST, ASSET_SUMMARY = 101, 102, 104, 105
PUT_LIMIT, PUT_MARKET, PENDING, CANCEL, BOOK, DEPTH, PENDING_DETAIL = (
    201, 202, 203, 204, 205, 206, 207)
MARKET_LIST, MARKET_SUMMARY = 307, 308

WRITE_COMMANDS = frozenset({BALANCE_UPDATE, PUT_LIMIT, PUT_MARKET, CANCEL})
REPLAY_METHODS = {"update_balance": BALANCE_UPDATE, "limit_order": PUT_LIMIT,
                  "market_order": PUT_MARKET, "cancel_order": CANCEL}
LOG_METHODS = {command: method for method, command in REPLAY_METHODS.items()}


def _error(code, message):
    return RPCError(code, message)


def _int(value):
    if type(value) is not int:
        raise INVALID_ARGUMENT()
    return value


def _str(value):
    if type(value) is not str:
        raise INVALID_ARGUMENT()
    return value


# prec -> {text: (Decimal, its raw text, whether it is above zero)}: values repeat a lot
_PARSED = collections.defaultdict(dict)
_PARSED_MAX = 100000                      # texts kept per precision


def _remember(cache, text, value):
    if len(cache) >= _PARSED_MAX:
        cache.clear()
    cache[text] = value


def _decimal_texts(value, prec):
    """(the value of a decimal parameter, its raw text, whether it is above zero): an
    order's price and amount, whose texts its messages and history rows write."""
    cache = _PARSED[prec]
    try:
        cached = cache.get(value)
    except TypeError:       # not hashable: certainly not a decimal string
        raise INVALID_ARGUMENT() from None
    if cached is not None:
        return cached
    try:
        parsed = decimals.parse(value, prec)
        if not prec and parsed != parsed.to_integral_value(decimal.ROUND_DOWN):
            # a precision of 0 is whole units (the original kept the fraction, which a
            # balance of zero places then cut off: funds lost); a whole value keeps its form
            parsed = decimals.quantize(parsed, 0)
    except decimals.InvalidDecimal:
        raise INVALID_ARGUMENT() from None
    cached = (parsed, to_raw(parsed), parsed > ZERO)
    _remember(cache, value, cached)
    return cached


def _decimal(value, prec):
    return _decimal_texts(value, prec)[0]


_FEES = collections.defaultdict(dict)     # prec -> {text: rate}, rates already checked


def _fee(value, prec):
    cache = _FEES[prec]
    rate = cache.get(value) if type(value) is str else None   # others: _decimal refuses
    if rate is None:
        rate = _decimal(value, prec)
        if rate < 0 or rate >= 1:
            raise INVALID_ARGUMENT()
        _remember(cache, value, rate)
    return rate


def _source(value):
    if type(value) is not str:
        raise INVALID_ARGUMENT()
    # a character takes at most 4 bytes in UTF-8: short texts need no encoding to be sure
    if len(value) * 4 > SOURCE_MAX and len(value.encode("utf-8")) > SOURCE_MAX:
        raise INVALID_ARGUMENT()
    return value


def _page(items, offset, limit):
    """The items after the first `offset`, at most `limit`; an offset given negative is
    unsigned 64-bit, as in the original, and so beyond every list."""
    return islice(items, min(offset, sys.maxsize), min(offset + limit, sys.maxsize))


def _count(params, n):
    if len(params) != n:
        raise INVALID_ARGUMENT()


def sorted_json(value):
    """Compact JSON with sorted keys at every level (operation-log details)."""
    return dumps(_sort(value))


def _sort(value):
    if isinstance(value, dict):
        return {k: _sort(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sort(v) for v in value]
    return value


def whole_assets(assets, markets):
    """The assets in which every amount a fill or a freeze moves into or out of a balance is
    a whole number of the asset's smallest stored unit (see `Balances`).  For each market
    using it, its precisions must be set (0 keeps the exponent a value was written with),
    and its prec_save must reach the finest such amount: price x amount x fee rate for the
    money, amount x fee rate for the stock, and a freeze restored from a slice."""
    whole = set(assets)
    for m in markets.values():
        if not (m.stock_prec and m.money_prec and m.fee_prec):
            whole -= {m.stock, m.money}
            continue
        if assets[m.money].prec_save < max(m.money_prec + m.stock_prec + m.fee_prec,
                                           SLICE_FREEZE_PLACES):
            whole.discard(m.money)
        if assets[m.stock].prec_save < max(m.stock_prec + m.fee_prec, SLICE_FREEZE_PLACES):
            whole.discard(m.stock)
    return whole


class Engine:

    def __init__(self, assets, markets):
        self.context = decimals.install_context()
        self.assets = assets
        self.balances = Balances(assets, whole_assets(assets, markets))
        self.markets = {name: Market(desc, self.balances) for name, desc in markets.items()}
        self.effects = Effects(self.balances)
        self.order_id = 0
        self.deal_id = 0
        # (user, asset, business, business_id) -> time, in the order recorded
        self.dedup = {}
        self.show_exp = {name: exponent(a.prec_show) for name, a in assets.items()
                         if a.prec_show != a.prec_save}
        self._depth_cache = {}
        self.handlers = {
            BALANCE_QUERY: self.balance_query, BALANCE_UPDATE: self.balance_update,
            ASSET_LIST: self.asset_list, ASSET_SUMMARY: self.asset_summary,
            PUT_LIMIT: self.put_limit, PUT_MARKET: self.put_market, PENDING: self.pending,
            CANCEL: self.cancel, BOOK: self.book, DEPTH: self.depth,
            PENDING_DETAIL: self.pending_detail, MARKET_LIST: self.market_list,
            MARKET_SUMMARY: self.market_summary,
        }

    # -- entry points ------------------------------------------------------------------

    def execute(self, command, params, now):
        """Run a command; returns its result (raises RPCError when refused).

        `now` is in seconds, to the microsecond: the operation log keeps times at that
        precision, and history rows and messages carry it as given."""
        self.use_context()
        if command == PUT_LIMIT:        # most commands: a C call, not a method object's
            return self.put_limit(params, now, True)
        return self.handlers[command](params, now, True)

    def replay(self, method, params, now, rebuild=False):
        """Re-execute an operation-log entry; unknown markets and assets are skipped."""
        self.use_context()
        real = REBUILD if rebuild else REPLAY
        command = REPLAY_METHODS.get(method)
        if command is None:
            raise ValueError("unknown operation-log method %r" % (method,))
        if not isinstance(params, list):
            raise ValueError("operation-log params are not a list")
        if command == BALANCE_UPDATE:
            if len(params) > 1 and isinstance(params[1], str) and params[1] not in self.assets:
                return None
        elif len(params) > 1 and isinstance(params[1], str) and params[1] not in self.markets:
            return None
        if command == PUT_LIMIT:
            return self.put_limit(params, now, real)
        return self.handlers[command](params, now, real)

    def use_context(self):
        """Make the engine's decimal context the current one, if it is not.  Installed where
        the engine was made, it does not reach every caller: the context is a context
        variable, which a coroutine runs with a copy of (an engine made in one left the
        reactor's callbacks with the default 28 digits).  Each entry point calls this."""
        if decimal.getcontext() is not self.context:
            decimal.setcontext(self.context)

    # -- parameter helpers -------------------------------------------------------------

    def _market(self, value):
        market = self.markets.get(value) if type(value) is str else None
        if market is None:
            raise INVALID_ARGUMENT()
        return market

    def _asset(self, value):
        if type(value) is not str or value not in self.assets:
            raise INVALID_ARGUMENT()
        return value

    def _shown(self, user_id, kind, asset):
        value = self.balances.get(user_id, kind, asset)
        if not value:       # no stored value is zero: there is none
            return "0"
        exp = self.show_exp.get(asset)
        if exp is not None:
            value = value.quantize(exp, decimal.ROUND_DOWN, WIDE)
        return to_display(value)

    # -- balances ----------------------------------------------------------------------

    def balance_query(self, params, now, real):
        if not params:
            raise INVALID_ARGUMENT()
        user_id = _int(params[0]) & U32
        if not user_id:
            raise INVALID_ARGUMENT()
        names = [self._asset(p) for p in params[1:]] or list(self.assets)
        result = {}
        for name in names:
            result[name] = {"available": self._shown(user_id, AVAILABLE, name),
                            "freeze": self._shown(user_id, FREEZE, name)}
        return result

    def balance_update(self, params, now, real):
        _count(params, 6)
        user_id = _int(params[0]) & U32
        asset = self._asset(params[1])
        business = _str(params[2])
        # characters, as the history's VARCHAR(30) column counts them (utf8mb4)
        if len(business) > BUSINESS_MAX:
            raise INVALID_ARGUMENT()
        business_id = _int(params[3]) & U64
        change = _decimal(params[4], self.assets[asset].prec_show)
        detail = params[5]
        if not isinstance(detail, dict):
            raise INVALID_ARGUMENT()
        key = (user_id, asset, business, business_id)
        seen = self.dedup.get(key)
        # a logged update was accepted when it was made, whatever a clock stepped back since
        # says of the key's age: replayed, it is applied again
        if real == LIVE and seen is not None and now - seen < DEDUP_KEEP:
            raise _error(10, "repeat update")
        if change >= 0:
            if not self.balances.add(user_id, AVAILABLE, asset, change):
                raise INVALID_ARGUMENT()    # more than a balance can hold
        elif not self.balances.sub(user_id, AVAILABLE, asset, -change):
            raise _error(11, "balance not enough")
        self._remember(key, now)
        if real == REBUILD:
            # the log keeps the detail's keys sorted, the id among them; a live write gives
            # the request's keys, then the id: sorted, then the id, is the nearest text
            detail.pop("id", None)
        detail["id"] = signed64(business_id)    # as the request gave it, signed
        if real:
            self.effects.balance_update(now, user_id, asset, business, change, dumps(detail))
        return {"status": "success"}

    def remember_update(self, params, now):
        """Record the dedup key of a logged balance.update without applying it again."""
        try:
            user_id = _int(params[0]) & U32
            key = (user_id, params[1], params[2], _int(params[3]) & U64)
        except (RPCError, IndexError, TypeError):
            return
        self._remember(key, now)

    def _remember(self, key, now):
        # a key seen again (a day after) moves to the end: the keys stay in time order
        self.dedup.pop(key, None)
        self.dedup[key] = now

    def expire_dedup(self, now):
        """Forget balance.update keys older than a day (the original's 60 s timer).

        Only the expired keys at the front are visited: with a million keys, visiting all
        of them every minute stalled matching for about 40 ms.  Were the clock to step back,
        a key behind a younger one would be forgotten when that one is, a little late."""
        dedup = self.dedup
        old = []
        for key, t in dedup.items():
            if now - t < DEDUP_KEEP:
                break
            old.append(key)
        for key in old:
            del dedup[key]
        return len(old)

    def asset_list(self, params, now, real):
        return [{"name": a.name, "prec": a.prec_show} for a in self.assets.values()]

    def asset_summary(self, params, now, real):
        return self.summaries(self.summary_assets(params))

    def summary_assets(self, params):
        """The assets an asset.summary asks for (every one when none is named)."""
        return [self._asset(p) for p in params] or list(self.assets)

    def summaries(self, names):
        """asset.summary's result: it visits every balance entry."""
        self.use_context()
        result = []
        summaries = self.balances.summaries(names)
        for name in names:
            total, a_count, a_sum, f_count, f_sum = summaries[name]
            result.append({"name": name, "total_balance": to_display(total),
                           "available_count": a_count, "available_balance": to_display(a_sum),
                           "freeze_count": f_count, "freeze_balance": to_display(f_sum)})
        return result

    # -- orders ------------------------------------------------------------------------

    def _order_head(self, params, count):
        """user, market, side and amount (with its raw text, see `_decimal_texts`) of an
        order command (each error is the same "invalid argument", so the checks need not
        follow the original's order)."""
        if len(params) != count:
            raise INVALID_ARGUMENT()
        user_id, name, side = params[0], params[1], params[2]
        if type(user_id) is not int or type(side) is not int or (side != ASK and side != BID):
            raise INVALID_ARGUMENT()
        user_id &= U32
        market = self._market(name)
        amount = _decimal_texts(params[3], market.stock_prec)
        if not amount[2]:
            raise INVALID_ARGUMENT()
        return user_id, market, side, amount

    def put_limit(self, params, now, real):
        user_id, market, side, amount_texts = self._order_head(params, 8)
        amount = amount_texts[0]
        price_texts = _decimal_texts(params[4], market.money_prec)
        price = price_texts[0]
        if not price_texts[2]:
            raise INVALID_ARGUMENT()
        taker_fee = _fee(params[5], market.fee_prec)
        maker_fee = _fee(params[6], market.fee_prec)
        source = _source(params[7])
        if side == ASK:
            if self.balances.available(user_id, market.stock) < amount:
                raise _error(10, "balance not enough")
        elif self.balances.available(user_id, market.money) < amount * price:
            raise _error(10, "balance not enough")
        if amount < market.min_amount:
            raise _error(11, "amount too small")
        self.order_id += 1
        order = new_order(self.order_id, LIMIT, side, now, user_id, market.name, source,
                          price, amount, taker_fee, maker_fee, price_texts[1], amount_texts[1])
        self.deal_id = market.put_limit(order, self.effects, real, self.deal_id)
        return RawJSON(self.effects.order_text(order)) if real else None

    def put_market(self, params, now, real):
        user_id, market, side, amount_texts = self._order_head(params, 6)
        amount = amount_texts[0]
        taker_fee = _fee(params[4], market.fee_prec)
        source = _source(params[5])
        if side == ASK:
            if self.balances.available(user_id, market.stock) < amount:
                raise _error(10, "balance not enough")
            if not market.bids:
                raise _error(12, "no enough trader")
            if amount < market.min_amount:
                raise _error(11, "amount too small")
        else:
            if self.balances.available(user_id, market.money) < amount:
                raise _error(10, "balance not enough")
            best = market.best(ASK)
            if best is None:
                raise _error(12, "no enough trader")
            if amount < best.price * market.min_amount:
                raise _error(11, "amount too small")
        self.order_id += 1
        order = new_order(self.order_id, MARKET, side, now, user_id, market.name, source, ZERO,
                          amount, taker_fee, ZERO, None, amount_texts[1])
        self.deal_id = market.put_market(order, self.effects, real, self.deal_id)
        return RawJSON(self.effects.order_text(order)) if real else None

    def cancel(self, params, now, real):
        _count(params, 3)
        user_id = _int(params[0]) & U32
        market = self._market(params[1])
        order_id = _int(params[2]) & U64
        order = market.orders.get(order_id)
        if order is None:
            raise _error(10, "order not found")
        if real == LIVE and order.user_id != user_id:
            raise _error(11, "user not match")
        market.cancel(order, self.effects, real)
        return RawJSON(self.effects.order_text(order)) if real else None

    def pending(self, params, now, real):
        _count(params, 4)
        user_id = _int(params[0]) & U32
        market = self._market(params[1])
        offset = _int(params[2]) & U64
        limit = _int(params[3]) & U64
        if limit > LIST_MAX:
            raise INVALID_ARGUMENT()
        orders = market.users.get(user_id, {})
        records = ", ".join(o.info_json()
                            for o in _page(reversed(orders.values()), offset, limit))
        return RawJSON('{"limit": %d, "offset": %d, "total": %d, "records": [%s]}'
                       % (limit, signed64(offset), len(orders), records))

    def book(self, params, now, real):
        _count(params, 4)
        market = self._market(params[0])
        side = _int(params[1])
        if side not in (ASK, BID):
            raise INVALID_ARGUMENT()
        offset = _int(params[2]) & U64
        limit = _int(params[3]) & U64
        if limit > LIST_MAX:
            raise INVALID_ARGUMENT()
        total = market.side_summary(side)[0]
        orders = ", ".join(o.info_json() for o in _page(market.iter_side(side), offset, limit))
        return RawJSON('{"offset": %d, "limit": %d, "total": %d, "orders": [%s]}'
                       % (signed64(offset), limit, total, orders))

    def depth(self, params, now, real):
        _count(params, 3)
        market = self._market(params[0])
        limit = _int(params[1]) & U64
        if limit > LIST_MAX:
            raise INVALID_ARGUMENT()
        interval = _decimal(params[2], market.desc.money_prec)
        if interval < 0:
            raise INVALID_ARGUMENT()
        key = (market.name, limit, interval)
        version = market.version
        cached = self._depth_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        result = {"asks": market.depth(ASK, limit, interval),
                  "bids": market.depth(BID, limit, interval)}
        if len(self._depth_cache) > 10000:
            self._depth_cache.clear()
        self._depth_cache[key] = (version, result)
        return result

    def pending_detail(self, params, now, real):
        _count(params, 2)
        market = self._market(params[0])
        order_id = _int(params[1]) & U64
        order = market.orders.get(order_id)
        return None if order is None else RawJSON(order.info_json())

    # -- markets -----------------------------------------------------------------------

    def market_list(self, params, now, real):
        return [{"name": m.name, "stock": m.stock, "money": m.money,
                 "fee_prec": m.desc.fee_prec, "stock_prec": m.desc.stock_prec,
                 "money_prec": m.desc.money_prec, "min_amount": to_display(m.desc.min_amount)}
                for m in self.markets.values()]

    def market_summary(self, params, now, real):
        markets = [self._market(p) for p in params] or list(self.markets.values())
        result = []
        for m in markets:
            ask_count, ask_amount = m.side_summary(ASK)
            bid_count, bid_amount = m.side_summary(BID)
            result.append({"name": m.name, "ask_count": ask_count,
                           "ask_amount": to_display(ask_amount), "bid_count": bid_count,
                           "bid_amount": to_display(bid_amount)})
        return result

    # -- operation log -----------------------------------------------------------------

    @staticmethod
    def log_entry(command, params):
        """The operation-log detail of a successful write: sorted-key JSON."""
        if command == BALANCE_UPDATE:
            return sorted_json({"method": LOG_METHODS[command], "params": params})
        # the other writes were validated: only integers and strings, nothing to sort
        if command == PUT_LIMIT:    # most entries: their eight texts joined at once
            return '{"method": "%s", "params": [%s, %s, %s, %s, %s, %s, %s, %s]}' % (
                LOG_METHODS[command], _texts.of(params[0]), _texts.of(params[1]),
                _texts.of(params[2]), _texts.of(params[3]), _texts.of(params[4]),
                _texts.of(params[5]), _texts.of(params[6]), _texts.of(params[7]))
        return '{"method": "%s", "params": [%s]}' % (LOG_METHODS[command], ", ".join(
            [_texts.of(p) for p in params]))


_texts = SCALAR_TEXTS


def load_detail(text):
    """(method, params) of an operation-log detail."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return data["method"], data["params"]
