#!/usr/bin/env python
"""MariaDB's CPU per history row, by how many rows the writer gathers at a time.

The history rows of `--orders` orders of `bench/matchengine_core.py` (about ten an order,
over the 500 shards of the five history tables) are inserted into a fresh `trade_history`
database by the writer's own statements (`matchengine.writer.insert_statements`), one
group of `--groups` rows at a time, each group one transaction on one connection.  Prints
a line per group size: statements, rows per statement, and MariaDB's CPU per row and per
order, read from /proc.  Needs `python depends/services.py up`.

Usage: python bench/history_rows.py [--orders N] [--groups N [N ...]]
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
from matchengine.writer import insert_statements  # noqa: E402
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


def insert(rows, group, mariadb):
    """(statements, MariaDB CPU seconds, wall seconds) of inserting `rows` by `group`."""
    import pymysql
    info = testing.require("mysql")
    name = testing.create_database("benchrows", ("trade_history",), True)
    conn = pymysql.connect(host=info["host"], port=int(info["port"]), user=info["user"],
                           password=info["password"], database=name, autocommit=False)
    try:
        statements = 0
        before, start = cpu.process_cpu(mariadb), time.perf_counter()
        with conn.cursor() as cursor:
            for first in range(0, len(rows), group):
                for sql in insert_statements(rows[first:first + group]):
                    cursor.execute(sql)
                    statements += 1
                conn.commit()
        return statements, cpu.process_cpu(mariadb) - before, time.perf_counter() - start
    finally:
        conn.close()
        testing.drop_database(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--groups", type=int, nargs="+", default=[3000, 20000, 200000],
                        help="rows written together (default: 3000 20000 200000)")
    args = parser.parse_args()
    mariadb = cpu.local_services().get("MariaDB")
    if mariadb is None:
        raise SystemExit("history_rows: no local MariaDB process found")
    rows = history_of(args.orders)
    for group in args.groups:
        statements, used, wall = insert(rows, group, mariadb)
        print("history_rows: %d orders, %d rows in groups of %d: %d statements, %.1f rows a "
              "statement; MariaDB %.1f us a row, %.1f us an order; %.2f s"
              % (args.orders, len(rows), group, statements, len(rows) / statements,
                 used / len(rows) * 1e6, used / args.orders * 1e6, wall), flush=True)


if __name__ == "__main__":
    main()
