"""Quick coercion of the command line's plain values, without pydantic.

Typer ≥ 0.2x coerces every parameter through a pydantic ``TypeAdapter`` built on first use:
importing pydantic and building one adapter per option cost ~90 ms of CPU per run (of the 0.6 s an
``inspect model.onnx --no-probe`` of 1 GiB took; ``benchmarks/README.md``). initdoctor's options
are plain (:mod:`initdoctor.options`): a string, a path, an int, a float, one of a few choices, a
list of strings. :func:`install` gives each parameter of a command a coercion that converts such
a value the way typer's adapter does and hands everything else, every value that would be an
error included, to typer's own adapter: same values, same messages. A typer without the hook
(older ones: no adapters) is left as it is.
"""

from __future__ import annotations

import os
import re
import types
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import typer.core

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NO = object()
#: ParameterInfo settings whose rules only typer applies (none of initdoctor's options has one)
_SPECIAL = ("parser", "click_type", "min", "max", "exists", "resolve_path", "allow_dash")


def _plain(annotation: Any) -> Any:
    """``X | None`` → ``X``; anything else unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _convert(annotation: Any, value: Any) -> Any:
    """``value`` converted as typer's adapter would, or :data:`_NO` when not sure."""
    if annotation is str and isinstance(value, str):
        return value
    if annotation is Path and isinstance(value, str) and value and not os.path.lexists(value):
        return Path(value)  # an existing path: typer checks it is readable & co.
    if annotation is int and isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    if annotation is float and isinstance(value, str) and _FLOAT.fullmatch(value):
        return float(value)
    if annotation is float and type(value) in (int, float):  # a table default
        return float(value)
    if annotation in (int, bool) and type(value) is annotation:
        return value
    if isinstance(annotation, type) and issubclass(annotation, Enum) and isinstance(value, str):
        for member in annotation:
            if member.value == value:
                return member
    listed = get_origin(annotation) is list and get_args(annotation) == (str,)
    if listed and isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    return _NO


class _Quick:
    def __init__(self, annotation: Any) -> None:
        self.annotation = _plain(annotation)

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:  # as typer's RuntimeParam.coerce
            return () if multi else None
        got = _NO if multi and isinstance(value, str) else _convert(self.annotation, value)
        if got is not _NO:
            return got
        param._runtime_param = None  # typer's own adapter, built now: its value or its error
        return param.get_runtime_param().coerce(value, param=param, ctx=ctx)


def install(params: list[Any]) -> None:
    """Give every parameter that typer would coerce through pydantic the quick coercion."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", _NO) is not None:
            continue
        info = getattr(descriptor, "parameter_info", None)
        special = [getattr(info, name, None) for name in _SPECIAL]
        if getattr(descriptor, "file_annotation", None) is not None or any(
            v is not None and v is not False for v in special
        ):
            continue  # typer's own rules apply
        param._runtime_param = _Quick(descriptor.annotation)


class QuickCommand(typer.core.TyperCommand):
    """A command whose plain parameters are coerced without pydantic (:func:`install`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        install(self.get_params(ctx))
        return super().parse_args(ctx, args)


class QuickGroup(typer.core.TyperGroup):
    """The command group, likewise (its ``--version``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        install(self.get_params(ctx))
        return super().parse_args(ctx, args)
