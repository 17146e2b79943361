/* Optional C versions of the byte loops on POP3's data path (twisted_pop3ng.wire).
 *
 * CPython 3.11 finds one-byte needles with memchr (tens of GB/s) but searches two-byte ones
 * ("\n.") a byte at a time: dot-stuffing 10 KB of ordinary text, full of full stops, took
 * ~15 us in Python, more than reading and sending the message. Here both transforms are one
 * pass of memchr over the line feeds. Every function has a pure-Python twin in wire.py, which
 * is used when this module was not built; the tests compare the two on random input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The input itself when it is a bytes object (nothing changed), else a bytes copy of it; the
 * buffer is released either way. */
static PyObject *
unchanged(PyObject *arg, Py_buffer *in)
{
    PyObject *result;
    if (PyBytes_CheckExact(arg)) {
        Py_INCREF(arg);
        result = arg;
    } else {
        result = PyBytes_FromStringAndSize(in->buf, in->len);
    }
    PyBuffer_Release(in);
    return result;
}

/* A new bytes object of ``size`` octets to fill; on failure the buffer is released. */
static PyObject *
new_bytes(Py_ssize_t size, Py_buffer *in)
{
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        PyBuffer_Release(in);
    return result;
}

/* Wire form of a stored message body: every LF becomes CRLF (a CR just before an LF is that
 * CRLF's own: CRLF stays CRLF, a bare CR elsewhere stays as it is), and a dot that starts a line
 * (the first byte, or after an LF) is doubled. The trailing CRLF and terminator are the caller's.
 */
static PyObject *
encode_body(PyObject *self, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *data = in.buf;
    const Py_ssize_t n = in.len;
    const char *end = data + n;

    /* One pass into room for the worst case ("\n." becomes "\r\n..": twice the input, plus a
     * leading dot), then the object is shrunk to what was written (realloc, no copy). */
    if (memchr(data, '\n', (size_t)n) == NULL && !(n > 0 && data[0] == '.'))
        return unchanged(arg, &in);
    if (n > (PY_SSIZE_T_MAX - 1) / 2) {
        PyBuffer_Release(&in);
        return PyErr_NoMemory();
    }
    PyObject *result = new_bytes(2 * n + 1, &in);
    if (result == NULL)
        return NULL;
    char *const start = PyBytes_AS_STRING(result);
    char *out = start;
    const char *p = data;
    if (n > 0 && data[0] == '.')
        *out++ = '.';
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL) {
            memcpy(out, p, (size_t)(end - p));
            out += end - p;
            break;
        }
        const char *stop = (nl > p && nl[-1] == '\r') ? nl - 1 : nl;
        memcpy(out, p, (size_t)(stop - p));
        out += stop - p;
        *out++ = '\r';
        *out++ = '\n';
        p = nl + 1;
        if (p < end && *p == '.')
            *out++ = '.';
    }
    PyBuffer_Release(&in);
    if (_PyBytes_Resize(&result, out - start) < 0)
        return NULL;
    return result;
}

/* Double every dot that follows an LF (not a dot at the very start: the caller knows whether
 * that one starts a line). Input already in wire line endings. */
static PyObject *
stuff_dots(PyObject *self, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *data = in.buf;
    const char *end = data + in.len;
    Py_ssize_t extra = 0;
    for (const char *p = data; p < end; ) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || nl + 1 >= end)
            break;
        if (nl[1] == '.')
            extra++;
        p = nl + 1;
    }
    if (extra == 0)
        return unchanged(arg, &in);
    PyObject *result = new_bytes(in.len + extra, &in);
    if (result == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(result);
    const char *p = data;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || nl + 1 >= end) {
            memcpy(out, p, (size_t)(end - p));
            break;
        }
        memcpy(out, p, (size_t)(nl + 1 - p));
        out += nl + 1 - p;
        p = nl + 1;
        if (*p == '.')
            *out++ = '.';
    }
    PyBuffer_Release(&in);
    return result;
}

/* Octets a stored message takes on the wire, unstuffed, without its terminator: every line
 * ending CRLF (as encode_body makes them) and a final CRLF added when the last line has none
 * (a trailing bare CR is that CRLF). */
static PyObject *
wire_size_of(PyObject *self, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *data = in.buf;
    const Py_ssize_t n = in.len;
    const char *end = data + n;
    Py_ssize_t size = n;
    for (const char *p = data; p < end; ) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            break;
        if (nl == data || nl[-1] != '\r')
            size++;
        p = nl + 1;
    }
    if (n > 0 && data[n - 1] != '\n')
        size += data[n - 1] == '\r' ? 1 : 2;
    PyBuffer_Release(&in);
    return PyLong_FromSsize_t(size);
}

static PyMethodDef methods[] = {
    {"encode_body", encode_body, METH_O,
     "encode_body(data) -> bytes: LF -> CRLF and line-start dots doubled, in one pass."},
    {"stuff_dots", stuff_dots, METH_O,
     "stuff_dots(data) -> bytes: every dot after an LF doubled."},
    {"wire_size_of", wire_size_of, METH_O,
     "wire_size_of(data) -> int: octets of the stored message on the wire, unstuffed."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "twisted_pop3ng.wire._speedups",
    "C versions of wire.py's byte loops (optional; wire.py has the same in Python).", -1, methods
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
