# -*- test-case-name: matchengine.test.test_crash -*-
"""kill -9 of a real matchengine daemon under load loses nothing it acknowledged."""

import json
import os
import signal
import socket
import subprocess
import sys

from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from utils import mysql, testing
from utils.kafka_queue import KafkaConsumerService
from utils.rpc_client import RPCClient
from utils.testing import until

RUN_TWISTD = "import sys; from twisted.scripts.twistd import run; run()"


def cli_line(port, line):
    """The answer of the CLI on `port` to `line` (its first read)."""
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(line)
        return sock.recv(4096)


class Daemon:
    def __init__(self, test, workdir, config):
        self.test = test
        self.path = os.path.join(workdir, "config.json")
        with open(self.path, "w") as f:
            json.dump(config, f)
        self.workdir = workdir
        self.proc = None
        test.addCleanup(self.kill)

    def start(self):
        env = dict(os.environ, PYTHONPATH=testing.ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUN_TWISTD, "--nodaemon", "--pidfile=", "--logfile=-",
             "matchengine", "--config", self.path],
            cwd=self.workdir, env=env, stdout=open(os.path.join(self.workdir, "out.log"), "ab"),
            stderr=subprocess.STDOUT)

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None


class CrashTests(TestCase):

    timeout = 240

    def config(self, port, broker):
        info = testing.require("mysql")
        db = {"host": info["host"], "port": int(info["port"]), "user": info["user"],
              "pass": info["password"]}
        log_db = testing.create_database("log", ("trade_log",))
        self.addCleanup(testing.drop_database, log_db)
        history_db = testing.create_database("hist", ("trade_history",), True)
        self.addCleanup(testing.drop_database, history_db)
        self.history_db = history_db
        with open(os.path.join(testing.ROOT, "matchengine", "conf", "config.json")) as f:
            cfg = json.load(f)
        cfg.pop("alert")
        cfg.update({"log": {"path": "log/matchengine", "flag": "fatal,error,warn,info"},
                    "svr": {"bind": ["tcp@127.0.0.1:%d" % port], "max_pkg_size": 102400,
                            "heartbeat_check": False},
                    "cli": "tcp@127.0.0.1:%d" % testing.free_port(),
                    "db_log": dict(db, name=log_db), "db_history": dict(db, name=history_db),
                    "brokers": broker})
        return cfg

    async def started(self):
        """A daemon on fresh databases and a broker of its own, and a client connected to
        it: (broker, daemon, client, the daemon's config)."""
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        port = testing.free_port()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(workdir, "log"))
        config = self.config(port, broker.address)
        daemon = Daemon(self, workdir, config)
        daemon.start()
        client = RPCClient(reactor, "matchengine", ["tcp@127.0.0.1:%d" % port], 1 << 20,
                           reconnect_timeout=0.2)
        client.start()
        self.addCleanup(client.stop)
        await until(lambda: client.connected, 60, "daemon up")
        return broker, daemon, client, config

    async def stopped_under_load(self, sig):
        """A daemon sent `sig` while 200 deposits are in flight, then started again:
        (broker, daemon, client, acknowledged deposits, deposits sent)."""
        broker, daemon, client, _ = await self.started()
        acked = []
        sent = 0

        def deposit(n):
            d = client.call(102, [n % 50 + 1, "BCH", "deposit", n, "1", {}], 10.0)
            d.addCallbacks(lambda r: acked.append(n) if r["error"] is None else None,
                           lambda f: None)
            return d

        # keep 200 calls in flight; stop the daemon while they stream
        in_flight = []
        while len(acked) < 3000:
            while len(in_flight) < 200:
                in_flight.append(deposit(sent))
                sent += 1
            await in_flight.pop(0)
        daemon.kill(sig)
        await defer.DeferredList(in_flight)
        daemon.start()
        await deferLater(reactor, 0.5, lambda: None)
        await until(lambda: client.connected, 60, "daemon back")
        return broker, daemon, client, acked, sent

    async def scenario(self):
        broker, daemon, client, acked, sent = await self.stopped_under_load(signal.SIGKILL)
        self.assertGreater(sent, len(acked))
        # every acknowledged deposit is known: repeating it is refused as a repeat
        repeats = [client.call(102, [n % 50 + 1, "BCH", "deposit", n, "1", {}], 10.0)
                   for n in acked]
        replies = await defer.gatherResults(repeats)
        self.assertEqual([r["error"] for r in replies if r["error"] != {
            "code": 10, "message": "repeat update"}], [])
        balances = await defer.gatherResults(
            [client.call(101, [u, "BCH"], 10.0) for u in range(1, 51)])
        total = sum(int(b["result"]["BCH"]["available"]) for b in balances)
        self.assertGreaterEqual(total, len(acked))
        self.assertLessEqual(total, sent)
        # each acknowledged deposit's history row and message were in the writer process's
        # pipe before its reply left: the writer of the killed daemon writes them; those
        # committed but not handed over before the kill are rebuilt from the log: each
        # deposit the balances hold has its history row, once
        await self.history_is(set(acked), total)
        messages = []
        consumer = KafkaConsumerService(broker.address, "balances",
                                        lambda offset, value: messages.append(value),
                                        offset="earliest", reactor=reactor)
        consumer.startService()
        self.addCleanup(consumer.stopService)
        await until(lambda: len(messages) >= total, 60, "a message per deposit made")
        daemon.kill(signal.SIGTERM)

    async def history_is(self, wanted, total):
        kw = testing.mysql_connect_kwargs("misc")
        db = mysql.connect_mysql(kw["host"], kw["port"], kw["user"], kw["password"],
                                 self.history_db, "utf8mb4")
        self.addCleanup(db.close)
        union = " UNION ALL ".join("SELECT `detail` FROM `balance_history_%d` WHERE "
                                   "`business` = 'deposit'" % user for user in range(1, 51))
        ids = []
        for _ in range(300):
            ids = [json.loads(detail)["id"] for (detail,) in await db.query(union)]
            if len(ids) >= total:
                break
            await deferLater(reactor, 0.2, lambda: None)
        found = set(ids)
        self.assertEqual(wanted - found, set(), "acknowledged deposits without history")
        self.assertEqual((len(ids), len(found)), (total, total),
                         "history rows, and deposits with one, against deposits made")

    async def clean_stop_scenario(self):
        _, daemon, client, acked, sent = await self.stopped_under_load(signal.SIGTERM)
        # what the log holds is exactly what was answered: a deposit is refused as a
        # repeat after the restart if and only if it was acknowledged before
        replies = await defer.gatherResults(
            [client.call(102, [n % 50 + 1, "BCH", "deposit", n, "1", {}], 10.0)
             for n in range(sent)])
        logged = {n for n, r in zip(range(sent), replies)
                  if r["error"] == {"code": 10, "message": "repeat update"}}
        self.assertEqual(logged, set(acked))
        daemon.kill(signal.SIGTERM)

    def test_clean_stop_under_load(self):
        """SIGTERM while 200 deposits are in flight: every write the daemon committed before
        it stopped was answered, and no answered one is missing after the restart."""
        return defer.Deferred.fromCoroutine(self.clean_stop_scenario())

    async def fence_scenario(self):
        import pymysql
        _, daemon, client, config = await self.started()

        def deposit(user, business_id, amount):
            return client.call(102, [user, "BCH", "deposit", business_id, amount, {}], 30.0)
        for n in range(1, 11):
            self.assertIsNone((await deposit(1, n, "1"))["error"])
        # another session locks the log past id 10: the next INSERT waits in MariaDB
        kw = testing.mysql_connect_kwargs("misc")
        locker = pymysql.connect(host=kw["host"], port=int(kw["port"]), user=kw["user"],
                                 password=kw["password"], database=config["db_log"]["name"])
        self.addCleanup(locker.close)
        cursor = locker.cursor()
        cursor.execute("SHOW TABLES LIKE 'operlog\\_2%%'")
        table = cursor.fetchone()[0]
        cursor.execute("SELECT `id` FROM `%s` WHERE `id` > 10 FOR UPDATE" % table)
        unanswered = deposit(1, 1001, "100")        # its INSERT waits; killed unanswered
        unanswered.addErrback(lambda failure: None)
        await deferLater(reactor, 1.0, lambda: None)
        daemon.kill()
        # the killed daemon's session still waits with its INSERT: the new daemon must not
        # read the log before that session ended, else its own id 11 would be ignored
        daemon.start()
        await deferLater(reactor, 2.0, lambda: None)
        locker.rollback()
        await until(lambda: client.connected, 60, "daemon back")
        self.assertIsNone((await deposit(2, 2002, "5"))["error"])
        before = [await client.call(101, [user, "BCH"], 10.0) for user in (1, 2)]
        daemon.kill(signal.SIGTERM)
        daemon.start()
        await deferLater(reactor, 0.5, lambda: None)
        await until(lambda: client.connected, 60, "daemon back again")
        after = [await client.call(101, [user, "BCH"], 10.0) for user in (1, 2)]
        self.assertEqual(after, before)
        self.assertEqual(after[1]["result"]["BCH"]["available"], "5")
        daemon.kill(signal.SIGTERM)

    async def stop_while_fenced_scenario(self):
        import pymysql
        import time
        _, daemon, client, config = await self.started()
        self.assertIsNone((await client.call(102, [1, "BCH", "deposit", 1, "7", {}],
                                             10.0))["error"])
        daemon.kill(signal.SIGTERM)
        # another matchengine's session holds the log's lock
        kw = testing.mysql_connect_kwargs("misc")
        locker = pymysql.connect(host=kw["host"], port=int(kw["port"]), user=kw["user"],
                                 password=kw["password"], autocommit=True)
        self.addCleanup(lambda: locker.open and locker.close())
        cursor = locker.cursor()
        cursor.execute("SELECT GET_LOCK(%s, 0)", ("viabtc.operlog." + config["db_log"]["name"],))
        self.assertEqual(cursor.fetchone()[0], 1)
        out = os.path.join(daemon.workdir, "out.log")
        daemon.start()
        await until(lambda: "waited 5 s for the lock" in open(out).read(), 30, "waiting")
        asked = time.monotonic()
        await threads.deferToThread(daemon.kill, signal.SIGTERM)
        self.assertLess(time.monotonic() - asked, 10)
        text = open(out).read()
        self.assertIn("matchengine stopped before it was ready", text)
        self.assertNotIn("could not start", text)
        # the lock free again: the log is read, and nothing is lost
        locker.close()
        daemon.start()
        await until(lambda: client.connected, 60, "daemon back")
        reply = await client.call(101, [1, "BCH"], 10.0)
        self.assertEqual(reply["result"]["BCH"]["available"], "7")
        daemon.kill(signal.SIGTERM)

    def test_stop_while_waiting_for_the_log(self):
        """SIGTERM while the daemon waits for the operation log's lock (another
        matchengine's session holds it) stops the daemon within a second or two, as
        stopped before it was ready, where it went on waiting until killed."""
        return defer.Deferred.fromCoroutine(self.stop_while_fenced_scenario())

    async def slice_scenario(self):
        import pymysql
        _, daemon, client, config = await self.started()
        for n in range(1, 21):
            reply = await client.call(102, [n, "BCH", "deposit", n, "1", {}], 10.0)
            self.assertIsNone(reply["error"])
        kw = testing.mysql_connect_kwargs("misc")
        locker = pymysql.connect(host=kw["host"], port=int(kw["port"]), user=kw["user"],
                                 password=kw["password"], database=config["db_log"]["name"],
                                 autocommit=True)
        self.addCleanup(locker.close)
        cursor = locker.cursor()
        cli_port = int(config["cli"].rsplit(":", 1)[1])

        async def slice_waiting():
            """A slice asked for, its child waiting for slice_history (locked)."""
            cursor.execute("LOCK TABLES `slice_history` WRITE")
            answer = await threads.deferToThread(cli_line, cli_port, b"makeslice\n")
            self.assertEqual(answer, b"OK\n")

            def waits():
                cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                               "WHERE `INFO` LIKE 'INSERT INTO `slice_history`%%'")
                return cursor.fetchone()[0] == 1
            await until(waits, 30, "the slice child waiting")

        def slices():
            cursor.execute("SELECT COUNT(*) FROM `slice_history`")
            return cursor.fetchone()[0]

        # SIGTERM: the daemon waits for the slice under way, which then ends written
        await slice_waiting()
        daemon.proc.send_signal(signal.SIGTERM)
        log = os.path.join(daemon.workdir, "out.log")
        await until(lambda: b"waiting for the slice under way" in open(log, "rb").read(), 30,
                    "the stop waiting for the slice")
        cursor.execute("UNLOCK TABLES")
        await threads.deferToThread(daemon.proc.wait, 30)
        self.assertEqual(slices(), 1)
        # kill -9: the slice child dies with the daemon, and commits nothing later
        daemon.start()
        await deferLater(reactor, 0.5, lambda: None)
        await until(lambda: client.connected, 60, "daemon back")
        await slice_waiting()
        daemon.kill()
        cursor.execute("UNLOCK TABLES")
        await deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(slices(), 1)
        daemon.start()
        await deferLater(reactor, 0.5, lambda: None)
        await until(lambda: client.connected, 60, "daemon back again")
        reply = await client.call(101, [20, "BCH"], 10.0)
        self.assertEqual(reply["result"]["BCH"]["available"], "1")
        daemon.kill(signal.SIGTERM)

    def test_stop_and_kill_while_a_slice_is_written(self):
        """SIGTERM while a slice is written waits for it; kill -9 takes the slice's child
        with the daemon (an orphan went on writing, committed its slice_history row after
        the restarted daemon had dropped its tables as unfinished, and the next start
        failed)."""
        return defer.Deferred.fromCoroutine(self.slice_scenario())

    async def daemonized_scenario(self):
        broker = testing.KafkaBroker().start()
        self.addCleanup(broker.stop)
        port = testing.free_port()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(workdir, "log"))
        path, pidfile = os.path.join(workdir, "config.json"), os.path.join(workdir, "me.pid")
        with open(path, "w") as f:
            json.dump(self.config(port, broker.address), f)
        # twistd without -n: the process started forks the daemon and exits
        started = await threads.deferToThread(
            subprocess.run, [sys.executable, "-c", RUN_TWISTD, "--pidfile", pidfile,
                             "--logfile", os.path.join(workdir, "twistd.log"), "matchengine",
                             "--config", path],
            cwd=workdir, env=dict(os.environ, PYTHONPATH=testing.ROOT), capture_output=True,
            timeout=60)
        self.assertEqual(started.returncode, 0, started.stderr)
        await until(lambda: os.path.exists(pidfile), 30, "the pid file")
        pid = int(open(pidfile).read())
        self.addCleanup(lambda: testing.ended(pid) or os.kill(pid, signal.SIGKILL))
        client = RPCClient(reactor, "matchengine", ["tcp@127.0.0.1:%d" % port], 1 << 20,
                           reconnect_timeout=0.2)
        client.start()
        self.addCleanup(client.stop)
        await until(lambda: client.connected, 60, "daemon up")
        for n in range(1, 4):
            reply = await client.call(102, [n, "BCH", "deposit", n, "1", {}], 10.0)
            self.assertIsNone(reply["error"])
        await self.history_is({1, 2, 3}, 3)
        os.kill(pid, signal.SIGTERM)
        await until(lambda: testing.ended(pid), 60, "the daemon stopped")
        log = open(os.path.join(workdir, "log", "matchengine.log")).read()
        self.assertNotIn("writer process ended", log)

    def test_daemonized(self):
        """Started as twistd starts it by default (daemonized: forked after the service was
        made), the daemon's writer writes the history: it takes the daemon for its parent
        (it took the process that had forked it for the daemon, ended, and never wrote)."""
        return defer.Deferred.fromCoroutine(self.daemonized_scenario())

    def test_killed_daemons_statement_fenced(self):
        """A killed daemon's INSERT still under way in MariaDB ends before its successor
        reads the log (the log's named lock): the successor's acknowledged writes are
        never dropped as duplicates of the killed one's."""
        return defer.Deferred.fromCoroutine(self.fence_scenario())

    def test_kill_under_load(self):
        """SIGKILL while 200 deposits are in flight; after restart all acknowledged ones
        are there (a repeat is refused), the balances hold at least their sum, and each
        deposit they hold has its history row, once, and its message."""
        return defer.Deferred.fromCoroutine(self.scenario())
