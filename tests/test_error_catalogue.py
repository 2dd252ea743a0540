"""The error catalogue: every user-caused failure raises a ProtonetError
subclass whose message names the file, position, layer or field.

Each case is one malformed input: (id, loader, input, error class, words the
message must contain).  A raw ValueError / IndexError / KeyError /
DecodeError / numpy error escaping from any of them is a bug.
"""

import os
import shutil

import numpy as np
import pytest

import protonet
from protonet import io
from protonet.errors import (LayerError, NetError, ParseError, ProtonetError,
                             ResourceError, SolverError, UnsupportedError,
                             WeightsError)
from protonet.proto import caffe_pb2

REF = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref")
LENET_DIR = os.path.join(REF, "nets", "lenet")
LENET_WEIGHTS = os.path.join(LENET_DIR, "weights.caffemodel")
CIFAR_WEIGHTS = os.path.join(REF, "nets", "cifar10_quick", "weights.caffemodel")

INPUT = 'layer { name: "data" type: "Input" top: "data" ' \
        'input_param { shape { dim: %s } } }\n'


def inp(*dims):
    return INPUT % " dim: ".join(str(d) for d in dims)


def layer(type_, params="", bottom="data", top="out", name="L"):
    bottoms = "".join(f'bottom: "{b}" ' for b in bottom.split()) if bottom else ""
    tops = "".join(f'top: "{t}" ' for t in top.split()) if top else ""
    return f'layer {{ name: "{name}" type: "{type_}" {bottoms}{tops}{params} }}\n'


IP_W = "inner_product_param { num_output: %d }"
CONV = "convolution_param { num_output: %d kernel_size: %d stride: %d }"

# (id, net text, error class, words)
NET_CASES = [
    # -- text syntax ------------------------------------------------------
    ("missing_brace", 'layer { name: "a" type: "Input"', ParseError,
     ["net.prototxt:1"]),
    ("unknown_field", 'layer { name: "a" tpye: "Input" }', ParseError,
     ["net.prototxt:1", "tpye"]),
    ("unknown_top_field", 'nmae: "x"', ParseError, ["nmae"]),
    ("string_for_int", inp(1, 2) + layer("InnerProduct",
                                         'inner_product_param { num_output: "ten" }'),
     ParseError, ["net.prototxt:2"]),
    ("float_for_int", inp(1, 2) + layer("InnerProduct",
                                        "inner_product_param { num_output: 1.5 }"),
     ParseError, ["net.prototxt:2"]),
    ("negative_uint", inp(1, 2) + layer("InnerProduct",
                                        "inner_product_param { num_output: -3 }"),
     ParseError, ["net.prototxt:2"]),
    ("bad_enum", inp(1, 1, 4, 4) + layer("Pooling", "pooling_param { pool: MEDIAN }"),
     ParseError, ["MEDIAN"]),
    ("unterminated_string", 'name: "abc', ParseError, ["net.prototxt:1"]),
    ("placeholder", inp(1, 2) + layer("InnerProduct",
                                      "inner_product_param { num_output: $N }"),
     ParseError, ["placeholder"]),
    ("solver_given_as_net", "base_lr: 0.01\nmax_iter: 10\n", ParseError,
     ["solver definition"]),
    ("deep_nesting", "layer { " * 500 + "}" * 500, ParseError, ["net.prototxt"]),
    ("wrong_message_for_field", 'layer { name: "a" input_param: 3 }', ParseError,
     ["net.prototxt:1"]),
    # -- graph structure --------------------------------------------------
    ("unknown_type", inp(1, 2) + layer("Convolutionn"), LayerError,
     ["Convolutionn", "known types"]),
    ("dangling_bottom", inp(1, 2) + layer("ReLU", bottom="nothere"), NetError,
     ["nothere", "L"]),
    ("duplicate_top", inp(1, 2) + layer("ReLU", top="x", name="a")
     + layer("Sigmoid", top="x", name="b"), NetError, ["'x'", "more than one"]),
    ("include_and_exclude", inp(1, 2) + layer(
        "ReLU", "include { phase: TEST } exclude { phase: TRAIN }"), NetError,
     ["include", "exclude"]),
    ("propagate_down_count", inp(1, 2) + layer(
        "ReLU", "propagate_down: true propagate_down: false"), NetError,
     ["propagate_down"]),
    ("too_many_param_specs", inp(1, 2) + layer(
        "ReLU", "param { lr_mult: 1 }"), NetError, ["param specs"]),
    ("too_few_bottoms", inp(1, 2) + layer("Eltwise", top="e"), LayerError,
     ["Eltwise", "bottom"]),
    ("too_many_tops", inp(1, 2) + layer("ReLU", top="a b"), LayerError,
     ["ReLU layer 'L'", "top"]),
    ("loss_weight_count", inp(1, 2) + layer("ReLU", "loss_weight: 1 loss_weight: 2"),
     LayerError, ["loss_weight"]),
    ("shared_param_shape", inp(1, 2) + layer(
        "InnerProduct", 'param { name: "w" } ' + IP_W % 3, name="a", top="a")
     + layer("InnerProduct", 'param { name: "w" } ' + IP_W % 4, bottom="a",
             name="b", top="b"), NetError, ["'w'", "shape mismatch"]),
    # -- impossible shapes ------------------------------------------------
    ("conv_kernel_too_big", inp(1, 1, 3, 3) + layer("Convolution", CONV % (2, 5, 1)),
     LayerError, ["Convolution layer 'L'"]),
    ("conv_stride_zero", inp(1, 1, 5, 5) + layer("Convolution", CONV % (2, 3, 0)),
     LayerError, ["stride"]),
    ("conv_num_output_zero", inp(1, 1, 5, 5) + layer("Convolution", CONV % (0, 3, 1)),
     LayerError, ["num_output"]),
    ("conv_kernel_zero", inp(1, 1, 5, 5) + layer("Convolution", CONV % (2, 0, 1)),
     LayerError, ["kernel"]),
    ("conv_no_kernel", inp(1, 1, 5, 5) + layer(
        "Convolution", "convolution_param { num_output: 2 }"), LayerError,
     ["kernel"]),
    ("conv_group_mismatch", inp(1, 3, 5, 5) + layer(
        "Convolution", "convolution_param { num_output: 4 kernel_size: 1 group: 2 }"),
     LayerError, ["group"]),
    ("conv_2d_bottom", inp(2, 3) + layer("Convolution", CONV % (2, 1, 1)),
     LayerError, ["Convolution layer 'L'"]),
    ("ip_num_output_zero", inp(1, 4) + layer("InnerProduct", IP_W % 0), LayerError,
     ["num_output"]),
    ("ip_no_num_output", inp(1, 4) + layer("InnerProduct", "inner_product_param {}"),
     LayerError, ["num_output"]),
    ("ip_axis_out_of_range", inp(1, 4) + layer(
        "InnerProduct", "inner_product_param { num_output: 2 axis: 5 }"),
     LayerError, ["axis"]),
    ("pool_kernel_zero", inp(1, 1, 4, 4) + layer(
        "Pooling", "pooling_param { kernel_size: 0 }"), LayerError, ["kernel"]),
    ("pool_stride_zero", inp(1, 1, 4, 4) + layer(
        "Pooling", "pooling_param { kernel_size: 2 stride: 0 }"), LayerError,
     ["stride"]),
    ("pool_pad_ge_kernel", inp(1, 1, 4, 4) + layer(
        "Pooling", "pooling_param { kernel_size: 2 pad: 2 }"), LayerError,
     ["pad"]),
    ("negative_input_dim", inp(1, -3), ProtonetError, ["-3"]),
    ("concat_mismatch", inp(1, 2) + layer("Input", "input_param { shape { dim: 2 "
                                          "dim: 3 } }", bottom="", top="b", name="b")
     + layer("Concat", "concat_param { axis: 1 }", bottom="data b"), LayerError,
     ["Concat layer 'L'"]),
    ("eltwise_mismatch", inp(1, 2) + layer("Input", "input_param { shape { dim: 1 "
                                           "dim: 3 } }", bottom="", top="b", name="b")
     + layer("Eltwise", bottom="data b"), LayerError, ["Eltwise layer 'L'"]),
    ("reshape_two_inferred", inp(2, 6) + layer(
        "Reshape", "reshape_param { shape { dim: -1 dim: -1 } }"), LayerError,
     ["Reshape layer 'L'"]),
    ("reshape_count_mismatch", inp(2, 6) + layer(
        "Reshape", "reshape_param { shape { dim: 5 dim: 5 } }"), LayerError,
     ["Reshape layer 'L'"]),
    ("slice_bad_point", inp(2, 6) + layer(
        "Slice", "slice_param { axis: 1 slice_point: 9 }", top="a b"), LayerError,
     ["Slice layer 'L'"]),
    ("softmax_loss_label_count", inp(4, 3) + layer(
        "Input", "input_param { shape { dim: 5 } }", bottom="", top="lbl",
        name="lbl") + layer("SoftmaxWithLoss", bottom="data lbl"), LayerError,
     ["SoftmaxWithLoss layer 'L'"]),
    ("lrn_even_size", inp(1, 4, 3, 3) + layer("LRN", "lrn_param { local_size: 4 }"),
     LayerError, ["local_size"]),
    ("dummy_zero_fill", layer("DummyData", "dummy_data_param { shape { dim: 2 } "
                              "shape { dim: 3 } data_filler { } data_filler { } "
                              "data_filler { } }", bottom="", top="a b"),
     LayerError, ["DummyData layer 'L'"]),
    ("huge_input", inp(1000000000, 1000000000), ResourceError,
     ["memory", "data"]),
    ("huge_dummy", layer("DummyData", "dummy_data_param { shape { dim: 100000 "
                         "dim: 100000 dim: 1000 } }", bottom="", top="d"),
     ResourceError, ["memory", "'L'"]),
    ("huge_ip_weights", inp(1, 100000) + layer("InnerProduct", IP_W % 10000000),
     ResourceError, ["memory", "'L'"]),
    ("huge_tile", inp(10, 10) + layer("Tile", "tile_param { axis: 1 tiles: "
                                       "2000000000 }"), ResourceError,
     ["memory", "'L'"]),
    ("unsupported_engine", inp(1, 2) + layer("ReLU", "relu_param { engine: CUDNN }"),
     None, None),
]


@pytest.mark.parametrize("case", NET_CASES, ids=[c[0] for c in NET_CASES])
def test_bad_net_raises_protonet_error(case, tmp_path):
    name, text, cls, words = case
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    if cls is None:         # accepted: Caffe ignores the engine on the CPU
        protonet.Net(str(path), phase=protonet.TEST)
        return
    with pytest.raises(cls) as info:
        protonet.Net(str(path), phase=protonet.TEST)
    msg = str(info.value)
    for w in words:
        assert w in msg, (name, msg)


# -- weights ----------------------------------------------------------------


def _lenet(tmp_path):
    return protonet.Net(os.path.join(LENET_DIR, "net.prototxt"), phase=protonet.TEST)


def _mutate(tmp_path, data, name="w.caffemodel"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def _good_bytes():
    with open(LENET_WEIGHTS, "rb") as f:
        return f.read()


def _blob_claiming(shape, values):
    net = caffe_pb2.NetParameter()
    lp = net.layer.add(name="conv1", type="Convolution")
    b = lp.blobs.add()
    b.shape.dim.extend(shape)
    b.data.extend(values)
    lp.blobs.add().data.extend([0.0] * 20)
    return net.SerializeToString()


WEIGHT_CASES = [
    ("empty", lambda: b"", ParseError, ["empty"]),
    ("truncated", lambda: _good_bytes()[:1000], ParseError, ["w.caffemodel"]),
    ("truncated_half", lambda: _good_bytes()[: len(_good_bytes()) // 2],
     ParseError, ["w.caffemodel"]),
    ("garbage", lambda: bytes(range(256)) * 8, ParseError, ["w.caffemodel"]),
    ("png", lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 64, ParseError, ["PNG"]),
    ("text", lambda: b'name: "x"\n', ParseError, ["text file"]),
    ("zip", lambda: b"PK\x03\x04" + b"\0" * 64, ParseError, ["zip"]),
    ("flipped_bytes", lambda: bytes(b ^ 0xFF for b in _good_bytes()[:4096]),
     ParseError, ["w.caffemodel"]),
    ("other_net", lambda: open(CIFAR_WEIGHTS, "rb").read(), WeightsError,
     ["w.caffemodel", "conv1"]),
    ("count_mismatch", lambda: _blob_claiming([20, 1, 5, 5], [0.0] * 7),
     ParseError, ["conv1", "declares shape"]),
    ("huge_claim", lambda: _blob_claiming([100000, 100000, 1000, 1000], [0.0]),
     WeightsError, ["conv1"]),
    ("blob_count", lambda: caffe_pb2.NetParameter(layer=[caffe_pb2.LayerParameter(
        name="ip1", blobs=[caffe_pb2.BlobProto()])]).SerializeToString(),
     WeightsError, ["ip1", "parameter blob"]),
]


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_bad_caffemodel_raises_protonet_error(case, tmp_path):
    name, make, cls, words = case
    path = _mutate(tmp_path, make())
    net = _lenet(tmp_path)
    with pytest.raises(cls) as info:
        net.copy_from(path)
    for w in words:
        assert w in str(info.value), (name, str(info.value))


def test_huge_blob_claim_checked_before_allocating(tmp_path):
    """A blob that declares 1e16 values but carries 1 is refused from the
    declared shape without building an array."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([100000] * 4)
    blob.data.append(1.0)
    with pytest.raises(ParseError, match="declares shape"):
        io.blob_to_array(blob, "x.caffemodel", "layer 'a' param 0")


def test_binaryproto_and_solverstate_bad_files(tmp_path):
    p = _mutate(tmp_path, b"\x0a\x05\x08", "mean.binaryproto")
    with pytest.raises(ParseError, match="mean.binaryproto"):
        io.read_binaryproto(p)
    p = _mutate(tmp_path, _good_bytes(), "x.solverstate")
    with pytest.raises(ParseError, match="x.solverstate"):
        io.read_solverstate(p)


# -- solvers ----------------------------------------------------------------

NET_TEXT = (layer("DummyData", "dummy_data_param { shape { dim: 2 dim: 3 } "
                  "shape { dim: 2 } }", bottom="", top="data label", name="d")
            + layer("InnerProduct", "inner_product_param { num_output: 2 }",
                    bottom="data", top="ip", name="ip")
            + layer("SoftmaxWithLoss", bottom="ip label", top="loss", name="loss"))

BASE = 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'

SOLVER_CASES = [
    ("unknown_type", BASE + 'type: "Sgdd"\n', SolverError, ["Sgdd"]),
    ("unknown_lr_policy", BASE.replace('"fixed"', '"cosine"'), SolverError,
     ["cosine"]),
    ("missing_lr_policy", BASE.replace('lr_policy: "fixed"\n', ""), SolverError,
     ["lr_policy"]),
    ("missing_net", BASE.replace('net: "net.prototxt"\n', ""), SolverError,
     ["net"]),
    ("net_not_found", BASE.replace("net.prototxt", "nope.prototxt"), SolverError,
     ["nope.prototxt"]),
    ("two_nets", BASE + 'train_net: "net.prototxt"\n', SolverError,
     ["exactly one"]),
    ("test_iter_mismatch", BASE + 'test_net: "net.prototxt"\ntest_net: '
     '"net.prototxt"\ntest_iter: 1\ntest_interval: 1\n', SolverError,
     ["test_iter"]),
    ("test_interval_missing", BASE + "test_iter: 1\n", SolverError,
     ["test_interval"]),
    ("negative_max_iter", BASE.replace("max_iter: 2", "max_iter: -5"),
     SolverError, ["max_iter"]),
    ("negative_snapshot", BASE + "snapshot: -1\n", SolverError, ["snapshot"]),
    ("iter_size_zero", BASE + "iter_size: 0\n", SolverError, ["iter_size"]),
    ("bad_regularization", BASE + 'regularization_type: "L3"\n', SolverError,
     ["L3"]),
    ("step_without_stepsize", BASE.replace('"fixed"', '"step"'), SolverError,
     ["stepsize"]),
    ("syntax", BASE + "momentum 0.9\n", ParseError, ["solver.prototxt:5"]),
    ("net_given_as_solver", NET_TEXT, ParseError, ["net definition"]),
    ("unknown_solver_field", BASE + "learning_rate: 3\n", ParseError,
     ["learning_rate"]),
]


@pytest.mark.parametrize("case", SOLVER_CASES, ids=[c[0] for c in SOLVER_CASES])
def test_bad_solver_raises_protonet_error(case, tmp_path, monkeypatch):
    name, text, cls, words = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET_TEXT)
    (tmp_path / "solver.prototxt").write_text(text)
    with pytest.raises(cls) as info:
        s = protonet.get_solver(str(tmp_path / "solver.prototxt"))
        s.solve()
    for w in words:
        assert w in str(info.value), (name, str(info.value))


def test_catalogue_is_large_enough():
    assert len(NET_CASES) + len(WEIGHT_CASES) + len(SOLVER_CASES) >= 50


# -- upgrade ------------------------------------------------------------------


@pytest.mark.parametrize("text,words", [
    ('layers { name: "c" type: CONVOLUTION bottom: "x" top: "c" }', ["c"]),
    ('layers { name: "a" layer { name: "a" type: "relu" } bottom: "x" top: "x" }',
     []),
])
def test_legacy_files_fail_cleanly(text, words, tmp_path):
    path = tmp_path / "old.prototxt"
    path.write_text(text)
    try:
        protonet.Net(str(path), phase=protonet.TEST)
    except ProtonetError as e:
        for w in words:
            assert w in str(e)
    else:
        pytest.fail("a legacy net with a dangling bottom was accepted")


# -- regressions found by the atheris fuzzer ---------------------------------


def test_invalid_utf8_string_in_caffemodel(tmp_path):
    data = b"\x1a\x0einception_ti\x99\x86"        # NetParameter.input, bad UTF-8
    path = _mutate(tmp_path, data)
    with pytest.raises(ParseError, match="invalid UTF-8"):
        io.read_caffemodel(path)


def test_prior_box_infinite_min_size(tmp_path):
    text = (inp(1, 2, 2, 3) + layer("Input", "input_param { shape { dim: 1 dim: 3 "
                                    "dim: 8 dim: 8 } }", bottom="", top="img",
                                    name="img")
            + layer("PriorBox", "prior_box_param { min_size: inf }",
                    bottom="data img"))
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(LayerError, match="PriorBox layer 'L'.*finite"):
        protonet.Net(str(path), phase=protonet.TEST)
