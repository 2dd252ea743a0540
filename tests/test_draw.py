"""protonet.draw: pycaffe's caffe.draw (labels, colours, pydot graph) and
rendering through Graphviz's `dot`."""

import shutil
import sys

import pytest

from protonet import draw, io
from protonet.errors import ProtonetError
from protonet.proto import caffe_pb2

LENET = "zoo/lenet/train_val.prototxt"


def layer(text):
    return io.parse_net_text(text, upgrade=False).layer[0]


CONV = layer('layer { name: "conv1" type: "Convolution" bottom: "data" '
             'top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 } '
             'convolution_param { num_output: 20 kernel_size: 5 pad: 1 } }')
POOL = layer('layer { name: "pool1" type: "Pooling" bottom: "c" top: "p" '
             'pooling_param { pool: AVE kernel_size: 3 stride: 2 } }')


def test_layer_labels_are_pycaffes_text():
    assert draw.get_layer_label(CONV, "LR") == \
        r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 1"'
    assert draw.get_layer_label(CONV, "TB") == \
        '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 1"'
    assert draw.get_layer_label(CONV, "BT", display_lrm=True) == \
        '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 1 lr mult: 1.0, ' \
        '2.0"'
    assert draw.get_layer_label(POOL, "LR") == \
        r'"pool1\n(Pooling AVE)\nkernel size: 3\nstride: 2\npad: 0"'
    relu = layer('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
    assert draw.get_layer_label(relu, "LR", display_lrm=True) == r'"r\n(ReLU)"'


def test_edge_labels_colours_and_lr_mult():
    data = layer('layer { name: "d" type: "Data" top: "x" '
                 'data_param { batch_size: 64 } }')
    assert draw.get_edge_label(data) == "Batch 64"
    assert draw.get_edge_label(CONV) == "20"
    assert draw.get_edge_label(POOL) == '""'
    assert [draw.choose_color_by_layertype(t) for t in
            ("Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU")
            ] == ["#FF5050", "#FF5050", "#FF9900", "#CC33FF", "#6495ED"]
    assert draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE",
                                             2: "STOCHASTIC"}
    assert draw.get_layer_lr_mult(CONV) == (1.0, 2.0)
    with pytest.raises(ValueError, match="Pooling layers do not have a "
                                         "learning rate multiplier"):
        draw.get_layer_lr_mult(POOL)


def test_pydot_graph_matches_the_dot_text():
    pydot = pytest.importorskip("pydot")
    net = io.read_net(LENET)
    g = draw.get_pydot_graph(net, "LR")
    assert isinstance(g, pydot.Dot) and g.get_rankdir() == "LR"
    names = [n.get_name() for n in g.get_nodes()]
    # the TRAIN and TEST data layers share one label, hence one node
    assert names.count(r'"data\n(Data)"') == 1
    conv = g.get_node(r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1'
                      r'\npad: 0"')[0]
    assert conv.get("fillcolor") == "#FF5050" and conv.get("shape") == "record"
    assert g.get_node(r'"relu1\n(ReLU)"')[0].get("fillcolor") == "#90EE90"
    assert g.get_node("pool1")[0].get("shape") == "octagon"
    assert g.get_node("loss")[0].get("shape") is None   # a net output
    edges = {(e.get_source(), e.get_destination(), e.get("label"))
             for e in g.get_edges()}
    assert (r'"ip1\n(InnerProduct)"', "ip1", "500") in edges
    # the dependency-free dot text holds the same graph
    def bare(text):
        return text.strip('"')
    parsed = pydot.graph_from_dot_data(draw.to_dot(net, "LR"))[0]
    assert sorted(bare(n.get_name()) for n in parsed.get_nodes()) == \
        sorted(bare(n) for n in names)
    assert {tuple(map(bare, (e.get_source(), e.get_destination(),
                             e.get("label")))) for e in parsed.get_edges()} \
        == {tuple(map(bare, e)) for e in edges}


def test_phase_filter_as_pycaffe():
    test_only = draw.to_dot(LENET, phase=caffe_pb2.TEST)
    assert "Batch 100" in test_only and "Batch 64" not in test_only
    assert "(Accuracy)" in test_only
    train_only = draw.to_dot(LENET, phase=caffe_pb2.TRAIN)
    assert "(Accuracy)" not in train_only and "Batch 64" in train_only
    both = io.parse_net_text('layer { name: "a" type: "ReLU" bottom: "x" '
                             'top: "x" include { phase: TRAIN } exclude '
                             '{ phase: TEST } }', upgrade=False)
    with pytest.raises(ValueError, match="layer a has both include and "
                                         "exclude specified."):
        draw.to_dot(both, phase=caffe_pb2.TEST)


def test_missing_pydot_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)
    monkeypatch.setitem(sys.modules, "pydotplus", None)
    with pytest.raises(ProtonetError, match=r"pip install protonet\[draw\]"):
        draw.get_pydot_graph(io.read_net(LENET), "LR")


def test_dot_and_raw_files_need_no_dependency(tmp_path):
    for ext in ("dot", "raw"):
        out = tmp_path / f"net.{ext}"
        draw.draw_net_to_file(io.read_net("zoo/lenet/deploy.prototxt"),
                              str(out))
        assert out.read_text().startswith('digraph "lenet"')


def test_bad_rankdir():
    with pytest.raises(draw.DrawError, match="rankdir"):
        draw.to_dot("zoo/lenet/deploy.prototxt", rankdir="XY")


def test_svg_rendering_or_a_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "net.svg"
    if shutil.which("dot"):
        draw.draw_net_to_file("zoo/lenet/deploy.prototxt", str(out), "TB",
                              display_lrm=True)
        svg = out.read_bytes()
        assert b"<svg" in svg and b"lr mult: 1.0, 1.0" in svg
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(draw.DrawError, match="apt-get install graphviz"):
        draw.draw_net("zoo/lenet/deploy.prototxt", ext="png")
