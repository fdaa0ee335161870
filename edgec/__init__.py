"""edgec: shrink ONNX models and compile them with TVM for x86, Cortex-A and Cortex-M targets.

Python API::

    import edgec
    result = edgec.compile("model.onnx", "build/", target="x86")
    print(result.manifest["error"])

TVM is imported only when a target lowers or builds, so ``import edgec`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Imported eagerly: importing the submodule ``edgec.compile`` later would rebind the name
# ``edgec.compile`` from the function below to the module.
from edgec.compile import CompileResult, Prepared, compile_model, optimize_model
from edgec.config import CompileOptions


def compile(
    model: Any, out_dir: Any, options: CompileOptions | None = None, **overrides: Any
) -> CompileResult:
    """Compiles an ONNX model into a build directory; see :func:`edgec.compile.compile_model`.

    Keyword overrides are option names of :class:`edgec.CompileOptions` (``target="cortex-m4"``).
    """
    return compile_model(model, out_dir, (options or CompileOptions()).merged(overrides))


def optimize(model: Any, output: Any, options: CompileOptions | None = None, **overrides: Any) -> Prepared:
    """Runs the import path and the pipeline and saves the optimized ONNX model."""
    return optimize_model(model, output, (options or CompileOptions()).merged(overrides))


__all__ = ["CompileOptions", "CompileResult", "Prepared", "__version__", "compile", "optimize"]
