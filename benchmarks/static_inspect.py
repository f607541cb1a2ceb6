"""Static inspection at scale: a ≥ 2 GB sharded safetensors checkpoint and the same weights as
ONNX with external data, against a floor; and `initdoctor --help` against `python -c pass`.

    python benchmarks/static_inspect.py [--gib 2.0] [--repeats 5] [--dir /tmp/initdoctor-bench]
        [--baseline /path/to/other/checkout]

``--baseline``: the inspections are also run from that checkout (its folder first on
``PYTHONPATH``) in the same rounds, so a before/after comparison alternates run by run.

Checkpoint: Linear weights of 4096×8192 float32 (128 MiB each) split over 4 shards with a
``model.safetensors.index.json``; the ONNX model is a MatMul chain over the same weights, all in one
external data file. Each measurement is a fresh process timed end to end (median and min–max over
``--repeats`` rounds; the commands run round-robin, so a slow spell hits all alike); peak RSS is
the process's maximum resident set (``/usr/bin/time -f %M``).

Floors (same interpreter start-up, same files):
* safetensors — ``import torch``, ``safe_open`` every shard, ``get_tensor`` every tensor
  and ``.sum()`` it once;
* state_dict (the same weights as one ``torch.save`` zip, not a goal of issue 7's list, measured
  alongside) — ``torch.load(mmap=True, weights_only=True)`` and ``.sum()`` every tensor;
* ONNX — ``import onnx, numpy``, load the graph without data, ``np.memmap`` every initializer and sum it once.
Goals (issue 7): inspect ≤ 1.5× the floor's wall time (issue 17: ≤ 1.2×, printed too); peak RSS ≤
2× the largest tensor + the interpreter baseline (``python -c "import torch"`` resp. ``import onnx, numpy``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROUT, COLS = 4096, 8192  # one tensor: 128 MiB of float32

FLOOR_SAFETENSORS = """
import json, sys, torch
from pathlib import Path
from safetensors import safe_open
index = Path(sys.argv[1]); shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
total = 0.0
for shard in shards:
    with safe_open(str(index.parent / shard), framework="pt") as f:
        for key in f.keys():
            total += float(f.get_tensor(key).sum())
print(total)
"""

FLOOR_STATE_DICT = """
import sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True, mmap=True)
print(sum(float(t.sum()) for t in state.values()))
"""

FLOOR_ONNX = """
import sys, numpy as np, onnx
from pathlib import Path
path = Path(sys.argv[1]); model = onnx.load(str(path), load_external_data=False)
total = 0.0
for t in model.graph.initializer:
    if t.data_location != onnx.TensorProto.EXTERNAL:
        continue  # the small inline Tile repeats
    info = {e.key: e.value for e in t.external_data}
    shape = tuple(t.dims)
    offset = int(info.get("offset", 0))
    arr = np.memmap(path.parent / info["location"], dtype=np.float32, mode="r", offset=offset, shape=shape)
    total += float(arr.sum(dtype=np.float64))
print(total)
"""


def generate(folder: Path, gib: float) -> tuple[Path, Path]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    index_path, onnx_path = folder / "model.safetensors.index.json", folder / "model.onnx"
    if index_path.exists() and onnx_path.exists():
        _state_dict(folder, index_path)
        return index_path, onnx_path
    n = max(2, round(gib * 1024 / (ROUT * COLS * 4 / 2**20)))
    rng = np.random.default_rng(0)
    per_shard = -(-n // 4)
    weight_map = {}
    data_file = folder / "model.onnx.data"
    offsets = []
    with open(data_file, "wb") as data:
        for s in range(0, n, per_shard):
            tensors = {}
            for i in range(s, min(n, s + per_shard)):
                w = rng.standard_normal((ROUT, COLS), dtype=np.float32) * np.float32(np.sqrt(2 / COLS))
                tensors[f"layers.{i}.weight"] = w
                offsets.append((f"layers.{i}.weight", data.tell()))
                data.write(w.tobytes())
            name = f"model-{s // per_shard + 1:05d}-of-{-(-n // per_shard):05d}.safetensors"
            save_file(tensors, str(folder / name))
            weight_map.update({k: name for k in tensors})
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    # ONNX: x @ W_i^T chained (Gemm transB=1: W stored [out, in]); 4096→... needs square chaining,
    # so each layer maps 8192 → 4096 and a Concat-free reshape is avoided by alternating Gemm + Tile.
    nodes, inits = [], []
    prev = "x"
    for i, (name, offset) in enumerate(offsets):
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[ROUT, COLS])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", data_file.name), ("offset", str(offset)), ("length", str(ROUT * COLS * 4))):
            t.external_data.add(key=k, value=v)
        inits.append(t)
        out = f"y{i}"
        nodes.append(helper.make_node("Gemm", [prev, name], [out], transB=1))
        relu = f"r{i}"
        nodes.append(helper.make_node("Relu", [out], [relu]))
        tiled = f"t{i}"
        reps = helper.make_tensor(f"reps{i}", TensorProto.INT64, [2], [1, COLS // ROUT])
        inits.append(reps)
        nodes.append(helper.make_node("Tile", [relu, f"reps{i}"], [tiled]))
        prev = tiled
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, COLS])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, COLS])],
        inits,
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(onnx_path))
    _state_dict(folder, index_path)
    return index_path, onnx_path


def _state_dict(folder: Path, index_path: Path) -> Path:
    """The same weights as one zip state_dict (``torch.save``), made from the shards once."""
    path = folder / "model.pt"
    if not path.exists():
        import torch
        from safetensors.torch import load_file

        shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        state = {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
        torch.save(state, folder / "model.pt.tmp")
        os.replace(folder / "model.pt.tmp", path)
    return path


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh process; ``PYTHONPATH=DIR`` first: its environment."""
    env, cwd = dict(os.environ), None
    if cmd[0].startswith("PYTHONPATH="):  # python -m puts the working folder first: run from there
        env["PYTHONPATH"] = cwd = cmd[0].split("=", 1)[1]
        cmd = cmd[1:]
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env, cwd=cwd
    )
    elapsed = time.perf_counter() - start
    if proc.returncode not in ((0, 1) if "initdoctor" in cmd else (0,)):
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed, int(proc.stderr.strip().splitlines()[-1]) / 1024


def summarize(samples: list[tuple[float, float]]) -> dict:
    times = [t for t, _ in samples]
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "peak_mib": max(p for _, p in samples),
    }


def measure(cmd: list[str], repeats: int) -> dict:
    return summarize([run_once(cmd) for _ in range(repeats)])


def measure_interleaved(runs: dict[str, list[str]], repeats: int) -> dict[str, dict]:
    """Round-robin over the commands, ``repeats`` rounds: a slow spell of a shared machine then
    hits every command alike instead of one command's block of runs."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, cmd in runs.items():
            samples[name].append(run_once(cmd))
    return {name: summarize(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/initdoctor-bench"))
    parser.add_argument("--baseline", type=Path, help="another checkout, timed alongside")
    args = parser.parse_args()
    index, onnx_path = generate(args.dir, args.gib)
    size = sum(p.stat().st_size for p in args.dir.glob("*.safetensors")) / 2**30
    largest = ROUT * COLS * 4 / 2**20
    py = sys.executable
    runs = {
        "safetensors floor": [py, "-c", FLOOR_SAFETENSORS, str(index)],
        "safetensors inspect": [
            py,
            "-m",
            "initdoctor",
            "inspect",
            str(index),
            "--no-probe",
            "--format",
            "json",
        ],
        "torch baseline": [py, "-c", "import torch"],
        "state_dict floor": [py, "-c", FLOOR_STATE_DICT, str(args.dir / "model.pt")],
        "state_dict inspect": [
            py,
            "-m",
            "initdoctor",
            "inspect",
            str(args.dir / "model.pt"),
            "--no-probe",
            "--format",
            "json",
        ],
        "onnx floor": [py, "-c", FLOOR_ONNX, str(onnx_path)],
        "onnx inspect": [py, "-m", "initdoctor", "inspect", str(onnx_path), "--no-probe", "--format", "json"],
        "onnx baseline": [py, "-c", "import onnx, numpy"],
        "python -c pass": [py, "-c", "pass"],
        "initdoctor --help": [py, "-m", "initdoctor", "--help"],
    }
    if args.baseline:
        for fmt in ("safetensors", "state_dict", "onnx"):
            runs[f"{fmt} inspect (baseline)"] = [f"PYTHONPATH={args.baseline}", *runs[f"{fmt} inspect"]]
    # byte-compile the package(s) once, as a regular install ships them: with
    # PYTHONDONTWRITEBYTECODE=1 an editable checkout would recompile every module at every start
    for root in (Path(__file__).resolve().parents[1], args.baseline):
        if root is not None:
            subprocess.run([py, "-m", "compileall", "-q", str(Path(root) / "initdoctor")], check=True)
    results = measure_interleaved(runs, args.repeats)
    print(
        f"checkpoint: {size:.2f} GiB safetensors in 4 shards + the same as ONNX external data and a zip "
        "state_dict; "
        f"largest tensor {largest:.0f} MiB; {os.cpu_count()} CPUs; median of {args.repeats}"
    )
    for name, r in results.items():
        print(
            f"  {name:22s} {r['median']:7.2f} s ({r['min']:.2f}–{r['max']:.2f})   peak RSS "
            f"{r['peak_mib']:7.0f} MiB"
        )
    for fmt, base in (
        ("safetensors", "torch baseline"),
        ("state_dict", "torch baseline"),
        ("onnx", "onnx baseline"),
    ):
        t = results[f"{fmt} inspect"]["median"] / results[f"{fmt} floor"]["median"]
        budget = 2 * largest + results[base]["peak_mib"]
        peak = results[f"{fmt} inspect"]["peak_mib"]
        print(
            f"{fmt}: {t:.2f}× the floor's time (goal ≤ 1.5×: {'met' if t <= 1.5 else 'NOT met'}); peak RSS "
            f"{peak:.0f} MiB vs budget {budget:.0f} MiB (2 × largest + baseline): "
            f"{'met' if peak <= budget else 'NOT met'}"
        )
        print(
            f"{fmt}: issue 17's goal ≤ 1.2× the floor's time: {'met' if t <= 1.2 else 'NOT met'} ({t:.2f}×)"
        )
        if f"{fmt} inspect (baseline)" in results:
            b = results[f"{fmt} inspect (baseline)"]["median"] / results[f"{fmt} floor"]["median"]
            print(f"{fmt}: baseline {b:.2f}× the floor's time")
    h = results["initdoctor --help"]["median"]
    floor = results["python -c pass"]["median"]
    print(
        f"--help: {h:.3f} s vs python -c pass {floor:.3f} s (goal ≤ 0.3 s: "
        f"{'met' if h <= 0.3 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
