# -*- test-case-name: utils.test.test_jsonfmt -*-
"""jansson's JSON text."""

import json
import math
import random

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from utils import jsonfmt
from utils.jsonfmt import dumps, format_real, int_text


class RealTests(SynchronousTestCase):

    def test_examples(self):
        """%.17g with .0 for integral values, exponent without + or leading zeros."""
        self.assertEqual(format_real(1795561714.368599), "1795561714.3685989")
        self.assertEqual(format_real(1795561714.0), "1795561714.0")
        self.assertEqual(format_real(0.1), "0.10000000000000001")
        self.assertEqual(format_real(1e-20), "9.9999999999999995e-21")
        self.assertEqual(format_real(1e300), "1.0000000000000001e300")
        self.assertEqual(format_real(-2.5), "-2.5")

    @given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=2))
    def test_repeated_values(self, xs):
        """The text of the latest real is kept for the same float object: calls in any
        order, with the same objects again, give each value's own text."""
        for x in xs + xs[::-1] + [xs[0], xs[0]]:
            self.assertEqual(format_real(x), jsonfmt.real_text(x))
        # equal values with different texts
        self.assertEqual([format_real(x) for x in (0.0, -0.0, 0.0, 1, 1.0, True)],
                         ["0.0", "-0.0", "0.0", "1.0", "1.0", "1.0"])

    def test_time_stamps(self):
        """Times from 2001 to 2286, which the compiled module writes without "%.17g" (see
        utils/jsonfmt.pxd), are written as "%.17g" writes them: to the microsecond or not,
        exact ties at the seventeenth digit (to even), the ends of the range."""
        rng = random.Random(9)
        times = [rng.uniform(1e9, 1e10) for _ in range(20000)]
        times += [math.floor(rng.uniform(1.6e9, 2.2e9) * 1e6 + 0.5) / 1e6
                  for _ in range(20000)]
        times += [k + j / 256 for k in (1e9, 1795561714, 9999999999) for j in range(256)]
        times += [math.nextafter(1e9, 0), math.nextafter(1e10, 0), 1e10, 9999999999.99999999]
        for x in times:
            text = "%.17g" % x
            if "e" not in text and "." not in text:
                text += ".0"
            if "e" not in text:
                self.assertEqual(format_real(x), text, repr(x))
        self.assertEqual(format_real(1e9 + 1 / 256), "1000000000.0039062")     # a tie, even
        self.assertEqual(format_real(1e9 + 3 / 256), "1000000000.0117188")     # a tie, up

    def test_text_table(self):
        """A TextTable makes each value's text once and keeps it, an integer and its digits
        apart; past its size it forgets everything and starts again."""
        made = []

        def make(value):
            made.append(value)
            return jsonfmt.quote(value) if type(value) is str else str(value)
        table = jsonfmt.TextTable(make, 3)
        self.assertEqual([table.of(v) for v in (7, "7", 7, "7", "BTCBCH")],
                         ["7", '"7"', "7", '"7"', '"BTCBCH"'])
        self.assertEqual(made, [7, "7", "BTCBCH"])
        self.assertEqual(table.of("é"), '"é"')      # a fourth: the table starts again
        self.assertEqual(len(table.texts), 1)
        self.assertEqual(table.of(7), "7")
        self.assertEqual(made, [7, "7", "BTCBCH", "é", 7])

    def test_non_finite_refused(self):
        """NaN and infinities are not JSON."""
        self.assertRaises(ValueError, format_real, float("nan"))
        self.assertRaises(ValueError, dumps, [float("inf")])

    @given(st.floats(allow_nan=False, allow_infinity=False))
    def test_value_preserved(self, x):
        """Every real reads back as the same double, and as a real."""
        text = format_real(x)
        self.assertEqual(float(text), x)
        self.assertTrue("." in text or "e" in text)


class IntTextTests(SynchronousTestCase):
    """`int_text` is `str` (compiled, a C conversion within 64 bits)."""

    def test_edges(self):
        for value in (0, 1, -1, 9, 10, -10, 2 ** 63 - 1, -2 ** 63, 2 ** 63, -2 ** 63 - 1,
                      10 ** 30, -10 ** 30, True, False):
            self.assertEqual(int_text(value), str(value), repr(value))
        self.assertIs(type(int_text(12)), str)

    @given(st.integers(min_value=-2 ** 70, max_value=2 ** 70))
    def test_same_as_str(self, value):
        self.assertEqual(int_text(value), str(value))


class DumpsTests(SynchronousTestCase):

    def test_compact(self):
        """Separators ", " and ": ", raw UTF-8, insertion order."""
        self.assertEqual(dumps({"b": 1, "a": ["x", None, True, "é/"]}),
                         '{"b": 1, "a": ["x", null, true, "é/"]}')

    def test_with_floats(self):
        """Objects holding floats use the same separators with %.17g reals."""
        self.assertEqual(dumps([1795561714.368599, "BTCBCH", 3, {"t": 1.0}, [], {}]),
                         '[1795561714.3685989, "BTCBCH", 3, {"t": 1.0}, [], {}]')

    def test_pretty_same_as_python(self):
        """The pretty form without floats is Python's indent=4 form."""
        obj = {"error": None, "result": {"a": [1, 2], "b": {}}, "id": 1}
        self.assertEqual(dumps(obj, True), json.dumps(obj, indent=4))

    def test_pretty_with_floats(self):
        """The pretty writer matches Python's layout too when floats are present."""
        obj = {"a": [1.5, {"b": 2.25}], "c": []}
        self.assertEqual(dumps(obj, True), json.dumps(obj, indent=4))

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() |
                        st.floats(allow_nan=False, allow_infinity=False),
                        lambda c: st.lists(c, max_size=4) |
                        st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=20))
    def test_parses_back(self, obj):
        """Whatever we write, a JSON parser reads back unchanged."""
        self.assertEqual(json.loads(dumps(obj)), obj)
        self.assertEqual(json.loads(dumps(obj, True)), obj)


class LoadsTests(SynchronousTestCase):

    def test_within_jansson_limits(self):
        self.assertEqual(jsonfmt.loads('[9223372036854775807, -9223372036854775808, 1.5e308,'
                                       ' "x", {"a": null}]'),
                         [(1 << 63) - 1, -(1 << 63), 1.5e308, "x", {"a": None}])

    def test_lone_surrogates_refused(self):
        """A surrogate code point not paired, escaped or raw (as bytes decoded with
        surrogatepass give it), is refused as jansson refuses it: no UTF-8 can hold it, so
        it would fail wherever the value is written out (a log entry, an order's JSON)."""
        for text in ['["s\\udfff"]', '["\\ud800"]', '[1, {"k": ["\\uDBFF x"]}]',
                     '{"\\udc80": 1}', '["a\\ud83d"]', '["\\ude00\\ud83d"]',
                     '["raw \ud800"]', '{"k": "raw \udfff"}']:
            with self.assertRaises(ValueError, msg=text) as caught:
                jsonfmt.loads(text)
            self.assertIn("surrogate", str(caught.exception))

    def test_nul_refused(self):
        """NUL, escaped in a key or a value, is refused as jansson refuses it (the original
        closes the connection): where a C string ends, the text would be cut short."""
        for text in ['["dep\\u0000osit"]', '[1, {"k": ["\\u0000"]}]', '{"a\\u0000": 1}']:
            with self.assertRaises(ValueError, msg=text) as caught:
                jsonfmt.loads(text)
            self.assertIn("NUL", str(caught.exception))
        self.assertEqual(jsonfmt.loads('["\\\\u0000"]'), ["\\u0000"])

    def test_nesting(self):
        """Arrays and objects nest up to MAX_DEPTH deep, at whatever depth of the stack the
        text is read; deeper is refused, though the interpreter could read it here, for the
        value must be written out and read back wherever it goes (the operation log)."""
        def nested(depth):
            return '{"a": ' * (depth - 1) + "[1]" + "}" * (depth - 1)

        limit = jsonfmt.MAX_DEPTH
        value = jsonfmt.loads(nested(limit))
        self.assertEqual(json.loads(jsonfmt.dumps(value)), value)
        self.assertEqual(jsonfmt.loads("[%s]" % nested(limit - 1)), [value["a"]])
        for text in (nested(limit + 1), "[%s]" % nested(limit), "[" * 500 + "]" * 500):
            with self.assertRaises(ValueError, msg=text[:20]) as caught:
                jsonfmt.loads(text)
            self.assertIn("nested deeper than %d" % limit, str(caught.exception))
        # brackets in strings are text: many of them, and no nesting, are fine
        self.assertEqual(jsonfmt.loads('["%s", {"k": "%s"}]' % ("[{" * 300, "{" * 300)),
                         ["[{" * 300, {"k": "{" * 300}])
        # wide rather than deep
        self.assertEqual(len(jsonfmt.loads("[%s]" % ", ".join(["[[]]"] * 300))), 300)

    def test_escapes_that_are_fine(self):
        """Pairs make one character; an escaped backslash before "ud800" is text."""
        self.assertEqual(jsonfmt.loads('["\\ud83d\\ude00", "\\u00e9\\u4e2d"]'),
                         ["\U0001f600", "\u00e9\u4e2d"])
        self.assertEqual(jsonfmt.loads('["\\\\ud800", "caf\u00e9"]'),
                         ["\\ud800", "caf\u00e9"])

    def test_around_the_value(self):
        """White space around the value is allowed, as json.loads allows it."""
        for text in ['[1, "a"]', ' [1, "a"]', '[1, "a"]\n', '\t[1, "a"] ', '[ 1 ,"a" ]']:
            self.assertEqual(jsonfmt.loads(text), [1, "a"], repr(text))
        self.assertEqual(jsonfmt.loads('{"a": [1]} '), {"a": [1]})
        self.assertEqual(jsonfmt.loads("7"), 7)

    def test_refused(self):
        """What jansson cannot read is a ValueError naming why."""
        for text, why in [("[9223372036854775808]", "out of 64-bit range"),
                          ("[-9223372036854775809]", "out of 64-bit range"),
                          ("[1e400]", "out of range"), ("[-1e400]", "out of range"),
                          ("[NaN]", "NaN is not JSON"), ("[-Infinity]", "is not JSON"),
                          ("[" * 100000 + "]" * 100000, "nested too deeply"),
                          ("[1", "Expecting"), ("[1] x", "Extra data"), ("{}{}", "Extra data"),
                          ("[1,]", "Expecting value"), ("", "Expecting value")]:
            with self.assertRaises(ValueError, msg=text[:30]) as caught:
                jsonfmt.loads(text)
            self.assertIn(why, str(caught.exception))
