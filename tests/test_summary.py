"""protonet.summary: the per-layer figures users know, exactly."""

import pytest

from protonet import io
from protonet.netspec import NetSpec, layers as L
from protonet.summary import format_table, summarize


@pytest.fixture(scope="module")
def vgg16():
    return summarize("zoo/vgg16/deploy.prototxt")


def test_vgg16_parameters_and_layer_rows(vgg16):
    assert vgg16.params == 138_357_544
    conv1_1 = vgg16.row("conv1_1")
    assert conv1_1.shape == (64, 224, 224)
    assert conv1_1.activations == 224 * 224 * 64 == 3_211_264
    assert conv1_1.memory == 3_211_264 * 4
    assert conv1_1.weights == 1_728 and conv1_1.biases == 64
    assert vgg16.row("conv1_2").weights == 36_864
    assert vgg16.row("fc6").weights == 102_760_448
    assert vgg16.row("fc6").biases == 4_096
    assert vgg16.row("conv1_1").macs == 1_728 * 224 * 224


def test_vgg16_activation_memory_is_15_2m_not_24m(vgg16):
    # 150,528 input values + every layer's output once (in-place ReLU and
    # Dropout are not counted again).
    assert vgg16.activations == 15_238_608
    assert vgg16.forward_bytes == 15_238_608 * 4
    assert round(vgg16.forward_bytes / 2**20, 1) == 58.1
    assert vgg16.training_bytes == 2 * vgg16.forward_bytes
    assert vgg16.row("data").activations == 224 * 224 * 3
    relu = vgg16.row("relu1_1")
    assert relu.activations == 0 and relu.note == "in place"
    assert vgg16.param_bytes == 138_357_544 * 4


def test_alexnet_conv1_and_pool1():
    s = summarize("zoo/alexnet/deploy.prototxt")
    assert s.row("conv1").shape == (96, 55, 55)
    assert s.row("conv1").weights == 34_848
    assert s.row("conv1").biases == 96
    pool1 = s.row("pool1")
    assert pool1.shape == (96, 27, 27)
    assert pool1.weights == pool1.biases == 0
    assert s.params == 60_965_224


def test_cs231n_ten_5x5_filters():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[4, 3, 32, 32]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=5, stride=1,
                           pad=2)
    s = summarize(n.to_proto())
    assert s.row("conv").shape == (10, 32, 32)
    assert s.row("conv").params == 760
    assert s.params == 760


def test_split_blobs_share_memory_and_batch_only_scales_batch_total():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 3]))
    n.a = L.InnerProduct(n.data, num_output=5)
    n.b = L.ReLU(n.a)
    n.c = L.Sigmoid(n.a)            # `a` feeds two layers: a Split is inserted
    s = summarize(n.to_proto(), batch=8)
    split = [r for r in s if r.type == "Split"]
    assert len(split) == 1 and split[0].activations == 0
    assert s.activations == 6 + 5 + 5 + 5
    assert s.batch_forward_bytes == 8 * s.forward_bytes
    assert s.row("a").macs == 6 * 5 and s.row("a").params == 35


def test_format_table_lists_rows_and_totals(vgg16):
    text = format_table(vgg16)
    assert "conv1_1" in text and "3,211,264" in text
    assert "138,357,544" in text and "58.1 MiB" in text
    assert "in place" in text
    again = format_table(list(vgg16))   # plain rows: totals recomputed
    assert "138,357,544" in again


def test_summarize_reads_net_objects_and_rejects_bad_batch(tmp_path):
    import protonet
    net = protonet.Net("zoo/lenet/deploy.prototxt")
    assert summarize(net).params == 431_080
    with pytest.raises(protonet.ProtonetError, match="batch must be >= 1"):
        summarize("zoo/lenet/deploy.prototxt", batch=0)
    p = tmp_path / "x.prototxt"
    io.write_text(str(p), io.read_net("zoo/lenet/deploy.prototxt"))
    assert summarize(p).params == 431_080


# -- train_val nets without their data files (`protonet summary`) ----------

import os  # noqa: E402

ZOO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "zoo"))


def test_train_val_without_data_names_input_shape(tmp_path, monkeypatch,
                                                  capsys):
    from protonet import cli
    monkeypatch.chdir(tmp_path)             # no data/, no mean file here
    for model, example in [("lenet_digits", "data=1,C,28,28"),
                           ("caffenet", "data=1,C,227,227")]:
        assert cli.main(["summary", f"{ZOO}/{model}/train_val.prototxt"]) == 1
        err = capsys.readouterr().err
        assert f"--input-shape {example}" in err and "Traceback" not in err
        assert "is not there" in err
    assert cli.main(["summary", f"{ZOO}/caffenet/train_val.prototxt",
                     "--input-shape", "data=10,3,227,227"]) == 0
    out = capsys.readouterr().out
    deploy = summarize(f"{ZOO}/caffenet/deploy.prototxt")
    assert f"parameters: {deploy.params:,} " in out
    import re
    assert re.search(r"^conv1 +Convolution +96x55x55 ", out, re.M)
    assert not list(tmp_path.iterdir())     # nothing read, nothing written


def test_train_val_shapes_from_the_database(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("lmdb")
    from protonet import cli
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dataset", "digits", "--size", "32", "--out",
                     "data/digits", "--formats", "lmdb"]) == 0
    s = summarize(f"{ZOO}/lenet_digits/train_val.prototxt")
    assert s.row("digits").shape == (1, 28, 28)     # 1x32x32 record, crop 28
    assert s.params == summarize(f"{ZOO}/lenet_digits/deploy.prototxt").params
    assert s.row("accuracy").shape == ()


def test_data_layer_parameters_give_the_shapes(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    import numpy as np
    monkeypatch.chdir(tmp_path)
    with h5py.File("d.h5", "w") as f:
        f["x"] = np.zeros((5, 2, 6, 6), np.float32)
        f["y"] = np.zeros((5,), np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "d.h5") + "\n")
    (tmp_path / "out.h5").write_bytes(b"precious")
    net = tmp_path / "n.prototxt"
    net.write_text('''
layer { name: "h" type: "HDF5Data" top: "x" top: "y"
        hdf5_data_param { source: "list.txt" batch_size: 4 } }
layer { name: "i" type: "ImageData" top: "img" top: "lab"
        image_data_param { source: "missing.txt" batch_size: 2
                           new_height: 20 new_width: 16 is_color: false } }
layer { name: "w" type: "WindowData" top: "win" top: "wl"
        transform_param { crop_size: 9 }
        window_data_param { source: "missing_windows.txt" batch_size: 3 } }
layer { name: "d" type: "Data" top: "raw" top: "rl"
        data_param { source: "missing_lmdb" batch_size: 2 } }
layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y"
        hdf5_output_param { file_name: "out.h5" } }
''')
    s = summarize(str(net), input_shapes=["raw=7,3,5,5"])
    assert s.row("h").shape == (2, 6, 6)
    assert s.row("i").shape == (1, 20, 16)
    assert s.row("w").shape == (3, 9, 9)
    assert s.row("d").shape == (3, 5, 5)
    assert (tmp_path / "out.h5").read_bytes() == b"precious"
    from protonet.errors import ProtonetError
    with pytest.raises(ProtonetError, match=r"layer 'd' \(Data\).*missing_lmdb"
                       r".*--input-shape raw=1,C,H,W"):
        summarize(str(net))
    with pytest.raises(ProtonetError, match="--input-shape 'raw=a,b'"):
        summarize(str(net), input_shapes=["raw=a,b"])
    with pytest.raises(ProtonetError, match=r"--input-shape rw: no input .*"
                       r"tops: x, y, img, lab, win, wl, raw, rl\)"):
        summarize(str(net), input_shapes=["raw=1,1,2,2", "rw=1,2"])
    # without a top name: the first input top; Input layers take it too
    assert summarize(str(net), input_shapes=["raw=1,1,2,2", "1,4,3,3"]
                     ).row("h").shape == (4, 3, 3)
    deploy = summarize(f"{ZOO}/lenet/deploy.prototxt",
                       input_shapes=["data=1,1,32,32"])
    assert deploy.row("conv1").shape == (20, 28, 28)
    # crop_size with the channels of mean_value / the mean file
    net.write_text(net.read_text().replace(
        'data_param { source: "missing_lmdb"', 'transform_param { crop_size: '
        '4 mean_value: 1 mean_value: 2 mean_value: 3 } data_param { source: '
        '"missing_lmdb"'))
    assert summarize(str(net)).row("d").shape == (3, 4, 4)
    net.write_text(net.read_text().replace(
        "mean_value: 1 mean_value: 2 mean_value: 3",
        'mean_file: "m.binaryproto"'))
    from protonet.io import write_binaryproto
    write_binaryproto(str(tmp_path / "m.binaryproto"),
                      np.zeros((1, 2, 6, 6), np.float32))
    assert summarize(str(net)).row("d").shape == (2, 4, 4)
