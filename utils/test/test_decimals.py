"""Tests for utils.decimals: the arithmetic context, strict parsing and both string forms."""

import decimal
from decimal import Decimal

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from utils import decimals
from utils.decimals import InvalidDecimal, parse, quantize, to_display, to_raw


class ContextTests(SynchronousTestCase):

    def test_context_matches_original(self):
        """CONTEXT is decimal128-like with ROUND_DOWN, clamp, lower-case e and no traps."""
        ctx = decimals.CONTEXT
        self.assertEqual((ctx.prec, ctx.rounding, ctx.Emin, ctx.Emax, ctx.clamp, ctx.capitals),
                         (34, decimal.ROUND_DOWN, -6143, 6144, 1, 0))
        self.assertFalse(any(ctx.traps.values()))

    def test_install_context(self):
        """install_context makes operators truncate at 34 digits in the current thread."""
        saved = decimal.getcontext()
        self.addCleanup(decimal.setcontext, saved)
        ctx = decimals.install_context()
        self.assertIs(decimal.getcontext(), ctx)
        self.assertIsNot(ctx, decimals.CONTEXT)
        self.assertEqual(str(Decimal(2) / Decimal(3)), "0.6666666666666666666666666666666666")
        self.assertTrue((Decimal(0) / Decimal(0)).is_nan())

    def test_exponent_cache(self):
        """exponent(prec) is 1e-prec, cached for small precisions and computed beyond."""
        self.assertEqual(decimals.exponent(8).as_tuple(), (0, (1,), -8))
        self.assertIs(decimals.exponent(8), decimals.exponent(8))
        self.assertEqual(decimals.exponent(200).as_tuple(), (0, (1,), -200))


class ParseTests(SynchronousTestCase):

    def test_accepted_syntax(self):
        """Sign, fraction-only, trailing dot and exponents are accepted as written."""
        cases = {"12": "12", "12.": "12", ".5": "0.5", "12.50": "12.50", "-1.5": "-1.5",
                 "+3": "3", "1E+3": "1e+3", "1e-8": "1e-8", "-.5e3": "-5e+2", "0e-8": "0e-8",
                 "0": "0", "10": "10", "0.998": "0.998"}
        for text, raw in cases.items():
            self.assertEqual(to_raw(parse(text)), raw, text)

    def test_truncation_to_precision(self):
        """A positive prec truncates toward zero to exactly prec places (spec examples)."""
        self.assertEqual(to_raw(parse("10.123456789", 8)), "10.12345678")
        self.assertEqual(to_raw(parse("-1.999", 2)), "-1.99")
        self.assertEqual(to_raw(parse("8000", 8)), "8000.00000000")
        self.assertEqual(to_raw(parse("0", 8)), "0e-8")

    def test_prec_zero_keeps_exponent(self):
        """With prec 0 nothing is truncated (the original's behaviour)."""
        self.assertEqual(to_raw(parse("1.23456789012", 0)), "1.23456789012")
        self.assertEqual(to_raw(parse("0.5")), "0.5")

    def test_long_coefficient_cut_to_34_digits(self):
        """More than 34 significant digits are cut (ROUND_DOWN), not rounded."""
        value = parse("1" * 20 + "." + "9" * 20)
        self.assertEqual(len(value.as_tuple().digits), 34)
        self.assertEqual(to_raw(value), "1" * 20 + "." + "9" * 14)

    def test_rejects_junk(self):
        """Malformed strings raise InvalidDecimal."""
        for text in ["", " 1", "1 ", "\t1", "1\n", "1_000", "1,000", "abc", "1e", "e5", "--1",
                     "1.2.3", "0x10", "١٢", "1e+", ".", "+", "1 000"]:
            self.assertRaises(InvalidDecimal, parse, text)

    def test_rejects_non_finite(self):
        """NaN and infinities are refused (the original accepted them by accident)."""
        for text in ["NaN", "nan", "sNaN", "Inf", "-Infinity", "infinity"]:
            self.assertRaises(InvalidDecimal, parse, text)

    def test_rejects_non_strings(self):
        """Numbers, None and booleans are not decimal parameters."""
        for value in [1, 1.5, None, True, False, Decimal("1"), b"1", ["1"]]:
            self.assertRaises(InvalidDecimal, parse, value)

    def test_rejects_absurd_exponents(self):
        """Exponents far outside any money range are refused instead of overflowing."""
        for text in ["1e999999999", "1e-999999", "0e-99999", "1e101", "1e-101"]:
            self.assertRaises(InvalidDecimal, parse, text)
        self.assertEqual(to_raw(parse("1e100")), "1e+100")
        self.assertEqual(to_raw(parse("1e-100")), "1e-100")

    def test_rejects_values_too_wide_for_prec(self):
        """A value that cannot be quantised within 34 digits is refused, not NaN."""
        self.assertRaises(InvalidDecimal, parse, "1e30", 8)
        self.assertRaises(InvalidDecimal, parse, "1" * 27, 8)
        self.assertEqual(len(parse("1" * 26, 8).as_tuple().digits), 34)

    def test_negative_prec(self):
        """A negative precision is a programming error."""
        self.assertRaises(ValueError, parse, "1", -1)

    def test_is_valid(self):
        """is_valid mirrors parse."""
        self.assertTrue(decimals.is_valid("1.5", 2))
        self.assertFalse(decimals.is_valid("NaN"))
        self.assertFalse(decimals.is_valid(3))


class QuantizeTests(SynchronousTestCase):

    def test_truncates(self):
        """quantize truncates toward zero and sets the exponent exactly."""
        self.assertEqual(to_raw(quantize(Decimal("2.4999999999999"), 12)), "2.499999999999")
        self.assertEqual(to_raw(quantize(Decimal("-0.00000001999"), 8)), "-1e-8")
        self.assertEqual(to_raw(quantize(Decimal("7.9"), 0)), "7")
        self.assertEqual(to_raw(quantize(Decimal("1"), 33)), "1." + "0" * 33)
        self.assertEqual(to_raw(quantize(Decimal("0"), 70)), "0e-70")

    def test_overflow_raises(self):
        """Where the original produced NaN, quantize raises InvalidDecimal."""
        self.assertRaises(InvalidDecimal, quantize, Decimal("1e30"), 8)
        self.assertRaises(InvalidDecimal, quantize, Decimal("NaN"), 8)

    def test_scenario_values(self):
        """Values of the recorded HTTP scenario come out as the original printed them."""
        amount = parse("2.5", 8)
        fee = quantize(amount * parse("0.002", 4), 12)
        self.assertEqual(to_display(amount - amount), "0e-8")
        self.assertEqual(to_display(fee), "0.005")
        self.assertEqual(to_display(quantize(amount - fee, 12)), "2.495")
        self.assertEqual(to_display(quantize(parse("8005", 8) * amount, 20)), "20012.5")
        self.assertEqual(to_display(decimals.ZERO), "0")


class FormTests(SynchronousTestCase):

    def test_raw_form(self):
        """to_raw is to-sci-string with a lower-case e."""
        cases = [(("0", -8), "0e-8"), (("1", -8), "1e-8"), (("10", -8), "1.0e-7"),
                 (("1", 3), "1e+3"), (("800000000000", -8), "8000.00000000"),
                 (("1", -6), "0.000001"), (("1", -7), "1e-7"), (("-15", -1), "-1.5")]
        for (digits, exp), raw in cases:
            value = Decimal((digits.startswith("-"), tuple(int(c) for c in digits.lstrip("-")),
                             exp))
            self.assertEqual(to_raw(value), raw)

    def test_display_form(self):
        """to_display strips fractional zeros only when there is no exponent."""
        cases = {"8000.00000000": "8000", "0.50000000": "0.5",
                 "10.499923085000": "10.499923085", "0e-8": "0e-8", "1.0e-7": "1.0e-7",
                 "100": "100", "0.000000": "0", "0.00000000": "0e-8", "-2.50": "-2.5", "1e+3": "1e+3"}
        for text, display in cases.items():
            self.assertEqual(to_display(parse(text)), display, text)

    def test_known_texts(self):
        """KnownTexts gives both forms of a value, found again by identity only (an equal
        value with another exponent has other texts), and keeps the latest few."""
        known = decimals.KnownTexts(2)
        rate = parse("0.0010")
        entry = known.of(rate)
        self.assertEqual(entry, (rate, "0.0010", "0.001"))
        self.assertIs(known.of(rate), entry)
        self.assertEqual(known.of(parse("0.001"))[1:], ("0.001", "0.001"))
        self.assertEqual(known.of(parse("1e-3"))[1:], ("0.001", "0.001"))
        self.assertEqual(len(known.entries), 2)
        self.assertIsNot(known.of(rate), entry)       # forgotten, made again
        self.assertEqual(known.of(rate), entry)


finite_decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: len(d.as_tuple().digits) <= 34
    and abs(d.adjusted()) <= decimals.MAX_ADJUSTED_EXPONENT)


class PropertyTests(SynchronousTestCase):

    @settings(max_examples=500)
    @given(finite_decimals)
    def test_raw_round_trip(self, value):
        """parse(to_raw(d)) gives back d with the same coefficient and exponent."""
        parsed = parse(to_raw(value))
        self.assertEqual(parsed.as_tuple(), value.as_tuple())

    @settings(max_examples=500)
    @given(finite_decimals)
    def test_display_keeps_value(self, value):
        """The display form never changes the numeric value."""
        self.assertEqual(parse(to_display(value)), value)

    @settings(max_examples=1000)
    @given(st.text(alphabet="0123456789.e+-\u00e9", max_size=12) | finite_decimals.map(to_raw))
    def test_display_of_rule(self, text):
        """display_of (worked out in C when compiled) drops trailing fractional zeros, and
        the point they leave last, from a text with a point and no exponent; it gives any
        other text back as it is, non-ASCII ones included."""
        if "." in text and "e" not in text and text.endswith("0"):
            expected = text.rstrip("0")
            expected = expected[:-1] if expected.endswith(".") else expected
        else:
            expected = text
        self.assertEqual(decimals.display_of(text), expected)

    @settings(max_examples=300)
    @given(st.text(max_size=12) | finite_decimals.map(to_raw))
    def test_negated(self, text):
        """negated (worked out in C when compiled) puts a minus sign before any text."""
        self.assertEqual(decimals.negated(text), "-" + text)

    @settings(max_examples=300)
    @given(finite_decimals, st.integers(min_value=1, max_value=20))
    def test_parse_with_prec_truncates(self, value, prec):
        """parse with prec has exactly prec places and never moves away from zero."""
        try:
            parsed = parse(to_raw(value), prec)
        except InvalidDecimal:
            self.assertGreater(value.adjusted() + prec + 1, 34)
            return
        self.assertEqual(parsed.as_tuple().exponent, -prec)
        self.assertLessEqual(abs(parsed), abs(value))
        self.assertLess(abs(value - parsed), Decimal((0, (1,), -prec)))
