"""Datum/LMDB helpers and the Data / ImageData layers."""

import gc

import numpy as np
import pytest

import protonet
from protonet import db
from protonet.errors import DataError, LayerError
from protonet.io import write_binaryproto

pytest.importorskip("lmdb")
pytest.importorskip("PIL")


def pixels(i, C=3, H=6, W=5):
    return ((np.arange(C * H * W).reshape(C, H, W) * 7 + i * 31) % 256) \
        .astype(np.uint8)


def make_db(path, n=5, kind="raw", C=3, H=6, W=5):
    with db.Writer(path) as w:
        for i in range(n):
            p = pixels(i, C, H, W)
            if kind == "raw":
                d = db.array_to_datum(p, label=i)
            elif kind == "float":
                d = db.array_to_datum(p.astype(np.float32) / 4, label=i)
            else:
                d = protonet.caffe_pb2.Datum(data=db.encode_image(p, kind),
                                             label=i, encoded=True)
            w.put(f"{i:08d}", d)
    return str(path)


def data_net(tmp_path, source, batch=2, phase="TEST", transform="", top2=True,
             extra=""):
    text = f"""
    layer {{ name: "d" type: "Data" top: "data" {'top: "label"' if top2 else ''}
      transform_param {{ {transform} }}
      data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }} }}
    state {{ phase: {phase} }}"""
    f = tmp_path / "net.prototxt"
    f.write_text(text)
    return protonet.Net(str(f))


def test_datum_round_trip_raw_float_encoded():
    p = pixels(1)
    d = db.array_to_datum(p, label=3)
    assert (d.channels, d.height, d.width, d.label) == (3, 6, 5, 3)
    np.testing.assert_array_equal(db.datum_to_array(d), p)
    f = db.array_to_datum(p.astype(np.float32) / 3)
    out = db.datum_to_array(db.parse_datum(f.SerializeToString()))
    assert out.dtype == np.float32 and np.allclose(out, p / 3)
    png = protonet.caffe_pb2.Datum(data=db.encode_image(p, "png"), encoded=True)
    np.testing.assert_array_equal(db.datum_to_array(png), p)   # BGR kept
    gray = db.datum_to_array(png, color=False)
    assert gray.shape == (1, 6, 5)


def test_lmdb_round_trip_in_key_order(tmp_path):
    src = make_db(tmp_path / "db", n=3)
    items = list(db.read_datums(src))
    assert [k for k, _ in items] == [b"00000000", b"00000001", b"00000002"]
    np.testing.assert_array_equal(db.datum_to_array(items[2][1]), pixels(2))
    with pytest.raises(DataError, match="already exists"):
        db.Writer(src)


@pytest.mark.parametrize("kind", ["raw", "float", "png"])
def test_data_layer_reads_and_wraps(tmp_path, kind):
    src = make_db(tmp_path / "db", n=3, kind=kind)
    net = data_net(tmp_path, src, batch=2)
    assert net.blobs["data"].shape == (2, 3, 6, 5)
    labels = []
    for _ in range(3):
        net.forward()
        labels += net.blobs["label"].data.tolist()
    assert labels == [0, 1, 2, 0, 1, 2]
    want = pixels(2).astype(np.float32)
    if kind == "float":
        want /= 4
    np.testing.assert_array_equal(net.blobs["data"].data[1], want)
    net.layer_dict["d"].close()


def test_data_layer_jpeg_and_force_gray(tmp_path):
    src = make_db(tmp_path / "db", n=2, kind="jpg")
    net = data_net(tmp_path, src, transform="force_gray: true scale: 0.5")
    net.forward()
    assert net.blobs["data"].shape == (2, 1, 6, 5)
    assert net.blobs["data"].data.max() <= 127.5
    net = data_net(tmp_path, src)
    net.forward()
    # lossy: JPEG decodes close to the original pixels
    assert np.abs(net.blobs["data"].data[0] - pixels(0)).mean() < 40


def test_data_layer_crop_mean_and_single_top(tmp_path):
    src = make_db(tmp_path / "db", n=2)
    mean = np.full((1, 3, 6, 5), 3.0, np.float32)
    write_binaryproto(tmp_path / "m.binaryproto", mean)
    net = data_net(tmp_path, src, top2=False, transform=f"""crop_size: 4
        mean_file: "{tmp_path / 'm.binaryproto'}" scale: 2""")
    net.forward()
    want = (pixels(1)[:, 1:5, 0:4].astype(np.float32) - 3) * 2
    np.testing.assert_array_equal(net.blobs["data"].data[1], want)


def batches(net, n):
    out = []
    for _ in range(n):
        net.forward()
        out.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    return out


def test_train_phase_random_crop_mirror_is_deterministic_and_resumable(tmp_path):
    src = make_db(tmp_path / "db", n=5)
    tf = "crop_size: 3 mirror: true"
    protonet.set_random_seed(7)
    a = data_net(tmp_path, src, batch=2, phase="TRAIN", transform=tf)
    first = batches(a, 2)
    state = a.layer_dict["d"].get_state()
    rest = batches(a, 3)
    protonet.set_random_seed(7)
    b = data_net(tmp_path, src, batch=2, phase="TRAIN", transform=tf)
    for (x, y), (u, v) in zip(first + rest, batches(b, 5)):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)
    b.layer_dict["d"].set_state(state)       # resume after batch 2
    for (x, _), (u, _) in zip(rest, batches(b, 3)):
        np.testing.assert_array_equal(x, u)
    crops = np.stack([x for x, _ in first + rest])
    assert len({c.tobytes() for c in crops.reshape(-1, 3 * 3 * 3)}) > 3


def test_rand_skip_skips_records(tmp_path):
    src = make_db(tmp_path / "db", n=5)
    protonet.set_random_seed(0)
    net = data_net(tmp_path, src, batch=1, extra="rand_skip: 5")
    seen = set()
    for _ in range(5):
        net.forward()
        seen.add(int(net.blobs["label"].data[0]))
    assert seen == set(range(5))


def test_missing_db_and_leveldb_errors(tmp_path):
    with pytest.raises(DataError, match="no such LMDB database"):
        data_net(tmp_path, tmp_path / "nope")
    f = tmp_path / "net.prototxt"
    f.write_text(f'layer {{ name: "d" type: "Data" top: "data" data_param {{ '
                 f'source: "{tmp_path}" batch_size: 1 }} }}')
    pytest.importorskip("plyvel")
    # data_param's default backend is LEVELDB, as in Caffe.
    with pytest.raises(DataError, match="cannot open LevelDB database"):
        protonet.Net(str(f), protonet.TEST)


def test_datum_of_wrong_size_names_db_record_and_field(tmp_path):
    path = tmp_path / "db"
    with db.Writer(path) as w:
        w.put("00000000_a", db.array_to_datum(pixels(0), 0))
        w.put("00000001_b", db.array_to_datum(pixels(1, H=4), 1))
    net = data_net(tmp_path, path, batch=2)
    with pytest.raises(DataError, match=r"record '00000001_b', field 'data'"):
        net.forward()
    with pytest.raises(DataError):        # and again, never a hang
        net.forward()
    bad = protonet.caffe_pb2.Datum(channels=3, height=6, width=5, data=b"xx")
    with pytest.raises(DataError, match="field 'data' holds 2 bytes"):
        db.datum_to_array(bad, "db", b"k")


def test_crop_too_large_and_undecodable_record(tmp_path):
    src = make_db(tmp_path / "db", n=2)
    with pytest.raises(DataError, match="crop_size 9 is larger"):
        data_net(tmp_path, src, transform="crop_size: 9")
    path = tmp_path / "bad"
    with db.Writer(path) as w:
        w.put("00000000_x", protonet.caffe_pb2.Datum(data=b"not an image",
                                                     encoded=True))
    with pytest.raises(DataError, match="record '00000000_x'.*cannot decode"):
        data_net(tmp_path, path)


def test_layer_collection_stops_thread(tmp_path):
    src = make_db(tmp_path / "db", n=2)
    net = data_net(tmp_path, src)
    thread = net.layer_dict["d"]._fetcher._thread
    del net
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------
# ImageData


def write_images(folder, n=4, H=6, W=5):
    from PIL import Image
    lines = []
    for i in range(n):
        ext = "png" if i % 2 == 0 else "jpg"
        arr = pixels(i, 3, H, W)
        Image.fromarray(arr[::-1].transpose(1, 2, 0)).save(folder / f"im{i}.{ext}")
        lines.append(f"im{i}.{ext} {i}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def image_net(tmp_path, params, transform="", phase="TEST"):
    f = tmp_path / "inet.prototxt"
    f.write_text(f"""layer {{ name: "im" type: "ImageData" top: "data" top: "label"
      transform_param {{ {transform} }} image_data_param {{ {params} }} }}
      state {{ phase: {phase} }}""")
    return protonet.Net(str(f))


def test_image_data_reads_png_and_jpeg_in_order(tmp_path):
    lst = write_images(tmp_path)
    net = image_net(tmp_path, f'source: "{lst}" root_folder: "{tmp_path}/" '
                    'batch_size: 3')
    b = batches(net, 2)
    assert b[0][1].tolist() == [0, 1, 2] and b[1][1].tolist() == [3, 0, 1]
    np.testing.assert_array_equal(b[0][0][0], pixels(0))          # PNG exact
    assert np.abs(b[0][0][1] - pixels(1)).mean() < 40               # JPEG


def test_image_data_resize_gray_and_shuffle(tmp_path):
    lst = write_images(tmp_path)
    params = (f'source: "{lst}" root_folder: "{tmp_path}/" batch_size: 4 '
              'new_height: 8 new_width: 7 is_color: false shuffle: true')
    protonet.set_random_seed(1)
    net = image_net(tmp_path, params)
    assert net.blobs["data"].shape == (4, 1, 8, 7)
    got = [sorted(y.tolist()) for _, y in batches(net, 3)]
    assert got == [[0, 1, 2, 3]] * 3           # a permutation per epoch
    protonet.set_random_seed(1)
    again = image_net(tmp_path, params)
    batches(again, 1)
    state = again.layer_dict["im"].get_state()
    batches(again, 2)
    protonet.set_random_seed(1)
    ref = batches(image_net(tmp_path, params), 3)
    again.layer_dict["im"].set_state(state)
    for (x, y), (u, v) in zip(ref[1:], batches(again, 2)):
        np.testing.assert_array_equal(y, v)
        np.testing.assert_array_equal(x, u)


def test_image_data_errors_name_file_and_line(tmp_path):
    lst = write_images(tmp_path, n=2)
    with pytest.raises(DataError, match="cannot open list file"):
        image_net(tmp_path, f'source: "{tmp_path}/none.txt"')
    (tmp_path / "broken.png").write_bytes(b"garbage")
    bad = tmp_path / "bad.txt"
    bad.write_text("im0.png 0\nbroken.png 1\n")
    net = image_net(tmp_path, f'source: "{bad}" root_folder: "{tmp_path}/" '
                    'batch_size: 2')
    with pytest.raises(DataError, match=r"bad.txt:2: image .*broken.png"):
        net.forward()
    missing = tmp_path / "missing.txt"
    missing.write_text("gone.png 0\n")
    with pytest.raises(DataError, match=r"missing.txt:1: .*gone.png: no such"):
        image_net(tmp_path, f'source: "{missing}" root_folder: "{tmp_path}/"')
    nolabel = tmp_path / "nolabel.txt"
    nolabel.write_text("im0.png\n")
    with pytest.raises(DataError, match="nolabel.txt:1"):
        image_net(tmp_path, f'source: "{nolabel}"')
    with pytest.raises(LayerError, match="new_height and new_width"):
        image_net(tmp_path, f'source: "{lst}" new_height: 4')
