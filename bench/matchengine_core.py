#!/usr/bin/env python
"""In-process matching speed: orders per second through the engine with every side effect.

100 users with deep balances place limit orders on BTCBCH around a mid price, half of them
crossing; each order builds its reply, history rows, Kafka messages and operation-log entry,
as the daemon does (nothing is written anywhere).  Prints one result line.

Usage: python bench/matchengine_core.py [--orders N] [--resting N] [--profile] [--replay]
       [--replay-db] [--server]

`--replay-db` writes the run's operation log into a fresh MariaDB database (the local one of
`depends/services.py up`) and times the daemon's recovery from it, `persist.load_state`.

`--server` sends the orders through the daemon's whole request path instead, on its reactor
thread's side: RPC packets decoded (in reads of 100), handled by `MatchEngine`, each batch's
operation-log statement written out and committed at once, the history and messages encoded
for the writer process, the replies framed.  Nothing reaches a socket, a database or a
process: what is left out is the system calls and the waiting.
"""

import argparse
import functools
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pymysql.converters import escape_item  # noqa: E402

from matchengine import config, engine  # noqa: E402
from matchengine.operlog import stamp  # noqa: E402
from utils.rpc import RPCError  # noqa: E402
from utils import rpc  # noqa: E402
from utils.jsonfmt import dumps  # noqa: E402

# the requests' times: a fixed day (2025-12-06 UTC), stamped as the daemon stamps the wall
# clock; the texts of such times are what the messages and history rows carry
START = 1765000000.0


def build(resting):
    eng = engine.Engine(*config.example_tables())
    now = START
    for user in range(1, 101):
        eng.execute(102, [user, "BTC", "deposit", user, "100000000", {}], now)
        eng.execute(102, [user, "BCH", "deposit", user, "100000000000", {}], now)
    rng = random.Random(1)
    take = eng.effects.take
    for i in range(resting):
        side = 1 + (i & 1)
        # asks far above, bids far below: they rest and never trade
        price = 20000 + rng.randrange(1, 5000) if side == 1 else 2000 - rng.randrange(1, 1900)
        eng.execute(201, [rng.randrange(1, 101), "BTCBCH", side, "1", str(price), "0.002",
                          "0.001", "deep"], now)
        take()      # as the daemon hands them over after each command
    take()
    return eng


def orders(count, seed=2):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        side = rng.choice((1, 2))
        offset = rng.randrange(0, 50)
        # half cross: a crossing order takes the opposite side of the mid price
        crossing = rng.random() < 0.5
        if side == 1:
            price = 10000 - offset if crossing else 10001 + offset
        else:
            price = 10001 + offset if crossing else 10000 - offset
        out.append([rng.randrange(1, 101), "BTCBCH", side, "%d.%03d" % (rng.randrange(0, 3),
                   rng.randrange(1, 1000)), str(price), "0.002", "0.001", "bench"])
    return out


def collector_as_daemon():
    """The garbage collector as the daemon sets it once recovered: what was loaded frozen
    out of its reach, the youngest generation collected every `GC_YOUNG_THRESHOLD`
    allocations."""
    import gc

    from matchengine.server import GC_YOUNG_THRESHOLD
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run(eng, batch, log=None):
    execute = eng.execute
    log_entry = eng.log_entry
    take = eng.effects.take
    refused = 0
    clock = START + 1.0
    for params in batch:
        clock += 0.0001
        now = stamp(clock)   # as the daemon stamps a request
        try:
            result = execute(201, params, now)
        except RPCError:
            refused += 1
            continue
        rpc.reply_body(0, result, None, False)
        entry = log_entry(201, params)
        if log is not None:
            log.append((entry, now))
        take()
    return refused


class _Connection:
    """A connection in autocommit mode that takes the operation log's statements and drops
    them: the log writes its batches as the daemon's does (`operlog.autocommit_connection`)."""

    def cursor(self):
        return self

    @property
    def connection(self):       # the cursor's connection, whose `escape` the log calls
        return self

    @staticmethod
    def escape(value):
        return escape_item(value, "utf8")

    def execute(self, sql, args=None):
        self.last = sql

    def commit(self):
        """Nothing was written."""


def server_path(eng, batch):
    """(feed, replies): `feed()` sends the orders of `batch` through the daemon's request
    path (see the module's text) on the engine `eng`; `replies()` counts what was
    answered."""
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from matchengine.operlog import OperationLog
    from matchengine.outbox import WriterOutbox
    from matchengine.server import MatchEngine
    from utils import mysql

    class Database(mysql.Database):
        def on_connection(self, work, *args):
            return defer.succeed(work(_Connection(), *args))

        def create_like(self, cursor, name, template):
            """Every table is there already."""

    class Transport:
        written = 0

        def write(self, data):
            self.written += 1

        def getPeer(self):
            return "bench"

    clock = Clock()
    outbox = WriterOutbox(clock, {}, None)
    cfg = {"svr": {"max_pkg_size": 10240, "bind": []}}
    db = Database(None, mysql.MYSQL, "bench")
    service = MatchEngine(cfg, *config.example_tables(), db, outbox, reactor=clock,
                          listen=False)
    service.engine = eng
    service.factory.handlers = {command: service._handler(command) for command in eng.handlers}
    service.operlog = OperationLog(db, clock, 0, clock_time=lambda: START,
                                   after_release=outbox.send_now, autocommit_db=db)
    count = len(batch)
    service.clock_time = iter(START + 1.0 + n * 0.0001 for n in range(count + 1)).__next__
    connection = service.factory.buildProtocol(None)
    connection.transport = Transport()
    connection.connectionMade()
    packets = [rpc.encode(rpc.Packet(201, sequence=n, req_id=n, body=dumps(params).encode()))
               for n, params in enumerate(batch)]
    reads = [b"".join(packets[n:n + 100]) for n in range(0, count, 100)]

    def feed():
        for data in reads:
            connection.dataReceived(data)
            clock.advance(0)            # the commit, then the replies
            outbox._acked(outbox.sequence)     # as the writer process confirms them
    return feed, lambda: connection.transport.written


def replay_rate(log, resting):
    """Operation-log entries replayed per second on an engine built like the first, the
    garbage collector off as the daemon keeps it while loading."""
    import gc
    eng = build(resting)
    gc.disable()
    start = time.perf_counter()
    for detail, t in log:
        eng.replay(*engine.load_detail(detail), t)
    elapsed = time.perf_counter() - start
    gc.enable()
    return len(log) / elapsed


def replay_db_rate(log, resting):
    """Operation-log entries per second recovered from MariaDB by `persist.load_state`, as
    the daemon starts: rows read and parsed by its reader child while it replays."""
    import gc

    import pymysql
    from twisted.internet import defer, reactor

    from matchengine import operlog, persist
    from utils import mysql, testing

    info = testing.require("mysql")
    name = testing.create_database("bench_replay")
    try:
        conn = pymysql.connect(host=info["host"], port=int(info["port"]), user=info["user"],
                               password=info["password"], database=name, charset="utf8mb4")
        table = operlog.table_name(log[0][1])
        with conn.cursor() as cursor:
            cursor.execute("CREATE TABLE `%s` LIKE `operlog_example`" % table)
            rows = [(n + 1, t, detail) for n, (detail, t) in enumerate(log)]
            for start in range(0, len(rows), 5000):
                cursor.executemany("INSERT INTO `%s` (`id`, `time`, `detail`) "
                                   "VALUES (%%s, %%s, %%s)" % table, rows[start:start + 5000])
        conn.commit()
        conn.close()
        db = mysql.connect_mysql(info["host"], info["port"], info["user"], info["password"],
                                 name, "utf8mb4")
        result = {}

        async def recover():
            eng = build(resting)
            gc.disable()
            start = time.perf_counter()
            await persist.load_state(eng, db, lambda message: None, reactor=reactor)
            result["rate"] = len(log) / (time.perf_counter() - start)
            gc.enable()

        done = defer.Deferred.fromCoroutine(recover())
        done.addErrback(lambda failure: result.setdefault("error", failure))
        done.addBoth(lambda _: reactor.stop())
        reactor.run()      # its shutdown closes the pool
        if "error" in result:
            result["error"].raiseException()
        return result["rate"]
    finally:
        testing.drop_database(name)


def fork_pause(eng):
    """How long the reactor thread is held by forking the slice writer (ms)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pause = time.perf_counter() - start
    os.waitpid(pid, 0)
    return pause * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=200000,
                        help="orders put (default: %(default)s)")
    parser.add_argument("--resting", type=int, default=0,
                        help="orders resting away from the mid price before the run")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    parser.add_argument("--replay", action="store_true",
                        help="also time replaying the run's operation log")
    parser.add_argument("--replay-db", action="store_true",
                        help="also time recovering from the run's operation log in MariaDB")
    parser.add_argument("--server", action="store_true",
                        help="through the daemon's request path: packets in, replies out")
    args = parser.parse_args()
    eng = build(args.resting)
    first_id = eng.order_id
    batch = orders(args.orders)
    if args.server:
        work, replies = server_path(eng, batch)
    else:
        work = functools.partial(run, eng, batch)
    collector_as_daemon()
    start = time.perf_counter()
    if args.profile:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        refused = profiler.runcall(work)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    else:
        refused = work()
    elapsed = time.perf_counter() - start
    if args.server:
        # every order is answered, a refusal by an error: refused are those given no id
        if replies() != args.orders:
            raise SystemExit("matchengine_core: %d replies to %d orders"
                             % (replies(), args.orders))
        refused = args.orders - (eng.order_id - first_id)
    print("matchengine_core: %s%d orders (%d resting before), %.0f orders/s, %d refused, "
          "%d deals, %d orders resting, slice fork pause %.1f ms, peak memory %d MB"
          % ("through the request path, " if args.server else "", args.orders,
             args.resting, args.orders / elapsed, refused, eng.deal_id,
             sum(len(m.orders) for m in eng.markets.values()), fork_pause(eng),
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))
    if args.replay or args.replay_db:
        # the log of the same orders, from a second pass left out of the timing: the daemon
        # lets each entry go once written, and keeping them all alive during the run above
        # (new memory, the collector's passes over them) cost it a sixth of its time,
        # typically, in alternating runs (from nothing to a third)
        log = []
        run(build(args.resting), batch, log)
    if args.replay:
        print("matchengine_core: replay %.0f operation-log entries/s" % replay_rate(
            log, args.resting))
    if args.replay_db:
        print("matchengine_core: recovery from MariaDB %.0f operation-log entries/s"
              % replay_db_rate(log, args.resting))


if __name__ == "__main__":
    main()
