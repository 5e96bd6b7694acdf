"""``verisparse`` (VeriSparse / SparseVLR): sparse-from-scratch certified training.

Start from a random sparse net at the target sparsity (per-layer density ERK or uniform). Every
``delta_t`` steps, per layer, drop the ``f`` fraction of active weights with the smallest
magnitude and regrow as many inactive ones where the certified-loss gradient is largest (RigL
style, new weights start at 0). ``f`` decays from ``alpha`` to 0 by a cosine; updates stop after
``stop_frac`` of the training steps. The active count never changes, so the net is never dense.
One run of ``cfg.epochs`` (the whole cost: no pretraining, no fine-tuning).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vsbench.train.sparsity import get_mask, layer_densities, prunable, random_masks, raw_weight

from . import register
from .base import Sparsifier


class VeriSparseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    density: Literal["erk", "uniform"] = "erk"
    delta_t: int = Field(50, ge=1, description="steps between drop / regrow updates")
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="initial drop fraction")
    stop_frac: float = Field(0.75, ge=0.0, le=1.0, description="no updates after this fraction of steps")
    grow: Literal["gradient", "random"] = "gradient"


def drop_fraction(step: int, total: int, alpha: float, stop_frac: float) -> float:
    """Cosine-decayed update fraction; 0 once ``step > stop_frac * total``."""
    end = stop_frac * total
    if step > end or end <= 0:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / end))


def update_fraction(opt, st) -> float:
    """The fraction to drop and regrow at this step: 0 off the ``delta_t`` grid and after ``stop_frac``."""
    if st.step % opt.delta_t:
        return 0.0
    return drop_fraction(st.step, st.total_steps, opt.alpha, opt.stop_frac)


def reset_optimizer_state(optimizer, param, where: torch.Tensor) -> None:
    """Zero Adam's moments of ``param`` at ``where`` (weights that just changed topology)."""
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][where] = 0


@register
class VeriSparse(Sparsifier):
    name = "verisparse"
    Options = VeriSparseOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.trace: list[float] = []  # overall weight density after init and every update

    def init_masks(self, model, cfg) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        random_masks(model, layer_densities(model, cfg.sparsity, self.opt.density), gen)
        for m in prunable(model):
            raw_weight(m).data.mul_(get_mask(m))
        self._record(model)

    def _record(self, model) -> None:
        layers = prunable(model)
        self.trace.append(sum(float(get_mask(m).sum()) for m in layers) / sum(m.weight.numel() for m in layers))

    def after_step(self, model, st) -> None:
        frac = update_fraction(self.opt, st)
        if frac <= 0:
            return
        grads = st.weight_grads() if self.opt.grow == "gradient" else [None] * len(prunable(model))
        with torch.no_grad():
            for m, g in zip(prunable(model), grads):
                mask = get_mask(m)
                active = mask.bool()
                k = min(int(frac * int(active.sum())), int((~active).sum()))
                if k == 0:
                    continue
                magnitude = torch.where(active, m.weight.abs(), torch.full_like(mask, math.inf))
                drop = torch.topk(magnitude.reshape(-1), k, largest=False).indices
                grow_score = g.abs() if g is not None else torch.rand_like(mask)
                grow_score = torch.where(active, torch.full_like(mask, -math.inf), grow_score)
                grow = torch.topk(grow_score.reshape(-1), k).indices
                flat = mask.view(-1)
                flat[drop], flat[grow] = 0.0, 1.0
                raw = raw_weight(m)
                raw.view(-1)[drop] = 0.0
                raw.view(-1)[grow] = 0.0
                changed = torch.zeros_like(flat, dtype=torch.bool)
                changed[drop], changed[grow] = True, True
                reset_optimizer_state(st.optimizer, raw, changed.view_as(raw))
        self._record(model)
