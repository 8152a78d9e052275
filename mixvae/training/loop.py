"""The training loop: a plain PyTorch loop, with the estimator owning the gradient.

One step, in full:

    q = model.posterior(x)                                    # DiagGaussianMixture, batch [B]
    out = estimator(q, f, num_samples=S, objective=...)       # f(z) = log p(x, z) - log q(z | x)
    loss = -out.surrogate.mean() + out.aux_loss               # the surrogate's gradient is the estimator's
    loss.backward(); optimizer.step()

What is logged is ``out.objective`` (the objective's estimate), never the surrogate. Around the step: seeding,
checkpoints that make a killed run continue bit for bit, validation with early stopping, the final test
evaluation, and the run's files (metrics.jsonl, summary.json, config.yaml) in the run directory.

Speed: a step never waits for the device. The data already lies on it (mixvae/data), the finiteness of the
loss and gradient norm is recorded on the device and read only every ``train.log_every`` steps and at the end of
the epoch (a bad step is still reported by number, and nothing is saved after it), the logged values are read
at log steps only, and Adam runs its fused kernel where torch has one (``optim.fused``; unset means "where
supported"). scripts/bench_train.py measures the step.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mixvae.data import load_dataset
from mixvae.distributions import graves_transform
from mixvae.training import checkpoint as ckpt
from mixvae.training.errors import ConfigError, NonFiniteError
from mixvae.training.evaluate import evaluate
from mixvae.training.metrics import SUMMARY, MetricsFile, read_summary, to_floats, write_summary
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


# keys that steer an invocation, not the run: changing them on resume is expected
_RUN_CONTROL = {"resume", "progress", "train.stop_after", "train.epochs", "eval.patience"}


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the key and a fix) for out-of-range values."""
    for key, hint in _POSITIVE.items():
        value = OmegaConf.select(cfg, key)
        if value is None and not key.startswith("model."):
            raise ConfigError(f"{key} is missing; set {key}=<integer >= 1>")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            hint = f" ({hint})" if hint else ""
            raise ConfigError(f"{key} must be an integer >= 1{hint}, got {value!r}; e.g. {key}=1")
    if cfg.resume not in ("auto", True, False):
        raise ConfigError(f"resume must be auto, true or false, got {cfg.resume!r}")
    backend = cfg.get("graves_backend")
    if backend is not None and backend not in graves_transform.BACKENDS:
        raise ConfigError(f"graves_backend must be one of {', '.join(graves_transform.BACKENDS)} (or null), "
                          f"got {backend!r}")


def _instantiate(node: DictConfig, key: str, **kwargs):
    """hydra.utils.instantiate, with a bad value or argument in the config reported as one ConfigError line."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{key}: {cause}") from e
        raise


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


class Trainer:
    """Holds what a run needs; ``run()`` trains (or continues), evaluates and writes the run's files."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike, run_name: str | None = None):
        self.t_start = time.perf_counter()
        validate_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_name = run_name
        set_deterministic(bool(cfg.deterministic))
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        if cfg.get("graves_backend"):
            graves_transform.set_backend(cfg.graves_backend)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)

        d = cfg.dataset
        self.data = load_dataset(d.name, root=d.get("root"), valid_size=d.get("valid_size"), device=self.device,
                                 seed=cfg.seed, download=d.get("download"))
        self.model = _instantiate(cfg.model, "model", x_dim=self.data.x_dim,
                                  train_mean=self.data.train_mean).to(self.device)
        self.estimator = _instantiate(cfg.estimator, "estimator", context_dim=self.data.x_dim).to(self.device)
        try:
            self.estimator.check(cfg.train.num_samples, cfg.train.objective)
        except ValueError as e:
            raise ConfigError(f"{e} (train.objective={cfg.train.objective}, "
                              f"train.num_samples={cfg.train.num_samples})") from e
        self.params = [*self.model.parameters(), *self.estimator.parameters()]
        self.clip = cfg.train.grad_clip if cfg.train.get("grad_clip") else math.inf
        self.optimizer = _instantiate(cfg.optim, "optim", params=self.params,
                                      **_fused_default(cfg.optim, self.device))
        # One generator drives the data order and the dynamic binarization; it lives on the data's device.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.metrics = MetricsFile(self.run_dir)
        self.state = {"epoch": 0, "step": 0, "best_valid_elbo": -math.inf, "best_epoch": 0, "stale": 0,
                      "stopped_early": False, "train_time_s": 0.0, "wandb_id": None}
        self.progress = _progress_enabled(cfg.progress)
        self._reset_finite()
        # fused optimizers can skip a non-finite step on the device (see train_step)
        self._skip_on_device = bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        ckpt.save_atomic({
            "model": self.model.state_dict(),
            "estimator": self.estimator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": dict(self.state),
            "rng": rng_state(self.generator),
            "metrics_size": self.metrics.size(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }, self.run_dir / ckpt.CHECKPOINT)

    def maybe_resume(self) -> int:
        """Continue from run_dir/checkpoint.pt when there is one (resume=auto/true).

        Returns the size metrics.jsonl had at that checkpoint (0 for a fresh start): the caller truncates the
        file to it, dropping what a killed run logged after its last checkpoint.
        """
        path = self.run_dir / ckpt.CHECKPOINT
        if not path.exists() or self.cfg.resume is False:
            if self.cfg.resume is True:
                raise ConfigError(f"resume=true but {path} does not exist; point hydra.run.dir at the run to "
                                  "continue (rerunning the same command with the same run dir continues it)")
            for stale in (ckpt.CHECKPOINT, ckpt.BEST, SUMMARY):  # a fresh start in a used directory
                (self.run_dir / stale).unlink(missing_ok=True)
            return 0
        saved = ckpt.load(path, self.device)
        self.model.load_state_dict(saved["model"])
        self.estimator.load_state_dict(saved["estimator"])
        self.optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"], self.generator)
        self.state = saved["state"]
        self._warn_config_changes(saved["config"])
        log.info("resuming from %s after epoch %d (step %d)", path, self.state["epoch"], self.state["step"])
        return saved["metrics_size"]

    def _warn_config_changes(self, saved: dict) -> None:
        def leaves(node, prefix=""):
            if not isinstance(node, dict):
                return {prefix[:-1]: node}
            return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}{key}.").items()}

        now, then = leaves(OmegaConf.to_container(self.cfg, resolve=True)), leaves(saved)
        changed = [k for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k) and k not in _RUN_CONTROL]
        if changed:
            log.warning("config differs from the checkpoint's in %s; continuing with the new values", changed)

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
        kept = (f"the last good checkpoint {path} (epoch {self._saved_epoch}) is kept" if path.exists()
                else "no checkpoint was written yet")
        raise NonFiniteError(f"non-finite {what} ({value}) at step {self._epoch_start_step + bad} "
                             f"(epoch {self.state['epoch']}); {kept}; try a lower optim.lr or "
                             "train.grad_clip")

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
        out = evaluate(self.model, self.data, "valid", ev.valid_samples, ev.chunk, ev.batch_size, ev.seed,
                       ev.get("max_batches"))
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
        """Train to ``train.epochs`` (continuing a checkpoint), test, write summary.json; returns the summary."""
        cfg = self.cfg
        metrics_size = self.maybe_resume()
        self._saved_epoch = self.state["epoch"]
        previous = read_summary(self.run_dir)
        if self.finished() and previous and previous.get("status") == "completed":
            log.info("%s already holds a completed run; nothing to do", self.run_dir)
            return previous
        self.metrics.truncate(metrics_size)
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
                epoch_s = time.perf_counter() - t0
                self.state["train_time_s"] += epoch_s
                record["time/epoch_s"] = epoch_s
                epoch = self.state["epoch"]
                if cfg.eval.every and (epoch % cfg.eval.every == 0 or epoch == cfg.train.epochs):
                    record.update(self.validate())
                self.log_record(record)
                log.info("epoch %d/%d  %s", epoch, cfg.train.epochs,
                         "  ".join(f"{k} {v:.4g}" for k, v in record.items()))
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
            self.model.load_state_dict(ckpt.load(best, self.device)["model"])
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
            "wall_time_s": time.perf_counter() - self.t_start,  # this invocation, start-up included
            "run_dir": portable_path(self.run_dir),
            "data": {"name": self.data.name, "source": portable_path(self.data.source), **self.data.sizes()},
            "num_params": {"model": sum(p.numel() for p in self.model.parameters()),
                           "estimator": sum(p.numel() for p in self.estimator.parameters())},
            "git": git_revision(),
            "hardware": hardware(self.device),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }


def train(cfg: DictConfig, run_dir: str | os.PathLike, run_name: str | None = None) -> dict:
    """Build everything from ``cfg`` and train in ``run_dir``; returns the summary (see summary.json)."""
    return Trainer(cfg, run_dir, run_name).run()
