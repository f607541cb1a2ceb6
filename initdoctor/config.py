"""``[tool.initdoctor]`` in ``pyproject.toml``: project defaults for the command line.

The keys, their types and defaults come from the option table (:mod:`initdoctor.options`).
Found like ruff and black find theirs: the closest ``pyproject.toml`` with a ``[tool.initdoctor]``
table, walking up from the current folder. Keys are the long option names; precedence is
command line > file > built-in defaults; an unknown key or a wrong type is an error naming it.

The keys are the options marked ``config`` in the table, with their types and defaults:
``python -c "from initdoctor.options import CONFIG_KEYS; print(*CONFIG_KEYS)"`` lists them
(``ignore`` holds layer-name globs not judged (status ``skip``) and rule codes not applied,
``C501`` or a prefix ``K1`` (docs/rules.md); ``overrides`` maps a layer glob to
``{nonlinearity = "...", negative-slope = ...}``).

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
from .options import BY_NAME, CONFIG_KEYS, OVERRIDE_KEYS, config_types, default

#: ``[tool.initdoctor]`` keys and the Python types their values may have (from the option table)
KEYS: dict[str, tuple[type, ...]] = {name: config_types(option) for name, option in CONFIG_KEYS.items()}


def find_config(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The closest ``pyproject.toml`` holding ``[tool.initdoctor]``, from ``start`` upwards, and
    that table (each file is read and parsed once)."""
    folder = (start or Path.cwd()).resolve()
    for candidate in [folder, *folder.parents]:
        path = candidate / "pyproject.toml"
        table = _table(path) if path.is_file() else None
        if table is not None:
            return path, table
    return None


def _table(path: Path) -> dict[str, Any] | None:
    """``[tool.initdoctor]`` of ``path``, or None when the file has none. A file that cannot be
    read or parsed is skipped unless it names ``tool.initdoctor`` (an unrelated, broken
    pyproject.toml up the tree must not break every command); then it is an error naming it."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    ours = b"tool.initdoctor" in raw or b'"initdoctor"' in raw or b"[tool]" in raw and b"initdoctor" in raw
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        if not ours:
            return None
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc) or type(exc).__name__
        raise SettingsError(f"{path}: cannot read ({reason})") from None
    tool = data.get("tool")
    if not isinstance(tool, dict) or "initdoctor" not in tool:
        return None
    table = tool["initdoctor"]
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [tool.initdoctor] must be a table, got {type(table).__name__}")
    return table


def load_config(start: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The validated ``[tool.initdoctor]`` table (kebab-case keys) and where it came from."""
    found = find_config(start)
    if found is None:
        return {}, None
    path, table = found
    if "trust" in table:  # a cloned repository's pyproject.toml must not turn on unpickling
        raise SettingsError(
            f"{path}: [tool.initdoctor] trust: running code from a model file is allowed from the command "
            "line only (--trust), never from a config file; remove the key"
        )
    for key, value in table.items():
        if key not in KEYS:
            raise SettingsError(
                f"unknown key {key!r} in {path} [tool.initdoctor]; {_did_you_mean(key, KEYS)}"
            )
        if not isinstance(value, KEYS[key]) or (isinstance(value, bool) and bool not in KEYS[key]):
            raise SettingsError(
                f"{path}: [tool.initdoctor] {key} has the wrong type ({type(value).__name__})"
            )
        choices = CONFIG_KEYS[key].choices
        if choices and value not in choices:
            raise SettingsError(
                f"{path}: [tool.initdoctor] {key} = {value!r} is not one of {', '.join(choices)}; "
                + _did_you_mean(str(value), choices)
            )
    if not all(isinstance(item, str) for item in table.get("ignore", [])):
        raise SettingsError(
            f"{path}: [tool.initdoctor] ignore: every entry must be a string (a code or a glob)"
        )
    for shape in table.get("input-shape", []):
        parts = shape if isinstance(shape, list) else [shape]
        if not all(isinstance(part, (str, int)) and not isinstance(part, bool) for part in parts):
            raise SettingsError(
                f'{path}: [tool.initdoctor] input-shape: {shape!r} is not a shape like "8,3,32,32"'
            )
    for pattern, override in table.get("overrides", {}).items():
        if not isinstance(override, dict) or set(override) - set(OVERRIDE_KEYS):
            bad = sorted(set(override) - set(OVERRIDE_KEYS)) if isinstance(override, dict) else [pattern]
            raise SettingsError(
                f"{path}: [tool.initdoctor.overrides] {pattern!r}: unknown key {bad[0]!r}; valid: "
                f"{', '.join(OVERRIDE_KEYS)}"
            )
        slope = override.get("negative-slope", 0.0)
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise SettingsError(
                f"{path}: [tool.initdoctor.overrides] {pattern!r}: negative-slope must be a number"
            )
        if not isinstance(override.get("nonlinearity", ""), str):
            raise SettingsError(
                f"{path}: [tool.initdoctor.overrides] {pattern!r}: nonlinearity must be a string"
            )
    return table, path


def _did_you_mean(word: str, valid: Any) -> str:
    """``did you mean 'warn-threshold'?`` for the closest valid name (``_`` read as ``-``), else the
    list of valid names."""
    import difflib

    close = difflib.get_close_matches(word.replace("_", "-"), list(valid), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(valid)}"


def overrides_setting(table: dict[str, Any]) -> tuple[tuple[str, str, float | None], ...]:
    """``overrides`` as the checks' ``(glob, nonlinearity, negative slope)`` triples."""
    return tuple(
        (
            pattern,
            str(o.get("nonlinearity", "")),
            float(o["negative-slope"]) if "negative-slope" in o else None,
        )
        for pattern, o in table.get("overrides", {}).items()
    )


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8,3,32,32"`` (or ``8x3x32x32``) → ``(8, 3, 32, 32)``."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise SettingsError(
            f"--input-shape {text!r}: expected integers separated by commas, e.g. 8,3,32,32"
        ) from None
    if not shape:
        raise SettingsError(f"--input-shape {text!r}: empty")
    return shape


def resolve(cli: dict[str, Any], start: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Command line > ``[tool.initdoctor]`` > defaults, for every config key.

    ``cli`` holds a command's parameters by their Python names (``warn_threshold``); ``None`` or
    ``[]`` means "not given". Returns (the library settings for :func:`initdoctor.diagnose`, by
    field name; the resolved options by long name)."""
    table, _ = load_config(start)
    opts: dict[str, Any] = {}
    for key, option in CONFIG_KEYS.items():
        value = cli.get(option.param)
        if value is None or value == []:
            value = table.get(key, default(key))
        opts[key] = value
    settings: dict[str, Any] = {}
    for key, value in opts.items():
        field = BY_NAME[key].field
        if field is None:
            continue
        if key == "input-shape":
            value = tuple(
                parse_shape(",".join(map(str, t)) if isinstance(t, list) else str(t)) for t in value
            )
        elif key == "ignore":
            value = tuple(value)
        elif key == "overrides":
            value = overrides_setting({"overrides": value})
        elif BY_NAME[key].type is float:
            value = float(value)
        elif BY_NAME[key].type is int and value is not None:
            value = int(value)
        settings[field] = value
    if opts["fail-on"] not in BY_NAME["fail-on"].choices:
        valid = ", ".join(BY_NAME["fail-on"].choices)
        raise SettingsError(f"fail-on must be one of {valid}, got {opts['fail-on']!r}")
    return settings, opts
