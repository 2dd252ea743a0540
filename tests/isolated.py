"""Run one check in a fresh Python process, for tests of big nets.

A check that builds a net of a few GB runs in its own interpreter: when it
ends, the operating system takes back all its memory, whatever NumPy or the
C allocator would have kept, so the pytest process stays small for the rest
of the run (tests/memory_guard.py holds both to the suite's budget).

``run_isolated(module, function, *args)`` imports ``module`` (a test module,
or any module on the test run's path) in a new interpreter, calls
``function(*args)`` there (JSON-able arguments) and fails the calling test
with the child's traceback when the call raises or the process dies.
``release_scratch_as_it_runs(net)`` lowers such a net's own peak.
"""

import json
import subprocess
import sys

import pytest

from protonet.layers.conv_products import ConvProducts

_CHILD = """
import json, sys, traceback
sys.path[:0] = {path!r}
module, function, args = json.loads(sys.argv[1])
try:
    getattr(__import__(module, fromlist=[function]), function)(*args)
except BaseException:
    traceback.print_exc()
    sys.exit(1)
try:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
except ImportError:  # Windows
    peak = 0
print("peak-rss-kb", peak)
"""


def run_isolated(module, function, *args, timeout=900):
    """Call ``module.function(*args)`` in a child interpreter.

    Returns:
        int: the child's peak resident size in kilobytes (as Linux reports
        ``ru_maxrss``; 0 where unknown).

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


def release_scratch_as_it_runs(net):
    """Convolutions drop their scratch buffers (columns, padding, Winograd
    tiles; their backward needs none of them) right after their forward,
    every layer after its backward, as memory="inference" does after
    forward: activations, diffs and parameters stay, so the net still runs
    forward and backward whole, but a big net's peak is its blobs plus one
    layer's scratch instead of every layer's.  (With hooks, the net runs
    its layers one at a time: no batch split, which a batch of one never
    uses anyway.)"""
    layers = net.layers  # (not the net: a hook holding it would be a cycle)

    def drop(i, forward):
        if forward and not isinstance(layers[i], ConvProducts):
            return  # e.g. Pooling's argmax, which its backward reads
        release = getattr(layers[i], "release_buffers", None)
        if release is not None:
            release()
    net.after_forward(lambda i: drop(i, True))
    net.after_backward(lambda i: drop(i, False))
