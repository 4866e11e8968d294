/* Shared by the compiled modules that write bytes in C (utils/handoff.pxd,
   matchengine/rowtext.pxd): a buffer that grows as it is written, twice its size at least
   each time, from the interpreter's allocator. */
#ifndef VIABTC_BUFFER_H
#define VIABTC_BUFFER_H

#include <string.h>

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} viabtc_buffer;

/* room for `need` more bytes; -1 with MemoryError set when there is none */
static int viabtc_room(viabtc_buffer *b, Py_ssize_t need) {
    Py_ssize_t cap;
    char *buf;
    if (b->len + need <= b->cap) return 0;
    cap = b->cap * 2 > b->len + need ? b->cap * 2 : b->len + need + 4096;
    buf = PyMem_Realloc(b->buf, cap);
    if (buf == NULL) { PyErr_NoMemory(); return -1; }
    b->buf = buf;
    b->cap = cap;
    return 0;
}

static int viabtc_add(viabtc_buffer *b, const char *data, Py_ssize_t size) {
    if (viabtc_room(b, size) < 0) return -1;
    memcpy(b->buf + b->len, data, size);
    b->len += size;
    return 0;
}

#endif
