"""ONNX export of trained models (checked against torch in onnxruntime) and size / FLOP counts.

Exports are written for every VNN-COMP tool to read: opset 13 and only Conv, Gemm, Relu, Flatten and
(where a padded convolution needs a per-position bias) a same-shape constant Add; no ``Identity``. The input
normalisation is folded into the first affine layer: tools such as Marabou reject the broadcasting
``Sub`` / ``Div`` it would otherwise export to.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a model is exported, not for running ONNX files
    from torch import nn

OPSET = 13  # the oldest opset with every op we write; tools from VNN-COMP 2021 on read it
TOLERANCE = 1e-4


class ExportError(ValueError):
    """The exported ONNX model does not compute what the torch model computes."""


def _plain(model: nn.Module) -> nn.Module:
    """A float32 CPU eval-mode copy with parametrizations and pruning masks baked into the weights.

    The caller's model is left as it was (``remove_parametrizations`` would edit the class it shares
    with the copy, so the copy is un-parametrized by hand).
    """
    import torch
    from torch.nn.utils import parametrize, prune

    with torch.no_grad():  # torch.nn.utils.prune keeps a non-leaf weight that deepcopy refuses
        for m in model.modules():
            for hook in m._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    setattr(m, hook._tensor_name, hook.apply_mask(m))
    model = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        for m in model.modules():
            if parametrize.is_parametrized(m):
                values = {name: getattr(m, name).detach().clone() for name in m.parametrizations}
                m.__class__ = type(m).__bases__[0]  # parametrize's per-module subclass -> the original
                del m._modules["parametrizations"]
                for name, value in values.items():
                    setattr(m, name, torch.nn.Parameter(value))
            for hook in list(m._forward_pre_hooks.values()):
                if isinstance(hook, prune.BasePruningMethod):
                    prune.remove(m, hook._tensor_name)
    return model


def _drop_identities(path: Path) -> None:
    """Replace the ``Identity`` nodes torch writes for shared (equal) weights by initializers of their own:
    not every tool reads ``Identity``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    if not nodes:
        return
    for node in nodes:
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]),
                                                               node.output[0]))
        model.graph.node.remove(node)
    onnx.save(model, str(path))


def export_onnx(model: nn.Module, in_shape: tuple[int, ...], path: str | Path, check: bool = True,
                n_check: int = 16, seed: int = 0) -> Path:
    """Export ``model`` (input in pixel scale, shape ``(1, *in_shape)``) to ONNX (``OPSET``).

    A leading normalisation is folded into the first affine layer (``fold_normalisation``). With
    ``check``, ``n_check`` random inputs in [0, 1] are run in the torch model as given and in
    onnxruntime; a max abs difference above 1e-4 raises ``ExportError`` naming the file.
    """
    import torch

    from vsbench.onnx_io import run_onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from vsbench.export.fold import fold_normalisation

    model = _plain(model)
    folded = fold_normalisation(model, tuple(in_shape))
    dummy = torch.zeros(1, *in_shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(folded, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    _drop_identities(path)
    if check:
        x = torch.rand(n_check, 1, *in_shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = np.stack([model(xi).numpy() for xi in x])
        got = np.stack([run_onnx(path, xi.numpy()) for xi in x])
        diff = float(np.max(np.abs(got.reshape(want.shape) - want)))
        if not diff < TOLERANCE:
            raise ExportError(f"{path}: onnxruntime output differs from torch by {diff:.3g} (limit {TOLERANCE})")
    return path


def onnx_stats(path: str | Path) -> dict:
    """Sizes counted in the ONNX file, over the weight and bias tensors of Gemm, MatMul and Conv nodes.

    ``params``: their elements; ``nonzero_params``: their nonzero elements; ``flops``:
    multiply-accumulates for one input counting only nonzero weights (a Gemm / MatMul weight is
    used once, a Conv kernel weight once per output position; biases, normalisation and
    activations are not counted).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.output) + list(g.input)}
    params = nonzero = flops = 0
    for node in g.node:
        if node.op_type not in ("Gemm", "MatMul", "Conv"):
            continue
        tensors = [consts[i] for i in node.input if i in consts]
        if not tensors:
            continue
        weight = tensors[0]
        params += sum(t.size for t in tensors)
        nonzero += sum(int(np.count_nonzero(t)) for t in tensors)
        uses = 1
        if node.op_type == "Conv":
            uses = int(np.prod(shapes.get(node.output[0], [])[2:] or [0]))
            if uses == 0:
                raise ValueError(f"{path}: cannot infer the output size of Conv node '{node.name}'")
        flops += int(np.count_nonzero(weight)) * uses
    return {"params": int(params), "nonzero_params": int(nonzero), "flops": int(flops)}
