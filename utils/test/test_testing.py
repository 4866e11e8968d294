"""The test helpers' choice of ports."""

import socket

from twisted.trial.unittest import SynchronousTestCase

from utils import testing


class FreePortTests(SynchronousTestCase):

    def test_outside_ephemeral_range_and_never_twice(self):
        low, high = testing._ephemeral_range()
        ports = [testing.free_port() for _ in range(50)]
        self.assertEqual(len(set(ports)), len(ports))
        for port in ports:
            self.assertFalse(low <= port <= high, port)
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))

    def test_port_in_use_skipped(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        given = testing.free_port()
        testing._given.discard(given)
        self.patch(testing.random, "sample", lambda population, k: [taken, given])
        self.assertEqual(testing.free_port(), given)
        # handed out once: the same candidates now leave nothing
        self.assertRaises(RuntimeError, testing.free_port)
