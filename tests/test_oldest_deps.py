"""The focused subset that proves the oldest supported dependencies.

.ci/run runs this file in a second venv holding the oldest pair the README
promises (numpy 1.24, protobuf 4.21; h5py for the training case's HDF5
data); the main suite runs it on the newest versions.  It covers what a user
does first: import the generated schema, load a Caffe .caffemodel and
forward it as Caffe computed, train a few solver steps along Caffe's losses,
snapshot, and resume bit for bit.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import protonet
from protonet import io
from protonet.net import Net

REF = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_ref")


def _version(module):
    return tuple(int(x) for x in re.findall(r"\d+", module.__version__)[:2])


def test_dependencies_within_the_supported_ranges():
    import google.protobuf
    assert (1, 24) <= _version(np) < (3, 0), np.__version__
    assert (4, 21) <= _version(google.protobuf) < (8, 0), \
        google.protobuf.__version__


def test_generated_schema_imports_without_any_warning():
    # A gencode newer than the runtime raises VersionError at import; one a
    # major older warns on some runtimes.  -W error turns both into failures.
    p = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         "from protonet.proto import caffe_pb2; "
         "print(caffe_pb2.NetParameter(name='x').SerializeToString())"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "b'\\n\\x01x'"


@pytest.mark.parametrize("name", ["lenet", "cifar10_quick"])
def test_caffemodel_forward_matches_caffe(name):
    folder = os.path.join(REF, "nets", name)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    ref = np.load(os.path.join(folder, "io.npz"))
    net = Net(os.path.join(folder, "net.prototxt"),
              os.path.join(folder, "weights.caffemodel"), protonet.TEST)
    for blob in meta["inputs"]:
        net.blobs[blob].data[...] = ref["blob__" + blob]
    net.forward()
    for blob in meta["outputs"]:
        expected = ref["blob__" + blob]
        np.testing.assert_allclose(
            net.blobs[blob].data, expected, rtol=1e-4,
            atol=1e-5 * float(np.abs(expected).max()), err_msg=blob)


def _solver(case_dir, prefix):
    param = io.read_solver(os.path.join(case_dir, "solver.prototxt"))
    param.snapshot_prefix = prefix
    return protonet.get_solver(param)


def _steps(solver, n):
    losses = []
    for _ in range(n):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    return np.array(losses)


def test_solver_steps_follow_caffe_and_resume_bit_exactly(tmp_path, monkeypatch):
    pytest.importorskip("h5py", reason="the training case reads HDF5 data")
    case = tmp_path / "case"
    shutil.copytree(os.path.join(REF, "train", "sgd_momentum_step"), case)
    monkeypatch.chdir(case)  # Caffe opens the HDF5 list's names from here
    caffe_losses = np.load("losses.npy")

    solver = _solver(str(case), str(tmp_path / "snap"))
    solver.net.copy_from("init.caffemodel")
    first = _steps(solver, 8)
    model, state = solver.snapshot()
    then = _steps(solver, 8)
    np.testing.assert_allclose(np.concatenate([first, then]),
                               caffe_losses[:16], rtol=1e-4, atol=0)

    resumed = _solver(str(case), str(tmp_path / "again"))
    resumed.restore(state)
    assert resumed.iter == 8
    np.testing.assert_array_equal(_steps(resumed, 8), then)
    for name, blobs in solver.net.params.items():
        for j, blob in enumerate(blobs):
            np.testing.assert_array_equal(resumed.net.params[name][j].data,
                                          blob.data, err_msg=f"{name}[{j}]")
    # The snapshot's weights load into a plain Net and forward.
    net = Net("net.prototxt", model, protonet.TEST)
    net.forward()
    assert np.isfinite(float(net.blobs["loss"].data))


@pytest.mark.parametrize("double", [False, True])
def test_blob_values_read_back_bit_for_bit(double):
    # protobuf < 7 reads big blobs from the wire form (io._repeated_to_array):
    # every float32/float64 bit pattern must come back, data and diff alike.
    dtype = np.float64 if double else np.float32
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3, 5, 7)).astype(dtype)
    data.flat[:6] = [np.nan, -0.0, np.inf, -np.inf,
                     np.finfo(dtype).tiny / 4, np.finfo(dtype).max]
    diff = data[::-1].copy()
    if double:
        blob = io.caffe_pb2.BlobProto()
        blob.shape.dim.extend(data.shape)
        blob.double_data.extend(data.ravel().tolist())
        blob.double_diff.extend(diff.ravel().tolist())
    else:
        blob = io.array_to_blob(data, diff=diff)
    blob = io.caffe_pb2.BlobProto.FromString(blob.SerializeToString())
    got = io.blob_to_array(blob, dtype=dtype)
    got_diff = io.blob_diff_to_array(blob, dtype=dtype)
    assert got.tobytes() == data.tobytes()
    assert got_diff.tobytes() == diff.tobytes()
