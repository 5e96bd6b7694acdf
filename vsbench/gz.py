"""gzip-compressed inputs (``.onnx.gz``, ``.vnnlib.gz``, as the VNN-COMP 2022+ benchmarks ship them).

``plain_path`` gives a readable uncompressed file for any input: the file itself, or for ``*.gz`` a
copy decompressed once into a cache keyed by the sha256 of the compressed bytes (``$VSBENCH_CACHE/gz``,
default ``~/.cache/vsbench/gz``), never beside the input (benchmark folders may be read-only or shared).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from vsbench.spec.api import Instance

_SEEN: dict[tuple, Path] = {}  # (resolved path, mtime, size) -> cached copy, so a file is hashed once


def cache_dir() -> Path:
    root = os.environ.get("VSBENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "vsbench") / "gz"


def is_gz(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def plain_path(path: str | Path) -> Path:
    """``path`` itself, or for ``NAME.gz`` the cached decompressed ``.../<sha256>/NAME``.

    Raises ``ValueError`` naming the file when it is not a readable gzip file.
    """
    path = Path(path)
    if not is_gz(path):
        return path
    stat = path.stat()
    seen = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if seen in _SEEN and _SEEN[seen].is_file():
        return _SEEN[seen]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = cache_dir() / digest / path.name[:-3]
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as dst, gzip.open(path, "rb") as src:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, out)  # atomic: parallel workers never see a half-written copy
        except (OSError, EOFError) as exc:
            Path(tmp).unlink(missing_ok=True)
            raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    _SEEN[seen] = out
    return out


def plain_instance(instance: Instance) -> Instance:
    """``instance`` with its ONNX and VNN-LIB files as readable uncompressed paths (see ``plain_path``)."""
    if not (is_gz(instance.onnx) or is_gz(instance.vnnlib)):
        return instance
    return dataclasses.replace(instance, onnx=plain_path(instance.onnx), vnnlib=plain_path(instance.vnnlib))
