"""``slimming`` (Liu et al. 2017, "Learning efficient convolutional networks through network
slimming", ICCV): structured pruning of neurons / channels by the L1-shrunk BatchNorm scales.

Certified training for ``cfg.epochs`` with ``l1 * sum |gamma|`` over every BatchNorm scale added
to the loss (phase ``train``); then the units with the smallest ``|gamma|``, ranked across all
hidden layers, are removed until the compacted net has at most ``1 - sparsity`` of the dense
weights (at least one unit per layer; phase ``prune``); then certified fine-tuning
(``finetune_frac * cfg.epochs``, phase ``finetune``, as in the paper's prune-then-fine-tune).
The saved net is folded and compacted like ``verisparse-structured``'s.

On an architecture without BatchNorm (e.g. ``mlp-2x100``) a BatchNorm is inserted after every
hidden layer, since its scales are the method's pruning signal; the saved net is plain either way.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vsbench.nets import fold_batchnorm
from vsbench.train.sparsity import (
    BATCHNORMS,
    batchnorm_after,
    compact,
    compact_weights,
    prunable,
    set_unit_mask,
)

from . import register
from .base import Sparsifier
from .common import extra_loss, timed
from .hydra import epochs_of


class SlimmingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    l1: float = Field(1e-4, ge=0.0, description="weight of the L1 penalty on BatchNorm scales (1e-4 in the paper)")
    finetune_frac: float = Field(1.0, gt=0.0, description="fine-tuning epochs / cfg.epochs")


def with_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """``model`` with a BatchNorm after every hidden Linear / Conv2d that has none."""
    mods, layers = list(model), prunable(model)
    out = []
    for m, nxt in zip(mods, mods[1:] + [None]):
        out.append(m)
        if m in layers[:-1] and not isinstance(nxt, BATCHNORMS):
            out.append(nn.BatchNorm1d(m.out_features) if isinstance(m, nn.Linear) else nn.BatchNorm2d(m.out_channels))
    return nn.Sequential(*out)


def slim_units(model: nn.Module, scales: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """0/1 keep vectors per hidden layer: drop the smallest ``scales`` across layers until the
    compacted net has at most ``1 - sparsity`` of the dense weights (one unit per layer stays)."""
    keep = [torch.ones_like(s) for s in scales]
    units = [len(s) for s in scales]
    budget = (1.0 - sparsity) * sum(m.weight.numel() for m in prunable(model))
    order = torch.cat([s.abs() for s in scales]).argsort()
    layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scales)])
    offset = torch.tensor([0] + units[:-1]).cumsum(0)
    for j in order.tolist():
        if compact_weights(model, units) <= budget:
            break
        i = int(layer_of[j])
        if units[i] > 1:
            keep[i][j - offset[i]] = 0.0
            units[i] -= 1
    return keep


@register
class Slimming(Sparsifier):
    name = "slimming"
    Options = SlimmingOptions

    def run(self, trainer, model):
        cfg = trainer.cfg
        model = with_batchnorm(model).to(trainer.device)
        bns = batchnorm_after(model)
        hidden = prunable(model)[:-1]

        def l1(model, graph, x, eps):
            return self.opt.l1 * sum(bns[m].weight.abs().sum() for m in hidden)

        with extra_loss(trainer, "l1_loss", l1):
            trainer.fit("train", model, cfg.epochs)
        with timed(trainer, "prune"):
            keep = slim_units(model, [bns[m].weight.detach() for m in hidden], cfg.sparsity)
            for m, k in zip(hidden, keep):
                set_unit_mask(m, k, bns[m])
        trainer.fit("finetune", model, epochs_of(self.opt.finetune_frac, cfg.epochs), ramp=False)
        return compact(fold_batchnorm(model), trainer.in_shape)
