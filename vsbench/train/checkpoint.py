"""Model folders: ``checkpoint.pt`` (state_dict, masks baked in) + ``manifest.json``.

The manifest records the layer list after compaction, so a structured-pruned (smaller) net is
rebuilt exactly; loading uses ``torch.load(weights_only=True)`` and checks the file's SHA-256.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from pathlib import Path

import torch
from torch import nn

from vsbench.nets import build_from_layers, describe_layers
from vsbench.train.sparsity import flops, nonzero_params, remove_parametrizations

CHECKPOINT, MANIFEST = "checkpoint.pt", "manifest.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(folder: str | Path, model: nn.Module, meta: dict, in_shape=None) -> Path:
    """Write the model and its manifest (``meta`` + layers, in_shape, counts, versions, hash).

    ``in_shape`` defaults to ``meta["in_shape"]`` (set by :func:`vsbench.train.loop.train`), else MNIST's.
    """
    import vsbench

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = remove_parametrizations(copy.deepcopy(model)).cpu()
    layers = describe_layers(model)
    shape = list(in_shape or meta.get("in_shape") or (1, 28, 28))
    torch.save(model.state_dict(), folder / CHECKPOINT)
    manifest = {
        **meta,
        "layers": layers,
        "in_shape": shape,
        "nonzero_params": nonzero_params(model),
        "flops": flops(model, tuple(shape)),
        "versions": {"vsbench": vsbench.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "hashes": {CHECKPOINT: _sha256(folder / CHECKPOINT)},
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(folder / MANIFEST)  # the manifest marks a finished model
    return folder


def _size_problem(layers, state: dict) -> str:
    """"" if every Linear / Conv / BatchNorm layer the manifest declares has that weight shape in the checkpoint."""
    try:
        for i, d in enumerate(layers):
            if d.get("type") in ("linear", "conv", "batchnorm"):
                if d["type"] == "batchnorm":
                    want = [int(d["features"])]
                else:
                    want = [int(d["out"]), int(d["in"])] + ([int(d["kernel"])] * 2 if d["type"] == "conv" else [])
                have = state.get(f"{i}.weight")
                if have is None or list(have.shape) != want:
                    got = "none" if have is None else "x".join(map(str, have.shape))
                    return f"layer {i} declares a {'x'.join(map(str, want))} weight, the checkpoint holds {got}"
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"malformed layer description {exc!r}"
    return ""


def load_checkpoint(folder: str | Path) -> tuple[nn.Sequential, dict]:
    """``(model in eval mode, manifest)``; one ``ValueError`` naming the file if anything is off."""
    folder = Path(folder)
    mpath, cpath = folder / MANIFEST, folder / CHECKPOINT
    try:
        manifest = json.loads(mpath.read_text())
        layers = manifest["layers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{mpath}: not a readable model manifest ({type(exc).__name__}: {exc})") from None
    if not cpath.is_file():
        raise ValueError(f"{cpath}: checkpoint file missing")
    expected = (manifest.get("hashes") or {}).get(CHECKPOINT)
    if expected and _sha256(cpath) != expected:
        raise ValueError(f"{cpath}: SHA-256 does not match the manifest (file changed or corrupt)")
    try:
        state = torch.load(cpath, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{cpath}: cannot load weights ({type(exc).__name__}: {str(exc)[:200]})") from None
    problem = _size_problem(layers, state)  # before building: a declared layer may be huge
    if problem:
        raise ValueError(f"{mpath}: {problem}")
    try:
        model = build_from_layers(layers)
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{mpath}: {exc}") from None
    except RuntimeError as exc:  # state_dict mismatches
        raise ValueError(f"{cpath}: cannot load weights ({str(exc)[:200]})") from None
    return model.eval(), manifest
