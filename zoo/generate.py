#!/usr/bin/env python
"""Write the model zoo: deploy, train_val and solver prototxts and a README
for every model, from NetSpec code.

    python zoo/generate.py            # (re)write every zoo/<model>/
    python zoo/generate.py vgg16      # only some models

The architectures follow the papers and the original Caffe releases (layer
names included, so their .caffemodel files load by name).  Deploy nets carry
no fillers (as the releases); train_val nets read LMDB databases whose paths
are placeholders to replace, with the mean/scale of the original recipe in
`transform_param`.  Running the script again rewrites the files byte for
byte.  zoo/lenet_digits/ is maintained by hand and not touched here.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from protonet import io  # noqa: E402
from protonet.netspec import NetSpec, layers as L, params as P  # noqa: E402
from protonet.proto import caffe_pb2  # noqa: E402

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
MAX, AVE = P.Pooling.MAX, P.Pooling.AVE
IMAGENET_BGR_MEAN = [104, 117, 123]
VGG_BGR_MEAN = [103.939, 116.779, 123.68]


class Builder:
    """Layer helpers shared by every model: fillers and lr multipliers only
    in train_val, none in deploy."""

    def __init__(self, train, wf=None, bf=None):
        self.n = NetSpec()
        self.train = train
        self.wf = wf or dict(type="xavier")
        self.bf = bf or dict(type="constant", value=0)
        self.label = None
        self.bn_fraction = None

    def __getitem__(self, name):
        return self.n[name]

    def __setitem__(self, name, top):
        self.n[name] = top

    def _learn(self, kw, bias, wf, bf, bias_lr=2, bias_decay=0):
        if not self.train:
            return kw
        kw["weight_filler"] = wf or self.wf
        specs = [dict(lr_mult=1, decay_mult=1)]
        if bias:
            kw["bias_filler"] = bf or self.bf
            specs.append(dict(lr_mult=bias_lr, decay_mult=bias_decay))
        kw["param"] = specs
        return kw

    def conv(self, name, bottom, nout, ks, stride=1, pad=0, group=1,
             bias=True, wf=None, bf=None):
        kw = dict(num_output=nout, kernel_size=ks)
        if pad:
            kw["pad"] = pad
        if stride != 1:
            kw["stride"] = stride
        if group != 1:
            kw["group"] = group
        if not bias:
            kw["bias_term"] = False
        self.n[name] = L.Convolution(self.n[bottom],
                                     **self._learn(kw, bias, wf, bf))
        return name

    def fc(self, name, bottom, nout, wf=None, bf=None):
        self.n[name] = L.InnerProduct(
            self.n[bottom], **self._learn(dict(num_output=nout), True, wf, bf))
        return name

    def relu(self, name, bottom):
        self.n[name] = L.ReLU(self.n[bottom], in_place=True)
        return bottom

    def pool(self, name, bottom, method, ks=None, stride=1, pad=0,
             global_pooling=False):
        kw = dict(pool=method)
        if global_pooling:
            kw["global_pooling"] = True
        else:
            kw["kernel_size"] = ks
            kw["stride"] = stride
        if pad:
            kw["pad"] = pad
        self.n[name] = L.Pooling(self.n[bottom], **kw)
        return name

    def lrn(self, name, bottom, size=5, alpha=1e-4, beta=0.75, within=False):
        kw = dict(local_size=size, alpha=alpha, beta=beta)
        if within:
            kw["norm_region"] = P.LRN.WITHIN_CHANNEL
        self.n[name] = L.LRN(self.n[bottom], **kw)
        return name

    def drop(self, name, bottom, ratio=0.5):
        self.n[name] = L.Dropout(self.n[bottom], dropout_ratio=ratio,
                                 in_place=True)
        return bottom

    def bn_scale(self, bn_name, scale_name, bottom):
        """BatchNorm + Scale in place, as the original Caffe ResNets: the
        statistics are never learned (lr_mult 0, kept explicit for forks).
        `self.bn_fraction` sets moving_average_fraction (Caffe's 0.999
        averages over ~1000 iterations: too long for a short run)."""
        if self.train:
            kw = {} if self.bn_fraction is None else dict(
                moving_average_fraction=self.bn_fraction)
            self.n[bn_name] = L.BatchNorm(self.n[bottom], in_place=True,
                                          param=[dict(lr_mult=0)] * 3, **kw)
            self.n[scale_name] = L.Scale(self.n[bottom], in_place=True,
                                         bias_term=True)
        else:
            self.n[bn_name] = L.BatchNorm(self.n[bottom], in_place=True,
                                          use_global_stats=True)
            self.n[scale_name] = L.Scale(self.n[bottom], in_place=True,
                                         bias_term=True)
        return bottom

    def concat(self, name, bottoms):
        self.n[name] = L.Concat(*[self.n[b] for b in bottoms])
        return name

    # -- input and output -------------------------------------------------
    def data(self, shape, transform, train_db, test_db, train_batch,
             test_batch):
        """Input layer (deploy) or a TRAIN Data layer; `finish` adds the
        TEST one next to it."""
        if not self.train:
            self.n["data"] = L.Input(shape=dict(dim=[1] + list(shape)))
            return "data"
        self._data_args = (transform, train_db, test_db, train_batch,
                           test_batch)
        tp = dict(transform, mirror=True) if shape[1] > 32 else dict(transform)
        self.n["data"], self.n["label"] = L.Data(
            ntop=2, include=dict(phase=TRAIN), transform_param=tp,
            data_param=dict(source=train_db, batch_size=train_batch,
                            backend=P.Data.LMDB))
        self.label = "label"
        return "data"

    def head(self, bottom, top5=True, loss="loss", acc="accuracy",
             loss_weight=None):
        """Softmax 'prob' (deploy) or loss + accuracy (train_val)."""
        if not self.train:
            self.n["prob"] = L.Softmax(self.n[bottom])
            return
        kw = {} if loss_weight is None else dict(loss_weight=loss_weight)
        self.n[loss] = L.SoftmaxWithLoss(self.n[bottom], self.n[self.label],
                                         **kw)
        self.n[acc] = L.Accuracy(self.n[bottom], self.n[self.label],
                                 include=dict(phase=TEST))
        if top5:
            self.n[acc + "_top5"] = L.Accuracy(
                self.n[bottom], self.n[self.label], top_k=5,
                include=dict(phase=TEST))

    def finish(self, name):
        net = self.n.to_proto()
        net.name = name
        if self.train:
            transform, _, test_db, _, test_batch = self._data_args
            test = caffe_pb2.LayerParameter()
            test.CopyFrom(net.layer[0])
            test.include[0].phase = TEST
            test.transform_param.ClearField("mirror")
            test.data_param.source = test_db
            test.data_param.batch_size = test_batch
            net.layer.insert(1, test)
        return net


# ---------------------------------------------------------------------------
# Models. Each takes a Builder and returns nothing; `MODELS` below holds the
# input shape, data recipe, solver and README facts.


def lenet(b):
    d = b.data((1, 28, 28), dict(scale=0.00390625), "examples/mnist/"
               "mnist_train_lmdb", "examples/mnist/mnist_test_lmdb", 64, 100)
    b.conv("conv1", d, 20, 5)
    b.pool("pool1", "conv1", MAX, 2, 2)
    b.conv("conv2", "pool1", 50, 5)
    b.pool("pool2", "conv2", MAX, 2, 2)
    b.fc("ip1", "pool2", 500)
    b.relu("relu1", "ip1")
    b.fc("ip2", "ip1", 10)
    b.head("ip2", top5=False)


def _cifar_data(b):
    return b.data((3, 32, 32),
                  dict(mean_file="examples/cifar10/mean.binaryproto"),
                  "examples/cifar10/cifar10_train_lmdb",
                  "examples/cifar10/cifar10_test_lmdb", 100, 100)


def cifar10_quick(b):
    d = _cifar_data(b)
    g = lambda std: dict(type="gaussian", std=std)  # noqa: E731
    b.conv("conv1", d, 32, 5, pad=2, wf=g(0.0001), bf=dict(type="constant"))
    b.pool("pool1", "conv1", MAX, 3, 2)
    b.relu("relu1", "pool1")
    b.conv("conv2", "pool1", 32, 5, pad=2, wf=g(0.01), bf=dict(type="constant"))
    b.relu("relu2", "conv2")
    b.pool("pool2", "conv2", AVE, 3, 2)
    b.conv("conv3", "pool2", 64, 5, pad=2, wf=g(0.01), bf=dict(type="constant"))
    b.relu("relu3", "conv3")
    b.pool("pool3", "conv3", AVE, 3, 2)
    b.fc("ip1", "pool3", 64, wf=g(0.1), bf=dict(type="constant"))
    b.fc("ip2", "ip1", 10, wf=g(0.1), bf=dict(type="constant"))
    b.head("ip2", top5=False)


def cifar10_full(b):
    d = _cifar_data(b)
    g = lambda std: dict(type="gaussian", std=std)  # noqa: E731
    b.conv("conv1", d, 32, 5, pad=2, wf=g(0.0001), bf=dict(type="constant"))
    b.pool("pool1", "conv1", MAX, 3, 2)
    b.relu("relu1", "pool1")
    b.lrn("norm1", "pool1", 3, 5e-05, 0.75, within=True)
    b.conv("conv2", "norm1", 32, 5, pad=2, wf=g(0.01), bf=dict(type="constant"))
    b.relu("relu2", "conv2")
    b.pool("pool2", "conv2", AVE, 3, 2)
    b.lrn("norm2", "pool2", 3, 5e-05, 0.75, within=True)
    b.conv("conv3", "norm2", 64, 5, pad=2, wf=g(0.01), bf=dict(type="constant"))
    b.relu("relu3", "conv3")
    b.pool("pool3", "conv3", AVE, 3, 2)
    b.fc("ip1", "pool3", 10, wf=g(0.01), bf=dict(type="constant"))
    b.head("ip1", top5=False)


def _imagenet_data(b, crop, mean_file=True, mean=IMAGENET_BGR_MEAN,
                   train_batch=256, test_batch=50, scale=None):
    if mean_file:
        t = dict(crop_size=crop,
                 mean_file="data/ilsvrc12/imagenet_mean.binaryproto")
    else:
        t = dict(crop_size=crop, mean_value=mean)
    if scale is not None:
        t["scale"] = scale
    return b.data((3, crop, crop), t, "examples/imagenet/ilsvrc12_train_lmdb",
                  "examples/imagenet/ilsvrc12_val_lmdb", train_batch,
                  test_batch)


def _alexnet(b, caffenet):
    d = _imagenet_data(b, 227)
    g = lambda std: dict(type="gaussian", std=std)  # noqa: E731
    c = lambda v: dict(type="constant", value=v)  # noqa: E731
    b.conv("conv1", d, 96, 11, stride=4, wf=g(0.01), bf=c(0))
    b.relu("relu1", "conv1")
    if caffenet:
        b.pool("pool1", "conv1", MAX, 3, 2)
        b.lrn("norm1", "pool1")
        x = "norm1"
    else:
        b.lrn("norm1", "conv1")
        x = b.pool("pool1", "norm1", MAX, 3, 2)
    b.conv("conv2", x, 256, 5, pad=2, group=2, wf=g(0.01), bf=c(0.1 if not caffenet else 1))
    b.relu("relu2", "conv2")
    if caffenet:
        b.pool("pool2", "conv2", MAX, 3, 2)
        x = b.lrn("norm2", "pool2")
    else:
        b.lrn("norm2", "conv2")
        x = b.pool("pool2", "norm2", MAX, 3, 2)
    b.conv("conv3", x, 384, 3, pad=1, wf=g(0.01), bf=c(0))
    b.relu("relu3", "conv3")
    b.conv("conv4", "conv3", 384, 3, pad=1, group=2, wf=g(0.01), bf=c(0.1 if not caffenet else 1))
    b.relu("relu4", "conv4")
    b.conv("conv5", "conv4", 256, 3, pad=1, group=2, wf=g(0.01), bf=c(0.1 if not caffenet else 1))
    b.relu("relu5", "conv5")
    b.pool("pool5", "conv5", MAX, 3, 2)
    b.fc("fc6", "pool5", 4096, wf=g(0.005), bf=c(0.1 if not caffenet else 1))
    b.relu("relu6", "fc6")
    b.drop("drop6", "fc6")
    b.fc("fc7", "fc6", 4096, wf=g(0.005), bf=c(0.1 if not caffenet else 1))
    b.relu("relu7", "fc7")
    b.drop("drop7", "fc7")
    b.fc("fc8", "fc7", 1000, wf=g(0.01), bf=c(0))
    b.head("fc8")


def alexnet(b):
    _alexnet(b, caffenet=False)


def caffenet(b):
    _alexnet(b, caffenet=True)


# VGG configurations (Simonyan & Zisserman 2015, table 1): per block, the
# kernel size of each conv layer; 'L' = LRN after the first conv.
VGG_CONFIGS = {
    "vgg_a": [[3], [3], [3, 3], [3, 3], [3, 3]],
    "vgg_a_lrn": [[3, "L"], [3], [3, 3], [3, 3], [3, 3]],
    "vgg_b": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
    "vgg_c": [[3, 3], [3, 3], [3, 3, 1], [3, 3, 1], [3, 3, 1]],
    "vgg16": [[3, 3], [3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "vgg19": [[3, 3], [3, 3], [3, 3, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3]],
}


def _vgg(b, config):
    x = _imagenet_data(b, 224, mean_file=False, mean=VGG_BGR_MEAN,
                       train_batch=64)
    for blk, (width, kernels) in enumerate(zip([64, 128, 256, 512, 512],
                                               config), start=1):
        i = 0
        for k in kernels:
            if k == "L":
                x = b.lrn("norm1", x)
                continue
            i += 1
            name = f"conv{blk}_{i}"
            x = b.conv(name, x, width, k, pad=k // 2)
            b.relu(f"relu{blk}_{i}", name)
        x = b.pool(f"pool{blk}", x, MAX, 2, 2)
    g = dict(type="gaussian", std=0.005)
    b.fc("fc6", x, 4096, wf=g)
    b.relu("relu6", "fc6")
    b.drop("drop6", "fc6")
    b.fc("fc7", "fc6", 4096, wf=g)
    b.relu("relu7", "fc7")
    b.drop("drop7", "fc7")
    b.fc("fc8", "fc7", 1000, wf=dict(type="gaussian", std=0.01))
    b.head("fc8")


def nin(b):
    x = _imagenet_data(b, 224, train_batch=64)
    g = lambda std: dict(type="gaussian", std=std)  # noqa: E731
    c = dict(type="constant", value=0)
    layers = [("conv1", 96, 11, 4, 0, 0.01), ("cccp1", 96, 1, 1, 0, 0.05),
              ("cccp2", 96, 1, 1, 0, 0.05), ("pool1",),
              ("conv2", 256, 5, 1, 2, 0.05), ("cccp3", 256, 1, 1, 0, 0.05),
              ("cccp4", 256, 1, 1, 0, 0.05), ("pool2",),
              ("conv3", 384, 3, 1, 1, 0.01), ("cccp5", 384, 1, 1, 0, 0.05),
              ("cccp6", 384, 1, 1, 0, 0.05), ("pool3",), ("drop",),
              ("conv4-1024", 1024, 3, 1, 1, 0.05),
              ("cccp7-1024", 1024, 1, 1, 0, 0.05),
              ("cccp8-1024", 1000, 1, 1, 0, 0.01)]
    relu = 0
    for spec in layers:
        if spec[0].startswith("pool"):
            x = b.pool(spec[0], x, MAX, 3, 2)
        elif spec[0] == "drop":
            b.drop("drop", x)
        else:
            name, nout, ks, stride, pad, std = spec
            x = b.conv(name, x, nout, ks, stride, pad, wf=g(std), bf=c)
            relu += 1
            b.relu(f"relu{relu}", x)
    x = b.pool("pool4", x, AVE, 6, 1)
    b.head(x)


INCEPTION = {  # name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128)}


def _inception(b, name, x):
    p = f"inception_{name}/"
    c1, r3, c3, r5, c5, pp = INCEPTION[name]
    outs = []
    for branch in (("1x1", c1, 1, 0, None), ("3x3_reduce", r3, 1, 0, "3x3"),
                   ("5x5_reduce", r5, 1, 0, "5x5")):
        y = b.conv(p + branch[0], x, branch[1], 1)
        b.relu(p + "relu_" + branch[0], y)
        if branch[4] == "3x3":
            y = b.conv(p + "3x3", y, c3, 3, pad=1)
            b.relu(p + "relu_3x3", y)
        elif branch[4] == "5x5":
            y = b.conv(p + "5x5", y, c5, 5, pad=2)
            b.relu(p + "relu_5x5", y)
        outs.append(y)
    y = b.pool(p + "pool", x, MAX, 3, 1, pad=1)
    y = b.conv(p + "pool_proj", y, pp, 1)
    b.relu(p + "relu_pool_proj", y)
    outs.append(y)
    return b.concat(p + "output", outs)


def _aux_head(b, k, x):
    p = f"loss{k}/"
    y = b.pool(p + "ave_pool", x, AVE, 5, 3)
    y = b.conv(p + "conv", y, 128, 1)
    b.relu(p + "relu_conv", y)
    y = b.fc(p + "fc", y, 1024)
    b.relu(p + "relu_fc", y)
    b.drop(p + "drop_fc", y, 0.7)
    y = b.fc(p + "classifier", y, 1000)
    b.head(y, loss=p + "loss", acc=p + "top-1", loss_weight=0.3,
           top5=False)


def googlenet(b):
    x = _imagenet_data(b, 224, mean_file=False, train_batch=32)
    b.wf, b.bf = dict(type="xavier"), dict(type="constant", value=0.2)
    x = b.conv("conv1/7x7_s2", x, 64, 7, stride=2, pad=3)
    b.relu("conv1/relu_7x7", x)
    x = b.pool("pool1/3x3_s2", x, MAX, 3, 2)
    x = b.lrn("pool1/norm1", x)
    x = b.conv("conv2/3x3_reduce", x, 64, 1)
    b.relu("conv2/relu_3x3_reduce", x)
    x = b.conv("conv2/3x3", x, 192, 3, pad=1)
    b.relu("conv2/relu_3x3", x)
    x = b.lrn("conv2/norm2", x)
    x = b.pool("pool2/3x3_s2", x, MAX, 3, 2)
    x = _inception(b, "3a", x)
    x = _inception(b, "3b", x)
    x = b.pool("pool3/3x3_s2", x, MAX, 3, 2)
    for name in ("4a", "4b", "4c", "4d", "4e"):
        x = _inception(b, name, x)
        if b.train and name in ("4a", "4d"):
            _aux_head(b, 1 if name == "4a" else 2, x)
    x = b.pool("pool4/3x3_s2", x, MAX, 3, 2)
    x = _inception(b, "5a", x)
    x = _inception(b, "5b", x)
    x = b.pool("pool5/7x7_s1", x, AVE, 7, 1)
    b.drop("pool5/drop_7x7_s1", x, 0.4)
    x = b.fc("loss3/classifier", x, 1000, bf=dict(type="constant", value=0))
    if b.train:
        b.head(x, loss="loss3/loss3", acc="loss3/top-1", loss_weight=1)
    else:
        b.head(x)


RESNET_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3],
                 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _block_suffixes(depth, stage, count):
    # He et al.'s release numbers long stages res3b1, res3b2, ... (101/152).
    if depth >= 101 and stage in (3, 4):
        return ["a"] + [f"b{i}" for i in range(1, count)]
    return [chr(ord("a") + i) for i in range(count)]


def _conv_bn(b, tag, x, nout, ks, stride=1, pad=0, relu=True):
    y = b.conv(f"res{tag}", x, nout, ks, stride, pad, bias=False)
    b.bn_scale(f"bn{tag}", f"scale{tag}", y)
    if relu:
        b.relu(f"res{tag}_relu", y)
    return y


def _resnet(b, depth):
    x = _imagenet_data(b, 224, mean_file=False, train_batch=32)
    b.wf = dict(type="msra")
    # NOTE: the original ResNet-50 conv1 has a bias; 101 and 152 do not.
    x = b.conv("conv1", x, 64, 7, stride=2, pad=3, bias=depth == 50)
    b.bn_scale("bn_conv1", "scale_conv1", x)
    b.relu("conv1_relu", x)
    x = b.pool("pool1", x, MAX, 3, 2)
    bottleneck = depth >= 50
    width = 64
    for stage, count in enumerate(RESNET_BLOCKS[depth], start=2):
        out = width * 4 if bottleneck else width
        for i, sfx in enumerate(_block_suffixes(depth, stage, count)):
            tag = f"{stage}{sfx}"
            stride = 2 if i == 0 and stage > 2 else 1
            if i == 0 and (bottleneck or stage > 2):
                short = _conv_bn(b, tag + "_branch1", x, out, 1, stride,
                                 relu=False)
            else:
                short = x
            if bottleneck:
                y = _conv_bn(b, tag + "_branch2a", x, width, 1, stride)
                y = _conv_bn(b, tag + "_branch2b", y, width, 3, 1, 1)
                y = _conv_bn(b, tag + "_branch2c", y, out, 1, relu=False)
            else:
                y = _conv_bn(b, tag + "_branch2a", x, width, 3, stride, 1)
                y = _conv_bn(b, tag + "_branch2b", y, width, 3, 1, 1,
                             relu=False)
            b[f"res{tag}"] = L.Eltwise(b[short], b[y])
            x = f"res{tag}"
            b.relu(f"res{tag}_relu", x)
        width *= 2
    x = b.pool("pool5", x, AVE, 7, 1)
    x = b.fc("fc1000", x, 1000, wf=dict(type="gaussian", std=0.01))
    b.head(x)


def resnet20_digits(b):
    """The CIFAR ResNet-20 of He et al. (section 4.2: 3 stages of 3 basic
    blocks, 16/32/64 filters, global average pooling) on the bundled digits
    at 32x32. NOTE: the paper's CIFAR nets pad the shortcut with zeros where
    the width doubles (option A); Caffe has no such layer, so those two
    shortcuts are 1x1 projections with BatchNorm (option B)."""
    x = b.data((1, 32, 32), dict(scale=0.00392156862),
               "data/digits/digits_train_lmdb", "data/digits/digits_test_lmdb",
               64, 199)
    b.wf = dict(type="msra")
    b.bn_fraction = 0.9     # PyTorch's BatchNorm momentum 0.1
    x = b.conv("conv1", x, 16, 3, pad=1, bias=False)
    b.bn_scale("bn_conv1", "scale_conv1", x)
    b.relu("conv1_relu", x)
    width = 16
    for stage in (2, 3, 4):
        for i in range(3):
            tag = f"{stage}{chr(ord('a') + i)}"
            stride = 2 if i == 0 and stage > 2 else 1
            short = x if stride == 1 else _conv_bn(
                b, tag + "_branch1", x, width, 1, stride, relu=False)
            y = _conv_bn(b, tag + "_branch2a", x, width, 3, stride, 1)
            y = _conv_bn(b, tag + "_branch2b", y, width, 3, 1, 1, relu=False)
            b[f"res{tag}"] = L.Eltwise(b[short], b[y])
            x = f"res{tag}"
            b.relu(f"res{tag}_relu", x)
        width *= 2
    x = b.pool("pool5", x, AVE, global_pooling=True)
    x = b.fc("fc10", x, 10, wf=dict(type="msra"))
    b.head(x, top5=False)


def _fire(b, k, x, s, e):
    p = f"fire{k}/"
    x = b.conv(p + "squeeze1x1", x, s, 1)
    b.relu(p + "relu_squeeze1x1", x)
    e1 = b.conv(p + "expand1x1", x, e, 1)
    b.relu(p + "relu_expand1x1", e1)
    e3 = b.conv(p + "expand3x3", x, e, 3, pad=1)
    b.relu(p + "relu_expand3x3", e3)
    return b.concat(p + "concat", [e1, e3])


def _squeezenet(b, version):
    x = _imagenet_data(b, 227, mean_file=False, train_batch=32)
    fires = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128),
             6: (48, 192), 7: (48, 192), 8: (64, 256), 9: (64, 256)}
    if version == "1.0":
        x = b.conv("conv1", x, 96, 7, stride=2)
        pools_after = (1, 4, 8)
    else:
        x = b.conv("conv1", x, 64, 3, stride=2)
        pools_after = (1, 3, 5)
    b.relu("relu_conv1", x)
    x = b.pool("pool1", x, MAX, 3, 2)
    for k in range(2, 10):
        x = _fire(b, k, x, *fires[k])
        if k in pools_after:
            x = b.pool(f"pool{k}", x, MAX, 3, 2)
    b.drop("drop9", x)
    x = b.conv("conv10", x, 1000, 1,
               wf=dict(type="gaussian", mean=0.0, std=0.01))
    b.relu("relu_conv10", x)
    x = b.pool("pool10", x, AVE, global_pooling=True)
    b.head(x)


def mobilenet(b):
    x = _imagenet_data(b, 224, mean_file=False, mean=VGG_BGR_MEAN,
                       train_batch=32, scale=0.017)
    b.wf = dict(type="msra")

    def cbr(name, relu, x, nout, ks, stride, pad, group=1):
        y = b.conv(name, x, nout, ks, stride, pad, group, bias=False)
        b.bn_scale(name + "/bn", name + "/scale", y)
        b.relu(relu, y)
        return y

    x = cbr("conv1", "relu1", x, 32, 3, 2, 1)
    channels = 32
    plan = [("2_1", 1, 64), ("2_2", 2, 128), ("3_1", 1, 128), ("3_2", 2, 256),
            ("4_1", 1, 256), ("4_2", 2, 512), ("5_1", 1, 512), ("5_2", 1, 512),
            ("5_3", 1, 512), ("5_4", 1, 512), ("5_5", 1, 512),
            ("5_6", 2, 1024), ("6", 1, 1024)]
    for tag, stride, nout in plan:
        x = cbr(f"conv{tag}/dw", f"relu{tag}/dw", x, channels, 3, stride, 1,
                group=channels)
        x = cbr(f"conv{tag}/sep", f"relu{tag}/sep", x, nout, 1, 1, 0)
        channels = nout
    x = b.pool("pool6", x, AVE, global_pooling=True)
    x = b.conv("fc7", x, 1000, 1)
    b.head(x)


# ---------------------------------------------------------------------------
# Catalogue: title, builder, paper, recipe source, solver.

IMAGENET_NOTE = ("ILSVRC-2012 LMDBs (e.g. built with `convert_imageset "
                 "--resize_height=256 --resize_width=256`)")


def _solver(**kw):
    base = dict(test_iter=1000, test_interval=1000, display=20, momentum=0.9,
                weight_decay=0.0005, snapshot=10000, solver_mode="CPU")
    base.update(kw)
    return base


def _model(title, fn, paper, source, solver, data, data_note=IMAGENET_NOTE,
           paper_params=None):
    return dict(title=title, fn=fn, paper=paper, source=source,
                solver=solver, data=data, data_note=data_note,
                paper_params=paper_params)


_VGG_PAPER = ("K. Simonyan, A. Zisserman. Very Deep Convolutional Networks "
              "for Large-Scale Image Recognition. ICLR 2015 "
              "(arXiv:1409.1556), table 1")
_VGG_SOLVER = _solver(base_lr=0.01, lr_policy="step", gamma=0.1,
                      stepsize=100000, max_iter=370000, test_iter=1000,
                      test_interval=5000, iter_size=4)
_VGG_SOURCE = ("the paper's section 3.1 (batch 256 = 64 x iter_size 4, "
               "momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 on "
               "plateaus, 74 epochs); layer names as the released "
               "VGG_ILSVRC_16/19_layers Caffe models")
_VGG_DATA = "BGR mean pixel (103.939, 116.779, 123.68), 224x224 random crops, mirror"
_RESNET_PAPER = ("K. He, X. Zhang, S. Ren, J. Sun. Deep Residual Learning "
                 "for Image Recognition. CVPR 2016 (arXiv:1512.03385)")
_RESNET_SOLVER = _solver(base_lr=0.1, lr_policy="multistep", gamma=0.1,
                         stepvalue=[150000, 300000], max_iter=600000,
                         weight_decay=0.0001, iter_size=8, test_iter=1000,
                         test_interval=10000)
_RESNET_DATA = ("BGR mean pixel (104, 117, 123) (the release used its "
                "ResNet_mean.binaryproto), 224x224 random crops, mirror")


def _resnet_source(depth):
    if depth >= 50:
        return ("KaimingHe/deep-residual-networks ResNet-%d-deploy.prototxt "
                "(BatchNorm + Scale, same layer names); solver from the "
                "paper's section 3.4 (batch 256 = 32 x iter_size 8, lr 0.1 / 10 "
                "at 150k and 300k, 600k iterations)" % depth)
    return ("the paper's table 1 (basic blocks, projection shortcuts only "
            "where the shape changes) in the layer naming and BatchNorm + "
            "Scale style of KaimingHe/deep-residual-networks (which released "
            "50/101/152 only); solver from section 3.4")


MODELS = {
    "lenet": _model(
        "LeNet (MNIST)", lenet,
        "Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning "
        "applied to document recognition. Proc. IEEE 1998",
        "BVLC Caffe examples/mnist (lenet.prototxt, lenet_train_test, "
        "lenet_solver)",
        _solver(base_lr=0.01, lr_policy="inv", gamma=0.0001, power=0.75,
                max_iter=10000, test_iter=100, test_interval=500,
                display=100, snapshot=5000),
        "pixels scaled by 1/256 (scale 0.00390625), no mean",
        "MNIST LMDBs from Caffe's data/mnist/get_mnist.sh + "
        "examples/mnist/create_mnist.sh"),
    "cifar10_quick": _model(
        "CIFAR-10 quick", cifar10_quick,
        "A. Krizhevsky's cuda-convnet CIFAR-10 layers-18pct, as adapted by "
        "BVLC Caffe",
        "BVLC Caffe examples/cifar10 (cifar10_quick*.prototxt); train 4000 "
        "iterations at 0.001 then 1000 at 0.0001",
        _solver(base_lr=0.001, lr_policy="fixed", weight_decay=0.004,
                max_iter=4000, test_iter=100, test_interval=500,
                display=100, snapshot=4000),
        "mean image examples/cifar10/mean.binaryproto (compute_image_mean)",
        "CIFAR-10 LMDBs from Caffe's examples/cifar10/create_cifar10.sh"),
    "cifar10_full": _model(
        "CIFAR-10 full", cifar10_full,
        "A. Krizhevsky's cuda-convnet CIFAR-10 layers-18pct (with LRN), as "
        "adapted by BVLC Caffe",
        "BVLC Caffe examples/cifar10 (cifar10_full*.prototxt); 60k "
        "iterations at 0.001, then 0.0001 and 0.00001",
        _solver(base_lr=0.001, lr_policy="fixed", weight_decay=0.004,
                max_iter=60000, test_iter=100, test_interval=1000,
                display=200, snapshot=10000),
        "mean image examples/cifar10/mean.binaryproto (compute_image_mean)",
        "CIFAR-10 LMDBs from Caffe's examples/cifar10/create_cifar10.sh"),
    "alexnet": _model(
        "AlexNet", alexnet,
        "A. Krizhevsky, I. Sutskever, G. Hinton. ImageNet Classification "
        "with Deep Convolutional Neural Networks. NIPS 2012",
        "BVLC Caffe models/bvlc_alexnet (LRN before pooling, two groups)",
        _solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000,
                max_iter=450000),
        "mean image data/ilsvrc12/imagenet_mean.binaryproto, 227x227 random "
        "crops of 256x256 images, mirror", paper_params=60965224),
    "caffenet": _model(
        "CaffeNet", caffenet,
        "A. Krizhevsky et al. NIPS 2012, with pooling before LRN (BVLC's "
        "reference variant)",
        "BVLC Caffe models/bvlc_reference_caffenet",
        _solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000,
                max_iter=450000),
        "mean image data/ilsvrc12/imagenet_mean.binaryproto, 227x227 random "
        "crops of 256x256 images, mirror", paper_params=60965224),
    "vgg_a": _model("VGG configuration A (VGG-11)", lambda b: _vgg(
        b, VGG_CONFIGS["vgg_a"]), _VGG_PAPER, _VGG_SOURCE, _VGG_SOLVER,
        _VGG_DATA, paper_params=132863336),
    "vgg_a_lrn": _model("VGG configuration A-LRN", lambda b: _vgg(
        b, VGG_CONFIGS["vgg_a_lrn"]), _VGG_PAPER, _VGG_SOURCE, _VGG_SOLVER,
        _VGG_DATA, paper_params=132863336),
    "vgg_b": _model("VGG configuration B (VGG-13)", lambda b: _vgg(
        b, VGG_CONFIGS["vgg_b"]), _VGG_PAPER, _VGG_SOURCE, _VGG_SOLVER,
        _VGG_DATA, paper_params=133047848),
    "vgg_c": _model("VGG configuration C (VGG-16 with 1x1 convolutions)",
                    lambda b: _vgg(b, VGG_CONFIGS["vgg_c"]), _VGG_PAPER,
                    _VGG_SOURCE, _VGG_SOLVER, _VGG_DATA,
                    paper_params=133638952),
    "vgg16": _model("VGG configuration D (VGG-16)", lambda b: _vgg(
        b, VGG_CONFIGS["vgg16"]), _VGG_PAPER, _VGG_SOURCE, _VGG_SOLVER,
        _VGG_DATA, paper_params=138357544),
    "vgg19": _model("VGG configuration E (VGG-19)", lambda b: _vgg(
        b, VGG_CONFIGS["vgg19"]), _VGG_PAPER, _VGG_SOURCE, _VGG_SOLVER,
        _VGG_DATA, paper_params=143667240),
    "nin": _model(
        "Network in Network (ImageNet)", nin,
        "M. Lin, Q. Chen, S. Yan. Network In Network. ICLR 2014 "
        "(arXiv:1312.4400)",
        "the Caffe model zoo's NIN ImageNet model (nin_imagenet, "
        "cccp = 1x1 convolution layers, global average pooling head)",
        _solver(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000,
                max_iter=450000, iter_size=4),
        "mean image data/ilsvrc12/imagenet_mean.binaryproto, 224x224 random "
        "crops, mirror"),
    "googlenet": _model(
        "GoogLeNet (Inception v1)", googlenet,
        "C. Szegedy et al. Going Deeper with Convolutions. CVPR 2015 "
        "(arXiv:1409.4842)",
        "BVLC Caffe models/bvlc_googlenet (quick_solver: poly, power 0.5); "
        "the two auxiliary classifiers (loss weight 0.3) only in train_val",
        _solver(base_lr=0.01, lr_policy="poly", power=0.5, max_iter=2400000,
                weight_decay=0.0002, test_iter=1000, test_interval=4000,
                display=40, average_loss=40, iter_size=1),
        "BGR mean pixel (104, 117, 123), 224x224 random crops, mirror"),
    "squeezenet_v1.0": _model(
        "SqueezeNet 1.0", lambda b: _squeezenet(b, "1.0"),
        "F. Iandola et al. SqueezeNet: AlexNet-level accuracy with 50x fewer "
        "parameters and <0.5MB model size. arXiv:1602.07360",
        "forresti/SqueezeNet SqueezeNet_v1.0 (deploy, train_val, solver)",
        _solver(base_lr=0.04, lr_policy="poly", power=1.0, max_iter=170000,
                weight_decay=0.0002, test_iter=2000, test_interval=1000,
                display=40, average_loss=40, iter_size=32),
        "BGR mean pixel (104, 117, 123), 227x227 random crops, mirror",
        paper_params=1248424),
    "squeezenet_v1.1": _model(
        "SqueezeNet 1.1", lambda b: _squeezenet(b, "1.1"),
        "F. Iandola et al. arXiv:1602.07360; v1.1 from forresti/SqueezeNet "
        "(2.4x less computation than 1.0, same accuracy)",
        "forresti/SqueezeNet SqueezeNet_v1.1 (deploy, train_val, solver)",
        _solver(base_lr=0.04, lr_policy="poly", power=1.0, max_iter=170000,
                weight_decay=0.0002, test_iter=2000, test_interval=1000,
                display=40, average_loss=40, iter_size=32),
        "BGR mean pixel (104, 117, 123), 227x227 random crops, mirror",
        paper_params=1235496),
    "mobilenet_v1": _model(
        "MobileNet v1 (1.0, 224)", mobilenet,
        "A. Howard et al. MobileNets: Efficient Convolutional Neural "
        "Networks for Mobile Vision Applications. arXiv:1704.04861",
        "shicai/MobileNet-Caffe mobilenet_deploy.prototxt (depthwise layers "
        "as Convolution with group = channels, BatchNorm + Scale); the paper "
        "trained with RMSProp, this solver is plain SGD with a poly policy",
        _solver(base_lr=0.1, lr_policy="poly", power=1.0, max_iter=500000,
                weight_decay=0.00004, iter_size=8, test_interval=5000),
        "BGR mean pixel (103.94, 116.78, 123.68), then scale 0.017, 224x224 "
        "random crops, mirror"),
}
MODELS["resnet20_digits"] = _model(
    "ResNet-20 on the bundled digits (the lecture's recipe)", resnet20_digits,
    _RESNET_PAPER + ", section 4.2 (CIFAR-10 ResNet-20)",
    "the paper's CIFAR-10 net with the CNN lecture's recipe: BatchNorm + "
    "Scale after every convolution, MSRA initialisation, SGD momentum 0.9, "
    "learning rate 0.1 divided by 10 when the test accuracy plateaus "
    "(protonet's lr_policy \"plateau\"), weight decay 1e-4, no dropout; "
    "BatchNorm's moving_average_fraction 0.9 (PyTorch's momentum 0.1) for "
    "this short run",
    _solver(base_lr=0.1, lr_policy="plateau", gamma=0.1, momentum=0.9,
            weight_decay=0.0001, max_iter=500, test_iter=3, test_interval=20,
            display=20, snapshot=0, random_seed=1, test_initialization=False,
            snapshot_prefix="data/digits/resnet20_digits",
            plateau_param=dict(monitor="accuracy", mode=1, patience=3,
                               threshold=0.001)),
    "scikit-learn's digits at 32x32 (`protonet dataset digits --size 32`), "
    "pixels scaled by 1/255, no augmentation",
    "the bundled digits: `protonet dataset digits --size 32` writes "
    "data/digits/digits_{train,test}_lmdb (1200 train, 597 test images)")
for _d in (18, 34, 50, 101, 152):
    MODELS[f"resnet{_d}"] = _model(
        f"ResNet-{_d}", (lambda d: lambda b: _resnet(b, d))(_d),
        _RESNET_PAPER, _resnet_source(_d), _RESNET_SOLVER, _RESNET_DATA)


# ---------------------------------------------------------------------------
# Writing


def build(name, train):
    """The NetParameter of model `name`: deploy (train False) or train_val."""
    spec = MODELS[name]
    b = Builder(train)
    spec["fn"](b)
    return b.finish(name)


def solver_text(name):
    s = caffe_pb2.SolverParameter()
    s.net = f"zoo/{name}/train_val.prototxt"
    for k, v in MODELS[name]["solver"].items():
        if k == "solver_mode":
            s.solver_mode = caffe_pb2.SolverParameter.CPU
        elif isinstance(v, list) or k == "test_iter":
            getattr(s, k).extend(v if isinstance(v, list) else [v])
        elif isinstance(v, dict):
            field = getattr(s, k)
            field.MergeFrom(type(field)(**v))
        else:
            setattr(s, k, v)
    if not s.HasField("snapshot_prefix"):
        s.snapshot_prefix = f"zoo/{name}/{name}"
    return io.format_text(s)


def _counts(net_param):
    """(stored params, learnable params, multiply-adds, input shape)."""
    from protonet.summary import summarize
    s = summarize(net_param)
    stats = sum(r.params for r in s if r.type == "BatchNorm")
    shape = next(r.shape for r in s if r.type == "Input")
    return s.params, s.params - stats, s.macs, shape


def readme_text(name, deploy):
    spec = MODELS[name]
    stored, learnable, macs, shape = _counts(deploy)
    lines = [f"# {spec['title']}", "",
             f"Paper: {spec['paper']}.", "",
             f"Architecture and recipe source: {spec['source']}.", "",
             f"- Input: {' x '.join(map(str, shape))} (C x H x W).",
             f"- Parameters: {stored:,}."]
    if learnable != stored:
        lines[-1] = (f"- Parameters: {stored:,} stored in a .caffemodel; "
                     f"{learnable:,} learnable (without the BatchNorm mean, "
                     "variance and scale-factor blobs).")
    if spec["paper_params"]:
        lines.append(f"- Published count: {spec['paper_params']:,}.")
    lines += [f"- Multiply-adds per image: {macs:,} (convolution and "
              "inner product layers, `protonet.summary`).",
              f"- Training input: {spec['data']}.",
              f"- Data: {spec['data_note']}" + (
                  "." if "bundled" in spec["data_note"] else
                  "; the LMDB paths in train_val.prototxt are placeholders "
                  "to replace."),
              "",
              "Files: `deploy.prototxt` (Input layer, Softmax `prob`, no "
              "fillers), `train_val.prototxt` (Data layers, loss, accuracy), "
              "`solver.prototxt`. Generated by `zoo/generate.py`; edit "
              "that script, not these files.", ""]
    return "\n".join(lines)


def write_model(name, root=HERE):
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    deploy = build(name, train=False)
    files = {"deploy.prototxt": io.format_text(deploy),
             "train_val.prototxt": io.format_text(build(name, train=True)),
             "solver.prototxt": solver_text(name),
             "README.md": readme_text(name, deploy)}
    for fname, text in files.items():
        with open(os.path.join(out, fname), "w", newline="\n") as f:
            f.write(text)
    return out


def main(argv=None):
    names = list(argv if argv is not None else sys.argv[1:]) or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s): {', '.join(unknown)}; known: "
                         f"{', '.join(MODELS)}")
    for name in names:
        print(write_model(name))


if __name__ == "__main__":
    main()
