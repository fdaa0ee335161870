"""``edgec run``: a built artifact on inputs from a ``.npz`` file, every sample in one target run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.data import LABEL_KEY, as_runs, read_npz, sample_layout
from edgec.errors import EdgecError


def run_build(
    build_dir: str | Path, inputs: Path, repeat: int = 0
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Runs a built artifact on a .npz of inputs, all samples in one run of the target.

    The file holds one sample (arrays of exactly the input shapes) or many: ``[N, *shape]``, or a
    batch-1 model's samples stacked on its batch axis (``[N, *shape[1:]]``). Outputs come back by
    name in the same layout (one sample: the output shapes; stacked: outputs of batch 1 stacked
    on their batch axis; otherwise ``[N, *shape]``), with the seconds of ``repeat`` timed runs of
    the first sample.
    """
    from edgec.manifest import read_manifest
    from edgec.targets import get_target

    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    target = get_target(manifest["target"]["name"])
    arrays = read_npz(inputs)
    expected = {i["name"]: i for i in manifest["inputs"]}
    missing = sorted(set(expected) - set(arrays))
    unknown = sorted(set(arrays) - set(expected) - {LABEL_KEY})
    if missing or unknown:
        raise EdgecError(
            f"'{inputs}': inputs {'missing ' + str(missing) if missing else ''}"
            f"{' unexpected ' + str(unknown) if unknown else ''}; the model's inputs are {sorted(expected)}"
        )
    runs, layouts = [], set()
    for spec in manifest["inputs"]:
        array = arrays[spec["name"]]
        layout = sample_layout(array, tuple(spec["shape"]))
        if layout is None or array.dtype.name != spec["dtype"]:
            raise EdgecError(
                f"'{inputs}': input '{spec['name']}' is {array.dtype.name}{list(array.shape)}, the model "
                f"expects {spec['dtype']}{spec['shape']} (one sample) or N samples of it (a leading axis)"
            )
        runs.append(as_runs(array, layout))
        layouts.add(layout)
    counts = sorted({len(r) for r in runs})
    if len(counts) > 1 or counts == [0]:
        raise EdgecError(f"'{inputs}': the inputs hold {' and '.join(map(str, counts))} samples")
    outputs, times = target.run(build_dir, manifest, runs, repeat)
    if layouts == {"sample"}:
        outputs = [output[0] for output in outputs]
    elif layouts == {"stacked"}:
        outputs = [o[:, 0] if o.ndim > 1 and o.shape[1] == 1 else o for o in outputs]
    names = [o["name"] for o in manifest["outputs"]]
    return dict(zip(names, outputs, strict=True)), times


def run_threads(build_dir: str | Path) -> int:
    """The threads a built artifact runs with on this machine, in this environment."""
    from edgec.manifest import read_manifest
    from edgec.targets import get_target

    manifest = read_manifest(Path(build_dir))
    try:
        return get_target(manifest["target"]["name"]).run_threads(manifest)
    except ValueError as err:  # a malformed TVM_NUM_THREADS
        raise EdgecError(str(err)) from err
