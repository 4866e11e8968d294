#!/usr/bin/env python
"""The reads and timers of the matchengine that visit every balance entry or update key.

Builds an engine with `--users` users holding BTC and BCH (two balance entries each) and a
balance.update key per entry, then times, each on its own: asset.summary computed in line
(what an engine under 20,000 entries does), the pause of the fork that answers it above
that and the time until the child's answer, and the minute timer that forgets update keys
a day old.  Prints one line.

Usage: python bench/matchengine_reads.py [--users N]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import loop  # noqa: E402
from matchengine import config, engine  # noqa: E402


def build(users):
    eng = engine.Engine(*config.example_tables())
    for user in range(1, users + 1):
        # a second apart: the update keys are recorded in time order, as in the daemon
        eng.execute(102, [user, "BTC", "deposit", user, "1.5", {}], 1000.0 + user)
        eng.execute(102, [user, "BCH", "deposit", user, "100", {}], 1000.0 + user)
        if user % 10000 == 0:
            eng.effects.take()
            print("matchengine_reads: %d users" % user, file=sys.stderr, end="\r")
    eng.effects.take()
    print(file=sys.stderr)
    return eng


async def forked_summary(eng):
    """(fork pause, time until the answer) of asset.summary answered by a forked child."""
    from twisted.internet import reactor

    from utils import forked
    from utils.jsonfmt import dumps
    names = eng.summary_assets([])
    start = time.perf_counter()
    d = forked.in_child(lambda: dumps(eng.summaries(names)), reactor)
    pause = time.perf_counter() - start
    await d
    return pause, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=500000,
                        help="users, two balance entries each (default 500000)")
    args = parser.parse_args()
    eng = build(args.users)
    entries = len(eng.balances.entries)
    start = time.perf_counter()
    eng.execute(105, [], 2.0)
    inline = time.perf_counter() - start
    pause, answer = loop.run(forked_summary, eng)
    # a minute past the day of the first 60 users: their keys expire, none of the others
    start = time.perf_counter()
    expired = eng.expire_dedup(1000.0 + 60 + engine.DEDUP_KEEP)
    expiry = time.perf_counter() - start
    print("matchengine_reads: %d balance entries: asset.summary in line %.0f ms; forked: "
          "%.1f ms pause, answer after %.0f ms; update-key timer %.2f ms (%d of %d keys "
          "expired)" % (entries, inline * 1e3, pause * 1e3, answer * 1e3, expiry * 1e3,
                        expired, len(eng.dedup) + expired))


if __name__ == "__main__":
    main()
