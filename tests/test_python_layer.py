"""The Python layer runs user code only when explicitly allowed; it follows
pycaffe's contract (param_str, setup/reshape/forward/backward on Blobs)."""

import sys
import textwrap

import numpy as np
import pytest

import protonet
from protonet import io
from protonet.errors import LayerError, ProtonetError, SecurityError
from protonet.layers import python_layer

MODULE = textwrap.dedent('''
    import json
    import numpy as np
    import protonet

    IMPORTED = []

    class Scale(protonet.Layer):
        """top = k * bottom, k from param_str; one learnable offset blob."""

        def setup(self, bottom, top):
            self.k = json.loads(self.param_str)["k"]
            self.blobs.add_blob(1)
            self.blobs[0].data[...] = 0.5

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = self.k * bottom[0].data + self.blobs[0].data

        def backward(self, top, propagate_down, bottom):
            self.blobs[0].diff[...] += top[0].diff.sum()
            if propagate_down[0]:
                bottom[0].diff[...] = self.k * top[0].diff

    class Plain:
        def setup(self, bottom, top):
            pass
        def reshape(self, bottom, top):
            top[0].reshape(bottom[0].num, 1)
        def forward(self, bottom, top):
            top[0].data[:, 0] = bottom[0].data.sum(axis=1)
        def backward(self, top, propagate_down, bottom):
            pass

    class Broken(Plain):
        def forward(self, bottom, top):
            raise KeyError("boom")
''')

NET = '''name: "py"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "user" type: "Python" bottom: "data" top: "out"
        python_param {{ module: "{module}" layer: "{layer}"
                        param_str: '{{"k": 3}}' }} }}
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"user_layers_{abs(hash(str(tmp_path))) % 10 ** 8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(python_layer.ENV_VAR, raising=False)
    monkeypatch.setattr(python_layer, "_allowed", None)
    yield name
    sys.modules.pop(name, None)


def _net(module, layer="Scale", **kw):
    return protonet.Net(io.parse_net_text(NET.format(module=module, layer=layer)),
                        phase=protonet.TEST, **kw)


def test_refused_by_default_without_importing(user_module):
    with pytest.raises(SecurityError) as info:
        _net(user_module)
    msg = str(info.value)
    assert "Python layer 'user'" in msg and user_module in msg
    assert "allow_python_layers" in msg and "--allow-python-layer" in msg
    assert "PROTONET_ALLOW_PYTHON_LAYER=1" in msg
    assert isinstance(info.value, LayerError)
    assert user_module not in sys.modules        # nothing was imported


def test_allowed_by_function_runs_pycaffe_contract(user_module):
    protonet.allow_python_layers(True)
    net = _net(user_module)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(data=x)["out"]
    np.testing.assert_allclose(out, 3 * x + 0.5)
    assert net.params["user"][0].data.tolist() == [0.5]
    net.blobs["out"].diff[...] = 1
    net.layers[1].backward(net.top_vecs[1], [True], net.bottom_vecs[1])
    net.layers[1].backward(net.top_vecs[1], [True], net.bottom_vecs[1])
    assert net.params["user"][0].diff.tolist() == [12.0]   # accumulated
    np.testing.assert_allclose(net.blobs["data"].diff, 3.0)
    protonet.allow_python_layers(False)
    with pytest.raises(SecurityError):
        _net(user_module)


def test_allowed_by_env_var_and_scope(user_module, monkeypatch):
    monkeypatch.setenv(python_layer.ENV_VAR, "1")
    net = _net(user_module, layer="Plain")
    out = net.forward(data=np.ones((2, 3), np.float32))["out"]
    assert out.shape == (2, 1) and out.ravel().tolist() == [3.0, 3.0]
    monkeypatch.setenv(python_layer.ENV_VAR, "0")
    with pytest.raises(SecurityError):
        _net(user_module, layer="Plain")
    with python_layer.allowing(True):
        _net(user_module, layer="Plain")
    monkeypatch.setenv(python_layer.ENV_VAR, "1")
    with python_layer.allowing(False), pytest.raises(SecurityError):
        _net(user_module, layer="Plain")


def test_missing_module_names_it(user_module):
    protonet.allow_python_layers(True)
    with pytest.raises(LayerError, match="cannot import Python module "
                       "'no_such_module_xyz'") as info:
        _net("no_such_module_xyz")
    assert isinstance(info.value.__cause__, ImportError)


def test_missing_class_names_it(user_module):
    protonet.allow_python_layers(True)
    with pytest.raises(LayerError, match="has no class 'Nope'"):
        _net(user_module, layer="Nope")


def test_exception_inside_user_layer_names_the_layer(user_module):
    protonet.allow_python_layers(True)
    net = _net(user_module, layer="Broken")
    with pytest.raises(LayerError, match=r"Python layer 'user': Broken.forward"
                       r"\(\) raised KeyError") as info:
        net.forward(data=np.ones((2, 3), np.float32))
    assert isinstance(info.value.__cause__, KeyError)


def test_module_and_layer_required(user_module):
    protonet.allow_python_layers(True)
    with pytest.raises(LayerError, match="python_param.module"):
        _net("", layer="")


def test_loading_a_prototxt_or_caffemodel_never_imports(user_module, tmp_path):
    """Parsing, upgrading and reading weights never touch the module."""
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(module=user_module, layer="Scale"))
    param = io.read_net(str(path))
    assert param.layer[1].python_param.module == user_module
    io.write_caffemodel(str(tmp_path / "w.caffemodel"), param)
    io.read_caffemodel(str(tmp_path / "w.caffemodel"))
    assert user_module not in sys.modules
    with pytest.raises(ProtonetError):
        protonet.Net(str(path), phase=protonet.TEST)
    assert user_module not in sys.modules


def test_no_pickle_in_load_paths():
    """No pickle, eval or exec anywhere in the package's code."""
    import pathlib
    import re
    root = pathlib.Path(protonet.__file__).parent
    bad = re.compile(r"\bpickle\b|allow_pickle\s*=\s*True|\beval\(|\bexec\(|"
                     r"np\.load\((?![^)]*allow_pickle=False)")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            if "proto" not in p.parts
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if bad.search(line) and not line.lstrip().startswith("#")]
    assert hits == []
