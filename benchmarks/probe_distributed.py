"""``initdoctor.diagnose`` on a transformers LLaMA: in one process vs on each rank of a 2-process
gloo job whose model is sharded with FSDP2 ``fully_shard`` (every decoder layer, then the root),
issue 18. Both read the graph by torch.export (the sharded one from its unsharded twin) and run
the same interpreter; the sharded run adds the shard statistics' all-gathers, FSDP's unshard of
each module and the guards.

    python benchmarks/probe_distributed.py [--repeats 7] [--sizes tiny,wide]

Sizes: ``tiny`` (the model of tests/test_distributed.py: hidden 32, 2 layers, vocab 64, batch
4×16) and ``wide`` (hidden 256, 8 layers, 8 heads / 4 KV heads, MLP 688, vocab 1024, batch 4×64).
Every process runs one thread. Rounds alternate: the two ranks time one ``diagnose`` each (after a
barrier), then the parent times the single-process one, so a slow spell of a shared machine hits
both; each figure is the median (min–max) of ``--repeats`` rounds after one warm-up round. Prints
wall and CPU time (``time.process_time``: on a loaded machine the two ranks compete for the CPUs
while the single process runs alone, so the wall ratio overstates the cost), the per-rank / single
ratios and whether the two reports are equal (every field, 1e-6 relative).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=32, layers=2, heads=4, kv=2, mlp=64, vocab=64, batch=4, tokens=16),
    "wide": dict(hidden=256, layers=8, heads=8, kv=4, mlp=688, vocab=1024, batch=4, tokens=64),
}


def build(size: dict[str, int]) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["mlp"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv"],
        max_position_embeddings=max(64, size["tokens"]),
    )
    return LlamaForCausalLM(config)


def tokens(size: dict[str, int]) -> Any:
    import torch

    shape = (size["batch"], size["tokens"])
    return torch.randint(0, size["vocab"], shape, generator=torch.Generator().manual_seed(1))


def _worker(rank: int, port: int, names: list[str], rounds: int, go: Any, out: Any) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import initdoctor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=600))
    try:
        for name in names:
            model = build(SIZES[name])
            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            for _ in range(rounds):
                go.get()
                dist.barrier()
                start, cpu = time.perf_counter(), time.process_time()
                report = initdoctor.diagnose(model, example_inputs=tokens(SIZES[name]), seed=0)
                spent = (time.perf_counter() - start, time.process_time() - cpu)
                out.put((rank, name, spent, report.to_dict()))
    finally:
        dist.destroy_process_group()


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        if got is None or want is None:
            return got is want
        return (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(want, dict):
        return (
            isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    return bool(got == want)


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", default="tiny,wide")
    args = parser.parse_args()
    names = args.sizes.split(",")
    rounds = args.repeats + 1  # the first is the warm-up

    import torch
    import torch.multiprocessing as mp

    import initdoctor

    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    go, out = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, names, rounds, go, out)) for r in range(2)]
    for p in procs:
        p.start()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread per process, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    try:
        for name in names:
            size = SIZES[name]
            model = build(size)
            params = sum(p.numel() for p in model.parameters())
            single_t: list[float] = []
            single_c: list[float] = []
            rank_t: dict[int, list[float]] = {0: [], 1: []}
            rank_c: dict[int, list[float]] = {0: [], 1: []}
            equal = True
            for i in range(rounds):
                go.put(None)
                go.put(None)
                got = [out.get(timeout=900) for _ in range(2)]
                start, cpu = time.perf_counter(), time.process_time()
                single = initdoctor.diagnose(model, example_inputs=tokens(size), seed=0).to_dict()
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                equal = equal and all(_same(d, single) for *_, d in got)
                if i:
                    single_t.append(elapsed)
                    single_c.append(cpu)
                    for rank, _, (t, c), _ in got:
                        rank_t[rank].append(t)
                        rank_c[rank].append(c)
            worst = max(statistics.median(rank_t[0]), statistics.median(rank_t[1]))
            worst_cpu = max(statistics.median(rank_c[0]), statistics.median(rank_c[1]))
            print(
                f"{name}: {params:,} parameters, batch {size['batch']}×{size['tokens']} — single process "
                f"{_fmt(single_t)}; per rank (2 gloo processes) rank 0 {_fmt(rank_t[0])}, rank 1 "
                f"{_fmt(rank_t[1])}; ratio {worst / statistics.median(single_t):.2f}×; CPU time single "
                f"{_fmt(single_c)}, per rank {_fmt(rank_c[0])} / {_fmt(rank_c[1])}, ratio "
                f"{worst_cpu / statistics.median(single_c):.2f}×; reports equal: {'yes' if equal else 'NO'}",
                flush=True,
            )
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


if __name__ == "__main__":
    main()
