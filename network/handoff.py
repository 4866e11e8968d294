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
- `Adopter` (worker side) reads fd 3 and gives every descriptor to a protocol factory;
  when the listener goes away the channel ends and the worker stops.
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
    none is running) the connection is kept and accepting pauses, leaving newer connections
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


class WorkerPool(service.Service):
    """Runs `count` workers, `command(index)` each, and hands connections to them in turn.

    A worker gets its end of a seqpacket socketpair as `WORKER_FD`; its stdout and stderr are
    the listener's.  One that exits while the pool runs is started again after
    RESTART_DELAY.
    """

    def __init__(self, reactor, command, count, name="worker"):
        self.reactor = reactor
        self.command = command
        self.count = count
        self.name = name
        self.channels = {}       # index -> the listener's end of its socketpair
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
                _WorkerProcess(self, index), argv[0], argv, env=os.environ,
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
        log.info("{name} {index} started (pid {pid})", name=self.name, index=index,
                 pid=self.processes[index].pid)

    def _ended(self, index, reason):
        self.processes.pop(index, None)
        channel = self.channels.pop(index, None)
        if channel is not None:
            channel.close()
        waiting = self._stopped.pop(index, None)
        if waiting is not None:
            waiting.callback(None)
            return
        log.error("{name} {index} ended: {reason}", name=self.name, index=index,
                  reason=reason)
        if self.running:
            self._restarts[index] = self.reactor.callLater(RESTART_DELAY, self._spawn, index)

    @property
    def live(self) -> int:
        """How many workers can take connections now."""
        return len(self.channels)

    def dispatch(self, conn: socket.socket) -> bool:
        """Give `conn` to the next worker that takes it; False when none can now (a
        channel holds only a few descriptors until its worker reads them)."""
        order = sorted(self.channels)
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
    TLSMemoryBIOFactory around `factory`).  `on_end()` is called once the listener has
    closed the channel (it exited or was killed), so that the worker stops too.
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
    up; once every address listens, `on_ready()` is called."""

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
                acceptor = Acceptor(self.reactor, bind_socket(address, **self.buffers),
                                    self.pool.dispatch)
                acceptor.start()
                self.acceptors.append(acceptor)
            if self.monitor is not None:
                self.ports += await listen_monitor(self.reactor, self.monitor)
        except Exception:
            self.on_failure("%s could not listen" % self.name)
            return
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
