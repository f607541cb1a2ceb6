"""ONNX exports of modern models (issue 14, item 5): tiny Hugging Face transformers (GPT-2 LM,
BERT, LLaMA, ViT, CLIP vision and text) and torch.nn CNNs like torchvision's (a ResNet-50-style
bottleneck net with BatchNorm, a MobileNetV3-style net with squeeze-excitation and hardswish, a
DenseNet-style concatenating block, a VGG-style chain), each exported by the dynamo exporter
(torch 2.13's default) and by the legacy one (``dynamo=False``) where it exports, inspected with
the probe on. Asserted: structure facts (layers, residual blocks, what follows named layers, gate
roles), BatchNorm folded by an eval-mode export detected, and torch against a BN-faithful export
(``dynamo=False``, ``training=TRAINING``) measured alike. Not asserted: model-level verdicts (the
rules are judged elsewhere). Each model is exported once per exporter (module-scoped cache).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
transformers = pytest.importorskip("transformers")

import initdoctor  # noqa: E402
from initdoctor.formats.onnx import describe_onnx  # noqa: E402

nn = torch.nn


def _init_cnn(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d,)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet50ish(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(8, 4), Bottleneck(16, 4))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, 2), Bottleneck(32, 8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)
        _init_cnn(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SE(nn.Module):
    def __init__(self, c, sq):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, sq, 1)
        self.fc2 = nn.Conv2d(sq, c, 1)
        self.relu = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return s * x


class InvRes(nn.Module):
    def __init__(self, cin, exp, cout, stride):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), nn.Hardswish()),
            nn.Sequential(
                nn.Conv2d(exp, exp, 3, stride, 1, groups=exp, bias=False), nn.BatchNorm2d(exp), nn.Hardswish()
            ),
            SE(exp, max(exp // 4, 8)),
            nn.Sequential(nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)),
        )

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_res else out


class MobileNetV3ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()),
            InvRes(16, 32, 16, 1),
            InvRes(16, 48, 24, 2),
            InvRes(24, 64, 24, 1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(24, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, 10))
        _init_cnn(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, feats):
        x = torch.cat(feats, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, n, cin, growth):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class DenseNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.norm0 = nn.BatchNorm2d(16)
        self.relu0 = nn.ReLU()
        self.block1 = DenseBlock(3, 16, 8)
        self.norm5 = nn.BatchNorm2d(40)
        self.classifier = nn.Linear(40, 10)
        _init_cnn(self)

    def forward(self, x):
        x = self.block1(self.relu0(self.norm0(self.conv0(x))))
        x = torch.relu(self.norm5(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = [8, "M", 16, "M", 32, 32, "M"]
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(32 * 16, 64), nn.ReLU(True), nn.Linear(64, 10))
        _init_cnn(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def gpt2():
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=1000, n_positions=64, use_cache=False
    )
    return transformers.GPT2LMHeadModel(config)


def bert():
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=1000,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config)


def llama():
    config = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=1000,
        max_position_embeddings=64,
        use_cache=False,
    )
    return transformers.LlamaForCausalLM(config)


_VISION = dict(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=2)


def vit():
    return transformers.ViTModel(transformers.ViTConfig(intermediate_size=64, **_VISION))


def clip_vision():
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(intermediate_size=64, **_VISION))


def clip_text():
    config = transformers.CLIPTextConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=1000,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=2,
    )
    return transformers.CLIPTextModel(config)


BUILD = {
    "resnet": ResNet50ish,
    "mobilenet": MobileNetV3ish,
    "densenet": DenseNetish,
    "vgg": VGGish,
    "gpt2": gpt2,
    "bert": bert,
    "llama": llama,
    "vit": vit,
    "clip_vision": clip_vision,
    "clip_text": clip_text,
}
TEXT = {"gpt2", "bert", "llama", "clip_text"}
LEGACY = dict(dynamo=False)
TRAINING = dict(dynamo=False, training="TRAINING")
DYNAMO = dict(dynamo=True)
DYNAMO_TRAINING = dict(dynamo=True, training="TRAINING")


def build(name):
    torch.manual_seed(0)
    return BUILD[name]().eval()


def example(name):
    g = torch.Generator().manual_seed(0)
    if name in TEXT:
        return torch.randint(0, 1000, (2, 16), generator=g)
    return torch.randn(2, 3, 32, 32, generator=g)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name, exporter)`` → the path of the model's ONNX export, made once."""
    folder = tmp_path_factory.mktemp("onnx_structure")
    done = {}

    def get(name, exporter):
        key = (name, exporter)
        if key not in done:
            kwargs = dict(
                {
                    "dynamo": DYNAMO,
                    "legacy": LEGACY,
                    "training": TRAINING,
                    "dynamo_training": DYNAMO_TRAINING,
                }[exporter]
            )
            if kwargs.get("training"):
                kwargs["training"] = torch.onnx.TrainingMode.TRAINING
            path = folder / f"{name}_{exporter}.onnx"
            # a training-mode export runs the model once in train mode: its BN buffers move; a copy
            model = copy.deepcopy(build(name))
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example(name),), str(path), **kwargs)
            done[key] = path
        return done[key]

    return get


def diagnose(path):
    return initdoctor.diagnose(path, probe=True, batch_size=2)


def by_name(report):
    return {f.name: f for f in report.layers}


# (model, exporter, weighted layers, residual blocks): what the graph holds
CASES = [
    ("resnet", "dynamo", 16, 4),
    ("resnet", "legacy", 16, 4),
    ("resnet", "training", 16, 4),
    ("mobilenet", "dynamo", 18, 2),
    ("mobilenet", "legacy", 18, 2),
    ("mobilenet", "training", 18, 2),
    ("densenet", "dynamo", 8, 0),
    ("densenet", "legacy", 8, 0),
    ("vgg", "dynamo", 6, 0),
    ("vgg", "legacy", 6, 0),
    ("gpt2", "dynamo", 9, 4),  # the legacy exporter has no aten::diff (transformers' masks)
    ("bert", "dynamo", 15, 4),  # legacy: forward() got multiple values for 'use_cache'
    ("llama", "dynamo", 16, 4),  # legacy: aten::diff
    ("vit", "dynamo", 14, 4),
    ("vit", "legacy", 14, 4),
    ("clip_vision", "dynamo", 13, 4),
    ("clip_vision", "legacy", 14, 4),  # + the position embedding as a Gather
    ("clip_text", "dynamo", 13, 4),
    ("clip_text", "legacy", 14, 4),
]


@pytest.mark.parametrize(
    ("name", "exporter", "layers", "blocks"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_export_is_inspected_with_the_probe(exported, name, exporter, layers, blocks):
    report = diagnose(exported(name, exporter))
    assert report.probe is not None and report.probe["backend"] == "onnx"
    assert (len(report.layers), len(report.residual_blocks)) == (layers, blocks)
    # every block measured: Var[out] / Var[skip] a finite positive number
    assert all(b.growth is not None and 0 < b.growth < math.inf for b in report.residual_blocks)
    # the graph told what follows every layer: none judged at the --nonlinearity default
    assert {f.nonlinearity_source for f in report.layers} <= {"graph", "rule"}
    measured = [f for f in report.layers if f.role != "embedding"]
    assert all(f.activation_var is not None and f.activation_var > 0 for f in measured)


@pytest.mark.parametrize(
    ("name", "exporter", "expected"),
    [
        ("gpt2", "dynamo", {"h.0.mlp.c_fc": "gelu", "h.0.attn.c_attn": "linear", "h.1.mlp.c_proj": "linear"}),
        (
            "bert",
            "dynamo",
            {
                "layer.0.intermediate.dense": "gelu",
                "layer.0.attention.self.query": "linear",
                "layer.1.attention.self.value": "linear",
                "layer.0.attention.output.dense": "linear",
                "pooler.dense": "tanh",
            },
        ),
        (
            "llama",
            "dynamo",
            {
                "layers.0.self_attn.q_proj": "linear",  # through RoPE's rotation to q·kᵀ
                "layers.0.self_attn.v_proj": "linear",
                "layers.0.mlp.gate_proj": "silu",
                "layers.0.mlp.up_proj": "linear",  # the gated product up · silu(gate)
                "layers.1.mlp.down_proj": "linear",
                "lm_head": "linear",
            },
        ),
        ("vit", "dynamo", {"patch_embeddings.projection": "linear", "layers.0.mlp.fc1": "gelu"}),
        ("vit", "legacy", {"patch_embeddings.projection": "linear", "layers.1.mlp.fc1": "gelu"}),
        # CLIP's quick GELU x·σ(1.702x); the patch embedding feeds pre_layrnorm
        ("clip_vision", "dynamo", {"layers.0.mlp.fc1": "gelu", "embeddings.patch_embedding": "normalized"}),
        ("clip_vision", "legacy", {"layers.1.mlp.fc1": "gelu", "layers.0.self_attn.k_proj": "linear"}),
        ("clip_text", "dynamo", {"layers.0.mlp.fc1": "gelu", "layers.0.self_attn.q_proj": "linear"}),
        ("clip_text", "legacy", {"layers.1.mlp.fc1": "gelu", "layers.1.self_attn.out_proj": "linear"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_transformer_followers(exported, name, exporter, expected):
    report = diagnose(exported(name, exporter))
    for suffix, nonlinearity in expected.items():
        (finding,) = [f for f in report.layers if f.name.endswith(suffix)]
        assert (finding.nonlinearity, finding.nonlinearity_source) == (nonlinearity, "graph"), suffix
    if name == "llama":  # RMSNorm as exported: Pow → ReduceMean → Add → Sqrt → Reciprocal → Mul · γ
        norms = [n for n in report.norm_layers if n.kind == "rmsnorm"]
        assert len(norms) == 5 and norms[0].name == "model.layers.0.input_layernorm"
        assert norms[0].weight_mean == 1.0 and norms[0].weight_std == 0.0


@pytest.mark.parametrize("exporter", ["dynamo", "legacy", "training"])
def test_squeeze_excitation_gates_and_hardswish(exported, exporter):
    report = diagnose(exported("mobilenet", exporter))
    layers = by_name(report)
    gates = sorted(f.name for f in report.layers if f.role == "gate")
    assert gates == [f"features.{i}.block.2.fc{j}" for i in (1, 2, 3) for j in (1, 2)]
    # pool → fc1 → ReLU → fc2 → hardsigmoid → × signal
    assert layers["features.1.block.2.fc1"].nonlinearity == "relu"
    assert layers["features.1.block.2.fc2"].nonlinearity == "sigmoid"
    assert all(layers[g].status == "ok" and "gate" in layers[g].message for g in gates)
    # the expansion conv: BN then hardswish; BN folded → the conv feeds hardswish itself
    expand = layers["features.1.block.0.0"]
    # HardSwish has its own gain now (1.7367, initdoctor.gains), no longer mapped to silu
    assert expand.nonlinearity == ("normalized" if exporter == "training" else "hardswish")
    assert layers["classifier.0"].nonlinearity == "hardswish" and layers["classifier.3"].role == "output"


def test_densenet_concatenation_feeds_the_next_norm(exported):
    for exporter, conv1 in (("legacy", "relu"), ("training", "normalized")):
        layers = by_name(diagnose(exported("densenet", exporter)))
        # conv2's output is concatenated, then BatchNorm'd by the next dense layer (never folded:
        # a BN after a concat has no conv to go into)
        assert [layers[f"block1.layers.{i}.conv2"].nonlinearity for i in range(3)] == ["normalized"] * 3
        assert layers["block1.layers.0.conv1"].nonlinearity == conv1


@pytest.mark.parametrize("exporter", ["dynamo", "legacy", "dynamo_training"])
def test_folded_batchnorm_is_detected(exported, exporter):
    path = exported("resnet", exporter)  # the dynamo exporter ignores training=TRAINING: still folded
    desc = describe_onnx(path)
    assert desc.bn_folded is True
    assert desc.norms == []  # no BatchNormalization node left
    report = diagnose(path)
    (note,) = [n for n in report.notes if "BatchNorm folded" in n]
    assert "(15 convs)" in note and "judged as unnormalized" in note and "dynamo=False" in note
    # issue 14: a finding on the folded graph says first that it is the unnormalized net's verdict
    if report.summary.status in ("warn", "error"):
        assert report.summary.message.startswith(
            "BatchNorm folded by the exporter: judged as unnormalized — "
        )


def test_bn_faithful_export_is_not_folded(exported):
    import onnx

    path = exported("resnet", "training")
    desc = describe_onnx(path)
    assert desc.bn_folded is False and len(desc.norms) == 15
    assert not [n for n in diagnose(path).notes if "BatchNorm folded" in n]
    # the legacy exporter keeps BatchNorm in training mode: batch statistics, as the torch probe
    bns = [n for n in onnx.load(str(path)).graph.node if n.op_type == "BatchNormalization"]
    modes = {a.i for n in bns for a in n.attribute if a.name == "training_mode"}
    assert len(bns) == 15 and modes == {1}
    assert describe_onnx(exported("vgg", "dynamo")).bn_folded is False  # no BatchNorm at all


def test_torch_and_bn_faithful_onnx_measure_alike(exported):
    model = build("resnet")
    torch_report = initdoctor.diagnose(model, probe=True, batch_size=2)
    faithful = diagnose(exported("resnet", "training"))
    folded = diagnose(exported("resnet", "dynamo"))
    first_torch, first_onnx = torch_report.layers[0], faithful.layers[0]
    assert first_torch.name == first_onnx.name == "conv1"
    assert first_onnx.variance_ratio == pytest.approx(first_torch.variance_ratio, rel=1e-4)
    growth = {b.name: b.growth for b in torch_report.residual_blocks}
    assert (
        sorted(growth)
        == sorted(b.name for b in faithful.residual_blocks)
        == sorted(["layer1.0", "layer1.1", "layer2.0", "layer2.1"])
    )
    for block in faithful.residual_blocks:
        assert block.growth == pytest.approx(growth[block.name], rel=1e-4), block.name
    assert faithful.summary.residual_growth == pytest.approx(torch_report.summary.residual_growth, rel=1e-4)
    # folded (eval-mode BN = identity at init): the unnormalized net, measured differently
    folded_growth = {b.name: b.growth for b in folded.residual_blocks}
    assert abs(math.log(folded_growth["layer2.1"] / growth["layer2.1"])) > math.log(1.5)


def test_decomposed_gelu_and_layernorm_hand_built(tmp_path):
    """Opset-17 subgraphs as older exporters write them: ``x·½(1 + erf(x/√2))`` after fc1, a
    LayerNorm spelled out (ReduceMean, Sub, Pow, ReduceMean, Add ε, Sqrt, Div, · γ, + β) after
    fc2; a Shape read of fc2's output is no use of its values."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    inits = [
        init("fc1.weight", rng.normal(0, 8**-0.5, (8, 8))),
        init("fc2.weight", rng.normal(0, 8**-0.5, (8, 8))),
        init("head.weight", rng.normal(0, 8**-0.5, (8, 4))),
        init("ln.weight", np.ones(8)),
        init("ln.bias", np.zeros(8)),
        *(
            init(n, v)
            for n, v in (("sqrt2", 2**0.5), ("one", 1.0), ("half", 0.5), ("two", 2.0), ("eps", 1e-5))
        ),
    ]
    node = helper.make_node
    nodes = [
        node("MatMul", ["x", "fc1.weight"], ["h"]),
        node("Div", ["h", "sqrt2"], ["d"]),
        node("Erf", ["d"], ["e"]),
        node("Add", ["e", "one"], ["a"]),
        node("Mul", ["h", "a"], ["m"]),
        node("Mul", ["m", "half"], ["g"]),
        node("MatMul", ["g", "fc2.weight"], ["y"]),
        node("Shape", ["y"], ["y_shape"]),
        node("ReduceMean", ["y"], ["mu"], axes=[-1]),
        node("Sub", ["y", "mu"], ["c"]),
        node("Pow", ["c", "two"], ["p"]),
        node("ReduceMean", ["p"], ["v"], axes=[-1]),
        node("Add", ["v", "eps"], ["ve"]),
        node("Sqrt", ["ve"], ["s"]),
        node("Div", ["c", "s"], ["n"]),
        node("Mul", ["n", "ln.weight"], ["gn"]),
        node("Add", ["gn", "ln.bias"], ["ln_out"]),
        node("MatMul", ["ln_out", "head.weight"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 4]),
            helper.make_tensor_value_info("y_shape", TensorProto.INT64, [2]),
        ],
        inits,
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    report = initdoctor.diagnose(path, probe=True, batch_size=4)
    layers = by_name(report)
    assert [(n, layers[n].nonlinearity, layers[n].role) for n in ("fc1", "fc2", "head")] == [
        ("fc1", "gelu", "hidden"),
        ("fc2", "normalized", "normalized"),
        ("head", "linear", "output"),
    ]
    assert [(n.name, n.kind, n.weight_mean, n.bias_mean) for n in report.norm_layers] == [
        ("ln", "layernorm", 1.0, 0.0)
    ]
    assert layers["fc1"].gain == pytest.approx(1.5335)  # GELU's gain (gains.py)
