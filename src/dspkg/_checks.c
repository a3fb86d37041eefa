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
 *   tree_clear(paths, fold)    paths.tree_problem(paths) is None
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

/* Each path's folded form (paths.fold): an ASCII path is its own bytes, lowercased on the
 * fly; any other is the str its fold returned (kept alive in a list). */
typedef struct {
    const void *data;
    Py_ssize_t len;
    int kind;
    int ascii; /* data are the path's own bytes: lowercase them when reading */
} Key;

static Py_UCS4 key_at(const Key *k, Py_ssize_t i) {
    Py_UCS4 c = PyUnicode_READ(k->kind, k->data, i);
    return k->ascii && c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* Whether the folded form a equals the probe b, of n characters. Equal strings have the
 * same kind (the interpreter keeps each str in its narrowest), which is why a probe is
 * always a whole str in its own form (probe_of). */
static int keys_equal(const Key *a, const Key *b, Py_ssize_t n) {
    if (a->len != n || a->kind != b->kind) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (key_at(a, i) != key_at(b, i)) return 0;
    return 1;
}

/* The interpreter's keyed hash of the str key[:n] (SipHash: a path list is untrusted, so
 * no hash flooding), as hash() gives it, and in *probe that str to compare; *hold, when
 * set, keeps the probe's characters alive until the caller releases it. -1 on error. */
static Py_hash_t probe_of(const Key *k, Py_ssize_t n, PyObject *owner, unsigned char *buf,
                          Key *probe, PyObject **hold) {
    *probe = *k;
    probe->len = n;
    *hold = NULL;
    if (k->ascii) {
        const unsigned char *text = k->data;
        for (Py_ssize_t i = 0; i < n; i++)
            buf[i] = text[i] >= 'A' && text[i] <= 'Z' ? text[i] + 32 : text[i];
#if PY_VERSION_HEX >= 0x030E0000
        return Py_HashBuffer(buf, n);
#else
        return _Py_HashBytes(buf, n);
#endif
    }
    if (n == k->len) return PyObject_Hash(owner);
    /* A prefix of a folded key may be narrower than the key ("a/日" has "a"): let the
     * interpreter make that str, in its own form. */
    PyObject *prefix = PyUnicode_Substring(owner, 0, n);
    if (prefix == NULL) return -1;
    *hold = prefix;
    *probe = (Key){PyUnicode_DATA(prefix), n, PyUnicode_KIND(prefix), 0};
    return PyObject_Hash(prefix);
}

typedef struct {
    Key *keys;
    Py_hash_t *hashes;
    uint32_t *slots; /* index + 1 into keys; 0: empty */
    size_t mask;
} Table;

/* Whether key[:n] (of hash h) is a path's folded form; when add, insert path `index`
 * unless it is. The table is at most half full: every probe ends. */
static int table_find(Table *t, const Key *key, Py_ssize_t n, Py_hash_t h, int add,
                      uint32_t index) {
    for (size_t at = (size_t)h & t->mask;; at = (at + 1) & t->mask) {
        uint32_t slot = t->slots[at];
        if (slot == 0) {
            if (add) t->slots[at] = index + 1;
            return 0;
        }
        slot--;
        if (t->hashes[slot] == h && keys_equal(&t->keys[slot], key, n))
            return 1;
    }
}

/* Byte order of text[:n] against an ASCII str: code point order, as str.__lt__. */
static int compare(const unsigned char *a, Py_ssize_t n, const unsigned char *b, Py_ssize_t m) {
    int order = memcmp(a, b, (size_t)(n < m ? n : m));
    return order ? order : (n > m) - (n < m);
}

/* How many leading bytes two ASCII keys share. */
static Py_ssize_t shared(const Key *a, const Key *b) {
    if (!a->ascii || !b->ascii) return 0;
    const unsigned char *x = a->data, *y = b->data;
    Py_ssize_t i = 0;
    while (i < a->len && i < b->len && x[i] == y[i]) i++;
    return i;
}

/* Lowercase ASCII paths, strictly sorted (a checked manifest): nothing folds and nothing
 * repeats, so only a file that is also a directory is left, looked up by bisection. A
 * directory of the previous path too (the same bytes up to and including its "/") was
 * looked up then: one lookup per directory, not per file. */
static int sorted_tree_clear(const Key *keys, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *text = keys[i].data;
        Py_ssize_t same = i > 0 ? shared(&keys[i - 1], &keys[i]) : 0;
        for (Py_ssize_t k = same > 1 ? same : 1; k < keys[i].len; k++) {
            if (text[k] != '/') continue;
            Py_ssize_t low = 0, high = i; /* a prefix sorts before its path */
            while (low < high) {
                Py_ssize_t mid = low + (high - low) / 2;
                int order = compare(keys[mid].data, keys[mid].len, text, k);
                if (order == 0) return 0;
                if (order < 0) low = mid + 1;
                else high = mid;
            }
        }
    }
    return 1;
}

/* Any paths: a table of the folded forms finds twins, then each directory of each folded
 * form (once per run of ASCII paths sharing it) is looked up. 1: clear, 0: not, -1: error. */
static int hashed_tree_clear(PyObject *folded, Key *keys, Py_ssize_t n, Py_ssize_t longest) {
    size_t capacity = 16;
    while (capacity < 2 * (size_t)n) capacity *= 2;
    Table t = {keys, PyMem_Malloc(sizeof(Py_hash_t) * (size_t)(n ? n : 1)),
               PyMem_Calloc(capacity, sizeof(uint32_t)), capacity - 1};
    unsigned char *buf = PyMem_Malloc((size_t)longest + 1);
    int clear = -1;
    if (t.hashes == NULL || t.slots == NULL || buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    clear = 1;
    Key probe;
    PyObject *hold;
    for (Py_ssize_t i = 0; clear == 1 && i < n; i++) {
        PyObject *owner = keys[i].ascii ? NULL : PyList_GET_ITEM(folded, i);
        t.hashes[i] = probe_of(&keys[i], keys[i].len, owner, buf, &probe, &hold);
        if (t.hashes[i] == -1 && PyErr_Occurred()) clear = -1;
        else if (table_find(&t, &keys[i], keys[i].len, t.hashes[i], 1, (uint32_t)i)) clear = 0;
    }
    for (Py_ssize_t i = 0; clear == 1 && i < n; i++) {
        PyObject *owner = keys[i].ascii ? NULL : PyList_GET_ITEM(folded, i);
        Py_ssize_t same = i > 0 ? shared(&keys[i - 1], &keys[i]) : 0;
        for (Py_ssize_t k = same > 1 ? same : 1; clear == 1 && k < keys[i].len; k++) {
            if (PyUnicode_READ(keys[i].kind, keys[i].data, k) != '/') continue;
            Py_hash_t h = probe_of(&keys[i], k, owner, buf, &probe, &hold);
            if (h == -1 && PyErr_Occurred()) clear = -1;
            else if (table_find(&t, &probe, k, h, 0, 0)) clear = 0;
            Py_XDECREF(hold);
        }
    }
done:
    PyMem_Free(t.hashes);
    PyMem_Free(t.slots);
    PyMem_Free(buf);
    return clear;
}

/* True when no two paths collide: no duplicate, no two with equal folded forms (fold: the
 * paths.fold function, called for paths that are not ASCII; ASCII ones fold to lowercase
 * here), no path whose folded form is a folded directory (a prefix before a "/", except "")
 * of another. False when one does, or when anything is unexpected (the Python check
 * decides). */
static PyObject *tree_clear(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *paths, *fold;
    if (!PyArg_ParseTuple(args, "OO", &paths, &fold)) return NULL;
    if (!column(paths, -1, "paths")) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (n > (Py_ssize_t)(UINT32_MAX / 4)) Py_RETURN_FALSE;
    Key *keys = PyMem_Malloc(sizeof(Key) * (size_t)(n ? n : 1));
    if (keys == NULL) return PyErr_NoMemory();
    int clear = 1, lower = 1, sorted = 1;
    Py_ssize_t longest = 0, others = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(paths, i);
        if (!PyUnicode_CheckExact(p) || !ready(p)) {
            clear = 0;
            break;
        }
        if (!PyUnicode_IS_ASCII(p)) {
            keys[i] = (Key){NULL, 0, 0, 0}; /* folded below */
            others++;
            continue;
        }
        keys[i] = (Key){PyUnicode_1BYTE_DATA(p), PyUnicode_GET_LENGTH(p), 1, 1};
        const unsigned char *text = keys[i].data;
        for (Py_ssize_t k = 0; lower && k < keys[i].len; k++)
            lower = !(text[k] >= 'A' && text[k] <= 'Z');
        if (sorted && i > 0 && keys[i - 1].data != NULL)
            sorted = compare(keys[i - 1].data, keys[i - 1].len, text, keys[i].len) < 0;
        longest = keys[i].len > longest ? keys[i].len : longest;
    }
    /* Paths that are not ASCII fold through paths.fold: Python code, so first a list of our
     * own holds every path whose characters the keys point at. */
    PyObject *held = NULL, *folded = NULL;
    if (clear && others) {
        lower = sorted = 0;
        held = PyList_GetSlice(paths, 0, n);
        folded = PyList_New(n);
        if (held == NULL || folded == NULL) clear = -1;
        for (Py_ssize_t i = 0; clear == 1 && i < n; i++) {
            if (keys[i].data != NULL) continue;
            PyObject *key = PyObject_CallOneArg(fold, PyList_GET_ITEM(held, i));
            if (key == NULL || !PyUnicode_CheckExact(key) || !ready(key)) {
                Py_XDECREF(key);
                PyErr_Clear();
                clear = 0;
                break;
            }
            PyList_SET_ITEM(folded, i, key);
            keys[i] = (Key){PyUnicode_DATA(key), PyUnicode_GET_LENGTH(key), PyUnicode_KIND(key), 0};
            longest = keys[i].len > longest ? keys[i].len : longest;
        }
    }
    if (clear == 1)
        clear = lower && sorted ? sorted_tree_clear(keys, n)
                                : hashed_tree_clear(folded, keys, n, longest);
    PyMem_Free(keys);
    Py_XDECREF(held);
    Py_XDECREF(folded);
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
    {"tree_clear", tree_clear, METH_VARARGS,
     "True when no two paths collide (fold: paths.fold); False: there may be a collision."},
    {"file_entries", file_entries, METH_VARARGS,
     "NamedTuple entries of five columns, untracked by the cycle collector."},
    {NULL, NULL, 0, NULL},
};

void dspkg_checks_init(void) {
    for (int c = '0'; c <= '9'; c++) hex_digit[c] = 1;
    for (int c = 'a'; c <= 'f'; c++) hex_digit[c] = 1;
}
