/* dspkg._speedups, manifest part: checks of untrusted file records over whole columns.
 *
 * A manifest shard arrives as columns (json.loads builds the lists in C). These functions
 * apply the rules of paths.py and manifest_checks.py to a whole column in one C loop,
 * without an interpreter step per record. Each answers only "all clear": on anything it
 * refuses, or does not expect, it answers no and the Python twin runs the same check again
 * to name the first bad record, so every error message stays the Python one. Property
 * tests (tests/test_checks.py) hold each function to its twin on arbitrary and hostile
 * input:
 *
 *   paths_ok(paths)            paths.all_paths_ok
 *   records_ok(p, s, h, i, o)  manifest_checks.records_ok (types, hex, sorted, paths, ...)
 *   layout_add(...)            manifest_checks.LayoutCheck.add (True: checked and applied)
 *   tree_clear(paths)          paths.tree_problem(paths) is None (True only for ASCII)
 *   file_entries(type, ...)    manifest.make_entries
 *
 * file_entries builds the FileEntry tuples untracked by the cycle collector: they hold only
 * str, int and None, so they can never be part of a cycle, and a million tracked tuples
 * would make the next collection walk every one of them (seconds, measured).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_PATH_BYTES 4096
#define MAX_COMPONENT_BYTES 255
#define LOCAL_HEADER 30 /* zipformat.LOCAL.size: the fixed part of a local header */

static int ready(PyObject *s) {
#if PY_VERSION_HEX < 0x030C0000
    return PyUnicode_READY(s) == 0;
#else
    (void)s;
    return 1;
#endif
}

static int column(PyObject *obj, Py_ssize_t n, const char *name) {
    if (!PyList_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list", name);
        return 0;
    }
    if (n >= 0 && PyList_GET_SIZE(obj) != n) {
        PyErr_Format(PyExc_ValueError, "%s has another length than the paths", name);
        return 0;
    }
    return 1;
}

/* ---- the path rule (paths.path_problem) --------------------------------------------- */

static int ascii_alpha(Py_UCS4 c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }

/* One component, code points [start, end): not empty, not ending in "." or " ", no drive
 * prefix like "C:", not a Windows device name (ASCII case-insensitive: Python's re matches
 * no other character to these letters). Control characters, backslashes and lengths are
 * checked by the caller. */
static int component_ok(int kind, const void *data, Py_ssize_t start, Py_ssize_t end) {
    Py_ssize_t n = end - start;
    if (n == 0) return 0;
    Py_UCS4 last = PyUnicode_READ(kind, data, end - 1);
    if (last == '.' || last == ' ') return 0;
    if (n >= 2 && PyUnicode_READ(kind, data, start + 1) == ':' &&
        ascii_alpha(PyUnicode_READ(kind, data, start)))
        return 0;
    if (n != 3 && n != 4) return 1;
    char low[4];
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, start + i);
        if (c >= 128) return 1;
        low[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    if (n == 3)
        return memcmp(low, "con", 3) && memcmp(low, "prn", 3) && memcmp(low, "aux", 3) &&
               memcmp(low, "nul", 3);
    return !((!memcmp(low, "com", 3) || !memcmp(low, "lpt", 3)) && low[3] >= '0' &&
             low[3] <= '9');
}

static int utf8_width(Py_UCS4 c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }

static Py_ALWAYS_INLINE inline int scan_path(int kind, const void *data, Py_ssize_t n) {
    Py_ssize_t total = 0, component = 0, start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == '/') {
            if (!component_ok(kind, data, start, i)) return 0;
            start = i + 1;
            component = 0;
            total += 1;
            continue;
        }
        if (c < 0x20 || c == 0x7f || c == '\\') return 0;
        if (c >= 0xd800 && c <= 0xdfff) return 0; /* a lone surrogate is not UTF-8 */
        int width = utf8_width(c);
        total += width;
        component += width;
        if (component > MAX_COMPONENT_BYTES) return 0;
    }
    return component_ok(kind, data, start, n) && total <= MAX_PATH_BYTES;
}

/* 1 when path_problem(s) is None and s is exactly a str (as all_paths_ok wants). */
static int path_ok(PyObject *s) {
    if (!PyUnicode_CheckExact(s) || !ready(s)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n == 0) return 0;
    const void *data = PyUnicode_DATA(s);
    switch (PyUnicode_KIND(s)) {
    case PyUnicode_1BYTE_KIND:
        return scan_path(PyUnicode_1BYTE_KIND, data, n);
    case PyUnicode_2BYTE_KIND:
        return scan_path(PyUnicode_2BYTE_KIND, data, n);
    default:
        return scan_path(PyUnicode_4BYTE_KIND, data, n);
    }
}

/* The UTF-8 length of an exact str, or -1 (not a str, or not encodable). */
static Py_ssize_t utf8_length(PyObject *s) {
    if (!PyUnicode_CheckExact(s) || !ready(s)) return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_ASCII(s)) return n;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0xd800 && c <= 0xdfff) return -1;
        total += utf8_width(c);
    }
    return total;
}

static int all_paths_ok(PyObject *paths) {
    Py_ssize_t n = PyList_GET_SIZE(paths);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!path_ok(PyList_GET_ITEM(paths, i))) return 0;
    return 1;
}

static PyObject *paths_ok(PyObject *self, PyObject *paths) {
    (void)self;
    if (!column(paths, -1, "paths")) return NULL;
    return PyBool_FromLong(all_paths_ok(paths));
}

/* ---- records on their own (manifest_checks.records_ok) ------------------------------ */

/* 1 for an exact int >= `least`; 0 for anything else (bool, float, a negative int). */
static int count_at_least(PyObject *v, long long least) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return overflow > 0;
    return value >= least;
}

static unsigned char hex_digit[256];

static int sha_ok(PyObject *v) {
    if (!PyUnicode_CheckExact(v) || !ready(v) || !PyUnicode_IS_ASCII(v) ||
        PyUnicode_GET_LENGTH(v) != 64)
        return 0;
    const unsigned char *text = PyUnicode_1BYTE_DATA(v);
    for (int k = 0; k < 64; k++)
        if (!hex_digit[text[k]]) return 0;
    return 1;
}

static PyObject *records_ok(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *paths, *sizes, *shas, *indexes, *offsets;
    if (!PyArg_ParseTuple(args, "OOOOO", &paths, &sizes, &shas, &indexes, &offsets))
        return NULL;
    if (!column(paths, -1, "paths")) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (!column(sizes, n, "sizes") || !column(shas, n, "shas") ||
        !column(indexes, n, "indexes") || !column(offsets, n, "offsets"))
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *index = PyList_GET_ITEM(indexes, i);
        PyObject *offset = PyList_GET_ITEM(offsets, i);
        /* A record is packaged (index and offset) or not (neither). */
        if ((index == Py_None) != (offset == Py_None)) Py_RETURN_FALSE;
        if (index != Py_None &&
            (!count_at_least(index, 0) || !count_at_least(offset, LOCAL_HEADER)))
            Py_RETURN_FALSE;
        if (!count_at_least(PyList_GET_ITEM(sizes, i), 0)) Py_RETURN_FALSE;
        if (!sha_ok(PyList_GET_ITEM(shas, i))) Py_RETURN_FALSE;
    }
    if (!all_paths_ok(paths)) Py_RETURN_FALSE;
    /* Sorted and unique: compared by code point, as str.__lt__ does. */
    for (Py_ssize_t i = 1; i < n; i++) {
        int order = PyUnicode_Compare(PyList_GET_ITEM(paths, i - 1), PyList_GET_ITEM(paths, i));
        if (order == -1 && PyErr_Occurred()) return NULL;
        if (order >= 0) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* ---- entries inside their packages (manifest_checks.LayoutCheck.add) ---------------- */

/* An exact int that fits in 64 bits, into *out; 0 for anything else. */
static int int64_of(PyObject *v, long long *out) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    return !overflow && !(*out == -1 && PyErr_Occurred());
}

static int int64_list(PyObject *list, Py_ssize_t n, long long *out) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) != n) return 0;
    for (Py_ssize_t p = 0; p < n; p++)
        if (!int64_of(PyList_GET_ITEM(list, p), &out[p])) return 0;
    return 1;
}

static int set_int64_list(PyObject *list, Py_ssize_t n, const long long *values) {
    for (Py_ssize_t p = 0; p < n; p++) {
        PyObject *v = PyLong_FromLongLong(values[p]);
        if (v == NULL || PyList_SetItem(list, p, v) < 0) return 0;
    }
    return 1;
}

/* Each packaged record's local header starts at or after the end of the previous entry
 * its package gave the version (ends[p]), and its data ends inside the package; no package
 * gives more files than it declares. Per record, in order: the same outcome as the Python
 * check per run of one package. On success, ends and used are updated; on False (a
 * refusal, or anything unexpected) they are untouched and the Python check runs. */
static PyObject *layout_add(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *package_sizes, *package_entries, *ends_list, *used_list;
    PyObject *paths, *sizes, *indexes, *offsets;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &package_sizes, &package_entries, &ends_list,
                          &used_list, &paths, &sizes, &indexes, &offsets))
        return NULL;
    if (!column(paths, -1, "paths")) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (!column(sizes, n, "sizes") || !column(indexes, n, "indexes") ||
        !column(offsets, n, "offsets") || !column(package_sizes, -1, "package sizes"))
        return NULL;
    Py_ssize_t packages = PyList_GET_SIZE(package_sizes);
    long long *state = PyMem_Malloc(sizeof(long long) * 4 * (size_t)(packages ? packages : 1));
    if (state == NULL) return PyErr_NoMemory();
    long long *limit = state, *entries = state + packages, *ends = state + 2 * packages,
              *used = state + 3 * packages;
    int ok = int64_list(package_sizes, packages, limit) &&
             int64_list(package_entries, packages, entries) &&
             int64_list(ends_list, packages, ends) && int64_list(used_list, packages, used);
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        PyObject *index_obj = PyList_GET_ITEM(indexes, i);
        if (index_obj == Py_None) continue;
        long long index, offset, size, end, head;
        Py_ssize_t name = utf8_length(PyList_GET_ITEM(paths, i));
        ok = int64_of(index_obj, &index) && index >= 0 && index < packages &&
             int64_of(PyList_GET_ITEM(offsets, i), &offset) &&
             int64_of(PyList_GET_ITEM(sizes, i), &size) && size >= 0 && name >= 0 &&
             !__builtin_add_overflow(offset, size, &end) &&
             !__builtin_sub_overflow(offset, (long long)name + LOCAL_HEADER, &head) &&
             head >= ends[index] && end <= limit[index] && ++used[index] <= entries[index];
        if (ok) ends[index] = end;
    }
    PyErr_Clear(); /* a failed conversion only means: let the Python check decide */
    if (ok && (!set_int64_list(ends_list, packages, ends) ||
               !set_int64_list(used_list, packages, used))) {
        PyMem_Free(state);
        return NULL;
    }
    PyMem_Free(state);
    return PyBool_FromLong(ok);
}

/* ---- paths that cannot share one tree (paths.tree_problem) -------------------------- */

/* The keyed hash the interpreter gives str and bytes (SipHash: a path list is untrusted,
 * so no hash flooding), over the ASCII lowercase form of text[:n], without an object. */
static Py_hash_t folded_hash(const unsigned char *text, Py_ssize_t n, unsigned char *buf) {
    for (Py_ssize_t k = 0; k < n; k++)
        buf[k] = text[k] >= 'A' && text[k] <= 'Z' ? text[k] + 32 : text[k];
#if PY_VERSION_HEX >= 0x030E0000
    return Py_HashBuffer(buf, n);
#else
    return _Py_HashBytes(buf, n);
#endif
}

static int folded_equal(const unsigned char *a, const unsigned char *b, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char x = a[k] >= 'A' && a[k] <= 'Z' ? a[k] + 32 : a[k];
        unsigned char y = b[k] >= 'A' && b[k] <= 'Z' ? b[k] + 32 : b[k];
        if (x != y) return 0;
    }
    return 1;
}

typedef struct {
    const unsigned char **text;
    Py_ssize_t *len;
    Py_hash_t *hashes;
    uint32_t *slots; /* index + 1 into the paths; 0: empty */
    size_t mask;
} Folded;

/* Whether the folded text[:n] is a path in the table; when add, insert it (as path
 * `index`) unless it is. The table is at most half full: every probe ends. */
static int folded_find(Folded *t, const unsigned char *text, Py_ssize_t n, Py_hash_t h,
                       int add, uint32_t index) {
    for (size_t at = (size_t)h & t->mask;; at = (at + 1) & t->mask) {
        uint32_t slot = t->slots[at];
        if (slot == 0) {
            if (add) t->slots[at] = index + 1;
            return 0;
        }
        slot--;
        if (t->hashes[slot] == h && t->len[slot] == n && folded_equal(t->text[slot], text, n))
            return 1;
    }
}

/* Byte order of text[:n] against an ASCII str: code point order, as str.__lt__. */
static int compare(const unsigned char *a, Py_ssize_t n, const unsigned char *b, Py_ssize_t m) {
    int order = memcmp(a, b, (size_t)(n < m ? n : m));
    return order ? order : (n > m) - (n < m);
}

/* Lowercase paths, strictly sorted (a checked manifest): nothing folds and nothing
 * repeats, so only a file that is also a directory is left, looked up by bisection. */
static int sorted_tree_clear(const unsigned char **text, const Py_ssize_t *len, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t same = 0;
        if (i > 0)
            while (same < len[i] && same < len[i - 1] && text[i][same] == text[i - 1][same])
                same++;
        /* A directory of the previous path too (the same bytes up to and including its
         * "/") was looked up then: one lookup per directory, not per file. */
        for (Py_ssize_t k = 1; k < len[i]; k++) {
            if (text[i][k] != '/' || k < same) continue;
            Py_ssize_t low = 0, high = i; /* a prefix sorts before its path */
            while (low < high) {
                Py_ssize_t mid = low + (high - low) / 2;
                int order = compare(text[mid], len[mid], text[i], k);
                if (order == 0) return 0;
                if (order < 0) low = mid + 1;
                else high = mid;
            }
        }
    }
    return 1;
}

/* Any ASCII paths: a table of their folded forms finds twins; each directory (as above,
 * once per run of paths sharing it) is looked up in the table. */
static int hashed_tree_clear(const unsigned char **text, Py_ssize_t *len, Py_ssize_t n,
                             Py_ssize_t longest) {
    size_t capacity = 16;
    while (capacity < 2 * (size_t)n) capacity *= 2;
    Folded t = {text, len, PyMem_Malloc(sizeof(Py_hash_t) * (size_t)(n ? n : 1)),
                PyMem_Calloc(capacity, sizeof(uint32_t)), capacity - 1};
    unsigned char *buf = PyMem_Malloc((size_t)longest + 1);
    int clear = -1;
    if (t.hashes == NULL || t.slots == NULL || buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    clear = 1;
    for (Py_ssize_t i = 0; clear && i < n; i++) {
        t.hashes[i] = folded_hash(text[i], len[i], buf);
        if (folded_find(&t, text[i], len[i], t.hashes[i], 1, (uint32_t)i)) clear = 0;
    }
    for (Py_ssize_t i = 0; clear && i < n; i++) {
        Py_ssize_t same = 0;
        if (i > 0)
            while (same < len[i] && same < len[i - 1] && text[i][same] == text[i - 1][same])
                same++;
        for (Py_ssize_t k = 1; clear && k < len[i]; k++) {
            if (text[i][k] != '/' || k < same) continue;
            if (folded_find(&t, text[i], k, folded_hash(text[i], k, buf), 0, 0)) clear = 0;
        }
    }
done:
    PyMem_Free(t.hashes);
    PyMem_Free(t.slots);
    PyMem_Free(buf);
    return clear;
}

/* True when no two paths collide: no duplicate, no two equal once folded (ASCII
 * lowercase: what paths.fold does to ASCII), no path that is also a directory (a prefix
 * before a "/", except "") of another. False when one does, or when a path is not an
 * ASCII str (the Python check decides). */
static PyObject *tree_clear(PyObject *self, PyObject *paths) {
    (void)self;
    if (!column(paths, -1, "paths")) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (n > (Py_ssize_t)(UINT32_MAX / 4)) Py_RETURN_FALSE;
    const unsigned char **text = PyMem_Malloc(sizeof(char *) * (size_t)(n ? n : 1));
    Py_ssize_t *len = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    if (text == NULL || len == NULL) {
        PyMem_Free(text);
        PyMem_Free(len);
        return PyErr_NoMemory();
    }
    int clear = 1, lower = 1, sorted = 1;
    Py_ssize_t longest = 0;
    for (Py_ssize_t i = 0; clear && i < n; i++) {
        PyObject *p = PyList_GET_ITEM(paths, i);
        if (!PyUnicode_CheckExact(p) || !ready(p) || !PyUnicode_IS_ASCII(p)) {
            clear = 0;
            break;
        }
        text[i] = PyUnicode_1BYTE_DATA(p);
        len[i] = PyUnicode_GET_LENGTH(p);
        longest = len[i] > longest ? len[i] : longest;
        for (Py_ssize_t k = 0; lower && k < len[i]; k++)
            lower = !(text[i][k] >= 'A' && text[i][k] <= 'Z');
        if (sorted && i > 0) sorted = compare(text[i - 1], len[i - 1], text[i], len[i]) < 0;
    }
    if (clear)
        clear = lower && sorted ? sorted_tree_clear(text, len, n)
                                : hashed_tree_clear(text, len, n, longest);
    PyMem_Free(text);
    PyMem_Free(len);
    if (clear < 0) return NULL;
    return PyBool_FromLong(clear);
}

/* ---- file entries (manifest.make_entries) ------------------------------------------- */

static PyObject *file_entries(PyObject *self, PyObject *args) {
    (void)self;
    PyTypeObject *type;
    PyObject *cols[5];
    if (!PyArg_ParseTuple(args, "O!OOOOO", &PyType_Type, &type, &cols[0], &cols[1], &cols[2],
                          &cols[3], &cols[4]))
        return NULL;
    /* A plain tuple subclass (a NamedTuple): no instance dict, no other fields. */
    if (!PyType_IsSubtype(type, &PyTuple_Type) ||
        type->tp_basicsize != PyTuple_Type.tp_basicsize ||
        type->tp_itemsize != PyTuple_Type.tp_itemsize || type->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "file_entries needs a NamedTuple type");
        return NULL;
    }
    if (!column(cols[0], -1, "paths")) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(cols[0]);
    for (int k = 1; k < 5; k++)
        if (!column(cols[k], n, "a column")) return NULL;
    PyObject *out = PyTuple_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
#if PY_VERSION_HEX < 0x030E0000
        PyObject *entry = type->tp_alloc(type, 5);
        if (entry == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        for (int k = 0; k < 5; k++) {
            PyObject *item = PyList_GET_ITEM(cols[k], i);
            Py_INCREF(item);
            PyTuple_SET_ITEM(entry, k, item);
        }
#else /* tuples gained fields (a cached hash): let the type build them */
        PyObject *items = PyTuple_Pack(5, PyList_GET_ITEM(cols[0], i), PyList_GET_ITEM(cols[1], i),
                                       PyList_GET_ITEM(cols[2], i), PyList_GET_ITEM(cols[3], i),
                                       PyList_GET_ITEM(cols[4], i));
        PyObject *argv = items == NULL ? NULL : PyTuple_Pack(1, items);
        PyObject *entry = argv == NULL ? NULL : PyTuple_Type.tp_new(type, argv, NULL);
        Py_XDECREF(argv);
        Py_XDECREF(items);
        if (entry == NULL) {
            Py_DECREF(out);
            return NULL;
        }
#endif
        PyObject_GC_UnTrack(entry);
        PyTuple_SET_ITEM(out, i, entry);
    }
    return out;
}

PyMethodDef dspkg_check_methods[] = {
    {"paths_ok", paths_ok, METH_O, "Whether every path is acceptable (paths.all_paths_ok)."},
    {"records_ok", records_ok, METH_VARARGS,
     "Whether every record is well formed on its own (manifest_checks.records_ok)."},
    {"layout_add", layout_add, METH_VARARGS,
     "Check and apply records to the package layout; False: let the Python check decide."},
    {"tree_clear", tree_clear, METH_O,
     "True when no two ASCII paths collide; False: there may be a collision."},
    {"file_entries", file_entries, METH_VARARGS,
     "NamedTuple entries of five columns, untracked by the cycle collector."},
    {NULL, NULL, 0, NULL},
};

void dspkg_checks_init(void) {
    for (int c = '0'; c <= '9'; c++) hex_digit[c] = 1;
    for (int c = 'a'; c <= 'f'; c++) hex_digit[c] = 1;
}
