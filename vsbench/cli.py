"""The ``vsbench`` command line: run, train, export, verify, report, compare, suites, audit, check-benchmark."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from vsbench.store import StoreError  # run folder locked by another process, disk full

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Verification-centric benchmarking of sparse, certified-robust neural networks.",
)
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 10_000)
log = logging.getLogger("vsbench")

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError, StoreError)


def user_errors(fn):
    """Turn bad input into one clear line on stderr and exit code 2 (traceback with VSBENCH_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("VSBENCH_DEBUG"):
                raise
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished results are saved; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper


def check_options(timeout: float | None = None, out: Path | None = None, ray_address: str | None = None) -> None:
    """``ValueError`` (one error line) for a timeout that is not a positive number of seconds, an
    ``--out`` that names a file, or a Ray address where nothing listens; before any work starts."""
    import math

    from vsbench.cluster import check_address

    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"--timeout {timeout:g}: must be a positive number of seconds")
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out names a file; give a folder (it is created when missing)")
    if ray_address:
        check_address(ray_address)


def print_table(df, title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------- suites / run


@app.command()
@user_errors
def suites(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the suites in specs/."""
    import pandas as pd

    from vsbench.suites import describe, list_suites

    rows = [describe(p) for p in list_suites()]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(pd.DataFrame(rows), "suites (vsbench run --suite NAME)")


SUITE = typer.Option(..., "--suite", "-s", help="Suite name (specs/NAME.yaml) or path to a suite YAML.")
PROFILE = typer.Option(None, "--profile", "-p", help="quick (2-core CPU) or full (paper scale); default: full with CUDA, else quick.")
OUT = typer.Option(None, "--out", "-o", help="Run folder (default results/SUITE-PROFILE; models under models/SUITE-PROFILE).")
WORKERS = typer.Option(None, "--workers", "-w", help="Parallel Ray workers (default: all CPUs).")
RAY = typer.Option(None, "--ray-address", help="Existing Ray cluster address (or set RAY_ADDRESS); default: local Ray.")
MEMORY = typer.Option(None, "--memory-mb", help="Memory cap per verification instance (MiB); over it -> error: out of memory.")
VOPTION = typer.Option([], "--verifier-option", help="KEY=VALUE setting of the built-in verifier (repeatable; see vsbench/verify/config.py).")
VCONFIG = typer.Option(None, "--verifier-config", help="YAML file of built-in verifier settings (--verifier-option wins); "
                       "with --verifier abcrown, alpha-beta-CROWN's own config for the benchmark.")
DATA = typer.Option(None, "--data-dir", help="Dataset folder (else $VSBENCH_DATA, else the user cache with download).")


def _verifier_options(config_file: Optional[Path], pairs: list[str]) -> dict:
    from vsbench.verify.config import load_options, parse_options

    return {**(load_options(config_file) if config_file else {}), **parse_options(pairs)}


def _run_context(suite: str, profile: Optional[str], out: Optional[Path], data_dir: Optional[Path]):
    from vsbench.pipeline import RunContext

    return RunContext.create(suite, profile, out, data_dir, announce=lambda m: console.print(m))


@app.command()
@user_errors
def run(
    suite: str = SUITE,
    profile: Optional[str] = PROFILE,
    out: Optional[Path] = OUT,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY,
    data_dir: Optional[Path] = DATA,
    verifier: Optional[str] = typer.Option(None, "--verifier", help="Verifier name (default: the suite's)."),
    memory_mb: Optional[int] = MEMORY,
    verifier_option: list[str] = VOPTION,
    verifier_config: Optional[Path] = VCONFIG,
):
    """Train, export, verify and report a whole suite (resumes where a previous run stopped)."""
    from vsbench.pipeline import export_models, train_models, verify_models, write_report
    from vsbench.suites import load_suite
    from vsbench.verify.registry import with_options

    check_options(out=out, ray_address=ray_address)
    chosen = load_suite(suite)
    if (verifier or chosen.verifier) == "abcrown" and verifier_config is not None and not verifier_option:
        verifier, verifier_config = f"abcrown:{verifier_config.resolve()}", None  # the tool's own per-benchmark YAML
    options = _verifier_options(verifier_config, verifier_option)
    with_options(verifier or chosen.verifier, {**chosen.verifier_options, **options})  # bad options: before any work
    with _run_context(suite, profile, out, data_dir) as ctx:
        train_models(ctx, workers=workers, ray_address=ray_address)
        export_models(ctx)
        verify_models(ctx, workers=workers, ray_address=ray_address, verifier=verifier, memory_mb=memory_mb,
                      verifier_options=options)
        df = write_report(ctx.run_dir)
    print_table(df.round(2), f"{ctx.suite.name} ({ctx.profile_name})")
    console.print(f"tables: {ctx.run_dir / 'tables'}  plots: {ctx.run_dir / 'plots'}  wall: {ctx.elapsed():.0f} s")


@app.command()
@user_errors
def train(
    suite: str = SUITE,
    profile: Optional[str] = PROFILE,
    out: Optional[Path] = OUT,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY,
    data_dir: Optional[Path] = DATA,
):
    """Train the suite's models (skips models already trained)."""
    from vsbench.pipeline import train_models

    check_options(out=out, ray_address=ray_address)
    with _run_context(suite, profile, out, data_dir) as ctx:
        train_models(ctx, workers=workers, ray_address=ray_address)
    console.print(f"models: {ctx.models_dir}")


@app.command()
@user_errors
def export(
    suite: str = SUITE,
    profile: Optional[str] = PROFILE,
    out: Optional[Path] = OUT,
    data_dir: Optional[Path] = DATA,
    vnncomp: Optional[Path] = typer.Option(None, "--vnncomp", help="Write the VNN-COMP benchmark folder here instead of RUN/benchmark."),
    gzip: bool = typer.Option(False, "--gzip", help="With --vnncomp: write onnx/*.onnx.gz and vnnlib/*.vnnlib.gz."),
):
    """Export trained models to ONNX and their properties to VNN-LIB (+ instances.csv)."""
    from vsbench.pipeline import export_models

    if gzip and vnncomp is None:
        raise ValueError("--gzip needs --vnncomp DIR (the run's own benchmark folder stays uncompressed)")
    check_options(out=out)
    with _run_context(suite, profile, out, data_dir) as ctx:
        bench = export_models(ctx, vnncomp_dir=vnncomp)
    if gzip:
        from vsbench.export.benchmark import gzip_benchmark

        gzip_benchmark(bench)
    console.print(f"benchmark: {vnncomp or bench}")


# --------------------------------------------------------------------------- verify / report


@app.command()
@user_errors
def verify(
    benchmark_dir: Path = typer.Argument(..., help="A VNN-COMP benchmark folder with instances.csv."),
    filter: Optional[str] = typer.Option(None, "--filter", help="Only instances whose onnx or vnnlib path contains this."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Cap on the per-instance timeout (s)."),
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where records.jsonl goes (default results/verify-DIRNAME)."),
    verifier: str = typer.Option("builtin", "--verifier", help="builtin, marabou, abcrown or vnncomp:TOOL_DIR."),
    memory_mb: Optional[int] = MEMORY,
    cores: int = typer.Option(1, "--cores", min=1, help="CPUs per instance (builtin: 2+ runs clause MILPs beside BaB)."),
    as_json: bool = typer.Option(False, "--json", help="Print the records as JSON lines."),
    category: Optional[str] = typer.Option(None, "--category", help="VNN-COMP category passed to a vnncomp: "
                                           "tool's scripts (default: the benchmark folder's name)."),
    verifier_option: list[str] = VOPTION,
    verifier_config: Optional[Path] = VCONFIG,
):
    """Verify every instance of a VNN-COMP benchmark folder, in parallel with Ray."""
    from vsbench.export.benchmark import read_instances
    from vsbench.report.tables import benchmark_summary
    from vsbench.pipeline import check_inputs, progress_bar
    from vsbench.verify.registry import with_options
    from vsbench.verify.runner import run_verification

    import pandas as pd

    check_options(timeout, out, ray_address)
    if verifier == "abcrown" and verifier_config is not None and not verifier_option:
        chosen = f"abcrown:{verifier_config}"  # the tool's own per-benchmark YAML
    else:
        chosen = with_options(verifier, _verifier_options(verifier_config, verifier_option))
    instances = read_instances(benchmark_dir, only=filter, category=category)
    check_inputs(instances)
    out = out or Path("results") / f"verify-{Path(benchmark_dir).resolve().name}"
    with progress_bar() as progress:
        records = run_verification(instances, chosen, out, workers=workers, ray_address=ray_address,
                                   timeout_cap=timeout, progress=progress, memory_mb=memory_mb, cores=cores)
    if as_json:
        for r in records:
            print(json.dumps(r))
        return
    print_table(benchmark_summary(pd.DataFrame(records)), f"{benchmark_dir} ({verifier})")
    console.print(f"records: {out / 'records.jsonl'}")


@app.command()
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run folder (with records.jsonl)."),
    vnncomp: bool = typer.Option(False, "--vnncomp", help="Also write RUN/vnncomp/VERIFIER/: results.csv, "
                                 ".counterexample files and cactus.csv, in VNN-COMP's formats."),
):
    """Rebuild the tables and plots of a run from its records alone."""
    from vsbench.pipeline import write_report

    if not (run_dir / "records.jsonl").is_file() and not (run_dir / "models.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir}: no records.jsonl or models.jsonl (not a vsbench run folder)")
    if vnncomp:
        from vsbench.report.vnncomp import write_vnncomp

        for verifier, folder in write_vnncomp(run_dir).items():
            console.print(f"{verifier}: {folder / 'results.csv'}")
    print_table(write_report(run_dir).round(2), str(run_dir))
    console.print(f"tables: {run_dir / 'tables'}")


@app.command()
@user_errors
def compare(
    base_run: Path = typer.Argument(..., help="Baseline run folder."),
    cand_run: Path = typer.Argument(..., help="Candidate run folder (same test images and eps)."),
    tol: float = typer.Option(2.0, "--tol", help="Allowed drop in verified accuracy, in points (widened to 2x the baseline's seed spread)."),
    against: Optional[str] = typer.Option(None, "--against", help="Pair every candidate row with this baseline "
                                          "method at the same sparsity (e.g. a zoo run against verisparse)."),
    as_json: bool = typer.Option(False, "--json", help="Every column, machine-readable."),
):
    """Paired regression gate: exit 1 when a row's verified accuracy drops beyond the tolerance and
    significantly (exact McNemar over the same images, Holm-corrected, p < 0.05)."""
    from vsbench.report.compare import compare as compare_runs

    df = compare_runs(base_run, cand_run, tol / 100, against)
    if as_json:
        print(df.to_json(orient="records", indent=1))
    else:
        shown = ["arch", "method", "sparsity", "verifier", "baseline", "N pairs", "verified base %",
                 "verified cand %", "Δ verified", "Δ lo", "Δ hi", "p Holm", "why"]
        table = df[shown].round({c: 1 for c in shown[6:11]}).assign(**{"p Holm": df["p Holm"].map("{:.2g}".format)})
        print_table(table, f"{cand_run} vs {base_run}")
    worse = df[df["worse"]]
    if len(worse):
        err_console.print(f"candidate worse than baseline on {len(worse)} row(s) (tolerance {tol:g} points, "
                          "significant after Holm correction)")
        raise typer.Exit(1)


@app.command()
@user_errors
def audit(
    benchmark_dir: Path = typer.Argument(..., help="A VNN-COMP benchmark folder with instances.csv."),
    verifiers: str = typer.Option("builtin,marabou", "--verifiers", help="Comma-separated verifier names."),
    filter: Optional[str] = typer.Option(None, "--filter", help="Only instances whose onnx or vnnlib path contains this."),
    timeout: float = typer.Option(60.0, "--timeout", help="Cap on the per-instance timeout (s)."),
    workers: Optional[int] = WORKERS,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Default results/audit-DIRNAME."),
    max_errors: Optional[float] = typer.Option(None, "--max-errors", min=0.0, max=1.0,
                                               help="Fail when a verifier errs on more than this fraction of the"
                                                    " instances (default 0.1)."),
    min_compared: Optional[int] = typer.Option(None, "--min-compared", min=0,
                                               help="Fail when a pair of verifiers compared fewer instances (answered"
                                                    " by both without error); default: all of them."),
):
    """Run several verifiers on a benchmark; exit 1 on any disagreement (a replayed sat beats an unsat),
    or when too little was compared (see --max-errors, --min-compared)."""
    from vsbench.pipeline import progress_bar
    from vsbench.verify.audit import audit as run_audit
    from vsbench.verify.audit import coverage, coverage_problems

    check_options(timeout, out)
    names = [v.strip() for v in verifiers.split(",") if v.strip()]
    out = out or Path("results") / f"audit-{Path(benchmark_dir).resolve().name}"
    with progress_bar() as progress:
        table = run_audit(benchmark_dir, names, timeout, out, workers=workers, progress=progress, only=filter)
    print_table(table.drop(columns=["onnx"]) if table["onnx"].nunique() == 1 else table, f"audit of {benchmark_dir}")
    print_table(coverage(table, names), "compared")
    bad = table[table["disagreement"] != ""]
    problems = coverage_problems(table, names, max_errors, min_compared)
    console.print(f"audit table: {out / 'audit.csv'}")
    for problem in problems:
        err_console.print(f"too little compared: {problem}", markup=False, highlight=False)
    if len(bad):
        err_console.print(f"{len(bad)} disagreement(s) between verifiers")
    if len(bad) or problems:
        raise typer.Exit(1)


@app.command("check-benchmark")
@user_errors
def check_benchmark(benchmark_dir: Path = typer.Argument(..., help="A VNN-COMP benchmark folder.")):
    """Validate a VNN-COMP benchmark folder: files, ONNX runs, VNN-LIB parses, sizes match, timeouts."""
    from vsbench.export.check import check_benchmark as check

    warnings: list[str] = []
    problems = check(benchmark_dir, warnings)
    for w in warnings:
        err_console.print(f"{benchmark_dir}: warning: {w}", markup=False, highlight=False)
    for p in problems:
        err_console.print(f"{benchmark_dir}: {p}", markup=False, highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"{benchmark_dir}: ok")


def entry() -> None:
    """Console-script entry point."""
    app(prog_name="vsbench")


if __name__ == "__main__":
    sys.exit(entry())
