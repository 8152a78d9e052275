#!/usr/bin/env python
"""Launch the sweeps behind results/*.md, measure gradient variance at their checkpoints, collect small files.

    python experiments/run_tables.py                      # every table, reduced CPU budget (about 100 min, 2 cores)
    python experiments/run_tables.py iwae_table1          # one table
    python experiments/run_tables.py --budget full        # the experiment files' own (paper) budgets
    python scripts/make_results.py                        # then rebuild results/*.md and results/*.png

For each table (= configs/experiment/<table>.yaml, which carries its sweep grid):
1. train:   python train.py +experiment=<table> <budget overrides> hydra.sweep.dir=runs/tables/<budget>/<table>
            with the joblib launcher (``--jobs`` runs at once, one torch thread each);
2. measure: scripts/grad_variance_runs.py on every run dir (encoder gradient variance, SNR, step time at the
            final checkpoint, one fixed test batch) -> <run dir>/grad_variance.json;
3. collect: summary.json, metrics.jsonl, config.yaml, grad_variance.json of every completed run ->
            results/runs/<table>/<run name>/ (a few KB each), plus results/runs/<table>/sweep.json (the command).
Rerunning continues: finished runs are skipped (resume=auto), killed ones continue from their checkpoint.

Reduced CPU budget (``--budget reduced``, the default): about 95 minutes on the reference machine (2 cores,
torch 2.14.1 CPU build), 2 joblib jobs x 1 torch thread. Measured there:
- one training step, batch 100, 784-200-200-50, 1 thread, alone: graves K=5 14 ms, K=1 8 ms, enumerate 22 ms,
  score_function 10-11 ms, vimco (S=5) 24 ms, gumbel_softmax 11 ms, grep 13 ms, graves S=5 24-28 ms,
  S=50 150-200 ms; with two runs sharing the 2 cores a whole MNIST epoch (500 steps, data and Adam included)
  takes 21 s (score_function) to 33 s (enumerate, vimco): 2.5-4x the bare step times;
- IWAE-5000 on 100 test images: 18 s alone, 21-42 s with two runs; start-up (imports, data, torch.compile) ~8 s;
- one reduced run of estimators_mnist with 1 epoch: 48-80 s wall clock; gradient variance of one run: 9-11 s
  for its own estimator, about a minute more for a Graves run (every row at its checkpoint).
Estimated minutes per table (ESTIMATE_MIN below; gradient variance included) add up to ~95.
Full budget (``--budget full``): the experiment files' own budgets (3280 epochs for the IWAE-style tables):
weeks on this CPU; meant for a GPU (drop hydra/launcher=joblib, e.g. ``--jobs 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))
from make_results import load_config, run_name  # noqa: E402  (scripts/ is not a package)

# Run-control overrides shared by every reduced table: no W&B, no progress bar, validation on the first
# 100 valid images with IWAE-100 every epoch (the learning curves), test IWAE-5000 on the first 100 test images.
_REDUCED = ["logger=none", "progress=false", "eval.every=1", "eval.valid_samples=100", "eval.batch_size=100",
            "eval.max_batches=1", "eval.chunk=500"]

# table -> overrides of the reduced CPU budget (the yaml files hold the full budget).
BUDGETS: dict[str, dict[str, list[str]]] = {
    "reduced": {
        "estimators_mnist": [*_REDUCED, "train.epochs=2"],  # 1000 steps
        "estimators_omniglot": [*_REDUCED, "train.epochs=3"],  # 690 steps (23,000 training images)
        # S = 50 steps cost 10-15x the others: 200 batches (20,000 images) of one epoch, two seeds.
        "iwae_table1": [*_REDUCED, "train.epochs=1", "train.max_batches=200", "seed=0,1"],
        # binarized MNIST's test file is ordered by digit, so no subset: the whole test set with IWAE-50 (the
        # paper's 50 samples), validated once at the end on the whole valid set with 10 samples.
        # the authors' own protocol (early stopping, 150-250 epochs) fits a CPU: the experiment file as it is.
        "nalisnick_dlgm": ["logger=none", "progress=false"],
        "estimators_vs_k": [*_REDUCED, "train.epochs=1"],
    },
    # tests: seconds per run on the fixture data (dataset.root=...); not a budget for numbers.
    "tiny": {name: ["logger=none", "progress=false", "model.hidden=[16]", "model.latent_dim=2", "train.epochs=2",
                    "train.batch_size=32", "train.max_batches=3", "train.log_every=2", "eval.valid_samples=4",
                    "eval.iwae_samples=10", "eval.chunk=10", "eval.batch_size=20", "eval.max_batches=1",
                    "dataset.download=false"]
             for name in ["estimators_mnist", "estimators_omniglot", "iwae_table1", "nalisnick_dlgm",
                          "estimators_vs_k"]},
    "full": {name: ["logger=none", "progress=false"] for name in
             ["estimators_mnist", "estimators_omniglot", "iwae_table1", "nalisnick_dlgm", "estimators_vs_k"]},
}
# Estimated minutes with 2 jobs on 2 cores for the reduced budget (training + evaluation + gradient variance).
# Measured per-run times are recorded in every summary.json (wall_time_s) and shown in results/*.md.
ESTIMATE_MIN = {"estimators_mnist": 18 + 4, "estimators_omniglot": 14 + 4, "iwae_table1": 22,
                "nalisnick_dlgm": 21 + 4, "estimators_vs_k": 3 + 3}
# tables whose runs get no gradient-variance measurement (their markdown does not show it)
NO_GRAD = {"iwae_table1"}
TABLES = list(BUDGETS["reduced"])
SMALL_FILES = ["summary.json", "metrics.jsonl", "config.yaml", "grad_variance.json"]


def train_command(table: str, budget: str, sweep_dir: Path, jobs: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(REPO / "train.py"), f"+experiment={table}", *BUDGETS[budget][table],
           f"hydra.sweep.dir={sweep_dir}"]
    if jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "threads=1"]
    return cmd + list(extra)


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Completed runs of a sweep, in job order."""
    found = []
    for summary in sweep_dir.glob("*/summary.json"):
        if json.loads(summary.read_text()).get("status") == "completed":
            found.append(summary.parent)
    return sorted(found, key=lambda p: (len(p.name), p.name))


def measure(dirs: list[Path], jobs: int, extra: list[str]) -> None:
    """scripts/grad_variance_runs.py over the run dirs, split among ``jobs`` processes of one thread each."""
    if not dirs:
        return
    parts = [dirs[i::jobs] for i in range(max(jobs, 1))]
    procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "grad_variance_runs.py"), *map(str, part), *extra],
                              cwd=REPO) for part in parts if part]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"grad_variance_runs.py failed (exit codes {codes})")


def collect(table: str, dirs: list[Path], dest_root: Path, command: list[str], budget: str,
            elapsed_s: float | None) -> Path:
    """Copy the small files of each run into dest_root/<table>/<run name>/ (replacing what was there)."""
    dest = dest_root / table
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for run in dirs:
        name = run_name(load_config(run))
        out = dest / name
        if out.exists():
            raise SystemExit(f"two runs of {table} map to the same name {name!r} ({run})")
        out.mkdir()
        for fname in SMALL_FILES:
            if (run / fname).exists():
                shutil.copy2(run / fname, out / fname)
    shown = ["python", *(a.replace(f"{REPO}{os.sep}", "") for a in command[1:])]
    driver = f"python experiments/run_tables.py {table}" + ("" if budget == "reduced" else f" --budget {budget}")
    (dest / "sweep.json").write_text(json.dumps({
        "table": table, "budget": budget, "driver": driver, "command": shlex.join(shown), "runs": len(dirs),
        "sweep_wall_time_s": elapsed_s, "collected": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="*", default=TABLES, help=f"any of {', '.join(TABLES)} (default: all)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="reduced")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (joblib), one thread each")
    parser.add_argument("--sweep-root", type=Path, default=REPO / "runs" / "tables",
                        help="sweep dirs go to <sweep-root>/<budget>/<table> (default: runs/tables, git-ignored)")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "runs",
                        help="where the small per-run files are collected")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for train.py (repeatable), e.g. --set dataset.root=DIR")
    parser.add_argument("--grad-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for grad_variance_runs.py (repeatable), e.g. --grad-arg=--repetitions=20")
    parser.add_argument("--skip-train", action="store_true", help="only measure and collect existing runs")
    parser.add_argument("--skip-grad", action="store_true", help="do not measure gradient variance")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tables) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; choose from {', '.join(TABLES)}")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.budget == "reduced":
        print(f"estimated: {sum(ESTIMATE_MIN[t] for t in args.tables)} min on 2 cores "
              f"({', '.join(f'{t} {ESTIMATE_MIN[t]}' for t in args.tables)})", flush=True)
    failed: list[str] = []
    for table in args.tables:
        sweep_dir = (args.sweep_root / args.budget / table).resolve()
        cmd = train_command(table, args.budget, sweep_dir, args.jobs, args.set)
        elapsed = None
        if not args.skip_train:
            print(f"[{table}] {shlex.join(cmd)}", flush=True)
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=REPO)
            elapsed = time.perf_counter() - t0
            print(f"[{table}] sweep finished in {elapsed / 60:.1f} min (exit {res.returncode})", flush=True)
            if res.returncode != 0:  # collect what completed; rerunning continues the rest
                failed.append(table)
                print(f"[{table}] train.py failed with exit code {res.returncode}; collecting the completed runs",
                      flush=True)
        dirs = run_dirs(sweep_dir)
        if not args.skip_grad and table not in NO_GRAD:
            t0 = time.perf_counter()
            measure(dirs, args.jobs, args.grad_arg)
            print(f"[{table}] gradient variance of {len(dirs)} runs in {(time.perf_counter() - t0) / 60:.1f} min")
        dest = collect(table, dirs, args.results, cmd, args.budget, elapsed)
        print(f"[{table}] {len(dirs)} runs collected in {dest}", flush=True)
    if failed:
        raise SystemExit(f"some runs failed in: {', '.join(failed)} (rerun the same command to continue them)")


if __name__ == "__main__":
    main()
