"""train.py as a user runs it: exit codes and one-line errors, a full run, launchers, a real kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixvae.data.fixtures import write_fixture_root

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.hidden=[16]", "model.latent_dim=2", "train.epochs=2", "train.batch_size=32", "train.max_batches=4",
    "train.log_every=2", "eval.valid_samples=4", "eval.iwae_samples=10", "eval.chunk=4", "eval.max_batches=2",
    "dataset.download=false", "progress=false",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    if os.environ.get("MIXVAE_DATA_DIR"):
        return str(Path(os.environ["MIXVAE_DATA_DIR"]).resolve())
    return str(write_fixture_root(tmp_path_factory.mktemp("data"), n_train=300, n_test=100))


def run_train(args, tmp_path, timeout=300, popen=None):
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb_default"), "PYTHONHASHSEED": "0"}
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    if popen:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, **popen)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


BAD_INPUTS = [
    (["dataset=foo"], "unknown dataset 'foo'; available: binarized_mnist, mnist, omniglot"),
    (["estimator=foo"], "unknown estimator 'foo'; available: "),
    (["model=foo"], "unknown model 'foo'"),
    (["-m", "estimator=graves,nope"], "unknown estimator 'nope'"),
    (["model.num_components=0"], "model.num_components must be an integer >= 1"),
    (["model.latent_dim=0"], "model.latent_dim must be an integer >= 1"),
    (["train.num_samples=0"], "train.num_samples must be an integer >= 1"),
    (["estimator=vimco", "train.objective=iwae", "train.num_samples=1"], "vimco' needs num_samples >= 2"),
    (["dataset.root=no_such_dir"], "mnist: missing"),
    (["dataset.root=no_such_dir"], "set MIXVAE_DATA_DIR or dataset.root to a folder"),
    (["graves_backend=tpu"], "graves_backend must be one of auto, native, compile, eager, triton"),
    (["train.grad_clip=-1"], "train.grad_clip must be a number > 0 or null"),
    (["train.max_batches=0"], "train.max_batches must be an integer >= 1 or null"),
    (["eval.every=-1"], "eval.every must be an integer >= 0"),
    (["dataset.valid_size=100000"], "dataset.valid_size: mnist: valid_size=100000 leaves no training images"),
    (["optim.lr=abc"], "optim.lr must be a number >= 0, got 'abc'"),
    (["estimator=gumbel_softmax", "estimator.temperature=abc"], "estimator.temperature must be a number"),
    (["estimator.nonsense=1"], "estimator.nonsense is not a key of estimator 'graves' (its keys: context_dim)"),
    (["+estimator.nonsense=1"], "estimator.nonsense is not an option of mixvae.estimators"),
    (["train.nonsense=1"], "train.nonsense is not a key of train"),
    (["device=tpu"], "device=tpu is not a device torch knows"),
    (["device=cuda:7"], "device=cuda:7 "),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, data_root, args, message):
    root = [] if any(a.startswith("dataset.root") for a in args) else [f"dataset.root={data_root}"]
    res = run_train([*TINY, *root, *args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_read_only_run_dir_is_one_line_and_exit_2(tmp_path, data_root):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)  # no write bit: read-only for the check even when the tests run as root
    try:
        res = run_train([*TINY, f"dataset.root={data_root}", "logger=none", f"hydra.run.dir={parent / 'run'}"],
                        tmp_path)
    finally:
        parent.chmod(0o755)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not writable" in lines[0] and "hydra.run.dir=" in lines[0], res.stderr


def test_cli_run_prints_test_metrics_and_writes_run_dir(tmp_path, data_root):
    run_dir = tmp_path / "run"
    res = run_train([*TINY, f"dataset.root={data_root}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "test/elbo" in res.stdout and "test/nll_iwae10" in res.stdout
    for name in ["metrics.jsonl", "summary.json", "config.yaml", ".hydra/config.yaml", "train.log"]:
        assert (run_dir / name).exists(), name
    assert list((run_dir / "wandb").glob("offline-run-*"))  # W&B is on and offline by default
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    # the same command in the same run dir continues (here: finds the run complete) instead of starting over
    again = run_train([*TINY, f"dataset.root={data_root}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 0 and json.loads((run_dir / "summary.json").read_text()) == summary


def test_submitit_local_multirun_of_two_jobs(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    res = run_train(["-m", "hydra/launcher=submitit_local", "seed=0,1", *TINY, f"dataset.root={data_root}",
                     "train.epochs=1", "logger=none", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["config"]["seed"] for s in summaries] == [0, 1]
    assert all(s["status"] == "completed" for s in summaries)


@pytest.mark.slow
def test_joblib_multirun_of_two_jobs(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    res = run_train(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1", "seed=0,1", *TINY,
                     f"dataset.root={data_root}", "train.epochs=1", "logger=none", f"hydra.sweep.dir={sweep}"],
                    tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for i in (0, 1):
        assert json.loads((sweep / str(i) / "summary.json").read_text())["config"]["seed"] == i


@pytest.mark.slow
def test_killed_process_resumes_to_the_uninterrupted_metrics(tmp_path, data_root):
    """SIGKILL a real run after its first checkpoint, rerun the same command: same metrics as a straight run."""
    args = [*TINY, f"dataset.root={data_root}", "logger=none", "train.epochs=4", "train.max_batches=30",
            "train.batch_size=8", "train.log_every=5", "schedule=cosine", "schedule.warmup_epochs=1"]
    assert run_train([*args, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path).returncode == 0

    run_dir = tmp_path / "killed"
    proc = run_train([*args, f"hydra.run.dir={run_dir}"], tmp_path, popen={"stdout": subprocess.DEVNULL,
                                                                           "stderr": subprocess.DEVNULL})
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    assert run_train([*args, f"hydra.run.dir={run_dir}"], tmp_path).returncode == 0

    def records(d):
        lines = (d / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in lines]

    assert records(run_dir) == records(tmp_path / "straight")
