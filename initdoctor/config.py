"""``[tool.initdoctor]`` in ``pyproject.toml``: project defaults for the command line.

Found like ruff and black find theirs: the closest ``pyproject.toml`` with a ``[tool.initdoctor]``
table, walking up from the current folder. Keys are the long option names; precedence is
command line > file > built-in defaults; an unknown key or a wrong type is an error naming it.

=====================  ==========  =================================================================
key                    type        meaning (the option of the same name)
=====================  ==========  =================================================================
nonlinearity           str         assumed where no graph shows one
negative-slope         float       for leaky_relu
mode                   str         fan_in | fan_out
warn-threshold         float       per-layer variance band for warn
error-threshold        float       per-layer variance band for error
compound-threshold     float       chain product band
fail-on                str         warn | error | never (``inspect``)
probe                  bool        run the probe
input-shape            [str]       probe input shapes, e.g. ["8,3,32,32"]
input-dtype            str         probe input dtype
batch-size             int         probe batch size
seed                   int         probe seed
vocab-size             int         token id range
trust                  bool        allow code-executing formats
ignore                 [str]       layer-name globs not judged (status ``skip``) and rule codes
                                   not applied (``C501``, prefix ``K1``; docs/rules.md)
overrides              table       glob → {nonlinearity = "...", negative-slope = ...}
=====================  ==========  =================================================================

Example::

    [tool.initdoctor]
    warn-threshold = 1.5
    ignore = ["classifier.*"]
    input-shape = ["8,3,32,32"]
    overrides = { "head.*" = { nonlinearity = "linear" } }
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import SettingsError

KEYS: dict[str, tuple[type, ...]] = {
    "nonlinearity": (str,),
    "negative-slope": (int, float),
    "mode": (str,),
    "warn-threshold": (int, float),
    "error-threshold": (int, float),
    "compound-threshold": (int, float),
    "fail-on": (str,),
    "probe": (bool,),
    "input-shape": (list,),
    "input-dtype": (str,),
    "batch-size": (int,),
    "seed": (int,),
    "vocab-size": (int,),
    "trust": (bool,),
    "ignore": (list,),
    "overrides": (dict,),
}
OVERRIDE_KEYS = ("nonlinearity", "negative-slope")


def find_config(start: Path | None = None) -> Path | None:
    """The closest ``pyproject.toml`` holding ``[tool.initdoctor]``, from ``start`` upwards."""
    folder = (start or Path.cwd()).resolve()
    for candidate in [folder, *folder.parents]:
        path = candidate / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"{path}: cannot read ({exc})") from None
            if "initdoctor" in data.get("tool", {}):
                return path
    return None


def load_config(start: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The validated ``[tool.initdoctor]`` table (kebab-case keys) and where it came from."""
    path = find_config(start)
    if path is None:
        return {}, None
    table = tomllib.loads(path.read_text(encoding="utf-8"))["tool"]["initdoctor"]
    for key, value in table.items():
        if key not in KEYS:
            raise SettingsError(f"{path}: unknown key {key!r} in [tool.initdoctor]; valid: {', '.join(KEYS)}")
        if not isinstance(value, KEYS[key]) or (isinstance(value, bool) and bool not in KEYS[key]):
            raise SettingsError(
                f"{path}: [tool.initdoctor] {key} has the wrong type ({type(value).__name__})"
            )
    for pattern, override in table.get("overrides", {}).items():
        if not isinstance(override, dict) or set(override) - set(OVERRIDE_KEYS):
            bad = sorted(set(override) - set(OVERRIDE_KEYS)) if isinstance(override, dict) else [pattern]
            raise SettingsError(
                f"{path}: [tool.initdoctor.overrides] {pattern!r}: unknown key {bad[0]!r}; valid: "
                f"{', '.join(OVERRIDE_KEYS)}"
            )
    return table, path


def overrides_setting(table: dict[str, Any]) -> tuple[tuple[str, str, float | None], ...]:
    """``overrides`` as the inspector's ``(glob, nonlinearity, negative slope)`` triples."""
    return tuple(
        (
            pattern,
            str(o.get("nonlinearity", "")),
            float(o["negative-slope"]) if "negative-slope" in o else None,
        )
        for pattern, o in table.get("overrides", {}).items()
    )
