# Types for the compiled build of decimals.py (see setup.py); the .py stays the source.
cimport cython

cdef extern from *:
    """
    /* display_of for a compact ASCII text (what libmpdec's texts are): the text itself, or
       its copy without the trailing fractional zeros (and point) when it has a point, no
       exponent and ends in a zero; None for any other text. */
    static inline PyObject *viabtc_display_text(PyObject *text) {
        Py_ssize_t size, last;
        const char *data;
        if (!PyUnicode_IS_COMPACT_ASCII(text)) Py_RETURN_NONE;
        size = PyUnicode_GET_LENGTH(text);
        data = (const char *)PyUnicode_1BYTE_DATA(text);
        if (size == 0 || data[size - 1] != '0' || memchr(data, '.', size) == NULL
                || memchr(data, 'e', size) != NULL) goto same;
        for (last = size - 1; data[last] == '0'; last--) ;
        if (data[last] == '.') last--;
        return PyUnicode_Substring(text, 0, last + 1);
    same:
        Py_INCREF(text);
        return text;
    }
    """
    object _display_text "viabtc_display_text" (object text)

cdef extern from *:
    """
    /* "-" + text for a compact ASCII text; None for any other text. */
    static inline PyObject *viabtc_negated_text(PyObject *text) {
        Py_ssize_t size;
        PyObject *out;
        if (!PyUnicode_IS_COMPACT_ASCII(text)) Py_RETURN_NONE;
        size = PyUnicode_GET_LENGTH(text);
        out = PyUnicode_New(size + 1, 127);
        if (out == NULL) return NULL;
        PyUnicode_1BYTE_DATA(out)[0] = '-';
        memcpy(PyUnicode_1BYTE_DATA(out) + 1, PyUnicode_1BYTE_DATA(text), size);
        return out;
    }
    """
    object _negated_text "viabtc_negated_text" (object text)

@cython.locals(index=Py_ssize_t)
cpdef str raw_among(tuple known, value)
cpdef str negated(str text)
cpdef str to_display(d)
@cython.locals(last=Py_ssize_t)
cpdef str display_of(str text)

cdef class KnownTexts:
    cdef public Py_ssize_t kept
    cdef public list entries

    @cython.locals(entry=tuple, raw=str)
    cpdef tuple of(self, value)
