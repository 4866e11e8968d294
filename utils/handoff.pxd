# Compiled with the matching modules (see setup.py); the .py stays the source.
cimport cython

cdef extern from *:
    """
    #include <marshal.h>
    #include <stdint.h>
    #include <string.h>

    /* Where the encoding grows, and the strings and tuples met last: slot -> object and
       the index of its reference (marshal numbers the objects written with FLAG_REF in
       the order their writing starts). */
    #define VIABTC_SEEN 512
    typedef struct {
        char *buf;
        Py_ssize_t len, cap;
        long refs;
        PyObject *seen[VIABTC_SEEN];
        long index[VIABTC_SEEN];
    } viabtc_out;

    static int viabtc_room(viabtc_out *o, Py_ssize_t need) {
        Py_ssize_t cap;
        char *buf;
        if (o->len + need <= o->cap) return 0;
        cap = o->cap * 2 > o->len + need ? o->cap * 2 : o->len + need + 4096;
        buf = PyMem_Realloc(o->buf, cap);
        if (buf == NULL) { PyErr_NoMemory(); return -1; }
        o->buf = buf;
        o->cap = cap;
        return 0;
    }

    static inline void viabtc_u32(char *at, uint32_t value) {
        at[0] = (char)value; at[1] = (char)(value >> 8);
        at[2] = (char)(value >> 16); at[3] = (char)(value >> 24);
    }

    /* marshal's own encoding of `value`, without references (version 2), in place */
    static int viabtc_by_marshal(viabtc_out *o, PyObject *value) {
        PyObject *bytes = PyMarshal_WriteObjectToString(value, 2);
        Py_ssize_t size;
        if (bytes == NULL) return -1;
        size = PyBytes_GET_SIZE(bytes);
        if (viabtc_room(o, size) < 0) { Py_DECREF(bytes); return -1; }
        memcpy(o->buf + o->len, PyBytes_AS_STRING(bytes), size);
        o->len += size;
        Py_DECREF(bytes);
        return 0;
    }

    /* 1 when `value` was met before and a reference to it is written; else 0, with *flag
       FLAG_REF when its copy is to be referred to later (it has other references, so it
       may come again) */
    static int viabtc_ref(viabtc_out *o, PyObject *value, int *flag) {
        size_t slot;
        *flag = 0;
        if (Py_REFCNT(value) == 1) return 0;
        slot = (size_t)(((uint64_t)(uintptr_t)value * 0x9E3779B97F4A7C15ULL) >> 55);
        if (o->seen[slot] == value) {
            if (viabtc_room(o, 5) < 0) return -1;
            o->buf[o->len] = 'r';
            viabtc_u32(o->buf + o->len + 1, (uint32_t)o->index[slot]);
            o->len += 5;
            return 1;
        }
        o->seen[slot] = value;
        o->index[slot] = o->refs++;
        *flag = 0x80;
        return 0;
    }

    static int viabtc_write(viabtc_out *o, PyObject *value, int depth) {
        PyTypeObject *type = Py_TYPE(value);
        Py_ssize_t n, i;
        int flag, found;
        if (type == &PyUnicode_Type) {
            const char *data;
            char kind;
            if (PyUnicode_IS_ASCII(value)) {
                n = PyUnicode_GET_LENGTH(value);
                data = (const char *)PyUnicode_1BYTE_DATA(value);
                kind = n < 256 ? 'z' : 'a';
            } else {
                data = PyUnicode_AsUTF8AndSize(value, &n);
                if (data == NULL) {         /* lone surrogates: marshal's own way */
                    PyErr_Clear();
                    return viabtc_by_marshal(o, value);
                }
                kind = 'u';
            }
            if ((found = viabtc_ref(o, value, &flag)) != 0) return found < 0 ? -1 : 0;
            if (viabtc_room(o, n + 5) < 0) return -1;
            o->buf[o->len++] = (char)(kind | flag);
            if (kind == 'z') o->buf[o->len++] = (char)n;
            else { viabtc_u32(o->buf + o->len, (uint32_t)n); o->len += 4; }
            memcpy(o->buf + o->len, data, n);
            o->len += n;
            return 0;
        }
        if (type == &PyLong_Type) {
            int overflow;
            long number = PyLong_AsLongAndOverflow(value, &overflow);
            if (number == -1 && PyErr_Occurred()) return -1;
            if (overflow || number > INT32_MAX || number < INT32_MIN)
                return viabtc_by_marshal(o, value);
            if (viabtc_room(o, 5) < 0) return -1;
            o->buf[o->len] = 'i';
            viabtc_u32(o->buf + o->len + 1, (uint32_t)(int32_t)number);
            o->len += 5;
            return 0;
        }
        if (type == &PyFloat_Type) {
            if (viabtc_room(o, 9) < 0) return -1;
            o->buf[o->len] = 'g';
    #if PY_VERSION_HEX >= 0x030B0000
            if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), o->buf + o->len + 1, 1) < 0) return -1;
    #else
            if (_PyFloat_Pack8(PyFloat_AS_DOUBLE(value), (unsigned char *)o->buf + o->len + 1,
                               1) < 0) return -1;
    #endif
            o->len += 9;
            return 0;
        }
        if (type == &PyTuple_Type && depth > 0) {
            if ((found = viabtc_ref(o, value, &flag)) != 0) return found < 0 ? -1 : 0;
            n = PyTuple_GET_SIZE(value);
            if (viabtc_room(o, 5) < 0) return -1;
            if (n < 256) {
                o->buf[o->len++] = (char)(')' | flag);
                o->buf[o->len++] = (char)n;
            } else {
                o->buf[o->len++] = (char)('(' | flag);
                viabtc_u32(o->buf + o->len, (uint32_t)n);
                o->len += 4;
            }
            for (i = 0; i < n; i++)
                if (viabtc_write(o, PyTuple_GET_ITEM(value, i), depth - 1) < 0) return -1;
            return 0;
        }
        if (type == &PyList_Type && depth > 0) {
            n = PyList_GET_SIZE(value);
            if (viabtc_room(o, 5) < 0) return -1;
            o->buf[o->len] = '[';
            viabtc_u32(o->buf + o->len + 1, (uint32_t)n);
            o->len += 5;
            for (i = 0; i < n; i++)
                if (viabtc_write(o, PyList_GET_ITEM(value, i), depth - 1) < 0) return -1;
            return 0;
        }
        if (value == Py_None) {
            if (viabtc_room(o, 1) < 0) return -1;
            o->buf[o->len++] = 'N';
            return 0;
        }
        return viabtc_by_marshal(o, value);
    }

    /* one buffer for every call (they all hold the interpreter lock, and nothing in them
       runs Python code): no growing from nothing for each batch */
    static viabtc_out *viabtc_kept = NULL;

    static PyObject *viabtc_handoff_dumps(PyObject *batch, int depth, int framed) {
        viabtc_out *o = viabtc_kept;
        PyObject *out = NULL;
        if (o == NULL) {
            o = viabtc_kept = PyMem_Calloc(1, sizeof(viabtc_out));
            if (o == NULL) return PyErr_NoMemory();
        }
        o->len = 0;
        o->refs = 0;
        memset(o->seen, 0, sizeof o->seen);
        if (framed) {
            if (viabtc_room(o, 4) < 0) return NULL;
            o->len = 4;
        }
        if (viabtc_write(o, batch, depth) == 0) {
            if (framed) {
                Py_ssize_t size = o->len - 4;
                if (size > (Py_ssize_t)UINT32_MAX) {
                    PyErr_SetString(PyExc_ValueError, "batch too large for its frame");
                    goto done;
                }
                o->buf[0] = (char)(size >> 24); o->buf[1] = (char)(size >> 16);
                o->buf[2] = (char)(size >> 8); o->buf[3] = (char)size;
            }
            out = PyBytes_FromStringAndSize(o->buf, o->len);
        }
    done:
        if (o->cap > (1 << 23)) {      /* a rare large batch: its room is not kept */
            PyMem_Free(o->buf);
            o->buf = NULL;
            o->cap = 0;
        }
        return out;
    }
    """
    object _dumps "viabtc_handoff_dumps" (object batch, int depth, int framed)

cpdef bytes dumps(batch)
cpdef bytes dumps_framed(batch)
