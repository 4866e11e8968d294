#!/usr/bin/env python
"""Round trips per second of the binary RPC over loopback.

Starts an RPC server with an echo command in a child process, then drives it from this
process through `utils.rpc_client.RPCClient` with `--concurrency` requests in flight, and
prints one result line:

    rpc_echo: 100000 calls, c=16, 23456 round-trips/s, p50 0.61 ms, p99 1.20 ms

Usage: python bench/rpc_echo.py [--calls N] [--concurrency C] [--payload BYTES]
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ECHO = 1


def serve(port):
    from twisted.internet import reactor
    from utils.rpc_server import RPCServerFactory, RawJSON, listen_rpc

    factory = RPCServerFactory({ECHO: lambda params, request: RawJSON(
        request.packet.body.decode())}, max_pkg_size=1 << 20, heartbeat_check=False)
    listen_rpc(reactor, "tcp@127.0.0.1:%d" % port, factory).addCallback(
        lambda _: print("ready", flush=True))
    reactor.run()


def drive(port, calls, concurrency, payload):
    from twisted.internet import defer, reactor
    from utils.rpc_client import RPCClient

    client = RPCClient(reactor, "echo", ["tcp@127.0.0.1:%d" % port], 1 << 20)
    body = ('["%s"]' % ("x" * payload)).encode()
    latencies = []
    result = {}

    async def worker(count):
        for _ in range(count):
            start = time.perf_counter()
            await client.call_raw(ECHO, body, timeout=10.0)
            latencies.append(time.perf_counter() - start)

    async def main():
        client.start()
        while not client.connected:
            await defer.Deferred(lambda d: None).addTimeout(0.05, reactor).addErrback(
                lambda f: None)
        await worker(1000)  # warm up
        latencies.clear()
        start = time.perf_counter()
        share, extra = divmod(calls, concurrency)
        await defer.gatherResults([defer.Deferred.fromCoroutine(worker(share + (i < extra)))
                                   for i in range(concurrency)])
        result["elapsed"] = time.perf_counter() - start
        client.stop()

    def finish(outcome):
        reactor.stop()
        return outcome
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main()).addBoth(finish))
    reactor.run()
    latencies.sort()
    rate = calls / result["elapsed"]
    print("rpc_echo: %d calls, c=%d, payload %d B, %.0f round-trips/s, p50 %.3f ms, p99 %.3f ms"
          % (calls, concurrency, payload, rate, latencies[len(latencies) // 2] * 1000,
             latencies[int(len(latencies) * 0.99)] * 1000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100000,
                        help="round trips in all (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="calls in flight (default: %(default)s)")
    parser.add_argument("--payload", type=int, default=100, help="bytes of the echoed string")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    from utils.testing import free_port
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("rpc_echo: the server did not start")
        drive(port, args.calls, args.concurrency, args.payload)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
