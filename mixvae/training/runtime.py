"""Device, seeds and determinism, and the facts about a run that summary.json records."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from mixvae.distributions import graves_transform
from mixvae.training.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to torch.device and must exist here
    (ConfigError otherwise, before any data is loaded)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device} is not a device torch knows; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device} but torch finds no CUDA device here; use device=auto or device=cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device={device} but this machine has {count} CUDA device(s) (cuda:0 to "
                              f"cuda:{count - 1}); use device=cuda or device=auto")
        return dev
    backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if not (callable(is_available) and is_available()):
        raise ConfigError(f"device={device} is not available on this machine; use device=auto or device=cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (slower on GPU; CPU training here is deterministic already)."""
    if not enabled:
        return  # torch's default; calling use_deterministic_algorithms(False) would import torch._inductor (~2 s)
    # cuBLAS needs a fixed workspace for reproducible matmuls (PyTorch "Reproducibility" notes).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a run draws from: Python, NumPy, torch CPU and CUDA, and the data generator."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


def portable_path(text: str | os.PathLike) -> str:
    """``text`` with this machine's folders taken out, for the files a run commits: paths below the working
    directory become relative, the data mirror ``$MIXVAE_DATA_DIR`` is named by its variable and the home
    directory (where caches live) is ``~``."""
    text, cwd = str(text), os.getcwd().rstrip(os.sep)
    replacements = [(cwd + os.sep, "")] if cwd else []  # not from the file system's root
    if os.environ.get("MIXVAE_DATA_DIR"):
        replacements.append((os.path.abspath(os.environ["MIXVAE_DATA_DIR"]), "$MIXVAE_DATA_DIR"))
    home = os.path.expanduser("~").rstrip(os.sep)
    if home:
        replacements.append((home + os.sep, "~" + os.sep))
    for prefix, name in replacements:
        text = text.replace(prefix, name)
    return text


def git_revision(where: Path | None = None) -> dict:
    """The commit of the code that ran and whether tracked files differed from it (None outside git). Files under
    the repository's results/ and Markdown files (README.md, docs) do not count: collected run files, rebuilt
    tables and prose change no run."""
    here = Path(where) if where is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results",
                 ":(top,exclude,glob)**/*.md") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_facts() -> dict:
    """The CPU's model name, x86 family and model numbers (one model name can cover several generations: "AMD
    EPYC" is Zen 3 at family 25 model 1 and Zen 4 at family 25 model 17) and widest vector ISA, from
    /proc/cpuinfo (None where it cannot be read)."""
    model, family, number, flags = None, None, None, set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key == "cpu family" and family is None:
                    family = value.strip()
                elif key == "model" and number is None:
                    number = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = next((name for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("SVE", "sve"),
                                        ("NEON", "asimd"), ("SSE2", "sse2")) if flag in flags), None)
    return {"cpu_model": model, "cpu_family": family, "cpu_model_number": number, "vector_isa": isa}


def hardware(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        **cpu_facts(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "graves_backend": graves_transform.describe_backend(device=device),  # the name, and what runs there
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
