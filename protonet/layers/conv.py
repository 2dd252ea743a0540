"""Convolution layers: Convolution, Deconvolution, Im2col.

Mirrors: src/caffe/layers/base_conv_layer.cpp, conv_layer.cpp,
deconv_layer.cpp, im2col_layer.cpp.

This module reads Caffe's fields and shapes; how the products are computed
(im2col + GEMM over cache-sized chunks of the batch, spread over the cores,
channels-last and channel-major variants, Winograd) is in
protonet/layers/conv_products.py.  Deconvolution runs the same three
products as Convolution with the roles of forward and backward exchanged.
"""

import numpy as np

from ..errors import LayerError
from ..im2col import col2im, conv_out_shape, deconv_out_shape, im2col
from ..layer import Layer, register
from .conv_products import ConvProducts




def conv_geometry(layer, p, num_spatial):
    """Read kernel, stride, pad and dilation from a ConvolutionParameter.

    Each of `kernel_size`, `stride`, `pad`, `dilation` is given once (for
    every spatial axis) or once per spatial axis; `kernel_h/_w`, `stride_h/_w`
    and `pad_h/_w` are the 2-D-only alternatives.

    Returns:
        (kernel, stride, pad, dilation): tuples of `num_spatial` ints.

    Raises:
        LayerError: inconsistent or zero sizes.
    """
    if num_spatial < 1:
        raise LayerError(layer, f"needs at least one spatial axis after the "
                         f"channel axis, got {num_spatial}")

    def read(field, default, hw=True):
        values = list(getattr(p, field))
        h_name, w_name = (field.replace("_size", "") + "_h",
                          field.replace("_size", "") + "_w")
        if hw and (p.HasField(h_name) or p.HasField(w_name)):
            if num_spatial != 2:
                raise LayerError(layer, f"{h_name}/{w_name} can only be used "
                                 f"for 2-D convolution, the bottom has "
                                 f"{num_spatial} spatial axes")
            if values:
                raise LayerError(layer, f"give either {field} or "
                                 f"{h_name}/{w_name}, not both")
            if field == "kernel_size" and not (p.HasField(h_name)
                                               and p.HasField(w_name)):
                raise LayerError(layer, "kernel_h and kernel_w must both be "
                                 "given")
            return (getattr(p, h_name), getattr(p, w_name))
        if not values:
            if default is None:
                raise LayerError(layer, f"{field} (or {h_name}/{w_name}) is "
                                 f"required")
            return (default,) * num_spatial
        if len(values) == 1:
            return tuple(values) * num_spatial
        if len(values) != num_spatial:
            raise LayerError(layer, f"{field} must be given once or once per "
                             f"spatial axis ({num_spatial}), got {len(values)} "
                             f"values {values}")
        return tuple(values)

    kernel = read("kernel_size", None)
    stride = read("stride", 1)
    pad = read("pad", 0)
    dilation = read("dilation", 1, hw=False)
    for name, vals in (("kernel size", kernel), ("stride", stride),
                       ("dilation", dilation)):
        if any(v <= 0 for v in vals):
            raise LayerError(layer, f"{name} must be positive, got {vals}")
    return kernel, stride, pad, dilation


class _BaseConvolutionLayer(ConvProducts, Layer):
    """Shared setup of Convolution and Deconvolution (their products are
    ConvProducts', protonet/layers/conv_products.py).

    In "convolution terms" the image side (bottom for Convolution, top for
    Deconvolution) has `img_channels` channels and spatial shape `img_shape`;
    the column side (the other blob) has `col_channels` and `col_shape`.  The
    weight is (col_channels, img_channels / group, *kernel), and

    * ``_img_to_col``: col = W @ im2col(img)         (conv forward)
    * ``_col_to_img``: img = col2im(W^T @ col)        (conv backward-data)
    * ``_weight_grad``: dW += col @ im2col(img)^T     (conv backward-weight)
    """

    min_bottom = 1
    equal_num_bottom_top = True
    reverse = False  # Deconvolution

    def setup(self, bottom, top):
        p = self.param.convolution_param
        self.channel_axis = self.canonical_axis(bottom[0], p.axis)
        self.num_spatial = bottom[0].num_axes - self.channel_axis - 1
        self.kernel, self.stride, self.pad, self.dilation = \
            conv_geometry(self, p, self.num_spatial)
        # force_nd_im2col and engine only choose an implementation in Caffe.
        self.is_1x1 = all(k == 1 for k in self.kernel) and \
            all(s == 1 for s in self.stride) and not any(self.pad)
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = p.num_output
        self.group = p.group
        if self.num_output <= 0:
            raise LayerError(self, "num_output must be positive")
        if self.group <= 0:
            raise LayerError(self, f"group must be positive, got {self.group}")
        if self.channels % self.group:
            raise LayerError(self, f"the bottom's {self.channels} channels are "
                             f"not divisible by group {self.group}")
        if self.num_output % self.group:
            raise LayerError(self, f"num_output {self.num_output} is not "
                             f"divisible by group {self.group}")
        if self.reverse:
            self.img_channels, self.col_channels = self.num_output, self.channels
        else:
            self.img_channels, self.col_channels = self.channels, self.num_output
        self.bias_term = p.bias_term
        self.blobs = []
        self.add_param_blob((self.col_channels,
                             self.img_channels // self.group) + self.kernel,
                            p.weight_filler)
        if self.bias_term:
            self.add_param_blob((self.num_output,), p.bias_filler)
        self._setup_winograd()
        self._shape = None

    def reshape(self, bottom, top):
        ca = self.channel_axis
        shape = bottom[0].shape
        if len(shape) != ca + 1 + self.num_spatial:
            raise LayerError(self, f"bottom must keep {ca + 1 + self.num_spatial}"
                             f" axes, got shape {shape}")
        if shape[ca] != self.channels:
            raise LayerError(self, f"bottom has {shape[ca]} channels on axis "
                             f"{ca}, the weights expect {self.channels} "
                             f"(bottom shape {shape})")
        for b in bottom[1:]:
            if b.shape != shape:
                raise LayerError(self, f"all bottoms must have the same shape, "
                                 f"got {shape} and {b.shape}")
        in_shape = shape[ca + 1:]
        extent = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel,
                                                        self.dilation))
        if self.reverse:
            out_shape = deconv_out_shape(in_shape, self.kernel, self.stride,
                                         self.pad, self.dilation)
            self.img_shape, self.col_shape = out_shape, in_shape
        else:
            out_shape = conv_out_shape(in_shape, self.kernel, self.stride,
                                       self.pad, self.dilation)
            self.img_shape, self.col_shape = in_shape, out_shape
        if any(o < 1 for o in out_shape) or any(
                e > i + 2 * q for e, i, q in zip(extent, self.img_shape,
                                                 self.pad)):
            raise LayerError(self, f"kernel {self.kernel} (dilated extent "
                             f"{extent}, pad {self.pad}, stride {self.stride}) "
                             f"does not fit the bottom shape {shape}: output "
                             f"spatial shape would be {out_shape}")
        for t in top:
            t.reshape(shape[:ca] + (self.num_output,) + out_shape)
        self.num = int(np.prod(shape[:ca], dtype=np.int64))
        self._allocate()

    def batch_separable(self, bottom):
        return self.channel_axis >= 1

@register("Convolution", v1="CONVOLUTION")
class ConvolutionLayer(_BaseConvolutionLayer):
    """N-D convolution with groups, dilation and bias.

    ``top[n, o] = sum_{c in group(o), k} W[o, c, k] * x_pad[n, c, s*p + d*k]
    + b[o]``, computed as im2col plus one GEMM per chunk of the batch (the
    forward and input gradient of 3x3, stride-1 layers with >= 64 channels
    per group by Winograd F(4x4, 3x3), protonet/winograd.py).
    Gradients: ``dW += dy @ cols^T``, ``db += sum dy``,
    ``dx = col2im(W^T @ dy)``.

    Shape:
        bottom (*lead, C, *S) with lead = axes before ``axis``; top
        (*lead, num_output, *O) with, per spatial axis, rounding DOWN:
        ``O = (S + 2*pad - (dilation*(kernel-1)+1)) // stride + 1``.
        Weight (num_output, C/group, *kernel); bias (num_output,).
        Several bottoms (same shape) give as many tops, with shared weights.

    convolution_param: num_output, bias_term, kernel_size/stride/pad/dilation
    (one value or one per spatial axis), kernel_h/_w, stride_h/_w, pad_h/_w
    (2-D only), group, weight_filler, bias_filler, axis; force_nd_im2col and
    engine are accepted and ignored (one implementation).

    Mirrors: src/caffe/layers/conv_layer.cpp, base_conv_layer.cpp.
    """

    def forward(self, bottom, top):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        for b, t in zip(bottom, top):
            self._img_to_col(b.data, t.data)
            self._bias_forward(t)

    def backward(self, top, propagate_down, bottom):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        for i, (b, t) in enumerate(zip(bottom, top)):
            self._bias_backward(t)
            if self.param_propagate_down[0]:
                self._weight_grad(b.data, t.diff)
            if propagate_down[i]:
                self._col_to_img(t.diff, b.diff)


@register("Deconvolution", v1="DECONVOLUTION")
class DeconvolutionLayer(_BaseConvolutionLayer):
    """Transposed convolution: the adjoint of Convolution's input gradient.

    ``top = col2im(W^T @ x) + b`` (each input pixel scatters a kernel-sized
    patch); gradients ``dx = W @ im2col(dy)``, ``dW += x @ im2col(dy)^T``.

    Shape:
        bottom (*lead, C, *S); top (*lead, num_output, *O) with
        ``O = stride*(S-1) + dilation*(kernel-1)+1 - 2*pad``.
        Weight (C, num_output/group, *kernel); bias (num_output,).

    convolution_param: as Convolution.

    Mirrors: src/caffe/layers/deconv_layer.cpp.
    """

    reverse = True

    def forward(self, bottom, top):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        for b, t in zip(bottom, top):
            self._col_to_img(b.data, t.data)
            self._bias_forward(t)

    def backward(self, top, propagate_down, bottom):
        if not bottom[0].count:  # empty batch/axis: nothing to compute
            return
        for i, (b, t) in enumerate(zip(bottom, top)):
            self._bias_backward(t)
            if self.param_propagate_down[0]:
                self._weight_grad(t.diff, b.data)
            if propagate_down[i]:
                self._img_to_col(t.diff, b.diff)


@register("Im2col", v1="IM2COL")
class Im2colLayer(Layer):
    """Caffe's column matrix of each image, as a blob.

    ``top[n, (c, i, j), oh, ow] = x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]``;
    backward sums the column gradients back into the image (col2im).

    Shape:
        bottom (*lead, C, *S); top (*lead, C*prod(kernel), *O) with
        ``O = (S + 2*pad - (dilation*(kernel-1)+1)) // stride + 1``.

    convolution_param: kernel_size/stride/pad/dilation (one value or one per
    spatial axis), kernel_h/_w, stride_h/_w, pad_h/_w, axis; force_nd_im2col
    accepted; num_output, group, fillers unused.

    Mirrors: src/caffe/layers/im2col_layer.cpp.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.convolution_param
        self.channel_axis = self.canonical_axis(bottom[0], p.axis)
        self.num_spatial = bottom[0].num_axes - self.channel_axis - 1
        self.kernel, self.stride, self.pad, self.dilation = \
            conv_geometry(self, p, self.num_spatial)

    def reshape(self, bottom, top):
        ca, shape = self.channel_axis, bottom[0].shape
        if len(shape) != ca + 1 + self.num_spatial:
            raise LayerError(self, f"bottom must keep {ca + 1 + self.num_spatial}"
                             f" axes, got shape {shape}")
        self.in_shape = shape[ca + 1:]
        self.out_shape = conv_out_shape(self.in_shape, self.kernel, self.stride,
                                        self.pad, self.dilation)
        if any(o < 1 for o in self.out_shape):
            raise LayerError(self, f"kernel {self.kernel} (dilation "
                             f"{self.dilation}, pad {self.pad}) does not fit "
                             f"the bottom shape {shape}")
        self.num = int(np.prod(shape[:ca], dtype=np.int64))
        self.channels = shape[ca]
        top[0].reshape(shape[:ca] + (self.channels * int(np.prod(self.kernel)),)
                       + self.out_shape)
        padded = (self.num, self.channels) + tuple(
            i + 2 * q for i, q in zip(self.in_shape, self.pad))
        if not any(self.pad):
            self._pad_in = self._pad_acc = None
        elif getattr(self, "_pad_in", None) is None or \
                self._pad_in.shape != padded:
            self._pad_in = np.zeros(padded, self.dtype)
            self._pad_acc = None

    def forward(self, bottom, top):
        x = bottom[0].data.reshape((self.num, self.channels) + self.in_shape)
        im2col(x, self.kernel, self.stride, self.pad, self.dilation,
               self.out_shape, top[0].data, self._pad_in)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if any(self.pad) and self._pad_acc is None:
            self._pad_acc = np.zeros_like(self._pad_in)
        dx = bottom[0].diff.reshape((self.num, self.channels) + self.in_shape)
        col2im(top[0].diff, self.kernel, self.stride, self.pad, self.dilation,
               self.out_shape, dx, self._pad_acc)
