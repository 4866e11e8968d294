# -*- test-case-name: network.test.test_udp -*-
"""UDP sender and receiver over loopback."""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from network.udp import UDPReceiver, UDPSender


class UDPTests(TestCase):

    async def scenario(self):
        got = defer.Deferred()
        receiver = UDPReceiver(lambda data, addr: got.callback((data, addr)))
        port = receiver.listen(reactor, "udp@127.0.0.1:0")
        sender = UDPSender(reactor, "udp@127.0.0.1:%d" % port.getHost().port)
        try:
            sender.send(b"hello")
            data, addr = await got
            self.assertEqual(data, b"hello")
            self.assertEqual(addr[0], "127.0.0.1")
        finally:
            await defer.maybeDeferred(sender.close)
            await defer.maybeDeferred(port.stopListening)

    def test_round_trip(self):
        """A datagram sent reaches the receiver's handler with its source."""
        return defer.Deferred.fromCoroutine(self.scenario())

    def test_handler_errors_logged(self):
        """A failing handler is logged; the receiver keeps going."""
        receiver = UDPReceiver(lambda data, addr: 1 / 0)
        receiver.datagramReceived(b"x", ("127.0.0.1", 1))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_send_errors_not_raised(self):
        """Sending to an unusable destination logs and does not raise."""
        sender = UDPSender(reactor, "udp@0.0.0.0:0")
        sender.send(b"x")
        sender.send(b"y")
        sender.close()

    def test_stream_address_refused(self):
        """A sender needs a datagram address."""
        self.assertRaises(ValueError, UDPSender, reactor, "tcp@127.0.0.1:1")
