# -*- test-case-name: utils.test.test_mysql -*-
"""The adbapi database layer against the real MariaDB and against SQLite."""

import os
import socket
import uuid
from decimal import Decimal

import pymysql
from twisted.internet import defer, reactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from utils import mysql, testing

SQL_DIR = os.path.join(testing.ROOT, "depends", "sql")


def read_sql(name):
    with open(os.path.join(SQL_DIR, name)) as f:
        return f.read()


class DialectTests(SynchronousTestCase):

    def test_placeholders_and_ignore(self):
        """SQLite gets `?` placeholders and INSERT OR IGNORE; MySQL text is untouched."""
        sql = "INSERT IGNORE INTO t (a, b) VALUES (%s, %s)"
        self.assertEqual(mysql.MYSQL.sql(sql), sql)
        self.assertEqual(mysql.SQLITE().sql(sql), "INSERT OR IGNORE INTO t (a, b) VALUES (?, ?)")

    def test_split_statements(self):
        """Comments are dropped and statements split on semicolons."""
        self.assertEqual(mysql.split_statements("-- c\nSELECT 1;\n\n  SELECT 2 ;\n-- end"),
                         ["SELECT 1", "SELECT 2"])

    def test_ddl_translation(self):
        """DECIMAL becomes DECIMAL_TEXT (text, its places kept), AUTO_INCREMENT an INTEGER
        key, indexes separate statements."""
        d = mysql.SQLITE()
        out = d.ddl("""CREATE TABLE IF NOT EXISTS `h` (
            `id` BIGINT UNSIGNED NOT NULL PRIMARY KEY AUTO_INCREMENT,
            `change` DECIMAL(30,8) NOT NULL,
            `asset` VARCHAR(30) NOT NULL,
            INDEX `idx_a` (`asset`, `id`)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""")
        self.assertEqual(len(out), 2)
        self.assertIn("`id` INTEGER PRIMARY KEY AUTOINCREMENT", out[0])
        self.assertIn("`change` DECIMAL_TEXT(30,8) NOT NULL", out[0])
        self.assertNotIn("ENGINE", out[0])
        self.assertEqual(out[1], "CREATE INDEX IF NOT EXISTS `h_idx_a` ON `h` (`asset`, `id`)")
        like = d.ddl("CREATE TABLE IF NOT EXISTS `h_1` LIKE `h`")
        self.assertIn("CREATE TABLE IF NOT EXISTS `h_1`", like[0])
        self.assertRaises(ValueError, d.ddl, "CREATE TABLE x LIKE nowhere")


class CharsetTests(SynchronousTestCase):

    def test_utf8_is_the_whole_of_it(self):
        self.assertEqual(mysql.client_charset("utf8"), "utf8mb4")
        self.assertEqual(mysql.client_charset("UTF8"), "utf8mb4")
        self.assertEqual(mysql.client_charset("utf8mb3"), "utf8mb3")
        self.assertEqual(mysql.client_charset("latin1"), "latin1")


class ServerAddressTests(SynchronousTestCase):

    def test_hosts(self):
        """`localhost` is the local socket (MYSQL_UNIX_PORT first, then the usual places),
        as the MySQL client library reads it; any other host, or no socket found, TCP."""
        here = self.mktemp()
        open(here, "w").close()
        self.patch(mysql, "SOCKETS", (self.mktemp(), here))
        self.patch(os, "environ", {})
        self.assertEqual(mysql.server_address("127.0.0.1", "3307"),
                         {"host": "127.0.0.1", "port": 3307})
        self.assertEqual(mysql.server_address("localhost", 3306), {"unix_socket": here})
        chosen = self.mktemp()
        open(chosen, "w").close()
        self.patch(os, "environ", {"MYSQL_UNIX_PORT": chosen})
        self.assertEqual(mysql.server_address("localhost", 3306), {"unix_socket": chosen})
        self.patch(mysql, "SOCKETS", (self.mktemp(),))
        self.patch(os, "environ", {})
        self.assertEqual(mysql.server_address("localhost", 3306),
                         {"host": "localhost", "port": 3306})


class NeedsEscapeTests(SynchronousTestCase):

    def test_each_character(self):
        for c in "\\'\x00\n\r\x1a":
            self.assertTrue(mysql.needs_escape("ab" + c + "cd"), repr(c))
            self.assertTrue(mysql.needs_escape("\u00e9" + c), repr(c))
        for text in ['{"a": "b"}', "", "caf\u00e9 \u4e2d \U0001f600", "\t%_`"]:
            self.assertFalse(mysql.needs_escape(text), repr(text))


class ValuesTextsTests(SynchronousTestCase):

    def test_split_in_halves_within_the_limit(self):
        rows = ["a" * n for n in (3, 9, 1, 4, 30, 2, 2)]
        texts = mysql.values_texts(rows, ", ".join, limit=12)
        self.assertEqual(", ".join(texts), ", ".join(rows))
        self.assertTrue(all(len(t) <= 12 or "," not in t for t in texts), texts)
        self.assertEqual(mysql.values_texts(rows, ", ".join, limit=1000), [", ".join(rows)])

    def test_insert_texts_by_chunk(self):
        """A statement for each chunk of rows, the head before each VALUES text."""
        self.assertEqual(mysql.insert_texts("INSERT ", ["a", "b", "c"], ", ".join, 2),
                         ["INSERT a, b", "INSERT c"])
        self.assertEqual(mysql.insert_texts("INSERT ", [], ", ".join), [])

    def test_history_statements_within_the_limit(self):
        """The writer's statements of large details: each within the limit, rows whole."""
        from matchengine.effects import BALANCE
        from matchengine.writer import insert_statements
        rows = [(BALANCE, 1, (1700000000.0, 1, "BTC", "x", "1", "1", "y" * 200000))
                for _ in range(12)]
        statements = insert_statements(rows)
        self.assertGreater(len(statements), 1)
        for statement in statements:
            self.assertLess(len(statement), mysql.STATEMENT_MAX + 200)
        self.assertEqual(sum(s.count("y" * 200000) for s in statements), 12)


class Scenarios:
    """The same checks, run on each kind of database: a subclass's `make()` gives the
    database under test."""

    def table(self):
        return "t_" + uuid.uuid4().hex[:10]

    async def scratch_table(self, columns):
        """A database under test and a new table in it with `columns` (MySQL DDL), dropped
        when the test ends."""
        db = self.make()
        name = self.table()
        await db.execute_script("CREATE TABLE `%s` (%s);" % (name, columns))
        self.addCleanup(lambda: db.execute("DROP TABLE `%s`" % name))
        return db, name

    async def roundtrip(self):
        db, name = await self.scratch_table(
            "`id` BIGINT UNSIGNED NOT NULL PRIMARY KEY AUTO_INCREMENT,"
            " `user_id` INT UNSIGNED NOT NULL, `amount` DECIMAL(30,16) NOT NULL,"
            " `note` TEXT, INDEX `idx_user` (`user_id`)")
        rows = [(i % 7, Decimal("0.0000000000000001") * i + Decimal("12345678901234"),
                 "n%d" % i) for i in range(2500)]
        count = await db.insert_many(name, ["user_id", "amount", "note"], rows, chunk=1000)
        self.assertEqual(count, 2500)
        back = await db.query("SELECT `user_id`, `amount`, `note` FROM `%s` ORDER BY `id`"
                              % name)
        self.assertEqual([(u, Decimal(a), n) for u, a, n in back], rows)
        ones = await db.query("SELECT COUNT(*) FROM `%s` WHERE `user_id` = %%s" % name, (1,))
        self.assertEqual(ones[0][0], len([r for r in rows if r[0] == 1]))

    async def ignore_and_rollback(self):
        db, name = await self.scratch_table("`id` BIGINT UNSIGNED NOT NULL PRIMARY KEY,"
                                            " `v` TEXT")
        await db.insert_many(name, ["id", "v"], [(1, "a"), (2, "b")])
        await db.insert_many(name, ["id", "v"], [(2, "x"), (3, "c")], ignore=True)

        def failing(cursor):
            db.insert_rows(cursor, name, ["id", "v"], [(4, "d")])
            raise RuntimeError("abort")
        with self.assertRaises(RuntimeError):
            await db.interaction(failing)
        rows = await db.query("SELECT `id`, `v` FROM `%s` ORDER BY `id`" % name)
        self.assertEqual([tuple(r) for r in rows], [(1, "a"), (2, "b"), (3, "c")])

    async def like(self):
        db, name = await self.scratch_table("`id` BIGINT UNSIGNED NOT NULL PRIMARY KEY,"
                                            " `v` DECIMAL(30,8) NOT NULL, INDEX `idx_v` (`v`)")
        copy = name + "_1"

        def create(cursor):
            self.assertFalse(db.table_exists(cursor, copy))
            db.create_like(cursor, copy, name)
            db.create_like(cursor, copy, name)
            return db.table_exists(cursor, copy)
        self.assertTrue(await db.interaction(create))
        self.addCleanup(lambda: db.execute("DROP TABLE `%s`" % copy))
        await db.insert_many(copy, ["id", "v"], [(1, Decimal("1.5"))])
        rows = await db.query("SELECT `v` FROM `%s`" % copy)
        self.assertEqual(Decimal(rows[0][0]), Decimal("1.5"))

    async def texts(self):
        db, name = await self.scratch_table("`id` BIGINT UNSIGNED NOT NULL PRIMARY KEY,"
                                            " `t` DOUBLE NOT NULL, `v` TEXT, `n` BIGINT")
        values = ['{"method": "order.put_limit", "params": [1, "BTCBCH", "%s"]}',
                  "it's", 'back\\slash', "line\nbreak\r", "nul\x00z", "ctrl-z\x1a",
                  '"\\u00e9t\\u00e9" \u00e9t\u00e9 %d %%', "", None]
        rows = [(i + 1, 1733472000.123456 + i, v, -(1 << 62) + i)
                for i, v in enumerate(values)]
        rows.append((len(rows) + 1, 0.1, True, None))
        await db.insert_many(name, ["id", "t", "v", "n"], rows)
        back = await db.query("SELECT `id`, `t`, `v`, `n` FROM `%s` ORDER BY `id`" % name)
        expected = rows[:-1] + [(len(rows), 0.1, "1", None)]
        self.assertEqual([tuple(r) for r in back], expected)

    async def places(self):
        db, name = await self.scratch_table(
            "`id` BIGINT UNSIGNED NOT NULL PRIMARY KEY, `a` DECIMAL(30,8) NOT NULL,"
            " `b` DECIMAL(30,16), `c` DECIMAL(30,4) NOT NULL")
        rows = [(1, "-10.499923085", "2.472260123441319921", "0.00005"),
                (2, Decimal("10.499923085"), None, Decimal("-0.00005")),
                (3, "16000", "41.27718400000000000000", "1.23444999")]
        await db.insert_many(name, ["id", "a", "b", "c"], rows)
        back = await db.query("SELECT `a`, `b`, `c` FROM `%s` ORDER BY `id`" % name)
        self.assertEqual([tuple(None if v is None else str(Decimal(v)) for v in row)
                          for row in back],
                         [("-10.49992309", "2.4722601234413199", "0.0001"),
                          ("10.49992309", None, "-0.0001"),
                          ("16000.00000000", "41.2771840000000000", "1.2344")])

    async def compared(self):
        db, name = await self.scratch_table(
            "`id` BIGINT UNSIGNED NOT NULL PRIMARY KEY, `t` DOUBLE NOT NULL,"
            " `name` VARCHAR(30) NOT NULL, `a` DECIMAL(30,8) NOT NULL,"
            " INDEX `idx_name` (`name`)")
        await db.insert_many(name, ["id", "t", "name", "a"],
                             [(1, 1.5, "BTC", "-0.000000001"), (2, 2.5, "ETH", "-0"),
                              (3, 3.5, "btc ", "1")])

        async def ids(where, args=(), page=""):
            rows = await db.query("SELECT `id` FROM `%s` WHERE %s ORDER BY `id`%s"
                                  % (name, where, page), args)
            return [r[0] for r in rows]
        for text in ("BTC", "btc", "Btc  "):
            self.assertEqual(await ids("`name` = %s", (text,)), [1, 3], text)
        u64_max = (1 << 64) - 1
        self.assertEqual(await ids("`t` >= %s", (u64_max,)), [])
        self.assertEqual(await ids("`t` < %s", (u64_max,)), [1, 2, 3])
        self.assertEqual(await ids("`id` = %s", (u64_max,)), [])
        self.assertEqual(await ids("`id` > 0", page=" LIMIT %d, 2" % u64_max), [])
        self.assertEqual(await ids("`id` > 0", page=" LIMIT 1, 1"), [2])
        zeros = await db.query("SELECT `a` FROM `%s` WHERE `id` < 3 ORDER BY `id`" % name)
        self.assertEqual([(Decimal(z), Decimal(z).is_signed()) for z, in zeros],
                         [(0, False), (0, False)])

    def test_texts_compared_and_unsigned_parameters(self):
        """Text columns compare case and trailing spaces aside; integer parameters past 64
        bits signed (an unsigned -1) compare and page as MySQL's; a negative zero is kept
        as a zero."""
        return defer.Deferred.fromCoroutine(self.compared())

    def test_decimal_places(self):
        """A DECIMAL(p,s) column keeps s places, half away from zero, in both databases."""
        return defer.Deferred.fromCoroutine(self.places())

    def test_texts_and_numbers(self):
        """Texts with and without characters to escape, floats, large integers and NULLs
        are stored exactly as given."""
        return defer.Deferred.fromCoroutine(self.texts())

    def test_create_like(self):
        """A table copied from a template exists afterwards and takes rows; twice is fine."""
        return defer.Deferred.fromCoroutine(self.like())

    def test_batched_insert_read_back(self):
        """2,500 rows in chunks of 1,000 read back exactly, decimals to the last digit."""
        return defer.Deferred.fromCoroutine(self.roundtrip())

    def test_ignore_and_rollback(self):
        """INSERT IGNORE skips duplicates; a failing interaction leaves nothing behind."""
        return defer.Deferred.fromCoroutine(self.ignore_and_rollback())


class MySQLTests(Scenarios, TestCase):

    def make(self):
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 kw["database"], "utf8mb4")
        self.addCleanup(db.close)
        return db

    async def reconnect(self):
        db = self.make()
        await db.query("SELECT 1")
        ids = await db.query("SELECT CONNECTION_ID()")
        killer = self.make()
        await killer.execute("KILL %d" % ids[0][0])
        # the pooled connection is dead; a retried read succeeds on a fresh one, and the
        # dead connection is not rolled back (which failed, and was logged as an error)
        self.assertEqual([tuple(r) for r in await db.query("SELECT 2")], [(2,)])
        self.assertEqual(self.flushLoggedErrors(), [])

    async def probed(self):
        db = self.make()

        def options(cursor):
            sock = cursor.connection._sock
            return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                    sock.gettimeout())
        self.assertEqual(await db.interaction(options),
                         (1,) + mysql.KEEPALIVE + (40000, None))

    def test_idle_connections_probed(self):
        """A pool's TCP connections have keepalive probes (their statements have no read
        timeout): a server host that vanishes mid-statement is found out."""
        return defer.Deferred.fromCoroutine(self.probed())

    def test_reconnect_after_server_drops_connection(self):
        """A connection killed by the server is replaced and the read retried."""
        return defer.Deferred.fromCoroutine(self.reconnect())

    async def abort(self):
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 kw["database"], "utf8mb4", max_connections=2)
        self.addCleanup(db.close)
        name = self.table()
        await db.execute_script("CREATE TABLE `%s` (`id` INT);" % name)
        self.addCleanup(lambda: self.make().execute("DROP TABLE `%s`" % name))
        locker = pymysql.connect(**kw)
        self.addCleanup(locker.close)
        locker.cursor().execute("LOCK TABLES `%s` WRITE" % name)
        self.addCleanup(locker.cursor().execute, "UNLOCK TABLES")
        reads = [db.query("SELECT * FROM `%s`" % name) for _ in range(4)]
        outcomes = defer.DeferredList(reads, consumeErrors=True)

        def blocked():
            with pymysql.connect(**kw) as watcher, watcher.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                               "WHERE INFO = %s", ("SELECT * FROM `%s`" % name,))
                return cursor.fetchone()[0] == 2
        await testing.until(blocked, what="reads blocked on the locked table")
        db.abort()
        await testing.until(lambda: outcomes.called, 5, "reads ended")
        failures = [value for ok, value in outcomes.result]
        # the two running lost their connection (and were not retried), the two waiting
        # were refused a connection
        self.assertEqual(sorted(type(f.value).__name__ for f in failures),
                         ["Aborted", "Aborted", "OperationalError", "OperationalError"])
        with self.assertRaises(mysql.Aborted):
            await db.query("SELECT 1")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_abort_interrupts_blocked_queries(self):
        """An aborted pool's queries blocked in the server (a locked table) fail at once,
        and the queries waiting for a connection fail without running, so that a stopping
        daemon need not wait for the server."""
        return defer.Deferred.fromCoroutine(self.abort())

    async def silent_server(self):
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(8)        # connections complete in the kernel; nothing is ever said
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql("127.0.0.1", server.getsockname()[1], kw["user"],
                                 kw["password"], kw["database"], "utf8mb4", max_connections=1,
                                 connect_timeout=1)
        self.addCleanup(db.close)
        started = reactor.seconds()
        with self.assertRaises(Exception):
            await db.query("SELECT 1")
        self.assertLess(reactor.seconds() - started, 4.0)
        self.flushLoggedErrors()

    def test_server_that_never_greets(self):
        """A server that accepts connections and says nothing fails the query within the
        connect timeout: the opening of a connection is bounded as its TCP connect is, so
        that no thread, and no stopping daemon, waits for it for ever."""
        return defer.Deferred.fromCoroutine(self.silent_server())

    def test_queries_have_no_timeout(self):
        """The opening's timeout bounds neither the queries that follow it nor the pool's
        own first statements (the operation log's wait for its lock)."""
        kw = testing.mysql_connect_kwargs("misc")
        opened = []

        def first_statements(connection):
            with connection.cursor() as cursor:
                cursor.execute("SELECT SLEEP(1.5)")
                opened.append(cursor.fetchone())
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 kw["database"], "utf8mb4", connect_timeout=1,
                                 cp_openfun=first_statements)
        self.addCleanup(db.close)

        async def check():
            self.assertEqual(await db.query("SELECT SLEEP(1.5), 7"), [(0, 7)])
            self.assertEqual(opened, [(0,)])
        return defer.Deferred.fromCoroutine(check())

    async def path_cut(self):
        kw = testing.mysql_connect_kwargs("misc")
        proxy = testing.CuttableProxy(int(kw["port"])).up()
        self.addCleanup(proxy.down)
        db = mysql.connect_mysql("127.0.0.1", proxy.port, kw["user"], kw["password"],
                                 kw["database"], "utf8mb4", max_connections=2)
        self.addCleanup(db.close)
        # both connections opened
        ids = await defer.gatherResults(
            [db.query("SELECT CONNECTION_ID(), SLEEP(0.2)") for _ in range(2)])
        self.assertEqual(len({rows[0][0] for rows in ids}), 2)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        # the path to the server cut and restored: both connections are lost
        await proxy.down()
        proxy.up()
        for n in range(4):
            self.assertEqual([tuple(r) for r in await db.query("SELECT %s", (n,))], [(n,)])
        # once one connection was found lost, the other is checked before it is used: two
        # reads at once, one on each, need no retry
        await proxy.down()
        proxy.up()
        self.assertEqual([tuple(r) for r in await db.query("SELECT 5")], [(5,)])
        both = await defer.gatherResults(
            [db.query("SELECT %s, SLEEP(0.2)", (n,), retry=False) for n in (6, 7)])
        self.assertEqual([rows[0][0] for rows in both], [6, 7])
        levels = [e["log_level"] for e in events if "log_level" in e]
        self.assertEqual([e for e in events if e.get("log_level", LogLevel.info) > LogLevel.warn
                          or e.get("isError")], [])
        self.assertIn(LogLevel.warn, levels)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_lost_connections_reopened_quietly(self):
        """Connections lost on the way to the server (cut and restored) are opened again
        for the reads that follow, which all succeed, with warnings and no error (adbapi's
        failing rollback of a lost connection was logged as an error, a fatal alert)."""
        return defer.Deferred.fromCoroutine(self.path_cut())

    def test_from_config(self):
        """A db_* config section builds a pool on its keys."""
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.from_config({"host": kw["host"], "port": kw["port"], "user": kw["user"],
                                "pass": kw["password"], "name": kw["database"]})
        self.addCleanup(db.close)
        self.assertIn(kw["database"], repr(db))
        return db.query("SELECT 1").addCallback(
            lambda rows: self.assertEqual(rows[0][0], 1))


    def test_sessions_read_backslash_escapes(self):
        """Every session reads backslash escapes, as the texts written here (and PyMySQL's
        escaping) assume, whatever the server's sql_mode: with NO_BACKSLASH_ESCAPES a text
        ending in \\' closed its quotes, and what followed was read as SQL."""
        from matchengine import writer
        kw = testing.mysql_connect_kwargs("misc")
        text = "it's a \\ \"quote\""
        quoted = "'%s'" % pymysql.converters.escape_string(text)
        mode = "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"
        conn = pymysql.connect(**kw, init_command=mode)
        self.addCleanup(conn.close)
        with conn.cursor() as cursor:
            with self.assertRaises(pymysql.err.ProgrammingError):
                cursor.execute("SELECT " + quoted)
            cursor.execute(mysql.SESSION_SETUP)
            cursor.execute("SELECT " + quoted)
            self.assertEqual(cursor.fetchall(), ((text,),))
        # the pools' sessions and the history writer's run it first
        db = self.make()
        self.assertEqual(db.pool.connkw["init_command"], mysql.SESSION_SETUP)
        history = writer.connect({"host": kw["host"], "port": kw["port"], "user": kw["user"],
                                  "pass": kw["password"], "name": kw["database"]})
        self.addCleanup(history.close)
        self.assertEqual(history.init_command, mysql.SESSION_SETUP)

    def test_localhost_is_the_socket(self):
        """A db_* section with host `localhost` reaches the server over its local socket,
        with the account of `user@localhost`."""
        if "unix_socket" not in mysql.server_address("localhost", 3306):
            raise SkipTest("no local MySQL socket on this machine")
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.from_config({"host": "localhost", "port": 1, "user": kw["user"],
                                "pass": kw["password"], "name": kw["database"]})
        self.addCleanup(db.close)
        d = db.on_connection(lambda connection: connection.host_info)
        return d.addCallback(self.assertEqual, "Localhost via UNIX socket")


class SQLiteTests(Scenarios, TestCase):

    def make(self):
        db = mysql.connect_sqlite(self.mktemp() + ".db")
        self.addCleanup(db.close)
        return db

    async def project_schema(self):
        db = self.make()
        await db.execute_script(read_sql("trade_log.sql"))
        await db.execute_script(read_sql("trade_history.sql"))
        await db.execute_script("CREATE TABLE IF NOT EXISTS `balance_history_3` "
                                "LIKE `balance_history_example`;")
        await db.insert_many("balance_history_3",
                             ["time", "user_id", "asset", "business", "change", "balance",
                              "detail"],
                             [(1.5, 3, "BTC", "deposit", Decimal("1.1"), Decimal("1.1"), "{}")])
        rows = await db.query("SELECT `id`, `change` FROM `balance_history_3`")
        self.assertEqual([(r[0], Decimal(r[1])) for r in rows], [(1, Decimal("1.1"))])

    def test_project_schema(self):
        """The project's MySQL schema files create working SQLite tables."""
        return defer.Deferred.fromCoroutine(self.project_schema())
