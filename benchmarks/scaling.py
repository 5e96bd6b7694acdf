"""Verification throughput of the Ray runner with 1, 2, ... workers on the same mnistfc instances.

    python benchmarks/scaling.py [--workers 1 2] [--repeat R] [--props prop_0_0.03 ...] [--timeout 60]

Each worker count gets a fresh local Ray with that many CPUs and a fresh out folder; the wall time is
that of ``run_verification`` once each worker process has started and imported the verifier (a long
run pays that once per worker, not per instance), the best of ``--repeat`` runs (worker counts
interleaved, so a burst of other load hits them alike).
Ray sets OMP_NUM_THREADS=1 in each 1-CPU task and the runner calls ``torch.set_num_threads(1)``, so
N workers use N cores. ``busy`` = sum of per-instance verifier seconds / wall: near N when the runner
keeps all N workers fed (a low speedup with a high busy means the cores were shared with other work).
The default instances are 256x2 ones the builtin verifier decides in 1-7 s on a quiet core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray

from vsbench.export.benchmark import read_instances
from vsbench.cluster import init_ray
from vsbench.verify.runner import run_verification

DEFAULT = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks")) / "vnncomp2021-mnistfc"
PROPS = ["prop_0_0.03", "prop_5_0.03", "prop_9_0.03", "prop_13_0.03", "prop_6_0.05", "prop_1_0.05",
         "prop_2_0.05", "prop_4_0.05", "prop_11_0.05", "prop_3_0.05"]


def _warm() -> None:
    """Start a worker process and import the verifier there (torch, onnxruntime, HiGHS)."""
    import vsbench.verify.builtin  # noqa: F401

    time.sleep(1.0)  # hold this worker so that every warm-up task gets a process of its own


def measure(instances, workers: int, timeout: float) -> tuple[float, list[dict]]:
    """Wall seconds and records of one run with ``workers`` CPUs."""
    init_ray(workers)
    try:
        ray.get([ray.remote(num_cpus=1)(_warm).remote() for _ in range(workers)])
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            records = run_verification(instances, "builtin", out, workers=workers, timeout_cap=timeout)
            return time.perf_counter() - start, records
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", type=Path, default=DEFAULT)
    ap.add_argument("--net", default="mnist-net_256x2.onnx")
    ap.add_argument("--props", nargs="+", default=PROPS)
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per worker count; the fastest is shown")
    args = ap.parse_args()

    by_name = {i.vnnlib.stem: i for i in read_instances(args.benchmarks) if i.onnx.name == args.net}
    instances = [by_name[p] for p in args.props]
    print(f"{len(instances)} instances of {args.net}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'workers':>7} {'wall s':>8} {'inst/s':>7} {'speedup':>7} {'busy':>5}  statuses")
    runs = {w: [] for w in args.workers}
    for _ in range(args.repeat):
        for w in args.workers:
            runs[w].append(measure(instances, w, args.timeout))
    base = None
    for w in args.workers:
        wall, records = min(runs[w], key=lambda run: run[0])
        base = base or wall  # speedup relative to the first worker count
        busy = sum(r["time_s"] for r in records) / wall  # instances in flight on average: w when no worker idles
        statuses = [r["status"] for r in records]
        counts = " ".join(f"{s}={statuses.count(s)}" for s in sorted(set(statuses)))
        every = " ".join(f"{run[0]:.1f}" for run in runs[w])
        print(f"{w:>7} {wall:>8.1f} {len(instances) / wall:>7.3f} {base / wall:>6.2f}x {busy:>5.2f}  {counts}"
              f"  (walls: {every})")
    print(f"load average {os.getloadavg()[0]:.2f} at end (1-minute; the machine has {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
