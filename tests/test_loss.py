"""Loss layers and Accuracy: shapes, hand-computed forwards, gradients,
normalisation modes, errors, and their golden cases from real Caffe."""

import numpy as np
import pytest

from caffe_ref import run_case
from protonet.errors import LayerError, UnsupportedError
from protonet.io import write_binaryproto
from protonet.layer import v1_type_name
from protonet.testing import check_gradient, make_layer, run_forward

SWL = 'type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" '


def forward(text, bottoms, dtype=np.float64):
    layer, bottom, top = make_layer(text, bottoms, dtype=dtype)
    run_forward(layer, bottom, top)
    return layer, bottom, top


def backward(layer, bottom, top, prop=None, weight=None):
    if weight is not None:
        top[0].diff[...] = weight
    prop = [True] + [False] * (len(bottom) - 1) if prop is None else prop
    layer.backward(top, prop, bottom)
    return [b.diff.copy() for b in bottom]


def np_softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -- golden cases -------------------------------------------------------------
GOLDEN = ["swl_axis", "swl_batch_size", "swl_full", "swl_none",
          "swl_normalize_false", "swl_spatial", "swl_valid_ignore",
          "euclidean", "sigmoid_ce", "hinge_l1", "hinge_l2", "infogain",
          "multinomial_logistic", "contrastive", "contrastive_legacy",
          "accuracy_per_class", "accuracy_spatial", "accuracy_top1",
          "accuracy_top3"]


@pytest.mark.parametrize("case", GOLDEN)
def test_golden_case(case):
    run_case("layers", case)


@pytest.mark.parametrize("v1,v2", [
    ("SOFTMAX_LOSS", "SoftmaxWithLoss"), ("EUCLIDEAN_LOSS", "EuclideanLoss"),
    ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"),
    ("HINGE_LOSS", "HingeLoss"), ("INFOGAIN_LOSS", "InfogainLoss"),
    ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"),
    ("CONTRASTIVE_LOSS", "ContrastiveLoss"), ("ACCURACY", "Accuracy")])
def test_v1_names(v1, v2):
    assert v1_type_name(v1) == v2


# -- SoftmaxWithLoss ----------------------------------------------------------
def test_swl_hand_computed_and_shapes():
    x = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    y = np.array([0, 1])
    layer, bottom, top = forward(SWL + 'top: "prob"', [x, y])
    assert top[0].shape == () and top[1].shape == (2, 2)
    # -(log 1/2 + log 1/4) / 2 valid labels
    assert np.isclose(top[0].data, (np.log(2) + np.log(4)) / 2)
    np.testing.assert_allclose(top[1].data, [[.5, .5], [.75, .25]])
    dx = backward(layer, bottom, top)[0]
    np.testing.assert_allclose(dx, [[-.25, .25], [.375, -.375]])


def test_swl_loss_weight_scales_gradient_float32():
    x, y = rand(3, 4).astype(np.float32), np.array([0, 3, 1])
    layer, bottom, top = forward(SWL + "loss_weight: 2.5", [x, y], np.float32)
    assert top[0].data.dtype == np.float32
    assert float(top[0].diff) == 2.5
    dx = backward(layer, bottom, top)[0]
    assert dx.dtype == np.float32
    ref = np_softmax(x.astype(np.float64))
    ref[np.arange(3), y] -= 1
    np.testing.assert_allclose(dx, 2.5 * ref / 3, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm,divisor", [
    ("normalization: FULL", 2 * 3), ("normalization: VALID", 4),
    ("normalization: BATCH_SIZE", 2), ("normalization: NONE", 1),
    ("normalize: false", 2), ("normalize: true", 4), ("", 4)])
def test_swl_normalization(norm, divisor):
    x = rand(2, 5, 3)
    y = np.array([[1, 2, 4], [2, 0, 3]])          # two labels 2 ignored
    layer, bottom, top = forward(
        SWL + f"loss_param {{ ignore_label: 2 {norm} }}", [x, y])
    p = np_softmax(x)
    mask = y != 2
    nll = -np.log(np.take_along_axis(p, y[:, None], 1)[:, 0])[mask].sum()
    assert np.isclose(top[0].data, nll / divisor)
    dx = backward(layer, bottom, top, weight=1.0)[0]
    assert np.all(dx[:, :, ~mask[0]][0] == 0) and np.all(dx[1, :, 0] == 0)


def test_swl_all_ignored_divides_by_one():
    layer, bottom, top = forward(SWL + "loss_param { ignore_label: 1 }",
                                 [rand(3, 4), np.ones(3)])
    assert top[0].data == 0
    assert np.all(backward(layer, bottom, top)[0] == 0)


def test_swl_axis_and_prob_top():
    x = rand(2, 3, 4)
    y = np.array([[0, 3, 1], [2, 2, 0]])
    layer, bottom, top = forward(
        SWL + 'top: "prob" softmax_param { axis: -1 }', [x, y])
    p = np_softmax(x, axis=2)
    np.testing.assert_allclose(top[1].data, p)
    nll = -np.log(np.take_along_axis(p, y[..., None], 2)).mean()
    assert np.isclose(top[0].data, nll)


@pytest.mark.parametrize("extra", ["", "softmax_param { axis: 2 }",
                                   "loss_param { ignore_label: 0 "
                                   "normalization: FULL }"])
def test_swl_gradient(extra):
    x = rand(2, 3, 4, seed=3)
    y = np.array([[0, 1, 2, 1], [2, 0, 0, 1]]) if "axis" not in extra else \
        np.array([[0, 3, 2], [1, 1, 3]])
    check_gradient(SWL + extra, [x, y], check_bottoms=[0])


def test_swl_errors():
    with pytest.raises(LayerError,
                       match=r"number of labels.*\(2, 3\).*\(2, 2\)"):
        make_layer(SWL, [rand(2, 3), np.zeros((2, 2))])
    layer, bottom, top = make_layer(SWL, [rand(2, 3), np.array([0, 3])])
    with pytest.raises(LayerError, match=r"label 3 is out of range.*\[0, 3\)"):
        run_forward(layer, bottom, top)
    layer, bottom, top = make_layer(SWL, [rand(2, 3), np.array([0, -1])])
    with pytest.raises(LayerError, match="label -1"):
        run_forward(layer, bottom, top)
    layer, bottom, top = forward(SWL, [rand(2, 3), np.array([0, 1])])
    with pytest.raises(LayerError, match="cannot backpropagate to bottom 1"):
        layer.backward(top, [True, True], bottom)
    with pytest.raises(LayerError, match="at most 2"):
        make_layer(SWL + 'top: "a" top: "b"', [rand(2, 3), np.zeros(2)])


def test_swl_ignore_label_outside_range_is_fine():
    layer, bottom, top = forward(SWL + "loss_param { ignore_label: -1 }",
                                 [rand(3, 3), np.array([0, -1, 2])])
    assert np.isfinite(top[0].data)


# -- EuclideanLoss ------------------------------------------------------------
EUC = 'type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"'


def test_euclidean_forward_backward():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[0.0, 2.0], [1.0, 1.0]])
    layer, bottom, top = forward(EUC, [a, b])
    assert np.isclose(top[0].data, (1 + 0 + 4 + 9) / 4)
    da, db = backward(layer, bottom, top, [True, True], weight=2.0)
    np.testing.assert_allclose(da, 2.0 * (a - b) / 2)
    np.testing.assert_allclose(db, -da)


def test_euclidean_gradient_both_bottoms():
    check_gradient(EUC, [rand(3, 2, 2), rand(3, 4, seed=1)])


def test_euclidean_propagate_down_and_errors():
    layer, bottom, top = forward(EUC, [rand(2, 3), rand(2, 3, seed=1)])
    bottom[0].diff[...] = 7
    backward(layer, bottom, top, [False, True])
    assert np.all(bottom[0].diff == 7)
    with pytest.raises(LayerError,
                       match=r"same dimension.*\(2, 3\).*\(2, 4\)"):
        make_layer(EUC, [rand(2, 3), rand(2, 4)])
    with pytest.raises(LayerError, match="same first dimension"):
        make_layer(EUC, [rand(2, 3), rand(3, 2)])


# -- SigmoidCrossEntropyLoss --------------------------------------------------
SCE = 'type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '


def sce_ref(x, t):
    s = 1 / (1 + np.exp(-x))
    return -(t * np.log(s) + (1 - t) * np.log(1 - s))


def test_sigmoid_ce_forward_default_batch_size():
    x, t = rand(3, 4) * 3, np.random.default_rng(1).uniform(size=(3, 4))
    layer, bottom, top = forward(SCE, [x, t])
    assert np.isclose(top[0].data, sce_ref(x, t).sum() / 3)
    dx = backward(layer, bottom, top, weight=1.0)[0]
    np.testing.assert_allclose(dx, (1 / (1 + np.exp(-x)) - t) / 3)


def test_sigmoid_ce_stable_at_large_scores():
    layer, bottom, top = forward(SCE, [np.array([[800.0, -800.0]]),
                                       np.array([[1.0, 0.0]])])
    assert top[0].data == 0
    layer, bottom, top = forward(SCE, [np.array([[-800.0]]),
                                       np.array([[1.0]])])
    assert np.isclose(top[0].data, 800)


def test_sigmoid_ce_ignore_label_valid():
    x = rand(2, 3)
    t = np.array([[1, 0, -1], [-1, 1, 1]], float)
    layer, bottom, top = forward(
        SCE + "loss_param { ignore_label: -1 normalization: VALID }", [x, t])
    keep = t != -1
    assert np.isclose(top[0].data, sce_ref(x, t)[keep].sum() / 4)
    dx = backward(layer, bottom, top, weight=1.0)[0]
    assert np.all(dx[~keep] == 0)


def test_sigmoid_ce_gradient_and_errors():
    t = np.random.default_rng(2).uniform(size=(2, 3, 2))
    check_gradient(SCE, [rand(2, 3, 2), t], check_bottoms=[0])
    with pytest.raises(LayerError, match="same count"):
        make_layer(SCE, [rand(2, 3), rand(2, 4)])


# -- HingeLoss ----------------------------------------------------------------
def hinge(norm):
    return ('type: "HingeLoss" bottom: "x" bottom: "y" top: "loss" '
            f'hinge_loss_param {{ norm: {norm} }}')


def test_hinge_forward_backward_hand():
    x = np.array([[0.5, -2.0, 0.2], [3.0, 1.0, -0.5]])
    y = np.array([0, 1])
    # margins max(0, 1 + s): row 0: [0.5, 0, 1.2]; row 1: [4, 0, 0.5]
    m = np.array([[0.5, 0.0, 1.2], [4.0, 0.0, 0.5]])
    sign = np.array([[-1, 1, 1], [1, -1, 1]])
    layer, bottom, top = forward(hinge("L1"), [x, y])
    assert np.isclose(top[0].data, m.sum() / 2)
    dx = backward(layer, bottom, top, weight=1.0)[0]
    np.testing.assert_allclose(dx, sign * (m > 0) / 2)
    layer, bottom, top = forward(hinge("L2"), [x, y])
    assert np.isclose(top[0].data, (m ** 2).sum() / 2)
    dx = backward(layer, bottom, top, weight=1.0)[0]
    np.testing.assert_allclose(dx, sign * 2 * m / 2)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient_away_from_kinks(norm):
    x = rand(4, 5, seed=5)
    y = np.array([0, 4, 2, 1])
    s = x.copy()
    s[np.arange(4), y] *= -1
    # keep every margin 1 + s at least 0.1 away from the kink at 0
    x = np.where(np.abs(1 + s) < 0.1, x + 0.3 * np.sign(x), x)
    s = x.copy()
    s[np.arange(4), y] *= -1
    assert np.abs(1 + s).min() > 0.05
    check_gradient(hinge(norm), [x, y], check_bottoms=[0])


def test_hinge_errors():
    with pytest.raises(LayerError, match=r"one label per item \(2\)"):
        make_layer(hinge("L1"), [rand(2, 3), np.zeros((2, 2))])
    layer, bottom, top = make_layer(hinge("L1"),
                                    [rand(2, 3), np.array([0, 5])])
    with pytest.raises(LayerError, match="label 5 is out of range"):
        run_forward(layer, bottom, top)


# -- InfogainLoss -------------------------------------------------------------
IG = 'type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "loss" '


def infogain_ref(x, y, H, axis=1):
    p = np.moveaxis(np_softmax(x, axis), axis, -1).reshape(-1, H.shape[0])
    y = y.reshape(-1)
    return -(H[y] * np.log(p)).sum()


def test_infogain_identity_equals_softmax_loss():
    x, y = rand(4, 3), np.array([0, 2, 1, 1])
    _, _, t1 = forward(IG, [x, y, np.eye(3)])
    l2, b2, t2 = forward(SWL, [x, y])
    assert np.isclose(t1[0].data, t2[0].data)
    l1, b1, t1 = forward(IG, [x, y, np.eye(3)])
    np.testing.assert_allclose(backward(l1, b1, t1, [True, False, False])[0],
                               backward(l2, b2, t2)[0])


def test_infogain_forward_axis_ignore_and_prob_top():
    x = rand(2, 3, 4)
    y = np.array([[0, 3, 1], [3, 2, 2]])
    H = np.random.default_rng(4).uniform(size=(4, 4))
    layer, bottom, top = forward(
        IG + 'top: "prob" infogain_loss_param { axis: 2 } '
        'loss_param { ignore_label: 3 }', [x, y, H])
    keep = (y != 3).reshape(-1)
    p = np_softmax(x, 2).reshape(-1, 4)
    yy = np.where(keep, y.reshape(-1), 0)
    want = -(H[yy] * np.log(p))[keep].sum() / keep.sum()
    assert np.isclose(top[0].data, want)
    np.testing.assert_allclose(top[1].data, np_softmax(x, 2))
    dx = backward(layer, bottom, top, [True, False, False], 1.0)[0]
    assert np.all(dx.reshape(-1, 4)[~keep] == 0)


def test_infogain_matrix_from_source(tmp_path):
    H = np.random.default_rng(6).uniform(size=(3, 3))
    path = tmp_path / "H.binaryproto"
    write_binaryproto(str(path), H.reshape(1, 1, 3, 3))
    x, y = rand(4, 3), np.array([0, 2, 1, 1])
    text = ('type: "InfogainLoss" bottom: "x" bottom: "y" top: "loss" '
            f'infogain_loss_param {{ source: "{path}" }}')
    layer, bottom, top = forward(text, [x, y])
    want = infogain_ref(x, y, H.astype(np.float32)) / 4
    assert np.isclose(top[0].data, want, rtol=1e-6)
    check_gradient(text, [x, y], check_bottoms=[0])


def test_infogain_gradient():
    H = np.random.default_rng(7).uniform(size=(3, 3))
    check_gradient(IG + "loss_param { ignore_label: 1 }",
                   [rand(2, 3, 2), np.array([[0, 1], [2, 2]]), H],
                   check_bottoms=[0])


def test_infogain_errors(tmp_path):
    with pytest.raises(LayerError, match="source must be specified"):
        make_layer('type: "InfogainLoss" bottom: "x" bottom: "y" top: "l"',
                   [rand(2, 3), np.zeros(2)])
    with pytest.raises(LayerError, match=r"3x3 = 9 values.*\(2, 2\)"):
        make_layer(IG, [rand(2, 3), np.zeros(2), np.eye(2)])
    with pytest.raises(UnsupportedError, match="softmax_param.axis"):
        make_layer(IG + "softmax_param { axis: 0 }",
                   [rand(2, 3), np.zeros(2), np.eye(3)])
    layer, bottom, top = forward(IG, [rand(2, 3), np.zeros(2), np.eye(3)])
    with pytest.raises(LayerError, match="cannot backpropagate to bottom 2"):
        layer.backward(top, [True, False, True], bottom)


# -- MultinomialLogisticLoss --------------------------------------------------
MLL = 'type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "loss"'


def test_multinomial_logistic_forward_backward_and_clip():
    p = np.array([[0.2, 0.8], [0.0, 1.0]])
    y = np.array([0, 0])
    layer, bottom, top = forward(MLL, [p, y])
    # NOTE(caffe): log clipped at 1e-20
    assert np.isclose(top[0].data, -(np.log(0.2) + np.log(1e-20)) / 2)
    dp = backward(layer, bottom, top, weight=1.0)[0]
    np.testing.assert_allclose(dp, [[-1 / 0.2 / 2, 0], [-1e20 / 2, 0]])


def test_multinomial_logistic_gradient_and_errors():
    p = np.random.default_rng(8).uniform(0.1, 1, size=(3, 4))
    check_gradient(MLL, [p, np.array([3, 0, 1])], check_bottoms=[0])
    with pytest.raises(LayerError, match="one label per item"):
        make_layer(MLL, [p, np.zeros((3, 2))])


# -- ContrastiveLoss ----------------------------------------------------------
def contrastive(margin, legacy):
    return ('type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" '
            f'top: "loss" contrastive_loss_param {{ margin: {margin} '
            f'legacy_version: {str(legacy).lower()} }}')


def test_contrastive_hand_computed():
    a = np.array([[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    b = np.zeros((3, 2))
    s = np.array([1, 0, 0])                      # d = 3, 0, 1
    layer, bottom, top = forward(contrastive(2, False), [a, b, s])
    # (9 + (2-0)^2 + (2-1)^2) / (2 * 3)
    assert np.isclose(top[0].data, 14 / 6)
    da, db, _ = backward(layer, bottom, top, [True, True, False], 1.0)
    # NOTE(caffe): divides by d + 1e-4
    np.testing.assert_allclose(da, [[1.0, 0], [0, 0], [-1 / 1.0001 / 3, 0]])
    np.testing.assert_allclose(db, -da)
    layer, bottom, top = forward(contrastive(2, True), [a, b, s])
    assert np.isclose(top[0].data, (9 + 2 + 1) / 6)
    da = backward(layer, bottom, top, [True, True, False], 1.0)[0]
    np.testing.assert_allclose(da, [[1.0, 0], [0, 0], [-1 / 3, 0]])


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_gradient_away_from_margin(legacy):
    gen = np.random.default_rng(9)
    a, b = gen.standard_normal((6, 3)), gen.standard_normal((6, 3))
    s = np.array([1, 0, 0, 1, 0, 0])
    d2 = ((a - b) ** 2).sum(1)
    # margin well clear of every distance: some pairs inside, some outside
    margin = float(np.median(d2 if legacy else np.sqrt(d2)) + 0.05)
    ref = d2 if legacy else np.sqrt(d2)
    assert np.abs(ref - margin).min() > 0.01
    # the d + 1e-4 quirk is ~1e-4 / d relative: allow it
    check_gradient(contrastive(margin, legacy), [a, b, s],
                   check_bottoms=[0, 1], rtol=1e-4 if legacy else 5e-4)


def test_contrastive_errors():
    with pytest.raises(LayerError, match="same shape"):
        make_layer(contrastive(1, False), [rand(2, 3), rand(2, 4), np.ones(2)])
    with pytest.raises(LayerError, match="one similarity label per pair"):
        make_layer(contrastive(1, False), [rand(2, 3), rand(2, 3), np.ones(3)])
    with pytest.raises(LayerError, match="3 bottom"):
        make_layer('type: "ContrastiveLoss" bottom: "a" bottom: "b" top: "l"',
                   [rand(2, 3), rand(2, 3)])


def test_label_bottoms_refuse_forced_backward():
    layer, _, _ = make_layer(contrastive(1, False),
                             [rand(2, 3), rand(2, 3), np.ones(2)])
    assert [layer.allow_force_backward(i) for i in range(3)] == \
        [True, True, False]
    layer, _, _ = make_layer(SWL, [rand(2, 3), np.zeros(2)])
    assert [layer.allow_force_backward(i) for i in range(2)] == [True, False]


# -- Accuracy -----------------------------------------------------------------
ACC = 'type: "Accuracy" bottom: "x" bottom: "y" top: "acc" '


def test_accuracy_top1_topk_and_shapes():
    x = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05 + 1e-3],
                  [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    y = np.array([1, 2, 0, 0])
    layer, bottom, top = forward(ACC, [x, y])
    assert top[0].shape == () and top[0].data == 0.5
    _, _, top = forward(ACC + "accuracy_param { top_k: 2 }", [x, y])
    assert top[0].data == 0.75
    _, _, top = forward(ACC + "accuracy_param { top_k: 3 }", [x, y])
    assert top[0].data == 1.0


def test_accuracy_ties_count_against_the_true_class():
    # NOTE(caffe): BVLC master counts classes scoring >= the true class.
    _, _, top = forward(ACC, [np.array([[1.0, 1.0, 0.0]]), np.array([1])])
    assert top[0].data == 0.0


def test_accuracy_per_class_ignore_and_axis():
    x = rand(2, 3, 4, seed=11)          # classes on axis 2
    y = np.array([[0, 1, 3], [3, 1, 1]])
    layer, bottom, top = forward(
        ACC + 'top: "per_class" accuracy_param { axis: 2 ignore_label: 3 }',
        [x, y])
    assert top[1].shape == (4,)
    pred = x.argmax(axis=2)
    keep = y != 3
    assert np.isclose(top[0].data, (pred == y)[keep].mean())
    for c in range(4):
        sel = keep & (y == c)
        want = (pred == y)[sel].mean() if sel.any() else 0.0
        assert np.isclose(top[1].data[c], want), c
    assert top[1].data[2] == 0 and top[1].data[3] == 0   # absent classes


def test_accuracy_all_ignored_is_zero_and_no_backward():
    layer, bottom, top = forward(ACC + "accuracy_param { ignore_label: 0 }",
                                 [rand(3, 2), np.zeros(3)])
    assert top[0].data == 0
    with pytest.raises(UnsupportedError, match="no backward"):
        layer.backward(top, [True, False], bottom)


def test_accuracy_errors():
    with pytest.raises(LayerError, match=r"top_k \(4\).*number of classes"):
        make_layer(ACC + "accuracy_param { top_k: 4 }",
                   [rand(2, 3), np.zeros(2)])
    with pytest.raises(LayerError, match="number of labels"):
        make_layer(ACC, [rand(2, 3, 2), np.zeros(2)])
    layer, bottom, top = make_layer(ACC, [rand(2, 3), np.array([0, 3])])
    with pytest.raises(LayerError, match="label 3 is out of range"):
        run_forward(layer, bottom, top)
