"""Fold a model's leading input normalisation into its first affine layer, exactly, before ONNX export.

Written by hand: torch's exporter keeps ``(x - mean) / std`` as broadcasting ``Sub`` / ``Div`` nodes,
which Marabou's ONNX parser (and other VNN-COMP tools) reject, and no library folds it for us.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class BiasMap(nn.Module):
    """Adds a constant of the full output shape (a padded conv's border correction); exports as one Add."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("bias", bias.detach().clone().unsqueeze(0))

    def forward(self, x):
        return x + self.bias


def is_normalisation(m: nn.Module) -> bool:
    """A normalisation layer: ``mean`` and ``std`` tensors and no parameters (as ``vsbench.nets.Normalize``)."""
    return (all(isinstance(getattr(m, k, None), torch.Tensor) for k in ("mean", "std"))
            and next(m.parameters(), None) is None)


def _folded_head(norm: nn.Module, head: nn.Sequential, in_shape: tuple[int, ...]) -> list[nn.Module] | None:
    """Modules computing ``head(norm(x))`` without the normalisation (float64), or None if it does not fold."""
    first = head[-1]
    zero = torch.zeros(1, *in_shape, dtype=torch.float64)
    c, a = norm(zero), norm(zero + 1) - norm(zero)  # norm(x) = a * x + c for an elementwise affine norm
    bias = head(c)[0]
    if isinstance(first, nn.Linear):
        folded = nn.Linear(first.in_features, first.out_features).double()
        folded.weight.copy_(first.weight * a.reshape(1, -1))
        folded.bias.copy_(bias)
        return [nn.Flatten(), folded]
    scale, shift = a.reshape(a.shape[1], -1), c.reshape(c.shape[1], -1)
    if not (torch.equal(scale, scale[:, :1].expand_as(scale)) and torch.equal(shift, shift[:, :1].expand_as(shift))):
        return None  # not one factor and one offset per channel
    folded = nn.Conv2d(first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                       first.dilation, first.groups, padding_mode=first.padding_mode).double()
    folded.weight.copy_(first.weight * scale[:, 0].reshape(1, -1, 1, 1))
    folded.bias.copy_(bias.new_zeros(first.out_channels) if first.bias is None else first.bias)
    folded.bias += (first.weight * shift[:, 0].reshape(1, -1, 1, 1)).sum((1, 2, 3))  # where no padding is seen
    border = bias - folded.bias.reshape(-1, 1, 1)
    return [folded] if not torch.any(border) else [folded, BiasMap(border)]


def fold_normalisation(model: nn.Module, in_shape: tuple[int, ...]) -> nn.Module:
    """``model`` with a leading normalisation folded into its first Linear / Conv2d (else ``model`` itself).

    For ``Sequential(N, [Flatten,] A, ...)`` with ``N(x) = a * x + c`` elementwise (``a`` one factor per
    channel) and ``A`` affine, ``A(N(x)) = A'(x) + A(c)``: ``A'`` is ``A`` with its weights scaled by
    ``a`` and ``A(c)`` is the new bias. After a padded conv, ``A(c)`` differs at the border (the zero
    padding of the normalised input is not zero in pixel scale): the conv keeps the interior bias and a
    ``BiasMap`` adds the border's difference. The fold is kept only if it
    matches the original on random inputs in float64.
    """
    if not isinstance(model, nn.Sequential) or len(model) < 3 or not is_normalisation(model[0]):
        return model
    n = 3 if isinstance(model[1], nn.Flatten) else 2
    kind = nn.Linear if n == 3 else nn.Conv2d
    if not isinstance(model[n - 1], kind):
        return model
    norm, head = copy.deepcopy(model[0]).double(), copy.deepcopy(nn.Sequential(*list(model)[1:n])).double()
    with torch.no_grad():
        new = _folded_head(norm, head, in_shape)
        if new is None:
            return model
        x = torch.rand(8, *in_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        want, got = head(norm(x)), nn.Sequential(*new)(x)
        if not torch.allclose(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max())):
            return model
    return nn.Sequential(*new, *copy.deepcopy(list(model)[n:])).float().eval()
