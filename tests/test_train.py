"""The training loop: exact resume, reproducibility, losses, tricks, failure detection, frames, TensorBoard."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import ganmodels.train as train_mod
from ganmodels.checkpoint import list_checkpoints, load_checkpoint
from ganmodels.frames import grid_size, make_grid
from ganmodels.nets import NetConfig
from ganmodels.train import TrainConfig, Trainer, TrainingDiverged
from tests.tiny_dataset import tiny_experiment, write_dataset

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "null"]


class StepData:
    """Synthetic batches indexed by batch number, so a resumed run sees exactly the batches it would have."""

    def __init__(self, batch: int = 8, resolution: int = 32, num_classes: int = 3, seed: int = 123) -> None:
        self.batch, self.resolution, self.num_classes, self.seed = batch, resolution, num_classes, seed
        self._start = 0

    def start_at(self, batch_index: int) -> None:
        self._start = batch_index

    def batch_at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        base = torch.rand(self.batch, 3, 1, 1, generator=g) * 2 - 1
        images = (base + 0.3 * torch.randn(self.batch, 3, self.resolution, self.resolution, generator=g)).clamp(-1, 1)
        labels = torch.randint(0, self.num_classes, (self.batch,), generator=g)
        return images, labels

    def __iter__(self):
        i = self._start
        while True:
            yield self.batch_at(i)
            i += 1


def tiny_config(**overrides) -> TrainConfig:
    """tests.tiny_dataset.tiny_experiment for StepData: classes cat and dog, no frames; ``net`` keys merge."""
    net = {"resolution": 32, "width": 8, "latent_dim": 16, **overrides.pop("net", {})}
    base = tiny_experiment(steps=4, keep_checkpoints=5, frame_every=0, classes=["cat", "dog"], net=net)
    return TrainConfig.from_dict(base | overrides)


ALL_ON = {
    "net": {"num_classes": 3, "d_dropout": 0.1},  # dropout draws from the global RNG
    "loss": "bce",
    "real_range": [0.8, 1.0],
    "fake_range": [0.0, 0.2],
    "flip_prob": 0.1,
    "replay_capacity": 16,
    "replay_share": 0.5,
    "ema_decay": 0.9,
    "diffaugment": "color,translation,cutout",
    "adaptive": True,
    "adaptive_threshold": 0.9,
    "negatives_class": "null",
    "negative_weight": 0.5,
}


def run(cfg: TrainConfig, out: Path, data=None) -> train_mod.TrainResult:
    return Trainer(cfg, data if data is not None else StepData(), out, class_names=CLASSES).run()


def final_state(out: Path) -> dict:
    _, path = list_checkpoints(out / "checkpoints")[-1]
    return load_checkpoint(path)


def assert_same_weights(a: dict, b: dict) -> None:
    for net in ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    if a.get("ema"):
        for k, v in a["ema"]["module"].items():
            assert torch.equal(v, b["ema"]["module"][k]), f"ema.{k} differs"


# ---- config ---------------------------------------------------------------------------------------------


def test_config_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match=r"unknown training config key.*'lr_gen'"):
        TrainConfig.from_dict({"lr_gen": 1e-3})
    with pytest.raises(ValueError, match=r"unknown net config key.*'depth'"):
        TrainConfig.from_dict({"net": {"depth": 3}})
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig.from_dict({"loss": "lsgan"})
    with pytest.raises(ValueError, match="only applies to the 'bce' loss"):
        TrainConfig.from_dict({"loss": "hinge", "real_range": [0.9, 0.9]})
    cfg = tiny_config(**ALL_ON)
    assert cfg.net == NetConfig(resolution=32, width=8, latent_dim=16, num_classes=3, d_dropout=0.1)
    assert cfg.betas == (0.5, 0.999) and cfg.threads == 1 and cfg.label_settings.flip_prob == 0.1
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().threads == max(1, (os.cpu_count() or 1) - 1)


# ---- exact resume and reproducibility -------------------------------------------------------------------


def test_resume_with_new_trainer_is_bit_for_bit(tmp_path):
    """All tricks on (every RNG stream in use): 6 steps straight == 3 steps + new Trainer + 3 steps."""
    straight = run(tiny_config(**ALL_ON, steps=6, checkpoint_every=3), tmp_path / "a")
    first = run(tiny_config(**ALL_ON, steps=3, checkpoint_every=3), tmp_path / "b")
    second = run(tiny_config(**ALL_ON, steps=6, checkpoint_every=3), tmp_path / "b")
    assert first.resumed_from is None and second.resumed_from == 3
    assert first.history + second.history == straight.history
    assert all(math.isfinite(d) and math.isfinite(g) for _, d, g in straight.history)
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert a["step"] == b["step"] == 6 and a["batches"] == b["batches"]
    assert_same_weights(a, b)
    assert second.checkpoint_sha256 != first.checkpoint_sha256


_CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import ganmodels.train as T
from tests.test_train import CLASSES, StepData, tiny_config

orig = T.save_checkpoint
def save_then_hang(directory, step, state, keep=3):
    path = orig(directory, step, state, keep=keep)
    if step == {kill_at} and directory.name == "checkpoints":
        print("SAVED", step, flush=True)
        time.sleep(600)
    return path
T.save_checkpoint = save_then_hang
T.Trainer(tiny_config(**json.loads({cfg!r})), StepData(), {out!r}, class_names=CLASSES).run()
"""


def test_resume_after_sigkill_is_bit_for_bit(tmp_path):
    overrides = {"loss": "hinge", "mixed_batch": True, "replay_capacity": 8, "steps": 6, "checkpoint_every": 3}
    straight = run(tiny_config(**overrides), tmp_path / "a")
    out = tmp_path / "b"
    script = _CHILD.format(repo=str(REPO), kill_at=3, cfg=json.dumps(overrides), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "SAVED 3", proc.stderr.read() if proc.poll() is not None else line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [0, 3]
    assert [s for s, _ in list_checkpoints(out / "generators")] == [0, 3]
    resumed = run(tiny_config(**overrides), out)
    assert resumed.resumed_from == 3
    assert resumed.history == straight.history[3:]
    assert_same_weights(final_state(tmp_path / "a"), final_state(out))


def test_same_seed_same_losses_different_seed_different(tmp_path):
    a = run(tiny_config(steps=3), tmp_path / "a")
    b = run(tiny_config(steps=3), tmp_path / "b")
    c = run(tiny_config(steps=3, seed=1), tmp_path / "c")
    assert a.history == b.history
    assert a.history != c.history
    assert_same_weights(final_state(tmp_path / "a"), final_state(tmp_path / "b"))


# ---- losses and tricks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["bce", "wgan-gp", "hinge"])
def test_each_loss_runs_and_stays_finite(tmp_path, loss):
    result = run(tiny_config(loss=loss, steps=3, d_steps=2 if loss == "wgan-gp" else 1), tmp_path)
    assert result.step == 3 and result.device == "cpu"
    assert len(result.history) == 3
    assert all(math.isfinite(d) and math.isfinite(g) for _, d, g in result.history)
    assert result.images_per_s > 0
    assert result.checkpoint == tmp_path / "checkpoints" / "step-00000003.pt"
    assert len(result.checkpoint_sha256) == 64


def test_conditional_run_with_all_tricks(tmp_path, caplog):
    caplog.set_level("INFO", logger="ganmodels.train")
    cfg = tiny_config(**{**ALL_ON, "net": {"num_classes": 3, "cond_d": "concat"}}, steps=3, mixed_batch=True)
    trainer = Trainer(cfg, StepData(), tmp_path, class_names=CLASSES)
    assert trainer.train_labels.tolist() == [0, 1] and trainer.negative_label == 2
    assert trainer.frame_labels.tolist() == [0, 1, 0, 1]
    result = trainer.run()
    assert all(math.isfinite(d) and math.isfinite(g) for _, d, g in result.history)
    state = final_state(tmp_path)
    assert state["replay"]["seen"] > 0 and state["ema"]["step"] == 3
    assert state["schedule"]["iterations"] == 3
    assert state["batches"] >= 3  # one batch per D step (adaptive may add D steps)
    assert any("step 3/3" in r.getMessage() and "img/s" in r.getMessage() for r in caplog.records)


def test_negatives_are_split_off_the_real_batch(tmp_path):
    cfg = tiny_config(negatives_class="null")
    trainer = Trainer(cfg, StepData(), tmp_path, class_names=CLASSES)
    images, labels = StepData().batch_at(0)
    real, real_labels, negatives = trainer._real_batch()
    n_null = int((labels == 2).sum())
    assert real.shape[0] == 8 - n_null and (real_labels != 2).all()
    assert (negatives.shape[0] if negatives is not None else 0) == n_null
    assert torch.equal(real, images[labels != 2])


class DogNullData(StepData):
    """StepData whose labels are only the data ids 1 (dog) and 2 (null)."""

    def batch_at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = super().batch_at(i)
        return images, 1 + labels % 2


def test_conditional_labels_index_the_trained_classes(tmp_path):
    """Training a subset (dog, null) of the data's classes: net labels are 0..1, not the data's ids 1..2."""
    cfg = tiny_config(classes=["dog", "null"], net={"num_classes": 2}, steps=2)
    trainer = Trainer(cfg, DogNullData(), tmp_path, class_names=CLASSES)
    assert trainer.label_map.tolist() == [-1, 0, 1]
    _, labels = DogNullData().batch_at(0)
    _, real_labels, _ = trainer._real_batch()
    assert torch.equal(real_labels, labels - 1)
    trainer.run()
    snaps = list_checkpoints(tmp_path / "generators")
    assert [s for s, _ in snaps] == [0, 2]
    snap = load_checkpoint(snaps[-1][1])
    assert snap["classes"] == ["dog", "null"] and snap["net"]["num_classes"] == 2 and snap["ema"] is False
    with pytest.raises(ValueError, match="num_classes=1 < 2 trained classes"):
        Trainer(
            tiny_config(classes=["dog", "null"], net={"num_classes": 1}),
            StepData(),
            tmp_path / "x",
            class_names=CLASSES,
        )
    with pytest.raises(ValueError, match=r"class 'cat', which is not trained"):
        Trainer(cfg, StepData(), tmp_path / "y", class_names=CLASSES)._real_batch()


# ---- failure detection ----------------------------------------------------------------------------------


def test_nan_loss_stops_with_error_and_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(steps=6, checkpoint_every=2), StepData(), tmp_path, class_names=CLASSES)
    real_g_loss = trainer.g_loss_fn

    def g_loss(logits):
        return real_g_loss(logits) * (math.nan if trainer.step == 2 else 1.0)

    trainer.g_loss_fn = g_loss
    with pytest.raises(TrainingDiverged, match="diverged at step 3: G loss is nan") as err:
        trainer.run()
    assert err.value.step == 3
    assert err.value.checkpoint == tmp_path / "checkpoints" / "step-00000002.pt"
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [0, 2]
    state = load_checkpoint(err.value.checkpoint)
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())
    resumed = Trainer(tiny_config(steps=3, checkpoint_every=2), StepData(), tmp_path, class_names=CLASSES).run()
    assert resumed.resumed_from == 2 and resumed.step == 3


def test_huge_learning_rate_diverges_with_the_error(tmp_path):
    cfg = tiny_config(loss="wgan-gp", gp_weight=0.0, lr_d=1e12, lr_g=1e12, steps=8, checkpoint_every=100)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf)") as err:
        run(cfg, tmp_path)
    assert err.value.checkpoint == tmp_path / "checkpoints" / "step-00000000.pt"
    assert load_checkpoint(err.value.checkpoint)["step"] == 0


def test_stuck_d_loss_and_collapse_are_warned(tmp_path):
    cfg = tiny_config(steps=4, stuck_d_loss_eps=1e9, stuck_d_loss_steps=3, frame_every=1, collapse_ratio=2.0)
    result = run(cfg, tmp_path)
    assert any("D loss has been within" in w for w in result.warnings)
    assert any("diversity collapsed" in w for w in result.warnings)
    assert len(result.warnings) == 2  # each warned once


# ---- frames and TensorBoard -----------------------------------------------------------------------------


def test_make_grid_layout():
    images = torch.full((5, 3, 4, 4), 1.0)
    grid = make_grid(images, nrow=2, padding=1)
    assert grid.size == grid_size(5, 4, 4, 2, 1) == (2 * 5 + 1, 3 * 5 + 1)
    arr = torch.from_numpy(__import__("numpy").asarray(grid).copy())
    assert arr[1, 1].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [0, 0, 0]
    assert arr[-3, -3].tolist() == [0, 0, 0]  # the sixth (missing) tile stays background


def test_frames_written_at_the_right_steps(tmp_path):
    cfg = tiny_config(steps=5, frame_every=2, frame_count=6, frame_nrow=4, ema_decay=0.9)
    run(cfg, tmp_path)
    frames = sorted(p.name for p in (tmp_path / "frames").iterdir())
    # every frame_every steps, plus the untrained G at step 0 and the final step
    assert frames == ["step-00000000.png", "step-00000002.png", "step-00000004.png", "step-00000005.png"]
    for name in frames:
        with Image.open(tmp_path / "frames" / name) as im:
            im.verify()
        with Image.open(tmp_path / "frames" / name) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert im.size == grid_size(6, 32, 32, 4) == (4 * 34 + 2, 2 * 34 + 2)


def test_a_run_shorter_than_frame_every_still_has_first_and_last_frames(tmp_path):
    """``make run`` trains fewer steps than the experiments' frame_every: the time-lapse still has frames."""
    run(tiny_config(steps=3, frame_every=250), tmp_path)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["step-00000000.png", "step-00000003.png"]
    run(tiny_config(steps=5, frame_every=250), tmp_path)  # raising steps resumes: step 0 is not redrawn
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["step-00000000.png", "step-00000003.png", "step-00000005.png"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "frames").iterdir())  # no temp files left


def test_tensorboard_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_config(steps=4, log_every=2, frame_every=4), tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "loss/d",
        "loss/g",
        "d/real",
        "d/fake",
        "grad_norm/g_first",
        "grad_norm/g_last",
        "grad_norm/d_first",
        "grad_norm/d_last",
        "lr/g",
        "lr/d",
        "perf/images_per_s",
        "samples/diversity",
    }
    assert expected <= tags
    assert [e.step for e in acc.Scalars("loss/d")] == [2, 4]
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("d/real"))  # sigmoid of logits for bce
    assert "samples" in acc.Tags()["images"]


# ---- the real shard loader --------------------------------------------------------------------------------


def test_shard_batches_train_with_negatives_and_reseed_on_resume(tmp_path):
    version = write_dataset(tmp_path / "store", n=24)
    cfg = tiny_config(steps=2, negatives_class="null")
    data, names = train_mod.shard_batches(str(tmp_path / "store"), version, cfg, num_workers=0, shuffle_buffer=4)
    assert names == CLASSES
    result = Trainer(cfg, data, tmp_path / "out", class_names=names).run()
    assert result.step == 2 and all(math.isfinite(d) and math.isfinite(g) for _, d, g in result.history)

    def first_batch(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        data.start_at(start)
        return next(iter(data))

    a, b = first_batch(5), first_batch(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # deterministic for a given resume point
    assert a[0].shape == (8, 3, 32, 32)


def test_reuse_fakes_is_the_textbook_loop_with_one_g_forward(tmp_path):
    """reuse_fakes: G's step trains on the D step's fakes (one G forward per iteration), reproducibly."""
    forwards = []
    trainer = Trainer(tiny_config(reuse_fakes=True, steps=3), StepData(), tmp_path / "a", class_names=CLASSES)
    trainer.G.register_forward_hook(lambda *_: forwards.append(1))
    first = trainer.run()
    assert len(forwards) == 3  # the default draws fresh noise for G's step: two forwards per iteration
    again = run(tiny_config(reuse_fakes=True, steps=3), tmp_path / "b")
    assert first.history == again.history and all(math.isfinite(d) for _, d, _ in first.history)
    assert first.history != run(tiny_config(steps=3), tmp_path / "c").history
