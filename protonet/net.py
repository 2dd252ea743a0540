"""Net: a directed acyclic graph of layers, built with Caffe's semantics.

Mirrors: src/caffe/net.cpp.  The graph passes that run before any layer
exists are in protonet/netgraph.py; pycaffe's Python-level API (keyword
forward/backward, forward_all, name-keyed views) in protonet/net_api.py.

Building a net (`Net.__init__`):
1. filter layers by the net state (phase, level, stages) and their
   include/exclude rules (`filter_net`);
2. insert Split layers wherever a blob feeds more than one consumer
   (`insert_splits`, Caffe's naming);
3. create every layer, connect bottoms and tops (a top named like the bottom
   at the same index runs in place), set the layers up in order;
4. share parameters named alike (`param { name: ... }`);
5. decide which layers and bottoms need backward (Caffe's analysis, including
   `propagate_down` and `force_backward`).
"""

import collections
import os

import numpy as np

from . import io as _io
from . import threads
from . import limits as _limits
from .batch_split import BatchSplitter
from .blob import Blob
from .errors import (LayerError, NetError, ProtonetError, ResourceError,
                     WeightsError)
from .layer import create_layer
from .net_api import PycaffeNetMixin
from .netgraph import filter_net, insert_splits
from .proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


def _load_param(model):
    if isinstance(model, caffe_pb2.NetParameter):
        p = caffe_pb2.NetParameter()
        p.CopyFrom(model)
        from .upgrade import upgrade_net
        upgrade_net(p)
        return p, None
    if isinstance(model, (str, os.PathLike)):
        return _io.read_net(model), str(model)
    raise ProtonetError(f"a net must be given as a prototxt path or a "
                        f"NetParameter, got {type(model).__name__}")


def _parse_net_args(args, weights, phase):
    """pycaffe's Net(model, [weights], phase) positional forms."""
    args = list(args)
    if args and isinstance(args[-1], (int, np.integer)) and phase is None:
        phase = int(args.pop())
    if args:
        if weights is not None:
            raise ProtonetError("weights given twice")
        weights = args.pop(0)
    if args:
        raise ProtonetError("Net(model, [weights], phase): too many arguments")
    return weights, phase


class Net(PycaffeNetMixin):
    """A Caffe net: layers, blobs and parameters, forward and backward.

    Args:
        model: path to a net prototxt, or a NetParameter.
        weights: optional .caffemodel (or .h5) path whose parameters are
            copied in by layer name.  One path, commas included, as in
            pycaffe; only the CLI's --weights splits a list at commas.
        phase: TRAIN or TEST (default: the net's `state.phase`, else TEST).
        level, stages: the NetState level and stages.
        dtype: float32 (Caffe's default) or float64 (for gradient checks).
        max_memory: memory limit for this net ("8G", bytes, 0 = none);
            default: $PROTONET_MAX_MEMORY, else a fraction of physical memory
            (see protonet.limits).
        memory: None (Caffe's behaviour: every activation is kept) or
            "inference": forward drops each activation once no later layer
            needs it, and layers drop their scratch buffers (outputs and
            inputs stay; backward is refused until a normal forward).  Lower
            peak memory, slightly slower (buffers are re-allocated).

    Attributes (as pycaffe):
        blobs: OrderedDict of blob name -> Blob, in creation order.
        params: OrderedDict of layer name -> list of parameter Blobs.
        layers, layer_names (`_layer_names`), inputs, outputs, top_names,
        bottom_names, layer_dict.
    """

    def __init__(self, model, *args, weights=None, phase=None, level=None,
                 stages=None, dtype=np.float32, max_memory=None,
                 memory=None):
        weights, phase = _parse_net_args(args, weights, phase)
        param, path = _load_param(model)
        self.source = path
        if phase is not None:
            param.state.phase = phase
        elif not param.HasField("state") or not param.state.HasField("phase"):
            param.state.phase = TEST
        if level is not None:
            param.state.level = int(level)
        if stages:
            param.state.stage.extend(stages)
        self.dtype = np.dtype(dtype)
        self._callbacks = {k: [] for k in ("before_forward", "after_forward",
                                           "before_backward", "after_backward")}
        self.max_memory = max_memory
        if memory not in (None, "inference"):
            raise ProtonetError(f"memory must be None or 'inference', got "
                                f"{memory!r}")
        self.memory = memory
        self._released = set()
        self._forward_only = set()  # layers whose last forward was release
        # Batch-separable layers run as clones on slices of the batch.
        self._splitter = BatchSplitter(self)
        self._split_at = {}  # layer index -> slices of its last forward
        with _limits.limit(max_memory):
            self._init(param)
        if weights:
            self.copy_from(weights)
        if memory == "inference":
            # Setup sized every activation and scratch buffer; drop them now.
            self._release(b for ids in self.release_plan().values()
                          for b in ids)
            for layer in self.layers:
                if hasattr(layer, "prefer_memory"):
                    layer.prefer_memory()
                if hasattr(layer, "release_buffers"):
                    layer.release_buffers()

    # -- construction -----------------------------------------------------
    def _init(self, in_param):
        self.phase = in_param.state.phase
        param = insert_splits(filter_net(in_param))
        self.name = param.name
        self.param = param
        self.force_backward = param.force_backward
        for lp in param.layer:
            if not lp.HasField("phase"):
                lp.phase = self.phase
        self.layers = []
        self._layer_names = []
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_ids, self.top_ids = [], []
        self._blobs = []            # list of Blob, in creation order
        self._blob_names = []
        self._blob_loss_weights = []
        blob_index = {}
        available = set()           # blobs produced but not yet consumed
        blob_need_backward = []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.input_ids = []
        seen_layer_names = set()
        budget = _limits.NetBudget(param.name)

        for li, lp in enumerate(param.layer):
            if lp.name in seen_layer_names:
                # Caffe allows it but copy_from by name becomes ambiguous.
                pass
            seen_layer_names.add(lp.name)
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise NetError(f"layer '{lp.name}': propagate_down must be "
                               f"given once per bottom ({len(lp.bottom)}), got "
                               f"{len(lp.propagate_down)}")
            layer = create_layer(lp, self.dtype)
            if layer.is_loss or layer.auto_top_blobs:
                # NOTE(caffe): loss layers (AutoTopBlobs) get the tops they
                # need created anonymously; V0/V1 nets give losses no top.
                need = max(layer.min_top or 0, layer.exact_num_top or 0)
                for k in range(len(lp.top), need):
                    auto = "(automatic)"
                    if auto in blob_index:
                        auto = f"(automatic) {lp.name} {k}"
                    lp.top.append(auto)
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            bottoms, bids, need_bw = [], [], []
            need_backward = False
            for j, name in enumerate(lp.bottom):
                if name not in blob_index or name not in available:
                    raise NetError(f"layer '{lp.name}' ({lp.type}): unknown "
                                   f"bottom blob '{name}' (bottom {j})")
                bid = blob_index[name]
                available.discard(name)
                bottoms.append(self._blobs[bid])
                bids.append(bid)
                nb = blob_need_backward[bid]
                if lp.propagate_down:
                    nb = lp.propagate_down[j]
                need_bw.append(nb)
                need_backward |= blob_need_backward[bid]
            tops, tids = [], []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and name == lp.bottom[j]:
                    bid = blob_index[name]          # in place
                    tops.append(self._blobs[bid])
                    tids.append(bid)
                else:
                    if name in blob_index:
                        raise NetError(f"layer '{lp.name}' ({lp.type}): top "
                                       f"blob '{name}' is produced by more than "
                                       "one layer (only in-place reuse of the "
                                       "bottom at the same index is allowed)")
                    bid = len(self._blobs)
                    blob_index[name] = bid
                    self._blobs.append(Blob((), self.dtype))
                    self._blob_names.append(name)
                    blob_need_backward.append(False)
                    self._blob_loss_weights.append(0.0)
                    tops.append(self._blobs[bid])
                    tids.append(bid)
                    if lp.type == "Input":
                        self.input_ids.append(bid)
                available.add(name)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_ids.append(bids)
            self.top_ids.append(tids)
            try:
                layer.set_up(bottoms, tops)
            except ResourceError as e:
                if f"'{lp.name}'" in str(e):
                    raise
                raise ResourceError(f"{lp.type} layer '{lp.name}': {e}") from e
            except ProtonetError:
                raise
            except MemoryError as e:
                raise ResourceError(f"{lp.type} layer '{lp.name}': out of "
                                    f"memory during setup: {e}") from e
            except (ValueError, IndexError, TypeError, ZeroDivisionError) as e:
                raise LayerError(layer, f"setup failed with bottom shapes "
                                 f"{[b.shape for b in bottoms]}: {e}") from e
            budget.add_layer(layer, tops)
            for j, tid in enumerate(tids):
                w = layer.loss_weights[j] if j < len(layer.loss_weights) else 0
                self._blob_loss_weights[tid] = w
            nparams = len(layer.blobs)
            for k in range(nparams):
                spec = lp.param[k] if k < len(lp.param) else None
                lr = spec.lr_mult if spec is not None else 1.0
                need = lr != 0
                need_backward |= need
                layer.param_propagate_down[k] = need
            if len(lp.param) > nparams:
                raise NetError(f"layer '{lp.name}' ({lp.type}): {len(lp.param)} "
                               f"param specs but the layer has {nparams} "
                               "parameter blob(s)")
            for tid in tids:
                if need_backward:
                    blob_need_backward[tid] = True
            self.layer_need_backward.append(need_backward)
            self.bottom_need_backward.append(need_bw)

        self._analyse_backward(blob_need_backward)
        self._output_names = [n for n in self._blob_names if n in available]
        self._setup_params()
        self.blobs = collections.OrderedDict(zip(self._blob_names, self._blobs))
        self.params = collections.OrderedDict(
            (n, l.blobs) for n, l in zip(self._layer_names, self.layers)
            if l.blobs)
        self.layer_dict = collections.OrderedDict(zip(self._layer_names,
                                                      self.layers))

    def _analyse_backward(self, blob_need_backward):
        """Which layers contribute to a loss and need backward (Caffe's
        second pass), then force_backward."""
        under_loss, skip = set(), set()
        for li in reversed(range(len(self.layers))):
            layer = self.layers[li]
            contributes = False
            skip_down = True
            for j, tid in enumerate(self.top_ids[li]):
                name = self._blob_names[tid]
                if layer.loss_weights[j] or name in under_loss:
                    contributes = True
                if name not in skip:
                    skip_down = False
                if contributes and not skip_down:
                    break
            if self.layer_need_backward[li] and skip_down:
                self.layer_need_backward[li] = False
                self.bottom_need_backward[li] = [False] * len(self.bottom_ids[li])
            if not contributes:
                self.layer_need_backward[li] = False
            for j, bid in enumerate(self.bottom_ids[li]):
                name = self._blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[li][j] = False
                if not self.bottom_need_backward[li][j]:
                    skip.add(name)
        if self.force_backward:
            for li, layer in enumerate(self.layers):
                self.layer_need_backward[li] = True
                for j, bid in enumerate(self.bottom_ids[li]):
                    nb = self.bottom_need_backward[li][j] or \
                        layer.allow_force_backward(j)
                    self.bottom_need_backward[li][j] = nb
                    blob_need_backward[bid] = blob_need_backward[bid] or nb
                layer.param_propagate_down = [True] * len(layer.blobs)
        self.blob_need_backward = blob_need_backward

    def _setup_params(self):
        """Parameter bookkeeping and sharing (Caffe's AppendParam)."""
        self._params = []               # every param blob, layer order
        self.param_owners = []          # -1 or index of the owning param
        self.param_layer_indices = []   # (layer idx, blob idx)
        self.param_display_names = []
        self.learnable_params = []
        # Per learnable param: may the solver clear its diff lazily (every
        # layer holding it allows it, no reshaped sharer views its diff)?
        self._lazy_clear_ok = []
        self.learnable_param_ids = []
        self.params_lr = []
        self.params_weight_decay = []
        self._has_lr, self._has_decay = [], []
        names = {}
        for li, (layer, lp) in enumerate(zip(self.layers, self.param.layer)):
            for k, blob in enumerate(layer.blobs):
                spec = lp.param[k] if k < len(lp.param) else caffe_pb2.ParamSpec()
                pname = spec.name
                net_id = len(self._params)
                self._params.append(blob)
                self.param_layer_indices.append((li, k))
                self.param_display_names.append(pname or str(k))
                if not pname or pname not in names:
                    self.param_owners.append(-1)
                    if pname:
                        names[pname] = net_id
                    self.learnable_param_ids.append(len(self.learnable_params))
                    self.learnable_params.append(blob)
                    self._lazy_clear_ok.append(layer.lazy_param_clear)
                    self._has_lr.append(spec.HasField("lr_mult"))
                    self._has_decay.append(spec.HasField("decay_mult"))
                    self.params_lr.append(spec.lr_mult)
                    self.params_weight_decay.append(spec.decay_mult)
                    continue
                owner_id = names[pname]
                self.param_owners.append(owner_id)
                oli, ok = self.param_layer_indices[owner_id]
                owner = self.layers[oli].blobs[ok]
                if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
                    if blob.count != owner.count:
                        raise NetError(
                            f"cannot share param '{pname}' owned by layer "
                            f"'{self._layer_names[oli]}' with layer "
                            f"'{lp.name}': count mismatch, owner shape "
                            f"{owner.shape}, sharing shape {blob.shape}")
                elif blob.shape != owner.shape:
                    raise NetError(
                        f"cannot share param '{pname}' owned by layer "
                        f"'{self._layer_names[oli]}' with layer '{lp.name}': "
                        f"shape mismatch, owner shape {owner.shape}, sharing "
                        f"shape {blob.shape} (use share_mode: PERMISSIVE to "
                        "share by count)")
                lid = self.learnable_param_ids[owner_id]
                self.learnable_param_ids.append(lid)
                self._lazy_clear_ok[lid] &= layer.lazy_param_clear
                for has, vals, field in ((self._has_lr, self.params_lr, "lr_mult"),
                                         (self._has_decay, self.params_weight_decay,
                                          "decay_mult")):
                    if spec.HasField(field):
                        v = getattr(spec, field)
                        if has[lid] and vals[lid] != v:
                            raise NetError(f"shared param '{pname}' has "
                                           f"mismatched {field} in layer "
                                           f"'{lp.name}'")
                        has[lid] = True
                        vals[lid] = v
                # Share data and diff with the owner (Caffe's ShareWeights).
                if blob.shape == owner.shape:
                    layer.blobs[k] = owner
                else:
                    shared = Blob(blob.shape, self.dtype)
                    shared.data = owner.data.reshape(blob.shape)
                    shared.diff = owner.diff.reshape(blob.shape)
                    layer.blobs[k] = shared
                    self._lazy_clear_ok[lid] = False
                self._params[net_id] = layer.blobs[k]

    # -- pycaffe-style properties -----------------------------------------
    @property
    def blob_names(self):
        return list(self._blob_names)

    @property
    def all_params(self):
        """Every parameter blob (shared ones repeated), in net order."""
        return list(self._params)

    @property
    def blob_loss_weights(self):
        """OrderedDict blob name -> loss weight (pycaffe's property)."""
        return collections.OrderedDict(zip(self._blob_names,
                                           self._blob_loss_weights))

    @property
    def _layer_types(self):
        return [layer.type for layer in self.layers]

    def layer_index(self, name):
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetError(f"no layer named '{name}' in net '{self.name}'") \
                from None

    # -- running ----------------------------------------------------------
    def forward_from_to(self, start=0, end=None, release=None, keep=()):
        """Run layers start..end (inclusive); returns the total loss.

        With `release` (default: the net was built with
        ``memory="inference"``), activations no later layer of the range
        needs are dropped as soon as their last consumer has run, and layers
        drop their scratch buffers (see `release_plan`); the net's outputs,
        its inputs and the blobs named in `keep` survive.
        """
        end = len(self.layers) - 1 if end is None else end
        if release is None:
            release = self.memory == "inference"
        plan = self.release_plan(start, end, keep) if release else {}
        loss = 0.0
        hooks = self._callbacks["before_forward"] or \
            self._callbacks["after_forward"]
        i = start
        while i <= end:
            # A run of batch-separable layers goes through the cores slice
            # by slice (protonet/batch_split.py); hooks see layers one by one.
            count, split = (0, False) if hooks else \
                self._splitter.forward_run(i, end, release)
            for j in range(i, i + max(count, 1)):
                layer, top = self.layers[j], self.top_vecs[j]
                if not split:
                    if self._released:
                        self._restore(self.top_ids[j])
                    for callback in self._callbacks["before_forward"]:
                        callback(j)
                    self.forward_layer(j, release)
                (self._forward_only.add if release else
                 self._forward_only.discard)(j)
                if any(layer.loss_weights):
                    loss += layer.loss(top)
                for callback in self._callbacks["after_forward"]:
                    callback(j)
                if release:
                    self._release(plan.get(j, ()))
                    drop = getattr(layer, "release_buffers", None)
                    if drop is not None:
                        drop()
            i += max(count, 1)
        return loss

    def forward_layer(self, i, release=False):
        """Reshape and forward layer `i` alone, whole (no callbacks, no
        release).  With `release`, the layer may skip what only its
        backward needs."""
        layer, bottom, top = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
        layer.reshape(bottom, top)
        self._split_at[i] = None
        layer.forward_only = release
        try:
            layer.forward(bottom, top)
        finally:
            layer.forward_only = False

    def backward_layer(self, i):
        """Backward of layer `i` alone (by its clones if its forward ran
        split over the batch)."""
        slices = self._split_at.get(i)
        if slices is not None:
            self._splitter.backward([i], slices)
        else:
            self.layers[i].backward(self.top_vecs[i],
                                    self.bottom_need_backward[i],
                                    self.bottom_vecs[i])

    # -- inference memory -------------------------------------------------
    def release_plan(self, start=0, end=None, keep=()):
        """Which activations can be dropped after which layer.

        A blob is dropped right after the last layer in start..end that reads
        or writes it, unless it is an input or output of the net, is named in
        `keep`, or was produced before `start` (the caller owns it).  Caffe
        keeps every activation; this is the opt-in inference mode behind
        ``Net(..., memory="inference")`` and ``forward_from_to(release=True)``.

        Returns:
            dict: layer index -> list of blob ids to drop after it runs.
        """
        end = len(self.layers) - 1 if end is None else end
        index = {n: b for b, n in enumerate(self._blob_names)}
        protected = set(self.input_ids) | {index[n] for n in self.outputs}
        protected |= {index[n] for n in keep}
        producer, last = {}, {}
        for i, ids in enumerate(self.top_ids):
            for bid in ids:
                producer.setdefault(bid, i)
        for i in range(start, end + 1):
            for bid in self.bottom_ids[i] + self.top_ids[i]:
                last[bid] = i
        plan = {}
        for bid, i in last.items():
            if bid not in protected and producer[bid] >= start:
                plan.setdefault(i, []).append(bid)
        return plan

    def _release(self, bids):
        for bid in bids:
            blob = self._blobs[bid]
            # A zero-byte stand-in keeps the shape for reshape/inspection.
            blob._data = np.broadcast_to(np.zeros((), self.dtype), blob.shape)
            blob._diff = None
            self._released.add(bid)

    def _restore(self, bids):
        for bid in bids:
            if bid in self._released:
                blob = self._blobs[bid]
                blob._data = np.empty(blob.shape, self.dtype)
                self._released.discard(bid)

    def backward_from_to(self, start=None, end=0):
        """Run backward for layers start..end (start >= end, inclusive)."""
        start = len(self.layers) - 1 if start is None else start
        if self._released:
            names = sorted(self._blob_names[b] for b in self._released)
            raise NetError(f"backward after a forward that released "
                           f"activations ({', '.join(names[:5])}...): run "
                           f"forward_from_to(release=False) first")
        skipped = [self._layer_names[i] for i in range(end, start + 1)
                   if i in self._forward_only and self.layer_need_backward[i]]
        if skipped:
            raise NetError(f"backward after a forward that kept nothing for "
                           f"backward (memory='inference'), in layers "
                           f"{', '.join(skipped[:5])}: run "
                           f"forward_from_to(release=False) first")
        hooks = self._callbacks["before_backward"] or \
            self._callbacks["after_backward"]
        i = start
        while i >= end:
            count = 0 if hooks else self._splitter.backward_run(i, end)
            if count:
                i -= count
                continue
            for callback in self._callbacks["before_backward"]:
                callback(i)
            if self.layer_need_backward[i]:
                self.backward_layer(i)
            for callback in self._callbacks["after_backward"]:
                callback(i)
            i -= 1

    # pycaffe's hooks (Net::before_forward_ ...): callables of the layer index.
    def before_forward(self, callback):
        self._callbacks["before_forward"].append(callback)

    def after_forward(self, callback):
        self._callbacks["after_forward"].append(callback)

    def before_backward(self, callback):
        self._callbacks["before_backward"].append(callback)

    def after_backward(self, callback):
        self._callbacks["after_backward"].append(callback)

    def reshape(self):
        """Propagate input shape changes through every layer."""
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)

    def clear_param_diffs(self, lazy=False):
        """Zero the learnable parameters' diffs (Caffe's ClearParamDiffs).

        With `lazy` (the solver's step, when nothing else runs between the
        clear and the backward), a diff that only layers with
        `lazy_param_clear` hold is cleared lazily (Blob.clear_diff_lazily):
        zeroed when first read, or never when its layer assigns it whole
        (CaffeNet: 244 MB of fc weight gradients not zeroed, ~17 ms a
        step).  Without, every diff is zeroed now, in place: pycaffe users
        may hold the arrays.  Hooks make every clear eager (they may read
        held arrays)."""
        lazy = lazy and not any(self._callbacks.values())
        eager = []
        for b, ok in zip(self.learnable_params, self._lazy_clear_ok):
            if lazy and ok:
                b.clear_diff_lazily()
            elif b.has_diff:
                eager.append(b.diff)
        threads.zero(eager)

    # -- weights ----------------------------------------------------------
    def copy_from(self, source):
        """Copy parameters by layer name from a .caffemodel path (or .h5), or a
        NetParameter.  Layers absent from the source keep their values;
        source layers absent from this net are ignored, as in Caffe."""
        if isinstance(source, (str, os.PathLike)):
            path = str(source)
            if path.endswith((".h5", ".hdf5")):
                from .hdf5 import copy_from_hdf5
                return copy_from_hdf5(self, path)
            source = _io.read_caffemodel(path)
        else:
            path = "<NetParameter>"
        by_name = {}
        for li, name in enumerate(self._layer_names):
            by_name.setdefault(name, li)
        for sl in source.layer:
            li = by_name.get(sl.name)
            if li is None:
                continue
            target = self.layers[li].blobs
            if len(sl.blobs) != len(target):
                raise WeightsError(
                    f"{path}: layer '{sl.name}' has {len(sl.blobs)} parameter "
                    f"blob(s) in the weights file but {len(target)} in the net")
            for j, (sb, tb) in enumerate(zip(sl.blobs, target)):
                if not _shape_equals(tb.shape, sb):
                    raise WeightsError(
                        f"{path}: cannot copy param {j} of layer '{sl.name}': "
                        f"shape mismatch, weights file has "
                        f"{_io.blob_shape(sb)}, net expects {tb.shape}; to "
                        "learn this layer from scratch, rename it")
                tb.data[...] = _io.blob_to_array(sb, path, f"layer "
                                                 f"'{sl.name}' param {j}",
                                                 self.dtype).reshape(tb.shape)

    def share_with(self, other):
        """Make this net's parameters views of `other`'s, matching layers by
        name (Caffe's Net::ShareTrainedLayersWith; pycaffe's share_with).
        Layers that only this net has keep their own parameters."""
        for name, layer in zip(other._layer_names, other.layers):
            if not layer.blobs or name not in self.layer_dict:
                continue
            target = self.layer_dict[name].blobs
            if len(target) != len(layer.blobs):
                raise NetError(f"share_with: layer '{name}' has "
                               f"{len(layer.blobs)} parameter blob(s) in the "
                               f"source net but {len(target)} in this one")
            for i, (src, dst) in enumerate(zip(layer.blobs, target)):
                if src.shape != dst.shape:
                    raise NetError(f"share_with: layer '{name}' param {i}: "
                                   f"source shape {src.shape}, this net's "
                                   f"shape {dst.shape}")
                dst.share_data(src)

    def save_hdf5(self, path):
        """Write the parameters as Caffe's HDF5 weights (Net::ToHDF5)."""
        from .hdf5 import save_hdf5
        save_hdf5(self, str(path))

    def load_hdf5(self, path):
        """Copy parameters by layer name from Caffe's HDF5 weights."""
        from .hdf5 import copy_from_hdf5
        copy_from_hdf5(self, str(path))

    def to_proto(self, write_diff=False):
        """The net with its parameters, as Caffe's Net::ToProto."""
        out = caffe_pb2.NetParameter(name=self.name)
        for layer, lp in zip(self.layers, self.param.layer):
            dst = out.layer.add()
            dst.CopyFrom(lp)
            dst.ClearField("blobs")
            for blob in layer.blobs:
                _io.array_to_blob(blob.data, dst.blobs.add(),
                                  diff=blob.diff if write_diff else None)
        return out

    def save(self, path, write_diff=False):
        """Write the parameters as a binary .caffemodel (atomically)."""
        _io.write_caffemodel(path, self.to_proto(write_diff))

    def __repr__(self):
        return (f"<Net '{self.name}': {len(self.layers)} layers, "
                f"{len(self.blobs)} blobs, phase "
                f"{'TRAIN' if self.phase == TRAIN else 'TEST'}>")


def _shape_equals(shape, blob_proto):
    """Caffe's Blob::ShapeEquals, including the legacy 4-D form."""
    if blob_proto.HasField("num") or blob_proto.HasField("channels") or \
            blob_proto.HasField("height") or blob_proto.HasField("width"):
        if len(shape) > 4:
            return False
        legacy = (1,) * (4 - len(shape)) + tuple(shape)
        return legacy == (blob_proto.num, blob_proto.channels,
                          blob_proto.height, blob_proto.width)
    return tuple(shape) == tuple(blob_proto.shape.dim)
