# -*- test-case-name: marketprice.test.test_kline -*-
"""K-lines, market status and recent deals of one market, without I/O.

A market keeps four bucket maps, by second, minute, hour and local day; each bucket is a
`KLine` (open, close, high, low, volume, deal).  `apply_deal` adds a deal to the four buckets
it falls in; the query functions merge buckets as the original does.  Every function takes
`now` (unix seconds) from its caller.

A new bucket opens at the market's last price before the deal; a market that has no price
yet opens at the deal's own price (the original opened at 0 there).
"""

import collections
import json
import math
import time

from utils.decimals import CONTEXT, ZERO, parse, to_display, to_raw
from utils.jsonfmt import format_real

SEC, MIN, HOUR, DAY = "1s", "1m", "1h", "1d"
GRANULARITIES = (SEC, MIN, HOUR, DAY)
DEALS_MAX = 10000
WEEK, MONTH = 604800, 2592000


def timezone_offset():
    """The original's `tz`: minus the local UTC offset in whole hours."""
    t = time.localtime(0)
    return -t.tm_hour * 3600 if t.tm_mday == 1 else (24 - t.tm_hour) * 3600


# sums and products in the original's context (34 digits, ROUND_DOWN), named rather than
# taken from the thread's current context, which is not the same in every callback
_add, _multiply = CONTEXT.add, CONTEXT.multiply


class KLine:
    __slots__ = ("open", "close", "high", "low", "volume", "deal")

    def __init__(self, price):
        self.open = self.close = self.high = self.low = price
        self.volume = ZERO
        self.deal = ZERO

    def add(self, price, amount):
        self.close = price
        self.volume = _add(self.volume, amount)
        self.deal = _add(self.deal, _multiply(price, amount))
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price

    def values(self):
        """(open, close, high, low, volume, deal): a copy later deals leave as it is."""
        return self.open, self.close, self.high, self.low, self.volume, self.deal

    def to_json(self):
        return kline_json(self.values())

    @classmethod
    def from_json(cls, text):
        """A k-line as `to_json` wrote it (or without `deal`, as older versions did)."""
        values = json.loads(text)
        if type(values) is not list or len(values) not in (5, 6):
            raise ValueError("not a k-line: %r" % (text,))
        k = cls.__new__(cls)
        k.open, k.close, k.high, k.low, k.volume = map(parse, values[:5])
        k.deal = parse(values[5]) if len(values) == 6 else ZERO
        return k


def kline_json(values):
    """A k-line's `values()` as stored in Redis."""
    return json.dumps([to_display(v) for v in values])


class Merge:
    """Buckets merged in time order (301, 302, 305)."""

    __slots__ = ("k",)

    def __init__(self):
        self.k = None

    def add(self, bucket):
        if bucket is None:
            return
        if self.k is None:
            self.k = KLine(bucket.open)
        k = self.k
        k.close = bucket.close
        k.volume = _add(k.volume, bucket.volume)
        k.deal = _add(k.deal, bucket.deal)
        if bucket.high > k.high:
            k.high = bucket.high
        if bucket.low < k.low:
            k.low = bucket.low


class Market:
    """One market's k-lines, last price and recent deals."""

    def __init__(self, name, tz=0, last=ZERO, priced=False):
        self.name = name
        self.tz = tz
        self.last = last
        self.priced = priced            # whether `last` comes from a deal
        self.buckets = {g: {} for g in GRANULARITIES}
        self.deals = collections.deque(maxlen=DEALS_MAX)   # records, newest first
        self.dirty = set()              # (granularity, bucket time)
        self.to_flush = []              # deal records, oldest first: DEALS_MAX at most, the
        # list in Redis keeping no more (a Redis away for long costs no more memory)
        self.unsure = []                # deals of failed flushes, not known written
        self.recent = set()             # ids of the deals in `deals`
        self.late = set()               # granularities with a bucket made out of time order
        self.update_time = 0.0
        self.last_offset = None

    def day_start(self, sec):
        return (sec - self.tz) // 86400 * 86400 + self.tz

    def apply_deal(self, t, price, amount, deal_id, taker_side, now, offset=None):
        """Add one deal to the k-lines and the recent deals; False (and nothing changed) for
        a deal among the recent ones already, which a batch sent again repeats.  Ids are not
        taken to grow: one far ahead (a bad message) must not stop every later deal."""
        if deal_id in self.recent:
            return False
        sec = int(t)
        opening = self.last if self.priced else price
        value = _multiply(price, amount)
        buckets, dirty = self.buckets, self.dirty
        for g, key in ((SEC, sec), (MIN, sec - sec % 60), (HOUR, sec - sec % 3600),
                       (DAY, (sec - self.tz) // 86400 * 86400 + self.tz)):
            made = buckets[g]
            bucket = made.get(key)
            if bucket is None:
                if made and key < next(reversed(made)):
                    self.late.add(g)
                bucket = made[key] = KLine(opening)
            bucket.close = price
            bucket.volume = _add(bucket.volume, amount)
            bucket.deal = _add(bucket.deal, value)
            if price > bucket.high:
                bucket.high = price
            elif price < bucket.low:
                bucket.low = price
            dirty.add((g, key))
        self.last = price
        self.priced = True
        record = (deal_id, t, to_display(price), to_display(amount),
                  "sell" if taker_side == 1 else "buy")
        if len(self.deals) == DEALS_MAX:
            self.recent.discard(self.deals[-1][0])
        self.deals.appendleft(record)
        self.recent.add(deal_id)
        self.to_flush.append(record)
        if len(self.to_flush) > 2 * DEALS_MAX:
            del self.to_flush[:-DEALS_MAX]
        self.update_time = now
        if offset is not None:
            self.last_offset = offset
        return True

    # -- queries -----------------------------------------------------------------------

    def status(self, period, now):
        """market.status: merged buckets of the last `period` seconds."""
        m = self._rolling(period, now)
        k = m.k
        result = {"period": period, "last": to_display(self.last)}
        if k is None:
            result.update(open="0", close="0", high="0", low="0", volume="0", deal="0")
        else:
            result.update(open=to_display(k.open), close=to_display(k.close),
                          high=to_display(k.high), low=to_display(k.low),
                          volume=to_display(k.volume), deal=to_display(k.deal))
        return result

    def _rolling(self, period, now):
        start = now - period
        start_min = start // 60 * 60 + 60
        m = Merge()
        sec = self.buckets[SEC]
        for t in range(start, start_min):
            m.add(sec.get(t))
        minutes = self.buckets[MIN]
        t = start_min
        while t < now:
            m.add(minutes.get(t))
            t += 60
        return m

    def status_today(self, now):
        day = self.buckets[DAY]
        today = day.get(self.day_start(now))
        result = {}
        if today is not None:
            result = {"open": to_display(today.open), "last": to_display(today.close),
                      "high": to_display(today.high), "low": to_display(today.low)}
        else:
            start = self.day_start(now)
            for i in range(1, 31):
                previous = day.get(start - i * 86400)
                if previous is not None:
                    close = to_display(previous.close)
                    result = {"open": close, "last": close, "high": close, "low": close}
                    break
            else:
                result = {"open": "0", "last": "0", "high": "0", "low": "0"}
        k = self._rolling(86400, now).k
        result["volume"] = "0" if k is None else to_display(k.volume)
        result["deal"] = "0" if k is None else to_display(k.deal)
        return result

    def last_price(self):
        return to_raw(self.last)

    def recent_deals(self, limit, last_id):
        out = []
        for deal_id, t, price, amount, kind in self.deals:
            if deal_id <= last_id or len(out) >= limit:
                break
            out.append({"id": deal_id, "time": t, "price": price, "amount": amount,
                        "type": kind})
        return out

    @staticmethod
    def record_json(record):
        """A deal record as stored in Redis."""
        return '{"id": %d, "time": %s, "price": "%s", "amount": "%s", "type": "%s"}' % (
            record[0], format_real(record[1]), record[2], record[3], record[4])

    @staticmethod
    def record_from_json(text):
        data = json.loads(text)
        return (data["id"], data["time"], data["price"], data["amount"], data["type"])

    def kline(self, start, end, interval, now, limits):
        """market.kline rows [time, open, close, high, low, volume, deal, market]."""
        sec_max, min_max, hour_max = limits
        if interval < 60:
            unit, base = 1, self.buckets[SEC]
            start = max(start, now - sec_max) // interval * interval
            floor = now - sec_max
        elif interval < 3600:
            unit, base = 60, self.buckets[MIN]
            floor = now // 60 * 60 - min_max * 60
            start = max(start, floor) // interval * interval
        elif interval < 86400:
            unit, base = 3600, self.buckets[HOUR]
            floor = now // 3600 * 3600 - hour_max * 3600
            start = max(start, floor)
            aligned = self.day_start(start)
            while aligned + interval <= start:
                aligned += interval
            start = aligned
        elif interval == MONTH:
            return self._month_kline(start, end)
        else:
            unit, base = 86400, self.buckets[DAY]
            if interval == WEEK:
                aligned = (start - self.tz) // WEEK * WEEK - 3 * 86400 + self.tz
                while aligned + WEEK <= start:
                    aligned += WEEK
                start = aligned
            else:
                start = (start - self.tz) // interval * interval + self.tz
            floor = start - 30 * 86400
        previous = self._before(base, start - unit, floor, unit)
        rows = []
        t = start
        while t <= end:
            m = Merge()
            for i in range(interval // unit):
                m.add(base.get(t + i * unit))
            previous = self._emit(rows, t, m.k, previous)
            t += interval
        return rows

    def _month_kline(self, start, end):
        day = self.buckets[DAY]
        month = _month_start(start, self.tz)
        previous = self._before(day, month - 86400, start - 30 * 86400, 86400)
        rows = []
        while month <= end:
            following = _next_month(month, self.tz)
            m = Merge()
            t = month
            while t < following and t <= end:
                m.add(day.get(t))
                t += 86400
            previous = self._emit(rows, month, m.k, previous)
            month = following
        return rows

    @staticmethod
    def _before(base, t, floor, unit):
        """The newest bucket at or before `t` and not before `floor`, on `unit` steps."""
        found = None
        for key in base:
            if floor <= key <= t and (t - key) % unit == 0 and (found is None or key > found):
                found = key
        return None if found is None else base[found]

    def _emit(self, rows, t, k, previous):
        if k is None:
            if previous is None:
                return None
            close = to_display(previous.close)
            rows.append([t, close, close, close, close, "0", "0", self.name])
            return previous
        rows.append([t, to_display(k.open), to_display(k.close), to_display(k.high),
                     to_display(k.low), to_display(k.volume), to_display(k.deal), self.name])
        return k

    # -- retention ---------------------------------------------------------------------

    def thresholds(self, now, limits):
        sec_max, min_max, hour_max = limits
        return {SEC: now - sec_max, MIN: now // 60 * 60 - min_max * 60,
                HOUR: now // 3600 * 3600 - hour_max * 3600}

    def load(self, g, buckets):
        """Add (time, KLine) pairs read back from the store, in time order as buckets are
        made (`expire` relies on it)."""
        self.buckets[g].update(sorted(buckets, key=lambda item: item[0]))

    def expire(self, now, limits):
        """Drop second, minute and hour buckets past their retention (days are kept);
        returns their times per granularity.

        Buckets are made in time order (and loaded sorted), so only the expired ones at the
        front are visited: a week of second buckets is 604,800 of them per market.  Where a
        bucket was made out of order (a deal older than the newest bucket, or one after a
        deal dated ahead), every bucket is looked at once, and the rest put back in order."""
        dropped = {}
        for g, oldest in self.thresholds(now, limits).items():
            buckets = self.buckets[g]
            old = dropped[g] = []
            if g in self.late:
                self.late.discard(g)
                kept = sorted((t, b) for t, b in buckets.items() if t >= oldest)
                old += [t for t in buckets if t < oldest]
                buckets.clear()
                buckets.update(kept)
                continue
            for t in buckets:
                if t >= oldest:
                    break
                old.append(t)
            for t in old:
                del buckets[t]
        return dropped


def _month_start(t, tz):
    local = time.gmtime(t - tz)
    return _utc(local.tm_year, local.tm_mon) + tz


def _next_month(month_start, tz):
    local = time.gmtime(month_start - tz)
    year, month = (local.tm_year + 1, 1) if local.tm_mon == 12 else (local.tm_year,
                                                                       local.tm_mon + 1)
    return _utc(year, month) + tz


def _utc(year, month):
    import calendar
    return calendar.timegm((year, month, 1, 0, 0, 0))


def parse_deal(value):
    """(time, market, price, amount, taker_side, deal_id) of a deals message, or None."""
    from utils.decimals import InvalidDecimal, parse
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError, TypeError):     # TypeError: no value at all
        return None
    if not isinstance(data, list) or len(data) < 12:
        return None
    t, market, price, amount, side, deal_id = (data[0], data[1], data[6], data[7], data[10],
                                               data[11])
    if type(t) is not float or not t or not math.isfinite(t) or type(market) is not str:
        return None
    if type(side) is not int or side not in (1, 2) or type(deal_id) is not int or not deal_id:
        return None
    try:
        return t, market, parse(price), parse(amount), side, deal_id
    except InvalidDecimal:
        return None
