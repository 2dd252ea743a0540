"""Upgrading legacy Caffe definitions to the current format.

Mirrors: src/caffe/util/upgrade_proto.cpp.  Applied by `protonet.io` to every
net and solver it reads, so the rest of protonet only sees V2 nets:

* V0 nets (``layers { layer { type: "conv" ... } }``): padding layers are
  folded into the convolution / pooling that reads them, then every V0 field
  moves to its V1 home (UpgradeV0PaddingLayers, UpgradeV0LayerParameter).
* V1 nets (``layers { type: CONVOLUTION blobs_lr: 1 ... }``): the enum type
  becomes the V2 type string and blobs_lr / weight_decay / param /
  blob_share_mode become ``param { lr_mult decay_mult name share_mode }``
  (UpgradeV1LayerParameter).  Weights stored under ``layers`` (V1
  caffemodels) come along.
* scale / mean_file / crop_size / mirror of data_param, image_data_param and
  window_data_param move to transform_param (UpgradeNetDataTransformation).
* input / input_dim / input_shape become an Input layer (UpgradeNetInput).
* solver_type becomes type (UpgradeSolverType).
* Fork spellings accepted in text only (see proto/caffe.proto, [text-only])
  are mapped onto BVLC fields where one exists; `TEXT_ONLY` lists them all
  and `strip_text_only` removes any left before a binary file is written.

Where Caffe logs "Unknown parameter X for layer type Y" and continues, we do
the same with a `UpgradeWarning`; what Caffe aborts on raises `UpgradeError`
naming the file and the layer.
"""

import warnings

from .errors import UpgradeError
from .pbcompat import is_repeated
from .proto import caffe_pb2

_V1 = caffe_pb2.V1LayerParameter


class UpgradeWarning(UserWarning):
    """A legacy field was dropped because Caffe drops it too."""


# ---------------------------------------------------------------------------
# Type tables (UpgradeV0LayerType, UpgradeV1LayerType)

V0_TO_V1_TYPE = {
    "accuracy": _V1.ACCURACY, "bnll": _V1.BNLL, "concat": _V1.CONCAT,
    "conv": _V1.CONVOLUTION, "data": _V1.DATA, "dropout": _V1.DROPOUT,
    "euclidean_loss": _V1.EUCLIDEAN_LOSS, "flatten": _V1.FLATTEN,
    "hdf5_data": _V1.HDF5_DATA, "hdf5_output": _V1.HDF5_OUTPUT,
    "im2col": _V1.IM2COL, "images": _V1.IMAGE_DATA,
    "infogain_loss": _V1.INFOGAIN_LOSS, "innerproduct": _V1.INNER_PRODUCT,
    "lrn": _V1.LRN, "multinomial_logistic_loss": _V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": _V1.POOLING, "relu": _V1.RELU, "sigmoid": _V1.SIGMOID,
    "softmax": _V1.SOFTMAX, "softmax_loss": _V1.SOFTMAX_LOSS,
    "split": _V1.SPLIT, "tanh": _V1.TANH, "window_data": _V1.WINDOW_DATA,
}

V1_TO_V2_TYPE = {
    _V1.NONE: "", _V1.ABSVAL: "AbsVal", _V1.ACCURACY: "Accuracy",
    _V1.ARGMAX: "ArgMax", _V1.BNLL: "BNLL", _V1.CONCAT: "Concat",
    _V1.CONTRASTIVE_LOSS: "ContrastiveLoss", _V1.CONVOLUTION: "Convolution",
    _V1.DECONVOLUTION: "Deconvolution", _V1.DATA: "Data",
    _V1.DROPOUT: "Dropout", _V1.DUMMY_DATA: "DummyData",
    _V1.EUCLIDEAN_LOSS: "EuclideanLoss", _V1.ELTWISE: "Eltwise",
    _V1.EXP: "Exp", _V1.FLATTEN: "Flatten", _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output", _V1.HINGE_LOSS: "HingeLoss",
    _V1.IM2COL: "Im2col", _V1.IMAGE_DATA: "ImageData",
    _V1.INFOGAIN_LOSS: "InfogainLoss", _V1.INNER_PRODUCT: "InnerProduct",
    _V1.LRN: "LRN", _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", _V1.MVN: "MVN",
    _V1.POOLING: "Pooling", _V1.POWER: "Power", _V1.RELU: "ReLU",
    _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    _V1.SILENCE: "Silence", _V1.SOFTMAX: "Softmax",
    _V1.SOFTMAX_LOSS: "SoftmaxWithLoss", _V1.SPLIT: "Split",
    _V1.SLICE: "Slice", _V1.TANH: "TanH", _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

# Every [text-only] field of proto/caffe.proto: (message, field).
TEXT_ONLY = frozenset({
    ("caffe.PoolingParameter", "ceil_mode"),
    ("caffe.PoolingParameter", "bin_size"),
    ("caffe.ConvolutionParameter", "filter_stride"),
    ("caffe.NormalizeParameter", "fix_scale"),
    ("caffe.UpsampleParameter", "scale_h"),
    ("caffe.LossParameter", "weight_by_label_freqs"),
    ("caffe.LossParameter", "pre_fixed_normalizer"),
    ("caffe.LayerParameter", "interp_param"),
    ("caffe.LayerParameter", "parse_evaluate_param"),
    ("caffe.LayerParameter", "unpooling_param"),
    ("caffe.SolverParameter", "eval_type"),
    ("caffe.SolverParameter", "ap_version"),
})
# [text-only] enum values: (enum, value name).
TEXT_ONLY_ENUM_VALUES = frozenset({
    ("caffe.LossParameter.NormalizationMode", "PRE_FIXED"),
})


def _where(path, layer=None):
    where = str(path) if path else "<net>"
    if layer is not None:
        where += f": layer '{layer}'"
    return where


def _is_v0(net):
    return any(l.HasField("layer") for l in net.layers)


# ---------------------------------------------------------------------------
# Nets


def upgrade_net(net, path=None):
    """Upgrade a NetParameter in place to V2; returns True if anything changed.

    Raises:
        UpgradeError: names the file and layer that cannot be upgraded.
    """
    changed = False
    if net.layers:
        if net.layer:
            raise UpgradeError(
                f"{_where(path)}: both 'layer' (V2) and 'layers' (V1) are "
                "given; a net uses only one of them")
        if _is_v0(net):
            _upgrade_v0_net(net, path)
        _upgrade_data_transformation(net.layers)
        _upgrade_v1_net(net, path)
        changed = True
    changed |= _upgrade_data_transformation(net.layer)
    changed |= _upgrade_input_fields(net, path)
    changed |= _upgrade_fork_text_fields(net, path)
    return changed


def _upgrade_v0_net(net, path):
    """V0 `layers { layer {...} }` -> V1 `layers {...}` (UpgradeV0Net)."""
    _fold_padding_layers(net, path)
    old = list(net.layers)
    del net.layers[:]
    for conn in old:
        _upgrade_v0_layer(conn, net.layers.add(), path)


def _fold_padding_layers(net, path):
    """Drop V0 "padding" layers, moving their pad into the conv/pool reading
    them (UpgradeV0PaddingLayers)."""
    producer = {name: None for name in net.input}
    kept = []
    for conn in net.layers:
        v0 = conn.layer
        if v0.type != "padding":
            kept.append(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in producer:
                raise UpgradeError(f"{_where(path, v0.name)}: unknown bottom "
                                   f"blob '{blob}'")
            src = producer[blob]
            if src is None or src.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise UpgradeError(
                    f"{_where(path, v0.name)}: padding layer "
                    f"'{src.layer.name}' feeds a '{v0.type}' layer; only conv "
                    "and pool layers can absorb padding")
            if len(conn.bottom) != 1 or len(src.bottom) != 1 or \
                    len(src.top) != 1:
                raise UpgradeError(
                    f"{_where(path, v0.name)}: padding can only be folded "
                    "between single-input, single-output layers")
            v0.pad = src.layer.pad
            conn.bottom[j] = src.bottom[0]
        for blob in conn.top:
            producer[blob] = conn
    del net.layers[:]
    net.layers.extend(kept)


# V0 field -> {V0 type: (V1 sub-message, field)}; None as type = any type.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"),
            "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"),
               "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"),
               "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {None: ("transform_param", "scale")},
    "meanfile": {None: ("transform_param", "mean_file")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "cropsize": {None: ("transform_param", "crop_size")},
    "mirror": {None: ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}


def _upgrade_v0_layer(conn, out, path):
    """One V0 layer connection -> a V1 layer (UpgradeV0LayerParameter)."""
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TO_V1_TYPE:
            raise UpgradeError(f"{_where(path, v0.name)}: unknown V0 layer "
                               f"type '{kind}' (known: "
                               f"{', '.join(sorted(V0_TO_V1_TYPE))})")
        out.type = V0_TO_V1_TYPE[kind]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, homes in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        home = homes.get(kind) or homes.get(None)
        if home is None:
            # NOTE(caffe): Caffe logs "Unknown parameter ..." and drops it.
            warnings.warn(f"{_where(path, v0.name)}: V0 field '{field}' does "
                          f"not apply to layer type '{kind}'; dropped (as "
                          "Caffe does)", UpgradeWarning, stacklevel=4)
            continue
        sub, name = home
        msg = getattr(out, sub)
        value = getattr(v0, field)
        if name is None:
            msg.CopyFrom(value)
        elif field in ("weight_filler", "bias_filler"):
            getattr(msg, name).CopyFrom(value)
        elif is_repeated(msg.DESCRIPTOR.fields_by_name[name]):
            getattr(msg, name).append(value)
        else:
            setattr(msg, name, value)


def _upgrade_data_transformation(layers):
    """Move legacy transform fields of data layers into transform_param."""
    changed = False
    for layer in layers:
        for sub in ("data_param", "image_data_param", "window_data_param"):
            if not layer.HasField(sub):
                continue
            p = getattr(layer, sub)
            for name in ("scale", "mean_file", "crop_size", "mirror"):
                if p.HasField(name):
                    setattr(layer.transform_param, name, getattr(p, name))
                    p.ClearField(name)
                    changed = True
    return changed


def _upgrade_v1_net(net, path):
    """V1 `layers` -> V2 `layer` (UpgradeV1Net)."""
    v1_layers = list(net.layers)
    net.ClearField("layers")
    for v1 in v1_layers:
        _upgrade_v1_layer(v1, net.layer.add(), path)


def _upgrade_v1_layer(v1, out, path):
    """One V1LayerParameter -> LayerParameter (UpgradeV1LayerParameter)."""
    if v1.HasField("layer"):
        raise UpgradeError(f"{_where(path, v1.name)}: V1 layer still holds "
                           "a V0 'layer' message")
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        if v1.type not in V1_TO_V2_TYPE:
            raise UpgradeError(f"{_where(path, v1.name)}: unknown V1 layer "
                               f"type {v1.type}")
        out.type = V1_TO_V2_TYPE[v1.type]
    out.blobs.extend(v1.blobs)

    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode  # STRICT / PERMISSIVE have equal numbers
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    # Every *_param of V1 has a LayerParameter field of the same name.
    for fd, value in v1.ListFields():
        if fd.name.endswith("_param") and fd.name != "param":
            getattr(out, fd.name).CopyFrom(value)


# ---------------------------------------------------------------------------
# Input fields, fork spellings


def _upgrade_input_fields(net, path):
    """`input` / `input_dim` / `input_shape` -> an Input layer in front."""
    if not net.input:
        if net.input_dim or net.input_shape:
            raise UpgradeError(f"{_where(path)}: input_dim/input_shape "
                               "given without input names")
        return False
    n = len(net.input)
    if net.input_shape and len(net.input_shape) not in (1, n):
        raise UpgradeError(f"{_where(path)}: {n} inputs but "
                           f"{len(net.input_shape)} input_shape entries")
    if net.input_dim and len(net.input_dim) != 4 * n:
        raise UpgradeError(f"{_where(path)}: {n} inputs need {4 * n} "
                           f"input_dim values, found {len(net.input_dim)}")
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    for i, name in enumerate(net.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if net.input_shape:
            shape.CopyFrom(net.input_shape[min(i, len(net.input_shape) - 1)])
        elif net.input_dim:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    layers = [layer] + list(net.layer)
    del net.layer[:]
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")
    return True


def _upgrade_fork_text_fields(net, path):
    """Map text-only fork spellings onto BVLC (or fork) fields."""
    changed = False
    for layer in net.layer:
        where = _where(path, layer.name)
        if layer.HasField("pooling_param"):
            p = layer.pooling_param
            if p.HasField("ceil_mode"):
                p.round_mode = (caffe_pb2.PoolingParameter.CEIL if p.ceil_mode
                                else caffe_pb2.PoolingParameter.FLOOR)
                p.ClearField("ceil_mode")
                changed = True
            if p.HasField("bin_size"):
                if p.bin_size != 1:
                    raise UpgradeError(
                        f"{where}: pooling_param.bin_size {p.bin_size} (a "
                        "fixed output grid) has no BVLC equivalent; only "
                        "bin_size: 1 (= global_pooling) is supported")
                p.global_pooling = True
                p.ClearField("bin_size")
                changed = True
        if layer.HasField("convolution_param"):
            c = layer.convolution_param
            if c.HasField("filter_stride"):
                if c.dilation:
                    raise UpgradeError(f"{where}: both filter_stride and "
                                       "dilation are given")
                c.dilation.append(c.filter_stride)
                c.ClearField("filter_stride")
                changed = True
        if layer.HasField("norm_param") and \
                layer.norm_param.HasField("fix_scale"):
            if layer.norm_param.fix_scale:
                spec = layer.param[0] if layer.param else layer.param.add()
                spec.lr_mult = 0
                spec.decay_mult = 0
            layer.norm_param.ClearField("fix_scale")
            changed = True
        if layer.HasField("upsample_param") and \
                layer.upsample_param.HasField("scale_h"):
            u = layer.upsample_param
            if u.scale_h != u.scale_w:
                raise UpgradeError(
                    f"{where}: upsample_param scale_h {u.scale_h} != scale_w "
                    f"{u.scale_w}; give upsample_h / upsample_w instead")
            u.scale = u.scale_h
            u.ClearField("scale_h")
            u.ClearField("scale_w")
            changed = True
        if layer.HasField("loss_param") and \
                layer.loss_param.HasField("weight_by_label_freqs"):
            lp = layer.loss_param
            if lp.weight_by_label_freqs and not lp.class_weighting:
                raise UpgradeError(f"{where}: weight_by_label_freqs is true "
                                   "but no class_weighting is given")
            if not lp.weight_by_label_freqs:
                lp.ClearField("class_weighting")  # ignored by the fork
            lp.ClearField("weight_by_label_freqs")
            changed = True
    return changed


def strip_text_only(message):
    """Clear every [text-only] field and enum value in `message`, recursively.

    protonet.io calls it (on a copy) before writing a binary file, so the
    numbers we chose for fork spellings never reach a file another Caffe
    reads.  Returns `message`.
    """
    _text_only_walk(message, strip=True)
    return message


def has_text_only(message):
    """True if `message` holds any [text-only] field or enum value."""
    return _text_only_walk(message, strip=False)


def _text_only_walk(message, strip):
    found = False
    for fd, value in message.ListFields():
        if (fd.containing_type.full_name, fd.name) in TEXT_ONLY:
            found = True
            if strip:
                message.ClearField(fd.name)
            continue
        if fd.enum_type is not None:
            bad = {v.number for v in fd.enum_type.values
                   if (fd.enum_type.full_name, v.name) in TEXT_ONLY_ENUM_VALUES}
            values = list(value) if is_repeated(fd) else [value]
            if bad and any(v in bad for v in values):
                found = True
                if strip:
                    message.ClearField(fd.name)
                    if is_repeated(fd):
                        getattr(message, fd.name).extend(
                            v for v in values if v not in bad)
        elif fd.message_type is not None and \
                fd.message_type.full_name != "caffe.BlobProto":
            for item in (value if is_repeated(fd) else [value]):
                found |= _text_only_walk(item, strip)
    return found


# ---------------------------------------------------------------------------
# Solvers

_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp",
                 4: "AdaDelta", 5: "Adam"}


def upgrade_solver(solver, path=None):
    """`solver_type` enum -> `type` string (as UpgradeSolverType)."""
    if solver.HasField("solver_type"):
        if solver.HasField("type") and \
                solver.type.lower() != _SOLVER_TYPES[solver.solver_type].lower():
            raise UpgradeError(f"{path or '<solver>'}: both solver_type and "
                               "type are set and disagree")
        solver.type = _SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
        return True
    return False


# ---------------------------------------------------------------------------
# Whole files (what `protonet upgrade in out` calls)


def upgrade_net_file(in_path, out_path):
    """Read a net prototxt (V0/V1/V2), write it upgraded as V2 prototxt.

    Returns the upgraded NetParameter.
    """
    from . import io
    net = io.read_net(in_path)
    io.write_text(out_path, net)
    return net


def upgrade_solver_file(in_path, out_path):
    """Read a solver prototxt, write it with `solver_type` upgraded; an
    inline net_param / train_net_param / test_net_param is upgraded too."""
    from . import io
    solver = io.read_solver(in_path)
    for net in [solver.net_param, solver.train_net_param,
                *solver.test_net_param]:
        if net.ListFields():
            upgrade_net(net, in_path)
    io.write_text(out_path, solver)
    return solver


def upgrade_caffemodel(in_path, out_path):
    """Read a binary .caffemodel (V0/V1/V2), write it as a V2 .caffemodel."""
    from . import io
    net = io.read_caffemodel(in_path)
    io.write_caffemodel(out_path, net)  # atomic: in_path == out_path is fine
    return net
