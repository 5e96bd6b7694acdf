"""A real two-node Ray cluster on loopback: `vsbench verify --ray-address` spreads the work, survives a killed worker.

Ray rewrites the literal names localhost / 127.0.0.1 to the machine's network address, so the cluster
uses 127.0.0.2, another loopback address that Ray keeps as given. Token authentication stays on, with a
token file of this test's own (RAY_AUTH_TOKEN_PATH). Each `ray start` runs in a new session that all
its Ray processes inherit; the end of the test kills exactly the processes of those two sessions.
"""

import csv
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HOST = "127.0.0.2"
FAST = ["prop_2_0.03", "prop_4_0.03", "prop_7_0.03", "prop_8_0.03"]  # a few seconds each for builtin
SLOW = "prop_0_0.03"  # unsat in several seconds: long enough to kill its worker mid-instance


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _session_pids(sessions: set[int]) -> list[int]:
    """Live (not zombie) processes of the given sessions: Ray workers get their own process group, not session."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) in sessions:
            pids.append(int(stat.parent.name))
    return pids


def _stop(sessions: set[int]) -> None:
    """SIGKILL every process of ``sessions`` (and nothing else) until none is left."""
    deadline = time.monotonic() + 20
    while (pids := _session_pids(sessions)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, resource ``head``) + second node (1 CPU, resource ``second``).

    Yields (address, env, nodes: node id -> [ip, resource names...], the sessions of the cluster's processes).
    """
    tmp = Path(tempfile.mkdtemp(prefix="vsray", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    (tmp / "token").write_text(os.urandom(32).hex())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "token"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    address = f"{HOST}:{_free_port()}"
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts", "start", f"--node-ip-address={HOST}", "--num-cpus=1",
               f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats"]  # + free ports where Ray's defaults are fixed
    # Ray's client server (port 10001 by default) only starts where ray[client] (grpc) is installed
    client_port = [f"--ray-client-server-port={_free_port()}"] if importlib.util.find_spec("grpc") else []
    starts = [ray_cli + ["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                         f"--dashboard-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
                         '--resources={"head": 1}'] + client_port,
              ray_cli + [f"--address={address}", f"--dashboard-agent-listen-port={_free_port()}",
                         '--resources={"second": 1}']]
    sessions = set()
    try:
        for args in starts:
            proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            sessions.add(proc.pid)  # a new session: every Ray process of this node stays in it
            out, _ = proc.communicate(timeout=90)
            assert proc.returncode == 0, out
        nodes = json.loads(_python(env, "import json, ray\n"
                                        f"ray.init(address={address!r}, logging_level='ERROR')\n"
                                        "print(json.dumps({n['NodeID']: [n['NodeManagerAddress'], *n['Resources']]"
                                        " for n in ray.nodes() if n['Alive']}))"))
        yield address, env, nodes, sessions
    finally:
        _stop(sessions)
        shutil.rmtree(tmp, ignore_errors=True)
    assert not _session_pids(sessions)


def _python(env: dict, code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _bench(src: Path, dst: Path, props: list[str]) -> Path:
    """A VNN-COMP folder with the 256x2 net and ``props``, copied into ``dst``."""
    dst.mkdir()
    shutil.copy(src / "mnist-net_256x2.onnx", dst)
    for p in props:
        shutil.copy(src / f"{p}.vnnlib", dst)
    (dst / "instances.csv").write_text("".join(f"mnist-net_256x2.onnx,{p}.vnnlib,120\n" for p in props))
    return dst


def _reference(mnistfc_dir: Path) -> dict:
    with open(mnistfc_dir / "reference_verdicts.csv") as f:
        return {r["vnnlib"][:-len(".vnnlib")]: r["verdict"] for r in csv.DictReader(f)
                if r["onnx"] == "mnist-net_256x2.onnx"}


def _verify(bench: Path, out: Path, address: str, env: dict, **popen):
    args = [sys.executable, "-m", "vsbench.cli", "verify", str(bench), "--ray-address", address, "--out", str(out),
            "--timeout", "60", "--json", "--verifier-option", "fast_path=false"]  # one task per instance
    return subprocess.Popen(args, env=env, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _records(proc) -> list[dict]:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_both_nodes_verify(cluster, mnistfc_dir, tmp_path):
    address, env, nodes, _ = cluster
    assert len(nodes) == 2 and all(addr == HOST for addr, *_ in nodes.values())
    records = _records(_verify(_bench(mnistfc_dir, tmp_path / "bench", FAST), tmp_path / "out", address, env))
    ref = _reference(mnistfc_dir)
    assert [Path(r["vnnlib"]).stem for r in records] == FAST
    assert all(r["status"] == ref[Path(r["vnnlib"]).stem] for r in records)
    assert all(r["cex_checked"] == (r["status"] == "sat") for r in records)
    ran_on = {r["node"] for r in records}
    assert ran_on == set(nodes)  # both nodes did work
    assert {res for n in ran_on for res in nodes[n]} >= {"head", "second"}


def _task_workers(sessions: set[int]) -> list[int]:
    """Pids of the cluster's Ray workers now running an instance (Ray retitles them ``ray::_Worker.verify``)."""
    pids = []
    for pid in _session_pids(sessions):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_Worker.verify"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_worker_killed_mid_instance_is_retried(cluster, mnistfc_dir, tmp_path):
    """kill -9 of the worker deciding an instance: the runner retries it and the run completes."""
    address, env, _, sessions = cluster
    proc = _verify(_bench(mnistfc_dir, tmp_path / "bench", [SLOW]), tmp_path / "out", address, env)
    killed, deadline = [], time.monotonic() + 60
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        killed = _task_workers(sessions)
        time.sleep(0.05)
    assert killed, "no worker ran the instance"
    time.sleep(0.5)  # mid-instance: the verifier has started
    os.kill(killed[0], signal.SIGKILL)
    (rec,) = _records(proc)
    assert rec["attempts"] == 2 and rec["status"] == _reference(mnistfc_dir)[SLOW] == "unsat"
