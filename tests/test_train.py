"""The training loop in-process: run files, experiments, resume, non-finite values, W&B.

Data: the real files when MIXVAE_DATA_DIR is set (as .ci/run does), else tiny generated fixtures.
"""

import json
import math
import os
import subprocess
import time
import warnings
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mixvae.data import load_dataset
from mixvae.data.fixtures import write_fixture_root
from mixvae.models import MixtureVAE
from mixvae.training import ConfigError, NonFiniteError, Trainer, train
from mixvae.training.metrics import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "model.hidden=[16]", "model.latent_dim=2",
    "train.epochs=2", "train.batch_size=32", "train.max_batches=4", "train.log_every=2",
    "eval.valid_samples=4", "eval.iwae_samples=10", "eval.chunk=4", "eval.batch_size=50", "eval.max_batches=2",
    "logger=none", "progress=false", "dataset.download=false",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    if os.environ.get("MIXVAE_DATA_DIR"):
        return str(Path(os.environ["MIXVAE_DATA_DIR"]).resolve())
    return str(write_fixture_root(tmp_path_factory.mktemp("data"), n_train=300, n_test=100))


@pytest.fixture(scope="module")
def _dataset_cache():
    return {}


@pytest.fixture(autouse=True)
def load_each_dataset_once(monkeypatch, _dataset_cache):
    """The real MNIST takes a second to read; the runs here never modify a Dataset, so they can share it."""
    from mixvae.training import loop

    def cached(name, **kwargs):
        key = (name, *sorted((k, str(v)) for k, v in kwargs.items()))
        if key not in _dataset_cache:
            _dataset_cache[key] = load_dataset(name, **kwargs)
        return _dataset_cache[key]

    monkeypatch.setattr(loop, "load_dataset", cached)


@pytest.fixture
def config(data_root):
    def make(*overrides):
        with initialize_config_dir(str(CONFIGS), version_base="1.3"):
            return compose("config", [*TINY, f"dataset.root={data_root}", *overrides])
    return make


def without_times(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def test_run_writes_metrics_summary_and_resolved_config(config, tmp_path):
    cfg = config()
    summary = train(cfg, tmp_path)
    records = read_metrics(tmp_path)
    keys = set().union(*records)
    assert {"train/objective", "train/grad_norm", "valid/elbo", "valid/nll_iwae4", "time/epoch_s",
            "test/elbo", "test/nll_iwae10", "test/active_units"} <= keys
    assert all("/" in k for k in keys - {"step", "epoch"})
    assert not any("surrogate" in k or "loss" in k for k in keys)
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and records[-1]["step"] == 2 * 4
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "completed" and on_disk["epochs"] == 2 and on_disk["steps"] == 8
    assert {"metrics", "wall_time_s", "config", "git", "hardware", "data"} <= set(on_disk)
    assert math.isfinite(on_disk["metrics"]["test/nll_iwae10"]) and on_disk["metrics"]["test/nll_iwae10"] > 0
    assert on_disk["config"]["model"]["latent_dim"] == 2
    assert OmegaConf.load(tmp_path / "config.yaml") == OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_smoke_runs(config, tmp_path, name):
    # schedule=constant: the staged IWAE schedule (the IWAE-style experiments' own) requires its full length
    summary = train(config(f"+experiment={name}", "train.epochs=1", "schedule=constant"), tmp_path)
    assert summary["status"] == "completed" and math.isfinite(summary["metrics"]["test/elbo"])


ESTIMATORS = CONFIGS / "estimator" if (CONFIGS / "estimator").is_dir() else CONFIGS.parent / "mixvae/configs/estimator"


@pytest.mark.parametrize("estimator", sorted(p.stem for p in ESTIMATORS.glob("*.yaml")))
def test_every_estimator_trains_the_vae(config, tmp_path, estimator):
    cfg = config(f"estimator={estimator}", "train.objective=iwae", "train.num_samples=2", "train.epochs=1",
                 "eval.every=0")
    est = hydra.utils.instantiate(cfg.estimator, context_dim=784)
    model = hydra.utils.instantiate(cfg.model, x_dim=784, train_mean=torch.full((784,), 0.3))
    if not est.fits(model.posterior(torch.zeros(1, 784))) or "iwae" not in est.objectives:
        pytest.skip(f"{estimator} does not fit the mixture VAE's posterior or objective (tests/test_discrete.py)")
    summary = train(cfg, tmp_path)
    assert math.isfinite(summary["metrics"]["test/elbo"])
    assert all(math.isfinite(r["train/objective"]) for r in read_metrics(tmp_path) if "train/objective" in r)


def test_k1_run_is_a_gaussian_vae(config, tmp_path):
    summary = train(config("model=gaussian_mlp", "train.epochs=1"), tmp_path)
    assert summary["config"]["model"]["num_components"] == 1 and summary["status"] == "completed"


def test_stopped_and_resumed_run_equals_uninterrupted(config, tmp_path):
    overrides = ["train.epochs=3", "estimator=score_function", "estimator.baseline=mean"]  # a stateful estimator
    train(config(*overrides), tmp_path / "straight")
    stopped = train(config(*overrides, "train.stop_after=1"), tmp_path / "resumed")
    assert stopped["status"] == "stopped" and not (tmp_path / "resumed" / "summary.json").exists()
    train(config(*overrides), tmp_path / "resumed")
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert without_times(a) == without_times(b)


def test_run_killed_mid_epoch_resumes_exactly(config, tmp_path, monkeypatch):
    """A crash between checkpoints: the records logged after the checkpoint are dropped and redone."""
    overrides = ["train.epochs=2", "train.log_every=1"]
    train(config(*overrides), tmp_path / "straight")

    calls = {"n": 0}
    forward = MixtureVAE.forward

    def dies_at_step_6(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, after its first records were written
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MixtureVAE, "forward", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(config(*overrides), tmp_path / "resumed")
    assert max(r["step"] for r in read_metrics(tmp_path / "resumed")) == 5
    monkeypatch.setattr(MixtureVAE, "forward", forward)
    train(config(*overrides), tmp_path / "resumed")
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert without_times(a) == without_times(b)


def test_rerunning_a_completed_run_does_nothing(config, tmp_path):
    first = train(config(), tmp_path)
    size = (tmp_path / "metrics.jsonl").stat().st_size
    again = train(config(), tmp_path)
    assert again == json.loads(json.dumps(first))
    assert (tmp_path / "metrics.jsonl").stat().st_size == size


def test_resume_false_starts_over_and_resume_true_needs_a_checkpoint(config, tmp_path):
    train(config(), tmp_path / "a")
    train(config("resume=false"), tmp_path / "a")
    train(config(), tmp_path / "b")
    assert without_times(read_metrics(tmp_path / "a")) == without_times(read_metrics(tmp_path / "b"))
    with pytest.raises(ConfigError, match="resume=true"):
        train(config("resume=true"), tmp_path / "empty")


def _poison(monkeypatch, at_call, make_bad):
    calls = {"n": 0}
    forward = MixtureVAE.forward

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_call:
            out.surrogate = make_bad(self, out.surrogate)
        return out

    monkeypatch.setattr(MixtureVAE, "forward", poisoned)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(config, tmp_path, monkeypatch):
    _poison(monkeypatch, 7, lambda model, s: s * float("nan"))  # step 7 = epoch 2 (4 steps per epoch)
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 7 \(epoch 2\)") as err:
        train(config(), tmp_path)
    assert "checkpoint" in str(err.value) and "\n" not in str(err.value)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["state"]["epoch"] == 1 and saved["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_nan_gradient_with_finite_loss_is_caught(config, tmp_path, monkeypatch):
    def finite_value_nan_gradient(model, s):
        w = model.decoder.out.bias
        return s + torch.sqrt(0.0 * w.sum())  # value 0, d/dw = inf * 0 = nan

    _poison(monkeypatch, 2, finite_value_nan_gradient)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm \(nan\) at step 2 \(epoch 1\)"):
        train(config(), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_early_stopping_when_valid_elbo_stops_improving(config, tmp_path):
    summary = train(config("optim.lr=0", "eval.patience=1", "train.epochs=5"), tmp_path)
    assert summary["stopped_early"] and summary["epochs"] == 2 and summary["best_epoch"] == 1


def test_config_errors_are_one_line(config, tmp_path):
    with pytest.raises(ConfigError, match=r"^model.num_components must be an integer >= 1"):
        Trainer(config("model.num_components=0"), tmp_path)
    with pytest.raises(ConfigError, match=r"needs num_samples >= 2.*train.num_samples=1"):
        Trainer(config("estimator=vimco", "train.objective=iwae", "train.num_samples=1"), tmp_path)
    with pytest.raises(ConfigError, match="activation"):
        Trainer(config("model.activation=nope"), tmp_path)
    with pytest.raises(ConfigError, match=r"^graves_backend must be one of auto, native, compile, eager, triton"):
        Trainer(config("graves_backend=tpu"), tmp_path)


OUT_OF_RANGE = [
    ("train.grad_clip=-1", r"^train.grad_clip must be a number > 0 or null .*got -1$"),
    ("train.grad_clip=0", r"^train.grad_clip must be a number > 0 or null"),
    ("train.max_batches=0", r"^train.max_batches must be an integer >= 1 or null"),
    ("train.max_batches=-3", r"^train.max_batches must be an integer >= 1 or null"),
    ("train.stop_after=0", r"^train.stop_after must be an integer >= 1 or null"),
    ("eval.every=-1", r"^eval.every must be an integer >= 0"),
    ("eval.patience=0", r"^eval.patience must be an integer >= 1 or null"),
    ("eval.max_batches=0", r"^eval.max_batches must be an integer >= 1 or null"),
    ("dataset.valid_size=-5", r"^dataset.valid_size must be an integer >= 0 or null"),
    ("dataset.valid_size=100000", r"^dataset.valid_size: .*leaves no training images.*smaller dataset.valid_size"),
    ("optim.lr=abc", r"^optim.lr must be a number >= 0, got 'abc'$"),
    ("optim.lr=-0.1", r"^optim.lr must be a number >= 0"),
    ("optim.betas=[0.9,1.5]", r"^optim.betas\[1\] must be a number in \[0, 1\)"),
    ("optim.eps=-1", r"^optim.eps must be a number >= 0"),
    ("seed=-1", r"^seed must be an integer in \[0, 4294967296\)"),
    ("threads=0", r"^threads must be an integer >= 1 or null"),
    ("model.hidden=[16,0]", r"^model.hidden\[1\] must be an integer >= 1"),
    ("model.min_scale=0", r"^model.min_scale must be a number > 0"),
]


@pytest.mark.parametrize("override,message", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_values_are_one_line_config_errors(config, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        Trainer(config(override), tmp_path)
    assert "\n" not in str(err.value)


def test_bad_option_values_and_keys_name_the_key(config, tmp_path):
    with pytest.raises(ConfigError, match=r"^estimator.temperature must be a number \(default 1.0\), got 'abc'$"):
        Trainer(config("estimator=gumbel_softmax", "estimator.temperature=abc"), tmp_path)
    with pytest.raises(ConfigError, match=r"^estimator.nonsense is not an option of .*; its options: .*temperature"):
        Trainer(config("estimator=gumbel_softmax", "+estimator.nonsense=1"), tmp_path)
    with pytest.raises(ConfigError, match=r"^model.encoder_top_linear must be true or false, got 'yes'"):
        Trainer(config("model.encoder_top_linear=yes"), tmp_path)


def test_graves_backend_key_selects_the_backend_for_the_run_only(config, tmp_path, monkeypatch):
    """graves_backend=eager runs the run's Graves backward passes on eager and says so in summary.json, and
    leaves the process default as it was (a scope around the run, not a global the loop sets)."""
    from mixvae.distributions import graves_transform as gt

    used, vjp = [], gt.graves_vjp

    def spy(*args, **kwargs):
        used.append(args[6] if len(args) > 6 else kwargs.get("backend"))
        return vjp(*args, **kwargs)

    monkeypatch.setattr(gt, "graves_vjp", spy)
    before = gt.get_backend()
    summary = train(config("graves_backend=eager"), tmp_path)
    assert math.isfinite(summary["metrics"]["test/elbo"])
    assert used and set(used) == {"eager"}, used
    assert summary["hardware"]["graves_backend"].startswith("eager")
    assert gt.get_backend() == before  # nothing to restore
    used.clear()
    train(config(), tmp_path / "default")
    assert used and set(used) == {before}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_default"))  # must not be used: dir = run dir


def test_wandb_offline_run_dir_holds_the_logged_metrics(config, tmp_path, wandb_env):
    train(config("logger=wandb", "logger.tags=[test]"), tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    names = [b"train/objective", b"valid/elbo", b"test/elbo", b"test/nll_iwae10"]
    deadline = time.monotonic() + 20
    while True:  # wandb-core writes the records asynchronously, shortly after finish()
        data = next(runs[0].glob("run-*.wandb")).read_bytes()
        if all(name in data for name in names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for name in names:
        assert name in data, name
    assert not (tmp_path / "wandb_default").exists()


def test_wandb_failure_warns_and_training_continues(config, tmp_path, wandb_env, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(config("logger=wandb"), tmp_path)
    assert summary["status"] == "completed"
    assert any("no W&B today" in str(w.message) for w in caught)


def test_wandb_online_without_network_logs_offline(config, tmp_path, wandb_env, monkeypatch):
    """logger.mode=online with no network: a short check, one warning, and an offline run to sync later."""
    import wandb

    from mixvae.training import wandb_run

    monkeypatch.setattr(wandb_run, "reachable", lambda url, timeout=None: False, raising=False)
    init, modes = wandb.init, []

    def offline_machine(*args, **kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":  # what wandb does here: wait ~90 s, then train without a record
            raise RuntimeError("no network")
        return init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", offline_machine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(config("logger=wandb", "logger.mode=online"), tmp_path / "run")
    assert summary["status"] == "completed" and modes == ["offline"]
    assert [str(w.message) for w in caught if "logging offline" in str(w.message)]
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_summary_names_no_machine_folders(config, tmp_path, monkeypatch, data_root):
    """Run files are committed to results/: the run dir is relative to where train.py ran and the data mirror is
    named by $MIXVAE_DATA_DIR."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXVAE_DATA_DIR", str(data_root))
    summary = train(config(), tmp_path / "run")  # an absolute run dir below the working directory
    assert summary["run_dir"] == "run"
    assert str(data_root) not in summary["data"]["source"] and "$MIXVAE_DATA_DIR" in summary["data"]["source"]


def test_a_finished_run_asked_for_another_test_is_tested_again(config, tmp_path):
    """Rerunning a completed run with other test settings (here the whole fixture test split instead of its
    first batch) tests the best weights again: a new summary and one test record, training records untouched;
    rerunning with the same settings again is a no-op."""
    first = train(config("eval.max_batches=1"), tmp_path)
    before = read_metrics(tmp_path)
    again = train(config("eval.max_batches=null"), tmp_path)
    after = read_metrics(tmp_path)
    tests = [r for r in after if "test/elbo" in r]
    assert len(tests) == 1 and tests[0]["test/elbo"] == again["metrics"]["test/elbo"]
    assert again["metrics"]["test/elbo"] != first["metrics"]["test/elbo"]
    assert again["config"]["eval"]["max_batches"] is None
    assert [r for r in after if "test/elbo" not in r] == [r for r in before if "test/elbo" not in r]
    assert again["epochs"] == first["epochs"] and again["steps"] == first["steps"]
    mtime = (tmp_path / "summary.json").stat().st_mtime_ns
    assert train(config("eval.max_batches=null"), tmp_path)["metrics"] == again["metrics"]
    assert (tmp_path / "summary.json").stat().st_mtime_ns == mtime


def test_a_resumed_run_keeps_its_total_wall_time_and_every_revision(config, tmp_path, monkeypatch):
    """summary.json of a run trained over several invocations: wall_time_s adds them up (the last alone is
    invocation_wall_time_s), and git_history names the code of each one with the epoch it started from."""
    from mixvae.training import loop

    overrides = ["train.epochs=2"]
    monkeypatch.setattr(loop, "git_revision", lambda: {"commit": "a" * 40, "dirty": False})
    train(config(*overrides, "train.stop_after=1"), tmp_path)
    first = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["state"]["wall_time_s"]
    time.sleep(0.2)  # time between invocations is not the run's
    monkeypatch.setattr(loop, "git_revision", lambda: {"commit": "b" * 40, "dirty": True})
    summary = train(config(*overrides), tmp_path)
    assert 0 < summary["invocation_wall_time_s"] < summary["wall_time_s"]
    assert summary["wall_time_s"] == pytest.approx(first + summary["invocation_wall_time_s"], abs=0.05)
    assert summary["git"] == {"commit": "b" * 40, "dirty": True}
    assert summary["git_history"] == [{"commit": "a" * 40, "dirty": False, "from_epoch": 0},
                                      {"commit": "b" * 40, "dirty": True, "from_epoch": 1}]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["git_history"] == summary["git_history"]


def test_git_revision_dirty_counts_code_not_results(tmp_path):
    """summary.json's `dirty` says whether the code or configs differed from the commit; collected run files and
    rebuilt tables under results/ (which a driver rewrites while other runs start) and Markdown prose do not
    make a run dirty."""
    from mixvae.training.runtime import git_revision

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "results" / "table.md").write_text("old\n")
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    assert git_revision(tmp_path / "pkg")["dirty"] is False
    (tmp_path / "results" / "table.md").write_text("new\n")
    assert git_revision(tmp_path / "pkg")["dirty"] is False
    (tmp_path / "README.md").write_text("prose\n")  # tracked Markdown, at the top and below it
    (tmp_path / "pkg" / "notes.md").write_text("prose\n")
    git("add", "README.md", "pkg/notes.md")
    git("commit", "-qm", "docs")
    (tmp_path / "README.md").write_text("more prose\n")
    (tmp_path / "pkg" / "notes.md").write_text("more prose\n")
    assert git_revision(tmp_path / "pkg")["dirty"] is False
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert git_revision(tmp_path / "pkg")["dirty"] is True  # the twin: a code change still counts
