# -*- test-case-name: marketprice.test.test_kline -*-
"""K-line arithmetic against hand-computed numbers."""

import decimal
from decimal import Decimal as D

from twisted.trial.unittest import SynchronousTestCase

from marketprice.kline import DEALS_MAX, MONTH, WEEK, KLine, Market, parse_deal

LIMITS = (604800, 525600, 87600)
T0 = 1795561980          # a minute boundary (UTC)


def market(*deals, last=None):
    m = Market("BTCBCH", tz=0)
    if last is not None:
        m.last, m.priced = D(last), True
    for n, (t, price, amount) in enumerate(deals, 1):
        m.apply_deal(float(t), D(price), D(amount), n, 2, t)
    return m


class BucketTests(SynchronousTestCase):

    def test_first_deal_opens_at_its_price(self):
        """A market with no price opens at its first deal; low is the lowest deal."""
        m = market((T0 + 1, "8000", "0.3"), (T0 + 2, "7980", "0.2"), (T0 + 3, "8010", "0.1"))
        k = m.buckets["1m"][T0]
        self.assertEqual((k.open, k.close, k.high, k.low), (D("8000"), D("8010"), D("8010"),
                                                             D("7980")))
        self.assertEqual((k.volume, k.deal), (D("0.6"), D("2400.0") + D("1596.0") + D("801.0")))

    def test_original_context(self):
        """Deal values and sums are computed in the original's 34 digits, truncated, not in
        the thread's context (by default 28 digits, rounded half to even)."""
        saved = decimal.getcontext()
        self.addCleanup(decimal.setcontext, saved)
        decimal.setcontext(decimal.Context())
        m = market((T0 + 1, "12345678.12345678", "1234567.12345678"),
                   (T0 + 2, "99999999.99999999", "9999999.99999999"))
        # 15241568327999.3345526765279684 + 999999999999998.9000000000000001, each of 30
        # and 31 digits, exact
        total = "1015241568327998.2345526765279685"
        self.assertEqual(str(m.buckets["1m"][T0].deal), total)
        self.assertEqual(m.status(3600, T0 + 10)["deal"], total)

    def test_repeated_deal_skipped(self):
        """A deal among the recent ones applied already (a batch sent again) changes
        nothing."""
        m = market((T0 + 1, "8000", "0.3"), (T0 + 2, "7980", "0.2"))
        for deal_id in (2, 1):
            self.assertFalse(m.apply_deal(float(T0 + 2), D("7980"), D("0.2"), deal_id, 2,
                                          T0 + 9))
        k = m.buckets["1m"][T0]
        self.assertEqual((k.volume, k.low, m.last), (D("0.5"), D("7980"), D("7980")))
        self.assertEqual([d[0] for d in m.deals], [2, 1])
        self.assertEqual(len(m.to_flush), 2)
        self.assertTrue(m.apply_deal(float(T0 + 3), D("8020"), D("1"), 3, 1, T0 + 9))
        self.assertEqual(m.buckets["1m"][T0].volume, D("1.5"))

    def test_ids_need_not_grow(self):
        """A deal of an id far ahead (a bad message) does not stop the later ones, nor does
        an id below the newest that was never applied."""
        m = market((T0 + 1, "8000", "1"))
        for deal_id in (2 ** 63 - 1, 2, 5, 4):
            self.assertTrue(m.apply_deal(float(T0 + 2), D("8000"), D("1"), deal_id, 2, T0 + 9))
        self.assertEqual(m.buckets["1m"][T0].volume, D("5"))
        self.assertFalse(m.apply_deal(float(T0 + 3), D("8000"), D("1"), 4, 2, T0 + 9))

    def test_backlog_bounded(self):
        """While Redis is away, the deals kept for it are the newest DEALS_MAX at most: the
        list there keeps no more."""
        m = Market("BTCBCH", tz=0)
        for n in range(1, 3 * DEALS_MAX):
            m.apply_deal(float(T0 + 1), D("1"), D("1"), n, 2, T0 + 9)
        self.assertLessEqual(len(m.to_flush), 2 * DEALS_MAX)
        self.assertEqual(m.to_flush[-1][0], 3 * DEALS_MAX - 1)
        self.assertEqual(len(m.recent), DEALS_MAX)
        self.assertEqual(m.buckets["1m"][T0].volume, D(3 * DEALS_MAX - 1))

    def test_new_bucket_opens_at_previous_price(self):
        """The next bucket opens at the last price before its first deal."""
        m = market((T0 + 1, "8000", "1"), (T0 + 61, "8100", "1"))
        k = m.buckets["1m"][T0 + 60]
        self.assertEqual((k.open, k.low, k.high, k.close), (D("8000"), D("8000"), D("8100"),
                                                             D("8100")))
        loaded = market((T0 + 1, "9000", "1"), last="8500")
        self.assertEqual(loaded.buckets["1s"][T0 + 1].open, D("8500"))

    def test_bucket_keys(self):
        """Second, minute, hour (UTC) and local-day buckets."""
        t = T0 + 3725
        m = market((t, "1", "1"))
        self.assertEqual([list(m.buckets[g]) for g in ("1s", "1m", "1h", "1d")],
                         [[t], [t // 60 * 60], [t // 3600 * 3600], [t // 86400 * 86400]])

    def test_kline_json(self):
        """K-lines are stored as six display strings and read back (five from old data)."""
        k = KLine(D("8000.00000000"))
        k.add(D("7990.50000000"), D("0.30000000"))
        self.assertEqual(k.to_json(),
                         '["8000", "7990.5", "8000", "7990.5", "0.3", "2397.15"]')
        back = KLine.from_json(k.to_json())
        self.assertEqual(back.deal, D("2397.15"))
        self.assertEqual(KLine.from_json('["1", "2", "3", "0.5", "9"]').deal, 0)


class QueryTests(SynchronousTestCase):

    def setUp(self):
        self.m = market((T0 + 1, "8000", "0.3"), (T0 + 30, "7980", "0.2"),
                        (T0 + 70, "8010", "0.1"))
        self.now = T0 + 100

    def test_status(self):
        """Merged buckets of the period: first open, last close, extremes, sums."""
        s = self.m.status(86400, self.now)
        self.assertEqual(s, {"period": 86400, "last": "8010", "open": "8000", "close": "8010",
                             "high": "8010", "low": "7980", "volume": "0.6",
                             "deal": "4797"})
        s = self.m.status(50, self.now)      # only the deal at T0 + 70
        self.assertEqual((s["open"], s["volume"]), ("7980", "0.1"))  # the bucket opened at 7980
        empty = Market("X").status(60, self.now)
        self.assertEqual(empty["open"], "0")

    def test_kline_minutes_with_empty_interval(self):
        """An empty minute after a k-line repeats its close, flat, with zero volume."""
        rows = self.m.kline(T0, T0 + 180, 60, self.now + 200, LIMITS)
        self.assertEqual(rows, [
            [T0, "8000", "7980", "8000", "7980", "0.5", "3996", "BTCBCH"],
            [T0 + 60, "7980", "8010", "8010", "7980", "0.1", "801", "BTCBCH"],
            [T0 + 120, "8010", "8010", "8010", "8010", "0", "0", "BTCBCH"],
            [T0 + 180, "8010", "8010", "8010", "8010", "0", "0", "BTCBCH"]])

    def test_kline_nothing_before(self):
        """Before any k-line, empty intervals emit nothing."""
        rows = self.m.kline(T0 - 120, T0, 60, self.now, LIMITS)
        self.assertEqual([r[0] for r in rows], [T0])

    def test_kline_hour_day_week_month(self):
        """Longer intervals merge their base buckets."""
        for interval in (3600, 86400, WEEK, MONTH):
            rows = self.m.kline(T0 - 40 * 86400, T0 + 100, interval, self.now, LIMITS)
            self.assertEqual(len(rows), 1, interval)
            self.assertEqual(rows[0][1:7], ["8000", "8010", "8010", "7980", "0.6", "4797"])
        week = self.m.kline(T0, T0 + 100, WEEK, self.now, LIMITS)[0][0]
        self.assertEqual((week - 4 * 86400) % WEEK, 0)        # a Monday, 00:00

    def test_status_today_and_deals(self):
        """status_today from today's bucket; deals newest first, bounded by last_id."""
        today = self.m.status_today(self.now)
        self.assertEqual(today, {"open": "8000", "last": "8010", "high": "8010", "low": "7980",
                                 "volume": "0.6", "deal": "4797"})
        self.assertEqual([d["id"] for d in self.m.recent_deals(10, 0)], [3, 2, 1])
        self.assertEqual([d["id"] for d in self.m.recent_deals(10, 1)], [3, 2])
        self.assertEqual([d["id"] for d in self.m.recent_deals(1, 0)], [3])
        self.assertEqual(self.m.record_json(self.m.to_flush[0]),
                         '{"id": 1, "time": 1795561981.0, "price": "8000", "amount": "0.3", '
                         '"type": "buy"}')

    def test_expire(self):
        """Retention drops old second, minute and hour buckets, never days."""
        later = T0 + 604800 + 200
        self.m.expire(later, LIMITS)
        self.assertEqual(self.m.buckets["1s"], {})
        self.assertEqual(len(self.m.buckets["1m"]), 2)
        self.assertEqual(len(self.m.buckets["1d"]), 1)


    def test_expire_visits_the_front(self):
        """Loaded in any order, buckets expire exactly up to the retention."""
        m = Market("BTCBCH", tz=0)
        times = list(range(T0, T0 + 1000))
        m.load("1s", [(t, KLine(D("1"))) for t in reversed(times)])
        self.assertEqual(list(m.buckets["1s"]), times)
        now = T0 + 604800 + 500       # seconds before now - 604800 are past retention
        self.assertEqual(m.expire(now, LIMITS), {"1s": times[:500], "1m": [], "1h": []})
        self.assertEqual(list(m.buckets["1s"]), times[500:])
        self.assertEqual(m.expire(now, LIMITS)["1s"], [])


    def test_expire_after_a_deal_dated_ahead(self):
        """A deal dated years ahead does not hold back the retention of the buckets made
        after it."""
        m = Market("BTCBCH", tz=0)
        for t in (T0, T0 + 1, T0 + 10 * 365 * 86400, T0 + 2, T0 + 3):
            m.apply_deal(float(t), D("1"), D("1"), t, 2, T0)
        now = T0 + 604800 + 100        # a week and more: past the seconds' retention
        dropped = m.expire(now, LIMITS)
        self.assertEqual(sorted(dropped["1s"]), [T0, T0 + 1, T0 + 2, T0 + 3])
        self.assertEqual(list(m.buckets["1s"]), [T0 + 10 * 365 * 86400])
        m.apply_deal(float(now), D("1"), D("1"), 99, 2, now)
        self.assertEqual(m.expire(now, LIMITS)["1s"], [])
        self.assertEqual(list(m.buckets["1s"]), [now, T0 + 10 * 365 * 86400])


class ParseTests(SynchronousTestCase):

    def test_validation(self):
        """Deals messages are checked as the original checks them (None: a record without
        a value)."""
        good = ('[1795561714.3698959, "BTCBCH", 3, 5, 3, 1, "8000.00000000", "0.50000000", '
                '"4.0", "0.001", 2, 2, "BTC", "BCH"]')
        self.assertEqual(parse_deal(good)[1:], ("BTCBCH", D("8000.00000000"),
                                                D("0.50000000"), 2, 2))
        for bad in ('[1795561714, "BTCBCH", 3, 5, 3, 1, "8000", "1", "0", "0", 2, 2]',
                    '[1.5, "BTCBCH", 3, 5, 3, 1, "x", "1", "0", "0", 2, 2]',
                    '[1.5, "BTCBCH", 3, 5, 3, 1, "8000", "1", "0", "0", 3, 2]',
                    '[1.5, "BTCBCH", 3, 5, 3, 1, "8000", "1", "0", "0", 2, 0]',
                    '[NaN, "BTCBCH", 3, 5, 3, 1, "8000", "1", "0", "0", 2, 2]',
                    '[Infinity, "BTCBCH", 3, 5, 3, 1, "8000", "1", "0", "0", 2, 2]',
                    '[1.5, "BTCBCH"]', 'not json', '{}', None):
            self.assertIsNone(parse_deal(bad), bad)
