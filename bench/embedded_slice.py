#!/usr/bin/env python
"""A slice of the embedded exchange (SQLite): the child's staging and the daemon's copy.

The slice child writes every open order and balance into a staging file of its own
(`persist.stage_slice`); the daemon then copies them into its `trade_log` database on its
own connection, `persist.COPY_ROWS` rows a transaction, where the operation log's writes,
and so the acknowledgements, wait for one part at a time.  This builds a book of
`--resting` orders, stages its slice and copies it as the daemon does into a fresh database
with the project's schema, and prints the staging's time, the copy's and its longest part.

Usage: python bench/embedded_slice.py [--resting N]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.matchengine_core import build  # noqa: E402
from exchange.embedded import create_schema  # noqa: E402
from matchengine import persist  # noqa: E402
from utils import mysql  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resting", type=int, default=1000000, help="open orders")
    args = parser.parse_args()
    print("building a book of %d orders..." % args.resting, file=sys.stderr, flush=True)
    eng = build(args.resting)
    folder = tempfile.mkdtemp(prefix="embedded_slice_")
    try:
        path = os.path.join(folder, "trade_log.db")
        create_schema(path, ["trade_log"])
        db = mysql.connect_sqlite(path)
        staged = path + ".slice-1"
        started = time.perf_counter()
        persist.stage_slice(staged, eng)
        staging = time.perf_counter() - started
        connection = db.connect()
        ts, parts = 1793000000, []
        started = time.perf_counter()
        counts = persist.staged_tables(connection, db, staged, ts)
        for part, count in enumerate(counts):
            for start in range(0, count, persist.COPY_ROWS):
                began = time.perf_counter()
                persist.copy_staged_rows(connection, db, staged, ts, part, start)
                parts.append(time.perf_counter() - began)
        persist.staged_history(connection, db, ts, 1, (eng.order_id, eng.deal_id))
        persist.retire_slices(connection, db, ts, 86400)
        copying = time.perf_counter() - started
        connection.close()
        balances = sum(1 for _ in eng.balances.iter_entries())
        print("embedded_slice: %d orders, %d balance entries: staged by the child in %.2f s, "
              "copied by the daemon in %.2f s, %d parts of %d rows, the longest %.0f ms (its "
              "log writes wait for one part)" % (args.resting, balances, staging, copying,
                                                 len(parts), persist.COPY_ROWS,
                                                 max(parts) * 1000))
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
