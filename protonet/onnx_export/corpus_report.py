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

from .check import DEFAULT_TOL, compare, random_inputs, randomize_weights

CAFFE2ONNX = (47, 64)
# Layers cut off with `outputs=` (no exact ONNX form): export their bottoms.
CUT_TYPES = ("DetectionOutput", "ROIPooling", "PSROIPooling")


def _cut_outputs(net):
    """The net's outputs with each output of a CUT_TYPES layer replaced by
    that layer's bottoms."""
    cut = {}
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type in CUT_TYPES:
            for t in net.top_names[name]:
                cut[t] = net.bottom_names[name]
    outs = []
    for o in net.outputs:
        if o in net.inputs:
            continue
        for b in cut.get(o, [o]):
            if b not in outs:
                outs.append(b)
    return outs, sorted(set(l.type for l in net.layers if l.type in CUT_TYPES))


# Saturating last layers: their bottoms are compared too (a softmax of
# random logits can be one-hot, hiding any difference before it).
PROBE_TYPES = ("Softmax", "ArgMax", "Sigmoid")


def _probes(net, outputs):
    extra = []
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type in PROBE_TYPES and set(net.top_names[name]) & set(outputs):
            extra += [b for b in net.bottom_names[name] if b not in outputs + extra]
    return extra


def export_one(rel):
    """{status, detail, outputs, worst} for one corpus file (in this process)."""
    from .. import compat
    from ..errors import ProtonetError
    from .exporter import build_model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net, _ = compat.build_corpus(rel)
    except ProtonetError as e:
        return {"status": "not run", "detail": f"protonet: {str(e)[:120]}"}
    randomize_weights(net)
    outputs, cut = _cut_outputs(net)
    try:
        model = build_model(net, outputs=outputs + _probes(net, outputs))
    except ProtonetError as e:
        return {"status": "failed", "detail": str(e)[:160]}
    rows = compare(net, model, random_inputs(net))
    worst = max(r[2] for r in rows)
    status = "exact" if worst <= DEFAULT_TOL else "differs"
    detail = (f"max relative diff {worst:.1e} over {len(rows)} output(s) "
              f"({', '.join(r[0] for r in rows)})")
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


def _run_child(rel, timeout):
    cmd = [sys.executable, "-m", "protonet.onnx_export.corpus_report", "--one", rel]
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
        if row["kind"] != "deploy":
            continue
        t = time.time()
        if rel == compat.TEMPLATE:
            r = {"status": "n/a", "detail": "template (num_output: NUM_OUTPUTS)"}
        else:
            r = _run_child(rel, timeout)
        print(f"{r['status']:8s} {time.time() - t:6.1f}s {rel}: {r['detail']}",
              file=log, flush=True)
        out.append((rel, r))
    return out


def markdown(results, n_files):
    exact = sum(r["status"] == "exact" for _, r in results)
    cut = sum(r["status"] == "exact" and r.get("cut") for _, r in results)
    runs = sum(r["status"] not in ("not run", "n/a") for _, r in results)
    lines = [
        "## ONNX export (corpus deploy nets)", "",
        "Generated by `python -m protonet.onnx_export.corpus_report "
        "tests/fixtures/corpus --markdown`: every deploy net is built as above "
        "(batch 1), given random weights (`protonet.onnx_export.check."
        "randomize_weights`) and a random N(0, 1) input, exported at opset 17, "
        "run in onnxruntime and every output compared with protonet's forward "
        f"(exact = largest difference within {DEFAULT_TOL:g} of the output's "
        "largest magnitude).  Nets ending in DetectionOutput export up to its "
        "bottoms (`--outputs`).", "",
        f"Exported exactly: **{exact} of the {runs} deploy nets protonet runs** "
        f"({cut} of them cut before DetectionOutput).  For comparison, "
        f"caffe2onnx recognises {CAFFE2ONNX[0]} of the {CAFFE2ONNX[1]} net files "
        "of the corpus (train/val included; it checks no numbers).", "",
        "| file | ONNX export | detail |", "|---|---|---|"]
    for rel, r in results:
        lines.append(f"| `{rel}` | {r['status']} | {r['detail']} |")
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
        print(markdown(results, len(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
