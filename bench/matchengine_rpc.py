#!/usr/bin/env python
"""Orders per second through a real matchengine daemon over its binary RPC port.

Starts the daemon (durable operation log in MariaDB, history, Kafka messages to the local
broker) on fresh databases, deposits for 100 users, then sends order.put_limit (50% crossing)
from `--clients` connections with `--depth` requests in flight on each, and prints one line:
accepted orders/s, refused, p50/p99 latency, the time until the daemon had stopped with
every history row written and every message sent (history lags behind the replies, and
catches up after the load), and with `--cpu` the CPU time per order of the daemon with its
writer, of the load generator, of MariaDB and of the Kafka broker.  The
load generator encodes every request before the clock starts and reads each reply by its
header, so that it takes little of the two cores it shares with the daemon.  Needs
`python depends/services.py up`.

Usage: python bench/matchengine_rpc.py [--orders N] [--clients C] [--depth D] [--async-log]
       [--history-threads N] [--cpu]
"""

import argparse
import json
import os
import random
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import cpu  # noqa: E402
from bench.matchengine_core import orders  # noqa: E402
from utils import rpc, testing  # noqa: E402


def daemon_config(port, durable, history_threads=None):
    info = testing.require("mysql")
    db = {"host": info["host"], "port": int(info["port"]), "user": info["user"],
          "pass": info["password"]}
    with open(os.path.join(ROOT, "matchengine", "conf", "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("alert")
    log_db = testing.create_database("benchlog", ("trade_log",))
    history_db = testing.create_database("benchhist", ("trade_history",), True)
    cfg.update({"log": {"path": "log/matchengine", "flag": "fatal,error,warn,info"},
                "svr": {"bind": ["tcp@127.0.0.1:%d" % port], "max_pkg_size": 1 << 20,
                        "heartbeat_check": False},
                "cli": "tcp@127.0.0.1:%d" % testing.free_port(),
                "db_log": dict(db, name=log_db), "db_history": dict(db, name=history_db),
                "brokers": testing.require("kafka"), "durable": durable})
    if history_threads is not None:
        cfg["history_thread"] = history_threads
    return cfg, [log_db, history_db]


def request_packets(command, batch):
    """Each request's whole packet, encoded before the clock starts: the load generator
    shares the two cores with the daemon, so what it does per order is kept to a minimum."""
    return [rpc.encode(rpc.Packet(command, rpc.REQUEST, sequence, 0,
                                  json.dumps(params).encode()))
            for sequence, params in enumerate(batch)]


class Lane:
    """One connection keeping `depth` requests in flight: a reply's arrival sends the next.
    Replies are read by their header and the start of their body (`{"error": null` is an
    accepted order), without a checksum or JSON parse."""

    def __init__(self, sock, packets, depth, stats):
        self.sock = sock
        self.packets = packets
        self.depth = depth
        self.stats = stats
        self.sent_at = [0.0] * len(packets)
        self.next = 0
        self.done = 0
        self.buffer = b""

    def send(self, count):
        first, last = self.next, min(self.next + count, len(self.packets))
        if first == last:
            return
        now = time.perf_counter()
        for sequence in range(first, last):
            self.sent_at[sequence] = now
        self.next = last
        self.sock.sendall(b"".join(self.packets[first:last]))

    def received(self, data):
        buf = self.buffer + data if self.buffer else data
        pos, end, now, replies = 0, len(buf), time.perf_counter(), 0
        latency, sent_at = self.stats["latency"], self.sent_at
        while end - pos >= rpc.HEADER_SIZE:
            sequence, body_size, ext_size = REPLY_SIZES.unpack_from(buf, pos)
            total = rpc.HEADER_SIZE + ext_size + body_size
            if end - pos < total:
                break
            body = pos + rpc.HEADER_SIZE + ext_size
            accepted = buf.startswith(b'{"error": null', body)
            self.stats["accepted" if accepted else "refused"] += 1
            latency.append(now - sent_at[sequence])
            pos += total
            replies += 1
        self.buffer = buf[pos:]
        self.done += replies
        self.send(replies)
        return self.done == len(self.packets)


# a reply header's sequence, body size and ext size (utils.rpc.HEADER)
REPLY_SIZES = struct.Struct("<18xI8xIH")


def drive(port, batch, clients, depth, on_start=lambda: None):
    """Deposits for 100 users, then `batch` over `clients` connections; the counts, the
    latencies and the time from the first order sent to the last reply."""
    socks = [testing.connect(port) for _ in range(clients)]
    for user in range(1, 101):
        for asset, business_id, amount in (("BTC", user, "100000000"),
                                           ("BCH", 1000 + user, "100000000000")):
            reply = json.loads(testing.rpc_call(
                socks[0], 102, json.dumps([user, asset, "deposit", business_id, amount,
                                           {}]).encode()))
            if reply["error"] is not None:
                raise SystemExit("deposit refused: %r" % reply)
    stats = {"accepted": 0, "refused": 0, "latency": []}
    lanes = [Lane(sock, request_packets(201, batch[i::clients]), depth, stats)
             for i, sock in enumerate(socks)]
    selector = selectors.DefaultSelector()
    for lane in lanes:
        selector.register(lane.sock, selectors.EVENT_READ, lane)
    on_start()
    start = time.perf_counter()
    for lane in lanes:
        lane.send(depth)
    running = len(lanes)
    while running:
        for key, _ in selector.select(60):
            lane = key.data
            data = lane.sock.recv(1 << 20)
            if not data:
                raise SystemExit("the daemon closed the connection")
            if lane.received(data):
                selector.unregister(lane.sock)
                running -= 1
    stats["elapsed"] = time.perf_counter() - start
    for sock in socks:
        sock.close()
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100000,
                        help="orders put in all (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=4,
                        help="RPC connections sending them (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=50, help="requests in flight per client")
    parser.add_argument("--async-log", action="store_true",
                        help="the original's mode: reply before the operation log commits")
    parser.add_argument("--history-threads", type=int, metavar="N",
                        help="the daemon's history_thread (MySQL connections writing history); "
                             "default: matchengine/conf/config.json's")
    parser.add_argument("--cpu", action="store_true",
                        help="also print the CPU time per order of each process, from the "
                             "first timed order until the daemon has stopped (history "
                             "written, messages sent)")
    args = parser.parse_args()
    port = testing.free_port()
    cfg, databases = daemon_config(port, not args.async_log, args.history_threads)
    workdir = tempfile.mkdtemp(prefix="me-bench-")
    os.makedirs(os.path.join(workdir, "log"))
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon",
         "--pidfile=", "--logfile=" + os.path.join(workdir, "twistd.log"), "matchengine",
         "--config", path], cwd=workdir, env=dict(os.environ, PYTHONPATH=ROOT))
    usage = CPUUsage(daemon.pid)
    try:
        stats = drive(port, orders(args.orders, seed=random.randrange(1 << 30)), args.clients,
                      args.depth, usage.start)
        usage.answered()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        usage.stop()
        for name in databases:
            testing.drop_database(name)
        shutil.rmtree(workdir, ignore_errors=True)
    lat = sorted(stats["latency"])
    line = ("matchengine_rpc: %d orders, %d clients x %d in flight, %s log, %d history "
            "threads: %.0f accepted/s, %d refused, p50 %.2f ms, p99 %.2f ms; all written in "
            "%.2f s (%.0f orders/s with their history and messages)"
            % (args.orders, args.clients, args.depth, "async" if args.async_log else "durable",
               cfg["history_thread"], stats["accepted"] / stats["elapsed"], stats["refused"],
               lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000, usage.wall,
               stats["accepted"] / usage.wall))
    if args.cpu:
        line += "; CPU per order: " + ", ".join(
            "%s %.1f us" % (label, seconds / args.orders * 1e6)
            for label, seconds in usage.used.items())
    print(line)


class CPUUsage:
    """CPU seconds used from `start()` to `stop()` (after the daemon was waited for) by the
    daemon with its writer process, by this load generator and by the local services; and
    by the daemon's own process alone until the last reply (`answered()`): the matching
    thread's share, which bounds the rate whatever the other processes do."""

    def __init__(self, daemon_pid):
        self.daemon_pid = daemon_pid
        self.services = cpu.local_services()
        self.used = {}
        self._before = None
        self._started = None
        self.wall = None        # seconds from the first order until the daemon had stopped

    def start(self):
        self._started = time.monotonic()
        self._before = {label: cpu.process_cpu(pid) for label, pid in self.services.items()}
        # the daemon and its writer, alive: the writer's time is not yet in the daemon's
        self._before["daemon and writer"] = cpu.family_cpu(self.daemon_pid)
        self._before["load generator"] = time.process_time()
        self._before["daemon alone"] = cpu.process_cpu(self.daemon_pid)

    def answered(self):
        if self._before is not None:
            self.used["daemon alone"] = (cpu.process_cpu(self.daemon_pid)
                                         - self._before["daemon alone"])

    def stop(self):
        if self._before is None:
            return
        self.wall = time.monotonic() - self._started
        # the daemon was waited for, and had waited for its writer: both are counted here
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = {"daemon and writer": children.ru_utime + children.ru_stime,
                 "load generator": time.process_time()}
        after.update((label, cpu.process_cpu(pid)) for label, pid in self.services.items())
        for label in ("daemon and writer", "load generator", *self.services):
            if after[label] is not None and self._before[label] is not None:
                self.used[label] = after[label] - self._before[label]


if __name__ == "__main__":
    main()
