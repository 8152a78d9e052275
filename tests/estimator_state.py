"""A shared test helper: estimators put into a non-trivial state before their bias is measured."""

from __future__ import annotations

import torch

from mixvae.estimators.baselines import LearnedBaseline, RunningMeanBaseline


def nontrivial_state(est, dtype: torch.dtype, seed: int):
    """``est`` in ``dtype`` with every stateful or learnable part away from its initial value (a running mean at
    0.7, a learned baseline's weights drawn from N(0, 1) with ``seed``), so that a baseline that leaked the
    current sample, or a wrongly centred one, shows up as bias in an unbiasedness test."""
    est = est.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    for module in est.modules():
        if isinstance(module, RunningMeanBaseline):
            module.value.fill_(0.7)
            module.initialized.fill_(True)
        if isinstance(module, LearnedBaseline):
            with torch.no_grad():
                for p in module.net.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return est
