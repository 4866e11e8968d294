# -*- test-case-name: alertcenter.test.test_server -*-
"""alertcenter: alert lines from every module, kept in the Redis list `alert:message`.

An alert is one line: the 20-byte magic, `<host>: <message>`, a newline; over TCP a stream
of lines, over UDP one line per datagram (a datagram without its newline is taken whole).
Lines and datagrams are read up to `svr.max_pkg_size` bytes: a longer line closes its TCP
connection, a longer datagram is cut there.
A line that is too short or lacks the magic closes the TCP connection or drops the datagram.
Each alert is logged and appended with RPUSH to `alert:message` on the Redis master found
through the sentinels.  While Redis cannot be reached alerts wait in memory (at most
`queue_limit`, the oldest dropped first) and are pushed, in order, once it is back.

A database number the server refuses (`redis.db` past the databases it has) would keep every
alert waiting for ever: Redis is tried once at start, and that refusal stops alertcenter as
a config error, then or, Redis away at start, when it first answers.
"""

import collections

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from network.address import buffer_sizes, listen, listen_udp, parse_address
from utils.alert import MAGIC
from utils.config import ConfigError
from utils.daemon import give_up, mark_ready
from utils.redisdb import ConfigChecked
from utils.outage import Outage, on_log

__all__ = ["AlertCenter", "KEY", "parse_line"]

KEY = "alert:message"


def parse_line(line: bytes):
    """The alert of a line (newline included), as bytes: it goes to Redis byte for byte;
    None when the line is not an alert."""
    if len(line) <= len(MAGIC) or not line.startswith(MAGIC):
        return None
    alert = line[len(MAGIC):]
    if alert.endswith(b"\n"):
        alert = alert[:-1]
    if alert.endswith(b"\r"):
        alert = alert[:-1]
    return alert


def shown(alert: bytes) -> str:
    """An alert as the log shows it: bytes that are not UTF-8 as escapes."""
    return alert.decode("utf-8", "backslashreplace")


class _LineProtocol(protocol.Protocol):
    def __init__(self, center):
        self.center = center
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n")
            # the original reads into a buffer of max_pkg_size: a line longer than that (a
            # full buffer without its newline) never fits
            if (end + 1 if end >= 0 else len(self.buffer) + 1) > self.center.max_size:
                self.center.log.warn("alertcenter: line over {size} bytes; closing",
                                     size=self.center.max_size)
                self.buffer = b""
                self.transport.loseConnection()
                return
            if end < 0:
                return
            line, self.buffer = self.buffer[:end + 1], self.buffer[end + 1:]
            alert = parse_line(line)
            if alert is None:
                self.center.log.warn("alertcenter: not an alert line; closing {peer}",
                                     peer=self.transport.getPeer())
                self.transport.loseConnection()
                return
            self.center.received(alert)


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, center):
        self.center = center

    def datagramReceived(self, data, addr):
        line = data.split(b"\n", 1)[0] + b"\n"
        alert = parse_line(line)
        if alert is None:
            self.center.log.warn("alertcenter: dropping a datagram from {addr}: not an alert",
                                 addr=addr)
            return
        self.center.received(alert)


class AlertCenter(service.Service):
    log = Logger()

    def __init__(self, cfg, store, reactor=None, queue_limit=100000, retry_delay=1.0):
        if reactor is None:
            from twisted.internet import reactor
        self.cfg = cfg
        self.store = store
        self.reactor = reactor
        self.max_size = cfg["svr"]["max_pkg_size"]
        self.queue = collections.deque(maxlen=queue_limit)
        self.retry_delay = retry_delay
        self.pushed = 0
        self.pushing = False
        self.ports = []
        self.redis = ConfigChecked(self.store)
        # Redis away told in few lines (`utils.outage`), never as an alert: this is the
        # daemon alerts go through
        self.outage = Outage("alertcenter", on_log(self.log), alert_after=None,
                             clock=self.reactor.seconds)

    def startService(self):
        service.Service.startService(self)
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self):
        if not await self._listen():
            return
        # a Redis that cannot be reached is not waited for: alerts wait until it answers
        try:
            (await self.redis.connect()).disconnect()
        except ConfigError:
            give_up(self.reactor, self.log, "alertcenter could not start")
            return
        except Exception as e:
            self.log.warn("alertcenter: {store} unavailable ({error}); alerts wait until it "
                          "answers", store=self.store.describe(), error=e)
        self.log.info("alertcenter ready on {bind}", bind=", ".join(self.cfg["svr"]["bind"]))
        mark_ready()

    async def _listen(self):
        """Whether every address of `svr.bind` is listened on (else the daemon gives up)."""
        factory = protocol.Factory.forProtocol(lambda: _LineProtocol(self))
        try:
            buffers = buffer_sizes(self.cfg["svr"])
            for address in self.cfg["svr"]["bind"]:
                addr = parse_address(address)
                if addr.is_stream:
                    self.ports.append(await listen(self.reactor, addr, factory, **buffers))
                else:
                    self.ports.append(listen_udp(self.reactor, addr, _Datagrams(self),
                                                 max_size=self.max_size, **buffers))
        except Exception:
            give_up(self.reactor, self.log, "alertcenter could not listen")
            return False
        return True

    def stopService(self):
        service.Service.stopService(self)
        d = defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])
        d.addCallback(lambda _: defer.Deferred.fromCoroutine(self._flush()))
        return d

    async def _flush(self):
        """At stop: one last try to push what waits; what cannot be pushed is logged."""
        if not self.queue or self.pushing:
            # a running push loop keeps its connection; give it a moment to finish
            for _ in range(30):
                if not self.queue:
                    return
                await self._sleep(0.1)
        try:
            conn = await self.store.connect()
            try:
                await self._push_waiting(conn)
            finally:
                conn.disconnect()
        except Exception as e:
            for alert in self.queue:
                self.log.error("alertcenter: stopping without pushing ({error}): {alert}",
                               error=e, alert=shown(alert))

    def received(self, alert: bytes):
        self.log.info("{alert}", alert=shown(alert))
        if len(self.queue) == self.queue.maxlen:
            self.log.error("alertcenter: {count} alerts waiting for Redis; dropping the oldest",
                           count=len(self.queue))
        self.queue.append(alert)
        if not self.pushing:
            defer.Deferred.fromCoroutine(self._push())

    async def _push(self):
        self.pushing = True
        try:
            while self.queue:
                try:
                    conn = await self.redis.connect()
                except ConfigError:
                    give_up(self.reactor, self.log, "alertcenter cannot push alerts")
                    return
                except Exception as e:
                    self.outage.failed("%s unavailable (%s); %d alerts wait"
                                       % (self.store.describe(), e, len(self.queue)))
                    await self._sleep(self.retry_delay)
                    continue
                try:
                    await self._push_waiting(conn)
                    self.outage.succeeded()
                except Exception as e:
                    self.outage.failed("RPUSH failed (%s); retrying" % (e,))
                    await self._sleep(self.retry_delay)
                finally:
                    conn.disconnect()
        finally:
            self.pushing = False

    async def _push_waiting(self, conn):
        """RPUSH the waiting alerts in order.  The one being pushed is out of the queue, so
        that a full queue taking a new alert meanwhile drops the oldest waiting one, not it;
        when its push fails it goes back to the front (unless the queue has filled up)."""
        while self.queue:
            alert = self.queue.popleft()
            try:
                await conn.rpush(KEY, alert)
            except Exception:
                if len(self.queue) < self.queue.maxlen:
                    self.queue.appendleft(alert)
                else:
                    self.log.error("alertcenter: {count} alerts waiting for Redis; dropping "
                                   "the oldest", count=len(self.queue) + 1)
                raise
            self.pushed += 1

    def _sleep(self, seconds):
        d = defer.Deferred()
        self.reactor.callLater(seconds, d.callback, None)
        return d
