/* systick.c: a 64-bit tick count from SysTick (24 bits) at the processor clock.
 *
 * Under QEMU with -icount shift=0 virtual time advances 1 ns per instruction, so the count
 * is deterministic and proportional to instructions executed (the harness reports it as
 * such, never as time); on a board it counts processor cycles. */
#include "board.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#ifndef FW_CLOCK_HZ
#define FW_CLOCK_HZ 25000000u
#endif
#define PERIOD (FW_CLOCK_HZ / 10u) /* interrupt every 0.1 s: below 2^24 up to 167 MHz */

static volatile uint32_t wraps;

void ticks_init(void) {
  SYST_RVR = PERIOD - 1;
  SYST_CVR = 0;
  SYST_CSR = 7; /* processor clock, interrupt, enable */
}

void SysTick_Handler(void) {
  wraps++;
  ticks_hook();
}

uint64_t ticks_now(void) {
  uint32_t w, v;
  do { /* a wrap (and its interrupt) between the two reads: read again */
    w = wraps;
    v = SYST_CVR;
  } while (w != wraps);
  return (uint64_t)w * PERIOD + (PERIOD - 1 - v);
}
