/* dwt.c: ticks from the DWT cycle counter (real Cortex-M3/M4/M7 boards; QEMU has no DWT).
 *
 * CYCCNT is 32 bits; SysTick still interrupts every 0.1 s (the BUSY keep-alive) and widens
 * it to 64 bits there and in ticks_now, well before it can wrap twice. Untested here. */
#include "board.h"

#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#ifndef FW_CLOCK_HZ
#define FW_CLOCK_HZ 16000000u
#endif

static volatile uint32_t high, last;

static uint64_t widen(void) { /* call with the tick interrupt unable to run in between */
  uint32_t now = DWT_CYCCNT;
  if (now < last) high++;
  last = now;
  return (uint64_t)high << 32 | now;
}

void ticks_init(void) {
  DEMCR |= 1u << 24; /* TRCENA: the DWT is powered */
  DWT_CYCCNT = 0;
  DWT_CTRL |= 1u;    /* CYCCNTENA */
  SYST_RVR = FW_CLOCK_HZ / 10u - 1;
  SYST_CVR = 0;
  SYST_CSR = 7;
}

void SysTick_Handler(void) {
  widen();
  ticks_hook();
}

uint64_t ticks_now(void) {
  uint64_t t;
  __asm__ volatile("cpsid i" ::: "memory");
  t = widen();
  __asm__ volatile("cpsie i" ::: "memory");
  return t;
}
