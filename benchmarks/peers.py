"""The same net in PyTorch (CPU), built from protonet's layer list.

`TorchNet` walks the layers of a protonet `Net` (after phase filtering and
split insertion) and calls the matching ``torch.nn.functional`` op, with the
parameters copied from the protonet blobs, so both runtimes compute the same
function with the SAME weights.  Supported: Input, Convolution, Pooling (MAX,
AVE, global; Caffe's ceil rounding), ReLU, LRN, InnerProduct, Dropout,
Concat, Eltwise, BatchNorm (global statistics), Scale, Softmax, Split,
SoftmaxWithLoss.  Anything else raises.
"""

import numpy as np
import torch
import torch.nn.functional as F

from protonet.proto import caffe_pb2

_PP = caffe_pb2.PoolingParameter


def _pair(p, name, default):
    """kernel/stride/pad of a Convolution- or PoolingParameter as (h, w)."""
    rep = getattr(p, name)
    h = name.replace("_size", "") + "_h"
    if h in p.DESCRIPTOR.fields_by_name and p.HasField(h):
        return (getattr(p, h), getattr(p, h[:-2] + "_w"))
    if isinstance(rep, int):
        return (rep, rep) if (rep or default is None) else (default, default)
    rep = list(rep)
    if not rep:
        return (default, default)
    return (rep[0], rep[-1]) if len(rep) == 2 else (rep[0], rep[0])


class TorchNet:
    """A protonet Net re-expressed as torch ops (see module docstring)."""

    def __init__(self, net, requires_grad=False):
        self.net = net
        self.ops = []
        self.params = []
        for lp, layer in zip(net.param.layer, net.layers):
            blobs = [torch.from_numpy(np.array(b.data, copy=True))
                     for b in layer.blobs]
            for t in blobs:
                t.requires_grad_(requires_grad)
            self.params += blobs
            self.ops.append((lp, blobs))

    def __call__(self, inputs, train=False):
        env = dict(inputs)
        loss = None
        for lp, w in self.ops:
            x = [env[b] for b in lp.bottom]
            t = lp.type
            if t == "Input":
                continue
            if t == "Convolution":
                p = lp.convolution_param
                y = F.conv2d(x[0], w[0], w[1] if len(w) > 1 else None,
                             _pair(p, "stride", 1), _pair(p, "pad", 0),
                             _pair(p, "dilation", 1), p.group)
            elif t == "Pooling":
                y = self._pool(lp.pooling_param, x[0])
            elif t == "ReLU":
                s = lp.relu_param.negative_slope
                y = F.leaky_relu(x[0], s) if s else F.relu(x[0])
            elif t == "LRN":
                p = lp.lrn_param
                y = F.local_response_norm(x[0], p.local_size, p.alpha, p.beta,
                                          p.k)
            elif t == "InnerProduct":
                y = F.linear(x[0].flatten(1), w[0], w[1] if len(w) > 1 else None)
            elif t == "Dropout":
                y = F.dropout(x[0], lp.dropout_param.dropout_ratio, train)
            elif t == "Concat":
                y = torch.cat(x, lp.concat_param.axis)
            elif t == "Eltwise":
                p = lp.eltwise_param
                if p.operation == caffe_pb2.EltwiseParameter.SUM:
                    c = list(p.coeff) or [1.0] * len(x)
                    y = sum(ci * xi if ci != 1 else xi for ci, xi in zip(c, x))
                elif p.operation == caffe_pb2.EltwiseParameter.PROD:
                    y = x[0]
                    for xi in x[1:]:
                        y = y * xi
                else:
                    y = torch.stack(x).amax(0)
            elif t == "BatchNorm":
                f = float(w[2][0]) if len(w) > 2 and float(w[2][0]) else 1.0
                y = F.batch_norm(x[0], w[0].detach() / f, w[1].detach() / f,
                                 eps=lp.batch_norm_param.eps)
            elif t == "Scale":
                shape = (1, -1) + (1,) * (x[0].dim() - 2)
                y = x[0] * w[0].view(shape)
                if len(w) > 1:
                    y = y + w[1].view(shape)
            elif t == "Softmax":
                y = F.softmax(x[0], 1)
            elif t == "Split":
                for name in lp.top:
                    env[name] = x[0]
                continue
            elif t == "SoftmaxWithLoss":
                loss = F.cross_entropy(x[0], x[1].long())
                env[lp.top[0]] = loss
                continue
            else:
                raise NotImplementedError(f"peers.TorchNet: layer type {t}")
            env[lp.top[0]] = y
        return env, loss

    @staticmethod
    def _pool(p, x):
        if p.global_pooling:
            return (F.adaptive_max_pool2d if p.pool == _PP.MAX
                    else F.adaptive_avg_pool2d)(x, 1)
        k = _pair(p, "kernel_size", None)
        s = _pair(p, "stride", 1)
        pad = _pair(p, "pad", 0)
        ceil = p.round_mode == _PP.CEIL
        if p.pool == _PP.MAX:
            return F.max_pool2d(x, k, s, pad, ceil_mode=ceil)
        return F.avg_pool2d(x, k, s, pad, ceil_mode=ceil, count_include_pad=True)
