"""LevelDB databases (backend: LEVELDB) through the optional plyvel."""

import argparse
import importlib.util
import sys

import numpy as np
import pytest

import protonet
from protonet import db
from protonet.errors import DataError, ProtonetError
from protonet.tools import compute_mean, convert_imageset

pytest.importorskip("PIL")


def parse(module, argv):
    return module.add_arguments(argparse.ArgumentParser()).parse_args(argv)


def pixels(i, C=3, H=4, W=3):
    return ((np.arange(C * H * W).reshape(C, H, W) * 5 + i * 17) % 256) \
        .astype(np.uint8)


def make_leveldb(path, n=6, order=None):
    with db.open_writer(path, "leveldb") as w:
        for i in order or range(n):
            w.put(f"{i:08d}", db.array_to_datum(pixels(i), label=i % 3))
    return str(path)


def test_missing_plyvel_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plyvel", None)   # import fails
    with pytest.raises(ProtonetError,
                       match=r"pip install protonet\[leveldb\]"):
        db.open_writer(tmp_path / "x", db.LEVELDB)
    f = tmp_path / "net.prototxt"
    f.write_text(f'layer {{ name: "d" type: "Data" top: "data" data_param {{ '
                 f'source: "{tmp_path}" batch_size: 1 backend: LEVELDB }} }}')
    with pytest.raises(ProtonetError, match=r"protonet\[leveldb\]"):
        protonet.Net(str(f), protonet.TEST)


needs_plyvel = pytest.mark.skipif(importlib.util.find_spec("plyvel") is None,
                                  reason="plyvel (protonet[leveldb]) not "
                                  "installed")


@needs_plyvel
def test_round_trip_in_key_order(tmp_path):
    path = make_leveldb(tmp_path / "db", order=[3, 0, 5, 1, 4, 2])
    items = list(db.read_datums(path, "leveldb"))
    assert [k for k, _ in items] == [f"{i:08d}".encode() for i in range(6)]
    for i, (_, d) in enumerate(items):
        np.testing.assert_array_equal(db.datum_to_array(d), pixels(i))
        assert d.label == i % 3
    with pytest.raises(DataError, match="already exists"):
        db.open_writer(path, "leveldb")
    with pytest.raises(DataError, match="no such LevelDB"):
        list(db.read_datums(tmp_path / "none", db.LEVELDB))


@needs_plyvel
def test_an_lmdb_read_as_leveldb_says_so(tmp_path):
    pytest.importorskip("lmdb")
    path = tmp_path / "lmdb"
    db.write_datums(path, [("a", db.array_to_datum(pixels(0)))])
    with pytest.raises(DataError, match=r"an LMDB database; set `backend: "
                                        r"LMDB`"):
        db.open_cursor(path, db.LEVELDB)


SOLVER = """net: "{net}" base_lr: 0.1 lr_policy: "fixed" max_iter: 10
display: 0 snapshot: 0 solver_mode: CPU random_seed: 1"""

NET = """
layer {{ name: "d" type: "Data" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{src}" batch_size: 4 }} }}
layer {{ name: "d" type: "Data" top: "data" top: "label"
  include {{ phase: TEST }}
  data_param {{ source: "{src}" batch_size: 2 backend: LEVELDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
  top: "loss" }}
"""


@needs_plyvel
def test_data_layer_reads_leveldb_in_key_order_and_trains(tmp_path):
    src = make_leveldb(tmp_path / "db", order=[5, 4, 3, 2, 1, 0])
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(NET.format(src=src))
    # The default backend (none given in the TRAIN layer) is LEVELDB.
    test_net = protonet.Net(str(net_file), protonet.TEST)
    labels = []
    for _ in range(4):            # 8 records read from 6: wraps around
        test_net.forward()
        labels += test_net.blobs["label"].data.astype(int).tolist()
    assert labels == [0, 1, 2, 0, 1, 2, 0, 1]
    np.testing.assert_array_equal(test_net.blobs["data"].data[1], pixels(1))
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(SOLVER.format(net=net_file))
    solver = protonet.SGDSolver(str(solver_file))   # opens the same db again
    before = solver.net.params["ip"][0].data.copy()
    solver.step(1)
    assert np.isfinite(solver.net.blobs["loss"].data).all()
    assert not np.array_equal(before, solver.net.params["ip"][0].data)
    # Resume: the cursor seeks back to the saved key.
    layer = test_net.layers[0]
    state = layer.get_state()
    test_net.forward()
    first = test_net.blobs["label"].data.copy()
    layer.set_state(state)
    test_net.forward()
    np.testing.assert_array_equal(test_net.blobs["label"].data, first)


@needs_plyvel
def test_convert_imageset_and_compute_mean_on_leveldb(tmp_path):
    from PIL import Image
    lines = []
    for i in range(3):
        arr = ((np.arange(5 * 4 * 3).reshape(5, 4, 3) * (i + 2)) % 256)
        Image.fromarray(arr.astype(np.uint8)).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png {i}")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(lines) + "\n")
    out = tmp_path / "ldb"
    assert convert_imageset.run(parse(convert_imageset, [
        "--backend", "leveldb", f"{tmp_path}/", str(lst), str(out)])) == 0
    assert (out / "CURRENT").exists()
    items = list(db.read_datums(out, "leveldb"))
    assert [k for k, _ in items] == [b"00000000_im0.png", b"00000001_im1.png",
                                     b"00000002_im2.png"]
    imgs = [db.datum_to_array(d) for _, d in items]
    mean_file = tmp_path / "mean.binaryproto"
    assert compute_mean.run(parse(compute_mean, [
        "--backend", "leveldb", str(out), str(mean_file)])) == 0
    want = (np.sum(np.stack(imgs).astype(np.float32), axis=0) / 3)[None]
    np.testing.assert_array_equal(protonet.io.read_binaryproto(mean_file),
                                  want)
