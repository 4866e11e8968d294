# -*- test-case-name: utils.test.test_rpc_integration -*-
"""RPC client and server over real loopback sockets."""

import json
import socket

from twisted.internet import defer, reactor, threads
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from utils import rpc
from utils.rpc_client import ConnectionLost, RPCClient, RPCTimeout
from utils.rpc_server import RPCServerFactory, listen_rpc
from utils.testing import free_port, until


class LoopbackTests(TestCase):

    timeout = 60

    def setUp(self):
        self.never = []
        self.handlers = {
            101: lambda params, req: {"echo": params},
            102: lambda params, req: self.never.append(defer.Deferred()) or self.never[-1],
        }
        self.port = free_port()
        self.bind = ["tcp@127.0.0.1:%d" % self.port, "udp@127.0.0.1:%d" % self.port]

    async def start_server(self):
        factory = RPCServerFactory(self.handlers, 10240, heartbeat_check=True, name="test")
        ports = await listen_rpc(reactor, self.bind, factory)
        return ports

    async def stop_server(self, ports):
        for port in ports:
            await defer.maybeDeferred(port.stopListening)

    async def scenario(self):
        ports = await self.start_server()
        client = RPCClient(reactor, "test", [self.bind[0]], 10240, heartbeat_timeout=2.0,
                           reconnect_timeout=0.2)
        client.start()
        try:
            await until(lambda: client.connected)
            reply = await client.call(101, [1, "BTC"], 2.0)
            self.assertEqual(reply, {"error": None, "result": {"echo": [1, "BTC"]}, "id": 0})
            many = await defer.gatherResults([client.call(101, [i], 2.0) for i in range(200)])
            self.assertEqual([r["result"]["echo"] for r in many], [[i] for i in range(200)])
            with self.assertRaises(RPCTimeout):
                await client.call(102, [], 0.3)
            # heartbeats keep the checked connection alive well past its timeout
            await deferLater(reactor, 3.0, lambda: None)
            self.assertTrue(client.connected)
        finally:
            await client.stop()
            await self.stop_server(ports)
            for d in self.never:
                d.callback(None)
        self.flushLoggedErrors()

    def test_round_trips_heartbeat_timeout(self):
        """Calls, pipelined calls, a timeout, heartbeats over real TCP."""
        return defer.Deferred.fromCoroutine(self.scenario())

    async def reconnect_scenario(self):
        ports = await self.start_server()
        factory = ports[0].factory
        client = RPCClient(reactor, "test", [self.bind[0]], 10240, reconnect_timeout=0.2)
        client.start()
        try:
            await until(lambda: client.connected)
            await self.stop_server(ports)
            for conn in list(factory.connections):
                conn.transport.loseConnection()
            await until(lambda: not client.connected)
            ports = await self.start_server()
            await until(lambda: client.connected)
            reply = await client.call(101, ["again"], 2.0)
            self.assertEqual(reply["result"], {"echo": ["again"]})
        finally:
            await client.stop()
            await self.stop_server(ports)
        self.flushLoggedErrors()

    def test_server_restart(self):
        """A client reconnects to a restarted server and calls succeed again."""
        return defer.Deferred.fromCoroutine(self.reconnect_scenario())

    async def udp_scenario(self):
        ports = await self.start_server()
        got = defer.Deferred()
        from twisted.internet.protocol import DatagramProtocol

        class Client(DatagramProtocol):
            def datagramReceived(self, data, addr):
                got.callback(rpc.decode_packet(data))

        udp = reactor.listenUDP(0, Client(), interface="127.0.0.1", maxPacketSize=65536)
        try:
            udp.write(rpc.encode(rpc.Packet(101, body=b"[3]")), ("127.0.0.1", self.port))
            reply = await got
            self.assertEqual(reply.body, b'{"error": null, "result": {"echo": [3]}, "id": 0}')
            # up to the server's max_pkg_size, past the 8192 bytes read by default
            got = defer.Deferred()
            body = b'["%s"]' % (b"x" * 9000)
            udp.write(rpc.encode(rpc.Packet(101, body=body)), ("127.0.0.1", self.port))
            reply = await got.addTimeout(5, reactor)
            self.assertEqual(json.loads(reply.body)["result"], {"echo": ["x" * 9000]})
        finally:
            await defer.maybeDeferred(udp.stopListening)
            await self.stop_server(ports)

    def test_udp(self):
        """The same handlers answer over UDP, to the datagram's source, datagrams up to
        max_pkg_size."""
        return defer.Deferred.fromCoroutine(self.udp_scenario())

    async def stuck_then_server(self, **options):
        """A connected client whose first address accepts and never reads (a hung process,
        or a half-open peer) and whose second is the test server."""
        stuck = []

        class Stuck(Protocol):
            def connectionMade(self):
                self.transport.pauseProducing()
                stuck.append(self.transport)

        port = reactor.listenTCP(0, Factory.forProtocol(Stuck), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [t.abortConnection() for t in stuck])
        ports = await self.start_server()
        self.addCleanup(self.stop_server, ports)
        client = RPCClient(reactor, "test", ["tcp@127.0.0.1:%d" % port.getHost().port,
                                             self.bind[0]], 10240, reconnect_timeout=0.2,
                           **options)
        client.start()
        self.addCleanup(client.stop)
        await until(lambda: client.connected)
        return client

    async def stuck_backend_scenario(self):
        client = await self.stuck_then_server(heartbeat_timeout=2.0)
        # requests the peer never reads: far more than the kernel's buffers hold
        body = [("x" * 9000)]
        calls = [client.call(101, body, 30.0) for _ in range(1500)]
        for call in calls:
            call.addErrback(lambda failure: None)
        # no heartbeat answer: the client drops the connection and goes on to the next
        # address, though most of what it wrote is still queued
        await until(lambda: client._client.current_address == self.bind[0]
                    and client.connected, 10, "failed over to the second address")
        reply = await client.call(101, ["there"], 2.0)
        self.assertEqual(reply["result"], {"echo": ["there"]})
        self.flushLoggedErrors()

    def test_backend_that_does_not_read(self):
        """A backend that stops reading is dropped at its heartbeat timeout, what was queued
        for it with it, and the client moves on to the next address."""
        return defer.Deferred.fromCoroutine(self.stuck_backend_scenario())

    async def client_buf_limit_scenario(self):
        # the stuck backend's missing heartbeats would take a minute to notice
        client = await self.stuck_then_server(heartbeat_timeout=60.0, buf_limit=2)
        # far more than the kernel's buffers hold: dropped as soon as it refuses more than
        # 2 x 10,240 bytes, the requests failed at once rather than at their timeout
        calls = [client.call(101, ["x" * 9000], 30.0) for _ in range(1500)]
        for call in calls:
            call.addErrback(lambda failure: failure.trap(ConnectionLost))
        await defer.gatherResults(calls).addTimeout(5, reactor)
        await until(lambda: client._client.current_address == self.bind[0]
                    and client.connected, 5, "failed over to the second address")
        reply = await client.call(101, ["there"], 2.0)
        self.assertEqual(reply["result"], {"echo": ["there"]})
        self.flushLoggedErrors()

    def test_client_buf_limit(self):
        """A backend that leaves more than buf_limit x max_pkg_size bytes of requests
        unread is dropped at once, its requests failed, and the next address tried."""
        return defer.Deferred.fromCoroutine(self.client_buf_limit_scenario())

    async def prompt_reader_scenario(self):
        self.handlers[103] = lambda params, req: {"data": "y" * 4000}
        factory = RPCServerFactory(self.handlers, 10240, heartbeat_check=False, name="test",
                                   buf_limit=2)
        ports = await listen_rpc(reactor, self.bind[0], factory)
        self.addCleanup(self.stop_server, ports)
        client = RPCClient(reactor, "test", [self.bind[0]], 10240, reconnect_timeout=0.2)
        client.start()
        self.addCleanup(client.stop)
        await until(lambda: client.connected)
        # 40,000 bytes of replies in one pass, twice buf_limit x max_pkg_size: written to a
        # client that reads them, they are not what "does not read" means
        replies = await defer.gatherResults([client.call(103, [], 5.0) for _ in range(10)])
        self.assertEqual([len(r["result"]["data"]) for r in replies], [4000] * 10)
        self.assertEqual(len(factory.connections), 1)

    def test_buf_limit_counts_what_the_kernel_refuses(self):
        """buf_limit bounds the replies a client leaves unread, not those written in one
        pass of the reactor to a client that reads them."""
        return defer.Deferred.fromCoroutine(self.prompt_reader_scenario())

    def exchange(self, data, shut=False):
        """Send `data` on a new connection (then shut this side down, with `shut`) and
        return all that comes back until the server closes it; blocking."""
        sock = socket.create_connection(("127.0.0.1", self.port), 5)
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return got
                got += chunk
        finally:
            sock.close()

    async def good_then_bad_scenario(self):
        ports = await self.start_server()
        self.addCleanup(self.stop_server, ports)

        got = await threads.deferToThread(
            self.exchange, rpc.encode(rpc.Packet(101, sequence=7, body=b"[5]"))
            + b"not a packet, and longer than a header is")
        reply = rpc.decode_packet(got)
        self.assertEqual((reply.sequence, reply.body),
                         (7, b'{"error": null, "result": {"echo": [5]}, "id": 0}'))
        self.flushLoggedErrors()

    async def half_close_scenario(self):
        self.handlers[103] = lambda params, req: deferLater(reactor, 0.2, lambda: "late")
        factory = RPCServerFactory(self.handlers, 10240, name="test")
        ports = await listen_rpc(reactor, self.bind[0], factory)
        self.addCleanup(self.stop_server, ports)

        exchanged = threads.deferToThread(
            self.exchange, rpc.encode(rpc.Packet(103, sequence=1, body=b"[]"))
            + rpc.encode(rpc.Packet(101, sequence=2, body=b"[5]")), shut=True)
        await until(lambda: factory.connections)
        [conn] = factory.connections
        self.assertTrue(conn.transport.getTcpNoDelay())
        got = await exchanged
        replies = rpc.StreamDecoder(10240).feed(got)
        self.assertEqual([(p.sequence, p.body) for p in replies],
                         [(2, b'{"error": null, "result": {"echo": [5]}, "id": 0}'),
                          (1, b'{"error": null, "result": "late", "id": 0}')])

    def test_replies_after_the_client_shut_its_side(self):
        """A client that shuts its writing down after its requests (`nc -N`) reads their
        replies, a late one included, then the end of the connection; accepted TCP
        connections send without delay."""
        return defer.Deferred.fromCoroutine(self.half_close_scenario())

    async def busy_udp_scenario(self):
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", self.port))
        factory = RPCServerFactory(self.handlers, 10240, name="test")
        with self.assertRaises(CannotListenError):
            await listen_rpc(reactor, self.bind, factory)
        # the TCP port opened first was closed again
        ports = await listen_rpc(reactor, self.bind[0], factory)
        await self.stop_server(ports)

    def test_udp_address_taken(self):
        """listen_rpc fails (it does not raise) when a udp address is taken, and closes
        what it had opened."""
        return defer.Deferred.fromCoroutine(self.busy_udp_scenario())

    def test_packets_before_a_bad_one(self):
        """The requests read before bad bytes are answered, then the connection closed, as
        the original does."""
        return defer.Deferred.fromCoroutine(self.good_then_bad_scenario())
