/* frontend.c: the firmware's side of the framed protocol of `minrt-run --serial`
 * (harness/formats/frames.py is the specification; this is a second implementation of it for a
 * UART with no OS, no heap and no stdio).
 *
 * Differences from the runner, all inside the protocol:
 * - graph.json and params.bin are in flash. A PUT of graph.json selects the model whose
 *   graph it is (compared chunk by chunk, nothing stored); a PUT of params.bin is compared
 *   with that model's weights, and an empty one (total 0) means "the image's own".
 * - RUN answers {"iters", "arena_bytes", "model", "min_ticks", "mean_ticks", "max_ticks",
 *   "tick_hz"}: SysTick counts at the processor clock, not microseconds.
 * - BYE is acknowledged and the firmware keeps serving; it never exits.
 * - The cached response is repeated only for the very same request frame (same CRC over kind,
 *   seq, length and payload), as serial.c does.
 * The device announces itself (HELLO, seq 0) at boot and every 0.5 s of quiet line, and
 * sends BUSY from the tick interrupt while a RUN executes. */
#include <string.h>

#include "board.h"
#include "minrt.h"
#include "models.h"

enum { K_HELLO = 1, K_PUT = 2, K_RUN = 3, K_GET = 4, K_BYE = 5,
       K_ACK = 6, K_NAK = 7, K_ERROR = 8, K_BUSY = 9 };
enum { FROM_DEVICE = 0x80, VERSION = 1, HDR = 8, OVERHEAD = 12 };
#ifndef FW_MAX_PAYLOAD
#define FW_MAX_PAYLOAD 1024
#endif
#ifndef FW_CLOCK_HZ
#define FW_CLOCK_HZ 25000000u
#endif
#define NONE 0xFFFFFFFFu

static uint8_t rx[HDR + FW_MAX_PAYLOAD + 4];
static uint32_t rx_len;
static uint8_t tx[HDR + FW_MAX_PAYLOAD + 4]; /* last response, for a repeated request */
static uint32_t tx_len;
static int served;
static uint32_t last_crc; /* the last request served, by its frame CRC (kind, seq, length, payload) */

static struct {
  uint32_t cand;            /* models whose graph.json matches every chunk so far */
  uint32_t total, filled;   /* of the graph.json being sent */
  uint32_t sel;             /* the selected model, NONE until a whole graph matched */
  uint32_t params_ok;       /* params checked (or empty) for model sel */
  uint32_t params_filled;
  uint32_t in_total, in_filled;
  uint32_t out_len;         /* bytes of fw_outputs valid, 0 before a RUN */
} st = {0, 0, 0, NONE, 0, 0, 0, 0, 0};

static volatile int busy_seq = -1; /* >= 0 while a RUN executes */

/* ---- CRC-32 (zlib polynomial), bitwise: no 1 KiB table in RAM or flash ---- */
static uint32_t crc32(const uint8_t *p, uint32_t n) {
  uint32_t c = 0xFFFFFFFFu;
  int k;
  while (n--) {
    c ^= *p++;
    for (k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

static uint32_t get_u32(const uint8_t *p) {
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}
static unsigned get_u16(const uint8_t *p) { return p[0] | p[1] << 8; }
static void put_u16(uint8_t *p, unsigned v) { p[0] = v & 0xFF; p[1] = (v >> 8) & 0xFF; }
static void put_u32(uint8_t *p, uint32_t v) { put_u16(p, v & 0xFFFF); put_u16(p + 2, v >> 16); }

/* A device frame in f (payload already at f + HDR); returns its length. */
static uint32_t seal(uint8_t *f, unsigned kind, unsigned seq, uint32_t n) {
  f[0] = 0xA5;
  f[1] = 0x5A;
  f[2] = (uint8_t)(kind | FROM_DEVICE);
  f[3] = (uint8_t)seq;
  put_u16(f + 4, n);
  put_u16(f + 6, crc32(f + 2, 4) & 0xFFFF);
  put_u32(f + HDR + n, crc32(f + 2, HDR - 2 + n));
  return HDR + n + 4;
}

static void send(const uint8_t *f, uint32_t n) {
  while (n--) uart_put(*f++);
}

/* A small frame that is not a response (announcements, NAK, BUSY). */
static void notice(unsigned kind, unsigned seq, const uint8_t *p, uint32_t n) {
  uint8_t f[OVERHEAD + 40];
  memcpy(f + HDR, p, n);
  send(f, seal(f, kind, seq, n));
}

/* The response to the current request, payload at tx + HDR. */
static int respond(unsigned kind, unsigned seq, uint32_t n) {
  tx_len = seal(tx, kind, seq, n);
  send(tx, tx_len);
  return 0;
}

/* ---- text for ERROR frames and the timing line ---- */
static uint32_t add(uint32_t at, const char *s) {
  while (*s && at < FW_MAX_PAYLOAD) tx[HDR + at++] = (uint8_t)*s++;
  return at;
}

static uint32_t add_u64(uint32_t at, uint64_t v) {
  char d[21], *p = d + sizeof d - 1;
  *p = 0;
  do *--p = (char)('0' + v % 10); while (v /= 10);
  return add(at, p);
}

static int error3(unsigned seq, const char *a, const char *b, const char *c) {
  return respond(K_ERROR, seq, add(add(add(0, a), b), c));
}

static int error(unsigned seq, const char *msg) { return error3(seq, msg, "", ""); }

static void hello(unsigned seq, int announce) {
  uint8_t p[32];
  static const char ident[] = "minrt firmware";
  p[0] = VERSION;
  put_u16(p + 1, FW_MAX_PAYLOAD);
  memcpy(p + 3, ident, sizeof ident - 1);
  if (announce) {
    notice(K_HELLO, 0, p, 3 + sizeof ident - 1);
  } else {
    memcpy(tx + HDR, p, 3 + sizeof ident - 1);
    respond(K_HELLO, seq, 3 + sizeof ident - 1);
  }
}

/* ---- PUT ---- */
static uint32_t model_names(uint32_t at) {
  uint32_t i;
  for (i = 0; i < fw_n_models; i++) at = add(add(at, i ? ", " : ""), fw_models[i].name);
  return at;
}

static void put_graph(unsigned seq, uint32_t off, uint32_t total, const uint8_t *d, uint32_t n) {
  uint32_t i;
  if (off == 0) {
    st.cand = 0;
    for (i = 0; i < fw_n_models && i < 32; i++)
      if (fw_models[i].graph_len == total) st.cand |= 1u << i;
    st.total = total;
    st.filled = 0;
    st.sel = NONE;
    st.params_ok = 0;
  }
  if (total != st.total || off != st.filled || n > total - off) {
    error(seq, "firmware: PUT graph: chunk out of order or past its end");
    return;
  }
  for (i = 0; i < fw_n_models && i < 32; i++)
    if ((st.cand >> i & 1u) && memcmp(fw_models[i].graph + off, d, n)) st.cand &= ~(1u << i);
  st.filled += n;
  if (!st.cand) {
    uint32_t at = add(0, "firmware: graph.json is none of this image's models (");
    respond(K_ERROR, seq, add(model_names(at), "): rebuild the firmware"));
    return;
  }
  if (st.filled == st.total)
    for (i = 0; st.sel == NONE; i++)
      if (st.cand >> i & 1u) st.sel = i;
  respond(K_ACK, seq, 0);
}

static void put_params(unsigned seq, uint32_t off, uint32_t total, const uint8_t *d, uint32_t n) {
  const struct fw_model *m;
  if (st.sel == NONE) {
    error(seq, "firmware: PUT params: send graph.json first (it selects the model)");
    return;
  }
  m = &fw_models[st.sel];
  if (off == 0) st.params_filled = 0, st.params_ok = 0;
  if (total != 0 && total != m->params_len) {
    error3(seq, "firmware: params.bin differs from the weights in flash for ", m->name, "");
    return;
  }
  if (off != st.params_filled || n > total - off) {
    error(seq, "firmware: PUT params: chunk out of order or past its end");
    return;
  }
  if (memcmp(m->params + off, d, n)) {
    error3(seq, "firmware: params.bin differs from the weights in flash for ", m->name, "");
    return;
  }
  st.params_filled += n;
  st.params_ok = st.params_filled == total;
  respond(K_ACK, seq, 0);
}

static void put_inputs(unsigned seq, uint32_t off, uint32_t total, const uint8_t *d, uint32_t n) {
  if (total > fw_inputs_bytes) {
    uint32_t at = add_u64(add(0, "firmware: inputs of "), total);
    respond(K_ERROR, seq, add(add_u64(add(at, " bytes exceed the image's input buffer of "),
                                      fw_inputs_bytes), " bytes"));
    return;
  }
  if (off == 0) st.in_total = total, st.in_filled = 0;
  if (total != st.in_total || off != st.in_filled || n > total - off) {
    error(seq, "firmware: PUT inputs: chunk out of order or past its end");
    return;
  }
  memcpy(fw_inputs + off, d, n);
  st.in_filled += n;
  respond(K_ACK, seq, 0);
}

static void on_put(unsigned seq, const uint8_t *p, uint32_t n) {
  if (n < 9 || p[0] > 2) {
    error(seq, "firmware: PUT: bad blob id or short payload");
    return;
  }
  if (p[0] == 0) put_graph(seq, get_u32(p + 1), get_u32(p + 5), p + 9, n - 9);
  else if (p[0] == 1) put_params(seq, get_u32(p + 1), get_u32(p + 5), p + 9, n - 9);
  else put_inputs(seq, get_u32(p + 1), get_u32(p + 5), p + 9, n - 9);
}

/* ---- RUN ---- */
static const uint8_t list_magic[8] = {0xB7, 0x9C, 0x04, 0x05, 0x4F, 0x8D, 0xE5, 0xF7};
static const uint8_t tensor_magic[8] = {0x3F, 0xA1, 0xB4, 0x96, 0xF0, 0x40, 0x5E, 0xDD};

static uint64_t rd64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

/* Sets every input from the NDArray-list in fw_inputs; NULL or what is wrong. */
static const char *set_inputs(minrt *m) {
  const uint8_t *b = fw_inputs;
  uint32_t len = st.in_filled, p = 24, q, i, k, n;
  uint64_t nl;
  if (len < 24 || memcmp(b, list_magic, 8)) return "inputs: not an NDArray-list";
  n = (uint32_t)rd64(b + 16);
  if (rd64(b + 16) != (uint64_t)minrt_num_inputs(m)) return "inputs: not one tensor per graph input";
  for (q = p, i = 0; i < n; i++) {
    if (len - p < 8 || (nl = rd64(b + p)) > len - p - 8) return "inputs: truncated name";
    p += 8 + (uint32_t)nl;
  }
  if (len - p < 8 || rd64(b + p) != n) return "inputs: tensor count";
  for (p += 8, i = 0; i < n; i++) {
    const DLTensor *t;
    int idx;
    uint32_t ndim, bytes;
    nl = rd64(b + q);
    idx = minrt_input_index(m, (const char *)b + q + 8, (size_t)nl);
    q += 8 + (uint32_t)nl;
    if (idx < 0) return "inputs: a name that is no graph input";
    t = minrt_input(m, idx);
    if (len - p < 32 || memcmp(b + p, tensor_magic, 8)) return "inputs: bad tensor header";
    ndim = get_u32(b + p + 24);
    if (ndim != (uint32_t)t->ndim || memcmp(b + p + 28, &t->dtype, 4))
      return "inputs: dtype/ndim differ from the graph input";
    p += 32;
    if ((len - p) / 8 < ndim + 1) return "inputs: truncated shape";
    for (k = 0; k < ndim; k++)
      if ((int64_t)rd64(b + p + 8 * k) != t->shape[k]) return "inputs: shape differs from the graph input";
    p += 8 * ndim;
    bytes = (uint32_t)minrt_nbytes(t);
    if (rd64(b + p) != bytes || len - p - 8 < bytes) return "inputs: bad nbytes or truncated data";
    p += 8;
    if (minrt_set_input(m, idx, b + p, bytes)) return "inputs: rejected by minrt";
    p += bytes;
  }
  return 0;
}

typedef struct {
  uint32_t len;
} sink;

static void wr(sink *s, const void *src, uint32_t n) {
  if (s->len + n <= fw_outputs_bytes && n) memcpy(fw_outputs + s->len, src, n);
  s->len += n;
}

static void wr64(sink *s, uint64_t v) {
  uint8_t b[8];
  put_u32(b, (uint32_t)v);
  put_u32(b + 4, (uint32_t)(v >> 32));
  wr(s, b, 8);
}

/* The outputs as an NDArray-list (output0, output1, ...); returns its size. */
static uint32_t write_outputs(const minrt *m) {
  sink s = {0};
  int i, k, n = minrt_num_outputs(m);
  char name[12] = "output";
  wr(&s, list_magic, 8);
  wr64(&s, 0);
  wr64(&s, (uint64_t)n);
  for (i = 0; i < n; i++) {
    uint32_t len = 6;
    if (i >= 10) name[len++] = (char)('0' + i / 10 % 10);
    name[len++] = (char)('0' + i % 10);
    wr64(&s, len);
    wr(&s, name, len);
  }
  wr64(&s, (uint64_t)n);
  for (i = 0; i < n; i++) {
    const DLTensor *t = minrt_output(m, i);
    uint8_t hdr[16] = {1}; /* DLDevice {kDLCPU, 0}, ndim, dtype */
    put_u32(hdr + 8, (uint32_t)t->ndim);
    memcpy(hdr + 12, &t->dtype, 4);
    wr(&s, tensor_magic, 8);
    wr64(&s, 0);
    wr(&s, hdr, 16);
    for (k = 0; k < t->ndim; k++) wr64(&s, (uint64_t)t->shape[k]);
    wr64(&s, minrt_nbytes(t));
    wr(&s, t->data, (uint32_t)minrt_nbytes(t));
  }
  return s.len;
}

static int load(const struct fw_model *fm, minrt **m, minrt_err *err, size_t *need, size_t have) {
  minrt_artifact a;
  memset(&a, 0, sizeof a);
#ifdef FW_SIGNATURES
  a.signatures = (const minrt_signatures *)fm->signatures; /* each model its own kernels */
#endif
  a.graph_json = fm->graph;
  a.graph_len = fm->graph_len;
  a.params = fm->params;
  a.params_len = fm->params_len;
  a.workspace_bytes = fm->workspace;
  return minrt_load(m, &a, fw_arena, have, need, err);
}

static int on_run(unsigned seq, const uint8_t *p, uint32_t n) {
  static minrt_err err;
  const struct fw_model *fm;
  minrt *m;
  size_t need = 0;
  const char *bad;
  uint32_t iters, i, at;
  uint64_t t0, dt, lo = 0, hi = 0, sum = 0;
  if (n != 8) return error(seq, "firmware: RUN: payload must be 8 bytes");
  iters = get_u32(p);
  if (st.sel == NONE && fw_n_models == 1 && st.total == 0) st.sel = 0;
  if (st.sel == NONE) {
    at = add(0, "firmware: RUN: send graph.json first; this image holds ");
    return respond(K_ERROR, seq, model_names(at));
  }
  fm = &fw_models[st.sel];
  if (st.in_filled != st.in_total || !st.in_total) return error(seq, "firmware: RUN: inputs were not sent completely");
  if (iters < 1 || iters > 1000000u) return error(seq, "run: iters must be 1 to 1000000");
  st.out_len = 0;
  if (load(fm, &m, &err, &need, fw_arena_bytes)) return error3(seq, "load: ", err.msg, "");
  notice(K_BUSY, seq, 0, 0); /* at once: the host stops resending RUN */
  busy_seq = (int)seq;       /* then from the tick interrupt (never while main writes) */
  for (i = 0; i < iters; i++) {
    /* inputs again before every run (the storage plan may reuse an input's buffer) */
    if ((bad = set_inputs(m)) != 0) {
      busy_seq = -1;
      return error(seq, bad);
    }
    t0 = ticks_now();
    if (minrt_run(m)) {
      busy_seq = -1;
      return error3(seq, "run: ", err.msg, "");
    }
    dt = ticks_now() - t0;
    if (!i || dt < lo) lo = dt;
    if (!i || dt > hi) hi = dt;
    sum += dt;
  }
  busy_seq = -1;
  st.out_len = write_outputs(m);
  if (st.out_len > fw_outputs_bytes) {
    st.out_len = 0;
    return error(seq, "firmware: outputs larger than the image's output buffer");
  }
  at = add_u64(add(0, "{\"iters\": "), iters);
  at = add_u64(add(at, ", \"arena_bytes\": "), fw_arena_bytes);
  at = add(add(add(at, ", \"model\": \""), fm->name), "\"");
  at = add_u64(add(at, ", \"min_ticks\": "), lo);
  at = add_u64(add(at, ", \"mean_ticks\": "), sum / iters);
  at = add_u64(add(at, ", \"max_ticks\": "), hi);
  at = add_u64(add(at, ", \"tick_hz\": "), FW_CLOCK_HZ);
  return respond(K_ACK, seq, add(at, "}"));
}

/* ---- GET ---- */
static int on_get(unsigned seq, const uint8_t *p, uint32_t n) {
  uint32_t off, len;
  if (n != 7 || p[0] != 3) return error(seq, "firmware: GET: only the outputs blob (3) can be read");
  if (!st.out_len) return error(seq, "firmware: GET: no outputs (RUN first)");
  off = get_u32(p + 1);
  len = get_u16(p + 5);
  if (off > st.out_len) return error(seq, "firmware: GET: offset past the outputs' end");
  if (len > FW_MAX_PAYLOAD - 4) len = FW_MAX_PAYLOAD - 4;
  if (len > st.out_len - off) len = st.out_len - off;
  put_u32(tx + HDR, st.out_len);
  memcpy(tx + HDR + 4, fw_outputs + off, len);
  return respond(K_ACK, seq, len + 4);
}

/* A repeated request (the very same frame: its response was lost) gets the cached response,
 * never a second execution; anything else is served. */
static void on_request(unsigned kind, unsigned seq, const uint8_t *p, uint32_t n, uint32_t crc) {
  if (kind == K_HELLO) {
    served = 1; /* a new host session: forget the cached response */
    last_crc = crc;
    hello(seq, 0);
    return;
  }
  if (served && crc == last_crc) {
    send(tx, tx_len);
    return;
  }
  switch (kind) {
  case K_PUT: on_put(seq, p, n); break;
  case K_RUN: on_run(seq, p, n); break;
  case K_GET: on_get(seq, p, n); break;
  case K_BYE: respond(K_ACK, seq, 0); break;
  default: error(seq, "firmware: not a request kind"); break;
  }
  served = 1;
  last_crc = crc;
}

static void drop(uint32_t k) {
  memmove(rx, rx + k, rx_len - k);
  rx_len -= k;
}

/* One received byte; returns 1 when it completed a request. */
static int feed(uint8_t c) {
  uint32_t len;
  unsigned kind;
  if (rx_len == sizeof rx) drop(1); /* cannot happen: a longer header is refused */
  rx[rx_len++] = c;
  while (rx_len) {
    if (rx[0] != 0xA5 || (rx_len > 1 && rx[1] != 0x5A)) {
      drop(1);
      continue;
    }
    if (rx_len < HDR) return 0;
    len = get_u16(rx + 4);
    kind = rx[2] & 0x7F;
    if ((crc32(rx + 2, 4) & 0xFFFF) != get_u16(rx + 6) || len > FW_MAX_PAYLOAD || kind < K_HELLO ||
        kind > K_BUSY) {
      drop(1);
      continue;
    }
    if (rx_len < HDR + len + 4) return 0;
    if (crc32(rx + 2, HDR - 2 + len) != get_u32(rx + HDR + len)) {
      if (!(rx[2] & FROM_DEVICE)) notice(K_NAK, rx[3], 0, 0);
      drop(1);
      continue;
    }
    if (!(rx[2] & FROM_DEVICE)) on_request(kind, rx[3], rx + HDR, len, get_u32(rx + HDR + len));
    rx_len = 0;
    return 1;
  }
  return 0;
}

void ticks_hook(void) {
  static unsigned n;
  if (busy_seq >= 0 && ++n % 5 == 0) notice(K_BUSY, (unsigned)busy_seq, 0, 0); /* every 0.5 s */
}

#ifdef FW_PROBE
/* The build's probe image: minrt's own size query for every model, printed as text lines
 * "minrt-arena <index> <bytes>" (or "minrt-error <index> <message>"), then the end line. */
static void say(const char *s) {
  while (*s) uart_put((uint8_t)*s++);
}

static void say_u64(uint64_t v) {
  uint32_t n = add_u64(0, v);
  tx[HDR + n] = 0;
  say((const char *)tx + HDR);
}

int main(void) {
  static minrt_err err;
  minrt *m;
  size_t need, have;
  uint32_t i;
  int rc, tries;
  (void)feed;
  uart_init();
  for (i = 0; i < fw_n_models; i++) {
    /* as documented in minrt.h: at most three calls find the exact size */
    for (need = have = 0, rc = MINRT_E_ARENA, tries = 0; tries < 4; tries++) {
      rc = load(&fw_models[i], &m, &err, &need, have);
      if (rc != MINRT_E_ARENA || need <= have || need > fw_arena_bytes) break;
      have = need;
    }
    if (rc == 0 || rc == MINRT_E_ARENA) { /* too large for the probe: the build says so */
      say("minrt-arena ");
      say_u64(i);
      say(" ");
      say_u64(rc == 0 ? have : need);
    } else {
      say("minrt-error ");
      say_u64(i);
      say(" ");
      say(err.msg);
    }
    say("\n");
  }
  say("minrt-probe-done\n");
  for (;;) {
  }
}
#else
int main(void) {
  uint64_t quiet_since;
  int c;
  uart_init();
  ticks_init();
  hello(0, 1);
  quiet_since = ticks_now();
  for (;;) {
    c = uart_get();
    if (c >= 0) {
      if (feed((uint8_t)c)) quiet_since = ticks_now();
    } else if (ticks_now() - quiet_since > FW_CLOCK_HZ / 2) {
      if (!rx_len) hello(0, 1);
      quiet_since = ticks_now();
    } else {
      /* sleep until a byte or a tick (under QEMU -icount, virtual time then follows real time) */
      __asm__ volatile("wfi");
    }
  }
}
#endif
