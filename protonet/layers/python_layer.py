"""The Python layer: a layer whose code lives in a user's Python module.

Mirrors: include/caffe/layers/python_layer.hpp and pycaffe's `caffe.Layer`.

Loading a prototxt or a caffemodel never runs user code by default: a
`Python` layer imports its module only when Python layers were allowed by
`protonet.allow_python_layers(True)`, a `with allowing(True):` block
around the Net construction, the CLI flag `--allow-python-layer`, or the environment variable
``PROTONET_ALLOW_PYTHON_LAYER=1``.  Otherwise building the net raises
`SecurityError` (a LayerError) naming the layer and the module, before any
import.
"""

import contextlib
import contextvars
import importlib
import importlib.util
import os
import sys

import numpy as np

from .. import envvars
from ..blob import Blob
from ..errors import LayerError, ProtonetError, SecurityError
from ..layer import Layer, register

ENV_VAR = "PROTONET_ALLOW_PYTHON_LAYER"
_allowed = None                                    # process-wide switch
_scoped = contextvars.ContextVar("protonet_allow_python_layer", default=None)


def allow_python_layers(flag=True):
    """Allow (or forbid again) Python layers in every net built from now on.

    Python layers import and run the module a prototxt names: allow them only
    for model files you trust.
    """
    global _allowed
    _allowed = bool(flag)


@contextlib.contextmanager
def allowing(flag):
    """Allow/forbid Python layers inside the block (None: keep the default)."""
    if flag is None:
        yield
        return
    token = _scoped.set(bool(flag))
    try:
        yield
    finally:
        _scoped.reset(token)


def python_layers_allowed():
    """The switch in force: Net keyword, else allow_python_layers(), else
    $PROTONET_ALLOW_PYTHON_LAYER (1/true/yes/on)."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _allowed is not None:
        return _allowed
    return envvars.flag(ENV_VAR, False)


def _expose_caffe():
    """Let the layer's module `import caffe` and get protonet, as it would
    get pycaffe under Caffe.  A different `caffe` the process imported on
    purpose is left alone."""
    current = sys.modules.get("caffe")
    if current is None or getattr(current, "__name__", "") == "protonet":
        from ..pycaffe import install_caffe_alias
        install_caffe_alias()


def _missing_is_the_module(err, module):
    """True when the ImportError is about `module` itself (or a package
    above it), not about something the module imports."""
    missing = getattr(err, "name", None)
    return missing is not None and (module == missing or
                                    module.startswith(missing + "."))


def _import_layer_module(layer, module, class_name):
    """Import python_param.module for `layer`, with errors that say which
    module is missing: the layer's own, or one it imports."""
    _expose_caffe()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and \
                _missing_is_the_module(e, module):
            path = os.pathsep.join(p or "." for p in sys.path)
            raise LayerError(
                layer, f"cannot import Python module '{module}' "
                f"(python_param.module) for class '{class_name}': no module "
                f"named '{e.name}' on the search path {path}. The module "
                "ships with the model's own code, not with protonet: add "
                "its folder to PYTHONPATH") from e
        raise LayerError(layer, f"importing Python module '{module}' "
                         f"({_origin(module)}) failed: {type(e).__name__}: "
                         f"{e}") from e
    except Exception as e:          # the module's own top-level code failed
        raise LayerError(layer, f"importing Python module '{module}' "
                         f"({_origin(module)}) failed: "
                         f"{type(e).__name__}: {e}") from e


def _origin(module):
    """The file a module would be loaded from, for error messages."""
    try:
        spec = importlib.util.find_spec(module)
    except Exception:       # a parent package failed to import
        spec = None
    return getattr(spec, "origin", None) or "location unknown"


class BlobVec(list):
    """pycaffe's `self.blobs` of a Python layer: a list with add_blob."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def add_blob(self, *shape):
        self.append(Blob(tuple(shape), self.dtype))
        return self[-1]


@register("Python", v1="PYTHON")
class PythonLayer(Layer):
    """Runs the class `python_param.layer` from the module `python_param.module`.

    As pycaffe: the class (a `protonet.Layer` subclass, or any class with the
    four methods) gets `param_str` (python_param.param_str), `phase` (TRAIN 0
    / TEST 1) and a `blobs` list with `add_blob(*shape)`, then receives
    setup(bottom, top), reshape(bottom, top), forward(bottom, top) and
    backward(top, propagate_down, bottom) with protonet Blobs (data, diff,
    reshape(*shape), shape, count, num/channels/height/width work as pycaffe's).

    Shape: whatever the user's reshape sets.  Supports python_param.{module,
    layer, param_str}; share_in_parallel is irrelevant on one CPU.

    The module sees `caffe` as protonet (`import caffe`, `from caffe import
    Layer`, ...), as it would see pycaffe under Caffe.

    Errors: not allowed -> SecurityError naming the layer, module and switch;
    a module that is not on the search path (e.g. py-faster-rcnn's
    `roi_data_layer.layer`, which ships with the model's code, not protonet)
    -> LayerError naming it and sys.path; a module whose own imports or code
    fail -> LayerError naming its file and the error; a missing class ->
    LayerError naming it; an exception inside the user's code -> LayerError
    naming the layer and method, the original as __cause__.
    """

    def __init__(self, param, dtype=np.float32):
        super().__init__(param, dtype)
        p = param.python_param
        if not p.module or not p.layer:
            raise LayerError(self, "python_param.module and python_param.layer "
                             f"are both required (got module={p.module!r}, "
                             f"layer={p.layer!r})")
        if not python_layers_allowed():
            raise SecurityError(
                self, f"would import and run Python code (module "
                f"'{p.module}', class '{p.layer}'); Python layers are off by "
                "default because a model file must not run code. If you trust "
                "this model, allow them with protonet.allow_python_layers(True),"
                " the CLI flag "
                f"--allow-python-layer, or {ENV_VAR}=1")
        module = _import_layer_module(self, p.module, p.layer)
        cls = getattr(module, p.layer, None)
        if not isinstance(cls, type):
            raise LayerError(self, f"Python module '{p.module}' has no class "
                             f"'{p.layer}' (python_param.layer)")
        try:
            if issubclass(cls, Layer):
                self.impl = cls(param, dtype=self.dtype)
            else:
                self.impl = cls()
        except Exception as e:
            raise LayerError(self, f"constructing {p.module}.{p.layer} failed: "
                             f"{type(e).__name__}: {e}") from e
        self.impl.param_str = p.param_str
        self.impl.phase = self.phase
        self.blobs = self.impl.blobs = BlobVec(self.dtype)

    def _call(self, method, *args):
        fn = getattr(self.impl, method, None)
        if fn is None:
            raise LayerError(self, f"{type(self.impl).__name__} has no "
                             f"{method}() method")
        try:
            return fn(*args)
        except ProtonetError:
            raise
        except Exception as e:
            raise LayerError(self, f"{type(self.impl).__name__}.{method}() "
                             f"raised {type(e).__name__}: {e}") from e

    def setup(self, bottom, top):
        self._call("setup", bottom, top)

    def reshape(self, bottom, top):
        self._call("reshape", bottom, top)

    def forward(self, bottom, top):
        self._call("forward", bottom, top)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", top, list(propagate_down), bottom)
