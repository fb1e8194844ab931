"""How many D and G steps to take per training iteration.

A fixed ratio (``d_steps=5, g_steps=1`` is the WGAN-GP recipe) keeps the critic near optimal so its
gradients are meaningful. The adaptive mode instead adds ``extra_d_steps`` only while D is losing
(its accuracy on real or on fake images, from the last logits, falls below ``threshold``), so D is
kept from falling behind without being trained to the point of saturating G.

Accuracy is read from the logits' sign (real: logit > 0, fake: logit < 0), which is meaningful for
the ``bce`` and ``hinge`` losses; a WGAN critic has no decision threshold, use a fixed ratio there.

Loop::

    d_steps, g_steps = schedule.plan()
    for _ in range(d_steps): ...; schedule.observe(real_logits, fake_logits)
    for _ in range(g_steps): ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["UpdateSchedule"]


class UpdateSchedule:
    """Decides ``(d_steps, g_steps)`` per iteration: fixed ratio, or fixed plus extra D steps when D is weak."""

    def __init__(
        self,
        d_steps: int = 1,
        g_steps: int = 1,
        adaptive: bool = False,
        threshold: float = 0.6,
        extra_d_steps: int = 1,
    ):
        if d_steps < 1 or g_steps < 0 or extra_d_steps < 0:
            raise ValueError("need d_steps >= 1, g_steps >= 0, extra_d_steps >= 0")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.d_steps = d_steps
        self.g_steps = g_steps
        self.adaptive = adaptive
        self.threshold = threshold
        self.extra_d_steps = extra_d_steps
        self.acc_real: float | None = None  # last observed accuracy of D on real images
        self.acc_fake: float | None = None
        self.iterations = 0
        self.extra_iterations = 0  # iterations that got extra D steps (for logging)

    @torch.no_grad()
    def observe(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        """Record D's accuracy on the latest real and fake logits."""
        self.acc_real = float((real_logits.detach() > 0).float().mean())
        self.acc_fake = float((fake_logits.detach() < 0).float().mean())

    def d_is_weak(self) -> bool:
        """True when the last observed accuracy on real or fake is below ``threshold``."""
        if self.acc_real is None or self.acc_fake is None:
            return False
        return min(self.acc_real, self.acc_fake) < self.threshold

    def plan(self) -> tuple[int, int]:
        """``(d_steps, g_steps)`` for the next iteration (counts it)."""
        d = self.d_steps
        if self.adaptive and self.d_is_weak():
            d += self.extra_d_steps
            self.extra_iterations += 1
        self.iterations += 1
        return d, self.g_steps

    def state_dict(self) -> dict[str, Any]:
        """Settings, last accuracies and counters, for checkpoints."""
        return {
            "d_steps": self.d_steps,
            "g_steps": self.g_steps,
            "adaptive": self.adaptive,
            "threshold": self.threshold,
            "extra_d_steps": self.extra_d_steps,
            "acc_real": self.acc_real,
            "acc_fake": self.acc_fake,
            "iterations": self.iterations,
            "extra_iterations": self.extra_iterations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        for key, value in state.items():
            if not hasattr(self, key):
                raise KeyError(f"unknown UpdateSchedule state key {key!r}")
            setattr(self, key, value)
