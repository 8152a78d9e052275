"""A plain multilayer perceptron, the body of the encoder and the decoder."""

from __future__ import annotations

from torch import nn

# activation name (the `model.activation` config value) -> module class
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,  # the IWAE architecture (Burda et al. 2016, section 5.1)
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


def mlp(sizes: list[int], activation: str, last_activation: bool = True) -> nn.Sequential:
    """Linear + activation for each consecutive pair of ``sizes``: [*, sizes[0]] -> [*, sizes[-1]].

    Every layer, the last included, is followed by the activation (heads are added by the caller), unless
    ``last_activation`` is false: then the last layer is linear. With ``sizes`` of length 1 it is the identity.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    if layers and not last_activation:
        layers.pop()
    return nn.Sequential(*layers)
