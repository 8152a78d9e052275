#!/usr/bin/env python
"""Train a VAE with a mixture posterior (Hydra app; configs in configs/).

    python train.py +experiment=quickstart                # Graves, K = 5, MNIST, a few minutes on a CPU
    python train.py estimator=vimco train.objective=iwae train.num_samples=5
    python train.py -m estimator=graves,vimco,gumbel_softmax dataset=mnist,omniglot seed=0,1,2

Bad input (an unknown option value, K < 1, vimco with S = 1, missing data files) is reported as one line on
stderr with exit code 2; a NaN/inf loss or gradient with exit code 3. HYDRA_FULL_ERROR=1 shows tracebacks.
"""

import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

CONFIGS = Path(__file__).resolve().parent / "configs"


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
        folder = CONFIGS / group
        if not folder.is_dir():
            continue
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for name in value.split(","):
            if name not in options:
                print(f"error: unknown {group} {name!r}; available: {', '.join(options)}", file=sys.stderr)
                sys.exit(2)


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
    main()
