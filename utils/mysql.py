# -*- test-case-name: utils.test.test_mysql -*-
"""SQL databases on Twisted's adbapi thread pool: MySQL/MariaDB through PyMySQL, or SQLite.

`Database` wraps an `adbapi.ConnectionPool` and carries a `Dialect`, the one place where the
two SQL flavours differ: placeholders, `INSERT IGNORE`, and the table definitions (MySQL DDL
is written once, in `depends/sql/`, and translated for SQLite).  Queries always run in the
pool's threads, never on the reactor.

Amounts are DECIMAL columns in MySQL and text in SQLite; `decimal.Decimal` parameters are
bound as their exact text, and callers turn what they read back into `Decimal` (which accepts
both the `Decimal` PyMySQL returns and SQLite's text).  MySQL keeps a DECIMAL(p,s) column's
value at s places, rounding half away from zero; in SQLite such a column is declared
`DECIMAL_TEXT(p,s)` (text affinity) and `insert_rows` rounds its values the same way, so
that both answer the same digits (a zero is never negative).  MySQL's text columns compare
as its `_ci` collations do, case, accents and trailing spaces aside; SQLite's are declared
with the collation `mysql_ci`, which compares alike (`open_sqlite` registers it).  SQLite's
integers are 64-bit signed: a larger integer parameter (an unsigned -1, as the original reads
times and ids) is bound as a real, and a larger LIMIT offset cut to the largest, which
compare and page as MySQL's unsigned ones.

Lost connections (MySQL errors 2003, 2006, 2013) are retried on a fresh connection for
interactions marked `retry=True`; use it for reads and for writes that are idempotent
(explicit primary keys, `INSERT IGNORE`), never for blind appends.

A MySQL connection found lost is dropped with a warning and opened again when next needed,
as the original's client library reconnects; after one loss, each other connection is pinged
before its next use, since the server restarting, or the path to it cut, loses them all.  A
query that fails is the caller's to log.

A MySQL pool can be aborted (`Database.abort`): adbapi waits for its threads when the reactor
stops, and PyMySQL reads with no timeout, so a query blocked in the server (a locked table)
would otherwise hold a stopping daemon until the server answered.
"""

import decimal
import os
import re
import socket
import sqlite3
import unicodedata

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from utils.config import INT64_MAX

__all__ = ["Database", "Dialect", "MYSQL", "SQLITE", "connect_mysql", "connect_sqlite",
           "open_sqlite", "from_config", "server_address", "split_statements",
           "CONNECTION_LOST", "connection_lost", "load_local", "LOCAL_LOAD_REFUSED", "Aborted",
           "MySQLPool", "keep_alive", "literal_row", "literal_value", "needs_escape"]

log = Logger()

# CR_CONN_HOST_ERROR, CR_SERVER_GONE_ERROR, CR_SERVER_LOST
CONNECTION_LOST = frozenset({2003, 2006, 2013})

sqlite3.register_adapter(decimal.Decimal, str)


class Dialect:
    """How one SQL flavour spells what the project writes in MySQL's."""

    def __init__(self, name, placeholder):
        self.name = name
        self.placeholder = placeholder

    def sql(self, statement: str) -> str:
        return statement

    def bind(self, args):
        """The parameters of a statement as this flavour takes them."""
        return args

    def ddl(self, statement: str) -> list:
        """The statements that create, in this flavour, what `statement` creates in MySQL's."""
        return [statement]

    def quote(self, name: str) -> str:
        return "`%s`" % name.replace("`", "``")


class _SQLite(Dialect):
    _create = re.compile(r"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?`?(\w+)`?\s*\((.*)\)",
                         re.I | re.S)
    _like = re.compile(r"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?`?(\w+)`?\s+LIKE\s+`?(\w+)`?",
                       re.I)
    _index = re.compile(r"^(UNIQUE\s+)?(?:INDEX|KEY)\s+`?(\w+)`?\s*\((.*)\)$", re.I | re.S)

    def __init__(self):
        super().__init__("sqlite", "?")
        self.tables = {}   # name -> body, for CREATE TABLE ... LIKE

    def sql(self, statement):
        statement = re.sub(r"\bINSERT\s+IGNORE\b", "INSERT OR IGNORE", statement, flags=re.I)
        statement = _LIMIT.sub(_limit_cut, statement)
        return statement.replace("%s", "?")

    def bind(self, args):
        return [float(a) if type(a) is int and a > INT64_MAX else a for a in args]

    def _column(self, line):
        line = re.sub(r"\bDECIMAL\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", r"DECIMAL_TEXT(\1,\2)",
                      line, flags=re.I)
        line = re.sub(r"\b(TINYINT|SMALLINT|MEDIUMINT|INT|BIGINT)\b(\s+UNSIGNED)?", "INTEGER",
                      line, flags=re.I)
        line = re.sub(r"\bVARCHAR\s*\(\s*\d+\s*\)", "TEXT COLLATE %s" % COLLATION, line,
                      flags=re.I)
        if re.search(r"\bAUTO_INCREMENT\b", line, re.I):
            name = line.split()[0]
            return "%s INTEGER PRIMARY KEY AUTOINCREMENT" % name
        return line

    def ddl(self, statement):
        statement = statement.strip().rstrip(";")
        like = self._like.match(statement)
        if like:
            exists, name, template = like.groups()
            if template not in self.tables:
                raise ValueError("CREATE TABLE %s LIKE %s: template unknown" % (name, template))
            self.tables[name] = self.tables[template]
            return self._table(name, self.tables[template], bool(exists))
        create = self._create.match(statement)
        if not create:
            return [statement]
        exists, name, body = create.groups()
        self.tables[name] = body
        return self._table(name, body, bool(exists))

    def _table(self, name, body, if_not_exists):
        columns, indexes = [], []
        for part in _split_columns(body):
            index = self._index.match(part)
            if index:
                unique, index_name, fields = index.groups()
                indexes.append("CREATE %sINDEX IF NOT EXISTS `%s_%s` ON `%s` (%s)" % (
                    "UNIQUE " if unique else "", name, index_name, name, fields))
            else:
                columns.append(self._column(part))
        head = "CREATE TABLE %s`%s`" % ("IF NOT EXISTS " if if_not_exists else "", name)
        return ["%s (\n    %s\n)" % (head, ",\n    ".join(columns))] + indexes


_LIMIT = re.compile(r"\b(LIMIT\s+)(\d{19,})")


def _limit_cut(match):
    return match.group(1) + str(min(int(match.group(2)), INT64_MAX))


COLLATION = "mysql_ci"


def _ci_key(text):
    text = unicodedata.normalize("NFKD", text.rstrip(" "))
    return "".join(c for c in text if not unicodedata.combining(c)).casefold()


def _ci_compare(a, b):
    a, b = _ci_key(a), _ci_key(b)
    return (a > b) - (a < b)


def _knows_collation(conn):
    conn.create_collation(COLLATION, _ci_compare)


def open_sqlite(path, **kwargs):
    """An SQLite connection that knows the collation `mysql_ci` of the tables made here."""
    conn = sqlite3.connect(path, **kwargs)
    _knows_collation(conn)
    return conn


def _split_columns(body):
    """Split a table body on the commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        depth += char == "("
        depth -= char == ")"
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def split_statements(script: str) -> list:
    """The statements of an SQL script: `--` comments dropped, split on `;`."""
    text = "\n".join(line for line in script.splitlines()
                     if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


MYSQL = Dialect("mysql", "%s")
SQLITE = _SQLite


class Database:
    """A pool of connections and the dialect they speak."""

    log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, dialect: Dialect, description: str):
        self.pool = pool
        self.dialect = dialect
        self.description = description
        self._declared = {}     # SQLite table -> {column: places of its DECIMAL_TEXT}

    def __repr__(self):
        return "<Database %s>" % self.description

    @property
    def sqlite_path(self):
        """The file of an SQLite database; None for MySQL."""
        return self.pool.connargs[0] if self.dialect.name == "sqlite" else None

    def interaction(self, work, *args, retry=False, **kwargs):
        """Run `work(cursor, *args, **kwargs)` in one transaction in a pool thread."""
        return defer.Deferred.fromCoroutine(self._interact(work, args, kwargs, retry))

    async def _interact(self, work, args, kwargs, retry):
        attempts = 2 if retry else 1
        lost = None
        for attempt in range(attempts):
            try:
                result = await self.pool.runInteraction(work, *args, **kwargs)
            except Exception as e:
                if attempt + 1 < attempts and connection_lost(e) and not self.aborted:
                    lost = e
                    continue
                raise       # the caller tells of it (MySQL away: once for the outage)
            if lost is not None:
                self.log.warn("{db}: connection lost ({error}); done again on a new one",
                              db=self.description, error=lost)
            return result

    def connect(self):
        """A connection of its own, outside the pool, opened as the pool opens its own (for
        a forked child, which cannot use the pool's threads)."""
        connection = self.pool.dbapi.connect(*self.pool.connargs, **self.pool.connkw)
        if self.pool.openfun is not None:
            self.pool.openfun(connection)
        return connection

    def on_connection(self, work, *args):
        """Run `work(connection, *args)` in a pool thread, with no transaction opened or
        committed around it (what it writes is committed as its connection's autocommit
        setting says); rolled back if it raises."""
        return self.pool.runWithConnection(work, *args)

    def query(self, sql, args=(), retry=True):
        """All rows of a SELECT (a Deferred firing with a list of tuples)."""
        sql, args = self.dialect.sql(sql), self.dialect.bind(args)

        def run(cursor):
            cursor.execute(sql, args)
            return list(cursor.fetchall())
        return self.interaction(run, retry=retry)

    def execute(self, sql, args=(), retry=False):
        """Run one statement in its own transaction; fires with the affected row count."""
        sql, args = self.dialect.sql(sql), self.dialect.bind(args)

        def run(cursor):
            cursor.execute(sql, args)
            return cursor.rowcount
        return self.interaction(run, retry=retry)

    def insert_many_sql(self, table, columns, count, ignore=False):
        marks = "(%s)" % ", ".join([self.dialect.placeholder] * len(columns))
        head = "INSERT %sINTO %s (%s) VALUES " % (
            "IGNORE " if ignore else "", self.dialect.quote(table),
            ", ".join(self.dialect.quote(c) for c in columns))
        return self.dialect.sql(head + ", ".join([marks] * count))

    def insert_rows(self, cursor, table, columns, rows, chunk=1000, ignore=False,
                    row_text=None):
        """Multi-row INSERTs of at most `chunk` rows and, on MySQL, `STATEMENT_MAX`
        characters each (`values_texts`), inside the caller's transaction.  On MySQL,
        `row_text(connection)` may give a function making a row's value list, for rows
        whose types the caller knows (the general one looks at each value)."""
        rows = list(rows)
        if self.dialect.name == "mysql":
            head = self.insert_many_sql(table, columns, 0, ignore)
            literal = (row_text or literal_row)(cursor.connection)

            for sql in insert_texts(head, rows, lambda part: ", ".join(map(literal, part)),
                                    chunk):
                cursor.execute(sql)
            return len(rows)
        scales = self._scales(cursor, table, columns)
        if scales:
            rows = [_rounded(row, scales) for row in rows]
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            cursor.execute(self.insert_many_sql(table, columns, len(part), ignore),
                           [value for row in part for value in row])
        return len(rows)

    def _scales(self, cursor, table, columns):
        """[(position, places)] of the SQLite table's DECIMAL_TEXT columns among `columns`."""
        declared = self._declared.get(table)
        if declared is None:
            cursor.execute("PRAGMA table_info(%s)" % self.dialect.quote(table))
            declared = {}
            for row in cursor.fetchall():
                found = _DECIMAL_TEXT.match(row[2] or "")
                if found:
                    declared[row[1]] = int(found.group(1))
            self._declared[table] = declared
        return [(i, declared[c]) for i, c in enumerate(columns) if c in declared]

    def insert_many(self, table, columns, rows, chunk=1000, ignore=False, retry=False):
        """Insert `rows` (sequences in `columns` order) in one transaction."""
        return self.interaction(self.insert_rows, table, columns, rows, chunk, ignore,
                                retry=retry)

    def create_like(self, cursor, name, template):
        """Create table `name` (if missing) with the structure of `template`."""
        if self.dialect.name == "mysql":
            cursor.execute("CREATE TABLE IF NOT EXISTS %s LIKE %s" % (
                self.dialect.quote(name), self.dialect.quote(template)))
            return
        cursor.execute("SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
                       "ORDER BY type DESC", (template,))
        for (sql,) in cursor.fetchall():
            sql = sql.replace("`%s`" % template, "`%s`" % name, 1)
            sql = re.sub(r"^CREATE (UNIQUE )?(TABLE|INDEX) ", r"CREATE \1\2 IF NOT EXISTS ",
                         sql.replace(" IF NOT EXISTS", "", 1))
            if sql.startswith("CREATE INDEX") or sql.startswith("CREATE UNIQUE INDEX"):
                sql = sql.replace("`%s_" % template, "`%s_" % name, 1)
            cursor.execute(sql)

    def table_exists(self, cursor, name):
        if self.dialect.name == "mysql":
            cursor.execute("SHOW TABLES LIKE %s", (name,))
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (name,))
        return cursor.fetchone() is not None

    def ddl_statements(self, script):
        return [s for statement in split_statements(script)
                for s in self.dialect.ddl(statement)]

    def execute_script(self, script):
        """Run every statement of an SQL script (written in MySQL's dialect), in order."""
        statements = self.ddl_statements(script)

        def run(cursor):
            for statement in statements:
                cursor.execute(statement)
            return len(statements)
        return self.interaction(run)

    @property
    def aborted(self):
        return getattr(self.pool, "aborted", False)

    def abort(self):
        """Make the interactions running fail now, and those waiting for a connection fail
        without one, for a daemon that stops without waiting for them: then the pool's
        threads end at once when the reactor stops.  MySQL pools only; a no-op otherwise."""
        abort = getattr(self.pool, "abort", None)
        if abort is not None:
            abort()

    def close(self):
        self.pool.close()


# what a single-quoted MySQL string cannot hold as it is, in either escaping mode
# (backslashes, or NO_BACKSLASH_ESCAPES's doubled quotes); double quotes it can, and JSON
# texts, such as the operation log's details, are full of them
_DECIMAL_TEXT = re.compile(r"DECIMAL_TEXT\(\s*\d+\s*,\s*(\d+)\s*\)$", re.I)
_ROUNDING = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP)


def _rounded(row, scales):
    """`row` with the values at `scales`' positions kept to their places as MySQL keeps a
    DECIMAL (half away from zero), as text; other values, and None, as they are."""
    row = list(row)
    for position, places in scales:
        value = row[position]
        if value is not None:
            exact = decimal.Decimal(value) if isinstance(value, str) else value
            kept = exact.quantize(decimal.Decimal(1).scaleb(-places), context=_ROUNDING)
            row[position] = format(kept if kept else kept.copy_abs(), "f")
    return row


def needs_escape(text):
    """Whether the text holds one of those characters.  Six searches of one character each
    (memchr) take a third of the time of one regular expression's class over the text."""
    return ("'" in text or "\\" in text or "\x00" in text or "\n" in text or "\r" in text
            or "\x1a" in text)


class _Literals:
    """Rows as MySQL value lists, written as PyMySQL would bind them, but with texts that
    need no escaping (the common case) and integers put in as they are: escaping every
    value through PyMySQL's dispatch cost the operation log's thread (and so the matching
    thread, by the interpreter lock) several microseconds a row."""

    __slots__ = ("escape",)

    def __init__(self, connection):
        self.escape = connection.escape

    def value(self, value):
        cls = value.__class__
        if cls is str and not needs_escape(value):
            return "'" + value + "'"
        if cls is int:
            return "%d" % value
        if cls is float:
            written = repr(value)
            if "e" in written:
                return written
            if written[-1] != "n" and written[-1] != "f":   # nan, inf: PyMySQL refuses them
                return written + "e0"
        return self.escape(value)

    def row(self, row):
        return "(" + ", ".join(map(self.value, row)) + ")"


def literal_row(connection):
    """A function making a row's value list, `(1, 'a', ...)`, as PyMySQL would bind it on
    `connection`."""
    return _Literals(connection).row


def literal_value(connection):
    """A function making one value's literal, as PyMySQL would bind it on `connection`."""
    return _Literals(connection).value


def connection_lost(error):
    """Whether `error` is MySQL away: a connection refused or lost (retried on a fresh
    one), not an error of the statement."""
    import pymysql
    return (isinstance(error, pymysql.err.OperationalError) and error.args
            and error.args[0] in CONNECTION_LOST) or isinstance(
                error, (pymysql.err.InterfaceError, adbapi.ConnectionLost))


# characters of VALUES a multi-row INSERT carries, at most (unless one row is longer): a
# packet over the server's max_allowed_packet is refused, 4 MB by default in MySQL 5.7 and
# 16 MB in MariaDB, and a refused batch would be retried for ever
STATEMENT_MAX = 1 << 19


def insert_texts(head, rows, render, chunk=1000):
    """`head` (an INSERT's text up to VALUES) with the VALUES text of `rows`, `render`ed:
    one statement for each `chunk` rows, or more, as `values_texts` splits them."""
    return [head + text for start in range(0, len(rows), chunk)
            for text in values_texts(rows[start:start + chunk], render)]


def values_texts(rows, render, limit=STATEMENT_MAX):
    """`render(rows)`, the VALUES text of the rows, as a list of texts of at most `limit`
    characters each, the rows in order: a text longer is made again of each half of its
    rows (a single row stays whole)."""
    text = render(rows)
    if len(text) <= limit or len(rows) < 2:
        return [text]
    half = len(rows) // 2
    return values_texts(rows[:half], render, limit) + values_texts(rows[half:], render, limit)


# the server refusing LOAD DATA LOCAL: ER_NOT_ALLOWED_COMMAND (MySQL before 8.0.19, MariaDB
# before 10.5), ER_CLIENT_LOCAL_FILES_DISABLED (MySQL 8, whose `local_infile` is off by
# default) and ER_LOAD_INFILE_CAPABILITY_DISABLED (MariaDB)
LOCAL_LOAD_REFUSED = frozenset({1148, 3948, 4166})
# bytes of a LOAD DATA LOCAL's data a packet, as PyMySQL sends a file
LOCAL_LOAD_PACKET = 1 << 14


def load_local(connection, statement, data):
    """Run `statement`, a `LOAD DATA LOCAL INFILE`, on a PyMySQL connection opened with
    the `CLIENT.LOCAL_FILES` capability, sending `data` (bytes) as the file; returns the
    rows the server took.  The server's errors are raised as PyMySQL raises them.

    PyMySQL's own way (`local_infile=True`) reads whatever file the server names, any file
    of this host; here the server only ever gets `data`, and a connection opened without
    `local_infile` refuses a server that asks for a file in answer to any other statement."""
    import pymysql
    from pymysql.connections import OKPacketWrapper
    from pymysql.constants import COMMAND
    connection._execute_command(COMMAND.COM_QUERY, statement)
    asked = connection._read_packet()
    if not asked.is_load_local_packet():
        raise pymysql.err.InternalError("LOAD DATA LOCAL: the server did not ask for the data")
    for start in range(0, len(data), LOCAL_LOAD_PACKET):
        connection.write_packet(data[start:start + LOCAL_LOAD_PACKET])
    connection.write_packet(b"")        # the end of the data
    answer = connection._read_packet()
    if not answer.is_ok_packet():
        raise pymysql.err.InternalError("LOAD DATA LOCAL: no OK from the server")
    return OKPacketWrapper(answer).affected_rows


def client_charset(name):
    """The character set a connection asks for, by the config's `charset`: "utf8", which
    MySQL takes for utf8mb3, its subset of UTF-8 of three bytes a character at most, means
    utf8mb4, the whole of UTF-8 and the tables' own set.  Over a utf8mb3 connection the
    server turns each character of four bytes (an emoji in an order's source, a business
    or a detail) into "?", and the operation log would replay something else than what was
    acknowledged."""
    return "utf8mb4" if name.lower() == "utf8" else name


# where MySQL and MariaDB servers put their socket, the first that exists being used
SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock",
           "/var/lib/mysql/mysql.sock", "/tmp/mysql.sock")


def server_address(host, port):
    """The connection arguments of a config's `host` and `port`, as the MySQL client library
    reads them: `localhost` means the server's local socket (the `MYSQL_UNIX_PORT`
    environment variable, else the usual places), where the port does not count and
    accounts are matched as `user@localhost`; any other host, or `localhost` with no socket
    found, is reached over TCP."""
    if host == "localhost":
        for path in (os.environ.get("MYSQL_UNIX_PORT"),) + SOCKETS:
            if path and os.path.exists(path):
                return {"unix_socket": path}
    return {"host": host, "port": int(port)}


def lift_read_timeout(connection):
    """Take the read timeout off a PyMySQL connection once it is open.  PyMySQL bounds its
    TCP connect by `connect_timeout` and then reads the server's greeting with its
    `read_timeout`, none by default: a server that accepts and says nothing (stopped, or
    behind a proxy whose other side is gone) would hold the opening thread for ever.  So a
    connection is opened with `read_timeout` set to its connect timeout, then lifted here:
    its statements keep no timeout.  Over TCP the kernel probes the idle connection instead
    (`keep_alive`)."""
    connection._read_timeout = None
    if connection._sock is not None:
        connection._sock.settimeout(None)
        keep_alive(connection._sock)


# TCP keepalive of the MySQL connections: the first probe after 20 s of silence, then every
# 5 s; 4 unanswered probes end the connection.  Data sent and not acknowledged for as long
# (40 s) ends it too.
KEEPALIVE = (20, 5, 4)


def keep_alive(sock, idle=KEEPALIVE[0], interval=KEEPALIVE[1], count=KEEPALIVE[2]):
    """Have the kernel probe a TCP socket that has been silent for `idle` seconds, and give
    it up when what it sent goes unacknowledged for as long as the probes take.  A
    statement waiting for its answer reads with no timeout: should the server's host vanish
    (a crash, a network cut) after taking the statement, nothing else would ever end the
    read, and a daemon would hang without a word; while a statement is still being sent,
    the kernel sends no probes, and would retransmit for a quarter of an hour.  A server
    that is merely slow (a lock wait) answers the probes, and its statement goes on.  No-op
    on UNIX sockets."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                          ("TCP_KEEPCNT", count),
                          ("TCP_USER_TIMEOUT", (idle + interval * count) * 1000)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class Aborted(Exception):
    """An interaction refused by a pool that was aborted (`MySQLPool.abort`)."""


def _shut(connection):
    """Shut a PyMySQL connection's socket down (not close it: its descriptor stays its
    own), from any thread: a read blocked on it returns, and fails as a lost connection."""
    sock = getattr(connection, "_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            # already closed by its own thread, or never connected
            return


class _PooledConnection(adbapi.Connection):
    """adbapi's wrapper of a MySQLPool's connection, rolling back after a failure.

    adbapi's own, for a pool that reconnects, rolls a connection back and, when that fails
    (it always does on a lost connection, which PyMySQL closes as soon as its socket fails),
    logs the failure twice as an error before dropping the connection: a reconnect that
    then succeeded raised fatal alerts.  Here a lost connection is dropped quietly (the
    pool warns) and only a rollback failing on a live connection is an error."""

    def rollback(self):
        connection = self._connection
        if connection.open:
            try:
                connection.rollback()
                return
            except Exception:
                if connection.open:
                    log.failure("{pool}: rollback failed; the connection is closed",
                                level=LogLevel.error, pool=self._pool.name)
        self._pool.drop(connection, lost=not connection.open)


class MySQLPool(adbapi.ConnectionPool):
    """adbapi's pool of PyMySQL connections, reconnecting quietly, which a stopping daemon
    can abort."""

    connectionFactory = _PooledConnection
    aborted = False

    def __init__(self, *args, name="mysql", **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name
        self.losses = 0         # connections found lost so far
        self._checked = {}      # thread id -> losses when its connection was last known good
        # the opening bounded as its TCP connect is (`lift_read_timeout`); queries keep no
        # timeout unless one was asked for
        if "read_timeout" not in self.connkw:
            self.connkw["read_timeout"] = self.connkw.get("connect_timeout", 10)
            then = self.openfun

            def opened(connection):
                # before the pool's own first statements (the operation log's lock waits)
                lift_read_timeout(connection)
                if then is not None:
                    then(connection)
            self.openfun = opened

    def drop(self, connection, lost=True):
        """In its own thread: close the thread's connection, one found lost (with a
        warning, and the others to be checked before their next use) or broken."""
        if lost:
            self.losses += 1
            if not self.aborted:
                log.warn("{pool}: a connection was lost; a new one is opened when next needed",
                         pool=self.name)
        self.disconnect(connection)

    def abort(self):
        """From the reactor thread: shut every connection's socket down, so that the queries
        running fail at once (PyMySQL reads without a timeout), and refuse connections from
        now on, so that those waiting fail without running."""
        self.aborted = True
        for connection in list(self.connections.values()):
            _shut(connection)

    def connect(self):
        """The calling thread's connection, opened if it has none, and pinged first when
        another connection was found lost since this one was last known good."""
        if self.aborted:
            raise Aborted("the database pool was aborted")
        tid = self.threadID()
        connection = self.connections.get(tid)
        if connection is not None and self._checked.get(tid) != self.losses:
            losses = self.losses
            try:
                connection.ping(reconnect=False)
                self._checked[tid] = losses
            except Exception:
                self.drop(connection)
                connection = None
        if connection is None:
            losses = self.losses
            connection = super().connect()
            self._checked[tid] = losses
        # `abort` may have gone through the connections before this one was added
        if self.aborted:
            _shut(connection)
        return connection


# run by every session first: the SQL texts written here escape with backslashes (as
# PyMySQL's escaping of a bound value does, whatever the server's mode), which a session
# whose sql_mode holds NO_BACKSLASH_ESCAPES reads otherwise: there \' ends a string, and a
# text could close its quotes and add rows of its own
SESSION_SETUP = "SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')"


def connect_mysql(host, port, user, password, database, charset="utf8", min_connections=1,
                  max_connections=5, reactor=None, **extra):
    """A MySQL pool; connections dropped by the server are replaced when next used, each
    set up by `SESSION_SETUP` (unless `init_command` says otherwise)."""
    kwargs = dict(server_address(host, port), user=user, password=password, database=database,
                  charset=client_charset(charset), autocommit=False, connect_timeout=5,
                  init_command=SESSION_SETUP)
    kwargs.update(extra)
    if reactor is not None:
        kwargs["cp_reactor"] = reactor
    description = "mysql %s@%s:%s/%s" % (user, host, port, database)
    pool = MySQLPool("pymysql", cp_min=min_connections, cp_max=max_connections,
                     cp_reconnect=True, cp_noisy=False, name=description, **kwargs)
    return Database(pool, MYSQL, description)


def connect_sqlite(path, reactor=None):
    """An SQLite database used through the same interface, one connection (one writer)."""
    def opened(conn):
        _knows_collation(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")

    kwargs = {"cp_reactor": reactor} if reactor is not None else {}
    pool = adbapi.ConnectionPool("sqlite3", path, check_same_thread=False, cp_min=1, cp_max=1,
                                 cp_openfun=opened, cp_noisy=False, **kwargs)
    return Database(pool, SQLITE(), "sqlite %s" % path)


def from_config(cfg, **kwargs):
    """A Database from a `db_*` config section (host, port, user, pass, name, charset)."""
    return connect_mysql(cfg["host"], cfg.get("port", 3306), cfg["user"], cfg["pass"],
                         cfg["name"], cfg.get("charset", "utf8"), **kwargs)
