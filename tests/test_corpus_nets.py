"""Every corpus net that Caffe built (tests/fixtures/caffe_ref/shapes) builds
here in TEST phase with Caffe's blob names, order and shapes and Caffe's
parameter shapes; BVLC-only nets also run forward and backward at batch 1."""

import glob
import json
import os

import numpy as np
import pytest

import protonet
from caffe_ref import ROOT
from isolated import release_scratch_as_it_runs, run_isolated
from protonet.compat import fill_random
from protonet.net import Net

CORPUS = os.path.join(os.path.dirname(__file__), "fixtures", "corpus")
SHAPES = sorted(glob.glob(os.path.join(ROOT, "shapes", "**", "*.json"),
                          recursive=True))
# Big nets run forward/backward only under the slow marker.
BIG = ("ResNet-101", "ResNet-152", "pose_deploy", "VGG", "fcn8s",
       "DenseNet", "SE-BN-Inception")


def _rel(path):
    return os.path.relpath(path, os.path.join(ROOT, "shapes"))[:-len(".json")]


@pytest.mark.parametrize("shape_file", SHAPES, ids=_rel)
def test_corpus_net_shapes_match_caffe(shape_file):
    ref = json.load(open(shape_file))
    net = Net(os.path.join(CORPUS, _rel(shape_file)), phase=protonet.TEST)
    assert net.inputs == ref["inputs"]
    assert net.outputs == ref["outputs"]
    assert [(n, list(b.shape)) for n, b in net.blobs.items()] == \
        [(b["name"], b["shape"]) for b in ref["blobs"]]
    got = [(p["layer"], p["index"], list(net.layer_dict[p["layer"]].blobs[p["index"]].shape))
           for p in ref["params"]]
    assert got == [(p["layer"], p["index"], p["shape"]) for p in ref["params"]]
    assert [l.name for l in net.layers] == [l["name"] for l in ref["layers"]]


def run_forward_backward(rel):
    param = protonet.io.read_net(os.path.join(CORPUS, rel))
    param.force_backward = True
    net = Net(param, phase=protonet.TEST)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.reshape((1,) + blob.shape[1:])
    net.reshape()
    release_scratch_as_it_runs(net)
    # N(0, 1) inputs; unit-variance BatchNorm statistics (see fill_random).
    fill_random(net, {})
    gen = np.random.default_rng(1)
    net.forward_from_to()
    for name in net.outputs:
        out = net.blobs[name]
        assert np.all(np.isfinite(out.data)), f"{rel}: non-finite output {name}"
        out.diff[...] = gen.standard_normal(out.shape)
    net.backward_from_to()
    for name in net.inputs:
        assert net.blobs[name].has_diff


_BVLC = [s for s in SHAPES if not json.load(open(s))["non_bvlc_layer_types"]]
_FAST = [s for s in _BVLC if not any(b in s for b in BIG)]
_SLOW = [s for s in _BVLC if any(b in s for b in BIG)]


@pytest.mark.parametrize("shape_file", _FAST, ids=_rel)
def test_corpus_net_runs_forward_backward(shape_file):
    run_forward_backward(_rel(shape_file))


@pytest.mark.slow
@pytest.mark.parametrize("shape_file", _SLOW, ids=_rel)
def test_big_corpus_net_runs_forward_backward(shape_file):
    # Up to a few GB each: in a child process, which returns it all.
    run_isolated("test_corpus_nets", "run_forward_backward", _rel(shape_file))
