"""The emulated boards: one memory table per qemu machine, from which the linker scripts in
``runtime/cortex_m`` are generated (``python -m edgec.targets.boards`` rewrites them; a test
checks that they match), and against which builds are checked before they run under qemu.

Regions are qemu's RAMs (hw/arm/mps2.c, hw/arm/mps2-tz.c). Each script maps them onto the names
``runtime/cortex_m/sections.ld`` places sections in: ``VECTORS`` (the reset vector table, at
0x0), ``FLASH`` (code, constants, the initial values of .data), ``RAM`` (data, bss, heap, stack),
``WEIGHTS`` (model weights, ``.rodata.edgec_weights.*``) and ``BIG`` (the harness's large
buffers, ``.bss.edgec_big.*``). Weights and large buffers sit in the largest RAMs so that any
model within a target's declared flash and RAM (and many beyond, see the over-budget check of
:mod:`edgec.compile`) runs in the emulator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Region:
    name: str
    origin: int
    length: int
    access: str  # "rx" or "rwx"
    what: str  # what the board calls it, for the script's comment


@dataclass(frozen=True)
class Board:
    """A qemu machine's memory, and which region holds what.

    Attributes:
        script: The linker script's file name in ``runtime/cortex_m``.
        machines: The qemu machines that use the script.
        regions: The MEMORY regions.
        aliases: Section group (VECTORS, WEIGHTS, BIG) to region, besides FLASH and RAM themselves.
    """

    script: str
    machines: tuple[str, ...]
    description: str
    regions: tuple[Region, ...]
    aliases: tuple[tuple[str, str], ...]

    def region(self, alias: str) -> Region:
        name = dict(self.aliases).get(alias, alias)
        return next(r for r in self.regions if r.name == name)

    def capacity(self) -> dict[str, int]:
        """Bytes the emulator gives each section group (a group sharing a region shares its bytes)."""
        return {alias: self.region(alias).length for alias in ("FLASH", "RAM", "WEIGHTS", "BIG")}

    def linker_script(self) -> str:
        lines = [
            f"/* Linker script for {self.description}. GENERATED from the board table in",
            " * targets/boards.py (python -m edgec.targets.boards); edit the table, not this file.",
        ]
        lines += [f" * {r.name}: {r.what}" for r in self.regions]
        lines += [" */", "ENTRY(Reset_Handler)", "", "MEMORY", "{"]
        width = max(len(r.name) for r in self.regions)
        for r in self.regions:
            lines.append(
                f"  {r.name:<{width}} ({r.access}) : ORIGIN = 0x{r.origin:08X}, LENGTH = {_size(r.length)}"
            )
        lines.append("}")
        lines += [f'REGION_ALIAS("{alias}", {region});' for alias, region in self.aliases]
        lines += ["", "INCLUDE sections.ld", ""]
        return "\n".join(lines)


def _size(length: int) -> str:
    return f"{length // MIB}M" if length % MIB == 0 else f"{length // KIB}K"


_MPS2_CODE = Region("FLASH", 0x00000000, 4 * MIB, "rx", "4 MiB SSRAM1 at 0x0 (the emulated flash)")
_MPS2_RAM = Region("RAM", 0x20000000, 4 * MIB, "rwx", "4 MiB SSRAM2/3: data, bss, heap, stack")

BOARDS = (
    Board(
        "mps2.ld",
        ("mps2-an385", "mps2-an386"),
        "qemu's Arm MPS2 boards mps2-an385 (M3) and mps2-an386 (M4)",
        (
            _MPS2_CODE,
            _MPS2_RAM,
            Region("BIGRAM", 0x21000000, 16 * MIB, "rwx", "16 MiB PSRAM: weights, big buffers"),
        ),
        (("VECTORS", "FLASH"), ("WEIGHTS", "BIGRAM"), ("BIG", "BIGRAM")),
    ),
    Board(
        "mps2_an500.ld",
        ("mps2-an500",),
        "qemu's Arm MPS2 board mps2-an500 (M7)",
        (
            _MPS2_CODE,
            _MPS2_RAM,
            Region("BIGRAM", 0x60000000, 16 * MIB, "rwx", "16 MiB PSRAM: weights, big buffers"),
        ),
        (("VECTORS", "FLASH"), ("WEIGHTS", "BIGRAM"), ("BIG", "BIGRAM")),
    ),
    Board(
        "mps3_an547.ld",
        ("mps3-an547",),
        "qemu's Arm MPS3 AN547 board (Cortex-M55, SSE-300)",
        (
            Region("ITCM", 0x00000000, 512 * KIB, "rx", "512 KiB ITCM at 0x0: the reset vector table"),
            Region("FLASH", 0x01000000, 2 * MIB, "rx", "2 MiB code SRAM: code and constants"),
            Region("RAM", 0x21000000, 4 * MIB, "rwx", "4 MiB ISRAM: data, bss, heap, stack"),
            Region("QSPI", 0x28000000, 8 * MIB, "rx", "8 MiB QSPI flash window: model weights"),
            Region("DDR", 0x60000000, 64 * MIB, "rwx", "DDR (first 64 MiB used): big harness buffers"),
        ),
        (("VECTORS", "ITCM"), ("WEIGHTS", "QSPI"), ("BIG", "DDR")),
    ),
)


def board_for(machine: str) -> Board:
    """The board table of a qemu machine."""
    return next(b for b in BOARDS if machine in b.machines)


def write_scripts(folder: Path) -> list[Path]:
    """(Re)writes every board's linker script into ``folder``."""
    written = []
    for board in BOARDS:
        path = folder / board.script
        path.write_text(board.linker_script())
        written.append(path)
    return written


if __name__ == "__main__":
    from edgec.targets.tvm.c_emitter import runtime_dir

    for path in write_scripts(runtime_dir() / "cortex_m"):
        print(path, file=sys.stderr)
