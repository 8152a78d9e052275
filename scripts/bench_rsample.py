"""Benchmark: forward + backward time of a mixture sample's pathwise gradient.

Writes ``results/benchmarks/mixture_rsample.md`` (and ``..._cuda.md`` section when a GPU is present). For each
(B, K, D) it times, in one process on one thread, the median of ``rsample`` + ``backward`` of

- ``normal``:    a plain diagonal Normal rsample of shape [B, D] (the K = 1 floor),
- ``graves``:    DiagGaussianMixture.rsample with the default backend ("auto": the C kernel on CPU, compiled
                 PyTorch on CUDA); the columns ``compiled`` and ``eager`` are the same with the torch.compile'd
                 and the plain PyTorch backward (CPU only: on CUDA the default is the compiled one),
- ``enumerate``: K reparameterized samples, one per component, weighted by pi (the exact-enumeration cost),
- ``pyro``:      pyro.distributions.MixtureOfDiagNormals (the nearest published peer; O(K^2 D)).

The loss is sum(z * g) with a fixed random g, so every method does the same downstream work.

    python scripts/bench_rsample.py [--quick] [--device cpu|cuda|all] [--out results/benchmarks]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import hardware, header  # noqa: E402

from mixvae.distributions import DiagGaussianMixture  # noqa: E402
from mixvae.distributions import graves_transform as gt  # noqa: E402

try:
    from pyro.distributions import MixtureOfDiagNormals
except ImportError:  # pyro is a dev extra; the column is left empty without it
    MixtureOfDiagNormals = None


def time_interleaved(methods, device, budget_s=3.0, min_reps=3, block=3):
    """Median wall time (ms) of each method, the methods taking turns so that load from other processes falls
    on all of them alike. ``methods``: name -> (fn, max_reps). A turn is one untimed call (caches and the
    allocator warmed for this method, not the one before it) and then up to ``block`` timed calls; methods
    with max_reps <= 5 (the slow ones) skip the untimed call. A method stops at its max_reps, and every method
    once min_reps are done and ~budget_s have passed."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for fn, _ in methods.values():
        fn()
        sync()
    times = {name: [] for name in methods}
    start = time.perf_counter()
    while True:
        late = time.perf_counter() - start > budget_s
        active = [n for n, (_, cap) in methods.items()
                  if len(times[n]) < cap and (len(times[n]) < min(min_reps, cap) or not late)]
        if not active:
            break
        for name in active:
            fn, cap = methods[name]
            if cap > 5:
                fn()
                sync()
            for _ in range(min(block, cap - len(times[name]))):
                t = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def with_backend(name, fn):
    def run():
        gt.set_backend(name)
        try:
            fn()
        finally:
            gt.set_backend("auto")
    return run


def make_methods(b, k, d, device):
    g = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape, positive=False):
        t = torch.randn(*shape, generator=g)
        t = t.abs() + 0.5 if positive else t
        return t.to(device).requires_grad_()

    logits, loc, scale = leaf(b, k), leaf(b, k, d), leaf(b, k, d, positive=True)
    loc1, scale1 = leaf(b, d), leaf(b, d, positive=True)
    weight = torch.randn(b, d, generator=g).to(device)

    def normal():
        z = loc1 + scale1 * torch.randn(b, d, device=device)
        (z * weight).sum().backward()

    def graves():
        z = DiagGaussianMixture(logits, loc, scale, validate_args=False).rsample()
        (z * weight).sum().backward()

    def enumerate_():
        z = loc + scale * torch.randn(b, 1, d, device=device)  # [B, K, D], one eps shared by the components
        (logits.softmax(-1) * (z * weight.unsqueeze(1)).sum(-1)).sum().backward()

    def pyro():
        z = MixtureOfDiagNormals(loc, scale, logits).rsample()
        (z * weight).sum().backward()

    return {"normal": normal, "graves": graves, "enumerate": enumerate_, "pyro": pyro}


def run(device, grid, pyro_budget_ms):
    rows = []
    for b, k, d in grid:
        methods = make_methods(b, k, d, device)
        # the eager backward and Pyro's O(K^2 D) one are slow at the large sizes: a few calls there
        eager_ms = 0.03 * b * k * d / 1000  # rough: ~30 ns per (sample, component, dimension)
        slow = eager_ms * k / 2 > pyro_budget_ms
        timed = {
            "normal": (methods["normal"], 40),
            "graves": (with_backend("auto", methods["graves"]), 40),
            "eager": (with_backend("eager", methods["graves"]), 5 if eager_ms > 300 else 40),
            "enumerate": (methods["enumerate"], 40),
        }
        if device == "cpu":
            timed["compiled"] = (with_backend("compile", methods["graves"]), 40)
        if MixtureOfDiagNormals is not None:
            timed["pyro"] = (methods["pyro"], 2 if slow else 40)
        row = {"B": b, "K": k, "D": d, "compiled": float("nan"), "pyro": float("nan")}
        row.update(time_interleaved(timed, device))
        rows.append(row)
        print(
            f"{device} B={b:5d} K={k:3d} D={d:4d}  normal {row['normal']:8.3f}  graves {row['graves']:8.2f}  "
            f"compiled {row['compiled']:8.2f}  eager {row['eager']:8.2f}  enumerate {row['enumerate']:7.2f}  "
            f"pyro {row['pyro']:9.1f} ms",
            flush=True,
        )
    return rows


def table(rows):
    lines = [
        "| B | K | D | normal (ms) | graves (ms) | graves compiled (ms) | graves eager (ms) | enumerate (ms) "
        "| pyro (ms) | pyro / graves | graves / normal |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['B']} | {r['K']} | {r['D']} | {r['normal']:.3f} | {r['graves']:.2f} | {r['compiled']:.2f} "
            f"| {r['eager']:.2f} "
            f"| {r['enumerate']:.2f} | {r['pyro']:.1f} | {r['pyro'] / r['graves']:.1f}x "
            f"| {r['graves'] / r['normal']:.1f}x |"
        )
    return lines


def linearity(rows, b=1000):
    """Time ratios when K or D grows 4x (linear cost: about 4)."""
    by = {(r["B"], r["K"], r["D"]): r["graves"] for r in rows}
    out = []
    for k1, k2, d in [(10, 40, 50), (10, 40, 200)]:
        if (b, k1, d) in by and (b, k2, d) in by:
            out.append(f"- K {k1} -> {k2} at B={b}, D={d}: time x{by[(b, k2, d)] / by[(b, k1, d)]:.1f}")
    for d1, d2, k in [(50, 200, 10), (50, 200, 40)]:
        if (b, k, d1) in by and (b, k, d2) in by:
            out.append(f"- D {d1} -> {d2} at B={b}, K={k}: time x{by[(b, k, d2)] / by[(b, k, d1)]:.1f}")
    return out


def targets(rows):
    by = {(r["B"], r["K"], r["D"]): r for r in rows}
    out = []
    r = by.get((1000, 10, 50))
    if r:
        out.append(f"- B=1000, K=10, D=50: {r['pyro'] / r['graves']:.1f}x faster than Pyro (target >= 10x); "
                   f"{r['graves'] / r['normal']:.1f}x the plain Normal (target <= 8x)")
    r = by.get((1000, 40, 200))
    if r:
        out.append(f"- B=1000, K=40, D=200: {r['pyro'] / r['graves']:.1f}x faster than Pyro (target >= 50x)")
    return out


def repeated_ratio(device, cell=(1000, 10, 50), rounds=7, budget_s=1.0):
    """graves / normal at one cell in several short rounds spread over a few seconds, each round a side-by-side
    median (the VM's speed drifts within minutes, and a 0.3 ms Normal suffers more from a stray context switch
    than a 3 ms graves call): the per-round ratios and their median."""
    methods = make_methods(*cell, device)
    timed = {"normal": (methods["normal"], 40), "graves": (with_backend("auto", methods["graves"]), 40)}
    ratios = []
    for _ in range(rounds):
        r = time_interleaved(timed, device, budget_s=budget_s)
        ratios.append(r["graves"] / r["normal"])
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 4-cell grid (for smoke tests)")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--out", default="results/benchmarks/mixture_rsample.md")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.quick:
        grid = [(100, 2, 2), (100, 10, 50), (1000, 10, 50), (1000, 40, 50)]
    else:
        grid = list(itertools.product([100, 1000], [2, 5, 10, 40], [2, 10, 50, 200]))
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [dv for dv in devices if dv == "cpu" or torch.cuda.is_available()]

    lines = header("Mixture rsample: forward + backward time")
    lines += [
        "Median wall time of one `rsample` + `backward` of sum(z * g), float32, in one process; within a row the "
        "methods take turns (an untimed call, then up to three timed ones; about 3 s per row) so that load from "
        "other processes falls on all of them alike. "
        "`graves` uses the default backend (on CPU the C kernel, mixvae/distributions/graves_native.c, built "
        "with the system compiler and -march=native; on CUDA the compiled one); `graves compiled` is the same with "
        "the torch.compile'd coefficients and blocked back-substitution, `graves eager` in plain PyTorch (the "
        "compiled column is left empty on CUDA, where it is the default); `normal` is a plain Normal rsample of "
        "[B, D] (the K = 1 "
        "floor); `enumerate` draws all K reparameterized samples; `pyro` is "
        "`pyro.distributions.MixtureOfDiagNormals`.",
        "",
    ]
    for device in devices:
        rows = run(device, grid, pyro_budget_ms=3000)
        lines += [f"## {device.upper()}: {hardware(device)}", ""] + table(rows) + [""]
        lines += ["Targets (CPU, one thread):" if device == "cpu" else "Targets:"] + targets(rows)
        ratios = repeated_ratio(device)
        lines += [f"- B=1000, K=10, D=50, graves / normal again in {len(ratios)} short rounds after the table (each a "
                  f"side-by-side median): {', '.join(f'{r:.1f}x' for r in ratios)}; median "
                  f"{statistics.median(ratios):.1f}x (target <= 8x)", ""]
        print(f"{device} graves/normal rounds: {', '.join(f'{r:.2f}' for r in ratios)}", flush=True)
        lines += ["Scaling (linear cost: x4):"] + linearity(rows) + [""]
    if "cuda" not in devices:
        lines += ["No CUDA device was present for this run: the CUDA table is missing.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
