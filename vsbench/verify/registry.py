"""Verifiers by name: ``get_verifier("builtin")``; ``vnncomp:DIR`` runs a VNN-COMP tool folder.

Factories are imported lazily so that a missing optional tool only matters when it is asked for.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from vsbench.spec.api import Verifier

# name -> "module:attribute" of a zero-argument factory (usually the class)
VERIFIERS: dict[str, str] = {
    "builtin": "vsbench.verify.builtin:BuiltinVerifier",
    "marabou": "vsbench.verify.external:MarabouVerifier",
    "abcrown": "vsbench.verify.external:AbcrownVerifier",
}
# prefix -> "module:attribute" of a one-argument factory taking what follows the prefix
PREFIXES: dict[str, str] = {
    "vnncomp:": "vsbench.verify.external:VnncompToolVerifier",
    "abcrown:": "vsbench.verify.external:AbcrownVerifier",  # abcrown:CONFIG.yaml, the tool's own config
}


def _load(target: str, name: str):
    module, attr = target.split(":")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"verifier {name!r} is not available in this installation ({exc})") from None


def resolved(name: str) -> str:
    """``vnncomp:DIR`` / ``abcrown:CONFIG`` with the path made absolute (Ray workers do not share the
    caller's working folder)."""
    for prefix in PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return prefix + str(Path(name[len(prefix):]).expanduser().resolve())
    return name


def get_verifier(name: str) -> Verifier:
    """A new verifier for ``name``; unknown names raise ``ValueError`` listing the choices."""
    if name in VERIFIERS:
        return _load(VERIFIERS[name], name)()
    for prefix, target in PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return _load(target, name)(name[len(prefix):])
    raise ValueError(f"unknown verifier {name!r}; choices: {', '.join(list_verifiers())}")


def with_options(name: str, options: dict | None):
    """``name`` itself without options, else a factory of the built-in verifier with those settings
    (:class:`vsbench.verify.config.VerifierConfig`; a bad key or value raises ``ValueError``)."""
    if not options:
        return name
    if name != "builtin":
        raise ValueError(f"verifier options apply to the built-in verifier only, not {name!r}")
    from vsbench.verify.builtin import ConfiguredBuiltin
    from vsbench.verify.config import make_config

    return ConfiguredBuiltin(make_config(options))


def list_verifiers() -> list[str]:
    """Names ``get_verifier`` accepts (prefixed forms shown as ``vnncomp:DIR``, ``abcrown:CONFIG``)."""
    return list(VERIFIERS) + [p + ("CONFIG" if p == "abcrown:" else "DIR") for p in PREFIXES]
