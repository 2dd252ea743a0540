"""Export protonet nets to ONNX (needs the optional `onnx` package:
`pip install protonet[onnx]`).

    import protonet
    import protonet.onnx
    net = protonet.Net("deploy.prototxt", weights="w.caffemodel", phase=protonet.TEST)
    protonet.onnx.export(net, "model.onnx")              # or protonet.onnx_export

`protonet export NET WEIGHTS OUT.onnx [--check]` is the command-line form.
Every converter keeps Caffe's arithmetic exactly; a layer without an exact
ONNX form raises a ProtonetError naming it.
"""

from __future__ import annotations

from .exporter import DEFAULT_OPSET, build_model, export, validate  # noqa: F401
from .graph import CONVERTERS, NotExportable  # noqa: F401


def supported_types():
    """The Caffe layer types with an ONNX form (plus Input)."""
    return sorted(set(CONVERTERS) | {"Input"})
