"""The tool subcommands (summary, draw, dataset, convert-imageset,
compute-mean) called in-process through cli.main."""

import os

import pytest

from protonet import cli

ZOO = os.path.join(os.path.dirname(__file__), os.pardir, "zoo")


def test_summary_prints_the_lecture_numbers(capsys):
    assert cli.main(["summary", os.path.join(ZOO, "vgg16", "deploy.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "parameters: 138,357,544" in out
    assert "activations per image: 15,238,608" in out
    assert "conv1_1" in out and "1,728" in out


def test_draw_writes_dot_without_graphviz(tmp_path, capsys):
    out = tmp_path / "lenet.dot"
    assert cli.main(["draw", os.path.join(ZOO, "lenet", "deploy.prototxt"),
                     str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph") and "conv1" in text


def test_tool_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert cli.main(["summary", str(tmp_path / "missing.prototxt")]) == 1
    err = capsys.readouterr().err
    assert "protonet summary: error:" in err and "missing.prototxt" in err
    assert "Traceback" not in err


def test_tool_usage_errors_exit_2(capsys):
    assert cli.main(["draw"]) == 2
    assert "usage: protonet draw" in capsys.readouterr().err


@pytest.mark.parametrize("tool", sorted(cli.TOOLS))
def test_every_tool_has_help(tool, capsys):
    assert cli.main([tool, "--help"]) == 0
    assert f"usage: protonet {tool}" in capsys.readouterr().out
