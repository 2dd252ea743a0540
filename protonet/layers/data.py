"""Data layers: Input (and, with the data-layers work, the database readers)."""

from ..errors import LayerError
from ..layer import Layer, register


@register("Input")
class InputLayer(Layer):
    """Tops whose data the user fills in (net inputs).

    `input_param.shape` gives one shape for every top or one per top; with no
    shape the tops stay empty until reshaped by the user.

    Mirrors: src/caffe/layers/input_layer.cpp.
    """

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise LayerError(self, f"input_param must give 0, 1 or {len(top)} "
                             f"shapes (one per top), got {len(shapes)}")
        for i, t in enumerate(top):
            if shapes:
                dims = tuple(shapes[0 if len(shapes) == 1 else i].dim)
                if any(d < 0 for d in dims):
                    raise LayerError(self, f"negative dimension in input "
                                     f"shape {dims}")
                t.reshape(dims)

    def reshape(self, bottom, top):
        """Input shapes change only when the user reshapes the tops."""

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
