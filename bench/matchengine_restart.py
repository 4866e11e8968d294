#!/usr/bin/env python
"""Memory of a real matchengine daemon holding N resting orders, and its restart from a slice.

Starts the daemon as bench/matchengine_rpc.py does (fresh MariaDB databases, the Kafka broker
of `depends/run/services.json`), deposits for 100 users and places `--orders` limit orders on
BTCBCH that all rest (asks above 10,000, bids below, on `--levels` prices a side), then,
once the history and messages are written, reads the daemon's RSS.  It makes a slice (CLI
`makeslice`), stops the daemon (SIGTERM), starts it again and times it until its log says
it is ready, reading its RSS then.  Bytes an order are the RSS above that of the same
daemon before its first order, divided by the orders; the RSS is the daemon's process
alone, without its writer process.

Last, the state the restarted daemon shows is compared, byte for byte, with the state read
before the slice: every user's balances, each side of the book (its count and first page),
the CLI's `market summary`, the depth, and the order.pending_detail of a sample of the
orders.

Progress goes to stderr and one result line to stdout; the exit status is 1 when a check
fails (an order refused, the slice failed, the stop timed out, the state differs).  Needs
`python depends/services.py up`.

Usage: python bench/matchengine_restart.py [--orders N] [--levels N] [--sample N]
       [--clients C] [--depth D]
"""

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.matchengine_rpc import daemon_config, drive  # noqa: E402
from bench.system_mixed import rss_mb  # noqa: E402
from matchengine.engine import BALANCE_QUERY, BOOK, DEPTH, LIST_MAX, PENDING_DETAIL  # noqa: E402
from matchengine.market import ASK, BID  # noqa: E402
from utils import testing  # noqa: E402

MARKET = "BTCBCH"
USERS = range(1, 101)         # the users bench.matchengine_rpc.drive deposits for
MID = 10000
T0 = time.monotonic()


def say(text):
    print("[%6.1f s] %s" % (time.monotonic() - T0, text), file=sys.stderr, flush=True)


class Ticker:
    """Calls `report()` every `seconds` from a thread of its own, from `start()` (or the
    start of a `with` block) until `stop()`."""

    def __init__(self, seconds, report):
        self.seconds, self.report = seconds, report
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stopped.wait(self.seconds):
            with contextlib.suppress(OSError):      # a report missed is no failure
                self.report()

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def resting_orders(count, levels, seed=7):
    """order.put_limit parameters that never cross: asks on MID+1..MID+levels, bids on
    MID-levels..MID-1, amounts of 0.01 to 3, alternately."""
    rng = random.Random(seed)
    prices = {ASK: [str(MID + k) for k in range(1, levels + 1)],
              BID: [str(MID - k) for k in range(1, levels + 1)]}
    amounts = ["%d.%02d" % divmod(n, 100) for n in range(1, 301)]
    return [[rng.choice(USERS), MARKET, side, rng.choice(amounts), rng.choice(prices[side]),
             "0.002", "0.001", "bench"]
            for side in (ASK if i & 1 else BID for i in range(count))]


def cli(port, line):
    """The CLI's whole answer to one command line."""
    with socket.create_connection(("127.0.0.1", port), 60) as sock:
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = iter(lambda: sock.recv(1 << 16), b"")
        return b"".join(chunks).decode()


def status(cli_port):
    """{name: number} of the CLI's `status` (order last ID, history pending, ...)."""
    return {name: int(value) for name, value in
            re.findall(r"^(.+?):? (\d+)$", cli(cli_port, "status"), re.M)}


class Daemon(testing.DaemonProcess):
    """The matchengine run by twistd in the foreground; `stop()` ends the writer processes
    it had too, should it have died without ending them."""

    def __init__(self, config, workdir):
        super().__init__("matchengine", config, workdir)
        self.writers = set()

    def lines(self):
        try:
            return self.output()
        except FileNotFoundError:
            return []

    def wait_log(self, since, pattern, seconds):
        """The match of `pattern` in the output after its line `since`, waited for up to
        `seconds`; SystemExit if the daemon ends or the time is up."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.lines()[since:]:
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                raise SystemExit("the daemon exited (%s) waiting for %r"
                                 % (self.proc.returncode, pattern))
            time.sleep(0.05)
        raise SystemExit("no %r in the daemon's log within %d s" % (pattern, seconds))

    def start_ready(self, seconds):
        """Start it; (seconds until its log said it was ready, the seconds it logged)."""
        since, started = len(self.lines()), time.monotonic()
        self.start()
        m = self.wait_log(since, r"matchengine ready in ([0-9.]+) s", seconds)
        self.writers.update(testing.children(self.proc.pid))
        return time.monotonic() - started, float(m.group(1))

    def stop(self, sig=None):
        code = super().stop(sig)
        for pid in self.writers:
            with contextlib.suppress(OSError):
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if b"matchengine.writer" in f.read() and not testing.ended(pid):
                        os.kill(pid, signal.SIGTERM)
        return code


def state(port, cli_port, sample):
    """What the daemon shows: {name: [reply body]}."""
    reads = {"balances": [(BALANCE_QUERY, [user]) for user in USERS],
             "book": [(BOOK, [MARKET, side, 0, LIST_MAX]) for side in (ASK, BID)],
             "depth": [(DEPTH, [MARKET, LIST_MAX, interval]) for interval in ("0", "10")],
             "pending_detail": [(PENDING_DETAIL, [MARKET, order]) for order in sample]}
    with testing.connect(port) as sock:
        shown = {name: [testing.rpc_call(sock, command, json.dumps(params).encode())
                        for command, params in requests]
                 for name, requests in reads.items()}
    shown["market summary"] = [cli(cli_port, "market summary").encode()]
    return shown


def unanswered(shown):
    """What in a state read is not an answer: no reply, an error, an order not found."""
    return ["%s %d: %r" % (name, i, body and body[:120]) for name, bodies in shown.items()
            if name != "market summary" for i, body in enumerate(bodies)
            if body is None or not body.startswith(b'{"error": null, "result": {')]


def differences(before, after):
    """What differs between two state reads, with the first difference of each kind."""
    out = []
    for name, bodies in before.items():
        differ = [(i, a or b"", b or b"") for i, (a, b) in enumerate(zip(bodies, after[name]))
                  if a != b]
        if differ:
            i, a, b = differ[0]
            at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            out.append("%s: %d of %d differ, the first (%d) at byte %d: %r -> %r"
                       % (name, len(differ), len(bodies), i, at, a[max(at - 40, 0):at + 40],
                          b[max(at - 40, 0):at + 40]))
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs `python depends/services.py up`.  Placing a million orders takes about "
               "half a minute, writing their slice as long; the daemon and this process take "
               "about 900 MB each.")
    parser.add_argument("--orders", type=int, default=1000000,
                        help="resting orders placed (default: %(default)s)")
    parser.add_argument("--levels", type=int, default=300,
                        help="prices a side they rest on, fewer than %d "
                             "(default: %%(default)s)" % MID)
    parser.add_argument("--sample", type=int, default=1000,
                        help="orders whose order.pending_detail is compared "
                             "(default: %(default)s)")
    parser.add_argument("--clients", type=int, default=4,
                        help="RPC connections placing them (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=50,
                        help="requests in flight on each (default: %(default)s)")
    args = parser.parse_args()
    if args.orders < 1 or not 1 <= args.levels < MID:
        parser.error("--orders must be positive and --levels within 1..%d" % (MID - 1))

    port = testing.free_port()
    cfg, databases = daemon_config(port, True)
    cfg["slice_interval"] = 1 << 30      # no hourly slice besides the one asked for
    cli_port = int(cfg["cli"].rsplit(":", 1)[1])
    workdir = tempfile.mkdtemp(prefix="me-restart-")
    daemon = Daemon(cfg, workdir)
    passed = False
    try:
        line, passed = run(args, daemon, port, cli_port)
    finally:
        daemon.stop()
        for name in databases:
            testing.drop_database(name)
        if passed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say("the daemon's output is kept in %s" % os.path.join(workdir, "matchengine.out"))
    print(line)
    return 0 if passed else 1


def run(args, daemon, port, cli_port):
    """The measurements; (the result line, whether every check passed)."""
    wall, _ = daemon.start_ready(120)
    say("daemon ready in %.1f s; %d orders to place" % (wall, args.orders))
    problems = []
    pid, base = daemon.proc.pid, []

    def placing():
        say("%d orders placed, daemon RSS %.0f MB"
            % (status(cli_port)["order last ID"], rss_mb(pid)))
    ticker = Ticker(5, placing)

    def on_start():
        base.append(rss_mb(pid))
        ticker.start()
    try:
        stats = drive(port, resting_orders(args.orders, args.levels), args.clients, args.depth,
                      on_start)
    finally:
        ticker.stop()
    rate = stats["accepted"] / stats["elapsed"]
    say("%d placed in %.1f s (%.0f/s), %d refused"
        % (stats["accepted"], stats["elapsed"], rate, stats["refused"]))
    if stats["refused"]:
        problems.append("%d orders refused" % stats["refused"])

    def backlog():
        return sum(n for name, n in status(cli_port).items() if "pending" in name)
    with Ticker(5, lambda: say("history and messages: %d still to write" % backlog())):
        if not testing.wait_until(lambda: backlog() == 0, 600, 0.5):
            problems.append("history and messages not written after 600 s")
    live = rss_mb(pid)
    last = status(cli_port)["order last ID"]
    sample = sorted(random.Random(11).sample(range(1, last + 1), min(args.sample, last)))
    before = state(port, cli_port, sample)
    problems += ["before the restart: " + p for p in unanswered(before)[:3]]
    say("RSS %.0f MB with the orders (%.0f before them); state read" % (live, base[0]))

    since, started = len(daemon.lines()), time.monotonic()
    answer = cli(cli_port, "makeslice")
    if answer != "OK\n":
        problems.append("makeslice answered %r" % answer)
    with Ticker(5, lambda: say("slice being written, %.0f s" % (time.monotonic() - started))):
        sliced = daemon.wait_log(since, r"slice \d+ (written|failed)", 3600)
    slice_seconds = time.monotonic() - started
    say("%s in %.1f s" % (sliced.group(0), slice_seconds))
    if sliced.group(1) != "written":
        problems.append(sliced.group(0))

    stopping = time.monotonic()
    code = daemon.stop()        # SIGTERM, SIGKILL after 60 s
    say("stopped in %.1f s, exit status %d" % (time.monotonic() - stopping, code))
    if code != 0:
        problems.append("the stop ended with exit status %d" % code)

    with Ticker(5, lambda: say("restarting, RSS %.0f MB" % rss_mb(daemon.proc.pid))):
        ready, logged = daemon.start_ready(1800)
    restarted = rss_mb(daemon.proc.pid)
    say("ready again in %.1f s (%.2f s by its log) at %.0f MB" % (ready, logged, restarted))
    changed = differences(before, state(port, cli_port, sample))

    def per_order(rss):
        return (rss - base[0]) * 2**20 / args.orders
    line = ("matchengine_restart: %d orders, placed at %.0f orders/s; RSS live %.0f MB "
            "(%.0f bytes an order); slice written in %.1f s; ready again in %.1f s at %.0f MB "
            "(%.0f bytes an order); state after restart %s"
            % (args.orders, rate, live, per_order(live), slice_seconds, ready, restarted,
               per_order(restarted), "DIFFERENT: " + "; ".join(changed) if changed else "equal"))
    if problems:
        line += "; FAILED: " + "; ".join(problems)
    return line, not (changed or problems)


if __name__ == "__main__":
    sys.exit(main())
