"""Tests for utils.alert: datagram format, the sender and the fatal-log forwarding."""

import threading

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from utils.alert import (
    MAGIC, MAX_SIZE, AlertLogObserver, AlertSender, format_alert, parse_alert_address)
from utils.config import HostPort


class FormatTests(SynchronousTestCase):

    def test_format(self):
        """magic + host + ': ' + message + newline."""
        self.assertEqual(format_alert("matchengine", "[fatal]me.server: service unavailable"),
                         b"373d26968a5a2b698045matchengine: [fatal]me.server: "
                         b"service unavailable\n")
        self.assertEqual(len(MAGIC), 20)

    def test_truncated(self):
        """Datagrams are cut to 10240 bytes (then without the newline)."""
        data = format_alert("h", "x" * 20000)
        self.assertEqual(len(data), MAX_SIZE)
        self.assertTrue(data.endswith(b"x"))
        exact = format_alert("h", "x" * (MAX_SIZE - len(MAGIC) - len(b"h: ") - 1))
        self.assertEqual((len(exact), exact[-1:]), (MAX_SIZE, b"\n"))

    def test_line_breaks_and_utf8(self):
        """Line breaks become spaces (alertcenter reads one line); text is UTF-8."""
        self.assertEqual(format_alert("h", "a\nb\r\nc\u00e9"),
                         MAGIC + "h: a b c\u00e9\n".encode("utf-8"))

    def test_parse_address(self):
        """The address is "ip:port" or a (host, port) pair."""
        self.assertEqual(parse_alert_address("127.0.0.1:4444"), ("127.0.0.1", 4444))
        self.assertEqual(parse_alert_address(HostPort("10.0.0.1", 1)), ("10.0.0.1", 1))
        for bad in ["127.0.0.1", ":1", "127.0.0.1:x"]:
            self.assertRaises(ValueError, parse_alert_address, bad)


class _Port:
    def __init__(self, calls, error=None):
        self.calls = calls
        self.error = error

    def write(self, data, addr):
        self.calls.append(("port.write", data, addr))
        if self.error is not None:
            raise self.error

    def stopListening(self):
        self.calls.append(("port.stopListening",))


class _Reactor:
    """Records listenUDP/callFromThread and hands out a recording port."""

    def __init__(self):
        self.calls = []
        self.port = _Port(self.calls)

    def listenUDP(self, port, protocol):
        self.calls.append(("reactor.listenUDP", port))
        return self.port

    def callFromThread(self, f, *args):
        self.calls.append(("reactor.callFromThread",))
        f(*args)


class SenderTests(SynchronousTestCase):

    def test_send(self):
        """The socket opens on first use and every alert is one datagram to addr."""
        # sent from the reactor's thread, whichever thread a reactor run before in this
        # process registered as its own
        self.patch(threadable, "isInIOThread", lambda: True)
        reactor = _Reactor()
        sender = AlertSender(reactor, "me", "127.0.0.1:4444")
        sender.send("one")
        sender.send("two")
        sender.close()
        self.assertEqual(reactor.calls, [
            ("reactor.listenUDP", 0),
            ("port.write", MAGIC + b"me: one\n", ("127.0.0.1", 4444)),
            ("port.write", MAGIC + b"me: two\n", ("127.0.0.1", 4444)),
            ("port.stopListening",)])

    def test_errors_logged_once(self):
        """Send errors are logged once until a send succeeds, and never raised."""
        reactor = _Reactor()
        reactor.port.error = OSError(101, "Network is unreachable")
        events = []
        sender = AlertSender(reactor, "me", "127.0.0.1:4444")
        sender.log = Logger(observer=events.append)
        sender.send("a")
        sender.send("b")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.error)
        reactor.port.error = None
        sender.send("c")
        reactor.port.error = OSError(101, "Network is unreachable")
        sender.send("d")
        self.assertEqual(len(events), 2)
        self.assertEqual(len([c for c in reactor.calls if c[0] == "port.write"]), 4)

    def test_other_threads_hop(self):
        """A send from another thread goes through callFromThread."""
        reactor = _Reactor()
        sender = AlertSender(reactor, "me", "127.0.0.1:4444")
        thread = threading.Thread(target=sender.send, args=("x",))
        thread.start()
        thread.join()
        self.assertEqual(reactor.calls[0], ("reactor.callFromThread",))
        self.assertEqual(reactor.calls[-1][0], "port.write")


class _Sender:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


class ObserverTests(SynchronousTestCase):

    def test_forwards_fatal_only(self):
        """Critical events become "[fatal]<source>: <text>"; others are ignored."""
        sender = _Sender()
        logger = Logger(namespace="me.server", observer=AlertLogObserver(sender))
        logger.critical("service unavailable, operlog: {n}", n=1)
        logger.error("not alerted")
        logger.info("nor this")
        self.assertEqual(sender.sent, ["[fatal]me.server: service unavailable, operlog: 1"])

    def test_failure_summary(self):
        """A failure adds its one-line error message, not the traceback."""
        sender = _Sender()
        observer = AlertLogObserver(sender)
        try:
            raise RuntimeError("db gone")
        except RuntimeError:
            failure = Failure()
        Logger(namespace="me.db", observer=observer).failure("insert failed", failure,
                                                             LogLevel.critical)
        self.assertEqual(sender.sent, ["[fatal]me.db: insert failed: db gone"])

    def test_log_observer_failures_not_alerted(self):
        """Twisted's note that a log observer failed (a log file on a full disk) is no
        alert: with alertcenter in the same process (the embedded exchange), whose receipt
        of each alert is a log line, each alert failed the observer again, without end."""
        from twisted.logger import LogPublisher
        sender = _Sender()
        publisher = LogPublisher()

        def full_disk(event):
            raise OSError(28, "No space left on device")
        publisher.addObserver(full_disk)
        publisher.addObserver(AlertLogObserver(sender))
        Logger(namespace="me.server", observer=publisher).critical("service unavailable")
        self.assertEqual(sender.sent, ["[fatal]me.server: service unavailable"])

    def test_enabled_predicate(self):
        """Nothing is sent while the predicate says fatal is disabled."""
        sender = _Sender()
        flags = {"fatal": False}
        observer = AlertLogObserver(sender, enabled=lambda level: flags[level])
        logger = Logger(namespace="x", observer=observer)
        logger.critical("off")
        flags["fatal"] = True
        logger.critical("on")
        self.assertEqual(sender.sent, ["[fatal]x: on"])


class _Receiver(DatagramProtocol):
    def __init__(self):
        self.received = defer.Deferred()

    def datagramReceived(self, data, addr):
        if not self.received.called:
            self.received.callback(data)


class LoopbackTests(TestCase):

    def test_real_datagram(self):
        """An alert arrives as one UDP datagram at a real loopback receiver."""
        from twisted.internet import reactor
        receiver = _Receiver()
        port = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sender = AlertSender(reactor, "matchengine",
                             "127.0.0.1:{}".format(port.getHost().port))
        self.addCleanup(sender.close)
        self.patch(threadable, "isInIOThread", lambda: True)     # the socket opened now
        with capturedLogs() as events:
            AlertLogObserver(sender)({"log_level": LogLevel.critical,
                                      "log_format": "boom {x}", "x": 1,
                                      "log_namespace": "me.server"})
        # its socket opened without Twisted's line about its protocol starting
        self.assertEqual([formatEvent(e) for e in events if "protocol" in formatEvent(e)], [])
        receiver.received.addCallback(self.assertEqual,
                                      MAGIC + b"matchengine: [fatal]me.server: boom 1\n")
        return receiver.received
