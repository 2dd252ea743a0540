"""pycaffe's Python layer tests (test_python_layer.py and
test_python_layer_with_param_str.py), run on protonet.

The user layers live in a module written to tmp_path and put on sys.path,
as a model's own layer module would be; Python layers are allowed through
$PROTONET_ALLOW_PYTHON_LAYER, as an unmodified script would run.
"""

import textwrap

import numpy as np
import pytest

import protonet as caffe
from protonet.errors import LayerError

LAYERS = '''
import protonet as caffe


class TimesTen(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class Scaled(caffe.Layer):
    """Multiplies by the number in param_str."""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("param_str must be a number")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


class Counter(caffe.Layer):
    """A data layer: 0, 1, 2, ... in batches of 6, wrapping at 50."""

    def setup(self, bottom, top):
        top[0].reshape(6)
        self.next = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = [i % 50 for i in range(self.next, self.next + 6)]
        self.next = (self.next + 6) % 50

    def backward(self, top, propagate_down, bottom):
        pass


class WithParam(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class Phase(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class Broken(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("broken on purpose")
'''


def python_layer(name, cls, bottom=None, top=None, param_str=None):
    text = f"layer {{ type: 'Python' name: '{name}' top: '{top or name}' "
    if bottom:
        text += f"bottom: '{bottom}' "
    text += f"python_param {{ module: 'compat_layers' layer: '{cls}' "
    if param_str is not None:
        text += f"param_str: '{param_str}' "
    return text + "} }\n"


@pytest.fixture
def write_net(tmp_path, monkeypatch):
    (tmp_path / "compat_layers.py").write_text(LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PROTONET_ALLOW_PYTHON_LAYER", "1")

    def write(body, name="net.prototxt"):
        path = tmp_path / name
        path.write_text("name: 'pythonnet' force_backward: true\n"
                        + textwrap.dedent(body))
        return str(path)
    return write


CHAIN = ("input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
         + python_layer("one", "TimesTen", "data")
         + python_layer("two", "TimesTen", "one")
         + python_layer("three", "TimesTen", "two"))


def test_python_layer_type_is_registered():
    assert "Python" in caffe.layer_type_list()


def test_chain_forward_backward_reshape(write_net):
    net = caffe.Net(write_net(CHAIN), caffe.TRAIN)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["three"].data == 8000)
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 7000)
    net.blobs["data"].reshape(4, 4, 4, 4)
    net.forward()
    for blob in net.blobs.values():
        assert blob.data.shape == (4, 4, 4, 4)


def test_param_str(write_net):
    body = ("input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
            + python_layer("mul10", "Scaled", "data", param_str="10")
            + python_layer("mul2", "Scaled", "mul10", param_str="2"))
    net = caffe.Net(write_net(body), caffe.TRAIN)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["mul2"].data == 160)
    net.blobs["mul2"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 140)


def test_data_layer_keeps_state_between_forwards(write_net):
    net = caffe.Net(write_net(python_layer("counter", "Counter")), caffe.TRAIN)
    for it in range(20):
        net.forward()
        start = (it * 6) % 50
        expected = [i % 50 for i in range(start, start + 6)]
        assert np.array_equal(net.blobs["counter"].data, expected)


def test_layer_parameters_save_load_and_share(write_net, tmp_path):
    path = write_net("input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
                     + python_layer("layer", "WithParam", "data", "top"))
    net = caffe.Net(path, caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0 and layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert net.params["layer"][0].data[0] == 1
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    layer.blobs[0].data[0] = -1
    net.copy_from(weights)
    assert layer.blobs[0].data[0] == 1
    other = caffe.Net(path, caffe.TRAIN)
    other.share_with(net)
    assert other.layers[list(other._layer_names).index("layer")] \
        .blobs[0].data[0] == 1


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_layer_sees_the_phase(write_net, phase):
    net = caffe.Net(write_net(python_layer("layer", "Phase", top="phase")),
                    phase)
    assert net.forward()["phase"] == phase


def test_exception_in_setup_reaches_the_caller(write_net):
    path = write_net("input: 'data' input_shape { dim: 2 }\n"
                     + python_layer("layer", "Broken", "data", "top"))
    # pycaffe's test expects a RuntimeError; protonet's LayerError is one,
    # and keeps the user's exception as its cause.
    with pytest.raises(RuntimeError, match="broken on purpose") as info:
        caffe.Net(path, caffe.TEST)
    assert isinstance(info.value, LayerError)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_python_layer_refused_unless_allowed(write_net, monkeypatch):
    path = write_net(CHAIN)
    monkeypatch.delenv("PROTONET_ALLOW_PYTHON_LAYER")
    monkeypatch.setattr("protonet.layers.python_layer._allowed", None)
    with pytest.raises(caffe.ProtonetError, match="PROTONET_ALLOW_PYTHON_LAYER"):
        caffe.Net(path, caffe.TRAIN)
