"""Benchmark: accuracy and speed of the implicit reparameterization gradients (Figurnov, Mohamed & Mnih 2018,
tables 1 and 2 rebuilt for this suite's Gamma, Beta, Dirichlet, von Mises and DiagGaussianMixture).

Writes ``results/implicit_gradients.md``:

- accuracy: the relative error of every sample's derivative dz/dtheta against a float64 reference (mpmath for
  the four families, the float64 one-dimension-at-a-time Graves reference for the mixture), median / 99th
  percentile / max over a modest grid of parameters times drawn samples, in float32 and float64; beside torch's
  own gradients (Gamma, Beta; against the reference of torch's own construction) and TFP on JAX where it imports;
- speed: microseconds per sample of rsample + backward, beside torch, finite differences of the inverse CDF
  (scipy, float64) and TFP on JAX (jit-compiled, float32).

    python scripts/bench_implicit.py [--quick] [--out results/implicit_gradients.md]

One thread for torch and XLA; the machine's other load is recorded in the file's header.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
import scipy.special as sc  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import cpu_name, header, write_report  # noqa: E402

from mixvae.distributions import Beta, DiagGaussianMixture, Dirichlet, Gamma, VonMises  # noqa: E402
from mixvae.distributions import graves_transform as gt  # noqa: E402
from mixvae.distributions.beta import beta_implicit_grad_reference  # noqa: E402
from mixvae.distributions.dirichlet import dirichlet_jacobian_reference, sample_standard_gamma  # noqa: E402
from mixvae.distributions.gamma import standard_gamma_grad_reference  # noqa: E402
from mixvae.distributions.von_mises import von_mises_concentration_grad_reference  # noqa: E402

try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from tensorflow_probability.substrates import jax as tfp

    tfd = tfp.distributions
    TFP_VERSION = f"tfp {tfp.__version__}, jax {jax.__version__}"
except ImportError as exc:  # the `bench-peers` extra: pip install "mixvae[bench-peers]"
    tfd = None
    TFP_VERSION = f"not installed ({exc.name} did not import); TFP columns are empty"

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def vector_isa() -> str:
    flags = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512bw", "avx512_vnni", "avx2", "fma") if f in flags]
    return f"{', '.join(isa) or 'unknown'} (torch CPU capability: {torch.backends.cpu.get_cpu_capability()})"


def rel_errors(ours, ref, dtype) -> np.ndarray:
    """|ours - ref| / |ref| where |ref| is a normal number of ``dtype`` (else the absolute error over tiny)."""
    ours, ref = torch.as_tensor(ours).double().reshape(-1), torch.as_tensor(ref).double().reshape(-1)
    tiny = torch.finfo(dtype).tiny
    finite = torch.isfinite(ref)
    ours, ref = ours[finite], ref[finite]
    err = (ours - ref).abs() / ref.abs().clamp(min=tiny)
    return torch.nan_to_num(err, nan=np.inf).numpy()


def per_sample(make, params, seed, draw=None):
    """(z, per-sample dz/dparams) with every parameter a leaf of the batch shape (one sample per leaf)."""
    torch.manual_seed(seed)
    leaves = [p.clone().requires_grad_() for p in params]
    q = make(*leaves)
    z = q.rsample() if draw is None else draw(q)
    return z.detach(), torch.autograd.grad(z.sum(), leaves)


def tfp_per_sample(make, params, seed):
    """TFP on JAX: (z, per-sample dz/dparams), one sample per batch element."""
    key = jax.random.PRNGKey(seed)
    z = make(*params).sample(seed=key)
    grads = jax.grad(lambda *ps: make(*ps).sample(seed=key).sum(), argnums=tuple(range(len(params))))(*params)
    return np.asarray(z, dtype=np.float64), [np.asarray(g, dtype=np.float64) for g in grads]


# ---- accuracy ---------------------------------------------------------------------------------------------------
def accuracy_gamma(n):
    alphas = np.logspace(-2, 3, 11)
    rows = []
    for name, dt in DTYPES.items():
        a = torch.tensor(alphas, dtype=dt).repeat(n)
        z, (g,) = per_sample(lambda c: Gamma(c, 1.0), [a], seed=1)
        rows.append(("Gamma", "ours", name, rel_errors(g, standard_gamma_grad_reference(a.double(), z.double()), dt)))
        z, (g,) = per_sample(lambda c: torch.distributions.Gamma(c, 1.0), [a], seed=1)
        z = z.clamp(min=torch.finfo(dt).tiny)
        rows.append(("Gamma", "torch", name, rel_errors(g, standard_gamma_grad_reference(a.double(), z.double()), dt)))
        if tfd is not None and dt == torch.float32:  # float32 only: the dtype where the peers differ
            jdt = jnp.float32
            z, (g,) = tfp_per_sample(lambda c: tfd.Gamma(c, jnp.ones_like(c)), [jnp.asarray(a.numpy(), dtype=jdt)], 1)
            keep = z > 0
            ref = standard_gamma_grad_reference(a.double()[keep], torch.from_numpy(z[keep]))
            rows.append(("Gamma", "TFP (JAX)", name, rel_errors(g[keep], ref, dt)))
    return rows


BETA_PAIRS = [(0.01, 0.5), (0.3, 3.0), (2.0, 2.0), (20.0, 0.7), (100.0, 300.0), (1000.0, 1000.0), (0.05, 1000.0)]


def accuracy_beta(n):
    rows = []
    a0 = np.repeat([p[0] for p in BETA_PAIRS], n)
    b0 = np.repeat([p[1] for p in BETA_PAIRS], n)
    for name, dt in DTYPES.items():
        a, b = torch.tensor(a0, dtype=dt), torch.tensor(b0, dtype=dt)
        torch.manual_seed(2)
        noise = sample_standard_gamma(torch.stack([a, b], -1), torch.Size([len(a), 2]))
        _, (ga, gb) = per_sample(Beta, [a, b], seed=2, draw=lambda q, x=noise: q.rsample_from_standard_gamma(x))
        jac = torch.stack([dirichlet_jacobian_reference(torch.tensor([ai, bi]), noise[i:i + 1])[0]
                           for i, (ai, bi) in enumerate(zip(a0, b0))])
        rows.append(("Beta", "ours", name, np.concatenate([rel_errors(ga, jac[:, 0, 0], dt),
                                                           rel_errors(gb, jac[:, 0, 1], dt)])))
        # torch's Beta holds I_z(a, b) fixed (its Dirichlet backward): its reference is Beta's own CDF derivative
        z, (ga, gb) = per_sample(torch.distributions.Beta, [a, b], seed=2)
        inside = (z > 0) & (z < 1)
        ra, rb = beta_implicit_grad_reference(a.double()[inside], b.double()[inside], z.double()[inside])
        rows.append(("Beta", "torch", name, np.concatenate([rel_errors(ga[inside], ra, dt),
                                                            rel_errors(gb[inside], rb, dt)])))
    return rows


DIRICHLET_ALPHAS = [[0.02, 0.9, 30.0, 800.0], [1.0, 1.0, 1.0, 1.0], [0.3, 3.0, 7.0, 0.05]]


def accuracy_dirichlet(n):
    rows = []
    for name, dt in DTYPES.items():
        errs = []
        for i, alpha in enumerate(DIRICHLET_ALPHAS):
            alpha = torch.tensor(alpha, dtype=dt)
            torch.manual_seed(3 + i)
            noise = sample_standard_gamma(alpha, torch.Size([n, alpha.shape[0]]))
            leaf = alpha.expand(n, -1).clone().requires_grad_()
            z = Dirichlet(leaf).rsample_from_standard_gamma(noise)
            jac = torch.stack([torch.autograd.grad(z[:, j].sum(), leaf, retain_graph=True)[0]
                               for j in range(alpha.shape[0])], -2)
            errs.append(rel_errors(jac, dirichlet_jacobian_reference(alpha.double(), noise), dt))
        rows.append(("Dirichlet (K = 4)", "ours", name, np.concatenate(errs)))
    return rows


def accuracy_von_mises(n):
    kappas = np.logspace(-2, 3, 11)
    rows = []
    for name, dt in DTYPES.items():
        k = torch.tensor(kappas, dtype=dt).repeat(n)
        z, (_, g) = per_sample(VonMises, [torch.zeros_like(k), k], seed=4)
        rows.append(("von Mises", "ours", name,
                     rel_errors(g, von_mises_concentration_grad_reference(k.double(), z.double()), dt)))
        if tfd is not None and dt == torch.float32:
            jdt = jnp.float32
            z, (g,) = tfp_per_sample(lambda c: tfd.VonMises(jnp.zeros_like(c), c), [jnp.asarray(k.numpy(), jdt)], 4)
            ref = von_mises_concentration_grad_reference(k.double(), torch.from_numpy(z))
            rows.append(("von Mises", "TFP (JAX)", name, rel_errors(g, ref, dt)))
    return rows


def accuracy_mixture(n):
    """Per-sample VJP of DiagGaussianMixture.rsample (default backend) against the float64 eager reference at the
    same z, normwise per sample and parameter tensor."""
    k, d = 5, 8
    rows = []
    for name, dt in DTYPES.items():
        torch.manual_seed(5)
        logits = torch.randn(n, k, dtype=dt)
        loc = 2 * torch.randn(n, k, d, dtype=dt)
        scale = torch.rand(n, k, d, dtype=dt) + 0.3
        upstream = torch.randn(n, d, dtype=dt)
        leaves = [t.clone().requires_grad_() for t in (logits, loc, scale)]
        z = DiagGaussianMixture(*leaves).rsample()
        ours = torch.autograd.grad((z * upstream).sum(), leaves)
        ref = gt.graves_vjp_reference(upstream.double(), z.detach().double(), logits.double(), loc.double(),
                                      scale.double())
        errs = [((o.double() - r).flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1)).numpy()
                for o, r in zip(ours, ref)]
        rows.append((f"DiagGaussianMixture (K = {k}, D = {d})", "ours", name, np.concatenate(errs)))
    return rows


# ---- speed ------------------------------------------------------------------------------------------------------
def median_time(fn, reps):
    """Median CPU time of the process (all its threads) per call: on a shared machine, wall time mostly measures
    how often the scheduler lets this process run."""
    fn()
    times = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def torch_step(make, params, n):
    leaves = [p.clone().requires_grad_() for p in params]

    def step():
        z = make(*leaves).rsample((n,))
        torch.autograd.grad(z.sum(), leaves)
    return step


def tfp_step(make, params, n):
    grad = jax.jit(jax.grad(lambda ps, key: make(*ps).sample(n, seed=key).sum()))
    params = [jnp.asarray(p, dtype=jnp.float32) for p in params]
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 1000))
    return lambda: jax.block_until_ready(grad(params, next(keys)))


def fd_step(cdf, inverse, params, draw, n, h=1e-6):
    """Central differences of the inverse CDF in each parameter at fixed u = F(z) (scipy, float64)."""
    z = draw(n)

    def step():
        u = cdf(z, *params)
        for i, p in enumerate(params):
            up = list(params)
            down = list(params)
            up[i], down[i] = p * (1 + h), p * (1 - h)
            (inverse(u, *up) - inverse(u, *down)) / (2 * h * p)
    return step


def speed_rows(n, reps):
    f32 = torch.float32
    rng = np.random.default_rng(0)
    cases = []
    for alpha in (0.5, 500.0):
        p = [torch.tensor(alpha), torch.tensor(1.0)]
        cases.append((f"Gamma(alpha = {alpha:g})", Gamma, torch.distributions.Gamma, p,
                      (lambda x, a, r: sc.gammainc(a, x * r), lambda u, a, r: sc.gammaincinv(a, u) / r,
                       lambda m, a=alpha: rng.gamma(a, size=m)),
                      (lambda a, r: tfd.Gamma(a, r)) if tfd else None))
    cases.append(("Beta(2, 3)", Beta, torch.distributions.Beta, [torch.tensor(2.0), torch.tensor(3.0)],
                  (lambda x, a, b: sc.betainc(a, b, x), lambda u, a, b: sc.betaincinv(a, b, u),
                   lambda m: rng.beta(2.0, 3.0, size=m)),
                  (lambda a, b: tfd.Beta(a, b)) if tfd else None))
    cases.append(("Dirichlet(0.5, 1, 2, 4)", Dirichlet, torch.distributions.Dirichlet,
                  [torch.tensor([0.5, 1.0, 2.0, 4.0])], None, (lambda c: tfd.Dirichlet(c)) if tfd else None))
    for kappa in (2.0, 200.0):
        cases.append((f"von Mises(kappa = {kappa:g})", VonMises, None, [torch.tensor(0.0), torch.tensor(kappa)],
                      (lambda x, m, k: scipy.stats.vonmises.cdf(x, k, loc=m),
                       lambda u, m, k: scipy.stats.vonmises.ppf(u, k, loc=m),
                       lambda m_, k=kappa: rng.vonmises(0.0, k, size=m_)),
                      (lambda m, k: tfd.VonMises(m, k)) if tfd else None))
    rows = []
    for name, ours, theirs, params, fd, peer in cases:
        row = {"name": name}
        for label, dt in DTYPES.items():
            ps = [p.to(dt) for p in params]
            row[f"ours {label}"] = median_time(torch_step(ours, ps, n), reps) / n
            if theirs is not None:
                row[f"torch {label}"] = median_time(torch_step(theirs, ps, n), reps) / n
        if fd is not None:
            cdf, inverse, draw = fd
            m = n if "von Mises" not in name else max(n // 50, 40)  # scipy's von Mises ppf is a root search
            vals = [float(p) for p in params]
            row["finite differences (scipy)"] = median_time(fd_step(cdf, inverse, vals, draw, m), max(reps // 2, 1)) / m
        if peer is not None:
            row["TFP (JAX) float32"] = median_time(tfp_step(peer, [p.numpy() for p in params], n), reps) / n
        rows.append(row)
    # the mixture: one sample is a D-vector from K components
    b, k, d = max(n // 20, 50), 10, 50
    mix = [torch.randn(b, k, dtype=f32), torch.randn(b, k, d, dtype=f32), torch.rand(b, k, d, dtype=f32) + 0.5]
    row = {"name": f"DiagGaussianMixture (K = {k}, D = {d}; per D-vector)"}
    for label, dt in DTYPES.items():
        leaves = [t.to(dt).requires_grad_() for t in mix]

        def step(leaves=leaves):
            z = DiagGaussianMixture(*leaves).rsample()
            torch.autograd.grad(z.sum(), leaves)
        row[f"ours {label}"] = median_time(step, reps) / b
    rows.append(row)
    return rows


# ---- report -----------------------------------------------------------------------------------------------------
def fmt_err(x):
    return "inf" if not np.isfinite(x) else f"{x:.1e}"


def fmt_us(seconds):
    return "" if seconds is None else f"{1e6 * seconds:.3g}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller grids and sample counts (a smoke run)")
    parser.add_argument("--out", default="results/implicit_gradients.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_acc = 2 if args.quick else 4
    command = "python scripts/bench_implicit.py" + (" --quick" if args.quick else "")
    lines = header("Implicit reparameterization gradients: accuracy and speed", command)
    load = os.getloadavg()
    lines += [
        f"- hardware: {cpu_name()}; vector ISA {vector_isa()}; one thread for torch and XLA",
        f"- TFP on JAX: {TFP_VERSION}",
        f"- timings were taken while two training jobs shared the machine (load average {load[0]:.1f}); "
        "compare columns within a row, not with other files",
        "",
    ]
    start = time.perf_counter()
    acc = []
    for fn in (accuracy_gamma, accuracy_beta, accuracy_dirichlet, accuracy_von_mises, accuracy_mixture):
        acc += fn(n_acc)
        print(f"{fn.__name__}: {time.perf_counter() - start:.0f} s", flush=True)
    lines += [
        "## Accuracy of the per-sample derivative dz/dtheta",
        "",
        "Relative error |ours - ref| / |ref| of every sample's derivative against a float64 reference, over the",
        "grid below times drawn samples (where |ref| is below the dtype's smallest normal number, the absolute",
        "error over that number). References: Gamma, mpmath's regularized incomplete gamma differentiated at 40",
        "digits; Beta and Dirichlet (ours), the same two-gamma construction with mpmath's gamma derivatives and",
        "exact rational arithmetic; Beta (torch), Beta's own CDF derivative -(dI_z/da) / p(z) by mpmath (torch's",
        "sampler holds I_z fixed); von Mises, mpmath quadrature of the CDF's kappa-derivative at 20+ digits; the",
        "mixture, the float64 one-dimension-at-a-time Graves reference at the same sample (normwise per sample",
        "and parameter tensor). Targets: float64 <= 1e-6 everywhere; float32 <= 1e-4 (Gamma, Beta, Dirichlet) and",
        "<= 1e-2 (von Mises).",
        "",
        f"Grids ({n_acc} samples per point): Gamma and von Mises, alpha / kappa = 11 values log-spaced in "
        f"[1e-2, 1e3]; Beta (a, b) in {BETA_PAIRS}; Dirichlet alpha in {DIRICHLET_ALPHAS}; mixture K = 5, D = 8, "
        "random parameters. torch's Dirichlet is not listed: its backward differentiates each marginal's CDF and "
        "has no per-sample reference here (its unbiasedness is what its tests check). TFP rows are float32 only",
        "(the dtype where the implementations differ; the grids of tests/test_families.py are larger).",
        "",
        "| family | gradient | dtype | samples | median | 99th pct | max |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for family, who, dtype, err in acc:
        lines.append(f"| {family} | {who} | {dtype} | {len(err)} | {fmt_err(np.median(err))} | "
                     f"{fmt_err(np.percentile(err, 99))} | {fmt_err(err.max())} |")
    n_time = 1000 if args.quick else 2000
    reps = 3 if args.quick else 5
    speed = speed_rows(n_time, reps)
    print(f"speed: {time.perf_counter() - start:.0f} s", flush=True)
    cols = ["ours float32", "ours float64", "torch float32", "torch float64", "finite differences (scipy)",
            "TFP (JAX) float32"]
    lines += [
        "",
        "## Time per sample (rsample + backward), CPU microseconds",
        "",
        f"Median CPU time (time.process_time, all threads of the process) of {reps} runs of {n_time} samples (one",
        "batch), gradient of sum(z) to every parameter; CPU rather than wall time because the machine was shared",
        "(wall time would mostly measure the scheduler), though cache and memory-bandwidth contention remain. Finite",
        "differences: u = F(z) by scipy, then the inverse CDF at theta (1 +- 1e-6) per parameter, float64 (von",
        "Mises on a fiftieth of the samples: scipy's ppf is a root search). TFP: jax.jit of jax.grad of the",
        "sample sum, after compilation. Empty: not available for that family.",
        "",
        "| distribution | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for row in speed:
        lines.append(f"| {row['name']} | " + " | ".join(fmt_us(row.get(c)) for c in cols) + " |")
    lines += ["", f"Total run time {time.perf_counter() - start:.0f} s.", ""]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
