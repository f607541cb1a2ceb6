"""What torch modules and ops are, for describing a live torch model: class-name and op-name
tables (weighted, norm, activation, pass-through). A torch tensor's statistics:
:func:`.torch_moments.weight_stats`.
"""

from __future__ import annotations

import re
from typing import Any

# Module class name → layer kind (matched along the MRO, so subclasses count; TorchScript
# modules expose the original class name as ``original_name``).
WEIGHTED_CLASSES = {
    "Linear": "linear",
    "Bilinear": None,
    "Conv1d": "conv1d",
    "Conv2d": "conv2d",
    "Conv3d": "conv3d",
    "ConvTranspose1d": "conv_transpose1d",
    "ConvTranspose2d": "conv_transpose2d",
    "ConvTranspose3d": "conv_transpose3d",
    "Embedding": "embedding",
    "EmbeddingBag": "embedding",
    "Conv1D": "linear",  # Hugging Face transformers' Conv1D: a Linear storing W as [in, out]
}
NORM_CLASSES = {
    "BatchNorm1d": "batchnorm",
    "BatchNorm2d": "batchnorm",
    "BatchNorm3d": "batchnorm",
    "SyncBatchNorm": "batchnorm",
    "LayerNorm": "layernorm",
    "GroupNorm": "groupnorm",
    "InstanceNorm1d": "instancenorm",
    "InstanceNorm2d": "instancenorm",
    "InstanceNorm3d": "instancenorm",
    "RMSNorm": "rmsnorm",
}
_ACTIVATION_CLASSES = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "Hardswish": "hardswish",
    "LeakyReLU": "leaky_relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "SELU": "selu",
    "GELU": "gelu",
    "SiLU": "silu",
}
_PASS_CLASSES = {
    "Identity",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "Flatten",
    "Unflatten",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
}

# Function / method / ATen op names (``aten.relu.default`` → ``relu``).
ACTIVATION_NAMES = {
    "relu": "relu",
    "relu_": "relu",
    "leaky_relu": "leaky_relu",
    "leaky_relu_": "leaky_relu",
    "tanh": "tanh",
    "tanh_": "tanh",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "selu": "selu",
    "selu_": "selu",
    "gelu": "gelu",
    "silu": "silu",
    "silu_": "silu",
    "hardswish": "hardswish",
    "hardswish_": "hardswish",
    "relu6": "relu6",
}
PASS_NAMES = {
    "view",
    "reshape",
    "flatten",
    "t",
    "permute",
    "transpose",
    "dropout",
    "dropout_",
    "clone",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "_to_copy",
    "to",
    "alias",
    "detach",
    "getitem",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "max_pool2d_with_indices",
    "_adaptive_avg_pool2d",
    "mean",
}


def _class_names(module: Any) -> list[str]:
    original = getattr(module, "original_name", None)  # TorchScript
    names = [original] if isinstance(original, str) else []
    return names + [cls.__name__ for cls in type(module).__mro__]


def lookup(module: Any, table: dict[str, Any]) -> tuple[bool, Any]:
    for name in _class_names(module):
        if name in table:
            return True, table[name]
    return False, None


def stats_reader(stats: Any) -> Any:
    """``tensor(t, name)`` → statistics: ``stats(name)`` when given (a streamed model, whose
    values are in its files), else :func:`.torch_moments.weight_stats` of ``t``."""
    if stats is None:
        from .torch_moments import weight_stats  # on the tensor's device, scalars to the host

        return lambda tensor, name=None: weight_stats(tensor)
    return lambda tensor, name: stats(name)


def unreadable(tensor: Any) -> str | None:
    """Why a tensor of a state_dict has no values to judge (sparse, on the meta device), or None."""
    import torch

    if tensor.layout is not torch.strided:
        return f"{str(tensor.layout).replace('torch.', '')} tensor"
    if tensor.device.type == "meta":
        return "meta-device tensor (no data)"
    return None


def count_parameters(tensors: Any) -> int:
    """Number of elements over tensors, counting storage shared by several names (tied) once."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for t in tensors:
        try:
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        except (RuntimeError, NotImplementedError):
            ident = (id(t), 0, tuple(t.shape))
        if ident in seen and ident[0] != 0:
            continue
        seen.add(ident)
        total += int(t.numel())
    return total


#: A normalization class by name: transformers' ``LlamaRMSNorm``, ``T5LayerNorm``,
#: ``GemmaRMSNorm``…, ConvNeXt's ``LayerNorm2d``, timm's ``BatchNormAct2d`` (a BatchNorm2d
#: subclass that also applies an activation).
_NORM_NAME = re.compile(r"(Norm|NormAct)([123]d)?$")

#: Activations initdoctor has no gain for (``hardtanh``, ``mish``…): a nonlinearity the graph shows but
#: does not name for the rules; a walk stops there.
OTHER_ACTIVATIONS = {
    "hardsigmoid",
    "hardsigmoid_",
    "hardtanh",
    "hardtanh_",
    "elu",
    "elu_",
    "mish",
    "softplus",
    "Hardsigmoid",
    "Hardtanh",
    "ELU",
    "Mish",
    "Softplus",
}
#: The gates of a squeeze-excitation block (``x * sigmoid(…)``).
GATE_NAMES = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "Sigmoid", "Hardsigmoid"}
#: Attention's own ops: a projection feeding them is followed by no nonlinearity.
ATTENTION_NAMES = {
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention",
    "softmax",
    "_softmax",
    "_safe_softmax",
    "bmm",
    "baddbmm",
    "matmul",
    "einsum",
}


def class_name_is_norm(name: str) -> bool:
    """Whether a class name (or a dotted ``module.Class`` string) names a normalization."""
    short = name.rsplit(".", 1)[-1]
    return short in NORM_CLASSES or bool(_NORM_NAME.search(short))


def class_activation(name: str) -> str | None:
    """The activation a module class stands for by its name, when it is not a torch.nn class:
    transformers' ``GELUActivation``, ``NewGELUActivation``, ``GELUTanh``, ``QuickGELUActivation``
    (x·σ(1.702x), a GELU approximation), ``SiLUActivation``; ``Swish``."""
    short = name.rsplit(".", 1)[-1]
    if "GELU" in short or "Gelu" in short:
        return "gelu"
    if "SiLU" in short or "Swish" in short:
        return "silu"
    return None


def activation_module(module: Any) -> str | None:
    """:func:`class_activation` for a module without parameters."""
    if any(True for _ in getattr(module, "parameters", list)()):
        return None
    return class_activation(_class_names(module)[0])


def is_norm_module(module: Any) -> bool:
    """A normalization module: a class of :data:`NORM_CLASSES` (along the MRO), or a class whose
    name ends in ``Norm``/``RMSNorm``/``LayerNorm`` (optionally ``1d``–``3d``) or ``NormAct2d``,
    with a 1-D weight or none (no affine), holding no weighted layer (``PreNorm(dim, fn)`` wraps one)."""
    if lookup(module, NORM_CLASSES)[0]:
        return True
    if lookup(module, WEIGHTED_CLASSES)[0]:
        return False
    children = getattr(module, "modules", None)
    if children is not None and any(
        lookup(m, WEIGHTED_CLASSES)[0] or is_norm_module(m) for m in list(children())[1:]
    ):
        return False
    # named_parameters, not getattr: torch.fx proxies parameter attributes while it traces
    own = dict(module.named_parameters(recurse=False)) if hasattr(module, "named_parameters") else {}
    weight = own.get("weight")
    if weight is not None and weight.dim() != 1:
        return False
    return any(_NORM_NAME.search(name) for name in _class_names(module))


def module_op(module: Any) -> tuple[str, float | None]:
    hit, kind = lookup(module, WEIGHTED_CLASSES)
    if hit and kind:
        return "weighted", None
    if is_norm_module(module):
        return "norm", None
    hit, act = lookup(module, _ACTIVATION_CLASSES)
    if hit and act:
        param = float(getattr(module, "negative_slope", 0.01)) if act == "leaky_relu" else None
        return act, param
    named = activation_module(module)
    if named is not None:
        return named, None
    if any(name in _PASS_CLASSES for name in _class_names(module)):
        return "pass", None
    if any(name in OTHER_ACTIVATIONS for name in _class_names(module)):
        return "act", None
    return "other", None


NORM_NAMES = {
    "layer_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "native_layer_norm",
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "native_group_norm",
}


def function_op(name: str) -> str:
    """The neutral op (see :mod:`initdoctor.graph`) of a function, method or ATen op name that is
    neither a weighted layer nor an add."""
    if name in ACTIVATION_NAMES:
        return ACTIVATION_NAMES[name]
    if name in PASS_NAMES:
        return "pass"
    if name in NORM_NAMES:
        return "norm"
    if name in OTHER_ACTIVATIONS:
        return "act"
    if name in ATTENTION_NAMES:
        return "attention"
    return "other"


def norm_kind_of(module: Any) -> str:
    """``batchnorm``, ``layernorm``… for a module :func:`is_norm_module` accepts."""
    hit, kind = lookup(module, NORM_CLASSES)
    if hit:
        return str(kind)
    name = _class_names(module)[0]
    if "RMS" in name:
        return "rmsnorm"
    if "Group" in name:
        return "groupnorm"
    return "batchnorm" if "Batch" in name else "layernorm"
