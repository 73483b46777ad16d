/*
 * Table-driven search of a schema pattern over the cells of an Arrow string array.
 *
 * Why native: RE2 through Arrow spends ~75 ns on an email cell; walking a byte table built by
 * bulkd/patterns.py costs a few ns per byte, without the GIL, so worker threads check in
 * parallel. The table's meaning (and a pure-Python walk giving the same answers) lives in
 * patterns.py: state 0 is dead, state 1 has matched, and table[state * 256 + byte] is the next
 * state.
 *
 * walk(offsets, data, offset, length, table, accept, start, out) writes accept[final state] for
 * each of the `length` cells starting at cell `offset` into the writable buffer `out`. Every
 * index is checked first, so a malformed table or array raises ValueError and never reads out
 * of bounds.
 *
 * scan(offsets, data, offset, length, below, empty) is the reader's census of a column's cells
 * (bulkd/read/_cells.py): whether any byte is 0x80 or more (not ASCII) or under `below`
 * (control bytes), the longest cell and the total, and empty[i] = 0 for each cell i that holds
 * bytes. One pass of eight bytes at a time replaces a dozen numpy calls per column, which held
 * the GIL on the reading thread while the workers waited for it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int check_table(const Py_buffer *table, const Py_buffer *accept, int start) {
    if (table->len == 0 || table->len % 256 != 0 || table->len / 256 > 256) {
        PyErr_SetString(PyExc_ValueError, "table must hold 1 to 256 states of 256 bytes each");
        return -1;
    }
    Py_ssize_t states = table->len / 256;
    if (accept->len != states || start < 0 || start >= states) {
        PyErr_SetString(PyExc_ValueError, "accept must have one byte per state and start must be a state");
        return -1;
    }
    const uint8_t *t = (const uint8_t *)table->buf;
    for (Py_ssize_t i = 0; i < table->len; i++) {
        if (t[i] >= states) {
            PyErr_SetString(PyExc_ValueError, "table names a state it does not hold");
            return -1;
        }
    }
    return 0;
}

static int check_cells(const Py_buffer *offsets, const Py_buffer *data, Py_ssize_t offset,
                       Py_ssize_t length, const Py_buffer *out) {
    if (offset < 0 || length < 0 || out->len < length ||
        offsets->len / (Py_ssize_t)sizeof(int32_t) < offset + length + 1) {
        PyErr_SetString(PyExc_ValueError, "offset and length do not fit the offsets or the output");
        return -1;
    }
    const int32_t *o = (const int32_t *)offsets->buf + offset;
    for (Py_ssize_t i = 0; i < length; i++) {
        if (o[i] < 0 || o[i + 1] < o[i] || o[i + 1] > data->len) {
            PyErr_SetString(PyExc_ValueError, "offsets point outside the data");
            return -1;
        }
    }
    return 0;
}

static PyObject *walk(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offsets = {0}, data = {0}, table = {0}, accept = {0}, out = {0};
    Py_ssize_t offset = 0, length = 0;
    int start = 0;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*nny*y*iw*", &offsets, &data, &offset, &length, &table, &accept,
                          &start, &out)) {
        return NULL;
    }
    if (check_table(&table, &accept, start) == 0 && check_cells(&offsets, &data, offset, length, &out) == 0) {
        const int32_t *o = (const int32_t *)offsets.buf + offset;
        const uint8_t *d = (const uint8_t *)data.buf;
        const uint8_t *t = (const uint8_t *)table.buf;
        const uint8_t *acc = (const uint8_t *)accept.buf;
        uint8_t *res = (uint8_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < length; i++) {
            unsigned state = (unsigned)start;
            const uint8_t *p = d + o[i];
            const uint8_t *end = d + o[i + 1];
            while (p < end) {
                state = t[(state << 8) | *p++];
                if (state <= 1) {
                    break; /* dead, or matched for good */
                }
            }
            res[i] = acc[state];
        }
        Py_END_ALLOW_THREADS
        Py_INCREF(Py_None);
        result = Py_None;
    }
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    PyBuffer_Release(&table);
    PyBuffer_Release(&accept);
    PyBuffer_Release(&out);
    return result;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offsets = {0}, data = {0}, empty = {0};
    Py_ssize_t offset = 0, length = 0;
    int below = 0;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*nniw*", &offsets, &data, &offset, &length, &below, &empty)) {
        return NULL;
    }
    if (below < 0 || below > 128) {
        PyErr_SetString(PyExc_ValueError, "below must be 0 to 128");
    } else if (check_cells(&offsets, &data, offset, length, &empty) == 0) {
        const int32_t *o = (const int32_t *)offsets.buf + offset;
        const uint8_t *d = (const uint8_t *)data.buf;
        uint8_t *e = (uint8_t *)empty.buf;
        int32_t longest = 0;
        uint64_t high = 0, low = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < length; i++) { /* branch-free, so the compiler vectorises it */
            int32_t size = o[i + 1] - o[i];
            e[i] &= (uint8_t)(size == 0);
            longest = size > longest ? size : longest;
        }
        const uint8_t *p = d + o[0];
        const uint8_t *end = d + o[length];
        /* A byte under `below` (<= 128) in a word w shows as (w - below*ONES) & ~w & HIGHS:
           exact as a yes/no for the word (Bit Twiddling Hacks, "hasless"). */
        const uint64_t floor = ONES * (uint64_t)below;
        for (; p + 8 <= end; p += 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            high |= w;
            low |= (w - floor) & ~w & HIGHS;
        }
        for (; p < end; p++) {
            high |= *p;
            low |= (*p < below) ? HIGHS : 0;
        }
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("(OOnn)", (high & HIGHS) ? Py_True : Py_False, low ? Py_True : Py_False,
                               (Py_ssize_t)longest, (Py_ssize_t)(o[length] - o[0]));
    }
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    PyBuffer_Release(&empty);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(offsets, data, offset, length, table, accept, start, out): one answer byte per cell"},
    {"scan", scan, METH_VARARGS,
     "scan(offsets, data, offset, length, below, empty) -> (not_ascii, has_low, longest, total)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_match", "Byte-table pattern search over Arrow string cells.", -1, methods,
};

PyMODINIT_FUNC PyInit__match(void) { return PyModule_Create(&module); }
