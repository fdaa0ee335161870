"""The budgets a finished build is checked against (``edgec compile`` exits 3 on a miss)."""

from __future__ import annotations

from typing import Any

from edgec.config import CompileOptions


def budget_gates(target, sizes: dict[str, int], error: dict[str, Any], options: CompileOptions) -> list[str]:
    """What the build misses of its budgets: the accuracy drop, flash and peak RAM against the
    options' budgets (else the target's); each with the overshoot and what to try. A build that
    misses one is kept and exits 3."""
    failures = []
    if options.max_accuracy_drop is not None and "accuracy" in error:
        drop = error["accuracy"]["original"] - error["accuracy"]["artifact"]
        if drop > options.max_accuracy_drop:
            failures.append(
                f"accuracy drop {drop:.4f} exceeds --max-accuracy-drop {options.max_accuracy_drop}; try "
                "--calibration entropy or mse, or a cross-layer-equalization,bias-correction pipeline"
            )
    flash_budget = options.flash_budget or target.flash_bytes
    ram_budget = options.ram_budget or target.ram_bytes
    if flash_budget and sizes.get("flash_bytes", 0) > flash_budget:
        failures.append(
            f"flash {sizes['flash_bytes']} B exceeds the budget of {flash_budget} B by "
            f"{sizes['flash_bytes'] - flash_budget} B; try --quantize int8 or a smaller model"
        )
    if ram_budget and sizes.get("peak_ram_bytes", 0) > ram_budget:
        failures.append(
            f"peak RAM {sizes['peak_ram_bytes']} B exceeds the budget of {ram_budget} B by "
            f"{sizes['peak_ram_bytes'] - ram_budget} B; try --quantize int8 or a smaller input"
        )
    return failures
