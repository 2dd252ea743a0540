"""A peak-memory budget for a pytest run (loaded by tests/conftest.py).

The README promises that its test command runs on an ordinary machine: at
most 4 GB resident at any moment, in the pytest process and in every process
it starts (they count separately, as `/usr/bin/time -v` reports them).  After
each test this plugin reads the peak resident size of the pytest process and
of its waited-for children (`getrusage`; Linux reports kilobytes, macOS
bytes) and remembers the test during which each peak was first reached.  At
the end of the session a peak over the budget fails the run (exit status 1)
with a message naming the budget, the figure and that test.

Linux starts a program's peak at the resident size of the process that
started it (the forked copy it replaced), so a child's figure is never below
pytest's own at the time: conservative, and both must stay within budget.

PROTONET_TEST_RSS_BUDGET_MB overrides the budget (megabytes, 10**6 bytes);
the plugin's own tests use it to check that a run over budget does fail.

Memory a test has freed can stay with the C allocator: glibc keeps freed
blocks in its arenas (one per thread that allocated, and protonet's worker
threads allocate) and returns them only from the top of each heap.  After a
test that leaves more than TRIM_ABOVE_MB resident, the plugin asks it to
give them back (malloc_trim), so that one test's peak is its own and not
its own plus what earlier tests left behind.  The peaks themselves are
the kernel's high-water marks, which no trimming lowers.
"""

import ctypes
import os
import sys

try:
    import resource
except ImportError:  # Windows: no getrusage, no check
    resource = None

BUDGET_MB = 4000  # 4 GB (10**9 bytes)
TRIM_ABOVE_MB = 256
_ENV = "PROTONET_TEST_RSS_BUDGET_MB"

try:  # glibc only (Linux); elsewhere nothing to trim
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError, TypeError):
    _malloc_trim = None

# [peak MB, test that first reached it] for the pytest process and children.
_peaks = {"pytest process": [0.0, None], "child processes": [0.0, None]}


def _budget_mb():
    return float(os.environ.get(_ENV, BUDGET_MB))


def peak_mb(who):
    """Peak resident size in MB (10**6 bytes) of RUSAGE_SELF or _CHILDREN."""
    rss = resource.getrusage(who).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6


def _record(nodeid):
    if resource is None:
        return
    for key, who in (("pytest process", resource.RUSAGE_SELF),
                     ("child processes", resource.RUSAGE_CHILDREN)):
        mb = peak_mb(who)
        if mb > _peaks[key][0]:
            _peaks[key] = [mb, nodeid]


def _resident_mb():
    """Resident size now (Linux /proc), or 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def pytest_runtest_logfinish(nodeid, location):
    _record(nodeid)
    if _malloc_trim is not None and _resident_mb() > TRIM_ABOVE_MB:
        _malloc_trim(0)


def _over_budget():
    budget = _budget_mb()
    return [(key, mb, test) for key, (mb, test) in _peaks.items() if mb > budget]


def pytest_sessionfinish(session, exitstatus):
    _record(None)
    if _over_budget() and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if resource is None:
        return
    budget = _budget_mb()
    over = _over_budget()
    for key, mb, test in over:
        terminalreporter.write_line(
            f"MEMORY BUDGET EXCEEDED: peak resident size of the {key} "
            f"{mb:.0f} MB > budget {budget:.0f} MB (first reached during "
            f"{test or 'session start/finish'})", red=True, bold=True)
    if not over:
        figures = ", ".join(f"{key} {mb:.0f} MB" + (f" ({test})" if test else "")
                            for key, (mb, test) in _peaks.items())
        terminalreporter.write_line(
            f"peak resident size: {figures}; budget {budget:.0f} MB")
