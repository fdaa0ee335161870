"""int8 on Cortex: the integer kernels of a QDQ model, cross-compiled and run under qemu, give
exactly the x86 integer build's outputs, and the Cortex-M3 convolutions use no float arithmetic."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgec.ir import EdgeGraph
from edgec.targets import get_target
from tests.helpers import DIGITS
from tests.targets.cortex_helpers import build, needs_tools


def _run(target: str, build_dir: Path, manifest: dict, samples: np.ndarray) -> np.ndarray:
    return get_target(target).run(build_dir, manifest, [samples])[0][0]


@needs_tools("arm-none-eabi-gcc", "qemu-system-arm", "aarch64-linux-gnu-gcc", "qemu-aarch64-static")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m3", "cortex-a53"])
def test_int8_matches_the_x86_integer_build_bit_exactly(
    edgec_digits_qdq, target: str, tmp_path: Path
) -> None:
    samples = np.load(DIGITS / "digits_test.npz")["input"][:4, None]
    _, manifest = build("x86", edgec_digits_qdq, tmp_path / "x86", "digits")
    expected = _run("x86", tmp_path / "x86", manifest, samples)
    artifact, manifest = build(target, edgec_digits_qdq, tmp_path / target, "digits")
    got = _run(target, tmp_path / target, manifest, samples)
    np.testing.assert_array_equal(got, expected)
    assert artifact.sizes["arena_bytes"] < 4096  # int8 activations: a quarter of fp32's 14,208 B


# Soft-float helpers (libgcc / EABI names) and libm float routines: on a core without an FPU,
# float arithmetic shows up as relocations against these.
SOFT_FLOAT = re.compile(r"R_ARM_THM_CALL\s+(__\w*[sd]f\d?|__aeabi_[fd]\w*|\w+f)$", re.M)


def _functions(disassembly: str) -> dict[str, str]:
    """Function name → its disassembled body (with relocations)."""
    parts = re.split(r"^[0-9a-f]+ <([^>]+)>:$", disassembly, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@needs_tools("arm-none-eabi-gcc", "arm-none-eabi-objdump")
def test_cortex_m3_int8_convolutions_have_no_float_arithmetic(edgec_digits_qdq, tmp_path: Path) -> None:
    build("cortex-m3", edgec_digits_qdq, tmp_path, "digits")
    listing = subprocess.run(
        ["arm-none-eabi-objdump", "-dr", str(tmp_path / "digits_kernels.o")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    functions = _functions(listing)
    float_users = {name for name, body in functions.items() if SOFT_FLOAT.search(body)}
    convolutions = {name for name in functions if "conv2d" in name and name.endswith("_compute_")}
    assert len(convolutions) == 3, sorted(functions)
    assert not convolutions & float_users
    # Only the input quantize (divide + round) and the output dequantize (fused into the last
    # matmul's epilogue) compute in float.
    kernels = {name for name in float_users if name.endswith("_compute_")}
    assert len(kernels) == 2 and any("divide" in n for n in kernels) and any("matmul" in n for n in kernels)


def test_int8_artifact_graph_is_the_qdq_model(edgec_digits_qdq) -> None:
    ops = {node.op for node in EdgeGraph.from_onnx(edgec_digits_qdq).nodes}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
