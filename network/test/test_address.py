# -*- test-case-name: network.test.test_address -*-
"""Address strings of the C config form."""

import os
import tempfile

from twisted.internet import endpoints, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from network.address import (AddressError, client_endpoint, listen, parse_address,
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
                         "tcp:port=7316:interface=0.0.0.0")
        self.assertEqual(server_description("stream@/tmp/x.sock"),
                         "unix:address=/tmp/x.sock:mode=777:lockfile=0")
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
        from twisted.internet.defer import Deferred
        d = Deferred.fromCoroutine(self._listen_twice())
        return self.assertFailure(d, CannotListenError)

    def test_unix_stream(self):
        """A stream@ address listens on a UNIX socket, replacing a stale one."""
        path = os.path.join(tempfile.mkdtemp(), "s.sock")
        d = listen(reactor, "stream@" + path, Factory.forProtocol(Protocol))

        def check(port):
            self.assertTrue(os.path.exists(path))
            return port.stopListening()
        return d.addCallback(check)
