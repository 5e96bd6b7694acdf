"""``lowrank``: low-rank factorisation with ranks chosen globally under the certified loss (in
the spirit of CSTAR, "certified robustness via low-rank compression"; the rank selection is a
first-order sensitivity ranking of singular components, as SNIP ranks weights).

Dense certified training (phase ``pretrain``); then every Linear / Conv2d weight ``W`` (a conv
kernel as the ``out x (in * k * k)`` matrix) is split by SVD into components ``s_i u_i v_i^T``,
each scored by the first-order change of the certified loss when it is removed,
``|s_i * u_i^T G v_i|`` (``G``: the loss gradient w.r.t. ``W``, summed over ``score_batches``
batches). Components are taken in order of score across all layers, each costing its layer's
``in + out`` weights, while the total fits ``(1 - sparsity)`` of the dense weights (every layer
keeps at least its best component; phase ``rank``). Each layer becomes two affine layers, ``V``
(rank r, bias from 0) then ``U`` (with the layer's bias; for a conv: a conv with r channels then a 1x1
conv), exported as two Gemm / MatMul / Conv nodes that the table's parameter and FLOP counts
include; then certified fine-tuning of the factors (phase ``finetune``).

"Sparsity" for ``lowrank`` is the fraction of the dense weights removed (the compression ratio
``1 / (1 - sparsity)``); rank 1 everywhere is the floor (on mlp-2x100: 1194 weights, sparsity
0.987, so a 0.99 target stops there).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vsbench.train.sparsity import prunable

from . import register
from .base import Sparsifier
from .common import certified_loss, scoring_batches, timed
from .hydra import epochs_of


class LowRankOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pretrain_frac: float = Field(1.0, gt=0.0, description="dense training epochs / cfg.epochs")
    finetune_frac: float = Field(1.0, gt=0.0, description="fine-tuning epochs / cfg.epochs")
    score_batches: int = Field(4, ge=1, description="batches the component scores are summed over")


def choose_components(scores: list[torch.Tensor], costs: list[int], budget: float) -> list[torch.Tensor]:
    """Indices of the components kept per layer: each layer's best, then the rest by score
    across layers while the total cost fits ``budget``."""
    chosen = [[int(s.argmax())] for s in scores]
    total = sum(costs)
    ranked = sorted(((float(v), i, j) for i, s in enumerate(scores) for j, v in enumerate(s)), reverse=True)
    for _, i, j in ranked:
        if j not in chosen[i] and total + costs[i] <= budget:
            chosen[i].append(j)
            total += costs[i]
    return [torch.tensor(sorted(c)) for c in chosen]


def factor_pair(m: nn.Linear | nn.Conv2d, first: torch.Tensor, second: torch.Tensor) -> list[nn.Module]:
    """The two layers computing ``second @ first`` in ``m``'s place (``m``'s bias on the second;
    the first's starts at 0 and trains, a bias the export's normalisation folding would add anyway)."""
    r = first.shape[0]
    if isinstance(m, nn.Linear):
        a, b = nn.Linear(m.in_features, r), nn.Linear(r, m.out_features)
    else:
        a = nn.Conv2d(m.in_channels, r, m.kernel_size, m.stride, m.padding)
        b = nn.Conv2d(r, m.out_channels, 1)
    with torch.no_grad():
        a.weight.copy_(first.reshape(a.weight.shape))
        a.bias.zero_()
        b.weight.copy_(second.reshape(b.weight.shape))
        b.bias.copy_(m.bias if m.bias is not None else torch.zeros_like(b.bias))
    return [a.to(m.weight.device), b.to(m.weight.device)]


@register
class LowRank(Sparsifier):
    name = "lowrank"
    Options = LowRankOptions

    def run(self, trainer, model):
        cfg, o = trainer.cfg, self.opt
        trainer.fit("pretrain", model, epochs_of(o.pretrain_frac, cfg.epochs))
        with timed(trainer, "rank"):
            model = self.factorize(trainer, model)
        trainer.fit("finetune", model, epochs_of(o.finetune_frac, cfg.epochs), ramp=False)
        return model

    def factorize(self, trainer, model: nn.Sequential) -> nn.Sequential:
        layers = prunable(model)
        model.zero_grad(set_to_none=True)
        for x, y in scoring_batches(trainer, self.opt.score_batches):
            certified_loss(trainer, model, x, y)[0].backward()
        svds, scores = [], []
        with torch.no_grad():
            for m in layers:
                U, S, Vh = torch.linalg.svd(m.weight.reshape(m.weight.shape[0], -1), full_matrices=False)
                G = m.weight.grad.reshape(U.shape[0], -1)
                scores.append((S * ((U.T @ G) * Vh).sum(1)).abs())
                svds.append((U, S, Vh))
        model.zero_grad(set_to_none=True)
        costs = [sum(m.weight.reshape(m.weight.shape[0], -1).shape) for m in layers]
        budget = (1.0 - trainer.cfg.sparsity) * sum(m.weight.numel() for m in layers)
        pairs = {}
        for m, (U, S, Vh), keep in zip(layers, svds, choose_components(scores, costs, budget)):
            root = S[keep].sqrt()
            pairs[m] = factor_pair(m, root[:, None] * Vh[keep], U[:, keep] * root)
        return nn.Sequential(*[f for m in model for f in pairs.get(m, [m])])
