/* uart_stm32.c: STM32F4 USART2 on PA2 (TX) / PA3 (RX), 115200 8N1 from the 16 MHz HSI
 * (the reset clock). Written from the STM32F4 reference manual; untested here (no board). */
#include "board.h"

#ifndef FW_UART_BASE
#define FW_UART_BASE 0x40004400u /* USART2 */
#endif
#ifndef FW_CLOCK_HZ
#define FW_CLOCK_HZ 16000000u
#endif
#ifndef FW_UART_IRQ
#define FW_UART_IRQ 38 /* USART2 */
#endif
#define REG(a) (*(volatile uint32_t *)(a))
#define RCC_AHB1ENR REG(0x40023830u)
#define RCC_APB1ENR REG(0x40023840u)
#define GPIOA_MODER REG(0x40020000u)
#define GPIOA_AFRL REG(0x40020020u)
#define USART_SR REG(FW_UART_BASE + 0x00) /* bit5 RXNE, bit7 TXE */
#define USART_DR REG(FW_UART_BASE + 0x04)
#define USART_BRR REG(FW_UART_BASE + 0x08)
#define USART_CR1 REG(FW_UART_BASE + 0x0C)

void uart_init(void) {
  RCC_AHB1ENR |= 1u << 0;  /* GPIOA */
  RCC_APB1ENR |= 1u << 17; /* USART2 */
  GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 4)) | (0xAu << 4);  /* PA2, PA3: alternate function */
  GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFu << 8)) | (0x77u << 8);  /* AF7: USART2 */
  USART_BRR = (FW_CLOCK_HZ + 57600u) / 115200u;
  USART_CR1 = (1u << 13) | (1u << 5) | (1u << 3) | (1u << 2); /* UE, RXNEIE, TE, RE */
  uart_irq_enable(FW_UART_IRQ);
}

void UART_IRQHandler(void) {
  while (USART_SR & (1u << 5)) uart_rx_push((uint8_t)USART_DR);
}

void uart_put(uint8_t c) {
  while (!(USART_SR & (1u << 7))) {
  }
  USART_DR = c;
}
