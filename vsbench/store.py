"""Results on disk: ``results/<suite>/<run-id>/`` folders, manifests and append-only JSON-lines records.

A record is one JSON line written with flush + fsync, so a crash loses at most the line being
written; ``read_records`` skips a truncated last line, and a failed append (disk full) is cut back.

Records are content-addressed: a record's key (:func:`record_key`) is the SHA-256 of its ONNX and
VNN-LIB files, the verifier's name, version and configuration hash, and the timeout; paths are
metadata. Reports and resume read one verdict per (model bytes, property bytes, verifier): the
latest one in the file (:func:`latest_verdicts`).

One process writes a run folder at a time (:func:`run_lock`). The lock is ``fcntl.flock`` on
``FOLDER/.vsbench.lock`` rather than a library such as ``filelock``: flock is released by the
kernel when its holder dies (no stale lock can block anyone, and no pid can be mistaken for a
reused one), and the file holds the holder's pid and host for the error message, which
``filelock`` does not do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
LOCK_NAME = ".vsbench.lock"


class StoreError(Exception):
    """A run folder that cannot be written: another process holds it, or a write failed (disk full)."""


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


_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """:func:`sha256`, computed once per file content in this process (cached by path, mtime and size)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _HASHES:
        _HASHES[key] = sha256(path)
    return _HASHES[key]


def write_manifest(path: str | Path, config: dict, files: list[str | Path] | None = None) -> dict:
    """Write ``manifest.json``: the config plus versions, host, git hash, command line and time.

    ``files`` get their SHA-256 recorded, keyed by their path relative to the manifest's folder.
    """
    path = Path(path)
    manifest = {"config": config, "versions": versions(), "host": host(), "git": git_hash(),
                "argv": sys.argv, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if files:
        manifest["sha256"] = {Path(f).relative_to(path.parent).as_posix(): sha256(f) for f in sorted(map(Path, files))}
    _write_atomic(path, json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def append_record(path: str | Path, record: dict) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning.

    A failed write (disk full, file size limit) is cut back to the file's previous size, so no
    partial record stays behind, and raises :class:`StoreError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, default=_jsonable) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    try:
        if size and not _ends_with_newline(path):
            data = b"\n" + data  # a previous crash left a partial line: keep it separate
        view = memoryview(data)
        while view:  # unbuffered: a short write is seen here, not at close
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a device such as /dev/full cannot be truncated
            os.ftruncate(fd, size)
        raise StoreError(f"{path}: cannot append a record ({exc.strerror or exc}); nothing partial kept") from None
    finally:
        os.close(fd)


def write_records(path: str | Path, records: list[dict]) -> None:
    """Replace ``path`` by these records (atomically)."""
    _write_atomic(Path(path), "".join(json.dumps(r, default=_jsonable) + "\n" for r in records))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: the old file or the new, never a part;
    a failed write (disk full) removes the temporary file and raises :class:`StoreError`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write ({exc.strerror or exc}); nothing partial kept") from None


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


KEY_FIELDS = ("onnx_sha256", "vnnlib_sha256", "verifier", "verifier_version", "verifier_config", "timeout")


def record_key(record: dict) -> str:
    """The identity of a verification: the bytes of the ONNX and VNN-LIB files, the verifier's name,
    version and configuration hash, and the timeout (a record written before content keys: its
    ONNX path, VNN-LIB path and verifier)."""
    if "onnx_sha256" not in record:
        return f"{record['onnx']}::{record['vnnlib']}::{record['verifier']}"
    return "::".join(str(float(record[k]) if k == "timeout" else record[k]) for k in KEY_FIELDS)


def _slot(record: dict) -> tuple:
    """What a table counts once: the model, the property (their bytes) and the verifier's name."""
    if "onnx_sha256" not in record:
        return record["onnx"], record["vnnlib"], record["verifier"]
    return record["onnx_sha256"], record["vnnlib_sha256"], record["verifier"]


def latest_verdicts(records: list[dict]) -> list[dict]:
    """One record per (model, property, verifier), the latest in ``records`` (file order), among the
    records that hold a verdict; in the order of those latest records.

    A changed timeout or verifier configuration writes a new record for the same slot: the latest
    replaces the earlier in every report, and a re-run resumes only from it.
    """
    latest = {}
    for n, r in enumerate(records):
        if {"onnx", "vnnlib", "verifier", "status"} <= r.keys():
            latest[_slot(r)] = (n, r)
    return [r for _, r in sorted(latest.values(), key=lambda nr: nr[0])]


def finished_keys(records: list[dict]) -> set[str]:
    """Keys of the verdicts that count (:func:`latest_verdicts`): a re-run skips these."""
    return {record_key(r) for r in latest_verdicts(records)}


@contextlib.contextmanager
def run_lock(folder: str | Path):
    """Hold ``folder`` for this process: a second process gets :class:`StoreError` naming the holder.

    Re-entrant within a process (``run`` holds the run folder while its verify stage takes it again).
    A lock file left by a process that is gone is taken over with a warning.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"{folder}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        try:
            yield
        finally:
            _LOCKS[key][1] -= 1
        return
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by subprocesses (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise StoreError(f"{folder}: in use by {_holder(os.pread(fd, 4096, 0))}; wait for it to finish "
                             "or stop it (one process writes a run folder at a time)") from None
        left = os.pread(fd, 4096, 0)
        if left.strip():
            log.warning("%s: taking over the lock left by %s, which is gone", path, _holder(left))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _LOCKS[key] = [fd, 1]
        try:
            yield
        finally:
            del _LOCKS[key]
            os.ftruncate(fd, 0)  # released cleanly: nothing for the next holder to warn about
    finally:
        os.close(fd)  # closing releases the flock


_LOCKS: dict[str, list] = {}  # resolved folder -> [fd, depth] of the locks this process holds


def _holder(text: bytes) -> str:
    """``pid N on HOST (since T)`` from a lock file's contents."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} (since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _jsonable(value):
    """numpy scalars / arrays and paths in records."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
