"""VNN-COMP benchmark folders: ``onnx/``, ``vnnlib/``, ``instances.csv``, ``generate_properties.py``.

``instances.csv`` rows are ``onnx,vnnlib,timeout`` with paths relative to the folder. A model gets
a row only for the images it classifies correctly; the others are listed in ``misclassified.json``
(verified accuracy counts them as failures).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from vsbench.export.onnx import export_onnx
from vsbench.onnx_io import run_onnx
from vsbench.spec.api import Instance
from vsbench.spec.vnnlib import robustness_property, write_vnnlib
from vsbench.store import write_manifest


class BenchmarkError(ValueError):
    """A benchmark folder or ``instances.csv`` that cannot be used; the message names the file."""


def choose_indices(n_test: int, n: int, seed: int) -> list[int]:
    """``n`` distinct test-set indices drawn by ``seed`` (a larger ``n`` extends a smaller one)."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n_test)[:n]]


def _pixels(images, i: int) -> np.ndarray:
    x = images[i]
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255)  # as the float32 model input (and vsbench.data) has it
    return x.astype(np.float64)


def property_name(index: int, eps: float) -> str:
    return f"prop_{index}_eps{eps:g}.vnnlib"


README = """# vsbench benchmark (VNN-COMP layout)

{models} ONNX models (`onnx/`, input in pixel scale [0, 1], normalisation inside the model) and
{n} L-inf local-robustness properties (`vnnlib/`, VNN-LIB 1.0, eps {eps:g} clipped to [0, 1]).
`instances.csv` lists (onnx, vnnlib, timeout = {timeout:g} s) for every image a model classifies
correctly; `misclassified.json` names the others. `python generate_properties.py SEED [DATA_DIR]`
regenerates the properties from a seed (Python 3.8+ with numpy; downloads and checks the test set
unless DATA_DIR holds it). Provenance: {meta}.
"""


def write_benchmark(out_dir: str | Path, models: dict, images, labels, indices, eps: float, timeout: float,
                    meta: dict | None = None) -> list[Instance]:
    """Write a VNN-COMP folder for ``models`` (name -> (nn.Module, in_shape)) on test images ``indices``.

    ``images`` are in pixel scale [0, 1] (uint8 is divided by 255 in float32); one property per image, shared
    by all models. ``meta`` (suite, dataset, property_seed, ...) is kept in ``properties.json``.
    Returns the instances, as ``read_instances`` would.
    """
    out = Path(out_dir)
    for name, (model, shape) in sorted(models.items()):
        export_onnx(model, tuple(shape), out / "onnx" / f"{name}.onnx")
    _write_text(out / "generate_properties.py", (Path(__file__).parent / "generate_properties.py").read_text())
    _write_standalone_inputs(out, sorted(models), images, (meta or {}).get("dataset"))
    _write_text(out / "README.md", README.format(models=len(models), n=len(indices), eps=eps, timeout=timeout,
                                                 meta=json.dumps(meta or {})))
    return write_properties(out, sorted(models), images, labels, indices, eps, timeout, meta)


def write_properties(out_dir: str | Path, names: list[str], images, labels, indices, eps: float, timeout: float,
                     meta: dict | None = None) -> list[Instance]:
    """(Re)write ``vnnlib/``, ``instances.csv``, ``misclassified.json``, ``properties.json`` for ``onnx/<names>``."""
    out = Path(out_dir)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    for old in (out / "vnnlib").glob("prop_*.vnnlib"):
        old.unlink()
    props = {int(i): (_pixels(images, i), int(labels[i]), f"vnnlib/{property_name(i, eps)}") for i in indices}
    rows, wrong, written = [], {}, set()
    for name in names:
        path = out / "onnx" / f"{name}.onnx"
        wrong[name] = []
        for i, (x, label, vnn_rel) in props.items():
            y = run_onnx(path, x)
            if vnn_rel not in written:
                prop = robustness_property(x, label, eps, y.size)
                write_vnnlib(out / vnn_rel, prop, f"vsbench local robustness: test image {i}, label {label}, "
                                                  f"L-inf eps {eps:g} clipped to [0, 1]")
                written.add(vnn_rel)
            if int(np.argmax(y)) == label:
                rows.append((f"onnx/{name}.onnx", vnn_rel, timeout))
            else:
                wrong[name].append(i)
    info = {"eps": eps, "timeout": timeout, "n": len(props), "indices": list(props), "meta": meta or {},
            "properties": {rel: {"property": i, "label": label, "eps": eps} for i, (_, label, rel) in props.items()}}
    _write_text(out / "properties.json", json.dumps(info, indent=1) + "\n")
    _write_text(out / "misclassified.json", json.dumps(wrong, indent=1) + "\n")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows((o, v, f"{t:g}") for o, v, t in rows)
    _write_text(out / "instances.csv", buf.getvalue())
    files = [out / "onnx" / f"{n}.onnx" for n in names] + [out / rel for _, _, rel in props.values()]
    write_manifest(out / "manifest.json", {k: v for k, v in info.items() if k != "properties"},
                   files + [out / "instances.csv"])
    return read_instances(out, allow_empty=True)  # empty when every image is misclassified


def regenerate(bench_dir: str | Path, seed: int, data_dir: str | Path | None = None) -> list[Instance]:
    """Redraw the folder's properties with ``seed`` (same dataset, count, eps, timeout and models)."""
    from vsbench.data import load_dataset

    out = Path(bench_dir)
    try:
        info = json.loads((out / "properties.json").read_text())
        dataset, n, eps, timeout = info["meta"].get("dataset", "mnist"), info["n"], info["eps"], info["timeout"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BenchmarkError(f"{out / 'properties.json'}: missing or unreadable ({exc})") from None
    images, labels = load_dataset(dataset, "test", data_dir)
    names = sorted(p.stem for p in (out / "onnx").glob("*.onnx"))
    return write_properties(out, names, images, labels, choose_indices(len(labels), n, seed), eps, timeout,
                            {**info["meta"], "property_seed": seed})


def _write_standalone_inputs(out: Path, names: list[str], images, dataset: str | None) -> None:
    """What ``generate_properties.py`` reads besides ``properties.json``: ``predictions.json`` (each model's
    class for every test image, by onnxruntime, with the model's sha256) and ``dataset.json`` (the test
    set's files, sha256 and mirrors, from ``vsbench.data``)."""
    from vsbench.data import DATASETS
    from vsbench.store import sha256

    outputs = {n: [run_onnx(out / "onnx" / f"{n}.onnx", _pixels(images, i)) for i in range(len(images))]
               for n in names}
    n_classes = next((ys[0].size for ys in outputs.values() if ys), 0)
    if not 0 < n_classes <= 10:
        return  # generate_properties.py stores one digit per prediction
    predicted = {n: "".join(str(int(np.argmax(y))) for y in ys) for n, ys in outputs.items()}
    _write_text(out / "predictions.json", json.dumps({"n_classes": n_classes, "predicted": predicted,
                                                      "sha256": {n: sha256(out / "onnx" / f"{n}.onnx") for n in names}}) + "\n")
    if dataset in DATASETS:
        info = DATASETS[dataset]
        _write_text(out / "dataset.json", json.dumps({"folder": info.folder, "files": list(info.files["test"]),
                                                      "sha256": info.sha256, "mirrors": list(info.mirrors)}, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _instances_csv(root: Path) -> Path:
    if (root / "instances.csv").is_file():
        return root / "instances.csv"
    found = sorted(root.glob("*instances.csv"))
    if len(found) != 1:
        raise BenchmarkError(f"{root}: no instances.csv (not a VNN-COMP benchmark folder)"
                             if not found else f"{root}: several *instances.csv files: {[f.name for f in found]}")
    return found[0]


def _inside(root: Path, rel: str, csv_path: Path, line: int) -> Path:
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        raise BenchmarkError(f"{csv_path}:{line}: path {rel!r} must be relative and stay inside the folder")
    full = root / p
    if not full.resolve().is_relative_to(root.resolve()):
        raise BenchmarkError(f"{csv_path}:{line}: path {rel!r} leaves the folder (through a link)")
    if not full.is_file():
        raise BenchmarkError(f"{csv_path}:{line}: file {rel!r} does not exist")
    return full.absolute()  # Ray workers and subprocesses do not share the caller's working folder


def _stem(rel: str) -> str:
    """``onnx/net.onnx.gz`` -> ``net``."""
    name = Path(rel).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name.removesuffix(suffix)
    return name


def read_instances(bench_dir: str | Path, only: str | None = None, category: str | None = None,
                   allow_empty: bool = False) -> list[Instance]:
    """Instances of a VNN-COMP folder's ``instances.csv`` (or its one ``*instances.csv``).

    Paths must be relative and stay inside the folder and the files must exist; timeouts must be
    positive. Meta (model, property, label, eps) comes from ``properties.json`` when present.
    ``only`` keeps the instances whose onnx or vnnlib path, as written in the CSV, contains it.
    ``meta["category"]`` (the VNN-COMP category passed to tools) is ``category``, default the folder's name.
    A file listing no instance is an error unless ``allow_empty`` (a run whose models misclassify
    every image writes one).
    """
    root = Path(bench_dir)
    if not root.is_dir():
        raise BenchmarkError(f"{root}: benchmark folder does not exist")
    path = _instances_csv(root)
    props = {}
    if (root / "properties.json").is_file():
        try:
            props = json.loads((root / "properties.json").read_text())["properties"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BenchmarkError(f"{root / 'properties.json'}: unreadable ({exc})") from None
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BenchmarkError(f"{path}: not a CSV text file ({exc})") from None
    out = []
    for line, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if not any(row) or (line == 1 and row[:2] == ["onnx", "vnnlib"]):  # blank line or header
            continue
        if len(row) != 3:
            raise BenchmarkError(f"{path}:{line}: expected 3 columns (onnx, vnnlib, timeout), got {len(row)}")
        try:
            timeout = float(row[2])
        except ValueError:
            raise BenchmarkError(f"{path}:{line}: timeout {row[2]!r} is not a number") from None
        if not timeout > 0 or timeout == float("inf"):
            raise BenchmarkError(f"{path}:{line}: timeout must be positive and finite, got {row[2]}")
        if only is not None and only not in row[0] and only not in row[1]:
            continue
        onnx, vnnlib = _inside(root, row[0], path, line), _inside(root, row[1], path, line)
        meta = {"model": _stem(row[0]), "category": category or root.resolve().name, **props.get(row[1], {})}
        out.append(Instance(onnx, vnnlib, timeout, meta))
    if only is not None and not out:
        raise BenchmarkError(f"{path}: no instance matches {only!r}")
    if not out and not allow_empty:
        raise BenchmarkError(f"{path}: lists no instances")
    return out

