"""Clean, PGD and bound-verified accuracy of a trained model (batched, no gradients to the weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Clean accuracy in [0, 1]."""
    model.eval()
    dev = next(model.parameters()).device
    correct = sum(int((model(images[s].to(dev)).argmax(1) == labels[s].to(dev)).sum())
                  for s in _batches(len(labels), batch_size))
    return correct / max(1, len(labels))


def pgd_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 20,
                 restarts: int = 1, batch_size: int = 500, seed: int = 0) -> float:
    """Accuracy under an L-inf PGD attack on cross-entropy (random start, step 2.5 eps / steps).

    An upper bound on verified accuracy; inputs stay in [0, 1].
    """
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    robust = 0
    for s in _batches(len(labels), batch_size):
        x, y = images[s].to(dev), labels[s].to(dev)
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        alpha = 2.5 * eps / max(1, steps)
        for _ in range(restarts):
            delta = (torch.rand(x.shape, generator=gen).to(dev) * 2 - 1) * eps
            adv = torch.min(torch.max(x + delta, lo), hi)
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), y)
                (grad,) = torch.autograd.grad(loss, adv)
                adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), lo), hi)
            with torch.no_grad():
                ok &= model(adv).argmax(1) == y
        robust += int(ok.sum())
    return robust / max(1, len(labels))


@torch.no_grad()
def verified_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                      bound: str = "ibp", batch_size: int = 500) -> float:
    """Fraction certified by IBP (``ibp``) or CROWN-IBP (``crown-ibp``): a sound lower bound on
    verified accuracy (incomplete verification)."""
    from vsbench.bounds.graph import from_torch
    from vsbench.train.loop import certified, margin_bounds

    model.eval()
    dev = next(model.parameters()).device
    graph = from_torch(model, tuple(images.shape[1:]))
    n_classes = graph.n_out
    ok = 0
    for s in _batches(len(labels), batch_size):
        x, y = images[s].to(dev), labels[s].to(dev)
        lb, _ = margin_bounds(graph, x, y, eps, n_classes, 1.0 if bound == "crown-ibp" else 0.0)
        ok += int(certified(lb, y).sum())
    return ok / max(1, len(labels))
