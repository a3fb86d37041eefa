/* dspkg._readtable: the mount's READ of files whose verified object is in the cache,
 * without the interpreter.
 *
 * A FUSE READ served in Python costs a callback through ctypes (a thread state, the
 * interpreter's lock, mfusepy's wrappers) on top of the few system calls that serve it;
 * in a pass over many small files that was most of the mount's CPU. The mount installs
 * fuse_read() below as libfuse's read operation. It looks the path up in a table of the
 * version's files (path -> size, sha256; built from the manifest's entries in C), opens the cache object the sha256 names and
 * serves it when the object is as dspkg left it (cache.fingerprint_ok: a read-only
 * regular file of the right size whose ctime has not moved away from its mtime), checked
 * with fstat on the descriptor it reads from. Every other case (no table yet, a path not
 * in it, an object not in the cache yet, one touched behind dspkg's back, a refused file,
 * any error) goes to the Python read it replaced, which fetches, verifies, re-hashes or
 * refuses as before. No byte is served that the Python read would not serve.
 *
 * Each worker thread keeps the descriptor of the last object it read (a big file comes
 * in several READs: one open, then an fstat and a pread each).
 *
 * Read-ahead still hears of every file read from its first byte: the file's index is
 * queued and an eventfd wakes the event loop when the queue was empty, which drains it
 * (drain()), so the loop wakes once per batch of reads, not once per file.
 *
 * One table is active per process (a mount process serves one version).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* O_NOATIME */
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define NOTES_MAX (1 << 16) /* reads queued for read-ahead before new ones are dropped */

typedef int (*read_fn)(const char *, char *, size_t, off_t, void *);

typedef struct {
    PyObject_HEAD
    Py_ssize_t count;
    int objects_fd; /* "<cache>/objects": objects are opened relative to it */
    char *names;       /* every path ("a/b.jpg"), NUL-terminated, one after another */
    size_t *name_at;   /* where path i starts in names */
    unsigned char *shas; /* 32 bytes a file */
    long long *sizes;
    unsigned char *refused; /* 1: always the Python read */
    uint32_t *slots;        /* open addressing: index + 1, 0 when free */
    size_t mask;
    long long slack_ns;
    /* read-ahead notes */
    pthread_mutex_t lock;
    int lock_ready;
    long long *notes, *spare; /* the queue, and the buffer drain() swaps in */
    size_t notes_len;
    int efd;
    /* figures */
    unsigned long long served, passed, dropped;
} Table;

static Table *volatile active;   /* the table fuse_read serves from, or NULL */
static unsigned long activations; /* which activation of a table a kept descriptor is of */
static read_fn volatile fallback; /* the Python read */

static uint64_t hash_path(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    /* Mixed down: FNV's low bits (the slot) barely differ for names that differ late. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* The index of the file at path ("/a/b.jpg", as FUSE names it), or -1. */
static Py_ssize_t lookup(const Table *t, const char *path) {
    if (*path++ != '/') return -1;
    size_t n = strlen(path);
    size_t slot = (size_t)hash_path(path, n) & t->mask;
    for (;;) {
        uint32_t v = t->slots[slot];
        if (v == 0) return -1;
        const char *name = t->names + t->name_at[v - 1];
        if (strcmp(name, path) == 0) return (Py_ssize_t)v - 1;
        slot = (slot + 1) & t->mask;
    }
}

/* The fingerprint of cache.fingerprint_ok. */
static int untouched(const Table *t, const struct stat *st, long long size) {
    long long ctime_ns = (long long)st->st_ctim.tv_sec * 1000000000ll + st->st_ctim.tv_nsec;
    long long mtime_ns = (long long)st->st_mtim.tv_sec * 1000000000ll + st->st_mtim.tv_nsec;
    long long drift = ctime_ns - mtime_ns;
    return st->st_size == size && S_ISREG(st->st_mode) && !(st->st_mode & 0222) && drift >= 0 &&
           drift <= t->slack_ns;
}

/* "xx/yyyy...": the object's name under the objects directory (cache.object_path). */
static void object_name(const Table *t, Py_ssize_t i, char out[67]) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *d = t->shas + 32 * (size_t)i;
    char *p = out;
    *p++ = hex[d[0] >> 4];
    *p++ = hex[d[0] & 15];
    *p++ = '/';
    for (int k = 1; k < 32; k++) {
        *p++ = hex[d[k] >> 4];
        *p++ = hex[d[k] & 15];
    }
    *p = 0;
}

static void note(Table *t, Py_ssize_t index) {
    pthread_mutex_lock(&t->lock);
    int wake = t->notes_len == 0;
    if (t->notes_len < NOTES_MAX)
        t->notes[t->notes_len++] = index;
    else
        t->dropped++;
    pthread_mutex_unlock(&t->lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t ignored = write(t->efd, &one, sizeof one);
        (void)ignored; /* a full counter (never, at 2^64) still wakes the loop */
    }
}

/* This worker thread's last object: a file read in several READs opens it once. */
static __thread unsigned long kept_activation;
static __thread Py_ssize_t kept_index = -1;
static __thread int kept_fd = -1;

static void forget_kept(void) {
    if (kept_fd >= 0) close(kept_fd);
    kept_fd = -1;
    kept_index = -1;
    kept_activation = 0;
}

static int pass_on(const char *path, char *buf, size_t size, off_t offset, void *fi) {
    read_fn python = fallback;
    Table *t = active;
    if (t) __atomic_fetch_add(&t->passed, 1, __ATOMIC_RELAXED);
    return python ? python(path, buf, size, offset, fi) : -EIO;
}

/* libfuse 3's read operation: int read(path, buf, size, offset, fuse_file_info *). */
static int fuse_read(const char *path, char *buf, size_t size, off_t offset, void *fi) {
    Table *t = active;
    if (t == NULL || path == NULL) return pass_on(path, buf, size, offset, fi);
    Py_ssize_t i = lookup(t, path);
    if (i < 0 || __atomic_load_n(&t->refused[i], __ATOMIC_RELAXED))
        return pass_on(path, buf, size, offset, fi);
    unsigned long activation = __atomic_load_n(&activations, __ATOMIC_ACQUIRE);
    int fd = -1;
    if (kept_activation == activation && kept_index == i) {
        fd = kept_fd;
    } else {
        forget_kept();
        char name[67];
        object_name(t, i, name);
        /* No access time: a fresh object's first read would otherwise write its inode
         * (relatime updates an atime that is not after the mtime). Only the owner may
         * ask; anyone else opens it plainly. */
        fd = openat(t->objects_fd, name, O_RDONLY | O_CLOEXEC | O_NOATIME);
        if (fd < 0 && errno == EPERM) fd = openat(t->objects_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return pass_on(path, buf, size, offset, fi);
        kept_activation = activation;
        kept_index = i;
        kept_fd = fd;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !untouched(t, &st, t->sizes[i])) {
        forget_kept();
        return pass_on(path, buf, size, offset, fi);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, offset + (off_t)got);
        if (n < 0) {
            if (errno == EINTR) continue;
            forget_kept();
            return pass_on(path, buf, size, offset, fi);
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    if (offset + (off_t)got >= (off_t)t->sizes[i]) forget_kept(); /* read to its end */
    if (offset == 0) note(t, i);
    __atomic_fetch_add(&t->served, 1, __ATOMIC_RELAXED);
    return (int)got;
}

/* ---- the Python side ---------------------------------------------------------------- */

static void free_table(Table *t) {
    if (t->objects_fd >= 0) close(t->objects_fd);
    t->objects_fd = -1;
    PyMem_Free(t->names);
    PyMem_Free(t->name_at);
    PyMem_Free(t->shas);
    PyMem_Free(t->sizes);
    PyMem_Free(t->refused);
    PyMem_Free(t->slots);
    PyMem_Free(t->notes);
    PyMem_Free(t->spare);
    t->names = NULL;
    t->name_at = NULL;
    t->shas = t->refused = NULL;
    t->sizes = t->notes = t->spare = NULL;
    t->slots = NULL;
}

static int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Table(objects, files, slack_ns): files as the manifest holds them, tuples that start
 * (path, size, sha256 hex), in its order; a file's index is its position there. */
static int Table_init(Table *t, PyObject *args, PyObject *kwds) {
    (void)kwds;
    const char *objects;
    PyObject *files;
    long long slack_ns;
    if (!PyArg_ParseTuple(args, "sOL", &objects, &files, &slack_ns)) return -1;
    if (t->count || t->names) {
        PyErr_SetString(PyExc_RuntimeError, "a table is built once");
        return -1;
    }
    PyObject *seq = PySequence_Fast(files, "files must be a sequence");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if ((unsigned long long)n >= UINT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "too many files for one table");
        goto error;
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) < 3) {
            PyErr_SetString(PyExc_TypeError, "a file is a tuple (path, size, sha256, ...)");
            goto error;
        }
        Py_ssize_t len;
        if (!PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(f, 0), &len)) goto error;
        total += (size_t)len + 1;
    }
    size_t capacity = 16;
    while (capacity < 2 * (size_t)n) capacity <<= 1;
    t->names = PyMem_Malloc(total ? total : 1);
    t->name_at = PyMem_Malloc(sizeof(size_t) * (size_t)(n ? n : 1));
    t->shas = PyMem_Malloc(32 * (size_t)(n ? n : 1));
    t->sizes = PyMem_Malloc(sizeof(long long) * (size_t)(n ? n : 1));
    t->refused = PyMem_Calloc((size_t)(n ? n : 1), 1);
    t->slots = PyMem_Calloc(capacity, sizeof(uint32_t));
    t->notes = PyMem_Malloc(sizeof(long long) * NOTES_MAX);
    t->spare = PyMem_Malloc(sizeof(long long) * NOTES_MAX);
    if (!t->names || !t->name_at || !t->shas || !t->sizes || !t->refused || !t->slots ||
        !t->notes || !t->spare) {
        PyErr_NoMemory();
        goto error;
    }
    t->objects_fd = open(objects, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (t->objects_fd < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, objects);
        goto error;
    }
    t->mask = capacity - 1;
    t->slack_ns = slack_ns;
    /* With the interpreter's lock: each file's name, hash text and size. */
    const char **hexes = PyMem_Malloc(sizeof(char *) * (size_t)(n ? n : 1));
    if (!hexes) {
        PyErr_NoMemory();
        goto error;
    }
    size_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t len, hex_len;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(f, 0), &len);
        hexes[i] = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(f, 2), &hex_len);
        if (!hexes[i]) goto error_hexes;
        if (hex_len != 64) {
            PyErr_SetString(PyExc_ValueError, "a sha256 is 64 hex digits");
            goto error_hexes;
        }
        t->sizes[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(f, 1));
        if (t->sizes[i] == -1 && PyErr_Occurred()) goto error_hexes;
        memcpy(t->names + at, name, (size_t)len + 1);
        t->name_at[i] = at;
        at += (size_t)len + 1;
    }
    /* Without it (the strings stay alive: seq holds them): hashes parsed, names placed. A
     * mount builds its table while its first reads are served in Python. */
    Py_ssize_t bad_hex = -1, twice = -1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && bad_hex < 0 && twice < 0; i++) {
        const char *hex = hexes[i];
        for (int k = 0; k < 32; k++) {
            int hi = hex_value(hex[2 * k]), lo = hex_value(hex[2 * k + 1]);
            if (hi < 0 || lo < 0) {
                bad_hex = i;
                break;
            }
            t->shas[32 * (size_t)i + (size_t)k] = (unsigned char)(hi << 4 | lo);
        }
        const char *name = t->names + t->name_at[i];
        size_t slot = (size_t)hash_path(name, strlen(name)) & t->mask;
        while (t->slots[slot]) {
            if (strcmp(t->names + t->name_at[t->slots[slot] - 1], name) == 0) {
                twice = i;
                break;
            }
            slot = (slot + 1) & t->mask;
        }
        t->slots[slot] = (uint32_t)(i + 1);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(hexes);
    hexes = NULL;
    if (bad_hex >= 0) {
        PyErr_SetString(PyExc_ValueError, "a sha256 is lowercase hex");
        goto error;
    }
    if (twice >= 0) {
        PyErr_Format(PyExc_ValueError, "the path %s is listed twice", t->names + t->name_at[twice]);
        goto error;
    }
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto error;
    }
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot make a mutex");
        goto error;
    }
    t->lock_ready = 1;
    t->count = n;
    Py_DECREF(seq);
    return 0;
error_hexes:
    PyMem_Free(hexes);
error:
    Py_DECREF(seq);
    if (t->efd >= 0) close(t->efd);
    t->efd = -1;
    free_table(t);
    return -1;
}

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Table *t = (Table *)PyType_GenericNew(type, args, kwds);
    if (t) t->efd = t->objects_fd = -1;
    return (PyObject *)t;
}

static void Table_dealloc(Table *t) {
    /* A table libfuse may still call into is never freed (activate keeps a reference
     * until deactivate). */
    if (t->efd >= 0) close(t->efd);
    if (t->lock_ready) pthread_mutex_destroy(&t->lock);
    free_table(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *Table_activate(Table *t, PyObject *unused) {
    (void)unused;
    if (!t->lock_ready) {
        PyErr_SetString(PyExc_RuntimeError, "the table was not built");
        return NULL;
    }
    Table *before = active;
    if (before == t) Py_RETURN_NONE;
    Py_INCREF(t);
    __atomic_add_fetch(&activations, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&active, t, __ATOMIC_RELEASE);
    Py_XDECREF(before);
    Py_RETURN_NONE;
}

static PyObject *Table_deactivate(Table *t, PyObject *unused) {
    (void)unused;
    if (active == t) {
        /* Only once libfuse stopped calling (the mount ended): a worker may hold t. */
        __atomic_store_n(&active, NULL, __ATOMIC_RELEASE);
        Py_DECREF(t);
    }
    Py_RETURN_NONE;
}

static PyObject *Table_refuse(Table *t, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= t->count) {
        PyErr_SetString(PyExc_IndexError, "no such file");
        return NULL;
    }
    __atomic_store_n(&t->refused[i], 1, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *Table_drain(Table *t, PyObject *unused) {
    (void)unused;
    if (!t->lock_ready) return PyList_New(0);
    uint64_t counter;
    ssize_t ignored = read(t->efd, &counter, sizeof counter); /* first: see note() */
    (void)ignored;
    /* One drain at a time (the event loop's thread): the spare buffer is its own. */
    pthread_mutex_lock(&t->lock);
    long long *taken = t->notes;
    size_t n = t->notes_len;
    t->notes = t->spare;
    t->spare = taken;
    t->notes_len = 0;
    pthread_mutex_unlock(&t->lock);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t k = 0; out && k < n; k++) {
        PyObject *v = PyLong_FromLongLong(taken[k]);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)k, v);
    }
    return out;
}

static PyObject *Table_lookup(Table *t, PyObject *arg) {
    const char *path = PyUnicode_AsUTF8(arg);
    if (!path) return NULL;
    if (!t->lock_ready) return PyLong_FromLong(-1);
    return PyLong_FromSsize_t(lookup(t, path));
}

static PyObject *Table_get_notes_fd(Table *t, void *closure) {
    (void)closure;
    return PyLong_FromLong(t->efd);
}

static PyObject *Table_get_figures(Table *t, void *closure) {
    (void)closure;
    return Py_BuildValue("{sKsKsK}", "served", __atomic_load_n(&t->served, __ATOMIC_RELAXED),
                         "passed", __atomic_load_n(&t->passed, __ATOMIC_RELAXED), "dropped",
                         t->dropped);
}

static PyObject *Table_len(Table *t, PyObject *unused) {
    (void)unused;
    return PyLong_FromSsize_t(t->count);
}

static PyMethodDef Table_methods[] = {
    {"activate", (PyCFunction)Table_activate, METH_NOARGS,
     "Serve fuse_read from this table (one per process)."},
    {"deactivate", (PyCFunction)Table_deactivate, METH_NOARGS,
     "Stop serving from this table; only once libfuse stopped calling."},
    {"refuse", (PyCFunction)Table_refuse, METH_O,
     "Send every later read of file i to the Python read."},
    {"drain", (PyCFunction)Table_drain, METH_NOARGS,
     "The indexes of files read from their first byte since the last drain, in order."},
    {"lookup", (PyCFunction)Table_lookup, METH_O, "The index of a path, or -1."},
    {"count", (PyCFunction)Table_len, METH_NOARGS, "Files in the table."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Table_getset[] = {
    {"notes_fd", (getter)Table_get_notes_fd, NULL, "The eventfd that says drain() has notes.",
     NULL},
    {"figures", (getter)Table_get_figures, NULL,
     "Reads served here, passed to Python, notes dropped.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dspkg._readtable.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Table_new,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
    .tp_doc = "A version's files for fuse_read (see the module doc).",
};

static PyObject *read_address(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromVoidPtr((void *)fuse_read);
}

static PyObject *set_fallback(PyObject *self, PyObject *arg) {
    (void)self;
    void *address = PyLong_AsVoidPtr(arg);
    if (address == NULL && PyErr_Occurred()) return NULL;
    __atomic_store_n(&fallback, (read_fn)address, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"read_address", read_address, METH_NOARGS,
     "The address of fuse_read, libfuse 3's read operation."},
    {"set_fallback", set_fallback, METH_O,
     "The address of the read operation fuse_read hands what it does not serve to."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dspkg._readtable", NULL, -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__readtable(void) {
    if (PyType_Ready(&TableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0) return NULL;
    return m;
}
