"""Scripts that use pycaffe's API the way Caffe's example notebooks and
python/*.py tools do, run unmodified with `protonet run` (so `import caffe`
is protonet) on tiny nets and local data.

Each script lives in tests/fixtures/pycaffe_scripts and names the notebook
it follows; the downloads of the originals (CaffeNet weights, ImageNet mean,
PASCAL, MNIST) are replaced by what `model()` and the tests write here.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import protonet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "fixtures", "pycaffe_scripts")

# A CaffeNet in miniature: conv-relu-pool-norm, fc-relu-dropout, fc, softmax.
DEPLOY = """
name: "MiniNet"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 19 dim: 19 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2
          weight_filler { type: "gaussian" std: 0.05 }
          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "fc6" type: "InnerProduct" bottom: "norm1" top: "fc6"
        inner_product_param { num_output: 16
          weight_filler { type: "gaussian" std: 0.05 }
          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc6" top: "fc8"
        inner_product_param { num_output: 5
          weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""
LABELS = ["n0 red", "n1 green", "n2 blue", "n3 dark", "n4 bright"]


def model(folder):
    """Deploy prototxt, weights (named with a comma, as the fine-tuning
    notebook's), a 3 x 24 x 24 mean image, labels and three photos."""
    paths = {"deploy": folder / "deploy.prototxt",
             "weights": folder / "mini, v1.caffemodel",
             "mean": folder / "mean.npy", "labels": folder / "synsets.txt"}
    paths["deploy"].write_text(DEPLOY)
    protonet.set_random_seed(3)
    protonet.Net(str(paths["deploy"]), protonet.TEST).save(
        str(paths["weights"]))
    rng = np.random.default_rng(0)
    np.save(paths["mean"], 100 + 30 * rng.random((3, 24, 24)))
    paths["labels"].write_text("\n".join(LABELS) + "\n")
    (folder / "images").mkdir()
    for i in range(3):
        photo = (rng.random((30, 26, 3)) * 255).astype(np.uint8)
        Image.fromarray(photo).save(folder / "images" / f"im{i}.png")
    paths["image"] = folder / "images" / "im0.png"
    return {k: str(v) for k, v in paths.items()}


def protonet_run(script, *args, cwd, allow_python_layer=False):
    """`protonet run [--allow-python-layer] script args...` in a fresh
    interpreter; returns the completed process (exit status checked)."""
    env = dict(os.environ)
    env.pop("PROTONET_ALLOW_PYTHON_LAYER", None)
    env["PYTHONPATH"] = ROOT
    env["MPLBACKEND"] = "Agg"
    cmd = [sys.executable, "-m", "protonet.cli", "run"]
    if allow_python_layer:
        cmd.append("--allow-python-layer")
    proc = subprocess.run(cmd + [os.path.join(SCRIPTS, script), *args],
                          cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def result(proc):
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[-1][len("RESULT "):])


def test_classification_notebook(tmp_path):
    m = model(tmp_path)
    r = result(protonet_run("classification.py", m["deploy"], m["weights"],
                            m["mean"], m["image"], m["labels"], cwd=tmp_path))
    # Checked against protonet used directly (pycaffe's API, no alias).
    net = protonet.Net(m["deploy"], m["weights"], protonet.TEST)
    t = protonet.io.Transformer({"data": net.blobs["data"].data.shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.load(m["mean"]).mean(1).mean(1))
    t.set_raw_scale("data", 255)
    t.set_channel_swap("data", (2, 1, 0))
    x = t.preprocess("data", protonet.io.load_image(m["image"]))
    prob = net.forward(data=np.stack([x, x]))["prob"][0]
    assert r["label"] == LABELS[prob.argmax()]
    assert r["top"] == [int(i) for i in prob.argsort()[::-1][:3]]
    assert r["prob_sum"] == pytest.approx(1, abs=1e-5)
    assert r["batch_rows_agree"] < 1e-6
    assert r["blobs"][0] == ["data", [6, 3, 19, 19]]
    assert [b[0] for b in r["blobs"]] == ["data", "conv1", "pool1", "norm1",
                                          "fc6", "fc8", "prob"]
    assert r["params"][0] == ["conv1", [8, 3, 3, 3], [8]]
    assert r["filters_range"] == [0.0, 1.0] and r["feat_shape"] == [4, 9, 9]
    assert r["restored_error"] < 1e-4
    assert r["classifier_prob_sum"] == pytest.approx(1, abs=1e-5)


def test_classify_py_with_a_mean_of_another_size(tmp_path):
    m = model(tmp_path)
    common = ["--model_def", m["deploy"], "--pretrained_model", m["weights"],
              "--mean_file", m["mean"], "--images_dim", "24,24"]
    protonet_run("classify.py", m["image"], "one.npy", *common, cwd=tmp_path)
    protonet_run("classify.py", str(tmp_path / "images"), "all.npy",
                 "--ext", "png", "--center_only", *common, cwd=tmp_path)
    one, every = np.load(tmp_path / "one.npy"), np.load(tmp_path / "all.npy")
    assert one.shape == (1, 5) and every.shape == (3, 5)
    np.testing.assert_allclose(every.sum(1), 1, rtol=1e-5)
    # The same prediction made with protonet's Classifier directly.
    clf = protonet.Classifier(m["deploy"], m["weights"], image_dims=(24, 24),
                              mean=np.load(m["mean"]), raw_scale=255,
                              channel_swap=(2, 1, 0))
    image = protonet.io.load_image(m["image"])
    np.testing.assert_allclose(one, clf.predict([image]), rtol=1e-5)
    np.testing.assert_allclose(every[:1], clf.predict([image], False),
                               rtol=1e-5)


def test_net_surgery_notebook(tmp_path):
    m = model(tmp_path)
    r = result(protonet_run("net_surgery.py", m["deploy"], m["weights"],
                            m["image"], str(tmp_path), cwd=tmp_path))
    assert r["conv_shapes"] == [[3, 1, 5, 5], [3]]
    assert r["blurred_shape"] == [26, 22]          # 30 x 26 image, 5 x 5 blur
    assert r["blurred_mean"] == pytest.approx(r["image_mean_inner"], abs=0.02)
    assert r["zeros_max"] == 0
    assert r["prob_map_shape"] == [1, 5, 5, 5] and r["score_map_shape"] == [5, 5]
    assert r["corner_error"] < 1e-5                # the transplant is exact
    assert r["reloaded_equal"]


def style_images(folder, n=12):
    """Two 'styles' of 24 x 24 photos (warm and cool), list files in
    ImageData's format and their mean as a binaryproto."""
    rng = np.random.default_rng(7)
    lines, images = [], []
    for i in range(n):
        label = i % 2
        photo = rng.random((24, 24, 3)) * 0.4
        photo[..., 0 if label == 0 else 2] += 0.6
        photo = (photo * 255).astype(np.uint8)
        name = f"style{i}.png"
        Image.fromarray(photo).save(folder / name)
        lines.append(f"{folder / name} {label}")
        images.append(photo[..., ::-1].transpose(2, 0, 1))     # BGR, C x H x W
    (folder / "train.txt").write_text("\n".join(lines[:8]) + "\n")
    (folder / "test.txt").write_text("\n".join(lines[8:]) + "\n")
    mean = np.mean(images, axis=0, dtype=np.float64)[None]
    with open(folder / "mean.binaryproto", "wb") as f:
        f.write(protonet.io.array_to_blobproto(mean).SerializeToString())
    return [str(folder / p) for p in ("train.txt", "test.txt",
                                      "mean.binaryproto")]


def test_fine_tuning_notebook(tmp_path):
    m = model(tmp_path)
    train, test, mean = style_images(tmp_path)
    r = result(protonet_run("fine_tuning.py", str(tmp_path), m["weights"],
                            train, test, mean, cwd=tmp_path))
    assert r["probs_sum"] == pytest.approx(1, abs=1e-5)
    assert r["loss_finite"]
    assert r["frozen_unchanged"] and r["classifier_changed"]
    assert r["pretrained_conv1_loaded"]
    assert set(r["test_acc"]) == {"pretrained", "scratch"}
    assert all(0 <= a <= 1 for a in r["test_acc"].values())
    assert r["weights"] == ["weights.pretrained.caffemodel",
                            "weights.scratch.caffemodel"]
    assert (tmp_path / r["end_to_end_weights"]).is_file()


def test_brewing_logreg_notebook(tmp_path):
    r = result(protonet_run("brewing_logreg.py", str(tmp_path), cwd=tmp_path))
    assert r["iter"] == 200
    # 10 % of the labels are flipped: about 0.9 is the best possible.
    assert r["caffe"]["logreg"] > 0.8 and r["caffe"]["nonlinear"] > 0.7
    assert (tmp_path / "logreg_iter_200.caffemodel").is_file()


def multilabel_images(folder, n=16):
    """19 x 19 photos with a bright square in some of their four quadrants;
    label k is set when quadrant k has one."""
    rng = np.random.default_rng(11)
    lines = []
    for i in range(n):
        present = [k for k in range(4) if rng.random() < 0.5] or [i % 4]
        photo = rng.random((19, 19, 3)) * 0.3
        for k in present:
            y, x = (k // 2) * 10, (k % 2) * 10
            photo[y:y + 9, x:x + 9] += 0.7
        name = folder / f"ml{i}.png"
        Image.fromarray((photo.clip(0, 1) * 255).astype(np.uint8)).save(name)
        lines.append(f"{name} {','.join(str(k) for k in present)}")
    (folder / "ml_train.txt").write_text("\n".join(lines[:12]) + "\n")
    (folder / "ml_test.txt").write_text("\n".join(lines[12:]) + "\n")
    return str(folder / "ml_train.txt"), str(folder / "ml_test.txt")


def test_multilabel_python_data_layer_notebook(tmp_path):
    m = model(tmp_path)
    train, test = multilabel_images(tmp_path)
    r = result(protonet_run("multilabel.py", str(tmp_path), m["weights"],
                            train, test, cwd=tmp_path,
                            allow_python_layer=True))
    assert r["image_shape"] == [19, 19, 3]
    assert r["labels_multi_hot"] and min(r["labels_per_image"]) >= 1
    assert r["shared"]
    assert r["last_loss"] < r["first_loss"]
    assert r["after"] > r["before"]              # hamming accuracy


def test_siamese_example(tmp_path):
    r = result(protonet_run("siamese.py", str(tmp_path), cwd=tmp_path))
    assert r["shared"]                          # parameters shared by name
    assert r["last_loss"] < r["first_loss"]
    assert r["feat_shape"] == [25, 2]           # forward_all beyond batch 10
    assert r["within"] < r["between"]           # classes form clusters


def test_detect_py_with_context_padding(tmp_path):
    m = model(tmp_path)
    image = protonet.io.load_image(m["image"])              # 30 x 26
    windows = [(0, 0, 20, 20), (5, 3, 29, 25), (10, 10, 18, 16)]
    lines = ["filename,ymin,xmin,ymax,xmax"] + [
        f"{m['image']},{y0},{x0},{y1},{x1}" for y0, x0, y1, x1 in windows]
    (tmp_path / "windows.csv").write_text("\n".join(lines) + "\n")
    protonet_run("detect.py", "windows.csv", "out.csv",
                 "--model_def", m["deploy"], "--pretrained_model",
                 m["weights"], "--mean_file", m["mean"], "--context_pad", "2",
                 cwd=tmp_path)
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "filename,ymin,xmin,ymax,xmax," + ",".join(
        f"class{i}" for i in range(5))
    scores = np.array([[float(v) for v in r.split(",")[5:]] for r in rows[1:]])
    # The same windows through protonet's Detector directly.
    det = protonet.Detector(m["deploy"], m["weights"],
                            mean=np.load(m["mean"]).mean(1).mean(1),
                            raw_scale=255, channel_swap=(2, 1, 0),
                            context_pad=2)
    ref = det.detect_windows([(image, [np.array(w) for w in windows])])
    np.testing.assert_allclose(scores, [d["prediction"] for d in ref],
                               atol=2e-6)


def test_draw_net_py(tmp_path):
    m = model(tmp_path)
    protonet_run("draw_net.py", m["deploy"], "net.dot", "--phase", "TEST",
                 cwd=tmp_path)
    if shutil.which("dot"):         # PNG needs Graphviz (.ci/run installs it)
        protonet_run("draw_net.py", m["deploy"], "net.png", "--rankdir", "TB",
                     cwd=tmp_path)
        assert (tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dot = (tmp_path / "net.dot").read_text()
    assert re.search(r'rankdir="?LR"?;', dot)     # draw_net.py's default
    assert "conv1\\n(Convolution)" in dot and "fc8\\n(InnerProduct)" in dot


def test_caffe_io_helpers(tmp_path):
    m = model(tmp_path)
    _, _, mean_proto = style_images(tmp_path)                # 1 x 3 x 24 x 24
    r = result(protonet_run("io_helpers.py", str(tmp_path), m["image"],
                            mean_proto, cwd=tmp_path))
    assert r["mean_shape"] == [3, 24, 24] and r["again_shape"] == [1, 3, 24, 24]
    assert r["datum_equal"] and r["datum_dtype"] == "uint8"
    assert r["labels"] == [0, 1, 2]
    assert r["float_datum_error"] < 1e-4
    assert r["vector_shapes"] == [[1, 3, 24, 24]] * 2 and r["vector_equal"]
    assert r["resized"] == [32, 32, 3] and r["crops"] == [10, 19, 19, 3]
    assert r["mirror_equal"] and r["gray"] == [30, 26, 1]
    assert r["blob_in"] == [3, 19, 19] and r["restored_error"] < 1e-5
    np.testing.assert_allclose(np.load(tmp_path / "mean.npy"),
                               protonet.io.read_binaryproto(mean_proto)[0])
