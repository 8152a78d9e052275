"""Learning-rate schedules: the factor that multiplies ``optim.lr`` in each epoch (configs/schedule/).

A schedule is a callable ``factor(epoch) -> float`` of the 0-based epoch index (the epochs completed before the
one under way). The loop wraps it in ``torch.optim.lr_scheduler.LambdaLR`` and steps it once per epoch, so
the lr during epoch ``e`` (1-based, as logged) is ``optim.lr * factor(e - 1)``; the scheduler's state is saved
in checkpoint.pt. Each class takes ``epochs`` (``train.epochs``, passed by the loop) and checks its settings,
raising ConfigError with one line naming the key.
"""

from __future__ import annotations

import math

from mixvae.training.errors import ConfigError


def _int_at_least(key: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


class Constant:
    """``optim.lr`` in every epoch (factor 1.0, so the lr is the configured float exactly)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def __call__(self, epoch: int) -> float:
        return 1.0


class IWAE:
    """Burda et al. (2016, section 5.1): stage i = 0, ..., stages - 1 lasts 3^i epochs at lr * 10^(-i/7).

    The paper's eight stages (0..7) last 3280 epochs; ``stages=5`` (0..4) is 121 epochs and ``stages=6`` (0..5)
    364. ``train.epochs`` may stop earlier (a smoke test follows the schedule's first epochs; the stages' total
    is what a full run sets), not later: the schedule defines no lr after its last stage.
    """

    def __init__(self, epochs: int, stages: int = 8):
        self.stages = _int_at_least("schedule.stages", stages, 1)
        self.epochs = epochs
        total = self.total_epochs(self.stages)
        if epochs > total:
            raise ConfigError(f"schedule=iwae with schedule.stages={self.stages} lasts {total} epochs but "
                              f"train.epochs={epochs}; set train.epochs={total} or more stages (stages 5: 121 "
                              f"epochs, 6: 364, 8: 3280)")
        self.ends = [self.total_epochs(i + 1) for i in range(self.stages)]  # the epoch index each stage ends at

    @staticmethod
    def total_epochs(stages: int) -> int:
        return sum(3**i for i in range(stages))  # (3^stages - 1) / 2

    def stage(self, epoch: int) -> int:
        return next((i for i, end in enumerate(self.ends) if epoch < end), self.stages - 1)

    def __call__(self, epoch: int) -> float:
        return 10.0 ** (-self.stage(epoch) / 7)


class Cosine:
    """Half a cosine from 1 down to ``min_factor`` over ``train.epochs``, after ``warmup_epochs`` of linear
    warm-up (epoch index w < warmup_epochs: factor (w + 1) / warmup_epochs); Loshchilov & Hutter (2017) without
    restarts. The curve is over ``train.epochs``: a run resumed with another ``train.epochs`` follows the new one.
    """

    def __init__(self, epochs: int, warmup_epochs: int = 0, min_factor: float = 0.0):
        self.epochs = epochs
        self.warmup_epochs = _int_at_least("schedule.warmup_epochs", warmup_epochs, 0)
        if self.warmup_epochs >= epochs:
            raise ConfigError(f"schedule.warmup_epochs must be < train.epochs={epochs}, got {warmup_epochs}")
        if isinstance(min_factor, bool) or not isinstance(min_factor, int | float) or not 0 <= min_factor <= 1:
            raise ConfigError(f"schedule.min_factor must be a number in [0, 1], got {min_factor!r}")
        self.min_factor = float(min_factor)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        t = (epoch - self.warmup_epochs) / (self.epochs - self.warmup_epochs)  # in [0, 1) for the run's epochs
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
