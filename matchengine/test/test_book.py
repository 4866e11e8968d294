# -*- test-case-name: matchengine.test.test_book -*-
"""One side's price levels: found by price, kept in matching priority through every change,
whatever the number of levels and wherever they are added and removed."""

import random
from decimal import Decimal

from twisted.trial.unittest import SynchronousTestCase

from matchengine import book
from matchengine.book import Book, Level


class BookTests(SynchronousTestCase):

    def check(self, side, expected):
        """`side` holds the levels of `expected` (price -> level) and no other, best first,
        each followed by the next (`after`), and its chunks are neither empty nor longer
        than allowed."""
        levels = list(side.values())
        prices = [level.price for level in levels]
        self.assertEqual(prices, sorted(expected, reverse=side.highest_first))
        self.assertEqual(side.levels, expected)
        self.assertEqual(len(side), len(expected))
        for level in levels:
            self.assertIs(expected[level.price], level)
        self.assertIs(side.best(), levels[0] if levels else None)
        # each level's follower, across chunks, and none after the last
        followers = levels[1:] + [None] if levels else []
        self.assertEqual([side.after(level) for level in levels], followers)
        self.assertEqual(side._lasts, [chunk[-1].price for chunk in side._chunks])
        for chunk in side._chunks:
            self.assertTrue(0 < len(chunk) <= 2 * book.LOAD)

    def test_priority(self):
        """Asks are best from the lowest price up, bids from the highest down."""
        for highest_first in (False, True):
            side = Book(highest_first)
            self.assertIsNone(side.best())
            self.assertFalse(side)
            expected = {}
            for text in ("10.5", "9", "11", "10.25"):
                expected[Decimal(text)] = level = Level(Decimal(text))
                side.add(level)
            self.check(side, expected)
            best = "9" if not highest_first else "11"
            self.assertEqual(side.best().price, Decimal(best))
            side.remove(side.best())
            del expected[Decimal(best)]
            self.check(side, expected)

    def test_many_changes(self):
        """Thousands of levels added and removed in random places, at the best end and at
        the worst, split and join chunks and keep the order."""
        rng = random.Random(7)
        for highest_first in (False, True):
            side = Book(highest_first)
            expected = {}
            for step in range(6000):
                action = rng.random()
                if action < 0.7 or not expected:
                    price = Decimal(rng.randrange(1, 100000)) / 100
                    if price not in expected:
                        expected[price] = level = Level(price)
                        side.add(level)
                elif action < 0.85:
                    level = side.best()
                    side.remove(level)
                    del expected[level.price]
                else:
                    price = rng.choice(list(expected))
                    side.remove(expected.pop(price))
                if step % 500 == 0:
                    self.check(side, expected)
            self.assertGreater(len(side._chunks), 3)
            self.check(side, expected)
            while expected:     # emptied from the worst end
                level = list(side.values())[-1]
                side.remove(level)
                del expected[level.price]
            self.check(side, expected)
            self.assertEqual(side._chunks, [])

    def test_sorted_additions(self):
        """Levels added in rising and falling order (each one the new best, or each the new
        worst) are split into chunks and come back in order."""
        for highest_first in (False, True):
            for prices in (range(1, 2000), range(2000, 1, -1)):
                side = Book(highest_first)
                expected = {}
                for price in prices:
                    expected[Decimal(price)] = level = Level(Decimal(price))
                    side.add(level)
                self.check(side, expected)
                for price in list(expected)[::3]:
                    side.remove(expected.pop(price))
                self.check(side, expected)
