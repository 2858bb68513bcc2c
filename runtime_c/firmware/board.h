/* board.h: what the firmware front end needs from a board: a UART and a tick counter.
 * One UART driver (uart_*.c) and systick.c are linked per target (harness/firmware.py). */
#ifndef MINRT_FW_BOARD_H
#define MINRT_FW_BOARD_H

#include <stdint.h>

void uart_init(void);
void uart_put(uint8_t c);
int uart_get(void);             /* the next received byte, or -1 when none is waiting */

/* SysTick at the processor clock (FW_CLOCK_HZ), widened to 64 bits by its interrupt. */
void ticks_init(void);
uint64_t ticks_now(void);
/* Called from the tick interrupt about every 0.1 s of processor time (the front end's
 * BUSY keep-alive while a run executes). */
void ticks_hook(void);

#endif
