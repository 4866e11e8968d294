# -*- test-case-name: matchengine.test.test_persist -*-
"""Slices (snapshots of every balance and open order) and recovery at start.

Recovery: the newest `slice_history` row names a slice; its orders and balances are loaded,
then every operation logged after it is replayed in id order (the ids must follow each other
with no gap).  Without a slice, every operation log is replayed from the first.  Each entry
replays at the time it was logged, so orders get back their original times.  The tables to
replay are found by the ids they hold, not by the dates in their names: an entry logged after
the slice under a clock stepped back, or under another time zone, lands in a table dated
before the slice's day, and is replayed all the same (the log writes no table older than the
newest, so the tables' names sort as their ids do).  Given a `Rebuild`, recovery loads the
newest slice taken before the operations to rebuild, replays up to the last of them and hands
over their history rows and messages (`matchengine.rebuild`).

Making a slice must not stall matching: `make_slice` forks.  The child owns a copy-on-write
image of memory, frozen at that instant; it writes `slice_order_<t>`, `slice_balance_<t>`
and the `slice_history` row on a connection of its own, then exits, while the parent goes on
serving.  Old slices past `keeptime` are dropped afterwards, never the last one, with the
tables of older slices whose child was killed before their `slice_history` row.

On SQLite (the embedded exchange) the child does not open the daemon's database: the SQLite
library keeps the locks of each open file in the process, and the copy the child inherits
would lock nothing, its writes then mixing with the daemon's.  It writes the rows into a
file of its own (`<database>.slice-<t>`), in one transaction; once it has ended, the daemon
copies them into its tables with its own connection, COPY_ROWS a transaction between the
log's writes (a million orders take about a second in all), and removes the file.
"""

import collections
import contextlib
import heapq
import json
import marshal
import os
import re
import signal
import time
from decimal import Decimal

from twisted.internet import defer, threads
from twisted.logger import Logger

from matchengine import engine as engine_module
from matchengine.market import Order
from matchengine.operlog import table_name
from utils import decimals, forked
from utils.decimals import to_raw
from utils.mysql import literal_value

log = Logger()

PAGE = 10000
FIRST_PAGE = 500         # rows of the reader's first page: the replay waits for it
PROGRESS_EVERY = 2.0     # seconds between progress lines while replaying
NEVER = 1 << 64          # an operation id past any in the log
ORDER_COLUMNS = ("id", "t", "side", "create_time", "update_time", "user_id", "market",
                 "price", "amount", "taker_fee", "maker_fee", "left", "freeze", "deal_stock",
                 "deal_money", "deal_fee", "source")
BALANCE_COLUMNS = ("user_id", "asset", "t", "balance")


class RecoveryError(Exception):
    """The saved state cannot be loaded."""


# -- recovery --------------------------------------------------------------------------

def _fetch(db, sql, args=()):
    return db.query(sql, args)


# the slice templates' amount columns, kept as the exact texts of the values (`to_raw`):
# the original's DECIMAL(30,8) to DECIMAL(30,16) rounded a balance of BCH's 20 decimals, an
# ask's fee of 20 or a bid's freeze of 16, and the state restored from a slice was not the
# state saved
TEXT_COLUMNS = {
    "slice_order_example": ("price", "amount", "taker_fee", "maker_fee", "left", "freeze",
                            "deal_stock", "deal_money", "deal_fee"),
    "slice_balance_example": ("balance",),
}
TEXT_TYPE = "VARCHAR(80)"


async def exact_slice_templates(db, say):
    """Make the slice templates' amount columns texts where an older schema left them
    DECIMAL (MySQL; SQLite keeps such columns as texts anyway).  Slices made before keep
    their rounding."""
    if db.dialect.name != "mysql":
        return
    rows = await _fetch(db, "SELECT `TABLE_NAME`, `COLUMN_NAME` FROM information_schema.COLUMNS "
                            "WHERE `TABLE_SCHEMA` = DATABASE() AND `DATA_TYPE` <> 'varchar' "
                            "AND `TABLE_NAME` IN ('slice_order_example', "
                            "'slice_balance_example')")
    wanted = {(table, column) for table, columns in TEXT_COLUMNS.items() for column in columns}
    found = {}
    for table, column in rows:
        if (table, column) in wanted:
            found.setdefault(table, []).append(column)
    for table, columns in sorted(found.items()):
        alter = "ALTER TABLE `%s` %s" % (table, ", ".join(
            "MODIFY `%s` %s NOT NULL" % (column, TEXT_TYPE) for column in columns))
        try:
            await db.execute(alter)
        except Exception as e:
            # a user without the ALTER privilege: the daemon runs, its slices still rounded
            log.critical("slices: {table}'s {columns} could not be changed to exact texts "
                         "({error}); slices keep rounding them until this runs: {alter}",
                         table=table, columns=", ".join(columns), error=e, alter=alter)
            continue
        say("slices: %s's %s now kept as exact texts (%s), no longer rounded by DECIMAL"
            % (table, ", ".join(columns), TEXT_TYPE))


async def slice_source_column(db, say):
    """Add the `source` column of the orders' slices to a template that lacks it (the
    original's): its slices were refused by every write without it."""
    if db.dialect.name != "mysql" or await _has_column(db, "slice_order_example", "source"):
        return
    alter = ("ALTER TABLE `slice_order_example` ADD COLUMN `source` VARCHAR(30) NOT NULL "
             "DEFAULT ''")
    try:
        await db.execute(alter)
    except Exception as e:
        log.critical("slices: slice_order_example has no source column and could not have "
                     "one added ({error}); no slice can be written until this runs: {alter}",
                     error=e, alter=alter)
        return
    say("slices: slice_order_example now keeps the orders' source")


async def _has_column(db, table, column):
    rows = await _fetch(db, "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE "
                            "`TABLE_SCHEMA` = DATABASE() AND `TABLE_NAME` = %s AND "
                            "`COLUMN_NAME` = %s", (table, column))
    return bool(rows[0][0])


LOG_TEMPLATES = ("operlog_example", "slice_order_example", "slice_balance_example")


async def utf8mb4_log_tables(db, say, now=None):
    """Have the tables the log and the slices write their texts to keep them in utf8mb4.

    The original's templates are in utf8, which MySQL takes for utf8mb3 (three bytes a
    character at most): a character of four bytes in a source, a business or a detail was
    stored as "?" (INSERT IGNORE), and the replay of an acknowledged write was something
    else.  The templates and the operation-log tables still to be written to (today's and
    later) are converted; RecoveryError when that cannot be done."""
    if db.dialect.name != "mysql":
        return
    first = table_name(time.time() if now is None else now)
    rows = await _fetch(db, "SELECT DISTINCT `TABLE_NAME` FROM information_schema.COLUMNS "
                            "WHERE `TABLE_SCHEMA` = DATABASE() AND `CHARACTER_SET_NAME` <> "
                            "'utf8mb4' AND (`TABLE_NAME` IN (%s, %s, %s) OR `TABLE_NAME` "
                            "LIKE 'operlog\\_%%')", LOG_TEMPLATES)
    for table in sorted(t for t, in rows if t in LOG_TEMPLATES or t >= first):
        alter = "ALTER TABLE `%s` CONVERT TO CHARACTER SET utf8mb4" % table
        try:
            await db.execute(alter)
        except Exception as e:
            raise RecoveryError(
                "%s keeps texts in a character set of three bytes a character at most, "
                "where characters of four bytes would be stored as '?', and could not be "
                "changed (%s): run %s" % (table, e, alter)) from None
        say("%s now keeps its texts in utf8mb4 (four bytes a character at most)" % table)


class Recovered(collections.namedtuple(
        "Recovered", "last_id slice_time newest_table newest_slice")):
    """What `load_state` found: the last operation id, the time of the slice loaded (None
    without one), the newest operation-log table (None without one) and the newest time any
    slice was saved at (0 without one)."""


class Rebuild(collections.namedtuple("Rebuild", "after upto emit warn advanced",
                                     defaults=(None,))):
    """What `load_state` rebuilds: the history rows and messages of the operations with ids
    after `after` up to `upto`, each handed to `emit(oper_id, history, messages)`; the
    replay stops after `upto`.  `warn(text)` is told of operations that cannot be;
    `advanced()`, when given, after each page of the slice or the log is loaded."""


async def _slice_row(db, rebuild):
    """The `slice_history` row to load: the newest, or with `rebuild` the newest taken at
    or before the first operation to rebuild; else none when the log holds every operation
    from the first (the whole log is replayed), else the oldest, the operations before it
    reported as lost to `rebuild.warn`."""
    columns = "SELECT `time`, `end_oper_id`, `end_order_id`, `end_deals_id` FROM `slice_history`"
    if rebuild is None:
        return await _fetch(db, columns + " ORDER BY `id` DESC LIMIT 1")
    rows = await _fetch(db, columns + " WHERE `end_oper_id` <= %s ORDER BY `id` DESC LIMIT 1",
                        (rebuild.after,))
    if rows:
        return rows
    if await _first_logged(db) == 1:
        return []
    rows = await _fetch(db, columns + " ORDER BY `id` LIMIT 1")
    if rows:
        rebuild.warn("no slice at or before operation %d: the history and messages of "
                     "operations %d to %d cannot be rebuilt"
                     % (rebuild.after, rebuild.after + 1, min(int(rows[0][1]), rebuild.upto)))
    return rows


async def load_state(eng, db, progress=None, reactor=None, rebuild=None):
    """Load the newest slice and replay the operation log after it (`Recovered`).

    With `rebuild` (a `Rebuild`), load the newest slice taken before the operations to
    rebuild instead, and replay up to `rebuild.upto`, handing over their effects."""
    say = progress or (lambda message: log.info("{message}", message=message))
    advanced = rebuild.advanced if rebuild and rebuild.advanced else None
    if db.sqlite_path:
        remove_staged(db.sqlite_path)
    await exact_slice_templates(db, say)
    await slice_source_column(db, say)
    await utf8mb4_log_tables(db, say)
    rows = await _slice_row(db, rebuild)
    last_id, slice_time, newest_slice = 0, None, 0
    every = await operlog_tables(db)
    if rows:
        slice_time, last_id, eng.order_id, eng.deal_id = (int(v) for v in rows[0])
        count = await _load_orders(eng, db, "slice_order_%d" % slice_time, advanced)
        balances = await _load_balances(eng, db, "slice_balance_%d" % slice_time, advanced)
        say("loaded slice %d: %d open orders, %d balances, operations up to %d"
            % (slice_time, count, balances, last_id))
        keys = await _load_dedup(eng, db, every, slice_time, last_id)
        say("remembered %d balance updates of the day before the slice" % keys)
        newest = await _fetch(db, "SELECT MAX(`time`) FROM `slice_history`")
        newest_slice = int(newest[0][0])
    else:
        say("no slice: replaying the whole operation log")
    tables = await tables_after(db, every, last_id)
    total = 0
    if tables:
        end = await _fetch(db, "SELECT MAX(`id`) FROM `%s`" % tables[-1])
        total = max(0, int(end[0][0] or 0) - last_id)
        say("replaying %d operations from %s on" % (total, tables[0]))
    replayed = 0
    started = reported = time.monotonic()
    # ids past the log's largest: what is never reached
    effects_after, upto = (rebuild.after, rebuild.upto) if rebuild else (NEVER, NEVER)
    total = min(total, max(0, upto - last_id))
    reader = LogReader(db, tables, last_id, reactor)
    try:
        async for table, rows in reader:
            end = rows[-1][0] > upto
            if end:
                rows = rows[:max(0, upto - rows[0][0] + 1)]
            for oper_id, t, method, params in rows:
                if oper_id != last_id + 1:
                    raise RecoveryError("%s: operation %d follows %d: the log has a gap"
                                        % (table, oper_id, last_id))
                try:
                    if oper_id > effects_after:
                        eng.replay(method, params, t, True)
                        rebuild.emit(oper_id, *eng.effects.take())
                    else:
                        eng.replay(method, params, t)
                except Exception as e:
                    raise RecoveryError("%s: operation %d cannot be replayed: %s: %s"
                                        % (table, oper_id, type(e).__name__, e)) from e
                last_id = oper_id
            replayed += len(rows)
            if end:
                break
            if advanced:
                advanced()
            now = time.monotonic()
            if now - reported >= PROGRESS_EVERY:
                reported = now
                rate = replayed / max(now - started, 1e-6)
                say("replayed %d of %d operations (%s, id %d), %d a second, %d s to go"
                    % (replayed, total, table, last_id, rate,
                       max(0, total - replayed) / rate))
    finally:
        reader.close()
    say("replayed %d operations; last operation id %d, order id %d, deal id %d"
        % (replayed, last_id, eng.order_id, eng.deal_id))
    return Recovered(last_id, slice_time, every[-1] if every else None, newest_slice)


class LogReader:
    """The operation log after `after`, read and parsed by a forked child.

    Fetching rows and parsing their JSON cost about a fifth of replaying them; the child does
    both on the other core while this process replays.  It opens its own connection, pages
    through `tables` in id order, parses each page's details in one call and writes the page
    down a pipe in `marshal` form, a length before each record; the pipe's buffer keeps it
    about a page ahead.  Iterate with `async for` over (table, rows), rows being
    (id, time, method, params); pipe reads run in a thread, so the reactor turns between
    pages.  `close` ends the child whatever state it is in.
    """

    def __init__(self, db, tables, after, reactor=None, page=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                forked.die_with_parent(parent)
                os.close(read_fd)
                forked.release_inherited(keep=(write_fd,))
            except BaseException:
                os._exit(1)
            _reader_child(db, tables, after, write_fd, page or PAGE)
        os.close(write_fd)
        self.pipe = os.fdopen(read_fd, "rb")

    def _record(self):
        head = self.pipe.read(8)
        if len(head) < 8:
            return None
        size = int.from_bytes(head, "little")
        body = self.pipe.read(size)
        return marshal.loads(body) if len(body) == size else None

    def __aiter__(self):
        return self._pages()

    async def _pages(self):
        pool = self.reactor.getThreadPool()
        while True:
            record = await threads.deferToThreadPool(self.reactor, pool, self._record)
            if record is None:
                raise RecoveryError("the operation-log reader (pid %d) stopped before the "
                                    "end of the log" % self.pid)
            kind = record[0]
            if kind == "end":
                return
            if kind == "page":
                yield record[1], record[2]
            elif kind == "bad":
                raise RecoveryError("%s: operation %d cannot be replayed: %s"
                                    % (record[1], record[2], record[3]))
            else:
                raise RecoveryError("reading the operation log failed: %s" % (record[1],))

    def close(self):
        """Stop the child if it still runs, reap it, and close the pipe (a read still
        waiting on it then ends at once)."""
        if self.pipe is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pipe.close()
        self.pipe = None


def _shared(params, strings):
    """`params` with each repeated string (market, asset, amount, price, fee rate, source)
    one object: `marshal` then sends it once, and the parent hashes it once."""
    if type(params) is not list:
        return params
    return [strings.setdefault(v, v) if type(v) is str else v for v in params]


def _parse_all(rows):
    """The page's operations parsed in one call, or None when any detail is amiss."""
    strings = {}
    try:
        details = json.loads("[%s]" % ",".join(row[2] for row in rows))
        if len(details) != len(rows):
            return None
        return [(int(oper_id), float(t), strings.setdefault(d["method"], d["method"]),
                 _shared(d["params"], strings))
                for (oper_id, t, _), d in zip(rows, details)]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def _parse_page(table, rows):
    """(id, time, method, params) for each row, or the "bad" record of the first row whose
    detail is not an operation."""
    parsed = _parse_all(rows)
    if parsed is not None:
        return ("page", table, parsed)
    parsed = []
    for oper_id, t, detail in rows:     # one at a time, to name the culprit
        try:
            method, params = engine_module.load_detail(detail)
            parsed.append((int(oper_id), float(t), method, params))
        except (ValueError, TypeError, KeyError) as e:
            return ("bad", table, int(oper_id), "%s: %s" % (type(e).__name__, e))
    return ("page", table, parsed)


def _read_log(db, tables, after, page, send):
    """Send the log's pages, then the end mark; stops after a bad page.  Pages start small
    and grow by a quarter up to `page`: the replay starts without waiting for a whole page,
    and each page is read while the one before, a little smaller, is replayed."""
    connection = db.connect()
    cursor = connection.cursor()
    last, limit = after, min(FIRST_PAGE, page)
    for table in tables:
        while True:
            cursor.execute(db.dialect.sql("SELECT `id`, `time`, `detail` FROM `%s` WHERE "
                                          "`id` > %%s ORDER BY `id` LIMIT %d"
                                          % (table, limit)), (last,))
            rows = cursor.fetchall()
            if rows:
                record = _parse_page(table, rows)
                send(record)
                if record[0] == "bad":
                    return
                last = int(rows[-1][0])
            full, limit = len(rows) == limit, min(page, limit + max(1, limit // 4))
            if not full:
                break
    connection.close()
    send(("end",))


def _reader_child(db, tables, after, fd, page):
    """The body of the reader child; never returns."""
    status = 1
    out = os.fdopen(fd, "wb")

    def send(record):
        body = marshal.dumps(record)
        out.write(len(body).to_bytes(8, "little"))
        out.write(body)
        out.flush()

    try:
        # a parent gone or no longer reading: it reports the missing end itself
        with contextlib.suppress(BaseException):
            try:
                _read_log(db, tables, after, page, send)
            except Exception as e:
                send(("failed", "%s: %s" % (type(e).__name__, e)))
            status = 0
    finally:
        os._exit(status)


async def _load_dedup(eng, db, tables, slice_time, end_id):
    """Balance-update keys logged within a day before the slice still refuse repeats.

    The tables read are those up to the one holding `end_id`, back to the first whose last
    entry is older than the day: whatever dates their names carry."""
    since = slice_time - engine_module.DEDUP_KEEP
    wanted = []
    for table in reversed(tables):
        first = await _fetch(db, "SELECT MIN(`id`) FROM `%s`" % table)
        if first[0][0] is None or int(first[0][0]) > end_id:
            continue        # empty, or wholly after the slice
        wanted.append(table)
        latest = await _fetch(db, "SELECT `time` FROM `%s` WHERE `id` <= %%s "
                                  "ORDER BY `id` DESC LIMIT 1" % table, (end_id,))
        if float(latest[0][0]) < since:
            break
    count = 0
    for table in reversed(wanted):
        last = 0
        while True:
            page = await _fetch(db, "SELECT `id`, `time`, `detail` FROM `%s` WHERE `id` > %%s "
                                    "AND `id` <= %%s AND `time` >= %%s AND `detail` LIKE %%s "
                                    "ORDER BY `id` LIMIT %d" % (table, PAGE),
                                (last, end_id, since, '{"method": "update_balance"%%'))
            for oper_id, t, detail in page:
                last = int(oper_id)
                method, params = engine_module.load_detail(detail)
                eng.remember_update(params, float(t))
                count += 1
            if len(page) < PAGE:
                break
    return count


async def _first_logged(db):
    """The id of the first operation the log still holds (None when it holds none)."""
    for table in await operlog_tables(db):
        first = await _fetch(db, "SELECT MIN(`id`) FROM `%s`" % table)
        if first and first[0][0] is not None:
            return int(first[0][0])
    return None


def _tables_named(db, prefix):
    """The statement listing the tables whose names start with `prefix` and "_" (a LIKE
    pattern, `%` doubled: it is run with parameters or through `_fetch`)."""
    if db.dialect.name == "mysql":
        return "SHOW TABLES LIKE '%s\\_%%%%'" % prefix
    return "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%s_%%%%'" % prefix


async def operlog_tables(db):
    """The operation-log tables, oldest first."""
    rows = await _fetch(db, _tables_named(db, "operlog"))
    return sorted(r[0] for r in rows if re.fullmatch(r"operlog_\d{8}", r[0]))


async def tables_after(db, tables, after):
    """Of `tables` (oldest first), those from the newest back to the last one holding an
    operation after `after`: one look at each table's largest id, from the newest."""
    kept = len(tables)
    for index in range(len(tables) - 1, -1, -1):
        end = await _fetch(db, "SELECT MAX(`id`) FROM `%s`" % tables[index])
        if end[0][0] is None:
            continue        # empty: created just before a crash
        if int(end[0][0]) <= after:
            break
        kept = index
    return tables[kept:]


class _Shared:
    """One object for each value a load's rows repeat, as live orders share theirs
    through the engine's parse cache: a million orders repeat few prices, fee rates and
    sources, and each new Decimal or string costs about a hundred bytes."""

    MAX = 100000            # values kept; past it, forgotten (the load's memory bound)

    def __init__(self):
        self._values = {}

    def _remember(self, key, value):
        if len(self._values) >= self.MAX:
            self._values.clear()
        self._values[key] = value
        return value

    def parsed(self, value, prec):
        """(Decimal, raw text) of a price, amount or fee rate cut to `prec` places."""
        key = (str(value), prec)
        found = self._values.get(key)
        if found is None:
            parsed = decimals.parse(key[0], prec)
            found = self._remember(key, (parsed, to_raw(parsed)))
        return found

    def decimal(self, value):
        """The exact Decimal of a saved text."""
        key = (str(value), "exact")
        found = self._values.get(key)
        return self._remember(key, Decimal(key[0])) if found is None else found

    def text(self, value):
        key = (value, "text")
        found = self._values.get(key)
        return self._remember(key, value) if found is None else found


async def _load_orders(eng, db, table, advanced=None):
    last, count = 0, 0
    shared = _Shared()
    columns = ", ".join("`%s`" % c for c in ORDER_COLUMNS)
    if db.dialect.name == "mysql" and not await _has_column(db, table, "source"):
        # a slice the original wrote: its orders' sources were not kept
        columns = columns.replace("`source`", "'' AS `source`")
    while True:
        page = await _fetch(db, "SELECT %s FROM `%s` WHERE `id` > %%s ORDER BY `id` LIMIT %d"
                                % (columns, table, PAGE), (last,))
        for row in page:
            (order_id, kind, side, ctime, mtime, user_id, market_name, price, amount,
             taker_fee, maker_fee, left, freeze, deal_stock, deal_money, deal_fee,
             source) = row
            last = int(order_id)
            market = eng.markets.get(market_name)
            if market is None:
                continue
            desc = market.desc
            price, price_raw = shared.parsed(price, desc.money_prec)
            amount, amount_raw = shared.parsed(amount, desc.stock_prec)
            order = Order(last, int(kind), int(side), float(ctime), int(user_id), market.name,
                          shared.text(source), price, amount,
                          shared.parsed(taker_fee, desc.fee_prec)[0],
                          shared.parsed(maker_fee, desc.fee_prec)[0], price_raw, amount_raw)
            order.update_time = float(mtime)
            order.left = shared.parsed(left, desc.stock_prec)[0]
            order.freeze = shared.decimal(freeze)
            order.deal_stock = shared.decimal(deal_stock)
            order.deal_money = shared.decimal(deal_money)
            order.deal_fee = shared.decimal(deal_fee)
            market.insert(order)
            count += 1
        if len(page) < PAGE:
            return count
        if advanced:
            advanced()


async def _load_balances(eng, db, table, advanced=None):
    last, count = 0, 0
    while True:
        page = await _fetch(db, "SELECT `id`, `user_id`, `asset`, `t`, `balance` FROM `%s` "
                                "WHERE `id` > %%s ORDER BY `id` LIMIT %d" % (table, PAGE),
                            (last,))
        for row_id, user_id, asset, kind, value in page:
            last = int(row_id)
            if asset in eng.assets:
                # the exact text the slice saved (an older slice's DECIMAL: its rounding)
                eng.balances.set(int(user_id), int(kind), asset, Decimal(str(value)))
                count += 1
        if len(page) < PAGE:
            return count
        if advanced:
            advanced()


# -- making slices ---------------------------------------------------------------------

def snapshot_rows(eng):
    """The rows of a slice, built lazily (the forked child iterates them)."""
    def orders():
        # by id, the slice table's primary key: InnoDB appends them, where the book's
        # order put each in a page of its own (a million orders took 20 s of MariaDB's
        # time, 4 s by id); each market holds its orders by id in the order they came
        for o in heapq.merge(*(m.orders.values() for m in eng.markets.values()),
                             key=_order_id):
            yield (o.id, o.type, o.side, o.create_time, o.update_time, o.user_id, o.market,
                   to_raw(o.price), to_raw(o.amount), to_raw(o.taker_fee), to_raw(o.maker_fee),
                   to_raw(o.left), to_raw(o.freeze), to_raw(o.deal_stock),
                   to_raw(o.deal_money), to_raw(o.deal_fee), o.source or "")

    def balances():
        for user_id, asset, kind, value in eng.balances.iter_entries():
            yield (user_id, asset, kind, to_raw(value))
    return orders(), balances()


# a slice_order row's value list: the raw texts of its decimals (digits, a point, an
# exponent) need no escaping
_ORDER_VALUES = ("(%d, %d, %d, %s, %s, %d, %s, '%s', '%s', '%s', '%s', '%s', '%s', '%s', "
                 "'%s', '%s', %s)")


def order_row_text(connection):
    """A function making the value list of a `snapshot_rows` order, as PyMySQL would bind
    it on `connection`, in one formatting rather than a call for each of its 17 values."""
    value = literal_value(connection)      # its times and texts

    def row(r):
        return _ORDER_VALUES % (r[0], r[1], r[2], value(r[3]), value(r[4]), r[5],
                                value(r[6]), r[7], r[8], r[9], r[10], r[11], r[12], r[13],
                                r[14], r[15], value(r[16]))
    return row


def _order_id(order):
    return order.id


def _chunks(rows, size=1000):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_slice(db, connection, eng, ts, oper_id, keeptime):
    """Write one slice on `connection` (a DB-API connection of `db`'s kind); synchronous.

    The `slice_history` row goes last: a slice without one is never loaded.  A slice that
    fails has its tables dropped again, when the database still answers."""
    orders, balances = snapshot_rows(eng)
    rows = {"slice_order": orders, "slice_balance": balances}

    def fill(cursor, table, kind, columns):
        # VALUES texts made here (`insert_rows`): PyMySQL's escaping of each of a million
        # orders' 17 values took about two thirds of the slice's time
        row_text = order_row_text if kind == "slice_order" else None
        for chunk in _chunks(rows[kind]):
            db.insert_rows(cursor, table, columns, chunk, row_text=row_text)
    _store_slice(db, connection, ts, oper_id, (eng.order_id, eng.deal_id), keeptime, fill)


def stage_slice(path, eng):
    """In the slice child, on SQLite: the rows of the slice into tables `slice_order` and
    `slice_balance` of the new file `path`, in the order of their first column (an order's
    id, a balance's user), which their rowids follow from 1; all in one transaction (a
    child killed meanwhile leaves no table)."""
    import sqlite3
    remove_staged(path.rsplit(".slice-", 1)[0])
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        for kind, columns, rows in zip(("slice_order", "slice_balance"),
                                       (ORDER_COLUMNS, BALANCE_COLUMNS), snapshot_rows(eng)):
            names = ", ".join("`%s`" % column for column in columns)
            connection.execute("CREATE TABLE `unsorted` (%s)" % names)
            connection.executemany("INSERT INTO `unsorted` VALUES (%s)" % (
                ", ".join("?" * len(columns))), rows)
            connection.execute("CREATE TABLE `%s` AS SELECT %s FROM `unsorted` ORDER BY 1"
                               % (kind, names))
            connection.execute("DROP TABLE `unsorted`")
        connection.execute("COMMIT")
    finally:
        connection.close()


def remove_staged(path):
    """Remove the staging files of the SQLite database `path`: a slice's once copied, and
    those a daemon killed before it copied them left (the daemon's start removes them)."""
    import glob
    for name in glob.glob(glob.escape(path) + ".slice-*"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


# the staged rows are copied this many at a time, each part its own transaction: the
# operation log's writes, on the same connection, wait for one part only (about 25 ms)
COPY_ROWS = 20000


@contextlib.contextmanager
def _attached(connection, staged):
    """A cursor of `connection` with the file `staged` attached as `staged`; what it did
    committed, or rolled back, before the file is detached."""
    cursor = connection.cursor()
    cursor.execute("ATTACH DATABASE ? AS `staged`", (staged,))
    try:
        yield cursor
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.execute("DETACH DATABASE `staged`")


def staged_tables(connection, db, staged, ts):
    """The first step of the copy of a staged slice (`stage_slice`) into the daemon's
    database: its empty tables, and how many rows of each are staged."""
    counts = []
    with _attached(connection, staged) as cursor:
        for table, kind, _ in _slice_tables(ts):
            cursor.execute("DROP TABLE IF EXISTS %s" % db.dialect.quote(table))
            db.create_like(cursor, table, kind + "_example")
            cursor.execute("SELECT COUNT(*) FROM `staged`.`%s`" % kind)
            counts.append(cursor.fetchone()[0])
    return counts


def copy_staged_rows(connection, db, staged, ts, part, start):
    """The staged rows `start` + 1 to `start` + COPY_ROWS of the slice's table `part` (0:
    orders, 1: balances), in a transaction of their own."""
    table, kind, columns = _slice_tables(ts)[part]
    names = ", ".join(db.dialect.quote(column) for column in columns)
    with _attached(connection, staged) as cursor:
        cursor.execute("INSERT INTO %s (%s) SELECT %s FROM `staged`.`%s` WHERE `rowid` > ? "
                       "AND `rowid` <= ?" % (db.dialect.quote(table), names, names, kind),
                       (start, start + COPY_ROWS))


def staged_history(connection, db, ts, oper_id, ends):
    """The last step of the copy: the slice's `slice_history` row (`ends`: the order and
    deal ids of the slice's instant)."""
    _history_row(db, connection.cursor(), ts, oper_id, ends)
    connection.commit()


def retire_slices(connection, db, ts, keeptime):
    """After a slice at `ts`: the slices past `keeptime` dropped (`_retire`)."""
    _retire(db, connection, connection.cursor(), ts, keeptime)


def drop_slice_tables(connection, db, ts):
    """A slice that failed: its tables, as far as they were written, dropped."""
    cursor = connection.cursor()
    for table, _, _ in _slice_tables(ts):
        cursor.execute("DROP TABLE IF EXISTS %s" % db.dialect.quote(table))
    connection.commit()


def _slice_tables(ts):
    return (("slice_order_%d" % ts, "slice_order", ORDER_COLUMNS),
            ("slice_balance_%d" % ts, "slice_balance", BALANCE_COLUMNS))


def _history_row(db, cursor, ts, oper_id, ends):
    cursor.execute(db.dialect.sql(
        "INSERT INTO `slice_history` (`time`, `end_oper_id`, `end_order_id`, "
        "`end_deals_id`) VALUES (%s, %s, %s, %s)"), (ts, oper_id) + tuple(ends))


def _store_slice(db, connection, ts, oper_id, ends, keeptime, fill):
    """The slice's tables, their rows written by `fill(cursor, table, kind, columns)`, then
    its `slice_history` row; then the slices past `keeptime` dropped."""
    cursor = connection.cursor()
    try:
        for table, kind, columns in _slice_tables(ts):
            cursor.execute("DROP TABLE IF EXISTS %s" % db.dialect.quote(table))
            db.create_like(cursor, table, kind + "_example")
            fill(cursor, table, kind, columns)
        _history_row(db, cursor, ts, oper_id, ends)
        connection.commit()
    except Exception:
        with contextlib.suppress(Exception):
            connection.rollback()
            drop_slice_tables(connection, db, ts)
        raise
    _retire(db, connection, cursor, ts, keeptime)


def _retire(db, connection, cursor, ts, keeptime):
    """The slices older than `keeptime` dropped, while a newer one is kept, and the tables of
    unfinished older ones."""
    q = db.dialect.quote
    cursor.execute(db.dialect.sql("SELECT COUNT(*) FROM `slice_history` WHERE `time` >= %s"),
                   (ts - keeptime,))
    if cursor.fetchone()[0]:
        cursor.execute(db.dialect.sql("SELECT `id`, `time` FROM `slice_history` "
                                      "WHERE `time` < %s ORDER BY `id`"), (ts - keeptime,))
        for row_id, t in cursor.fetchall():
            cursor.execute("DROP TABLE IF EXISTS %s" % q("slice_order_%d" % t))
            cursor.execute("DROP TABLE IF EXISTS %s" % q("slice_balance_%d" % t))
            cursor.execute(db.dialect.sql("DELETE FROM `slice_history` WHERE `id` = %s"),
                           (row_id,))
            connection.commit()
    _drop_unfinished(db, cursor, ts)
    connection.commit()


def _drop_unfinished(db, cursor, ts):
    """Drop the tables of slices older than `ts` that never got their `slice_history` row:
    a slice child killed while it wrote (with its daemon, by kill -9) leaves them, and no
    retention names them.  Only older ones: a newer slice may be under way."""
    cursor.execute(_tables_named(db, "slice"), ())
    names = [row[0] for row in cursor.fetchall()]
    cursor.execute("SELECT `time` FROM `slice_history`")
    finished = {int(row[0]) for row in cursor.fetchall()}
    for name in names:
        found = re.fullmatch(r"slice_(?:order|balance)_(\d+)", name)
        if found and int(found.group(1)) < ts and int(found.group(1)) not in finished:
            cursor.execute("DROP TABLE IF EXISTS %s" % db.dialect.quote(name))


def make_slice(eng, db, ts, oper_id, keeptime, reactor, poll=0.05):
    """Fork a child that writes the slice of this instant; fires with True on success.
    The child dies with the daemon: it would otherwise go on writing a slice whose tables
    the restarted daemon drops as unfinished, and then commit its `slice_history` row."""
    parent = os.getpid()
    staged = db.sqlite_path and "%s.slice-%d" % (db.sqlite_path, ts)
    ends = (eng.order_id, eng.deal_id)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            forked.die_with_parent(parent)
            forked.release_inherited()
            if staged:
                stage_slice(staged, eng)
            else:
                connection = db.connect()
                write_slice(db, connection, eng, ts, oper_id, keeptime)
                connection.close()
            status = 0
        except BaseException as e:
            with contextlib.suppress(OSError):    # no stderr left to tell
                os.write(2, ("slice %d failed: %s: %s\n" % (ts, type(e).__name__, e)).encode())
        finally:
            os._exit(status)
    waited = _wait_child(pid, reactor, poll)
    if staged:
        waited = _copy_staged(waited, db, staged, ts, oper_id, ends, keeptime)
    return defer.Deferred.fromCoroutine(waited)


async def _wait_child(pid, reactor, poll):
    status = await forked.reap(pid, reactor, poll)
    # reaped by someone else (None): the slice_history row tells
    return status is None or status == 0


async def _copy_staged(waited, db, staged, ts, oper_id, ends, keeptime):
    try:
        if not await waited:
            return False
        try:
            # with no table staged (a child reaped by someone else that failed), this fails
            counts = await db.on_connection(staged_tables, db, staged, ts)
            for part, count in enumerate(counts):
                for start in range(0, count, COPY_ROWS):
                    await db.on_connection(copy_staged_rows, db, staged, ts, part, start)
            await db.on_connection(staged_history, db, ts, oper_id, ends)
        except Exception:
            with contextlib.suppress(Exception):
                await db.on_connection(drop_slice_tables, db, ts)
            raise
        await db.on_connection(retire_slices, db, ts, keeptime)
        return True
    finally:
        for name in (staged, staged + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)

