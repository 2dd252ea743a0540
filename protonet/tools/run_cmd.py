"""`protonet run script.py [args...]`: run an unchanged pycaffe script.

The script runs in this interpreter as `python script.py args...` would run
it -- `__name__ == "__main__"`, its own folder first on `sys.path`, its
arguments in `sys.argv` -- except that `import caffe` (and `caffe.io`,
`caffe.proto.caffe_pb2`, `from caffe import layers as L`, ...) loads
protonet.  The exit status is the script's: 0 when it ends, the code of
`sys.exit(code)`, and 1 (after Python's usual traceback) when it raises.

Python layers run code a prototxt names, so they stay off unless
`--allow-python-layer` (or PROTONET_ALLOW_PYTHON_LAYER=1) says the nets the
script loads are trusted, as for `protonet train`.
"""

import argparse
import os
import sys
import traceback

from ..errors import ProtonetError


def add_arguments(parser):
    parser.add_argument("--allow-python-layer", action="store_true",
                        help="allow `Python` layers in the nets the script "
                        "builds (they import and run the module the "
                        "prototxt names)")
    parser.add_argument("script", help="the pycaffe script (`import caffe`)")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="arguments passed on to the script (sys.argv[1:])")


def run(args):
    script = args.script
    if not os.path.isfile(script):
        raise ProtonetError(f"cannot open script {script}: "
                            + ("it is a directory" if os.path.isdir(script)
                               else "no such file"))
    if args.allow_python_layer:
        from ..layers.python_layer import allow_python_layers
        allow_python_layers(True)
    from ..pycaffe import install_caffe_alias
    install_caffe_alias(replace=True)
    return run_script(script, list(args.args))


def run_script(script, argv):
    """Run `script` as __main__ with `argv` as its arguments; returns its
    exit status.  sys.argv and sys.path are restored afterwards."""
    import runpy
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script] + argv
    # As `python script.py`: the script's (real) folder replaces the entry
    # of whatever launched us (protonet's console script or `-m`).
    sys.path[0:1] = [os.path.dirname(os.path.realpath(script))]
    try:
        # As Python 3.9+, __main__.__file__ is absolute; argv[0] as given.
        runpy.run_path(os.path.abspath(script), run_name="__main__")
        return 0
    except SystemExit as e:
        return _exit_status(e.code)
    except KeyboardInterrupt:
        raise
    except BaseException:
        _print_script_traceback()
        return 1
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        sys.stdout.flush()


def _exit_status(code):
    """What the interpreter makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def _print_script_traceback():
    """Python's traceback for the script's exception, without the frames of
    this runner and runpy (the script's own frames start the listing)."""
    etype, value, tb = sys.exc_info()
    runner = {os.path.abspath(__file__)}
    while tb is not None and (os.path.abspath(tb.tb_frame.f_code.co_filename)
                              in runner or
                              tb.tb_frame.f_globals.get("__name__") == "runpy"):
        tb = tb.tb_next
    traceback.print_exception(etype, value, tb)
