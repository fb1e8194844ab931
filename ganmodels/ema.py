"""Exponential moving average of the generator's weights, for sampling and evaluation.

G's weights oscillate from step to step as it chases D; the time average of those weights usually
gives visibly cleaner samples and better FID than the latest weights (Yazici et al. 2019, used by
ProGAN/StyleGAN/BigGAN). Train with the raw G, sample from :attr:`EMA.module`.

After every G step: ``ema.update(G)``; the averaged copy is ``ema.module`` (eval mode, no grads).

BatchNorm statistics belong to the weights they were measured with, so the averaged network gets its
own: ``ema.module`` first recomputes them ("standing statistics", Brock et al. 2019, BigGAN) by running
the averaged weights in train mode over fresh inputs from ``calibrate_inputs``, once per update count.
Copying the live G's running statistics instead (what this module did until issue 13) normalises the
averaged weights' activations with another network's mean and variance: early in training its
samples were dark, grid-patterned textures far worse than either the raw G or the same weights with
their own statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["EMA", "standing_stats"]

# What ``calibrate_inputs(step)`` yields: the positional arguments of one forward pass, e.g. ``(z, labels)``.
CalibrationInputs = Callable[[int], Iterable[tuple[Any, ...]]]
_BN = ("running_mean", "running_var", "num_batches_tracked")


def _batch_norms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def standing_stats(net: nn.Module, inputs: Iterable[tuple[Any, ...]]) -> None:
    """Replace ``net``'s BatchNorm running statistics by their plain average over forward passes on ``inputs``.

    Cumulative (``momentum=None``) rather than exponential averaging, so every batch counts equally and
    the result does not depend on the order. Leaves ``net`` in eval mode.
    """
    norms = _batch_norms(net)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    try:
        for args in inputs:
            net(*args)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.eval()


class EMA:
    """Averaged copy of ``model``: ``avg = decay * avg + (1 - decay) * param`` after each update.

    Parameters are averaged. BatchNorm running statistics are recomputed for the averaged weights
    (:func:`standing_stats` over ``calibrate_inputs(step)``) when :attr:`module` is read after an
    update; other buffers are copied from the live model. Without ``calibrate_inputs`` a network with
    BatchNorm cannot be averaged (its statistics would be wrong), so that is an error.

    With ``warmup=True`` the effective decay at update number ``step`` (0 for the first) is
    ``min(decay, (1 + step) / (10 + step))``: the average follows the fast-changing early weights
    closely instead of being dominated by the random initialisation for ~1/(1-decay) steps.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        warmup: bool = False,
        calibrate_inputs: CalibrationInputs | None = None,
    ):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if calibrate_inputs is None and _batch_norms(model):
            raise ValueError("a model with BatchNorm needs calibrate_inputs to give the average its own statistics")
        self.decay = decay
        self.warmup = warmup
        self.step = 0
        self.calibrate_inputs = calibrate_inputs
        self._module = copy.deepcopy(model).eval().requires_grad_(False)
        self._calibrated_at: int | None = None
        norms = set(_batch_norms(self._module))
        self._own_buffers = {f"{n}.{b}" for n, m in self._module.named_modules() if m in norms for b in _BN}

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode, ``requires_grad=False``) with its own BatchNorm statistics: sample
        from this. The statistics are recomputed here, once per update count (deterministically, from
        ``calibrate_inputs(step)``), so reading it twice costs nothing and a resumed run gets the same."""
        if self.calibrate_inputs is not None and self._calibrated_at != self.step:
            standing_stats(self._module, self.calibrate_inputs(self.step))
            self._calibrated_at = self.step
        return self._module

    def current_decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        if self.warmup:
            return min(self.decay, (1 + self.step) / (10 + self.step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current parameters into the average and copy its buffers other than BatchNorm's."""
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
            if name not in self._own_buffers:
                ema_buffers[name].copy_(b)
        self.step += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averaged ones (e.g. for export)."""
        model.load_state_dict(self.module.state_dict())

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
        self._calibrated_at = None  # recomputed on first use, exactly as the saving run would have
