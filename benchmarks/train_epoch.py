"""Seconds per training epoch of dense vs VeriSparse on one suite profile, measured in one process.

    taskset -c 1 python benchmarks/train_epoch.py [--suite mnist-eps0.3] [--profile quick] [--repeat 3]

Each round trains one epoch of every configuration in turn (dense, then VeriSparse at each of the
profile's sparsities, each from a fresh net), so load on the machine hits them alike; a one-epoch
phase runs the same warm-up / ramp / full-eps proportions and drop-regrow updates per step as the
full run. Prints the median over rounds and the ratio to dense. Uses one torch thread.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from vsbench.data import get_dataset_info, load_dataset
from vsbench.nets import build_net, ibp_init_
from vsbench.suites import load_suite
from vsbench.train.loop import TrainConfig, Trainer
from vsbench.train.methods import get_method
from vsbench.train.sparse import sparse_layers


def epoch_seconds(cfg: TrainConfig, images, labels) -> tuple[float, str]:
    """Seconds of one epoch and, for sparse layers, which ones used the CSR kernels."""
    torch.manual_seed(cfg.seed)
    model = ibp_init_(build_net(cfg.arch, cfg.dataset)) if cfg.init == "ibp" else build_net(cfg.arch, cfg.dataset)
    method = get_method(cfg.method)()
    method.init_masks(model, cfg)
    trainer = Trainer(cfg, images, labels, get_dataset_info(cfg.dataset).n_classes, torch.device("cpu"))
    trainer.fit("train", model, 1, hooks=method)
    layers = sparse_layers(model)
    kinds = " ".join(f"{m.index.numel() / m.numel:.3f}{'*' if m.sparse_compute else ''}" for m in layers)
    return trainer.phases["train"], kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="mnist-eps0.3")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    prof = suite.profiles[args.profile]
    train = {"train_eps": suite.train_eps or suite.eps, **prof.train}  # as vsbench.pipeline.train_config
    arch = (prof.archs or suite.archs)[0]
    common = dict(dataset=suite.dataset, arch=arch, eps=suite.eps, **train)
    configs = [TrainConfig(method="dense", **common)]
    configs += [TrainConfig(method="verisparse", sparsity=s, **common) for s in prof.sparsity or [0.9]]
    images, labels = load_dataset(suite.dataset, "train", args.data, train.get("n_train"))
    times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    kinds = {}
    for _ in range(args.repeat):
        for i, cfg in enumerate(configs):
            seconds, kinds[i] = epoch_seconds(cfg, images, labels)
            times[i].append(seconds)
    dense = statistics.median(times[0])
    print(f"{'method':<12} {'sparsity':>8} {'s/epoch':>8} {'/dense':>7}  layer densities (* = CSR kernels)")
    for i, cfg in enumerate(configs):
        t = statistics.median(times[i])
        print(f"{cfg.method:<12} {cfg.sparsity:>8} {t:>8.3f} {t / dense:>7.3f}  {kinds[i]}"
              f"   [{' '.join(f'{s:.2f}' for s in times[i])}]")


if __name__ == "__main__":
    main()
