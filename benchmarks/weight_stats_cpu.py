"""CPU cost of a torch tensor's weight statistics: the unified path against the two it replaced.

    python benchmarks/weight_stats_cpu.py [--repeats 7] [--sizes 65536,1048576,16777216]

One process; per size, a float32 tensor N(0, 0.02²) reduced by, in turn each round (median of
``--repeats`` rounds after one warm-up):

* ``unified`` — :func:`initdoctor.formats.torch_moments.weight_stats` (torch, float64, on one thread);
* ``torch-threads`` — the same reduction on torch's default intra-op threads (the in-memory
  modules' path before the unification);
* ``numpy`` — :func:`initdoctor.stats.array_stats` of the tensor's numpy view (the state_dict
  path before: ``torch_ops.tensor_stats``).

Goal: ``unified`` ≤ 1.5× ``numpy`` at every size (the state_dict route must not get slower by
more than noise); printed as met / not met. Wall time (``perf_counter``) and CPU time
(``process_time``) are both printed: on a loaded machine the threaded path's wall time is mostly
waiting at each op's barrier.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", default="65536,1048576,16777216")
    args = parser.parse_args()

    import torch

    from initdoctor.formats.torch_moments import reduce, weight_stats
    from initdoctor.stats import array_stats

    def threaded(t: torch.Tensor) -> object:
        return reduce(t, with_max=True)

    def numpy_path(t: torch.Tensor) -> object:
        return array_stats(t.reshape(-1).numpy(), dtype="float32")

    ops = {"unified": weight_stats, "torch-threads": threaded, "numpy": numpy_path}
    print(f"torch threads {torch.get_num_threads()}, repeats {args.repeats}")
    all_met = True
    for size in (int(s) for s in args.sizes.split(",")):
        torch.manual_seed(0)
        w = torch.randn(size) * 0.02
        wall: dict[str, list[float]] = {k: [] for k in ops}
        cpu: dict[str, list[float]] = {k: [] for k in ops}
        for op in ops.values():
            op(w)
        for _ in range(args.repeats):
            for name, op in ops.items():
                t0, c0 = time.perf_counter(), time.process_time()
                op(w)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in wall.items()}
        line = ", ".join(
            f"{k} {1e3 * med[k]:.2f} ms (cpu {1e3 * statistics.median(cpu[k]):.2f})" for k in ops
        )
        ratio = med["unified"] / med["numpy"]
        met = ratio <= 1.5
        all_met &= met
        print(
            f"{size:>10} elements: {line}; unified/numpy {ratio:.2f}×: {'met' if met else 'not met'} (≤ 1.5×)"
        )
    print("goal (unified ≤ 1.5× numpy at every size):", "met" if all_met else "not met")


if __name__ == "__main__":
    main()
