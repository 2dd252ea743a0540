"""Input shapes for `protonet summary` of a train_val net whose data files
are not there.

A Data, ImageData, HDF5Data or WindowData layer of the summarised phase is
replaced by an Input layer of the shapes it would produce, worked out from
its parameters (batch_size, transform_param.crop_size, new_height /
new_width, is_color, the channels of mean_value or the mean file), from the
first record of its database or the first file of its list when present,
or from `--input-shape TOP=N,C,H,W`.  When
none of these fixes a shape the error names the layer, the missing file and
the flag.  HDF5Output layers are left out: a summary writes no file.
"""

import os

from .errors import ProtonetError
from .netgraph import state_meets_rule
from .proto import caffe_pb2

FILE_DATA = ("Data", "ImageData", "HDF5Data", "WindowData")
_PARAMS = ("data_param", "image_data_param", "hdf5_data_param",
           "window_data_param", "transform_param")


def parse_input_shapes(specs):
    """`--input-shape` values (`TOP=d0,d1,...` or `d0,d1,...`) -> dict of
    top name (None: the first data top) -> tuple of ints."""
    shapes = {}
    for spec in specs or ():
        name, _, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise ProtonetError(f"--input-shape {spec!r}: expected "
                                "[TOP=]N,C,H,W with positive integers, e.g. "
                                "data=1,3,227,227")
        shapes[name or None] = shape
    return shapes


def _included(lp, state):
    if lp.include:
        return any(state_meets_rule(state, r) for r in lp.include)
    return not any(state_meets_rule(state, r) for r in lp.exclude)


def stand_in_inputs(param, phase, batch, given):
    """Rewrite `param` (in place) so it builds without data files; `given`
    maps top names (None: the first input top) to shapes."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(param.state)
    state.phase = phase
    keep = [lp for lp in param.layer if lp.type != "HDF5Output"]
    del param.layer[:]
    param.layer.extend(keep)
    used, tops = set(), []

    def lookup(top):
        key = top if top in given else None if not tops and None in given \
            else top
        tops.append(top)
        if key in given:
            used.add(key)
            return given[key]
        return None
    for i, name in enumerate(param.input):     # deploy nets' `input:` fields
        shape = lookup(name)
        if shape is not None and i < len(param.input_shape):
            _set_shape(param.input_shape[i], shape, batch)
    for lp in param.layer:
        if not _included(lp, state) or lp.type not in FILE_DATA + ("Input",):
            continue
        shapes = [lookup(top) for top in lp.top]
        if lp.type == "Input":
            for k, shape in enumerate(shapes):
                if shape is not None and k < len(lp.input_param.shape):
                    _set_shape(lp.input_param.shape[k], shape, batch)
            continue
        shapes = [s or _inferred(lp, k, batch) for k, s in enumerate(shapes)]
        for field in _PARAMS:
            lp.ClearField(field)
        lp.type = "Input"
        for shape in shapes:
            _set_shape(lp.input_param.shape.add(), shape, batch)
    unused = [k for k in given if k not in used]
    if unused:
        name = unused[0] if unused[0] is not None else "(first input)"
        phase_name = caffe_pb2.Phase.Name(phase)
        raise ProtonetError(f"--input-shape {name}: no input or data layer "
                            f"top of that name in the {phase_name} net (its "
                            f"input tops: {', '.join(tops) or 'none'})")
    return param


def _set_shape(blob_shape, shape, batch):
    del blob_shape.dim[:]
    blob_shape.dim.extend((batch,) + tuple(shape[1:]))


def _inferred(lp, k, batch):
    """The shape of top `k` of data layer `lp` from its own parameters and
    files; ProtonetError with the `--input-shape` hint when unknown."""
    if lp.type == "HDF5Data":
        return _hdf5_shape(lp, k, batch)
    if k > 0:
        return (batch,)             # the label
    crop = lp.transform_param.crop_size
    if lp.type == "WindowData":
        if crop:
            return (batch, 3, crop, crop)
        _hint(lp, k, lp.window_data_param.source, f"{batch},3,H,W")
    if lp.type == "ImageData":
        p = lp.image_data_param
        channels = 3 if p.is_color else 1
        if crop:
            return (batch, channels, crop, crop)
        if p.new_height and p.new_width:
            return (batch, channels, p.new_height, p.new_width)
        chw = _first_image(p, lp.transform_param)
        if chw is None:
            _hint(lp, k, p.source, f"{batch},{channels},H,W")
        return (batch,) + chw
    chw = _first_datum(lp.data_param.source, lp.transform_param)
    if chw is None and crop:
        channels = _channels_from_mean(lp.transform_param)
        if channels:
            return (batch, channels, crop, crop)
    if chw is None:
        hw = f"{crop},{crop}" if crop else "H,W"
        _hint(lp, k, lp.data_param.source, f"{batch},C,{hw}")
    if crop:
        if crop > min(chw[1:]):
            raise ProtonetError(
                f"layer '{lp.name}' (Data): crop_size {crop} is larger than "
                f"the {chw[1]}x{chw[2]} images of {lp.data_param.source}")
        chw = (chw[0], crop, crop)
    return (batch,) + tuple(chw)


def _channels_from_mean(tp):
    """The channel count the transformation's mean fixes: several
    mean_value entries (one per channel), or the mean file's, when present."""
    if len(tp.mean_value) > 1:
        return len(tp.mean_value)
    if tp.mean_file and os.path.isfile(tp.mean_file):
        from .io import read_binaryproto
        return read_binaryproto(tp.mean_file).shape[1]
    return None


def _color(tp):
    return True if tp.force_color else False if tp.force_gray else None


def _first_datum(source, tp):
    from . import db
    if not source or not os.path.isdir(source):
        return None
    for key, datum in db.read_datums(source):
        return db.datum_to_array(datum, source, key, _color(tp)).shape
    raise ProtonetError(f"{source}: the database holds no records, so its "
                        "image shape is unknown (give --input-shape)")


def _first_image(p, tp):
    from . import db
    from .layers.db_data import read_image_list
    if not p.source or not os.path.isfile(p.source):
        return None
    lines = read_image_list(p.source)
    if not lines:
        return None
    path = p.root_folder + lines[0][0]
    if not os.path.isfile(path):
        return None
    return db.decode_image(open(path, "rb").read(), p.is_color, path).shape


def _hdf5_shape(lp, k, batch):
    p, top = lp.hdf5_data_param, lp.top[k]
    first = None
    if p.source and os.path.isfile(p.source):
        with open(p.source) as f:
            first = next((ln.strip() for ln in f if ln.strip()), None)
    if not first or not os.path.isfile(first):
        _hint(lp, k, first or p.source, f"{p.batch_size or batch},...")
    from .hdf5 import require_h5py
    with require_h5py().File(first, "r") as f:
        if top not in f:
            raise ProtonetError(f"{first}: no dataset '{top}' for top '{top}' "
                                f"of layer '{lp.name}' (HDF5Data)")
        return (batch,) + tuple(f[top].shape[1:])


def _hint(lp, k, source, example):
    top = lp.top[k]
    raise ProtonetError(
        f"layer '{lp.name}' ({lp.type}): the shape of top '{top}' comes from "
        f"{source or 'its data source'}, which is not there; give it with "
        f"--input-shape {top}={example} (N is replaced by --batch)")
