"""Unmodified pycaffe scripts (`import caffe`) run on protonet after
`protonet.install_caffe_alias()`, each in a fresh interpreter."""

import json
import os
import subprocess
import sys

import pytest

import protonet
from protonet.errors import ProtonetError

SCRIPTS = os.path.join(os.path.dirname(__file__), "fixtures", "pycaffe_scripts")

# The only protonet-specific line: everything after it is the script's own.
LAUNCH = ("import protonet, runpy, sys; protonet.install_caffe_alias(); "
          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
          "run_name='__main__')")


def run_script(path, *args, cwd=None):
    env = dict(os.environ)
    env.pop("PROTONET_ALLOW_PYTHON_LAYER", None)
    proc = subprocess.run([sys.executable, "-c", LAUNCH, path, *args],
                          capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_learning_lenet_script(tmp_path):
    out = run_script(os.path.join(SCRIPTS, "learn_lenet.py"), str(tmp_path))
    result = json.loads(out.strip().splitlines()[-1][len("RESULT "):])
    assert result["caffe_module"] == "protonet"
    # The Data layer reads the LMDB in key order: digits 0, 1, 2, ...
    assert result["first_labels"] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert result["iter"] == 120
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["test_acc"][-1] > 0.8
    assert result["deploy_acc"] >= 0.8
    for name in ("lenet_auto_train.prototxt", "lenet_auto_solver.prototxt",
                 "lenet_deploy.prototxt", result["weights"],
                 "lenet_iter_120.solverstate"):
        assert (tmp_path / name).is_file()


IMPORTS = """
import caffe
import caffe.io
import caffe.draw
from caffe.proto import caffe_pb2
from caffe import layers as L, params as P
from caffe.coord_map import coord_map_from_to, crop
from caffe.net_spec import NetSpec, to_proto
from caffe.pycaffe import Net, SGDSolver
from caffe.classifier import Classifier
from caffe.detector import Detector
import caffe.proto.caffe_pb2 as pb2

assert caffe.Net is Net and caffe.SGDSolver is SGDSolver
assert pb2 is caffe_pb2 and caffe.proto.caffe_pb2 is caffe_pb2
assert caffe.io.Transformer and caffe.Classifier is Classifier
assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
n = NetSpec()
n.data = L.Input(shape=dict(dim=[1, 2, 3]))
assert 'Input' in str(n.to_proto())
print('imports ok', caffe.__name__, caffe.has_nccl())
"""


def test_pycaffe_import_forms(tmp_path):
    script = tmp_path / "imports.py"
    script.write_text(IMPORTS)
    assert run_script(str(script)).strip() == "imports ok protonet False"


def test_alias_refuses_to_shadow_another_caffe(monkeypatch):
    import types
    monkeypatch.setitem(sys.modules, "caffe", types.ModuleType("caffe"))
    with pytest.raises(ProtonetError, match="replace=True"):
        protonet.install_caffe_alias()
    before = set(sys.modules)
    try:
        assert protonet.install_caffe_alias(replace=True) is protonet
        assert sys.modules["caffe.io"] is protonet.io
        assert sys.modules["caffe"] is protonet
    finally:                    # leave no alias behind for other tests
        for name in set(sys.modules) - before:
            del sys.modules[name]
