# -*- test-case-name: exchange.test.test_pidfile -*-
"""The exchange's pid file left by a kill -9: removed when its pid is now another program's,
kept while an exchange runs under it."""

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from exchange import pidfile
from utils import testing


class DropStaleTests(SynchronousTestCase):

    def process(self, *args):
        """The pid of a live process run with `args`, killed when the test ends."""
        proc = testing.popen_done(list(args), stdin=subprocess.DEVNULL)

        def end():
            proc.kill()
            proc.wait()
        self.addCleanup(end)
        return proc.pid

    def pid_file(self, pid):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("%d\n" % pid)
        return path

    def test_pid_of_another_program(self):
        """A pid that another program has taken since the exchange was killed: twistd
        would refuse to start, taking it for a running exchange; the file goes."""
        path = self.pid_file(self.process("sleep", "60"))
        out = io.StringIO()
        self.assertTrue(pidfile.drop_stale(path, out))
        self.assertFalse(os.path.exists(path))
        self.assertIn("removed the stale pid file %s" % path, out.getvalue())

    def test_another_twistd(self):
        """A twistd of another application is not an exchange either."""
        path = self.pid_file(self.process(sys.executable, "-c", "import time; time.sleep(60)",
                                          "twistd", "-n", "matchengine"))
        self.assertTrue(pidfile.drop_stale(path, io.StringIO()))
        self.assertFalse(os.path.exists(path))

    def test_own_pid(self):
        """The pid of the process that checks, used again: stale too, though its command
        line is an exchange's."""
        path = self.pid_file(os.getpid())
        self.assertTrue(pidfile.drop_stale(path, io.StringIO()))
        self.assertFalse(os.path.exists(path))

    def test_no_process(self):
        """A pid no process has: removed (twistd would remove it as well)."""
        proc = subprocess.Popen(["true"])
        proc.wait()
        path = self.pid_file(proc.pid)
        self.assertTrue(pidfile.drop_stale(path, io.StringIO()))
        self.assertFalse(os.path.exists(path))

    def test_running_exchange(self):
        """A running exchange keeps its pid file: twistd then refuses a second one on the
        same folder."""
        path = self.pid_file(self.process(sys.executable, "-c", "import time; time.sleep(60)",
                                          "-n", "--pidfile", "data/exchange.pid", "twistd",
                                          "exchange", "--data", "data"))
        out = io.StringIO()
        self.assertFalse(pidfile.drop_stale(path, out))
        self.assertTrue(os.path.exists(path))
        self.assertEqual(out.getvalue(), "")

    def test_no_file_or_no_pid(self):
        """No file, or one without a number: nothing to do here (twistd reports the latter)."""
        self.assertFalse(pidfile.drop_stale(self.mktemp(), io.StringIO()))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("garbage")
        self.assertFalse(pidfile.drop_stale(path, io.StringIO()))
        self.assertTrue(os.path.exists(path))

    def test_main(self):
        """`python -m exchange.pidfile PATH` (the Makefile's `run`) exits 0 either way."""
        path = self.pid_file(self.process("sleep", "60"))
        out = io.StringIO()
        self.assertEqual(pidfile.main([path], out), 0)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(pidfile.main([path], out), 0)
        self.assertEqual(pidfile.main([], out), 2)
        self.assertIn("usage: python -m exchange.pidfile PATH", out.getvalue())
