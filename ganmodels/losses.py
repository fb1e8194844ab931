"""GAN losses on discriminator LOGITS (shape ``(N,)``), with the usual stabilisation tricks.

Every loss takes raw logits, never probabilities: ``binary_cross_entropy_with_logits`` is numerically
stable where ``log(sigmoid(x))`` is not. Three families, picked by name with :func:`get_losses`:

* ``"bce"``: the original (non-saturating) GAN; the one that label smoothing and noisy labels apply to.
* ``"wgan-gp"``: Wasserstein critic plus :func:`gradient_penalty`; smooth gradients even when D wins.
* ``"hinge"``: margin loss (SAGAN/BigGAN); D stops pushing once a sample is beyond the margin.

Discriminator losses are the SUM of the real and fake terms (each a batch mean), as in DCGAN.

Extra negatives: ``negative_logits`` are D's logits on images of a null class ("not a dog"), pushed
to the fake side with ``negative_weight``, so that D learns the class boundary and not only
"real photo vs generated image".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DLoss",
    "GLoss",
    "LabelSettings",
    "d_loss_bce",
    "d_loss_hinge",
    "d_loss_wgan",
    "g_loss_bce",
    "g_loss_hinge",
    "g_loss_wgan",
    "get_losses",
    "gradient_penalty",
    "make_targets",
    "r1_penalty",
]


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """Targets for D's BCE loss: soft labels and noisy (flipped) labels.

    * ``real_range`` / ``fake_range``: soft labels drawn uniformly per sample from the closed range.
      One-sided smoothing (``real_range=(0.9, 0.9)``) stops D from becoming over-confident on real
      data, which keeps its gradients to G useful (Salimans et al. 2016); two-sided ranges such as
      real ``(0.7, 1.2)`` / fake ``(0.0, 0.3)`` add per-sample noise as well.
    * ``flip_prob``: share of D's targets swapped real<->fake (a flipped real sample gets a target
      drawn from ``fake_range`` and vice versa); helps when D overpowers G early, since it makes D
      make mistakes and slows it down.
    * ``clamp_targets``: clamp the drawn targets to ``[0, 1]`` (default). Torch accepts targets
      outside ``[0, 1]`` but BCE is then unbounded below: for a target ``t > 1`` the loss tends to
      ``-(t - 1) * logit -> -inf``, so D is rewarded for pushing real logits to infinity. With
      clamping, ``real_range=(0.7, 1.2)`` means "uniform on [0.7, 1.2], then values above 1 become 1".
    """

    real_range: tuple[float, float] = (1.0, 1.0)
    fake_range: tuple[float, float] = (0.0, 0.0)
    flip_prob: float = 0.0
    clamp_targets: bool = True

    def __post_init__(self) -> None:
        for name in ("real_range", "fake_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    @property
    def is_default(self) -> bool:
        """True when these settings give hard 1/0 targets with no flipping (plain BCE)."""
        return self == LabelSettings(clamp_targets=self.clamp_targets)


def _as_logits(logits: Tensor, name: str) -> Tensor:
    """Accept ``(N,)`` logits, or ``(N, 1)`` as many discriminators emit; reject anything else."""
    if logits.ndim == 1:
        return logits
    if logits.ndim >= 1 and logits.numel() == logits.shape[0]:
        return logits.reshape(-1)
    raise ValueError(f"{name} must have shape (N,), got {tuple(logits.shape)}")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    """``n`` draws from U[lo, hi] on the generator's device (CPU when no generator)."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=device)
    return lo + (hi - lo) * u


def make_targets(
    n: int,
    real: bool,
    labels: LabelSettings,
    generator: torch.Generator | None = None,
    *,
    allow_flip: bool = True,
) -> Tensor:
    """D's BCE targets for ``n`` real (``real=True``) or fake samples, on the generator's device.

    Consumes exactly ``3 * n`` random numbers from ``generator`` (own range, other range, flip
    coin) whenever any randomness is involved, and none when the targets are constant (degenerate
    own range and no flipping, e.g. the default hard labels): plain BCE never touches an RNG, not
    even the global one when ``generator`` is None.
    """
    own, other = (labels.real_range, labels.fake_range) if real else (labels.fake_range, labels.real_range)
    flip = allow_flip and labels.flip_prob > 0
    if own[0] == own[1] and not flip:
        device = generator.device if generator is not None else torch.device("cpu")
        value = min(max(own[0], 0.0), 1.0) if labels.clamp_targets else own[0]
        return torch.full((n,), float(value), device=device)
    targets = _uniform(n, *own, generator)
    swapped = _uniform(n, *other, generator)
    coin = _uniform(n, 0.0, 1.0, generator)
    if flip:
        targets = torch.where(coin < labels.flip_prob, swapped, targets)
    if labels.clamp_targets:
        targets = targets.clamp(0.0, 1.0)
    return targets


def d_loss_bce(
    real_logits: Tensor,
    fake_logits: Tensor,
    labels: LabelSettings | None = None,
    generator: torch.Generator | None = None,
    *,
    negative_logits: Tensor | None = None,
    negative_weight: float = 1.0,
) -> Tensor:
    """Standard GAN discriminator loss: BCE(real, 1) + BCE(fake, 0) (+ weight * BCE(negatives, 0)).

    ``labels`` adds soft/noisy targets (see :class:`LabelSettings`); targets are drawn from
    ``generator`` (CPU generator recommended, targets are then moved to the logits' device).
    Negatives get fake-range targets and are never flipped (flipping would teach "null class is real").
    """
    real_logits = _as_logits(real_logits, "real_logits")
    fake_logits = _as_logits(fake_logits, "fake_logits")
    labels = labels if labels is not None else LabelSettings()
    device, dtype = real_logits.device, real_logits.dtype
    t_real = make_targets(real_logits.shape[0], True, labels, generator).to(device, dtype)
    t_fake = make_targets(fake_logits.shape[0], False, labels, generator).to(device, dtype)
    loss = F.binary_cross_entropy_with_logits(real_logits, t_real) + F.binary_cross_entropy_with_logits(
        fake_logits, t_fake
    )
    if negative_logits is not None:
        negative_logits = _as_logits(negative_logits, "negative_logits")
        t_neg = make_targets(negative_logits.shape[0], False, labels, generator, allow_flip=False)
        loss = loss + negative_weight * F.binary_cross_entropy_with_logits(negative_logits, t_neg.to(device, dtype))
    return loss


def g_loss_bce(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: G maximises log D(G(z)), i.e. BCE(fake, 1); strong gradients early on.

    Targets are always hard 1 (smoothing the generator's targets would only weaken its signal).
    """
    fake_logits = _as_logits(fake_logits, "fake_logits")
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def _reject_label_settings(labels: LabelSettings | None, loss: str) -> None:
    if labels is not None and not labels.is_default:
        raise ValueError(f"label smoothing / flipping only applies to the 'bce' loss, not {loss!r}")


def d_loss_wgan(
    real_logits: Tensor,
    fake_logits: Tensor,
    labels: LabelSettings | None = None,
    generator: torch.Generator | None = None,
    *,
    negative_logits: Tensor | None = None,
    negative_weight: float = 1.0,
) -> Tensor:
    """Wasserstein critic loss ``mean(fake) - mean(real)`` (+ weight * mean(negatives)).

    Use with :func:`gradient_penalty` (WGAN-GP): gives useful gradients even when D is far ahead,
    and reduces mode collapse. ``labels``/``generator`` exist for a uniform signature; only default
    label settings are accepted. Negatives' scores are pushed down, bounded only by the penalty.
    """
    _reject_label_settings(labels, "wgan-gp")
    loss = _as_logits(fake_logits, "fake_logits").mean() - _as_logits(real_logits, "real_logits").mean()
    if negative_logits is not None:
        loss = loss + negative_weight * _as_logits(negative_logits, "negative_logits").mean()
    return loss


def g_loss_wgan(fake_logits: Tensor) -> Tensor:
    """Wasserstein generator loss ``-mean(critic(fake))``."""
    return -_as_logits(fake_logits, "fake_logits").mean()


def d_loss_hinge(
    real_logits: Tensor,
    fake_logits: Tensor,
    labels: LabelSettings | None = None,
    generator: torch.Generator | None = None,
    *,
    negative_logits: Tensor | None = None,
    negative_weight: float = 1.0,
) -> Tensor:
    """Hinge loss ``mean(relu(1 - real)) + mean(relu(1 + fake))`` (+ weight * mean(relu(1 + negatives))).

    Helps with spectral-norm discriminators (SAGAN/BigGAN): D ignores samples already beyond the
    margin, so it does not overfit confidently classified images. Only default labels accepted.
    """
    _reject_label_settings(labels, "hinge")
    real_logits = _as_logits(real_logits, "real_logits")
    fake_logits = _as_logits(fake_logits, "fake_logits")
    loss = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if negative_logits is not None:
        loss = loss + negative_weight * F.relu(1.0 + _as_logits(negative_logits, "negative_logits")).mean()
    return loss


def g_loss_hinge(fake_logits: Tensor) -> Tensor:
    """Hinge generator loss ``-mean(D(fake))`` (no margin on G's side)."""
    return -_as_logits(fake_logits, "fake_logits").mean()


def gradient_penalty(
    D: Callable[..., Tensor],
    real: Tensor,
    fake: Tensor,
    labels: Tensor | None = None,
    weight: float = 10.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP penalty ``weight * mean((||grad_x D(x_hat)||_2 - 1)^2)`` on random interpolates.

    Enforces the critic's 1-Lipschitz constraint softly (Gulrajani et al. 2017), replacing weight
    clipping. ``x_hat = eps * real + (1 - eps) * fake`` with one ``eps ~ U[0, 1]`` per sample drawn
    from ``generator``. ``D`` is called as ``D(x_hat, labels)`` when ``labels`` is given (conditional
    D; interpolate between a real and a fake sample of the same class), else ``D(x_hat)``. The graph
    is kept (``create_graph=True``) so the penalty backpropagates into D's parameters.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    n = real.shape[0]
    eps = _uniform(n, 0.0, 1.0, generator).to(real.device, real.dtype)
    eps = eps.view(n, *([1] * (real.ndim - 1)))
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    out = D(x_hat, labels) if labels is not None else D(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    # The small constant keeps the sqrt differentiable where the gradient is exactly zero.
    norm = torch.sqrt(grad.reshape(n, -1).pow(2).sum(dim=1) + 1e-12)
    return weight * (norm - 1.0).pow(2).mean()


def r1_penalty(real_logits: Tensor, real: Tensor, gamma: float) -> Tensor:
    """R1 penalty ``gamma / 2 * E[||grad_x D(x)||^2]`` on real images (Mescheder et al. 2018).

    Unregularised GAN training circles around its equilibrium instead of converging; penalising D's
    gradient on the reals makes it converge, and keeps D from sharpening around memorised training
    images (StyleGAN2-ADA's companion to ADA). ``real`` is the tensor D's input was computed from, with
    ``requires_grad`` set before D's forward (the un-augmented batch when augmentation sits in between,
    as in StyleGAN2-ADA); ``real_logits`` are D's logits on it. For lazy regularisation every k steps
    pass ``gamma * k``. The graph is kept, so the penalty backpropagates into D's parameters, through a
    DDP forward too: ``autograd.grad`` accumulates no parameter gradient, so DDP's all-reduce hooks fire
    once per parameter in the final backward, with both terms' gradients summed.

    Under AMP the input gradient is taken unscaled: scaling it by the GradScaler's factor (2^16 at
    first) can overflow float16, and the trainer stops on a non-finite loss; the per-pixel input
    gradients of a spectrally normalised D are far inside float16's range.
    """
    logits = _as_logits(real_logits, "real_logits")
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return 0.5 * gamma * grad.float().reshape(grad.shape[0], -1).square().sum(dim=1).mean()


DLoss = Callable[..., Tensor]
GLoss = Callable[[Tensor], Tensor]

_LOSSES: dict[str, tuple[DLoss, GLoss]] = {
    "bce": (d_loss_bce, g_loss_bce),
    "wgan-gp": (d_loss_wgan, g_loss_wgan),
    "hinge": (d_loss_hinge, g_loss_hinge),
}


def get_losses(name: str) -> tuple[DLoss, GLoss]:
    """``(d_loss, g_loss)`` for ``"bce"`` | ``"wgan-gp"`` | ``"hinge"``.

    All d-losses share the signature ``(real_logits, fake_logits, labels=None, generator=None, *,
    negative_logits=None, negative_weight=1.0)``. For ``"wgan-gp"`` the caller adds
    :func:`gradient_penalty` itself (it needs D and the images, not just logits).
    """
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown GAN loss {name!r}; choose from {sorted(_LOSSES)}") from None
