"""Issue 18 part 1: a Hugging Face folder probed with its weights streamed from the safetensors
files (``--stream``; automatic over half the available memory) gives the in-memory probe's
figures; bad folders are one line and exit 2. A tiny LLaMA (2 layers, hidden 64) saved in 7
shards by ``save_pretrained``; no downloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import invoke  # noqa: E402

from initdoctor import api, formats  # noqa: E402
from initdoctor.errors import InputError  # noqa: E402
from initdoctor.formats import hf_stream  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
        use_cache=False,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("llama") / "m"
    transformers.LlamaForCausalLM(config).eval().save_pretrained(path, max_shard_size="100KB")
    return path


def _run(folder: Path, stream: bool) -> api.Run:
    settings, probe = api.split_settings({"stream": stream})
    return api.run(str(folder), settings, probe, probe=True)


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return (a is None) == (b is None) and (a is None or math.isnan(a) == math.isnan(b))
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1e-30)


def test_streamed_probe_equals_the_in_memory_probe(folder: Path) -> None:
    assert len(list(folder.glob("*.safetensors"))) >= 2  # sharded
    whole, streamed = _run(folder, False), _run(folder, True)
    assert whole.loaded.streamed is None and streamed.loaded.streamed is not None
    assert whole.probe is not None and streamed.probe is not None
    assert set(whole.probe.layers) == set(streamed.probe.layers)
    assert len(whole.probe.layers) == 2 * 7 + 2  # 7 linear layers per block, embedding, lm_head
    for name, a in whole.probe.layers.items():
        b = streamed.probe.layers[name]
        for field in ("input_second_moment", "activation_var", "activation_mean", "dead_fraction"):
            assert _close(getattr(a, field), getattr(b, field)), (name, field)
    for name, var in whole.probe.tensor_vars.items():  # the residual stream at each block
        assert _close(var, streamed.probe.tensor_vars[name]), name
    sa, sb = whole.report.summary, streamed.report.summary
    assert sa.status == sb.status
    for field in ("residual_growth", "depth_ratio", "measured_chain_ratio"):
        assert _close(getattr(sa, field), getattr(sb, field)), field
    for la, lb in zip(whole.loaded.description.layers, streamed.loaded.description.layers, strict=True):
        assert la.name == lb.name and _close(la.stats.std, lb.stats.std)  # weight std from the files


def test_stream_flag_and_auto_choice(folder: Path) -> None:
    code, out, err = invoke("inspect", str(folder), "--stream", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert any("streamed probe" in note for note in report["notes"])
    assert hf_stream.available_bytes() and hf_stream.available_bytes() > 1 << 20
    assert not hf_stream.should_stream(folder, False)  # ~0.2 MiB: loaded whole
    loaded = formats.load(folder, stream=True)  # fix cannot write from weights it does not hold
    with pytest.raises(InputError, match="streamed"):
        formats.open_editable(loaded, str(folder), trust=False)


def _copy(folder: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in folder.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_folders_one_line_exit_2(folder: Path, tmp_path: Path) -> None:
    unknown = _copy(folder, tmp_path / "unknown")
    cfg = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**cfg, "model_type": "no-such-model"}))
    remote = _copy(folder, tmp_path / "remote")
    (remote / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "m.Model"}}))
    missing = _copy(folder, tmp_path / "missing")
    sorted(missing.glob("*.safetensors"))[1].unlink()
    for path, words in ((unknown, "no-such-model"), (remote, "--trust"), (missing, "00002")):
        code, out, err = invoke("inspect", str(path), "--stream")
        assert code == 2, (path, out, err)
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    code, _, err = invoke("inspect", str(next(folder.glob("*.safetensors"))), "--stream")
    assert code == 2 and "--stream takes a Hugging Face folder" in err


class ResidualMLP(torch.nn.Module):
    """``depth`` residual blocks ``x + W2 relu(W1 x)`` (functional adds: torch.fx reads them)."""

    def __init__(self, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width))
            for _ in range(depth)
        )
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return ResidualMLP()


def test_factory_weights_streamed_through_accelerate_hooks(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({k: v * 3 for k, v in mlp().state_dict().items()}, str(weights))  # not the factory's init
    spec = "tests.test_streamed_probe:mlp"
    settings, probe = api.split_settings({"stream": False})
    whole = api.run(spec, settings, probe, probe=True, weights=weights)
    settings, probe = api.split_settings({"stream": True})
    streamed = api.run(spec, settings, probe, probe=True, weights=weights)
    assert whole.loaded.backend == streamed.loaded.backend == "torch"  # an nn.Module: accelerate's hooks
    assert whole.probe is not None and streamed.probe is not None and len(whole.probe.layers) == 7
    for name, a in whole.probe.layers.items():
        b = streamed.probe.layers[name]
        assert _close(a.activation_var, b.activation_var) and _close(a.dead_fraction, b.dead_fraction), name
    assert whole.probe.tensor_vars and all(
        _close(v, streamed.probe.tensor_vars[k]) for k, v in whole.probe.tensor_vars.items()
    )
    assert _close(whole.report.summary.residual_growth, streamed.report.summary.residual_growth)
    std = whole.loaded.description.layers[0].stats.std  # 3 × U(±1/√32): 3/√96 = 0.306
    assert abs(std - 3 / math.sqrt(96)) < 0.03 and _close(
        std, streamed.loaded.description.layers[0].stats.std
    )


RSS_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from initdoctor import api
status = lambda key: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key)))
base = status("VmRSS:")
settings, probe = api.split_settings({"stream": True})
run = api.run("rssmodel:build", settings, probe, probe=True, weights=sys.argv[2])
assert run.probe is not None and len(run.probe.layers) >= 4
print(status("VmHWM:") - base)
"""

RSS_MODEL = """
import os, torch
from torch import nn

class Deep(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 768))
                                    for _ in range(depth))
    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x

def build():
    torch.manual_seed(0)
    return Deep(int(os.environ["DEPTH"]))
"""


def test_streamed_peak_memory_does_not_grow_with_depth(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "rssmodel.py").write_text(RSS_MODEL)
    root = Path(__file__).resolve().parents[1]
    from safetensors.torch import save_file

    space: dict = {}
    exec(RSS_MODEL, space)  # the weight files, written here: only the child processes are measured
    for depth in (2, 8):
        save_file(space["Deep"](depth).state_dict(), str(tmp_path / f"w{depth}.safetensors"))
    peaks = {}
    for depth in (2, 8):  # 4.5 MiB of float32 weights per block: 9 vs 36 MiB
        env = {**os.environ, "DEPTH": str(depth), "PYTHONPATH": str(root)}
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(tmp_path), str(tmp_path / f"w{depth}.safetensors")],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=False,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[depth] = int(out.stdout.split()[-1]) / 1024  # MiB above the RSS after the imports
    # whole, the deeper model would add 27 MiB of weights; streamed, about one block at a time
    assert peaks[8] - peaks[2] < 9, peaks


def test_bin_folder_with_stream_says_it_is_read_whole(folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((folder / "config.json").read_text())
    state: dict = {}
    for shard in folder.glob("*.safetensors"):
        state.update(load_file(str(shard)))
    torch.save(state, binary / "pytorch_model.bin")
    code, out, err = invoke("inspect", str(binary), "--stream")
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ".bin weights are only read whole" in err and "drop --stream" in err
    assert not hf_stream.should_stream(binary, False)  # without --stream: loaded whole, no error


def test_stats_ahead_equal_the_file_pass_and_a_torch_std(folder: Path) -> None:
    from safetensors.torch import load_file

    loaded = formats.load(folder, stream=True)
    files = hf_stream.Files(sorted(folder.glob("*.safetensors")))
    keys = {k: k for k in files.owner}
    with hf_stream.StatsAhead(files, keys, None) as ahead:
        background = {k: ahead.get(k) for k in keys}
    assert len(background) == 2 * 9 + 3  # 9 tensors per block, embedding, final norm, lm_head
    for key, stats in background.items():
        assert stats == files.stats(key, None), key  # the same scan, in another thread: bit-equal
    name = "model.layers.1.mlp.down_proj.weight"
    tensor = next(load_file(str(f))[name] for f in folder.glob("*.safetensors") if name in load_file(str(f)))
    assert stats_std_close(background[name].std, float(tensor.double().std(unbiased=False)))
    # a weight the description reports was read by the background pass: the same value
    layer = next(la for la in loaded.description.layers if la.weight_key == name)
    assert layer.stats == background[name]


def stats_std_close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 * b and 0.018 < b < 0.022  # LLaMA's init: N(0, 0.02²), 8192 values
