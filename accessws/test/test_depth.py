# -*- test-case-name: accessws.test.test_depth -*-
"""The depth diff, level by level."""

from twisted.trial.unittest import SynchronousTestCase

from accessws.depth import diff


class DiffTests(SynchronousTestCase):

    def test_no_change(self):
        """Identical books give an empty diff; amounts compare numerically."""
        book = {"asks": [["8000", "1"]], "bids": [["7990", "2"]]}
        self.assertEqual(diff(book, book, 10), {})
        self.assertEqual(diff(book, {"asks": [["8000", "1.0"]], "bids": [["7990", "2"]]}, 10),
                         {})

    def test_changed_new_and_removed_levels(self):
        """Changed amounts, new levels and removed levels (amount "0"), per side."""
        old = {"asks": [["8000", "1"], ["8010", "2"], ["8020", "3"]], "bids": [["7990", "1"]]}
        new = {"asks": [["7995", "5"], ["8000", "0.5"], ["8020", "3"]], "bids": [["7990", "1"]]}
        self.assertEqual(diff(old, new, 10), {"asks": [["7995", "5"], ["8000", "0.5"],
                                                       ["8010", "0"]]})

    def test_bids_descending(self):
        """Bids rank by descending price."""
        old = {"asks": [], "bids": [["7990", "1"], ["7980", "1"]]}
        new = {"asks": [], "bids": [["7995", "1"], ["7980", "1"]]}
        self.assertEqual(diff(old, new, 10), {"bids": [["7995", "1"], ["7990", "0"]]})

    def test_window(self):
        """Levels leaving the bottom of a full window are not reported; below the limit
        the old remaining levels are removed."""
        old = {"asks": [["1", "1"], ["2", "1"]], "bids": []}
        new = {"asks": [["0.5", "1"], ["1", "1"]], "bids": []}
        self.assertEqual(diff(old, new, 2), {"asks": [["0.5", "1"]]})
        self.assertEqual(diff(old, {"asks": [["1", "1"]], "bids": []}, 2),
                         {"asks": [["2", "0"]]})
        self.assertEqual(diff({"asks": [], "bids": []}, old, 2), {"asks": old["asks"]})
