# -*- test-case-name: matchengine.test.test_history -*-
"""The history writer: balance, order and deal history into the `trade_history` shards.

Rows arrive as `(table, shard, row)` and gather per table shard; every `interval` seconds
each shard's rows become one multi-row INSERT, run on the database pool's threads (several at
once, as the original's `history_thread` workers).  A statement that fails is retried every
second until it succeeds, with a critical log line each time.  `pending` counts the
statements not yet done (the engine's back-pressure reads it); `flush()` fires when every
row handed over so far is written.
"""

from twisted.internet import defer
from twisted.logger import Logger

from matchengine.effects import HISTORY_COLUMNS

__all__ = ["HistoryWriter"]


class HistoryWriter:
    log = Logger()

    def __init__(self, db, reactor, interval=0.1, retry_delay=1.0, chunk=1000, workers=4):
        self.db = db
        self.reactor = reactor
        self.interval = interval
        self.retry_delay = retry_delay
        self.chunk = chunk
        self.workers = workers
        self.rows = {}          # (table, shard) -> [row, ...]
        self.pending = 0        # jobs handed to the pool and not yet done
        self.written = 0        # rows written
        self.queued_rows = 0    # rows gathered, not yet handed to the pool
        self._call = None
        self._idle = []

    def add(self, history):
        rows = self.rows
        self.queued_rows += len(history)
        for table, shard, row in history:
            key = (table, shard)
            bucket = rows.get(key)
            if bucket is None:
                rows[key] = [row]
            else:
                bucket.append(row)
        if rows and self._call is None:
            self._call = self.reactor.callLater(self.interval, self.flush_now)

    def flush_now(self):
        """Hand the gathered rows to the pool: at most `workers` jobs, each a transaction
        of several multi-row INSERTs (one per table shard)."""
        self._call = None
        rows, self.rows = self.rows, {}
        self.queued_rows = 0
        statements = []
        for (table, shard), bucket in rows.items():
            name = "%s_%d" % (table, shard)
            for start in range(0, len(bucket), self.chunk):
                statements.append((name, table, bucket[start:start + self.chunk]))
        if not statements:
            return
        jobs = [statements[i::self.workers] for i in range(min(self.workers, len(statements)))]
        for job in jobs:
            self._run(job)

    def _write(self, cursor, job):
        for name, table, rows in job:
            self.db.insert_rows(cursor, name, HISTORY_COLUMNS[table], rows, len(rows), True)

    def _run(self, job):
        self.pending += 1
        d = self.db.interaction(self._write, job)
        d.addCallbacks(self._done, self._failed, callbackArgs=(job,), errbackArgs=(job,))

    def _done(self, _, job):
        self.pending -= 1
        self.written += sum(len(rows) for _, _, rows in job)
        if not self.pending and not self.rows:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _failed(self, failure, job):
        self.log.critical("history: inserting {count} rows into {tables} tables failed "
                          "({error}); retrying in {delay} s",
                          count=sum(len(rows) for _, _, rows in job), tables=len(job),
                          error=failure.getErrorMessage(), delay=self.retry_delay)
        self.reactor.callLater(self.retry_delay, self._retry, job)

    def _retry(self, job):
        self.pending -= 1
        self._run(job)

    def flush(self):
        """Write everything now; fires when nothing is left."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self.rows:
            self.flush_now()
        if not self.pending:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d
