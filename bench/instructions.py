#!/usr/bin/env python
"""Instructions per order, per replayed operation-log entry and per order through the daemon's
request path, counted by callgrind.

A machine's speed can change from one run to the next; the instruction count of the same
work does not, so this is the figure to compare two versions of the code by.  The orders are
those of `bench/matchengine_core.py` (with every side effect built), the log replayed is
theirs, and the request path is its `--server` (packets decoded, the operation log's
statements, the writer's batches and the replies made).  Each figure is the count of a run
less the count of the same run stopped before the measured loop, divided by the number of
orders.  Needs valgrind; takes a few minutes.

Usage: python bench/instructions.py [--orders N] [--modes MODE [MODE ...]]
"""

import argparse
import gc
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import matchengine_core as core  # noqa: E402
from matchengine import engine  # noqa: E402

MODES = ("orders", "replay", "server")


def inner(mode, count, measure):
    """The work callgrind counts: set up, then run the measured loop unless told not to."""
    eng = core.build(0)
    if mode == "server":
        feed, _ = core.server_path(eng, core.orders(count))
        core.collector_as_daemon()
        if measure:
            feed()
        return
    batch = core.orders(count)
    if mode == "orders":
        core.collector_as_daemon()
        if measure:
            core.run(eng, batch)
        return
    log = []
    core.run(eng, batch, log)
    parsed = [(engine.load_detail(detail), t) for detail, t in log]
    again = core.build(0)
    gc.disable()        # as the daemon replays
    if measure:
        replay = again.replay
        for (method, params), t in parsed:
            replay(method, params, t)


def collected(mode, count, measure):
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, os.path.abspath(__file__), "--inner", mode,
               "--orders", str(count)] + ([] if measure else ["--skip"])
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise SystemExit("instructions: valgrind is not installed (Debian: apt install "
                         "valgrind)") from None
    found = re.search(r"Collected\s*:\s*(\d+)", result.stderr)
    if found is None:
        raise SystemExit("instructions: no count in callgrind's output:\n" + result.stderr)
    return int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20000,
                        help="orders placed, then replayed (default 20000)")
    parser.add_argument("--modes", choices=MODES, nargs="+", default=MODES,
                        help="what to count (default: all)")
    parser.add_argument("--inner", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--skip", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.orders, not args.skip)
        return
    labels = {"orders": "per order with its side effects",
              "replay": "per replayed operation-log entry",
              "server": "per order through the request path"}
    counted = []
    for mode in args.modes:
        print("instructions: counting %s (%d)..." % (mode, args.orders), file=sys.stderr)
        per = (collected(mode, args.orders, True)
               - collected(mode, args.orders, False)) / args.orders
        counted.append("%s %s" % (format(round(per), ","), labels[mode]))
    print("instructions: %d orders: %s" % (args.orders, ", ".join(counted)))


if __name__ == "__main__":
    main()
