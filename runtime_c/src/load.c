/* The loader: checks a graph.json + params.bin pair completely and lays the model out in
 * the caller's arena. Two passes over the JSON: the first counts (nodes, entries, kernel
 * arguments, heads) so the parsed graph's size is known before anything is written; the
 * second fills it in. Then params are bound, storage ids sized (the largest entry sharing
 * an id) and placed, 64-byte aligned, then copies of unaligned params, then the kernels'
 * workspace. `arg_nodes` is not read: the inputs are the null nodes no param is bound to. */
#include <string.h>
#include "internal.h"

#ifdef __GNUC__
#define NOINLINE __attribute__((noinline)) /* inlined, it grows minrt_load */
#else
#define NOINLINE
#endif

#define MAX_ITEMS (1u << 20) /* entries per graph */
#define AL8(x) (((x) + 7) & ~7u)
#define AL64(x) (((x) + 63) & ~63u)

enum { KEY_NODES, KEY_HEADS, KEY_ATTRS, KEY_ROWS, NKEYS };

typedef struct {
  mj j;
  minrt *m; /* NULL while counting */
  minrt_err *e;
  const minrt_artifact *a;
  const char *nm; /* a name for the next error message */
  uint32_t nl;
  uint32_t at[NKEYS]; /* where each top-level value starts */
  uint32_t n_nodes, n_ent, n_args, n_heads, n_plain;
  TVMFFIAny *args;
} ld;

static int fail(ld *L, const char *msg, long num) {
  return minrt_fail(L->e, msg, num, L->nm, L->nl);
}

static int jfail(ld *L) { return fail(L, EJSON W1 "bad JSON", L->j.p); }

static int scan_top(ld *L) {
  mj *j = &L->j;
  const char *keys = "nodes\0heads\0attrs\0node_row_ptr\0";
  int f, k;
  for (f = 1; mj_next(j, '}', &f);) {
    k = mj_key(j, keys);
    if (k >= 0) L->at[k] = j->p;
    if (!mj_skip(j)) break;
  }
  if (j->bad) return jfail(L);
  for (k = 0; k < NKEYS; k++, keys += strlen(keys) + 1)
    if (!L->at[k]) {
      L->nm = keys, L->nl = (uint32_t)strlen(keys);
      return fail(L, EGRAPH W2 "missing key", -1);
    }
  return 0;
}

/* node_row_ptr: [0, ...increasing..., n_entries]; stores each node's entries */
static int rows(ld *L) {
  mj *j = &L->j;
  int32_t v, prev = 0;
  uint32_t i;
  int f;
  j->p = L->at[KEY_ROWS];
  for (f = 1, i = 0; mj_next(j, ']', &f); i++) {
    if (!mj_int(j, &v)) break;
    if (i ? v <= prev || v > (int32_t)MAX_ITEMS : v != 0)
      return fail(L, EGRAPH W6 "must increase from 0", i);
    if (L->m && i) {
      L->m->nodes[i - 1].row = (uint32_t)prev;
      L->m->nodes[i - 1].nout = (uint32_t)(v - prev);
    }
    prev = v;
  }
  if (j->bad) return jfail(L);
  if (i < 2) return fail(L, EGRAPH W6 "no nodes", -1);
  L->n_nodes = i - 1;
  L->n_ent = (uint32_t)prev;
  return 0;
}

/* [nid, index(, version)] -> entry id, for a node id below `limit` */
static int ref(ld *L, uint32_t limit, const char *msg, long num, uint32_t *eid) {
  int64_t v[3];
  int n = mj_ints(&L->j, v, 3);
  uint32_t nid, idx; /* 0..2^31-1, or -1 */
  if (n < 0) return jfail(L);
  if (n < 2 || n > 3 || (nid = (uint32_t)v[0]) >= limit ||
      (idx = (uint32_t)v[1], L->m && idx >= L->m->nodes[nid].nout))
    return fail(L, msg, num);
  if (L->m) *eid = L->m->nodes[nid].row + idx;
  return 0;
}

/* nodes: [{"op": "null"|"tvm_op", "name": s, "inputs": [[nid, index, version]...],
 *          "attrs": {"func_name": s, ...}}, ...] */
static int parse_nodes(ld *L) {
  mj *j = &L->j;
  minrt *m = L->m;
  uint32_t i;
  int f, g, h;
  j->p = L->at[KEY_NODES];
  for (f = 1, i = 0; mj_next(j, ']', &f); i++) {
    const char *name = 0, *fn = 0, *v = 0;
    uint32_t name_len = 0, fn_len = 0, vl = 0, in_at = 0, end, c, eid = 0, q, nout = 1;
    int op;
    mnode *nd;
    if (i >= L->n_nodes) return fail(L, EGRAPH W3 "not in node_row_ptr", i);
    nd = m ? &m->nodes[i] : 0;
    for (g = 1; mj_next(j, '}', &g);) {
      switch (mj_key(j, "op\0name\0inputs\0attrs\0")) {
        case 0: mj_str(j, &v, &vl); break;
        case 1: mj_str(j, &name, &name_len); break;
        case 2: in_at = j->p; mj_skip(j); break;
        case 3:
          for (h = 1; mj_next(j, '}', &h);)
            if (mj_key(j, "func_name\0") ? !mj_skip(j) : !mj_str(j, &fn, &fn_len)) break;
          break;
        case -1: mj_skip(j); break;
        default: j->bad = 1;
      }
    }
    if (j->bad) return jfail(L);
    end = j->p;
    op = v ? mj_index(v, vl, "null\0tvm_op\0") : -1;
    if (op < 0 || !name || !in_at || (op && !fn))
      return fail(L, EGRAPH W3 "needs op, name, inputs, func_name", i);
    if (op && !mj_index(fn, fn_len, "__nop\0")) op = 2;
    if (nd) {
      nout = nd->nout;
      nd->name = name;
      nd->name_len = name_len;
      nd->op = op == 1;
      nd->args = L->args;
    }
    j->p = in_at;
    for (g = 1, c = 0; mj_next(j, ']', &g); c++) {
      if (ref(L, i, EGRAPH W3 "bad input", i, &eid)) return L->e->code;
      if (nd && op == 1) {
        L->args[c].type_index = 7;
        L->args[c].v_ptr = &m->ent[eid].t;
      }
    }
    if (j->bad) return jfail(L);
    j->p = end;
    if (op != 1) {
      /* an input has one output and no inputs; a __nop one of each, of the same size */
      if (c != (op == 2) || nout != 1 || (nd && op && m->ent[nd->row].nbytes != m->ent[eid].nbytes))
        return fail(L, EGRAPH W3 "bad input/output count or __nop resizes", i);
      L->n_plain++;
      if (nd && op) {
        m->ent[nd->row].kind = K_ALIAS;
        m->ent[nd->row].sid = eid;
      }
      continue;
    }
    if ((L->n_args += c) > MAX_ITEMS * 4) return fail(L, EGRAPH W3 "too many inputs", i);
    if (nd) {
      minrt_resolver r = L->a->resolve ? L->a->resolve : minrt_syslib_lookup;
      if (!(nd->fn = r(L->a->resolve_ctx, fn, fn_len))) {
        L->nm = fn, L->nl = fn_len;
        return fail(L, EKERNEL W3 "unknown kernel", i);
      }
      for (q = 0; q < nout; q++) {
        L->args[c + q].type_index = 7;
        L->args[c + q].v_ptr = &m->ent[nd->row + q].t;
      }
      nd->nargs = (int32_t)(c + nout);
      L->args += c + nout;
    }
  }
  if (j->bad) return jfail(L);
  if (i != L->n_nodes) return fail(L, EGRAPH W3 "not in node_row_ptr", i);
  return 0;
}

/* dtype names and their DLPack {code, bits} (code 6 is kDLBool, as TVM 0.27 writes) */
static const char dtype_names[] = "float32\0float16\0int8\0uint8\0int16\0int32\0int64\0bool\0"
                                  "float64\0uint16\0uint32\0uint64\0";
static const uint8_t dtype_codes[][2] = {{2, 32}, {2, 16}, {0, 8},  {1, 8},  {0, 16}, {0, 32},
                                         {0, 64}, {6, 8},  {2, 64}, {1, 16}, {1, 32}, {1, 64}};

/* attrs: {"dltype": ["list_str", [...]], "storage_id": ["list_int", [...]],
 *         "shape": ["list_shape", [[...], ...]], ...} */
static NOINLINE int parse_attrs(ld *L) {
  mj *j = &L->j;
  minrt *m = L->m;
  const char *s;
  uint32_t sl, e, got = 0;
  int f, g, h, d, w;
  int32_t v;
  j->p = L->at[KEY_ATTRS];
  for (f = 1; mj_next(j, '}', &f);) {
    w = mj_key(j, "dltype\0storage_id\0shape\0");
    if (w < 0) {
      if (w == -1) mj_skip(j);
      continue;
    }
    h = 1;
    if (!mj_next(j, ']', &h) || !mj_str(j, &s, &sl) || !mj_next(j, ']', &h)) break;
    if (mj_index(s, sl, "list_str\0list_int\0list_shape\0") != w)
      return fail(L, EGRAPH W5 "bad type tag", -1);
    for (g = 1, e = 0; mj_next(j, ']', &g); e++) {
      mentry *en;
      if (e >= L->n_ent) return fail(L, EGRAPH W5 "list length != entries", e);
      en = &m->ent[e];
      if (w == 0) {
        if (!mj_str(j, &s, &sl)) break;
        if ((d = mj_index(s, sl, dtype_names)) < 0) {
          L->nm = s, L->nl = sl;
          return fail(L, EGRAPH W4 "bad dtype", e);
        }
        en->t.dtype.code = dtype_codes[d][0];
        en->t.dtype.bits = dtype_codes[d][1];
        en->t.dtype.lanes = 1;
      } else if (w == 1) {
        if (!mj_int(j, &v)) break;
        if ((uint32_t)v >= L->n_ent) return fail(L, EGRAPH W4 "bad storage id", e);
        en->sid = (uint32_t)v;
      } else {
        if ((d = mj_ints(j, en->shape, MINRT_MAX_NDIM)) < 0) break;
        if (d > MINRT_MAX_NDIM) return fail(L, EGRAPH W4 "over 6 dims", e);
        for (en->t.ndim = d; d--;)
          if (en->shape[d] < 0) return fail(L, EGRAPH W4 "bad dim", e);
      }
    }
    if (j->bad || mj_next(j, ']', &h)) {
      j->bad = 1;
      break;
    }
    if (e != L->n_ent) return fail(L, EGRAPH W5 "list length != entries", e);
    got |= 1u << w;
  }
  if (j->bad) return jfail(L);
  if (got != 7) return fail(L, EGRAPH W5 "needs dltype, storage_id, shape", -1);
  for (e = 0; e < L->n_ent; e++) {
    mentry *en = &m->ent[e];
    uint64_t n = en->t.dtype.bits / 8;
    for (d = 0; d < en->t.ndim; d++)
      if ((n *= (uint64_t)en->shape[d]) > 0x7fffffff) return fail(L, EGRAPH W4 "too large", e);
    en->nbytes = (uint32_t)n;
    en->t.shape = en->shape;
    en->t.device.device_type = 1;
  }
  return 0;
}

static uint32_t rd32(const uint8_t *q) {
  uint32_t v;
  memcpy(&v, q, 4);
  return v;
}

/* The next n bytes of the blob at *p, or NULL (error recorded) if it ends first. */
static const uint8_t *take(ld *L, size_t *p, uint32_t lo, uint32_t hi) {
  const uint8_t *r = (const uint8_t *)L->a->params + *p;
  if (hi || lo > L->a->params_len - *p) {
    fail(L, EPARAMS W9 "truncated", (long)*p);
    return 0;
  }
  *p += lo;
  return r;
}

static const uint8_t list_magic[8] = {0xB7, 0x9C, 0x04, 0x05, 0x4F, 0x8D, 0xE5, 0xF7};
static const uint8_t tensor_magic[8] = {0x3F, 0xA1, 0xB4, 0x96, 0xF0, 0x40, 0x5E, 0xDD};

/* params.bin: names first, then tensors; each bound to the null node of that name */
static NOINLINE int parse_params(ld *L) {
  minrt *m = L->m;
  size_t p = 0, q = 24, at;
  uint32_t nn, i, nl, nid, n;
  const uint8_t *h;
  if (!L->a->params_len) return 0;
  if (!(h = take(L, &p, 24, 0))) return L->e->code;
  if (memcmp(h, list_magic, 8) || rd32(h + 20)) return fail(L, EPARAMS W9 "bad header", 0);
  nn = rd32(h + 16);
  for (i = 0; i < nn; i++)
    if (!(h = take(L, &p, 8, 0)) || !take(L, &p, rd32(h), rd32(h + 4))) return L->e->code;
  if (!(h = take(L, &p, 8, 0))) return L->e->code;
  if (rd32(h) != nn || rd32(h + 4)) return fail(L, EPARAMS W9 "bad count", (long)(p - 8));
  for (i = 0; i < nn; i++) {
    mentry *en;
    nl = rd32(take(L, &q, 8, 0));
    L->nm = (const char *)take(L, &q, nl, 0);
    L->nl = nl;
    at = p;
    if (!(h = take(L, &p, 16, 0))) return L->e->code;
    if (memcmp(h, tensor_magic, 8)) return fail(L, EPARAMS W9 "bad magic", (long)at);
    for (nid = 0; nid < m->n_nodes; nid++)
      if (!m->nodes[nid].op && m->nodes[nid].name_len == nl &&
          !memcmp(m->nodes[nid].name, L->nm, nl))
        break;
    if (nid == m->n_nodes)
      return fail(L, EPARAMS W9 "unknown param", (long)at);
    en = &m->ent[m->nodes[nid].row];
    if (en->kind) return fail(L, EPARAMS W9 "duplicate param", (long)at);
    /* device {CPU, 0}, ndim, dtype (laid out as in DLTensor), shape, nbytes: exactly what
     * the graph says */
    n = 8 * (uint32_t)en->t.ndim;
    if (!(h = take(L, &p, n + 24, 0))) return L->e->code;
    if (memcmp(h, &en->t.device, 16) || memcmp(h + 16, en->shape, n) ||
        rd32(h + 16 + n) != en->nbytes || rd32(h + 20 + n))
      return fail(L, EPARAMS W9 "device/dtype/shape differ from the graph for", (long)at);
    if (!(h = take(L, &p, en->nbytes, 0))) return L->e->code;
    en->t.data = (void *)(uintptr_t)h; /* used in place, or the copy's source */
    en->kind = ((uintptr_t)h & (MINRT_ALIGN - 1)) ? K_PCOPY : K_PZERO;
  }
  L->nm = 0, L->nl = 0;
  if (p != L->a->params_len) return fail(L, EPARAMS W9 "trailing bytes", (long)p);
  return 0;
}

/* heads: [[nid, index, version], ...], the outputs (counted in the first pass) */
static int parse_heads(ld *L) {
  mj *j = &L->j;
  uint32_t i, eid;
  int f;
  j->p = L->at[KEY_HEADS];
  for (f = 1, i = 0; mj_next(j, ']', &f); i++) {
    if (ref(L, L->n_nodes, EGRAPH W8 "bad ref", i, &eid)) return L->e->code;
    if (L->m) L->m->outputs[i] = &L->m->ent[eid].t;
  }
  L->n_heads = i;
  return j->bad ? jfail(L) : 0;
}

/* Reserves n bytes (64-aligned) at *off; past 2^31 *off sticks at 2^31. */
static uint32_t place(uint32_t *off, uint32_t n) {
  uint32_t at = *off;
  if ((*off += AL64(n)) >> 31) *off = 1u << 31;
  return at;
}

int minrt_load(minrt **out, const minrt_artifact *a, void *arena, size_t arena_len,
               size_t *need, minrt_err *e) {
  ld L;
  minrt *m;
  uint8_t *b = (uint8_t *)arena, *part[6];
  uint32_t sz[6], off = 0, i, k;
  memset(&L, 0, sizeof L);
  L.e = e;
  L.a = a;
  L.j.s = a->graph_json;
  L.j.n = (uint32_t)a->graph_len;
  if (!arena) arena_len = 0;
  *out = 0;
  *need = 0;
  if ((uintptr_t)arena & (MINRT_ALIGN - 1)) return fail(&L, EALIGN W12 "not 64-byte aligned", -1);
  if (a->graph_len >> 31 || a->params_len >> 31 || a->workspace_bytes >> 31)
    return fail(&L, EARG W7 "buffer over 2 GiB", -1);
  if (scan_top(&L) || rows(&L) || parse_nodes(&L) || parse_heads(&L)) return e->code;
  /* the parsed graph: struct, nodes, entries, kernel arguments, outputs */
  sz[0] = sizeof(minrt);
  sz[1] = L.n_nodes * (uint32_t)sizeof(mnode);
  sz[2] = L.n_ent * (uint32_t)sizeof(mentry);
  sz[3] = (L.n_args + L.n_ent - L.n_plain) * (uint32_t)sizeof(TVMFFIAny);
  sz[4] = L.n_heads * (uint32_t)sizeof(void *);
  sz[5] = L.n_nodes * (uint32_t)sizeof(void *);
  for (k = 0; k < 6; k++) {
    part[k] = b + off;
    off += AL8(sz[k]);
  }
  *need = off;
  if (off > arena_len) return fail(&L, EARENA W10 "too small", off);
  memset(b, 0, off);
  m = (minrt *)b;
  m->nodes = (mnode *)part[1];
  m->ent = (mentry *)part[2];
  L.args = (TVMFFIAny *)part[3];
  m->outputs = (DLTensor **)part[4];
  m->inputs = (DLTensor **)part[5];
  m->err = e;
  m->n_nodes = L.n_nodes;
  m->n_ent = L.n_ent;
  m->n_outputs = L.n_heads;
  L.m = m;
  if (rows(&L) || parse_attrs(&L) || parse_nodes(&L) || parse_params(&L) || parse_heads(&L))
    return e->code;
  /* storage: each id as large as its largest entry; params use none of it (used in
   * place, or copied to a region of their own) */
  for (i = 0; i < L.n_ent; i++) {
    mentry *en = &m->ent[i];
    if (en->kind == K_STORE && m->ent[en->sid].store < en->nbytes)
      m->ent[en->sid].store = en->nbytes;
  }
  off = AL64(off);
  for (i = 0; i < L.n_ent; i++) m->ent[i].store = place(&off, m->ent[i].store);
  for (i = 0; i < L.n_ent; i++)
    if (m->ent[i].kind == K_PCOPY) m->ent[i].sid = place(&off, m->ent[i].nbytes);
  k = place(&off, (uint32_t)a->workspace_bytes);
  *need = off;
  if (off >> 31) return fail(&L, EARENA W10 "over 2 GiB", -1);
  if (off > arena_len) return fail(&L, EARENA W10 "too small", off);
  m->ws = m->ws_top = b + k;
  m->ws_end = b + off;
  for (i = 0; i < L.n_ent; i++) {
    mentry *en = &m->ent[i];
    if (en->kind == K_ALIAS) en->t.data = m->ent[en->sid].t.data;
    else if (en->kind == K_PCOPY) en->t.data = memcpy(b + en->sid, en->t.data, en->nbytes);
    else if (en->kind == K_STORE) en->t.data = b + m->ent[en->sid].store;
  }
  for (i = 0; i < L.n_nodes; i++)
    if (!m->nodes[i].op && !m->ent[m->nodes[i].row].kind)
      m->inputs[m->n_inputs++] = &m->ent[m->nodes[i].row].t;
  *out = m;
  return 0;
}
