"""Package data: the runtime-free shim, the emulator harness, Cortex-M startup and linker scripts."""
