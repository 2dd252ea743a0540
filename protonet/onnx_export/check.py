"""Run an exported model in onnxruntime and compare it with protonet.

`compare(net, model, inputs)` feeds the same inputs to both and returns, per
output blob, the largest absolute difference and that difference relative to
the largest magnitude of protonet's output (the figure the tests hold to
1e-4 in float32).
"""

from __future__ import annotations

import numpy as np

from ..errors import ProtonetError

DEFAULT_TOL = 1e-4


def random_inputs(net, seed=0, shapes=None):
    """N(0, 1) arrays for every input blob (at `shapes` when given)."""
    gen = np.random.default_rng(seed)
    shapes = shapes or {}
    return {n: gen.standard_normal(shapes.get(n, net.blobs[n].shape)).astype(np.float32)
            for n in net.inputs}


def session(model):
    """An onnxruntime CPU session for a ModelProto or a path."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ProtonetError("checking an export needs onnxruntime: pip install "
                            "protonet[onnx]") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def protonet_forward(net, inputs, names):
    """protonet's outputs `names` for `inputs` (reshaping the net if needed)."""
    changed = False
    for n, a in inputs.items():
        if tuple(net.blobs[n].shape) != a.shape:
            net.blobs[n].reshape(a.shape)
            changed = True
    if changed:
        net.reshape()
    for n, a in inputs.items():
        net.blobs[n].data[...] = a
    net.forward_from_to()
    return {n: np.array(net.blobs[n].data, copy=True) for n in names}


def compare(net, model, inputs, sess=None):
    """[(output, max |diff|, max |diff| / max |protonet|, max |protonet|)]."""
    sess = sess or session(model)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {k: v for k, v in inputs.items()
                                         if k in {i.name for i in sess.get_inputs()}})))
    want = protonet_forward(net, inputs, names)
    rows = []
    for n in names:
        a, b = want[n], np.asarray(got[n])
        if a.shape != b.shape:
            raise ProtonetError(f"ONNX check: output '{n}' has shape {b.shape} "
                                f"in onnxruntime, {a.shape} in protonet")
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        if not np.isfinite(diff):
            diff = 0.0 if np.array_equal(a, b, equal_nan=True) else float("inf")
        rows.append((n, diff, diff / scale if scale else diff, scale))
    return rows


def format_rows(rows, tol=DEFAULT_TOL, label="random input"):
    lines = [f"{label}:"]
    for n, diff, rel, scale in rows:
        flag = "ok" if rel <= tol else "ABOVE TOLERANCE"
        lines.append(f"  {n:<30} max|diff| {diff:.3g}  relative {rel:.3g} "
                     f"(max|out| {scale:.3g})  {flag}")
    return "\n".join(lines)


def randomize_weights(net, seed=0):
    """Random parameters that keep activations O(1) through deep nets, for
    checking exports of nets without trained weights: weights N(0, 1/fan_in),
    other blobs near their neutral value (BatchNorm: small means, variances
    around 1, scale factor 1; Scale/BN/PReLU/Normalize around 1)."""
    gen = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            C = blobs[0].count
            blobs[0].data[...] = 0.1 * gen.standard_normal(C)
            blobs[1].data[...] = 0.5 + gen.random(C)
            blobs[2].data[...] = 1
            continue
        for k, b in enumerate(blobs):
            shape = b.shape
            if layer.type in ("Scale", "BN", "Normalize", "PReLU") and k == 0:
                b.data[...] = 0.75 + 0.5 * gen.random(shape)
            elif len(shape) >= 2 and layer.type not in ("Scale", "Bias", "BN"):
                fan_in = int(np.prod(shape[1:])) if layer.type != "Deconvolution" \
                    else int(shape[0] * np.prod(shape[2:]))
                if layer.type == "InnerProduct" and getattr(layer, "transpose", False):
                    fan_in = shape[0]
                b.data[...] = gen.standard_normal(shape, np.float32) / np.float32(np.sqrt(max(fan_in, 1)))
            else:
                b.data[...] = 0.1 * gen.standard_normal(shape)
