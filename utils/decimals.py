# -*- test-case-name: utils.test.test_decimals -*-
"""Decimal arithmetic context, strict parsing and the two string forms of money values.

Every monetary value is a `decimal.Decimal` computed under `CONTEXT`, the original's
decimal128-like context: 34 significant digits, ROUND_DOWN for everything (including
quantisation), Emin -6143 / Emax 6144, clamp on, lower-case exponent, no traps.

Arithmetic helpers:

* `install_context()` makes a copy of `CONTEXT` the current thread's context, so that the
  ordinary operators (`a + b`, `a * b`, ...) round exactly like the original.  Call it once in
  the thread that does the matching (the reactor thread) before any arithmetic.
* `quantize(d, prec)` truncates to `prec` decimal places (exponent `-prec`).
* `parse(text, prec=0)` validates a decimal parameter as the original does, except that it
  rejects what the original's parser let through by accident (NaN, infinities) and absurd
  exponents.

String forms (every decimal leaves the process as a string):

* `to_raw(d)` -- scientific string with a lower-case `e` (`0e-8`, `8000.00000000`, `1e+3`);
* `to_display(d)` -- the raw form with trailing fractional zeros removed when it has no
  exponent (`8000`, `0.5`, `0e-8`).

`raw_among(known, d)` takes the raw form from texts already made for the same objects.

`KnownTexts` keeps both forms of the few values written again and again; `RATE_TEXTS` is the
one the matching modules share for fee rates.
"""

import decimal
from decimal import ROUND_DOWN, Context, Decimal

try:
    import cython
except ImportError:         # run uncompiled, without Cython installed
    from utils import pure_cython as cython

__all__ = [
    "CONTEXT", "InvalidDecimal", "KnownTexts", "MAX_ADJUSTED_EXPONENT", "RATE_TEXTS", "WIDE",
    "ZERO", "ONE", "TEN",
    "display_of", "exponent", "install_context", "is_valid", "negated", "parse", "quantize",
    "raw_among", "to_display", "to_raw",
]

CONTEXT = Context(prec=34, rounding=ROUND_DOWN, Emin=-6143, Emax=6144,
                  clamp=1, capitals=0, flags=[], traps=[])

# Where a stored value is cut to its places ("rescaled"): the original's rescale keeps every
# digit the places need, whatever the 34 of the context, where quantising under CONTEXT gives
# NaN (a balance that a fill takes past 10^14 at 20 places).  Sums and products stay in
# CONTEXT, whose 34 digits they are cut to, as in the original.
WIDE = Context(prec=decimal.MAX_PREC, rounding=ROUND_DOWN, Emin=decimal.MIN_EMIN,
               Emax=decimal.MAX_EMAX, flags=[], traps=[])

# Same arithmetic, but conversion syntax errors raise instead of silently giving NaN.
_PARSE_CONTEXT = CONTEXT.copy()
_PARSE_CONTEXT.traps[decimal.InvalidOperation] = True

# Parsed values whose adjusted exponent (position of the most significant digit) lies beyond
# this bound are refused: no price, amount or fee rate is that large or that small, and such
# values could only make later quantisation fail.
MAX_ADJUSTED_EXPONENT = 100

ZERO = Decimal(0)
ONE = Decimal(1)
TEN = Decimal(10)

_EXPONENT_CACHE_SIZE = 64
_EXPONENTS = tuple(Decimal((0, (1,), -prec)) for prec in range(_EXPONENT_CACHE_SIZE))

_create_decimal = _PARSE_CONTEXT.create_decimal
_to_sci_string = CONTEXT.to_sci_string


class InvalidDecimal(ValueError):
    """The text is not an acceptable decimal value (callers answer "invalid argument")."""


def exponent(prec: int) -> Decimal:
    """Return the quantisation target `1e-prec` (cached for the usual precisions)."""
    if 0 <= prec < _EXPONENT_CACHE_SIZE:
        return _EXPONENTS[prec]
    return Decimal((0, (1,), -prec))


def install_context() -> Context:
    """Make a copy of CONTEXT the current thread's decimal context and return it."""
    ctx = CONTEXT.copy()
    decimal.setcontext(ctx)
    return ctx


def quantize(d: Decimal, prec: int) -> Decimal:
    """Truncate `d` (ROUND_DOWN) to exactly `prec` decimal places.

    Raises InvalidDecimal when the result would need more than 34 digits (what is
    refused as input) or when `d` is not finite.
    """
    if 0 <= prec < _EXPONENT_CACHE_SIZE:
        exp = _EXPONENTS[prec]
    else:
        exp = Decimal((0, (1,), -prec))
    result = d.quantize(exp, ROUND_DOWN, CONTEXT)
    if not result.is_finite():
        raise InvalidDecimal("cannot quantize {} to {} decimal places".format(d, prec))
    return result


def parse(text: str, prec: int = 0) -> Decimal:
    """Parse a decimal parameter strictly.

    `text` must be a str in the General Decimal Arithmetic number syntax with ASCII digits:
    optional sign, digits with an optional fraction (`12`, `12.`, `.5`), optional exponent;
    no whitespace, underscores or separators.  A coefficient longer than 34 digits is cut to
    34 significant digits.  With `prec` > 0 the value is truncated to `prec` decimal places;
    with `prec` 0 it keeps the exponent it was written with.

    Raises InvalidDecimal for anything else: non-str input (numbers, None, bool), non-finite
    values (NaN, Infinity), adjusted exponents beyond +/-MAX_ADJUSTED_EXPONENT, and values
    that do not fit 34 digits once truncated to `prec` places.
    """
    if not isinstance(text, str):
        raise InvalidDecimal("expected a decimal string, got {}".format(type(text).__name__))
    if not text.isascii():
        raise InvalidDecimal("invalid decimal {!r}".format(text))
    try:
        value = _create_decimal(text)
    except decimal.InvalidOperation:
        raise InvalidDecimal("invalid decimal {!r}".format(text)) from None
    if not value.is_finite():
        raise InvalidDecimal("invalid decimal {!r}: not a finite number".format(text))
    if not -MAX_ADJUSTED_EXPONENT <= value.adjusted() <= MAX_ADJUSTED_EXPONENT:
        raise InvalidDecimal("invalid decimal {!r}: exponent out of range".format(text))
    if prec:
        if prec < 0:
            raise ValueError("precision must not be negative: {}".format(prec))
        exp = _EXPONENTS[prec] if prec < _EXPONENT_CACHE_SIZE else exponent(prec)
        value = value.quantize(exp, ROUND_DOWN, CONTEXT)
        if value.is_nan():
            raise InvalidDecimal("invalid decimal {!r}: too many digits for {} decimal "
                                 "places".format(text, prec))
    return value


def is_valid(text: object, prec: int = 0) -> bool:
    """Whether `parse(text, prec)` would succeed."""
    try:
        parse(text, prec)  # type: ignore[arg-type]
    except InvalidDecimal:
        return False
    return True


# to_raw(d): the raw form, to-sci-string with a lower-case exponent (`0e-8`, `1.0e-7`,
# `8000.00`).  The context's own method, with no wrapper: history rows call it many times.
to_raw = _to_sci_string


def raw_among(known, value) -> str:
    """`to_raw(value)`, or the text `known` gives for it: `known` is None or a flat tuple of
    (value, raw text) pairs, matched by identity (the same object means the same digits and
    exponent; an equal value may be written otherwise)."""
    if known is not None:
        for index in range(0, len(known), 2):
            if known[index] is value:
                return known[index + 1]
    return _to_sci_string(value)


def negated(text: str) -> str:
    """The raw text of a positive value negated, from its own raw text."""
    if cython.compiled:
        # compiled, copied in C (utils/decimals.pxd) for an ASCII text
        out = _negated_text(text)
        if out is not None:
            return out
    return "-" + text


def to_display(d: Decimal) -> str:
    """The display form: the raw form without trailing fractional zeros when it has no `e`.

    `8000.00000000` -> `8000`, `0.50` -> `0.5`, `0e-8` and `1.0e-7` unchanged, `100` unchanged.
    """
    return display_of(_to_sci_string(d))


def display_of(text: str) -> str:
    """The display form of a raw text (see `to_display`)."""
    if cython.compiled:
        # compiled, worked out in C (utils/decimals.pxd) for an ASCII text
        shown = _display_text(text)
        if shown is not None:
            return shown
    last = len(text) - 1
    if text[last] != "0" or "." not in text or "e" in text:
        return text
    while text[last] == "0":    # stops at the point at the latest
        last -= 1
    return text[:last] if text[last] == "." else text[:last + 1]


@cython.cclass
class KnownTexts:
    """The raw and display texts of the latest few values asked for, found by identity: for
    values that are few and parsed once each (fee rates), where the same object means the
    same value and the same exponent."""

    __slots__ = ("kept", "entries")

    def __init__(self, kept):
        self.kept = kept
        self.entries = []    # [(value, raw, display)], latest first

    def of(self, value) -> tuple:
        """`(value, to_raw(value), to_display(value))`."""
        for entry in self.entries:
            if entry[0] is value:
                return entry
        raw = _to_sci_string(value)
        entry = (value, raw, display_of(raw))
        self.entries.insert(0, entry)
        del self.entries[self.kept:]
        return entry


# the texts of the latest fee rates (few, and each parsed once), for the orders' texts and
# history rows
RATE_TEXTS = KnownTexts(8)
