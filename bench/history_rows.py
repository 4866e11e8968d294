#!/usr/bin/env python
"""MariaDB's CPU per history row, by how many rows the writer gathers at a time and how it
hands them over.

The history rows of `--orders` orders of `bench/matchengine_core.py` (about ten an order,
over the 500 shards of the five history tables) are written into a fresh `trade_history`
database by the writer's own connection (`matchengine.writer.Connection`), one group of
`--groups` rows at a time, each group one transaction (`--by`): as the writer does
("writer": a LOAD DATA LOCAL for a table shard of `matchengine.writer.LOAD_ROWS` rows or
more, multi-row INSERTs for the others), every shard by LOAD DATA ("load"), or by INSERTs
("insert").  Prints a line per group size and way: MariaDB's
CPU and this process's (the writer's part: the rows' text, the protocol) per row and per
order, read from /proc.  Needs `python depends/services.py up`.

Usage: python bench/history_rows.py [--orders N] [--groups N [N ...]]
                                   [--by {writer,load,insert} ...]
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import cpu  # noqa: E402
from bench.matchengine_core import START, build, orders  # noqa: E402
from matchengine.operlog import stamp  # noqa: E402
from matchengine import writer  # noqa: E402
from utils import rpc, testing  # noqa: E402


def history_of(count):
    """The history rows the engine makes for `count` orders."""
    eng = build(0)
    put_limit, take = eng.handlers[201], eng.effects.take
    take()
    rows, clock = [], START + 1.0
    for params in orders(count, seed=5):
        clock += 0.0001
        try:
            put_limit(params, stamp(clock), True)
        except rpc.RPCError:
            continue
        rows += take()[0]
    return rows


def insert(rows, group, mariadb, by):
    """(MariaDB CPU seconds, this process's CPU seconds, wall seconds) of writing `rows` by
    `group`, `by` "writer", "load" or "insert"."""
    info = testing.require("mysql")
    name = testing.create_database("benchrows", ("trade_history",), True)
    connection = writer.Connection({"host": info["host"], "port": int(info["port"]),
                                    "user": info["user"], "pass": info["password"],
                                    "name": name})
    try:
        connection.run(["SELECT 1"])
        connection.loads = by != "insert"
        if by == "load":
            connection.load_rows = 1
        before, start = cpu.process_cpu(mariadb), time.perf_counter()
        own = time.process_time()
        for first in range(0, len(rows), group):
            connection.run(writer.shard_rows(rows[first:first + group]))
        return (cpu.process_cpu(mariadb) - before, time.process_time() - own,
                time.perf_counter() - start)
    finally:
        connection.conn.close()
        testing.drop_database(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20000,
                        help="orders whose history rows are written (default: %(default)s)")
    parser.add_argument("--groups", type=int, nargs="+", default=[3000, 20000, 200000],
                        help="rows written together (default: 3000 20000 200000)")
    parser.add_argument("--by", nargs="+", choices=("writer", "load", "insert"),
                        default=["writer", "load", "insert"],
                        help="how the rows go in (default: each way)")
    args = parser.parse_args()
    mariadb = cpu.local_services().get("MariaDB")
    if mariadb is None:
        raise SystemExit("history_rows: no local MariaDB process found")
    rows = history_of(args.orders)
    for group in args.groups:
        for by in args.by:
            used, own, wall = insert(rows, group, mariadb, by)
            print("history_rows: %d orders, %d rows in groups of %d by %s: MariaDB %.1f us a "
                  "row, %.1f us an order; writer %.1f us an order; %.2f s"
                  % (args.orders, len(rows), group, by, used / len(rows) * 1e6,
                     used / args.orders * 1e6, own / args.orders * 1e6, wall), flush=True)


if __name__ == "__main__":
    main()
