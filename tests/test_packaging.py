"""What the wheel and the sdist carry, and the metadata pip reads.

setuptools' own commands run in-process on this checkout (a second or two,
nothing written into the tree): `egg_info` gives the sdist's file list,
`build_py` the wheel's files.  The wheel's build_py output is then used as
an installed package in a subprocess, far from the checkout, to show that
the zoo is found there.  .ci/run builds the real wheel and sdist and trains
from an installed wheel.
"""

import contextlib
import io
import os
import subprocess
import sys

import pytest
import setuptools  # noqa: F401  (first: `distutils` below is setuptools' copy)
from distutils.core import run_setup  # noqa: E402
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILES = ("deploy.prototxt", "train_val.prototxt", "solver.prototxt",
               "README.md")
MODELS = sorted(d for d in os.listdir(os.path.join(ROOT, "zoo"))
                if os.path.isfile(os.path.join(ROOT, "zoo", d, "solver.prototxt")))


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """setup.py + pyproject.toml as setuptools reads them, egg_info run into
    a temporary folder."""
    egg_base = tmp_path_factory.mktemp("egg")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            d = run_setup("setup.py", stop_after="config")
            egg_info = d.get_command_obj("egg_info")
            egg_info.egg_base = str(egg_base)
            egg_info.ensure_finalized()
            egg_info.run()
            build_py = d.get_command_obj("build_py")
            build_py.build_lib = str(tmp_path_factory.mktemp("build_lib"))
            build_py.ensure_finalized()
            build_py.run()
    finally:
        os.chdir(cwd)
    d.sdist_files = set(open(egg_base / "protonet.egg-info" / "SOURCES.txt")
                        .read().split())
    d.wheel_root = build_py.build_lib
    d.wheel_files = {os.path.relpath(os.path.join(dp, f), build_py.build_lib)
                     .replace(os.sep, "/")
                     for dp, _, fs in os.walk(build_py.build_lib) for f in fs}
    return d


def test_wheel_carries_every_zoo_model_the_schema_and_the_code(dist):
    for model in MODELS:
        for f in MODEL_FILES:
            assert f"protonet/_zoo/{model}/{f}" in dist.wheel_files, (model, f)
    assert "protonet/_schema/caffe.proto" in dist.wheel_files
    with open(os.path.join(dist.wheel_root, "protonet/_schema/caffe.proto"),
              "rb") as a, open(os.path.join(ROOT, "proto/caffe.proto"), "rb") as b:
        assert a.read() == b.read()
    for dp, _, fs in os.walk(os.path.join(ROOT, "protonet")):
        for f in fs:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dp, f), ROOT).replace(os.sep, "/")
                assert rel in dist.wheel_files, rel
    # The generator scripts are the sdist's business, not the wheel's.
    assert not any(f.endswith(("generate.py", "regenerate.sh"))
                   for f in dist.wheel_files)


def test_sdist_carries_what_readme_commands_need(dist):
    needed = {"LICENSE", "LICENSE-caffe", "README.md", "pyproject.toml",
              "setup.py", "MANIFEST.in", "proto/caffe.proto",
              "proto/regenerate.sh", "zoo/generate.py", ".ci/run",
              "tests/conftest.py", "tests/test_oldest_deps.py",
              "tests/fixtures/caffe_ref/nets/lenet/weights.caffemodel"}
    needed |= {f"zoo/{m}/{f}" for m in MODELS for f in MODEL_FILES}
    assert needed <= dist.sdist_files, sorted(needed - dist.sdist_files)


def test_license_is_an_spdx_expression_with_both_license_files(dist):
    meta = dist.metadata
    assert meta.license_expression == "BSD-2-Clause"
    assert sorted(meta.license_files) == ["LICENSE", "LICENSE-caffe"]
    assert not any(c.startswith("License ::") for c in meta.classifiers)
    own = open(os.path.join(ROOT, "LICENSE")).read()
    caffe = open(os.path.join(ROOT, "LICENSE-caffe")).read()
    assert "BSD 2-Clause" in own and "LICENSE-caffe" in own
    assert "The Regents of the University of California" in caffe
    assert "Redistributions in binary form" in caffe


def test_classifiers_name_the_supported_pythons(dist):
    meta = dist.metadata
    assert str(meta.python_requires) == ">=3.10"
    versions = {c.rsplit(":: ", 1)[1] for c in meta.classifiers
                if c.startswith("Programming Language :: Python :: 3.")}
    assert {"3.10", "3.11", "3.12", "3.13"} <= versions
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions


def _requirements(dist, extra=None):
    reqs = dist.install_requires if extra is None else dist.extras_require[extra]
    return {Requirement(r).name: Requirement(r) for r in reqs}


def test_dependency_ranges_reach_back_to_protobuf_4_and_numpy_1(dist):
    core = _requirements(dist)
    for name, old, new, too_new in [("protobuf", "4.21.12", "7.36.2", "8.0.0"),
                                    ("numpy", "1.24.4", "2.4.0", "3.0.0")]:
        spec = core[name].specifier
        assert spec.contains(old) and spec.contains(new), (name, spec)
        assert not spec.contains(too_new), (name, spec)


def test_caffe_pb2_has_no_runtime_version_guard():
    # Gencode from grpcio-tools >= 1.63 calls ValidateProtobufRuntimeVersion,
    # which refuses every runtime older than the protoc that wrote it.
    text = open(os.path.join(ROOT, "protonet", "proto", "caffe_pb2.py")).read()
    assert "ValidateProtobufRuntimeVersion" not in text
    assert "runtime_version" not in text


@pytest.mark.parametrize("extra", ["mpi", "test"])
def test_mpich_is_required_only_where_it_has_wheels(dist, extra):
    # `extras_require` keys carry the marker after a colon in setuptools'
    # internal form; the requirement objects carry it otherwise.
    reqs = [Requirement(r) for key, rs in dist.extras_require.items()
            if key.split(":")[0] == extra for r in rs]
    mpich = [r for r in reqs if r.name == "mpich"]
    assert mpich, f"[{extra}] does not bring mpich at all"
    windows = {"sys_platform": "win32", "platform_machine": "AMD64", "extra": extra}
    linux = {"sys_platform": "linux", "platform_machine": "x86_64", "extra": extra}
    for r in mpich:
        marker = r.marker
        assert marker is not None and not marker.evaluate(windows), str(r)
        assert marker.evaluate(linux), str(r)


def test_installed_layout_finds_the_zoo_away_from_the_checkout(dist, tmp_path):
    # The wheel's files, used as an installed package from an empty folder:
    # protonet.zoo must find protonet/_zoo, not the checkout's zoo/.
    env = dict(os.environ, PYTHONPATH=dist.wheel_root)
    p = subprocess.run(
        [sys.executable, "-c",
         "import protonet.zoo as z; print(z.path('lenet_digits')); "
         "print(len(z.models()))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    folder, count = p.stdout.split()
    assert folder == os.path.join(dist.wheel_root, "protonet", "_zoo",
                                  "lenet_digits")
    assert int(count) == len(MODELS)
