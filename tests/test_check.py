"""check_benchmark on a real VNN-COMP folder (mnistfc 256x2, two properties) and broken copies of it."""

import shutil

import pytest

from vsbench.export.check import check_benchmark

PROPS = ["prop_0_0.03.vnnlib", "prop_7_0.03.vnnlib"]


@pytest.fixture
def bench(tmp_path, mnistfc_dir):
    shutil.copy(mnistfc_dir / "mnist-net_256x2.onnx", tmp_path)
    for p in PROPS:
        shutil.copy(mnistfc_dir / p, tmp_path)
    (tmp_path / "instances.csv").write_text("".join(f"mnist-net_256x2.onnx,{p},120\n" for p in PROPS))
    return tmp_path


def test_real_folder_is_valid(bench):
    assert check_benchmark(bench) == []


def test_missing_and_escaping_files(bench, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "x.vnnlib"
    shutil.copy(bench / PROPS[0], outside)
    (bench / "link.vnnlib").symlink_to(outside)
    (bench / "instances.csv").write_text(
        "mnist-net_256x2.onnx,nope.vnnlib,10\n"
        f"mnist-net_256x2.onnx,../{outside.parent.name}/x.vnnlib,10\n"
        "mnist-net_256x2.onnx,link.vnnlib,10\n"
        "mnist-net_256x2.onnx,prop_0_0.03.vnnlib\n")
    problems = check_benchmark(bench)
    assert any("'nope.vnnlib' does not exist" in p for p in problems)
    assert any("must be relative and stay inside" in p for p in problems)
    assert any("leaves the folder" in p for p in problems)
    assert any("instances.csv:4: expected 3 columns" in p for p in problems)


def test_broken_model_and_property(bench):
    (bench / "mnist-net_256x2.onnx").write_bytes((bench / "mnist-net_256x2.onnx").read_bytes()[:5000])
    (bench / PROPS[1]).write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n")
    problems = check_benchmark(bench)
    assert any("mnist-net_256x2.onnx: does not load or run" in p for p in problems)
    assert any(p.startswith(f"{PROPS[1]}: does not parse") for p in problems)


def test_size_mismatch_and_timeout_limit(bench):
    (bench / "small.vnnlib").write_text(
        "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
        "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (<= Y_0 Y_1))\n")
    (bench / "instances.csv").write_text("mnist-net_256x2.onnx,small.vnnlib,20000\n"
                                         "mnist-net_256x2.onnx,prop_0_0.03.vnnlib,2000\n"
                                         "mnist-net_256x2.onnx,prop_7_0.03.vnnlib,-1\n")
    problems = check_benchmark(bench)
    assert "small.vnnlib: declares 2 inputs, the model has 784" in problems
    assert any("timeouts sum to 22000 s" in p for p in problems)
    assert any("instances.csv:3: timeout '-1' is not a positive number" in p for p in problems)


def test_not_a_benchmark(tmp_path):
    assert check_benchmark(tmp_path / "none") == ["not a folder"]
    assert check_benchmark(tmp_path) == ["no instances.csv"]
    (tmp_path / "a_instances.csv").write_text("")
    (tmp_path / "b_instances.csv").write_text("")
    assert check_benchmark(tmp_path)[0].startswith("several *instances.csv")


def test_gz_folder_and_warnings(bench):
    """A gz-compressed copy checks as the plain folder does; a total under 3 h and a model Marabou's parser
    rejects (broadcasting Sub, as torch exports a normalisation) or with an uncommon op are warnings."""
    import gzip

    warnings = []
    assert check_benchmark(bench, warnings) == []
    assert warnings == ["instances.csv: timeouts sum to 240 s, under VNN-COMP's minimum of 10800 s"]
    for f in [bench / "mnist-net_256x2.onnx", *(bench / p for p in PROPS)]:
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    (bench / "instances.csv").write_text("".join(f"mnist-net_256x2.onnx.gz,{p}.gz,5400\n" for p in PROPS))
    warnings = []
    assert check_benchmark(bench, warnings) == [] and warnings == []
    assert sorted(p.name for p in bench.iterdir()) == sorted(  # nothing decompressed beside the inputs
        ["instances.csv", "mnist-net_256x2.onnx.gz"] + [p + ".gz" for p in PROPS])


def test_uncommon_ops_and_marabou_parser_are_flagged(bench):
    import torch
    from torch import nn

    class Odd(nn.Module):
        def forward(self, x):
            return torch.sin(x.flatten(1) - 0.5)[:, :10]

    torch.onnx.export(Odd(), (torch.zeros(1, 1, 28, 28),), str(bench / "odd.onnx"), dynamo=False, opset_version=13)
    (bench / "instances.csv").write_text(f"odd.onnx,{PROPS[0]},20000\n")
    warnings = []
    assert check_benchmark(bench, warnings) == []
    assert any(w.startswith("odd.onnx: ops that common tools do not read: Sin") for w in warnings)
    pytest.importorskip("maraboupy")
    assert any(w.startswith("odd.onnx: Marabou's ONNX parser cannot read it") for w in warnings)


def test_onnx_checker_failure_is_a_problem(bench):
    """A declared output shape that contradicts the graph: onnxruntime runs it, the full check rejects it."""
    import onnx

    model = onnx.load(str(bench / "mnist-net_256x2.onnx"))
    model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 7
    onnx.save(model, str(bench / "mnist-net_256x2.onnx"))
    problems = check_benchmark(bench)
    assert any(p.startswith("mnist-net_256x2.onnx: fails onnx.checker") for p in problems), problems


def test_header_row_empty_csv_and_zero_byte_onnx(bench):
    """VNN-COMP's instances.csv has no header: a header row is one clear problem (not three)."""
    rows = (bench / "instances.csv").read_text()
    (bench / "instances.csv").write_text("onnx,vnnlib,timeout\n" + rows)
    problems = check_benchmark(bench)
    assert len(problems) == 1 and "instances.csv:1: header row" in problems[0], problems
    (bench / "instances.csv").write_text("")
    assert check_benchmark(bench) == ["instances.csv: lists no instances"]
    (bench / "instances.csv").write_text(rows)
    (bench / "mnist-net_256x2.onnx").write_bytes(b"")
    assert check_benchmark(bench) == ["mnist-net_256x2.onnx: empty file (0 bytes), not an ONNX model"]
