"""The one certified-training loop (CROWN-IBP recipe) that every sparsifier runs its phases through.

Loss per batch: ``kappa * CE(f(x), y) + (1 - kappa) * CE(-lb, y)`` where ``lb`` lower-bounds the
margins ``f_y - f_j`` over the L-inf box of radius ``eps`` (clipped to [0, 1]) and is
``beta * CROWN-IBP + (1 - beta) * IBP``. During ``warmup_epochs`` eps is 0 (natural training);
then over ``ramp_epochs`` eps grows linearly to ``train_eps`` while kappa and beta move linearly
from their start to their end values (Zhang et al. 2020).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from vsbench.bounds.graph import AFFINE, Conv, Graph, Linear
from vsbench.bounds.ibp import ibp_bounds, ibp_spec
from vsbench.train.sparse import SparseLinearOp, feature_major, train_graph

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Everything that determines one trained model."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "mnist"
    arch: str = "mlp-2x100"
    method: str = "dense"
    sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    eps: float = Field(0.1, ge=0.0, description="test eps (pixel scale)")
    train_eps: float | None = Field(None, ge=0.0, description="training eps; default: eps")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    lr_decay: Literal["none", "cosine"] = "none"
    n_train: int | None = Field(None, ge=1, description="use the first n training images")
    warmup_epochs: float = Field(0.0, ge=0.0)
    ramp_epochs: float = Field(1.0, ge=0.0)
    kappa_start: float = Field(1.0, ge=0.0, le=1.0)
    kappa_end: float = Field(0.0, ge=0.0, le=1.0)
    beta_start: float = Field(1.0, ge=0.0, le=1.0)
    beta_end: float = Field(0.0, ge=0.0, le=1.0)
    bound: Literal["crown-ibp", "ibp"] = "crown-ibp"
    init: Literal["default", "ibp"] = "default"
    reg_lambda: float = Field(0.0, ge=0.0, description="warm-up regulariser weight (Shi et al. 2021; 0.5 there)")
    reg_tol: float = Field(0.5, gt=0.0)
    grad_clip: float = Field(10.0, gt=0.0)
    eval_test: int = Field(500, ge=0, description="held-out batch: the first N test images, on which clean and "
                           "IBP-verified accuracy are logged after every epoch (monitoring only: nothing is "
                           "selected on them; the table's clean accuracy is over the whole test set)")
    method_options: dict[str, Any] = Field(default_factory=dict)
    device: str = "auto"

    @model_validator(mode="after")
    def _check(self):
        from pydantic import ValidationError

        from vsbench.data import DATASETS
        from vsbench.nets import list_nets
        from vsbench.train.methods import get_method

        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset '{self.dataset}' (known: {', '.join(DATASETS)})")
        if self.arch not in list_nets():
            raise ValueError(f"unknown architecture '{self.arch}' (known: {', '.join(list_nets())})")
        try:
            method = get_method(self.method)
            method.Options(**self.method_options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"method_options for '{self.method}': {where}: {err['msg']}") from None
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        method.check(self)
        return self

    @property
    def eps_train(self) -> float:
        return self.eps if self.train_eps is None else self.train_eps


@dataclass
class TrainResult:
    model: nn.Sequential
    phases: dict[str, float]  # wall seconds per phase
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class Step:
    """What a sparsifier's ``after_step`` hook sees."""

    trainer: "Trainer"
    optimizer: torch.optim.Optimizer
    step: int  # within the phase, from 1
    total_steps: int
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    kappa: float
    beta: float
    weights: list[torch.Tensor]  # the effective Linear / Conv2d weights the step's loss used

    def weight_grads(self) -> list[torch.Tensor]:
        """Gradient of the step's loss (at the weights before the optimiser step) w.r.t. every
        *effective* Linear / Conv2d weight, pruned entries included (what RigL-style regrowth
        ranks); one per layer in forward order. Kept from the step's own backward: no extra pass.
        Empty unless the sparsifier's ``before_step`` asked for it."""
        return [w.grad for w in self.weights]


def spec_matrix(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``C (B, n, n)`` with rows ``e_y - e_j`` (row ``y`` is zero)."""
    eye = torch.eye(n_classes, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def margin_bounds(graph: Graph, x: torch.Tensor, y: torch.Tensor, eps: float, n_classes: int,
                  beta: float = 0.0) -> tuple[torch.Tensor, list | None]:
    """``(lb, relu_bounds)``: lower bounds ``(B, n)`` of ``f_y - f_j`` over the box (IBP, mixed with
    CROWN-IBP by ``beta``) and the IBP intervals of every ReLU input from the same pass (None
    when ``beta == 1``: no IBP pass)."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    C = spec_matrix(y, n_classes)
    lb, relu_bounds = 0.0, None
    if beta < 1:
        last = max(i for i, op in enumerate(graph.ops) if isinstance(op, AFFINE))
        *relu_bounds, (l, u) = ibp_bounds(Graph(graph.ops[:last], graph.in_shape), lo, hi)
        lb = ibp_spec(Graph(graph.ops[last:], (graph.ops[last].n_in,)), l, u, C)
    if beta > 0:
        from vsbench.bounds.crown import crown_ibp_spec

        lb = beta * crown_ibp_spec(graph, lo, hi, C) + (1 - beta) * lb
    return lb, relu_bounds


def warmup_regularizer(graph: Graph, x: torch.Tensor, eps: float, tol: float,
                       relu_bounds: list | None = None) -> torch.Tensor:
    """Shi et al. 2021 warm-up regularisers, averaged over ReLU layers: ``L_tightness`` keeps the
    IBP interval width of each pre-activation from growing past ``1/tol`` times the (normalised)
    input width; ``L_relu`` balances the mean and variance of active vs inactive neurons.
    ``relu_bounds``: the IBP intervals of the ReLU inputs if already computed (:func:`margin_bounds`).

    Both ratios are scale-free, so they use ``u + l`` (twice the centre) and take the four masked
    sums as two matrix-vector products: fewer elementwise passes than the textbook form (~40 % less
    time for this term on one core), the same values up to rounding."""
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    first = graph.ops[0]
    width0 = (first.abs_forward((hi - lo) / 2) if hasattr(first, "abs_forward") else (hi - lo) / 2).mean()
    pre = relu_bounds if relu_bounds is not None else ibp_bounds(graph, lo, hi)[:-1]
    tight = relu_bal = x.new_zeros(())
    for l, u in pre:
        width = (u.mean() - l.mean()) / 2
        tight = tight + F.relu(tol - width0 / width.clamp(min=1e-12)) / tol
        center2 = (u + l).flatten()  # twice the centre
        delta = (center2 - center2.mean()) ** 2
        masks = torch.stack([l.flatten() > 0, u.flatten() < 0]).to(center2.dtype)  # active, inactive
        (c_act, c_inact), (d_act, d_inact) = masks @ center2, masks @ delta
        mean_ratio, var_ratio = c_act / -c_inact, d_act / d_inact
        term = sum(F.relu(tol - torch.min(r, 1 / r.clamp(min=1e-12))) for r in (mean_ratio, var_ratio)) / tol
        if torch.isfinite(term):
            relu_bal = relu_bal + term
    return (tight + relu_bal) / max(1, len(pre))


def certified(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: every margin bound except the label's own (zero) row is positive."""
    return lb.masked_fill(F.one_hot(y, lb.shape[1]).bool(), float("inf")).min(1).values > 0


class Trainer:
    """Runs training phases on one dataset; methods call :meth:`fit` for each of their phases."""

    def __init__(self, cfg: TrainConfig, images, labels, n_classes: int, device: torch.device,
                 progress: Callable[[str, int, int], None] | None = None, heldout=None,
                 on_epoch: Callable[[dict], None] | None = None, pretrained: dict | None = None):
        """``heldout``: ``(images, labels)`` evaluated after every epoch; ``on_epoch`` gets each
        history row; ``pretrained``: ``{"state_dict", "phases", "history"}`` of the dense model
        that :meth:`pretrain` starts from instead of training it again."""
        self.cfg, self.images, self.labels = cfg, images, labels
        self.n_classes, self.device, self.progress = n_classes, device, progress
        self.heldout, self.on_epoch, self.pretrained = heldout, on_epoch, pretrained
        self.in_shape = tuple(images.shape[1:])
        self.phases: dict[str, float] = {}
        self.history: list[dict] = []
        self.generator = torch.Generator().manual_seed(cfg.seed)

    # ------------------------------------------------------------------ loss

    def loss(self, model, x, y, eps: float, kappa: float, beta: float, dense: bool = False):
        """``(loss, stats, graph)``; the graph holds the live (differentiable) weights.

        Sparse layers (:class:`vsbench.train.sparse.SparseLayer`) compute with sparse kernels
        where that pays, unless ``dense`` (the step needs the dense weight gradients)."""
        graph = train_graph(model, self.in_shape, dense)
        if any(isinstance(op, SparseLinearOp) for op in graph.ops):
            x = feature_major(x)
        nat_weighted = eps == 0 or kappa > 0  # else the clean loss is only logged: no backward through it
        with torch.set_grad_enabled(torch.is_grad_enabled() and nat_weighted):
            logits = graph.forward(x)
        nat = F.cross_entropy(logits, y)
        stats = {"nat_loss": float(nat.detach()), "acc": float((logits.argmax(1) == y).float().mean())}
        if eps == 0 or kappa >= 1:
            return nat, stats, graph
        beta = beta if self.cfg.bound == "crown-ibp" else 0.0
        lb, relu_bounds = margin_bounds(graph, x, y, eps, self.n_classes, beta)
        rob = F.cross_entropy(-lb, y)
        stats.update(rob_loss=float(rob.detach()), ver_acc=float(certified(lb.detach(), y).float().mean()))
        loss = kappa * nat + (1 - kappa) * rob
        if self.cfg.reg_lambda > 0 and eps < self.cfg.eps_train:
            reg = warmup_regularizer(graph, x, eps, self.cfg.reg_tol, relu_bounds)
            stats["reg_loss"] = float(reg.detach())
            loss = loss + self.cfg.reg_lambda * (1 - eps / self.cfg.eps_train) * reg
        return loss, stats, graph

    def schedule(self, t: float, scale: float) -> tuple[float, float, float]:
        """``(eps, kappa, beta)`` at epoch ``t`` of a phase whose schedule is scaled by ``scale``."""
        c = self.cfg
        warm, ramp = c.warmup_epochs * scale, c.ramp_epochs * scale
        if t < warm:
            return 0.0, c.kappa_start, c.beta_start
        r = 1.0 if ramp == 0 else min(1.0, (t - warm) / ramp)
        return (c.eps_train * r, c.kappa_start + r * (c.kappa_end - c.kappa_start),
                c.beta_start + r * (c.beta_end - c.beta_start))

    # ------------------------------------------------------------------ fit

    def pretrain(self, model: nn.Module, epochs: int) -> nn.Module:
        """Dense certified pretraining (phase ``pretrain``) for methods that prune a trained net.
        With ``pretrained`` (the suite's dense model of the same arch, seed and schedule), its
        weights are loaded instead and its training time and history are charged to this model."""
        if self.pretrained is None:
            return self.fit("pretrain", model, epochs)
        model.load_state_dict(self.pretrained["state_dict"])
        for _ in range(epochs):  # the data order continues as if this run had trained it
            torch.randperm(len(self.labels), generator=self.generator)
        self.phases["pretrain"] = sum(self.pretrained["phases"].values())
        self.history += [{**row, "phase": "pretrain", "reused": True} for row in self.pretrained["history"]]
        return model.to(self.device)

    @torch.no_grad()
    def monitor(self, model: nn.Module) -> dict[str, float]:
        """Clean and IBP-verified accuracy (at the test eps) on the held-out batch."""
        if self.heldout is None:
            return {}
        x, y = self.heldout
        model.eval()
        graph = train_graph(model, self.in_shape)
        if any(isinstance(op, SparseLinearOp) for op in graph.ops):
            x = feature_major(x)
        clean = graph.forward(x).argmax(1) == y
        lb, _ = margin_bounds(graph, x, y, self.cfg.eps, self.n_classes)
        model.train()
        return {"heldout_clean_acc": float(clean.float().mean()),
                "heldout_ibp_acc": float((clean & certified(lb, y)).float().mean())}

    def fit(self, phase: str, model: nn.Module, epochs: int, hooks=None, params=None, ramp: bool = True):
        """Train ``params`` (default: all trainable parameters) for ``epochs`` epochs.

        ``ramp``: run the warm-up / eps-ramp schedule (scaled by ``epochs / cfg.epochs`` when the
        phase is shorter than a full run); otherwise train at ``train_eps`` with the end values of
        kappa and beta (fine-tuning phases). The wall time of the epochs (steps and hooks; not the
        optimiser set-up, whose first construction in a process imports ``torch._dynamo``, ~1.5 s)
        adds to ``phases[phase]``; each history row has its epoch's seconds.
        """
        c = self.cfg
        model.to(self.device).train()
        params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        # fused: one kernel per step; the default CPU Adam's sqrt is ~6x slower on the zero moments
        # of pruned weights, which made masked training dearer per step than dense
        opt = torch.optim.Adam(params, lr=c.lr, fused=True)
        n = len(self.labels)
        per_epoch = math.ceil(n / c.batch_size)
        total = max(1, epochs * per_epoch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if c.lr_decay == "cosine" else None
        scale = min(1.0, epochs / c.epochs)
        step = 0
        for epoch in range(epochs):
            start = time.perf_counter()
            perm = torch.randperm(n, generator=self.generator)
            sums: dict[str, float] = {}
            for i in range(per_epoch):
                idx = perm[i * c.batch_size:(i + 1) * c.batch_size]
                x, y = self.images[idx].to(self.device), self.labels[idx].to(self.device)
                t = epoch + i / per_epoch
                eps, kappa, beta = self.schedule(t, scale) if ramp else (c.eps_train, c.kappa_end, c.beta_end)
                keep = hooks is not None and hooks.before_step(model, step + 1, total)
                loss, stats, graph = self.loss(model, x, y, eps, kappa, beta, dense=keep)
                weights = [op.weight for op in graph.ops if isinstance(op, (Linear, Conv))] if keep else []
                for w in weights:
                    if w.requires_grad and not w.is_leaf:
                        w.retain_grad()  # masked weights: keep the dense gradient for Step.weight_grads
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
                opt.step()
                if sched:
                    sched.step()
                step += 1
                if hooks is not None:
                    hooks.after_step(model, Step(self, opt, step, total, x, y, eps, kappa, beta, weights))
                for k, v in {"loss": float(loss.detach()), **stats}.items():
                    sums[k] = sums.get(k, 0.0) + v
                if self.progress:
                    self.progress(phase, step, total)
            if hooks is not None:
                hooks.at_epoch_end(model, epoch)
            seconds = time.perf_counter() - start
            self.phases[phase] = self.phases.get(phase, 0.0) + seconds
            row = {"phase": phase, "epoch": epoch, "epochs": epochs, "eps": eps, "lr": opt.param_groups[0]["lr"],
                   "seconds": seconds, **{k: v / per_epoch for k, v in sums.items()}, **self.monitor(model)}
            self.history.append(row)
            log.info("%s", row)
            if self.on_epoch:
                self.on_epoch(row)
        return model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


TRAIN_THREADS = 1  # intra-op threads of every training job: float sums (and so the weights) depend on it


@contextlib.contextmanager
def deterministic():
    """Deterministic kernels and a fixed thread count while training (restored afterwards).

    On CPU this makes training bit-reproducible for a given torch build and CPU instruction set;
    :data:`NOT_DETERMINISTIC` lists what it does not fix (recorded in each model's manifest)."""
    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(flag)


NOT_DETERMINISTIC = ("bits differ across torch versions and across CPU instruction sets (MKL / oneDNN pick "
                     "AVX2 or AVX-512 kernels); on CUDA, cuBLAS needs CUBLAS_WORKSPACE_CONFIG=:4096:8 and some "
                     "kernels have no deterministic version (torch warns)")


def train(cfg: TrainConfig, data_dir=None, progress: Callable[[str, int, int], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, pretrained: dict | None = None) -> TrainResult:
    """Train one model as ``cfg`` says; the method runs its phases through one :class:`Trainer`.
    ``on_epoch`` receives every history row; ``pretrained``: see :class:`Trainer`."""
    with deterministic():
        return _train(cfg, data_dir, progress, on_epoch, pretrained)


def _train(cfg, data_dir, progress, on_epoch, pretrained) -> TrainResult:
    from vsbench.data import get_dataset_info, load_dataset
    from vsbench.nets import build_net, fold_batchnorm, ibp_init_
    from vsbench.train.methods import get_method
    from vsbench.train.sparsity import flops, nonzero_params, nonzero_weights, prunable

    torch.manual_seed(cfg.seed)
    ds = get_dataset_info(cfg.dataset)
    images, labels = load_dataset(cfg.dataset, "train", data_dir, cfg.n_train)
    device = pick_device(cfg.device)
    heldout = None
    if cfg.eval_test:
        tx, ty = load_dataset(cfg.dataset, "test", data_dir, cfg.eval_test)
        heldout = (tx.to(device), ty.to(device))
    model = build_net(cfg.arch, ds).to(device)
    if cfg.init == "ibp":
        ibp_init_(model)
    dense_weights = sum(m.weight.numel() for m in prunable(model))
    method_cls = get_method(cfg.method)
    method = method_cls(method_cls.Options(**cfg.method_options))
    trainer = Trainer(cfg, images.to(device), labels.to(device), ds.n_classes, device, progress,
                      heldout, on_epoch, pretrained)
    model = fold_batchnorm(method.run(trainer, model)).cpu().eval()

    info: dict[str, Any] = {
        "in_shape": list(trainer.in_shape),
        "layer_sizes": [m.weight.shape[0] for m in prunable(model)],
        "target_sparsity": cfg.sparsity,
        "sparsity": 1.0 - nonzero_weights(model) / dense_weights,
        "nonzero_params": nonzero_params(model),
        "flops": flops(model, trainer.in_shape),
        "heldout_n": cfg.eval_test,
        "determinism": {"threads": TRAIN_THREADS, "deterministic_algorithms": True, "device": str(device),
                        "not_fixed": NOT_DETERMINISTIC},
    }
    return TrainResult(model, dict(trainer.phases), trainer.history, info)
