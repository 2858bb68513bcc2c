/* The loader: checks a graph.json + params.bin pair completely and lays the model out in
 * the caller's arena. Two passes over the JSON: the first counts (nodes, entries, kernel
 * arguments, heads, dims) so the parsed graph's size is known before anything is written; the
 * second fills it in. Then params are bound, storage ids sized (the largest entry sharing
 * an id) and placed 64-byte aligned in entry order (with a copy of each param that is not
 * aligned in the blob), then the kernels' workspace. `arg_nodes` is not read: the inputs are
 * the null nodes no param is bound to. The first pass is ldr->filling 0, the second 1. */
#include <string.h>
#include "internal.h"

#ifdef __GNUC__
#define NOINLINE __attribute__((noinline)) /* inlined, it grows its callers */
#else
#define NOINLINE
#endif

#define MAX_ITEMS (1u << 20) /* entries per graph */
#define ALIGN8(x) (((x) + 7) & ~7u)
#define ALIGN64(x) (((x) + 63) & ~(uint64_t)63)

enum { KEY_NODES, KEY_HEADS, KEY_ATTRS, KEY_ROWS, NKEYS };

typedef struct {
  json_cursor j;
  minrt_entry *ent;      /* the model's entries, nodes and outputs (second pass) */
  minrt_node *nodes;
  minrt_err *e;
  const minrt_artifact *a;
  const char *err_name;  /* a name for the next error message */
  uint32_t err_name_len;
  int filling;           /* 0: the first pass, which only counts; 1: the second, which fills in */
  uint32_t key_at[NKEYS]; /* where each top-level value starts */
  uint32_t params_pos;   /* params.bin: bytes read */
  uint32_t n_nodes, n_ent, n_args, n_heads, n_plain, n_dims;
  DLTensor **outputs;    /* the model's outputs (second pass) */
  TVMFFIAny *args;
  const int64_t *sig; /* the signature of the node being read: what arg() checks next */
  uint32_t sig_n;
  int64_t *shape_top, *shape_pool; /* the shape pool: its top, its start */
} loader;

static int fail(loader *ldr, int msg, long num) {
  return minrt_fail(ldr->e, msg, num, ldr->err_name, ldr->err_name_len);
}

static int jfail(loader *ldr) { return fail(ldr, M_JSON, ldr->j.pos); }

static int scan_top(loader *ldr) {
  json_cursor *j = &ldr->j;
  const char *keys = "nodes\0heads\0attrs\0node_row_ptr\0";
  int first, k;
  for (first = 1; json_next(j, '}', &first);) {
    k = json_key(j, keys);
    if (k >= 0) ldr->key_at[k] = j->pos;
    json_skip(j); /* on bad JSON, the loop ends */
  }
  if (j->bad || !json_end(j)) return jfail(ldr); /* nothing but spaces after the object */
  for (k = 0; k < NKEYS; k++)
    if (!ldr->key_at[k]) {
      ldr->err_name = list_nth(keys, k), ldr->err_name_len = 127; /* up to its NUL */
      return fail(ldr, M_KEY, -1);
    }
  return 0;
}

/* node_row_ptr: [0, ...increasing..., n_entries]; stores each node's entries */
static int rows(loader *ldr) {
  json_cursor *j = &ldr->j;
  int32_t v, prev = 0;
  uint32_t i;
  int first;
  j->pos = ldr->key_at[KEY_ROWS];
  for (first = 1, i = 0; json_next(j, ']', &first); i++) {
    if ((v = json_int(j)) < -1) break;
    if (i ? v <= prev || v > (int32_t)MAX_ITEMS : v != 0)
      return fail(ldr, M_ROWS, i);
    if (ldr->filling && i) {
      ldr->nodes[i - 1].row = (uint32_t)prev;
      ldr->nodes[i - 1].nout = (uint32_t)(v - prev);
    }
    prev = v;
  }
  if (j->bad) return jfail(ldr);
  if (i < 2) return fail(ldr, M_NO_NODES, -1);
  ldr->n_nodes = i - 1;
  ldr->n_ent = (uint32_t)prev;
  return 0;
}

/* [nid, index(, version)] -> its entry id (0 while counting), for a node id below `limit`;
 * -1 on error */
static int32_t ref(loader *ldr, uint32_t limit, int msg, long num) {
  int64_t v[3];
  int n = json_ints(&ldr->j, v, 3);
  uint32_t nid, idx; /* 0..2^31-1, or -1 */
  if (n < 0) return jfail(ldr), -1;
  if (n < 2 || n > 3 || (nid = (uint32_t)v[0]) >= limit ||
      (idx = (uint32_t)v[1], ldr->filling && idx >= ldr->nodes[nid].nout))
    return fail(ldr, msg, num), -1;
  return ldr->filling ? (int32_t)(ldr->nodes[nid].row + idx) : 0;
}

/* Kernel argument k of the node being read: entry eid's tensor, checked against the
 * kernel's signature (ldr->sig: what is left of it; ldr->sig_n: its argument count). Nonzero
 * if it differs. */
static NOINLINE int arg(loader *ldr, uint32_t k, uint32_t eid) {
  DLTensor *t = &ldr->ent[eid].t;
  uint32_t dt, nd = (uint32_t)t->ndim;
  ldr->args[k].type_index = 7; /* kTVMFFIDLTensorPtr */
  MINRT_ANY_PTR(ldr->args[k]) = t;
  memcpy(&dt, &t->dtype, 4);
  if (k >= ldr->sig_n || *ldr->sig != ((int64_t)nd << 32 | dt) || memcmp(ldr->sig + 1, t->shape, 8 * nd))
    return 1;
  ldr->sig += 1 + nd;
  return 0;
}

/* nodes: [{"op": "null"|"tvm_op", "name": s, "inputs": [[nid, index, version]...],
 *          "attrs": {"func_name": s, ...}}, ...] */
static int parse_nodes(loader *ldr) {
  json_cursor *j = &ldr->j;
  int filling = ldr->filling;
  const minrt_artifact *a = ldr->a;
  minrt_node scratch, *nd; /* pass 1 reads into scratch */
  uint32_t i;
  int first, first_key, first_attr;
  j->pos = ldr->key_at[KEY_NODES];
  ldr->n_args = ldr->n_plain = 0; /* counted again in pass 2 */
  scratch.nout = 1; /* not known in pass 1 */
  for (first = 1, i = 0; json_next(j, ']', &first); i++) {
    const char *fn = 0;
    uint32_t fn_len = 0, in_at = 0, end, c, q;
    int32_t eid = 0;
    int op = -1;
    ldr->err_name = 0;
    if (i >= ldr->n_nodes) return fail(ldr, M_NODE_COUNT, i);
    nd = filling ? &ldr->nodes[i] : &scratch;
    nd->name = 0;
    for (first_key = 1; json_next(j, '}', &first_key);) {
      switch (json_key(j, "op\0name\0inputs\0attrs\0")) {
        case 0: op = json_pick(j, "null\0tvm_op\0", 0); break;
        case 1: if (json_string(j)) nd->name = j->str, nd->name_len = j->str_len; break;
        case 2: in_at = j->pos; json_skip(j); break;
        case 3:
          for (first_attr = 1; json_next(j, '}', &first_attr);)
            if (!json_key_is(j, "func_name")) json_skip(j); /* (bad JSON: does nothing) */
            else if (json_string(j)) fn = j->str, fn_len = j->str_len;
          break;
        default: json_skip(j); /* another key, or bad JSON (then it does nothing) */
      }
    }
    if (j->bad) return jfail(ldr);
    end = j->pos;
    if (op < 0 || !nd->name || !in_at || (op && !fn))
      return fail(ldr, M_NODE_KEYS, i);
    if (op && name_is(fn, fn_len, "__nop")) op = 2;
    nd->op = (uint8_t)op; /* a __nop is not a null node: no param binds it */
    nd->args = ldr->args;
    if (filling && op == 1) {
      const minrt_signatures *t = a->signatures;
      ldr->err_name = fn, ldr->err_name_len = fn_len; /* the node's errors from here name its kernel */
      for (ldr->sig = 0, q = 0; t && q < t->n && !ldr->sig; q++)
        if (!strncmp(t->sigs[q].name, fn, fn_len) && !t->sigs[q].name[fn_len])
          ldr->sig = t->sigs[q].sig, nd->fn = t->sigs[q].fn;
      if (!ldr->sig) return fail(ldr, M_NO_SIG, i);
      if (a->resolve) nd->fn = a->resolve(a->resolve_ctx, fn, fn_len);
      if (!nd->fn) return fail(ldr, M_KERNEL, i);
      ldr->sig_n = (uint32_t)*ldr->sig++;
    }
    j->pos = in_at;
    for (first_key = 1, c = 0; json_next(j, ']', &first_key); c++) {
      if ((eid = ref(ldr, i, M_NODE_INPUT, i)) < 0) return 1;
      if (filling && op == 1 && arg(ldr, c, (uint32_t)eid)) return fail(ldr, M_SIG, i);
    }
    if (j->bad) return jfail(ldr);
    j->pos = end;
    if (op != 1) {
      /* an input has one output and no inputs; a __nop one of each, of the same size */
      if (c != (op == 2) || nd->nout != 1 ||
          (filling && op && ldr->ent[nd->row].nbytes != ldr->ent[eid].nbytes))
        return fail(ldr, M_NODE_ARITY, i);
      ldr->n_plain++;
      if (filling) {
        minrt_entry *en = &ldr->ent[nd->row];
        en->kind = op ? ENTRY_ALIAS : ENTRY_INPUT; /* an input until a param binds it */
        if (op) en->src.alias = (uint32_t)eid;
      }
      continue;
    }
    if ((ldr->n_args += c) > MAX_ITEMS * 4) return fail(ldr, M_NODE_ARGS, i);
    if (filling) {
      for (q = 0; q < nd->nout; q++)
        if (arg(ldr, c + q, nd->row + q)) return fail(ldr, M_SIG, i);
      if ((nd->nargs = (int32_t)(c + q)) != (int32_t)ldr->sig_n) return fail(ldr, M_SIG, i);
      ldr->args += c + q;
    }
  }
  if (j->bad) return jfail(ldr);
  if (i != ldr->n_nodes) return fail(ldr, M_NODE_COUNT, i);
  return 0;
}

/* dtype names, in the order of their DLPack {code, bits}: code = index / 4 (0 int, 1 uint,
 * 2 float, 3 bool written as TVM 0.27 does: code 6), bits = 8 << index % 4. "\1" (a control
 * character, never in a JSON string) holds float8's place. The harness's table is
 * harness/formats/dtypes.py; tests/test_runtime_c.py holds it against this one. */
static const char dtype_names[] = "int8\0int16\0int32\0int64\0uint8\0uint16\0uint32\0uint64\0"
                                  "\1\0float16\0float32\0float64\0bool\0";

/* attrs: {"dltype": ["list_str", [...]], "storage_id": ["list_int", [...]],
 *         "shape": ["list_shape", [[...], ...]], ...} */
static int parse_attrs(loader *ldr) {
  json_cursor *j = &ldr->j;
  minrt_entry scratch; /* pass 1 reads into scratch */
  int64_t dims[MINRT_MAX_NDIM], *s;
  uint32_t e, i, k, got = 0;
  int first, first_entry, first_item, d, key, tag;
  int32_t v;
  j->pos = ldr->key_at[KEY_ATTRS];
  for (first = 1; json_next(j, '}', &first);) {
    key = json_key(j, "dltype\0storage_id\0shape\0");
    if (key < 0) { /* another attribute, or bad JSON (then json_skip does nothing) */
      json_skip(j);
      continue;
    }
    first_item = 1;
    if (!json_next(j, ']', &first_item)) break;
    tag = json_pick(j, "list_str\0list_int\0list_shape\0", ',');
    if (j->bad) break;
    if (tag != key) return fail(ldr, M_TAG, -1);
    for (first_entry = 1, e = 0; json_next(j, ']', &first_entry); e++) {
      minrt_entry *en;
      if (e >= ldr->n_ent) return fail(ldr, M_LIST_LEN, e);
      en = ldr->filling ? &ldr->ent[e] : &scratch;
      if (key == 0) {
        if ((d = json_pick(j, dtype_names, 0)) < -1) break;
        if (d < 0) {
          ldr->err_name = j->str, ldr->err_name_len = j->str_len;
          return fail(ldr, M_DTYPE, e);
        }
        v = (d == 12 ? 6 : d >> 2) | 8 << (d & 3) << 8 | 1 << 16; /* {code, bits, lanes 1} */
        memcpy(&en->t.dtype, &v, 4);
      } else if (key == 1) {
        if ((v = json_int(j)) < -1) break;
        if ((uint32_t)v >= ldr->n_ent) return fail(ldr, M_SID, e);
        en->src.sid = (uint32_t)v;
      } else {
        /* pass 2 reads into the pool's top: no more dims than pass 1 counted */
        s = ldr->filling ? ldr->shape_top : dims;
        if ((d = json_ints(j, s, MINRT_MAX_NDIM)) < 0) break;
        if (d > MINRT_MAX_NDIM) return fail(ldr, M_NDIM, e);
        en->t.shape = s;
        for (en->t.ndim = d; d--;)
          if (s[d] < 0) return fail(ldr, M_DIM, e);
        if (!ldr->filling) {
          ldr->n_dims += (uint32_t)en->t.ndim;
          continue;
        }
        /* the same dims among the pool's last 32 (at any offset): shared */
        k = (uint32_t)(s - ldr->shape_pool);
        for (i = k > 32 ? k - 32 : 0; i + (uint32_t)en->t.ndim <= k; i++)
          if (!memcmp(ldr->shape_pool + i, s, 8 * (uint32_t)en->t.ndim)) break;
        if (i + (uint32_t)en->t.ndim > k) ldr->shape_top += en->t.ndim;
        else en->t.shape = ldr->shape_pool + i;
      }
    }
    if (!json_eat(j, ']')) { /* (also when bad already) */
      j->bad = 1;
      break;
    }
    if (e != ldr->n_ent) return fail(ldr, M_LIST_LEN, e);
    got |= 1u << key;
  }
  if (j->bad) return jfail(ldr);
  if (got != 7) return fail(ldr, M_ATTRS, -1);
  for (e = 0; ldr->filling && e < ldr->n_ent; e++) {
    minrt_entry *en = &ldr->ent[e];
    uint64_t n = en->t.dtype.bits / 8; /* dims and n below 2^31: 32 x 32 bit products */
    for (d = 0; d < en->t.ndim; d++)
      if ((n = (uint32_t)n * (uint64_t)(uint32_t)en->t.shape[d]) > 0x7fffffff)
        return fail(ldr, M_TOO_LARGE, e);
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
static const uint8_t *take(loader *ldr, uint32_t n) {
  const uint8_t *r = (const uint8_t *)ldr->a->params + ldr->params_pos;
  if (n > ldr->a->params_len - ldr->params_pos) {
    fail(ldr, M_TRUNCATED, (long)ldr->params_pos);
    return 0;
  }
  ldr->params_pos += n;
  return r;
}

static const uint8_t list_magic[8] = {0xB7, 0x9C, 0x04, 0x05, 0x4F, 0x8D, 0xE5, 0xF7};
static const uint8_t tensor_magic[8] = {0x3F, 0xA1, 0xB4, 0x96, 0xF0, 0x40, 0x5E, 0xDD};
static const uint8_t aligned_magic[8] = {'m', 'i', 'n', 'r', 't', 'p', 'r', 'm'};

/* params.bin: names first, then tensors; each bound to the null node of that name. Either
 * TVM's NDArray-list (u64 magic, u64 0, u64 count, names as u64 length + bytes, the count
 * again, then per tensor a header and its data) or minrt's aligned container, version 2
 * (runtime_c/README.md): the same first 24 bytes but for the magic and the version (u32 2,
 * u32 0), then per tensor a u64 name length, the name, DLDataType and u32 nbytes, then each
 * tensor's data after zero padding up to a multiple of 64 bytes from the start. */
static int parse_params(loader *ldr) {
  uint32_t n_names, i, name_len, n, at, v2;
  const uint8_t *bytes, *names;
  const minrt_node *nd;
  if (!ldr->a->params_len) return 0;
  if (!(bytes = take(ldr, 24))) return 1;
  v2 = !memcmp(bytes, aligned_magic, 8);
  if (v2 ? rd32(bytes + 8) != 2 : memcmp(bytes, list_magic, 8) || rd32(bytes + 20))
    return fail(ldr, v2 ? M_VERSION : M_HEADER, 8 * (long)v2);
  n_names = rd32(bytes + 16);
  names = bytes + 24;
  for (i = 0; i < n_names; i++) /* a u64 length, the name; in v2 its dtype and nbytes */
    if (!(bytes = take(ldr, 8)) || !take(ldr, rd32(bytes + 4) || rd32(bytes) >> 31 ? ~0u : rd32(bytes) + 8 * v2))
      return 1;
  if (!v2) {
    if (!(bytes = take(ldr, 8))) return 1;
    if (rd32(bytes) != n_names || rd32(bytes + 4)) return fail(ldr, M_COUNT, (long)(ldr->params_pos - 8));
  }
  for (i = 0; i < n_names; i++) {
    minrt_entry *en;
    name_len = rd32(names); /* the names, checked above */
    ldr->err_name = (const char *)names + 8;
    ldr->err_name_len = name_len;
    names += 8 + name_len;
    at = ldr->params_pos;
    if (!v2) {
      if (!(bytes = take(ldr, 16))) return 1;
      if (memcmp(bytes, tensor_magic, 8)) return fail(ldr, M_MAGIC, (long)at);
    }
    /* names compare escape-aware, as for inputs */
    for (nd = ldr->nodes; nd->op || !json_string_equals(nd->name, nd->name_len, ldr->err_name, name_len);)
      if (++nd == ldr->nodes + ldr->n_nodes) return fail(ldr, M_PARAM_NAME, (long)at);
    en = &ldr->ent[nd->row];
    if (en->kind != ENTRY_INPUT) return fail(ldr, M_PARAM_DUP, (long)at);
    if (v2) { /* dtype and nbytes as the graph says (the shape is the graph's), the padding */
      if (rd32(names) != rd32((const uint8_t *)&en->t.dtype) || rd32(names + 4) != en->nbytes) return fail(ldr, M_PARAM_META, (long)at);
      names += 8;
      n = (0u - at) & 63;
    } else {
      /* device {CPU, 0}, ndim, dtype (laid out as in DLTensor), shape, nbytes: exactly what
       * the graph says */
      n = 8 * (uint32_t)en->t.ndim;
      if (!(bytes = take(ldr, n + 24))) return 1;
      if (memcmp(bytes, &en->t.device, 16) || memcmp(bytes + 16, en->t.shape, n) ||
          rd32(bytes + 16 + n) != en->nbytes || rd32(bytes + 20 + n))
        return fail(ldr, M_PARAM_META, (long)at);
      n = 0;
    }
    if (!take(ldr, n) || !(bytes = take(ldr, en->nbytes))) return 1;
    en->t.data = (void *)(uintptr_t)bytes; /* used in place, or the copy's source */
    en->kind = ((uintptr_t)bytes & (MINRT_ALIGN - 1)) ? ENTRY_PARAM_COPY : ENTRY_PARAM_IN_PLACE;
  }
  ldr->err_name = 0, ldr->err_name_len = 0;
  if (ldr->params_pos != ldr->a->params_len) return fail(ldr, M_TRAILING, (long)ldr->params_pos);
  return 0;
}

/* heads: [[nid, index, version], ...], the outputs (counted in the first pass) */
static int parse_heads(loader *ldr) {
  json_cursor *j = &ldr->j;
  uint32_t i;
  int32_t eid;
  int first;
  j->pos = ldr->key_at[KEY_HEADS];
  for (first = 1, i = 0; json_next(j, ']', &first); i++) {
    if ((eid = ref(ldr, ldr->n_nodes, M_HEAD, i)) < 0) return 1;
    if (ldr->filling) ldr->outputs[i] = &ldr->ent[eid].t;
  }
  ldr->n_heads = i;
  return j->bad ? jfail(ldr) : 0;
}

/* Reserves n bytes (64-aligned) at *off, in 64 bits: at most 2^20 regions of under 2^31
 * bytes never wrap; the caller refuses a total past 2^31. The checking build
 * (MINRT_GUARD) puts a guard zone after each region. */
static uint32_t place(uint64_t *off, uint32_t n) {
  uint64_t at = *off;
  *off += ALIGN64((uint64_t)n) + MINRT_GUARD_BYTES;
#ifdef MINRT_GUARD
  if (minrt_guards.n < MINRT_GUARD_MAX) {
    minrt_guards.at[minrt_guards.n] = (uint32_t)(at + n);
    minrt_guards.end[minrt_guards.n++] = (uint32_t)*off;
  }
#endif
  return (uint32_t)at;
}

/* The first pass counts, the second (ldr->filling) fills in (nodes need the entries' sizes
 * from attrs); nonzero on error. */
static int walk(loader *ldr) {
  return rows(ldr) || parse_attrs(ldr) || parse_nodes(ldr) || (ldr->filling && parse_params(ldr)) ||
         parse_heads(ldr);
}

int minrt_load(minrt **out, const minrt_artifact *a, void *arena, size_t arena_len,
               size_t *need, minrt_err *e) {
  loader ldr;
  minrt *m = (minrt *)arena;
  uint8_t *base = (uint8_t *)arena;
  uint64_t off, act;
  uint32_t top, graph_bytes, o_ent, o_args, o_ptr, o_shp, copied = 0, ws_at;
  minrt_entry *en, *end, *ent;
  memset(&ldr, 0, sizeof ldr);
  ldr.e = e;
  ldr.a = a;
  ldr.j.text = a->graph_json;
  ldr.j.text_len = (uint32_t)a->graph_len;
  if (!arena) arena_len = 0;
  *out = 0;
  *need = 0;
  if ((uintptr_t)arena & (MINRT_ALIGN - 1)) return fail(&ldr, M_ALIGN, -1);
  if ((a->graph_len | a->params_len | a->workspace_bytes) >> 31)
    return fail(&ldr, M_BUF_SIZE, -1);
  if (scan_top(&ldr) || walk(&ldr)) return e->code;
  /* the parsed graph: struct, nodes, entries, kernel arguments, outputs then inputs, the
   * shape pool (as large as every dim; the part sharing saves is left to the storage) */
  o_ent = (uint32_t)sizeof(minrt) + ldr.n_nodes * (uint32_t)sizeof(minrt_node);
  o_args = o_ent + ldr.n_ent * (uint32_t)sizeof(minrt_entry);
  o_ptr = o_args + (ldr.n_args + ldr.n_ent - ldr.n_plain) * (uint32_t)sizeof(TVMFFIAny);
  o_shp = o_ptr + ALIGN8((ldr.n_heads + ldr.n_nodes) * (uint32_t)sizeof(void *));
  /* dims may repeat (a key given twice): up to 2^30 in a 2 GiB JSON, so 64-bit here */
  if (((uint64_t)o_shp + 8 * (uint64_t)ldr.n_dims) >> 31) return fail(&ldr, M_ARENA_2G, -1);
  graph_bytes = o_shp + 8 * ldr.n_dims;
  *need = graph_bytes;
  if (graph_bytes > arena_len) return fail(&ldr, M_ARENA, graph_bytes);
  memset(base, 0, graph_bytes);
  m->nodes = (minrt_node *)(m + 1);
  m->ent = (minrt_entry *)(base + o_ent);
  ldr.args = (TVMFFIAny *)(base + o_args);
  m->outputs = (DLTensor **)(base + o_ptr);
  m->inputs = m->outputs + ldr.n_heads;
  m->err = e;
  m->n_nodes = ldr.n_nodes;
  m->n_ent = ldr.n_ent;
  m->n_outputs = ldr.n_heads;
  ldr.filling = 1;
  ldr.outputs = m->outputs;
  ldr.ent = m->ent;
  ldr.nodes = m->nodes;
  ldr.shape_top = ldr.shape_pool = (int64_t *)(void *)(base + o_shp);
  if (walk(&ldr)) return e->code;
  /* storage: each id as large as its largest entry; params use none of it (used in
   * place, or copied to a region of their own) */
  ent = m->ent;
  end = ent + ldr.n_ent;
  for (en = ent; en < end; en++)
    if (en->kind <= ENTRY_INPUT && ent[en->src.sid].store.size < en->nbytes)
      ent[en->src.sid].store.size = en->nbytes;
  off = top = ALIGN64((uint32_t)((uint8_t *)ldr.shape_top - base));
#ifdef MINRT_GUARD
  minrt_guards.n = 0;
  place(&off, 0); /* a guard after minrt's own tables */
#endif
  for (en = ent; en < end; en++) {
    en->store.offset = place(&off, en->store.size);
    if (en->kind == ENTRY_PARAM_COPY)
      en->src.copy_at = place(&off, en->nbytes), copied += ALIGN64(en->nbytes);
  }
  act = off;
  ws_at = place(&off, (uint32_t)a->workspace_bytes);
  if (off >> 31) { /* no arena will do */
    *need = 0;
    return fail(&ldr, M_ARENA_2G, -1);
  }
  /* never less than the first call's need (graph_bytes), so the size it reports always
   * loads (the pool's unshared part then counts as graph) */
  *need = off > graph_bytes ? (size_t)off : graph_bytes;
  if (*need > arena_len) return fail(&ldr, M_ARENA, (long)*need);
  m->arena_use[MINRT_USE_GRAPH] = (uint32_t)(*need - (off - top));
  m->arena_use[MINRT_USE_ACTIVATIONS] = (uint32_t)(act - top - copied);
  m->arena_use[MINRT_USE_WORKSPACE] = (uint32_t)(off - act);
  m->arena_use[MINRT_USE_WEIGHT_COPIES] = copied;
  m->ws = m->ws_top = base + ws_at;
  m->ws_end = base + off - MINRT_GUARD_BYTES;
#ifdef MINRT_GUARD
  for (uint32_t z = 0; z < minrt_guards.n; z++)
    memset(base + minrt_guards.at[z], MINRT_GUARD_FILL, minrt_guards.end[z] - minrt_guards.at[z]);
  minrt_guards.arena = base;
#endif
  for (en = ent; en < end; en++) {
    if (en->kind == ENTRY_ALIAS) en->t.data = ent[en->src.alias].t.data;
    else if (en->kind == ENTRY_PARAM_COPY)
      en->t.data = memcpy(base + en->src.copy_at, en->t.data, en->nbytes);
    else if (en->kind <= ENTRY_INPUT) {
      en->t.data = base + ent[en->src.sid].store.offset;
      if (en->kind == ENTRY_INPUT) m->inputs[m->n_inputs++] = &en->t; /* in node order */
    }
  }
  *out = m;
  return 0;
}
