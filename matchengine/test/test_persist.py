# -*- test-case-name: matchengine.test.test_persist -*-
"""Recovery from the operation log: the forked reader, its pages and its failures, against
real MariaDB and against SQLite (the embedded exchange's store)."""

import os
import signal
from decimal import Decimal

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from matchengine import config, engine, operlog, persist
from utils import mysql, testing

DAY1, DAY2 = "operlog_20261101", "operlog_20261102"
T1, T2 = 1793000000.125, 1793090000.5


def operations():
    """A small trading day: deposits, resting and crossing orders, a cancel."""
    ops = []
    for user in range(1, 5):
        ops.append((102, [user, "BTC", "deposit", user, "50", {"note": "é"}]))
        ops.append((102, [user, "BCH", "deposit", user, "900000", {}]))
    for i in range(12):
        user, side = 1 + i % 4, 1 + i % 2
        price = "8000" if i % 3 else "8001"
        ops.append((201, [user, "BTCBCH", side, "0.%d5" % (i + 1), price, "0.002", "0.001",
                          "s%d" % i]))
    ops.append((202, [2, "BTCBCH", 2, "100", "0.002", "market"]))
    return ops


def run_live(ops):
    """The engine the operations build, and the (detail, time) of each one logged."""
    eng = engine.Engine(*config.example_tables())
    logged = []
    for n, (command, params) in enumerate(ops):
        now = T1 + n * 0.001
        eng.execute(command, params, now)
        logged.append((engine.Engine.log_entry(command, params), round(now, 6)))
    open_order = next(iter(eng.markets["BTCBCH"].orders.values()))
    params = [open_order.user_id, "BTCBCH", open_order.id]
    eng.execute(204, params, T2)
    logged.append((engine.Engine.log_entry(204, params), T2))
    eng.effects.take()
    return eng, logged


def state(eng):
    orders = {o.id: (o.user_id, o.side, o.price, o.amount, o.left, o.freeze, o.deal_stock,
                     o.deal_money, o.deal_fee, o.source, o.create_time, o.update_time)
              for m in eng.markets.values() for o in m.orders.values()}
    return dict(eng.balances.entries), orders, eng.order_id, eng.deal_id, dict(eng.dedup)


def log_database(test, label, **kwargs):
    """(Database, name) of a fresh trade_log database, dropped after `test`."""
    name = testing.create_database(label, ("trade_log",))
    test.addCleanup(testing.drop_database, name)
    kw = testing.mysql_connect_kwargs("misc")
    db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"], name,
                             "utf8mb4", **kwargs)
    test.addCleanup(db.close)
    return db, name


class ReaderTests(TestCase):

    timeout = 60

    def setUp(self):
        self.ops = operations()
        self.live, self.logged = run_live(self.ops)
        self.patch(persist, "PAGE", 5)    # many pages, one ending exactly at a table's end
        self.patch(persist, "PROGRESS_EVERY", 0)
        self.messages = []

    def mariadb(self):
        return log_database(self, "persist")[0]

    def sqlite(self):
        db = mysql.connect_sqlite(self.mktemp() + ".db")
        self.addCleanup(db.close)
        return db

    async def write_log(self, db, rows, tables=(DAY1, DAY2)):
        """Rows of (id, time, detail): the first 20 ids into the first table (DAY1), the
        rest into the second (DAY2)."""
        with open(os.path.join(testing.ROOT, "depends", "sql", "trade_log.sql")) as f:
            await db.execute_script(f.read())

        def write(cursor):
            for table, part in zip(tables, (rows[:20], rows[20:])):
                db.create_like(cursor, table, "operlog_example")
                if part:
                    cursor.execute(db.insert_many_sql(table, ("id", "time", "detail"),
                                                      len(part)),
                                   [v for row in part for v in row])
        await db.interaction(write)

    def numbered(self):
        return [(n + 1, t, detail) for n, (detail, t) in enumerate(self.logged)]

    async def load(self, db):
        eng = engine.Engine(*config.example_tables())
        result = await persist.load_state(eng, db, self.messages.append, reactor=reactor)
        return eng, result

    async def replays_to_the_same_state(self, db):
        await self.write_log(db, self.numbered())
        eng, recovered = await self.load(db)
        self.assertEqual(recovered, (len(self.logged), None, DAY2, 0))
        self.assertEqual(state(eng), state(self.live))
        total = len(self.logged)
        self.assertEqual(self.messages[0], "no slice: replaying the whole operation log")
        self.assertEqual(self.messages[1], "replaying %d operations from %s on" % (total, DAY1))
        progress = [m.split(",")[0] for m in self.messages[2:-1]]
        self.assertEqual(progress[:2], ["replayed 5 of %d operations (%s" % (total, DAY1),
                                        "replayed 10 of %d operations (%s" % (total, DAY1)])
        self.assertEqual(progress[-1], "replayed %d of %d operations (%s" % (total, total, DAY2))
        self.assertEqual(self.messages[-1],
                         "replayed %d operations; last operation id %d, order id %d, deal id %d"
                         % (len(self.logged), len(self.logged), self.live.order_id,
                            self.live.deal_id))

    def test_mariadb_replay(self):
        """Pages from two days' tables, read by the child, rebuild the live state exactly:
        balances, orders with their times, ids and the balance-update keys."""
        return defer.Deferred.fromCoroutine(self.replays_to_the_same_state(self.mariadb()))

    def test_sqlite_replay(self):
        """The same through SQLite, the embedded exchange's store."""
        return defer.Deferred.fromCoroutine(self.replays_to_the_same_state(self.sqlite()))

    def test_first_page_is_smaller(self):
        """The reader's first page has FIRST_PAGE rows, and each next one a quarter more
        (at least one) up to PAGE."""
        self.patch(persist, "FIRST_PAGE", 2)

        async def run():
            db = self.sqlite()
            await self.write_log(db, self.numbered())
            eng, _ = await self.load(db)
            self.assertEqual(state(eng), state(self.live))
            self.assertEqual([m.split(" operations")[0] for m in self.messages[2:5]],
                             ["replayed 2 of %d" % len(self.logged),
                              "replayed 5 of %d" % len(self.logged),
                              "replayed 9 of %d" % len(self.logged)])
        return defer.Deferred.fromCoroutine(run())

    async def found_by_ids(self, db):
        # the log's two tables named as of days before the slice's, as a clock stepped back
        # or another time zone leaves them; the slice holds the first 20 operations
        early, later = "operlog_20261020", "operlog_20261021"
        rows = self.numbered()
        await self.write_log(db, rows, (early, later))
        sliced = engine.Engine(*config.example_tables())
        for _, t, detail in rows[:20]:
            sliced.replay(*engine.load_detail(detail), t)
        connection = db.connect()
        try:
            persist.write_slice(db, connection, sliced, int(T1) + 100, 20, 86400 * 3)
        finally:
            connection.close()
        eng, recovered = await self.load(db)
        self.assertEqual(recovered, (len(rows), int(T1) + 100, later, int(T1) + 100))
        self.assertEqual(state(eng), state(self.live))
        self.assertIn("replaying %d operations from %s on" % (len(rows) - 20, later),
                      self.messages)

    def test_tables_found_by_ids(self):
        """The operations after the slice are replayed from the tables that hold them,
        whatever days their names give; the day of keys before the slice too."""
        return defer.Deferred.fromCoroutine(self.found_by_ids(self.mariadb()))

    async def shared_after_a_slice(self, db):
        ops = [(102, [user, asset, "deposit", user, "100000", {}])
               for user in (1, 2) for asset in ("BTC", "BCH")]
        for i in range(40):
            ops.append((201, [1, "BTCBCH", 1, "0.5", "8000" if i % 2 else "8001", "0.002",
                              "0.001", "web" if i % 3 else "app"]))
        ops.append((201, [2, "BTCBCH", 2, "0.25", "9000", "0.002", "0.001", "app"]))
        live = engine.Engine(*config.example_tables())
        logged = []
        for n, (command, params) in enumerate(ops):
            live.execute(command, params, T1 + n)
            logged.append((n + 1, T1 + n, engine.Engine.log_entry(command, params)))
        await self.write_log(db, logged)
        connection = db.connect()
        try:
            persist.write_slice(db, connection, live, int(T1) + 100, len(ops), 86400 * 3)
        finally:
            connection.close()
        eng, _ = await self.load(db)
        orders = sorted(eng.markets["BTCBCH"].orders.values(), key=lambda o: o.id)
        self.assertEqual(len(orders), 40)
        self.assertEqual(state(eng)[1], state(live)[1])
        first = orders[1]           # the first at the best price: partly filled
        rest = orders[:1] + orders[2:]
        # the partly filled order's own values, and one object for each value repeated
        self.assertEqual(first.left, Decimal("0.25"))
        self.assertEqual(first.deal_stock, Decimal("0.25"))
        for name in ("amount", "left", "taker_fee", "maker_fee", "freeze", "deal_stock",
                     "deal_money", "deal_fee", "amount_raw"):
            self.assertEqual(len({id(getattr(o, name)) for o in rest}), 1, name)
        for name in ("price", "price_raw", "source"):
            self.assertEqual(len({id(getattr(o, name)) for o in orders}), 2, name)
        self.assertIs(rest[0].deal_money, rest[0].deal_fee)
        self.assertEqual({o.market for o in orders}, {"BTCBCH"})
        self.assertEqual(len({id(o.market) for o in orders}), 1)

    def test_values_shared_after_a_slice(self):
        """Orders loaded from a slice share one object for each value they repeat, as live
        orders do, rather than each its own: a million orders' memory doubled after a
        restart."""
        return defer.Deferred.fromCoroutine(self.shared_after_a_slice(self.mariadb()))

    async def refused(self, db, rows, *fragments):
        await self.write_log(db, rows)
        with self.assertRaises(persist.RecoveryError) as caught:
            await self.load(db)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    async def slice_for(self, db):
        await db.execute("INSERT INTO `slice_history` (`time`, `end_oper_id`, `end_order_id`, "
                         "`end_deals_id`) VALUES (100, 1000, 1, 1), (200, 2000, 2, 2), "
                         "(300, 3000, 3, 3)")
        warned = []

        def chosen(after, upto):
            rebuild = persist.Rebuild(after, upto, None, warned.append)
            return persist._slice_row(db, rebuild)
        self.assertEqual([int(v) for v in (await chosen(2500, 2600))[0]], [200, 2000, 2, 2])
        self.assertEqual([int(v) for v in (await chosen(2000, 2600))[0]], [200, 2000, 2, 2])
        self.assertEqual(warned, [])
        # none old enough: the oldest, and the operations before it told as lost
        self.assertEqual([int(v) for v in (await chosen(500, 1500))[0]], [100, 1000, 1, 1])
        self.assertEqual(warned, ["no slice at or before operation 500: the history and "
                                  "messages of operations 501 to 1000 cannot be rebuilt"])
        self.assertEqual([int(v) for v in (await persist._slice_row(db, None))[0]],
                         [300, 3000, 3, 3])
        # a log that still holds every operation from the first: no slice, the whole log
        # replayed, nothing lost
        await db.execute("CREATE TABLE `%s` LIKE `operlog_example`" % DAY1)
        await db.execute("INSERT INTO `%s` VALUES (2, 1, '{}')" % DAY1)
        self.assertEqual([int(v) for v in (await chosen(500, 1500))[0]], [100, 1000, 1, 1])
        await db.execute("INSERT INTO `%s` VALUES (1, 1, '{}')" % DAY1)
        self.assertEqual(await chosen(500, 1500), [])
        self.assertEqual(len(warned), 2)

    def test_slice_rows_by_id(self):
        """A slice's orders come by id across markets and sides, whatever their prices:
        InnoDB appends them to the table's primary key, where in the books' order each
        went to a page of its own (a million orders took 28 s to write, 11 s by id)."""
        live = engine.Engine(*config.example_tables())
        for user in (1, 2):
            for asset in ("BTC", "BCH", "LTC"):
                live.execute(102, [user, asset, "deposit", user, "100000", {}], T1)
        for n in range(30):
            market = ("BTCBCH", "LTCBCH")[n % 2]
            side = 1 + n // 2 % 2
            price = str(9000 + n * 7 % 13) if side == 1 else str(8000 - n * 5 % 11)
            live.execute(201, [1 + n % 2, market, side, "0.5", price, "0.002", "0.001", ""],
                         T1 + n)
        orders, _ = persist.snapshot_rows(live)
        ids = [row[0] for row in orders]
        self.assertEqual(ids, list(range(1, 31)))

    def test_slice_order_values(self):
        """The value list made for a slice's order is what PyMySQL would bind, whatever its
        source holds (quotes, backslashes, a NUL, four-byte characters)."""
        import pymysql
        connection = pymysql.connect(**dict(testing.mysql_connect_kwargs("misc"),
                                            charset="utf8mb4"))
        self.addCleanup(connection.close)
        general, made = mysql.literal_row(connection), persist.order_row_text(connection)
        for source in ("", "web", "it's", "back\\slash", "nul\x00", "\U0001f381 gift",
                       "new\nline"):
            row = (12, 1, 2, 1793000000.125, 1793000001.0, 7, "BTCBCH", "8000", "1e-8",
                   "0.002", "0.001", "0.5", "4000.00000000", "0e-8", "0", "1.5e+3", source)
            self.assertEqual(made(row), general(row))
        self.assertEqual(made(row)[:60], "(12, 1, 2, 1793000000.125e0, 1793000001.0e0, 7, "
                                         "'BTCBCH', '8")

    def test_slice_for_a_rebuild(self):
        """A rebuild loads the newest slice at or before its first operation, else none
        when the log starts at the first operation, else the oldest; recovery the newest."""
        return defer.Deferred.fromCoroutine(self.slice_for(self.mariadb()))

    def test_gap(self):
        """A missing id stops recovery with the table and both ids named."""
        rows = self.numbered()
        del rows[11]
        return defer.Deferred.fromCoroutine(self.refused(
            self.mariadb(), rows, DAY1, "operation 13 follows 11: the log has a gap"))

    def test_detail_not_json(self):
        """A detail that is not JSON is named by its table and id."""
        rows = self.numbered()
        rows[7] = (8, rows[7][1], '{"method": "limit_order", "params": [1,')
        return defer.Deferred.fromCoroutine(self.refused(
            self.mariadb(), rows, "%s: operation 8 cannot be replayed: JSONDecodeError" % DAY1))

    def test_detail_not_an_operation(self):
        """JSON that is not an operation (no params, unknown method, params not a list)."""
        cases = [('{"method": "limit_order"}', "operation 3 cannot be replayed: KeyError"),
                 ('{"method": "fly", "params": []}', "unknown operation-log method 'fly'"),
                 ('{"method": "cancel_order", "params": 7}', "params are not a list")]

        async def run():
            for detail, message in cases:
                rows = self.numbered()
                rows[2] = (3, rows[2][1], detail)
                await self.refused(self.sqlite(), rows, message)
        return defer.Deferred.fromCoroutine(run())

    def test_refused_operation(self):
        """An entry the state refuses (an order beyond the user's balance) stops recovery."""
        rows = self.numbered()
        rows[0] = (1, rows[0][1], engine.Engine.log_entry(
            102, [1, "BTC", "deposit", 1, "0.5", {"note": "é"}]))
        return defer.Deferred.fromCoroutine(self.refused(
            self.mariadb(), rows, "cannot be replayed: RPCError"))

    def test_slice_writer_holds_nothing_of_the_daemon(self):
        """The slice writer child lets go of the daemon's descriptors before it works: it
        held the writer process's pipe, the log's locked MySQL session and the sockets open
        after a stop or a kill -9, for as long as a slice of a large book took."""
        import socket
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        seen = os.path.abspath(self.mktemp())

        def write_slice(db, connection, eng, ts, oper_id, keeptime):
            with open(seen, "w") as f:
                f.write(os.readlink("/proc/self/fd/%d" % ours.fileno()))
        self.patch(persist, "write_slice", write_slice)

        async def run():
            db = self.mariadb()
            self.assertTrue(await persist.make_slice(engine.Engine(*config.example_tables()),
                                                     db, 1, 0, 60, reactor))
            with open(seen) as f:
                self.assertEqual(f.read(), os.devnull)
        return defer.Deferred.fromCoroutine(run())

    async def slices_beside_writes(self):
        db = self.sqlite()
        with open(os.path.join(testing.ROOT, "depends", "sql", "trade_log.sql")) as f:
            await db.execute_script(f.read())
        await db.execute("CREATE TABLE `beside` (`n` INTEGER NOT NULL)")
        eng = self.live
        eng.execute(102, [9, "BTC", "deposit", 1, "1000", {}], T2)
        for i in range(20000):
            eng.execute(201, [9, "BTCBCH", 1, "0.01", str(9000 + i % 500), "0.002", "0.001",
                              ""], T2)
        eng.effects.take()
        written, done = [0], []

        async def write():
            while not done:
                await db.execute("INSERT INTO `beside` VALUES (%s)", (written[0] + 1,))
                written[0] += 1
        # what a daemon killed before it copied its slice's rows in left
        for left in (".slice-1793000000", ".slice-1", ".slice-1-journal"):
            with open(db.sqlite_path + left, "w") as f:
                f.write("partial")
        self.patch(persist, "COPY_ROWS", 1000)     # the orders copied in 21 parts
        writing = defer.Deferred.fromCoroutine(write())
        for n in range(4):
            self.assertTrue(await persist.make_slice(eng, db, 1793000000 + n, 1, 86400,
                                                     reactor))
        done.append(True)
        await writing
        self.assertEqual(await db.query("PRAGMA integrity_check"), [("ok",)])
        self.assertEqual(await db.query("SELECT COUNT(*), MAX(`n`) FROM `beside`"),
                         [(written[0], written[0])])
        self.assertGreater(written[0], 4)
        self.assertEqual(await db.query("SELECT `time` FROM `slice_history` ORDER BY `id`"),
                         [(1793000000 + n,) for n in range(4)])
        # a staging file of a daemon killed before it copied it: gone at the next start
        with open(db.sqlite_path + ".slice-1793000009", "w") as f:
            f.write("partial")
        loaded = engine.Engine(*config.example_tables())
        await persist.load_state(loaded, db, self.messages.append, reactor=reactor)
        self.assertEqual(state(loaded)[:4], state(eng)[:4])     # balances, orders, ids
        self.assertEqual([name for name in os.listdir(os.path.dirname(db.sqlite_path))
                          if ".slice" in name], [])

    async def staged_copy_failing(self):
        db = self.sqlite()
        with open(os.path.join(testing.ROOT, "depends", "sql", "trade_log.sql")) as f:
            await db.execute_script(f.read())
        staged = db.sqlite_path + ".slice-1793000000"
        import sqlite3
        conn = sqlite3.connect(staged)
        conn.execute("CREATE TABLE `slice_order` (`id`)")   # and no slice_balance
        conn.execute("INSERT INTO `slice_order` VALUES (1)")
        conn.commit()
        conn.close()
        with self.assertRaises(sqlite3.OperationalError):
            await persist._copy_staged(defer.succeed(True), db, staged, 1793000000, 1, (1, 1),
                                       86400)
        self.assertEqual(await db.query("SELECT name FROM sqlite_master WHERE name LIKE "
                                        "'slice_%_1793000000'"), [])
        self.assertEqual(await db.query("SELECT COUNT(*) FROM `slice_history`"), [(0,)])
        self.assertFalse(os.path.exists(staged))

    def test_sqlite_staged_copy_failing(self):
        """A staged slice that cannot be copied (its child failed after all) raises, and
        leaves no table, no slice_history row and no staging file."""
        return defer.Deferred.fromCoroutine(self.staged_copy_failing())

    def test_sqlite_slices_beside_writes(self):
        """The embedded exchange's slices (SQLite) while the daemon writes its log: the
        database stays whole, nothing written beside is lost, each slice loads.  The slice
        child once wrote into the daemon's own database file through the SQLite state it
        inherited, whose locks then went nowhere, and corrupted it."""
        return defer.Deferred.fromCoroutine(self.slices_beside_writes())

    def test_failed_slice_leaves_no_tables(self):
        """A slice that fails before its slice_history row has its tables dropped again
        (they were left, never loaded nor dropped)."""
        db = self.mariadb()
        connection = db.connect()
        self.addCleanup(connection.close)
        cursor = connection.cursor()
        cursor.execute("RENAME TABLE `slice_history` TO `slice_history_gone`")
        eng, _ = run_live(operations())
        with self.assertRaises(Exception):
            persist.write_slice(db, connection, eng, 1793000000, 1, 60)
        cursor.execute("SHOW TABLES LIKE 'slice\\_%\\_1793000000'")
        self.assertEqual(cursor.fetchall(), ())

    async def unfinished_left(self, db):
        """The slice tables left after a slice at 1793000100, with those of a slice killed
        at 1793000000 (no slice_history row) and of one under way at 1793000200."""
        if db.dialect.name != "mysql":
            with open(os.path.join(testing.ROOT, "depends", "sql", "trade_log.sql")) as f:
                await db.execute_script(f.read())
        connection = db.connect()
        self.addCleanup(connection.close)
        cursor = connection.cursor()
        for t in (1793000000, 1793000200):
            for kind in ("order", "balance"):
                db.create_like(cursor, "slice_%s_%d" % (kind, t), "slice_%s_example" % kind)
        connection.commit()
        eng, _ = run_live(operations())
        persist.write_slice(db, connection, eng, 1793000100, 1, 60)
        if db.dialect.name == "mysql":
            cursor.execute("SHOW TABLES LIKE 'slice\\_%'")
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                           "AND name LIKE 'slice_%'")
        return sorted(row[0] for row in cursor.fetchall())

    def test_unfinished_slices_dropped(self):
        """The tables of an older slice that never got its slice_history row (its writer
        killed with the daemon) are dropped by the next slice; a newer one's are not, nor
        the templates."""
        expected = ["slice_balance_1793000100", "slice_balance_1793000200",
                    "slice_balance_example", "slice_history", "slice_order_1793000100",
                    "slice_order_1793000200", "slice_order_example"]

        async def run():
            self.assertEqual(await self.unfinished_left(self.mariadb()), expected)
            self.assertEqual(await self.unfinished_left(self.sqlite()), expected)
        return defer.Deferred.fromCoroutine(run())

    def test_reader_cannot_query(self):
        """A database error in the child is reported, not taken for the end of the log."""
        async def run():
            db = self.mariadb()
            await self.write_log(db, self.numbered())
            eng = engine.Engine(*config.example_tables())
            reader = persist.LogReader(db, [DAY1, "operlog_19990101"], 0, reactor)
            pages = []
            try:
                with self.assertRaises(persist.RecoveryError) as caught:
                    async for table, rows in reader:
                        pages.append(table)
                        for _, t, method, params in rows:
                            eng.replay(method, params, t)
            finally:
                reader.close()
            self.assertEqual(pages, [DAY1] * 4)
            self.assertIn("reading the operation log failed: ProgrammingError",
                          str(caught.exception))
        return defer.Deferred.fromCoroutine(run())

    def test_reader_killed(self):
        """A reader that dies before the end of the log is an error, not an empty log."""
        async def run():
            db = self.mariadb()
            # more than the pipe holds, so the child is still writing when it is killed
            self.patch(persist, "PAGE", 50)
            await self.write_log(db, [
                (n, T1, engine.Engine.log_entry(102, [n, "BTC", "deposit", n, "1", {}]))
                for n in range(1, 3001)])
            reader = persist.LogReader(db, [DAY1, DAY2], 0, reactor)
            pages = reader.__aiter__()
            self.assertEqual((await pages.__anext__())[0], DAY1)
            os.kill(reader.pid, signal.SIGKILL)
            os.waitpid(reader.pid, 0)
            with self.assertRaises(persist.RecoveryError) as caught:
                while True:
                    await pages.__anext__()
            self.assertIn("stopped before the end of the log", str(caught.exception))
            reader.close()
        return defer.Deferred.fromCoroutine(run())

    def test_close_stops_the_child(self):
        """Closing before the end (recovery failed on an early page) leaves no process."""
        async def run():
            db = self.mariadb()
            await self.write_log(db, self.numbered())
            reader = persist.LogReader(db, [DAY1, DAY2], 0, reactor)
            pages = reader.__aiter__()
            await pages.__anext__()
            reader.close()
            with self.assertRaises(ChildProcessError):
                os.waitpid(reader.pid, os.WNOHANG)
            reader.close()      # twice is harmless
        return defer.Deferred.fromCoroutine(run())


class OriginalSchemaTests(TestCase):
    """A trade_log database made with the original's templates: texts in utf8 (three bytes
    a character at most), orders' slices without their source."""

    timeout = 60

    async def original_schema(self):
        db, name = log_database(self, "orig")
        today, yesterday = operlog.table_name(T2), operlog.table_name(T2 - 86400)
        for sql in ("ALTER TABLE `slice_order_example` DROP COLUMN `source`",
                    "ALTER TABLE `operlog_example` CONVERT TO CHARACTER SET utf8",
                    "ALTER TABLE `slice_balance_example` CONVERT TO CHARACTER SET utf8",
                    "ALTER TABLE `slice_order_example` CONVERT TO CHARACTER SET utf8",
                    "CREATE TABLE `%s` LIKE `operlog_example`" % today,
                    "CREATE TABLE `%s` LIKE `operlog_example`" % yesterday,
                    # a slice the original wrote: one open order, no source
                    "CREATE TABLE `slice_order_1700000000` LIKE `slice_order_example`",
                    "CREATE TABLE `slice_balance_1700000000` LIKE `slice_balance_example`",
                    "INSERT INTO `slice_order_1700000000` VALUES (7, 1, 1, 1700000000.5, "
                    "1700000000.5, 3, 'BTCBCH', '8000', '1', '0.002', '0.001', '1', '1', "
                    "'0', '0', '0')",
                    "INSERT INTO `slice_balance_1700000000` (`user_id`, `asset`, `t`, "
                    "`balance`) VALUES (3, 'BTC', 2, '1')",
                    "INSERT INTO `slice_history` (`time`, `end_oper_id`, `end_order_id`, "
                    "`end_deals_id`) VALUES (1700000000, 0, 7, 0)"):
            await db.execute(sql)
        said = []
        self.patch(persist.time, "time", lambda: T2)
        eng = engine.Engine(*config.example_tables())
        await persist.load_state(eng, db, said.append)
        [order] = eng.markets["BTCBCH"].orders.values()
        self.assertEqual((order.id, order.user_id, order.source), (7, 3, ""))
        charsets = dict(await db.query(
            "SELECT `TABLE_NAME`, GROUP_CONCAT(DISTINCT `CHARACTER_SET_NAME`) FROM "
            "information_schema.COLUMNS WHERE `TABLE_SCHEMA` = %s AND `CHARACTER_SET_NAME` "
            "IS NOT NULL GROUP BY `TABLE_NAME`", (name,)))
        # the templates and today's log in utf8mb4; yesterday's, not written again, as it was
        for table in ("operlog_example", "slice_order_example", "slice_balance_example",
                      today):
            self.assertEqual(charsets[table], "utf8mb4", table)
        self.assertEqual(charsets[yesterday], "utf8mb3")
        self.assertIn("slices: slice_order_example now keeps the orders' source", said)
        self.assertIn("%s now keeps its texts in utf8mb4 (four bytes a character at most)"
                      % today, said)
        # a character of four bytes is kept as it came, and a slice is written again
        await db.execute("INSERT INTO `%s` VALUES (1, 1, %%s)" % today, ("app\U0001f680",))
        self.assertEqual(await db.query("SELECT `detail` FROM `%s`" % today),
                         [("app\U0001f680",)])
        self.assertTrue(await persist.make_slice(eng, db, 1800000000, 1, 60, reactor))

    def test_original_schema(self):
        """Its templates and today's log table are changed to utf8mb4 (a character of four
        bytes was stored as "?", and an acknowledged write replayed as another), the orders'
        slices get their source column, and the original's slices load."""
        return defer.Deferred.fromCoroutine(self.original_schema())


class TemplateTests(TestCase):
    """The slice templates' amount columns, changed to exact texts at start."""

    timeout = 60

    async def altered(self):
        import pymysql
        # waiting one second at most for a table another connection holds
        db, name = log_database(self, "tmpl",
                                init_command="SET SESSION lock_wait_timeout = 1")
        kw = testing.mysql_connect_kwargs("misc")
        await db.execute("ALTER TABLE `slice_balance_example` MODIFY `balance` "
                         "DECIMAL(30,16) NOT NULL")
        holder = pymysql.connect(**dict(kw, database=name))
        self.addCleanup(holder.close)
        with holder.cursor() as cursor:
            cursor.execute("LOCK TABLES `slice_balance_example` READ")
        said = []
        with capturedLogs() as events:
            await persist.exact_slice_templates(db, said.append)
        self.assertEqual(said, [])
        critical = [e for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertIn("ALTER TABLE `slice_balance_example`", formatEvent(critical[0]))
        with holder.cursor() as cursor:
            cursor.execute("UNLOCK TABLES")
        # once it can, the column is changed, and said
        await persist.exact_slice_templates(db, said.append)
        self.assertEqual(len(said), 1)
        types = await db.query("SELECT `DATA_TYPE` FROM information_schema.COLUMNS WHERE "
                               "`TABLE_SCHEMA` = %s AND `TABLE_NAME` = "
                               "'slice_balance_example' AND `COLUMN_NAME` = 'balance'",
                               (name,))
        self.assertEqual(types, [("varchar",)])

    def test_a_template_that_cannot_be_changed(self):
        """An ALTER the server refuses (no privilege, a table held): a critical line naming
        the statement to run, and the start goes on."""
        return defer.Deferred.fromCoroutine(self.altered())
