# -*- test-case-name: matchengine.test.test_outbox -*-
"""The matchengine's writer process: history rows into MySQL, messages to Kafka.

Run by `matchengine.outbox.WriterOutbox` as `python -m matchengine.writer`.  It reads from
stdin frames, each a 4-byte big-endian length and a `marshal` encoding: first its settings
(a dict), then batches `(sequence, oper_id, history, messages)`, `oper_id` being the last
operation whose effects the batch holds; writes the
history rows (several threads, one MySQL connection each, one transaction per table group)
and sends the messages (`utils.kafka_wire`, in order), and writes on stdout, one per line,
the sequence number of the last batch both are done with.  Failures are retried every
second, forever, and reported on stderr, which the parent logs.  Stdin closing ends the
process after the batches already read.

How far each is written is kept in `trade_history.history_position` (`Positions`): per
table shard, in the transaction that inserts its rows, and per lane once a group is done.
A writer started again skips what its positions say is written (the daemon sends again
every batch not confirmed), and one started after the daemon was killed has the effects of
the operations committed but never handed over rebuilt from the operation log first
(`matchengine.rebuild`).  The messages lane records its position from a thread of its own:
while the history database is away, messages go on (each at least once).

Keeping this work in its own process keeps its CPU time (SQL texts, Kafka record
batches) off the matching thread's interpreter lock.
"""

import contextlib
import fcntl
import gc
import json
import marshal
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback

from twisted.logger import LogLevel

from matchengine.effects import HISTORY_COLUMNS
from matchengine.rowtext import fields_text, values_text
from utils.handoff import FRAME
from utils.kafka_wire import LeanProducer
from utils.mysql import (LOCAL_LOAD_REFUSED, SESSION_SETUP, client_charset, insert_texts,
                         lift_read_timeout, load_local, server_address)
from utils.outage import Outage

# how each history column is written into SQL: times to the microsecond, ids as integers,
# free text escaped; the remaining columns are decimals in their raw form (digits, a point,
# a sign), quoted as they are
TIME_COLUMNS = {"time", "create_time", "finish_time"}
INT_COLUMNS = {"id", "user_id", "deal_id", "order_id", "deal_order_id", "role", "side", "t"}
TEXT_COLUMNS = {"asset", "business", "detail", "market", "source"}


def _kinds(columns):
    """The letters of `matchengine.rowtext.values_text` for the columns."""
    return "".join("t" if c in TIME_COLUMNS else "i" if c in INT_COLUMNS
                   else "s" if c in TEXT_COLUMNS else "d" for c in columns)


KINDS = {table: _kinds(columns) for table, columns in HISTORY_COLUMNS.items()}


class ShardRows:
    """The rows of one table shard (`balance_history_7`), in order, and the ways of writing
    them: INSERT statements, or one LOAD DATA."""

    __slots__ = ("table", "shard", "rows")

    def __init__(self, table, shard, rows):
        self.table = table
        self.shard = shard
        self.rows = rows

    @property
    def name(self):
        return "%s_%d" % (self.table, self.shard)

    def inserts(self, chunk=1000):
        """Multi-row INSERT statements, `chunk` rows each at most."""
        kinds = KINDS[self.table]
        head = "INSERT IGNORE INTO `%s` (%s) VALUES " % (self.name, COLUMN_LISTS[self.table])
        return insert_texts(head, self.rows, lambda part: values_text(part, kinds), chunk)

    def load(self):
        """`(statement, data)` of a LOAD DATA LOCAL of the rows (`utils.mysql.load_local`):
        read as `inserts` would insert them, duplicates of a key skipped, texts in UTF-8."""
        return ("LOAD DATA LOCAL INFILE 'history' IGNORE INTO TABLE `%s` CHARACTER SET "
                "utf8mb4 (%s)" % (self.name, COLUMN_LISTS[self.table]),
                fields_text(self.rows, KINDS[self.table]))


COLUMN_LISTS = {table: ", ".join("`%s`" % c for c in columns)
                for table, columns in HISTORY_COLUMNS.items()}


def shard_rows(history):
    """`(table, shard, row)` entries gathered as `ShardRows`, each shard's rows in order."""
    tables = {}
    for table, shard, row in history:
        shards = tables.get(table)
        if shards is None:
            shards = tables[table] = {}
        rows = shards.get(shard)
        if rows is None:
            shards[shard] = [row]
        else:
            rows.append(row)
    return [ShardRows(table, shard, rows) for table, shards in tables.items()
            for shard, rows in shards.items()]


def insert_statements(history, chunk=1000):
    """The multi-row INSERT statements, as MySQL text, for `(table, shard, row)` entries:
    one per table shard and `chunk` rows."""
    return [sql for shard in shard_rows(history) for sql in shard.inserts(chunk)]


def deal(shards, workers):
    """`ShardRows` dealt to at most `workers` lists, the fewest rows to each: a shard's rows
    stay together and in order on one connection, so that their ids (AUTO_INCREMENT)
    follow the rows' order, as readers of the history list them."""
    loads = [[0, []] for _ in range(workers)]
    for shard in sorted(shards, key=lambda shard: len(shard.rows), reverse=True):
        load = min(loads, key=lambda load: load[0])
        load[0] += len(shard.rows)
        load[1].append(shard)
    return [load[1] for load in loads if load[1]]


POSITIONS_TABLE = "history_position"
HISTORY_LANE, MESSAGE_LANE = "history", "messages"
# not a position: the run of the daemon whose writers last checked the positions against
# what that run recovered (`run`)
RUN = "run"


def position_statement(names, oper_id):
    """The statement recording that `names` (table shards, lanes) are written up to
    operation `oper_id`."""
    return ("INSERT INTO `%s` (`name`, `oper_id`) VALUES %s ON DUPLICATE KEY UPDATE "
            "`oper_id` = VALUES(`oper_id`)"
            % (POSITIONS_TABLE, ", ".join("('%s', %d)" % (name, oper_id) for name in names)))


class Positions:
    """How far the history and the messages are written, by operation id: `history` and
    `messages`, every effect of the operations up to theirs; `shards`, per table shard
    (`balance_history_7`), its rows of the operations up to its own.

    The writer takes whole batches as the daemon handed them over, in order, so a batch's
    rows in a shard are all written or none: they are when the shard's position reaches the
    batch's last operation."""

    def __init__(self, marks):
        self.marks = dict(marks)
        # not a position: the daemon run that last checked them (`RUN`)
        self.run = self.marks.pop(RUN, None)
        self.history = self.marks.get(HISTORY_LANE, 0)
        self.messages = self.marks.get(MESSAGE_LANE, 0)
        self.top = max(self.marks.values(), default=0)

    def rows(self, oper_id, history):
        """Of `history`, the rows of a batch ending at `oper_id` not written yet."""
        if oper_id > self.top:
            return history
        if oper_id <= self.history:
            return []
        marks = self.marks
        return [entry for entry in history
                if oper_id > marks.get("%s_%d" % (entry[0], entry[1]), 0)]

    def messages_of(self, oper_id, messages):
        """`messages`, of a batch ending at `oper_id`, if they are not sent yet."""
        return messages if oper_id > self.messages else []


INFO = "info: "     # stderr lines with this prefix are news, the others trouble
# the prefix of a line at each level (`tell`); a line without one is critical
PREFIXES = {LogLevel.info: INFO, LogLevel.warn: "warn: ", LogLevel.error: "error: "}


def say(text, info=False):
    """A line for the daemon's log: critical, or info with `info`.  The daemon may be gone
    (its writer goes on with what it was handed): a line it can no longer read is dropped."""
    tell(LogLevel.info if info else LogLevel.critical, text)


def tell(level, text):
    """`say` at a `twisted.logger.LogLevel`."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(PREFIXES.get(level, "") + text.rstrip("\n") + "\n")
        sys.stderr.flush()


# the history database's outage, told once for the writer's connections (`utils.outage`)
HISTORY_OUTAGE = Outage("history", tell)


# seconds the opening of a connection may take (`utils.mysql.lift_read_timeout`)
CONNECT_TIMEOUT = 10


def connect(db):
    """A PyMySQL connection to the database of the config section `db`, able to send
    history rows by LOAD DATA LOCAL (`utils.mysql.load_local`).  Its opening is bounded by
    CONNECT_TIMEOUT (a server that accepts and says nothing is given up and tried again);
    its statements are not."""
    import pymysql
    from pymysql.constants import CLIENT
    conn = pymysql.connect(**server_address(db["host"], db.get("port", 3306)),
                           user=db["user"], password=db["pass"], database=db["name"],
                           charset=client_charset(db.get("charset", "utf8")), autocommit=False,
                           init_command=SESSION_SETUP, client_flag=CLIENT.LOCAL_FILES,
                           connect_timeout=CONNECT_TIMEOUT, read_timeout=CONNECT_TIMEOUT)
    lift_read_timeout(conn)
    return conn


def utf8mb4_history(db):
    """Have the history tables keep their texts in utf8mb4, once at start.

    The original's templates are in utf8, which MySQL takes for utf8mb3 (three bytes a
    character at most): a character of four bytes in a business, a detail or an order's
    source is stored there as "?".  The empty templates are converted; table shards holding
    rows are only reported (converting each rebuilds it: the operator's call), as is a
    failure.  The balances themselves do not depend on it (the operation log's tables are
    converted by the daemon)."""
    try:
        conn = connect(db)
    except Exception:
        return      # the lanes say it, and wait for the database
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT DISTINCT `TABLE_NAME` FROM information_schema.COLUMNS "
                           "WHERE `TABLE_SCHEMA` = DATABASE() AND `CHARACTER_SET_NAME` <> "
                           "'utf8mb4' AND `TABLE_NAME` REGEXP %s",
                           ("^(%s)_([0-9]+|example)$" % "|".join(HISTORY_COLUMNS),))
            tables = sorted(table for table, in cursor.fetchall())
            shards = [table for table in tables if not table.endswith("_example")]
            for table in (table for table in tables if table.endswith("_example")):
                alter = "ALTER TABLE `%s` CONVERT TO CHARACTER SET utf8mb4" % table
                try:
                    cursor.execute(alter)
                    say("history: %s now keeps its texts in utf8mb4" % table, info=True)
                except Exception as e:
                    say("history: %s keeps texts in utf8 (%s); run: %s" % (table, e, alter))
        if shards:
            say("history: %d tables (%s, ...) keep texts in utf8, three bytes a character "
                "at most: characters of four bytes in businesses, details and sources are "
                "stored there as '?'; convert each with ALTER TABLE ... CONVERT TO "
                "CHARACTER SET utf8mb4" % (len(shards), shards[0]))
    except Exception as e:
        say("history: the tables' character sets could not be checked: %s" % e)
    finally:
        conn.close()


# seconds a connection may have been left unused before it is checked (a ping) ahead of its
# next statements: one the server dropped meanwhile is replaced without a failure told
IDLE_CHECK = 1.0

# rows of a table shard from which a LOAD DATA takes less CPU than INSERTs, the server's
# and the writer's together (bench/history_rows.py): the server parses no SQL values, a
# quarter less of its CPU a row, but a LOAD costs two more round trips than an INSERT
LOAD_ROWS = 64


class Connection:
    """A MySQL connection to the history database, made again after a failure: `run`
    commits its statements in one transaction, retried every second until it succeeds.

    History rows (`ShardRows`) go in by LOAD DATA LOCAL where the server takes it and a
    shard has `LOAD_ROWS` rows or more, by INSERTs otherwise (MySQL 8's `local_infile` is
    off by default)."""

    def __init__(self, db, outage=None):
        self.db = db
        self.conn = None
        self.loads = None   # whether the server takes LOAD DATA LOCAL, once connected
        self.load_rows = LOAD_ROWS
        self.outage = outage or HISTORY_OUTAGE
        self.used = 0.0     # when it last committed

    def _connect(self):
        while True:
            try:
                conn = connect(self.db)
                if self.loads is None:
                    with conn.cursor() as cursor:
                        cursor.execute("SELECT @@local_infile")
                        self.loads = bool(cursor.fetchone()[0])
                    if not self.loads:
                        say("history: the server's local_infile is off: history rows go "
                            "in by INSERT", info=True)
                return conn
            except Exception as e:
                self.outage.failed("cannot connect to MySQL: %s; retrying in 1 s" % e, self)
                time.sleep(1)

    def _went_through(self):
        # its last use (`IDLE_CHECK`), and the end of its part of an outage
        self.used = time.monotonic()
        self.outage.succeeded(self)

    def _prepared(self, item):
        """A text as it is; `ShardRows` as `(statement, data)` of a LOAD DATA LOCAL, or as
        INSERT texts."""
        if isinstance(item, str):
            return item
        if self.loads and len(item.rows) >= self.load_rows:
            return item.load()
        return item.inserts()

    def run(self, statements, what="insert", applied=None):
        """Commit `statements` (texts, or `ShardRows`); returns the last text's rows.
        `applied`: a query that finds a row once they are committed, asked before they are
        tried again (a connection lost with the answer to its COMMIT may have committed).
        Rows that cannot be written as SQL raise, as they would again."""
        again = False
        if self.conn is not None and time.monotonic() - self.used > IDLE_CHECK:
            try:
                self.conn.ping(reconnect=False)
            except Exception:
                # dropped while it was idle (an outage over, MySQL restarted): replaced,
                # with nothing to tell
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None
        while True:
            if self.conn is None:
                self.conn = self._connect()
            work = [self._prepared(item) for item in statements]
            try:
                with self.conn.cursor() as cursor:
                    if again and applied is not None:
                        cursor.execute(applied)
                        if cursor.fetchall():
                            self.conn.rollback()    # nothing to do: the read ends
                            self._went_through()
                            return ()
                    for sql in work:
                        if isinstance(sql, str):
                            cursor.execute(sql)
                        elif isinstance(sql, tuple):
                            load_local(self.conn, *sql)
                        else:
                            for text in sql:
                                cursor.execute(text)
                    rows = cursor.fetchall() if work and isinstance(work[-1], str) else ()
                self.conn.commit()
                self._went_through()
                return rows
            except Exception as e:
                again = True
                code = e.args[0] if e.args else None
                refused = self.loads and code in LOCAL_LOAD_REFUSED
                if refused:
                    self.loads = False
                    say("history: the server refuses LOAD DATA LOCAL (%s): history rows go "
                        "in by INSERT" % (e,), info=True)
                else:
                    self.outage.failed("%s failed: %s; retrying in 1 s" % (what, e), self)
                # the connection may be lost already: it is replaced either way
                with contextlib.suppress(Exception):
                    self.conn.rollback()
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None
                if not refused:
                    time.sleep(1)


def load_positions(connection, start):
    """The `Positions` kept in the history database; the lanes' positions are `start` where
    there are none yet (a new database, or one written before positions were kept)."""
    rows = connection.run([
        "CREATE TABLE IF NOT EXISTS `%s` (`name` VARCHAR(64) NOT NULL PRIMARY KEY, "
        "`oper_id` BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB" % POSITIONS_TABLE,
        "INSERT IGNORE INTO `%s` (`name`, `oper_id`) VALUES ('%s', %d), ('%s', %d)"
        % (POSITIONS_TABLE, HISTORY_LANE, start, MESSAGE_LANE, start),
        "SELECT `name`, `oper_id` FROM `%s`" % POSITIONS_TABLE], "reading positions")
    return Positions({name: int(oper_id) for name, oper_id in rows})


class HistoryThreads:
    """`workers` threads, each inserting the statements it is given on its own connection."""

    def __init__(self, db, workers):
        self.db = db
        self.jobs = [queue.Queue() for _ in range(workers)]
        for index, jobs in enumerate(self.jobs):
            threading.Thread(target=ending_on_failure(self._work), args=(jobs,),
                             name="history-%d" % index, daemon=True).start()

    def _work(self, jobs):
        connection = Connection(self.db)
        while True:
            statements, applied, done = jobs.get()
            connection.run(statements, applied=applied)
            done.release()

    def write(self, history, oper_id=None):
        """Insert the rows; returns when every statement is committed.  With `oper_id`,
        each transaction records its shards as written up to that operation."""
        groups = deal(shard_rows(history), len(self.jobs))
        done = threading.Semaphore(0)
        for jobs, shards in zip(self.jobs, groups):
            applied = None
            statements = list(shards)
            if oper_id is not None:
                names = [shard.name for shard in shards]
                statements.append(position_statement(names, oper_id))
                # committed with its rows: the transaction went through if it is there
                # (read under a lock: a COMMIT still under way is waited for)
                applied = ("SELECT 1 FROM `%s` WHERE `name` = '%s' AND `oper_id` >= %d "
                           "FOR UPDATE" % (POSITIONS_TABLE, names[0], oper_id))
            jobs.put((statements, applied, done))
        for _ in groups:
            done.acquire()


class Messages:
    """The Kafka lane's producer: each group in few requests, retried in place while the
    brokers are away (`utils.kafka_wire`)."""

    def __init__(self, brokers):
        self.producer = LeanProducer(brokers, say=say, outage=Outage("kafka", tell))

    def send(self, messages):
        if messages:
            self.producer.send([(topic, text.encode()) for topic, text in messages])

    def close(self):
        self.producer.close()


READ_PAUSE = 0.01             # seconds between two reads of the daemon's pipe, at least
READ_SIZE = 1 << 22           # bytes taken from the pipe at most per read
# seconds a lane gathers batches before writing them: the original's history timer.  The
# rows of a window spread over 500 table shards, and MariaDB's cost per row falls with the
# rows per statement (bench/history_rows.py: 22.3 us at 6 a statement, 16.8 at 38, 13.9
# at 363), so a longer window takes less of the CPU it shares with the matching
GROUP_WINDOW = 0.1
# history rows written together, at most: a lane that has fallen behind catches up in large
# groups, whose statements carry more rows each (about 100 at 100,000 rows over the 500
# shards) and so cost MariaDB less a row
MAX_GROUP_ROWS = 100000
MAX_GROUP_MESSAGES = 20000    # messages sent together, at most


def coalesce(batches, limit, size, window=0.0, sleep=time.sleep):
    """Yield (group, last): each group is the next batch with those queued behind it and
    those arriving within `window` seconds, up to `limit` items by `size` (a lane that is
    that far behind does not wait); `last` once the end mark (None) was taken.  So a lane
    writes at most once a window, however often batches come."""
    while True:
        batch = batches.get()
        if batch is None:
            yield [], True
            return
        group, total = [batch], size(batch)
        for rest in (False, True):
            if rest:
                if total >= limit or window <= 0:
                    break
                sleep(window)
            while total < limit:
                try:
                    batch = batches.get_nowait()
                except queue.Empty:
                    break
                if batch is None:
                    yield group, True
                    return
                group.append(batch)
                total += size(batch)
        yield group, False


LOCK_PATIENCE = 60    # seconds of waiting for the previous writer before it is trouble


def take_turn(path, poll=1.0):
    """An Event set once this writer holds the lock file at `path` (at once without one).

    The writer of a daemon that was killed goes on writing what it was handed; the writer of
    the restarted daemon reads its positions, and its batches, only after the old one has
    exited (the daemon's pipe holds them meanwhile), so that history and messages keep their
    order.
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
        _HELD.append(handle)    # the lock lasts as long as the process
        waited, warned = 0.0, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    say("waiting for the previous writer to finish (%s)" % path, info=True)
                elif waited >= LOCK_PATIENCE and not warned:
                    warned = True
                    say("still waiting for the previous writer after %d s: is another "
                        "matchengine using the lock file %s?" % (waited, path))
                time.sleep(poll)
                waited += poll
        if waited:
            say("the previous writer has finished", info=True)
        turn.set()

    threading.Thread(target=take, name="lock", daemon=True).start()
    return turn


# the lock files this process holds: open for as long as it lives (a file object no longer
# referenced is closed, and its lock released with it)
_HELD = []


def read_batches(fd, pause=READ_PAUSE):
    """Yield the batches the daemon writes down the pipe `fd`, then None at its end (a
    frame cut short by the daemon's death ends it too: what came before is still written).

    Each read takes all that is there, then the reader rests `pause` seconds: under load the
    daemon hands a batch over at every commit, hundreds a second, and waking this process
    for each would cost more than the batches themselves.  The pipe holds them meanwhile.
    """
    buffer = bytearray()
    while True:
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            yield None
            return
        buffer += chunk
        view, offset = memoryview(buffer), 0
        while len(buffer) - offset >= FRAME.size:
            (size,) = FRAME.unpack_from(buffer, offset)
            start = offset + FRAME.size
            if len(buffer) - start < size:
                break
            batch = marshal.loads(view[start:start + size])
            offset = start + size
            yield batch
        view.release()
        del buffer[:offset]
        if pause:
            time.sleep(pause)


class Acks:
    """Confirms on stdout, as one number, the last batch both lanes are done with: every
    batch up to it is written and sent (each lane takes them in order)."""

    def __init__(self, stdout, parts):
        self.stdout = stdout
        self.upto = [0] * parts      # per lane, the last batch it is done with
        self.confirmed = 0
        self.lock = threading.Lock()

    def finished(self, lane, sequence):
        with self.lock:
            self.upto[lane] = sequence
            done = min(self.upto)
            if done <= self.confirmed:
                return
            self.confirmed = done
            if self.stdout is None:
                return
            try:
                self.stdout.write(b"%d\n" % done)
                self.stdout.flush()
            except OSError:
                # the daemon is gone: nobody to confirm to, but what it handed over before
                # dying is still written and sent
                self.stdout = None


# seconds between two runs of the garbage collector (see `collect_every`)
COLLECT_INTERVAL = 60.0


def collect_every(seconds, sleep=time.sleep):
    """Turn the automatic garbage collector off and run it every `seconds` from a thread of
    its own instead (returned).

    What the writer holds is plain data (tuples, strings, numbers, lists), freed by
    reference counting once written; the collector's automatic passes over the batches
    waiting in the lanes, about 1,800 for 60,000 orders, took a sixth of the writer's CPU
    (BENCHMARKS.md).  A run a minute still frees what a failure path may leave in cycles."""
    gc.disable()

    def run():
        while True:
            sleep(seconds)
            gc.collect()
    thread = threading.Thread(target=run, name="collector", daemon=True)
    thread.start()
    return thread


def ending_on_failure(lane):
    """`lane` (or one of its threads), ending the process if it fails: a lane stopped while
    the process lives on would confirm nothing more, and the daemon would wait for it for
    ever.  Ended, the process is started again by the daemon, which sends every unconfirmed
    batch again."""
    def run(*args):
        try:
            lane(*args)
        except BaseException:
            try:
                say("the %s thread failed, the writer ends:\n%s"
                    % (threading.current_thread().name, traceback.format_exc()))
            finally:
                os._exit(LANE_FAILED)
    return run


LANE_FAILED = 3     # the writer's exit status when a lane failed


class Recorder:
    """Records a lane's position from a thread of its own, the newest each time: the lane
    goes on while the history database is away, its position behind (what is sent again
    after a crash is then more, never less)."""

    def __init__(self, db, names):
        self.db = db
        self.names = names
        self.value = self.written = None
        self.closing = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=ending_on_failure(self._run), name="positions",
                                       daemon=True)
        self.thread.start()

    def set(self, oper_id):
        with self.changed:
            self.value = oper_id
            self.changed.notify()

    def _run(self):
        connection = Connection(self.db)
        while True:
            with self.changed:
                while self.value == self.written and not self.closing:
                    self.changed.wait()
                value = self.value
                if value == self.written:
                    return
            connection.run([position_statement(self.names, value)], "recording positions")
            self.written = value

    def close(self):
        """Returns once the newest position is recorded."""
        with self.changed:
            self.closing = True
            self.changed.notify()
        self.thread.join()


REBUILD_PATIENCE = 300.0    # seconds a rebuild is tried again before it is given up
PROGRESS = "progress"       # a rebuild's frame: a page of its slice or log is loaded
REBUILD_QUEUE = 100         # rebuilt batches waiting in a lane, at most


def _relay(stream):
    """Copy a child's stderr lines to this process's (the daemon logs them)."""
    for line in stream:
        sys.stderr.write(line.decode("utf-8", "replace"))
        sys.stderr.flush()


def _stop_child(child):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)     # and the log reader it forked


def rebuilt(settings, after, positions, patience=REBUILD_PATIENCE):
    """Yield the batches of `matchengine.rebuild` for the operations after `after` up to
    `settings["upto"]` (those `positions` say are not written), from a process of its own:
    run again from where it stopped, and stopped when it makes no progress (no batch, no page
    of its slice or log loaded) for `patience` seconds, until it ends well, or given up
    (critical on the log) once `patience` seconds passed without progress."""
    upto = settings["upto"]
    say("rebuilding the history and messages of operations %d to %d, committed but never "
        "handed over" % (after + 1, upto), info=True)
    progress = [time.monotonic()]      # the last progress's time, or the first attempt's
    while after < upto:
        # a session of its own, so that it and its log reader end together; its stderr
        # relayed, so that this process's end is seen at once by the daemon
        child = subprocess.Popen([sys.executable, "-m", "matchengine.rebuild"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=_relay, args=(child.stderr,), name="rebuild log",
                         daemon=True).start()

        def watch(child=child):
            while child.poll() is None:
                if time.monotonic() - progress[0] >= patience:
                    say("rebuilding made no progress for %d s; stopped" % patience)
                    _stop_child(child)
                    return
                time.sleep(min(1.0, patience / 4))
        threading.Thread(target=watch, name="rebuild watch", daemon=True).start()
        try:
            child.stdin.write(json.dumps(dict(settings, after=after,
                                              marks=positions.marks)).encode())
            child.stdin.close()
            for batch in read_batches(child.stdout.fileno(), pause=0):
                if batch is None:
                    break
                progress[0] = time.monotonic()
                if batch[0] == PROGRESS:
                    continue
                after = batch[1]
                yield batch
        except BrokenPipeError:
            pass        # the child ended before reading its settings: its status tells
        finally:
            _stop_child(child)
            child.stdout.close()
            status = child.wait()
        if after >= upto:
            break
        if time.monotonic() - progress[0] >= patience:
            say("rebuilding failed for %d s: the history and messages of operations %d to %d "
                "are not rebuilt" % (patience, after + 1, upto))
            return
        say("rebuilding ended at operation %d (status %d); going on in 1 s" % (after, status))
        time.sleep(1)
    say("rebuilt the history and messages up to operation %d" % upto, info=True)


def main():
    try:
        run(sys.stdin.buffer, sys.stdout.buffer)
    except BaseException:
        # the lanes' threads would keep the process alive, confirming nothing
        say("the writer failed:\n%s" % traceback.format_exc())
        os._exit(LANE_FAILED)


def run(stdin, stdout):
    collect_every(COLLECT_INTERVAL)
    frames = read_batches(stdin.fileno())
    settings = next(frames)
    if settings is None:
        return
    take_turn(settings.get("lock")).wait()
    # the daemon's batches wait in its pipe meanwhile
    parent = settings.get("parent")
    if parent is not None and os.getppid() != parent:
        # a writer's turn comes once the writer before has exited: one whose daemon ended
        # meanwhile may come after the writer of a later run, which has written (rebuilt
        # from the log) everything this one was handed; it would write it again
        say("the daemon ended before this writer's turn came; the writer of its next start "
            "writes what it handed over", info=True)
        return
    db = settings["db_history"]
    history = HistoryThreads(db, settings.get("workers", 4))
    messages = Messages(settings["brokers"]) if settings.get("brokers") else None
    acks = Acks(stdout, 2 if messages is not None else 1)
    # the daemon hands each commit's batch over at once; gathering them here for a while
    # keeps MySQL commits and Kafka flushes few, whatever the rate of commits
    window = settings.get("window", GROUP_WINDOW)
    # unbounded: the reader never waits for a lane, so the daemon's pipe is emptied every
    # READ_PAUSE however slow MySQL or Kafka are (the daemon bounds the total by its
    # queue limits)
    lanes = [queue.Queue() for _ in acks.upto]
    # what is written already, read once the previous writer is done (`ready`)
    known = []
    ready = threading.Event()
    # without Kafka, no message waits: the history lane answers for both
    history_names = [HISTORY_LANE] if messages is not None else [HISTORY_LANE, MESSAGE_LANE]

    def history_lane(batches):
        # in order, independently of the Kafka lane; the batches of a window (and those
        # that queued up while the previous write ran) go into MySQL together
        ready.wait()
        positions, connection = known[0], Connection(db)
        for group, last in coalesce(batches, MAX_GROUP_ROWS, lambda batch: len(batch[2]),
                                    window):
            if group:
                upto = group[-1][1]
                rows = [row for _, oper_id, batch_rows, _ in group
                        for row in positions.rows(oper_id, batch_rows)]
                if rows:
                    history.write(rows, upto)
                connection.run([position_statement(history_names, upto)], "recording positions")
                acks.finished(0, group[-1][0])
            if last:
                return

    def message_lane(batches):
        ready.wait()
        positions, recorder = known[0], Recorder(db, [MESSAGE_LANE])
        for group, last in coalesce(batches, MAX_GROUP_MESSAGES, lambda batch: len(batch[3]),
                                    window):
            if group:
                messages.send([message for _, oper_id, _, batch_messages in group
                               for message in positions.messages_of(oper_id, batch_messages)])
                recorder.set(group[-1][1])
                acks.finished(1, group[-1][0])
            if last:
                recorder.close()
                messages.close()
                return

    workers = [threading.Thread(target=ending_on_failure(history_lane), args=(lanes[0],),
                                name="history")]
    if messages is not None:
        workers.append(threading.Thread(target=ending_on_failure(message_lane),
                                        args=(lanes[1],), name="messages"))
    for worker in workers:
        worker.start()
    utf8mb4_history(db)
    recovered = settings.get("recovered", 0)
    connection = Connection(db)
    positions = load_positions(connection, recovered)
    if "handed" in settings:
        # no writer has written past the last operation the daemon handed over; but the
        # first writer of a daemon run checks against what the run recovered: what lies
        # past it was written before (see below)
        run_id = settings.get("run")
        first = run_id is None or positions.run != run_id
        ceiling = recovered if first else settings["handed"]
        statements = []
        if positions.top > ceiling:
            # effects written before their operations were in the log (the asynchronous
            # mode), of operations a crash then took from it: the ids after are new ones
            say("positions up to operation %d, past %d: the history and messages written "
                "for the operations the log lost are kept, and the ids after %d are the new "
                "operations'" % (positions.top, ceiling, ceiling))
            statements.append("UPDATE `%s` SET `oper_id` = %d WHERE `oper_id` > %d AND "
                              "`name` <> '%s'" % (POSITIONS_TABLE, ceiling, ceiling, RUN))
        if first and run_id is not None:
            statements.append(position_statement([RUN], run_id))
        if statements:
            connection.run(statements, "recording positions")
            positions = load_positions(connection, recovered)
    known.append(positions)
    ready.set()
    rebuild = settings.get("rebuild")
    after = (min(positions.history, positions.messages) if messages is not None
             else positions.history)
    if rebuild is not None and after < recovered:
        for batch in rebuilt(dict(rebuild, upto=recovered), after, positions,
                             settings.get("rebuild_patience", REBUILD_PATIENCE)):
            while any(lane.qsize() >= REBUILD_QUEUE for lane in lanes):
                time.sleep(0.05)
            for lane in lanes:
                lane.put(batch)
    for batch in frames:
        for lane in lanes:
            lane.put(batch)
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
