"""Built-in layers, one module per family; importing this registers them all.

The package doubles as pycaffe's NetSpec `layers` object, so
`from protonet import layers as L; L.Convolution(n.data, ...)` works: any
attribute that is not a submodule is a NetSpec layer function.
"""

from . import (  # noqa: F401
    affine,
    conv,
    common,
    data,
    db_data,
    detection,
    detection_loss,
    fork,
    fork_extra,
    fork_resample,
    indexing,
    loss,
    neuron,
    normalization,
    python_layer,
    recurrent,
    shape,
    vision,
    window_data,
)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    from ..netspec import layers as _netspec_layers
    return getattr(_netspec_layers, name)
