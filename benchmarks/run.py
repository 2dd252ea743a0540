"""Speed and memory of protonet side by side with the runtimes users would
pick instead (PyTorch CPU, OpenCV dnn), on the zoo's prototxts.

    python benchmarks/run.py [--quick] [--nets lenet caffenet ...]
                             [--out benchmarks/results.md]

Every measurement runs in its own subprocess (so the peak RSS is that
measurement's alone), with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from
that subprocess's environment only (they can halve GEMM speed; see
benchmarks/README.md).  Runtimes are interleaved: for every round, every
(net, mode, batch) is measured by each runtime in turn, and the best time
over rounds and iterations is kept.  All runtimes use the same weights: a
caffemodel saved by protonet (OpenCV reads it; PyTorch gets the same arrays).
See benchmarks/README.md for what each column means.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import report

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.path.join(os.path.dirname(HERE), "zoo")
NETS = {  # name -> (zoo folder, inference batches, training batches)
    "lenet": ("lenet", (64, 1), (64,)),
    "cifar10_quick": ("cifar10_quick", (64, 1), (64,)),
    "caffenet": ("caffenet", (16, 1), (16,)),
    "googlenet": ("googlenet", (16, 1), ()),
    "vgg16": ("vgg16", (4, 1), ()),
    "resnet50": ("resnet50", (8, 1), ()),
}
RUNTIMES = ("protonet", "torch", "opencv")
DROP_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------------------
# Building the nets (used by the workers)


def net_param(name, batch, train=False):
    """The zoo deploy net with batch `batch`; `train` swaps the final Softmax
    for SoftmaxWithLoss on a label input (a fwd+bwd step as `caffe time`)."""
    from protonet import io as pio
    from protonet.proto import caffe_pb2
    p = pio.read_net(os.path.join(ZOO, NETS[name][0], "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[0] = batch
    if train:
        last = p.layer[-1]
        last.type = "SoftmaxWithLoss"
        last.bottom.append("label")
        last.top[0] = "loss"
        label = caffe_pb2.LayerParameter(name="label", type="Input",
                                         top=["label"])
        label.input_param.shape.add().dim.append(batch)
        p.layer.insert(1, label)
        p.state.phase = caffe_pb2.TRAIN
    return p


def randomize(net, seed=0):
    """He-normal weights, small biases, identity BatchNorm statistics and
    Scale: activations of realistic size all through the net (the zoo's
    deploy prototxts have no fillers, which would leave every weight 0)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            blobs[0].data[...] = 0
            blobs[1].data[...] = 1
            blobs[2].data[...] = 1
            continue
        if layer.type == "Scale":
            blobs[0].data[...] = 1
            if len(blobs) > 1:
                blobs[1].data[...] = 0
            continue
        for b in blobs:
            if b.num_axes >= 2:
                fan_in = b.count // b.shape[0]
                b.data[...] = rng.normal(0, np.sqrt(2 / fan_in), b.shape)
            else:
                b.data[...] = rng.normal(0, 0.01, b.shape)


def prepare(name, workdir):
    """Save one set of random weights per net: a caffemodel written by
    protonet (protonet and OpenCV read it) and deploy prototxts per batch."""
    from protonet import Net, io as pio
    weights = os.path.join(workdir, f"{name}.caffemodel")
    if not os.path.exists(weights):
        net = Net(net_param(name, 1))
        randomize(net)
        net.save(weights)
    for b in NETS[name][1]:
        pio.write_text(os.path.join(workdir, f"{name}_b{b}.prototxt"),
                       net_param(name, b))
    return weights


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} "
                     f"{i.get('architecture', '')} x{i.get('num_threads')}"
                     for i in threadpool_info() if i.get("user_api") == "blas")


# ---------------------------------------------------------------------------
# Worker: one measurement in this process


def _time(step, iters, budget):
    step()  # warm-up: buffers, caches, thread pools
    best, t_end, n = float("inf"), time.perf_counter() + budget, 0
    while n < iters or (time.perf_counter() < t_end and n < 4 * iters):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best


def set_threads(n, runtime="protonet"):
    """Use `n` threads in BLAS (threadpoolctl) and in the runtime measured
    (torch, OpenCV); 0 = the libraries' defaults (one per core).  A peer is
    imported only in its own measurement, so it adds nothing to another
    runtime's peak memory."""
    if not n:
        return
    from threadpoolctl import threadpool_limits
    threadpool_limits(n, user_api="blas")
    if runtime == "torch":
        import torch
        torch.set_num_threads(n)
    elif runtime == "opencv":
        import cv2
        cv2.setNumThreads(n)


def peak_rss_mib():
    """This process's peak resident memory.  VmHWM belongs to the process
    image; getrusage's ru_maxrss would carry the parent's peak across
    fork+exec on Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(job):
    import numpy as np
    name, mode, batch, rt = job["net"], job["mode"], job["batch"], job["runtime"]
    set_threads(job["threads"], rt)
    weights = job["weights"]
    rng = np.random.default_rng(0)
    train = mode == "train"
    from protonet import Net
    shape = (batch,) + tuple(net_param(name, 1).layer[0].input_param.shape[0]
                             .dim[1:])
    x = rng.random(shape, dtype=np.float32)
    labels = rng.integers(0, 10, batch).astype(np.float32)
    if rt == "protonet":
        if train:
            # A training step is forward + backward + the SGD (momentum,
            # weight decay) update, as the issue measures it.
            from protonet import caffe_pb2, get_solver
            sp = caffe_pb2.SolverParameter(
                net_param=net_param(name, batch, train), base_lr=0.001,
                lr_policy="fixed", momentum=0.9, weight_decay=5e-4,
                max_iter=1 << 30, display=0, snapshot_after_train=False,
                solver_mode=caffe_pb2.SolverParameter.CPU)
            sp.net_param.state.phase = caffe_pb2.TRAIN
            solver = get_solver(sp)
            net = solver.net
            if weights:
                net.copy_from(weights)
        else:
            net = Net(net_param(name, batch, train), weights=weights,
                      memory="inference")
        net.blobs["data"].data[...] = x
        if train:
            net.blobs["label"].data[...] = labels

            def step():
                # What `protonet train` runs: clear, forward, backward,
                # NaN/Inf check, update.
                solver.step(1)
        else:
            step = net.forward_from_to
    elif rt == "torch":
        import torch
        from peers import TorchNet
        src = Net(net_param(name, batch, train), weights=weights)
        tnet = TorchNet(src, requires_grad=train)
        del src
        inputs = {"data": torch.from_numpy(x), "label": torch.from_numpy(labels)}
        if train:
            opt = torch.optim.SGD(tnet.params, lr=0.001, momentum=0.9,
                                  weight_decay=5e-4)

            def step():
                opt.zero_grad(set_to_none=True)
                tnet(inputs, train=True)[1].backward()
                opt.step()
        else:
            def step():
                with torch.inference_mode():
                    tnet(inputs)
    elif rt == "opencv":
        import cv2
        cv_net = cv2.dnn.readNetFromCaffe(
            os.path.join(job["workdir"], f"{name}_b{batch}.prototxt"), weights)
        cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)

        def step():
            cv_net.setInput(x)
            cv_net.forward()
    else:
        raise SystemExit(f"unknown runtime {rt}")
    best = _time(step, job["iters"], job["budget"])
    peak = peak_rss_mib()
    return {"seconds": best, "img_s": batch / best, "peak_mib": peak,
            "blas": blas_info()}


# ---------------------------------------------------------------------------
# Per-layer profiles and the memory check (protonet only)


def layer_worker(job):
    """Forward (and backward for training) time of every layer (or of the
    convolutions only), with the same-shape sgemm reference."""
    import numpy as np
    from protonet import Net
    import layer_profile
    set_threads(job["threads"])
    name, batch, train = job["net"], job["batch"], job["mode"] == "train"
    net = Net(net_param(name, batch, train), weights=job["weights"])
    net.blobs["data"].data[...] = np.random.rand(*net.blobs["data"].shape)
    if train:
        net.blobs["label"].data[...] = np.random.randint(0, 10, batch)
    only = ("Convolution",) if job.get("convs") else None
    rows = layer_profile.layer_rows(net, train, job["reps"], only)
    return {"rows": rows, "peak_gflops": layer_profile.peak_gflops(),
            "blas": blas_info()}


def memory_job(job):
    import memory
    set_threads(job["threads"])
    res = memory.memory_worker(net_param(job["net"], job["batch"]),
                               job["weights"])
    res["blas"] = blas_info()
    return res


# ---------------------------------------------------------------------------
# Orchestration


def _run_job(job, env):
    out = subprocess.run([sys.executable, os.path.abspath(__file__),
                          "--worker", json.dumps(job)], env=env, cwd=HERE,
                         capture_output=True, text=True)
    if out.returncode:
        err = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": err[:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available(rt):
    mod = {"protonet": "protonet", "torch": "torch", "opencv": "cv2"}[rt]
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def _specs(values, default_mode=None):
    """Parse net:mode[:batch] (or net:batch with `default_mode`)."""
    out = []
    for spec in values:
        parts = spec.split(":")
        if default_mode:
            parts.insert(1, default_mode)
        n, mode = parts[0], parts[1]
        if n not in NETS or mode not in ("infer", "train"):
            raise SystemExit(f"bad profile spec {spec!r}: want net:"
                             f"{'batch' if default_mode else 'mode[:batch]'}"
                             f" with net in {sorted(NETS)}")
        batch = int(parts[2]) if len(parts) > 2 else (
            NETS[n][2][0] if mode == "train" else NETS[n][1][0])
        out.append((n, mode, batch))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one round, few iterations (minutes, not an hour)")
    ap.add_argument("--nets", nargs="*", choices=sorted(NETS),
                    default=list(NETS))
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES,
                    default=list(RUNTIMES))
    ap.add_argument("--layers", nargs="*", default=["cifar10_quick:train",
                                                    "caffenet:infer"],
                    help="per-layer profiles, as net:mode[:batch]")
    ap.add_argument("--convs", nargs="*", default=["caffenet:16", "vgg16:16",
                                                   "resnet50:16"],
                    help="convolution forward/backward against sgemm on "
                    "the same shapes, as net:batch (a training step)")
    ap.add_argument("--memory", nargs="*", default=["vgg16:1"],
                    help="inference peak memory against the issue's bound, "
                    "as net:batch")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for every runtime (BLAS, torch, OpenCV); "
                    "0 = their defaults (one per core)")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="do not unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE")
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        job = json.loads(a.worker)
        sys.path.insert(0, HERE)
        if job.get("runtime", "protonet") == "protonet":
            # Before NumPy, as the protonet CLI loads it: protonet sets
            # OpenBLAS's thread timeout, which OpenBLAS reads when it loads.
            import protonet  # noqa: F401
        kind = job.get("kind", "net")
        res = {"net": worker, "layers": layer_worker,
               "memory": memory_job}[kind](job)
        print(json.dumps(res))
        return 0

    rounds = a.rounds or (1 if a.quick else 3)
    iters, budget = (2, 1.0) if a.quick else (5, 4.0)
    env = dict(os.environ)
    if not a.keep_openblas_env:
        for k in DROP_ENV:
            env.pop(k, None)
    runtimes = [r for r in a.runtimes if _available(r)]
    layer_specs = _specs(a.layers)
    conv_specs = _specs(a.convs, "train")
    memory_specs = _specs(a.memory, "infer")
    workdir = tempfile.mkdtemp(prefix="protonet-bench-")
    needed = dict.fromkeys(list(a.nets) + [s[0] for s in layer_specs
                                           + conv_specs + memory_specs])
    weights = {n: prepare(n, workdir) for n in needed}
    jobs = [(n, "infer", b) for n in a.nets for b in NETS[n][1]] + \
        [(n, "train", b) for n in a.nets for b in NETS[n][2]]
    results = {}
    for r in range(rounds):
        for n, mode, b in jobs:
            for rt in runtimes:
                if rt == "opencv" and mode == "train":
                    continue
                job = dict(net=n, mode=mode, batch=b, runtime=rt, iters=iters,
                           budget=budget, weights=weights[n], workdir=workdir,
                           threads=a.threads)
                res = _run_job(job, env)
                key = (n, mode, b, rt)
                old = results.get(key)
                if old is None or "error" in old or \
                        res.get("seconds", 1e9) < old["seconds"]:
                    results[key] = res
                print(f"round {r + 1}/{rounds} {n:14s} {mode:5s} b{b:<3d} "
                      f"{rt:9s} " + (f"{res['img_s']:9.1f} img/s  "
                                     f"{res['peak_mib']:7.0f} MiB"
                                     if "img_s" in res else res["error"]),
                      flush=True)
    reps = 2 if a.quick else 4
    profiles, convs, memories = [], [], []
    for specs, out, extra in ((layer_specs, profiles, {}),
                              (conv_specs, convs, {"convs": True})):
        for n, mode, b in specs:
            res = _run_job(dict(kind="layers", net=n, mode=mode, batch=b,
                                reps=reps, weights=weights[n],
                                threads=a.threads, **extra), env)
            print(f"profile {n} {mode} b{b}: "
                  f"{res.get('error', 'done')}", flush=True)
            out.append((n, mode, b, res))
    for n, _, b in memory_specs:
        res = _run_job(dict(kind="memory", net=n, batch=b, weights=weights[n],
                            threads=a.threads), env)
        print(f"memory {n} b{b}: " + (f"{res['peak_mib']:.0f} MiB, "
                                      f"{res['ratio']:.2f} of the bound"
                                      if "ratio" in res else res["error"]),
              flush=True)
        memories.append((n, b, res))
    blas = next((v["blas"] for v in results.values() if "blas" in v),
                None) or next((r["blas"] for *_, r in profiles + convs
                               if "blas" in r), "?")
    text = report.render(a, rounds, runtimes, blas, results, profiles, convs,
                         memories, NETS)
    with open(a.out, "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
