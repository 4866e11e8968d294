# -*- test-case-name: utils.test.test_redisdb -*-
"""Redis on txredisapi: a plain server, a master found through Sentinel, or memory.

The original opens a connection for each piece of work (a load, a flush, a cleanup) and finds
the master through its sentinels every time: each sentinel in turn is asked
`SENTINEL get-master-addr-by-name <name>` until one answers (it then moves to the front of the
list); the master must answer `ROLE` with `master`, else discovery runs again (3 attempts).
`Sentinel.connect()` does exactly that and returns a connection the caller closes with
`disconnect()`.  `Plain` does the same for a fixed address, and `MemoryRedis` offers the
commands the daemons use without a server (the embedded mode); `from_config` builds one of the
first two from a config section.

For one long-lived connection instead: `connect(host, port)` (reconnects by itself) and
`SentinelClient(name, addrs)` (looks the master up again whenever its connection is lost or
the server turns read-only).

A database number the server refuses (SELECT answered with an error: `db` past the number of
databases it has) fails `connect()`, and that of Plain and Sentinel, with DatabaseRefused,
where a server that cannot be reached fails with RedisUnavailable or a connection error: the
first is a mistake of the config that no retry mends, the others may pass.

Replies are text (`convertNumbers` off: a price stays "8000.00000000").
"""

import fnmatch
import json
import os

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger

from utils.config import ConfigError

__all__ = ["RedisUnavailable", "DatabaseRefused", "WatchError", "connect", "Plain",
           "Sentinel", "SentinelClient", "MemoryRedis", "from_config", "ConfigChecked"]

TIMEOUT = 3.0

# what commit() of a transaction raises when a key watched before it changed
WatchError = txredisapi.WatchError


class RedisUnavailable(Exception):
    """No sentinel answered, or no master could be reached."""


class DatabaseRefused(Exception):
    """The server answered SELECT with an error: the database number is not one it has."""

    def __init__(self, db, server, reply):
        super().__init__("database %d refused by %s: %s" % (db, server, reply))
        self.db = db
        self.server = server
        self.reply = reply


class ConfigChecked:
    """Connections of a store, where a database number the server refuses is a ConfigError
    naming `redis.db` until a connection has been made: no retry mends it.  After that it is
    raised as it is, one more failure to retry as an outage."""

    def __init__(self, store):
        self.store = store
        self.reached = False        # whether the server has taken a connection yet

    async def connect(self):
        try:
            conn = await self.store.connect()
        except DatabaseRefused as e:
            if self.reached:
                raise
            raise ConfigError("redis.db: %s" % e) from None
        self.reached = True
        return conn


async def _open(host, port, timeout):
    conn = await txredisapi.Connection(host, port, reconnect=False, connectTimeout=timeout,
                                       replyTimeout=timeout, convertNumbers=False)
    return conn


async def _select(conn, db, server):
    """Switch `conn` to database `db` (0: the one it starts in).  An error reply is a
    DatabaseRefused naming `server`; a reply that is not about the number (the server
    loading, a password asked for) or a lost connection is raised as it is."""
    if not db:
        return
    try:
        await conn.select(db)
    except txredisapi.ResponseError as e:
        if str(e).startswith("ERR"):
            raise DatabaseRefused(db, server, e) from None
        raise


async def _connect(host, port, db, reactor, timeout):
    conn = txredisapi.lazyConnection(host, port, dbid=db or None, connectTimeout=timeout,
                                     replyTimeout=timeout, convertNumbers=False)
    try:
        # the handler's first connection (txredisapi keeps it as `_connected`)
        await conn._connected.addTimeout(timeout, reactor)
    except defer.TimeoutError:
        await conn.disconnect()
        raise RedisUnavailable("redis %s:%d did not answer within %g s" % (host, port, timeout))
    except ValueError as e:
        # txredisapi's own SELECT, answered with an error
        await conn.disconnect()
        _, about, reply = str(e).partition("dbid=%s: " % db)
        if not (about and reply.startswith("ERR")):
            raise
        raise DatabaseRefused(db, "redis %s:%d" % (host, port), reply) from None
    return conn


def connect(host, port, db=0, reactor=None, timeout=TIMEOUT):
    """A connection that reconnects by itself once it has connected the first time.

    Fails with RedisUnavailable when the server does not answer within `timeout` seconds.
    txredisapi itself always runs on the global reactor; `reactor` times the first attempt.
    """
    if reactor is None:
        from twisted.internet import reactor
    return defer.Deferred.fromCoroutine(_connect(host, int(port), db, reactor, timeout))


class Plain:
    """A Redis server at a fixed address."""

    def __init__(self, host, port, db=0, timeout=TIMEOUT):
        self.host, self.port, self.db, self.timeout = host, int(port), db, timeout

    def connect(self):
        return defer.Deferred.fromCoroutine(self._connect())

    async def _connect(self):
        conn = await _open(self.host, self.port, self.timeout)
        try:
            await _select(conn, self.db, "redis %s:%d" % (self.host, self.port))
        except Exception:
            conn.disconnect()
            raise
        return conn

    def describe(self):
        return "redis %s:%d/%d" % (self.host, self.port, self.db)


class Sentinel:
    """The master of a sentinel group, looked up for every connection."""

    def __init__(self, name, addrs, db=0, timeout=TIMEOUT, attempts=3):
        self.name = name
        self.addrs = [_host_port(a) for a in addrs]
        if not self.addrs:
            raise ValueError("a sentinel group needs at least one address")
        self.db = db
        self.timeout = timeout
        self.attempts = attempts
        self.master = None

    def describe(self):
        return "redis master %r via sentinels %s" % (
            self.name, ", ".join("%s:%d" % a for a in self.addrs))

    async def master_address(self):
        errors = []
        for addr in list(self.addrs):
            try:
                conn = await _open(addr[0], addr[1], self.timeout)
            except Exception as e:
                errors.append("%s:%d: %s" % (addr[0], addr[1], e))
                continue
            try:
                reply = await conn.execute_command("SENTINEL", "get-master-addr-by-name",
                                                   self.name)
            except Exception as e:
                errors.append("%s:%d: %s" % (addr[0], addr[1], e))
                continue
            finally:
                conn.disconnect()
            if isinstance(reply, list) and len(reply) == 2:
                self.addrs.remove(addr)
                self.addrs.insert(0, addr)
                return reply[0], int(reply[1])
            errors.append("%s:%d: no master named %r" % (addr[0], addr[1], self.name))
        raise RedisUnavailable("no sentinel knows master %r (%s)" % (self.name,
                                                                    "; ".join(errors)))

    async def _connect(self):
        """The master's connection, in database `db`: asked for once the server is known
        to be the master, whose refusal (DatabaseRefused) ends the search at once."""
        last = None
        for _ in range(self.attempts):
            host, port = await self.master_address()
            try:
                conn = await _open(host, port, self.timeout)
            except Exception as e:
                last = "%s:%d: %s" % (host, port, e)
                continue
            try:
                role = await conn.execute_command("ROLE")
                if isinstance(role, list) and role and role[0] == "master":
                    await _select(conn, self.db, "redis master %r at %s:%d"
                                  % (self.name, host, port))
                    self.master = (host, port)
                    return conn
            except DatabaseRefused:
                conn.disconnect()
                raise
            except Exception as e:
                conn.disconnect()
                last = "%s:%d: %s" % (host, port, e)
                continue
            conn.disconnect()
            last = "%s:%d is not a master" % (host, port)
        raise RedisUnavailable("master %r not reachable: %s" % (self.name, last))

    def connect(self):
        return defer.Deferred.fromCoroutine(self._connect())


class SentinelClient:
    """One long-lived connection to the master of a sentinel group.

    `await client.execute("SET", k, v)` or `await client.set(k, v)` (any txredisapi command).
    When the connection is lost or the server answers READONLY (it was demoted), the master
    is looked up again through the sentinels and the command sent once more, so a command
    whose reply was lost can run twice.  A reply timeout is not sent again.
    """

    log = Logger()

    def __init__(self, name, addrs, db=0, timeout=TIMEOUT):
        self.sentinel = Sentinel(name, addrs, db, timeout)
        self._conn = None
        self._lock = defer.DeferredLock()

    @property
    def master(self):
        """(host, port) of the master last connected to."""
        return self.sentinel.master

    def describe(self):
        return self.sentinel.describe()

    async def _connection(self):
        async with self._lock:
            if self._conn is None:
                self._conn = await self.sentinel._connect()
                self.log.info("redis master {name!r} at {host}:{port}",
                              name=self.sentinel.name, host=self.master[0], port=self.master[1])
            return self._conn

    def connect(self):
        """Find and connect to the master now; fires with this client."""
        return defer.Deferred.fromCoroutine(self._connection()).addCallback(lambda _: self)

    def disconnect(self):
        conn, self._conn = self._conn, None
        return conn.disconnect() if conn is not None else defer.succeed(None)

    async def _call(self, method, *args, **kwargs):
        for retry in (False, True):
            conn = await self._connection()
            try:
                return await getattr(conn, method)(*args, **kwargs)
            except txredisapi.TimeoutError:
                self._drop(conn)
                raise
            except (txredisapi.ConnectionError, txredisapi.ResponseError) as e:
                if isinstance(e, txredisapi.ResponseError) and not str(e).startswith("READONLY"):
                    raise
                self._drop(conn)
                if retry:
                    raise
                self.log.warn("redis master {name!r} at {host}:{port} failed ({error}); "
                              "asking the sentinels again", name=self.sentinel.name,
                              host=self.master[0], port=self.master[1], error=e)

    def _drop(self, conn):
        if self._conn is conn:
            self._conn = None
        conn.disconnect()

    def execute(self, *args):
        return defer.Deferred.fromCoroutine(self._call("execute_command", *args))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: defer.Deferred.fromCoroutine(
            self._call(name, *args, **kwargs))


def _host_port(text):
    if isinstance(text, (tuple, list)):
        return text[0], int(text[1])
    host, _, port = str(text).rpartition(":")
    return host, int(port)


def from_config(section):
    """A Sentinel from a `redis` section (`name`, `addr`, `db`), or Plain for host/port."""
    if "name" in section:
        return Sentinel(section["name"], section["addr"], section.get("db", 0))
    return Plain(section["host"], section.get("port", 6379), section.get("db", 0))


def _flat(values):
    """txredisapi style: one list argument, or the values themselves."""
    return values[0] if len(values) == 1 and isinstance(values[0], (list, tuple)) else values


def _text(value):
    """A value as the file keeps it: text (bytes that are not UTF-8 replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _span(lst, start, end):
    """Redis list indexes: inclusive, negative from the end."""
    n = len(lst)
    start, end = start + n if start < 0 else start, end + n if end < 0 else end
    return max(start, 0), end + 1


def _score_test(low, high):
    """ZRANGEBYSCORE bounds: numbers, "-inf"/"+inf", "(x" for exclusive."""
    def bound(v):
        v = str(v)
        return (float(v[1:]), True) if v.startswith("(") else (float(v), False)
    (lo, lx), (hi, hx) = bound(low), bound(high)
    return lambda s: (s > lo if lx else s >= lo) and (s < hi if hx else s <= hi)


class MemoryRedis:
    """The commands the daemons use, on dictionaries; `connect()` returns itself."""

    def __init__(self, path=None, reactor=None, save_delay=0.2):
        self.data = {}
        self.path = path
        self.reactor = reactor
        self.save_delay = save_delay
        self._save_call = None
        if path is not None:
            self._load()

    def describe(self):
        return "in-memory store" + (" kept in %s" % self.path if self.path else "")

    # with a path the whole store is written there (atomically, by rename) shortly after
    # every change and by save(); a snapshot is always the state between two commands

    def _load(self):
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return
        for key, (kind, value) in saved.items():
            if kind == "zset":
                value = {m: float(score) for m, score in value.items()}
            self.data[key] = value

    def _changed(self):
        if self.path is None or self._save_call is not None:
            return
        if self.reactor is None:
            from twisted.internet import reactor
            self.reactor = reactor
        self._save_call = self.reactor.callLater(self.save_delay, self.save)

    def save(self):
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        self._save_call = None
        if self.path is None:
            return
        out = {}
        for key, value in self.data.items():
            if isinstance(value, str):
                out[key] = ("string", value)
            elif isinstance(value, list):
                out[key] = ("list", value)
            elif value and isinstance(next(iter(value.values())), float):
                out[key] = ("zset", {m: repr(score) for m, score in value.items()})
            else:
                out[key] = ("hash", value)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, self.path)

    def connect(self):
        return defer.succeed(self)

    def disconnect(self):
        return defer.succeed(None)

    def get(self, key):
        return defer.succeed(self.data.get(key))

    def set(self, key, value):
        self._changed()
        self.data[key] = str(value)
        return defer.succeed("OK")

    def delete(self, *keys):
        self._changed()
        return defer.succeed(sum(self.data.pop(k, None) is not None for k in _flat(keys)))

    def expire(self, key, seconds):
        return defer.succeed(int(key in self.data))

    def keys(self, pattern="*"):
        return defer.succeed([k for k in self.data if fnmatch.fnmatchcase(k, pattern)])

    def hget(self, key, field):
        return defer.succeed(self.data.get(key, {}).get(str(field)))

    def hset(self, key, field, value):
        self._changed()
        h = self.data.setdefault(key, {})
        new = str(field) not in h
        h[str(field)] = str(value)
        return defer.succeed(int(new))

    def hmset(self, key, mapping):
        self._changed()
        h = self.data.setdefault(key, {})
        h.update((str(field), str(value)) for field, value in mapping.items())
        return defer.succeed("OK")

    def hgetall(self, key):
        return defer.succeed(dict(self.data.get(key, {})))

    def hscan(self, key, cursor=0, pattern=None, count=None):
        """The whole hash in one part (cursor 0): what a scan of a stable hash returns."""
        flat = []
        for field, value in self.data.get(key, {}).items():
            flat += [field, value]
        return defer.succeed([0, flat])

    def hdel(self, key, *fields):
        self._changed()
        h = self.data.get(key, {})
        removed = sum(h.pop(str(f), None) is not None for f in _flat(fields))
        if not h:
            self.data.pop(key, None)
        return defer.succeed(removed)

    def lpush(self, key, *values):
        self._changed()
        lst = self.data.setdefault(key, [])
        lst[:0] = [_text(v) for v in reversed(_flat(values))]
        return defer.succeed(len(lst))

    def rpush(self, key, *values):
        self._changed()
        lst = self.data.setdefault(key, [])
        lst.extend(_text(v) for v in _flat(values))
        return defer.succeed(len(lst))

    def lrange(self, key, start, end):
        lst = self.data.get(key, [])
        start, stop = _span(lst, start, end)
        return defer.succeed(lst[start:stop])

    def ltrim(self, key, start, end):
        self._changed()
        lst = self.data.get(key, [])
        start, stop = _span(lst, start, end)
        lst[:] = lst[start:stop]
        if not lst:
            self.data.pop(key, None)
        return defer.succeed("OK")

    def llen(self, key):
        return defer.succeed(len(self.data.get(key, [])))

    def zadd(self, key, score, member, *pairs):
        self._changed()
        z = self.data.setdefault(key, {})
        pairs = (score, member) + pairs
        added = 0
        for score, member in zip(pairs[::2], pairs[1::2]):
            added += str(member) not in z
            z[str(member)] = float(score)
        return defer.succeed(added)

    def zrangebyscore(self, key, min="-inf", max="+inf", withscores=False, offset=None,
                      count=None):
        inside = _score_test(min, max)
        found = sorted((s, m) for m, s in self.data.get(key, {}).items() if inside(s))
        if offset is not None:
            found = found[offset:offset + count if count >= 0 else None]
        return defer.succeed([(m, s) if withscores else m for s, m in found])

    def zremrangebyscore(self, key, min="-inf", max="+inf"):
        self._changed()
        inside = _score_test(min, max)
        z = self.data.get(key, {})
        gone = [m for m, s in z.items() if inside(s)]
        for m in gone:
            del z[m]
        if not z:
            self.data.pop(key, None)
        return defer.succeed(len(gone))

    def watch(self, keys):
        """As txredisapi's: the connection to go on with.  Nothing else writes to a store
        in memory, so no transaction is refused."""
        return defer.succeed(self)

    def multi(self):
        """A transaction: commands queue and are applied together by `commit()`."""
        return defer.succeed(_MemoryTransaction(self))


class _MemoryTransaction:
    def __init__(self, store):
        self.store = store
        self.queued = []

    def __getattr__(self, name):
        command = getattr(self.store, name)

        def queue(*args):
            self.queued.append((command, args))
            return defer.succeed("QUEUED")
        return queue

    def commit(self):
        results = [self.successful(command(*args)) for command, args in self.queued]
        self.queued = []
        return defer.succeed(results)

    @staticmethod
    def successful(d):
        results = []
        d.addCallback(results.append)
        return results[0]

    def discard(self):
        self.queued = []
        return defer.succeed("OK")
