"""Graph rewriting passes on a NetParameter, before any layer exists.

Mirrors: Net::FilterNet and Net::StateMeetsRule (src/caffe/net.cpp) and
src/caffe/util/insert_splits.cpp.  Pure functions: NetParameter in, a new
NetParameter out.
"""

import collections

from .errors import NetError
from .proto import caffe_pb2


def state_meets_rule(state, rule):
    """Caffe's StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param):
    """A copy of `param` holding only the layers its `state` includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if layer.include and layer.exclude:
            raise NetError(f"layer '{layer.name}': specify either include "
                           "rules or exclude rules, not both")
        included = not layer.include
        if any(state_meets_rule(param.state, r) for r in layer.exclude):
            included = False
        if any(state_meets_rule(param.state, r) for r in layer.include):
            included = True
        if included:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer_name, blob_name, blob_idx):
    return f"{blob_name}_{layer_name}_{blob_idx}_split"


def split_blob_name(layer_name, blob_name, blob_idx, split_idx):
    return f"{blob_name}_{layer_name}_{blob_idx}_split_{split_idx}"


def insert_splits(param):
    """A copy of `param` with Split layers for every blob used more than once.

    A top used as a loss (non-zero loss_weight) counts as one more use.
    """
    last_top = {}                       # blob name -> (layer idx, top idx)
    source_of_bottom = {}               # (layer, bottom) -> (layer, top)
    uses = collections.Counter()        # (layer, top) -> number of consumers
    loss_weight_of = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                raise NetError(f"layer '{layer.name}' ({layer.type}): unknown "
                               f"bottom blob '{name}' (bottom {j}); no earlier "
                               "layer produces it")
            source_of_bottom[(i, j)] = last_top[name]
            uses[last_top[name]] += 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            idx = last_top[layer.top[j]]
            loss_weight_of[idx] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                uses[idx] += 1
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split = collections.Counter()
    for i, layer in enumerate(param.layer):
        lp = out.layer.add()
        lp.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = source_of_bottom[(i, j)]
            if uses[src] > 1:
                producer = param.layer[src[0]].name
                lp.bottom[j] = split_blob_name(producer, name, src[1],
                                               next_split[src])
                next_split[src] += 1
        for j, name in enumerate(layer.top):
            n = uses[(i, j)]
            if n > 1:
                w = loss_weight_of.get((i, j), 0.0)
                split = out.layer.add(name=split_layer_name(lp.name, name, j),
                                      type="Split")
                split.bottom.append(name)
                for k in range(n):
                    split.top.append(split_blob_name(lp.name, name, j, k))
                    if w:
                        split.loss_weight.append(w if k == 0 else 0.0)
                if w:
                    lp.ClearField("loss_weight")
                    next_split[(i, j)] += 1
    return out


# ---------------------------------------------------------------------------
