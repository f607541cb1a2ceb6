"""`initdoctor fix --all` on the 2 GiB checkpoint of `static_inspect.py` (sharded safetensors, the
zip state_dict, and ONNX with external data with and without the after-fix probe): wall time and
peak RSS of a fresh process, against copying the same shards (the floor: fix has to write a new
checkpoint of the same size, fsync included).

    python benchmarks/fix_large.py [--repeats 3] [--dir /tmp/initdoctor-bench]

Every layer is rescaled (``--all``), so every byte of weights is rewritten; the output folder is
removed after each run; the commands run round-robin (a slow spell of disk writeback then hits
every command alike).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from static_inspect import generate, run_once, summarize  # noqa: E402

COPY = """
import os, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir()
for f in sorted(src.glob("model-*.safetensors")) + [src / "model.safetensors.index.json"]:
    shutil.copyfile(f, dst / f.name)
    fd = os.open(dst / f.name, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/initdoctor-bench"))
    args = parser.parse_args()
    index, onnx_path = generate(args.dir, 2.0)
    out = args.dir.parent / "initdoctor-bench-fixed"
    fixed_onnx = str(out / "fixed.onnx")
    py = sys.executable
    runs = {
        "copy + fsync (floor)": [py, "-c", COPY, str(args.dir), str(out)],
        "safetensors fix --all": [py, "-m", "initdoctor", "fix", str(index), "--all", "--output", str(out)],
        "state_dict fix --all": [
            py,
            "-m",
            "initdoctor",
            "fix",
            str(args.dir / "model.pt"),
            "--all",
            "-o",
            str(out / "fixed.pt"),
        ],
        "onnx fix --all --no-probe": [
            py,
            "-m",
            "initdoctor",
            "fix",
            str(onnx_path),
            "--all",
            "--no-probe",
            "-o",
            fixed_onnx,
        ],
        "onnx fix --all (probed)": [py, "-m", "initdoctor", "fix", str(onnx_path), "--all", "-o", fixed_onnx],
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # round-robin: a slow spell (disk writeback) hits every command alike
        for name, cmd in runs.items():
            shutil.rmtree(out, ignore_errors=True)
            if name not in ("copy + fsync (floor)", "safetensors fix --all"):
                out.mkdir()
            samples[name].append(run_once(cmd))
    shutil.rmtree(out, ignore_errors=True)
    results = {}
    for name, runs_ in samples.items():
        summary = summarize(runs_)
        results[name] = (summary["median"], summary["min"], summary["max"], summary["peak_mib"])
    for name, (med, lo, hi, peak) in results.items():
        ratio = med / results["copy + fsync (floor)"][0]
        print(
            f"  {name:26s} {med:6.2f} s ({lo:.2f}–{hi:.2f}) {ratio:5.2f}× the copy   peak RSS {peak:6.0f} MiB"
        )
    print("largest tensor 128 MiB, checkpoint 2048 MiB")


if __name__ == "__main__":
    main()
