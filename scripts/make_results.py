#!/usr/bin/env python
"""Rebuild results/*.md tables and results/*.png plots from the committed per-run files, offline, in seconds.

    python scripts/make_results.py            # results/*.md from results/runs/, results/smoke/*.md from results/smoke/runs/

Input: results/runs/<table>/<run>/{summary.json, metrics.jsonl, config.yaml, grad_variance.json} and
results/runs/<table>/sweep.json (the command and budget that made them), as experiments/run_tables.py collects
them; the tables, their layout and the papers' numbers come from the catalogue experiments/tables.yaml.
Every number printed comes from those files: mean +- sample std over seeds (n = number of seeds shown), the
paper's numbers and our gap to them where a paper has them, and each row's budget (epochs, steps, training
time). A table's header says whether its budget reproduces the paper's or is short of it; runs at a smoke budget
are kept apart (results/smoke/) and titled as smoke tests. A table without runs is written as a stub that says
so (with the command that produces it); nothing is ever filled in.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATALOGUE_PATH = REPO / "experiments" / "tables.yaml"


def load_catalogue(path: Path = CATALOGUE_PATH) -> dict:
    """experiments/tables.yaml as plain dicts (the one list of tables, read by the driver, this script and tests)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())

# Order of the estimator rows in the tables (names are the yaml stems of configs/estimator/).
ORDER = ["graves", "enumerate", "score_function", "vimco", "gumbel_softmax", "grep"]
REFERENCE = "graves"  # the runs whose checkpoints every estimator is measured at (scripts/grad_variance_runs.py)


# ---- run identity, shared with experiments/run_tables.py and scripts/grad_variance_runs.py -------------------
def estimator_name(est: dict) -> str:
    """The registry name from ``_target_``: mixvae.estimators.<name>.<Class> (one module per estimator)."""
    return est["_target_"].split(".")[-2]


def row_label(cfg: dict) -> str:
    """'graves', 'score_function (mean)', 'gumbel_softmax (straight-through, annealed)': the estimator and its
    variant (baseline, NVIL's normalization, straight-through, temperature annealing)."""
    est = cfg["estimator"]
    parts = [est["baseline"]] if est.get("baseline") is not None else []
    parts += ["normalized"] if est.get("normalize") else []
    parts += ["straight-through"] if est.get("straight_through") else []
    parts += ["annealed"] if est.get("anneal_rate") else []
    return estimator_name(est) + (f" ({', '.join(parts)})" if parts else "")


def model_label(cfg: dict) -> str:
    """'SBN, 3 layers', 'DiscreteVAE (categorical)', 'MixtureVAE': the model class and its kind."""
    m = cfg["model"]
    name = m["_target_"].split(".")[-1]
    if m.get("num_layers") is not None:
        return f"{name}, {m['num_layers']} layer{'s' if m['num_layers'] > 1 else ''}"
    return f"{name} ({m['latent']})" if m.get("latent") else name


# the keys a `grid` table crosses (rows x columns), each a function of a run's config
GRID_KEYS = {"samples": lambda c: c["train"]["num_samples"], "estimator": row_label, "model": model_label}


def family_name(cfg: dict) -> str | None:
    """The posterior family of a run ('gamma', 'von_mises', ...), None for the Gaussian mixture (and old runs)."""
    target = ((cfg["model"].get("posterior") or {}).get("_target_") or "").split(".")[-1]
    if not target or target == "GaussianMixture":
        return None
    name = target.removesuffix("Family")
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def latent_tag(cfg: dict) -> str:
    """The latent part of a run's name: 'K5' (Gaussian mixture), 'gamma-D10' (a family), 'categorical20x10' /
    'bernoulli200' (a discrete VAE), 'sbn3x200' (a sigmoid belief net)."""
    m = cfg["model"]
    family = family_name(cfg)
    if family:
        return f"{family}-D{m['latent_dim']}"
    if "num_components" in m:
        return f"K{m['num_components']}"
    if m.get("num_layers") is not None:
        cls = m["_target_"].split(".")[-1]
        return f"{'sbn' if cls == 'SigmoidBeliefNet' else cls.lower()}{m['num_layers']}x{m['latent_dim']}"
    if m.get("latent"):
        classes = f"x{m['num_classes']}" if m.get("num_classes") and m["latent"] == "categorical" else ""
        return f"{m['latent']}{m['latent_dim']}{classes}"
    return m["_target_"].split(".")[-1].lower()


def run_name(cfg: dict) -> str:
    """A run's directory name under results/runs/<table>/: dataset, latent (K, or the family and D, or the
    discrete model), estimator and its variant (baseline, normalized, st, annealed), objective and S, seed."""
    est = cfg["estimator"]
    variant = [est["baseline"]] if est.get("baseline") is not None else []
    variant += ["normalized"] if est.get("normalize") else []
    variant += ["st"] if est.get("straight_through") else []
    variant += ["annealed"] if est.get("anneal_rate") else []
    t = cfg["train"]
    return (f"{cfg['dataset']['name']}-{latent_tag(cfg)}-{'-'.join([estimator_name(est), *variant])}"
            f"-{t['objective']}{t['num_samples']}-seed{cfg['seed']}")


def load_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml"), resolve=True)


# ---- loading ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    summary: dict
    records: list[dict]
    grad: dict | None

    @property
    def cfg(self) -> dict:
        return self.summary["config"]

    @property
    def metrics(self) -> dict:
        return self.summary["metrics"]

    def key(self) -> tuple:
        """A table row: (K, estimator label, training objective, S)."""
        t = self.cfg["train"]
        return (self.cfg["model"]["num_components"], row_label(self.cfg), t["objective"], t["num_samples"])

    def test_nll(self) -> tuple[int, float] | None:
        """(samples, -IWAE bound) from test/nll_iwae<samples>."""
        for k, v in self.metrics.items():
            m = re.fullmatch(r"test/nll_iwae(\d+)", k)
            if m:
                return int(m.group(1)), float(v)
        return None


def load_runs(folder: Path) -> list[Run]:
    runs = []
    for summary_path in sorted(folder.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "completed":
            continue
        d = summary_path.parent
        metrics_path, grad_path = d / "metrics.jsonl", d / "grad_variance.json"
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
            if metrics_path.exists() else []
        grad = json.loads(grad_path.read_text()) if grad_path.exists() else None
        runs.append(Run(d.name, summary, records, grad))
    return runs


# ---- formatting -------------------------------------------------------------------------------------------
def mean_std(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def sci_mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3g} (n=1)"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def sort_key(key: tuple) -> tuple:
    K, label, objective, S = key
    name = label.split(" ")[0]
    return (K, ORDER.index(name) if name in ORDER else len(ORDER), label, objective, S)


def objective_text(objective: str, S: int) -> str:
    return "ELBO" if objective == "elbo" and S == 1 else f"{objective.upper()}-{S}" if objective == "iwae" \
        else f"ELBO, S={S}"


# ---- the header every table carries -------------------------------------------------------------------------
def distinct(values) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


SMOKE_BUDGETS = ("smoke", "tiny", "reduced")  # "reduced": the name of the smoke budget before the catalogue


def budget_status(spec: TableSpec, sweep: dict | None) -> tuple[bool, str]:
    """(is a smoke test, the sentence that says what the table's budget is worth)."""
    name = (sweep or {}).get("budget")
    entry = spec.budgets.get(name) or {}
    note = entry.get("note") or (sweep or {}).get("budget_note") or ""
    if name in SMOKE_BUDGETS:
        return True, (f"**Smoke test, not a reproduction** (budget `{name}`{': ' + note if note else ''}): these "
                      "numbers show that the pipeline runs end to end; they say nothing about how the methods "
                      "compare at a real budget. Each run's config.yaml records what it ran, which may predate "
                      "the experiment file described below.")
    if entry.get("setup_differs"):
        return False, (f"**Not the paper's setup** (`{name}`): {note}. The paper's numbers beside ours are a "
                       "reference point, not a target.")
    if entry.get("reproduction") or (sweep or {}).get("reproduction"):
        return False, f"**Reproduction budget** (`{name}`): {note}."
    return False, (f"**Short of the paper's budget** (`{name}`): {note}. The paper's numbers beside ours are at "
                   "their own budget, so the gap includes the budget's.")


def budget_command(table: str, budget: str) -> str | None:
    """The train.py command(s) behind ``run_tables.py TABLE --budget BUDGET`` (its default --jobs 2 and sweep
    dir), built from the catalogue as the driver builds them: the one line that trains every run of the budget.
    None when the catalogue no longer has that budget."""
    import sys

    if str(REPO / "experiments") not in sys.path:  # called once per table
        sys.path.insert(0, str(REPO / "experiments"))
    import run_tables

    if table not in run_tables.CATALOGUE["tables"] or not run_tables.budget_entry(table, budget):
        return None
    sweep_dir = Path.home() / ".cache" / "mixvae" / "runs" / budget / table
    return run_tables.shown_command(run_tables.train_commands(table, budget, sweep_dir, 2, []))


def cpu_numbers(h: dict) -> str | None:
    """'family 25, model 17' where the run recorded them (x86; older summaries did not)."""
    fam, num = h.get("cpu_family"), h.get("cpu_model_number")
    return f"family {fam}, model {num}" if fam and num else None


def header(spec: TableSpec, runs: list[Run], sweep: dict | None) -> list[str]:
    smoke, status = budget_status(spec, sweep)
    lines = [f"# {'Smoke test: ' if smoke else ''}{spec.title}", "", status, "", spec.intro, ""]
    if sweep:
        budget, command = sweep.get("budget"), budget_command(spec.name, sweep.get("budget"))
        driver = f"python experiments/run_tables.py {spec.name} --budget {budget}" if command else sweep.get("driver")
        lines += [f"Command (this budget, `{budget}`): `{driver}`, which runs", f"`{command or sweep.get('command')}`",
                  ""]
        calls = sweep.get("collections") or []
        if len(calls) > 1 or any(" --set " in c.get("driver", "") for c in calls):
            lines += [f"The runs were trained and collected in {len(calls)} invocation(s), some on part of the "
                      f"budget; results/runs/{spec.name}/sweep.json lists each one's command.", ""]
    lines += [f"Full budget: `python train.py +experiment={spec.experiment}` (see configs/experiment/"
              f"{spec.experiment}.yaml).", ""]
    cfgs = [r.cfg for r in runs]
    epochs = distinct(r.summary["epochs"] for r in runs)
    steps = distinct(r.summary["steps"] for r in runs)
    maxb = distinct(c["train"].get("max_batches") for c in cfgs)
    batch = distinct(c["train"]["batch_size"] for c in cfgs)
    ev = []
    for r in runs:
        e = r.cfg["eval"]
        n_test = r.summary["data"]["test"]
        used = min(n_test, e["max_batches"] * e["batch_size"]) if e.get("max_batches") else n_test
        samples = (r.test_nll() or (None,))[0]
        ev.append(f"IWAE-{samples} on {'the first ' if used < n_test else 'all '}{used:,} of {n_test:,} test images")
    early = sum(bool(r.summary.get("stopped_early")) for r in runs)
    weights = distinct("the weights of the best validation ELBO" if r.summary.get("best_epoch", 1) else
                       "the last weights (no validation)" for r in runs)
    budget = (f"Budget: {', '.join(map(str, epochs))} epoch(s) per run ({', '.join(map(str, steps))} steps, "
              f"batch {', '.join(map(str, batch))}"
              + (f", at most {', '.join(map(str, maxb))} batches per epoch" if maxb != [None] else "")
              + f"); test: {'; '.join(distinct(ev))}; the test uses {' or '.join(weights)}"
              + (f"; {early} run(s) stopped early" if early else "") + ".")
    seeds = sorted(distinct(c["seed"] for c in cfgs))
    hw = distinct(
        f"{h.get('device')}, {h.get('cpu_model') or h.get('processor') or h.get('machine')}"
        + (f" ({'; '.join(x for x in (cpu_numbers(h), h.get('vector_isa')) if x)})"
           if cpu_numbers(h) or h.get("vector_isa") else "") + f", {h.get('cpu_count')} cores, "
        f"{h.get('torch_threads')} torch thread(s) per run, torch {h.get('torch')}, {h.get('platform')}"
        for h in (r.summary.get("hardware", {}) for r in runs))
    gits = distinct(f"{(g.get('commit') or 'unknown')[:10]}{' (with uncommitted changes)' if g.get('dirty') else ''}"
                    for r in runs for g in (r.summary.get("git_history") or [r.summary.get("git", {})]))
    wall = [run_wall_time(r.summary) for r in runs]
    lines += [budget, "",
              f"Seeds: {', '.join(map(str, seeds))} ({len(runs)} runs). Entries are mean ± sample std over seeds.",
              "", f"Hardware: {'; '.join(hw)}.", "", f"Git revision: {', '.join(gits)}.", ""]
    if all(w is not None for w in wall):
        lines += [f"Time per run (wall clock, start-up and evaluation included): {min(wall):.0f}-{max(wall):.0f} s,"
                  f" {sum(wall) / 60:.0f} min in all"
                  + (f"; the sweep took {sweep['sweep_wall_time_s'] / 60:.0f} min" if sweep and
                     sweep.get("sweep_wall_time_s") else "") + ".", ""]
    return lines


def run_wall_time(summary: dict) -> float | None:
    """A run's wall-clock seconds over all its invocations. Summaries written before train.py kept that total
    (no ``invocation_wall_time_s``) hold the last invocation's alone, which for a resumed or re-tested run is
    less than its training and test time: those count at least that."""
    wall = summary.get("wall_time_s")
    if wall is None or "invocation_wall_time_s" in summary:
        return wall
    m = summary.get("metrics") or {}
    return max(wall, (m.get("time/train_s") or 0.0) + (m.get("time/test_eval_s") or 0.0))


# ---- table specs ---------------------------------------------------------------------------------------------
@dataclass
class TableSpec:
    name: str
    title: str
    experiment: str
    intro: str
    kind: str  # estimators | iwae | families | grid | vs_k
    paper: dict = field(default_factory=dict)  # kind-specific paper numbers
    paper_note: str = ""
    loglik: bool = False  # show log-likelihood (= -NLL), as the paper does
    budgets: dict = field(default_factory=dict)  # budget name -> catalogue entry (reproduction, note, overrides)
    grid: dict = field(default_factory=dict)  # kind grid: {rows: <GRID_KEYS key>, cols: <GRID_KEYS key>,
    #                                             optional names: {label: shown name}, columns: [order],
    #                                             pairs: [[a, b], ...] estimators compared seed by seed}
    metric: str = "iwae"  # what the paper's numbers are: iwae (test NLL by the IWAE bound) | elbo (negative ELBO)


def _paper_numbers(kind: str, rows: dict) -> dict:
    if kind == "iwae":  # dataset -> objective -> k -> NLL  =>  (dataset, objective) -> {k: NLL}
        return {(d, o): {int(k): v for k, v in by_k.items()} for d, by_obj in rows.items()
                for o, by_k in by_obj.items()}
    if kind == "families":  # family -> D -> NLL
        return {f: {int(d): v for d, v in by_d.items()} for f, by_d in rows.items()}
    if kind == "grid":  # column -> row -> NLL (rows stay as written: numbers or labels)
        return {c: dict(by_row) for c, by_row in rows.items()}
    return {int(k): v for k, v in rows.items()}


def table_specs(catalogue: dict | None = None) -> list[TableSpec]:
    catalogue = catalogue or load_catalogue()
    specs = []
    for name, t in catalogue["tables"].items():
        paper = t.get("paper") or {}
        note = (f"Paper: {paper['source']}; its budget: {paper['budget']}." if paper.get("source") else "")
        specs.append(TableSpec(name, t["title"], t["experiment"], t["intro"], t["kind"],
                               _paper_numbers(t["kind"], paper.get("rows") or {}), note, bool(t.get("loglik")),
                               t.get("budgets") or {}, t.get("grid") or {}, t.get("metric", "iwae")))
    return specs


TABLES = table_specs()


# ---- writers ---------------------------------------------------------------------------------------------------
def unique_rows(grad: dict) -> dict[tuple, dict]:
    """A checkpoint's row measurements keyed by (label, objective, S); rows that coincide (at K = 1 the gaussian
    row is the graves row) are counted once."""
    out = {}
    for entry in grad.get("rows", {}).values():
        # the label from the options measured (not the stored one), so that labels follow row_label
        est = {"_target_": f"mixvae.estimators.{entry['estimator']}.X", **entry.get("options", {})}
        entry = {**entry, "label": row_label({"estimator": est})}
        out.setdefault((entry["label"], entry["objective"], entry["num_samples"]), entry)
    return out


def reference_rows(runs: list[Run], K: int) -> dict[tuple, list[dict]]:
    """(label, objective, S) -> measurements at the checkpoints of the Graves-trained runs with K components."""
    out = defaultdict(list)
    for r in runs:
        if r.grad and estimator_name(r.cfg["estimator"]) == REFERENCE and r.cfg["model"]["num_components"] == K:
            for key, entry in unique_rows(r.grad).items():
                out[key].append(entry)
    return out


def budget_cells(rs: list[Run]) -> list[str]:
    """A row's budget: epochs (and early stops), optimizer steps, training time per run."""
    epochs = [r.summary["epochs"] for r in rs]
    early = sum(bool(r.summary.get("stopped_early")) for r in rs)
    steps = [r.summary["steps"] for r in rs]
    train_s = [r.metrics.get("time/train_s") for r in rs]

    def span(v):
        return f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}"

    train = [t / 60 for t in train_s if t is not None]
    return [span(epochs) + (f" ({early} early stop{'s' if early > 1 else ''})" if early else ""), span(steps),
            (f"{min(train):.1f}-{max(train):.1f} min" if train else "—")]


def gap_text(ours: list[float], paper: float | None, sign: float) -> str:
    """ours - paper in the table's units (log-likelihood or NLL), with its standard error over seeds."""
    ours = [sign * v for v in ours if v is not None and math.isfinite(v)]
    if paper is None or not ours:
        return "—"
    gap = statistics.mean(ours) - paper
    se = f" ± {statistics.stdev(ours) / math.sqrt(len(ours)):.2f}" if len(ours) > 1 else ""
    return f"{gap:+.2f}{se}"


def paired_differences(spec: TableSpec, groups: dict, keys: list, nll: dict) -> list[str]:
    """Each K > 1 row against the K = 1 row, seed by seed (same seed = same data order and initial encoder)."""
    sign = -1.0 if spec.loglik else 1.0
    ref = [k for k in keys if k[0] == 1]
    if not ref:
        return []
    by_seed_ref = {r.cfg["seed"]: sign * r.test_nll()[1] for r in groups[ref[0]] if r.test_nll()}
    rows = []
    for k in keys:
        if k[0] == 1:
            continue
        diffs = [sign * r.test_nll()[1] - by_seed_ref[r.cfg["seed"]] for r in groups[k]
                 if r.test_nll() and r.cfg["seed"] in by_seed_ref]
        if not diffs:
            continue
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        verdict = paired_verdict(statistics.mean(diffs), se, spec.loglik)
        rows.append([f"K = {k[0]} {k[1]}", objective_text(k[2], k[3]), f"{statistics.mean(diffs):+.2f}",
                     "—" if math.isnan(se) else f"{se:.2f}", str(len(diffs)), verdict])
    if not rows:
        return []
    what = "log-likelihood" if spec.loglik else "NLL"
    return ["### Paired differences against the Gaussian (K = 1), same seed", "",
            *md_table(["row", "trained on", f"mean difference in test {what}", "standard error", "seeds",
                       "K > 1 is"], rows), "",
            f"Difference = row minus K = 1 at the same seed ({'higher' if spec.loglik else 'lower'} is better); "
            "`better`/`worse` where the mean difference is at least two standard errors from zero, `no clear "
            "difference` where it is nearer (at one seed, `—`).", ""]


def paired_verdict(mean: float, se: float, higher_is_better: bool) -> str:
    """'better' / 'worse' only for a mean difference of at least two standard errors; a sign alone is noise."""
    if math.isnan(se):
        return "—"
    if abs(mean) < 2.0 * se:
        return "no clear difference"
    return "better" if (mean > 0) == higher_is_better else "worse"


def during_training(groups: dict, keys: list) -> list[str]:
    """Encoder-gradient SNR (and variance) of each row's own estimator at the snapshots its runs kept."""
    epochs = sorted({e["epoch"] for k in keys for r in groups[k] if r.grad for e in r.grad.get("during", [])})
    if not epochs:
        return []
    rows = []
    for k in keys:
        by_epoch = defaultdict(list)
        for r in groups[k]:
            for e in (r.grad or {}).get("during", []):
                by_epoch[e["epoch"]].append(e)
        if by_epoch:
            rows.append([f"K = {k[0]} {k[1]}", objective_text(k[2], k[3]),
                         *[sci_mean_std([e["grad/snr_encoder"] for e in by_epoch.get(ep, [])]) for ep in epochs]])
    return ["### Encoder-gradient SNR during training (own estimator, at the kept snapshots)", "",
            *md_table(["row", "trained on", *[f"epoch {ep}" for ep in epochs]], rows), ""]


def estimators_table(spec: TableSpec, runs: list[Run]) -> list[str]:
    groups = defaultdict(list)
    for r in runs:
        groups[r.key()].append(r)
    keys = sorted(groups, key=sort_key)
    nll = {k: [r.test_nll()[1] for r in groups[k] if r.test_nll()] for k in keys}
    samples = distinct(r.test_nll()[0] for r in runs if r.test_nll())
    # the best baseline among rows that differ only in their baseline
    family = defaultdict(list)
    for k in keys:
        family[(k[0], k[1].split(" ")[0], k[2], k[3])].append(k)
    best = {min(ks, key=lambda k: statistics.mean(nll[k]) if nll[k] else math.inf)
            for ks in family.values() if len(ks) > 1}
    sign = -1.0 if spec.loglik else 1.0
    metric = (f"ours: test log-lik. (IS-{'/'.join(map(str, samples))})" if spec.loglik
              else f"ours: test NLL (IWAE-{'/'.join(map(str, samples))})")
    head = ["K", "estimator", "trained on", "paper", metric, "gap (ours - paper)", "test ELBO", "epochs",
            "steps", "train time", "var own", "SNR own", "var @graves", "SNR @graves", "ms/step @graves", "s/epoch",
            "seeds"]
    rows = []
    for k in keys:
        K, label, objective, S = k
        rs = groups[k]
        own = [r.grad["own"] for r in rs if r.grad]
        ref = reference_rows(runs, K).get((label, objective, S), [])
        paper = spec.paper.get(K)
        rows.append([
            str(K), ("Gaussian (reparam.)" if K == 1 else label) + (" **best baseline**" if k in best else ""),
            objective_text(objective, S), f"{paper:.2f}" if paper is not None else "—",
            mean_std(nll[k], scale=sign), gap_text(nll[k], paper, sign),
            mean_std([r.metrics.get("test/elbo") for r in rs]), *budget_cells(rs),
            sci_mean_std([g["grad/var_encoder"] for g in own]), sci_mean_std([g["grad/snr_encoder"] for g in own]),
            sci_mean_std([g["grad/var_encoder"] for g in ref]), sci_mean_std([g["grad/snr_encoder"] for g in ref]),
            mean_std([g["time/step_s"] for g in ref], 1, 1000.0),
            mean_std([r.metrics.get("time/epoch_s") for r in rs], 1),
            ", ".join(str(r.cfg["seed"]) for r in rs),
        ])
    return [*md_table(head, rows), "", *during_training(groups, keys),
            "Columns: `gap` = our mean minus the paper's number, ± its standard error over seeds; `epochs`, `steps` "
            "and `train time` are each row's budget (per run; training only). `var` = mean over encoder "
            "parameters of the per-coordinate gradient variance, `SNR` = mean |mean| / std (Rainforth et al. "
            "2018), both over the repetitions at fixed parameters; `own` at each run's own final checkpoint with "
            "its trained baseline state, `@graves` every estimator at the final checkpoints of the Graves-trained "
            "runs with the same K. `s/epoch` is training time only, measured with two runs sharing the 2 cores. "
            "`ms/step` is one forward + backward at batch 100, 1 thread.", "",
            *paired_differences(spec, groups, keys, nll), spec.paper_note, ""]


IWAE_ORDERINGS = [(("elbo", 5), ("elbo", 1)), (("elbo", 50), ("elbo", 5)), (("iwae", 5), ("iwae", 1)),
                  (("iwae", 50), ("iwae", 5)), (("iwae", 5), ("elbo", 5)), (("iwae", 50), ("elbo", 50))]


def iwae_orderings(spec: TableSpec, cell: dict, run_epochs: dict, dataset: str, Ks: list[int]) -> list[str]:
    """The paper's orderings (pairs of its numbers: which of two rows is lower), each checked on our means."""
    def label(objective, S):
        return f"{'VAE' if objective == 'elbo' else 'IWAE'} k = {S}"

    paper = {objective: spec.paper.get((dataset, objective), {}) for objective in ("elbo", "iwae")}
    lines = []
    for K in Ks:
        checks = []
        for a, b in IWAE_ORDERINGS:
            pa, pb = (paper[o].get(S) for o, S in (a, b))
            ours = [[v for v in cell.get((dataset, o, S, K), []) if math.isfinite(v)] for o, S in (a, b)]
            if pa is None or pb is None or pa == pb or not all(ours):
                continue
            lo, hi = (a, b) if pa < pb else (b, a)  # the paper's lower (better) row first
            m = {x: statistics.mean(v) for x, v in zip((a, b), ours)}
            epochs = {x: "/".join(map(str, distinct(run_epochs.get((dataset, *x, K), [])))) for x in (a, b)}
            at = "" if epochs[a] == epochs[b] else f" (at {epochs[lo]} vs {epochs[hi]} epochs: not the same budget)"
            # a miss at unequal budgets is no test of the paper's ordering (the paper's rows share one budget)
            verdict = "holds" if m[lo] < m[hi] else "does not hold" if at else "**does not hold**"
            checks.append(f"{label(*lo)} < {label(*hi)} {verdict}: {m[lo]:.2f} vs {m[hi]:.2f}{at}")
        if checks:
            lines.append(f"- K = {K}: " + "; ".join(checks) + ".")
    return ["The paper's orderings, on our means (a mean is over seeds; with one seed, a single run):", "",
            *lines, ""] if lines else []


def iwae_table(spec: TableSpec, runs: list[Run]) -> list[str]:
    cell = defaultdict(list)
    time_cell = defaultdict(list)
    run_epochs = defaultdict(list)
    for r in runs:
        c = r.cfg
        k = (c["dataset"]["name"], c["train"]["objective"], c["train"]["num_samples"], c["model"]["num_components"])
        if r.test_nll():
            cell[k].append(r.test_nll()[1])
        time_cell[k].append(r.metrics.get("time/epoch_s"))
        run_epochs[k].append(r.summary["epochs"])
    for d in (cell, time_cell, run_epochs):  # at k = 1 the objectives coincide: one run (vae1) fills both columns
        for (dataset, objective, S, K) in list(d):
            if objective == "elbo" and S == 1:
                d.setdefault((dataset, "iwae", 1, K), d[dataset, objective, S, K])
    lines = []
    for dataset in sorted({k[0] for k in cell} | {k[0] for k in spec.paper}, key=["mnist", "omniglot"].index):
        Ks = sorted({k[3] for k in cell if k[0] == dataset})
        head = ["k", "VAE (paper)", *[f"VAE, K = {K} (ours)" for K in Ks], "VAE gap, K = 1", "IWAE (paper)",
                *[f"IWAE, K = {K} (ours)" for K in Ks], "IWAE gap, K = 1",
                *(["epochs, K = " + "/".join(map(str, Ks))] if Ks else ["epochs"]),
                *(["s/epoch IWAE, K = " + "/".join(map(str, Ks))] if Ks else [])]
        rows = []
        for S in (1, 5, 50):
            def ours(objective, S=S, dataset=dataset, Ks=Ks):
                return [mean_std(cell.get((dataset, objective, S, K), [])) for K in Ks]

            paper = {obj: spec.paper.get((dataset, obj), {}).get(S) for obj in ("elbo", "iwae")}
            times = " / ".join(mean_std(time_cell.get((dataset, "iwae", S, K), []), 1) for K in Ks)
            epochs = " / ".join("/".join(map(str, sorted(distinct(e for objective in ("elbo", "iwae")
                                                                  for e in run_epochs.get((dataset, objective, S, K), [])))))
                                or "—" for K in Ks)
            rows.append([str(S), f"{paper['elbo']:.2f}" if paper["elbo"] else "—", *ours("elbo"),
                         gap_text(cell.get((dataset, "elbo", S, 1), []), paper["elbo"], 1.0),
                         f"{paper['iwae']:.2f}" if paper["iwae"] else "—", *ours("iwae"),
                         gap_text(cell.get((dataset, "iwae", S, 1), []), paper["iwae"], 1.0),
                         epochs or "—", *([times] if Ks else [])])
        title = "MNIST" if dataset == "mnist" else "Omniglot (ours: from the original images; not directly comparable)"
        lines += [f"## {title}", "", *md_table(head, rows), "", *iwae_orderings(spec, cell, run_epochs, dataset, Ks)]
    return [*lines, "`gap` = our K = 1 NLL minus the paper's (nats; positive = worse than the paper), ± its "
            "standard error over seeds where there are several. At k = 1 the VAE and IWAE objectives are the same, "
            "so one run fills both columns.", "", spec.paper_note, ""]


def families_table(spec: TableSpec, runs: list[Run]) -> list[str]:
    """Rows (family, D), one column of test NLL per estimator, the peer reproduction's numbers beside them."""
    cell = defaultdict(list)
    by_seed = {}
    epochs = defaultdict(list)
    for r in runs:
        if r.test_nll():
            key = (family_name(r.cfg) or "mixture", r.cfg["model"]["latent_dim"], row_label(r.cfg))
            cell[key].append(r.test_nll()[1])
            by_seed[(*key, r.cfg["seed"])] = r.test_nll()[1]
            epochs[key[:2]].append(r.summary["epochs"])
    families = distinct(k[0] for k in sorted(cell, key=lambda k: (list(spec.paper).index(k[0])
                                                                    if k[0] in spec.paper else 99, k)))
    labels = sorted({k[2] for k in cell}, key=lambda lbl: (ORDER.index(lbl.split(" ")[0])
                                                          if lbl.split(" ")[0] in ORDER else 99, lbl))
    samples = distinct(r.test_nll()[0] for r in runs if r.test_nll())
    head = ["posterior", "D", "peer (30 epochs)", *[f"ours: {lbl}" for lbl in labels], "gap (graves - peer)",
            "epochs"]
    rows = []
    for fam in families:
        for D in sorted({k[1] for k in cell if k[0] == fam}):
            peer = (spec.paper.get(fam) or {}).get(D)
            graves = cell.get((fam, D, "graves"), [])
            rows.append([fam, str(D), f"{peer:.1f}" if peer is not None else "—",
                         *[mean_std(cell.get((fam, D, lbl), []), 1) for lbl in labels],
                         gap_text(graves, peer, 1.0), ", ".join(map(str, distinct(epochs[fam, D])))])
    return [f"Test NLL (nats, IWAE-{'/'.join(map(str, samples))} on the whole test set), mean ± std over seeds.",
            "", *md_table(head, rows), "",
            "The paper's own numbers are not recovered here; the `peer` column is the public reproduction's "
            "(its budget: 30 epochs).", "", *against_graves(by_seed, families, labels), spec.paper_note, ""]


def against_graves(by_seed: dict, families: list[str], labels: list[str]) -> list[str]:
    """Each estimator's test NLL minus the implicit (graves) gradient's, seed by seed, per family and D; the seeds
    share the data order and the initial weights, so the paired difference is the sharper comparison."""
    rows = []
    for (fam, D, label, seed), nll in by_seed.items():
        if label == "graves" or (fam, D, "graves", seed) not in by_seed:
            continue
        rows.append((fam, D, label, nll - by_seed[fam, D, "graves", seed]))
    groups = defaultdict(list)
    for fam, D, label, diff in rows:
        groups[fam, D, label].append(diff)
    body = []
    for (fam, D, label), diffs in sorted(groups.items(), key=lambda kv: (families.index(kv[0][0]), kv[0][1],
                                                                         labels.index(kv[0][2]))):
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
        body.append([fam, str(D), label, f"{statistics.mean(diffs):+.2f}", "—" if se is None else f"{se:.2f}",
                     str(len(diffs))])
    if not body:
        return []
    return ["### Each estimator against the implicit gradient (graves), same seed", "",
            *md_table(["posterior", "D", "estimator", "mean difference in test NLL", "standard error", "seeds"],
                      body), "",
            "Difference = the estimator's test NLL minus graves' at the same seed (positive: graves is better), "
            "with the standard error of the mean difference where there are several seeds.", ""]


def grid_key(spec: TableSpec, axis: str, cfg: dict):
    """A run's row or column in a grid table: the GRID_KEYS value, renamed by the catalogue's `grid.names`
    (e.g. the score function with a learned baseline and normalization is the paper's NVIL column)."""
    key = GRID_KEYS[spec.grid[axis]](cfg)
    return (spec.grid.get("names") or {}).get(key, key)


def _grid_cells(spec: TableSpec, runs: list[Run], value) -> dict:
    cell = defaultdict(list)
    for r in runs:
        v = value(r)
        if v is not None:
            cell[grid_key(spec, "rows", r.cfg), grid_key(spec, "cols", r.cfg)].append(v)
    return cell


def _test_nll(r: Run) -> float | None:
    nll = r.test_nll()
    return nll[1] if nll else None


def _paper_metric(spec: TableSpec):
    """A run's test number in the metric of the table's paper: the negative ELBO or the IWAE-bound NLL."""
    return _neg_elbo if spec.metric == "elbo" else _test_nll


def _neg_elbo(r: Run) -> float | None:
    v = r.metrics.get("test/elbo")
    return -float(v) if v is not None else None


def grid_table(spec: TableSpec, runs: list[Run]) -> list[str]:
    """Rows x columns from `grid` in the catalogue (keys of GRID_KEYS), each cell beside the paper's in the
    paper's own metric (`metric`: the IWAE-bound NLL, or the negative ELBO); with `metric: elbo` a second table
    gives our importance-sampled NLL of the same runs (no paper numbers: the paper has none)."""
    ours = _grid_cells(spec, runs, _paper_metric(spec))
    epochs = _grid_cells(spec, runs, lambda r: r.summary.get("epochs"))
    usual = statistics.mode(r.summary.get("epochs") for r in runs) if runs else None

    def cell(cells, key):
        """mean ± std of a cell, with its epochs where they differ from the table's usual budget."""
        text = mean_std(cells.get(key, []))
        elsewhere = any(e != usual for e in epochs.get(key, []))
        return text + (f" [{'/'.join(map(str, distinct(epochs[key])))} epochs]" if elsewhere and key in cells else "")

    paper = spec.paper  # column -> row -> number
    cols = distinct([*(spec.grid.get("columns") or []), *paper, *sorted({k[1] for k in ours}, key=str)])
    rows = sorted({k[0] for k in ours} | {k for by_row in paper.values() for k in by_row}, key=lambda v: (str(
        type(v)), v))
    head = [spec.grid["rows"]]
    for col in cols:
        head += [f"{col} (paper)", f"{col} (ours)", "gap"]
    body = []
    for row in rows:
        line = [str(row)]
        for col in cols:
            p = (paper.get(col) or {}).get(row)
            line += [f"{p:.2f}" if p is not None else "—", cell(ours, (row, col)),
                     gap_text(ours.get((row, col), []), p, 1.0)]
        body.append(line)
    samples = "/".join(map(str, distinct(r.test_nll()[0] for r in runs if r.test_nll()))) or "?"
    longer = (f" A cell marked [N epochs] was trained for N epochs instead of the table's {usual}, so it is not at "
              "the same budget as the cells beside it." if any(e != usual for v in epochs.values() for e in v) else "")
    if spec.metric == "elbo":
        lines = ["Negative test ELBO (nats, the paper's metric, on the whole test set), mean ± std over seeds; `gap` "
                 f"= ours minus the paper's.{longer}", "", *md_table(head, body), ""]
        iw = _grid_cells(spec, runs, _test_nll)
        lines += [f"Our test NLL by the importance-sampled bound (IWAE-{samples}) of the same runs (the paper gives "
                  "none):", "", *md_table([spec.grid["rows"], *cols], [[str(row), *[cell(iw, (row, c)) for c in cols]]
                                                                      for row in rows]),
                  ""]
        return [*lines, spec.paper_note, ""]
    return [f"Test NLL (nats; IWAE-{samples} on the whole test set), mean ± std over seeds; `gap` = ours minus the "
            f"paper's.{longer}", "", *md_table(head, body), "", spec.paper_note, ""]


def _valid_curve(r: Run, metric: str) -> tuple[dict[int, float], set[str]]:
    """(epoch -> the run's validation number in the table's direction, lower is better; the metric names read):
    the IWAE NLL (valid/nll_iwae<N>) for an IWAE table, the negative validation ELBO for an ELBO table."""
    curve, names = {}, set()
    for rec in r.records:
        key = "valid/elbo" if metric == "elbo" else next(
            (k for k in rec if re.fullmatch(r"valid/nll_iwae\d+", k)), None)
        v = rec.get(key) if key else None
        if v is not None and "epoch" in rec and math.isfinite(v):
            curve[int(rec["epoch"])] = -float(v) if metric == "elbo" else float(v)
            names.add(key)
    return curve, names


def grid_pairs(spec: TableSpec, runs: list[Run]) -> list[str]:
    """The catalogue's `grid.pairs` ([a, b] on the estimator axis): a minus b in each group of the other axis,
    seed by seed and only between runs at the same budget (epochs), on the test number and along training on
    the validation number at five points, so that a gap can be told from noise (over seeds) and from a budget
    that stopped one of the two early (along training)."""
    pairs = spec.grid.get("pairs") or []
    if not pairs:
        return []
    axis = "rows" if spec.grid["rows"] == "estimator" else "cols"
    other = "cols" if axis == "rows" else "rows"
    test = _paper_metric(spec)
    by = defaultdict(dict)  # (estimator, group) -> (seed, epochs) -> run
    for r in runs:
        by[grid_key(spec, axis, r.cfg), grid_key(spec, other, r.cfg)][r.cfg["seed"], r.summary.get("epochs")] = r
    what = "negative ELBO" if spec.metric == "elbo" else "NLL"
    lines, names = [], set()
    for a, b in pairs:
        groups = sorted({g for (e, g) in by if e == a} & {g for (e, g) in by if e == b}, key=lambda v: (str(
            type(v)), v))
        body = []
        for g in groups:
            for epochs in sorted({ep for (_, ep) in by[a, g]} & {ep for (_, ep) in by[b, g]}, key=str):
                seeds = sorted(s for (s, ep) in by[a, g] if ep == epochs and (s, epochs) in by[b, g])
                matched = [(by[a, g][s, epochs], by[b, g][s, epochs]) for s in seeds]
                values = [(test(x), test(y)) for x, y in matched]
                diffs = [vx - vy for vx, vy in values if vx is not None and vy is not None]
                if not diffs:
                    continue
                mean = statistics.mean(diffs)
                se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
                read = [(_valid_curve(x, spec.metric), _valid_curve(y, spec.metric)) for x, y in matched]
                curves = [(cx, cy) for (cx, _), (cy, _) in read]
                names.update(n for (_, nx), (_, ny) in read for n in nx | ny)
                common = sorted(set.intersection(*[set(cx) & set(cy) for cx, cy in curves])) if curves else []
                points = []
                if common:
                    for i in range(1, 6):
                        ep = min(common, key=lambda e: abs(e - i * common[-1] / 5))
                        points.append(f"{statistics.mean(cx[ep] - cy[ep] for cx, cy in curves):+.2f} (epoch {ep})")
                points += ["—"] * (5 - len(points))
                body.append([str(g), str(epochs), str(len(diffs)), f"{mean:+.2f}",
                             "—" if math.isnan(se) else f"{se:.2f}", paired_verdict(mean, se, False),
                             " ".join(f"{d:+.2f}" for d in diffs), *points])
        if not body:
            continue
        lines += [f"### {a} against {b}, seed by seed at the same budget", "",
                  *md_table([spec.grid[other], "epochs", "seeds", f"test {what}: {a} minus {b}", "standard error",
                             f"{a} is", "each seed", *[f"validation, {i}/5 of training" for i in range(1, 6)]],
                            body), "",
                  f"Negative numbers: {a} is better. `better`/`worse` where the mean difference is at least two "
                  "standard errors from zero, `no clear difference` where it is nearer (at one seed, `—`). The "
                  f"validation columns are the mean over seeds of the same difference in what training logged on "
                  f"the validation set ({', '.join(sorted(names)) or 'nothing logged'}"
                  f"{', negated' if spec.metric == 'elbo' else ''}), at the logged epoch nearest each fifth of the "
                  "run: a gap that holds from early on is not one that a longer budget is closing.", ""]
    return lines


def vs_k_table(spec: TableSpec, runs: list[Run], out: Path) -> list[str]:
    data = defaultdict(dict)  # label -> K -> entry
    for r in runs:
        if r.grad:
            K = r.cfg["model"]["num_components"]
            for (label, objective, S), entry in unique_rows(r.grad).items():
                lbl = f"{label}, {objective_text(objective, S)}"
                data[lbl].setdefault(K, []).append(entry)
    Ks = sorted({K for d in data.values() for K in d})
    labels = sorted(data, key=lambda s: (ORDER.index(s.split(" ")[0].rstrip(",")) if s.split(" ")[0].rstrip(",")
                                         in ORDER else len(ORDER), s))
    lines = []
    for title, key, fmt in [("Encoder gradient variance", "grad/var_encoder", sci_mean_std),
                            ("Encoder gradient SNR", "grad/snr_encoder", sci_mean_std),
                            ("Milliseconds per step (forward + backward, batch 100, 1 thread)", "time/step_s",
                             lambda v: mean_std(v, 1, 1000.0))]:
        rows = [[lbl, *[fmt([e[key] for e in data[lbl].get(K, [])]) for K in Ks]] for lbl in labels]
        lines += [f"## {title}", "", *md_table(["estimator", *[f"K = {K}" for K in Ks]], rows), ""]
    if labels:
        plot_vs_k(data, labels, Ks, out / f"{spec.name}.png")
        lines += [f"![gradient variance, SNR and step time against K]({spec.name}.png)", ""]
    return lines


# ---- plots ---------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_vs_k(data, labels, Ks, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, ylabel, scale) in zip(axes, [("grad/var_encoder", "encoder gradient variance", 1.0),
                                               ("grad/snr_encoder", "encoder gradient SNR", 1.0),
                                               ("time/step_s", "ms per step", 1000.0)], strict=True):
        for lbl in labels:
            ks = [K for K in Ks if K in data[lbl]]
            ax.plot(ks, [scale * statistics.mean(e[key] for e in data[lbl][K]) for K in ks], "o-", label=lbl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(Ks, [str(K) for K in Ks])
        ax.set_xlabel("K (mixture components)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(spec: TableSpec, runs: list[Run], path: Path) -> bool:
    """Validation NLL per row, mean over seeds, against epochs and against cumulative training seconds."""
    curves = defaultdict(list)  # key -> [(epochs, seconds, nll)] per run
    metric = None
    for r in runs:
        ep, secs, nll, total = [], [], [], 0.0
        for rec in r.records:
            if "train/objective_epoch" not in rec:
                continue
            total += rec.get("time/epoch_s", 0.0)
            key = next((k for k in rec if re.fullmatch(r"valid/nll_iwae\d+", k)), None)
            if key is None:
                continue
            metric = key
            ep.append(rec["epoch"])
            secs.append(total)
            nll.append(float(rec[key]))
        if ep:
            curves[r.key()].append((ep, secs, nll))
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for key in sorted(curves, key=sort_key):
        runs_k = curves[key]
        n = min(len(c[0]) for c in runs_k)
        epochs = runs_k[0][0][:n]
        secs = [statistics.mean(c[1][i] for c in runs_k) for i in range(n)]
        nll = [statistics.mean(c[2][i] for c in runs_k) for i in range(n)]
        K, label, objective, S = key
        name = f"K={K} {'Gaussian' if K == 1 else label}" + ("" if (objective, S) == ("elbo", 1)
                                                              else f" [{objective_text(objective, S)}]")
        axes[0].plot(epochs, nll, "o-", ms=3, label=name)
        axes[1].plot(secs, nll, "o-", ms=3, label=name)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training seconds (mean over seeds; 2 runs sharing 2 cores)")
    ev = runs[0].cfg["eval"]
    n_valid = ev.get("valid_max_batches") or ev.get("max_batches")  # validation's cap (as Trainer.validate)
    subset = f" (first {n_valid * ev['batch_size']} valid images)" if n_valid else ""
    axes[0].set_ylabel(f"{metric.replace('valid/nll_iwae', 'valid NLL, IWAE-')}{subset}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(spec.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- main --------------------------------------------------------------------------------------------------------
def build_table(spec: TableSpec, runs_root: Path, out: Path, smoke: bool = False) -> bool:
    """Write out/<name>.md (and its plots); a stub that says so when there are no runs. Returns True if runs."""
    folder = runs_root / spec.name
    runs = load_runs(folder) if folder.exists() else []
    sweep_path = folder / "sweep.json"
    sweep = json.loads(sweep_path.read_text()) if sweep_path.exists() else None
    path = out / f"{spec.name}.md"
    if not runs:
        if smoke:
            path.unlink(missing_ok=True)
            return False
        budget = "cpu" if "cpu" in spec.budgets else "smoke"
        stub = [f"# {spec.title}", "", spec.intro, "",
                f"**No runs committed yet** (nothing under results/runs/{spec.name}/). Produce them with "
                f"`python experiments/run_tables.py {spec.name} --budget {budget}` "
                f"({(spec.budgets.get(budget) or {}).get('note', '')}) or "
                f"`python train.py +experiment={spec.experiment}` (full budget), then `make results`.", ""]
        if spec.paper_note:
            stub += [spec.paper_note, ""]
        path.write_text("\n".join(stub))
        return False
    lines = header(spec, runs, sweep)
    if spec.kind == "estimators":
        lines += estimators_table(spec, runs)
        if plot_curves(spec, runs, out / f"{spec.name}_curves.png"):
            lines += [f"![validation NLL against epochs and against wall-clock]({spec.name}_curves.png)", ""]
    elif spec.kind == "iwae":
        lines += iwae_table(spec, runs)
    elif spec.kind == "families":
        lines += families_table(spec, runs)
    elif spec.kind == "grid":
        lines += grid_table(spec, runs) + grid_pairs(spec, runs)
    else:
        lines += vs_k_table(spec, runs, out)
    rel = folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder
    lines += [f"Built by `python scripts/make_results.py` from {rel}/.", ""]
    path.write_text("\n".join(lines))
    return True


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=REPO / "results" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--smoke-runs", type=Path, default=REPO / "results" / "smoke" / "runs",
                        help="runs at smoke budgets, built into <out>/smoke/ (a missing folder is skipped)")
    parser.add_argument("--tables", nargs="*", default=[t.name for t in TABLES])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    missing = []
    for spec in TABLES:
        if spec.name not in args.tables:
            continue
        if build_table(spec, args.runs, args.out):
            print(f"wrote {args.out / spec.name}.md")
        else:
            missing.append(spec.name)
            print(f"no runs for {spec.name}: wrote a stub {args.out / spec.name}.md")
        if args.smoke_runs.exists():
            (args.out / "smoke").mkdir(exist_ok=True)
            if build_table(spec, args.smoke_runs, args.out / "smoke", smoke=True):
                print(f"wrote {args.out / 'smoke' / spec.name}.md (smoke test)")
    if missing:
        print(f"missing: {', '.join(missing)} (run experiments/run_tables.py {' '.join(missing)})")
    return missing


if __name__ == "__main__":
    main()
