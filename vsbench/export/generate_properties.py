"""Regenerate a vsbench benchmark's properties from a seed: ``python generate_properties.py SEED [DATA_DIR]``.

Copied verbatim into every exported benchmark folder, so organisers can run it in their own
environment: Python 3.8+, numpy and the standard library only (no vsbench, no ONNX runtime). It
downloads the test set named in ``dataset.json`` (checked by sha256) unless ``DATA_DIR/<dataset>/``
holds it, draws ``n`` test images with SEED and writes ``vnnlib/``, ``instances.csv``,
``misclassified.json`` and ``properties.json`` byte for byte as ``vsbench.export.benchmark.regenerate``
does. Which images each model classifies correctly comes from ``predictions.json`` (computed by
onnxruntime at export, for the models whose sha256 it lists). Hand-written on purpose: the point is
to depend on nothing. ``manifest.json`` is left as it was.
"""

import csv
import gzip
import hashlib
import io
import json
import os
import sys
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    sys.stderr.write("error: " + msg + "\n")
    sys.exit(2)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(info, name, data_dir):
    """Path of the dataset file ``name``: in ``data_dir`` if given, else downloaded into ./data; checked."""
    folder = os.path.join(data_dir or os.path.join(HERE, "data"), info["folder"])
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        if data_dir:
            fail(path + ": missing")
        os.makedirs(folder, exist_ok=True)
        for mirror in info["mirrors"]:
            try:
                urllib.request.urlretrieve(mirror + name, path + ".part")
                os.replace(path + ".part", path)
                break
            except OSError as exc:
                sys.stderr.write("download from " + mirror + " failed: " + str(exc) + "\n")
        else:
            fail("could not download " + name)
    if sha256(path) != info["sha256"][name]:
        fail(path + ": sha256 does not match the published test set")
    return path


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def num(v):
    return np.format_float_positional(float(v), unique=True, trim="0")


def vnnlib_text(x, label, eps, n_classes, comment):
    """L-inf robustness at ``x`` (clipped to [0, 1]) in the VNN-COMP layout, as vsbench writes it."""
    lo, hi = np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0)
    lines = ["; " + comment, ""]
    lines += [f"(declare-const X_{i} Real)" for i in range(x.size)] + [""]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_classes)] + [""]
    lines += ["; Input constraints:"]
    lines += [f"(assert (<= X_{i} {num(h)}))\n(assert (>= X_{i} {num(l)}))" for i, (l, h) in enumerate(zip(lo, hi))]
    lines += ["", "; Output constraints:", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(n_classes) if j != label] + ["))"]
    return "\n".join(lines) + "\n"


def write(path, text):
    with open(path + ".tmp", "w", newline="") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main(argv):
    if len(argv) not in (1, 2):
        fail("usage: python generate_properties.py SEED [DATA_DIR]")
    try:
        seed = int(argv[0])
    except ValueError:
        fail("SEED must be an integer, got " + repr(argv[0]))
    data_dir = argv[1] if len(argv) == 2 else None
    with open(os.path.join(HERE, "dataset.json")) as f:
        dataset = json.load(f)
    with open(os.path.join(HERE, "predictions.json")) as f:
        predictions = json.load(f)
    with open(os.path.join(HERE, "properties.json")) as f:
        info = json.load(f)
    names = sorted(predictions["predicted"])
    for name in names:
        if sha256(os.path.join(HERE, "onnx", name + ".onnx")) != predictions["sha256"][name]:
            fail("onnx/" + name + ".onnx: not the model predictions.json was computed for")
    images = read_idx(fetch(dataset, dataset["files"][0], data_dir))
    labels = read_idx(fetch(dataset, dataset["files"][1], data_dir))
    n, eps, timeout = info["n"], info["eps"], info["timeout"]
    indices = [int(i) for i in np.random.default_rng(seed).permutation(len(labels))[:n]]
    for old in os.listdir(os.path.join(HERE, "vnnlib")):
        if old.startswith("prop_") and old.endswith(".vnnlib"):
            os.remove(os.path.join(HERE, "vnnlib", old))
    props = {}
    for i in indices:
        x = (images[i].astype(np.float32) / np.float32(255)).astype(np.float64).ravel()
        label, rel = int(labels[i]), f"vnnlib/prop_{i}_eps{eps:g}.vnnlib"
        props[i] = (label, rel)
        comment = f"vsbench local robustness: test image {i}, label {label}, L-inf eps {eps:g} clipped to [0, 1]"
        write(os.path.join(HERE, rel), vnnlib_text(x, label, eps, predictions["n_classes"], comment))
    rows, wrong = [], {}
    for name in names:
        wrong[name] = []
        for i, (label, rel) in props.items():
            if int(predictions["predicted"][name][i]) == label:
                rows.append((f"onnx/{name}.onnx", rel, f"{timeout:g}"))
            else:
                wrong[name].append(i)
    info.update({"n": len(props), "indices": list(props)})
    info["meta"]["property_seed"] = seed
    info["properties"] = {rel: {"property": i, "label": label, "eps": eps} for i, (label, rel) in props.items()}
    write(os.path.join(HERE, "properties.json"), json.dumps(info, indent=1) + "\n")
    write(os.path.join(HERE, "misclassified.json"), json.dumps(wrong, indent=1) + "\n")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write(os.path.join(HERE, "instances.csv"), buf.getvalue())


if __name__ == "__main__":
    main(sys.argv[1:])
