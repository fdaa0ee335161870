"""AdamW as a ``relax.training`` optimizer whose learning rate is part of its state.

TVM's ``optimizer.Adam`` bakes the learning rate into the compiled function as a constant (and
keeps its dtype as a ``PrimType``, which breaks its own state construction in 0.27), so a schedule
would need a rebuild per step. Here the state starts with the learning rate; the training loop
writes the scheduled value there before each step. Decoupled weight decay (Loshchilov & Hutter):

    m = b1 m + (1 - b1) g        v = b2 v + (1 - b2) g^2
    p = p - lr * r_p * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd_p * p)

with a per-parameter rate multiplier ``r_p`` (quantization scales learn slower than weights) and
weight decay ``wd_p`` (none for biases, normalization and scales).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _optimizer_base() -> type:
    from tvm.relax.training.optimizer import Optimizer

    return Optimizer


def make_adamw(
    rate_multipliers: list[float], weight_decays: list[float], betas: tuple[float, float] = (0.9, 0.999)
) -> Any:
    """An AdamW optimizer for parameters with the given per-parameter multipliers and decays."""
    from tvm import relax
    from tvm.relax.op import add, divide, multiply, sqrt, subtract

    class AdamW(_optimizer_base()):
        """See the module docstring; state: ``(lr, b1^t, b2^t, m..., v...)``."""

        def __init__(self) -> None:
            super().__init__("AdamW")

        def init(self, params: list[Any]) -> AdamW:
            # The training loop builds the state (edgec.train.compiler); here only the parameters.
            self._set_params_and_dtype(params)
            self.dtype = str(self.dtype)
            return self

        def get_function(self) -> Any:
            params = self.param_list
            count = len(params)
            scalar = relax.TensorType((), "float32")
            param_var = relax.Var("params", relax.TupleType([p.ty for p in params]))
            grad_var = relax.Var("gradients", relax.TupleType([p.ty for p in params]))
            state_types = [scalar, scalar, scalar, *(p.ty for p in params), *(p.ty for p in params)]
            state_var = relax.Var("optim_states", relax.TupleType(state_types))

            def const(value: float) -> Any:
                return relax.const(value, "float32")

            beta1, beta2 = betas
            bb = relax.BlockBuilder()
            with bb.function(self.name, [param_var, grad_var, state_var]):
                with bb.dataflow():
                    lr = bb.emit(relax.TupleGetItem(state_var, 0))
                    beta1_power = bb.emit(multiply(relax.TupleGetItem(state_var, 1), const(beta1)))
                    beta2_power = bb.emit(multiply(relax.TupleGetItem(state_var, 2), const(beta2)))
                    correction1 = bb.emit(subtract(const(1.0), beta1_power))
                    correction2 = bb.emit(subtract(const(1.0), beta2_power))
                    new_params, new_m, new_v = [], [], []
                    for i in range(count):
                        p = relax.TupleGetItem(param_var, i)
                        g = relax.TupleGetItem(grad_var, i)
                        m = add(
                            multiply(const(beta1), relax.TupleGetItem(state_var, 3 + i)),
                            multiply(const(1 - beta1), g),
                        )
                        v = add(
                            multiply(const(beta2), relax.TupleGetItem(state_var, 3 + count + i)),
                            multiply(const(1 - beta2), multiply(g, g)),
                        )
                        m, v = bb.emit(m), bb.emit(v)
                        step = divide(divide(m, correction1), add(sqrt(divide(v, correction2)), const(1e-8)))
                        if weight_decays[i]:
                            step = add(step, multiply(const(weight_decays[i]), p))
                        rate = multiply(lr, const(rate_multipliers[i]))
                        new_params.append(bb.emit(subtract(p, multiply(rate, step))))
                        new_m.append(m)
                        new_v.append(v)
                    params_out = bb.emit_output(relax.Tuple(new_params))
                    state_out = bb.emit_output(relax.Tuple([lr, beta1_power, beta2_power, *new_m, *new_v]))
                bb.emit_func_output(relax.Tuple([params_out, state_out]))
            return bb.get()[self.name]

    return AdamW()


def cosine_rate(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))
