"""Issue 14, densenet_nobn: forward and backward signal at init, and SGD at several learning rates.
Prints numbers; not a test.

    python benchmarks/dense_backward.py measure        # the table at init (a few seconds)
    python benchmarks/dense_backward.py layers NAME    # per-layer numbers of one model
    python benchmarks/dense_backward.py sharpness      # top Hessian eigenvalue at init (CNNs, MLP)
    python benchmarks/dense_backward.py consumers      # the k-consumer gradient sum per dense block
    python benchmarks/dense_backward.py gradratio      # initdoctor --backward on every zoo model
    python benchmarks/dense_backward.py cost           # a probed inspect with and without --backward
    python benchmarks/dense_backward.py train [--steps 300] [--lrs 0.01,0.03,0.1] [--seeds 0,1,2]

``measure``: each model from its zoo factory in train mode (BatchNorm on batch statistics, as the
probe runs it), one batch of benchmarks/train_evidence.py's task (32 images, seed 0; LLaMA: its
Markov LM batch), the task's cross-entropy loss, one backward. Per conv/linear ``l`` (forward
order): ``Var[y_l]`` (forward), ``E[(∂L/∂y_l)²]`` (backward, output-side gradient at the layer's
output) and ``|∇W_l| / |W_l|`` (the relative step SGD takes per unit lr). Columns: ``fwd`` =
``Var[y_last hidden] / Var[y_first]``, ``bwd`` = ``E[g²]`` at the first layer / at the last hidden
layer (> 1: the gradient grows toward the input), ``rel_first``, ``rel_max`` (where), and the same
``bwd`` with a seeded N(0, 1) gradient at the output instead of the loss's (initdoctor's
``--backward``). ``mlp`` is a plain 8×256 ReLU MLP, Kaiming fan_in, on the flattened images.

``train``: SGD (momentum 0.9, weight decay 1e-4, torchvision's recipe) at each lr, each seed (the
model is the factory's, seed 0; the seed draws the data stream and the trainer's RNG), the
task of train_evidence; prints loss@0, the mean of the last 10 steps, eval, the step of the first
non-finite loss.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_evidence import CNN_BATCH, Task, fit  # noqa: E402
from tests import realzoo  # noqa: E402

MODELS = ("densenet", "densenet_nobn", "resnet", "resnet_nobn", "vgg11", "mlp", "llama")


class MLP(nn.Module):
    def __init__(self, width: int = 256, depth: int = 8) -> None:
        super().__init__()
        dims = [3 * realzoo.IMAGE**2] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.out = nn.Linear(width, realzoo.CLASSES)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for lin in self.hidden:
            x = F.relu(lin(x))
        return self.out(x)


def build(name: str) -> nn.Module:
    if name == "mlp":
        torch.manual_seed(0)
        return MLP()
    return realzoo.BY_NAME[name].build()


def loss_of(task: Task, name: str, model: nn.Module, seed: int) -> torch.Tensor:
    if name == "mlp":
        x, y = task.images(torch.Generator().manual_seed(seed), CNN_BATCH)
        return F.cross_entropy(model(x), y)
    return task.loss(realzoo.BY_NAME[name], model, seed)


def weighted(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def probe(task: Task, name: str, noise_grad: bool = False) -> list[dict]:
    """Per weighted layer in forward order: name, Var[y], E[(∂L/∂y)²], |∇W|/|W|."""
    model = build(name).train()
    rows: dict[str, dict] = {}
    order: list[str] = []
    hooks = []
    for n, m in weighted(model):

        def fwd(mod: nn.Module, args: tuple, y: torch.Tensor, n: str = n) -> None:
            if n in rows:  # a module called twice (tied weights): keep the first call
                return
            order.append(n)
            rows[n] = {"name": n, "var": y.detach().float().var().item()}
            y.register_hook(lambda g, n=n: rows[n].__setitem__("g2", g.float().pow(2).mean().item()))

        hooks.append(m.register_forward_hook(fwd))
    torch.manual_seed(0)
    if noise_grad:  # initdoctor's --backward: a seeded N(0, 1) gradient at the output
        g = torch.Generator().manual_seed(0)
        out = (
            model(input_ids=task.markov(g)).logits if name == "llama" else model(task.images(g, CNN_BATCH)[0])
        )
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)))
    else:
        loss_of(task, name, model, seed=0).backward()
    for h in hooks:
        h.remove()
    mods = dict(weighted(model))
    for n in order:
        w = mods[n].weight
        rows[n]["rel"] = (w.grad.norm() / w.norm()).item() if w.grad is not None else math.nan
        rows[n]["fan_in"] = w[0].numel()
        rows[n]["fan_out"] = w.shape[0] * (w[0, 0].numel() if w.dim() > 2 else 1)
    return [rows[n] for n in order]


def summary(rows: list[dict]) -> dict:
    hidden = [r for r in rows if "g2" in r and not r["name"].endswith(("classifier", "out", "lm_head"))]
    first, last = hidden[0], hidden[-1]
    top = max(rows, key=lambda r: r["rel"] if math.isfinite(r["rel"]) else -1)
    return {
        "fwd": last["var"] / first["var"],
        "bwd": first["g2"] / last["g2"],
        "g2max": max(r["g2"] for r in hidden) / last["g2"],
        "rel_first": first["rel"],
        "rel_max": top["rel"],
        "where": top["name"],
    }


def measure(task: Task) -> None:
    print(
        f"{'model':<14} {'fwd':>9} {'bwd(CE)':>9} {'max g2':>9} {'bwd(N01)':>9} "
        f"{'rel_first':>9} {'rel_max':>9}  where"
    )
    for name in MODELS:
        s = summary(probe(task, name))
        s2 = summary(probe(task, name, noise_grad=True))
        print(
            f"{name:<14} {s['fwd']:>9.3g} {s['bwd']:>9.3g} {s['g2max']:>9.3g} {s2['bwd']:>9.3g} "
            f"{s['rel_first']:>9.3g} {s['rel_max']:>9.3g}  {s['where']}"
        )


def layers(task: Task, name: str) -> None:
    print(f"{'layer':<36} {'fan_in':>6} {'fan_out':>7} {'Var[y]':>9} {'E[g²]':>9} {'|∇W|/|W|':>9}")
    for r in probe(task, name):
        print(
            f"{r['name']:<36} {r['fan_in']:>6} {r['fan_out']:>7} {r['var']:>9.3g} "
            f"{r.get('g2', math.nan):>9.3g} "
            f"{r['rel']:>9.3g}"
        )


def sharpness(task: Task, name: str, iters: int = 20) -> float:
    """Top Hessian eigenvalue of the loss at init (power iteration on Hessian-vector products)."""
    model = build(name).train()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    loss = loss_of(task, name, model, seed=0)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum((a * b).sum() for a, b in zip(hv, v, strict=True)).item()
        v = [h.detach() for h in hv]
    return lam


def consumers(task: Task, name: str) -> list[float]:
    """Per dense block: |∂L/∂x_in|² / |∂L/∂out[:, :c_in]|² (k + 1 = 4 for independent consumers)."""
    model = build(name).train()
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str, t: torch.Tensor) -> None:
        t.retain_grad()
        seen[key] = t

    blocks = [n for n, _ in model.features.named_children() if n.startswith("denseblock")]
    for n in blocks:
        block = getattr(model.features, n)
        block.register_forward_pre_hook(lambda _m, args, n=n: keep(n + ".in", args[0]))
        block.register_forward_hook(lambda _m, _a, y, n=n: keep(n + ".out", y))
    loss_of(task, name, model, seed=0).backward()
    gains = []
    for n in blocks:
        x, y = seen[n + ".in"], seen[n + ".out"]
        gains.append((x.grad.pow(2).sum() / y.grad[:, : x.shape[1]].pow(2).sum()).item())
    return gains


def gradratio() -> None:
    """Every zoo model through initdoctor with --backward: verdict, the largest grad_ratio."""
    import initdoctor

    for e in realzoo.MATRIX:
        r = initdoctor.diagnose(e.factory, probe=True, backward=True)
        top = max(((f.grad_ratio, f.name) for f in r.layers if f.grad_ratio), default=(math.nan, "-"))
        gdr = r.summary.grad_depth_ratio
        print(
            f"{e.name:<18} {'healthy' if e.healthy else 'broken':<8} {r.summary.status:<6} "
            f"grad_depth_ratio {'-' if gdr is None else f'{gdr:.3g}':>8}  "
            f"max grad_ratio {top[0]:.3g} ({top[1]})",
            flush=True,
        )


def cost(name: str = "densenet_nobn", repeats: int = 4) -> None:
    """A probed inspect with and without --backward: the fastest of ``repeats`` runs each."""
    import initdoctor

    best = {False: math.inf, True: math.inf}
    for _ in range(repeats):
        for backward in (False, True):
            t = time.perf_counter()
            initdoctor.diagnose(f"tests.realzoo:{name}", probe=True, backward=backward)
            best[backward] = min(best[backward], time.perf_counter() - t)
    print(f"{name}: probe {best[False]:.3f} s, probe + backward {best[True]:.3f} s")


def train(task: Task, name: str, lr: float, seed: int, steps: int) -> str:
    model = build(name).train()
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    losses, nan_at, ev = fit(model, opt, lambda s: loss_of(task, name, model, seed=s), steps, seed * 100_000)
    tail = losses[-10:]
    last = sum(tail) / len(tail) if tail else math.nan
    nan = "-" if nan_at is None else f"@{nan_at}"
    return f"{losses[0]:>7.3f} {last:>9.3f} {ev:>9.3f} {nan:>6}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "what", choices=("measure", "layers", "train", "sharpness", "consumers", "gradratio", "cost")
    )
    p.add_argument("name", nargs="?", default="densenet_nobn")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lrs", default="0.01,0.03,0.1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="densenet,densenet_nobn")
    a = p.parse_args()
    torch.set_num_threads(1)
    task = Task()
    if a.what == "measure":
        measure(task)
    elif a.what == "sharpness":
        print(f"{'model':<14} {'lambda_max':>10} {'2(1+0.9)/lambda':>16}")
        for name in MODELS[:-1]:
            lam = sharpness(task, name)
            print(f"{name:<14} {lam:>10.3g} {3.8 / lam:>16.3g}", flush=True)
    elif a.what == "consumers":
        for name in ("densenet", "densenet_nobn"):
            print(name, " ".join(f"{g:.3g}" for g in consumers(task, name)))
    elif a.what == "gradratio":
        gradratio()
    elif a.what == "cost":
        cost(a.name)
    elif a.what == "layers":
        layers(task, a.name)
    else:
        print(
            f"# SGD momentum 0.9 wd 1e-4, {a.steps} steps, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        print(f"{'model':<14} {'lr':>5} {'seed':>4} {'loss@0':>7} {'loss@N':>9} {'eval':>9} {'nan':>6}")
        for name in a.models.split(","):
            for lr in map(float, a.lrs.split(",")):
                for seed in map(int, a.seeds.split(",")):
                    print(f"{name:<14} {lr:>5} {seed:>4} {train(task, name, lr, seed, a.steps)}", flush=True)


if __name__ == "__main__":
    main()
