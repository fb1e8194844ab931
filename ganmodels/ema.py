"""Exponential moving average of the generator's weights, for sampling and evaluation.

G's weights oscillate from step to step as it chases D; the time average of those weights usually
gives visibly cleaner samples and better FID than the latest weights (Yazici et al. 2019, used by
ProGAN/StyleGAN/BigGAN). Train with the raw G, sample from :attr:`EMA.module`.

After every G step: ``ema.update(G)``; the averaged copy is ``ema.module`` (eval mode, no grads).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Averaged copy of ``model``: ``avg = decay * avg + (1 - decay) * param`` after each update.

    Parameters are averaged; buffers (BatchNorm running mean/var, ``num_batches_tracked``) are
    COPIED from the live model, since averaging running statistics of different weights is
    meaningless. With ``warmup=True`` the effective decay at update number ``step`` (0 for the first)
    is ``min(decay, (1 + step) / (10 + step))``: the average follows the fast-changing early weights
    closely instead of being dominated by the random initialisation for ~1/(1-decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.step = 0
        self._module = copy.deepcopy(model).eval().requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode, ``requires_grad=False``): use it for sampling."""
        return self._module

    def current_decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        if self.warmup:
            return min(self.decay, (1 + self.step) / (10 + self.step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current parameters into the average and copy its buffers."""
        decay = self.current_decay()
        ema_params = dict(self._module.named_parameters())
        for name, p in model.named_parameters():
            avg = ema_params[name]
            if avg.dtype.is_floating_point:
                avg.lerp_(p.detach().to(avg.dtype), 1.0 - decay)
            else:
                avg.copy_(p)
        ema_buffers = dict(self._module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        self.step += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averaged ones (e.g. for export)."""
        model.load_state_dict(self._module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Decay settings, update count and the averaged weights, for checkpoints."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "step": self.step,
            "module": {k: v.clone() for k, v in self._module.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into this EMA (the wrapped architecture must match)."""
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.step = int(state["step"])
        self._module.load_state_dict(state["module"])
