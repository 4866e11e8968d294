# -*- test-case-name: alertcenter.test.test_server -*-
"""alertcenter with a real Redis: alerts over TCP and UDP land in alert:message."""

import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from alertcenter import config, server
from alertcenter.server import KEY, AlertCenter, _LineProtocol, parse_line
from utils import redisdb, testing
from utils.alert import AlertSender, MAGIC
from utils.testing import until

# a Redis database each test of its own: tests run in parallel (trial -j)
REDIS_DBS = {"scenario": 5, "stop_scenario": 12, "long_scenario": 13, "away_scenario": 1,
             "bytes_scenario": 2}


def closed(sock):
    """Whether the peer closed the non-blocking socket `sock` (what it sent is read)."""
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False


def center_config(*kinds, port=None, max_pkg_size=10240):
    """(port, config) of an alertcenter binding `kinds` ("tcp", "udp") on one port (a free
    one by default)."""
    port = port or testing.free_port()
    return port, config.load_data({
        "log": {"path": "log/alertcenter", "flag": "fatal"},
        "svr": {"bind": ["%s@127.0.0.1:%d" % (kind, port) for kind in kinds],
                "max_pkg_size": max_pkg_size},
        "redis": {"name": "unused", "addr": ["127.0.0.1:1"]}})


class ParseTests(SynchronousTestCase):

    def test_lines(self):
        """The magic is required and stripped, with the line end."""
        self.assertEqual(parse_line(MAGIC + b"me: [fatal]x: boom\r\n"), b"me: [fatal]x: boom")
        self.assertEqual(parse_line(MAGIC + b"me: \xff\x00\n"), b"me: \xff\x00")
        self.assertIsNone(parse_line(MAGIC[:-1] + b"\n"))     # 20 bytes: too short
        self.assertIsNone(parse_line(b"x" * 20 + b"me: boom\n"))


class CenterTests(TestCase):

    timeout = 60

    async def alert_list(self, db):
        """The test Redis's address and a connection to it, `alert:message` emptied now and
        at the end."""
        info = testing.require("redis")
        conn = await redisdb.Plain(info["host"], info["port"], db=db).connect()
        self.addCleanup(conn.disconnect)
        await conn.delete(KEY)
        self.addCleanup(conn.delete, KEY)
        return info, conn

    async def started(self, cfg, store, **kw):
        """An AlertCenter of `cfg` over `store`, started, stopped at the test's end."""
        center = AlertCenter(cfg, store, reactor=reactor, **kw)
        await center.startService()
        self.addCleanup(center.stopService)
        return center

    def udp(self):
        """A UDP socket, closed at the test's end."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        return sock

    def sender(self, port):
        """A module's alert sender to alertcenter's `port`, closed at the test's end."""
        sender = AlertSender(reactor, "matchengine", "127.0.0.1:%d" % port)
        self.addCleanup(sender.close)
        return sender

    async def scenario(self):
        db = REDIS_DBS["scenario"]
        info, conn = await self.alert_list(db)
        proxy = testing.CuttableProxy(int(info["port"])).up()
        self.addCleanup(proxy.down)
        port, cfg = center_config("tcp", "udp")
        store = redisdb.Plain("127.0.0.1", proxy.port, db=db, timeout=1)
        center = await self.started(cfg, store, retry_delay=0.1)
        # a module's alert sender, over UDP
        sender = self.sender(port)
        sender.send("[fatal]me_server: service unavailable")
        await until(lambda: center.pushed == 1, 10, "UDP alert pushed")
        # TCP: two lines in one write, then a bad one closes the connection
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(MAGIC + b"readhistory: a\n" + MAGIC + b"readhistory: b\r\n")
        await until(lambda: center.pushed == 3, 10, "TCP alerts pushed")
        s.sendall(b"garbage without magic\n")
        s.setblocking(False)
        await until(lambda: closed(s), 5, "bad line closes")
        s.close()
        # Redis away: alerts wait, then arrive in order; the outage told in two lines, not
        # one for each retry (every 0.1 s)
        with capturedLogs() as events:
            await proxy.down()
            sender.send("[fatal]while down 1")
            sender.send("[fatal]while down 2")
            await until(lambda: len(center.queue) == 2, 10, "alerts waiting")
            await deferLater(reactor, 0.5, lambda: None)
            proxy.up()
            await until(lambda: center.pushed == 5, 10, "waiting alerts pushed")
        told = [(e["log_level"], formatEvent(e)) for e in events
                if e.get("log_namespace", "").startswith("alertcenter.server")
                and "[fatal]" not in formatEvent(e)]
        self.assertEqual([level for level, _ in told], [LogLevel.error, LogLevel.warn], told)
        self.assertRegex(told[1][1], r"^alertcenter: working again after [0-9.]+ s, "
                                     r"[0-9]+ failed attempts$")
        self.assertEqual(await conn.lrange(KEY, 0, -1), [
            "matchengine: [fatal]me_server: service unavailable", "readhistory: a",
            "readhistory: b", "matchengine: [fatal]while down 1",
            "matchengine: [fatal]while down 2"])
        self.flushLoggedErrors()

    async def bytes_scenario(self):
        db = REDIS_DBS["bytes_scenario"]
        info, conn = await self.alert_list(db)
        port, cfg = center_config("udp")
        center = await self.started(cfg, redisdb.Plain(info["host"], info["port"], db=db))
        self.udp().sendto(MAGIC + b"host: \xff\xfe latin \xe9, nul \x00 kept\r\n",
                          ("127.0.0.1", port))
        await until(lambda: center.pushed == 1, 10, "the alert pushed")
        self.assertEqual(await conn.lrange(KEY, 0, -1),
                         [b"host: \xff\xfe latin \xe9, nul \x00 kept"])

    def test_bytes_kept(self):
        """An alert goes to Redis byte for byte: bytes that are not UTF-8, and a NUL."""
        return defer.Deferred.fromCoroutine(self.bytes_scenario())

    def test_alerts_to_redis(self):
        """UDP and TCP alerts are pushed in order; bad lines close; a Redis outage waits."""
        return defer.Deferred.fromCoroutine(self.scenario())

    async def stop_scenario(self):
        db = REDIS_DBS["stop_scenario"]
        info, conn = await self.alert_list(db)
        port, cfg = center_config("udp")
        store = redisdb.Plain(info["host"], info["port"], db=db, timeout=1)
        center = AlertCenter(cfg, store, reactor=reactor)
        await center.startService()
        center.queue.extend([b"host: held 1", b"host: held 2"])   # not yet pushed
        await center.stopService()
        self.assertEqual(await conn.lrange(KEY, 0, -1), ["host: held 1", "host: held 2"])

    def test_stop_flushes(self):
        """Alerts still waiting when the service stops are pushed before it ends."""
        return defer.Deferred.fromCoroutine(self.stop_scenario())

    async def away_scenario(self):
        db = REDIS_DBS["away_scenario"]
        info, conn = await self.alert_list(db)
        proxy = testing.CuttableProxy(int(info["port"]))        # not up yet: Redis away
        self.addCleanup(proxy.down)
        port, cfg = center_config("udp")
        store = redisdb.Plain("127.0.0.1", proxy.port, db=db, timeout=1)
        gave_up = []
        self.patch(server, "give_up", lambda *args: gave_up.append(args))
        center = await self.started(cfg, store, retry_delay=0.1)
        sender = self.sender(port)
        sender.send("[fatal]before redis")
        await until(lambda: len(center.queue) == 1, 10, "alert waiting")
        proxy.up()
        await until(lambda: center.pushed == 1, 10, "alert pushed")
        self.assertEqual(await conn.lrange(KEY, 0, -1), ["matchengine: [fatal]before redis"])
        self.assertEqual(gave_up, [])

    def test_redis_away_at_start(self):
        """A Redis that cannot be reached at start is not waited for: alertcenter listens,
        and the alerts wait until it answers."""
        return defer.Deferred.fromCoroutine(self.away_scenario())

    async def refused_later_scenario(self):
        info = testing.require("redis")
        proxy = testing.CuttableProxy(int(info["port"]))        # not up yet: Redis away
        self.addCleanup(proxy.down)
        gave_up = []
        self.patch(server, "give_up", lambda reactor, log, what, failure=None: gave_up.append(
            (what, (failure or Failure()).getErrorMessage())))
        port, cfg = center_config("udp")
        store = redisdb.Plain("127.0.0.1", proxy.port, db=10000, timeout=1)
        center = await self.started(cfg, store, retry_delay=0.1)
        self.assertEqual(gave_up, [])
        sender = self.sender(port)
        sender.send("[fatal]before redis")
        await until(lambda: len(center.queue) == 1, 10, "alert waiting")
        proxy.up()
        await until(lambda: gave_up, 10, "alertcenter giving up")
        self.assertEqual(gave_up, [(
            "alertcenter cannot push alerts", "redis.db: database 10000 refused by redis "
            "127.0.0.1:%d: ERR DB index is out of range" % proxy.port)])

    def test_database_refused_when_redis_answers(self):
        """Redis away at start, a database number it refuses once it answers stops
        alertcenter as at start, naming `redis.db`: the alerts would wait for ever."""
        return defer.Deferred.fromCoroutine(self.refused_later_scenario())

    async def long_scenario(self):
        db = REDIS_DBS["long_scenario"]
        info, conn = await self.alert_list(db)
        port, cfg = center_config("tcp", "udp")
        store = redisdb.Plain(info["host"], info["port"], db=db, timeout=1)
        center = await self.started(cfg, store)
        # a datagram of 10,000 bytes is read whole (past Twisted's 8,192 by default)
        udp = self.udp()
        udp.sendto(MAGIC + b"h: " + b"u" * 9900 + b"\n", ("127.0.0.1", port))
        await until(lambda: center.pushed == 1, 10, "long datagram pushed")
        # a TCP line over max_pkg_size is refused even when its newline comes with it
        s = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(s.close)
        s.sendall(MAGIC + b"h: " + b"t" * 10300 + b"\n" + MAGIC + b"h: after\n")
        s.setblocking(False)
        await until(lambda: closed(s), 5, "a line too long closes")
        self.assertEqual(await conn.lrange(KEY, 0, -1), ["h: " + "u" * 9900])
        self.flushLoggedErrors()

    def test_long_lines(self):
        """A datagram is read up to max_pkg_size; a TCP line longer than that closes the
        connection, as the original's read buffer does, whether or not its end came."""
        return defer.Deferred.fromCoroutine(self.long_scenario())

    async def small_scenario(self):
        port, cfg = center_config("udp", max_pkg_size=100)
        store = redisdb.MemoryRedis()
        center = await self.started(cfg, store)
        udp = self.udp()
        udp.sendto(MAGIC + b"h: " + b"u" * 200 + b"\n", ("127.0.0.1", port))
        await until(lambda: center.pushed == 1, 10, "datagram pushed")
        # cut at 100 bytes: the magic and 80 bytes of text, without its newline
        self.assertEqual(await store.lrange(KEY, 0, -1), ["h: " + "u" * 77])

    def test_small_max_pkg_size(self):
        """A datagram is read up to a max_pkg_size below 10,240 too."""
        return defer.Deferred.fromCoroutine(self.small_scenario())


class DaemonStartTests(SynchronousTestCase):

    def test_database_refused(self):
        """`redis.db` past the databases of the Redis master (10000; it has 16) stops
        `twistd alertcenter` at start with exit status 1 and one line on stderr naming the
        key; it used to run, every alert waiting for ever."""
        sentinel = testing.require("sentinel")
        redis = testing.require("redis")
        port = testing.free_port()
        center = testing.DaemonProcess("alertcenter", testing.base_config(
            "alertcenter", svr={"bind": ["tcp@127.0.0.1:%d" % port, "udp@127.0.0.1:%d" % port],
                                "max_pkg_size": 10240},
            redis={"name": sentinel["name"], "addr": sentinel["addr"], "db": 10000}),
            os.path.abspath(self.mktemp()))
        center.start()
        self.addCleanup(center.stop)
        self.assertEqual(center.wait_exit(30), 1, "\n".join(center.output()[-20:]))
        self.assertIn("alertcenter could not start: redis.db: database 10000 refused by "
                      "redis master %r at %s:%d: ERR DB index is out of range"
                      % (sentinel["name"], redis["host"], int(redis["port"])),
                      center.output())


class LineSizeTests(SynchronousTestCase):
    """Over TCP a line of up to svr.max_pkg_size bytes, its newline included, is taken."""

    def connect(self, max_pkg_size):
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        _, cfg = center_config("tcp", port=1, max_pkg_size=max_pkg_size)
        store = redisdb.MemoryRedis()
        center = AlertCenter(cfg, store, reactor=Clock())
        line = _LineProtocol(center)
        line.makeConnection(StringTransport())
        return line, store

    def line(self, size):
        """An alert line of `size` bytes, its newline included."""
        return MAGIC + b"h: " + b"x" * (size - len(MAGIC) - 4) + b"\n"

    def test_line_of_max_pkg_size(self):
        """A line of max_pkg_size bytes is taken, however small the setting."""
        line, store = self.connect(100)
        line.dataReceived(self.line(100) + self.line(50))
        self.assertFalse(line.transport.disconnecting)
        self.assertEqual(self.successResultOf(store.llen(KEY)), 2)

    def test_longer_line(self):
        """A line one byte over max_pkg_size closes the connection, and so does one of
        5,025 bytes with a max_pkg_size of 100: none is pushed."""
        for size in (101, 5025):
            line, store = self.connect(100)
            line.dataReceived(self.line(size))
            self.assertTrue(line.transport.disconnecting)
            self.assertEqual(self.successResultOf(store.llen(KEY)), 0)

    def test_full_buffer(self):
        """max_pkg_size bytes without a newline fill the original's read buffer: the
        connection is closed without waiting for more."""
        line, store = self.connect(100)
        line.dataReceived(self.line(101)[:99])
        self.assertFalse(line.transport.disconnecting)
        line.dataReceived(b"x")
        self.assertTrue(line.transport.disconnecting)


class TapTests(SynchronousTestCase):

    def test_log_lines_without_pid(self):
        """alertcenter's log lines, in its file and on stderr, carry no pid, as the
        original's, whatever `log.pid` says (alertcenter reads log.path and log.flag only)."""
        import glob
        import io
        import json
        import os
        import sys

        from twisted.internet.task import Clock
        from twisted.logger import Logger

        from alertcenter import tap
        log_path = os.path.abspath(self.mktemp())
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"log": {"path": log_path, "flag": "info", "pid": True},
                       "svr": {"bind": ["udp@127.0.0.1:1"], "max_pkg_size": 10240},
                       "redis": {"name": "unused", "addr": ["127.0.0.1:1"]}}, f)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        options = tap.Options()
        options.parseOptions(["--config", path, "--stderr"])
        top = tap.makeService(options, reactor=Clock())
        self.addCleanup(top.log_setup.remove)
        top.log_setup.file_observer.start()
        Logger(namespace="alertcenter", observer=top.log_setup.publisher).info("a line")
        top.log_setup.flush()
        [name] = glob.glob(log_path + "*")
        with open(name) as f:
            lines = f.read().splitlines()
        # [time] [level]source: message
        line = r"^\[[-0-9 :.]+\] \[info\]alertcenter: a line$"
        self.assertRegex(lines[-1], line)
        self.assertRegex(err.getvalue().splitlines()[-1], line)


class QueueTests(SynchronousTestCase):

    def test_full_queue_keeps_the_alert_being_pushed(self):
        """With the queue full, an alert arriving while another is being pushed drops the
        oldest waiting one, and every other is pushed once, in order."""
        from twisted.internet.task import Clock
        pushes = []

        class Conn:
            def rpush(self, key, text):
                pushes.append((text, defer.Deferred()))
                return pushes[-1][1]

            def disconnect(self):
                """Nothing to close."""

        class Store:
            def connect(self):
                return defer.succeed(Conn())

        _, cfg = center_config("udp", port=1)
        center = AlertCenter(cfg, Store(), reactor=Clock(), queue_limit=3)
        for text in (b"a1", b"a2", b"a3", b"a4", b"a5"):
            center.received(text)
        # a1 in flight; a2 dropped for a5 (the queue holds three waiting)
        self.assertEqual([text for text, _ in pushes], [b"a1"])
        while len(pushes) < 5 and pushes[-1][1].called is False:
            pushes[-1][1].callback(1)
        self.assertEqual([text for text, _ in pushes], [b"a1", b"a3", b"a4", b"a5"])
        self.assertEqual(center.pushed, 4)
        self.flushLoggedErrors()
