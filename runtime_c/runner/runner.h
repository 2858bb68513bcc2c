/* The runner's steps, from memory buffers, for minrt-run's file mode (main.c) and any other
 * front end (e.g. a serial protocol): load a model, set inputs from an NDArray-list blob,
 * run N timed iterations, write the outputs as an NDArray-list blob.
 * Unlike minrt itself, the runner uses the C library's heap for the arena. */
#ifndef MINRT_RUNNER_H
#define MINRT_RUNNER_H

#include <stddef.h>
#include "minrt.h"

typedef struct {
  minrt *m;
  void *arena;
  size_t arena_bytes;
  minrt_err err; /* minrt's last error (load, inputs, run) */
  const void *inputs; /* the blob given to runner_set_inputs, set again before each run */
  size_t inputs_len;
  int input_error; /* the last runner_set_inputs's TENSORS_E_* code (tensors.h), 0 if none */
} runner;

typedef struct {
  int iters;
  double first_us; /* the first run: it pages in weights, arena and code (a cold start) */
  double min_us, mean_us, max_us; /* over the runs after the first (over the one if iters is 1) */
  long peak_rss_kb; /* the process's peak resident memory; < 0: not known (runner_run sets -1) */
  int threads;      /* threads kernels' parallel loops may use (runner_run: 1) */
  int threads_used; /* of those, the threads that ran kernel work (runner_run: 1) */
} runner_timing;

/* Loads graph + params (buffers must outlive r) into a heap arena of exactly the size
 * minrt asks for. resolve NULL: system-lib kernels; sigs: the kernels' signatures (see
 * minrt.h). 0 or a MINRT_E_* code (see r->err). */
int runner_load(runner *r, const char *graph, size_t graph_len, const void *params,
                size_t params_len, size_t workspace_bytes, minrt_resolver resolve, void *ctx,
                const minrt_signatures *sigs);

/* The signature table linked into the runner: kernels_sig.c, which `harness compile`
 * writes next to kernels.o (weak: without it, no kernel loads). */
extern const minrt_signatures minrt_model_signatures;

/* Sets every graph input from an NDArray-list blob (tensors named by graph input names,
 * each exactly once, dtype and shape as the graph says; proto/tensors.c reads it); the blob
 * must outlive r. 0, or -1 with a message in r->err.msg and the code in r->input_error. */
int runner_set_inputs(runner *r, const void *blob, size_t len);

/* Runs iters (>= 1) times; times each run. The inputs are set again (untimed) before each
 * run, since the storage plan may reuse an input's buffer. 0 or a MINRT_E_* code. */
int runner_run(runner *r, int iters, runner_timing *t);

/* Writes the outputs as an NDArray-list (named output0, output1, ...) into buf if it is at
 * least as large as the return value, which is the blob's size. */
size_t runner_write_outputs(const runner *r, void *buf, size_t cap);

/* The last stdout line of minrt-run, into buf: {"iters", "min_us", "mean_us", "max_us",
 * "arena_bytes", "arena": {"graph", "activations", "workspace", "weight_copies"} (bytes, see
 * MINRT_USE_*), "peak_rss_kb" (null when not known), "threads", "threads_used"}. */
int runner_timing_json(const runner *r, const runner_timing *t, char *buf, size_t cap);

void runner_free(runner *r);

/* pool.c: the threads that run kernels' parallel loops (Linux runners, linked with
 * ld --wrap of the TVMBackend* calls; see pool.c). Start once: threads in 1..RUNNER_MAX_THREADS
 * including the caller, each extra thread with a workspace stack of workspace_bytes. 0, or
 * -1 (bad count, out of memory or no thread; nothing is left running). */
#define RUNNER_MAX_THREADS 64
int runner_pool_start(int threads, size_t workspace_bytes);
void runner_pool_stop(void);
int runner_pool_threads(void);      /* 1 without a pool */
void runner_pool_reset_stats(void);
int runner_pool_threads_used(void); /* the caller + the threads that ran a task since the reset */

#ifdef MINRT_PROFILE
#include <stdio.h>
/* minrt-run -p (profile.c): start collecting kernel times (0, or -1 out of memory), then
 * print them as one JSON line after runner_run. runner_run restarts the sums after a first
 * run it times apart, so the kernels' times are per timed run, as min/mean/max are. */
int runner_profile_start(const runner *r);
void runner_profile_restart(void);
void runner_profile_print(const runner *r, int iters, FILE *out);
#endif

#endif
