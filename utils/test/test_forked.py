"""Reads done in a forked child, on the real reactor."""

import os
import signal
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from utils import forked, testing


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


# a process that forks a child, waits until the child has called `die_with_parent` (the
# child then sleeps for a minute, its output elsewhere), prints its pid and dies at once
FORKS_AND_DIES = """
import os, sys, time
from utils import forked
parent = os.getpid()
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    forked.die_with_parent(parent)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.write(ready_w, b"x")
    time.sleep(60)
    os._exit(0)
os.read(ready_r, 1)
print(pid, flush=True)
os._exit(0)
"""


class DieWithParentTests(TestCase):

    def test_child_killed_with_its_parent(self):
        """A forked child ends when its parent is killed, rather than go on beside the
        daemon started after it."""
        done = subprocess.run([sys.executable, "-c", FORKS_AND_DIES], cwd=testing.ROOT,
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        pid = int(done.stdout)
        self.addCleanup(lambda: testing.ended(pid) or os.kill(pid, signal.SIGKILL))
        return defer.Deferred.fromCoroutine(
            testing.until(lambda: testing.ended(pid), 10, what="the child ended"))
