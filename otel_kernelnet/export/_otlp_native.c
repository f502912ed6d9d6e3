/* SPDX-License-Identifier: Apache-2.0
 * otel_kernelnet.export._otlp_native: the protobuf wire format of a batch of
 * KernelSpans, written in C. The same bytes as otlp_proto.Encoder.span, span for span
 * (tests/unit/test_otlp_native.py compares them on every kind of span and value); the
 * Python encoder stays the reference and the fallback (no compiler at install time,
 * OTEL_KERNELNET_NATIVE=0).
 *
 * encode_spans(spans, any_value) -> bytes: for each span, field 2 of ScopeSpans
 * (tag 0x12, length, Span body). Attribute values of the exact types str, bool, int and
 * float are written here; any other value (a list, bytes, a subclass) is handed to
 * ``any_value(v)``, the Python encoder's own function, whose bytes are copied: one rule
 * for every value. An int is written modulo 2**64, as the Python encoder does.
 *
 * Nested messages are written body first, then their length is inserted in front of
 * the body (a memmove of a few hundred bytes), so nothing is sized twice.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
	char *p;
	Py_ssize_t len, cap;
} Buf;

static int grow(Buf *b, Py_ssize_t need)
{
	if (b->len + need <= b->cap)
		return 0;
	Py_ssize_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + need)
		cap *= 2;
	char *p = PyMem_Realloc(b->p, (size_t)cap);
	if (!p) {
		PyErr_NoMemory();
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

static inline int put(Buf *b, const void *src, Py_ssize_t n)
{
	if (grow(b, n))
		return -1;
	memcpy(b->p + b->len, src, (size_t)n);
	b->len += n;
	return 0;
}

static inline int put1(Buf *b, unsigned char c)
{
	if (grow(b, 1))
		return -1;
	b->p[b->len++] = (char)c;
	return 0;
}

static inline int varint_to(unsigned char *out, uint64_t v)
{
	int n = 0;
	while (v > 0x7F) {
		out[n++] = (unsigned char)((v & 0x7F) | 0x80);
		v >>= 7;
	}
	out[n++] = (unsigned char)v;
	return n;
}

static inline int put_varint(Buf *b, uint64_t v)
{
	unsigned char tmp[10];
	return put(b, tmp, varint_to(tmp, v));
}

static inline int put_fixed64(Buf *b, uint64_t v)
{
	unsigned char tmp[8];
	for (int i = 0; i < 8; i++)
		tmp[i] = (unsigned char)(v >> (8 * i));
	return put(b, tmp, 8);
}

/* the body written since ``start`` gets its length in front of it */
static int close_ld(Buf *b, Py_ssize_t start)
{
	unsigned char tmp[10];
	Py_ssize_t body = b->len - start;
	int k = varint_to(tmp, (uint64_t)body);
	if (grow(b, k))
		return -1;
	memmove(b->p + start + k, b->p + start, (size_t)body);
	memcpy(b->p + start, tmp, (size_t)k);
	b->len += k;
	return 0;
}

/* tag, length, the UTF-8 of a str (UnicodeEncodeError for a lone surrogate, as
 * str.encode() raises) */
static int put_str_field(Buf *b, unsigned char tag, PyObject *s)
{
	Py_ssize_t n;
	const char *u;
	if (!PyUnicode_Check(s)) {
		PyErr_Format(PyExc_TypeError, "expected str, got %.80s", Py_TYPE(s)->tp_name);
		return -1;
	}
	u = PyUnicode_AsUTF8AndSize(s, &n);
	if (!u)
		return -1;
	if (put1(b, tag) || put_varint(b, (uint64_t)n))
		return -1;
	return put(b, u, n);
}

/* an int's low 64 bits (any size, either sign): Python's n & (2**64 - 1) */
static int as_u64(PyObject *o, uint64_t *out)
{
	unsigned long long v = PyLong_AsUnsignedLongLongMask(o);
	if (v == (unsigned long long)-1 && PyErr_Occurred())
		return -1;
	*out = (uint64_t)v;
	return 0;
}

/* the body of an AnyValue */
static int put_any(Buf *b, PyObject *v, PyObject *any_value)
{
	if (PyUnicode_CheckExact(v))
		return put_str_field(b, 0x0a, v);
	if (PyBool_Check(v)) {
		unsigned char t[2] = {0x10, v == Py_True};
		return put(b, t, 2);
	}
	if (PyLong_CheckExact(v)) {
		uint64_t u;
		if (as_u64(v, &u) || put1(b, 0x18))
			return -1;
		return put_varint(b, u);
	}
	if (PyFloat_CheckExact(v)) {
		unsigned char t[9];
		t[0] = 0x21;
		if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), (char *)t + 1, 1))
			return -1;
		return put(b, t, 9);
	}
	PyObject *r = PyObject_CallOneArg(any_value, v);
	if (!r)
		return -1;
	if (!PyBytes_Check(r)) {
		Py_DECREF(r);
		PyErr_SetString(PyExc_TypeError, "any_value() must return bytes");
		return -1;
	}
	int rc = put(b, PyBytes_AS_STRING(r), PyBytes_GET_SIZE(r));
	Py_DECREF(r);
	return rc;
}

/* one KeyValue as field ``tag``: tag, len, {1: key, 2: {AnyValue}} */
static int put_kv(Buf *b, unsigned char tag, PyObject *k, PyObject *v, PyObject *any_value)
{
	Py_ssize_t s0, s1;
	if (put1(b, tag))
		return -1;
	s0 = b->len;
	if (put_str_field(b, 0x0a, k) || put1(b, 0x12))
		return -1;
	s1 = b->len;
	if (put_any(b, v, any_value) || close_ld(b, s1))
		return -1;
	return close_ld(b, s0);
}

/* every item of a mapping (a dict in order; any other mapping by its items()) */
static int put_attrs(Buf *b, unsigned char tag, PyObject *m, PyObject *any_value)
{
	if (PyDict_CheckExact(m)) {
		Py_ssize_t pos = 0;
		PyObject *k, *v;
		while (PyDict_Next(m, &pos, &k, &v)) {
			/* the dict is ours for the whole call: nothing here runs Python code that
			 * could change it, except any_value(), which gets only the value */
			Py_INCREF(k);
			Py_INCREF(v);
			int rc = put_kv(b, tag, k, v, any_value);
			Py_DECREF(k);
			Py_DECREF(v);
			if (rc)
				return -1;
		}
		return 0;
	}
	PyObject *items = PyMapping_Items(m);
	if (!items)
		return -1;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
		PyObject *kv = PyList_GET_ITEM(items, i);
		if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
			Py_DECREF(items);
			PyErr_SetString(PyExc_TypeError, "items() must give (key, value) pairs");
			return -1;
		}
		if (put_kv(b, tag, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1), any_value)) {
			Py_DECREF(items);
			return -1;
		}
	}
	Py_DECREF(items);
	return 0;
}

static PyObject *S_trace_id, *S_span_id, *S_parent_span_id, *S_name, *S_kind, *S_start_ns, *S_end_ns,
	*S_attributes, *S_events, *S_links, *S_status_code, *S_status_message, *S_time_ns;

static int put_bytes_attr(Buf *b, PyObject *o, PyObject *name, Py_ssize_t *n_out)
{
	PyObject *v = PyObject_GetAttr(o, name);
	if (!v)
		return -1;
	char *p;
	Py_ssize_t n;
	if (PyBytes_AsStringAndSize(v, &p, &n)) {
		Py_DECREF(v);
		return -1;
	}
	int rc = put(b, p, n);
	Py_DECREF(v);
	if (n_out)
		*n_out = n;
	return rc;
}

/* an int attribute's low 64 bits, and whether it is true (nonzero) as Python sees it */
static int get_u64(PyObject *o, PyObject *name, uint64_t *out, int *truthy)
{
	PyObject *v = PyObject_GetAttr(o, name);
	if (!v)
		return -1;
	int rc = as_u64(v, out);
	if (!rc && truthy) {
		*truthy = PyObject_IsTrue(v);
		rc = *truthy < 0 ? -1 : 0;
	}
	Py_DECREF(v);
	return rc;
}

/* each item of a list-like attribute, with fn(b, item) */
typedef int (*item_fn)(Buf *, PyObject *, PyObject *);

static int each(Buf *b, PyObject *o, PyObject *name, item_fn fn, PyObject *any_value)
{
	PyObject *seq = PyObject_GetAttr(o, name);
	if (!seq)
		return -1;
	PyObject *fast = PySequence_Fast(seq, "expected a sequence");
	Py_DECREF(seq);
	if (!fast)
		return -1;
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
		if (fn(b, PySequence_Fast_GET_ITEM(fast, i), any_value)) {
			Py_DECREF(fast);
			return -1;
		}
	}
	Py_DECREF(fast);
	return 0;
}

static int put_attrs_of(Buf *b, unsigned char tag, PyObject *o, PyObject *any_value, int skip_empty)
{
	PyObject *m = PyObject_GetAttr(o, S_attributes);
	if (!m)
		return -1;
	int rc = 0;
	if (!skip_empty || PyObject_IsTrue(m) == 1)
		rc = put_attrs(b, tag, m, any_value);
	Py_DECREF(m);
	return rc;
}

/* Span.events (11): {1: fixed64 time, 2: name, 3: attributes} */
static int put_event(Buf *b, PyObject *e, PyObject *any_value)
{
	uint64_t t;
	Py_ssize_t s;
	if (get_u64(e, S_time_ns, &t, NULL) || put1(b, 0x5a))
		return -1;
	s = b->len;
	if (put1(b, 0x09) || put_fixed64(b, t))
		return -1;
	PyObject *name = PyObject_GetAttr(e, S_name);
	if (!name)
		return -1;
	int rc = put_str_field(b, 0x12, name);
	Py_DECREF(name);
	if (rc || put_attrs_of(b, 0x1a, e, any_value, 0))
		return -1;
	return close_ld(b, s);
}

/* Span.links (13): {1: trace_id, 2: span_id, 4: attributes, 6: flags HAS_IS_REMOTE|IS_REMOTE} */
static int put_link(Buf *b, PyObject *l, PyObject *any_value)
{
	static const unsigned char flags[5] = {0x35, 0x00, 0x03, 0x00, 0x00};
	static const unsigned char t16[2] = {0x0a, 0x10}, t8[2] = {0x12, 0x08};
	Py_ssize_t s;
	if (put1(b, 0x6a))
		return -1;
	s = b->len;
	if (put(b, t16, 2) || put_bytes_attr(b, l, S_trace_id, NULL) || put(b, t8, 2) ||
	    put_bytes_attr(b, l, S_span_id, NULL) || put_attrs_of(b, 0x22, l, any_value, 1) || put(b, flags, 5))
		return -1;
	return close_ld(b, s);
}

static int put_span(Buf *b, PyObject *s, PyObject *any_value)
{
	static const unsigned char t16[2] = {0x0a, 0x10}, t8[2] = {0x12, 0x08}, p8[2] = {0x22, 0x08};
	static const unsigned char flags_remote[6] = {0x85, 0x01, 0x00, 0x03, 0x00, 0x00};
	static const unsigned char flags_local[6] = {0x85, 0x01, 0x00, 0x01, 0x00, 0x00};
	uint64_t start, end, kind, code;
	int has_parent, has_kind, has_code;

	if (put(b, t16, 2) || put_bytes_attr(b, s, S_trace_id, NULL) || put(b, t8, 2) ||
	    put_bytes_attr(b, s, S_span_id, NULL))
		return -1;
	PyObject *parent = PyObject_GetAttr(s, S_parent_span_id);
	if (!parent)
		return -1;
	has_parent = PyObject_IsTrue(parent);
	if (has_parent < 0) {
		Py_DECREF(parent);
		return -1;
	}
	if (has_parent) {
		char *p;
		Py_ssize_t n;
		if (PyBytes_AsStringAndSize(parent, &p, &n) || put(b, p8, 2) || put(b, p, n)) {
			Py_DECREF(parent);
			return -1;
		}
	}
	Py_DECREF(parent);
	PyObject *name = PyObject_GetAttr(s, S_name);
	if (!name)
		return -1;
	int rc = put_str_field(b, 0x2a, name);
	Py_DECREF(name);
	if (rc || get_u64(s, S_kind, &kind, &has_kind))
		return -1;
	if (has_kind && (put1(b, 0x30) || put_varint(b, kind)))
		return -1;
	if (get_u64(s, S_start_ns, &start, NULL) || get_u64(s, S_end_ns, &end, NULL) || put1(b, 0x39) ||
	    put_fixed64(b, start) || put1(b, 0x41) || put_fixed64(b, end))
		return -1;
	if (put_attrs_of(b, 0x4a, s, any_value, 0) || each(b, s, S_events, put_event, any_value) ||
	    each(b, s, S_links, put_link, any_value))
		return -1;
	/* status (15): {2: message, 3: code}, present even when empty */
	PyObject *msg = PyObject_GetAttr(s, S_status_message);
	if (!msg)
		return -1;
	int has_msg = PyObject_IsTrue(msg);
	if (has_msg < 0 || get_u64(s, S_status_code, &code, &has_code) || put1(b, 0x7a)) {
		Py_DECREF(msg);
		return -1;
	}
	Py_ssize_t st = b->len;
	if (has_msg && put_str_field(b, 0x12, msg)) {
		Py_DECREF(msg);
		return -1;
	}
	Py_DECREF(msg);
	if (has_code && (put1(b, 0x18) || put_varint(b, code)))
		return -1;
	if (close_ld(b, st))
		return -1;
	return put(b, has_parent ? flags_remote : flags_local, 6);
}

static PyObject *encode_spans(PyObject *self, PyObject *args)
{
	PyObject *spans, *any_value;
	(void)self;
	if (!PyArg_ParseTuple(args, "OO:encode_spans", &spans, &any_value))
		return NULL;
	PyObject *fast = PySequence_Fast(spans, "spans must be a sequence");
	if (!fast)
		return NULL;
	Buf b = {NULL, 0, 0};
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
		Py_ssize_t s;
		if (put1(&b, 0x12))
			goto fail;
		s = b.len;
		if (put_span(&b, PySequence_Fast_GET_ITEM(fast, i), any_value) || close_ld(&b, s))
			goto fail;
	}
	Py_DECREF(fast);
	PyObject *out = PyBytes_FromStringAndSize(b.p ? b.p : "", b.len);
	PyMem_Free(b.p);
	return out;
fail:
	Py_DECREF(fast);
	PyMem_Free(b.p);
	return NULL;
}

static PyMethodDef methods[] = {
	{"encode_spans", encode_spans, METH_VARARGS,
	 "encode_spans(spans, any_value) -> bytes: ScopeSpans.spans fields (tag 0x12) of each span."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlp_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__otlp_native(void)
{
#define INTERN(var, text) \
	if (!(var = PyUnicode_InternFromString(text))) \
		return NULL;
	INTERN(S_trace_id, "trace_id");
	INTERN(S_span_id, "span_id");
	INTERN(S_parent_span_id, "parent_span_id");
	INTERN(S_name, "name");
	INTERN(S_kind, "kind");
	INTERN(S_start_ns, "start_ns");
	INTERN(S_end_ns, "end_ns");
	INTERN(S_attributes, "attributes");
	INTERN(S_events, "events");
	INTERN(S_links, "links");
	INTERN(S_status_code, "status_code");
	INTERN(S_status_message, "status_message");
	INTERN(S_time_ns, "time_ns");
#undef INTERN
	return PyModule_Create(&module);
}
