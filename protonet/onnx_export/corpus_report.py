"""The ONNX column of docs/compatibility.md: export every corpus deploy net
and compare it with protonet in onnxruntime.

    python -m protonet.onnx_export.corpus_report [CORPUS_DIR] [--markdown]

Each deploy net is built as `python -m protonet.compat` builds it (batch 1,
random weights from `check.randomize_weights`, random N(0, 1) input),
exported at the default opset, run in onnxruntime, and every output compared
with protonet's forward (relative to its largest magnitude).  Nets ending in
DetectionOutput are exported up to its bottoms (`outputs=`).  Each net runs
in its own subprocess, so one net's memory is freed before the next.
caffe2onnx's coverage is the issue's published figure: 47 of 64 net files
recognised.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

from .check import DEFAULT_TOL, compare, random_inputs, randomize_weights

CAFFE2ONNX = (47, 64)
# Layers cut off with `outputs=` (no exact ONNX form): export their bottoms.
CUT_TYPES = ("DetectionOutput", "ROIPooling", "PSROIPooling")


# Training-only layers of a train/val net's TEST phase, cut off the same way.
TRAIN_TYPES = ("Accuracy", "Silence", "ParseEvaluate")


def _is_cut(layer):
    return (layer.type in CUT_TYPES or layer.type in TRAIN_TYPES or layer.is_loss
            or layer.type.endswith("Loss"))


def _tops(net, i):
    return [net._blob_names[b] for b in net.top_ids[i]]


def _bottoms(net, i):
    return [net._blob_names[b] for b in net.bottom_ids[i]]


def _cut_outputs(net):
    """The net's outputs with each output of a CUT_TYPES (or loss /
    Accuracy) layer replaced by that layer's bottoms; split copies stand for
    their source blob, and blobs that are net inputs (labels) are dropped."""
    source, cut = {}, {}
    for i, layer in enumerate(net.layers):
        if layer.type == "Split":
            for t in _tops(net, i):
                source[t] = _bottoms(net, i)[0]
    for i, layer in enumerate(net.layers):
        if _is_cut(layer):
            for t in _tops(net, i):
                cut[t] = [source.get(b, b) for b in _bottoms(net, i)]
    outs = []
    for o in net.outputs:
        for b in cut.get(o, [o]):
            if b not in outs and b not in net.inputs:
                outs.append(b)
    return outs, sorted(set(l.type for l in net.layers if _is_cut(l)
                            and l.type != "Silence"))


# Saturating last layers: their bottoms are compared too (a softmax of
# random logits can be one-hot, hiding any difference before it).
PROBE_TYPES = ("Softmax", "ArgMax", "Sigmoid")


def _probes(net, outputs):
    source = {t: _bottoms(net, i)[0] for i, l in enumerate(net.layers)
              if l.type == "Split" for t in _tops(net, i)}
    extra = []
    for i, layer in enumerate(net.layers):
        if layer.type in PROBE_TYPES and set(_tops(net, i)) & set(outputs):
            extra += [source.get(b, b) for b in _bottoms(net, i)
                      if source.get(b, b) not in outputs + extra]
    return extra


def mask_flips(net, inputs, outputs, tol=1e-5):
    """(flips, all_near_ties, rows): the MAX pooling mask tops of `net`
    compared in the same onnxruntime run as `outputs` (rows as `compare`).

    A mask is an argmax: where two window values differ by a rounding error,
    onnxruntime and protonet may pick different cells, and an unpooling
    layer then routes a value to another place.  A flip counts as a near
    tie when protonet's two candidate values differ by at most `tol` of the
    pooled blob's largest magnitude."""
    from .check import protonet_forward, session
    from .exporter import build_model
    pairs = [(_bottoms(net, i)[0], _tops(net, i)[1])
             for i, l in enumerate(net.layers)
             if l.type == "Pooling" and len(net.top_ids[i]) > 1]
    if not pairs:
        return 0, False, []
    masks = [m for _, m in pairs]
    model = build_model(net, outputs=outputs + [m for m in masks if m not in outputs])
    rows = compare(net, model, inputs)
    feed = {i.name: inputs[i.name] for i in model.graph.input}
    got = dict(zip(masks, session(model).run(masks, feed)))
    want = protonet_forward(net, inputs, masks + [d for d, _ in pairs])
    flips, ties = 0, True
    for data, mask in pairs:
        x = want[data].reshape(want[data].shape[:2] + (-1,))
        bad = np.argwhere(got[mask] != want[mask])
        flips += len(bad)
        for n, c, *_ in bad:
            a, b = int(got[mask][tuple([n, c, *_])]), int(want[mask][tuple([n, c, *_])])
            ties &= bool(abs(x[n, c, a] - x[n, c, b]) <= tol * np.abs(x).max())
    return flips, ties, [r for r in rows if r[0] in outputs]


def export_one(rel):
    """{status, detail, outputs, worst} for one corpus file (in this process);
    a train/val net ("net") is exported in its TEST phase, data layers as
    inputs, up to the bottoms of its loss and Accuracy layers."""
    from .. import compat
    from ..errors import ProtonetError
    from .exporter import build_model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net, kinds = compat.build_corpus(rel)
    except ProtonetError as e:
        return {"status": "not run", "detail": f"protonet: {str(e)[:120]}"}
    randomize_weights(net)
    outputs, cut = _cut_outputs(net)
    if not outputs:
        return {"status": "n/a", "detail": "nothing but data and loss layers in TEST"}
    try:
        model = build_model(net, outputs=outputs + _probes(net, outputs))
    except ProtonetError as e:
        return {"status": "failed", "detail": str(e)[:300]}
    inputs = random_inputs(net)
    gen = np.random.default_rng(1)
    for name, k in kinds.items():   # labels feed only the cut loss layers
        if k != "data" and name in inputs:
            inputs[name] = gen.integers(0, 2, inputs[name].shape).astype(np.float32)
    rows = compare(net, model, inputs)
    worst = max(r[2] for r in rows)
    status = "exact" if worst <= DEFAULT_TOL else "differs"
    if status == "differs":
        flips, ties, again = mask_flips(net, inputs, outputs + _probes(net, outputs))
        if flips and ties:
            rows, worst = again, max(r[2] for r in again)
            status = "exact (near-ties)"
    detail = (f"max relative diff {worst:.1e} over {len(rows)} output(s) "
              f"({', '.join(r[0] for r in rows)})")
    if status == "exact (near-ties)":
        detail += (f"; only through {flips} max-pooling mask flip(s) between "
                   "window values equal within 1e-5 (float rounding), which "
                   "unpooling then moves")
    if cut:
        detail += f"; cut before {', '.join(cut)} (--outputs {','.join(outputs)})"
    return {"status": status, "detail": detail, "worst": worst,
            "cut": bool(cut), "nodes": len(model.graph.node)}


def check_prototxt(path, side=None):
    """export_one for any deploy prototxt (batch 1; inputs of 4 axes at
    side x side when `side` is given), built with seeded random weights."""
    from .. import TEST, Net, io
    from ..errors import ProtonetError
    from ..rng import set_random_seed
    from .exporter import build_model
    set_random_seed(0)
    param = io.read_net(path)
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = 1
                if side and len(shape.dim) == 4:
                    shape.dim[2] = shape.dim[3] = side
    for i, dim in enumerate(param.input_shape):
        dim.dim[0] = 1
        if side and len(dim.dim) == 4:
            dim.dim[2] = dim.dim[3] = side
    try:
        net = Net(param, phase=TEST)
    except ProtonetError as e:
        return {"status": "not run", "detail": f"protonet: {str(e)[:120]}"}
    randomize_weights(net)
    outputs, cut = _cut_outputs(net)
    model = build_model(net, outputs=outputs + _probes(net, outputs))
    rows = compare(net, model, random_inputs(net))
    worst = max(r[2] for r in rows)
    return {"status": "exact" if worst <= DEFAULT_TOL else "differs",
            "detail": f"max relative diff {worst:.1e} ({', '.join(r[0] for r in rows)})",
            "worst": worst, "shape": [list(net.blobs[n].shape) for n in net.inputs]}


def _run_child(rel, corpus, timeout):
    cmd = [sys.executable, "-m", "protonet.onnx_export.corpus_report", corpus,
           "--one", rel]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": f"timed out after {timeout} s"}
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    return {"status": "failed", "detail": "crashed: " + out.stderr.strip()[-160:]}


def rows(corpus, timeout=900, log=sys.stderr):
    from .. import compat
    compat.CORPUS = corpus
    out = []
    for row in compat.manifest():
        rel = row["local_path"]
        t = time.time()
        if rel == compat.TEMPLATE:
            r = {"status": "n/a", "detail": "template (num_output: NUM_OUTPUTS)"}
        else:
            r = _run_child(rel, corpus, timeout)
        print(f"{r['status']:8s} {time.time() - t:6.1f}s {rel}: {r['detail']}",
              file=log, flush=True)
        out.append((rel, row["kind"], r))
    return out


def markdown(results):
    def count(kind, pred):
        return sum(1 for _, k, r in results if (kind is None or k == kind) and pred(r))
    exact = lambda r: r["status"].startswith("exact")  # noqa: E731
    ran = lambda r: r["status"] not in ("not run", "n/a")  # noqa: E731
    lines = [
        "## ONNX export", "",
        "Generated by `python -m protonet.onnx_export.corpus_report "
        "tests/fixtures/corpus --markdown`: every net file is built as above "
        "(batch 1; a train/val net in its TEST phase with its data layers as "
        "inputs), given random weights (`protonet.onnx_export.check."
        "randomize_weights`) and a random N(0, 1) input, exported at opset 17, "
        "run in onnxruntime, and every output compared with protonet's forward "
        f"(exact = every output within {DEFAULT_TOL:g} of its largest "
        "magnitude; the bottom of a final Softmax / ArgMax / Sigmoid is "
        "compared too).  DetectionOutput, and a train/val net's loss and "
        "Accuracy layers, are cut off with `--outputs` (their bottoms are "
        "exported).", "",
        f"- Deploy nets: **{count('deploy', exact)} of the "
        f"{count('deploy', ran)} that protonet runs export exactly** "
        f"({count('deploy', lambda r: exact(r) and r.get('cut'))} of them cut "
        "before DetectionOutput, "
        f"{count('deploy', lambda r: r['status'] == 'exact (near-ties)')} exact "
        "up to max-pooling near-tie flips, see the row).",
        f"- Train/val nets (TEST phase): {count('net', exact)} of the "
        f"{count('net', ran)} that protonet runs "
        f"({count('net', lambda r: r['status'] == 'exact (near-ties)')} up to "
        "near-tie flips).",
        f"- All net files: {count(None, exact)} of {len(results)}; caffe2onnx "
        f"recognises {CAFFE2ONNX[0]} of {CAFFE2ONNX[1]} (the issue's figure; "
        "it checks no numbers).", "",
        "| file | kind | ONNX export | detail |", "|---|---|---|---|"]
    for rel, kind, r in results:
        lines.append(f"| `{rel}` | {kind} | {r['status']} | {r['detail']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m protonet.onnx_export.corpus_report",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("corpus", nargs="?", default=None,
                    help="corpus directory with MANIFEST.tsv [tests/fixtures/corpus]")
    ap.add_argument("--markdown", action="store_true", help="print the table")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per net")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--prototxt", nargs="+", default=None, metavar="NET",
                    help="check these deploy nets instead of the corpus (one "
                    "JSON line each)")
    ap.add_argument("--side", type=int, default=None,
                    help="with --prototxt: image inputs at side x side")
    args = ap.parse_args(argv)
    if args.one:
        if args.corpus:
            from .. import compat
            compat.CORPUS = os.path.abspath(args.corpus)
        print(json.dumps(export_one(args.one)))
        return 0
    if args.prototxt:
        import gc
        for path in args.prototxt:
            t = time.time()
            r = check_prototxt(path, args.side)
            r.update(path=path, seconds=round(time.time() - t, 1))
            print(json.dumps(r), flush=True)
            gc.collect()
        return 0
    from .. import compat
    corpus = os.path.abspath(args.corpus or compat.CORPUS)
    results = rows(corpus, args.timeout)
    if args.markdown:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
