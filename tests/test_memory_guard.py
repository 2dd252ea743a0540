"""tests/memory_guard.py: a run whose peak resident size (in the pytest
process or in a child it waited for) passes the budget fails, naming the
budget, the figure and the test that reached it; a run within it passes."""

import os
import re
import subprocess
import sys

import pytest

resource = pytest.importorskip("resource", reason="getrusage is POSIX-only")

TESTS = os.path.dirname(os.path.abspath(__file__))

CONFTEST = f"""
import sys
sys.path.insert(0, {TESTS!r})
from memory_guard import (pytest_runtest_logfinish, pytest_sessionfinish,
                          pytest_terminal_summary)
"""

# Touches 300 MB (np.ones writes every page) in a child process, or in the
# pytest process, or nothing.  The child comes first: started after the big
# test, it would inherit pytest's peak (see LAUNCH).
CASES = """
import subprocess, sys
import numpy as np

def test_big_in_child():
    subprocess.run([sys.executable, "-c",
                    "import numpy as np; np.ones(300 * 10**6 // 8).sum()"],
                   check=True)

def test_big_in_process():
    assert np.ones(300 * 10**6 // 8).sum() > 0

def test_small():
    assert np.ones(10).sum() == 10
"""


# Linux starts a new program's peak at the resident size of the process that
# started it (the copy it was forked as), so the pytest under test is started
# by a small Python, not by this (possibly big) pytest process.
LAUNCH = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def _pytest(tmp_path, budget_mb, *select):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_cases.py").write_text(CASES)
    env = dict(os.environ, PROTONET_TEST_RSS_BUDGET_MB=str(budget_mb))
    args = [f"test_cases.py::{name}" for name in select]
    done = subprocess.run([sys.executable, "-c", LAUNCH, sys.executable, "-m", "pytest",
                           "-q", "-p", "no:cacheprovider", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def _figure(out, who):
    m = re.search(rf"peak resident size of the {who} (\d+) MB > budget 200 MB "
                  r"\(first reached during test_cases.py::(\w+)\)", out)
    assert m, out
    return int(m.group(1)), m.group(2)


def test_peaks_over_budget_fail_the_run_naming_their_tests(tmp_path):
    code, out = _pytest(tmp_path, 200, "test_small", "test_big_in_child",
                        "test_big_in_process")
    assert code == 1, out
    assert "3 passed" in out
    mb, test = _figure(out, "pytest process")
    assert mb >= 300 and test == "test_big_in_process"
    mb, test = _figure(out, "child processes")
    assert mb >= 300 and test == "test_big_in_child"


def test_run_within_budget_passes_and_reports_its_peak(tmp_path):
    code, out = _pytest(tmp_path, 200, "test_small")
    assert code == 0, out
    m = re.search(r"peak resident size: pytest process (\d+) MB \(test_cases.py::"
                  r"test_small\), child processes (\d+) MB; budget 200 MB", out)
    assert m and 0 < int(m.group(1)) < 200, out
    assert "EXCEEDED" not in out

