"""Small-data tricks: ADA (ganmodels.ada) transforms and p controller, the R1 penalty, their TrainConfig keys,
their use in the Trainer, and both under DDP (torchrun, gloo, 2 ranks) with the ResNet nets."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn

import ganmodels.train as train_mod
from ganmodels.ada import TRANSFORMS, AdaptiveAugment, augment
from ganmodels.checkpoint import list_checkpoints, load_checkpoint
from ganmodels.losses import r1_penalty
from ganmodels.train import TrainConfig, Trainer
from tests.test_train import CLASSES, StepData, run, tiny_config
from tests.test_train_cli import only_json_line, torchrun
from tests.tiny_dataset import tiny_experiment, write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 16, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random images with no symmetry, so every flip, rotation or shift changes them."""
    return torch.rand(n, 3, size, size, generator=_gen(seed)) * 2 - 1


# ---- ADA transforms ---------------------------------------------------------------------------------------


def test_p_zero_is_the_identity_and_draws_nothing() -> None:
    x, g = _images(), _gen(1)
    before = g.get_state()
    assert augment(x, 0.0, g) is x
    assert torch.equal(g.get_state(), before)
    assert AdaptiveAugment()(x, g) is x  # a fresh controller starts at p = 0


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_unselected_samples_are_untouched(name: str) -> None:
    x = _images()
    mask = torch.arange(16) % 2 == 0
    out = TRANSFORMS[name](x, mask, _gen(2))
    assert torch.equal(out[~mask], x[~mask])
    assert not torch.equal(out[mask], x[mask])


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_each_transform_is_differentiable(name: str) -> None:
    x = _images().requires_grad_(True)
    out = TRANSFORMS[name](x, torch.ones(16, dtype=torch.bool), _gen(3))
    assert out.shape == x.shape
    (out * torch.randn(out.shape, generator=_gen(4))).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()  # every sample's gradient reaches its input


def test_geometric_transforms_move_whole_pixels() -> None:
    x, on = _images(), torch.ones(16, dtype=torch.bool)
    assert torch.equal(TRANSFORMS["xflip"](x, on, _gen(0)), x.flip(3))
    rotated = TRANSFORMS["rotate90"](x, on, _gen(0))
    ks = [next(k for k in range(4) if torch.equal(rotated[i], torch.rot90(x[i], k, dims=(1, 2)))) for i in range(16)]
    assert set(ks) == {0, 1, 2, 3}  # a uniform k over 16 samples hits all four here
    shifted = TRANSFORMS["translate"](x, on, _gen(0))
    padded = nn.functional.pad(x, [2, 2, 2, 2], mode="reflect")  # 1/8 of 16 px: at most 2 px
    shifts = []
    for i in range(16):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(shifted[i], padded[i, :, 2 - dy : 18 - dy, 2 - dx : 18 - dx])]  # fmt: skip
        assert found, f"sample {i} is not a reflect-padded shift of at most 2 px"
        shifts.append(found[0])
    assert len(set(shifts)) > 3


def test_color_transforms() -> None:
    x, on = _images(), torch.ones(16, dtype=torch.bool)
    offset = TRANSFORMS["brightness"](x, on, _gen(0)) - x
    assert torch.allclose(offset, offset[:, :1, :1, :1].expand_as(offset), atol=1e-6)  # one offset per sample
    assert offset[:, 0, 0, 0].std() == pytest.approx(0.2, rel=0.5)
    ratio = TRANSFORMS["contrast"](x, on, _gen(0)) / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), rtol=1e-4)
    sat = TRANSFORMS["saturation"](x, on, _gen(0))
    torch.testing.assert_close(sat.mean(dim=1), x.mean(dim=1))  # grey (the channel mean) is kept
    assert not torch.allclose(sat, x)


def test_p_one_changes_every_sample_deterministically() -> None:
    x = _images()
    out = augment(x, 1.0, _gen(5))
    assert (out - x).flatten(1).abs().amax(1).min() > 0
    assert torch.equal(out, augment(x, 1.0, _gen(5)))
    assert not torch.equal(out, augment(x, 1.0, _gen(6)))
    # The draws do not depend on p, so the stream stays in step whatever the p history is.
    a, b = _gen(7), _gen(7)
    augment(x, 0.3, a)
    augment(x, 0.9, b)
    assert torch.equal(a.get_state(), b.get_state())
    with pytest.raises(ValueError, match="square"):
        augment(torch.zeros(2, 3, 8, 16), 0.5, _gen(0))


def test_ada_p_selects_that_share_of_samples() -> None:
    x = _images(n=2000, size=8)
    changed = (augment(x, 0.2, _gen(8)) != x).flatten(1).any(1).float().mean().item()
    # Unchanged: none of 5 always-effective transforms (0.8^5) and no effective rotation or shift, each
    # selected with 0.2 but a no-op a quarter of the time (k = 0; a 0 px shift): 0.8^5 * 0.85^2 = 0.237.
    assert changed == pytest.approx(1 - 0.237, abs=0.04)


# ---- the p controller -------------------------------------------------------------------------------------


def _observe(ada: AdaptiveAugment, signs: list[float], reduce=None) -> None:
    ada.observe(torch.tensor(signs) * 3.0, reduce)


def test_p_rises_when_d_is_overconfident_on_reals_and_falls_otherwise() -> None:
    ada = AdaptiveAugment(target=0.6, interval=2, kimg=0.1)  # 100 images for a full sweep
    _observe(ada, [1, 1, 1, -1])
    assert ada.p == 0.0 and ada.rt is None  # nothing before the interval is complete
    _observe(ada, [1, 1, 1, 1])  # r_t = 6/8 = 0.75 > 0.6: D is overfitting
    assert ada.rt == 0.75 and ada.p == pytest.approx(8 / 100)
    for _ in range(2):
        _observe(ada, [1, 1, 1, 1])
    assert ada.p == pytest.approx(16 / 100)
    for _ in range(2):
        _observe(ada, [1, -1, 1, -1])  # r_t = 0 < 0.6
    assert ada.rt == 0.0 and ada.p == pytest.approx(8 / 100)
    for _ in range(6):
        _observe(ada, [-1, -1, -1, -1])
    assert ada.rt == -1.0 and ada.p == 0.0  # clamped at 0


def test_p_stays_below_one() -> None:
    ada = AdaptiveAugment(target=0.5, interval=1, kimg=0.001)  # one image sweeps p over [0, 1]
    _observe(ada, [1, 1])
    assert 0.99 < ada.p < 1.0


def test_controller_sums_the_sign_statistics_over_ranks() -> None:
    """``reduce`` adds the other ranks' totals; r_t and the p step are then those of all ranks."""
    other_rank = torch.tensor([-4.0, 4.0], dtype=torch.float64)  # signs, images: r_t = -1 there

    def all_reduce(totals: torch.Tensor) -> None:
        totals += other_rank

    ada = AdaptiveAugment(target=0.6, interval=1, kimg=0.1)
    _observe(ada, [1, 1, 1, 1], all_reduce)  # alone: r_t = 1 > 0.6, p would rise
    assert ada.rt == 0.0 and ada.p == 0.0
    ada.p = 0.5
    _observe(ada, [1, 1, 1, 1], lambda t: t.mul_(2))  # a twin rank: the same r_t, twice the images
    assert ada.rt == 1.0 and ada.p == pytest.approx(0.5 + 8 / 100)


def test_controller_state_round_trip_mid_interval() -> None:
    a = AdaptiveAugment(target=0.6, interval=3, kimg=0.1)
    for signs in ([1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, -1, 1, 1]):
        _observe(a, signs)
    b = AdaptiveAugment(target=0.6, interval=3, kimg=0.1)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert a.p == pytest.approx(0.12) and (a.rt, a._signs, a._count, a._steps) == (1.0, 2.0, 4.0, 1)
    for ada in (a, b):
        for signs in ([-1, -1, -1, -1], [1, 1, -1, -1]):
            _observe(ada, signs)
    assert a.state_dict() == b.state_dict()
    assert a.rt == pytest.approx(-2 / 12) and a.p == pytest.approx(0.0)  # the interval spans the save


def test_controller_validation() -> None:
    for kwargs in ({"target": 0.0}, {"target": 1.0}, {"interval": 0}, {"kimg": 0.0}):
        with pytest.raises(ValueError):
            AdaptiveAugment(**kwargs)


# ---- R1 -------------------------------------------------------------------------------------------------------


def test_r1_matches_hand_computed_values_and_backpropagates() -> None:
    # Linear D(x) = <w, x> + b: grad_x D = w for every sample, so R1 = gamma / 2 * ||w||^2.
    lin = nn.Linear(12, 1)
    real = torch.randn(5, 3, 2, 2, generator=_gen(0), requires_grad=True)
    logits = lin(real.flatten(1)).flatten()
    r1 = r1_penalty(logits, real, gamma=10.0)
    expected = 5.0 * lin.weight.detach().square().sum()
    torch.testing.assert_close(r1, expected)
    r1.backward()
    torch.testing.assert_close(lin.weight.grad, 10.0 * lin.weight.detach())  # d/dw gamma/2 ||w||^2
    # Quadratic D(x) = sum(a * x^2): grad_x D = 2 a x, per sample; R1 is the batch mean.
    a = torch.rand(3, 2, 2, generator=_gen(1))
    real = torch.randn(4, 3, 2, 2, generator=_gen(2), requires_grad=True)
    r1 = r1_penalty((a * real.square()).sum(dim=(1, 2, 3)), real, gamma=2.0)
    by_hand = sum(float((2 * a * real[i].detach()).square().sum()) for i in range(4)) / 4
    assert r1.item() == pytest.approx(by_hand, rel=1e-6)


def test_r1_is_lazy_and_scaled_in_the_trainer(tmp_path, monkeypatch) -> None:
    """R1 on D steps 0, 3, 6 with gamma * 3, its gradient taken w.r.t. the reals before ADA augments them."""
    calls = []
    real_r1 = train_mod.r1_penalty

    def spy(real_logits, real, gamma):
        calls.append((trainer.d_updates, gamma, real.requires_grad, real.grad_fn is None))
        return real_r1(real_logits, real, gamma)

    monkeypatch.setattr(train_mod, "r1_penalty", spy)
    cfg = tiny_config(net={"arch": "resnet"}, r1_gamma=0.5, r1_every=3, ada_target=0.6, ada_kimg=1e9, steps=7)
    trainer = Trainer(cfg, StepData(), tmp_path, class_names=CLASSES)
    trainer.ada.p = 0.5  # augmenting (a huge ada_kimg keeps p there), so D's input is not the leaf itself
    result = trainer.run()
    assert calls == [(0, 1.5, True, True), (3, 1.5, True, True), (6, 1.5, True, True)]
    assert all(math.isfinite(d) for _, d, _ in result.history)
    calls.clear()
    run(tiny_config(steps=2), tmp_path / "off")
    assert calls == []  # r1_gamma 0: off


# ---- config and trainer -----------------------------------------------------------------------------------


def test_config_keys_validation_and_round_trip() -> None:
    cfg = TrainConfig()
    assert (cfg.ada_target, cfg.ada_interval, cfg.ada_kimg, cfg.r1_gamma, cfg.r1_every) == (0.0, 4, 100.0, 0.0, 16)
    with pytest.raises(ValueError, match="ada_target and diffaugment are alternatives"):
        TrainConfig.from_dict({"ada_target": 0.6, "diffaugment": "color"})
    for bad, match in [
        ({"ada_target": 1.0}, "ada_target must be in"),
        ({"ada_target": -0.1}, "ada_target must be in"),
        ({"ada_interval": 0}, "ada_interval >= 1"),
        ({"ada_kimg": 0}, "ada_kimg > 0"),
        ({"r1_gamma": -1.0}, "r1_gamma >= 0"),
        ({"r1_every": 0}, "r1_every >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict(bad)
    cfg = TrainConfig.from_dict({"net": {"arch": "resnet"}, "ada_target": 0.6, "r1_gamma": 0.1, "r1_every": 8})
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_trainer_reports_and_logs_p_and_rt(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(ada_target=0.05, ada_interval=1, ada_kimg=0.1, lr_d=2e-3, steps=4, log_every=2)
    trainer = Trainer(cfg, StepData(), tmp_path, class_names=CLASSES)
    _, _, stats = trainer.train_step()
    assert stats["ada/p"] == trainer.ada.p and stats["ada/rt"] == trainer.ada.rt
    trainer.run()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("ada/p")] == [2, 4] and [e.step for e in acc.Scalars("ada/rt")] == [2, 4]
    state = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1][1])
    assert acc.Scalars("ada/p")[-1].value == pytest.approx(state["ada"]["p"]) and state["ada"]["p"] > 0


# ---- DDP ------------------------------------------------------------------------------------------------------

# Each rank records, per ADA interval, its own sign totals (before the all-reduce) and the reduced ones, and
# dumps them with its final weights and ADA state.
_ENTRY = """
import sys
import torch
import ganmodels.ada as A
import ganmodels.train as T

intervals = []
_observe = A.AdaptiveAugment.observe

def observe(self, real_logits, reduce=None):
    def recording(totals):
        local = totals.tolist()
        reduce(totals)
        intervals.append({{"local": local, "total": totals.tolist()}})

    n = len(intervals)
    _observe(self, real_logits, recording if reduce is not None else None)
    if len(intervals) > n:
        intervals[-1].update(rt=self.rt, p=self.p)

A.AdaptiveAugment.observe = observe
_run = T.Trainer.run

def run(self):
    result = _run(self)
    state = {{"G": self.G.state_dict(), "D": self.D.state_dict(), "ada": self.ada.state_dict(), "log": intervals}}
    torch.save(state, {dump!r} + f"/rank{{self.rank}}.pt")
    return result

T.Trainer.run = run
from ganmodels.cli import main

raise SystemExit(main(sys.argv[1:]))
"""


def test_torchrun_two_ranks_resnet_ada_r1(tmp_path) -> None:
    """gloo, 2 ranks, ResNet + ADA + lazy R1 (its double backward through DDP): identical weights and p."""
    write_dataset(tmp_path / "store", n=32)
    ada = {"ada_target": 0.05, "ada_interval": 1, "ada_kimg": 0.1}
    spec = tiny_experiment(classes=None, steps=4, frame_every=0, net={**tiny_experiment()["net"], "arch": "resnet"})
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({**spec, **ada, "r1_gamma": 1.0, "r1_every": 2, "lr_d": 2e-3}))
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    (tmp_path / "entry.py").write_text(_ENTRY.format(dump=str(dump)))
    args = ("--config", config, "--data-root", f"file://{tmp_path / 'store'}", "--out", out, "--workers", "0")
    result = only_json_line(torchrun(*args, entry=(str(tmp_path / "entry.py"),)))
    assert result["step"] == 4 and result["world_size"] == 2

    saved = load_checkpoint(out / "checkpoints" / "step-00000004.pt")
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for net in ("G", "D"):
        params = [k for k in saved[net] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        for k in params:
            assert torch.equal(ranks[0][net][k], ranks[1][net][k]), f"{net}.{k} differs between ranks"
            assert torch.equal(saved[net][k], ranks[0][net][k]), f"{net}.{k}: checkpoint != rank 0"
    assert saved["d_updates"] == 4  # R1 ran on D steps 0 and 2
    assert ranks[0]["ada"] == ranks[1]["ada"] == saved["ada"]

    log0, log1 = ranks[0]["log"], ranks[1]["log"]
    assert len(log0) == len(log1) == 4  # one interval per D step
    assert any(a["local"] != b["local"] for a, b in zip(log0, log1, strict=True))  # the ranks saw different reals...
    p = 0.0
    for a, b in zip(log0, log1, strict=True):
        total = [x + y for x, y in zip(a["local"], b["local"], strict=True)]
        assert a["total"] == b["total"] == total  # ...and both adjusted p from the sum over ranks
        assert a["rt"] == b["rt"] == total[0] / total[1]
        p = min(max(p + math.copysign(total[1] / 100, a["rt"] - 0.05), 0.0), 1.0)
        assert a["p"] == b["p"] == pytest.approx(p)
    assert p > 0  # ADA was augmenting during the run
