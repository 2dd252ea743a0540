"""Python layer modules and whole scripts written for pycaffe see `caffe`
as protonet: the Python layer loader, `protonet train`, `protonet run`."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import protonet
from protonet.errors import LayerError
from protonet.layers import python_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "fixtures", "pycaffe_scripts")

# pycaffe's examples/pycaffe/linreg.prototxt, in outline: a linear
# regression whose loss is the Python layer of pyloss.py.
LINREG = """
name: "linreg"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 2 } shape { dim: 10 dim: 3 dim: 2 }
    data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ipx" type: "InnerProduct" bottom: "x" top: "ipx"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "ipy" type: "InnerProduct" bottom: "y" top: "ipy"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "Python" bottom: "ipx" bottom: "ipy" top: "loss"
  python_param { module: "pyloss" layer: "EuclideanLossLayer" }
  loss_weight: 1 }
"""


@pytest.fixture
def clean_caffe_alias():
    """Remove the `caffe` alias (and test modules) a test put in sys.modules."""
    before = set(sys.modules)
    saved_path = sys.path[:]
    yield
    sys.path[:] = saved_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _env(extra_path=None):
    env = dict(os.environ)
    env.pop("PROTONET_ALLOW_PYTHON_LAYER", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, ROOT) if p)
    return env


def _python_layer_net(tmp_path, module, layer):
    path = tmp_path / "net.prototxt"
    path.write_text(f"""
force_backward: true
input: "a" input_shape {{ dim: 4 dim: 3 }}
input: "b" input_shape {{ dim: 4 dim: 3 }}
layer {{ name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss"
  python_param {{ module: "{module}" layer: "{layer}" }} loss_weight: 1 }}
""")
    with python_layer.allowing(True):
        return protonet.Net(str(path), protonet.TRAIN)


def test_python_layer_module_can_import_caffe(tmp_path, clean_caffe_alias):
    sys.modules.pop("caffe", None)
    sys.path.insert(0, SCRIPTS)
    net = _python_layer_net(tmp_path, "pyloss", "EuclideanLossLayer")
    assert sys.modules["caffe"] is protonet
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = net.forward(a=a, b=np.zeros_like(a))
    assert out["loss"] == pytest.approx((a ** 2).sum() / 4 / 2)
    net.backward()
    np.testing.assert_allclose(net.blobs["a"].diff, a / 4)


def test_missing_module_names_it_and_the_search_path(tmp_path,
                                                     clean_caffe_alias):
    sys.path.insert(0, str(tmp_path / "models_here"))
    with pytest.raises(LayerError) as info:
        _python_layer_net(tmp_path, "no_such_layer_mod", "L")
    msg = str(info.value)
    assert "no module named 'no_such_layer_mod'" in msg
    assert str(tmp_path / "models_here") in msg        # the search path
    assert isinstance(info.value.__cause__, ImportError)


def test_a_failing_import_inside_the_module_is_not_blamed_on_the_path(
        tmp_path, clean_caffe_alias):
    (tmp_path / "needs_dep_layer.py").write_text(
        "import caffe\nimport no_such_dependency_xyz\n")
    sys.path.insert(0, str(tmp_path))
    with pytest.raises(LayerError) as info:
        _python_layer_net(tmp_path, "needs_dep_layer", "L")
    msg = str(info.value)
    assert "needs_dep_layer" in msg and "no_such_dependency_xyz" in msg
    assert str(tmp_path / "needs_dep_layer.py") in msg
    assert "PYTHONPATH" not in msg


def test_protonet_train_runs_a_python_loss_that_imports_caffe(tmp_path):
    (tmp_path / "linreg.prototxt").write_text(LINREG)
    (tmp_path / "solver.prototxt").write_text(
        'net: "linreg.prototxt" base_lr: 0.01 lr_policy: "fixed" '
        'max_iter: 3 display: 1 snapshot_prefix: "linreg" random_seed: 1')
    proc = subprocess.run(
        [sys.executable, "-m", "protonet.cli", "train",
         "--solver=solver.prototxt", "--allow-python-layer"],
        cwd=tmp_path, env=_env(SCRIPTS), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Iteration 2" in proc.stderr and "loss = " in proc.stderr
    assert (tmp_path / "linreg_iter_3.caffemodel").is_file()


RUN_SCRIPT = """
import sys
import caffe
import caffe.io, caffe.draw, caffe.coord_map, caffe.classifier, caffe.detector
from caffe.proto import caffe_pb2
from caffe import layers as L, params as P
from caffe.net_spec import NetSpec
import sibling                       # next to the script

n = NetSpec()
n.data = L.Input(shape=dict(dim=[1, 2, 4, 4]))
n.pool = L.Pooling(n.data, kernel_size=2, stride=2, pool=P.Pooling.MAX)
import os
print(__name__, caffe.__name__, caffe_pb2.__name__, caffe.io.Transformer.__name__,
      sibling.WHO, sys.argv[1:], len(n.to_proto().layer), os.path.isabs(__file__))
sys.exit(int(sys.argv[1]))
"""


def _protonet_run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "protonet.cli", "run", *args],
                          cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=120)


def test_protonet_run_runs_an_unchanged_script(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "sibling.py").write_text("WHO = 'sibling'\n")
    (folder / "main.py").write_text(RUN_SCRIPT)
    proc = _protonet_run(str(folder / "main.py"), "3", "--flag", "-h",
                         cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.split() == [
        "__main__", "protonet", "protonet.proto.caffe_pb2", "Transformer",
        "sibling", "['3',", "'--flag',", "'-h']", "2", "True"]


def test_protonet_run_reports_the_scripts_failure(tmp_path):
    (tmp_path / "fails.py").write_text(textwrap.dedent("""
        import caffe
        def inner():
            raise ValueError('broken on purpose')
        inner()
        """))
    proc = _protonet_run("fails.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert "fails.py\", line 5" in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: broken on purpose")
    assert "runpy" not in proc.stderr
    (tmp_path / "ok.py").write_text("import caffe\n")
    assert _protonet_run("ok.py", cwd=tmp_path).returncode == 0
    (tmp_path / "msg.py").write_text("import sys\nsys.exit('giving up')\n")
    proc = _protonet_run("msg.py", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip() == "giving up"
    proc = _protonet_run("missing.py", cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot open script missing.py: no such file" in proc.stderr


def test_protonet_run_keeps_python_layers_off_unless_allowed(tmp_path):
    (tmp_path / "linreg.prototxt").write_text(LINREG)
    script = tmp_path / "linreg.py"
    script.write_text("import caffe\n"
                      "net = caffe.Net('linreg.prototxt', caffe.TRAIN)\n"
                      "print(float(net.forward()['loss'][0]) > 0)\n")
    # pyloss.py sits next to the script, as in a model's own folder.
    (tmp_path / "pyloss.py").write_text(
        open(os.path.join(SCRIPTS, "pyloss.py")).read())
    proc = _protonet_run("linreg.py", cwd=tmp_path)
    assert proc.returncode == 1 and "--allow-python-layer" in proc.stderr
    proc = _protonet_run("--allow-python-layer", "linreg.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
