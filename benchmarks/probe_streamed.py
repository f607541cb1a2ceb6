"""Streamed probe of a checkpoint larger than RAM (issue 18, part 1).

    python benchmarks/probe_streamed.py [--dir /tmp/llama-1.5b] [--keep]
    python benchmarks/probe_streamed.py --small [--dir /tmp/llama-0.4b] [--keep] [--pairs 7]

Generates once (skipped when DIR/config.json exists) a Llama-architecture checkpoint of ~1.57 B
parameters in bfloat16 (hidden 2048, 28 layers, MLP 5632, vocab 32000: ~3.1 GB), written shard
by shard (one layer per shard, so generation holds one layer's weights), then measures, each in
its own process (a clean VmHWM):

- probe: ``initdoctor inspect DIR --stream --input input_ids=2,64:int64 --no-progress``;
- floor: a plain streamed forward of the same 2 × 64 tokens: the model on the meta device with
  accelerate's offload hooks reading the same safetensors files (``attach_align_device_hook``,
  ``offload=True``), no initdoctor.

``--small``: hidden 1024, 24 layers, MLP 2816 (~0.37 B parameters, ~0.70 GiB), the same
measurements in a quarter of the time.

Both clocks start before ``import torch`` (Python's own start-up is left out of both).
``--pairs N``: floor and probe run alternately N times (on a loaded machine both see the same
load); the medians and the ratio of the medians are judged.

Prints wall time and peak RSS (VmHWM) for both, and the goals: peak RSS ≤ 1.5 GiB, probe wall ≤
1.3 × floor: met / not met. Deletes the checkpoint unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

CONFIG = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
    max_position_embeddings=256,
    use_cache=False,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
    architectures=["LlamaForCausalLM"],
)
SMALL = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24)


def generate(folder: Path) -> None:
    import torch
    import transformers
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.LlamaConfig(**CONFIG)
    with init_empty_weights():
        model = transformers.LlamaForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if "rotary" not in k}
    groups: dict[str, list[str]] = {}
    for key in shapes:
        parts = key.split(".")
        group = f"layer{int(parts[2]):02d}" if parts[1] == "layers" else parts[0] + parts[1]
        groups.setdefault(group, []).append(key)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    total = 0
    for i, (_group, keys) in enumerate(sorted(groups.items())):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for key in keys:
            shape = shapes[key]
            if len(shape) == 1:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
            tensors[key] = t
            total += t.numel() * 2
            weight_map[key] = name
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config.save_pretrained(folder)
    print(
        f"generated {folder}: {sum(map(lambda s: __import__('math').prod(s), shapes.values())) / 1e9:.2f} B "
        f"parameters, {total / 2**30:.2f} GiB",
        flush=True,
    )


FLOOR = r"""
import json, sys, time
t = time.perf_counter()  # before importing torch, as the probe's clock
import torch, transformers
from accelerate import init_empty_weights
from accelerate.hooks import attach_align_device_hook
from accelerate.utils import OffloadedWeightsLoader
torch.set_num_threads(2)
folder = sys.argv[1]
config = transformers.AutoConfig.from_pretrained(folder)
with init_empty_weights():
    model = transformers.LlamaForCausalLM(config).eval()
model.model.rotary_emb.to_empty(device="cpu")
model.model.rotary_emb.__init__(config)  # its buffers (computed, not in the checkpoint)
weight_map = json.load(open(f"{folder}/model.safetensors.index.json"))["weight_map"]
index = {k: {"safetensors_file": f"{folder}/{f}", "weight_name": k} for k, f in weight_map.items()}
attach_align_device_hook(model, execution_device="cpu", offload=True,
                         weights_map=OffloadedWeightsLoader(index=index, device="cpu"))
ids = torch.randint(0, config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    out = model(input_ids=ids).logits
wall = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"wall": wall, "cpu": time.process_time(), "hwm_kib": hwm,
                  "logit_std": float(out.float().std())}))
"""

PROBE = r"""
import json, sys, time
t = time.perf_counter()
import torch
torch.set_num_threads(2)
from initdoctor.cli import main
sys.argv = ["initdoctor", "inspect", sys.argv[1], "--stream", "--input", "input_ids=2,64:int64",
            "--no-progress", "--format", "json", "-o", sys.argv[2]]
try:
    main()
except SystemExit as exc:
    code = exc.code
wall = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"wall": wall, "cpu": time.process_time(), "hwm_kib": hwm, "exit": code}))
"""


def measure(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/llama-1.5b"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--small", action="store_true", help="~0.37 B parameters (default dir /tmp/llama-0.4b)"
    )
    parser.add_argument(
        "--pairs", type=int, default=1, help="floor and probe run alternately N times: medians"
    )
    args = parser.parse_args()
    if args.small:
        CONFIG.update(SMALL)
        if args.dir == Path("/tmp/llama-1.5b"):
            args.dir = Path("/tmp/llama-0.4b")
    if not (args.dir / "config.json").exists():
        generate(args.dir)
    size = sum(f.stat().st_size for f in args.dir.glob("*.safetensors"))
    print(f"checkpoint: {size / 2**30:.2f} GiB on disk", flush=True)
    report = args.dir.parent / (args.dir.name + "-report.json")
    floors, probes = [], []
    for pair in range(args.pairs):  # floor and probe alternate: both see the same load
        floors.append(measure(FLOOR, str(args.dir)))
        probes.append(measure(PROBE, str(args.dir), str(report)))
        f, p = floors[-1], probes[-1]
        print(
            f"pair {pair + 1}: floor {f['wall']:6.1f} s  probe {p['wall']:6.1f} s  "
            f"ratio {p['wall'] / f['wall']:.2f} x   (CPU {f['cpu']:.1f} / {p['cpu']:.1f} s)",
            flush=True,
        )
    floor = {k: statistics.median(m[k] for m in floors) for k in ("wall", "cpu", "hwm_kib")}
    probe = {k: statistics.median(m[k] for m in probes) for k in ("wall", "cpu", "hwm_kib")}
    what = f"median of {args.pairs}" if args.pairs > 1 else "one run"
    for name, m in (("streamed forward (floor)", floor), ("initdoctor inspect --stream", probe)):
        print(
            f"{name:30s} wall {m['wall']:7.1f} s   CPU {m['cpu']:6.1f} s   "
            f"peak RSS {m['hwm_kib'] / 2**20:5.2f} GiB ({what})",
            flush=True,
        )
    summary = json.loads(report.read_text())["summary"] if report.exists() else {}
    print(f"verdict: {summary.get('status')}, residual growth {summary.get('residual_growth')}")
    hwm = max(m["hwm_kib"] for m in probes)
    rss_ok = hwm <= 1.5 * 2**20
    ratio = probe["wall"] / floor["wall"]
    pair_ratio = statistics.median(p["wall"] / f["wall"] for f, p in zip(floors, probes, strict=True))
    print(f"goal peak RSS <= 1.5 GiB: {'met' if rss_ok else 'not met'} ({hwm / 2**20:.2f} GiB, largest)")
    print(
        f"goal wall <= 1.3 x floor: {'met' if ratio <= 1.3 else 'not met'} "
        f"({ratio:.2f} x, ratio of the medians; median of the pairs' ratios {pair_ratio:.2f} x)"
    )
    if not args.keep:
        shutil.rmtree(args.dir)
        report.unlink(missing_ok=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
