// tflm_bench.cc: one TFLite Micro model run for the side-by-side benchmark (issue 23).
//
// Built by harness/build/tflm_bench.py with TFLM's library, the model's operators only
// (bench_ops.h: TFLM_BENCH_OPS and TFLM_BENCH_N_OPS) and the model and one sample input linked
// in (bench_data.S: tflm_model, tflm_input and their _end labels). It runs the sample through
// the interpreter TFLM_BENCH_ITERS times and prints one line:
//
//   tflm-result iters=N tick_hz=HZ min_ticks=A mean_ticks=B max_ticks=C arena_used=U outputs=HEX[,HEX]
//
// then "tflm-done" (or "tflm-error <stage> <status>"). On a Cortex-M board the ticks are the
// SysTick counter of minrt's firmware (runtime_c/firmware/systick.c: instructions under QEMU
// -icount); under Linux (TFLM_BENCH_LINUX) there is no counter (ticks 0): the harness counts
// the instructions of the whole process for two iteration counts instead.
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "bench_ops.h"

extern "C" const uint8_t tflm_model[], tflm_model_end[], tflm_input[], tflm_input_end[];

#ifdef TFLM_BENCH_LINUX
#include <stdio.h>
#include <stdlib.h>
static void out_char(char c) { putchar(c); }
static uint64_t now_ticks() { return 0; }
static const uint32_t kTickHz = 0;
#else
extern "C" {
#include "board.h"
// minrt's SysTick calls this every 0.1 s of processor time; nothing to keep alive here
void ticks_hook(void) {}
}
static void out_char(char c) { uart_put(static_cast<uint8_t>(c)); }
static uint64_t now_ticks() { return ticks_now(); }
#ifndef FW_CLOCK_HZ
#define FW_CLOCK_HZ 25000000u
#endif
static const uint32_t kTickHz = FW_CLOCK_HZ;

// The static interpreter's destructor is registered with __cxa_atexit, which names the image
// by this handle; crtbegin (not linked: minrt's startup.c boots the image) would define it.
extern "C" {
void* __dso_handle = nullptr;
}

// TFLM's time functions (the Cortex-M one needs a device header): the same SysTick counter
namespace tflite {
uint32_t ticks_per_second() { return kTickHz; }
uint32_t GetCurrentTimeTicks() { return static_cast<uint32_t>(ticks_now()); }
}  // namespace tflite
#endif

#ifndef TFLM_BENCH_ARENA
#define TFLM_BENCH_ARENA (1024u * 1024u)
#endif
#ifndef TFLM_BENCH_ITERS
#define TFLM_BENCH_ITERS 3
#endif

alignas(16) static uint8_t arena[TFLM_BENCH_ARENA] __attribute__((section(".minrt_arena")));

static void out_str(const char* s) {
  while (*s) out_char(*s++);
}

static void out_u64(uint64_t v) {
  char buf[21];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) out_char(buf[--n]);
}

static void out_hex(const uint8_t* p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out_char(digits[p[i] >> 4]);
    out_char(digits[p[i] & 15]);
  }
}

static int fail(const char* stage, int status) {
  out_str("tflm-error ");
  out_str(stage);
  out_char(' ');
  out_u64(static_cast<uint64_t>(status));
  out_str("\r\n");
  return 1;
}

static int bench(int iters) {
  const tflite::Model* model = tflite::GetModel(tflm_model);
  if (model->version() != TFLITE_SCHEMA_VERSION) return fail("schema-version", static_cast<int>(model->version()));
  static tflite::MicroMutableOpResolver<TFLM_BENCH_N_OPS> resolver;
  TFLM_BENCH_OPS(resolver);
  static tflite::MicroInterpreter interpreter(model, resolver, arena, sizeof arena);
  TfLiteStatus status = interpreter.AllocateTensors();
  if (status != kTfLiteOk) return fail("allocate-tensors", status);
  TfLiteTensor* input = interpreter.input(0);
  size_t given = static_cast<size_t>(tflm_input_end - tflm_input);
  if (input == nullptr || input->bytes != given) return fail("input-bytes", input ? static_cast<int>(input->bytes) : -1);
  uint64_t min = ~0ull, max = 0, sum = 0;
  for (int i = 0; i < iters; i++) {
    memcpy(input->data.raw, tflm_input, given);  // the sample again: a kernel may write its input
    uint64_t t0 = now_ticks();
    status = interpreter.Invoke();
    uint64_t dt = now_ticks() - t0;
    if (status != kTfLiteOk) return fail("invoke", status);
    min = dt < min ? dt : min;
    max = dt > max ? dt : max;
    sum += dt;
  }
  out_str("tflm-result iters=");
  out_u64(static_cast<uint64_t>(iters));
  out_str(" tick_hz=");
  out_u64(kTickHz);
  out_str(" min_ticks=");
  out_u64(min);
  out_str(" mean_ticks=");
  out_u64(iters ? sum / static_cast<uint64_t>(iters) : 0);
  out_str(" max_ticks=");
  out_u64(max);
  out_str(" arena_used=");
  out_u64(interpreter.arena_used_bytes());
  out_str(" outputs=");
  for (size_t k = 0; k < interpreter.outputs_size(); k++) {
    if (k) out_char(',');
    const TfLiteTensor* t = interpreter.output(k);
    out_hex(reinterpret_cast<const uint8_t*>(t->data.raw), t->bytes);
  }
  out_str("\r\ntflm-done\r\n");
  return 0;
}

#ifdef TFLM_BENCH_LINUX
int main(int argc, char** argv) {
  int iters = argc > 1 ? atoi(argv[1]) : TFLM_BENCH_ITERS;
  if (iters < 0 || iters > 1000000) return fail("iterations", iters);
  int rc = bench(iters);
  fflush(stdout);
  return rc;
}
#else
int main(void) {
  uart_init();
  ticks_init();
  bench(TFLM_BENCH_ITERS);
  for (;;) __asm volatile("wfi");
}
#endif
