"""S0xx: layers that are not judged (status ``skip``). These rules cannot be ignored by code: a
layer that cannot be judged has nothing to judge once the rule is gone."""

from __future__ import annotations

from ..report import Status
from .registry import Rule

S001 = Rule(
    code="S001",
    name="non-float-weights",
    severities=(Status.SKIP,),
    applies_to="layer",
    title="Integer (quantized) weights are not judged.",
    what="The weight's dtype: anything but float16/32/64 and bfloat16.",
    why="Kaiming's variance is about real-valued weights; a quantized tensor's std is in integer "
    "steps of an unknown scale.",
    formula="`is_float_dtype(dtype)` is false.",
    silence="Nothing to silence: the layer is reported with status skip and does not affect the summary.",
    messages={"default": "{dtype} weights (quantized or integer): not judged"},
)

S002 = Rule(
    code="S002",
    name="empty-weight",
    severities=(Status.SKIP,),
    applies_to="layer",
    title="An empty weight (0 elements) is not judged.",
    what="The weight's number of elements.",
    why="A std of no values does not exist.",
    formula="`numel == 0`.",
    silence="Nothing to silence: status skip does not affect the summary.",
    messages={"default": "empty weight (0 elements)"},
)

S003 = Rule(
    code="S003",
    name="embedding-table",
    severities=(Status.SKIP,),
    applies_to="layer",
    title="An embedding is a lookup table: its std is reported, not judged.",
    what="Layers of kind embedding.",
    why="A lookup selects one row per token; there is no fan-in to scale by, so Kaiming's "
    "`gain / sqrt(fan_in)` does not apply.",
    formula="No formula: role embedding.",
    silence="Nothing to silence: status skip does not affect the summary. NaN/Inf in the table is "
    "still an error (K105).",
    messages={"default": "embedding: a lookup table has no fan-in; std reported, not judged"},
)

S004 = Rule(
    code="S004",
    name="ignored-layer",
    severities=(Status.SKIP,),
    applies_to="layer",
    title="A layer whose name matches an `ignore` glob is not judged.",
    what="The layer's name against the layer-name globs of `ignore` (fnmatch, case-sensitive).",
    why="Configuration: the user chose not to judge these layers.",
    formula="`fnmatchcase(name, glob)` for any glob of `ignore`.",
    silence="Remove the glob from `ignore`.",
    messages={"default": "ignored by configuration"},
)

RULES = (S001, S002, S003, S004)
