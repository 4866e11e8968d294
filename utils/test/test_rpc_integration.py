# -*- test-case-name: utils.test.test_rpc_integration -*-
"""RPC client and server over real loopback sockets."""

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from utils import rpc
from utils.rpc_client import RPCClient, RPCTimeout
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

        udp = reactor.listenUDP(0, Client(), interface="127.0.0.1")
        try:
            udp.write(rpc.encode(rpc.Packet(101, body=b"[3]")), ("127.0.0.1", self.port))
            reply = await got
            self.assertEqual(reply.body, b'{"error": null, "result": {"echo": [3]}, "id": 0}')
        finally:
            await defer.maybeDeferred(udp.stopListening)
            await self.stop_server(ports)

    def test_udp(self):
        """The same handlers answer over UDP, to the datagram's source."""
        return defer.Deferred.fromCoroutine(self.udp_scenario())
