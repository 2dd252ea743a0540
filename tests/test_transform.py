"""DataTransformer (crop, mirror, mean file / values, scale) and prefetching."""

import time

import numpy as np
import pytest

from protonet import rng
from protonet.errors import DataError, LayerError, UnsupportedError
from protonet.io import write_binaryproto
from protonet.prefetch import Prefetcher, SyncFetcher, make_fetcher
from protonet.proto import caffe_pb2
from protonet.transform import DataTransformer, resize

TRAIN, TEST = 0, 1


def make(phase=TEST, **fields):
    p = caffe_pb2.TransformationParameter()
    for k, v in fields.items():
        if k == "mean_value":
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return DataTransformer(p, phase)


def image(C=2, H=4, W=5, dtype=np.uint8):
    return np.arange(C * H * W).reshape(1, C, H, W).astype(dtype)


def test_scale_only_is_elementwise_and_float32():
    out = make(scale=0.5).apply(image())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image().astype(np.float32) * 0.5)


def test_center_crop_in_test_phase():
    x = image(1, 5, 6)
    out = make(crop_size=3).apply(x)
    # h_off = (5 - 3) // 2 = 1, w_off = (6 - 3) // 2 = 1
    np.testing.assert_array_equal(out[0, 0], x[0, 0, 1:4, 1:4])


def test_random_crop_in_train_uses_drawn_offsets():
    x = image(2, 6, 7)
    t = make(TRAIN, crop_size=3)
    draws = (np.array([False, False]), np.array([0, 3]), np.array([4, 2]))
    out = t.apply(np.concatenate([x, x]), draws=draws)
    np.testing.assert_array_equal(out[0], x[0, :, 0:3, 4:7])
    np.testing.assert_array_equal(out[1], x[0, :, 3:6, 2:5])


def test_random_crop_offsets_cover_the_valid_range():
    rng.set_random_seed(3)
    t = make(TRAIN, crop_size=2)
    mirror, h, w = t.draw(2000, (1, 4, 5))
    assert not mirror.any()
    assert set(h.tolist()) == {0, 1, 2} and set(w.tolist()) == {0, 1, 2, 3}


def test_mirror_flips_width_and_is_random_in_both_phases():
    x = image(1, 2, 3)
    for phase in (TRAIN, TEST):
        t = make(phase, mirror=True)
        out = t.apply(x, draws=(np.array([True]), np.array([0]), np.array([0])))
        np.testing.assert_array_equal(out[0, 0], x[0, 0, :, ::-1])
        rng.set_random_seed(0)
        m, _, _ = make(phase, mirror=True).draw(400, (1, 2, 3))
        assert 100 < m.sum() < 300     # NOTE(caffe): mirror is random in TEST too


def test_mean_file_is_cropped_with_the_data_and_not_mirrored(tmp_path):
    x = image(1, 4, 4)
    mean = (np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) * 0.25)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    t = make(TRAIN, crop_size=2, mirror=True, scale=2.0,
             mean_file=str(tmp_path / "mean.binaryproto"))
    out = t.apply(x, draws=(np.array([True]), np.array([1]), np.array([2])))
    # Caffe: top[c, h, W-1-w] = (x[h_off+h, w_off+w] - mean[h_off+h, w_off+w]) * scale
    src = x[0, 0, 1:3, 2:4].astype(np.float32)
    m = mean[0, 0, 1:3, 2:4]
    np.testing.assert_array_equal(out[0, 0], ((src - m) * 2.0)[:, ::-1])


def test_mean_values_one_or_per_channel():
    x = image(3, 2, 2)
    out = make(mean_value=[10.0]).apply(x)
    np.testing.assert_array_equal(out, x.astype(np.float32) - 10)
    out = make(mean_value=[1.0, 2.0, 3.0], scale=0.5).apply(x)
    want = (x.astype(np.float32) - np.array([1, 2, 3], np.float32)
            .reshape(1, 3, 1, 1)) * np.float32(0.5)
    np.testing.assert_array_equal(out, want)
    with pytest.raises(DataError, match="1 mean_value or as many as channels"):
        make(mean_value=[1.0, 2.0]).apply(x)


def test_float_input_gets_the_same_transform():
    x = image(1, 4, 4)
    t = make(crop_size=2, mean_value=[1.5], scale=3.0)
    np.testing.assert_array_equal(t.apply(x), t.apply(x.astype(np.float32)))


def test_crop_larger_than_image_is_a_data_error():
    with pytest.raises(DataError, match="crop_size 5 is larger than the image"):
        make(crop_size=5).apply(image(1, 4, 6), where="db, record 'k'")


def test_mean_file_of_wrong_shape_names_the_file(tmp_path):
    path = tmp_path / "mean.binaryproto"
    write_binaryproto(path, np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="mean.binaryproto has shape"):
        make(mean_file=str(path)).apply(image(1, 4, 4))


def test_conflicting_fields_raise():
    with pytest.raises(LayerError, match="force_color and force_gray"):
        make(force_color=True, force_gray=True)
    p = caffe_pb2.TransformationParameter(crop_h=3)
    with pytest.raises(UnsupportedError, match="crop_h"):
        DataTransformer(p, TEST)


def test_state_round_trip_repeats_the_draws():
    rng.set_random_seed(5)
    t = make(TRAIN, crop_size=2, mirror=True)
    state = t.get_state()
    a = t.draw(10, (1, 5, 5))
    t.set_state(state)
    b = t.draw(10, (1, 5, 5))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_resize_bilinear_matches_opencv_formula_and_nearest():
    img = np.array([[[0, 100], [200, 50]]], np.uint8)
    up = resize(img, 4, 4)
    # OpenCV INTER_LINEAR: src = (d + .5) / 2 - .5 -> -.25, .25, .75, 1.25
    # clamped: weights row 0 = (1, 0), row 1 = (.75, .25), ...
    assert up[0, 0, 0] == 0 and up[0, 0, 3] == 100 and up[0, 3, 0] == 200
    assert up[0, 0, 1] == 25        # 0.75 * 0 + 0.25 * 100
    np.testing.assert_array_equal(resize(img, 4, 4, "nearest")[0],
                                  np.repeat(np.repeat(img[0], 2, 0), 2, 1))
    assert resize(img, 2, 2).tolist() == img.tolist()


# ---------------------------------------------------------------------------
# Prefetcher


def counter(fail_at=None):
    state = {"i": 0}

    def produce():
        i = state["i"]
        if i == fail_at:
            raise DataError(f"bad record {i}")
        state["i"] += 1
        return i
    return produce


def test_prefetch_yields_in_order_and_bounded():
    p = Prefetcher(counter(), depth=2)
    try:
        assert [p.next() for _ in range(6)] == list(range(6))
        time.sleep(0.2)
        assert p._queue.qsize() <= 2
    finally:
        p.close()
    assert not p.alive


def test_prefetch_reraises_worker_exception_and_keeps_raising():
    p = Prefetcher(counter(fail_at=2), depth=3)
    assert p.next() == 0 and p.next() == 1
    for _ in range(2):
        with pytest.raises(DataError, match="bad record 2"):
            p.next()
    p.close()


def test_prefetch_close_stops_a_blocked_worker():
    p = Prefetcher(counter(), depth=1)
    time.sleep(0.1)                  # worker now blocked on a full queue
    p.close()
    assert not p.alive
    with pytest.raises(DataError, match="closed"):
        p.next()


def test_prefetch_thread_stops_when_owner_is_collected():
    class Owner:
        pass
    owner = Owner()
    p = Prefetcher(counter(), depth=1, owner=owner)
    thread = p._thread
    del owner
    import gc
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_dead_thread_is_detected_not_waited_for():
    p = Prefetcher(counter(), depth=1)
    p._stop.set()                    # simulate a thread that exits silently
    p._thread.join(timeout=5)
    while not p._queue.empty():
        p._queue.get_nowait()
    p._stop.clear()
    with pytest.raises(DataError, match="stopped without producing"):
        p.next()
    p.close()


def test_depth_zero_is_synchronous():
    f = make_fetcher(counter(), 0)
    assert isinstance(f, SyncFetcher) and [f.next(), f.next()] == [0, 1]
    f.close()
    assert not f.alive
