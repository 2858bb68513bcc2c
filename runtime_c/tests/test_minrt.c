/* C tests for minrt: test_minrt FIXTURE_DIR
 * The fixtures (written by tests/test_runtime_c.py with TVM's save_param_dict) are:
 *   good.json + good.bin     a float32 graph: add, relu (workspace), __nop, add, double
 *                            (parallel launch); heads: result, the __nop output, param w
 *   good_aligned.bin         the same params in minrt's aligned container
 *   dtypes.json + dtypes.bin  every dtype as a param, copied by a kernel; heads: copies,
 *                            then the params themselves; outputs written to dtypes_out.bin
 *   sigs.c                   (compiled in) the kernels' signatures, minrt_model_signatures
 *   names.json + names.txt   an input whose name has JSON escapes; its raw UTF-8 name
 *   cases.txt                malformed inputs, one per line:
 *                            PHASE(L load|R run|G run, checked only in the
 *                            -DMINRT_GUARD build) WORKSPACE GRAPH PARAMS CODE MESSAGE...
 * Prints one line per failure and a last line "N passed, N failed". */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "minrt.h"
#include "../src/internal.h" /* to walk the entries: which params are used in place */
#include "runner.h"

static int passed, failed;
static const char *dir;
static size_t last_arena; /* the arena size of load()'s last success */

#define CHECK(cond, ...)                           \
  do {                                             \
    if (cond) {                                    \
      passed++;                                    \
    } else {                                       \
      failed++;                                    \
      printf("FAIL %s:%d: ", __FILE__, __LINE__);  \
      printf(__VA_ARGS__);                         \
      printf("\n");                                \
    }                                              \
  } while (0)

typedef struct {
  unsigned char *p;
  size_t n;
} buf;

/* a file in the fixture dir, in a 64-byte aligned buffer */
static buf slurp(const char *name) {
  char path[512];
  buf b = {NULL, 0};
  FILE *f;
  long n;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  if (!(f = fopen(path, "rb"))) {
    printf("cannot open %s\n", path);
    exit(2);
  }
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (posix_memalign((void **)&b.p, 64, (size_t)n + 64)) exit(2);
  b.n = fread(b.p, 1, (size_t)n, f);
  fclose(f);
  return b;
}

/* load with an arena of exactly the size minrt asks for (the three-call protocol) */
static int load(const void *json, size_t jn, const void *params, size_t pn, size_t ws,
                minrt **m, void **arena, minrt_err *err) {
  minrt_artifact a;
  size_t need = 0, have = 0;
  int rc, calls = 0;
  memset(&a, 0, sizeof a);
  a.graph_json = (const char *)json;
  a.graph_len = jn;
  a.params = params;
  a.params_len = pn;
  a.workspace_bytes = ws;
  a.signatures = &minrt_model_signatures;
  *arena = NULL;
  for (;;) {
    rc = minrt_load(m, &a, *arena, have, &need, err);
    calls++;
    if (rc != MINRT_E_ARENA || need <= have) break;
    free(*arena);
    if (posix_memalign(arena, 64, need)) exit(2);
    have = need;
  }
  CHECK(calls <= 3, "load took %d calls", calls);
  if (rc == 0) last_arena = have;
  return rc;
}

static void test_good(void) {
  buf g = slurp("good.json"), p = slurp("good.bin");
  minrt *m;
  minrt_err err;
  void *arena;
  float x[16], w[16], b[16];
  const DLTensor *out, *nop, *wt;
  size_t need = 0, i;
  int rc, ok = 1, idx;
  rc = load(g.p, g.n, p.p, p.n, 64, &m, &arena, &err);
  CHECK(rc == 0, "load: %d %s", rc, err.msg);
  if (rc) return;
  CHECK(minrt_num_inputs(m) == 1 && minrt_num_outputs(m) == 3, "inputs %d outputs %d",
        minrt_num_inputs(m), minrt_num_outputs(m));
  idx = minrt_input_index(m, "x", 1);
  CHECK(idx == 0, "input x index %d", idx);
  CHECK(minrt_input_index(m, "w", 1) == MINRT_E_ARG && strstr(err.msg, "'w'"),
        "param w is not an input: %s", err.msg);
  CHECK(minrt_set_input(m, 0, x, 12) == MINRT_E_ARG, "wrong input size accepted");
  for (i = 0; i < 16; i++) x[i] = (float)i - 7.5f;
  CHECK(minrt_set_input(m, 0, x, sizeof x) == 0, "set_input: %s", err.msg);
  CHECK(minrt_run(m) == 0, "run: %s", err.msg);
  CHECK(minrt_run(m) == 0, "second run: %s", err.msg);
  /* outside a run there is no workspace: the arena of the last run is not handed out */
  CHECK(TVMBackendAllocWorkspace(1, 0, 16, 2, 32) == NULL, "workspace given outside a run");
  /* the documented idiom keeps minrt_input_index's message */
  CHECK(minrt_set_input(m, minrt_input_index(m, "nope", 4), x, sizeof x) == MINRT_E_ARG &&
            strstr(err.msg, "unknown 'nope'"),
        "set_input(input_index) message: %s", err.msg);
  out = minrt_output(m, 0);
  nop = minrt_output(m, 1);
  wt = minrt_output(m, 2);
  CHECK(minrt_output(m, 3) == NULL && minrt_output(m, -1) == NULL, "output out of range");
  CHECK(out->ndim == 1 && out->shape[0] == 16 && out->dtype.code == 2 && out->dtype.bits == 32,
        "output 0 shape/dtype");
  /* w is the 2x8 param whose data is 64-byte aligned in good.bin: used in place */
  CHECK(wt->data == (void *)(p.p + 128), "w not zero-copy: %p vs %p", wt->data,
        (void *)(p.p + 128));
  memcpy(w, wt->data, sizeof w);
  /* b is at an unaligned offset: copied; find it in the blob after w */
  memcpy(b, p.p + 240, sizeof b);
  for (i = 0; i < 16; i++) {
    float r = x[i] + w[i] > 0 ? x[i] + w[i] : 0;
    ok &= ((float *)nop->data)[i] == r && ((float *)out->data)[i] == 2 * (r + b[i]);
  }
  CHECK(ok, "wrong results");
  /* the __nop output aliases relu's output buffer; every kernel tensor is aligned */
  CHECK(((uintptr_t)out->data & 63) == 0 && ((uintptr_t)nop->data & 63) == 0, "alignment");
  /* arena too small by one byte; not aligned */
  {
    minrt_artifact a;
    minrt *m2;
    unsigned char *small;
    size_t total = 0;
    memset(&a, 0, sizeof a);
    a.graph_json = (const char *)g.p;
    a.graph_len = g.n;
    a.params = p.p;
    a.params_len = p.n;
    a.workspace_bytes = 64;
    a.signatures = &minrt_model_signatures;
    rc = minrt_load(&m2, &a, NULL, 0, &need, &err);
    CHECK(rc == MINRT_E_ARENA && need > 0 && strstr(err.msg, "too small"), "query: %s", err.msg);
    if (posix_memalign((void **)&small, 64, 1 << 16)) exit(2);
    rc = minrt_load(&m2, &a, small, need, &total, &err);
    CHECK(rc == MINRT_E_ARENA && total > need, "second query: %d %s", rc, err.msg);
    rc = minrt_load(&m2, &a, small, total - 1, &need, &err);
    CHECK(rc == MINRT_E_ARENA && need == total, "arena short by 1: %d %s", rc, err.msg);
    rc = minrt_load(&m2, &a, small + 8, 60000, &need, &err);
    CHECK(rc == MINRT_E_ALIGN && strstr(err.msg, "aligned"), "misaligned arena: %s", err.msg);
    rc = minrt_load(&m2, &a, small, total, &need, &err);
    CHECK(rc == 0 && m2, "exact arena: %s", err.msg);
    /* params in a misaligned buffer: everything copied, same results */
    memmove(p.p + 1, p.p, p.n);
    a.params = p.p + 1;
    rc = minrt_load(&m2, &a, small, 1 << 16, &need, &err);
    CHECK(rc == 0 && minrt_output(m2, 2)->data != (void *)(p.p + 129) &&
              !memcmp(minrt_output(m2, 2)->data, w, sizeof w),
          "misaligned params: %d %s", rc, err.msg);
    if (rc == 0) {
      minrt_set_input(m2, 0, x, sizeof x);
      CHECK(minrt_run(m2) == 0 && !memcmp(minrt_output(m2, 0)->data, out->data, 64),
            "misaligned params: results differ");
    }
    free(small);
  }
  free(arena);
  free(g.p);
  free(p.p);
}

/* The aligned container in a PROT_READ mapping (a write to a weight would fault): nothing
 * copied, every param read where it lies, the same results as TVM's blob in the heap; the
 * arena breakdown adds up to the arena. */
static void test_read_only_params(void) {
  buf g = slurp("good.json"), p = slurp("good.bin");
  char path[512];
  struct stat st;
  minrt *m, *m2;
  minrt_err err;
  void *arena, *arena2;
  unsigned char *ro;
  const uint32_t *u;
  float x[16];
  size_t i, size, arena_len;
  int fd, rc, in_place = 0, copied = 0, outside = 0;
  snprintf(path, sizeof path, "%s/good_aligned.bin", dir);
  if ((fd = open(path, O_RDONLY)) < 0 || fstat(fd, &st)) exit(2);
  size = (size_t)st.st_size;
  ro = (unsigned char *)mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (ro == MAP_FAILED) exit(2);
  rc = load(g.p, g.n, ro, size, 64, &m, &arena, &err);
  CHECK(rc == 0, "aligned, read-only: %d %s", rc, err.msg);
  arena_len = last_arena;
  rc |= load(g.p, g.n, p.p, p.n, 64, &m2, &arena2, &err);
  CHECK(rc == 0, "TVM blob: %d %s", rc, err.msg);
  if (rc) return;
  for (i = 0; i < m->n_ent; i++) {
    const minrt_entry *en = &m->ent[i];
    if (en->kind == ENTRY_PARAM_IN_PLACE) {
      in_place++;
      outside += (const unsigned char *)en->t.data < ro ||
                 (const unsigned char *)en->t.data + en->nbytes > ro + size;
    }
    copied += en->kind == ENTRY_PARAM_COPY;
  }
  CHECK(in_place == 2 && copied == 0 && outside == 0,
        "aligned params: %d in place, %d copied, %d outside the mapping", in_place, copied, outside);
  u = m->arena_use;
  CHECK(u[MINRT_USE_WEIGHT_COPIES] == 0, "aligned params: %u bytes copied", u[MINRT_USE_WEIGHT_COPIES]);
  CHECK(u[0] + u[1] + u[2] + u[3] == arena_len, "breakdown %u+%u+%u+%u != arena %zu", u[0], u[1],
        u[2], u[3], arena_len);
  CHECK(u[MINRT_USE_WORKSPACE] == 64 + MINRT_GUARD_BYTES && u[MINRT_USE_GRAPH] > 0, "workspace %u graph %u",
        u[MINRT_USE_WORKSPACE], u[MINRT_USE_GRAPH]);
  CHECK(m2->arena_use[MINRT_USE_WEIGHT_COPIES] == 64, "TVM blob: b (64 B) copied, got %u",
        m2->arena_use[MINRT_USE_WEIGHT_COPIES]);
  for (i = 0; i < 16; i++) x[i] = (float)i - 7.5f;
  minrt_set_input(m, 0, x, sizeof x);
  minrt_set_input(m2, 0, x, sizeof x);
  CHECK(minrt_run(m) == 0, "run on read-only params: %s", err.msg);
  CHECK(minrt_run(m2) == 0 && !memcmp(minrt_output(m, 0)->data, minrt_output(m2, 0)->data, 64),
        "read-only aligned params: results differ from TVM's blob");
  free(arena);
  free(arena2);
  munmap(ro, size);
  free(g.p);
  free(p.p);
}

/* every prefix and every single-bit flip of both files: an error or a model, never a crash
 * (the sanitizers watch) */
static void test_mutations(void) {
  buf g = slurp("good.json"), p = slurp("good.bin");
  static unsigned char arena[1 << 16] __attribute__((aligned(64)));
  unsigned char *copy;
  minrt_artifact a;
  minrt *m;
  minrt_err err;
  size_t i, need, bad_prefix = 0, ok_flips = 0;
  int bit, rc;
  memset(&a, 0, sizeof a);
  a.workspace_bytes = 64;
  a.signatures = &minrt_model_signatures;
  for (i = 0; i < g.n; i++) {
    copy = (unsigned char *)malloc(i + 1);
    memcpy(copy, g.p, i);
    a.graph_json = (const char *)copy;
    a.graph_len = i;
    a.params = p.p;
    a.params_len = p.n;
    rc = minrt_load(&m, &a, arena, sizeof arena, &need, &err);
    if (rc != MINRT_E_JSON && rc != MINRT_E_GRAPH) bad_prefix++;
    free(copy);
  }
  CHECK(bad_prefix == 0, "%zu JSON prefixes not rejected as JSON/graph errors", bad_prefix);
  a.graph_json = (const char *)g.p;
  a.graph_len = g.n;
  for (i = 1; i < p.n; i++) {
    a.params_len = i;
    rc = minrt_load(&m, &a, arena, sizeof arena, &need, &err);
    if (rc != MINRT_E_PARAMS) bad_prefix++;
  }
  CHECK(bad_prefix == 0, "%zu params prefixes not rejected as params errors", bad_prefix);
  copy = (unsigned char *)malloc(g.n);
  for (i = 0; i < g.n; i++)
    for (bit = 0; bit < 8; bit++) {
      memcpy(copy, g.p, g.n);
      copy[i] ^= (unsigned char)(1 << bit);
      a.graph_json = (const char *)copy;
      a.params_len = p.n;
      if (minrt_load(&m, &a, arena, sizeof arena, &need, &err) == 0) {
        float x[16] = {0};
        ok_flips++;
        minrt_set_input(m, 0, x, sizeof x); /* may fail: the flip may rename x */
        minrt_run(m);
      }
    }
  free(copy);
  copy = (unsigned char *)malloc(p.n);
  a.graph_json = (const char *)g.p;
  for (i = 0; i < p.n; i++)
    for (bit = 0; bit < 8; bit++) {
      memcpy(copy, p.p, p.n);
      copy[i] ^= (unsigned char)(1 << bit);
      a.params = copy;
      if (minrt_load(&m, &a, arena, sizeof arena, &need, &err) == 0) ok_flips++;
    }
  free(copy);
  CHECK(1, "bit flips survived");
  printf("bit flips: %zu of %zu loaded (the rest rejected)\n", ok_flips, 8 * (g.n + p.n));
  free(g.p);
  free(p.p);
}

/* every dtype: params copied by a kernel; write the outputs for the Python side to check */
static void test_dtypes(void) {
  buf g = slurp("dtypes.json"), p = slurp("dtypes.bin");
  runner r;
  runner_timing t;
  int rc, i, n, ok = 1;
  size_t len;
  char path[512];
  FILE *f;
  rc = runner_load(&r, (const char *)g.p, g.n, p.p, p.n, 0, NULL, NULL, &minrt_model_signatures);
  CHECK(rc == 0, "dtypes load: %s", r.err.msg);
  if (rc) return;
  CHECK(runner_run(&r, 1, &t) == 0, "dtypes run: %s", r.err.msg);
  n = minrt_num_outputs(r.m) / 2;
  for (i = 0; i < n; i++) {
    const DLTensor *c = minrt_output(r.m, i), *s = minrt_output(r.m, n + i);
    ok &= minrt_nbytes(c) == minrt_nbytes(s) && !memcmp(c->data, s->data, minrt_nbytes(c)) &&
          !memcmp(&c->dtype, &s->dtype, 4);
  }
  CHECK(ok && n == 8, "dtype copies differ (%d params)", n);
  len = runner_write_outputs(&r, NULL, 0);
  {
    void *out = malloc(len);
    CHECK(runner_write_outputs(&r, out, len) == len, "write outputs");
    snprintf(path, sizeof path, "%s/dtypes_out.bin", dir);
    f = fopen(path, "wb");
    fwrite(out, 1, len, f);
    fclose(f);
    free(out);
  }
  runner_free(&r);
  free(g.p);
  free(p.p);
}

/* names as written in graph.json (raw bytes, escapes) and the UTF-8 name each stands for:
 * a backslash before a raw control byte or a NUL (json_string keeps escapes raw) is that byte,
 * read without looking past the escape table (ASan build); raw UTF-8 is itself */
static void test_name_bytes(void) {
  static const char head[] = "{\"nodes\":[{\"op\":\"null\",\"name\":\"";
  static const char tail[] = "\",\"inputs\":[]}],\"heads\":[[0,0,0]],\"attrs\":{"
      "\"dltype\":[\"list_str\",[\"float32\"]],\"storage_id\":[\"list_int\",[0]],"
      "\"shape\":[\"list_shape\",[[1]]]},\"node_row_ptr\":[0,1]}";
  static const struct {
    const char *json, *utf8;
    size_t jn, un;
  } cases[] = {
      {"a\\\0", "a\0", 3, 2},          {"a\\\b", "a\b", 3, 2}, {"a\\b", "a\b", 3, 2},
      {"a\\n", "a\n", 3, 2},            {"a\\/", "a/", 3, 2},     {"a\xc3\xa9", "a\xc3\xa9", 3, 3},
      {"a\\u00e9", "a\xc3\xa9", 7, 3}, {"a\\u00E9", "a\xc3\xa9", 7, 3},
  };
  char json[sizeof head + sizeof tail + 8];
  size_t k, hn = sizeof head - 1, tn = sizeof tail - 1;
  for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    minrt *m;
    minrt_err err;
    void *arena = NULL;
    size_t jn = cases[k].jn, un = cases[k].un;
    int rc;
    memcpy(json, head, hn);
    memcpy(json + hn, cases[k].json, jn);
    memcpy(json + hn + jn, tail, tn);
    rc = load(json, hn + jn + tn, NULL, 0, 0, &m, &arena, &err);
    CHECK(rc == 0, "name case %zu: load: %s", k, err.msg);
    if (!rc) {
      CHECK(minrt_input_index(m, cases[k].utf8, un) == 0, "name case %zu: not found", k);
      CHECK(minrt_input_index(m, cases[k].utf8, un - 1) < 0, "name case %zu: a prefix matched", k);
    }
    free(arena);
  }
}

/* JSON escapes in names compare as the characters they stand for (the inputs blob carries
 * raw UTF-8) */
static void test_names(void) {
  buf g = slurp("names.json"), raw = slurp("names.txt");
  minrt *m;
  minrt_err err;
  void *arena;
  int rc = load(g.p, g.n, NULL, 0, 0, &m, &arena, &err);
  CHECK(rc == 0, "names load: %s", err.msg);
  if (!rc) {
    CHECK(minrt_input_index(m, (const char *)raw.p, raw.n) == 0, "raw UTF-8 name not found");
    CHECK(minrt_input_index(m, (const char *)raw.p, raw.n - 1) < 0, "a prefix matched");
    raw.p[0] ^= 1;
    CHECK(minrt_input_index(m, (const char *)raw.p, raw.n) < 0, "a different name matched");
    CHECK(minrt_input_index(m, "y", 1) == 1, "plain name y");
  }
  free(arena);
  free(g.p);
  free(raw.p);
  test_name_bytes();
}

static void test_cases(void) {
  char path[512], line[1024], phase, gname[128], pname[128], *msg;
  long ws;
  int code, n, rc;
  FILE *f;
  snprintf(path, sizeof path, "%s/cases.txt", dir);
  if (!(f = fopen(path, "r"))) {
    printf("FAIL no cases.txt\n");
    failed++;
    return;
  }
  while (fgets(line, sizeof line, f)) {
    buf g, p;
    minrt *m;
    minrt_err err;
    void *arena;
    line[strcspn(line, "\n")] = 0;
    if (sscanf(line, "%c %ld %127s %127s %d %n", &phase, &ws, gname, pname, &code, &n) != 5)
      continue;
    msg = line + n;
#ifndef MINRT_GUARD
    if (phase == 'G') continue;
#endif
    g = slurp(gname);
    p = strcmp(pname, "-") ? slurp(pname) : (buf){NULL, 0};
    rc = load(g.p, g.n, p.p, p.n, (size_t)ws, &m, &arena, &err);
    if (phase != 'L' && rc == 0) {
      float x[16] = {1};
      minrt_set_input(m, 0, x, sizeof x);
      rc = minrt_run(m);
    }
    CHECK(rc == code && strstr(err.msg, msg), "%s: want %d '%s', got %d '%s'", line, code, msg,
          rc, rc ? err.msg : "");
    if (rc == code && strstr(err.msg, msg)) printf("ok   %-28s -> %s\n", gname, err.msg);
    free(arena);
    free(g.p);
    free(p.p);
  }
  fclose(f);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    printf("usage: test_minrt FIXTURE_DIR\n");
    return 2;
  }
  dir = argv[1];
  test_good();
  test_read_only_params();
  test_dtypes();
  test_names();
  test_cases();
  test_mutations();
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
