# -*- test-case-name: utils.test.test_forked -*-
"""Long reads of in-memory state, done on a snapshot in a forked child.

`in_child(compute, reactor)` forks; the child has a copy-on-write image of the process at
that instant, runs `compute()` (which returns text), writes it to a pipe and exits.  The
parent goes on serving meanwhile and the returned Deferred fires with the text, or fails
with ChildFailed.  A read that visits every balance (the matchengine's asset summary) costs
a second of CPU per million entries: in the child it no longer stalls matching, and the
answer is still the state of one instant.

The child must not touch the reactor, threads or sockets it inherited; it only computes
and leaves with `os._exit`.  It lets go of what it inherited first (`release_inherited`), and
ends with its parent (`die_with_parent`).
"""

import contextlib
import ctypes
import fcntl
import os
import signal

from twisted.internet import defer, task

__all__ = ["in_child", "reap", "release_inherited", "die_with_parent", "ChildFailed"]

PR_SET_PDEATHSIG = 1
try:    # looked up once here: a child forked from a process with threads runs no loader
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):      # not Linux
    _prctl = None


class ChildFailed(Exception):
    """The child could not compute its answer (its reason is on stderr)."""


def release_inherited(keep=()):
    """In a forked child: let go of the files and sockets inherited from the parent, every
    descriptor from 3 on but those in `keep`.  Held by a child, the parent's listening
    sockets, connections, pipes and MySQL sessions (with the locks they hold) would stay
    open after the parent stopped or was killed, for as long as the child runs: a stopping
    daemon's writer waiting for the end of its pipe, a restarted one for its predecessor's
    lock.  Each is replaced by /dev/null rather than closed, so that its number stays
    taken: an object of the parent's image collected in the child closes /dev/null, never a
    connection the child has opened since."""
    try:
        every = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:     # no /proc: the numbers below the usual limit
        every = range(3, 4096)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in every:
            if fd >= 3 and fd != null and fd not in keep:
                with contextlib.suppress(OSError):  # the listing's own, closed since
                    os.dup2(null, fd)
    finally:
        os.close(null)


def die_with_parent(parent):
    """In a child forked by `parent` (a pid) from its main thread: be killed when the parent
    dies, and end at once if it has already.  A child of a daemon killed by kill -9 would
    otherwise go on writing beside the daemon started after it (a slice it then takes for
    unfinished and drops).  On Linux; elsewhere the child lives on as before."""
    if _prctl is not None and _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        with contextlib.suppress(OSError):    # no stderr left to tell
            os.write(2, ("prctl(PR_SET_PDEATHSIG) failed: %s\n"
                         % os.strerror(ctypes.get_errno())).encode())
    if os.getppid() != parent:
        os._exit(1)


def in_child(compute, reactor, poll=0.005):
    """Fork; the child returns `compute()` (a str); fires with it in the parent."""
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            die_with_parent(parent)
            os.close(read_fd)
            release_inherited(keep=(write_fd,))
            data = memoryview(compute().encode())
            while data:
                data = data[os.write(write_fd, data):]
            status = 0
        except BaseException as e:
            with contextlib.suppress(OSError):    # no stderr left to tell
                os.write(2, ("forked read failed: %s: %s\n" % (type(e).__name__, e)).encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    fcntl.fcntl(read_fd, fcntl.F_SETFL, fcntl.fcntl(read_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    return defer.Deferred.fromCoroutine(_collect(pid, read_fd, reactor, poll))


async def _collect(pid, fd, reactor, poll):
    parts = []
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                await task.deferLater(reactor, poll, lambda: None)
                continue
            if not chunk:
                break
            parts.append(chunk)
    finally:
        os.close(fd)
    status = await reap(pid, reactor, poll)
    if status != 0:
        raise ChildFailed("child %d exited with status %s" % (pid, status))
    return b"".join(parts).decode()


async def reap(pid, reactor, poll=0.05):
    """The exit status of child `pid` once it ends (None when reaped elsewhere), polled
    without blocking the reactor."""
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None    # reaped elsewhere: its status is unknown
        if done:
            return os.waitstatus_to_exitcode(status)
        await task.deferLater(reactor, poll, lambda: None)
