/* serial.c: the device side of the framed protocol (harness/formats/frames.py is the
 * specification) for minrt-run on a console line; frames, the repeated-request rule and the
 * NDArray-list codec are proto/frame.c and proto/tensors.c, shared with the firmware.
 *
 * The host is the master: one request, one response, same seq. A repeated request (the same
 * kind, seq, length and CRC as the last one served: its response was lost) gets the held
 * response again, never a second execution. Anything that is not a valid frame (echo,
 * kernel messages, noise) is skipped; a frame whose header is valid but CRC is not is
 * answered by NAK. BUSY is sent when a RUN starts and every second until it ends, so the
 * host can tell a slow device from a dead one.
 * Whenever the line has been quiet for FRAME_QUIET_MS the device drops any partial frame and
 * announces itself with a HELLO (seq 0): the host waits for one before its first byte, so it
 * never sends binary to a terminal that is not raw yet, and a new host session can join a
 * runner still serving. Idle time is wall time since the last valid request: line noise
 * does not keep it alive.
 */
#define _POSIX_C_SOURCE 200809L

#include "serial.h"
#include "runner.h"
#include "frame.h"

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

enum { MAX_PAYLOAD = 4096, NBLOBS = 4 };
#define MAX_BLOB (64u << 20)   /* largest graph/params/inputs accepted: the board has 256 MiB */
#define IDLE_MS 15000          /* a host silent this long is gone: exit and give the shell
                                  back (the environment's MINRT_SERIAL_IDLE_S overrides) */
#define LINGER_MS 1000         /* quiet time after BYE before exiting */

struct blob {
  uint8_t *mem;       /* malloc'ed block; data is its 64-byte aligned interior */
  uint8_t *data;
  uint32_t total;
  uint32_t filled;
};

struct link {
  int in, out;
  uint8_t rx[2 * (MAX_PAYLOAD + FRAME_OVERHEAD)];
  size_t rx_len;
  uint8_t tx[MAX_PAYLOAD + FRAME_OVERHEAD];  /* the last response, kept for repeated requests */
  size_t tx_len;
  struct frame_served served;                 /* the request tx answers */
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

/* The response to a request: kept in lk->tx in case the request comes again. */
static int respond(struct link *lk, unsigned kind, unsigned seq, const uint8_t *payload, size_t n)
{
  if (n > MAX_PAYLOAD)
    n = MAX_PAYLOAD;
  if (n)
    memmove(lk->tx + FRAME_HDR, payload, n);
  lk->tx_len = frame_seal(lk->tx, kind, seq, n);
  return write_all(lk->out, lk->tx, lk->tx_len);
}

/* A frame that is not a response (NAK, the announcement): the held response stays. */
static int notice(struct link *lk, unsigned kind, unsigned seq, const uint8_t *payload, size_t n)
{
  uint8_t f[FRAME_OVERHEAD + 32];
  if (n)
    memcpy(f + FRAME_HDR, payload, n);
  return write_all(lk->out, f, frame_seal(f, kind, seq, n));
}

/* ERROR: the code (frame.h), then the message. */
static int respond_error(struct link *lk, unsigned seq, unsigned code, const char *msg)
{
  uint8_t p[256];
  size_t n = strlen(msg);
  if (n > sizeof p - 1)
    n = sizeof p - 1;
  p[0] = (uint8_t)code;
  memcpy(p + 1, msg, n);
  return respond(lk, FRAME_ERROR, seq, p, n + 1);
}

/* HELLO: the answer to a HELLO request, and the announcement (seq 0) before the first. */
static int hello(struct link *lk, unsigned seq, int announce)
{
  static const char ident[] = "minrt-run serial";
  uint8_t p[3 + sizeof ident - 1];
  p[0] = FRAME_VERSION;
  frame_put16(p + 1, MAX_PAYLOAD);
  memcpy(p + 3, ident, sizeof ident - 1);
  if (announce)
    return notice(lk, FRAME_HELLO, seq, p, sizeof p);
  return respond(lk, FRAME_HELLO, seq, p, sizeof p);
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
  if (n < 9 || p[0] >= FRAME_BLOB_OUTPUTS)
    return respond_error(lk, seq, FRAME_E_PUT, "serial: PUT: bad blob id or short payload");
  b = &lk->blobs[p[0]];
  off = frame_u32(p + 1);
  total = frame_u32(p + 5);
  len = n - 9;
  if (total > MAX_BLOB)
    return respond_error(lk, seq, FRAME_E_PUT_SIZE, "serial: PUT: blob larger than 64 MiB");
  if (off == 0) {
    blob_free(b);
    /* +64 to align, +1 for the NUL that makes graph.json a C string */
    b->mem = (uint8_t *)malloc((size_t)total + 65);
    if (!b->mem)
      return respond_error(lk, seq, FRAME_E_MEMORY, "serial: PUT: out of memory");
    b->data = b->mem + ((64 - ((uintptr_t)b->mem & 63)) & 63);
    b->total = total;
  }
  if (!b->mem || total != b->total || off != b->filled || len > total - off)
    return respond_error(lk, seq, FRAME_E_PUT_ORDER, "serial: PUT: chunk out of order or past the blob's end");
  memcpy(b->data + off, p + 9, len);
  b->filled += (uint32_t)len;
  b->data[b->filled] = 0;
  return respond(lk, FRAME_ACK, seq, NULL, 0);
}

/* BUSY keepalive: SIGALRM writes a prebuilt frame every second while the model runs. */
static uint8_t busy_frame[FRAME_OVERHEAD];
static int busy_fd = -1, busy_in = -1;
static uint8_t abort_rx[64];
static size_t abort_len;

static void tty_restore(void);

/* While a RUN executes the main loop reads nothing: the alarm also looks at what the host
 * sent, and a BYE there (the host gave up: Ctrl-C, SIGTERM) ends the runner at once with the
 * terminal restored, so the shell is back within a second, not after the run and the idle
 * timeout. Other bytes read here are dropped: the host repeats RUN only when it hears no
 * BUSY, and RUN's answer comes at its end anyway. Only async-signal-safe calls. */
static void check_abort(void)
{
  struct pollfd pfd;
  struct frame_view f;
  size_t used, pos = 0;
  ssize_t r;
  pfd.fd = busy_in;
  pfd.events = POLLIN;
  pfd.revents = 0;
  if (busy_in < 0 || poll(&pfd, 1, 0) <= 0)
    return;
  r = read(busy_in, abort_rx + abort_len, sizeof abort_rx - abort_len);
  if (r <= 0)
    return;
  abort_len += (size_t)r;
  while (pos < abort_len) {
    int found = frame_scan(abort_rx + pos, abort_len - pos, sizeof abort_rx - FRAME_OVERHEAD, &f, &used);
    if (found == FRAME_OK && !f.from_device && f.kind == FRAME_BYE) {
      tty_restore();
      _exit(SERIAL_EXIT_ABORTED);
    }
    pos += used;
    if (found == FRAME_NEED || used == 0)
      break;
  }
  memmove(abort_rx, abort_rx + pos, abort_len - pos);
  abort_len -= pos;
  if (abort_len == sizeof abort_rx)
    abort_len = 0;                 /* no frame of ours is this long: noise */
}

static void on_alarm(int sig)
{
  int saved = errno;
  (void)sig;
  check_abort();
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
    frame_seal(busy_frame, FRAME_BUSY, seq, 0);
    busy_fd = lk->out;
    busy_in = lk->in;
    abort_len = 0;
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
  struct blob *out = &lk->blobs[FRAME_BLOB_OUTPUTS];
  char msg[80];
  int i;
  if (n != 8)
    return respond_error(lk, seq, FRAME_E_RUN, "serial: RUN: payload must be 8 bytes");
  job.iters = frame_u32(p);
  job.workspace = frame_u32(p + 4);
  if (job.iters - 1u >= FRAME_MAX_ITERS)
    return respond_error(lk, seq, FRAME_E_ITERS, "run: iters must be at least 1 and at most 2147483647");
  for (i = 0; i < FRAME_BLOB_OUTPUTS; i++) {
    if (!lk->blobs[i].mem || lk->blobs[i].filled != lk->blobs[i].total) {
      snprintf(msg, sizeof msg, "serial: RUN: %s was not sent completely", names[i]);
      return respond_error(lk, seq, FRAME_E_INCOMPLETE, msg);
    }
  }
  job.graph_json = (const char *)lk->blobs[0].data;
  job.graph_len = lk->blobs[0].total;
  job.params = lk->blobs[1].data;
  job.params_len = lk->blobs[1].total;
  job.inputs = lk->blobs[2].data;
  job.inputs_len = lk->blobs[2].total;
  memset(&res, 0, sizeof res);
  blob_free(out);
  busy(lk, seq, 1);
  rc = lk->run(&job, &res);
  busy(lk, seq, 0);
  if (rc != 0) {
    free(res.outputs);
    res.error[sizeof res.error - 1] = 0;
    return respond_error(lk, seq, res.code ? (unsigned)res.code : FRAME_E_EXEC,
                         res.error[0] ? res.error : "run: failed");
  }
  if (res.outputs_len > MAX_BLOB) {
    free(res.outputs);
    return respond_error(lk, seq, FRAME_E_OUTPUTS, "serial: RUN: outputs larger than 64 MiB");
  }
  out->mem = out->data = res.outputs;
  out->total = out->filled = (uint32_t)res.outputs_len;
  res.timing[sizeof res.timing - 1] = 0;
  return respond(lk, FRAME_ACK, seq, (const uint8_t *)res.timing, strlen(res.timing));
}

/* GET: u8 blob, u32 offset, u16 max -> ACK: u32 total, data. */
static int on_get(struct link *lk, unsigned seq, const uint8_t *p, size_t n)
{
  static uint8_t buf[MAX_PAYLOAD];
  struct blob *b;
  uint32_t off;
  size_t len;
  if (n != 7 || p[0] >= NBLOBS)
    return respond_error(lk, seq, FRAME_E_GET, "serial: GET: bad blob id or payload size");
  b = &lk->blobs[p[0]];
  off = frame_u32(p + 1);
  len = frame_u16(p + 5);
  if (!b->mem && p[0] == FRAME_BLOB_OUTPUTS)
    return respond_error(lk, seq, FRAME_E_NO_OUTPUTS, "serial: GET: no outputs (RUN first)");
  if (off > b->filled)
    return respond_error(lk, seq, FRAME_E_GET_OFFSET, "serial: GET: offset past the blob's end");
  if (len > MAX_PAYLOAD - 4)
    len = MAX_PAYLOAD - 4;
  if (len > b->filled - off)
    len = b->filled - off;
  frame_put32(buf, b->filled);
  if (len)
    memcpy(buf + 4, b->data + off, len);
  return respond(lk, FRAME_ACK, seq, buf, len + 4);
}

/* One valid request. Returns 1 after BYE, -1 on a write error, 0 otherwise. */
static int on_request(struct link *lk, const struct frame_view *f)
{
  int rc;
  if (frame_is_repeat(&lk->served, f))
    return write_all(lk->out, lk->tx, lk->tx_len) ? -1 : (f->kind == FRAME_BYE);
  switch (f->kind) {
  case FRAME_HELLO: rc = hello(lk, f->seq, 0); break;   /* a (new) host session */
  case FRAME_PUT: rc = on_put(lk, f->seq, f->payload, f->len); break;
  case FRAME_RUN: rc = on_run(lk, f->seq, f->payload, f->len); break;
  case FRAME_GET: rc = on_get(lk, f->seq, f->payload, f->len); break;
  case FRAME_BYE: rc = respond(lk, FRAME_ACK, f->seq, NULL, 0); break;
  default: rc = respond_error(lk, f->seq, FRAME_E_KIND, "serial: not a request kind"); break;
  }
  frame_remember(&lk->served, f);
  if (rc)
    return -1;
  return f->kind == FRAME_BYE;
}

/* Take every complete frame out of rx. Returns like on_request; *got set on a request. */
static int drain(struct link *lk, int *got)
{
  size_t pos = 0, used;
  int rc = 0, found;
  struct frame_view f;
  while (rc == 0) {
    found = frame_scan(lk->rx + pos, lk->rx_len - pos, MAX_PAYLOAD, &f, &used);
    pos += used;
    if (found == FRAME_NEED)
      break;
    if (f.from_device)
      continue;                                /* our own frame echoed back */
    if (found == FRAME_DAMAGED) {
      if (notice(lk, FRAME_NAK, f.seq, NULL, 0))
        rc = -1;
      continue;
    }
    *got = 1;
    rc = on_request(lk, &f);
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
    ready = poll(&pfd, 1, FRAME_QUIET_MS);
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready < 0)
      break;
    if (now_ms() - last_valid >= idle_limit) {
      rc = -1;                                 /* no valid request for too long */
      break;
    }
    if (ready == 0) {
      quiet_ms += FRAME_QUIET_MS;
      lk.rx_len = 0;                           /* a partial frame whose sender is gone */
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
  if (runner_load(&r, job->graph_json, job->graph_len, job->params, job->params_len,
          job->workspace, NULL, NULL, &minrt_model_signatures)) {
    snprintf(res->error, sizeof res->error, "load: %s", r.err.msg);
    res->code = FRAME_E_LOAD;
    rc = 1;
  } else if (runner_set_inputs(&r, job->inputs, job->inputs_len)) {
    snprintf(res->error, sizeof res->error, "inputs: %s", r.err.msg);
    res->code = FRAME_E_INPUTS + r.input_error;
    rc = 1;
  } else if (runner_run(&r, (int)job->iters, &t)) {
    snprintf(res->error, sizeof res->error, "run: %s", r.err.msg);
    res->code = FRAME_E_EXEC;
    rc = 3;
  } else {
    n = runner_write_outputs(&r, NULL, 0);
    res->outputs = (uint8_t *)malloc(n ? n : 1);
    if (!res->outputs || runner_write_outputs(&r, res->outputs, n) != n) {
      snprintf(res->error, sizeof res->error, "outputs: out of memory");
      res->code = FRAME_E_MEMORY;
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
