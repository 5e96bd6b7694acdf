"""``stability-prune``: pruning for certified robustness through neuron stability (Li et al.,
"Can pruning improve certified robustness of neural networks?", TMLR 2023).

Li et al. find that pruning helps complete verification mainly by making ReLU neurons stable
(pre-activation bounds that do not straddle zero: fewer relaxations, fewer BaB splits), and prune
with a stability loss added to the objective. Here: dense certified training (phase
``pretrain``), global magnitude pruning to the target (phase ``prune``) and certified
fine-tuning (phase ``finetune``), both training phases with the ReLU-stability loss of Xiao et
al. 2019 (ICLR, "Training for faster adversarial robustness verification via inducing ReLU
stability") on the IBP pre-activation bounds ``[l, u]`` of the step's batch at its eps:
``rs_lambda * mean(-tanh(1 + l * u))``, lowest when every neuron is stable. Cost:
``pretrain_frac + finetune_frac`` runs (2x ``verisparse`` by default) plus one IBP pass per step.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vsbench.bounds.ibp import ibp_bounds
from vsbench.train.sparsity import magnitude_masks

from . import register
from .base import Sparsifier
from .common import extra_loss, timed
from .hydra import epochs_of


class StabilityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rs_lambda: float = Field(0.1, ge=0.0, description="weight of the ReLU-stability loss")
    pretrain_frac: float = Field(1.0, gt=0.0, description="dense training epochs / cfg.epochs")
    finetune_frac: float = Field(1.0, gt=0.0, description="fine-tuning epochs / cfg.epochs")
    scope: Literal["global", "layer"] = "global"


def stability_loss(graph, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``mean(-tanh(1 + l * u))`` over the IBP bounds of every ReLU input (0 at eps 0)."""
    if eps == 0:
        return x.new_zeros(())
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    terms = [-torch.tanh(1 + l * u).mean() for l, u in ibp_bounds(graph, lo, hi)[:-1]]
    return sum(terms) / max(1, len(terms))


@register
class StabilityPrune(Sparsifier):
    name = "stability-prune"
    Options = StabilityOptions

    def run(self, trainer, model):
        cfg, o = trainer.cfg, self.opt

        def rs(model, graph, x, eps):
            return o.rs_lambda * stability_loss(graph, x, eps)

        with extra_loss(trainer, "rs_loss", rs):
            trainer.fit("pretrain", model, epochs_of(o.pretrain_frac, cfg.epochs))
            with timed(trainer, "prune"):
                magnitude_masks(model, cfg.sparsity, o.scope)
            trainer.fit("finetune", model, epochs_of(o.finetune_frac, cfg.epochs), ramp=False)
        return self.finalize(model)
