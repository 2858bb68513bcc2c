/* Runner steps over memory buffers; see runner.h. */
#define _POSIX_C_SOURCE 200809L
#include "runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const unsigned char list_magic[8] = {0xB7, 0x9C, 0x04, 0x05, 0x4F, 0x8D, 0xE5, 0xF7};
static const unsigned char tensor_magic[8] = {0x3F, 0xA1, 0xB4, 0x96, 0xF0, 0x40, 0x5E, 0xDD};

int runner_load(runner *r, const char *graph, size_t graph_len, const void *params,
                size_t params_len, size_t workspace_bytes, minrt_resolver resolve, void *ctx,
                const minrt_signatures *sigs) {
  minrt_artifact a;
  size_t need = 0;
  int rc, tries;
  a.graph_json = graph;
  a.graph_len = graph_len;
  a.params = params;
  a.params_len = params_len;
  a.workspace_bytes = workspace_bytes;
  a.resolve = resolve;
  a.resolve_ctx = ctx;
  a.signatures = sigs;
  memset(r, 0, sizeof *r);
  /* at most three calls: graph size, then total size, then the load */
  for (tries = 0; tries < 4; tries++) {
    rc = minrt_load(&r->m, &a, r->arena, r->arena_bytes, &need, &r->err);
    if (rc != MINRT_E_ARENA || need <= r->arena_bytes) break;
    free(r->arena);
    r->arena = NULL;
    r->arena_bytes = 0;
    if (posix_memalign(&r->arena, MINRT_ALIGN, need)) {
      snprintf(r->err.msg, sizeof r->err.msg, "cannot allocate a %zu byte arena", need);
      return r->err.code = MINRT_E_ARENA;
    }
    r->arena_bytes = need;
  }
  return rc;
}

static unsigned long long rd64(const unsigned char *p) {
  unsigned long long v;
  memcpy(&v, p, 8);
  return v;
}

static int bad_inputs(runner *r, const char *what, size_t at) {
  snprintf(r->err.msg, sizeof r->err.msg, "inputs byte %zu: %s", at, what);
  r->err.code = MINRT_E_ARG;
  return -1;
}

static int set_inputs(runner *r, const unsigned char *b, size_t len, unsigned char *seen) {
  size_t p = 24, q, i, n, k, set = 0;
  unsigned long long nl;
  if (len < 24 || memcmp(b, list_magic, 8)) return bad_inputs(r, "not an NDArray-list", 0);
  n = (size_t)rd64(b + 16);
  q = p; /* names */
  for (i = 0; i < n; i++) {
    if (len - p < 8 || (nl = rd64(b + p)) > len - p - 8) return bad_inputs(r, "truncated name", p);
    p += 8 + (size_t)nl;
  }
  if (len - p < 8 || rd64(b + p) != n) return bad_inputs(r, "tensor count", p);
  p += 8;
  for (i = 0; i < n; i++) {
    const DLTensor *t;
    int idx;
    size_t at = p;
    long long ndim;
    nl = rd64(b + q);
    idx = minrt_input_index(r->m, (const char *)b + q + 8, (size_t)nl);
    q += 8 + (size_t)nl;
    if (idx < 0) return -1;
    if (seen[idx]) return bad_inputs(r, "an input given twice", at);
    seen[idx] = 1;
    t = minrt_input(r->m, idx);
    if (len - p < 32 || memcmp(b + p, tensor_magic, 8)) return bad_inputs(r, "bad tensor header", at);
    ndim = (long long)(int)(rd64(b + p + 24) & 0xffffffff);
    if (ndim != t->ndim || memcmp(b + p + 28, &t->dtype, 4))
      return bad_inputs(r, "dtype/ndim differ from the graph input", at);
    p += 32;
    if (len - p < 8 * (size_t)ndim + 8) return bad_inputs(r, "truncated shape", at);
    for (k = 0; k < (size_t)ndim; k++)
      if ((long long)rd64(b + p + 8 * k) != t->shape[k])
        return bad_inputs(r, "shape differs from the graph input", at);
    p += 8 * (size_t)ndim;
    if (rd64(b + p) != minrt_nbytes(t) || len - p - 8 < minrt_nbytes(t))
      return bad_inputs(r, "bad nbytes or truncated data", at);
    p += 8;
    if (minrt_set_input(r->m, idx, b + p, minrt_nbytes(t))) return -1;
    p += minrt_nbytes(t);
    set++;
  }
  r->inputs = b;
  r->inputs_len = len;
  if (set != (size_t)minrt_num_inputs(r->m)) { /* none twice: so one is missing */
    for (i = 0; seen[i]; i++) {
    }
    snprintf(r->err.msg, sizeof r->err.msg, "%zu inputs given, the graph has %d: input %zu missing",
             set, minrt_num_inputs(r->m), i);
    r->err.code = MINRT_E_ARG;
    return -1;
  }
  return 0;
}

int runner_set_inputs(runner *r, const void *blob, size_t len) {
  /* seen[i]: input i was set (every input exactly once) */
  unsigned char *seen = (unsigned char *)calloc((size_t)minrt_num_inputs(r->m) + 1, 1);
  int rc;
  if (!seen) return bad_inputs(r, "out of memory", 0);
  rc = set_inputs(r, (const unsigned char *)blob, len, seen);
  free(seen);
  return rc;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int runner_run(runner *r, int iters, runner_timing *t) {
  int i, rc;
  double sum = 0;
  t->iters = iters;
  t->min_us = t->max_us = t->mean_us = 0;
  t->peak_rss_kb = -1;
  t->threads = t->threads_used = 1; /* a front end with a pool (main.c) says more */
  for (i = 0; i < iters; i++) {
    double t0, dt;
    if (i && r->inputs && runner_set_inputs(r, r->inputs, r->inputs_len)) return r->err.code;
    t0 = now_us();
    if ((rc = minrt_run(r->m)) != 0) return rc;
    dt = now_us() - t0;
    if (!i || dt < t->min_us) t->min_us = dt;
    if (!i || dt > t->max_us) t->max_us = dt;
    sum += dt;
  }
  t->mean_us = iters ? sum / iters : 0;
  return 0;
}

typedef struct {
  unsigned char *buf;
  size_t cap, len; /* len counts past cap: the size needed */
} sink;

static void wr(sink *s, const void *src, size_t n) {
  if (s->buf && n && s->len + n <= s->cap) memcpy(s->buf + s->len, src, n);
  s->len += n;
}

static void wr64(sink *s, unsigned long long v) { wr(s, &v, 8); }

size_t runner_write_outputs(const runner *r, void *buf, size_t cap) {
  sink s;
  int i, k, n = minrt_num_outputs(r->m);
  char name[24];
  s.buf = (unsigned char *)buf;
  s.cap = cap;
  s.len = 0;
  wr(&s, list_magic, 8);
  wr64(&s, 0);
  wr64(&s, (unsigned long long)n);
  for (i = 0; i < n; i++) {
    int len = snprintf(name, sizeof name, "output%d", i);
    wr64(&s, (unsigned long long)len);
    wr(&s, name, (size_t)len);
  }
  wr64(&s, (unsigned long long)n);
  for (i = 0; i < n; i++) {
    const DLTensor *t = minrt_output(r->m, i);
    unsigned char hdr[16] = {1}; /* DLDevice {kDLCPU, 0}, ndim, dtype */
    memcpy(hdr + 8, &t->ndim, 4);
    memcpy(hdr + 12, &t->dtype, 4);
    wr(&s, tensor_magic, 8);
    wr64(&s, 0);
    wr(&s, hdr, 16);
    for (k = 0; k < t->ndim; k++) wr64(&s, (unsigned long long)t->shape[k]);
    wr64(&s, minrt_nbytes(t));
    wr(&s, t->data, minrt_nbytes(t));
  }
  return s.len;
}

int runner_timing_json(const runner *r, const runner_timing *t, char *buf, size_t cap) {
  const uint32_t *u = r->m->arena_use;
  char rss[24] = "null";
  if (t->peak_rss_kb >= 0) snprintf(rss, sizeof rss, "%ld", t->peak_rss_kb);
  return snprintf(buf, cap,
                  "{\"iters\": %d, \"min_us\": %.3f, \"mean_us\": %.3f, \"max_us\": %.3f, "
                  "\"arena_bytes\": %zu, \"arena\": {\"graph\": %lu, \"activations\": %lu, "
                  "\"workspace\": %lu, \"weight_copies\": %lu}, \"peak_rss_kb\": %s, "
                  "\"threads\": %d, \"threads_used\": %d}",
                  t->iters, t->min_us, t->mean_us, t->max_us, r->arena_bytes,
                  (unsigned long)u[MINRT_USE_GRAPH], (unsigned long)u[MINRT_USE_ACTIVATIONS],
                  (unsigned long)u[MINRT_USE_WORKSPACE], (unsigned long)u[MINRT_USE_WEIGHT_COPIES],
                  rss, t->threads, t->threads_used);
}

void runner_free(runner *r) {
  free(r->arena);
  memset(r, 0, sizeof *r);
}
