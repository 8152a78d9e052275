#!/usr/bin/env python
"""Launch the sweeps behind results/*.md, measure gradient variance at their checkpoints, collect small files.

    python experiments/run_tables.py nalisnick_dlgm               # one table at its CPU budget
    python experiments/run_tables.py                              # every table that has a CPU budget
    python experiments/run_tables.py estimators_mnist --budget smoke   # a smoke test (collected apart)
    python experiments/run_tables.py --budget full                # the experiment files' own (paper) budgets
    python scripts/make_results.py                                # then rebuild results/*.md and results/*.png

The tables, their experiment files and their budgets are the catalogue experiments/tables.yaml (read through
scripts/make_results.py's `load_catalogue`). For each table:
1. train:   python train.py +experiment=<table> <budget overrides> hydra.sweep.dir=<sweep root>/<budget>/<table>
            with the subprocess launcher (hydra/launcher=subprocess: each job in a fresh process, ``--jobs`` at
            once, one torch thread each); a budget with `sweeps` runs one such multirun per part, in turn;
2. measure: scripts/grad_variance_runs.py on every run dir (encoder gradient variance, SNR, step time at the
            final checkpoint, one fixed test batch) -> <run dir>/grad_variance.json;
3. collect: summary.json, metrics.jsonl, config.yaml, grad_variance.json of every completed run ->
            results/runs/<table>/<run name>/ (a few KB each; smoke budgets: results/smoke/runs/), plus
            sweep.json there (the command and budget).
Rerunning continues: finished runs are skipped (resume=auto) and killed ones continue from their checkpoint;
sweep sub-directories are named by the run (row and seed), so a partial or extended grid finds its runs again.
The sweep root defaults to $MIXVAE_RUNS_DIR, else ~/.cache/mixvae/runs: outside the work tree, so that a later
invocation on the same machine continues the runs. ``--skip-train`` collects what has completed so far.
Runs already collected in results/runs/<table>/ are skipped too (the launcher's ``skip_committed``: a job whose
config describes the same run as a committed config.yaml), so a fresh clone trains only what the table lacks;
``--rerun-committed`` trains them again.

Budgets: `cpu` is each table's budget for two CPU cores (one-thread runs of at most about 2 hours, two at once;
its `note` in the catalogue says how it compares with the paper's); `smoke` the old minutes-long budgets, kept
as smoke tests; `full` the experiment files' own budgets (3280 epochs for the IWAE-style tables: meant for a GPU,
e.g. ``--jobs 1``); `tiny` for the tests.
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
from make_results import load_catalogue, load_config, run_name  # noqa: E402  (scripts/ is not a package)

CATALOGUE = load_catalogue()
TABLES = list(CATALOGUE["tables"])
SMALL_FILES = ["summary.json", "metrics.jsonl", "config.yaml", "grad_variance.json"]


def budget_entry(table: str, budget: str) -> dict | None:
    """The catalogue's budget `budget` of `table` (its own, else a common one), or None if it has none."""
    own = CATALOGUE["tables"][table].get("budgets", {})
    return own.get(budget) or CATALOGUE.get("common_budgets", {}).get(budget)


def budget_names() -> list[str]:
    names = set(CATALOGUE.get("common_budgets", {}))
    for spec in CATALOGUE["tables"].values():
        names |= set(spec.get("budgets", {}))
    return sorted(names)


def default_sweep_root() -> Path:
    return Path(os.environ.get("MIXVAE_RUNS_DIR") or Path.home() / ".cache" / "mixvae" / "runs")


def train_commands(table: str, budget: str, sweep_dir: Path, jobs: int, extra: list[str]) -> list[list[str]]:
    """One train.py multirun per part of the budget: its `overrides`, then each of its `sweeps` (a budget whose
    rows differ in more than the grid, e.g. fewer epochs for the costlier rows), run one after the other into
    the same sweep dir; the extra overrides (--set) come last and apply to every part."""
    experiment = CATALOGUE["tables"][table]["experiment"]
    entry = budget_entry(table, budget)
    cmds = []
    for part in entry.get("sweeps") or [[]]:
        cmd = [sys.executable, str(REPO / "train.py"), f"+experiment={experiment}", *entry["overrides"], *part,
               f"hydra.sweep.dir={sweep_dir}"]
        # every job in a fresh process (hydra_plugins/mixvae_launcher): a sweep that outlives a code edit never
        # runs a new config on old code, and one failed job does not stop the others
        cmd += ["hydra/launcher=subprocess", f"hydra.launcher.n_jobs={jobs}", "threads=1"]
        cmds.append(cmd + list(extra))
    return cmds


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


def shown_command(commands: list[list[str]]) -> str:
    """The train.py commands as a shell line for committed files: no machine folders (the repository relative,
    the home directory as ~)."""
    return " && ".join(shlex.join(["python", *(a.replace(f"{REPO}{os.sep}", "").replace(str(Path.home()), "~")
                                              for a in command[1:])]) for command in commands)


def collect(table: str, dirs: list[Path], dest_root: Path, commands: list[list[str]], budget: str,
            elapsed_s: float | None, extra: list[str] = ()) -> Path:
    """Copy the small files of each run into dest_root/<table>/<run name>/, beside the runs already there.

    A run collected again (continued, or tested again) replaces its own folder; every other folder stays, so
    collecting on a machine that holds only some of a table's runs (a fresh clone, a second machine) never drops
    the committed runs of the others. sweep.json says this invocation's command (with its --set overrides) and
    keeps the earlier ones under "collections". One table folder holds one budget: runs of another are refused with one line.
    """
    dest = dest_root / table
    sweep_path = dest / "sweep.json"
    old = json.loads(sweep_path.read_text()) if sweep_path.exists() else {}
    if old.get("budget") not in (None, budget):
        raise SystemExit(f"{dest} holds runs of budget {old['budget']!r}, not {budget!r}: collect these into "
                         f"another folder (--results DIR), or move that table's runs away first")
    dest.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for run in dirs:
        name = run_name(load_config(run))
        if name in names:
            raise SystemExit(f"two runs of {table} map to the same name {name!r} ({run})")
        names.append(name)
        out = dest / name
        if out.exists():
            shutil.rmtree(out)  # the same run again: its newer files, none left over from before
        out.mkdir()
        for fname in SMALL_FILES:
            if (run / fname).exists():
                shutil.copy2(run / fname, out / fname)
    kept = sorted(p.name for p in dest.iterdir() if p.is_dir() and p.name not in names)
    driver = f"python experiments/run_tables.py {table} --budget {budget}"
    entry = budget_entry(table, budget)
    now = {"driver": driver + "".join(f" --set {shlex.quote(x)}" for x in extra),
           "command": shown_command(commands), "collected_runs": names, "sweep_wall_time_s": elapsed_s,
           "collected": time.strftime("%Y-%m-%d %H:%M:%S")}
    history = old.get("collections") or ([{k: old[k] for k in ("command", "runs", "sweep_wall_time_s", "collected")
                                            if k in old}] if old else [])
    sweep_path.write_text(json.dumps({
        "table": table, "budget": budget, "reproduction": bool(entry.get("reproduction", False)),
        "budget_note": entry.get("note", ""), "driver": driver, "command": now["command"],
        "runs": len(names) + len(kept), "sweep_wall_time_s": elapsed_s, "collected": now["collected"],
        "collections": [*history, now],
    }, indent=2) + "\n")
    if kept:
        print(f"[{table}] kept {len(kept)} run(s) collected before (not in this sweep dir)", flush=True)
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="*", help=f"any of {', '.join(TABLES)} (default: all with that budget)")
    parser.add_argument("--budget", choices=budget_names(), default="cpu")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (joblib), one thread each")
    parser.add_argument("--sweep-root", type=Path, default=None,
                        help="sweep dirs go to <sweep-root>/<budget>/<table> (default: $MIXVAE_RUNS_DIR, else "
                             "~/.cache/mixvae/runs)")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the small per-run files are collected (default: results/runs; smoke and "
                             "tiny budgets: results/smoke/runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for train.py (repeatable), e.g. --set dataset.root=DIR")
    parser.add_argument("--grad-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for grad_variance_runs.py (repeatable), e.g. --grad-arg=--repetitions=20")
    parser.add_argument("--skip-train", action="store_true", help="only measure and collect existing runs")
    parser.add_argument("--skip-grad", action="store_true", help="do not measure gradient variance")
    parser.add_argument("--rerun-committed", action="store_true",
                        help="train runs already collected in the results folder again (default: skip them)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tables) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; choose from {', '.join(TABLES)}")
    tables = args.tables or [t for t in TABLES if budget_entry(t, args.budget)]
    lacking = [t for t in tables if not budget_entry(t, args.budget)]
    if lacking:
        parser.error(f"no budget {args.budget!r} for {', '.join(lacking)} in experiments/tables.yaml")
    sweep_root = args.sweep_root or default_sweep_root()
    results = args.results or REPO / "results" / ("runs" if args.budget in ("cpu", "full") else "smoke/runs")
    os.environ.setdefault("WANDB_MODE", "disabled")
    estimates = {t: budget_entry(t, args.budget).get("estimate_min") for t in tables}
    if all(estimates.values()):
        print(f"estimated: {sum(estimates.values())} min of one core per table's runs "
              f"({', '.join(f'{t} {m}' for t, m in estimates.items())})", flush=True)
    failed: list[str] = []
    for table in tables:
        sweep_dir = (sweep_root / args.budget / table).absolute()  # not resolve(): keep a linked budget's name
        cmds = train_commands(table, args.budget, sweep_dir, args.jobs, args.set)
        elapsed = None
        if not args.skip_train:
            t0 = time.perf_counter()
            codes = []
            committed = (results / table).absolute()
            skip = [] if args.rerun_committed else [f"hydra.launcher.skip_committed='{committed}'"]
            for cmd in cmds:
                print(f"[{table}] {shlex.join(cmd + skip)}", flush=True)
                codes.append(subprocess.run(cmd + skip, cwd=REPO).returncode)
            elapsed = time.perf_counter() - t0
            print(f"[{table}] sweep finished in {elapsed / 60:.1f} min (exit {max(codes, key=abs)})", flush=True)
            if any(codes):  # collect what completed; rerunning continues the rest
                failed.append(table)
                print(f"[{table}] train.py failed with exit codes {codes}; collecting the completed runs",
                      flush=True)
        dirs = run_dirs(sweep_dir)
        if not args.skip_grad and CATALOGUE["tables"][table].get("grad_variance", False):
            t0 = time.perf_counter()
            measure([d for d in dirs if not (d / "grad_variance.json").exists()], args.jobs, args.grad_arg)
            print(f"[{table}] gradient variance of {len(dirs)} runs in {(time.perf_counter() - t0) / 60:.1f} min")
        dest = collect(table, dirs, results, cmds, args.budget, elapsed, args.set)
        print(f"[{table}] {len(dirs)} runs collected in {dest}", flush=True)
    if failed:
        raise SystemExit(f"some runs failed in: {', '.join(failed)} (rerun the same command to continue them)")


if __name__ == "__main__":
    main()
