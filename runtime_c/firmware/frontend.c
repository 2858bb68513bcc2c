/* frontend.c: the firmware's side of the framed protocol (harness/formats/frames.py is the
 * specification; proto/frame.c and proto/tensors.c are the codecs minrt-run uses too), for a
 * UART with no OS, no heap and no stdio.
 *
 * Where it differs from minrt-run --serial, inside the protocol:
 * - the models are in flash, laid out at build time (models.h: minrt's tables as constants,
 *   params.bin's weights used in place): the PUT of the graph blob carries the graph's sha256
 *   (32 bytes), which selects the model; params are never sent (the host checks them against
 *   the image's manifest).
 * - the outputs blob is raw: each output's data in the graph's order (the host names them
 *   output0, output1, ... and knows their dtypes and shapes from the image's manifest).
 * RAM: no buffer of its own for the inputs or outputs, and none for minrt's tables (they are
 * in flash, models.h). The inputs blob is received into the arena's tail, which the builder
 * keeps clear of every model's inputs and outputs: RUN copies it into the model's inputs once
 * (the storage plan keeps inputs for the whole run), the kernels may then overwrite the tail,
 * and the outputs are copied there after the run for GET. A later RUN without a new inputs
 * blob runs on the inputs the model holds (every RUN copies the model's struct from flash,
 * nothing else); one of another model needs the blob again (INCOMPLETE). New inputs end the
 * outputs.
 * - RUN answers a binary timing record (frames.py TIMING_RECORD): SysTick counts at the
 *   processor clock, not microseconds, and the peak stack measured by paint.
 * - ERROR carries its code and, for load and run failures, minrt's message: no English of
 *   its own (frames.py holds the texts).
 * - BYE is acknowledged and the firmware keeps serving; it never exits.
 * The device announces itself (HELLO, seq 0) at boot and after every quiet period, when it
 * also drops a partial frame; it sends BUSY from the tick interrupt while a RUN executes. */
#include <string.h>

#include "board.h"
#include "frame.h"
#include "minrt.h"
#include "models.h"
#include "tensors.h"

#ifndef FW_MAX_PAYLOAD
#define FW_MAX_PAYLOAD 64
#endif
#ifndef FW_CLOCK_HZ
#define FW_CLOCK_HZ 25000000u
#endif

/* RUN's answer (frames.py TIMING_RECORD), built in place in the response buffer */
struct timing_record {
  uint32_t iters, tick_hz, arena, stack;
  uint64_t lo, sum, hi;
};

/* All of the front end's state in one place (one base address for the code to load), the
 * scalars first (short offsets). */
static struct {
  uint32_t rx_len, tx_len;
  const struct fw_model *model; /* selected by the graph's sha256 */
  uint32_t in_total, in_filled; /* of the inputs blob; total ~0 before its first chunk */
  const struct fw_model *in_model; /* whose inputs hold the blob (consumed), 0: still in fw_inputs */
  uint32_t out_len;             /* bytes of fw_outputs valid, 0 before a RUN or after new inputs */
  volatile uint32_t busy;       /* while a RUN executes: its seq + 1, else 0 */
  uint32_t busy_ticks;          /* tick interrupts until the next BUSY */
  struct frame_served served;
  union { /* the last response, for a repeated request */
    uint8_t frame[FRAME_OVERHEAD + FW_MAX_PAYLOAD];
    struct {
      uint8_t hdr[FRAME_HDR];
      struct timing_record rec;
    } timing;
  } tx;
  uint8_t rx[FRAME_OVERHEAD + FW_MAX_PAYLOAD];
  minrt_err err; /* the RUN's load and run errors */
  minrt m; /* the selected model's struct (its tables stay in flash) */
} st;

static void send(const uint8_t *f, uint32_t n) {
  while (n--) uart_put(*f++);
}

/* A frame that is not a response (the announcement, NAK, BUSY): the held response stays. */
static void notice(unsigned kind, unsigned seq, uint32_t n, const uint8_t *p) {
  uint8_t f[FRAME_OVERHEAD + 3];
  if (n) memcpy(f + FRAME_HDR, p, n);
  send(f, frame_seal(f, kind, seq, n));
}

/* The response to the current request, its payload at st.tx.frame + FRAME_HDR. */
static void respond(unsigned kind, unsigned seq, uint32_t n) {
  st.tx_len = frame_seal(st.tx.frame, kind, seq, n);
  send(st.tx.frame, st.tx_len);
}

static void ack(unsigned seq) { respond(FRAME_ACK, seq, 0); }

/* ERROR: the code, then minrt's message when there is one (a RUN that fails ends its BUSY). */
static void error(unsigned seq, unsigned code, const char *msg) {
  uint32_t n = 1;
  st.busy = 0;
  st.tx.frame[FRAME_HDR] = (uint8_t)code;
#ifndef MINRT_NO_MESSAGES
  while (msg && *msg && n < FW_MAX_PAYLOAD) st.tx.frame[FRAME_HDR + n++] = (uint8_t)*msg++;
#else
  (void)msg;
#endif
  respond(FRAME_ERROR, seq, n);
}

static const uint8_t hello_payload[3] = {FRAME_VERSION, FW_MAX_PAYLOAD & 0xFF, FW_MAX_PAYLOAD >> 8};

/* PUT: the graph's sha256 selects a model; the inputs are kept for RUN. */
static void on_put(unsigned seq, const uint8_t *p, uint32_t n) {
  uint32_t off, total;
  if (n < 9 || (p[0] != FRAME_BLOB_GRAPH && p[0] != FRAME_BLOB_INPUTS)) return error(seq, FRAME_E_PUT, 0);
  off = frame_u32(p + 1);
  total = frame_u32(p + 5);
  n -= 9;
  if (p[0] == FRAME_BLOB_GRAPH) {
    if (!off && total == 32 && n == 32)
      for (st.model = fw_models; st.model < fw_models + fw_n_models; st.model++)
        if (!memcmp(st.model->sha256, p + 9, 32)) return ack(seq);
    st.model = 0;
    return error(seq, FRAME_E_MODEL, 0);
  }
  if (total > fw_tail_bytes) return error(seq, FRAME_E_PUT_SIZE, 0);
  if (!off) st.in_total = total, st.in_filled = 0, st.in_model = 0;
  st.out_len = 0; /* the blob overwrites them */
  if (total != st.in_total || off != st.in_filled || n > total - off) return error(seq, FRAME_E_PUT_ORDER, 0);
  memcpy(fw_inputs + off, p + 9, n);
  st.in_filled += n;
  ack(seq);
}

/* RUN: u32 iters, u32 workspace (the image's own is used) -> ACK with the timing record. */
static void on_run(unsigned seq, const uint8_t *p, uint32_t n) {
  struct timing_record *rec = &st.tx.timing.rec; /* Cortex-M is little-endian, as the record */
  minrt *m;
  size_t at;
  uint32_t iters, i;
  int bad;
  uint64_t t0, dt;
  if (n != 8) return error(seq, FRAME_E_RUN, 0);
  iters = frame_u32(p);
  if (iters - 1u >= FRAME_MAX_ITERS) return error(seq, FRAME_E_ITERS, 0);
  if (!st.model || st.in_filled != st.in_total || (st.in_model && st.in_model != st.model))
    return error(seq, FRAME_E_INCOMPLETE, 0);
  st.out_len = 0;
  m = &st.m; /* laid out at build time: its struct is all there is to load (every RUN: no test) */
  *m = *st.model->model;
  m->err = &st.err;
  if (!st.in_model) { /* once: the run may overwrite the blob, never the inputs */
    if ((bad = tensors_set_inputs(m, fw_inputs, st.in_filled, &at)) != 0)
      return error(seq, FRAME_E_INPUTS + (unsigned)bad, 0);
    st.in_model = st.model;
  }
  rec->lo = ~(uint64_t)0;
  rec->hi = rec->sum = 0;
  notice(FRAME_BUSY, seq, 0, 0); /* at once: the host stops resending RUN */
  st.busy = seq + 1;             /* then from the tick interrupt (never while main writes) */
  for (i = 0; i < iters; i++) {
    t0 = ticks_now();
    if (minrt_run(m)) return error(seq, FRAME_E_EXEC, st.err.msg);
    dt = ticks_now() - t0;
    if (dt < rec->lo) rec->lo = dt;
    if (dt > rec->hi) rec->hi = dt;
    rec->sum += dt;
  }
  st.busy = 0;
  /* the outputs raw, in order, into the tail (the builder sized it for every model's outputs):
   * the host names them and knows their shapes */
  for (i = 0; i < m->n_outputs; i++) {
    const DLTensor *t = m->outputs[i];
    size_t nbytes = minrt_nbytes(t);
    memcpy(fw_outputs + st.out_len, t->data, nbytes);
    st.out_len += (uint32_t)nbytes;
  }
  rec->iters = iters;
  rec->tick_hz = FW_CLOCK_HZ;
  rec->arena = fw_arena_bytes;
  rec->stack = stack_used();
  respond(FRAME_ACK, seq, sizeof *rec);
}

/* GET: u8 blob (the outputs only), u32 offset, u16 max -> ACK: u32 total, data. */
static void on_get(unsigned seq, const uint8_t *p, uint32_t n) {
  uint32_t off, len;
  if (n != 7 || p[0] != FRAME_BLOB_OUTPUTS) return error(seq, FRAME_E_GET, 0);
  if (!st.out_len) return error(seq, FRAME_E_NO_OUTPUTS, 0);
  off = frame_u32(p + 1);
  len = frame_u16(p + 5);
  if (off > st.out_len) return error(seq, FRAME_E_GET_OFFSET, 0);
  if (len > FW_MAX_PAYLOAD - 4) len = FW_MAX_PAYLOAD - 4;
  if (len > st.out_len - off) len = st.out_len - off;
  frame_put32(st.tx.frame + FRAME_HDR, st.out_len);
  memcpy(st.tx.frame + FRAME_HDR + 4, fw_outputs + off, len);
  respond(FRAME_ACK, seq, len + 4);
}

static void on_request(const struct frame_view *f) {
  if (frame_is_repeat(&st.served, f)) {
    send(st.tx.frame, st.tx_len);
    return;
  }
  switch (f->kind) {
  case FRAME_HELLO: /* a (new) host session */
    memcpy(st.tx.frame + FRAME_HDR, hello_payload, sizeof hello_payload);
    respond(FRAME_HELLO, f->seq, sizeof hello_payload);
    break;
  case FRAME_PUT: on_put(f->seq, f->payload, f->len); break;
  case FRAME_RUN: on_run(f->seq, f->payload, f->len); break;
  case FRAME_GET: on_get(f->seq, f->payload, f->len); break;
  case FRAME_BYE: ack(f->seq); break;
  default: error(f->seq, FRAME_E_KIND, 0); break;
  }
  frame_remember(&st.served, f);
}

/* One received byte; returns 1 when it completed a request. */
static int feed(uint8_t c) {
  struct frame_view f;
  size_t used, i;
  int found, got = 0;
  if (st.rx_len == sizeof st.rx) st.rx_len = 0; /* cannot happen: a longer frame's header is refused */
  st.rx[st.rx_len++] = c;
  do {
    found = frame_scan(st.rx, st.rx_len, FW_MAX_PAYLOAD, &f, &used);
    if (found != FRAME_NEED && !f.from_device) {
      if (found == FRAME_DAMAGED) notice(FRAME_NAK, f.seq, 0, 0);
      else on_request(&f), got = 1;
    }
    st.rx_len -= used;
    for (i = 0; i < st.rx_len; i++) st.rx[i] = st.rx[i + used]; /* forward: libc's memmove is 256 B */
  } while (found != FRAME_NEED);
  return got;
}

void ticks_hook(void) {
  if (st.busy && !st.busy_ticks--) { /* every 0.5 s */
    st.busy_ticks = 4;
    notice(FRAME_BUSY, st.busy - 1, 0, 0);
  }
}

#ifdef FW_PROBE
/* The build's probe image: for every model, minrt_load (which checks the graph against its
 * kernels) with minrt's own size query and then one run (zeroed inputs) with the stack painted,
 * printed as text lines "minrt-arena <index> <bytes>" and "minrt-stack <index> <peak bytes so
 * far>" (or "minrt-error <index> <message>"), then the end line. */
static void say(const char *s) {
  while (*s) uart_put((uint8_t)*s++);
}

static void say_u32(uint32_t v) {
  char d[12], *p = d + sizeof d - 1;
  *p = 0;
  do *--p = (char)('0' + v % 10); while (v /= 10);
  say(p);
}

static void say_num(const char *what, uint32_t i, uint32_t v) {
  say(what);
  say_u32(i);
  say(" ");
  say_u32(v);
  say("\n");
}

int main(void) {
  minrt *m;
  size_t need, have;
  uint32_t i;
  int rc, tries, k;
  (void)feed;
  uart_init();
  for (i = 0; i < fw_n_models; i++) {
    /* as documented in minrt.h: at most three calls find the exact size */
    for (need = have = 0, rc = MINRT_E_ARENA, tries = 0; tries < 4; tries++) {
      rc = minrt_load(&m, &fw_models[i].artifact, fw_arena, have, &need, &st.err);
      if (rc != MINRT_E_ARENA || need <= have || need > fw_arena_bytes) break;
      have = need;
    }
    if (rc == 0) {
      say_num("minrt-arena ", i, (uint32_t)have);
      for (k = 0; k < minrt_num_inputs(m); k++) memset(minrt_input(m, k)->data, 0, minrt_nbytes(minrt_input(m, k)));
      if (minrt_run(m) == 0) say_num("minrt-stack ", i, stack_used());
    } else if (rc == MINRT_E_ARENA) { /* too large for the probe: the build says so */
      say_num("minrt-arena ", i, (uint32_t)need);
    } else {
      say("minrt-error ");
      say_u32(i);
      say(" ");
      say(st.err.msg);
      say("\n");
    }
  }
  say("minrt-probe-done\n");
  for (;;) {
  }
}
#else
int main(void) {
  uint32_t quiet_since; /* low 32 bits of the ticks: the loop looks far more often than they wrap */
  int c;
  st.in_total = ~0u;
  uart_init();
  ticks_init();
  notice(FRAME_HELLO, 0, sizeof hello_payload, hello_payload);
  quiet_since = (uint32_t)ticks_now();
  for (;;) {
    c = uart_get();
    if (c >= 0) {
      feed((uint8_t)c);
      quiet_since = (uint32_t)ticks_now();
    } else if ((uint32_t)ticks_now() - quiet_since > FW_CLOCK_HZ / 1000u * FRAME_QUIET_MS) {
      st.rx_len = 0; /* a partial frame whose sender is gone: a new session starts clean */
      notice(FRAME_HELLO, 0, sizeof hello_payload, hello_payload);
      quiet_since = (uint32_t)ticks_now();
    } else {
      /* sleep until a byte or a tick (under QEMU -icount, virtual time then follows real time) */
      __asm__ volatile("wfi");
    }
  }
}
#endif
