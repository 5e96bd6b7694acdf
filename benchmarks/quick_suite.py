"""Wall time and peak memory of a whole suite run, and what each model cost to train.

    python benchmarks/quick_suite.py [--suite mnist-eps0.3] [--profile quick] [--out DIR] [--workers 2]
                                     [--train-only]

Runs ``vsbench run`` (or ``vsbench train`` with ``--train-only``) in a fresh folder as a subprocess,
polls the resident memory of its whole process tree (driver, Ray, workers) every half second from
``/proc`` (hand-written: Linux only, and psutil is not a dependency), then prints the wall time, the
peak total RSS, per model the training seconds by phase, and the summary table. Run it on an
otherwise idle machine for the README's figures; on a shared one say that it was loaded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from vsbench.store import read_records

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    tree, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo += tree.get(p, [])
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="mnist-eps0.3")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a fresh temporary one)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--train-only", action="store_true", help="time `vsbench train` only")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="vsbench-quick-")) / "run"
    cmd = [sys.executable, "-m", "vsbench.cli", "train" if args.train_only else "run", "--suite", args.suite,
           "--profile", args.profile, "--out", str(out)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    print(" ".join(cmd), flush=True)
    start, peak = time.monotonic(), 0
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.5)
    wall = time.monotonic() - start
    print(f"\nexit {proc.returncode}; wall {wall:.0f} s ({wall / 60:.1f} min); peak RSS of the process tree "
          f"{peak / 2**20:.0f} MiB; {os.cpu_count()} CPUs; run folder {out}")
    manifests = sorted((out / "models").glob("*/manifest.json"))
    rows = []
    for path in manifests:
        import json

        m = json.loads(path.read_text())
        rows.append({"model": m["model"], **{f"{k} s": round(v, 1) for k, v in m["phases"].items()},
                     "train s": round(sum(m["phases"].values()), 1), "epochs": len(m.get("history", [])),
                     "held-out IBP %": round(100 * m["history"][-1].get("heldout_ibp_acc", float("nan")), 1)
                     if m.get("history") else None})
    if rows:
        print("\n" + pd.DataFrame(rows).to_string(index=False))
    summary = out / "tables" / "summary.csv"
    if summary.is_file():
        print("\n" + pd.read_csv(summary).to_string(index=False))
        records = read_records(out / "records.jsonl")
        print(f"\n{len(records)} verification records")


if __name__ == "__main__":
    main()
