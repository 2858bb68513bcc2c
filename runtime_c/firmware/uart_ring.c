/* uart_ring.c: the receive ring buffer between a UART interrupt and the front end. */
#include "board.h"

#ifndef FW_RX_RING
#define FW_RX_RING 128u /* a power of two above one frame (FW_MAX_PAYLOAD + 12): the host
                          sends one, then waits */
#endif

static uint8_t ring[FW_RX_RING];
static volatile uint32_t head, tail; /* head: written by the interrupt, tail: by uart_get */

void uart_rx_push(uint8_t c) {
  if (head - tail < FW_RX_RING) ring[head++ % FW_RX_RING] = c; /* full: drop (host resends) */
}

int uart_get(void) {
  int c;
  if (head == tail) return -1;
  c = ring[tail % FW_RX_RING];
  tail++;
  return c;
}

