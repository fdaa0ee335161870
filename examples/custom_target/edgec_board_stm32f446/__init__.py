"""An edgec target for the STM32F446RE: edgec's Cortex-M4 target with this part's budgets.

A board package only states what differs from a core edgec knows: here the flash and RAM of the
part (512 KiB flash, 128 KiB SRAM). Everything else (kernels, runtime-free C, the emulator that
verifies the build) comes from the ``cortex-m4`` target.
"""

import dataclasses

from edgec.targets import get_target, register_target

KIB = 1024

register_target(
    dataclasses.replace(
        get_target("cortex-m4"),
        name="stm32f446",
        description="STM32F446RE (Cortex-M4F, 512 KiB flash / 128 KiB SRAM); runtime-free C, "
        "verified on qemu mps2-an386",
        flash_bytes=512 * KIB,
        ram_bytes=128 * KIB,
    )
)
