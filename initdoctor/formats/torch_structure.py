"""Residual blocks from a torch model's module tree, for when no graph can be read (torch.fx and
torch.export both fail, TorchScript): the repeated blocks of a transformer or a ResNet stage.

A block is a child of an ``nn.ModuleList`` or ``nn.Sequential`` that sits in a run of at least two
consecutive children of the same class (not itself a container: a ResNet stage's children are the
blocks), each holding at least two weighted layers
(``model.layers.N``, ``transformer.h.N``, ``encoder.layer.N``, ``blocks.N``, ``layer1.N``). The
probe measures it with forward hooks on the block module: the variance of its input hidden state
(the first tensor argument, or the ``hidden_states`` keyword) and of its output (the first tensor
it returns), ``growth = Var[out] / Var[in]`` — the same quantity the graph's residual blocks
measure at their skip input and output (:class:`~initdoctor.graph.Block`).
"""

from __future__ import annotations

from typing import Any

from ..graph import Block

_CONTAINERS = ("ModuleList", "Sequential")


def _class_name(module: Any) -> str:
    original = getattr(module, "original_name", None)  # TorchScript keeps the Python class name
    return original if isinstance(original, str) else type(module).__name__


def module_blocks(module: Any, weighted: dict[str, Any]) -> list[Block]:
    """The repeated blocks of ``module`` (outermost first, in registration order); ``weighted``
    holds the weighted layers' paths. Each block's ``after`` is the block before it in its run
    (one block's output is the next one's input); the first of a run has none."""
    blocks: list[Block] = []
    claimed: set[str] = set()
    for path, container in module.named_modules():
        if _class_name(container) not in _CONTAINERS or any(
            path == c or path.startswith(c + ".") for c in claimed
        ):
            continue
        run: list[tuple[str, list[str]]] = []
        run_class = None
        for name, child in list(container.named_children()) + [("", None)]:
            child_path = f"{path}.{name}" if path else name
            layers = [w for w in weighted if w.startswith(child_path + ".")] if child is not None else []
            cls = _class_name(child) if child is not None else None
            if cls in _CONTAINERS:  # a stage (Sequential of blocks): its children are the blocks
                layers = []
            if cls != run_class or len(layers) < 2:
                if len(run) >= 2:
                    _close_run(run, blocks, claimed)
                run, run_class = [], cls
            if child is not None and len(layers) >= 2:
                run.append((child_path, layers))
    return blocks


def _close_run(run: list[tuple[str, list[str]]], blocks: list[Block], claimed: set[str]) -> None:
    previous = None
    for child_path, layers in run:
        blocks.append(Block(child_path, f"{child_path}:in", f"{child_path}:out", layers, previous))
        claimed.add(child_path)
        previous = child_path
