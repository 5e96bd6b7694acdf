"""``verisparse`` (VeriSparse / SparseVLR): sparse-from-scratch certified training.

Start from a random sparse net at the target sparsity (per-layer density ERK or uniform). Every
``delta_t`` steps, per layer, drop the ``f`` fraction of active weights with the smallest
magnitude and regrow as many inactive ones where the certified-loss gradient is largest (RigL
style, new weights start at 0). ``f`` decays from ``alpha`` to 0 by a cosine; updates stop after
``stop_frac`` of the training steps. One run of ``cfg.epochs`` (the whole cost: no pretraining,
no fine-tuning).

The net is never dense: each layer stores only its active weights
(:class:`vsbench.train.sparse.SparseLayer`), so the optimiser state and gradients are sparse, and
sparse enough Linear layers compute with sparse kernels. Only the update steps use the dense
weights, for the dense gradient that regrowth ranks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vsbench.data import get_dataset_info
from vsbench.train.sparse import sparse_layers, to_dense, to_sparse
from vsbench.train.sparsity import get_mask, layer_densities, prunable, random_masks, remove_parametrizations

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


def update_fraction(opt, step: int, total: int) -> float:
    """The fraction to drop and regrow at ``step``: 0 off the ``delta_t`` grid and after ``stop_frac``."""
    if step % opt.delta_t:
        return 0.0
    return drop_fraction(step, total, opt.alpha, opt.stop_frac)


def reset_optimizer_state(optimizer, param, where: torch.Tensor) -> None:
    """Zero Adam's moments of ``param`` at ``where`` (weights that just changed topology)."""
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][where] = 0


class DropRegrow(Sparsifier):
    """Base of the dynamic sparsifiers (options ``delta_t``, ``alpha``, ``stop_frac``, ``grow``):
    the dense weight gradient is kept only on update steps, and only for gradient regrowth."""

    def before_step(self, model, step, total_steps) -> bool:
        return self.opt.grow == "gradient" and update_fraction(self.opt, step, total_steps) > 0


@register
class VeriSparse(DropRegrow):
    name = "verisparse"
    Options = VeriSparseOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.trace: list[float] = []  # overall weight density after init and every update

    def init_masks(self, model, cfg) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        random_masks(model, layer_densities(model, cfg.sparsity, self.opt.density), gen)
        masks = [get_mask(m) for m in prunable(model)]
        to_sparse(remove_parametrizations(model), masks, get_dataset_info(cfg.dataset).in_shape)
        self._record(model)

    def _record(self, model) -> None:
        layers = sparse_layers(model)
        self.trace.append(sum(m.index.numel() for m in layers) / sum(m.numel for m in layers))

    def after_step(self, model, st) -> None:
        frac = update_fraction(self.opt, st.step, st.total_steps)
        if frac <= 0:
            return
        layers = sparse_layers(model)
        grads = st.weight_grads() if self.opt.grow == "gradient" else [None] * len(layers)
        with torch.no_grad():
            for m, g in zip(layers, grads):
                active = torch.zeros(m.numel, dtype=torch.bool, device=m.index.device)
                active[m.index] = True
                k = min(int(frac * m.index.numel()), m.numel - m.index.numel())
                if k == 0:
                    continue
                magnitude = m.values.new_full((m.numel,), math.inf).index_put((m.index,), m.values.abs())
                drop = torch.topk(magnitude, k, largest=False).indices
                grow_score = g.abs().reshape(-1) if g is not None else torch.rand(m.numel, device=active.device)
                grow = torch.topk(grow_score.masked_fill(active, -math.inf), k).indices
                active[drop], active[grow] = False, True
                m.rewire(active.nonzero().squeeze(1), st.optimizer)
        self._record(model)

    def finalize(self, model):
        return super().finalize(to_dense(model))
