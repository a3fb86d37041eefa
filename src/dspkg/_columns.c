/* dspkg._speedups, manifest part: a reader of the JSON a manifest shard holds.
 *
 * A shard (docs/formats.md) is one JSON object of columns: arrays of integers, nulls and
 * strings. loads_columns(data) reads exactly that shape of JSON and returns what
 * json.loads(data) returns; for anything else (another shape, a float, true/false, a
 * string with an escape or a control character, an integer of more than 18 digits,
 * invalid JSON or UTF-8) it returns None and the caller runs json.loads, which reads it or
 * raises the error it deserves. Strings decode as json.loads decodes bytes (UTF-8,
 * surrogatepass). It avoids json.loads' per-value overheads: integers parsed in place, not
 * through int(str); ASCII strings copied, not decoded.
 *
 * A property test (tests/test_checks.py) holds it to json.loads on arbitrary documents
 * and on canonical shards with bytes changed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    const unsigned char *at, *end;
    int foreign; /* set when the document is not of the shape read here */
} Cursor;

static void skip_space(Cursor *c) {
    while (c->at < c->end && (*c->at == ' ' || *c->at == '\n' || *c->at == '\r' || *c->at == '\t'))
        c->at++;
}

/* NULL with c->foreign set: not read here; NULL without: a Python error (memory). */
static PyObject *foreign(Cursor *c) {
    c->foreign = 1;
    return NULL;
}

/* Bytes a plain string holds: 1 for ASCII that needs no escape, 2 for the bytes of UTF-8
 * beyond ASCII; 0 for the quote, the backslash and control characters. */
static unsigned char plain[256];

static PyObject *read_string(Cursor *c) {
    const unsigned char *start = ++c->at; /* after the opening quote */
    const unsigned char *end = memchr(start, '"', (size_t)(c->end - start));
    if (end == NULL) return foreign(c);
    unsigned char seen = 1;
    for (const unsigned char *at = start; at < end; at++) {
        unsigned char kind = plain[*at];
        if (!kind) return foreign(c); /* an escape or a control character: json.loads */
        seen |= kind;
    }
    Py_ssize_t n = end - start;
    c->at = end + 1;
    if (seen == 1) {
        PyObject *text = PyUnicode_New(n, 127);
        if (text != NULL) memcpy(PyUnicode_1BYTE_DATA(text), start, (size_t)n);
        return text;
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)start, n, "surrogatepass");
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        return foreign(c);
    }
    return text;
}

static PyObject *read_integer(Cursor *c) {
    const unsigned char *at = c->at;
    int negative = at < c->end && *at == '-';
    at += negative;
    const unsigned char *digits = at;
    long long value = 0;
    while (at < c->end && *at >= '0' && *at <= '9') value = value * 10 + (*at++ - '0');
    Py_ssize_t n = at - digits;
    /* JSON has no leading zeros; more digits might not fit (json.loads reads them). */
    if (n == 0 || n > 18 || (n > 1 && *digits == '0')) return foreign(c);
    if (at < c->end && (*at == '.' || *at == 'e' || *at == 'E')) return foreign(c);
    c->at = at;
    return PyLong_FromLongLong(negative ? -value : value);
}

static PyObject *read_scalar(Cursor *c) {
    if (c->at >= c->end) return foreign(c);
    unsigned char b = *c->at;
    if (b == '"') return read_string(c);
    if (b == '-' || (b >= '0' && b <= '9')) return read_integer(c);
    if (b == 'n' && c->end - c->at >= 4 && !memcmp(c->at, "null", 4)) {
        c->at += 4;
        Py_RETURN_NONE;
    }
    return foreign(c);
}

static PyObject *read_array(Cursor *c) {
    c->at++; /* after [ */
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    skip_space(c);
    if (c->at < c->end && *c->at == ']') {
        c->at++;
        return list;
    }
    for (;;) {
        skip_space(c);
        PyObject *item = read_scalar(c);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
        skip_space(c);
        if (c->at < c->end && *c->at == ',') {
            c->at++;
            continue;
        }
        if (c->at < c->end && *c->at == ']') {
            c->at++;
            return list;
        }
        Py_DECREF(list);
        return foreign(c);
    }
}

static PyObject *read_object(Cursor *c) {
    skip_space(c);
    if (c->at >= c->end || *c->at != '{') return foreign(c);
    c->at++;
    PyObject *doc = PyDict_New();
    if (doc == NULL) return NULL;
    skip_space(c);
    if (c->at < c->end && *c->at == '}') {
        c->at++;
        return doc;
    }
    for (;;) {
        skip_space(c);
        if (c->at >= c->end || *c->at != '"') break;
        PyObject *key = read_string(c);
        if (key == NULL) break;
        skip_space(c);
        PyObject *value = NULL;
        if (c->at < c->end && *c->at == ':') {
            c->at++;
            skip_space(c);
            value = c->at < c->end && *c->at == '[' ? read_array(c) : read_scalar(c);
        } else {
            c->foreign = 1;
        }
        /* A repeated key: the last one wins, as in json.loads. */
        int stored = value != NULL && PyDict_SetItem(doc, key, value) == 0;
        Py_DECREF(key);
        Py_XDECREF(value);
        if (!stored) break;
        skip_space(c);
        if (c->at < c->end && *c->at == ',') {
            c->at++;
            continue;
        }
        if (c->at < c->end && *c->at == '}') {
            c->at++;
            return doc;
        }
        c->foreign = 1;
        break;
    }
    if (!c->foreign && !PyErr_Occurred()) c->foreign = 1;
    Py_DECREF(doc);
    return NULL;
}

static PyObject *loads_columns(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Cursor c = {view.buf, (const unsigned char *)view.buf + view.len, 0};
    PyObject *doc = read_object(&c);
    if (doc != NULL) {
        skip_space(&c);
        if (c.at != c.end) { /* trailing data: json.loads says what */
            Py_CLEAR(doc);
            c.foreign = 1;
        }
    }
    PyBuffer_Release(&view);
    if (doc == NULL && c.foreign) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return doc;
}

void dspkg_columns_init(void) {
    for (int b = 0x20; b < 0x80; b++) plain[b] = 1;
    for (int b = 0x80; b < 0x100; b++) plain[b] = 2;
    plain['"'] = plain['\\'] = 0;
}

PyMethodDef dspkg_column_methods[] = {
    {"loads_columns", loads_columns, METH_O,
     "json.loads of an object of arrays of integers, nulls and strings; None: not that."},
    {NULL, NULL, 0, NULL},
};
