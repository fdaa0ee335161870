"""The seed's experiment: compress, distill and quantize the digits CNN in different orders.

    python examples/digits/compression_orders.py [--compress PIPELINE] [--scheme weight-int4] [--quick]

Each order is a list of steps run one after another through the pass manager:

- ``compress``: ``--compress`` (default ``substitute-depthwise-separable``; give a pruning pipeline
  such as ``prune-...`` when one is registered);
- ``distill``: ``distill{}``, recovery with the original model as the teacher;
- ``quantize``: post-training ``quantize{scheme=...}``;
- ``qat``: quantization-aware training (``qat{scheme=...}``), the float model it receives as teacher.

After every step the table shows test accuracy (onnxruntime), weight bytes as stored (int4 packed)
and MACs. Checkpoints are chosen on 300 held-out training samples, never on the test set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from training_study import split, test_accuracy  # noqa: E402

from edgec.data import load_dataset  # noqa: E402
from edgec.errors import EdgecError  # noqa: E402
from edgec.ir import graph_cost, infer_shapes, load  # noqa: E402
from edgec.passes.quantization.static import weight_bytes  # noqa: E402
from edgec.pm import PassContext, PassManager  # noqa: E402

ORDERS = {
    "compress > distill > quantize": ["compress", "distill", "quantize"],
    "compress > quantize": ["compress", "quantize"],
    "compress > qat": ["compress", "qat"],
    "compress > distill > qat": ["compress", "distill", "qat"],
    "quantize > compress": ["quantize", "compress"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--compress", default="substitute-depthwise-separable", help="compression pipeline")
    parser.add_argument("--scheme", default="weight-int4", help="quantization scheme")
    parser.add_argument("--quick", action="store_true", help="one epoch per training step (a smoke run)")
    args = parser.parse_args(argv)
    epochs = (1, 1) if args.quick else (150, 10)
    steps = {
        "compress": args.compress,
        "distill": f"distill{{epochs={epochs[0]},learning_rate=0.003}}",
        "quantize": f"quantize{{scheme={args.scheme}}}",
        "qat": f"qat{{scheme={args.scheme},epochs={epochs[1]}}}",
    }
    original = load(HERE / "digits_cnn.onnx")
    infer_shapes(original)
    train, valid, test = split(original)
    calib = {"input": load_dataset(HERE / "digits_calib.npz", original)["input"]}
    print(f"{'order':<32} {'after':<10} {'test acc':>9} {'weight B':>9} {'MACs':>9}")
    row = f"{'original':<32} {'':<10} {test_accuracy(original, test):>9.4f}"
    print(row + f" {weight_bytes(original):>9,} {graph_cost(original).macs:>9,}")
    for name, order in ORDERS.items():
        ctx = PassContext(training=train, evaluation=valid, calibration=calib, reference=original)
        graph = PassManager("import", ctx).run(original.copy()).graph
        for step in order:
            try:
                graph = PassManager(steps[step], ctx).run(graph).graph
            except EdgecError as error:  # the table reports what an order cannot do
                print(f"{name:<32} {step:<10} refused: {str(error).splitlines()[0][:90]}")
                break
            infer_shapes(graph)
            accuracy = test_accuracy(graph, test)
            cost = f"{weight_bytes(graph):>9,} {graph_cost(graph).macs:>9,}"
            print(f"{name:<32} {step:<10} {accuracy:>9.4f} {cost}")


if __name__ == "__main__":
    main()
