# -*- test-case-name: matchengine.test.test_rowtext -*-
"""The VALUES text of history rows: the compiled writer's text is the interpreter's."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from matchengine import rowtext
from matchengine.rowtext import _values_in_python, values_text
from matchengine.test.test_compiled import is_extension

KINDS = "tidss"
TRICKY = ["it's", 'say "hi"', "back\\slash\\", "nul\x00byte", "line\nbreak\r", "ctrl-z\x1a",
          "caf\u00e9 \u4e2d \U0001f600", '{"a": "1"}', ""]

rows = st.lists(st.tuples(
    st.floats(allow_nan=False) | st.sampled_from([1700000000.123456, 1e-7, -0.0, 0.5e-6]),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{1,16})?", fullmatch=True),
    st.text() | st.sampled_from(TRICKY),
    st.text(alphabet="abc'\"\\\x00\n\r\x1a\u00e9", max_size=12)), max_size=20)


class ValuesTextTests(SynchronousTestCase):

    @given(rows)
    def test_as_the_interpreter_writes_it(self, batch):
        self.assertEqual(values_text(batch, KINDS), _values_in_python(batch, KINDS))

    @given(st.lists(st.floats(1e9, 1e10, exclude_max=True)
                    | st.integers(0, 1 << 30).map(lambda k: 1e9 + (2 * k + 1) / 128),
                    max_size=30))
    def test_times(self, times):
        """Times of these years, ties to the microsecond among them (an odd number of
        128ths is exactly half a microsecond over), written as "%.6f" writes them."""
        batch = [(x, 1, "1", "a", "b") for x in times]
        self.assertEqual(values_text(batch, KINDS), _values_in_python(batch, KINDS))

    def test_examples(self):
        self.assertEqual(values_text([(1.5, 7, "-0.5", "it's", "x")], KINDS),
                         "(1.500000, 7, '-0.5', 'it\\'s', 'x')")
        self.assertEqual(values_text([(1.0, 1, "1", 'a "b"', "c"),
                                      (2.0000004, -2, "2.5", 'a "b"\n', "")], KINDS),
                         "(1.000000, 1, '1', 'a \"b\"', 'c'), "
                         "(2.000000, -2, '2.5', 'a \\\"b\\\"\\n', '')")
        self.assertEqual(values_text([], KINDS), "")
        self.assertEqual(values_text([(1700000000.0078125, 1, "1", "a", "b"),
                                      (1700000000.0234375, 1, "1", "a", "b"),
                                      (9999999999.9999999, 1, "1", "a", "b")], "tidss"),
                         "(1700000000.007812, 1, '1', 'a', 'b'), "
                         "(1700000000.023438, 1, '1', 'a', 'b'), "
                         "(10000000000.000000, 1, '1', 'a', 'b')")

    def test_other_types_written_as_the_interpreter_writes_them(self):
        """A bool, an int beyond 64 bits, a time given as an int: the interpreter's text."""
        batch = [(5, True, "1", "a", "b"), (1.0, 1 << 70, "1", "a", "b"),
                 (float("inf"), 0, "1", "a", "b"), (1.0, -(1 << 63), "1", "a", "b"),
                 (1.0, (1 << 63) - 1, "1", "a", "b"), (1.0, 1 << 63, "1", "a", "b")]
        for row in batch:
            self.assertEqual(values_text([row], KINDS), _values_in_python([row], KINDS))
        self.assertEqual(values_text([(5, True, "1", "a", "b")], KINDS),
                         "(5.000000, 1, '1', 'a', 'b')")

    def test_compiled_text_is_used(self):
        """Compiled, the C writer answers for such rows (None only for other types)."""
        if not is_extension(rowtext):
            raise self.skipTest("matchengine.rowtext runs from its source")
        self.assertEqual(rowtext.compiled_text([(1.5, 7, "1", "a", "b")], KINDS),
                         "(1.500000, 7, '1', 'a', 'b')")
        self.assertIsNone(rowtext.compiled_text([(1.5, True, "1", "a", "b")], KINDS))
