"""The suite pipeline behind ``vsbench run``: train -> export -> verify -> report.

Every stage is resumable: a trained model is a folder with a manifest, the benchmark folder is
rebuilt from the models, verification records are appended as instances finish and skipped on
a re-run (keyed by file contents, so a moved run folder resumes too), and the report is a pure
function of the records. A :class:`RunContext` holds its run folder's lock (one writer at a time)
until it is closed: use it as a context manager.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vsbench.suites import MethodSpec, Profile, Suite, default_profile, load_suite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One model to train: architecture x method x sparsity x seed."""

    arch: str
    method: MethodSpec
    sparsity: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arch}_{self.method.name}_s{self.sparsity:g}_seed{self.seed}"

    def meta(self, suite: Suite) -> dict:
        return {"suite": suite.name, "model": self.name, "arch": self.arch, "method": self.method.name,
                "sparsity": self.sparsity, "seed": self.seed, "eps": suite.eps}


@dataclass
class RunContext:
    suite: Suite
    profile_name: str
    run_dir: Path
    models_dir: Path
    data_dir: Path | None
    started: float = field(default_factory=time.monotonic)
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)  # the run folder's lock

    def __enter__(self) -> "RunContext":
        return self

    def __exit__(self, *exc) -> None:
        self.held.close()

    @property
    def profile(self) -> Profile:
        return self.suite.profile(self.profile_name)

    @property
    def benchmark_dir(self) -> Path:
        return self.run_dir / "benchmark"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @classmethod
    def create(cls, suite_name: str, profile: str | None, out: Path | None, data_dir: Path | None,
               announce: Callable[[str], None] = print) -> "RunContext":
        suite = load_suite(suite_name)
        chosen = profile or default_profile()
        suite.profile(chosen)  # validates the name
        how = "given" if profile else "default: " + ("CUDA available" if chosen == "full" else "no CUDA")
        run_id = f"{suite.name}-{chosen}"
        run_dir = Path(out) if out else Path("results") / run_id
        models_dir = run_dir / "models" if out else Path("models") / run_id
        announce(f"suite {suite.name}, profile {chosen} ({how}); run folder {run_dir}")
        from vsbench.data import resolve_data_dir
        from vsbench.store import run_lock

        data_dir = resolve_data_dir(data_dir)  # absolute: workers use it
        held = contextlib.ExitStack()
        held.enter_context(run_lock(run_dir))  # before anything is written: StoreError if another process has it
        try:
            ctx = cls(suite, chosen, run_dir, models_dir, data_dir, held=held)
            ctx.write_manifest()
        except BaseException:
            held.close()
            raise
        return ctx

    def write_manifest(self) -> None:
        from vsbench.store import write_manifest

        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(self.run_dir / "manifest.json", {
            "suite": self.suite.model_dump(), "profile": self.profile_name,
            "models_dir": str(self.models_dir), "data_dir": str(self.data_dir) if self.data_dir else None,
        })

    def jobs(self) -> list[Job]:
        p = self.profile
        out = []
        for arch in p.archs or self.suite.archs:
            for method in self.suite.methods:
                dense = method.sparsity == [0.0]
                for sparsity in method.sparsity if dense or not p.sparsity else p.sparsity:
                    for seed in p.seeds or self.suite.seeds:
                        out.append(Job(arch, method, sparsity, seed))
        return out


@contextlib.contextmanager
def progress_bar():
    """A rich progress display; yields a callback ``(description, done, total)``."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), transient=False) as bar:
        tasks: dict[str, int] = {}

        def update(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done, total=total)

        yield update


# --------------------------------------------------------------------------- train


def train_config(ctx: RunContext, job: Job):
    from vsbench.train.loop import TrainConfig

    s = ctx.suite
    settings = {"train_eps": s.train_eps or s.eps, **ctx.profile.train}  # a profile may override train_eps
    return TrainConfig(dataset=s.dataset, arch=job.arch, method=job.method.name, sparsity=job.sparsity,
                       seed=job.seed, eps=s.eps, method_options=job.method.options, **settings)


STARTS_FROM_DENSE = ("hydra", "prune-after")  # methods whose papers prune a pretrained dense net


def dense_parent(ctx: RunContext, job: Job) -> str | None:
    """The suite's dense model that ``job`` starts from instead of pretraining its own: HYDRA and
    prune-after with a full-length pretraining (``pretrain_frac`` 1) train exactly that model first
    (same arch, seed, schedule); the table still charges them its training time. None otherwise
    (or for BatchNorm nets, whose saved dense model has BatchNorm folded in)."""
    dense = next((m for m in ctx.suite.methods if m.name == "dense"), None)
    if (dense is None or job.method.name not in STARTS_FROM_DENSE or job.arch.endswith("-bn")
            or job.method.options.get("pretrain_frac", 1.0) != 1.0):
        return None
    return Job(job.arch, dense, 0.0, job.seed).name


def train_models(ctx: RunContext, workers: int | None = None, ray_address: str | None = None) -> None:
    """Train every job whose model folder has no manifest yet (Ray tasks; the driver saves)."""
    from vsbench.data import load_dataset

    todo = [j for j in ctx.jobs() if not (ctx.models_dir / j.name / "manifest.json").is_file()]
    if todo:  # find (or download) the data here, once, so a missing dataset is one clear error
        load_dataset(ctx.suite.dataset, "train", ctx.data_dir, limit=1)
    done = len(ctx.jobs()) - len(todo)
    with progress_bar() as progress:
        progress("train (models)", done, len(ctx.jobs()))

        def on_epoch(name: str, row: dict) -> None:
            log.info("%s %s", name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            progress(f"  {name} {row['phase']}", row["epoch"] + 1, row["epochs"])

        train_jobs(
            [(j.name, train_config(ctx, j), j.meta(ctx.suite), dense_parent(ctx, j)) for j in todo],
            ctx.models_dir, ctx.data_dir, workers=workers, ray_address=ray_address,
            on_done=lambda n: progress("train (models)", done + n, len(ctx.jobs())), on_epoch=on_epoch,
        )


def _train_one(cfg, meta: dict, data_dir: Path | None, events, pretrained: dict | None):
    """Train one model where Ray placed it; returns what the driver saves (workers write nothing).
    Each epoch's history row goes to the driver through ``events`` (a Ray queue)."""
    import ray
    from ray.util.queue import Full

    from vsbench.train.loop import train

    def on_epoch(row: dict) -> None:
        try:
            events.put((meta["model"], row), timeout=5)
        except (ray.exceptions.RayError, Full) as exc:  # progress display only: never fail training
            log.debug("epoch event lost: %s", exc)

    result = train(cfg, data_dir=data_dir, on_epoch=on_epoch, pretrained=pretrained)
    return result.model, {**meta, "config": cfg.model_dump(), "phases": result.phases,
                          "history": result.history, **result.info}


def pretrained_from(folder: Path) -> dict:
    """What :meth:`vsbench.train.loop.Trainer.pretrain` starts from: a saved dense model."""
    from vsbench.train.checkpoint import load_checkpoint

    model, manifest = load_checkpoint(folder)
    return {"state_dict": model.state_dict(), "phases": manifest["phases"], "history": manifest.get("history", [])}


def train_jobs(jobs: list, models_dir: Path, data_dir: Path | None, workers: int | None,
               ray_address: str | None, on_done: Callable[[int], None],
               on_epoch: Callable[[str, dict], None] | None = None) -> None:
    """Train ``[(name, TrainConfig, meta, parent)]`` as Ray tasks, one CPU each (one GPU each with
    CUDA); a job with a ``parent`` (a dense model's name) starts once that model is saved."""
    import ray
    import torch
    from ray.util.queue import Queue

    from vsbench.cluster import init_ray
    from vsbench.train.checkpoint import save_checkpoint

    if not jobs:
        return
    init_ray(workers, ray_address)
    gpus = 1 if torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) >= 1 else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=1)(_train_one)
    events = Queue(actor_options={"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1})
    pending, waiting = {}, []

    def submit(name, cfg, meta, parent) -> None:
        pretrained = pretrained_from(models_dir / parent) if parent else None
        pending[remote.remote(cfg, meta, data_dir, events, pretrained)] = name

    for name, cfg, meta, parent in jobs:
        if parent and not (models_dir / parent / "manifest.json").is_file():
            waiting.append((name, cfg, meta, parent))
        else:
            submit(name, cfg, meta, parent)
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        while on_epoch and not events.empty():
            on_epoch(*events.get_nowait())
        if not ready:
            continue
        name = pending.pop(ready[0])
        try:
            model, manifest = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            raise RuntimeError(f"training {name} failed: {exc.cause!r}") from None
        except ray.exceptions.RayError as exc:  # the worker died twice (crash, OOM kill, node lost)
            raise RuntimeError(f"training {name} failed: {type(exc).__name__}: {exc}") from None
        save_checkpoint(models_dir / name, model, manifest)
        finished += 1
        on_done(finished)
        for job in [j for j in waiting if j[3] == name]:
            waiting.remove(job)
            submit(*job)


# --------------------------------------------------------------------------- export


def export_models(ctx: RunContext, vnncomp_dir: Path | None = None) -> Path:
    """ONNX + VNN-LIB benchmark folder for all trained models, and ``models.jsonl`` with their stats."""
    from vsbench.data import load_dataset
    from vsbench.export.benchmark import choose_indices, write_benchmark
    from vsbench.export.onnx import onnx_stats
    from vsbench.store import write_records
    from vsbench.train.checkpoint import load_checkpoint
    from vsbench.train.evaluate import evaluate, pgd_accuracy

    s, p = ctx.suite, ctx.profile
    images, labels = load_dataset(s.dataset, "test", ctx.data_dir)
    indices = choose_indices(len(labels), p.properties, s.property_seed)
    models, rows = {}, []
    with progress_bar() as progress:
        jobs = ctx.jobs()
        for n, job in enumerate(jobs):
            folder = ctx.models_dir / job.name
            if not (folder / "manifest.json").is_file():
                raise FileNotFoundError(f"{folder}: model not trained yet (run `vsbench train` first)")
            model, manifest = load_checkpoint(folder)
            models[job.name] = (model, tuple(manifest["in_shape"]))
            rows.append({
                **job.meta(s),
                "clean_acc": evaluate(model, images, labels),
                "pgd_acc": pgd_accuracy(model, images[indices], labels[indices], s.eps),
                "n_properties": len(indices),
                "train_s": sum(manifest["phases"].values()),
                "phases": manifest["phases"],
                "actual_sparsity": manifest.get("sparsity"),
                "history": manifest.get("history", []),
            })
            progress("export", n + 1, len(jobs))
    bench = vnncomp_dir or ctx.benchmark_dir
    write_benchmark(bench, models, images, labels, indices, s.eps, p.timeout,
                    {"suite": s.name, "dataset": s.dataset, "property_seed": s.property_seed})
    for row in rows:
        row.update(onnx_stats(bench / "onnx" / f"{row['model']}.onnx"))
    write_records(ctx.run_dir / "models.jsonl", rows)
    return bench


# --------------------------------------------------------------------------- verify / report


def verify_models(ctx: RunContext, workers: int | None = None, ray_address: str | None = None,
                  verifier: str | None = None, memory_mb: int | None = None,
                  verifier_options: dict | None = None) -> list[dict]:
    """Verify every instance of the run's benchmark folder; records land in ``run_dir/records.jsonl``.
    ``verifier_options`` override the suite's ``verifier_options`` key by key."""
    from vsbench.export.benchmark import read_instances
    from vsbench.verify.registry import with_options
    from vsbench.verify.runner import run_verification

    meta = {}
    for line in (ctx.run_dir / "models.jsonl").read_text().splitlines():
        row = json.loads(line)
        meta[row["model"]] = {k: row[k] for k in ("suite", "model", "arch", "method", "sparsity", "seed", "eps")}
    instances = read_instances(ctx.benchmark_dir, allow_empty=True)
    for inst in instances:
        inst.meta.update(meta.get(Path(inst.onnx).stem, {}))
    with progress_bar() as progress:
        chosen = with_options(ctx.suite.verifier_name(verifier),
                              {**ctx.suite.verifier_options, **(verifier_options or {})})
        return run_verification(instances, chosen, ctx.run_dir,
                                workers=workers, ray_address=ray_address, progress=progress, memory_mb=memory_mb)


def check_inputs(instances) -> None:
    """Fail early, naming the file, if an ONNX model or VNN-LIB property cannot be read at all.

    Models that load but use unsupported operators are left to the verifier (an `error` record).
    """
    import onnx

    from vsbench.spec.vnnlib import read_vnnlib

    from vsbench.gz import plain_path

    for path in sorted({Path(i.onnx) for i in instances}):
        try:
            model = onnx.load(str(plain_path(path)))  # .onnx.gz: its decompressed copy
        except Exception as exc:  # protobuf DecodeError, OSError, ...: all mean "not an ONNX model"
            raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
        if not model.graph.input:  # a 0-byte file parses as an empty model
            raise ValueError(f"{path}: not an ONNX model (no graph; the file has {path.stat().st_size} bytes)")
    for path in sorted({Path(i.vnnlib) for i in instances}):
        read_vnnlib(path)


def write_report(run_dir: Path):
    """Tables (CSV / Markdown / LaTeX) and plots from the run's records; returns the summary."""
    from vsbench.report.plots import write_plots
    from vsbench.report.tables import benchmark_summary, load_frames, per_model, summarize, write_tables

    records, models = load_frames(run_dir)
    if models.empty:  # a plain benchmark folder (`vsbench verify`)
        df = benchmark_summary(records)
        write_tables(df, Path(run_dir) / "tables")
        return df
    rows = per_model(records, models)
    df = summarize(rows)
    write_tables(df, Path(run_dir) / "tables")
    write_plots(df, rows, models, records, Path(run_dir) / "plots")
    return df
