/* Running a loaded model, its accessors, and what TVM-generated kernels call back into:
 * error setters, workspace (a stack in the arena), a serial parallel launch, and system-lib
 * registration (a no-op). Kernels have no context argument, so the model being run
 * is a file-scope pointer: one model runs at a time. */
#include <string.h>
#include "internal.h"

/* One place for both (one address to load): */
static struct {
  minrt *model;        /* the model inside minrt_run, else NULL */
  char kernel_msg[80]; /* the last kernel error message */
} run;

#define ALL 127 /* as n: any string fits (the buffers are shorter) */
/* Appends s up to its NUL or n bytes, never past end. */
static char *put(char *p, char *end, const char *s, uint32_t n) {
  while (p < end && n-- && *s) *p++ = *s++;
  return p;
}

/* each message's -code (low 4 bits) and what (high 4 bits), in id order */
#define MINRT_MSG_INFO(id, code, what, detail) (unsigned char)(-(code) | (what) << 4),
static const unsigned char msg_info[] = {MINRT_MESSAGES(MINRT_MSG_INFO)};
MINRT_ASSERT(whats_fit_4_bits, W_COUNT_ <= 16);

#ifdef MINRT_NO_MESSAGES
/* the codes' names, by -code - 1 */
static const char code_names[] = "E_JSON\0E_GRAPH\0E_PARAMS\0E_KERNEL\0E_ARENA\0E_ALIGN\0E_ARG\0E_RUN\0";
#else
/* "what\0" of each W_*, then "detail\0" of each message in id order */
#define MINRT_WHAT_TEXT(id, text) text "\0"
#define MINRT_MSG_TEXT(id, code, what, detail) detail "\0"
static const char texts[] = MINRT_WHATS(MINRT_WHAT_TEXT) MINRT_MESSAGES(MINRT_MSG_TEXT);
#endif

int minrt_fail(minrt_err *e, int id, long num, const char *name, uint32_t len) {
  char *p = e->msg, *end = e->msg + sizeof e->msg - 1, b[16], *d = b + 12;
  int code = msg_info[id] & 15;
#ifdef MINRT_NO_MESSAGES
  d[0] = 0;
#else
  memcpy(d, ": ", 3);
#endif
  if (num >= 0) {
    do *--d = (char)('0' + num % 10); while (num /= 10);
    *--d = ' ';
  }
#ifdef MINRT_NO_MESSAGES
  p = put(put(p, end, list_nth(code_names, code - 1), ALL), end, d, ALL);
#else
  p = put(put(p, end, list_nth(texts, msg_info[id] >> 4), ALL), end, d, ALL);
  p = put(p, end, list_nth(texts, W_COUNT_ + id), ALL);
#endif
  if (name) p = put(put(put(p, end, " '", ALL), end, name, len), end, "'", ALL);
  *p = 0;
  return e->code = -code;
}

#ifdef MINRT_GUARD
minrt_guard_zones minrt_guards;

/* 0, or 1 if a byte of a guard zone changed (run.kernel_msg says so) */
static int guard_broken(void) {
  static uint8_t fill[2 * MINRT_GUARD_BYTES]; /* a zone is under 2 * MINRT_GUARD_BYTES */
  uint32_t k;
  if (fill[0] != MINRT_GUARD_FILL) memset(fill, MINRT_GUARD_FILL, sizeof fill);
  for (k = 0; k < minrt_guards.n; k++)
    if (memcmp(minrt_guards.arena + minrt_guards.at[k], fill, minrt_guards.end[k] - minrt_guards.at[k])) {
      TVMFFIErrorSetRaisedFromCStr("minrt", "guard zone overwritten");
      return 1;
    }
  return 0;
}
#else
#define guard_broken() 0
#endif

#ifdef MINRT_PROFILE
static minrt_profile_hook profile_hook;
void minrt_set_profile_hook(minrt_profile_hook hook) { profile_hook = hook; }
/* read once per run: a kernel cannot set it mid-run */
#define PROFILE_LOCAL minrt_profile_hook hook = profile_hook;
#define PROFILE(m, i, end) (hook ? hook(m, i, end) : (void)0)
#else
#define PROFILE_LOCAL
#define PROFILE(m, i, end) ((void)0)
#endif

int minrt_run(minrt *m) {
  uint32_t i;
  TVMFFIAny ret;
  int rc;
  PROFILE_LOCAL
  run.model = m;
  run.kernel_msg[0] = 0;
  for (i = 0; i < m->n_nodes; i++) {
    minrt_node *n = &m->nodes[i];
    m->ws_top = m->ws;
    if (!n->fn) continue;
    PROFILE(m, i, 0);
    rc = n->fn(0, n->args, n->nargs, &ret);
    PROFILE(m, i, 1);
    if (rc || guard_broken()) break;
  }
  run.model = 0; /* outside a run, workspace calls fail: no stale arena */
  return i < m->n_nodes ? minrt_fail(m->err, M_RUN, (long)i, run.kernel_msg, ALL) : 0;
}

#ifdef MINRT_PROFILE
const char *minrt_node_name(const minrt *m, uint32_t i, size_t *len) {
  if (i >= m->n_nodes) return 0;
  *len = m->nodes[i].name_len;
  return m->nodes[i].name;
}
#endif

int minrt_input_index(const minrt *m, const char *name, size_t len) {
  uint32_t i, k;
  for (k = 0; k < m->n_nodes; k++) {
    const minrt_node *n = &m->nodes[k];
    if (json_string_equals(n->name, n->name_len, name, len))
      for (i = 0; i < m->n_inputs; i++)
        if (m->inputs[i] == &m->ent[n->row].t) return (int)i;
  }
  return minrt_fail(m->err, M_INPUT_NAME, -1, name, (uint32_t)len);
}

int minrt_set_input(minrt *m, int i, const void *data, size_t nbytes) {
  const DLTensor *t = minrt_input(m, i);
  if (!t || nbytes != ((const minrt_entry *)(const void *)t)->nbytes)
    /* i may be minrt_input_index's error: returned as is, its message kept */
    return i == MINRT_E_ARG ? i : minrt_fail(m->err, M_INPUT_SIZE, i, 0, 0);
  memcpy(t->data, data, nbytes);
  return 0;
}

/* Kernels compiled with system-lib register themselves from static constructors; minrt
 * finds each through its model's signature table instead (minrt_signature.fn), so there is
 * nothing to keep. */
int TVMFFIEnvModRegisterSystemLibSymbol(const char *name, void *symbol) {
  (void)name, (void)symbol;
  return 0;
}

/* ---- called by generated kernels ---- */
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  char *p = run.kernel_msg, *end = run.kernel_msg + sizeof run.kernel_msg - 1;
  int32_t i;
  p = put(put(p, end, kind, ALL), end, ": ", ALL);
  for (i = 0; i < n; i++)
    if (parts[i]) p = put(p, end, parts[i], ALL);
  *p = 0;
}

void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *msg) {
  TVMFFIErrorSetRaisedFromCStrParts(kind, &msg, 1);
}

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code_hint,
                               int bits_hint) {
  minrt *m = run.model;
  uint8_t *r;
  (void)device_type, (void)device_id, (void)code_hint, (void)bits_hint;
  if (!m || nbytes > (uint64_t)(m->ws_end - m->ws_top)) {
    TVMFFIErrorSetRaisedFromCStr("minrt", "workspace exhausted");
    return 0;
  }
  r = m->ws_top;
  m->ws_top += (nbytes + MINRT_ALIGN - 1) & ~(uint64_t)(MINRT_ALIGN - 1);
  return r;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  minrt *m = run.model;
  (void)device_type, (void)device_id;
  if (!m || (uint8_t *)ptr < m->ws || (uint8_t *)ptr > m->ws_top) return -1;
  m->ws_top = (uint8_t *)ptr;
  return 0;
}

int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task) {
  TVMParallelGroupEnv env = {0, 1};
  (void)num_task;
  return flambda(0, &env, cdata);
}

int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv) {
  (void)task_id, (void)penv;
  return 0;
}

/* Kernels built without system_lib_prefix call the backend through these pointers. */
void *__TVMBackendAllocWorkspace = (void *)(uintptr_t)&TVMBackendAllocWorkspace;
void *__TVMBackendFreeWorkspace = (void *)(uintptr_t)&TVMBackendFreeWorkspace;
void *__TVMBackendParallelLaunch = (void *)(uintptr_t)&TVMBackendParallelLaunch;
void *__TVMBackendParallelBarrier = (void *)(uintptr_t)&TVMBackendParallelBarrier;
