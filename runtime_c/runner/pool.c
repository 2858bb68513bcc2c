/* The runner's thread pool: runs the parallel loops of TVM kernels on N threads (Linux).
 *
 * Kernels call TVMBackendParallelLaunch / ParallelBarrier / AllocWorkspace / FreeWorkspace.
 * The runner is linked with `ld --wrap` for those four (harness/build/runner.py), so the
 * kernels' calls land here while minrt's core keeps its serial, heap-free versions: tasks
 * the calling thread takes allocate from minrt's workspace; tasks run on the
 * pool's threads, each with a workspace stack of its own of the model's workspace size (a
 * task allocates and frees in order, like minrt's stack). The pool is made once, by
 * runner_pool_start. Without a pool (or with 1 thread) a launch runs the one task inline.
 *
 * Waiting (a worker for the next launch, the caller for a task another thread holds) polls
 * for SPIN_NS, then sleeps on a futex. Polling by time, not by a count of pause
 * instructions: a pause costs from 1 to ~140 cycles by CPU (24 ns here: 20,000 of them were
 * half a millisecond). Sleeping soon matters on a busy machine: a thread that polls uses up
 * its share of the CPU doing nothing, and the scheduler then runs it last when work comes,
 * while a sleeping thread is woken promptly. For the same reason a polling thread yields
 * its CPU every 64 polls: when the other cores are busy and the scheduler has put the
 * caller and a worker on one CPU, the poller would otherwise keep the CPU from the thread it
 * waits for (the caller from a worker that holds a task, a worker from the caller running
 * the kernels in between) for the whole SPIN_NS. Shufflenet, 75 launches, 2 threads on one
 * CPU (taskset -c 0): 7.9-8.1 -> 6.6-6.8 ms, as at 1 thread (6.5-6.7). */
#define _GNU_SOURCE /* syscall() */
#include <linux/futex.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "runner.h"

/* The real (core) versions, for task 0 and for kernels launched without a pool. */
int __real_TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task);
void *__real_TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                                      int code_hint, int bits_hint);
int __real_TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);

int __wrap_TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task);
int __wrap_TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv);
void *__wrap_TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                                      int code_hint, int bits_hint);
int __wrap_TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);

#define SPIN_NS 50000L /* polling before a waiting thread sleeps: covers the gap between kernels */
#define TASKS_PER_THREAD 4 /* a launch's loop is cut into this many tasks per thread */

typedef struct {
  unsigned char *base, *top, *end;
} ws_stack;

/* A launch is cut into more tasks than threads, and every running thread (the caller too)
 * takes the next task until none is left: a thread the OS does not run for a while (a busy
 * machine) delays only the task it holds, and the caller never waits for a thread to wake. */
static struct {
  int threads; /* including the caller; 0: no pool */
  pthread_t tid[RUNNER_MAX_THREADS];
  ws_stack ws[RUNNER_MAX_THREADS];
  unsigned long tasks[RUNNER_MAX_THREADS]; /* tasks each thread ran (its own slot only) */
  unsigned gen;      /* futex word: bumped once per launch (and at stop) */
  unsigned start_gen; /* gen when the threads were made: no launch yet */
  unsigned sleepers; /* workers asleep on gen, or about to be */
  unsigned done;     /* futex word: tasks of the current launch finished */
  unsigned caller_sleeps; /* the caller is asleep on done, or about to be */
  int stop;
  int failed;    /* a task returned nonzero */
  FTVMParallelLambda fn; /* the current launch */
  void *cdata;
  int ntask;
  int next;      /* the next task to take */
  unsigned bar_count, bar_gen; /* ParallelBarrier: arrivals, and its generation */
} pool;

static __thread int t_index; /* 0: a caller thread (minrt's workspace), 1..N-1: a worker */

static void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ __volatile__("pause");
#elif defined(__arm__) || defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static long since_ns(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec);
}

/* Wait until *word is no longer old: poll for SPIN_NS, then sleep on it, counted in
 * *sleepers so that the writer knows to wake it (see bump). */
static void await_change(unsigned *word, unsigned old, unsigned *sleepers) {
  struct timespec t0;
  unsigned i;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (i = 1; __atomic_load_n(word, __ATOMIC_ACQUIRE) == old; i++) {
    relax();
    if (i % 64) continue;
    if (since_ns(&t0) <= SPIN_NS) {
      sched_yield(); /* returns at once when no other thread wants this CPU */
    } else {
      /* sleepers before word (both sequentially consistent), and the writer word before
       * sleepers: either it sees us counted and wakes us, or we see its new value. The
       * kernel's own check of *word == old covers a write between our check and the wait. */
      __atomic_add_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
      while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == old)
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
      __atomic_sub_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
      return;
    }
  }
}

/* Add 1 to *word and wake whoever sleeps on it. */
static void bump(unsigned *word, unsigned *sleepers) {
  __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST))
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Take and run tasks of the current launch until none is left. The task's parameters are
 * read after taking it: a launch starts only when every task of the last one is done, so a
 * thread late from the last launch takes a task of this one with this one's parameters. */
static void take_tasks(int self) {
  for (;;) {
    TVMParallelGroupEnv env;
    int id = __atomic_fetch_add(&pool.next, 1, __ATOMIC_ACQ_REL);
    int ntask = __atomic_load_n(&pool.ntask, __ATOMIC_ACQUIRE);
    if (id >= ntask) return;
    env.sync_handle = NULL;
    env.num_task = ntask;
    if (pool.fn(id, &env, pool.cdata)) __atomic_store_n(&pool.failed, 1, __ATOMIC_RELAXED);
    pool.tasks[self]++;
    if (self) bump(&pool.done, &pool.caller_sleeps);
    else __atomic_add_fetch(&pool.done, 1, __ATOMIC_ACQ_REL);
  }
}

static void *worker(void *arg) {
  int id = (int)(intptr_t)arg;
  unsigned seen = pool.start_gen;
  t_index = id;
  for (;;) {
    await_change(&pool.gen, seen, &pool.sleepers);
    if (__atomic_load_n(&pool.stop, __ATOMIC_ACQUIRE)) return NULL;
    seen = __atomic_load_n(&pool.gen, __ATOMIC_ACQUIRE);
    take_tasks(id);
  }
}

int runner_pool_start(int threads, size_t workspace_bytes) {
  int i;
  if (threads < 1 || threads > RUNNER_MAX_THREADS || pool.threads) return -1;
  pool.threads = 1;
  pool.stop = 0;
  pool.start_gen = pool.gen;
  for (i = 1; i < threads; i++) {
    void *ws = NULL;
    if (workspace_bytes && posix_memalign(&ws, MINRT_ALIGN, workspace_bytes)) break;
    pool.ws[i].base = pool.ws[i].top = (unsigned char *)ws;
    pool.ws[i].end = (unsigned char *)ws + workspace_bytes;
    if (pthread_create(&pool.tid[i], NULL, worker, (void *)(intptr_t)i)) {
      free(ws);
      break;
    }
    pool.threads = i + 1;
  }
  if (pool.threads == threads) return 0;
  runner_pool_stop();
  return -1;
}

void runner_pool_stop(void) {
  int i;
  __atomic_store_n(&pool.stop, 1, __ATOMIC_RELEASE);
  bump(&pool.gen, &pool.sleepers);
  for (i = 1; i < pool.threads; i++) {
    pthread_join(pool.tid[i], NULL);
    free(pool.ws[i].base);
    memset(&pool.ws[i], 0, sizeof pool.ws[i]);
  }
  pool.threads = 0;
}

int runner_pool_threads(void) { return pool.threads ? pool.threads : 1; }

void runner_pool_reset_stats(void) { memset(pool.tasks, 0, sizeof pool.tasks); }

int runner_pool_threads_used(void) {
  int i, used = 1;
  for (i = 1; i < RUNNER_MAX_THREADS; i++) used += pool.tasks[i] != 0;
  return used;
}

int __wrap_TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task) {
  int n = pool.threads;
  unsigned ntask, done;
  if (n <= 1 || t_index != 0) /* no pool, or a launch from inside a task: run it inline */
    return __real_TVMBackendParallelLaunch(flambda, cdata, num_task);
  /* Always the same count (TVM's kernels ask for 0, "any", and split by penv->num_task): a
   * thread late from the last launch then never sees a task count it could misread. */
  (void)num_task;
  ntask = (unsigned)n * TASKS_PER_THREAD;
  pool.fn = flambda;
  pool.cdata = cdata;
  pool.failed = 0;
  pool.bar_count = 0;
  __atomic_store_n(&pool.done, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&pool.ntask, (int)ntask, __ATOMIC_RELEASE);
  __atomic_store_n(&pool.next, 0, __ATOMIC_RELEASE);
  bump(&pool.gen, &pool.sleepers);
  take_tasks(0);
  /* tasks other threads still hold: wait for each to finish */
  while ((done = __atomic_load_n(&pool.done, __ATOMIC_ACQUIRE)) < ntask)
    await_change(&pool.done, done, &pool.caller_sleeps);
  return pool.failed ? -1 : 0;
}

/* All of a launch's tasks meet here (a sense-reversing barrier). Only when every task has a
 * thread of its own: with more tasks than threads a barrier would wait for ever, so it fails. */
int __wrap_TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv) {
  unsigned gen = __atomic_load_n(&pool.bar_gen, __ATOMIC_ACQUIRE);
  (void)task_id;
  if (penv->num_task <= 1) return 0;
  if (penv->num_task > runner_pool_threads()) {
    TVMFFIErrorSetRaisedFromCStr("minrt-run", "a parallel barrier with more tasks than threads");
    return -1;
  }
  if (__atomic_add_fetch(&pool.bar_count, 1, __ATOMIC_ACQ_REL) == (unsigned)penv->num_task) {
    __atomic_store_n(&pool.bar_count, 0, __ATOMIC_RELAXED);
    __atomic_add_fetch(&pool.bar_gen, 1, __ATOMIC_RELEASE);
  } else {
    while (__atomic_load_n(&pool.bar_gen, __ATOMIC_ACQUIRE) == gen) relax();
  }
  return 0;
}

void *__wrap_TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                                      int code_hint, int bits_hint) {
  ws_stack *s = &pool.ws[t_index];
  unsigned char *r;
  if (!t_index)
    return __real_TVMBackendAllocWorkspace(device_type, device_id, nbytes, code_hint, bits_hint);
  if (nbytes > (uint64_t)(s->end - s->top)) {
    TVMFFIErrorSetRaisedFromCStr("minrt-run", "thread workspace exhausted");
    return NULL;
  }
  r = s->top;
  s->top += (nbytes + MINRT_ALIGN - 1) & ~(uint64_t)(MINRT_ALIGN - 1);
  return r;
}

int __wrap_TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  ws_stack *s = &pool.ws[t_index];
  if (!t_index) return __real_TVMBackendFreeWorkspace(device_type, device_id, ptr);
  if ((unsigned char *)ptr < s->base || (unsigned char *)ptr > s->top) return -1;
  s->top = (unsigned char *)ptr;
  return 0;
}
