/*
 * One-pass NDJSON writer for Arrow struct arrays (the fast path of bulkd/encode.py).
 *
 * Why native: Arrow's element-wise string joins append each value separately, tens of
 * millions of short values per million records at ~20 ns each; this writes each record's bytes
 * in one pass, a few ns per value, without holding the GIL, so the pipeline's worker threads
 * encode in parallel.
 *
 * The caller (encode.py) describes the array as a tree of tuples holding the Arrow buffers:
 *
 *   (0, validity, offset, ((key_bytes, child), ...))   struct; key_bytes is the JSON key and ':'
 *   (1, validity, offset, offsets, data)                UTF-8 string, written quoted and escaped
 *   (2, validity, offset, offsets, data)                UTF-8 text that already is JSON
 *   (3, validity, offset, values)                       boolean (bit-packed)
 *   (4, validity, offset, values)                       int64
 *   (5, validity, offset, offsets, child, child_length, base)
 *                                                       list; item j of the offsets is row
 *                                                       j - base of the child (a slice of the
 *                                                       whole child), an absent item reads null
 *
 * validity is None when the array has no nulls. The bytes are those of the Arrow path: a null
 * member is omitted (never written as null), a struct with no member present is {}, keys follow
 * the field order, and strings are escaped as orjson escapes them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { K_STRUCT = 0, K_STRING = 1, K_RAW = 2, K_BOOL = 3, K_INT64 = 4, K_LIST = 5 };

/* Values up to this many bytes are copied as one fixed-size move (most keys and cells). */
#define SHORT 16

typedef struct Node Node;
struct Node {
    int kind;
    const uint8_t *validity; /* NULL: every value present */
    int64_t offset;
    const int32_t *offsets;  /* strings and raw text */
    const uint8_t *data;     /* string bytes, bool bits or int64 values */
    const uint8_t *data_end; /* end of the string bytes' buffer: short copies may read up to it */
    int clean;               /* string bytes with nothing to escape (checked before writing) */
    Py_ssize_t nchildren;
    Node *children;          /* a struct's members, or a list's one child */
    int64_t child_length;    /* a list's child rows */
    int64_t base;            /* a list's offset value of the child's first row */
    const char **keys;
    Py_ssize_t *key_lens;
};

/* What a call borrowed or allocated, released in one place whatever happens. */
typedef struct {
    Py_buffer *views;
    Py_ssize_t nviews, capviews;
    void **blocks;
    Py_ssize_t nblocks, capblocks;
} Holder;

static void holder_release(Holder *h) {
    for (Py_ssize_t i = 0; i < h->nviews; i++) PyBuffer_Release(&h->views[i]);
    for (Py_ssize_t i = 0; i < h->nblocks; i++) PyMem_Free(h->blocks[i]);
    PyMem_Free(h->views);
    PyMem_Free(h->blocks);
}

static void *holder_alloc(Holder *h, size_t size) {
    if (h->nblocks == h->capblocks) {
        Py_ssize_t cap = h->capblocks ? h->capblocks * 2 : 16;
        void **grown = PyMem_Realloc(h->blocks, (size_t)cap * sizeof(void *));
        if (!grown) { PyErr_NoMemory(); return NULL; }
        h->blocks = grown;
        h->capblocks = cap;
    }
    void *block = PyMem_Calloc(1, size ? size : 1);
    if (!block) { PyErr_NoMemory(); return NULL; }
    h->blocks[h->nblocks++] = block;
    return block;
}

/* The bytes of a buffer object, at least `need` of them; None gives NULL when `optional` (a
   validity bitmap or mask that is absent means "all set"). */
static int holder_view(Holder *h, PyObject *obj, Py_ssize_t need, int optional, const uint8_t **out) {
    if (obj == Py_None) {
        if (!optional && need > 0) {
            PyErr_SetString(PyExc_ValueError, "a required Arrow buffer is missing");
            return -1;
        }
        *out = NULL;
        return 0;
    }
    if (h->nviews == h->capviews) {
        Py_ssize_t cap = h->capviews ? h->capviews * 2 : 32;
        Py_buffer *grown = PyMem_Realloc(h->views, (size_t)cap * sizeof(Py_buffer));
        if (!grown) { PyErr_NoMemory(); return -1; }
        h->views = grown;
        h->capviews = cap;
    }
    Py_buffer *view = &h->views[h->nviews];
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    h->nviews++;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "Arrow buffer of %zd bytes, %zd needed", view->len, need);
        return -1;
    }
    *out = (const uint8_t *)view->buf;
    return 0;
}

static Py_ssize_t bitmap_bytes(int64_t offset, Py_ssize_t length) {
    return (Py_ssize_t)((offset + length + 7) / 8);
}

/* Fill `node` from its tuple; `estimate` grows by a guess of the bytes it writes. */
static int parse_node(PyObject *spec, Node *node, Py_ssize_t length, Holder *h, int64_t *estimate) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 4) {
        PyErr_SetString(PyExc_TypeError, "node must be a tuple (kind, validity, offset, ...)");
        return -1;
    }
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
    Py_ssize_t offset = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 2));
    if (PyErr_Occurred()) return -1;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "negative array offset");
        return -1;
    }
    node->kind = (int)kind;
    node->offset = offset;
    if (holder_view(h, PyTuple_GET_ITEM(spec, 1), bitmap_bytes(offset, length), 1, &node->validity) < 0)
        return -1;
    Py_ssize_t size = PyTuple_GET_SIZE(spec);
    switch (kind) {
    case K_STRUCT: {
        PyObject *members = PyTuple_GET_ITEM(spec, 3);
        if (!PyTuple_Check(members)) {
            PyErr_SetString(PyExc_TypeError, "struct members must be a tuple");
            return -1;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(members);
        node->nchildren = n;
        node->children = holder_alloc(h, (size_t)n * sizeof(Node));
        node->keys = holder_alloc(h, (size_t)n * sizeof(char *));
        node->key_lens = holder_alloc(h, (size_t)n * sizeof(Py_ssize_t));
        if (!node->children || !node->keys || !node->key_lens) return -1;
        *estimate += 2 * (int64_t)length;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *member = PyTuple_GET_ITEM(members, i);
            if (!PyTuple_Check(member) || PyTuple_GET_SIZE(member) != 2 ||
                !PyBytes_Check(PyTuple_GET_ITEM(member, 0))) {
                PyErr_SetString(PyExc_TypeError, "struct member must be (key_bytes, node)");
                return -1;
            }
            PyObject *key = PyTuple_GET_ITEM(member, 0);
            node->key_lens[i] = PyBytes_GET_SIZE(key);
            /* Padded, so that a short key is copied as one fixed-size move. */
            char *padded = holder_alloc(h, (size_t)node->key_lens[i] + SHORT);
            if (!padded) return -1;
            memcpy(padded, PyBytes_AS_STRING(key), (size_t)node->key_lens[i]);
            node->keys[i] = padded;
            *estimate += (node->key_lens[i] + 1) * (int64_t)length;
            if (parse_node(PyTuple_GET_ITEM(member, 1), &node->children[i], length, h, estimate) < 0)
                return -1;
        }
        return 0;
    }
    case K_STRING:
    case K_RAW: {
        if (size != 5) {
            PyErr_SetString(PyExc_TypeError, "string node must be (kind, validity, offset, offsets, data)");
            return -1;
        }
        const uint8_t *offsets;
        if (holder_view(h, PyTuple_GET_ITEM(spec, 3), (offset + length + 1) * 4, 0, &offsets) < 0) return -1;
        node->offsets = (const int32_t *)offsets;
        int32_t lo = length ? node->offsets[offset] : 0;
        int32_t hi = length ? node->offsets[offset + length] : 0;
        if (lo < 0 || hi < lo) {
            PyErr_SetString(PyExc_ValueError, "Arrow string offsets out of order");
            return -1;
        }
        /* No data buffer is fine only when every value is empty. */
        if (holder_view(h, PyTuple_GET_ITEM(spec, 4), hi, hi == 0, &node->data) < 0) return -1;
        if (node->data) {
            node->data_end = node->data + h->views[h->nviews - 1].len; /* the view just taken */
        } else {                                                       /* every value is empty */
            node->data = node->data_end = (const uint8_t *)"";
        }
        *estimate += (int64_t)(hi - lo) + (kind == K_STRING ? 2 : 0) * (int64_t)length;
        return 0;
    }
    case K_LIST: {
        if (size != 7) {
            PyErr_SetString(PyExc_TypeError,
                            "list node must be (kind, validity, offset, offsets, child, child_length, base)");
            return -1;
        }
        Py_ssize_t child_length = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 5));
        Py_ssize_t base = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 6));
        if (PyErr_Occurred()) return -1;
        if (child_length < 0 || base < 0) {
            PyErr_SetString(PyExc_ValueError, "negative list child length or base");
            return -1;
        }
        const uint8_t *offsets;
        if (holder_view(h, PyTuple_GET_ITEM(spec, 3), (offset + length + 1) * 4, 0, &offsets) < 0) return -1;
        node->offsets = (const int32_t *)offsets;
        /* Every item index is checked here, once, so that writing never reads past the child. */
        for (Py_ssize_t i = offset; i < offset + length; i++) {
            if (node->offsets[i] < base || node->offsets[i + 1] < node->offsets[i] ||
                node->offsets[i + 1] - base > child_length) {
                PyErr_SetString(PyExc_ValueError, "Arrow list offsets out of order or past the child");
                return -1;
            }
        }
        node->nchildren = 1;
        node->child_length = child_length;
        node->base = base;
        node->children = holder_alloc(h, sizeof(Node));
        if (!node->children) return -1;
        *estimate += 2 * (int64_t)length + child_length;
        return parse_node(PyTuple_GET_ITEM(spec, 4), node->children, child_length, h, estimate);
    }
    case K_BOOL:
        *estimate += 5 * (int64_t)length;
        return holder_view(h, PyTuple_GET_ITEM(spec, 3), bitmap_bytes(offset, length), 0, &node->data);
    case K_INT64:
        *estimate += 8 * (int64_t)length;
        return holder_view(h, PyTuple_GET_ITEM(spec, 3), (offset + length) * 8, 0, &node->data);
    default:
        PyErr_Format(PyExc_ValueError, "unknown node kind %ld", kind);
        return -1;
    }
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} Out;

/* Room for `n` more bytes; false (and `failed` set) when memory ran out. No GIL needed. */
static inline int reserve(Out *o, size_t n) {
    if (o->len + n <= o->cap) return 1;
    if (o->failed) return 0;
    size_t cap = o->cap * 2;
    if (cap < o->len + n) cap = o->len + n;
    char *grown = realloc(o->buf, cap);
    if (!grown) {
        o->failed = 1;
        return 0;
    }
    o->buf = grown;
    o->cap = cap;
    return 1;
}

/* 1 for the bytes JSON strings must escape: control characters, quote and backslash. */
static uint8_t ESCAPE[256];

static void init_escape(void) {
    for (int c = 0; c < 0x20; c++) ESCAPE[c] = 1;
    ESCAPE['"'] = 1;
    ESCAPE['\\'] = 1;
}

/* Nonzero when one of the 8 bytes in `x` must be escaped (exact for "any", not for "which"). */
static inline uint64_t swar_escape(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t control = (x - ones * 0x20) & ~x & highs;
    uint64_t q = x ^ (ones * '"');
    uint64_t b = x ^ (ones * '\\');
    return control | ((q - ones) & ~q & highs) | ((b - ones) & ~b & highs);
}

static int any_escape(const uint8_t *s, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        if (swar_escape(x)) return 1;
    }
    for (; i < n; i++)
        if (ESCAPE[s[i]]) return 1;
    return 0;
}

/* Mark string columns whose bytes need no escape at all, the common case: their values are
   then copied without a scan. One pass over each column's bytes, without the GIL. */
static void mark_clean(Node *n, Py_ssize_t length) {
    if (n->kind == K_STRUCT) {
        for (Py_ssize_t k = 0; k < n->nchildren; k++) mark_clean(&n->children[k], length);
    } else if (n->kind == K_LIST) {
        mark_clean(n->children, (Py_ssize_t)n->child_length);
    } else if (n->kind == K_STRING && length > 0) {
        int32_t lo = n->offsets[n->offset], hi = n->offsets[n->offset + length];
        n->clean = !any_escape(n->data + lo, (size_t)(hi - lo));
    }
}

/* Copy `len` bytes; a short run moves as one fixed-size block when both ends have room. */
static inline void copy_bytes(char *dst, const uint8_t *src, size_t len, const uint8_t *src_end) {
    if (len <= SHORT && src + SHORT <= src_end)
        memcpy(dst, src, SHORT);
    else
        memcpy(dst, src, len);
}

static inline int present(const Node *n, int64_t row) {
    if (!n->validity) return 1;
    int64_t i = n->offset + row;
    return (n->validity[i >> 3] >> (i & 7)) & 1;
}

static void put_escaped(Out *o, const uint8_t *s, size_t n) {
    static const char HEX[] = "0123456789abcdef";
    if (!reserve(o, n * 6 + 2)) return;
    char *p = o->buf + o->len;
    *p++ = '"';
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && !ESCAPE[s[j]]) j++;
        memcpy(p, s + i, j - i);
        p += j - i;
        if (j == n) break;
        uint8_t c = s[j];
        *p++ = '\\';
        switch (c) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\t': *p++ = 't'; break;
        case '\n': *p++ = 'n'; break;
        case '\f': *p++ = 'f'; break;
        case '\r': *p++ = 'r'; break;
        default:
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = HEX[c >> 4];
            *p++ = HEX[c & 15];
        }
        i = j + 1;
    }
    *p++ = '"';
    o->len = (size_t)(p - o->buf);
}

static void put_int64(Out *o, int64_t value) {
    char digits[20];
    int n = 0;
    uint64_t v = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (!reserve(o, (size_t)n + 1)) return;
    char *p = o->buf + o->len;
    if (value < 0) *p++ = '-';
    while (n) *p++ = digits[--n];
    o->len = (size_t)(p - o->buf);
}

static void put_object(Out *o, const Node *n, int64_t row);

static void put_value(Out *o, const Node *n, int64_t row) {
    int64_t i = n->offset + row;
    switch (n->kind) {
    case K_STRUCT:
        put_object(o, n, row);
        return;
    case K_STRING: {
        const uint8_t *s = n->data + n->offsets[i];
        size_t len = (size_t)(n->offsets[i + 1] - n->offsets[i]);
        if (!n->clean) {
            put_escaped(o, s, len);
            return;
        }
        if (!reserve(o, len + SHORT + 2)) return;
        char *p = o->buf + o->len;
        p[0] = '"';
        copy_bytes(p + 1, s, len, n->data_end);
        p[len + 1] = '"';
        o->len += len + 2;
        return;
    }
    case K_RAW: {
        size_t len = (size_t)(n->offsets[i + 1] - n->offsets[i]);
        if (!reserve(o, len + SHORT)) return;
        copy_bytes(o->buf + o->len, n->data + n->offsets[i], len, n->data_end);
        o->len += len;
        return;
    }
    case K_BOOL: {
        int truth = (n->data[i >> 3] >> (i & 7)) & 1;
        if (!reserve(o, 5)) return;
        memcpy(o->buf + o->len, truth ? "true" : "false", truth ? 4 : 5);
        o->len += truth ? 4 : 5;
        return;
    }
    case K_INT64: {
        int64_t v;
        memcpy(&v, n->data + i * 8, 8);
        put_int64(o, v);
        return;
    }
    case K_LIST: {
        const Node *child = n->children;
        int64_t lo = n->offsets[i] - n->base, hi = n->offsets[i + 1] - n->base;
        if (!reserve(o, 1)) return;
        o->buf[o->len++] = '[';
        for (int64_t item = lo; item < hi; item++) {
            if (!reserve(o, 5)) return;
            if (item > lo) o->buf[o->len++] = ',';
            if (present(child, item)) {
                put_value(o, child, item);
            } else {
                memcpy(o->buf + o->len, "null", 4);
                o->len += 4;
            }
        }
        if (!reserve(o, 1)) return;
        o->buf[o->len++] = ']';
        return;
    }
    }
}

static void put_object(Out *o, const Node *n, int64_t row) {
    if (!reserve(o, 1)) return;
    o->buf[o->len++] = '{';
    int first = 1;
    for (Py_ssize_t k = 0; k < n->nchildren; k++) {
        const Node *child = &n->children[k];
        if (!present(child, row)) continue;
        size_t key_len = (size_t)n->key_lens[k];
        if (!reserve(o, key_len + SHORT + 1)) return;
        if (!first) o->buf[o->len++] = ',';
        first = 0;
        copy_bytes(o->buf + o->len, (const uint8_t *)n->keys[k], key_len,
                   (const uint8_t *)n->keys[k] + key_len + SHORT);
        o->len += key_len;
        put_value(o, child, row);
    }
    if (!reserve(o, 1)) return;
    o->buf[o->len++] = '}';
}

/* Output buffers are recycled. A fresh buffer of a few megabytes comes from mmap, and the
   kernel zeroing its pages took a third of the writing time; a few freed ones are kept. */
typedef struct {
    char *buf;
    size_t cap;
} Text;

#define POOL 4
static Text pool[POOL];
static int pooled;
static PyThread_type_lock pool_lock;

/* A buffer of at least `want` bytes (buf is NULL when memory ran out). */
static Text text_take(size_t want) {
    Text t = {NULL, 0};
    PyThread_acquire_lock(pool_lock, WAIT_LOCK);
    int best = -1;
    for (int i = 0; i < pooled; i++)
        if (best < 0 || pool[i].cap > pool[best].cap) best = i;
    if (best >= 0) {
        t = pool[best];
        pool[best] = pool[--pooled];
    }
    PyThread_release_lock(pool_lock);
    if (t.buf && t.cap < want) {
        free(t.buf);
        t.buf = NULL;
    }
    if (!t.buf) {
        t.buf = malloc(want);
        t.cap = t.buf ? want : 0;
    }
    return t;
}

static void text_give(Text t) {
    PyThread_acquire_lock(pool_lock, WAIT_LOCK);
    if (pooled < POOL) {
        pool[pooled++] = t;
        t.buf = NULL;
    }
    PyThread_release_lock(pool_lock);
    free(t.buf);
}

#define CAPSULE "bulkd._jsonl.text"

static void free_capsule(PyObject *capsule) {
    Text *text = PyCapsule_GetPointer(capsule, CAPSULE);
    text_give(*text);
    free(text);
}

PyDoc_STRVAR(encode_doc,
    "encode(node, length, keep) -> (owner, address, size, offsets: bytes, count: int)\n\n"
    "NDJSON for rows 0..length-1 of the struct described by `node` (rows whose byte in `keep`\n"
    "is 0 are skipped; keep=None writes every row). The text is `size` bytes at `address`,\n"
    "freed when `owner` (a capsule) goes. `offsets` holds count+1 int64 values: record i is\n"
    "text[offsets[i]:offsets[i+1]], its newline included.");

static PyObject *encode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec, *keep_obj;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "OnO", &spec, &length, &keep_obj)) return NULL;
    if (length < 0) {
        PyErr_SetString(PyExc_ValueError, "negative length");
        return NULL;
    }
    Holder h = {0};
    Node root = {0};
    int64_t estimate = 0;
    const uint8_t *keep = NULL;
    PyObject *result = NULL;
    Out out = {0};
    int64_t *offsets = NULL;
    if (parse_node(spec, &root, length, &h, &estimate) < 0) goto done;
    if (root.kind != K_STRUCT || root.validity) {
        PyErr_SetString(PyExc_ValueError, "the top level must be a struct without nulls");
        goto done;
    }
    if (holder_view(&h, keep_obj, length, 1, &keep) < 0) goto done;
    offsets = malloc(((size_t)length + 1) * sizeof(int64_t));
    Text taken = text_take((size_t)(estimate + length) + (size_t)(estimate / 8) + 64);
    out.buf = taken.buf;
    out.cap = taken.cap;
    if (!offsets || !out.buf) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    mark_clean(&root, length);
    offsets[0] = 0;
    for (Py_ssize_t row = 0; row < length && !out.failed; row++) {
        if (keep && !keep[row]) continue;
        put_object(&out, &root, row);
        if (!reserve(&out, 1)) break;
        out.buf[out.len++] = '\n';
        offsets[++count] = (int64_t)out.len;
    }
    Py_END_ALLOW_THREADS
    if (out.failed) {
        PyErr_NoMemory();
        goto done;
    }
    /* The text is handed over, not copied: a capsule owns it and Arrow wraps its address. */
    Text *text = malloc(sizeof(Text));
    if (!text) {
        PyErr_NoMemory();
        goto done;
    }
    text->buf = out.buf;
    text->cap = out.cap;
    PyObject *owner = PyCapsule_New(text, CAPSULE, free_capsule);
    if (!owner) {
        free(text);
        goto done;
    }
    out.buf = NULL;
    result = Py_BuildValue("(NNny#n)", owner, PyLong_FromVoidPtr(text->buf), (Py_ssize_t)out.len,
                           (const char *)offsets,
                           (Py_ssize_t)((count + 1) * (Py_ssize_t)sizeof(int64_t)), count);
done:
    free(out.buf);
    free(offsets);
    holder_release(&h);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bulkd._jsonl",
    "One-pass NDJSON writer for Arrow struct arrays (see bulkd.encode).", -1, methods,
};

PyMODINIT_FUNC PyInit__jsonl(void) {
    init_escape();
    if (!pool_lock && !(pool_lock = PyThread_allocate_lock())) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
