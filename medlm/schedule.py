"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

One function for every loop: ``medlm.trainer.train_local`` sets the rate itself each step, the Ray
Train workers hand it to DeepSpeed as a ``LambdaLR`` factor (``base_lr=1``, ``min_lr`` as a fraction
of the rate) so its position is saved in DeepSpeed checkpoints and a resumed run continues the curve.
"""

from __future__ import annotations

import math


def cosine_lr(step: int, *, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """The rate after ``step`` optimizer steps: linear warmup over ``warmup`` steps, cosine to ``min_lr``
    at ``total``, flat after."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
