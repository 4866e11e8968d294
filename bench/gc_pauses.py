#!/usr/bin/env python
"""The garbage collector's pauses while the state grows after start, as in the daemon.

The daemon freezes what it loaded at start (`gc.freeze()`) and then sets the collector's
thresholds (`matchengine.server.GC_YOUNG_THRESHOLD`); whatever is made afterwards is the
collector's to walk.  This places `--orders` resting orders (asks far above, bids far below
the market, so that none trades), then deposits for `--users` new users in two assets, and
prints for each phase how many collections of each generation ran and the longest pause.
Pauses are timed with `gc.callbacks`.

Usage: python bench/gc_pauses.py [--orders N] [--users N] [--threshold N]
"""

import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.matchengine_core import build  # noqa: E402
from matchengine import server  # noqa: E402


class Pauses:
    """Collections seen through `gc.callbacks`: (seconds, generation) each."""

    def __init__(self):
        self.seen = []
        self._started = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seen.append((time.perf_counter() - self._started, info["generation"]))

    def report(self, label, elapsed):
        parts = []
        for generation in (0, 1, 2):
            pauses = [p for p, g in self.seen if g == generation]
            parts.append("gen%d %d, longest %.1f ms" % (
                generation, len(pauses), max(pauses, default=0) * 1000))
        print("gc_pauses: %s in %.1f s: %s" % (label, elapsed, "; ".join(parts)), flush=True)
        self.seen = []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000000,
                        help="resting orders built (default: %(default)s)")
    parser.add_argument("--users", type=int, default=500000,
                        help="users holding balances (default: %(default)s)")
    parser.add_argument("--threshold", type=int, default=server.GC_YOUNG_THRESHOLD,
                        help="the youngest generation's threshold (default: the daemon's)")
    args = parser.parse_args()
    eng = build(0)
    gc.collect()
    gc.freeze()
    gc.set_threshold(args.threshold, *gc.get_threshold()[1:])
    pauses = Pauses()
    gc.callbacks.append(pauses)
    rng, take = random.Random(1), eng.effects.take
    start = time.perf_counter()
    for i in range(args.orders):
        side = 1 + (i & 1)
        price = 20000 + rng.randrange(1, 5000) if side == 1 else 2000 - rng.randrange(1, 1900)
        eng.execute(201, [rng.randrange(1, 101), "BTCBCH", side, "1", str(price), "0.002",
                          "0.001", "deep"], 1.0)
        take()
    pauses.report("%d resting orders" % args.orders, time.perf_counter() - start)
    start = time.perf_counter()
    for user in range(1000, 1000 + args.users):
        for asset in ("BTC", "BCH"):
            eng.execute(102, [user, asset, "deposit", user, "1", {}], 1.0)
        take()
    pauses.report("then %d users' deposits" % args.users, time.perf_counter() - start)


if __name__ == "__main__":
    main()
