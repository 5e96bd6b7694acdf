"""vsbench as a VNN-COMP tool: ``python -m vsbench.vnncomp_run ONNX VNNLIB RESULT_FILE TIMEOUT``.

Runs the built-in verifier on one instance and writes the VNN-COMP result file (status line, then
for ``sat`` the counterexample ``((X_0 v) ... (Y_0 v))``). Exit code 0 whenever the file was written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

START = time.monotonic()

USAGE = "usage: python -m vsbench.vnncomp_run ONNX VNNLIB RESULT_FILE TIMEOUT"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(USAGE, file=sys.stderr)
        return 2
    onnx, vnnlib, result, timeout = argv
    try:
        budget = float(timeout)
    except ValueError:
        print(f"vnncomp_run: timeout {timeout!r} is not a number", file=sys.stderr)
        return 2
    from vsbench.gz import plain_instance
    from vsbench.onnx_io import run_onnx
    from vsbench.spec.api import Instance
    from vsbench.verify.external import write_result_file
    from vsbench.verify.registry import get_verifier

    verdict = get_verifier("builtin").verify(plain_instance(Instance(Path(onnx), Path(vnnlib), budget)),
                                             max(0.1, budget - (time.monotonic() - START)))
    y = run_onnx(onnx, verdict.cex) if verdict.status == "sat" and verdict.cex is not None else None
    status = verdict.status if verdict.status != "sat" or y is not None else "unknown"
    write_result_file(result, status, verdict.cex, y)
    print(f"{status} in {verdict.time_s:.2f} s; {verdict.log}"[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
