"""IDX reader and data-folder resolution on the real shared MNIST / Fashion-MNIST files."""

import gzip
import shutil

import pytest
import torch

from vsbench.data import DATASETS, DataError, load_dataset, resolve_data_dir

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_test_split_shapes_and_label_counts(data_dir):
    x, y = load_dataset("mnist", "test", data_dir)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS


def test_fashion_labels_balanced_and_limit(data_dir):
    x, y = load_dataset("fashion-mnist", "test", data_dir)
    assert torch.bincount(y).tolist() == [1000] * 10
    xs, ys = load_dataset("fashion-mnist", "test", data_dir, limit=7)
    assert xs.shape == (7, 1, 28, 28) and torch.equal(ys, y[:7]) and torch.equal(xs, x[:7])


def test_mnist_train_label_counts(data_dir):
    _, y = load_dataset("mnist", "train", data_dir)
    assert torch.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("VSBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "cli") == tmp_path / "cli"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("VSBENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir() == tmp_path / "cache" / "vsbench" / "data"


def test_missing_dir_is_one_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", missing)
    msg = str(err.value)
    assert str(missing) in msg and "t10k-images-idx3-ubyte.gz" in msg
    assert "VSBENCH_DATA" in msg and "--data-dir" in msg


def test_missing_file_names_file(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte\.gz in .*mnist"):
        load_dataset("mnist", "test", tmp_path)


def test_corrupt_and_short_files(tmp_path, data_dir):
    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz", labels)
    images = folder / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: not a readable gzip"):
        load_dataset("mnist", "test", tmp_path)
    raw = gzip.decompress((data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    images.write_bytes(gzip.compress(raw[:5000]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: IDX data has"):
        load_dataset("mnist", "test", tmp_path)
    images.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]))
    with pytest.raises(DataError, match="bad magic"):
        load_dataset("mnist", "test", tmp_path)


def test_unknown_dataset_and_split(data_dir):
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", "test", data_dir)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("mnist", "val", data_dir)
    assert set(DATASETS) >= {"mnist", "fashion-mnist"}
