"""Caffe's flag spellings for argparse, and the solver flags of `train`.

Caffe's tools parse flags with gflags, which accepts `-name value`,
`--name value`, `-name=value` and `--name=value`, and for booleans also
`-name=true` / `-name=false`.  `CaffeArgumentParser` registers every long
option under those spellings (with hyphens or underscores) so the main
commands and every tool under `protonet <command>` accept them alike; its
help shows one spelling per flag, with the flag's help text and default.
"""

import argparse
import os
import re

from .errors import ProtonetError
from .proto import caffe_pb2

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


def spellings(names):
    """Every spelling of the option names `names`: `-x_y`, `--x_y`,
    `--x-y` for each long name; short names (`-h`) as given."""
    out = []
    for name in names:
        if not name.startswith("-") or len(name.lstrip("-")) < 2:
            out.append(name)
            continue
        base = name.lstrip("-")
        for b in (base, base.replace("-", "_"), base.replace("_", "-")):
            out += [f"-{b}", f"--{b}"]
    # the caller's own names first (argparse shows the first in usage)
    return list(dict.fromkeys(list(names) + out))


class CaffeHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows one spelling per option and appends `[default: X]`."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        shown = [s for s in action.option_strings if len(s) == 2] + \
            [s for s in action.option_strings if s.startswith("--")][:1]
        if action.nargs == 0:
            return ", ".join(shown)
        default = self._get_default_metavar_for_optional(action)
        metavar = self._format_args(action, default)
        return ", ".join(shown) + " " + metavar

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == "" or \
            default is argparse.SUPPRESS
        if action.option_strings and not hidden \
                and "%(default)" not in text and "[default" not in text \
                and f"[{default}]" not in text:
            text += " [default: %(default)s]"
        return text


class _SpelledGroup:
    """An argument group whose add_argument registers Caffe's spellings."""

    def __init__(self, group, parser):
        self._group, self._parser = group, parser

    def add_argument(self, *names, **kw):
        return self._parser._add_unique(self._group.add_argument, names, kw)

    def __getattr__(self, name):
        return getattr(self._group, name)


class CaffeArgumentParser(argparse.ArgumentParser):
    """argparse with gflags' spellings (see the module docstring)."""

    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)
        kw.setdefault("formatter_class", CaffeHelpFormatter)
        super().__init__(*args, **kw)

    def _add_unique(self, add, names, kw):
        taken = self._option_string_actions
        wanted = [n for n in spellings(names) if n not in taken or n in names]
        return add(*wanted, **kw)

    def add_argument(self, *names, **kw):
        if names and names[0].startswith("-"):
            return self._add_unique(super().add_argument, names, kw)
        return super().add_argument(*names, **kw)

    def add_argument_group(self, *args, **kw):
        return _SpelledGroup(super().add_argument_group(*args, **kw), self)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self._booleans(args), namespace)

    def _booleans(self, args):
        """`-flag=true` -> `-flag`, `-flag=false` -> nothing (gflags)."""
        if args is None:
            return None
        out = []
        for arg in args:
            m = re.fullmatch(r"(--?[\w-]+)=(\w+)", arg)
            action = self._option_string_actions.get(m.group(1)) if m else None
            if isinstance(action, (argparse._StoreTrueAction,
                                   argparse._StoreFalseAction)):
                value = m.group(2).lower()
                if value not in _TRUE | _FALSE:
                    self.error(f"{m.group(1)}: expected true or false, got "
                               f"{m.group(2)!r}")
                if value in _TRUE:
                    out.append(m.group(1))
                continue
            out.append(arg)
        return out


# ---------------------------------------------------------------------------
# `train`'s solver flags: (flag, SolverParameter field, type, default with a
# net definition, help).  With a solver file the file's values stand unless
# the flag is given.

SOLVER_FLAGS = [
    ("type", "type", str, "SGD",
     "solver type: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam"),
    ("base_lr", "base_lr", float, 0.01, "base learning rate"),
    ("lr_policy", "lr_policy", str, "fixed",
     "fixed, step, exp, inv, multistep, poly, sigmoid"),
    ("gamma", "gamma", float, 0.1, "lr_policy's gamma"),
    ("power", "power", float, 0.75, "lr_policy's power (inv, poly)"),
    ("stepsize", "stepsize", int, 1000, "lr_policy step's step size"),
    ("stepvalue", "stepvalue", str, "",
     "multistep: comma-separated iterations"),
    ("momentum", "momentum", float, 0.9, "momentum (0 for AdaGrad)"),
    ("momentum2", "momentum2", float, 0.999, "Adam's second momentum"),
    ("delta", "delta", float, 1e-8, "AdaGrad/RMSProp/AdaDelta/Adam delta"),
    ("weight_decay", "weight_decay", float, 0.0005, "weight decay"),
    ("regularization_type", "regularization_type", str, "L2", "L1 or L2"),
    ("max_iter", "max_iter", int, 1000, "iterations to train"),
    ("display", "display", int, 100, "log the loss every N iterations"),
    ("average_loss", "average_loss", int, 1,
     "smooth the displayed loss over N iterations"),
    ("iter_size", "iter_size", int, 1,
     "accumulate gradients over N batches"),
    ("snapshot_every", "snapshot", int, 0,
     "snapshot every N iterations (0: only at the end)"),
    ("snapshot_prefix", "snapshot_prefix", str, None,
     "snapshot file prefix (default: the net file without extension)"),
    ("test_iter", "test_iter", int, 0, "test batches per test pass"),
    ("test_interval", "test_interval", int, 0,
     "test every N iterations (0: no testing, or max_iter with --test-iter)"),
    ("random_seed", "random_seed", int, -1, "random seed (-1: random)"),
    ("clip_gradients", "clip_gradients", float, -1.0,
     "clip the gradient L2 norm to this (-1: off)"),
]


def add_solver_flags(parser):
    g = parser.add_argument_group(
        "solver settings", "With a net definition they build the solver "
        "(defaults in brackets);\nwith a solver file, each flag given "
        "overrides the file's field (and the log says so).")
    for flag, _, kind, default, text in SOLVER_FLAGS:
        shown = "" if default is None else f" [{default}]" if default != "" \
            else " [none]"
        g.add_argument(f"--{flag}", type=kind, default=None,
                       metavar=flag.upper(), help=text + shown)


def _values(flag, kind, value):
    """The flag's value as the list the (repeated or not) field holds."""
    if flag == "stepvalue":
        return parse_list(value, flag, int)
    return [value]


def parse_list(value, flag, kind=str):
    """Comma-separated items of a flag; an empty item is an error."""
    items = value.split(",")
    if any(not item.strip() for item in items):
        raise ProtonetError(f"--{flag} {value!r}: empty item in the "
                            "comma-separated list (a stray comma?); expected "
                            "e.g. a,b")
    try:
        return [kind(item.strip()) for item in items]
    except ValueError:
        raise ProtonetError(f"--{flag} {value!r}: expected comma-separated "
                            f"{kind.__name__} values") from None


def parse_weights(value):
    """The files of `--weights a,b` (Caffe splits at commas)."""
    return parse_list(value, "weights") if value else []


def solver_from_flags(net_path, args):
    """A SolverParameter for `train net.prototxt` from the flags (or their
    defaults) as a net definition has no solver fields."""
    sp = caffe_pb2.SolverParameter(net=net_path,
                                   solver_mode=caffe_pb2.SolverParameter.CPU)
    for flag, field, kind, default, _ in SOLVER_FLAGS:
        value = getattr(args, flag)
        if value is None and flag == "momentum" and \
                (args.type or "").lower() == "adagrad":
            value = 0.0     # NOTE(caffe): AdaGrad refuses any momentum
        value = default if value is None else value
        if value is None or (flag == "stepvalue" and value == ""):
            continue
        if flag in ("test_iter", "test_interval"):
            continue
        _set(sp, field, _values(flag, kind, value))
    if args.snapshot_prefix is None:
        sp.snapshot_prefix = os.path.splitext(net_path)[0]
    if args.test_iter:
        sp.test_iter.append(args.test_iter)
        sp.test_interval = args.test_interval or sp.max_iter
    return sp


def _repeated(sp, field):
    desc = sp.DESCRIPTOR.fields_by_name[field]
    if hasattr(desc, "is_repeated"):     # protobuf >= 5.x
        return desc.is_repeated
    return desc.label == desc.LABEL_REPEATED


def _set(sp, field, values):
    if _repeated(sp, field):
        del getattr(sp, field)[:]
        getattr(sp, field).extend(values)
    else:
        setattr(sp, field, values[0])


def _shown(sp, field):
    if _repeated(sp, field):
        return ",".join(str(v) for v in getattr(sp, field)) or "(none)"
    value = getattr(sp, field)
    return f"{value:g}" if isinstance(value, float) else str(value)


def override_solver(sp, args, log):
    """Apply the solver flags the user gave to `sp` (from a solver file);
    `log(message)` is called once per field, Caffe-style:
    `Overriding solver max_iter: 10000 -> 5`."""
    for flag, field, kind, _, _ in SOLVER_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        values = _values(flag, kind, value)
        if field == "test_iter":
            values = values * max(1, len(sp.test_iter))
        before = _shown(sp, field)
        _set(sp, field, values)
        log(f"Overriding solver {field}: {before} -> {_shown(sp, field)}")
    return sp


# ---------------------------------------------------------------------------
# The kind of a prototxt: solver or net, from the field names it uses.

_SOLVER_FIELDS = {f.name for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields}
_NET_FIELDS = {f.name for f in caffe_pb2.NetParameter.DESCRIPTOR.fields}
_SOLVER_ONLY = _SOLVER_FIELDS - _NET_FIELDS     # debug_info is in both
_NET_ONLY = _NET_FIELDS - _SOLVER_FIELDS
_NAME = re.compile(r"[A-Za-z_]\w*")
_TOKENS = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\''
                     r"|[{}<>]|[A-Za-z_][\w.]*|\S")


def text_kind(text):
    """'solver' or 'net': which message's top-level field names `text` uses
    most (unknown names, such as typos, do not count); 'net' on a tie.

    One pass over the tokens, keeping none (a prototxt may be large)."""
    depth = solver = net = 0
    prev = pending = None       # a top-level name waiting for ':' '{' '<'
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok[0] == "#":
            continue
        if pending is not None and tok in (":", "{", "<"):
            solver += pending in _SOLVER_ONLY
            net += pending in _NET_ONLY
        pending = None
        if tok in ("{", "<"):
            depth += 1
        elif tok in ("}", ">"):
            depth -= 1
        elif depth == 0 and prev != ":" and _NAME.fullmatch(tok):
            pending = tok
        prev = tok
    return "solver" if solver > net else "net"
