"""Run verification instances as Ray tasks: driver-enforced timeouts, retries, resume, checked counterexamples.

The driver owns all files: workers only compute a verdict. Each finished instance is appended to
``out_dir/records.jsonl`` at once (flush + fsync), so a killed run resumes where it stopped; the
key of a record is ONNX path + VNN-LIB path + verifier name. Ray set-up lives in ``vsbench.cluster``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vsbench.cluster import init_ray
from vsbench.onnx_io import confirm_counterexample
from vsbench.spec.api import STATUSES, Instance, Verdict
from vsbench.store import append_record, host, read_records, record_key, versions

log = logging.getLogger(__name__)

GRACE_S = 10.0  # extra wall time the driver grants past an instance's timeout before it kills the task
LOG_CHARS = 4000


def _verify_task(verifier, instance: Instance, timeout: float, memory_mb: int | None, cores: int = 1) -> dict:
    """Runs in a Ray worker: build the verifier and decide one instance with ``cores`` torch threads."""
    import resource

    from vsbench.verify.registry import get_verifier

    v = get_verifier(verifier) if isinstance(verifier, str) else verifier()
    if "torch" in sys.modules:  # the task's CPUs only: no intra-op threads fighting the other tasks
        sys.modules["torch"].set_num_threads(cores)
    ok, reason = v.available()
    if not ok:
        return {"status": "error", "time_s": 0.0, "log": f"verifier {v.name} unavailable: {reason}"}
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    start = time.monotonic()
    try:
        if memory_mb:  # soft limit only, restored below: Ray reuses worker processes
            limit = memory_mb * 2**20 if hard == resource.RLIM_INFINITY else min(memory_mb * 2**20, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        verdict: Verdict = v.verify(instance, timeout)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "memory" not in str(exc):
            raise
        return {"status": "error", "time_s": time.monotonic() - start, "log": f"error: out of memory ({exc})"}
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    return _result(verdict)


def _result(verdict: Verdict) -> dict:
    """A worker's verdict as the plain dict the driver records."""
    import ray

    cex = None if verdict.cex is None else np.asarray(verdict.cex, dtype=np.float64).ravel().tolist()
    return {"status": verdict.status, "time_s": float(verdict.time_s), "cex": cex,
            "margin": None if verdict.margin is None else float(verdict.margin), "log": verdict.log,
            "node": ray.get_runtime_context().get_node_id(), "stage": verdict.stage}


# --------------------------------------------------------------------------- fast path (built-in verifier)


def _fast_path_task(instances: list[Instance], config, cores: int, seconds: float) -> dict:
    """Runs in a Ray worker: :func:`vsbench.verify.fastpath.fast_path` on the instances of one model."""
    import torch

    from vsbench.spec.api import Deadline
    from vsbench.verify.fastpath import fast_path

    torch.set_num_threads(cores)
    return {k: _result(v) for k, v in fast_path(instances, config, Deadline(seconds)).items()}


def _fast_path(todo: list[Instance], verifier, cores: int, timeout_cap: float | None) -> dict[str, dict]:
    """``{instance.key: result}`` of what the built-in verifier's fast path decides: one Ray task per
    ONNX model, over all of that model's instances, before they fan out one task each. Empty for
    other verifiers, with ``fast_path`` off, or when a task fails (its instances then go the usual way)."""
    import ray

    from vsbench.verify.registry import get_verifier

    config = getattr(get_verifier(verifier) if isinstance(verifier, str) else verifier, "config", None)
    if config is None or not getattr(config, "fast_path", False):
        return {}
    by_model: dict[str, list[Instance]] = {}
    for inst in todo:
        by_model.setdefault(str(inst.onnx), []).append(inst)
    task = ray.remote(num_cpus=cores, max_retries=0)(_fast_path_task)
    refs = []
    for insts in by_model.values():
        seconds = min(min(i.timeout, timeout_cap or i.timeout) for i in insts)
        refs.append((task.remote(insts, config, cores, seconds), seconds))
    out: dict[str, dict] = {}
    for ref, seconds in refs:
        try:
            out.update(ray.get(ref, timeout=seconds + GRACE_S))
        except (ray.exceptions.RayError, TimeoutError) as exc:  # e.g. an unsupported model
            log.warning("fast path failed (%s); its instances are verified one by one", type(exc).__name__)
            ray.cancel(ref, force=True)
    return out


def _verifier_name(verifier) -> str:
    return verifier if isinstance(verifier, str) else getattr(verifier, "name", verifier.__name__)


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
    beside BaB when it has two or more.
    """
    import ray

    if isinstance(verifier_name, str):
        from vsbench.verify.registry import get_verifier, resolved

        verifier_name = resolved(verifier_name)
    name = _verifier_name(verifier_name)
    if isinstance(verifier_name, str):
        ok, reason = get_verifier(verifier_name).available()  # unknown or unusable: one error here
        if not ok:
            raise ValueError(f"verifier {verifier_name!r} is not available: {reason}")
    path = Path(out_dir) / "records.jsonl"
    keep = {record_key(r): r for r in read_records(path) if "status" in r}
    key = {id(i): f"{i.onnx}::{i.vnnlib}::{name}" for i in instances}
    todo = list({key[id(i)]: i for i in instances if key[id(i)] not in keep}.values())  # once per key
    total = len(set(key.values()))
    done = total - len(todo)
    if progress:
        progress("verify", done, total)
    if todo:
        init_ray(workers and workers * cores, ray_address)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if cores > cpus:
            raise ValueError(f"--cores {cores}: the Ray cluster has {cpus} CPUs")
        capacity = max(1, min(cpus // cores, workers or 10**6))
        task = ray.remote(num_cpus=cores, max_retries=0)(_verify_task)
        common = {"verifier": name, "versions": versions(), "host": host(), "verifier_config": _config_of(verifier_name)}
        cex_cache: dict = {}
        decided = _fast_path(todo, verifier_name, cores, timeout_cap)
        for inst in todo:
            if inst.key in decided:
                t = min(inst.timeout, timeout_cap) if timeout_cap else inst.timeout
                keep[key[id(inst)]] = _finish(path, inst, t, 1, decided[inst.key], common, cex_cache)
                done += 1
        if progress and decided:
            progress("verify", done, total)
        queue = [i for i in todo if i.key not in decided]
        running: dict = {}  # ref -> (instance, timeout, started, attempt)

        def submit(inst: Instance, attempt: int) -> None:
            t = min(inst.timeout, timeout_cap) if timeout_cap else inst.timeout
            running[task.remote(verifier_name, inst, t, memory_mb, cores)] = (inst, t, time.monotonic(), attempt)

        while queue or running:
            while queue and len(running) < capacity:
                submit(queue.pop(0), 1)
            now = time.monotonic()
            wait_s = max(0.0, min(s + t + grace_s for _, t, s, _ in running.values()) - now)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=min(wait_s, 1.0))
            for ref in ready:
                inst, t, started, attempt = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the verifier raised
                    result = {"status": "error", "time_s": time.monotonic() - started,
                              "log": f"error: {getattr(exc, 'cause', None) or exc!r}"[:LOG_CHARS]}
                except ray.exceptions.RayError as exc:  # the worker died (crash, OOM kill, node lost)
                    if attempt <= retries:
                        log.warning("%s: worker died (%s); retrying", inst.vnnlib, type(exc).__name__)
                        submit(inst, attempt + 1)
                        continue
                    result = {"status": "error", "time_s": time.monotonic() - started,
                              "log": f"error: worker died {attempt} times ({type(exc).__name__}: {exc})"[:LOG_CHARS]}
                keep[key[id(inst)]] = _finish(path, inst, t, attempt, result, common, cex_cache)
                done += 1
            now = time.monotonic()
            for ref, (inst, t, started, attempt) in list(running.items()):
                if now > started + t + grace_s:
                    ray.cancel(ref, force=True)
                    del running[ref]
                    result = {"status": "timeout", "time_s": now - started,
                              "log": f"stopped by the runner {grace_s:g} s after the {t:g} s timeout"}
                    keep[key[id(inst)]] = _finish(path, inst, t, attempt, result, common, cex_cache)
                    done += 1
            if progress:
                progress("verify", done, total)
    return [keep[key[id(i)]] for i in instances]


def _config_of(verifier) -> dict | None:
    """The settings of a verifier that has a ``config`` (the built-in one), written into its records."""
    from vsbench.verify.registry import get_verifier

    obj = get_verifier(verifier) if isinstance(verifier, str) else verifier
    config = getattr(obj, "config", None)
    return None if config is None else config.model_dump(mode="json")


def _finish(path: Path, inst: Instance, timeout: float, attempt: int, result: dict, common: dict,
            cex_cache: dict) -> dict:
    """Check a ``sat``, build the record and append it to ``records.jsonl``."""
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
        **inst.meta, "onnx": str(inst.onnx), "vnnlib": str(inst.vnnlib), "verifier": common["verifier"],
        "status": status, "time_s": round(float(result["time_s"]), 4), "timeout": timeout,
        "cex_checked": cex is not None, "margin": result.get("margin"), "attempts": attempt,
        "node": result.get("node"), "stage": result.get("stage") if status in ("sat", "unsat") else None,
        "verifier_config": common["verifier_config"],
        "log": "\n".join(s for s in (result.get("log", ""), note) if s)[-LOG_CHARS:],
        "cex": None if cex is None else cex.tolist(),
        "versions": common["versions"], "host": common["host"],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    append_record(path, record)
    return record
