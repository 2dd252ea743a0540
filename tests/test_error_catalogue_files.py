"""Error catalogue, input files: every file a user hands protonet -- net,
solver, weights (.caffemodel, .h5), mean file, solver states (.solverstate,
.h5, sidecar), HDF5 source lists and files, image lists and images -- that is
not a regular file, expands past the memory limit once read, or has the
wrong layout, ends in a ProtonetError naming the file (and the key, line or
dataset), never a hang, a raw error or memory exhaustion.

LMDB databases have their own catalogue (test_error_catalogue_db.py).
"""

import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest

import protonet
from protonet import hdf5, imageio, io, limits
from protonet.errors import (DataError, LayerError, ParseError, ProtonetError,
                             ResourceError, SolverError, WeightsError)
from protonet.proto import caffe_pb2
from protonet.transform import DataTransformer

from hostile_inputs import SPECIAL_WORDS, fifo, special

h5py = pytest.importorskip("h5py")
pytest.importorskip("PIL")

REF = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref")
LENET = os.path.join(REF, "nets", "lenet", "net.prototxt")
LENET_WEIGHTS = os.path.join(REF, "nets", "lenet", "weights.caffemodel")


def lenet():
    return protonet.Net(LENET, phase=protonet.TEST)


def write_text(path, text):
    path.write_text(text)
    return str(path)


def h5_file(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return str(path)


def h5_source(tmp_path, h5):
    return write_text(tmp_path / "h5list.txt", f"{h5}\n")


def hdf5_data_net(tmp_path, source, batch=2):
    text = (f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{source}" batch_size: {batch} }} }}')
    return protonet.Net(write_text(tmp_path / "h5net.prototxt", text),
                        phase=protonet.TEST)


def image_data_net(tmp_path, source, extra=""):
    text = (f'layer {{ name: "im" type: "ImageData" top: "data" top: "label" '
            f'image_data_param {{ source: "{source}" batch_size: 1 {extra} }}'
            ' data_param { prefetch: 0 } }')
    net = protonet.Net(write_text(tmp_path / "imnet.prototxt", text),
                       phase=protonet.TEST)
    net.forward()
    return net


def png(path, h=4, w=5):
    from PIL import Image
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    return str(path)


def mean_transformer(path):
    tp = caffe_pb2.TransformationParameter(mean_file=path)
    return DataTransformer(tp, protonet.TEST, np.float32)


# -- files that are not files -------------------------------------------------
# Each entry point: (file name, how to read it).  The special file is put
# at that name; what reads it must refuse it, naming it.

ENTRY_POINTS = {
    "net": ("x.prototxt", lambda p, t: protonet.Net(p, phase=protonet.TEST)),
    "solver": ("s.prototxt", lambda p, t: protonet.get_solver(p)),
    "caffemodel": ("w.caffemodel", lambda p, t: lenet().copy_from(p)),
    "h5_weights": ("w.caffemodel.h5", lambda p, t: lenet().copy_from(p)),
    "mean_binaryproto": ("mean.binaryproto", lambda p, t: mean_transformer(p)),
    "solverstate": ("x.solverstate", lambda p, t: io.read_solverstate(p)),
    "h5_solverstate": ("x.solverstate.h5",
                       lambda p, t: hdf5.read_solverstate(p)),
    "hdf5_source_list": ("list.txt", lambda p, t: hdf5_data_net(t, p)),
    "hdf5_source_file": ("d.h5",
                         lambda p, t: hdf5_data_net(t, h5_source(t, p))),
    "image_list": ("images.txt", lambda p, t: image_data_net(t, p)),
    "image": ("a.png", lambda p, t: image_data_net(
        t, write_text(t / "images.txt", f"{p} 0\n"))),
    "load_image": ("b.png", lambda p, t: imageio.load_image(p)),
}

SPECIAL_CASES = [(e, k) for e in ENTRY_POINTS for k in SPECIAL_WORDS]


@pytest.mark.parametrize("entry,kind", SPECIAL_CASES,
                         ids=[f"{e}-{k}" for e, k in SPECIAL_CASES])
def test_special_file_refused(entry, kind, tmp_path):
    name, read = ENTRY_POINTS[entry]
    with special(kind, tmp_path / name) as path:
        with pytest.raises(ProtonetError) as info:
            read(path, tmp_path)
    msg = str(info.value)
    assert name in msg and SPECIAL_WORDS[kind] in msg, msg


def test_dev_zero_named_directly():
    with pytest.raises(ParseError, match="/dev/zero: is a character device"):
        protonet.Net("/dev/zero", phase=protonet.TEST)
    with pytest.raises(ParseError, match="/dev/zero: is a character device"):
        lenet().copy_from("/dev/zero")


def test_stdin_is_allowed_and_bounded(tmp_path):
    """/dev/stdin, named explicitly, is read (up to the memory limit)."""
    import subprocess
    import sys
    code = ("import protonet; n = protonet.Net('/dev/stdin', "
            "phase=protonet.TEST); print(n.blobs['data'].shape)")
    text = open(LENET).read()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(protonet.__file__))))
    out = subprocess.run([sys.executable, "-c", code], input=text.encode(),
                         capture_output=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-500:]
    assert str(lenet().blobs["data"].shape).encode() in out.stdout


# -- bigger inside than outside ---------------------------------------------


def _million_empty_layers():
    return b"\xa2\x06\x00" * 1_000_000          # NetParameter.layer {} x 1e6


def test_caffemodel_of_a_million_empty_layers(tmp_path):
    """2.9 MB on disk, ~760 MB parsed: refused from a wire-format walk."""
    p = tmp_path / "empty.caffemodel"
    p.write_bytes(_million_empty_layers())
    with limits.limit("256M"):
        with pytest.raises(ResourceError) as info:
            io.read_caffemodel(str(p))
    msg = str(info.value)
    assert "empty.caffemodel" in msg and "once parsed" in msg, msg


def test_solverstate_of_many_empty_history_blobs(tmp_path):
    p = tmp_path / "x.solverstate"
    p.write_bytes(b"\x08\x01" + b"\x1a\x00" * 600_000)   # iter 1, history {}
    with limits.limit("32M"):
        with pytest.raises(ResourceError, match="x.solverstate.*once parsed"):
            io.read_solverstate(str(p))


def test_binaryproto_of_packed_dims(tmp_path):
    """Packed int64 dims: one byte each on disk, eight in memory."""
    dims = b"\x01" * 6_000_000
    shape = b"\x0a" + _varint(len(dims)) + dims           # BlobShape.dim
    blob = b"\x3a" + _varint(len(shape)) + shape          # BlobProto.shape
    p = tmp_path / "mean.binaryproto"
    p.write_bytes(blob)
    with limits.limit("32M"):
        with pytest.raises(ResourceError, match="mean.binaryproto"):
            io.read_binaryproto(str(p))


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_prototxt_with_a_64mib_string(tmp_path):
    p = tmp_path / "big.prototxt"
    with open(p, "w") as f:
        f.write('name: "')
        f.write("a" * (64 << 20))
        f.write('"\n')
    with limits.limit("256M"):
        with pytest.raises(ResourceError) as info:
            protonet.Net(str(p), phase=protonet.TEST)
    assert "big.prototxt" in str(info.value)


def test_prototxt_of_many_small_messages(tmp_path):
    p = write_text(tmp_path / "many.prototxt", "layer{}" * 100_000)  # 700 KB
    with limits.limit("32M"):
        with pytest.raises(ResourceError, match="many.prototxt.*messages"):
            io.read_net(p)


def test_real_files_pass_the_budget():
    """The golden nets and weights stay well inside a modest limit."""
    with limits.limit("256M"):
        net = lenet()
        net.copy_from(LENET_WEIGHTS)


def _hollow_h5(path, key, shape):
    """A tiny file declaring a huge chunked dataset (never written)."""
    with h5py.File(path, "w") as f:
        parts = key.split("/")
        g = f
        for part in parts[:-1]:
            g = g.require_group(part)
        g.create_dataset(parts[-1], shape=shape, dtype="f4",
                         chunks=(1024,) + (1,) * (len(shape) - 1))
    return str(path)


def test_hdf5_source_declaring_1gib(tmp_path):
    h5 = _hollow_h5(tmp_path / "hollow.h5", "data", (1 << 28,))
    with h5py.File(h5, "a") as f:
        f.create_dataset("label", data=np.zeros(1 << 28 >> 20, np.float32))
    assert os.path.getsize(h5) < 20000
    with limits.limit("512M"):
        with pytest.raises(ResourceError) as info:
            hdf5_data_net(tmp_path, h5_source(tmp_path, h5))
    msg = str(info.value)
    for w in ("hollow.h5", "/data", "(268435456,)", "float32"):
        assert w in msg, msg


def test_h5_weights_declaring_1gib(tmp_path):
    h5 = _hollow_h5(tmp_path / "w.caffemodel.h5", "data/conv1/0", (1 << 28,))
    with limits.limit("512M"):
        with pytest.raises(ResourceError) as info:
            lenet().copy_from(h5)
    msg = str(info.value)
    assert "w.caffemodel.h5" in msg and "/data/conv1/0" in msg, msg


def _png_header(path, w, h):
    """A PNG declaring w x h pixels with one tiny IDAT (Pillow reads only
    the header when it opens the file)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + \
            struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    path.write_bytes(data)
    return str(path)


def test_png_decompression_bomb_load_image(tmp_path):
    p = _png_header(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(DataError, match="bomb.png.*decompression bomb"):
        imageio.load_image(p)


def test_png_decompression_bomb_image_data(tmp_path):
    p = _png_header(tmp_path / "bomb.png", 20000, 20000)
    src = write_text(tmp_path / "list.txt", f"{p} 3\n")
    with pytest.raises(DataError) as info:
        image_data_net(tmp_path, src)
    msg = str(info.value)
    assert "list.txt:1" in msg and "bomb.png" in msg and "bomb" in msg, msg


def test_image_over_the_memory_limit(tmp_path):
    """Under Pillow's pixel cap but over protonet's memory limit."""
    p = _png_header(tmp_path / "wide.png", 3000, 3000)
    with limits.limit("64M"):
        with pytest.raises(ResourceError, match="wide.png.*3000 x 3000"):
            imageio.load_image(p)


def test_image_data_resize_target_refused_before_allocating(tmp_path):
    p = png(tmp_path / "a.png")
    src = write_text(tmp_path / "list.txt", f"{p} 0\n")
    with limits.limit("1G"):
        with pytest.raises(ResourceError) as info:
            image_data_net(tmp_path, src,
                           "new_height: 100000 new_width: 100000")
    assert "ImageData layer 'im'" in str(info.value)
    assert "100000 x 100000" in str(info.value)


def test_convert_imageset_resize_target(tmp_path, capsys):
    from protonet import cli
    p = png(tmp_path / "a.png")
    src = write_text(tmp_path / "list.txt", "a.png 0\n")
    with limits.limit("1G"):
        rc = cli.main(["convert-imageset", "--resize_height", "100000",
                       "--resize_width", "100000", str(tmp_path) + "/", src,
                       str(tmp_path / "db")])
    assert rc == 1
    assert "resizing to 100000 x 100000" in capsys.readouterr().err
    assert os.path.exists(p)


# -- invalid UTF-8 in list files --------------------------------------------

BAD_LINES = b"a.png 0\nb.png 1\nc\xff\xfe.png 2\n"


def test_image_list_invalid_utf8(tmp_path):
    src = tmp_path / "list.txt"
    src.write_bytes(BAD_LINES)
    with pytest.raises(DataError, match=r"list.txt:3: invalid UTF-8"):
        image_data_net(tmp_path, str(src))


def test_hdf5_source_list_invalid_utf8(tmp_path):
    src = tmp_path / "h5list.txt"
    src.write_bytes(b"a.h5\n\xc3(.h5\n")
    with pytest.raises(DataError, match=r"HDF5Data layer 'h'.*h5list.txt:2: "
                       "invalid UTF-8"):
        hdf5_data_net(tmp_path, str(src))


# -- HDF5 layouts --------------------------------------------------------------


def _weights_h5(tmp_path, build):
    p = str(tmp_path / "w.caffemodel.h5")
    with h5py.File(p, "w") as f:
        build(f)
    return p


H5_WEIGHT_CASES = [
    ("data_is_a_dataset", lambda f: f.create_dataset("data", data=[1.0]),
     ["'/data' is a dataset, expected a group"]),
    ("layer_is_a_dataset", lambda f: f.create_dataset("data/conv1",
                                                      data=[1.0]),
     ["'/data/conv1' is a dataset, expected a group"]),
    ("blob_is_a_group", lambda f: f.create_group("data/conv1/0"),
     ["'/data/conv1/0' is a group"]),
    ("blob_of_strings", lambda f: f.create_dataset(
        "data/conv1/0", data=np.array([b"abc"] * 3)),
     ["'/data/conv1/0'", "expected numbers"]),
    ("external_link", lambda f: f.__setitem__(
        "data", h5py.ExternalLink("/dev/zero", "/x")),
     ["external link", "/dev/zero"]),
    ("external_storage", lambda f: f.create_group("data/conv1")
     .create_dataset("0", shape=(20, 1, 5, 5), dtype="f4",
                     external=[("/dev/zero", 0, 2000)]),
     ["'/data/conv1/0'", "outside the file"]),
]


@pytest.mark.parametrize("case", H5_WEIGHT_CASES,
                         ids=[c[0] for c in H5_WEIGHT_CASES])
def test_h5_weights_layout(case, tmp_path):
    name, build, words = case
    p = _weights_h5(tmp_path, build)
    with pytest.raises(WeightsError) as info:
        lenet().copy_from(p)
    msg = str(info.value)
    assert "w.caffemodel.h5" in msg, msg
    for w in words:
        assert w in msg, (name, msg)


def _state_h5(tmp_path, build):
    p = str(tmp_path / "x.solverstate.h5")
    with h5py.File(p, "w") as f:
        f.create_dataset("iter", data=np.int32(3))
        f.create_dataset("current_step", data=np.int32(0))
        f.create_group("history").create_dataset("0", data=np.zeros(3, "f4"))
        build(f)
    return p


def _replace(key, **kw):
    def build(f):
        del f[key]
        if kw:
            f.create_dataset(key, **kw)
    return build


H5_STATE_CASES = [
    ("iter_string", _replace("iter", data=b"three"), ["iter'", "numbers"]),
    ("iter_negative", _replace("iter", data=np.int32(-1000000)),
     ["'iter'", ">= 0", "-1000000"]),
    ("iter_float", _replace("iter", data=np.float32(2.5)), ["'iter'"]),
    ("iter_vector", _replace("iter", data=np.arange(3)), ["'iter'", "one"]),
    ("history_dataset", _replace("history", data=[1.0]),
     ["'/history' is a dataset, expected a group"]),
    ("history_gap", lambda f: f["history"].move("0", "5"),
     ["'history'", "0, 1"]),
    ("history_strings", lambda f: (f["history"].__delitem__("0"),
                                   f["history"].create_dataset(
                                       "0", data=np.array([b"x"]))),
     ["'/history/0'", "expected numbers"]),
    ("learned_net_number", lambda f: f.create_dataset("learned_net", data=3),
     ["'learned_net'", "string"]),
    ("learned_net_bad_utf8", lambda f: f.create_dataset(
        "learned_net", data=np.bytes_(b"\xff\xfe")), ["'learned_net'",
                                                      "UTF-8"]),
]


@pytest.mark.parametrize("case", H5_STATE_CASES,
                         ids=[c[0] for c in H5_STATE_CASES])
def test_h5_solverstate_layout(case, tmp_path):
    name, build, words = case
    p = _state_h5(tmp_path, build)
    with pytest.raises(SolverError) as info:
        hdf5.read_solverstate(p)
    msg = str(info.value)
    assert "x.solverstate.h5" in msg, msg
    for w in words:
        assert w in msg, (name, msg)


@pytest.mark.parametrize("build,words", [
    (lambda f: f.create_dataset("data", data=np.array([b"x"] * 4)),
     ["'/data'", "expected numbers"]),
    (lambda f: f.create_group("data"), ["'/data' is a group"]),
], ids=["strings", "group"])
def test_hdf5_source_layout(build, words, tmp_path):
    h5 = str(tmp_path / "d.h5")
    with h5py.File(h5, "w") as f:
        build(f)
        f.create_dataset("label", data=np.zeros(4, "f4"))
    with pytest.raises(DataError) as info:
        hdf5_data_net(tmp_path, h5_source(tmp_path, h5))
    for w in ["d.h5"] + words:
        assert w in str(info.value), str(info.value)


# -- truncated and random binary files ----------------------------------------


def _lenet_solver_files(tmp_path):
    """(caffemodel, solverstate, mean, h5 weights, h5 state) written by
    protonet itself, to be damaged by the tests."""
    net = lenet()
    net.copy_from(LENET_WEIGHTS)
    h5w = str(tmp_path / "good.caffemodel.h5")
    net.save_hdf5(h5w)
    mean = str(tmp_path / "good.binaryproto")
    io.write_binaryproto(mean, np.ones((1, 3, 8, 8), np.float32))
    st = caffe_pb2.SolverState(iter=3, current_step=1)
    io.array_to_blob(np.ones((50, 20), np.float32), st.history.add())
    state = str(tmp_path / "good.solverstate")
    io.write_binary(state, st)
    h5s = str(tmp_path / "good.solverstate.h5")
    hdf5.write_solverstate(h5s, 3, "", 1, [np.ones(1000, "f4")])
    return {"caffemodel": LENET_WEIGHTS, "binaryproto": mean,
            "solverstate": state, "h5_weights": h5w, "h5_solverstate": h5s}


BINARY_READERS = {
    "caffemodel": ("bad.caffemodel", lambda p: lenet().copy_from(p)),
    "binaryproto": ("bad.binaryproto", io.read_binaryproto),
    "solverstate": ("bad.solverstate", io.read_solverstate),
    "h5_weights": ("bad.caffemodel.h5", lambda p: lenet().copy_from(p)),
    "h5_solverstate": ("bad.solverstate.h5", hdf5.read_solverstate),
}
DAMAGE = {
    "truncated": lambda data, rng: data[: len(data) // 2],
    "header_only": lambda data, rng: data[:40],
    "random": lambda data, rng: rng.bytes(4096),
    "random_tail": lambda data, rng: data[:64] + rng.bytes(len(data) - 64),
}
BINARY_CASES = [(k, d) for k in BINARY_READERS for d in DAMAGE]


@pytest.mark.parametrize("kind,damage", BINARY_CASES,
                         ids=[f"{k}-{d}" for k, d in BINARY_CASES])
def test_damaged_binary_file(kind, damage, tmp_path):
    good = _lenet_solver_files(tmp_path)[kind]
    name, read = BINARY_READERS[kind]
    data = DAMAGE[damage](open(good, "rb").read(),
                          np.random.default_rng(len(name)))
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ProtonetError) as info:
        read(str(p))
    assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("field", ["iter", "current_step"])
def test_solverstate_negative_counts(field, tmp_path):
    st = caffe_pb2.SolverState(iter=3)
    setattr(st, field, -1000000)
    p = str(tmp_path / "x.solverstate")
    io.write_binary(p, st)
    with pytest.raises(ParseError, match=f"x.solverstate: '{field}' is "
                       "-1000000, expected >= 0"):
        io.read_solverstate(p)


def test_mean_file_with_nan(tmp_path):
    p = str(tmp_path / "mean.binaryproto")
    arr = np.ones((1, 3, 4, 4), np.float32)
    arr[0, 1, 2, 3] = np.nan
    io.write_binaryproto(p, arr)
    with pytest.raises(ParseError, match="mean.binaryproto.*non-finite.*"
                       "index 27"):
        mean_transformer(p)


# -- sidecars -------------------------------------------------------------------

SOLVER_NET = """
name: "h5ls"
layer { name: "data" type: "HDF5Data" top: "x" top: "y"
  hdf5_data_param { source: "%s" batch_size: 4 shuffle: true } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    d = tmp_path_factory.mktemp("snap")
    rng = np.random.default_rng(0)
    h5 = h5_file(d / "d.h5", x=rng.normal(size=(10, 3)).astype("f4"),
                 y=rng.normal(size=(10, 2)).astype("f4"))
    src = write_text(d / "list.txt", h5 + "\n")
    text = (f'net_param {{ {SOLVER_NET % src} }}\nbase_lr: 0.1\n'
            f'lr_policy: "fixed"\nmax_iter: 2\nsnapshot: 2\nrandom_seed: 1\n'
            f'snapshot_prefix: "{d / "snap"}"\n')
    write_text(d / "solver.prototxt", text)
    protonet.get_solver(str(d / "solver.prototxt")).solve()
    state = str(d / "snap_iter_2.solverstate")
    assert os.path.exists(state + ".protonet.json")
    return d, state


def _restore_with_sidecar(snapshot, tmp_path, content):
    d, state = snapshot
    for f in os.listdir(d):
        if f.startswith("snap_iter_2"):
            shutil.copy(d / f, tmp_path / f)
    mine = str(tmp_path / os.path.basename(state))
    side = mine + ".protonet.json"
    if isinstance(content, bytes):
        open(side, "wb").write(content)
    else:
        open(side, "w").write(json.dumps(content) if not isinstance(
            content, str) else content)
    solver = protonet.get_solver(str(d / "solver.prototxt"))
    solver.restore(mine)
    return solver


def _good_side(snapshot):
    return json.load(open(snapshot[1] + ".protonet.json"))


def _edit(path, value):
    def make(good):
        node = good
        for k in path[:-1]:
            node = node[k]
        if value is _DEL:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return good
    return make


_DEL = object()

SIDECAR_CASES = [
    ("empty_object", lambda g: {}, ["'format'", "missing"]),
    ("list", lambda g: [], ["top level"]),
    ("number", lambda g: 3, ["top level"]),
    ("deep_nesting", lambda g: "[" * 100000 + "]" * 100000, ["nested"]),
    ("deep_but_parsable", lambda g: "[" * 50 + "]" * 50, ["top level"]),
    ("not_json", lambda g: "{'format': 1}", ["not valid JSON"]),
    ("bad_utf8", lambda g: b'{"format": "\xff"}', ["UTF-8"]),
    ("format_string", _edit(["format"], "1"), ["'format'", "integer"]),
    ("format_2", _edit(["format"], 2), ["'format'", "unknown"]),
    ("iter_negative", _edit(["iter"], -5), ["'iter'", ">= 0"]),
    ("rng_missing", _edit(["rng"], _DEL), ["'rng'", "missing"]),
    ("rng_number", _edit(["rng"], 5), ["'rng'", "generator state"]),
    ("rng_wrong_generator", _edit(["rng", "bit_generator"], "MT19937x"),
     ["'rng'"]),
    ("rng_state_garbage", _edit(["rng", "state"], "abc"), ["'rng'"]),
    ("data_list", _edit(["data"], []), ["'data'"]),
    ("net_states_list", _edit(["data", "train"], [1]), ["'data.train'"]),
    ("layer_state_number", _edit(["data", "train", "data"], 7),
     ["'data.train.data'", "reader state"]),
    ("layer_state_empty", _edit(["data", "train", "data"], {}),
     ["'data.train.data'", "file_permutation"]),
    ("current_file_out_of_range", _edit(["data", "train", "data",
                                         "current_file"], 9),
     ["'data.train.data'", "current_file", "[0, 1)"]),
    ("current_row_string", _edit(["data", "train", "data", "current_row"],
                                 "3"), ["'data.train.data'", "current_row"]),
    ("row_permutation_out_of_range", _edit(["data", "train", "data",
                                            "data_permutation"],
                                           [0, 1, 2, 3, 4, 5, 6, 7, 8, 99]),
     ["'data.train.data'", "permutation"]),
    ("row_permutation_too_short", _edit(["data", "train", "data",
                                         "data_permutation"], [0, 1]),
     ["'data.train.data'", "lists 2 entries"]),
]


@pytest.mark.parametrize("case", SIDECAR_CASES,
                         ids=[c[0] for c in SIDECAR_CASES])
def test_bad_sidecar(case, snapshot, tmp_path):
    name, make, words = case
    with pytest.raises(SolverError) as info:
        _restore_with_sidecar(snapshot, tmp_path, make(_good_side(snapshot)))
    msg = str(info.value)
    assert "snap_iter_2.solverstate.protonet.json" in msg, msg
    for w in words:
        assert w in msg, (name, msg)


def test_good_sidecar_still_restores(snapshot, tmp_path):
    solver = _restore_with_sidecar(snapshot, tmp_path, _good_side(snapshot))
    assert solver.iter == 2


def test_sidecar_fifo(snapshot, tmp_path):
    d, state = snapshot
    for f in os.listdir(d):
        if f.startswith("snap_iter_2") and not f.endswith(".json"):
            shutil.copy(d / f, tmp_path / f)
    mine = str(tmp_path / os.path.basename(state))
    with fifo(mine + ".protonet.json"):
        solver = protonet.get_solver(str(d / "solver.prototxt"))
        with pytest.raises(SolverError, match="protonet.json: is a FIFO"):
            solver.restore(mine)


# -- HDF5Output never destroys a file it did not write -------------------------

H5OUT_NET = """
layer { name: "d" type: "DummyData" top: "a" top: "b"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "out" type: "HDF5Output" bottom: "a" bottom: "b"
  hdf5_output_param { file_name: "%s" } }
"""


def test_building_a_net_leaves_the_output_file_alone(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("do not lose me")
    net_file = write_text(tmp_path / "n.prototxt", H5OUT_NET % victim)
    protonet.Net(net_file, phase=protonet.TEST)
    from protonet import cli
    assert cli.main(["summary", net_file]) == 0
    assert victim.read_text() == "do not lose me"


def test_hdf5_output_refuses_a_foreign_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PROTONET_HDF5_OUTPUT_OVERWRITE", raising=False)
    victim = tmp_path / "precious.txt"
    victim.write_text("do not lose me")
    net = protonet.Net(write_text(tmp_path / "n.prototxt", H5OUT_NET % victim),
                       phase=protonet.TEST)
    with pytest.raises(DataError) as info:
        net.forward()
    msg = str(info.value)
    assert "HDF5Output layer 'out'" in msg and "precious.txt" in msg, msg
    assert "PROTONET_HDF5_OUTPUT_OVERWRITE" in msg
    assert victim.read_text() == "do not lose me"
    # another program's HDF5 file is foreign too
    other = h5_file(tmp_path / "other.h5", x=np.zeros(3))
    net = protonet.Net(write_text(tmp_path / "m.prototxt", H5OUT_NET % other),
                       phase=protonet.TEST)
    with pytest.raises(DataError, match="did not write"):
        net.forward()


def test_hdf5_output_rewrites_its_own_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PROTONET_HDF5_OUTPUT_OVERWRITE", raising=False)
    out = tmp_path / "out.h5"
    net_file = write_text(tmp_path / "n.prototxt", H5OUT_NET % out)
    for _ in range(2):      # a second net (a second run) may replace it
        net = protonet.Net(net_file, phase=protonet.TEST)
        net.forward()
        net.forward()
    with h5py.File(out) as f:
        assert f["data"].shape == (2, 3, 1, 1)


def test_hdf5_output_overwrite_switch(tmp_path, monkeypatch):
    victim = tmp_path / "old.txt"
    victim.write_text("replace me")
    net = protonet.Net(write_text(tmp_path / "n.prototxt", H5OUT_NET % victim),
                       phase=protonet.TEST)
    monkeypatch.setenv("PROTONET_HDF5_OUTPUT_OVERWRITE", "1")
    net.forward()
    with h5py.File(victim) as f:
        assert f["label"].shape == (2, 1, 1, 1)
    monkeypatch.setenv("PROTONET_HDF5_OUTPUT_OVERWRITE", "maybe")
    net = protonet.Net(write_text(tmp_path / "m.prototxt",
                                  H5OUT_NET % (tmp_path / "x.txt")),
                       phase=protonet.TEST)
    (tmp_path / "x.txt").write_text("x")
    # Parsed like every PROTONET_* switch (protonet.envvars.flag).
    with pytest.raises(ProtonetError,
                       match="PROTONET_HDF5_OUTPUT_OVERWRITE='maybe'"):
        net.forward()


# -- shape products from user values ------------------------------------------


def test_reshape_product_is_not_wrapped(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { '
            'shape { dim: 2 dim: 6 } } }\nlayer { name: "r" type: "Reshape" '
            'bottom: "data" top: "r" reshape_param { shape { '
            'dim: 4294967296 dim: 4294967296 } } }')
    with pytest.raises(LayerError) as info:
        protonet.Net(write_text(tmp_path / "n.prototxt", text),
                     phase=protonet.TEST)
    assert str(2 ** 64) in str(info.value), str(info.value)


def test_reshape_inferred_axis_product_is_not_wrapped(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { '
            'shape { dim: 2 dim: 6 } } }\nlayer { name: "r" type: "Reshape" '
            'bottom: "data" top: "r" reshape_param { shape { '
            'dim: 4294967296 dim: 4294967296 dim: -1 } } }')
    with pytest.raises(LayerError) as info:
        protonet.Net(write_text(tmp_path / "n.prototxt", text),
                     phase=protonet.TEST)
    assert str(2 ** 64) in str(info.value), str(info.value)


CATALOGUE = {
    "special files (per entry point x kind)": len(SPECIAL_CASES) + 2,
    "memory expansion": 12,
    "list files (UTF-8)": 2,
    "HDF5 weights layout": len(H5_WEIGHT_CASES),
    "HDF5 solverstate layout": len(H5_STATE_CASES),
    "HDF5 source layout": 2,
    "damaged binary files": len(BINARY_CASES) + 3,
    "sidecars": len(SIDECAR_CASES) + 1,
    "HDF5Output": 4,
    "shape products": 2,
}


def test_catalogue_size():
    assert sum(CATALOGUE.values()) >= 100
