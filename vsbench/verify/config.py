"""VerifierConfig: every knob of the built-in verifier, validated, and hashed into each record.

Defaults are the values the verifier was tuned with. Overrides come from a suite
(``verifier_options:``), the CLI (``--verifier-option key=value``, ``--verifier-config FILE.yaml``)
or the Python API; an unknown key or a bad value is one error line. The soundness threshold is not
a knob: an ``unsat`` always needs a bound above the threshold ``builtin`` uses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class VerifierConfig(BaseModel):
    """Settings of :class:`vsbench.verify.builtin.BuiltinVerifier` (all flat, so ``key=value`` sets any)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # falsification: PGD before bounding, and again (stronger) before branch and bound
    attack_restarts: int = Field(64, ge=0, description="PGD restarts of the first attack")
    attack_steps: int = Field(100, ge=0, description="PGD steps of the first attack")
    attack2_restarts: int = Field(256, ge=0, description="PGD restarts of the attack before BaB")
    attack2_steps: int = Field(200, ge=0, description="PGD steps of the attack before BaB")
    attack2_time_fraction: float = Field(0.1, gt=0, le=1, description="most of the time left the attack before BaB may take")
    # alpha-CROWN
    alpha_bound_iters: int = Field(20, ge=0, description="Adam steps per layer for intermediate bounds")
    alpha_spec_iters: int = Field(50, ge=0, description="Adam steps for the property's rows")
    lr_alpha_init: float = Field(0.1, gt=0, description="alpha learning rate before BaB")
    # branch and bound over ReLU splits (beta-CROWN)
    batch: int = Field(512, ge=1, description="BaB domains bounded per step")
    beta_iters: int = Field(20, ge=0, description="joint alpha/beta Adam steps per BaB batch")
    lr_alpha: float = Field(0.01, gt=0, description="alpha learning rate in BaB")
    lr_beta: float = Field(0.05, gt=0, description="beta learning rate in BaB")
    candidates: int = Field(4, ge=1, description="filtered smart branching: neurons tried per domain")
    falsify: int = Field(16, ge=0, description="worst domains whose box corners are tried each step")
    bab_pgd_every: int = Field(5, ge=1, description="PGD from the worst domains every this many steps")
    bab_pgd_steps: int = Field(20, ge=0, description="steps of that PGD")
    max_domains: int = Field(200_000, ge=1, description="BaB gives up (unknown) above this many domains")
    slice_s: float = Field(1.0, gt=0, description="BaB time per clause group between bookkeeping rounds")
    refine: bool = Field(True, description="split-refined intermediate bounds before BaB's second round")
    refine_splits: int = Field(4, ge=0, le=12, description="earlier neurons split per refined neuron")
    refine_time_fraction: float = Field(0.5, gt=0, le=1, description="share of the time left refinement may use")
    milp: bool = Field(True, description="exact MILP for what BaB cannot decide (and beside BaB with 2+ cores)")
    # branch and bound over the input box (low-dimensional inputs)
    input_split: bool = Field(True, description="split the input box instead of ReLUs on low-dimensional inputs")
    input_split_max_dim: int = Field(8, ge=1, description="input split only with at most this many free inputs")
    input_split_batch: int = Field(4096, ge=2, description="sub-boxes bounded per step")
    input_split_alpha_iters: int = Field(10, ge=0, description="alpha-CROWN steps per sub-box batch (0: CROWN)")
    input_split_pgd_every: int = Field(10, ge=1, description="PGD from the worst sub-boxes every this many steps")
    input_split_max_boxes: int = Field(5_000_000, ge=1, description="input split gives up above this many boxes")
    # the batched fast path over all properties of one model
    fast_path: bool = Field(True, description="attack + CROWN/alpha on all properties of a model first")
    fast_path_batch: int = Field(256, ge=1, description="properties bounded per fast-path call")
    fast_path_attack_steps: int = Field(20, ge=0, description="PGD steps of the fast-path attack")
    fast_path_attack_restarts: int = Field(4, ge=0, description="PGD restarts per clause of the fast-path attack")
    fast_path_alpha_iters: int = Field(20, ge=0, description="alpha-CROWN steps on what CROWN leaves open")

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of every setting (defaults included): changes with any value."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def first_error(exc: ValidationError) -> str:
    """One line for the first problem of a validation error (``key: message``)."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def make_config(options: dict[str, Any] | None = None) -> VerifierConfig:
    """A validated config; ``ValueError`` with one line naming the bad key otherwise."""
    try:
        return VerifierConfig(**(options or {}))
    except ValidationError as exc:
        raise ValueError(f"verifier option {first_error(exc)}") from None


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["batch=256", "refine=false"]`` -> ``{"batch": 256, "refine": False}`` (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--verifier-option {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_options(path: str | Path) -> dict[str, Any]:
    """Options from a YAML mapping file; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable YAML file ({type(exc).__name__})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a verifier config must be a YAML mapping of option: value")
    try:
        VerifierConfig(**raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: {first_error(exc)}") from None
    return raw
