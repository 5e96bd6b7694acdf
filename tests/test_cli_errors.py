"""Bad input: one clear error line naming the file and the problem, exit != 0, no traceback, no garbage."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def vsbench(*args, cwd=None, env=None):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("VSBENCH_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "vsbench.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=full_env, timeout=300)


def assert_one_clear_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def test_unknown_suite():
    r = vsbench("run", "--suite", "no-such-suite", "--profile", "quick")
    assert_one_clear_error(r, "unknown suite 'no-such-suite'", "mnist-eps0.3")


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: [mnist\n")
    r = vsbench("train", "--suite", bad, "--out", tmp_path / "out")
    assert_one_clear_error(r, bad, "malformed YAML")
    assert not (tmp_path / "out").exists()


def test_unknown_key_in_suite(tmp_path):
    text = (ROOT / "specs" / "smoke.yaml").read_text().replace("seeds: [0]", "seeds: [0]\nsedes: [1]")
    bad = tmp_path / "typo.yaml"
    bad.write_text(text)
    r = vsbench("train", "--suite", bad, "--out", tmp_path / "out")
    assert_one_clear_error(r, bad, "sedes")


def test_unknown_method(tmp_path):
    text = (ROOT / "specs" / "smoke.yaml").read_text().replace("name: hydra", "name: hydro")
    bad = tmp_path / "method.yaml"
    bad.write_text(text)
    r = vsbench("train", "--suite", bad, "--out", tmp_path / "out")
    assert_one_clear_error(r, bad, "unknown method 'hydro'")


def test_bad_method_options_fail_before_training(tmp_path):
    text = (ROOT / "specs" / "smoke.yaml").read_text()
    text = text.replace("sparsity: [0.5]", "sparsity: [0.5]\n    options: {dleta_t: 10}")
    bad = tmp_path / "options.yaml"
    bad.write_text(text)
    r = vsbench("run", "--suite", bad, "--out", tmp_path / "out")
    assert_one_clear_error(r, bad, "dleta_t: Extra inputs are not permitted")
    assert not (tmp_path / "out").exists()


def test_missing_data(tmp_path):
    missing = tmp_path / "nowhere"
    r = vsbench("train", "--suite", "smoke", "--profile", "quick", "--out", tmp_path / "out",
                "--data-dir", missing)
    assert_one_clear_error(r, missing)
    assert not list((tmp_path / "out").glob("models/*/checkpoint.pt"))


def _copy_instances(mnistfc_dir, dest, n=1):
    dest.mkdir()
    rows = (mnistfc_dir / "mnistfc_instances.csv").read_text().splitlines()[:n]
    for row in rows:
        onnx, vnnlib, _ = row.split(",")
        for f in (onnx, vnnlib):
            shutil.copy(mnistfc_dir / f, dest / f)
    (dest / "instances.csv").write_text("\n".join(rows) + "\n")
    return rows


def test_malformed_vnnlib(tmp_path, mnistfc_dir):
    bench = tmp_path / "bench"
    rows = _copy_instances(mnistfc_dir, bench)
    vnnlib = bench / rows[0].split(",")[1]
    vnnlib.write_text(vnnlib.read_text().replace("(assert (<= X_5", "(assert (<== X_5", 1))
    out = tmp_path / "out"
    r = vsbench("verify", bench, "--out", out, "--timeout", "5")
    assert_one_clear_error(r, vnnlib.name)
    assert not (out / "records.jsonl").exists()


def test_malformed_onnx(tmp_path, mnistfc_dir):
    bench = tmp_path / "bench"
    rows = _copy_instances(mnistfc_dir, bench)
    onnx = bench / rows[0].split(",")[0]
    onnx.write_bytes(b"this is not a protobuf" * 10)
    out = tmp_path / "out"
    r = vsbench("verify", bench, "--out", out, "--timeout", "5")
    assert_one_clear_error(r, onnx.name)
    assert not (out / "records.jsonl").exists()


@pytest.mark.parametrize("bad_path", ["../escape.onnx", "/etc/passwd"])
def test_instances_path_may_not_escape(tmp_path, mnistfc_dir, bad_path):
    bench = tmp_path / "bench"
    rows = _copy_instances(mnistfc_dir, bench)
    (bench / "instances.csv").write_text(f"{bad_path},{rows[0].split(',')[1]},10\n")
    r = vsbench("verify", bench, "--out", tmp_path / "out")
    assert_one_clear_error(r, "instances.csv")


@pytest.mark.parametrize("timeout", ["0", "nan", "-5"])
def test_bad_timeout(tmp_path, mnistfc_dir, timeout):
    bench = tmp_path / "bench"
    _copy_instances(mnistfc_dir, bench)
    r = vsbench("verify", bench, "--out", tmp_path / "out", "--timeout", timeout)
    assert_one_clear_error(r, "--timeout", "positive number of seconds")
    assert r.returncode == 2 and not (tmp_path / "out").exists()


def test_ray_address_with_nothing_listening(tmp_path, mnistfc_dir):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bench = tmp_path / "bench"
    _copy_instances(mnistfc_dir, bench)
    r = vsbench("verify", bench, "--out", tmp_path / "out", "--ray-address", f"127.0.0.1:{port}")
    assert_one_clear_error(r, f"127.0.0.1:{port}", "nothing answers")
    assert r.returncode == 2


def test_out_naming_a_file(tmp_path):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    r = vsbench("run", "--suite", "smoke", "--profile", "quick", "--out", out)
    assert_one_clear_error(r, out, "--out names a file")
    assert r.returncode == 2 and out.read_text() == "not a folder"


def test_empty_instances_csv(tmp_path, mnistfc_dir):
    bench = tmp_path / "bench"
    _copy_instances(mnistfc_dir, bench)
    (bench / "instances.csv").write_text("")
    r = vsbench("verify", bench, "--out", tmp_path / "out")
    assert_one_clear_error(r, "instances.csv", "lists no instances")
    assert r.returncode == 2 and not (tmp_path / "out").exists()


def test_zero_byte_onnx(tmp_path, mnistfc_dir):
    bench = tmp_path / "bench"
    rows = _copy_instances(mnistfc_dir, bench)
    onnx = bench / rows[0].split(",")[0]
    onnx.write_bytes(b"")
    r = vsbench("verify", bench, "--out", tmp_path / "out")
    assert_one_clear_error(r, onnx.name, "0 bytes")
    assert r.returncode == 2 and not (tmp_path / "out" / "records.jsonl").exists()


def test_deeply_nested_vnnlib(tmp_path, mnistfc_dir):
    bench = tmp_path / "bench"
    rows = _copy_instances(mnistfc_dir, bench)
    vnnlib = bench / rows[0].split(",")[1]
    vnnlib.write_text("(declare-const X_0 Real)\n" + "(" * 100_000 + ")" * 100_000 + "\n")
    r = vsbench("verify", bench, "--out", tmp_path / "out")
    assert_one_clear_error(r, vnnlib.name, "expected (declare-const")
    assert r.returncode == 2


def test_compare_tol_nan(tmp_path):
    r = vsbench("compare", tmp_path, tmp_path, "--tol", "nan")
    assert_one_clear_error(r, "--tol nan")
    assert r.returncode == 2


def test_suite_name_escaping_the_results_folder(tmp_path):
    bad = tmp_path / "escape.yaml"
    bad.write_text((ROOT / "specs" / "smoke.yaml").read_text().replace("name: smoke", "name: ../../escape"))
    r = vsbench("run", "--suite", bad, "--out", tmp_path / "out")
    assert_one_clear_error(r, bad, "name")
    assert r.returncode == 2 and not (tmp_path / "out").exists()
