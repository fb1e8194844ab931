"""Unit tests for the GAN training tricks: losses, replay buffer, EMA, DiffAugment, update schedule."""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import pytest
import torch
from torch import nn

from ganmodels.adaptive import UpdateSchedule
from ganmodels.augment import diff_augment, parse_policy
from ganmodels.ema import EMA
from ganmodels.losses import (
    LabelSettings,
    d_loss_bce,
    d_loss_hinge,
    d_loss_wgan,
    g_loss_bce,
    g_loss_hinge,
    g_loss_wgan,
    get_losses,
    gradient_penalty,
    make_targets,
)
from ganmodels.replay import ReplayBuffer


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------- losses


def test_bce_losses_match_hand_computed_values() -> None:
    real = torch.tensor([0.0, 2.0])
    fake = torch.tensor([0.0, -1.0])
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    expected_d = (_softplus(0.0) + _softplus(-2.0)) / 2 + (_softplus(0.0) + _softplus(-1.0)) / 2
    assert d_loss_bce(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss_bce(fake).item() == pytest.approx((_softplus(0.0) + _softplus(1.0)) / 2, rel=1e-6)
    # (N, 1) logits are accepted, anything else is not
    assert d_loss_bce(real[:, None], fake[:, None]).item() == pytest.approx(expected_d, rel=1e-6)
    with pytest.raises(ValueError):
        g_loss_bce(torch.zeros(2, 3))


def test_bce_with_soft_targets_matches_manual_formula() -> None:
    labels = LabelSettings(real_range=(0.7, 0.9), fake_range=(0.0, 0.3))
    real, fake = torch.randn(16, generator=_gen(1)), torch.randn(16, generator=_gen(2))
    t_real = make_targets(16, True, labels, _gen(5))
    g = _gen(5)
    make_targets(16, True, labels, g)
    t_fake = make_targets(16, False, labels, g)

    def bce(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (-(t * torch.log(torch.sigmoid(x)) + (1 - t) * torch.log(1 - torch.sigmoid(x)))).mean()

    expected = bce(real, t_real) + bce(fake, t_fake)
    assert d_loss_bce(real, fake, labels, _gen(5)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_label_smoothing_ranges_and_reproducibility() -> None:
    labels = LabelSettings(real_range=(0.7, 0.95), fake_range=(0.0, 0.3))
    real_t = make_targets(10_000, True, labels, _gen(3))
    fake_t = make_targets(10_000, False, labels, _gen(4))
    assert real_t.min() >= 0.7 and real_t.max() <= 0.95 and real_t.std() > 0.05
    assert fake_t.min() >= 0.0 and fake_t.max() <= 0.3
    assert torch.equal(real_t, make_targets(10_000, True, labels, _gen(3)))
    assert not torch.equal(real_t, make_targets(10_000, True, labels, _gen(99)))
    one_sided = make_targets(100, True, LabelSettings(real_range=(0.9, 0.9)), _gen(0))
    assert torch.allclose(one_sided, torch.full((100,), 0.9))
    assert torch.equal(make_targets(100, False, LabelSettings(real_range=(0.9, 0.9)), _gen(0)), torch.zeros(100))


def test_plain_bce_does_not_touch_any_rng() -> None:
    g = _gen(0)
    before, global_before = g.get_state(), torch.get_rng_state()
    d_loss_bce(torch.zeros(8), torch.zeros(8), LabelSettings(real_range=(0.9, 0.9)), g)
    d_loss_bce(torch.zeros(8), torch.zeros(8), negative_logits=torch.zeros(3))
    assert torch.equal(g.get_state(), before) and torch.equal(torch.get_rng_state(), global_before)
    # random settings draw 3 numbers per target from the given generator only
    d_loss_bce(torch.zeros(8), torch.zeros(8), LabelSettings(flip_prob=0.1), g)
    assert not torch.equal(g.get_state(), before) and torch.equal(torch.get_rng_state(), global_before)


def test_targets_above_one_are_clamped_unless_disabled() -> None:
    wide = LabelSettings(real_range=(0.7, 1.2))
    clamped = make_targets(5000, True, wide, _gen(0))
    assert clamped.max() == 1.0 and clamped.min() >= 0.7
    raw = make_targets(5000, True, dataclasses.replace(wide, clamp_targets=False), _gen(0))
    assert raw.max() > 1.1
    # torch itself accepts targets above 1
    assert torch.isfinite(d_loss_bce(torch.zeros(4), torch.zeros(4), dataclasses.replace(wide, clamp_targets=False)))


@pytest.mark.parametrize("real", [True, False])
def test_flip_prob_flips_that_share(real: bool) -> None:
    n = 200_000
    targets = make_targets(n, real, LabelSettings(flip_prob=0.3), _gen(11))
    flipped = (targets == 0.0).float().mean() if real else (targets == 1.0).float().mean()
    assert flipped.item() == pytest.approx(0.3, abs=0.01)
    assert set(targets.unique().tolist()) == {0.0, 1.0}


def test_label_settings_validation() -> None:
    with pytest.raises(ValueError):
        LabelSettings(real_range=(1.0, 0.5))
    with pytest.raises(ValueError):
        LabelSettings(flip_prob=1.5)


def test_hinge_and_wgan_hand_computed_values() -> None:
    real = torch.tensor([0.5, 2.0])
    fake = torch.tensor([-2.0, 0.5])
    # hinge: relu(1 - real) = [0.5, 0], relu(1 + fake) = [0, 1.5]
    assert d_loss_hinge(real, fake).item() == pytest.approx(0.25 + 0.75)
    assert g_loss_hinge(fake).item() == pytest.approx(0.75)
    real_w, fake_w = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    assert d_loss_wgan(real_w, fake_w).item() == pytest.approx(-1.0 - 2.0)
    assert g_loss_wgan(fake_w).item() == pytest.approx(1.0)


def test_label_settings_rejected_outside_bce() -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="bce"):
        d_loss_hinge(x, x, LabelSettings(flip_prob=0.1))
    with pytest.raises(ValueError, match="bce"):
        d_loss_wgan(x, x, LabelSettings(real_range=(0.9, 0.9)))
    d_loss_hinge(x, x, LabelSettings())  # defaults are fine


@pytest.mark.parametrize("name", ["bce", "wgan-gp", "hinge"])
def test_negatives_called_real_raise_d_loss(name: str) -> None:
    d_loss, _ = get_losses(name)
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])
    base = d_loss(real, fake)
    called_real = d_loss(real, fake, negative_logits=torch.tensor([3.0, 4.0]))
    called_fake = d_loss(real, fake, negative_logits=torch.tensor([-3.0, -4.0]))
    heavier = d_loss(real, fake, negative_logits=torch.tensor([3.0, 4.0]), negative_weight=2.0)
    assert called_real > base
    assert called_real > called_fake
    assert heavier > called_real
    # gradient pushes negative logits down (towards "fake")
    neg = torch.tensor([3.0, 4.0], requires_grad=True)
    d_loss(real, fake, negative_logits=neg).backward()
    assert neg.grad is not None and (neg.grad > 0).all()


def test_bce_negative_value_is_weighted_bce_to_zero() -> None:
    real, fake, neg = torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 1.0])
    extra = d_loss_bce(real, fake, negative_logits=neg, negative_weight=0.5) - d_loss_bce(real, fake)
    assert extra.item() == pytest.approx(0.5 * _softplus(1.0), rel=1e-6)


def test_get_losses() -> None:
    assert get_losses("bce") == (d_loss_bce, g_loss_bce)
    assert get_losses("wgan-gp") == (d_loss_wgan, g_loss_wgan)
    assert get_losses("hinge") == (d_loss_hinge, g_loss_hinge)
    with pytest.raises(ValueError, match="unknown"):
        get_losses("lsgan")


class _LinearD(nn.Module):
    """D(x) = <w, x> (+ a per-class bias when conditional): its input gradient is exactly w."""

    def __init__(self, shape: tuple[int, ...], norm: float, classes: int = 0):
        super().__init__()
        w = torch.randn(math.prod(shape), generator=_gen(7))
        self.w = nn.Parameter(w / w.norm() * norm)
        self.emb = nn.Embedding(classes, 1) if classes else None
        self.calls_with_labels = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out = x.flatten(1) @ self.w
        if labels is not None:
            assert self.emb is not None
            self.calls_with_labels += 1
            out = out + self.emb(labels).squeeze(1)
        return out


def test_gradient_penalty_zero_for_unit_gradient_and_positive_otherwise() -> None:
    shape = (3, 4, 4)
    real, fake = torch.randn(8, *shape, generator=_gen(1)), torch.randn(8, *shape, generator=_gen(2))
    unit = _LinearD(shape, norm=1.0)
    assert gradient_penalty(unit, real, fake, generator=_gen(0)).item() == pytest.approx(0.0, abs=1e-8)
    double = _LinearD(shape, norm=2.0)
    # ||grad|| = 2 everywhere -> weight * (2 - 1)^2
    assert gradient_penalty(double, real, fake, weight=10.0, generator=_gen(0)).item() == pytest.approx(10.0, rel=1e-5)
    assert gradient_penalty(double, real, fake, weight=1.0).item() == pytest.approx(1.0, rel=1e-5)


def test_gradient_penalty_backpropagates_into_d_and_supports_labels() -> None:
    shape = (3, 4, 4)
    real, fake = torch.randn(6, *shape, generator=_gen(1)), torch.randn(6, *shape, generator=_gen(2))
    fake.requires_grad_(True)  # the penalty must not send gradients to G
    d = _LinearD(shape, norm=2.0, classes=5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    gp = gradient_penalty(d, real, fake, labels=labels, generator=_gen(0))
    gp.backward()
    assert d.calls_with_labels == 1
    assert d.w.grad is not None and d.w.grad.abs().sum() > 0
    # analytic: gp = 10 * (||w|| - 1)^2 -> d/dw = 20 * (||w|| - 1) * w / ||w||
    assert torch.allclose(d.w.grad, 20 * (2.0 - 1.0) * d.w.detach() / 2.0, atol=1e-4)
    assert fake.grad is None

    conv_d = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 2 * 2, 1))
    gp2 = gradient_penalty(conv_d, real, fake.detach(), generator=_gen(0))
    assert gp2.item() > 0
    gp2.backward()
    # biases do not affect the input gradient of a piecewise-linear D, so only the weights get a gradient
    assert conv_d[0].weight.grad is not None and conv_d[0].weight.grad.abs().sum() > 0
    assert conv_d[3].weight.grad is not None and conv_d[3].weight.grad.abs().sum() > 0


def test_gradient_penalty_reproducible_with_generator() -> None:
    real, fake = torch.randn(4, 2, 3, 3, generator=_gen(1)), torch.randn(4, 2, 3, 3, generator=_gen(2))
    d = nn.Sequential(nn.Flatten(), nn.Linear(18, 8), nn.Tanh(), nn.Linear(8, 1))
    a = gradient_penalty(d, real, fake, generator=_gen(3))
    b = gradient_penalty(d, real, fake, generator=_gen(3))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- replay buffer


def _images(values: list[float], shape: tuple[int, ...] = (1, 2, 2)) -> torch.Tensor:
    return torch.tensor(values).view(-1, *([1] * len(shape))).expand(-1, *shape).clone()


@pytest.mark.parametrize("mode", ["reservoir", "fifo"])
def test_replay_capacity(mode: str) -> None:
    buf = ReplayBuffer(10, _gen(0), mode=mode)  # type: ignore[arg-type]
    assert len(buf) == 0
    buf.push(_images([float(i) for i in range(4)]))
    assert len(buf) == 4 and buf.seen == 4
    for start in range(4, 100, 8):
        buf.push(_images([float(i) for i in range(start, start + 8)]))
    assert len(buf) == 10 and buf.seen == 100
    stored = set(buf.sample(500)[:, 0, 0, 0].tolist())
    assert len(stored) <= 10
    if mode == "fifo":
        assert stored == {float(i) for i in range(90, 100)}


def test_replay_reservoir_covers_history() -> None:
    buf = ReplayBuffer(100, _gen(1))
    for start in range(0, 2000, 50):
        buf.push(_images([float(i) for i in range(start, start + 50)]))
    assert buf._data is not None
    values = buf._data[:, 0, 0, 0]
    # a uniform sample of 0..1999: mean ~ 1000 (std of the mean ~ 58), both halves represented
    assert abs(values.mean().item() - 999.5) < 250
    assert (values < 1000).any() and (values >= 1000).any()


def test_replay_stores_detached_cpu_copies() -> None:
    buf = ReplayBuffer(4, _gen(0))
    x = torch.ones(2, 1, 2, 2, requires_grad=True)
    buf.push(x * 2)
    out = buf.sample(3)
    assert not out.requires_grad and out.device.type == "cpu"
    assert torch.equal(out, torch.full((3, 1, 2, 2), 2.0))


def test_replay_mix_share() -> None:
    buf = ReplayBuffer(16, _gen(0))
    fresh = -torch.ones(10, 1, 2, 2)
    assert buf.mix(fresh, 0.5) is fresh  # empty buffer: unchanged
    buf.push(_images([float(i) for i in range(16)]))
    for share, expected in [(0.0, 0), (0.3, 3), (0.5, 5), (1.0, 10)]:
        mixed = buf.mix(fresh, share)
        replaced = (mixed[:, 0, 0, 0] >= 0).sum().item()
        assert replaced == expected and mixed.shape == fresh.shape
    assert (fresh == -1).all()  # input untouched
    with pytest.raises(ValueError):
        buf.mix(fresh, 1.5)


def test_replay_mix_with_labels_keeps_pairs() -> None:
    buf = ReplayBuffer(8, _gen(0))
    buf.push(_images([float(i) for i in range(8)]), labels=torch.arange(8))
    fresh, fresh_labels = -torch.ones(6, 1, 2, 2), torch.full((6,), -1)
    mixed, mixed_labels = buf.mix_with_labels(fresh, fresh_labels, 0.5)
    replaced = mixed[:, 0, 0, 0] >= 0
    assert replaced.sum() == 3
    assert torch.equal(mixed[replaced, 0, 0, 0].long(), mixed_labels[replaced])
    assert (mixed_labels[~replaced] == -1).all()


@pytest.mark.parametrize("mode", ["reservoir", "fifo"])
def test_replay_state_round_trip_is_exact(mode: str) -> None:
    buf = ReplayBuffer(12, _gen(42), mode=mode)  # type: ignore[arg-type]
    for start in range(0, 40, 5):
        buf.push(_images([float(i) for i in range(start, start + 5)]))
    # through torch.save/torch.load, as a checkpoint would
    raw = io.BytesIO()
    torch.save(buf.state_dict(), raw)
    raw.seek(0)
    state = torch.load(raw)

    def future(b: ReplayBuffer) -> list[torch.Tensor]:
        out = [b.sample(7), b.mix(-torch.ones(8, 1, 2, 2), 0.5)]
        b.push(_images([float(i) for i in range(100, 120)]))
        out.append(b.sample(20))
        return out

    expected = future(buf)
    restored = ReplayBuffer(12, _gen(0), mode=mode)  # type: ignore[arg-type]
    restored.load_state_dict(state)
    got = future(restored)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    assert restored.seen == buf.seen and len(restored) == len(buf)
    with pytest.raises(ValueError):
        ReplayBuffer(13, _gen(0), mode=mode).load_state_dict(state)  # type: ignore[arg-type]


# ---------------------------------------------------------------- EMA


def _small_g() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _calibration(update: int) -> list[tuple[torch.Tensor]]:
    """Four batches of 16 inputs, a different draw for every update count (as the Trainer's are)."""
    g = _gen(1000 + update)
    return [(torch.randn(16, 3, generator=g) * 5 + 3,) for _ in range(4)]


def test_ema_matches_analytic_average_with_constant_model() -> None:
    model = _small_g()
    p0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    ema = EMA(model, decay=0.9, calibrate_inputs=_calibration)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.5)
    k = 7
    for _ in range(k):
        ema.update(model)
    for name, avg in ema.module.named_parameters():
        expected = 1.5 + 0.9**k * (p0[name] - 1.5)
        assert torch.allclose(avg, expected, atol=1e-6), name
    assert ema.step == k
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_ema_warmup_decay() -> None:
    model = _small_g()
    p0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    ema = EMA(model, decay=0.999, warmup=True, calibrate_inputs=_calibration)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-1.0)
    factor = 1.0
    for step in range(5):
        assert ema.current_decay() == pytest.approx(min(0.999, (1 + step) / (10 + step)))
        factor *= (1 + step) / (10 + step)
        ema.update(model)
    for name, avg in ema.module.named_parameters():
        assert torch.allclose(avg, -1.0 + factor * (p0[name] + 1.0), atol=1e-6)


def test_ema_batchnorm_statistics_are_its_own() -> None:
    """The averaged net's BatchNorm statistics are measured on the averaged weights (standing statistics over
    the calibration inputs), never copied from the live net, whose statistics belong to other weights."""
    model = _small_g()
    ema = EMA(model, decay=0.5, calibrate_inputs=_calibration)
    model.train()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    model(torch.randn(16, 3, generator=_gen(0)) * 5 + 3)  # live statistics, of the live weights
    ema.update(model)
    net = ema.module
    with torch.no_grad():
        pre = [net[0](x) for (x,) in _calibration(1)]
    assert torch.allclose(net[1].running_mean, torch.cat(pre).mean(0), atol=1e-5)
    assert torch.allclose(net[1].running_var, torch.stack([p.var(0) for p in pre]).mean(0), atol=1e-4)
    assert not torch.allclose(net[1].running_mean, model[1].running_mean, atol=1e-3)
    assert net[1].momentum == model[1].momentum and not net.training


def test_ema_calibrates_once_per_update_and_copies_other_buffers() -> None:
    calls: list[int] = []

    def inputs(update: int) -> list[tuple[torch.Tensor]]:
        calls.append(update)
        return _calibration(update)

    model = nn.Sequential(_small_g(), nn.Flatten())
    model.register_buffer("scale", torch.tensor(1.0))
    ema = EMA(model, decay=0.9, calibrate_inputs=inputs)
    model.scale.fill_(2.0)
    ema.update(model)
    ema.module, ema.module  # noqa: B018  (two reads, one calibration)
    ema.update(model)
    ema.update(model)
    ema.module  # noqa: B018
    assert calls == [1, 3]
    assert ema.module.scale.item() == 2.0

    target = _small_g()
    plain = EMA(_small_g(), decay=0.9, calibrate_inputs=_calibration)
    plain.update(_small_g())
    plain.copy_to(target)
    for (name, p), (_, ep) in zip(target.state_dict().items(), plain.module.state_dict().items(), strict=True):
        assert torch.equal(p, ep), name


def test_ema_of_a_batchnorm_net_needs_calibration_inputs() -> None:
    with pytest.raises(ValueError, match="needs calibrate_inputs"):
        EMA(_small_g(), decay=0.9)
    EMA(nn.Linear(3, 2), decay=0.9)  # nothing to calibrate: fine


def test_ema_state_round_trip() -> None:
    model = _small_g()
    ema = EMA(model, decay=0.95, warmup=True, calibrate_inputs=_calibration)
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (i + 1))
        ema.update(model)
    state = copy.deepcopy(ema.state_dict())
    other = EMA(_small_g(), decay=0.5, calibrate_inputs=_calibration)
    other.load_state_dict(state)
    assert other.step == 3 and other.decay == 0.95 and other.warmup
    for (name, a), (_, b) in zip(ema.module.state_dict().items(), other.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ema.update(model)
    other.update(model)
    for a, b in zip(ema.module.parameters(), other.module.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- DiffAugment


def test_diff_augment_shapes_and_identity() -> None:
    x = torch.randn(4, 3, 16, 16, generator=_gen(0))
    for policy in ["color", "translation", "cutout", "color,translation,cutout"]:
        assert diff_augment(x, policy, _gen(1)).shape == x.shape
    assert diff_augment(x, "", _gen(1)) is x
    assert diff_augment(x, " , ") is x
    assert not torch.equal(diff_augment(x, generator=_gen(1)), x)


def test_diff_augment_policy_parsing() -> None:
    assert parse_policy("color,translation,cutout") == ["color", "translation", "cutout"]
    assert parse_policy(" color , cutout ") == ["color", "cutout"]
    assert parse_policy("") == []
    with pytest.raises(ValueError, match="unknown"):
        parse_policy("color,rotate")
    with pytest.raises(ValueError):
        diff_augment(torch.zeros(3, 8, 8), "color")


def test_diff_augment_is_differentiable() -> None:
    x = torch.randn(4, 3, 16, 16, generator=_gen(0), requires_grad=True)
    out = diff_augment(x, "color,translation,cutout", _gen(2))
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # gradients flow through a generator-like module too
    lin = nn.Linear(8, 3 * 8 * 8)
    fake = lin(torch.randn(2, 8, generator=_gen(3))).view(2, 3, 8, 8)
    diff_augment(fake, generator=_gen(4)).mean().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_diff_augment_deterministic_with_seeded_generator() -> None:
    x = torch.randn(4, 3, 16, 16, generator=_gen(0))
    a = diff_augment(x, generator=_gen(5))
    b = diff_augment(x, generator=_gen(5))
    c = diff_augment(x, generator=_gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_diff_augment_translation_and_cutout_geometry() -> None:
    ones = torch.ones(64, 1, 16, 16)
    shifted = diff_augment(ones, "translation", _gen(0))
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}  # zero padding, no interpolation
    zero_share = (shifted == 0).float().flatten(1).mean(1)
    # at most a 2-pixel shift in each direction on 16 pixels
    assert zero_share.max() <= 1 - (14 * 14) / 256 + 1e-6 and zero_share.max() > 0
    cut = diff_augment(ones, "cutout", _gen(0))
    cut_share = (cut == 0).float().flatten(1).mean(1)
    assert cut_share.max() == pytest.approx(0.25) and cut_share.min() > 0


# ---------------------------------------------------------------- update schedule


def test_update_schedule_fixed_ratio() -> None:
    sched = UpdateSchedule(d_steps=5, g_steps=1)
    assert sched.plan() == (5, 1)
    sched.observe(torch.full((8,), -3.0), torch.full((8,), 3.0))  # D always wrong
    assert sched.plan() == (5, 1)  # not adaptive: ratio unchanged
    assert sched.iterations == 2 and sched.extra_iterations == 0


def test_update_schedule_adaptive() -> None:
    sched = UpdateSchedule(d_steps=1, g_steps=2, adaptive=True, threshold=0.6)
    assert sched.plan() == (1, 2)  # nothing observed yet
    # real accuracy 0.5 < 0.6 -> extra D step
    sched.observe(torch.tensor([1.0, 1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, -1.0, -1.0]))
    assert sched.acc_real == pytest.approx(0.5) and sched.acc_fake == pytest.approx(1.0)
    assert sched.plan() == (2, 2)
    # fake accuracy 0.25 -> extra D step
    sched.observe(torch.ones(4), torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert sched.plan() == (2, 2)
    # both >= 0.6 -> back to the base ratio
    sched.observe(torch.tensor([1.0, 1.0, 1.0, -1.0]), torch.tensor([-1.0, -1.0, -1.0, 1.0]))
    assert sched.plan() == (1, 2)
    assert sched.extra_iterations == 2 and sched.iterations == 4

    state = copy.deepcopy(sched.state_dict())
    other = UpdateSchedule()
    other.load_state_dict(state)
    assert other.state_dict() == sched.state_dict()
    sched.observe(torch.zeros(4) - 1, torch.zeros(4) - 1)
    other.observe(torch.zeros(4) - 1, torch.zeros(4) - 1)
    assert other.plan() == sched.plan() == (2, 2)
    with pytest.raises(ValueError):
        UpdateSchedule(d_steps=0)
