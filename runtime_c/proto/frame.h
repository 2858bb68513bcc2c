/* frame.h: the serial frame codec shared by `minrt-run --serial` (runner/serial.c) and the
 * firmware front end (firmware/frontend.c). harness/formats/frames.py is the specification;
 * tests/test_proto_conformance.py runs the same cases against both C sides.
 *
 * Frame, little-endian:  A5 5A | type u8 | seq u8 | len u16 | hcheck u16 | payload | crc32 u32
 *   type: the kind in bits 0-6, bit 7 set on frames the device sends;
 *   hcheck: low 16 bits of CRC-32 of (type, seq, len), so a damaged length is refused at once;
 *   crc32: zlib's CRC-32 of everything after the magic up to the end of the payload.
 * No allocation: the caller owns every buffer. */
#ifndef MINRT_PROTO_FRAME_H
#define MINRT_PROTO_FRAME_H

#include <stddef.h>
#include <stdint.h>

enum { FRAME_HELLO = 1, FRAME_PUT = 2, FRAME_RUN = 3, FRAME_GET = 4, FRAME_BYE = 5,  /* host */
       FRAME_ACK = 6, FRAME_NAK = 7, FRAME_ERROR = 8, FRAME_BUSY = 9 };             /* device */
enum { FRAME_VERSION = 2, FRAME_FROM_DEVICE = 0x80, FRAME_HDR = 8, FRAME_OVERHEAD = 12 };
enum { FRAME_BLOB_GRAPH = 0, FRAME_BLOB_PARAMS = 1, FRAME_BLOB_INPUTS = 2, FRAME_BLOB_OUTPUTS = 3 };
/* A RUN's iteration count (and minrt-run -n) is 1..FRAME_MAX_ITERS on every device: the one
 * rule, harness/formats/frames.py MAX_ITERS. */
#define FRAME_MAX_ITERS 0x7fffffffu
/* A partial frame left this long without a byte is dropped, and the device announces itself
 * (HELLO, seq 0) after every such quiet period. */
#define FRAME_QUIET_MS 500

/* ERROR payloads: u8 code, then optional UTF-8 detail. The same codes from both devices;
 * frames.py's ErrorCode holds the texts (tests/test_proto_conformance.py checks the two). */
enum frame_error {
  FRAME_E_KIND = 1,          /* not a request kind */
  FRAME_E_PUT = 2,           /* PUT: bad blob id or short payload */
  FRAME_E_PUT_ORDER = 3,     /* PUT: chunk out of order or past the blob's end */
  FRAME_E_PUT_SIZE = 4,      /* PUT: blob larger than the device can hold */
  FRAME_E_MEMORY = 5,        /* out of memory */
  FRAME_E_RUN = 6,           /* RUN: payload must be 8 bytes */
  FRAME_E_ITERS = 7,         /* RUN: iters must be at least 1 and at most FRAME_MAX_ITERS */
  FRAME_E_INCOMPLETE = 8,    /* RUN: a blob was not sent completely */
  FRAME_E_GET = 9,           /* GET: bad blob id or payload size */
  FRAME_E_NO_OUTPUTS = 10,   /* GET: no outputs (RUN first) */
  FRAME_E_GET_OFFSET = 11,   /* GET: offset past the blob's end */
  FRAME_E_LOAD = 12,         /* load: minrt refused the model (detail: minrt's message) */
  FRAME_E_EXEC = 13,         /* run: a kernel failed (detail: minrt's message) */
  FRAME_E_OUTPUTS = 14,      /* outputs larger than the device can hold */
  FRAME_E_MODEL = 15,        /* graph: none of this image's models */
  FRAME_E_INPUTS = 32        /* + a TENSORS_E_* code (tensors.h): the inputs blob is wrong */
};

struct frame_view {
  unsigned kind, seq, from_device;
  const uint8_t *payload;
  size_t len;
  uint32_t crc;
};

/* The request whose response a device holds (kind 0: none). */
struct frame_served {
  uint8_t kind, seq;
  uint16_t len;
  uint32_t crc;
};

enum { FRAME_NEED = 0, FRAME_OK = 1, FRAME_DAMAGED = 2 };

uint32_t frame_crc32(const uint8_t *p, size_t n);

/* Seals a device frame whose payload (n bytes) is already at f + FRAME_HDR; f has room for
 * FRAME_OVERHEAD + n bytes. Returns the frame's length. */
size_t frame_seal(uint8_t *f, unsigned kind, unsigned seq, size_t n);

/* Looks for a frame in buf[0..len): bytes before it that cannot start one are skipped.
 * FRAME_OK: *f is the frame; FRAME_DAMAGED: a valid header whose CRC fails (f->seq and
 * f->from_device are set: a request is answered by NAK); FRAME_NEED: no complete frame yet.
 * *used is always the number of leading bytes the caller drops before scanning again. */
int frame_scan(const uint8_t *buf, size_t len, size_t max_payload, struct frame_view *f, size_t *used);

/* The repeated-request rule (frames.py): a request is a repeat, answered with the held
 * response and never executed again, when its kind, seq, length and CRC are those of the
 * last request served. HELLO is never a repeat: it starts a session. */
int frame_is_repeat(const struct frame_served *s, const struct frame_view *f);
void frame_remember(struct frame_served *s, const struct frame_view *f);

/* Little-endian fields. On a little-endian machine a field is one (unaligned) load or store:
 * Cortex-M3/M4/M7, ARMv7-A and x86 all allow them, and memcpy says so to the compiler. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <string.h>
static inline uint32_t frame_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline unsigned frame_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void frame_put16(uint8_t *p, unsigned v) { uint16_t w = (uint16_t)v; memcpy(p, &w, 2); }
static inline void frame_put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
#else
static inline uint32_t frame_u32(const uint8_t *p) {
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline unsigned frame_u16(const uint8_t *p) { return p[0] | p[1] << 8; }
static inline void frame_put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void frame_put32(uint8_t *p, uint32_t v) {
  frame_put16(p, v & 0xFFFF);
  frame_put16(p + 2, v >> 16);
}
#endif

#endif
