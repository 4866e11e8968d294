# -*- test-case-name: utils.test.test_websocket -*-
"""The WebSocket JSON-RPC server: codec, protocol in memory, and a few real loopback sockets."""

import json
import os
import shutil
import tempfile

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from network.address import AddressError, client_endpoint
from network.output import pending_output
from utils import rpc
from utils.jsonfmt import RawJSON
from utils.testing import free_port, reference, until
from utils.websocket import (NO_REPLY, BadRequest, WSServerFactory, listen_ws, notify_text,
                             parse_request, reply_text, with_request)

TRANSCRIPT = reference("ws-scenario.jsonl")


def masked(payload):
    """A client's text frame of `payload`, masked as a client's must be."""
    import struct
    mask = b"\x01\x02\x03\x04"
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", size)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def request(request_id, method, params=()):
    return json.dumps({"id": request_id, "method": method, "params": list(params)}).encode()


class CodecTests(SynchronousTestCase):

    def test_parse_request(self):
        """A request object gives its id, method and params."""
        self.assertEqual(parse_request(b'{"id": 7, "method": "server.ping", "params": [1, "a"]}'),
                         (7, "server.ping", [1, "a"]))
        self.assertEqual(
            parse_request(b'{"params": [], "method": "x", "id": -9223372036854775808}'),
            (-9223372036854775808, "x", []))

    def test_parse_rejects(self):
        """Everything the original closes the connection for is a BadRequest."""
        for payload in [b"not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe",
                        b'{"method": "m", "params": []}',
                        b'{"id": "1", "method": "m", "params": []}',
                        b'{"id": 1.0, "method": "m", "params": []}',
                        b'{"id": true, "method": "m", "params": []}',
                        b'{"id": null, "method": "m", "params": []}',
                        b'{"id": 1, "params": []}',
                        b'{"id": 1, "method": 5, "params": []}',
                        b'{"id": 1, "method": "m"}',
                        b'{"id": 1, "method": "m", "params": {}}',
                        b'{"id": 1, "method": "m", "params": [NaN]}',
                        b'{"id": 9223372036854775808, "method": "m", "params": []}',
                        b'{"id": 1, "method": "m", "params": [' * 5000]:
            with self.assertRaises(BadRequest, msg=payload[:60]):
                parse_request(payload)

    def test_reply_text(self):
        """Replies are compact jansson text with keys error, result, id."""
        self.assertEqual(reply_text(1, "pong"), b'{"error": null, "result": "pong", "id": 1}')
        self.assertEqual(reply_text(3, {"status": "success"}),
                         b'{"error": null, "result": {"status": "success"}, "id": 3}')
        self.assertEqual(reply_text(11, error=rpc.RPCError(6, "require authentication")),
                         b'{"error": {"code": 6, "message": "require authentication"}, '
                         b'"result": null, "id": 11}')
        self.assertEqual(reply_text(4, RawJSON(b'{"asks": []}')),
                         b'{"error": null, "result": {"asks": []}, "id": 4}')

    def test_notify_text(self):
        """Notifications carry method, params and a null id, in that order."""
        self.assertEqual(notify_text("price.update", ["BTCBCH", "8000"]),
                         b'{"method": "price.update", "params": ["BTCBCH", "8000"], "id": null}')
        self.assertEqual(notify_text("deals.update", ["BTCBCH", [{"time": 1795562202.932682}]]),
                         b'{"method": "deals.update", "params": ["BTCBCH", '
                         b'[{"time": 1795562202.932682}]], "id": null}')

    def test_transcript(self):
        """Every frame the original exchanged is read, or written back, with the same content."""
        if not os.path.exists(TRANSCRIPT):
            self.skipTest("reference transcripts not present")
        checked = 0
        with open(TRANSCRIPT) as f:
            for line in f:
                entry = json.loads(line)
                frame = entry["frame"]
                if entry["dir"] == "send":
                    parsed = parse_request(json.dumps(frame).encode())
                    self.assertEqual(parsed, (frame["id"], frame["method"], frame["params"]))
                elif entry["dir"] == "recv" and frame["id"] is None:
                    text = notify_text(frame["method"], frame["params"])
                    self.assertEqual(json.loads(text), frame)
                    self.assertEqual(list(json.loads(text)), ["method", "params", "id"])
                elif entry["dir"] == "recv":
                    error = frame["error"] and rpc.RPCError(frame["error"]["code"],
                                                            frame["error"]["message"])
                    text = reply_text(frame["id"], frame["result"], error)
                    self.assertEqual(json.loads(text), frame)
                    self.assertEqual(list(json.loads(text)), ["error", "result", "id"])
                else:
                    continue
                checked += 1
        self.assertGreater(checked, 60)


class ParseFuzzTests(SynchronousTestCase):

    @given(st.one_of(
        st.binary(max_size=80),
        st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                               st.text(max_size=8)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4),
                                             st.dictionaries(st.sampled_from(
                                                 ["id", "method", "params", "x"]), inner)),
                     max_leaves=8).map(lambda v: json.dumps(v).encode())))
    def test_request_or_bad_request(self, payload):
        """Any message parses into (id, method, params) of the right types, or BadRequest."""
        try:
            request_id, method, params = parse_request(payload)
        except BadRequest:
            return
        self.assertIs(type(request_id), int)
        self.assertIs(type(method), str)
        self.assertIs(type(params), list)


class Client(WebSocketClientProtocol):
    """A recording autobahn client."""

    def connectionMade(self):
        self.received = []
        self.queue = defer.DeferredQueue()
        self.opened = False
        self.lost = False
        self.close_code = None
        self.gone = defer.Deferred()
        super().connectionMade()

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.received.append(payload)
        self.queue.put(payload)

    def onClose(self, wasClean, code, reason):
        self.close_code = code

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost = True
        self.gone.callback(None)

    def call(self, request_id, method, params=()):
        self.sendMessage(request(request_id, method, params))

    def take(self):
        received, self.received = self.received, []
        return received


class BufferedTransport(iosim.FakeTransport):
    """A fake transport that reports what the pump has not delivered yet as unsent."""

    @property
    def dataBuffer(self):
        return b"".join(self.stream)


def connect(factory, clock, protocols=None, headers=None, origin=None):
    """A `Client` connected to a server of `factory` in memory: (server, client, pump)."""
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9000))
    client_factory = WebSocketClientFactory("ws://127.0.0.1:9000", protocols=protocols,
                                            headers=headers, origin=origin, reactor=clock)
    client_factory.protocol = Client
    client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0,
                                      serverConnectionDropTimeout=0)
    client = client_factory.buildProtocol(None)
    server_transport = BufferedTransport(
        server, isServer=True, hostAddress=IPv4Address("TCP", "127.0.0.1", 9000),
        peerAddress=IPv4Address("TCP", "10.0.0.7", 5555))
    client_transport = iosim.FakeTransport(
        client, isServer=False, hostAddress=IPv4Address("TCP", "10.0.0.7", 5555),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 9000))
    pump = iosim.connect(server, server_transport, client, client_transport)
    pump.flush()
    return server, client, pump


class Memory(SynchronousTestCase):
    """The server protocol and an autobahn client over in-memory transports and a fake clock."""

    factory_options = {}

    def setUp(self):
        self.clock = Clock()
        self.pending = []
        self.events = []
        self.handlers = {
            "server.ping": lambda session, params: "pong",
            "echo": lambda session, params: {"params": params},
            "fail": self.fail_handler,
            "crash": lambda session, params: 1 / 0,
            "later": lambda session, params: self.pending.append(defer.Deferred()) or
            self.pending[-1],
            "coro": self.coro_handler,
            "raw": lambda session, params: RawJSON(b'{"raw": [1, 2]}'),
            "verbatim": self.verbatim_handler,
            "push": self.push_handler,
            "remember": self.remember_handler,
        }
        options = dict(max_pkg_size=1000, reactor=self.clock, name="test",
                       on_open=lambda s: self.events.append(("open", s.session_id)),
                       on_close=lambda s: self.events.append(("close", s.session_id)))
        options.update(self.factory_options)
        self.factory = WSServerFactory(self.handlers, **options)
        # Autobahn's handshake timers run on the global reactor: none in memory tests.
        self.factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)

    def fail_handler(self, session, params):
        raise rpc.RPCError(10, "balance not enough")

    async def coro_handler(self, session, params):
        value = await self.later()
        return {"awaited": value}

    def later(self):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    @with_request
    def verbatim_handler(self, session, params, req):
        req.reply_text('{"error": null, "result": "as is", "id": %d}' % req.id)
        return NO_REPLY

    def push_handler(self, session, params):
        session.notify("push.update", params)
        return "pushed"

    def remember_handler(self, session, params):
        session.data["remembered"] = params
        return session.data

    def connect(self, protocols=None, headers=None, origin=None):
        return connect(self.factory, self.clock, protocols, headers, origin)

    def exchange(self, client, pump, payload, binary=False):
        client.sendMessage(payload, isBinary=binary)
        pump.flush()
        return client.take()


class RequestTests(Memory):

    def setUp(self):
        super().setUp()
        self.server, self.client, self.pump = self.connect()
        self.assertTrue(self.client.opened)

    def call(self, request_id, method, params=()):
        return self.exchange(self.client, self.pump, request(request_id, method, params))

    def test_result(self):
        """A handler's return value is the reply's result, with the request's id."""
        self.assertEqual(self.call(1, "server.ping"),
                         [b'{"error": null, "result": "pong", "id": 1}'])
        self.assertEqual(self.call(-5, "echo", [1, "BTC", None]),
                         [b'{"error": null, "result": {"params": [1, "BTC", null]}, "id": -5}'])

    def test_binary_message(self):
        """A binary message is read as a request like a text one."""
        self.assertEqual(self.exchange(self.client, self.pump, request(2, "server.ping"), True),
                         [b'{"error": null, "result": "pong", "id": 2}'])

    def test_rpc_error(self):
        """RPCError becomes an error reply with a null result."""
        self.assertEqual(self.call(3, "fail"),
                         [b'{"error": {"code": 10, "message": "balance not enough"}, '
                          b'"result": null, "id": 3}'])

    def test_crash_is_internal_error(self):
        """An unexpected exception answers 2 internal error and is logged."""
        self.assertEqual(self.call(4, "crash"),
                         [b'{"error": {"code": 2, "message": "internal error"}, '
                          b'"result": null, "id": 4}'])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_deferred(self):
        """A Deferred result is answered when it fires; requests meanwhile are not held up."""
        self.assertEqual(self.call(5, "later"), [])
        self.assertEqual(self.call(6, "server.ping"),
                         [b'{"error": null, "result": "pong", "id": 6}'])
        self.pending.pop().callback([1, 2])
        self.pump.flush()
        self.assertEqual(self.client.take(), [b'{"error": null, "result": [1, 2], "id": 5}'])

    def test_deferred_error(self):
        """A Deferred failing with RPCError answers that error; any other failure error 2."""
        self.call(7, "later")
        self.call(8, "later")
        self.pending[0].errback(rpc.SERVICE_TIMEOUT())
        self.pending[1].errback(KeyError("x"))
        self.pump.flush()
        self.assertEqual(self.client.take(), [
            b'{"error": {"code": 5, "message": "service timeout"}, "result": null, "id": 7}',
            b'{"error": {"code": 2, "message": "internal error"}, "result": null, "id": 8}'])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_coroutine(self):
        """An async handler is awaited."""
        self.assertEqual(self.call(9, "coro"), [])
        self.pending.pop().callback("done")
        self.pump.flush()
        self.assertEqual(self.client.take(),
                         [b'{"error": null, "result": {"awaited": "done"}, "id": 9}'])

    def test_result_not_json(self):
        """A result that cannot be written as JSON answers 2 internal error and is logged."""
        self.handlers["decimal"] = lambda session, params: object()
        self.factory.handlers = dict(self.handlers)
        self.assertEqual(self.call(19, "decimal"),
                         [b'{"error": {"code": 2, "message": "internal error"}, '
                          b'"result": null, "id": 19}'])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_raw_and_verbatim(self):
        """RawJSON results are inserted as they are; a request can be answered verbatim."""
        self.assertEqual(self.call(10, "raw"),
                         [b'{"error": null, "result": {"raw": [1, 2]}, "id": 10}'])
        self.assertEqual(self.call(11, "verbatim"),
                         [b'{"error": null, "result": "as is", "id": 11}'])

    def test_notify_from_handler(self):
        """A handler can push a notification to its session before its reply."""
        self.assertEqual(self.call(12, "push", ["BTCBCH"]), [
            b'{"method": "push.update", "params": ["BTCBCH"], "id": null}',
            b'{"error": null, "result": "pushed", "id": 12}'])

    def test_session_data(self):
        """Each session has its own `data` dict."""
        self.call(13, "remember", [1])
        other_server, other, other_pump = self.connect()
        self.assertEqual(self.exchange(other, other_pump, request(1, "remember", [2])),
                         [b'{"error": null, "result": {"remembered": [2]}, "id": 1}'])
        self.assertEqual(self.server.session.data, {"remembered": [1]})

    def test_unknown_method(self):
        """An unknown method gets no reply and the connection stays open."""
        self.assertEqual(self.call(14, "server.nope"), [])
        self.assertFalse(self.client.lost)
        self.assertEqual(self.call(15, "server.ping"),
                         [b'{"error": null, "result": "pong", "id": 15}'])

    def test_malformed_closes(self):
        """A message that is not a request closes the connection without a reply."""
        for payload in [b"{not json", b"[1]", b'{"id": "1", "method": "server.ping", "params": []}',
                        b'{"id": 1, "params": []}', b'{"id": 1, "method": "server.ping"}']:
            server, client, pump = self.connect()
            self.assertEqual(self.exchange(client, pump, payload), [])
            self.assertTrue(client.lost, payload)
            self.assertNotIn(server.session, self.factory.sessions)
        self.assertFalse(self.client.lost)

    def test_reply_after_close_dropped(self):
        """A Deferred firing after its session closed sends nothing and logs no error."""
        self.call(16, "later")
        self.client.transport.loseConnection()
        self.pump.flush()
        self.pending.pop().callback("late")
        self.pump.flush()
        self.assertEqual(self.client.take(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_oversized_frame_closes(self):
        """A message larger than max_pkg_size drops the connection unanswered."""
        payload = request(17, "echo", ["x" * 1000])
        self.assertEqual(self.exchange(self.client, self.pump, payload), [])
        self.assertTrue(self.client.lost)
        self.assertEqual(self.factory.sessions, set())

    def test_fragmented_message(self):
        """A message in several frames is assembled; the limit applies to the whole message."""
        self.client.beginMessage()
        for piece in (b'{"id": 18, "met', b'hod": "server.ping", ', b'"params": []}'):
            self.client.sendMessageFrame(piece)
        self.client.endMessage()
        self.pump.flush()
        self.assertEqual(self.client.take(), [b'{"error": null, "result": "pong", "id": 18}'])
        self.client.beginMessage()
        for _ in range(3):
            self.client.sendMessageFrame(b" " * 400)
        self.pump.flush()
        self.assertTrue(self.client.lost)


class SessionTests(Memory):

    def test_open_close_callbacks(self):
        """Opening and closing sessions update `sessions` and call on_open/on_close."""
        server1, client1, pump1 = self.connect()
        server2, client2, pump2 = self.connect()
        self.assertEqual(self.factory.sessions, {server1.session, server2.session})
        client1.transport.loseConnection()
        pump1.flush()
        self.assertEqual(self.factory.sessions, {server2.session})
        server2.session.close()
        pump2.flush()
        self.assertTrue(client2.lost)
        self.assertEqual(self.factory.sessions, set())
        self.assertEqual(self.events, [("open", 1), ("open", 2), ("close", 1), ("close", 2)])
        self.assertEqual(self.factory._connections, set())

    def test_on_close_failure_logged(self):
        """An on_close callback that raises is logged; the session is removed anyway."""
        self.factory.on_close = lambda session: 1 / 0
        server, client, pump = self.connect()
        client.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.factory.sessions, set())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_notify(self):
        """`notify` on the protocol or the session pushes a notification; not once closed."""
        server, client, pump = self.connect()
        self.assertTrue(server.notify("kline.update", [[1, "0"]]))
        self.assertTrue(server.session.notify("asset.update", [{"BTC": {}}]))
        pump.flush()
        self.assertEqual(client.take(), [
            b'{"method": "kline.update", "params": [[1, "0"]], "id": null}',
            b'{"method": "asset.update", "params": [{"BTC": {}}], "id": null}'])
        client.transport.loseConnection()
        pump.flush()
        self.assertFalse(server.session.notify("kline.update", []))

    def test_broadcast(self):
        """`broadcast` reaches every open session, or only those given."""
        pairs = [self.connect() for _ in range(3)]
        self.assertEqual(self.factory.broadcast("price.update", ["BTCBCH", "8000"]), 3)
        chosen = [pairs[0][0].session, pairs[2][0].session]
        self.assertEqual(self.factory.broadcast("state.update", ["BTCBCH", {}], chosen), 2)
        for server, client, pump in pairs:
            pump.flush()
        expected = b'{"method": "price.update", "params": ["BTCBCH", "8000"], "id": null}'
        state = b'{"method": "state.update", "params": ["BTCBCH", {}], "id": null}'
        self.assertEqual([client.take() for _, client, _ in pairs],
                         [[expected, state], [expected], [expected, state]])
        pairs[1][1].transport.loseConnection()
        pairs[1][2].flush()
        self.assertEqual(self.factory.broadcast("price.update", [], [pairs[1][0].session]), 0)

    def test_client_ip(self):
        """The client address comes from the proxy headers, else from the socket."""
        server, client, pump = self.connect()
        self.assertEqual(server.session.client_ip, "10.0.0.7")
        server, client, pump = self.connect(headers={"X-Forwarded-For": "1.2.3.4, 10.0.0.1"})
        self.assertEqual(server.session.client_ip, "1.2.3.4")
        server, client, pump = self.connect(headers={"X-Real-IP": "5.6.7.8",
                                                     "X-Connecting-IP": "9.9.9.9"})
        self.assertEqual(server.session.client_ip, "9.9.9.9")

    def test_subprotocol(self):
        """A client offering subprotocols must offer ours, which the server then selects."""
        server, client, pump = self.connect(protocols=["other", "chat"])
        self.assertTrue(client.opened)
        self.assertEqual(client.websocket_protocol_in_use, "chat")
        server, client, pump = self.connect()
        self.assertTrue(client.opened)
        self.assertIsNone(client.websocket_protocol_in_use)
        server, client, pump = self.connect(protocols=["other"])
        self.assertFalse(client.opened)
        self.assertTrue(client.lost)
        self.assertEqual(len(self.factory.sessions), 2)

    def test_origin(self):
        """With `origin` set the Origin header must end with it."""
        self.factory.origin = "example.com"
        server, client, pump = self.connect(origin="https://www.example.com")
        self.assertTrue(client.opened)
        for origin in ("https://example.com.evil.net", None):
            server, client, pump = self.connect(origin=origin)
            self.assertFalse(client.opened, origin)
            self.assertTrue(client.lost)
        self.assertEqual(len(self.factory.sessions), 1)


class IdleTests(Memory):

    factory_options = {"keep_alive": 100}

    def test_idle_closed(self):
        """A connection that sends nothing for keep_alive seconds is closed (checked each 60 s)."""
        server, client, pump = self.connect()
        busy_server, busy, busy_pump = self.connect()
        self.clock.advance(60)
        self.exchange(busy, busy_pump, request(1, "server.ping"))
        self.clock.advance(60)
        pump.flush()
        busy_pump.flush()
        self.assertTrue(client.lost)
        self.assertFalse(busy.lost)
        self.exchange(busy, busy_pump, request(2, "server.ping"))
        self.clock.advance(60)
        busy_pump.flush()
        self.assertFalse(busy.lost)
        self.clock.advance(60)
        busy_pump.flush()
        self.assertTrue(busy.lost)
        self.assertEqual(self.factory.sessions, set())

    def test_no_keep_alive(self):
        """keep_alive 0 never closes idle connections."""
        self.factory.doStop()
        self.factory.keep_alive = 0
        self.factory.doStart()
        server, client, pump = self.connect()
        self.clock.advance(10 ** 6)
        pump.flush()
        self.assertFalse(client.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FinishTests(Memory):

    def test_answers_then_closes(self):
        """Once finishing, no further request is run; the requests under way are answered,
        and then every connection is closed with a close frame 1001 (going away), after
        those answers; `finish` fires when the last connection is gone."""
        busy, busy_client, busy_pump = self.connect()
        idle, idle_client, idle_pump = self.connect()
        self.assertEqual(self.exchange(busy_client, busy_pump, request(1, "later")), [])
        finished = self.factory.finish()
        self.assertEqual(self.exchange(busy_client, busy_pump, request(2, "server.ping")), [])
        self.assertEqual(self.exchange(idle_client, idle_pump, request(3, "later")), [])
        self.assertEqual((len(self.pending), self.factory.under_way.count), (1, 1))
        self.assertFalse(busy_client.lost or idle_client.lost)
        self.assertNoResult(finished)
        self.pending.pop().callback("late")
        busy_pump.flush()
        idle_pump.flush()
        self.assertEqual(busy_client.take(), [b'{"error": null, "result": "late", "id": 1}'])
        for client in (busy_client, idle_client):
            self.assertTrue(client.lost)
            self.assertEqual(client.close_code, 1001)
        self.assertEqual(self.factory.sessions, set())
        self.successResultOf(finished)

    def test_handshake_under_way_dropped(self):
        """A connection still in its opening handshake is dropped at once."""
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9000))
        transport = StringTransport()
        server.makeConnection(transport)
        finished = self.factory.finish()
        self.assertTrue(transport.disconnected)
        server.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(finished)

    def test_abort(self):
        """`abort` drops every connection at once, its answers awaited or not; `finish`
        then fires.  With no connection, `finish` fires at once."""
        server, client, pump = self.connect()
        self.exchange(client, pump, request(1, "later"))
        finished = self.factory.finish()
        self.assertEqual(self.factory.abort(), 1)
        pump.flush()
        self.assertTrue(client.lost)
        self.successResultOf(finished)
        self.successResultOf(self.factory.finish())


class PushWindowTests(Memory):

    factory_options = {"push_window": 0.01}

    def writes(self, server):
        calls = []
        write = server.transport.write
        server.transport.write = lambda data: (calls.append(data), write(data))
        return calls

    def test_pushes_leave_together(self):
        """Pushes within the window reach each connection in one write, in order."""
        pairs = [self.connect() for _ in range(2)]
        writes = [self.writes(server) for server, _, _ in pairs]
        self.assertEqual(self.factory.broadcast("depth.update", [1]), 2)
        self.assertEqual(self.factory.broadcast("deals.update", [2]), 2)
        for _, client, pump in pairs:
            pump.flush()
            self.assertEqual(client.take(), [])
        self.clock.advance(0.01)
        for (_, client, pump), calls in zip(pairs, writes):
            pump.flush()
            self.assertEqual(client.take(), [
                b'{"method": "depth.update", "params": [1], "id": null}',
                b'{"method": "deals.update", "params": [2], "id": null}'])
            self.assertEqual(len(calls), 1)
        self.assertEqual((self.factory._held, self.factory._held_call), ({}, None))

    def test_send_held_before_the_window_closes(self):
        """send_held sends what is held at once, in one write, and ends the window."""
        server, client, pump = self.connect()
        calls = self.writes(server)
        self.factory.broadcast("depth.update", [1])
        self.factory.broadcast("deals.update", [2])
        self.factory.send_held()
        pump.flush()
        self.assertEqual(len(client.take()), 2)
        self.assertEqual(len(calls), 1)
        self.assertEqual((self.factory._held, self.factory._held_call), ({}, None))
        self.factory.send_held()        # nothing held: nothing happens
        self.assertEqual(len(calls), 1)

    def test_reply_follows_held_pushes(self):
        """A reply to a connection with held pushes goes after them, at once."""
        server, client, pump = self.connect()
        self.factory.broadcast("price.update", ["BTCBCH", "8000"])
        client.sendMessage(request(7, "server.ping", []))
        pump.flush()
        self.assertEqual(client.take(), [
            b'{"method": "price.update", "params": ["BTCBCH", "8000"], "id": null}',
            b'{"error": null, "result": "pong", "id": 7}'])
        self.clock.advance(0.01)
        pump.flush()
        self.assertEqual(client.take(), [])

    def test_closed_connection_forgotten(self):
        """What is held for a connection that closes is dropped with it."""
        server, client, pump = self.connect()
        other_server, other, other_pump = self.connect()
        self.factory.broadcast("price.update", [])
        client.transport.loseConnection()
        pump.flush()
        self.assertNotIn(server, self.factory._held)
        self.clock.advance(0.01)
        other_pump.flush()
        self.assertEqual(other.take(), [b'{"method": "price.update", "params": [], "id": null}'])


class SharedFramesTests(SynchronousTestCase):

    def test_held_pushes_shared(self):
        """Held pushes are queued as the shared frames where output waits already (a copy
        for each connection that did not read took gigabytes), joined into one send else."""
        from utils.websocket import _write_frames

        class Transport:
            def __init__(self, waiting):
                self.dataBuffer, self._tempDataLen = waiting, 0
                self.written = []

            def write(self, data):
                self.written.append(data)

            def writeSequence(self, frames):
                self.written.extend(frames)

        frames = [b"a" * 100, b"b" * 100]
        blocked, free = Transport(b"waiting"), Transport(b"")
        _write_frames(blocked, frames)
        _write_frames(free, frames)
        self.assertTrue(all(a is b for a, b in zip(blocked.written, frames)))
        self.assertEqual(free.written, [b"".join(frames)])


class OutputLimitTests(Memory):

    factory_options = {"buf_limit": 3, "send_timeout": 5.0, "keep_alive": 0}

    def test_stalled_output_dropped(self):
        """A transport that stays paused (peer not reading) for send_timeout drops the session."""
        server, client, pump = self.connect()
        watch = server.transport.producer
        self.assertIsNotNone(watch)
        watch.pauseProducing()
        self.clock.advance(4)
        watch.resumeProducing()
        self.clock.advance(10)
        pump.flush()
        self.assertFalse(client.lost)
        watch.pauseProducing()
        self.clock.advance(5)
        pump.flush()
        self.assertTrue(client.lost)
        self.assertEqual(self.factory.sessions, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stall_timer_cancelled_on_close(self):
        """Closing a paused session cancels its stall timer."""
        server, client, pump = self.connect()
        server.transport.producer.pauseProducing()
        client.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_byte_limit(self):
        """Unsent output over buf_limit * max_pkg_size bytes drops the session at once."""
        server, client, pump = self.connect()
        other_server, other, other_pump = self.connect()
        self.assertTrue(server.notify("big", ["x" * 1400]))
        self.assertTrue(server.notify("big", ["x" * 1400]))
        self.assertEqual(self.factory.broadcast("big", ["x" * 200]), 2)
        self.assertFalse(server.session.is_open)
        self.assertFalse(server.notify("big", []))
        self.assertEqual(self.factory.broadcast("big", []), 1)
        pump.flush()
        other_pump.flush()
        self.assertTrue(client.lost)
        self.assertFalse(other.lost)
        self.assertEqual(self.factory.sessions, {other_server.session})


class ListenTests(SynchronousTestCase):

    def test_rejects_datagram_addresses(self):
        """Only tcp@ and stream@ addresses can serve WebSocket."""
        factory = WSServerFactory({}, 1000, reactor=Clock())
        for bind in ("udp@127.0.0.1:1234", ["tcp@127.0.0.1:1", "dgram@/tmp/x"], "tcp@nowhere"):
            self.assertRaises(AddressError, listen_ws, factory, bind)


# -- real sockets ---------------------------------------------------------------------------

def _reactor():
    from twisted.internet import reactor
    return reactor


class LoopbackTests(TestCase):

    timeout = 60

    def setUp(self):
        self.pending = []
        self.opened = []
        handlers = {
            "server.ping": lambda session, params: "pong",
            "fail": self.fail_handler,
            "later": lambda session, params: self.pending.append(defer.Deferred()) or
            self.pending[-1],
            "push": lambda session, params: session.notify("push.update", params) and "pushed",
        }
        self.factory = WSServerFactory(handlers, max_pkg_size=10240, name="loop",
                                       on_open=self.opened.append)
        self.clients = []
        self.ports = []

    def fail_handler(self, session, params):
        raise rpc.RPCError(6, "require authentication")

    async def start(self, bind=None):
        bind = bind or "tcp@127.0.0.1:%d" % free_port()
        self.ports += await listen_ws(self.factory, bind)
        return bind

    async def open_client(self, bind):
        reactor = _reactor()
        client_factory = WebSocketClientFactory("ws://127.0.0.1/", reactor=reactor)
        client_factory.protocol = Client
        client = await client_endpoint(reactor, bind).connect(client_factory)
        self.clients.append(client)
        await client.is_open.addTimeout(10, reactor)
        return client

    async def reply(self, client):
        return await client.queue.get().addTimeout(10, _reactor())

    async def stop(self):
        for client in self.clients:
            if not client.lost:
                client.transport.resumeProducing()
                client.transport.loseConnection()
            await client.gone
        await until(lambda: not self.factory._connections)
        for port in self.ports:
            await defer.maybeDeferred(port.stopListening)
        for d in self.pending:
            if not d.called:
                d.callback(None)

    def run_scenario(self, scenario):
        async def run():
            try:
                await scenario()
            finally:
                await self.stop()
        return defer.Deferred.fromCoroutine(run())

    def test_requests(self):
        """Request/reply, deferred and error replies, pushes and unknown methods over TCP."""
        async def scenario():
            bind = await self.start()
            client = await self.open_client(bind)
            client.call(1, "server.ping")
            self.assertEqual(await self.reply(client),
                             b'{"error": null, "result": "pong", "id": 1}')
            client.call(2, "later")
            client.call(3, "fail")
            self.assertEqual(await self.reply(client),
                             b'{"error": {"code": 6, "message": "require authentication"}, '
                             b'"result": null, "id": 3}')
            self.pending.pop().callback({"status": "success"})
            self.assertEqual(await self.reply(client),
                             b'{"error": null, "result": {"status": "success"}, "id": 2}')
            client.call(4, "server.nope")
            client.call(5, "push", ["BTCBCH"])
            self.assertEqual(await self.reply(client),
                             b'{"method": "push.update", "params": ["BTCBCH"], "id": null}')
            self.assertEqual(await self.reply(client),
                             b'{"error": null, "result": "pushed", "id": 5}')
        return self.run_scenario(scenario)

    def test_broadcast_and_close(self):
        """A broadcast reaches several clients; a closed client leaves the session set."""
        async def scenario():
            bind = await self.start()
            clients = [await self.open_client(bind) for _ in range(3)]
            self.assertEqual(len(self.factory.sessions), 3)
            self.assertEqual(self.factory.broadcast("price.update", ["BTCBCH", "8000"]), 3)
            for client in clients:
                self.assertEqual(await self.reply(client),
                                 b'{"method": "price.update", "params": ["BTCBCH", "8000"], '
                                 b'"id": null}')
            clients[1].sendClose()
            await clients[1].gone
            await until(lambda: len(self.factory.sessions) == 2)
            self.assertNotIn(self.opened[1], self.factory.sessions)
            self.assertEqual(self.factory.broadcast("price.update", ["BTCBCH", "8001"]), 2)
            for client in (clients[0], clients[2]):
                self.assertIn(b'"8001"', await self.reply(client))
        return self.run_scenario(scenario)

    def test_malformed_and_oversized(self):
        """Malformed JSON and an oversized frame each close their connection; others carry on."""
        async def scenario():
            bind = await self.start()
            good = await self.open_client(bind)
            bad = await self.open_client(bind)
            big = await self.open_client(bind)
            bad.sendMessage(b'{"id": 1, "method": ')
            big.sendMessage(request(1, "server.ping", ["x" * 20000]))
            await bad.gone
            await big.gone
            self.assertEqual((bad.received, big.received), ([], []))
            await until(lambda: len(self.factory.sessions) == 1)
            good.call(9, "server.ping")
            self.assertEqual(await self.reply(good), b'{"error": null, "result": "pong", "id": 9}')
        return self.run_scenario(scenario)

    def test_unread_output_dropped(self):
        """A client that stops reading is dropped once its unsent output passes the limit."""
        self.factory.max_output = 1 << 20

        async def scenario():
            from twisted.internet.task import deferLater
            bind = await self.start()
            client = await self.open_client(bind)
            session = self.opened[0]
            client.transport.pauseProducing()
            sent = 0
            while session.is_open:
                self.assertLess(sent, 256 << 20, "never dropped")
                session.notify("big", ["x" * 65536])
                sent += 65536
                await deferLater(_reactor(), 0, lambda: None)
            self.assertEqual(self.factory.sessions, set())
            self.flushLoggedErrors()
        return self.run_scenario(scenario)

    def test_closed_at_once_while_not_reading(self):
        """A connection closed by the server (a bad request here) while its client reads
        nothing is closed at once, what the kernel does not take dropped, as the original
        closes a session: it stayed open for ever, every later check finding it closed."""
        import socket as sockets

        self.factory.handlers["big"] = lambda session, params: "x" * 100000

        async def scenario():
            bind = await self.start()
            port = int(bind.rsplit(":", 1)[1])

            def stuffed():
                sock = sockets.socket()
                sock.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                             b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                # ten megabytes of replies it never reads, past what the kernels hold
                sock.sendall(masked(request(1, "big")) * 100)
                return sock
            sock = await threads.deferToThread(stuffed)
            self.addCleanup(sock.close)
            await until(lambda: self.factory._connections, what="the connection")
            [conn] = self.factory._connections
            await until(lambda: pending_output(conn.transport) > 100000, what="replies stuck")
            await threads.deferToThread(sock.sendall, masked(b"not json"))
            await until(lambda: not self.factory._connections, seconds=5,
                        what="the connection closed")
            self.flushLoggedErrors()
        return self.run_scenario(scenario)

    def test_handshake_as_the_original_reads_it(self):
        """Subprotocols separated by spaces are read as the original reads them, and only
        version 13 of the protocol is taken."""
        import socket as sockets

        async def scenario():
            bind = await self.start()
            port = int(bind.rsplit(":", 1)[1])

            def handshake(extra):
                with sockets.create_connection(("127.0.0.1", port), 5) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                                 b"dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + b"\r\n")
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    return head.split(b"\r\n")
            lines = await threads.deferToThread(
                handshake, b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: x chat\r\n")
            self.assertEqual(lines[0], b"HTTP/1.1 101 Switching Protocols")
            self.assertIn(b"Sec-WebSocket-Protocol: chat", lines)
            lines = await threads.deferToThread(handshake, b"Sec-WebSocket-Version: 8\r\n")
            self.assertNotEqual(lines[0], b"HTTP/1.1 101 Switching Protocols")
            self.flushLoggedErrors()
        return self.run_scenario(scenario)

    def test_unix_socket(self):
        """A stream@ address serves the same protocol."""
        # a short path (a UNIX socket's is at most 107 bytes), removed afterwards
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "ws.sock")

        async def scenario():
            bind = await self.start("stream@" + path)
            client = await self.open_client(bind)
            client.call(1, "server.ping")
            self.assertEqual(await self.reply(client),
                             b'{"error": null, "result": "pong", "id": 1}')
        return self.run_scenario(scenario)
