"""A Weights & Biases run that can never stop training: every call warns and carries on when W&B fails.

Offline by default (no account, no network: the run is written under <run dir>/wandb and can be uploaded
later with ``wandb sync``). ``WANDB_MODE`` in the environment overrides ``logger.mode``. An online run first
checks that the W&B server answers within ``ONLINE_CHECK_S`` seconds (wandb itself waits about 90 s and then
trains without a record); if not, it logs offline instead and says so in one warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from mixvae.data.download import reachable

log = logging.getLogger(__name__)
ONLINE_CHECK_S = 4.0


class WandbRun:
    """Wraps wandb.init / log / finish. ``cfg`` is the ``logger`` config node (see configs/logger/wandb.yaml)."""

    def __init__(self, cfg, run_dir: Path, name: str | None, config: dict, run_id: str | None = None):
        self.run = None
        if not cfg.get("enabled", False):
            return
        mode = os.environ.get("WANDB_MODE") or cfg.mode
        if mode == "online":
            host = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
            if not reachable(host, timeout=ONLINE_CHECK_S):
                warnings.warn(f"W&B: {host} did not answer within {ONLINE_CHECK_S:g} s; logging offline to "
                              f"{run_dir / 'wandb'} instead (upload later with wandb sync)", stacklevel=2)
                mode = "offline"
        try:
            import wandb

            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.get("entity"),
                group=cfg.get("group"),
                tags=list(cfg.get("tags") or []),
                job_type=cfg.get("job_type"),
                name=name,
                config=config,
                dir=str(run_dir),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(console=cfg.get("console", "off"), silent=True),
            )
        except Exception as e:  # noqa: BLE001 - any W&B failure must leave training running
            self._warn("init", e)

    @property
    def id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _warn(self, what: str, e: Exception) -> None:
        warnings.warn(f"W&B {what} failed, continuing without W&B: {type(e).__name__}: {e}", stacklevel=3)
        self.run = None

    def log(self, metrics: dict, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001
            self._warn("log", e)

    def summary(self, metrics: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(metrics)
        except Exception as e:  # noqa: BLE001
            self._warn("summary", e)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            self._warn("finish", e)
        self.run = None
