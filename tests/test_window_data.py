"""The WindowData layer (R-CNN fine-tuning batches)."""

import numpy as np
import pytest

import protonet
from protonet import db
from protonet.errors import DataError, LayerError

pytest.importorskip("PIL")

H, W = 12, 14


def block_image(seed):
    """A BGR (3, H, W) uint8 image whose 2x2 blocks starting at (y=1, x=2)
    average to an exact integer: 8 * block + 3."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 30, size=(3, H // 2 + 1, W // 2 + 1))
    y, x = np.arange(H) - 1, np.arange(W) - 2
    img = (8 * blocks[:, (y // 2)[:, None], (x // 2)[None, :]]
           + 2 * (y % 2)[:, None] + 4 * (x % 2)[None, :])
    return img.astype(np.uint8)


# image 0: two fg windows (class 1, 2), one dropped, two bg; image 1: one fg
# (class 3) and one bg.
WINDOWS = [
    [(1, 0.9, 2, 1, 9, 8), (2, 0.6, 0, 0, 5, 5), (3, 0.4, 1, 1, 4, 4),
     (5, 0.1, 3, 3, 10, 10), (0, 0.2, 0, 0, 13, 11)],
    [(3, 0.8, 4, 2, 11, 9), (7, 0.05, 0, 0, 6, 6)],
]


def write_data(tmp_path, windows=WINDOWS, text=None):
    names = []
    for i in range(len(windows)):
        name = f"img{i}.png"
        (tmp_path / name).write_bytes(db.encode_image(block_image(i), "png"))
        names.append(name)
    if text is None:
        lines = []
        for i, ws in enumerate(windows):
            lines += [f"# {i}", names[i], "3", str(H), str(W), str(len(ws))]
            lines += [" ".join(map(str, w)) for w in ws]
        text = "\n".join(lines) + "\n"
    src = tmp_path / "windows.txt"
    src.write_text(text)
    return src


def window_net(tmp_path, src, batch=8, crop=4, mirror=False, pad=0,
               mode="warp", fg_fraction=0.25, transform="", extra=""):
    text = f"""
    layer {{ name: "d" type: "WindowData" top: "data" top: "label"
      transform_param {{ crop_size: {crop} mirror: {str(mirror).lower()}
                         {transform} }}
      window_data_param {{ source: "{src}" root_folder: "{src.parent}/"
        batch_size: {batch} fg_threshold: 0.5 bg_threshold: 0.3
        fg_fraction: {fg_fraction} context_pad: {pad} crop_mode: "{mode}"
        {extra} }} }}
    state {{ phase: TRAIN }}"""
    f = tmp_path / "net.prototxt"
    f.write_text(text)
    return protonet.Net(str(f))


def test_mt19937_matches_cpp_standard():
    """The sampler's generator is std::mt19937 / boost::mt19937: the C++
    standard fixes its 10000th output for the default seed 5489."""
    rs = np.random.RandomState(5489)
    assert rs.randint(0, 2 ** 32, size=10000, dtype=np.uint32)[-1] == \
        4123659995


def test_shapes_labels_and_fg_fraction(tmp_path):
    src = write_data(tmp_path)
    protonet.set_random_seed(1)
    net = window_net(tmp_path, src, batch=8, fg_fraction=0.25)
    assert net.blobs["data"].shape == (8, 3, 4, 4)
    assert net.blobs["label"].shape == (8,)
    counts = {}
    for _ in range(60):
        net.forward()
        labels = net.blobs["label"].data.astype(int)
        # Caffe: int(8 * 0.25) = 2 foreground windows, after the background.
        assert (labels[:6] == 0).all()
        assert set(labels[6:]) <= {1, 2, 3}
        for v in labels[6:]:
            counts[v] = counts.get(v, 0) + 1
    # The dropped window (class 5, overlap 0.4) never shows; the 3 fg
    # windows are drawn uniformly (40 each expected of 120).
    assert set(counts) == {1, 2, 3}
    assert all(25 <= c <= 55 for c in counts.values()), counts


def test_same_picks_as_caffe_for_a_seed(tmp_path):
    """Window i of a batch is pool[draw % len(pool)], bg first, one 32-bit
    MT19937 draw per window (two with mirror), as Caffe's load_batch."""
    src = write_data(tmp_path)
    net = window_net(tmp_path, src, batch=4, fg_fraction=0.5, mirror=True)
    layer = net.layers[0]
    reader = layer.reader
    layer.set_state({"key": np.random.RandomState(5489).get_state()[1]
                     .tolist(), "pos": 624})
    net.forward()
    draws = [3499211612, 581869302, 3890346734, 3586334585, 545404204,
             4161255391, 3922919429, 949333985]   # std::mt19937(5489)
    bg = [w.label for w in reader.bg]
    fg = [w.label for w in reader.fg]
    assert len(bg) == 3 and len(fg) == 3
    want = [bg[draws[0] % 3], bg[draws[2] % 3], fg[draws[4] % 3],
            fg[draws[6] % 3]]
    assert net.blobs["label"].data.astype(int).tolist() == want


def test_deterministic_given_seed_and_resumable(tmp_path):
    src = write_data(tmp_path)
    runs = []
    for _ in range(2):
        protonet.set_random_seed(7)
        net = window_net(tmp_path, src, mirror=True, pad=2, crop=8)
        batches = []
        for _ in range(3):
            net.forward()
            batches.append(net.blobs["data"].data.copy())
        runs.append((net, batches))
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][1][0], runs[0][1][1])
    # Resuming from the state after batch 1 replays batches 2 and 3.
    protonet.set_random_seed(7)
    net = window_net(tmp_path, src, mirror=True, pad=2, crop=8)
    net.forward()
    state = net.layers[0].get_state()
    net.forward()
    net.layers[0].set_state(state)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, runs[0][1][1])


def test_warp_crop_by_hand(tmp_path):
    """context_pad 0, no mirror: window (2,1)-(9,8) of image 0 (8 x 8
    pixels) warped to 4 x 4 averages each 2x2 block (INTER_LINEAR at
    scale 2), then (pixel - mean_value) * scale."""
    only_fg = [[(1, 0.9, 2, 1, 9, 8), (0, 0.1, 0, 0, 3, 3)]]
    src = write_data(tmp_path, only_fg)
    net = window_net(tmp_path, src, batch=2, fg_fraction=0.5,
                     transform="mean_value: 10 mean_value: 20 "
                               "mean_value: 30", extra="scale: 0.5")
    net.forward()
    img = block_image(0).astype(np.int64)
    blocks = img[:, 1:9, 2:10].reshape(3, 4, 2, 4, 2)
    # each block is 8b, 8b+2, 8b+4, 8b+6: its mean is the integer 8b+3
    assert (blocks.sum(axis=(2, 4)) % 4 == 0).all()
    mean = blocks.mean(axis=(2, 4))
    want = (mean - np.array([10, 20, 30])[:, None, None]) * 0.5
    np.testing.assert_array_equal(net.blobs["data"].data[1], want)
    assert net.blobs["label"].data[1] == 1


def test_warp_matches_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    only_fg = [[(1, 0.9, 3, 2, 10, 11), (0, 0.1, 0, 0, 3, 3)]]
    src = write_data(tmp_path, only_fg)
    net = window_net(tmp_path, src, batch=2, fg_fraction=0.5, crop=5)
    net.forward()
    hwc = np.ascontiguousarray(block_image(0).transpose(1, 2, 0))
    want = cv2.resize(hwc[2:12, 3:11], (5, 5), interpolation=cv2.INTER_LINEAR)
    got = net.blobs["data"].data[1].transpose(1, 2, 0)
    assert np.abs(got - want).max() <= 1   # OpenCV's fixed-point rounding


@pytest.mark.parametrize("mirror", [False, True])
def test_context_pad_clipped_at_the_border(tmp_path, mirror):
    """Window x 0..3, y 4..7, crop 8, context_pad 2: context_scale 2, the
    box grows to x -2..6 (9 wide, 2 outside), clipped to 0..6; the 7
    columns warp to round(7 * 8/9) = 6 columns after round(2 * 8/9) = 2
    zero columns (at the right when mirrored); y 2..10 stays inside."""
    ws = [[(1, 0.9, 0, 4, 3, 7), (0, 0.1, 0, 0, 3, 3)]]
    src = write_data(tmp_path, ws)
    net = window_net(tmp_path, src, batch=2, fg_fraction=0.5, crop=8, pad=2,
                     mirror=mirror, transform="mean_value: 250")
    for _ in range(4 if mirror else 1):
        net.forward()
        out = net.blobs["data"].data[1]
        zero_cols = np.flatnonzero((out == 0).all(axis=(0, 1)))
        assert zero_cols.tolist() in ([0, 1], [6, 7])
        assert (out[:, :, 2:6] < 0).all()     # pixels - 250, never padding
    if not mirror:
        assert zero_cols.tolist() == [0, 1]
        hwc = np.ascontiguousarray(block_image(0).transpose(1, 2, 0))
        cv2 = pytest.importorskip("cv2")
        want = cv2.resize(hwc[2:11, 0:7], (6, 8),
                          interpolation=cv2.INTER_LINEAR).astype(np.float32)
        got = out[:, :, 2:].transpose(1, 2, 0) + 250
        assert np.abs(got - want).max() <= 1


def test_square_mode_and_cache_images(tmp_path):
    src = write_data(tmp_path)
    protonet.set_random_seed(3)
    a = window_net(tmp_path, src, crop=6, mode="square", pad=1)
    protonet.set_random_seed(3)
    b = window_net(tmp_path, src, crop=6, mode="square", pad=1,
                   extra="cache_images: true")
    for _ in range(2):
        a.forward()
        b.forward()
        np.testing.assert_array_equal(a.blobs["data"].data,
                                      b.blobs["data"].data)


@pytest.mark.parametrize("text,match", [
    ("# 0\nimg0.png\n3 12 14\n1\n1 0.9 0 0 x 5\n", r"windows.txt:5: .*x2"),
    ("# 0\nimg0.png\n3 12 14\n2\n1 0.9 0 0 5 5\n", r"windows.txt:5: file "
                                                    r"ends.*class_index"),
    ("0\nimg0.png\n3 12 14\n0\n", r"windows.txt:1: expected '#'"),
    ("# 1\nimg0.png\n3 12 14\n0\n", r"windows.txt:1: image index 1 out"),
    ("# 0\nimg0.png\n3 12 14\n1\n0 0.9 0 0 5 5\n",
     r"windows.txt:5: foreground .*class_index > 0"),
    ("# 0\nimg0.png\n3 12 14\n1\n1 0.9 6 0 5 5\n", r"windows.txt:5: .*empty"),
    ("", r"window file .*windows.txt is empty"),
])
def test_malformed_window_file(tmp_path, text, match):
    src = write_data(tmp_path, [[]], text=text)
    with pytest.raises(DataError, match=match):
        window_net(tmp_path, src)


def test_missing_image_and_no_background(tmp_path):
    src = write_data(tmp_path)
    (tmp_path / "img1.png").unlink()
    with pytest.raises(DataError, match=r"windows.txt:13: image .*img1.png: "
                                        r"no such file"):
        window_net(tmp_path, src)
    src = write_data(tmp_path, [[(1, 0.9, 0, 0, 5, 5)]])
    with pytest.raises(DataError, match="no background window"):
        window_net(tmp_path, src)


def test_bad_parameters(tmp_path):
    src = write_data(tmp_path)
    with pytest.raises(LayerError, match="crop_size must be > 0"):
        window_net(tmp_path, src, crop=0)
    with pytest.raises(LayerError, match="crop_mode"):
        window_net(tmp_path, src, mode="fill")
    with pytest.raises(LayerError, match=r"fg_fraction must be in \[0, 1\], "
                                         "got 1.5"):
        window_net(tmp_path, src, fg_fraction=1.5)
    ws = [[(1, 0.9, 0, 0, 20, 5), (0, 0.1, 0, 0, 3, 3)]]
    src = write_data(tmp_path, ws)
    net = window_net(tmp_path, src, batch=2, fg_fraction=0.5)
    with pytest.raises(DataError, match=r"windows.txt:7: window .* outside"):
        net.forward()


def test_setup_logs_like_caffe(tmp_path):
    import io
    from protonet import caffelog
    stream = io.StringIO()
    handler = caffelog.enable(stream)
    try:
        window_net(tmp_path, write_data(tmp_path))
    finally:
        caffelog.disable(handler)
    log = stream.getvalue()
    assert "window_data_layer.cpp:156] Number of images: 2" in log
    # 3 background windows (class 0), one of each foreground class; the
    # window with overlap 0.4 (between the thresholds) is dropped.
    for label, n in ((0, 3), (1, 1), (2, 1), (3, 1)):
        assert f"class {label} has {n} samples" in log
    assert "class 5" not in log
    assert "Crop mode: warp" in log
