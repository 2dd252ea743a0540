"""protonet.threads: the work split over cores behind the convolutions."""

import threading

import numpy as np
import pytest

from protonet import threads
from protonet.errors import ProtonetError


def test_split_covers_everything_in_order():
    assert threads.split(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert threads.split(2, 5) == [slice(0, 1), slice(1, 2)]
    assert threads.split(7, 1) == [slice(0, 7)]


def test_run_uses_the_workers_and_keeps_order(monkeypatch):
    monkeypatch.setenv("PROTONET_THREADS", "2")
    seen = []

    def task(i, worker):
        seen.append((i, worker, threading.get_ident()))
        return i * i
    out = threads.run([lambda w, i=i: task(i, w) for i in range(6)])
    assert out == [i * i for i in range(6)]
    # Contiguous blocks: tasks 0-2 on worker 0 (the caller), 3-5 on 1.
    assert sorted((i, w) for i, w, _ in seen) == [(i, i // 3) for i in range(6)]
    idents = {w: {t for _, ww, t in seen if ww == w} for w in (0, 1)}
    assert idents[0] == {threading.get_ident()}
    assert len(idents[1]) == 1 and idents[1] != idents[0]


def test_run_serial_when_one_thread_or_not_parallel(monkeypatch):
    monkeypatch.setenv("PROTONET_THREADS", "1")
    me = threading.get_ident()
    assert threads.run([lambda w: (w, threading.get_ident())] * 3) == \
        [(0, me)] * 3
    monkeypatch.setenv("PROTONET_THREADS", "2")
    assert threads.run([lambda w: (w, threading.get_ident())] * 3,
                       parallel=False) == [(0, me)] * 3


def test_nested_region_runs_serially_with_the_callers_worker(monkeypatch):
    monkeypatch.setenv("PROTONET_THREADS", "2")

    def outer(worker):
        inner = threads.run([lambda w: (w, threading.get_ident())] * 2)
        return worker, inner
    for worker, inner in threads.run([outer, outer]):
        assert [w for w, _ in inner] == [worker, worker]
        assert len({t for _, t in inner}) == 1


def test_an_error_in_a_worker_reaches_the_caller_after_all_finish(
        monkeypatch):
    monkeypatch.setenv("PROTONET_THREADS", "2")
    done = []

    def fail(worker):
        raise ValueError("boom in worker %d" % worker)

    def slow(worker):
        threading.Event().wait(0.05)
        done.append(worker)
    with pytest.raises(ValueError, match="boom in worker 1"):
        threads.run([slow, fail])
    assert done == [0]
    with pytest.raises(ValueError, match="boom in worker 0"):
        threads.run([fail, slow])
    assert done == [0, 1]  # the worker finished before run returned


def _numpy_blas_threads(threadpoolctl):
    return [i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "numpy" in i["filepath"]]


def test_blas_threads_restored_after_a_region(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setenv("PROTONET_THREADS", "2")
    before = _numpy_blas_threads(threadpoolctl)
    if not before:
        pytest.skip("NumPy's BLAS is not inside the numpy package here")
    inside = threads.run([lambda w: _numpy_blas_threads(threadpoolctl)] * 2)
    assert inside[0] == [1] * len(before)  # single-threaded BLAS inside
    assert _numpy_blas_threads(threadpoolctl) == before


def test_workers_follows_blas_limits(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.delenv("PROTONET_THREADS", raising=False)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert threads.workers() == 1
    monkeypatch.setenv("PROTONET_THREADS", "3")
    assert threads.workers() == 3


def test_bad_thread_count_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PROTONET_THREADS", "two")
    with pytest.raises(ProtonetError, match="PROTONET_THREADS.*'two'"):
        threads.workers()


def test_numpy_work_in_workers_matches_serial(monkeypatch):
    """Disjoint writes from both workers give the serial result exactly."""
    monkeypatch.setenv("PROTONET_THREADS", "2")
    rng = np.random.default_rng(0)
    a = rng.random((8, 64, 64), dtype=np.float32)
    b = rng.random((64, 64), dtype=np.float32)
    out = np.empty_like(a)
    threads.run([lambda w, i=i: np.matmul(a[i], b, out=out[i])
                 for i in range(8)])
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)


@pytest.mark.parametrize("text,shapes", [
    ('type: "ReLU"', [(4, 3, 5, 5)]),
    ('type: "Scale" scale_param { bias_term: true }', [(4, 3, 5, 5)]),
    ('type: "Eltwise" eltwise_param { coeff: 1 coeff: -2 }',
     [(4, 3, 5, 5)] * 2),
    ('type: "BatchNorm" batch_norm_param { use_global_stats: true }',
     [(4, 3, 5, 5)]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
     'weight_filler { type: "gaussian" std: 0.3 } '
     'bias_filler { type: "gaussian" std: 0.3 } }', [(4, 3, 5, 5)]),
])
def test_elementwise_passes_split_over_threads(monkeypatch, text, shapes):
    """Forward passes split by rows over two threads (forced on tiny
    blobs) give the one-thread outputs, and the gradients still check."""
    from protonet.testing import check_gradient, make_layer
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(s) + 0.1 for s in shapes]
    outs = []
    for threads_, min_elements in (("1", 1 << 60), ("2", 0)):
        monkeypatch.setenv("PROTONET_THREADS", threads_)
        monkeypatch.setattr(threads, "MIN_SPLIT_ELEMENTS", min_elements)
        layer, bottom, top = make_layer('top: "t" ' + text, xs)
        if layer.type == "BatchNorm":
            layer.blobs[0].data[...] = [0.5, -1, 2]
            layer.blobs[1].data[...] = [1, 2, 0.5]
            layer.blobs[2].data[...] = 1
        if not outs:
            params = [b.data.copy() for b in layer.blobs]
        for b, p in zip(layer.blobs, params):
            b.data[...] = p
        layer.forward(bottom, top)
        outs.append(top[0].data.copy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    if "BatchNorm" not in text:  # (its statistics are set by hand above)
        check_gradient('top: "t" ' + text, xs)


@pytest.mark.parametrize("min_split", [0, 1 << 30])  # over threads, serial
def test_zero_clears_every_element(monkeypatch, min_split):
    monkeypatch.setenv("PROTONET_THREADS", "2")
    monkeypatch.setattr(threads, "MIN_SPLIT_ELEMENTS", min_split)
    arrays = [np.ones((7, 5)), np.ones(3, np.float32), np.ones((2, 2, 2))]
    threads.zero(arrays, block=4)  # several blocks per array
    for a in arrays:
        assert a.dtype in (np.float64, np.float32) and not a.any()
