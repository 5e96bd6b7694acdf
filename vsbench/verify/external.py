"""External verifiers behind the one ``Verifier`` protocol: Marabou, alpha-beta-CROWN, any VNN-COMP tool.

All three return ``sat`` only with a flat float64 counterexample that
:func:`vsbench.onnx_io.confirm_counterexample` confirms (else ``unknown``), and ``error`` for a model with
NaN or inf weights (a tool's verdict on it means nothing). Tool output goes to the verdict's ``log``, never to the caller's terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vsbench.onnx_io import check_finite, confirm_counterexample
from vsbench.spec.api import Deadline, Instance, Verdict

LOG_CHARS = 4000
# as VNN-COMP: a tool is killed (with its process group) at its timeout + 60 s; VSBENCH_KILL_GRACE_S changes it
KILL_GRACE_S = float(os.environ.get("VSBENCH_KILL_GRACE_S", "60"))
PREPARE_TIMEOUT_S = 60.0  # as VNN-COMP: prepare_instance.sh's own cap, not charged to the instance
# result words of the 2021 (holds / violated) and 2022+ (sat / unsat) scripts
_RESULT_STATUS = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat", "timeout": "timeout",
                  "unknown": "unknown", "error": "error"}
_STATUS_WORD = re.compile(r"\s*([A-Za-z_]+)")
_CEX_X = re.compile(r"\(\s*X_(\d+)\s+([^\s()]+)\s*\)")
_CEX2_HEADER = re.compile(r"^(\S+)\s+(\S+)\s+\[([0-9,\s]*)\]$")  # VNN-LIB 2.0 witness: NAME TYPE [dims]


class ResultFileError(ValueError):
    """A VNN-COMP result file that cannot be read; the message names the file and the problem."""


def _number(path: Path, text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ResultFileError(f"{path}: counterexample value {text!r} of {what} is not a number") from None


def _witness_v1(path: Path, body: str) -> np.ndarray | None:
    """``(X_i v)`` pairs (VNN-LIB 1.0 witness, on one line or many) as a flat input, or None."""
    values = {}
    for idx, val in _CEX_X.findall(body):
        if int(idx) in values:
            raise ResultFileError(f"{path}: counterexample does not assign X_0 .. X_n exactly once (X_{idx} twice)")
        values[int(idx)] = _number(path, val, f"X_{idx}")
    if not values:
        return None
    if sorted(values) != list(range(len(values))):
        raise ResultFileError(f"{path}: counterexample does not assign X_0 .. X_{max(values)} exactly once")
    return np.array([values[i] for i in range(len(values))], dtype=np.float64)


def _witness_v2(path: Path, body: str) -> np.ndarray | None:
    """The first variable of a VNN-LIB 2.0 textual assignment (``X float32 [1, 784]`` then one value per
    line, row-major) as a flat input, or None when ``body`` is not in that form."""
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    head = _CEX2_HEADER.fullmatch(lines[0]) if lines else None
    if head is None:
        return None
    dims = [int(d) for d in head.group(3).split(",") if d.strip()]
    n = int(np.prod(dims)) if dims else 1
    if len(lines) < 1 + n:
        raise ResultFileError(f"{path}: VNN-LIB 2.0 witness declares {n} values for {head.group(1)}, "
                              f"found {len(lines) - 1}")
    return np.array([_number(path, v, f"{head.group(1)}[{i}]") for i, v in enumerate(lines[1:1 + n])],
                    dtype=np.float64)


def read_result_file(path: str | Path) -> tuple[str, np.ndarray | None]:
    """(status, counterexample) of a VNN-COMP result file, in every form the 2021-2025 scripts accept.

    The first word is the result (``sat`` / ``violated``, ``unsat`` / ``holds``, ``timeout``,
    ``unknown``, ``error``; any case). A ``sat`` may carry its witness after it, on the same line or the
    next ones: VNN-LIB 1.0 ``((X_0 v) ... (Y_0 v))`` or a VNN-LIB 2.0 assignment (``X float32 [dims]``
    then one value per line); the input is returned flat, as float64.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{path}: cannot read result file ({exc})") from None
    m = _STATUS_WORD.match(text)
    word = m.group(1).lower() if m else text.strip()[:20]
    if word not in _RESULT_STATUS:
        raise ResultFileError(f"{path}: result {word!r} is not one of {', '.join(_RESULT_STATUS)}")
    status = _RESULT_STATUS[word]
    if status != "sat":
        return status, None
    body = text[m.end():]
    cex = _witness_v1(path, body)
    return status, cex if cex is not None else _witness_v2(path, body)


def write_result_file(path: str | Path, status: str, x: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
    """Write a VNN-COMP result file: ``status`` and, for ``sat``, the input ``x`` and output ``y``."""
    lines = [status]
    if status == "sat" and x is not None:
        lines.append(witness_text(x, y))
    Path(path).write_text("\n".join(lines) + "\n")


def witness_text(x: np.ndarray, y: np.ndarray | None = None) -> str:
    """``((X_0 v)\n (X_1 v) ... (Y_0 v))``: a VNN-COMP counterexample, values as exact float64 reprs."""
    pairs = [f"(X_{i} {v!r})" for i, v in enumerate(np.asarray(x, dtype=np.float64).ravel().tolist())]
    if y is not None:
        pairs += [f"(Y_{j} {v!r})" for j, v in enumerate(np.asarray(y, dtype=np.float64).ravel().tolist())]
    return "(" + "\n ".join(pairs) + ")"


def _start(cmd: list[str], out, cwd: str | Path | None) -> subprocess.Popen:
    """``cmd`` in its own process group, so that it can be killed as a group."""
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                            start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and its process group (children may outlive the leader) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_command(cmd: list[str], timeout: float, cwd: str | Path | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; (exit code or None when killed at ``timeout``, output)."""
    with tempfile.TemporaryFile() as out:
        proc = _start(cmd, out, cwd)
        try:
            rc = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _kill(proc)
        out.seek(0)
        return rc, out.read().decode(errors="replace")[-LOG_CHARS:]


def _checked(instance: Instance, verdict: Verdict) -> Verdict:
    """``verdict`` with an unconfirmed ``sat`` downgraded to ``unknown``."""
    if verdict.status != "sat" or verdict.cex is None:
        return verdict
    try:
        cex, why = confirm_counterexample(instance, verdict.cex)
    except Exception as exc:  # noqa: BLE001 - an unreadable file or an onnxruntime failure: not confirmed
        cex, why = None, f"check failed ({type(exc).__name__}: {exc})"
    if cex is None:
        return dataclasses.replace(verdict, status="unknown", cex=None,
                                   log=f"{verdict.log}\n{why}: downgraded to unknown"[-LOG_CHARS:])
    return verdict


def _nonfinite(instance: Instance) -> Verdict | None:
    """An ``error`` verdict when the model holds NaN or inf weights, else None."""
    try:
        check_finite(instance.onnx)
    except ValueError as exc:
        return Verdict("error", 0.0, log=str(exc))
    except Exception:  # noqa: BLE001 - an unreadable file: the tool itself reports it
        return None
    return None


def _file_verdict(result: Path, rc: int | None, output: str, elapsed: float, timeout: float, what: str) -> Verdict:
    """Verdict from a tool's result file, exit code and output after ``elapsed`` seconds, judged as
    VNN-COMP does: killed, a non-zero exit or an answer after ``timeout`` seconds is not a result."""
    if rc is None:
        return Verdict("timeout", elapsed, log=f"{what} killed past its {timeout:g} s timeout\n{output}"[-LOG_CHARS:])
    if rc != 0:
        return Verdict("error", elapsed, log=f"{what} exited {rc}\n{output}"[-LOG_CHARS:])
    if not result.is_file():
        return Verdict("error", elapsed, log=f"{what} exited {rc} without a result file\n{output}"[-LOG_CHARS:])
    try:
        status, cex = read_result_file(result)
    except ResultFileError as exc:
        return Verdict("error", elapsed, log=f"{exc}\n{output}"[-LOG_CHARS:])
    if status in ("sat", "unsat") and elapsed > timeout:
        status, output = "timeout", f"{status} after {elapsed:.1f} s, past the {timeout:g} s timeout\n{output}"
    if status == "sat" and cex is None:
        status, output = "unknown", f"sat without a counterexample: unknown\n{output}"
    return Verdict(status, elapsed, cex=cex, log=output[-LOG_CHARS:])


@contextlib.contextmanager
def _stdout_to(path: str):
    """Send file descriptor 1 (where native code prints) to ``path`` for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.dup2(fd, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(fd)


class MarabouVerifier:
    """Marabou through ``maraboupy``: one query per (input region, clause), in rounds that share the time
    left among the open queries; ``sat`` as soon as one query is, ``unsat`` once all are."""

    name = "marabou"

    def __init__(self, num_workers: int = 1):
        self.num_workers = num_workers

    def available(self) -> tuple[bool, str]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from maraboupy import Marabou  # noqa: F401
        except ImportError as exc:
            return False, f"pip install maraboupy (import failed: {exc})"
        return True, ""

    def verify(self, instance: Instance, timeout: float) -> Verdict:
        t0 = time.monotonic()
        if (bad := _nonfinite(instance)) is not None:
            return bad
        with tempfile.NamedTemporaryFile("r", suffix=".log") as out:
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _stdout_to(out.name):
                    warnings.simplefilter("ignore")
                    status, cex, log = self._solve(instance, Deadline(timeout))
            except Exception as exc:  # noqa: BLE001 - the verdict carries the error
                status, cex, log = "error", None, f"{type(exc).__name__}: {exc}"
            log = f"{log}\n{out.read()[-1000:]}".strip()
        return _checked(instance, Verdict(status, time.monotonic() - t0, cex=cex, log=log[-LOG_CHARS:]))

    def _solve(self, instance: Instance, deadline: Deadline) -> tuple[str, np.ndarray | None, str]:
        from maraboupy import Marabou, MarabouCore, MarabouUtils

        from vsbench.spec.vnnlib import read_vnnlib

        prop = read_vnnlib(instance.vnnlib)
        net = Marabou.read_onnx(str(instance.onnx))
        xs, ys = np.asarray(net.inputVars[0]).ravel(), np.asarray(net.outputVars[0]).ravel()
        base = dict(net.lowerBounds), dict(net.upperBounds)
        for region in prop.regions:
            if xs.size != region.lower.size or any(C.shape[1] != ys.size for C, _ in region.clauses):
                raise ValueError(f"{instance.vnnlib}: sizes do not match {instance.onnx} "
                                 f"({xs.size} inputs, {ys.size} outputs)")
        queries = [(r, C, rhs) for r in prop.regions for C, rhs in r.clauses]
        pending = list(range(len(queries)))  # indices of the queries not yet unsat
        counts: dict[str, int] = {}
        while pending and not deadline.expired():  # rounds: every open query gets a share of the time left
            share = max(1, math.floor(deadline.left() / len(pending)))
            for q in list(pending):
                if deadline.expired():
                    break
                region, C, rhs = queries[q]
                net.lowerBounds, net.upperBounds = dict(base[0]), dict(base[1])
                net.additionalEquList.clear()
                for v, lo, hi in zip(xs, region.lower, region.upper):
                    net.setLowerBound(int(v), float(lo))
                    net.setUpperBound(int(v), float(hi))
                for c, r in zip(C, rhs):
                    eq = MarabouUtils.Equation(MarabouCore.Equation.LE)
                    for j in np.flatnonzero(c):
                        eq.addAddend(float(c[j]), int(ys[j]))
                    eq.setScalar(float(r))
                    net.addEquation(eq, isProperty=True)
                opts = Marabou.createOptions(verbosity=0, numWorkers=self.num_workers,
                                             timeoutInSeconds=min(share, max(1, math.floor(deadline.left()))))
                code, vals, _ = net.solve(verbose=False, options=opts)
                code = code.lower()
                counts[code] = counts.get(code, 0) + 1
                if code == "sat":
                    return "sat", np.array([vals[int(v)] for v in xs], dtype=np.float64), f"queries: {counts}"
                if code == "unsat":
                    pending.remove(q)
                elif code != "timeout":
                    return "unknown", None, f"queries: {counts}"
        return ("timeout" if pending else "unsat"), None, f"queries: {counts}; open: {len(pending)}"


def find_abcrown() -> tuple[Path | None, str]:
    """(path of abcrown.py, "") from ``ABCROWN_PATH`` or ``abcrown.py`` on PATH, else (None, why not)."""
    env = os.environ.get("ABCROWN_PATH")
    if env:
        p = Path(env).expanduser()
        for cand in (p, p / "abcrown.py", p / "complete_verifier" / "abcrown.py"):
            if cand.is_file() and cand.name == "abcrown.py":
                return cand.resolve(), ""
        return None, f"ABCROWN_PATH={env} has no abcrown.py (point it at alpha-beta-CROWN's complete_verifier dir)"
    found = shutil.which("abcrown.py")
    if found:
        return Path(found).resolve(), ""
    return None, ("alpha-beta-CROWN not found: git clone --recursive https://github.com/Verified-Intelligence/"
                  "alpha-beta-CROWN, install its environment and set ABCROWN_PATH to its complete_verifier dir")


def _merged(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s keys set, nested dictionaries merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class AbcrownVerifier:
    """alpha-beta-CROWN: one process per model for all its instances, so its start-up is paid once.

    ``config``: the tool's own YAML for the benchmark (e.g. ``exp_configs/vnncomp21/mnistfc.yaml``;
    ``--verifier abcrown:PATH``, ``vsbench verify --verifier-config PATH`` or a suite's
    ``verifier_config:``): its settings are kept, with the model, property, timeout, device and output
    files set per instance. The ONNX and VNN-LIB files are copied into the run's own temporary folder,
    so the cache files the tool writes beside its inputs (``*.onnx.optimized``, ``*.vnnlib.compiled``)
    never land in the user's benchmark folder. ``ABCROWN_PYTHON`` picks the interpreter of its
    environment (default: this one).

    :meth:`verify_model` runs ``abcrown_driver.py``: the tool's own entry point once per instance, in one
    process, each instance with its own YAML, result file and counterexample. Start-up (interpreter,
    torch, the tool's imports) is charged to the first instance of a process, whose clock starts at
    launch as a lone run's would; each later instance's clock starts when the tool takes it. Every
    instance gets its own timeout; one still running at timeout + ``kill_grace_s`` is killed with the
    process (``timeout``), one that crashes the process is an ``error``, and a new process takes the rest.
    """

    def __init__(self, config: str | Path | None = None, device: str | None = None,
                 kill_grace_s: float = KILL_GRACE_S):
        self.config_path = Path(config).expanduser().resolve() if config else None
        self.device, self.kill_grace_s = device, kill_grace_s
        self.name = "abcrown" if config is None else f"abcrown:{self.config_path}"
        self.overrun_s = kill_grace_s  # the runner waits this much longer before it steps in

    def available(self) -> tuple[bool, str]:
        if self.config_path is not None and not self.config_path.is_file():
            return False, f"{self.config_path}: alpha-beta-CROWN config file does not exist"
        path, why = find_abcrown()
        return path is not None, why

    def config_hash(self) -> str:
        """The tool config's sha256 ("default" without one): a changed config re-verifies on resume."""
        if self.config_path is None:
            return "default"
        import hashlib

        return hashlib.sha256(self.config_path.read_bytes()).hexdigest()[:16]

    def tool_config(self, instance: Instance, timeout: float, work: Path) -> dict:
        """The YAML config (as a dict) for one instance whose files are in ``work``; results go there too."""
        import yaml

        device = self.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        base = (yaml.safe_load(self.config_path.read_text()) or {}) if self.config_path else {}
        base.get("general", {}).pop("csv_name", None)  # one instance per run, never the config's list
        return _merged(base, {
            "general": {"device": device, "results_file": str(work / "result.txt"), "save_adv_example": True},
            "model": {"onnx_path": str(Path(instance.onnx).resolve())},
            "specification": {"vnnlib_path": str(Path(instance.vnnlib).resolve())},
            "attack": {"cex_path": str(work / "cex.txt")},
            "bab": {"timeout": float(timeout)},
        })

    def verify(self, instance: Instance, timeout: float) -> Verdict:
        return dict(self.verify_model([instance], [timeout]))[0]

    def verify_model(self, instances: list[Instance], timeouts: list[float]) -> Iterator[tuple[int, Verdict]]:
        """``(index, verdict)`` of each instance of ONE ONNX model, as each ends."""
        import yaml

        from vsbench.gz import plain_instance

        instances = [plain_instance(i) for i in instances]
        if len({str(i.onnx) for i in instances}) > 1:
            raise ValueError("verify_model takes the instances of one ONNX model")
        script, why = find_abcrown()
        todo = []
        for i, inst in enumerate(instances):
            bad = Verdict("error", 0.0, log=why) if script is None else _nonfinite(inst)
            if bad is None:
                todo.append(i)
            else:
                yield i, bad
        if not todo:
            return
        with tempfile.TemporaryDirectory(prefix="vsbench-abcrown-") as tmp:
            work = Path(tmp)
            (work / "inputs").mkdir()
            onnx = Path(shutil.copy(instances[todo[0]].onnx, work / "inputs"))
            jobs = {}
            for i in todo:
                folder = work / str(i)
                folder.mkdir()
                local = dataclasses.replace(instances[i], onnx=onnx, vnnlib=Path(shutil.copy(instances[i].vnnlib, folder)))
                (folder / "config.yaml").write_text(yaml.safe_dump(self.tool_config(local, timeouts[i], folder)))
                jobs[i] = {"config": str(folder / "config.yaml"), "log": str(folder / "log.txt")}
            while todo:
                for i, verdict in self._process(script, work, list(todo), jobs, timeouts):
                    todo.remove(i)
                    yield i, _checked(instances[i], verdict)

    def _process(self, script: Path, work: Path, todo: list[int], jobs: dict, timeouts: list[float]):
        """One tool process over ``todo``, in order: ``(index, verdict)`` of each instance it ends. It
        stops after an instance it is killed or crashes on; a process that dies before its first
        instance makes them all ``error`` (a new one would die the same way)."""
        run = work / f"run-{todo[0]}"
        run.mkdir()
        (run / "jobs.json").write_text(json.dumps([jobs[i] for i in todo]))
        progress = run / "progress.txt"
        progress.touch()
        python = os.environ.get("ABCROWN_PYTHON", sys.executable)
        driver = Path(__file__).with_name("abcrown_driver.py")

        def log(i: int) -> str:
            return Path(jobs[i]["log"]).read_text(errors="replace")[-LOG_CHARS:]

        with open(run / "startup.log", "wb") as out:
            launched = time.time()
            proc = _start([python, str(driver), str(script), str(run / "jobs.json"), str(progress)], out, work)
            try:
                k, started, running, seen = 0, launched, False, 0  # todo[k]: the instance running or next
                while k < len(todo):
                    exited = proc.poll() is not None
                    lines = progress.read_text().split("\n")[:-1]  # complete lines only
                    for event, j, t, *rc in (ln.split() for ln in lines[seen:]):
                        j, t = int(j), float(t)
                        if event == "start":
                            started, running = (launched if j == 0 else t), True
                        else:
                            i = todo[j]
                            yield i, _file_verdict(Path(jobs[i]["config"]).with_name("result.txt"), int(rc[0]), log(i),
                                                   t - started, timeouts[i], "abcrown.py")
                            k, started, running = j + 1, t, False
                    seen = len(lines)
                    if k == len(todo):
                        break
                    i, now = todo[k], time.time()
                    if exited and running:
                        yield i, Verdict("error", now - started, log=f"abcrown.py exited {proc.returncode} while "
                                         f"deciding this instance\n{log(i)}"[-LOG_CHARS:])
                        return
                    if exited:
                        if k == 0:
                            why = (run / "startup.log").read_text(errors="replace")
                            for i in todo:
                                yield i, Verdict("error", 0.0, log=f"abcrown.py exited {proc.returncode} before "
                                                 f"its first instance\n{why}"[-LOG_CHARS:])
                        return
                    if now > started + timeouts[i] + self.kill_grace_s:
                        _kill(proc)
                        yield i, Verdict("timeout", now - started, log=f"abcrown.py killed past its {timeouts[i]:g} s "
                                         f"timeout\n{log(i) if running else ''}"[-LOG_CHARS:])
                        return
                    time.sleep(0.05)
            finally:
                _kill(proc)


def category_of(instance: Instance) -> str:
    """The VNN-COMP category of an instance: ``meta["category"]`` (``read_instances`` sets the benchmark
    folder's name, ``--category`` overrides it), else the folder above the ONNX file's ``onnx/`` folder."""
    if instance.meta.get("category"):
        return str(instance.meta["category"])
    folder = Path(instance.onnx).resolve().parent
    return folder.parent.name if folder.name == "onnx" else folder.name


class VnncompToolVerifier:
    """Any tool folder with VNN-COMP ``prepare_instance.sh`` and ``run_instance.sh``, driven as the
    competition's scripts drive it.

    ``prepare_instance.sh v1 CATEGORY ONNX VNNLIB`` runs under its own ``prepare_timeout_s`` cap and is
    timed apart (``Verdict.prepare_s``, not charged); ``run_instance.sh v1 CATEGORY ONNX VNNLIB RESULT
    TIMEOUT`` gets the full timeout and is killed with its process group at timeout + ``kill_grace_s``.
    The category is ``category_of(instance)``, else ``category``. ``.gz`` inputs are passed decompressed.
    """

    def __init__(self, tool_dir: str | Path, category: str | None = None, kill_grace_s: float = KILL_GRACE_S,
                 prepare_timeout_s: float = PREPARE_TIMEOUT_S):
        self.tool_dir = Path(tool_dir).expanduser()
        self.category, self.kill_grace_s, self.prepare_timeout_s = category, kill_grace_s, prepare_timeout_s
        self.name = f"vnncomp:{tool_dir}"
        self.overrun_s = prepare_timeout_s + kill_grace_s  # the runner waits this much longer before it steps in

    def available(self) -> tuple[bool, str]:
        missing = [s for s in ("prepare_instance.sh", "run_instance.sh") if not (self.tool_dir / s).is_file()]
        if missing:
            return False, f"{self.tool_dir}: missing {', '.join(missing)} (not a VNN-COMP tool folder)"
        return True, ""

    def verify(self, instance: Instance, timeout: float) -> Verdict:
        from vsbench.gz import plain_instance

        ok, why = self.available()
        if not ok:
            return Verdict("error", 0.0, log=why)
        instance = plain_instance(instance)
        if (bad := _nonfinite(instance)) is not None:
            return bad
        category = instance.meta.get("category") or self.category or category_of(instance)
        onnx, vnnlib = str(Path(instance.onnx).resolve()), str(Path(instance.vnnlib).resolve())
        t0 = time.monotonic()
        rc, out = run_command(["bash", str(self.tool_dir / "prepare_instance.sh"), "v1", category, onnx, vnnlib],
                              self.prepare_timeout_s, cwd=self.tool_dir)
        prepare_s = time.monotonic() - t0
        if rc != 0:
            why = f"exceeded its {self.prepare_timeout_s:g} s cap" if rc is None else f"exited {rc}"
            return Verdict("error", 0.0, log=f"prepare_instance.sh {why}\n{out}"[-LOG_CHARS:], prepare_s=prepare_s)
        with tempfile.TemporaryDirectory(prefix="vsbench-vnncomp-") as tmp:
            result = Path(tmp) / "out.txt"
            t0 = time.monotonic()
            rc, out = run_command(["bash", str(self.tool_dir / "run_instance.sh"), "v1", category, onnx, vnnlib,
                                   str(result), f"{timeout:g}"], timeout + self.kill_grace_s, cwd=self.tool_dir)
            verdict = _checked(instance, _file_verdict(result, rc, out, time.monotonic() - t0, timeout, "run_instance.sh"))
        verdict.prepare_s = prepare_s
        return verdict
