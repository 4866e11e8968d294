# -*- test-case-name: matchengine.test.test_operlog -*-
"""The operation log: every successful write, appended to `operlog_YYYYMMDD`.

Entries gather in a batch until no commit is in flight (and, when `window` is set, for
`window` seconds more; after a commit, until the event loop has read its connections once
more), then the batch is written in one transaction: a multi-row INSERT for each 1,000
entries (or fewer: a statement stays within `utils.mysql.STATEMENT_MAX` characters, under
the server's max_allowed_packet), into the table of the local date at flush time, created
from `operlog_example` first when the date changed, or the newest table written, should the
clock or the time zone make that date an earlier one: the tables' names sort as their ids,
which recovery relies on.  Given connections in autocommit mode
(`autocommit_db`), a batch of one statement is sent alone, committed with it in one round
trip, and a larger one inside START TRANSACTION and COMMIT.  One batch is in flight at a
time, so batches commit in order.  A batch that fails is retried every second, forever; the
failures are told as one outage (`utils.outage`): an error at the first, then, in the
asynchronous mode, a critical line once they have lasted 10 s (in the durable mode the
stall below is the alert), an error a minute, and a warning when a commit goes through (the
engine refuses writes with "service unavailable" while too much waits).

Each batch is a `Batch`: callers append functions to `batch.then(...)`, run in order once
the batch is committed.  The matchengine replies to a write, sends its messages and queues
its history rows only then: an acknowledged operation is on disk.  In the original's
asynchronous mode (`durable` off) the callbacks run at once and the log follows behind.

A commit not done `stall` seconds after it was first sent (MySQL away, or holding it behind
a lock: a backup's `LOCK TABLES`, an ALTER) makes the log `stalled`, with a critical line
then, an error every `STALL_REPEAT` seconds, and a warning once it is done; the matchengine
refuses requests meanwhile, rather than apply writes whose replies would wait past the
gateways' timeouts (durable mode only).
"""

import hashlib
import math
import threading
import time

from twisted.internet import defer
from twisted.logger import Logger

from utils.jsonfmt import real_text
from utils.mysql import insert_texts, needs_escape
from utils.outage import ALERT_AFTER, Outage, on_log

__all__ = ["OperationLog", "Batch", "stamp", "table_name", "log_values",
           "autocommit_connection", "Fence", "Abandoned"]

log = Logger()

COLUMNS = ("id", "time", "detail")
CHUNK = 1000        # rows a statement, at most


def stamp(t):
    """`t` (seconds) to the microsecond, as the log keeps times and the engine stamps a
    write: the double nearest to a whole number of microseconds, so that its "%.6f" text
    reads back as the same double and a replay gets the very time the write had.

    `round(t, 6)` gives the same but for a `t` within a rounding error of a half
    microsecond, through a decimal text, at about twenty times the cost (close to a
    microsecond).  Applied again, `stamp` gives its result back (times before 2106)."""
    return math.floor(t * 1e6 + 0.5) / 1e6


def table_name(t):
    return "operlog_" + time.strftime("%Y%m%d", time.localtime(t))


def log_values(rows, escape):
    """Log rows `(id, time, detail)` as the text of a MySQL VALUES list: the time as the
    text of its double with 17 significant digits (`utils.jsonfmt.real_text`, worked out in
    C for a time stamp, where its shortest text took the interpreter's dtoa) and an exponent,
    so that MySQL reads it as a double, the same double; the detail quoted as it is, or by
    `escape` (the connection's) where it holds a character to escape.  Other times (below
    1e-4, from 1e15) are written by `escape`.  A fifth of the cost of binding each value
    through PyMySQL."""
    texts = []
    append = texts.append
    for row in rows:
        t = row[1]
        if needs_escape(row[2]) or not 1e-4 <= t < 1e15:
            append("(%d, %s, %s)" % (row[0], escape(t), escape(row[2])))
        else:
            append("(%d, %se0, '%s')" % (row[0], real_text(t), row[2]))
    return ", ".join(texts)


def autocommit_connection(section):
    """For a MySQL `db_log` config section, the Database of one connection in autocommit
    mode on which the log writes its batches (`OperationLog`'s `autocommit_db`).

    A transaction took two round trips (the INSERT, then COMMIT), and under load each waits
    for MariaDB's thread to get a core it shares with the history inserts; one round trip
    and one statement fewer a batch took MariaDB's CPU per order about 5% lower on two
    cores (BENCHMARKS.md)."""
    from utils import mysql
    fence = Fence(section["name"])
    db = mysql.from_config(section, min_connections=1, max_connections=1, autocommit=True,
                           cp_openfun=fence)
    db.fence = fence
    return db


class Fence:
    """The writer's hold on its operation log: each connection of `autocommit_connection`
    takes the MySQL named lock of the database (`GET_LOCK`) before it writes, and the
    daemon takes it before it reads the log to start.

    MariaDB frees a named lock only when the session holding it ends, and the session of a
    daemon killed in the middle of an INSERT ends only once that statement is over: without
    the lock, its rows could commit after the new daemon had read the log, and the new
    daemon's own rows of the same ids would be ignored as duplicates, acknowledged and lost.
    While another session holds the lock (a daemon killed a moment ago, or another
    matchengine writing the same database) this one waits, with a critical line every
    `PATIENCE` seconds.  When this process's own previous connection still holds it (a
    connection lost on the network, whose session the server has not ended yet), that
    session is killed first.  At a clean stop the lock is released (`release`); a stop
    while waiting gives the wait up (`abandon`).
    """

    PATIENCE = 5
    STEP = 1                # seconds of each wait, between looks at `abandon`

    def __init__(self, database):
        name = "viabtc.operlog." + database
        self.name = name if len(name) <= 64 else name[:40] + hashlib.sha1(
            name.encode()).hexdigest()[:24]
        self.session = None      # the connection id that holds the lock, once it does
        self._abandoned = threading.Event()

    def __call__(self, connection):
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT IS_USED_LOCK(%s), CONNECTION_ID()", (self.name,))
            holder, me = cursor.fetchone()
            if holder == me:
                return      # this connection holds it already
            if holder is not None and holder == self.session:
                log.warn("operation log: ending this daemon's previous session {id}, which "
                         "still holds {lock}", id=holder, lock=self.name)
                try:
                    cursor.execute("KILL CONNECTION %d" % holder)
                except Exception as e:
                    log.warn("operation log: could not end session {id}: {error}",
                             id=holder, error=e)
            step = min(self.STEP, self.PATIENCE)
            waited, told = 0, 0
            while True:
                if self._abandoned.is_set():
                    raise Abandoned("the wait for the lock %s was given up" % self.name)
                cursor.execute("SELECT GET_LOCK(%s, %s)", (self.name, step))
                if cursor.fetchone()[0] == 1:
                    break
                waited += step
                if waited - told >= self.PATIENCE:
                    told = waited
                    log.critical("operation log: waited {seconds} s for the lock {lock}: "
                                 "the session of a matchengine killed a moment ago has not "
                                 "ended, or another matchengine writes this database",
                                 seconds=waited, lock=self.name)
            self.session = me
        finally:
            cursor.close()

    def abandon(self):
        """Give up a wait for the lock, now or to come (a stop before the daemon was
        ready): the waiting connection raises `Abandoned` within `STEP` seconds."""
        self._abandoned.set()

    def release(self, connection):
        """Let the lock go (a clean stop: nothing more will be written)."""
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT RELEASE_LOCK(%s)", (self.name,))
        finally:
            cursor.close()


class Abandoned(Exception):
    """A wait for the operation log's lock was given up (`Fence.abandon`)."""


class Batch:
    __slots__ = ("rows", "waiters", "committed")

    def __init__(self):
        self.rows = []
        self.waiters = []
        self.committed = False

    def then(self, function, *args):
        if self.committed:
            function(*args)
        else:
            self.waiters.append((function, args))

    def _release(self):
        self.committed = True
        waiters, self.waiters = self.waiters, []
        for function, args in waiters:
            try:
                function(*args)
            except Exception:
                OperationLog.log.failure("operation log: callback failed")


class OperationLog:
    log = Logger()
    STALL_REPEAT = 60.0     # seconds between the lines of a stalled commit after its first

    def __init__(self, db, reactor, last_id=0, window=0.0, durable=True, retry_delay=1.0,
                 clock_time=time.time, after_release=None, autocommit_db=None,
                 newest_table=None, stall=0.5):
        self.db = db
        # MySQL connections to `db`'s database in autocommit mode (`autocommit_connection`):
        # a batch of one statement then needs one round trip, where a transaction took two
        self.autocommit_db = autocommit_db
        self.after_release = after_release   # called once a committed batch's callbacks ran
        self.reactor = reactor
        self.last_id = last_id
        self.window = window
        self.durable = durable
        self.retry_delay = retry_delay
        self.clock_time = clock_time
        self.current = Batch()       # gathering
        self.in_flight = None        # being committed
        self.pending_rows = 0
        self.committed_id = last_id
        self.table = None
        # no batch goes into a table older than this one (`_commit`)
        self.newest_table = newest_table or ""
        self._flush_call = None
        self._flushed = []          # Deferreds of `flush`, fired once nothing is pending
        self.stall = stall
        self.stalled = False        # the commit in flight has waited `stall` seconds
        self._sent_at = None        # when the batch in flight was first sent
        self._stall_call = None
        # failed commits told as an outage (`utils.outage`), not a line for each retry;
        # when durable, the stall that follows is the alert
        self.outage = Outage("operation log", on_log(self.log),
                             alert_after=None if durable else ALERT_AFTER,
                             clock=reactor.seconds)

    # -- appending ---------------------------------------------------------------------

    def append(self, t, detail):
        """Log one operation at `t`, a time the engine stamped (`stamp`); returns its Batch
        (callers attach replies with `then`)."""
        self.last_id += 1
        batch = self.current
        batch.rows.append((self.last_id, t, detail))
        self.pending_rows += 1
        if self._flush_call is None and self.in_flight is None:
            self._flush_call = self.reactor.callLater(self.window, self._flush)
        if not self.durable:
            batch.committed = True
        return batch

    @property
    def barrier(self):
        """The newest batch not yet committed, or None (reads wait behind it)."""
        if not self.durable:
            return None
        if self.current.rows:
            return self.current
        if self.in_flight is not None:
            return self.in_flight
        return None

    # -- committing --------------------------------------------------------------------

    def _after_pass(self):
        # `_committed`, and this call it scheduled, run before the reads of their turn of
        # the loop; a call scheduled from here runs on the next turn, after its reads
        self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self):
        self._flush_call = None
        if self.in_flight is not None or not self.current.rows:
            return
        batch, self.current = self.current, Batch()
        self.in_flight = batch
        if self.durable:
            self._sent_at = self.reactor.seconds()
            self._stall_call = self.reactor.callLater(self.stall, self._stalled)
        self._commit(batch)

    def _stalled(self):
        self._stall_call = self.reactor.callLater(self.STALL_REPEAT, self._stalled)
        waited = self.reactor.seconds() - self._sent_at
        if not self.stalled:
            self.stalled = True
            self.log.critical("operation log: a commit of {count} entries has waited "
                              "{waited:.1f} s (MySQL does not answer, or a lock holds the "
                              "log's table); requests are refused with service unavailable "
                              "until it is done", count=len(self.in_flight.rows),
                              waited=waited)
        else:
            # the first line was the alert: these tell the stall goes on, not an alert each
            self.log.error("operation log: the commit has waited {waited:.0f} s; requests "
                           "are still refused", waited=waited)

    def _commit(self, batch):
        table = max(table_name(self.clock_time()), self.newest_table)
        create = table != self.table
        if self.autocommit_db is not None:
            d = self.autocommit_db.on_connection(self._write_autocommit, table, create,
                                                 batch.rows)
        else:
            d = self.db.interaction(self._write, table, create, batch.rows)
        d.addCallbacks(self._committed, self._failed, callbackArgs=(batch, table),
                       errbackArgs=(batch,))

    def _write(self, cursor, table, create, rows):
        if create:
            self.db.create_like(cursor, table, "operlog_example")
        if self.db.dialect.name != "mysql":
            self.db.insert_rows(cursor, table, COLUMNS, rows, ignore=True)
            return
        for sql in self._statements(table, rows, cursor.connection.escape):
            cursor.execute(sql)

    def _write_autocommit(self, connection, table, create, rows):
        cursor = connection.cursor()
        if create:
            self.db.create_like(cursor, table, "operlog_example")
        statements = self._statements(table, rows, cursor.connection.escape)
        if len(statements) == 1:
            cursor.execute(statements[0])       # a transaction of its own
            return
        cursor.execute("START TRANSACTION")
        for sql in statements:
            cursor.execute(sql)
        connection.commit()

    def _statements(self, table, rows, escape):
        head = self.db.insert_many_sql(table, COLUMNS, 0, ignore=True)
        return insert_texts(head, rows, lambda part: log_values(part, escape), CHUNK)

    def _committed(self, _, batch, table):
        self.table = self.newest_table = table
        self.in_flight = None
        self.outage.succeeded()
        if self._stall_call is not None:
            self._stall_call.cancel()
            self._stall_call = None
        if self.stalled:
            self.stalled = False
            self.log.warn("operation log: the commit is done after {waited:.1f} s; requests "
                          "are served again", waited=self.reactor.seconds() - self._sent_at)
        self.pending_rows -= len(batch.rows)
        self.committed_id = batch.rows[-1][0]
        batch._release()
        if self.after_release is not None:
            self.after_release()
        if self.current.rows:
            if self._flushed:
                self._flush()
            elif self._flush_call is None:
                # what came during the commit is committed after the loop's next pass over
                # the connections: the requests that came while this commit's replies were
                # released join it, rather than making a batch of their own behind it
                self._flush_call = self.reactor.callLater(0, self._after_pass)
        elif self._flushed:
            # each caller's own Deferred, so that what one does on it (a slice forks) runs
            # while nothing is pending, not after what another caller waits for
            flushed, self._flushed = self._flushed, []
            for d in flushed:
                d.callback(None)

    def _failed(self, failure, batch):
        self.outage.failed("writing %d entries failed (%s); retrying in %s s"
                           % (len(batch.rows), failure.getErrorMessage(), self.retry_delay))
        self.table = None
        self.reactor.callLater(self.retry_delay, self._commit, batch)

    # -- stopping ----------------------------------------------------------------------

    def flush(self):
        """A Deferred that fires once everything appended so far is committed."""
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        if self.in_flight is None and not self.current.rows:
            return defer.succeed(None)
        if self.in_flight is None:
            self._flush()
        d = defer.Deferred()
        self._flushed.append(d)
        return d
