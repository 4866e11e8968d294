# Compiled with the matching modules (see setup.py); the .py stays the source.
cimport cython

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include "utils/buffer.h"
    #include "utils/digits.h"
    #include "utils/exact_time.h"

    /* a text single-quoted: as it is, or with the characters PyMySQL's escape_string
       escapes (it escapes double quotes too, once it escapes anything) */
    static int viabtc_text_quoted(viabtc_buffer *t, const char *data, Py_ssize_t size,
                                  int escapable) {
        Py_ssize_t i;
        int plain = 1;
        if (escapable)
            for (i = 0; i < size; i++) {
                char c = data[i];
                if (c == '\\\\' || c == '\\'' || c == 0 || c == '\\n' || c == '\\r' || c == 26) {
                    plain = 0;
                    break;
                }
            }
        if (viabtc_room(t, 2 * size + 2) < 0) return -1;
        t->buf[t->len++] = '\\'';
        if (plain) {
            memcpy(t->buf + t->len, data, size);
            t->len += size;
        } else {
            for (i = 0; i < size; i++) {
                char c = data[i], out = 0;
                switch (c) {
                case 0: out = '0'; break;
                case '\\\\': out = '\\\\'; break;
                case '\\n': out = 'n'; break;
                case '\\r': out = 'r'; break;
                case 26: out = 'Z'; break;
                case '"': out = '"'; break;
                case '\\'': out = '\\''; break;
                }
                if (out) { t->buf[t->len++] = '\\\\'; t->buf[t->len++] = out; }
                else t->buf[t->len++] = c;
            }
        }
        t->buf[t->len++] = '\\'';
        return 0;
    }

    /* "%.6f" of a time stamp from 1e9 to 1e10 (the years 2001 to 2286), as the interpreter
       writes it: its exact binary value rounded to the microsecond, to nearest with ties to
       even (utils/exact_time.h).  Other values by the interpreter's own conversion. */
    static int viabtc_text_time(viabtc_buffer *t, double x) {
        if (x >= 1e9 && x < 1e10) {
            char out[24], *at = out + sizeof out;
            int i;
            uint64_t quotient = viabtc_scaled_time(x, 1000000u), whole, micros;
            whole = quotient / 1000000u;
            micros = quotient % 1000000u;
            for (i = 0; i < 6; i++) { *--at = (char)('0' + micros % 10); micros /= 10; }
            *--at = '.';
            do { *--at = (char)('0' + whole % 10); whole /= 10; } while (whole);
            return viabtc_add(t, at, out + sizeof out - at);
        } else {
            char *text = PyOS_double_to_string(x, 'f', 6, 0, NULL);
            int done;
            if (text == NULL) return -1;
            done = viabtc_add(t, text, (Py_ssize_t)strlen(text));
            PyMem_Free(text);
            return done;
        }
    }

    /* a text as a field of LOAD DATA's default format: a backslash before each backslash,
       tab, line feed, carriage return and NUL (written "0"); as it is when it has none */
    static int viabtc_text_field(viabtc_buffer *t, const char *data, Py_ssize_t size) {
        Py_ssize_t i;
        if (viabtc_room(t, 2 * size) < 0) return -1;
        for (i = 0; i < size; i++) {
            char c = data[i], out = 0;
            switch (c) {
            case 0: out = '0'; break;
            case '\\\\': out = '\\\\'; break;
            case '\\t': out = 't'; break;
            case '\\n': out = 'n'; break;
            case '\\r': out = 'r'; break;
            }
            if (out) { t->buf[t->len++] = '\\\\'; t->buf[t->len++] = out; }
            else t->buf[t->len++] = c;
        }
        return 0;
    }

    /* 1 written, 0 a value of another type than its column holds, -1 an error; `fields`:
       as a field of LOAD DATA, not a literal of an INSERT */
    static int viabtc_text_value(viabtc_buffer *t, PyObject *value, char kind, int fields) {
        if (kind == 't') {
            if (!PyFloat_CheckExact(value)) return 0;
            return viabtc_text_time(t, PyFloat_AS_DOUBLE(value)) < 0 ? -1 : 1;
        }
        if (kind == 'i') {
            char digits[24], *at;
            int overflow;
            long long number;
            if (!PyLong_CheckExact(value)) return 0;
            number = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow) return 0;
            if (number == -1 && PyErr_Occurred()) return -1;
            at = viabtc_digits(number, digits + sizeof digits);
            return viabtc_add(t, at, digits + sizeof digits - at) < 0 ? -1 : 1;
        }
        if (kind == 'd' || kind == 's') {
            const char *data;
            Py_ssize_t size;
            if (!PyUnicode_CheckExact(value)) return 0;
            data = PyUnicode_AsUTF8AndSize(value, &size);
            if (data == NULL) return -1;
            if (fields)
                return (kind == 's' ? viabtc_text_field(t, data, size)
                                    : viabtc_add(t, data, size)) < 0 ? -1 : 1;
            return viabtc_text_quoted(t, data, size, kind == 's') < 0 ? -1 : 1;
        }
        return 0;
    }

    /* the rows as the VALUES text of an INSERT (a str), or with `fields` as the lines of
       LOAD DATA (bytes, UTF-8); None when a value is not of its column's type */
    static PyObject *viabtc_rows_text(PyObject *rows, PyObject *kinds_text, int fields) {
        viabtc_buffer t = {NULL, 0, 0};
        const char *kinds;
        const char *open = fields ? "" : "(", *close = fields ? "\\n" : ")";
        const char *between = fields ? "\\t" : ", ", *next = fields ? "" : ", (";
        Py_ssize_t columns, count, i, j;
        PyObject *out = NULL;
        int done = 1;
        if (!PyList_CheckExact(rows) || !PyUnicode_CheckExact(kinds_text)) Py_RETURN_NONE;
        kinds = PyUnicode_AsUTF8AndSize(kinds_text, &columns);
        if (kinds == NULL) return NULL;
        count = PyList_GET_SIZE(rows);
        for (i = 0; i < count && done == 1; i++) {
            PyObject *row = PyList_GET_ITEM(rows, i);
            if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != columns) { done = 0; break; }
            if (viabtc_add(&t, i ? next : open, (Py_ssize_t)strlen(i ? next : open)) < 0) {
                done = -1;
                break;
            }
            for (j = 0; j < columns; j++) {
                if (j && viabtc_add(&t, between, (Py_ssize_t)strlen(between)) < 0) {
                    done = -1;
                    break;
                }
                done = viabtc_text_value(&t, PyTuple_GET_ITEM(row, j), kinds[j], fields);
                if (done != 1) break;
            }
            if (done == 1 && viabtc_add(&t, close, (Py_ssize_t)strlen(close)) < 0) done = -1;
        }
        if (done == 1 && fields) out = PyBytes_FromStringAndSize(t.buf ? t.buf : "", t.len);
        else if (done == 1) out = PyUnicode_DecodeUTF8(t.buf ? t.buf : "", t.len, NULL);
        else if (done == 0) { out = Py_None; Py_INCREF(out); }
        PyMem_Free(t.buf);
        return out;
    }
    """
    object _rows_text "viabtc_rows_text" (object rows, object kinds, int fields)

cpdef str values_text(rows, str kinds)
cpdef compiled_text(rows, str kinds)
cpdef bytes fields_text(rows, str kinds)
cpdef compiled_fields(rows, str kinds)
