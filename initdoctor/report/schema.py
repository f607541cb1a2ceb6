"""The JSON contracts: schema names, the versioning rule, and the NaN → null cleaning.

Every JSON object initdoctor prints names its schema (``"schema": "initdoctor.<name>/<version>"``):

- ``initdoctor.report/2`` — ``inspect --format json`` (:meth:`~initdoctor.report.Report.to_dict`);
- ``initdoctor.fix/2`` — ``fix --format json`` (:func:`~initdoctor.report.fix_to_dict`);
- ``initdoctor.compare/2`` — ``compare --format json`` (:func:`~initdoctor.report.compare_to_dict`).

The versioning rule, one for all three (README, "JSON output"): a field added keeps the version; a
field removed, renamed, or given another meaning or type bumps it (``/1`` → ``/2``), with a
CHANGELOG line. Version 2 of all three (0.9.0): a summary's status may be ``unknown`` (with
``unknown_reason``), and under it layers carry no ``suggested_scale``. JSON Schema files (draft
2020-12) for each are in ``docs/schemas/``; a test validates every command's output against them.

Report layout (``initdoctor.report/2``)::

    {"schema": "initdoctor.report/2", "initdoctor_version": str,
     "model": {"path", "format", "parameters", "layer_order", "has_graph"},
     "settings": {"nonlinearity", "negative_slope", "mode", "warn_threshold", "error_threshold",
                  "compound_threshold", "probe_warn_threshold", "dead_threshold", "ignore",
                  "overrides"},
     "layers": [{"name", "kind", "role", "shape", "fan_in", "fan_out", "groups", "nonlinearity",
                 "nonlinearity_source", "gain", "dtype", "numel", "weight_mean", "weight_std",
                 "expected_std", "std_ratio", "weight_variance_ratio", "suggested_scale",
                 "nan_count", "inf_count", "status", "message", "rule",
                 # measured by the probe, null without one:
                 "input_second_moment", "activation_var", "variance_ratio", "measured_scale",
                 "depth_ratio", "dead_fraction", "grad_var", "grad_ratio"}],
     "norm_layers": [{"name", "kind", "shape", "weight_mean", "weight_std", "bias_mean",
                      "bias_std", "status", "message", "rule"}],
     "residual_blocks": [{"name", "layers", "growth", "status", "message", "rule"}],
     "summary": {"status", "ok", "warn", "error", "skip", "worst_layer",
                 "compound_variance_ratio", "message", "depth_ratio", "measured_chain_ratio",
                 "grad_depth_ratio", "residual_growth", "rule", "kaiming_mode",
                 "unknown_reason", "weights",
                 "init_loss": null | {"classes", "baseline", "expected", "approx", "logit_std",
                                      "offset_share", "head", "source", "suggested_scale",
                                      "status"},
                 "blocks": {"ok", "warn", "error"},  # residual blocks counted
                 "next_step": str | null},  # the `initdoctor fix` command that repairs it
     "probe": null | {"backend", "inputs": [{"shape", "dtype", "name"?}], "seed", "runs", "backward",
               "notes"},
     "notes": [str]}

Numbers that do not exist (a ratio of a skipped layer) are ``null``. ``status`` is one of
:class:`~initdoctor.report.Status` (``skip``, ``ok``, ``unknown``, ``warn``, ``error``; ``unknown``
only in the summary, with ``unknown_reason`` ``no-graph`` or ``not-probed``), ``role`` one of
:class:`~initdoctor.report.Role`, ``nonlinearity_source`` one of :class:`~initdoctor.report.Source`.
``rule`` is the code of the rule that set a non-``ok`` status (``initdoctor rule CODE`` explains it;
docs/rules.md lists them all), ``null`` for a plain ``ok``; the summary's is the model-level rule
that decided it, or ``null`` when the layers' own statuses did.
"""

from __future__ import annotations

import math
from typing import Any

REPORT_SCHEMA = "initdoctor.report/2"
FIX_SCHEMA = "initdoctor.fix/2"
COMPARE_SCHEMA = "initdoctor.compare/2"
#: the report's schema (the name this module had before the fix and compare schemas joined it)
SCHEMA = REPORT_SCHEMA


def clean(value: Any) -> Any:
    """NaN/Inf → None (JSON has neither), tuples → lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
