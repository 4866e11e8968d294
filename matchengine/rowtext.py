# -*- test-case-name: matchengine.test.test_rowtext -*-
"""The text of history rows, as the writer hands them to MySQL: the VALUES of an INSERT,
or the lines of a LOAD DATA.

`values_text(rows, kinds)` writes each row (a tuple) as `(v1, v2, ...)`, the rows joined by
", ".  `kinds` gives each column's kind, a letter a column: "t" a time, to the microsecond
("%.6f"); "i" an integer; "d" a decimal's raw text (digits, a point, a sign), quoted as it
is; "s" free text, quoted, and escaped as PyMySQL escapes it when it holds a character that
MySQL's quoting needs escaped (a text with none goes in as it is).

`fields_text(rows, kinds)` writes them as LOAD DATA reads them by default, UTF-8: a line
a row, its values separated by tabs, unquoted; a text's backslashes, tabs, line feeds,
carriage returns and NULs escaped by a backslash.

Compiled (matchengine/rowtext.pxd), the text is written by C in one pass; a value of
another type than these columns hold (a bool, an int beyond 64 bits) sends the rows to
the interpreter's way, which gives the same text.
"""

from pymysql.converters import escape_string

from utils.mysql import needs_escape

try:
    import cython
except ImportError:         # run uncompiled, without Cython installed
    from utils import pure_cython as cython

__all__ = ["values_text", "compiled_text", "fields_text", "compiled_fields"]

_FORMATS = {"t": "%.6f", "i": "%d", "d": "'%s'", "s": "'%s'"}
_FIELDS = {"t": "%.6f", "i": "%d", "d": "%s", "s": "%s"}
_forms = {}     # kinds -> (row format, indexes of the "s" columns)
_field_forms = {}
# what LOAD DATA reads escaped, each after a backslash
_FIELD_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r",
                                "\x00": "\\0"})


def values_text(rows, kinds: str) -> str:
    """The rows as the VALUES list of a multi-row INSERT."""
    text = compiled_text(rows, kinds)
    return text if text is not None else _values_in_python(rows, kinds)


def compiled_text(rows, kinds: str):
    """The C writer's text of the rows: None uncompiled, or for a value of another type
    than its column holds."""
    return _rows_text(rows, kinds, 0) if cython.compiled else None


def fields_text(rows, kinds: str) -> bytes:
    """The rows as the lines of a LOAD DATA, in UTF-8."""
    text = compiled_fields(rows, kinds)
    return text if text is not None else _fields_in_python(rows, kinds)


def compiled_fields(rows, kinds: str):
    """The C writer's lines of the rows: None uncompiled, or for a value of another type
    than its column holds."""
    return _rows_text(rows, kinds, 1) if cython.compiled else None


def _fields_in_python(rows, kinds):
    known = _field_forms.get(kinds)
    if known is None:
        known = _field_forms[kinds] = ("\t".join(_FIELDS[k] for k in kinds) + "\n",
                                       tuple(n for n, k in enumerate(kinds) if k == "s"))
    form, texts = known
    lines = []
    append = lines.append
    for row in rows:
        if texts:
            row = tuple(value.translate(_FIELD_ESCAPES) if n in texts else value
                        for n, value in enumerate(row))
        append(form % row)
    return "".join(lines).encode("utf-8")


def _values_in_python(rows, kinds):
    known = _forms.get(kinds)
    if known is None:
        known = _forms[kinds] = ("(%s)" % ", ".join(_FORMATS[k] for k in kinds),
                                 tuple(n for n, k in enumerate(kinds) if k == "s"))
    form, texts = known
    values = []
    append = values.append
    for row in rows:
        for index in texts:
            if needs_escape(row[index]):
                row = tuple(escape_string(value) if n in texts and needs_escape(value)
                            else value for n, value in enumerate(row))
                break
        append(form % row)
    return ", ".join(values)
