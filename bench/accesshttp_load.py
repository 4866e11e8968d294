#!/usr/bin/env python
"""order.put_limit through accesshttp: accepted orders/s, refused, p50/p99 per concurrency.

Starts a matchengine (durable log, history and Kafka on the local services) and accesshttp as
real daemons on fresh databases, deposits for 100 users, then for each concurrency level
sends limit orders (half of them crossing) over that many keep-alive HTTP connections, one
request in flight per connection, and prints one line per level.  `--method market.list`
measures the gateway on a read instead.  Needs `python depends/services.py up`.

Usage: python bench/accesshttp_load.py [--orders N] [--concurrency 1,4,16] [--method M]
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.matchengine_core import orders  # noqa: E402
from utils import testing  # noqa: E402


def start_daemons(workdir, workers=1):
    log_db = testing.create_database("benchlog", ("trade_log",))
    history_db = testing.create_database("benchhist", ("trade_history",), True)
    me_port, http_port = testing.free_port(), testing.free_port()
    me = testing.DaemonProcess("matchengine", testing.base_config(
        "matchengine", svr={"bind": ["tcp@127.0.0.1:%d" % me_port], "max_pkg_size": 1 << 20,
                            "heartbeat_check": False},
        cli="tcp@127.0.0.1:%d" % testing.free_port(), db_log=testing.mysql_section(log_db),
        db_history=testing.mysql_section(history_db), brokers=testing.require("kafka")),
        workdir).start()
    backend = {"max_pkg_size": 2000000}
    gw = testing.DaemonProcess("accesshttp", testing.base_config(
        "accesshttp", svr={"bind": ["tcp@127.0.0.1:%d" % http_port], "max_pkg_size": 102400},
        monitor={"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024},
        timeout=10.0, worker_num=workers,
        matchengine=dict(backend, name="matchengine", addr=["tcp@127.0.0.1:%d" % me_port]),
        readhistory=dict(backend, name="readhistory",
                         addr=["tcp@127.0.0.1:%d" % testing.free_port()]),
        marketprice=dict(backend, name="marketprice",
                         addr=["tcp@127.0.0.1:%d" % testing.free_port()])), workdir).start()
    me.wait_port(me_port)
    gw.wait_port(http_port)
    time.sleep(1.5)
    return [me, gw], [log_db, history_db], http_port


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20000, help="requests per level")
    parser.add_argument("--concurrency", default="1,4,16",
                        help="HTTP connections of each level, comma-separated "
                             "(default: %(default)s)")
    parser.add_argument("--method", default="order.put_limit",
                        help="the method sent (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="accesshttp worker_num (above 1: a listener and its workers)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    workdir = tempfile.mkdtemp(prefix="http-bench-")
    daemons, databases, port = start_daemons(workdir, args.workers)
    try:
        import urllib.request
        for user in range(1, 101):
            for n, (asset, amount) in enumerate((("BTC", "100000000"),
                                                 ("BCH", "100000000000"))):
                body = json.dumps({"id": 1, "method": "balance.update", "params": [
                    user, asset, "deposit", user * 2 + n, amount, {}]}).encode()
                urllib.request.urlopen("http://127.0.0.1:%d/" % port, body).read()
        from twisted.internet import defer, reactor
        results = []

        async def all_levels():
            for level in levels:
                if args.method == "order.put_limit":
                    batch = orders(args.orders, seed=random.randrange(1 << 30))
                else:
                    batch = [[] for _ in range(args.orders)]
                requests = [{"id": i + 1, "method": args.method, "params": p}
                            for i, p in enumerate(batch)]
                results.append((level, await drive(port, requests, level)))
        d = defer.Deferred.fromCoroutine(all_levels())
        failures = []
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
        if failures:
            failures[0].raiseException()
        for level, stats in results:
            lat = sorted(stats["latency"])
            print("accesshttp_load: %s, %d worker(s), c=%d, %d requests: %.0f accepted/s, "
                  "%d refused, p50 %.2f ms, p99 %.2f ms" % (
                      args.method, args.workers, level, len(lat),
                      stats["accepted"] / stats["elapsed"], stats["refused"],
                      lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000))
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
        for name in databases:
            testing.drop_database(name)


async def drive(port, requests, concurrency):
    """Send `requests` over `concurrency` keep-alive connections, one in flight each."""
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from bench.http_client import KeepAliveClient

    stats = {"accepted": 0, "refused": 0, "latency": []}

    def replied(request, reply, elapsed):
        stats["latency"].append(elapsed)
        stats["accepted" if reply.get("error") is None else "refused"] += 1

    done = []
    start = time.perf_counter()
    for i in range(concurrency):
        d = defer.Deferred()
        done.append(d)
        items = requests[i::concurrency]
        client = KeepAliveClient(lambda items=items: items.pop() if items else None, replied, d)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    await defer.gatherResults(done)
    stats["elapsed"] = time.perf_counter() - start
    return stats


if __name__ == "__main__":
    main()
