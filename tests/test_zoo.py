"""The model zoo: every deploy net builds with its documented parameter
count, small nets run forward + backward, train_val nets build in TRAIN with
their Data layers swapped for an Input, and the generator reproduces the
committed files byte for byte."""

import importlib.util
import os
import re

import numpy as np
import pytest

import protonet
from isolated import release_scratch_as_it_runs, run_isolated
from protonet import io
from protonet.proto import caffe_pb2
from protonet.summary import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "zoo")
CORPUS = os.path.join(ROOT, "tests", "fixtures", "corpus")


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "zoo_generate", os.path.join(ZOO, "generate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _load_generator()
MODELS = list(GEN.MODELS)

# Stored parameters (every blob of a .caffemodel, BatchNorm statistics
# included) and learnable ones: papers, original Caffe releases, torchvision.
EXPECTED = {
    "lenet": (431_080, 431_080),
    "cifar10_quick": (145_578, 145_578),
    "cifar10_full": (89_578, 89_578),
    "alexnet": (60_965_224, 60_965_224),
    "caffenet": (60_965_224, 60_965_224),
    "vgg_a": (132_863_336, 132_863_336),
    "vgg_a_lrn": (132_863_336, 132_863_336),   # LRN has no parameters
    "vgg_b": (133_047_848, 133_047_848),
    "vgg_c": (133_638_952, 133_638_952),
    "vgg16": (138_357_544, 138_357_544),
    "vgg19": (143_667_240, 143_667_240),
    "nin": (7_595_176, 7_595_176),
    "googlenet": (6_998_552, 6_998_552),
    "squeezenet_v1.0": (1_248_424, 1_248_424),
    "squeezenet_v1.1": (1_235_496, 1_235_496),
    "mobilenet_v1": (4_253_891, 4_231_976),
    "resnet18": (11_699_132, 11_689_512),
    "resnet34": (21_814_732, 21_797_672),
    "resnet50": (25_610_269, 25_557_096),
    "resnet101": (44_654_608, 44_549_160),
    "resnet152": (60_344_387, 60_192_808),
    "resnet20_digits": (273_775, 272_186),     # paper: 0.27M
}
SMALL = ["lenet", "cifar10_quick", "cifar10_full", "alexnet", "caffenet",
         "nin", "googlenet", "squeezenet_v1.0", "squeezenet_v1.1",
         "mobilenet_v1", "resnet18", "resnet20_digits"]
# Original releases in the corpus: same layer names and parameter shapes,
# so their .caffemodel files load into the zoo nets.
RELEASES = {
    "vgg16": "natanielruiz__net-archive/vgg_ilsvrc_16/"
             "VGG_ILSVRC_16_layers_deploy.prototxt",
    "resnet50": "KaimingHe__deep-residual-networks/prototxt/"
                "ResNet-50-deploy.prototxt",
    "resnet101": "KaimingHe__deep-residual-networks/prototxt/"
                 "ResNet-101-deploy.prototxt",
    "resnet152": "KaimingHe__deep-residual-networks/prototxt/"
                 "ResNet-152-deploy.prototxt",
    "squeezenet_v1.0": "forresti__SqueezeNet/SqueezeNet_v1.0/deploy.prototxt",
    "squeezenet_v1.1": "forresti__SqueezeNet/SqueezeNet_v1.1/deploy.prototxt",
    "mobilenet_v1": "shicai__MobileNet-Caffe/mobilenet_deploy.prototxt",
}


def deploy(name):
    return os.path.join(ZOO, name, "deploy.prototxt")


def test_catalogue_is_complete():
    assert set(MODELS) == set(EXPECTED)
    for name in MODELS:
        for f in ("deploy.prototxt", "train_val.prototxt", "solver.prototxt",
                  "README.md"):
            assert os.path.isfile(os.path.join(ZOO, name, f)), (name, f)


@pytest.mark.parametrize("name", MODELS)
def test_deploy_builds_with_documented_parameter_count(name):
    s = summarize(deploy(name))
    stored, learnable = EXPECTED[name]
    assert s.params == stored
    assert s.params - sum(r.params for r in s if r.type == "BatchNorm") \
        == learnable
    readme = open(os.path.join(ZOO, name, "README.md")).read()
    documented = re.search(r"Parameters: ([\d,]+)", readme).group(1)
    assert int(documented.replace(",", "")) == stored
    assert f"{s.macs:,}" in readme
    assert s[-1].type == "Softmax" and s[-1].name == "prob"


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_same_layer_names_and_shapes_as_the_original_release(name):
    shapes = lambda net: {k: [b.shape for b in v]  # noqa: E731
                          for k, v in net.params.items()}
    # One net at a time (VGG-16 is 0.55 GB of weights).
    ours = shapes(protonet.Net(deploy(name)))
    assert ours == shapes(protonet.Net(os.path.join(CORPUS, RELEASES[name])))


def _randomize(net, rng):
    for blobs in net.params.values():
        for b in blobs:
            fan_in = int(np.prod(b.shape[1:])) if len(b.shape) > 1 else 1
            b.data[...] = rng.standard_normal(b.shape) / np.sqrt(fan_in)
    for layer in net.layers:   # BatchNorm: unit variance, factor 1
        if layer.type == "BatchNorm":
            layer.blobs[0].data[...] = 0
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1


def _forward_backward(name, low_memory=False):
    param = io.read_net(deploy(name))
    param.force_backward = True
    net = protonet.Net(param, phase=protonet.TEST)
    if low_memory:
        release_scratch_as_it_runs(net)
    rng = np.random.default_rng(0)
    _randomize(net, rng)
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    out = net.forward(data=x)["prob"]
    assert out.shape[0] == 1 and np.isfinite(out).all()
    np.testing.assert_allclose(out.reshape(1, -1).sum(), 1.0, rtol=1e-4)
    diffs = net.backward(prob=rng.standard_normal(out.shape).astype(np.float32))
    assert diffs["data"].shape == x.shape
    assert np.isfinite(diffs["data"]).all() and np.abs(diffs["data"]).sum() > 0
    first = next(iter(net.params.values()))[0]
    assert np.abs(first.diff).sum() > 0


@pytest.mark.parametrize("name", SMALL)
def test_small_deploy_runs_forward_and_backward(name):
    _forward_backward(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(MODELS) - set(SMALL)))
def test_big_deploy_runs_forward_and_backward(name):
    # Up to 2 GB each: in a child process, which returns it all.
    run_isolated("test_zoo", "_forward_backward", name, True)


def _train_net_with_input(name):
    """train_val with its two Data layers replaced by one Input layer."""
    param = io.read_net(os.path.join(ZOO, name, "train_val.prototxt"))
    data = [l for l in param.layer if l.type == "Data"]
    assert [l.include[0].phase for l in data] == [caffe_pb2.TRAIN,
                                                  caffe_pb2.TEST]
    assert all(l.data_param.backend == caffe_pb2.DataParameter.LMDB
               for l in data)
    shape = list(protonet.Net(deploy(name)).blobs["data"].shape)
    inp = caffe_pb2.LayerParameter(name="data", type="Input",
                                   top=["data", "label"])
    inp.input_param.shape.add().dim.extend([2] + shape[1:])
    inp.input_param.shape.add().dim.extend([2])
    layers = [inp] + [l for l in param.layer if l.type != "Data"]
    del param.layer[:]
    param.layer.extend(layers)
    return param


@pytest.mark.parametrize("name", ["lenet", "cifar10_quick", "cifar10_full",
                                  "googlenet", "squeezenet_v1.1", "resnet18",
                                  "resnet20_digits"])
def test_train_val_builds_in_train_phase(name):
    net = protonet.Net(_train_net_with_input(name), phase=protonet.TRAIN)
    losses = [n for n, w in net.blob_loss_weights.items() if w]
    if name == "googlenet":
        # the two auxiliary classifiers exist only in train_val
        assert sorted(losses) == ["loss1/loss", "loss2/loss", "loss3/loss3"]
        assert net.blob_loss_weights["loss1/loss"] == pytest.approx(0.3)
        total = sum(b.count for v in net.params.values() for b in v)
        assert total > EXPECTED["googlenet"][0]
    else:
        assert losses == ["loss"]
    assert "accuracy" not in net.blobs   # Accuracy is TEST only


def test_solvers_point_at_their_train_val():
    for name in MODELS:
        s = io.read_solver(os.path.join(ZOO, name, "solver.prototxt"))
        assert s.net == f"zoo/{name}/train_val.prototxt"
        assert s.base_lr > 0 and s.max_iter > 0


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path):
    for name in MODELS:
        GEN.write_model(name, root=str(tmp_path))
        for f in ("deploy.prototxt", "train_val.prototxt", "solver.prototxt",
                  "README.md"):
            with open(os.path.join(ZOO, name, f), "rb") as a, \
                    open(tmp_path / name / f, "rb") as b:
                assert a.read() == b.read(), f"zoo/{name}/{f} is stale: " \
                    "run python zoo/generate.py"


def test_generator_rejects_unknown_models():
    with pytest.raises(SystemExit, match="unknown model"):
        GEN.main(["nope"])
