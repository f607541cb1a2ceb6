"""The output logits of an ONNX graph for the loss at init (:class:`~initdoctor.probe.LogitStats`,
rule P207 in :mod:`initdoctor.checks.initloss`): the graph output a head's projection writes
(:func:`logits_output`), fetched over the same seeded runs as
the layers and reduced run by run (a language model's logits are not kept whole)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_session import run_session, session_with_outputs
from .types import LogitStats

#: the graph output read as the logits
LOGITS = "logits"


def logits_output(graph: Any) -> str | None:
    """The graph output that holds a head's logits: one named ``logits``, else the graph's only
    output when a projection by a stored weight (``MatMul``/``Gemm`` of an initializer or of its
    ``Transpose``: a tied head) writes it — the dynamo exporter names a causal LM's logits after
    the op (``linear``)."""
    names = [o.name for o in graph.output]
    if LOGITS in names:
        return LOGITS
    if len(names) != 1:
        return None
    inits = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(names[0])
    if node is None or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    weight = producer.get(node.input[1])
    if node.input[1] in inits or (
        weight is not None and weight.op_type == "Transpose" and weight.input[0] in inits
    ):
        return names[0]
    return None


class LogitSums:
    """:class:`LogitStats` accumulated run by run from the logits ``z`` of each run; ``ok`` turns
    False (and :meth:`result` gives None) when a run's ``z`` is not a finite float tensor of ≥ 2
    classes."""

    def __init__(self) -> None:
        self.positions, self.excess, self.variance = 0, 0.0, 0.0
        self.class_sum: np.ndarray | None = None
        self.ok = True

    def add(self, z: Any) -> None:
        z = np.asarray(z)
        if not self.ok or z.dtype.kind != "f" or z.ndim < 2 or z.shape[-1] < 2 or not z.size:
            self.ok = False
            return
        flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
        if not np.isfinite(flat).all():
            self.ok = False
            return
        peak = flat.max(axis=1, keepdims=True)
        lse = peak[:, 0] + np.log(np.exp(flat - peak).sum(axis=1))  # logsumexp_j z_j, stable
        self.excess += float((lse - flat.mean(axis=1)).sum())
        self.variance += float(flat.var(axis=1).sum())
        sums = flat.sum(axis=0)
        self.class_sum = sums if self.class_sum is None else self.class_sum + sums
        self.positions += flat.shape[0]

    def result(self) -> LogitStats | None:
        if not self.ok or self.class_sum is None or not self.positions:
            return None
        return LogitStats(
            classes=int(self.class_sum.shape[0]),
            positions=self.positions,
            lse_minus_mean=self.excess / self.positions,
            logit_var=self.variance / self.positions,
            offset_var=float((self.class_sum / self.positions).var()),
            source="output.logits",
        )


def onnx_logits(model: Any, weights: Any, feeds: Any, repeats: int) -> LogitStats | None:
    """:class:`LogitStats` of the graph output ``logits`` over ``repeats`` seeded runs (the same
    numbers :func:`initdoctor.probe.collector.logit_stats` gives on the runs' logits together);
    None without such an output, or when it is not a finite float tensor of ≥ 2 classes. (The
    ``reduce`` strategy fetches the logits in its own runs instead: :class:`LogitSums`.)"""
    name = logits_output(model.graph)
    if name is None:
        return None
    session = session_with_outputs(model, weights, [name])
    feeds.restart()
    sums = LogitSums()
    for _ in range(repeats):
        sums.add(run_session(session, [name], feeds.next())[0])
        if not sums.ok:
            return None
    return sums.result()
