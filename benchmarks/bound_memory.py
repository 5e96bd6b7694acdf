"""Time and peak memory of one DAG bound computation (intermediate CROWN bounds, then CROWN and
alpha-CROWN on the margins) for a named architecture, as the verifier's DAG path runs it.

    python benchmarks/bound_memory.py --arch cnn-medium --dataset mnist --eps 0.1 [--ibp-init]

The net has its initial weights (``--ibp-init``: the IBP initialisation certified training starts
from); convolutions stay convolutions, nothing is densified. Peak memory is the process's maximum
resident set size.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cnn-medium")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--ibp-init", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from vsbench.bounds import dag_bounds
    from vsbench.bounds.dag import Dag
    from vsbench.bounds.graph import from_torch
    from vsbench.data import get_dataset_info
    from vsbench.nets import build_net, ibp_init_

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = get_dataset_info(args.dataset)
    model = build_net(args.arch, info).double().eval()
    if args.ibp_init:
        ibp_init_(model)
    dag = Dag.from_chain(from_torch(model, info.in_shape).to(torch.float64))
    x = torch.rand(1, dag.n_in, dtype=torch.float64)
    lo, hi = (x - args.eps).clamp(0, 1), (x + args.eps).clamp(0, 1)
    label = int(dag.forward(x).argmax())
    C = torch.eye(dag.n_out, dtype=torch.float64)[label] - torch.eye(dag.n_out, dtype=torch.float64)
    C = C[[j for j in range(dag.n_out) if j != label]][None]

    t0 = time.perf_counter()
    bounds = dag_bounds.intermediate_bounds(dag, lo, hi)
    t1 = time.perf_counter()
    crown = dag_bounds.backward(dag, lo, hi, C, bounds)
    t2 = time.perf_counter()
    alpha, _ = dag_bounds.alpha_spec(dag, lo, hi, C, bounds, iters=20)
    t3 = time.perf_counter()
    relu_in = [dag.nodes[i].inputs[0] for i, n in enumerate(dag.nodes) if type(n.op).__name__ == "Relu"]
    unstable = [int(((bounds[j][0] < 0) & (bounds[j][1] > 0)).sum()) for j in relu_in]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.arch} eps {args.eps}: unstable {unstable}")
    print(f"intermediate {t1 - t0:.2f} s, crown {t2 - t1:.3f} s, alpha (20 it) {t3 - t2:.2f} s, "
          f"min margin bound crown {crown.min():.3f} alpha {alpha.min():.3f}, peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
