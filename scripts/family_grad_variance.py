#!/usr/bin/env python
"""Encoder gradient variance of G-REP (no baseline, running mean, learned) beside the pathwise estimator and the
score function, for the latent_families VAE with a Gamma or Beta posterior, after a short pathwise training.

    python scripts/family_grad_variance.py                      # Beta and Gamma, D = 2 -> results/family_grad_variance.md
    python scripts/family_grad_variance.py --families beta --steps 600 --repetitions 200

Why: at D = 2 G-REP without a baseline collapsed the Beta VAE (results/latent_families.md) while the pathwise
estimator trained it. The model is configs/experiment/latent_families.yaml's (dynamically binarized MNIST),
trained --steps steps of batch 100 with `graves` (seeded), so that the posterior is a trained one rather than the
initialisation; then each estimator's gradient of the encoder parameters is measured on one fixed batch of test
images (scripts/grad_variance_runs.py's fixed_batch, warm_up and measure: stateful baselines are fitted first,
the same batch, seed and repetitions for every estimator). Columns as in mixvae.diagnostics.gradient_variance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import grad_variance_runs as gv  # noqa: E402
from _report import hardware, header, write_report  # noqa: E402

from mixvae.training import Trainer  # noqa: E402

ESTIMATORS = {  # label -> estimator config
    "graves": {"_target_": "mixvae.estimators.graves.Graves"},
    "grep (none)": {"_target_": "mixvae.estimators.grep.GRep", "baseline": "none"},
    "grep (mean)": {"_target_": "mixvae.estimators.grep.GRep", "baseline": "mean"},
    "grep (learned)": {"_target_": "mixvae.estimators.grep.GRep", "baseline": "learned"},
    "score_function (learned)": {"_target_": "mixvae.estimators.score_function.ScoreFunction",
                                 "baseline": "learned"},
}


def trained_model(family: str, dim: int, steps: int, seed: int, run_dir: str):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", ["+experiment=latent_families", f"experiment/families@_global_={family}",
                                 f"model.latent_dim={dim}", f"seed={seed}", "logger=none", "progress=false",
                                 "threads=1", "hydra.mode=RUN"])
    t = Trainer(cfg, run_dir)
    opt = torch.optim.Adam(t.model.parameters(), lr=float(cfg.optim.lr))
    gen = torch.Generator(device=t.data.device).manual_seed(seed)
    t.model.train()
    for _, x in zip(range(steps), t.data.batches("train", 100, shuffle=True, generator=gen), strict=False):
        out = t.model(x, t.estimator, num_samples=1, objective="elbo")
        loss = -out.surrogate.mean() + out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return t.model, t.data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=["beta", "gamma"], choices=["beta", "gamma"])
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--steps", type=int, default=600, help="graves training steps before measuring")
    p.add_argument("--repetitions", type=int, default=200)
    p.add_argument("--warmup", type=int, default=300, help="baseline fitting calls before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "results" / "family_grad_variance.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lines = header("G-REP against the implicit gradient: encoder gradient variance on Gamma and Beta VAEs")
    lines += [f"Hardware: {hardware()}.", "",
              f"Model: configs/experiment/latent_families.yaml at D = {args.dim}, trained {args.steps} steps of "
              f"batch 100 with `graves` (seed {args.seed}); then every estimator on one fixed batch of 100 test "
              f"images, {args.repetitions} repetitions, stateful baselines fitted for {args.warmup} calls first. "
              "var: per-coordinate variance of the encoder gradient, averaged; SNR: |mean| / std, averaged.", ""]

    class Settings:
        repetitions, seed, step_repeats = args.repetitions, args.seed, 3

    for family in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            model, data = trained_model(family, args.dim, args.steps, args.seed, tmp)
            x = gv.fixed_batch(data, 100, args.seed)
            lines += [f"## {family}, D = {args.dim}", "", "| estimator | var | SNR | var / graves |",
                      "|---|---:|---:|---:|"]
            base = None
            for label, node in ESTIMATORS.items():
                est = gv.build_estimator(OmegaConf.create(node), data.x_dim)
                gv.warm_up(model, est, data, args.warmup, 1, "elbo", args.seed)
                s = gv.measure(model, est, x, 1, "elbo", Settings)
                var, snr = s["grad/var_encoder"], s["grad/snr_encoder"]
                base = var if base is None else base
                lines.append(f"| {label} | {var:.4g} | {snr:.3g} | {var / base:.1f}x |")
                print(f"{family} {label}: var {var:.4g} snr {snr:.3g}", flush=True)
            lines.append("")
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
