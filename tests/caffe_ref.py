"""Helpers for the golden data produced by real Caffe (tests/fixtures/caffe_ref).

Each layer / fork case is a small net (Input layers feeding the layer under
test); we build it with protonet, load Caffe's weights, feed Caffe's bottoms
and compare every top, bottom diff and parameter diff at the tolerances the
data's README recommends (rtol 1e-4, atol 1e-5).
"""

import json
import os

import numpy as np

import protonet
from protonet.net import Net

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref")
RTOL, ATOL = 1e-4, 1e-5


def case_names(kind):
    folder = os.path.join(ROOT, kind)
    return sorted(d for d in os.listdir(folder)
                  if os.path.isdir(os.path.join(folder, d)))


def load_case(kind, name):
    folder = os.path.join(ROOT, kind, name)
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    arrays = dict(np.load(os.path.join(folder, "case.npz")))
    return folder, meta, arrays


def assert_close(actual, expected, what, rtol=RTOL, atol=ATOL):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, \
        f"{what}: shape {actual.shape}, Caffe has {expected.shape}"
    if not np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True):
        err = np.abs(actual.astype(np.float64) - expected)
        i = np.unravel_index(np.nanargmax(err), err.shape)
        raise AssertionError(f"{what}: max |diff| {err[i]:.3g} at {i}: got "
                             f"{actual[i]!r}, Caffe {expected[i]!r}")


def run_case(kind, name, dtype=np.float32):
    """Build, forward and backward one case; compare everything with Caffe."""
    folder, meta, arr = load_case(kind, name)
    phase = protonet.TRAIN if meta["phase"] == "TRAIN" else protonet.TEST
    net = Net(os.path.join(folder, "net.prototxt"), phase=phase, dtype=dtype)
    weights = os.path.join(folder, "weights.caffemodel")
    if os.path.exists(weights):
        net.copy_from(weights)
    for b in meta["bottoms"]:
        if b["source"] == "Input":
            net.blobs[b["blob"]].data[...] = arr[b["key"]]
    # Parameter bottoms come from the weights file; protonet.Net forwards
    # them like Caffe does.
    net.forward_from_to()
    for b in meta["bottoms"]:
        if b["source"] != "Input":
            assert_close(net.blobs[b["blob"]].data, arr[b["key"]],
                         f"{name}: bottom {b['blob']} (from {b['source']})")
    for j, t in enumerate(meta["tops"]):
        expected = arr[t["key"]]
        got = net.blobs[t["blob"]].data
        assert_close(got, expected, f"{name}: top '{t['blob']}'")
    for p in meta["params"]:
        key = p["key"].replace("param_", "param_after_forward_")
        if key in arr:
            blob = net.layer_dict[p["layer"]].blobs[p["index"]]
            assert_close(blob.data, arr[key], f"{name}: {p['layer']} param "
                         f"{p['index']} after forward")
    if not meta.get("backward"):
        return net
    for j, t in enumerate(meta["tops"]):
        key = f"top_diff_{j}"
        if not t.get("loss") and key in arr:
            net.blobs[t["blob"]].diff[...] = arr[key]
    for blob in net.learnable_params:
        blob.diff[...] = 0
    net.backward_from_to()
    for i, b in enumerate(meta["bottoms"]):
        key = f"bottom_diff_{i}"
        if key in arr:
            assert_close(net.blobs[b["blob"]].diff, arr[key],
                         f"{name}: diff of bottom '{b['blob']}'")
    for p in meta["params"]:
        key = p["key"].replace("param_", "param_diff_")
        if key in arr:
            blob = net.layer_dict[p["layer"]].blobs[p["index"]]
            assert_close(blob.diff, arr[key], f"{name}: diff of {p['layer']} "
                         f"param {p['index']}")
    return net
