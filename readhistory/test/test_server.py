# -*- test-case-name: readhistory.test.test_server -*-
"""readhistory answers the original's history calls from what the matchengine wrote."""

import json
import os
import signal
from decimal import Decimal

import pymysql
from twisted.internet import defer, reactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from exchange import embedded
from matchengine.test.test_engine import METHODS, TRANSCRIPT, norm
from matchengine.test.test_server import Harness
from readhistory import config, reader
from readhistory.server import ReadHistory
from utils import mysql, rpc, testing
from utils.rpc_client import RPCClient
from utils.testing import until

HISTORY_METHODS = {"balance.history": 103, "order.finished": 208, "order.deals": 209,
                   "order.finished_detail": 210, "market.user_deals": 306}


class ReaderTests(SynchronousTestCase):

    def test_decimal_text(self):
        """DECIMAL columns print in fixed point without trailing zeros."""
        from decimal import Decimal
        self.assertEqual(reader.text(Decimal("8000.00000000")), "8000")
        self.assertEqual(reader.text(Decimal("0.00000001000")), "0.00000001")
        self.assertEqual(reader.text(Decimal("0E-8")), "0")
        self.assertEqual(reader.text(Decimal("-10.49992309")), "-10.49992309")

    def test_validation(self):
        """Bad parameters are invalid arguments; non-integers read as 0."""
        bad = [(103, [0, "", "", 0, 0, 0, 10]), (103, [1, 5, "", 0, 0, 0, 10]),
               (103, [1, "", "", 5, 4, 0, 10]), (103, [1, "", "", 0, 0, 0, 0]),
               (103, [1, "", "", 0, 0, 0, 102]), (103, [1, "", "", 0, 0, 0]),
               (208, [1, "BTCBCH", 0, 0, 0, 10, 3]), (208, [1, "BTCBCH", 0, 0, 0]),
               (209, [1, 5, 0, 10]), (209, ["1", 0, 10]), (210, [0]), (210, []),
               (306, [1, 2, 0, 10]), (306, [1, "BTCBCH", 0, -1]),
               # times are unsigned, as the original reads them: -1 is 2^64 - 1
               (103, [1, "", "", -1, 5, 0, 2]), (208, [1, "BTCBCH", -1, 5, 0, 10]),
               (208, [1, "BTCBCH", 0, 0, 0, 10, 4294967299])]
        for command, params in bad:
            with self.assertRaises(rpc.RPCError, msg=(command, params)) as e:
                reader.QUERIES[command](params)
            self.assertEqual(e.exception.code, 1)

    def test_sql(self):
        """Filters and paging as the original builds them."""
        sql, args, _ = reader.balance_history([101, "BTC", "deposit", 5, 9, 20, 10])
        self.assertEqual(sql, "SELECT `time`, `asset`, `business`, `change`, `balance`, "
                              "`detail` FROM `balance_history_1` WHERE `user_id` = %s AND "
                              "`asset` = %s AND `business` = %s AND `time` >= %s AND "
                              "`time` < %s ORDER BY `id` DESC LIMIT 20, 10")
        self.assertEqual(args, [101, "BTC", "deposit", 5, 9])
        sql, args, _ = reader.order_finished([7, "BTCBCH", 0, 0, 0, 5, 2])
        self.assertTrue(sql.endswith("`side` = %s ORDER BY `id` DESC LIMIT 5"))
        # unsigned times, and a side as a C int holds it
        _, args, _ = reader.balance_history([1, "", "", -1, 0, 0, 2])
        self.assertEqual(args, [1, (1 << 64) - 1])
        _, args, _ = reader.balance_history([1, "", "", 0, -1, 0, 2])
        self.assertEqual(args, [1, (1 << 64) - 1])
        for side in (4294967297, -4294967294):
            _, args, _ = reader.order_finished([7, "BTCBCH", 0, 0, 0, 5, side])
            self.assertEqual(args, [7, "BTCBCH", side & 0xFFFFFFFF])

    def test_detail_read_as_jansson_reads_it(self):
        """A detail the original's JSON parser refuses, or one that is not an object, is
        answered as an empty object; others as the object they hold."""
        refused = ['{"a": NaN}', '{"a": 1e400}', '{"a": "\\ud800"}', '{"a": "\\u0000"}',
                   '{"a": 123456789012345678901234567890}', '[1]', '"x"', '', '{']
        for detail in refused:
            self.assertEqual(reader.detail_object(detail), {}, detail)
        self.assertEqual(reader.detail_object('{"id": 5, "s": "\\ud83d\\ude00"}'),
                         {"id": 5, "s": "\U0001f600"})
        self.assertEqual(reader.detail_object(None), {})

    def test_offset_shown_signed(self):
        """A negative offset is echoed as given, as the original's int64 shows it."""
        for query, params in [(reader.balance_history, [1, "", "", 0, 0, -1, 2]),
                              (reader.order_finished, [1, "BTCBCH", 0, 0, -1, 2]),
                              (reader.order_deals, [1, -1, 2]),
                              (reader.market_user_deals, [1, "BTCBCH", -1, 2])]:
            sql, _, result = query(params)
            self.assertIn("LIMIT 18446744073709551615, 2", sql)
            self.assertEqual(result([])["offset"], -1)


async def started(test, history_db, workers, db=None):
    """A readhistory service on `history_db` with `workers` connections, as its plugin makes
    it, and a client connected to it; on `db` instead, a `Database`, when given."""
    if db is None:
        info = testing.require("mysql")
        location = {"host": info["host"], "port": int(info["port"]), "user": info["user"],
                    "pass": info["password"], "name": history_db}
    else:
        location = {"host": "127.0.0.1", "port": 3306, "user": "unused", "pass": "",
                    "name": "unused"}
    port = testing.free_port()
    cfg = config.load_data({
        "log": {"path": "log/readhistory", "flag": "fatal,error,warn,info"},
        "svr": {"bind": ["tcp@127.0.0.1:%d" % port], "max_pkg_size": 1000000,
                "heartbeat_check": False},
        "db_history": location, "worker_num": workers})
    if db is None:
        db = mysql.from_config(cfg.db_history, max_connections=cfg.worker_num)
    test.addCleanup(db.close)
    rh = ReadHistory(cfg, db, reactor=reactor)
    await rh.startService()
    test.addCleanup(rh.stopService)
    client = RPCClient(reactor, "readhistory", ["tcp@127.0.0.1:%d" % port], 1 << 20)
    client.start()
    test.addCleanup(client.stop)
    await until(lambda: client.connected, what="readhistory connected")
    return rh, client


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# parameters at the edges of what is accepted: (command, params, key of the empty list
# answered, or None for a null result)
EDGES = [(103, [1, "", "", 0, 0, -1, 10], "records"),
         (103, [-1, "BTC", "trade", INT64_MAX, -1, INT64_MAX, 101], "records"),
         (103, [1, "", "", INT64_MIN, 0, 0, 2], "records"),
         (103, [1, "", "", -1, 0, 0, 10], "records"),
         (103, [1, "", "", -1, -1, 0, 10], "records"),
         (208, [1, "BTCBCH", -5, 0, -1, 1, 2], "records"),
         (208, [1, "BTCBCH", 0, -1, INT64_MAX, 1, -4294967295], "records"),
         (208, [1, "BTCBCH", 0, 0, -1, 10], "records"),
         (209, [-1, -1, 1], "records"),
         (209, [1, -1, 10], "records"),
         (210, [INT64_MAX], None),
         (210, [-1], None),
         (210, [INT64_MIN], None),
         (306, [-1, "BTCBCH", INT64_MAX, 101], "records"),
         (306, [1, "BTCBCH", -1, 10], "records")]


async def assert_edges(test, client):
    """Each of `EDGES` reaches the database as a valid statement and is answered."""
    for command, params, key in EDGES:
        got = await client.call(command, params, 10.0)
        test.assertIsNone(got["error"], (command, params))
        if key is None:
            test.assertIsNone(got["result"], (command, params))
        else:
            test.assertEqual(got["result"][key], [], (command, params))


class IntegrationTests(TestCase):

    timeout = 180

    async def scenario(self):
        h = Harness(self)
        await h.start()
        history_calls = []
        for line in open(TRANSCRIPT):
            record = json.loads(line)
            request = record.get("request")
            if not request:
                continue
            if request.get("method") in METHODS:
                await h.client.call(METHODS[request["method"]], request["params"], 10.0,
                                    req_id=request["id"])
            elif request.get("method") in HISTORY_METHODS:
                history_calls.append((request, record["response"]))
        await h.outbox.flush()
        rh, client = await started(self, h.history_db, 4)
        self.assertGreaterEqual(len(history_calls), 9)
        for request, expected in history_calls:
            got = await client.call(HISTORY_METHODS[request["method"]], request["params"],
                                    10.0, req_id=request["id"])
            self.assertEqual(norm(got), norm(expected), request)
        # parameters at the edges of what is accepted reach MariaDB as valid statements
        await assert_edges(self, client)
        await h.stop()

    async def queue_full(self):
        history_db = testing.create_database("hist", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        rh, client = await started(self, history_db, 2)
        # the table locked: every query on it waits, on a connection or for one
        locker = pymysql.connect(**testing.mysql_connect_kwargs("misc"))
        self.addCleanup(locker.close)
        locker.select_db(history_db)
        locker.cursor().execute("LOCK TABLES `balance_history_1` WRITE")
        with capturedLogs() as events:
            calls = [client.call(103, [1, "", "", 0, 0, 0, 10], 30.0) for _ in range(30)]
            await until(lambda: rh.in_flight == 22, what="queries waiting")
            await until(lambda: sum(c.called for c in calls) == 8, what="refusals")
        # each refusal logged, as the original logs it
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.error],
                         ["readhistory: 20 queries waiting; service unavailable"] * 8)
        refused = [c.result for c in calls if c.called]
        self.assertEqual([r["error"] for r in refused],
                         [{"code": 3, "message": "service unavailable"}] * 8)
        # the two running and the twenty waiting are answered once the table is free
        locker.cursor().execute("UNLOCK TABLES")
        answers = await defer.gatherResults([c for c in calls if not c.called])
        self.assertEqual([a["result"]["records"] for a in answers], [[]] * 22)

    def test_queue_full(self):
        """Queries are refused with "service unavailable" once 10 × worker_num of them wait
        for a connection, the worker_num running not counted, as the original counts its
        queued jobs."""
        return defer.Deferred.fromCoroutine(self.queue_full())

    def balance_rows(self, rows):
        """A new history database whose user 1 has the balance history `rows`, each
        (business, change, detail), in BCH."""
        history_db = testing.create_database("hist", ("trade_history",))
        self.addCleanup(testing.drop_database, history_db)
        conn = pymysql.connect(**dict(testing.mysql_connect_kwargs("misc"),
                                      charset="utf8mb4", autocommit=True))
        self.addCleanup(conn.close)
        conn.select_db(history_db)
        with conn.cursor() as cursor:
            cursor.execute("CREATE TABLE `balance_history_1` LIKE `balance_history_example`")
            for business, change, detail in rows:
                cursor.execute("INSERT INTO `balance_history_1` (`time`, `user_id`, `asset`, "
                               "`business`, `change`, `balance`, `detail`) VALUES (1, 1, "
                               "'BCH', %s, %s, %s, %s)", (business, change, change, detail))
        return history_db

    async def businesses_of_four_bytes(self):
        history_db = self.balance_rows([("gift\U0001f381", "1", "{}"),
                                        ("gift\U0001f600", "5", "{}"),
                                        ("Gift\U0001f381", "7", "{}")])
        rh, client = await started(self, history_db, 1)
        got = await client.call(103, [1, "BCH", "gift\U0001f381", 0, 0, 0, 10], 10.0)
        # as the original's utf8_general_ci: whatever the case
        self.assertEqual(sorted(r["change"] for r in got["result"]["records"]), ["1", "7"])
        # user 2's shard is missing: error 2, and the alert shows the query with its values
        with capturedLogs() as events:
            got = await client.call(103, [2, "BCH", "", 0, 0, 0, 10], 10.0)
        self.assertEqual(got["error"], {"code": 2, "message": "internal error"})
        [text] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical]
        self.assertIn("balance_history_2", text)
        self.assertTrue(text.endswith(" = %s ORDER BY `id` DESC LIMIT 10 [2, 'BCH']"), text)

    async def mysql_away(self):
        history_db = self.balance_rows([("deposit", "1", "{}")])
        info = testing.require("mysql")
        proxy = testing.CuttableProxy(int(info["port"])).up()
        self.addCleanup(proxy.down)
        db = mysql.connect_mysql("127.0.0.1", proxy.port, info["user"], info["password"],
                                 history_db, "utf8mb4", max_connections=2)
        rh, client = await started(self, history_db, 2, db)
        query = [1, "BCH", "", 0, 0, 0, 10]
        self.assertEqual(len((await client.call(103, query, 10.0))["result"]["records"]), 1)
        with capturedLogs() as events:
            await proxy.down()
            for _ in range(5):
                got = await client.call(103, query, 10.0)
                self.assertEqual(got["error"], {"code": 2, "message": "internal error"})
            proxy.up()
            got = await client.call(103, query, 10.0)
        self.assertEqual(len(got["result"]["records"]), 1)
        # five failed queries: one error line, no alert, and the end of the outage; the
        # pool says once for each of its connections that it was lost
        lines = [(e["log_level"], formatEvent(e)) for e in events
                 if e["log_level"] >= LogLevel.warn]
        told = [line for line in lines if line[1].startswith("readhistory: ")]
        self.assertEqual([level for level, _ in told], [LogLevel.error, LogLevel.warn], told)
        self.assertLessEqual(len(lines) - len(told), 2, lines)
        self.assertTrue(told[0][1].startswith("readhistory: MySQL unavailable ("), told)
        self.assertTrue(told[1][1].startswith("readhistory: working again after "), told)

    def test_mysql_away(self):
        """MySQL away fails each query with an internal error, told as one outage rather
        than an alert a query; a query that fails otherwise still raises one (above)."""
        return defer.Deferred.fromCoroutine(self.mysql_away())

    def test_businesses_of_four_bytes(self):
        """balance.history's business filter tells characters of four bytes apart (a
        collation weighing them all alike answered gift😀 for gift🎁), case aside."""
        return defer.Deferred.fromCoroutine(self.businesses_of_four_bytes())

    async def odd_details(self):
        details = ['{"a": NaN}', '{"a": 1e400}', '{"a": "\\ud800"}', '{"a": "\\u0000"}',
                   '{"a": 123456789012345678901234567890}', '{"id": 7}']
        history_db = self.balance_rows([("deposit", "1", detail) for detail in details])
        rh, client = await started(self, history_db, 1)
        got = await client.call(103, [1, "", "", 0, 0, 0, 10], 10.0)
        self.assertIsNone(got["error"])
        self.assertEqual([r["detail"] for r in got["result"]["records"]],
                         [{"id": 7}] + [{}] * 5)

    def test_odd_details(self):
        """balance.history answers each detail the original's parser refuses (NaN, a real
        beyond a double, a lone surrogate, NUL, an integer beyond 64 bits) with an empty
        object, as the original does; some of these got no reply at all."""
        return defer.Deferred.fromCoroutine(self.odd_details())

    async def stop_while_blocked(self):
        history_db = testing.create_database("hist", ("trade_history",))
        self.addCleanup(testing.drop_database, history_db)
        locker = pymysql.connect(**testing.mysql_connect_kwargs("misc"))
        self.addCleanup(locker.close)
        locker.select_db(history_db)
        locker.cursor().execute("CREATE TABLE `order_detail_5` LIKE `order_detail_example`")
        port = testing.free_port()
        config = testing.base_config("readhistory", svr=testing.rpc_svr(port),
                                     db_history=testing.mysql_section(history_db),
                                     worker_num=2)
        daemon = testing.DaemonProcess("readhistory", config, os.path.abspath(self.mktemp()))
        self.addCleanup(daemon.stop)
        daemon.start().wait_port(port)
        client = RPCClient(reactor, "readhistory", ["tcp@127.0.0.1:%d" % port], 1 << 20)
        client.start()
        self.addCleanup(client.stop)
        await until(lambda: client.connected, what="readhistory connected")
        # the table locked: two queries wait in MariaDB, on both connections, a third
        # waits for a connection
        locker.cursor().execute("LOCK TABLES `order_detail_5` WRITE")
        self.addCleanup(locker.cursor().execute, "UNLOCK TABLES")
        calls = [client.call(210, [5], 60.0).addErrback(lambda failure: None)
                 for _ in range(3)]

        def blocked():
            with pymysql.connect(**testing.mysql_connect_kwargs("misc")) as watcher:
                with watcher.cursor() as cursor:
                    cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                   "WHERE DB = %s AND INFO LIKE 'SELECT%%order_detail_5%%'",
                                   (history_db,))
                    return cursor.fetchone()[0] == 2
        await until(blocked, what="queries blocked on the locked table")
        started = reactor.seconds()
        daemon.proc.send_signal(signal.SIGTERM)
        await until(lambda: daemon.proc.poll() is not None, 10, "readhistory stopped")
        self.assertLess(reactor.seconds() - started, 5)
        self.assertEqual(daemon.proc.returncode, 0)

    def test_stop_while_queries_are_blocked(self):
        """SIGTERM stops the daemon at once, as it stops the original, while its queries
        wait in MariaDB for a locked table (they used to hold the process until the table
        was free: the pool waits for its threads, and a read has no timeout)."""
        return defer.Deferred.fromCoroutine(self.stop_while_blocked())

    def test_transcript_history_calls(self):
        """After the recorded session, each history call gets the original's answer."""
        return defer.Deferred.fromCoroutine(self.scenario())


class SQLiteTests(TestCase):
    """readhistory on the embedded exchange's SQLite history, as on MySQL."""

    timeout = 60

    async def scenario(self):
        path = self.mktemp()
        embedded.create_schema(path, ["trade_history", "trade_history_shards"])
        db = mysql.connect_sqlite(path)
        await db.insert_many("balance_history_41", ["time", "user_id", "asset", "business",
                                                    "change", "balance", "detail"],
                             [(1.5, 41, "BTC", "deposit", Decimal("2"), Decimal("2"), "{}"),
                              (2.5, 41, "BTC", "deposit", Decimal("-0.000000001"),
                               Decimal("2"), "{}")])
        rh, client = await started(self, None, 1, db=db)
        await assert_edges(self, client)
        # text compared as MySQL's _ci collations compare it: case and trailing spaces aside
        for asset, business in [("BTC", ""), ("btc", ""), ("BTC ", ""), ("", "DEPOSIT"),
                                ("Btc", "deposit  ")]:
            got = await client.call(103, [41, asset, business, 0, 0, 0, 10], 10.0)
            # a negative change kept at 8 places is a zero, never "-0"
            self.assertEqual([r["change"] for r in got["result"]["records"]], ["0", "2"],
                             (asset, business))
        got = await client.call(103, [41, "ETH", "", 0, 0, 0, 10], 10.0)
        self.assertEqual(got["result"]["records"], [])

    def test_edges_texts_and_zeros(self):
        """Negative times, ids and offsets (read unsigned, past SQLite's integers) are
        answered as on MySQL, not with an internal error; asset and business filters
        compare case aside; a change of -0.000000001 reads back as 0."""
        return defer.Deferred.fromCoroutine(self.scenario())
