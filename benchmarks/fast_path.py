"""The batched fast path on many properties of one trained model: decided counts per stage, wall
time, median amortised time per property, peak memory.

    python benchmarks/fast_path.py --model models/RUN/cnn-small_dense_s0_seed0 --properties 1000 --eps 0.3 --workers 2
    python benchmarks/fast_path.py --benchmark DIR            # an exported VNN-COMP folder instead

``--model`` exports the checkpoint and ``--properties`` MNIST test images (pixel scale, L-inf
``--eps``) to a VNN-COMP folder under ``--out`` first (not timed). The instances are split evenly
over ``--workers`` processes, one torch thread each, each running
:func:`vsbench.verify.fastpath.fast_path` on its share (the model is read once per process).
What stays open would go to the per-instance verifier; it is counted, not run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _share(job):
    import torch

    from vsbench.spec.vnnlib import read_vnnlib
    from vsbench.verify.config import make_config
    from vsbench.verify.fastpath import fast_path

    instances, options = job
    torch.set_num_threads(1)
    t0 = time.monotonic()
    props = {str(i.vnnlib): read_vnnlib(i.vnnlib) for i in instances}
    read_s = time.monotonic() - t0
    verdicts = fast_path(instances, make_config(options), read=lambda path: props[str(path)])
    wall = time.monotonic() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {k: (v.status, v.stage, v.time_s) for k, v in verdicts.items()}, wall, peak_mb, read_s


def _export(model_dir: Path, n: int, eps: float, out: Path):
    from vsbench.data import load_dataset
    from vsbench.export.benchmark import choose_indices, write_benchmark
    from vsbench.train.checkpoint import load_checkpoint

    model, manifest = load_checkpoint(model_dir)
    images, labels = load_dataset(manifest.get("config", {}).get("dataset", "mnist"), "test")
    return write_benchmark(out, {model_dir.name: (model, tuple(manifest["in_shape"]))}, images, labels,
                           choose_indices(len(labels), n, 0), eps, 60)


def main() -> None:
    from vsbench.export.benchmark import read_instances
    from vsbench.verify.config import parse_options

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="a trained model folder (checkpoint.pt + manifest.json)")
    src.add_argument("--benchmark", type=Path, help="an exported VNN-COMP folder (one model)")
    ap.add_argument("--properties", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=None, help="where --model's benchmark folder goes (default: a temp dir)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--verifier-option", action="append", default=[], help="KEY=VALUE VerifierConfig setting")
    args = ap.parse_args()

    if args.model:
        out = args.out or Path(tempfile.mkdtemp(prefix="vsbench-fastpath-")) / "bench"
        instances = _export(args.model, args.properties, args.eps, out)
        print(f"exported {len(instances)} instances (of {args.properties} images; misclassified ones have none) to {out}")
    else:
        instances = read_instances(args.benchmark)
    options = parse_options(args.verifier_option)
    shares = [instances[i:: args.workers] for i in range(args.workers)]
    t0 = time.monotonic()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_share, [(s, options) for s in shares if s]))
    wall = time.monotonic() - t0
    decided = {k: v for r, *_ in results for k, v in r.items()}
    stages = Counter((status, stage) for status, stage, _ in decided.values())
    times = [t for _, _, t in decided.values()]

    print(f"\n{'stage':10} {'sat':>5} {'unsat':>6}")
    for stage in ("attack", "ibp", "crown", "alpha"):
        print(f"{stage:10} {stages[('sat', stage)]:>5} {stages[('unsat', stage)]:>6}")
    print(f"\ninstances {len(instances)}  decided {len(decided)}  open (to per-instance BaB) {len(instances) - len(decided)}")
    print(f"wall {wall:.1f} s on {args.workers} workers (slowest share {max(r[1] for r in results):.1f} s, of which "
          f"{max(r[3] for r in results):.1f} s reading its VNN-LIB files; process start and model read included)")
    if times:
        print(f"per decided property (amortised batch time): median {statistics.median(times):.4f} s, "
              f"mean {statistics.mean(times):.4f} s")
    print(f"peak memory per worker {max(r[2] for r in results):.0f} MB")


if __name__ == "__main__":
    main()
