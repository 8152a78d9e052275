"""Dataset-level evaluation: ELBO, the IWAE bound on log p(x) and active units (Burda et al. 2016)."""

from __future__ import annotations

import torch

from mixvae.models import MixtureVAE

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016), section 5.2


@torch.no_grad()
def evaluate(model: MixtureVAE, dataset, split: str, num_samples: int, chunk: int, batch_size: int,
             seed: int = 0, max_batches: int | None = None) -> dict[str, float]:
    """Average ELBO and IWAE-``num_samples`` bound over a split, plus its active units.

    Returns ``{split}/elbo`` (mean over images of an S-sample ELBO estimate), ``{split}/nll_iwae{S}``
    (minus the IWAE-S bound, nats, the test log-likelihood estimate of Burda et al. 2016 with S = 5000) and
    ``{split}/active_units``: latent dimensions u with Cov_x(E_q[u | x]) > 0.01, using the mixture mean.

    Runs under a forked, reseeded RNG (``seed``): the numbers depend only on the parameters, and the training
    RNG stream is left where it was, so evaluating does not change what training does next. Dynamic datasets
    are binarized with that seed too, so every evaluation sees the same binary images.
    """
    was_training = model.training
    model.eval()
    device = dataset.device
    elbo = torch.zeros((), dtype=torch.float64, device=device)
    iwae = torch.zeros((), dtype=torch.float64, device=device)
    means, n = [], 0
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        for i, x in enumerate(dataset.batches(split, batch_size, generator=gen)):
            if max_batches is not None and i >= max_batches:
                break
            out = model.evaluate_batch(x, num_samples, chunk)
            elbo += out["elbo"].sum(dtype=torch.float64)
            iwae += out["iwae"].sum(dtype=torch.float64)
            means.append(out["mean"])
            n += x.shape[0]
    model.train(was_training)
    if n == 0:
        return {}
    mean = torch.cat(means)  # [N, D]
    active = (mean.var(0, unbiased=False) > ACTIVE_UNIT_THRESHOLD).sum()
    return {
        f"{split}/elbo": elbo.item() / n,
        f"{split}/nll_iwae{num_samples}": -iwae.item() / n,
        f"{split}/active_units": int(active),
    }
