# -*- test-case-name: matchengine.test.test_rowtext -*-
"""The text of history rows, as INSERT values and as LOAD DATA lines: the compiled
writer's text is the interpreter's."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from matchengine import rowtext
from matchengine.rowtext import _fields_in_python, _values_in_python, fields_text, values_text
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


def read_fields(data, kinds):
    """The rows back from LOAD DATA lines, as the server reads its default format: texts
    unescaped, the other columns as the text they are written as."""
    escapes = {"0": "\x00", "t": "\t", "n": "\n", "r": "\r", "\\": "\\"}
    rows = []
    for line in data.decode("utf-8").split("\n")[:-1]:
        fields, field, index = [], [], 0
        while index < len(line):
            c = line[index]
            if c == "\\":
                index += 1
                field.append(escapes[line[index]])
            elif c == "\t":
                fields.append("".join(field))
                field = []
            else:
                field.append(c)
            index += 1
        fields.append("".join(field))
        rows.append(tuple(fields))
        assert len(fields) == len(kinds), line
    return rows


class FieldsTextTests(SynchronousTestCase):

    @given(rows)
    def test_as_the_interpreter_writes_them(self, batch):
        self.assertEqual(fields_text(batch, KINDS), _fields_in_python(batch, KINDS))

    @given(rows)
    def test_read_back_as_given(self, batch):
        """Each line holds its row's values: texts whole, whatever they hold; times and
        integers as the INSERT writes them; decimals as they are."""
        want = [("%.6f" % t, "%d" % i, d, s1, s2) for t, i, d, s1, s2 in batch]
        self.assertEqual(read_fields(fields_text(batch, KINDS), KINDS), want)

    def test_examples(self):
        self.assertEqual(fields_text([(1.5, 7, "-0.5", "it's", "x")], KINDS),
                         b"1.500000\t7\t-0.5\tit's\tx\n")
        self.assertEqual(fields_text([(1.0, 1, "1", "a\tb\\N", "c\x00\r\n\u00e9"),
                                      (2.0, -2, "2.5", "", "")], KINDS),
                         b"1.000000\t1\t1\ta\\tb\\\\N\tc\\0\\r\\n\xc3\xa9\n"
                         b"2.000000\t-2\t2.5\t\t\n")
        self.assertEqual(fields_text([], KINDS), b"")

    def test_compiled_fields_are_used(self):
        if not is_extension(rowtext):
            raise self.skipTest("matchengine.rowtext runs from its source")
        self.assertEqual(rowtext.compiled_fields([(1.5, 7, "1", "a", "b")], KINDS),
                         b"1.500000\t7\t1\ta\tb\n")
        self.assertIsNone(rowtext.compiled_fields([(1.5, True, "1", "a", "b")], KINDS))
        self.assertEqual(fields_text([(1.5, True, "1", "a", "b")], KINDS),
                         b"1.500000\t1\t1\ta\tb\n")
