"""`initdoctor fix --all` on the 2 GiB sharded safetensors checkpoint of `static_inspect.py`:
wall time and peak RSS of a fresh process, against copying the same shards (the floor: fix has to
write a new checkpoint of the same size, fsync included).

    python benchmarks/fix_large.py [--repeats 3] [--dir /tmp/initdoctor-bench]

Every layer is rescaled (``--all``), so every shard is rewritten; the output folder is removed
after each run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from static_inspect import generate, measure  # noqa: E402

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
    index, _ = generate(args.dir, 2.0)
    out = args.dir.parent / "initdoctor-bench-fixed"
    py = sys.executable
    results = {}
    for name, cmd in {
        "copy + fsync (floor)": [py, "-c", COPY, str(args.dir), str(out)],
        "initdoctor fix --all": [py, "-m", "initdoctor", "fix", str(index), "--all", "--output", str(out)],
    }.items():
        runs = []
        for _ in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            runs.append(measure(cmd, 1))
        shutil.rmtree(out, ignore_errors=True)
        times = sorted(r["median"] for r in runs)
        results[name] = (times[len(times) // 2], times[0], times[-1], max(r["peak_mib"] for r in runs))
    for name, (med, lo, hi, peak) in results.items():
        print(f"  {name:22s} {med:6.2f} s ({lo:.2f}–{hi:.2f})   peak RSS {peak:6.0f} MiB")
    ratio = results["initdoctor fix --all"][0] / results["copy + fsync (floor)"][0]
    print(f"fix: {ratio:.2f}× the copy's time; peak RSS {results['initdoctor fix --all'][3]:.0f} MiB "
          f"(largest tensor 128 MiB, checkpoint 2048 MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
