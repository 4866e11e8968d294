"""Reads done in a forked child, on the real reactor."""

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from utils import forked


class InChildTests(TestCase):

    def test_text_of_this_instant(self):
        """The child answers from the state at the fork; the parent goes on changing it."""
        state = {"value": "before"}
        d = forked.in_child(lambda: state["value"] * 2, reactor)
        state["value"] = "after"
        return d.addCallback(self.assertEqual, "beforebefore")

    async def big(self):
        # more than a pipe holds: the parent reads while the child writes
        text = await forked.in_child(lambda: "é" * 300000, reactor)
        self.assertEqual(text, "é" * 300000)

    def test_more_than_a_pipe_holds(self):
        return defer.Deferred.fromCoroutine(self.big())

    def test_child_failure(self):
        def boom():
            # in the child: its report would land in the middle of trial's output
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            raise ValueError("no")
        return self.assertFailure(forked.in_child(boom, reactor), forked.ChildFailed)

    async def inherited(self):
        import select
        import socket
        import time
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)

        def compute():
            # what the parent's socket is in the child, while the parent looks at its peer
            seen = os.readlink("/proc/self/fd/%d" % ours.fileno())
            time.sleep(1.0)
            return seen
        d = forked.in_child(compute, reactor)
        ours.close()
        # the child no longer holds the socket: its peer sees the end at once
        self.assertEqual(select.select([peer], [], [], 0.5)[0], [peer])
        self.assertEqual(peer.recv(10), b"")
        self.assertEqual(await d, os.devnull)

    def test_inherited_descriptors_released(self):
        """A child lets go of the descriptors it inherited (a slice writer held the
        daemon's pipes, sockets and MySQL sessions open after it stopped): each is
        /dev/null in the child, and the parent's close ends the connection."""
        return defer.Deferred.fromCoroutine(self.inherited())
