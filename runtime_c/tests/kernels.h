/* Hand-written kernels with the real tvm-ffi ABI, for the C tests and the benchmark.
 * Each checks what TVM's generated argument checks would (count, type, dtype) plus the
 * 64-byte alignment minrt promises, and reports failures through
 * TVMFFIErrorSetRaisedFromCStrParts like generated code does. */
#ifndef MINRT_TEST_KERNELS_H
#define MINRT_TEST_KERNELS_H

#include <stdint.h>
#include <string.h>
#include "minrt.h"

static int kfail(const char *what) {
  const char *parts[2] = {"kernel check: ", what};
  TVMFFIErrorSetRaisedFromCStrParts("ValueError", parts, 2);
  return -1;
}

static int64_t numel(const DLTensor *t) {
  int64_t n = 1;
  int i;
  for (i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

/* the n tensor arguments, checked; NULL (error set) if anything is off */
static int targs(const TVMFFIAny *a, int32_t n, int32_t want, DLTensor **t) {
  int32_t i;
  if (n != want) return kfail("argument count");
  for (i = 0; i < n; i++) {
    if (a[i].type_index != 7) return kfail("not a DLTensor");
    t[i] = (DLTensor *)MINRT_ANY_PTR(a[i]);
    if (((uintptr_t)t[i]->data & 63) != 0) return kfail("data not 64-byte aligned");
    if (t[i]->device.device_type != 1 || t[i]->byte_offset || t[i]->strides)
      return kfail("device/offset/strides");
  }
  return 0;
}

static int is_f32(const DLTensor *t) { return t->dtype.code == 2 && t->dtype.bits == 32; }

/* C = A + B (float32, same numel) */
static int k_add(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret) {
  DLTensor *t[3];
  int64_t i;
  (void)self;
  if (targs(a, n, 3, t)) return -1;
  if (!is_f32(t[0]) || !is_f32(t[1]) || !is_f32(t[2]) || numel(t[0]) != numel(t[2]) ||
      numel(t[1]) != numel(t[2]))
    return kfail("add: dtype/shape");
  for (i = 0; i < numel(t[2]); i++)
    ((float *)t[2]->data)[i] = ((float *)t[0]->data)[i] + ((float *)t[1]->data)[i];
  ret->type_index = 0;
  return 0;
}

/* B = relu(A), through a workspace buffer (TVMBackendAllocWorkspace) */
static int k_relu_ws(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret) {
  DLTensor *t[2];
  int64_t i, k;
  float *ws;
  (void)self;
  if (targs(a, n, 2, t)) return -1;
  k = numel(t[0]);
  if (!is_f32(t[0]) || !is_f32(t[1]) || k != numel(t[1])) return kfail("relu: dtype/shape");
  ws = (float *)TVMBackendAllocWorkspace(1, 0, (uint64_t)k * 4, 2, 32);
  if (!ws) return -1;
  if (((uintptr_t)ws & 63) != 0) return kfail("workspace not aligned");
  for (i = 0; i < k; i++) ws[i] = ((float *)t[0]->data)[i] > 0 ? ((float *)t[0]->data)[i] : 0;
  memcpy(t[1]->data, ws, (size_t)k * 4);
  if (TVMBackendFreeWorkspace(1, 0, ws)) return kfail("free workspace");
  ret->type_index = 0;
  return 0;
}

typedef struct {
  float *x, *y;
  int64_t n;
} dbl_job;

static int dbl_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  dbl_job *j = (dbl_job *)cdata;
  int64_t i, per = (j->n + penv->num_task - 1) / penv->num_task;
  for (i = task_id * per; i < j->n && i < (task_id + 1) * per; i++) j->y[i] = 2 * j->x[i];
  return 0;
}

/* B = 2 * A, as a parallel loop (TVMBackendParallelLaunch) */
static int k_double_par(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret) {
  DLTensor *t[2];
  dbl_job j;
  (void)self;
  if (targs(a, n, 2, t)) return -1;
  if (!is_f32(t[0]) || !is_f32(t[1]) || numel(t[0]) != numel(t[1])) return kfail("double");
  j.x = (float *)t[0]->data;
  j.y = (float *)t[1]->data;
  j.n = numel(t[0]);
  if (TVMBackendParallelLaunch(dbl_task, &j, 4)) return -1;
  ret->type_index = 0;
  return 0;
}

/* B = A byte for byte (any dtype, same byte size) */
static int k_copy(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret) {
  DLTensor *t[2];
  (void)self;
  if (targs(a, n, 2, t)) return -1;
  if (numel(t[0]) * t[0]->dtype.bits != numel(t[1]) * t[1]->dtype.bits) return kfail("copy size");
  memcpy(t[1]->data, t[0]->data, (size_t)(numel(t[0]) * t[0]->dtype.bits / 8));
  ret->type_index = 0;
  return 0;
}

/* B = A, then one byte more: a kernel that writes past its output (for the checking
 * build's guard zones) */
static int k_overrun(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret) {
  DLTensor *t[2];
  (void)self;
  if (targs(a, n, 2, t)) return -1;
  memcpy(t[1]->data, t[0]->data, (size_t)numel(t[1]) * 4);
  ((unsigned char *)t[1]->data)[numel(t[1]) * 4] = 0;
  ret->type_index = 0;
  return 0;
}

/* always fails, like a generated kernel whose argument check fails */
static int k_fail(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret) {
  const char *parts[3] = {"Argument ", "0", " mismatch"};
  (void)self, (void)a, (void)n, (void)ret;
  TVMFFIErrorSetRaisedFromCStrParts("ValueError", parts, 3);
  return -1;
}

/* The kernels under the names the fixtures' graphs call, as the `__tvm_ffi_<name>` symbols
 * tvm emits (one per signature, as TVM compiles one PrimFunc per shape; their signatures:
 * sigs.c, written by tests/test_runtime_c.py, points at these). A graph calling "nosig"
 * finds no signature. */
#define TEST_KERNEL(name, impl)                                                            \
  int __tvm_ffi_##name(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret);         \
  int __tvm_ffi_##name(void *self, const TVMFFIAny *a, int32_t n, TVMFFIAny *ret) {        \
    return impl(self, a, n, ret);                                                          \
  }
TEST_KERNEL(copy_float32, k_copy)
TEST_KERNEL(copy_float16, k_copy)
TEST_KERNEL(copy_int8, k_copy)
TEST_KERNEL(copy_uint8, k_copy)
TEST_KERNEL(copy_int16, k_copy)
TEST_KERNEL(copy_int32, k_copy)
TEST_KERNEL(copy_int64, k_copy)
TEST_KERNEL(copy_bool, k_copy)
TEST_KERNEL(add16, k_add)
TEST_KERNEL(add, k_add)
TEST_KERNEL(relu_ws, k_relu_ws)
TEST_KERNEL(double_par, k_double_par)
TEST_KERNEL(fail, k_fail)
TEST_KERNEL(overrun, k_overrun)

#endif
