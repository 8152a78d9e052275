"""Provenance lines shared by the scripts that write results/: command, git revision, hardware."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch


def git_revision() -> str:
    """The short commit of the code that ran, "+dirty" when tracked code differed from it. Dirty is counted as a
    run's summary counts it (:func:`mixvae.training.runtime.git_revision`): results/ and Markdown files are left
    out, so a benchmark that rewrites its own report, or tables rebuilt beside it, do not mark the code dirty."""
    from mixvae.training.runtime import git_revision as revision

    info = revision()
    if not info["commit"]:
        return "unknown"
    return info["commit"][:7] + ("+dirty" if info["dirty"] else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{cpu_name()}, {os.cpu_count()} cores visible, torch threads = {torch.get_num_threads()}"


def header(title: str, command: str | None = None) -> list[str]:
    command = command or " ".join(["python", *sys.argv])
    return [
        f"# {title}",
        "",
        f"- command: `{command}`",
        f"- git revision: `{git_revision()}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- load average when it started (other processes on the machine): "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "",
    ]


def write_report(path: str | Path, lines: list[str]) -> Path:
    """Write a benchmark's markdown ``lines`` to ``path`` (its folder made if needed) and say so."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return out
