"""Microseconds per product of a dense vs a CSR weight, the numbers behind SPARSE_MAX_DENSITY.

    taskset -c 1 python benchmarks/sparse_kernels.py [--batch 128] [--shapes 100x784 100x100]

For each layer shape and density: ``x @ W.T`` dense vs CSR (``S @ x.T`` with ``x`` stored
feature-major, as training keeps it), and the weight gradient, dense ``g.T @ x`` vs only at the
active positions (``torch.sparse.sampled_addmm``). Median of 300 runs, one torch thread.
"""

from __future__ import annotations

import argparse
import time

import torch


def median_us(f, n: int = 300) -> float:
    for _ in range(20):
        f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--shapes", nargs="+", default=["100x784", "100x100"])
    ap.add_argument("--densities", nargs="+", type=float, default=[0.455, 0.2, 0.1, 0.0845, 0.015, 0.0084])
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"{'shape':>8} {'density':>8} {'fwd dense':>10} {'fwd csr':>8} {'grad dense':>11} {'grad sampled':>13}")
    for shape in args.shapes:
        n_out, n_in = map(int, shape.split("x"))
        for d in args.densities:
            w = torch.randn(n_out, n_in) * (torch.rand(n_out, n_in) < d)
            s = w.to_sparse_csr()
            x = torch.randn(n_in, args.batch).T  # feature-major (B, n_in)
            g = torch.randn(args.batch, n_out)
            row = [median_us(lambda: x @ w.T), median_us(lambda: s @ x.T),
                   median_us(lambda: g.T @ x), median_us(lambda: torch.sparse.sampled_addmm(s, g.T, x, beta=0))]
            print(f"{shape:>8} {d:>8} {row[0]:>10.0f} {row[1]:>8.0f} {row[2]:>11.0f} {row[3]:>13.0f}")


if __name__ == "__main__":
    main()
