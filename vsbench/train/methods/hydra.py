"""``hydra`` (Sehwag et al. 2020): dense certified pretraining -> learn pruning scores with the
certified loss (weights frozen, top-k mask per layer, straight-through gradients, scores
initialised to sqrt(6 / fan_in) * w / max|w|) -> certified fine-tuning of the weights under the mask.

Epochs per phase are fractions of ``cfg.epochs``. The defaults 1.0 / 0.2 / 1.0 are the released
schedule (inspire-group/hydra: configs/configs.yml ``epochs: 100`` for pretraining and fine-tuning,
README ``--epochs 20`` for pruning); pruning and fine-tuning run at the full eps there
(``--schedule_length 1``), as here (``ramp=False``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import parametrize

from vsbench.train.sparsity import layer_densities, prunable, set_mask

from . import register
from .base import Sparsifier


class HydraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pretrain_frac: float = Field(1.0, gt=0.0, description="dense pretraining epochs / cfg.epochs")
    score_frac: float = Field(0.2, gt=0.0, description="score-learning epochs / cfg.epochs")
    finetune_frac: float = Field(1.0, gt=0.0, description="fine-tuning epochs / cfg.epochs")
    density: Literal["uniform", "erk"] = "uniform"


class _TopK(torch.autograd.Function):
    """Binary mask of the ``k`` largest ``|scores|``; gradient passed straight through."""

    @staticmethod
    def forward(ctx, scores, k):
        mask = torch.zeros_like(scores)
        mask.view(-1)[torch.topk(scores.abs().reshape(-1), k).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class ScoreMask(nn.Module):
    """Parametrization ``w -> w * topk(|scores|)`` with learnable scores."""

    def __init__(self, weight: torch.Tensor, k: int):
        super().__init__()
        fan_in = weight[0].numel()
        init = math.sqrt(6.0 / fan_in) * weight.detach() / weight.detach().abs().max().clamp(min=1e-12)
        self.scores = nn.Parameter(init.clone())
        self.k = k

    def forward(self, w):
        return w * _TopK.apply(self.scores, self.k)

    def mask(self) -> torch.Tensor:
        return _TopK.apply(self.scores.detach(), self.k)


def epochs_of(frac: float, epochs: int) -> int:
    return max(1, round(frac * epochs))


@register
class Hydra(Sparsifier):
    name = "hydra"
    Options = HydraOptions

    def run(self, trainer, model):
        cfg = trainer.cfg
        model = trainer.pretrain(model, epochs_of(self.opt.pretrain_frac, cfg.epochs))
        layers = prunable(model)
        dens = layer_densities(model, cfg.sparsity, self.opt.density)
        for p in model.parameters():
            p.requires_grad_(False)
        scorers = []
        for m, d in zip(layers, dens):
            s = ScoreMask(m.weight, max(1, round(d * m.weight.numel())))
            parametrize.register_parametrization(m, "weight", s)
            scorers.append(s)
        trainer.fit("scores", model, epochs_of(self.opt.score_frac, cfg.epochs),
                    params=[s.scores for s in scorers], ramp=False)
        for m, s in zip(layers, scorers):
            mask = s.mask()
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            set_mask(m, mask)
        for p in model.parameters():
            p.requires_grad_(True)
        trainer.fit("finetune", model, epochs_of(self.opt.finetune_frac, cfg.epochs), ramp=False)
        return self.finalize(model)
