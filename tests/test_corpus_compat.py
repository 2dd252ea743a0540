"""Every corpus net builds and runs (protonet.compat): deploy nets forward at
batch 1, train/val nets with their data layers replaced by Input layers in
TRAIN and TEST, forward and backward at batch 1; Python-layer nets fail
naming their module.  Also replace_data_layers and the fork_extra layers."""

import numpy as np
import pytest

import protonet
from protonet import compat
from protonet.errors import LayerError, ProtonetError
from protonet.proto import caffe_pb2
from protonet.testing import check_gradient

from isolated import release_scratch_as_it_runs, run_isolated

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROWS = {r["local_path"]: r for r in compat.manifest()}
DEPLOY = [p for p, r in ROWS.items() if r["kind"] == "deploy" and p != compat.TEMPLATE]
PYTHON = [p for p, r in ROWS.items() if "Python" in r["canonical"].split(",")]
TRAIN_VAL = [p for p, r in ROWS.items() if r["kind"] == "net" and p not in PYTHON]
# Forward/backward of these takes seconds each: slow marker only.
BIG = ("ResNet-101", "ResNet-152", "pose_deploy", "VGG", "fcn8s", "Inception",
       "inception-v3", "yolo",
       "pspnet", "inception-v4", "segnet", "SegNet", "holistically", "parsenet",
       "s2vt", "googlenet", "alexnet", "flickr", "pascal", "hash-codes",
       "nin_imagenet", "DenseNet", "xception", "SSD_300", "places205")


def _big(rel):
    return any(b in rel for b in BIG)


def _finite_outputs(net):
    for name in net.outputs:
        assert np.all(np.isfinite(net.blobs[name].data)), name


# PSPNet's activations at 513 x 513 take 3.7 GB: it runs forward as
# memory="inference" does (each activation dropped after its last reader).
INFERENCE_MODE = ("pspnet",)


def run_deploy(rel, low_memory=False):
    net, kinds = compat.build_corpus(rel, protonet.TEST)
    if low_memory:
        release_scratch_as_it_runs(net)
    assert all(net.blobs[n].shape[0] == 1 for n in net.inputs)
    if low_memory and any(b in rel for b in INFERENCE_MODE):
        compat.fill_random(net, kinds)
        net.forward_from_to(release=True)
    else:
        compat.run(net, kinds, backward=False)
    _finite_outputs(net)
    assert net.outputs


@pytest.mark.parametrize("rel", [r for r in DEPLOY if not _big(r)])
def test_deploy_net_runs_forward(rel):
    run_deploy(rel)


@pytest.mark.slow
@pytest.mark.parametrize("rel", [r for r in DEPLOY if _big(r)])
def test_big_deploy_net_runs_forward(rel):
    # Up to a few GB each: in a child process, which returns it all.
    run_isolated("test_corpus_compat", "run_deploy", rel, True)


@pytest.mark.parametrize("phase", [protonet.TRAIN, protonet.TEST], ids=["TRAIN", "TEST"])
@pytest.mark.parametrize("rel", [r for r in TRAIN_VAL if _big(r)])
def test_big_train_val_net_builds(rel, phase):
    # (The small ones build in test_train_val_net_runs_forward_backward.)
    net, kinds = compat.build_corpus(rel, phase)
    assert not [l for l in net.layers if l.type in compat.DATA_LAYER_TYPES]
    assert set(kinds) & set(net.blobs)


def run_train(rel, low_memory=False):
    for phase in (protonet.TRAIN, protonet.TEST):
        net, kinds = compat.build_corpus(rel, phase)
        if low_memory:
            release_scratch_as_it_runs(net)
        compat.run(net, kinds, backward=phase == protonet.TRAIN)
        _finite_outputs(net)
        if phase == protonet.TRAIN:
            assert compat.has_loss(net)
            learned = [b for l in net.layers for b, on in
                       zip(l.blobs, l.param_propagate_down) if on]
            assert any(np.any(b.diff != 0) for b in learned)
        del net, kinds  # before the next phase's net


@pytest.mark.parametrize("rel", [r for r in TRAIN_VAL if not _big(r)])
def test_train_val_net_runs_forward_backward(rel):
    run_train(rel)


@pytest.mark.slow
@pytest.mark.parametrize("rel", [r for r in TRAIN_VAL if _big(r)])
def test_big_train_val_net_runs_forward_backward(rel):
    run_isolated("test_corpus_compat", "run_train", rel, True)


@pytest.mark.parametrize("rel", PYTHON)
def test_python_layer_net_fails_naming_its_module(rel):
    modules = compat.python_modules(protonet.io.read_net(compat.CORPUS + "/" + rel))
    with pytest.raises(LayerError) as e:
        compat.build_corpus(rel, protonet.TRAIN)
    assert "Python" in str(e.value) and modules[0] in str(e.value)
    assert modules[0] in compat.protonet_status(ROWS[rel])


def test_every_corpus_net_is_covered():
    assert len(DEPLOY) + len(TRAIN_VAL) + len(PYTHON) == len(ROWS) - 1


# -- replace_data_layers -------------------------------------------------------

def _net(text):
    return protonet.io.parse_net_text(text)


LENET_DATA = """
layer { name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN } data_param { source: "x" batch_size: 64 } }
layer { name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TEST } data_param { source: "y" batch_size: 100 } }
layer { name: "noise" type: "DummyData" top: "noise"
  dummy_data_param { shape { dim: 2 dim: 3 } } }
"""


def test_replace_data_layers_keeps_rules_and_batch():
    out = compat.replace_data_layers(_net(LENET_DATA), shapes={"data": (1, 28, 28)})
    train, test, dummy = out.layer
    assert (train.type, test.type, dummy.type) == ("Input", "Input", "DummyData")
    assert [list(s.dim) for s in train.input_param.shape] == [[64, 1, 28, 28], [64]]
    assert [list(s.dim) for s in test.input_param.shape] == [[100, 1, 28, 28], [100]]
    assert train.include[0].phase == caffe_pb2.TRAIN
    assert test.include[0].phase == caffe_pb2.TEST
    assert list(train.top) == ["data", "label"]


def test_replace_data_layers_batch_override():
    out = compat.replace_data_layers(_net(LENET_DATA), {"data": (1, 28, 28)}, batch_size=1)
    assert [list(s.dim) for s in out.layer[0].input_param.shape] == [[1, 1, 28, 28], [1]]


def test_replace_data_layers_shapes_from_the_layer():
    text = """
    layer { name: "a" type: "ImageData" top: "data" top: "label"
      image_data_param { source: "s" batch_size: 5 new_height: 256 new_width: 200 } }
    layer { name: "b" type: "Data" top: "d2" top: "l2"
      transform_param { crop_size: 227 } data_param { source: "s" batch_size: 2 } }
    layer { name: "c" type: "DenseImageData" top: "d3" top: "l3"
      dense_image_data_param { source: "s" batch_size: 3 new_height: 8 new_width: 9 } }
    layer { name: "e" type: "AnnotatedData" top: "d4" top: "gt"
      transform_param { resize_param { height: 300 width: 300 } }
      data_param { source: "s" batch_size: 4 } }
    """
    out = compat.replace_data_layers(_net(text))
    shapes = [[list(s.dim) for s in l.input_param.shape] for l in out.layer]
    assert shapes == [[[5, 3, 256, 200], [5]], [[2, 3, 227, 227], [2]],
                      [[3, 3, 8, 9], [3, 1, 8, 9]], [[4, 3, 300, 300], [1, 1, 4, 8]]]
    assert compat.input_kinds(_net(text))["gt"] == "boxes"


def test_replace_data_layers_undeclared_shape_names_the_top():
    with pytest.raises(ProtonetError, match="top 'data' has no declared shape"):
        compat.replace_data_layers(_net(LENET_DATA))


def test_train_only_data_is_available_in_test_phase():
    rel = "chuanqi305__MobileNet-SSD/voc/MobileNetSSD_train.prototxt"
    net, _ = compat.build_corpus(rel, protonet.TEST)
    assert net.blobs["data"].shape == (1, 3, 300, 300)
    net, kinds = compat.build_corpus(rel, protonet.TRAIN)
    assert kinds["label"] == "boxes" and net.blobs["label"].shape == (1, 1, 1, 8)


def test_staged_test_data_picks_its_stage():
    # mnist_autoencoder's TEST data layers need stage test-on-train/test-on-test.
    net, _ = compat.build_corpus("BVLC__caffe/examples/mnist/mnist_autoencoder.prototxt",
                                 protonet.TEST)
    assert net.blobs["data"].shape == (1, 1, 28, 28)


# -- the table -----------------------------------------------------------------

def test_peer_columns():
    index = compat.caffe_index()
    lenet = ROWS["BVLC__caffe/examples/mnist/lenet.prototxt"]
    assert compat.caffe_status(lenet, index) == "yes"
    assert compat.opencv_status(lenet) == "yes"
    shuffle = ROWS["farmingyard__ShuffleNet/shufflenet_v2_1x_deploy.prototxt"]
    assert "shuffle_channel_param" in compat.caffe_status(shuffle, index)
    assert "shuffle_channel_param" in compat.opencv_status(shuffle)
    train = ROWS["BVLC__caffe/models/bvlc_alexnet/train_val.prototxt"]
    assert "Data" in compat.opencv_status(train)
    assert compat.caffe_status(train, index).startswith("not tried")


def test_template_is_not_applicable():
    assert compat.protonet_status(ROWS[compat.TEMPLATE]).startswith("n/a")


# -- fork_extra layers ------------------------------------------------------------

def test_selu_dropout_is_identity_in_test_and_keeps_moments_in_train():
    from protonet.layer import create_layer
    from protonet.blob import Blob
    p = caffe_pb2.LayerParameter(name="d", type="SeLuDropout")
    p.selu_dropout_param.dropout_ratio = 0.2
    for phase in (caffe_pb2.TEST, caffe_pb2.TRAIN):
        p.phase = phase
        layer = create_layer(p)
        x = Blob((200, 500))
        x.data[...] = np.random.default_rng(0).standard_normal(x.shape)
        y = Blob(())
        layer.set_up([x], [y])
        layer.forward([x], [y])
        if phase == caffe_pb2.TEST:
            np.testing.assert_array_equal(y.data, x.data)
        else:
            assert abs(y.data.mean()) < 0.02 and abs(y.data.std() - 1) < 0.05
            y.diff[...] = 1
            layer.backward([y], [True], [x])
            kept = layer._mask.astype(bool)
            np.testing.assert_allclose(x.diff[kept], layer.a, rtol=1e-6)
            assert np.all(x.diff[~kept] == 0)
            assert abs(kept.mean() - 0.8) < 0.01


def test_unpooling_replicates_and_sums_gradient():
    text = 'name: "u" type: "UnPooling" unpooling_param { unpool: REP }'
    gen = np.random.default_rng(1)
    x = gen.standard_normal((2, 3, 1, 1))
    ref = gen.standard_normal((2, 5, 4, 6))
    check_gradient(text, [x, ref], check_bottoms=[0], num_tops=1)
    with pytest.raises(protonet.errors.UnsupportedError, match="out_kernel_size"):
        check_gradient('name: "u" type: "UnPooling" unpooling_param '
                       '{ unpool: REP out_kernel_size: 2 }', [x, ref], num_tops=1)


def test_parse_output_and_evaluate():
    from protonet.layer import create_layer
    from protonet.blob import Blob
    score = Blob((1, 3, 1, 4))
    score.data[0, :, 0] = [[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 5]]
    pred = Blob(())
    out_layer = create_layer(caffe_pb2.LayerParameter(name="o", type="ParseOutput"))
    out_layer.set_up([score], [pred])
    out_layer.forward([score], [pred])
    np.testing.assert_array_equal(pred.data.ravel(), [0, 1, 2, 2])
    gt = Blob((1, 1, 1, 4))
    gt.data[...] = np.array([0, 2, 2, 255]).reshape(gt.shape)
    p = caffe_pb2.LayerParameter(name="e", type="ParseEvaluate")
    p.parse_evaluate_param.num_labels = 3
    p.parse_evaluate_param.ignore_label.append(255)
    ev, top = create_layer(p), Blob(())
    ev.set_up([pred, gt], [top])
    ev.forward([pred, gt], [top])
    # per class: [both, predicted, ground truth]; pixel 3 (label 255) ignored.
    np.testing.assert_array_equal(top.data[0, :, 0], [[1, 1, 1], [0, 1, 0], [1, 1, 2]])
