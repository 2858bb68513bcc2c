/* minrt-run -p: each kernel's time, summed over the timed runs (built with MINRT_PROFILE,
 * under which minrt_run calls the hook set here around every kernel). */
#ifdef MINRT_PROFILE
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runner.h"

typedef struct {
  double us;      /* summed over the runs */
  unsigned calls; /* kernel calls timed: a kernel shorter than the clock's tick sums to 0 us */
} node_time;

static node_time *g_nodes; /* per node; NULL: not profiling */
static uint32_t g_count;   /* nodes in g_nodes */
static double g_started;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void hook(const minrt *m, uint32_t node, int end) {
  (void)m;
  if (end) {
    g_nodes[node].us += now_us() - g_started;
    g_nodes[node].calls++;
  } else {
    g_started = now_us();
  }
}

int runner_profile_start(const runner *r) {
  g_count = r->m->n_nodes ? r->m->n_nodes : 1;
  g_nodes = (node_time *)calloc(g_count, sizeof *g_nodes);
  if (!g_nodes) return -1;
  minrt_set_profile_hook(hook);
  return 0;
}

void runner_profile_restart(void) {
  if (g_nodes) memset(g_nodes, 0, g_count * sizeof *g_nodes);
}

/* One JSON line: {"profile": [{"node", "name", "us"}...]}, the kernels' mean time per run,
 * in node order (nodes without a kernel are left out; a kernel is listed even when it took
 * less than the clock's resolution, at 0 us). */
void runner_profile_print(const runner *r, int iters, FILE *out) {
  uint32_t i;
  size_t len;
  const char *name;
  int first = 1, timed = iters > 1 ? iters - 1 : iters; /* runner_run times the first apart */
  if (!g_nodes) return;
  fputs("{\"profile\": [", out);
  for (i = 0; (name = minrt_node_name(r->m, i, &len)) != NULL; i++) {
    if (!g_nodes[i].calls) continue;
    fprintf(out, "%s{\"node\": %u, \"name\": \"%.*s\", \"us\": %.3f}", first ? "" : ", ",
            (unsigned)i, (int)len, name, g_nodes[i].us / timed);
    first = 0;
  }
  fputs("]}\n", out);
  minrt_set_profile_hook(NULL);
  free(g_nodes);
  g_nodes = NULL;
}
#else
typedef int minrt_profile_c_is_empty; /* ISO C: a file holds at least one declaration */
#endif
