"""Size of the float32 error bound the built-in verifier adds to every margin, on VNN-COMP 2021 mnistfc.

    python benchmarks/float32_error.py [--nets mnist-net_256x2 mnist-net_256x4] [--benchmarks DIR]

For every property of ``vnncomp2021-mnistfc`` (``DIR``: ``--benchmarks``, else ``$VSBENCH_BENCHMARKS``,
else /work/shared/benchmarks) and each network: the largest bound over the property's clause rows
(:func:`vsbench.verify.builtin.float32_region`, the number the verdict log reports as ``float32 error
bound``), the reference verdict, and the time to compute it; then median / min / max per network.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vsbench.bounds.graph import from_onnx
from vsbench.spec.vnnlib import read_vnnlib
from vsbench.verify.builtin import float32_region


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["mnist-net_256x2", "mnist-net_256x4"])
    ap.add_argument("--benchmarks", default=os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.benchmarks) / "vnncomp2021-mnistfc"
    ref = {(r["onnx"], r["vnnlib"]): r["verdict"] for r in csv.DictReader((root / "reference_verdicts.csv").open())}
    rows = []
    for net in args.nets:
        onnx = root / f"{net}.onnx"
        graph = from_onnx(onnx).to(torch.float64)
        for vnnlib in sorted(root.glob("prop_*.vnnlib")):
            t0 = time.monotonic()
            bounds = [float32_region(graph, region, onnx)[1] for region in read_vnnlib(vnnlib).regions]
            rows.append({"net": net, "property": vnnlib.stem, "reference": ref.get((onnx.name, vnnlib.name), "?"),
                         "bound": max(bounds), "s": round(time.monotonic() - t0, 2)})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.1e}"))
    print(df.groupby(["net", "reference"])["bound"].agg(["median", "min", "max", "count"])
          .to_string(float_format=lambda v: f"{v:.1e}"))
    print(f"all: median {np.median(df['bound']):.1e}")


if __name__ == "__main__":
    main()
