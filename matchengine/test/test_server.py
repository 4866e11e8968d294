# -*- test-case-name: matchengine.test.test_server -*-
"""The matchengine service against real MariaDB and a Kafka broker, over its RPC port."""

import gc
import json
from decimal import Decimal

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from matchengine import config, server
from matchengine.operlog import autocommit_connection
from matchengine.outbox import WriterOutbox
from matchengine.server import MatchEngine
from matchengine.test.test_engine import METHODS, TRANSCRIPT, norm
from utils import jsonfmt, mysql, testing
from utils.kafka_queue import KafkaConsumerService
from utils.rpc_client import ConnectionLost, RPCClient
from utils.testing import until


def engine_config(port, brokers, log_db, history_db, mysql_port=None, **extra):
    info = testing.require("mysql")
    db = {"host": info["host"], "port": mysql_port or int(info["port"]), "user": info["user"],
          "pass": info["password"]}
    data = {
        "log": {"path": "log/matchengine", "flag": "fatal,error,warn,info"},
        "svr": {"bind": ["tcp@127.0.0.1:%d" % port], "max_pkg_size": 102400,
                "heartbeat_check": False},
        "cli": "tcp@127.0.0.1:%d" % testing.free_port(),
        "db_log": dict(db, name=log_db), "db_history": dict(db, name=history_db),
        "assets": [{"name": "BCH", "prec_save": 20, "prec_show": 8}] + [
            {"name": n, "prec_save": 12, "prec_show": 8}
            for n in ["BTC", "LTC", "ETH", "ETC", "ZEC", "XMR", "DSH"]],
        "markets": [{"name": n + "BCH", "min_amount": "0.001", "stock": {"name": n, "prec": 8},
                     "money": {"name": "BCH", "prec": 8}}
                    for n in ["BTC", "LTC", "ETH", "ETC", "ZEC", "XMR", "DSH"]],
        "brokers": brokers,
    }
    data.update(extra)
    return config.load_data(data)


class Harness:
    """One matchengine service on fresh databases, with a client and a Kafka broker."""

    def __init__(self, test, broker=None):
        self.test = test
        self.log_db = testing.create_database("log", ("trade_log",))
        test.addCleanup(testing.drop_database, self.log_db)
        self.history_db = testing.create_database("hist", ("trade_history",), True)
        test.addCleanup(testing.drop_database, self.history_db)
        if broker is None:
            broker = testing.KafkaBroker().start()
            test.addCleanup(broker.stop)
        self.broker = broker
        self.port = testing.free_port()
        self.mysql_port = int(testing.require("mysql")["port"])
        self.service = None
        self.client = None
        self.pools = []
        test.addCleanup(lambda: defer.Deferred.fromCoroutine(self.cleanup()))

    async def cleanup(self):
        """Stop what runs, then close the pools (the service needs its own to stop)."""
        if self.client is not None:
            self.client.stop()
        if self.service is not None and self.service.running:
            await self.service.stopService()
        for db in self.pools:
            db.close()

    def database(self, name):
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], self.mysql_port, kw["user"], kw["password"], name,
                                 "utf8mb4")
        self.pools.append(db)
        return db

    async def start(self, **extra):
        cfg = engine_config(self.port, self.broker.address, self.log_db, self.history_db,
                            self.mysql_port, **extra)
        assets, markets = config.build_tables(cfg)
        self.outbox = WriterOutbox(reactor, cfg.db_history, self.broker.address, workers=4)
        commits = autocommit_connection(cfg.db_log)      # as the daemon commits its log
        self.pools.append(commits)
        self.service = MatchEngine(cfg, assets, markets, self.database(self.log_db),
                                   self.outbox, reactor=reactor, db_log_commits=commits)
        self.service.startService()
        await self.service.when_ready()
        self.client = RPCClient(reactor, "matchengine", ["tcp@127.0.0.1:%d" % self.port],
                                1 << 20)
        self.client.start()
        await until(lambda: self.client.connected, what="client connected")
        return self.service

    async def stop(self):
        self.client.stop()
        await self.service.stopService()

    async def call(self, command, params):
        return await self.client.call(command, params, timeout=10.0)

    async def restart_unchanged(self):
        """Stop, start again, and check that recovery rebuilt the same state."""
        before = self.state()
        await self.stop()
        await self.start()
        self.test.assertEqual(self.state(), before)

    def state(self):
        e = self.service.engine
        orders = {(name, o.id): (o.user_id, o.side, o.price, o.amount, o.left, o.freeze,
                                 o.deal_stock, o.deal_money, o.deal_fee, o.source,
                                 o.create_time)
                  for name, m in e.markets.items() for o in m.orders.values()}
        return dict(e.balances.entries), orders, e.order_id, e.deal_id, dict(e.dedup)


def transcript_calls():
    for line in open(TRANSCRIPT):
        record = json.loads(line)
        request = record.get("request")
        if request and request.get("method") in METHODS:
            yield request, record["response"]


class ServiceTests(TestCase):

    timeout = 180

    async def transcript_then_restart(self):
        # every asset.summary in a forked child, as a large engine computes it
        self.patch(server, "FORK_SUMMARY_ENTRIES", 0)
        h = Harness(self)
        await h.start()
        for request, expected in transcript_calls():
            got = await h.client.call(METHODS[request["method"]], request["params"], 10.0,
                                      req_id=request["id"])
            self.assertEqual(norm(got), norm(expected), request)
        before = h.state()
        await h.stop()
        # restart: the operation log alone rebuilds the same state, frozen out of the
        # collector's reach once loaded
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        await h.start()
        self.assertEqual(h.state(), before)
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertTrue(gc.isenabled())
        # a slice, more trading, restart: slice + replay gives the same state again
        self.assertTrue(await h.service.make_slice())
        await h.call(102, [9, "BTC", "deposit", 100, "5", {}])
        await h.call(201, [9, "BTCBCH", 1, "1", "9000", "0.002", "0.001", "after"])
        before = h.state()
        await h.stop()
        await h.start()
        self.assertEqual(h.state(), before)
        # the history and the messages of the session are there
        hist = h.database(h.history_db)
        rows = await hist.query("SELECT `business`, `change` FROM `balance_history_1` "
                                "WHERE `user_id` = 1 ORDER BY `id` LIMIT 1")
        self.assertEqual([(b, str(c)) for b, c in rows], [("deposit", "100000.00000000")])
        deals = await hist.query("SELECT COUNT(*) FROM `user_deal_history_1`")
        self.assertGreater(deals[0][0], 0)
        got = []
        consumer = KafkaConsumerService(h.broker.address, "deals",
                                        lambda offset, value: got.append(json.loads(value)),
                                        offset="earliest", reactor=reactor)
        consumer.startService()
        self.addCleanup(consumer.stopService)
        await until(lambda: len(got) >= 5, what="deal messages")
        self.assertEqual(got[1][1:], ["BTCBCH", 3, 5, 3, 1, "8000.00000000", "0.50000000",
                                      "4.00000000000000000000", "0.001000000000", 2, 2, "BTC",
                                      "BCH"])
        await h.stop()

    def test_transcript_restart_and_slice(self):
        """Over the RPC port the original's answers come back (asset.summary's from a forked
        child); restarts (from the log, then from a slice plus the log) rebuild the same
        state; history and messages are written."""
        return defer.Deferred.fromCoroutine(self.transcript_then_restart())

    async def acknowledged_means_logged(self):
        h = Harness(self)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        await h.start(commit_window=0.005)
        # after recovery the young generation is collected less often than by default
        self.assertEqual(gc.get_threshold()[0], server.GC_YOUNG_THRESHOLD)
        self.assertGreater(server.GC_YOUNG_THRESHOLD, 700)
        calls = [h.client.call(102, [u, "BCH", "deposit", u, "100", {}], 10.0)
                 for u in range(1, 201)]
        replies = await defer.gatherResults(calls)
        self.assertTrue(all(r["error"] is None for r in replies))
        db = h.database(h.log_db)
        rows = await db.query("SELECT COUNT(*) FROM `%s`" % h.service.operlog.table)
        self.assertEqual(rows[0][0], 200)
        self.assertLess(h.service.operlog.pending_rows, 1)
        await h.stop()

    def test_replies_wait_for_the_log(self):
        """Every acknowledged write is in the operation log table when its reply arrives."""
        return defer.Deferred.fromCoroutine(self.acknowledged_means_logged())

    async def four_byte_texts(self):
        h = Harness(self)
        await h.start()
        gift = "gift\U0001f381"
        for user in (1, 2):
            reply = await h.call(102, [user, "BCH" if user == 1 else "BTC", gift, 1, "1000",
                                       {"note": "\U0001f600"}])
            self.assertIsNone(reply["error"], reply)
        # 30 characters, 120 bytes: the column holds 30 characters
        wide = "\U0001f381" * 30
        reply = await h.call(102, [3, "BCH", wide, 1, "1", {}])
        self.assertIsNone(reply["error"], reply)
        # two orders that fill each other: both finish, into order_history
        for user, side in ((2, 1), (1, 2)):
            reply = await h.call(201, [user, "BTCBCH", side, "1", "100", "0", "0",
                                       "app\U0001f680"])
            self.assertIsNone(reply["error"], reply)
        before = h.state()
        await h.stop()
        log = h.database(h.log_db)
        details = await log.query("SELECT `detail` FROM `%s` ORDER BY `id`"
                                  % h.service.operlog.table)
        self.assertIn("app\U0001f680", details[-1][0])
        hist = h.database(h.history_db)
        rows = await hist.query("SELECT `business`, `detail` FROM `balance_history_1` "
                                "ORDER BY `id` LIMIT 1")
        self.assertEqual(rows[0][0], gift)
        self.assertEqual(json.loads(rows[0][1])["note"], "\U0001f600")
        wides = await hist.query("SELECT `business` FROM `balance_history_3`")
        self.assertEqual([row[0] for row in wides], [wide])
        sources = await hist.query("SELECT `source` FROM `order_history_2`")
        self.assertEqual([s for s, in sources], ["app\U0001f680"])
        await h.start()
        self.assertEqual(h.state(), before)
        await h.stop()

    def test_texts_beyond_three_bytes_a_character(self):
        """A business, a detail and an order's source with characters of four bytes in
        UTF-8 (MySQL's "utf8" holds three at most): acknowledged, logged, written to the
        history, and replayed; a business of 30 such characters too."""
        return defer.Deferred.fromCoroutine(self.four_byte_texts())

    async def detail_too_long(self):
        h = Harness(self)
        await h.start()
        before = h.state()
        # the request fits the port's max_pkg_size (102400 here); its detail does not fit
        # the TEXT columns of the operation log and the balance history (65,535 bytes)
        reply = await h.call(102, [1, "BCH", "deposit", 1, "10", {"note": "x" * 70000}])
        self.assertEqual(reply["error"], {"code": 1, "message": "invalid argument"})
        self.assertEqual(h.state(), before)
        # a body of about 35,000 bytes whose numbers come back longer in the entry (1e-05
        # is written 1.0000000000000001e-05): about 120,000 bytes
        reply = await h.call(102, [1, "BCH", "deposit", 2, "10", {"a": [1e-5] * 5000}])
        self.assertEqual(reply["error"], {"code": 1, "message": "invalid argument"})
        self.assertEqual(h.state(), before)
        # an order's amount of 70,000 characters, leading zeros: a valid decimal
        reply = await h.call(201, [1, "BTCBCH", 1, "0" * 70000 + "1", "100", "0", "0", ""])
        self.assertEqual(reply["error"], {"code": 1, "message": "invalid argument"})
        self.assertEqual(h.state(), before)
        # a long detail that fits is measured and taken: acknowledged, and logged whole
        reply = await h.call(102, [1, "BCH", "deposit", 3, "10", {"note": "x" * 60000}])
        self.assertIsNone(reply["error"], reply)
        # and an order too long to check, taken
        reply = await h.call(201, [1, "BTCBCH", 2, "0" * 39000 + "1", "5", "0", "0", ""])
        self.assertIsNone(reply["error"], reply)
        before = h.state()
        await h.stop()
        log = h.database(h.log_db)
        rows = await log.query("SELECT `detail` FROM `%s`" % h.service.operlog.table)
        self.assertEqual(len(rows), 2)
        self.assertEqual(json.loads(rows[0][0])["params"][5]["note"], "x" * 60000)
        hist = h.database(h.history_db)
        rows = await hist.query("SELECT LENGTH(`detail`) FROM `balance_history_1`")
        self.assertEqual(len(rows), 1)
        self.assertGreater(rows[0][0], 60000)
        await h.start()
        self.assertEqual(h.state(), before)
        await h.stop()

    def test_detail_longer_than_the_log_holds(self):
        """A write whose operation-log entry would not fit the log's column is refused and
        changes nothing, where the entry would have been cut short (INSERT IGNORE) and the
        acknowledged write lost at the next start."""
        return defer.Deferred.fromCoroutine(self.detail_too_long())

    async def lone_surrogates(self):
        h = Harness(self)
        await h.start()
        reply = await h.call(102, [2, "BTC", "deposit", 1, "10", {}])
        self.assertIsNone(reply["error"], reply)
        before = h.state()
        for params in ([1, "BCH", "dep\ud800", 1, "10", {}],
                       [1, "BCH", "deposit", 1, "10", {"note": "\udc80x"}],
                       [2, "BTCBCH", 1, "1", "5", "0", "0", "s\udfff"]):
            command = 201 if len(params) == 8 else 102
            # escaped in the body, as a JSON encoder writes a lone surrogate: a body that
            # is not valid JSON text, whose connection is closed, as the original closes it
            client = RPCClient(reactor, "matchengine", ["tcp@127.0.0.1:%d" % h.port], 1 << 20)
            client.start()
            await until(lambda: client.connected, what="client connected")
            with self.assertRaises(ConnectionLost, msg=params):
                await client.call_raw(command, json.dumps(params).encode(), 10.0)
            client.stop()
            self.assertEqual(h.state(), before)
        reply = await h.call(201, [2, "BTCBCH", 1, "1", "5", "0", "0", "s\U0001f600"])
        self.assertIsNone(reply["error"], reply)
        await h.restart_unchanged()
        await h.stop()

    def test_lone_surrogates(self):
        """Texts with a surrogate code point not paired are refused before anything
        changes: the order they made was placed, then failed to be written out (an internal
        error with its state changed and not logged), and its message stopped the writer."""
        return defer.Deferred.fromCoroutine(self.lone_surrogates())

    async def odd_details(self):
        h = Harness(self)
        await h.start()
        before = h.state()

        def nested(depth):
            return '{"a": ' * depth + "1" + "}" * depth

        refused = [
            # as deep as the interpreter reads in the request path, but not once the entry
            # is read back at a deeper stack: it was acknowledged, and the next start failed
            '[7, "BTC", "deposit", 1, "1", %s]' % nested(950),
            # deeper still: written out after the balance changed, and failed there
            '[7, "BTC", "deposit", 2, "1", %s]' % nested(955),
            '[7, "BTC", "deposit", 3, "1", %s]' % nested(jsonfmt.MAX_DEPTH),
            '[7, "BTC", "dep\\u0000osit", 4, "1", {}]',
            '[7, "BTC", "deposit", 5, "1", {"note": "a\\u0000b"}]',
            '[7, "BTCBCH", 1, "1", "5", "0", "0", "a\\u0000b"]',
        ]
        for body in refused:
            command = 201 if "BTCBCH" in body else 102
            # not JSON as jansson reads it: the connection is closed, as the original does
            client = RPCClient(reactor, "matchengine", ["tcp@127.0.0.1:%d" % h.port], 1 << 20)
            client.start()
            await until(lambda: client.connected, what="client connected")
            with self.assertRaises(ConnectionLost, msg=body[:40]):
                await client.call_raw(command, body.encode(), 10.0)
            client.stop()
            self.assertEqual(h.state(), before)
        deepest = json.loads(nested(jsonfmt.MAX_DEPTH - 2))
        reply = await h.call(102, [7, "BTC", "deposit", 6, "1", deepest])
        self.assertIsNone(reply["error"], reply)
        # the id as the request gave it, signed, as the original writes it
        reply = await h.call(102, [8, "BTC", "deposit", -1, "2", {"note": "x"}])
        self.assertIsNone(reply["error"], reply)
        await h.restart_unchanged()
        await h.stop()      # the history written
        history = h.database(h.history_db)
        rows = await history.query("SELECT `detail` FROM `balance_history_8`")
        self.assertEqual(rows, [('{"note": "x", "id": -1}',)])
        rows = await history.query("SELECT `detail` FROM `balance_history_7`")
        self.assertEqual([json.loads(detail) for detail, in rows], [dict(deepest, id=6)])

    def test_odd_details(self):
        """Details nested deeper than jsonfmt.MAX_DEPTH and texts holding NUL are refused
        before anything changes: a deep detail was acknowledged and then stopped the next
        start, or was applied and answered with an internal error, unlogged."""
        return defer.Deferred.fromCoroutine(self.odd_details())

    async def slice_exact(self):
        h = Harness(self)
        # the templates as the original's schema made them
        log = h.database(h.log_db)
        await log.execute("ALTER TABLE `slice_balance_example` MODIFY `balance` DECIMAL(30,16) "
                          "NOT NULL")
        await log.execute("ALTER TABLE `slice_order_example` MODIFY `freeze` DECIMAL(30,8) "
                          "NOT NULL, MODIFY `deal_fee` DECIMAL(30,12) NOT NULL")
        await h.start()
        types = await log.query("SELECT `COLUMN_NAME`, `DATA_TYPE` FROM information_schema."
                                "COLUMNS WHERE `TABLE_SCHEMA` = %s AND `TABLE_NAME` LIKE "
                                "'slice_%%_example' AND `DATA_TYPE` = 'decimal'", (h.log_db,))
        self.assertEqual(types, [])
        await h.call(102, [1, "BTC", "deposit", 1, "10", {}])
        await h.call(102, [2, "BCH", "deposit", 1, "100000", {}])
        # a bid left resting, partly filled: its freeze has 16 decimals, the ask's fee (in
        # BCH) 20, and the seller's BCH balance 20
        for params in ([2, "BTCBCH", 2, "1.23456789", "1234.56789012", "0.0013", "0.0017",
                        ""],
                       [1, "BTCBCH", 1, "0.12345678", "1234.56789012", "0.0013", "0.0017",
                        ""]):
            reply = await h.call(201, params)
            self.assertIsNone(reply["error"], reply)
        # a fill that takes a BCH balance past 34 digits at its 20 places
        for command, params in ((102, [3, "BCH", "deposit", 2, "90000000000000", {}]),
                                (102, [3, "BTC", "deposit", 3, "10", {}]),
                                (102, [4, "BCH", "deposit", 4, "90000000000000", {}]),
                                (201, [3, "BTCBCH", 1, "1", "20000000000000", "0", "0", ""]),
                                (201, [4, "BTCBCH", 2, "1", "20000000000000", "0", "0", ""])):
            reply = await h.call(command, params)
            self.assertIsNone(reply["error"], reply)

        def texts():
            eng = h.service.engine
            return ([(key, [None if v is None else str(v) for v in entry])
                     for key, entry in sorted(eng.balances.entries.items())],
                    [o.info_json() for m in eng.markets.values() for o in m.orders.values()])
        before, saved = h.state(), texts()
        # digits beyond the 16 places of the original's balance column
        self.assertIn("152.21763589628172188232", str(saved[0]))
        self.assertIn("110000000000000." + "0" * 20, str(saved[0]))
        # 34 digits: matched under the engine's context, not the default 28 digits of the
        # coroutine the service was started in
        self.assertIn("70000000000000." + "0" * 20, str(saved[0]))
        self.assertTrue(await h.service.make_slice())
        await h.stop()
        await h.start()
        self.assertEqual(h.state(), before)
        self.assertEqual(texts(), saved)
        await h.stop()

    async def slices_at_once(self):
        h = Harness(self)
        await h.start()
        h.service.clock_time = lambda: 1793000000.5         # the same second throughout
        await h.call(102, [1, "BTC", "deposit", 1, "10", {}])
        first, second = h.service.make_slice(), h.service.make_slice()
        # made while the first slice is being written, before the second is
        deposit = await h.call(102, [1, "BTC", "deposit", 2, "5", {}])
        self.assertIsNone(deposit["error"])
        self.assertEqual(await defer.gatherResults([first, second]), [True, True])
        log = h.database(h.log_db)
        rows = await log.query("SELECT `time`, `end_oper_id` FROM `slice_history` "
                               "ORDER BY `id`")
        self.assertEqual([(int(t), int(oper)) for t, oper in rows],
                         [(1793000000, 1), (1793000001, 2)])
        for ts, balance in ((1793000000, "10"), (1793000001, "15")):
            saved = await log.query("SELECT `balance` FROM `slice_balance_%d`" % ts)
            self.assertEqual([Decimal(v) for v, in saved], [Decimal(balance)])
        await h.restart_unchanged()
        await h.stop()

    async def makeslice_command(self):
        from matchengine import cli, persist
        h = Harness(self)
        await h.start()
        written = defer.Deferred()
        forked = []

        def make_slice(*args):
            forked.append(args[2])
            return written
        self.patch(persist, "make_slice", make_slice)
        with capturedLogs() as events:
            self.assertEqual(await cli.commands(h.service)["makeslice"]([]), "OK\n")
            self.assertEqual(len(forked), 1)
            written.callback(False)
        self.assertIn("slice %d failed" % forked[0],
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical])
        # a slice whose writing raises (the embedded exchange's copy, on a full disk) is
        # said to have failed, as critical, too
        written = defer.Deferred()
        with capturedLogs() as events:
            self.assertEqual(await cli.commands(h.service)["makeslice"]([]), "OK\n")
            written.errback(OSError(28, "database or disk is full"))
        self.assertIn("slice %d failed" % forked[1],
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        await h.stop()

    async def makeslice_while_the_log_waits(self):
        from matchengine import cli, persist
        h = Harness(self)
        await h.start()
        committed, written, forked = defer.Deferred(), defer.Deferred(), []
        flush = h.service.operlog.flush
        self.patch(h.service.operlog, "flush", lambda: committed.addCallback(lambda _: flush()))
        self.patch(persist, "make_slice", lambda *args: forked.append(args[2]) or written)
        self.patch(cli, "SLICE_ANSWER_WAIT", 0.2)
        self.assertEqual(await cli.commands(h.service)["makeslice"]([]), "OK\n")
        self.assertEqual(forked, [])
        committed.callback(None)         # the log's database is back
        await until(lambda: forked, what="the slice")
        written.callback(True)
        await h.stop()

    async def stop_during_a_slice(self):
        from matchengine import cli, persist, server
        h = Harness(self)
        await h.start()
        written = defer.Deferred()
        self.patch(persist, "make_slice", lambda *args: written)
        self.patch(server, "SLICE_STOP_PATIENCE", 0.3)
        self.assertEqual(await cli.commands(h.service)["makeslice"]([]), "OK\n")
        with capturedLogs() as events:
            await h.service.stopService()       # the slice is never written
        self.assertEqual([formatEvent(e) for e in events
                          if e["log_level"] >= LogLevel.info and "slice" in formatEvent(e)],
                         ["matchengine: waiting for the slice under way",
                          "matchengine: the slice under way is not written after 0.3 s; "
                          "stopping without it"])
        written.callback(True)

    def test_stop_waits_for_a_slice_for_a_while(self):
        """A stop waits for the slice under way (its child dies with the daemon), but not
        for ever."""
        return defer.Deferred.fromCoroutine(self.stop_during_a_slice())

    def test_makeslice_answers_while_the_log_waits(self):
        """makeslice answers OK, as the original at once, although the operation log waits
        for its database before the slice can start; the slice follows once it is back."""
        return defer.Deferred.fromCoroutine(self.makeslice_while_the_log_waits())

    def test_makeslice_answers_once_writing(self):
        """The CLI's makeslice answers OK once the slice is being written, as the original
        does after its fork; how it ends is logged (critical when it failed)."""
        return defer.Deferred.fromCoroutine(self.makeslice_command())

    def test_slices_asked_at_once(self):
        """Two slices asked for within one second are made one after the other, each of
        its own moment (the second after a write made meanwhile), under times of their own:
        neither writes over the other's tables."""
        return defer.Deferred.fromCoroutine(self.slices_at_once())

    def test_slice_restores_every_digit(self):
        """Balances of 20 decimals, a bid's freeze of 16 and an ask's fee of 20 come back
        from a slice as they were, to the last digit and written alike, and so does a
        balance a fill took past 34 digits; templates of the original's DECIMAL columns are
        changed at start."""
        return defer.Deferred.fromCoroutine(self.slice_exact())
