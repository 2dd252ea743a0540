"""`protonet.onnx`: the ONNX exporter under a short name (see
protonet.onnx_export).  Inside protonet, `import onnx` still means the onnx
package: this module is only reached as `protonet.onnx`."""

from __future__ import annotations

from .onnx_export import (DEFAULT_OPSET, NotExportable, build_model,  # noqa: F401
                          export, supported_types, validate)
