"""``prune-after``: dense certified training -> magnitude pruning (global or per layer; one shot
or ``rounds`` rounds, sparsity rising geometrically) -> certified fine-tuning after each round.

Epochs per phase are fractions of ``cfg.epochs`` (fine-tuning split evenly across rounds). The
defaults, a full dense run then one shot and as long a certified fine-tuning at the full eps, are
the least-weight-magnitude baseline of HYDRA (Sehwag et al. 2020; inspire-group/hydra README).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vsbench.train.sparsity import magnitude_masks

from . import register
from .base import Sparsifier
from .hydra import epochs_of


class PruneAfterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pretrain_frac: float = Field(1.0, gt=0.0, description="dense training epochs / cfg.epochs")
    finetune_frac: float = Field(1.0, gt=0.0, description="total fine-tuning epochs / cfg.epochs")
    rounds: int = Field(1, ge=1)
    scope: Literal["global", "layer"] = "global"


@register
class PruneAfter(Sparsifier):
    name = "prune-after"
    Options = PruneAfterOptions

    def run(self, trainer, model):
        cfg, o = trainer.cfg, self.opt
        model = trainer.pretrain(model, epochs_of(o.pretrain_frac, cfg.epochs))
        per_round = max(1, round(o.finetune_frac * cfg.epochs / o.rounds))
        for r in range(1, o.rounds + 1):
            start = time.perf_counter()
            magnitude_masks(model, 1.0 - (1.0 - cfg.sparsity) ** (r / o.rounds), o.scope)
            trainer.phases["prune"] = trainer.phases.get("prune", 0.0) + time.perf_counter() - start
            trainer.fit("finetune", model, per_round, ramp=False)
        return self.finalize(model)
