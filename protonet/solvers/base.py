"""The training loop shared by every solver (Caffe's Solver).

Mirrors: src/caffe/solver.cpp and the bookkeeping half of
src/caffe/solvers/sgd_solver.cpp (ApplyUpdate, ClipGradients, Normalize,
Regularize, snapshots and restore).

One iteration (`step`), exactly in Caffe's order:

1. clear the parameter diffs; run the test nets when `test_interval` says so;
2. forward + backward `iter_size` times (diffs accumulate), loss averaged;
3. display the smoothed loss and the train net's outputs;
4. `apply_update`: rate for the current iteration (before the increment),
   gradient clipping over ALL learnable params (global L2 norm), then per
   param: divide by iter_size, add weight decay (L2: decay * w, L1:
   decay * sign(w), decay = weight_decay * decay_mult), the solver's rule
   (`compute_update_value`, with lr = rate * lr_mult), and w -= diff;
5. iter += 1; snapshot every `snapshot` iterations or when a signal asks.

All arithmetic on parameters is float32 with Caffe's operation order.
"""

import json
import os
import warnings

import numpy as np

from .. import caffelog
from .. import io as _io
from .. import parallel
from .. import rng as _rng
from ..errors import SolverError
from ..lr_policy import Plateau, learning_rate
from ..numerics import check_step, check_weights
from ..net import TEST, TRAIN, Net
from ..proto import caffe_pb2
from . import snapshot as _snap
from .check import (MANY_SNAPSHOTS, check_solver_param, describe_update,
                    snapshot_count)
from .snapshot import SIDECAR_SUFFIX

f32 = np.float32


def load_solver_param(solver, path=None):
    """A SolverParameter from a path, prototxt text or message; returns
    (param, path or None). Applies Caffe's snapshot_prefix upgrade."""
    if isinstance(solver, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(solver)
        from ..upgrade import upgrade_solver
        upgrade_solver(param, path)
    elif isinstance(solver, os.PathLike) or os.path.exists(str(solver)) or \
            ":" not in str(solver):
        path = str(solver)
        param = _io.read_solver(path)
    else:
        param = _io.parse_solver_text(str(solver), path)
    if path is not None:
        # NOTE(caffe): UpgradeSnapshotPrefixProperty: no prefix -> the solver
        # file's name without extension; a directory -> dir/<solver stem>.
        stem = os.path.splitext(path)[0]
        if not param.HasField("snapshot_prefix"):
            param.snapshot_prefix = stem
        elif os.path.isdir(param.snapshot_prefix):
            param.snapshot_prefix = os.path.join(param.snapshot_prefix,
                                                 os.path.basename(stem))
    return param, path


class Solver:
    """Base class: builds the nets, runs the loop, snapshots and restores.

    Args:
        solver: solver prototxt path, prototxt text, or SolverParameter.
        path: the file a SolverParameter came from (relative net paths,
            default snapshot_prefix, error messages).
        action_request: optional callable returning 'none', 'snapshot' or
            'stop', polled after every iteration and test batch (Caffe's
            signal handling; see `protonet.cli`).

    Attributes (as pycaffe): net, test_nets, iter, param.
    """

    type_name = None

    def __init__(self, solver, action_request=None, path=None):
        self.param, self.path = load_solver_param(solver, path)
        self.where = self.path or "<solver>"
        self.action_request = action_request
        self.last_snapshot = None   # the newest state file this run wrote
        self._check_param()
        # Under `mpirun -n N` (N > 1): data-parallel training; else None.
        self.dp = parallel.data_parallel(self)
        self.callbacks = []         # (on_start, on_gradients_ready) pairs
        # Called right after each update, while the diffs hold the update
        # values (the training report reads them).
        self.update_hooks = []
        caffelog.info("Initializing solver from parameters: \n"
                      + _io.format_text(self.param), "solver.cpp:44")
        # NOTE(caffe): the proto's default is GPU, but Caffe's tool only
        # switches to the GPU when solver_mode is written explicitly.
        if self.param.HasField("solver_mode") and \
                self.param.solver_mode == caffe_pb2.SolverParameter.GPU:
            msg = (f"{self.where}: solver_mode GPU (device_id "
                   f"{self.param.device_id}) requested; protonet runs on the CPU")
            warnings.warn(msg, stacklevel=2)
            caffelog.warning(msg, "solver.cpp:48")
        if self.param.random_seed >= 0:
            _rng.set_random_seed(self.param.random_seed)
        self.iter = 0
        self.current_step = 0
        self.requested_early_exit = False
        self.smoothed_loss = 0.0
        self.losses = []
        self.test_results = []
        self.test_loss = {}
        self.plateau = Plateau(self.param) \
            if self.param.lr_policy == "plateau" else None
        self._init_train_net()
        self._init_test_nets()
        self.history = [np.zeros(b.shape, f32) for b in self.net.learnable_params]
        self.pre_solve()
        if self.dp is not None:
            self.dp.broadcast_state(self)
        caffelog.info("Solver scaffolding done.", "solver.cpp:56")

    # -- construction -----------------------------------------------------
    def _check_param(self):
        p = self.param
        check_solver_param(p, self.where, self.type_name)
        if snapshot_count(p) > MANY_SNAPSHOTS:
            caffelog.warning(f"{self.where}: max_iter {p.max_iter} with "
                             f"snapshot {p.snapshot} writes "
                             f"{snapshot_count(p)} snapshots", "solver.cpp:60")
        # NOTE(caffe): Solver::Init probes the prefix when snapshot != 0.
        if p.snapshot and parallel.is_root():
            _snap.probe_destination(p.snapshot_prefix, self.where)

    def _net_file(self, name, field):
        """Resolve a net file path (relative to the working directory as in
        Caffe, else relative to the solver file's folder)."""
        if not os.path.exists(name) and self.path and not os.path.isabs(name):
            alt = os.path.join(os.path.dirname(self.path), name)
            if os.path.exists(alt):
                return alt
        if not os.path.exists(name):
            raise SolverError(f"{self.where}: {field}: net file '{name}' not "
                              f"found (relative to the working directory "
                              f"{os.getcwd()})")
        return name

    def _read_net(self, name, field):
        return _io.read_net(self._net_file(name, field))

    def _init_train_net(self):
        p = self.param
        fields = [f for f in ("net", "net_param", "train_net",
                              "train_net_param") if p.HasField(f)]
        if len(fields) != 1:
            raise SolverError(
                f"{self.where}: the solver must name the train net with "
                "exactly one of net, net_param, train_net, train_net_param; "
                f"found {', '.join(fields) or 'none'}")
        field = fields[0]
        if field.endswith("_param"):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(getattr(p, field))
            from ..upgrade import upgrade_net
            upgrade_net(net_param)
        else:
            net_param = self._read_net(getattr(p, field), field)
        state = caffe_pb2.NetState(phase=TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        caffelog.info(f"Creating training net from {field}", "solver.cpp:87")
        self.net = Net(net_param)

    def _init_test_nets(self):
        p = self.param
        generic = [f for f in ("net", "net_param") if p.HasField(f)]
        n_specific = len(p.test_net_param) + len(p.test_net)
        n_iter = len(p.test_iter)
        if (generic and n_iter < n_specific) or \
                (not generic and n_iter != n_specific):
            raise SolverError(
                f"{self.where}: test_iter: must be given once per test net; "
                f"{n_specific} test_net/test_net_param given"
                f"{' (plus net/net_param for the rest)' if generic else ''}, "
                f"test_iter given {n_iter} time(s)")
        sources = []
        for tp in p.test_net_param:
            q = caffe_pb2.NetParameter()
            q.CopyFrom(tp)
            sources.append(("test_net_param", q))
        for name in p.test_net:
            sources.append((f"test_net file: {name}",
                            self._read_net(name, "test_net")))
        for _ in range(n_iter - n_specific):
            if p.HasField("net_param"):
                q = caffe_pb2.NetParameter()
                q.CopyFrom(p.net_param)
                sources.append(("net_param", q))
            else:
                sources.append((f"net file: {p.net}",
                                self._read_net(p.net, "net")))
        if p.test_state and len(p.test_state) != len(sources):
            raise SolverError(f"{self.where}: test_state must be given once "
                              f"per test net ({len(sources)}), got "
                              f"{len(p.test_state)}")
        if sources and p.test_interval <= 0:
            raise SolverError(f"{self.where}: test_interval must be > 0 when "
                              f"there are test nets (test_iter given)")
        self.test_nets = []
        for i, (src, net_param) in enumerate(sources):
            if src == "test_net_param" or src == "net_param":
                from ..upgrade import upgrade_net
                upgrade_net(net_param)
            state = caffe_pb2.NetState(phase=TEST)
            state.MergeFrom(net_param.state)
            if p.test_state:
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            caffelog.info(f"Creating test net (#{i}) specified by {src}",
                          "solver.cpp:172")
            self.test_nets.append(Net(net_param))

    def pre_solve(self):
        """Allocate extra history blobs (AdaDelta, Adam)."""

    # -- the loop ---------------------------------------------------------
    def _request(self):
        if self.action_request is None:
            return "none"
        return self.action_request() or "none"

    def forward_backward(self):
        loss = self.net.forward_from_to()
        if self.dp is not None:     # starts the gradient allreduce early
            self.dp.backward(self.net, self.param.iter_size)
        else:
            self.net.backward_from_to()
        return f32(loss)

    def step(self, iters):
        """Run `iters` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self.losses = []
        self.smoothed_loss = 0.0
        while self.iter < stop_iter:
            # Lazily unless callbacks run before the backward (see there).
            self.net.clear_param_diffs(lazy=not self.callbacks)
            if p.test_interval and self.iter % p.test_interval == 0 and \
                    (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
                self._observe_plateau()
            display = p.display and self.iter % p.display == 0
            for on_start, _ in self.callbacks:
                on_start()
            loss = f32(0)
            for _ in range(p.iter_size):
                loss += self.forward_backward()
            loss /= f32(p.iter_size)
            if self.dp is not None:     # gradients and loss: mean over ranks
                loss = self.dp.reduce_gradients(self, loss)
            check_step(self.net, self.iter, loss, self._hyper(),  # NaN/Inf
                       self.last_snapshot)
            self.last_loss = float(loss)
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            if display:
                caffelog.info(f"Iteration {self.iter}, loss = "
                              f"{caffelog.format_number(self.smoothed_loss)}",
                              "solver.cpp:218")
                self._log_outputs(self.net, None, "Train", "solver.cpp:237")
            for _, on_gradients_ready in self.callbacks:
                on_gradients_ready()
            self.apply_update()
            for hook in self.update_hooks:
                hook()
            self.iter += 1
            request = self._request() if self.dp is None else self.dp.request
            if (p.snapshot and self.iter % p.snapshot == 0) or \
                    request == "snapshot":
                self.snapshot()
            if request == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume_file=None):
        """Train to max_iter (Caffe's Solver::Solve)."""
        p = self.param
        caffelog.info(f"Solving {self.net.name}", "solver.cpp:287")
        caffelog.info(f"Learning Rate Policy: {p.lr_policy}", "solver.cpp:288")
        self.requested_early_exit = False
        lock = None
        if parallel.is_root() and (p.snapshot or p.snapshot_after_train):
            _snap.probe_destination(p.snapshot_prefix, self.where)
            lock = _snap.PrefixLock(p.snapshot_prefix, self.where).acquire()
        try:
            self._solve(resume_file)
        finally:
            if lock is not None:
                lock.release()

    def _solve(self, resume_file):
        p = self.param
        if resume_file:
            caffelog.info(f"Restoring previous solver status from "
                          f"{resume_file}", "solver.cpp:294")
            if self.dp is None or self.dp.is_root:
                self.restore(resume_file)
            if self.dp is not None:
                self.dp.broadcast_state(self)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and \
                (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            caffelog.info("Optimization stopped early.", "solver.cpp:307")
            return
        if p.display and self.iter % p.display == 0:
            loss = f32(self.net.forward_from_to())
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            caffelog.info(f"Iteration {self.iter}, loss = "
                          f"{caffelog.format_number(self.smoothed_loss)}",
                          "solver.cpp:317")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        caffelog.info("Optimization Done.", "solver.cpp:322")

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        loss = float(loss)
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self.losses[idx]) / average_loss
            self.losses[idx] = loss

    def _log_outputs(self, net, scores, kind, src):
        """'    Train net output #k: name = v (* w = w*v loss)' lines."""
        k = 0
        lw = net.blob_loss_weights
        for name in net.outputs:
            values = np.ravel(net.blobs[name].data) if scores is None \
                else scores[name]
            w = lw[name]
            for v in values:
                extra = (f" (* {caffelog.format_number(w)} = "
                         f"{caffelog.format_number(f32(w) * f32(v))} loss)"
                         if w else "")
                caffelog.info(f"    {kind} net output #{k}: {name} = "
                              f"{caffelog.format_number(v)}{extra}", src)
                k += 1

    # -- testing ----------------------------------------------------------
    def test_all(self):
        """Run every test net; results in `self.test_results`."""
        self.test_results = []
        for i in range(len(self.test_nets)):
            if self.requested_early_exit or not parallel.is_root():
                break
            self.test_results.append(self.test(i))
        if self.dp is not None:     # rank 0 alone tests
            self.dp.after_test(self)

    def _observe_plateau(self):
        """lr_policy 'plateau': feed it the monitored test output."""
        if self.plateau is not None and self.test_results:
            self.plateau.observe_results(self.test_results, self.iter,
                                         self.where)

    def share_trained_layers(self, test_net):
        """Make `test_net`'s parameters views of the train net's, by layer
        name (Caffe's Net::ShareTrainedLayersWith)."""
        test_net.share_with(self.net)

    def add_callback(self, on_start, on_gradients_ready):
        """pycaffe's Solver.add_callback: `on_start()` runs before each
        iteration's forward passes, `on_gradients_ready()` before the
        update (Caffe's Solver::Callback)."""
        self.callbacks.append((on_start, on_gradients_ready))

    def add_report(self, directory, **options):
        """Keep a live HTML training report in `directory` (see
        protonet.report); returns it: call its `write()` after training."""
        from ..report import TrainingReport
        return TrainingReport(self, directory, **options)

    def share_weights(self, net):
        """pycaffe's Solver.share_weights(net)."""
        net.share_with(self.net)

    def test(self, test_net_id=0):
        """Forward test net `test_net_id` test_iter times; returns a dict of
        mean scores (lists) per output blob name. With test_compute_loss the
        mean loss is also kept in `self.test_loss[test_net_id]`."""
        p = self.param
        caffelog.info(f"Iteration {self.iter}, Testing net (#{test_net_id})",
                      "solver.cpp:330")
        net = self.test_nets[test_net_id]
        self.share_trained_layers(net)
        n = p.test_iter[test_net_id]
        sums = None
        loss = f32(0)
        for _ in range(n):
            request = self._request()
            while request != "none":
                if request == "snapshot":
                    self.snapshot()
                elif request == "stop":
                    self.requested_early_exit = True
                request = self._request() if request == "snapshot" else "none"
            if self.requested_early_exit:
                caffelog.info("Test interrupted.", "solver.cpp:373")
                return {}
            iter_loss = f32(net.forward_from_to())
            if p.test_compute_loss:
                loss += iter_loss
            outs = {o: np.ravel(net.blobs[o].data).astype(f32) for o in net.outputs}
            if sums is None:
                sums = {o: v.copy() for o, v in outs.items()}
            else:
                for o, v in outs.items():
                    sums[o] += v
        sums = sums or {}
        means = {o: v / f32(n) for o, v in sums.items()}
        result = {o: [float(x) for x in v] for o, v in means.items()}
        if p.test_compute_loss:
            loss /= f32(n)
            caffelog.info(f"Test loss: {caffelog.format_number(loss)}",
                          "solver.cpp:380")
            self.test_loss[test_net_id] = float(loss)
        self._log_outputs(net, means, "Test", "solver.cpp:397")
        return result

    # -- the update -------------------------------------------------------
    def apply_update(self):
        """Caffe's SGDSolver::ApplyUpdate."""
        rate, self.current_step = learning_rate(self.param, self.iter,
                                                self.current_step, self.where,
                                                plateau=self.plateau)
        if self.param.display and self.iter % self.param.display == 0:
            caffelog.info(f"Iteration {self.iter}, lr = "
                          f"{caffelog.format_number(rate)}", "sgd_solver.cpp:106")
        self.last_rate = rate
        self.clip_gradients()
        self.update_params(rate)

    def _hyper(self):
        """The values the update multiplies by, for NumericalError messages."""
        return describe_update(self.param, getattr(self, "last_rate", None))

    def update_params(self, rate):
        """Normalize, regularize, compute the update value into each
        diff, and subtract it from the data (Caffe's per-param loop, then
        Net::Update)."""
        for i, blob in enumerate(self.net.learnable_params):
            self.normalize(i, blob)
            self.regularize(i, blob)
            self.compute_update_value(i, blob, rate)
        for blob in self.net.learnable_params:
            np.subtract(blob.data, blob.diff, out=blob.data)

    def clip_gradients(self):
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = f32(0)
        for blob in self.net.learnable_params:
            d = blob.diff.ravel()
            sumsq += f32(np.dot(d, d))
        norm = f32(np.sqrt(sumsq))
        if norm > clip:
            scale = f32(clip / norm)
            caffelog.info(f"Gradient clipping: scaling down gradients (L2 norm "
                          f"{caffelog.format_number(norm)} > "
                          f"{caffelog.format_number(clip)}) by scale factor "
                          f"{caffelog.format_number(scale)}", "sgd_solver.cpp:126")
            for blob in self.net.learnable_params:
                blob.diff *= scale

    def normalize(self, i, blob):
        if self.param.iter_size > 1:
            blob.diff *= f32(1) / f32(self.param.iter_size)

    def regularize(self, i, blob):
        decay = f32(self.param.weight_decay) * \
            f32(self.net.params_weight_decay[i])
        if not decay:
            return
        if self.param.regularization_type == "L2":
            blob.diff += decay * blob.data
        else:
            blob.diff += decay * np.sign(blob.data)

    def compute_update_value(self, i, blob, rate):
        raise NotImplementedError

    # -- snapshots --------------------------------------------------------
    def snapshot_filename(self, extension):
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write the weights, protonet's sidecar and the solver state, in
        that order, as one unit (see protonet/solvers/snapshot.py); returns
        (model file, state file); None on ranks other than 0.

        Raises:
            NumericalError: a parameter blob holds NaN or Inf (nothing is
                written).
            OutputError: an OS error (full disk, read-only folder) named
                with the file.
        """
        if not parallel.is_root():
            return None
        check_weights(self.net, self.iter, self._hyper(), self.last_snapshot)
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        ext = ".h5" if hdf5 else ""
        model = self.snapshot_filename(".caffemodel" + ext)
        state_file = self.snapshot_filename(".solverstate" + ext)
        folder = os.path.dirname(self.param.snapshot_prefix)
        if folder and not os.path.isdir(folder):
            _snap.probe_destination(self.param.snapshot_prefix, self.where)
        if hdf5:
            caffelog.info(f"Snapshotting to HDF5 file {model}", "solver.cpp:464")
        else:
            caffelog.info(f"Snapshotting to binary proto file {model}",
                          "solver.cpp:454")
        _snap.write_set(model, state_file,
                        lambda: _snap.write_model(self, model, hdf5),
                        lambda: self._write_sidecar(state_file),
                        lambda: _snap.write_state(self, state_file, model,
                                                  hdf5))
        self.last_snapshot = state_file
        return model, state_file

    def _data_states(self):
        nets = {"train": self.net}
        nets.update({f"test_{i}": n for i, n in enumerate(self.test_nets)})
        out = {}
        for key, net in nets.items():
            out[key] = {name: layer.get_state()
                        for name, layer in zip(net.layer_names, net.layers)
                        if hasattr(layer, "get_state")}
        return out

    def _write_sidecar(self, state_file):
        side = {"format": 1, "iter": self.iter, "rng": _rng.get_state(),
                "data": self._data_states()}
        if self.plateau is not None:
            side["plateau"] = self.plateau.state()
        _io.atomic_write(state_file + SIDECAR_SUFFIX,
                         json.dumps(side).encode("utf-8"))

    def restore(self, state_file):
        """Resume from a .solverstate (or .solverstate.h5): iteration,
        current_step, history, the weights it names, and (when protonet's
        sidecar JSON is there) the RNG and data-reader positions."""
        state_file = str(state_file)
        it, step, history, learned = _snap.read_state(state_file,
                                                      self.param.max_iter)
        # Read and check the sidecar before anything is changed.
        data = _snap.read_sidecar(state_file + SIDECAR_SUFFIX, it)
        if len(history) != len(self.history):
            raise SolverError(f"{state_file}: holds {len(history)} history "
                              f"blob(s) but this {self.type_name} solver keeps "
                              f"{len(self.history)}; was it written by another "
                              "solver type or net?")
        for i, (h, mine) in enumerate(zip(history, self.history)):
            if h.size != mine.size:
                raise SolverError(f"{state_file}: history blob {i} has shape "
                                  f"{h.shape}, expected {mine.shape}")
            mine[...] = h.reshape(mine.shape)
        if learned:
            self.net.copy_from(_snap.learned_net_path(state_file, learned))
        self.iter, self.current_step = it, step
        self.last_snapshot = state_file     # on disk and known good
        if data is not None:
            from ..sidecar_schema import apply_sidecar
            side = state_file + SIDECAR_SUFFIX
            apply_sidecar(data, side, {"train": self.net, **{
                f"test_{i}": n for i, n in enumerate(self.test_nets)}})
            if self.plateau is not None and "plateau" in data:
                self.plateau.set_state(data["plateau"], side)
        else:
            _snap.warn_no_sidecar(state_file)

    def __repr__(self):
        return (f"<{type(self).__name__} iter {self.iter}, net "
                f"'{self.net.name}', {len(self.test_nets)} test net(s)>")
