"""Package data: Cortex-M startup code and the linker script for qemu's MPS2 boards."""
