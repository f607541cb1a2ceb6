"""The probe on an accelerator (issue 17): a LLaMA-architecture model of about 1 B parameters in
bf16 on a GPU, batch 8 × 512 tokens — plain forward vs ``diagnose(probe=True)`` vs
``diagnose(probe=False)``, medians of ``--repeats`` runs, alternating in one process.

    python benchmarks/probe_gpu.py            # CUDA, ≈1 B parameters (needs transformers)
    python benchmarks/probe_gpu.py --tiny     # a tiny config on the CPU: checks the script runs

Goals (printed met / NOT met): probe ≤ 1.3 × the plain forward + 0.5 s fixed cost; static pass
(``probe=False``) ≤ 0.2 s; one ``torch.export`` per diagnosis (counted and timed by wrapping
``torch.export.export``; the export still runs). ``--tiny`` numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.probe_overhead import alternating  # noqa: E402


def build(tiny: bool, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        config = LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    else:  # TinyLlama-1.1B's shape: 22 layers, 2048 wide, 5632 MLP, 32 heads / 4 KV heads
        config = LlamaConfig(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (a dry run)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import torch

    import initdoctor

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for a CPU dry run")
    batch, seq = (2, 32) if args.tiny else (8, 512)
    model = build(args.tiny, device)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)

    real_export, spent = torch.export.export, {"calls": 0, "s": 0.0}

    def timed_export(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return real_export(*a, **k)
        finally:
            spent["calls"] += 1
            spent["s"] += time.perf_counter() - start

    torch.export.export = timed_export
    exports: dict[str, list[tuple[int, float]]] = {}

    def counted(name: str, op: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            calls, secs = spent["calls"], spent["s"]
            op()
            exports.setdefault(name, []).append((spent["calls"] - calls, spent["s"] - secs))

        return run

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids)
        sync()

    def probed() -> None:
        initdoctor.diagnose(model, probe=True, example_inputs={"input_ids": ids})
        sync()

    def static() -> None:
        initdoctor.diagnose(model, probe=False)
        sync()

    ops = {
        "plain forward": plain,
        "diagnose(probe=True)": counted("probe", probed),
        "diagnose(probe=False)": counted("static", static),
    }
    times = alternating(ops, args.repeats)  # after a warm-up of each: kernels, allocator, lazy imports
    med = {name: statistics.median(t) for name, t in times.items()}
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none (CPU dry run)"
    print(
        f"device: {device}, GPU: {gpu}, torch {torch.__version__}; LLaMA {params / 1e9:.3f} B parameters, "
        f"bf16, batch {batch}×{seq}; medians of {args.repeats} alternating runs"
    )
    for name, t in times.items():
        print(f"  {name:24s} {med[name] * 1000:9.1f} ms (min {min(t) * 1000:.1f}, max {max(t) * 1000:.1f})")
    fwd, probe, stat = med["plain forward"], med["diagnose(probe=True)"], med["diagnose(probe=False)"]
    goal = 1.3 * fwd + 0.5
    print(
        f"probe: {probe:.3f} s vs goal ≤ 1.3 × {fwd:.3f} + 0.5 = {goal:.3f} s: "
        f"{'met' if probe <= goal else 'NOT met'}"
    )
    print(f"static: {stat:.3f} s vs goal ≤ 0.2 s: {'met' if stat <= 0.2 else 'NOT met'}")
    for name, runs in exports.items():
        calls = max(c for c, _ in runs)
        print(
            f"torch.export in diagnose({name}): {calls} call(s) per diagnosis, median "
            f"{statistics.median(t for _, t in runs):.3f} s; one export: {'met' if calls == 1 else 'NOT met'}"
        )
    if args.tiny:
        print("(--tiny: a CPU dry run of the script; these figures say nothing about a GPU)")


if __name__ == "__main__":
    main()
