# -*- test-case-name: utils.test.test_redisdb -*-
"""Redis plain, through the real sentinel, and in memory."""

import os
import uuid

import txredisapi
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from utils import redisdb, testing


def coroutine(f):
    """Run an `async def` test method as a Deferred trial waits for."""
    def run(self):
        return defer.Deferred.fromCoroutine(f(self))
    run.__name__, run.__doc__ = f.__name__, f.__doc__
    return run


class RealRedisTests(TestCase):

    timeout = 30

    def setUp(self):
        self.prefix = "test:%s:" % uuid.uuid4().hex[:10]

    async def roundtrip(self, store):
        conn = await store.connect()
        try:
            key = self.prefix + "k"
            await conn.set(key, "8000.00000000")
            self.assertEqual(await conn.get(key), "8000.00000000")
            await conn.hset(key + ":h", "1700000000", '["1", "2"]')
            self.assertEqual(await conn.hgetall(key + ":h"), {"1700000000": '["1", "2"]'})
            await conn.lpush(key + ":l", ["a", "b"])
            self.assertEqual(await conn.lrange(key + ":l", 0, -1), ["b", "a"])
            await conn.delete(key, key + ":h", key + ":l")
        finally:
            conn.disconnect()

    def client(self, addrs=None, name=None):
        info = testing.require("sentinel")
        client = redisdb.SentinelClient(name or info["name"], addrs or info["addr"], timeout=2)
        self.addCleanup(client.disconnect)
        return client

    async def set_get(self, conn):
        key = self.prefix + "k"
        self.addCleanup(conn.delete, key)
        await conn.set(key, "8000.00000000")
        self.assertEqual(await conn.get(key), "8000.00000000")

    @coroutine
    async def test_connect(self):
        """connect() gives a reconnecting connection; values come back as text."""
        info = testing.require("redis")
        conn = await redisdb.connect(info["host"], info["port"])
        self.addCleanup(conn.disconnect)
        await self.set_get(conn)

    @coroutine
    async def test_connect_refused(self):
        """A server that does not answer in time is a RedisUnavailable naming it."""
        port = testing.free_port()
        with self.assertRaises(redisdb.RedisUnavailable) as e:
            await redisdb.connect("127.0.0.1", port, timeout=0.3)
        self.assertIn("127.0.0.1:%d" % port, str(e.exception))

    @coroutine
    async def test_connect_database_refused(self):
        """A database number the server does not have is a DatabaseRefused naming it and
        the server (it was a ValueError of txredisapi's)."""
        info = testing.require("redis")
        with self.assertRaises(redisdb.DatabaseRefused) as e:
            await redisdb.connect(info["host"], info["port"], db=10000, timeout=2)
        self.assertEqual(str(e.exception), "database 10000 refused by redis %s:%s: ERR DB "
                         "index is out of range" % (info["host"], info["port"]))

    def test_plain(self):
        """Values come back as text: a price stays a string."""
        info = testing.require("redis")
        return defer.Deferred.fromCoroutine(self.roundtrip(
            redisdb.Plain(info["host"], info["port"])))

    def test_sentinel(self):
        """The master is found through the sentinel and answers commands."""
        info = testing.require("sentinel")
        store = redisdb.from_config({"name": info["name"], "addr": info["addr"]})
        d = defer.Deferred.fromCoroutine(self.roundtrip(store))
        return d.addCallback(lambda _: self.assertIsNotNone(store.master))

    def test_dead_sentinel_first(self):
        """A dead first sentinel is skipped; the live one moves to the front."""
        info = testing.require("sentinel")
        dead = "127.0.0.1:%d" % testing.free_port()
        store = redisdb.Sentinel(info["name"], [dead] + list(info["addr"]))
        d = defer.Deferred.fromCoroutine(self.roundtrip(store))
        return d.addCallback(lambda _: self.assertEqual(
            "%s:%d" % store.addrs[0], info["addr"][0]))

    @coroutine
    async def test_all_sentinels_dead(self):
        """With no sentinel answering, the error names every sentinel tried."""
        dead = ["127.0.0.1:%d" % testing.free_port() for _ in range(2)]
        store = redisdb.Sentinel("viabtc-test", dead, timeout=1)
        with self.assertRaises(redisdb.RedisUnavailable) as e:
            await store.connect()
        for addr in dead:
            self.assertIn(addr, str(e.exception))

    @coroutine
    async def test_unknown_master(self):
        """A master name no sentinel knows is a clear error."""
        info = testing.require("sentinel")
        store = redisdb.Sentinel("no-such-master", info["addr"])
        with self.assertRaises(redisdb.RedisUnavailable) as e:
            await store.connect()
        self.assertIn("no-such-master", str(e.exception))

    @coroutine
    async def test_database_refused(self):
        """A database number past the server's (16 by default) fails with DatabaseRefused,
        naming the number, the server and its answer; a server that cannot be reached fails
        otherwise, whatever the number."""
        info = testing.require("redis")
        with self.assertRaises(redisdb.DatabaseRefused) as e:
            await redisdb.Plain(info["host"], info["port"], db=10000, timeout=2).connect()
        self.assertEqual(str(e.exception), "database 10000 refused by redis %s:%d: ERR DB "
                         "index is out of range" % (info["host"], int(info["port"])))
        dead = redisdb.Plain("127.0.0.1", testing.free_port(), db=10000, timeout=1)
        with self.assertRaises(Exception) as e:
            await dead.connect()
        self.assertNotIsInstance(e.exception, redisdb.DatabaseRefused)

    @coroutine
    async def test_sentinel_database(self):
        """Through the sentinels the database is selected on the master: a number it has
        is used, and one it refuses fails at once with DatabaseRefused naming the master
        (a new lookup would find the same master: no more attempts are made)."""
        info = testing.require("sentinel")
        redis = testing.require("redis")
        key = self.prefix + "db"
        self.addCleanup(testing.redis_command, 15, "DEL", key)
        conn = await redisdb.Sentinel(info["name"], info["addr"], db=15).connect()
        try:
            await conn.set(key, "15")
        finally:
            conn.disconnect()
        self.assertEqual(testing.redis_command(15, "EXISTS", key), b":1\r\n")
        store = redisdb.Sentinel(info["name"], info["addr"], db=10000, timeout=2)
        lookups = []
        master_address = store.master_address
        store.master_address = lambda: lookups.append(1) or master_address()
        with self.assertRaises(redisdb.DatabaseRefused) as e:
            await store.connect()
        self.assertEqual(str(e.exception), "database 10000 refused by redis master %r at "
                         "%s:%d: ERR DB index is out of range"
                         % (info["name"], redis["host"], int(redis["port"])))
        self.assertEqual(lookups, [1])

    @coroutine
    async def test_client(self):
        """SentinelClient sends commands to the master the sentinel names."""
        client = self.client()
        await self.set_get(client)
        redis = testing.require("redis")
        self.assertEqual(client.master, (redis["host"], redis["port"]))
        self.assertEqual(await client.execute("GET", self.prefix + "k"), "8000.00000000")

    @coroutine
    async def test_client_dead_sentinel_first(self):
        """A dead first sentinel is skipped and the live second one names the master."""
        live = testing.require("sentinel")["addr"]
        client = self.client(["127.0.0.1:%d" % testing.free_port()] + list(live))
        await self.set_get(client)
        self.assertEqual("%s:%d" % client.sentinel.addrs[0], live[0])

    @coroutine
    async def test_client_all_sentinels_dead(self):
        """With every sentinel down, a command fails naming each sentinel address."""
        dead = ["127.0.0.1:%d" % testing.free_port() for _ in range(2)]
        client = self.client(dead)
        with self.assertRaises(redisdb.RedisUnavailable) as e:
            await client.get(self.prefix + "k")
        for addr in dead:
            self.assertIn(addr, str(e.exception))
        self.assertIsNone(client.master)

    @coroutine
    async def test_client_master_connection_killed(self):
        """After the master drops the connection, the next command re-resolves and works.

        Whether the client has seen the close yet ("Not connected") or only learns of it by
        sending ("Lost connection"), it asks the sentinel again and sends the command anew.
        """
        client = self.client()
        await self.set_get(client)
        before = await client.execute("CLIENT", "ID")
        killer = await redisdb.Plain(*client.master).connect()
        self.addCleanup(killer.disconnect)
        self.assertEqual(await killer.execute_command("CLIENT", "KILL", "ID", before), 1)
        self.assertEqual(await client.get(self.prefix + "k"), "8000.00000000")
        self.assertNotEqual(await client.execute("CLIENT", "ID"), before)


class FakeConnection:
    """A txredisapi connection whose replies are scripted; records what it is sent."""

    def __init__(self, calls, replies, master=("10.0.0.1", 6379)):
        self.calls, self.replies, self.master = calls, replies, master

    def execute_command(self, *args):
        self.calls.append(args)
        reply = self.replies.pop(0)
        return defer.fail(reply) if isinstance(reply, Exception) else defer.succeed(reply)

    def disconnect(self):
        self.calls.append("disconnect")


class SentinelClientRetryTests(SynchronousTestCase):

    def client(self, *connections):
        client = redisdb.SentinelClient("m", ["127.0.0.1:1"])
        pending = list(connections)

        async def connect():
            conn = pending.pop(0)
            client.sentinel.master = conn.master
            return conn
        client.sentinel._connect = connect
        return client

    def test_readonly_reresolves(self):
        """A demoted master's READONLY answer makes the client find the new master."""
        calls = []
        old = FakeConnection(calls, [txredisapi.ResponseError("READONLY replica")])
        new = FakeConnection(calls, ["OK"], master=("10.0.0.2", 6379))
        client = self.client(old, new)
        self.assertEqual(self.successResultOf(client.execute("SET", "k", "v")), "OK")
        self.assertEqual(calls, [("SET", "k", "v"), "disconnect", ("SET", "k", "v")])
        self.assertEqual(client.master, ("10.0.0.2", 6379))

    def test_other_errors_pass(self):
        """An ordinary error reply reaches the caller and keeps the connection."""
        calls = []
        conn = FakeConnection(calls, [txredisapi.ResponseError("WRONGTYPE"), "1"])
        client = self.client(conn)
        self.failureResultOf(client.execute("GET", "h"), txredisapi.ResponseError)
        self.assertEqual(self.successResultOf(client.execute("GET", "k")), "1")
        self.assertEqual(calls, [("GET", "h"), ("GET", "k")])

    def test_timeout_not_resent(self):
        """A reply timeout is not sent again (the command may have run); the next reconnects."""
        calls = []
        client = self.client(FakeConnection(calls, [txredisapi.TimeoutError("slow")]),
                             FakeConnection(calls, ["1"]))
        self.failureResultOf(client.execute("INCR", "n"), txredisapi.TimeoutError)
        self.assertEqual(self.successResultOf(client.execute("GET", "n")), "1")
        self.assertEqual(calls, [("INCR", "n"), "disconnect", ("GET", "n")])

    def test_lost_twice(self):
        """A second lost connection in a row reaches the caller."""
        calls = []
        lost = txredisapi.ConnectionError("Lost connection")
        client = self.client(FakeConnection(calls, [lost]), FakeConnection(calls, [lost]))
        self.failureResultOf(client.execute("GET", "k"), txredisapi.ConnectionError)
        self.assertEqual(calls, [("GET", "k"), "disconnect", ("GET", "k"), "disconnect"])


class MemoryRedisTests(SynchronousTestCase):

    def setUp(self):
        self.r = redisdb.MemoryRedis()

    def result(self, d):
        return self.successResultOf(d)

    def test_strings(self):
        """get/set store text; delete counts what existed; expire is accepted."""
        r = self.r
        self.assertIsNone(self.result(r.get("a")))
        self.assertEqual(self.result(r.set("k:offset", 5)), "OK")
        self.assertEqual(self.result(r.get("k:offset")), "5")
        self.assertEqual(self.result(r.expire("k:offset", 10)), 1)
        self.assertEqual(self.result(r.expire("nope", 10)), 0)
        self.assertEqual(self.result(r.delete(["k:offset", "nope"])), 1)
        self.assertEqual(self.result(r.keys()), [])

    def test_hashes(self):
        """hset reports new fields; hdel removes them and the emptied key."""
        r = self.r
        self.assertEqual(self.result(r.hset("h", 1, "x")), 1)
        self.assertEqual(self.result(r.hset("h", 1, "y")), 0)
        r.hset("h", 2, "z")
        self.assertEqual(self.result(r.hget("h", 1)), "y")
        self.assertIsNone(self.result(r.hget("h", 3)))
        self.assertEqual(self.result(r.hgetall("h")), {"1": "y", "2": "z"})
        self.assertEqual(self.result(r.hdel("h", 1, 3)), 1)
        self.assertEqual(self.result(r.hscan("h", 0, count=10)), [0, ["2", "z"]])
        self.assertEqual(self.result(r.hdel("h", [2])), 1)
        self.assertEqual(self.result(r.keys("*")), [])

    def test_lists(self):
        """Pushes, inclusive and negative ranges, trims and lengths follow Redis."""
        r = self.r
        self.assertEqual(self.result(r.lpush("l", ["1", "2", "3"])), 3)
        self.assertEqual(self.result(r.lrange("l", 0, -1)), ["3", "2", "1"])
        self.assertEqual(self.result(r.rpush("l", "0", "-1")), 5)
        self.assertEqual(self.result(r.lrange("l", 1, 2)), ["2", "1"])
        self.assertEqual(self.result(r.lrange("l", -2, -1)), ["0", "-1"])
        self.assertEqual(self.result(r.lrange("l", 3, 1)), [])
        # bytes are kept as text (an alert's), what is not UTF-8 replaced
        r.rpush("b", b"me: caf\xc3\xa9 \xff")
        self.assertEqual(self.result(r.lrange("b", 0, -1)), ["me: caf\u00e9 \ufffd"])
        r.delete("b")
        r.ltrim("l", 0, 2)
        self.assertEqual(self.result(r.lrange("l", 0, 9999)), ["3", "2", "1"])
        r.ltrim("l", -2, -1)
        self.assertEqual(self.result(r.llen("l")), 2)
        r.ltrim("l", 5, 10)
        self.assertEqual(self.result(r.llen("l")), 0)
        self.assertEqual(self.result(r.keys()), [])

    def test_sorted_sets(self):
        """Members order by score; score ranges take -inf/+inf and exclusive bounds."""
        r = self.r
        self.assertEqual(self.result(r.zadd("z", 3, "c", 1, "a", 2, "b")), 3)
        self.assertEqual(self.result(r.zadd("z", 0, "c")), 0)
        self.assertEqual(self.result(r.zrangebyscore("z")), ["c", "a", "b"])
        self.assertEqual(self.result(r.zrangebyscore("z", 1, "+inf", withscores=True)),
                         [("a", 1.0), ("b", 2.0)])
        self.assertEqual(self.result(r.zrangebyscore("z", "(0", 2)), ["a", "b"])
        self.assertEqual(self.result(r.zrangebyscore("z", "-inf", "+inf", offset=1, count=1)),
                         ["a"])
        self.assertEqual(self.result(r.zremrangebyscore("z", "-inf", "(2")), 2)
        self.assertEqual(self.result(r.zrangebyscore("z")), ["b"])
        self.assertEqual(self.result(r.zremrangebyscore("z")), 1)
        self.assertEqual(self.result(r.keys()), [])

    def test_keys_and_transaction(self):
        """keys() matches glob patterns; multi() applies queued commands on commit."""
        r = self.r
        t = self.result(r.multi())
        self.assertEqual(self.result(t.set("k:offset", 7)), "QUEUED")
        t.rpush("k:l", "x")
        self.assertIsNone(self.result(r.get("k:offset")))
        self.assertEqual(self.result(t.commit()), ["OK", 1])
        r.set("other", 1)
        self.assertEqual(sorted(self.result(r.keys("k:*"))), ["k:l", "k:offset"])

    def test_watch_and_hmset(self):
        """watch() answers the store itself, whose transactions are never refused, as
        marketprice's flush uses it; hmset sets several fields as text."""
        r = self.r
        watched = self.result(r.watch("k:offset"))
        self.assertIs(watched, r)
        t = self.result(watched.multi())
        t.hmset("h", {1: "x", "2": 3})
        self.assertEqual(self.result(t.commit()), ["OK"])
        self.assertEqual(self.result(r.hgetall("h")), {"1": "x", "2": "3"})

    def test_kept_in_file(self):
        """With a path, the store is saved shortly after changes and read back at start."""
        from twisted.internet.task import Clock
        clock = Clock()
        path = self.mktemp()
        r = redisdb.MemoryRedis(path, reactor=clock)
        r.set("k:offset", 7)
        r.hset("k:BTCBCH:1m", 60, '["8000"]')
        r.rpush("alert:message", "a", "b")
        r.zadd("z", 1.5, "m1", 2, "m2")
        self.assertFalse(os.path.exists(path))
        clock.advance(0.2)
        t = self.result(r.multi())
        t.set("k:offset", 8)
        t.hdel("k:BTCBCH:1m", 60)
        t.commit()
        # the second change is not yet written: a restart now sees the first snapshot
        self.assertEqual(self.result(redisdb.MemoryRedis(path).get("k:offset")), "7")
        clock.advance(0.2)
        again = redisdb.MemoryRedis(path)
        self.assertEqual(self.result(again.get("k:offset")), "8")
        self.assertEqual(self.result(again.hgetall("k:BTCBCH:1m")), {})
        self.assertEqual(self.result(again.lrange("alert:message", 0, -1)), ["a", "b"])
        self.assertEqual(self.result(again.zrangebyscore("z", withscores=True)),
                         [("m1", 1.5), ("m2", 2.0)])
        r.set("x", 1)
        r.save()                                  # at once, e.g. at stop
        self.assertFalse(clock.getDelayedCalls())
        self.assertEqual(self.result(redisdb.MemoryRedis(path).get("x")), "1")

