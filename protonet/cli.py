"""The `protonet` command line, modelled on Caffe's tools/caffe.cpp.

Commands (Caffe's flag spellings are accepted: `-solver x`, `--solver=x`,
`-solver=x`)::

    protonet train solver.prototxt            # or --solver=solver.prototxt
    protonet train solver.prototxt --weights=a.caffemodel,b.caffemodel
    protonet train solver.prototxt --snapshot=x_iter_1000.solverstate
    protonet train net.prototxt --base-lr 0.01 --max-iter 1000 ...
    protonet test --model=net.prototxt --weights=w.caffemodel --iterations=50
    protonet time --model=net.prototxt [--iterations=50] [--phase=TRAIN]
    protonet upgrade old.prototxt new.prototxt  # net, solver or .caffemodel

`train` given a net definition instead of a solver builds the solver from
flags (defaults in brackets): --type [SGD], --base-lr [0.01], --lr-policy
[fixed], --gamma [0.1], --power [0.75], --stepsize [1000], --momentum [0.9],
--weight-decay [0.0005], --max-iter [1000], --display [100], --iter-size [1],
--snapshot-every [0: only at the end], --snapshot-prefix [the net file
without extension], --test-iter / --test-interval [no testing],
--random-seed [-1], --clip-gradients [-1]. The positional file is a solver
when it parses as a SolverParameter, otherwise a net.

Logs go to stderr as glog lines (tools/extra/parse_log.py reads them).
SIGINT / SIGHUP act as --sigint_effect [stop] / --sighup_effect [snapshot]
(stop | snapshot | none). Exit code 0 on success, 1 on a protonet error,
2 on a usage error.
"""

import argparse
import signal
import sys
import time

import numpy as np

from . import caffelog
from . import io as _io
from .errors import ProtonetError
from .proto import caffe_pb2

_EFFECTS = ("stop", "snapshot", "none")


def _flag(parser, *names, **kw):
    """Add a flag under Caffe's single-dash name and the double-dash forms
    (underscores and hyphens both)."""
    spellings = []
    for n in names:
        spellings += [f"-{n}", f"--{n}"]
        if "_" in n:
            spellings.append(f"--{n.replace('_', '-')}")
    parser.add_argument(*dict.fromkeys(spellings), **kw)


def _parser():
    tools = "\n".join(f"  {name:<18}{text}" for name, (_, text) in TOOLS.items())
    p = argparse.ArgumentParser(
        prog="protonet", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Caffe-compatible training and testing (commands: train, "
        "test, time, upgrade, device_query).",
        epilog="more commands (each with its own --help):\n" + tools)
    p.add_argument("command", choices=["train", "test", "time", "upgrade",
                                       "device_query"])
    p.add_argument("files", nargs="*", help="train: solver or net prototxt; "
                   "upgrade: input and output files")
    _flag(p, "solver", help="solver prototxt")
    _flag(p, "model", help="net prototxt (test, time)")
    _flag(p, "weights", help="comma-separated .caffemodel files to copy "
          "parameters from (train: finetune; test: required)")
    _flag(p, "snapshot", help="a .solverstate to resume training from")
    _flag(p, "iterations", type=int, default=50,
          help="test/time: number of iterations [50]")
    _flag(p, "phase", choices=["TRAIN", "TEST"], help="time: net phase [TRAIN]")
    _flag(p, "level", type=int, default=0, help="net state level [0]")
    _flag(p, "stage", default="", help="comma-separated net state stages")
    _flag(p, "gpu", default=None, help="accepted; protonet runs on the CPU")
    _flag(p, "sigint_effect", choices=_EFFECTS, default="stop")
    _flag(p, "sighup_effect", choices=_EFFECTS, default="snapshot")
    _flag(p, "allow_python_layer", action="store_true",
          help="allow `Python` layers, which run code named in the prototxt "
          "(also PROTONET_ALLOW_PYTHON_LAYER=1)")
    g = p.add_argument_group("solver settings for `train net.prototxt`")
    for name, kind, default in [
            ("type", str, "SGD"), ("base_lr", float, 0.01),
            ("lr_policy", str, "fixed"), ("gamma", float, 0.1),
            ("power", float, 0.75), ("stepsize", int, 1000),
            ("stepvalue", str, ""), ("momentum", float, 0.9),
            ("momentum2", float, 0.999), ("delta", float, 1e-8),
            ("weight_decay", float, 0.0005), ("regularization_type", str, "L2"),
            ("max_iter", int, 1000), ("display", int, 100),
            ("average_loss", int, 1), ("iter_size", int, 1),
            ("snapshot_every", int, 0), ("snapshot_prefix", str, None),
            ("test_iter", int, 0), ("test_interval", int, 0),
            ("random_seed", int, -1), ("clip_gradients", float, -1.0)]:
        _flag(g, name, type=kind, default=default)
    return p


# ---------------------------------------------------------------------------


def _is_solver_file(path):
    """Whether `path` parses as a SolverParameter (else it is a net)."""
    text = _io._decode_text(_io._read_bytes(path), path)
    try:
        _io.parse_text(text, caffe_pb2.SolverParameter(), path)
    except ProtonetError:
        return False
    return True


def _solver_from_flags(net_path, a):
    sp = caffe_pb2.SolverParameter(
        net=net_path, type=a.type, base_lr=a.base_lr, lr_policy=a.lr_policy,
        gamma=a.gamma, power=a.power, stepsize=a.stepsize,
        momentum=a.momentum, momentum2=a.momentum2, delta=a.delta,
        weight_decay=a.weight_decay, regularization_type=a.regularization_type,
        max_iter=a.max_iter, display=a.display, average_loss=a.average_loss,
        iter_size=a.iter_size, snapshot=a.snapshot_every,
        random_seed=a.random_seed, clip_gradients=a.clip_gradients,
        solver_mode=caffe_pb2.SolverParameter.CPU)
    if a.stepvalue:
        sp.stepvalue.extend(int(v) for v in a.stepvalue.split(","))
    if a.snapshot_prefix is not None:
        sp.snapshot_prefix = a.snapshot_prefix
    if a.test_iter:
        sp.test_iter.append(a.test_iter)
        sp.test_interval = a.test_interval or a.max_iter
    return sp


class _Signals:
    """Caffe's SignalHandler: SIGINT / SIGHUP -> stop | snapshot | none."""

    def __init__(self, sigint_effect, sighup_effect):
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending = []
        self.old = {}

    def __enter__(self):
        for sig in self.effects:
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except ValueError:      # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, sig, frame):
        self.pending.append(sig)

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

    def request(self):
        while self.pending:
            effect = self.effects[self.pending.pop(0)]
            if effect != "none":
                return effect
        return "none"


class _Progress:
    """A one-line progress bar on a terminal's stderr."""

    def __init__(self, total, stream):
        self.total, self.stream = max(total, 1), stream

    def update(self, it):
        width = 30
        done = int(width * min(it, self.total) / self.total)
        self.stream.write(f"\r[{'#' * done}{' ' * (width - done)}] "
                          f"{it}/{self.total}\x1b[K")
        if it >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _stages(a):
    return [s for s in a.stage.split(",") if s]


def _warn_gpu(a):
    if a.gpu is not None:
        caffelog.warning(f"-gpu {a.gpu} ignored: protonet runs on the CPU",
                         "caffe.cpp:111")


def cmd_train(a):
    from .solvers import get_solver
    files = list(a.files)
    if a.solver and files:
        raise ProtonetError("give the solver either as -solver or as a "
                            "positional file, not both")
    src = a.solver or (files[0] if files else None)
    if not src:
        raise ProtonetError("Need a solver definition to train (protonet "
                            "train solver.prototxt, or a net prototxt with "
                            "solver flags)")
    if len(files) > 1:
        raise ProtonetError(f"train takes one file, got {files}")
    if a.snapshot and a.weights:
        raise ProtonetError("Give a snapshot to resume training or weights "
                            "to finetune but not both.")
    if _is_solver_file(src):
        param = _io.read_solver(src)
        path = src
    else:
        param = _solver_from_flags(src, a)
        path = None
        if a.snapshot_prefix is None:
            import os
            param.snapshot_prefix = os.path.splitext(src)[0]
    if a.level or a.stage:
        param.train_state.level = a.level
        param.train_state.stage.extend(_stages(a))
    _warn_gpu(a)
    progress = _Progress(param.max_iter, sys.stderr) \
        if sys.stderr.isatty() else None
    from .parallel import abort_on_error    # under mpirun: stop every rank
    with _Signals(a.sigint_effect, a.sighup_effect) as sig, abort_on_error():
        def request():
            if progress is not None:
                progress.update(solver.iter)
            return sig.request()
        solver = get_solver(param, action_request=request, path=path)
        if a.weights:
            for w in a.weights.split(","):
                solver.net.copy_from(w)
                for tn in solver.test_nets:
                    tn.copy_from(w)
        caffelog.info("Starting Optimization", "caffe.cpp:248")
        solver.solve(a.snapshot or None)
    caffelog.info("Optimization Done.", "caffe.cpp:259")
    return 0


def cmd_test(a):
    from .net import TEST, Net
    if not a.model:
        raise ProtonetError("Need model definition to score (-model).")
    if not a.weights:
        raise ProtonetError("Need model weights to score (-weights).")
    _warn_gpu(a)
    # Inference memory mode: activations no later layer reads are released
    # (the outputs, which are scored, are kept).
    net = Net(a.model, weights=a.weights, phase=TEST, level=a.level,
              stages=_stages(a), memory="inference")
    caffelog.info(f"Running for {a.iterations} iterations.", "caffe.cpp:304")
    sums, names = None, []
    loss = np.float32(0)
    for i in range(a.iterations):
        loss += np.float32(net.forward_from_to())
        values, k = [], 0
        for name in net.outputs:
            for v in np.ravel(net.blobs[name].data):
                values.append(np.float32(v))
                if i == 0:
                    names.append(name)
                caffelog.info(f"Batch {i}, {name} = "
                              f"{caffelog.format_number(v)}", "caffe.cpp:323")
                k += 1
        vals = np.array(values, np.float32)
        sums = vals if sums is None else sums + vals
    loss /= np.float32(max(a.iterations, 1))
    caffelog.info(f"Loss: {caffelog.format_number(loss)}", "caffe.cpp:328")
    weights = net.blob_loss_weights
    for name, total in zip(names, sums if sums is not None else []):
        mean = total / np.float32(a.iterations)
        w = weights[name]
        extra = (f" (* {caffelog.format_number(w)} = "
                 f"{caffelog.format_number(np.float32(w) * mean)} loss)"
                 if w else "")
        caffelog.info(f"{name} = {caffelog.format_number(mean)}{extra}",
                      "caffe.cpp:341")
    return 0


def cmd_time(a):
    from .net import TEST, TRAIN, Net
    if not a.model:
        raise ProtonetError("Need a model definition to time (-model).")
    _warn_gpu(a)
    phase = TEST if a.phase == "TEST" else TRAIN
    net = Net(a.model, phase=phase, level=a.level, stages=_stages(a))
    if a.weights:
        for w in a.weights.split(","):
            net.copy_from(w)
    caffelog.info("Performing Forward", "caffe.cpp:360")
    initial = net.forward_from_to()
    caffelog.info(f"Initial loss: {caffelog.format_number(initial)}",
                  "caffe.cpp:363")
    caffelog.info("Performing Backward", "caffe.cpp:364")
    net.backward_from_to()
    n_layers = len(net.layers)
    fwd, bwd = np.zeros(n_layers), np.zeros(n_layers)
    caffelog.info("*** Benchmark begins ***", "caffe.cpp:376")
    caffelog.info(f"Testing for {a.iterations} iterations.", "caffe.cpp:377")
    clock = time.perf_counter
    t_total = clock()
    for j in range(a.iterations):
        t_iter = clock()
        # Layer by layer as the net runs each (a batch-separable layer split
        # over the cores, protonet/batch_split.py).
        for i in range(n_layers):
            t = clock()
            net.forward_from_to(i, i)
            fwd[i] += clock() - t
        for i in reversed(range(n_layers)):
            if not net.layer_need_backward[i]:
                continue
            t = clock()
            net.backward_from_to(i, i)
            bwd[i] += clock() - t
        caffelog.info(f"Iteration: {j + 1} forward-backward time: "
                      f"{caffelog.format_number((clock() - t_iter) * 1e3)} ms.",
                      "caffe.cpp:405")
    total_ms = (clock() - t_total) * 1e3
    n = max(a.iterations, 1)
    caffelog.info("Average time per layer: ", "caffe.cpp:408")
    for name, f, b in zip(net.layer_names, fwd, bwd):
        caffelog.info(f"{name:>10}\tforward: "
                      f"{caffelog.format_number(f * 1e3 / n)} ms.",
                      "caffe.cpp:411")
        caffelog.info(f"{name:>10}\tbackward: "
                      f"{caffelog.format_number(b * 1e3 / n)} ms.",
                      "caffe.cpp:414")
    caffelog.info(f"Average Forward pass: "
                  f"{caffelog.format_number(fwd.sum() * 1e3 / n)} ms.",
                  "caffe.cpp:419")
    caffelog.info(f"Average Backward pass: "
                  f"{caffelog.format_number(bwd.sum() * 1e3 / n)} ms.",
                  "caffe.cpp:421")
    caffelog.info(f"Average Forward-Backward: "
                  f"{caffelog.format_number(total_ms / n)} ms.", "caffe.cpp:423")
    caffelog.info(f"Total Time: {caffelog.format_number(total_ms)} ms.",
                  "caffe.cpp:425")
    caffelog.info("*** Benchmark ends ***", "caffe.cpp:426")
    return 0


def cmd_upgrade(a):
    if len(a.files) != 2:
        raise ProtonetError("usage: protonet upgrade INPUT OUTPUT (a net or "
                            "solver prototxt, or a .caffemodel)")
    src, dst = a.files
    from . import upgrade
    if src.endswith((".caffemodel", ".binaryproto")):
        kind = "upgrade_caffemodel"
    elif _is_solver_file(src):
        kind = "upgrade_solver_file"
    else:
        kind = "upgrade_net_file"
    fn = getattr(upgrade, kind, None)
    if fn is None:
        raise ProtonetError(f"protonet.upgrade.{kind} is not available in "
                            "this version")
    fn(src, dst)
    caffelog.info(f"Wrote upgraded file to {dst}", "upgrade_net_proto_text.cpp:49")
    return 0


def cmd_device_query(a):
    caffelog.info("protonet runs on the CPU (NumPy/BLAS); no GPU devices are "
                  "used", "caffe.cpp:140")
    return 0


COMMANDS = {"train": cmd_train, "test": cmd_test, "time": cmd_time,
            "upgrade": cmd_upgrade, "device_query": cmd_device_query}


# Tools with their own flags: command -> module exposing add_arguments(parser)
# and run(args) -> exit code (imported only when used).
TOOLS = {
    "convert-imageset": ("protonet.tools.convert_imageset",
                         "list file of images -> LMDB of Datum records"),
    "compute-mean": ("protonet.tools.compute_mean",
                     "LMDB -> mean.binaryproto"),
    "dataset": ("protonet.tools.datasets",
                "write a bundled real data set (digits) as LMDB and HDF5"),
    "summary": ("protonet.tools.summary_cmd",
                "per-layer shapes, memory, parameters, multiply-adds"),
    "draw": ("protonet.tools.draw_cmd", "draw a net with Graphviz"),
    "export": ("protonet.tools.export_cmd",
               "net + weights -> ONNX model (--check: compare in onnxruntime)"),
}


def _run_tool(name, argv):
    import argparse
    import importlib
    module_name, help_text = TOOLS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"protonet {name}",
                                     description=help_text)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 2
    try:
        return module.run(args)
    except ProtonetError as e:
        sys.stderr.write(f"protonet {name}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"protonet {name}: interrupted\n")
        return 130


def main(argv=None):
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:     # argparse: usage errors and --help
        return int(e.code or 0) if isinstance(e.code, int) else 2
    if getattr(args, "allow_python_layer", False):
        from .layers.python_layer import allow_python_layers
        allow_python_layers(True)
    handler = caffelog.enable(sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except ProtonetError as e:
        sys.stderr.write(f"protonet {args.command}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"protonet {args.command}: interrupted\n")
        return 130
    finally:
        caffelog.disable(handler)


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
