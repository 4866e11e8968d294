# Compiled with the matching modules (see setup.py); the .py stays the source.
cimport cython

cdef extern from *:
    """
    #include <marshal.h>
    #include <stdint.h>
    #include <string.h>
    #include "utils/buffer.h"

    /* Where the encoding grows (utils/buffer.h), and the strings and tuples met last:
       slot -> object and the index of its reference (marshal numbers the objects written
       with FLAG_REF in the order their writing starts). */
    #define VIABTC_SEEN 512
    typedef struct {
        viabtc_buffer b;
        long refs;
        PyObject *seen[VIABTC_SEEN];
        long index[VIABTC_SEEN];
    } viabtc_out;

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
        if (viabtc_add(&o->b, PyBytes_AS_STRING(bytes), size) < 0) {
            Py_DECREF(bytes);
            return -1;
        }
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
            if (viabtc_room(&o->b, 5) < 0) return -1;
            o->b.buf[o->b.len] = 'r';
            viabtc_u32(o->b.buf + o->b.len + 1, (uint32_t)o->index[slot]);
            o->b.len += 5;
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
            if (viabtc_room(&o->b, n + 5) < 0) return -1;
            o->b.buf[o->b.len++] = (char)(kind | flag);
            if (kind == 'z') o->b.buf[o->b.len++] = (char)n;
            else { viabtc_u32(o->b.buf + o->b.len, (uint32_t)n); o->b.len += 4; }
            memcpy(o->b.buf + o->b.len, data, n);
            o->b.len += n;
            return 0;
        }
        if (type == &PyLong_Type) {
            int overflow;
            long number = PyLong_AsLongAndOverflow(value, &overflow);
            if (number == -1 && PyErr_Occurred()) return -1;
            if (overflow || number > INT32_MAX || number < INT32_MIN)
                return viabtc_by_marshal(o, value);
            if (viabtc_room(&o->b, 5) < 0) return -1;
            o->b.buf[o->b.len] = 'i';
            viabtc_u32(o->b.buf + o->b.len + 1, (uint32_t)(int32_t)number);
            o->b.len += 5;
            return 0;
        }
        if (type == &PyFloat_Type) {
            if (viabtc_room(&o->b, 9) < 0) return -1;
            o->b.buf[o->b.len] = 'g';
    #if PY_VERSION_HEX >= 0x030B0000
            if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), o->b.buf + o->b.len + 1, 1) < 0) return -1;
    #else
            if (_PyFloat_Pack8(PyFloat_AS_DOUBLE(value), (unsigned char *)o->b.buf + o->b.len + 1,
                               1) < 0) return -1;
    #endif
            o->b.len += 9;
            return 0;
        }
        if (type == &PyTuple_Type && depth > 0) {
            if ((found = viabtc_ref(o, value, &flag)) != 0) return found < 0 ? -1 : 0;
            n = PyTuple_GET_SIZE(value);
            if (viabtc_room(&o->b, 5) < 0) return -1;
            if (n < 256) {
                o->b.buf[o->b.len++] = (char)(')' | flag);
                o->b.buf[o->b.len++] = (char)n;
            } else {
                o->b.buf[o->b.len++] = (char)('(' | flag);
                viabtc_u32(o->b.buf + o->b.len, (uint32_t)n);
                o->b.len += 4;
            }
            for (i = 0; i < n; i++)
                if (viabtc_write(o, PyTuple_GET_ITEM(value, i), depth - 1) < 0) return -1;
            return 0;
        }
        if (type == &PyList_Type && depth > 0) {
            n = PyList_GET_SIZE(value);
            if (viabtc_room(&o->b, 5) < 0) return -1;
            o->b.buf[o->b.len] = '[';
            viabtc_u32(o->b.buf + o->b.len + 1, (uint32_t)n);
            o->b.len += 5;
            for (i = 0; i < n; i++)
                if (viabtc_write(o, PyList_GET_ITEM(value, i), depth - 1) < 0) return -1;
            return 0;
        }
        if (value == Py_None) {
            if (viabtc_room(&o->b, 1) < 0) return -1;
            o->b.buf[o->b.len++] = 'N';
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
        o->b.len = 0;
        o->refs = 0;
        memset(o->seen, 0, sizeof o->seen);
        if (framed) {
            if (viabtc_room(&o->b, 4) < 0) return NULL;
            o->b.len = 4;
        }
        if (viabtc_write(o, batch, depth) == 0) {
            if (framed) {
                Py_ssize_t size = o->b.len - 4;
                if (size > (Py_ssize_t)UINT32_MAX) {
                    PyErr_SetString(PyExc_ValueError, "batch too large for its frame");
                    goto done;
                }
                o->b.buf[0] = (char)(size >> 24); o->b.buf[1] = (char)(size >> 16);
                o->b.buf[2] = (char)(size >> 8); o->b.buf[3] = (char)size;
            }
            out = PyBytes_FromStringAndSize(o->b.buf, o->b.len);
        }
    done:
        if (o->b.cap > (1 << 23)) {      /* a rare large batch: its room is not kept */
            PyMem_Free(o->b.buf);
            o->b.buf = NULL;
            o->b.cap = 0;
        }
        return out;
    }
    """
    object _dumps "viabtc_handoff_dumps" (object batch, int depth, int framed)

cpdef bytes dumps(batch)
cpdef bytes dumps_framed(batch)
