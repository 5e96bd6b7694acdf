"""Run verification instances as Ray tasks: driver-enforced timeouts, retries, resume, checked counterexamples.

The driver owns all files and holds the output folder's lock (``vsbench.store.run_lock``) while it
runs: workers only compute a verdict. Each finished instance is appended to ``out_dir/records.jsonl``
at once (flush + fsync), so a killed run resumes where it stopped. A record's key is
content-addressed (``vsbench.store.record_key``): the SHA-256 of the ONNX and VNN-LIB files, the
verifier's name, version and configuration hash (:func:`verifier_identity`), and the timeout, so a
moved or copied folder resumes and a changed file, timeout or configuration is verified again.
Ray set-up lives in ``vsbench.cluster``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

import vsbench
from vsbench.cluster import init_ray
from vsbench.onnx_io import confirm_counterexample
from vsbench.spec.api import STATUSES, Instance, Verdict
from vsbench.store import (append_record, file_sha256, host, latest_verdicts, read_records, record_key, run_lock,
                           versions)

log = logging.getLogger(__name__)
FAST_PATH_CHUNK = 64  # fewest instances of one model per fast-path task (each task loads the model)

GRACE_S = 10.0  # extra wall time the driver grants past an instance's timeout before it kills its worker
LOG_CHARS = 4000
START_FAILURES = 3  # workers that may fail to start in one run (replaced) before the run stops
START_WAIT_S = 60.0  # the longest the queue waits for the first workers to start before it dispatches


def _build(verifier, cores: int):
    """A new verifier from a registry name or factory, in a process that uses ``cores`` CPUs."""
    from vsbench.verify.registry import get_verifier

    os.environ["OMP_NUM_THREADS"] = str(cores)  # the task's CPUs only, also for a torch imported later
    v = get_verifier(verifier) if isinstance(verifier, str) else verifier()
    if "torch" in sys.modules:  # no intra-op threads fighting the other tasks
        sys.modules["torch"].set_num_threads(cores)
    return v


@contextlib.contextmanager
def _heap_limit(memory_mb: int | None):
    """A soft cap of ``memory_mb`` MiB on this process's heap (and the tools it starts), lifted on exit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    try:
        if memory_mb:
            limit = memory_mb * 2**20 if hard == resource.RLIM_INFINITY else min(memory_mb * 2**20, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


class _Worker:
    """One task slot as a Ray actor: a warm process that decides instances one after the other.

    It builds the verifier once when it starts (imports torch and the verifier's modules), so no
    instance's clock pays a cold start; the driver kills it only when an instance overruns its
    timeout by the grace period, and starts a fresh one in its place.
    """

    def __init__(self, verifier, cores: int):
        self.verifier, self.cores = verifier, cores
        self._make()

    def _make(self):
        return _build(self.verifier, self.cores)

    def ready(self) -> bool:
        return True

    def verify(self, instance: Instance, timeout: float, memory_mb: int | None) -> dict:
        """Decide one instance with a fresh verifier object (no state carried between instances)."""
        from vsbench.gz import plain_instance

        v = self._make()
        instance = plain_instance(instance)  # .onnx.gz / .vnnlib.gz: decompressed copies from the cache
        ok, reason = v.available()
        if not ok:
            return {"status": "error", "time_s": 0.0, "log": f"verifier {v.name} unavailable: {reason}"}
        start = time.monotonic()
        try:
            with _heap_limit(memory_mb):  # lifted afterwards: the worker decides further instances
                verdict: Verdict = v.verify(instance, timeout)
        except (MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "memory" not in str(exc):
                raise
            return {"status": "error", "time_s": time.monotonic() - start, "log": f"error: out of memory ({exc})"}
        return _result(verdict)


def _result(verdict: Verdict) -> dict:
    """A verdict as the plain dict a worker hands the driver."""
    import ray

    cex = None if verdict.cex is None else np.asarray(verdict.cex, dtype=np.float64).ravel().tolist()
    return {"status": verdict.status, "time_s": float(verdict.time_s), "cex": cex,
            "margin": None if verdict.margin is None else float(verdict.margin), "log": verdict.log,
            "prepare_s": verdict.prepare_s, "node": ray.get_runtime_context().get_node_id(), "stage": verdict.stage}


def verifier_identity(verifier, name: str) -> dict:
    """The verifier fields of a record key: ``verifier`` (its name), ``verifier_version`` and
    ``verifier_config``.

    A verifier object may define ``version()`` (the tool's version; default: vsbench's, whose code
    it is) and ``config_hash()`` (a hash of every setting that can change a verdict; default
    ``"default"``), so that changing either re-verifies on resume.
    """
    version = getattr(verifier, "version", None)
    config = getattr(verifier, "config_hash", None)
    return {"verifier": name, "verifier_version": str(version() if version else vsbench.__version__),
            "verifier_config": str(config() if config else "default")}


def run_verification(instances: list[Instance], verifier_name, out_dir: str | Path, workers: int | None = None,
                     ray_address: str | None = None, timeout_cap: float | None = None,
                     progress: Callable[[str, int, int], None] | None = None,
                     memory_mb: int | None = None, retries: int = 1, grace_s: float = GRACE_S,
                     cores: int = 1) -> list[dict]:
    """Verify ``instances`` with Ray; returns their records (earlier ones from ``out_dir`` included).

    ``verifier_name`` is a registry name or a zero-argument verifier factory (picklable by Ray).
    The driver stops a task ``grace_s`` after its timeout (status ``timeout``), retries a task whose
    worker died ``retries`` times before recording ``error``, and downgrades a ``sat`` whose
    counterexample fails in onnxruntime to ``unknown``. ``memory_mb`` caps each task's heap.
    ``cores``: CPUs per task (``workers`` tasks at a time); the built-in verifier runs clause MILPs
    beside BaB when it has two or more. Instances with the same key are verified once.
    """
    if isinstance(verifier_name, str):
        from vsbench.verify.registry import get_verifier, resolved

        verifier_name = resolved(verifier_name)
        verifier = get_verifier(verifier_name)
        ok, reason = verifier.available()  # unknown or unusable: one error here
        if not ok:
            raise ValueError(f"verifier {verifier_name!r} is not available: {reason}")
        name = verifier_name
    else:
        verifier = verifier_name()
        name = getattr(verifier, "name", None) or getattr(verifier_name, "name", None) or verifier_name.__name__
    identity = verifier_identity(verifier, name)
    fields = {id(i): {"onnx_sha256": file_sha256(i.onnx), "vnnlib_sha256": file_sha256(i.vnnlib), **identity,
                      "timeout": min(i.timeout, timeout_cap) if timeout_cap else i.timeout} for i in instances}
    timeouts = {k: f["timeout"] for k, f in fields.items()}
    key = {k: record_key(f) for k, f in fields.items()}
    path = Path(out_dir) / "records.jsonl"
    with run_lock(out_dir):
        keep = {record_key(r): r for r in latest_verdicts(read_records(path))}
        todo = list({key[id(i)]: i for i in instances if key[id(i)] not in keep}.values())  # once per key
        total = len(set(key.values()))
        if progress:
            progress("verify", total - len(todo), total)
        if todo:
            settings = getattr(verifier, "config", None)  # the built-in verifier's VerifierConfig
            common = {"versions": versions(), "host": host(),
                      "settings": settings.model_dump(mode="json") if settings is not None else None}

            def finish(inst: Instance, attempt: int, result: dict) -> None:
                keep[key[id(inst)]] = _finish(path, inst, fields[id(inst)], attempt, result, common, cex_cache)

            cex_cache: dict = {}
            grace_s += getattr(verifier, "overrun_s", 0.0)  # a VNN-COMP tool: prepare cap + kill grace
            decided = _fast_path(todo, verifier_name, settings, timeouts, workers, ray_address, cores)
            for inst in todo:
                if id(inst) in decided:
                    finish(inst, 1, decided[id(inst)])
            todo = [i for i in todo if id(i) not in decided]
            if progress and decided:
                progress("verify", total - len(todo), total)
            if todo and hasattr(verifier, "verify_model"):  # an external tool that takes a model's instances at once
                todo = _per_model(todo, verifier_name, timeouts, finish, workers, ray_address, memory_mb, grace_s,
                                  cores, progress and (lambda n: progress("verify", total - len(todo) + n, total)))
            if todo:
                _fan_out(todo, verifier_name, timeouts, finish, workers, ray_address, memory_mb, retries, grace_s,
                         cores, progress and (lambda n: progress("verify", total - len(todo) + n, total)))
    return [keep[key[id(i)]] for i in instances]


# --------------------------------------------------------------------------- fast path (built-in verifier)


def _fast_path_task(instances: list[Instance], config, cores: int, seconds: float) -> dict:
    """Runs in a Ray worker: :func:`vsbench.verify.fastpath.fast_path` on the instances of one model,
    ``{index in instances: result}`` for those it decides."""
    import torch

    from vsbench.spec.api import Deadline
    from vsbench.verify.fastpath import fast_path

    torch.set_num_threads(cores)
    verdicts = fast_path(instances, config, Deadline(seconds))
    return {i: _result(verdicts[inst.key]) for i, inst in enumerate(instances) if inst.key in verdicts}


def _fast_path(todo: list[Instance], verifier, config, timeouts: dict, workers: int | None,
               ray_address: str | None, cores: int) -> dict[int, dict]:
    """``{id(instance): result}`` of what the built-in verifier's fast path decides, before the rest
    fan out one task each: Ray tasks over an ONNX model's instances, one per model, or several (every
    k-th instance each, at least ``FAST_PATH_CHUNK``) where there are more free slots than models.
    Empty for other verifiers, with ``fast_path`` off, or for a task that fails (its instances then
    go the usual way)."""
    import ray

    if config is None or not getattr(config, "fast_path", False):
        return {}
    init_ray(workers and workers * cores, ray_address)
    by_model: dict[str, list[Instance]] = {}
    for inst in todo:
        by_model.setdefault(str(inst.onnx), []).append(inst)
    slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // cores)
    task = ray.remote(num_cpus=cores, max_retries=0)(_fast_path_task)
    refs = []
    for model in by_model.values():
        n = max(1, min(slots // len(by_model), len(model) // FAST_PATH_CHUNK))
        for insts in (model[j::n] for j in range(n)):
            seconds = sum(timeouts[id(i)] for i in insts)  # never more than verifying them one by one
            refs.append((task.remote(insts, config, cores, seconds), insts, seconds))
    out: dict[int, dict] = {}
    for ref, insts, seconds in refs:
        try:
            out.update({id(insts[i]): result for i, result in ray.get(ref, timeout=seconds + GRACE_S).items()})
        except (ray.exceptions.RayError, TimeoutError) as exc:  # e.g. a model the bound engines cannot read
            log.warning("fast path of %s failed (%s); its instances are verified one by one", insts[0].onnx,
                        type(exc).__name__)
            ray.cancel(ref, force=True)
    return out


# --------------------------------------------------------------------------- one task per model (external tools)


def _model_task(verifier, cores: int, instances: list[Instance], timeouts: list[float], memory_mb: int | None):
    """Runs in a Ray worker as a generator: ``(-1, None)`` once it has started, then ``(index, result)``
    of each instance as the verifier's ``verify_model`` decides it."""
    from vsbench.gz import plain_instance

    v = _build(verifier, cores)
    yield -1, None
    with _heap_limit(memory_mb):
        for i, verdict in v.verify_model([plain_instance(inst) for inst in instances], timeouts):
            yield i, _result(verdict)


def _per_model(todo: list[Instance], verifier, timeouts: dict, finish: Callable, workers: int | None,
               ray_address: str | None, memory_mb: int | None, grace_s: float, cores: int,
               progress: Callable[[int], None] | None) -> list[Instance]:
    """Decide ``todo`` with one Ray task per ONNX model for a verifier with ``verify_model`` (one tool
    process for all of a model's instances); ``finish(instance, 1, result)`` for each as it ends, so a
    crash or Ctrl-C loses no finished instance. Returns the instances left undecided (a task that
    failed, or sent nothing for longer than its largest open timeout + ``grace_s``): the caller verifies
    them one by one."""
    import ray

    init_ray(workers and workers * cores, ray_address)
    by_model: dict[str, list[Instance]] = {}
    for inst in todo:
        by_model.setdefault(str(inst.onnx), []).append(inst)
    task = ray.remote(num_cpus=cores, max_retries=0)(_model_task)
    tasks = {}  # generator -> [its instances, indices still open, deadline of its next message or None]
    for insts in by_model.values():
        gen = task.remote(verifier, cores, insts, [timeouts[id(i)] for i in insts], memory_mb)
        tasks[gen] = [insts, set(range(len(insts))), None]
    left: list[Instance] = []
    done = 0
    try:
        while tasks:
            ready, _ = ray.wait(list(tasks), num_returns=1, timeout=1.0)
            for gen in ready:
                insts, open_, _ = state = tasks[gen]
                try:
                    i, result = ray.get(next(gen))
                except StopIteration:
                    i = None
                except ray.exceptions.RayError as exc:
                    log.warning("%s: its task failed (%s); its open instances are verified one by one",
                                insts[0].onnx, type(exc).__name__)
                    i = None
                if i is None:
                    left += [insts[j] for j in sorted(open_)]
                    del tasks[gen]
                    continue
                if i >= 0:
                    finish(insts[i], 1, result)
                    open_.discard(i)
                    done += 1
                state[2] = time.monotonic() + max((timeouts[id(insts[j])] for j in open_), default=0.0) + grace_s
            now = time.monotonic()
            for gen, (insts, open_, deadline) in list(tasks.items()):
                if deadline is not None and now > deadline:  # the last resort: the tool ignored its timeouts
                    log.warning("%s: its task overran; its open instances are verified one by one", insts[0].onnx)
                    ray.cancel(gen, force=True)
                    left += [insts[j] for j in sorted(open_)]
                    del tasks[gen]
            if progress:
                progress(done)
    finally:
        for gen in tasks:  # Ctrl-C: stop the tasks (their tool processes die with them)
            ray.cancel(gen, force=True)
    return left


def _fan_out(todo: list[Instance], verifier, timeouts: dict, finish: Callable, workers: int | None,
             ray_address: str | None, memory_mb: int | None, retries: int, grace_s: float, cores: int,
             progress: Callable[[int], None] | None) -> None:
    """Decide ``todo`` on warm :class:`_Worker` actors, at most ``workers`` at a time;
    ``finish(instance, attempt, result)`` for each as it ends (verdict, error, or stopped ``grace_s``
    after its timeout). An instance's clock starts when a started worker takes it; the first instances
    wait until the first workers have all started (at most ``START_WAIT_S``), so every node gets work."""
    import ray

    init_ray(workers and workers * cores, ray_address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if cores > cpus:
        raise ValueError(f"--cores {cores}: the Ray cluster has {cpus} CPUs")
    worker_class = ray.remote(num_cpus=cores, max_restarts=0)(_Worker)
    queue = [(inst, 1) for inst in todo]
    starting: dict = {}  # ready() ref -> worker not yet started
    idle: list = []
    running: dict = {}  # verify() ref -> (worker, instance, started, attempt)
    done = failed_starts = 0

    def start_worker() -> None:
        w = worker_class.remote(verifier, cores)
        starting[w.ready.remote()] = w

    def replace(worker) -> None:
        ray.kill(worker)
        start_worker()

    for _ in range(min(max(1, min(cpus // cores, workers or 10**6)), len(todo))):
        start_worker()
    first = set(starting)  # the first workers: the queue waits (up to START_WAIT_S) until all are up,
    spread_until = time.monotonic() + START_WAIT_S  # so that a slow-starting node still gets its share
    try:
        while queue or running:
            while queue and idle and not (first & starting.keys() and time.monotonic() < spread_until):
                inst, attempt = queue.pop(0)
                w = idle.pop()
                running[w.verify.remote(inst, timeouts[id(inst)], memory_mb)] = (w, inst, time.monotonic(), attempt)
            ends = [s + timeouts[id(i)] + grace_s for _, i, s, _ in running.values()]
            wait_s = max(0.0, min(ends) - time.monotonic()) if ends else 1.0
            ready, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=min(wait_s, 1.0))
            for ref in ready:
                if ref in starting:
                    w = starting.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(w)
                    except ray.exceptions.RayError as exc:  # e.g. killed by Ray's memory monitor while starting
                        failed_starts += 1
                        if failed_starts > START_FAILURES:
                            raise RuntimeError(f"verification workers could not start: {exc}") from None
                        replace(w)
                    continue
                w, inst, started, attempt = running.pop(ref)
                try:
                    result = ray.get(ref)
                    idle.append(w)
                except ray.exceptions.RayTaskError as exc:  # the verifier raised
                    idle.append(w)
                    result = {"status": "error", "time_s": time.monotonic() - started,
                              "log": f"error: {getattr(exc, 'cause', None) or exc!r}"[:LOG_CHARS]}
                except ray.exceptions.RayError as exc:  # the worker died (crash, OOM kill, node lost)
                    replace(w)
                    if attempt <= retries:
                        log.warning("%s: worker died (%s); retrying", inst.vnnlib, type(exc).__name__)
                        queue.insert(0, (inst, attempt + 1))
                        continue
                    result = {"status": "error", "time_s": time.monotonic() - started,
                              "log": f"error: worker died {attempt} times ({type(exc).__name__}: {exc})"[:LOG_CHARS]}
                finish(inst, attempt, result)
                done += 1
            now = time.monotonic()
            for ref, (w, inst, started, attempt) in list(running.items()):
                t = timeouts[id(inst)]
                if now > started + t + grace_s:  # the last resort: the verifier ignored its deadline
                    del running[ref]
                    replace(w)
                    finish(inst, attempt, {"status": "timeout", "time_s": now - started,
                                           "log": f"stopped by the runner {grace_s:g} s after the {t:g} s timeout"})
                    done += 1
            if progress:
                progress(done)
    finally:  # free the CPUs the workers hold
        for w in idle + list(starting.values()) + [w for w, *_ in running.values()]:
            ray.kill(w)


def _finish(path: Path, inst: Instance, fields: dict, attempt: int, result: dict, common: dict,
            cex_cache: dict) -> dict:
    """Check a ``sat``, build the record (``fields``: those of its key) and append it to ``records.jsonl``."""
    status, note, cex = result["status"], "", None
    if status not in STATUSES:
        status, note = "error", f"error: the verifier returned the unknown status {status!r}"
    if status == "sat":
        if result.get("cex") is None:
            status, note = "unknown", "sat without a counterexample: downgraded to unknown"
        else:
            try:
                cex, why = confirm_counterexample(inst, result["cex"], cex_cache)
            except Exception as exc:  # unreadable file, onnxruntime failure: the sat cannot be trusted
                cex, why = None, f"check failed ({type(exc).__name__}: {exc})"
            if cex is None:
                status, note = "unknown", f"{why}: downgraded to unknown"
    record = {
        **inst.meta, "onnx": str(inst.onnx), "vnnlib": str(inst.vnnlib), **fields,
        "status": status, "time_s": round(float(result["time_s"]), 4),
        "cex_checked": cex is not None, "margin": result.get("margin"), "attempts": attempt,
        **({"prepare_s": round(result["prepare_s"], 4)} if result.get("prepare_s") is not None else {}),
        "node": result.get("node"), "stage": result.get("stage") if status in ("sat", "unsat") else None,
        "verifier_settings": common["settings"],
        "log": "\n".join(s for s in (result.get("log", ""), note) if s)[-LOG_CHARS:],
        "cex": None if cex is None else cex.tolist(),
        "versions": common["versions"], "host": common["host"],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    append_record(path, record)
    return record
