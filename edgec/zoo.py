"""Real architectures shipped inside the ``onnx`` wheel, with seeded random weights.

The wheel's ``onnx/backend/test/data/light/light_*.onnx`` models (squeezenet, resnet50,
inception v1/v2, densenet121, shufflenet, vgg19, alexnet, zfnet512) compute their weights with
``ConstantOfShape`` nodes that hold a dummy value. ``light_model`` replaces them by seeded random
initializers scaled so that activations stay in a normal range (He initialisation; BatchNorm
variances positive), which makes numeric comparisons meaningful.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgec.errors import EdgecError

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_model_names() -> list[str]:
    return sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))


def _random_weight(name: str, shape: tuple[int, ...], role: str, rng: np.random.Generator) -> np.ndarray:
    if role == "conv_weight" and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if role == "gemm_weight" and len(shape) == 2:
        return rng.normal(0.0, np.sqrt(1.0 / max(shape)), shape)
    if role == "residual_bn_scale":
        # Like zero-initialised residual branches in training recipes: without it, every residual
        # Add doubles the variance and resnet50's logits reach ~1e5.
        return rng.uniform(0.1, 0.3, shape)
    if role == "bn_scale":
        return rng.uniform(0.5, 1.5, shape)
    if role == "bn_var":
        return rng.uniform(0.5, 1.5, shape)
    if role in ("bn_mean", "bias", "bn_shift"):
        return rng.normal(0.0, 0.1, shape)
    return rng.normal(0.0, 0.1, shape)


def _roles(model: onnx.ModelProto) -> dict[str, str]:
    roles: dict[str, str] = {}
    residual_inputs = {
        name for node in model.graph.node if node.op_type in ("Add", "Sum") for name in node.input
    }
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            roles[node.input[1]] = "conv_weight"
            if len(node.input) > 2:
                roles[node.input[2]] = "bias"
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
            roles[node.input[1]] = "gemm_weight"
            if len(node.input) > 2:
                roles[node.input[2]] = "bias"
        elif node.op_type == "BatchNormalization" and node.output[0] in residual_inputs:
            roles[node.input[1]] = "residual_bn_scale"
            roles.update(zip(node.input[2:], ("bn_shift", "bn_mean", "bn_var"), strict=False))
        elif node.op_type == "BatchNormalization":
            for name, role in zip(
                node.input[1:], ("bn_scale", "bn_shift", "bn_mean", "bn_var"), strict=False
            ):
                roles[name] = role
    return roles


def _drop_final_softmax(model: onnx.ModelProto) -> None:
    for output in model.graph.output:
        producer = next((n for n in model.graph.node if output.name in n.output), None)
        if producer is not None and producer.op_type == "Softmax":
            model.graph.node.remove(producer)
            for node in model.graph.node:  # the Softmax input becomes the output
                node.output[:] = [output.name if o == producer.input[0] else o for o in node.output]
                node.input[:] = [output.name if i == producer.input[0] else i for i in node.input]


def light_model(
    name: str, seed: int = 0, *, logits: bool = False, opset: int | None = None
) -> onnx.ModelProto:
    """The wheel's ``light_<name>`` architecture with seeded random weights as initializers.

    Args:
        name: architecture (``squeezenet``, ``resnet50``, ...; see :func:`light_model_names`).
        seed: seed of the weights.
        logits: drop a final Softmax, so numeric comparisons see the logits rather than an
            almost one-hot distribution.
        opset: convert to this opset (the wheel's models are opset 8/9, older than what
            quantized QDQ graphs need).
    """
    path = LIGHT_DIR / f"light_{name}.onnx"
    if not path.is_file():
        raise EdgecError(f"no light model '{name}'; available: {', '.join(light_model_names())}")
    model = onnx.load_model(str(path))
    rng = np.random.default_rng(seed)
    roles = _roles(model)
    kept = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0:1] != [""]:
            shape_init = next(i for i in model.graph.initializer if i.name == node.input[0])
            shape = tuple(int(d) for d in numpy_helper.to_array(shape_init))
            output = node.output[0]
            values = _random_weight(output, shape, roles.get(output, "other"), rng).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(values, output))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for n in model.graph.node for i in n.input}
    live = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)
    # IR 3 models also list every weight as a graph input; the inputs are only the real data.
    initialized = {i.name for i in model.graph.initializer}
    data_inputs = [i for i in model.graph.input if i.name in used and i.name not in initialized]
    del model.graph.input[:]
    model.graph.input.extend(data_inputs)
    if logits:
        _drop_final_softmax(model)
    model.graph.name = name
    # IR < 4 requires every initializer to be a graph input; the weights are not inputs.
    model.ir_version = max(model.ir_version, 4)
    if opset is not None:
        from onnx import version_converter

        model = version_converter.convert_version(model, opset)
    onnx.checker.check_model(model)
    return model
