"""`protonet extract-features` (Caffe's tools/extract_features)."""

import numpy as np
import pytest

import protonet
from protonet import cli, db

pytest.importorskip("lmdb")

NET = """
layer {{ name: "d" type: "Data" top: "data" top: "label"
  data_param {{ source: "{src}" batch_size: 2 backend: LMDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" }}
    bias_filler {{ type: "gaussian" }} }} }}
"""


def pixels(i):
    return ((np.arange(36).reshape(3, 4, 3) * 3 + i * 11) % 256) \
        .astype(np.uint8)


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "in"
    db.write_datums(src, [(f"{i:08d}", db.array_to_datum(pixels(i), i))
                          for i in range(5)])
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(NET.format(src=src))
    protonet.set_random_seed(4)
    net = protonet.Net(str(net_file), protonet.TEST)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    W, b = (p.data.astype(np.float64) for p in net.params["ip"])
    return tmp_path, net_file, weights, W, b


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_extracts_one_datum_per_image(setup, backend, capfd):
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    tmp_path, net_file, weights, W, b = setup
    out_ip, out_data = tmp_path / "f_ip", tmp_path / "f_data"
    assert cli.main(["extract-features", str(weights), str(net_file),
                     "ip,data", f"{out_ip},{out_data}", "3", backend]) == 0
    err = capfd.readouterr().err
    assert "extract_features.cpp:62] Using CPU" in err
    assert "Extracted features of 6 query images for feature blob ip" in err
    assert "Successfully extracted the features!" in err
    ip = list(db.read_datums(out_ip, backend))
    data = list(db.read_datums(out_data, backend))
    # 3 batches of 2 read from 5 records: the data layer wraps around.
    assert [k for k, _ in ip] == [f"{i:010d}".encode() for i in range(6)]
    for n, ((_, d_ip), (_, d_x)) in enumerate(zip(ip, data)):
        x = pixels(n % 5)
        assert (d_x.channels, d_x.height, d_x.width) == (3, 4, 3)
        np.testing.assert_array_equal(db.datum_to_array(d_x), x)
        assert (d_ip.channels, d_ip.height, d_ip.width) == (3, 1, 1)
        assert not d_ip.data and len(d_ip.float_data) == 3
        want = W @ x.ravel().astype(np.float64) + b
        np.testing.assert_allclose(d_ip.float_data, want, rtol=1e-5)


def test_default_db_type_is_lmdb_and_errors(setup, capfd):
    tmp_path, net_file, weights, _, _ = setup
    out = tmp_path / "f"
    assert cli.main(["extract-features", str(weights), str(net_file), "ip",
                     str(out), "1"]) == 0
    assert len(list(db.read_datums(out))) == 2
    capfd.readouterr()
    # the database must be new, as Caffe's db::NEW
    assert cli.main(["extract-features", str(weights), str(net_file), "ip",
                     str(out), "1"]) == 1
    assert "already exists" in capfd.readouterr().err
    assert cli.main(["extract-features", str(weights), str(net_file), "fc7",
                     str(tmp_path / "g"), "1"]) == 1
    assert "Unknown feature blob name fc7 in the network" in \
        capfd.readouterr().err
    assert cli.main(["extract-features", str(weights), str(net_file),
                     "ip,data", str(tmp_path / "h"), "1"]) == 1
    assert "must be equal" in capfd.readouterr().err
    assert cli.main(["extract-features", str(weights), str(net_file), "ip",
                     str(tmp_path / "k"), "1", "rocksdb"]) == 1
    assert "unknown database backend 'rocksdb'" in capfd.readouterr().err
