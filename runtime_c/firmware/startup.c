/* startup.c: vector table and reset handler for ARMv7-M (Cortex-M3/M4/M7).
 *
 * Reset paints the stack (stack_used finds the high-water mark), copies .data from flash,
 * zeroes .bss, enables the FPU (CPACR, before any float
 * code), runs .init_array (the kernels' registration constructor) and calls main.
 * Symbols come from firmware.ld. A fault prints one line on the UART and stops there: the
 * host sees a device that stopped answering. */
#include <stdint.h>
#include <string.h>

#include "board.h"

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _sstack[], _estack[];
extern void (*__init_array_start[])(void), (*__init_array_end[])(void);
int main(void);
void SysTick_Handler(void);

/* TVM's kernels are C: their unwind tables name the EHABI personality routine but nothing
 * ever unwinds through them. This stub keeps libgcc's unwinder (and its tables) out. */
void __aeabi_unwind_cpp_pr0(void) {}

#define STACK_PAINT 0x5AC4A5C3u

void Reset_Handler(void) {
  uint32_t *dst, *sp;
  void (**init)(void);
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (dst = _sstack; dst < sp;) *dst++ = STACK_PAINT; /* below the live frame only */
  /* the linker script orders these symbols: sizes are never negative */
  memcpy(_sdata, _sidata, (size_t)((uint8_t *)_edata - (uint8_t *)_sdata));
  memset(_sbss, 0, (size_t)((uint8_t *)_ebss - (uint8_t *)_sbss));
#if defined(__ARM_FP)
  *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10, CP11 full access */
  __asm volatile("dsb\n\tisb");
#endif
  for (init = __init_array_start; init < __init_array_end; init++) (*init)();
  main();
  for (;;) {
  }
}

uint32_t stack_used(void) {
  const uint32_t *p = _sstack;
  while (p < _estack && *p == STACK_PAINT) p++;
  return (uint32_t)((const uint8_t *)_estack - (const uint8_t *)p);
}

/* libm's expf sets errno through newlib's reentrancy struct (96 bytes of RAM): one int here */
int *__errno(void) {
  static int e;
  return &e;
}

static void Fault_Handler(void) {
#ifndef MINRT_NO_MESSAGES
  const char *s = "\r\nminrt firmware: fault, stopped\r\n";
  while (*s) uart_put((uint8_t)*s++);
#endif
  for (;;) {
  }
}

#ifndef FW_UART_IRQ
#define FW_UART_IRQ 0
#endif

/* Vector table: initial stack, reset, NMI..SysTick, then the UART's interrupt. */
__attribute__((section(".vectors"), used)) void (*const vectors[16 + FW_UART_IRQ + 1])(void) = {
    (void (*)(void))(uintptr_t)_estack, Reset_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0,
    Fault_Handler, SysTick_Handler, [16 + FW_UART_IRQ] = UART_IRQHandler,
};
