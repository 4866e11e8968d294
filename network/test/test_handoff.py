# -*- test-case-name: network.test.test_handoff -*-
"""The listener/worker hand-off: descriptors over seqpacket channels, the worker pool's
turns, restarts and stop, and real daemons run with worker_num 2."""

import errno
import json
import os
import signal
import socket
import subprocess

from twisted.internet import error, protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from network import handoff
from utils import testing


class AdoptingReactor(MemoryReactorClock):
    """Records, for each adopted descriptor, the inode of the socket behind it."""

    def __init__(self):
        super().__init__()
        self.adopted = []
        self.spawned = []

    def adoptStreamConnection(self, fd, family, factory):
        self.adopted.append((os.fstat(fd).st_ino, family, factory))

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None):
        process = FakeProcess(proto, len(self.spawned) + 100,
                              socket.socket(fileno=os.dup(childFDs[handoff.WORKER_FD])))
        self.spawned.append((args, childFDs, process))
        return process


class FakeProcess:
    """A spawned worker; `channel` is its end of the channel the pool gave it."""

    def __init__(self, proto, pid, channel):
        self.proto = proto
        self.pid = pid
        self.channel = channel
        self.signals = []

    def signalProcess(self, name):
        if self.signals and self.signals[-1] == "gone":
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def end(self):
        self.signals.append("gone")
        self.proto.processEnded(Failure(error.ProcessTerminated(signal=15)))


def inode(sock):
    return os.fstat(sock.fileno()).st_ino


class AdopterTests(SynchronousTestCase):

    def setUp(self):
        self.reactor = AdoptingReactor()
        self.listener_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(self.listener_end.close)
        self.factory = protocol.Factory()
        self.tls = protocol.Factory()
        self.ended = []
        self.adopter = handoff.Adopter(self.reactor, self.factory,
                                       on_end=lambda: self.ended.append(True),
                                       fd=worker_end.detach(), tls_factory=self.tls)
        self.adopter.startService()

    def send(self, sock):
        socket.send_fds(self.listener_end, [handoff.FAMILY.pack(sock.family)], [sock.fileno()])

    def test_descriptors_are_adopted_by_family(self):
        """Each descriptor sent is adopted with its family; TCP ones go to the TLS factory,
        UNIX ones to the plain one; the worker's copies are closed afterwards."""
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        unix, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (tcp, unix, other):
            self.addCleanup(s.close)
        self.assertIn(self.adopter, self.reactor.readers)
        before = len(os.listdir("/proc/self/fd"))
        self.send(tcp)
        self.send(unix)
        self.adopter.doRead()
        self.assertEqual(self.reactor.adopted,
                         [(inode(tcp), socket.AF_INET, self.tls),
                          (inode(unix), socket.AF_UNIX, self.factory)])
        self.assertEqual(self.adopter.adopted, 2)
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
        self.assertEqual(self.ended, [])

    def test_channel_closed_ends_the_worker(self):
        """When the listener's end closes, the worker is told to stop, once."""
        self.listener_end.close()
        self.adopter.doRead()
        self.assertEqual(self.ended, [True])
        self.assertNotIn(self.adopter, self.reactor.readers)
        self.adopter.stopService()
        self.assertEqual(self.ended, [True])

    def test_ready_once_the_reactor_runs(self):
        """The worker tells the listener it is ready once its reactor runs (its SIGTERM
        handler is then in place), and only then."""
        self.listener_end.setblocking(False)
        self.assertRaises(BlockingIOError, self.listener_end.recv, 16)
        self.reactor.run()
        self.assertEqual(self.listener_end.recv(16), handoff.READY)
        self.assertRaises(BlockingIOError, self.listener_end.recv, 16)

    def test_factory_started_and_stopped(self):
        """The adopting factory is started with the service and stopped with it."""
        self.assertEqual(self.factory.numPorts, 1)
        self.adopter.stopService()
        self.assertEqual(self.factory.numPorts, 0)
        self.assertNotIn(self.adopter, self.reactor.readers)


class WorkerPoolTests(SynchronousTestCase):

    def setUp(self):
        self.reactor = AdoptingReactor()
        self.pool = handoff.WorkerPool(self.reactor, lambda i: ["python", "worker", str(i)], 3)
        self.pool.startService()
        self.addCleanup(self.close_channels)

    def close_channels(self):
        for channel in self.pool.channels.values():
            channel.close()
        for _, _, process in self.reactor.spawned:
            process.channel.close()

    def say_ready(self, index, spawned=None):
        """Worker `index` (the `spawned`-th process started) sends READY, which the pool
        reads."""
        if spawned is None:
            spawned = index
        self.reactor.spawned[spawned][2].channel.send(handoff.READY)
        self.assertIn(self.pool.readers[index], self.reactor.readers)
        self.pool.readers[index].doRead()

    def received(self, process):
        """The inodes of the descriptors waiting in `process`'s channel."""
        process.channel.setblocking(False)
        got = []
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(process.channel, 4, 1)
            except BlockingIOError:
                return got
            got.append(os.fstat(fds[0]).st_ino)
            os.close(fds[0])

    def test_workers_started_with_their_channel(self):
        """Each worker is spawned with its command and its channel end as fd 3."""
        self.assertEqual([args for args, _, _ in self.reactor.spawned],
                         [["python", "worker", "0"], ["python", "worker", "1"],
                          ["python", "worker", "2"]])
        for _, child_fds, _ in self.reactor.spawned:
            self.assertEqual(set(child_fds), {0, 1, 2, handoff.WORKER_FD})
        self.assertEqual(len(self.pool.channels), 3)

    def test_connections_only_to_ready_workers(self):
        """No worker is given a connection before it has said it is ready (until its
        reactor runs a SIGTERM would kill it, and what waits in its channel with it):
        dispatch says none can take it; then only the ready ones are given connections."""
        s = socket.socket()
        self.addCleanup(s.close)
        self.assertEqual(self.pool.live, 0)
        self.assertFalse(self.pool.dispatch(s))
        self.say_ready(1)
        self.assertEqual(self.pool.live, 1)
        self.assertTrue(self.pool.dispatch(s))
        self.assertTrue(self.pool.dispatch(s))
        processes = [p for _, _, p in self.reactor.spawned]
        self.assertEqual([len(self.received(p)) for p in processes], [0, 2, 0])
        self.say_ready(0)
        self.assertEqual(self.pool.live, 2)
        for _ in range(4):
            self.assertTrue(self.pool.dispatch(s))
        self.assertEqual([len(self.received(p)) for p in processes], [2, 2, 0])

    def test_when_ready(self):
        """when_ready fires once the first worker is ready, and at once afterwards."""
        waiting = self.pool.when_ready()
        self.assertNoResult(waiting)
        self.say_ready(2)
        self.successResultOf(waiting)
        self.successResultOf(self.pool.when_ready())

    def test_connections_go_round(self):
        """Connections are handed to the ready workers in turn."""
        for index in range(3):
            self.say_ready(index)
        sockets = [socket.socket() for _ in range(6)]
        for s in sockets:
            self.addCleanup(s.close)
            self.assertTrue(self.pool.dispatch(s))
        got = {index: self.received(p) for index, (_, _, p) in enumerate(self.reactor.spawned)}
        self.assertEqual(got, {0: [inode(sockets[0]), inode(sockets[3])],
                               1: [inode(sockets[1]), inode(sockets[4])],
                               2: [inode(sockets[2]), inode(sockets[5])]})

    def test_dead_channel_skipped_and_none_left(self):
        """A worker whose channel fails is skipped (again and again); with none left
        dispatch says so."""
        for index in range(3):
            self.say_ready(index)
        peers = [p.channel for _, _, p in self.reactor.spawned]
        peers[0].close()
        peers[1].close()
        s = socket.socket()
        self.addCleanup(s.close)
        self.assertTrue(self.pool.dispatch(s))
        self.assertTrue(self.pool.dispatch(s))
        for _ in range(2):
            _, fds, _, _ = socket.recv_fds(peers[2], 4, 1)
            os.close(fds[0])
        self.assertEqual(self.pool.live, 3)
        peers[2].close()
        self.assertFalse(self.pool.dispatch(s))

    def test_dead_worker_restarted(self):
        """A worker that ends is started again after RESTART_DELAY, with a new channel, and
        is given connections once it says it is ready again."""
        for index in range(3):
            self.say_ready(index)
        _, _, process = self.reactor.spawned[1]
        reader = self.pool.readers[1]
        with capturedLogs() as events:
            process.end()
        # fatal, so that it alerts, as the original's keepalive parent logs a dead worker
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events],
                         [(LogLevel.critical, "worker 1 ended: A process has ended with a "
                           "probable error condition: process ended by signal 15.")])
        self.assertNotIn(reader, self.reactor.readers)
        self.assertEqual(self.pool.live, 2)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.reactor.advance(handoff.RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.assertEqual(self.reactor.spawned[3][0], ["python", "worker", "1"])
        restarted = self.reactor.spawned[3][2]
        self.assertEqual(self.pool.live, 2)
        s = socket.socket()
        self.addCleanup(s.close)
        for _ in range(4):
            self.assertTrue(self.pool.dispatch(s))
        self.assertEqual(self.received(restarted), [])
        self.say_ready(1, spawned=3)
        self.assertEqual(self.pool.live, 3)
        for _ in range(3):
            self.assertTrue(self.pool.dispatch(s))
        self.assertEqual(len(self.received(restarted)), 1)

    def test_acceptor_waits_for_a_ready_worker(self):
        """With no worker ready, the acceptor keeps the connection and pauses; once one is,
        it is handed over and accepting resumes."""
        sock = handoff.bind_socket("tcp@127.0.0.1:0")
        acceptor = handoff.Acceptor(self.reactor, sock, self.pool.dispatch)
        acceptor.start()
        self.addCleanup(acceptor.stop)
        client = socket.create_connection(sock.getsockname())
        self.addCleanup(client.close)
        acceptor.doRead()
        self.assertNotIn(acceptor, self.reactor.readers)
        self.assertIsNotNone(acceptor.waiting)
        self.reactor.advance(acceptor.RETRY_INTERVAL * 3)
        self.assertIsNotNone(acceptor.waiting)
        self.say_ready(2)
        self.reactor.advance(acceptor.RETRY_INTERVAL)
        self.assertIsNone(acceptor.waiting)
        self.assertIn(acceptor, self.reactor.readers)
        self.assertEqual(len(self.received(self.reactor.spawned[2][2])), 1)

    def test_stop_terminates_then_kills(self):
        """Stopping sends SIGTERM; a worker still there after STOP_TIMEOUT gets SIGKILL;
        the stop fires once all have ended, and none is started again."""
        processes = [p for _, _, p in self.reactor.spawned]
        stopped = self.pool.stopService()
        self.assertEqual([p.signals for p in processes], [["TERM"]] * 3)
        processes[0].end()
        processes[1].end()
        self.assertNoResult(stopped)
        self.reactor.advance(handoff.STOP_TIMEOUT)
        self.assertEqual(processes[2].signals, ["TERM", "KILL"])
        processes[2].end()
        self.successResultOf(stopped)
        self.reactor.advance(handoff.RESTART_DELAY * 10)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.pool.live, 0)


class BindTests(SynchronousTestCase):

    def test_bind_error_names_the_address(self):
        """A bind that fails names its address (of several binds, the one that failed),
        where the error said only "Address already in use"."""
        taken = handoff.bind_socket("tcp@127.0.0.1:0")
        self.addCleanup(taken.close)
        address = "tcp@127.0.0.1:%d" % taken.getsockname()[1]
        with self.assertRaises(OSError) as caught:
            handoff.bind_socket(address)
        self.assertEqual(caught.exception.errno, errno.EADDRINUSE)
        self.assertIn("cannot listen on %s: " % address, str(caught.exception))


class ListenerTests(SynchronousTestCase):

    def test_accepts_and_ready_once_a_worker_is(self):
        """The listener binds at once but accepts, and says it is ready, only once a
        worker is ready to take connections."""
        reactor = AdoptingReactor()
        pool = handoff.WorkerPool(reactor, lambda i: ["python", "worker", str(i)], 2)
        ready = []
        listener = handoff.Listener(reactor, ["tcp@127.0.0.1:0"], pool, self.fail,
                                    on_ready=lambda: ready.append(True))
        listener.startService()
        self.addCleanup(lambda: [p.channel.close() for _, _, p in reactor.spawned])
        self.addCleanup(listener.stopService)
        acceptor, = listener.acceptors
        self.assertNotIn(acceptor, reactor.readers)
        self.assertEqual(ready, [])
        reactor.spawned[1][2].channel.send(handoff.READY)
        pool.readers[1].doRead()
        self.assertIn(acceptor, reactor.readers)
        self.assertEqual(ready, [True])


class AcceptorTests(SynchronousTestCase):

    def accepting(self, dispatch, count):
        """An acceptor on a loopback port with `count` clients connected to it."""
        reactor = AdoptingReactor()
        sock = handoff.bind_socket("tcp@127.0.0.1:0")
        acceptor = handoff.Acceptor(reactor, sock, dispatch)
        acceptor.start()
        self.addCleanup(acceptor.stop)
        clients = [socket.create_connection(sock.getsockname()) for _ in range(count)]
        for c in clients:
            self.addCleanup(c.close)
        return reactor, acceptor, clients

    def test_accepted_connections_dispatched_and_closed_here(self):
        """Each pending connection is given to dispatch; the listener's copy is closed."""
        given = []
        reactor, acceptor, clients = self.accepting(lambda conn: given.append(conn) or True, 3)
        acceptor.doRead()
        self.assertEqual(len(given), 3)
        self.assertTrue(all(conn.fileno() == -1 for conn in given))

    def test_paused_while_no_worker_takes(self):
        """A connection no worker can take is kept, accepting pauses (later connections
        wait in the backlog), and both resume once a worker takes it."""
        given, full = [], [True]

        def dispatch(conn):
            if full[0]:
                return False
            given.append(conn.getpeername())
            return True
        reactor, acceptor, clients = self.accepting(dispatch, 2)
        acceptor.doRead()
        self.assertNotIn(acceptor, reactor.readers)
        self.assertEqual(acceptor.waiting.getpeername(), clients[0].getsockname())
        reactor.advance(acceptor.RETRY_INTERVAL * 3)
        self.assertEqual(given, [])
        full[0] = False
        reactor.advance(acceptor.RETRY_INTERVAL)
        self.assertIsNone(acceptor.waiting)
        self.assertIn(acceptor, reactor.readers)
        acceptor.doRead()
        self.assertEqual(given, [c.getsockname() for c in clients])

    def test_buffers_passed_on(self):
        """The listening socket's read_mem/write_mem are those of what it accepts, which
        sends without delay."""
        sock = handoff.bind_socket("tcp@127.0.0.1:0", read_mem=70000, write_mem=30000)
        self.addCleanup(sock.close)
        client = socket.create_connection(sock.getsockname())
        self.addCleanup(client.close)
        sock.setblocking(True)
        conn, _ = sock.accept()
        self.addCleanup(conn.close)
        self.assertEqual((conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                          conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)),
                         (140000, 60000))
        self.assertTrue(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def test_stream_address(self):
        """A stream@ address is bound as a UNIX socket anyone may connect to."""
        path = self.mktemp()
        sock = handoff.bind_socket("stream@" + path)
        self.addCleanup(sock.close)
        self.assertEqual(sock.family, socket.AF_UNIX)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o777)


def connection_owner(server_port, client_port, pids):
    """Which of `pids` holds the server side of the loopback connection."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    inodes = {row[9] for row in rows
              if row[1].endswith(":%04X" % server_port) and row[2].endswith(":%04X" % client_port)}
    for pid in pids:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid
    return None


def handed_on(server_port, client_port, holder):
    """Whether the server side of the loopback connection has been accepted (it has an
    inode) and is no longer held by the process `holder`."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    inodes = {row[9] for row in rows
              if row[1].endswith(":%04X" % server_port) and row[2].endswith(":%04X" % client_port)}
    return bool(inodes) and "0" not in inodes and connection_owner(
        server_port, client_port, [holder]) is None


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return sorted(int(p) for p in out.split())


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


class DaemonWorkersTests(TestCase):
    """accessws run by twistd with worker_num 2 (its backends are down: only server.ping)."""

    timeout = 120

    def start(self, module="accessws", **extra):
        """`module` run with worker_num 2; returns the pids of its workers."""
        self.port = testing.free_port()
        down = {"name": "down", "addr": ["tcp@127.0.0.1:%d" % testing.free_port()],
                "max_pkg_size": 2000000}
        config = testing.base_config(
            module, svr={"bind": ["tcp@127.0.0.1:%d" % self.port], "max_pkg_size": 102400},
            monitor={"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024},
            worker_num=2, matchengine=down, marketprice=down, readhistory=down, **extra)
        self.daemon = testing.DaemonProcess(module, config,
                                            os.path.abspath(self.mktemp())).start()
        self.addCleanup(self.daemon.stop, signal.SIGKILL)
        self.daemon.wait_port(self.port)
        self.assertTrue(testing.wait_until(lambda: len(children(self.daemon.proc.pid)) == 2,
                                           30))
        self.wait_workers_ready(2)
        return children(self.daemon.proc.pid)

    def wait_workers_ready(self, count):
        """Wait until the listener has logged `count` workers ready (connections are
        handed to them in turn only from then on)."""
        self.assertTrue(testing.wait_until(lambda: sum(
            "[network.handoff#info]" in line and line.endswith(" ready")
            for line in self.daemon.output()) >= count, 30))

    def start_accessws(self):
        return self.start(
            orders={"brokers": "127.0.0.1:1", "topic": "orders"},
            balances={"brokers": "127.0.0.1:1", "topic": "balances"},
            auth_url="http://127.0.0.1:1/", sign_url="http://127.0.0.1:1/")

    def ping(self):
        client = testing.WSClient("127.0.0.1", self.port)
        self.addCleanup(client.close)
        client.send('{"id": 7, "method": "server.ping", "params": []}')
        self.assertEqual(json.loads(client.recv()), {"id": 7, "error": None, "result": "pong"})
        return client

    def test_connections_spread_over_workers(self):
        """Connections are served by both workers, each answering on its own.  The
        listener, not a worker, says it is ready to the watchdog's check."""
        from utils import daemon, watchdog
        ready = os.path.abspath(self.mktemp())
        self.patch(os, "environ", dict(os.environ, **{daemon.READY_FILE: ready}))
        workers = self.start_accessws()
        owners = []
        for _ in range(4):
            client = self.ping()
            owners.append(connection_owner(self.port, client.sock.getsockname()[1], workers))
        self.assertEqual(sorted(owners), sorted(workers * 2))
        self.assertEqual(watchdog.read_pid(ready), self.daemon.proc.pid)

    def test_killed_worker_replaced_and_listener_stop_ends_all(self):
        """A worker killed with SIGKILL is started again and connections are still
        served; SIGTERM to the listener stops every worker with it."""
        workers = self.start_accessws()
        os.kill(workers[0], signal.SIGKILL)

        def replaced():
            # one listing: two of them could see the dead worker, then not the new one
            now = children(self.daemon.proc.pid)
            return len(now) == 2 and workers[0] not in now
        self.assertTrue(testing.wait_until(replaced, 30))
        now = children(self.daemon.proc.pid)
        self.wait_workers_ready(3)
        self.assertTrue(testing.wait_until(lambda: all(
            connection_owner(self.port, self.ping().sock.getsockname()[1], now) for _ in "ab"),
            30))
        self.assertEqual(self.daemon.stop(), 0)     # a clean stop, asked for
        self.assertTrue(testing.wait_until(lambda: not any(alive(p) for p in now), 10))

    def test_restarted_worker_takes_the_listeners_config(self):
        """A worker started again after a crash takes the config its listener read, not
        the file as it is by then: one edited since (here, made unreadable) had the new
        worker fail every second, or run settings of its own."""
        workers = self.start_accessws()
        with open(self.daemon.config_path, "w") as f:
            f.write("{ not a config")
        os.kill(workers[0], signal.SIGKILL)
        self.wait_workers_ready(3)
        now = children(self.daemon.proc.pid)
        self.assertEqual(len(now), 2)
        self.assertNotIn(workers[0], now)
        self.assertTrue(testing.wait_until(lambda: all(
            connection_owner(self.port, self.ping().sock.getsockname()[1], now) for _ in "ab"),
            30))

    def test_workers_end_when_listener_is_killed(self):
        """A listener killed with SIGKILL leaves no worker behind."""
        workers = self.start_accessws()
        self.daemon.stop(signal.SIGKILL)
        self.assertTrue(testing.wait_until(lambda: not any(alive(p) for p in workers), 15))

    def test_accesshttp_workers(self):
        """accesshttp with worker_num 2: keep-alive connections are answered by both
        workers (an unknown method is answered without a backend)."""
        import http.client
        workers = self.start("accesshttp")
        owners = []
        for _ in range(4):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.addCleanup(conn.close)
            for _ in range(2):
                conn.request("POST", "/", b'{"id": 1, "method": "no.such", "params": []}')
                response = conn.getresponse()
                self.assertEqual((response.status, json.loads(response.read())),
                                 (404, {"error": {"code": 4, "message": "method not found"},
                                        "result": None, "id": 1}))
            owners.append(connection_owner(self.port, conn.sock.getsockname()[1], workers))
        self.assertEqual(sorted(owners), sorted(workers * 2))

    def test_stopped_right_after_start_answers_what_it_handed_on(self):
        """SIGTERM to the listener just after it says it is ready, with requests on
        connections it has handed on: each is answered (a worker is given connections only
        once it can stop cleanly, not while it is still starting), and all exit cleanly."""
        import http.client
        from utils import daemon, watchdog
        ready = os.path.abspath(self.mktemp())
        self.patch(os, "environ", dict(os.environ, **{daemon.READY_FILE: ready}))
        self.port = testing.free_port()
        config = testing.base_config(
            "accesshttp", svr={"bind": ["tcp@127.0.0.1:%d" % self.port],
                               "max_pkg_size": 102400},
            monitor={"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024},
            worker_num=2)
        self.daemon = testing.DaemonProcess("accesshttp", config,
                                            os.path.abspath(self.mktemp())).start()
        self.addCleanup(self.daemon.stop, signal.SIGKILL)
        pid = self.daemon.proc.pid
        self.assertTrue(testing.wait_until(
            lambda: os.path.exists(ready) and watchdog.read_pid(ready) == pid, 60))
        body = b'{"id": 1, "method": "no.such", "params": []}'
        conns = []
        for _ in range(12):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            self.addCleanup(conn.close)
            conn.request("POST", "/", body)
            conns.append(conn)
        self.assertTrue(testing.wait_until(lambda: all(
            handed_on(self.port, c.sock.getsockname()[1], pid) for c in conns), 30))
        workers = children(pid)
        os.kill(pid, signal.SIGTERM)
        answers = []
        for conn in conns:
            try:
                response = conn.getresponse()
                answers.append((response.status, json.loads(response.read())["error"]))
            except OSError as e:
                answers.append(e)
        self.assertEqual(answers, [(404, {"code": 4, "message": "method not found"})] * 12)
        self.assertEqual(self.daemon.wait_exit(30), 0)
        self.assertTrue(testing.wait_until(lambda: not any(alive(p) for p in workers), 10))
