#!/usr/bin/env python
"""Connections held and push fan-out of accessws.

A child process runs accessws against a loopback backend whose book and deals change
`--trades` times a second (each change carries its own time); this process opens
`--connections` websocket connections subscribed to depth and deals of that market and
measures the delay since the change each push reports.  Every `--sample`-th connection (in
the order they are opened) is read by a second child that asks the kernel when each push
arrived (SO_TIMESTAMP), so that the delays are the server's, however late the reading
process gets to a socket.  The others are emptied here every 0.1 s, in one batch, so that
the load generator takes little of the cores the server runs on (`--read-all`: read each
push as it comes, through Twisted).  Prints one line.

Usage: python bench/accessws_fanout.py [--connections N] [--trades R] [--seconds S]
                                        [--interval POLL] [--sample K] [--push-window W]
                                        [--workers N]
"""

import argparse
import base64
import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def serve(ws_port, rate, interval, push_window, workers):
    """The child: a backend changing `rate` times a second, and accessws polling it (in
    this process, or as a listener and `workers` worker processes)."""
    from twisted.internet import reactor, task

    from accessws import config
    from accessws.server import AccessWS
    from utils import testing
    from utils.rpc_server import RPCServerFactory, listen_rpc

    state = {"deals": [], "id": 0, "book": {"asks": [], "bids": []}}

    def change():
        now = time.time()
        state["id"] += 1
        state["deals"] = ([{"id": state["id"], "time": now, "price": "8000",
                            "amount": "1", "type": "buy"}] + state["deals"])[:100]
        state["book"] = {"asks": [["8000", "%.6f" % now]], "bids": []}
    task.LoopingCall(change).start(1.0 / rate)
    handlers = {206: lambda p, r: state["book"],
                303: lambda p, r: [d for d in state["deals"] if d["id"] > p[2]]}
    backend_port = testing.free_port()
    listen_rpc(reactor, "tcp@127.0.0.1:%d" % backend_port,
               RPCServerFactory(handlers, 1 << 20, heartbeat_check=False))
    backend = {"addr": ["tcp@127.0.0.1:%d" % backend_port], "max_pkg_size": 1 << 24}
    data = {
        "log": {"path": "/dev/null", "flag": "fatal"},
        "svr": {"bind": ["tcp@127.0.0.1:%d" % ws_port], "max_pkg_size": 102400},
        "monitor": {"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024},
        "matchengine": dict(backend, name="matchengine"),
        "marketprice": dict(backend, name="marketprice"),
        "readhistory": dict(backend, name="readhistory"),
        "orders": {"brokers": "127.0.0.1:1", "topic": "orders"},
        "balances": {"brokers": "127.0.0.1:1", "topic": "balances"},
        "auth_url": "http://127.0.0.1:1/", "sign_url": "http://127.0.0.1:1/",
        "depth_interval": interval, "deals_interval": interval, "push_window": push_window,
        "depth_limit": [10], "depth_merge": ["0"], "worker_num": workers}
    if workers == 1:
        AccessWS(config.load_data(data), reactor=reactor).startService()
    else:
        daemon = start_daemon(data, ws_port)
        reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)
    print("ready", flush=True)
    reactor.run()


def start_daemon(data, ws_port):
    """accessws run by twistd (a listener and its workers) with the config `data`."""
    import tempfile

    from utils import testing
    data = dict(data, log={"path": "log/accessws", "flag": "fatal,error,warn"})
    daemon = testing.DaemonProcess("accessws", data, tempfile.mkdtemp(prefix="fanout-"))
    return daemon.start().wait_port(ws_port)


SUBSCRIBE = (b'{"id": 1, "method": "depth.subscribe", "params": ["BTCBCH", 10, "0"]}',
             b'{"id": 2, "method": "deals.subscribe", "params": ["BTCBCH"]}')


def upgrade_request():
    """The client's opening handshake, with a fresh key."""
    return (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % base64.b64encode(os.urandom(16)))


def client_frame(payload):
    """A masked text frame, as a client sends it (payloads under 126 bytes)."""
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)   # Linux; ancillary data: struct timeval
TIMEVAL = struct.Struct("@ll")


def push_delays(payload, arrived):
    """The delays since the changes a depth or deals push reports."""
    message = json.loads(payload)
    method = message.get("method")
    if method == "depth.update":
        asks = message["params"][1].get("asks") or []
        return [arrived - float(amount) for _, amount in asks if amount != "0"]
    if method == "deals.update":
        return [arrived - message["params"][1][0]["time"]]
    return []


def frames(buffer):
    """Split server frames (unmasked) off `buffer`; returns (payloads, rest)."""
    out = []
    while len(buffer) >= 2:
        size, start = buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                break
            size, start = struct.unpack(">H", buffer[2:4])[0], 4
        elif size == 127:
            if len(buffer) < 10:
                break
            size, start = struct.unpack(">Q", buffer[2:10])[0], 10
        if len(buffer) < start + size:
            break
        out.append(buffer[start:start + size])
        buffer = buffer[start + size:]
    return out, buffer


def open_sampled(ws_port):
    """A subscribed websocket connection whose arrivals the kernel timestamps; returns the
    socket and what came after the handshake's head."""
    sock = socket.create_connection(("127.0.0.1", ws_port))
    sock.sendall(upgrade_request())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit("handshake refused")
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    sock.sendall(b"".join(client_frame(m) for m in SUBSCRIBE))
    sock.setblocking(False)
    return sock, head.split(b"\r\n\r\n", 1)[1]


def sampler(ws_port):
    """The second child: connections read with the kernel's arrival times.

    Commands on stdin: "open K" opens and subscribes K more connections (answered with
    "opened"), so that they are opened among the others, "start" begins measuring, and
    "stop" prints the delays as JSON and ends."""
    socks = {}
    poller = select.epoll()
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    print("ready", flush=True)
    delays, measuring = [], False
    space = socket.CMSG_SPACE(TIMEVAL.size)
    while True:
        for fd, _ in poller.poll():
            if fd == sys.stdin.fileno():
                command = sys.stdin.readline().split()
                if command[0] == "open":
                    for _ in range(int(command[1])):
                        sock, rest = open_sampled(ws_port)
                        socks[sock.fileno()] = [sock, rest]
                        poller.register(sock.fileno(), select.EPOLLIN)
                    print("opened", flush=True)
                    continue
                if command[0] == "start":
                    measuring = True
                    continue
                print(json.dumps(delays), flush=True)
                return
            entry = socks[fd]
            try:
                data, ancillary, _, _ = entry[0].recvmsg(65536, space)
            except BlockingIOError:
                continue
            arrived = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
                    sec, usec = TIMEVAL.unpack(value[:TIMEVAL.size])
                    arrived = sec + usec / 1e6
            payloads, entry[1] = frames(entry[1] + data)
            if measuring:
                for payload in payloads:
                    delays.extend(push_delays(payload, arrived))


# The unsampled connections are read this often, in one batch, rather than as pushes come:
# a reading process woken by every push of a fan-out would take more of the two cores than
# the server.  Their receive buffers (128 KB) hold far more than a round of pushes.
DRAIN_EVERY = 0.1


def drive(ws_port, connections, seconds, sample, read_all):
    from twisted.internet import defer, protocol, reactor

    sampled = (connections + sample - 1) // sample
    reader = subprocess.Popen([sys.executable, __file__, "--sampler", str(ws_port),
                               "--connections", str(connections)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if reader.stdout.readline().strip() != "ready":
        raise SystemExit("the sampling reader did not start")
    opened = []

    class Listener(protocol.Protocol):
        """Opens the websocket by hand, subscribes, then reads and drops what comes."""

        upgraded = False

        def connectionMade(self):
            self.transport.write(upgrade_request())
            self.head = b""

        def dataReceived(self, data):
            if self.upgraded:
                return
            self.head += data
            if b"\r\n\r\n" in self.head:
                if not self.head.startswith(b"HTTP/1.1 101"):
                    self.transport.loseConnection()
                    return
                self.upgraded = True
                self.head = None
                opened.append(self)
                self.transport.write(b"".join(client_frame(m) for m in SUBSCRIBE))
                if not read_all:
                    # read in batches by `drain` instead, without a wake-up per push
                    self.transport.pauseProducing()
                    drained.register(self.transport.fileno(), select.EPOLLIN)

    drained = select.epoll()

    def drain():
        """Empty the receive buffers of the connections that have data."""
        for fd, _ in drained.poll(0):
            try:
                os.read(fd, 1 << 20)     # what is left is there again on the next poll
            except BlockingIOError:
                continue
            except OSError:
                drained.unregister(fd)

    async def main():
        if not read_all:
            from twisted.internet.task import LoopingCall
            LoopingCall(drain).start(DRAIN_EVERY)
        listeners = protocol.ClientFactory.forProtocol(Listener)
        # every `sample`-th connection is the sampler's, so that the sampled ones have
        # places all along the server's lists of connections
        pending = 0
        for i in range(connections):
            if i % sample == 0:
                pending += 1
            else:
                reactor.connectTCP("127.0.0.1", ws_port, listeners)
            if i % 200 == 199 or i == connections - 1:
                reader.stdin.write("open %d\n" % pending)
                reader.stdin.flush()
                if reader.stdout.readline().strip() != "opened":
                    raise SystemExit("the sampling reader failed")
                pending = 0
                await _sleep(0.2)
        deadline = time.time() + 120
        while len(opened) < connections - sampled and time.time() < deadline:
            await _sleep(0.2)
        await _sleep(2.0)
        reader.stdin.write("start\n")
        reader.stdin.flush()
        start = time.time()
        await _sleep(seconds)
        reader.stdin.write("stop\n")
        reader.stdin.flush()
        return len(opened) + sampled, time.time() - start

    def _sleep(s):
        d = defer.Deferred()
        reactor.callLater(s, d.callback, None)
        return d

    result = {}

    def done(outcome):
        result["outcome"] = outcome
        reactor.stop()
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main()).addBoth(done))
    reactor.run()
    delays = json.loads(reader.stdout.readline())
    reader.wait()
    return result["outcome"], delays


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000,
                        help="websocket connections subscribed (default: %(default)s)")
    parser.add_argument("--trades", type=float, default=1000.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of the run (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=0.05, help="poll period, s")
    parser.add_argument("--sample", type=int, default=10,
                        help="time the pushes of every K-th connection")
    parser.add_argument("--push-window", type=float, default=0.05,
                        help="accessws push_window, s (0: every push sent on its own)")
    parser.add_argument("--workers", type=int, default=1,
                        help="accessws worker_num (above 1: the daemon, a listener and its "
                             "workers, each polling and pushing on its own)")
    parser.add_argument("--read-all", action="store_true",
                        help="read every connection as pushes come, not in batches every "
                             "0.1 s (the reading then competes more with the server)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sampler", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 +
                                                               1024)), hard))
    if args.sampler:
        return sampler(args.sampler)
    if args.serve:
        return serve(args.serve, args.trades, args.interval, args.push_window, args.workers)
    from utils.testing import free_port
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--trades",
                              str(args.trades), "--interval", str(args.interval),
                              "--push-window", str(args.push_window),
                              "--workers", str(args.workers),
                              "--connections", str(args.connections)],
                             stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("accessws did not start")
        outcome, delays = drive(port, args.connections, args.seconds, args.sample,
                                args.read_all)
    finally:
        child.terminate()
        child.wait()
    if isinstance(outcome, Exception) or not isinstance(outcome, tuple):
        raise SystemExit("run failed: %r" % (outcome,))
    held, elapsed = outcome
    delays.sort()
    pct = (lambda q: delays[min(len(delays) - 1, int(len(delays) * q))] * 1000) if delays \
        else (lambda q: float("nan"))
    print("accessws_fanout: %d connections held, %d worker(s), %.0f changes/s, poll %.2f s, "
          "push window %g s: %.0f pushes/s, delay p50 %.1f ms, p99 %.1f ms" % (
              held, args.workers, args.trades, args.interval, args.push_window,
              len(delays) * args.sample / elapsed, pct(0.5), pct(0.99)))


if __name__ == "__main__":
    main()
