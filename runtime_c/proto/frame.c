/* frame.c: the serial frame codec (frame.h; harness/formats/frames.py is the specification). */
#include "frame.h"

/* bitwise: no 1 KiB table in a firmware's RAM or flash; frames are at most a few KiB */
uint32_t frame_crc32(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  int k;
  while (n--) {
    c ^= *p++;
    for (k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

size_t frame_seal(uint8_t *f, unsigned kind, unsigned seq, size_t n) {
  f[0] = 0xA5;
  f[1] = 0x5A;
  f[2] = (uint8_t)(kind | FRAME_FROM_DEVICE);
  f[3] = (uint8_t)seq;
  frame_put16(f + 4, (unsigned)n);
  frame_put16(f + 6, frame_crc32(f + 2, 4) & 0xFFFF);
  frame_put32(f + FRAME_HDR + n, frame_crc32(f + 2, FRAME_HDR - 2 + n));
  return FRAME_HDR + n + 4;
}

int frame_scan(const uint8_t *buf, size_t len, size_t max_payload, struct frame_view *f, size_t *used) {
  size_t pos, n;
  unsigned kind;
  for (pos = 0; pos < len; pos++) {
    const uint8_t *h = buf + pos;
    if (h[0] != 0xA5 || (len - pos > 1 && h[1] != 0x5A)) continue;
    if (len - pos < FRAME_HDR) break;                      /* a header may be arriving */
    n = frame_u16(h + 4);
    kind = h[2] & 0x7Fu;
    if ((frame_crc32(h + 2, 4) & 0xFFFF) != frame_u16(h + 6) || n > max_payload || kind < FRAME_HELLO ||
        kind > FRAME_BUSY)
      continue;
    if (len - pos < FRAME_HDR + n + 4) break;              /* wait for the rest */
    f->kind = kind;
    f->seq = h[3];
    f->from_device = h[2] & FRAME_FROM_DEVICE;
    f->payload = h + FRAME_HDR;
    f->len = n;
    f->crc = frame_u32(h + FRAME_HDR + n);
    if (frame_crc32(h + 2, FRAME_HDR - 2 + n) != f->crc) {
      *used = pos + 1;                                     /* a frame may start inside it */
      return FRAME_DAMAGED;
    }
    *used = pos + FRAME_HDR + n + 4;
    return FRAME_OK;
  }
  *used = pos;
  return FRAME_NEED;
}

int frame_is_repeat(const struct frame_served *s, const struct frame_view *f) {
  return f->kind != FRAME_HELLO && s->kind == f->kind && s->seq == f->seq && s->len == f->len &&
         s->crc == f->crc;
}

void frame_remember(struct frame_served *s, const struct frame_view *f) {
  s->kind = (uint8_t)f->kind;
  s->seq = (uint8_t)f->seq;
  s->len = (uint16_t)f->len;
  s->crc = f->crc;
}
