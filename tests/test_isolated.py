"""tests/isolated.py: a check run in a child process passes or fails the
calling test as it would in process, with the child's traceback."""

import os
import signal
import sys

import numpy as np
import pytest

from isolated import run_isolated


def touches(mb):
    assert np.ones(mb * 10**6 // 8).sum() == mb * 10**6 // 8


def fails_with(message):
    raise AssertionError(message)


def dies():
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer does


def test_a_passing_check_returns_the_childs_peak():
    assert run_isolated("test_isolated", "touches", 200) >= 200_000


def test_a_failing_check_fails_the_test_with_the_childs_traceback():
    with pytest.raises(pytest.fail.Exception) as err:
        run_isolated("test_isolated", "fails_with", "the big net broke")
    msg = str(err.value)
    assert "test_isolated.fails_with('the big net broke',) failed in its child" in msg
    assert "AssertionError: the big net broke" in msg
    assert 'in fails_with' in msg


@pytest.mark.skipif(sys.platform == "win32", reason="no signals on Windows")
def test_a_dying_child_fails_the_test_naming_the_signal():
    with pytest.raises(pytest.fail.Exception, match="killed by signal 9"):
        run_isolated("test_isolated", "dies")
