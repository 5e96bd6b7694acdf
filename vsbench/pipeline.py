"""The suite pipeline behind ``vsbench run``: train -> export -> verify -> report.

Every stage is resumable: a trained model is a folder with a manifest, the benchmark folder is
rebuilt from the models, verification records are appended as instances finish and skipped on
a re-run, and the report is a pure function of the records.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vsbench.suites import MethodSpec, Profile, Suite, default_profile, load_suite


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

        ctx = cls(suite, chosen, run_dir, models_dir, resolve_data_dir(data_dir))  # absolute: workers use it
        ctx.write_manifest()
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
                  transient=False) as bar:
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


def train_models(ctx: RunContext, workers: int | None = None, ray_address: str | None = None) -> None:
    """Train every job whose model folder has no manifest yet (Ray tasks; the driver saves)."""
    from vsbench.data import load_dataset

    todo = [j for j in ctx.jobs() if not (ctx.models_dir / j.name / "manifest.json").is_file()]
    if todo:  # find (or download) the data here, once, so a missing dataset is one clear error
        load_dataset(ctx.suite.dataset, "train", ctx.data_dir, limit=1)
    done = len(ctx.jobs()) - len(todo)
    with progress_bar() as progress:
        progress("train", done, len(ctx.jobs()))
        train_jobs(
            [(j.name, train_config(ctx, j), j.meta(ctx.suite)) for j in todo],
            ctx.models_dir, ctx.data_dir, workers=workers, ray_address=ray_address,
            on_done=lambda n: progress("train", done + n, len(ctx.jobs())),
        )


def _train_one(cfg, meta: dict, data_dir: Path | None, threads: int):
    """Train one model where Ray placed it; returns what the driver saves (workers write nothing)."""
    import torch

    from vsbench.train.loop import train

    torch.set_num_threads(threads)
    result = train(cfg, data_dir=data_dir)
    return result.model, {**meta, "config": cfg.model_dump(), "phases": result.phases, **result.info}


def train_jobs(jobs: list, models_dir: Path, data_dir: Path | None, workers: int | None,
               ray_address: str | None, on_done: Callable[[int], None]) -> None:
    """Train ``[(name, TrainConfig, meta)]`` as Ray tasks, one CPU each (one GPU each with CUDA)."""
    import ray
    import torch

    from vsbench.train.checkpoint import save_checkpoint
    from vsbench.cluster import init_ray

    if not jobs:
        return
    init_ray(workers, ray_address)
    gpus = 1 if torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) >= 1 else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=1)(_train_one)
    threads = 1 if len(jobs) > 1 else max(1, int(ray.available_resources().get("CPU", 1)))
    pending = {remote.remote(cfg, meta, data_dir, threads): name for name, cfg, meta in jobs}
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
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
    instances = read_instances(ctx.benchmark_dir)
    for inst in instances:
        inst.meta.update(meta.get(Path(inst.onnx).stem, {}))
    with progress_bar() as progress:
        chosen = with_options(verifier or ctx.suite.verifier, {**ctx.suite.verifier_options, **(verifier_options or {})})
        return run_verification(instances, chosen, ctx.run_dir,
                                workers=workers, ray_address=ray_address, progress=progress, memory_mb=memory_mb)


def check_inputs(instances) -> None:
    """Fail early, naming the file, if an ONNX model or VNN-LIB property cannot be read at all.

    Models that load but use unsupported operators are left to the verifier (an `error` record).
    """
    import onnx

    from vsbench.spec.vnnlib import read_vnnlib

    for path in sorted({Path(i.onnx) for i in instances}):
        try:
            onnx.load(str(path))
        except Exception as exc:  # protobuf DecodeError, OSError, ...: all mean "not an ONNX model"
            raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    for path in sorted({Path(i.vnnlib) for i in instances}):
        read_vnnlib(path)


def write_report(run_dir: Path):
    """Tables (CSV / Markdown / LaTeX) and plots from the run's records; returns the summary."""
    from vsbench.report.plots import write_plots
    from vsbench.report.tables import load_frames, per_model, summary, write_tables

    df = summary(run_dir)
    write_tables(df, Path(run_dir) / "tables")
    records, models = load_frames(run_dir)
    if not models.empty:
        write_plots(per_model(records, models), Path(run_dir) / "plots")
    return df
