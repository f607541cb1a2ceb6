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

from initdoctor import api  # noqa: E402
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
