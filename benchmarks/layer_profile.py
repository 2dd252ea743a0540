"""Per-layer times of protonet against the machine's sgemm on the same GEMM
shapes, measured in the same process (used by benchmarks/run.py).

For every Convolution and InnerProduct layer the forward is one GEMM per
group, (M x K) @ (K x N) with N = batch x output positions; the backward is
the weight-gradient GEMM (M x N) @ (N x K) plus, when the layer propagates
down, the input-gradient GEMM (K x M) @ (M x N).  The reference times
``numpy.matmul`` on exactly those shapes, with the transposed operands as
views (as BLAS receives them), so "fwd / sgemm" and "bwd / sgemm" are the
fractions of what this machine's BLAS does on the layer's own work: the cost
of im2col, col2im, bias, chunking and Python, or the gain of Winograd.

Wide GEMMs are timed on their first REF_MAX_COLUMNS columns (at least one
image's worth): the rate of a GEMM is flat in N long before that, and the
full operands of VGG-16's conv1_2 at batch 16 would take 2 GB.
"""

import time

import numpy as np

REF_MAX_COLUMNS = 1 << 16


def gemm_shape(layer, bottom, top):
    """(M, K, N, groups) of a layer's forward GEMM over the whole batch, or
    None for layers that are not GEMMs."""
    if layer.type == "Convolution":
        g = layer.group
        K = layer.channels // g * int(np.prod(layer.kernel))
        P = int(np.prod(layer.col_shape))
        return layer.num_output // g, K, layer.num * P, g, P
    if layer.type == "InnerProduct":
        M, K = layer.blobs[0].shape
        N = bottom[0].shape[0]
        return M, K, N, 1, N
    return None


def _best(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def sgemm_seconds(M, K, N, count=1, trans_a=False, trans_b=False, reps=5):
    """Best time of `count` float32 GEMMs (M x K) @ (K x N); a transposed
    operand is the .T view of a contiguous array, as in the layers."""
    rng = np.random.default_rng(0)
    a = rng.random((K, M) if trans_a else (M, K), dtype=np.float32)
    b = rng.random((N, K) if trans_b else (K, N), dtype=np.float32)
    a, b = (a.T if trans_a else a), (b.T if trans_b else b)
    c = np.empty((M, N), np.float32)

    def run():
        for _ in range(count):
            np.matmul(a, b, out=c)
    return _best(run, reps)


def reference(shape, backward_data, reps=5):
    """(forward seconds, backward seconds) of the sgemm reference for a
    layer's whole batch: its GEMMs on at most REF_MAX_COLUMNS columns,
    scaled to N."""
    M, K, N, g, P = shape
    n = min(N, max(P, REF_MAX_COLUMNS))
    scale = N / n
    fwd = sgemm_seconds(M, K, n, g, reps=reps) * scale
    bwd = sgemm_seconds(M, n, K, g, trans_b=True, reps=reps) * scale
    if backward_data:
        bwd += sgemm_seconds(K, M, n, g, trans_a=True, reps=reps) * scale
    return fwd, bwd


def profile_net(net, train, reps):
    """Best forward (reshape included) and backward time of every layer of
    `net`, running the layers in order so each sees real inputs, each as the
    net runs it (``forward_from_to(i, i)``: a batch-separable layer as one
    clone per core on its slice of the batch, protonet/batch_split.py)."""
    n = len(net.layers)
    fwd, bwd = [float("inf")] * n, [float("inf")] * n
    for _ in range(reps + 1):  # the first pass warms buffers and caches
        for i in range(n):
            t0 = time.perf_counter()
            net.forward_from_to(i, i)
            fwd[i] = min(fwd[i], time.perf_counter() - t0)
        if train:
            for i in reversed(range(n)):
                if net.layer_need_backward[i]:
                    t0 = time.perf_counter()
                    net.backward_from_to(i, i)
                    bwd[i] = min(bwd[i], time.perf_counter() - t0)
    return fwd, [t if t < float("inf") else None for t in bwd]


def layer_rows(net, train, reps, only=None):
    """One dict per layer (or per layer of the types in `only`): times in
    ms, GEMM shape, achieved GFLOP/s and the sgemm reference's."""
    fwd, bwd = profile_net(net, train, reps)
    rows = []
    for i, layer in enumerate(net.layers):
        if only and layer.type not in only:
            continue
        row = {"layer": net.layer_names[i], "type": layer.type,
               "fwd_ms": fwd[i] * 1e3,
               "bwd_ms": bwd[i] * 1e3 if bwd[i] else None}
        shape = gemm_shape(layer, net.bottom_vecs[i], net.top_vecs[i])
        if shape:
            M, K, N, g, _ = shape
            flops = 2.0 * M * K * N * g
            down = bool(bwd[i]) and any(net.bottom_need_backward[i])
            ref_f, ref_b = reference(shape, down)
            row.update(gemm=f"{M}x{K}x{N}" + (f" x{g}" if g > 1 else ""),
                       fwd_gflops=flops / fwd[i] / 1e9,
                       sgemm_gflops=flops / ref_f / 1e9,
                       fwd_ratio=ref_f / fwd[i],
                       ref_fwd_ms=ref_f * 1e3)
            if bwd[i]:
                bflops = flops * (2 if down else 1)
                row.update(bwd_gflops=bflops / bwd[i] / 1e9,
                           bwd_sgemm_gflops=bflops / ref_b / 1e9,
                           bwd_ratio=ref_b / bwd[i],
                           ref_bwd_ms=ref_b * 1e3)
        rows.append(row)
    return rows


def peak_gflops():
    """The sgemm rate on 2048^3, the machine's large-GEMM peak."""
    return 2.0 * 2048 ** 3 / sgemm_seconds(2048, 2048, 2048, reps=3) / 1e9
