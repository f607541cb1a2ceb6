"""Where the torch probe's time beyond a plain forward goes: ``torch.profiler`` of the probe and of
the plain forward on ``probe_overhead.py``'s model (a 6-layer ReLU MLP of width 2048), self CPU time
per op over ``--repeats`` calls (issue 17's CPU floor).

    python benchmarks/probe_profile.py [--batch 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    import numpy as np
    import torch
    from probe_overhead import build
    from torch.profiler import ProfilerActivity, profile

    from initdoctor.formats.torch_module import describe_module
    from initdoctor.probe.torch_backend import probe_torch
    from initdoctor.settings import ProbeSettings

    torch.manual_seed(0)
    model = build(2048, 6)
    shape = (args.batch, 2048)
    desc = describe_module(model, path="bench", fmt="factory")
    settings = ProbeSettings(input_shapes=(shape,))

    def plain() -> None:
        with torch.no_grad():
            model(torch.from_numpy(np.random.default_rng(0).standard_normal(shape, dtype=np.float32)))

    def probe() -> None:
        probe_torch(model, desc, settings)

    for _ in range(3):  # warm-up (the first dispatch mode, allocator)
        plain()
        probe()
    for name, op in (("probe", probe), ("plain forward", plain)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                op()
        print(f"== {name}: {args.repeats} calls, self CPU time per op")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
