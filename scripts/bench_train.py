"""Benchmark: training-step throughput and IWAE-5000 evaluation time on MNIST (issue 6).

Writes ``results/benchmarks/train_throughput.md``. For each configuration, batch 100, 784-200-200-50, one
sample per image (train.num_samples=1, objective elbo):

- ``gaussian``:       the Gaussian VAE, K = 1 (Graves' estimator is then the plain reparameterization),
- ``graves``:         K = 5, Graves' pathwise gradient (default backend: the C kernel on CPU, compiled on CUDA),
- ``enumerate``:      K = 5, exact enumeration over the components (K decoder passes),
- ``score_function``: K = 5, REINFORCE for the component index, no baseline.

Each configuration is a real ``Trainer`` built from configs/ and timed through ``Trainer.train_step`` (the step
train.py runs), side by side in ONE process on ONE thread: after a warm-up (which also builds the Graves
backward), the configurations take turns, one timed step each per round, so that load from other processes
falls on all of them alike. It reports the median step time, steps/s, seconds per MNIST epoch (median x 500
steps for the 50,000 training images at batch 100, and one real epoch timed), the peak memory,
the ratio to the Gaussian VAE, a breakdown of the Graves step against the Gaussian one, and the IWAE-5000
evaluation time of the 10,000 test images (on CPU timed on ``--eval-images`` images and extrapolated).

Peak memory: on CPU each configuration runs again in a fresh subprocess (Linux), which reports its resident
memory after setup and one step, and the peak over 20 more steps (VmHWM after resetting it, with freed memory
returned to the OS first): the difference is what a step adds on top of the data, model and optimizer state.
On CUDA: ``torch.cuda.max_memory_allocated`` over 15 steps.

The evaluation line also gives the decoder's matrix-product floor on this machine: the same three products
(one [S * B, 50] -> 200 -> 200 -> 784 pass per 1024 rows, tanh between) timed alone for the same images and samples.

    python scripts/bench_train.py [--quick] [--device cpu|cuda|all] [--data-root DIR] [--out results/benchmarks]
                                  [--note "two training jobs share the machine"]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import hardware, header, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> (K, Hydra overrides)
    "gaussian": (1, ["model=gaussian_mlp", "estimator=graves"]),
    "graves": (5, ["model=mixture_mlp", "estimator=graves"]),
    "enumerate": (5, ["model=mixture_mlp", "estimator=enumerate"]),
    "score_function": (5, ["model=mixture_mlp", "estimator=score_function"]),
}
#: The clock of every timing: wall time, or with --cpu-time this process's CPU time (time.process_time), which
#: leaves out the time the scheduler gives to other jobs on a shared machine.
_CLOCK = {"fn": time.perf_counter, "name": "wall time"}


def now() -> float:
    return _CLOCK["fn"]()


#: The training-step target: the graves K = 5 step at most this many times the Gaussian VAE step.
STEP_TARGET = 1.15
EPOCH_STEPS = 500  # 50,000 MNIST training images (10,000 held out for validation) at batch 100
TEST_IMAGES = 10_000


def build(name: str, device: str, data_root: str | None, run_dir: str):
    """A Trainer for configuration ``name`` (the same construction as train.py, W&B off, one thread)."""
    from hydra import compose, initialize_config_dir

    from mixvae.training import Trainer

    overrides = [*CONFIGS[name][1], "logger=none", "progress=false", "threads=1", f"device={device}",
                 "train.batch_size=100", "train.num_samples=1", "train.objective=elbo", "model.latent_dim=50",
                 "model.hidden=[200,200]", "dataset.download=false"]
    if data_root:
        overrides.append(f"dataset.root={data_root}")
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides)
    return Trainer(cfg, run_dir)


def share_dataset():
    """Load each dataset once for all Trainers (the loop only reads it)."""
    from mixvae.training import loop

    cache, load = {}, loop.load_dataset

    def cached(name, **kwargs):
        key = (name, *sorted((k, str(v)) for k, v in kwargs.items()))
        if key not in cache:
            cache[key] = load(name, **kwargs)
        return cache[key]

    loop.load_dataset = cached


class Batches:
    """Endless shuffled training batches of a Trainer's dataset (a new permutation every epoch)."""

    def __init__(self, trainer):
        self.trainer, self.it = trainer, iter(())

    def __next__(self):
        x = next(self.it, None)
        if x is None:
            t = self.trainer
            self.it = t.data.batches("train", 100, shuffle=True, generator=t.generator)
            x = next(self.it)
        return x


def linear_layers(trainer) -> list[tuple[torch.nn.Linear, bool]]:
    """The model's nn.Linear layers, each with whether the data feed it (then no input gradient is taken)."""
    x_dim = trainer.data.x_dim
    return [(m, m.in_features == x_dim) for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]


def matmul_macs(trainer) -> int:
    """Multiply-adds of one step's matrix products per image, forward and backward: 3 x in x out for each
    nn.Linear (forward, input gradient, weight gradient), 2 x for a layer fed by the data (no input gradient)."""
    return sum(m.in_features * m.out_features * (2 if fed else 3) for m, fed in linear_layers(trainer))


def time_matmuls(trainers, device, rounds, batch=100):
    """{name: median seconds of one step's matrix products alone}: each nn.Linear of the model on its own, forward
    and backward at the training batch (the input gradient too, except for a layer fed by the data, as in
    :func:`linear_layers`), on random inputs, the configurations taking turns each round. The Gaussian step plus
    the difference between two configurations' times is the step a configuration would take if everything but
    its wider layers cost what the Gaussian's does: the floor its layer sizes set."""
    def layer_jobs(trainer):
        jobs = []
        for m, fed in linear_layers(trainer):
            w = m.weight.detach().clone().requires_grad_()
            b = m.bias.detach().clone().requires_grad_() if m.bias is not None else None
            x = torch.randn(batch, m.in_features, device=device).requires_grad_(not fed)
            jobs.append((w, b, x, torch.randn(batch, m.out_features, device=device)))
        return jobs

    def run(jobs):
        for w, b, x, g in jobs:
            w.grad = None
            if b is not None:
                b.grad = None
            x.grad = None
            torch.nn.functional.linear(x, w, b).backward(g)

    jobs = {n: layer_jobs(t) for n, t in trainers.items()}
    for j in jobs.values():
        for _ in range(5):
            run(j)
    times = {n: [] for n in trainers}
    for _ in range(rounds):
        for n, j in jobs.items():
            sync(device)
            t0 = now()
            run(j)
            sync(device)
            times[n].append(now() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def unavoidable_line(base, graves, mm, parts) -> str:
    """The target line's second half: the step with only the work the algorithm cannot drop added to the
    Gaussian's (its wider matrix products, the Graves backward, Adam on the wider head), and what the target
    (:data:`STEP_TARGET`) then leaves for the rest that grows with K. ``base``, ``graves`` and ``mm`` in seconds,
    ``parts`` (:func:`breakdown`) in ms."""
    extra = {"matrix products": 1e3 * (mm["graves"] - mm["gaussian"]),
             "Graves backward": parts["graves"]["of which graves backward"],
             "optimizer": parts["graves"]["optimizer"] - parts["gaussian"]["optimizer"]}
    fixed = sum(extra.values())
    rest = 1e3 * (graves - base) - fixed
    allowed = (STEP_TARGET - 1) * 1e3 * base - fixed
    return (f"- adding the Graves backward ({extra['Graves backward']:+.2f} ms) and the optimizer's extra "
            f"({extra['optimizer']:+.2f} ms, phase table below) to those matrix products "
            f"({extra['matrix products']:+.2f} ms), the graves step would be {(1e3 * base + fixed) / (1e3 * base):.2f}x; "
            f"the {STEP_TARGET}x target then leaves {allowed:.2f} ms for the rest of what grows with K (the draw and its "
            f"graph, log q(z) over K components, softplus over K D outputs), which costs {rest:.2f} ms here")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(trainers, device, warmup, rounds, per_sample):
    """Interleaved timing: {name: [seconds per step]}, ``per_sample`` steps between clock reads."""
    batches = {n: Batches(t) for n, t in trainers.items()}
    for n, t in trainers.items():
        for _ in range(warmup):
            t.train_step(next(batches[n]))
        sync(device)
    times = {n: [] for n in trainers}
    for _ in range(rounds):
        for n, t in trainers.items():
            xs = [next(batches[n]) for _ in range(per_sample)]
            sync(device)
            t0 = now()
            for x in xs:
                t.train_step(x)
            sync(device)
            times[n].append((now() - t0) / per_sample)
    for t in trainers.values():
        t.check_finite()
    return times


def time_epoch(trainer, device, steps):
    """Seconds for ``steps`` train_step calls over the shuffled training set, plus the one host read at the end."""
    it = trainer.data.batches("train", 100, shuffle=True, generator=trainer.generator)
    sync(device)
    t0 = now()
    total = torch.zeros((), device=trainer.device)
    for _, x in zip(range(steps), it, strict=False):
        total += trainer.train_step(x)[0].mean()
    total.item()
    return now() - t0


def breakdown(trainers, device, rounds):
    """{name: median ms of each phase of one step}, mirroring Trainer.train_step, the trainers taking turns
    each round (as in time_steps); the Graves backward is timed inside the backward phase."""
    from mixvae.distributions import graves_transform as gt

    vjp_times, original = [], gt.graves_vjp

    def timed_vjp(*args, **kwargs):
        sync(device)
        t0 = now()
        out = original(*args, **kwargs)
        sync(device)
        vjp_times.append(now() - t0)
        return out

    def one_step(trainer, x, phases):
        cfg = trainer.cfg.train
        vjp_times.clear()
        sync(device)
        t = [now()]
        out = trainer.model(x, trainer.estimator, num_samples=cfg.num_samples, objective=cfg.objective)
        loss = -out.surrogate.mean() + out.aux_loss
        sync(device)
        t.append(now())
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t.append(now())
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainer.params if p.grad is not None])
        sync(device)
        t.append(now())
        bad = trainer._record_finite(loss, grad_norm)
        if trainer._skip_on_device:
            trainer.optimizer.found_inf = bad.float()
        sync(device)
        t.append(now())
        trainer.optimizer.step()
        sync(device)
        t.append(now())
        if phases is not None:
            for key, a, b in [("forward", 0, 1), ("backward", 1, 2), ("grad norm", 2, 3),
                              ("finite record", 3, 4), ("optimizer", 4, 5), ("step", 0, 5)]:
                phases[key].append(t[b] - t[a])
            phases["of which graves backward"].append(sum(vjp_times))

    keys = ("forward", "backward", "of which graves backward", "grad norm", "finite record", "optimizer", "step")
    phases = {n: {k: [] for k in keys} for n in trainers}
    batches = {n: Batches(t) for n, t in trainers.items()}
    gt.graves_vjp = timed_vjp  # GravesSample.backward looks the function up in its module at call time
    try:
        for r in range(rounds + 3):
            for n, t in trainers.items():
                one_step(t, next(batches[n]), phases[n] if r >= 3 else None)  # 3 rounds warm caches up
    finally:
        gt.graves_vjp = original
    return {n: {k: 1e3 * statistics.median(v) for k, v in p.items()} for n, p in phases.items()}


def time_eval(trainer, device, images, samples):
    """Seconds to evaluate ELBO + IWAE-``samples`` on the first ``images`` test images (config chunk/batch)."""
    from mixvae.training.evaluate import evaluate

    ev = trainer.cfg.eval
    batch = min(ev.batch_size, images)
    sync(device)
    t0 = now()
    out = evaluate(trainer.model, trainer.data, "test", samples, ev.chunk, batch, ev.seed, -(-images // batch))
    sync(device)
    return now() - t0, out


def time_decoder_floor(trainer, images, samples, rows=1024):
    """Seconds of the decoder's matrix products alone (with their tanh) for ``images`` x ``samples`` latent draws,
    ``rows`` at a time: the floor of an IWAE evaluation's cost on this machine."""
    layers = [m for m in trainer.model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    z = torch.randn(rows, layers[0].in_features, device=trainer.device)
    blocks = -(-images * samples // rows)
    with torch.no_grad():
        t0 = now()
        for _ in range(blocks):
            h = z
            for i, layer in enumerate(layers):
                h = layer(h)
                if i + 1 < len(layers):
                    h = torch.tanh(h)
        return now() - t0


def _status_mib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_child(name, data_root, steps):
    """(In a subprocess) resident memory in MiB after setup, and its peak over ``steps`` steps, as JSON.

    Freed memory is handed back to the OS first (glibc malloc_trim) and the kernel's high-water mark is reset
    (/proc/self/clear_refs, Linux >= 4.0), so the rise is what the steps themselves touch.
    """
    import ctypes
    import gc

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build(name, "cpu", data_root, run_dir)
        batches = Batches(trainer)
        trainer.train_step(next(batches))  # compiles the Graves backward, creates the optimizer state
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_mib("VmRSS")
        for _ in range(steps):
            trainer.train_step(next(batches))
        peak = _status_mib("VmHWM")
    print(json.dumps({"setup_mib": before, "peak_mib": peak}))


def cpu_memory(name, data_root, steps):
    cmd = [sys.executable, __file__, "--memory-child", name, "--memory-steps", str(steps)]
    if data_root:
        cmd += ["--data-root", data_root]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_device(device, args):
    """Everything for one device; returns the markdown lines of its section."""
    from bench_rsample import cpu_description  # here: that module imports the benchmark peers (pyro, jax)

    from mixvae.distributions import graves_transform as gt

    quick = args.quick
    warmup, rounds = (2, 3) if quick else (15, args.rounds)
    per_sample = 1 if device == "cpu" else 20
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {n: build(n, device, args.data_root, f"{tmp}/{n}") for n in CONFIGS}
        fused = {n: bool(t.optimizer.defaults.get("fused")) for n, t in trainers.items()}
        macs = {n: matmul_macs(t) for n, t in trainers.items()}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = time_steps(trainers, device, warmup, rounds, per_sample)
        median = {n: statistics.median(v) for n, v in times.items()}
        memory = {}
        if device == "cuda":  # the peak of all four: each one alone, below
            for n, t in trainers.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                time_steps({n: t}, device, 1, 3, 5)
                memory[n] = ((torch.cuda.max_memory_allocated() - base) / 2**20, torch.cuda.max_memory_allocated() / 2**20)
        elif not quick:
            for n in trainers:
                m = cpu_memory(n, args.data_root, 20)
                memory[n] = (m["peak_mib"] - m["setup_mib"], m["peak_mib"])
        epoch = {}
        if not args.no_epoch:
            steps = 5 if quick else EPOCH_STEPS
            for n, t in trainers.items():
                epoch[n] = time_epoch(t, device, steps) * EPOCH_STEPS / steps
        parts = breakdown({n: trainers[n] for n in ("gaussian", "graves")}, device, 3 if quick else args.rounds)
        mm = time_matmuls({n: trainers[n] for n in ("gaussian", "graves")}, device, 5 if quick else 4 * args.rounds)
        eval_images = min(args.eval_images if device == "cpu" else TEST_IMAGES, trainers["gaussian"].data.sizes()["test"])
        eval_samples = 50 if quick else 5000
        evals = {n: time_eval(trainers[n], device, eval_images, eval_samples) for n in ("gaussian", "graves")}
        floor = time_decoder_floor(trainers["gaussian"], eval_images, eval_samples)
    load_after = os.getloadavg()

    base = median["gaussian"]
    lines = [
        f"## {device.upper()}: {hardware(device) if device != 'cpu' else f'{hardware(device)}; {cpu_description()}'}",
        "",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} cores). Other jobs share this machine: "
        "the ratios, measured side by side, hold; absolute times are upper bounds.",
        f"- {warmup} warm-up steps, then {rounds} interleaved rounds of {per_sample} step(s) per configuration; "
        f"Graves backend `{gt.describe_backend()}`{' (fell back to eager)' if gt._state['failed'] else ''}; "
        f"fused optimizer: {', '.join(f'{n} {fused[n]}' for n in fused)}.",
        "- s/epoch (median): median step x 500 steps (50,000 training images at batch 100)"
        + ("; s/epoch (timed): 500 real `train_step` calls over the shuffled set, one host read at the end "
           "(no validation or logging)." if epoch else "."),
        "- peak memory: " + ("`torch.cuda.max_memory_allocated` over 15 steps, above what was allocated before "
                             "(step), and in all." if device == "cuda" else
                             "a fresh subprocess per configuration: peak resident memory over 20 steps (VmHWM, "
                             "reset after setup, freed memory returned to the OS first) minus the resident memory "
                             "before them (step), and the peak in all (data, model, optimizer included)." if memory else
                             "not measured (--quick)."),
        "",
        "| configuration | K | median step (ms) | IQR (ms) | steps/s | s/epoch (median) | s/epoch (timed) "
        "| step memory (MiB) | peak memory (MiB) | step / gaussian |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, v in times.items():
        q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0], v[0], v[0]]
        mem = memory.get(n)
        lines.append(
            f"| {n} | {CONFIGS[n][0]} | {1e3 * median[n]:.2f} | {1e3 * (q[2] - q[0]):.2f} | {1 / median[n]:.1f} "
            f"| {EPOCH_STEPS * median[n]:.2f} | {f'{epoch[n]:.2f}' if n in epoch else '-'} "
            f"| {f'{mem[0]:.0f}' if mem else '-'} | {f'{mem[1]:.0f}' if mem else '-'} | {median[n] / base:.2f}x |"
        )
    ratio = median["graves"] / base
    lines += ["", "### Targets", ""]
    if device == "cpu":
        lines.append(f"- graves K = 5 step within {STEP_TARGET}x of the Gaussian VAE step: **{ratio:.2f}x** "
                     f"({'met' if ratio <= STEP_TARGET else 'not met'}); the step's matrix products alone (forward and "
                     f"backward, counted from the layers) are {macs['graves'] / macs['gaussian']:.2f}x the "
                     "Gaussian's, since the encoder's head gives K (2D + 1) outputs instead of 2D. Timed alone "
                     f"(each layer forward and backward at batch 100, side by side), they take {1e3 * mm['gaussian']:.2f} ms "
                     f"(Gaussian) and {1e3 * mm['graves']:.2f} ms (graves): with everything else costing what the "
                     f"Gaussian step's does, the graves step would be {(base + mm['graves'] - mm['gaussian']) / base:.2f}x "
                     "(the floor its layer sizes set)")
        lines.append(unavoidable_line(base, median["graves"], mm, parts))
    else:
        ep = epoch.get("graves", EPOCH_STEPS * median["graves"])
        lines.append(f"- one MNIST epoch, graves K = 5, under 1 s: **{ep:.2f} s** ({'met' if ep < 1 else 'not met'})")
    full = evals["gaussian"][0] * TEST_IMAGES / eval_images
    how = "timed on all of them" if eval_images == TEST_IMAGES else f"timed on {eval_images} images, x {TEST_IMAGES // eval_images}"
    lines.append(f"- IWAE-{eval_samples} evaluation of the 10,000 test images ({how}): Gaussian VAE **{full:.0f} s**, "
                 f"graves K = 5 {evals['graves'][0] * TEST_IMAGES / eval_images:.0f} s; the decoder's matrix products "
                 f"alone (the floor, same rows, this machine) {floor * TEST_IMAGES / eval_images:.0f} s, so the "
                 f"Gaussian evaluation costs {evals['gaussian'][0] / floor:.2f}x its floor"
                 + (f" (GPU target: under 60 s, {'met' if full < 60 else 'not met'})" if device == "cuda" else
                    " (the 60 s target is for a GPU)"))
    if device == "cpu":
        lines.append("- GPU targets (epoch < 1 s, IWAE-5000 < 60 s, IWAE-table VAE to NLL <= 87.5 in < 20 min): "
                     "not measured here (no GPU in this run).")
    lines += ["", "### Where the Graves step's extra time goes (median ms per phase)", "",
              "| phase | gaussian | graves | difference |", "|---|---:|---:|---:|"]
    for key in parts["graves"]:
        a, b = parts["gaussian"][key], parts["graves"][key]
        lines.append(f"| {key} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    lines.append("")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few steps and a tiny evaluation (smoke test)")
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--data-root", default=None, help="dataset root (default: $MIXVAE_DATA_DIR, then ./data)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    p.add_argument("--rounds", type=int, default=100, help="timed steps per configuration")
    p.add_argument("--eval-images", type=int, default=100, help="test images for the CPU evaluation timing")
    p.add_argument("--no-epoch", action="store_true", help="skip timing one real epoch per configuration")
    p.add_argument("--note", default="", help="a line about the machine (e.g. other jobs sharing it)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time on this process's CPU time, not wall time (for a machine shared with other jobs)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-steps", type=int, default=20, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        return memory_child(args.memory_child, args.data_root, args.memory_steps)
    if args.quick:
        args.eval_images = min(args.eval_images, 10)
    share_dataset()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    lines = header("Training throughput: MNIST, batch 100, 784-200-200-50 (scripts/bench_train.py)")
    if args.cpu_time:
        _CLOCK.update(fn=time.process_time, name="CPU time of this process (time.process_time)")
    if args.note:
        lines += [f"Machine note: {args.note}", ""]
    lines += [f"Every time below is {_CLOCK['name']}.", ""]
    for device in devices:
        print(f"benchmarking on {device} ...", flush=True)
        lines += bench_device(device, args)
    if "cuda" not in devices:
        lines += ["## CUDA", "", "No GPU in this run: the GPU targets stay open.", ""]
    print("\n".join(lines))
    write_report(Path(args.out) / "train_throughput.md", lines)


if __name__ == "__main__":
    main()
