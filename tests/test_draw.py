"""protonet.draw: Graphviz dot source, rendering through `dot`."""

import shutil

import pytest

from protonet import draw, io
from protonet.proto import caffe_pb2


def test_dot_source_has_layers_blobs_and_edges():
    src = draw.to_dot("zoo/lenet/train_val.prototxt")
    assert src.startswith('digraph "lenet" {') and src.rstrip().endswith("}")
    assert 'label="conv1\\n(Convolution)\\nkernel size: 5 stride: 1 pad: 0"' in src
    assert 'fillcolor="#FF5050"' in src and 'fillcolor="#FF9900"' in src
    assert '"blob_conv1" [shape="octagon"' in src
    assert '"layer2" -> "blob_conv1" [label="20"];' in src   # num_output
    assert '[label="Batch 64"]' in src
    # both Data layers without a phase, only the TEST one with phase TEST
    assert src.count("(Data)") == 2
    test_only = draw.to_dot("zoo/lenet/train_val.prototxt", phase=caffe_pb2.TEST)
    assert test_only.count("(Data)") == 1 and "(Accuracy)" in test_only
    train_only = draw.to_dot("zoo/lenet/train_val.prototxt", phase=caffe_pb2.TRAIN)
    assert "(Accuracy)" not in train_only


def test_in_place_layer_points_back_at_its_blob_and_labels_escape():
    net = io.parse_net_text('name: "a\\"b" layer { name: "ip" type: "InnerProduct" '
                            'bottom: "x" top: "x" inner_product_param { num_output: 3 } '
                            'param { lr_mult: 2 } }', upgrade=False)
    src = draw.to_dot(net, rankdir="TB", display_lrm=True)
    assert 'digraph "a\\"b"' in src
    assert '"blob_x" -> "layer0";' in src and '"layer0" -> "blob_x"' in src
    assert "lr mult: 2.0\\ndecay mult: 1" in src


def test_dot_file_needs_no_dependency(tmp_path):
    out = tmp_path / "net.dot"
    draw.draw_net_to_file(io.read_net("zoo/lenet/deploy.prototxt"), str(out))
    assert out.read_text().startswith("digraph")


def test_bad_rankdir():
    with pytest.raises(draw.DrawError, match="rankdir"):
        draw.to_dot("zoo/lenet/deploy.prototxt", rankdir="XY")


def test_svg_rendering_or_a_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "net.svg"
    if shutil.which("dot"):
        draw.draw_net_to_file("zoo/lenet/deploy.prototxt", str(out))
        assert b"<svg" in out.read_bytes()
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    import builtins
    real_import = builtins.__import__

    def no_packages(name, *a, **k):
        if name in ("graphviz", "pydot"):
            raise ImportError(name)
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_packages)
    with pytest.raises(draw.DrawError, match="apt-get install graphviz"):
        draw.draw_net("zoo/lenet/deploy.prototxt", ext="png")
