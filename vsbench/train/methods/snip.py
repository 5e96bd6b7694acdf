"""``snip`` (Lee et al. 2019, "SNIP: single-shot network pruning based on connection
sensitivity", ICLR): prune at initialisation, then train the fixed sparse net.

The connection sensitivity of weight ``w`` is ``|dL/dw * w|`` (the gradient of the loss with
respect to a multiplicative mask at 1) on one batch; the ``1 - sparsity`` most sensitive weights
across all layers are kept. Here ``L`` is the certified loss at the end of the schedule
(``train_eps``), so the mask is chosen for certified robustness, and the net then trains under
it for ``cfg.epochs`` (phase ``train``; scoring is phase ``prune``). Cost: one run plus
``batches`` forward / backward passes.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vsbench.train.sparsity import prunable, score_masks

from . import register
from .base import Sparsifier
from .common import certified_loss, scoring_batches, timed


class SnipOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batches: int = Field(1, ge=1, description="batches the sensitivity is summed over (1 in the paper)")
    scope: Literal["global", "layer"] = "global"


@register
class Snip(Sparsifier):
    name = "snip"
    Options = SnipOptions

    def run(self, trainer, model):
        with timed(trainer, "prune"):
            model.to(trainer.device)
            layers = prunable(model)
            scores = [torch.zeros_like(m.weight) for m in layers]
            for x, y in scoring_batches(trainer, self.opt.batches):
                model.zero_grad(set_to_none=True)
                certified_loss(trainer, model, x, y)[0].backward()
                for s, m in zip(scores, layers):
                    s += (m.weight.grad * m.weight).detach().abs()
            model.zero_grad(set_to_none=True)
            score_masks(model, scores, trainer.cfg.sparsity, self.opt.scope)
        trainer.fit("train", model, trainer.cfg.epochs, hooks=self)
        return self.finalize(model)

    def before_step(self, model, step, total_steps) -> bool:
        return False  # the mask is fixed: no dense weight gradients needed
