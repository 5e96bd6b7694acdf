"""Run alpha-beta-CROWN on several instances in ONE process, so its 8-15 s start-up is paid once.

Run by :class:`vsbench.verify.external.AbcrownVerifier` with the tool's own interpreter, where vsbench
is not installed: standard library only, Python 3.8+. Usage::

    python abcrown_driver.py ABCROWN_PY JOBS.json PROGRESS

``JOBS.json`` lists ``{"config": YAML, "log": FILE}``: each job is what ``abcrown.py --config YAML``
does (the tool's own entry point, ``ABCROWN(args).main()``, in single-instance mode: one result file
per instance, its counterexample included), with stdout and stderr sent to ``log``. ``PROGRESS``
gets ``start I TIME`` before and ``end I TIME RC`` after job ``I`` (``RC`` 0, or 1 when the tool
raised), so the caller times and reads every instance as it ends. The process group dies with the
process that started it. Hand-written because the tool's
own batch mode (``general.csv_name``) writes every counterexample to one ``attack.cex_path`` that the
next ``sat`` instance overwrites, and its results only as a pickle of (status, time) pairs.
"""

import json
import os
import signal
import sys
import threading
import time
import traceback


def _die_with_parent():
    """Kill this process group (the tool and its children) once the process that started it is gone,
    e.g. a Ray worker killed by vsbench's runner or Ctrl-C: no tool outlives its run."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os.killpg(0, signal.SIGKILL)


def main(abcrown_py, jobs_file, progress_file):
    threading.Thread(target=_die_with_parent, daemon=True).start()
    sys.path.insert(0, os.path.dirname(os.path.abspath(abcrown_py)))
    sys.argv = [abcrown_py]
    from abcrown import ABCROWN  # torch and the tool's modules: the start-up, once

    with open(jobs_file) as f:
        jobs = json.load(f)
    with open(progress_file, "a", buffering=1) as progress:
        for i, job in enumerate(jobs):
            sys.stdout.flush()
            sys.stderr.flush()
            with open(job["log"], "w") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            progress.write(f"start {i} {time.time()!r}\n")
            rc = 0
            try:
                ABCROWN(args=["--config", job["config"]]).main()
            except SystemExit as exc:
                rc = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - this instance is an error; the next ones still run
                traceback.print_exc()
                rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
            progress.write(f"end {i} {time.time()!r} {rc}\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
