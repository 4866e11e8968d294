#!/usr/bin/env python
"""Deals per second into k-lines, and the latency of market.kline and market.status.

Feeds `--deals` deals messages (the matchengine's JSON text, spread over a day on two markets)
through the same parsing and bucket code the daemon runs on each Kafka message, then times
queries on the result.  Prints one line.

Usage: python bench/marketprice_deals.py [--deals N]
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marketprice.kline import Market, parse_deal  # noqa: E402

LIMITS = (604800, 525600, 87600)


def messages(count, start):
    rng = random.Random(3)
    out = []
    for n in range(1, count + 1):
        t = start + n * 86400.0 / count
        price = "%d.%02d" % (8000 + rng.randrange(-50, 50), rng.randrange(100))
        out.append('[%r, "%s", %d, %d, 1, 2, "%s", "0.%04d", "0", "0", %d, %d, "BTC", "BCH"]'
                   % (t, "BTCBCH" if n % 4 else "LTCBCH", n, n + 1, price,
                      rng.randrange(1, 9999), 1 + n % 2, n))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=200000,
                        help="deals messages fed (default: %(default)s)")
    args = parser.parse_args()
    now = int(time.time())
    start = now - 86400
    batch = messages(args.deals, start)
    markets = {"BTCBCH": Market("BTCBCH"), "LTCBCH": Market("LTCBCH")}
    t0 = time.perf_counter()
    for offset, text in enumerate(batch):
        deal = parse_deal(text)
        markets[deal[1]].apply_deal(deal[0], deal[2], deal[3], deal[5], deal[4], now, offset)
    rate = args.deals / (time.perf_counter() - t0)
    m = markets["BTCBCH"]
    timings = {}
    for name, query in (("kline 60 s over a day", lambda: m.kline(start, now, 60, now, LIMITS)),
                        ("kline 3600 s over a day",
                         lambda: m.kline(start, now, 3600, now, LIMITS)),
                        ("status 86400", lambda: m.status(86400, now))):
        t0 = time.perf_counter()
        for _ in range(20):
            query()
        timings[name] = (time.perf_counter() - t0) / 20 * 1000
    print("marketprice_deals: %d deals, %.0f deals/s into k-lines; %s" % (
        args.deals, rate, ", ".join("%s %.2f ms" % item for item in timings.items())))


if __name__ == "__main__":
    main()
