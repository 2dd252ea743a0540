"""README.md stays current: every registered layer type is in its table,
its commands are the ones CI runs, and every CLI command it names exists."""

import os
import re

import protonet
from protonet import cli

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
README = open(os.path.join(ROOT, "README.md")).read()


def test_every_registered_layer_type_is_in_the_table():
    rows = set(re.findall(r"^\| (\w+) \| ", README, flags=re.M))
    from protonet.layer import _REGISTRY
    # (test modules register their own helper layers; only protonet's count)
    builtin = [t for t in protonet.layer_type_list()
               if _REGISTRY[t].__module__.startswith("protonet.")]
    missing = [t for t in builtin if t not in rows]
    assert missing == []


def test_ci_runs_the_readme_install_and_test_commands():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert 'pip install -e ".[test]"' in README.split("```")[1]
    assert "python -m pytest -q" in README.split("```")[1]
    assert 'pip install -e ".[test]"' in ci and "python -m pytest -q" in ci


def test_cli_commands_named_in_the_readme_exist():
    named = set(re.findall(r"`protonet ([a-z_-]+)", README))
    known = {"train", "test", "time", "upgrade", "device_query"} | set(cli.TOOLS)
    assert named and named <= known, named - known
