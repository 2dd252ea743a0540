"""The markdown report of benchmarks/run.py (see benchmarks/README.md for
what every column means)."""

import datetime
import os
import platform

# The performance issue's targets for convolution layers (fractions of the
# same-shape sgemm) and for inference memory (multiple of the bound).
CONV_FWD_TARGET = 0.8
CONV_BWD_TARGET = 0.7
MEMORY_TARGET = 1.3


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def _versions():
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
    return tv, cvv


def header(a, rounds, blas):
    import numpy as np
    tv, cvv = _versions()
    return [
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
        f"{'kept' if a.keep_openblas_env else 'unset for the runs'}"]


def whole_nets(results, runtimes, nets):
    lines = ["", "## Whole nets (images/s, higher is better; peak RSS in MiB)",
             "",
             "| net | mode | batch | " + " | ".join(
                 f"{r} img/s | {r} MiB" for r in runtimes) +
             "".join(f" | protonet / {r}" for r in runtimes[1:]) + " |",
             "|" + "---|" * (3 + 3 * len(runtimes) - 1)]
    for (n, mode, b) in sorted({k[:3] for k in results},
                               key=lambda k: (list(nets).index(k[0]),
                                              k[1], -k[2])):
        cells, ips = [], {}
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
    return lines


def layer_table(n, mode, b, res):
    if "rows" not in res:
        return ["", f"Per-layer profile {n} {mode}: {res.get('error')}"]
    peak = res["peak_gflops"]
    lines = ["", f"## Per-layer: {n}, {mode}, batch {b}", "",
             f"sgemm peak measured in the same run (2048^3): {peak:.0f} "
             f"GFLOP/s", "",
             "| layer | type | fwd ms | bwd ms | GEMM MxKxN | fwd GFLOP/s | "
             "bwd GFLOP/s | fwd / sgemm | bwd / sgemm | fwd / peak |",
             "|" + "---|" * 10]
    for r in res["rows"]:
        if r["fwd_ms"] < 0.05 and not r.get("bwd_ms"):
            continue
        f = r.get("fwd_gflops")
        lines.append(
            f"| {r['layer']} | {r['type']} | {r['fwd_ms']:.2f} | "
            f"{_fmt(r['bwd_ms'], '.2f')} | {r.get('gemm', '')} | "
            f"{_fmt(f)} | {_fmt(r.get('bwd_gflops'))} | "
            f"{_fmt(r.get('fwd_ratio'), '.2f')} | "
            f"{_fmt(r.get('bwd_ratio'), '.2f')} | "
            f"{_fmt(f / peak if f else None, '.2f')} |")
    return lines


def conv_table(n, b, res):
    """Convolutions of one net: ratios to the same-shape sgemm, how many
    layers reach the targets, and the time-weighted whole."""
    if "rows" not in res:
        return ["", f"Convolution profile {n}: {res.get('error')}"]
    rows = res["rows"]
    lines = ["", f"### {n}, batch {b} (training step; sgemm 2048^3: "
             f"{res['peak_gflops']:.0f} GFLOP/s)", "",
             "| layer | GEMM MxKxN | fwd ms | sgemm fwd ms | fwd / sgemm | "
             "bwd ms | sgemm bwd ms | bwd / sgemm |", "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['gemm']} | {r['fwd_ms']:.2f} | "
            f"{r['ref_fwd_ms']:.2f} | {r['fwd_ratio']:.2f} | "
            f"{_fmt(r['bwd_ms'], '.2f')} | {_fmt(r.get('ref_bwd_ms'), '.2f')}"
            f" | {_fmt(r.get('bwd_ratio'), '.2f')} |")
    with_bwd = [r for r in rows if r.get("bwd_ratio")]
    fwd_ok = sum(r["fwd_ratio"] >= CONV_FWD_TARGET for r in rows)
    bwd_ok = sum(r["bwd_ratio"] >= CONV_BWD_TARGET for r in with_bwd)
    fwd_all = sum(r["ref_fwd_ms"] for r in rows) / sum(r["fwd_ms"]
                                                      for r in rows)
    bwd_all = sum(r["ref_bwd_ms"] for r in with_bwd) / max(
        1e-9, sum(r["bwd_ms"] for r in with_bwd))
    lines += ["", f"{n}: forward >= {CONV_FWD_TARGET} of sgemm in {fwd_ok}/"
              f"{len(rows)} layers, backward >= {CONV_BWD_TARGET} in "
              f"{bwd_ok}/{len(with_bwd)}; all layers together (sgemm time / "
              f"protonet time): forward {fwd_all:.2f}, backward "
              f"{bwd_all:.2f}"]
    return lines


def memory_table(memories):
    lines = ["", "## Inference memory (memory=\"inference\", weights loaded)",
             "", "| net | batch | peak MiB | weights MiB | largest pair MiB | "
             "largest im2col MiB | bound MiB | peak / bound |",
             "|" + "---|" * 8]
    for n, b, r in memories:
        if "ratio" not in r:
            lines.append(f"| {n} | {b} | error: {r.get('error')} |")
            continue
        lines.append(
            f"| {n} | {b} | {r['peak_mib']:.0f} | {r['weights_mib']:.0f} | "
            f"{r['pair_mib']:.1f} | {r['im2col_mib']:.1f} | "
            f"{r['bound_mib']:.0f} | {r['ratio']:.2f} |")
    lines += ["", f"Target: peak / bound <= {MEMORY_TARGET}.  Peak = the "
              "process's peak resident memory during two forwards after the "
              "weights are loaded, minus its resident memory before the net "
              "was made."]
    return lines


def render(a, rounds, runtimes, blas, results, profiles, convs, memories,
           nets):
    lines = header(a, rounds, blas)
    if results:
        lines += whole_nets(results, runtimes, nets)
    for n, mode, b, res in profiles:
        lines += layer_table(n, mode, b, res)
    if convs:
        lines += ["", "## Convolutions against sgemm on the same shapes", "",
                  f"Targets: forward >= {CONV_FWD_TARGET}, backward >= "
                  f"{CONV_BWD_TARGET} of numpy's sgemm on each layer's own "
                  "GEMMs (Winograd layers can exceed 1)."]
        for n, _, b, res in convs:
            lines += conv_table(n, b, res)
    if memories:
        lines += memory_table(memories)
    return "\n".join(lines) + "\n"
