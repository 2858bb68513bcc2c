/* uart_cmsdk.c: Arm CMSDK APB UART (MPS2 boards; QEMU mps2-an385/an386/an500). */
#include "board.h"

#ifndef FW_UART_BASE
#define FW_UART_BASE 0x40004000u
#endif
#define UART_DATA (*(volatile uint32_t *)(FW_UART_BASE + 0x0))
#define UART_STATE (*(volatile uint32_t *)(FW_UART_BASE + 0x4)) /* bit0 TX full, bit1 RX full */
#define UART_CTRL (*(volatile uint32_t *)(FW_UART_BASE + 0x8))  /* bit0 TX, bit1 RX enable */
#define UART_INTCLEAR (*(volatile uint32_t *)(FW_UART_BASE + 0xC)) /* bit1 RX */
#define UART_BAUDDIV (*(volatile uint32_t *)(FW_UART_BASE + 0x10))
#ifndef FW_UART_IRQ
#define FW_UART_IRQ 0 /* UART0 RX on MPS2 */
#endif


void uart_init(void) {
  UART_BAUDDIV = 16; /* the smallest divisor; QEMU ignores it, a board runs at clock/16 */
  UART_CTRL = 3 | 1u << 3; /* TX, RX, RX interrupt */
  uart_irq_enable(FW_UART_IRQ);
}

void UART_IRQHandler(void) {
  UART_INTCLEAR = 2;
  while (UART_STATE & 2u) uart_rx_push((uint8_t)UART_DATA);
}

void uart_put(uint8_t c) {
  while (UART_STATE & 1u) {
  }
  UART_DATA = c;
}
