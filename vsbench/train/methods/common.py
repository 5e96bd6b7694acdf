"""Helpers the zoo's methods share: timing one-off steps as a phase, the certified loss on a few
fixed batches (for sensitivity scores), extra loss terms, and weight rewinding."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from torch import nn

from vsbench.train.sparsity import raw_weight


@contextlib.contextmanager
def timed(trainer, phase: str):
    """Add the block's wall time to ``trainer.phases[phase]`` (pruning, scoring, factorising)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        trainer.phases[phase] = trainer.phases.get(phase, 0.0) + time.perf_counter() - start


def scoring_batches(trainer, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training batches drawn with their own generator (seed + 1), so scoring leaves the
    training order as it is."""
    gen = torch.Generator().manual_seed(trainer.cfg.seed + 1)
    perm = torch.randperm(len(trainer.labels), generator=gen)[: n * trainer.cfg.batch_size]
    return [(trainer.images[i], trainer.labels[i]) for i in perm.split(trainer.cfg.batch_size)]


def certified_loss(trainer, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """``(loss, graph)``: the certified loss at the end of the schedule (``train_eps``, the end
    values of kappa and beta), the objective the methods' scores are sensitivities of."""
    c = trainer.cfg
    loss, _, graph = trainer.loss(model, x, y, c.eps_train, c.kappa_end, c.beta_end, dense=True)
    return loss, graph


@contextlib.contextmanager
def extra_loss(trainer, name: str, term: Callable):
    """Inside the block every step's loss of ``trainer`` adds ``term(model, graph, x, eps)`` (a
    scalar tensor, logged in the history under ``name``)."""
    base = trainer.loss

    def loss(model, x, y, eps, kappa, beta, dense=False):
        value, stats, graph = base(model, x, y, eps, kappa, beta, dense)
        extra = term(model, graph, x, eps)
        stats[name] = float(extra.detach())
        return value + extra, stats, graph

    trainer.loss = loss
    try:
        yield
    finally:
        del trainer.loss  # back to the class's method


def snapshot(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Copies of every parameter and buffer, by module, for :func:`rewind`."""
    return [(m, name, t.detach().clone()) for m in model.modules()
            for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]]


@torch.no_grad()
def rewind(saved: list[tuple[nn.Module, str, torch.Tensor]]) -> None:
    """Put the :func:`snapshot` values back (behind any mask parametrization installed since)."""
    for m, name, value in saved:
        raw_weight(m, name).copy_(value)
