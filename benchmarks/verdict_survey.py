"""Verdict survey: what the initdoctor of this checkout says about every model of the real-architecture
matrix (tests/realzoo.py), in every form a user has it. Prints a table; not a test.

    python benchmarks/verdict_survey.py [--out FILE] [--only gpt2,resnet] [--forms factory,onnx]
                                        [--jobs 2] [--timeout 300]

Forms (files written once into a temporary folder by this process):

* ``factory``: ``inspect tests.realzoo:NAME``;
* ``sd+model``: the state_dict saved with ``torch.save`` + ``--model tests.realzoo:NAME``;
* ``sd``: the same bare state_dict;
* ``hf-dir``: a ``save_pretrained`` folder (transformers models only);
* ``onnx``: ``torch.onnx.export(dynamo=True)`` of the eval-mode model (BatchNorm is folded);
* ``onnx-train``: CNNs only, ``dynamo=False`` with ``training=TrainingMode.TRAINING`` (BatchNorm kept).

Each run is ``python -m initdoctor inspect … -f json -q`` in a subprocess from the checkout root
with ``PYTHONPATH`` set to it. Per row: the expected verdict (healthy → ok, broken → error),
exit code, summary status and rule, whether an error-level layer or residual block names one of
the broken entry's culprits (``y``/``n``), wall seconds, and the first 80 characters of the
summary message (of the last stderr line when there is no JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMS = ("factory", "sd+model", "sd", "hf-dir", "onnx", "onnx-train")


def write_forms(entry, folder: Path, forms: set[str]) -> dict[str, list[str] | str]:
    """The argv (after ``inspect``) of each form of ``entry``, or the error that prevented writing it."""
    import torch

    from tests import realzoo

    model = entry.build().eval()
    out: dict[str, list[str] | str] = {}
    if "factory" in forms:
        out["factory"] = [entry.factory]
    state = folder / f"{entry.name}.pt"
    if forms & {"sd", "sd+model"}:
        torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, state)
        out["sd+model"], out["sd"] = [str(state), "--model", entry.factory], [str(state)]
    if "hf-dir" in forms and entry.hf:
        model.save_pretrained(folder / f"{entry.name}_hf")
        out["hf-dir"] = [str(folder / f"{entry.name}_hf")]
    kwargs = realzoo.probe_inputs(entry, batch=2)
    if "onnx" in forms:
        path = folder / f"{entry.name}.onnx"
        try:
            with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                warnings.simplefilter("ignore")
                if entry.inputs == "image":
                    torch.onnx.export(model, (kwargs["x"],), str(path), dynamo=True, verbose=False)
                else:
                    torch.onnx.export(model, (), str(path), kwargs=kwargs, dynamo=True, verbose=False)
            out["onnx"] = [str(path)]
        except Exception as exc:  # noqa: BLE001 - recorded in the table
            out["onnx"] = f"export failed: {type(exc).__name__}: {exc}".splitlines()[0]
    if "onnx-train" in forms and entry.inputs == "image":
        path = folder / f"{entry.name}_train.onnx"
        model.train()
        torch.onnx.export(
            model,
            (kwargs["x"],),
            str(path),
            dynamo=False,
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
        )
        out["onnx-train"] = [str(path)]
    return {f: out[f] for f in FORMS if f in out and f in forms}


def run_one(argv: list[str], timeout: float) -> tuple[int, dict | None, str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-W", "ignore", "-m", "initdoctor", "inspect", *argv, "-f", "json", "-q"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, None, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = None
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, report, lines[-1] if lines else "", seconds


def culprit_named(report: dict, culprits: tuple[str, ...]) -> bool:
    names = [f["name"] for f in report.get("layers", []) if f.get("status") == "error"]
    names += [b.get("name", "") for b in report.get("residual_blocks") or [] if b.get("status") == "error"]
    if report["summary"].get("status") == "error":
        names.append(report["summary"].get("worst_layer") or "")
    return any(n.startswith(c) for n in names for c in culprits if n)


WIDTHS = (18, 6, 10, -3, 8, 6, 3, -6)  # negative: right-aligned


def fmt(*cols: object) -> str:
    """The columns at :data:`WIDTHS`, the message (last) after two spaces."""
    cells = [f"{c!s:>{-w}}" if w < 0 else f"{c!s:<{w}}" for c, w in zip(cols[:-1], WIDTHS, strict=True)]
    return " ".join(cells) + f"  {cols[-1]!s:.80}"


def row(entry, form: str, result: tuple[int, dict | None, str, float] | str) -> str:
    expect = "ok" if entry.healthy else "error"
    if isinstance(result, str):
        return fmt(entry.name, expect, form, "-", "-", "-", "-", "-", result)
    rc, report, stderr, seconds = result
    status, rule, named, message = "-", "-", "-", stderr
    if report is not None:
        summary = report["summary"]
        status, rule, message = summary["status"], summary.get("rule") or "-", summary.get("message") or ""
        if entry.culprits:
            named = "y" if culprit_named(report, entry.culprits) else "n"
    message = " ".join(message.split())
    return fmt(entry.name, expect, form, rc, status, rule, named, f"{seconds:.1f}", message)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--only", default="", help="comma-separated matrix names (default: all)")
    parser.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of {', '.join(FORMS)}")
    parser.add_argument("--jobs", type=int, default=2, help="inspect subprocesses at a time")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per inspect run")
    args = parser.parse_args(argv)
    import logging

    import torch

    from tests import realzoo

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    wanted, forms = set(filter(None, args.only.split(","))), set(args.forms.split(","))
    entries = [e for e in realzoo.MATRIX if not wanted or e.name in wanted]
    version = subprocess.run(
        [sys.executable, "-c", "import initdoctor; print(initdoctor.__version__)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.strip()
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(
        f"# verdict_survey: initdoctor {version} from {ROOT}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.jobs} jobs"
    )
    header = fmt("model", "expect", "form", "rc", "status", "rule", "hit", "s", "message")
    emit(header)
    emit("-" * 120)
    start = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="initdoctor-survey-") as tmp,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        pending = []  # every form of every model in flight while the next model's files are written
        for entry in entries:
            for form, argv in write_forms(entry, Path(tmp), forms).items():
                job = pool.submit(run_one, argv, args.timeout) if isinstance(argv, list) else argv
                pending.append((entry, form, job))
        for entry, form, job in pending:
            emit(row(entry, form, job if isinstance(job, str) else job.result()))
    emit(f"# {len(entries)} models, total {time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
