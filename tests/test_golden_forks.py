"""Every fork-layer case produced by real Caffe (brocolli-caffe; SSD layers as
in weiliu89/caffe ssd) matches: forward, bottom diffs and parameter diffs
(tests/fixtures/caffe_ref/forks)."""

import csv
import os

import numpy as np
import pytest

from caffe_ref import ROOT, case_names, load_case, run_case


def _case_types():
    with open(os.path.join(ROOT, "forks", "INDEX.tsv")) as f:
        return {r["case"]: r["layer_type"]
                for r in csv.DictReader(f, delimiter="\t")}


TYPES = _case_types()


@pytest.mark.parametrize("case", case_names("forks"))
def test_fork_case_matches_caffe(case):
    net = run_case("forks", case)
    if TYPES[case] != "DetectionOutput":
        return
    # DetectionOutput: the same rows in the same order; image and label exact.
    _, meta, arr = load_case("forks", case)
    t = meta["tops"][-1]
    got, expected = net.blobs[t["blob"]].data, arr[t["key"]]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got[..., :2], expected[..., :2])
