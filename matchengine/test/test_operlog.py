# -*- test-case-name: matchengine.test.test_operlog -*-
"""How the operation log groups entries into commits, on a Clock with commits the test
finishes by hand."""

import math
import random
import socket

import pymysql
from pymysql.converters import escape_item
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from matchengine.operlog import (CHUNK, Abandoned, Fence, OperationLog, autocommit_connection,
                                 log_values, stamp, table_name)
from utils import mysql, testing
from utils.jsonfmt import real_text


class HeldCommits:
    """Stands in for the database: each interaction waits until the test ends it."""

    def __init__(self):
        self.commits = []          # (rows, deferred)
        self.tables = []           # the table of each commit

    def interaction(self, work, table, create, rows):
        d = defer.Deferred()
        self.commits.append(([row[0] for row in rows], d))
        self.tables.append(table)
        return d

    def finish(self, index=0, error=None):
        ids, d = self.commits.pop(index)
        if error is None:
            d.callback(None)
        else:
            d.errback(Failure(error))
        return ids


class GroupingTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.db = HeldCommits()
        self.log = OperationLog(self.db, self.clock, clock_time=lambda: 0.0)
        self.replies = []

    def append(self, n=1):
        for _ in range(n):
            batch = self.log.append(1.0, "{}")
            batch.then(self.replies.append, self.log.last_id)

    def test_idle_log_commits_on_the_next_turn(self):
        """With no commit in flight, the entries of one pass of the loop form a batch that
        is committed on the next turn, without waiting for a window."""
        self.append(3)
        self.assertEqual(self.db.commits, [])
        self.clock.advance(0)
        self.assertEqual([ids for ids, _ in self.db.commits], [[1, 2, 3]])
        self.assertEqual(self.replies, [])
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, 3])
        self.assertEqual((self.log.committed_id, self.log.pending_rows), (3, 0))

    def test_after_release_follows_each_batch(self):
        """`after_release` runs once per committed batch, after all of its callbacks."""
        self.log.after_release = lambda: self.replies.append("released")
        self.append(2)
        self.clock.advance(0)
        self.append()
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, "released"])
        self.clock.advance(0)
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, "released", 3, "released"])

    def test_entries_during_a_commit_form_the_next(self):
        """What arrives while a commit is in flight is committed, as one batch, on the
        loop's next turn after that commit finishes; replies come out in order."""
        self.append()
        self.clock.advance(0)
        self.append(4)
        self.clock.advance(10)
        self.assertEqual(len(self.db.commits), 1)
        self.assertIs(self.log.barrier, self.log.current)
        self.db.finish()
        self.assertEqual(self.replies, [1])
        self.assertEqual(self.db.commits, [])
        self.append()
        self.clock.advance(0)
        self.assertEqual([ids for ids, _ in self.db.commits], [[2, 3, 4, 5, 6]])
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, 3, 4, 5, 6])
        self.assertIsNone(self.log.barrier)

    def test_window_delays_the_first_commit(self):
        """A configured window holds an idle log's batch that long."""
        self.log.window = 0.005
        self.append(2)
        self.clock.advance(0.004)
        self.assertEqual(self.db.commits, [])
        self.clock.advance(0.001)
        self.assertEqual([ids for ids, _ in self.db.commits], [[1, 2]])

    def test_failed_commit_is_retried_whole(self):
        """A failed batch is written again after the retry delay; nothing is released
        before it commits, and later entries wait behind it."""
        self.append(2)
        self.clock.advance(0)
        self.db.finish(error=RuntimeError("gone away"))
        self.flushLoggedErrors()
        self.append()
        self.clock.advance(0.5)
        self.assertEqual(self.db.commits, [])
        self.clock.advance(0.5)
        self.assertEqual([ids for ids, _ in self.db.commits], [[1, 2]])
        self.assertEqual(self.replies, [])
        self.db.finish()
        self.clock.advance(0)
        self.db.finish()
        self.assertEqual(self.replies, [1, 2, 3])

    def test_flush_waits_for_everything(self):
        """flush() fires once every entry appended before it is committed."""
        self.append()
        self.clock.advance(0)
        self.append()
        done = self.log.flush()
        self.assertNoResult(done)
        self.db.finish()
        self.assertNoResult(done)
        self.db.finish()
        self.successResultOf(done)
        self.assertEqual(self.replies, [1, 2])

    def test_each_flush_fires_on_its_own(self):
        """Each caller of flush() gets a Deferred of its own: what one caller waits for
        after the flush (a slice's child) does not hold back another, which would then
        find entries appended meanwhile and not committed."""
        self.append()
        first, second = self.log.flush(), self.log.flush()
        self.assertIsNot(first, second)
        first.addCallback(lambda _: defer.Deferred())       # paused until the test ends
        self.db.finish()
        self.successResultOf(second)
        self.assertEqual(self.log.pending_rows, 0)

    def test_tables_never_go_back(self):
        """A batch goes into the newest table written when the clock (or the time zone)
        gives an earlier date: the tables' names sort as their ids."""
        day = 1793000000.0
        now = [day]
        self.log.clock_time = lambda: now[0]
        self.append()
        self.clock.advance(0)
        self.db.finish()
        now[0] = day - 86400        # stepped back a day
        self.append()
        self.clock.advance(0)
        self.db.finish()
        self.assertEqual(self.db.tables, [table_name(day)] * 2)
        later = OperationLog(self.db, self.clock, clock_time=lambda: day,
                             newest_table="operlog_20991231")       # left by a former run
        later.append(1.0, "{}")
        self.clock.advance(0)
        self.assertEqual(self.db.tables[-1], "operlog_20991231")

    def test_a_commit_that_waits_stalls_the_log(self):
        """A commit not done `stall` seconds after it was first sent, retries included,
        makes the log stalled: said at once and every STALL_REPEAT seconds, and once it is
        done."""
        self.append()
        self.clock.advance(0)
        with capturedLogs() as events:
            self.clock.advance(0.2)
            self.db.finish(error=RuntimeError("gone away"))
            self.clock.advance(0.29)
            self.assertFalse(self.log.stalled)
            self.clock.advance(0.01)
            self.assertTrue(self.log.stalled)
            self.clock.advance(OperationLog.STALL_REPEAT)
            self.assertEqual(self.replies, [])
            self.db.finish()
        self.assertFalse(self.log.stalled)
        self.assertEqual(self.replies, [1])
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events], [
            (LogLevel.error, "operation log: writing 1 entries failed (gone away); "
                             "retrying in 1.0 s"),
            (LogLevel.critical, "operation log: a commit of 1 entries has waited 0.5 s (MySQL "
                                "does not answer, or a lock holds the log's table); requests "
                                "are refused with service unavailable until it is done"),
            (LogLevel.error, "operation log: the commit has waited 60 s; requests are "
                             "still refused"),
            (LogLevel.warn, "operation log: working again after 60.3 s, 1 failed attempts"),
            (LogLevel.warn, "operation log: the commit is done after 60.5 s; requests are "
                            "served again")])
        # the next commit has its own `stall` seconds
        self.append()
        self.clock.advance(0.4)
        self.db.finish()
        self.assertFalse(self.log.stalled)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_asynchronous_mode_never_stalls(self):
        """With `durable` off nothing waits for a commit: the log is never stalled."""
        self.log.durable = False
        self.append()
        self.clock.advance(5)
        self.assertFalse(self.log.stalled)

    def test_asynchronous_mode_releases_at_once(self):
        """With `durable` off, replies go out before the commit, as in the original."""
        self.log.durable = False
        self.append(2)
        self.assertEqual(self.replies, [1, 2])
        self.assertIsNone(self.log.barrier)
        self.clock.advance(0)
        self.assertEqual(len(self.db.commits), 1)


class _Appender(protocol.Protocol):
    """Appends an entry to the log for each read."""

    def connectionMade(self):
        self.factory.connected.callback(None)

    def dataReceived(self, data):
        self.factory.log.append(1.0, "{}")


class LoopTests(TestCase):
    """On the real reactor."""

    timeout = 10

    async def commit_then_read(self):
        db = HeldCommits()
        log = OperationLog(db, reactor, clock_time=lambda: 0.0)
        factory = protocol.ServerFactory.forProtocol(_Appender)
        factory.log, factory.connected = log, defer.Deferred()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        await factory.connected
        log.append(1.0, "{}")
        await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual([ids for ids, _ in db.commits], [[1]])
        log.append(1.0, "{}")

        def commit_ends():
            # as a pool thread's result reaches the loop; a request comes while the loop
            # is still releasing the commit's replies
            db.finish()
            client.sendall(b"x")
        reactor.callFromThread(commit_ends)
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([ids for ids, _ in db.commits], [[2, 3]])
        db.finish()         # no commit left in flight, nor its stall's timer

    def test_requests_read_meanwhile_join_the_next_batch(self):
        """The batch that follows a commit takes the requests that came while the loop
        released that commit, read on its next turn: they do not make a batch of their
        own, whose commit every reply after them would wait for."""
        return defer.Deferred.fromCoroutine(self.commit_then_read())


class StampTests(SynchronousTestCase):

    def test_microseconds(self):
        """A stamped time is a whole number of microseconds whose "%.6f" text reads back as
        the same double, stamping it again changes nothing, and it is round(t, 6) but
        within a rounding error of a half microsecond; up to the year 2106."""
        rng = random.Random(11)
        times = [rng.uniform(0, 2 ** 32) for _ in range(100000)]
        times += [rng.uniform(1.7e9, 1.9e9) for _ in range(100000)]
        times += [0.0, 1.0, 0.0000005, 1700000000.0000005, 2 ** 32 - 1e-6]
        for t in times:
            stamped = stamp(t)
            self.assertEqual(float("%.6f" % stamped), stamped, repr(t))
            self.assertEqual(stamp(stamped), stamped, repr(t))
            self.assertLessEqual(abs(stamped - t), 0.5e-6 + math.ulp(t), repr(t))
            if stamped != round(t, 6):
                self.assertAlmostEqual(abs(t * 1e6 - round(t * 1e6)), 0.5, delta=0.3)


# details that a client's free text (an order's source) can bring into the log
AWKWARD = ['{"source": "it\'s"}', '{"source": "back\\\\slash"}', '{"source": "\u00e9\u4e2d"}',
           "line\nbreak", "nul\x00and\x1asub\rcr", ""]


class ValuesTests(SynchronousTestCase):

    def test_as_pymysql_binds_them(self):
        """Ids are written as PyMySQL binds them, times as a double literal of the same
        double (17 significant digits and an exponent; PyMySQL's binding outside 1e-4 to
        1e15); a detail is quoted as it is unless it holds a character to escape, when the
        connection's `escape` writes it (double quotes need none: JSON is full of them)."""
        def bound(value):
            return escape_item(value, "utf8")
        rows = [(n + 1, stamp(1765000000.25 + n * 0.000123), detail)
                for n, detail in enumerate(['{"method": "order.put_limit"}'] + AWKWARD)]
        rows += [(n + 100, t, "{}") for n, t in enumerate(
            [stamp(1765000000.000001), 1765000000.0, 0.1, 1e-4, 123456789012345.6, 2.5e9])]
        # floats beyond the range: PyMySQL's texts, with exponents
        rows += [(10 ** 12, 1e16, "{}"), (10 ** 12 + 1, 5e-05, "{}"), (10 ** 12 + 2, 0.0, "")]
        expected = []
        for row in rows:
            detail, t = bound(row[2]), row[1]
            plain = "\\" not in detail.replace('\\"', "")
            if plain:
                detail = "'%s'" % row[2]
            # a row with a detail to escape is written by `escape` whole
            time_text = real_text(t) + "e0" if plain and 1e-4 <= t < 1e15 else bound(t)
            self.assertEqual(float(time_text), t)
            expected.append("(%s, %s, %s)" % (bound(row[0]), time_text, detail))
        self.assertEqual(log_values(rows, bound), ", ".join(expected))
        self.assertIn("it\\'s", log_values([rows[1]], bound))
        self.assertIn("(100, 1765000000.000001e0, ", log_values(rows, bound))


class WrittenTests(TestCase):
    """Batches written into a real operation log table and read back."""

    timeout = 60

    def fresh_log(self, autocommit, **kwargs):
        """(log, its Database, the section naming a fresh operation-log database)."""
        name = testing.create_database("oplog", ("trade_log",))
        self.addCleanup(testing.drop_database, name)
        kw = testing.mysql_connect_kwargs("misc")
        section = {"host": kw["host"], "port": kw["port"], "user": kw["user"],
                   "pass": kw["password"], "name": name, "charset": "utf8mb4"}
        db = mysql.from_config(section)
        self.addCleanup(db.close)
        commits = autocommit_connection(section) if autocommit else None
        if commits is not None:
            self.addCleanup(commits.close)
        return OperationLog(db, reactor, autocommit_db=commits, **kwargs), db, section

    async def write_and_read(self, autocommit):
        log, db, _ = self.fresh_log(autocommit)
        details = (['{"method": "balance.update", "params": [%d]}' % n
                    for n in range(CHUNK + 5)] + AWKWARD)
        times = [stamp(1765000000 + n * 0.000317) for n in range(len(details))]
        # a batch of several statements (one transaction), then one of a single statement
        for t, detail in zip(times, details):
            log.append(t, detail)
        await log.flush()
        for t, detail in zip(times[:3], details[:3]):
            log.append(t, detail)
        await log.flush()
        rows = await db.query("SELECT `id`, `time`, `detail` FROM `%s` ORDER BY `id`"
                              % log.table)
        expected = list(zip(times, details)) + list(zip(times[:3], details[:3]))
        self.assertEqual(rows, [(n + 1, t, detail) for n, (t, detail) in enumerate(expected)])

    def test_rows_read_back_exactly(self):
        """Ids, times (the same doubles) and details (whatever characters they hold) come
        back as they were appended, over more rows than one statement takes."""
        return defer.Deferred.fromCoroutine(self.write_and_read(False))

    def test_rows_read_back_exactly_autocommit(self):
        """The same through a connection in autocommit mode, as the daemon writes."""
        return defer.Deferred.fromCoroutine(self.write_and_read(True))

    async def large_batch(self, autocommit):
        log, db, _ = self.fresh_log(autocommit)
        # 400 entries of 50,000 characters: 20 MB in one batch, more than MariaDB takes in a
        # packet by default (16 MB)
        details = ['{"note": "%s", "n": %d}' % ("x" * 50000, n) for n in range(400)]
        for n, detail in enumerate(details):
            log.append(stamp(1765000000 + n * 0.001), detail)
        await log.flush()
        rows = await db.query("SELECT `id`, LENGTH(`detail`) FROM `%s` ORDER BY `id`"
                              % log.table)
        self.assertEqual(rows, [(n + 1, len(d)) for n, d in enumerate(details)])
        last = await db.query("SELECT `detail` FROM `%s` WHERE `id` = 400" % log.table)
        self.assertEqual(last[0][0], details[-1])

    def test_batch_beyond_the_packet_limit(self):
        """A batch larger than the server takes in one packet goes in several statements
        of one transaction, where it would have been refused and retried for ever."""
        return defer.Deferred.fromCoroutine(self.large_batch(False))

    def test_batch_beyond_the_packet_limit_autocommit(self):
        return defer.Deferred.fromCoroutine(self.large_batch(True))

    async def failed_statement(self):
        log, db, section = self.fresh_log(True, retry_delay=0.05)
        log.append(1.0, "{}")
        await log.flush()
        # a batch whose second statement fails, once: nothing of its first is kept
        real = log._statements
        broken = []

        def statements(table, rows, escape):
            texts = real(table, rows, escape)
            if not broken:
                broken.append(True)
                texts[1] = texts[1].replace("INSERT", "INSERT INTO nowhere", 1)
            return texts
        self.patch(log, "_statements", statements)
        for n in range(CHUNK + 1):
            log.append(2.0, "{}")
        seen = []
        failed = log._failed

        def counted(failure, batch):
            # what the table holds when the failure is known, before the retry
            conn = pymysql.connect(host=section["host"], port=section["port"],
                                   user=section["user"], password=section["pass"],
                                   database=section["name"])
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT COUNT(*) FROM `%s`" % log.table)
                    seen.append(cursor.fetchone()[0])
            finally:
                conn.close()
            return failed(failure, batch)
        self.patch(log, "_failed", counted)
        await log.flush()
        self.assertEqual(seen, [1])     # only the first batch's row
        rows = await db.query("SELECT COUNT(*) FROM `%s`" % log.table)
        self.assertEqual(rows[0][0], CHUNK + 2)

    def test_failed_batch_leaves_nothing(self):
        """A batch of several statements is one transaction on the autocommit connection:
        when one of them fails, none of its rows stay; it is written whole when retried."""
        return defer.Deferred.fromCoroutine(self.failed_statement())


class FenceTests(SynchronousTestCase):
    """The operation log's named lock, on the real MariaDB."""

    def connect(self):
        kw = testing.mysql_connect_kwargs("misc")
        connection = pymysql.connect(host=kw["host"], port=int(kw["port"]), user=kw["user"],
                                     password=kw["password"], autocommit=True)
        self.addCleanup(lambda: connection.open and connection.close())
        return connection

    def test_one_holder(self):
        """A second writer waits (critical lines) until the holder's session ends; a writer
        whose own previous session still holds the lock ends that session."""
        import threading
        from twisted.logger import LogLevel, capturedLogs
        name = "fence_test_%d" % random.randrange(1 << 30)
        first, second = Fence(name), Fence(name)
        first.PATIENCE = second.PATIENCE = 1
        old = self.connect()
        first(old)
        lingering = first.session
        # the same daemon reconnecting while its old session lingers: that one is ended
        first(self.connect())
        self.assertNotEqual(first.session, lingering)
        self.assertRaises(pymysql.err.Error, old.ping, False)
        # another daemon waits for the holder
        holder = self.connect()
        second_done = threading.Event()
        with capturedLogs() as events:
            first(holder)
            waiter = self.connect()
            waiting = threading.Thread(target=lambda: (second(waiter), second_done.set()))
            waiting.start()
            self.assertFalse(second_done.wait(2.5))
            holder.close()
            self.assertTrue(second_done.wait(10))
            waiting.join()
        self.assertTrue([e for e in events if e["log_level"] == LogLevel.critical
                         and "waited" in e["log_format"]])
        # released at a clean stop: free at once for the next holder
        self.assertEqual(second.session, waiter.thread_id())
        second.release(waiter)
        cursor = self.connect().cursor()
        cursor.execute("SELECT IS_FREE_LOCK(%s)", (second.name,))
        self.assertEqual(cursor.fetchone()[0], 1)

    def test_abandoned_wait(self):
        """A wait given up (a stop before the daemon was ready) raises within a step,
        and the lock is not taken."""
        import threading
        name = "fence_test_%d" % random.randrange(1 << 30)
        holder, waiter = Fence(name), Fence(name)
        holder(self.connect())
        outcome = []

        def wait():
            try:
                waiter(self.connect())
                outcome.append("taken")
            except Abandoned as e:
                outcome.append(str(e))
        waiting = threading.Thread(target=wait)
        waiting.start()
        waiting.join(1.5)
        self.assertTrue(waiting.is_alive())
        waiter.abandon()
        waiting.join(3)
        self.assertFalse(waiting.is_alive())
        self.assertEqual(outcome, ["the wait for the lock %s was given up" % waiter.name])
        self.assertIsNone(waiter.session)
