"""DummyData, MemoryData, HDF5Data and HDF5Output."""

import numpy as np
import pytest

import protonet
from protonet.errors import DataError, LayerError, ProtonetError
from protonet.net import TRAIN, Net
from protonet.testing import make_layer

h5py = pytest.importorskip("h5py")


def net_from(text, tmp_path, phase=TRAIN):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return Net(str(path), phase=phase)


# -- DummyData ---------------------------------------------------------------

def test_dummy_data_shapes_new_and_legacy():
    layer, _, top = make_layer(
        'type: "DummyData" top: "a" top: "b" dummy_data_param { '
        'shape { dim: 2 dim: 3 } shape { dim: 5 } }', [], dtype=np.float32)
    assert [t.shape for t in top] == [(2, 3), (5,)]
    assert all(np.all(t.data == 0) for t in top)      # no filler: constant 0
    _, _, top = make_layer(
        'type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 '
        'height: 4 width: 5 }', [], dtype=np.float32)
    assert top[0].shape == (2, 3, 4, 5)


def test_dummy_data_fillers_constant_once_random_every_forward():
    protonet.set_random_seed(0)
    layer, bottom, top = make_layer(
        'type: "DummyData" top: "c" top: "g" dummy_data_param { '
        'shape { dim: 1000 } '
        'data_filler { type: "constant" value: 7 } '
        'data_filler { type: "gaussian" std: 2 } }', [], dtype=np.float32)
    np.testing.assert_array_equal(top[0].data, 7)
    first = top[1].data.copy()
    assert abs(first.std() - 2) < 0.2
    top[0].data[...] = 1        # a constant top is not refilled
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, 1)
    assert not np.array_equal(first, top[1].data)


@pytest.mark.parametrize("param,words", [
    ("shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1", "not both"),
    ("shape { dim: 1 } shape { dim: 2 } shape { dim: 3 }", "once per top"),
    ("", "once or once per top"),
    ("num: 1 channels: 1 height: 1", "width"),
    ("shape { dim: 1 } data_filler { } data_filler { } data_filler { }",
     "data_filler"),
])
def test_dummy_data_errors(param, words):
    with pytest.raises(LayerError, match=words):
        make_layer(f'type: "DummyData" top: "a" top: "b" dummy_data_param '
                   f'{{ {param} }}', [])


# -- MemoryData --------------------------------------------------------------

MEM = ('type: "MemoryData" top: "data" top: "label" memory_data_param { '
       'batch_size: 2 channels: 1 height: 2 width: 3 }')


def test_memory_data_batches_and_wraps():
    layer, bottom, top = make_layer(MEM, [], dtype=np.float32)
    assert top[0].shape == (2, 1, 2, 3) and top[1].shape == (2,)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([10, 11, 12, 13], np.float32)
    layer.set_input_arrays(data, labels)
    for start in (0, 2, 0):
        layer.forward(bottom, top)
        np.testing.assert_array_equal(top[0].data, data[start:start + 2])
        np.testing.assert_array_equal(top[1].data.ravel(), labels[start:start + 2])
    assert top[1].shape == (2, 1, 1, 1)          # as Caffe after a forward
    assert layer.get_state() == {"pos": 2}
    layer.set_state({"pos": 0})
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, data[:2])


def test_memory_data_errors():
    layer, bottom, top = make_layer(MEM, [], dtype=np.float32)
    with pytest.raises(LayerError, match="set_input_arrays"):
        layer.forward(bottom, top)
    with pytest.raises(LayerError, match="multiple of batch_size"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3)), np.zeros(3))
    with pytest.raises(LayerError, match=r"shape \(N, 1, 2, 3\)"):
        layer.set_input_arrays(np.zeros((2, 2, 2, 3)), np.zeros(2))
    with pytest.raises(LayerError, match="one value per data row"):
        layer.set_input_arrays(np.zeros((2, 1, 2, 3)), np.zeros(4))
    with pytest.raises(LayerError, match="positive"):
        make_layer('type: "MemoryData" top: "d" top: "l" memory_data_param '
                   '{ batch_size: 2 }', [])


def test_memory_data_in_a_net(tmp_path):
    net = net_from('layer { name: "m" ' + MEM + ' }\n', tmp_path)
    net.layers[0].set_input_arrays(np.ones((2, 1, 2, 3)), np.zeros(2))
    net.forward()
    assert net.blobs["data"].data.sum() == 12


# -- HDF5Data ----------------------------------------------------------------

def write_h5(path, n, start=0):
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(start, start + n, dtype=np.float64)[:, None] * [1, -1]
        f["label"] = np.arange(start, start + n, dtype=np.int32)


def h5_layer(tmp_path, monkeypatch, files=(5,), batch=3, shuffle=False):
    monkeypatch.chdir(tmp_path)
    names, start = [], 0
    for k, n in enumerate(files):
        write_h5(tmp_path / f"f{k}.h5", n, start)
        names.append(f"f{k}.h5")            # relative to the working directory
        start += n
    (tmp_path / "list.txt").write_text(" ".join(names))
    text = ('type: "HDF5Data" top: "data" top: "label" hdf5_data_param { '
            f'source: "list.txt" batch_size: {batch} '
            f'shuffle: {"true" if shuffle else "false"} }}')
    return make_layer(text, [], dtype=np.float32)


def test_hdf5_data_reads_rows_in_order_and_wraps(tmp_path, monkeypatch):
    layer, bottom, top = h5_layer(tmp_path, monkeypatch, files=(5,), batch=3)
    assert top[0].shape == (3, 2) and top[1].shape == (3,)
    seen = []
    for _ in range(4):
        layer.forward(bottom, top)
        assert top[0].dtype == np.float32
        np.testing.assert_array_equal(top[0].data[:, 1], -top[1].data)
        seen += top[1].data.tolist()
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_hdf5_data_several_files(tmp_path, monkeypatch):
    layer, bottom, top = h5_layer(tmp_path, monkeypatch, files=(2, 3), batch=4)
    seen = []
    for _ in range(3):
        layer.forward(bottom, top)
        seen += top[1].data.tolist()
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_hdf5_data_shuffle_visits_every_row_and_state_resumes(tmp_path, monkeypatch):
    protonet.set_random_seed(4)
    layer, bottom, top = h5_layer(tmp_path, monkeypatch, files=(4, 4), batch=4,
                                  shuffle=True)
    seen = []
    for _ in range(2):
        layer.forward(bottom, top)
        seen += top[1].data.tolist()
    assert sorted(seen) == list(range(8))
    layer.forward(bottom, top)
    state, rng_state = layer.get_state(), protonet.rng.get_state()
    after = []
    for _ in range(3):              # crosses a wrap: files and rows reshuffled
        layer.forward(bottom, top)
        after.append(top[1].data.copy())
    other, b2, t2 = h5_layer(tmp_path, monkeypatch, files=(4, 4), batch=4,
                             shuffle=True)
    other.set_state(state)
    protonet.rng.set_state(rng_state)
    for want in after:
        other.forward(b2, t2)
        np.testing.assert_array_equal(t2[1].data, want)


def test_hdf5_data_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="missing.txt"):
        make_layer('type: "HDF5Data" top: "data" hdf5_data_param { '
                   'source: "missing.txt" batch_size: 2 }', [])
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="at least 1"):
        make_layer('type: "HDF5Data" top: "data" hdf5_data_param { '
                   'source: "empty.txt" batch_size: 2 }', [])
    write_h5(tmp_path / "a.h5", 3)
    (tmp_path / "l.txt").write_text("a.h5")
    with pytest.raises(DataError, match="no dataset 'nope'"):
        make_layer('type: "HDF5Data" top: "nope" hdf5_data_param { '
                   'source: "l.txt" batch_size: 2 }', [])
    with pytest.raises(LayerError, match="batch_size"):
        make_layer('type: "HDF5Data" top: "data" hdf5_data_param { '
                   'source: "l.txt" }', [])
    with pytest.raises(ProtonetError, match="transform_param"):
        make_layer('type: "HDF5Data" top: "data" transform_param { scale: 2 } '
                   'hdf5_data_param { source: "l.txt" batch_size: 1 }', [])


def test_hdf5_output_writes_data_and_label(tmp_path):
    out = tmp_path / "out.h5"
    layer, bottom, top = make_layer(
        f'type: "HDF5Output" bottom: "a" bottom: "b" hdf5_output_param {{ '
        f'file_name: "{out}" }}',
        [np.arange(6).reshape(2, 3), np.array([1.0, 2.0])], dtype=np.float32)
    layer.forward(bottom, top)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["data"][()].reshape(2, 3),
                                      np.arange(6).reshape(2, 3))
        assert f["label"].shape == (2, 1, 1, 1)
        assert f["data"].dtype == np.float32
