"""Suite files: every shipped suite validates; unknown keys and bad values are errors naming the file."""

import pytest

from vsbench.pipeline import RunContext
from vsbench.suites import SuiteError, list_suites, load_suite

REQUIRED = {"smoke", "mnist-eps0.3", "mnist-eps0.1", "fmnist-eps0.1"}


def test_required_suites_ship_and_validate():
    names = {p.stem for p in list_suites()}
    assert REQUIRED <= names
    for path in list_suites():
        suite = load_suite(str(path))
        assert suite.name == path.stem
        assert set(suite.profiles) == {"quick", "full"}


def test_all_five_methods_in_every_suite():
    for path in list_suites():
        methods = {m.name for m in load_suite(str(path)).methods}
        assert {"dense", "verisparse", "verisparse-structured", "hydra", "prune-after"} <= methods


@pytest.mark.parametrize("mutation, needle", [
    (("eps: 0.1", "eps: 1.5"), "eps"),
    (("sparsity: [0.8]", "sparsity: [1.2]"), "sparsity"),
    (("archs: [mlp-2x100]", "archs: [resnet-9000]"), "unknown architecture 'resnet-9000'"),
    (("dataset: mnist", "dataset: cifar-1000"), "unknown dataset 'cifar-1000'"),
    (("properties: 5", "properties: -1"), "properties"),
    (("sparsity: [0.5]", "sparsity: [0.5]\n    options: {dleta_t: 10}"), "methods.2 (verisparse-structured)"),
    (("sparsity: [0.5]", "sparsity: [0.5]\n    options: {importance: bn}"), "needs an architecture with BatchNorm"),
    (("archs: [mlp-2x100]", "archs: []"), "archs: List should have at least 1 item"),
    (("seeds: [0]", "seeds: []"), "seeds: List should have at least 1 item"),
    (("name: smoke", "name: ../../escape"), "name: String should match pattern"),
    (("verifier: builtin", "verifier: maraboo"), "unknown verifier 'maraboo'"),
    (("timeout: 20", "timeout: .nan"), "timeout"),
    (("timeout: 20", "timeout: 0"), "timeout"),
    (("properties: 5\n", "properties: 5\n    sparsity: [1.0]\n"), "sparsity levels"),
    (("properties: 5\n", "properties: 5\n    sparsity: [1.5]\n"), "sparsity levels"),
    (("properties: 5\n", "properties: 5\n    archs: []\n"), "archs: List should have at least 1 item"),
])
def test_invalid_values_name_the_file(tmp_path, mutation, needle):
    from vsbench.suites import SPECS_DIR

    text = (SPECS_DIR / "smoke.yaml").read_text()
    assert mutation[0] in text
    path = tmp_path / "s.yaml"
    path.write_text(text.replace(mutation[0], mutation[1], 1))
    with pytest.raises(SuiteError) as err:
        load_suite(str(path))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_empty_method_list(tmp_path):
    from vsbench.suites import SPECS_DIR

    text = (SPECS_DIR / "smoke.yaml").read_text()
    start, end = text.index("methods:"), text.index("seeds:")
    path = tmp_path / "s.yaml"
    path.write_text(text[:start] + "methods: []\n" + text[end:])
    with pytest.raises(SuiteError, match="methods: List should have at least 1 item"):
        load_suite(str(path))


def test_quick_profile_jobs_and_overrides(tmp_path):
    ctx = RunContext.create("mnist-eps0.3", "quick", tmp_path / "run", None, announce=lambda m: None)
    jobs = ctx.jobs()
    profile = ctx.profile
    sparse_methods = [m for m in ctx.suite.methods if m.sparsity != [0.0]]
    assert len(jobs) == len(profile.archs or ctx.suite.archs) * (1 + len(sparse_methods) * len(profile.sparsity))
    assert len({j.name for j in jobs}) == len(jobs)
    assert (tmp_path / "run" / "manifest.json").is_file()
    assert ctx.models_dir == tmp_path / "run" / "models"


@pytest.mark.parametrize("name", ["mnist-eps0.3-cnn", "mnist-eps0.1-cnn"])
def test_quick_profiles_train_a_cnn_on_the_full_set_and_verify_500_images(name):
    suite = load_suite(name)
    quick = suite.profile("quick")
    assert all(a.startswith("cnn-") for a in quick.archs or suite.archs)
    assert "n_train" not in quick.train and len(quick.sparsity) >= 3 and quick.properties >= 500
    assert suite.profile("full").properties == 10000


def _abcrown_suite(tmp_path, config_line: str):
    from vsbench.suites import SPECS_DIR

    text = (SPECS_DIR / "smoke.yaml").read_text().replace("verifier: builtin", f"verifier: abcrown\n{config_line}", 1)
    (tmp_path / "suites").mkdir(exist_ok=True)
    path = tmp_path / "suites" / "s.yaml"
    path.write_text(text)
    return path


def test_verifier_config_resolved_beside_the_suite(tmp_path):
    """``verifier_config:`` is alpha-beta-CROWN's own YAML, found relative to the suite file and run as
    ``abcrown:PATH`` (also when the command line picks abcrown)."""
    path = _abcrown_suite(tmp_path, "verifier_config: configs/mnistfc.yaml")
    (tmp_path / "suites" / "configs").mkdir()
    (tmp_path / "suites" / "configs" / "mnistfc.yaml").write_text("solver:\n  beta: true\n")
    suite = load_suite(str(path))
    config = tmp_path / "suites" / "configs" / "mnistfc.yaml"
    assert suite.verifier_config == config.resolve()
    assert suite.verifier_name() == suite.verifier_name("abcrown") == f"abcrown:{config.resolve()}"
    assert suite.verifier_name("builtin") == "builtin"


@pytest.mark.parametrize("line, write, needle", [
    ("verifier_config: none.yaml", None, "none.yaml: cannot read"),
    ("verifier_config: c.yaml", "[1, 2]", "c.yaml: not a YAML mapping"),
    ("verifier_config: c.yaml", "a: [1", "c.yaml: malformed YAML"),
])
def test_bad_verifier_config_is_one_line(tmp_path, line, write, needle):
    path = _abcrown_suite(tmp_path, line)
    if write is not None:
        (path.parent / "c.yaml").write_text(write)
    with pytest.raises(SuiteError) as err:
        load_suite(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: verifier_config: ") and needle in msg and "\n" not in msg


def test_verifier_config_needs_abcrown(tmp_path):
    from vsbench.suites import SPECS_DIR

    path = tmp_path / "s.yaml"
    path.write_text((SPECS_DIR / "smoke.yaml").read_text().replace("verifier: builtin", "verifier: builtin\nverifier_config: c.yaml"))
    (tmp_path / "c.yaml").write_text("solver: {}\n")
    with pytest.raises(SuiteError, match="verifier_config: only verifier abcrown"):
        load_suite(str(path))
