/* board.h: what the firmware front end needs from a board: a UART and a tick counter.
 * One UART driver (uart_*.c) and systick.c are linked per target (harness/build/firmware.py). */
#ifndef MINRT_FW_BOARD_H
#define MINRT_FW_BOARD_H

#include <stdint.h>

/* Received bytes go into a ring buffer from the UART's receive interrupt (FW_UART_IRQ), so
 * nothing is lost while a request is served and the idle loop can sleep (WFI). */
void uart_init(void);
void uart_put(uint8_t c);
int uart_get(void);             /* the next received byte, or -1 when none is waiting */
void UART_IRQHandler(void);
void uart_rx_push(uint8_t c);   /* for the drivers' interrupt handlers (uart_ring.c) */
/* The drivers' receive interrupt on (NVIC ISER). */
static inline void uart_irq_enable(unsigned irq) {
  ((volatile uint32_t *)0xE000E100u)[irq / 32] = 1u << (irq % 32);
}

/* SysTick at the processor clock (FW_CLOCK_HZ), widened to 64 bits by its interrupt. */
void ticks_init(void);
uint64_t ticks_now(void);
/* Called from the tick interrupt about every 0.1 s of processor time (the front end's
 * BUSY keep-alive while a run executes). */
void ticks_hook(void);

/* Bytes of stack used since boot: startup.c paints the stack at reset, this finds the
 * deepest word written (the high-water mark, interrupts included). */
uint32_t stack_used(void);

#endif
