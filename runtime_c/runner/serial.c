/* serial.c: the device side of the framed protocol (see harness/formats/frames.py, the same text).
 *
 * Frame, little-endian:  A5 5A | type u8 | seq u8 | len u16 | hcheck u16 | payload | crc32 u32
 *   type: kind in bits 0-6, bit 7 set on frames the device sends.
 *   hcheck: low 16 bits of CRC-32 of (type, seq, len): a damaged length is rejected at once.
 *   crc32: zlib's CRC-32 of everything after the magic up to the end of the payload.
 * The host is the master: one request, one response, same seq. A request repeated with the
 * seq and content (its CRC, kind and length) last served gets the cached response again
 * (its response was lost), never a second execution; the same seq with other content is a
 * new request. Anything that is not a valid frame (echo, kernel messages, noise) is skipped
 * byte by byte; a frame whose header is valid but CRC is not is answered by NAK.
 * Kinds: 1 HELLO, 2 PUT, 3 RUN, 4 GET, 5 BYE (requests); 6 ACK, 7 NAK, 8 ERROR (responses);
 * 9 BUSY, sent when a RUN starts and every second until it ends, so the host can tell a
 * slow device from a dead one.
 * Whenever the line has been quiet for 500 ms the device announces itself with a HELLO
 * (seq 0): the host waits for one before its first byte, so it never sends binary to a
 * terminal that is not raw yet, and a new host session can join a runner still serving.
 * Idle time is wall time since the last valid request: line noise does not keep it alive.
 */
#define _POSIX_C_SOURCE 200809L

#include "serial.h"
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum { K_HELLO = 1, K_PUT = 2, K_RUN = 3, K_GET = 4, K_BYE = 5,      /* requests */
       K_ACK = 6, K_NAK = 7, K_ERROR = 8, K_BUSY = 9 };               /* device frames */
enum { FROM_DEVICE = 0x80, VERSION = 1, MAX_PAYLOAD = 4096, HDR = 8, OVERHEAD = 12 };
enum { NBLOBS = 4, BLOB_OUTPUTS = 3 };
#define MAX_BLOB (64u << 20)   /* largest graph/params/inputs accepted: the board has 256 MiB */
#define TICK_MS 500            /* HELLO announcement period on a quiet line */
#define IDLE_MS 15000          /* a host silent this long is gone: exit and give the shell
                                  back (the environment's MINRT_SERIAL_IDLE_S overrides) */
#define LINGER_MS 1000         /* quiet time after BYE before exiting */

static uint32_t crc_table[256];

static void crc_init(void)
{
  uint32_t i, k, c;
  for (i = 0; i < 256; i++) {
    for (c = i, k = 0; k < 8; k++)
      c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32(const uint8_t *p, size_t n)
{
  uint32_t c = 0xFFFFFFFFu;
  while (n--)
    c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static uint32_t get_u32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static unsigned get_u16(const uint8_t *p) { return p[0] | p[1] << 8; }
static void put_u16(uint8_t *p, unsigned v) { p[0] = v & 0xFF; p[1] = (v >> 8) & 0xFF; }
static void put_u32(uint8_t *p, uint32_t v) { put_u16(p, v & 0xFFFF); put_u16(p + 2, v >> 16); }

struct blob {
  uint8_t *mem;       /* malloc'ed block; data is its 64-byte aligned interior */
  uint8_t *data;
  uint32_t total;
  uint32_t filled;
};

struct link {
  int in, out;
  uint8_t rx[2 * (MAX_PAYLOAD + OVERHEAD)];
  size_t rx_len;
  uint8_t tx[MAX_PAYLOAD + OVERHEAD];   /* the last response, kept for repeated requests */
  size_t tx_len;
  int served;                           /* tx holds the response to the last request: */
  unsigned last_seq, last_kind;         /* its seq, kind, length and CRC */
  size_t last_len;
  uint32_t last_crc;
  struct blob blobs[NBLOBS];
  serial_run_fn run;
};

static int write_all(int fd, const uint8_t *p, size_t n)
{
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Build a device frame in f (room for HDR + n + 4 bytes); returns its length. */
static size_t frame(uint8_t *f, unsigned kind, unsigned seq, const uint8_t *payload, size_t n)
{
  f[0] = 0xA5;
  f[1] = 0x5A;
  f[2] = (uint8_t)(kind | FROM_DEVICE);
  f[3] = (uint8_t)seq;
  put_u16(f + 4, (unsigned)n);
  put_u16(f + 6, crc32(f + 2, 4) & 0xFFFF);
  if (n)
    memmove(f + HDR, payload, n);
  put_u32(f + HDR + n, crc32(f + 2, HDR - 2 + n));
  return HDR + n + 4;
}

/* The response to a request: kept in lk->tx in case the request comes again. */
static int respond(struct link *lk, unsigned kind, unsigned seq, const uint8_t *payload, size_t n)
{
  if (n > MAX_PAYLOAD)
    n = MAX_PAYLOAD;
  lk->tx_len = frame(lk->tx, kind, seq, payload, n);
  return write_all(lk->out, lk->tx, lk->tx_len);
}

/* A NAK: not a response, so the cached one stays. */
static int nak(struct link *lk, unsigned seq)
{
  uint8_t f[OVERHEAD];
  return write_all(lk->out, f, frame(f, K_NAK, seq, NULL, 0));
}

static int respond_error(struct link *lk, unsigned seq, const char *msg)
{
  return respond(lk, K_ERROR, seq, (const uint8_t *)msg, strlen(msg));
}

/* HELLO: the answer to a HELLO request, and the announcement (seq 0) before the first. */
static int hello(struct link *lk, unsigned seq, int announce)
{
  static const char ident[] = "minrt-run serial";
  uint8_t p[3 + sizeof ident - 1], f[OVERHEAD + sizeof p];
  p[0] = VERSION;
  put_u16(p + 1, MAX_PAYLOAD);
  memcpy(p + 3, ident, sizeof ident - 1);
  if (announce)
    return write_all(lk->out, f, frame(f, K_HELLO, seq, p, sizeof p));
  return respond(lk, K_HELLO, seq, p, sizeof p);
}

static void blob_free(struct blob *b)
{
  free(b->mem);
  memset(b, 0, sizeof *b);
}

/* PUT: u8 blob, u32 offset, u32 total, data. Chunks arrive in order; offset 0 starts over. */
static int on_put(struct link *lk, unsigned seq, const uint8_t *p, size_t n)
{
  struct blob *b;
  uint32_t off, total;
  size_t len;
  if (n < 9 || p[0] >= BLOB_OUTPUTS)
    return respond_error(lk, seq, "serial: PUT: bad blob id or short payload");
  b = &lk->blobs[p[0]];
  off = get_u32(p + 1);
  total = get_u32(p + 5);
  len = n - 9;
  if (total > MAX_BLOB)
    return respond_error(lk, seq, "serial: PUT: blob larger than 64 MiB");
  if (off == 0) {
    blob_free(b);
    /* +64 to align, +1 for the NUL that makes graph.json a C string */
    b->mem = (uint8_t *)malloc((size_t)total + 65);
    if (!b->mem)
      return respond_error(lk, seq, "serial: PUT: out of memory");
    b->data = b->mem + ((64 - ((uintptr_t)b->mem & 63)) & 63);
    b->total = total;
  }
  if (!b->mem || total != b->total || off != b->filled || len > total - off)
    return respond_error(lk, seq, "serial: PUT: chunk out of order or past the blob's end");
  memcpy(b->data + off, p + 9, len);
  b->filled += (uint32_t)len;
  b->data[b->filled] = 0;
  return respond(lk, K_ACK, seq, NULL, 0);
}

/* BUSY keepalive: SIGALRM writes a prebuilt frame every second while the model runs. */
static uint8_t busy_frame[OVERHEAD];
static int busy_fd = -1;

static void on_alarm(int sig)
{
  int saved = errno;
  (void)sig;
  if (write(busy_fd, busy_frame, sizeof busy_frame) < 0) {
    /* nothing to do: the host retransmits RUN if it hears nothing */
  }
  alarm(1);
  errno = saved;
}

static void busy(struct link *lk, unsigned seq, int on)
{
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (on) {
    frame(busy_frame, K_BUSY, seq, NULL, 0);
    busy_fd = lk->out;
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    on_alarm(SIGALRM);           /* one at once: the host stops resending RUN */
  } else {
    alarm(0);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGALRM, &sa, NULL);
  }
}

static int on_run(struct link *lk, unsigned seq, const uint8_t *p, size_t n)
{
  int rc;
  static const char *const names[] = {"graph", "params", "inputs"};
  struct serial_job job;
  struct serial_result res;
  struct blob *out = &lk->blobs[BLOB_OUTPUTS];
  char msg[80];
  int i;
  if (n != 8)
    return respond_error(lk, seq, "serial: RUN: payload must be 8 bytes");
  for (i = 0; i < BLOB_OUTPUTS; i++) {
    if (!lk->blobs[i].mem || lk->blobs[i].filled != lk->blobs[i].total) {
      snprintf(msg, sizeof msg, "serial: RUN: %s was not sent completely", names[i]);
      return respond_error(lk, seq, msg);
    }
  }
  job.graph_json = (const char *)lk->blobs[0].data;
  job.graph_len = lk->blobs[0].total;
  job.params = lk->blobs[1].data;
  job.params_len = lk->blobs[1].total;
  job.inputs = lk->blobs[2].data;
  job.inputs_len = lk->blobs[2].total;
  job.iters = get_u32(p);
  job.workspace = get_u32(p + 4);
  memset(&res, 0, sizeof res);
  blob_free(out);
  busy(lk, seq, 1);
  rc = lk->run(&job, &res);
  busy(lk, seq, 0);
  if (rc != 0) {
    free(res.outputs);
    res.error[sizeof res.error - 1] = 0;
    return respond_error(lk, seq, res.error[0] ? res.error : "run: failed");
  }
  if (res.outputs_len > MAX_BLOB) {
    free(res.outputs);
    return respond_error(lk, seq, "serial: RUN: outputs larger than 64 MiB");
  }
  out->mem = out->data = res.outputs;
  out->total = out->filled = (uint32_t)res.outputs_len;
  res.timing[sizeof res.timing - 1] = 0;
  return respond(lk, K_ACK, seq, (const uint8_t *)res.timing, strlen(res.timing));
}

/* GET: u8 blob, u32 offset, u16 max -> ACK: u32 total, data. */
static int on_get(struct link *lk, unsigned seq, const uint8_t *p, size_t n)
{
  static uint8_t buf[MAX_PAYLOAD];
  struct blob *b;
  uint32_t off;
  size_t len;
  if (n != 7 || p[0] >= NBLOBS)
    return respond_error(lk, seq, "serial: GET: bad blob id or payload size");
  b = &lk->blobs[p[0]];
  off = get_u32(p + 1);
  len = get_u16(p + 5);
  if (!b->mem && p[0] == BLOB_OUTPUTS)
    return respond_error(lk, seq, "serial: GET: no outputs (RUN first)");
  if (off > b->filled)
    return respond_error(lk, seq, "serial: GET: offset past the blob's end");
  if (len > MAX_PAYLOAD - 4)
    len = MAX_PAYLOAD - 4;
  if (len > b->filled - off)
    len = b->filled - off;
  put_u32(buf, b->filled);
  if (len)
    memcpy(buf + 4, b->data + off, len);
  return respond(lk, K_ACK, seq, buf, len + 4);
}

/* Remember the request whose response is in tx. */
static void served(struct link *lk, unsigned kind, unsigned seq, size_t n, uint32_t crc)
{
  lk->served = 1;
  lk->last_seq = seq;
  lk->last_kind = kind;
  lk->last_len = n;
  lk->last_crc = crc;
}

/* One valid request (crc: its frame's CRC). Returns 1 after BYE, -1 on a write error, 0
 * otherwise. */
static int on_request(struct link *lk, unsigned kind, unsigned seq, const uint8_t *p, size_t n,
                      uint32_t crc)
{
  int rc;
  if (kind == K_HELLO) {
    /* a (new) host session: forget the cached response */
    rc = hello(lk, seq, 0);
    served(lk, kind, seq, n, crc);
    return rc ? -1 : 0;
  }
  if (lk->served && seq == lk->last_seq && kind == lk->last_kind && n == lk->last_len
      && crc == lk->last_crc)
    return write_all(lk->out, lk->tx, lk->tx_len) ? -1 : (kind == K_BYE);
  switch (kind) {
  case K_PUT: rc = on_put(lk, seq, p, n); break;
  case K_RUN: rc = on_run(lk, seq, p, n); break;
  case K_GET: rc = on_get(lk, seq, p, n); break;
  case K_BYE: rc = respond(lk, K_ACK, seq, NULL, 0); break;
  default: rc = respond_error(lk, seq, "serial: not a request kind"); break;
  }
  served(lk, kind, seq, n, crc);
  if (rc)
    return -1;
  return kind == K_BYE;
}

/* Take every complete frame out of rx. Returns like on_request; *got set on a request. */
static int drain(struct link *lk, int *got)
{
  size_t pos = 0;
  int rc = 0;
  while (rc == 0 && lk->rx_len - pos >= HDR) {
    const uint8_t *f = lk->rx + pos;
    unsigned len, kind;
    if (f[0] != 0xA5 || f[1] != 0x5A) {
      pos++;
      continue;
    }
    len = get_u16(f + 4);
    kind = f[2] & 0x7F;
    if ((crc32(f + 2, 4) & 0xFFFF) != get_u16(f + 6) || len > MAX_PAYLOAD || kind < K_HELLO
      || kind > K_BUSY) {
      pos++;
      continue;
    }
    if (lk->rx_len - pos < HDR + len + 4u)
      break;                                   /* wait for the rest */
    if (crc32(f + 2, HDR - 2 + len) != get_u32(f + HDR + len)) {
      if (!(f[2] & FROM_DEVICE) && nak(lk, f[3]))
        rc = -1;
      pos++;
      continue;
    }
    pos += HDR + len + 4;
    if (f[2] & FROM_DEVICE)
      continue;                                /* our own frame echoed back */
    *got = 1;
    rc = on_request(lk, kind, f[3], f + HDR, len, get_u32(f + HDR + len));
  }
  memmove(lk->rx, lk->rx + pos, lk->rx_len - pos);
  lk->rx_len -= pos;
  return rc;
}

static long long now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int serial_serve(int in_fd, int out_fd, serial_run_fn run)
{
  static struct link lk;
  const char *env = getenv("MINRT_SERIAL_IDLE_S");
  long idle_limit = env ? atol(env) * 1000 : IDLE_MS;
  long long last_valid = now_ms();   /* wall time of the last valid request */
  int bye = 0, got, quiet_ms = 0, rc = 0, i;
  crc_init();
  memset(&lk, 0, sizeof lk);
  lk.in = in_fd;
  lk.out = out_fd;
  lk.run = run;
  if (idle_limit <= 0)
    idle_limit = IDLE_MS;
  if (hello(&lk, 0, 1))
    return 1;
  /* After BYE, linger until the line is quiet so a lost ACK can still be repeated (and no
   * longer than LINGER_MS after the last valid request, however noisy the line). */
  while (rc >= 0 && !(bye && (quiet_ms >= LINGER_MS || now_ms() - last_valid >= LINGER_MS))) {
    struct pollfd pfd;
    ssize_t r;
    int ready;
    pfd.fd = in_fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    ready = poll(&pfd, 1, TICK_MS);
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready < 0)
      break;
    if (now_ms() - last_valid >= idle_limit) {
      rc = -1;                                 /* no valid request for too long */
      break;
    }
    if (ready == 0) {
      quiet_ms += TICK_MS;
      if (!bye && hello(&lk, 0, 1))
        rc = -1;
      continue;
    }
    quiet_ms = 0;
    r = read(in_fd, lk.rx + lk.rx_len, sizeof lk.rx - lk.rx_len);
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (r <= 0)
      break;                                   /* hang-up or error */
    lk.rx_len += (size_t)r;
    got = 0;
    rc = drain(&lk, &got);                       /* leaves less than one frame in rx */
    if (got)
      last_valid = now_ms();
    if (rc > 0)
      bye = 1, rc = 0;
  }
  for (i = 0; i < NBLOBS; i++)
    blob_free(&lk.blobs[i]);
  return bye ? 0 : 1;
}

/* Terminal handling: raw while the protocol runs, restored on every way out. */
static int tty_fd = -1;
static struct termios tty_saved;

static void tty_restore(void)
{
  if (tty_fd >= 0) {
    tcdrain(tty_fd);
    tcsetattr(tty_fd, TCSANOW, &tty_saved);
    tty_fd = -1;
  }
}

static void on_signal(int sig)
{
  tty_restore();   /* tcsetattr is async-signal-safe */
  _exit(128 + sig);
}

static int tty_raw(int fd)
{
  static const int sigs[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE};
  struct termios t;
  struct sigaction sa;
  size_t i;
  if (!isatty(fd))
    return 0;                                    /* a pipe or socket: nothing to set */
  if (tcgetattr(fd, &tty_saved))
    return -1;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    sigaction(sigs[i], &sa, NULL);
  tty_fd = fd;
  t = tty_saved;
  t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXOFF);
  t.c_oflag &= ~(tcflag_t)OPOST;
  t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
  t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
  t.c_cflag |= CS8;
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  /* TCSAFLUSH drops what the line discipline still holds (e.g. the typed command) */
  return tcsetattr(fd, TCSAFLUSH, &t);
}

int serial_main(const char *device, serial_run_fn run)
{
  int in = 0, out = 1, rc;
  if (device) {
    in = out = open(device, O_RDWR | O_NOCTTY);
    if (in < 0) {
      fprintf(stderr, "minrt-run: serial: cannot open %s: %s\n", device, strerror(errno));
      return 1;
    }
  }
  if (tty_raw(in)) {
    fprintf(stderr, "minrt-run: serial: cannot set raw mode: %s\n", strerror(errno));
    return 1;
  }
  rc = serial_serve(in, out, run);
  tty_restore();
  if (rc)
    fprintf(stderr, "minrt-run: serial: link lost (host silent or line closed)\n");
  if (device)
    close(in);
  return rc;
}

/* The runner's side of a RUN request (runner.h): load, set inputs, time iters runs, and
 * hand back the outputs blob and the timing line. */
static int run_job(const struct serial_job *job, struct serial_result *res)
{
  runner r;
  runner_timing t;
  size_t n;
  int rc = 0;
  if (job->iters < 1 || job->iters > 0x7fffffffu) {
    snprintf(res->error, sizeof res->error, "run: iters must be at least 1");
    return 3;
  }
  if (runner_load(&r, job->graph_json, job->graph_len, job->params, job->params_len,
          job->workspace, NULL, NULL, &minrt_model_signatures)) {
    snprintf(res->error, sizeof res->error, "load: %s", r.err.msg);
    rc = 1;
  } else if (runner_set_inputs(&r, job->inputs, job->inputs_len)) {
    snprintf(res->error, sizeof res->error, "inputs: %s", r.err.msg);
    rc = 1;
  } else if (runner_run(&r, (int)job->iters, &t)) {
    snprintf(res->error, sizeof res->error, "run: %s", r.err.msg);
    rc = 3;
  } else {
    n = runner_write_outputs(&r, NULL, 0);
    res->outputs = (uint8_t *)malloc(n ? n : 1);
    if (!res->outputs || runner_write_outputs(&r, res->outputs, n) != n) {
      snprintf(res->error, sizeof res->error, "outputs: out of memory");
      rc = 1;
    } else {
      res->outputs_len = n;
      runner_timing_json(&r, &t, res->timing, sizeof res->timing);
    }
  }
  runner_free(&r);
  return rc;
}

/* `minrt-run --serial [DEVICE]` (main.c calls this when argv[1] is --serial). */
int runner_serial_main(int argc, char **argv)
{
  if (argc > 3) {
    fprintf(stderr, "minrt-run: usage: minrt-run --serial [DEVICE]\n");
    return 2;
  }
  return serial_main(argc == 3 ? argv[2] : NULL, run_job);
}
