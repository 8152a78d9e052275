"""``hydra/launcher=subprocess``: every job of a sweep in a fresh Python process, ``n_jobs`` at a time.

Why: Hydra's basic launcher runs a sweep's jobs in one process, and joblib's reuses worker processes; both keep
the modules they imported when the sweep began, while each job's config is composed from disk when the job
starts. A long sweep that outlives an edit of the code then runs new configs on old code (and fails, or worse).
Here each job is ``python <the app> <its overrides> hydra.mode=RUN hydra.run.dir=<sweep dir>/<subdir>``, so a
job's code and config are read at the same moment; a failed job does not stop the others, and the sweep reports
every failure at the end. A job's stdout and stderr go to ``<its run dir>/launcher.log``.

``skip_committed=DIR`` (a folder of collected runs, ``results/runs/<table>``; experiments/run_tables.py sets it)
skips each job whose run is already there: a completed ``summary.json`` beside a ``config.yaml`` that describes
the same run (``mixvae.training.run_differences``: equal in every key but the machine-local ones). So on a fresh
clone, where the run directories of the committed runs are gone, a sweep trains only the runs it lacks; a job
that differs in anything that defines its run (more epochs, another lr, more test samples) still runs.

    python train.py -m ... hydra/launcher=subprocess hydra.launcher.n_jobs=2 threads=1
"""

import json
import logging  # no `from __future__ import annotations`: Hydra imports plugins outside sys.modules
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class SubprocessLauncherConf:
    _target_: str = "hydra_plugins.mixvae_launcher.subprocess_launcher.SubprocessLauncher"
    n_jobs: int = 1  # jobs at once
    skip_committed: str | None = None  # a folder of collected runs (results/runs/<table>): skip the jobs in it


ConfigStore.instance().store(group="hydra/launcher", name="subprocess", node=SubprocessLauncherConf,
                             provider="mixvae")


class JobFailed(RuntimeError):
    pass


def committed_runs(folder) -> list:
    """(run folder, resolved config) of each completed run collected in ``folder`` (none if it is absent)."""
    runs = []
    for summary in sorted(Path(folder).glob("*/summary.json")):
        try:
            if json.loads(summary.read_text()).get("status") != "completed":
                continue
            config = OmegaConf.to_container(OmegaConf.load(summary.parent / "config.yaml"), resolve=True)
        except Exception as e:  # an unreadable run (bad JSON or YAML, a lost file) is no match; say which
            log.warning(f"{summary.parent}: not read as a committed run ({type(e).__name__}: {e})")
            continue
        runs.append((summary.parent, config))
    return runs


def job_config(sweep_config: DictConfig):
    """A job's config as train.py writes it to config.yaml (resolved, without ``hydra``); None if it does not
    resolve here (the job then runs and reports it)."""
    job = OmegaConf.to_container(sweep_config, resolve=False)
    job.pop("hydra", None)
    try:
        return OmegaConf.to_container(OmegaConf.create(job), resolve=True)
    except Exception:
        return None


class SubprocessLauncher(Launcher):
    def __init__(self, n_jobs: int = 1, skip_committed: str | None = None) -> None:
        super().__init__()
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.n_jobs must be >= 1, got {n_jobs}")
        self.n_jobs = int(n_jobs)
        self.skip_committed = skip_committed
        self.config = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def _job(self, idx: int, overrides):
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)  # the subdir may read hydra:runtime.choices / job.num
        run_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        own = [o for o in overrides if not o.startswith(("hydra/launcher=", "hydra.launcher."))]
        cmd = [sys.executable, sys.argv[0], *own, "hydra.mode=RUN", f"hydra.run.dir={run_dir}"]
        return cmd, run_dir, sweep_config, job_config(sweep_config) if self.skip_committed else None

    @staticmethod
    def _committed(config, committed):
        """The committed run folder that holds this job's run, or None."""
        from mixvae.training import run_differences

        if config is None:
            return None
        return next((folder for folder, saved in committed if not run_differences(config, saved)), None)

    def launch(self, job_overrides, initial_job_idx: int):
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, {self.n_jobs} at a time, each in its own process")
        pending = [(initial_job_idx + i, *self._job(initial_job_idx + i, list(o)), list(o))
                   for i, o in enumerate(job_overrides)]
        committed = committed_runs(self.skip_committed) if self.skip_committed else []
        running, returns = [], {}
        while pending or running:
            while pending and len(running) < self.n_jobs:
                idx, cmd, run_dir, cfg, config, overrides = pending.pop(0)
                done = self._committed(config, committed)
                if done is not None:
                    log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}: committed in {done}; skipped")
                    ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=None, working_dir=str(done),
                                    task_name=str(cfg.hydra.job.name))
                    ret.status, ret._return_value = JobStatus.COMPLETED, 0
                    returns[idx] = ret
                    continue
                run_dir.mkdir(parents=True, exist_ok=True)
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                out = open(run_dir / "launcher.log", "ab")
                running.append((idx, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), out, run_dir,
                                cfg, overrides))
            for job in list(running):
                idx, proc, out, run_dir, cfg, overrides = job
                if proc.poll() is None:
                    continue
                out.close()
                running.remove(job)
                ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=None, working_dir=str(run_dir),
                                task_name=str(cfg.hydra.job.name))
                if proc.returncode == 0:
                    ret.status, ret._return_value = JobStatus.COMPLETED, 0
                else:
                    ret.status = JobStatus.FAILED
                    ret._return_value = JobFailed(f"job #{idx} exited with code {proc.returncode}; see "
                                                  f"{run_dir / 'launcher.log'}")
                log.info(f"\t#{idx} finished (exit {proc.returncode}): {run_dir}")
                returns[idx] = ret
            time.sleep(0.2)
        failed = [r for r in returns.values() if r.status == JobStatus.FAILED]
        if failed:
            log.error(f"{len(failed)} of {len(returns)} jobs failed: "
                      + "; ".join(str(r._return_value) for r in failed))
        return [returns[i] for i in sorted(returns)]
