# -*- test-case-name: network.test.test_underway -*-
"""Deferreds under way, counted; open connections, waited for."""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from network.underway import OpenSet, UnderWay


class UnderWayTests(SynchronousTestCase):

    def test_ended_after_the_last(self):
        """`ended` fires once every tracked Deferred has fired, however it ended; their
        results pass through."""
        calls = UnderWay()
        first, second = defer.Deferred(), defer.Deferred()
        self.assertIs(calls.track(first), first)
        calls.track(second)
        self.assertEqual(calls.count, 2)
        ended = calls.ended()
        first.callback("answer")
        self.assertEqual(self.successResultOf(first), "answer")
        self.assertNoResult(ended)
        second.errback(KeyError("x"))
        self.failureResultOf(second, KeyError)
        self.assertEqual(calls.count, 0)
        self.successResultOf(ended)

    def test_nothing_under_way(self):
        """With nothing under way, `ended` has fired already, and tracking an answered
        Deferred leaves nothing counted."""
        calls = UnderWay()
        self.successResultOf(calls.ended())
        calls.track(defer.succeed(1))
        self.assertEqual(calls.count, 0)
        self.successResultOf(calls.ended())


class OpenSetTests(SynchronousTestCase):

    def test_closed_after_the_last(self):
        """`closed` fires once the last connection is gone and the server settled it; at
        once when none is open."""
        open_ = OpenSet()
        self.successResultOf(open_.closed())
        open_.update(["a", "b"])
        first, second = open_.closed(), open_.closed()
        open_.discard("a")
        open_.settle()
        self.assertNoResult(first)
        open_.discard("b")
        self.assertNoResult(first)          # not before the server is done with it
        open_.settle()
        self.successResultOf(first)
        self.successResultOf(second)
        open_.settle()                      # nothing waits: nothing happens
