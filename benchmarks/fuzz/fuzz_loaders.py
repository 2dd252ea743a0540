"""Coverage-guided fuzzing of protonet's loaders with atheris (libFuzzer).

Targets, chosen by the first input byte:
  0  prototxt text -> NetParameter (parse + legacy upgrade) -> Net(...)
  1  bytes -> .caffemodel loader -> Net.copy_from into the net it belongs to
  2  prototxt text -> SolverParameter (parse + upgrade)
  3  V0/V1 legacy text -> upgrade_net
  4  bytes -> .solverstate / .binaryproto readers

Any exception outside the ProtonetError hierarchy is a bug.  By default the
harness records each distinct bug (type + innermost protonet frame) in
`findings.txt` and keeps going, so one run lists them all; `--crash` makes
the first bug abort the run as libFuzzer usually does.

Run (10 minutes, seed corpus built from the golden files on first use):

    python benchmarks/fuzz/fuzz_loaders.py -max_total_time=600 \
        -max_len=65536 -rss_limit_mb=4096 benchmarks/fuzz/corpus

Without atheris installed, the same targets run under a long hypothesis
campaign: `python benchmarks/fuzz/fuzz_loaders.py --hypothesis 600`.
"""

import glob
import os
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
os.environ.setdefault("PROTONET_MAX_MEMORY", "256M")
warnings.simplefilter("ignore")

CRASH = "--crash" in sys.argv
if CRASH:
    sys.argv.remove("--crash")
FINDINGS = os.path.join(HERE, "findings.txt")
_seen = {}
_stats = {"inputs": 0, "start": time.time()}
_tmp = tempfile.mkdtemp(prefix="protonet-fuzz-")
_LENET = os.path.join(FIXTURES, "caffe_ref", "nets", "inception_tiny",
                      "net.prototxt")


def _import_targets():
    global protonet, io, upgrade, ProtonetError, caffe_pb2, _net
    import protonet
    from protonet import io, upgrade
    from protonet.errors import ProtonetError
    from protonet.proto import caffe_pb2
    _net = protonet.Net(_LENET, phase=protonet.TEST)


def _record(exc, data):
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in tb if "protonet" in f.filename and
              "fuzz_loaders" not in f.filename] or tb
    where = f"{os.path.relpath(frames[-1].filename, ROOT)}:{frames[-1].lineno}"
    key = (type(exc).__name__, where)
    if key in _seen:
        return
    _seen[key] = data
    with open(FINDINGS, "a") as f:
        f.write(f"== {key[0]} at {where}: {str(exc)[:300]!r}\n"
                f"   input ({len(data)} bytes): {data[:200]!r}\n")
    if CRASH:
        raise exc


def run_one(data):
    """Feed one input to the target its first byte selects."""
    if not data:
        return
    target, body = data[0] % 5, data[1:]
    text = body.decode("utf-8", "replace")
    if target == 0:
        param = io.parse_net_text(text, "<fuzz>")
        if len(param.layer) <= 12:
            protonet.Net(param, phase=param.state.phase
                         if param.state.HasField("phase") else protonet.TEST)
    elif target == 1:
        path = os.path.join(_tmp, "w.caffemodel")
        with open(path, "wb") as f:
            f.write(body)
        _net.copy_from(path)
    elif target == 2:
        io.parse_solver_text(text, "<fuzz>")
    elif target == 3:
        param = io.parse_net_text(text, "<fuzz>", upgrade=False)
        upgrade.upgrade_net(param, "<fuzz>")
    else:
        path = os.path.join(_tmp, "s.bin")
        with open(path, "wb") as f:
            f.write(body)
        for reader in (io.read_solverstate, io.read_binaryproto):
            try:
                reader(path)
            except ProtonetError:
                pass


def test_one_input(data):
    _stats["inputs"] += 1
    try:
        run_one(bytes(data))
    except ProtonetError:
        pass
    except RecursionError:
        pass     # the protobuf C parser's own depth guard; reported as ParseError
    except Exception as e:  # noqa: BLE001 - every other exception is a bug
        _record(e, bytes(data))


def build_seed_corpus(folder):
    """Golden caffemodels and prototxts, each prefixed by its target byte."""
    os.makedirs(folder, exist_ok=True)
    if os.listdir(folder):
        return
    seeds = []
    for p in sorted(glob.glob(os.path.join(FIXTURES, "caffe_ref", "**",
                                           "*.prototxt"), recursive=True))[:60]:
        seeds.append(b"\x00" + open(p, "rb").read())
    for p in sorted(glob.glob(os.path.join(FIXTURES, "corpus", "**",
                                           "*solver*.prototxt"), recursive=True))[:20]:
        seeds.append(b"\x02" + open(p, "rb").read())
    for p in sorted(glob.glob(os.path.join(FIXTURES, "corpus", "**",
                                           "*.prototxt"), recursive=True))[:40]:
        data = open(p, "rb").read()
        if b"layers {" in data:
            seeds.append(b"\x03" + data)
    seeds.append(b"\x01" + open(os.path.join(
        FIXTURES, "caffe_ref", "nets", "inception_tiny", "weights.caffemodel"),
        "rb").read())
    for p in sorted(glob.glob(os.path.join(FIXTURES, "caffe_ref", "train", "*",
                                           "*.solverstate")))[:5]:
        seeds.append(b"\x04" + open(p, "rb").read())
    for i, s in enumerate(seeds):
        with open(os.path.join(folder, f"seed{i:03d}"), "wb") as f:
            f.write(s)


def _summary():
    dt = time.time() - _stats["start"]
    print(f"\nprotonet fuzz: {_stats['inputs']} inputs in {dt:.0f} s, "
          f"{len(_seen)} distinct non-ProtonetError exception(s)"
          + (f" (see {FINDINGS})" if _seen else ""), file=sys.stderr)


def _hypothesis_campaign(seconds):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    deadline = time.time() + seconds

    @settings(max_examples=10 ** 9, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=4096))
    def campaign(data):
        if time.time() > deadline:
            raise KeyboardInterrupt
        test_one_input(data)
    try:
        campaign()
    except KeyboardInterrupt:
        pass


def main():
    import atexit
    atexit.register(_summary)
    if "--hypothesis" in sys.argv:
        _import_targets()
        _hypothesis_campaign(float(sys.argv[sys.argv.index("--hypothesis") + 1]))
        return
    import atheris
    for arg in sys.argv[1:]:
        if not arg.startswith("-"):
            build_seed_corpus(arg)
    with atheris.instrument_imports(include=["protonet"]):
        _import_targets()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
