"""Training-step time of one zoo net in the protonet tree at $TREE (for
interleaved A/B runs of two checkouts; medians, not best times).

    TREE=/path/a PYTHONPATH=/path/a python benchmarks/train_step_ab.py caffenet 16 15
    TREE=/path/b PYTHONPATH=/path/b python benchmarks/train_step_ab.py caffenet 16 15
"""
import sys, time, statistics, os
sys.path.insert(0, os.path.join(os.environ["TREE"], "benchmarks"))
import numpy as np
import run as bench
import protonet
name, batch = sys.argv[1], int(sys.argv[2])
net = protonet.Net(bench.net_param(name, batch, train=True), phase=protonet.TRAIN)
rng = np.random.default_rng(0)
for b in net.inputs:
    a = net.blobs[b].data
    a[...] = rng.integers(0, 10, a.shape) if b == "label" else rng.normal(size=a.shape)
ts = []
for i in range(int(sys.argv[3])):
    t = time.perf_counter()
    net.forward_from_to(); net.backward_from_to()
    ts.append(time.perf_counter() - t)
ts = ts[3:]
print(f"{os.path.basename(os.environ['TREE'])} {name} b{batch}: median {1000*statistics.median(ts):.1f} ms (min {1000*min(ts):.1f}, max {1000*max(ts):.1f})")
