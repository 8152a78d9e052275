"""Every config in configs/ composes, and the conventions the README promises hold."""

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import mixvae.configs
from mixvae.training import validate_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEARCH_PATH = [CONFIGS, Path(mixvae.configs.__file__).parent]  # the repository's, then the package's groups
GROUPS = ["dataset", "model", "model/posterior", "model/prior", "model/decoder", "estimator", "optim", "logger"]


def options(group):
    return sorted(p.stem for root in SEARCH_PATH for p in (root / group).glob("*.yaml"))


def experiments():
    return options("experiment")


def composed(overrides=(), hydra_config=False):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=hydra_config)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    cfg = composed([f"{group}={option}"])
    validate_config(cfg)
    assert OmegaConf.to_container(cfg, resolve=True)  # no dangling interpolation


@pytest.mark.parametrize("name", experiments())
def test_every_experiment_composes(name):
    text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_"), "experiments must be global packages"
    cfg = composed([f"+experiment={name}"], hydra_config=True)
    validate_config(cfg)
    params = cfg.hydra.sweeper.params or {}
    if cfg.hydra.mode is not None and str(cfg.hydra.mode).endswith("MULTIRUN"):
        assert params, f"{name} is a MULTIRUN experiment without a sweep grid"
    for key, values in params.items():  # every grid value must itself compose
        for value in str(values).split(","):
            validate_config(composed([f"+experiment={name}", f"{key}={value}"]))


def test_primary_config_has_no_experiment_key_and_expected_defaults():
    cfg = composed()
    assert "experiment" not in cfg
    assert cfg.dataset.name == "mnist" and cfg.logger.mode == "offline"
    assert cfg.model.hidden == [200, 200] and cfg.model.activation == "tanh"  # IWAE architecture
    assert cfg.eval.iwae_samples == 5000


def test_gaussian_model_is_the_mixture_model_with_one_component():
    gauss, mix = composed(["model=gaussian_mlp"]).model, composed(["model=mixture_mlp"]).model
    assert gauss.num_components == 1
    gauss, mix = OmegaConf.to_container(gauss), OmegaConf.to_container(mix)
    assert {k: v for k, v in gauss.items() if k != "num_components"} == \
        {k: v for k, v in mix.items() if k != "num_components"}


@pytest.mark.parametrize("option", options("model"))
def test_model_configs_instantiate(option):
    cfg = composed([f"model={option}", "model.hidden=[16]", "model.latent_dim=2"])
    model = hydra.utils.instantiate(cfg.model, x_dim=784, train_mean=torch.full((784,), 0.2))
    assert model.posterior(torch.zeros(3, 784)).loc.shape == (3, cfg.model.num_components, 2)


@pytest.mark.parametrize("option", options("estimator"))
def test_estimator_configs_instantiate_with_context(option):
    est = hydra.utils.instantiate(composed([f"estimator={option}"]).estimator, context_dim=784)
    assert isinstance(est, torch.nn.Module)


def test_optim_config_builds_an_optimizer():
    opt = hydra.utils.instantiate(composed().optim, params=[torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer)


def test_launcher_plugins_are_installed():
    for launcher in ["joblib", "submitit_local", "submitit_slurm"]:
        cfg = composed([f"hydra/launcher={launcher}"], hydra_config=True)
        assert cfg.hydra.launcher._target_
