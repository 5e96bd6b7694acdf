"""alpha-beta-CROWN through vsbench's adapter: one process per instance versus one process per model.

Runs N instances of VNN-COMP 2021 mnistfc 256x2 (sampled evenly, copied into a temporary folder) both
ways with the tool's ``mnistfc_small.yaml`` and prints each instance's verdict and charged time, the
reference verdict, and the total wall time of each way. Needs the real tool (ABCROWN_PATH, and
ABCROWN_PYTHON for its environment; see /work/shared/tools/abcrown.md). Usage:
``python benchmarks/abcrown_one_process.py [N] [TIMEOUT_S]``
"""

import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vsbench.spec.api import Instance
from vsbench.verify.external import AbcrownVerifier, find_abcrown


def main(n: int, timeout: float) -> None:
    bench = Path(os.environ.get("VSBENCH_BENCHMARKS", "/work/shared/benchmarks")) / "vnncomp2021-mnistfc"
    with open(bench / "reference_verdicts.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["onnx"] == "mnist-net_256x2.onnx"]
    rows = [rows[round(k * (len(rows) - 1) / max(n - 1, 1))] for k in range(n)]
    script, why = find_abcrown()
    if script is None:
        sys.exit(f"error: {why}")
    config = script.parent / "exp_configs" / "vnncomp21" / "mnistfc_small.yaml"
    tool = AbcrownVerifier(config if config.is_file() else None, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for name in {r["onnx"] for r in rows} | {r["vnnlib"] for r in rows}:
            shutil.copy(bench / name, tmp)
        insts = [Instance(Path(tmp) / r["onnx"], Path(tmp) / r["vnnlib"], timeout) for r in rows]
        t0 = time.monotonic()
        apart = [tool.verify(i, timeout) for i in insts]
        t_apart = time.monotonic() - t0
        t0 = time.monotonic()
        together = dict(tool.verify_model(insts, [timeout] * len(insts)))
        t_together = time.monotonic() - t0
    print(f"{'property':22s} {'reference':>9s} {'per instance':>16s} {'one process':>16s}")
    for k, r in enumerate(rows):
        a, b = apart[k], together[k]
        print(f"{r['vnnlib']:22s} {r['verdict']:>9s} {a.status:>8s} {a.time_s:6.1f} s {b.status:>8s} {b.time_s:6.1f} s")
    print(f"{'total wall':32s} {t_apart:14.1f} s {t_together:14.1f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
