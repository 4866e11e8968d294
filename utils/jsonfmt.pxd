# Compiled with the matching modules (see setup.py); the .py stays the source.
cimport cython

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #include "utils/exact_time.h"

    /* What "%.17g" writes of a double from 1e9 to 1e10 (the time stamps of 2001 to 2286),
       as format_real finishes it: ten digits, a point, the seven next digits of its exact
       binary value rounded to nearest (ties to even), fractional zeros dropped but one.
       None for any other double. */
    static inline PyObject *viabtc_time_text(double x) {
        char digits[17], out[20];
        int last, i;
        uint64_t value;
        if (!(x >= 1e9 && x < 1e10)) Py_RETURN_NONE;
        value = viabtc_scaled_time(x, 10000000u);
        if (value >= 100000000000000000ULL) Py_RETURN_NONE;    /* carried to 1e10 */
        for (i = 16; i >= 0; i--) { digits[i] = (char)('0' + value % 10); value /= 10; }
        memcpy(out, digits, 10);
        out[10] = '.';
        for (last = 16; last > 10 && digits[last] == '0'; last--) ;
        memcpy(out + 11, digits + 10, last - 9);
        return PyUnicode_FromStringAndSize(out, 11 + last - 9);
    }
    """
    object _time_text "viabtc_time_text" (double x)

cdef extern from *:
    """
    #include "utils/digits.h"

    /* The decimal text of an exact int within 64 bits, as str() writes it; None for any
       other object (bool included) or a larger int. */
    static inline PyObject *viabtc_int_text(PyObject *value) {
        char digits[21], *at;
        long long number;
        int overflow;
        PyObject *out;
        if (!PyLong_CheckExact(value)) Py_RETURN_NONE;
        number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) Py_RETURN_NONE;
        if (number == -1 && PyErr_Occurred()) return NULL;
        at = viabtc_digits(number, digits + sizeof digits);
        out = PyUnicode_New(digits + sizeof digits - at, 127);
        if (out == NULL) return NULL;
        memcpy(PyUnicode_1BYTE_DATA(out), at, digits + sizeof digits - at);
        return out;
    }
    """
    object _int_text "viabtc_int_text" (object value)

cdef object _last_float
cdef str _last_text

cpdef str int_text(value)
@cython.locals(text=str)
cpdef str format_real(x)
@cython.locals(text=str, mantissa=str, exp=str, sign=str)
cpdef str real_text(x)

cdef class TextTable:
    cdef public object make
    cdef public Py_ssize_t kept
    cdef public dict texts

    @cython.locals(text=str)
    cpdef str of(self, value)
