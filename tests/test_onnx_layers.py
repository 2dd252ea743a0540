"""Each layer type's ONNX form against protonet's forward in onnxruntime.

Every case builds a tiny net with random weights, exports every blob as a
graph output and requires each within 1e-4 of its largest magnitude
(float32).  The pooling cases cover Caffe's ceil rounding, the dropped last
window, and the AVE divisor that counts padding only up to H + pad.
"""

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import protonet  # noqa: E402
from protonet.errors import ProtonetError  # noqa: E402
from protonet.layers.vision import pooled_size  # noqa: E402
from protonet.onnx_export import export  # noqa: E402
from protonet.onnx_export.check import compare, randomize_weights  # noqa: E402

TOL = 1e-4


def build(tmp_path, body, inputs):
    lines = ['name: "t"']
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(f'layer {{ name: "in_{name}" type: "Input" top: "{name}" '
                     f'input_param {{ shape {{ {dims} }} }} }}')
    path = tmp_path / "net.prototxt"
    path.write_text("\n".join(lines) + "\n" + body)
    net = protonet.Net(str(path), phase=protonet.TEST)
    randomize_weights(net, seed=1)
    return net


def arrays(net, kind="normal", seed=0):
    gen = np.random.default_rng(seed)
    out = {}
    for n in net.inputs:
        shape = net.blobs[n].shape
        if kind == "positive":
            a = gen.uniform(0.5, 2.0, shape)
        elif kind == "index":
            a = gen.integers(0, 5, shape)
        else:
            a = gen.standard_normal(shape)
        out[n] = a.astype(np.float32)
    return out


def check(tmp_path, body, inputs=None, kind="normal", outputs=None, **kw):
    """Export every non-input blob; all must match protonet."""
    net = build(tmp_path, body, inputs or {"data": (2, 3, 7, 9)})
    outputs = outputs or [b for b in net.blobs if b not in net.inputs]
    model = export(net, outputs=outputs, **kw)
    rows = compare(net, model, arrays(net, kind))
    assert [r[0] for r in rows] == outputs
    for name, diff, rel, scale in rows:
        assert scale > 0, f"{name} is all zero: the case checks nothing"
        assert rel <= TOL, f"{name}: relative difference {rel}"
    return net, model


def layer(kind, params="", bottoms=("data",), tops=("y",), name="l"):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{kind}" {b} {t} {params} }}\n'


# -- pooling geometry ---------------------------------------------------------

POOL_CASES = [
    # (H, W, kernel, stride, pad, round_mode)
    (7, 9, 3, 2, 0, "CEIL"),    # ceil adds a partial last window
    (5, 5, 2, 2, 1, "CEIL"),    # last window would start in the pad: dropped
    (6, 8, 3, 2, 1, "CEIL"),    # ceil window through the end pad
    (9, 9, 2, 3, 0, "FLOOR"),   # floor leaves unread rows
    (7, 6, 3, 2, 1, "FLOOR"),
    (4, 4, 3, 1, 1, "CEIL"),
    (3, 3, 5, 1, 2, "CEIL"),    # kernel larger than the input
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("H, W, k, s, p, mode", POOL_CASES)
def test_pooling_geometry(tmp_path, pool, H, W, k, s, p, mode):
    params = (f"pooling_param {{ pool: {pool} kernel_size: {k} stride: {s} "
              f"pad: {p} round_mode: {mode} }}")
    net, _ = check(tmp_path, layer("Pooling", params), {"data": (2, 3, H, W)})
    ceil = mode == "CEIL"
    assert net.blobs["y"].shape[2:] == (pooled_size(H, k, s, p, ceil),
                                        pooled_size(W, k, s, p, ceil))


def test_pooling_clip_rule_is_exercised():
    # The (5, 5, 2, 2, 1) case: ceil gives 4 windows, Caffe keeps 3.
    assert pooled_size(5, 2, 2, 1, True) == 3
    assert -(-(5 + 2 - 2) // 2) + 1 == 4


def test_ave_pooling_divisor_counts_pad_up_to_h_plus_pad(tmp_path):
    """On ones, Caffe's AVE is valid cells / window clipped to [-pad, H+pad):
    below 1 at the borders, unlike ONNX's count_include_pad=0."""
    params = "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"
    net = build(tmp_path, layer("Pooling", params), {"data": (1, 1, 6, 6)})
    model = export(net)
    from protonet.onnx_export.check import session
    ones = np.ones((1, 1, 6, 6), np.float32)
    got = session(model).run(None, {"data": ones})[0]
    net.blobs["data"].data[...] = ones
    net.forward_from_to()
    want = net.blobs["y"].data
    assert want.min() < 1  # the border windows divide by padded cells
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("params", ["pyramid_height: 3 pool: MAX",
                                    "pyramid_height: 2 pool: AVE",
                                    "pyramid_height: 1"])
def test_spp(tmp_path, params):
    check(tmp_path, layer("SPP", f"spp_param {{ {params} }}"), {"data": (2, 3, 7, 9)})


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_global_pooling(tmp_path, pool):
    check(tmp_path, layer("Pooling", f"pooling_param {{ pool: {pool} global_pooling: true }}"))


def test_stochastic_pooling_at_test_time(tmp_path):
    # Windows that tile the input exactly: protonet's own STOCHASTIC forward
    # raises on a window cut by the input's end (its padded copy is never
    # made), so that geometry cannot be compared yet.
    params = "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }"
    check(tmp_path, layer("Pooling", params), {"data": (2, 3, 7, 9)}, kind="positive")


@pytest.mark.parametrize("geometry", ["kernel_size: 3 stride: 2",
                                      "kernel_size: 3 stride: 2 pad: 1",
                                      "kernel_size: 2 stride: 3 round_mode: FLOOR",
                                      "global_pooling: true"])
def test_max_pooling_mask_top(tmp_path, geometry):
    params = f"pooling_param {{ pool: MAX {geometry} }}"
    check(tmp_path, layer("Pooling", params, tops=("y", "mask")), {"data": (2, 3, 8, 9)})


# -- convolution and inner product --------------------------------------------

@pytest.mark.parametrize("params", [
    "num_output: 4 kernel_size: 3",
    "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3",
    "num_output: 4 kernel_h: 2 kernel_w: 3 dilation: 2 pad_h: 1 pad_w: 2 bias_term: false",
])
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_convolution(tmp_path, kind, params):
    check(tmp_path, layer(kind, f"convolution_param {{ {params} }}"))


@pytest.mark.parametrize("kind", ["ConvolutionDepthwise", "DepthwiseConvolution"])
def test_depthwise_convolution(tmp_path, kind):
    check(tmp_path, layer(kind,
                          "convolution_param { num_output: 6 kernel_size: 3 pad: 1 }"))


@pytest.mark.parametrize("params, shape", [
    ("num_output: 5", (2, 3, 4, 5)),
    ("num_output: 5 axis: 2", (2, 3, 4, 5)),
    ("num_output: 5 transpose: true bias_term: false", (2, 3, 4, 5)),
    ("num_output: 5 axis: -1", (2, 3, 4)),
    ("num_output: 5", (2, 6)),
])
def test_inner_product(tmp_path, params, shape):
    check(tmp_path, layer("InnerProduct", f"inner_product_param {{ {params} }}"),
          {"data": shape})


# -- normalisation --------------------------------------------------------------

@pytest.mark.parametrize("params", [
    "local_size: 5 alpha: 0.5 beta: 0.75 k: 2",
    "local_size: 3 alpha: 1.5 beta: 0.6 norm_region: WITHIN_CHANNEL",
])
def test_lrn(tmp_path, params):
    check(tmp_path, layer("LRN", f"lrn_param {{ {params} }}"))


def test_batch_norm_uses_stored_scale_factor(tmp_path):
    net = build(tmp_path, layer("BatchNorm", ""), {"data": (2, 3, 4, 5)})
    net.layers[1].blobs[2].data[...] = 2.5    # Caffe's moving-average factor
    model = export(net)
    (_, _, rel, _), = compare(net, model, arrays(net))
    assert rel <= TOL


def test_batch_norm_batch_statistics(tmp_path):
    check(tmp_path, layer("BatchNorm", "batch_norm_param { use_global_stats: false }"))


def test_batch_norm_2d(tmp_path):
    check(tmp_path, layer("BatchNorm", ""), {"data": (4, 3)})


@pytest.mark.parametrize("params", ["", "mvn_param { across_channels: true }",
                                    "mvn_param { normalize_variance: false }"])
def test_mvn(tmp_path, params):
    check(tmp_path, layer("MVN", params))


@pytest.mark.parametrize("params", ["", "norm_param { across_spatial: true }",
                                    "norm_param { across_spatial: false channel_shared: true }"])
def test_normalize(tmp_path, params):
    check(tmp_path, layer("Normalize", params))


# -- element-wise -----------------------------------------------------------------

@pytest.mark.parametrize("kind, params, inp", [
    ("ReLU", "", "normal"),
    ("ReLU", "relu_param { negative_slope: 0.1 }", "normal"),
    ("PReLU", "", "normal"),
    ("PReLU", "prelu_param { channel_shared: true }", "normal"),
    ("Sigmoid", "", "normal"), ("TanH", "", "normal"), ("AbsVal", "", "normal"),
    ("BNLL", "", "normal"), ("ELU", "elu_param { alpha: 0.7 }", "normal"),
    ("Threshold", "threshold_param { threshold: 0.2 }", "normal"),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", "normal"),
    ("Power", "power_param { power: 0.5 scale: 2 shift: 0.1 }", "positive"),
    ("Power", "power_param { power: 3 scale: 0 shift: 2 }", "normal"),
    ("Exp", "", "normal"), ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", "normal"),
    ("Log", "", "positive"), ("Log", "log_param { base: 10 scale: 2 shift: 0.5 }", "positive"),
    ("Dropout", "dropout_param { dropout_ratio: 0.3 }", "normal"),
    ("Clip", "clip_param { min: -0.5 max: 0.7 }", "normal"),
    ("Swish", "swish_param { beta: 1.5 }", "normal"),
    ("ReLU6", "", "normal"),
    ("ReLU6", "relu6_param { negative_slope: 0.1 threshold: 1 }", "normal"),
    ("HardSwish", "", "normal"),
    ("HardSigmoid", "hardsigmoid_param { alpha: 0.3 beta: 0.4 }", "normal"),
    ("SeLu", "", "normal"),
    ("SeLuDropout", "", "normal"),
])
def test_neuron(tmp_path, kind, params, inp):
    net = build(tmp_path, layer(kind, params), {"data": (2, 3, 4, 5)})
    net.blobs["data"]  # scale inputs so ReLU6 / HardSwish see both kinks
    model = export(net)
    a = {"data": arrays(net, inp)["data"] * (4 if inp == "normal" else 1)}
    (_, _, rel, scale), = compare(net, model, a)
    assert scale > 0 and rel <= TOL


def test_bnll_does_not_overflow(tmp_path):
    net = build(tmp_path, layer("BNLL"), {"data": (1, 4)})
    model = export(net)
    big = {"data": np.array([[-200, -1, 1, 200]], np.float32)}
    (_, _, rel, _), = compare(net, model, big)
    assert rel <= TOL


@pytest.mark.parametrize("params", [
    "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 }",
    "eltwise_param { operation: PROD }",
    "eltwise_param { operation: MAX }",
])
def test_eltwise(tmp_path, params):
    check(tmp_path, layer("Eltwise", params, bottoms=("a", "b", "c")),
          {"a": (2, 3, 4), "b": (2, 3, 4), "c": (2, 3, 4)})


@pytest.mark.parametrize("params", [
    "", "scale_param { bias_term: true }",
    "scale_param { axis: 1 num_axes: 2 bias_term: true }",
    "scale_param { axis: 0 num_axes: -1 }",
    "scale_param { num_axes: 0 }",
    "scale_param { axis: -2 num_axes: 1 }",
])
def test_scale(tmp_path, params):
    check(tmp_path, layer("Scale", params), {"data": (2, 3, 4, 5)})


@pytest.mark.parametrize("shape, params", [
    ((2, 3), "scale_param { axis: 0 bias_term: true }"),
    ((3, 4), "scale_param { axis: 1 }"),
    ((2, 3, 4), "scale_param { axis: 0 }"),
])
def test_scale_second_bottom(tmp_path, shape, params):
    check(tmp_path, layer("Scale", params, bottoms=("data", "s")),
          {"data": (2, 3, 4, 5), "s": shape})


@pytest.mark.parametrize("params, bottoms, inputs", [
    ("", ("data",), {"data": (2, 3, 4)}),
    ("bias_param { axis: 1 num_axes: 2 }", ("data",), {"data": (2, 3, 4)}),
    ("bias_param { axis: 1 }", ("data", "b"), {"data": (2, 3, 4), "b": (3, 4)}),
])
def test_bias(tmp_path, params, bottoms, inputs):
    check(tmp_path, layer("Bias", params, bottoms=bottoms), inputs)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_axis(tmp_path, axis):
    check(tmp_path, layer("Softmax", f"softmax_param {{ axis: {axis} }}"))


# -- shapes -------------------------------------------------------------------------

@pytest.mark.parametrize("body, inputs", [
    (layer("Concat", "concat_param { axis: 2 }", bottoms=("a", "b")),
     {"a": (2, 3, 4), "b": (2, 3, 5)}),
    (layer("Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 4 }",
           tops=("p", "q", "r")), {"data": (2, 6, 3)}),
    (layer("Slice", "slice_param { axis: -1 }", tops=("p", "q")), {"data": (2, 3, 4)}),
    (layer("Flatten", ""), {"data": (2, 3, 4, 5)}),
    (layer("Flatten", "flatten_param { axis: 2 end_axis: 3 }"), {"data": (2, 3, 4, 5)}),
    (layer("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"),
     {"data": (2, 3, 4, 5)}),
    (layer("Reshape", "reshape_param { shape { dim: 2 dim: 3 } axis: 1 num_axes: 1 }"),
     {"data": (2, 6, 5)}),
    (layer("Crop", "crop_param { axis: 2 offset: 1 offset: 2 }", bottoms=("data", "ref")),
     {"data": (2, 3, 7, 9), "ref": (2, 3, 4, 5)}),
    (layer("Crop", "crop_param { axis: 1 offset: 1 }", bottoms=("data", "ref")),
     {"data": (2, 3, 7, 9), "ref": (2, 2, 4, 5)}),
    (layer("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }"),
     {"data": (2, 3, 4, 5)}),
    (layer("Tile", "tile_param { axis: 1 tiles: 3 }"), {"data": (2, 3, 4)}),
    (layer("Reduction", "reduction_param { operation: SUM axis: 1 coeff: 2 }"),
     {"data": (2, 3, 4)}),
    (layer("Reduction", "reduction_param { operation: ASUM axis: 2 }"), {"data": (2, 3, 4)}),
    (layer("Reduction", "reduction_param { operation: SUMSQ axis: -1 }"), {"data": (2, 3, 4)}),
    (layer("Reduction", "reduction_param { operation: MEAN axis: 1 coeff: -1 }"),
     {"data": (2, 3, 4)}),
    (layer("ArgMax", "argmax_param { axis: 1 }"), {"data": (2, 5, 3)}),
    (layer("ArgMax", "argmax_param { axis: 1 out_max_val: true }"), {"data": (2, 5, 3)}),
    (layer("ArgMax", ""), {"data": (2, 5, 3)}),
    (layer("ArgMax", "argmax_param { out_max_val: true }"), {"data": (2, 5, 3)}),
], ids=lambda v: v.split('"')[3] if isinstance(v, str) else None)
def test_shape_layers(tmp_path, body, inputs):
    check(tmp_path, body, inputs)


def test_argmax_ties_go_to_the_higher_index(tmp_path):
    net = build(tmp_path, layer("ArgMax", "argmax_param { axis: 1 }"), {"data": (1, 4)})
    model = export(net)
    from protonet.onnx_export.check import session
    x = np.array([[1, 3, 3, 0]], np.float32)
    got = session(model).run(None, {"data": x})[0]
    net.blobs["data"].data[...] = x
    net.forward_from_to()
    assert got.ravel().tolist() == net.blobs["y"].data.ravel().tolist() == [2.0]


def test_dummy_data_constant_and_random(tmp_path):
    body = ('layer { name: "d" type: "DummyData" top: "k" dummy_data_param { '
            'shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1.5 } } }\n'
            + layer("Eltwise", "", bottoms=("data", "k")))
    check(tmp_path, body, {"data": (2, 3)})
    body = body.replace('type: "constant" value: 1.5', 'type: "gaussian"')
    net = build(tmp_path, body, {"data": (2, 3)})
    with pytest.raises(ProtonetError, match="DummyData layer 'd'.*'gaussian' filler"):
        export(net)


def test_embed(tmp_path):
    body = layer("Embed", "embed_param { input_dim: 5 num_output: 3 }")
    check(tmp_path, body, {"data": (2, 4)}, kind="index")


# -- graph structure ------------------------------------------------------------------

def test_in_place_chain_and_split_fan_out(tmp_path):
    body = (layer("Convolution", "convolution_param { num_output: 4 kernel_size: 1 }",
                  tops=("c",), name="conv")
            + layer("ReLU", "", bottoms=("c",), tops=("c",), name="relu")
            + layer("Scale", "", bottoms=("c",), tops=("c",), name="scale")
            + layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 }",
                    bottoms=("c",), tops=("p1",), name="pool1")
            + layer("Pooling", "pooling_param { pool: AVE kernel_size: 2 }",
                    bottoms=("c",), tops=("p2",), name="pool2")
            + layer("Eltwise", "", bottoms=("p1", "p2"), tops=("e",), name="sum"))
    net, model = check(tmp_path, body, outputs=["c", "e"])
    assert [o.name for o in model.graph.output] == ["c", "e"]
    assert [i.name for i in model.graph.input] == ["data"]
    relu_outputs = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    assert relu_outputs != ["c"]     # the last in-place writer holds the name


def test_default_outputs_are_the_nets(tmp_path):
    body = (layer("Slice", "slice_param { axis: 1 }", tops=("a", "b"))
            + layer("ReLU", "", bottoms=("a",), tops=("a",), name="r"))
    net = build(tmp_path, body, {"data": (2, 4, 3)})
    model = export(net)
    assert [o.name for o in model.graph.output] == net.outputs == ["a", "b"]


def test_prior_box_is_a_constant(tmp_path):
    body = layer("PriorBox", "prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 "
                 "flip: true clip: true variance: 0.1 variance: 0.1 variance: 0.2 "
                 "variance: 0.2 }", bottoms=("feat", "img"))
    net, model = check(tmp_path, body, {"feat": (1, 2, 3, 4), "img": (1, 3, 24, 32)})
    assert [n.op_type for n in model.graph.node] == ["Identity"]


# -- fork layers ----------------------------------------------------------------------

POOL_MASK = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "p" top: "mask" '
             'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')


@pytest.mark.parametrize("body, inputs", [
    (layer("Axpy", bottoms=("a", "x", "z")), {"a": (2, 3), "x": (2, 3, 4, 5), "z": (2, 3, 4, 5)}),
    (layer("Axpy", bottoms=("a", "x", "z")),
     {"a": (2, 3, 1, 1), "x": (2, 3, 4, 5), "z": (2, 3, 4, 5)}),
    (layer("ShuffleChannel", "shuffle_channel_param { group: 3 }"), {"data": (2, 6, 4, 5)}),
    (layer("PixelShuffle", "pixelshuffle_param { upscale_factor: 2 }"), {"data": (2, 8, 3, 4)}),
    (layer("BN", "bn_param { bn_mode: INFERENCE scale_filler { type: 'gaussian' } "
                 "shift_filler { type: 'gaussian' } }"), {"data": (2, 3, 4, 5)}),
    (layer("BN", "bn_param { scale_filler { type: 'gaussian' } "
                 "shift_filler { type: 'gaussian' } }"), {"data": (2, 3, 4, 5)}),
    (layer("Upsample", "upsample_param { scale: 2 }"), {"data": (2, 3, 4, 5)}),
    (layer("Upsample", "upsample_param { scale: 3 dims_num: 3 }"), {"data": (2, 3, 4)}),
    (POOL_MASK + layer("Upsample", "upsample_param { scale: 2 }", bottoms=("p", "mask")),
     {"data": (2, 3, 6, 8)}),
    (POOL_MASK + layer("Upsample", "upsample_param { upsample_h: 7 upsample_w: 9 }",
                       bottoms=("p", "mask")), {"data": (2, 3, 7, 9)}),
    (POOL_MASK + layer("MaxUnPool", "max_unpool_param { dst_h: 6 dst_w: 8 }",
                       bottoms=("p", "mask")), {"data": (2, 3, 6, 8)}),
    (layer("Interp", "interp_param { zoom_factor: 3 }"), {"data": (2, 3, 4, 5)}),
    (layer("Interp", "interp_param { shrink_factor: 2 }"), {"data": (2, 3, 7, 9)}),
    (layer("Interp", "interp_param { height: 11 width: 6 pad_beg: -1 pad_end: -1 }"),
     {"data": (2, 3, 7, 9)}),
    (layer("Interp", "", bottoms=("data", "ref")), {"data": (2, 3, 4, 5), "ref": (2, 1, 9, 7)}),
    (layer("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 9 dst_w: 7 }"),
     {"data": (2, 3, 4, 5)}),
    (layer("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 3 dst_w: 11 "
                                  "align_corners: true }"), {"data": (2, 3, 4, 5)}),
    (layer("BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 1.5 }"),
     {"data": (2, 3, 4, 5)}),
    (layer("UnPooling", "unpooling_param { unpool: REP }", bottoms=("data", "ref")),
     {"data": (2, 3, 1, 1), "ref": (2, 1, 4, 5)}),
    (layer("ParseOutput", tops=("label", "score")), {"data": (2, 5, 4, 3)}),
], ids=lambda v: v.split('"')[3] if isinstance(v, str) else None)
def test_fork_layers(tmp_path, body, inputs):
    check(tmp_path, body, inputs)


def test_segnet_unpooling_with_dynamic_batch_fails_clearly(tmp_path):
    body = POOL_MASK + layer("Upsample", "upsample_param { scale: 2 }", bottoms=("p", "mask"))
    net = build(tmp_path, body, {"data": (2, 3, 6, 8)})
    with pytest.raises(ProtonetError, match="Upsample layer 'l'.*fixed --batch"):
        export(net, batch="dynamic")


def test_resize_with_dynamic_batch(tmp_path):
    body = (layer("Interp", "interp_param { zoom_factor: 2 }", name="i", tops=("a",))
            + layer("Upsample", "upsample_param { scale: 2 }", name="u", tops=("b",)))
    net = build(tmp_path, body, {"data": (2, 3, 4, 5)})
    model = export(net, batch="dynamic")
    x = {"data": np.random.default_rng(0).standard_normal((3, 3, 4, 5)).astype(np.float32)}
    for _, _, rel, _ in compare(net, model, x):
        assert rel <= TOL
