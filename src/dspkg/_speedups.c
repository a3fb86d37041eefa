/* dspkg._speedups: the per-entry loop of a cold pull, without the interpreter.
 *
 * An Extractor is fed a ranged GET of a package, chunk after chunk, in order. It
 * parses local headers (the .vhpkgzip subset: STORED, no encryption, no data
 * descriptors), and for every entry the plan wants it writes the data to a target
 * file while hashing it with SHA-256, checks size and digest against the manifest,
 * then links (or renames) the target to the object's cache path. Entries the plan
 * does not want are skipped. In rename mode (objects for the cache alone: a mount, a
 * prefetch) the data goes to an unnamed file in the object's own folder (O_TMPFILE)
 * that is linked to its name once verified: no rename out of one shared temp folder,
 * whose lock the disk threads would wait on, and nothing to clean up after a crash. One call to feed() handles a whole chunk with the GIL
 * released: four system calls per file and no Python objects per entry.
 *
 * SHA-256 comes from the OpenSSL library the interpreter's hashlib already loaded
 * (its path is passed to load_crypto), through dlsym: no headers or link-time
 * dependency. The pure-Python path in fetcher.py does the same work and is used when
 * this module is missing; the test suite runs both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- OpenSSL through dlsym -------------------------------------------------------- */

typedef void *(*md_fn)(void);
typedef void *(*ctx_new_fn)(void);
typedef void (*ctx_free_fn)(void *);
typedef int (*init_fn)(void *, const void *, void *);
typedef int (*update_fn)(void *, const void *, size_t);
typedef int (*final_fn)(void *, unsigned char *, unsigned int *);

static struct {
    int loaded;
    const void *sha256;
    ctx_new_fn ctx_new;
    ctx_free_fn ctx_free;
    init_fn init;
    update_fn update;
    final_fn final;
} crypto;

static PyObject *load_crypto(PyObject *self, PyObject *arg) {
    (void)self;
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL) return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        PyErr_Format(PyExc_OSError, "cannot load %s: %s", path, dlerror());
        return NULL;
    }
    md_fn md = (md_fn)dlsym(lib, "EVP_sha256");
    crypto.ctx_new = (ctx_new_fn)dlsym(lib, "EVP_MD_CTX_new");
    crypto.ctx_free = (ctx_free_fn)dlsym(lib, "EVP_MD_CTX_free");
    crypto.init = (init_fn)dlsym(lib, "EVP_DigestInit_ex");
    crypto.update = (update_fn)dlsym(lib, "EVP_DigestUpdate");
    crypto.final = (final_fn)dlsym(lib, "EVP_DigestFinal_ex");
    if (!md || !crypto.ctx_new || !crypto.ctx_free || !crypto.init || !crypto.update ||
        !crypto.final) {
        PyErr_Format(PyExc_OSError, "%s lacks the EVP digest functions", path);
        return NULL;
    }
    crypto.sha256 = md();
    crypto.loaded = 1;
    Py_RETURN_NONE;
}

/* ---- the extractor ---------------------------------------------------------------- */

#define LOCAL_SIG 0x04034b50u
#define CENTRAL_SIG 0x02014b50u
#define EOCD_SIG 0x06054b50u
#define ZIP64_EOCD_SIG 0x06064b50u
#define LOCAL_SIZE 30
#define MAX32 0xffffffffu
#define FLAG_ENCRYPTED 0x0001u
#define FLAG_DESCRIPTOR 0x0008u
#define FLAG_UTF8 0x0800u

enum { ERR_NONE, ERR_UNSAFE, ERR_INTEGRITY, ERR_OS };

typedef struct {
    long long offset; /* where the entry's data starts in the package */
    long long size;
    unsigned char digest[32];
    char *name; /* expected entry name, UTF-8 */
    Py_ssize_t name_len;
    char *target; /* where its bytes are written */
    char *final;  /* the cache object it becomes */
} Wanted;

typedef struct {
    PyObject_HEAD
    Wanted *wanted;
    Py_ssize_t count, next;
    int rename_mode;     /* 1: rename target to final; 0: link target to final */
    int tmpfile;         /* rename mode: write unnamed files (O_TMPFILE) while that works */
    int fd_unnamed;      /* the open file is an O_TMPFILE one */
    long long position;  /* package offset of the next byte */
    int at_directory;
    /* header bytes that straddle chunks */
    unsigned char *pending;
    size_t pending_len, pending_cap;
    /* the entry whose data is being read */
    long long remaining;
    int in_data;        /* reading an entry's data (else at a header) */
    Py_ssize_t current; /* index into wanted, or -1 when skipping an entry's data */
    int fd;             /* -1 when the target exists already (written in an earlier round) */
    void *ctx;
    /* error report */
    int err;
    int err_errno;
    char err_msg[512];
    char *err_path;
} Extractor;

static void fail(Extractor *x, int kind, const char *fmt, ...) {
    va_list ap;
    x->err = kind;
    va_start(ap, fmt);
    vsnprintf(x->err_msg, sizeof x->err_msg, fmt, ap);
    va_end(ap);
}

static void fail_os(Extractor *x, const char *path) {
    x->err = ERR_OS;
    x->err_errno = errno;
    x->err_path = (char *)path;
}

static uint16_t u16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t u64(const unsigned char *p) { return (uint64_t)u32(p) | (uint64_t)u32(p + 4) << 32; }

static int write_all(int fd, const unsigned char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void close_current(Extractor *x, int discard) {
    if (x->fd >= 0) {
        close(x->fd);
        x->fd = -1;
        if (discard && x->current >= 0 && !x->fd_unnamed) unlink(x->wanted[x->current].target);
    }
}

/* An unnamed file in the folder of ``final`` (O_TMPFILE), or -1 with x->tmpfile cleared
 * where the file system or kernel has none (then named temporary files are used). */
static int open_unnamed(Extractor *x, char *final) {
#ifdef O_TMPFILE
    char *slash = strrchr(final, '/');
    if (slash && slash != final) {
        *slash = 0;
        int fd = open(final, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0444);
        int err = errno;
        *slash = '/';
        if (fd >= 0) return fd;
        if (err != EOPNOTSUPP && err != EISDIR && err != EINVAL) {
            errno = err;
            return -2; /* a real error (no space, no permission): reported */
        }
    }
#endif
    (void)final;
    x->tmpfile = 0;
    return -1;
}

/* Give the unnamed file ``fd`` the name ``final``; EEXIST (another process cached the
 * same object) is success. */
static int link_unnamed(int fd, const char *final) {
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, final, AT_SYMLINK_FOLLOW) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* Parse one local header from buf[0:len]. Returns its length, 0 if more bytes are
 * needed, -1 on error (x->err set). */
static long parse_header(Extractor *x, const unsigned char *buf, size_t len) {
    if (len < LOCAL_SIZE) return 0;
    uint32_t sig = u32(buf);
    if (sig != LOCAL_SIG) {
        fail(x, ERR_UNSAFE, "no local file header at offset %lld (corrupt or truncated package)",
             x->position);
        return -1;
    }
    uint16_t flags = u16(buf + 6), method = u16(buf + 8);
    uint64_t csize = u32(buf + 18), usize = u32(buf + 22);
    uint16_t nlen = u16(buf + 26), xlen = u16(buf + 28);
    size_t total = (size_t)LOCAL_SIZE + nlen + xlen;
    if (len < total) return 0;
    const unsigned char *name = buf + LOCAL_SIZE;
    if (flags & FLAG_ENCRYPTED) {
        fail(x, ERR_UNSAFE, "entry %.*s is encrypted", (int)nlen, name);
        return -1;
    }
    if (flags & FLAG_DESCRIPTOR) {
        fail(x, ERR_UNSAFE, "entry %.*s uses a data descriptor", (int)nlen, name);
        return -1;
    }
    if (method != 0) {
        fail(x, ERR_UNSAFE, "entry %.*s is compressed (method %u); only STORED is allowed",
             (int)nlen, name, method);
        return -1;
    }
    if (usize == MAX32 || csize == MAX32) {
        const unsigned char *extra = name + nlen, *end = extra + xlen;
        int found = 0;
        while (extra + 4 <= end) {
            uint16_t tag = u16(extra), size = u16(extra + 2);
            if (extra + 4 + size > end) break;
            if (tag == 1) {
                if (size < 16) {
                    fail(x, ERR_UNSAFE, "entry %.*s has a truncated ZIP64 extra field",
                         (int)nlen, name);
                    return -1;
                }
                usize = u64(extra + 4);
                csize = u64(extra + 12);
                found = 1;
                break;
            }
            extra += 4 + size;
        }
        if (!found) {
            fail(x, ERR_UNSAFE, "entry %.*s declares ZIP64 sizes without a ZIP64 extra field",
                 (int)nlen, name);
            return -1;
        }
    }
    if (csize != usize || usize > (uint64_t)INT64_MAX) {
        fail(x, ERR_UNSAFE, "entry %.*s is STORED but its sizes differ", (int)nlen, name);
        return -1;
    }
    long long data_offset = x->position + (long long)total;
    x->remaining = (long long)usize;
    x->current = -1;
    while (x->next < x->count && x->wanted[x->next].offset < data_offset) x->next++;
    if (x->next < x->count && x->wanted[x->next].offset == data_offset) {
        Wanted *w = &x->wanted[x->next];
        int ascii = 1;
        for (size_t i = 0; i < nlen; i++)
            if (name[i] & 0x80) ascii = 0;
        if ((Py_ssize_t)nlen != w->name_len || memcmp(name, w->name, nlen) != 0 ||
            (long long)usize != w->size || (!ascii && !(flags & FLAG_UTF8))) {
            fail(x, ERR_UNSAFE,
                 "entry %.*s (%llu bytes) at offset %lld is not %s (%lld bytes) as the "
                 "manifest says",
                 (int)nlen, name, (unsigned long long)usize, data_offset, w->name, w->size);
            return -1;
        }
        x->current = x->next++;
        x->fd = -1;
        x->fd_unnamed = 0;
        if (x->tmpfile) {
            x->fd = open_unnamed(x, w->final);
            if (x->fd == -2) {
                x->fd = -1;
                fail_os(x, w->final);
                return -1;
            }
            x->fd_unnamed = x->fd >= 0;
        }
        if (x->fd < 0) x->fd = open(w->target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
        if (x->fd < 0 && errno != EEXIST) {
            fail_os(x, w->target);
            return -1;
        }
        if (crypto.init(x->ctx, crypto.sha256, NULL) != 1) {
            fail(x, ERR_INTEGRITY, "SHA-256 could not be started");
            return -1;
        }
    }
    x->position = data_offset;
    return (long)total;
}

/* The data of the current wanted entry is complete: verify, then place it. */
static int finish_entry(Extractor *x) {
    Wanted *w = &x->wanted[x->current];
    if (x->fd < 0) return 1; /* written and placed in an earlier round */
    unsigned char digest[32];
    unsigned int len = 0;
    if (crypto.final(x->ctx, digest, &len) != 1 || len != 32 ||
        memcmp(digest, w->digest, 32) != 0) {
        close_current(x, 1);
        fail(x, ERR_INTEGRITY, "entry '%s' does not match its sha256 in the manifest", w->name);
        return -1;
    }
    if (x->fd_unnamed) {
        int linked = link_unnamed(x->fd, w->final);
        int err = errno;
        int closed = close(x->fd);
        if (linked == 0) err = errno;
        x->fd = -1;
        if (linked != 0 || closed != 0) {
            if (linked == 0) unlink(w->final); /* written, but the close says not whole */
            errno = err;
            fail_os(x, w->final);
            return -1;
        }
        return 1;
    }
    if (close(x->fd) != 0) {
        x->fd = -1;
        unlink(w->target);
        fail_os(x, w->target);
        return -1;
    }
    x->fd = -1;
    if (x->rename_mode) {
        if (rename(w->target, w->final) != 0) {
            unlink(w->target);
            fail_os(x, w->final);
            return -1;
        }
    } else if (link(w->target, w->final) != 0 && errno != EEXIST) {
        fail_os(x, w->final); /* another process may have cached it: EEXIST is fine */
        return -1;
    }
    return 1;
}

/* The current wanted entry (if any) is complete: record it. */
static int entry_done(Extractor *x, Py_ssize_t *done, Py_ssize_t *ndone, long long *nbytes) {
    if (x->current >= 0) {
        if (finish_entry(x) < 0) return -1;
        done[(*ndone)++] = x->current;
        *nbytes += x->wanted[x->current].size;
    }
    x->current = -1;
    x->fd = -1;
    return 0;
}

static int ensure_pending(Extractor *x, size_t n) {
    if (n > x->pending_cap) {
        unsigned char *grown = realloc(x->pending, n);
        if (!grown) {
            errno = ENOMEM;
            fail_os(x, "memory");
            return -1;
        }
        x->pending = grown;
        x->pending_cap = n;
    }
    return 0;
}

/* Consume buf[0:len]; append completed indexes to done (a C array). */
static int consume(Extractor *x, const unsigned char *buf, size_t len, Py_ssize_t *done,
                   Py_ssize_t *ndone, long long *nbytes) {
    size_t pos = 0;
    while (pos < len && !x->at_directory) {
        if (x->in_data) {
            size_t left = len - pos;
            size_t take = x->remaining < (long long)left ? (size_t)x->remaining : left;
            if (x->current >= 0 && x->fd >= 0) {
                if (crypto.update(x->ctx, buf + pos, take) != 1) {
                    fail(x, ERR_INTEGRITY, "SHA-256 failed");
                    return -1;
                }
                if (write_all(x->fd, buf + pos, take) != 0) {
                    fail_os(x, x->wanted[x->current].target);
                    close_current(x, 1);
                    return -1;
                }
            }
            pos += take;
            x->remaining -= (long long)take;
            x->position += (long long)take;
            if (x->remaining == 0) {
                x->in_data = 0;
                if (entry_done(x, done, ndone, nbytes) < 0) return -1;
            }
            continue;
        }
        /* at a header: it may straddle chunks, the bytes so far are kept in pending */
        const unsigned char *p = buf + pos;
        size_t avail = len - pos;
        size_t before = x->pending_len;
        if (before) {
            if (ensure_pending(x, before + avail) < 0) return -1;
            memcpy(x->pending + before, buf + pos, avail);
            p = x->pending;
            avail += before;
        }
        if (avail >= 4) {
            uint32_t sig = u32(p);
            if (sig == CENTRAL_SIG || sig == EOCD_SIG || sig == ZIP64_EOCD_SIG) {
                x->at_directory = 1; /* the rest is the central directory: ignored */
                x->pending_len = 0;
                return 0;
            }
        }
        long used = parse_header(x, p, avail);
        if (used < 0) return -1;
        if (used == 0) { /* the header goes on in the next chunk */
            if (!before) {
                if (ensure_pending(x, avail) < 0) return -1;
                memcpy(x->pending, p, avail);
            }
            x->pending_len = avail;
            return 0;
        }
        x->pending_len = 0;
        pos += (size_t)used - before;
        if (x->remaining > 0) {
            x->in_data = 1;
        } else if (entry_done(x, done, ndone, nbytes) < 0) { /* an empty entry */
            return -1;
        }
    }
    return 0;
}

static PyObject *BadEntry;

static PyObject *raise_error(Extractor *x) {
    int kind = x->err;
    x->err = ERR_NONE;
    if (kind == ERR_OS) {
        errno = x->err_errno;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, x->err_path);
    }
    PyObject *value = Py_BuildValue("(ss)", kind == ERR_UNSAFE ? "unsafe" : "integrity",
                                    x->err_msg);
    if (value) {
        PyErr_SetObject(BadEntry, value);
        Py_DECREF(value);
    }
    return NULL;
}

static PyObject *Extractor_feed(Extractor *x, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) return NULL;
    Py_ssize_t cap = x->count - x->next + 1;
    Py_ssize_t *done = PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(cap > 0 ? cap : 1));
    if (!done) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t ndone = 0;
    long long nbytes = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = consume(x, view.buf, (size_t)view.len, done, &ndone, &nbytes);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc < 0) {
        PyMem_RawFree(done);
        return raise_error(x);
    }
    PyObject *list = PyList_New(ndone);
    for (Py_ssize_t i = 0; list && i < ndone; i++)
        PyList_SET_ITEM(list, i, PyLong_FromSsize_t(done[i]));
    PyMem_RawFree(done);
    return list;
}

static PyObject *Extractor_close(Extractor *x, PyObject *unused) {
    (void)unused;
    if (x->in_data) {
        const char *name = x->current >= 0 ? x->wanted[x->current].name : "an entry";
        close_current(x, 1);
        fail(x, ERR_UNSAFE, "truncated inside entry '%s'", name);
        return raise_error(x);
    }
    if (x->pending_len && !x->at_directory) {
        fail(x, ERR_UNSAFE, "truncated inside a local header at offset %lld", x->position);
        return raise_error(x);
    }
    return PyLong_FromSsize_t(x->next); /* how many wanted entries were reached */
}

static PyObject *Extractor_abort(Extractor *x, PyObject *unused) {
    (void)unused;
    close_current(x, 1);
    x->current = -1;
    Py_RETURN_NONE;
}

static void free_wanted(Extractor *x) {
    if (x->wanted) {
        for (Py_ssize_t i = 0; i < x->count; i++) {
            PyMem_Free(x->wanted[i].name);
            PyMem_Free(x->wanted[i].target);
            PyMem_Free(x->wanted[i].final);
        }
        PyMem_Free(x->wanted);
        x->wanted = NULL;
    }
}

static char *copy_bytes(PyObject *obj, Py_ssize_t *len) {
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(obj, &data, &n) != 0) return NULL;
    char *copy = PyMem_Malloc((size_t)n + 1);
    if (!copy) return (char *)PyErr_NoMemory();
    memcpy(copy, data, (size_t)n);
    copy[n] = 0;
    if (len) *len = n;
    return copy;
}

/* Extractor(start, entries, rename): entries is a sequence of
 * (data_offset, size, digest32, name_utf8, target, final), sorted by offset. */
static int Extractor_init(Extractor *x, PyObject *args, PyObject *kwds) {
    (void)kwds;
    long long start;
    PyObject *entries;
    int rename_mode;
    if (!PyArg_ParseTuple(args, "LOp", &start, &entries, &rename_mode)) return -1;
    if (!crypto.loaded) {
        PyErr_SetString(PyExc_RuntimeError, "load_crypto() was not called");
        return -1;
    }
    PyObject *seq = PySequence_Fast(entries, "entries must be a sequence");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    free_wanted(x);
    x->wanted = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Wanted));
    if (!x->wanted) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    x->count = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *digest, *name, *target, *final;
        Wanted *w = &x->wanted[i];
        if (!PyArg_ParseTuple(item, "LLSSSS", &w->offset, &w->size, &digest, &name, &target,
                              &final))
            goto error;
        if (PyBytes_GET_SIZE(digest) != 32) {
            PyErr_SetString(PyExc_ValueError, "a digest is 32 bytes");
            goto error;
        }
        memcpy(w->digest, PyBytes_AS_STRING(digest), 32);
        if (!(w->name = copy_bytes(name, &w->name_len))) goto error;
        if (!(w->target = copy_bytes(target, NULL))) goto error;
        if (!(w->final = copy_bytes(final, NULL))) goto error;
    }
    Py_DECREF(seq);
    x->next = 0;
    x->rename_mode = rename_mode;
    x->tmpfile = rename_mode && access("/proc/self/fd", X_OK) == 0;
    x->fd_unnamed = 0;
    x->position = start;
    x->current = -1;
    x->fd = -1;
    if (!x->ctx) x->ctx = crypto.ctx_new();
    if (!x->ctx) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
error:
    Py_DECREF(seq);
    free_wanted(x);
    return -1;
}

static void Extractor_dealloc(Extractor *x) {
    close_current(x, 1);
    free_wanted(x);
    if (x->ctx) crypto.ctx_free(x->ctx);
    free(x->pending);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

static PyMethodDef Extractor_methods[] = {
    {"feed", (PyCFunction)Extractor_feed, METH_O,
     "Extract what a chunk completes; return the indexes of the entries placed."},
    {"close", (PyCFunction)Extractor_close, METH_NOARGS,
     "Raise unless the stream ended at an entry boundary; return wanted entries reached."},
    {"abort", (PyCFunction)Extractor_abort, METH_NOARGS, "Remove a partly written target."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ExtractorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dspkg._speedups.Extractor",
    .tp_basicsize = sizeof(Extractor),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Extractor_init,
    .tp_dealloc = (destructor)Extractor_dealloc,
    .tp_methods = Extractor_methods,
    .tp_doc = "Extracts the wanted entries of a package range (see the module doc).",
};


/* ---- zlib's crc32 through dlsym, like SHA-256 --------------------------------------- */

typedef unsigned long (*crc32_fn)(unsigned long, const unsigned char *, unsigned int);
static crc32_fn zlib_crc32;

static PyObject *load_zlib(PyObject *self, PyObject *arg) {
    (void)self;
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL) return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        PyErr_Format(PyExc_OSError, "cannot load %s: %s", path, dlerror());
        return NULL;
    }
    zlib_crc32 = (crc32_fn)dlsym(lib, "crc32");
    if (!zlib_crc32) {
        PyErr_Format(PyExc_OSError, "%s lacks crc32", path);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- reading a publish's small files ------------------------------------------------
 *
 * read_files(paths, sizes) reads each file whole, hashes it (SHA-256, CRC-32) and
 * returns [(data, sha256 hex, crc32) or None, ...]: the work of sources._read_small for
 * a batch, with the interpreter's lock released once for the whole batch instead of
 * around every open, read, hash and close (with four reading threads those hand-offs
 * cost more system time than the reads themselves). None marks a file that could not
 * be read as expected (missing, unreadable, another size): the caller reads that one in
 * Python, which raises the error it deserves. A read shorter than asked means the end
 * of a regular file, so a file of the expected size costs one read, not two.
 */

typedef struct {
    const char *path;
    char *buf;
    Py_ssize_t size;
    int ok;
    unsigned long crc;
    unsigned char digest[32];
} Job;

static void hex_digest(const unsigned char digest[32], char text[64]) {
    static const char hex[] = "0123456789abcdef";
    for (int k = 0; k < 32; k++) {
        text[2 * k] = hex[digest[k] >> 4];
        text[2 * k + 1] = hex[digest[k] & 15];
    }
}

static int read_one(Job *j, void *ctx) {
    int fd = open(j->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    Py_ssize_t total = 0, want = j->size + 1;
    while (total < want) {
        ssize_t n = read(fd, j->buf + total, (size_t)(want - total));
        if (n < 0) {
            if (errno == EINTR) continue;
            close(fd);
            return 0;
        }
        if (n == 0) break;
        total += n;
        if (n < want - (total - n)) break; /* short read: the end of a regular file */
    }
    close(fd);
    if (total != j->size) return 0;
    unsigned int len = 0;
    if (crypto.init(ctx, crypto.sha256, NULL) != 1 ||
        crypto.update(ctx, j->buf, (size_t)j->size) != 1 ||
        crypto.final(ctx, j->digest, &len) != 1 || len != 32)
        return 0;
    unsigned long crc = zlib_crc32(0, NULL, 0);
    const unsigned char *at = (const unsigned char *)j->buf;
    for (Py_ssize_t left = j->size; left > 0;) {
        unsigned int take = left > (1 << 30) ? (1u << 30) : (unsigned int)left;
        crc = zlib_crc32(crc, at, take);
        at += take;
        left -= take;
    }
    j->crc = crc;
    return 1;
}

static PyObject *read_files(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *paths_arg, *sizes_arg;
    if (!PyArg_ParseTuple(args, "OO", &paths_arg, &sizes_arg)) return NULL;
    if (!crypto.loaded || !zlib_crc32) {
        PyErr_SetString(PyExc_RuntimeError, "load_crypto and load_zlib first");
        return NULL;
    }
    PyObject *paths = PySequence_Fast(paths_arg, "paths must be a sequence");
    if (!paths) return NULL;
    PyObject *sizes = PySequence_Fast(sizes_arg, "sizes must be a sequence");
    if (!sizes) {
        Py_DECREF(paths);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(paths);
    PyObject *result = NULL;
    PyObject **datas = NULL;
    Job *jobs = NULL;
    void *ctx = NULL;
    if (PySequence_Fast_GET_SIZE(sizes) != count) {
        PyErr_SetString(PyExc_ValueError, "paths and sizes differ in length");
        goto done;
    }
    datas = PyMem_Calloc((size_t)count + 1, sizeof(PyObject *));
    jobs = PyMem_Calloc((size_t)count + 1, sizeof(Job));
    if (!datas || !jobs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *path = PySequence_Fast_GET_ITEM(paths, i);
        if (!PyBytes_Check(path)) {
            PyErr_SetString(PyExc_TypeError, "paths must be bytes");
            goto done;
        }
        Py_ssize_t size = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(sizes, i));
        if (size < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative size");
            goto done;
        }
        /* One byte more than expected, to notice a file that grew. */
        datas[i] = PyBytes_FromStringAndSize(NULL, size + 1);
        if (!datas[i]) goto done;
        jobs[i].path = PyBytes_AS_STRING(path);
        jobs[i].buf = PyBytes_AS_STRING(datas[i]);
        jobs[i].size = size;
    }
    ctx = crypto.ctx_new();
    if (!ctx) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) jobs[i].ok = read_one(&jobs[i], ctx);
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item;
        if (!jobs[i].ok) {
            Py_INCREF(Py_None);
            item = Py_None;
        } else {
            char text[64];
            hex_digest(jobs[i].digest, text);
            if (_PyBytes_Resize(&datas[i], jobs[i].size) < 0) {
                Py_CLEAR(result);
                goto done;
            }
            item = Py_BuildValue("(Os#k)", datas[i], text, (Py_ssize_t)64, jobs[i].crc);
            if (!item) {
                Py_CLEAR(result);
                goto done;
            }
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    if (ctx) crypto.ctx_free(ctx);
    if (datas) {
        for (Py_ssize_t i = 0; i < count; i++) Py_XDECREF(datas[i]);
        PyMem_Free(datas);
    }
    PyMem_Free(jobs);
    Py_DECREF(paths);
    Py_DECREF(sizes);
    return result;
}


/* pack_files(prefix, paths, sizes, names) does what read_files does and lays the files
 * out as a package's bytes: for each file, its local header (``prefix``: the header's
 * first 14 bytes, the same for every stored entry below 4 GiB; then CRC-32, both sizes,
 * the name's length, no extra field), its name and its data, read straight into place.
 * Returns (those bytes, [(sha256 hex, crc32) or None, ...]); the bytes are None when a
 * file could not be read as expected (the caller then reads the batch in Python). */
static void put16(unsigned char *at, unsigned v) {
    at[0] = (unsigned char)(v & 255);
    at[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *at, unsigned long v) {
    for (int k = 0; k < 4; k++) at[k] = (unsigned char)((v >> (8 * k)) & 255);
}

static PyObject *pack_files(PyObject *self, PyObject *args) {
    (void)self;
    const char *prefix;
    Py_ssize_t prefix_len;
    PyObject *paths_arg, *sizes_arg, *names_arg;
    if (!PyArg_ParseTuple(args, "y#OOO", &prefix, &prefix_len, &paths_arg, &sizes_arg, &names_arg))
        return NULL;
    if (!crypto.loaded || !zlib_crc32) {
        PyErr_SetString(PyExc_RuntimeError, "load_crypto and load_zlib first");
        return NULL;
    }
    if (prefix_len != 14) {
        PyErr_SetString(PyExc_ValueError, "the header prefix is 14 bytes");
        return NULL;
    }
    PyObject *paths = PySequence_Fast(paths_arg, "paths must be a sequence");
    PyObject *sizes = paths ? PySequence_Fast(sizes_arg, "sizes must be a sequence") : NULL;
    PyObject *names = sizes ? PySequence_Fast(names_arg, "names must be a sequence") : NULL;
    PyObject *buffer = NULL, *results = NULL, *answer = NULL;
    Job *jobs = NULL;
    Py_ssize_t *headers = NULL;
    void *ctx = NULL;
    if (!names) goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(paths);
    if (PySequence_Fast_GET_SIZE(sizes) != count || PySequence_Fast_GET_SIZE(names) != count) {
        PyErr_SetString(PyExc_ValueError, "paths, sizes and names differ in length");
        goto done;
    }
    jobs = PyMem_Calloc((size_t)count + 1, sizeof(Job));
    headers = PyMem_Calloc((size_t)count + 1, sizeof(Py_ssize_t));
    if (!jobs || !headers) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *path = PySequence_Fast_GET_ITEM(paths, i);
        PyObject *name = PySequence_Fast_GET_ITEM(names, i);
        if (!PyBytes_Check(path) || !PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "paths and names must be bytes");
            goto done;
        }
        Py_ssize_t size = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(sizes, i));
        if (size < 0 || size >= 0xFFFFFFFFLL || PyBytes_GET_SIZE(name) > 0xFFFF) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "sizes and names must fit a plain ZIP entry");
            goto done;
        }
        jobs[i].path = PyBytes_AS_STRING(path);
        jobs[i].size = size;
        headers[i] = total;
        total += 30 + PyBytes_GET_SIZE(name) + size;
    }
    /* One byte more than needed: each file is read asking for one byte more than its size
     * (to notice growth); that byte lands where the next header goes, written after it. */
    buffer = PyBytes_FromStringAndSize(NULL, total + 1);
    if (!buffer) goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(buffer);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(names, i);
        Py_ssize_t name_len = PyBytes_GET_SIZE(name);
        jobs[i].buf = (char *)out + headers[i] + 30 + name_len;
    }
    ctx = crypto.ctx_new();
    if (!ctx) {
        PyErr_NoMemory();
        goto done;
    }
    int all_ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        jobs[i].ok = read_one(&jobs[i], ctx);
        if (!jobs[i].ok) all_ok = 0;
    }
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count && all_ok; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(names, i);
        Py_ssize_t name_len = PyBytes_GET_SIZE(name);
        unsigned char *h = out + headers[i];
        memcpy(h, prefix, 14);
        put32(h + 14, jobs[i].crc);
        put32(h + 18, (unsigned long)jobs[i].size);
        put32(h + 22, (unsigned long)jobs[i].size);
        put16(h + 26, (unsigned)name_len);
        put16(h + 28, 0);
        memcpy(h + 30, PyBytes_AS_STRING(name), (size_t)name_len);
    }
    results = PyList_New(count);
    if (!results) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item;
        if (!jobs[i].ok) {
            Py_INCREF(Py_None);
            item = Py_None;
        } else {
            char text[64];
            hex_digest(jobs[i].digest, text);
            item = Py_BuildValue("(s#k)", text, (Py_ssize_t)64, jobs[i].crc);
            if (!item) goto done;
        }
        PyList_SET_ITEM(results, i, item);
    }
    if (all_ok) {
        if (_PyBytes_Resize(&buffer, total) < 0) goto done;
        answer = Py_BuildValue("(OO)", buffer, results);
    } else {
        answer = Py_BuildValue("(OO)", Py_None, results);
    }
done:
    if (ctx) crypto.ctx_free(ctx);
    PyMem_Free(jobs);
    PyMem_Free(headers);
    Py_XDECREF(buffer);
    Py_XDECREF(results);
    Py_XDECREF(paths);
    Py_XDECREF(sizes);
    Py_XDECREF(names);
    return answer;
}

/* ---- the hot loop of a warm pull ---------------------------------------------------- */

/* link_cached(sources, sizes, counts, targets, since_ns, slack_ns) links cached objects
 * into a tree with hard links, the loop TreeBuilder.link_cached runs in Python otherwise.
 * Object g is sources[g] of sizes[g] bytes; its files are the next counts[g] entries of
 * targets. An object is linked when it is as dspkg left it (a read-only regular file of
 * its size whose ctime is within slack_ns after its mtime) and, when since_ns >= 0, was
 * written after since_ns; then its mtime and ctime are made to meet again (the links
 * moved its ctime). A target that exists already counts as linked (an earlier round).
 * Returns (absent, careful): the objects that are not there (or older than since_ns),
 * and those the caller must look at itself (a failed check or link), by index. */
enum { LINK_OK, LINK_ABSENT, LINK_CAREFUL };

typedef struct {
    const char *source;
    long long size;
    Py_ssize_t first, count;
    int state;
} LinkJob;

static int link_one(const LinkJob *j, const char *const *targets, long long since_ns,
                    long long slack_ns) {
    struct stat info;
    if (stat(j->source, &info) != 0) return errno == ENOENT ? LINK_ABSENT : LINK_CAREFUL;
    long long mtime = (long long)info.st_mtim.tv_sec * 1000000000LL + info.st_mtim.tv_nsec;
    long long ctime = (long long)info.st_ctim.tv_sec * 1000000000LL + info.st_ctim.tv_nsec;
    if (since_ns >= 0 && mtime <= since_ns) return LINK_ABSENT;
    if ((long long)info.st_size != j->size || !S_ISREG(info.st_mode) || (info.st_mode & 0222) ||
        ctime - mtime < 0 || ctime - mtime > slack_ns)
        return LINK_CAREFUL;
    for (Py_ssize_t i = 0; i < j->count; i++)
        if (link(j->source, targets[j->first + i]) != 0 && errno != EEXIST) return LINK_CAREFUL;
    if (utimensat(AT_FDCWD, j->source, NULL, 0) != 0 && errno != ENOENT) return LINK_CAREFUL;
    return LINK_OK;
}

static PyObject *link_cached(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *sources_arg, *sizes_arg, *counts_arg, *targets_arg;
    long long since_ns, slack_ns;
    if (!PyArg_ParseTuple(args, "OOOOLL", &sources_arg, &sizes_arg, &counts_arg, &targets_arg,
                          &since_ns, &slack_ns))
        return NULL;
    PyObject *sources = PySequence_Fast(sources_arg, "sources must be a sequence");
    PyObject *sizes = sources ? PySequence_Fast(sizes_arg, "sizes must be a sequence") : NULL;
    PyObject *counts = sizes ? PySequence_Fast(counts_arg, "counts must be a sequence") : NULL;
    PyObject *targets = counts ? PySequence_Fast(targets_arg, "targets must be a sequence") : NULL;
    PyObject *answer = NULL, *absent = NULL, *careful = NULL;
    LinkJob *jobs = NULL;
    const char **names = NULL;
    if (!targets) goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sources);
    Py_ssize_t ntargets = PySequence_Fast_GET_SIZE(targets);
    if (PySequence_Fast_GET_SIZE(sizes) != count || PySequence_Fast_GET_SIZE(counts) != count) {
        PyErr_SetString(PyExc_ValueError, "sources, sizes and counts differ in length");
        goto done;
    }
    jobs = PyMem_Calloc((size_t)count + 1, sizeof(LinkJob));
    names = PyMem_Calloc((size_t)ntargets + 1, sizeof(char *));
    if (!jobs || !names) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < ntargets; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(targets, i);
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "targets must be bytes");
            goto done;
        }
        names[i] = PyBytes_AS_STRING(name);
    }
    Py_ssize_t next = 0;
    for (Py_ssize_t g = 0; g < count; g++) {
        PyObject *source = PySequence_Fast_GET_ITEM(sources, g);
        if (!PyBytes_Check(source)) {
            PyErr_SetString(PyExc_TypeError, "sources must be bytes");
            goto done;
        }
        long long size = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sizes, g));
        Py_ssize_t n = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(counts, g));
        if (PyErr_Occurred()) goto done;
        if (size < 0 || n < 1 || n > ntargets - next) {
            PyErr_SetString(PyExc_ValueError, "bad size or count of targets");
            goto done;
        }
        jobs[g] = (LinkJob){PyBytes_AS_STRING(source), size, next, n, LINK_OK};
        next += n;
    }
    if (next != ntargets) {
        PyErr_SetString(PyExc_ValueError, "counts do not add up to the targets");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < count; g++) jobs[g].state = link_one(&jobs[g], names, since_ns, slack_ns);
    Py_END_ALLOW_THREADS
    absent = PyList_New(0);
    careful = PyList_New(0);
    if (!absent || !careful) goto done;
    for (Py_ssize_t g = 0; g < count; g++) {
        if (jobs[g].state == LINK_OK) continue;
        PyObject *index = PyLong_FromSsize_t(g);
        if (!index) goto done;
        int failed = PyList_Append(jobs[g].state == LINK_ABSENT ? absent : careful, index);
        Py_DECREF(index);
        if (failed) goto done;
    }
    answer = PyTuple_Pack(2, absent, careful);
done:
    Py_XDECREF(absent);
    Py_XDECREF(careful);
    PyMem_Free(jobs);
    PyMem_Free(names);
    Py_XDECREF(sources);
    Py_XDECREF(sizes);
    Py_XDECREF(counts);
    Py_XDECREF(targets);
    return answer;
}

static PyMethodDef module_methods[] = {
    {"load_crypto", load_crypto, METH_O, "Load SHA-256 from the libcrypto at this path."},
    {"load_zlib", load_zlib, METH_O, "Load crc32 from the libz at this path."},
    {"read_files", read_files, METH_VARARGS,
     "Read, hash and CRC small files whole: [(data, sha256 hex, crc32) or None, ...]."},
    {"pack_files", pack_files, METH_VARARGS,
     "Read small files into one buffer of local headers, names and data, hashed."},
    {"link_cached", link_cached, METH_VARARGS,
     "Hard-link intact cached objects into a tree: (absent, careful) object indexes."},
    {NULL, NULL, 0, NULL},
};

/* The checks of manifest records over whole columns (_checks.c), and the reader of the
 * JSON of a shard (_columns.c). */
extern PyMethodDef dspkg_check_methods[];
extern PyMethodDef dspkg_column_methods[];
void dspkg_checks_init(void);
void dspkg_columns_init(void);

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dspkg._speedups", NULL, -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&ExtractorType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    dspkg_checks_init();
    dspkg_columns_init();
    if (PyModule_AddFunctions(m, dspkg_check_methods) < 0 ||
        PyModule_AddFunctions(m, dspkg_column_methods) < 0)
        return NULL;
    BadEntry = PyErr_NewException("dspkg._speedups.BadEntry", NULL, NULL);
    if (!BadEntry || PyModule_AddObject(m, "BadEntry", BadEntry) < 0) return NULL;
    Py_INCREF(&ExtractorType);
    if (PyModule_AddObject(m, "Extractor", (PyObject *)&ExtractorType) < 0) return NULL;
    return m;
}
