# -*- test-case-name: network.test.test_output -*-
"""`write_now` and `pending_output` on real loopback connections and a StringTransport."""

import socket
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from network.output import close_now, flush, pending_output, write_now


class WriteNowTests(TestCase):
    """Over a real loopback connection, the reactor not turning in between."""

    async def connected(self):
        transports = []

        class Capture(Protocol):
            def connectionMade(self):
                transports.append(self.transport)

        port = reactor.listenTCP(0, Factory.forProtocol(Capture), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        for _ in range(500):
            if transports:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.addCleanup(transports[0].abortConnection)
        client.settimeout(2)
        return transports[0], client

    async def direct_then_queued(self):
        transport, client = await self.connected()
        write_now(transport, b"sent at once")
        self.assertEqual(client.recv(100), b"sent at once")
        self.assertEqual(pending_output(transport), 0)
        transport.write(b"queued, ")
        write_now(transport, b"then behind it")
        self.assertEqual(pending_output(transport), 22)
        client.setblocking(False)
        self.assertRaises(BlockingIOError, client.recv, 100)
        client.settimeout(2)
        await deferLater(reactor, 0, lambda: None)
        got = b""
        while len(got) < 22:
            got += client.recv(100)
        self.assertEqual(got, b"queued, then behind it")

    def test_direct_then_queued(self):
        """With nothing queued the bytes leave during the call; with bytes queued the new
        ones are queued behind them, in order."""
        return defer.Deferred.fromCoroutine(self.direct_then_queued())

    async def flush_and_close(self):
        transport, client = await self.connected()
        transport.write(b"queued")
        self.assertEqual(pending_output(transport), 6)
        flush(transport)
        self.assertEqual(pending_output(transport), 0)
        self.assertEqual(client.recv(100), b"queued")
        # the peer takes what the kernel took: an orderly close delivers it
        transport.write(b"last words")
        lost = defer.Deferred()
        transport.protocol.connectionLost = lambda reason: lost.callback(reason.type)
        close_now(transport)
        self.assertEqual((await lost).__name__, "ConnectionDone")
        got = b""
        while True:
            chunk = client.recv(100)
            if not chunk:
                break
            got += chunk
        self.assertEqual(got, b"last words")

    def test_flush_and_close(self):
        """flush sends what is queued during the call; close_now sends what the kernel
        takes and closes in order."""
        return defer.Deferred.fromCoroutine(self.flush_and_close())

    async def close_a_peer_that_does_not_read(self):
        transport, client = await self.connected()
        # far more than the kernel's buffers hold: most stays queued
        transport.write(b"x" * (64 << 20))
        flush(transport)
        self.assertGreater(pending_output(transport), 0)
        lost = defer.Deferred()
        transport.protocol.connectionLost = lambda reason: lost.callback(reason.type)
        close_now(transport)
        # at once: loseConnection would wait for the peer to read it all, for ever
        self.assertEqual((await lost.addTimeout(5, reactor)).__name__, "ConnectionAborted")

    def test_close_a_peer_that_does_not_read(self):
        """A connection whose peer does not read closes at once, what is queued dropped."""
        return defer.Deferred.fromCoroutine(self.close_a_peer_that_does_not_read())

    def test_other_transports_write(self):
        """A transport that is not a plain socket connection gets an ordinary write."""
        transport = StringTransport()
        write_now(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    async def to_child_process(self):
        ended = defer.Deferred()
        received = []

        class Child(ProcessProtocol):
            def outReceived(self, data):
                received.append(data)

            def processEnded(self, reason):
                ended.callback(None)

        script = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
        child = reactor.spawnProcess(Child(), sys.executable, [sys.executable, "-c", script],
                                     env=None)
        pipe = child.pipes[0]
        write_now(pipe, b"in the pipe during the call")
        self.assertEqual(pending_output(pipe), 0)
        child.closeStdin()
        await ended
        self.assertEqual(b"".join(received), b"in the pipe during the call")

    def test_child_process_stdin(self):
        """The pipe to a child's stdin takes the bytes during the call, nothing queued."""
        return defer.Deferred.fromCoroutine(self.to_child_process())
