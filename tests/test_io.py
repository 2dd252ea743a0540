"""protonet.io: Caffe's binary files round-trip exactly; every bad file gives a
ParseError that names it."""

import glob
import json
import os

import numpy as np
import pytest

from isolated import run_isolated
from protonet import io
from protonet.errors import ParseError
from protonet.proto import caffe_pb2

REF = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref")
CAFFEMODELS = sorted(glob.glob(os.path.join(REF, "**", "*.caffemodel"),
                               recursive=True))
SOLVERSTATES = sorted(glob.glob(os.path.join(REF, "train", "*",
                                             "*.solverstate")))
LENET = os.path.join(os.path.dirname(__file__), "fixtures", "corpus",
                     "BVLC__caffe", "examples", "mnist", "lenet.prototxt")
SOLVER = os.path.join(os.path.dirname(__file__), "fixtures", "corpus",
                      "BVLC__caffe", "examples", "mnist", "lenet_solver.prototxt")


def _rel(path):
    return os.path.relpath(path, REF)


@pytest.mark.parametrize("path", CAFFEMODELS, ids=_rel)
def test_caffemodel_loads_and_reserialises_byte_identically(path):
    with open(path, "rb") as f:
        data = f.read()
    net = io.read_caffemodel(path)
    assert net.layer
    raw = caffe_pb2.NetParameter()
    raw.ParseFromString(data)
    assert raw.SerializeToString() == data
    # Every blob converts to an array of its declared shape.
    for layer in net.layer:
        for k, blob in enumerate(layer.blobs):
            arr = io.blob_to_array(blob, path, f"{layer.name} {k}")
            assert arr.shape == io.blob_shape(blob) and arr.dtype == np.float32


def _cases_with_params():
    for meta_path in sorted(glob.glob(os.path.join(REF, "*", "*", "meta.json"))):
        meta = json.load(open(meta_path))
        folder = os.path.dirname(meta_path)
        if meta.get("params") and all(os.path.exists(os.path.join(
                folder, f)) for f in ("weights.caffemodel", "case.npz")):
            yield folder


@pytest.mark.parametrize("folder", list(_cases_with_params()), ids=_rel)
def test_caffemodel_blobs_equal_case_params(folder):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    case = np.load(os.path.join(folder, "case.npz"))
    net = io.read_caffemodel(os.path.join(folder, "weights.caffemodel"))
    layers = {l.name: l for l in net.layer}
    for p in meta["params"]:
        blob = layers[p["layer"]].blobs[p["index"]]
        np.testing.assert_array_equal(io.blob_to_array(blob), case[p["key"]])


@pytest.mark.parametrize("path", SOLVERSTATES, ids=_rel)
def test_solverstate_loads(path):
    state = io.read_solverstate(path)
    assert state.iter == 40
    assert state.learned_net.endswith(".caffemodel")
    assert all(io.blob_to_array(h).size > 0 for h in state.history) or \
        not state.history
    with open(path, "rb") as f:
        assert state.SerializeToString() == f.read()


def test_binaryproto_round_trip(tmp_path):
    mean = np.random.default_rng(0).random((1, 3, 4, 5), dtype=np.float32)
    path = tmp_path / "mean.binaryproto"
    io.write_binaryproto(path, mean)
    blob = caffe_pb2.BlobProto.FromString(path.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    np.testing.assert_array_equal(io.read_binaryproto(path), mean)


def test_blob_conversion_round_trip_and_diff():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((4, 3, 2), dtype=np.float32)
    diff = rng.standard_normal((4, 3, 2), dtype=np.float32)
    blob = io.array_to_blob(data, diff=diff)
    assert list(blob.shape.dim) == [4, 3, 2]
    np.testing.assert_array_equal(io.blob_to_array(blob), data)
    np.testing.assert_array_equal(io.blob_diff_to_array(blob), diff)
    # Same bytes as protobuf's own repeated-field path.
    ref = caffe_pb2.BlobProto()
    ref.shape.dim.extend([4, 3, 2])
    ref.data.extend(data.ravel().tolist())
    ref.diff.extend(diff.ravel().tolist())
    assert blob.SerializeToString() == ref.SerializeToString()
    empty = io.array_to_blob(np.zeros((0,), np.float32))
    assert io.blob_to_array(empty).shape == (0,)


def test_blob_count_mismatch_is_reported():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    with pytest.raises(ParseError, match=r"shape \(2, 3\) \(6 values\) but "
                                         r"holds 5"):
        io.blob_to_array(blob, "w.caffemodel", "blob")


def test_large_blob_conversion_is_fast():
    import time
    arr = np.arange(20_000_000, dtype=np.float32)
    t0 = time.perf_counter()
    blob = io.array_to_blob(arr)
    back = io.blob_to_array(blob)
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(back, arr)
    assert elapsed < 3.0, f"20M floats took {elapsed:.1f} s to convert"


def write_and_parse_600mb_caffemodel(folder):
    n = 160_000_000  # 640 MB of float32
    net = caffe_pb2.NetParameter(name="big")
    layer = net.layer.add(name="fc", type="InnerProduct")
    io.array_to_blob(np.full(n, 0.5, np.float32), layer.blobs.add())
    path = os.path.join(folder, "big.caffemodel")
    io.write_caffemodel(path, net)
    del net, layer
    assert os.path.getsize(path) > 600e6
    loaded = io.read_caffemodel(path)
    arr = io.blob_to_array(loaded.layer[0].blobs[0])
    assert arr.shape == (n,) and arr[0] == arr[-1] == 0.5


@pytest.mark.slow
def test_caffemodel_over_600mb_parses(tmp_path):
    # 2.5 GB at its peak (the message and its bytes): in a child process.
    run_isolated("test_io", "write_and_parse_600mb_caffemodel", str(tmp_path))


# ---------------------------------------------------------------------------
# Bad files


@pytest.fixture
def lenet_model(tmp_path):
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct")
    io.array_to_blob(np.ones((10, 20), np.float32), layer.blobs.add())
    path = tmp_path / "m.caffemodel"
    io.write_caffemodel(path, net)
    return path


def test_truncated_caffemodel(lenet_model, tmp_path):
    bad = tmp_path / "cut.caffemodel"
    bad.write_bytes(lenet_model.read_bytes()[:-37])
    with pytest.raises(ParseError, match="truncated") as err:
        io.read_caffemodel(bad)
    assert str(bad) in str(err.value)


def test_corrupted_caffemodel(lenet_model, tmp_path):
    data = bytearray(lenet_model.read_bytes())
    data[0] = 0xFF  # an invalid tag
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(bytes(data))
    with pytest.raises(ParseError) as err:
        io.read_caffemodel(bad)
    assert str(bad) in str(err.value)


def test_empty_caffemodel(tmp_path):
    bad = tmp_path / "empty.caffemodel"
    bad.write_bytes(b"")
    with pytest.raises(ParseError, match="empty file") as err:
        io.read_caffemodel(bad)
    assert str(bad) in str(err.value)


def test_png_given_as_caffemodel(tmp_path):
    from PIL import Image
    bad = tmp_path / "cat.caffemodel"
    Image.new("RGB", (4, 4)).save(bad, format="PNG")
    with pytest.raises(ParseError, match="PNG image") as err:
        io.read_caffemodel(bad)
    assert str(bad) in str(err.value)


def test_prototxt_given_as_caffemodel():
    with pytest.raises(ParseError, match=r"text file \(a \.prototxt\?\)"):
        io.read_caffemodel(LENET)


def test_solverstate_given_as_caffemodel():
    with pytest.raises(ParseError, match="solverstate"):
        io.read_caffemodel(SOLVERSTATES[0])


def test_caffemodel_given_as_solverstate():
    with pytest.raises(ParseError, match="not a .solverstate"):
        io.read_solverstate(CAFFEMODELS[0])


def test_caffemodel_given_as_prototxt():
    with pytest.raises(ParseError, match="not a text file") as err:
        io.read_net(CAFFEMODELS[0])
    assert CAFFEMODELS[0] in str(err.value)


def test_solver_given_as_net():
    with pytest.raises(ParseError, match="this is a solver definition, "
                                         "expected a net") as err:
        io.read_net(SOLVER)
    assert SOLVER in str(err.value)


def test_net_given_as_solver():
    with pytest.raises(ParseError, match="this is a net definition, "
                                         "expected a solver"):
        io.read_solver(LENET)


def test_unknown_field_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n'
                    '  relu_parm { negative_slope: 0.1 }\n}\n')
    with pytest.raises(ParseError) as err:
        io.read_net(path)
    assert (err.value.line, err.value.column) == (5, 3)
    assert str(err.value).startswith(f"{path}:5:3: ")
    assert "relu_parm" in str(err.value)


def test_missing_file():
    with pytest.raises(ParseError, match="file not found"):
        io.read_net("/nonexistent/net.prototxt")


def test_text_only_fields_never_reach_binary_files(tmp_path):
    net = io.parse_net_text(
        'layer { name: "i" type: "Interp" bottom: "a" top: "b" '
        'interp_param { height: 5 width: 7 } '
        'loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 4 } }')
    assert net.layer[0].interp_param.height == 5  # kept for the layer
    path = tmp_path / "m.caffemodel"
    io.write_caffemodel(path, net)
    assert net.layer[0].HasField("interp_param")  # caller's copy untouched
    back = caffe_pb2.NetParameter.FromString(path.read_bytes())
    layer = back.layer[0]
    assert not layer.HasField("interp_param")
    assert not layer.loss_param.HasField("normalization")
    assert not layer.loss_param.HasField("pre_fixed_normalizer")
    assert layer.name == "i" and layer.type == "Interp"
