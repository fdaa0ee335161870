"""edgec's quantizer vs onnxruntime.quantization.quantize_static, side by side.

Both quantizers get the same float graph (edgec's ``default`` cleanup/fusion pipeline, opset 13)
and the same calibration samples; both produce per-channel int8 QDQ (int8 activations, int8
weights). Reported per model and calibration method: accuracy (digits test set) or output error vs
float on held-out samples (relative mean abs error, cosine; of the logits: a final Softmax is
dropped unless ``--keep-softmax``) of the QDQ graph as written (onnxruntime, basic optimizations),
of onnxruntime's own int8 kernels (all optimizations: QDQ groups fused into QLinearConv/QGemm) and
of edgec's x86 build (integer kernels), initializer bytes, and x86 latency (fp32 vs each int8
model, minimum of 30 single-sample runs; onnxruntime with one thread, edgec with TVM_NUM_THREADS).

On x86 without VNNI (AVX2 hosts), onnxruntime's fused u8s8 kernels use ``vpmaddubsw``, which
saturates int16 pair sums: the "ORT int8" columns then drift from the QDQ graph, while edgec's
int32 accumulation does not.

    python benchmarks/quantization.py [--models digits,squeezenet,inception_v1,resnet50]
                                      [--methods minmax,entropy,percentile,mse] [--samples 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as ort_quantization

from edgec.ir import EdgeGraph
from edgec.passes.quantization.numerics import packed_bytes
from edgec.passes.quantization.static import ensure_opset
from edgec.pm import PassContext, PassManager
from edgec.verify import accuracy, run_onnx_batch
from edgec.zoo import light_model

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
ORT_METHODS = {
    "minmax": ort_quantization.CalibrationMethod.MinMax,
    "entropy": ort_quantization.CalibrationMethod.Entropy,
    "percentile": ort_quantization.CalibrationMethod.Percentile,
}


class _Reader(ort_quantization.CalibrationDataReader):
    """Feeds onnxruntime's calibrator the very samples edgec calibrates on."""

    def __init__(self, samples: dict[str, np.ndarray]) -> None:
        count = len(next(iter(samples.values())))
        self._feeds = iter([{k: v[i] for k, v in samples.items()} for i in range(count)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _load(name: str, count: int) -> tuple[onnx.ModelProto, dict, dict, np.ndarray | None]:
    """(float model, calibration samples, held-out samples, held-out labels or None)."""
    if name == "digits":
        model = onnx.load(str(DIGITS / "digits_cnn.onnx"))
        calibration = {"input": np.load(DIGITS / "digits_calib.npz")["input"][:, None]}
        test = np.load(DIGITS / "digits_test.npz")
        return model, calibration, {"input": test["input"][:, None]}, test["label"]
    model = light_model(name)
    graph = EdgeGraph.from_onnx(model)
    rng = np.random.default_rng(0)
    inputs = {t.name: [int(d) for d in t.shape] for t in graph.inputs}
    calibration = {k: rng.standard_normal((count, *s)).astype(np.float32) for k, s in inputs.items()}
    held = {k: rng.standard_normal((8, *s)).astype(np.float32) for k, s in inputs.items()}
    return model, calibration, held, None


def _prepared_float(model: onnx.ModelProto, keep_softmax: bool) -> onnx.ModelProto:
    graph = EdgeGraph.from_onnx(model)
    graph = PassManager("default").run(graph).graph
    last = graph.producer(graph.outputs[0])
    if not keep_softmax and last is not None and last.op == "Softmax":
        # Compare logits: onnxruntime quantizes a Softmax output on the fixed range [0, 1] (step
        # 1/255), which rounds the ~1e-3 probabilities of a 1000-class random-weight model to 0.
        graph.gs.outputs = [last.inputs[0]]
        graph.cleanup()
    return ensure_opset(graph, 13).to_onnx()


def _edgec(model: onnx.ModelProto, calibration: dict, method: str) -> tuple[onnx.ModelProto, float]:
    start = time.perf_counter()
    ctx = PassContext(calibration=calibration)
    graph = PassManager(f"quantize{{calibration={method}}}", ctx).run(EdgeGraph.from_onnx(model)).graph
    return graph.to_onnx(), time.perf_counter() - start


def _onnxruntime(model: onnx.ModelProto, calibration: dict, method: str) -> tuple[onnx.ModelProto, float]:
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(model, str(source))
        start = time.perf_counter()
        ort_quantization.quantize_static(
            str(source),
            str(target),
            _Reader(calibration),
            quant_format=ort_quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=ort_quantization.QuantType.QInt8,
            weight_type=ort_quantization.QuantType.QInt8,
            calibrate_method=ORT_METHODS[method],
        )
        seconds = time.perf_counter() - start
        return onnx.load(str(target)), seconds


def _onnxruntime_kernels(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], repeat: int = 30
) -> tuple[np.ndarray, float]:
    """onnxruntime with all optimizations (its own int8 kernels), one thread: (first output on
    every sample, minimum latency in ms)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    count = len(next(iter(feeds.values())))
    outputs = np.stack([session.run(None, {k: v[i] for k, v in feeds.items()})[0] for i in range(count)])
    sample = {k: v[0] for k, v in feeds.items()}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, sample)
        times.append(time.perf_counter() - start)
    # The minimum: the machine is shared, and interference only ever adds time.
    return outputs, 1000 * float(np.min(times))


def _edgec_x86(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], repeat: int = 30
) -> tuple[np.ndarray | None, float | None]:
    """edgec's x86 build of ``model`` (int8 kernels for a QDQ graph): (first output on every
    sample, minimum latency in ms), or ``(None, None)`` when it does not build."""
    from edgec.errors import EdgecError
    from edgec.targets import get_target
    from edgec.targets.tvm.library_runner import run_shared_library

    target = get_target("x86")
    graph = EdgeGraph.from_onnx(model)
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as folder:
        try:
            target.build(target.lower(target.legalize(graph.copy()).graph).module, Path(folder), "model")
        except EdgecError as error:
            print(f"  (edgec x86 build failed: {str(error).splitlines()[0]})")
            return None, None
        library = Path(folder) / "model.so"
        (outputs, *_), times = run_shared_library(library, [feeds[t.name] for t in graph.inputs], repeat)
    return outputs, 1000 * float(np.min(times))


def _relative_error(got: np.ndarray | None, reference: np.ndarray) -> float | None:
    if got is None:
        return None
    got, reference = got.astype(np.float64).reshape(reference.shape), reference.astype(np.float64)
    return float(np.abs(got - reference).mean() / np.abs(reference).mean())


def _row(label, model, reference, held, labels, seconds) -> dict:
    outputs = run_onnx_batch(model, held)
    name = model.graph.output[0].name
    got, ref = outputs[name].astype(np.float64), reference.astype(np.float64)
    cosine = float(np.dot(got.ravel(), ref.ravel()) / (np.linalg.norm(got) * np.linalg.norm(ref)))
    ort_outputs, ort_ms = _onnxruntime_kernels(model, held)
    edgec_outputs, edgec_ms = _edgec_x86(model, held)
    return {
        "quantizer": label,
        "accuracy": accuracy(outputs[name], labels) if labels is not None else None,
        "relative_error": float(np.abs(got - ref).mean() / np.abs(ref).mean()),
        "ort_kernels_error": _relative_error(ort_outputs, ref),
        "edgec_x86_error": _relative_error(edgec_outputs, ref),
        "ort_kernels_accuracy": accuracy(ort_outputs, labels) if labels is not None else None,
        "edgec_x86_accuracy": (
            accuracy(edgec_outputs, labels) if labels is not None and edgec_outputs is not None else None
        ),
        "cosine": cosine,
        "bytes": packed_bytes(model.graph.initializer),
        "ms": ort_ms,
        "edgec_ms": edgec_ms,
        "seconds": seconds,
    }


DIGITS_PIPELINES = (
    "quantize{calibration=mse}",
    "quantize{calibration=mse,per_channel=false}",
    "fuse-conv-bn,cross-layer-equalization,bias-correction{per_channel=false},quantize{per_channel=false}",
    "quantize{scheme=int8-dynamic}",
    "quantize{scheme=weight-int8}",
    "quantize{scheme=weight-int4}",
    "fuse-conv-bn,cross-layer-equalization,bias-correction{bits=4},quantize{scheme=weight-int4}",
    "quantize{scheme=weight-int2}",
    "fuse-conv-bn,cross-layer-equalization,bias-correction{bits=2},quantize{scheme=weight-int2}",
    "quantize{scheme=weight-int4,group_size=16}",
    "quantize{scheme=weight-binary}",
    "fuse-conv-bn,cross-layer-equalization,bias-correction{bits=1},quantize{scheme=weight-binary}",
    "quantize{scheme=weight-binary,exclude=conv1:fc}",
    "quantize{scheme=fp16}",
)


def _digits_schemes() -> None:
    """edgec's other schemes and accuracy tools on the digits CNN (no onnxruntime counterpart run)."""
    model, calibration, test, labels = _load("digits", 0)
    reference = run_onnx_batch(model, test)["logits"]
    header = f"{'digits pipeline':<98} {'accuracy':>9} {'rel.err':>9} {'init bytes':>11} {'int x':>6}"
    print(header)
    print("-" * len(header))
    for pipeline in DIGITS_PIPELINES:
        run = PassManager(pipeline, PassContext(calibration=calibration)).run(EdgeGraph.from_onnx(model))
        quantized = run.graph.to_onnx()
        got = run_onnx_batch(quantized, test)["logits"]
        integer = run.records[-1].stats["integer_weights"]["compression"]
        print(
            f"{pipeline:<98} {100 * accuracy(got, labels):>8.2f}% "
            f"{np.abs(got - reference).mean() / np.abs(reference).mean():>9.4f} "
            f"{packed_bytes(quantized.graph.initializer):>11,} {integer:>6.2f}"
        )
    print()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,squeezenet,inception_v1,resnet50")
    parser.add_argument("--methods", default="minmax,entropy,percentile,mse")
    parser.add_argument("--samples", type=int, default=16, help="calibration samples for the light models")
    parser.add_argument("--keep-softmax", action="store_true", help="compare probabilities, not logits")
    parser.add_argument("--no-schemes", action="store_true", help="skip the table of edgec schemes on digits")
    args = parser.parse_args()
    if not args.no_schemes:
        _digits_schemes()
    print("accuracy / rel.err: QDQ graph as written | onnxruntime's int8 kernels | edgec's x86 build")
    header = (
        f"{'model':<13} {'method':<10} {'quantizer':<12} {'accuracy QDQ|ORT|edgec':>24} "
        f"{'rel.err QDQ|ORT|edgec':>24} {'cosine':>8} "
        f"{'init bytes':>11} {'ORT ms':>8} {'edgec ms':>9} {'quant s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        model, calibration, held, labels = _load(name, args.samples)
        prepared = _prepared_float(model, args.keep_softmax)
        reference = run_onnx_batch(prepared, held)[prepared.graph.output[0].name]
        rows = [_row("fp32", prepared, reference, held, labels, 0.0)]
        for method in args.methods.split(","):
            edgec_model, edgec_seconds = _edgec(prepared, calibration, method)
            rows.append(
                {**_row("edgec", edgec_model, reference, held, labels, edgec_seconds), "method": method}
            )
            if method in ORT_METHODS:  # onnxruntime has no MSE calibrator
                ort_model, ort_seconds = _onnxruntime(prepared, calibration, method)
                rows.append(
                    {**_row("onnxruntime", ort_model, reference, held, labels, ort_seconds), "method": method}
                )
        for row in rows:
            accuracies = "|".join(
                _percent(row[k]) for k in ("accuracy", "ort_kernels_accuracy", "edgec_x86_accuracy")
            )
            errors = "|".join(
                _fraction(row[k]) for k in ("relative_error", "ort_kernels_error", "edgec_x86_error")
            )
            print(
                f"{name:<13} {row.get('method', '-'):<10} {row['quantizer']:<12} {accuracies:>24} "
                f"{errors:>24} {row['cosine']:>8.5f} {row['bytes']:>11,} "
                f"{row['ms']:>8.2f} {_ms(row['edgec_ms']):>9} {row['seconds']:>8.2f}"
            )
        print()


if __name__ == "__main__":
    main()
