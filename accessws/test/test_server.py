# -*- test-case-name: accessws.test.test_server -*-
"""accessws in process, against loopback RPC backends and a real auth endpoint: auth
outcomes, refusals, malformed frames, and a thousand subscribers receiving pushes; its stop
in memory too."""

import json
from decimal import Decimal
import time

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from accessws import config
from accessws.server import AccessWS
from utils import testing
from utils.rpc_client import ConnectionLost
from utils.rpc_server import RPCServerFactory, listen_rpc
from utils.test.test_websocket import connect, request
from utils.testing import until


# answers refused although the original would log a user in with them
ANSWERS = {"negative": {"code": 0, "data": {"user_id": -1}},
           "wide": {"code": 0, "data": {"user_id": 2 ** 32 + 7}},
           "text-code": {"code": "0", "data": {"user_id": 7}},
           "true-code": {"code": True, "message": "expired", "data": {"user_id": 7}}}


class Auth(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.slow = []

    def render_GET(self, request):
        token = request.getHeader("Authorization")
        if request.args.get(b"to") == [b"good"]:
            token = "good"
        if token == "redirect":
            request.redirect(b"/auth?to=good")
            return b""
        if token == "slow":
            self.slow.append(request)
            return server.NOT_DONE_YET
        if token == "garbage":
            return b"<html>"
        if token == "good":
            return json.dumps({"code": 0, "message": None, "data": {"user_id": 7}}).encode()
        if token in ANSWERS:
            return json.dumps(ANSWERS[token]).encode()
        return json.dumps({"code": 3, "message": "invalid token", "data": None}).encode()


class Backend:
    """A loopback RPC server answering the commands accessws polls, from fixed data."""

    def __init__(self):
        self.book = {"asks": [["8000", "1"]], "bids": []}
        self.deals = []
        self.today = lambda params, request: {}

    def handlers(self):
        return {206: lambda params, request: self.book,
                303: lambda params, request: [d for d in self.deals if d["id"] > params[2]],
                304: lambda params, request: "0", 301: lambda params, request: {},
                305: lambda params, request: self.today(params, request),
                302: lambda params, request: [],
                203: lambda params, request: {"records": params},
                101: lambda params, request: {"BTC": {"available": "1", "freeze": "0"}}}


def gateway_config(backend="tcp@127.0.0.1:1", bind="tcp@127.0.0.1:1",
                   auth_url="http://127.0.0.1:1/auth", max_request_size=10240, **extra):
    """A configuration of accessws with every backend at `backend`."""
    section = {"addr": [backend], "max_pkg_size": 2000000,
               "max_request_size": max_request_size}
    return config.load_data({
        "log": {"path": "log/accessws", "flag": "fatal"},
        "svr": {"bind": [bind], "max_pkg_size": 10240},
        "monitor": {"bind": "tcp@127.0.0.1:%d" % testing.free_port(), "max_pkg_size": 1024},
        "matchengine": dict(section, name="matchengine"),
        "marketprice": dict(section, name="marketprice"),
        "readhistory": dict(section, name="readhistory"),
        "orders": {"brokers": "127.0.0.1:1", "topic": "orders"},
        "balances": {"brokers": "127.0.0.1:1", "topic": "balances"},
        "auth_url": auth_url, "sign_url": auth_url, "backend_timeout": 0.5,
        "depth_interval": 0.1, "deals_interval": 0.1,
        "depth_limit": [10], "depth_merge": ["0"], **extra})


def self_signed(directory):
    """A certificate and key for 127.0.0.1, written as PEM files."""
    import os

    from OpenSSL import crypto
    key = crypto.PKey()
    key.generate_key(crypto.TYPE_RSA, 2048)
    cert = crypto.X509()
    cert.get_subject().CN = "127.0.0.1"
    cert.set_serial_number(1)
    cert.gmtime_adj_notBefore(0)
    cert.gmtime_adj_notAfter(3600)
    cert.set_issuer(cert.get_subject())
    cert.set_pubkey(key)
    cert.sign(key, "sha256")
    os.makedirs(directory, exist_ok=True)
    paths = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(paths[0], "wb") as f:
        f.write(crypto.dump_certificate(crypto.FILETYPE_PEM, cert))
    with open(paths[1], "wb") as f:
        f.write(crypto.dump_privatekey(crypto.FILETYPE_PEM, key))
    return paths


class ServiceTests(TestCase):

    timeout = 120

    async def start(self, max_request_size=10240, **extra):
        self.backend = Backend()
        port = testing.free_port()
        ports = await listen_rpc(reactor, "tcp@127.0.0.1:%d" % port,
                                 RPCServerFactory(self.backend.handlers(), 1 << 20,
                                                  heartbeat_check=False))
        for p in ports:
            self.addCleanup(p.stopListening)
        auth = Auth()
        web = reactor.listenTCP(0, server.Site(auth), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        self.addCleanup(lambda: [r.channel.transport.abortConnection() for r in auth.slow
                                 if r.channel is not None])
        self.ws_port = testing.free_port()
        cfg = gateway_config("tcp@127.0.0.1:%d" % port, "tcp@127.0.0.1:%d" % self.ws_port,
                             "http://127.0.0.1:%d/auth" % web.getHost().port,
                             max_request_size, **extra)
        from accessws.tap import http_get
        self.service = AccessWS(cfg, reactor=reactor, http_get=http_get(reactor))
        await self.service.startService()
        self.addCleanup(self.service.stopService)
        await until(lambda: all(c.connected for c in self.service.clients.values()),
                    what="backends connected")

    def session(self, calls):
        """Run `calls` [(method, params)] on one blocking client; the replies (or None)."""
        def run():
            client = testing.WSClient("127.0.0.1", self.ws_port)
            out = []
            try:
                for n, (method, params) in enumerate(calls, 1):
                    client.send(json.dumps({"id": n, "method": method, "params": params}))
                    try:
                        out.append(json.loads(client.recv(1.5)))
                    except (TimeoutError, ConnectionError) as e:
                        out.append(type(e).__name__)
            finally:
                client.close()
            return out
        return threads.deferToThread(run)

    async def auth_scenario(self):
        await self.start()
        with capturedLogs() as events:
            replies = await self.auth_session()
        # the auth service's first failure is critical, so that it alerts, as in the
        # original; the next ones, until a login goes through, are the same outage
        told = [(e["log_level"], formatEvent(e)) for e in events
                if formatEvent(e).startswith(("accessws: invalid answer", "accessws: no answer",
                                              "accessws: auth request", "accessws: working",
                                              "accessws: failing"))]
        self.assertEqual(sum(e["log_level"] == LogLevel.critical for e in events), 1)
        self.assertEqual([level for level, _ in told], [LogLevel.critical, LogLevel.warn], told)
        self.assertTrue(told[0][1].startswith("accessws: invalid answer from http://"), told)
        self.assertTrue(told[1][1].startswith("accessws: working again after "), told)
        self.check_auth_replies(replies)

    def auth_session(self):
        return self.session([
            ("order.query", ["BTCBCH", 0, 10]), ("asset.query", []),
            ("order.subscribe", ["BTCBCH"]), ("server.auth", ["bad", "web"]),
            ("server.auth", ["garbage", "web"]), ("server.auth", ["redirect", "web"]),
            ("server.auth", ["negative", "web"]), ("server.auth", ["wide", "web"]),
            ("server.auth", ["text-code", "web"]), ("server.auth", ["true-code", "web"]),
            ("server.auth", ["slow", "web"]),
            ("server.auth", ["good", "x" * 40]), ("server.auth", ["good", "web"]),
            ("order.query", ["BTCBCH", 0, 10]), ("order.query", ["BTCBCH", "0", 10]),
            ("server.nope", []), ("server.ping", []),
            ("order.query", ["BTCBCH", 4294967298, -4294967295])])

    def check_auth_replies(self, replies):
        errors = [r["error"] if isinstance(r, dict) else r for r in replies]
        self.assertEqual(errors, [
            {"code": 6, "message": "require authentication"},
            {"code": 6, "message": "require authentication"},
            {"code": 6, "message": "require authentication"},
            {"code": 11, "message": "invalid token"},
            {"code": 2, "message": "internal error"},
            # a redirect is not followed (the original's curl does not follow one): its
            # empty body is no answer, and the token goes nowhere else
            {"code": 2, "message": "internal error"},
            # a user id past 32 bits or negative, a code that is not an integer: no login
            {"code": 2, "message": "internal error"}, {"code": 2, "message": "internal error"},
            {"code": 2, "message": "internal error"}, {"code": 2, "message": "internal error"},
            {"code": 5, "message": "service timeout"},
            {"code": 1, "message": "invalid argument"},
            None, None, {"code": 1, "message": "invalid argument"}, "TimeoutError", None, None])
        self.assertEqual(replies[13]["result"], {"records": [7, "BTCBCH", 0, 10]})
        # offset and limit cut to 32 bits, as the original's C ints send them
        self.assertEqual(replies[17]["result"], {"records": [7, "BTCBCH", 2, 1]})

    async def too_large_scenario(self):
        await self.start(max_request_size=200)
        replies = await self.session([
            ("server.auth", ["good", "web"]), ("asset.query", ["BTC"] * 40),
            ("asset.query", ["BTC"])])
        self.assertEqual(replies[1]["error"], {"code": 1, "message": "invalid argument"})
        self.assertEqual(replies[2]["result"], {"BTC": {"available": "1", "freeze": "0"}})
        self.assertTrue(all(c.connected for c in self.service.clients.values()))

    def test_request_too_large(self):
        """A request the backend would not take is refused alone: never sent, the backend
        connection every session shares stays up."""
        return defer.Deferred.fromCoroutine(self.too_large_scenario())

    def test_auth_and_refusals(self):
        """Unauthorised user methods are refused; auth failure, garbage, a redirect and
        timeout answer 11, 2, 2 and 5; an unknown method gets no reply; the session goes
        on."""
        return defer.Deferred.fromCoroutine(self.auth_scenario())

    async def malformed_scenario(self):
        await self.start()

        def run():
            results = []
            for frame in ("not json", "[1]", '{"id": "x", "method": "server.ping", '
                                              '"params": []}', "x" * 20000):
                client = testing.WSClient("127.0.0.1", self.ws_port)
                client.send(frame)
                try:
                    client.recv(2)
                    results.append("answered")
                except ConnectionError:
                    results.append("closed")
                except TimeoutError:
                    results.append("kept")
                client.close()
            return results
        self.assertEqual(await threads.deferToThread(run), ["closed"] * 4)

    def test_malformed_frames(self):
        """Bad JSON, a non-object, a bad id and an oversized frame close the connection."""
        return defer.Deferred.fromCoroutine(self.malformed_scenario())

    async def fanout_scenario(self):
        await self.start()
        received = {"depth": 0, "deals": 0}
        opened = []

        class Subscriber(WebSocketClientProtocol):
            def onOpen(self):
                opened.append(self)
                self.sendMessage(json.dumps({"id": 1, "method": "depth.subscribe",
                                             "params": ["BTCBCH", 10, "0"]}).encode())
                self.sendMessage(json.dumps({"id": 2, "method": "deals.subscribe",
                                             "params": ["BTCBCH"]}).encode())

            def onMessage(self, payload, is_binary):
                message = json.loads(payload)
                if message.get("method") == "depth.update":
                    received["depth"] += 1
                elif message.get("method") == "deals.update":
                    received["deals"] += 1

        factory = WebSocketClientFactory("ws://127.0.0.1:%d/" % self.ws_port)
        factory.protocol = Subscriber
        count = 1000
        clients = []
        for _ in range(count):
            clients.append(await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", self.ws_port), factory.buildProtocol(None)))
        self.addCleanup(lambda: [c.transport.abortConnection() for c in clients])
        await until(lambda: len(opened) == count, 60, "all connections open")
        await until(lambda: received["depth"] >= count, 30, "first depth pushes")
        started = time.monotonic()
        self.backend.book = {"asks": [["8000", "0.5"]], "bids": [["7990", "1"]]}
        self.backend.deals = [{"id": 1, "time": 1.5, "price": "8000", "amount": "0.5",
                               "type": "buy"}]
        await until(lambda: received["depth"] >= 2 * count and received["deals"] >= count, 30,
                    "pushes after the change")
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(len(self.service.factory.sessions), count)

    def test_thousand_subscribers(self):
        """1,000 connections subscribed to depth and deals all receive the pushes."""
        return defer.Deferred.fromCoroutine(self.fanout_scenario())

    async def round_scenario(self):
        await self.start(push_window=1.0)

        def run():
            client = testing.WSClient("127.0.0.1", self.ws_port)
            try:
                for n, family in ((1, "depth"), (2, "deals")):
                    params = ["BTCBCH", 10, "0"] if family == "depth" else ["BTCBCH"]
                    client.send(json.dumps({"id": n, "method": family + ".subscribe",
                                            "params": params}))
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:      # replies and snapshots
                    try:
                        client.recv(deadline - time.monotonic())
                    except TimeoutError:
                        break
                reactor.callFromThread(self.change)
                changed = time.monotonic()
                methods = {json.loads(client.recv(5))["method"] for _ in range(2)}
                return methods, time.monotonic() - changed
            finally:
                client.close()
        methods, delay = await threads.deferToThread(run)
        self.assertEqual(methods, {"depth.update", "deals.update"})
        self.assertLess(delay, 0.7)

    async def slow_backend_scenario(self):
        real = Backend.handlers

        def handlers(backend):
            table = real(backend)
            # no answer while the deals are None: each poll times out (0.5 s)
            table[303] = lambda params, request: defer.Deferred() if backend.deals is None \
                else [d for d in backend.deals if d["id"] > params[2]]
            return table
        self.patch(Backend, "handlers", handlers)
        await self.start()
        deals, self.backend.deals = self.backend.deals, None

        def run():
            client = testing.WSClient("127.0.0.1", self.ws_port)
            try:
                client.send(json.dumps({"id": 1, "method": "deals.subscribe",
                                        "params": ["BTCBCH"]}))
                json.loads(client.recv(2))
                time.sleep(2.5)
                threads.blockingCallFromThread(reactor, setattr, self.backend, "deals", deals)
                time.sleep(1.0)
            finally:
                client.close()
        with capturedLogs() as events:
            await threads.deferToThread(run)
        told = [(e["log_level"], formatEvent(e)) for e in events
                if formatEvent(e).startswith("accessws: marketprice: ")]
        # four polls or more timed out: one line, and the end of it
        self.assertEqual([level for level, _ in told], [LogLevel.error, LogLevel.warn], told)
        self.assertIn("polling deals BTCBCH failed", told[0][1])
        self.assertRegex(told[1][1], "working again after [0-9.]+ s, [4-9] failed attempts")

    def test_slow_backend_told_once(self):
        """Polls a backend does not answer in time are told as one outage of that backend
        (an error, then a warning when it answers again), not a line for each poll."""
        return defer.Deferred.fromCoroutine(self.slow_backend_scenario())

    def change(self):
        self.backend.book = {"asks": [["8000", "0.5"]], "bids": []}
        self.backend.deals = [{"id": 1, "time": 1.5, "price": "8000", "amount": "0.5",
                               "type": "buy"}]

    def test_round_pushes_leave_when_its_polls_are_answered(self):
        """Pushes of a polling round leave once its last poll is answered, not when
        push_window (a limit, here 1 s) runs out."""
        return defer.Deferred.fromCoroutine(self.round_scenario())


    async def deals_again_scenario(self):
        await self.start()
        self.change()       # one deal recorded
        service = self.service

        def gone():
            return "BTCBCH" not in service.subs["deals"]

        def run():
            pushes = []
            for n in range(2):
                client = testing.WSClient("127.0.0.1", self.ws_port)
                try:
                    client.send(json.dumps({"id": 1, "method": "deals.subscribe",
                                            "params": ["BTCBCH"]}))
                    deadline = time.monotonic() + 3
                    while time.monotonic() < deadline:
                        message = json.loads(client.recv(deadline - time.monotonic()))
                        if message.get("method") == "deals.update":
                            pushes.append(message["params"])
                            break
                finally:
                    client.close()
                # the session gone, a poll drops the market
                deadline = time.monotonic() + 5
                while not threads.blockingCallFromThread(reactor, gone):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the market kept")
                    time.sleep(0.05)
            return pushes
        pushes = await threads.deferToThread(run)
        deal = self.backend.deals[0]
        self.assertEqual(pushes, [["BTCBCH", [deal]]] * 2)

    def test_deals_subscribed_again(self):
        """Deals subscribed again after every session left start with the latest deals,
        as the first subscription did, where polls had gone on from the last id seen."""
        return defer.Deferred.fromCoroutine(self.deals_again_scenario())

    def each_with_state(self, calls, state):
        """In one session, each of `calls` (method, params) sent and answered in turn: a
        Deferred firing with (each answer's error code or None, `state()` after each)."""
        def run():
            client = testing.WSClient("127.0.0.1", self.ws_port)
            errors, states = [], []
            try:
                for n, (method, params) in enumerate(calls, 1):
                    client.send(json.dumps({"id": n, "method": method, "params": params}))
                    while True:
                        message = json.loads(client.recv(3))
                        if message.get("id") == n:
                            break
                    errors.append(message["error"] and message["error"]["code"])
                    states.append(threads.blockingCallFromThread(reactor, state))
            finally:
                client.close()
            return errors, states
        return threads.deferToThread(run)

    async def bad_element_scenario(self):
        await self.start(depth_limit=[10, 5])
        service = self.service

        def subscriptions():
            session, = service.factory.sessions
            return (set(session.data["orders"]), set(session.data["assets"]),
                    {key for key, sessions in service.subs["depth"].items()
                     if session in sessions})

        errors, states = await self.each_with_state([
            ("server.auth", ["good", "web"]),
            ("order.subscribe", ["BTCBCH"]), ("order.subscribe", ["ETHBCH", 5]),
            ("asset.subscribe", ["BTC"]), ("asset.subscribe", ["BCH", None]),
            ("depth.subscribe", ["BTCBCH", 10, "0"]), ("depth.subscribe", ["BTCBCH", 7, "0"]),
            ("depth.subscribe", ["BTCBCH", 5, "0"]), ("depth.subscribe", ["BTCBCH", -1, "0"])],
            subscriptions)
        self.assertEqual(errors, [None, None, 1, None, 1, None, 1, None, 1])
        depth10, depth5 = ("BTCBCH", 10, "0"), ("BTCBCH", 5, "0")
        self.assertEqual(states, [
            (set(), set(), set()), ({"BTCBCH"}, set(), set()),
            # the subscription replaced up to the bad element, as the original does
            ({"ETHBCH"}, set(), set()), ({"ETHBCH"}, {"BTC"}, set()),
            ({"ETHBCH"}, {"BCH"}, set()), ({"ETHBCH"}, {"BCH"}, {depth10}),
            # a limit the config does not offer ends the depth subscription there was
            ({"ETHBCH"}, {"BCH"}, set()), ({"ETHBCH"}, {"BCH"}, {depth5}),
            # a malformed request is refused before anything changes
            ({"ETHBCH"}, {"BCH"}, {depth5})])

    def test_subscribe_with_a_bad_element(self):
        """A subscription refused for a bad element leaves what the original leaves: the
        elements before it for orders and assets, no depth for a limit not offered."""
        return defer.Deferred.fromCoroutine(self.bad_element_scenario())

    async def c_int_scenario(self):
        await self.start(depth_limit=[10, 5])
        service = self.service

        def keys():
            return {family: set(service.subs[family]) for family in ("kline", "depth")}

        errors, states = await self.each_with_state([
            ("kline.subscribe", ["BTCBCH", (1 << 32) + 60]),
            ("depth.subscribe", ["BTCBCH", (1 << 32) + 10, "0"]),
            ("kline.subscribe", ["BTCBCH", 1 << 32])], keys)
        self.assertEqual(errors, [None, None, 1])
        kline, depth = {("BTCBCH", 60)}, {("BTCBCH", 10, "0")}
        self.assertEqual(states, [{"kline": kline, "depth": set()},
                                  {"kline": kline, "depth": depth},
                                  {"kline": kline, "depth": depth}])

    def test_counts_read_as_c_ints(self):
        """kline.subscribe's interval and depth.subscribe's limit are read into a C int,
        as the original: 2^32 + 60 is 60; 2^32 is 0, refused."""
        return defer.Deferred.fromCoroutine(self.c_int_scenario())

    async def tls_scenario(self):
        cert, key = self_signed(self.mktemp())
        await self.start(tls={"cert": cert, "key": key})

        def run():
            import socket
            import ssl
            context = ssl.create_default_context(cafile=cert)
            context.check_hostname = False
            raw = socket.create_connection(("127.0.0.1", self.ws_port), 5)
            sock = context.wrap_socket(raw)
            client = testing.WSClient.__new__(testing.WSClient)
            client.sock = sock
            client.buffer = b""
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
            while b"\r\n\r\n" not in client.buffer:
                client.buffer += sock.recv(4096)
            head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
            client.send(json.dumps({"id": 1, "method": "server.ping", "params": []}))
            reply = json.loads(client.recv(5))
            sock.close()
            return head.split(b"\r\n")[0], reply
        status, reply = await threads.deferToThread(run)
        self.assertEqual(status, b"HTTP/1.1 101 Switching Protocols")
        self.assertEqual(reply["result"], "pong")

    def test_tls(self):
        """With `tls`, the tcp bind serves wss:// with the configured certificate."""
        return defer.Deferred.fromCoroutine(self.tls_scenario())

    async def stop_scenario(self):
        await self.start(backend_timeout=2.0)
        reached = defer.Deferred()

        def today(params, request):
            # under way; the reply leaves a moment later, as from a backend under load
            reached.callback(None)
            return deferLater(reactor, 0.2, lambda: {"open": "1"})
        self.backend.today = today

        def run():
            client = testing.WSClient("127.0.0.1", self.ws_port)
            try:
                client.send(json.dumps({"id": 1, "method": "today.query",
                                        "params": ["BTCBCH"]}))
                reply = json.loads(client.recv(5))
                try:
                    ended = "more: " + client.recv(5)
                except ConnectionError as e:
                    ended = str(e)
                except TimeoutError:
                    ended = "still open"
                return reply, ended, client.close_code
            finally:
                client.close()
        answered = threads.deferToThread(run)
        await reached
        await self.service.stopService()
        self.assertEqual(await answered, (
            {"error": None, "result": {"open": "1"}, "id": 1}, "closed by the server", 1001))

    def test_query_under_way_at_stop(self):
        """A query the backend is answering when accessws stops gets that answer, not error
        5, and the connection is then closed with a close frame 1001 (going away)."""
        return defer.Deferred.fromCoroutine(self.stop_scenario())


class FakeBackend:
    """A backend client that records its calls and its stop; as the real one's, its stop
    fails the calls it has not answered with ConnectionLost."""

    connected = True

    def __init__(self, name, calls):
        self.name = name
        self.calls = calls
        self.pending = []

    def start(self):
        """Nothing to connect to: calls are only recorded."""

    def stop(self):
        self.calls.append((self.name, "stop"))
        pending, self.pending = self.pending, []
        for d in pending:
            if not d.called:
                d.errback(ConnectionLost("connection to %s lost" % self.name))

    def call_raw(self, command, body, timeout, req_id=0):
        self.calls.append((self.name, command, body, req_id))
        self.pending.append(defer.Deferred())
        return self.pending[-1]


class FakePort:
    """A listening port that records when it is closed."""

    def __init__(self, calls):
        self.calls = calls

    def stopListening(self):
        self.calls.append(("port", "stopListening"))


class StopTests(SynchronousTestCase):
    """accessws's stop: a client in memory, fake backends and clock."""

    def setUp(self):
        self.clock = Clock()
        self.calls = []
        self.service = AccessWS(gateway_config(), reactor=self.clock, listen=False)
        for key in list(self.service.clients):
            self.service.clients[key] = FakeBackend(" ".join(key), self.calls)
        self.service.ports = [FakePort(self.calls)]
        factory = self.service.factory
        # Autobahn's opening handshake timer runs on the global reactor: none in memory tests.
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factory.doStart()
        self.addCleanup(factory.doStop)
        self.server, self.client, self.pump = connect(factory, self.clock)
        self.client.sendMessage(request(1, "today.query", ["BTCBCH"]))
        self.pump.flush()
        self.assertEqual(self.calls, [("marketprice query", 305, b'["BTCBCH"]', 1)])
        self.pending = self.service.clients["marketprice", "query"].pending[0]
        del self.calls[:]
        self.stops = [(" ".join(key), "stop") for key in self.service.clients]

    def test_query_under_way_answered(self):
        """A query whose backend call is under way when the service stops gets the
        backend's answer; a request sent meanwhile is not run; the backend clients stop
        only then, the connection closes with a close frame 1001 (going away), and the
        stop ends."""
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.calls, [("port", "stopListening")])
        self.client.sendMessage(request(2, "deals.query", ["BTCBCH", 10, 0]))
        self.pump.flush()
        self.clock.advance(0.4)
        self.assertEqual(self.calls, [("port", "stopListening")])
        self.pending.callback(b'{"error": null, "result": {"open": "1"}, "id": 1}')
        self.pump.flush()
        self.assertEqual(self.client.take(),
                         [b'{"error": null, "result": {"open": "1"}, "id": 1}'])
        self.assertEqual(self.client.close_code, 1001)
        self.assertTrue(self.client.lost)
        self.assertEqual(self.calls, [("port", "stopListening")] + self.stops)
        self.successResultOf(stopped)
        self.service.factory.doStop()     # as its last port would: its idle check ends
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_bounded(self):
        """A backend call that does not end holds the backend clients `backend_timeout`
        at most; a client that does not end the close is dropped `backend_timeout`
        later."""
        stopped = self.service.stopService()
        self.clock.advance(0.49)
        self.assertEqual(self.calls, [("port", "stopListening")])
        self.clock.advance(0.01)
        self.assertEqual(self.calls, [("port", "stopListening")] + self.stops)
        self.assertNoResult(stopped)
        self.clock.advance(0.5)
        self.assertTrue(self.server.transport.disconnecting)
        self.pump.flush()
        self.successResultOf(stopped)
        self.assertTrue(self.client.lost)


class InMemoryTests(SynchronousTestCase):
    """accessws with a client in memory, fake backends, auth service and clock."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.calls = []
        self.urls = []
        self.service = AccessWS(gateway_config(), reactor=self.clock, listen=False,
                                http_get=self.http_get, clock_time=self.clock.seconds)
        for key in list(self.service.clients):
            self.service.clients[key] = FakeBackend(" ".join(key), self.calls)
        factory = self.service.factory
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factory.doStart()
        self.addCleanup(factory.doStop)
        self.server, self.client, self.pump = connect(factory, self.clock)

    def http_get(self, url, headers, timeout):
        self.urls.append(url)
        return defer.succeed(json.dumps({"code": 0, "data": {"user_id": 7}}).encode())

    def received(self):
        self.pump.flush()
        self.clock.advance(1)
        self.pump.flush()
        return [json.loads(m) for m in self.client.take()]

    def poll_answer(self, family, key, result):
        self.service._polled({"error": None, "result": result, "id": 1}, family, key)

    def test_depth_snapshot_before_changes(self):
        """A depth subscriber gets the stored book right after its success reply, before
        any change polled later, so that the changes apply to that book (the snapshot
        used to leave on the reactor's next pass, after a change polled meanwhile)."""
        key = ("BTCBCH", 10, "0")
        old = {"asks": [["8000", "1"]], "bids": []}
        self.service.stored["depth"][key] = old
        self.service.depth_full_at[key] = self.clock.seconds()
        self.client.call(1, "depth.subscribe", list(key))
        self.pump.flush()
        self.poll_answer("depth", key, {"asks": [["8000", "2"]], "bids": []})
        self.assertEqual(self.received(), [
            {"error": None, "result": {"status": "success"}, "id": 1},
            {"method": "depth.update", "params": [True, old, "BTCBCH"], "id": None},
            {"method": "depth.update", "params": [False, {"asks": [["8000", "2"]]}, "BTCBCH"],
             "id": None}])

    def test_market_snapshots_once(self):
        """A subscriber to deals or price gets what was stored when it subscribed, then
        only what a later poll brings: a deal polled meanwhile is not pushed twice."""
        deal = {"id": 1, "time": 1.5, "price": "50", "amount": "1", "type": "buy"}
        later = dict(deal, id=2, price="51")
        self.service.stored["deals"]["BTCBCH"] = [deal]
        self.service.deals_last_id["BTCBCH"] = 1
        self.service.stored["price"]["BTCBCH"] = Decimal("50")
        self.client.call(1, "deals.subscribe", ["BTCBCH"])
        self.client.call(2, "price.subscribe", ["BTCBCH"])
        self.pump.flush()
        self.poll_answer("deals", "BTCBCH", [later])
        self.poll_answer("price", "BTCBCH", "51.00000000")
        self.assertEqual(self.received(), [
            {"error": None, "result": {"status": "success"}, "id": 1},
            {"method": "deals.update", "params": ["BTCBCH", [deal]], "id": None},
            {"error": None, "result": {"status": "success"}, "id": 2},
            {"method": "price.update", "params": ["BTCBCH", "50"], "id": None},
            {"method": "deals.update", "params": ["BTCBCH", [later]], "id": None},
            {"method": "price.update", "params": ["BTCBCH", "51.00000000"], "id": None}])

    def test_sign_tonce_unsigned(self):
        """server.sign sends its tonce as the original's unsigned 64-bit integer."""
        self.client.call(1, "server.sign", ["a b", "secret", -7])
        self.client.call(2, "server.sign", ["a", "secret", 9223372036854775807])
        self.assertEqual([m["result"] for m in self.received()], [{"status": "success"}] * 2)
        self.assertEqual(self.urls, [
            "http://127.0.0.1:1/auth?access_id=a%20b&tonce=18446744073709551609",
            "http://127.0.0.1:1/auth?access_id=a&tonce=9223372036854775807"])

    def test_order_event_integer(self):
        """An orders message whose event is not an integer is dropped, as the original
        reads such an event as 0."""
        self.client.call(1, "server.auth", ["good", "web"])
        self.client.call(2, "order.subscribe", ["BTCBCH"])
        self.received()
        order = {"id": 3, "user": 7, "market": "BTCBCH"}
        for event in ("2", 1.5, True, None, 0, 2):
            self.service.on_order(0, json.dumps({"event": event, "order": order,
                                                 "stock": "BTC", "money": "BCH"}))
        self.assertEqual(self.received(), [
            {"method": "order.update", "params": [2, order], "id": None}])


class FrozenBackendTests(SynchronousTestCase):
    """Backends that stop answering anything, their heartbeats included, with the real
    clients on a memory reactor."""

    def test_one_alert_a_backend(self):
        """A backend's two connections and the polls it leaves unanswered are one outage:
        one alert for each backend however it fails, and none after it."""
        told, attempts = self.frozen(alerts=True)
        alerts = sorted(text.split(":")[1] for level, text in told
                        if level == LogLevel.critical)
        self.assertEqual(alerts, [" marketprice", " matchengine", " readhistory"], told)
        self.assertGreater(len(attempts), 6 * 2)
        first = [text for _, text in told if text.startswith("accessws: marketprice: ")][0]
        self.assertIn("polling price BTCBCH failed", first)

    def test_no_alert_from_a_worker_but_worker_0(self):
        """A worker other than worker 0 tells the same outages without their alerts."""
        told, _ = self.frozen(alerts=False)
        self.assertEqual([text for level, text in told if level == LogLevel.critical], [])
        self.assertEqual(len([text for level, text in told if level == LogLevel.error]), 3)

    def frozen(self, alerts):
        """The log lines, info excluded, of 30 s of backends that answer nothing, and the
        attempts to connect to them."""
        mem = MemoryReactorClock()
        service = AccessWS(gateway_config(), reactor=mem, listen=False,
                           clock_time=mem.seconds, alerts=alerts)
        # a subscriber of prices: marketprice is polled every 0.5 s
        service.subs["price"]["BTCBCH"] = {object()}
        service.startService()
        self.addCleanup(service.stopService)
        connections, attempts = [], []
        with capturedLogs() as events:
            for _ in range(30):
                for proto in connections:
                    if proto.transport.disconnecting and proto.transport.connected:
                        proto.transport.connected = False
                        proto.connectionLost(Failure(ConnectionDone()))
                # each attempt to connect goes through, to a backend that answers nothing
                for _, _, factory, _, _ in mem.tcpClients[len(attempts):]:
                    attempts.append(factory)
                    connections.append(factory.buildProtocol(None))
                    connections[-1].makeConnection(StringTransport())
                mem.advance(1.0)
        return [(e["log_level"], formatEvent(e)) for e in events
                if e["log_level"] > LogLevel.info], attempts


class KafkaOutageTests(SynchronousTestCase):
    """The daemon's consumers of the orders and balances topics, on a clock."""

    def test_one_alert_a_broker(self):
        """A broker away is one outage for both consumers: one error, one alert, and the
        end told once both read again."""
        told = self.broker_away(alerts=True)
        self.assertEqual([level for level, _ in told],
                         [LogLevel.error, LogLevel.critical, LogLevel.warn], told)
        self.assertTrue(told[0][1].startswith(
            "accessws kafka: broker 127.0.0.1:1 unavailable: refused; reading orders[0]"))
        self.assertRegex(told[2][1], "^accessws kafka: working again after 30.0 s, 60 ")

    def test_no_alert_from_a_worker_but_worker_0(self):
        """In a worker other than worker 0, the same outage is told without its alert."""
        told = self.broker_away(alerts=False)
        self.assertEqual([level for level, _ in told], [LogLevel.error, LogLevel.warn], told)

    def broker_away(self, alerts):
        from accessws.tap import kafka_consumers
        clock = Clock()
        cfg = gateway_config()
        make = kafka_consumers(clock, alerts)
        consumers = [make(cfg[section], lambda offset, value: None)
                     for section in ("orders", "balances")]
        with capturedLogs() as events:
            for _ in range(30):
                for consumer in consumers:
                    consumer._broker_state(False, "refused")
                clock.advance(1.0)
            for consumer in consumers:
                consumer._broker_state(True)
        return [(e["log_level"], formatEvent(e)) for e in events
                if e["log_level"] > LogLevel.info]


class TLSConfigTests(TestCase):

    def test_unusable_certificate_or_key(self):
        """A `tls` certificate or key that cannot be read or used is a config error naming
        the key, before anything starts (the daemon would fail at each start)."""
        import os

        from twisted.python import usage

        from accessws import tap
        with open(tap.Options()["config"]) as f:
            data = json.load(f)
        cert, key = self_signed(self.mktemp())

        def parse(tls):
            path = os.path.abspath(self.mktemp())
            with open(path, "w") as f:
                json.dump(dict(data, tls=tls), f)
            tap.Options().parseOptions(["--config", path])
            return path

        parse({"cert": cert, "key": key})
        for tls, message in (({"cert": cert + ".missing", "key": key},
                              "tls.cert: cannot read %s.missing: " % cert),
                             ({"cert": cert, "key": key + ".missing"},
                              "tls.key: cannot read %s.missing: " % key),
                             ({"cert": cert, "key": cert},
                              "tls: the certificate %s and key %s cannot be used" % (cert,
                                                                                   cert))):
            error = self.assertRaises(usage.UsageError, parse, tls)
            self.assertIn(message, str(error))
