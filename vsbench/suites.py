"""Benchmark suites: ``specs/*.yaml`` validated into :class:`Suite` objects.

A suite fixes the dataset, the perturbation, the architectures, the methods with their sparsity
levels, the seeds and the verification budget; a *profile* (``quick`` for a 2-core CPU, ``full``
for paper-scale schedules on a GPU) sets the training schedule and the number of properties.
Unknown keys anywhere are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
PROFILES = ("quick", "full")


class SuiteError(ValueError):
    """A suite file is missing, unreadable or invalid."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _sparsity_levels(levels: list[float] | None) -> list[float] | None:
    if levels is not None and (not levels or any(not 0.0 <= s < 1.0 for s in levels)):
        raise ValueError("sparsity levels must be a non-empty list of numbers in [0, 1)")
    return levels


class MethodSpec(Strict):
    name: str
    sparsity: list[float] = Field(default_factory=lambda: [0.0])
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sparsity")
    @classmethod
    def _in_unit_interval(cls, levels: list[float]) -> list[float]:
        return _sparsity_levels(levels)


class Profile(Strict):
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields (epochs, n_train, ...)
    properties: int = Field(gt=0)  # test images drawn for verification
    timeout: float = Field(gt=0, allow_inf_nan=False)  # seconds per verification instance
    archs: list[str] | None = Field(None, min_length=1)  # overrides Suite.archs
    sparsity: list[float] | None = None  # overrides every sparse method's levels
    seeds: list[int] | None = Field(None, min_length=1)

    @field_validator("sparsity")
    @classmethod
    def _in_unit_interval(cls, levels: list[float] | None) -> list[float] | None:
        return _sparsity_levels(levels)


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # names run folders: no '/' or leading '.'
    description: str = ""
    dataset: str
    eps: float = Field(gt=0, le=1)
    train_eps: float | None = None
    archs: list[str] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    verifier: str = "builtin"
    verifier_options: dict[str, Any] = Field(default_factory=dict)  # VerifierConfig settings (builtin)
    verifier_config: Path | None = None  # the tool's own YAML (abcrown), relative to the suite file
    property_seed: int = 0
    profiles: dict[str, Profile]

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, profiles: dict[str, Profile]) -> dict[str, Profile]:
        unknown = set(profiles) - set(PROFILES)
        if unknown or not profiles:
            raise ValueError(f"profiles must be among {PROFILES}, got {sorted(profiles)}")
        return profiles

    def verifier_name(self, override: str | None = None) -> str:
        """The verifier to run (``override`` or the suite's), as ``abcrown:CONFIG`` when it is alpha-beta-CROWN
        and the suite names its config."""
        name = override or self.verifier
        return f"abcrown:{self.verifier_config}" if name == "abcrown" and self.verifier_config else name

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise SuiteError(f"suite '{self.name}' has no profile '{name}' (has: {', '.join(self.profiles)})")
        return self.profiles[name]


def list_suites() -> list[Path]:
    return sorted(SPECS_DIR.glob("*.yaml"))


def default_profile() -> str:
    """``full`` when CUDA is available, else ``quick``."""
    import torch

    return "full" if torch.cuda.is_available() else "quick"


def resolve_suite_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SuiteError(f"{path}: suite file not found")
        return path
    candidate = SPECS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(p.stem for p in list_suites())
        raise SuiteError(f"unknown suite '{name_or_path}' (known: {known}; or give a path to a YAML file)")
    return candidate


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    return f"{'.'.join(str(p) for p in err['loc'])}: {msg}" if err["loc"] else msg


def load_suite(name_or_path: str) -> Suite:
    """Load and validate a suite by name (``specs/NAME.yaml``) or path; errors name the file."""
    path = resolve_suite_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SuiteError(f"{path}:{line} malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping")
    try:
        suite = Suite(**raw)
    except ValidationError as exc:
        raise SuiteError(f"{path}: {_first_error(exc)}") from None
    _check_names(suite, path)
    if suite.verifier_config is not None:
        suite.verifier_config = _tool_config(suite, path)
    return suite


def _tool_config(suite: Suite, path: Path) -> Path:
    """The suite's ``verifier_config``, resolved against the suite file's folder and checked to be a YAML
    mapping for a verifier that reads one (alpha-beta-CROWN)."""
    config = (path.parent / suite.verifier_config.expanduser()).resolve()
    if suite.verifier != "abcrown":
        raise SuiteError(f"{path}: verifier_config: only verifier abcrown reads its own config file "
                         f"(builtin settings go in verifier_options)")
    try:
        raw = yaml.safe_load(config.read_text())
    except OSError as exc:
        raise SuiteError(f"{path}: verifier_config: {config}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: verifier_config: {config}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: verifier_config: {config}: not a YAML mapping")
    return config


def _check_names(suite: Suite, path: Path) -> None:
    """Verifier, dataset, architectures, methods and training settings must exist, and every method
    must accept its options on every profile and architecture."""
    from vsbench.data import DATASETS
    from vsbench.nets import list_nets
    from vsbench.train.loop import TrainConfig
    from vsbench.train.methods import list_methods
    from vsbench.verify.registry import get_verifier

    try:
        get_verifier(suite.verifier)
    except ValueError as exc:
        raise SuiteError(f"{path}: verifier: {exc}") from None
    if suite.verifier_options:
        from vsbench.verify.registry import with_options

        try:
            with_options(suite.verifier, suite.verifier_options)
        except ValueError as exc:
            raise SuiteError(f"{path}: verifier_options: {exc}") from None
    if suite.dataset not in DATASETS:
        raise SuiteError(f"{path}: unknown dataset '{suite.dataset}' (known: {', '.join(DATASETS)})")
    for profile_name, profile in suite.profiles.items():
        for arch in profile.archs or suite.archs:
            if arch not in list_nets():
                raise SuiteError(f"{path}: unknown architecture '{arch}' (known: {', '.join(list_nets())})")
        try:
            TrainConfig(dataset=suite.dataset, arch=suite.archs[0], method="dense", eps=suite.eps, **profile.train)
        except (ValidationError, TypeError) as exc:
            msg = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise SuiteError(f"{path}: profiles.{profile_name}.train: {msg}") from None
    for i, method in enumerate(suite.methods):
        if method.name not in list_methods():
            raise SuiteError(f"{path}: unknown method '{method.name}' (known: {', '.join(list_methods())})")
        for profile in suite.profiles.values():  # the method's options, and the method's own check
            for arch in profile.archs or suite.archs:
                try:
                    TrainConfig(dataset=suite.dataset, arch=arch, method=method.name, eps=suite.eps,
                                method_options=method.options, **profile.train)
                except ValidationError as exc:
                    raise SuiteError(f"{path}: methods.{i} ({method.name}): {_first_error(exc)}") from None


def describe(path: Path) -> dict[str, Any]:
    """One row of `vsbench suites`; never raises (a broken file is listed with its error)."""
    try:
        s = load_suite(str(path))
        return {
            "name": s.name,
            "dataset": s.dataset,
            "eps": s.eps,
            "methods": ", ".join(m.name for m in s.methods),
            "description": s.description,
        }
    except SuiteError as exc:
        return {"name": path.stem, "dataset": "", "eps": "", "methods": "", "description": f"invalid: {exc}"}
