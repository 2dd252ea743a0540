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
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

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


def prepare(name, workdir):
    """Save one set of random weights per net: a caffemodel written by
    protonet (protonet and OpenCV read it) and deploy prototxts per batch."""
    from protonet import Net, io as pio
    weights = os.path.join(workdir, f"{name}.caffemodel")
    if not os.path.exists(weights):
        Net(net_param(name, 1)).save(weights)
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


def set_threads(n):
    """Use `n` threads in BLAS (threadpoolctl), torch and OpenCV; 0 = the
    libraries' defaults (one per core)."""
    if not n:
        return
    from threadpoolctl import threadpool_limits
    threadpool_limits(n, user_api="blas")
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import cv2
        cv2.setNumThreads(n)
    except ImportError:
        pass


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
    set_threads(job["threads"])
    name, mode, batch, rt = job["net"], job["mode"], job["batch"], job["runtime"]
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
                net.clear_param_diffs()
                net.forward_from_to()
                net.backward_from_to()
                solver.apply_update()
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
# Per-layer profile of protonet vs the machine's sgemm on the same shapes


def _gemm_shapes(layer, bottom, top):
    """(M, K, N, count) of the forward GEMMs of a Convolution/InnerProduct
    (the whole batch as one GEMM per group), or None."""
    if layer.type == "Convolution":
        import numpy as np
        g = layer.group
        K = layer.channels // g * int(np.prod(layer.kernel))
        N = top[0].count // top[0].shape[1] if top[0].num_axes else 1
        return layer.num_output // g, K, N, g
    if layer.type == "InnerProduct":
        return layer.blobs[0].shape[0], layer.blobs[0].shape[1], \
            bottom[0].shape[0], 1
    return None


def _sgemm_gflops(M, K, N, count, reps=5):
    import numpy as np
    a = np.random.rand(M, K).astype(np.float32)
    b = np.random.rand(K, N).astype(np.float32)
    c = np.empty((M, N), np.float32)
    best = float("inf")
    np.matmul(a, b, out=c)
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(count):
            np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2.0 * M * K * N * count / best / 1e9


def layer_worker(job):
    """Forward (and backward for training) time of every layer, best of
    `reps`, with FLOPs of the GEMM layers and the same-shape sgemm rate."""
    import numpy as np
    from protonet import Net
    set_threads(job["threads"])
    name, batch, train = job["net"], job["batch"], job["mode"] == "train"
    net = Net(net_param(name, batch, train), weights=job["weights"])
    net.blobs["data"].data[...] = np.random.rand(*net.blobs["data"].shape)
    if train:
        net.blobs["label"].data[...] = np.random.randint(0, 10, batch)
    n = len(net.layers)
    fwd, bwd = [float("inf")] * n, [float("inf")] * n
    for _ in range(job["reps"]):
        for i in range(n):
            b, t, layer = net.bottom_vecs[i], net.top_vecs[i], net.layers[i]
            t0 = time.perf_counter()
            layer.reshape(b, t)
            layer.forward(b, t)
            fwd[i] = min(fwd[i], time.perf_counter() - t0)
        if train:
            for i in reversed(range(n)):
                if net.layer_need_backward[i]:
                    t0 = time.perf_counter()
                    net.layers[i].backward(net.top_vecs[i],
                                           net.bottom_need_backward[i],
                                           net.bottom_vecs[i])
                    bwd[i] = min(bwd[i], time.perf_counter() - t0)
    rows = []
    for i, layer in enumerate(net.layers):
        shapes = _gemm_shapes(layer, net.bottom_vecs[i], net.top_vecs[i])
        row = {"layer": net.layer_names[i], "type": layer.type,
               "fwd_ms": fwd[i] * 1e3,
               "bwd_ms": bwd[i] * 1e3 if bwd[i] < float("inf") else None}
        if shapes:
            M, K, N, g = shapes
            flops = 2.0 * M * K * N * g
            row.update(gemm=f"{M}x{K}x{N}" + (f" x{g}" if g > 1 else ""),
                       fwd_gflops=flops / fwd[i] / 1e9,
                       bwd_gflops=2 * flops / bwd[i] / 1e9
                       if row["bwd_ms"] else None,
                       sgemm_gflops=_sgemm_gflops(M, K, N, g))
        rows.append(row)
    return {"rows": rows, "peak_gflops": _sgemm_gflops(2048, 2048, 2048, 1, 3),
            "blas": blas_info()}


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


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one round, few iterations (minutes, not an hour)")
    ap.add_argument("--nets", nargs="+", choices=sorted(NETS),
                    default=list(NETS))
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES,
                    default=list(RUNTIMES))
    ap.add_argument("--layers", nargs="*", default=["cifar10_quick:train",
                                                    "caffenet:infer"],
                    help="per-layer profiles, as net:mode")
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
        res = layer_worker(job) if job.get("layers") else worker(job)
        print(json.dumps(res))
        return 0

    rounds = a.rounds or (1 if a.quick else 3)
    iters, budget = (2, 1.0) if a.quick else (5, 4.0)
    env = dict(os.environ)
    if not a.keep_openblas_env:
        for k in DROP_ENV:
            env.pop(k, None)
    runtimes = [r for r in a.runtimes if _available(r)]
    workdir = tempfile.mkdtemp(prefix="protonet-bench-")
    weights = {n: prepare(n, workdir) for n in a.nets}
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
    profiles = []
    for spec in a.layers:
        n, mode = spec.split(":")
        if n not in weights:
            continue
        b = NETS[n][2][0] if mode == "train" else NETS[n][1][0]
        res = _run_job(dict(net=n, mode=mode, batch=b, layers=True,
                            reps=2 if a.quick else 4, weights=weights[n],
                            threads=a.threads), env)
        profiles.append((n, mode, b, res))
    blas = next((v["blas"] for v in results.values() if "blas" in v), "?")
    write_report(a, results, profiles, runtimes, blas, rounds)
    return 0


def write_report(a, results, profiles, runtimes, blas, rounds):
    import numpy as np
    try:
        import torch
        tv = f"torch {torch.__version__}"
    except ImportError:
        tv = "torch not installed"
    try:
        import cv2
        cvv = f"OpenCV {cv2.__version__}"
    except ImportError:
        cvv = "OpenCV not installed"
    lines = [
        "# protonet benchmark results", "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}; load average at the end "
        f"{os.getloadavg()[0]:.1f}",
        f"- BLAS (numpy {np.__version__}): {blas}",
        f"- peers: {tv}; {cvv}",
        f"- threads: {a.threads or 'library defaults'} for every runtime",
        f"- mode: {'quick' if a.quick else 'full'}, {rounds} round(s), best "
        f"time kept; OPENBLAS_CORETYPE/L2_SIZE "
        f"{'kept' if a.keep_openblas_env else 'unset for the runs'}",
        "", "## Whole nets (images/s, higher is better; peak RSS in MiB)", "",
        "| net | mode | batch | " + " | ".join(
            f"{r} img/s | {r} MiB" for r in runtimes) +
        " | protonet / " + " | protonet / ".join(runtimes[1:]) + " |",
        "|" + "---|" * (3 + 2 * len(runtimes) + len(runtimes) - 1)]
    for (n, mode, b) in sorted({k[:3] for k in results},
                               key=lambda k: (list(NETS).index(k[0]),
                                              k[1], -k[2])):
        cells = []
        ips = {}
        for rt in runtimes:
            r = results.get((n, mode, b, rt), {})
            ips[rt] = r.get("img_s")
            cells += [_fmt(r.get("img_s")) if "error" not in r else "error",
                      _fmt(r.get("peak_mib"), ".0f")]
        ratios = [_fmt(ips["protonet"] / ips[rt], ".2f")
                  if ips.get("protonet") and ips.get(rt) else "-"
                  for rt in runtimes[1:]]
        lines.append(f"| {n} | {mode} | {b} | " + " | ".join(cells + ratios)
                     + " |")
    for n, mode, b, res in profiles:
        if "rows" not in res:
            lines += ["", f"Per-layer profile {n} {mode}: {res.get('error')}"]
            continue
        peak = res["peak_gflops"]
        lines += ["", f"## Per-layer: {n}, {mode}, batch {b}", "",
                  f"sgemm peak measured in the same run (2048^3): "
                  f"{peak:.0f} GFLOP/s", "",
                  "| layer | type | fwd ms | bwd ms | GEMM MxKxN | fwd GFLOP/s"
                  " | bwd GFLOP/s | same-shape sgemm GFLOP/s | fwd / sgemm |"
                  " fwd / peak |", "|" + "---|" * 10]
        for r in res["rows"]:
            if r["fwd_ms"] < 0.05 and not r.get("bwd_ms"):
                continue
            s = r.get("sgemm_gflops")
            f = r.get("fwd_gflops")
            lines.append(
                f"| {r['layer']} | {r['type']} | {r['fwd_ms']:.2f} | "
                f"{_fmt(r['bwd_ms'], '.2f')} | {r.get('gemm', '')} | "
                f"{_fmt(f)} | {_fmt(r.get('bwd_gflops'))} | {_fmt(s)} | "
                f"{_fmt(f / s if f and s else None, '.2f')} | "
                f"{_fmt(f / peak if f else None, '.2f')} |")
    text = "\n".join(lines) + "\n"
    with open(a.out, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
