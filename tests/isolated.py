"""Run one check in a fresh Python process, for tests of big nets.

A check that builds a net of a few GB runs in its own interpreter: when it
ends, the operating system takes back all its memory, whatever NumPy or the
C allocator would have kept, so the pytest process stays small for the rest
of the run (tests/memory_guard.py holds both to the suite's budget).

``run_isolated(module, function, *args)`` imports ``module`` (a test module,
or any module on the test run's path) in a new interpreter, calls
``function(*args)`` there (JSON-able arguments) and fails the calling test
with the child's traceback when the call raises or the process dies.
"""

import json
import subprocess
import sys

import pytest

_CHILD = """
import json, resource, sys, traceback
sys.path[:0] = {path!r}
module, function, args = json.loads(sys.argv[1])
try:
    getattr(__import__(module, fromlist=[function]), function)(*args)
except BaseException:
    traceback.print_exc()
    sys.exit(1)
print("peak-rss-kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_isolated(module, function, *args, timeout=900):
    """Call ``module.function(*args)`` in a child interpreter.

    Returns:
        int: the child's peak resident size in kilobytes (as Linux reports
        ``ru_maxrss``).

    Fails the running test (``pytest.fail``) with the child's traceback and
    output when the call raises, the child exits otherwise than normally
    (killed for memory, for example) or it runs out of `timeout` seconds.
    """
    what = f"{module}.{function}{tuple(args)!r}"
    code = _CHILD.format(path=[p for p in sys.path if p])
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps([module, function, list(args)])],
            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish in {timeout} s (child process)",
                    pytrace=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("peak-rss-kb "):
        status = (f"killed by signal {-done.returncode}" if done.returncode < 0
                  else f"exit status {done.returncode}")
        pytest.fail(f"{what} failed in its child process ({status}):\n"
                    f"{done.stderr}{done.stdout}", pytrace=False)
    return int(lines[-1].split()[1])
