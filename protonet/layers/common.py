"""Common layers: graph plumbing, inner products, element-wise arithmetic,
softmax, arg-max, reductions and free parameters."""

from functools import partial

import numpy as np

from .. import threads
from ..errors import LayerError
from ..layer import Layer, register
from ..ops import softmax
from ..proto import caffe_pb2

# Bytes of dW per block of InnerProduct's weight gradient.
DW_BLOCK_BYTES = 1 << 20

_EltwiseOp = caffe_pb2.EltwiseParameter
_ReductionOp = caffe_pb2.ReductionParameter


@register("Split", v1="SPLIT")
class SplitLayer(Layer):
    """Copies one bottom to several tops (sharing its data); backward sums
    the tops' diffs.  Inserted by the net wherever a blob fans out.

    The tops are views of the bottom's array, re-shared at every reshape and
    forward because the bottom's producer may have reallocated it.

    Mirrors: src/caffe/layers/split_layer.cpp.
    """

    exact_num_bottom = 1
    min_top = 1

    def batch_separable(self, bottom):
        return True  # split views re-share the bottom's slice

    def reshape(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.reshape(bottom[0].shape)
                t.share_data(bottom[0])

    def forward(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if len(top) == 1:
            if top[0] is not bottom[0]:
                np.copyto(dx, top[0].diff)
            return
        np.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            dx += t.diff


@register("Silence", v1="SILENCE")
class SilenceLayer(Layer):
    """Consumes bottoms so they are not net outputs; no tops.

    Backward sets the bottoms' diffs to zero.

    Mirrors: src/caffe/layers/silence_layer.cpp.
    """

    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, p in zip(bottom, propagate_down):
            if p:
                b.diff[...] = 0


@register("InnerProduct", v1="INNER_PRODUCT")
class InnerProductLayer(Layer):
    """Fully connected layer: y = x W^T + b, one GEMM per direction.

    The bottom is viewed as an (M, K) matrix, M = count(0, axis) and
    K = count(axis).  The weight blob is (num_output, K), or (K, num_output)
    with `transpose: true`; the optional bias blob is (num_output,).

    Gradients: dx = dy W (dy W^T when transposed); dW += dy^T x (x^T dy when
    transposed); db += sum over the M rows of dy.

    Shape:
        bottom (d0, ..., d_{axis-1}, ...) with K = prod(d_axis, ...);
        top (d0, ..., d_{axis-1}, num_output).

    Supported inner_product_param fields: num_output, bias_term,
    weight_filler, bias_filler, axis, transpose.  The weights are created from
    the first bottom's shape; later reshapes must keep K.

    Determinism: the same batch gives bit-identical results run after run,
    but a sample's row may differ in its last bits with the batch it is in:
    the BLAS picks kernels and blockings by M and by a row's position, so
    each float32 dot product is summed in another order.  Two orders differ
    by at most 2 (K + 1) 2^-24 (sum_k |W_nk x_k| + |b_n|).  Fixed 16-row
    GEMM blocks make rows bit-identical with OpenBLAS, but cost 40-290 %
    at batch 1 and 256 on CaffeNet's fc6-fc8
    (benchmarks/ip_batch_invariance.py), so they are not used.

    Mirrors: src/caffe/layers/inner_product_layer.cpp.
    """

    exact_num_bottom = 1
    exact_num_top = 1
    lazy_param_clear = True

    def setup(self, bottom, top):
        p = self.param.inner_product_param
        if p.num_output < 1:
            raise LayerError(self, f"inner_product_param.num_output must be "
                             f"positive, got {p.num_output}")
        self.num_output = p.num_output
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = self.canonical_axis(bottom[0], p.axis,
                                        "inner_product_param.axis")
        self.K = bottom[0].count_range(self.axis)
        wshape = (self.K, self.num_output) if self.transpose \
            else (self.num_output, self.K)
        self.add_param_blob(wshape, p.weight_filler)
        if self.bias_term:
            self.add_param_blob((self.num_output,), p.bias_filler)

    def reshape(self, bottom, top):
        x = bottom[0]
        axis = self.canonical_axis(x, self.param.inner_product_param.axis,
                                   "inner_product_param.axis")
        K = x.count_range(axis)
        wK = self.blobs[0].shape[0 if self.transpose else 1]
        if K != wK:
            raise LayerError(self, f"bottom flattens to {K} features from axis "
                             f"{axis} but the weights expect {wK} (bottom "
                             f"shape {x.shape})")
        self.axis = axis
        self.M, self.K = x.count_range(0, axis), K
        top[0].reshape(x.shape[:axis] + (self.num_output,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        W = self.blobs[0].data
        y = top[0].data.reshape(self.M, self.num_output)
        if self.transpose or self.M > 256:
            np.dot(x, W if self.transpose else W.T, out=y)
        else:
            # Small batches: W @ x^T into a (num_output, M) scratch and one
            # transposed copy is ~1.5x faster than x @ W^T (OpenBLAS streams
            # the weight better; CaffeNet fc6 batch 16: 23 -> 14 ms).
            yT = getattr(self, "_yT", None)
            if yT is None or yT.shape != (self.num_output, self.M) or \
                    yT.dtype != y.dtype:
                yT = self._yT = np.empty((self.num_output, self.M), y.dtype)
            np.matmul(W, x.T, out=yT)
            y[...] = yT.T
        if self.bias_term:
            y += self.blobs[1].data

    def _weight_grad(self, x, dy):
        """dW += dy^T x (x^T dy transposed), block by block of dW's rows
        (about DW_BLOCK_BYTES each), the blocks spread over the cores: the
        product lands in a small per-thread buffer and is added while in
        cache (a weight-sized product cost page faults and a third pass over
        memory: CaffeNet fc6 batch 16 backward 55 -> 37 ms).  Right after
        the solver's (lazy) clear the product is written straight into dW,
        which is then neither zeroed nor read (see Blob.diff_for_write)."""
        dW, fresh = self.blobs[0].diff_for_write()
        A, B = (x, dy) if self.transpose else (dy, x)  # dW = A^T B
        rows = max(1, DW_BLOCK_BYTES // (dW.shape[1] * dW.itemsize))
        bufs = {}  # worker -> its (rows, K) product buffer

        def block(r, worker):
            if fresh:
                np.matmul(A[:, r].T, B, out=dW[r])
                return
            buf = bufs.get(worker)
            if buf is None:
                buf = bufs[worker] = np.empty((rows, dW.shape[1]), dW.dtype)
            buf = buf[:r.stop - r.start]
            np.matmul(A[:, r].T, B, out=buf)
            dW[r] += buf
        threads.run([partial(block, slice(r, min(r + rows, len(dW))))
                     for r in range(0, len(dW), rows)],
                    dW.size >= threads.MIN_SPLIT_ELEMENTS)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        if self.param_propagate_down[0]:
            self._weight_grad(x, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            W = self.blobs[0].data
            dx = bottom[0].diff.reshape(self.M, self.K)
            np.dot(dy, W.T if self.transpose else W, out=dx)


@register("Softmax", v1="SOFTMAX")
class SoftmaxLayer(Layer):
    """Softmax along one axis: y_i = exp(x_i - max x) / sum_j exp(x_j - max x).

    Gradient: dx = y * (dy - sum_axis(dy * y)).  May run in place.

    Shape: top has the bottom's shape.

    Supported softmax_param fields: axis (default 1); engine is ignored (one
    CPU implementation).

    Mirrors: src/caffe/layers/softmax_layer.cpp.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def batch_separable(self, bottom):
        return self.axis >= 1

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(bottom[0], self.param.softmax_param.axis,
                                        "softmax_param.axis")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        softmax(bottom[0].data, self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        dot = np.sum(dy * y, axis=self.axis, keepdims=True)
        dx = bottom[0].diff
        np.subtract(dy, dot, out=dx)
        dx *= y


@register("Eltwise", v1="ELTWISE")
class EltwiseLayer(Layer):
    """Element-wise PROD, SUM (with one coefficient per bottom) or MAX.

    Forward: PROD y = prod_i x_i; SUM y = sum_i c_i x_i; MAX y = max_i x_i.
    Gradient: PROD dx_i = dy * prod_{j != i} x_j (`stable_prod_grad: true`,
    the default) or dy * y / x_i (false); SUM dx_i = c_i dy; MAX routes dy to
    the bottom that won.

    NOTE(caffe): MAX ties between bottoms 0 and 1 go to bottom 1 (the test is
    x0 > x1), while a later bottom wins only when strictly greater.

    Shape: every bottom must have the same shape; the top has it too.

    In place (top is bottom 0) works for SUM and MAX; PROD's backward needs
    the bottoms' original data, so in-place PROD gives wrong gradients, as in
    Caffe.

    Supported eltwise_param fields: operation, coeff (SUM only), and
    stable_prod_grad.

    Mirrors: src/caffe/layers/eltwise_layer.cpp.
    """

    min_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.eltwise_param
        if p.operation not in (_EltwiseOp.PROD, _EltwiseOp.SUM, _EltwiseOp.MAX):
            raise self.unsupported("eltwise_param.operation", p.operation)
        if p.coeff and len(p.coeff) != len(bottom):
            raise LayerError(self, f"eltwise_param.coeff must give one "
                             f"coefficient per bottom ({len(bottom)}), got "
                             f"{len(p.coeff)}")
        if p.coeff and p.operation == _EltwiseOp.PROD:
            raise LayerError(self, "eltwise_param.coeff is only allowed with "
                             "operation SUM, got PROD")
        self.op = p.operation
        self.coeffs = list(p.coeff) if p.coeff else [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.max_idx = None

    def batch_separable(self, bottom):
        return True

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise LayerError(self, f"every bottom must have the same "
                                 f"shape: bottom 0 is {shape}, bottom {i} is "
                                 f"{b.shape}")
        if top[0] is not bottom[0]:
            top[0].reshape(shape)
        if self.op == _EltwiseOp.MAX:
            if self.max_idx is None or self.max_idx.shape != shape:
                self.max_idx = np.empty(shape, np.int32)

    def forward(self, bottom, top):
        y = top[0].data
        xs = [b.data for b in bottom]
        if self.op == _EltwiseOp.PROD:
            np.multiply(xs[0], xs[1], out=y)
            for x in xs[2:]:
                y *= x
        elif self.op == _EltwiseOp.SUM:
            # Caffe zeroes the top, then accumulates c_i * x_i in order.
            c0 = self.dtype.type(self.coeffs[0])
            if any(np.shares_memory(x, y) for x in xs[1:]):
                acc = xs[0] * c0  # a later bottom is the top: sum aside
                for c, x in zip(self.coeffs[1:], xs[1:]):
                    acc += x if c == 1 else x * self.dtype.type(c)
                np.copyto(y, acc)
                return
            rows = len(y) if y.ndim else 1
            flat = [x.reshape(rows, x.size // rows if rows else 0)
                    for x in xs]
            yf = y.reshape(flat[0].shape)

            def part(s):  # sum in the top, rows over threads
                np.multiply(flat[0][s], c0, out=yf[s])
                for c, x in zip(self.coeffs[1:], flat[1:]):
                    yf[s] += x[s] if c == 1 else x[s] * self.dtype.type(c)
            threads.over_rows(len(yf), part, y.size)
        else:
            idx = self.max_idx
            first = xs[0] > xs[1]
            np.copyto(idx, np.where(first, 0, 1))
            np.copyto(y, np.where(first, xs[0], xs[1]))
            for i, x in enumerate(xs[2:], 2):
                win = x > y
                idx[win] = i
                np.copyto(y, x, where=win)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if any(top[0] is b for b in bottom):
            dy = dy.copy()      # in place: writing dx_0 would clobber dy
        if self.op == _EltwiseOp.PROD and self.stable_prod_grad:
            # prefix[i] * suffix[i] = product of every bottom but i.
            xs = [b.data for b in bottom]
            n = len(xs)
            prefix = [None] * n
            run = None
            for i in range(n):
                prefix[i] = run
                run = xs[i] if run is None else run * xs[i]
            run = None
            for i in reversed(range(n)):
                if propagate_down[i]:
                    others = prefix[i] if run is None else (
                        run if prefix[i] is None else prefix[i] * run)
                    np.multiply(others, dy, out=bottom[i].diff)
                run = xs[i] if run is None else run * xs[i]
            return
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = b.diff
            if self.op == _EltwiseOp.PROD:
                np.divide(top[0].data, b.data, out=dx)
                dx *= dy
            elif self.op == _EltwiseOp.SUM:
                if self.coeffs[i] == 1:
                    np.copyto(dx, dy)
                else:
                    np.multiply(dy, self.dtype.type(self.coeffs[i]), out=dx)
            else:
                np.copyto(dx, np.where(self.max_idx == i, dy, 0))


@register("ArgMax", v1="ARGMAX")
class ArgMaxLayer(Layer):
    """The indices (and optionally values) of the top_k largest entries.

    With `axis`, the search runs along that axis and the top replaces its
    size by top_k; the top holds the indices, or with `out_max_val` the
    values only.  Without `axis`, each item of the batch is flattened and
    the top holds the indices, then (with `out_max_val`) the values.

    NOTE(caffe): entries are ranked by (value, index) descending, so among
    equal values the higher index comes first.

    Shape:
        with axis: bottom shape with shape[axis] = top_k;
        without: (N, 2 if out_max_val else 1, top_k) padded with 1s to the
        bottom's number of axes, e.g. (N, 1, top_k, 1) for a 4-D bottom.

    Supported argmax_param fields: out_max_val, top_k, axis.  Forward only.

    Mirrors: src/caffe/layers/argmax_layer.cpp.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.argmax_param
        self.out_max_val = p.out_max_val
        self.top_k = p.top_k
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise LayerError(self, f"argmax_param.top_k must be at least 1, "
                             f"got {self.top_k}")

    def reshape(self, bottom, top):
        x = bottom[0]
        if self.has_axis:
            self.axis = self.canonical_axis(x, self.param.argmax_param.axis,
                                            "argmax_param.axis")
            dim = x.shape[self.axis]
            shape = list(x.shape)
            shape[self.axis] = self.top_k
        else:
            dim = x.count_range(1)
            shape = [1] * max(3, x.num_axes)
            shape[0] = x.shape[0]
            shape[1] = 2 if self.out_max_val else 1
            shape[2] = self.top_k
        if self.top_k > dim:
            where = f"axis {self.axis}" if self.has_axis else \
                "the flattened item"
            raise LayerError(self, f"argmax_param.top_k ({self.top_k}) exceeds "
                             f"the size of {where} ({dim}); bottom shape "
                             f"{x.shape}")
        top[0].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.has_axis:
            v = np.moveaxis(x, self.axis, -1)
        else:
            v = x.reshape(x.shape[0], -1)
        dim = v.shape[-1]
        # Sort the reversed values stably, descending: equal values then keep
        # the higher original index first, as Caffe's pair comparison does.
        order = np.argsort(-v[..., ::-1], axis=-1, kind="stable")
        order = order[..., :self.top_k]
        values = np.take_along_axis(v[..., ::-1], order, axis=-1)
        index = (dim - 1 - order).astype(self.dtype)
        y = top[0].data
        if self.has_axis:
            out = values if self.out_max_val else index
            y[...] = np.moveaxis(out, -1, self.axis)
        elif self.out_max_val:
            y.reshape(x.shape[0], 2, self.top_k)[...] = np.stack([index, values], 1)
        else:
            y.reshape(x.shape[0], self.top_k)[...] = index


@register("Reduction")
class ReductionLayer(Layer):
    """Reduces every axis from `axis` on: SUM, ASUM, SUMSQ or MEAN, times coeff.

    Forward, over the trailing D = count(axis) entries of each of the
    count(0, axis) rows: SUM sum x, ASUM sum |x|, SUMSQ sum x^2, MEAN sum x / D;
    then y *= coeff.
    Gradient: dx = coeff * dy * (1, sign(x), 2x, 1/D respectively).

    NOTE(caffe): all the axes from `axis` to the end are reduced, not only
    `axis`; the default axis 0 gives a 0-axis (scalar) top.

    Shape: top = bottom.shape[:axis].

    Supported reduction_param fields: operation, axis, coeff.

    Mirrors: src/caffe/layers/reduction_layer.cpp.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.reduction_param
        if p.operation not in (_ReductionOp.SUM, _ReductionOp.ASUM,
                               _ReductionOp.SUMSQ, _ReductionOp.MEAN):
            raise self.unsupported("reduction_param.operation", p.operation)
        self.op = p.operation
        self.coeff = p.coeff

    def reshape(self, bottom, top):
        x = bottom[0]
        self.axis = self.canonical_axis(x, self.param.reduction_param.axis,
                                        "reduction_param.axis")
        self.num = x.count_range(0, self.axis)
        self.dim = x.count_range(self.axis)
        top[0].reshape(x.shape[:self.axis])

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op == _ReductionOp.ASUM:
            x = np.abs(x)
        elif self.op == _ReductionOp.SUMSQ:
            x = np.square(x)
        y = top[0].data.reshape(self.num)
        np.sum(x, axis=1, out=y)
        # NOTE(caffe): a MEAN over an empty range is coeff / 0 (inf or NaN).
        scale = (self.coeff / self.dim if self.dim else float("nan")) \
            if self.op == _ReductionOp.MEAN else self.coeff
        if scale != 1:
            y *= self.dtype.type(scale)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if not bottom[0].count:
            return
        scale = self.coeff / self.dim if self.op == _ReductionOp.MEAN \
            else self.coeff
        if self.op == _ReductionOp.SUMSQ:
            scale *= 2
        dy = top[0].diff.reshape(self.num, 1) * self.dtype.type(scale)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op == _ReductionOp.ASUM:
            np.multiply(np.sign(x), dy, out=dx)
        elif self.op == _ReductionOp.SUMSQ:
            np.multiply(x, dy, out=dx)
        else:
            dx[...] = dy


@register("Parameter")
class ParameterLayer(Layer):
    """Exposes one free parameter blob as its top (no bottoms).

    Forward makes the top a view of the parameter; backward adds the top's
    diff into the parameter's diff.

    NOTE(caffe): the top shares the blob's data only once forward has run;
    before that it is a zero-filled blob of the same shape.  Caffe also
    shares the diff, so a consumer's assignment overwrites the parameter's
    diff; here the diff is added at backward, which gives the same result
    for one backward pass and accumulates like any other parameter.

    Shape: top = parameter_param.shape.

    Supported parameter_param fields: shape.  The blob has no filler (zeros)
    until weights are loaded.

    Mirrors: include/caffe/layers/parameter_layer.hpp.
    """

    exact_num_bottom = 0
    exact_num_top = 1

    def setup(self, bottom, top):
        shape = tuple(self.param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise LayerError(self, f"parameter_param.shape has a negative "
                             f"dimension: {shape}")
        self.add_param_blob(shape)
        top[0].reshape(shape)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        top[0].share_data(self.blobs[0])

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff
