# -*- test-case-name: utils.test.test_handoff -*-
"""Batches written for `marshal.loads` (compiled: by the C writer of utils/handoff.pxd)."""

import marshal

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from utils.handoff import FRAME, MAX_DEPTH, dumps, dumps_framed

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
           | st.text(alphabet="abc", max_size=400) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                      | st.lists(inner, max_size=6).map(tuple), max_leaves=60)


def again(value):
    return marshal.loads(dumps(value))


class RoundTripTests(SynchronousTestCase):

    @given(values)
    def test_read_back_equal(self, value):
        """Whatever the batch holds, marshal reads back the same types and values (repr
        tells a bool from an int, -0.0 from 0.0, a tuple from a list)."""
        self.assertEqual(repr(again(value)), repr(value))

    @given(st.lists(values, min_size=1, max_size=8), st.lists(st.integers(0, 200), max_size=80))
    def test_shared_objects(self, pool, picks):
        """Rows made of the same objects again and again, as the matchengine's are."""
        batch = [(pool[i % len(pool)], i, pool[(i * 7) % len(pool)]) for i in picks]
        batch.append(tuple(batch))
        self.assertEqual(repr(again(batch)), repr(batch))

    def test_boundaries(self):
        batch = [2 ** 31 - 1, 2 ** 31, -2 ** 31, -2 ** 31 - 1, 2 ** 70, -2 ** 70, 0, -1,
                 "x" * 255, "y" * 256, "z" * 70000, "", "caf\u00e9 \u4e2d", "\ud800 lone",
                 "\U0001f600", 1e300, -0.0, float("inf"), (), [], tuple(range(300)),
                 list(range(300)), True, False, None, b"bytes", 3 + 4j, frozenset([1])]
        self.assertEqual(repr(again(batch)), repr(batch))

    def test_repeats_are_references(self):
        """A string or tuple met again is read back as the same object."""
        text = "".join(["BTC", "BCH"])
        row = (1700000000.5, 7, text)
        back = again([row, row, text, (text, text)])
        self.assertIs(back[0], back[1])
        self.assertIs(back[2], back[0][2])
        self.assertIs(back[3][0], back[2])
        self.assertIs(back[3][1], back[2])

    def test_many_strings_met_twice(self):
        """More repeated strings than the writer keeps: those it forgot are written again,
        the references of the others still point at the right ones."""
        texts = ["text %d" % n for n in range(5000)]
        batch = [(a, b) for a, b in zip(texts, texts[::-1])] + texts + texts[::3]
        self.assertEqual(again(batch), batch)

    def test_deep_nesting(self):
        """Containers nested deeper than the C writer goes are written by marshal."""
        value = ("leaf", 1)
        for n in range(MAX_DEPTH * 3):
            value = (value, n) if n % 2 else [value, "n%d" % n]
        self.assertEqual(again(value), value)

    def test_unmarshallable(self):
        with self.assertRaises(ValueError):
            dumps([("row", object())])

    def test_framed(self):
        """The length (4 bytes, big-endian), then the batch; batches after a large one
        are written from the buffer kept."""
        for batch in ([("a", 1)] * 3, [("x" * 1000, n) for n in range(20000)], [], (1,)):
            framed = dumps_framed(batch)
            (size,) = FRAME.unpack_from(framed)
            self.assertEqual(size, len(framed) - FRAME.size)
            self.assertEqual(marshal.loads(framed[FRAME.size:]), batch)
