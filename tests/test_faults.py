"""Faults injected into tiny runs: each stops with one line (or a warning), and resuming afterwards gives the
metrics.jsonl of an uninterrupted run. Resume with changed settings: applied where meaningful, else refused."""
# ruff: noqa: F811  (the tiny-run fixtures of test_train.py are imported, then named as arguments)

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_train import (  # noqa: F401
    _dataset_cache,
    _poison,
    config,
    data_root,
    load_each_dataset_once,
    without_times,
)

from mixvae.models import MixtureVAE
from mixvae.training import ConfigError, NonFiniteError, lock, train
from mixvae.training import checkpoint as ckpt
from mixvae.training.errors import CheckpointError, RunBusyError, RunFilesError
from mixvae.training.metrics import MetricsFile, read_metrics

OVERRIDES = ["train.epochs=3", "schedule=cosine"]


@pytest.fixture
def straight(config, tmp_path):
    """The metrics of an uninterrupted 3-epoch run."""
    train(config(*OVERRIDES), tmp_path / "straight")
    return without_times(read_metrics(tmp_path / "straight"))


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def saved_lrs(run_dir):
    groups = torch.load(run_dir / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    return [(g["lr"], g["initial_lr"]) for g in groups]


# ---- resume with changed settings ---------------------------------------------------------------------------


def test_resume_applies_a_changed_learning_rate(config, tmp_path, caplog):
    train(config("train.stop_after=1"), tmp_path)
    with caplog.at_level("WARNING"):
        train(config("optim.lr=1e-4"), tmp_path)
    assert saved_lrs(tmp_path) == [(1e-4, 1e-4)]
    assert [r["train/lr"] for r in read_metrics(tmp_path) if "train/lr" in r] == [1e-3, 1e-4]
    assert any("optim.lr=0.0001 (was 0.001)" in r.message for r in caplog.records)


def test_resume_applies_a_changed_lr_to_the_schedule(config, tmp_path):
    train(config("schedule=cosine", "train.epochs=4", "train.stop_after=1"), tmp_path)
    train(config("schedule=cosine", "train.epochs=4", "optim.lr=1e-4", "optim.eps=1e-6", "train.stop_after=2"),
          tmp_path)
    lr, base = saved_lrs(tmp_path)[0]
    assert base == 1e-4 and lr == pytest.approx(1e-4 * 0.5)  # epoch 3 of 4: factor cos^2(pi/4)
    groups = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    assert groups[0]["eps"] == 1e-6


@pytest.mark.parametrize("change", ["model.latent_dim=3", "seed=1", "train.batch_size=16",
                                    "train.objective=iwae", "estimator=score_function"])
def test_resume_refuses_a_change_that_defines_the_run(config, tmp_path, change):
    train(config("train.stop_after=1"), tmp_path)
    with pytest.raises(ConfigError) as err:
        train(config(change), tmp_path)
    message = one_line(err)
    key = change.split("=")[0].replace("estimator", "estimator._target_")
    assert f"cannot resume {tmp_path / 'checkpoint.pt'}" in message and key in message and "resume=false" in message
    train(config(change, "resume=false", "train.epochs=1"), tmp_path)  # the advice works


def test_run_differences_ignores_only_machine_local_keys(config):
    """Two configs describe the same committed run when they differ only in where and how it ran (threads, data
    folder, logger, checkpoints); a key that changes the numbers (lr, epochs, test samples, seed) is a
    difference, and so is a key only one has, except the defaults of keys added since (dataset.verify)."""
    from omegaconf import OmegaConf

    from mixvae.training import run_differences

    def resolved(*overrides):
        return OmegaConf.to_container(config(*overrides), resolve=True)

    base = resolved()
    assert run_differences(resolved("threads=2", "dataset.root=/elsewhere", "logger=none", "progress=true"),
                           base) == []
    for change, key in [("optim.lr=1e-4", "optim.lr"), ("train.epochs=7", "train.epochs"),
                        ("eval.iwae_samples=7", "eval.iwae_samples"), ("seed=3", "seed")]:
        assert run_differences(resolved(change), base) == [key], change
    old = resolved()
    old["dataset"].pop("verify")  # written before dataset.verify existed: counts as its default (True)
    assert run_differences(base, old) == []
    old["model"].pop("latent_dim")
    assert run_differences(base, old) == ["model.latent_dim"]


def test_weights_that_do_not_fit_are_one_line(config, tmp_path):
    """The config check comes first; weights that still do not fit (a tampered file) are one line too."""
    train(config("model.latent_dim=3", "train.stop_after=1"), tmp_path / "other")
    train(config("train.stop_after=1"), tmp_path / "run")
    saved = torch.load(tmp_path / "other" / "checkpoint.pt", weights_only=False)
    saved["config"] = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["config"]
    torch.save(saved, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        train(config(), tmp_path / "run")
    message = one_line(err)
    assert "does not fit the configured model" in message and "resume=false" in message


def test_an_old_checkpoint_resumes_exactly_and_its_absent_keys_are_no_change(config, tmp_path, caplog):
    """A checkpoint written before schedules and dataset.verify existed (no scheduler state, neither key in its
    config) resumes bit for bit at the constant lr, and the keys it lacks do not count as changed."""
    train(config("train.epochs=3"), tmp_path / "straight")
    run = tmp_path / "run"
    train(config("train.epochs=3", "train.stop_after=1"), run)
    path = run / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)
    del saved["scheduler"], saved["config"]["schedule"], saved["config"]["dataset"]["verify"]  # as written before
    for group in saved["optimizer"]["param_groups"]:
        del group["initial_lr"]
    torch.save(saved, path)
    with caplog.at_level("INFO"):
        train(config("train.epochs=3"), run)
    assert not [r for r in caplog.records if "schedule" in r.message or "verify" in r.message]
    old = [{k: v for k, v in r.items() if k != "train/lr"} for r in without_times(read_metrics(tmp_path / "straight"))]
    new = [{k: v for k, v in r.items() if k != "train/lr"} for r in without_times(read_metrics(run))]
    assert new == old


def test_nan_advice_works_on_resume(config, tmp_path, monkeypatch):
    """The NaN message says to rerun with a lower optim.lr: that rerun continues with it."""
    forward = MixtureVAE.forward
    _poison(monkeypatch, 7, lambda model, s: s * float("nan"))  # step 7 = epoch 2
    with pytest.raises(NonFiniteError, match=r"rerun the same command with a lower optim.lr"):
        train(config("train.epochs=3"), tmp_path)
    monkeypatch.setattr(MixtureVAE, "forward", forward)
    train(config("train.epochs=3", "optim.lr=1e-4"), tmp_path)
    assert [r["train/lr"] for r in read_metrics(tmp_path) if "train/lr" in r] == [1e-3, 1e-4, 1e-4]
    assert saved_lrs(tmp_path) == [(1e-4, 1e-4)]


def test_nan_at_a_chosen_step_then_resume_equals_uninterrupted(config, tmp_path, monkeypatch, straight):
    forward = MixtureVAE.forward
    _poison(monkeypatch, 10, lambda model, s: s * float("inf"))  # step 10 = epoch 3
    with pytest.raises(NonFiniteError, match=r"at step 10 \(epoch 3\)"):
        train(config(*OVERRIDES), tmp_path / "run")
    monkeypatch.setattr(MixtureVAE, "forward", forward)
    train(config(*OVERRIDES), tmp_path / "run")
    assert without_times(read_metrics(tmp_path / "run")) == straight


# ---- metrics.jsonl --------------------------------------------------------------------------------------------


def test_a_shortened_metrics_file_is_never_padded_with_nul_bytes(config, tmp_path):
    train(config("train.stop_after=1"), tmp_path)
    path = tmp_path / "metrics.jsonl"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])  # lost records, the last one cut in the middle
    with pytest.warns(UserWarning, match=r"bytes of its records \(from before the checkpoint\) are lost"):
        train(config(), tmp_path)
    data = path.read_bytes()
    assert b"\0" not in data
    [json.loads(line) for line in data.decode().splitlines()]  # whole records only


def test_truncate_only_shortens(tmp_path):
    metrics = MetricsFile(tmp_path)
    metrics.write({"step": 1})
    metrics.write({"step": 2})
    size = metrics.size()
    with pytest.warns(UserWarning, match="100 bytes of its records"):
        metrics.truncate(size + 100)
    assert metrics.size() == size
    metrics.truncate(size - 1)  # cuts into the last record: a resume to an earlier point drops it
    assert metrics.size() == size - 1


# ---- damaged checkpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_without_a_previous_one_is_one_line(config, tmp_path, straight, damage):
    run = tmp_path / "run"
    train(config(*OVERRIDES, "train.stop_after=1"), run)
    path = run / "checkpoint.pt"
    assert not (run / ckpt.PREVIOUS).exists()
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x80not a checkpoint", "empty": b""}[damage])
    with pytest.raises(CheckpointError) as err:
        train(config(*OVERRIDES), run)
    message = one_line(err)
    assert f"{path} is damaged" in message and "resume=false" in message
    train(config(*OVERRIDES, "resume=false"), run)
    assert without_times(read_metrics(run)) == straight


def test_damaged_checkpoint_falls_back_to_the_previous_one(config, tmp_path, straight):
    run = tmp_path / "run"
    train(config(*OVERRIDES, "train.stop_after=2"), run)
    assert torch.load(run / ckpt.PREVIOUS, weights_only=False)["state"]["epoch"] == 1
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"is damaged .*resuming from the previous checkpoint .* \(epoch 1\)"):
        train(config(*OVERRIDES), run)
    assert without_times(read_metrics(run)) == straight


def test_damaged_checkpoint_of_a_completed_run(config, tmp_path, straight):
    run = tmp_path / "run"
    first = train(config(*OVERRIDES), run)
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="is damaged"):
        again = train(config(*OVERRIDES), run)  # redoes the last epoch from checkpoint.prev.pt
    assert again["metrics"]["test/elbo"] == first["metrics"]["test/elbo"]
    assert without_times(read_metrics(run)) == straight


def test_kill_between_the_renames_resumes_from_the_previous_checkpoint(config, tmp_path, straight):
    run = tmp_path / "run"
    train(config(*OVERRIDES, "train.stop_after=2"), run)
    (run / "checkpoint.pt").unlink()  # os.replace(checkpoint, prev) done, os.replace(tmp, checkpoint) not
    train(config(*OVERRIDES), run)
    assert without_times(read_metrics(run)) == straight


# ---- a full disk -----------------------------------------------------------------------------------------------


def test_full_disk_while_writing_a_checkpoint(config, tmp_path, monkeypatch, straight):
    """ENOSPC injected into the second write of checkpoint.pt: one line, no partial file, the old one kept."""
    run = tmp_path / "run"
    real_open = open
    writes = {"n": 0}

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data[:100]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def filling_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("checkpoint.pt.tmp"):
            writes["n"] += 1
            if writes["n"] == 2:
                return FullDisk(fh)
        return fh

    monkeypatch.setattr(ckpt, "open", filling_open, raising=False)
    with pytest.raises(CheckpointError) as err:
        train(config(*OVERRIDES), run)
    message = one_line(err)
    assert "no space left on the device" in message and "the previous" in message and "partial file was removed" in message
    assert not list(run.glob("*.tmp"))
    assert torch.load(run / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    monkeypatch.delattr(ckpt, "open")
    train(config(*OVERRIDES), run)
    assert without_times(read_metrics(run)) == straight


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def test_full_disk_on_a_real_small_tmpfs(config, tmp_path, straight):
    """The same on a real file system that fills up (where a tmpfs can be mounted; skipped otherwise)."""
    run = tmp_path / "run"
    train(config(*OVERRIDES, "train.stop_after=1"), run)
    pages = sum(-(-f.stat().st_size // 4096) for f in run.rglob("*") if f.is_file())
    small = tmp_path / "small"
    if not _mount_tmpfs(small, (pages + 3) * 4096):  # room for the files and a few pages, not a checkpoint
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copytree(run, small / "run")
        with pytest.raises((CheckpointError, RunFilesError)) as err:
            train(config(*OVERRIDES), small / "run")
        assert "no space left on the device" in one_line(err)
        assert not list((small / "run").glob("*.tmp"))
        shutil.rmtree(run)
        shutil.copytree(small / "run", run)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)  # lazy: detached even while a file is open
    train(config(*OVERRIDES), run)
    assert without_times(read_metrics(run)) == straight


# ---- a read-only run directory ---------------------------------------------------------------------------------


def test_read_only_run_dir_is_one_line(config, tmp_path, straight):
    run = tmp_path / "run"
    train(config(*OVERRIDES, "train.stop_after=1"), run)
    mode = run.stat().st_mode
    run.chmod(0o555)  # also read-only to root here: the check looks at the permission bits
    try:
        with pytest.raises(RunFilesError) as err:
            train(config(*OVERRIDES), run)
        assert f"the run directory {run} is not writable" in one_line(err)
    finally:
        run.chmod(mode)
    train(config(*OVERRIDES), run)
    assert without_times(read_metrics(run)) == straight


def test_permission_error_on_the_metrics_file_is_one_line(config, tmp_path, monkeypatch, straight):
    run = tmp_path / "run"
    write = MetricsFile.write
    calls = {"n": 0}

    def denied(self, record):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.path))
        write(self, record)

    monkeypatch.setattr(MetricsFile, "write", denied)
    with pytest.raises(RunFilesError) as err:
        train(config(*OVERRIDES), run)
    message = one_line(err)
    assert f"cannot write {run / 'metrics.jsonl'}" in message and "hydra.run.dir" in message
    monkeypatch.setattr(MetricsFile, "write", write)
    train(config(*OVERRIDES), run)
    assert without_times(read_metrics(run)) == straight


# ---- two processes in one run directory ------------------------------------------------------------------------

_HOLD = ("import sys, time\nfrom mixvae.training.lock import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")


@pytest.fixture
def holder():
    """Start another live process that holds a run directory's lock, as a first invocation still running would."""
    procs = []

    def start(run):
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _files(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != lock.LOCK}


def _refused(config, run, pid):
    """A second invocation stops with one line naming the holder, and leaves every run file as it was."""
    before = _files(run)
    with pytest.raises(RunBusyError) as err:
        train(config(*OVERRIDES), run)
    message = one_line(err)
    assert f"pid {pid} " in message and f"kill {pid}" in message and "hydra.run.dir" in message
    assert _files(run) == before


def test_a_second_process_in_a_run_dir_is_refused_and_a_killed_holder_frees_it(config, tmp_path, straight, holder):
    run = tmp_path / "run"
    train(config(*OVERRIDES, "train.stop_after=1"), run)
    proc = holder(run)
    _refused(config, run, proc.pid)
    proc.kill()  # SIGKILL: the operating system drops the lock with the process
    proc.wait()
    train(config(*OVERRIDES), run)
    assert without_times(read_metrics(run)) == straight
    assert f"pid {os.getpid()} " in (run / lock.LOCK).read_text()  # the last holder, for a later message


def test_twin_without_the_lock_a_second_process_is_not_refused(config, tmp_path, holder, monkeypatch):
    """The broken twin: a lock that never refuses lets the second invocation resume and rewrite the run's files
    while the first still works in them, and the check above fails on it."""
    run = tmp_path / "run"
    train(config(*OVERRIDES, "train.stop_after=1"), run)
    proc = holder(run)
    monkeypatch.setattr(lock, "_try_lock", lambda fh: True)
    with pytest.raises(pytest.fail.Exception):
        _refused(config, run, proc.pid)


# ---- devices ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "tpu"], ids=["gpu", "gpu7", "tpu"])  # no "cuda" mark
def test_unavailable_device_is_one_line_before_the_data_loads(config, tmp_path, monkeypatch, device):
    if device.startswith("cuda") and torch.cuda.device_count() > int(device.partition(":")[2] or 0):
        pytest.skip("that CUDA device exists here")
    from mixvae.training import loop

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the device was checked")

    monkeypatch.setattr(loop, "load_dataset", no_data)
    with pytest.raises(ConfigError) as err:
        train(config(f"device={device}"), tmp_path)
    assert one_line(err).startswith(f"device={device} ")
