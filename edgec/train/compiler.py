"""Training graph → compiled training step (loss, gradients, AdamW update) on the host CPU.

The ``relax.training`` flow, step by step so that edgec can check and schedule in between:
``from_onnx`` (weights as parameters) → fake quantization (:mod:`.fake_quant`) → ``AppendLoss``
→ ``DecomposeOpsForTraining`` (BatchNormalization on batch statistics) → a check that every op on
the way from a weight to the loss has a gradient → ``Gradient`` → the optimizer function → Relax's
legalization and fusion → edgec's CPU schedules (``targets/tvm/schedules.py``; conv2d in NHWC,
their layout, which :mod:`.gradients` keeps for the backward convolutions too) → ``tvm.compile``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgec.errors import EdgecError
from edgec.train.fake_quant import FakeQuantSpec
from edgec.train.graph import TrainingGraph
from edgec.train.losses import LossSpec

# Ops a user may meet in ``missing_gradients`` and what to do about them.
_WAY_OUT = {
    "relax.call_tir": "an ONNX op the frontend imports as a plain kernel",
    "relax.nn.dropout": "run the default pipeline first (eliminate-identity removes inference Dropout)",
    "relax.quantize": "a QuantizeLinear without its DequantizeLinear",
    "relax.dequantize": "integer weights: train the float model (or use --qat), then quantize",
}


# The layout training runs in with edgec's schedules (pooling, normalization and elementwise ops
# follow their inputs).
NHWC_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}


@dataclass
class TrainStep:
    """A compiled training step and its state on the device.

    Attributes:
        vm: the Relax VM with ``backbone_loss_adjoint`` and ``optimizer``.
        names: parameter names in the order of ``params`` (``param_<k>``).
        params: current parameter values (device tensors).
        optim_state: AdamW state (learning rate first).
        targets: names of the loss targets, in call order.
    """

    vm: Any
    names: list[str]
    params: list[Any]
    optim_state: list[Any]
    targets: list[str]
    kernels: int = 0
    scheduled: int = 0

    def step(self, inputs: list[np.ndarray], targets: list[np.ndarray], rate: float) -> float:
        """One forward/backward/update on a batch; returns the loss before the update."""
        import tvm

        self.optim_state[0] = tvm.runtime.tensor(np.asarray(rate, np.float32))
        args = (
            [tvm.runtime.tensor(a) for a in inputs] + self.params + [tvm.runtime.tensor(t) for t in targets]
        )
        loss, grads = self.vm["backbone_loss_adjoint"](*args)
        new_params, new_state = self.vm["optimizer"](self.params, grads, self.optim_state)
        self.params = list(new_params)
        self.optim_state = list(new_state)
        return float(loss.numpy())

    def values(self) -> dict[str, np.ndarray]:
        """Current parameter values by name (copied to numpy)."""
        return {name: tensor.numpy() for name, tensor in zip(self.names, self.params, strict=True)}

    def load(self, values: dict[str, np.ndarray]) -> None:
        """Sets the parameters (a checkpoint)."""
        import tvm

        self.params = [tvm.runtime.tensor(np.asarray(values[name], np.float32)) for name in self.names]


def _import(graph: TrainingGraph) -> Any:
    from tvm.relax.frontend.onnx import from_onnx

    from edgec.errors import UnsupportedNodeError
    from edgec.targets.tvm.frontend import input_signature, run_frontend, unsupported_nodes

    problems = unsupported_nodes(graph.model)
    if problems:
        raise UnsupportedNodeError(*problems[0])
    shapes, dtypes = input_signature(graph.model, None)
    return run_frontend(
        lambda: from_onnx(graph.model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=True)
    )


def _lower(mod: Any, schedules: bool) -> Any:
    import tvm
    from tvm import relax

    from edgec.targets.tvm.schedules import apply_default_cpu_schedules

    target = host_target()
    with target:
        if not schedules:
            return relax.transform.LegalizeOps()(mod)
        mod = tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
            ]
        )(mod)
        return apply_default_cpu_schedules(target)(mod)


def _explicit_tuple_return(function: Any) -> Any:
    """A function returning several outputs as a ``Tuple`` expression (``AppendLoss`` splits that
    expression into outputs; the frontend returns a variable bound to the tuple)."""
    from tvm import relax

    body = function.body
    if not isinstance(function.ret_ty, relax.TupleType) or isinstance(body.body, relax.Tuple):
        return function
    # Unpacked inside the (single) dataflow block: the backbone must stay one block.
    block = body.blocks[0]
    fields = [relax.Var(f"output_{i}", ty) for i, ty in enumerate(function.ret_ty.fields)]
    unpack = [relax.VarBinding(var, relax.TupleGetItem(body.body, i)) for i, var in enumerate(fields)]
    new_block = relax.DataflowBlock([*block.bindings, *unpack])
    new_body = relax.SeqExpr([new_block], relax.Tuple(fields))
    return relax.Function(function.params, new_body, function.ret_ty, function.is_pure, function.attrs)


def host_target() -> Any:
    """The TVM target of this machine's CPU."""
    import tvm

    from edgec.targets.x86 import host_cpu_name

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name()})


# Compiled training steps of this process, by everything that shapes the compiled code (the model
# with its initial weights, the loss, the grids, the optimizer's constants): a second run of the
# same setup (another seed, another learning rate) starts from fresh weights without recompiling.
_COMPILED: dict[str, tuple[Any, list[str], list[str], int, int]] = {}


def _cache_key(graph: TrainingGraph, *parts: Any) -> str:
    import hashlib

    digest = hashlib.sha256(graph.model.SerializeToString())
    digest.update(repr(parts).encode())
    return digest.hexdigest()


def _fresh_state(names: list[str], graph: TrainingGraph) -> list[Any]:
    """AdamW's initial state: rate 0, beta powers 1, zero moments."""
    import tvm

    scalars = [np.zeros((), np.float32), np.ones((), np.float32), np.ones((), np.float32)]
    zeros = [np.zeros_like(graph.initial[name]) for name in names]
    return [tvm.runtime.tensor(value) for value in (*scalars, *zeros, *zeros)]


def compile_step(
    graph: TrainingGraph,
    loss: LossSpec,
    quantized: dict[str, FakeQuantSpec],
    rate_multipliers: dict[str, float],
    weight_decays: dict[str, float],
    schedules: bool = True,
) -> TrainStep:
    """Compiles the training step of ``graph`` under ``loss`` with AdamW.

    Args:
        graph: the training graph (parameters ``param_<k>``).
        loss: the loss terms.
        quantized: fake-quantization grids keyed by scale parameter name.
        rate_multipliers, weight_decays: per parameter name (default 1 and 0).
        schedules: apply edgec's CPU schedules (``False``: TVM's untuned defaults, to compare).

    Raises:
        EdgecError: an op without a gradient on the way from a weight to the loss (named, with the
            way out), or a model the frontend cannot import.
    """
    import tvm

    key = _cache_key(
        graph,
        loss,
        sorted(quantized.items()),
        sorted(rate_multipliers.items()),
        sorted(weight_decays.items()),
        schedules,
    )
    if key not in _COMPILED:
        _COMPILED[key] = _compile(graph, loss, quantized, rate_multipliers, weight_decays, schedules)
    vm, names, targets, kernels, scheduled = _COMPILED[key]
    initial = [tvm.runtime.tensor(graph.initial[name]) for name in names]
    return TrainStep(vm, names, initial, _fresh_state(names, graph), targets, kernels, scheduled)


def _compile(
    graph: TrainingGraph,
    loss: LossSpec,
    quantized: dict[str, FakeQuantSpec],
    rate_multipliers: dict[str, float],
    weight_decays: dict[str, float],
    schedules: bool,
) -> tuple[Any, list[str], list[str], int, int]:
    import tvm
    from tvm import relax
    from tvm.relax.training.utils import AppendLoss

    from edgec.train.fake_quant import insert_fake_quant
    from edgec.train.gradients import missing_gradients, register_gradients
    from edgec.train.losses import loss_function
    from edgec.train.optimizer import make_adamw

    register_gradients()
    imported = _import(graph)
    function = imported["main"].without_attr("params")
    module = tvm.IRModule({"backbone": function.with_attr("global_symbol", "backbone")})
    if schedules:
        # Train in NHWC, the layout of edgec's conv2d schedule: forward and backward convolutions
        # (edgec.train.gradients) without layout transposes between them.
        module = relax.transform.ConvertLayout(NHWC_LAYOUTS)(module)
    module, _ = insert_fake_quant(module, "backbone", quantized)
    function = _explicit_tuple_return(module["backbone"])
    module["backbone"] = function
    inputs = len(graph.inputs)
    names = [p.name for p in function.params[inputs:]]
    if sorted(names) != sorted(graph.sources):
        raise EdgecError(f"the imported model's parameters {names} are not the training weights")
    ret = function.ret_ty
    output_types = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    loss_fn, _ = loss_function(loss, output_types)
    module = module.with_attrs({"param_num": len(names), "state_num": 0})
    module = AppendLoss("backbone", loss_fn, len(output_types), "backbone_loss")(module)
    module = relax.transform.DecomposeOpsForTraining("backbone_loss")(module)
    loss_function_ = module["backbone_loss"]
    params = list(loss_function_.params[inputs : inputs + len(names)])
    missing = missing_gradients(loss_function_, params)
    if missing:
        ways = "; ".join(f"{op}: {_WAY_OUT[op]}" for op in missing if op in _WAY_OUT)
        raise EdgecError(
            f"no gradient for {', '.join(missing)} in the model; edgec cannot train through it"
            + (f" ({ways})" if ways else "")
            + ". Replace the op (e.g. with the substitute-activation pass) or exclude it from training"
        )
    module = relax.transform.Gradient("backbone_loss", require_grads=params, target_index=0)(module)
    optimizer = make_adamw(
        [rate_multipliers.get(n, 1.0) for n in names], [weight_decays.get(n, 0.0) for n in names]
    ).init(params)
    module["optimizer"] = optimizer.get_function().with_attr("global_symbol", "optimizer")
    training = tvm.IRModule(
        {
            gv: func
            for gv, func in module.functions.items()
            if gv.name_hint not in ("backbone", "backbone_loss")
        }
    )
    lowered = _lower(training, schedules)
    kernels = [f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    scheduled = sum(1 for f in kernels if f.attrs is not None and "tirx.is_scheduled" in f.attrs)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        executable = tvm.compile(lowered, host_target())
    vm = relax.VirtualMachine(executable, tvm.cpu())
    targets = loss.target_names(len(output_types) - 1)
    return vm, names, targets, len(kernels), scheduled
