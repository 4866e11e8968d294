# -*- test-case-name: utils.test.test_jsonfmt -*-
"""JSON text exactly as the original's jansson writes it, and read as strictly as it reads.

Compact form separates items with ", " and keys with ": "; the pretty form (a module's
`debug` setting) indents by four spaces.  Non-ASCII text is written as raw UTF-8.  Reals
(every time stamp) are written with C's "%.17g", with ".0" added when the result looks like
an integer, and an exponent without "+" or leading zeros: 1795561714.368599 is written
1795561714.3685989.

`loads` refuses what jansson refuses: integers beyond 64 bits, reals beyond a double, NaN
and Infinity, the character NUL, nesting deeper than `MAX_DEPTH`.

Objects without floats take the C encoder; objects with floats are written by a small
recursive writer (floats only appear in small messages: order info, deals, balances).
"""

import json
import math
import re

try:
    import cython
except ImportError:         # run uncompiled, without Cython installed
    from utils import pure_cython as cython

__all__ = ["DIGITS", "SCALAR_TEXTS", "dumps", "format_real", "int_text", "loads", "quote",
           "RawJSON", "TextTable", "real_text"]

_compact = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), allow_nan=False)
_pretty = json.JSONEncoder(ensure_ascii=False, indent=4, separators=(",", ": "),
                           allow_nan=False)
# a string as JSON text, non-ASCII kept as it is (ensure_ascii=False)
quote = json.encoder.encode_basestring

# the texts of 0 to 9, for the small integers of the messages (order types, sides, events)
DIGITS = tuple(str(n) for n in range(10))

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# arrays and objects nested deeper are refused: a value read at any depth of the stack must
# be written out again and read back (the operation log's entries are, at recovery) within
# the interpreter's recursion limit
MAX_DEPTH = 100


def _int64(text):
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError("integer %s out of 64-bit range" % text)
    return value


def _finite_real(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("real %s out of range" % text)
    return value


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


_strict = json.JSONDecoder(parse_int=_int64, parse_float=_finite_real,
                           parse_constant=_no_constant)
_scan = _strict.scan_once       # the C scanner: one value from an offset, and where it ends


def loads(text: str):
    """The value of a JSON text, refused (ValueError) where jansson refuses it: an integer
    beyond 64 bits (a backend would refuse the whole packet), a real beyond a double, NaN or
    Infinity, nesting deeper than `MAX_DEPTH`, the character NUL (jansson refuses it unless
    asked), a surrogate code point not paired."""
    try:
        if text[:1] == "[" or text[:1] == "{":
            # the common case, a text that is one array or object and nothing around it,
            # straight to the scanner (the decoder's skipping of white space, by regular
            # expressions, cost a request's parameters a quarter of their parsing)
            try:
                value, end = _scan(text, 0)
            except StopIteration:
                end = -1        # not JSON: the decoder says why
            if end != len(text):
                value = _strict.decode(text)
        else:
            value = _strict.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    # no value nests deeper than the text has openings, strings' brackets counted as well
    if text.count("[") + text.count("{") > MAX_DEPTH:
        _refuse_deep(value)
    # NUL and a lone surrogate come escaped (a lone surrogate also raw, from bytes decoded
    # with surrogatepass): NUL is what C strings end at, no UTF-8 holds a lone surrogate, and
    # the value would fail where it is written out (an operation-log entry, an order's JSON,
    # a Kafka message), after the state changed
    if "\\" in text or not text.isascii():       # one character: found by memchr
        _refuse_odd_characters(value)
    return value


def _refuse_deep(value):
    """ValueError when arrays and objects nest in `value` deeper than `MAX_DEPTH`."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError("JSON nested deeper than %d" % MAX_DEPTH)
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        stack.extend((inner, depth + 1) for inner in item
                     if isinstance(inner, (list, dict)))


_ODD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _refuse_odd_characters(value):
    """ValueError when a string of `value`, key or value, holds NUL or a surrogate code point
    (the decoder joins an escaped pair into one character: what is left is alone)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _ODD_CHARACTER.search(item)
            if found is not None:
                if found.group() == "\x00":
                    raise ValueError("NUL is not allowed in a string")
                raise ValueError("invalid Unicode: a surrogate code point not paired")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())


# the latest float written and its text: a command writes its time in many places
# (compiled, two C variables)
_last_float = None
_last_text = ""


def int_text(value: int) -> str:
    """`str(value)`: compiled, worked out in C for an int within 64 bits (the ids of orders
    and deals), a fifth of the cost of the interpreter's conversion."""
    if cython.compiled:
        text = _int_text(value)
        if text is not None:
            return text
    return str(value)


def format_real(x: float) -> str:
    """A float as jansson prints it ("%.17g", always recognisably a real)."""
    global _last_float, _last_text
    if _last_float is x:    # the same float object: floats are immutable, so the same text
        return _last_text
    text = real_text(x)
    _last_float, _last_text = x, text
    return text


def real_text(x):
    """`format_real`'s text, worked out at each call: it keeps nothing, so that any thread
    may call it (the operation log's does)."""
    if cython.compiled and x.__class__ is float:
        # compiled, a time stamp's text is worked out in C (utils/jsonfmt.pxd)
        text = _time_text(x)
        if text is not None:
            return text
    if not math.isfinite(x):
        raise ValueError("%r is not allowed in JSON" % x)
    text = "%.17g" % x
    if "e" in text:
        mantissa, exp = text.split("e")
        sign = "-" if exp[0] == "-" else ""
        return "%se%s%s" % (mantissa, sign, exp.lstrip("+-").lstrip("0") or "0")
    if "." not in text:
        text += ".0"
    return text


def _has_float(obj):
    if obj.__class__ is float:
        return True
    if obj.__class__ is dict:
        return any(_has_float(v) for v in obj.values())
    if obj.__class__ in (list, tuple):
        return any(_has_float(v) for v in obj)
    return False


def _write(obj, parts, indent, level):
    cls = obj.__class__
    if cls is float:
        parts.append(format_real(obj))
    elif cls is str:
        parts.append(quote(obj))
    elif obj is None:
        parts.append("null")
    elif obj is True:
        parts.append("true")
    elif obj is False:
        parts.append("false")
    elif cls is int or isinstance(obj, int):
        parts.append(int.__repr__(obj))
    elif isinstance(obj, dict):
        if not obj:
            parts.append("{}")
            return
        if indent:
            inner = "\n" + " " * (indent * (level + 1))
            parts.append("{")
            first = True
            for key, value in obj.items():
                parts.append(inner if first else "," + inner)
                first = False
                parts.append(quote(str(key)))
                parts.append(": ")
                _write(value, parts, indent, level + 1)
            parts.append("\n" + " " * (indent * level) + "}")
        else:
            parts.append("{")
            first = True
            for key, value in obj.items():
                if not first:
                    parts.append(", ")
                first = False
                parts.append(quote(str(key)))
                parts.append(": ")
                _write(value, parts, indent, level)
            parts.append("}")
    elif isinstance(obj, (list, tuple)):
        if not obj:
            parts.append("[]")
            return
        if indent:
            inner = "\n" + " " * (indent * (level + 1))
            parts.append("[")
            first = True
            for value in obj:
                parts.append(inner if first else "," + inner)
                first = False
                _write(value, parts, indent, level + 1)
            parts.append("\n" + " " * (indent * level) + "]")
        else:
            parts.append("[")
            first = True
            for value in obj:
                if not first:
                    parts.append(", ")
                first = False
                _write(value, parts, indent, level)
            parts.append("]")
    elif isinstance(obj, float):
        parts.append(format_real(float(obj)))
    elif isinstance(obj, str):
        parts.append(quote(str(obj)))
    else:
        raise TypeError("%r is not JSON serializable" % (obj,))


@cython.cclass
class TextTable:
    """The texts of values that repeat from one request to the next (users, markets,
    prices, sources), made by `make` and kept; past `kept` of them, all are forgotten at
    once."""

    __slots__ = ("make", "kept", "texts")

    def __init__(self, make, kept):
        self.make = make
        self.kept = kept
        self.texts = {}

    def of(self, value) -> str:
        text = self.texts.get(value)
        if text is None:
            if len(self.texts) >= self.kept:
                self.texts.clear()
            text = self.texts[value] = self.make(value)
        return text


def scalar_json(value):
    """The JSON text of an integer or a string."""
    return str(value) if type(value) is int else quote(value)


# the JSON texts of the integers and strings written again and again: users, markets,
# prices, amounts, fee rates and sources, in the operation log, the orders and the deals
SCALAR_TEXTS = TextTable(scalar_json, 100000)


class RawJSON:
    """A value that is already JSON text (bytes or str); written into a reply as is."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text.encode() if isinstance(text, str) else text

    def value(self):
        """The decoded value (for the pretty form and for tests)."""
        return json.loads(self.text)


def dumps(obj, pretty: bool = False) -> str:
    """The jansson text of `obj` (compact, or indented by 4 with `pretty`)."""
    if not _has_float(obj):
        return (_pretty if pretty else _compact).encode(obj)
    parts = []
    _write(obj, parts, 4 if pretty else 0, 0)
    return "".join(parts)
