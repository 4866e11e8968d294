# -*- test-case-name: network.test.test_address -*-
"""Address strings of the C config form."""

import os
import select
import shutil
import socket
import tempfile
import time

from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from network.address import (BACKLOG, AddressError, client_endpoint, listen, parse_address,
                             server_description, server_endpoint)


class ParseTests(SynchronousTestCase):

    def test_tcp(self):
        """tcp@host:port gives kind, host and port; the type is case-insensitive."""
        addr = parse_address("TCP@127.0.0.1:7316")
        self.assertEqual((addr.kind, addr.host, addr.port), ("tcp", "127.0.0.1", 7316))
        self.assertEqual(str(addr), "tcp@127.0.0.1:7316")

    def test_port_bases(self):
        """Ports accept hex (0x) and octal (leading 0) as the original's strtol does."""
        self.assertEqual(parse_address("udp@0.0.0.0:0x1c94").port, 7316)
        self.assertEqual(parse_address("udp@0.0.0.0:016224").port, 7316)

    def test_unix_kinds(self):
        """stream, dgram and seqpacket take a path."""
        for kind in ("stream", "dgram", "seqpacket"):
            addr = parse_address("%s@/tmp/a.sock" % kind)
            self.assertEqual((addr.kind, addr.path), (kind, "/tmp/a.sock"))

    def test_ipv6_and_localhost(self):
        """IPv6 in brackets; localhost means 127.0.0.1."""
        self.assertEqual(parse_address("tcp@[::1]:80").host, "::1")
        self.assertEqual(str(parse_address("tcp@[::1]:80")), "tcp@[::1]:80")
        self.assertEqual(parse_address("tcp@localhost:80").host, "127.0.0.1")

    def test_malformed_named(self):
        """Each malformed address raises AddressError naming it."""
        for bad in ["", "tcp", "tcp@", "tcp@1.2.3.4", "tcp@1.2.3.4:", "tcp@1.2.3.4:99999",
                    "tcp@1.2.3.4:-1", "tcp@host.example:80", "foo@1.2.3.4:80", "stream@",
                    "tcp@1.2.3.4:8o", "tcp@[::1:80"]:
            with self.assertRaises(AddressError) as cm:
                parse_address(bad)
            self.assertIn(repr(bad), str(cm.exception))
        self.assertRaises(AddressError, parse_address, 7316)

    def test_descriptions(self):
        """Stream addresses map to serverFromString descriptions; datagrams do not."""
        self.assertEqual(server_description("tcp@0.0.0.0:7316"),
                         "tcp:port=7316:interface=0.0.0.0:backlog=%d" % BACKLOG)
        self.assertEqual(server_description("stream@/tmp/x.sock"),
                         "unix:address=/tmp/x.sock:mode=777:lockfile=0:backlog=%d" % BACKLOG)
        self.assertRaises(AddressError, server_description, "udp@0.0.0.0:1")

    def test_endpoints(self):
        """tcp and stream addresses give the matching endpoint classes."""
        self.assertIsInstance(server_endpoint(reactor, "tcp@127.0.0.1:0"),
                              endpoints.TCP4ServerEndpoint)
        self.assertIsInstance(client_endpoint(reactor, "tcp@[::1]:1"),
                              endpoints.TCP6ClientEndpoint)
        self.assertIsInstance(client_endpoint(reactor, "stream@/tmp/x"),
                              endpoints.UNIXClientEndpoint)
        self.assertRaises(AddressError, client_endpoint, reactor, "udp@1.2.3.4:5")


class ListenTests(TestCase):

    async def _listen_twice(self):
        first = await listen(reactor, "tcp@127.0.0.1:0", Factory.forProtocol(Protocol))
        self.addCleanup(first.stopListening)
        port = first.getHost().port
        await listen(reactor, "tcp@127.0.0.1:%d" % port, Factory.forProtocol(Protocol))

    def test_busy_port_fails_loudly(self):
        """Listening on a taken port fails with CannotListenError."""
        d = Deferred.fromCoroutine(self._listen_twice())
        return self.assertFailure(d, CannotListenError)

    async def _burst(self, count):
        port = await listen(reactor, "tcp@127.0.0.1:0", Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        port.stopReading()            # nothing is accepted: every connection stays queued
        clients = []
        for _ in range(count):
            s = socket.socket()
            self.addCleanup(s.close)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port.getHost().port))
            clients.append(s)
        deadline = time.monotonic() + 5
        pending = list(clients)
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending, [], 0.2)
            pending = [s for s in pending if s not in writable]
        return count - len(pending)

    def test_burst_of_connections_is_queued(self):
        """A burst of connections well past Twisted's default backlog of 50 is queued by the
        kernel while the server is busy, instead of being dropped into SYN retries."""
        try:
            with open("/proc/sys/net/core/somaxconn") as f:
                count = min(int(f.read()), 500)
        except OSError:
            count = 128
        d = Deferred.fromCoroutine(self._burst(count))
        return d.addCallback(self.assertEqual, count)

    def test_unix_stream(self):
        """A stream@ address listens on a UNIX socket, replacing a stale one."""
        # a short path (a UNIX socket's is at most 107 bytes), removed afterwards
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "s.sock")
        d = listen(reactor, "stream@" + path, Factory.forProtocol(Protocol))

        def check(port):
            self.assertTrue(os.path.exists(path))
            return port.stopListening()
        return d.addCallback(check)

    async def _buffers(self):
        from network.client import ReconnectingClient
        accepted = []

        class Keep(Protocol):
            def connectionMade(self):
                accepted.append(self)
        port = await listen(reactor, "tcp@127.0.0.1:0", Factory.forProtocol(Keep),
                            read_mem=70000, write_mem=30000)
        self.addCleanup(port.stopListening)
        connected = Deferred()
        client = ReconnectingClient(reactor, "tcp@127.0.0.1:%d" % port.getHost().port,
                                    Protocol, on_connect=connected.callback,
                                    read_mem=50000, write_mem=25000)
        client.start()
        self.addCleanup(client.stop)
        protocol = await connected
        while not accepted:
            await deferLater(reactor, 0.01, lambda: None)

        def sizes(transport):
            sock = transport.getHandle()
            return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        # Linux reports twice the size asked for (it counts its bookkeeping too)
        self.assertEqual(sizes(accepted[0].transport), (2 * 70000, 2 * 30000))
        self.assertEqual(sizes(protocol.transport), (2 * 50000, 2 * 25000))

    def test_read_mem_and_write_mem(self):
        """read_mem/write_mem size the buffers of the connections a server accepts and of a
        client's connection."""
        return Deferred.fromCoroutine(self._buffers())
