"""``lowrank``: low-rank factorisation with ranks chosen globally under the certified loss (in
the spirit of CSTAR, "certified robustness via low-rank compression"; the rank selection is a
first-order sensitivity ranking of singular components, as SNIP ranks weights).

Dense certified training (phase ``pretrain``); then every Linear / Conv2d weight ``W`` (a conv
kernel as the ``out x (in * k * k)`` matrix) is split by SVD into components ``s_i u_i v_i^T``,
each scored by the first-order change of the certified loss when it is removed,
``|s_i * u_i^T G v_i|`` (``G``: the loss gradient w.r.t. ``W``, summed over ``score_batches``
batches). Components are taken in order of score across all layers, each costing its layer's
``in + out`` weights, while the total fits ``(1 - sparsity)`` of the dense weights (every layer
keeps at least its best component; phase ``rank``). Certified fine-tuning then trains the factors
(phase ``finetune``) with each layer's weight parametrized as their product, so the training
bounds are those of the product. The saved net has two affine layers per layer, ``V`` (rank r,
with a bias from 0) then ``U`` (with the layer's bias; for a conv: a conv with r channels then a
1x1 conv), exported as two Gemm / Conv nodes that the table's parameter and FLOP counts include.

"Sparsity" for ``lowrank`` is the fraction of the dense weights removed (the compression ratio
``1 / (1 - sparsity)``); rank 1 everywhere is the floor (on mlp-2x100: 1194 weights, sparsity
0.987, so a 0.99 target stops there).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import parametrize

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


class Factors(nn.Module):
    """Parametrization of a layer's weight as ``U @ V`` (rank ``r``), with the first factor's bias
    ``c``: training sees one layer ``x -> (U V) x + (b + U c)``, so IBP bounds it as tightly as
    the product (bounding through the two factors would be looser); saved as the two factors."""

    def __init__(self, U: torch.Tensor, V: torch.Tensor):
        super().__init__()
        self.U, self.V = nn.Parameter(U.clone()), nn.Parameter(V.clone())
        self.c = nn.Parameter(U.new_zeros(U.shape[1]))

    def forward(self, w):
        return (self.U @ self.V).reshape(w.shape)


class FactorBias(nn.Module):
    """Parametrization of the bias ``b -> b + U c`` of a :class:`Factors` layer."""

    def __init__(self, factors: Factors):
        super().__init__()
        self.factors = factors

    def forward(self, b):
        return b + self.factors.U @ self.factors.c


def factor_pair(m: nn.Linear | nn.Conv2d) -> list[nn.Module]:
    """The two layers (``V`` with bias ``c``, then ``U`` with the layer's bias) a factored ``m`` is
    saved as; a conv becomes a conv with ``r`` channels and a 1x1 conv."""
    f = m.parametrizations.weight[0]
    r = f.U.shape[1]
    if isinstance(m, nn.Linear):
        a, b = nn.Linear(m.in_features, r), nn.Linear(r, m.out_features)
    else:
        a = nn.Conv2d(m.in_channels, r, m.kernel_size, m.stride, m.padding)
        b = nn.Conv2d(r, m.out_channels, 1)
    with torch.no_grad():
        a.weight.copy_(f.V.reshape(a.weight.shape))
        a.bias.copy_(f.c)
        b.weight.copy_(f.U.reshape(b.weight.shape))
        b.bias.copy_(m.parametrizations.bias.original)
    return [a.to(f.U.device), b.to(f.U.device)]


@register
class LowRank(Sparsifier):
    name = "lowrank"
    Options = LowRankOptions

    def run(self, trainer, model):
        cfg, o = trainer.cfg, self.opt
        trainer.fit("pretrain", model, epochs_of(o.pretrain_frac, cfg.epochs))
        with timed(trainer, "rank"):
            self.factorize(trainer, model)
        trainer.fit("finetune", model, epochs_of(o.finetune_frac, cfg.epochs), ramp=False)
        return nn.Sequential(*[f for m in model for f in (factor_pair(m) if m in prunable(model) else [m])])

    def factorize(self, trainer, model: nn.Sequential) -> None:
        """Choose the components and parametrize every layer by its factors (:class:`Factors`)."""
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
        for m, (U, S, Vh), keep in zip(layers, svds, choose_components(scores, costs, budget)):
            root = S[keep].sqrt()
            factors = Factors(U[:, keep] * root, root[:, None] * Vh[keep])
            parametrize.register_parametrization(m, "weight", factors)
            parametrize.register_parametrization(m, "bias", FactorBias(factors))
