/* minrt-run: file mode.
 *   minrt-run GRAPH_JSON PARAMS_BIN INPUTS_BIN OUTPUTS_BIN [-n ITERS] [-w WORKSPACE_BYTES]
 *             [-t THREADS] [-l KERNELS.so] [-p]
 *             (-n: 1..FRAME_MAX_ITERS, the limit of every device, proto/frame.h;
 *             -t: threads for the kernels' parallel loops, see pool.c; 0 = the CPUs
 *             this process may run on (its affinity, as nproc counts); default 1.
 *             -l only when built with MINRT_RUN_DLOPEN, see dl.c;
 *             -p, when built with MINRT_PROFILE: a {"profile": [...]} line of each kernel's
 *             mean time before the timing line, see profile.c)
 * PARAMS_BIN is mapped read-only, never read into the heap: the kernels use the weights
 * where they lie (a write to them would fault).
 * Last stdout line: {"iters", "first_us", "min_us", "mean_us", "max_us", "arena_bytes",
 * "arena": {...}, "peak_rss_kb", "threads", "threads_used"} (see runner_timing_json); with
 * -n N > 1 the first run (a cold start: page faults, cold caches) is timed apart as first_us
 * and min/mean/max are over the other N - 1, as benchmarks warm up before they time.
 * Errors: one line "minrt-run: <step>: <message>" on stderr; exit 1 load/input error,
 * 2 usage, 3 run error. */
#define _GNU_SOURCE /* sched_getaffinity */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "frame.h"
#include "runner.h"

#ifdef MINRT_RUN_DLOPEN
void *runner_dlopen(const char *path, char *msg, size_t cap);
minrt_kernel runner_dlsym(void *handle, const char *name, size_t len);
#endif

/* kernels_sig.c defines it; without one, every kernel is refused at load */
__attribute__((weak)) const minrt_signatures minrt_model_signatures = {0, NULL};

static int die(int code, const char *step, const char *msg) {
  fprintf(stderr, "minrt-run: %s: %s\n", step, msg);
  return code;
}

/* Whole file into a 64-byte aligned buffer (so aligned params can be used in place). */
static void *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  void *buf = NULL;
  long n;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
      posix_memalign(&buf, 64, (size_t)n + 1) == 0) {
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
      free(buf);
      buf = NULL;
    }
    *len = (size_t)n;
  }
  fclose(f);
  return buf;
}

/* The file mapped read-only (page-aligned, so 64-byte aligned); an empty file is NULL with
 * *len 0 and ok set. */
static void *map_file(const char *path, size_t *len, int *ok) {
  struct stat st;
  void *p = NULL;
  int fd = open(path, O_RDONLY);
  *ok = 0;
  if (fd < 0) return NULL;
  if (fstat(fd, &st) == 0 && st.st_size >= 0) {
    *len = (size_t)st.st_size;
    if (!*len) *ok = 1;
    else if ((p = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0)) != MAP_FAILED) *ok = 1;
    else p = NULL;
  }
  close(fd);
  return p;
}

/* The number after `key` in a /proc file's "Key:   N kB" row, -1 if absent. */
static long proc_kb(const char *path, const char *key) {
  char row[128];
  long kb = -1;
  size_t n = strlen(key);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  while (fgets(row, sizeof row, f))
    if (!strncmp(row, key, n)) kb = strtol(row + n, NULL, 10);
  fclose(f);
  return kb;
}

/* Peak resident memory of this program in KiB (Linux), -1 if unknown: VmHWM, or the resident
 * size now (smaps_rollup walks the page tables) when larger. Kernels before 6.2 count RSS per
 * thread and add it to VmHWM's counters only every 64 page faults, so a short run on the
 * emulated board's 6.1 read 4 KiB; nothing is unmapped before this is read, so now is the
 * peak. Not getrusage: Linux carries ru_maxrss over from the process that exec'd us. */
static long peak_rss_kb(void) {
  long hwm = proc_kb("/proc/self/status", "VmHWM:");
  long now = proc_kb("/proc/self/smaps_rollup", "Rss:");
  return now > hwm ? now : hwm;
}

static int usage(void) {
  return die(2, "usage",
             "minrt-run GRAPH_JSON PARAMS_BIN INPUTS_BIN OUTPUTS_BIN [-n ITERS] "
             "[-w WORKSPACE_BYTES] [-t THREADS] [-l KERNELS.so] [-p]");
}

#ifdef MINRT_RUN_SERIAL
int runner_serial_main(int argc, char **argv);
#endif

int main(int argc, char **argv) {
  const char *pos[4], *lib = NULL;
  char *files[3] = {NULL, NULL, NULL}, *end, line[384];
  size_t lens[3] = {0, 0, 0}, out_len;
  long iters = 1, ws = 0, threads = 1;
  int npos = 0, i, rc, mapped = 0, profile = 0;
  void *params = NULL;
  void *out = NULL, *ctx = NULL;
  minrt_resolver resolve = NULL;
  runner r;
  runner_timing t;
  FILE *f;
#ifdef MINRT_RUN_SERIAL
  if (argc > 1 && !strcmp(argv[1], "--serial")) return runner_serial_main(argc, argv);
#endif
  for (i = 1; i < argc; i++) {
    if ((!strcmp(argv[i], "-n") || !strcmp(argv[i], "-w") || !strcmp(argv[i], "-l") ||
         !strcmp(argv[i], "-t")) && i + 1 < argc) {
      long v = 0;
      if (argv[i][1] != 'l') {
        v = strtol(argv[i + 1], &end, 10);
        if (!*argv[i + 1] || *end || v < (argv[i][1] == 'n') || v > 0x7fffffff) return usage();
        if (argv[i][1] == 'n' && (unsigned long)v > FRAME_MAX_ITERS) return usage();
      }
      if (argv[i][1] == 'n') iters = v;
      else if (argv[i][1] == 't') threads = v;
      else if (argv[i][1] == 'w') ws = v;
      else lib = argv[i + 1];
      i++;
    } else if (!strcmp(argv[i], "-p")) {
      profile = 1;
    } else if (npos < 4 && argv[i][0] != '-') {
      pos[npos++] = argv[i];
    } else {
      return usage();
    }
  }
  if (npos != 4) return usage();
  if (threads == 0) { /* the CPUs this process may run on (as nproc counts), not all online */
    cpu_set_t cpus;
    threads = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : sysconf(_SC_NPROCESSORS_ONLN);
  }
  if (threads < 1) threads = 1;
  if (threads > RUNNER_MAX_THREADS) {
    snprintf(line, sizeof line, "-t %ld: at most %d threads", threads, RUNNER_MAX_THREADS);
    return die(2, "usage", line);
  }
  if (runner_pool_start((int)threads, (size_t)ws)) return die(1, "threads", "cannot start the threads");
  for (i = 0; i < 3; i++) {
    if (i == 1) params = map_file(pos[1], &lens[1], &mapped);
    else files[i] = (char *)read_file(pos[i], &lens[i]);
    if (i == 1 ? !mapped : !files[i]) {
      snprintf(line, sizeof line, "cannot read %s", pos[i]);
      return die(1, "read", line);
    }
  }
  if (lib) {
#ifdef MINRT_RUN_DLOPEN
    if (!(ctx = runner_dlopen(lib, line, sizeof line))) return die(1, "dlopen", line);
    resolve = (minrt_resolver)runner_dlsym;
#else
    return die(2, "usage", "-l needs a runner built with MINRT_RUN_DLOPEN");
#endif
  }
  if (runner_load(&r, files[0], lens[0], params, lens[1], (size_t)ws, resolve, ctx,
                  &minrt_model_signatures))
    return die(1, "load", r.err.msg);
  if (runner_set_inputs(&r, files[2], lens[2])) return die(1, "inputs", r.err.msg);
  if (profile) {
#ifdef MINRT_PROFILE
    if (runner_profile_start(&r)) return die(1, "profile", "out of memory");
#else
    return die(2, "usage", "-p needs a runner built with MINRT_PROFILE");
#endif
  }
  runner_pool_reset_stats();
  if ((rc = runner_run(&r, (int)iters, &t)) != 0) return die(3, "run", r.err.msg);
  t.threads = runner_pool_threads();
  t.threads_used = runner_pool_threads_used();
#ifdef MINRT_PROFILE
  if (profile) runner_profile_print(&r, (int)iters, stdout);
#endif
  out_len = runner_write_outputs(&r, NULL, 0);
  if (!(out = malloc(out_len)) || runner_write_outputs(&r, out, out_len) != out_len)
    return die(1, "outputs", "out of memory");
  if (!(f = fopen(pos[3], "wb")) || fwrite(out, 1, out_len, f) != out_len || fclose(f)) {
    snprintf(line, sizeof line, "cannot write %s", pos[3]);
    return die(1, "outputs", line);
  }
  t.peak_rss_kb = peak_rss_kb();
  runner_timing_json(&r, &t, line, sizeof line);
  printf("%s\n", line);
  runner_free(&r);
  runner_pool_stop();
  free(out);
  for (i = 0; i < 3; i++) free(files[i]);
  if (params) munmap(params, lens[1]);
  return 0;
}
