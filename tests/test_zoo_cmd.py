"""`protonet zoo` and protonet.zoo: list the bundled models, locate one,
copy one into a folder from which it trains."""

import os
import re

import pytest

import protonet
import protonet.zoo as zoo
from protonet import io
from protonet.cli import main
from protonet.errors import ProtonetError
from protonet.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "zoo")
MODELS = sorted(d for d in os.listdir(ZOO)
                if os.path.isfile(os.path.join(ZOO, d, "solver.prototxt")))


def test_listing_prints_one_line_per_model(capsys):
    assert main(["zoo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(MODELS) + 1      # + the closing hint
    assert [ln.split()[0] for ln in lines[:-1]] == MODELS
    by_name = {ln.split()[0]: ln for ln in lines[:-1]}
    assert re.search(r" 58,106 params +input 1x28x28 +Y\. LeCun",
                     by_name["lenet_digits"])
    assert re.search(r" 138,357,544 params +input 3x224x224 +K\. Simonyan",
                     by_name["vgg16"])
    assert "protonet zoo NAME --out DIR" in lines[-1]


def test_every_model_lists_its_paper_parameters_and_deploy_input():
    for m in zoo.models():
        readme = open(os.path.join(m.folder, "README.md")).read()
        assert m.paper and m.paper in readme
        assert f"{m.parameters:,}" in readme
        assert len(m.input_shape) == 3 and all(d > 0 for d in m.input_shape)


@pytest.mark.parametrize("name", ["lenet_digits", "lenet", "cifar10_quick"])
def test_listed_figures_match_the_built_net(name):
    m = zoo.info(name)
    net = Net(os.path.join(m.folder, "deploy.prototxt"), phase=protonet.TEST)
    assert net.blobs["data"].data.shape[1:] == m.input_shape
    assert sum(b.data.size for bs in net.params.values() for b in bs) \
        == m.parameters


def test_path_returns_the_model_folder():
    folder = zoo.path("lenet_digits")
    assert os.path.samefile(folder, os.path.join(ZOO, "lenet_digits"))
    for f in zoo.FILES:
        assert (folder / f).is_file()
    assert zoo.names() == MODELS


def test_unknown_model_names_the_known_ones(capsys):
    with pytest.raises(ProtonetError, match=r"unknown zoo model 'lenet5'.*"
                       r"lenet_digits.*vgg16"):
        zoo.path("lenet5")
    assert main(["zoo", "lenet5", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert "unknown zoo model 'lenet5'" in err and "cifar10_quick" in err
    assert not os.path.exists("x")


def test_write_points_solver_paths_into_the_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["zoo", "lenet_digits", "--out", "m"]) == 0
    assert "protonet train --solver m/solver.prototxt" in capsys.readouterr().out
    solver = io.read_solver("m/solver.prototxt")
    assert solver.net == "m/train_val.prototxt"
    assert solver.snapshot_prefix == "m/lenet_digits"
    assert solver.max_iter == 800 and solver.base_lr == pytest.approx(0.02)
    for f in ("deploy.prototxt", "train_val.prototxt", "README.md"):
        assert (tmp_path / "m" / f).read_bytes() == \
            (zoo.path("lenet_digits") / f).read_bytes()


@pytest.mark.parametrize("name", MODELS)
def test_every_written_solver_names_files_that_exist(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    zoo.write(name, os.path.join("out", name))
    solver = io.read_solver(os.path.join("out", name, "solver.prototxt"))
    for net in [solver.net, solver.train_net, *solver.test_net]:
        if net:
            assert os.path.isfile(net), net
    assert os.path.dirname(solver.snapshot_prefix) == f"out/{name}"


def test_writing_again_changes_nothing_and_keeps_other_files(tmp_path):
    out = tmp_path / "m"
    written, unchanged = zoo.write("lenet", out)
    assert len(written) == 4 and unchanged == []
    (out / "lenet_iter_10.caffemodel").write_bytes(b"snapshot")
    written, unchanged = zoo.write("lenet", out)
    assert written == [] and len(unchanged) == 4
    assert (out / "lenet_iter_10.caffemodel").read_bytes() == b"snapshot"


def test_different_files_need_force(tmp_path, capsys):
    out = tmp_path / "m"
    zoo.write("lenet", out)
    (out / "deploy.prototxt").write_text("name: 'mine'\n")
    assert main(["zoo", "lenet_digits", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and "deploy.prototxt" in err and str(out) in err
    assert (out / "deploy.prototxt").read_text() == "name: 'mine'\n"
    assert main(["zoo", "lenet_digits", "--out", str(out), "--force"]) == 0
    assert (out / "deploy.prototxt").read_bytes() == \
        (zoo.path("lenet_digits") / "deploy.prototxt").read_bytes()


def test_out_that_is_a_file_or_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ProtonetError, match="expected a folder.*found a file"):
        zoo.write("lenet", blocker)
    with pytest.raises(ProtonetError, match="cannot write zoo model 'lenet'"):
        zoo.write("lenet", blocker / "sub")


def test_out_without_a_name_is_a_usage_error(capsys):
    assert main(["zoo", "--out", "m"]) == 2
    assert "needs a model name" in capsys.readouterr().err


def test_written_lenet_digits_trains_from_its_folder(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("lmdb")
    monkeypatch.chdir(tmp_path)
    assert main(["dataset", "digits", "--size", "32", "--formats", "lmdb"]) == 0
    assert main(["zoo", "lenet_digits", "--out", "m"]) == 0
    # A few iterations only: the same solver file, max_iter and the test and
    # snapshot intervals cut down.
    text = (tmp_path / "m" / "solver.prototxt").read_text()
    for field, value in [("max_iter", 6), ("snapshot", 6), ("test_interval", 6)]:
        text = re.sub(rf"^{field}: \d+", f"{field}: {value}", text, flags=re.M)
    (tmp_path / "m" / "solver.prototxt").write_text(text)
    assert main(["train", "--solver", "m/solver.prototxt"]) == 0
    assert (tmp_path / "m" / "lenet_digits_iter_6.caffemodel").is_file()
    assert (tmp_path / "m" / "lenet_digits_iter_6.solverstate").is_file()
