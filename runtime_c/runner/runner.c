/* Runner steps over memory buffers; see runner.h. */
#define _POSIX_C_SOURCE 200809L
#include "runner.h"
#include "tensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int runner_set_inputs(runner *r, const void *blob, size_t len) {
  size_t at;
  int code = tensors_set_inputs(r->m, (const unsigned char *)blob, len, &at);
  r->input_error = code;
  if (code) {
    /* a name minrt does not know, or data it refused: minrt's own message says which */
    unsigned long long given = 0;
    if (code == TENSORS_E_COUNT && at == 16) {   /* the list's own count: say both */
      memcpy(&given, (const unsigned char *)blob + 16, 8);
      snprintf(r->err.msg, sizeof r->err.msg, "inputs byte 16: %llu inputs given, the graph has %d", given,
               minrt_num_inputs(r->m));
    } else if (code != TENSORS_E_UNKNOWN && code != TENSORS_E_SET) {
      snprintf(r->err.msg, sizeof r->err.msg, "inputs byte %zu: %s", at, tensors_error_text(code));
    }
    r->err.code = MINRT_E_ARG;
    return -1;
  }
  r->inputs = blob;
  r->inputs_len = len;
  return 0;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int runner_run(runner *r, int iters, runner_timing *t) {
  int i, rc, first = iters > 1; /* runs before the timed ones: the cold start, timed apart */
  double sum = 0;
  t->iters = iters;
  t->first_us = t->min_us = t->max_us = t->mean_us = 0;
  t->peak_rss_kb = -1;
  t->threads = t->threads_used = 1; /* a front end with a pool (main.c) says more */
  for (i = 0; i < iters; i++) {
    double t0, dt;
    if (i && r->inputs && runner_set_inputs(r, r->inputs, r->inputs_len)) return r->err.code;
    t0 = now_us();
    if ((rc = minrt_run(r->m)) != 0) return rc;
    dt = now_us() - t0;
    if (!i) t->first_us = dt;
    if (i < first) {
#ifdef MINRT_PROFILE
      runner_profile_restart(); /* the cold start is not in the kernels' times either */
#endif
      continue;
    }
    if (i == first || dt < t->min_us) t->min_us = dt;
    if (i == first || dt > t->max_us) t->max_us = dt;
    sum += dt;
  }
  t->mean_us = iters ? sum / (iters - first) : 0;
  return 0;
}

size_t runner_write_outputs(const runner *r, void *buf, size_t cap) {
  return tensors_write_outputs(r->m, (unsigned char *)buf, cap);
}

int runner_timing_json(const runner *r, const runner_timing *t, char *buf, size_t cap) {
  const uint32_t *u = r->m->arena_use;
  char rss[24] = "null";
  if (t->peak_rss_kb >= 0) snprintf(rss, sizeof rss, "%ld", t->peak_rss_kb);
  return snprintf(buf, cap,
                  "{\"iters\": %d, \"first_us\": %.3f, \"min_us\": %.3f, \"mean_us\": %.3f, \"max_us\": %.3f, "
                  "\"arena_bytes\": %zu, \"arena\": {\"graph\": %lu, \"activations\": %lu, "
                  "\"workspace\": %lu, \"weight_copies\": %lu}, \"peak_rss_kb\": %s, "
                  "\"threads\": %d, \"threads_used\": %d}",
                  t->iters, t->first_us, t->min_us, t->mean_us, t->max_us, r->arena_bytes,
                  (unsigned long)u[MINRT_USE_GRAPH], (unsigned long)u[MINRT_USE_ACTIVATIONS],
                  (unsigned long)u[MINRT_USE_WORKSPACE], (unsigned long)u[MINRT_USE_WEIGHT_COPIES],
                  rss, t->threads, t->threads_used);
}

void runner_free(runner *r) {
  free(r->arena);
  memset(r, 0, sizeof *r);
}
