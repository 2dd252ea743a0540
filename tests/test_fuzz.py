"""Property-based fuzzing (hypothesis): the prototxt parser, the caffemodel
loader, the legacy upgrader and net construction raise nothing but
ProtonetError on any input.  Kept short in the suite; the long,
coverage-guided run is benchmarks/fuzz/fuzz_loaders.py."""

import os
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import protonet  # noqa: E402
from protonet import io, upgrade  # noqa: E402
from protonet.errors import ProtonetError  # noqa: E402

REF = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref")
NET_DIR = os.path.join(REF, "nets", "inception_tiny")
with open(os.path.join(NET_DIR, "weights.caffemodel"), "rb") as _f:
    GOLDEN_WEIGHTS = _f.read()
with open(os.path.join(NET_DIR, "net.prototxt")) as _f:
    GOLDEN_TEXT = _f.read()

FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def _small_memory_limit(monkeypatch):
    monkeypatch.setenv("PROTONET_MAX_MEMORY", "64M")
    warnings.simplefilter("ignore")


def _only_protonet_errors(fn, *args):
    try:
        return fn(*args)
    except ProtonetError:
        return None


# -- prototxt parser ----------------------------------------------------------

TOKENS = st.sampled_from([
    "layer", "layers", "{", "}", ":", '"', "name", "type", "bottom", "top",
    '"Convolution"', "CONVOLUTION", "convolution_param", "num_output", "1",
    "-1", "1e40", "nan", "inf", "0x7fffffff", "input", "input_dim",
    "input_shape", "dim", "#", "\n", " ", "[", "]", ",", "<", ">", "\\",
    "include", "phase", "TRAIN", "blobs", "data", "state", "'", "kernel_size",
    "inner_product_param", "python_param", "layer {", "\x00", "\u00e9"])


@FAST
@given(st.lists(TOKENS, max_size=40).map(" ".join))
def test_prototxt_token_soup(text):
    _only_protonet_errors(io.parse_net_text, text)
    _only_protonet_errors(io.parse_solver_text, text)


@FAST
@given(st.data())
def test_mutated_golden_prototxt(data):
    text = GOLDEN_TEXT
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 20)))
        text = text[:i] + data.draw(st.text(max_size=10)) + text[j:]
    param = _only_protonet_errors(io.parse_net_text, text)
    if param is not None:
        _only_protonet_errors(protonet.Net, param, protonet.TEST)


# -- caffemodel loader --------------------------------------------------------

@pytest.fixture(scope="module")
def golden_net():
    return protonet.Net(os.path.join(NET_DIR, "net.prototxt"), phase=protonet.TEST)


@FAST
@given(data=st.data())
def test_mutated_golden_caffemodel(golden_net, data, tmp_path_factory):
    raw = bytearray(GOLDEN_WEIGHTS)
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif kind == "splice":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(max_size=32))
    else:
        raw = bytearray(data.draw(st.binary(max_size=512)))
    path = tmp_path_factory.mktemp("w") / "w.caffemodel"
    path.write_bytes(bytes(raw))
    _only_protonet_errors(golden_net.copy_from, str(path))
    _only_protonet_errors(io.read_solverstate, str(path))
    _only_protonet_errors(io.read_binaryproto, str(path))


# -- legacy upgrader ----------------------------------------------------------

V1_TYPES = ["CONVOLUTION", "POOLING", "INNER_PRODUCT", "RELU", "DATA", "CONCAT",
            "SOFTMAX_LOSS", "DROPOUT", "LRN", "ELTWISE", "NONE", "PYTHON",
            "IMAGE_DATA", "SPLIT", "ACCURACY"]
V1_EXTRA = ["convolution_param { num_output: 2 kernel_size: 3 }",
            "blobs_lr: 1 blobs_lr: 2 weight_decay: 1",
            "param: \"w\" param: \"b\"",
            "include { phase: TEST }",
            "transform_param { scale: 0.5 } data_param { source: \"x\" }",
            "layer { name: \"old\" type: \"conv\" num_output: 4 kernelsize: 3 }",
            "pooling_param { pool: MAX kernel_size: 2 }",
            "dropout_ratio: 0.5", ""]


@st.composite
def v1_net(draw):
    lines = []
    if draw(st.booleans()):
        lines.append('input: "data" input_dim: 1 input_dim: 2 input_dim: 4 '
                     'input_dim: 4')
    names = ["data"]
    for i in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(V1_TYPES))
        extra = draw(st.sampled_from(V1_EXTRA))
        bottom = draw(st.sampled_from(names + ["missing"]))
        lines.append(f'layers {{ name: "l{i}" type: {kind} bottom: "{bottom}" '
                     f'top: "t{i}" {extra} }}')
        names.append(f"t{i}")
    return "\n".join(lines)


@FAST
@given(v1_net())
def test_legacy_upgrader(text):
    param = _only_protonet_errors(io.parse_net_text, text, None, False)
    if param is None:
        return
    if _only_protonet_errors(upgrade.upgrade_net, param) is not None or True:
        _only_protonet_errors(protonet.Net, param, protonet.TEST)


# -- net construction from generated nets -------------------------------------

SMALL = st.integers(-1, 4)


@st.composite
def layer_spec(draw, i, names):
    bottom = draw(st.sampled_from(names))
    t = f"t{i}"
    kind = draw(st.sampled_from([
        "conv", "deconv", "pool", "ip", "relu", "sigmoid", "softmax", "concat",
        "eltwise", "reshape", "flatten", "slice", "tile", "lrn", "batchnorm",
        "scale", "bias", "dropout", "power", "crop", "reduction", "argmax",
        "mvn", "prelu", "elu", "embed", "spp", "im2col", "permute", "normalize"]))
    n = draw
    p = {
        "conv": f"type: 'Convolution' convolution_param {{ num_output: "
                f"{n(st.integers(0, 3))} kernel_size: {n(st.integers(0, 4))} "
                f"stride: {n(st.integers(0, 2))} pad: {n(st.integers(0, 2))} "
                f"group: {n(st.integers(1, 2))} dilation: {n(st.integers(0, 2))} "
                f"axis: {n(SMALL)} }}",
        "deconv": f"type: 'Deconvolution' convolution_param {{ num_output: "
                  f"{n(st.integers(0, 3))} kernel_size: {n(st.integers(0, 3))} "
                  f"stride: {n(st.integers(0, 2))} }}",
        "pool": f"type: 'Pooling' pooling_param {{ pool: "
                f"{n(st.sampled_from(['MAX', 'AVE', 'STOCHASTIC']))} kernel_size: "
                f"{n(st.integers(0, 4))} stride: {n(st.integers(0, 2))} pad: "
                f"{n(st.integers(0, 2))} global_pooling: "
                f"{n(st.sampled_from(['true', 'false']))} }}",
        "ip": f"type: 'InnerProduct' inner_product_param {{ num_output: "
              f"{n(st.integers(0, 3))} axis: {n(SMALL)} transpose: "
              f"{n(st.sampled_from(['true', 'false']))} }}",
        "relu": "type: 'ReLU'",
        "sigmoid": "type: 'Sigmoid'",
        "softmax": f"type: 'Softmax' softmax_param {{ axis: {n(SMALL)} }}",
        "concat": f"type: 'Concat' bottom: '{n(st.sampled_from(names))}' "
                  f"concat_param {{ axis: {n(SMALL)} }}",
        "eltwise": f"type: 'Eltwise' bottom: '{n(st.sampled_from(names))}' "
                   f"eltwise_param {{ operation: "
                   f"{n(st.sampled_from(['SUM', 'PROD', 'MAX']))} }}",
        "reshape": "type: 'Reshape' reshape_param { shape { "
                   + " ".join(f"dim: {n(st.integers(-2, 4))}"
                              for _ in range(n(st.integers(0, 4))))
                   + f" }} axis: {n(SMALL)} num_axes: {n(st.integers(-2, 2))} }}",
        "flatten": f"type: 'Flatten' flatten_param {{ axis: {n(SMALL)} "
                   f"end_axis: {n(SMALL)} }}",
        "slice": f"type: 'Slice' top: 'u{i}' slice_param {{ axis: {n(SMALL)} "
                 f"slice_point: {n(st.integers(-1, 3))} }}",
        "tile": f"type: 'Tile' tile_param {{ axis: {n(SMALL)} tiles: "
                f"{n(st.integers(-1, 3))} }}",
        "lrn": f"type: 'LRN' lrn_param {{ local_size: {n(st.integers(0, 5))} "
               f"norm_region: {n(st.sampled_from(['ACROSS_CHANNELS', 'WITHIN_CHANNEL']))} }}",
        "batchnorm": "type: 'BatchNorm'",
        "scale": f"type: 'Scale' scale_param {{ axis: {n(SMALL)} num_axes: "
                 f"{n(st.integers(-2, 3))} bias_term: true }}",
        "bias": f"type: 'Bias' bias_param {{ axis: {n(SMALL)} num_axes: "
                f"{n(st.integers(-2, 3))} }}",
        "dropout": f"type: 'Dropout' dropout_param {{ dropout_ratio: "
                   f"{n(st.sampled_from(['0', '0.5', '1', '-1', '2']))} }}",
        "power": f"type: 'Power' power_param {{ power: "
                 f"{n(st.sampled_from(['0', '0.5', '2', '-1']))} }}",
        "crop": f"type: 'Crop' bottom: '{n(st.sampled_from(names))}' crop_param "
                f"{{ axis: {n(SMALL)} offset: {n(st.integers(-1, 2))} }}",
        "reduction": f"type: 'Reduction' reduction_param {{ axis: {n(SMALL)} "
                     f"operation: {n(st.sampled_from(['SUM', 'ASUM', 'SUMSQ', 'MEAN']))} }}",
        "argmax": f"type: 'ArgMax' argmax_param {{ top_k: {n(st.integers(0, 3))} "
                  f"axis: {n(SMALL)} }}",
        "mvn": f"type: 'MVN' mvn_param {{ across_channels: "
               f"{n(st.sampled_from(['true', 'false']))} }}",
        "prelu": "type: 'PReLU'",
        "elu": "type: 'ELU'",
        "embed": f"type: 'Embed' embed_param {{ num_output: "
                 f"{n(st.integers(0, 3))} input_dim: {n(st.integers(0, 3))} }}",
        "spp": f"type: 'SPP' spp_param {{ pyramid_height: {n(st.integers(0, 3))} }}",
        "im2col": f"type: 'Im2col' convolution_param {{ kernel_size: "
                  f"{n(st.integers(0, 3))} }}",
        "permute": "type: 'Permute' permute_param { "
                   + " ".join(f"order: {n(st.integers(-1, 4))}"
                              for _ in range(n(st.integers(0, 4)))) + " }",
        "normalize": "type: 'Normalize'",
    }[kind]
    return f"layer {{ name: 'l{i}' bottom: '{bottom}' top: '{t}' {p} }}", t


@st.composite
def small_net(draw):
    dims = draw(st.lists(st.integers(0, 5), min_size=1, max_size=5))
    text = ("layer { name: 'data' type: 'Input' top: 'data' input_param { "
            f"shape {{ {' '.join(f'dim: {d}' for d in dims)} }} }} }}\n")
    names = ["data"]
    for i in range(draw(st.integers(1, 4))):
        spec, top = draw(layer_spec(i, names))
        text += spec + "\n"
        names.append(top)
    return text


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(small_net(), st.sampled_from([protonet.TRAIN, protonet.TEST]))
def test_generated_nets(text, phase):
    param = _only_protonet_errors(io.parse_net_text, text)
    net = param and _only_protonet_errors(protonet.Net, param, phase)
    if net is None:
        return
    with np.errstate(all="ignore"):
        for b in net.blobs.values():
            b.data[...] = np.random.RandomState(0).rand(*b.shape) if b.count \
                else 0
        _only_protonet_errors(net.forward)
        for name in net.outputs:
            net.blobs[name].diff[...] = 1
        _only_protonet_errors(net.backward_from_to)


# Regressions the fuzzers found: empty blobs (a zero batch or axis) made
# BatchNorm, MVN, Normalize, Deconvolution and Softmax raise raw ValueErrors,
# and Reduction MEAN over an empty axis a ZeroDivisionError.
@pytest.mark.parametrize("dims,layer", [
    ("0 5 5 1 4", "type: 'BatchNorm'"),
    ("0 1 3", "type: 'MVN' mvn_param { across_channels: false }"),
    ("2 0 5 0", "type: 'Normalize'"),
    ("0 5 5 5", "type: 'Deconvolution' convolution_param { num_output: 1 "
                "kernel_size: 2 }"),
    ("5 4 5 2 0", "type: 'Softmax' softmax_param { axis: -1 }"),
    ("1 5 2 0 0", "type: 'Reduction' reduction_param { axis: 2 operation: MEAN }"),
])
def test_empty_blobs_run(dims, layer):
    text = ("layer { name: 'data' type: 'Input' top: 'data' input_param { "
            f"shape {{ {' '.join('dim: ' + d for d in dims.split())} }} }} }}\n"
            f"layer {{ name: 'l' bottom: 'data' top: 't' {layer} }}")
    net = protonet.Net(io.parse_net_text(text), protonet.TRAIN)
    with np.errstate(all="ignore"):
        net.forward()
        net.blobs["t"].diff[...] = 1
        net.layers[1].backward(net.top_vecs[1], [True], net.bottom_vecs[1])
    assert net.blobs["t"].count == 0 or "Reduction" in layer


@pytest.mark.parametrize("layer", [
    "type: 'LRN' lrn_param { local_size: 5 norm_region: WITHIN_CHANNEL }",
    "type: 'LRN' lrn_param { local_size: 3 }",
    "type: 'Convolution' convolution_param { num_output: 1 kernel_size: 1 "
    "pad: 1 }",
])
def test_empty_batch_spatial_layers(layer):
    text = ("layer { name: 'data' type: 'Input' top: 'data' input_param { "
            "shape { dim: 0 dim: 4 dim: 0 dim: 3 } } }\n"
            f"layer {{ name: 'l' bottom: 'data' top: 't' {layer} }}")
    net = protonet.Net(io.parse_net_text(text), protonet.TRAIN)
    net.forward()
    net.blobs["t"].diff[...] = 1
    net.layers[1].backward(net.top_vecs[1], [True], net.bottom_vecs[1])
    assert net.blobs["data"].diff.shape == (0, 4, 0, 3)
