"""Every per-layer case produced by real Caffe matches: forward, bottom diffs
and parameter diffs (tests/fixtures/caffe_ref/layers)."""

import pytest

from caffe_ref import case_names, run_case


@pytest.mark.parametrize("case", case_names("layers"))
def test_layer_case_matches_caffe(case):
    run_case("layers", case)
