"""The one exception hierarchy for every user-caused failure.

Everything a user can cause -- a malformed file, an unknown layer type, shapes
that do not fit, an unsupported field -- raises a subclass of `ProtonetError`
whose message names the file and position, or the layer and field, what was
expected and what was found.
"""


class ProtonetError(RuntimeError):
    """Root of every error protonet raises for bad input.

    A RuntimeError, as pycaffe turns every Caffe failure into one, so scripts
    written for pycaffe (`except RuntimeError`) catch protonet's errors too.
    """


class ParseError(ProtonetError):
    """A text or binary model/solver file could not be read.

    Attributes:
        path: the file (or '<string>'), line and column (1-based, None when
            unknown, e.g. for binary files).
    """

    def __init__(self, message, path=None, line=None, column=None):
        self.path, self.line, self.column = path, line, column
        where = path or "<string>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class UpgradeError(ProtonetError):
    """A legacy (V0/V1) definition could not be upgraded."""


class NetError(ProtonetError):
    """The net's structure is invalid (dangling bottoms, duplicate tops, ...)."""


class LayerError(ProtonetError):
    """A layer rejected its parameters or its bottom shapes.

    The message always starts with the layer's type and name.
    """

    def __init__(self, layer, message):
        name = getattr(layer, "name", None)
        kind = getattr(layer, "type", None)
        if name is not None:
            message = f"{kind} layer '{name}': {message}"
        super().__init__(message)


class UnsupportedError(LayerError):
    """A field or value that protonet does not implement."""


class WeightsError(ProtonetError):
    """Weights (caffemodel / HDF5) do not fit the net."""


class SolverError(ProtonetError):
    """A solver definition or solver state is invalid."""


class OutputError(ProtonetError):
    """A file cannot be written where asked (missing or read-only folder, a
    directory given as the file, a full disk); the message names the path."""


class DataError(ProtonetError):
    """A data source (database, list file, image, HDF5 file) is unusable."""


class ResourceError(ProtonetError):
    """A net or file would need more memory than allowed."""


class NumericalError(ProtonetError):
    """Training produced NaN or Inf."""


class SecurityError(LayerError):
    """A file asked to run code (a Python layer) that was not allowed."""
