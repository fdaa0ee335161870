/* Minimal Cortex-M startup for edgec's emulator harness (qemu mps2 boards, semihosting).
 *
 * Copies .data from flash, zeroes .bss, paints the stack (so the harness can measure its
 * high-water mark), enables the FPU when the build uses one, sets up newlib's semihosting
 * handles and runs main. A fault reports itself over semihosting and exits, so the emulator
 * never hangs on a crashed model.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint8_t __stack_limit[], __stack_top[];
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);
extern int main(void);

void _init(void) {}
void _fini(void) {}

static void fault(const char *what) {
  fputs(what, stderr);
  exit(4);
}

void Reset_Handler(void);
void HardFault_Handler(void) { fault("edgec-harness: HardFault\n"); }
void MemManage_Handler(void) { fault("edgec-harness: MemManage fault\n"); }
void BusFault_Handler(void) { fault("edgec-harness: BusFault\n"); }
void UsageFault_Handler(void) { fault("edgec-harness: UsageFault\n"); }
void Default_Handler(void) { fault("edgec-harness: unexpected exception\n"); }

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))__stack_top, Reset_Handler, Default_Handler, HardFault_Handler,
    MemManage_Handler, BusFault_Handler, UsageFault_Handler, 0, 0, 0, 0,
    Default_Handler, Default_Handler, 0, Default_Handler, Default_Handler,
};

__attribute__((noinline)) static void paint_stack(void) {
  /* Paint up to a little below the current stack pointer (this frame is still in use). */
  uint8_t *limit = (uint8_t *)__builtin_frame_address(0) - 256;
  for (uint8_t *p = __stack_limit; p < limit; ++p) *p = 0xA5u;
}

void Reset_Handler(void) {
  for (uint32_t *src = __data_load, *dst = __data_start; dst < __data_end;) *dst++ = *src++;
  for (uint32_t *dst = __bss_start; dst < __bss_end;) *dst++ = 0;
#if defined(__ARM_FP)
  /* CPACR: full access to CP10/CP11, the FPU; without this the first float op faults. */
  *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
  __asm volatile("dsb\n\tisb" ::: "memory");
#endif
  paint_stack();
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}
