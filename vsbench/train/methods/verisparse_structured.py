"""``verisparse-structured``: VeriSparse at the level of neurons (Linear) and channels (Conv2d).

Hidden layers start with a random set of units, the keep fraction chosen so the compacted net has
``1 - sparsity`` of the dense weights. Every ``delta_t`` steps, per hidden layer, the active units
with the smallest incoming-weight norm are dropped and as many inactive units regrown where the
certified-loss gradient norm of their incoming weights is largest (re-initialised like a fresh
layer). Updates decay by a cosine and stop at ``stop_frac``; the final model is compacted.

The unit budget is what limits it at high sparsity: on mlp-2x100, 0.9 keeps 11 and 0.99 one
neuron per hidden layer, nets too narrow for certified training at MNIST eps 0.3 whatever the
sparsifier (measured: static random units and other regrowth inits did no better).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vsbench.train.sparsity import compact, get_mask, prunable, raw_weight, set_unit_mask, structured_keep, unit_mask

from . import register
from .verisparse import DropRegrow, reset_optimizer_state, update_fraction


class StructuredOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delta_t: int = Field(50, ge=1)
    alpha: float = Field(0.3, ge=0.0, le=1.0)
    stop_frac: float = Field(0.75, ge=0.0, le=1.0)
    grow: Literal["gradient", "random"] = "gradient"


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


@register
class VeriSparseStructured(DropRegrow):
    name = "verisparse-structured"
    Options = StructuredOptions

    def run(self, trainer, model):
        self.in_shape = trainer.in_shape
        return super().run(trainer, model)

    def init_masks(self, model, cfg) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        for m, k in zip(prunable(model)[:-1], structured_keep(model, cfg.sparsity)):
            keep = torch.zeros(m.weight.shape[0])
            keep[torch.randperm(len(keep), generator=gen)[:k]] = 1.0
            set_unit_mask(m, keep)
            raw_weight(m).data.mul_(get_mask(m))
            raw_weight(m, "bias").data.mul_(get_mask(m, "bias"))

    def after_step(self, model, st) -> None:
        frac = update_fraction(self.opt, st.step, st.total_steps)
        if frac <= 0:
            return
        layers = prunable(model)
        grads = st.weight_grads() if self.opt.grow == "gradient" else [None] * len(layers)
        with torch.no_grad():
            for m, g in zip(layers[:-1], grads[:-1]):
                keep = unit_mask(m)
                active = keep.bool()
                k = min(int(frac * int(active.sum())), int((~active).sum()))
                if k == 0:
                    continue
                norm = _rows(m.weight).norm(dim=1)
                drop = torch.topk(torch.where(active, norm, torch.full_like(norm, math.inf)), k, largest=False).indices
                score = _rows(g).norm(dim=1) if g is not None else torch.zeros_like(norm)
                score = score + 1e-12 * torch.rand_like(score)  # random tie-break
                grow = torch.topk(torch.where(active, torch.full_like(norm, -math.inf), score), k).indices
                new = keep.clone()
                new[drop], new[grow] = 0.0, 1.0
                set_unit_mask(m, new)
                w, b = raw_weight(m), raw_weight(m, "bias")
                bound = 1.0 / math.sqrt(_rows(w).shape[1])
                w[drop], b[drop] = 0.0, 0.0
                w[grow] = torch.empty_like(w[grow]).uniform_(-bound, bound)
                b[grow] = 0.0
                changed = torch.zeros_like(new, dtype=torch.bool)
                changed[drop], changed[grow] = True, True
                reset_optimizer_state(st.optimizer, w, changed)
                reset_optimizer_state(st.optimizer, b, changed)

    def finalize(self, model):
        return compact(model, self.in_shape)
