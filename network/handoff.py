# -*- test-case-name: network.test.test_handoff -*-
"""The listener and its workers: one public socket, connections served by several processes.

With `worker_num` above 1, accesshttp and accessws run as the original does: a listener
process binds the public addresses and accepts every connection, and hands its descriptor to
one of `worker_num` worker processes (the next live one, in turn) over a UNIX seqpacket
socket, one descriptor per message (SCM_RIGHTS).  Each worker adopts what it receives and
serves it with its own backend connections, pollers and subscriptions, so the work of many
connections spreads over the cores.

- `bind_socket(address)` opens a listening socket for a tcp@ or stream@ address.
- `Acceptor` accepts on such a socket inside the reactor and passes each connection on.
- `WorkerPool` (listener side) starts the workers, each with its end of a socketpair as fd 3,
  starts again one that dies, and stops them all (SIGTERM, then SIGKILL) when it stops.
  A worker is given connections only once it has said it is ready (one byte on its channel):
  until its reactor runs, SIGTERM would kill it outright and the descriptors waiting in its
  channel would be lost, their connections reset.
- `Adopter` (worker side) says it is ready once its reactor runs, reads fd 3 and gives every
  descriptor to a protocol factory; when the listener goes away the channel ends and the
  worker stops.
"""

import contextlib
import os
import socket
import struct

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from network.address import (BACKLOG, AddressError, listen_monitor, parse_address, set_buffers,
                             set_no_delay, unlink_stale)

__all__ = ["bind_socket", "Acceptor", "WorkerPool", "Adopter", "Listener", "WORKER_FD"]

WORKER_FD = 3                   # the worker's end of its channel
FAMILY = struct.Struct("<i")    # what goes with each descriptor: its address family
ACCEPTS_PER_READ = 256
READY = b"R"                    # a worker's one message on its channel: it is running
RESTART_DELAY = 1.0             # before a worker that died is started again
STOP_TIMEOUT = 10.0             # SIGTERM, then SIGKILL after this long

log = Logger()


def bind_socket(address, read_mem=0, write_mem=0) -> socket.socket:
    """A non-blocking socket listening on a tcp@ or stream@ address (OSError if it cannot);
    the connections it accepts get `read_mem`/`write_mem` buffers (0: the system's) and,
    over TCP, send without delay."""
    addr = parse_address(address)
    if addr.kind == "tcp":
        family = socket.AF_INET6 if addr.is_ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        where = (addr.host, addr.port)
    elif addr.kind == "stream":
        unlink_stale(addr.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        where = addr.path
    else:
        raise AddressError("cannot listen for streams on %r" % str(addr))
    try:
        set_buffers(sock, read_mem, write_mem)
        if addr.kind == "tcp":
            set_no_delay(sock)
        sock.bind(where)
        if addr.kind == "stream":
            os.chmod(addr.path, 0o777)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        # named: of several binds, the one that failed
        raise OSError(e.errno, "cannot listen on %s: %s" % (addr, e.strerror)) from None
    return sock


class _SocketReader:
    """What the reactor asks of a reader of `self.socket` besides doRead."""

    name = "socket"

    def fileno(self):
        return self.socket.fileno()

    def logPrefix(self):
        return self.name

    def connectionLost(self, reason):
        self.socket.close()


class Acceptor(_SocketReader):
    """Accepts on a listening socket and calls `dispatch(connection)` for each connection.

    The connection is closed here once `dispatch` returns True: the worker that was given it
    holds its own copy.  When `dispatch` returns False (every worker's channel is full, or
    none is ready) the connection is kept and accepting pauses, leaving newer connections
    in the kernel's backlog; it is offered again every RETRY_INTERVAL until taken.
    """

    RETRY_INTERVAL = 0.01
    name = "Acceptor"

    def __init__(self, reactor, sock, dispatch):
        self.reactor = reactor
        self.socket = sock
        self.dispatch = dispatch
        self.address = sock.getsockname()
        self.waiting = None
        self._retry = None

    def start(self):
        self.reactor.addReader(self)

    def stop(self):
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.waiting is not None:
            self.waiting.close()
            self.waiting = None
        else:
            self.reactor.removeReader(self)
        self.socket.close()

    def doRead(self):
        for _ in range(ACCEPTS_PER_READ):
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                # out of descriptors or memory: the connection waits in the backlog
                log.error("accept on {address} failed: {error}", address=self.address, error=e)
                return
            if not self._offer(conn):
                log.warn("accept on {address} paused: no worker can take a connection now",
                         address=self.address)
                self.reactor.removeReader(self)
                self.waiting = conn
                self._retry = self.reactor.callLater(self.RETRY_INTERVAL, self._offer_again)
                return

    def _offer(self, conn):
        if not self.dispatch(conn):
            return False
        conn.close()
        return True

    def _offer_again(self):
        if self._offer(self.waiting):
            self.waiting = self._retry = None
            log.info("accept on {address} resumed", address=self.address)
            self.reactor.addReader(self)
        else:
            self._retry = self.reactor.callLater(self.RETRY_INTERVAL, self._offer_again)


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, pool, index):
        self.pool = pool
        self.index = index

    def processEnded(self, reason):
        self.pool._ended(self.index, reason.value)


class _ReadyReader(_SocketReader):
    """Reads the listener's end of a worker's channel for the worker's READY."""

    def __init__(self, pool, index, sock):
        self.pool = pool
        self.index = index
        self.socket = sock
        self.name = "%s %d" % (pool.name, index)

    def doRead(self):
        while True:
            try:
                data = self.socket.recv(16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                # the worker has gone: its process's end cleans up
                self.pool.reactor.removeReader(self)
                return
            if READY in data:
                self.pool._ready(self.index)

    def connectionLost(self, reason):
        # the channel is the pool's to close
        self.pool.reactor.removeReader(self)


class WorkerPool(service.Service):
    """Runs `count` workers, `command(index)` each, and hands connections to them in turn.

    A worker gets its end of a seqpacket socketpair as `WORKER_FD`; its stdout and stderr are
    the listener's.  It is given connections once it has sent READY on that channel.  One
    that exits while the pool runs is started again after RESTART_DELAY, and is given
    connections again once it says it is ready.
    """

    def __init__(self, reactor, command, count, name="worker", env=None):
        self.reactor = reactor
        self.command = command
        self.count = count
        self.env = os.environ if env is None else env     # the workers' environment
        self.name = name
        self.channels = {}       # index -> the listener's end of its socketpair
        self.readers = {}        # index -> the reader of READY on that channel
        self.ready = set()       # the indexes of the workers that said they are ready
        self._ready_waits = []   # Deferreds fired when a worker is ready
        self.processes = {}      # index -> IProcessTransport of the running worker
        self._next = 0
        self._restarts = {}
        self._stopped = {}       # index -> Deferred fired when a stopping worker ends

    def startService(self):
        service.Service.startService(self)
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index):
        self._restarts.pop(index, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            argv = self.command(index)
            self.processes[index] = self.reactor.spawnProcess(
                _WorkerProcess(self, index), argv[0], argv, env=self.env,
                childFDs={0: "w", 1: 1, 2: 2, WORKER_FD: theirs.fileno()})
        except Exception:
            ours.close()
            log.failure("{name} {index}: cannot start", name=self.name, index=index)
            if self.running:
                self._restarts[index] = self.reactor.callLater(RESTART_DELAY, self._spawn,
                                                               index)
            return
        finally:
            theirs.close()
        self.channels[index] = ours
        self.readers[index] = _ReadyReader(self, index, ours)
        self.reactor.addReader(self.readers[index])
        log.info("{name} {index} started (pid {pid})", name=self.name, index=index,
                 pid=self.processes[index].pid)

    def _ready(self, index):
        if index in self.ready or index not in self.channels:
            return
        self.ready.add(index)
        log.info("{name} {index} ready", name=self.name, index=index)
        waits, self._ready_waits = self._ready_waits, []
        for waiting in waits:
            waiting.callback(None)

    def when_ready(self) -> defer.Deferred:
        """A Deferred fired once at least one worker is ready to take connections."""
        if self.ready:
            return defer.succeed(None)
        waiting = defer.Deferred()
        self._ready_waits.append(waiting)
        return waiting

    def _ended(self, index, reason):
        self.processes.pop(index, None)
        self.ready.discard(index)
        reader = self.readers.pop(index, None)
        if reader is not None:
            self.reactor.removeReader(reader)
        channel = self.channels.pop(index, None)
        if channel is not None:
            channel.close()
        waiting = self._stopped.pop(index, None)
        if waiting is not None:
            waiting.callback(None)
            return
        # fatal, so that it alerts, as the original's keepalive parent logs a dead worker
        log.critical("{name} {index} ended: {reason}", name=self.name, index=index,
                     reason=reason)
        if self.running:
            self._restarts[index] = self.reactor.callLater(RESTART_DELAY, self._spawn, index)

    @property
    def live(self) -> int:
        """How many workers can take connections now (they said they are ready)."""
        return len(self.ready)

    def dispatch(self, conn: socket.socket) -> bool:
        """Give `conn` to the next ready worker that takes it; False when none can now (none
        is ready yet, or a channel holds only a few descriptors until its worker reads
        them)."""
        order = sorted(self.ready)
        if order:
            start = self._next % len(order)
            payload = FAMILY.pack(conn.family)
            for step, index in enumerate(order[start:] + order[:start]):
                try:
                    socket.send_fds(self.channels[index], [payload], [conn.fileno()])
                except OSError:
                    continue    # its channel is full or gone: the next worker
                self._next = start + step + 1
                return True
        return False

    def stopService(self):
        service.Service.stopService(self)
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        waits = []
        for index, process in list(self.processes.items()):
            done = self._stopped[index] = defer.Deferred()
            waits.append(done)
            try:
                process.signalProcess("TERM")
            except Exception:       # it has just ended; processEnded fires the Deferred
                continue
            kill = self.reactor.callLater(STOP_TIMEOUT, self._kill, process)
            done.addBoth(lambda result, call=kill: call.active() and call.cancel())
        return defer.gatherResults(waits)

    def _kill(self, process):
        log.warn("{name} (pid {pid}) did not stop; killed", name=self.name, pid=process.pid)
        with contextlib.suppress(Exception):     # it ended meanwhile
            process.signalProcess("KILL")


class Adopter(_SocketReader, service.Service):
    """The worker's side: adopts each descriptor read from `fd` into `factory`.

    Connections of a TCP family go to `tls_factory` instead when one is given (a
    TLSMemoryBIOFactory around `factory`).  Once the reactor runs, READY is sent on `fd`:
    the listener gives connections only to a worker that can keep them through a SIGTERM
    (`SignalService`, started before this service, installs its handler when the reactor
    runs, ahead of this).  `on_end()` is called once the listener has closed the channel
    (it exited or was killed), so that the worker stops too.
    """

    def __init__(self, reactor, factory, on_end, fd=None, tls_factory=None):
        if fd is None:
            fd = WORKER_FD
        self.reactor = reactor
        self.factory = factory
        self.tls_factory = tls_factory
        self.on_end = on_end
        self.socket = socket.socket(fileno=fd)
        self.socket.setblocking(False)
        self.adopted = 0
        self.name = "Adopter"

    def startService(self):
        service.Service.startService(self)
        self.factory.doStart()
        self.reactor.addReader(self)
        self.reactor.callWhenRunning(self._say_ready)

    def _say_ready(self):
        if not self.running or self.socket.fileno() < 0:
            return
        try:
            self.socket.send(READY)
        except OSError as e:
            # the listener has gone: reading the channel sees it and stops the worker
            log.error("cannot tell the listener this worker is ready: {error}", error=e)

    def stopService(self):
        service.Service.stopService(self)
        if self.socket.fileno() >= 0:
            self.reactor.removeReader(self)
            self.socket.close()
        self.factory.doStop()

    def doRead(self):
        while True:
            try:
                payload, fds, _, _ = socket.recv_fds(self.socket, FAMILY.size, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.error("reading the listener's channel failed: {error}", error=e)
                return self._end()
            if not payload and not fds:
                return self._end()
            for fd in fds:
                try:
                    family, = FAMILY.unpack(payload)
                    factory = self.factory
                    if self.tls_factory is not None and family != socket.AF_UNIX:
                        factory = self.tls_factory
                    self.reactor.adoptStreamConnection(fd, family, factory)
                    self.adopted += 1
                except Exception:
                    log.failure("cannot adopt a connection")
                finally:
                    os.close(fd)

    def _end(self):
        self.reactor.removeReader(self)
        self.socket.close()
        log.info("the listener has gone; stopping")
        self.on_end()


class Listener(service.Service):
    """Binds `binds` and hands what they accept to `pool`; the addresses of a `monitor`
    section are served here.  `buffers` are `read_mem`/`write_mem` keywords.  When a bind
    fails, `on_failure(what)` is called while its exception is handled: the daemon gives
    up.  Connections are accepted, and `on_ready()` is called, once every address listens
    and a worker is ready to take them; until then they wait in the backlog."""

    def __init__(self, reactor, binds, pool, on_failure, monitor=None, name="listener",
                 buffers=None, on_ready=lambda: None):
        self.reactor = reactor
        self.on_failure = on_failure
        self.on_ready = on_ready
        self.binds = list(binds)
        self.buffers = buffers or {}
        self.pool = pool
        self.monitor = monitor
        self.name = name
        self.acceptors = []
        self.ports = []

    def startService(self):
        service.Service.startService(self)
        self.pool.startService()
        return defer.Deferred.fromCoroutine(self._listen())

    async def _listen(self):
        try:
            for address in self.binds:
                self.acceptors.append(Acceptor(self.reactor,
                                               bind_socket(address, **self.buffers),
                                               self.pool.dispatch))
            if self.monitor is not None:
                self.ports += await listen_monitor(self.reactor, self.monitor)
        except Exception:
            self.on_failure("%s could not listen" % self.name)
            return
        await self.pool.when_ready()
        if not self.running:
            return
        for acceptor in self.acceptors:
            acceptor.start()
        log.info("{name} ready on {bind}, {count} workers", name=self.name,
                 bind=", ".join(self.binds), count=self.pool.count)
        self.on_ready()

    def stopService(self):
        service.Service.stopService(self)
        for acceptor in self.acceptors:
            acceptor.stop()
        self.acceptors = []
        stops = [defer.maybeDeferred(p.stopListening) for p in self.ports]
        stops.append(defer.maybeDeferred(self.pool.stopService))
        return defer.gatherResults(stops)
