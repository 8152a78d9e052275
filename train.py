#!/usr/bin/env python
"""Train a VAE with a mixture posterior (Hydra app; configs in configs/).

    python train.py +experiment=quickstart                # Graves, K = 5, MNIST, a few minutes on a CPU
    python train.py estimator=vimco train.objective=iwae train.num_samples=5
    python train.py -m estimator=graves,vimco,gumbel_softmax dataset=mnist,omniglot seed=0,1,2

Bad input (an unknown option value or key, an out-of-range number, vimco with S = 1, missing or damaged data
files, an unavailable device, a read-only run directory, a damaged checkpoint) is reported as one line on
stderr with exit code 2; a NaN/inf loss or gradient with exit code 3. HYDRA_FULL_ERROR=1 shows tracebacks.
"""

import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIGS = Path(__file__).resolve().parent / "configs"
PACKAGE_CONFIGS = Path(__file__).resolve().parent / "mixvae" / "configs"  # groups that ship with the package


def run_dir_variant(value) -> str:
    """``${mixvae.variant:X}`` in a sweep's subdir: '' for none / null / false, else '-X'. The experiment files
    name run directories by the options chosen (``gamma-D2-grep-seed0``); an option's setting that changes the
    run but not its name (the estimator's baseline) is appended this way, so that ``estimator.baseline=mean``
    gets ``gamma-D2-grep-mean-seed0`` and not the directory of the run without a baseline (which a resume
    would refuse as a changed setting)."""
    return "" if value in (None, False, "", "none", "null") else f"-{value}"


OmegaConf.register_new_resolver("mixvae.variant", run_dir_variant, replace=True)


def group_dir(group: str) -> Path | None:
    """The folder of a config group, in configs/ or in the package's configs (Hydra's search path)."""
    return next((d / group for d in (CONFIGS, PACKAGE_CONFIGS) if group and (d / group).is_dir()), None)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_group_choices(argv: list[str]) -> None:
    """Exit with one line for an unknown option of one of our config groups (``dataset=foo``).

    Hydra reports it too, but as a page with its config search path; plain and comma-separated values
    (``estimator=graves,vimco``) are checked here, anything fancier is left to Hydra.
    """
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if not sep or group.startswith("hydra") or not re.fullmatch(r"[\w\-]+(,[\w\-]+)*", value):
            continue
        folder = group_dir(group)
        if folder is None:
            continue
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for name in value.split(","):
            if name not in options:
                fail(f"unknown {group} {name!r}; available: {', '.join(options)}")


def _load_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(path))
    return node if isinstance(node, dict) else {}


def _option_keys(group: str, option: str) -> set[str] | None:
    """The keys option ``option`` of ``group`` defines (its own, its same-group defaults', its subgroups)."""
    folder = group_dir(group)
    if folder is None or not (folder / f"{option}.yaml").exists():
        return None
    node = _load_yaml(folder / f"{option}.yaml")
    keys = set(node) - {"defaults"}
    for entry in node.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            inherited = _option_keys(group, entry)
            if inherited is None:
                return None
            keys |= inherited
        elif isinstance(entry, dict):
            keys |= {k.removeprefix("override ").strip("/").split("/")[0].split("@")[0] for k in entry}
    return keys


def check_override_keys(argv: list[str]) -> None:
    """Exit with one line for ``node.key=value`` (no ``+``) where the node has no such key.

    Hydra reports it as several lines ("Key 'nonsense' is not in struct", full_key, object_type); here the line
    names the option and lists its keys. Only plain cases are checked (the option is the one named on the
    command line or the primary config's default); anything an experiment may change is left to Hydra.
    """
    primary = _load_yaml(CONFIGS / "config.yaml")
    defaults = {k: v for entry in primary.get("defaults") or [] if isinstance(entry, dict) for k, v in entry.items()}
    chosen = dict(arg.partition("=")[::2] for arg in argv if "=" in arg and not arg.startswith(("+", "~")))
    if any(arg.lstrip("+").startswith("experiment") for arg in argv):
        return  # an experiment may choose other options and set more keys
    for arg in argv:
        key, sep, value = arg.partition("=")
        node, _, leaf = key.partition(".")
        if not sep or not leaf or arg.startswith(("+", "~")) or node == "hydra" or "/" in key or "@" in key:
            continue
        leaf = leaf.split(".")[0].split("[")[0]
        if group_dir(node) is not None:
            option = chosen.get(node, defaults.get(node))
            if not isinstance(option, str) or "," in option:
                continue
            keys, what = _option_keys(node, option), f"{node} {option!r}"
        elif isinstance(primary.get(node), dict):
            keys, what = set(primary[node]), node
        else:
            continue
        if keys is not None and leaf not in keys:
            shown = sorted(k for k in keys if not k.startswith("_"))
            fail(f"{node}.{leaf} is not a key of {what} (its keys: {', '.join(shown)}); "
                 f"+{key}={value} adds a new one")


def check_run_dir(argv: list[str]) -> None:
    """Exit with one line when the run directory cannot be written (Hydra's log set-up would raise first)."""
    from mixvae.data.download import writable_dir

    dirs = [arg.partition("=")[2] for arg in argv if arg.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for d in dirs or [os.getcwd()]:
        if "${" not in d and not writable_dir(Path(d).expanduser()):
            fail(f"the run directory {d} is not writable; make it writable, or choose another with "
                 "hydra.run.dir=DIR (hydra.sweep.dir=DIR for a sweep)")


def _format(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mixvae.data import DataError
    from mixvae.training import MixVAEError, train

    hc = HydraConfig.get()
    try:
        summary = train(cfg, hc.runtime.output_dir, run_name=hc.job.override_dirname or hc.job.name)
    except (MixVAEError, DataError, OmegaConfBaseException) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    if summary.get("status") == "completed":
        width = max(map(len, summary["metrics"]))
        print("\n".join(f"{k:<{width}}  {_format(v)}" for k, v in summary["metrics"].items()))
    print(f"run dir: {hc.runtime.output_dir}")


if __name__ == "__main__":
    check_group_choices(sys.argv[1:])
    check_override_keys(sys.argv[1:])
    check_run_dir(sys.argv[1:])
    main()
