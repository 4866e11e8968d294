# -*- test-case-name: matchengine.test.test_outbox -*-
"""The matchengine's writer process: history rows into MySQL, messages to Kafka.

Run by `matchengine.outbox.WriterProcess` as `python -m matchengine.writer`, with its
settings as JSON in the first argument.  It reads batches from stdin, each framed as a 4-byte
big-endian length and the `marshal` encoding of `(sequence, history, messages)`; writes the history rows
(several threads, one MySQL connection each, one transaction per table group) and sends the
messages (kafka-python, in order), and once both are done writes the batch's sequence number
on stdout, one per line.  Failures are retried every second, forever, and reported on stderr,
which the parent logs.  Stdin closing ends the process after the batches already read.

Keeping this work in its own process keeps its CPU time (SQL escaping, Kafka record
building) off the matching thread's interpreter lock.
"""

import contextlib
import fcntl
import json
import marshal
import queue
import struct
import sys
import threading
import time

from pymysql.converters import escape_string

from matchengine.effects import HISTORY_COLUMNS

FRAME = struct.Struct(">I")

# how each history column is written into SQL: times to the microsecond, ids as integers,
# free text escaped; the remaining columns are decimals in their raw form (digits, a point,
# a sign), quoted as they are
TIME_COLUMNS = {"time", "create_time", "finish_time"}
INT_COLUMNS = {"id", "user_id", "deal_id", "order_id", "deal_order_id", "role", "side", "t"}
TEXT_COLUMNS = {"asset", "business", "detail", "market", "source"}


def _row_format(columns):
    parts, texts = [], []
    for index, column in enumerate(columns):
        if column in TIME_COLUMNS:
            parts.append("%.6f")
        elif column in INT_COLUMNS:
            parts.append("%d")
        else:
            parts.append("'%s'")
            if column in TEXT_COLUMNS:
                texts.append(index)
    return "(%s)" % ", ".join(parts), tuple(texts)


ROW_FORMATS = {table: _row_format(columns) for table, columns in HISTORY_COLUMNS.items()}


def insert_statements(history, chunk=1000):
    """The multi-row INSERT statements, as MySQL text, for `(table, shard, row)` entries:
    one per table shard and `chunk` rows."""
    tables = {}
    for table, shard, row in history:
        bucket = tables.get((table, shard))
        if bucket is None:
            tables[table, shard] = [row]
        else:
            bucket.append(row)
    statements = []
    for (table, shard), rows in tables.items():
        form, texts = ROW_FORMATS[table]
        if texts:
            values = []
            for row in rows:
                row = list(row)
                for index in texts:
                    row[index] = escape_string(row[index])
                values.append(form % tuple(row))
        else:
            values = [form % row for row in rows]
        head = "INSERT IGNORE INTO `%s_%d` (%s) VALUES " % (
            table, shard, ", ".join("`%s`" % c for c in HISTORY_COLUMNS[table]))
        for start in range(0, len(values), chunk):
            statements.append(head + ", ".join(values[start:start + chunk]))
    return statements


INFO = "info: "     # stderr lines with this prefix are news, the others trouble


def say(text, info=False):
    """A line for the daemon's log: critical, or info with `info`."""
    sys.stderr.write((INFO if info else "") + text.rstrip("\n") + "\n")
    sys.stderr.flush()


class HistoryThreads:
    """`workers` threads, each inserting the statements it is given on its own connection."""

    def __init__(self, db, workers, chunk=1000):
        self.db = db
        self.chunk = chunk
        self.jobs = [queue.Queue() for _ in range(workers)]
        for index, jobs in enumerate(self.jobs):
            threading.Thread(target=self._work, args=(jobs,), name="history-%d" % index,
                             daemon=True).start()

    def _connect(self):
        import pymysql
        while True:
            try:
                return pymysql.connect(host=self.db["host"], port=int(self.db.get("port", 3306)),
                                       user=self.db["user"], password=self.db["pass"],
                                       database=self.db["name"],
                                       charset=self.db.get("charset", "utf8"), autocommit=False)
            except Exception as e:
                say("history: cannot connect to MySQL: %s; retrying in 1 s" % e)
                time.sleep(1)

    def _work(self, jobs):
        conn = self._connect()
        while True:
            statements, done = jobs.get()
            while True:
                try:
                    with conn.cursor() as cursor:
                        for sql in statements:
                            cursor.execute(sql)
                    conn.commit()
                    break
                except Exception as e:
                    say("history: insert failed: %s; retrying in 1 s" % e)
                    # the connection may be lost already: it is replaced either way
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    with contextlib.suppress(Exception):
                        conn.close()
                    time.sleep(1)
                    conn = self._connect()
            done.release()

    def write(self, history):
        """Insert the rows; returns when every statement is committed."""
        statements = insert_statements(history, self.chunk)
        groups = [statements[i::len(self.jobs)] for i in range(len(self.jobs))]
        groups = [g for g in groups if g]
        done = threading.Semaphore(0)
        for jobs, group in zip(self.jobs, groups):
            jobs.put((group, done))
        for _ in groups:
            done.acquire()


class Messages:
    """The Kafka producer, retrying in place while the broker is away."""

    def __init__(self, brokers):
        self.brokers = brokers
        self.producer = None

    def _connect(self):
        from kafka import KafkaProducer
        from utils.kafka_queue import PRODUCER_CONFIG, _retry_unknown_errors
        _retry_unknown_errors()
        while True:
            try:
                return KafkaProducer(bootstrap_servers=self.brokers, **PRODUCER_CONFIG)
            except Exception as e:
                say("kafka: cannot reach %s: %s; retrying in 1 s" % (self.brokers, e))
                time.sleep(1)

    def send(self, messages):
        if not messages:
            return
        if self.producer is None:
            self.producer = self._connect()
        futures = []
        for topic, text in messages:
            while True:
                try:
                    futures.append(self.producer.send(topic, text.encode(), partition=0))
                    break
                except Exception as e:
                    say("kafka: send to %s failed: %s; retrying in 1 s" % (topic, e))
                    time.sleep(1)
        self.producer.flush()
        for future in futures:
            if future.failed():
                say("kafka: a message was not delivered: %s" % future.exception)


GROUP_WINDOW = 0.05           # seconds a lane gathers batches before writing them
MAX_GROUP_ROWS = 20000        # history rows written together, at most
MAX_GROUP_MESSAGES = 20000    # messages sent together, at most


def coalesce(batches, limit, size, window=0.0, clock=time.monotonic):
    """Yield (group, last): each group is the next batch with those that arrive within
    `window` seconds of it (or were queued behind it), up to `limit` items by `size`; `last`
    once the end mark (None) was taken."""
    while True:
        batch = batches.get()
        if batch is None:
            yield [], True
            return
        group, total = [batch], size(batch)
        deadline = clock() + window
        while total < limit:
            remaining = deadline - clock()
            try:
                batch = (batches.get(timeout=remaining) if remaining > 0
                         else batches.get_nowait())
            except queue.Empty:
                break
            if batch is None:
                yield group, True
                return
            group.append(batch)
            total += size(batch)
        yield group, False


def take_turn(path):
    """An Event set once this writer holds the lock file at `path` (at once without one).

    The writer of a daemon that was killed goes on writing what it was handed; the writer of
    the restarted daemon reads its own batches meanwhile, but writes and sends them only
    after the old one has exited, so that history and messages keep their order.
    """
    turn = threading.Event()
    if not path:
        turn.set()
        return turn

    def take():
        try:
            handle = open(path, "a")
        except OSError as e:
            say("cannot open the lock file %s: %s; going on without it" % (path, e))
            turn.set()
            return
        held.append(handle)     # the lock lasts as long as the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for the previous writer to finish (%s)" % path, info=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
            say("the previous writer has finished", info=True)
        turn.set()

    held = []
    threading.Thread(target=take, name="lock", daemon=True).start()
    return turn


def read_exactly(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Acks:
    """Confirms a batch on stdout once both the history and the messages of it are done."""

    def __init__(self, stdout, parts):
        self.stdout = stdout
        self.parts = parts
        self.done = {}
        self.lock = threading.Lock()

    def finished(self, sequence):
        with self.lock:
            count = self.done.get(sequence, 0) + 1
            if count < self.parts:
                self.done[sequence] = count
                return
            self.done.pop(sequence, None)
            if self.stdout is None:
                return
            try:
                self.stdout.write(b"%d\n" % sequence)
                self.stdout.flush()
            except OSError:
                # the daemon is gone: nobody to confirm to, but what it handed over before
                # dying is still written and sent
                self.stdout = None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    settings = json.loads(argv[0])
    history = HistoryThreads(settings["db_history"], settings.get("workers", 4))
    messages = Messages(settings["brokers"]) if settings.get("brokers") else None
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    acks = Acks(stdout, 2 if messages is not None else 1)
    turn = take_turn(settings.get("lock"))
    # the daemon hands each commit's batch over at once; gathering them here for a while
    # keeps MySQL commits and Kafka flushes few when the load is light
    window = settings.get("window", GROUP_WINDOW)
    # unbounded: reading stdin never waits for a lane, so what the daemon hands over leaves
    # its pipe at once (the daemon bounds the total by its queue limits)
    lanes = [queue.Queue() for _ in range(acks.parts)]

    def history_lane(batches):
        # in order, independently of the Kafka lane; the batches of a window (and those
        # that queued up while the previous write ran) go into MySQL together
        turn.wait()
        for group, last in coalesce(batches, MAX_GROUP_ROWS, lambda batch: len(batch[1]),
                                    window):
            rows = [row for _, batch_rows, _ in group for row in batch_rows]
            if rows:
                history.write(rows)
            for sequence, _, _ in group:
                acks.finished(sequence)
            if last:
                return

    def message_lane(batches):
        turn.wait()
        for group, last in coalesce(batches, MAX_GROUP_MESSAGES, lambda batch: len(batch[2]),
                                    window):
            messages.send([message for _, _, batch_messages in group
                           for message in batch_messages])
            for sequence, _, _ in group:
                acks.finished(sequence)
            if last:
                if messages.producer is not None:
                    messages.producer.close(timeout=10)
                return

    workers = [threading.Thread(target=history_lane, args=(lanes[0],), name="history")]
    if messages is not None:
        workers.append(threading.Thread(target=message_lane, args=(lanes[1],),
                                        name="messages"))
    for worker in workers:
        worker.start()
    while True:
        head = read_exactly(stdin, FRAME.size)
        body = None if head is None else read_exactly(stdin, FRAME.unpack(head)[0])
        # the end, or a frame cut short by the daemon's death: what came before is written
        batch = None if body is None else marshal.loads(body)
        for lane in lanes:
            lane.put(batch)
        if batch is None:
            break
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
