"""Issues 17/18 (R4B): the torch probe's parameter guard is copy-on-write (no full snapshot), yet a
forward that writes its weights — in place, through ``.data``, or by rebinding ``.data`` — is
refused and the weights are put back bit for bit; buffers a forward updates are put back silently;
a healthy forward copies nothing. The streamed probe computes weight statistics from the tensors
it reads (no second pass over the files) with the in-memory figures. Correctness only, no timing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from initdoctor import api  # noqa: E402
from initdoctor.probe.torch_state import ModelState  # noqa: E402
from initdoctor.probe.types import ProbeError  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, how: str = "") -> None:
        super().__init__()
        self.how = how
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 4)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "data":
            self.a.weight.data.mul_(2.0)  # invisible to the version counter
        elif self.how == "inplace":
            with torch.no_grad():
                self.b.bias.add_(1.0)
        elif self.how == "rebind":
            self.a.weight.data = self.a.weight.data * 3.0
        elif self.how == "buffer":
            self.steps += 1
        return self.b(torch.relu(self.a(x)))


def _run(model: torch.nn.Module) -> api.Run:
    settings, probe = api.split_settings({})
    return api.run(model, settings, probe, probe=True)


@pytest.mark.parametrize(
    ("how", "name"), [("data", "a.weight"), ("inplace", "b.bias"), ("rebind", "a.weight")]
)
def test_a_forward_writing_its_weights_is_refused_and_undone(how: str, name: str) -> None:
    torch.manual_seed(0)
    model = Net(how)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pointer = model.a.weight.data_ptr()
    with pytest.raises(ProbeError, match=rf"parameter {name} in place \(put back as it was\)"):
        _run(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # bit for bit
    assert model.a.weight.data_ptr() == pointer  # the same storage, not a copy swapped in
    assert float(model.a.weight.detach().std()) == pytest.approx(float(before["a.weight"].std()))


def _guarded(model: torch.nn.Module) -> ModelState:
    state = ModelState(model)
    state.prepare()
    with state.guard():
        model(torch.randn(8, 16))
    state.restore()
    return state


def test_a_buffer_the_forward_updates_is_put_back_silently() -> None:
    torch.manual_seed(0)
    model = Net("buffer")
    state = _guarded(model)
    state.check_parameters()  # a buffer is not a weight: no error
    assert list(state.writes.copies) == ["steps"] and float(model.steps) == 0.0


def test_a_healthy_forward_copies_nothing() -> None:
    torch.manual_seed(0)
    model = Net()
    state = _guarded(model)
    state.check_parameters()
    assert state.writes.copies == {} and state.changed == []
    # the watched storages: 4 parameters and 1 buffer
    assert sum(len(v) for v in state.writes.watched.values()) == 5


def test_a_model_only_torch_export_reads_is_exported_once_on_the_input_shapes() -> None:
    """``--input`` shapes are the export example at load time: the probe runs that program as it
    is instead of exporting the model a second time (benchmarks/README.md, streamed probe)."""
    transformers = pytest.importorskip("transformers")
    from initdoctor.formats.model_inputs import probe_shapes, with_probe_shape
    from initdoctor.model import InputSpec

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    spec = InputSpec("input_ids", (2, 16), "int64", 64)
    with probe_shapes((("input_ids", (3, 24), "int64"),)):
        assert with_probe_shape(spec).shape == (3, 24) and with_probe_shape(spec).high == 64
    assert with_probe_shape(spec).shape == (2, 16)  # only while loading
    settings, probe = api.split_settings({"named_inputs": ("input_ids=3,24:int64",)})
    run = api.run(model, settings, probe, probe=True)
    program = run.loaded.runnable
    assert isinstance(program, torch.export.ExportedProgram)
    shapes = [
        tuple(t.shape) for t in torch.utils._pytree.tree_leaves(program.example_inputs) if hasattr(t, "shape")
    ]
    assert (3, 24) in shapes and (2, 16) not in shapes  # exported on the probe's shapes, not the default
    assert run.probe is not None and run.probe.backend == "torch.export"
    assert run.probe.inputs[0]["shape"] == [3, 24]
