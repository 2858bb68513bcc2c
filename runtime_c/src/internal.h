/* minrt internals shared by the files in src/: the JSON cursor, the model's layout in the
 * arena, and error reporting. Not part of the public API. */
#ifndef MINRT_INTERNAL_H
#define MINRT_INTERNAL_H

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
  const char *s;
  uint32_t n, p;   /* length, position */
  int bad;         /* sticky: set at the first error, p is where */
  const char *str; /* the last string read: its raw bytes */
  uint32_t len;
} mj;

int mj_eat(mj *j, int c);                            /* consume c (after spaces) if next */
int mj_str(mj *j);                                   /* a string: j->str, j->len */
/* A whole number: -1 if negative or 2^31 or more, -2 if none (bad JSON). */
int32_t mj_int(mj *j);
int mj_ints(mj *j, int64_t *v, int max); /* [1, 2, ...]: how many (first max stored), -1 */
int mj_skip(mj *j);                                  /* any one value */
int mj_end(mj *j);                                   /* only spaces left (else sets bad) */
/* The JSON string js[0..jn) (escapes as written: \" \\ \uXXXX incl. surrogate pairs...)
 * equals the UTF-8 bytes s[0..n)? No copy: decodes as it compares. */
int mj_eq(const char *js, uint32_t jn, const char *s, size_t n);
/* Iterate a list/object: for (f = 1; mj_next(j, ']', &f);) ... ; sets bad on junk. */
int mj_next(mj *j, int close, int *first);
/* The i-th string of list ("a\0b\0"). */
const char *mj_nth(const char *list, int i);
/* Index of s[0..len) (no NUL in it) in list ("a\0b\0"), or -1. */
int mj_index(const char *s, uint32_t len, const char *list);
/* Reads a string then sep if not 0 (`"key":` with sep ':'); returns the string's index in list
 * ("a\0b\0"), -1 if not there, -2 on bad JSON (bad set). */
int mj_pick(mj *j, const char *list, int sep);
#define mj_key(j, list) mj_pick(j, list, ':')

/* ---- the model ---- */
/* where an entry's data comes from: its storage id (a kernel's output, or a graph input),
 * a param used in place (t.data points into the blob), a param copied into the arena,
 * another entry (__nop) */
enum { K_STORE, K_INPUT, K_PZERO, K_PCOPY, K_ALIAS };

/* t first: kernels get &entry->t. t.shape points into the shape pool (after the kernel
 * arguments in the arena); equal shapes close together share it. */
typedef struct minrt_entry {
  DLTensor t;
  uint32_t nbytes;
  uint32_t sid;    /* storage id; K_ALIAS: the aliased entry; K_PCOPY: arena offset */
  uint32_t store;  /* for storage id == this entry's index: its size, then its offset */
  uint8_t kind;
} mentry;

typedef struct minrt_node {
  const char *name;
  uint32_t name_len;
  uint32_t row;      /* first entry id */
  uint32_t nout;     /* entries it produces */
  minrt_kernel fn;   /* NULL: an input, a param or a __nop */
  TVMFFIAny *args;   /* inputs then outputs */
  int32_t nargs;
  uint8_t op;        /* 0 null (input or param), 1 tvm_op */
} mnode;

/* Error messages. Each is: the code (as -code, one byte), the word naming what is wrong
 * (W_*), the detail. Call sites pass the message's id (M_*: one byte of code, where a string
 * address takes four plus a literal). Messages are spelled with words: a byte 0x80 + k
 * stands for word k of MINRT_WORDS (W_* name them; words may use words too).
 * minrt_fail records "<what>[ <num>]: <detail>[ '<name>']" (name[0..len), or up to a NUL
 * before that) and returns the code. num < 0 is left out. */
#define EJSON "\001"
#define EGRAPH "\002"
#define EPARAMS "\003"
#define EKERNEL "\004"
#define EARENA "\005"
#define EALIGN "\006"
#define EARG "\007"
#define ERUN "\010"
#define W_GRAPH_BYTE "\200"  /* graph.json byte */
#define W_GRAPH "\201"       /* graph.json */
#define W_NODE "\202"        /* node */
#define W_ENTRY "\203"       /* entry */
#define W_ATTRS "\204"       /* attrs */
#define W_ROWS "\205"        /* node_row_ptr */
#define W_ARTIFACT "\206"    /* artifact */
#define W_HEADS "\207"       /* heads */
#define W_PARAMS_BYTE "\210" /* params.bin byte */
#define W_ARENA_NEED "\211"  /* arena bytes needed */
#define W_INPUT "\212"       /* input */
#define W_ARENA "\213"       /* arena */
#define W_BAD "\214"         /* "bad " */
#define W_UNKNOWN "\215"     /* "unknown " */
#define W_BYTE "\216"        /* " byte" */
#define W_PARAM "\217"       /* param */
#define MINRT_WORDS                                                                       \
  W_GRAPH W_BYTE "\0graph.json\0node\0entry\0attrs\0" W_NODE "_row_ptr\0artifact\0heads\0" \
  W_PARAM "s.bin" W_BYTE "\0" W_ARENA W_BYTE "s needed\0input\0arena\0bad \0unknown \0 byte\0param\0"
#define MINRT_NWORDS 16
#define MINRT_MESSAGES(X) \
  X(M_RUN, ERUN W_NODE "kernel failed:") \
  X(M_INPUT_NAME, EARG W_INPUT "unknown") \
  X(M_INPUT_SIZE, EARG W_INPUT "no such " W_INPUT ", or not its" W_BYTE " size") \
  X(M_JSON, EJSON W_GRAPH_BYTE W_BAD "JSON") \
  X(M_KEY, EGRAPH W_GRAPH "missing key") \
  X(M_ROWS, EGRAPH W_ROWS "must increase from 0") \
  X(M_NO_NODES, EGRAPH W_ROWS "no " W_NODE "s") \
  X(M_NODE_COUNT, EGRAPH W_NODE "not in " W_ROWS) \
  X(M_NODE_KEYS, EGRAPH W_NODE "needs op, name, " W_INPUT "s, func_name") \
  X(M_NODE_INPUT, EGRAPH W_NODE W_BAD W_INPUT) \
  X(M_NODE_ARITY, EGRAPH W_NODE W_BAD W_INPUT "/output count or __nop resizes") \
  X(M_NODE_ARGS, EGRAPH W_NODE "too many " W_INPUT "s") \
  X(M_KERNEL, EKERNEL W_NODE W_UNKNOWN "kernel") \
  X(M_NO_SIG, EKERNEL W_NODE "no signature for kernel") \
  X(M_SIG, EGRAPH W_NODE "argument count, dtype or shape differs from kernel") \
  X(M_TAG, EGRAPH W_ATTRS W_BAD "type tag") \
  X(M_LIST_LEN, EGRAPH W_ATTRS "list length != entries") \
  X(M_ATTRS, EGRAPH W_ATTRS "needs dltype, storage_id, shape") \
  X(M_DTYPE, EGRAPH W_ENTRY W_BAD "dtype") \
  X(M_SID, EGRAPH W_ENTRY W_BAD "storage id") \
  X(M_NDIM, EGRAPH W_ENTRY "over 6 dims") \
  X(M_DIM, EGRAPH W_ENTRY W_BAD "dim") \
  X(M_TOO_LARGE, EGRAPH W_ENTRY "too large") \
  X(M_HEAD, EGRAPH W_HEADS W_BAD "ref") \
  X(M_TRUNCATED, EPARAMS W_PARAMS_BYTE "truncated") \
  X(M_HEADER, EPARAMS W_PARAMS_BYTE W_BAD "header") \
  X(M_COUNT, EPARAMS W_PARAMS_BYTE W_BAD "count") \
  X(M_MAGIC, EPARAMS W_PARAMS_BYTE W_BAD "magic") \
  X(M_VERSION, EPARAMS W_PARAMS_BYTE W_BAD "version (minrt reads 1)") \
  X(M_PARAM_NAME, EPARAMS W_PARAMS_BYTE W_UNKNOWN W_PARAM) \
  X(M_PARAM_DUP, EPARAMS W_PARAMS_BYTE "duplicate " W_PARAM) \
  X(M_PARAM_META, EPARAMS W_PARAMS_BYTE "device/dtype/shape differ from the graph for") \
  X(M_TRAILING, EPARAMS W_PARAMS_BYTE "trailing" W_BYTE "s") \
  X(M_ALIGN, EALIGN W_ARENA "not 64-byte aligned") \
  X(M_BUF_SIZE, EARG W_ARTIFACT "buffer over 2 GiB") \
  X(M_ARENA, EARENA W_ARENA_NEED "too small") \
  X(M_ARENA_2G, EARENA W_ARENA_NEED "over 2 GiB")
#define MINRT_MSG_ID(id, text) id,
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
