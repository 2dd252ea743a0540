"""NetSpec: write Caffe nets in Python (pycaffe's `caffe.net_spec`).

    from protonet import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 28, 28]))
    n.conv1 = L.Convolution(n.data, num_output=20, kernel_size=5,
                            weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    print(n.to_proto())

Keyword arguments go to the layer's own `<type>_param` message (e.g.
`num_output` to `convolution_param`); keywords ending in `param` (such as
`param=[dict(lr_mult=1)]`, `loss_param=dict(...)`, `transform_param=...`)
and LayerParameter fields (`loss_weight`, `include`, `propagate_down`) go to
the layer itself.  `ntop=k` asks for k tops; `in_place=True` reuses the bottom
as top.  Names come from the NetSpec attribute names; unnamed tops get
`<Type><n>` names, as in pycaffe.
"""

import collections

from .errors import ProtonetError
from .proto import caffe_pb2


def _param_names():
    """Layer type -> prefix of its `<prefix>_param` field (pycaffe's rule:
    the message type name without 'Parameter')."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name[:-len("Parameter")]
            names.setdefault(type_name, field.name[:-len("_param")])
    # Layers that read another layer's parameter message.
    names.update(Deconvolution="convolution", Im2col="convolution",
                 SoftmaxWithLoss="softmax", RNN="recurrent", LSTM="recurrent",
                 ConvolutionDepthwise="convolution",
                 DepthwiseConvolution="convolution")
    return names


_PARAM_NAMES = _param_names()


def assign_proto(proto, name, val, where=""):
    """Set field `name` of `proto` from a Python value (dicts become
    sub-messages, lists repeated fields)."""
    if not hasattr(proto, name) or name not in proto.DESCRIPTOR.fields_by_name:
        raise ProtonetError(f"{where}{type(proto).__name__} has no field "
                            f"'{name}'")
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(val, (list, tuple)):
        val = [val]
    try:
        if isinstance(val, (list, tuple)):
            if val and isinstance(val[0], dict):
                for item in val:
                    sub = field.add()
                    for k, v in item.items():
                        assign_proto(sub, k, v, where)
            else:
                field.extend(val)
        elif isinstance(val, dict):
            for k, v in val.items():
                assign_proto(field, k, v, where)
        else:
            setattr(proto, name, val)
    except (TypeError, ValueError) as e:
        raise ProtonetError(f"{where}field '{name}' of "
                            f"{type(proto).__name__}: {e}") from None


class NetSpecTypeError(ProtonetError, TypeError):
    """A layer function got a bottom that is not a Top (a TypeError, as in
    pycaffe's net_spec)."""


class Top:
    """One output of a layer function; usable as another layer's bottom."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def to_proto(self):
        return to_proto(self)

    def _update(self, params):
        self.fn.params.update(params)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer call recorded by `layers.<Type>(*bottoms, **params)`."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                # pycaffe's exact message: scripts and tests match it.
                raise NetSpecTypeError(f"{type_name} input {i} is not a Top "
                                       f"(type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        where = f"{self.type_name} layer '{layer.name}': "
        prefix = _PARAM_NAMES.get(self.type_name)
        for k, v in self.params.items():
            if k.endswith("param") or k in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
                assign_proto(layer, k, v, where)
            elif prefix is not None:
                assign_proto(getattr(layer, prefix + "_param"), k, v, where)
            else:
                raise ProtonetError(f"{where}unknown parameter '{k}' (this "
                                    "layer type has no parameter message)")
        layers[self] = layer


def to_proto(*tops):
    """A NetParameter holding the layers needed to compute `tops`."""
    layers = collections.OrderedDict()
    autonames = collections.Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """An ordered set of named tops; `to_proto()` writes the net."""

    def __init__(self):
        super().__setattr__("tops", collections.OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    __setitem__ = __setattr__

    def __getitem__(self, name):
        return self.tops[name]

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def update(self, name, params):
        """Merge `params` into the keyword arguments of the layer whose top
        is `name` (pycaffe's NetSpec.update)."""
        self.tops[name]._update(params)

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = collections.Counter()
        layers = collections.OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`layers.Convolution(bottom, num_output=...)` records a layer call."""

    def __getattr__(self, name):
        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        return layer_fn


class Parameters:
    """`params.Pooling.MAX` gives the enum value PoolingParameter.MAX."""

    def __getattr__(self, name):
        message = getattr(caffe_pb2, name + "Parameter", None)
        if message is None:
            raise AttributeError(f"no message {name}Parameter in caffe.proto")

        class Param:
            def __getattr__(self, param_name):
                return getattr(message, param_name)
        return Param()


layers = Layers()
params = Parameters()
