"""Datasets from their original IDX ``.gz`` files: location, checked download, IDX reader.

The data folder holds one sub-folder per dataset (``mnist/``, ``fashion-mnist/``) with the
upstream file names. It is ``--data-dir``, else ``$VSBENCH_DATA``, else the user cache
(``$XDG_CACHE_HOME/vsbench/data`` or ``~/.cache/vsbench/data``), where missing files are
downloaded from the public mirrors and checked against their SHA-256.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


class DataError(ValueError):
    """A dataset file is missing, unreadable or corrupt (one clear message)."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str
    files: dict  # split -> (images file, labels file)
    sha256: dict  # file -> hex digest
    mirrors: tuple[str, ...]
    n_classes: int = 10
    in_shape: tuple[int, int, int] = (1, 28, 28)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        folder="mnist",
        files=_IDX_FILES,
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        mean=(0.1307,),
        std=(0.3081,),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        folder="fashion-mnist",
        files=_IDX_FILES,
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        mean=(0.2860,),
        std=(0.3530,),
    ),
}

FIX = "set VSBENCH_DATA or pass --data-dir to a folder holding <dataset>/<file>.gz"


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    return DATASETS[name]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vsbench" / "data"


def resolve_data_dir(cli_dir: str | Path | None = None) -> Path:
    """``cli_dir``, else ``$VSBENCH_DATA``, else the user cache folder; always an absolute path."""
    if cli_dir:
        return Path(cli_dir).expanduser().absolute()
    if os.environ.get("VSBENCH_DATA"):
        return Path(os.environ["VSBENCH_DATA"]).expanduser().absolute()
    return cache_dir().absolute()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(info: DatasetInfo, file: str, folder: Path) -> Path:
    """Fetch ``file`` from the first mirror that serves it with the right SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file
    errors = []
    for mirror in info.mirrors:
        url = mirror + file
        try:
            log.info("downloading %s", url)
            with urllib.request.urlopen(url, timeout=60) as resp, tempfile.NamedTemporaryFile(
                dir=folder, delete=False
            ) as tmp:
                shutil.copyfileobj(resp, tmp)
            if _sha256(Path(tmp.name)) != info.sha256[file]:
                os.unlink(tmp.name)
                errors.append(f"{url}: checksum mismatch")
                continue
            os.replace(tmp.name, target)
            return target
        except OSError as exc:
            errors.append(f"{url}: {exc}")
    raise DataError(
        f"{info.name}: could not download {file} into {folder} ({'; '.join(errors)}); "
        f"copy the files there by hand or {FIX}"
    )


def _locate(info: DatasetInfo, file: str, root: Path, may_download: bool) -> Path:
    for candidate in (root / info.folder / file, root / file):
        if candidate.is_file():
            return candidate
    if may_download:
        return download(info, file, root / info.folder)
    where = root / info.folder
    if not root.is_dir():
        raise DataError(f"{info.name}: data folder {root} does not exist (looked for {where / file}); {FIX}")
    raise DataError(f"{info.name}: missing {file} in {where}; {FIX}")


def read_idx(path: Path) -> np.ndarray:
    """uint8 array of a gzip-compressed IDX file; :class:`DataError` naming the file if corrupt."""
    st = Path(path).stat()
    return _read_idx(Path(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _read_idx(path: Path, mtime_ns: int, size: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"{path}: IDX data has {len(raw) - header} bytes, header {dims} needs {size}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_dataset(
    name: str, split: str, data_dir: str | Path | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 (N,1,28,28) in [0,1], labels int64 (N,))``, the first ``limit`` examples."""
    info = get_dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    root = resolve_data_dir(data_dir)
    may_download = root == cache_dir().absolute()  # only the user cache is ever filled by a download
    img_file, lab_file = info.files[split]
    img_path = _locate(info, img_file, root, may_download)
    lab_path = _locate(info, lab_file, root, may_download)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{img_path}: {images.shape} images do not match {labels.shape} labels in {lab_path}")
    if labels.size and labels.max() >= info.n_classes:
        raise DataError(f"{lab_path}: label {labels.max()} out of range for {info.n_classes} classes")
    n = len(labels) if limit is None else min(int(limit), len(labels))
    x = torch.from_numpy(images[:n].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels[:n].astype(np.int64))
    return x, y
