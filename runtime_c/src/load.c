/* The loader: checks a graph.json + params.bin pair completely and lays the model out in
 * the caller's arena. Two passes over the JSON: the first counts (nodes, entries, kernel
 * arguments, heads, dims) so the parsed graph's size is known before anything is written; the
 * second fills it in. Then params are bound, storage ids sized (the largest entry sharing
 * an id) and placed 64-byte aligned in entry order (with a copy of each param that is not
 * aligned in the blob), then the kernels' workspace. `arg_nodes` is not read: the inputs are the null nodes no param is bound to. */
#include <string.h>
#include "internal.h"

#ifdef __GNUC__
#define NOINLINE __attribute__((noinline)) /* inlined, it grows its callers */
#else
#define NOINLINE
#endif

#define MAX_ITEMS (1u << 20) /* entries per graph */
#define AL8(x) (((x) + 7) & ~7u)
#define AL64(x) (((x) + 63) & ~(uint64_t)63)

enum { KEY_NODES, KEY_HEADS, KEY_ATTRS, KEY_ROWS, NKEYS };

typedef struct {
  mj j;
  minrt *m; /* NULL while counting */
  mentry *ent; /* m->ent */
  mnode *nodes; /* m->nodes */
  minrt_err *e;
  const minrt_artifact *a;
  const char *nm; /* a name for the next error message */
  uint32_t nl;
  uint32_t at[NKEYS]; /* where each top-level value starts */
  uint32_t pp;        /* params.bin: bytes read */
  uint32_t n_nodes, n_ent, n_args, n_heads, n_plain, n_dims;
  TVMFFIAny *args;
  const int64_t *sig; /* the signature of the node being read: what arg() checks next */
  uint32_t sig_n;
  int64_t *shp, *shp0; /* the shape pool: its top, its start */
} ld;

static int fail(ld *L, int msg, long num) {
  return minrt_fail(L->e, msg, num, L->nm, L->nl);
}

static int jfail(ld *L) { return fail(L, M_JSON, L->j.p); }

static int scan_top(ld *L) {
  mj *j = &L->j;
  const char *keys = "nodes\0heads\0attrs\0node_row_ptr\0";
  int f, k;
  for (f = 1; mj_next(j, '}', &f);) {
    k = mj_key(j, keys);
    if (k >= 0) L->at[k] = j->p;
    mj_skip(j); /* on bad JSON, the loop ends */
  }
  if (j->bad || !mj_end(j)) return jfail(L); /* nothing but spaces after the object */
  for (k = 0; k < NKEYS; k++)
    if (!L->at[k]) {
      L->nm = mj_nth(keys, k), L->nl = 127; /* up to its NUL */
      return fail(L, M_KEY, -1);
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
    if ((v = mj_int(j)) < -1) break;
    if (i ? v <= prev || v > (int32_t)MAX_ITEMS : v != 0)
      return fail(L, M_ROWS, i);
    if (L->m && i) {
      L->nodes[i - 1].row = (uint32_t)prev;
      L->nodes[i - 1].nout = (uint32_t)(v - prev);
    }
    prev = v;
  }
  if (j->bad) return jfail(L);
  if (i < 2) return fail(L, M_NO_NODES, -1);
  L->n_nodes = i - 1;
  L->n_ent = (uint32_t)prev;
  return 0;
}

/* [nid, index(, version)] -> its entry id (0 while counting), for a node id below `limit`;
 * -1 on error */
static int32_t ref(ld *L, uint32_t limit, int msg, long num) {
  int64_t v[3];
  int n = mj_ints(&L->j, v, 3);
  uint32_t nid, idx; /* 0..2^31-1, or -1 */
  if (n < 0) return jfail(L), -1;
  if (n < 2 || n > 3 || (nid = (uint32_t)v[0]) >= limit ||
      (idx = (uint32_t)v[1], L->m && idx >= L->nodes[nid].nout))
    return fail(L, msg, num), -1;
  return L->m ? (int32_t)(L->nodes[nid].row + idx) : 0;
}

/* Kernel argument k of the node being read: entry eid's tensor, checked against the
 * kernel's signature (L->sig: what is left of it; L->sig_n: its argument count). Nonzero
 * if it differs. */
static NOINLINE int arg(ld *L, uint32_t k, uint32_t eid) {
  DLTensor *t = &L->ent[eid].t;
  uint32_t dt, nd = (uint32_t)t->ndim;
  L->args[k].type_index = 7; /* kTVMFFIDLTensorPtr */
  MINRT_ANY_PTR(L->args[k]) = t;
  memcpy(&dt, &t->dtype, 4);
  if (k >= L->sig_n || *L->sig != ((int64_t)nd << 32 | dt) || memcmp(L->sig + 1, t->shape, 8 * nd))
    return 1;
  L->sig += 1 + nd;
  return 0;
}

/* nodes: [{"op": "null"|"tvm_op", "name": s, "inputs": [[nid, index, version]...],
 *          "attrs": {"func_name": s, ...}}, ...] */
static int parse_nodes(ld *L) {
  mj *j = &L->j;
  minrt *m = L->m;
  const minrt_artifact *a = L->a;
  mnode scratch, *nd; /* pass 1 reads into scratch */
  uint32_t i;
  int f, g, h;
  j->p = L->at[KEY_NODES];
  L->n_args = L->n_plain = 0; /* counted again in pass 2 */
  scratch.nout = 1; /* not known in pass 1 */
  for (f = 1, i = 0; mj_next(j, ']', &f); i++) {
    const char *fn = 0;
    uint32_t fn_len = 0, in_at = 0, end, c, q;
    int32_t eid = 0;
    int op = -1;
    L->nm = 0;
    if (i >= L->n_nodes) return fail(L, M_NODE_COUNT, i);
    nd = m ? &L->nodes[i] : &scratch;
    nd->name = 0;
    for (g = 1; mj_next(j, '}', &g);) {
      switch (mj_key(j, "op\0name\0inputs\0attrs\0")) {
        case 0: op = mj_pick(j, "null\0tvm_op\0", 0); break;
        case 1: if (mj_str(j)) nd->name = j->str, nd->name_len = j->len; break;
        case 2: in_at = j->p; mj_skip(j); break;
        case 3:
          for (h = 1; mj_next(j, '}', &h);)
            if (mj_key(j, "func_name\0")) mj_skip(j); /* bad JSON: does nothing */
            else if (mj_str(j)) fn = j->str, fn_len = j->len;
          break;
        default: mj_skip(j); /* another key, or bad JSON (then it does nothing) */
      }
    }
    if (j->bad) return jfail(L);
    end = j->p;
    if (op < 0 || !nd->name || !in_at || (op && !fn))
      return fail(L, M_NODE_KEYS, i);
    if (op && !mj_index(fn, fn_len, "__nop\0")) op = 2;
    nd->op = (uint8_t)op; /* a __nop is not a null node: no param binds it */
    nd->args = L->args;
    if (m && op == 1) {
      const minrt_signatures *t = a->signatures;
      L->nm = fn, L->nl = fn_len; /* the node's errors from here name its kernel */
      for (L->sig = 0, q = 0; t && q < t->n && !L->sig; q++)
        if (!strncmp(t->sigs[q].name, fn, fn_len) && !t->sigs[q].name[fn_len])
          L->sig = t->sigs[q].sig, nd->fn = t->sigs[q].fn;
      if (!L->sig) return fail(L, M_NO_SIG, i);
      if (a->resolve) nd->fn = a->resolve(a->resolve_ctx, fn, fn_len);
      if (!nd->fn) return fail(L, M_KERNEL, i);
      L->sig_n = (uint32_t)*L->sig++;
    }
    j->p = in_at;
    for (g = 1, c = 0; mj_next(j, ']', &g); c++) {
      if ((eid = ref(L, i, M_NODE_INPUT, i)) < 0) return 1;
      if (m && op == 1 && arg(L, c, (uint32_t)eid)) return fail(L, M_SIG, i);
    }
    if (j->bad) return jfail(L);
    j->p = end;
    if (op != 1) {
      /* an input has one output and no inputs; a __nop one of each, of the same size */
      if (c != (op == 2) || nd->nout != 1 || (m && op && L->ent[nd->row].nbytes != L->ent[eid].nbytes))
        return fail(L, M_NODE_ARITY, i);
      L->n_plain++;
      if (m) {
        mentry *en = &L->ent[nd->row];
        en->kind = op ? K_ALIAS : K_INPUT; /* an input until a param binds it */
        if (op) en->src.alias = (uint32_t)eid;
      }
      continue;
    }
    if ((L->n_args += c) > MAX_ITEMS * 4) return fail(L, M_NODE_ARGS, i);
    if (m) {
      for (q = 0; q < nd->nout; q++)
        if (arg(L, c + q, nd->row + q)) return fail(L, M_SIG, i);
      if ((nd->nargs = (int32_t)(c + q)) != (int32_t)L->sig_n) return fail(L, M_SIG, i);
      L->args += c + q;
    }
  }
  if (j->bad) return jfail(L);
  if (i != L->n_nodes) return fail(L, M_NODE_COUNT, i);
  return 0;
}

/* dtype names, in the order of their DLPack {code, bits}: code = index / 4 (0 int, 1 uint,
 * 2 float, 3 bool written as TVM 0.27 does: code 6), bits = 8 << index % 4. "\1" (a control
 * character, never in a JSON string) holds float8's place. */
static const char dtype_names[] = "int8\0int16\0int32\0int64\0uint8\0uint16\0uint32\0uint64\0"
                                  "\1\0float16\0float32\0float64\0bool\0";

/* attrs: {"dltype": ["list_str", [...]], "storage_id": ["list_int", [...]],
 *         "shape": ["list_shape", [[...], ...]], ...} */
static int parse_attrs(ld *L) {
  mj *j = &L->j;
  mentry scratch; /* pass 1 reads into scratch */
  int64_t dims[MINRT_MAX_NDIM], *s;
  uint32_t e, i, k, got = 0;
  int f, g, h, d, w, t;
  int32_t v;
  j->p = L->at[KEY_ATTRS];
  for (f = 1; mj_next(j, '}', &f);) {
    w = mj_key(j, "dltype\0storage_id\0shape\0");
    if (w < 0) { /* another attribute, or bad JSON (then mj_skip does nothing) */
      mj_skip(j);
      continue;
    }
    h = 1;
    if (!mj_next(j, ']', &h)) break;
    t = mj_pick(j, "list_str\0list_int\0list_shape\0", ',');
    if (j->bad) break;
    if (t != w) return fail(L, M_TAG, -1);
    for (g = 1, e = 0; mj_next(j, ']', &g); e++) {
      mentry *en;
      if (e >= L->n_ent) return fail(L, M_LIST_LEN, e);
      en = L->m ? &L->ent[e] : &scratch;
      if (w == 0) {
        if ((d = mj_pick(j, dtype_names, 0)) < -1) break;
        if (d < 0) {
          L->nm = j->str, L->nl = j->len;
          return fail(L, M_DTYPE, e);
        }
        v = (d == 12 ? 6 : d >> 2) | 8 << (d & 3) << 8 | 1 << 16; /* {code, bits, lanes 1} */
        memcpy(&en->t.dtype, &v, 4);
      } else if (w == 1) {
        if ((v = mj_int(j)) < -1) break;
        if ((uint32_t)v >= L->n_ent) return fail(L, M_SID, e);
        en->src.sid = (uint32_t)v;
      } else {
        /* pass 2 reads into the pool's top: no more dims than pass 1 counted */
        s = L->m ? L->shp : dims;
        if ((d = mj_ints(j, s, MINRT_MAX_NDIM)) < 0) break;
        if (d > MINRT_MAX_NDIM) return fail(L, M_NDIM, e);
        en->t.shape = s;
        for (en->t.ndim = d; d--;)
          if (s[d] < 0) return fail(L, M_DIM, e);
        if (!L->m) {
          L->n_dims += (uint32_t)en->t.ndim;
          continue;
        }
        /* the same dims among the pool's last 32 (at any offset): shared */
        k = (uint32_t)(s - L->shp0);
        for (i = k > 32 ? k - 32 : 0; i + (uint32_t)en->t.ndim <= k; i++)
          if (!memcmp(L->shp0 + i, s, 8 * (uint32_t)en->t.ndim)) break;
        if (i + (uint32_t)en->t.ndim > k) L->shp += en->t.ndim;
        else en->t.shape = L->shp0 + i;
      }
    }
    if (!mj_eat(j, ']')) { /* (also when bad already) */
      j->bad = 1;
      break;
    }
    if (e != L->n_ent) return fail(L, M_LIST_LEN, e);
    got |= 1u << w;
  }
  if (j->bad) return jfail(L);
  if (got != 7) return fail(L, M_ATTRS, -1);
  for (e = 0; L->m && e < L->n_ent; e++) {
    mentry *en = &L->ent[e];
    uint64_t n = en->t.dtype.bits / 8; /* dims and n below 2^31: 32 x 32 bit products */
    for (d = 0; d < en->t.ndim; d++)
      if ((n = (uint32_t)n * (uint64_t)(uint32_t)en->t.shape[d]) > 0x7fffffff)
        return fail(L, M_TOO_LARGE, e);
    en->nbytes = (uint32_t)n;
    en->t.device.device_type = 1;
  }
  return 0;
}

static uint32_t rd32(const uint8_t *q) {
  uint32_t v;
  memcpy(&v, q, 4);
  return v;
}

/* The next n bytes of params.bin, or NULL (error recorded) if it ends first. */
static const uint8_t *take(ld *L, uint32_t n) {
  const uint8_t *r = (const uint8_t *)L->a->params + L->pp;
  if (n > L->a->params_len - L->pp) {
    fail(L, M_TRUNCATED, (long)L->pp);
    return 0;
  }
  L->pp += n;
  return r;
}

static const uint8_t list_magic[8] = {0xB7, 0x9C, 0x04, 0x05, 0x4F, 0x8D, 0xE5, 0xF7};
static const uint8_t tensor_magic[8] = {0x3F, 0xA1, 0xB4, 0x96, 0xF0, 0x40, 0x5E, 0xDD};
static const uint8_t aligned_magic[8] = {'m', 'i', 'n', 'r', 't', 'p', 'r', 'm'};

/* params.bin: names first, then tensors; each bound to the null node of that name. Either
 * TVM's NDArray-list or minrt's aligned container (runtime_c/README.md): the same but for
 * its magic, a version (1) in the reserved word, and zero padding before each tensor's data
 * up to a multiple of 64 bytes from the start. */
static int parse_params(ld *L) {
  uint32_t nn, i, nl, n, at, al;
  const uint8_t *h, *names;
  const mnode *nd;
  if (!L->a->params_len) return 0;
  if (!(h = take(L, 24))) return 1;
  al = !memcmp(h, aligned_magic, 8);
  if ((!al && memcmp(h, list_magic, 8)) || rd32(h + 20)) return fail(L, M_HEADER, 0);
  if (al && (rd32(h + 8) != 1 || rd32(h + 12))) return fail(L, M_VERSION, 8);
  nn = rd32(h + 16);
  names = h + 24;
  for (i = 0; i < nn; i++)
    if (!(h = take(L, 8)) || !take(L, rd32(h + 4) ? ~0u : rd32(h))) return 1; /* a u64 length */
  if (!(h = take(L, 8))) return 1;
  if (rd32(h) != nn || rd32(h + 4)) return fail(L, M_COUNT, (long)(L->pp - 8));
  for (i = 0; i < nn; i++) {
    mentry *en;
    nl = rd32(names); /* the names, checked above */
    L->nm = (const char *)names + 8;
    L->nl = nl;
    names += 8 + nl;
    at = L->pp;
    if (!(h = take(L, 16))) return 1;
    if (memcmp(h, tensor_magic, 8)) return fail(L, M_MAGIC, (long)at);
    for (nd = L->nodes; nd->op || !mj_eq(nd->name, nd->name_len, L->nm, nl);) /* escapes as in inputs */
      if (++nd == L->nodes + L->n_nodes) return fail(L, M_PARAM_NAME, (long)at);
    en = &L->ent[nd->row];
    if (en->kind != K_INPUT) return fail(L, M_PARAM_DUP, (long)at);
    /* device {CPU, 0}, ndim, dtype (laid out as in DLTensor), shape, nbytes: exactly what
     * the graph says */
    n = 8 * (uint32_t)en->t.ndim;
    if (!(h = take(L, n + 24))) return 1;
    if (memcmp(h, &en->t.device, 16) || memcmp(h + 16, en->t.shape, n) ||
        rd32(h + 16 + n) != en->nbytes || rd32(h + 20 + n))
      return fail(L, M_PARAM_META, (long)at);
    if ((al && !take(L, (0u - L->pp) & 63)) || !(h = take(L, en->nbytes))) return 1;
    en->t.data = (void *)(uintptr_t)h; /* used in place, or the copy's source */
    en->kind = ((uintptr_t)h & (MINRT_ALIGN - 1)) ? K_PCOPY : K_PZERO;
  }
  L->nm = 0, L->nl = 0;
  if (L->pp != L->a->params_len) return fail(L, M_TRAILING, (long)L->pp);
  return 0;
}

/* heads: [[nid, index, version], ...], the outputs (counted in the first pass) */
static int parse_heads(ld *L) {
  mj *j = &L->j;
  uint32_t i;
  int32_t eid;
  int f;
  j->p = L->at[KEY_HEADS];
  for (f = 1, i = 0; mj_next(j, ']', &f); i++) {
    if ((eid = ref(L, L->n_nodes, M_HEAD, i)) < 0) return 1;
    if (L->m) L->m->outputs[i] = &L->ent[eid].t;
  }
  L->n_heads = i;
  return j->bad ? jfail(L) : 0;
}

/* Reserves n bytes (64-aligned) at *off, in 64 bits: at most 2^20 regions of under 2^31
 * bytes never wrap; the caller refuses a total past 2^31. The checking build
 * (MINRT_GUARD) puts a guard zone after each region. */
static uint32_t place(uint64_t *off, uint32_t n) {
  uint64_t at = *off;
  *off += AL64((uint64_t)n) + MINRT_GUARD_BYTES;
#ifdef MINRT_GUARD
  if (minrt_guards.n < MINRT_GUARD_MAX) {
    minrt_guards.at[minrt_guards.n] = (uint32_t)(at + n);
    minrt_guards.end[minrt_guards.n++] = (uint32_t)*off;
  }
#endif
  return (uint32_t)at;
}

/* pass 1 (L->m NULL) counts, pass 2 fills in (nodes need the entries' sizes from attrs);
 * nonzero on error */
static int walk(ld *L) {
  return rows(L) || parse_attrs(L) || parse_nodes(L) || (L->m && parse_params(L)) || parse_heads(L);
}

int minrt_load(minrt **out, const minrt_artifact *a, void *arena, size_t arena_len,
               size_t *need, minrt_err *e) {
  ld L;
  minrt *m = (minrt *)arena;
  uint8_t *b = (uint8_t *)arena;
  uint64_t off, act;
  uint32_t top, g, o_ent, o_args, o_ptr, o_shp, cp = 0, k;
  mentry *en, *end, *ent;
  memset(&L, 0, sizeof L);
  L.e = e;
  L.a = a;
  L.j.s = a->graph_json;
  L.j.n = (uint32_t)a->graph_len;
  if (!arena) arena_len = 0;
  *out = 0;
  *need = 0;
  if ((uintptr_t)arena & (MINRT_ALIGN - 1)) return fail(&L, M_ALIGN, -1);
  if ((a->graph_len | a->params_len | a->workspace_bytes) >> 31)
    return fail(&L, M_BUF_SIZE, -1);
  if (scan_top(&L) || walk(&L)) return e->code;
  /* the parsed graph: struct, nodes, entries, kernel arguments, outputs then inputs, the
   * shape pool (as large as every dim; the part sharing saves is left to the storage) */
  o_ent = (uint32_t)sizeof(minrt) + L.n_nodes * (uint32_t)sizeof(mnode);
  o_args = o_ent + L.n_ent * (uint32_t)sizeof(mentry);
  o_ptr = o_args + (L.n_args + L.n_ent - L.n_plain) * (uint32_t)sizeof(TVMFFIAny);
  o_shp = o_ptr + AL8((L.n_heads + L.n_nodes) * (uint32_t)sizeof(void *));
  /* dims may repeat (a key given twice): up to 2^30 in a 2 GiB JSON, so 64-bit here */
  if (((uint64_t)o_shp + 8 * (uint64_t)L.n_dims) >> 31) return fail(&L, M_ARENA_2G, -1);
  g = o_shp + 8 * L.n_dims;
  *need = g;
  if (g > arena_len) return fail(&L, M_ARENA, g);
  memset(b, 0, g);
  m->nodes = (mnode *)(m + 1);
  m->ent = (mentry *)(b + o_ent);
  L.args = (TVMFFIAny *)(b + o_args);
  m->outputs = (DLTensor **)(b + o_ptr);
  m->inputs = m->outputs + L.n_heads;
  m->err = e;
  m->n_nodes = L.n_nodes;
  m->n_ent = L.n_ent;
  m->n_outputs = L.n_heads;
  L.m = m;
  L.ent = m->ent;
  L.nodes = m->nodes;
  L.shp = L.shp0 = (int64_t *)(void *)(b + o_shp);
  if (walk(&L)) return e->code;
  /* storage: each id as large as its largest entry; params use none of it (used in
   * place, or copied to a region of their own) */
  ent = m->ent;
  end = ent + L.n_ent;
  for (en = ent; en < end; en++)
    if (en->kind <= K_INPUT && ent[en->src.sid].store.size < en->nbytes)
      ent[en->src.sid].store.size = en->nbytes;
  off = top = AL64((uint32_t)((uint8_t *)L.shp - b));
#ifdef MINRT_GUARD
  minrt_guards.n = 0;
  place(&off, 0); /* a guard after minrt's own tables */
#endif
  for (en = ent; en < end; en++) {
    en->store.offset = place(&off, en->store.size);
    if (en->kind == K_PCOPY) en->src.copy_at = place(&off, en->nbytes), cp += AL64(en->nbytes);
  }
  act = off;
  k = place(&off, (uint32_t)a->workspace_bytes);
  if (off >> 31) { /* no arena will do */
    *need = 0;
    return fail(&L, M_ARENA_2G, -1);
  }
  /* never less than the first call's need g, so the size it reports always loads (the
   * pool's unshared part then counts as graph) */
  *need = off > g ? (size_t)off : g;
  if (*need > arena_len) return fail(&L, M_ARENA, (long)*need);
  m->arena_use[MINRT_USE_GRAPH] = (uint32_t)(*need - (off - top));
  m->arena_use[MINRT_USE_ACTIVATIONS] = (uint32_t)(act - top - cp);
  m->arena_use[MINRT_USE_WORKSPACE] = (uint32_t)(off - act);
  m->arena_use[MINRT_USE_WEIGHT_COPIES] = cp;
  m->ws = m->ws_top = b + k;
  m->ws_end = b + off - MINRT_GUARD_BYTES;
#ifdef MINRT_GUARD
  for (k = 0; k < minrt_guards.n; k++)
    memset(b + minrt_guards.at[k], MINRT_GUARD_FILL, minrt_guards.end[k] - minrt_guards.at[k]);
  minrt_guards.arena = b;
#endif
  for (en = ent; en < end; en++) {
    if (en->kind == K_ALIAS) en->t.data = ent[en->src.alias].t.data;
    else if (en->kind == K_PCOPY) en->t.data = memcpy(b + en->src.copy_at, en->t.data, en->nbytes);
    else if (en->kind <= K_INPUT) {
      en->t.data = b + ent[en->src.sid].store.offset;
      if (en->kind) m->inputs[m->n_inputs++] = &en->t; /* in node order */
    }
  }
  *out = m;
  return 0;
}
