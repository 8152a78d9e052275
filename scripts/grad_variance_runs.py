#!/usr/bin/env python
"""Encoder gradient variance, SNR and step time of the estimators at a run's final checkpoint (and during
training, at the snapshots the run kept with checkpoint.keep).

    python scripts/grad_variance_runs.py RUN_DIR [RUN_DIR ...] [--repetitions 200] [--batch 100]

For each run directory (train.py's output: config.yaml + checkpoint.pt) it writes RUN_DIR/grad_variance.json:
    own   the estimator the run was trained with (its trained state: running mean, learned baseline), with the
          run's objective and S;
    rows  for runs trained with the reference estimator (--reference, default graves): every row of
          configs/experiment/rows/ at the same parameters (rows that pin another K are skipped). Stateful
          estimators are warmed up first (--warmup training-mode calls on training batches at the fixed model,
          their own parameters fitted to their aux_loss), so that an untrained baseline is not measured.
    during the run's own estimator at each snapshot <run dir>/snapshots/epoch<N>.pt (train.py's
          checkpoint.keep=[...]), with the estimator state saved there: [{"epoch": N, ...}], by epoch.
Each entry holds mixvae.diagnostics.gradient_variance of the ENCODER parameters ("grad/var_encoder",
"grad/snr_encoder": per-coordinate variance and |mean|/std averaged over coordinates, Rainforth et al. 2018)
over R repetitions on one fixed batch of test images (a seeded random subset, binarized once with that seed
for dynamic datasets), and "time/step_s": the median time of one forward + backward pass over all parameters
on that batch (--threads torch threads). Same batch, seed and R for every estimator -> comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import hydra.utils
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_results import estimator_name, row_label  # noqa: E402

from mixvae.data import load_dataset  # noqa: E402
from mixvae.diagnostics import gradient_variance  # noqa: E402
from mixvae.training import checkpoint as ckpt  # noqa: E402
from mixvae.training.loop import SNAPSHOTS  # noqa: E402
from mixvae.training.runtime import git_revision, hardware, portable_path  # noqa: E402

CONFIGS = REPO / "configs"
ROWS = CONFIGS / "experiment" / "rows"
OUTPUT = "grad_variance.json"


def row_configs() -> dict[str, DictConfig]:
    """{row name: composed config} for configs/experiment/rows/*.yaml, with the K each row pins (or None)."""
    rows = {}
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        for path in sorted(ROWS.glob("*.yaml")):
            cfg = compose("config", [f"+experiment/rows={path.stem}"])
            pinned = OmegaConf.select(OmegaConf.load(path), "model.num_components")
            rows[path.stem] = (cfg, pinned)
    return rows


def fixed_batch(data, size: int, seed: int) -> torch.Tensor:
    """``size`` test images chosen by a seeded permutation, binarized once with that seed if dynamic: [B, 784]."""
    gen = torch.Generator(device=data.device).manual_seed(seed)
    x = data.split("test")
    idx = torch.randperm(x.shape[0], generator=gen, device=data.device)[:size]
    x = x[idx]
    return torch.bernoulli(x, generator=gen) if data.dynamic else x


def build_estimator(node: DictConfig, x_dim: int):
    return hydra.utils.instantiate(node, context_dim=x_dim)


def warm_up(model, est, data, steps: int, num_samples: int, objective: str, seed: int) -> None:
    """Let a stateful estimator (running mean, learned baseline) adapt to the fixed model; the model stays put."""
    params = list(est.parameters())
    if steps <= 0 or not (params or list(est.buffers())):
        return
    opt = torch.optim.Adam(params, lr=1e-3) if params else None
    gen = torch.Generator(device=data.device).manual_seed(seed + 1)
    est.train()
    batches = data.batches("train", 100, shuffle=True, generator=gen)
    for _, x in zip(range(steps), batches, strict=False):
        out = model(x, est, num_samples=num_samples, objective=objective)
        if opt is not None and out.aux_loss.requires_grad:
            opt.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(out.aux_loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
    est.eval()


def step_time(model, est, x, num_samples: int, objective: str, repeats: int) -> float:
    """Median seconds of forward + backward over all parameters (a training step without the optimizer)."""
    params = [p for p in [*model.parameters(), *est.parameters()] if p.requires_grad]
    times = []
    for i in range(repeats + 2):  # two warm-up calls: first-call allocations, torch.compile of Graves' backward
        t0 = time.perf_counter()
        out = model(x, est, num_samples=num_samples, objective=objective)
        loss = -out.surrogate.mean() + out.aux_loss
        torch.autograd.grad(loss, params, allow_unused=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model, est, x, num_samples: int, objective: str, args) -> dict:
    """gradient_variance of the encoder parameters + step time, for one estimator at the model's parameters."""
    holder = {}

    def make_q():  # a fresh graph each repetition; f below must use the same q
        holder["q"] = model.posterior(x)
        return holder["q"]

    def f(z):
        return model.log_joint(x, z) - holder["q"].log_prob(z)

    model.eval()
    stats = gradient_variance(est, make_q, f, {"encoder": list(model.encoder.parameters())},
                              repetitions=args.repetitions, num_samples=num_samples, objective=objective,
                              context=x, seed=args.seed)
    stats["time/step_s"] = step_time(model, est, x, num_samples, objective, args.step_repeats)
    return stats


def describe(cfg: DictConfig, num_components: int) -> dict:
    est = OmegaConf.to_container(cfg.estimator, resolve=True)
    return {"estimator": estimator_name(est), "label": row_label({**OmegaConf.to_container(cfg, resolve=True),
                                                                   "model": {"num_components": num_components}}),
            "options": {k: v for k, v in est.items() if k not in ("_target_", "context_dim")},
            "objective": cfg.train.objective, "num_samples": int(cfg.train.num_samples)}


def process(run_dir: Path, args, rows) -> dict:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    device = torch.device("cpu")
    d = cfg.dataset
    data = load_dataset(d.name, root=d.get("root"), valid_size=d.get("valid_size"), device=device,
                        seed=cfg.seed, download=False)
    saved = ckpt.load(run_dir / ckpt.CHECKPOINT, device)
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, x_dim=data.x_dim, train_mean=data.train_mean)
    model.load_state_dict(saved["model"])
    for p in model.parameters():
        p.requires_grad_(True)
    K = int(cfg.model.num_components)
    x = fixed_batch(data, args.batch, args.seed)
    own_est = build_estimator(cfg.estimator, data.x_dim)
    own_est.load_state_dict(saved["estimator"])
    result = {
        "run_dir": portable_path(run_dir), "checkpoint": ckpt.CHECKPOINT, "epoch": saved["state"]["epoch"],
        "batch": {"split": "test", "size": int(x.shape[0]), "seed": args.seed},
        "repetitions": args.repetitions, "threads": torch.get_num_threads(),
        "git": git_revision(), "hardware": hardware(device),
        "own": {**describe(cfg, K), **measure(model, own_est, x, int(cfg.train.num_samples),
                                              cfg.train.objective, args)},
        "rows": {},
    }
    for snap in sorted((run_dir / SNAPSHOTS).glob("epoch*.pt"), key=lambda p: int(p.stem[5:])):
        state = ckpt.load(snap, device)
        model.load_state_dict(state["model"])
        est = build_estimator(cfg.estimator, data.x_dim)
        est.load_state_dict(state["estimator"])
        result.setdefault("during", []).append({"epoch": int(state["epoch"]), **measure(
            model, est, x, int(cfg.train.num_samples), cfg.train.objective, args)})
    model.load_state_dict(saved["model"])  # the final parameters again, for the rows below
    if estimator_name(OmegaConf.to_container(cfg.estimator)) == args.reference:
        for name, (row_cfg, pinned) in rows.items():
            if pinned is not None and int(pinned) != K:
                continue
            est = build_estimator(row_cfg.estimator, data.x_dim)
            S, objective = int(row_cfg.train.num_samples), row_cfg.train.objective
            warm_up(model, est, data, args.warmup, S, objective, args.seed)
            result["rows"][name] = {**describe(row_cfg, K), **measure(model, est, x, S, objective, args)}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (config.yaml + checkpoint.pt)")
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100, help="test images in the fixed batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=100, help="training-mode calls for stateful estimators")
    parser.add_argument("--step-repeats", type=int, default=10, help="timed steps for time/step_s (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", default="graves",
                        help="runs trained with this estimator get every row measured at their checkpoint")
    parser.add_argument("--force", action="store_true", help="measure again where grad_variance.json exists")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = row_configs()
    for run_dir in args.runs:
        out = run_dir / OUTPUT
        if out.exists() and not args.force:
            print(f"{out} exists; skipped (--force to redo)")
            continue
        if not (run_dir / ckpt.CHECKPOINT).exists():
            print(f"{run_dir}: no {ckpt.CHECKPOINT}; skipped", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        result = process(run_dir, args, rows)
        result["wall_time_s"] = time.perf_counter() - t0
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{out}: own {result['own']['label']} var {result['own']['grad/var_encoder']:.4g}, "
              f"{len(result['rows'])} rows, {result['wall_time_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
