"""``verisparse-structured``: VeriSparse at the level of neurons (Linear) and channels (Conv2d).

Hidden layers start with a random set of units, the keep fraction chosen so the compacted net has
``1 - sparsity`` of the dense weights. Every ``delta_t`` steps, per hidden layer, the active units
of least importance (``importance``: the norm of their incoming weights, or ``bn``: the magnitude
of their BatchNorm scale, on ``-bn`` architectures) are dropped and as many inactive units regrown
where the certified-loss gradient norm of their incoming weights is largest (re-initialised like a
fresh layer, BatchNorm included). Updates decay by a cosine and stop at ``stop_frac``; the final
model is compacted (BatchNorm folded first).

The unit budget is what limits it at high sparsity: on mlp-2x100, 0.9 keeps 11 and 0.99 one
neuron per hidden layer, nets too narrow for certified training at MNIST eps 0.3 whatever the
sparsifier (measured: static random units and other regrowth inits did no better).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vsbench.nets import BN_SUFFIX, fold_batchnorm
from vsbench.train.sparsity import (batchnorm_after, compact, get_mask, prunable, raw_weight, set_unit_mask,
                                    structured_keep, unit_mask)

from . import register
from .verisparse import DropRegrow, reset_optimizer_state, update_fraction


class StructuredOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delta_t: int = Field(50, ge=1)
    alpha: float = Field(0.3, ge=0.0, le=1.0)
    stop_frac: float = Field(0.75, ge=0.0, le=1.0)
    grow: Literal["gradient", "random"] = "gradient"
    importance: Literal["weight", "bn"] = "weight"


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


@register
class VeriSparseStructured(DropRegrow):
    name = "verisparse-structured"
    Options = StructuredOptions

    @classmethod
    def check(cls, cfg) -> None:
        if cls.Options(**cfg.method_options).importance == "bn" and not cfg.arch.endswith(BN_SUFFIX):
            raise ValueError(f"importance 'bn' needs an architecture with BatchNorm ('{cfg.arch}{BN_SUFFIX}')")

    def run(self, trainer, model):
        self.in_shape = trainer.in_shape
        return super().run(trainer, model)

    def init_masks(self, model, cfg) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        self.bns = batchnorm_after(model)
        for m, k in zip(prunable(model)[:-1], structured_keep(model, cfg.sparsity)):
            keep = torch.zeros(m.weight.shape[0])
            keep[torch.randperm(len(keep), generator=gen)[:k]] = 1.0
            set_unit_mask(m, keep, self.bns.get(m))
            for layer in (m, self.bns.get(m)):
                if layer is not None:
                    raw_weight(layer).data.mul_(get_mask(layer))
                    raw_weight(layer, "bias").data.mul_(get_mask(layer, "bias"))

    def _importance(self, m) -> torch.Tensor:
        if self.opt.importance == "bn":
            return self.bns[m].weight.abs()
        return _rows(m.weight).norm(dim=1)

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
                norm = self._importance(m)
                drop = torch.topk(torch.where(active, norm, torch.full_like(norm, math.inf)), k, largest=False).indices
                score = _rows(g).norm(dim=1) if g is not None else torch.zeros_like(norm)
                score = score + 1e-12 * torch.rand_like(score)  # random tie-break
                grow = torch.topk(torch.where(active, torch.full_like(norm, -math.inf), score), k).indices
                new = keep.clone()
                new[drop], new[grow] = 0.0, 1.0
                bn = self.bns.get(m)
                set_unit_mask(m, new, bn)
                w, b = raw_weight(m), raw_weight(m, "bias")
                bound = 1.0 / math.sqrt(_rows(w).shape[1])
                w[drop], b[drop] = 0.0, 0.0
                w[grow] = torch.empty_like(w[grow]).uniform_(-bound, bound)
                b[grow] = 0.0
                changed = torch.zeros_like(new, dtype=torch.bool)
                changed[drop], changed[grow] = True, True
                params = [w, b]
                if bn is not None:  # a fresh BatchNorm unit: scale 1, shift 0, default statistics
                    scale, shift = raw_weight(bn), raw_weight(bn, "bias")
                    scale[drop], shift[drop], scale[grow], shift[grow] = 0.0, 0.0, 1.0, 0.0
                    bn.running_mean[changed], bn.running_var[changed] = 0.0, 1.0
                    params += [scale, shift]
                for p in params:
                    reset_optimizer_state(st.optimizer, p, changed)

    def finalize(self, model):
        return compact(fold_batchnorm(model), self.in_shape)
