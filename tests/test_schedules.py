"""Learning-rate schedules (configs/schedule/): their factors, the lr a run logs, and exact resumes."""
# ruff: noqa: F811  (the tiny-run fixtures of test_train.py are imported, then named as arguments)

import math

import pytest
import torch
from test_train import (  # noqa: F401
    _dataset_cache,
    config,
    data_root,
    load_each_dataset_once,
    without_times,
)

from mixvae.models import MixtureVAE
from mixvae.training import ConfigError, Trainer, train
from mixvae.training.metrics import read_metrics
from mixvae.training.schedules import IWAE, Constant, Cosine


def epoch_lrs(run_dir):
    return [r["train/lr"] for r in read_metrics(run_dir) if "train/lr" in r]


def test_iwae_schedule_stages_last_3_to_the_i_epochs():
    schedule = IWAE(epochs=3280)
    factors = [schedule(e) for e in range(3280)]
    ends = [sum(3**i for i in range(n)) for n in range(1, 9)]  # 1, 4, 13, 40, 121, 364, 1093, 3280
    starts = [0, *ends[:-1]]
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        assert set(factors[start:end]) == {10.0 ** (-i / 7)}, i
    assert factors[0] == 1.0 and math.isclose(factors[-1], 10.0**-1)
    assert IWAE.total_epochs(5) == 121 and IWAE.total_epochs(6) == 364
    IWAE(epochs=121, stages=5)
    assert [IWAE(epochs=2, stages=5)(e) for e in range(2)] == [1.0, 10 ** (-1 / 7)]  # a run cut short
    with pytest.raises(ConfigError, match=r"schedule.stages=5 lasts 121 epochs but train.epochs=200; set "
                                          r"train.epochs=121"):
        IWAE(epochs=200, stages=5)
    with pytest.raises(ConfigError, match=r"^schedule.stages must be an integer >= 1"):
        IWAE(epochs=1, stages=0)


def test_cosine_schedule_warms_up_then_decays_to_min_factor():
    schedule = Cosine(epochs=10, warmup_epochs=2, min_factor=0.1)
    factors = [schedule(e) for e in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert math.isclose(factors[-1], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert [Cosine(epochs=4)(e) for e in range(4)][0] == 1.0
    with pytest.raises(ConfigError, match="schedule.warmup_epochs must be < train.epochs=4"):
        Cosine(epochs=4, warmup_epochs=4)
    with pytest.raises(ConfigError, match="schedule.min_factor must be a number in"):
        Cosine(epochs=4, min_factor=2)
    assert Constant(epochs=3)(2) == 1.0


def test_constant_schedule_runs_at_optim_lr_exactly(config, tmp_path):
    train(config("optim.lr=3e-4", "train.epochs=3"), tmp_path)
    assert epoch_lrs(tmp_path) == [3e-4] * 3


def test_iwae_schedule_sets_each_epochs_lr(config, tmp_path):
    train(config("schedule=iwae", "schedule.stages=2", "train.epochs=4"), tmp_path)
    assert epoch_lrs(tmp_path) == [1e-3, *[1e-3 * 10 ** (-1 / 7)] * 3]
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["scheduler"]["last_epoch"] == 4


def test_schedule_config_errors_name_the_key(config, tmp_path):
    with pytest.raises(ConfigError, match=r"^schedule=iwae with schedule.stages=8 lasts 3280 epochs"):
        Trainer(config("schedule=iwae", "train.epochs=4000"), tmp_path)
    with pytest.raises(ConfigError, match=r"^schedule.warmup_epochs must be an integer >= 0, got -1"):
        Trainer(config("schedule=cosine", "schedule.warmup_epochs=-1"), tmp_path)


SCHEDULES = [["schedule=cosine", "schedule.warmup_epochs=1"], ["schedule=iwae", "schedule.stages=2"]]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["cosine", "iwae"])
def test_stopped_and_resumed_run_with_a_schedule_equals_uninterrupted(config, tmp_path, schedule):
    overrides = ["train.epochs=4", *schedule]
    train(config(*overrides), tmp_path / "straight")
    for stop in (1, 2):
        assert train(config(*overrides, f"train.stop_after={stop}"), tmp_path / "resumed")["status"] == "stopped"
    train(config(*overrides), tmp_path / "resumed")
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert without_times(a) == without_times(b)
    assert len(set(epoch_lrs(tmp_path / "resumed"))) > 1


def test_run_with_a_schedule_killed_mid_epoch_resumes_exactly(config, tmp_path, monkeypatch):
    overrides = ["train.epochs=3", "train.log_every=1", "schedule=cosine"]
    train(config(*overrides), tmp_path / "straight")
    calls = {"n": 0}
    forward = MixtureVAE.forward

    def dies_at_step_10(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 3 (4 steps an epoch), after the lr has changed twice
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MixtureVAE, "forward", dies_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        train(config(*overrides), tmp_path / "resumed")
    monkeypatch.setattr(MixtureVAE, "forward", forward)
    train(config(*overrides), tmp_path / "resumed")
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert without_times(a) == without_times(b)
    assert epoch_lrs(tmp_path / "resumed") == pytest.approx([1e-3, 1e-3 * 0.75, 1e-3 * 0.25], rel=1e-12)
