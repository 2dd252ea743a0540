"""The model zoo that ships with protonet: list, locate and copy its models.

    import protonet.zoo
    protonet.zoo.names()                 # ['alexnet', 'caffenet', ...]
    protonet.zoo.path("lenet_digits")    # folder of deploy/train_val/solver
    for m in protonet.zoo.models(): print(m.line())
    protonet.zoo.write("lenet_digits", "m")   # ready to train from here

Each model is a folder of `deploy.prototxt`, `train_val.prototxt`,
`solver.prototxt` and a `README.md` naming its paper and source.  In a
checkout (or an editable install) the folders are the repository's
`zoo/<model>/`; an installed wheel carries them as `protonet/_zoo/<model>/`.

The zoo's solvers name their net and snapshot prefix relative to the
repository root (`net: "zoo/lenet/train_val.prototxt"`), as Caffe's examples
do.  `write` copies a model elsewhere and points those paths at the copy, so
`protonet train --solver OUT/solver.prototxt` works from the directory where
`write` ran; the data sources inside train_val (`data/digits/...`) stay
relative to that directory, as Caffe opens them.
"""

import dataclasses
import re
from pathlib import Path

from .errors import ProtonetError

FILES = ("deploy.prototxt", "train_val.prototxt", "solver.prototxt",
         "README.md")

# Solver fields holding a path into the model's own folder.
_NET_FIELDS = ("net", "train_net", "test_net")
_PATH_LINE = re.compile(
    r'^(?P<head>\s*(?P<field>net|train_net|test_net|snapshot_prefix)'
    r'\s*:\s*)"(?P<value>[^"\\]*)"', re.MULTILINE)


def root():
    """The folder that holds the zoo's model folders.

    Raises:
        ProtonetError: neither the installed nor the checkout zoo exists.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "_zoo", package.parent / "zoo"):
        if (candidate / "lenet_digits" / "solver.prototxt").is_file():
            return candidate
    raise ProtonetError(
        f"the model zoo is missing from this installation: expected "
        f"{package / '_zoo'} (installed wheel) or {package.parent / 'zoo'} "
        f"(checkout); reinstall protonet")


def names():
    """The names of the zoo's models, sorted."""
    base = root()
    return sorted(d.name for d in base.iterdir()
                  if (d / "solver.prototxt").is_file())


def path(name):
    """The folder of model `name` (a `pathlib.Path`).

    Raises:
        ProtonetError: `name` is not a model of the zoo (the error lists
            the known ones).
    """
    known = names()
    if name not in known:
        raise ProtonetError(f"unknown zoo model '{name}'; the zoo has: "
                            + ", ".join(known))
    return root() / name


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """What `protonet zoo` prints about one model.

    Attributes:
        name: the folder name (`protonet zoo NAME --out DIR`).
        title: the README's heading.
        parameters: parameter count as the README states it (values stored
            in a .caffemodel).
        input_shape: C, H, W of deploy.prototxt's input (batch axis dropped).
        paper: the source paper, as the README cites it.
        folder: the model's folder.
    """

    name: str
    title: str
    parameters: int
    input_shape: tuple
    paper: str
    folder: Path

    def line(self, width=18):
        shape = "x".join(str(d) for d in self.input_shape)
        return (f"{self.name:<{width}} {self.parameters:>12,} params  "
                f"input {shape:<11} {self.paper}")


def _card_field(text, pattern, readme, what):
    m = re.search(pattern, text, re.MULTILINE)
    if m is None:
        raise ProtonetError(f"{readme}: expected a line '{what}' in the "
                            f"model's README, found none")
    return m.group(1).strip()


def _deploy_input_shape(deploy):
    """C, H, W (or whatever follows the batch axis) of the first input."""
    from . import io
    net = io.read_net(deploy)
    dims = None
    for layer in net.layer:
        if layer.type == "Input" and layer.input_param.shape:
            dims = list(layer.input_param.shape[0].dim)
            break
    if dims is None and net.input_shape:
        dims = list(net.input_shape[0].dim)
    if dims is None and net.input_dim:
        dims = list(net.input_dim[:4])
    if not dims:
        raise ProtonetError(f"{deploy}: expected an Input layer (or "
                            f"input_shape) giving the input's shape, found none")
    return tuple(int(d) for d in dims[1:])


def info(name):
    """A `ZooModel` for model `name`, from its README and deploy.prototxt."""
    folder = path(name)
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8")
    title = _card_field(text, r"^#\s+(.+)$", readme, "# Title")
    paper = _card_field(text, r"^Paper:\s*(.+)$", readme, "Paper: ...")
    count = _card_field(text, r"^- Parameters:\s*([\d,]+)", readme,
                        "- Parameters: N")
    return ZooModel(name, title, int(count.replace(",", "")),
                    _deploy_input_shape(folder / "deploy.prototxt"), paper,
                    folder)


def models():
    """A `ZooModel` for every model of the zoo, by name."""
    return [info(n) for n in names()]


def _quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def solver_text(name, out):
    """Model `name`'s solver.prototxt with its paths pointing into `out`.

    `net`/`train_net`/`test_net` entries naming a file of the model's folder
    become `out/<file>`; `snapshot_prefix` becomes `out/<its basename>`, so
    snapshots land beside the copy.  The leading comment, which speaks of the
    repository root, is replaced by one that speaks of `out`.
    """
    source = path(name) / "solver.prototxt"
    text = source.read_text(encoding="utf-8")
    out = Path(out).as_posix()

    def repoint(m):
        value = m.group("value")
        base = value.rsplit("/", 1)[-1]
        if m.group("field") in _NET_FIELDS and base not in FILES:
            return m.group(0)  # a path outside the model: keep it
        return m.group("head") + _quote(f"{out}/{base}")

    body = _PATH_LINE.sub(repoint, text)
    lines = body.splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    header = (f"# Written by `protonet zoo {name} --out {out}`.  Paths below "
              f"are relative to the\n# directory that command ran in; train "
              f"from there:\n#   protonet train --solver {out}/solver.prototxt\n")
    return header + "".join(lines)


def _planned_files(name, out):
    folder = path(name)
    files = {}
    for f in FILES:
        if f == "solver.prototxt":
            files[f] = solver_text(name, out).encode("utf-8")
        else:
            files[f] = (folder / f).read_bytes()
    return files


def write(name, out, force=False):
    """Copy model `name` into folder `out`, ready to train.

    Writing the same model to the same folder again succeeds and changes
    nothing; files the folder holds besides the model's (snapshots, logs)
    are left alone.

    Args:
        name: a zoo model (see `names()`).
        out: the destination folder (created, parents included).
        force: replace model files in `out` whose content differs.

    Returns:
        (written, unchanged): lists of the paths written and of those that
        already held the same content.

    Raises:
        ProtonetError: unknown model; `out` is a file; `out` holds one of
            the model's files with other content (and not `force`); `out`
            cannot be created or written.
    """
    files = _planned_files(name, out)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProtonetError(f"{out}: expected a folder to write zoo model "
                            f"'{name}' into, found a file")
    differing = [f for f, data in files.items()
                 if (out / f).exists() and (out / f).read_bytes() != data]
    if differing and not force:
        raise ProtonetError(
            f"{out} already holds {', '.join(differing)} with other content "
            f"than zoo model '{name}'; use --force (Python: force=True) to replace "
            f"them, or choose another --out")
    written, unchanged = [], []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f, data in files.items():
            target = out / f
            if target.exists() and target.read_bytes() == data:
                unchanged.append(target)
                continue
            target.write_bytes(data)
            written.append(target)
    except OSError as e:
        raise ProtonetError(f"{out}: cannot write zoo model '{name}' there "
                            f"({e.strerror or e})") from None
    return written, unchanged
