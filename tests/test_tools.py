"""convert_imageset, compute_mean and the digits dataset command."""

import argparse

import numpy as np
import pytest

import protonet
from protonet import db
from protonet.io import read_binaryproto
from protonet.tools import compute_mean, convert_imageset, datasets

pytest.importorskip("lmdb")
pytest.importorskip("PIL")


def parse(module, argv):
    return module.add_arguments(argparse.ArgumentParser()).parse_args(argv)


def write_images(folder, sizes=((6, 5), (6, 5), (6, 5))):
    from PIL import Image
    lines = []
    for i, (h, w) in enumerate(sizes):
        arr = ((np.arange(h * w * 3).reshape(h, w, 3) * (i + 3)) % 256).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        lines.append(f"img{i}.png {i + 10}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def test_convert_imageset_raw_keys_and_bgr(tmp_path):
    lst = write_images(tmp_path)
    out = tmp_path / "db"
    assert convert_imageset.run(parse(convert_imageset, [
        f"{tmp_path}/", str(lst), str(out)])) == 0
    items = list(db.read_datums(out))
    assert [k for k, _ in items] == [b"00000000_img0.png", b"00000001_img1.png",
                                     b"00000002_img2.png"]
    d = items[1][1]
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 6, 5, 11, False)
    from PIL import Image
    rgb = np.asarray(Image.open(tmp_path / "img1.png"))
    np.testing.assert_array_equal(db.datum_to_array(d),
                                  rgb[:, :, ::-1].transpose(2, 0, 1))


def test_convert_imageset_gray_resize_encoded(tmp_path):
    lst = write_images(tmp_path, sizes=((6, 5), (9, 4)))
    out = tmp_path / "db"
    assert convert_imageset.run(parse(convert_imageset, [
        "--gray", "--resize_height", "8", "--resize_width", "7",
        f"{tmp_path}/", str(lst), str(out)])) == 0
    for _, d in db.read_datums(out):
        assert (d.channels, d.height, d.width) == (1, 8, 7)
    enc = tmp_path / "enc"
    assert convert_imageset.run(parse(convert_imageset, [
        "--encoded", f"{tmp_path}/", str(lst), str(enc)])) == 0
    (_, d0), _ = list(db.read_datums(enc))
    assert d0.encoded and d0.data == (tmp_path / "img0.png").read_bytes()
    jpg = tmp_path / "jpg"
    assert convert_imageset.run(parse(convert_imageset, [
        "--encode_type", "jpg", f"{tmp_path}/", str(lst), str(jpg)])) == 0
    (_, d0), _ = list(db.read_datums(jpg))
    assert d0.encoded and d0.data[:2] == b"\xff\xd8"      # JPEG magic


def test_convert_imageset_check_size_and_errors(tmp_path, capsys):
    lst = write_images(tmp_path, sizes=((6, 5), (7, 5)))
    assert convert_imageset.run(parse(convert_imageset, [
        "--check_size", f"{tmp_path}/", str(lst), str(tmp_path / "a")])) == 1
    assert "list.txt:2: img1.png: incorrect data field size" in \
        capsys.readouterr().err
    assert convert_imageset.run(parse(convert_imageset, [
        f"{tmp_path}/", str(tmp_path / "none.txt"), str(tmp_path / "b")])) == 1
    assert "none.txt" in capsys.readouterr().err
    assert convert_imageset.run(parse(convert_imageset, [
        "--backend", "rocksdb", f"{tmp_path}/", str(lst), str(tmp_path / "c")])) == 1
    assert "unknown database backend 'rocksdb'" in capsys.readouterr().err


def test_convert_imageset_skips_unreadable_and_shuffles(tmp_path):
    lst = write_images(tmp_path, sizes=((6, 5),) * 4)
    lst.write_text(lst.read_text() + "missing.png 3\n")
    out = tmp_path / "db"
    assert convert_imageset.run(parse(convert_imageset, [
        "--shuffle", "--seed", "3", f"{tmp_path}/", str(lst), str(out)])) == 0
    keys = [k.decode() for k, _ in db.read_datums(out)]
    assert len(keys) == 4 and "missing" not in "".join(keys)
    names = [k.split("_", 1)[1] for k in sorted(keys)]
    assert sorted(names) == [f"img{i}.png" for i in range(4)]


def test_compute_mean_matches_float32_accumulation(tmp_path, capsys):
    rs = np.random.RandomState(0)
    arrays = [rs.randint(0, 256, (2, 3, 4)).astype(np.uint8) for _ in range(7)]
    src = tmp_path / "db"
    db.write_datums(src, ((f"{i:08d}", db.array_to_datum(a))
                          for i, a in enumerate(arrays)))
    out = tmp_path / "mean.binaryproto"
    assert compute_mean.run(parse(compute_mean, [str(src), str(out)])) == 0
    total = np.zeros((2, 3, 4), np.float32)
    for a in arrays:
        total = total + a.astype(np.float32)
    want = total / np.float32(7)
    mean = read_binaryproto(out)
    assert mean.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(mean[0], want)
    blob = protonet.caffe_pb2.BlobProto()
    blob.ParseFromString(out.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 2, 3, 4)
    assert "mean_value channel [1]" in capsys.readouterr().out


def test_compute_mean_rejects_mixed_sizes(tmp_path, capsys):
    src = tmp_path / "db"
    db.write_datums(src, [("a", db.array_to_datum(np.zeros((1, 2, 2), np.uint8))),
                          ("b", db.array_to_datum(np.zeros((1, 3, 2), np.uint8)))])
    assert compute_mean.run(parse(compute_mean, [str(src)])) == 1
    assert "record 'b', field 'data'" in capsys.readouterr().err


def test_digits_dataset_matches_caffe_ref_split(tmp_path):
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    assert datasets.run(parse(datasets, ["digits", "--split", "ordered", "--out", str(out)])) == 0
    ref = "tests/fixtures/caffe_ref/train/lr_fixed/digits_test.h5"
    with h5py.File(out / "digits_test.h5", "r") as f, h5py.File(ref, "r") as g:
        np.testing.assert_array_equal(f["data"][()], g["data"][()])
        np.testing.assert_array_equal(f["label"][()], g["label"][()])
    items = list(db.read_datums(out / "digits_train_lmdb"))
    assert len(items) == 1200 and items[0][0] == b"00000000"
    x = db.datum_to_array(items[0][1])
    from sklearn.datasets import load_digits
    want = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    assert x.shape == (1, 8, 8) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[0], want)
    assert items[5][1].label == load_digits().target[5]
    # HDF5Data reads the list file it wrote
    net_txt = tmp_path / "h5.prototxt"
    net_txt.write_text(f'layer {{ name: "d" type: "HDF5Data" top: "data" '
                       f'top: "label" hdf5_data_param {{ source: '
                       f'"{out / "test_h5.txt"}" batch_size: 597 }} }}')
    net = protonet.Net(str(net_txt), protonet.TEST)
    net.forward()
    assert net.blobs["data"].shape == (597, 1, 8, 8)


def test_digits_upscaled_feeds_the_zoo_net(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    out = tmp_path / "data" / "digits"
    assert datasets.run(parse(datasets, ["digits", "--size", "32", "--out",
                                         str(out), "--formats", "lmdb"])) == 0
    assert datasets.run(parse(datasets, ["digits", "--out", str(out),
                                         "--formats", "lmdb"])) == 1
    assert datasets.run(parse(datasets, ["digits", "--out", str(out),
                                         "--formats", "csv"])) == 2
    import os
    zoo = os.path.abspath("zoo/lenet_digits")
    monkeypatch.chdir(tmp_path)
    net = protonet.Net(os.path.join(zoo, "train_val.prototxt"), protonet.TEST)
    net.forward()
    assert net.blobs["data"].shape == (199, 1, 28, 28)
    assert 0.0 <= net.blobs["data"].data.min() and net.blobs["data"].data.max() <= 1.0
    assert float(net.blobs["accuracy"].data) >= 0.0
    deploy = protonet.Net(os.path.join(zoo, "deploy.prototxt"), protonet.TEST)
    assert deploy.blobs["prob"].shape == (1, 10)
    n_params = sum(b.count for layer in deploy.layers for b in layer.blobs)
    assert n_params == 58106


def test_digits_shuffled_split_is_a_fixed_partition():
    train, test = datasets.split_indices(1797, "shuffled")
    assert len(train) == 1200 and len(test) == 597
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(1797))
    again, _ = datasets.split_indices(1797, "shuffled")
    assert np.array_equal(train, again)
    ordered, _ = datasets.split_indices(1797, "ordered")
    assert np.array_equal(ordered, np.arange(1200))
