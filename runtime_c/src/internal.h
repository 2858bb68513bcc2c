/* minrt internals shared by the files in src/: the JSON cursor, the model's layout in the
 * arena, and error reporting. Not part of the public API. */
#ifndef MINRT_INTERNAL_H
#define MINRT_INTERNAL_H

#include <stddef.h>
#include "minrt.h"

/* minrt is C that nothing unwinds through. On x86-64 GCC and clang emit runtime unwind
 * tables (.eh_frame, ~1.4 KB here) by default; like -fno-asynchronous-unwind-tables, this
 * sends the call-frame info to .debug_frame instead, which debuggers still read. ARM EABI
 * C code has no unwind tables by default. Define MINRT_EH_FRAME to keep .eh_frame. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(MINRT_EH_FRAME)
__asm__(".cfi_sections .debug_frame");
#endif

/* ---- json.c: a cursor over JSON text; the caller owns everything ---- */
typedef struct {
  const char *text;
  uint32_t text_len, pos;
  int bad;             /* sticky: set at the first error, pos is where */
  const char *str;     /* the last string read: its raw bytes, escapes kept */
  uint32_t str_len;
} json_cursor;

int json_eat(json_cursor *j, int c); /* consume c (after spaces) if next */
int json_string(json_cursor *j);     /* a string: j->str, j->str_len */
/* A whole number: -1 if negative or 2^31 or more, -2 if none (bad JSON). */
int32_t json_int(json_cursor *j);
int json_ints(json_cursor *j, int64_t *v, int max); /* [1, 2, ...]: how many (first max stored), -1 */
int json_skip(json_cursor *j);                      /* any one value */
int json_end(json_cursor *j);                       /* only spaces left (else sets bad) */
/* The JSON string js[0..jn) (escapes as written: \" \\ \uXXXX incl. surrogate pairs...)
 * equals the UTF-8 bytes s[0..n)? No copy: decodes as it compares. */
int json_string_equals(const char *js, uint32_t jn, const char *s, size_t n);
/* Iterate a list/object: for (first = 1; json_next(j, ']', &first);) ... ; sets bad on junk. */
int json_next(json_cursor *j, int close, int *first);
/* The i-th string of list ("a\0b\0"). */
const char *list_nth(const char *list, int i);
/* Index of s[0..len) (no NUL in it) in list ("a\0b\0"), or -1. */
int list_index(const char *s, uint32_t len, const char *list);
/* Reads a string then sep if not 0 (`"key":` with sep ':'); returns the string's index in list
 * ("a\0b\0"), -1 if not there, -2 on bad JSON (bad set). */
int json_pick(json_cursor *j, const char *list, int sep);
/* Reads `"key":`; which of list ("a\0b\0") it is, as json_pick. */
#define json_key(j, list) json_pick(j, list, ':')
/* Reads `"key":`; nonzero if it is `key` (a string literal). */
#define json_key_is(j, key) (json_pick(j, key "\0", ':') == 0)
/* s[0..len) is the string literal `name`? */
#define name_is(s, len, name) (list_index(s, len, name "\0") == 0)

/* ---- the model ---- */
/* where an entry's data comes from: its storage id (a kernel's output, or a graph input),
 * a param used in place (t.data points into the blob), a param copied into the arena,
 * another entry (__nop) */
enum { ENTRY_STORAGE, ENTRY_INPUT, ENTRY_PARAM_IN_PLACE, ENTRY_PARAM_COPY, ENTRY_ALIAS };

/* t first: kernels get &entry->t. t.shape points into the shape pool (after the kernel
 * arguments in the arena); equal shapes close together share it. */
typedef struct minrt_entry {
  DLTensor t;
  uint32_t nbytes;
  union {                /* where the data is, by kind: */
    uint32_t sid;        /* ENTRY_STORAGE, ENTRY_INPUT: its storage id */
    uint32_t alias;      /* ENTRY_ALIAS: the entry it aliases */
    uint32_t copy_at;    /* ENTRY_PARAM_COPY: arena offset of the param's copy */
  } src;
  union {                /* for the entry whose index is a storage id: that storage's */
    uint32_t size;       /* size (the largest entry sharing it), while planning */
    uint32_t offset;     /* arena offset, once placed */
  } store;
  uint8_t kind;
} minrt_entry;

/* Layout the arena relies on: kernels get &entry->t as a DLTensor* (so t comes first, in
 * DLPack's field order), and the parsed graph's regions stay 8-byte aligned one after the
 * other. (C99 has no _Static_assert: a negative array size stops the build instead.) */
#define MINRT_ASSERT(name, cond) typedef char minrt_assert_##name[(cond) ? 1 : -1]
MINRT_ASSERT(tensor_first, offsetof(minrt_entry, t) == 0);
MINRT_ASSERT(dltensor_data_first, offsetof(DLTensor, data) == 0);
MINRT_ASSERT(dltensor_order, offsetof(DLTensor, device) < offsetof(DLTensor, ndim) &&
                             offsetof(DLTensor, ndim) < offsetof(DLTensor, dtype) &&
                             offsetof(DLTensor, dtype) < offsetof(DLTensor, shape) &&
                             offsetof(DLTensor, shape) < offsetof(DLTensor, strides) &&
                             offsetof(DLTensor, strides) < offsetof(DLTensor, byte_offset));
MINRT_ASSERT(dtype_is_4_bytes, sizeof(DLDataType) == 4);
MINRT_ASSERT(any_is_16_bytes, sizeof(TVMFFIAny) == 16);

typedef struct minrt_node {
  const char *name;
  uint32_t name_len;
  uint32_t row;      /* first entry id */
  uint32_t nout;     /* entries it produces */
  minrt_kernel fn;   /* NULL: an input, a param or a __nop */
  TVMFFIAny *args;   /* inputs then outputs */
  int32_t nargs;
  uint8_t op;        /* 0 null (input or param), 1 tvm_op, 2 tvm_op __nop */
} minrt_node;

/* Error messages, one per failure minrt reports: its id (M_*, what call sites pass: one byte,
 * where a string's address would take four), its code, the thing that is wrong (W_*: the
 * first words of the text, kept once in MINRT_WHATS since many messages share them) and the
 * detail. minrt_fail records "<what>[ <num>]: <detail>[ '<name>']" (name[0..len), or up to a
 * NUL before that) and returns the code; num < 0 is left out. Built with MINRT_NO_MESSAGES
 * (production firmware), the text is left out: codes stay, and a message is the code's name
 * and num ("E_GRAPH 12"). */
#define MINRT_WHATS(W) \
  W(W_NODE, "node") \
  W(W_INPUT, "input") \
  W(W_JSON_BYTE, "graph.json byte") \
  W(W_JSON, "graph.json") \
  W(W_ROWS, "node_row_ptr") \
  W(W_ATTRS, "attrs") \
  W(W_ENTRY, "entry") \
  W(W_HEADS, "heads") \
  W(W_PARAMS, "params.bin byte") \
  W(W_ARENA, "arena") \
  W(W_ARTIFACT, "artifact") \
  W(W_NEED, "arena bytes needed")
#define MINRT_WHAT_ID(id, text) id,
enum { MINRT_WHATS(MINRT_WHAT_ID) W_COUNT_ };
#define MINRT_MESSAGES(X) \
  X(M_RUN, MINRT_E_RUN, W_NODE, "kernel failed:") \
  X(M_INPUT_NAME, MINRT_E_ARG, W_INPUT, "unknown") \
  X(M_INPUT_SIZE, MINRT_E_ARG, W_INPUT, "no such input, or not its byte size") \
  X(M_JSON, MINRT_E_JSON, W_JSON_BYTE, "bad JSON") \
  X(M_KEY, MINRT_E_GRAPH, W_JSON, "missing key") \
  X(M_ROWS, MINRT_E_GRAPH, W_ROWS, "must increase from 0") \
  X(M_NO_NODES, MINRT_E_GRAPH, W_ROWS, "no nodes") \
  X(M_NODE_COUNT, MINRT_E_GRAPH, W_NODE, "not in node_row_ptr") \
  X(M_NODE_KEYS, MINRT_E_GRAPH, W_NODE, "needs op, name, inputs, func_name") \
  X(M_NODE_INPUT, MINRT_E_GRAPH, W_NODE, "bad input") \
  X(M_NODE_ARITY, MINRT_E_GRAPH, W_NODE, "bad input/output count or __nop resizes") \
  X(M_NODE_ARGS, MINRT_E_GRAPH, W_NODE, "too many inputs") \
  X(M_KERNEL, MINRT_E_KERNEL, W_NODE, "no code for kernel") \
  X(M_NO_SIG, MINRT_E_KERNEL, W_NODE, "no signature for kernel") \
  X(M_SIG, MINRT_E_GRAPH, W_NODE, "argument count, dtype or shape differs from kernel") \
  X(M_TAG, MINRT_E_GRAPH, W_ATTRS, "bad type tag") \
  X(M_LIST_LEN, MINRT_E_GRAPH, W_ATTRS, "list length != node_row_ptr's entries") \
  X(M_ATTRS, MINRT_E_GRAPH, W_ATTRS, "needs dltype, storage_id, shape") \
  X(M_DTYPE, MINRT_E_GRAPH, W_ENTRY, "bad dtype") \
  X(M_SID, MINRT_E_GRAPH, W_ENTRY, "bad storage id") \
  X(M_NDIM, MINRT_E_GRAPH, W_ENTRY, "over 6 dims") \
  X(M_DIM, MINRT_E_GRAPH, W_ENTRY, "bad dim") \
  X(M_TOO_LARGE, MINRT_E_GRAPH, W_ENTRY, "too large") \
  X(M_HEAD, MINRT_E_GRAPH, W_HEADS, "bad ref") \
  X(M_TRUNCATED, MINRT_E_PARAMS, W_PARAMS, "truncated") \
  X(M_HEADER, MINRT_E_PARAMS, W_PARAMS, "bad header") \
  X(M_COUNT, MINRT_E_PARAMS, W_PARAMS, "bad count") \
  X(M_MAGIC, MINRT_E_PARAMS, W_PARAMS, "bad magic") \
  X(M_VERSION, MINRT_E_PARAMS, W_PARAMS, "version is not 2") \
  X(M_PARAM_NAME, MINRT_E_PARAMS, W_PARAMS, "unknown param") \
  X(M_PARAM_DUP, MINRT_E_PARAMS, W_PARAMS, "duplicate param") \
  X(M_PARAM_META, MINRT_E_PARAMS, W_PARAMS, "device/dtype/shape differ from the graph for") \
  X(M_TRAILING, MINRT_E_PARAMS, W_PARAMS, "trailing bytes") \
  X(M_ALIGN, MINRT_E_ALIGN, W_ARENA, "not 64-byte aligned") \
  X(M_BUF_SIZE, MINRT_E_ARG, W_ARTIFACT, "buffer over 2 GiB") \
  X(M_ARENA, MINRT_E_ARENA, W_NEED, "too small") \
  X(M_ARENA_2G, MINRT_E_ARENA, W_NEED, "over 2 GiB")
#define MINRT_MSG_ID(id, code, what, detail) id,
enum { MINRT_MESSAGES(MINRT_MSG_ID) M_COUNT_ };
int minrt_fail(minrt_err *e, int id, long num, const char *name, uint32_t len);

/* The checking build (-DMINRT_GUARD, tests only): a guard zone of MINRT_GUARD_BYTES after
 * every region of the arena (minrt's tables, each storage id, each param copy, the
 * workspace), filled at load and verified by minrt_run after every kernel. */
#ifdef MINRT_GUARD
#define MINRT_GUARD_BYTES 64
#define MINRT_GUARD_MAX (1 << 16)
#define MINRT_GUARD_FILL 0xA5
typedef struct {
  uint8_t *arena;
  uint32_t n, at[MINRT_GUARD_MAX], end[MINRT_GUARD_MAX]; /* [at, end) of each zone */
} minrt_guard_zones;
extern minrt_guard_zones minrt_guards;
#else
#define MINRT_GUARD_BYTES 0
#endif

#endif
