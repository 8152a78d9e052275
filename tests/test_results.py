"""The results pipeline end to end on fixture data: driver -> sweep -> gradient variance -> collect -> tables.

experiments/run_tables.py runs a table's real experiment file with the tiny budget (two rows, two seeds, the
basic launcher), scripts/make_results.py builds the markdown from the collected files. Also: the table
experiments compose with every grid value, and make_results never invents numbers for a table without runs.
"""

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mixvae.data.fixtures import write_fixture_root
from mixvae.training import validate_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "experiments"))
import make_results  # noqa: E402

CATALOGUE = make_results.load_catalogue()
TABLE_EXPERIMENTS = [t["experiment"] for t in CATALOGUE["tables"].values()]


def test_the_catalogue_is_the_one_list_of_tables():
    """Driver, results builder and experiment files agree: each entry has its experiment and a budget."""
    import run_tables

    assert [s.name for s in make_results.TABLES] == list(CATALOGUE["tables"]) == run_tables.TABLES
    for name, entry in CATALOGUE["tables"].items():
        assert (REPO / "configs" / "experiment" / f"{entry['experiment']}.yaml").exists(), name
        assert entry["budgets"], name
        for budget in entry["budgets"].values():
            assert "overrides" in budget and "note" in budget, name
    assert "tiny" in CATALOGUE["common_budgets"]


def test_no_budget_for_numbers_tests_on_part_of_the_test_set():
    """eval.max_batches caps the test as well as validation: a budget whose numbers go into a table caps
    validation alone (eval.valid_max_batches), so that its test covers the whole test set."""
    for name, entry in CATALOGUE["tables"].items():
        for budget, spec in entry["budgets"].items():
            if budget == "smoke":
                continue
            capped = [o for o in spec["overrides"] if str(o).lstrip("+").startswith("eval.max_batches=")]
            assert not capped, f"{name} --budget {budget}: {capped} would test on part of the test set"


def composed(overrides):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=True)


def budget_jobs(command: list[str]) -> list[list[str]]:
    """The jobs (override lists) one train.py multirun command launches: the experiment's grid under the
    command's overrides (later values win, as in Hydra's sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in command[2:] if not a.startswith(("hydra.sweep.dir=", "hydra/launcher=", "hydra.launcher."))]
    grid = composed(args[:1]).hydra.sweeper.params or {}  # args[0] is +experiment=<name>
    parsed = OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in grid.items()), *args])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def sweep_owners(table: str, budget: str) -> dict[str, int]:
    """Run name -> the part of the budget (`sweeps`) that trains it; refuses a name made by two parts. Every
    job of every part composes and validates."""
    import run_tables

    owner: dict[str, int] = {}
    for part, command in enumerate(run_tables.train_commands(table, budget, Path("/nonexistent"), 2, [])):
        for job in budget_jobs(command):
            cfg = composed(job)
            validate_config(cfg)
            name = make_results.run_name(OmegaConf.to_container(cfg))
            assert owner.setdefault(name, part) == part, f"{table} --budget {budget}: {name} in parts {owner[name]}, {part}"
    return owner


@pytest.mark.parametrize("table,budget", [(t, b) for t, e in CATALOGUE["tables"].items()
                                          for b, spec in e["budgets"].items() if spec.get("sweeps")])
def test_budget_sweeps_never_train_one_run_twice(table, budget):
    """A budget in parts (`sweeps`) runs each part into the same sweep dir: two parts that made a run of the same
    name would resume each other's run under the other part's settings."""
    owner = sweep_owners(table, budget)
    assert len(set(owner.values())) == len(CATALOGUE["tables"][table]["budgets"][budget]["sweeps"])


def test_budget_sweeps_check_catches_an_overlap(monkeypatch):
    """The twin: the grid K = 1, 5 x (vae1, vae5, iwae5) beside a part K = 5 x (vae5, iwae5) at fewer epochs
    trains mnist-K5-...-elbo5 in both parts, and the check refuses it."""
    import run_tables

    rows = "experiment/iwae_table1_rows@_global_"
    entry = {"note": "", "overrides": ["logger=none", "dataset=mnist"],
             "sweeps": [["model.num_components=5", f"{rows}=vae5,iwae5", "train.epochs=240"],
                        ["model.num_components=1,5", f"{rows}=vae1,vae5,iwae5"]]}
    monkeypatch.setitem(run_tables.CATALOGUE["tables"]["iwae_table1"]["budgets"], "overlap", entry)
    with pytest.raises(AssertionError, match="K5.*elbo5.*in parts 0, 1"):
        sweep_owners("iwae_table1", "overlap")


@pytest.mark.parametrize("name", TABLE_EXPERIMENTS)
def test_table_experiment_has_a_grid_and_every_row_composes(name):
    cfg = composed([f"+experiment={name}"])
    assert str(cfg.hydra.mode).endswith("MULTIRUN") and "seed" in cfg.hydra.sweeper.params
    for key, values in cfg.hydra.sweeper.params.items():
        for value in str(values).split(","):
            validate_config(composed([f"+experiment={name}", f"{key}={value}"]))


def test_rows_override_the_table_values():
    """A row file wins over its table's own values (K, objective, S), whatever the override order."""
    base = ["+experiment=nalisnick_dlgm"]
    gauss = composed([*base, "experiment/rows@_global_=gaussian"])
    vimco = composed([*base, "experiment/rows@_global_=vimco"])
    sf = composed([*base, "experiment/rows@_global_=score_function_learned"])
    assert gauss.model.num_components == 1 and vimco.model.num_components == 3
    assert (vimco.train.objective, vimco.train.num_samples) == ("iwae", 5)
    assert sf.estimator.baseline == "learned" and sf.model.hidden == [500] and sf.model.latent_dim == 25
    deep = composed(["+experiment=nalisnick_dlgm_deep", "experiment/rows@_global_=score_function_learned"])
    assert deep.model.hidden == [500, 500] and deep.estimator.baseline == "learned"
    assert {k: v for k, v in deep.items() if k not in ("model", "logger", "hydra")} == \
        {k: v for k, v in sf.items() if k not in ("model", "logger", "hydra")}


@pytest.mark.parametrize("K", [1, 3])
def test_nalisnick_dlgm_builds_the_layout_of_the_papers_runs(K):
    """The layout of the authors' code at the commits whose logs end in the paper's numbers: encoder 784-500 with
    no activation before the heads, decoder 25-500 ReLU-784 (their mlp() puts a ReLU only between layers)."""
    import hydra.utils
    import torch.nn as nn

    cfg = composed(["+experiment=nalisnick_dlgm", "experiment/rows@_global_=" + ("gaussian" if K == 1 else "graves")])
    model = hydra.utils.instantiate(cfg.model, x_dim=784)
    def layers(m):
        return [(l.in_features, l.out_features) if isinstance(l, nn.Linear) else type(l).__name__
                for l in m.modules() if isinstance(l, (nn.Linear, nn.ReLU, nn.Tanh, nn.ELU, nn.Softplus))]

    assert layers(model.encoder.body) == [(784, 500)]  # linear: no activation between it and the heads
    assert layers(model.decoder) == [(25, 500), "ReLU", (500, 784)]
    heads = {name: (l.in_features, l.out_features) for name, l in model.encoder.named_children() if name != "body"}
    assert heads == {"logits": (500, K), "loc": (500, K * 25), "scale": (500, K * 25)}  # linear heads on the body


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run the driver on estimators_mnist (rows gaussian + score_function_mean, seeds 0 and 1) and build tables."""
    tmp = tmp_path_factory.mktemp("results")
    data = write_fixture_root(tmp / "data", n_train=200, n_test=60)
    env = {**os.environ, "MIXVAE_GRAVES_BACKEND": "eager", "WANDB_MODE": "disabled", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(REPO / "experiments" / "run_tables.py"), "estimators_mnist", "--budget", "tiny",
           "--jobs", "1", "--sweep-root", str(tmp / "sweeps"), "--results", str(tmp / "runs"),
           "--set", f"dataset.root={data}", "--set", "seed=0,1",
           "--set", "experiment/rows@_global_=graves,score_function_mean",
           "--grad-arg=--repetitions=8", "--grad-arg=--warmup=3", "--grad-arg=--step-repeats=2"]
    res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    missing = make_results.main(["--runs", str(tmp / "runs"), "--out", str(tmp / "out"), "--smoke-runs",
                                 str(tmp / "no-smoke-runs")])
    return tmp, missing


def test_driver_collects_small_files_per_run(pipeline):
    tmp, _ = pipeline
    table = tmp / "runs" / "estimators_mnist"
    runs = sorted(p.name for p in table.iterdir() if p.is_dir())
    assert runs == ["mnist-K5-graves-elbo1-seed0", "mnist-K5-graves-elbo1-seed1",
                    "mnist-K5-score_function-mean-elbo1-seed0", "mnist-K5-score_function-mean-elbo1-seed1"]
    for run in runs:
        files = {p.name: p.stat().st_size for p in (table / run).iterdir()}
        assert set(files) == {"summary.json", "metrics.jsonl", "config.yaml", "grad_variance.json"}
        assert max(files.values()) < 20_000, files  # a few KB: no checkpoints, no logs
    sweep = json.loads((table / "sweep.json").read_text())
    assert sweep["command"].startswith("python train.py +experiment=estimators_mnist") and sweep["runs"] == 4
    graves = json.loads((table / runs[0] / "grad_variance.json").read_text())
    assert set(graves["rows"]) >= {"graves", "enumerate", "score_function_mean", "vimco"}
    assert "gaussian" not in graves["rows"]  # it pins K = 1; this checkpoint has K = 5
    assert graves["own"]["grad/var_encoder"] > 0 and graves["own"]["time/step_s"] > 0
    # during training: the tiny budget keeps a snapshot after epoch 1 (checkpoint.keep=[1]), measured too
    assert [e["epoch"] for e in graves["during"]] == [1] and graves["during"][0]["grad/snr_encoder"] > 0


def test_table_shows_mean_std_over_seeds_and_the_paper_column(pipeline):
    tmp, missing = pipeline
    text = (tmp / "out" / "estimators_mnist.md").read_text()
    assert "estimators_mnist" not in missing and "iwae_table1" in missing
    for fact in ["Command (this budget", "Full budget: `python train.py +experiment=estimators_mnist`",
                 "Seeds: 0, 1", "Hardware: cpu", "Git revision:", "Budget: 2 epoch(s)", "Smoke test: ",
                 "**Smoke test, not a reproduction** (budget `tiny`"]:
        assert fact in text, fact
    head = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| K |")).strip("|")
            .split("|")]
    assert head[3:6] == ["paper", "ours: test NLL (IWAE-10)", "gap (ours - paper)"]
    assert head[7:10] == ["epochs", "steps", "train time"]
    rows = [line for line in text.splitlines() if line.startswith("| 5 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cells[4]), cells  # test NLL, two seeds
        assert cells[7] == "2" and cells[8] == "6" and cells[-1] == "0, 1"  # the row's budget; its seeds
    assert (tmp / "out" / "estimators_mnist_curves.png").stat().st_size > 1000
    assert "### Encoder-gradient SNR during training" in text and "| epoch 1 |" in text


def test_a_table_without_runs_is_a_stub_without_numbers(pipeline):
    tmp, _ = pipeline
    stub = (tmp / "out" / "iwae_table1.md").read_text()
    assert "No runs committed yet" in stub and "python experiments/run_tables.py iwae_table1" in stub
    assert "±" not in stub and "|" not in stub  # the paper's numbers are named, ours are not made up


def _iwae_summary(objective, S, K, seed, nll, epochs=1) -> dict:
    """A hand-written iwae_table1 run summary (fake numbers on purpose: the tests check the writer only)."""
    cfg = {"dataset": {"name": "mnist"}, "model": {"num_components": K}, "seed": seed,
           "estimator": {"_target_": "mixvae.estimators.graves.Graves"},
           "train": {"objective": objective, "num_samples": S, "batch_size": 100, "max_batches": None},
           "eval": {"max_batches": 1, "batch_size": 100}}
    return {"status": "completed", "epochs": epochs, "steps": 500 * epochs, "config": cfg, "data": {"test": 10000},
            "metrics": {"test/nll_iwae5000": nll, "test/elbo": -nll - 5, "time/epoch_s": 10.0},
            "git": {"commit": "abc", "dirty": False}, "hardware": {"device": "cpu"}, "wall_time_s": 30.0}


def _write_iwae_runs(root: Path, runs) -> None:
    """One summary.json per (objective, S, K, seed, nll, epochs) under root/iwae_table1/r<i>/."""
    for i, run in enumerate(runs):
        d = root / "iwae_table1" / f"r{i}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(_iwae_summary(*run)))


def test_iwae_table_puts_paper_numbers_beside_ours(tmp_path):
    """iwae_table1's layout from two hand-written summaries (the writer only; the numbers are fake on purpose)."""
    _write_iwae_runs(tmp_path / "runs", [("iwae", 5, 1, 0, 100.0), ("iwae", 5, 1, 1, 102.0),
                                         ("elbo", 1, 1, 0, 90.0), ("elbo", 5, 1, 0, 103.0)])
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables", "iwae_table1"])
    text = (tmp_path / "out" / "iwae_table1.md").read_text()
    row5 = next(line for line in text.splitlines() if line.startswith("| 5 |"))
    assert "86.47" in row5 and "85.54" in row5 and "101.00 ± 1.41" in row5
    assert "+15.46 ± 1.00" in row5  # the gap to the paper's IWAE k = 5 (85.54), with its standard error
    row1 = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| 1 |")).split("|")]
    assert row1[2:8] == ["86.76", "90.00 (n=1)", "+3.24", "86.76", "90.00 (n=1)", "+3.24"], row1
    # the paper's orderings where ours has both rows: IWAE-5 (mean 101) is not below k = 1 (90) here
    assert ("- K = 1: VAE k = 5 < VAE k = 1 **does not hold**: 103.00 vs 90.00; IWAE k = 5 < IWAE k = 1 **does not "
            "hold**: 101.00 vs 90.00; IWAE k = 5 < VAE k = 5 holds: 101.00 vs 103.00.") in text  # one k = 1 run, both columns
    assert "not directly comparable" in text


def test_iwae_ordering_at_unequal_budgets_is_not_a_miss(tmp_path):
    """VAE k = 1 trained 1093 epochs beats VAE k = 5 at 364: the ordering line says the budgets differ and does
    not bold it as a miss of the paper's ordering (its twin, at equal budgets, is bold: the test above)."""
    _write_iwae_runs(tmp_path / "runs", [("elbo", 1, 1, 0, 88.0, 1093), ("elbo", 5, 1, 0, 89.0, 364)])
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables", "iwae_table1"])
    text = (tmp_path / "out" / "iwae_table1.md").read_text()
    assert ("VAE k = 5 < VAE k = 1 does not hold: 89.00 vs 88.00 (at 364 vs 1093 epochs: not the same budget)"
            in text), text
    assert "**does not hold**" not in text


def test_paired_differences_against_the_gaussian_row(tmp_path):
    """K = 3 minus K = 1 per seed, mean and standard error (hand-written summaries; fake numbers on purpose)."""
    def summary(K, seed, ll):
        cfg = {"dataset": {"name": "binarized_mnist"}, "model": {"num_components": K}, "seed": seed,
               "estimator": {"_target_": "mixvae.estimators.graves.Graves"},
               "train": {"objective": "elbo", "num_samples": 1, "batch_size": 100, "max_batches": None},
               "eval": {"max_batches": None, "batch_size": 100}}
        return {"status": "completed", "epochs": 200, "steps": 100000, "config": cfg, "data": {"test": 10000},
                "metrics": {"test/nll_iwae50": -ll, "test/elbo": ll - 5, "time/epoch_s": 10.0,
                            "time/train_s": 2000.0},
                "git": {"commit": "abc", "dirty": False}, "hardware": {"device": "cpu"}, "wall_time_s": 30.0}
    values = {(1, 0): -97.0, (1, 1): -96.0, (1, 2): -98.0, (3, 0): -96.5, (3, 1): -95.7, (3, 2): -97.3}
    for (K, seed), ll in values.items():
        d = tmp_path / "runs" / "nalisnick_dlgm" / f"K{K}-{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(summary(K, seed, ll)))
    (tmp_path / "runs" / "nalisnick_dlgm" / "sweep.json").write_text(json.dumps({"budget": "cpu"}))
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables",
                       "nalisnick_dlgm", "--smoke-runs", str(tmp_path / "none")])
    text = (tmp_path / "out" / "nalisnick_dlgm.md").read_text()
    assert "**Reproduction budget** (`cpu`)" in text and "Smoke test" not in text
    row = next(line for line in text.splitlines() if line.startswith("| K = 3 graves |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:6] == ["+0.50", "0.12", "3", "better"], cells  # diffs 0.5, 0.3, 0.7: 4.3 standard errors
    gauss = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert "-97.00 ± 1.00" in gauss and "-0.20 ± 0.58" in gauss  # ours, gap to the paper's -96.80


def test_paired_verdict_names_a_side_only_beyond_two_standard_errors():
    """A mean difference nearer zero than two standard errors is reported as no clear difference, not by its sign."""
    assert make_results.paired_verdict(0.5, 0.12, higher_is_better=True) == "better"
    assert make_results.paired_verdict(-0.5, 0.12, higher_is_better=True) == "worse"
    assert make_results.paired_verdict(-2.04, 0.03, higher_is_better=False) == "better"
    assert make_results.paired_verdict(-0.004, 0.25, higher_is_better=False) == "no clear difference"
    assert make_results.paired_verdict(0.49, 0.25, higher_is_better=False) == "no clear difference"
    assert make_results.paired_verdict(0.3, float("nan"), higher_is_better=False) == "—"


def test_latent_families_table_end_to_end(tmp_path):
    """The families table from real tiny runs: two families, the driver, the names, the peer column."""
    data = write_fixture_root(tmp_path / "data", n_train=200, n_test=60)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(REPO / "experiments" / "run_tables.py"), "latent_families", "--budget", "tiny",
           "--jobs", "1", "--sweep-root", str(tmp_path / "sweeps"), "--results", str(tmp_path / "runs"),
           "--set", f"dataset.root={data}", "--set", "seed=0", "--set", "model.latent_dim=2",
           "--set", "experiment/families@_global_=normal,gamma", "--set", "estimator=graves"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "runs" / "latent_families").iterdir() if p.is_dir())
    assert names == ["mnist-gamma-D2-graves-elbo1-seed0", "mnist-normal-D2-graves-elbo1-seed0"]
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables",
                       "latent_families", "--smoke-runs", str(tmp_path / "none")])
    text = (tmp_path / "out" / "latent_families.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| normal")
            or line.startswith("| gamma")}
    assert set(rows) == {"normal", "gamma"} and "141.9" in rows["normal"] and "143.4" in rows["gamma"]

    # a fresh machine (no run directories) with these runs committed: the driver trains nothing again ...
    fresh = [*cmd[:cmd.index("--sweep-root") + 1], str(tmp_path / "fresh"), *cmd[cmd.index("--sweep-root") + 2:]]
    res = subprocess.run(fresh, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert log.count("; skipped") == 2 and "mnist-gamma-D2-graves-elbo1-seed0; skipped" in log, log[-3000:]
    assert not list((tmp_path / "fresh").glob("*/*/*/summary.json"))
    assert "kept 2 run(s) collected before" in log
    # ... but a job that differs in what defines its run (here one more epoch) is trained, and so is every job
    # with --rerun-committed
    res = subprocess.run([*fresh, "--set", "experiment/families@_global_=normal", "--set", "train.epochs=3"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "; skipped" not in res.stdout + res.stderr, res.stderr[-3000:]
    res = subprocess.run([*fresh, "--set", "experiment/families@_global_=gamma", "--rerun-committed"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "; skipped" not in res.stdout + res.stderr, res.stderr[-3000:]
    trained = sorted(p.parent.name for p in (tmp_path / "fresh").glob("*/*/*/summary.json"))
    assert trained == ["gamma-D2-graves-seed0", "normal-D2-graves-seed0"], trained


def test_families_table_pairs_each_estimator_with_graves_by_seed():
    """The writer only (hand-made numbers): G-REP minus graves seed by seed, the seed graves lacks left out."""
    def run(estimator, seed, nll):
        extra = ["estimator.baseline=mean"] if estimator == "grep" else []
        cfg = _job_config("+experiment=latent_families", "experiment/families@_global_=gamma",
                          "model.latent_dim=2", f"estimator={estimator}", *extra, f"seed={seed}")
        return make_results.Run(name=f"{estimator}{seed}", records=[], grad=None, summary={
            "status": "completed", "epochs": 30, "config": cfg, "metrics": {"test/nll_iwae5000": nll}})

    runs = [run("graves", 0, 100.0), run("graves", 1, 102.0), run("grep", 0, 103.0), run("grep", 1, 104.0),
            run("grep", 2, 110.0)]
    spec = next(s for s in make_results.TABLES if s.name == "latent_families")
    text = "\n".join(make_results.families_table(spec, runs))
    row = next(line for line in text.splitlines() if line.startswith("| gamma | 2 | grep (mean) |"))
    assert [c.strip() for c in row.strip("|").split("|")][3:] == ["+2.50", "0.50", "2"], row  # diffs 3 and 2
    main = next(line for line in text.splitlines() if line.startswith("| gamma | 2 | 143.4 |"))
    assert "101.0 ± 1.4" in main and "105.7 ± 3.8" in main  # the unpaired means keep every seed


def _job_config(*overrides) -> dict:
    """A job's config as train.py would write it (config.yaml): the experiment composed with the overrides."""
    cfg = composed(overrides)
    validate_config(cfg)
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg.pop("hydra")
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)


def _fake_run(root: Path, seed: int) -> Path:
    """A finished run dir as train.py leaves it (config.yaml, summary.json, metrics.jsonl) of the tiny budget."""
    run = root / f"run{seed}"
    run.mkdir(parents=True)
    cfg = _job_config("+experiment=estimators_mnist", f"seed={seed}")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "config": cfg}))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run


def _collect(runs, results, budget="cpu"):
    import run_tables

    return run_tables.collect("estimators_mnist", runs, results, [["python", "train.py", "+experiment=x"]], budget,
                              1.0)


def test_collecting_on_another_machine_keeps_the_runs_committed_before(tmp_path):
    """Seed 0 collected, then (a fresh machine whose sweep dir holds only seed 1) seed 1: both stay, each
    invocation is in sweep.json; collecting seed 1 again replaces its own folder only."""
    results = tmp_path / "results"
    _collect([_fake_run(tmp_path / "machine_a", 0)], results)
    run1 = _fake_run(tmp_path / "machine_b", 1)
    dest = _collect([run1], results)
    names = sorted(p.name for p in dest.iterdir() if p.is_dir())
    assert names == ["mnist-K5-graves-elbo1-seed0", "mnist-K5-graves-elbo1-seed1"]
    (run1 / "metrics.jsonl").write_text('{"step": 2}\n')
    _collect([run1], results)
    assert (dest / names[1] / "metrics.jsonl").read_text() == '{"step": 2}\n'
    assert (dest / names[0] / "metrics.jsonl").read_text() == '{"step": 1}\n'
    sweep = json.loads((dest / "sweep.json").read_text())
    assert sweep["runs"] == 2 and [c["collected_runs"] for c in sweep["collections"]] == [
        ["mnist-K5-graves-elbo1-seed0"], ["mnist-K5-graves-elbo1-seed1"], ["mnist-K5-graves-elbo1-seed1"]]


def test_twin_a_collect_that_replaces_the_folder_loses_the_other_runs(tmp_path, monkeypatch):
    """The broken twin (the folder emptied before copying, as the driver once did) loses seed 0; the check
    above would fail on it."""
    import shutil

    import run_tables

    results = tmp_path / "results"
    _collect([_fake_run(tmp_path / "machine_a", 0)], results)
    real_collect = run_tables.collect

    def replacing(table, dirs, dest_root, *args):
        shutil.rmtree(dest_root / table)
        return real_collect(table, dirs, dest_root, *args)

    monkeypatch.setattr(run_tables, "collect", replacing)
    dest = _collect([_fake_run(tmp_path / "machine_b", 1)], results)
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["mnist-K5-graves-elbo1-seed1"]


def test_collecting_another_budget_into_the_same_folder_is_refused(tmp_path):
    results = tmp_path / "results"
    _collect([_fake_run(tmp_path / "a", 0)], results)
    with pytest.raises(SystemExit, match="holds runs of budget 'cpu', not 'smoke'"):
        _collect([_fake_run(tmp_path / "b", 1)], results, budget="smoke")


def test_grid_table_crosses_estimators_and_models(tmp_path):
    """gumbel_vae's layout from summaries of real composed configs (fake numbers on purpose): rows estimators,
    columns models, our negative test ELBO beside the paper's (its metric), our IWAE-1000 NLL in a second table."""
    def summary(cfg, elbo, nll):
        return {"status": "completed", "epochs": 100, "steps": 50000, "config": cfg, "data": {"test": 10000},
                "metrics": {"test/nll_iwae1000": nll, "test/elbo": elbo}, "git": {"commit": "abc"},
                "hardware": {"device": "cpu"}, "wall_time_s": 30.0}
    rows = "experiment/gumbel_vae_rows@_global_"
    runs = [(_job_config("+experiment=gumbel_vae", f"{rows}=gs", "model=discrete/categorical_vae"), -103.0, 93.0),
            (_job_config("+experiment=gumbel_vae", f"{rows}=sf", "model=discrete/bernoulli_vae"), -110.0, 100.0)]
    for cfg, elbo, nll in runs:
        d = tmp_path / "runs" / "gumbel_vae" / make_results.run_name(cfg)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(summary(cfg, elbo, nll)))
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables", "gumbel_vae",
                       "--smoke-runs", str(tmp_path / "none")])
    lines = (tmp_path / "out" / "gumbel_vae.md").read_text().splitlines()
    gs_rows = [line for line in lines if line.startswith("| gumbel_softmax (annealed) |")]
    assert "101.50 | 103.00 (n=1) | +1.50" in gs_rows[0] and "105.00 | — | —" in gs_rows[0]
    assert "93.00 (n=1)" in gs_rows[1]  # the IWAE-1000 table
    sf_rows = [line for line in lines if line.startswith("| score_function (mean) |")]
    assert "112.20 | 110.00 (n=1) | -2.20" in sf_rows[0] and "100.00 (n=1)" in sf_rows[1]


def test_vimco_sbn_table_names_the_nvil_column_in_the_papers_order(tmp_path):
    """The score function with a learned baseline and normalization is the paper's NVIL column, between VIMCO and
    RWS; a run of it lands there (fake number on purpose), not in a column of its own label."""
    _fake_sbn_run(tmp_path, "nvil_k5", 0, 100, 111.0)
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables", "vimco_sbn",
                       "--smoke-runs", str(tmp_path / "none")])
    lines = (tmp_path / "out" / "vimco_sbn.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| samples |"))
    assert [c.strip() for c in head.strip("|").split("|")][1::3] == ["vimco (paper)", "nvil (paper)", "rws (paper)"]
    five = next(line for line in lines if line.startswith("| 5 |"))
    assert [c.strip() for c in five.strip("|").split("|")][4:6] == ["—", "111.00 (n=1)"], five
    assert "normalized" not in head


def _fake_sbn_run(tmp_path, cell: str, seed: int, epochs: int, nll: float, extra: tuple = ()) -> Path:
    """A completed vimco_sbn run folder of the 3-layer net from the composed config of row file ``cell``, with
    only a summary (fake test NLL on purpose)."""
    cfg = _job_config("+experiment=vimco_sbn", f"experiment/vimco_sbn_rows@_global_={cell}", "model=discrete/sbn3",
                      f"seed={seed}", *extra)
    d = tmp_path / "runs" / "vimco_sbn" / make_results.run_name(cfg)
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "status": "completed", "epochs": epochs, "steps": 1000, "config": cfg, "data": {"test": 10000},
        "metrics": {"test/nll_iwae1000": nll}, "git": {"commit": "abc"}, "hardware": {"device": "cpu"},
        "wall_time_s": 30.0}))
    return d


def _vimco_cells(tmp_path, epochs_k5: int) -> list[str]:
    """vimco_sbn built from two fake runs, VIMCO K = 2 at 100 epochs and VIMCO K = 5 at ``epochs_k5``."""
    for cell, epochs, nll in (("vimco_k2", 100, 100.0), ("vimco_k2b", 100, 101.0), ("vimco_k5", epochs_k5, 95.0)):
        _fake_sbn_run(tmp_path, cell.rstrip("b"), 1 if cell.endswith("b") else 0, epochs, nll)
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables", "vimco_sbn",
                       "--smoke-runs", str(tmp_path / "none")])
    return (tmp_path / "out" / "vimco_sbn.md").read_text().splitlines()


def test_grid_cell_at_another_budget_says_its_epochs(tmp_path):
    """A cell trained longer than the table's usual budget (VIMCO K = 5 at 200 epochs beside 100-epoch cells)
    says so in the cell, and the caption says why; the usual cells carry no mark."""
    lines = _vimco_cells(tmp_path, 200)
    five = next(line for line in lines if line.startswith("| 5 |"))
    two = next(line for line in lines if line.startswith("| 2 |"))
    assert "95.00 (n=1) [200 epochs]" in five and "epochs]" not in two
    assert any("trained for N epochs instead of the table's 100" in line for line in lines)


def test_grid_cell_at_the_usual_budget_has_no_epochs_mark(tmp_path):
    """The twin: the same runs all at 100 epochs read as before, with no mark and no caption."""
    lines = _vimco_cells(tmp_path, 100)
    assert not any("epochs]" in line for line in lines)
    assert not any("instead of the table's" in line for line in lines)


def test_grid_table_twin_compares_the_paper_elbo_with_our_elbo():
    """The twin: read as an IWAE table (the old layout), the paper's negative ELBO would sit beside our IWAE
    bound, about 10 nats lower for these models; the catalogue says gumbel_vae's paper metric is the ELBO."""
    spec = next(t for t in make_results.TABLES if t.name == "gumbel_vae")
    assert spec.metric == "elbo"
    assert {t.metric for t in make_results.TABLES if t.name != "gumbel_vae"} == {"iwae"}


def _run_names(table: str, budget: str) -> list[str]:
    import run_tables

    return [make_results.run_name(_job_config(*[a for a in job if not a.startswith("hydra.")]))
            for command in run_tables.train_commands(table, budget, Path("/nonexistent"), 2, [])
            for job in budget_jobs(command)]


def _main_budget(entry: dict) -> str:
    return "cpu" if "cpu" in entry["budgets"] else "full" if "full" in entry["budgets"] else next(iter(entry["budgets"]))


# the budget each table's driver runs by default (cpu, else full) in the fast suite; the others (seconds each) slow
@pytest.mark.parametrize("table,budget", [
    (t, b) if b == _main_budget(e) else pytest.param(t, b, marks=pytest.mark.slow)
    for t, e in CATALOGUE["tables"].items() for b in e["budgets"]])
def test_every_run_of_a_budget_has_its_own_name(table, budget):
    """Each job of each budget gets a results/runs/<table>/<name> of its own (two runs of one name would overwrite
    each other when collected), for every model kind: mixtures, families, discrete VAEs, belief nets."""
    names = _run_names(table, budget)
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


def test_run_names_of_the_gumbel_rows_differ_only_by_variant():
    """The twin of the check above: without the variant parts (st, annealed) gs / st_gs and st / annealed_st
    would share a name."""
    names = _run_names("gumbel_vae", "full")
    assert "binarized_mnist-categorical20x10-gumbel_softmax-annealed-elbo1-seed0" in names
    assert "binarized_mnist-categorical20x10-gumbel_softmax-st-annealed-elbo1-seed0" in names
    stripped = [re.sub(r"-(st|annealed)(?=-)", "", n) for n in names]
    assert len(set(stripped)) < len(stripped)


def test_wall_time_of_a_run_counts_every_invocation():
    """Summaries that keep the total (invocation_wall_time_s present) are read as they are; older ones, which
    held the last invocation alone, count at least the run's training and test time."""
    metrics = {"time/train_s": 1000.0, "time/test_eval_s": 400.0}
    assert make_results.run_wall_time({"wall_time_s": 430.0, "metrics": metrics}) == 1400.0
    assert make_results.run_wall_time({"wall_time_s": 1500.0, "metrics": metrics}) == 1500.0
    assert make_results.run_wall_time({"wall_time_s": 1500.0, "invocation_wall_time_s": 430.0,
                                       "metrics": metrics}) == 1500.0
    assert make_results.run_wall_time({"metrics": metrics}) is None


@functools.cache
def _sweep_subdirs(table: str, budget: str, subdir: str | None = None) -> dict[str, str]:
    """Run name -> the run directory (hydra.sweep.subdir, resolved as the launcher does) of each job of a
    budget; ``subdir`` replaces the experiment file's template."""
    import run_tables
    from hydra.core.hydra_config import HydraConfig

    sys.path.insert(0, str(REPO))
    import train  # noqa: F401  (registers the mixvae.variant resolver that subdirs use)

    dirs: dict[str, str] = {}
    for command in run_tables.train_commands(table, budget, Path("/nonexistent"), 2, []):
        for job in budget_jobs(command):
            cfg = composed([*job, *([f"hydra.sweep.subdir={subdir}"] if subdir else [])])
            HydraConfig.instance().set_config(cfg)
            dirs[make_results.run_name(OmegaConf.to_container(cfg))] = str(cfg.hydra.sweep.subdir)
    return dirs


@pytest.mark.parametrize("table,budget", [
    (t, b) if b == _main_budget(e) else pytest.param(t, b, marks=pytest.mark.slow)
    for t, e in CATALOGUE["tables"].items() for b in e["budgets"]])
def test_every_run_of_a_budget_has_its_own_run_dir(table, budget):
    """Two runs of a budget that resolved to one run directory would resume each other (refused as a changed
    setting, but then one of them never runs): every run name maps to a directory of its own."""
    dirs = _sweep_subdirs(table, budget)
    assert len(set(dirs.values())) == len(dirs), sorted(dirs.items(), key=lambda kv: kv[1])


def test_run_dirs_name_the_baseline_and_keep_the_old_names():
    """latent_families trains G-REP with and without a baseline: the baseline is part of the run dir (and runs
    without one keep the names they had), while the twin, the template without ${mixvae.variant:...}, gives
    both baselines one directory."""
    dirs = _sweep_subdirs("latent_families", "cpu")
    assert dirs["mnist-beta-D2-grep-mean-elbo1-seed0"] == "beta-D2-grep-mean-seed0"
    assert dirs["mnist-beta-D2-grep-none-elbo1-seed0"] == "beta-D2-grep-seed0"
    assert dirs["mnist-gamma-D10-graves-elbo1-seed2"] == "gamma-D10-graves-seed2"
    assert dirs["mnist-von_mises-D2-score_function-mean-elbo1-seed0"] == "von_mises-D2-score_function-mean-seed0"
    old = ("${hydra:runtime.choices.experiment/families@_global_}-D${model.latent_dim}"
           "-${hydra:runtime.choices.estimator}-seed${seed}")
    twin = _sweep_subdirs("latent_families", "cpu", subdir=old)
    assert twin["mnist-beta-D2-grep-mean-elbo1-seed0"] == twin["mnist-beta-D2-grep-none-elbo1-seed0"]


def test_a_table_names_its_budgets_command_not_the_last_partial_one(tmp_path):
    """A run launched on part of a budget (--set overrides) is collected with its own command in sweep.json,
    while the table's header shows the command of the whole budget, from the catalogue (the last collection's
    --set overrides there would claim that one line made every run)."""
    import shutil

    import run_tables

    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "runs" / "latent_families", results / "latent_families")
    partial = ["seed=0", "estimator=grep", "hydra.sweep.subdir=beta-D2-grep-mean-seed0"]
    run_tables.collect("latent_families", [], results, [["python", "train.py", "+experiment=latent_families",
                                                         *partial]], "cpu", 1.0, partial)
    sweep = json.loads((results / "latent_families" / "sweep.json").read_text())
    assert sweep["collections"][-1]["driver"].endswith("--budget cpu --set seed=0 --set estimator=grep "
                                                       "--set hydra.sweep.subdir=beta-D2-grep-mean-seed0")
    spec = next(t for t in make_results.TABLES if t.name == "latent_families")
    (tmp_path / "out").mkdir()
    assert make_results.build_table(spec, results, tmp_path / "out")
    text = (tmp_path / "out" / "latent_families.md").read_text()
    command = text.split("which runs\n`", 1)[1].split("`", 1)[0]
    assert command == make_results.budget_command("latent_families", "cpu")
    assert command.count("python train.py +experiment=latent_families") == len(
        CATALOGUE["tables"]["latent_families"]["budgets"]["cpu"]["sweeps"])
    assert "hydra.sweep.subdir" not in command and "sweep.json lists each one's command" in text


def test_hardware_line_names_the_cpu_generation_where_the_run_recorded_it():
    """'AMD EPYC' alone is Zen 3 or Zen 4: the table adds family and model; older summaries without them still
    read, with the vector ISA alone."""
    from mixvae.training.runtime import cpu_facts

    facts = cpu_facts()
    assert set(facts) == {"cpu_model", "cpu_family", "cpu_model_number", "vector_isa"}
    new = {"cpu_model": "AMD EPYC", "cpu_family": "25", "cpu_model_number": "17", "vector_isa": "AVX-512"}
    assert make_results.cpu_numbers(new) == "family 25, model 17"
    assert make_results.cpu_numbers({"cpu_model": "AMD EPYC", "vector_isa": "AVX2"}) is None


def _vimco_rws_pairs(tmp_path, rws_seed2_epochs: int) -> list[str]:
    """The K = 5 row of vimco_sbn's VIMCO-against-RWS section, from fake runs (numbers on purpose): seeds 0 and 1
    both at 100 epochs, VIMCO 0.4 and 0.6 behind on the test NLL and 0.5 behind at every logged validation epoch;
    seed 2 VIMCO at 100 epochs (90.0) and RWS at ``rws_seed2_epochs`` (99.0)."""
    cells = [("vimco_k5", 0, 100, 95.4), ("rws_k5", 0, 100, 95.0), ("vimco_k5", 1, 100, 95.6),
             ("rws_k5", 1, 100, 95.0), ("vimco_k5", 2, 100, 90.0), ("rws_k5", 2, rws_seed2_epochs, 99.0)]
    for cell, seed, epochs, nll in cells:
        d = _fake_sbn_run(tmp_path, cell, seed, epochs, nll, [f"train.epochs={epochs}"])
        offset = 0.5 if cell.startswith("vimco") else 0.0
        (d / "metrics.jsonl").write_text("\n".join(
            json.dumps({"epoch": e, "step": 10 * e, "valid/nll_iwae100": 200.0 - e + offset})
            for e in range(1, epochs + 1)))
    make_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tables", "vimco_sbn",
                       "--smoke-runs", str(tmp_path / "none")])
    lines = (tmp_path / "out" / "vimco_sbn.md").read_text().splitlines()
    start = lines.index("### vimco against rws, seed by seed at the same budget")
    assert any("(valid/nll_iwae100)" in line for line in lines[start:])
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:] if line.startswith("| 5 |")]


def test_grid_pairs_compare_vimco_and_rws_seed_by_seed_at_one_budget(tmp_path):
    """vimco_sbn's `pairs`: VIMCO minus RWS at K = 5, matched by seed and budget, on the test NLL (mean, standard
    error, verdict) and along training on the logged validation NLL. RWS seed 2 at 200 epochs beside VIMCO seed 2
    at 100 is left out of the 100-epoch pair rather than set against it."""
    rows = _vimco_rws_pairs(tmp_path, 200)
    assert len(rows) == 1, rows
    assert rows[0][:7] == ["5", "100", "2", "+0.50", "0.10", "worse", "+0.40 +0.60"], rows
    assert rows[0][7:] == [f"+0.50 (epoch {e})" for e in (20, 40, 60, 80, 100)], rows


def test_grid_pairs_twin_the_same_seed_at_the_same_budget_joins_the_pair(tmp_path):
    """The twin: with RWS seed 2 at 100 epochs too, seed 2 is paired (VIMCO 9 nats ahead there), and the row
    changes to three seeds, mean -2.67: what left it out before was the budget, not the seed."""
    rows = _vimco_rws_pairs(tmp_path, 100)
    assert len(rows) == 1 and rows[0][:3] == ["5", "100", "3"] and rows[0][3] == "-2.67", rows
    assert rows[0][6] == "+0.40 +0.60 -9.00", rows
