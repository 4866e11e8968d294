# -*- test-case-name: matchengine.test.test_outbox -*-
"""The writer process: batches written to MariaDB and Kafka, resent after it dies."""

import gc
import io
import json
import marshal
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

from twisted.internet import defer, reactor, task, threads
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from matchengine import config, writer
from matchengine.effects import BALANCE, HISTORY_COLUMNS, ORDER, TOPIC_BALANCES, USER_DEAL
from matchengine.outbox import WriterOutbox, _WriterProtocol
from matchengine.writer import (FRAME, INT_COLUMNS, TEXT_COLUMNS, TIME_COLUMNS, Acks,
                                HistoryThreads, coalesce, insert_statements, read_batches,
                                take_turn)
from utils import mysql, testing
from utils.kafka_queue import KafkaConsumerService
from utils.outage import Outage
from network.timer import within
from utils.testing import until


def run_writer(settings, batches):
    """The writer process run to its end on `settings` and `batches` (its stdin closed
    after them): its CompletedProcess."""
    frames = b""
    for item in [settings] + batches:
        body = marshal.dumps(item)
        frames += FRAME.pack(len(body)) + body
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [writer.__file__.rsplit(os.sep, 2)[0], os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "matchengine.writer"], input=frames,
                          capture_output=True, timeout=60, env=env)


# a daemon that starts its writer (its settings naming it as `parent`), hands it
# batches, prints the writer's pid and dies at once; argv: settings (JSON), batches
# (repr), the file of the writer's stderr
DAEMON_DYING = """
import ast, json, marshal, os, subprocess, sys
from utils.handoff import FRAME
settings = dict(json.loads(sys.argv[1]), parent=os.getpid())
with open(sys.argv[3], "w") as err:
    child = subprocess.Popen([sys.executable, "-m", "matchengine.writer"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
for item in [settings] + ast.literal_eval(sys.argv[2]):
    body = marshal.dumps(item)
    child.stdin.write(FRAME.pack(len(body)) + body)
child.stdin.flush()
print(child.pid, flush=True)
os._exit(0)
"""


def lock_holder(test, path):
    """A process holding the lock file `path` (a writer left by a killed daemon) until its
    stdin is closed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    test.addCleanup(holder.wait)
    test.addCleanup(holder.stdin.close)
    test.addCleanup(holder.stdout.close)
    test.assertEqual(holder.stdout.readline(), b"held\n")
    return holder


def row(user, n):
    return (BALANCE, user % 100, (1700000000.5 + n, user, "BTC", "deposit", "1.00000000",
                                  "%d.00000000" % n, '{"n": %d}' % n))


class WriterTests(TestCase):

    timeout = 120

    def balance_numbers(self, broker):
        """A list filling with the number in each `balances` message, from the first."""
        got = []
        consumer = KafkaConsumerService(broker.address, TOPIC_BALANCES,
                                        lambda offset, value: got.append(json.loads(value)[0]),
                                        offset="earliest", reactor=reactor)
        consumer.startService()
        self.addCleanup(consumer.stopService)
        return got

    async def scenario(self):
        history_db = testing.create_database("out", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        info = testing.require("mysql")
        db_cfg = {"host": info["host"], "port": int(info["port"]), "user": info["user"],
                  "pass": info["password"], "name": history_db}
        outbox = WriterOutbox(reactor, db_cfg, broker.address, workers=2, interval=0.01,
                              restart_delay=0.2)
        outbox.start(0)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(outbox.stop()))
        await until(lambda: outbox.process is not None, what="writer started")
        for n in range(1, 201):
            outbox.add([row(7, n)], [(TOPIC_BALANCES, json.dumps([n]))], n)
            if n == 100:
                outbox.send_now()
                # the writer dies with batches in flight; they are sent again
                os.kill(outbox.process.transport.pid, signal.SIGKILL)
        await outbox.flush()
        self.assertEqual((outbox.pending_history, outbox.pending_messages), (0, 0))
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 history_db, "utf8mb4")
        self.addCleanup(db.close)
        # written once each, in order: the new writer skips what its positions say the
        # killed one wrote
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows], list(range(1, 201)))
        marks = dict(await db.query("SELECT `name`, `oper_id` FROM `history_position`"))
        self.assertEqual(marks.pop("run"), outbox.settings["run"])
        self.assertEqual(marks, {"history": 200, "messages": 200, "balance_history_7": 200})
        got = self.balance_numbers(broker)
        await until(lambda: len(set(got)) >= 200, what="all messages")
        self.assertEqual(sorted(set(got)), list(range(1, 201)))
        self.flushLoggedErrors()

    async def positions_database(self, marks):
        """A connection to a new history database holding `marks` as its positions, and
        the database's settings for a writer."""
        history_db = testing.create_database("pos", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 history_db, "utf8mb4")
        self.addCleanup(db.close)
        if marks:
            await db.execute("INSERT INTO `history_position` VALUES %s" % ", ".join(
                "('%s', %d)" % mark for mark in marks.items()))
        info = testing.require("mysql")
        return db, {"host": info["host"], "port": int(info["port"]), "user": info["user"],
                    "pass": info["password"], "name": history_db}

    async def positioned(self, marks, recovered=None):
        """A history database holding `marks` as its positions, and a writer on it."""
        db, settings = await self.positions_database(marks)
        outbox = WriterOutbox(reactor, settings, None, interval=0.01)
        outbox.start(recovered)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(outbox.stop()))
        return db, outbox

    async def positions_scenario(self):
        # what a writer killed mid-way left: shard 7 written up to operation 50, every
        # shard up to 40
        db, outbox = await self.positioned({"history": 40, "messages": 40,
                                            "balance_history_7": 50})
        for n in range(1, 101):
            outbox.add([row(7, n), row(8, n)], [], n)
            outbox.send_now()
        await outbox.flush()
        for user, first in ((7, 51), (8, 41)):
            rows = await db.query("SELECT `detail` FROM `balance_history_%d` ORDER BY `id`"
                                  % user)
            self.assertEqual([json.loads(r[0])["n"] for r in rows], list(range(first, 101)))
        marks = await db.query("SELECT `name`, `oper_id` FROM `history_position`")
        self.assertEqual(dict(marks), {"history": 100, "messages": 100,
                                       "balance_history_7": 100, "balance_history_8": 100})

    def test_what_positions_say_is_written_is_skipped(self):
        """Batches sent again to a new writer are written only where the positions kept
        in the history database stop short of them, by table shard."""
        return defer.Deferred.fromCoroutine(self.positions_scenario())

    async def past_scenario(self):
        db, outbox = await self.positioned({"history": 500, "messages": 500,
                                            "balance_history_7": 500}, recovered=100)
        for n in range(101, 111):
            outbox.add([row(7, n)], [], n)
            outbox.send_now()
        await outbox.flush()
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows], list(range(101, 111)))
        self.flushLoggedErrors()

    async def restarted_scenario(self, checked_by):
        db, db_settings = await self.positions_database(
            {"history": 150, "messages": 150, "balance_history_7": 150, "run": checked_by})
        # a writer started again while its daemon (run 7) lives: recovery ended at 100, the
        # daemon has handed over up to 200 since, and sends again the batches from 141 on
        done = await threads.deferToThread(
            run_writer, {"db_history": db_settings, "brokers": None, "recovered": 100,
                         "handed": 200, "run": 7},
            [(n, n, [row(7, n)], []) for n in range(141, 201)])
        self.assertEqual(done.returncode, 0, done.stderr)
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        marks = dict(await db.query("SELECT `name`, `oper_id` FROM `history_position`"))
        self.assertEqual(marks["run"], 7)
        return [json.loads(r[0])["n"] for r in rows]

    async def late_turn_scenario(self):
        # the writer of a later run (3) has rebuilt and written up to operation 150
        db, db_settings = await self.positions_database(
            {"history": 150, "messages": 150, "balance_history_7": 150, "run": 3})
        await db.insert_many("balance_history_7", ["time", "user_id", "asset", "business",
                                                   "change", "balance", "detail"],
                             [row(7, n)[2] for n in range(101, 151)])
        lock = os.path.abspath(self.mktemp())
        holder = lock_holder(self, lock)
        # the daemon of run 2 (recovered 100, handed over 101 to 120), which starts its
        # writer, hands it its batches and dies while the writer waits for its turn
        settings = {"db_history": db_settings, "brokers": None, "recovered": 100,
                    "handed": 120, "run": 2, "lock": lock}
        batches = [(n, n, [row(7, n)], []) for n in range(101, 121)]
        said = os.path.abspath(self.mktemp())
        daemon = subprocess.run(
            [sys.executable, "-c", DAEMON_DYING, json.dumps(settings), repr(batches), said],
            cwd=testing.ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(daemon.returncode, 0, daemon.stderr)
        writer_pid = int(daemon.stdout)
        holder.stdin.close()    # the writer before ends: this one's turn comes
        await until(lambda: testing.ended(writer_pid), 30, what="the writer ended")
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows], list(range(101, 151)))
        marks = dict(await db.query("SELECT `name`, `oper_id` FROM `history_position`"))
        self.assertEqual(marks, {"history": 150, "messages": 150, "balance_history_7": 150,
                                 "run": 3})
        with open(said) as f:
            self.assertIn("info: the daemon ended before this writer's turn came", f.read())

    def test_a_writer_whose_daemon_ended_before_its_turn(self):
        """A writer whose daemon was killed while it waited for the writer before it writes
        nothing: its turn may come after the writer of a later run has written all it holds
        (it lowered the positions to its own run's and wrote the rows again)."""
        return defer.Deferred.fromCoroutine(self.late_turn_scenario())

    def test_positions_of_a_restarted_writer(self):
        """A writer started again while the daemon lives keeps the positions up to the
        last operation handed over: what its predecessor wrote is not written twice."""
        async def check():
            self.assertEqual(await self.restarted_scenario(7), list(range(151, 201)))
        return defer.Deferred.fromCoroutine(check())

    def test_positions_unchecked_by_this_run(self):
        """Positions past the operation recovered, left by a writer of an earlier run
        (asynchronous mode: the log lost operations whose effects were written), go back
        to it although the first writer of this run died before it could check them: this
        run's operations after it are written."""
        async def check():
            self.assertEqual(await self.restarted_scenario(3), list(range(141, 201)))
        return defer.Deferred.fromCoroutine(check())

    async def given_up_scenario(self, empty_log=False):
        db, db_settings = await self.positions_database({"history": 5, "messages": 5})
        if empty_log:
            # a log that does not hold the operations the daemon recovered
            log_db = testing.create_database("logpos", ("trade_log",))
            self.addCleanup(testing.drop_database, log_db)
            rebuild = {"db_log": dict(db_settings, name=log_db), "assets": [], "markets": []}
        else:
            # a rebuild that cannot be made: its settings name an asset without precisions
            rebuild = {"db_log": db_settings, "assets": [["BTC"]], "markets": []}
        done = await threads.deferToThread(
            run_writer, {"db_history": db_settings, "brokers": None, "recovered": 10,
                         "rebuild": rebuild, "rebuild_patience": 1.5},
            [(n, n, [row(7, n)], []) for n in (11, 12)])
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"the history and messages of operations 6 to 10 are not rebuilt",
                      done.stderr)
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows], [11, 12])

    async def long_replay_scenario(self, operations):
        db, db_settings = await self.positions_database({"history": operations - 10})
        log_db = testing.create_database("logpos", ("trade_log",))
        self.addCleanup(testing.drop_database, log_db)
        log = mysql.connect_mysql(db_settings["host"], db_settings["port"],
                                  db_settings["user"], db_settings["pass"], log_db, "utf8mb4")
        self.addCleanup(log.close)
        # deposits of user 7, numbered in their details; no slice: the rebuild replays the
        # whole log before it reaches the last ten, whose rows and messages are missing
        await log.execute("CREATE TABLE `operlog_20261207` LIKE `operlog_example`")
        await log.execute("CREATE TABLE `digits` (`d` INT)")
        await log.execute("INSERT INTO `digits` VALUES (0), (1), (2), (3), (4), (5), (6), "
                          "(7), (8), (9)")
        await log.execute(
            "INSERT INTO `operlog_20261207` (`id`, `time`, `detail`) SELECT `n`, "
            "1700000000 + `n` / 1000, CONCAT('{\"method\": \"update_balance\", "
            "\"params\": [7, \"BCH\", \"deposit\", ', `n`, ', \"1\", {\"n\": ', `n`, "
            "'}]}') FROM (SELECT 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d "
            "+ 100000 * g.d AS `n` FROM `digits` a, `digits` b, `digits` c, `digits` e, "
            "`digits` f, `digits` g) s WHERE `n` <= %s", (operations,))
        with open(os.path.join(os.path.dirname(writer.__file__), "conf", "config.json")) as f:
            tables = config.tables_data(*config.build_tables(config.load_data(json.load(f))))
        started = time.monotonic()
        done = await threads.deferToThread(
            run_writer, {"db_history": db_settings, "brokers": None, "recovered": operations,
                         "rebuild": dict(tables, db_log=dict(db_settings, name=log_db)),
                         "rebuild_patience": 2.0},
            [(n, n, [row(7, n)], []) for n in (operations + 1, operations + 2)])
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn(b"not rebuilt", done.stderr)
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows],
                         list(range(operations - 9, operations + 3)))
        return time.monotonic() - started

    def test_a_long_replay_is_progress(self):
        """A rebuild replaying the log for longer than its patience before its first batch
        is making progress: it goes on, and the operations' rows are rebuilt."""
        async def check():
            took = await self.long_replay_scenario(600000)
            # the replay alone outlasted the patience: the case this test is for
            self.assertGreater(took, 2.0)
        return defer.Deferred.fromCoroutine(check())

    def test_a_rebuild_short_of_its_end_fails(self):
        """A rebuild whose log ends before the operation asked for has failed (it is not
        taken for done): given up after its patience, loudly."""
        return defer.Deferred.fromCoroutine(self.given_up_scenario(empty_log=True))

    async def hung_scenario(self):
        import pymysql
        db, db_settings = await self.positions_database({"history": 5, "messages": 5})
        log_db = testing.create_database("logpos", ("trade_log",))
        self.addCleanup(testing.drop_database, log_db)
        # the log's database does not answer the rebuild: a table it reads is locked
        locker = pymysql.connect(host=db_settings["host"], port=db_settings["port"],
                                 user=db_settings["user"], password=db_settings["pass"],
                                 database=log_db)
        self.addCleanup(locker.close)
        locker.cursor().execute("LOCK TABLES `slice_history` WRITE")
        started = reactor.seconds()
        done = await threads.deferToThread(
            run_writer, {"db_history": db_settings, "brokers": None, "recovered": 10,
                         "rebuild": {"db_log": dict(db_settings, name=log_db),
                                     "assets": [], "markets": []},
                         "rebuild_patience": 2.0},
            [(n, n, [row(7, n)], []) for n in (11, 12)])
        self.assertLess(reactor.seconds() - started, 30)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"rebuilding made no progress for 2 s; stopped", done.stderr)
        self.assertIn(b"the history and messages of operations 6 to 10 are not rebuilt",
                      done.stderr)
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows], [11, 12])

    def test_a_rebuild_that_hangs_is_stopped(self):
        """A rebuild that makes no progress (its database does not answer) is stopped and
        given up after its patience."""
        return defer.Deferred.fromCoroutine(self.hung_scenario())

    def test_a_rebuild_that_keeps_failing_is_given_up(self):
        """A rebuild that keeps failing is given up after its patience, loudly, and the
        daemon's batches are written: the exchange does not stall behind it."""
        return defer.Deferred.fromCoroutine(self.given_up_scenario())

    def test_positions_past_the_log(self):
        """Positions past the last operation recovered (the asynchronous mode wrote the
        effects of operations a crash took from the log) go back to it: the new operations
        that take those ids are written."""
        return defer.Deferred.fromCoroutine(self.past_scenario())

    async def history_away_scenario(self):
        db, settings = await self.positions_database({})
        proxy = testing.CuttableProxy(settings["port"]).up()
        self.addCleanup(proxy.down)
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        outbox = WriterOutbox(reactor, dict(settings, port=proxy.port), broker.address,
                              interval=0.01)
        outbox.start(0)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(outbox.stop()))
        outbox.add([row(7, 1)], [(TOPIC_BALANCES, json.dumps([1]))], 1)
        outbox.send_now()
        await outbox.flush()
        # the history database goes away: the messages go on, the history waits
        await proxy.down()
        got = self.balance_numbers(broker)
        for first in (2, 4, 6):
            for n in (first, first + 1):
                outbox.add([row(7, n)], [(TOPIC_BALANCES, json.dumps([n]))], n)
                outbox.send_now()
            await until(lambda: got == list(range(1, first + 2)), seconds=30,
                        what="messages sent")
        self.assertEqual(outbox.pending_history, 6)
        proxy.up()
        await outbox.flush()
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows], list(range(1, 8)))
        self.flushLoggedErrors()

    def test_messages_while_the_history_database_is_away(self):
        """While the history database is away, messages are still sent: the messages
        lane does not wait to record its position."""
        return defer.Deferred.fromCoroutine(self.history_away_scenario())

    async def stalled_stop(self):
        history_db = testing.create_database("out", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        info = testing.require("mysql")
        db_cfg = {"host": info["host"], "port": int(info["port"]), "user": info["user"],
                  "pass": info["password"], "name": history_db}
        # a broker address where nothing answers
        outbox = WriterOutbox(reactor, db_cfg, "127.0.0.1:%d" % testing.free_port(),
                              interval=0.01)
        outbox.start(0)
        await until(lambda: outbox.process is not None, what="writer started")
        pid = outbox.process.transport.pid
        outbox.add([row(7, 1)], [(TOPIC_BALANCES, json.dumps([1]))], 1)
        with capturedLogs() as events:
            await defer.Deferred.fromCoroutine(outbox.stop(patience=0.5))
        self.assertIsNone(outbox.process)
        self.assertTrue(testing.ended(pid))
        self.assertIn("stopping: the writer confirmed nothing for 0.5 s; stopped with 1 "
                      "batches (1 history rows, 1 messages) not written, which the next "
                      "start rebuilds from the operation log",
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical])
        # stopped for good: no writer started again after it
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertIsNone(outbox.process)
        self.flushLoggedErrors()

    def test_a_stop_while_kafka_is_away(self):
        """A daemon stopping while its writer cannot send (the brokers away) stops all the
        same once the writer has confirmed nothing for a while: the writer is stopped, its
        batches left to the next start's rebuild."""
        return defer.Deferred.fromCoroutine(self.stalled_stop())

    async def unended_stop(self):
        import pymysql
        db, settings = await self.positions_database({})
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        outbox = WriterOutbox(reactor, settings, broker.address, interval=0.01)
        outbox.start(0)
        outbox.add([row(7, 1)], [(TOPIC_BALANCES, json.dumps([1]))], 1)
        await outbox.flush()
        await until(lambda: outbox.confirmed == 1, what="the first batch written")
        # another session holds the messages lane's position: recording it waits
        kw = testing.mysql_connect_kwargs("misc")
        locker = pymysql.connect(host=kw["host"], port=int(kw["port"]), user=kw["user"],
                                 password=kw["password"], database=settings["name"])
        self.addCleanup(locker.close)
        locker.cursor().execute("SELECT * FROM `history_position` WHERE `name` = 'messages' "
                                "FOR UPDATE")
        outbox.add([row(7, 2)], [(TOPIC_BALANCES, json.dumps([2]))], 2)
        await outbox.flush()        # written and sent, the lane's position not recorded
        with capturedLogs() as events:
            stopped = defer.Deferred.fromCoroutine(outbox.stop(patience=0.5))
            self.assertTrue(await within(reactor, stopped, 10))
        locker.rollback()
        self.assertIn("stopping: the writer has not ended 0.5 s after its last batch was "
                      "written (recording its position with the history database away, or "
                      "still rebuilding?); stopped: the next start writes again what it had "
                      "not recorded",
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical])
        rows = await db.query("SELECT `detail` FROM `balance_history_7` ORDER BY `id`")
        self.assertEqual([json.loads(r[0])["n"] for r in rows], [1, 2])

    def test_a_stop_while_the_writer_cannot_end(self):
        """A writer that has written everything but cannot record its messages lane's
        position as it ends (the history database away, or the row locked) is stopped
        after a while: the daemon's stop does not wait for the database."""
        return defer.Deferred.fromCoroutine(self.unended_stop())

    def test_a_failed_lane_ends_the_process(self):
        """A lane that fails ends the writer (the daemon starts it again and sends its
        batches again), where the process lived on without it, confirming nothing more."""
        history_db = testing.create_database("out", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        info = testing.require("mysql")
        done = run_writer({"db_history": {"host": info["host"], "port": int(info["port"]),
                                          "user": info["user"], "pass": info["password"],
                                          "name": history_db}, "brokers": None},
                          [(1, 1, [(BALANCE, 5, "not a row")], [])])
        self.assertEqual(done.returncode, writer.LANE_FAILED, done.stderr)
        # the rows fail where they are written, on a history connection's thread
        self.assertRegex(done.stderr, rb"the history-\d+ thread failed, the writer ends")
        self.assertEqual(done.stdout, b"")

    def test_writer_killed(self):
        """History rows and messages all arrive although the writer was killed mid-way;
        the history rows once each."""
        return defer.Deferred.fromCoroutine(self.scenario())


class InsertStatementTests(TestCase):
    """The writer builds its INSERT text itself; what MariaDB stores must be the rows."""

    TRICKY = ["it's", 'say "hi"', "back\\slash\\", "nul\x00byte", "line\nbreak\r",
              "ctrl-z\x1a", "caf\u00e9 \u4e2d", "'; DROP TABLE x; --"]

    def rows(self):
        out = []
        for n, text in enumerate(self.TRICKY):
            out.append((BALANCE, 5, (1700000000.123456 + n, 5, "BTC", text, "-1.5",
                                     "%d.25" % n, '{"note": %s}' % json.dumps(text))))
            out.append((ORDER, 5, (n + 1, 1700000000.000001, 1700000001.999999, 5, "BTCBCH",
                                   text, 1, 2, "10.5", "0.1", "0.002", "0.001", "0.1",
                                   "1.05", "0.0002")))
            out.append((USER_DEAL, 5, (1700000002.5, 5, "BTCBCH", n + 1, 7, 8, 1, 2, "10.5",
                                       "0.1", "1.05", "0", "0.0002")))
        return out

    def test_statements_group_by_shard_and_chunk(self):
        rows = [(BALANCE, n % 3, (1.0, n, "BTC", "x", "1", "1", "{}")) for n in range(10)]
        statements = insert_statements(rows, chunk=2)
        # shards 0, 1, 2 hold 4, 3 and 3 rows: 2 + 2 + 2 statements
        self.assertEqual(len(statements), 6)
        self.assertTrue(statements[0].startswith(
            "INSERT IGNORE INTO `balance_history_0` (`time`, `user_id`, `asset`, "))
        self.assertIn("(1.000000, 0, 'BTC', 'x', '1', '1', '{}'), "
                      "(1.000000, 3, 'BTC', 'x', '1', '1', '{}')", statements[0])

    def test_a_shards_rows_stay_on_one_connection(self):
        """Each shard's rows go, together and in order, to one connection, the fewest
        rows to each."""
        rows = [(BALANCE, shard, (float(n), n, "BTC", "x", "1", "1", "{}"))
                for shard, count in ((1, 3), (2, 1), (3, 2), (4, 1)) for n in range(count)]
        shards = writer.shard_rows(rows)
        self.assertEqual([(s.name, [r[1] for r in s.rows]) for s in shards],
                         [("balance_history_1", [0, 1, 2]), ("balance_history_2", [0]),
                          ("balance_history_3", [0, 1]), ("balance_history_4", [0])])
        dealt = writer.deal(shards, 2)
        self.assertEqual([[s.shard for s in group] for group in dealt], [[1, 4], [3, 2]])
        self.assertEqual([[s.shard for s in group] for group in writer.deal(shards[:1], 4)],
                         [[1]])

    def setUp(self):
        # every shard's rows by LOAD DATA where the server takes it, however few
        self.patch(writer, "LOAD_ROWS", 1)

    async def written(self, rows, workers, oper_id=None):
        """A connection to a new history database once `rows` are written into it by
        `workers` threads."""
        history_db = self.history_db = testing.create_database("ins", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        info = testing.require("mysql")
        history = HistoryThreads({"host": info["host"], "port": int(info["port"]),
                                  "user": info["user"], "pass": info["password"],
                                  "name": history_db}, workers)
        await threads.deferToThread(history.write, rows, oper_id)
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 history_db, "utf8")
        self.addCleanup(db.close)
        return db

    async def ordered(self):
        rows = [(BALANCE, 1, (1700000000.0 + n, 1, "BCH", "deposit", "1", "%d" % (n + 1),
                              '{"n": %d}' % n)) for n in range(60)]
        db = await self.written(rows, 4)
        got = await db.query("SELECT `detail` FROM `balance_history_1` ORDER BY `id`")
        self.assertEqual([json.loads(d)["n"] for d, in got], list(range(60)))

    def test_an_idle_connection_dropped_meanwhile(self):
        """A connection the server dropped while it was idle (MySQL restarted, an outage
        over) is replaced before its next statements, with no failure told and no second's
        wait; one dropped in use is an outage, told."""
        import pymysql
        history_db = testing.create_database("idle", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        info = testing.require("mysql")
        connection = writer.Connection({"host": info["host"], "port": int(info["port"]),
                                        "user": info["user"], "pass": info["password"],
                                        "name": history_db},
                                       Outage("history", writer.tell))
        self.addCleanup(lambda: connection.conn and connection.conn.close())
        self.patch(sys, "stderr", io.StringIO())
        killer = pymysql.connect(**testing.mysql_connect_kwargs("misc"))
        self.addCleanup(killer.close)

        def dropped():
            with killer.cursor() as cursor:
                cursor.execute("KILL %d" % connection.conn.thread_id())
        insert = "INSERT INTO `balance_history_1` (`time`, `user_id`, `asset`, `business`, " \
                 "`change`, `balance`, `detail`) VALUES (1, 1, 'BCH', 'x', '1', '1', '{}')"
        connection.run([insert])
        dropped()
        self.patch(writer, "IDLE_CHECK", 0.0)
        started = time.monotonic()
        connection.run([insert])
        self.assertLess(time.monotonic() - started, 0.9)
        self.assertEqual(sys.stderr.getvalue(), "")
        # in use: a statement that finds it gone is a failure, retried in a second
        self.patch(writer, "IDLE_CHECK", 3600.0)
        dropped()
        connection.run([insert])
        told = sys.stderr.getvalue().splitlines()
        self.assertTrue(told[0].startswith("error: history: insert failed: ("), told)
        self.assertTrue(told[1].startswith("warn: history: working again after "), told)
        with killer.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM `%s`.`balance_history_1`" % history_db)
            self.assertEqual(cursor.fetchone()[0], 3)

    async def ambiguous(self, late=0.0):
        import pymysql

        class LostAnswer:
            """A connection whose first COMMIT reports the connection lost, while the
            server commits, `late` seconds after."""

            def __init__(self, conn):
                self.conn = conn

            def __getattr__(self, name):
                return getattr(self.conn, name)

            def commit(self):
                if not failures:
                    return self.conn.commit()
                failures.pop()
                conn, self.conn = self.conn, None      # gone, as far as the writer knows
                if late:
                    threading.Timer(late, lambda: (conn.commit(), conn.close())).start()
                else:
                    conn.commit()
                    conn.close()
                raise pymysql.err.OperationalError(2013, "Lost connection to server")

            def rollback(self):
                if self.conn is not None:
                    self.conn.rollback()

            def close(self):
                if self.conn is not None:
                    self.conn.close()
        failures = [1]
        connect = writer.Connection._connect
        self.patch(writer.Connection, "_connect", lambda conn: LostAnswer(connect(conn)))
        self.patch(sys, "stderr", io.StringIO())
        self.patch(writer, "HISTORY_OUTAGE", Outage("history", writer.tell))
        rows = [(BALANCE, 1, (1700000000.0 + n, 1, "BCH", "deposit", "1", "%d" % (n + 1),
                              '{"n": %d}' % n)) for n in range(5)]
        db = await self.written(rows, 1, oper_id=9)
        got = await db.query("SELECT `detail` FROM `balance_history_1` ORDER BY `id`")
        self.assertEqual([json.loads(d)["n"] for d, in got], list(range(5)))
        self.assertEqual(failures, [])
        # the failure told, and its end (the commit found applied)
        told = sys.stderr.getvalue().splitlines()
        self.assertTrue(told[0].startswith("error: history: insert failed: (2013"), told)
        self.assertRegex(told[-1], "^warn: history: working again after ")

    def test_a_commit_lost_with_its_answer(self):
        """A transaction whose COMMIT went through but whose answer was lost is not run
        again: its shard's position, committed with its rows, tells."""
        return defer.Deferred.fromCoroutine(self.ambiguous())

    def test_a_commit_lost_with_its_answer_and_late(self):
        """The same when the server's COMMIT ends after the writer asks: the question
        waits for it."""
        return defer.Deferred.fromCoroutine(self.ambiguous(late=2.0))

    def refused(self):
        """Connections that do not offer LOAD DATA LOCAL, which the server then refuses:
        the writer's rows go in by INSERT."""
        import pymysql
        connect = pymysql.connect
        self.patch(pymysql, "connect", lambda **kw: connect(**dict(kw, client_flag=0)))
        self.patch(sys, "stderr", io.StringIO())

    def test_a_shards_rows_keep_their_order(self):
        """A user's rows get ids in the order they were made: readhistory lists them by
        id."""
        return defer.Deferred.fromCoroutine(self.ordered())

    def test_a_shards_rows_keep_their_order_by_insert(self):
        """The same over a server that refuses LOAD DATA LOCAL: as many INSERTs as it
        takes."""
        self.refused()
        self.patch(writer.ShardRows, "inserts",
                   lambda shard, chunk=3, inserts=writer.ShardRows.inserts: inserts(shard, 3))
        return defer.Deferred.fromCoroutine(self.ordered())

    async def stored(self):
        rows = self.rows()
        db = await self.written(rows, 2)
        got = {}
        for table in (BALANCE, ORDER, USER_DEAL):
            columns = HISTORY_COLUMNS[table]
            got[table] = await db.query("SELECT %s FROM `%s_5` ORDER BY `id`" % (
                ", ".join("`%s`" % c for c in columns), table))
        return rows, got

    def test_loaded_rows_are_inserted_rows(self):
        """The server stores the same values, to the last bit of a time, whether the rows
        come by LOAD DATA or by INSERT."""
        async def check():
            rows = self.rows()
            db = await self.written(rows, 2)
            loaded = self.history_db
            self.refused()
            await self.written(rows, 2)
            inserted = self.history_db
            self.assertRegex(sys.stderr.getvalue(),
                             r"info: history: the server refuses LOAD DATA LOCAL \(\((1148|4166)")
            for table in (BALANCE, ORDER, USER_DEAL):
                same = " AND ".join("a.`%s` = b.`%s`" % (c, c) for c in HISTORY_COLUMNS[table])
                got = await db.query(
                    "SELECT COUNT(*), SUM(%s) FROM `%s`.`%s_5` a JOIN `%s`.`%s_5` b USING "
                    "(`id`)" % (same, loaded, table, inserted, table))
                count = sum(1 for t, _, _ in rows if t == table)
                self.assertEqual([tuple(map(int, row)) for row in got], [(count, count)], table)
        return defer.Deferred.fromCoroutine(check())

    def test_stored_rows_equal_the_given_ones(self):
        async def check():
            rows, got = await self.stored()
            for table in (BALANCE, ORDER, USER_DEAL):
                want = [r for t, _, r in rows if t == table]
                self.assertEqual(len(got[table]), len(want))
                for stored, given in zip(got[table], want):
                    for column, a, b in zip(HISTORY_COLUMNS[table], stored, given):
                        if column in TIME_COLUMNS:
                            self.assertEqual(a, round(b, 6), column)
                        elif column in INT_COLUMNS or column in TEXT_COLUMNS:
                            self.assertEqual(a, b, column)
                        else:
                            self.assertEqual(Decimal(a), Decimal(b), column)
        return defer.Deferred.fromCoroutine(check())


class ConnectTests(SynchronousTestCase):

    def test_server_that_never_greets(self):
        """A history database that accepts connections and says nothing fails the
        connection within CONNECT_TIMEOUT (the writer then tries again) rather than holding
        its thread for ever; statements on a connection opened have no timeout."""
        import socket
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        self.patch(writer, "CONNECT_TIMEOUT", 0.5)
        info = testing.require("mysql")
        db = {"host": "127.0.0.1", "port": server.getsockname()[1], "user": info["user"],
              "pass": info["password"], "name": "x"}
        started = time.monotonic()
        with self.assertRaises(Exception):
            writer.connect(db)
        self.assertLess(time.monotonic() - started, 5.0)
        name = testing.create_database("conn", ("trade_history",), True)
        self.addCleanup(testing.drop_database, name)
        conn = writer.connect(dict(db, host=info["host"], port=int(info["port"]), name=name))
        self.addCleanup(conn.close)
        with conn.cursor() as cursor:
            cursor.execute("SELECT SLEEP(0.8), 1")
            self.assertEqual(cursor.fetchone(), (0, 1))


class HistoryCharsetTests(SynchronousTestCase):

    def test_original_templates(self):
        """History tables in utf8 (the original's templates; a character of four bytes is
        stored there as "?"): an empty template is converted to utf8mb4, a table shard
        holding rows is reported, not rebuilt."""
        import pymysql
        name = testing.create_database("hcs", ("trade_history",))
        self.addCleanup(testing.drop_database, name)
        kw = testing.mysql_connect_kwargs("misc")
        conn = pymysql.connect(**dict(kw, database=name), autocommit=True)
        self.addCleanup(conn.close)
        with conn.cursor() as cursor:
            for sql in ("CREATE TABLE `balance_history_3` LIKE `balance_history_example`",
                        "ALTER TABLE `balance_history_3` CONVERT TO CHARACTER SET utf8",
                        "ALTER TABLE `order_history_example` CONVERT TO CHARACTER SET utf8"):
                cursor.execute(sql)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        writer.utf8mb4_history({"host": kw["host"], "port": kw["port"], "user": kw["user"],
                                "pass": kw["password"], "name": name})
        with conn.cursor() as cursor:
            cursor.execute("SELECT `TABLE_NAME`, GROUP_CONCAT(DISTINCT `CHARACTER_SET_NAME`) "
                           "FROM information_schema.COLUMNS WHERE `TABLE_SCHEMA` = %s AND "
                           "`CHARACTER_SET_NAME` IS NOT NULL AND `TABLE_NAME` IN "
                           "('order_history_example', 'balance_history_3') GROUP BY "
                           "`TABLE_NAME`", (name,))
            self.assertEqual(dict(cursor.fetchall()), {"order_history_example": "utf8mb4",
                                                       "balance_history_3": "utf8mb3"})
        lines = err.getvalue().splitlines()
        self.assertEqual(lines[0], "info: history: order_history_example now keeps its texts "
                                   "in utf8mb4")
        self.assertTrue(lines[1].startswith("history: 1 tables (balance_history_3, ...) keep "
                                            "texts in utf8"), lines)


class CollectorTests(SynchronousTestCase):

    def test_runs_on_its_own_thread(self):
        """The automatic collector is off, and a thread of its own runs it at each
        interval."""
        self.addCleanup(gc.enable)
        runs, slept = [], threading.Semaphore(0)

        def counted(phase, info):
            if phase == "stop":
                runs.append(info["generation"])
        go_on = threading.Event()

        def sleep(seconds):
            self.assertEqual(seconds, 7.0)
            slept.release()
            go_on.wait()
            go_on.clear()
        thread = writer.collect_every(7.0, sleep)
        self.assertFalse(gc.isenabled())
        # counted from here: an automatic pass may have run before the collector was off
        gc.callbacks.append(counted)
        self.addCleanup(gc.callbacks.remove, counted)
        self.assertTrue(thread.daemon)
        self.assertTrue(slept.acquire(timeout=10))
        self.assertEqual(runs, [])
        go_on.set()           # the first interval ends: one full collection
        self.assertTrue(slept.acquire(timeout=10))
        self.assertEqual(runs, [2])


class LaneTests(SynchronousTestCase):
    """How the writer's lanes take batches and confirm them."""

    def test_queued_batches_go_together(self):
        """Batches that queued up form one group, in order, up to the limit; the end mark
        closes the last group."""
        batches = queue.Queue()
        for sequence, size in enumerate([3, 4, 5, 1], 1):
            batches.put((sequence, sequence, ["r"] * size, []))
        batches.put(None)
        groups = [([b[0] for b in group], last)
                  for group, last in coalesce(batches, 8, lambda batch: len(batch[2]))]
        self.assertEqual(groups, [([1, 2, 3], False), ([4], True)])

    def test_window_gathers_what_arrives(self):
        """A group takes what is queued and what arrives within the window; a lane with a
        whole group's worth queued does not wait."""
        batches = queue.Queue()
        slept = []

        def sleep(seconds):      # two batches arrive during the window
            slept.append(seconds)
            batches.put((len(slept) * 10 + 1, 0, ["r"], []))
            batches.put((len(slept) * 10 + 2, 0, ["r"], []))

        batches.put((1, 0, ["r"], []))
        batches.put((2, 0, ["r"], []))
        groups = coalesce(batches, 5, lambda batch: len(batch[2]), 0.05, sleep)
        group, last = next(groups)
        self.assertEqual(([b[0] for b in group], last, slept), ([1, 2, 11, 12], False, [0.05]))
        for sequence in range(3, 9):
            batches.put((sequence, 0, ["r"], []))
        group, last = next(groups)
        self.assertEqual(([b[0] for b in group], slept), ([3, 4, 5, 6, 7], [0.05]))

    def test_batches_read_from_the_pipe(self):
        """Frames split across reads or sharing one come out whole and in order; a frame
        cut short ends the stream after the whole ones."""
        frames = [FRAME.pack(len(body)) + body
                  for body in (marshal.dumps((n, [("t", n, ("x" * n,))], [])) for n in (1, 2, 3))]
        data = b"".join(frames) + frames[0][:7]
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)

        def feed():
            for start in range(0, len(data), 5):
                os.write(write_fd, data[start:start + 5])
            os.close(write_fd)
        feeder = threading.Thread(target=feed)
        feeder.start()
        got = list(read_batches(read_fd, pause=0))
        feeder.join()
        self.assertEqual([b if b is None else b[0] for b in got], [1, 2, 3, None])
        self.assertEqual(got[2][1], [("t", 3, ("xxx",))])

    def test_end_alone(self):
        """The end mark with nothing before it gives an empty last group."""
        batches = queue.Queue()
        batches.put(None)
        self.assertEqual(list(coalesce(batches, 8, len)), [([], True)])

    def test_confirmations(self):
        """One number confirms every batch up to it, once both lanes are past it."""
        sink = io.BytesIO()
        acks = Acks(sink, 2)
        acks.finished(0, 3)
        self.assertEqual(sink.getvalue(), b"")
        acks.finished(1, 2)
        acks.finished(1, 5)
        acks.finished(0, 5)
        self.assertEqual(sink.getvalue(), b"2\n3\n5\n")

    def test_confirmations_after_the_daemon_died(self):
        """A confirmation that cannot be written (the daemon is gone) does not stop the
        lanes, and nothing more is written."""
        class Gone(io.BytesIO):
            def write(self, data):
                raise BrokenPipeError()

        acks = Acks(Gone(), 1)
        acks.finished(0, 1)
        acks.finished(0, 2)
        self.assertIsNone(acks.stdout)
        self.assertEqual(acks.confirmed, 2)

    def test_turn_waits_for_the_previous_writer(self):
        """A writer's lanes start once the writer left by a killed daemon (here a process
        holding the lock file) has exited; without a lock file they start at once."""
        path = self.mktemp()
        holder = lock_holder(self, path)
        said = io.StringIO()
        self.patch(sys, "stderr", said)
        self.patch(writer, "LOCK_PATIENCE", 0.2)
        turn = take_turn(path, poll=0.05)
        self.assertFalse(turn.wait(0.5))
        holder.stdin.close()
        self.assertTrue(turn.wait(10))
        self.assertTrue(take_turn(None).is_set())
        lines = said.getvalue().splitlines()
        self.assertEqual(lines[0], "info: waiting for the previous writer to finish (%s)" % path)
        self.assertTrue(lines[1].startswith("still waiting for the previous writer after 0 s: "
                                            "is another matchengine using the lock file"))
        self.assertEqual(lines[2:], ["info: the previous writer has finished"])

    def test_turn_keeps_the_lock(self):
        """The lock file stays locked for as long as the writer lives: a restarted
        daemon's writer waits for this one."""
        path = self.mktemp()
        self.assertTrue(take_turn(path).wait(10))
        handle = writer._HELD[-1]
        self.addCleanup(lambda: (writer._HELD.remove(handle), handle.close()))
        gc.collect()
        probe = subprocess.run(
            [sys.executable, "-c", "import fcntl, sys; fcntl.flock(open(sys.argv[1], 'a'), "
             "fcntl.LOCK_EX | fcntl.LOCK_NB)", path], capture_output=True, text=True)
        self.assertNotEqual(probe.returncode, 0)
        self.assertIn("BlockingIOError", probe.stderr)

    def test_orphaned_writer_ends_on_failure(self):
        """A writer whose daemon is gone (its stderr a pipe nobody reads) does not hang
        when one of its threads fails: the line is dropped and the process ends."""
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys, threading, time; sys.path.insert(0, %r); "
             "from matchengine import writer; writer.say('first'); "
             "threading.Thread(target=writer.ending_on_failure(lambda: 1 / 0)).start(); "
             "time.sleep(30)" % testing.ROOT], stderr=subprocess.PIPE)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        child.stderr.close()        # the daemon died: nobody reads the pipe
        self.assertEqual(child.wait(20), writer.LANE_FAILED)

    def test_writer_lines_logged_by_level(self):
        """The writer's stderr reaches the daemon's log at the level its prefix says
        (none: critical), whole lines only."""
        outbox = WriterOutbox(None, {}, None)
        proto = _WriterProtocol(outbox)
        with capturedLogs() as events:
            proto.errReceived(b"info: waiting for the previous writer to finish (x)\nerror: hist")
            proto.errReceived(b"ory: insert failed: gone; retrying in 1 s\n\nhistory: fail")
            proto.errReceived(b"ing for 10 s\nwarn: history: working again\n")
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events], [
            (LogLevel.info, "writer: waiting for the previous writer to finish (x)"),
            (LogLevel.error, "writer: history: insert failed: gone; retrying in 1 s"),
            (LogLevel.critical, "writer: history: failing for 10 s"),
            (LogLevel.warn, "writer: history: working again")])
