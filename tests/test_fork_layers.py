"""Layers of Caffe forks: SSD (Normalize, Permute, PriorBox, DetectionOutput,
MultiBoxLoss, SmoothL1Loss), activations, resampling, BN, depthwise
convolution and region pooling.  Hand-computed forwards, shapes, float64
gradient checks, parameter-diff accumulation and bad-input errors."""

import numpy as np
import pytest

from protonet import bbox
from protonet.errors import LayerError, UnsupportedError
from protonet.testing import check_gradient, make_layer
from protonet.proto import caffe_pb2

RNG = np.random.default_rng(7)


def run(text, bottoms, num_tops=1, phase=caffe_pb2.TEST):
    layer, bottom, top = make_layer(text, bottoms, phase=phase, num_tops=num_tops)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def grad(text, bottoms, **kw):
    """Float64 numerical gradient check of a one-top layer."""
    kw.setdefault("num_tops", 1)
    return check_gradient(text, bottoms, **kw)


def away_from(x, points, margin=0.05):
    """Nudge values away from the kinks at `points` (gradient checks)."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin)
    return x


# -- SSD ----------------------------------------------------------------------

PRIOR = ('type: "PriorBox" prior_box_param { min_size: 4 max_size: 9 '
         'aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 '
         'variance: 0.2 variance: 0.2 }')


def test_priorbox_hand_computed_2x2():
    _, _, top = run(PRIOR, [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))])
    assert top[0].shape == (1, 2, 2 * 2 * 4 * 4)
    boxes = top[0].data[0, 0].reshape(2, 2, 4, 4)
    # Cell (0, 0): centre (2, 2) with step 8/2 = 4; image 8x8.
    r2 = np.sqrt(2.0)
    expected = np.array([
        [0, 0, 4, 4],                                   # min_size 4
        [2 - 3, 2 - 3, 2 + 3, 2 + 3],                   # sqrt(4*9) = 6
        [2 - 2 * r2, 2 - 2 / r2, 2 + 2 * r2, 2 + 2 / r2],   # ar 2
        [2 - 2 / r2, 2 - 2 * r2, 2 + 2 / r2, 2 + 2 * r2],   # ar 1/2
    ]) / 8
    np.testing.assert_allclose(boxes[0, 0], expected, rtol=1e-6)
    # Cell (row 1, col 0): centre x 2, centre y 6.
    np.testing.assert_allclose(boxes[1, 0, 0], np.array([0, 4, 4, 8]) / 8)
    var = top[0].data[0, 1].reshape(-1, 4)
    np.testing.assert_allclose(var, np.tile([0.1, 0.1, 0.2, 0.2], (16, 1)))


def test_priorbox_clip_truncates_sizes_and_single_variance():
    text = ('type: "PriorBox" prior_box_param { min_size: 4.9 clip: true '
            'img_size: 8 step: 4 offset: 0 }')
    _, _, top = run(text, [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 5, 5))])
    boxes = top[0].data[0, 0].reshape(4, 4)
    # min_size 4.9 -> 4; centre (0, 0) -> [-2, -2, 2, 2] / 8, clipped.
    np.testing.assert_allclose(boxes[0], [0, 0, 0.25, 0.25])
    np.testing.assert_allclose(top[0].data[0, 1], 0.1, rtol=1e-6)


def test_priorbox_bad_parameters():
    with pytest.raises(LayerError, match="min_size"):
        make_layer('type: "PriorBox"', [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))], num_tops=1)
    with pytest.raises(LayerError, match="max_size"):
        make_layer('type: "PriorBox" prior_box_param { min_size: 4 max_size: 3 }',
                   [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))], num_tops=1)


DET = ('type: "DetectionOutput" detection_output_param { num_classes: 3 '
       'background_label_id: 0 nms_param { nms_threshold: 0.5 } '
       'code_type: CORNER variance_encoded_in_target: true '
       'confidence_threshold: 0.1 keep_top_k: KEEP }')


def _det_inputs():
    priors = np.array([[0.1, 0.1, 0.4, 0.4], [0.12, 0.1, 0.42, 0.4],
                       [0.6, 0.6, 0.9, 0.9]])
    prior = np.stack([priors.reshape(-1), np.full(12, 0.1)])[None]
    loc = np.zeros((1, 12))
    loc[0, 8:] = [0.01, 0.0, 0.01, 0.0]       # shift the third box right
    conf = np.array([[0.1, 0.7, 0.2,            # prior 0: class 1 best
                      0.2, 0.6, 0.2,            # prior 1: overlaps prior 0
                      0.3, 0.05, 0.65]])        # prior 2: class 2
    return loc, conf.reshape(1, 9), prior


def test_detection_output_hand_computed():
    loc, conf, prior = _det_inputs()
    _, _, top = run(DET.replace("KEEP", "-1"), [loc, conf, prior])
    rows = top[0].data[0, 0]
    # class 1: prior 0 (0.7) kept, prior 1 (IoU 0.875 > 0.5) suppressed;
    # class 2: prior 0 (0.2), prior 1 (0.2, suppressed), prior 2 (0.65)
    # -> label 2 rows by score: prior 2, then prior 0.
    expected = np.array([
        [0, 1, 0.7, 0.1, 0.1, 0.4, 0.4],
        [0, 2, 0.65, 0.61, 0.6, 0.91, 0.9],
        [0, 2, 0.2, 0.1, 0.1, 0.4, 0.4],
    ])
    np.testing.assert_allclose(rows, expected, atol=1e-12)
    # keep_top_k 2 keeps the two best overall, still grouped by label.
    _, _, top = run(DET.replace("KEEP", "2"), [loc, conf, prior])
    np.testing.assert_allclose(top[0].data[0, 0], expected[:2], atol=1e-12)


def test_detection_output_empty_rows_per_image():
    loc, conf, prior = _det_inputs()
    loc, conf = np.repeat(loc, 2, 0), np.repeat(conf, 2, 0) * 0.1
    _, _, top = run(DET.replace("KEEP", "-1"), [loc, conf, prior])
    assert top[0].shape == (1, 1, 2, 7)
    np.testing.assert_array_equal(top[0].data[0, 0, :, 0], [0, 1])
    assert np.all(top[0].data[0, 0, :, 1:] == -1)


def test_detection_output_priors_must_match_predictions():
    loc, conf, prior = _det_inputs()
    with pytest.raises(LayerError, match=r"DetectionOutput.*3 priors.*\(1, 8\)"):
        make_layer(DET.replace("KEEP", "-1"), [loc[:, :8], conf, prior], num_tops=1)
    with pytest.raises(LayerError, match="confidences"):
        make_layer(DET.replace("KEEP", "-1"), [loc, conf[:, :6], prior], num_tops=1)
    with pytest.raises(LayerError, match=r"\(1, 2, P\*4\)"):
        make_layer(DET.replace("KEEP", "-1"), [loc, conf, prior[:, :1]], num_tops=1)


def test_bbox_encode_decode_round_trip_and_nms_eta():
    priors = np.array([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.8, 0.9]])
    var = np.array([[0.1, 0.1, 0.2, 0.2]] * 2)
    gt = np.array([[0.15, 0.25, 0.45, 0.7], [0.2, 0.1, 0.9, 0.8]])
    for code in (bbox.CORNER, bbox.CENTER_SIZE, bbox.CORNER_SIZE):
        for vit in (False, True):
            enc = bbox.encode(priors, var, code, vit, gt)
            np.testing.assert_allclose(bbox.decode(priors, var, code, vit, enc), gt)
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.45], [0, 0, 1, 0.7]])
    scores = np.array([0.9, 0.8, 0.7])
    np.testing.assert_array_equal(bbox.nms(boxes, scores, 0, 0.6), [0, 1])  # IoUs 0.45, 0.7
    # eta 0.5: after the first kept box the threshold drops to 0.3.
    np.testing.assert_array_equal(bbox.nms(boxes, scores, 0, 0.6, eta=0.5), [0])


def test_bbox_match_bipartite_then_per_prediction():
    priors = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.45, 0.5], [0.5, 0.5, 1, 1], [0.9, 0.9, 1, 1]])
    gt = np.array([[0, 0, 0.5, 0.5]])
    idx, ov = bbox.match(gt, priors, caffe_pb2.MultiBoxLossParameter.BIPARTITE, 0.5)
    np.testing.assert_array_equal(idx, [0, -1, -1, -1])
    idx, ov = bbox.match(gt, priors, caffe_pb2.MultiBoxLossParameter.PER_PREDICTION, 0.5)
    np.testing.assert_array_equal(idx, [0, 0, -1, -1])
    np.testing.assert_allclose(ov, [1, 0.9, 0, 0])


NORM = 'type: "Normalize" norm_param { across_spatial: ACROSS channel_shared: SHARED eps: 0.01 }'


@pytest.mark.parametrize("across", ["true", "false"])
@pytest.mark.parametrize("shared", ["true", "false"])
def test_normalize_forward_and_gradient(across, shared):
    x = RNG.standard_normal((2, 3, 2, 3))
    text = NORM.replace("ACROSS", across).replace("SHARED", shared)
    layer, _, top = run(text, [x])
    axes = (1, 2, 3) if across == "true" else (1,)
    n = np.sqrt((x * x).sum(axis=axes, keepdims=True) + 0.01)
    np.testing.assert_allclose(top[0].data, x / n)
    scale = np.full(layer.blobs[0].shape, 1.7)      # equal scales: exact gradient
    grad(text, [x], params=[scale])


def test_normalize_unequal_scales_use_caffe_formula_and_accumulate():
    x = RNG.standard_normal((2, 3, 2, 2))
    text = NORM.replace("ACROSS", "false").replace("SHARED", "false")
    layer, bottom, top = run(text, [x])
    layer.blobs[0].data[...] = [1.0, 2.0, 3.0]
    layer.forward(bottom, top)
    g = RNG.standard_normal(x.shape)
    top[0].diff[...] = g
    layer.backward(top, [True], bottom)
    n = np.sqrt((x * x).sum(axis=1, keepdims=True) + 0.01)
    s = np.array([1.0, 2, 3])[None, :, None, None]
    expected = s * (g - x * (x * g).sum(axis=1, keepdims=True) / n ** 2) / n
    np.testing.assert_allclose(bottom[0].diff, expected)
    first = layer.blobs[0].diff.copy()
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * first)


def test_permute_shapes_and_gradient():
    x = RNG.standard_normal((2, 3, 4, 5))
    _, _, top = run('type: "Permute" permute_param { order: 0 order: 3 }', [x])
    assert top[0].shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(top[0].data, x.transpose(0, 3, 1, 2))
    grad('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [x])
    with pytest.raises(LayerError, match="order 4 is out of range"):
        make_layer('type: "Permute" permute_param { order: 4 }', [x], num_tops=1)


def test_smooth_l1_forward_and_gradients():
    a = away_from(RNG.standard_normal((4, 6)) * 2, [-1, 1])
    b = np.zeros((4, 6))
    _, _, top = run('type: "SmoothL1Loss"', [a, b], phase=caffe_pb2.TRAIN)
    f = np.where(np.abs(a) < 1, 0.5 * a * a, np.abs(a) - 0.5)
    np.testing.assert_allclose(top[0].data, f.sum() / 4)
    grad('type: "SmoothL1Loss"', [a, RNG.standard_normal((4, 6)) * 0.01])
    w = RNG.uniform(0.5, 1.5, (4, 6))
    text = 'type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 2 }'
    grad(text, [away_from(a / 2, [-0.25, 0.25], 0.03), b, w, w[::-1]],
                   check_bottoms=[0, 1])
    with pytest.raises(LayerError, match="got 3"):
        make_layer('type: "SmoothL1Loss"', [a, b, w], num_tops=1)


MBOX = ('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 '
        'share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 '
        'background_label_id: 0 neg_pos_ratio: 1 neg_overlap: 0.5 '
        'code_type: CENTER_SIZE mining_type: MINING conf_loss_type: CONF '
        'loc_loss_type: LOC } loss_param { normalization: VALID }')


def _mbox_inputs():
    g = np.linspace(0.05, 0.75, 4)
    priors = np.array([[x, y, x + 0.25, y + 0.25] for y in g for x in g])  # 16
    prior = np.stack([priors.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], 16)])[None]
    gt = np.array([[0, 1, 0, 0.05, 0.05, 0.31, 0.29, 0],
                   [0, 2, 1, 0.5, 0.5, 0.78, 0.8, 0],
                   [1, 1, 0, 0.28, 0.3, 0.55, 0.52, 0]])[None, None]
    loc = RNG.standard_normal((2, 64)) * 0.3
    conf = RNG.standard_normal((2, 48))
    return loc, conf, prior, gt


@pytest.mark.parametrize("mining,conf_type,loc_type", [
    ("MAX_NEGATIVE", "SOFTMAX", "SMOOTH_L1"),
    ("NONE", "SOFTMAX", "L2"),
    ("MAX_NEGATIVE", "LOGISTIC", "L2"),
])
def test_multibox_loss_gradient(mining, conf_type, loc_type):
    loc, conf, prior, gt = _mbox_inputs()
    text = MBOX.replace("MINING", mining).replace("CONF", conf_type).replace("LOC", loc_type)
    grad(text, [loc, conf, prior, gt], check_bottoms=[0, 1],
                   phase=caffe_pb2.TRAIN)


def test_multibox_loss_hand_computed_single_match():
    prior = np.array([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])
    prior = np.stack([prior.reshape(-1), np.full(8, 1.0)])[None]
    gt = np.array([[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0]])[None, None]
    loc = np.array([[0.5, -0.2, 0, 0, 0, 0, 0, 0]])
    conf = np.array([[0.0, 1.0, 0.0, 2.0, 0.0, 0.0]])
    text = (MBOX.replace("MINING", "NONE").replace("CONF", "SOFTMAX")
            .replace("LOC", "SMOOTH_L1").replace("CENTER_SIZE", "CORNER"))
    _, _, top = run(text, [loc, conf, prior, gt], phase=caffe_pb2.TRAIN)
    loc_loss = 0.5 * 0.25 + 0.5 * 0.04
    p0 = np.exp(1) / (np.exp(1) + 2)             # prior 0 is class 1
    p1 = np.exp(2) / (np.exp(2) + 2)             # prior 1 is background
    np.testing.assert_allclose(top[0].data, loc_loss - np.log(p0) - np.log(p1))


def test_multibox_loss_shape_errors():
    loc, conf, prior, gt = _mbox_inputs()
    text = MBOX.replace("MINING", "NONE").replace("CONF", "SOFTMAX").replace("LOC", "L2")
    with pytest.raises(LayerError, match=r"MultiBoxLoss.*16 priors.*loc shape \(2, 60\)"):
        make_layer(text, [loc[:, :60], conf, prior, gt], num_tops=1)
    bad_gt = gt.copy()
    bad_gt[..., 1] = 0
    with pytest.raises(LayerError, match="background label"):
        run(text, [loc, conf, prior, bad_gt])


# -- activations ----------------------------------------------------------------

@pytest.mark.parametrize("text,ref,kinks", [
    ('type: "ReLU6"', lambda x: np.clip(x, 0, 6), [0, 6]),
    ('type: "ReLU6" relu6_param { negative_slope: 0.1 threshold: 2 }',
     lambda x: np.minimum(np.where(x > 0, x, 0.1 * x), 2), [0, 2]),
    ('type: "HardSwish"', lambda x: x * np.clip(x / 6 + 0.5, 0, 1), [-3, 3]),
    ('type: "HardSigmoid" hardsigmoid_param { alpha: 0.5 beta: 0.4 }',
     lambda x: np.clip(0.5 * x + 0.4, 0, 1), [-0.8, 1.2]),
    ('type: "SeLu"', lambda x: 1.050700987 * np.where(x > 0, x, 1.67326324 * np.expm1(x)), [0]),
])
def test_elementwise_forward_gradient_in_place(text, ref, kinks):
    x = away_from(RNG.uniform(-8, 8, (2, 3, 4)), kinks)
    _, _, top = run(text, [x])
    np.testing.assert_allclose(top[0].data, ref(x), rtol=1e-7)
    grad(text, [x])
    layer, bottom, _ = make_layer(text, [x], num_tops=1)
    layer.forward(bottom, bottom)
    np.testing.assert_allclose(bottom[0].data, ref(x), rtol=1e-7)


def test_axpy_forward_gradient_and_shape_error():
    a, x, y = RNG.standard_normal((2, 3, 1, 1)), RNG.standard_normal((2, 3, 4, 2)), \
        RNG.standard_normal((2, 3, 4, 2))
    _, _, top = run('type: "Axpy"', [a, x, y])
    np.testing.assert_allclose(top[0].data, a * x + y)
    grad('type: "Axpy"', [a, x, y])
    with pytest.raises(LayerError, match=r"Axpy.*\(2, 4, 1, 1\)"):
        make_layer('type: "Axpy"', [np.zeros((2, 4, 1, 1)), x, y], num_tops=1)


def test_shuffle_channel_and_pixel_shuffle():
    x = np.arange(6.0).reshape(1, 6, 1, 1)
    _, _, top = run('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [x])
    np.testing.assert_array_equal(top[0].data.ravel(), [0, 3, 1, 4, 2, 5])
    grad('type: "ShuffleChannel" shuffle_channel_param { group: 3 }',
                   [RNG.standard_normal((2, 6, 2, 2))])
    with pytest.raises(LayerError, match="divisible by group 4"):
        make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 4 }', [x], num_tops=1)
    x = np.arange(8.0).reshape(1, 4, 1, 2)
    _, _, top = run('type: "PixelShuffle" pixelshuffle_param { upscale_factor: 2 }', [x])
    np.testing.assert_array_equal(top[0].data[0, 0], [[0, 2, 1, 3], [4, 6, 5, 7]])
    grad('type: "PixelShuffle" pixelshuffle_param { upscale_factor: 2 }',
                   [RNG.standard_normal((2, 8, 2, 3))])


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_bn_forward_gradient_and_accumulation(mode):
    x = RNG.standard_normal((3, 2, 2, 3))
    text = f'type: "BN" bn_param {{ bn_mode: {mode} }}'
    params = [RNG.uniform(0.5, 2, (1, 2, 1, 1)), RNG.standard_normal((1, 2, 1, 1))]
    layer, bottom, top = make_layer(text, [x], num_tops=1)
    for blob, p in zip(layer.blobs, params):
        blob.data[...] = p
    layer.forward(bottom, top)
    if mode == "LEARN":
        m, v = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
        ref = params[0] * (x - m) / np.sqrt(v + 1e-9) + params[1]
    else:
        ref = params[0] * x + params[1]
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-7)
    grad(text, [x], params=params)
    top[0].diff[...] = 1.5
    layer.backward(top, [True], bottom)
    first = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [True], bottom)
    for b, f in zip(layer.blobs, first):
        np.testing.assert_allclose(b.diff, 2 * f)


# -- resampling ------------------------------------------------------------------

def test_upsample_segnet_with_known_mask_and_gradient():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = np.array([[[[0.0, 3.0], [9.0, 14.0]]]])
    text = 'type: "Upsample" upsample_param { scale: 2 }'
    _, _, top = run(text, [x, mask])
    expected = np.zeros((4, 4))
    expected.flat[[0, 3, 9, 14]] = [1, 2, 3, 4]
    np.testing.assert_array_equal(top[0].data[0, 0], expected)
    grad(text, [x, mask], check_bottoms=[0])
    _, _, top = run('type: "Upsample" upsample_param { upsample_h: 3 upsample_w: 5 }', [x, mask])
    assert top[0].shape == (1, 1, 3, 5)
    with pytest.raises(LayerError, match=r"Upsample.*mask.*\(1, 1, 2, 2\).*\(1, 1, 2, 3\)"):
        make_layer(text, [x, np.zeros((1, 1, 2, 3))], num_tops=1)
    with pytest.raises(LayerError, match="outside the 4x4"):
        run(text, [x, mask + 10])


def test_upsample_nearest_and_maxunpool():
    x = RNG.standard_normal((2, 3, 2, 3))
    _, _, top = run('type: "Upsample" upsample_param { scale: 3 }', [x])
    np.testing.assert_array_equal(top[0].data, x.repeat(3, 2).repeat(3, 3))
    grad('type: "Upsample" upsample_param { scale: 2 }', [x])
    grad('type: "Upsample" upsample_param { scale: 2 dims_num: 3 }', [x[:, :, 0]])
    mask = np.array([[[[0.0, 4.0], [12.0, 24.0]]]])
    text = 'type: "MaxUnPool" max_unpool_param { dst_h: 5 dst_w: 5 }'
    _, _, top = run(text, [x[:1, :1, :, :2], mask])
    assert top[0].shape == (1, 1, 5, 5)
    assert np.count_nonzero(top[0].data) == 4 and top[0].data.flat[24] == x[0, 0, 1, 1]
    grad(text, [x[:1, :1, :, :2], mask], check_bottoms=[0])
    with pytest.raises(LayerError, match="dst_h and dst_w are required"):
        make_layer('type: "MaxUnPool"', [x, x], num_tops=1)


def test_bilinear_and_interp_forward_shapes_and_gradient():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    _, _, top = run('type: "BilinearInterpolate" bilinear_interpolate_param { dst_h: 3 dst_w: 5 }', [x])
    np.testing.assert_allclose(top[0].data[0, 0], [[0, 0.5, 1, 1.5, 2], [1.5, 2, 2.5, 3, 3.5], [3, 3.5, 4, 4.5, 5]])
    y = RNG.standard_normal((2, 2, 3, 4))
    grad('type: "BilinearInterpolate" bilinear_interpolate_param { scale_factor: 1.5 align_corners: false }', [y])
    with pytest.raises(LayerError, match="either dst_h/dst_w or scale_factor"):
        make_layer('type: "BilinearInterpolate" bilinear_interpolate_param { dst_h: 3 dst_w: 3 scale_factor: 2 }', [y], num_tops=1)
    _, _, top = run('type: "Interp" interp_param { zoom_factor: 2 }', [x])
    assert top[0].shape == (1, 1, 3, 5)
    np.testing.assert_allclose(top[0].data[0, 0, 1], [1.5, 2, 2.5, 3, 3.5])
    _, _, top = run('type: "Interp" interp_param { shrink_factor: 2 pad_beg: 0 pad_end: -1 }', [y])
    assert top[0].shape == (2, 2, 1, 2)              # H_eff 2 -> 1, W_eff 3 -> 2
    np.testing.assert_allclose(top[0].data[..., 0, :], y[..., 0, [0, 2]])
    _, _, top = run('type: "Interp"', [y, np.zeros((1, 1, 5, 6))])
    assert top[0].shape == (2, 2, 5, 6)
    grad('type: "Interp" interp_param { height: 5 width: 7 pad_beg: -1 pad_end: 0 }', [y])
    with pytest.raises(UnsupportedError, match="pad"):
        make_layer('type: "Interp" interp_param { zoom_factor: 2 pad_beg: 1 }', [y], num_tops=1)


# -- depthwise convolution and region pooling -----------------------------------

@pytest.mark.parametrize("kind", ["ConvolutionDepthwise", "DepthwiseConvolution"])
def test_depthwise_matches_grouped_convolution(kind):
    x = RNG.standard_normal((2, 3, 5, 6))
    fill = 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }'
    text = (f'type: "{kind}" convolution_param {{ num_output: 6 kernel_size: 3 '
            f'stride: 2 pad: 1 dilation: 1 {fill} }}')
    layer, _, top = run(text, [x])
    assert layer.blobs[0].shape == (6, 1, 3, 3)
    ref_text = text.replace(kind, "Convolution").replace("num_output: 6", "num_output: 6 group: 3")
    ref, rb, rt = make_layer(ref_text, [x], num_tops=1)
    for a, b in zip(ref.blobs, layer.blobs):
        a.data[...] = b.data
    ref.forward(rb, rt)
    np.testing.assert_allclose(top[0].data, rt[0].data, atol=1e-12)
    grad(text.replace("dilation: 1", "dilation: 2"), [x])
    with pytest.raises(LayerError, match="group == channels"):
        make_layer(text.replace("num_output: 6", "num_output: 6 group: 2"), [x], num_tops=1)


ROIS = np.array([[0, 0, 0, 5, 4], [1, 2.4, 1, 6.6, 5.2], [0, 3, 3, 3, 3]])


def test_roi_pooling_forward_gradient_and_errors():
    x = RNG.standard_normal((2, 3, 6, 7))
    text = 'type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 1 }'
    _, _, top = run(text, [x, ROIS])
    assert top[0].shape == (3, 3, 2, 3)
    # roi 0: rows 0..4 (5 rows, bins [0,3) [2,5)), cols 0..5 (bins of 2).
    np.testing.assert_allclose(top[0].data[0, :, 0, 0], x[0, :, 0:3, 0:2].max(axis=(1, 2)))
    np.testing.assert_allclose(top[0].data[0, :, 1, 2], x[0, :, 2:5, 4:6].max(axis=(1, 2)))
    # roi 2 is one pixel: every bin sees x[0, :, 3, 3] (bins [0, 1) after ceil).
    np.testing.assert_allclose(top[0].data[2, :, 0, 0], x[0, :, 3, 3])
    grad(text, [x, ROIS], check_bottoms=[0])
    with pytest.raises(LayerError, match=r"\(R, 5\)"):
        make_layer(text, [x, ROIS[:, :4]], num_tops=1)


def test_psroi_pooling_forward_and_gradient():
    x = RNG.standard_normal((2, 2 * 4, 6, 7))
    text = 'type: "PSROIPooling" psroi_pooling_param { spatial_scale: 1 output_dim: 2 group_size: 2 }'
    _, _, top = run(text, [x, ROIS[:2]])
    assert top[0].shape == (2, 2, 2, 2)
    # roi 0: x [0, 6), y [0, 5); bin (1, 0) of output channel 1 reads input
    # channel (1*2 + 1)*2 + 0 = 6 over rows [2, 5), columns [0, 3).
    np.testing.assert_allclose(top[0].data[0, 1, 1, 0], x[0, 6, 2:5, 0:3].mean())
    grad(text, [x, ROIS[:2]], check_bottoms=[0])
    with pytest.raises(LayerError, match="8 channels expected"):
        make_layer(text, [x[:, :6], ROIS], num_tops=1)
