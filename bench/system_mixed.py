#!/usr/bin/env python
"""The whole exchange under a mixed load: orders, cancels and queries over HTTP while 1,000
websocket subscribers receive the pushes.  Prints throughput, latency per kind of call, push
delays and the memory of every server process.

By default every daemon runs as its own process against the local MariaDB, Redis + sentinel
and Kafka broker (`python depends/services.py up`); `--embedded` runs `twistd -n exchange`
instead.  The load comes from this process, on the same machine.

Usage: python bench/system_mixed.py [--seconds 30] [--concurrency 8] [--subscribers 1000]
                                    [--embedded]
"""

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils import testing  # noqa: E402

MARKET = "BTCBCH"
USERS = 100
MIX = [("order.put_limit", 50), ("order.cancel", 20), ("order.depth", 10),
       ("balance.query", 10), ("market.last", 5), ("order.pending", 5)]


def rss_mb(pid):
    with contextlib.suppress(OSError):      # the process is gone: nothing to count
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return 0.0


REDIS_DB = 9


def start_services(workdir):
    """Every daemon as its own process; returns (pids by name, http port, ws port, stop).

    Each run starts from nothing: its own Kafka broker (topics and offsets), fresh databases
    and an emptied Redis database, so that no deal of an earlier run (whose ids the new
    matchengine counts again from 1) is in marketprice's state.
    """
    sentinel = testing.require("sentinel")
    kafka = testing.KafkaBroker().start()
    broker = kafka.address
    testing.redis_command(REDIS_DB, "FLUSHDB")
    log_db = testing.create_database("benchlog", ("trade_log",))
    history_db = testing.create_database("benchhist", ("trade_history",), True)
    configs = testing.exchange_configs(broker, log_db, history_db,
                                       {"name": sentinel["name"], "addr": sentinel["addr"],
                                        "db": REDIS_DB})
    daemons = []
    for name, config, port in configs:
        daemon = testing.DaemonProcess(name, config, workdir).start()
        daemons.append(daemon)
        daemon.wait_port(port)
    port = {name: p for name, _, p in configs}

    def stop():
        for daemon in reversed(daemons):
            daemon.stop()
        for name in (log_db, history_db):
            testing.drop_database(name)
        testing.redis_command(REDIS_DB, "FLUSHDB")
        kafka.stop()
    return ({d.module: d.proc.pid for d in daemons}, port["accesshttp"], port["accessws"],
            stop)


def start_embedded(workdir):
    from exchange.test.test_embedded import Exchange
    exchange = Exchange(os.path.join(workdir, "data"))
    exchange.start()
    return ({"exchange": exchange.proc.pid}, exchange.ports["accesshttp"],
            exchange.ports["accessws"], lambda: exchange.stop(signal.SIGINT))


def call(port, method, *params):
    body = json.dumps({"id": 1, "method": method, "params": list(params)}).encode()
    with urllib.request.urlopen("http://127.0.0.1:%d/" % port, body, timeout=10) as r:
        return json.loads(r.read())


def wait_ready(port):
    def ready():
        try:
            return call(port, "market.last", MARKET).get("error") is None
        except OSError:
            return False
    if not testing.wait_until(ready, 60, 0.2):
        raise SystemExit("the exchange did not answer market.last within 60 s")


def requests_stream(rng, pending):
    """An endless mix of calls; cancels pick orders this run placed."""
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    while True:
        kind = rng.choice(kinds)
        user = rng.randrange(1, USERS + 1)
        if kind == "order.put_limit":
            side = rng.choice((1, 2))
            # most orders rest near the middle; some cross
            price = 8000 + rng.randrange(-40, 41) * (1 if side == 1 else -1) + rng.choice(
                (0, 0, 0, 30 if side == 2 else -30))
            yield kind, [user, MARKET, side, "%.4f" % (rng.randrange(1, 200) / 1000),
                         str(price), "0.002", "0.001", "bench"]
        elif kind == "order.cancel":
            if not pending:
                continue
            user, order_id = pending.pop(rng.randrange(len(pending)))
            yield kind, [user, MARKET, order_id]
        elif kind == "order.depth":
            yield kind, [MARKET, 20, "0"]
        elif kind == "balance.query":
            yield kind, [user]
        elif kind == "market.last":
            yield kind, [MARKET]
        else:
            yield kind, [user, MARKET, 0, 10]


def drive(http_port, ws_port, seconds, concurrency, subscribers):
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from bench.http_client import KeepAliveClient

    rng = random.Random(7)
    pending = []
    stream = requests_stream(rng, pending)
    stats = {"latency": {}, "errors": {}, "pushes": 0, "push_delay": []}
    state = {"measuring": False, "stop": False}
    opened = []

    class Subscriber(WebSocketClientProtocol):
        def onOpen(self):
            opened.append(self)
            self.sendMessage(b'{"id": 1, "method": "deals.subscribe", "params": ["BTCBCH"]}')
            self.sendMessage(b'{"id": 2, "method": "depth.subscribe", '
                             b'"params": ["BTCBCH", 10, "0"]}')

        def onMessage(self, payload, is_binary):
            if not state["measuring"]:
                return
            message = json.loads(payload)
            if message.get("method") in ("deals.update", "depth.update"):
                stats["pushes"] += 1
                if message["method"] == "deals.update":
                    stats["push_delay"].append(time.time() - message["params"][1][0]["time"])

    def next_request():
        if state["stop"]:
            return None
        kind, params = next(stream)
        return {"id": 1, "method": kind, "params": params}

    def replied(request, reply, elapsed):
        kind = request["method"]
        if state["measuring"]:
            stats["latency"].setdefault(kind, []).append(elapsed)
            if reply.get("error") is not None:
                stats["errors"][kind] = stats["errors"].get(kind, 0) + 1
        if kind == "order.put_limit" and reply.get("error") is None:
            if reply["result"]["left"] not in ("0", "0e-8"):
                pending.append((request["params"][0], reply["result"]["id"]))

    def sleep(s):
        d = defer.Deferred()
        reactor.callLater(s, d.callback, None)
        return d

    async def main():
        factory = WebSocketClientFactory("ws://127.0.0.1:%d/" % ws_port)
        factory.protocol = Subscriber
        for i in range(subscribers):
            reactor.connectTCP("127.0.0.1", ws_port, factory)
            if i % 100 == 99:
                await sleep(0.1)
        deadline = time.time() + 60
        while len(opened) < subscribers and time.time() < deadline:
            await sleep(0.2)
        print("system_mixed: %d websocket subscribers connected" % len(opened), flush=True)
        done = []
        for _ in range(concurrency):
            d = defer.Deferred()
            done.append(d)
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", http_port),
                                  KeepAliveClient(next_request, replied, d))
        await sleep(2.0)                        # warm up
        state["measuring"] = True
        start = time.perf_counter()
        for second in range(int(seconds)):
            await sleep(1.0)
            if second % 10 == 9:
                count = sum(len(v) for v in stats["latency"].values())
                print("system_mixed: %d s, %d calls" % (second + 1, count), flush=True)
        state["measuring"] = False
        elapsed = time.perf_counter() - start
        state["stop"] = True
        await defer.gatherResults(done)
        for subscriber in opened:
            subscriber.sendClose()
        await sleep(0.5)
        return elapsed, len(opened)

    result = {}

    def finish(outcome):
        result["outcome"] = outcome
        reactor.stop()
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main()).addBoth(finish))
    reactor.run()
    outcome = result["outcome"]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome, stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30,
                        help="length of the run (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP connections")
    parser.add_argument("--subscribers", type=int, default=1000,
                        help="websocket connections subscribed (default: %(default)s)")
    parser.add_argument("--embedded", action="store_true",
                        help="run twistd -n exchange instead of the separate daemons")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="system-bench-")
    start = start_embedded if args.embedded else start_services
    pids, http_port, ws_port, stop = start(workdir)
    try:
        wait_ready(http_port)
        for user in range(1, USERS + 1):
            call(http_port, "balance.update", user, "BTC", "deposit", user * 2, "1000000", {})
            call(http_port, "balance.update", user, "BCH", "deposit", user * 2 + 1,
                 "10000000000", {})
        before = {name: rss_mb(pid) for name, pid in pids.items()}
        (elapsed, subscribers), stats = drive(http_port, ws_port, args.seconds,
                                              args.concurrency, args.subscribers)
        after = {name: rss_mb(pid) for name, pid in pids.items()}
        total = sum(len(v) for v in stats["latency"].values())
        mode = "embedded" if args.embedded else "daemons"
        print("system_mixed: %s, %d HTTP connections, %d subscribers, %.0f s: %.0f calls/s, "
              "%d pushes received (%.0f/s)" % (mode, args.concurrency, subscribers, elapsed,
                                               total / elapsed, stats["pushes"],
                                               stats["pushes"] / elapsed))
        for kind, _ in MIX:
            lat = sorted(stats["latency"].get(kind, []))
            if lat:
                print("system_mixed:   %-16s %6.0f/s  p50 %6.2f ms  p99 %7.2f ms  %d refused"
                      % (kind, len(lat) / elapsed, lat[len(lat) // 2] * 1000,
                         lat[int(len(lat) * 0.99)] * 1000, stats["errors"].get(kind, 0)))
        delays = sorted(stats["push_delay"])
        if delays:
            print("system_mixed:   deals.update delay p50 %.1f ms, p99 %.1f ms (%d pushes)" % (
                delays[len(delays) // 2] * 1000, delays[int(len(delays) * 0.99)] * 1000,
                len(delays)))
        print("system_mixed:   memory (RSS MB) " + ", ".join(
            "%s %.0f -> %.0f" % (name, before[name], after[name]) for name in pids))
    finally:
        stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
