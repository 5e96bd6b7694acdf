"""audit on real mnistfc 256x2 instances: builtin against VNN-COMP tool folders that answer wrongly."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vsbench.verify.audit import audit, coverage, coverage_problems, judge

ROOT = Path(__file__).resolve().parent.parent

PROPS = {"prop_7_0.03.vnnlib": "sat", "prop_0_0.03.vnnlib": "unsat"}


def liar(folder, answer: str):
    """A VNN-COMP tool folder whose run_instance.sh always writes ``answer`` to the result file."""
    folder.mkdir()
    (folder / "prepare_instance.sh").write_text("exit 0\n")
    (folder / "run_instance.sh").write_text(f"printf '{answer}' > \"$5\"\n")
    return f"vnncomp:{folder}"


@pytest.fixture
def bench(tmp_path, mnistfc_dir):
    root = tmp_path / "bench"
    root.mkdir()
    shutil.copy(mnistfc_dir / "mnist-net_256x2.onnx", root)
    for p in PROPS:
        shutil.copy(mnistfc_dir / p, root)
    (root / "instances.csv").write_text("".join(f"mnist-net_256x2.onnx,{p},120\n" for p in PROPS))
    return root


def test_audit_names_wrong_verifiers(bench, tmp_path, monkeypatch):
    liar(tmp_path / "always_unsat", "unsat\\n")
    monkeypatch.chdir(tmp_path)
    always_unsat = "vnncomp:always_unsat"  # a relative tool folder works too
    bogus_sat = liar(tmp_path / "bogus_sat", "sat\\n" + "".join(f"(X_{i} 5.0)\\n" for i in range(784)))
    names = ["builtin", always_unsat, bogus_sat]
    table = audit(bench, names, timeout=30, out_dir=tmp_path / "out", workers=2)
    rows = table.set_index("vnnlib")
    assert rows["builtin"].to_dict() == PROPS
    assert rows[always_unsat].tolist() == ["unsat", "unsat"]
    assert rows.loc["prop_7_0.03.vnnlib", "disagreement"].startswith(f"wrong unsat: {always_unsat}")
    assert rows.loc["prop_0_0.03.vnnlib", bogus_sat] == "sat?"
    assert rows.loc["prop_0_0.03.vnnlib", "disagreement"].startswith(f"wrong sat: {bogus_sat}")
    assert (tmp_path / "out" / "audit.csv").is_file() and (tmp_path / "out" / "builtin" / "records.jsonl").is_file()
    again = audit(bench, names[:1], timeout=30, out_dir=tmp_path / "out")  # resumes from the records
    assert again["builtin"].tolist() == list(PROPS.values()) and not again["disagreement"].any()
    assert audit(bench, names[:1], 30, tmp_path / "out", only="prop_7")["vnnlib"].tolist() == ["prop_7_0.03.vnnlib"]
    with pytest.raises(ValueError, match="no instance matches 'nothing'"):
        audit(bench, names[:1], 30, tmp_path / "out", only="nothing")


@pytest.mark.parametrize("claims,want", [
    ({"a": "sat", "b": "unsat"}, "wrong unsat: b"),
    ({"a": "bad-sat", "b": "unsat"}, "wrong sat: a"),
    ({"a": "sat", "b": "timeout", "c": "error"}, ""),
    ({"a": "bad-sat", "b": "unknown"}, ""),
])
def test_judge(claims, want):
    assert judge(claims).startswith(want) and bool(judge(claims)) == bool(want)


def test_audit_needs_a_verifier(bench, tmp_path):
    with pytest.raises(ValueError, match="at least one verifier"):
        audit(bench, [], 10, tmp_path)


def test_audit_fails_when_one_side_only_errs(bench, tmp_path):
    """builtin decides both instances, the other tool errs on both: nothing was compared, exit 1."""
    broken = liar(tmp_path / "broken", "error\\n")
    args = [sys.executable, "-m", "vsbench.cli", "audit", str(bench), "--verifiers", f"builtin,{broken}",
            "--timeout", "30", "--workers", "2", "--out", str(tmp_path / "out")]
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert f"too little compared: {broken}: error on 2 of 2 instances (more than 10%)" in result.stderr
    assert f"too little compared: builtin and {broken}: compared on 0 of 2 instances" in result.stderr
    assert "disagreement" not in result.stderr
    table = pd.read_csv(tmp_path / "out" / "audit.csv")
    assert coverage(table, ["builtin", broken]).iloc[0][["compared", "errors A", "errors B"]].tolist() == [0, 0, 2]
    assert coverage_problems(table, ["builtin"]) == []
    assert coverage_problems(table, ["builtin", broken], max_error_fraction=1.0, min_compared=0) == []
