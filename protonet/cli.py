"""The `protonet` command line, modelled on Caffe's tools/caffe.cpp.

Commands (each with its own `--help`; Caffe's flag spellings are accepted:
`-solver x`, `--solver x`, `-solver=x`, `--solver=x`, `-flag=true`)::

    protonet train solver.prototxt            # or --solver=solver.prototxt
    protonet train solver.prototxt --max-iter 5 --base-lr 0.5   # overrides
    protonet train solver.prototxt --weights=a.caffemodel,b.caffemodel
    protonet train solver.prototxt --snapshot=x_iter_1000.solverstate
    protonet train net.prototxt --base-lr 0.01 --max-iter 1000 ...
    protonet test --model=net.prototxt --weights=w.caffemodel --iterations=50
    protonet time --model=net.prototxt [--iterations=50] [--phase=TRAIN]
    protonet upgrade old.prototxt new.prototxt  # net, solver or .caffemodel
    protonet <tool> ...                         # TOOLS below

`train` tells a solver file from a net definition by the field names it
uses (see `cliflags.text_kind`), so a typo in a solver is reported as a
solver error at its line.  Given a net, the solver flags build the solver
(their defaults apply); given a solver file, each solver flag the user
wrote overrides that field and is logged (`Overriding solver max_iter:
10000 -> 5`).  On a terminal a progress bar (protonet.progress) sits below
the log lines.

Logs go to stderr as glog lines (tools/extra/parse_log.py reads them).
SIGINT / SIGHUP act as --sigint_effect [stop] / --sighup_effect [snapshot]
(stop | snapshot | none). Exit code 0 on success, 1 on a protonet error,
2 on a usage error.
"""

import signal
import sys
import time

import numpy as np

from . import caffelog
from . import io as _io
from .cliflags import (CaffeArgumentParser, add_solver_flags,
                       override_solver, parse_list, parse_weights,
                       solver_from_flags, text_kind)
from .errors import ProtonetError

_EFFECTS = ("stop", "snapshot", "none")
_SPELLINGS = ("Flags also take Caffe's spellings: -flag value, -flag=value, "
              "--flag=value,\nwith underscores or hyphens (--snapshot_prefix, "
              "--snapshot-prefix);\nbooleans also -flag=true|false.")


def _common_flags(p):
    p.add_argument("--weights", help="comma-separated .caffemodel files to "
                   "copy parameters from, in order")
    p.add_argument("--level", type=int, default=0, help="net state level")
    p.add_argument("--stage", default="", help="comma-separated net state "
                   "stages")
    p.add_argument("--gpu", default=None,
                   help="accepted for Caffe scripts; protonet runs on the CPU")
    p.add_argument("--allow_python_layer", action="store_true",
                   help="allow `Python` layers, which run code named in the "
                   "prototxt (also PROTONET_ALLOW_PYTHON_LAYER=1)")


def _add_train(sub):
    p = sub.add_parser(
        "train", help="train a net (solver file, or net + solver flags)",
        usage="%(prog)s [FILE | --solver SOLVER] [flags]",
        description="Train from a solver file, or from a net definition "
        "with the solver flags below.", epilog=_SPELLINGS)
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="solver prototxt, or a net prototxt")
    p.add_argument("--solver", help="solver prototxt (instead of FILE)")
    p.add_argument("--snapshot", help="a .solverstate to resume training from")
    _common_flags(p)
    p.add_argument("--sigint_effect", choices=_EFFECTS, default="stop",
                   help="what SIGINT (Ctrl-C) does")
    p.add_argument("--sighup_effect", choices=_EFFECTS, default="snapshot",
                   help="what SIGHUP does")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="keep a live HTML training report in DIR/index.html "
                   "(rewritten at every display and test interval)")
    p.add_argument("--report_layers", metavar="BLOBS", default=None,
                   help="comma-separated test-net blobs whose activation maps "
                   "the report shows [the first two convolutions]")
    add_solver_flags(p)


def _add_test_time(sub):
    p = sub.add_parser("test", help="score a trained net", epilog=_SPELLINGS,
                       description="Run a net's TEST phase with trained "
                       "weights and log the mean of every output.")
    p.add_argument("--model", help="net prototxt (required)")
    p.add_argument("--iterations", type=int, default=50,
                   help="number of batches to score")
    _common_flags(p)
    p = sub.add_parser("time", help="time forward and backward per layer",
                       description="Benchmark a net layer by layer.",
                       epilog=_SPELLINGS)
    p.add_argument("--model", help="net prototxt (required)")
    p.add_argument("--iterations", type=int, default=50,
                   help="number of timed iterations")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TRAIN",
                   help="net phase")
    _common_flags(p)


def _parser():
    p = CaffeArgumentParser(
        prog="protonet",
        description="Caffe-compatible training and testing on the CPU.\n"
        "`protonet COMMAND --help` lists a command's own flags.",
        epilog=_SPELLINGS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           parser_class=CaffeArgumentParser)
    sub.required = True
    _add_train(sub)
    _add_test_time(sub)
    up = sub.add_parser("upgrade", help="upgrade an old net, solver or "
                        ".caffemodel to the current format")
    up.add_argument("files", nargs="*", metavar="INPUT OUTPUT",
                    help="input file and output file")
    sub.add_parser("device_query", help="say which device runs (the CPU)")
    for name, (_, text) in TOOLS.items():   # parsed by _run_tool
        sub.add_parser(name, help=text, add_help=False)
    return p


# ---------------------------------------------------------------------------


def _file_kind(path):
    """'solver' or 'net', from the field names the text file uses."""
    return text_kind(_io._decode_text(_io._read_bytes(path), path))


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


def _stages(a):
    return [s for s in a.stage.split(",") if s]


def _warn_gpu(a):
    if a.gpu is not None:
        caffelog.warning(f"-gpu {a.gpu} ignored: protonet runs on the CPU",
                         "caffe.cpp:111")


def _train_param(a):
    """(SolverParameter, path of the solver file or None) for `train`."""
    if a.solver and a.file:
        raise ProtonetError("give the solver either as -solver or as a "
                            "positional file, not both")
    src = a.solver or a.file
    if not src:
        raise ProtonetError("Need a solver definition to train (protonet "
                            "train solver.prototxt, or a net prototxt with "
                            "solver flags)")
    if a.snapshot and a.weights:
        raise ProtonetError("Give a snapshot to resume training or weights "
                            "to finetune but not both.")
    if _file_kind(src) == "solver":
        from .parallel import launcher_rank

        def log(msg):       # under mpirun: once, by rank 0
            if launcher_rank() == 0:
                caffelog.info(msg, "caffe.cpp:210")
        return override_solver(_io.read_solver(src), a, log), src
    return solver_from_flags(src, a), None


def _progress(solver):
    """A progress bar on a terminal's stderr (rank 0 only), else None."""
    from . import parallel, progress
    if not progress.wanted(sys.stderr) or not parallel.is_root():
        return None
    bar = progress.ProgressBar(solver.param.max_iter, sys.stderr)
    run_test = solver.test

    def test(test_net_id=0):
        bar.begin_test(test_net_id, solver.param.test_iter[test_net_id])
        try:
            return run_test(test_net_id)
        finally:
            bar.end_test()
    solver.test = test
    return bar


def cmd_train(a):
    import contextlib
    from .parallel import abort_on_error, log_layout
    from .solvers import get_solver
    param, path = _train_param(a)
    weights = parse_weights(a.weights)
    if a.level or a.stage:
        param.train_state.level = a.level
        param.train_state.stage.extend(_stages(a))
    _warn_gpu(a)
    bar = None
    with _Signals(a.sigint_effect, a.sighup_effect) as sig, abort_on_error():
        def request():
            if bar is not None:
                if bar.test is not None:
                    bar.test_step()
                else:
                    bar.update(solver.iter, solver.smoothed_loss)
            return sig.request()
        solver = get_solver(param, action_request=request, path=path)
        log_layout(solver)
        for w in weights:
            solver.net.copy_from(w)
            for tn in solver.test_nets:
                tn.copy_from(w)
        report = None
        if a.report:
            layers = parse_list(a.report_layers, "report_layers") \
                if a.report_layers else None
            report = solver.add_report(a.report, activation_layers=layers)
        caffelog.info("Starting Optimization", "caffe.cpp:248")
        bar = _progress(solver)
        with bar if bar is not None else contextlib.nullcontext():
            solver.solve(a.snapshot or None)
        if report is not None:
            caffelog.info(f"Training report: {report.write(finished=True)}",
                          "caffe.cpp:259")
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
    weights = parse_weights(a.weights)
    net = Net(a.model, phase=TEST, level=a.level, stages=_stages(a),
              memory="inference")
    for w in weights:
        net.copy_from(w)
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
    weights = parse_weights(a.weights)
    net = Net(a.model, phase=phase, level=a.level, stages=_stages(a))
    for w in weights:
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
    elif _file_kind(src) == "solver":
        kind = "upgrade_solver_file"
    else:
        kind = "upgrade_net_file"
    fn = getattr(upgrade, kind, None)
    if fn is None:
        raise ProtonetError(f"protonet.upgrade.{kind} is not available in "
                            "this version")
    from .outpath import check_output_file, writing
    check_output_file(dst, "upgrade OUTPUT")
    with writing(dst, "upgrade OUTPUT"):
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
                         "list file of images -> LMDB/LevelDB of Datum records"),
    "compute-mean": ("protonet.tools.compute_mean",
                     "LMDB/LevelDB -> mean.binaryproto"),
    "dataset": ("protonet.tools.datasets",
                "write a bundled real data set (digits) as LMDB and HDF5"),
    "summary": ("protonet.tools.summary_cmd",
                "per-layer shapes, memory, parameters, multiply-adds"),
    "draw": ("protonet.tools.draw_cmd", "draw a net with Graphviz"),
    "run": ("protonet.tools.run_cmd",
            "run an unchanged pycaffe script (`import caffe` loads protonet)"),
    "extract-features": ("protonet.tools.extract_features_cmd",
                         "blobs of a trained net -> LMDB/LevelDB of Datums"),
    "plot": ("protonet.tools.plot_cmd",
             "training curves (HTML/SVG/PNG) and parse_log.py CSV from logs"),
    "zoo": ("protonet.tools.zoo_cmd",
            "list the bundled models; --out DIR writes one, ready to train"),
    "export": ("protonet.tools.export_cmd",
               "net + weights -> ONNX model (--check: compare in onnxruntime)"),
}


def _run_tool(name, argv):
    import importlib
    module_name, help_text = TOOLS[name]
    module = importlib.import_module(module_name)
    # Caffe's spellings for the tool's flags too (-resize_height 32, ...)
    parser = CaffeArgumentParser(prog=f"protonet {name}",
                                 description=help_text, epilog=_SPELLINGS)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 2
    return _guarded(name, module.run, args)


def _guarded(name, fn, args):
    """fn(args) with glog lines on stderr; errors as one line."""
    handler = caffelog.enable(sys.stderr)
    try:
        return fn(args)
    except ProtonetError as e:
        sys.stderr.write(f"protonet {name}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"protonet {name}: interrupted\n")
        return 130
    finally:
        caffelog.disable(handler)


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
    return _guarded(args.command, COMMANDS[args.command], args)


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
