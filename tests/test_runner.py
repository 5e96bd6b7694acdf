"""The Ray runner end to end: real Ray, real onnxruntime, the built-in verifier on VNN-COMP mnistfc."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from vsbench.export.benchmark import read_instances
from vsbench.onnx_io import run_onnx
from vsbench.spec.vnnlib import read_vnnlib
from vsbench.store import StoreError, latest_verdicts, read_records, sha256
from vsbench.spec.api import Verdict, Verifier
from vsbench.verify.registry import get_verifier, list_verifiers
from vsbench.cluster import init_ray
from vsbench.verify.runner import run_verification

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get the test verifiers by value


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    if not ray.is_initialized():
        init_ray(2)
        yield
        ray.shutdown()
    else:
        yield


@pytest.fixture(scope="module")
def mnistfc(mnistfc_dir):
    want = ["prop_2_0.05.vnnlib", "prop_7_0.03.vnnlib", "prop_0_0.03.vnnlib"]
    inst = {i.vnnlib.name: i for i in read_instances(mnistfc_dir) if i.onnx.name == "mnist-net_256x2.onnx"}
    with open(mnistfc_dir / "reference_verdicts.csv") as f:
        ref = {r["vnnlib"]: r["verdict"] for r in csv.DictReader(f) if r["onnx"] == "mnist-net_256x2.onnx"}
    return [inst[w] for w in want], ref


def test_builtin_matches_reference_and_resumes(tmp_path, mnistfc):
    instances, ref = mnistfc
    seen = []
    recs = run_verification(instances, "builtin", tmp_path, workers=2, timeout_cap=60,
                            progress=lambda *a: seen.append(a))
    assert [r["vnnlib"] for r in recs] == [str(i.vnnlib) for i in instances]
    assert seen[-1] == ("verify", 3, 3)
    for r in recs:
        assert r["status"] in ("sat", "unsat", "timeout")
        if r["status"] in ("sat", "unsat"):
            assert r["status"] == ref[os.path.basename(r["vnnlib"])]
        assert r["cex_checked"] == (r["status"] == "sat") and r["verifier"] == "builtin"
        assert r["model"] == "mnist-net_256x2" and r["versions"]["onnxruntime"] and r["timeout"] == 60
        assert r["node"] == ray.get_runtime_context().get_node_id()
    sat = next(r for r in recs if r["status"] == "sat")
    inst = next(i for i in instances if str(i.vnnlib) == sat["vnnlib"])
    x = np.array(sat["cex"])
    assert read_vnnlib(inst.vnnlib).violated_by(x, run_onnx(inst.onnx, x))
    assert sum(r["status"] in ("sat", "unsat") for r in recs) >= 2

    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    start = time.monotonic()
    again = run_verification(instances, "builtin", tmp_path, workers=2, timeout_cap=60)
    assert again == recs and (tmp_path / "records.jsonl").read_text().splitlines() == lines
    assert time.monotonic() - start < 5


class Hang:
    name = "hang"

    def available(self):
        return True, ""

    def verify(self, instance, timeout):
        while True:  # ignores its timeout, like a stuck solver
            time.sleep(0.1)


class Crash(Hang):
    name = "crash"

    def verify(self, instance, timeout):
        os._exit(3)  # the worker process dies mid-instance


class Raise(Hang):
    name = "raise"

    def verify(self, instance, timeout):
        raise ArithmeticError("solver blew up")


class Hog(Hang):
    name = "hog"

    def verify(self, instance, timeout):
        np.ones(3 * 2**30 // 8)  # 3 GiB


class BadStatus(Hang):
    name = "bad-status"

    def verify(self, instance, timeout):
        return Verdict("safe", 0.0)


class Threads(Hang):
    name = "threads"

    def verify(self, instance, timeout):
        import torch

        return Verdict("unknown", 0.0, log=f"threads {torch.get_num_threads()}")


class Center(Hang):
    """A real (incomplete) falsifier: the box center and corners in onnxruntime; claims sat at the center."""

    name = "center"

    def verify(self, instance, timeout):
        (r,) = read_vnnlib(instance.vnnlib).regions
        x = (r.lower + r.upper) / 2
        return Verdict("sat", 0.01, cex=x, log="claimed at the box center")


def test_hanging_verifier_is_stopped(tmp_path, mnistfc):
    start = time.monotonic()
    (rec,) = run_verification(mnistfc[0][:1], Hang, tmp_path, timeout_cap=1, grace_s=1)
    assert rec["status"] == "timeout" and 2 <= rec["time_s"] < 15 and "stopped by the runner" in rec["log"]
    assert time.monotonic() - start < 30


def test_dead_worker_retried_then_error(tmp_path, mnistfc):
    (rec,) = run_verification(mnistfc[0][:1], Crash, tmp_path, timeout_cap=20)
    assert rec["status"] == "error" and rec["attempts"] == 2 and "worker died 2 times" in rec["log"]
    (rec,) = run_verification(mnistfc[0][:1], Raise, tmp_path, timeout_cap=20)
    assert rec["status"] == "error" and rec["attempts"] == 1 and "solver blew up" in rec["log"]
    assert len(read_records(tmp_path / "records.jsonl")) == 2


def test_memory_limit(tmp_path, mnistfc):
    (rec,) = run_verification(mnistfc[0][:1], Hog, tmp_path, timeout_cap=20, memory_mb=1500)
    assert rec["status"] == "error" and rec["log"].startswith("error: out of memory")


def test_cores_per_task(tmp_path, mnistfc):
    (rec,) = run_verification(mnistfc[0][:1], Threads, tmp_path, cores=2)
    assert rec["log"] == "threads 2"
    with pytest.raises(ValueError, match="--cores 3: the Ray cluster has 2 CPUs"):
        run_verification(mnistfc[0][1:2], Threads, tmp_path / "more", cores=3)


def test_wrong_counterexample_downgraded(tmp_path, mnistfc):
    robust = mnistfc[0][0]  # unsat: no point of the box violates it
    rec, twice = run_verification([robust, robust], Center, tmp_path, timeout_cap=20)
    assert rec["status"] == "unknown" and not rec["cex_checked"] and "downgraded" in rec["log"]
    assert twice == rec and len(read_records(tmp_path / "records.jsonl")) == 1  # one run per key
    (rec,) = run_verification([robust], BadStatus, tmp_path, timeout_cap=20)
    assert rec["status"] == "error" and "unknown status 'safe'" in rec["log"]


DRIVER = """
import sys, time
from vsbench.export.benchmark import read_instances
from vsbench.spec.api import Verdict, Verifier
from vsbench.verify.registry import get_verifier, list_verifiers
from vsbench.verify.runner import run_verification

class Slow:
    name = "slow"
    def available(self):
        return True, ""
    def verify(self, instance, timeout):
        time.sleep(0.5)
        return Verdict("unknown", 0.5, log="slow")

inst = [i for i in read_instances(sys.argv[1]) if i.onnx.name == "mnist-net_256x2.onnx"][:6]
run_verification(inst, Slow, sys.argv[2], ray_address=sys.argv[3], workers=2)
"""


def test_driver_killed_then_resumed(tmp_path, mnistfc_dir):
    """kill -9 of the driver mid-run, same command again: every instance once, none lost."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    args = [sys.executable, str(script), str(mnistfc_dir), str(tmp_path / "out"),
            ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(args)
    records = tmp_path / "out" / "records.jsonl"
    deadline = time.monotonic() + 60
    while len(read_records(records)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_records(records)
    assert 2 <= len(first) < 6
    subprocess.run(args, check=True, timeout=120)
    final = read_records(records)
    assert final[:len(first)] == first and len(final) == 6
    assert len({(r["onnx"], r["vnnlib"]) for r in final}) == 6


def test_registry():
    assert {"builtin", "vnncomp:DIR"} <= set(list_verifiers())
    v = get_verifier("builtin")
    assert isinstance(v, Verifier) and v.name == "builtin" and v.available() == (True, "")
    with pytest.raises(ValueError, match="unknown verifier 'vnncomp:'"):
        get_verifier("vnncomp:")


def test_unknown_verifier(tmp_path, mnistfc):
    with pytest.raises(ValueError, match="unknown verifier 'nope'; choices: builtin"):
        run_verification(mnistfc[0][:1], "nope", tmp_path)
    with pytest.raises(ValueError, match="verifier 'vnncomp:/nonexistent' is not available: /nonexistent: missing"):
        run_verification(mnistfc[0][:1], "vnncomp:/nonexistent", tmp_path)


class Quick(Hang):
    """Answers at once (a verdict of its own, so resume and re-verification are visible in the records)."""

    name = "quick"

    def verify(self, instance, timeout):
        return Verdict("unknown", 0.0, log=f"looked at {instance.vnnlib.name}")


class QuickTuned(Quick):
    def config_hash(self):
        return "tuned"


def test_content_keys_move_and_change(tmp_path, mnistfc):
    """A moved benchmark and run folder resume without verifying anything; a changed timeout,
    ONNX file or verifier configuration is verified again."""
    bench = tmp_path / "bench"
    bench.mkdir()
    for inst in mnistfc[0][:2]:
        shutil.copy(inst.onnx, bench)
        shutil.copy(inst.vnnlib, bench)
    (bench / "instances.csv").write_text("".join(f"{i.onnx.name},{i.vnnlib.name},30\n" for i in mnistfc[0][:2]))
    first = run_verification(read_instances(bench), Quick, tmp_path / "run", timeout_cap=20)
    assert [r["onnx_sha256"] for r in first] == [sha256(i.onnx) for i in mnistfc[0][:2]]
    assert first[0]["timeout"] == 20 and first[0]["verifier_config"] == "default"
    shutil.move(bench, tmp_path / "moved-bench")
    shutil.move(tmp_path / "run", tmp_path / "moved-run")
    records = tmp_path / "moved-run" / "records.jsonl"
    before = records.read_text()
    moved = read_instances(tmp_path / "moved-bench")
    assert run_verification(moved, Quick, tmp_path / "moved-run", timeout_cap=20) == first
    assert records.read_text() == before  # nothing verified again
    run_verification(moved, Quick, tmp_path / "moved-run", timeout_cap=10)
    assert len(read_records(records)) == 4  # a new timeout: both again
    run_verification(moved, QuickTuned, tmp_path / "moved-run", timeout_cap=10)
    assert len(read_records(records)) == 6  # a new configuration: both again
    with open(moved[0].onnx, "ab") as f:  # both instances share this model
        f.write(b"\0")  # other bytes (a retrained model under the same name)
    again = run_verification(moved, QuickTuned, tmp_path / "moved-run", timeout_cap=10)
    assert len(read_records(records)) == 8 and again[0]["onnx_sha256"] == sha256(moved[0].onnx) != sha256(
        mnistfc[0][0].onnx)
    assert len(latest_verdicts(read_records(records))) == 4  # the old ONNX bytes keep their own slots


def test_full_disk_stops_the_run(tmp_path, mnistfc):
    (tmp_path / "records.jsonl").symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(StoreError, match="records.jsonl: cannot append a record \\(No space left on device\\)"):
        run_verification(mnistfc[0][:1], Quick, tmp_path)
