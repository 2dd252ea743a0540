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


# -- through `protonet <tool>`: Caffe's log lines and flag spellings --------

def _glog(err):
    import re
    return [line.split("] ", 1)[1] for line in err.splitlines()
            if re.match(r"[IWEF]\d{4} ", line)]


def test_convert_imageset_takes_caffe_spellings_and_logs(tmp_path, capsys):
    from protonet import cli
    lst = write_images(tmp_path, sizes=((6, 5), (7, 5)))
    out = tmp_path / "db"
    assert cli.main(["convert-imageset", "-resize_height", "4",
                     "--resize_width=3", "-backend", "lmdb", "-gray=true",
                     "--check_size=false", "-shuffle", f"{tmp_path}/",
                     str(lst), str(out)]) == 0
    msgs = _glog(capsys.readouterr().err)
    assert msgs == ["Shuffling data", "A total of 2 images.",
                    "Processed 2 files."]
    shapes = {db.datum_to_array(d).shape for _, d in db.read_datums(out)}
    assert shapes == {(1, 4, 3)}
    assert cli.main(["convert-imageset", "-gray=maybe", f"{tmp_path}/",
                     str(lst), str(tmp_path / "x")]) == 2
    assert "-gray: expected true or false" in capsys.readouterr().err


def test_compute_mean_logs_like_caffe(tmp_path, capsys):
    from protonet import cli
    src = tmp_path / "db"
    db.write_datums(src, ((f"{i:08d}", db.array_to_datum(
        np.full((2, 2, 2), 10 * (i + 1), np.uint8))) for i in range(3)))
    assert cli.main(["compute-mean", "-backend", "lmdb", str(src),
                     str(tmp_path / "mean.binaryproto")]) == 0
    msgs = _glog(capsys.readouterr().err)
    assert msgs == ["Starting Iteration", "Processed 3 files.",
                    f"Write to {tmp_path / 'mean.binaryproto'}",
                    "Number of channels: 2", "mean_value channel [0]:20",
                    "mean_value channel [1]:20"]


# -- `protonet dataset`: dependencies first, idempotent, never partial ------

def _block_import(monkeypatch, blocked):
    import builtins
    real = builtins.__import__

    def fake(name, *args, **kw):
        if name.split(".")[0] == blocked:
            raise ImportError(f"No module named {blocked!r}")
        return real(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("blocked, formats", [("h5py", "lmdb,hdf5"),
                                              ("lmdb", "lmdb"),
                                              ("sklearn", "hdf5")])
def test_dataset_checks_dependencies_before_writing(tmp_path, capsys,
                                                    monkeypatch, blocked,
                                                    formats):
    from protonet import cli
    _block_import(monkeypatch, blocked)
    out = tmp_path / "data" / "digits"
    assert cli.main(["dataset", "digits", "--out", str(out), "--formats",
                     formats]) == 1
    assert blocked.replace("sklearn", "scikit-learn") in \
        capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name != "data"]


def test_dataset_is_idempotent_and_names_force(tmp_path, capsys):
    from protonet import cli
    pytest.importorskip("sklearn")
    pytest.importorskip("h5py")
    out = tmp_path / "digits"
    argv = ["dataset", "digits", "--out", str(out), "--size", "10"]
    assert cli.main(argv) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert cli.main(argv) == 0                  # same request: nothing to do
    said = capsys.readouterr().out
    assert f"{out} is already up to date" in said
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first
    assert cli.main(argv + ["--formats", "lmdb"]) == 0   # a subset: same
    assert "already up to date" in capsys.readouterr().out
    (out / "digits_test.h5").unlink()           # ours, incomplete: rewritten
    assert cli.main(argv) == 0 and (out / "digits_test.h5").exists()
    assert "wrote" in capsys.readouterr().out
    (out / "mine.txt").write_text("the user's own file")
    assert cli.main(["dataset", "digits", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and "10x10" in err and "8x8" in err
    assert cli.main(["dataset", "digits", "--out", str(out), "--force"]) == 0
    x = db.datum_to_array(next(db.read_datums(out / "digits_test_lmdb"))[1])
    assert x.shape == (1, 8, 8)
    assert (out / "mine.txt").read_text() == "the user's own file"
    assert (out / "test_h5.txt").read_text().strip() == \
        str((out / "digits_test.h5").resolve())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".digits")]


def test_dataset_failure_leaves_no_partial_folder(tmp_path, capsys,
                                                  monkeypatch):
    from protonet import cli
    from protonet.errors import ProtonetError
    pytest.importorskip("sklearn")
    real = datasets._write_splits

    def fail_after_lmdb(tmp, *args):
        real(tmp, *args[:3], ("lmdb",), args[4])
        raise ProtonetError("disk full (simulated)")
    monkeypatch.setattr(datasets, "_write_splits", fail_after_lmdb)
    out = tmp_path / "digits"
    assert cli.main(["dataset", "digits", "--out", str(out)]) == 1
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    assert cli.main(["dataset", "digits", "--out", str(tmp_path / "file")]) == 1
    assert "not a folder" in capsys.readouterr().err
