"""Append-only records (crash tolerant), manifests and run folders."""

import json

from vsbench.store import append_record, finished_keys, read_records, run_dir, write_manifest, write_records


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
