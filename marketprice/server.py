# -*- test-case-name: marketprice.test.test_server -*-
"""The marketprice daemon: deals from Kafka into k-lines, kept in Redis, served over RPC.

At start it connects to Redis (retrying every second while Redis cannot be reached; a
database number the server refuses, `redis.db` past the databases it has, stops it as a config
error), asks accesshttp for `market.list` (retrying until it answers), loads each market's
k-lines, recent deals and last price from Redis, and consumes the `deals` topic from the
offset after the one stored in `k:offset` (from the beginning when none is stored).  The
deal at that offset is checked first against its digest, kept in `k:offset_digest`: another
deal there, or none, means the topic was recreated meanwhile, and it is read again from its
start.

Every 10 s the changes go to Redis in one MULTI/EXEC transaction together with the offset of
the last deal applied, so Redis always holds the state of exactly one offset: after a crash
or a restart consumption resumes right after it, and nothing is lost or counted twice.  While
Redis is down the daemon keeps serving from memory and writes everything at the next flush
that succeeds.

Each flush first reads `k:offset` (watched: the transaction is refused should another client
change it before EXEC), even with nothing to write, and learns from it what Redis holds:

- the offset of the last flush known written: as expected; a flush whose answer to EXEC was
  lost in between was not applied, and its deals go with this one;
- the offset of that flush whose answer was lost: it was applied, and its deals are not
  pushed again.  A flush writes only once the one before it is settled so: any number of
  failed flushes in a row leave every deal listed once;
- any other offset, or none where one was written: Redis lost data (it restarted empty, or
  from an older snapshot).  A warning says so, and the flush replaces what Redis has of each
  market by all that is held (k-line buckets, recent deals, last price) with the offset, in
  one transaction of commands of 1,000 fields or deals at most; flushes do so until one is
  written.
"""

import itertools
import time

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from network.address import buffer_sizes
from marketprice.kline import (DEALS_MAX, GRANULARITIES, MONTH, WEEK, KLine, Market,
                               kline_json, parse_deal, timezone_offset)
from utils import decimals, rpc
from utils.config import ConfigError
from utils.daemon import give_up, mark_ready
from utils.jsonfmt import RawJSON, dumps
from utils.kafka_queue import record_digest
from utils.outage import Outage, on_log
from utils.redisdb import ConfigChecked, WatchError
from utils.rpc_server import RPCServerFactory, listen_rpc

__all__ = ["MarketPrice"]

STATUS, KLINE, DEALS, LAST, TODAY = 301, 302, 303, 304, 305
DEALS_LIMIT = 10000
HASH_SCAN_COUNT = 10000     # fields asked per HSCAN when loading
REDIS_DROP_CHUNK = 1000     # fields per HDEL
REDIS_WRITE_CHUNK = 1000    # fields per HMSET, deals per RPUSH, when all is written again
REDIS_QUEUE_PART = 10       # commands of a transaction sent before Redis is waited for


def integer(value):
    return value if type(value) is int else 0


def interval_ok(interval):
    if interval <= 0:
        return False
    if interval < 60:
        return 60 % interval == 0
    if interval < 3600:
        return interval % 60 == 0 and 3600 % interval == 0
    if interval < 86400:
        return interval % 3600 == 0 and 86400 % interval == 0
    if interval < WEEK:
        return interval % 86400 == 0
    return interval in (WEEK, MONTH)


class MarketPrice(service.Service):
    log = Logger()

    def __init__(self, cfg, store, consumer_factory, market_list, reactor=None,
                 clock_time=time.time, listen=True):
        """`store`: a utils.redisdb store; `consumer_factory(offset, on_message,
        last_digest)`: a consumer service, reading from `offset` after the deal whose digest
        is `last_digest` (or None); `market_list()`: a Deferred firing with the market
        names."""
        if reactor is None:
            from twisted.internet import reactor
        self.cfg = cfg
        self.store = store
        self.redis = ConfigChecked(store)       # the connections of the start
        self.consumer_factory = consumer_factory
        self.market_list = market_list
        self.reactor = reactor
        self.clock_time = clock_time
        self.listen_enabled = listen
        # Redis away, at start or at the flushes, told in few lines (`utils.outage`)
        self.redis_outage = Outage("marketprice", on_log(self.log), clock=reactor.seconds)
        self.tz = timezone_offset()
        self.limits = (cfg["sec_max"], cfg["min_max"], cfg["hour_max"])
        self.markets = {}
        self.offset = None             # Kafka offset of the last deal applied
        # and that deal's message (None before the first): its digest goes with the offset,
        # for a restart to check that the deal is still there (read at start until then)
        self.last_deal = None
        self.offset_digest = None
        # the offset whose state Redis is known to hold: read at start, then that of each
        # flush written (None: none stored)
        self.flushed_offset = None
        # deals messages handled, and how many of them the last flush that succeeded wrote:
        # offsets go back when the topic is read again from its start (it was recreated),
        # so they cannot tell alone whether anything came since
        self.handled = 0
        self.flushed_handled = 0
        self.last_flush = 0.0
        self.flushing = None           # the flush being written
        # the offset of a flush that failed once EXEC was sent: its transaction may have
        # been applied all the same (a connection lost with the answer to EXEC), which the
        # offset in Redis tells at the next flush; the deals not known written wait in each
        # market's `unsure`
        self.unsure = None
        # Redis was found without the state of `flushed_offset` (restarted empty, or from an
        # older snapshot): flushes write all that is held until one is written
        self.redis_lost = False
        self.flush_waiting = []        # Deferreds of flushes asked for meanwhile
        self.consumer = None
        self.cache = {}                # market -> {request body: (time, result)}
        self.ports = []
        self.loops = []
        # Redis hash fields past retention, still to delete: {key: [field, ...]}
        self.redis_drops = {}
        self.is_ready = False
        svr = cfg["svr"]
        self.factory = RPCServerFactory(
            {STATUS: self.rpc_status, KLINE: self.rpc_kline, DEALS: self.rpc_deals,
             LAST: self.rpc_last, TODAY: self.rpc_today},
            svr["max_pkg_size"], heartbeat_check=svr.get("heartbeat_check", True),
            debug=bool(cfg.get("debug", False)), buf_limit=svr.get("buf_limit", 0),
            name="marketprice", clock=reactor)

    # -- start -------------------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        d = defer.Deferred.fromCoroutine(self._start())
        d.addErrback(self._start_failed)
        return d

    def _start_failed(self, failure):
        give_up(self.reactor, self.log, "marketprice could not start", failure)

    async def _start(self):
        # Redis first: a database it refuses is told at once, not once accesshttp answers
        (await self._connect_retrying()).disconnect()
        names = await self._market_names()
        conn = await self._connect_retrying()
        try:
            now = int(self.clock_time())
            for name in names:
                self.markets[name] = await self._load_market(conn, name, now)
            stored = await conn.get("k:offset")
            digest = await conn.get("k:offset_digest")
        finally:
            conn.disconnect()
        self.offset = self.flushed_offset = int(stored) if stored is not None else None
        self.offset_digest = digest
        start = "earliest" if self.offset is None else self.offset + 1
        self.log.info("marketprice: {count} markets loaded; consuming deals from offset "
                      "{start}", count=len(self.markets), start=start)
        self.consumer = self.consumer_factory(start, self.on_deal, digest)
        self.consumer.startService()
        for seconds, function in ((self.cfg.get("flush_interval", 10.0), self.flush),
                                  (60.0, self.cache.clear),
                                  (3600.0, self.expire)):
            loop = LoopingCall(self._guarded, function)
            loop.clock = self.reactor
            loop.start(seconds, now=False)
            self.loops.append(loop)
        if self.listen_enabled:
            self.ports = await listen_rpc(self.reactor, self.cfg["svr"]["bind"], self.factory,
                           **buffer_sizes(self.cfg["svr"]))
        self.is_ready = True
        mark_ready()

    async def _market_names(self):
        """The market list from accesshttp, asked again every second until it comes; the
        first failure is fatal (an alert: the original exits there), the next ones
        errors."""
        failures = 0
        while True:
            try:
                return await self.market_list()
            except Exception as e:
                failures += 1
                self.log.emit(LogLevel.critical if failures == 1 else LogLevel.error,
                              "marketprice: market.list from accesshttp failed ({error}); "
                              "retrying in 1 s", error=e)
                await self._sleep(1.0)

    async def _connect_retrying(self):
        """A connection to Redis, tried again every second while it cannot be reached.  A
        database number the server refuses before it has taken a connection is a ConfigError
        naming `redis.db` (`ConfigChecked`): no retry mends it, and the daemon would
        otherwise wait for ever."""
        while True:
            try:
                conn = await self.redis.connect()
            except ConfigError:
                raise
            except Exception as e:
                self.redis_outage.failed("%s unavailable (%s); retrying in 1 s"
                                         % (self.store.describe(), e))
                await self._sleep(1.0)
            else:
                self.redis_outage.succeeded()
                return conn

    def _sleep(self, seconds):
        d = defer.Deferred()
        self.reactor.callLater(seconds, d.callback, None)
        return d

    async def _load_market(self, conn, name, now):
        market = Market(name, self.tz)
        oldest = market.thresholds(now, self.limits)
        for g in GRANULARITIES:
            values = await _read_hash(conn, "k:%s:%s" % (name, g))
            loaded = []
            for field, text in values.items():
                try:
                    t = int(field)
                    if g in oldest and t < oldest[g]:
                        self.redis_drops.setdefault("k:%s:%s" % (name, g), []).append(field)
                        continue
                    loaded.append((t, KLine.from_json(text)))
                except (ValueError, decimals.InvalidDecimal):
                    self.log.warn("marketprice: skipping k-line {key} {field}",
                                  key="k:%s:%s" % (name, g), field=field)
            market.load(g, loaded)
        deals = await conn.lrange("k:%s:deals" % name, 0, 9999)
        for text in deals:
            record = market.record_from_json(text)
            market.deals.append(record)
            market.recent.add(record[0])
        last = await conn.get("k:%s:last" % name)
        if last is not None:
            market.last = decimals.parse(last)
            market.priced = True
        return market

    def stopService(self):
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        for port in self.ports:
            await port.stopListening()
        for loop in self.loops:
            if loop.running:
                loop.stop()
        if self.consumer is not None and self.consumer.running:
            await defer.maybeDeferred(self.consumer.stopService)
        if self.is_ready:
            await self.flush()

    def _guarded(self, function):
        try:
            d = function()
        except Exception:
            self.log.failure("marketprice: timer {name} failed", name=function.__name__)
            return None
        if isinstance(d, defer.Deferred):
            d.addErrback(lambda f: self.log.failure("marketprice: timer failed", f))
        return None

    # -- deals -------------------------------------------------------------------------

    def on_deal(self, offset, value):
        deal = parse_deal(value)
        if deal is None:
            self.log.error("marketprice: invalid deals message at offset {offset}: {value!r}",
                           offset=offset, value=value and value[:200])
        else:
            t, name, price, amount, side, deal_id = deal
            market = self.markets.get(name)
            if market is None:
                market = self.markets[name] = Market(name, self.tz)
                self.log.info("marketprice: new market {name}", name=name)
            if market.apply_deal(t, price, amount, deal_id, side, self.clock_time(), offset):
                self.cache.pop(name, None)
            else:
                self.log.warn("marketprice: deal {deal_id} of {market} at offset {offset} is "
                              "one of the recent deals applied already; skipped",
                              deal_id=deal_id, market=name, offset=offset)
        # (a record without a value, refused above, is known by an empty one)
        self.offset, self.last_deal = offset, value or b""
        self.handled += 1

    # -- flushing ----------------------------------------------------------------------

    def flush(self):
        """Write what changed since the last flush, and the offset, in one transaction; or
        all that is held, where Redis is found to have lost what was written before.

        Flushes run one at a time: one asked for while another is being written starts when
        that one is done.  Fires once what there was at the call is written (or, Redis
        away, kept for the next flush)."""
        done = defer.Deferred()
        self.flush_waiting.append(done)
        if self.flushing is None:
            self._next_flush()
        return done

    def _next_flush(self):
        waiting, self.flush_waiting = self.flush_waiting, []
        self.flushing = defer.Deferred.fromCoroutine(self._flush_once())

        def finished(result):
            self.flushing = None
            for done in waiting:
                done.callback(None)
            if self.flush_waiting:
                self._next_flush()
            return result
        self.flushing.addBoth(finished)

    async def _flush_once(self):
        # with nothing to write the offset is read all the same: a Redis emptied while the
        # markets are quiet is written again at once, not after the next deal (Redis away
        # then is not logged: nothing is at stake)
        changed = (self.handled != self.flushed_handled or self.unsure is not None
                   or self.redis_lost)
        try:
            conn = await self.store.connect()
        except Exception as e:
            if changed:
                self.redis_outage.failed("flush failed, %s unavailable (%s); kept for the "
                                         "next flush" % (self.store.describe(), e))
            return
        try:
            await self._flush_on(conn, changed)
        finally:
            conn.disconnect()

    async def _flush_on(self, conn, changed):
        try:
            # watched, the offset read makes the transaction below fail should another
            # client change it meanwhile
            watched = await conn.watch("k:offset")
            stored = await watched.get("k:offset")
        except Exception as e:
            if changed:
                self.redis_outage.failed("flush failed, k:offset not read (%s); kept for the "
                                         "next flush" % (e,))
            return
        self._check_stored(stored)
        if not (changed or self.redis_lost):
            self.redis_outage.succeeded()
            return
        whole = self.redis_lost
        taken = []
        sent = False
        try:
            t = await watched.multi()
            commands, offset = self._take(whole, taken)
            handled = self.handled
            await _queue(t, commands)
            sent = True
            await t.commit()
        except Exception as e:
            for market, dirty, records in taken:
                # kept for the next flush, older than what came meanwhile (the newest of
                # the deals only: the lists keep no more)
                market.dirty |= dirty
                market.unsure = records[-DEALS_MAX:]
            if isinstance(e, WatchError):
                self.log.critical("marketprice: flush refused, k:offset changed since it was "
                                  "read (another writer?); kept for the next flush")
                return
            if sent:
                # EXEC went out: applied or not, the offset in Redis tells at the next flush
                self.unsure = offset
            self.redis_outage.failed("flush failed (%s); kept for the next flush" % (e,))
            return
        self.redis_outage.succeeded()
        self.flushed_offset, self.flushed_handled = offset, handled
        self.redis_lost = False
        self.last_flush = self.clock_time()
        if whole:
            self.log.info("marketprice: all that is held written to Redis again, up to "
                          "offset {offset}", offset=offset)

    def _check_stored(self, stored):
        """What Redis holds, told by the offset it has (`stored`, text or None): the state
        of the last flush known written, that of the flush whose answer was lost, or
        neither: Redis lost data (it restarted empty, or from an older snapshot) and all
        that is held is to be written again."""
        if self.unsure is not None and stored == str(self.unsure):
            # the unsure flush was applied: its deals are in Redis's lists already
            self.flushed_offset, self.unsure = self.unsure, None
            self.redis_lost = False
            for market in self.markets.values():
                market.unsure = []
            return
        # a flush whose answer was lost was not applied: its deals go with this one
        self.unsure = None
        if self.redis_lost or stored == (None if self.flushed_offset is None
                                         else str(self.flushed_offset)):
            return
        self.log.warn("marketprice: Redis lost data: k:offset is {stored} where {flushed} was "
                      "written last (Redis restarted empty or from an older snapshot); all "
                      "that is held is written again", stored=_shown(stored),
                      flushed=_shown(self.flushed_offset))
        self.redis_lost = True

    def _take(self, whole, taken):
        """The commands writing what changed since the last flush known written, or
        (`whole`) all that is held, then the offset; what each market gives up is added to
        `taken`.  Returns the commands and the offset.

        What is taken and the offset are read together, no deal applied in between: Redis
        then holds the state of exactly that offset.  All that is held is copied as values,
        quickly, and made into commands as they are sent."""
        commands = []
        held = []
        for market in self.markets.values():
            # what changes from here on is marked again, for the next flush: a bucket a deal
            # changes while this one is written is written again then, with its new value
            dirty, market.dirty = market.dirty, set()
            records, market.to_flush = market.unsure + market.to_flush, []
            market.unsure = []
            taken.append((market, dirty, records))
            if whole:
                held.append(_held(market))
            else:
                commands += _market_changes(market, dirty, records)
        offset = self.offset
        if whole:
            commands = itertools.chain.from_iterable(_whole_market(*h) for h in held)
        if self.last_deal is not None:
            self.offset_digest, self.last_deal = record_digest(self.last_deal), None
        if offset is None:
            last = [("delete", ["k:offset", "k:offset_digest"])]
        elif self.offset_digest is None:
            last = [("set", "k:offset", offset), ("delete", "k:offset_digest")]
        else:
            last = [("set", "k:offset", offset), ("set", "k:offset_digest", self.offset_digest)]
        return itertools.chain(commands, last), offset

    # -- retention ---------------------------------------------------------------------

    def expire(self):
        """Retention, hourly: the buckets past it leave memory, then Redis.

        The original reads every field of the Redis hashes once a day to find the old ones;
        a week of second buckets is 604,800 fields a market, which the client parses in
        seconds with the reactor held.  The fields dropped here (and those found too old
        when loading) are deleted by name instead; what cannot be deleted now is tried again
        the next hour."""
        now = int(self.clock_time())
        for market in self.markets.values():
            for g, times in market.expire(now, self.limits).items():
                if times:
                    self.redis_drops.setdefault("k:%s:%s" % (market.name, g), []).extend(
                        str(t) for t in times)
        if self.redis_drops:
            return defer.Deferred.fromCoroutine(self._drop_from_redis())
        return defer.succeed(None)

    async def _drop_from_redis(self):
        drops, self.redis_drops = self.redis_drops, {}
        try:
            conn = await self.store.connect()
            try:
                for key in list(drops):
                    fields = drops[key]
                    while fields:
                        await conn.hdel(key, fields[:REDIS_DROP_CHUNK])
                        del fields[:REDIS_DROP_CHUNK]
                    del drops[key]
            finally:
                conn.disconnect()
        finally:
            for key, fields in drops.items():       # what is left: the next hour
                self.redis_drops.setdefault(key, []).extend(fields)

    # -- RPC ---------------------------------------------------------------------------

    def _market(self, value):
        market = self.markets.get(value) if type(value) is str else None
        if market is None:
            raise rpc.INVALID_ARGUMENT()
        return market

    def _cached(self, market, request, compute):
        now = self.clock_time()
        entries = self.cache.setdefault(market.name, {})
        key = (request.command, request.packet.body)
        hit = entries.get(key)
        if hit is not None and now - hit[0] < self.cfg["cache_timeout"]:
            return hit[1]
        result = RawJSON(dumps(compute()))
        entries[key] = (now, result)
        return result

    def rpc_status(self, params, request):
        if len(params) != 2:
            raise rpc.INVALID_ARGUMENT()
        market = self._market(params[0])
        period = rpc.signed32(integer(params[1]))   # read into a C int, as the original
        if not 1 <= period <= self.limits[0]:
            raise rpc.INVALID_ARGUMENT()
        return self._cached(market, request,
                            lambda: market.status(period, int(self.clock_time())))

    def rpc_kline(self, params, request):
        if len(params) != 4:
            raise rpc.INVALID_ARGUMENT()
        market = self._market(params[0])
        now = int(self.clock_time())
        start, end, interval = integer(params[1]), min(integer(params[2]), now), \
            rpc.signed32(integer(params[3]))
        if start <= 0 or end <= 0 or start > end:
            raise rpc.INVALID_ARGUMENT()
        if not interval_ok(interval):
            raise rpc.INVALID_ARGUMENT()
        return self._cached(market, request,
                            lambda: market.kline(start, end, interval, now, self.limits))

    def rpc_deals(self, params, request):
        if len(params) != 3:
            raise rpc.INVALID_ARGUMENT()
        market = self._market(params[0])
        limit = rpc.signed32(integer(params[1]))
        if not 1 <= limit <= DEALS_LIMIT or type(params[2]) is not int:
            raise rpc.INVALID_ARGUMENT()
        # unsigned, as the original reads it: -1 is above every id
        return market.recent_deals(limit, params[2] & 0xFFFFFFFFFFFFFFFF)

    def rpc_last(self, params, request):
        if len(params) != 1:
            raise rpc.INVALID_ARGUMENT()
        return self._market(params[0]).last_price()

    def rpc_today(self, params, request):
        if len(params) != 1:
            raise rpc.INVALID_ARGUMENT()
        market = self._market(params[0])
        return self._cached(market, request,
                            lambda: market.status_today(int(self.clock_time())))


def _market_changes(market, dirty, records):
    """The commands writing what changed in `market`: the buckets `dirty` names, the deal
    `records` (oldest first) and the last price."""
    for g, t in sorted(dirty):
        bucket = market.buckets[g].get(t)
        if bucket is not None:
            yield "hset", "k:%s:%s" % (market.name, g), t, bucket.to_json()
    if dirty or records:
        yield "set", "k:%s:last" % market.name, market.last_price()
    if records:
        yield "lpush", "k:%s:deals" % market.name, [market.record_json(r) for r in records]
        yield "ltrim", "k:%s:deals" % market.name, 0, DEALS_MAX - 1


def _held(market):
    """All that is held of `market`, copied: (name, {granularity: [(time, k-line values)]},
    deal records newest first, last price or None)."""
    return (market.name,
            {g: [(t, bucket.values()) for t, bucket in market.buckets[g].items()]
             for g in GRANULARITIES},
            list(market.deals), market.last_price() if market.priced else None)


def _whole_market(name, buckets, records, last):
    """The commands replacing what Redis has of a market by what `_held` copied: its
    hashes and list in parts of REDIS_WRITE_CHUNK, so that a week of second buckets
    (604,800 of them) makes no giant command."""
    keys = ["k:%s:%s" % (name, g) for g in GRANULARITIES]
    yield "delete", keys + ["k:%s:deals" % name, "k:%s:last" % name]
    for g, key in zip(GRANULARITIES, keys):
        made = buckets[g]
        for i in range(0, len(made), REDIS_WRITE_CHUNK):
            yield "hmset", key, {t: kline_json(values)
                                 for t, values in made[i:i + REDIS_WRITE_CHUNK]}
    for i in range(0, len(records), REDIS_WRITE_CHUNK):
        yield "rpush", "k:%s:deals" % name, [Market.record_json(r)
                                            for r in records[i:i + REDIS_WRITE_CHUNK]]
    if last is not None:
        yield "set", "k:%s:last" % name, last


async def _queue(t, commands):
    """Send `commands` in transaction `t`, REDIS_QUEUE_PART at a time, each part once
    Redis has taken the one before: a long transaction (all that is held, written again)
    lets the daemon serve in between, and each command's answer is timed from when it is
    sent, not from when the daemon could read it."""
    part = []
    for name, *args in commands:
        part.append(getattr(t, name)(*args))
        if len(part) == REDIS_QUEUE_PART:
            await defer.gatherResults(part, consumeErrors=True)
            part = []
    await defer.gatherResults(part, consumeErrors=True)


def _shown(offset):
    """An offset for the log: "none" where none is stored."""
    return "none" if offset is None else offset


async def _read_hash(conn, key):
    """A whole hash, read by HSCAN in parts: a week of second k-lines is 604,800 fields,
    whose single HGETALL reply could outlast the client's timeout, the reactor held."""
    values = {}
    cursor = 0
    while True:
        cursor, flat = await conn.hscan(key, cursor, count=HASH_SCAN_COUNT)
        values.update(zip(flat[::2], flat[1::2]))
        if int(cursor) == 0:
            return values
