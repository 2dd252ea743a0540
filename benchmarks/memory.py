"""Peak memory of protonet inference against the performance issue's bound
(used by benchmarks/run.py).

    bound = weights + the largest bottom/top pair of one layer
            + the largest im2col buffer (Caffe's: C * prod(kernel) x output
              positions of one image, for every non-1x1 convolution)

The measurement is the process's peak resident memory during two forwards
of a ``Net(..., memory="inference")`` whose weights are already loaded (the
peak is reset after loading through /proc/self/clear_refs), minus the
resident memory before the net was made (interpreter, NumPy, protonet).
"""

import numpy as np

MIB = 1 << 20


def _status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak():
    """Make VmHWM start again from the current resident size (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def inference_bound(net):
    """(weights, largest activation pair, largest im2col buffer) in bytes,
    from the net's shapes (take them before a forward that releases)."""
    seen, weights = set(), 0
    for layer in net.layers:
        for b in layer.blobs:
            if id(b) not in seen:
                seen.add(id(b))
                weights += b.data.nbytes
    itemsize = np.dtype(net.dtype).itemsize
    pair = cols = 0
    for layer, bottom, top in zip(net.layers, net.bottom_vecs, net.top_vecs):
        blobs = {id(b): b for b in list(bottom) + list(top)}
        pair = max(pair, sum(b.count for b in blobs.values()) * itemsize)
        if layer.type == "Convolution" and not layer.is_1x1:
            cols = max(cols, layer.channels * int(np.prod(layer.kernel))
                       * int(np.prod(layer.col_shape)) * itemsize)
    return weights, pair, cols


def memory_worker(net_param, weights, rounds=2):
    """Peak memory of inference after loading, and the bound, in MiB."""
    from protonet import Net
    base = _status("VmRSS")
    net = Net(net_param, weights=weights, memory="inference")
    w, pair, cols = inference_bound(net)
    rng = np.random.default_rng(0)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = rng.random(blob.shape, dtype=np.float32)
    loaded = _status("VmRSS")
    reset_peak()
    for _ in range(rounds):
        net.forward_from_to()
    peak = _status("VmHWM") - base
    bound = w + pair + cols
    return {"peak_mib": peak / MIB, "loaded_mib": (loaded - base) / MIB,
            "weights_mib": w / MIB, "pair_mib": pair / MIB,
            "im2col_mib": cols / MIB, "bound_mib": bound / MIB,
            "ratio": peak / bound}
