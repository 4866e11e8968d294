# -*- test-case-name: accesshttp.test.test_server -*-
"""The gateway's forwarding, errors and discovery, with in-memory backends and clock."""

import importlib
import json
import os
import re
import socket
import time

from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock, deferLater
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from accesshttp import config, openrpc
from accesshttp.server import METHODS, AccessHTTP
from utils import rpc, testing
from utils.rpc_client import ConnectionLost, NotConnected, RPCTimeout
from utils.rpc_server import RPCServerFactory, listen_rpc
from utils.test.test_http import call, post, responses


class FakeBackend:
    """Records calls; answers with what the test decides."""

    def __init__(self, name, calls):
        self.name = name
        self.calls = calls
        self.answer = None

    def start(self):
        """Nothing to connect to: calls are only recorded."""

    def stop(self):
        self.calls.append((self.name, "stop"))

    def call_raw(self, command, body, timeout, req_id=0):
        self.calls.append((self.name, command, body, timeout, req_id))
        return self.answer() if callable(self.answer) else defer.succeed(self.answer)


class FakePort:
    """A listening port that records when it is closed."""

    def __init__(self, calls):
        self.calls = calls

    def stopListening(self):
        self.calls.append(("port", "stopListening"))


def gateway_config(**svr):
    backend = {"addr": ["tcp@127.0.0.1:1"], "max_pkg_size": 2000000}
    return config.load_data({
        "log": {"path": "log/accesshttp", "flag": "fatal"},
        "svr": dict({"bind": ["tcp@127.0.0.1:1"], "max_pkg_size": 102400}, **svr),
        "monitor": {"bind": "tcp@127.0.0.1:2", "max_pkg_size": 1024},
        "matchengine": dict(backend, name="matchengine"),
        "marketprice": dict(backend, name="marketprice"),
        "readhistory": dict(backend, name="readhistory"),
        "timeout": 0.5})


class GatewayTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.calls = []
        self.gateway = AccessHTTP(gateway_config(), reactor=self.clock, listen_enabled=False)
        for name in list(self.gateway.backends):
            fake = FakeBackend(name, self.calls)
            fake.answer = b'{"error": null, "result": "from %s", "id": 7}' % name.encode()
            self.gateway.backends[name] = fake
        # the handlers captured the real clients: build them again on the fakes
        self.gateway.factory.handlers.update({
            method: self.gateway._forwarder(method, backend, command)
            for method, (backend, command) in METHODS.items()})

    def request(self, data):
        proto = self.gateway.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        return responses(transport.value()), transport

    def test_method_map(self):
        """Every method goes to its backend and command, params compact, id as req_id."""
        for method, (backend, command) in METHODS.items():
            del self.calls[:]
            (answer,), _ = self.request(call(7, method, [1, "BTC", {"k": 1.5}]))
            self.assertEqual(answer, (200, b'{"error": null, "result": "from %s", "id": 7}'
                                      % backend.encode()))
            self.assertEqual(self.calls, [(backend, command, b'[1, "BTC", {"k": 1.5}]', 0.5,
                                           7)])
        self.assertEqual(len(METHODS), 23)

    def test_backend_errors(self):
        """Not connected: 500 empty (the client tells that outage); timeout or lost
        connection: 504 error 5, the log saying which, once for an outage however many calls
        fail, and when a call is answered again."""
        me, mp = self.gateway.backends["matchengine"], self.gateway.backends["marketprice"]
        answers = me.answer, mp.answer
        me.answer = lambda: defer.fail(NotConnected("down"))
        with capturedLogs() as events:
            self.assertEqual(self.request(call(1, "balance.query", [1]))[0], [(500, b"")])
            me.answer = answers[0]
            self.request(call(2, "balance.query", [1]))
        # its client tells the backend's outage: here, a debug line only
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events], [
            (LogLevel.debug, "accesshttp: matchengine not connected (balance.query)")])
        for error, why in ((RPCTimeout("slow"), "in time"),
                           (ConnectionLost("gone"), "(the connection was lost)")):
            me.answer = mp.answer = lambda error=error: defer.fail(error)
            with capturedLogs() as events:
                for _ in range(3):
                    self.assertEqual(self.request(call(3, "balance.query", [1]))[0], [
                        (504, b'{"error": {"code": 5, "message": "service timeout"}, '
                              b'"result": null, "id": 3}')])
                self.request(call(4, "market.last", ["BTCBCH"]))
                me.answer, mp.answer = answers
                self.assertEqual(self.request(call(5, "balance.query", [1]))[0][0][0], 200)
            self.assertEqual([(e["log_level"], formatEvent(e).split(" after")[0])
                              for e in events], [
                (LogLevel.error, "accesshttp: matchengine: did not answer balance.query "
                                 + why),
                (LogLevel.error, "accesshttp: marketprice: did not answer market.last " + why),
                (LogLevel.warn, "accesshttp: matchengine: working again")])
            self.request(call(6, "market.last", ["BTCBCH"]))

    def test_slow_backend_does_not_block_others(self):
        """While one backend has not answered, another backend's answer goes out."""
        slow = defer.Deferred()
        self.gateway.backends["readhistory"].answer = lambda: slow
        answers, transport = self.request(call(1, "order.deals", [1, 0, 10]))
        self.assertEqual(answers, [])
        other, _ = self.request(call(2, "asset.list"))
        self.assertEqual(other[0][0], 200)
        slow.callback(b"late")
        self.assertEqual(responses(transport.value()), [(200, b"late")])

    def test_malformed(self):
        """Malformed requests: empty 400 and close; unknown method: 404 error 4."""
        for data in (post(b"not json"), post({"id": 1, "method": "balance.query"}),
                     post({"id": 1, "method": "balance.query", "params": {}}), post(b"[]"),
                     b"GET / HTTP/1.1\r\n\r\n",
                     # what the original cannot parse is never sent on: a backend closes
                     # the connection of a packet it cannot parse, failing other clients
                     post(b'{"id": 1, "method": "balance.query", '
                          b'"params": [18446744073709551616]}'),
                     post(b'{"id": 1, "method": "balance.query", "params": [1e400]}'),
                     post(b'{"id": 1, "method": "balance.query", "params": [NaN]}'),
                     post(b'{"id": 9223372036854775808, "method": "balance.query", '
                          b'"params": [1]}')):
            answers, transport = self.request(data)
            self.assertEqual(answers, [(400, b"")])
            self.assertTrue(transport.disconnecting)
        answers, transport = self.request(call(1, "no.such.method"))
        self.assertEqual(answers, [(404, b'{"error": {"code": 4, "message": "method not '
                                         b'found"}, "result": null, "id": 1}')])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.calls, [])

    def test_huge_body(self):
        """A body over svr.max_pkg_size gets 413 and the connection closes."""
        answers, transport = self.request(call(1, "balance.query", ["x" * 200000]))
        self.assertEqual(answers, [(413, b"")])
        self.assertTrue(transport.disconnecting)

    def test_buf_limit(self):
        """svr.buf_limit bounds the answers a client leaves unread, in max_pkg_size units;
        0 (the default) does not."""
        self.assertEqual(self.gateway.factory.max_output, 0)
        gateway = AccessHTTP(gateway_config(buf_limit=3), reactor=self.clock,
                             listen_enabled=False)
        self.assertEqual(gateway.factory.max_output, 3 * 102400)

    def connect(self):
        from utils.test.test_http import HalfClosingTransport
        proto = self.gateway.factory.buildProtocol(None)
        transport = HalfClosingTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_stop_lets_calls_under_way_end(self):
        """Stopping closes the ports and runs no more requests, lets the backend calls
        under way end, then stops the backend clients; each client connection shuts its
        writing down once its answers are written and closes when the client ends its
        side, and then the service has stopped."""
        pending = defer.Deferred()
        self.gateway.backends["matchengine"].answer = lambda: pending
        self.gateway.ports = [FakePort(self.calls)]
        proto, transport = self.connect()
        idle, idle_transport = self.connect()
        proto.dataReceived(call(1, "order.put_limit", [1, "BTCBCH", 1, "1", "1", "0", "0",
                                                       ""]))
        del self.calls[:]
        stopped = self.gateway.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.calls, [("port", "stopListening")])
        self.assertFalse(transport.write_shut)
        self.assertTrue(idle_transport.write_shut)
        idle.readConnectionLost()
        idle.connectionLost(None)
        self.clock.advance(0.4)
        pending.callback(b'{"error": null, "result": "placed", "id": 1}')
        self.assertEqual(responses(transport.value()),
                         [(200, b'{"error": null, "result": "placed", "id": 1}')])
        self.assertEqual(self.calls, [("port", "stopListening"), ("matchengine", "stop"),
                                      ("marketprice", "stop"), ("readhistory", "stop")])
        self.assertTrue(transport.write_shut)
        self.assertNoResult(stopped)
        proto.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_timeout_at_most(self):
        """A backend call that does not end holds the backend clients for `timeout` at
        most; a client that does not take its answers is dropped `timeout` later."""
        self.gateway.backends["readhistory"].answer = defer.Deferred
        proto, transport = self.connect()
        proto.dataReceived(call(1, "order.deals", [1, 0, 10]))
        del self.calls[:]
        stopped = self.gateway.stopService()
        self.clock.advance(0.49)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.01)
        self.assertEqual(len(self.calls), 3)
        self.assertNoResult(stopped)
        self.clock.advance(0.5)
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)

    def test_stop_with_nothing_under_way(self):
        """With no call under way and no client, stopping is immediate."""
        self.gateway.ports = [FakePort(self.calls)]
        self.successResultOf(self.gateway.stopService())
        self.assertEqual(self.calls, [("port", "stopListening"), ("matchengine", "stop"),
                                      ("marketprice", "stop"), ("readhistory", "stop")])

    def test_discover(self):
        """rpc.discover answers the OpenRPC document listing every method."""
        (answer,), _ = self.request(call(9, "rpc.discover"))
        doc = json.loads(answer[1])["result"]
        names = {m["name"] for m in doc["methods"]}
        self.assertEqual(names, set(METHODS) | {"rpc.discover"})
        self.assertEqual(doc["openrpc"], "1.2.6")


class FrozenBackendTests(SynchronousTestCase):
    """A backend that stops answering anything, its heartbeats included, with the real
    clients on a memory reactor."""

    def test_one_alert(self):
        """Its client's heartbeats and the calls it leaves unanswered are one outage: one
        alert however long it lasts and however it fails, and one line when it answers
        again."""
        told = self.frozen(alerts=True)
        self.assertEqual([level for level, _ in told],
                         [LogLevel.error, LogLevel.critical, LogLevel.warn], told)
        self.assertTrue(all(text.startswith("accesshttp: matchengine: ")
                            for _, text in told), told)
        self.assertIn("working again", told[-1][1])

    def test_no_alert_from_a_worker_but_worker_0(self):
        """A worker other than worker 0 tells the outage without its alert: the gateway
        raises one, worker 0's."""
        told = self.frozen(alerts=False)
        self.assertEqual([level for level, _ in told],
                         [LogLevel.error, LogLevel.error, LogLevel.warn], told)
        self.assertRegex(told[1][1], "^accesshttp: matchengine: failing for 60 s")

    def frozen(self, alerts):
        """The log lines, info excluded, of a gateway whose matchengine answers nothing for
        70 s, then answers again."""
        mem = MemoryReactorClock()
        gateway = AccessHTTP(gateway_config(), reactor=mem, listen_enabled=False,
                             alerts=alerts)
        gateway.startService()
        attempts = []

        def connect():
            # the matchengine client's newest attempt to connect, made to succeed
            factory = [c for c in mem.tcpClients if c[2] not in attempts][0][2]
            attempts.append(factory)
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            return proto
        # the other backends' first attempts stay under way, those of matchengine's later
        attempts.extend(c[2] for c in mem.tcpClients[1:])
        proto = connect()
        with capturedLogs() as events:
            for second in range(70):
                if proto is not None and proto.transport.disconnecting:
                    proto.connectionLost(Failure(ConnectionDone()))
                    proto = None
                if proto is None and len(mem.tcpClients) > len(attempts):
                    proto = connect()
                self.request(gateway, call(second, "balance.query", [1]))
                mem.advance(1.0)
            self.assertGreater(len(attempts), 5)
            if proto is not None:
                proto.connectionLost(Failure(ConnectionDone()))
                mem.advance(1.0)
            # the backend answers again: its heartbeats, then a call
            proto = connect()
            mem.advance(1.0)
            for packet in rpc.StreamDecoder(10**6).feed(proto.transport.value()):
                proto.dataReceived(rpc.encode(packet.reply(b"")))
            self.request(gateway, call(99, "balance.query", [1]))
            packet = rpc.StreamDecoder(10**6).feed(proto.transport.value())[-1]
            proto.dataReceived(rpc.encode(packet.reply(b'{"error": null, "result": 1}')))
        return [(e["log_level"], formatEvent(e)) for e in events
                if e["log_level"] > LogLevel.info]

    def request(self, gateway, data):
        proto = gateway.factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        proto.dataReceived(data)


class StopOverSocketsTests(TestCase):
    """The gateway and a backend on real loopback sockets."""

    async def scenario(self, more=False):
        """`more`: the answer is large, the client reads slowly, and it sends one more
        request once the stop has begun."""
        import threading
        stopping = threading.Event()
        result = "p" * 1000000 if more else "placed"
        backend_port, http_port = testing.free_port(), testing.free_port()
        reached = defer.Deferred()

        def put_limit(params, request):
            # applied; the reply leaves a moment later, as from a backend under load
            reached.callback(None)
            return deferLater(reactor, 0.2, lambda: result)
        backend = RPCServerFactory({201: put_limit}, 102400, heartbeat_check=False)
        ports = await listen_rpc(reactor, "tcp@127.0.0.1:%d" % backend_port, backend)
        for port in ports:
            self.addCleanup(port.stopListening)
        cfg = config.load_data({
            "log": {"path": "log/accesshttp", "flag": "fatal"},
            "svr": {"bind": ["tcp@127.0.0.1:%d" % http_port], "max_pkg_size": 102400},
            "monitor": {"bind": "tcp@127.0.0.1:%d" % testing.free_port(),
                        "max_pkg_size": 1024},
            "matchengine": {"name": "matchengine", "max_pkg_size": 2000000,
                            "addr": ["tcp@127.0.0.1:%d" % backend_port]},
            "marketprice": {"name": "marketprice", "max_pkg_size": 2000000,
                            "addr": ["tcp@127.0.0.1:%d" % testing.free_port()]},
            "readhistory": {"name": "readhistory", "max_pkg_size": 2000000,
                            "addr": ["tcp@127.0.0.1:%d" % testing.free_port()]},
            "timeout": 2.0})
        gateway = AccessHTTP(cfg, reactor=reactor)
        await gateway.startService()
        running = [gateway]
        self.addCleanup(lambda: running and running.pop().stopService())
        while not gateway.backends["matchengine"].connected:
            await deferLater(reactor, 0.01)

        def client():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5)
            with sock:
                sock.connect(("127.0.0.1", http_port))
                sock.sendall(call(1, "order.put_limit", [1, "BTCBCH", 1, "1", "1", "0", "0",
                                                         ""]))
                if more:
                    stopping.wait(5)
                    sock.sendall(call(2, "market.list"))
                    time.sleep(0.3)
                data = b""
                while True:
                    try:
                        chunk = sock.recv(8192)
                    except OSError as e:
                        return responses(data), repr(e)
                    if not chunk:
                        return responses(data), "closed"
                    data += chunk
                    if more:
                        time.sleep(0.001)
        answered = threads.deferToThread(client)
        await reached
        running.pop()
        stopped = gateway.stopService()
        stopping.set()
        await stopped
        self.assertEqual(await answered, (
            [(200, b'{"error": null, "result": "%s", "id": 1}' % result.encode())], "closed"))

    def test_call_under_way_is_answered(self):
        """A call the backend is applying when the gateway stops gets the backend's
        answer, not 504, and the connection then closes."""
        return defer.Deferred.fromCoroutine(self.scenario())

    def test_request_sent_while_stopping(self):
        """A request sent once the stop has begun is not run, and does not cost the
        answer of the call under way, however slowly the client reads it: left unread, it
        would have made the kernel reset the connection at its close, the end of the answer
        with it."""
        return defer.Deferred.fromCoroutine(self.scenario(more=True))


class DocumentedConfigTests(SynchronousTestCase):

    def test_configuration_examples_load(self):
        """Every example configuration in docs/configuration.md loads with the loader of
        the daemon it is for (named by its log path), every key of it known."""
        with open(os.path.join(testing.ROOT, "docs", "configuration.md")) as f:
            blocks = re.findall(r"```json\n(.*?)```", f.read(), re.S)
        self.assertTrue(blocks)
        for block in blocks:
            data = json.loads(block)
            module = os.path.basename(data["log"]["path"])
            loader = importlib.import_module(module + ".config")
            loader.load_data(data, "docs/configuration.md")
            unknown = []
            loader.SCHEMA.load(data, "", unknown.append)
            self.assertEqual(unknown, [], module)


class OpenRPCTests(SynchronousTestCase):

    def test_catalogue_matches_reference(self):
        """Method names and param counts agree with the published description."""
        from utils import testing
        with open(testing.reference("viabtc-openrpc.json")) as f:
            reference = {m["name"]: m for m in json.load(f)["methods"]}
        self.assertEqual(set(reference), set(openrpc.CATALOGUE))
        for name, (summary, params, result, errors) in openrpc.CATALOGUE.items():
            self.assertEqual(len(params), len(reference[name]["params"]), name)

    def test_markdown(self):
        """The English reference has a section per method."""
        text = openrpc.markdown()
        for name in openrpc.CATALOGUE:
            self.assertIn("## `%s`" % name, text)
