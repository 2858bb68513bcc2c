/* minrt: a minimal runtime for TVM graph-executor artifacts (graph.json + params.bin +
 * kernels compiled by apache-tvm 0.27 with the tvm-ffi calling convention).
 *
 * Usage:
 *   minrt_artifact a = {json, json_len, params, params_len, workspace_bytes, NULL, NULL, &sigs};
 *   size_t need = 0;
 *   minrt_load(&m, &a, NULL, 0, &need, &err);   -> MINRT_E_ARENA, need = bytes to try next
 *   minrt_load(&m, &a, arena, need, &need, &err) -> 0, or MINRT_E_ARENA with a larger need
 *   minrt_set_input(m, minrt_input_index(m, "x", 1), data, nbytes);  (or m->inputs[i])
 *   minrt_run(m);
 *   minrt_output(m, 0)->data ...
 *
 * Memory: minrt never allocates. Everything lives in the caller's arena (64-byte aligned):
 * the parsed graph first, then one buffer per storage id, copies of params that are not
 * 64-byte aligned in the blob, then the kernels' workspace (m->arena_use says how much of
 * each). Params are never written: the params buffer may be read-only memory (flash, a
 * PROT_READ mapping). In minrt's aligned container (runtime_c/README.md) in a 64-byte
 * aligned buffer, every param is used where it lies and nothing is copied.
 * A failed load reports in *need the arena size to try next: the exact total once the
 * arena holds the parsed graph, else the size of the parsed graph alone (so a loop of at
 * most three calls finds the exact size without any other memory).
 * The graph.json and params buffers must outlive the model: names point into the JSON
 * and 64-byte aligned params are used in place (copied into the arena otherwise).
 *
 * Errors: every function returns 0 or a negative MINRT_E_* code; the minrt_err given at
 * load receives the code and a message naming what is wrong and where (node index, entry,
 * key, byte offset). Load checks everything it can (graph structure, dtypes, shapes,
 * storage ids, params against the graph, kernel names, every kernel's argument count,
 * dtypes and shapes against its signature) so that run fails only when a
 * kernel itself reports an error.
 * Kernels take no context: one model runs at a time (minrt_run is not reentrant).
 * Host byte order must be little-endian (as are the artifact formats).
 */
#ifndef MINRT_H
#define MINRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- DLPack subset, layout-identical to dlpack.h (skipped if dlpack.h came first) ---- */
#if !defined(DLPACK_MAJOR_VERSION) && !defined(DLPACK_VERSION)
typedef struct {
  int32_t device_type; /* kDLCPU = 1 */
  int32_t device_id;
} DLDevice;
typedef struct {
  uint8_t code; /* 0 int, 1 uint, 2 float, 6 bool */
  uint8_t bits;
  uint16_t lanes;
} DLDataType;
typedef struct {
  void *data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t *shape;
  int64_t *strides;
  uint64_t byte_offset;
} DLTensor;
#endif

/* ---- tvm-ffi calling convention (layout of TVMFFIAny in tvm/ffi/c_api.h) ---- */
#ifndef TVM_FFI_C_API_H_
/* tvm-ffi's own header names the union's members directly (an anonymous union, C11); this
 * one stays C99 with a named union, and MINRT_ANY_PTR reads the pointer under either. */
typedef struct {
  int32_t type_index; /* 7 = DLTensor*, 0 = none */
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    void *v_ptr;
  } value;
} TVMFFIAny;
#define MINRT_ANY_PTR(any) ((any).value.v_ptr)
#else
#define MINRT_ANY_PTR(any) ((any).v_ptr)
#endif

/* A kernel: the `__tvm_ffi_<name>` symbol tvm emits for each PrimFunc. */
typedef int (*minrt_kernel)(void *self, const TVMFFIAny *args, int32_t num_args, TVMFFIAny *ret);
/* Finds a kernel by PrimFunc name (not NUL-terminated); NULL when unknown. */
typedef minrt_kernel (*minrt_resolver)(void *ctx, const char *name, size_t len);

/* A model's kernels, as `harness compile` emits them next to kernels.o (kernels_sig.c):
 * each kernel's name, what it was compiled for, and the kernel itself. graph.json is
 * untrusted: load checks every tvm_op node against its kernel's signature, since kernels
 * built with asserts off check nothing themselves. A node whose kernel is not in the table
 * does not load.
 * sig: the argument count, then per argument its DLDataType (as a little-endian u32)
 * | ndim << 32, then its ndim dims.
 * fn: the `__tvm_ffi_<prefix><name>` symbol, referenced weakly: NULL when the kernels are
 * not linked in (a runner that dlopens them finds them through minrt_artifact.resolve).
 * A firmware with several models gives each its table. */
typedef struct {
  const char *name; /* PrimFunc name */
  const int64_t *sig;
  minrt_kernel fn;
} minrt_signature;
typedef struct {
  uint32_t n;
  const minrt_signature *sigs;
} minrt_signatures;

enum {
  MINRT_OK = 0,
  MINRT_E_JSON = -1,    /* graph.json is not the JSON we read */
  MINRT_E_GRAPH = -2,   /* graph.json is JSON but not a valid graph */
  MINRT_E_PARAMS = -3,  /* params.bin malformed or disagrees with the graph */
  MINRT_E_KERNEL = -4,  /* a func_name not in the signature table, or no kernel for it */
  MINRT_E_ARENA = -5,   /* arena too small (see *need) */
  MINRT_E_ALIGN = -6,   /* arena not 64-byte aligned */
  MINRT_E_ARG = -7,     /* bad argument: index, size, name */
  MINRT_E_RUN = -8      /* a kernel reported an error */
};

#define MINRT_MAX_NDIM 6   /* dims per tensor */
#define MINRT_ALIGN 64     /* alignment of the arena and of every tensor a kernel sees */

typedef struct {
  int code;
  char msg[124];
} minrt_err;

typedef struct {
  const char *graph_json;
  size_t graph_len;
  const void *params; /* minrt's aligned container or TVM's NDArray-list blob
                         (tvm.runtime.save_param_dict); may be NULL/0; read only */
  size_t params_len;
  size_t workspace_bytes; /* the most any kernel asks TVMBackendAllocWorkspace for */
  minrt_resolver resolve; /* NULL: each kernel is its signature table entry's fn */
  void *resolve_ctx;
  const minrt_signatures *signatures; /* the model's kernels; a node without one does not load */
} minrt_artifact;

/* A loaded model. It lives at the start of the arena. The first fields are the public,
 * read-only view (or use the accessors below); the rest belongs to minrt. */
/* What the arena holds, in bytes (minrt.arena_use[...]; they add up to the arena's size). */
enum {
  MINRT_USE_GRAPH,        /* the parsed graph: this struct, nodes, entries, arguments, shapes */
  MINRT_USE_ACTIVATIONS,  /* one buffer per storage id: inputs, intermediates, outputs */
  MINRT_USE_WORKSPACE,    /* the kernels' workspace stack */
  MINRT_USE_WEIGHT_COPIES /* params not 64-byte aligned where they lie, copied: 0 when the
                             params come in minrt's aligned container in an aligned buffer */
};

typedef struct minrt {
  uint32_t n_inputs;  /* graph inputs: the null nodes no param is bound to, in node order */
  uint32_t n_outputs; /* graph `heads`, in order */
  DLTensor **inputs;
  DLTensor **outputs;
  uint32_t arena_use[4]; /* MINRT_USE_* */
  /* private */
  minrt_err *err;
  struct minrt_node *nodes;
  struct minrt_entry *ent;
  uint32_t n_nodes, n_ent;
  uint8_t *ws, *ws_top, *ws_end; /* kernel workspace: a stack */
} minrt;

/* Loads the artifact into arena (64-byte aligned; NULL means none); *out then points at
 * its start. need and err must not be NULL; err also receives later run/input errors.
 * graph.json's arg_nodes is not read: the inputs are the null nodes no param binds. */
int minrt_load(minrt **out, const minrt_artifact *a, void *arena, size_t arena_len,
               size_t *need, minrt_err *err);
/* Index of the graph input called name[0..len), or MINRT_E_ARG. */
int minrt_input_index(const minrt *m, const char *name, size_t len);
/* Copies nbytes (must equal the input's size) into input i. i may come straight from
 * minrt_input_index: its error (MINRT_E_ARG) is returned as is, with its message. */
int minrt_set_input(minrt *m, int i, const void *data, size_t nbytes);
int minrt_run(minrt *m);

static inline int minrt_num_inputs(const minrt *m) { return (int)m->n_inputs; }
static inline int minrt_num_outputs(const minrt *m) { return (int)m->n_outputs; }
/* Input / output i (NULL if out of range). */
static inline const DLTensor *minrt_input(const minrt *m, int i) {
  return (unsigned)i < m->n_inputs ? m->inputs[i] : NULL;
}
static inline const DLTensor *minrt_output(const minrt *m, int i) {
  return (unsigned)i < m->n_outputs ? m->outputs[i] : NULL;
}
/* Bytes of a tensor's data (compact, lanes 1). */
static inline size_t minrt_nbytes(const DLTensor *t) {
  size_t n = t->dtype.bits / 8;
  int32_t i;
  for (i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
  return n;
}

/* Built with MINRT_PROFILE (minrt-run is; the size-budgeted core is not), minrt_run calls
 * the hook given to minrt_set_profile_hook, if any, as hook(m, node, 0) before and
 * (m, node, 1) after each kernel (runtime_c/runner: `minrt-run -p`); with none set (the
 * default) each kernel costs a test of one local more. minrt_node_name names node i (its
 * raw graph.json bytes, JSON escapes kept), or NULL past the last node. */
#ifdef MINRT_PROFILE
typedef void (*minrt_profile_hook)(const minrt *m, uint32_t node, int end);
void minrt_set_profile_hook(minrt_profile_hook hook); /* NULL: none */
const char *minrt_node_name(const minrt *m, uint32_t i, size_t *len);
#endif

/* Kernels compiled with system-lib call this from static constructors, once per kernel;
 * minrt keeps nothing (it finds kernels through the signature table). */
int TVMFFIEnvModRegisterSystemLibSymbol(const char *name, void *symbol);

/* ---- what TVM-generated kernels call (tvm-ffi and TVM backend API names) ---- */
typedef struct {
  void *sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n);
void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *msg);
/* Workspace is a stack in the arena (sized by minrt_artifact.workspace_bytes). */
void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code_hint,
                               int bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);
/* Serial: runs the one task that covers the whole loop. */
int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task);
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv);

#ifdef __cplusplus
}
#endif
#endif
