"""Cortex-A targets: runtime-free C for AArch64 Linux, run under qemu-aarch64-static."""

from __future__ import annotations

import hashlib
import subprocess

import onnx
import pytest

from edgec.zoo import light_model
from tests.targets.cortex_helpers import (
    DIGITS_ONNX,
    FP32_ATOL,
    build,
    max_error_vs_onnxruntime,
    mobilenet_block_model,
    needs_tools,
)

pytestmark = needs_tools("aarch64-linux-gnu-gcc", "qemu-aarch64-static")


def test_digits_on_cortex_a53_matches_onnxruntime(tmp_path):
    model = onnx.load(DIGITS_ONNX)
    artifact, manifest = build("cortex-a53", model, tmp_path, "digits")
    assert max_error_vs_onnxruntime("cortex-a53", model, tmp_path, manifest) <= FP32_ATOL
    assert {"libdigits.a", "libdigits.so", "digits.h", "digits.c", "digits_params.c"} <= set(artifact.files)
    # The shared library exports the C API and is an AArch64 object.
    header = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-h", str(tmp_path / "libdigits.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "AArch64" in header


def test_mobilenet_block_on_cortex_a72(tmp_path):
    model = mobilenet_block_model()
    _, manifest = build("cortex-a72", model, tmp_path, "mobilenet")
    assert max_error_vs_onnxruntime("cortex-a72", model, tmp_path, manifest) <= FP32_ATOL


def test_identical_inputs_give_byte_identical_builds(tmp_path):
    model = mobilenet_block_model()
    digests = []
    for folder in ("one", "two"):
        artifact, _ = build("cortex-a53", model, tmp_path / folder, "mobilenet")
        digests.append(
            {f: hashlib.sha256((tmp_path / folder / f).read_bytes()).hexdigest() for f in artifact.files}
        )
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_squeezenet_on_cortex_a53(tmp_path):
    model = light_model("squeezenet", logits=True)
    artifact, manifest = build("cortex-a53", model, tmp_path, "squeezenet")
    assert max_error_vs_onnxruntime("cortex-a53", model, tmp_path, manifest) <= FP32_ATOL
    sizes = artifact.sizes
    assert sizes["arena_bytes"] <= 1.1 * sizes["arena_lower_bound_bytes"]
    assert sizes["arena_bytes"] < sizes["arena_tvm_stock_plan_bytes"]


REENTRANCY_TEST = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "digits.h"

/* Two threads run the model at once, each with its own arena and input; each must get exactly
 * the result of a lone run (the kernel workspace cursor is thread-local, the rest is const). */
typedef struct { float in[64]; float out[10]; float expected[10]; int mismatches; } job_t;
static uint8_t arenas[2][DIGITS_ARENA_BYTES] __attribute__((aligned(16)));

static void *work(void *arg) {
  job_t *job = arg;
  uint8_t *arena = arenas[job->in[0] > 0.5f];
  for (int i = 0; i < 200; ++i) {
    const void *in[] = {job->in};
    void *out[] = {job->out};
    int rc = digits_run(in, out, arena);
    if (rc != 0 || memcmp(job->out, job->expected, sizeof job->out) != 0) ++job->mismatches;
  }
  return NULL;
}

int main(void) {
  static job_t jobs[2];
  for (int j = 0; j < 2; ++j) {
    for (int k = 0; k < 64; ++k) jobs[j].in[k] = (float)((k * (j + 3)) % 17) / 16.0f;
    jobs[j].in[0] = (float)j; /* selects the arena */
    const void *in[] = {jobs[j].in};
    void *out[] = {jobs[j].expected};
    if (digits_run(in, out, arenas[j]) != 0) return 2;
  }
  pthread_t threads[2];
  for (int j = 0; j < 2; ++j) pthread_create(&threads[j], NULL, work, &jobs[j]);
  for (int j = 0; j < 2; ++j) pthread_join(threads[j], NULL);
  printf("mismatches %d %d\n", jobs[0].mismatches, jobs[1].mismatches);
  return jobs[0].mismatches + jobs[1].mismatches != 0;
}
"""


def test_two_threads_share_the_library_with_separate_arenas(tmp_path):
    """Reentrancy: the C API keeps no mutable global state besides a thread-local cursor."""
    build("cortex-a53", onnx.load(DIGITS_ONNX), tmp_path, "digits")
    source = tmp_path / "threads.c"
    source.write_text(REENTRANCY_TEST)
    subprocess.run(
        [
            "aarch64-linux-gnu-gcc",
            "-O2",
            "-pthread",
            f"-I{tmp_path}",
            str(source),
            str(tmp_path / "libdigits.a"),
            "-static",
            "-lm",
            "-o",
            str(tmp_path / "threads"),
        ],
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        ["qemu-aarch64-static", str(tmp_path / "threads")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "mismatches 0 0" in done.stdout, done.stdout + done.stderr
