# -*- test-case-name: network.test.test_timer -*-
"""Timers on an injected clock."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from network.timer import Timer, within


class TimerTests(SynchronousTestCase):

    def test_one_shot(self):
        """A one-shot timer fires once after its interval."""
        clock, calls = Clock(), []
        t = Timer(clock, 2.0, lambda: calls.append(clock.seconds())).start()
        self.assertTrue(t.running)
        clock.advance(1.9)
        self.assertEqual(calls, [])
        clock.advance(0.1)
        clock.advance(5)
        self.assertEqual(calls, [2.0])
        self.assertFalse(t.running)

    def test_repeat_survives_errors(self):
        """A repeating timer keeps ticking when its callback raises; errors are logged."""
        clock, calls = Clock(), []

        def tick():
            calls.append(clock.seconds())
            if len(calls) == 2:
                raise RuntimeError("boom")
        t = Timer(clock, 1.0, tick, repeat=True).start()
        clock.pump([1.0] * 4)
        self.assertEqual(calls, [1.0, 2.0, 3.0, 4.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        t.stop()
        clock.advance(5)
        self.assertEqual(len(calls), 4)

    def test_restart(self):
        """start() on a running timer re-arms it from now."""
        clock, calls = Clock(), []
        t = Timer(clock, 1.0, lambda: calls.append(clock.seconds())).start()
        clock.advance(0.5)
        t.start()
        clock.advance(0.9)
        self.assertEqual(calls, [])
        clock.advance(0.1)
        self.assertEqual(calls, [1.5])

    def test_negative_interval(self):
        """A negative interval is refused."""
        self.assertRaises(ValueError, Timer, Clock(), -1, lambda: None)


class WithinTests(SynchronousTestCase):

    def test_fired_in_time(self):
        """True when the Deferred fires first; its result passes on, and no call is left."""
        clock, d = Clock(), defer.Deferred()
        out = within(clock, d, 2.0)
        clock.advance(1.5)
        self.assertNoResult(out)
        d.callback("result")
        self.assertIs(self.successResultOf(out), True)
        self.assertEqual(self.successResultOf(d), "result")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_too_late(self):
        """False once the time is up; the Deferred firing later changes nothing."""
        clock, d = Clock(), defer.Deferred()
        out = within(clock, d, 2.0)
        clock.advance(2.0)
        self.assertIs(self.successResultOf(out), False)
        d.errback(ValueError("late"))
        self.failureResultOf(d, ValueError)
