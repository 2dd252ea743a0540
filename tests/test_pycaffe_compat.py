"""pycaffe compatibility: protonet used exactly as pycaffe's own tests use caffe.

Each group follows one file of python/caffe/test/ in BVLC Caffe (test_net,
test_solver, test_net_spec, test_io, test_layer_type_list, test_nccl,
test_coord_map); the Python layer tests are in test_pycaffe_python_layer.py and
the unmodified-script runs in test_pycaffe_scripts.py.  The nets are written
here from scratch; the calls are pycaffe's.
"""

import collections
import os

import numpy as np
import pytest
from google.protobuf import text_format

import protonet as caffe
from protonet import layers as L
from protonet import params as P
from protonet.coord_map import coord_map_from_to, crop
from protonet.errors import ProtonetError

N_OUT = 7


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def train_net_text(num_output=N_OUT):
    """DummyData -> Convolution -> InnerProduct -> SoftmaxWithLoss."""
    return f"""name: 'compat' force_backward: true
    layer {{ name: 'data' type: 'DummyData' top: 'data' top: 'label'
      dummy_data_param {{ num: 4 channels: 3 height: 5 width: 4
        num: 4 channels: 1 height: 1 width: 1
        data_filler {{ type: 'gaussian' std: 1 }} data_filler {{ type: 'constant' }} }} }}
    layer {{ name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
      param {{ decay_mult: 1 }} param {{ decay_mult: 0 }}
      convolution_param {{ num_output: 6 kernel_size: 3 pad: 2
        weight_filler {{ type: 'gaussian' std: 1 }}
        bias_filler {{ type: 'constant' value: 1.5 }} }} }}
    layer {{ name: 'ip' type: 'InnerProduct' bottom: 'conv' top: 'ip_out'
      inner_product_param {{ num_output: {num_output}
        weight_filler {{ type: 'gaussian' std: 0.5 }}
        bias_filler {{ type: 'constant' value: -2 }} }} }}
    layer {{ name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip_out'
      bottom: 'label' top: 'loss' }}
    """


@pytest.fixture
def net_file(tmp_path):
    return write(tmp_path, "train.prototxt", train_net_text())


@pytest.fixture
def net(net_file):
    np.random.seed(3)
    net = caffe.Net(net_file, caffe.TRAIN)         # legacy (model, phase) form
    label = net.blobs["label"]
    label.data[...] = np.random.randint(N_OUT, size=label.data.shape)
    return net


# ---------------------------------------------------------------------------
# test_net.py


def test_phase_constants_match_caffe_proto():
    assert (caffe.TRAIN, caffe.TEST) == (0, 1)
    assert caffe.TRAIN == caffe.proto.caffe_pb2.TRAIN
    assert caffe.TEST == caffe.caffe_pb2.TEST


def test_forward_backward_and_inputs_outputs(net):
    out = net.forward()
    assert list(out) == ["loss"] and np.isfinite(out["loss"])
    net.backward()
    assert net.inputs == [] and net.outputs == ["loss"]
    assert np.abs(net.params["conv"][0].diff).sum() > 0


def test_arrays_outlive_the_net(net):
    params = sum(map(list, net.params.values()), [])
    blobs = list(net.blobs.values())
    net.forward()
    loss = float(net.blobs["loss"].data)
    del net
    total = sum(p.data.sum() + p.diff.sum() for p in params)
    total += sum(b.data.sum() + b.diff.sum() for b in blobs)
    assert np.isfinite(total) and blobs[-1].data == np.float32(loss)


def test_layer_dict_follows_layer_names(net):
    assert list(net.layer_dict) == list(net._layer_names)
    assert list(net._layer_names) == ["data", "conv", "ip", "loss"]
    for i, name in enumerate(net._layer_names):
        assert net.layer_dict[name].type == net.layers[i].type
    assert [layer.type for layer in net.layers] == \
        ["DummyData", "Convolution", "InnerProduct", "SoftmaxWithLoss"]


def test_forward_start_end_runs_one_layer(net):
    conv = net.blobs["conv"]
    conv.data[...] = np.random.uniform(size=conv.data.shape).astype(np.float32)
    out = net.forward(start="ip", end="ip")
    assert "ip_out" in out
    W, b = net.params["ip"][0].data, net.params["ip"][1].data
    expected = conv.data.reshape(len(conv.data), -1) @ W.T + b
    np.testing.assert_allclose(net.blobs["ip_out"].data, expected, rtol=1e-4)


def test_backward_start_end_runs_one_layer(net):
    net.forward()
    top = net.blobs["ip_out"]
    g = np.random.uniform(size=top.diff.shape).astype(np.float32)
    top.diff[...] = g
    out = net.backward(start="ip", end="ip")
    assert "conv" in out
    expected = (g @ net.params["ip"][0].data).reshape(net.blobs["conv"].shape)
    np.testing.assert_allclose(net.blobs["conv"].diff, expected, rtol=1e-4,
                               atol=1e-5)


def test_clear_param_diffs(net):
    net.forward()
    net.backward()
    diff = net.params["conv"][0].diff
    assert np.abs(diff).max() > 0
    net.clear_param_diffs()
    assert not diff.any()                # cleared in place, same array


def test_top_and_bottom_names(net):
    assert net.top_names == collections.OrderedDict(
        [("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip_out"]),
         ("loss", ["loss"])])
    assert net.bottom_names == collections.OrderedDict(
        [("data", []), ("conv", ["data"]), ("ip", ["conv"]),
         ("loss", ["ip_out", "label"])])


def _assert_same_params(a, b):
    assert list(a.params) == list(b.params)
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            assert np.array_equal(pa.data, pb.data)


def test_save_then_load_in_every_constructor_form(net, net_file, tmp_path):
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    _assert_same_params(net, caffe.Net(net_file, weights, caffe.TRAIN))
    _assert_same_params(net, caffe.Net(net_file, caffe.TRAIN, weights=weights))
    _assert_same_params(net, caffe.Net(net_file, weights=weights,
                                       phase=caffe.TRAIN))
    fresh = caffe.Net(net_file, caffe.TRAIN)
    assert not np.array_equal(fresh.params["ip"][0].data,
                              net.params["ip"][0].data)
    fresh.copy_from(weights)
    _assert_same_params(net, fresh)


def test_save_hdf5_and_load_hdf5(net, net_file, tmp_path):
    path = str(tmp_path / "w.h5")
    net.save_hdf5(path)
    other = caffe.Net(net_file, caffe.TRAIN)
    other.load_hdf5(path)
    _assert_same_params(net, other)


def test_share_with_makes_params_views(net, net_file):
    other = caffe.Net(net_file, caffe.TRAIN)
    other.share_with(net)
    _assert_same_params(net, other)
    net.params["ip"][0].data[...] = 0.25
    assert np.all(other.params["ip"][0].data == 0.25)


def test_private_index_accessors(net):
    names = list(net._blob_names)
    assert names == list(net.blobs) and len(net._blobs) == len(names)
    assert net._inputs == [] and [names[i] for i in net._outputs] == ["loss"]
    assert [names[i] for i in net._bottom_ids(3)] == ["ip_out", "label"]
    assert [names[i] for i in net._top_ids(0)] == ["data", "label"]
    assert dict(zip(names, net._blob_loss_weights))["loss"] == 1
    assert net.blob_loss_weights["loss"] == 1
    assert net.blob_loss_weights["conv"] == 0
    loss = net._forward(0, len(net.layers) - 1)
    assert loss == pytest.approx(float(net.blobs["loss"].data))
    net._backward(len(net.layers) - 1, 0)
    assert np.abs(net.blobs["data"].diff).sum() > 0


LEVELS_NET = """
layer { name: 'data' type: 'DummyData' top: 'data'
  dummy_data_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: 'Any' type: 'InnerProduct' bottom: 'data' top: 'Any'
  inner_product_param { num_output: 1 } }
layer { name: 'Only0' type: 'InnerProduct' bottom: 'data' top: 'Only0'
  include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: 'Only1' type: 'InnerProduct' bottom: 'data' top: 'Only1'
  include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: 'AtLeast1' type: 'InnerProduct' bottom: 'data' top: 'AtLeast1'
  include { min_level: 1 } inner_product_param { num_output: 1 } }
layer { name: 'A' type: 'InnerProduct' bottom: 'data' top: 'A'
  include { stage: 'a' } inner_product_param { num_output: 1 } }
layer { name: 'AorB' type: 'InnerProduct' bottom: 'data' top: 'AorB'
  include { stage: 'a' } include { stage: 'b' } inner_product_param { num_output: 1 } }
layer { name: 'AandB' type: 'InnerProduct' bottom: 'data' top: 'AandB'
  include { stage: 'a' stage: 'b' } inner_product_param { num_output: 1 } }
"""


@pytest.mark.parametrize("kwargs, blobs", [
    ({}, ["Any", "Only0"]),
    ({"level": 1}, ["Any", "Only1", "AtLeast1"]),
    ({"stages": ["a"]}, ["Any", "Only0", "A", "AorB"]),
    ({"stages": ["b"]}, ["Any", "Only0", "AorB"]),
    ({"stages": ["a", "b"], "level": 1},
     ["Any", "Only1", "AtLeast1", "A", "AorB", "AandB"]),
])
def test_levels_and_stages_keywords(tmp_path, kwargs, blobs):
    path = write(tmp_path, "levels.prototxt", LEVELS_NET)
    net = caffe.Net(path, caffe.TEST, **kwargs)
    assert [b for b in net.blobs if "data" not in b] == blobs    # no splits


ALL_IN_ONE = """
layer { name: 'train_data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } }
  include { phase: TRAIN stage: 'train' } }
layer { name: 'val_data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } }
  include { phase: TEST stage: 'val' } }
layer { name: 'deploy_data' type: 'Input' top: 'data'
  input_param { shape { dim: 2 dim: 3 } } include { phase: TEST stage: 'deploy' } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 2 } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss'
  include { phase: TRAIN stage: 'train' } include { phase: TEST stage: 'val' } }
layer { name: 'pred' type: 'Softmax' bottom: 'ip' top: 'pred'
  include { phase: TEST stage: 'deploy' } }
"""


@pytest.mark.parametrize("phase, stage, inputs, outputs", [
    (caffe.TRAIN, "train", [], ["loss"]),
    (caffe.TEST, "val", [], ["loss"]),
    (caffe.TEST, "deploy", ["data"], ["pred"]),
])
def test_all_in_one_net(tmp_path, phase, stage, inputs, outputs):
    path = write(tmp_path, "all.prototxt", ALL_IN_ONE)
    net = caffe.Net(path, phase, stages=[stage])
    assert list(net.blobs["data"].shape) == [2, 3]
    assert net.inputs == inputs and net.outputs == outputs


DEPLOY = """name: 'deploy'
input: 'data' input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 5 kernel_size: 3
    weight_filler { type: 'gaussian' std: 0.3 } bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }
layer { name: 'fc' type: 'InnerProduct' bottom: 'conv' top: 'fc'
  inner_product_param { num_output: 3 weight_filler { type: 'xavier' } } }
layer { name: 'prob' type: 'Softmax' bottom: 'fc' top: 'prob' }
"""


@pytest.fixture
def deploy(tmp_path):
    return caffe.Net(write(tmp_path, "deploy.prototxt", DEPLOY), caffe.TEST)


def test_deploy_inputs_by_keyword_and_by_assignment(deploy):
    x = np.random.RandomState(0).randn(2, 3, 4, 4).astype(np.float32)
    assert deploy.inputs == ["data"] and deploy.outputs == ["prob"]
    by_kw = deploy.forward(data=x)["prob"].copy()
    deploy.blobs["data"].data[...] = x
    by_assign = deploy.forward()["prob"]
    np.testing.assert_array_equal(by_kw, by_assign)
    np.testing.assert_allclose(by_assign.sum(axis=1), 1, rtol=1e-5)
    out = deploy.forward(blobs=["conv"], data=x)
    assert set(out) == {"prob", "conv"} and (out["conv"] >= 0).all()


def test_backward_with_keyword_diffs(deploy):
    x = np.random.RandomState(1).randn(2, 3, 4, 4).astype(np.float32)
    deploy.forward(data=x)
    g = np.zeros((2, 3), np.float32)
    g[:, 0] = 1
    diffs = deploy.backward(prob=g)
    assert list(diffs) == ["data"] and diffs["data"].shape == x.shape
    # Only the inputs' diffs come back, plus any asked for.
    assert set(deploy.backward(diffs=["fc"], prob=g)) == {"data", "fc"}
    with pytest.raises(ProtonetError, match="not an output"):
        deploy.backward(conv=np.zeros((2, 5, 2, 2)))


def test_params_data_is_shared_not_copied(deploy):
    x = np.ones((2, 3, 4, 4), np.float32)
    W = deploy.params["fc"][0].data
    W[...] = 0                                       # net surgery in place
    deploy.params["fc"][1].data[...] = [1, 2, 3]
    prob = deploy.forward(data=x)["prob"]
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(prob[0], e / e.sum(), rtol=1e-5)
    assert deploy.layers[deploy._layer_names.index("fc")].blobs[0].data is \
        deploy.params["fc"][0].data


def test_reshape_input_then_net_reshape(deploy):
    deploy.blobs["data"].reshape(5, 3, 4, 4)
    deploy.reshape()
    assert deploy.blobs["conv"].data.shape == (5, 5, 2, 2)
    assert deploy.blobs["prob"].data.shape == (5, 3)
    x = np.random.RandomState(2).rand(5, 3, 4, 4).astype(np.float32)
    assert deploy.forward(data=x)["prob"].shape == (5, 3)


def test_forward_all_and_forward_backward_all(deploy):
    x = np.random.RandomState(4).randn(5, 3, 4, 4).astype(np.float32)
    allout = deploy.forward_all(data=x)
    assert allout["prob"].shape == (5, 3)
    one = deploy.forward(data=x[4:5].repeat(2, axis=0))["prob"][0]
    np.testing.assert_allclose(allout["prob"][4], one, rtol=1e-5)
    outs, diffs = deploy.forward_backward_all(data=x, prob=np.ones((5, 3)))
    assert outs["prob"].shape == (5, 3) and diffs["data"].shape == x.shape


def test_blob_accessors(deploy):
    blob = deploy.blobs["data"]
    assert tuple(blob.shape) == (2, 3, 4, 4) and blob.count == 96
    assert (blob.num, blob.channels, blob.height, blob.width) == (2, 3, 4, 4)
    blob.reshape(1, 3, 5, 5)
    assert blob.data.shape == blob.diff.shape == (1, 3, 5, 5)
    assert blob.data.dtype == np.float32
    fc = deploy.blobs["fc"]
    assert (fc.num, fc.channels, fc.height, fc.width) == (2, 3, 1, 1)


# ---------------------------------------------------------------------------
# test_solver.py


def solver_file(tmp_path, net_path, extra=""):
    return write(tmp_path, "solver.prototxt", f"""net: '{net_path}'
    test_iter: 2 test_interval: 10 base_lr: 0.01 momentum: 0.9
    weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
    display: 0 max_iter: 20 snapshot_after_train: false
    snapshot_prefix: 'model' random_seed: 5 {extra}""")


@pytest.fixture
def solver(tmp_path, net_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = solver_file(tmp_path, net_file)
    solver = caffe.SGDSolver(path)
    assert isinstance(caffe.get_solver(path), caffe.SGDSolver)
    caffe.set_mode_cpu()
    rng = np.random.RandomState(0)
    for n in [solver.net] + list(solver.test_nets):
        n.blobs["label"].data[...] = rng.randint(N_OUT, size=(4, 1, 1, 1))
    return solver


def test_solver_solve_runs_to_max_iter(solver):
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 20
    assert solver.param.max_iter == 20 and solver.param.base_lr == \
        pytest.approx(0.01)


def test_solver_step_and_shared_test_net(solver):
    solver.step(3)
    assert solver.iter == 3
    assert len(solver.test_nets) == 1
    test_net = solver.test_nets[0]
    np.testing.assert_array_equal(test_net.params["ip"][0].data,
                                  solver.net.params["ip"][0].data)


def test_solver_apply_update_uses_base_lr(solver):
    net = solver.net
    w = net.layers[1].blobs[0]
    w.data[...] = 0
    w.diff[...] = 1
    solver.apply_update()
    np.testing.assert_allclose(w.data, -0.01, atol=1e-7)


def test_nets_outlive_the_solver(solver):
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    del solver
    total = 0.0
    for n in nets:
        for ps in n.params.values():
            total += sum(p.data.sum() + p.diff.sum() for p in ps)
        total += sum(b.data.sum() for b in n.blobs.values())
    assert np.isfinite(total)


def test_snapshot_and_restore(solver, tmp_path, net_file):
    solver.snapshot()
    for fn in ("model_iter_0.caffemodel", "model_iter_0.solverstate"):
        assert (tmp_path / fn).is_file()
    w0 = solver.net.params["ip"][0].data.copy()
    solver.step(2)
    assert not np.array_equal(w0, solver.net.params["ip"][0].data)
    solver.restore("model_iter_0.solverstate")
    assert solver.iter == 0
    np.testing.assert_array_equal(w0, solver.net.params["ip"][0].data)
    # The snapshot's weights load into a plain Net too.
    again = caffe.Net(net_file, "model_iter_0.caffemodel", caffe.TRAIN)
    np.testing.assert_array_equal(w0, again.params["ip"][0].data)


@pytest.mark.parametrize("type_name, cls", [
    ("Nesterov", caffe.NesterovSolver), ("AdaGrad", caffe.AdaGradSolver),
    ("RMSProp", caffe.RMSPropSolver), ("AdaDelta", caffe.AdaDeltaSolver),
    ("Adam", caffe.AdamSolver)])
def test_get_solver_picks_the_class(tmp_path, net_file, monkeypatch,
                                    type_name, cls):
    monkeypatch.chdir(tmp_path)
    text = solver_file(tmp_path, net_file, f"type: '{type_name}'")
    if type_name in ("AdaGrad", "RMSProp"):    # Caffe: no momentum for these
        text = write(tmp_path, "solver.prototxt", open(text).read()
                     .replace("momentum: 0.9", ""))
    solver = caffe.get_solver(text)
    assert type(solver) is cls
    direct = cls(text)
    direct.step(1)
    assert direct.iter == 1


def test_solver_share_weights(solver, net_file):
    other = caffe.Net(net_file, caffe.TEST)
    solver.share_weights(other)
    solver.step(1)
    np.testing.assert_array_equal(other.params["conv"][0].data,
                                  solver.net.params["conv"][0].data)


# ---------------------------------------------------------------------------
# test_net_spec.py


def lenet(batch):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch, 1, 28, 28]),
                                         dict(dim=[batch, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=8,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=12,
                            weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=30,
                           weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10,
                           weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anonymous_lenet(batch):
    data, label = L.DummyData(shape=[dict(dim=[batch, 1, 28, 28]),
                                     dict(dim=[batch, 1, 1, 1])], ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=8)
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=12)
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=30)
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10)
    return L.SoftmaxWithLoss(ip2, label).to_proto()


def load_spec(tmp_path, proto):
    return caffe.Net(write(tmp_path, "spec.prototxt", str(proto)), caffe.TEST)


@pytest.mark.parametrize("build", [lenet, anonymous_lenet])
def test_netspec_lenet_builds(tmp_path, build):
    proto = build(3)
    assert proto.layer[6].type == "ReLU"
    assert proto.layer[6].bottom == proto.layer[6].top       # in place
    net = load_spec(tmp_path, proto)
    assert len(net.layers) == 9
    assert next(iter(net.blobs.values())).data.shape == (3, 1, 28, 28)
    assert np.isfinite(net.forward()[net.outputs[0]])


def test_netspec_text_round_trip():
    proto = lenet(2)
    again = text_format.Parse(str(proto), caffe.proto.caffe_pb2.NetParameter())
    assert again == proto
    assert proto.layer[0].transform_param.scale == pytest.approx(1 / 255)
    assert proto.layer[2].pooling_param.pool == P.Pooling.MAX


def test_netspec_zero_tops(tmp_path):
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    net = load_spec(tmp_path, n.to_proto())
    assert len(net.forward()) == 0


def test_netspec_rejects_a_tuple_input():
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top "
                       r"\(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)


# ---------------------------------------------------------------------------
# test_io.py, test_layer_type_list.py, test_nccl.py, misc module functions


def test_blobproto_to_array_shapes():
    pb2 = caffe.proto.caffe_pb2
    old = pb2.BlobProto()
    old.data.extend([0.0] * 12)
    old.num, old.channels, old.height, old.width = 1, 1, 3, 4
    assert caffe.io.blobproto_to_array(old).shape == (1, 1, 3, 4)
    new = pb2.BlobProto()
    new.data.extend([0.0] * 12)
    new.shape.dim.extend([3, 4])
    assert caffe.io.blobproto_to_array(new).shape == (3, 4)
    scalar = pb2.BlobProto()
    scalar.data.append(123)
    assert caffe.io.blobproto_to_array(scalar) == 123
    bad = pb2.BlobProto()
    bad.data.extend([0.0] * 12)
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(bad)


def test_array_to_datum_label_optional():
    with_label = caffe.io.array_to_datum(np.ones((3, 4, 5)), label=1)
    without = caffe.io.array_to_datum(np.ones((3, 4, 5)))
    assert len(with_label.SerializeToString()) > len(without.SerializeToString())
    np.testing.assert_array_equal(caffe.io.datum_to_array(with_label),
                                  np.ones((3, 4, 5)))


def test_transformer_classification_preprocessing(tmp_path):
    from PIL import Image
    rgb = np.random.RandomState(0).randint(0, 256, (6, 5, 3)).astype(np.uint8)
    path = str(tmp_path / "cat.png")
    Image.fromarray(rgb).save(path)
    image = caffe.io.load_image(path)
    assert image.shape == (6, 5, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, rgb / 255.0, atol=1e-6)
    t = caffe.io.Transformer({"data": (1, 3, 6, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_raw_scale("data", 255)
    t.set_channel_swap("data", (2, 1, 0))
    x = t.preprocess("data", image)
    assert x.shape == (3, 6, 5)
    np.testing.assert_allclose(x[0], rgb[..., 2] - 104.0, atol=1e-3)   # BGR
    np.testing.assert_allclose(t.deprocess("data", x), image, atol=1e-5)


def test_layer_type_list_has_standard_types():
    types = caffe.layer_type_list()
    for name in ("Data", "Convolution", "InnerProduct", "Python"):
        assert name in types


def test_nccl_is_absent_and_says_so():
    assert caffe.has_nccl() is False
    with pytest.raises(ProtonetError, match="has_nccl"):
        caffe.NCCL.new_uid()
    with pytest.raises(ProtonetError, match="NCCL"):
        caffe.NCCL(None, "")


def test_solver_count_and_rank(monkeypatch):
    import protonet.pycaffe as pc
    monkeypatch.setattr(pc, "_solver_count", 1)
    monkeypatch.setattr(pc, "_solver_rank", 0)
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(2)
    caffe.set_solver_rank(1)
    assert (caffe.solver_count(), caffe.solver_rank()) == (2, 1)
    with pytest.raises(ProtonetError, match="rank 2"):
        caffe.set_solver_rank(2)
    with pytest.raises(ProtonetError, match="at least 1"):
        caffe.set_solver_count(0)
    caffe.set_multiprocess(True)
    assert pc._multiprocess is True
    caffe.set_multiprocess(False)


def test_timer_measures_and_stops_on_read():
    t = caffe.Timer()
    assert t.ms == 0.0                               # never run
    t.start()
    sum(range(20000))
    first = t.ms                                     # reading stops it
    assert first > 0 and not t.running and t.ms == first


def test_init_log_and_log(capfd):
    import protonet.pycaffe as pc
    try:
        caffe.init_log(0, True)
        caffe.log("hello from a script")
        err = capfd.readouterr().err
        assert "hello from a script" in err and err.startswith("I")
        caffe.init_log(1)                            # WARNING and up only
        caffe.log("not shown")
        assert "not shown" not in capfd.readouterr().err
        with pytest.raises(ProtonetError, match="level"):
            caffe.init_log(7)
    finally:
        from protonet import caffelog
        caffelog.disable(pc._log_handler)
        pc._log_handler = None


def test_mode_and_device_calls_are_accepted():
    caffe.set_mode_cpu()
    caffe.set_device(0)
    caffe.set_random_seed(1)
    with pytest.warns(UserWarning, match="CPU"):
        caffe.set_mode_gpu()


# ---------------------------------------------------------------------------
# test_coord_map.py (caffe.coord_map used with NetSpec tops)


def coord_spec(pool=2, dstride=2, pad=0, dpad=0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 60, 60]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool,
                       stride=pool)
    n.deconv = L.Deconvolution(n.pool, num_output=4, kernel_size=2 * dstride,
                               stride=dstride, pad=dpad)
    return n


def test_coord_map_conv_pool_deconv():
    n = coord_spec()
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, 0)
    n = coord_spec(pool=4, dstride=4)
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, -1)
    n = coord_spec(pad=3)                      # conv padding shifts the offset
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, -3)


def test_coord_map_crop_helper_and_errors(tmp_path):
    n = coord_spec()
    n.crop = crop(n.deconv, n.data)
    net = load_spec(tmp_path, n.to_proto())
    assert net.blobs["crop"].data.shape[2:] == net.blobs["data"].data.shape[2:]
    n.ip = L.InnerProduct(n.deconv, num_output=3)
    with pytest.raises(RuntimeError):
        coord_map_from_to(n.ip, n.data)
    n = coord_spec(pool=3)                     # 3x pool but 2x deconv
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.deconv, n.data)


def test_net_and_solver_callbacks(tmp_path):
    """pycaffe's before/after_forward/backward and Solver.add_callback."""
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(
        'layer { name: "data" type: "DummyData" top: "data" top: "label" '
        'dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 } '
        'data_filler { type: "gaussian" } data_filler { type: "constant" '
        'value: 1 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 2 '
        'weight_filler { type: "xavier" } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" '
        'bottom: "label" top: "loss" }\n')
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}" base_lr: 0.1 lr_policy: '
                           '"fixed" max_iter: 3 display: 0 snapshot: 0 '
                           f'snapshot_prefix: "{tmp_path}/s" '
                           'snapshot_after_train: false')
    solver = caffe.get_solver(str(solver_file))
    events = []
    solver.net.before_forward(lambda i: events.append(("bf", i)))
    solver.net.after_forward(lambda i: events.append(("af", i)))
    solver.net.before_backward(lambda i: events.append(("bb", i)))
    solver.net.after_backward(lambda i: events.append(("ab", i)))
    solver.add_callback(lambda: events.append("start"),
                        lambda: events.append("ready"))
    solver.step(1)
    n = len(solver.net.layers)
    assert events[0] == "start" and events[-1] == "ready"
    assert events[1:1 + 2 * n] == [e for i in range(n)
                                   for e in (("bf", i), ("af", i))]
    assert events[1 + 2 * n:-1] == [e for i in reversed(range(n))
                                    for e in (("bb", i), ("ab", i))]
