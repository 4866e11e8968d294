#!/usr/bin/env python
"""marketprice's start and retention with a full week of second k-lines in Redis.

Writes `--seconds` second buckets of one market (604,800: a deal every second for the
`sec_max` week) into database 9 of the local Redis (`python depends/services.py up`), then
times what the daemon does with them: loading the market at start (HSCAN in parts, k-lines
parsed, buckets sorted), and an hour later the retention, which drops an hour of buckets from
memory and deletes their fields from Redis.  The database is emptied before and after.
Prints one line.

Usage: python bench/marketprice_load.py [--seconds N]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402

from bench import loop  # noqa: E402
from marketprice import config  # noqa: E402
from marketprice.server import MarketPrice  # noqa: E402
from utils import redisdb, testing  # noqa: E402

NAME = "BTCBCH"
DB = 9


async def run(seconds):
    out = {}
    info = testing.require("redis")
    store = redisdb.Plain(info["host"], info["port"], db=DB)
    conn = await store.connect()
    try:
        await conn.execute_command("FLUSHDB")
        now = int(time.time())
        kline = json.dumps(["8000", "8001.5", "8010", "7990.25", "1.5", "12001.3"])
        first = now - seconds + 1
        for start in range(0, seconds, 20000):
            await conn.hmset("k:%s:1s" % NAME, {
                str(first + n): kline for n in range(start, min(start + 20000, seconds))})
        clock = [now]
        mp = MarketPrice(config.load_data({
            "log": {"path": "log/marketprice", "flag": "fatal"},
            "svr": {"bind": ["tcp@127.0.0.1:1"], "max_pkg_size": 1000000},
            "deals": {"brokers": "127.0.0.1:1", "topic": "deals"},
            "redis": {"name": "unused", "addr": ["127.0.0.1:1"]},
            "accesshttp": "http://127.0.0.1:1/"}), store, None, None, reactor=reactor,
            clock_time=lambda: clock[0], listen=False)
        loader = await store.connect()
        start = time.perf_counter()
        market = mp.markets[NAME] = await mp._load_market(loader, NAME, now)
        out["load"] = time.perf_counter() - start
        loader.disconnect()
        out["buckets"] = len(market.buckets["1s"])
        clock[0] += 3600
        start = time.perf_counter()
        await mp.expire()
        out["expire"] = time.perf_counter() - start
        out["left"] = await conn.hlen("k:%s:1s" % NAME)
    finally:
        await conn.execute_command("FLUSHDB")
        conn.disconnect()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=604800,
                        help="second buckets in Redis (default 604800, a week)")
    args = parser.parse_args()
    out = loop.run(run, args.seconds)
    print("marketprice_load: %d second buckets: loaded in %.2f s; an hour later the retention "
          "took %.0f ms (memory and Redis), %d fields left" % (
              out["buckets"], out["load"], out["expire"] * 1e3, out["left"]))


if __name__ == "__main__":
    main()
