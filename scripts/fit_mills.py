"""Fit the polynomial behind the float32 Mills ratio of the Graves backward pass (C kernel and PyTorch path).

The Mills ratio R(t) = (1 - Phi(t)) / phi(t) = sqrt(pi/2) erfcx(t / sqrt 2), t >= 0. With u = 1 / (1 + y / 2),
y = t / sqrt 2 (u in (0, 1]), g(u) = erfcx(y) / u is smooth on [0, 1] (from 1 at u = 1 to 1 / (2 sqrt pi) as
u -> 0), so R(t) = sqrt(pi/2) u g(u) with g a polynomial: no exp, unlike the Numerical Recipes fit
erfcx(y) = u exp(P(u)) that it replaces. This script fits g by iteratively reweighted least squares on the
relative error and reports the error of the float32 evaluation (Horner, as the kernels do) against float64 erfcx.

    python scripts/fit_mills.py [--degree 10]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.special import erfcx


def fit(degree: int, nodes: int = 8001, rounds: int = 40) -> np.ndarray:
    u = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, nodes))
    u = u[u > 1e-9]
    g = erfcx(2 * (1 / u - 1)) / u
    vander = np.vander(u, degree + 1, increasing=True)
    weight = np.ones_like(u)
    for _ in range(rounds):  # push weight where the relative error is largest (towards minimax)
        coef, *_ = np.linalg.lstsq(vander * (np.sqrt(weight) / g)[:, None], np.sqrt(weight), rcond=None)
        err = vander @ coef / g - 1
        weight *= 1 + np.abs(err) / np.abs(err).max()
    return coef  # lowest degree first


def float32_error(coef: np.ndarray, t_max: float = 60.0, points: int = 600001) -> float:
    t = np.linspace(0, t_max, points).astype(np.float32)
    u = (np.float32(1) / (np.float32(1) + np.float32(0.5 / np.sqrt(2)) * t)).astype(np.float32)
    p = np.float32(coef[-1])
    for c in coef[-2::-1]:
        p = (p * u + np.float32(c)).astype(np.float32)
    r = (np.float32(np.sqrt(np.pi / 2)) * u * p).astype(np.float32)
    exact = np.sqrt(np.pi / 2) * erfcx(t.astype(np.float64) / np.sqrt(2))
    return float(np.abs(r / exact - 1).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--degree", type=int, default=10)
    args = parser.parse_args(argv)
    coef = fit(args.degree)
    print(f"g(u), degree {args.degree}, lowest first:")
    print(", ".join(f"{c:.9e}" for c in coef))
    print(f"max relative error of R(t) in float32 on t in [0, 60]: {float32_error(coef):.2e}")


if __name__ == "__main__":
    main()
