# -*- test-case-name: matchengine.test.test_engine -*-
"""The engine's commands against what the original answered, and exact unit cases."""

import contextvars
import copy
import decimal
import json
import os
from decimal import Decimal

from twisted.trial.unittest import SynchronousTestCase

from matchengine import config, engine
from matchengine.balance import AVAILABLE, FREEZE
from utils import testing
from utils.jsonfmt import RawJSON, dumps
from utils.rpc import RPCError

TRANSCRIPT = testing.reference("http-scenario.jsonl")

METHODS = {"balance.query": 101, "balance.update": 102, "asset.list": 104,
           "asset.summary": 105, "order.put_limit": 201, "order.put_market": 202,
           "order.pending": 203, "order.cancel": 204, "order.book": 205, "order.depth": 206,
           "order.pending_detail": 207, "market.list": 307, "market.summary": 308}

TIME_KEYS = {"ctime", "mtime", "ftime", "time"}


def norm(x):
    if isinstance(x, dict):
        return {k: ("<time>" if k in TIME_KEYS and isinstance(v, (int, float)) else norm(v))
                for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    return x


def call(eng, command, params, now, request_id=0):
    """The reply object the RPC server would send."""
    try:
        result = eng.execute(command, copy.deepcopy(params), now)
    except RPCError as e:
        return {"error": e.to_json(), "result": None, "id": request_id}
    if isinstance(result, RawJSON):
        result = result.value()
    return json.loads(dumps({"error": None, "result": result, "id": request_id}))


def new_engine():
    return engine.Engine(*config.example_tables())


class TranscriptTests(SynchronousTestCase):

    def test_matches_original(self):
        """Every matchengine call of the recorded scenario gets the original's answer."""
        if not os.path.exists(TRANSCRIPT):
            self.skipTest("reference transcripts not present")
        eng = new_engine()
        now = 1795561714.0
        checked = 0
        for line in open(TRANSCRIPT):
            record = json.loads(line)
            request = record.get("request")
            if not request or request.get("method") not in METHODS:
                continue
            now += 0.001
            got = call(eng, METHODS[request["method"]], request["params"], now, request["id"])
            self.assertEqual(norm(got), norm(record["response"]),
                             "call %d %s" % (request["id"], request["method"]))
            checked += 1
        self.assertGreaterEqual(checked, 45)


class UnitTests(SynchronousTestCase):

    def setUp(self):
        self.eng = new_engine()
        self.now = 1000.0

    def run_cmd(self, command, *params):
        self.now += 1
        return call(self.eng, command, list(params), self.now)

    def deposit(self, user, asset, amount, business_id):
        r = self.run_cmd(102, user, asset, "deposit", business_id, amount, {})
        self.assertIsNone(r["error"])

    def test_formats_of_zero(self):
        """A filled order shows left "0e-8"; untouched fields show "0"."""
        self.deposit(1, "BTC", "1", 1)
        self.deposit(2, "BCH", "100", 2)
        self.run_cmd(201, 1, "BTCBCH", 1, "1", "10", "0", "0", "")
        r = self.run_cmd(201, 2, "BTCBCH", 2, "1", "10", "0", "0", "")["result"]
        self.assertEqual((r["left"], r["deal_fee"], r["deal_money"]), ("0e-8", "0e-12", "10"))

    def test_sums_at_precision_zero(self):
        """At a zero precision an amount keeps the exponent it was written with; an order's
        sums are still zero plus its fills ("10", not "1e+1"), as its first fill's own
        objects would not write them."""
        assets = {"A": config.Asset("A", 12, 8), "B": config.Asset("B", 12, 8)}
        eng = engine.Engine(assets, {"AB": config.Market("AB", "A", 0, "B", 0, 4, Decimal(0))})
        self.assertFalse(eng.markets["AB"].first_fill_kept)
        self.assertTrue(self.eng.markets["BTCBCH"].first_fill_kept)
        call(eng, 102, [1, "A", "deposit", 1, "100", {}], self.now)
        call(eng, 102, [2, "B", "deposit", 2, "1000", {}], self.now)
        call(eng, 201, [1, "AB", 1, "1e+1", "2", "0", "0", ""], self.now)
        r = call(eng, 201, [2, "AB", 2, "1e+1", "2", "0", "0", ""], self.now)["result"]
        self.assertEqual((r["amount"], r["deal_stock"], r["deal_money"]), ("1e+1", "10", "20"))

    def test_whole_units_at_precision_zero(self):
        """At a zero precision an amount or a price with a fraction is cut to whole units,
        as any precision cuts to its places: kept whole, as the original keeps it, it froze
        and moved more than a balance of zero places holds, and funds were lost."""
        assets = {"Z": config.Asset("Z", 0, 0), "USD": config.Asset("USD", 10, 2)}
        eng = engine.Engine(assets, {"ZUSD": config.Market("ZUSD", "Z", 0, "USD", 0, 4,
                                                           Decimal(1))})

        def held(user, asset):
            entry = call(eng, 101, [user, asset], self.now)["result"][asset]
            return Decimal(entry["available"]) + Decimal(entry["freeze"])
        call(eng, 102, [1, "Z", "deposit", 1, "10.7", {}], self.now)
        self.assertEqual(held(1, "Z"), 10)
        r = call(eng, 201, [1, "ZUSD", 1, "1.5", "3.9", "0", "0", ""], self.now)["result"]
        self.assertEqual((r["amount"], r["price"]), ("1", "3"))
        self.assertEqual(call(eng, 101, [1, "Z"], self.now)["result"]["Z"],
                         {"available": "9", "freeze": "1"})
        call(eng, 102, [2, "USD", "deposit", 2, "100", {}], self.now)
        r = call(eng, 201, [2, "ZUSD", 2, "2.5", "3", "0", "0", ""], self.now)["result"]
        self.assertEqual((r["amount"], r["deal_stock"], r["deal_money"]), ("2", "1", "3"))
        self.assertEqual((held(1, "Z") + held(2, "Z"), held(1, "USD") + held(2, "USD")),
                         (10, 100))
        r = call(eng, 201, [1, "ZUSD", 1, "0.9", "5", "0", "0", ""], self.now)
        self.assertEqual(r["error"], {"code": 1, "message": "invalid argument"})
        self.assertEqual(held(1, "Z"), 9)

    def test_market_buy_walks_the_asks_once(self):
        """A market buy leaves a maker it fills in part for the next ask, as the original,
        which walks the asks once: a deal's digits cut to the context's 34 (a balance a fill
        took past them) left money that bought from the same maker a second time."""
        assets = {"S": config.Asset("S", 0, 0), "M": config.Asset("M", 2, 2)}
        eng = engine.Engine(assets, {"SM": config.Market("SM", "S", 0, "M", 2, 0,
                                                          Decimal(1))})
        big = "99999999999999999999999999999999.99"
        many = "9" * 34
        for command, params in [
                (102, [1, "M", "d", 1, big, {}]), (102, [2, "M", "d", 2, big, {}]),
                (102, [1, "S", "d", 3, "1", {}]),
                (201, [1, "SM", 1, "1", big, "0", "0", "s"]),
                # the fill takes user 1's M past 10^32: 34 digits at its 2 places
                (201, [2, "SM", 2, "1", big, "0", "0", "s"]),
                (102, [4, "S", "d", 4, many, {}]),
                (201, [4, "SM", 1, many, "0.03", "0", "0", "s"])]:
            self.assertIsNone(call(eng, command, params, self.now)["error"], params)
        r = call(eng, 202, [1, "SM", 2, "199999999999999999999999999999999", "0", "s"],
                 self.now)["result"]
        # the original's numbers: one deal
        self.assertEqual((r["left"], r["deal_stock"], r["deal_money"]),
                         ("0.1", "6666666666666666666666666666666633",
                          "199999999999999999999999999999998.9"))
        self.assertEqual(eng.deal_id, 2)
        self.assertEqual(str(eng.balances.get(1, AVAILABLE, "M")), "1.00")
        self.assertEqual(str(eng.balances.get(4, FREEZE, "S")),
                         "3333333333333333333333333333333366")

    def test_fee_sums_of_a_negative_zero_rate(self):
        """A fee rate written "-0" is accepted, as by the original; an order's fee sum is
        still zero plus its fees, a positive zero, though each fee is a negative one."""
        self.deposit(1, "BTC", "1", 1)
        self.deposit(2, "BCH", "100", 2)
        self.run_cmd(201, 1, "BTCBCH", 1, "1", "10", "-0", "-0", "")
        r = self.run_cmd(201, 2, "BTCBCH", 2, "1", "10", "-0", "-0", "")["result"]
        self.assertEqual((r["taker_fee"], r["deal_fee"]), ("-0", "0e-12"))
        maker = json.loads(self.eng.effects.take()[1][-2][1])["order"]
        self.assertEqual((maker["maker_fee"], maker["deal_fee"]), ("-0", "0e-20"))

    def test_self_trade_and_fees_leave_users(self):
        """A user may trade with itself; fees leave the balances and are counted."""
        self.deposit(1, "BTC", "2", 1)
        self.deposit(1, "BCH", "100", 2)
        self.run_cmd(201, 1, "BTCBCH", 1, "1", "10", "0.01", "0.01", "")
        self.run_cmd(201, 1, "BTCBCH", 2, "1", "10", "0.01", "0.01", "")
        b = self.run_cmd(101, 1, "BTC", "BCH")["result"]
        self.assertEqual(b, {"BTC": {"available": "1.99", "freeze": "0"},
                             "BCH": {"available": "99.9", "freeze": "0"}})
        self.assertEqual(str(self.eng.balances.fees["BTC"]), "0.010000000000")
        self.assertEqual(str(self.eng.balances.fees["BCH"]), "0.10000000000000000000")

    def test_refusals_change_nothing(self):
        """Every refused command leaves balances, books and counters as they were."""
        self.deposit(1, "BTC", "1", 1)
        before = (dict(self.eng.balances.entries), self.eng.order_id, self.eng.deal_id)
        bad = [(102, 1, "BTC", "x", 1, "NaN", {}), (102, 1, "BTC", "x", 1, "Infinity", {}),
               (102, 1, "BTC", "x", 1, "1e999", {}), (102, 1, "BTC", "x", 1, 5, {}),
               (102, 1, "BTC", "x" * 31, 1, "1", {}),
               (102, 1, "BTC", "\u00e9" * 31, 1, "1", {}), (102, 1, "BTC", "x", 1, "1", []),
               (102, 1, "BTC", "x", 1.5, "1", {}), (102, True, "BTC", "x", 1, "1", {}),
               (201, 1, "BTCBCH", 1, "2", "10", "0", "0", ""),
               (201, 1, "BTCBCH", 1, "-1", "10", "0", "0", ""),
               (201, 1, "BTCBCH", 1, "1", "0", "0", "0", ""),
               (201, 1, "BTCBCH", 1, "1", "10", "1", "0", ""),
               (201, 1, "BTCBCH", 1, "1", "10", "-0.1", "0", ""),
               (201, 1, "BTCBCH", 1, "1", "10", [], "0", ""),
               (201, 1, "BTCBCH", 1, "1", "10", "0", 0.001, ""),
               (201, 1, "BTCBCH", 1, "1", "10", "0", "1", ""),
               (202, 1, "BTCBCH", 1, "1", {}, ""),
               (201, 1, "BTCBCH", 1, "1", "10", "0", "0", "s" * 31),
               (201, 1, "BTCBCH", 1, "1", "10", "0", "0"),
               (201, 1, "BTCBCH", 1, "0.0001", "10", "0", "0", ""),
               (202, 1, "BTCBCH", 1, "1", "0", ""), (202, 1, "BTCBCH", 2, "1", "0", ""),
               (204, 1, "BTCBCH", 1), (203, 1, "BTCBCH", 0, 102), (203, 1, "BTCBCH", 0, -1),
               (205, "BTCBCH", 3, 0, 10), (206, "BTCBCH", 10, "-1"), (101, 0), (101,),
               # a side past 32 bits, which the original cut to 1
               (201, 1, "BTCBCH", (1 << 32) + 1, "1", "10", "0", "0", ""),
               (202, 1, "BTCBCH", (1 << 32) + 1, "1", "0", ""),
               (205, "BTCBCH", (1 << 32) + 1, 0, 10),
               (101, 1, "NOPE"), (105, 5), (308, "NOPE")]
        for params in bad:
            r = self.run_cmd(*params)
            self.assertIsNotNone(r["error"], params)
            self.assertIsNone(r["result"], params)
        self.assertEqual((dict(self.eng.balances.entries), self.eng.order_id,
                          self.eng.deal_id), before)

    def test_balance_beyond_its_digits(self):
        """A deposit whose sum would not fit the asset's prec_save places in 34 digits is
        refused as an invalid argument and changes nothing.  A fill that takes a balance past
        them keeps its whole integer part, as the original's rescale keeps it, and sums with
        it are cut to 34 digits first, as in the original: never NaN (which took any
        withdrawal and any order)."""
        big = "6" + "0" * 21                 # BTC keeps 12 places: room below 1e22
        self.deposit(1, "BTC", big, 1)
        r = self.run_cmd(102, 1, "BTC", "deposit", 2, big, {})
        self.assertEqual(r["error"], {"code": 1, "message": "invalid argument"})
        self.assertEqual(str(self.eng.balances.get(1, AVAILABLE, "BTC")), big + ".000000000000")
        self.assertNotIn((1, "BTC", "deposit", 2), self.eng.dedup)
        # BCH keeps 20 places (room below 1e14): 9e13 + 2e13 - 2e10 (the fee) has 35 digits
        self.deposit(2, "BCH", "90000000000000", 3)
        self.deposit(2, "BTC", "10", 4)
        self.deposit(3, "BCH", "90000000000000", 5)
        for user, side in ((2, 1), (3, 2)):
            r = self.run_cmd(201, user, "BTCBCH", side, "1", "20000000000000", "0.001",
                             "0.001", "")
            self.assertIsNone(r["error"], r)
        self.assertEqual(self.eng.deal_id, 1)
        self.assertEqual(str(self.eng.balances.get(2, AVAILABLE, "BCH")),
                         "109980000000000." + "0" * 20)
        self.assertEqual(self.eng.balances.fees["BCH"], Decimal("20000000000"))
        self.assertEqual(self.run_cmd(101, 2, "BCH")["result"],
                         {"BCH": {"available": "109980000000000", "freeze": "0"}})
        # the balance answers as any other: what it holds may leave, more may not
        r = self.run_cmd(102, 2, "BCH", "withdraw", 6, "-5000000000", {})
        self.assertIsNone(r["error"], r)
        r = self.run_cmd(201, 2, "BTCBCH", 2, "5", "1000000000000000", "0", "0", "")
        self.assertEqual(r["error"], {"code": 10, "message": "balance not enough"})
        r = self.run_cmd(201, 2, "BTCBCH", 2, "1", "100000000000000", "0", "0", "")
        self.assertIsNone(r["error"], r)
        self.assertEqual(self.run_cmd(101, 2, "BCH")["result"],
                         {"BCH": {"available": "9975000000000", "freeze": "100000000000000"}})
        self.assertEqual(str(self.eng.balances.get(2, FREEZE, "BCH")),
                         "100000000000000." + "0" * 20)
        # past 34 digits a sum is cut to them (ROUND_DOWN), then padded to the places: the
        # last unit of 9975000000000.00000000000000000001 is lost when the freeze comes back
        r = self.run_cmd(102, 2, "BCH", "deposit", 7, "0.00000000000000000001", {})
        self.assertIsNone(r["error"], r)
        order_id = self.run_cmd(203, 2, "BTCBCH", 0, 10)["result"]["records"][0]["id"]
        r = self.run_cmd(204, 2, "BTCBCH", order_id)
        self.assertIsNone(r["error"], r)
        self.assertEqual(str(self.eng.balances.get(2, AVAILABLE, "BCH")),
                         "109975000000000." + "0" * 20)
        self.assertFalse(self.eng.balances.has(2, FREEZE, "BCH"))

    def test_context_follows_the_engine(self):
        """An engine made where its decimal context stays local (a coroutine runs with a
        copy of the context variables) computes in its own 34 digits wherever it is called,
        not in the caller's (here the default 28)."""
        eng = contextvars.copy_context().run(new_engine)
        saved = decimal.getcontext()
        self.addCleanup(decimal.setcontext, saved)
        for replay in (False, True):
            decimal.setcontext(decimal.Context())
            ops = [(102, [1, "BCH", "deposit", 1, "90000000000000", {}]),
                   (102, [2, "BTC", "deposit", 2, "1", {}]),
                   (201, [2, "BTCBCH", 1, "1", "20000000000000", "0", "0", ""]),
                   (201, [1, "BTCBCH", 2, "1", "20000000000000", "0", "0", ""])]
            for command, params in ops:
                if replay:
                    eng.replay(engine.LOG_METHODS[command], copy.deepcopy(params), self.now)
                else:
                    self.assertIsNone(call(eng, command, params, self.now)["error"])
            # 9e13 - 2e13 at BCH's 20 places: 34 digits
            self.assertEqual(str(eng.balances.get(1, AVAILABLE, "BCH")),
                             "70000000000000." + "0" * 20)
            eng = contextvars.copy_context().run(new_engine)

    def test_offsets_beyond_the_lists(self):
        """An offset is unsigned 64-bit: a negative one skips every order, and the answer
        echoes it as the original's signed JSON integer does."""
        self.deposit(1, "BTC", "5", 1)
        for price in ("8000", "8001"):
            self.run_cmd(201, 1, "BTCBCH", 1, "1", price, "0", "0", "")
        for offset, echoed, count in [(1, 1, 1), (5, 5, 0), (-1, -1, 0),
                                      ((1 << 64) - 1, -1, 0), ((1 << 63) - 1, (1 << 63) - 1, 0)]:
            pending = self.run_cmd(203, 1, "BTCBCH", offset, 10)["result"]
            self.assertEqual((pending["offset"], pending["total"], len(pending["records"])),
                             (echoed, 2, count), offset)
            book = self.run_cmd(205, "BTCBCH", 1, offset, 10)["result"]
            self.assertEqual((book["offset"], book["total"], len(book["orders"])),
                             (echoed, 2, count), offset)
        self.assertEqual(self.run_cmd(205, "BTCBCH", 1, 1, 10)["result"]["orders"][0]["price"],
                         "8001")

    def test_repeats_refused_for_a_day(self):
        """A (user, asset, business, id) is refused as a repeat for a day; the minute timer
        forgets the keys older than that, even a key that was recorded again."""
        eng, day = self.eng, engine.DEDUP_KEEP

        def update(business_id, now):
            return call(eng, 102, [1, "BTC", "deposit", business_id, "1", {}], now)["error"]

        t = 1000.0
        self.assertIsNone(update(1, t))
        self.assertIsNone(update(2, t + 10))
        self.assertEqual(update(1, t + day - 1), {"code": 10, "message": "repeat update"})
        self.assertIsNone(update(1, t + day))          # a day on: new again, recorded again
        self.assertIsNone(update(3, t + day + 5))
        self.assertEqual(eng.expire_dedup(t + day + 9), 0)
        self.assertEqual(eng.expire_dedup(t + day + 10), 1)      # id 2
        self.assertEqual(update(1, t + day + 20), {"code": 10, "message": "repeat update"})
        self.assertEqual(eng.expire_dedup(t + 2 * day + 5), 2)   # ids 1 and 3
        self.assertEqual(eng.dedup, {})
        self.assertEqual(eng.balances.get(1, AVAILABLE, "BTC"), Decimal("4"))

    def test_replay_applies_a_logged_repeat(self):
        """A logged update is replayed even where the key looks a repeat by the times in
        the log: live, the minute timer had forgotten the key, then the clock stepped back
        under a day from it.  The log holds only what was accepted."""
        eng, day = self.eng, engine.DEDUP_KEEP
        params = [1, "BTC", "deposit", 7, "1", {}]
        t = 1000.0
        self.assertIsNone(call(eng, 102, list(params), t)["error"])
        eng.expire_dedup(t + day + 61)                  # forgotten at the next minute
        self.assertIsNone(call(eng, 102, list(params), t + day - 30)["error"])
        again = engine.Engine(*config.example_tables())
        for now in (t, t + day - 30):
            self.assertEqual(again.replay("update_balance", list(params), now),
                             {"status": "success"})
        self.assertEqual(again.balances.get(1, AVAILABLE, "BTC"), Decimal("2"))
        self.assertEqual(again.dedup, eng.dedup)
        self.assertEqual(call(again, 102, list(params), t + day - 20)["error"],
                         {"code": 10, "message": "repeat update"})

    def test_replay_changes_at_prec_show(self):
        """A replayed balance.update is cut to the asset's prec_show places, as it was
        live (the original replayed it at prec_save, so that a restart changed the
        balance)."""
        params = [1, "BTC", "deposit", 1, "1.123456789012", {}]
        self.assertIsNone(call(self.eng, 102, list(params), 1000.0)["error"])
        again = engine.Engine(*config.example_tables())
        again.replay("update_balance", list(params), 1000.0)
        for eng in (self.eng, again):
            self.assertEqual(str(eng.balances.get(1, AVAILABLE, "BTC")), "1.123456780000")

    def test_market_buy_worked_example(self):
        """The spec's worked market buy: 1 @ 8000 then 0.00131077 @ 8010.5."""
        self.deposit(2, "BTC", "10", 1)
        self.deposit(1, "BCH", "100000", 2)
        self.run_cmd(201, 2, "BTCBCH", 1, "1", "8000", "0.002", "0.001", "")
        self.run_cmd(201, 2, "BTCBCH", 1, "3", "8010.5", "0.002", "0.001", "")
        r = self.run_cmd(202, 1, "BTCBCH", 2, "8010.5", "0.002", "")["result"]
        self.assertEqual((r["deal_stock"], r["deal_money"], r["left"], r["deal_fee"]),
                         ("1.00131077", "8010.499923085", "0.000076915", "0.00200262154"))

    def test_depth_never_stale(self):
        """A repeated depth query sees a trade made in between."""
        self.deposit(1, "BTC", "5", 1)
        self.deposit(2, "BCH", "100000", 2)
        self.run_cmd(201, 1, "BTCBCH", 1, "2", "8000", "0", "0", "")
        first = self.run_cmd(206, "BTCBCH", 10, "0")["result"]
        self.assertEqual(first, {"asks": [["8000", "2"]], "bids": []})
        self.assertIs(self.eng.execute(206, ["BTCBCH", 10, "0"], self.now),
                      self.eng.execute(206, ["BTCBCH", 10, "0"], self.now))
        self.run_cmd(201, 2, "BTCBCH", 2, "0.5", "8000", "0", "0", "")
        self.assertEqual(self.run_cmd(206, "BTCBCH", 10, "0")["result"],
                         {"asks": [["8000", "1.5"]], "bids": []})

    def test_depth_limit_zero(self):
        """A limit of 0 lists no level, merged by an interval or not, as the original's
        loops stop before the first."""
        self.deposit(1, "BTC", "5", 1)
        self.deposit(2, "BCH", "100000", 2)
        self.run_cmd(201, 1, "BTCBCH", 1, "1", "8000", "0", "0", "")
        self.run_cmd(201, 1, "BTCBCH", 1, "1", "8100", "0", "0", "")
        self.run_cmd(201, 2, "BTCBCH", 2, "1", "7000", "0", "0", "")
        for interval in ("0", "10"):
            self.assertEqual(self.run_cmd(206, "BTCBCH", 0, interval)["result"],
                             {"asks": [], "bids": []})
        self.assertEqual(self.run_cmd(206, "BTCBCH", 1, "10")["result"],
                         {"asks": [["8000", "1"]], "bids": [["7000", "1"]]})

    def test_effects_of_a_trade(self):
        """A crossing order leaves the original's history rows and messages, in order."""
        self.deposit(1, "BTC", "1", 1)
        self.deposit(2, "BCH", "10000", 2)
        self.eng.effects.take()
        self.run_cmd(201, 1, "BTCBCH", 1, "1", "8000", "0.002", "0.001", "a")
        self.run_cmd(201, 2, "BTCBCH", 2, "0.5", "8000", "0.002", "0.001", "b")
        history, messages = self.eng.effects.take()
        self.assertEqual([t for t, _ in messages], ["orders", "deals", "orders", "orders"])
        deal = json.loads(messages[1][1])
        self.assertEqual(deal[1:], ["BTCBCH", 1, 2, 1, 2, "8000.00000000", "0.50000000",
                                    "4.00000000000000000000", "0.001000000000", 2, 1, "BTC",
                                    "BCH"])
        self.assertEqual([json.loads(m)["event"] for t, m in messages if t == "orders"],
                         [1, 2, 3])
        kinds = [k for k, _, _ in history]
        self.assertEqual(kinds, ["deal_history", "deal_history", "user_deal_history",
                                 "user_deal_history"] + ["balance_history"] * 6 +
                         ["order_history", "order_detail"])
        changes = [(row[1], row[2], row[4], row[5]) for k, _, row in history
                   if k == "balance_history"]
        self.assertEqual(changes, [
            (2, "BCH", "-4000.0000000000000000", "6000.00000000000000000000"),
            (2, "BTC", "0.50000000", "0.500000000000"),
            (2, "BTC", "-0.001000000000", "0.499000000000"),
            (1, "BTC", "-0.50000000", "0.500000000000"),
            (1, "BCH", "4000.0000000000000000", "4000.00000000000000000000"),
            (1, "BCH", "-4.00000000000000000000", "3996.00000000000000000000")])
        detail = [row[6] for k, _, row in history if k == "balance_history"][2]
        self.assertEqual(detail, '{"a": "0.5", "f": "0.002", "i": 2, "m": "BTCBCH", "p": "8000"}')

    def test_replay_reproduces_state(self):
        """Replaying the operation log of a session rebuilds the same balances and books."""
        live = new_engine()
        log = []
        now = 100.0
        ops = [(102, [1, "BTC", "deposit", 1, "10", {}]), (102, [2, "BCH", "deposit", 2,
                                                                  "100000", {"x": 1}]),
               (201, [1, "BTCBCH", 1, "3", "8000", "0.002", "0.001", "s"]),
               (201, [2, "BTCBCH", 2, "1", "8100", "0.002", "0.001", "s"]),
               (202, [2, "BTCBCH", 2, "100", "0.002", "m"]), (204, [1, "BTCBCH", 1])]
        for command, params in ops:
            now += 1
            live.execute(command, params, now)
            log.append((engine.Engine.log_entry(command, params), now))
        again = new_engine()
        for detail, t in log:
            again.replay(*engine.load_detail(detail), t)
        self.assertEqual(again.balances.entries, live.balances.entries)
        self.assertEqual((again.order_id, again.deal_id), (live.order_id, live.deal_id))
        self.assertEqual(json.loads(log[1][0]),
                         {"method": "update_balance",
                          "params": [2, "BCH", "deposit", 2, "100000", {"id": 2, "x": 1}]})

    def test_log_entry_text(self):
        """Order commands are logged as compact JSON, strings escaped, non-ASCII kept."""
        params = [7, "BTCBCH", 2, "1.5", "8000", "0.002", "0.001", 'é "q" \\ \n']
        text = engine.Engine.log_entry(201, params)
        self.assertEqual(text, '{"method": "limit_order", "params": [7, "BTCBCH", 2, "1.5", '
                               '"8000", "0.002", "0.001", "é \\"q\\" \\\\ \\n"]}')
        self.assertEqual(json.loads(text)["params"], params)
        self.assertEqual(engine.Engine.log_entry(204, [1, "BTCBCH", 18446744073709551615]),
                         '{"method": "cancel_order", "params": [1, "BTCBCH", '
                         '18446744073709551615]}')
        # the texts kept for repeated parameters keep an integer and its digits apart
        for _ in range(2):
            self.assertEqual(engine.Engine.log_entry(204, [1, "1", 1]),
                             '{"method": "cancel_order", "params": [1, "1", 1]}')
            self.assertEqual(engine.Engine.log_entry(204, ["1", 1, "1"]),
                             '{"method": "cancel_order", "params": ["1", 1, "1"]}')
