"""``linearity-graft`` (Chen et al. 2022, "Linearity grafting: relaxed neuron pruning helps
certifiable robustness", ICML): replace the least significant unstable ReLUs by learned linear
functions and fine-tune under the certified loss.

Dense certified training (phase ``pretrain``). Then (phase ``graft``) every hidden neuron gets
its IBP pre-activation bounds at ``train_eps`` on ``score_batches`` batches; the neurons
unstable on some input (``l < 0 < u``) are grafted first, the least significant (smallest mean
``|pre-activation|`` on the clean images) first, then, if the target asks for more, the stable
ones the same way. A grafted neuron computes ``slope * x + intercept``, started at the line
halfway between the chord of the ReLU over its mean bounds and the parallel tangent, and both
are trained with the weights in certified fine-tuning (phase ``finetune``). Its relaxation is
exact, so bounds get tighter and verification has fewer neurons to split.

"Sparsity" for ``linearity-graft`` is the fraction of hidden ReLU neurons grafted (relaxed
neuron pruning); the weights stay dense. The model keeps :class:`vsbench.nets.GraftReLU`
layers, exported as ``Relu``, ``Mul`` and ``Add`` nodes (the ReLU branch masked, plus the
linear branch), which verifiers that read such graphs handle without any custom operator.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vsbench.bounds.graph import from_torch
from vsbench.bounds.ibp import ibp_bounds
from vsbench.nets import GraftReLU

from . import register
from .base import Sparsifier
from .common import scoring_batches, timed
from .hydra import epochs_of


class GraftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pretrain_frac: float = Field(1.0, gt=0.0, description="dense training epochs / cfg.epochs")
    finetune_frac: float = Field(1.0, gt=0.0, description="fine-tuning epochs / cfg.epochs")
    score_batches: int = Field(4, ge=1, description="batches the neuron bounds are taken over")


@torch.no_grad()
def neuron_statistics(model: nn.Sequential, batches, eps: float, in_shape) -> list[dict]:
    """Per ReLU layer (flat): how often each neuron is unstable, its mean IBP bounds and its mean
    clean |pre-activation|, over ``batches`` at radius ``eps``."""
    was_training = model.training
    model.eval()
    graph = from_torch(model, in_shape)
    stats = None
    for x, _ in batches:
        bounds = ibp_bounds(graph, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))[:-1]
        clean = ibp_bounds(graph, x, x)[:-1]
        rows = [{"unstable": ((l < 0) & (u > 0)).float().sum(0), "l": l.sum(0), "u": u.sum(0),
                 "size": c[0].abs().sum(0)} for (l, u), c in zip(bounds, clean)]
        stats = rows if stats is None else [{k: a[k] + b[k] for k in a} for a, b in zip(stats, rows)]
    n = sum(len(x) for x, _ in batches)
    model.train(was_training)
    return [{k: v / n for k, v in row.items()} for row in stats]


def graft_order(stats: list[dict]) -> list[tuple[int, int]]:
    """``(layer, neuron)`` in grafting order: unstable before stable, least significant first."""
    keys = [(float(row["unstable"][j] == 0), float(row["size"][j]), i, j)
            for i, row in enumerate(stats) for j in range(len(row["size"]))]
    return [(i, j) for *_, i, j in sorted(keys)]


def initial_line(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron, the line halfway between the ReLU's chord over ``[l, u]`` and its parallel
    tangent (``(0, 0)`` if dead, ``(1, 0)`` if active)."""
    slope = torch.where(u <= 0, 0.0, torch.where(l >= 0, 1.0, u / (u - l).clamp(min=1e-12)))
    intercept = torch.where((l < 0) & (u > 0), -slope * l / 2, 0.0)
    return slope, intercept


@register
class LinearityGraft(Sparsifier):
    name = "linearity-graft"
    Options = GraftOptions

    def run(self, trainer, model):
        cfg, o = trainer.cfg, self.opt
        trainer.fit("pretrain", model, epochs_of(o.pretrain_frac, cfg.epochs))
        with timed(trainer, "graft"):
            model = self.graft(trainer, model)
        trainer.fit("finetune", model, epochs_of(o.finetune_frac, cfg.epochs), ramp=False)
        return model

    def graft(self, trainer, model: nn.Sequential) -> nn.Sequential:
        batches = scoring_batches(trainer, self.opt.score_batches)
        stats = neuron_statistics(model, batches, trainer.cfg.eps_train, trainer.in_shape)
        order = graft_order(stats)
        chosen = order[: round(trainer.cfg.sparsity * len(order))]
        mods, shapes, x = [], [], torch.zeros(1, *trainer.in_shape, device=trainer.device)
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.ReLU):
                    shapes.append(tuple(x.shape[1:]))
                x = m(x)
        grafts = [GraftReLU(s).to(trainer.device) for s in shapes]
        with torch.no_grad():
            for g, row in zip(grafts, stats):
                slope, intercept = initial_line(row["l"], row["u"])
                g.slope.copy_(slope.reshape(g.slope.shape))
                g.intercept.copy_(intercept.reshape(g.intercept.shape))
            for i, j in chosen:
                grafts[i].keep.view(-1)[j] = 0.0
        it = iter(grafts)
        for m in model:
            mods.append(next(it) if isinstance(m, nn.ReLU) else m)
        return nn.Sequential(*mods)
