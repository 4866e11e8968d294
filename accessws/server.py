# -*- test-case-name: accessws.test.test_server -*-
"""The websocket gateway: queries, subscriptions and pushes (the original's accessws).

Queries are forwarded to matchengine, marketprice or readhistory over binary RPC and the
backend's reply is relayed verbatim; public ones are cached for `cache_timeout` seconds.
Market-data subscriptions are grouped by key (market, plus interval or limit): a poller per
family asks the backend for every key each `<family>_interval` seconds and pushes what
changed to the key's sessions.  Order and asset pushes follow the `orders` and `balances`
Kafka topics, for authenticated users only (`server.auth` through `auth_url`, `server.sign`
through `sign_url`).

Stopping ends intake first: the ports close, polling and the Kafka consumers stop, and no
further request is run.  The requests under way then end as they would have (the backend's
answer, or error 5 when `backend_timeout` passes) and their answers are sent; only then are
the backend connections closed: closing them first would answer error 5 to calls the
backend applies.  Each client connection is then closed with a close frame (1001, going
away); one that has not ended the close `backend_timeout` seconds later is dropped.
"""

import json
import time
import urllib.parse
from decimal import Decimal, InvalidOperation

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from accessws.depth import diff
from network.address import buffer_sizes, set_no_delay
from network.timer import within
from utils import rpc
from utils.daemon import give_up, mark_ready
from utils.decimals import to_display
from utils.jsonfmt import dumps
from utils.outage import ALERT_AFTER, Outage, on_log
from utils.rpc_client import (ConnectionLost, NotConnected, RequestTooLarge, RPCClient,
                              RPCTimeout)
from utils.websocket import NO_REPLY, WSServerFactory, with_request

__all__ = ["AccessWS"]

FAMILIES = ("kline", "depth", "price", "state", "today", "deals")
MARKET_MAX = 16
DEALS_KEPT = 100
MAX_USER_ID = 2 ** 32 - 1      # user ids are 32-bit, as everywhere in the exchange
FULL_DEPTH_EVERY = 60.0

ERR_REQUIRE_AUTH = rpc.RPCError(6, "require authentication")


def _int(value):
    return value if type(value) is int else 0


def _market(value):
    if type(value) is not str or len(value.encode()) >= MARKET_MAX:
        raise rpc.INVALID_ARGUMENT()
    return value


def _sorted_text(value):
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def tls_options(cert_path, key_path):
    """The server's TLS context from a PEM certificate and key."""
    from twisted.internet import ssl
    with open(cert_path, "rb") as f:
        cert = f.read()
    with open(key_path, "rb") as f:
        key = f.read()
    return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()


def check_tls(path, cfg):
    """ConfigError naming the key when the `tls` block's certificate or key cannot be read
    or used (the daemon would fail at each start)."""
    from utils.config import ConfigError
    tls = cfg.get("tls")
    if tls is None:
        return
    for key in ("cert", "key"):
        try:
            open(tls[key], "rb").close()
        except OSError as e:
            raise ConfigError("%s: tls.%s: cannot read %s: %s"
                              % (path, key, tls[key], e.strerror or e)) from None
    try:
        tls_options(tls["cert"], tls["key"])
    except Exception as e:
        raise ConfigError("%s: tls: the certificate %s and key %s cannot be used: %s"
                          % (path, tls["cert"], tls["key"], e)) from None


def tls_factory(cfg, factory):
    """`factory` wrapped in TLS when the config has a `tls` block, else None."""
    from twisted.protocols.tls import TLSMemoryBIOFactory
    tls = cfg.get("tls")
    if tls is None:
        return None
    return TLSMemoryBIOFactory(tls_options(tls["cert"], tls["key"]), False, factory)


def listen_tls(reactor, address, factory, cert_path, key_path):
    """Listen for TLS on a tcp address with a PEM certificate and key."""
    from network.address import parse_address
    addr = parse_address(address)
    return reactor.listenSSL(addr.port, factory, tls_options(cert_path, key_path),
                             interface=addr.host)


class AccessWS(service.Service):
    log = Logger()

    def __init__(self, cfg, reactor=None, http_get=None, consumer_factory=None, listen=True,
                 clock_time=time.time, alerts=True):
        """`http_get(url, headers, timeout)` fires with the body of a GET (auth and sign);
        `consumer_factory(section, on_message)` makes a Kafka consumer reading from the
        end of the partition.  `alerts`: whether a backend's outage raises an alert here
        (false in a worker other than worker 0: the gateway raises one, not one a worker;
        a failed login's alert comes from the worker that served it)."""
        if reactor is None:
            from twisted.internet import reactor
        self.cfg = cfg
        self.reactor = reactor
        self.http_get = http_get
        self.consumer_factory = consumer_factory
        self.listen_enabled = listen
        self.clock_time = clock_time
        self.timeout = cfg["backend_timeout"]
        # the auth service failing: every login fails, so the first failure is an alert,
        # as in the original; the next are told as one outage (`utils.outage`), not an
        # alert a login
        self.auth_outage = Outage("accessws", on_log(self.log), alert_after=0,
                                  clock=self.reactor.seconds)
        # a backend away or slow to answer the polls and queries of pushes: told as one
        # outage of that backend, not a line for each poll; its two connections and the
        # calls it does not answer share it, so that it is one alert however it fails
        self.backend_outages = {name: Outage("accessws: " + name, on_log(self.log),
                                             alert_after=ALERT_AFTER if alerts else None,
                                             clock=self.reactor.seconds)
                                for name in ("matchengine", "marketprice", "readhistory")}
        self.cache_timeout = cfg["cache_timeout"]
        self.depth_limits = set(cfg["depth_limit"])
        self.depth_merges = [Decimal(m) for m in cfg["depth_merge"]]
        self.clients = {}
        for name in ("matchengine", "marketprice", "readhistory"):
            c = cfg[name]
            for role in ("query", "poll"):
                self.clients[name, role] = RPCClient.for_backend(
                    reactor, c, "%s %s" % (c["name"], role), self.backend_outages[name])
        self.cache = {}
        self.subs = {family: {} for family in FAMILIES}      # key -> set of sessions
        self.stored = {family: {} for family in FAMILIES}    # key -> last value seen
        self.in_flight = set()                               # (family, key) polled now
        self.depth_full_at = {}
        self.deals_last_id = {}
        self.users = {}                                      # user id -> set of sessions
        self.consumers = []
        self.loops = []
        self.ports = []
        handlers = {
            "server.ping": lambda s, p: "pong",
            "server.time": lambda s, p: int(self.clock_time()),
            "server.auth": self.server_auth, "server.sign": self.server_sign,
            "kline.query": self._public("marketprice", 302),
            "depth.query": self._public("matchengine", 206),
            "price.query": self._public("marketprice", 304),
            "state.query": self._public("marketprice", 301),
            "today.query": self._public("marketprice", 305),
            "deals.query": self._public("marketprice", 303),
            "kline.subscribe": self.kline_subscribe, "depth.subscribe": self.depth_subscribe,
            "price.subscribe": self._markets_subscribe("price"),
            "state.subscribe": self._markets_subscribe("state"),
            "today.subscribe": self._markets_subscribe("today"),
            "deals.subscribe": self._markets_subscribe("deals"),
            "order.query": self.order_query, "order.history": self.order_history,
            "order.subscribe": self.order_subscribe,
            "order.unsubscribe": self.order_unsubscribe,
            "asset.query": self.asset_query, "asset.history": self.asset_history,
            "asset.subscribe": self.asset_subscribe,
            "asset.unsubscribe": self.asset_unsubscribe,
        }
        for family in FAMILIES:
            handlers[family + ".unsubscribe"] = self._unsubscribe(family)
        svr = cfg["svr"]
        self.factory = WSServerFactory(
            handlers, svr["max_pkg_size"], keep_alive=svr["keep_alive"],
            buf_limit=svr["buf_limit"], subprotocol=svr["protocol"], origin=svr["origin"],
            on_open=self._opened, on_close=self._closed, name="accessws", reactor=reactor,
            push_window=self.cfg["push_window"])

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        for client in self.clients.values():
            client.start()
        for family in FAMILIES:
            loop = LoopingCall(self._poll, family)
            loop.clock = self.reactor
            loop.start(self.cfg[family + "_interval"], now=False)
            self.loops.append(loop)
        self.cache_loop = LoopingCall(self.cache.clear)
        self.cache_loop.clock = self.reactor
        self.cache_loop.start(60.0, now=False)
        if self.consumer_factory is not None:
            for section, handler in (("orders", self.on_order), ("balances", self.on_balance)):
                consumer = self.consumer_factory(self.cfg[section], handler)
                consumer.startService()
                self.consumers.append(consumer)
        if self.listen_enabled:
            return defer.Deferred.fromCoroutine(self._listen())

    async def _listen(self):
        from network.address import listen, listen_monitor, set_buffers
        try:
            tls = self.cfg.get("tls")
            buffers = buffer_sizes(self.cfg["svr"])
            for address in self.cfg["svr"]["bind"]:
                if tls is not None and address.lower().startswith("tcp@"):
                    port = listen_tls(self.reactor, address, self.factory, tls["cert"],
                                      tls["key"])
                    set_buffers(port.socket, **buffers)
                    set_no_delay(port.socket)
                    self.ports.append(port)
                else:
                    self.ports.append(await listen(self.reactor, address, self.factory,
                                                   **buffers))
            self.ports += await listen_monitor(self.reactor, self.cfg["monitor"])
        except Exception:
            give_up(self.reactor, self.log, "accessws could not listen")
            return
        self.log.info("accessws ready on {bind}", bind=", ".join(self.cfg["svr"]["bind"]))
        mark_ready()

    def stopService(self):
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        """Stop intake and pushes, let the requests under way be answered, then close the
        backend connections, and the clients' once those answers are written."""
        for loop in self.loops + [getattr(self, "cache_loop", None)]:
            if loop is not None and loop.running:
                loop.stop()
        consumers = defer.gatherResults([defer.maybeDeferred(c.stopService)
                                         for c in self.consumers])
        ports, self.ports = self.ports, []
        await defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        closed = self.factory.finish()
        under_way = self.factory.under_way
        if under_way.count:
            self.log.info("accessws stopping: {count} requests under way",
                          count=under_way.count)
            await within(self.reactor, under_way.ended(), self.timeout)
        for client in self.clients.values():
            client.stop()
        if not await within(self.reactor, closed, self.timeout):
            self.log.warn("accessws stopping: {count} clients did not end the close; "
                          "dropped", count=self.factory.abort())
        await consumers

    # -- sessions ----------------------------------------------------------------------

    def _opened(self, session):
        session.data.update(auth=False, user_id=0, source="", orders=set(), assets=set(),
                            keys={family: set() for family in FAMILIES})

    def _closed(self, session):
        for family in FAMILIES:
            self._leave(family, session)
        self._leave_user(session)

    def _leave(self, family, session):
        keys = session.data["keys"][family]
        subs = self.subs[family]
        for key in keys:
            sessions = subs.get(key)
            if sessions is not None:
                sessions.discard(session)
        keys.clear()

    def _join(self, family, session, key):
        self.subs[family].setdefault(key, set()).add(session)
        session.data["keys"][family].add(key)

    def _leave_user(self, session):
        user = session.data.get("user_id")
        sessions = self.users.get(user)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.users[user]
        session.data["orders"] = set()
        session.data["assets"] = set()

    # -- forwarding --------------------------------------------------------------------

    def _backend(self, name, role="query"):
        return self.clients[name, role]

    def _forward(self, request, backend, command, params, cache_key=None):
        client = self._backend(backend)
        if not client.connected:
            raise rpc.INTERNAL_ERROR()
        d = client.call_raw(command, dumps(params).encode(), self.timeout, request.id)

        def relay(body):
            request.reply_text(body)
            if cache_key is not None:
                try:
                    reply = json.loads(body)
                except ValueError:
                    return NO_REPLY
                if isinstance(reply, dict) and reply.get("result") is not None:
                    self.cache[cache_key] = (self.clock_time(), dumps(reply["result"]))
            return NO_REPLY

        def failed(failure):
            if failure.check(RequestTooLarge):
                raise rpc.INVALID_ARGUMENT()
            if failure.check(RPCTimeout, ConnectionLost):
                raise rpc.SERVICE_TIMEOUT()
            if failure.check(NotConnected):
                raise rpc.INTERNAL_ERROR()
            return failure
        return d.addCallbacks(relay, failed)

    def _public(self, backend, command):
        @with_request
        def query(session, params, request):
            if not self._backend(backend).connected:
                raise rpc.INTERNAL_ERROR()
            key = "%d-%s" % (command, dumps(params))
            hit = self.cache.get(key)
            if hit is not None:
                if self.clock_time() - hit[0] < self.cache_timeout:
                    request.reply_text('{"error": null, "result": %s, "id": %d}'
                                       % (hit[1], request.id))
                    return NO_REPLY
                del self.cache[key]
            return self._forward(request, backend, command, params, key)
        return query

    def _user(self, session):
        if not session.data.get("auth"):
            raise ERR_REQUIRE_AUTH
        return session.data["user_id"]

    @with_request
    def order_query(self, session, params, request):
        if not self._backend("matchengine").connected:
            raise rpc.INTERNAL_ERROR()
        user = self._user(session)
        if len(params) != 3 or type(params[0]) is not str or type(params[1]) is not int \
                or type(params[2]) is not int:
            raise rpc.INVALID_ARGUMENT()
        # the original reads offset and limit into C ints: cut to 32 bits, as it sends them
        market, offset, limit = params
        return self._forward(request, "matchengine", 203,
                             [user, market, rpc.signed32(offset), rpc.signed32(limit)])

    @with_request
    def order_history(self, session, params, request):
        if not self._backend("readhistory").connected:
            raise rpc.INTERNAL_ERROR()
        user = self._user(session)
        if len(params) != 6:
            raise rpc.INVALID_ARGUMENT()
        return self._forward(request, "readhistory", 208, [user] + params)

    @with_request
    def asset_query(self, session, params, request):
        user = self._user(session)
        if not self._backend("matchengine").connected:
            raise rpc.INTERNAL_ERROR()
        return self._forward(request, "matchengine", 101, [user] + params)

    @with_request
    def asset_history(self, session, params, request):
        if not self._backend("readhistory").connected:
            raise rpc.INTERNAL_ERROR()
        user = self._user(session)
        if len(params) != 6:
            raise rpc.INVALID_ARGUMENT()
        return self._forward(request, "readhistory", 103, [user] + params)

    # -- authentication ----------------------------------------------------------------

    def server_auth(self, session, params):
        if len(params) != 2 or type(params[0]) is not str or type(params[1]) is not str \
                or len(params[1].encode()) >= 32:
            raise rpc.INVALID_ARGUMENT()
        session.data["source"] = params[1]
        return self._authenticate(session, self.cfg["auth_url"], params[0])

    def server_sign(self, session, params):
        if len(params) != 3 or type(params[0]) is not str or type(params[1]) is not str \
                or not _int(params[2]):
            raise rpc.INVALID_ARGUMENT()
        session.data["source"] = "api"
        # the tonce as the original's unsigned 64-bit integer
        url = "%s?access_id=%s&tonce=%d" % (self.cfg["sign_url"],
                                           urllib.parse.quote(params[0], safe=""),
                                           params[2] % (1 << 64))
        return self._authenticate(session, url, params[1])

    async def _authenticate(self, session, url, authorization):
        headers = {"Authorization": authorization, "Accept-Language": "en_US",
                   "Content-Type": "application/json"}
        d = self.http_get(url, headers, self.timeout)
        expired = []
        timer = self.reactor.callLater(self.timeout, lambda: (expired.append(True), d.cancel()))
        try:
            body = await d
        except Exception as e:
            if expired:
                self.auth_outage.failed("no answer from %s in %s s" % (url, self.timeout))
                raise rpc.SERVICE_TIMEOUT()
            self.auth_outage.failed("auth request to %s failed: %s" % (url, e))
            raise rpc.INTERNAL_ERROR()
        finally:
            if timer.active():
                timer.cancel()
        try:
            answer = json.loads(body)
            code = answer["code"]
        except (ValueError, TypeError, KeyError):
            self._invalid_answer(url, body)
        if type(code) is not int:
            # the original reads a code that is no integer as 0, a success
            self._invalid_answer(url, body)
        if code != 0:
            if isinstance(answer.get("message"), str):
                self.auth_outage.succeeded()
                raise rpc.RPCError(11, answer["message"])
            self._invalid_answer(url, body)
        data = answer.get("data")
        user = data.get("user_id") if isinstance(data, dict) else None
        if type(user) is not int or not 0 < user <= MAX_USER_ID:
            # the original cuts the id to 32 bits: -1 would log in user 4294967295
            self._invalid_answer(url, body)
        self.auth_outage.succeeded()
        if session.data.get("auth") and session.data["user_id"] != user:
            self._leave_user(session)
        session.data["auth"] = True
        session.data["user_id"] = user
        return {"status": "success"}

    def _invalid_answer(self, url, body):
        self.auth_outage.failed("invalid answer from %s: %r" % (url, body[:200]))
        raise rpc.INTERNAL_ERROR()

    # -- subscriptions -----------------------------------------------------------------

    def _unsubscribe(self, family):
        def unsubscribe(session, params):
            self._leave(family, session)
            return {"status": "success"}
        return unsubscribe

    def kline_subscribe(self, session, params):
        if len(params) != 2:
            raise rpc.INVALID_ARGUMENT()
        market = _market(params[0])
        interval = rpc.signed32(_int(params[1]))     # read into a C int, as the original
        if interval <= 0:
            raise rpc.INVALID_ARGUMENT()
        self._leave("kline", session)
        self._join("kline", session, (market, interval))
        return {"status": "success"}

    # As in the original, a subscription's stored snapshot goes out right after the success
    # reply, in the same pass: a change polled later is then always a change to that
    # snapshot, and a deal polled meanwhile is not pushed twice.

    @with_request
    def depth_subscribe(self, session, params, request):
        if len(params) != 3:
            raise rpc.INVALID_ARGUMENT()
        market = _market(params[0])
        limit = rpc.signed32(_int(params[1]))
        interval = params[2]
        if limit <= 0 or type(interval) is not str or len(interval.encode()) >= MARKET_MAX:
            raise rpc.INVALID_ARGUMENT()
        # as in the original, a limit or merge the config does not offer is refused after
        # the previous subscription has ended
        self._leave("depth", session)
        try:
            value = Decimal(interval)
        except InvalidOperation:
            raise rpc.INVALID_ARGUMENT() from None
        if limit not in self.depth_limits or not value.is_finite() \
                or value not in self.depth_merges:
            raise rpc.INVALID_ARGUMENT()
        key = (market, limit, interval)
        self._join("depth", session, key)
        request.reply_result({"status": "success"})
        book = self.stored["depth"].get(key)
        if book is not None:
            self._push(session, "depth.update", [True, book, market])
        return NO_REPLY

    def _markets_subscribe(self, family):
        @with_request
        def subscribe(session, params, request):
            self._leave(family, session)
            markets = []
            for value in params:
                market = _market(value)
                self._join(family, session, market)
                markets.append(market)
            request.reply_result({"status": "success"})
            self._snapshot(family, session, markets)
            return NO_REPLY
        return subscribe

    def _snapshot(self, family, session, markets):
        for market in markets:
            stored = self.stored[family].get(market)
            if family == "price":
                if stored:
                    self._push(session, "price.update", [market, to_display(stored)])
            elif stored:
                self._push(session, family + ".update", [market, stored])

    def _push(self, session, method, params):
        if session.is_open:
            session.notify(method, params)

    def _push_all(self, family, key, method, params):
        sessions = self.subs[family].get(key)
        if sessions:
            self.factory.broadcast(method, params, sessions)

    def order_subscribe(self, session, params):
        """The markets given replace those subscribed; as in the original, a bad one is
        refused with those before it subscribed."""
        user = self._user(session)
        session.data["orders"] = markets = set()
        self.users.setdefault(user, set()).add(session)
        for value in params:
            markets.add(_market(value))
        return {"status": "success"}

    def order_unsubscribe(self, session, params):
        self._user(session)
        session.data["orders"] = set()
        return {"status": "success"}

    def asset_subscribe(self, session, params):
        """As `order_subscribe`, for assets."""
        user = self._user(session)
        session.data["assets"] = assets = set()
        self.users.setdefault(user, set()).add(session)
        for value in params:
            assets.add(_market(value))
        return {"status": "success"}

    def asset_unsubscribe(self, session, params):
        self._user(session)
        session.data["assets"] = set()
        return {"status": "success"}

    # -- polling -----------------------------------------------------------------------

    def _poll(self, family):
        subs = self.subs[family]
        for key in [k for k, sessions in subs.items() if not sessions]:
            del subs[key]
            self._forget(family, key)
        client = self._backend(self._poll_backend(family), "poll")
        if not client.connected:
            return
        now = int(self.clock_time())
        for key in list(subs):
            if (family, key) in self.in_flight:
                continue
            command, params = self._poll_request(family, key, now)
            self.in_flight.add((family, key))
            d = client.call(command, params, self.timeout)
            d.addCallback(self._polled, family, key)
            d.addErrback(self._poll_failed, family, key)

    def _poll_request(self, family, key, now):
        if family == "kline":
            market, interval = key
            return 302, [market, now - int(self.cfg["kline_interval"] + 1), now, interval]
        if family == "depth":
            return 206, list(key)
        if family == "price":
            return 304, [key]
        if family == "state":
            return 301, [key, 86400]
        if family == "today":
            return 305, [key]
        return 303, [key, DEALS_KEPT, self.deals_last_id.get(key, 0)]

    def _poll_failed(self, failure, family, key):
        self._poll_done(family, key)
        self.backend_outages[self._poll_backend(family)].failed(
            "polling %s %s failed: %s" % (family, key, failure.getErrorMessage()),
            (family, key))

    @staticmethod
    def _poll_backend(family):
        return "matchengine" if family == "depth" else "marketprice"

    def _poll_done(self, family, key):
        self.in_flight.discard((family, key))
        if not self.in_flight:
            # the last answer of a polling round: its pushes leave now, one send for each
            # connection, rather than when push_window closes
            self.factory.send_held()

    def _polled(self, reply, family, key):
        self.backend_outages[self._poll_backend(family)].succeeded((family, key))
        try:
            self._handle_poll(reply, family, key)
        finally:
            self._poll_done(family, key)

    def _handle_poll(self, reply, family, key):
        if key not in self.subs[family]:
            return
        if reply.get("error") is not None:
            # an error (an unknown market, say) ends the key and its subscriptions
            for session in self.subs[family].pop(key):
                session.data["keys"][family].discard(key)
            self._forget(family, key)
            return
        getattr(self, "_changed_" + family)(key, reply.get("result"))

    def _forget(self, family, key):
        """Drop what polling kept of a key no longer subscribed: subscribed again, it starts
        afresh (deals: the latest DEALS_KEPT again, as the original's new entry starts at
        id 0)."""
        self.stored[family].pop(key, None)
        if family == "deals":
            self.deals_last_id.pop(key, None)
        elif family == "depth":
            self.depth_full_at.pop(key, None)

    def _changed_kline(self, key, result):
        if not result:
            return
        last = dumps(result[-1])
        if self.stored["kline"].get(key) != last:
            self.stored["kline"][key] = last
            self._push_all("kline", key, "kline.update", result)

    def _changed_depth(self, key, book):
        market, limit, _ = key
        old = self.stored["depth"].get(key)
        now = self.clock_time()
        if old is None:
            self.stored["depth"][key] = book
            self.depth_full_at[key] = now
            self._push_all("depth", key, "depth.update", [True, book, market])
            return
        changes = diff(old, book, limit)
        if not changes:
            return
        self.stored["depth"][key] = book
        if now - self.depth_full_at.get(key, 0) >= FULL_DEPTH_EVERY:
            self.depth_full_at[key] = now
            self._push_all("depth", key, "depth.update", [True, book, market])
        else:
            self._push_all("depth", key, "depth.update", [False, changes, market])

    def _changed_price(self, market, result):
        try:
            price = Decimal(result)
        except (InvalidOperation, TypeError):
            return
        if price != self.stored["price"].get(market, 0):
            self.stored["price"][market] = price
            self._push_all("price", market, "price.update", [market, result])

    def _changed_state(self, market, result):
        self._changed_object("state", market, result)

    def _changed_today(self, market, result):
        self._changed_object("today", market, result)

    def _changed_object(self, family, market, result):
        text = _sorted_text(result)
        stored = self.stored[family].get(market)
        if stored is None or _sorted_text(stored) != text:
            self.stored[family][market] = result
            self._push_all(family, market, family + ".update", [market, result])

    def _changed_deals(self, market, result):
        if not result:
            return
        self.deals_last_id[market] = result[0]["id"]
        kept = self.stored["deals"].get(market) or []
        self.stored["deals"][market] = (result + kept)[:DEALS_KEPT]
        self._push_all("deals", market, "deals.update", [market, result])

    # -- Kafka: orders and balances ----------------------------------------------------

    def on_order(self, offset, value):
        try:
            message = json.loads(value)
            event, order = message["event"], message["order"]
            user, stock, money = order["user"], message["stock"], message["money"]
        except (ValueError, TypeError, KeyError):
            self.log.error("accessws: bad orders message at {offset}", offset=offset)
            return
        # an event that is no integer is 0 to the original, which drops the message
        if type(event) is not int or not event or type(user) is not int or not user \
                or type(stock) is not str or type(money) is not str:
            return
        self._refresh_asset(user, stock)
        self._refresh_asset(user, money)
        for session in list(self.users.get(user, ())):
            if order.get("market") in session.data["orders"]:
                self._push(session, "order.update", [event, order])

    def on_balance(self, offset, value):
        try:
            message = json.loads(value)
            user, asset = message[1], message[2]
        except (ValueError, TypeError, IndexError, KeyError):
            self.log.error("accessws: bad balances message at {offset}", offset=offset)
            return
        if type(user) is int and type(asset) is str:
            self._refresh_asset(user, asset)

    def _refresh_asset(self, user, asset):
        sessions = [s for s in self.users.get(user, ()) if asset in s.data["assets"]]
        if not sessions:
            return
        client = self._backend("matchengine", "poll")
        if not client.connected:
            return
        d = client.call(101, [user, asset], self.timeout)
        outage = self.backend_outages["matchengine"]

        def answered(reply):
            outage.succeeded("asset.query")
            result = reply.get("result")
            if result is None:
                return
            for session in list(self.users.get(user, ())):
                if asset in session.data["assets"]:
                    self._push(session, "asset.update", [result])
        d.addCallbacks(answered, lambda f: outage.failed(
            "asset query failed: %s" % f.getErrorMessage(), "asset.query"))

