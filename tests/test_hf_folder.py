"""Hugging Face folders (config.json + weights, as ``save_pretrained`` writes them): inspected as
the model transformers builds from them, fixed into the same folder layout. Tiny real models from
configs (seed 0), saved by ``save_pretrained``; no downloads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import initdoctor
from initdoctor.errors import InputError
from initdoctor.formats import detect_format, model_files

transformers = pytest.importorskip("transformers")

COMMON = {"vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=64, use_cache=False, **COMMON
    )
    return transformers.GPT2LMHeadModel(config).eval()


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        **COMMON,
    )
    return transformers.LlamaForCausalLM(config).eval()


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **COMMON
    )
    return transformers.BertModel(config).eval()


def save(model: torch.nn.Module, folder: Path, **kwargs: object) -> Path:
    model.save_pretrained(folder, **kwargs)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')  # a companion file fix must copy
    return folder


def save_bin(model: torch.nn.Module, folder: Path, shards: int = 1) -> Path:
    """The ``safe_serialization=False`` layout of transformers 4 (transformers 5 writes safetensors
    only): config.json + ``pytorch_model.bin``, or ``pytorch_model-0000k-of-0000n.bin`` shards and
    their ``pytorch_model.bin.index.json``."""
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = list(state)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    size = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i * size : (i + 1) * size]
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder


def table(report: initdoctor.Report) -> list[tuple[str, int, float]]:
    return [(f.name, f.fan_in, f.weight_std) for f in report.layers]


def same_table(a: initdoctor.Report, b: initdoctor.Report) -> None:
    assert [(n, fan) for n, fan, _ in table(a)] == [(n, fan) for n, fan, _ in table(b)]
    for (name, _, std_a), (_, _, std_b) in zip(table(a), table(b), strict=True):
        assert std_a == pytest.approx(std_b, abs=1e-6), name


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("build", [gpt2, llama, bert], ids=["gpt2-tied", "llama-untied", "bert"])
def test_folder_gives_the_factory_models_layer_table(tmp_path, build):
    model = build()
    folder = save(model, tmp_path / "m")
    assert detect_format(folder) == "hf-folder"
    from_folder = initdoctor.diagnose(folder)
    assert from_folder.model["format"] == "hf-folder"
    same_table(from_folder, initdoctor.diagnose(model))
    # N(0, 0.02) on every projection (the library's default init, read back from the file); GPT-2's
    # residual projections c_proj: 0.02 / sqrt(2 · n_layer) = 0.01
    proj = [f for f in from_folder.layers if f.kind in ("linear", "matmul") and f.role != "output"]
    assert len(proj) >= 8
    for f in proj:
        want = 0.01 if build is gpt2 and f.name.endswith("c_proj") else 0.02
        assert f.weight_std == pytest.approx(want, rel=0.15), f.name
    assert not any("new layers" in n for n in from_folder.notes)


def test_gpt2_folder_ties_the_dropped_head_and_probes_like_the_factory(tmp_path):
    model = gpt2()
    folder = save(model, tmp_path / "gpt2")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert "lm_head.weight" not in set(handle.keys())  # save_pretrained dropped the tied copy
    loaded = initdoctor.load(folder)
    built = loaded.model
    assert built.lm_head.weight is built.transformer.wte.weight  # tied as transformers ties it
    assert built.config.n_embd == 32 and not built.training  # keeps .config; eval like from_pretrained
    assert loaded.description.new_layers == []
    with torch.no_grad():  # the same function as the factory's model
        ids = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(0))
        assert torch.equal(built(ids).logits, model(ids).logits)
    a = initdoctor.diagnose(folder, probe=True, batch_size=4)
    b = initdoctor.diagnose(model, probe=True, batch_size=4)
    ratios_a = {f.name: f.variance_ratio for f in a.layers}
    for f in b.layers:
        if f.variance_ratio is not None:
            assert ratios_a[f.name] == pytest.approx(f.variance_ratio, rel=1e-5), f.name
    assert [blk.growth for blk in a.residual_blocks] == pytest.approx(
        [blk.growth for blk in b.residual_blocks]
    )


def test_sharded_and_bin_folders(tmp_path):
    model = llama()
    sharded = save(model, tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (sharded / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bins").mkdir()
    binary = save_bin(model, tmp_path / "bin")
    binary_sharded = save_bin(model, tmp_path / "bins", shards=3)
    reference = initdoctor.diagnose(model)
    for folder in (sharded, binary, binary_sharded):
        same_table(initdoctor.diagnose(folder), reference)
    files = model_files(sharded)
    names = [p.name for p in files]
    assert names[:2] == ["config.json", "model.safetensors.index.json"]
    assert set(names) >= {p.name for p in shards} | {"tokenizer.json", "generation_config.json"}
    assert len(model_files(binary_sharded)) == 1 + 1 + 3  # config, index, shards


def test_fix_rewrites_a_changed_bin_shard_with_torch_save(tmp_path):
    model = llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # judged per layer (residual layers are judged by their block)
    (tmp_path / "in").mkdir()
    folder = save_bin(model, tmp_path / "in", shards=3)
    before = digests(folder)
    result = initdoctor.fix_model(folder, output=tmp_path / "out", probe=False, force=True)
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())["weight_map"]
    changed = {index[c.weight_key] for c in result.changes}
    after = digests(tmp_path / "out")
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert (after[name] != value) == (name in changed), name
    change = result.changes[0]
    state = torch.load(tmp_path / "out" / index[change.weight_key], weights_only=True)
    assert list(state) == [k for k, f in index.items() if f == index[change.weight_key]]  # names, order
    assert state[change.weight_key].std(unbiased=False).item() == pytest.approx(change.expected_std, rel=1e-5)


def test_fix_writes_the_same_folder_changing_only_the_shards_it_rescaled(tmp_path):
    model = llama()
    with torch.no_grad():  # the head ×100 (residual layers are judged by their block's growth)
        model.lm_head.weight.mul_(100)
    folder = save(model, tmp_path / "in", max_shard_size="40KB")
    os.chmod(folder / "config.json", 0o640)
    before = digests(folder)
    out = tmp_path / "out"
    result = initdoctor.fix_model(folder, output=out, probe=False, force=True)
    assert "lm_head.weight" in {c.weight_key for c in result.changes}
    assert result.output == out
    assert digests(folder) == before  # the input is untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # same layout, no stray temp
    assert oct(os.stat(out / "config.json").st_mode & 0o777) == "0o640"
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    changed = {index[c.weight_key] for c in result.changes}
    after = digests(out)
    for name, value in before.items():  # a shard is rewritten exactly when it holds a rescaled tensor
        assert (after[name] != value) == (name in changed), name
    assert 0 < len(changed) < len([n for n in before if n.startswith("model-")])
    from safetensors import safe_open

    for change in result.changes:  # the std the report promised, read from the written shard
        with safe_open(str(out / index[change.weight_key]), "pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            tensor = handle.get_tensor(change.weight_key)
        assert tensor.dtype == torch.float32
        assert tensor.double().std(unbiased=False).item() == pytest.approx(change.expected_std, rel=1e-5)
    again = initdoctor.load(out)  # the written folder is a folder transformers-style readers take
    assert again.description.format == "hf-folder"
    assert result.after is not None and result.after.model["format"] == "hf-folder"


def test_fix_in_place_backs_up_what_it_replaces_and_the_backups_restore_it(tmp_path):
    folder = save(gpt2(), tmp_path / "gpt2")
    before = digests(folder)
    result = initdoctor.fix_model(folder, in_place=True, all_layers=True, probe=False, force=True)
    assert len(result.changes) == 8  # every projection rescaled to its Kaiming std
    assert [b.name for b in result.backups] == ["model.safetensors.bak"]  # only what it replaced
    assert digest(folder / "model.safetensors") != before["model.safetensors"]
    assert digest(folder / "config.json") == before["config.json"]
    for bak in result.backups:
        shutil.move(bak, bak.with_name(bak.name.removesuffix(".bak")))
    assert digests(folder) == before


def test_new_head_on_a_base_checkpoint_is_listed(tmp_path):
    folder = save(bert().to(torch.bfloat16), tmp_path / "base")  # a BertModel checkpoint, bfloat16
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = initdoctor.load(folder)
    again = initdoctor.load(folder)  # new layers are drawn from a fixed seed: the same each run
    assert torch.equal(loaded.model.classifier.weight, again.model.classifier.weight)
    assert loaded.description.new_layers == ["classifier.bias", "classifier.weight"]
    query = loaded.model.bert.encoder.layer[0].attention.self.query.weight
    want = bert().to(torch.bfloat16).encoder.layer[0].attention.self.query.weight
    assert torch.equal(query, want)  # the backbone came from the file (bert. prefix added)
    assert loaded.model.classifier.weight.dtype == torch.bfloat16  # the new head in the file's dtype
    assert loaded.model.classifier.weight.float().std().item() == pytest.approx(0.02, rel=0.3)  # N(0, 0.02)
    report = initdoctor.diagnose(folder)
    assert any("new layers): classifier.bias, classifier.weight" in n for n in report.notes)


def cli(*args: str) -> tuple[int, str, str]:
    """``initdoctor ARGS`` in this process (typer's runner): (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from initdoctor.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_remote_code_needs_trust_and_bad_folders_are_one_line(tmp_path):
    folder = save(gpt2(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="auto_map .* --trust"):
        initdoctor.load(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text('{"model_type": "gpt2"}')
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "m", broken)
    (broken / "config.json").write_text('{"model_type": "gpt2", ')
    cases = ((folder, "--trust"), (empty, "without weights"), (broken, "not a valid config.json"))
    for bad, words in cases:
        code, _, err = cli("inspect", str(bad))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], err


REMOTE_CONFIG = """
from transformers import PretrainedConfig
class TinyConfig(PretrainedConfig):
    model_type = "tinyremote"
    def __init__(self, width=16, depth=3, **kwargs):
        self.width, self.depth = width, depth
        super().__init__(**kwargs)
"""
REMOTE_MODEL = """
import torch
from transformers import PreTrainedModel
from .configuration_tiny import TinyConfig
class TinyModel(PreTrainedModel):
    config_class = TinyConfig
    def __init__(self, config):
        super().__init__(config)
        width = config.width
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(config.depth))
        self.post_init()
    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
"""


def test_remote_code_runs_with_trust_only(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny.py").write_text(REMOTE_MODEL)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(3):  # Kaiming normal (ReLU gain): std sqrt(2 / 16) = 0.354
        state[f"layers.{i}.weight"] = torch.randn(16, 16, generator=gen) * (2 / 16) ** 0.5
        state[f"layers.{i}.bias"] = torch.zeros(16)
    from safetensors.torch import save_file

    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "tinyremote",
        "width": 16,
        "depth": 3,
        "architectures": ["TinyModel"],
        "auto_map": {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}  # transformers copies the code there
    import subprocess

    def run(
        *extra: str,
    ) -> subprocess.CompletedProcess:  # a fresh process: HF_MODULES_CACHE is read at import
        cmd = [sys.executable, "-m", "initdoctor", "inspect", str(folder), "--format", "json", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    code, _, err = cli("inspect", str(folder))
    assert code == 2 and "auto_map names model code in the folder" in err and "--trust" in err
    trusted = run("--trust")
    assert trusted.returncode == 0, trusted.stderr
    data = json.loads(trusted.stdout)
    assert [f["name"] for f in data["layers"]] == ["layers.0", "layers.1", "layers.2"]
    for f, i in zip(data["layers"], range(3), strict=True):
        assert f["weight_std"] == pytest.approx(
            state[f"layers.{i}.weight"].std(unbiased=False).item(), abs=1e-6
        )
        assert f["status"] == "ok"


def test_cli_inspect_and_fix_a_folder(tmp_path):
    model = llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    folder = save(model, tmp_path / "in")
    code, out, err = cli("inspect", str(folder), "--no-probe", "--format", "json")
    data = json.loads(out)
    assert data["model"]["format"] == "hf-folder"
    up = next(f for f in data["layers"] if f["name"] == "lm_head")
    assert up["weight_std"] == pytest.approx(2.0, rel=0.1) and up["fan_in"] == 32
    # no output may replace a file of the folder
    code, _, err = cli("inspect", str(folder), "-o", str(folder / "tokenizer.json"))
    assert code == 2 and "is an input of this run" in err
    (tmp_path / "out").mkdir()  # OUT_DIR may exist when it is empty
    code, out, err = cli(
        "fix", str(folder), "-o", str(tmp_path / "out"), "--no-probe", "--force", "--no-progress"
    )
    assert code in (0, 1), err
    assert digest(tmp_path / "out" / "config.json") == digest(folder / "config.json")
    assert digest(tmp_path / "out" / "model.safetensors") != digest(folder / "model.safetensors")
    code, _, err = cli(
        "fix", str(folder), "-o", str(tmp_path / "out"), "--no-probe", "--force", "--no-progress"
    )
    assert code == 2 and "not an empty folder" in err  # and nothing else


def test_weight_file_inside_a_folder_points_at_the_folder(tmp_path):
    folder = save(gpt2(), tmp_path / "m")
    report = initdoctor.diagnose(folder / "model.safetensors")
    assert (
        f"this file is part of a Hugging Face folder: give the folder ({folder}) for a verdict"
        in report.notes
    )


def test_factory_loads_a_save_pretrained_file_without_the_tied_head(tmp_path, monkeypatch):
    folder = save(gpt2(), tmp_path / "m")
    (tmp_path / "tiny_gpt2.py").write_text(
        "import torch, transformers\n"
        "def gpt2_factory():\n"
        "    torch.manual_seed(1)\n"
        "    c = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, use_cache=False,\n"
        "        vocab_size=1000, bos_token_id=0, eos_token_id=0, pad_token_id=0)\n"
        "    return transformers.GPT2LMHeadModel(c)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = initdoctor.diagnose("tiny_gpt2:gpt2_factory", weights=folder / "model.safetensors")
    same_table(report, initdoctor.diagnose(folder))  # seed 1 replaced by the file's weights
    sys.modules.pop("tiny_gpt2", None)


# --- checkpoint names that differ from the model's (transformers' conversion mapping) -------------
from tests.realzoo import MATRIX  # noqa: E402

HF_ENTRIES = [e for e in MATRIX if e.hf]


def verdict(report: initdoctor.Report) -> tuple[str, str | None]:
    return report.summary.status, report.summary.rule


def test_vit_folder_holds_legacy_key_names_that_transformers_renames(tmp_path):
    from safetensors import safe_open

    from tests.realzoo import vit

    folder = save(vit(), tmp_path / "vit")
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert "vit.encoder.layer.0.attention.attention.key.weight" in keys  # save_pretrained's legacy name
    loaded = initdoctor.load(folder)
    assert loaded.names["vit.encoder.layer.0.attention.attention.key.weight"] == (
        "vit.layers.0.attention.k_proj.weight"
    )
    assert loaded.description.new_layers == [] and loaded.unused == {}


@pytest.mark.parametrize("entry", HF_ENTRIES, ids=[e.name for e in HF_ENTRIES])
def test_every_hf_zoo_folder_is_judged_like_its_factory(tmp_path, entry):
    model = entry.build()
    folder = save(model, tmp_path / entry.name)
    from_folder = initdoctor.diagnose(folder, probe=True)
    from_factory = initdoctor.diagnose(entry.factory, probe=True)
    same_table(from_folder, from_factory)
    assert not any("new layers" in n or "not used by the model" in n for n in from_folder.notes)
    assert verdict(from_folder) == verdict(from_factory)


def test_fix_of_a_vit_folder_writes_the_checkpoint_names(tmp_path):
    from safetensors import safe_open

    from tests.realzoo import vit

    model = vit()
    with torch.no_grad():  # the head ×100
        model.classifier.weight.mul_(100)
    folder = save(model, tmp_path / "in", max_shard_size="100KB")
    before = digests(folder)
    loaded = initdoctor.load(folder)
    file_key = {model_key: key for key, model_key in loaded.names.items()}
    out = tmp_path / "out"
    result = initdoctor.fix_model(folder, output=out, probe=False, force=True)
    assert "classifier.weight" in {c.weight_key for c in result.changes}
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    changed = {index[file_key[c.weight_key]] for c in result.changes}
    after = digests(out)
    for name, value in before.items():  # a shard is rewritten exactly when it holds a rescaled tensor
        assert (after[name] != value) == (name in changed), name
    for change in result.changes:
        key = file_key[change.weight_key]
        with safe_open(str(out / index[key]), "pt") as handle:
            assert set(handle.keys()) == {k for k, f in index.items() if f == index[key]}  # file names
            tensor = handle.get_tensor(key)
        assert tensor.double().std(unbiased=False).item() == pytest.approx(change.expected_std, rel=1e-5)
    again = initdoctor.load(out)
    assert again.description.new_layers == []


def test_fix_of_a_broken_vit_block_writes_its_legacy_checkpoint_names(tmp_path):
    from safetensors import safe_open

    from tests.realzoo import vit_broken

    folder = save(vit_broken(), tmp_path / "in")  # block 1's matrices ×10
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        keys_in = list(handle.keys())
    loaded = initdoctor.load(folder)
    file_key = {model_key: key for key, model_key in loaded.names.items()}
    out = tmp_path / "out"
    result = initdoctor.fix_model(folder, output=out, all_layers=True, probe=False, force=True)
    changes = {c.weight_key: c for c in result.changes}
    change = changes["vit.layers.1.attention.k_proj.weight"]
    assert file_key[change.weight_key] == "vit.encoder.layer.1.attention.attention.key.weight"
    assert change.old_std == pytest.approx(0.2, rel=0.1)  # N(0, 0.02) ×10, read from the file
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert list(handle.keys()) == keys_in  # the checkpoint's own names, in its order
        tensor = handle.get_tensor("vit.encoder.layer.1.attention.attention.key.weight")
    assert tensor.double().std(unbiased=False).item() == pytest.approx(change.expected_std, rel=1e-5)
    assert change.expected_std == pytest.approx(64**-0.5, rel=0.2)  # Kaiming-ish for fan_in 64
    assert initdoctor.load(out).description.new_layers == []
