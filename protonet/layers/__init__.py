"""Built-in layers, one module per family; importing this registers them all."""

from . import (  # noqa: F401
    affine,
    conv,
    common,
    data,
    db_data,
    detection,
    detection_loss,
    fork,
    fork_resample,
    indexing,
    loss,
    neuron,
    normalization,
    recurrent,
    shape,
    vision,
)
