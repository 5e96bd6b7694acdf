"""Masks, pruning and compaction for ``nn.Sequential`` models of Linear / Conv2d layers.

Masks are ``torch.nn.utils.parametrize`` parametrizations, so ``module.weight`` is always the
effective (masked) weight: the bound graph (``from_torch``) and ONNX export see the sparse net.
Structured masks zero whole units (rows / output channels) of a layer together with their bias,
so a removed unit outputs exactly 0 and :func:`compact` can drop it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

LAYERS = (nn.Linear, nn.Conv2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed binary mask buffer."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().float())

    def forward(self, w):
        return w * self.mask


def prunable(model: nn.Module) -> list[nn.Module]:
    """Linear / Conv2d layers in forward order."""
    return [m for m in model.modules() if isinstance(m, LAYERS)]


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, Mask):
                return p.mask
    return None


def set_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Install (or replace) the mask of ``module.<name>``."""
    current = get_mask(module, name)
    if current is not None:
        current.copy_(mask)
    else:
        parametrize.register_parametrization(module, name, Mask(mask.to(getattr(module, name).device)))


def raw_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The trainable tensor behind a (possibly parametrized) weight."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


def remove_parametrizations(model: nn.Module) -> nn.Module:
    """Bake every parametrization (masks, scores) into plain weights; in place, returns ``model``."""
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return model


# --------------------------------------------------------------------------- densities


def layer_densities(model: nn.Module, sparsity: float, kind: str = "erk") -> list[float]:
    """Per-layer densities giving overall weight density ``1 - sparsity``.

    ``uniform``: every layer the same. ``erk`` (Erdos-Renyi-Kernel, Evci et al. 2020): density
    proportional to ``sum(shape) / prod(shape)``, layers that would exceed 1 kept dense.
    """
    layers = prunable(model)
    sizes = [m.weight.numel() for m in layers]
    target = (1.0 - sparsity) * sum(sizes)
    if kind == "uniform":
        return [1.0 - sparsity] * len(layers)
    if kind != "erk":
        raise ValueError(f"unknown density distribution '{kind}' (known: erk, uniform)")
    raw = [sum(m.weight.shape) / m.weight.numel() for m in layers]
    dense: set[int] = set()
    while True:
        budget = target - sum(sizes[i] for i in dense)
        free = sum(raw[i] * sizes[i] for i in range(len(layers)) if i not in dense)
        scale = budget / free
        over = {i for i in range(len(layers)) if i not in dense and raw[i] * scale > 1}
        if not over:
            return [1.0 if i in dense else raw[i] * scale for i in range(len(layers))]
        dense |= over


def _topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), device=scores.device)
    if k > 0:
        mask[torch.topk(scores.reshape(-1), k).indices] = 1.0
    return mask.reshape(scores.shape)


def random_masks(model: nn.Module, densities: list[float], generator: torch.Generator | None = None):
    """Apply uniformly random masks with the given per-layer densities (at least one weight each)."""
    for m, d in zip(prunable(model), densities):
        scores = torch.rand(m.weight.shape, generator=generator).to(m.weight.device)
        set_mask(m, _topk_mask(scores, max(1, round(d * m.weight.numel()))))


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> None:
    """Keep the largest-magnitude effective weights: ``global`` across layers or per ``layer``."""
    score_masks(model, [m.weight.detach().abs() for m in prunable(model)], sparsity, scope)


def score_masks(model: nn.Module, scores: list[torch.Tensor], sparsity: float, scope: str = "global") -> None:
    """Keep the weights with the largest ``scores`` (one tensor per prunable layer, the weight's
    shape): ``1 - sparsity`` of them ``global``-ly across layers or per ``layer``."""
    layers = prunable(model)
    if scope == "global":
        flat = torch.cat([w.reshape(-1) for w in scores])
        k = max(len(layers), round((1.0 - sparsity) * flat.numel()))
        keep = _topk_mask(flat, k)
        chunks = torch.split(keep, [w.numel() for w in scores])
        masks = [c.reshape(w.shape) for c, w in zip(chunks, scores)]
    elif scope == "layer":
        masks = [_topk_mask(w, max(1, round((1.0 - sparsity) * w.numel()))) for w in scores]
    else:
        raise ValueError(f"unknown pruning scope '{scope}' (known: global, layer)")
    for m, mask in zip(layers, masks):
        set_mask(m, mask)


# --------------------------------------------------------------------------- structured


def unit_mask(module: nn.Module) -> torch.Tensor | None:
    """Per-unit (row / output channel) 0/1 vector of a structured-masked layer, else None."""
    return get_mask(module, "bias")


def set_unit_mask(module: nn.Module, keep: torch.Tensor, bn: nn.Module | None = None) -> None:
    """Zero whole units (weight rows / output channels and their bias, and the scale and shift of
    the BatchNorm ``bn`` after the layer) where ``keep`` is 0."""
    keep = keep.float().to(module.weight.device)
    set_mask(module, keep.reshape(-1, *([1] * (module.weight.dim() - 1))).expand_as(module.weight).clone())
    set_mask(module, keep, "bias")
    if bn is not None:
        set_mask(bn, keep)
        set_mask(bn, keep, "bias")


def batchnorm_after(model: nn.Sequential) -> dict[nn.Module, nn.Module]:
    """The BatchNorm layer right after each Linear / Conv2d layer that has one."""
    mods = list(model)
    return {m: n for m, n in zip(mods, mods[1:]) if isinstance(m, LAYERS) and isinstance(n, BATCHNORMS)}


def compact_weights(model: nn.Module, units: list[int]) -> int:
    """Linear / Conv2d weights of the net compacted to ``units`` per hidden layer."""
    layers = prunable(model)
    total, prev = 0, None
    for i, m in enumerate(layers):
        w = m.weight
        n_out = units[i] if i < len(units) else w.shape[0]
        n_in = w.shape[1] if prev is None else w.shape[1] * prev // layers[i - 1].weight.shape[0]
        total += n_out * n_in * math.prod(w.shape[2:])
        prev = n_out
    return total


def structured_keep(model: nn.Module, sparsity: float) -> list[int]:
    """Units to keep per hidden layer, one shared keep fraction, so that the compacted net has
    at most ``1 - sparsity`` of the prunable weights (at least one unit per layer)."""
    layers = prunable(model)
    full = [m.weight.shape[0] for m in layers[:-1]]

    def weights(q: float) -> int:
        return compact_weights(model, [max(1, math.floor(q * n)) for n in full])

    budget = (1.0 - sparsity) * sum(m.weight.numel() for m in layers)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if weights(mid) <= budget else (lo, mid)
    return [max(1, math.floor(lo * n)) for n in full]


def compact(model: nn.Sequential, in_shape: tuple[int, ...]) -> nn.Sequential:
    """A dense ``nn.Sequential`` without the units whose weights and bias are all zero.

    Removed units output 0 after the ReLU, so dropping them (and the matching input columns of
    the next layer) leaves the function unchanged. The last layer keeps all its outputs.
    """
    shapes, x = {}, torch.zeros(1, *in_shape, device=next(model.parameters()).device)
    with torch.no_grad():
        for i, m in enumerate(model):
            x = m(x)
            shapes[i] = tuple(x.shape[1:])
    last = max(i for i, m in enumerate(model) if isinstance(m, LAYERS))
    keep_in = None  # indices of the previous layer's kept units (channels or features)
    mods = []
    for i, m in enumerate(model):
        if isinstance(m, nn.Flatten) and keep_in is not None:
            per = math.prod(shapes[i - 1][1:]) if len(shapes[i - 1]) == 3 else 1
            keep_in = (keep_in[:, None] * per + torch.arange(per, device=keep_in.device)).reshape(-1)
        if not isinstance(m, LAYERS):
            mods.append(copy.deepcopy(m))
            continue
        w, b = m.weight.detach(), m.bias.detach()
        if keep_in is not None:
            w = w[:, keep_in]
        if i == last:
            keep = torch.arange(w.shape[0])
        else:
            alive = (w.reshape(w.shape[0], -1) != 0).any(1) | (b != 0)
            keep = torch.nonzero(alive).reshape(-1)
            if keep.numel() == 0:
                keep = torch.zeros(1, dtype=torch.long)
        w, b = w[keep], b[keep]
        if isinstance(m, nn.Linear):
            new = nn.Linear(w.shape[1], w.shape[0])
        else:
            new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding)
        with torch.no_grad():
            new.weight.copy_(w)
            new.bias.copy_(b)
        mods.append(new.to(w.device))
        keep_in = keep.to(w.device) if i != last else None
    return nn.Sequential(*mods)


# --------------------------------------------------------------------------- accounting


def sparsity(model: nn.Module) -> float:
    """Fraction of zero entries among the (effective) Linear / Conv2d weights."""
    layers = prunable(model)
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / total if total else 0.0


def nonzero_weights(model: nn.Module) -> int:
    """Nonzero (effective) Linear / Conv2d weights, biases excluded."""
    return sum(int((m.weight != 0).sum()) for m in prunable(model))


def nonzero_params(model: nn.Module) -> int:
    """Nonzero weights and biases of the Linear / Conv2d layers."""
    n = 0
    for m in prunable(model):
        n += int((m.weight != 0).sum()) + (int((m.bias != 0).sum()) if m.bias is not None else 0)
    return n


def flops(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of nonzero weights for one input (conv: per output position)."""
    total, x = 0, torch.zeros(1, *in_shape, device=next(model.parameters()).device)
    with torch.no_grad():
        for m in model.children() if isinstance(model, nn.Sequential) else [model]:
            x = m(x)
            if isinstance(m, LAYERS):
                spatial = math.prod(x.shape[2:]) if x.dim() == 4 else 1
                total += int((m.weight != 0).sum()) * spatial
    return total
