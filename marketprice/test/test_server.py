# -*- test-case-name: marketprice.test.test_server -*-
"""The marketprice service with a real Redis behind a proxy the test cuts, and an in-process
bus for the deals: it serves from memory while Redis is away and catches up after.  At start
a Redis away is waited for, and a database number it refuses stops the daemon."""

import json
import os
import uuid

import txredisapi
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from marketprice import config, server
from marketprice.server import MarketPrice
from utils import redisdb, testing
from utils.kafka_queue import InProcessBus
from utils.testing import until

T0 = 1795561980.5


def deal(n, price, amount, market="BTCBCH"):
    return json.dumps([T0 + n, market, n, n + 100, 1, 2, price, amount, "0", "0", 2, n,
                       "BTC", "BCH"])


def service_config():
    return config.load_data({
        "log": {"path": "log/marketprice", "flag": "fatal"},
        "svr": {"bind": ["tcp@127.0.0.1:1"], "max_pkg_size": 1000000},
        "deals": {"brokers": "127.0.0.1:1", "topic": "deals"},
        "redis": {"name": "unused", "addr": ["127.0.0.1:1"]},
        "accesshttp": "http://127.0.0.1:1/"})


async def redis_behind_proxy(test):
    """(proxy, store through the proxy, direct connection) on an emptied database 8 of
    the real Redis; everything is undone at the test's end."""
    info = testing.require("redis")
    proxy = testing.CuttableProxy(int(info["port"])).up()
    test.addCleanup(proxy.down)
    store = redisdb.Plain("127.0.0.1", proxy.port, db=11, timeout=1)
    conn = await redisdb.Plain(info["host"], info["port"], db=11).connect()
    test.addCleanup(conn.disconnect)
    await conn.execute_command("FLUSHDB")
    test.addCleanup(conn.execute_command, "FLUSHDB")
    return proxy, store, conn


class OutageTests(TestCase):

    timeout = 60

    async def scenario(self):
        proxy, store, conn = await redis_behind_proxy(self)
        bus = InProcessBus(reactor=reactor)
        producer = bus.producer()
        name = "M" + uuid.uuid4().hex[:6]
        mp = MarketPrice(service_config(), store,
                         lambda offset, on_message: bus.consumer("deals", on_message, offset),
                         lambda: defer.succeed([name]), reactor=reactor,
                         clock_time=lambda: T0 + 100, listen=False)
        await mp.startService()
        self.addCleanup(mp.stopService)
        producer.send("deals", deal(1, "10", "1", name))
        await until(lambda: mp.offset == 0, what="first deal applied")
        await mp.flush()
        self.assertEqual(await conn.get("k:offset"), "0")
        # Redis goes away: deals keep coming and are served from memory
        await proxy.down()
        producer.send("deals", deal(2, "12", "2", name))
        producer.send("deals", deal(3, "11", "1", name))
        await until(lambda: mp.offset == 2, what="deals applied during the outage")
        await mp.flush()
        self.flushLoggedErrors()
        self.assertEqual(await conn.get("k:offset"), "0")
        self.assertEqual(mp.markets[name].status(3600, int(T0 + 100))["volume"], "4")
        # back: the next flush writes everything, in one go
        proxy.up()
        await mp.flush()
        self.assertEqual(await conn.get("k:offset"), "2")
        self.assertEqual(await conn.get("k:%s:last" % name), "11")
        minute = json.loads((await conn.hgetall("k:%s:1m" % name))[str(int(T0) // 60 * 60)])
        self.assertEqual(minute, ["10", "11", "12", "10", "4", "45"])
        self.assertEqual(len(await conn.lrange("k:%s:deals" % name, 0, -1)), 3)

    def test_redis_outage(self):
        """A flush while Redis is away fails and keeps everything; the next one writes it."""
        return defer.Deferred.fromCoroutine(self.scenario())


class GatedStore:
    """A Redis store whose connections wait, while `gate` is set, for it to fire: a flush
    held between taking what changed and writing it."""

    def __init__(self, store):
        self.store = store
        self.gate = None

    def hold(self):
        self.gate = defer.Deferred()

    def release(self):
        gate, self.gate = self.gate, None
        gate.callback(None)

    def describe(self):
        return self.store.describe()

    async def connect(self):
        if self.gate is not None:
            await self.gate
        return await self.store.connect()


class FlushTests(TestCase):

    timeout = 60

    async def started(self):
        proxy, store, self.conn = await redis_behind_proxy(self)
        self.store = GatedStore(store)
        bus = InProcessBus(reactor=reactor)
        self.producer = bus.producer()
        self.name = "M" + uuid.uuid4().hex[:6]
        mp = MarketPrice(service_config(), self.store,
                         lambda offset, on_message: bus.consumer("deals", on_message, offset),
                         lambda: defer.succeed([self.name]), reactor=reactor,
                         clock_time=lambda: T0 + 100, listen=False)
        await mp.startService()
        self.addCleanup(mp.stopService)
        await self.deal(mp, 0, "10", "1")
        await mp.flush()
        return mp

    async def deal(self, mp, offset, price, amount):
        self.producer.send("deals", deal(offset + 1, price, amount, self.name))
        await until(lambda: mp.offset == offset, what="deal %d applied" % offset)

    async def in_redis(self, mp):
        """The minute bucket, the recent deals' ids and the offset Redis holds, and what
        the service holds of the first two."""
        minute = str(int(T0) // 60 * 60)
        market = mp.markets[self.name]
        stored = json.loads((await self.conn.hgetall("k:%s:1m" % self.name))[minute])
        deals = [json.loads(d)["id"]
                 for d in await self.conn.lrange("k:%s:deals" % self.name, 0, -1)]
        held = json.loads(market.buckets["1m"][int(minute)].to_json())
        return (stored, deals, await self.conn.get("k:offset")), (held, list(
            d["id"] for d in market.recent_deals(100, 0)))

    async def during_scenario(self):
        mp = await self.started()
        await self.deal(mp, 1, "12", "2")
        self.store.hold()
        held = mp.flush()
        # a deal in the same minute while that flush waits to be written
        await self.deal(mp, 2, "11", "1")
        self.store.release()
        await held
        await mp.flush()
        (stored, deals, offset), (bucket, recent) = await self.in_redis(mp)
        self.assertEqual(offset, "2")
        self.assertEqual(stored, bucket)
        self.assertEqual(stored, ["10", "11", "12", "10", "4", "45"])
        self.assertEqual(deals, recent)

    async def lost_answer_scenario(self):
        mp = await self.started()
        await self.deal(mp, 1, "12", "2")
        write = mp._write

        async def applied_unanswered(commands):
            # the transaction applied, the answer to EXEC lost with the connection
            await write(commands)
            return False
        mp._write = applied_unanswered
        await mp.flush()
        self.assertEqual(mp.unsure, 1)
        mp._write = write
        await self.deal(mp, 2, "11", "1")
        await mp.flush()
        (stored, deals, offset), (bucket, recent) = await self.in_redis(mp)
        self.assertEqual(offset, "2")
        self.assertEqual(deals, [3, 2, 1])
        self.assertEqual(deals, recent)
        self.assertEqual(stored, bucket)
        # and one that was not applied is written by the next flush
        mp._write = lambda commands: defer.succeed(False)
        await self.deal(mp, 3, "13", "1")
        await mp.flush()
        mp._write = write
        await mp.flush()
        (stored, deals, offset), _ = await self.in_redis(mp)
        self.assertEqual((offset, deals), ("3", [4, 3, 2, 1]))

    def test_flush_applied_but_unanswered(self):
        """A flush whose transaction was applied though its answer was lost is not written
        again: the offset in Redis tells (its deals were pushed twice onto the lists)."""
        return defer.Deferred.fromCoroutine(self.lost_answer_scenario())

    def test_deal_during_a_flush(self):
        """A deal applied while a flush is being written is written by the next flush,
        where its bucket was marked written with the value from before it."""
        return defer.Deferred.fromCoroutine(self.during_scenario())

    async def overlap_scenario(self):
        mp = await self.started()
        await self.deal(mp, 1, "12", "2")
        self.store.hold()
        first = mp.flush()
        await self.deal(mp, 2, "11", "1")
        # the timer's next flush while the first waits: it starts once that one is done
        second = mp.flush()
        self.assertEqual(mp.flush_waiting, [second])
        self.store.release()
        await first
        await second
        (stored, deals, offset), (bucket, recent) = await self.in_redis(mp)
        self.assertEqual(offset, "2")
        self.assertEqual(deals, [3, 2, 1])
        self.assertEqual(deals, recent)
        self.assertEqual(stored, bucket)

    async def unsigned_scenario(self):
        mp = await self.started()
        self.assertEqual([d["id"] for d in mp.rpc_deals([self.name, 10, 0], None)], [1])
        self.assertEqual(mp.rpc_deals([self.name, 10, -1], None), [])

    def test_deals_after_an_unsigned_id(self):
        """market.deals reads last_id unsigned, as the original: -1 answers no deal."""
        return defer.Deferred.fromCoroutine(self.unsigned_scenario())

    def test_flushes_one_at_a_time(self):
        """A flush asked for while another is written waits for it: two at once wrote the
        same deals twice, and the older could commit last, its offset with it."""
        return defer.Deferred.fromCoroutine(self.overlap_scenario())


class RetentionTests(TestCase):

    timeout = 60

    async def scenario(self):
        proxy, store, conn = await redis_behind_proxy(self)
        name = "M" + uuid.uuid4().hex[:6]
        key = "k:%s:1s" % name
        now = [int(T0) + 100]
        week = 604800
        kline = json.dumps(["10", "10", "10", "10", "1", "10"])
        # left by an earlier run: 2,500 second buckets past retention, one within it
        stale = [str(now[0] - week - 1 - n) for n in range(2500)]
        await conn.hmset(key, dict({t: kline for t in stale}, **{str(now[0] - 50): kline}))
        # loaded by HSCAN in parts of about 100 fields
        self.patch(server, "HASH_SCAN_COUNT", 100)
        scans = []
        hscan = txredisapi.BaseRedisProtocol.hscan
        self.patch(txredisapi.BaseRedisProtocol, "hscan",
                   lambda conn, name, *args, **kw: scans.append(name) or hscan(conn, name, *args,
                                                                                **kw))
        bus = InProcessBus(reactor=reactor)
        mp = MarketPrice(service_config(), store,
                         lambda offset, on_message: bus.consumer("deals", on_message, offset),
                         lambda: defer.succeed([name]), reactor=reactor,
                         clock_time=lambda: now[0], listen=False)
        await mp.startService()
        self.addCleanup(mp.stopService)
        self.assertEqual(list(mp.markets[name].buckets["1s"]), [now[0] - 50])
        self.assertGreater(scans.count(key), 10)
        # the hourly retention deletes the stale fields by name, in chunks
        await mp.expire()
        self.assertEqual(await conn.hkeys(key), [str(now[0] - 50)])
        # an hour later the loaded bucket is past retention too, while Redis is away:
        # it leaves memory now and Redis the next hour
        now[0] += week
        await proxy.down()
        await self.assertFailure(mp.expire(), Exception)
        self.flushLoggedErrors()
        self.assertEqual(mp.markets[name].buckets["1s"], {})
        self.assertEqual(mp.redis_drops, {key: [str(now[0] - week - 50)]})
        proxy.up()
        await mp.expire()
        self.assertEqual(await conn.hkeys(key), [])
        self.assertEqual(mp.redis_drops, {})

    def test_retention_deletes_fields_by_name(self):
        """Buckets past retention leave Redis by name (no scan of the hashes), those an
        earlier run left included; a deletion Redis refuses is tried again."""
        return defer.Deferred.fromCoroutine(self.scenario())


class CountingStore:
    """A Redis store that counts the connections it failed to make."""

    def __init__(self, store):
        self.store = store
        self.failures = 0

    def describe(self):
        return self.store.describe()

    async def connect(self):
        try:
            return await self.store.connect()
        except Exception:
            self.failures += 1
            raise


class StartTests(TestCase):

    timeout = 60

    async def away_scenario(self):
        info = testing.require("redis")
        proxy = testing.CuttableProxy(int(info["port"]))        # not up yet: Redis away
        self.addCleanup(proxy.down)
        store = CountingStore(redisdb.Plain("127.0.0.1", proxy.port, db=11, timeout=1))
        gave_up = []
        self.patch(server, "give_up", lambda *args: gave_up.append(args))
        bus = InProcessBus(reactor=reactor)
        name = "M" + uuid.uuid4().hex[:6]
        mp = MarketPrice(service_config(), store,
                         lambda offset, on_message: bus.consumer("deals", on_message, offset),
                         lambda: defer.succeed([name]), reactor=reactor,
                         clock_time=lambda: T0 + 100, listen=False)
        started = mp.startService()
        self.addCleanup(mp.stopService)
        await until(lambda: store.failures >= 2, 10, "a second attempt")
        self.assertFalse(mp.is_ready)
        proxy.up()
        await started
        self.assertTrue(mp.is_ready)
        self.assertEqual(list(mp.markets), [name])
        self.assertEqual(gave_up, [])

    def test_redis_away_at_start(self):
        """A Redis that cannot be reached at start is tried again every second, and the
        start goes on once it answers."""
        return defer.Deferred.fromCoroutine(self.away_scenario())


class DaemonStartTests(SynchronousTestCase):

    def test_database_refused(self):
        """`redis.db` past the databases of the Redis master (10000; it has 16) stops
        `twistd marketprice` at start with exit status 1 and one line on stderr naming the
        key, before accesshttp is asked for the markets; it used to retry for ever."""
        sentinel = testing.require("sentinel")
        redis = testing.require("redis")
        mp = testing.DaemonProcess("marketprice", testing.base_config(
            "marketprice", svr=testing.rpc_svr(testing.free_port()),
            deals={"brokers": "127.0.0.1:1", "topic": "deals"},
            redis={"name": sentinel["name"], "addr": sentinel["addr"], "db": 10000},
            accesshttp="http://127.0.0.1:1/"), os.path.abspath(self.mktemp()))
        mp.start()
        self.addCleanup(mp.stop)
        self.assertEqual(mp.wait_exit(30), 1, "\n".join(mp.output()[-20:]))
        self.assertIn("marketprice could not start: redis.db: database 10000 refused by "
                      "redis master %r at %s:%d: ERR DB index is out of range"
                      % (sentinel["name"], redis["host"], int(redis["port"])), mp.output())
