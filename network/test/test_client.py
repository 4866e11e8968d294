# -*- test-case-name: network.test.test_client -*-
"""The reconnecting client: address rotation, pauses, state, callbacks."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from network.address import listen
from network.client import ReconnectingClient
from utils.testing import free_port


class Recorder(Protocol):
    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data


class RotationTests(SynchronousTestCase):

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.events = []
        self.client = ReconnectingClient(
            self.reactor, ["tcp@127.0.0.1:1001", "tcp@127.0.0.1:1002"], Recorder,
            reconnect_timeout=2.0, name="backend",
            on_connect=lambda p: self.events.append(("up", p)),
            on_disconnect=lambda p, r: self.events.append(("down", p)))

    def attempts(self):
        return [port for (_, port, _, _, _) in self.reactor.tcpClients]

    def fail_last(self, error=None):
        connector = self.reactor.connectors[-1]
        self.reactor.tcpClients[-1][2].clientConnectionFailed(
            connector, Failure(error or ConnectionRefusedError()))

    def succeed_last(self):
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return protocol

    def test_first_attempt_and_timeout(self):
        """The first attempt goes to the first address with reconnect_timeout as timeout."""
        self.client.start()
        self.assertEqual(self.attempts(), [1001])
        self.assertEqual(self.reactor.tcpClients[0][3], 2.0)
        self.assertEqual(self.client.state, "connecting")

    def test_rotation_then_pause(self):
        """Failures move through the list at once, then pause before starting over."""
        self.client.start()
        self.fail_last()
        self.assertEqual(self.attempts(), [1001, 1002])
        self.fail_last()
        self.assertEqual(self.client.state, "waiting")
        self.assertEqual(self.attempts(), [1001, 1002])
        self.reactor.advance(2.0)
        self.assertEqual(self.attempts(), [1001, 1002, 1001])
        self.flushLoggedErrors()

    def test_single_address_always_pauses(self):
        """With one address every retry waits reconnect_timeout."""
        client = ReconnectingClient(self.reactor, "tcp@127.0.0.1:1001", Recorder, 1.5)
        client.start()
        self.fail_last()
        self.assertEqual(client.state, "waiting")
        self.reactor.advance(1.4)
        self.assertEqual(self.attempts(), [1001])
        self.reactor.advance(0.1)
        self.assertEqual(self.attempts(), [1001, 1001])

    def test_reconnect_at_once(self):
        """reconnect() (heartbeats stopped) connects again at once, even to a single
        address, as the original; a failure of that attempt pauses as any other."""
        client = ReconnectingClient(self.reactor, "tcp@127.0.0.1:1001", Recorder, 1.5)
        client.start()
        transport = StringTransport()
        protocol = self.reactor.tcpClients[-1][2].buildProtocol(None)
        protocol.makeConnection(transport)
        self.assertTrue(client.connected)
        client.reconnect()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.attempts(), [1001, 1001])
        self.fail_last()
        self.assertEqual(client.state, "waiting")
        self.reactor.advance(1.4)
        self.assertEqual(self.attempts(), [1001, 1001])
        self.reactor.advance(0.1)
        self.assertEqual(self.attempts(), [1001, 1001, 1001])
        self.flushLoggedErrors()

    def test_timed_out_attempt_restarts_at_once(self):
        """An attempt abandoned after reconnect_timeout is followed at once by the next
        one, even to a single address, as the original restarts it; a refused one still
        pauses."""
        client = ReconnectingClient(self.reactor, "tcp@127.0.0.1:1001", Recorder, 1.5)
        client.start()
        self.fail_last(TimeoutError())
        self.assertEqual(self.attempts(), [1001, 1001])
        self.assertEqual(client.state, "connecting")
        self.fail_last()
        self.assertEqual(client.state, "waiting")
        self.client.start()
        self.fail_last()
        self.fail_last(TimeoutError())
        self.assertEqual(self.attempts()[2:], [1001, 1002, 1001])
        self.flushLoggedErrors()

    def test_start_right_after_stop(self):
        """start() before the connection stop() dropped is gone: that connection's end
        fires stop()'s Deferred and starts nothing more; one new connection is made."""
        self.client.start()
        old = self.succeed_last()
        stopped = self.client.stop()
        self.assertNoResult(stopped)
        self.client.start()
        self.assertEqual(self.attempts(), [1001, 1001])
        old.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.attempts(), [1001, 1001])
        self.assertEqual(self.client.state, "connecting")
        self.assertEqual([e[0] for e in self.events], ["up", "down"])
        self.succeed_last()
        self.assertTrue(self.client.connected)
        self.assertEqual([e[0] for e in self.events], ["up", "down", "up"])

    def test_connected_and_lost(self):
        """A connection is visible, its loss reported, and the next address tried."""
        self.client.start()
        protocol = self.succeed_last()
        self.assertTrue(self.client.connected)
        self.assertIs(self.client.protocol.__class__, Recorder)
        self.assertEqual(self.client.current_address, "tcp@127.0.0.1:1001")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([e[0] for e in self.events], ["up", "down"])
        self.assertIsNone(self.client.protocol)
        self.assertEqual(self.attempts(), [1001, 1002])

    def test_stop(self):
        """stop() while waiting cancels the retry; stop() while connected disconnects."""
        self.client.start()
        self.fail_last()
        self.fail_last()
        d = self.client.stop()
        self.assertEqual(self.client.state, "stopped")
        self.reactor.advance(10)
        self.assertEqual(len(self.attempts()), 2)
        self.assertIsNone(self.successResultOf(d))


class LoopbackTests(TestCase):
    """A real server on loopback that goes away and comes back."""

    timeout = 30

    async def _scenario(self):
        port_number = free_port()
        address = "tcp@127.0.0.1:%d" % port_number
        received = []

        class Echo(Protocol):
            def dataReceived(self, data):
                received.append(data)

        port = await listen(reactor, address, Factory.forProtocol(Echo))
        connected = []
        client = ReconnectingClient(reactor, [address], Recorder, reconnect_timeout=0.2,
                                    on_connect=connected.append)
        client.start()
        try:
            await _until(lambda: client.connected)
            self.assertTrue(client.protocol.transport.getTcpNoDelay())
            client.protocol.transport.write(b"one")
            await _until(lambda: received == [b"one"])
            await port.stopListening()
            for conn in list(connected):
                conn.transport.loseConnection()
            await _until(lambda: not client.connected)
            port = await listen(reactor, address, Factory.forProtocol(Echo))
            await _until(lambda: client.connected)
            self.assertEqual(len(connected), 2)
        finally:
            await client.stop()
            await port.stopListening()
        self.flushLoggedErrors()

    def test_reconnects(self):
        """The client reconnects once the server is back."""
        return Deferred.fromCoroutine(self._scenario())

    async def _quiet_scenario(self):
        client = ReconnectingClient(reactor, ["tcp@127.0.0.1:%d" % free_port()], Recorder,
                                    reconnect_timeout=0.05, name="backend")
        with capturedLogs() as events:
            client.start()
            await _until(lambda: sum(formatEvent(event).startswith("backend: cannot connect")
                                     for event in events) >= 4)
            await client.stop()
        self.assertEqual([formatEvent(event) for event in events
                          if "factory" in formatEvent(event)], [])
        self.flushLoggedErrors()

    def test_tries_logged_once_each(self):
        """A peer away is one line a try: not two more of Twisted's, a factory started and
        stopped (two thirds of a gateway's log while a backend was down)."""
        return Deferred.fromCoroutine(self._quiet_scenario())


async def _until(predicate, seconds=10):
    from twisted.internet.task import deferLater
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not reached in %s s" % seconds)
