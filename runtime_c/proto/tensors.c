/* tensors.c: the NDArray-list codec (tensors.h). */
#include "tensors.h"

#include <string.h>

#define LIST_MAGIC 0xF7E58D4F05049CB7ull   /* tensorfile.py LIST_MAGIC, TENSOR_MAGIC */
#define TENSOR_MAGIC 0xDD5E40F096B4A13Full

static uint64_t rd64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v; /* one unaligned load where the machine allows it (see frame.h) */
  memcpy(&v, p, 8);
  return v;
#else
  uint64_t v = 0;
  int k;
  for (k = 7; k >= 0; k--) v = v << 8 | p[k];
  return v;
#endif
}

/* A u64 length or count as a size_t: one too large for this machine is SIZE_MAX, which no
 * blob can hold (so every later length check fails on it). */
static size_t rd_size(const uint8_t *p) {
  uint64_t v = rd64(p);
  return v > (size_t)-1 ? (size_t)-1 : (size_t)v;
}

static int input_at(minrt *m, const uint8_t *b, size_t q) {
  return minrt_input_index(m, (const char *)b + q + 8, rd_size(b + q));
}

int tensors_set_inputs(minrt *m, const uint8_t *b, size_t len, size_t *at) {
  size_t p, q, q2, k, n, i, j, nl, nbytes;
  int idx, ndim;
  *at = 0;
  if (len < 24 || rd64(b) != LIST_MAGIC) return TENSORS_E_LIST;
  n = rd_size(b + 16);
  *at = 16;
  if (n != (size_t)minrt_num_inputs(m)) return TENSORS_E_COUNT;
  /* the names first: each a graph input, none twice, whatever the tensors hold */
  for (q = 24, i = 0; i < n; i++, q += 8 + nl) {
    *at = q;
    if (len - q < 8 || (nl = rd_size(b + q)) > len - q - 8) return TENSORS_E_NAME;
    if ((idx = input_at(m, b, q)) < 0) return TENSORS_E_UNKNOWN;
    for (q2 = 24, j = 0; j < i; j++, q2 += 8 + rd_size(b + q2))
      if (input_at(m, b, q2) == idx) return TENSORS_E_TWICE;
  }
  p = q;
  *at = p;
  if (len - p < 8 || rd_size(b + p) != n) return TENSORS_E_COUNT;
  p += 8;
  for (q = 24, i = 0; i < n; i++, q += 8 + rd_size(b + q)) {
    const DLTensor *t;
    idx = input_at(m, b, q);                  /* known: the names passed */
    t = m->inputs[idx];
    *at = p;
    if (len - p < 32 || rd64(b + p) != TENSOR_MAGIC) return TENSORS_E_HEADER;
    ndim = (int)(uint32_t)rd64(b + p + 24);   /* the low half: ndim, then dtype */
    if (ndim != t->ndim || memcmp(b + p + 28, &t->dtype, 4)) return TENSORS_E_DTYPE;
    p += 32;
    if ((len - p) / 8 < (size_t)ndim + 1) return TENSORS_E_SHAPE;
    for (k = 0; k < (size_t)ndim; k++, p += 8)
      if (rd64(b + p) != (uint64_t)t->shape[k]) return TENSORS_E_SHAPE;
    nbytes = minrt_nbytes(t);
    *at = p;
    if (rd_size(b + p) != nbytes || len - p - 8 < nbytes) return TENSORS_E_DATA;
    p += 8;
    if (minrt_set_input(m, idx, b + p, nbytes)) return TENSORS_E_SET;
    p += nbytes;
  }
  *at = p;
  return p != len ? TENSORS_E_TRAILING : 0;
}

size_t tensors_output_name(char *buf, unsigned i) {
  char digits[10];
  size_t n = 0, len = 6;
  memcpy(buf, "output", 6);
  do digits[n++] = (char)('0' + i % 10); while (i /= 10);
  while (n) buf[len++] = digits[--n];
  buf[len] = 0;
  return len;
}

typedef struct {
  uint8_t *buf;
  size_t cap, len; /* len counts past cap: the size needed */
} sink;

static void wr(sink *s, const void *src, size_t n) {
  if (s->buf && n && s->len + n <= s->cap) memcpy(s->buf + s->len, src, n);
  s->len += n;
}

static void wr64(sink *s, uint64_t v) {
  uint8_t b[8];
  int k;
  for (k = 0; k < 8; k++, v >>= 8) b[k] = (uint8_t)v;
  wr(s, b, 8);
}

size_t tensors_write_outputs(const minrt *m, uint8_t *buf, size_t cap) {
  sink s;
  unsigned i, n = (unsigned)minrt_num_outputs(m);
  int k;
  char name[16];
  s.buf = buf;
  s.cap = cap;
  s.len = 0;
  wr64(&s, LIST_MAGIC);
  wr64(&s, 0);
  wr64(&s, n);
  for (i = 0; i < n; i++) {
    size_t len = tensors_output_name(name, i);
    wr64(&s, len);
    wr(&s, name, len);
  }
  wr64(&s, n);
  for (i = 0; i < n; i++) {
    const DLTensor *t = minrt_output(m, (int)i);
    uint8_t hdr[16] = {1}; /* DLDevice {kDLCPU, 0}, ndim, dtype */
    memcpy(hdr + 8, &t->ndim, 4);
    memcpy(hdr + 12, &t->dtype, 4);
    wr64(&s, TENSOR_MAGIC);
    wr64(&s, 0);
    wr(&s, hdr, 16);
    for (k = 0; k < t->ndim; k++) wr64(&s, (uint64_t)t->shape[k]);
    wr64(&s, minrt_nbytes(t));
    wr(&s, t->data, minrt_nbytes(t));
  }
  return s.len;
}

const char *tensors_error_text(int code) {
#ifdef MINRT_NO_MESSAGES
  (void)code;
  return "";
#else
  static const char *const text[] = {
      "", "not an NDArray-list", "not one tensor per graph input", "truncated name",
      "a name that is no graph input", "an input given twice", "bad tensor header",
      "dtype/ndim differ from the graph input", "shape differs from the graph input or is truncated",
      "bad nbytes or truncated data", "bytes after the last tensor", "minrt refused the data"};
  return code > 0 && code <= TENSORS_E_SET ? text[code] : "";
#endif
}
