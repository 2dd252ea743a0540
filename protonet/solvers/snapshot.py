"""A snapshot as one atomic unit: the weights, the sidecar, then the state.

Files of snapshot N (prefix P): `P_iter_N.caffemodel[.h5]`,
`P_iter_N.solverstate[.h5].protonet.json` (protonet's sidecar: RNG and data
reader positions) and `P_iter_N.solverstate[.h5]`.  The solverstate is the
file that marks the snapshot complete; it is published last:

1. an old solverstate of iteration N (from an earlier run on the same
   prefix) is removed first, so it can never pair with the new files;
2. the weights, then the sidecar, then the solverstate are each written to
   a temporary file, synced and renamed into place (`protonet.io`), and the
   folder synced after each rename.

A kill between any two steps leaves snapshot N without its solverstate
(ignored by a resume) and every earlier snapshot untouched; an OS error
(full disk, read-only folder) removes what was already published of
snapshot N and raises an OutputError naming the file.

Also here: the start-up probe of the snapshot folder (Caffe's
CheckSnapshotWritePermissions) and the lock that keeps two trainers off one
prefix.
"""

import errno
import os
import signal

from .. import caffelog
from .. import io as _io
from ..errors import OutputError, SolverError
from ..outpath import folder_problem, output_error, probe_folder
from ..proto import caffe_pb2

try:
    import fcntl
except ImportError:     # pragma: no cover - not on POSIX
    fcntl = None

SIDECAR_SUFFIX = ".protonet.json"

# Testing hook for tests/test_crash_resume.py: SIGKILL this process at the
# k-th step of snapshot writing (counted over the run, from 1).
KILL_ENV = "PROTONET_TEST_KILL_AT_STEP"
_steps = [0]


def _step():
    """A point between two renames of a snapshot; the crash test kills here."""
    _steps[0] += 1
    kill_at = os.environ.get(KILL_ENV)
    if kill_at and kill_at.isdigit() and int(kill_at) == _steps[0]:
        os.kill(os.getpid(), signal.SIGKILL)


def probe_destination(prefix, where):
    """Make sure snapshots can be written under `prefix` before training:
    its folder is created if missing (as protonet always did) and must be a
    writable folder.  Raises OutputError naming the prefix."""
    folder = os.path.dirname(prefix) or "."
    what = f"{where}: snapshot_prefix"
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        pass                       # reported just below, with the reason
    problem = folder_problem(folder)
    if problem:
        raise OutputError(f"{what} '{prefix}': {problem}")
    probe_folder(folder, what, prefix)


class PrefixLock:
    """An exclusive lock on `<prefix>.lock` (fcntl.flock) held while a
    solver trains, so a second trainer on the same prefix fails at start.

    The lock file holds the owner's PID.  A lock left by a killed process is
    not a lock any more (the kernel drops flocks with the process), so a
    stale file never blocks; the file is removed on release.
    """

    def __init__(self, prefix, where):
        self.path = f"{prefix}.lock"
        self.where = where
        self.fd = None

    def acquire(self):
        if fcntl is None:
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise output_error(e, self.path, f"{self.where}: lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise output_error(e, self.path, f"{self.where}: lock file")
                raise SolverError(
                    f"{self.where}: another trainer (pid {owner or '?'}) is "
                    f"writing snapshots to this snapshot_prefix; lock file "
                    f"{self.path} is held. Use another snapshot_prefix or "
                    "wait for it to finish") from None
            # The holder before us may have removed the file after we opened
            # it: then our lock is on a dead inode; start over.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)       # drops the flock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _remove(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def write_set(model, state_file, write_model, write_sidecar, write_state):
    """Publish one snapshot: the weights, the sidecar, then the state file
    (see the module docstring).  The three callables each write one file
    atomically.  Raises OutputError naming the file an OS error hit, after
    removing what this snapshot had already published."""
    side = state_file + SIDECAR_SUFFIX
    current = None
    try:
        current = state_file
        if _remove(state_file):
            _sync_folder(state_file)
        _step()
        current = model
        write_model()
        _step()
        current = side
        write_sidecar()
        _step()
        current = state_file
        write_state()
        _step()
    except (OSError, OutputError) as e:
        for path in (model, side):
            try:
                _remove(path)
            except OSError:
                pass
        why = output_error(e, current, "snapshot file") \
            if isinstance(e, OSError) else e
        raise OutputError(f"{why}; snapshot not written (earlier snapshots "
                          "are untouched)") from None


def _sync_folder(path):
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def check_resumed_state(state_file, it, step, max_iter):
    """Refuse a solverstate whose iteration or current_step makes no sense
    for this run (negative, or beyond max_iter: it would train a million
    iterations, or none, and write snapshots by the thousand)."""
    if it < 0:
        raise SolverError(f"{state_file}: iter: must be >= 0, got {it}")
    if it > max_iter:
        raise SolverError(f"{state_file}: iter: {it} is beyond the solver's "
                          f"max_iter {max_iter}; raise max_iter to train on")
    if step < 0:
        raise SolverError(f"{state_file}: current_step: must be >= 0, got "
                          f"{step}")


def read_state(state_file, max_iter):
    """(iter, current_step, history arrays, learned_net or None) of a
    .solverstate or .solverstate.h5, its counters checked."""
    if state_file.endswith(".h5"):
        from ..hdf5 import read_solverstate
        st = read_solverstate(state_file)
        history = st["history"]
        it, learned, step = st["iter"], st["learned_net"], st["current_step"]
    else:
        st = _io.read_solverstate(state_file)
        history = [_io.blob_to_array(b, state_file, f"history blob {i}")
                   for i, b in enumerate(st.history)]
        it, step = st.iter, st.current_step
        learned = st.learned_net if st.HasField("learned_net") else None
    check_resumed_state(state_file, int(it), int(step), max_iter)
    return int(it), int(step), history, learned


def learned_net_path(state_file, learned):
    """The weights a solverstate names: as written, else beside the state
    file (a snapshot folder that was moved)."""
    if os.path.exists(learned):
        return learned
    alt = os.path.join(os.path.dirname(state_file), os.path.basename(learned))
    if not os.path.exists(alt):
        raise SolverError(f"{state_file}: learned_net '{learned}' not found")
    return alt


def read_sidecar(side, it):
    """The sidecar's JSON (None when there is none), checked to belong to
    the solverstate of iteration `it`."""
    if not os.path.exists(side):
        return None
    from ..sidecar_schema import load_sidecar
    data = load_sidecar(side)       # bounded, JSON checked against its layout
    check_sidecar_iter(side, data, it)
    return data


def check_sidecar_iter(side, data, it):
    """The sidecar must belong to the same snapshot as its solverstate."""
    got = data.get("iter") if isinstance(data, dict) else None
    if isinstance(got, int) and got != it:
        raise SolverError(f"{side}: iter {got} does not match its solverstate's "
                          f"iter {it}; the files belong to different snapshots")


def warn_no_sidecar(state_file):
    caffelog.warning(
        f"{state_file}: no sidecar {os.path.basename(state_file)}"
        f"{SIDECAR_SUFFIX}; the RNG and the data readers' positions are not "
        "restored, so the resumed run will not repeat an uninterrupted one "
        "bit for bit (expected for a solverstate written by Caffe)",
        "solver.cpp:294")


def write_model(solver, model, hdf5):
    """The weights of `solver.net`, atomically (Caffe's Net::ToProto/ToHDF5)."""
    if hdf5:
        from ..hdf5 import save_hdf5
        save_hdf5(solver.net, model, solver.param.snapshot_diff)
    else:
        solver.net.save(model, write_diff=solver.param.snapshot_diff)


def write_state(solver, state_file, model, hdf5):
    """The solverstate (iter, learned_net, current_step, history), atomically
    (Caffe's SGDSolver::SnapshotSolverState*)."""
    if hdf5:
        caffelog.info(f"Snapshotting solver state to HDF5 file {state_file}",
                      "sgd_solver.cpp:292")
        from ..hdf5 import write_solverstate
        write_solverstate(state_file, solver.iter, model,
                          solver.current_step, solver.history)
        return
    state = caffe_pb2.SolverState(iter=solver.iter, learned_net=model,
                                  current_step=solver.current_step)
    for h in solver.history:
        _io.array_to_blob(h, state.history.add())
    caffelog.info(f"Snapshotting solver state to binary proto file "
                  f"{state_file}", "sgd_solver.cpp:273")
    _io.write_binary(state_file, state)
