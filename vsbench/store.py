"""Results on disk: ``results/<suite>/<run-id>/`` folders, manifests and append-only JSON-lines records.

A record is one JSON line written with flush + fsync, so a crash loses at most the line being
written; ``read_records`` skips a truncated last line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = ("vsbench", "torch", "numpy", "onnx", "onnxruntime", "ray", "highspy")


def run_dir(root: str | Path, suite: str, run_id: str) -> Path:
    """``root/<suite>/<run-id>/``, created."""
    path = Path(root) / suite / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages results depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def host() -> dict:
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()}


def git_hash(cwd: str | Path | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` when it has local changes), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(path: str | Path, config: dict, files: list[str | Path] | None = None) -> dict:
    """Write ``manifest.json``: the config plus versions, host, git hash, command line and time.

    ``files`` get their SHA-256 recorded, keyed by their path relative to the manifest's folder.
    """
    path = Path(path)
    manifest = {"config": config, "versions": versions(), "host": host(), "git": git_hash(),
                "argv": sys.argv, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if files:
        manifest["sha256"] = {Path(f).relative_to(path.parent).as_posix(): sha256(f) for f in sorted(map(Path, files))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return manifest


def append_record(path: str | Path, record: dict) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=_jsonable) + "\n"
    with open(path, "a") as f:
        if f.tell() and not _ends_with_newline(path):
            f.write("\n")  # a previous crash left a partial line: keep it separate
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_records(path: str | Path, records: list[dict]) -> None:
    """Replace ``path`` by these records (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_records(path: str | Path) -> list[dict]:
    """All records of a JSON-lines file ([] if absent); unparsable lines (a crash mid-write) are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a truncated record", path, n)
    return out


def record_key(record: dict) -> str:
    """The identity of a verification: ONNX file, VNN-LIB file and verifier."""
    return f"{record['onnx']}::{record['vnnlib']}::{record['verifier']}"


def finished_keys(records: list[dict]) -> set[str]:
    """Keys of the records that hold a final verdict."""
    return {record_key(r) for r in records if {"onnx", "vnnlib", "verifier", "status"} <= r.keys()}


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _jsonable(value):
    """numpy scalars / arrays and paths in records."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
