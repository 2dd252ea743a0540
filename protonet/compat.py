"""Running published nets without their data, and the corpus compatibility table.

`replace_data_layers(net_param)` turns every data layer (Data, ImageData,
HDF5Data, WindowData, DenseImageData, AnnotatedData, ImageLabelmapData,
MemoryData) into an Input layer of the shapes the layer declares, so a
train/val net builds and runs on arrays: the batch axis comes from the layer's
batch_size, the item shape from transform_param.crop_size, the image layer's
new_height/new_width, the fork's resize/crop fields, or else from `shapes`
(per top, without the batch axis).  DummyData stays.  Labels are (N,) for
classification layers, (N, 1, H, W) for the segmentation layers and
(1, 1, N, 8) ground-truth rows for SSD's AnnotatedData (one box per image).

`CORPUS_SHAPES` is the documented table of item shapes for corpus files whose
data layers do not say them (the datasets they were published for).

`python -m protonet.compat --markdown` builds and runs every corpus net and
prints the compatibility table (docs/compatibility.md) next to the published
coverage of BVLC Caffe / pycaffe and OpenCV's dnn Caffe importer.
"""

import argparse
import csv
import os
import re
import sys
import time
import warnings

import numpy as np

from . import io as _io
from .errors import ProtonetError
from .net import TEST, TRAIN, Net
from .rng import set_random_seed
from .netgraph import filter_net
from .proto import caffe_pb2

DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "WindowData",
                    "DenseImageData", "AnnotatedData", "ImageLabelmapData",
                    "MemoryData")

MNIST, CIFAR10 = (1, 28, 28), (3, 32, 32)

# Item shapes (no batch axis) of data tops whose layers do not declare them,
# per corpus file: the dataset each was published for.
CORPUS_SHAPES = {
    "BVLC__caffe/examples/mnist/lenet_train_test.prototxt": {"data": MNIST},
    "BVLC__caffe@11a4c1655842/examples/mnist/lenet_train_test.prototxt": {"data": MNIST},
    "BVLC__caffe@2e330581c597/examples/lenet/lenet_train.prototxt": {"data": MNIST},
    "BVLC__caffe/examples/mnist/mnist_autoencoder.prototxt": {"data": MNIST},
    "BVLC__caffe/examples/siamese/mnist_siamese_train_test.prototxt": {"pair_data": (2, 28, 28)},
    "cdoersch__vae_tutorial/mnist_vae.prototxt": {"data": MNIST},
    "BVLC__caffe/examples/cifar10/cifar10_quick_train_test.prototxt": {"data": CIFAR10},
    "BVLC__caffe/examples/cifar10/cifar10_full_train_test.prototxt": {"data": CIFAR10},
    "BVLC__caffe/examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt": {"data": CIFAR10},
    # CamVid frames as SegNet-Tutorial prepares them (360 x 480).
    "alexgkendall__SegNet-Tutorial/Models/segnet_train.prototxt": {"data": (3, 360, 480)},
    # ParseNet's VOC2012 images padded to 500 x 500 in its LMDBs.
    "natanielruiz__net-archive/parsenet/VGG_VOC2012ext.prototxt": {
        "data": (3, 500, 500), "label": (1, 500, 500)},
    # HED's BSDS500 images (321 x 481, landscape).
    "natanielruiz__net-archive/holistically-nested/train_val.prototxt": {"data": (3, 321, 481)},
    # S2VT's HDF5 buffers: 80 time steps (the batch axis) x 32 streams.
    "natanielruiz__net-archive/sequence-to-sequence/s2vt.prototxt": {
        "cont_sentence": (32,), "input_sentence": (32,), "target_sentence": (32,),
        "stage_indicator": (32,), "frame_fc7": (32, 4096)},
    # VanillaCNN's 40 x 40 face crops and 5 landmark (x, y) pairs.
    "natanielruiz__net-archive/facial-landmark/vanilla_train.prototxt": {
        "X": (3, 40, 40), "landmarks": (10,)},
}

# NetState stages a file needs (what its published solver's train_state /
# test_state set), per corpus file.
CORPUS_STAGES = {
    # S2VT's solver trains the factored 2-layer LSTM.
    "natanielruiz__net-archive/sequence-to-sequence/s2vt.prototxt": ["factored", "2-layer"],
}

# Files whose layers fix the batch axis (Reshape to the declared time steps):
# built at their declared batch.
KEEP_BATCH = {"natanielruiz__net-archive/sequence-to-sequence/s2vt.prototxt"}

# Tops that hold integers (class labels, word ids, sequence flags): random
# test inputs for them are drawn from {0, 1}, valid for any label space.
INTEGER_TOPS = {"label", "cont_sentence", "input_sentence", "target_sentence",
                "stage_indicator"}


def _item_shape(layer, top, shapes):
    """The item shape of the first (image) top of `layer`, or None."""
    if top in shapes:
        return tuple(shapes[top])
    t = layer.transform_param
    if layer.type == "DenseImageData":
        p = layer.dense_image_data_param
        h, w = p.crop_height or p.new_height, p.crop_width or p.new_width
        return (3 if p.is_color else 1, h, w) if h and w else None
    if layer.type in ("ImageData", "ImageLabelmapData"):
        p = layer.image_data_param
        channels = 3 if p.is_color else 1
        if t.crop_size:
            return (channels, t.crop_size, t.crop_size)
        if p.new_height and p.new_width:
            return (channels, p.new_height, p.new_width)
        return None
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return (p.channels, p.height, p.width)
    if t.HasField("resize_param") and t.resize_param.height:
        return (3, t.resize_param.height, t.resize_param.width)
    if t.crop_size:
        return (3, t.crop_size, t.crop_size)
    return None


def data_layer_inputs(layer, shapes=None, batch_size=None):
    """[(top, shape, kind)] for a data layer; kind: data, label or boxes.

    Raises ProtonetError naming the layer and top when a shape is neither
    declared by the layer nor given in `shapes`.
    """
    shapes = shapes or {}
    batch = batch_size
    if batch is None:
        for field in ("data_param", "image_data_param", "hdf5_data_param",
                      "window_data_param", "dense_image_data_param",
                      "memory_data_param"):
            if layer.HasField(field) and getattr(layer, field).batch_size:
                batch = getattr(layer, field).batch_size
                break
        else:
            batch = 1
    out = []
    for i, top in enumerate(layer.top):
        if layer.type == "HDF5Data" or (i == 0 and top not in shapes and
                                        _item_shape(layer, top, shapes) is None):
            if top not in shapes:
                raise ProtonetError(
                    f"{layer.type} layer '{layer.name}': top '{top}' has no "
                    "declared shape (no crop_size / new_height / resize); "
                    "pass shapes={'%s': (C, H, W)}" % top)
            kind = "label" if top in INTEGER_TOPS else "data"
            out.append((top, (batch,) + tuple(shapes[top]), kind))
            continue
        if i == 0:
            kind = "label" if top in INTEGER_TOPS else "data"
            out.append((top, (batch,) + _item_shape(layer, top, shapes), kind))
        elif top in shapes:
            out.append((top, (batch,) + tuple(shapes[top]), "label"))
        elif layer.type == "AnnotatedData":
            out.append((top, (1, 1, batch, 8), "boxes"))
        elif layer.type in ("DenseImageData", "ImageLabelmapData"):
            out.append((top, (batch, 1) + out[0][1][2:], "label"))
        else:
            out.append((top, (batch,), "label"))
    return out


def replace_data_layers(net_param, shapes=None, batch_size=None):
    """A copy of `net_param` whose data layers are Input layers.

    Args:
        net_param: a (upgraded) NetParameter.
        shapes: optional {top: item shape without the batch axis}, for tops
            whose layers do not declare their shape (and to override).
        batch_size: optional batch size for every replaced layer (default:
            each layer's own batch_size).

    Each Input keeps the data layer's name, tops and include/exclude rules;
    DummyData and existing Input layers are left alone.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        new = out.layer.add()
        if layer.type not in DATA_LAYER_TYPES:
            new.CopyFrom(layer)
            continue
        new.name, new.type = layer.name, "Input"
        new.top.extend(layer.top)
        new.include.extend(layer.include)
        new.exclude.extend(layer.exclude)
        for _, shape, _ in data_layer_inputs(layer, shapes, batch_size):
            new.input_param.shape.add().dim.extend(shape)
    return out


def input_kinds(net_param, shapes=None):
    """{top: kind} for every data-layer top of `net_param` (see above)."""
    kinds = {}
    for layer in net_param.layer:
        if layer.type in DATA_LAYER_TYPES:
            for top, _, kind in data_layer_inputs(layer, shapes, 1):
                kinds[top] = kind
    return kinds


def python_modules(net_param):
    """The python_param.module of every Python layer, in order."""
    return [l.python_param.module for l in net_param.layer if l.type == "Python"]


def _stages_for(param, phase):
    """Caffe's solvers pick a test_state stage; do the same when a phase's
    data layers all require one (e.g. 'test-on-train')."""
    state = caffe_pb2.NetState(phase=phase)
    data = [l for l in param.layer if l.type == "Input" or l.type in DATA_LAYER_TYPES]
    probe = caffe_pb2.NetParameter()
    probe.CopyFrom(param)
    probe.state.CopyFrom(state)
    if any(l.type == "Input" for l in filter_net(probe).layer) or not data:
        return []
    for l in data:
        for rule in l.include:
            if rule.phase == phase and rule.stage:
                return list(rule.stage)
    return []


def _complete_inputs(param, phase, stages):
    """Add, for `phase`, Input layers for tops that only another phase's data
    layer produces (a TRAIN-only data layer in a train.prototxt), so the
    net can be inspected in both phases."""
    probe = caffe_pb2.NetParameter()
    probe.CopyFrom(param)
    probe.state.phase = phase
    probe.state.stage.extend(stages)
    produced, missing = set(), []
    for l in filter_net(probe).layer:
        missing += [b for b in l.bottom if b not in produced and b not in missing]
        produced.update(l.top)
    shapes = {}
    for l in param.layer:
        if l.type == "Input":
            for top, s in zip(l.top, l.input_param.shape):
                shapes.setdefault(top, s)
    extra = [b for b in missing if b in shapes]
    if not extra:
        return param
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    new = out.layer.add(name="input_" + "_".join(extra), type="Input")
    new.top.extend(extra)
    new.include.add(phase=phase)
    for top in extra:
        new.input_param.shape.add().CopyFrom(shapes[top])
    out.layer.extend(param.layer)
    return out


def build(path, phase=TEST, shapes=None, batch_size=1, stages=()):
    """Build a corpus (or any) net with its data layers replaced.

    Returns (net, kinds) where kinds maps each input blob to data, label or
    boxes.  Input blobs are reshaped to `batch_size` (None keeps them; nets
    with DummyData keep their declared batch, which DummyData fixes).
    """
    param = _io.read_net(path)
    if any(l.type == "DummyData" for l in param.layer):
        batch_size = None
    kinds = input_kinds(param, shapes)
    param = replace_data_layers(param, shapes, batch_size)
    stages = list(stages) + _stages_for(param, phase)
    param = _complete_inputs(param, phase, stages)
    param.force_backward = False
    net = Net(param, phase=phase, stages=stages)
    if batch_size is not None and net.inputs:
        for name in net.inputs:
            blob = net.blobs[name]
            if kinds.get(name) == "boxes":
                blob.reshape((1, 1, batch_size, 8))
            elif blob.shape:
                blob.reshape((batch_size,) + blob.shape[1:])
        net.reshape()
    return net, kinds


def build_corpus(rel, phase=TEST):
    """`build` for a corpus file with its CORPUS_SHAPES / CORPUS_STAGES.

    The fillers are seeded (protonet.rng, seed 0) so a file builds with the
    same random weights whatever ran before it."""
    set_random_seed(0)
    return build(os.path.join(CORPUS, rel), phase, CORPUS_SHAPES.get(rel),
                 batch_size=None if rel in KEEP_BATCH else 1,
                 stages=CORPUS_STAGES.get(rel, ()))


def fill_random(net, kinds, seed=0):
    """Random inputs: data ~ N(0, 1), labels in {0, 1}, one valid ground-truth
    box per image for SSD; untrained BatchNorm statistics get unit variance
    (zero variance would divide by sqrt(eps) and overflow deep nets)."""
    gen = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    for name in net.inputs:
        blob = net.blobs[name]
        kind = kinds.get(name, "data")
        if kind == "label":
            blob.data[...] = gen.integers(0, 2, blob.shape)
        elif kind == "boxes":
            rows = blob.data.reshape(-1, 8)
            rows[:] = [0, 1, 0, 0.1, 0.2, 0.6, 0.7, 0]
            rows[:, 0] = np.arange(len(rows))
        else:
            blob.data[...] = gen.standard_normal(blob.shape)


def has_loss(net):
    return any(w for w in net.blob_loss_weights)


def run(net, kinds, backward=True, seed=0):
    """One forward (and backward when the net has a loss) on random inputs."""
    fill_random(net, kinds, seed)
    net.forward_from_to()
    if backward and has_loss(net):
        net.backward_from_to()


# ---------------------------------------------------------------------------
# The corpus table

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tests", "fixtures", "corpus")
CAFFE_INDEX = os.path.join(os.path.dirname(CORPUS), "caffe_ref", "shapes", "INDEX.tsv")
TEMPLATE = "natanielruiz__net-archive/mixture_dcnn/base_model.prototxt"

# OpenCV 4.x dnn: layer types registered in modules/dnn/src/init.cpp that
# Caffe files use, plus the types its Caffe importer handles itself
# (Input; ConvolutionDepthwise -> Convolution; Axpy -> Scale + Eltwise).
OPENCV_TYPES = set("""Slice Split Concat Reshape Flatten Resize Interp Convolution
Deconvolution Pooling ROIPooling PSROIPooling LRN InnerProduct Softmax MVN ReLU
ReLU6 PReLU Sigmoid TanH Swish ELU BNLL AbsVal Power Exp Log HardSwish
HardSigmoid BatchNorm Dropout Silence Crop Eltwise Permute ShuffleChannel
PriorBox DetectionOutput Normalize Padding Proposal Scale LSTM Tile Input
ConvolutionDepthwise Axpy""".split())
# Fork fields that OpenCV's opencv-caffe.proto lacks: its text parser rejects
# a file that uses any of them (it has ceil_mode, norm_param, permute_param,
# prior_box_param, detection_output_param, roi/psroi_pooling_param).
OPENCV_UNKNOWN_FIELDS = set("""bn_param interp_param shuffle_channel_param
smooth_l1_loss_param annotated_data_param multibox_loss_param upsample_param
selu_param selu_dropout_param dense_image_data_param box_annotator_ohem_param
parse_evaluate_param unpooling_param resize_param emit_constraint
distort_param expand_param filter_stride fix_scale class_weighting
weight_by_label_freqs pre_fixed_normalizer""".split())


def manifest():
    with open(os.path.join(CORPUS, "MANIFEST.tsv")) as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r["kind"] != "solver"]


def caffe_index():
    with open(CAFFE_INDEX) as f:
        return {r["path"]: r for r in csv.DictReader(f, delimiter="\t")}


def opencv_status(row):
    """Whether OpenCV's Caffe importer recognises every layer type and field."""
    text = open(os.path.join(CORPUS, row["local_path"]), errors="replace").read()
    fields = set(re.findall(r"^\s*(\w+)\s*[:{]", text, re.M)) & OPENCV_UNKNOWN_FIELDS
    types = [t for t in row["canonical"].split(",") if t and t not in OPENCV_TYPES]
    if not fields and not types:
        return "yes"
    why = []
    if fields:
        why.append("fields " + ", ".join(sorted(fields)))
    if types:
        why.append("types " + ", ".join(types))
    return "no: " + "; ".join(why)


def caffe_status(row, index):
    r = index.get(row["local_path"])
    if r is None:
        return "?"
    if r["constructed"] == "yes":
        return "yes"
    if r["constructed"] == "skipped":
        return "not tried (needs its data)"
    err = r["error"]
    m = re.search(r"Unknown layer type: (\w+)", err)
    if m:
        return f"no: unknown type {m.group(1)}"
    m = re.search(r"no field named \"(\w+)\"", err)
    if m:
        return f"no: unknown field {m.group(1)}"
    return "no: " + err.split(":")[-1].strip()[:60]


def protonet_status(row, forward=True):
    """'builds + runs' / 'builds' / 'fails: ...' for one corpus file."""
    rel = row["local_path"]
    path = os.path.join(CORPUS, rel)
    if rel == TEMPLATE:
        return "n/a (template: num_output: NUM_OUTPUTS)"
    phases = (TEST,) if row["kind"] == "deploy" else (TRAIN, TEST)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for phase in phases:
                net, kinds = build_corpus(rel, phase)
                if forward:
                    run(net, kinds, backward=phase == TRAIN)
    except ProtonetError as e:
        if "Python layer" in str(e):
            mods = sorted(set(python_modules(_io.read_net(path))))
            return ("fails: needs Python module(s) " +
                    ", ".join(f"`{m}`" for m in mods) + " (not shipped)")
        return "fails: " + str(e).split(". ")[0][:140]
    if not forward:
        return "builds"
    return "builds + runs" + (" (fwd+bwd)" if row["kind"] == "net" else " (fwd)")


def table(forward=True, out=sys.stdout):
    index = caffe_index()
    rows = manifest()
    counts = {"protonet": 0, "caffe": 0, "opencv": 0}
    lines = []
    for row in rows:
        p = protonet_status(row, forward)
        c = caffe_status(row, index)
        o = opencv_status(row)
        counts["protonet"] += p.startswith("builds")
        counts["caffe"] += c == "yes"
        counts["opencv"] += o == "yes"
        lines.append(f"| `{row['local_path']}` | {row['kind']} | {row['format']} "
                     f"| {p} | {c} | {o} |")
    n = len(rows)
    print("# Corpus compatibility\n", file=out)
    print("Generated by `python -m protonet.compat --markdown` from "
          "`tests/fixtures/corpus` (every non-solver file).\n", file=out)
    print("- **protonet**: built in TEST (deploy) or TRAIN and TEST (train/val, "
          "data layers replaced by Input layers of their declared shapes, "
          "`protonet.compat.CORPUS_SHAPES` for the rest), one forward at batch 1 on "
          "random input, backward in TRAIN.", file=out)
    print("- **BVLC Caffe / pycaffe**: `tests/fixtures/caffe_ref/shapes/INDEX.tsv` "
          "(this Caffe build; train/val nets were not tried without their "
          "databases).", file=out)
    print("- **OpenCV dnn**: static check against OpenCV 4.x: every layer type "
          "registered in `modules/dnn/src/init.cpp` or mapped by "
          "`caffe_importer.cpp`, every fork field present in "
          "`opencv-caffe.proto`. OpenCV is inference-only: data and loss "
          "layers are not registered.\n", file=out)
    print(f"Totals over {n} net files: protonet {counts['protonet']}, "
          f"BVLC Caffe {counts['caffe']}, OpenCV {counts['opencv']}.\n", file=out)
    print("| file | kind | format | protonet | BVLC Caffe / pycaffe | OpenCV dnn |",
          file=out)
    print("|---|---|---|---|---|---|", file=out)
    for line in lines:
        print(line, file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m protonet.compat",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true",
                    help="print the compatibility table as Markdown")
    ap.add_argument("--build-only", action="store_true",
                    help="build the nets without running them")
    args = ap.parse_args(argv)
    if args.markdown:
        table(forward=not args.build_only)
        return 0
    for row in manifest():
        t = time.time()
        print(f"{protonet_status(row, not args.build_only):50s} "
              f"{time.time() - t:5.1f}s  {row['local_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
