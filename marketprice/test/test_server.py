# -*- test-case-name: marketprice.test.test_server -*-
"""The marketprice service with a real Redis behind a proxy the test cuts, and an in-process
bus for the deals: it serves from memory while Redis is away and catches up after.  At start
a Redis away is waited for, and a database number it refuses stops the daemon."""

import json
import os
import types
import uuid

import txredisapi
from twisted.internet import defer, reactor
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from marketprice import config, server
from marketprice.kline import GRANULARITIES
from marketprice.server import MarketPrice
from utils import redisdb, rpc, testing
from utils.kafka_queue import InProcessBus, record_digest
from utils.testing import until

T0 = 1795561980.5


def deal(n, price, amount, market="BTCBCH"):
    return json.dumps([T0 + n, market, n, n + 100, 1, 2, price, amount, "0", "0", 2, n,
                       "BTC", "BCH"])


def bus_consumer(bus):
    """A consumer factory reading the deals of `bus`."""
    def consumer(offset, on_message, last_digest):
        return bus.consumer("deals", on_message, offset, last_digest=last_digest)
    return consumer


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


def request(command, body):
    """What a cached command reads of its request: the command and the packet's body."""
    return types.SimpleNamespace(command=command, packet=types.SimpleNamespace(body=body))


def lost_data_warnings(test):
    """A list the warnings that Redis lost data are added to, text, while `test` runs."""
    found = []

    def observe(event):
        if event.get("log_level") is LogLevel.warn and "lost data" in (
                event.get("log_format") or ""):
            found.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return found


async def in_redis(conn, name):
    """What Redis holds of market `name`, and its offset."""
    state = {g: await conn.hgetall("k:%s:%s" % (name, g)) for g in GRANULARITIES}
    state["deals"] = await conn.lrange("k:%s:deals" % name, 0, -1)
    state["last"] = await conn.get("k:%s:last" % name)
    return state, await conn.get("k:offset")


def held(mp, name):
    """What `mp` holds of market `name`, as `in_redis` reads it, and its offset."""
    market = mp.markets[name]
    state = {g: {str(t): bucket.to_json() for t, bucket in market.buckets[g].items()}
             for g in GRANULARITIES}
    state["deals"] = [market.record_json(r) for r in market.deals]
    state["last"] = market.last_price()
    return state, str(mp.offset)


async def put_back(conn, name, saved):
    """Redis emptied, then holding only `saved` (what `in_redis` read): Redis restarted
    from an older snapshot."""
    state, offset = saved
    await conn.execute_command("FLUSHDB")
    for g in GRANULARITIES:
        if state[g]:
            await conn.hmset("k:%s:%s" % (name, g), state[g])
    await conn.rpush("k:%s:deals" % name, state["deals"])
    await conn.set("k:%s:last" % name, state["last"])
    await conn.set("k:offset", offset)


class OutageTests(TestCase):

    timeout = 60

    async def scenario(self):
        proxy, store, conn = await redis_behind_proxy(self)
        bus = InProcessBus(reactor=reactor)
        producer = bus.producer()
        name = "M" + uuid.uuid4().hex[:6]
        mp = MarketPrice(service_config(), store,
                         bus_consumer(bus),
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
        with capturedLogs() as events:
            await mp.flush()
            self.flushLoggedErrors()
            self.assertEqual(await conn.get("k:offset"), "0")
            self.assertEqual(mp.markets[name].status(3600, int(T0 + 100))["volume"], "4")
            # back: the next flush writes everything, in one go
            proxy.up()
            await mp.flush()
        # the outage told as an error, not an alert at each flush, and its end
        told = [(e["log_level"], formatEvent(e)) for e in events
                if formatEvent(e).startswith("marketprice: ")]
        self.assertEqual([level for level, _ in told], [LogLevel.error, LogLevel.warn], told)
        self.assertIn("marketprice: flush failed", told[0][1])
        self.assertIn("marketprice: working again after", told[1][1])
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
        self.proxy, store, self.conn = await redis_behind_proxy(self)
        self.lost = lost_data_warnings(self)
        self.store = GatedStore(store)
        bus = InProcessBus(reactor=reactor)
        self.producer = bus.producer()
        self.name = "M" + uuid.uuid4().hex[:6]
        mp = MarketPrice(service_config(), self.store,
                         bus_consumer(bus),
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
        self.proxy.cut_at(b"EXEC")
        await mp.flush()
        self.assertEqual(await self.conn.get("k:offset"), "1")      # applied, unanswered
        self.assertEqual(mp.unsure, 1)
        # the next flush finds Redis away, reads no offset and writes nothing
        await self.deal(mp, 2, "11", "1")
        await mp.flush()
        self.proxy.up()
        await mp.flush()
        (stored, deals, offset), (bucket, recent) = await self.in_redis(mp)
        self.assertEqual(offset, "2")
        self.assertEqual(deals, [3, 2, 1])
        self.assertEqual(deals, recent)
        self.assertEqual(stored, bucket)
        self.assertEqual(self.lost, [])

    def test_flush_applied_but_unanswered(self):
        """A flush whose transaction was applied though its answer was lost, followed by
        one that cannot reach Redis, is not written again once Redis answers: the offset in
        Redis tells (the deals of both were pushed again, listed twice after a restart)."""
        return defer.Deferred.fromCoroutine(self.lost_answer_scenario())

    async def unsure_in_a_row_scenario(self):
        mp = await self.started()
        # lost answers to EXEC, applied or not, each followed by a deal and a flush that
        # finds Redis away, then Redis back
        offset = 0
        for applied in (True, True, False, True, False, False):
            offset += 1
            await self.deal(mp, offset, "1%d" % offset, "1")
            self.proxy.cut_at(b"EXEC", forward=applied)
            await mp.flush()
            self.assertEqual(await self.conn.get("k:offset"),
                             str(offset if applied else mp.flushed_offset))
            self.assertEqual(mp.unsure, offset)
            offset += 1
            await self.deal(mp, offset, "1%d" % offset, "1")
            await mp.flush()
            self.proxy.up()
        await mp.flush()
        (stored, deals, stored_offset), (bucket, recent) = await self.in_redis(mp)
        self.assertEqual(stored_offset, str(offset))
        self.assertEqual(deals, list(range(offset + 1, 0, -1)))
        self.assertEqual(deals, recent)
        self.assertEqual(stored, bucket)
        self.assertEqual(mp.unsure, None)
        self.assertEqual(self.lost, [])

    def test_unsure_flushes_in_a_row(self):
        """Flushes whose answers were lost, applied or not, each followed by one that finds
        Redis away, leave every deal listed once: each flush reads the offset in Redis,
        which tells whether the one before it was applied, before it writes."""
        return defer.Deferred.fromCoroutine(self.unsure_in_a_row_scenario())

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

    async def read_again_scenario(self):
        mp = await self.started()
        # the topic recreated and read again from its start: its first deal is at the
        # offset of the last one flushed
        mp.on_deal(0, deal(7, "14", "1", self.name))
        await mp.flush()
        (stored, deals, offset), (bucket, recent) = await self.in_redis(mp)
        self.assertEqual((offset, deals), ("0", [7, 1]))
        self.assertEqual(stored, bucket)

    async def valueless_scenario(self):
        mp = await self.started()
        with capturedLogs() as events:
            mp.on_deal(1, None)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn],
                         ["marketprice: invalid deals message at offset 1: None"])
        await mp.flush()
        self.assertEqual((await self.conn.get("k:offset"),
                          await self.conn.get("k:offset_digest")), ("1", record_digest(b"")))

    def test_record_without_value(self):
        """A deals record without a value (a tombstone) is refused as invalid, and its offset
        flushed with the digest a consumer computes for it."""
        return defer.Deferred.fromCoroutine(self.valueless_scenario())

    def test_deals_at_offsets_flushed_before(self):
        """Deals at offsets already flushed (the topic read again from its start after
        it was recreated) are written by the next flush, where it found the offset
        unchanged and wrote nothing."""
        return defer.Deferred.fromCoroutine(self.read_again_scenario())

    async def unsigned_scenario(self):
        mp = await self.started()
        self.assertEqual([d["id"] for d in mp.rpc_deals([self.name, 10, 0], None)], [1])
        self.assertEqual(mp.rpc_deals([self.name, 10, -1], None), [])

    def test_deals_after_an_unsigned_id(self):
        """market.deals reads last_id unsigned, as the original: -1 answers no deal."""
        return defer.Deferred.fromCoroutine(self.unsigned_scenario())

    async def c_int_scenario(self):
        mp = await self.started()
        status = mp.rpc_status([self.name, (1 << 32) + 60], request(301, b"a"))
        self.assertEqual(status.value()["period"], 60)
        rows = mp.rpc_kline([self.name, int(T0) - 60, int(T0) + 60, (1 << 32) + 60],
                            request(302, b"b")).value()
        minute = int(T0) // 60 * 60
        self.assertEqual([r[0] for r in rows], [minute, minute + 60])     # a row a minute
        self.assertEqual([d["id"] for d in mp.rpc_deals([self.name, (1 << 32) + 10, 0],
                                                        None)], [1])
        for params in ([self.name, (1 << 32) - 1, 0], [self.name, 1 << 32, 0]):
            self.assertRaises(rpc.RPCError, mp.rpc_deals, params, None)
        self.assertRaises(rpc.RPCError, mp.rpc_status, [self.name, -(1 << 32) - 1],
                          request(301, b"c"))

    def test_counts_read_as_c_ints(self):
        """market.status's period, market.kline's interval and market.deals's limit are
        read into a C int, as the original: 2^32 + 60 is 60, 2^32 is 0 (refused)."""
        return defer.Deferred.fromCoroutine(self.c_int_scenario())

    def test_flushes_one_at_a_time(self):
        """A flush asked for while another is written waits for it: two at once wrote the
        same deals twice, and the older could commit last, its offset with it."""
        return defer.Deferred.fromCoroutine(self.overlap_scenario())


class RedisLostTests(TestCase):
    """Redis restarted empty, or from an older snapshot, under a running marketprice."""

    timeout = 60

    async def started(self, left=None):
        """A marketprice started on an emptied Redis, where `left(conn, name)` then
        writes what an earlier run left."""
        self.proxy, store, self.conn = await redis_behind_proxy(self)
        self.lost = lost_data_warnings(self)
        bus = InProcessBus(reactor=reactor)
        self.producer = bus.producer()
        self.name = "M" + uuid.uuid4().hex[:6]
        if left is not None:
            await left(self.conn, self.name)
        self.service = lambda: MarketPrice(
            service_config(), store,
            bus_consumer(bus),
            lambda: defer.succeed([self.name]), reactor=reactor,
            clock_time=lambda: T0 + 100, listen=False)
        mp = self.service()
        await mp.startService()
        self.addCleanup(mp.stopService)
        return mp

    async def deal(self, mp, offset, price, amount, later=0):
        self.producer.send("deals", deal(offset + 1 + later, price, amount, self.name))
        await until(lambda: mp.offset == offset, what="deal %d applied" % offset)

    async def restarted(self, mp):
        """What a marketprice started anew on this Redis holds, `mp` stopped."""
        await mp.stopService()
        again = self.service()
        await again.startService()
        self.addCleanup(again.stopService)
        return held(again, self.name)

    async def empty_scenario(self):
        mp = await self.started()
        for offset in range(3):
            # in three seconds, minutes and hours
            await self.deal(mp, offset, "1%d" % offset, "1", later=3661 * offset)
        await mp.flush()
        self.assertEqual(await in_redis(self.conn, self.name), held(mp, self.name))
        # Redis restarts empty; no deal comes: the next flush notices all the same
        await self.conn.execute_command("FLUSHDB")
        await mp.flush()
        self.assertEqual(len(self.lost), 1)
        self.assertIn("k:offset is none where 2 was written last", self.lost[0])
        self.assertEqual(await in_redis(self.conn, self.name), held(mp, self.name))
        # and flushes go on with what changes, warning no more
        await self.deal(mp, 3, "9", "2")
        await mp.flush()
        self.assertEqual(len(self.lost), 1)
        self.assertEqual(await in_redis(self.conn, self.name), held(mp, self.name))
        before = held(mp, self.name)
        self.assertEqual(len(before[0]["deals"]), 4)
        self.assertEqual(await self.restarted(mp), before)

    def test_redis_restarted_empty(self):
        """Redis found without the offset last written (restarted empty) is told by a
        warning and given all that marketprice holds again, in one transaction with the
        offset, even with no deal since; it used to receive what changed from then on only,
        which a restarted marketprice read back as the whole history."""
        return defer.Deferred.fromCoroutine(self.empty_scenario())

    async def snapshot_scenario(self):
        mp = await self.started()
        await self.deal(mp, 0, "10", "1")
        await self.deal(mp, 1, "12", "2", later=60)
        await mp.flush()
        snapshot = await in_redis(self.conn, self.name)
        await self.deal(mp, 2, "11", "1", later=3600)
        await self.deal(mp, 3, "13", "1")
        await mp.flush()
        # Redis restarts from the snapshot, offset 1; then a deal
        await put_back(self.conn, self.name, snapshot)
        await self.deal(mp, 4, "14", "1", later=60)
        await mp.flush()
        self.assertEqual(len(self.lost), 1)
        self.assertIn("k:offset is 1 where 3 was written last", self.lost[0])
        before = held(mp, self.name)
        self.assertEqual(await in_redis(self.conn, self.name), before)
        self.assertEqual(len(before[0]["deals"]), 5)
        self.assertEqual(await self.restarted(mp), before)

    def test_redis_restarted_from_an_older_snapshot(self):
        """Redis back with an older offset (an older snapshot) is given all that
        marketprice holds again: the deals and buckets since the snapshot are not lost."""
        return defer.Deferred.fromCoroutine(self.snapshot_scenario())

    async def lost_answer_scenario(self):
        mp = await self.started()
        await self.deal(mp, 0, "10", "1")
        await mp.flush()
        await self.deal(mp, 1, "12", "2")
        self.proxy.cut_at(b"EXEC")
        await mp.flush()
        self.assertEqual(mp.unsure, 1)
        # Redis restarts empty before the next flush learns that one was applied
        await self.conn.execute_command("FLUSHDB")
        self.proxy.up()
        await mp.flush()
        self.assertEqual(len(self.lost), 1)
        self.assertIn("k:offset is none where 0 was written last", self.lost[0])
        self.assertEqual(await in_redis(self.conn, self.name), held(mp, self.name))
        self.assertEqual(mp.unsure, None)

    def test_redis_emptied_after_a_lost_answer(self):
        """An offset neither that written last nor that of the flush whose answer was lost
        is data lost too: all is written again."""
        return defer.Deferred.fromCoroutine(self.lost_answer_scenario())

    async def chunks_scenario(self):
        async def left(conn, name):
            # 2,500 second buckets and deals
            kline = json.dumps(["10", "10", "10", "10", "1", "10"])
            now = int(T0 + 100)
            await conn.hmset("k:%s:1s" % name, {str(now - 5000 + n): kline
                                                  for n in range(2500)})
            await conn.rpush("k:%s:deals" % name, [
                json.dumps({"id": 5000 - n, "time": T0 - n, "price": "10", "amount": "1",
                            "type": "buy"}) for n in range(2500)])
        written = []

        def spy(command):
            real = getattr(txredisapi.BaseRedisProtocol, command)

            def counted(conn, key, values):
                written.append((key.split(":")[-1], len(values)))
                return real(conn, key, values)
            self.patch(txredisapi.BaseRedisProtocol, command, counted)
        mp = await self.started(left)
        await self.deal(mp, 0, "10", "1")
        await mp.flush()
        spy("hmset")
        spy("rpush")
        await self.conn.execute_command("FLUSHDB")
        await mp.flush()
        before = held(mp, self.name)
        self.assertEqual(await in_redis(self.conn, self.name), before)
        self.assertEqual(len(before[0]["1s"]), 2501)
        self.assertEqual(len(before[0]["deals"]), 2501)
        self.assertEqual(sorted(written), [("1d", 1), ("1h", 1), ("1m", 1), ("1s", 501),
                                           ("1s", 1000), ("1s", 1000), ("deals", 501),
                                           ("deals", 1000), ("deals", 1000)])

    def test_written_again_in_parts(self):
        """All that is held is written again in commands of 1,000 fields or deals at most,
        not one giant command per hash or list."""
        return defer.Deferred.fromCoroutine(self.chunks_scenario())


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
                         bus_consumer(bus),
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
                         bus_consumer(bus),
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


class ResumeTests(TestCase):
    """A restart resumes after the last deal flushed, checked by its digest."""

    timeout = 60

    async def run_once(self, bus, store):
        """Start a marketprice on `bus` and `store`, let it apply what the bus holds, flush
        and stop; returns the ids of the recent deals it holds."""
        mp = MarketPrice(service_config(), store, bus_consumer(bus),
                         lambda: defer.succeed([self.name]), reactor=reactor,
                         clock_time=lambda: T0 + 100, listen=False)
        await mp.startService()
        end = bus.end_offset("deals") - 1
        await until(lambda: mp.offset == end, what="deal at offset %d applied" % end)
        await mp.flush()
        await mp.stopService()
        return [d["id"] for d in mp.rpc_deals([self.name, 100, 0], None)]

    async def scenario(self):
        proxy, store, conn = await redis_behind_proxy(self)
        self.name = "M" + uuid.uuid4().hex[:6]
        bus = InProcessBus(reactor=reactor)
        for n in (1, 2, 3):
            bus.append("deals", deal(n, "10", "1", self.name))
        self.assertEqual(await self.run_once(bus, store), [3, 2, 1])
        self.assertEqual(await conn.get("k:offset_digest"),
                         record_digest(deal(3, "10", "1", self.name)))
        # the same topic, a deal more: only that one is read
        bus.append("deals", deal(4, "10", "1", self.name))
        with capturedLogs() as events:
            self.assertEqual(await self.run_once(bus, store), [4, 3, 2, 1])
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
        # the topic recreated meanwhile with other deals, more than were read: read from its
        # start, where the stored offset would have skipped the first four
        recreated = InProcessBus(reactor=reactor)
        for n in range(11, 17):
            recreated.append("deals", deal(n, "10", "1", self.name))
        with capturedLogs() as events:
            self.assertEqual(await self.run_once(recreated, store),
                             [16, 15, 14, 13, 12, 11, 4, 3, 2, 1])
        self.assertEqual(
            [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn],
            ["bus consumer deals: deals is not the one read before: another record is at "
             "offset 3; it was recreated, reading it again from its start"])
        self.assertEqual((await conn.get("k:offset"), await conn.get("k:offset_digest")),
                         ("5", record_digest(deal(16, "10", "1", self.name))))

    def test_restart_in_a_recreated_topic(self):
        """marketprice keeps the digest of the last deal it flushed beside its offset; a
        restart goes on after that deal when it is still there, and reads the topic again
        from its start when another deal holds its offset."""
        return defer.Deferred.fromCoroutine(self.scenario())


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

    def test_market_list_refused(self):
        """A market list that accesshttp does not give is asked for again every second; the
        first failure is fatal, so that it alerts (the original exits there), the next ones
        errors."""
        from twisted.internet.task import Clock
        from twisted.logger import LogLevel, capturedLogs
        answers = [defer.fail(RuntimeError("connection refused")) for _ in range(3)]
        answers.append(defer.succeed(["BTCBCH"]))
        clock = Clock()
        mp = MarketPrice(service_config(), None, None, lambda: answers.pop(0), reactor=clock,
                         listen=False)
        with capturedLogs() as events:
            names = defer.Deferred.fromCoroutine(mp._market_names())
            clock.advance(1)
            clock.advance(1)
            self.assertNoResult(names)
            clock.advance(1)
        self.assertEqual(self.successResultOf(names), ["BTCBCH"])
        self.assertEqual([e["log_level"] for e in events],
                         [LogLevel.critical, LogLevel.error, LogLevel.error])
