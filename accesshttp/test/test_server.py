# -*- test-case-name: accesshttp.test.test_server -*-
"""The gateway's forwarding, errors and discovery, with in-memory backends and clock."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from accesshttp import config, openrpc
from accesshttp.server import METHODS, AccessHTTP
from utils.rpc_client import ConnectionLost, NotConnected, RPCTimeout
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
        """Nothing to disconnect."""

    def call_raw(self, command, body, timeout, req_id=0):
        self.calls.append((self.name, command, body, timeout, req_id))
        return self.answer() if callable(self.answer) else defer.succeed(self.answer)


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
        """Not connected: 500 empty; timeout or lost connection: 504 error 5."""
        me = self.gateway.backends["matchengine"]
        me.answer = lambda: defer.fail(NotConnected("down"))
        self.assertEqual(self.request(call(1, "balance.query", [1]))[0], [(500, b"")])
        for error in (RPCTimeout("slow"), ConnectionLost("gone")):
            me.answer = lambda error=error: defer.fail(error)
            self.assertEqual(self.request(call(3, "balance.query", [1]))[0], [
                (504, b'{"error": {"code": 5, "message": "service timeout"}, "result": null, '
                      b'"id": 3}')])

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

    def test_discover(self):
        """rpc.discover answers the OpenRPC document listing every method."""
        (answer,), _ = self.request(call(9, "rpc.discover"))
        doc = json.loads(answer[1])["result"]
        names = {m["name"] for m in doc["methods"]}
        self.assertEqual(names, set(METHODS) | {"rpc.discover"})
        self.assertEqual(doc["openrpc"], "1.2.6")


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
