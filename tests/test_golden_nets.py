"""Whole nets against real Caffe: every blob after a TEST forward, including
split blobs and outputs that a later in-place layer overwrote
(tests/fixtures/caffe_ref/nets)."""

import json
import os

import numpy as np
import pytest

import protonet
from caffe_ref import ROOT, assert_close, case_names
from protonet.net import Net


def _close(got, expected, what):
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    assert_close(got, expected, what, rtol=1e-4, atol=1e-5 * max(scale, 1e-30))


@pytest.mark.parametrize("name", case_names("nets"))
def test_net_matches_caffe_blob_by_blob(name):
    folder = os.path.join(ROOT, "nets", name)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    arr = np.load(os.path.join(folder, "io.npz"))
    net = Net(os.path.join(folder, "net.prototxt"),
              os.path.join(folder, "weights.caffemodel"), protonet.TEST)
    assert net.inputs == meta["inputs"] and net.outputs == meta["outputs"]
    assert list(net.blobs) == [b["key"][len("blob__"):] for b in meta["blobs"]]
    for name_ in meta["inputs"]:
        net.blobs[name_].data[...] = arr["blob__" + name_]
    overwritten = {}
    for i, lname in enumerate(net.layer_names):
        net.forward_from_to(i, i)
        for j, top in enumerate(net.top_vecs[i]):
            key = f"layer__{lname}__top{j}"
            if key in arr:
                overwritten[key] = top.data.copy()
    for key in arr.files:
        if key.startswith("layer__"):
            _close(overwritten[key], arr[key], f"{name}: {key}")
        else:
            _close(net.blobs[key[len("blob__"):]].data, arr[key], f"{name}: {key}")
