# -*- test-case-name: network.test.test_state -*-
"""The in-flight entry table."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from network import state
from network.state import StateTable


class StateTableTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.expired = []
        self.table = StateTable(self.clock, lambda i, d: self.expired.append((i, d)))

    def test_add_pop(self):
        """Entries get increasing ids from 1; pop returns and removes them."""
        a = self.table.add("a", 5)
        b = self.table.add("b", 5)
        self.assertEqual((a, b), (1, 2))
        self.assertEqual(self.table.get(b), "b")
        self.assertEqual(self.table.pop(a), "a")
        self.assertIsNone(self.table.pop(a))
        self.assertEqual(len(self.table), 1)
        self.assertIn(b, self.table)

    def test_timeout(self):
        """An entry left past its timeout is removed and handed to on_timeout."""
        i = self.table.add("x", 1.0)
        self.table.add("y", 3.0)
        self.clock.advance(1.0)
        self.assertEqual(self.expired, [(i, "x")])
        self.assertNotIn(i, self.table)
        self.assertEqual(len(self.table), 1)

    def test_pop_cancels_timer(self):
        """A popped entry never times out."""
        i = self.table.add("x", 1.0)
        self.table.pop(i)
        self.clock.advance(10)
        self.assertEqual(self.expired, [])

    def test_clear(self):
        """clear drops everything without calling on_timeout."""
        self.table.add("x", 1.0)
        self.table.clear()
        self.clock.advance(10)
        self.assertEqual((self.expired, len(self.table)), ([], 0))

    def test_wraps_skipping_zero_and_used(self):
        """Ids wrap after 2**32-1, never giving 0 or one still in use."""
        self.table._last_id = state.MAX_ID - 1
        used = self.table.add("u", 100)
        self.assertEqual(used, state.MAX_ID)
        self.table._last_id = state.MAX_ID - 1
        self.assertEqual(self.table.add("v", 100), 1)

    def test_timeout_handler_error_logged(self):
        """A failing on_timeout is logged, not raised into the clock."""
        table = StateTable(self.clock, lambda i, d: 1 / 0)
        table.add("x", 1)
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
