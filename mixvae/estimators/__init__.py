"""Gradient estimators for objectives over a posterior q (the suite's subject: a diagonal-Gaussian mixture; also
the continuous families of mixvae.distributions and discrete latents); one contract for all of them.

    est = mixvae.estimators.build("graves", **options)   # same object as hydra.utils.instantiate(cfg.estimator)
    est.check(q, num_samples, objective)                 # ValueError (one line) if unsupported; __call__ checks too
    out = est(q, f, num_samples=S, objective="elbo", context=None)   # or objective="iwae"

Inputs
    q        a Distribution, batch shape [*batch], event shape [*event]: DiagGaussianMixture (K components in D
             dimensions), Independent(Normal / Gamma / Beta / VonMises), Independent(Bernoulli),
             (Independent) OneHotCategorical, or a layered posterior q(h1 | x) q(h2 | h1) ... exposed as one
             distribution (mixvae.models.discrete.LayeredPosterior). Each estimator's ``needs`` says what it uses
             of q (base.py: PATHWISE, SAMPLE_LOG_PROB, MIXTURE, DISCRETE_RELAXABLE; grep.STANDARDIZABLE).
    f        callable z [S', *batch, *event] -> per-sample values [S', *batch]. It may depend on parameters (for a VAE
             f(z) = log p(x, z) - log q(z), with the MARGINAL mixture log q). S' may differ from S (enumerate
             folds its K components into the sample axis), so f must not assume S' = S.
    context  optional [*batch, C] input features (a VAE passes the flattened x), used only by the
             input-dependent baseline; every constructor takes context_dim (None if there is no context).
Output (EstimatorOutput)
    objective [*batch]  estimate of the objective, detached:  elbo: mean_s f(z_s);  iwae: log mean_s exp f(z_s)
                        (enumerate + iwae: the stratified bound, flagged by metrics["stratified"] = 1).
    surrogate [*batch]  d/dtheta of surrogate.sum() is the gradient estimate. For the unbiased estimators
                        (est.unbiased) its expectation is exactly grad E[objective], for both objectives.
                        Its value means nothing: never log it as the objective.
    metrics             dict of floats / 0-d detached tensors (baseline, temperature, ...).
    aux_loss            0-d loss of the estimator's own learnable parts (the input-dependent baseline), zero
                        otherwise; its gradient reaches only est.parameters(). Train with
                        loss = -out.surrogate.mean() + out.aux_loss, optimizing est.parameters() too.
State (running-mean baseline, temperature schedule step) lives in buffers: est.state_dict() checkpoints it,
and it only changes while est.training is True.

The registry is the yaml files configs/estimator/<name>.yaml (`_target_` + options with defaults): adding an
estimator = one module here + one yaml there; `available()` lists them, `build` instantiates them.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

import mixvae
from mixvae.estimators.base import OBJECTIVES, Estimator, EstimatorOutput

__all__ = ["OBJECTIVES", "Estimator", "EstimatorOutput", "available", "build", "config_dir"]


def config_dir() -> Path:
    """mixvae/configs/estimator/: the registry's yaml files, inside the package (so a wheel has them too)."""
    return Path(mixvae.__file__).resolve().parent / "configs" / "estimator"


def available() -> list[str]:
    """Names of the registered estimators (the yaml stems), sorted."""
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def build(name: str, **options) -> Estimator:
    """Instantiate configs/estimator/<name>.yaml with `options` overriding its values.

    Raises a one-line ValueError for an unknown name (listing the valid ones), an unknown option (listing
    the valid options) or a bad option value (the estimator's own message).
    """
    names = available()
    if name not in names:
        raise ValueError(f"unknown estimator {name!r}; valid: {', '.join(names)}")
    cfg = OmegaConf.load(config_dir() / f"{name}.yaml")
    target = hydra.utils.get_class(cfg._target_)
    valid = [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"estimator {name!r} has no option(s) {unknown}; valid options: {', '.join(valid)}")
    try:
        est = hydra.utils.instantiate(cfg, **options)
    except InstantiationException as err:  # hydra wraps the constructor's ValueError in a multi-line message
        if isinstance(err.__cause__, ValueError):
            raise ValueError(f"estimator {name!r}: {err.__cause__}") from None
        raise
    est.name = name
    return est
