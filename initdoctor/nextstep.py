"""The next step, named (as ruff names ``--fix``): the ``initdoctor fix`` command that repairs what
an ``inspect`` found, and the command that writes what ``fix --check`` would change.

Pure text from the report (and, for ``fix --check``, the command line as given): no torch.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: formats whose loading runs code: fix needs ``--trust`` on them, as inspect did
TRUSTED_FORMATS = ("torch-module", "torchscript", "torch.export")
#: the residual rules; ``--method auto`` repairs them with Fixup (an unnormalized branch) or zero-γ
BLOCK_RULES = ("R301", "R302", "R303")


def fixed_name(source: str) -> str:
    """Where the repaired model goes: ``model.safetensors`` → ``model.fixed.safetensors``, a
    folder ``ckpt`` → ``ckpt-fixed``, a factory → ``fixed.safetensors`` (its weights)."""
    path = Path(source)
    if ":" in source and not path.exists():
        return "fixed.safetensors"
    if path.is_dir() or not path.suffix:
        return f"{path.name.rstrip('/') or 'model'}-fixed"
    return path.with_name(f"{path.stem}.fixed{path.suffix}").as_posix()


def block_method(report: Any) -> str | None:
    """The method ``auto`` uses on the flagged residual blocks: ``fixup`` when one of them has no
    norm inside (Fixup, Zhang et al. 2019), ``skipinit`` when all end in a norm (zero-γ); None
    without a block finding."""
    bad = [b for b in report.residual_blocks if b.status != "ok" and (b.rule or "") in BLOCK_RULES]
    if not bad:
        return None
    norms = [n.name for n in report.norm_layers]
    plain = [b for b in bad if not any(n.startswith(f"{b.name}.") for n in norms)]
    return "fixup" if plain else "skipinit"


def inspect_next_step(report: Any) -> str | None:
    """One line after an ERROR/WARN summary naming the repairing command; None otherwise."""
    step = next_command(report)
    return None if step is None else f"next: {step[0]}{step[1]}"


def fix_command(report: Any, source: str | None = None, carry: Sequence[str] = ()) -> str | None:
    """The ``initdoctor fix`` command that repairs an ERROR/WARN report (None otherwise):
    ``source`` as given on the command line (default: the report's path) and ``carry``, the flags
    of the judging command that change the verdict (:func:`initdoctor.commands.verdict_flags`), so
    that running it judges the model as the report did."""
    if report.summary.status not in ("error", "warn"):
        return None
    source = str(report.model["path"]) if source is None else source
    words = ["initdoctor", "fix", source, *carry]
    if report.model.get("format") in TRUSTED_FORMATS and "--trust" not in carry:
        words.append("--trust")
    method = block_method(report)
    if method is not None and not _layers_too(report):  # the blocks alone: the remedy is the whole fix
        words += ["--method", method]
    words += ["-o", fixed_name(source)]
    return shlex.join(words)


def set_next_step(report: Any, source: str | None = None, carry: Sequence[str] = ()) -> None:
    """Write :func:`fix_command` into ``report.summary.next_step`` (JSON ``summary.next_step``)."""
    report.summary.next_step = fix_command(report, source, carry)


def _layers_too(report: Any) -> bool:
    return any(f.status in ("warn", "error") for f in report.layers)


def next_command(report: Any) -> tuple[str, str] | None:
    """The repairing command (``summary.next_step`` when set, else :func:`fix_command`) and a note
    on it (" (…)" or ""), for an ERROR/WARN report."""
    command = fix_command(report)
    if command is None:
        return None
    command = getattr(report.summary, "next_step", None) or command
    method, line = block_method(report), ""
    if method is not None:
        rules = sorted({b.rule or "" for b in report.residual_blocks if b.status != "ok"} & set(BLOCK_RULES))
        line += f" ({method} on the residual blocks: {', '.join(rules)}"
        line += "; Kaiming rescale on the flagged layers)" if _layers_too(report) else ")"
    elif not report.model.get("has_graph", True) and "--model" not in shlex.split(command):
        line += " (no graph in the file: --model PKG.MODULE:FN builds one, so fix can probe it)"
    return command, line


def check_next_step(argv: list[str], source: str) -> str:
    """``fix --check``'s last line: the command as given, with ``--check``/``--dry-run`` replaced by
    ``-o OUT`` (unless it names an output or ``--in-place`` already)."""
    if "fix" not in argv or not {"--check", "--dry-run"} & set(argv):  # not this process's command line
        argv = ["fix", source]
    words = [w for w in argv if w not in ("--check", "--dry-run")]
    if not any(w in ("-o", "--in-place") or w.startswith("--output") for w in words):
        words += ["-o", fixed_name(source)]
    return f"to write them: {shlex.join(['initdoctor', *words])}"
