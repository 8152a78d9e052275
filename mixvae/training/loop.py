"""The training loop: a plain PyTorch loop, with the estimator owning the gradient.

One step, in full:

    q = model.posterior(x)                                    # DiagGaussianMixture, batch [B]
    out = estimator(q, f, num_samples=S, objective=...)       # f(z) = log p(x, z) - log q(z | x)
    loss = -out.surrogate.mean() + out.aux_loss               # the surrogate's gradient is the estimator's
    loss.backward(); optimizer.step()

What is logged is ``out.objective`` (the objective's estimate), never the surrogate. Around the step: seeding,
checkpoints that make a killed run continue bit for bit, validation with early stopping, the final test
evaluation, and the run's files (metrics.jsonl, summary.json, config.yaml) in the run directory.

Resuming: checkpoint.pt also holds the lr scheduler (configs/schedule/, stepped once per epoch) and the config
it was written with; on resume a changed setting is either applied (the optimizer's hyperparameters, the
schedule, gradient clipping), taken as run control (epochs, patience, logging, devices), or refused with one
line (anything that defines the run: data, model, estimator, objective, seed, batch size); see
``Trainer.compare_config``. The previous checkpoint is kept as checkpoint.prev.pt, the fallback when the newest
is damaged.

One process at a time: a run holds an exclusive lock on ``run.lock`` in its directory while it trains or tests
(mixvae/training/lock.py); a second invocation in the same directory stops with one line naming the first's PID.

Speed: a step never waits for the device. The data already lies on it (mixvae/data), the finiteness of the
loss and gradient norm is recorded on the device and read only every ``train.log_every`` steps and at the end of
the epoch (a bad step is still reported by number, and nothing is saved after it), the logged values are read
at log steps only, and Adam runs its fused kernel where torch has one (``optim.fused``; unset means "where
supported"). scripts/bench_train.py measures the step.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mixvae.data import load_dataset
from mixvae.data.download import writable_dir
from mixvae.distributions import graves_transform
from mixvae.training import checkpoint as ckpt
from mixvae.training.errors import CheckpointError, ConfigError, NonFiniteError, RunFilesError
from mixvae.training.evaluate import evaluate
from mixvae.training.lock import RunLock
from mixvae.training.metrics import (
    SUMMARY,
    MetricsFile,
    os_error_message,
    read_summary,
    to_floats,
    write_summary,
)
from mixvae.training.runtime import (
    git_revision,
    hardware,
    portable_path,
    resolve_device,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
)
from mixvae.training.wandb_run import WandbRun

log = logging.getLogger(__name__)
SNAPSHOTS = "snapshots"  # <run dir>/snapshots/epoch<N>.pt: model + estimator at the epochs of checkpoint.keep

# (config key, hint) for the counts that must be integers >= 1
_POSITIVE = {
    "model.num_components": "K = 1 is the Gaussian VAE",
    "model.latent_dim": "the latent dimension D",
    "train.num_samples": "S samples per data point",
    "train.batch_size": "",
    "train.epochs": "",
    "eval.iwae_samples": "5000 for the test log-likelihood of Burda et al. 2016",
    "eval.valid_samples": "",
    "eval.chunk": "samples per forward pass in evaluation",
    "eval.batch_size": "",
    "checkpoint.every": "epochs between checkpoints",
    "train.log_every": "steps between records in metrics.jsonl",
}


# Numeric keys and their ranges: (key, integer, low, low included, high, high included, null allowed, hint)
_RANGES = [
    ("seed", True, 0, True, 2**32, False, False, "seeds NumPy too: 0 <= seed < 2^32"),
    ("eval.seed", True, 0, True, 2**32, False, False, ""),
    ("threads", True, 1, True, None, False, True, "null: torch's default"),
    ("train.grad_clip", False, 0, False, None, False, True, "the max gradient norm; null: no clipping"),
    ("train.max_batches", True, 1, True, None, False, True, "null: every batch"),
    ("train.stop_after", True, 1, True, None, False, True, "null: run to train.epochs"),
    ("eval.every", True, 0, True, None, False, False, "0: never validate"),
    ("eval.patience", True, 1, True, None, False, True, "null: never stop early"),
    ("eval.max_batches", True, 1, True, None, False, True, "null: every batch"),
    ("dataset.valid_size", True, 0, True, None, False, True, "null: the dataset's own split; 0: none"),
    ("optim.lr", False, 0, True, None, False, False, ""),
    ("optim.eps", False, 0, True, None, False, False, ""),
    ("optim.weight_decay", False, 0, True, None, False, False, ""),
    ("optim.momentum", False, 0, True, None, False, False, ""),
    ("model.min_scale", False, 0, False, None, False, True, ""),
    ("model.init_spread", False, 0, True, None, False, True, ""),
]


def _range_text(integer: bool, low, low_in: bool, high, high_in: bool) -> str:
    kind = "an integer" if integer else "a number"
    if high is None:
        return f"{kind} {'>=' if low_in else '>'} {low}"
    return f"{kind} in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def _check_number(key: str, value, integer: bool, low, low_in: bool, high=None, high_in: bool = False,
                  nullable: bool = False, hint: str = "") -> None:
    if value is None and nullable:
        return
    ok = (isinstance(value, int) or (not integer and isinstance(value, float))) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= low if low_in else value > low)
    ok = ok and (high is None or (value <= high if high_in else value < high))
    if not ok:
        text = _range_text(integer, low, low_in, high, high_in) + (" or null" if nullable else "")
        hint = f" ({hint})" if hint else ""
        raise ConfigError(f"{key} must be {text}{hint}, got {value!r}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the key and a fix) for out-of-range values."""
    for key, hint in _POSITIVE.items():
        value = OmegaConf.select(cfg, key)
        if value is None and not key.startswith("model."):
            raise ConfigError(f"{key} is missing; set {key}=<integer >= 1>")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            hint = f" ({hint})" if hint else ""
            raise ConfigError(f"{key} must be an integer >= 1{hint}, got {value!r}; e.g. {key}=1")
    for key, integer, low, low_in, high, high_in, nullable, hint in _RANGES:
        if OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            _check_number(key, OmegaConf.select(cfg, key), integer, low, low_in, high, high_in, nullable, hint)
    keep = OmegaConf.select(cfg, "checkpoint.keep")
    if keep is not None and (not OmegaConf.is_list(keep) and not isinstance(keep, list | tuple)
                             or any(not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in keep)):
        raise ConfigError(f"checkpoint.keep must be a list of epochs >= 1, got {keep!r}; e.g. "
                          "checkpoint.keep=[1,4,13,40,121]")
    betas = OmegaConf.select(cfg, "optim.betas")
    if betas is not None:
        if not OmegaConf.is_list(betas) or len(betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")
        for i, beta in enumerate(betas):
            _check_number(f"optim.betas[{i}]", beta, False, 0, True, 1, False)
    hidden = OmegaConf.select(cfg, "model.hidden")
    if OmegaConf.is_list(hidden):
        for i, width in enumerate(hidden):
            _check_number(f"model.hidden[{i}]", width, True, 1, True, hint="layer widths")
    if cfg.resume not in ("auto", True, False):
        raise ConfigError(f"resume must be auto, true or false, got {cfg.resume!r}")
    backend = cfg.get("graves_backend")
    if backend is not None and backend not in graves_transform.BACKENDS:
        raise ConfigError(f"graves_backend must be one of {', '.join(graves_transform.BACKENDS)} (or null), "
                          f"got {backend!r}")


def _check_arguments(node: DictConfig, key: str, passed: dict) -> None:
    """ConfigError naming ``key.<name>`` for a key the target does not take (listing those it does) or for a
    non-number given where the target's default is a number (``estimator.temperature=abc``)."""
    try:
        params = inspect.signature(hydra.utils.get_object(node._target_)).parameters
    except Exception:  # noqa: BLE001 - an unusual _target_: leave it to instantiate to report
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options = [n for n, p in params.items() if n not in passed and n not in ("self", "params")
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for name in node:
        if str(name).startswith("_"):
            continue
        if name not in params:
            if not takes_any:
                raise ConfigError(f"{key}.{name} is not an option of {node._target_}; its options: "
                                  f"{', '.join(options)}")
            continue
        default, value = params[name].default, node[name]
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{key}.{name} must be a number (default {default}), got {value!r}")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key}.{name} must be true or false, got {value!r}")


def _instantiate(node: DictConfig, key: str, **kwargs):
    """hydra.utils.instantiate, with a bad value or argument in the config reported as one ConfigError line."""
    _check_arguments(node, key, kwargs)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):  # already names its key
            raise cause from e
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{key}: {cause}") from e
        raise


# On resume, each key of the checkpoint's config is compared with the config now. A changed key is
#   run control: how this invocation runs and reports, taken as it is now;
#   applied: the optimizer's hyperparameters, the lr schedule and gradient clipping, set on the restored state
#       and used from the next step on;
#   anything else defines the run (data, model, estimator, objective, seed, batch size, validation samples):
#       resuming with it changed is refused with one line.
# An entry ending in "." covers the keys below it.
_RUN_CONTROL = ("resume", "progress", "device", "threads", "deterministic", "graves_backend", "logger.",
                "dataset.root", "dataset.download", "dataset.verify", "train.epochs", "train.stop_after",
                "train.log_every", "train.max_batches", "eval.every", "eval.patience", "eval.iwae_samples",
                "eval.chunk", "eval.batch_size", "eval.max_batches", "eval.valid_max_batches", "checkpoint.")
_DEFINING = ("optim._target_", "optim.amsgrad", "optim.maximize")  # the optimizer's kind and state layout
_APPLIED = ("optim.", "schedule.", "train.grad_clip")
# Keys added after runs were first checkpointed, with the value that behaves as the code before them did: a
# checkpoint whose config lacks one counts as having this value.
_ADDED = {"schedule._target_": "mixvae.training.schedules.Constant", "dataset.verify": True}


# Keys that say where and how an invocation runs, not what it computes: two configs that differ only in these
# describe the same run (a run committed on one machine is the run a job on another asks for).
_LOCAL = ("resume", "progress", "device", "threads", "deterministic", "graves_backend", "logger.", "dataset.root",
          "dataset.download", "dataset.verify", "checkpoint.")


def _covers(entries: tuple[str, ...], key: str) -> bool:
    return any(key == e or (e.endswith(".") and key.startswith(e)) for e in entries)


def run_differences(now: dict, then: dict) -> list[str]:
    """The keys in which two resolved configs (``config.yaml``'s contents) describe different runs: every key
    that differs or is set in only one, after the defaults of keys added since (``_ADDED``), except the
    machine-local ones (``_LOCAL``: device, threads, logger, data folder, checkpoints). Empty: the same run."""
    now, then = _leaves(now), _leaves(then)
    for key, value in _ADDED.items():
        now.setdefault(key, value)
        then.setdefault(key, value)
    return [k for k in sorted(set(now) | set(then))
            if not _covers(_LOCAL, k) and (k not in now or k not in then or now[k] != then[k])]


def _leaves(node, prefix: str = "") -> dict:
    if not isinstance(node, dict) or not node:
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}


def _fused_default(optim: DictConfig, device: torch.device) -> dict:
    """``{"fused": True}`` when the config leaves ``fused`` unset and the optimizer has a fused kernel here.

    Adam's fused kernel (one pass over each parameter tensor instead of about ten) cut the optimizer's share of
    a CPU step from 2.3 ms to 0.9 ms in scripts/bench_train.py; its updates agree with the for-loop version to
    float32 rounding (about 1e-7), not bit for bit, so ``optim.fused=false`` restores the loop.
    """
    if "fused" in optim:
        return {}
    try:
        cls = hydra.utils.get_class(optim._target_)
    except Exception:  # an unusual _target_: leave it to instantiate to report
        return {}
    accepts = "fused" in inspect.signature(cls).parameters
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return {"fused": True} if accepts and device.type in _get_fused_kernels_supported_devices() else {}


def _progress_enabled(setting) -> bool:
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(setting)


_TEST_SETTINGS = ("iwae_samples", "max_batches", "batch_size", "chunk", "seed")  # eval.* keys the test depends on


def _test_settings(cfg) -> dict:
    """The eval settings that define a run's test numbers (the samples, which images, the sample stream)."""
    ev = (cfg.get("eval") if hasattr(cfg, "get") else None) or {}
    return {k: ev.get(k) for k in _TEST_SETTINGS}


def _fmt_settings(settings: dict) -> str:
    return ", ".join(f"eval.{k}={v}" for k, v in settings.items())


class Trainer:
    """Holds what a run needs; ``run()`` trains (or continues), evaluates and writes the run's files."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike, run_name: str | None = None):
        self.t_start = time.perf_counter()
        self.git = git_revision()  # the code this invocation started with (the checkout may move while it runs)
        validate_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFilesError(os_error_message(e, self.run_dir)) from e
        if not writable_dir(self.run_dir):
            raise RunFilesError(f"the run directory {self.run_dir} is not writable; make it writable, or choose "
                                "another with hydra.run.dir=DIR (hydra.sweep.dir=DIR for a sweep)")
        self.run_name = run_name
        set_deterministic(bool(cfg.deterministic))
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        # graves_backend: this run's choice, applied as a scope around its work (train, validate, test), never as
        # the process default, so that other code in the process (tests, a notebook) keeps its own
        self.graves_backend = cfg.get("graves_backend") or None
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)

        d = cfg.dataset
        try:
            self.data = load_dataset(d.name, root=d.get("root"), valid_size=d.get("valid_size"),
                                     device=self.device, seed=cfg.seed, download=d.get("download"),
                                     verify=d.get("verify", True))
        except ValueError as e:
            raise ConfigError(f"dataset.valid_size: {e}; set a smaller dataset.valid_size (null: the "
                              "dataset's default)") from e
        self.model = _instantiate(cfg.model, "model", x_dim=self.data.x_dim,
                                  train_mean=self.data.train_mean).to(self.device)
        self.estimator = _instantiate(cfg.estimator, "estimator", context_dim=self.data.x_dim).to(self.device)
        try:
            # does the model's posterior fit the estimator? (one image, no randomness)
            with torch.no_grad(), self.backend_scope():
                probe = self.model.posterior(self.data.train_mean.reshape(1, -1).to(self.device))
            self.estimator.check(probe, cfg.train.num_samples, cfg.train.objective)
        except ValueError as e:
            raise ConfigError(f"{e} (train.objective={cfg.train.objective}, "
                              f"train.num_samples={cfg.train.num_samples})") from e
        self.params = [*self.model.parameters(), *self.estimator.parameters()]
        self.clip = cfg.train.grad_clip if cfg.train.get("grad_clip") else math.inf
        self.optimizer = _instantiate(cfg.optim, "optim", params=self.params,
                                      **_fused_default(cfg.optim, self.device))
        schedule = cfg.get("schedule") or OmegaConf.create({"_target_": _ADDED["schedule._target_"]})
        self.schedule = _instantiate(schedule, "schedule", epochs=cfg.train.epochs)
        # stepped once per epoch: during epoch e (1-based) the lr is optim.lr * schedule(e - 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda epoch: self.schedule(epoch))
        # One generator drives the data order and the dynamic binarization; it lives on the data's device.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.metrics = MetricsFile(self.run_dir)
        self.state = {"epoch": 0, "step": 0, "best_valid_elbo": -math.inf, "best_epoch": 0, "stale": 0,
                      "stopped_early": False, "train_time_s": 0.0, "wandb_id": None}
        self.progress = _progress_enabled(cfg.progress)
        self._wall_before = 0.0  # wall-clock seconds of the invocations before this one (from the checkpoint)
        self._reset_finite()
        # fused optimizers can skip a non-finite step on the device (see train_step)
        self._skip_on_device = bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.state["wall_time_s"] = self._wall_before + (time.perf_counter() - self.t_start)
        ckpt.save_atomic({
            "model": self.model.state_dict(),
            "estimator": self.estimator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": dict(self.state),
            "rng": rng_state(self.generator),
            "metrics_size": self.metrics.size(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }, self.run_dir / ckpt.CHECKPOINT, keep_previous=True)

    def maybe_resume(self) -> int:
        """Continue from run_dir/checkpoint.pt when there is one (resume=auto/true), else checkpoint.prev.pt.

        Returns the size metrics.jsonl had at that checkpoint (0 for a fresh start): the caller truncates the
        file to it, dropping what a killed run logged after its last checkpoint.
        """
        path = self.run_dir / ckpt.CHECKPOINT
        found = [p for p in (path, self.run_dir / ckpt.PREVIOUS) if p.exists()]
        if not found or self.cfg.resume is False:
            if self.cfg.resume is True:
                raise ConfigError(f"resume=true but {path} does not exist; point hydra.run.dir at the run to "
                                  "continue (rerunning the same command with the same run dir continues it)")
            for stale in (ckpt.CHECKPOINT, ckpt.PREVIOUS, ckpt.BEST, SUMMARY):  # a fresh start in a used directory
                (self.run_dir / stale).unlink(missing_ok=True)
            return 0
        saved, used, damaged = None, None, None
        for candidate in found:
            try:
                saved, used = ckpt.load(candidate, self.device, needs=ckpt.CONTENTS), candidate
                break
            except CheckpointError as e:
                damaged = damaged or e
        if saved is None:
            raise damaged
        if damaged is not None:
            warnings.warn(f"{damaged}; resuming from the previous checkpoint {used} (epoch "
                          f"{saved['state']['epoch']}) instead", stacklevel=2)
        elif used != path:
            log.warning("%s is missing (a run killed while saving); resuming from %s", path, used)
        self.compare_config(saved["config"], used, saved["state"]["epoch"])
        try:
            self.model.load_state_dict(saved["model"])
            self.estimator.load_state_dict(saved["estimator"])
        except RuntimeError as e:
            raise ConfigError(f"{used} does not fit the configured model and estimator ("
                              f"{str(e).splitlines()[0].strip()} ...); rerun with resume=false to start over, "
                              "or use another run directory") from e
        now = [{k: v for k, v in g.items() if k not in ("params", "param_names")}
               for g in self.optimizer.param_groups]  # this config's hyperparameters (and initial_lr)
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{used}: the optimizer state does not fit ({e}); rerun with resume=false to "
                              "start over") from e
        for group, settings in zip(self.optimizer.param_groups, now, strict=True):
            group.update(settings)  # the moments stay; lr, betas, eps, weight decay are the configured ones
        if "scheduler" in saved:  # older checkpoints have none (they ran at a constant lr)
            self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], self.generator)
        self.state = saved["state"]
        self._set_epoch_lr(self.state["epoch"])
        log.info("resuming from %s after epoch %d (step %d)", used, self.state["epoch"], self.state["step"])
        return saved["metrics_size"]

    def _set_epoch_lr(self, epoch_index: int) -> None:
        """Put the scheduler where it is after ``epoch_index`` epochs, with this config's lr as its base.

        The same product LambdaLR computes (base_lr * factor), so an unchanged config resumes bit for bit.
        """
        groups = self.optimizer.param_groups
        self.scheduler.base_lrs = [g["initial_lr"] for g in groups]
        self.scheduler.last_epoch = epoch_index
        lrs = [base * self.schedule(epoch_index) for base in self.scheduler.base_lrs]
        for group, lr in zip(groups, lrs, strict=True):
            group["lr"] = lr
        self.scheduler._last_lr = lrs

    def compare_config(self, saved: dict, path: Path, epoch: int) -> None:
        """Refuse (ConfigError) a resume whose config differs in a key that defines the run; log the rest."""
        now, then = _leaves(OmegaConf.to_container(self.cfg, resolve=True)), _leaves(saved)
        for key, value in _ADDED.items():
            then.setdefault(key, value)
        changed = [k for k in sorted(set(now) | set(then)) if k in now and k in then and now[k] != then[k]]
        unrecorded = [k for k in sorted(set(now) - set(then))]
        refused = [k for k in changed if _covers(_DEFINING, k) or not _covers(_RUN_CONTROL + _APPLIED, k)]
        if refused:
            diffs = ", ".join(f"{k}={then[k]!r} (now {now[k]!r})" for k in refused)
            raise ConfigError(f"cannot resume {path}: it was trained with {diffs}, which defines the run; "
                              "rerun with resume=false to start over in this run directory, or choose another "
                              "with hydra.run.dir=DIR")
        applied = [k for k in changed + unrecorded if _covers(_APPLIED, k)]
        if applied:
            log.warning("resuming with new %s (the optimizer's moments are kept; applied from epoch %d on)",
                        ", ".join(f"{k}={now[k]!r} (was {then.get(k, 'unset')!r})" for k in applied), epoch + 1)
        control = [k for k in changed if _covers(_RUN_CONTROL, k)]
        if control:
            log.info("resuming with new run control: %s", ", ".join(f"{k}={now[k]!r}" for k in control))
        new = [k for k in unrecorded if not _covers(_APPLIED + _RUN_CONTROL, k)]
        if new:
            log.warning("the checkpoint's config has no %s (added since it was written); continuing with %s",
                        ", ".join(new), ", ".join(f"{k}={now[k]!r}" for k in new))
        gone = sorted(set(then) - set(now))
        if gone:
            log.warning("the config no longer has %s (set in the checkpoint's config)", ", ".join(gone))

    # ---- training --------------------------------------------------------------------------------------------
    def log_record(self, record: dict) -> None:
        record = {"step": self.state["step"], "epoch": self.state["epoch"], **record}
        self.metrics.write(record)
        self.wandb.log({k: v for k, v in record.items() if k not in ("step",)}, step=record["step"])

    def train_step(self, x: torch.Tensor):
        """One optimizer step on the batch x [B, x_dim]; returns (objective [B], grad_norm 0-d, out.metrics).

        With a fused optimizer nothing here reads a value back to the host: a non-finite loss or gradient norm
        is recorded on the device, the optimizer skips that update on the device (its ``found_inf``, the hook
        torch.amp.GradScaler uses), so the parameters stay those of the last good step, and ``check_finite``
        raises at the next log step or at the end of the epoch. Other optimizers cannot skip an update without
        the host, so for them the step is checked at once (one host sync per step, as before).
        """
        cfg = self.cfg.train
        out = self.model(x, self.estimator, num_samples=cfg.num_samples, objective=cfg.objective)
        loss = -out.surrogate.mean() + out.aux_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip < math.inf:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        else:  # the norm alone: clip_grad_norm_ would also multiply every gradient by 1
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        bad = self._record_finite(loss, grad_norm)
        if self._skip_on_device:
            self.optimizer.found_inf = bad.float()
        else:
            self.check_finite()
        self.optimizer.step()
        return out.objective.detach(), grad_norm, out.metrics

    def _reset_finite(self) -> None:
        """Start the epoch's on-device record: steps taken, first bad step (0: none), its (loss, grad norm)."""
        self._epoch_start_step = self.state["step"]
        self._steps_dev = torch.zeros((), dtype=torch.int64, device=self.device)
        self._bad_step = torch.zeros((), dtype=torch.int64, device=self.device)
        self._bad_values = torch.zeros(2, device=self.device)

    def _record_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Record the step on the device; returns whether its loss or gradient norm is non-finite (0-d bool)."""
        values = torch.stack([loss.detach().float(), grad_norm.detach().float()])
        self._steps_dev += 1
        bad = torch.isfinite(values).all().logical_not_()
        first = bad & (self._bad_step == 0)
        self._bad_step = torch.where(first, self._steps_dev, self._bad_step)
        self._bad_values = torch.where(first, values, self._bad_values)
        return bad

    def check_finite(self) -> None:
        """Raise NonFiniteError naming the first bad step of this epoch, if there was one (one host read).

        The error is raised before anything from a later step is logged, validated or saved, so the last
        checkpoint on disk is the last good one.
        """
        bad = int(self._bad_step)
        if bad == 0:
            return
        loss, grad_norm = self._bad_values.tolist()
        what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
        path = self.run_dir / ckpt.CHECKPOINT
        kept = (f"the last good checkpoint {path} (epoch {self._saved_epoch}) is kept; rerun the same command "
                "with a lower optim.lr or a train.grad_clip to continue from it with the new value"
                if path.exists() else "no checkpoint was written yet; rerun with a lower optim.lr or a "
                "train.grad_clip")
        raise NonFiniteError(f"non-finite {what} ({value}) at step {self._epoch_start_step + bad} "
                             f"(epoch {self.state['epoch']}); {kept}")

    def train_epoch(self) -> dict:
        """One pass over the training set; returns the epoch's record entries."""
        cfg, state = self.cfg.train, self.state
        self.model.train()
        self.estimator.train()
        n_batches = self.data.num_batches("train", cfg.batch_size)
        if cfg.get("max_batches"):
            n_batches = min(n_batches, cfg.max_batches)
        self._reset_finite()
        epoch_sum = torch.zeros((), device=self.device)
        window_sum, window_n = torch.zeros((), device=self.device), 0
        bar = tqdm(total=n_batches, desc=f"epoch {state['epoch']}", disable=not self.progress, leave=False)
        batches = self.data.batches("train", cfg.batch_size, shuffle=True, generator=self.generator)
        for _, x in zip(range(n_batches), batches, strict=False):
            objective, grad_norm, metrics = self.train_step(x)
            state["step"] += 1
            objective = objective.mean()
            epoch_sum += objective
            window_sum += objective
            window_n += 1
            if state["step"] % cfg.log_every == 0:
                self.check_finite()  # before anything is logged from a bad step
                record = {"train/objective": window_sum.item() / window_n, "train/grad_norm": grad_norm.item(),
                          **{k if "/" in k else f"estimator/{k}": v for k, v in to_floats(metrics).items()}}
                self.log_record(record)
                bar.set_postfix(objective=f"{record['train/objective']:.2f}")
                window_sum.zero_()
                window_n = 0
            bar.update()
        bar.close()
        self.check_finite()
        return {"train/objective_epoch": epoch_sum.item() / max(n_batches, 1)}

    def validate(self) -> dict:
        ev = self.cfg.eval
        cap = ev.get("valid_max_batches") or ev.get("max_batches")
        out = evaluate(self.model, self.data, "valid", ev.valid_samples, ev.chunk, ev.batch_size, ev.seed, cap)
        if not out:
            return out
        state = self.state
        if out["valid/elbo"] > state["best_valid_elbo"]:
            state.update(best_valid_elbo=out["valid/elbo"], best_epoch=state["epoch"], stale=0)
            ckpt.save_atomic({"model": self.model.state_dict(), "estimator": self.estimator.state_dict(),
                              "epoch": state["epoch"]}, self.run_dir / ckpt.BEST)
        else:
            state["stale"] += 1
            if ev.get("patience") is not None and state["stale"] >= ev.patience:
                state["stopped_early"] = True
                log.info("early stop: valid/elbo has not improved for %d validations", state["stale"])
        return out

    def finished(self) -> bool:
        return self.state["stopped_early"] or self.state["epoch"] >= self.cfg.train.epochs

    def run(self) -> dict:
        """Train to ``train.epochs`` (continuing a checkpoint), test, write summary.json; returns the summary.

        A run file that cannot be written (a full disk, a read-only directory) stops the run with one line
        (RunFilesError); the last checkpoint stays, so the same command continues once the cause is fixed.
        Another live process working in the same run directory stops this one before it reads anything
        (RunBusyError, naming that process).
        """
        try:
            with RunLock(self.run_dir), self.backend_scope():
                return self._run()
        except OSError as e:
            raise RunFilesError(os_error_message(e)) from e

    def backend_scope(self):
        """The run's Graves backend (``graves_backend``) for distributions made inside the block; no-op if unset."""
        return graves_transform.backend(self.graves_backend) if self.graves_backend else contextlib.nullcontext()

    def _run(self) -> dict:
        cfg = self.cfg
        metrics_size = self.maybe_resume()
        self._saved_epoch = self.state["epoch"]
        previous = read_summary(self.run_dir)
        if self.finished() and previous and previous.get("status") == "completed":
            then, now = _test_settings(previous.get("config") or {}), _test_settings(cfg)
            if then == now:
                log.info("%s already holds a completed run; nothing to do", self.run_dir)
                return previous
            # a finished run asked for another test (e.g. the whole test set, or more samples): test the best
            # weights again rather than hand back a summary that no longer matches the command
            log.info("%s holds a completed run tested with %s; testing it again with %s", self.run_dir,
                     _fmt_settings(then), _fmt_settings(now))
        self.metrics.truncate(metrics_size)
        self._wall_before = float(self.state.get("wall_time_s", 0.0))  # absent from older checkpoints
        history = self.state.setdefault("git_history", [])  # the code each invocation trained or tested with
        if not history or {k: history[-1].get(k) for k in ("commit", "dirty")} != {k: self.git.get(k) for k in
                                                                                     ("commit", "dirty")}:
            history.append({"commit": self.git.get("commit"), "dirty": self.git.get("dirty"),
                            "from_epoch": self.state["epoch"]})
        OmegaConf.save(cfg, self.run_dir / "config.yaml", resolve=True)
        config = OmegaConf.to_container(cfg, resolve=True)
        self.wandb = WandbRun(cfg.logger, self.run_dir, self.run_name, config, run_id=self.state["wandb_id"])
        self.state["wandb_id"] = self.wandb.id
        log.info("data: %r", self.data)
        ok = False
        try:
            while not self.finished():
                t0 = time.perf_counter()
                self.state["epoch"] += 1  # the epoch under way; equal to the epochs completed once it ends
                record = self.train_epoch()
                record["train/lr"] = self.optimizer.param_groups[0]["lr"]  # this epoch's
                self.scheduler.step()
                epoch_s = time.perf_counter() - t0
                self.state["train_time_s"] += epoch_s
                record["time/epoch_s"] = epoch_s
                epoch = self.state["epoch"]
                if cfg.eval.every and (epoch % cfg.eval.every == 0 or epoch == cfg.train.epochs):
                    record.update(self.validate())
                self.log_record(record)
                log.info("epoch %d/%d  %s", epoch, cfg.train.epochs,
                         "  ".join(f"{k} {v:.4g}" for k, v in record.items()))
                if epoch in (cfg.checkpoint.get("keep") or ()):  # a snapshot kept for measurements during training
                    (self.run_dir / SNAPSHOTS).mkdir(exist_ok=True)
                    ckpt.save_atomic({"model": self.model.state_dict(), "estimator": self.estimator.state_dict(),
                                      "epoch": epoch}, self.run_dir / SNAPSHOTS / f"epoch{epoch}.pt")
                if epoch % cfg.checkpoint.every == 0 or self.finished() or epoch == cfg.train.get("stop_after"):
                    self.save_checkpoint()
                    self._saved_epoch = epoch
                if epoch == cfg.train.get("stop_after") and not self.finished():
                    log.info("stopping after epoch %d (train.stop_after); rerun to continue", epoch)
                    ok = True
                    return {"status": "stopped", "epoch": epoch, "step": self.state["step"]}
            summary = self.test()
            ok = True
            return summary
        except NonFiniteError as e:
            write_summary(self.run_dir, {"status": "failed", "error": str(e), **self._facts()})
            raise
        finally:
            self.wandb.finish(exit_code=0 if ok else 1)

    def test(self) -> dict:
        """Test metrics with the best validation weights (or the last ones without validation)."""
        ev = self.cfg.eval
        best = self.run_dir / ckpt.BEST
        if best.exists():
            try:
                self.model.load_state_dict(ckpt.load(best, self.device, needs=("model",))["model"])
            except (KeyError, RuntimeError) as e:
                raise CheckpointError(f"{best} does not hold this model's weights ({e}); rerun with "
                                      "resume=false to start over") from e
        t0 = time.perf_counter()
        results = evaluate(self.model, self.data, "test", ev.iwae_samples, ev.chunk, ev.batch_size, ev.seed,
                           ev.get("max_batches"))
        results["time/test_eval_s"] = time.perf_counter() - t0
        results["time/train_s"] = self.state["train_time_s"]
        results["time/epoch_s"] = self.state["train_time_s"] / max(self.state["epoch"], 1)
        if self.state["best_epoch"]:
            results["valid/best_elbo"] = self.state["best_valid_elbo"]
        self.log_record(results)
        self.wandb.summary(results)
        summary = {"status": "completed", "metrics": results, **self._facts()}
        write_summary(self.run_dir, summary)
        return summary

    def _facts(self) -> dict:
        s = self.state
        return {
            "epochs": s["epoch"], "steps": s["step"], "best_epoch": s["best_epoch"],
            "stopped_early": s["stopped_early"],
            # every invocation's wall clock, start-up included (one killed counts up to its last checkpoint)
            "wall_time_s": self._wall_before + (time.perf_counter() - self.t_start),
            "invocation_wall_time_s": time.perf_counter() - self.t_start,
            "run_dir": portable_path(self.run_dir),
            "data": {"name": self.data.name, "source": portable_path(self.data.source), **self.data.sizes()},
            "num_params": {"model": sum(p.numel() for p in self.model.parameters()),
                           "estimator": sum(p.numel() for p in self.estimator.parameters())},
            "git": self.git,  # this invocation's code; git_history: each one's, with the epoch it started from
            "git_history": list(self.state.get("git_history") or [self.git]),
            "hardware": hardware(self.device),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }


def train(cfg: DictConfig, run_dir: str | os.PathLike, run_name: str | None = None) -> dict:
    """Build everything from ``cfg`` and train in ``run_dir``; returns the summary (see summary.json)."""
    return Trainer(cfg, run_dir, run_name).run()
