#!/usr/bin/env python
"""Orders per second through a real matchengine daemon over its binary RPC port.

Starts the daemon (durable operation log in MariaDB, history, Kafka messages to the local
broker) on fresh databases, deposits for 100 users, then sends order.put_limit (50% crossing)
from `--clients` connections with `--depth` requests in flight on each, and prints one line:
accepted orders/s, refused, p50/p99 latency, and with `--cpu` the CPU time per order of the
daemon with its writer, of the load generator, of MariaDB and of the Kafka broker.  Needs
`python depends/services.py up`.

Usage: python bench/matchengine_rpc.py [--orders N] [--clients C] [--depth D] [--async-log]
       [--cpu]
"""

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import cpu  # noqa: E402
from bench.matchengine_core import orders  # noqa: E402
from utils import testing  # noqa: E402


def daemon_config(port, durable):
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
    return cfg, [log_db, history_db]


def drive(port, batch, clients, depth, on_start=lambda: None):
    from twisted.internet import defer, reactor
    from utils.rpc_client import RPCClient

    conns = [RPCClient(reactor, "bench%d" % i, ["tcp@127.0.0.1:%d" % port], 1 << 20)
             for i in range(clients)]
    stats = {"accepted": 0, "refused": 0, "latency": []}

    async def wait_connected():
        for _ in range(600):
            if all(c.connected for c in conns):
                return
            await defer.Deferred.fromCoroutine(_sleep(0.1))

    async def _sleep(seconds):
        d = defer.Deferred()
        reactor.callLater(seconds, d.callback, None)
        await d

    async def lane(conn, items):
        pending = []
        for params in items:
            start = time.perf_counter()
            d = conn.call(201, params, 30.0)
            d.addCallback(record, start)
            pending.append(d)
            if len(pending) >= depth:
                await pending.pop(0)
        for d in pending:
            await d

    def record(reply, start):
        stats["latency"].append(time.perf_counter() - start)
        stats["accepted" if reply["error"] is None else "refused"] += 1

    async def main():
        for c in conns:
            c.start()
        await wait_connected()
        for user in range(1, 101):
            await conns[0].call(102, [user, "BTC", "deposit", user, "100000000", {}], 30)
            await conns[0].call(102, [user, "BCH", "deposit", 1000 + user, "100000000000", {}],
                                30)
        on_start()
        start = time.perf_counter()
        await defer.gatherResults([defer.Deferred.fromCoroutine(
            lane(c, batch[i::clients])) for i, c in enumerate(conns)])
        stats["elapsed"] = time.perf_counter() - start
        for c in conns:
            c.stop()

    def finish(result):
        reactor.stop()
        return result
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main()).addBoth(finish))
    reactor.run()
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--depth", type=int, default=50, help="requests in flight per client")
    parser.add_argument("--async-log", action="store_true",
                        help="the original's mode: reply before the operation log commits")
    parser.add_argument("--cpu", action="store_true",
                        help="also print the CPU time per order of each process, from the "
                             "first timed order until the daemon has stopped (history "
                             "written, messages sent)")
    args = parser.parse_args()
    port = testing.free_port()
    cfg, databases = daemon_config(port, not args.async_log)
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
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        usage.stop()
        for name in databases:
            testing.drop_database(name)
    lat = sorted(stats["latency"])
    line = ("matchengine_rpc: %d orders, %d clients x %d in flight, %s log: %.0f accepted/s, "
            "%d refused, p50 %.2f ms, p99 %.2f ms"
            % (args.orders, args.clients, args.depth, "async" if args.async_log else "durable",
               stats["accepted"] / stats["elapsed"], stats["refused"],
               lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000))
    if args.cpu:
        line += "; CPU per order: " + ", ".join(
            "%s %.1f us" % (label, seconds / args.orders * 1e6)
            for label, seconds in usage.used.items())
    print(line)


class CPUUsage:
    """CPU seconds used from `start()` to `stop()` (after the daemon was waited for) by the
    daemon with its writer process, by this load generator and by the local services."""

    def __init__(self, daemon_pid):
        self.daemon_pid = daemon_pid
        self.services = cpu.local_services()
        self.used = {}
        self._before = None

    def start(self):
        self._before = {label: cpu.process_cpu(pid) for label, pid in self.services.items()}
        # the daemon and its writer, alive: the writer's time is not yet in the daemon's
        self._before["daemon and writer"] = cpu.family_cpu(self.daemon_pid)
        self._before["load generator"] = time.process_time()

    def stop(self):
        if self._before is None:
            return
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
