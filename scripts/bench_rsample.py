"""Benchmark: forward + backward time of a mixture sample's pathwise gradient.

Writes ``results/benchmarks/mixture_rsample.md`` (and ``..._cuda.md`` section when a GPU is present). For each
(B, K, D) it times, in one process on one thread, the median of ``rsample`` + ``backward`` of

- ``normal``:    a plain diagonal Normal rsample of shape [B, D] (loc + scale * eps: the K = 1 floor),
- ``Normal``:    ``torch.distributions.Normal(loc, scale).rsample()`` with default validation (the user's K = 1),
- ``graves``:    DiagGaussianMixture(..., validate_args=False).rsample with the default backend ("auto": the C
                 kernel on CPU, compiled PyTorch on CUDA); the columns ``compiled`` and ``eager`` are the same with
                 the torch.compile'd and the plain PyTorch backward (CPU only: on CUDA the default is compiled),
- ``user``:      ``DiagGaussianMixture(logits, loc, scale).rsample()`` as a user writes it (default validation),
- ``enumerate``: K reparameterized samples, one per component, weighted by pi (the exact-enumeration cost),
- ``pyro``:      pyro.distributions.MixtureOfDiagNormals (the nearest published peer; O(K^2 D)),
- ``tfp-jax``:   TensorFlow Probability on JAX, MixtureSameFamily(reparameterize=True) of Independent(Normal)
                 sample + jax.grad jitted together (optional: the column says when jax / tfp are absent).

The loss is sum(z * g) with a fixed random g, so every method does the same downstream work; every PyTorch method
differentiates into the leaves' .grad, as a user's .backward() does.

    python scripts/bench_rsample.py [--quick] [--device cpu|cuda|all] [--out results/benchmarks/mixture_rsample.md]
                                    [--note "two training jobs share the machine"]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from pathlib import Path

# one thread for XLA too (set before jax is imported)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import torch  # noqa: E402
from torch.distributions import Normal  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_name, hardware, header, write_report  # noqa: E402

from mixvae.distributions import DiagGaussianMixture, native  # noqa: E402

try:
    from pyro.distributions import MixtureOfDiagNormals
except ImportError:  # pyro is a dev extra; the column is left empty without it
    MixtureOfDiagNormals = None

try:  # an optional peer: pip install tfp-nightly jax
    import jax
    import jax.numpy as jnp
    from tensorflow_probability.substrates import jax as tfp

    TFP_ERROR = None
except Exception as err:  # noqa: BLE001 (any import failure only empties the column)
    jax = jnp = tfp = None
    TFP_ERROR = f"{type(err).__name__}: {err}"


def cpu_description() -> str:
    """The CPU model, its vector ISA and the C kernel path that ran (for the results files)."""
    flags, family, model = set(), "?", "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "cpu family" and family == "?":
                    family = value.strip()
                elif key == "model" and model == "?":
                    model = value.strip()
    except OSError:
        pass
    isa = [name for name, need in (("AVX-512", {"avx512f", "avx512bw", "avx512dq", "avx512vl"}),
                                   ("AVX2+FMA", {"avx2", "fma"}), ("AMX", {"amx_tile"}), ("NEON", {"asimd"}))
           if need <= flags]
    path = native.isa() or f"unavailable ({native.unavailable_reason()})"
    return (f"{cpu_name()} (cpu family {family}, model {model}), vector ISA: {', '.join(isa) or 'none detected'}; "
            f"C kernel path `{path}` (torch CPU capability {torch.backends.cpu.get_cpu_capability()})")


#: The clock of every timed call: wall time (time.perf_counter), or with --cpu-time the CPU time of this process
#: (time.process_time: every thread of it, XLA's included), which leaves out the time the scheduler gives to other
#: jobs on a shared machine (it then still counts their effect on the caches).
CLOCK = {"fn": time.perf_counter, "name": "wall time"}


def time_interleaved(methods, device, budget_s=3.0, min_reps=3, block=3):
    """Median time (ms, on CLOCK) of each method, the methods taking turns so that load from other processes falls
    on all of them alike. ``methods``: name -> (fn, max_reps). A turn is one untimed call (caches and the
    allocator warmed for this method, not the one before it) and then up to ``block`` timed calls; methods
    with max_reps <= 5 (the slow ones) skip the untimed call. A method stops at its max_reps, and every method
    once min_reps are done and ~budget_s (wall time) have passed."""
    clock = CLOCK["fn"]
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
                t = clock()
                fn()
                sync()
                times[name].append(clock() - t)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


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

    def normal_user():
        z = Normal(loc1, scale1).rsample()
        (z * weight).sum().backward()

    def graves(backend="auto"):
        def run():
            z = DiagGaussianMixture(logits, loc, scale, validate_args=False, backend=backend).rsample()
            (z * weight).sum().backward()
        return run

    def user():
        z = DiagGaussianMixture(logits, loc, scale).rsample()
        (z * weight).sum().backward()

    def enumerate_():
        z = loc + scale * torch.randn(b, 1, d, device=device)  # [B, K, D], one eps shared by the components
        (logits.softmax(-1) * (z * weight.unsqueeze(1)).sum(-1)).sum().backward()

    def pyro():
        z = MixtureOfDiagNormals(loc, scale, logits).rsample()
        (z * weight).sum().backward()

    def fresh(fn):  # a training loop's pattern: optimizer.zero_grad() (set_to_none) before each backward
        def run():
            logits.grad = loc.grad = scale.grad = None
            fn()
        return run

    methods = {"normal": normal, "Normal": normal_user, "graves": graves(), "user": user,
               "eager": graves("eager"), "compiled": graves("compile"), "enumerate": enumerate_, "pyro": pyro,
               "user zeroed": fresh(user), "pyro zeroed": fresh(pyro)}
    if tfp is not None and device == "cpu":
        methods["tfp-jax"] = tfp_method(logits, loc, scale, weight)
    return methods


def tfp_method(logits, loc, scale, weight):
    """TFP on JAX: sample + gradient of sum(z * g) with respect to (logits, loc, scale), jitted as one function."""
    tfd = tfp.distributions
    params = tuple(jnp.asarray(t.detach().numpy()) for t in (logits, loc, scale))
    g = jnp.asarray(weight.numpy())

    def loss(p, key):
        q = tfd.MixtureSameFamily(tfd.Categorical(logits=p[0]), tfd.Independent(tfd.Normal(p[1], p[2]), 1),
                                  reparameterize=True)
        return (q.sample(seed=key) * g).sum()

    step = jax.jit(jax.grad(loss))
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 100_000))

    def run():
        jax.block_until_ready(step(params, next(keys)))
    return run


TFP_MAX_MS = 20_000  # cells where one TFP call would take longer are left empty
COLUMNS = ("normal", "Normal", "graves", "user", "compiled", "eager", "enumerate", "pyro", "tfp-jax")


def run(device, grid, pyro_budget_ms):
    rows = []
    for b, k, d in grid:
        methods = make_methods(b, k, d, device)
        # the eager backward and Pyro's O(K^2 D) one are slow at the large sizes: a few calls there
        eager_ms = 0.03 * b * k * d / 1000  # rough: ~30 ns per (sample, component, dimension)
        slow = eager_ms * k / 2 > pyro_budget_ms
        timed = {name: (methods[name], 40) for name in ("normal", "Normal", "graves", "user", "enumerate")}
        timed["eager"] = (methods["eager"], 5 if eager_ms > 300 else 40)
        if device == "cpu":
            timed["compiled"] = (methods["compiled"], 40)
        if MixtureOfDiagNormals is not None:
            timed["pyro"] = (methods["pyro"], 2 if slow else 40)
        row = {"B": b, "K": k, "D": d, **{c: float("nan") for c in COLUMNS}}
        row.update(time_interleaved(timed, device))
        if "tfp-jax" in methods:
            # TFP's reparameterized mixture differentiates one dimension at a time, O(B K D^2): ~1e-4 ms per
            # (b, k, d, d) on one core here; a few calls where one takes seconds, none past TFP_MAX_MS. Timed
            # after the others, not in turns with them: XLA's runtime keeps threads of its own busy after a call
            # (the CPU clock counts them) and the torch methods timed in turns with it measured up to 2x slower.
            tfp_ms = 1.1e-4 * b * k * d * d
            if tfp_ms <= TFP_MAX_MS:
                row.update(time_interleaved({"tfp-jax": (methods["tfp-jax"], 2 if tfp_ms > 1000 else 40)}, device))
        rows.append(row)
        print(f"{device} B={b:5d} K={k:3d} D={d:4d}  " + "  ".join(f"{c} {row[c]:.3f}" for c in COLUMNS) + " ms",
              flush=True)
    return rows


def _ms(x, digits=2):
    """A time cell: empty (an em dash) where the method was not timed (absent peer, or past its time limit)."""
    return "—" if math.isnan(x) else f"{x:.{digits}f}"


def _ratio(a, b):
    return "—" if math.isnan(a) or math.isnan(b) else f"{a / b:.1f}x"


def _share(graves, user):
    return "—" if math.isnan(graves) or math.isnan(user) else f"{max(0.0, 1 - graves / user):.0%}"


def table(rows):
    lines = [
        "| B | K | D | normal (ms) | Normal (ms) | graves (ms) | user (ms) | graves compiled (ms) "
        "| graves eager (ms) | enumerate (ms) | pyro (ms) | tfp-jax (ms) | pyro / user | tfp-jax / user "
        "| graves / normal | user / Normal | validation share |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['B']} | {r['K']} | {r['D']} | {_ms(r['normal'], 3)} | {_ms(r['Normal'], 3)} | {_ms(r['graves'])} "
            f"| {_ms(r['user'])} | {_ms(r['compiled'])} | {_ms(r['eager'])} | {_ms(r['enumerate'])} "
            f"| {_ms(r['pyro'], 1)} | {_ms(r['tfp-jax'])} | {_ratio(r['pyro'], r['user'])} "
            f"| {_ratio(r['tfp-jax'], r['user'])} | {_ratio(r['graves'], r['normal'])} "
            f"| {_ratio(r['user'], r['Normal'])} | {_share(r['graves'], r['user'])} |"
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
        out.append(f"- B=1000, K=10, D=50, the user's pattern: {r['user'] / r['Normal']:.1f}x the user's Normal "
                   f"(target <= 6x); {r['pyro'] / r['user']:.1f}x faster than Pyro (target >= 20x); validation "
                   f"{max(0.0, 1 - r['graves'] / r['user']):.0%} of it (target <= 10%)")
    r = by.get((100, 40, 200))
    if r:
        out.append(f"- B=100, K=40, D=200, the user's pattern: {r['pyro'] / r['user']:.1f}x faster than Pyro "
                   "(target >= 100x)")
    r = by.get((100, 5, 50))
    if r:
        out.append(f"- B=100, K=5, D=50 (the VAE's size), the user's pattern: {r['user'] / r['Normal']:.1f}x the "
                   "user's Normal (target <= 3x)")
    r = by.get((1000, 40, 200))
    if r:
        out.append(f"- B=1000, K=40, D=200: {r['pyro'] / r['user']:.1f}x faster than Pyro")
    return out


def repeated(device, cell, rounds=7, budget_s=1.0, pool=True):
    """user / Normal and (user - graves) / user at one cell in several short rounds spread over a few seconds, each
    round a side-by-side median (the VM's speed drifts within minutes, and a 0.3 ms Normal suffers more from a
    stray context switch than a 3 ms mixture call). ``pool=False``: native gradients come from fresh memory (the
    gradient pool switched off), to see what the pool does for .backward() into .grad."""
    methods = make_methods(*cell, device)
    timed = {n: (methods[n], 40) for n in ("Normal", "graves", "user")}
    saved = native.POOL_MIN_BYTES
    if not pool:
        native.POOL_MIN_BYTES = 1 << 62
    try:
        out = [time_interleaved(timed, device, budget_s=budget_s) for _ in range(rounds)]
    finally:
        native.POOL_MIN_BYTES = saved
    return out


def repeated_lines(device):
    lines = []
    # the two cells with a user / Normal target, and the two largest, where validation checks the most values
    # (B K D = 0.8 and 2 million; a single table row there is at the mercy of one stray slow call)
    for cell, target in (((1000, 10, 50), 6), ((100, 5, 50), 3), ((100, 40, 200), None), ((1000, 40, 50), None)):
        rounds = repeated(device, cell)
        ratios = [r["user"] / r["Normal"] for r in rounds]
        shares = [max(0.0, 1 - r["graves"] / r["user"]) for r in rounds]
        b, k, d = cell
        lines.append(f"- B={b}, K={k}, D={d}, user / Normal again in {len(ratios)} short rounds after the table (each "
                     f"a side-by-side median): {', '.join(f'{x:.1f}x' for x in ratios)}; median "
                     f"{statistics.median(ratios):.1f}x{f' (target <= {target}x)' if target else ''}; validation "
                     f"share {', '.join(f'{x:.0%}' for x in shares)}, median {statistics.median(shares):.0%} "
                     "(target <= 10%)")
        print(f"{device} {cell} user/Normal rounds: {', '.join(f'{x:.2f}' for x in ratios)}", flush=True)
    if MixtureOfDiagNormals is not None:
        # the >= 20x target's cell again, in the user's pattern (.backward() into .grad), Pyro beside the user's
        # call in each round: the table's row is a median of three calls amid eight other methods
        methods = make_methods(1000, 10, 50, device)
        rounds = [time_interleaved({"user": (methods["user"], 40), "pyro": (methods["pyro"], 10)}, device,
                                   budget_s=1.0) for _ in range(7)]
        ratios = [r["pyro"] / r["user"] for r in rounds]
        lines.append(f"- B=1000, K=10, D=50, the user's pattern against Pyro again in {len(ratios)} short rounds after "
                     f"the table (each a side-by-side median): {', '.join(f'{x:.1f}x' for x in ratios)}; median "
                     f"{statistics.median(ratios):.1f}x faster than Pyro (target >= 20x); user "
                     f"{statistics.median(r['user'] for r in rounds):.2f} ms, Pyro "
                     f"{statistics.median(r['pyro'] for r in rounds):.1f} ms (medians over the rounds)")
        print(f"{device} (1000, 10, 50) pyro/user rounds: {', '.join(f'{x:.2f}' for x in ratios)}", flush=True)
        for cell in ((100, 40, 200), (1000, 10, 50)):
            methods = make_methods(*cell, device)
            r = time_interleaved({"user zeroed": (methods["user zeroed"], 40),
                                  "pyro zeroed": (methods["pyro zeroed"], 4 if cell[2] > 100 else 20)}, device)
            b, k, d = cell
            lines.append(f"- B={b}, K={k}, D={d}, a training loop's pattern (the leaves' .grad set to None before "
                         f"each call, as optimizer.zero_grad() does, so backward stores the gradients instead of "
                         f"adding them into .grad): user {r['user zeroed']:.2f} ms, Pyro {r['pyro zeroed']:.1f} ms, "
                         f"{r['pyro zeroed'] / r['user zeroed']:.1f}x faster than Pyro")
            print(f"{device} {cell} zeroed: user {r['user zeroed']:.3f} pyro {r['pyro zeroed']:.1f}", flush=True)
    if device == "cpu":
        # rounds with and without the pool alternate, so that the machine's drift over the minutes falls on both
        with_pool, without = [], []
        for _ in range(5):
            with_pool += [r["user"] for r in repeated(device, (1000, 10, 50), rounds=1)]
            without += [r["user"] for r in repeated(device, (1000, 10, 50), rounds=1, pool=False)]
        lines.append(f"- the gradient pool and .backward() into .grad (B=1000, K=10, D=50, the user's pattern, 5 "
                     f"rounds each, alternating): with the pool median {statistics.median(with_pool):.2f} ms, without it "
                     f"{statistics.median(without):.2f} ms. The first .backward() makes .grad the pooled buffer "
                     "itself; later ones add into .grad, after which the fresh gradient is free and its buffer "
                     "comes back from the pool on the next call.")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 4-cell grid (for smoke tests)")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--out", default="results/benchmarks/mixture_rsample.md")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="a line about the machine (e.g. other jobs sharing it)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time on this process's CPU time, not wall time (for a machine shared with other jobs)")
    parser.add_argument("--cells", default=None,
                        help="only these (B, K, D) cells, e.g. '1000,10,50;100,40,200' (default: the full grid)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK.update(fn=time.process_time, name="CPU time of this process (time.process_time)")
    if args.cells:
        grid = [tuple(int(v) for v in cell.split(",")) for cell in args.cells.split(";")]
    elif args.quick:
        grid = [(100, 2, 2), (100, 5, 50), (100, 40, 200), (1000, 10, 50)]
    else:
        grid = list(itertools.product([100, 1000], [2, 5, 10, 40], [2, 10, 50, 200]))
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [dv for dv in devices if dv == "cpu" or torch.cuda.is_available()]

    lines = header("Mixture rsample: forward + backward time")
    if args.note:
        lines += [f"Machine note: {args.note}", ""]
    lines += [
        f"Median {CLOCK['name']} of one `rsample` + `backward` of sum(z * g) into the leaves' .grad, float32, in "
        "one process; within a row the methods take turns (an untimed call, then up to three timed ones; about 3 s per "
        "row) so that load from other processes falls on all of them alike. "
        "`normal` is loc + scale * eps of [B, D] (the K = 1 floor) and `Normal` the same through "
        "`torch.distributions.Normal(loc, scale).rsample()` with default validation (what a user writes for K = 1); "
        "`graves` is `DiagGaussianMixture(..., validate_args=False).rsample()` on the default backend (on CPU the "
        "C kernel, mixvae/distributions/graves_native.c, built for the vector ISA detected at run time; on CUDA "
        "the compiled one), `user` the user's pattern `DiagGaussianMixture(logits, loc, scale).rsample()` with "
        "default validation; `graves compiled` is backend='compile' (torch.compile'd coefficients and blocked "
        "back-substitution), `graves eager` backend='eager' (plain PyTorch; the compiled column is left empty on "
        "CUDA, where it is the default); `enumerate` draws all K reparameterized samples; `pyro` is "
        "`pyro.distributions.MixtureOfDiagNormals`; `tfp-jax` is TensorFlow Probability on JAX "
        "(MixtureSameFamily(reparameterize=True), sample and jax.grad jitted together, one XLA thread; timed after "
        "the torch methods of its row, not in turns with them: XLA's threads stay busy after a call and slowed "
        "whatever was timed next) "
        + (f"({TFP_ERROR.splitlines()[0]}: column empty)" if TFP_ERROR else
           f"(jax {jax.__version__}, tfp {tfp.__version__})") + ". "
        f"validation share = 1 - graves / user. The tfp-jax column is left empty where one call would take over "
        f"{TFP_MAX_MS / 1000:.0f} s (its cost grows as B K D^2).",
        "",
    ]
    for device in devices:
        rows = run(device, grid, pyro_budget_ms=3000)
        where = hardware(device) if device != "cpu" else f"{hardware(device)}; {cpu_description()}"
        lines += [f"## {device.upper()}: {where}", ""] + table(rows) + [""]
        lines += ["Targets (CPU, one thread):" if device == "cpu" else "Targets:"] + targets(rows)
        lines += repeated_lines(device) + [""]
        lines += ["Scaling (linear cost: x4):"] + linearity(rows) + [""]
    if "cuda" not in devices:
        lines += ["No CUDA device was present for this run: the CUDA table is missing.", ""]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
