/* Kernels from a shared object (Linux): dlopen it, point the __TVMBackend* context
 * pointers of kernels built without system_lib_prefix at minrt's backend functions, and
 * find each kernel as the `__tvm_ffi_<name>` symbol. Built only with MINRT_RUN_DLOPEN. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "minrt.h"

void *runner_dlopen(const char *path, char *msg, size_t cap);
minrt_kernel runner_dlsym(void *handle, const char *name, size_t len);

void *runner_dlopen(const char *path, char *msg, size_t cap) {
  static const struct {
    const char *name;
    void *fn;
  } ctx[] = {
      {"__TVMBackendAllocWorkspace", (void *)(uintptr_t)&TVMBackendAllocWorkspace},
      {"__TVMBackendFreeWorkspace", (void *)(uintptr_t)&TVMBackendFreeWorkspace},
      {"__TVMBackendParallelLaunch", (void *)(uintptr_t)&TVMBackendParallelLaunch},
      {"__TVMBackendParallelBarrier", (void *)(uintptr_t)&TVMBackendParallelBarrier},
  };
  size_t i;
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(msg, cap, "%s", dlerror());
    return NULL;
  }
  for (i = 0; i < sizeof ctx / sizeof ctx[0]; i++) {
    void **slot = (void **)dlsym(h, ctx[i].name);
    if (slot) *slot = ctx[i].fn;
  }
  return h;
}

minrt_kernel runner_dlsym(void *handle, const char *name, size_t len) {
  char sym[256];
  if (len > sizeof sym - 11) return NULL;
  memcpy(sym, "__tvm_ffi_", 10);
  memcpy(sym + 10, name, len);
  sym[10 + len] = 0;
  return (minrt_kernel)(uintptr_t)dlsym(handle, sym);
}
