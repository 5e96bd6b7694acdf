"""VerifierConfig: unknown keys and bad values are errors, the hash follows every value, and the
settings reach the verifier from the API, the CLI and a suite."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vsbench.suites import SPECS_DIR, SuiteError, load_suite
from vsbench.verify.builtin import BuiltinVerifier, ConfiguredBuiltin
from vsbench.verify.config import (
    VerifierConfig,
    load_options,
    make_config,
    parse_options,
)
from vsbench.verify.registry import with_options

ROOT = Path(__file__).resolve().parent.parent


def test_unknown_keys_and_bad_values_are_one_line_errors():
    with pytest.raises(ValueError, match="bacth"):
        make_config({"bacth": 3})
    with pytest.raises(ValueError, match="batch"):
        make_config({"batch": 0})
    with pytest.raises(ValueError, match="refine_splits"):
        make_config({"refine_splits": "four"})
    for bad in (make_config, lambda o: with_options("builtin", o)):
        with pytest.raises(ValueError) as err:
            bad({"no_such_knob": 1})
        assert "\n" not in str(err.value)


def test_hash_is_stable_and_follows_every_value():
    base = VerifierConfig()
    assert base.config_hash() == VerifierConfig().config_hash() == BuiltinVerifier().config_hash()
    assert len(base.config_hash()) == 64
    seen = {base.config_hash()}
    for name in VerifierConfig.model_fields:
        value = getattr(base, name)
        changed = (not value) if isinstance(value, bool) else value / 2 if isinstance(value, float) else value + 1
        h = make_config({name: changed}).config_hash()
        assert h not in seen, name
        seen.add(h)
    # the same settings given in another order or as strings hash the same
    assert make_config({"batch": 256, "refine": False}).config_hash() == \
        make_config(parse_options(["refine=false", "batch=256"])).config_hash()


def test_options_from_pairs_and_files(tmp_path):
    assert parse_options(["batch=256", "refine=false", "slice_s=0.5"]) == {"batch": 256, "refine": False, "slice_s": 0.5}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["batch"])
    good = tmp_path / "v.yaml"
    good.write_text("batch: 128\ninput_split: false\n")
    assert load_options(good) == {"batch": 128, "input_split": False}
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch: 128\nbacth: 3\n")
    with pytest.raises(ValueError, match=str(bad)):
        load_options(bad)


def test_with_options_builds_a_configured_factory():
    assert with_options("builtin", {}) == "builtin"
    factory = with_options("builtin", {"batch": 64})
    assert isinstance(factory, ConfiguredBuiltin) and factory.name == "builtin"
    verifier = factory()
    assert verifier.config.batch == 64 and verifier.config_hash() == factory.config_hash() != VerifierConfig().config_hash()
    with pytest.raises(ValueError, match="built-in verifier only"):
        with_options("marabou", {"batch": 64})


def test_suite_verifier_options_are_validated_at_load(tmp_path):
    text = (SPECS_DIR / "smoke.yaml").read_text()
    good = tmp_path / "good.yaml"
    good.write_text(text + "verifier_options: {batch: 64, refine: false}\n")
    assert load_suite(str(good)).verifier_options == {"batch": 64, "refine": False}
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "verifier_options: {bacth: 64}\n")
    with pytest.raises(SuiteError) as err:
        load_suite(str(bad))
    assert str(bad) in str(err.value) and "bacth" in str(err.value) and "\n" not in str(err.value)


def test_cli_rejects_an_unknown_option_before_any_work(tmp_path, mnistfc_dir):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "VSBENCH_DEBUG"}
    r = subprocess.run([sys.executable, "-m", "vsbench.cli", "verify", str(mnistfc_dir), "--out", str(out),
                        "--verifier-option", "bacth=3"], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=300, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bacth" in lines[0], r.stderr
    assert not out.exists()
