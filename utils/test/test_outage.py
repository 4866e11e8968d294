# -*- test-case-name: utils.test.test_outage -*-
"""The lines an outage is told in."""

from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from utils.outage import Outage


class OutageTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.lines = []

    def outage(self, **kwargs):
        return Outage("kafka", lambda level, text: self.lines.append((level, text)),
                      clock=self.clock.seconds, **kwargs)

    def fail_for(self, outage, seconds):
        """An attempt a second for `seconds` seconds."""
        for _ in range(seconds):
            outage.failed("send failed: timed out; retrying in 1 s")
            self.clock.advance(1)

    def test_told_in_few_lines(self):
        """Two minutes of failures a second: an error line, a critical one after 10 s, an
        error line a minute, and a warning when the work goes through again."""
        outage = self.outage()
        outage.succeeded()
        self.assertEqual(self.lines, [])
        self.fail_for(outage, 125)
        outage.succeeded()
        self.assertEqual(self.lines, [
            (LogLevel.error, "kafka: send failed: timed out; retrying in 1 s"),
            (LogLevel.critical, "kafka: failing for 10 s, 11 attempts: send failed: timed "
                                "out; retrying in 1 s"),
            (LogLevel.error, "kafka: failing for 70 s, 71 attempts: send failed: timed out; "
                             "retrying in 1 s"),
            (LogLevel.warn, "kafka: working again after 125.0 s, 125 failed attempts")])

    def test_a_blip_raises_no_alert(self):
        """A failure or two that a retry cures: an error and a warning, no critical line;
        the next outage is told from its start again."""
        outage = self.outage()
        self.fail_for(outage, 2)
        outage.succeeded()
        outage.succeeded()
        self.fail_for(outage, 1)
        self.assertEqual([level for level, _ in self.lines],
                         [LogLevel.error, LogLevel.warn, LogLevel.error])
        self.assertEqual(self.lines[1][1], "kafka: working again after 2.0 s, 2 failed attempts")

    def test_no_alert(self):
        """Without `alert_after` (the alert centre's own outages) no line is critical."""
        outage = self.outage(alert_after=None, repeat=30)
        self.fail_for(outage, 65)
        self.assertEqual([(level, text.split(",")[0]) for level, text in self.lines],
                         [(LogLevel.error, "kafka: send failed: timed out; retrying in 1 s"),
                          (LogLevel.error, "kafka: failing for 30 s"),
                          (LogLevel.error, "kafka: failing for 60 s")])

    def test_alert_at_once(self):
        """With an `alert_after` of 0 the first failure is the alert; the next are told as
        any outage's."""
        outage = self.outage(alert_after=0)
        self.fail_for(outage, 61)
        outage.succeeded()
        self.assertEqual([(level, text.split(",")[0]) for level, text in self.lines],
                         [(LogLevel.critical, "kafka: send failed: timed out; retrying in 1 s"),
                          (LogLevel.error, "kafka: failing for 60 s"),
                          (LogLevel.warn, "kafka: working again after 61.0 s")])

    def test_sharers(self):
        """Shared by several workers, an outage ends once each that failed has succeeded:
        one whose work keeps failing is not hidden by the others' successes, and raises the
        alert."""
        outage = self.outage()
        for _ in range(12):
            outage.failed("insert failed: (1366, ...); retrying in 1 s", who="a")
            outage.succeeded(who="b")           # never failed: ends nothing
            self.clock.advance(1)
        outage.failed("insert failed: (2013, ...); retrying in 1 s", who="b")
        outage.succeeded(who="b")
        self.assertEqual([level for level, _ in self.lines],
                         [LogLevel.error, LogLevel.critical])
        outage.succeeded(who="a")
        self.assertEqual(self.lines[-1], (LogLevel.warn, "kafka: working again after 12.0 s, "
                                                         "13 failed attempts"))

    def test_a_sharer_that_stops_trying(self):
        """A sharer that failed and has not failed again for `repeat` seconds no longer holds
        the outage: the next success ends it.  Failures after a quiet spell as long begin an
        outage of their own."""
        outage = self.outage()
        outage.failed("did not answer balance.query in time", who="balance.query")
        self.clock.advance(30)
        outage.succeeded(who="asset.list")
        self.assertEqual(len(self.lines), 1)
        self.clock.advance(30)
        outage.succeeded(who="asset.list")
        self.assertEqual(self.lines[-1], (LogLevel.warn, "kafka: working again after 60.0 s, "
                                                         "1 failed attempts"))
        outage.failed("did not answer order.book in time", who="order.book")
        self.clock.advance(3600)
        outage.failed("did not answer order.book in time", who="order.book")
        self.assertEqual([level for level, _ in self.lines],
                         [LogLevel.error, LogLevel.warn, LogLevel.error, LogLevel.error])
        self.assertEqual(self.lines[-1][1], "kafka: did not answer order.book in time")
