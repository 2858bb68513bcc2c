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
  uint32_t n, p; /* length, position */
  int bad;       /* sticky: set at the first error, p is where */
} mj;

int mj_eat(mj *j, int c);                            /* consume c (after spaces) if next */
int mj_str(mj *j, const char **s, uint32_t *len);    /* a string's raw bytes */
int mj_int(mj *j, int32_t *v); /* a whole number; -1 if negative or 2^31 or more */
int mj_ints(mj *j, int64_t *v, int max); /* [1, 2, ...]: how many (first max stored), -1 */
int mj_skip(mj *j);                                  /* any one value */
/* Iterate a list/object: for (f = 1; mj_next(j, ']', &f);) ... ; sets bad on junk. */
int mj_next(mj *j, int close, int *first);
/* Index of s[0..len) in list ("a\0b\0"), or -1. */
int mj_index(const char *s, uint32_t len, const char *list);
/* Reads `"key":`; returns its index in list ("a\0b\0"), -1 if not there, -2 on bad JSON. */
int mj_key(mj *j, const char *list);

/* ---- the model ---- */
/* where an entry's data comes from: its storage id, a param used in place (t.data points
 * into the blob), a param copied into the arena, another entry (__nop) */
enum { K_STORE, K_PZERO, K_PCOPY, K_ALIAS };

typedef struct minrt_entry {
  DLTensor t;
  int64_t shape[MINRT_MAX_NDIM];
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

/* Error messages are: the code (as -code, one byte), what (W*, an index into the list in
 * exec.c, one byte), detail.
 * minrt_fail records "<what>[ <num>]: <detail>[ '<name>']" (name[0..len)) and returns the
 * code. num < 0 is left out. */
#define EJSON "\001"
#define EGRAPH "\002"
#define EPARAMS "\003"
#define EKERNEL "\004"
#define EARENA "\005"
#define EALIGN "\006"
#define EARG "\007"
#define ERUN "\010"
#define W1 "\001" /* graph.json byte */
#define W2 "\002" /* graph.json */
#define W3 "\003" /* node */
#define W4 "\004" /* entry */
#define W5 "\005" /* attrs */
#define W6 "\006" /* node_row_ptr */
#define W7 "\007" /* artifact */
#define W8 "\010" /* heads */
#define W9 "\011" /* params.bin byte */
#define W10 "\012" /* arena bytes needed */
#define W11 "\013" /* input */
#define W12 "\014" /* arena */
int minrt_fail(minrt_err *e, const char *msg, long num, const char *name, uint32_t len);

#endif
