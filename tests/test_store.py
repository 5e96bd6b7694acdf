"""Append-only records (crash tolerant, content-addressed), manifests, run folders and their lock."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vsbench.store import (StoreError, append_record, finished_keys, latest_verdicts, read_records, record_key,
                           run_dir, run_lock, write_manifest, write_records)

ROOT = Path(__file__).resolve().parent.parent


def test_records_survive_a_truncated_line(tmp_path):
    path = tmp_path / "r" / "records.jsonl"
    assert read_records(path) == []
    append_record(path, {"onnx": "a.onnx", "vnnlib": "p.vnnlib", "verifier": "builtin", "status": "unsat"})
    with open(path, "a") as f:
        f.write('{"onnx": "b.onnx", "vnnlib": "p.vn')  # kill -9 in the middle of a write
    assert len(read_records(path)) == 1
    append_record(path, {"onnx": "c.onnx", "vnnlib": "p.vnnlib", "verifier": "builtin", "status": "sat",
                         "x": __import__("numpy").float32(0.5)})
    recs = read_records(path)
    assert [r["onnx"] for r in recs] == ["a.onnx", "c.onnx"] and recs[1]["x"] == 0.5
    assert finished_keys(recs + [{"onnx": "d.onnx"}]) == {"a.onnx::p.vnnlib::builtin", "c.onnx::p.vnnlib::builtin"}
    assert len(latest_verdicts(recs + recs)) == 2  # records written before content keys: by path
    write_records(path, recs[:1])
    assert read_records(path) == recs[:1]


def test_manifest_and_run_dir(tmp_path):
    folder = run_dir(tmp_path, "smoke", "run1")
    assert folder == tmp_path / "smoke" / "run1" and folder.is_dir()
    m = write_manifest(folder / "manifest.json", {"eps": 0.1})
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["config"] == {"eps": 0.1} and on_disk == json.loads(json.dumps(m, default=str))
    assert on_disk["versions"]["torch"].startswith("2.") and on_disk["host"]["hostname"]
    assert on_disk["git"] is None or len(on_disk["git"].split("-")[0]) == 40


def verdict(onnx="onnx/a.onnx", status="unsat", **kw):
    return {"onnx": onnx, "vnnlib": "vnnlib/p.vnnlib", "onnx_sha256": "aa", "vnnlib_sha256": "bb",
            "verifier": "builtin", "verifier_version": "0.1.0", "verifier_config": "default", "timeout": 20,
            "status": status, **kw}


def test_content_keys_ignore_paths_and_latest_verdict_counts():
    moved = verdict(onnx="/elsewhere/a.onnx")
    assert record_key(moved) == record_key(verdict()) and record_key(verdict(timeout=20.0)) == record_key(moved)
    for change in ({"onnx_sha256": "cc"}, {"vnnlib_sha256": "cc"}, {"timeout": 30}, {"verifier_config": "x"},
                   {"verifier_version": "2"}, {"verifier": "marabou"}):
        assert record_key(verdict(**change)) != record_key(verdict())
    later = verdict(status="sat", timeout=60)  # same files and verifier, a longer timeout
    other = verdict(verifier="marabou", status="error")
    assert latest_verdicts([verdict(), other, moved, later, {"onnx": "x"}]) == [other, later]
    assert finished_keys([verdict(), later]) == {record_key(later)}  # back to timeout 20: verified again


HOLD = """
import sys, time
from vsbench.store import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(3600)  # killed by the test
"""


def test_one_writer_per_folder(tmp_path, caplog, mnistfc_dir):
    folder = tmp_path / "run"
    with run_lock(folder), run_lock(folder):  # re-entrant within a process
        holder = json.loads((folder / ".vsbench.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
    assert (folder / ".vsbench.lock").read_text() == ""  # released cleanly
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(StoreError, match=f"in use by pid {proc.pid} on "):
            with run_lock(folder):
                pass
        clis = [subprocess.run([sys.executable, "-m", "vsbench.cli", *args, "--out", str(folder)], capture_output=True,
                               text=True, cwd=ROOT) for args in (["run", "--suite", "smoke", "--profile", "quick"],
                                                                 ["verify", str(mnistfc_dir), "--filter", "prop_0_0.03"])]
    finally:
        proc.kill()
        proc.wait()
    for cli in clis:  # one line, exit 2, nothing done
        assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
        assert cli.stderr.startswith(f"error: {folder}: in use by pid {proc.pid} on "), cli.stderr
    assert sorted(p.name for p in folder.iterdir()) == [".vsbench.lock"]
    with run_lock(folder):  # the holder was killed: its lock file is taken over, with a warning
        assert json.loads((folder / ".vsbench.lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {proc.pid}" in caplog.text
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        with run_lock(tmp_path / "file"):
            pass


FILL = """
import resource, sys
from vsbench.store import StoreError, append_record, write_records
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
for write in (append_record, lambda path, r: write_records(path + ".all", [r])):
    try:
        write(sys.argv[1], {"status": "unsat", "log": "x" * 1000})
    except StoreError as exc:
        print(exc)
"""


def test_full_disk_leaves_no_partial_record(tmp_path):
    path = tmp_path / "records.jsonl"
    append_record(path, verdict())
    before = path.read_bytes()
    # the file may grow by 100 bytes only: the kernel writes a part of the line, then refuses (EFBIG)
    out = subprocess.run([sys.executable, "-c", FILL, str(path), str(len(before) + 100)], capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines() == [f"{path}: cannot append a record (File too large); nothing partial kept",
                                f"{path}.all: cannot write (File too large); nothing partial kept"]
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["records.jsonl"]
    full = tmp_path / "full.jsonl"
    full.symlink_to("/dev/full")  # a real device that answers every write with ENOSPC
    with pytest.raises(StoreError, match="No space left on device"):
        append_record(full, verdict())
