/* SPDX-License-Identifier: Apache-2.0
 * otel_kernelnet.export._otlp_native: the protobuf wire format (and the OTLP JSON text,
 * at the end of this file) of a batch of KernelSpans, written in C. The same bytes as otlp_proto.Encoder.span, span for span
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

/* the text of an ASCII str (the JSON side: json.dumps's text is ASCII) */
static int put_ascii_obj(Buf *b, PyObject *u)
{
	Py_ssize_t n;
	const char *p;
	if (!PyUnicode_Check(u) || !PyUnicode_IS_ASCII(u)) {
		PyErr_SetString(PyExc_ValueError, "expected bytes or ASCII text");
		return -1;
	}
	p = PyUnicode_AsUTF8AndSize(u, &n);
	return p ? put(b, p, n) : -1;
}

/* a Python call's result, a new reference (NULL: the call failed): bytes as they are,
 * an ASCII str as its text; released here */
static int put_result(Buf *b, PyObject *r)
{
	if (!r)
		return -1;
	int rc = PyBytes_Check(r) ? put(b, PyBytes_AS_STRING(r), PyBytes_GET_SIZE(r)) : put_ascii_obj(b, r);
	Py_DECREF(r);
	return rc;
}

/* attribute ``name`` of ``o``, which must be bytes (a new reference, or NULL) */
static PyObject *bytes_attr(PyObject *o, PyObject *name)
{
	PyObject *v = PyObject_GetAttr(o, name);
	if (v && !PyBytes_Check(v)) {
		PyErr_Format(PyExc_TypeError, "expected bytes, got %.80s", Py_TYPE(v)->tp_name);
		Py_CLEAR(v);
	}
	return v;
}

/* fn(b, key, value, i, ctx) for the i-th item of a mapping, in order: a dict directly
 * (no items list), any other mapping through its items() */
typedef int (*kv_fn)(Buf *, PyObject *, PyObject *, Py_ssize_t, void *);

static int each_item(Buf *b, PyObject *m, kv_fn fn, void *ctx)
{
	Py_ssize_t i = 0;
	if (PyDict_CheckExact(m)) {
		Py_ssize_t pos = 0;
		PyObject *k, *v;
		while (PyDict_Next(m, &pos, &k, &v)) {
			/* held while fn runs: a Python callback of fn must not free them */
			Py_INCREF(k);
			Py_INCREF(v);
			int rc = fn(b, k, v, i++, ctx);
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
	for (; i < PyList_GET_SIZE(items); i++) {
		PyObject *kv = PyList_GET_ITEM(items, i);
		if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
			PyErr_SetString(PyExc_TypeError, "items() must give (key, value) pairs");
			break;
		}
		if (fn(b, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1), i, ctx))
			break;
	}
	int done = i == PyList_GET_SIZE(items);
	Py_DECREF(items);
	return done ? 0 : -1;
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
	return put_result(b, PyObject_CallOneArg(any_value, v));
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

struct proto_kv {
	unsigned char tag;
	PyObject *any_value;
};

static int proto_kv(Buf *b, PyObject *k, PyObject *v, Py_ssize_t i, void *ctx)
{
	struct proto_kv *c = ctx;
	(void)i;
	return put_kv(b, c->tag, k, v, c->any_value);
}

static int put_attrs(Buf *b, unsigned char tag, PyObject *m, PyObject *any_value)
{
	struct proto_kv c = {tag, any_value};
	return each_item(b, m, proto_kv, &c);
}

static PyObject *S_trace_id, *S_span_id, *S_parent_span_id, *S_name, *S_kind, *S_start_ns, *S_end_ns,
	*S_attributes, *S_events, *S_links, *S_status_code, *S_status_message, *S_time_ns;

static int put_bytes_attr(Buf *b, PyObject *o, PyObject *name)
{
	return put_result(b, bytes_attr(o, name));
}

/* a str attribute as field ``tag`` */
static int put_str_attr(Buf *b, unsigned char tag, PyObject *o, PyObject *name)
{
	PyObject *v = PyObject_GetAttr(o, name);
	if (!v)
		return -1;
	int rc = put_str_field(b, tag, v);
	Py_DECREF(v);
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
	if (put1(b, 0x09) || put_fixed64(b, t) || put_str_attr(b, 0x12, e, S_name) ||
	    put_attrs_of(b, 0x1a, e, any_value, 0))
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
	if (put(b, t16, 2) || put_bytes_attr(b, l, S_trace_id) || put(b, t8, 2) ||
	    put_bytes_attr(b, l, S_span_id) || put_attrs_of(b, 0x22, l, any_value, 1) || put(b, flags, 5))
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

	if (put(b, t16, 2) || put_bytes_attr(b, s, S_trace_id) || put(b, t8, 2) ||
	    put_bytes_attr(b, s, S_span_id))
		return -1;
	PyObject *parent = bytes_attr(s, S_parent_span_id);
	if (!parent)
		return -1;
	has_parent = PyBytes_GET_SIZE(parent) > 0;
	int rc = has_parent && (put(b, p8, 2) || put(b, PyBytes_AS_STRING(parent), PyBytes_GET_SIZE(parent)));
	Py_DECREF(parent);
	if (rc || put_str_attr(b, 0x2a, s, S_name) || get_u64(s, S_kind, &kind, &has_kind))
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

/* --- OTLP JSON (otlp_json.Encoder.span's text) ------------------------------------------
 * encode_spans_json(spans, escape, kv_text) -> bytes: the spans' JSON objects joined by
 * ",". ``escape`` is json.encoder.encode_basestring_ascii (json.dumps's text of a str,
 * called as is: the same escaping by construction); ``kv_text(k, v)`` is the Python
 * encoder's text of one attribute, used for any value that is not an exact str, int or
 * bool. The text is ASCII (ensure_ascii), so it is written as bytes. */

#define PUTS(b, lit) put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* escape(s): a JSON string literal (quotes included) */
static int put_json_str(Buf *b, PyObject *s, PyObject *escape)
{
	if (!PyUnicode_Check(s)) {
		PyErr_SetString(PyExc_TypeError, "expected str");
		return -1;
	}
	return put_result(b, PyObject_CallOneArg(escape, s));
}

/* str(o): decimal text of an int (f"{o}" for int and float) */
static int put_str_of(Buf *b, PyObject *o)
{
	return put_result(b, PyObject_Str(o));
}

/* bytes.hex() of a bytes object */
static int put_hex(Buf *b, PyObject *v)
{
	static const char digits[] = "0123456789abcdef";
	Py_ssize_t n = PyBytes_GET_SIZE(v);
	const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(v);
	if (grow(b, 2 * n))
		return -1;
	for (Py_ssize_t i = 0; i < n; i++) {
		b->p[b->len++] = digits[p[i] >> 4];
		b->p[b->len++] = digits[p[i] & 15];
	}
	return 0;
}

static int put_hex_attr(Buf *b, PyObject *o, PyObject *name)
{
	PyObject *v = bytes_attr(o, name);
	if (!v)
		return -1;
	int rc = put_hex(b, v);
	Py_DECREF(v);
	return rc;
}

static int put_json_kv(Buf *b, PyObject *k, PyObject *v, PyObject *escape, PyObject *kv_text)
{
	if (PyUnicode_CheckExact(v) || PyLong_CheckExact(v) || PyBool_Check(v)) {
		if (PUTS(b, "{\"key\":") || put_json_str(b, k, escape))
			return -1;
		if (PyUnicode_CheckExact(v))
			return PUTS(b, ",\"value\":{\"stringValue\":") || put_json_str(b, v, escape) || PUTS(b, "}}");
		if (PyBool_Check(v))
			return v == Py_True ? PUTS(b, ",\"value\":{\"boolValue\":true}}")
					    : PUTS(b, ",\"value\":{\"boolValue\":false}}");
		return PUTS(b, ",\"value\":{\"intValue\":\"") || put_str_of(b, v) || PUTS(b, "\"}}");
	}
	return put_result(b, PyObject_CallFunctionObjArgs(kv_text, k, v, NULL));
}

struct json_kv {
	PyObject *escape, *kv_text;
};

static int json_kv(Buf *b, PyObject *k, PyObject *v, Py_ssize_t i, void *ctx)
{
	struct json_kv *c = ctx;
	return (i && put1(b, ',')) || put_json_kv(b, k, v, c->escape, c->kv_text) ? -1 : 0;
}

/* ``"attributes":[...]`` preceded by ``lead`` when the mapping is not empty */
static int put_json_attrs(Buf *b, const char *lead, PyObject *o, PyObject *escape, PyObject *kv_text)
{
	PyObject *m = PyObject_GetAttr(o, S_attributes);
	if (!m)
		return -1;
	int truth = PyObject_IsTrue(m), rc = 0;
	if (truth <= 0) {
		Py_DECREF(m);
		return truth;
	}
	struct json_kv c = {escape, kv_text};
	rc = put(b, lead, (Py_ssize_t)strlen(lead)) || PUTS(b, "\"attributes\":[") || each_item(b, m, json_kv, &c) ||
	     put1(b, ']');
	Py_DECREF(m);
	return rc ? -1 : 0;
}

static int put_json_name(Buf *b, PyObject *o, PyObject *escape)
{
	PyObject *name = PyObject_GetAttr(o, S_name);
	if (!name)
		return -1;
	int rc = put_json_str(b, name, escape);
	Py_DECREF(name);
	return rc;
}

static int put_json_span(Buf *b, PyObject *s, PyObject *escape, PyObject *kv_text)
{
	if (PUTS(b, "{\"traceId\":\"") || put_hex_attr(b, s, S_trace_id) || PUTS(b, "\",\"spanId\":\"") ||
	    put_hex_attr(b, s, S_span_id) || put1(b, '"'))
		return -1;
	PyObject *parent = bytes_attr(s, S_parent_span_id);
	if (!parent)
		return -1;
	int rc = PyBytes_GET_SIZE(parent) && (PUTS(b, ",\"parentSpanId\":\"") || put_hex(b, parent) || put1(b, '"'));
	Py_DECREF(parent);
	if (rc)
		return -1;
	if (PUTS(b, ",\"name\":") || put_json_name(b, s, escape))
		return -1;
	PyObject *kind = PyObject_GetAttr(s, S_kind);
	if (!kind)
		return -1;
	int has_kind = PyObject_IsTrue(kind);
	rc = has_kind < 0;
	if (!rc && has_kind) {
		PyObject *k = PyNumber_Long(kind);
		rc = !k || PUTS(b, ",\"kind\":") || put_str_of(b, k);
		Py_XDECREF(k);
	}
	Py_DECREF(kind);
	if (rc)
		return -1;
	PyObject *start = PyObject_GetAttr(s, S_start_ns), *end = start ? PyObject_GetAttr(s, S_end_ns) : NULL;
	rc = !start || !end || PUTS(b, ",\"startTimeUnixNano\":\"") || put_str_of(b, start) ||
	     PUTS(b, "\",\"endTimeUnixNano\":\"") || put_str_of(b, end) || put1(b, '"');
	Py_XDECREF(start);
	Py_XDECREF(end);
	if (rc || put_json_attrs(b, ",", s, escape, kv_text))
		return -1;
	/* events and links: lists of objects */
	PyObject *names[2] = {S_events, S_links};
	for (int which = 0; which < 2; which++) {
		PyObject *seq = PyObject_GetAttr(s, names[which]);
		if (!seq)
			return -1;
		PyObject *fast = PySequence_Fast(seq, "expected a sequence");
		Py_DECREF(seq);
		if (!fast)
			return -1;
		Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
		rc = n && (which ? PUTS(b, ",\"links\":[") : PUTS(b, ",\"events\":["));
		for (Py_ssize_t i = 0; !rc && i < n; i++) {
			PyObject *e = PySequence_Fast_GET_ITEM(fast, i);
			rc = i && put1(b, ',');
			if (rc)
				break;
			if (which == 0) {
				PyObject *t = PyObject_GetAttr(e, S_time_ns);
				rc = !t || PUTS(b, "{\"timeUnixNano\":\"") || put_str_of(b, t) || PUTS(b, "\",\"name\":") ||
				     put_json_name(b, e, escape) || put_json_attrs(b, ",", e, escape, kv_text) || put1(b, '}');
				Py_XDECREF(t);
			} else {
				rc = PUTS(b, "{\"traceId\":\"") || put_hex_attr(b, e, S_trace_id) || PUTS(b, "\",\"spanId\":\"") ||
				     put_hex_attr(b, e, S_span_id) || put1(b, '"') || put_json_attrs(b, ",", e, escape, kv_text) ||
				     put1(b, '}');
			}
		}
		if (!rc && n)
			rc = put1(b, ']');
		Py_DECREF(fast);
		if (rc)
			return -1;
	}
	/* status: {"message":..,"code":..}, either omitted when empty */
	PyObject *msg = PyObject_GetAttr(s, S_status_message), *code = msg ? PyObject_GetAttr(s, S_status_code) : NULL;
	int has_msg = msg ? PyObject_IsTrue(msg) : -1, has_code = code ? PyObject_IsTrue(code) : -1;
	rc = has_msg < 0 || has_code < 0 || PUTS(b, ",\"status\":{") ||
	     (has_msg && (PUTS(b, "\"message\":") || put_json_str(b, msg, escape))) ||
	     (has_code && (!PyLong_CheckExact(code) || (has_msg && put1(b, ',')) || PUTS(b, "\"code\":") ||
			   put_str_of(b, code))) ||
	     PUTS(b, "}}");
	Py_XDECREF(msg);
	Py_XDECREF(code);
	return rc ? -1 : 0;
}

static PyObject *encode_spans_json(PyObject *self, PyObject *args)
{
	PyObject *spans, *escape, *kv_text;
	(void)self;
	if (!PyArg_ParseTuple(args, "OOO:encode_spans_json", &spans, &escape, &kv_text))
		return NULL;
	PyObject *fast = PySequence_Fast(spans, "spans must be a sequence");
	if (!fast)
		return NULL;
	Buf b = {NULL, 0, 0};
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
		if ((i && put1(&b, ',')) || put_json_span(&b, PySequence_Fast_GET_ITEM(fast, i), escape, kv_text)) {
			Py_DECREF(fast);
			PyMem_Free(b.p);
			return NULL;
		}
	}
	Py_DECREF(fast);
	PyObject *out = PyBytes_FromStringAndSize(b.p ? b.p : "", b.len);
	PyMem_Free(b.p);
	return out;
}

static PyMethodDef methods[] = {
	{"encode_spans", encode_spans, METH_VARARGS,
	 "encode_spans(spans, any_value) -> bytes: ScopeSpans.spans fields (tag 0x12) of each span."},
	{"encode_spans_json", encode_spans_json, METH_VARARGS,
	 "encode_spans_json(spans, escape, kv_text) -> bytes: the spans' OTLP JSON objects, joined by ','."},
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
