"""Every prototxt of the public corpus parses (and legacy ones upgrade)."""

import csv
import os
import re
import warnings

import pytest

from protonet import io
from protonet.errors import ParseError
from protonet.upgrade import UpgradeWarning

CORPUS = os.path.join(os.path.dirname(__file__), "fixtures", "corpus")
with open(os.path.join(CORPUS, "MANIFEST.tsv")) as f:
    ROWS = list(csv.DictReader(f, delimiter="\t"))
TEMPLATE = "natanielruiz__net-archive/mixture_dcnn/base_model.prototxt"
PARSEABLE = [r for r in ROWS if r["local_path"] != TEMPLATE]


def _read(row):
    path = os.path.join(CORPUS, row["local_path"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UpgradeWarning)
        if row["kind"] == "solver":
            return io.read_solver(path)
        return io.read_net(path)


@pytest.mark.parametrize("row", PARSEABLE, ids=lambda r: r["local_path"])
def test_corpus_file_parses(row):
    msg = _read(row)
    if row["kind"] == "solver":
        assert not msg.HasField("solver_type")
        return
    assert not msg.layers, "V1/V0 layers left after upgrade"
    assert not msg.input and not msg.input_dim and not msg.input_shape
    with open(os.path.join(CORPUS, row["local_path"])) as f:
        text = f.read()
    n_padding = text.count('type: "padding"')  # V0: folded away
    n_input = 1 if re.search(r"^input\s*:", text, re.M) else 0  # upgraded
    assert len(msg.layer) - n_input == int(row["n_layers"]) - n_padding
    # The manifest's canonical V2 type names (Caffe's own table) match ours.
    types = {l.type for l in msg.layer} - {"Input"}
    expected = set(row["canonical"].split(",")) - {"Input"}
    assert types == expected


LEGACY = [r for r in PARSEABLE if r["format"].startswith(("V0", "V1"))]


@pytest.mark.parametrize("row", LEGACY, ids=lambda r: r["local_path"])
def test_legacy_nets_upgrade_to_v2(row, tmp_path):
    net = _read(row)
    assert net.layer and not net.layers
    # The upgraded text is a plain V2 net that parses without any upgrade.
    out = tmp_path / "v2.prototxt"
    io.write_text(out, net)
    again = io.read_net(out, upgrade=False)
    assert again == net


def test_v0_padding_layers_are_folded():
    row = next(r for r in ROWS if "hash-codes" in r["local_path"])
    net = _read(row)
    assert "padding" not in {l.type for l in net.layer}
    conv2 = next(l for l in net.layer if l.name == "conv2")
    assert list(conv2.convolution_param.pad) == [2]
    assert list(conv2.bottom) == ["norm1"]
    data = net.layer[0]
    assert data.transform_param.crop_size == 227 and data.transform_param.mirror


def test_template_placeholder_fails_with_line():
    path = os.path.join(CORPUS, TEMPLATE)
    with pytest.raises(ParseError) as err:
        io.read_net(path)
    assert err.value.line == 284 and err.value.column == 17
    assert f"{path}:284:17" in str(err.value)
    assert "NUM_OUTPUTS" in str(err.value) and "placeholder" in str(err.value)


def test_fork_fields_are_mapped():
    def layer(path, name):
        net = _read({"local_path": path, "kind": "net"})
        return next(l for l in net.layer if l.name == name)

    pool = layer("shicai__DenseNet-Caffe/DenseNet_121.prototxt", "pool1")
    assert pool.pooling_param.round_mode == pool.pooling_param.FLOOR
    assert not pool.pooling_param.HasField("ceil_mode")
    conv = layer("natanielruiz__net-archive/parsenet/VGG_VOC2012ext.prototxt",
                 "fc6")
    assert list(conv.convolution_param.dilation) == [12]
    assert not conv.convolution_param.HasField("filter_stride")
