"""Batch-separable layers run as clones on slices of the batch
(protonet/batch_split.py): the same numbers as whole layers, forward and
backward, against real Caffe's blobs too; and the cases that must not
split."""

import json
import os
import re

import numpy as np
import pytest

import protonet
from caffe_ref import ROOT, assert_close, case_names
from protonet import batch_split, caffe_pb2, io
from protonet.errors import NetError, ProtonetError
from protonet.layer import Layer, register
from protonet.net import Net


@pytest.fixture
def split(monkeypatch):
    """Two worker threads, every run split however small."""
    monkeypatch.setenv("PROTONET_THREADS", "2")
    monkeypatch.setenv("PROTONET_BATCH_SPLIT", "1")
    monkeypatch.setattr(batch_split, "MIN_ELEMENTS", 0)


def _split_layers(net):
    return [net.layer_names[i] for i, s in net._split_at.items()
            if s is not None]


@pytest.mark.parametrize("name", case_names("nets"))
def test_split_forward_matches_caffe(name, split):
    folder = os.path.join(ROOT, "nets", name)
    arr = np.load(os.path.join(folder, "io.npz"))
    meta = json.load(open(os.path.join(folder, "meta.json")))
    net = Net(os.path.join(folder, "net.prototxt"),
              os.path.join(folder, "weights.caffemodel"), protonet.TEST)
    for n in meta["inputs"]:
        net.blobs[n].data[...] = arr["blob__" + n]
    net.forward()
    assert any(t == "Convolution" for t in (
        net.layers[net.layer_names.index(n)].type
        for n in _split_layers(net)))
    for n in meta["outputs"]:
        want = arr["blob__" + n]
        assert_close(net.blobs[n].data, want, f"{name}: {n}", rtol=1e-4,
                     atol=1e-5 * max(float(np.abs(want).max()), 1e-30))


NET = """
name: 'mix'
force_backward: true
layer { name: 'data' type: 'Input' top: 'data'
        input_param { shape { dim: 5 dim: 6 dim: 9 dim: 9 } } }
layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1'
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
          weight_filler { type: 'gaussian' std: 0.3 }
          bias_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'bn' type: 'BatchNorm' bottom: 'conv1' top: 'conv1'
        batch_norm_param { use_global_stats: true } }
layer { name: 'scale' type: 'Scale' bottom: 'conv1' top: 'conv1'
        scale_param { bias_term: true filler { type: 'gaussian' std: 0.5 }
          bias_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'conv1' top: 'conv1' }
layer { name: 'pool' type: 'Pooling' bottom: 'conv1' top: 'pool'
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: 'lrn' type: 'LRN' bottom: 'pool' top: 'lrn'
        lrn_param { local_size: 3 } }
layer { name: 'c2' type: 'Convolution' bottom: 'lrn' top: 'c2'
        convolution_param { num_output: 8 kernel_size: 1 group: 2
          weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'prelu' type: 'PReLU' bottom: 'c2' top: 'c2'
        prelu_param { filler { type: 'constant' value: 0.2 } } }
layer { name: 'sum' type: 'Eltwise' bottom: 'lrn' bottom: 'c2' top: 'sum' }
layer { name: 'cat' type: 'Concat' bottom: 'sum' bottom: 'pool' top: 'cat' }
layer { name: 'ave' type: 'Pooling' bottom: 'cat' top: 'ave'
        pooling_param { pool: AVE global_pooling: true } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'ave' top: 'ip'
        inner_product_param { num_output: 3
          weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'sig' type: 'Sigmoid' bottom: 'ip' top: 'out' }
"""


def _run(monkeypatch, mode, text=NET, phase=protonet.TRAIN, passes=1):
    monkeypatch.setenv("PROTONET_BATCH_SPLIT", mode)
    protonet.set_random_seed(3)
    net = Net(io.parse_net_text(text), phase=phase, dtype=np.float64)
    bn = net.params.get("bn")
    if bn is not None:
        bn[0].data[...] = np.linspace(-1, 1, 8)
        bn[1].data[...] = np.linspace(0.5, 2, 8)
        bn[2].data[...] = 1
    net.blobs["data"].data[...] = np.random.RandomState(1).randn(
        *net.blobs["data"].shape)
    for _ in range(passes):
        net.forward()
        for name in net.outputs:
            net.blobs[name].diff[...] = np.random.RandomState(2).randn(
                *net.blobs[name].shape)
        net.backward()
    return net


def _compare(a, b):
    for name in a.blobs:
        np.testing.assert_allclose(b.blobs[name].data, a.blobs[name].data,
                                   rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(b.blobs[name].diff, a.blobs[name].diff,
                                   rtol=1e-12, atol=1e-12, err_msg=name)
    for name in a.params:
        for j, (pa, pb) in enumerate(zip(a.params[name], b.params[name])):
            np.testing.assert_allclose(pb.diff, pa.diff, rtol=1e-11,
                                       atol=1e-12, err_msg=f"{name}[{j}]")


@pytest.mark.parametrize("passes", [1, 2])  # 2: param diffs accumulate
def test_split_equals_whole_forward_and_backward(monkeypatch, split, passes):
    whole = _run(monkeypatch, "0", passes=passes)
    assert _split_layers(whole) == []
    parts = _run(monkeypatch, "1", passes=passes)
    # Everything separable before the InnerProduct runs split, in place
    # layers and the Split of the fanned-out blobs included.
    assert _split_layers(parts) == [
        "conv1", "bn", "scale", "relu", "pool", "pool_pool_0_split", "lrn",
        "lrn_lrn_0_split", "c2", "prelu", "sum", "cat", "ave", "sig"]
    _compare(whole, parts)


def test_split_in_inference_memory_mode(monkeypatch, split):
    whole = _run(monkeypatch, "0", phase=protonet.TEST)
    monkeypatch.setenv("PROTONET_BATCH_SPLIT", "1")
    net = Net(io.parse_net_text(NET), phase=protonet.TEST, dtype=np.float64,
              memory="inference")
    for name, blobs in whole.params.items():  # float64: no caffemodel
        for dst, src in zip(net.params[name], blobs):
            dst.data[...] = src.data
    net.blobs["data"].data[...] = whole.blobs["data"].data
    net.forward()
    assert "conv1" in _split_layers(net)
    np.testing.assert_allclose(net.blobs["out"].data,
                               whole.blobs["out"].data, rtol=1e-12)


def test_batch_statistics_and_dropout_run_whole(monkeypatch, split):
    text = NET.replace("use_global_stats: true", "use_global_stats: false")
    text = text.replace(
        "layer { name: 'relu' type: 'ReLU' bottom: 'conv1' top: 'conv1' }",
        "layer { name: 'drop' type: 'Dropout' bottom: 'conv1' top: 'conv1' }")
    net = _run(monkeypatch, "1", text=text)
    done = _split_layers(net)
    assert "bn" not in done and "drop" not in done
    assert "conv1" in done and "pool" in done


def test_one_image_or_no_threads_run_whole(monkeypatch, split):
    one = NET.replace("dim: 5 dim: 6", "dim: 1 dim: 6")
    assert _split_layers(_run(monkeypatch, "1", text=one)) == []
    monkeypatch.setenv("PROTONET_THREADS", "1")
    assert _split_layers(_run(monkeypatch, "1")) == []


def test_hooks_see_every_layer_whole(monkeypatch, split):
    net = Net(io.parse_net_text(NET), phase=protonet.TEST)
    seen = []
    net.after_forward(seen.append)
    net.forward()
    assert seen == list(range(len(net.layers)))
    assert _split_layers(net) == []


def test_solver_steps_match(monkeypatch, split, tmp_path):
    def train(mode):
        monkeypatch.setenv("PROTONET_BATCH_SPLIT", mode)
        protonet.set_random_seed(5)
        sp = caffe_pb2.SolverParameter(
            net_param=io.parse_net_text(NET.replace(
                "layer { name: 'sig' type: 'Sigmoid' bottom: 'ip' top: 'out' }",
                "layer { name: 'label' type: 'Input' top: 'label' "
                "input_param { shape { dim: 5 } } }\n"
                "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' "
                "bottom: 'label' top: 'loss' }")),
            base_lr=0.1, lr_policy="fixed", momentum=0.9, weight_decay=1e-3,
            max_iter=3, display=0, snapshot_after_train=False,
            snapshot_prefix=str(tmp_path / mode))
        solver = protonet.get_solver(sp)
        net = solver.net
        net.blobs["data"].data[...] = np.random.RandomState(1).randn(
            *net.blobs["data"].shape)
        net.blobs["label"].data[...] = [0, 1, 2, 1, 0]
        solver.step(3)
        return net
    whole, parts = train("0"), train("1")
    assert "conv1" in _split_layers(parts)
    for name in whole.params:
        for pa, pb in zip(whole.params[name], parts.params[name]):
            np.testing.assert_allclose(pb.data, pa.data, rtol=1e-4,
                                       atol=1e-6, err_msg=name)



WINOGRAD_NET = """
layer { name: 'data' type: 'Input' top: 'data'
        input_param { shape { dim: 4 dim: 64 dim: 8 dim: 8 } } }
layer { name: 'label' type: 'Input' top: 'label'
        input_param { shape { dim: 4 } } }
layer { name: 'c1' type: 'Convolution' bottom: 'data' top: 'c1'
        convolution_param { num_output: 64 kernel_size: 3 pad: 1
          weight_filler { type: 'gaussian' std: 0.05 } } }
layer { name: 'r1' type: 'ReLU' bottom: 'c1' top: 'c1' }
layer { name: 'c2' type: 'Convolution' bottom: 'c1' top: 'c2'
        convolution_param { num_output: 64 kernel_size: 3 pad: 1
          weight_filler { type: 'gaussian' std: 0.05 } } }
layer { name: 'ave' type: 'Pooling' bottom: 'c2' top: 'ave'
        pooling_param { pool: AVE global_pooling: true } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'ave' top: 'ip'
        inner_product_param { num_output: 3
          weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label'
        top: 'loss' }
"""


def test_solver_steps_with_winograd_match_gemm_path(monkeypatch, split):
    """Training steps through Winograd layers (forward and input gradient),
    whole and split over clones that share the transformed weights, match
    the GEMM path: each update's new weights are transformed (in place)
    before the next forward."""
    from protonet.layers import conv_products

    def train(mode, winograd):
        monkeypatch.setenv("PROTONET_BATCH_SPLIT", mode)
        monkeypatch.setattr(conv_products, "WINOGRAD_MIN_CHANNELS",
                            64 if winograd else 1 << 30)
        protonet.set_random_seed(7)
        sp = caffe_pb2.SolverParameter(
            net_param=io.parse_net_text(WINOGRAD_NET), base_lr=0.5,
            lr_policy="fixed", momentum=0.9, max_iter=4, display=0,
            snapshot_after_train=False)
        solver = protonet.get_solver(sp)
        net = solver.net
        assert all(net.layers[net.layer_names.index(n)]._use_wino is winograd
                   for n in ("c1", "c2"))
        net.blobs["data"].data[...] = np.random.RandomState(1).randn(
            *net.blobs["data"].shape)
        net.blobs["label"].data[...] = [0, 1, 2, 1]
        solver.step(4)
        return net
    gemm = train("0", False)
    for mode in ("0", "1"):
        net = train(mode, True)
        if mode == "1":
            assert {"c1", "c2"} <= set(_split_layers(net))
        for name in ("c1", "c2", "ip"):
            for pa, pb in zip(gemm.params[name], net.params[name]):
                moved = np.abs(pa.data).max()
                np.testing.assert_allclose(pb.data, pa.data, rtol=0,
                                           atol=2e-5 * moved,
                                           err_msg=f"{name} split={mode}")

@register("TestBadSplit")
class _BadSplitLayer(Layer):
    """Claims to be batch-separable, but its top's second axis depends on
    the batch size (12 / N): a slice's clone shapes its top differently
    from the slice of the whole top, which the splitter must refuse."""

    def reshape(self, bottom, top):
        n = bottom[0].shape[0]
        top[0].reshape((n, 12 // n))

    def forward(self, bottom, top):
        top[0].data[...] = 0

    def batch_separable(self, bottom):
        return True


def test_a_wrong_batch_separable_claim_is_an_error(monkeypatch, split):
    text = """
    layer { name: 'data' type: 'Input' top: 'data'
            input_param { shape { dim: 4 dim: 3 } } }
    layer { name: 'bad' type: 'TestBadSplit' bottom: 'data' top: 'out' }
    """
    net = Net(io.parse_net_text(text), phase=protonet.TEST)
    with pytest.raises(NetError, match="TestBadSplit layer 'bad'.*batch"):
        net.forward()


def test_switch_off(monkeypatch):
    for value, on in (("0", False), ("off", False), ("1", True), ("", True)):
        monkeypatch.setenv("PROTONET_BATCH_SPLIT", value)
        assert batch_split.enabled() is on


def test_clones_share_the_winograd_weights(monkeypatch, split):
    text = """
    layer { name: 'data' type: 'Input' top: 'data'
            input_param { shape { dim: 4 dim: 64 dim: 16 dim: 16 } } }
    layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
            convolution_param { num_output: 64 kernel_size: 3 pad: 1
              weight_filler { type: 'gaussian' std: 0.05 } } }
    """
    whole = _run(monkeypatch, "0", text, phase=protonet.TEST)
    net = _run(monkeypatch, "1", text, phase=protonet.TEST)
    clones = net._splitter._clones[net.layer_names.index("conv")]
    assert len(clones) == 2 and all(c._use_wino for c in clones)
    caches = {id(c._wino._cache) for c in clones}
    assert caches == {id(net.layers[1]._wino._cache)}
    np.testing.assert_allclose(net.blobs["conv"].data, whole.blobs["conv"].data,
                               rtol=1e-4, atol=1e-5)
    # A weight change is seen by every clone (one new transform).
    net.params["conv"][0].data[...] *= 2
    net.forward()
    np.testing.assert_allclose(net.blobs["conv"].data,
                               2 * whole.blobs["conv"].data,
                               rtol=1e-4, atol=1e-5)


FORK_NET = """
name: 'mobile'
force_backward: true
layer { name: 'data' type: 'Input' top: 'data'
        input_param { shape { dim: 4 dim: 4 dim: 7 dim: 7 } } }
layer { name: 'dw' type: 'ConvolutionDepthwise' bottom: 'data' top: 'dw'
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2
          weight_filler { type: 'gaussian' std: 0.4 } } }
layer { name: 'r6' type: 'ReLU6' bottom: 'dw' top: 'dw' }
layer { name: 'hs' type: 'HardSwish' bottom: 'dw' top: 'hs' }
layer { name: 'pw' type: 'Convolution' bottom: 'hs' top: 'pw'
        convolution_param { num_output: 5 kernel_size: 1
          weight_filler { type: 'gaussian' std: 0.4 } } }
layer { name: 'sig' type: 'Sigmoid' bottom: 'pw' top: 'out' }
"""


def test_fork_layers_split_like_whole(monkeypatch, split):
    whole = _run(monkeypatch, "0", text=FORK_NET, passes=2)
    parts = _run(monkeypatch, "1", text=FORK_NET, passes=2)
    assert _split_layers(parts) == ["dw", "r6", "hs", "pw", "sig"]
    _compare(whole, parts)


def _build_and_run(text, phase, mode, monkeypatch):
    from protonet.errors import ProtonetError
    monkeypatch.setenv("PROTONET_BATCH_SPLIT", mode)
    protonet.set_random_seed(0)
    try:
        net = Net(io.parse_net_text(text), phase=phase, dtype=np.float64)
        for b in net.blobs.values():
            b.data[...] = np.random.RandomState(0).rand(*b.shape) \
                if b.count else 0
        with np.errstate(all="ignore"):
            net.forward()
            for n in net.outputs:
                net.blobs[n].diff[...] = 1
            net.backward()
    except ProtonetError:
        return None
    return net


def test_generated_nets_split_like_whole(monkeypatch, split):
    """Differential fuzzing: random small nets (tests/test_fuzz.py's
    generator) give the same blobs, diffs and parameter gradients split and
    whole, or fail alike.  A long run (1,500 nets) passed locally."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st
    import test_fuzz
    monkeypatch.setenv("PROTONET_MAX_MEMORY", "64M")
    seen = []

    # A batch of at least two, so that most generated nets can split.
    nets = test_fuzz.small_net().map(
        lambda t: re.sub(r"dim: (\d+)", lambda m: f"dim: {int(m[1]) + 2}",
                         t, count=1))

    @hypothesis.settings(max_examples=300, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(nets, st.sampled_from([protonet.TRAIN, protonet.TEST]))
    def check(text, phase):
        a = _build_and_run(text, phase, "0", monkeypatch)
        b = _build_and_run(text, phase, "1", monkeypatch)
        assert (a is None) == (b is None), text
        if a is None:
            return
        seen.append(bool(_split_layers(b)))
        for n in a.blobs:
            for got, want in ((b.blobs[n].data, a.blobs[n].data),
                              (b.blobs[n].diff, a.blobs[n].diff)):
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12,
                                           equal_nan=True, err_msg=text)
        for n in a.params:
            for pa, pb in zip(a.params[n], b.params[n]):
                np.testing.assert_allclose(pb.diff, pa.diff, rtol=1e-9,
                                           atol=1e-12, equal_nan=True,
                                           err_msg=text)
    check()
    assert sum(seen) >= 5, seen  # the generated nets did split


def test_switch_value_that_is_no_switch_is_an_error(monkeypatch):
    """Like every PROTONET_* variable (protonet.envvars): a typo is an
    error naming the variable, not a silent 'on'."""
    monkeypatch.setenv("PROTONET_BATCH_SPLIT", "of")
    with pytest.raises(ProtonetError, match="PROTONET_BATCH_SPLIT='of'"):
        batch_split.enabled()
