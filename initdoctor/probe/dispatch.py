"""Which backend runs a loaded model: onnxruntime for ONNX (in a child process, see
:mod:`.onnx_child`), torch for everything else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..settings import ProbeSettings
from .inputs import load_inputs_file
from .types import ProbeError, ProbeResult, Progress


def run_probe(
    loaded: Any, settings: ProbeSettings, progress: Progress | None = None, example_inputs: Any = None
) -> ProbeResult:
    """Probe a :class:`~initdoctor.formats.LoadedModel`. Raises :class:`ProbeError` when the model
    has no graph to run or its forward fails. ``progress(done, total)`` is told of each measured
    layer call."""
    if loaded.runnable is None:
        raise ProbeError(
            f"{loaded.description.path}: a {loaded.description.format} file holds weights but no graph "
            "to run; give the model's factory (--model pkg.mod:fn --weights FILE) to probe it"
        )
    if example_inputs is None and settings.inputs_file:
        example_inputs = load_inputs_file(settings.inputs_file, settings.max_input_mib)
    result = _dispatch(loaded, settings, progress, example_inputs)
    result.seed, result.backward = settings.seed, settings.backward
    return result


def _dispatch(
    loaded: Any, settings: ProbeSettings, progress: Progress | None, example_inputs: Any
) -> ProbeResult:
    if loaded.backend == "onnx":
        from .onnx_child import probe_onnx_isolated

        if settings.backward:
            raise ProbeError(
                "--backward needs a torch model (factory, TorchScript, torch.export, trusted pickle)"
            )
        inputs: dict[str, np.ndarray] | list[np.ndarray] | None = None
        if isinstance(example_inputs, Mapping):  # matched to the graph's inputs by name
            inputs = {str(k): _array(v) for k, v in example_inputs.items()}
        elif example_inputs is not None:
            given = example_inputs if isinstance(example_inputs, (list, tuple)) else [example_inputs]
            inputs = [_array(x) for x in given]
        result = probe_onnx_isolated(
            loaded.runnable, loaded.description, settings, inputs=inputs, progress=progress
        )
    else:
        from .torch_backend import probe_torch

        result = probe_torch(
            loaded.runnable,
            loaded.description,
            settings,
            progress=progress,
            example_inputs=example_inputs,
            weights=loaded.streamed,
        )
    return result


def _array(value: Any) -> np.ndarray:
    """A numpy array of an example input (a torch tensor detached, half types as float32)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)
