"""Bound widths and times of vsbench's IBP / CROWN / alpha-CROWN next to auto_LiRPA's, on VNN-COMP 2021
mnistfc and the conv benchmarks (first property of each model; mean width of the output bounds).
Chains of affine layers and ReLUs use the chain engines, other models the DAG engines. Needs auto_LiRPA importable (see
/work/shared/tools/abcrown.md) and onnx2pytorch, i.e. alpha-beta-CROWN's environment; prints a table.
Both engines run in float64 (torch's default dtype too, as auto_LiRPA's alpha-CROWN needs). Usage:
``PYTHONPATH=$AB/alpha-beta-CROWN/auto_LiRPA:. $AB/venv/bin/python benchmarks/bounds_vs_auto_lirpa.py [N_MODELS]``
"""

import os
import sys
import time
from pathlib import Path

import torch

from vsbench.bounds import dag_bounds
from vsbench.bounds.alpha import alpha_bounds
from vsbench.bounds.crown import crown_bounds
from vsbench.bounds.dag import Dag
from vsbench.bounds.ibp import ibp_bounds
from vsbench.bounds.onnx_ops import load_onnx
from vsbench.export.benchmark import read_instances
from vsbench.onnx_io import session
from vsbench.spec.vnnlib import read_vnnlib

OURS = {"IBP": ibp_bounds, "CROWN": crown_bounds, "alpha-CROWN": lambda g, lo, hi: alpha_bounds(g, lo, hi, iters=20)}


def ours_dag(dag: Dag, lo, hi, method):
    """Output bounds from the DAG engines (models that are not chains): IBP, or CROWN / alpha-CROWN (20
    steps) of the rows +I and -I over :func:`dag_bounds.intermediate_bounds`."""
    if method == "IBP":
        l, u = dag_bounds.ibp(dag, lo, hi)[dag.output]
        return l.reshape(1, -1), u.reshape(1, -1)
    n = dag.n_out
    C = torch.cat([torch.eye(n), -torch.eye(n)]).to(torch.float64)[None]
    bounds = dag_bounds.intermediate_bounds(dag, lo, hi)
    if method == "CROWN":
        lb = dag_bounds.crown_spec(dag, lo, hi, C, bounds)
    else:
        lb = dag_bounds.alpha_spec(dag, lo, hi, C, bounds, iters=20)[0]
    return lb[:, :n].detach(), -lb[:, n:].detach()


def theirs(onnx_path, lo, hi, method):
    import onnx
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm
    from onnx2pytorch import ConvertModel

    model = ConvertModel(onnx.load(str(onnx_path))).double().eval()
    lirpa = BoundedModule(model, torch.zeros_like(lo), device="cpu")
    x = BoundedTensor((lo + hi) / 2, PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi))
    return lirpa.compute_bounds(x=(x,), method=method)


def main(n_models: int) -> None:
    root = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks"))
    print(f"{'model':40s} {'method':12s} {'engine':6s} {'ours width':>11s} {'ours s':>8s} {'LiRPA width':>12s} {'LiRPA s':>8s}")
    for bench in sorted(root.glob("vnncomp2021-*")):
        seen = []
        for inst in read_instances(bench):
            if inst.onnx in seen or len(seen) >= n_models:
                continue
            seen.append(inst.onnx)
            r = read_vnnlib(inst.vnnlib).regions[0]
            try:
                model = load_onnx(inst.onnx)
            except ValueError as exc:  # a graph our bound engines do not read: one line, go on
                print(f"{bench.name + '/' + Path(inst.onnx).stem:40.40s} skipped: {exc}")
                continue
            g = model.to_chain() if isinstance(model, Dag) else model
            engine = "chain" if g is not None else "dag"
            lo, hi = torch.tensor(r.lower)[None], torch.tensor(r.upper)[None]
            for method, fn in OURS.items():
                t0 = time.perf_counter()
                ol, ou = fn(g.to(torch.float64), lo, hi)[-1] if g is not None else ours_dag(model, lo, hi, method)
                t1 = time.perf_counter()
                try:
                    shape = [d if isinstance(d, int) and d > 0 else 1 for d in session(inst.onnx).get_inputs()[0].shape]
                    tl, tu = theirs(inst.onnx, lo.reshape(shape), hi.reshape(shape), method)
                    their_w, their_t = f"{float((tu - tl).mean()):12.4g}", f"{time.perf_counter() - t1:8.2f}"
                except Exception as exc:  # noqa: BLE001 - a model auto_LiRPA cannot load: say so in the row
                    their_w, their_t = f"{type(exc).__name__:>12s}", "-"
                print(f"{bench.name + '/' + Path(inst.onnx).stem:40.40s} {method:12s} {engine:6s} "
                      f"{float((ou - ol).mean()):11.4g} {t1 - t0:8.2f} {their_w} {their_t}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
