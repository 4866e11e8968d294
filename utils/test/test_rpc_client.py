# -*- test-case-name: utils.test.test_rpc_client -*-
"""The RPC client, on a memory reactor."""

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from utils import rpc
from utils.rpc_client import (ConnectionLost, NotConnected, RequestTooLarge, RPCClient,
                               RPCTimeout)


class ClientTests(SynchronousTestCase):

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.client = RPCClient(self.reactor, "matchengine",
                                ["tcp@127.0.0.1:7316", "tcp@127.0.0.1:7317"], 10000,
                                heartbeat_timeout=3.0, reconnect_timeout=1.0)
        self.client.start()
        self.proto, self.transport = self.connect()

    def connect(self):
        factory = self.reactor.tcpClients[-1][2]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def sent(self):
        packets = rpc.StreamDecoder(10**6).feed(self.transport.value())
        self.transport.clear()
        return packets

    def answer(self, request, body):
        self.proto.dataReceived(rpc.encode(request.reply(body)))

    def test_not_connected(self):
        """A call while disconnected fails at once."""
        client = RPCClient(self.reactor, "x", "tcp@127.0.0.1:1", 100)
        self.failureResultOf(client.call(101, [], 1.0), NotConnected)

    def test_call_and_reply(self):
        """Replies are matched to calls by sequence, whatever their order."""
        d1 = self.client.call(101, [1, "BTC"], 1.0)
        d2 = self.client.call(104, [], 1.0)
        r1, r2 = self.sent()
        self.assertEqual((r1.command, r1.body, r2.command), (101, b'[1,"BTC"]', 104))
        self.assertNotEqual(r1.sequence, r2.sequence)
        self.answer(r2, b'{"error": null, "result": 2, "id": 0}')
        self.answer(r1, b'{"error": null, "result": 1, "id": 0}')
        self.assertEqual(self.successResultOf(d1)["result"], 1)
        self.assertEqual(self.successResultOf(d2)["result"], 2)
        self.assertEqual(self.client.in_flight, 0)

    def test_request_too_large(self):
        """A request over max_request_size fails at once and is never sent; one at the
        bound is."""
        self.client.max_request_size = rpc.HEADER_SIZE + 100
        failure = self.failureResultOf(self.client.call_raw(101, b"x" * 101, 1.0),
                                       RequestTooLarge)
        self.assertIn("request of %d bytes" % (rpc.HEADER_SIZE + 101), str(failure.value))
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.client.in_flight, 0)
        self.client.call_raw(101, b"x" * 100, 1.0)
        self.assertEqual([p.body for p in self.sent()], [b"x" * 100])

    def test_timeout(self):
        """No reply within the timeout fails with RPCTimeout; a late reply is ignored, as
        the original ignores it: the caller has told of the timeout, and a backend slow for
        a while would otherwise put a second line in the log for each request."""
        d = self.client.call_raw(101, b"[]", 0.5)
        [request] = self.sent()
        self.reactor.advance(0.5)
        self.failureResultOf(d, RPCTimeout)
        with capturedLogs() as events:
            self.answer(request, b"{}")
        self.assertEqual([e for e in events if e["log_level"] > LogLevel.debug], [])
        self.assertTrue(self.transport.connected)

    def test_heartbeats(self):
        """A heartbeat goes out every second with the client's timeout."""
        self.reactor.advance(1.0)
        [hb] = self.sent()
        self.assertEqual(hb.command, 0)
        self.assertEqual(rpc.heartbeat_timeout_of(hb.body), 3.0)

    def test_heartbeat_timeout_reconnects(self):
        """Without heartbeat replies the client drops the connection and moves on."""
        for _ in range(4):
            self.reactor.advance(1.0)
        self.assertTrue(self.transport.disconnecting)

    def test_heartbeat_replies_keep_connection(self):
        """Heartbeat replies keep the connection up."""
        for _ in range(10):
            self.reactor.advance(1.0)
            for packet in self.sent():
                self.answer(packet, b"")
        self.assertFalse(self.transport.disconnecting)

    def test_connection_lost_fails_in_flight(self):
        """Requests in flight fail with ConnectionLost when the connection goes."""
        d = self.client.call(101, [], 5.0)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionLost)
        self.assertFalse(self.client.connected)
        self.assertEqual(self.reactor.tcpClients[-1][1], 7317)
        self.flushLoggedErrors()

    def test_backend_away_told_as_an_outage(self):
        """A backend whose heartbeats stop, then that refuses connections for a while, is
        told as one outage: an error, an alert once it has lasted 10 s, and a warning once
        it answers again; not a line for each attempt to connect again."""
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure
        with capturedLogs() as events:
            for _ in range(4):
                self.reactor.advance(1.0)       # no heartbeat replies: dropped
            self.assertTrue(self.transport.disconnecting)
            self.proto.connectionLost(Failure(ConnectionRefusedError()))
            for _ in range(12):
                self.reactor.tcpClients[-1][2].clientConnectionFailed(
                    self.reactor.connectors[-1], Failure(ConnectionRefusedError()))
                self.reactor.advance(1.0)
            self.proto, self.transport = self.connect()
            self.reactor.advance(1.0)
            for packet in self.sent():
                self.answer(packet, b"")
        told = [(e["log_level"], formatEvent(e)) for e in events
                if e["log_level"] >= LogLevel.info]
        self.assertEqual([level for level, _ in told],
                         [LogLevel.error, LogLevel.critical, LogLevel.warn], told)
        self.assertTrue(told[0][1].startswith("matchengine: no heartbeat from "
                                              "tcp@127.0.0.1:7316 for 3.0 s"), told)
        self.assertIn("failing for 1", told[1][1])
        self.assertTrue(told[2][1].startswith("matchengine: working again after "), told)

    def test_clients_sharing_an_outage(self):
        """Two clients of one backend sharing an outage tell it once, and it ends once both
        have their backend's answer."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from utils.outage import Outage
        lines = []
        outage = Outage("marketprice", lambda level, text: lines.append((level, text)),
                        clock=self.reactor.seconds)
        clients = [RPCClient(self.reactor, "marketprice " + role, "tcp@127.0.0.1:7424", 10000,
                             outage=outage) for role in ("query", "poll")]
        protocols = []
        for client in clients:
            client.start()
            protocols.append(self.connect())
        for proto, _ in protocols:
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([level for level, _ in lines], [LogLevel.error])
        self.reactor.advance(1.0)
        replies = []
        for factory in [c[2] for c in self.reactor.tcpClients[-2:]]:
            proto = factory.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            replies.append((proto, transport))
        for n, (proto, transport) in enumerate(replies):
            self.reactor.advance(1.0)
            for packet in rpc.StreamDecoder(10 ** 6).feed(transport.value()):
                proto.dataReceived(rpc.encode(packet.reply(b"")))
            transport.clear()
            self.assertEqual(len(lines), 1 + n)
        self.assertEqual(lines[-1][0], LogLevel.warn)
        self.assertTrue(lines[-1][1].startswith("marketprice: working again after "))
        for client in clients:
            client.stop()

    def test_bad_reply_reconnects(self):
        """Garbage from the backend closes the connection."""
        self.proto.dataReceived(b"x" * 40)
        self.assertTrue(self.transport.disconnecting)
