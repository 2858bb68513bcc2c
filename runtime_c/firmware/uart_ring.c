/* uart_ring.c: the receive ring buffer between a UART interrupt and the front end. */
#include "board.h"

#ifndef FW_RX_RING
#define FW_RX_RING 128u /* a power of two above one frame (FW_MAX_PAYLOAD + 12): the host
                          sends one, then waits */
#endif

static struct {
  volatile uint32_t head, tail; /* head: written by the interrupt, tail: by uart_get */
  uint8_t buf[FW_RX_RING];
} ring;

void uart_rx_push(uint8_t c) {
  if (ring.head - ring.tail < FW_RX_RING) ring.buf[ring.head++ % FW_RX_RING] = c; /* full: drop (host resends) */
}

int uart_get(void) {
  int c;
  if (ring.head == ring.tail) return -1;
  c = ring.buf[ring.tail % FW_RX_RING];
  ring.tail++;
  return c;
}
