"""vsbench: verification-centric benchmarking of sparse certified-robust networks.

API: ``vsbench.verify(model_or_onnx, spec)``, ``vsbench.certify(model, x, eps, label)``,
``vsbench.benchmark(model, dataset, eps, n)`` (see ``vsbench.api``); imported on first use.
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name == "verify":  # the subpackage, whose module object calls vsbench.api.verify
        import importlib

        return importlib.import_module("vsbench.verify")
    if name in ("certify", "benchmark"):
        from vsbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'vsbench' has no attribute {name!r}")
