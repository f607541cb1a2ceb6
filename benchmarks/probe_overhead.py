"""Probe overhead: wall time and peak memory of the probe as a ratio to a plain forward pass
(torch) and to plain onnxruntime inference (ONNX), on a model of 20M+ parameters.

    python benchmarks/probe_overhead.py [--repeats 5] [--batch 256]
    python benchmarks/probe_overhead.py --alternate [--repeats 7] [--batch 1024]

``--alternate`` (issue 17): torch plain vs probe, then the ONNX modes, in ONE process, run
after run in turn (a slow spell of a shared machine hits all alike): ``plain`` (onnxruntime
session + one run),
``session`` (the session alone), ``probe`` (:func:`probe_onnx` in-process: what the probe costs
beside inference) and ``isolated`` (:func:`probe_onnx_isolated`, the default path: the same in a
forked child that can be stopped). The probe's fixed cost of being stoppable is ``isolated −
probe`` per call (the host process that forks the children is started once, by the first call,
reported apart).

Each mode runs in a fresh child process. Memory: the increase of the process's peak RSS (VmHWM,
reset through /proc/self/clear_refs once the model is built) during the first, cold run — so the
torch model's own weights are not counted, while the ONNX modes count what loading the file costs.
Times: median (min–max) of ``--repeats`` further runs. Each operation is end to end: the torch
ones draw their seeded input and run; ``onnx-plain`` creates an onnxruntime session from the file
and runs it once; the ONNX probes (``reduce`` = the default, ``expose`` in 32 MiB groups, and
``expose`` of every tensor at once as Polygraphy's ``mark all`` does) read the file and probe it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(width: int, depth: int):
    from examples.models import plain_mlp

    return plain_mlp(depth=depth, width=width, in_features=width, init="kaiming").eval()


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _rss_kb("VmRSS:")


def child(mode: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = build(args.width, args.depth)
    params = sum(p.numel() for p in model.parameters())
    shape = (args.batch, args.width)

    def draw():
        return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    if mode.startswith("onnx"):
        import onnxruntime as ort

        from initdoctor.formats.onnx import describe_onnx
        from initdoctor.probe.onnx_backend import probe_onnx
        from initdoctor.settings import ProbeSettings

        path = Path(args.onnx)
        del model
        if mode == "onnx-plain":  # what inference costs from the file: session + one run

            def op():
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                return session.run(None, {session.get_inputs()[0].name: draw()})
        else:
            desc = describe_onnx(path)
            strategy, group = {
                "onnx-probe": ("reduce", 256 << 20),
                "onnx-expose-groups": ("expose", 32 << 20),
                "onnx-expose-all": ("expose", 1 << 62),  # every tensor an output at once
            }[mode]
            settings = ProbeSettings(input_shapes=(shape,), onnx_strategy=strategy, group_bytes=group)
            op = lambda: probe_onnx(path, desc, settings)  # noqa: E731
    else:
        from initdoctor.formats.torch_module import describe_module
        from initdoctor.probe.torch_backend import probe_torch
        from initdoctor.settings import ProbeSettings

        if mode == "torch-plain":

            def op():
                with torch.no_grad():
                    return model(torch.from_numpy(draw()))
        else:
            desc = describe_module(model, path="bench", fmt="factory")
            settings = ProbeSettings(input_shapes=(shape,))
            op = lambda: probe_torch(model, desc, settings)  # noqa: E731
    base = _reset_peak()
    op()  # the first (cold) run sets the memory figure: peak RSS above the loaded model
    peak = _rss_kb("VmHWM:") - base
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        op()
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "params": params,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_mib": peak / 1024,
    }


def alternating(ops: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each op's wall times over ``repeats`` rounds in which every op runs once, in turn, after one
    warm-up run of each: a slow spell of a shared machine hits all of them alike."""
    for op in ops.values():
        op()
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            start = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - start)
    return times


def alternate_torch(args: argparse.Namespace) -> None:
    """``--alternate`` (first part): torch plain forward and torch probe alternated in this one process
    (``--repeats`` rounds after one warm-up of each), median times and the ratio of medians."""
    import numpy as np
    import torch

    from initdoctor.formats.torch_module import describe_module
    from initdoctor.probe.torch_backend import probe_torch
    from initdoctor.settings import ProbeSettings

    torch.manual_seed(0)
    model = build(args.width, args.depth)
    shape = (args.batch, args.width)
    desc = describe_module(model, path="bench", fmt="factory")
    settings = ProbeSettings(input_shapes=(shape,))

    def plain() -> None:
        with torch.no_grad():
            model(torch.from_numpy(np.random.default_rng(0).standard_normal(shape, dtype=np.float32)))

    ops = {"torch-plain": plain, "torch-probe": lambda: probe_torch(model, desc, settings)}
    times = alternating(ops, args.repeats)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["torch-probe"] / med["torch-plain"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; depth {args.depth}, width "
        f"{args.width}, batch {args.batch}; medians of {args.repeats} alternating runs"
    )
    for name, t in times.items():
        print(f"  {name:12s} {med[name] * 1000:8.1f} ms (min {min(t) * 1000:.1f}, max {max(t) * 1000:.1f})")
    print(f"torch probe / plain = {ratio:.3f}× (goal ≤ 1.05×): {'met' if ratio <= 1.05 else 'NOT met'}")


def alternate(args: argparse.Namespace, onnx_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from initdoctor.formats.onnx import describe_onnx
    from initdoctor.probe.onnx_backend import probe_onnx
    from initdoctor.probe.onnx_child import probe_onnx_isolated
    from initdoctor.settings import ProbeSettings

    shape = (args.batch, args.width)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    desc = describe_onnx(onnx_path)
    settings = ProbeSettings(input_shapes=(shape,))

    def session():
        return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def plain():
        s = session()
        return s.run(None, {s.get_inputs()[0].name: x})

    start = time.perf_counter()
    probe_onnx_isolated(onnx_path, desc, settings)  # starts the host process
    first = time.perf_counter() - start
    ops = {
        "plain": plain,
        "session": session,
        "probe": lambda: probe_onnx(onnx_path, desc, settings),
        "isolated": lambda: probe_onnx_isolated(onnx_path, desc, settings),
    }
    times = alternating(ops, args.repeats)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"ONNX, alternating in one process, median of {args.repeats}; batch {args.batch}, width {args.width}"
    )
    for name, t in times.items():
        print(f"  {name:9s} {med[name] * 1000:8.1f} ms (min {min(t) * 1000:.1f}, max {max(t) * 1000:.1f})")
    ratio = med["probe"] / med["plain"]
    fixed = med["isolated"] - med["probe"]
    print(f"probe / plain = {ratio:.2f}× (goal ≤ 1.2×: {'met' if ratio <= 1.2 else 'NOT met'})")
    host = first - med["isolated"]
    print(
        f"fixed cost of a stoppable probe: {fixed:.3f} s per call (isolated − probe; goal ≤ 0.3 s: "
        f"{'met' if fixed <= 0.3 else 'NOT met'}); the host process's start, once per process: "
        f"{host:.3f} s ({'met' if host <= 0.3 else 'NOT met'}); session creation (plain pays it too): "
        f"{med['session']:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--child")
    parser.add_argument("--onnx")
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="torch plain vs probe, then the ONNX modes, each alternated in one process",
    )
    args = parser.parse_args()
    if args.alternate:
        alternate_torch(args)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "bench.onnx"
        model = build(args.width, args.depth)
        torch.onnx.export(model, (torch.randn(args.batch, args.width),), str(onnx_path), dynamo=False)
        del model
        if args.alternate:
            torch.set_num_threads(1)
            alternate(args, onnx_path)
            return
        results = {}
        for mode in (
            "torch-plain",
            "torch-probe",
            "onnx-plain",
            "onnx-probe",
            "onnx-expose-groups",
            "onnx-expose-all",
        ):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--onnx",
                str(onnx_path),
                "--repeats",
                str(args.repeats),
                "--batch",
                str(args.batch),
                "--width",
                str(args.width),
                "--depth",
                str(args.depth),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    params = results["torch-plain"]["params"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
    print(
        f"model: plain ReLU MLP, depth {args.depth}, width {args.width}, {params / 1e6:.1f}M "
        f"parameters; batch {args.batch}; "
        f"median of {args.repeats} runs"
    )
    for mode, r in results.items():
        print(
            f"  {mode:20s} {r['median_s'] * 1000:8.1f} ms (min {r['min_s'] * 1000:.1f}, max "
            f"{r['max_s'] * 1000:.1f})"
            f"   peak +{r['peak_mib']:.1f} MiB"
        )
    for backend, goal in (("torch", 1.3), ("onnx", 1.5)):
        plain, probe = results[f"{backend}-plain"], results[f"{backend}-probe"]
        t = probe["median_s"] / plain["median_s"]
        m = probe["peak_mib"] / plain["peak_mib"] if plain["peak_mib"] > 0 else float("nan")
        print(
            f"{backend}: probe / plain = {t:.2f}× time, {m:.2f}× peak memory (goal ≤ {goal}×): "
            f"{'met' if t <= goal and m <= goal else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
