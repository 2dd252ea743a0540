"""protonet.onnx export: the public call, the `protonet export` command,
clear errors for layers without an exact ONNX form, names, dynamic batch,
and the zoo deploy nets against onnxruntime."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import protonet  # noqa: E402
import protonet.onnx  # noqa: E402
from protonet.cli import main  # noqa: E402
from protonet.errors import ProtonetError  # noqa: E402
from protonet.onnx_export.check import compare, randomize_weights, session  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = '''name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def small_net(tmp_path, text=SMALL):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = protonet.Net(str(path), phase=protonet.TEST)
    randomize_weights(net, seed=3)
    return net, path


def random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_protonet_onnx_is_the_exporter_and_onnx_is_not_shadowed():
    assert protonet.onnx.export is protonet.onnx_export.export
    assert onnx.__file__ and "protonet" not in onnx.__file__
    assert hasattr(onnx, "checker")


def test_export_writes_a_checked_model(tmp_path):
    net, _ = small_net(tmp_path)
    out = tmp_path / "m.onnx"
    model = protonet.onnx.export(net, out)
    loaded = onnx.load(str(out))
    onnx.checker.check_model(loaded)
    assert loaded.opset_import[0].version == 17
    assert [i.name for i in loaded.graph.input] == ["data"]
    assert [o.name for o in loaded.graph.output] == ["prob"]
    dims = [d.dim_value for d in loaded.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 5]
    rows = compare(net, model, {"data": random_input((2, 3, 8, 8))})
    assert rows[0][2] <= 1e-4


def test_weights_come_from_the_net(tmp_path):
    net, _ = small_net(tmp_path)
    conv = [t for t in protonet.onnx.export(net).graph.initializer
            if t.name == "conv1/weight"][0]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(conv),
                                  net.params["conv1"][0].data)


def test_in_place_blob_keeps_its_name_as_output(tmp_path):
    net, _ = small_net(tmp_path)
    model = protonet.onnx.export(net, outputs=["conv1", "prob"])
    assert [o.name for o in model.graph.output] == ["conv1", "prob"]
    rows = compare(net, model, {"data": random_input((2, 3, 8, 8))})
    assert [r[0] for r in rows] == ["conv1", "prob"]
    assert max(r[2] for r in rows) <= 1e-4
    # conv1 after the in-place ReLU: no negative values.
    got = session(model).run(["conv1"], {"data": random_input((2, 3, 8, 8))})[0]
    assert got.min() >= 0


def test_outputs_cut_the_graph(tmp_path):
    net, _ = small_net(tmp_path)
    model = protonet.onnx.export(net, outputs=["pool1"])
    assert {n.op_type for n in model.graph.node} == {"Conv", "Relu", "MaxPool"}


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_opsets(tmp_path, opset):
    text = SMALL + ('layer { name: "n" type: "Normalize" bottom: "pool1" top: "n" }\n'
                    'layer { name: "mvn" type: "MVN" bottom: "n" top: "mvn" }\n')
    net, _ = small_net(tmp_path, text)
    model = protonet.onnx.export(net, opset=opset)
    assert model.opset_import[0].version == opset
    rows = compare(net, model, {"data": random_input((2, 3, 8, 8))})
    assert max(r[2] for r in rows) <= 1e-4


def test_bad_opset_and_batch(tmp_path):
    net, _ = small_net(tmp_path)
    with pytest.raises(ProtonetError, match="opset must be in 17"):
        protonet.onnx.export(net, opset=11)
    with pytest.raises(ProtonetError, match="batch must be"):
        protonet.onnx.export(net, batch="many")
    with pytest.raises(ProtonetError, match="no blob named 'nope'"):
        protonet.onnx.export(net, outputs=["nope"])


def test_dynamic_batch(tmp_path):
    text = SMALL + ('layer { name: "flat" type: "Flatten" bottom: "pool1" top: "flat" }\n'
                    'layer { name: "r" type: "Reshape" bottom: "flat" top: "r" '
                    'reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }\n')
    net, _ = small_net(tmp_path, text)
    model = protonet.onnx.export(net, batch="dynamic")
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "N"
    for batch in (1, 5):
        rows = compare(net, model, {"data": random_input((batch, 3, 8, 8))})
        assert max(r[2] for r in rows) <= 1e-4


def test_fixed_batch_and_input_shape(tmp_path):
    net, _ = small_net(tmp_path)
    model = protonet.onnx.export(net, batch=4)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert net.blobs["data"].shape == (2, 3, 8, 8)     # the net is restored
    text = SMALL.replace('"fc" type: "InnerProduct" bottom: "pool1"',
                         '"fc" type: "Pooling" bottom: "pool1" pooling_param '
                         '{ global_pooling: true }').replace(
        "inner_product_param { num_output: 5 }", "")
    net, _ = small_net(tmp_path, text)
    model = protonet.onnx.export(net, input_shapes={"data": (1, 3, 12, 10)})
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 12, 10]
    rows = compare(net, model, {"data": random_input((1, 3, 12, 10))})
    assert max(r[2] for r in rows) <= 1e-4


def test_dynamic_batch_refused_where_the_batch_moves(tmp_path):
    text = SMALL + ('layer { name: "r" type: "Reshape" bottom: "pool1" top: "r" '
                    'reshape_param { shape { dim: -1 } } }\n')
    net, _ = small_net(tmp_path, text)
    with pytest.raises(ProtonetError, match="Reshape layer 'r'.*batch axis"):
        protonet.onnx.export(net, batch="dynamic")
    protonet.onnx.export(net)     # fine at the net's fixed batch


DETECTION = '''name: "det"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "loc" type: "Convolution" bottom: "data" top: "loc"
  convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "conf" type: "Convolution" bottom: "data" top: "conf"
  convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc" top: "loc_flat" }
layer { name: "conf_flat" type: "Flatten" bottom: "conf" top: "conf_flat" }
layer { name: "prior" type: "PriorBox" bottom: "loc" bottom: "data" top: "prior"
  prior_box_param { min_size: 4 aspect_ratio: 2 flip: false variance: 0.1 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_flat"
  bottom: "prior" top: "det"
  detection_output_param { num_classes: 3 nms_param { nms_threshold: 0.45 }
  keep_top_k: 10 confidence_threshold: 0.01 code_type: CENTER_SIZE } }
'''


def test_detection_output_fails_clearly_and_exports_with_outputs(tmp_path):
    net, _ = small_net(tmp_path, DETECTION)
    with pytest.raises(ProtonetError) as e:
        protonet.onnx.export(net)
    msg = str(e.value)
    assert "DetectionOutput layer 'det'" in msg
    assert "outputs=loc_flat,conf_flat,prior" in msg
    model = protonet.onnx.export(net, outputs=["loc_flat", "conf_flat", "prior"])
    rows = compare(net, model, {"data": random_input((1, 3, 16, 16))})
    assert max(r[2] for r in rows) <= 1e-4


@pytest.mark.parametrize("body, match", [
    ('layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "c" top: "h" '
     'recurrent_param { num_output: 3 } }', "LSTM layer 'lstm': no exact ONNX form"),
    ('layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 2 axis: 2 } }',
     "ArgMax layer 'am': no exact ONNX form: argmax_param.top_k 2"),
    ('layer { name: "cv" type: "Convolution" bottom: "x" top: "y" '
     'convolution_param { num_output: 2 kernel_size: 1 axis: 2 } }',
     "Convolution layer 'cv': no exact ONNX form: convolution_param.axis 2"),
])
def test_unsupported_layers_name_the_layer(tmp_path, body, match):
    text = ('name: "u"\nlayer { name: "in" type: "Input" top: "x" top: "c" input_param { '
            'shape { dim: 4 dim: 2 dim: 3 dim: 5 } shape { dim: 4 dim: 2 } } }\n' + body)
    net, _ = small_net(tmp_path, text)
    with pytest.raises(ProtonetError, match=match):
        protonet.onnx.export(net)


# -- the command line ------------------------------------------------------------

def test_cli_export_and_check(tmp_path, capsys):
    net, path = small_net(tmp_path)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    np.save(tmp_path / "x.npy", random_input((2, 3, 8, 8), seed=7))
    out = tmp_path / "m.onnx"
    code = main(["export", str(path), str(weights), str(out), "--check",
                 "--input", f"data={tmp_path / 'x.npy'}"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "random input:" in text and "given input:" in text
    assert "check passed" in text
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["prob"]


def test_cli_check_fails_above_tolerance(tmp_path, capsys):
    net, path = small_net(tmp_path)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    code = main(["export", str(path), str(weights), str(tmp_path / "m.onnx"),
                 "--check", "--tol", "0", "--outputs", "fc"])
    text = capsys.readouterr().out
    assert code == 1 and "check FAILED" in text and "fc " in text


def test_cli_options(tmp_path, capsys):
    net, path = small_net(tmp_path)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), str(weights), str(out), "--batch", "dynamic",
                 "--opset", "18", "--check"]) == 0
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert main(["export", str(path), str(weights), str(out), "--batch", "x"]) == 1
    assert "--batch expects an integer" in capsys.readouterr().err
    assert main(["export", str(path), str(weights), str(out),
                 "--input-shape", "data:3,3,8,8", "--check"]) == 0
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


def test_cli_unsupported_layer_exit_code(tmp_path, capsys):
    path = tmp_path / "det.prototxt"
    path.write_text(DETECTION)
    code = main(["export", str(path), "-", str(tmp_path / "m.onnx")])
    assert code == 1
    assert "DetectionOutput layer 'det'" in capsys.readouterr().err


# -- the zoo ------------------------------------------------------------------------

# Every zoo deploy net, batch 1, each group in its own subprocess (about 40 s
# and 2 GB at most in all): at their own input sizes, but the six VGGs at
# 32 x 32 (the same layers; only fc6's input shrinks) and the small nets at
# 32 x 32.  `python -m protonet.onnx_export.corpus_report --prototxt
# zoo/*/deploy.prototxt` checks the VGGs at 224 x 224 too.
ZOO_GROUPS = {
    "small": (["lenet", "lenet_digits", "resnet20_digits", "cifar10_quick",
               "cifar10_full", "squeezenet_v1.0", "squeezenet_v1.1",
               "mobilenet_v1"], 32),
    "imagenet": (["alexnet", "caffenet", "googlenet", "nin", "resnet18", "resnet34",
                  "resnet50", "resnet101", "resnet152"], None),
    "vgg": (["vgg16", "vgg19", "vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c"], 32),
}


def test_zoo_groups_cover_the_zoo():
    nets = sorted(n for names, _ in ZOO_GROUPS.values() for n in names)
    zoo = sorted(d for d in os.listdir(os.path.join(ROOT, "zoo"))
                 if os.path.exists(os.path.join(ROOT, "zoo", d, "deploy.prototxt")))
    assert nets == zoo


@pytest.mark.parametrize("group", sorted(ZOO_GROUPS))
def test_zoo_deploy_nets_export_exactly(group):
    names, side = ZOO_GROUPS[group]
    paths = [os.path.join(ROOT, "zoo", z, "deploy.prototxt") for z in names]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "protonet.onnx_export.corpus_report", "--prototxt", *paths]
    if side:
        cmd += ["--side", str(side)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [os.path.basename(os.path.dirname(r["path"])) for r in results] == names
    for r in results:
        assert r["status"] == "exact", r
        assert r["worst"] <= 1e-4


# -- the corpus report's helpers ----------------------------------------------------

TRAIN_VAL = '''name: "tv"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }
'''


def test_report_cuts_losses_and_detection(tmp_path):
    from protonet.onnx_export.corpus_report import _cut_outputs
    net, _ = small_net(tmp_path, TRAIN_VAL)
    assert _cut_outputs(net) == (["fc"], ["Accuracy", "SoftmaxWithLoss"])
    net, _ = small_net(tmp_path, DETECTION)
    assert _cut_outputs(net) == (["loc_flat", "conf_flat", "prior"], ["DetectionOutput"])


def test_report_mask_flips_on_exact_ties(tmp_path):
    from protonet.onnx_export.corpus_report import mask_flips
    text = ('name: "m"\nlayer { name: "data" type: "Input" top: "data" input_param { '
            'shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
            'layer { name: "pool" type: "Pooling" bottom: "data" top: "p" top: "mask" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')
    net, _ = small_net(tmp_path, text)
    x = {"data": np.zeros((1, 1, 4, 4), np.float32)}   # every window a tie
    flips, _, rows = mask_flips(net, x, ["p"])
    assert flips == 0          # both pick the first maximum, as Caffe does
    assert [r[0] for r in rows] == ["p"]


def test_report_markdown_counts():
    from protonet.onnx_export.corpus_report import markdown
    results = [("a.prototxt", "deploy", {"status": "exact", "detail": "d", "cut": True}),
               ("b.prototxt", "deploy", {"status": "failed", "detail": "why"}),
               ("c.prototxt", "net", {"status": "exact", "detail": "d"}),
               ("d.prototxt", "net", {"status": "not run", "detail": "python"})]
    text = markdown(results)
    assert "**1 of the 2 that protonet runs export exactly** (1 of them cut" in text
    assert "Train/val nets (TEST phase): 1 of the 1" in text
    assert "| `b.prototxt` | deploy | failed | why |" in text


def test_in_place_layer_on_an_input_blob(tmp_path):
    text = ('name: "ip"\nlayer { name: "data" type: "Input" top: "data" input_param { '
            'shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
            'layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }\n')
    net, _ = small_net(tmp_path, text)
    model = protonet.onnx.export(net)
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["s"]
    rows = compare(net, model, {"data": random_input((2, 3))})
    assert rows[0][2] <= 1e-4
    with pytest.raises(ProtonetError, match="output 'data' is a graph input"):
        protonet.onnx.export(net, outputs=["data"])


def test_large_weights_go_to_an_external_file(tmp_path, monkeypatch):
    from protonet.onnx_export import exporter
    monkeypatch.setattr(exporter, "_EXTERNAL_BYTES", 100)
    net, _ = small_net(tmp_path)
    out = tmp_path / "big.onnx"
    protonet.onnx.export(net, out)
    assert (tmp_path / "big.onnx.data").exists()
    rows = compare(net, str(out), {"data": random_input((2, 3, 8, 8))})
    assert rows[0][2] <= 1e-4
