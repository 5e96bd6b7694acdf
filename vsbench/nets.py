"""Named architectures: ``nn.Sequential`` of Normalize, Conv2d, Linear, ReLU, Flatten (and, after
linearity grafting, :class:`GraftReLU`).

Input normalisation is the first layer, so models take pixel-scale inputs in [0, 1]. Each name
with ``-bn`` appended (e.g. ``cnn-small-bn``) adds a BatchNorm after every hidden Linear / Conv2d,
as in the fast IBP recipe (Shi et al. 2021); :func:`fold_batchnorm` folds it away after training,
so saved and exported models are plain. Every model
can be described as a plain list of layers (:func:`describe_layers`) and rebuilt from it
(:func:`build_from_layers`); checkpoints use this to restore compacted (structured-pruned) nets.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vsbench.bounds.graph import batchnorm_affine

# name -> hidden layers: ("conv", channels, kernel, stride, padding) or ("fc", units); a final FC to
# the classes is appended.
ARCHS: dict[str, list[tuple]] = {
    "mlp-2x100": [("fc", 100), ("fc", 100)],
    "mlp-2x256": [("fc", 256), ("fc", 256)],
    "mlp-4x256": [("fc", 256)] * 4,
    # CROWN-IBP "DM-small"
    "cnn-small": [("conv", 16, 4, 2, 0), ("conv", 32, 4, 1, 0), ("fc", 100)],
    # CROWN-IBP "DM-medium"
    "cnn-medium": [("conv", 32, 3, 1, 0), ("conv", 32, 4, 2, 0), ("conv", 64, 3, 1, 0),
                   ("conv", 64, 4, 2, 0), ("fc", 512), ("fc", 512)],
}


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; an elementwise affine map the bound engines understand."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(-1))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)

    def affine_scale(self, shape) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat ``(a, b)`` with ``y = a * x + b`` on an input of ``shape`` (without batch)."""
        channels, per = shape[0], math.prod(shape[1:])
        a = (1.0 / self.std).expand(channels)
        b = (-self.mean / self.std).expand(channels)
        return a.repeat_interleave(per), b.repeat_interleave(per)


class GraftReLU(nn.Module):
    """ReLU with some neurons grafted to learned linear functions (linearity grafting, Chen et al.
    2022): ``y = keep * relu(x) + (1 - keep) * (slope * x + intercept)`` per neuron.

    ``keep`` (a buffer, 1 = ReLU) and the parameters have the activation's shape without the
    batch. ONNX export gives ``Relu``, ``Mul`` and ``Add`` nodes; :meth:`graft` gives the bound
    engines the flat ``(keep, slope, intercept)`` (slope and intercept zero where ``keep`` is 1).
    """

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("keep", torch.ones(*shape))
        self.slope = nn.Parameter(torch.zeros(*shape))
        self.intercept = nn.Parameter(torch.zeros(*shape))

    def graft(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lin = 1.0 - self.keep
        return self.keep.reshape(-1), (self.slope * lin).reshape(-1), (self.intercept * lin).reshape(-1)

    def forward(self, x):
        # a layer all ReLU or all linear exports without the other branch: fewer nodes, and no
        # all-0 / all-1 constants that the exporter would merge across layers into Identity nodes
        if bool(self.keep.all()):
            return torch.relu(x)
        lin = 1.0 - self.keep
        linear = x * (self.slope * lin) + self.intercept * lin
        return linear if not bool(self.keep.any()) else torch.relu(x) * self.keep + linear


BN_SUFFIX = "-bn"


def list_nets() -> list[str]:
    return [*ARCHS, *(name + BN_SUFFIX for name in ARCHS)]


def _info(dataset_info):
    if isinstance(dataset_info, str):
        from vsbench.data import get_dataset_info

        return get_dataset_info(dataset_info)
    return dataset_info


def build_net(name: str, dataset_info, widths: list[int] | None = None) -> nn.Sequential:
    """The architecture ``name`` for a dataset (a :class:`vsbench.data.DatasetInfo` or its name).

    ``widths`` overrides the number of units (channels / neurons) of each hidden layer.
    """
    if name not in list_nets():
        raise ValueError(f"unknown architecture '{name}' (known: {', '.join(list_nets())})")
    info = _info(dataset_info)
    batch_norm = name.endswith(BN_SUFFIX)
    spec = ARCHS[name.removesuffix(BN_SUFFIX)]
    if widths is not None and len(widths) != len(spec):
        raise ValueError(f"{name}: {len(widths)} widths given for {len(spec)} hidden layers")
    c, h, w = info.in_shape
    layers: list[dict] = [{"type": "normalize", "mean": list(info.mean), "std": list(info.std)}]
    flat = False
    for i, layer in enumerate(spec):
        units = widths[i] if widths is not None else layer[1]
        if layer[0] == "conv":
            _, _, k, s, p = layer
            layers.append({"type": "conv", "in": c, "out": units, "kernel": k, "stride": s, "padding": p})
            c, h, w = units, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        else:
            if not flat:
                layers.append({"type": "flatten"})
                c, flat = c * h * w, True
            layers.append({"type": "linear", "in": c, "out": units})
            c = units
        if batch_norm:
            layers.append({"type": "batchnorm", "features": units, "dims": 1 if flat else 2})
        layers.append({"type": "relu"})
    if not flat:
        layers.append({"type": "flatten"})
        c = c * h * w
    layers.append({"type": "linear", "in": c, "out": info.n_classes})
    return build_from_layers(layers)


def build_from_layers(layers: list[dict]) -> nn.Sequential:
    """Inverse of :func:`describe_layers`; ``ValueError`` on an unknown or malformed entry."""
    mods: list[nn.Module] = []
    try:
        for d in layers:
            t = d["type"]
            if t == "normalize":
                mods.append(Normalize(d["mean"], d["std"]))
            elif t == "conv":
                mods.append(nn.Conv2d(int(d["in"]), int(d["out"]), int(d["kernel"]), int(d["stride"]),
                                      int(d["padding"])))
            elif t == "linear":
                mods.append(nn.Linear(int(d["in"]), int(d["out"])))
            elif t == "batchnorm":
                mods.append((nn.BatchNorm1d if int(d["dims"]) == 1 else nn.BatchNorm2d)(int(d["features"])))
            elif t == "relu":
                mods.append(nn.ReLU())
            elif t == "graft":
                mods.append(GraftReLU([int(n) for n in d["shape"]]))
            elif t == "flatten":
                mods.append(nn.Flatten())
            else:
                raise ValueError(f"unknown layer type '{t}'")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed layer description {exc!r}") from None
    return nn.Sequential(*mods)


def describe_layers(model: nn.Sequential) -> list[dict]:
    """JSON-able list of the model's layers (sizes after any compaction)."""
    out = []
    for m in model:
        if isinstance(m, Normalize):
            out.append({"type": "normalize", "mean": m.mean.tolist(), "std": m.std.tolist()})
        elif isinstance(m, nn.Conv2d):
            out.append({"type": "conv", "in": m.in_channels, "out": m.out_channels, "kernel": m.kernel_size[0],
                        "stride": m.stride[0], "padding": m.padding[0]})
        elif isinstance(m, nn.Linear):
            out.append({"type": "linear", "in": m.in_features, "out": m.out_features})
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            dims = 1 if isinstance(m, nn.BatchNorm1d) else 2
            out.append({"type": "batchnorm", "features": m.num_features, "dims": dims})
        elif isinstance(m, nn.ReLU):
            out.append({"type": "relu"})
        elif isinstance(m, GraftReLU):
            out.append({"type": "graft", "shape": list(m.keep.shape)})
        elif isinstance(m, nn.Flatten):
            out.append({"type": "flatten"})
        else:
            raise ValueError(f"cannot describe layer {type(m).__name__}")
    return out


def hidden_widths(model: nn.Sequential) -> list[int]:
    """Units of every Linear / Conv2d layer but the last."""
    return [m.out_features if isinstance(m, nn.Linear) else m.out_channels
            for m in model if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]


def ibp_init_(model: nn.Module) -> nn.Module:
    """IBP initialisation (Shi et al. 2021): hidden weights ~ N(0, 2*pi / fan_in^2), keeping the
    interval width stable through the layers; the output layer and biases keep their init."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for m in layers[:-1]:
        nn.init.normal_(m.weight, std=math.sqrt(2 * math.pi) / m.weight[0].numel())
    return model


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """The model's eval-mode function without BatchNorm layers: each is folded into the Linear /
    Conv2d before it (``W' = a W``, ``b' = a b + beta - a mean``, ``a = gamma / sqrt(var + eps)``),
    so zero weights stay zero. A model without BatchNorm is returned as it is."""
    if not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model):
        return model
    mods: list[nn.Module] = []
    for m in model:
        if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mods.append(m)
            continue
        prev = mods[-1] if mods else None
        if not isinstance(prev, (nn.Linear, nn.Conv2d)):
            raise ValueError("a BatchNorm layer must follow a Linear or Conv2d layer to be folded")
        mods[-1] = _fold(prev, m)
    return nn.Sequential(*mods)


@torch.no_grad()
def _fold(layer: nn.Linear | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Linear | nn.Conv2d:
    """A plain layer computing ``bn(layer(x))`` with ``bn``'s running statistics."""
    a, shift = batchnorm_affine(bn)
    w = layer.weight  # the effective weight: masks (parametrizations) included
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, layer.out_features)
    else:
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(a)
    new.weight.copy_(w * a.reshape(-1, *([1] * (w.dim() - 1))))
    new.bias.copy_(a * bias + shift)
    return new.to(w.device)
