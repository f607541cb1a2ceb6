"""initdoctor inside a torch.distributed job (issue 18 §2): FSDP2 ``fully_shard`` on CPU/gloo,
2 processes (one spawn for every case: start-up and imports dominate). Each rank diagnoses its
sharded model; the report must equal the single-process report of the same model and seed (1e-6
relative on weight std, variance ratios, depth ratios), be the same on both ranks, and a forward
that raises on rank 1 only must reach both ranks as an error (a deadlock fails on the timeout)."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytest.importorskip("transformers")

import initdoctor  # noqa: E402
from initdoctor.errors import RankError  # noqa: E402

TIMEOUT = 120  # seconds for the whole job; the process group's own timeout is shorter


def mlp() -> Any:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 33), torch.nn.ReLU(), torch.nn.Linear(33, 33), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(33, 5))  # 33 and 5 rows: uneven shards


def llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,  # lm_head shares the embedding: one parameter, one twin
    )
    return LlamaForCausalLM(config)


def tokens() -> Any:
    """The LLaMA's probe batch, given: torch.export (single process) and FSDP's module hooks
    (sharded) would otherwise each draw their own default batch (2×16 and 32×16 tokens)."""
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))


class RaisesOnRank1(torch.nn.Module):
    """Two FSDP units; the forward raises between them on rank 1 only."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x: Any) -> Any:
        x = self.a(x)
        if dist.get_rank() == 1 and not isinstance(x, torch.fx.Proxy):  # the probe's run, not fx's trace
            raise ValueError("boom on rank 1")
        return self.b(x)


class ExportRefusedOnRank1(torch.nn.Module):
    """torch.fx cannot trace it (``len`` of a proxy); torch.export can, except on rank 1."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.act = torch.nn.ReLU()
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x: Any) -> Any:
        if len(x) and torch.compiler.is_exporting() and dist.get_rank() == 1:
            raise RuntimeError("no export on rank 1")
        return self.b(self.act(self.a(x)))


@contextmanager
def _most_unsharded() -> Iterator[list[int]]:
    """[most FSDP modules unsharded at once, how many are left unsharded]: FSDPModule's own
    unshard/reshard, counted on the way through."""
    from torch.distributed.fsdp import FSDPModule

    unshard, reshard = FSDPModule.unshard, FSDPModule.reshard
    held: set[int] = set()
    most = [0, 0]

    def counted_unshard(self: Any, *args: Any, **kwargs: Any) -> Any:
        held.add(id(self))
        most[0] = max(most[0], len(held))
        return unshard(self, *args, **kwargs)

    def counted_reshard(self: Any) -> None:
        held.discard(id(self))
        reshard(self)

    FSDPModule.unshard, FSDPModule.reshard = counted_unshard, counted_reshard  # type: ignore[method-assign]
    try:
        yield most
    finally:
        FSDPModule.unshard, FSDPModule.reshard = unshard, reshard  # type: ignore[method-assign]
        most[1] = len(held)


@contextmanager
def _exports() -> Iterator[list[Any]]:
    """The input shapes of every torch.export.export call made inside (the export still runs)."""
    real, seen = torch.export.export, []

    def counting(module: Any, args: tuple, *rest: Any, **kwargs: Any) -> Any:
        seen.append(tuple(args[0].shape))
        return real(module, args, *rest, **kwargs)

    torch.export.export = counting
    try:
        yield seen
    finally:
        torch.export.export = real


def _train_step(model: Any) -> tuple[float, float]:
    """One SGD step of the sharded model after the diagnosis: (loss, largest weight change)."""
    before = [p.detach().to_local().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(tokens(), labels=tokens()).loss
    loss.backward()
    optimizer.step()
    change = max(
        float((p.detach().to_local() - b).abs().max())
        for p, b in zip(model.parameters(), before, strict=True)
    )
    return float(loss), change


def _worker(rank: int, port: int, queue: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    out: dict[str, Any] = {}
    try:
        model = mlp()
        fully_shard(model[2])
        fully_shard(model)
        out["mlp"] = initdoctor.diagnose(model, seed=0)
        model = llama()
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        params = [(name, p, p.placements) for name, p in model.named_parameters()]
        with _most_unsharded() as most, _exports() as exported:
            out["llama"] = initdoctor.assert_healthy_init(model, tokens(), fail_on="error", seed=0)
        out["most_unsharded"], out["exports"] = most[:], [exported[:]]
        with _most_unsharded() as most, _exports() as exported:
            out["llama_backward"] = initdoctor.diagnose(model, example_inputs=tokens(), seed=0, backward=True)
        out["most_unsharded"] += most
        out["exports"].append(exported[:])
        out["restored"] = [
            (name, p is q and q.placements == placements)
            for (name, p, placements), q in zip(params, model.parameters(), strict=True)
        ]
        out["train"] = _train_step(model)
        try:  # token ids out of the vocabulary on rank 1 only: its embedding raises in the probe
            initdoctor.diagnose(model, example_inputs=tokens() + 64 * rank, seed=0)
            out["llama_raises"] = None
        except Exception as exc:  # noqa: BLE001 - the error each rank got is the result
            out["llama_raises"] = (type(exc).__name__, str(exc))
        model = RaisesOnRank1()
        fully_shard(model.a)
        fully_shard(model.b)
        fully_shard(model)
        try:
            initdoctor.diagnose(model, seed=0)
            out["raises"] = None
        except Exception as exc:  # noqa: BLE001 - the error each rank got is the result
            out["raises"] = (type(exc).__name__, str(exc))
        torch.manual_seed(0)
        model = ExportRefusedOnRank1()
        fully_shard(model.a)
        fully_shard(model)
        out["export_refused"] = initdoctor.diagnose(model, seed=0)
    except Exception:  # noqa: BLE001 - shown by the fixture instead of a bare KeyError
        import traceback

        out["worker_error"] = traceback.format_exc()
    finally:
        queue.put((rank, out))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> dict[int, dict[str, Any]]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=TIMEOUT) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [out["worker_error"] for out in results.values() if "worker_error" in out]
    assert not errors, errors[0]
    return results


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def _same(got: Any, want: Any, where: str = "") -> None:
    """Every field equal; floats to 1e-6 relative (shard-merged moments differ in the last digits)."""
    if isinstance(want, float) or isinstance(got, float):
        assert _close(got, want), (where, got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (where, sorted(got), sorted(want))
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


@pytest.mark.parametrize("name", ["mlp", "llama"])
def test_sharded_report_equals_single_process(ranks: dict[int, dict[str, Any]], name: str) -> None:
    """Every field of the report, the LLaMA's too: its graph is read by torch.export from the
    sharded model's unsharded twin, as from the model in one process."""
    if name == "mlp":
        single = initdoctor.diagnose(mlp(), seed=0)
    else:
        single = initdoctor.diagnose(llama(), example_inputs=tokens(), seed=0)
    assert "graph read from torch.export (torch.fx could not trace the model)" in (
        single.notes
        if name == "llama"
        else ["graph read from torch.export (torch.fx could not trace the model)"]
    )
    for rank in (0, 1):
        _same(ranks[rank][name].to_dict(), single.to_dict())
    assert ranks[0][name].to_dict() == ranks[1][name].to_dict()  # rank 0's report, broadcast


def test_sharded_backward_equals_single_process(ranks: dict[int, dict[str, Any]]) -> None:
    """``backward=True``: every rank runs the backward through the unsharded weights; the gradient
    figures equal the single process's."""
    single = initdoctor.diagnose(llama(), example_inputs=tokens(), seed=0, backward=True)
    grads = [f.grad_var for f in single.layers if f.grad_var is not None]
    # every weighted layer has its gradient measured: 2 × 7 projections + the embedding (the tied
    # lm_head is judged with it)
    assert len(grads) == len(single.layers) == 15
    for rank in (0, 1):
        _same(ranks[rank]["llama_backward"].to_dict(), single.to_dict())


def test_model_is_left_as_it_was(ranks: dict[int, dict[str, Any]]) -> None:
    """The same DTensor parameters (object and placement) after the diagnoses, and a training step
    works: the loss at init is near ln 64 = 4.16 and the weights move."""
    for rank in (0, 1):
        assert ranks[rank]["restored"] and all(ok for _, ok in ranks[rank]["restored"])
        loss, change = ranks[rank]["train"]
        assert loss == pytest.approx(math.log(64), abs=0.1)
        assert change > 0
    assert ranks[0]["train"][0] == ranks[1]["train"][0]


def test_sharded_probe_holds_one_layer_unsharded(ranks: dict[int, dict[str, Any]]) -> None:
    """The forward holds at most the root and one decoder layer unsharded (as FSDP's own forward
    does), the backward all three (root + 2 layers); none is left unsharded after."""
    for rank in (0, 1):
        assert ranks[rank]["most_unsharded"] == [2, 0, 3, 0]


def test_sharded_model_is_exported_once_per_diagnosis(ranks: dict[int, dict[str, Any]]) -> None:
    """Its unsharded twin, once, on the given 4×16 tokens (the probe runs that program as it is)."""
    for rank in (0, 1):
        assert ranks[rank]["exports"] == [[(4, 16)], [(4, 16)]]


def test_mlp_numbers(ranks: dict[int, dict[str, Any]]) -> None:
    """A number to check by hand: nn.Linear's default init is U(±1/√fan_in), std 1/√(3·fan_in)."""
    layer = {f.name: f for f in ranks[1]["mlp"].layers}["2"]  # 33×33, rows split 17 + 16
    assert layer.numel == 33 * 33
    assert layer.weight_std == pytest.approx(1 / math.sqrt(3 * 33), rel=0.05)


def test_a_rank_that_raises_reaches_every_rank(ranks: dict[int, dict[str, Any]]) -> None:
    assert ranks[1]["raises"] == ("ProbeError", "the model's forward raised ValueError: boom on rank 1")
    kind, message = ranks[0]["raises"]
    assert kind == RankError.__name__
    assert message == "rank 1 failed: ProbeError: the model's forward raised ValueError: boom on rank 1"


def test_a_rank_that_raises_in_the_exported_graph_reaches_every_rank(
    ranks: dict[int, dict[str, Any]],
) -> None:
    """The LLaMA's probe (the exported graph, FSDP unshards module by module): rank 1 raises in
    its embedding, rank 0 meets the error at its next unshard's guard; no hang."""
    kind, message = ranks[1]["llama_raises"]
    assert kind == "ProbeError" and message.startswith("the model's forward raised IndexError")
    kind, message = ranks[0]["llama_raises"]
    assert kind == RankError.__name__
    assert message.startswith("rank 1 failed: ProbeError: the model's forward raised IndexError")


def test_a_graph_read_failing_on_one_rank_fails_on_every_rank(ranks: dict[int, dict[str, Any]]) -> None:
    """torch.export refused on rank 1 only: without agreement rank 0 would probe the exported graph
    and rank 1 the module order, each waiting in the other's collectives. Every rank now falls
    back to the module order (one note), with equal reports: 2 layers, fans 8, ReLU after ``a``."""
    reports = [ranks[r]["export_refused"] for r in (0, 1)]
    assert reports[0].to_dict() == reports[1].to_dict()
    notes = reports[0].notes
    assert "torch.fx could not trace the model: module order and neighbours used" in notes
    assert not any("torch.export" in note for note in notes)
    a, b = reports[0].layers
    assert (a.name, a.fan_in, a.nonlinearity) == ("a", 8, "relu") and (b.name, b.fan_in) == ("b", 8)
