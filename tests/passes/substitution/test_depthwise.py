"""substitute-depthwise-separable: structure, the SVD fit, MAC accounting, refusals."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from edgec.ir import op_sequence
from edgec.passes.substitution.depthwise import separable_weights
from tests.helpers import assert_same_outputs, covers, make_model, rng, run_pipeline


def _conv_model(weights: np.ndarray, group: int = 1):
    out_channels, in_channels = weights.shape[0], weights.shape[1] * group
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1], group=group)]
    return make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, in_channels, 6, 6])},
        {"y": (TensorProto.FLOAT, [1, out_channels, 6, 6])},
        {"w": weights.astype(np.float32), "b": rng(1).normal(0, 0.1, out_channels).astype(np.float32)},
    )


@covers("substitute-depthwise-separable", kind="structural")
def test_conv_becomes_depthwise_then_pointwise():
    model = _conv_model(rng().normal(0, 0.3, (16, 8, 3, 3)))
    graph, records = run_pipeline("substitute-depthwise-separable", model, verify=False)
    assert op_sequence(graph) == ["Conv", "Conv"]
    depthwise, pointwise = graph.nodes
    assert depthwise.attrs["group"] == 8 and list(depthwise.inputs[1].shape) == [8, 1, 3, 3]
    assert list(pointwise.inputs[1].shape) == [16, 8, 1, 1] and pointwise.inputs[2].name == "b"
    stats = records[0].stats
    # Per output pixel: 16*8*9 = 1152 MACs before, 8*9 + 16*8 = 200 after (36 pixels each).
    assert stats["macs"] == [1152 * 36, 200 * 36]
    assert stats["params"] == [16 * 8 * 9 + 16, 8 * 9 + 16 * 8 + 16]


@covers("substitute-depthwise-separable", kind="numeric")
def test_a_separable_kernel_is_reproduced_exactly():
    # W[o, c] = p[o, c] * d[c]: the per-channel SVD recovers it, so the outputs do not change.
    generator = rng(2)
    p, d = generator.normal(size=(16, 8)), generator.normal(size=(8, 3, 3))
    weights = (p[:, :, None, None] * d[None]).astype(np.float32)
    model = _conv_model(weights)
    graph, records = run_pipeline("substitute-depthwise-separable", model, verify=False)
    assert_same_outputs(model, graph.to_onnx(), atol=1e-4)
    assert records[0].stats["error"]["relative"] < 1e-5


def test_fit_is_the_best_rank_one_slice():
    weights = rng(3).normal(size=(6, 2, 3, 3)).astype(np.float32)
    depthwise, pointwise = separable_weights(weights)
    for channel in range(2):
        approx = np.outer(pointwise[:, channel, 0, 0], depthwise[channel, 0].ravel())
        singular = np.linalg.svd(weights[:, channel].reshape(6, 9), compute_uv=False)
        residual = np.linalg.norm(weights[:, channel].reshape(6, 9) - approx)
        np.testing.assert_allclose(residual, np.sqrt((singular[1:] ** 2).sum()), rtol=1e-4)


@covers("substitute-depthwise-separable", kind="negative")
def test_refuses_grouped_single_channel_pointwise_and_excluded_convs():
    cases = {
        "already grouped": _conv_model(rng().normal(size=(8, 1, 3, 3)), group=8),
        "one input channel": _conv_model(rng().normal(size=(8, 1, 3, 3))),
    }
    for reason, model in cases.items():
        graph, records = run_pipeline("substitute-depthwise-separable", model, verify=False)
        assert not records[0].changed and op_sequence(graph) == ["Conv"]
        assert reason in records[0].stats["refused"][0]["reason"]
    model = _conv_model(rng().normal(size=(16, 8, 3, 3)))
    _, records = run_pipeline("substitute-depthwise-separable{exclude=conv}", model, verify=False)
    assert records[0].stats["refused"][0]["reason"] == "excluded by the user"
    _, records = run_pipeline("substitute-depthwise-separable{min_reduction=8}", model, verify=False)
    assert "below min_reduction" in records[0].stats["refused"][0]["reason"]
