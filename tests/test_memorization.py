"""Precision/recall, the copy rate and the memorisation grid: the nearest-neighbour maths on point sets with
known answers, and :meth:`Evaluator.memorization` on solid-colour images whose nearest neighbours are known.

The evaluator tests stand a mean-colour "network" in for the Inception (features = each channel's mean), so
distances between solid-colour images are distances between their colours, and a generator whose output
layer is zeroed draws one solid colour: a copy of a training image when the colour is one of theirs.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganmodels.checkpoint import save_checkpoint
from ganmodels.evaluate import GRID_NEIGHBOURS, GRID_ROWS, EvalSettings, Evaluator, list_snapshots, memorization_grid
from ganmodels.metrics import copy_ratios, distance_blocks, knn_radii, nearest_neighbours, precision_recall, to_uint8
from ganmodels.nets import NetConfig, build
from pipelines.dataset import DatasetIndex
from pipelines.shards import write_shards
from pipelines.storage import LocalStorage


def _brute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _cluster(n: int, centre: float, seed: int, d: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + centre


# ---- the maths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_bytes", [1, 8 * 40 * 3, 1 << 26])  # one row at a time, 3 rows, all at once
def test_chunked_distances_equal_the_direct_computation(block_bytes: int) -> None:
    a, b = _cluster(97, 0.0, seed=1), _cluster(40, 3.0, seed=2)
    blocks = list(distance_blocks(a, b, block_bytes=block_bytes))
    assert [s for s, _ in blocks] == list(range(0, 97, len(blocks[0][1])))
    assert max(len(block) for _, block in blocks) == {1: 1, 8 * 40 * 3: 3, 1 << 26: 97}[block_bytes]
    np.testing.assert_allclose(np.concatenate([blk for _, blk in blocks]), _brute(a, b), rtol=1e-10, atol=1e-10)
    same = np.concatenate([blk for _, blk in distance_blocks(a, a, block_bytes=block_bytes)])
    assert np.abs(np.diag(same)).max() < 1e-6  # a point is (numerically) at distance 0 from itself


def test_knn_radii_and_nearest_neighbours_match_brute_force() -> None:
    a, b = _cluster(50, 0.0, seed=3), _cluster(60, 0.5, seed=4)
    d_aa = _brute(a, a)
    np.fill_diagonal(d_aa, np.inf)
    assert np.allclose(knn_radii(a, 3, block_bytes=800), np.sort(d_aa, axis=1)[:, 2])
    idx, dist = nearest_neighbours(a, b, 4, block_bytes=1000)
    d_ab = _brute(a, b)
    assert np.array_equal(idx, np.argsort(d_ab, axis=1)[:, :4])
    assert np.allclose(dist, np.sort(d_ab, axis=1)[:, :4]) and np.all(np.diff(dist, axis=1) >= 0)
    with pytest.raises(ValueError, match="more than 3 points"):
        knn_radii(a[:3], 3)


def test_precision_recall_known_answers() -> None:
    real = _cluster(200, 0.0, seed=5)
    assert precision_recall(real, real) == (1.0, 1.0)  # identical sets
    assert precision_recall(_cluster(150, 100.0, seed=6), real) == (0.0, 0.0)  # far apart: neither covers
    two_modes = np.concatenate([real, _cluster(200, 100.0, seed=7)])
    precision, recall = precision_recall(real[:150], two_modes, block_bytes=4096)  # a subset of one mode
    assert precision == 1.0 and 0.3 < recall < 0.5  # every sample is real; half the real variety is missing
    collapsed = np.repeat(real[:1], 100, axis=0) + 1e-3 * _cluster(100, 0.0, seed=8)  # mode collapse
    precision, recall = precision_recall(collapsed, real)
    assert precision == 1.0 and recall < 0.05


def test_copy_ratios_count_copies_and_not_far_samples() -> None:
    train = _cluster(300, 0.0, seed=9)
    radius = knn_radii(train, 1)
    copy = train[17]
    near_copy = train[42] + 0.2 * radius[42] * np.eye(16)[0]  # inside that image's nearest-neighbour ball
    far = np.full(16, 50.0)
    fresh = _cluster(200, 0.0, seed=10)  # new draws of the same distribution: some land in balls, not all
    ratios = copy_ratios(np.vstack([copy, near_copy, far, fresh]), train, block_bytes=2048)
    assert ratios[0] < 1e-6 and ratios[1] == pytest.approx(0.2, rel=1e-6) and ratios[2] > 10
    assert 0 < (ratios[3:] < 1).mean() < 0.9


# ---- the grid ---------------------------------------------------------------------------------------------


def _solid(colours: list[tuple[int, int, int]], size: int = 8) -> torch.Tensor:
    return torch.tensor(colours, dtype=torch.uint8)[:, :, None, None].expand(-1, -1, size, size).contiguous()


def _cell(grid: Image.Image, row: int, col: int, size: int = 8, pad: int = 2) -> tuple[int, int, int]:
    """The colour at the centre of a grid cell (make_grid's layout)."""
    return grid.getpixel((pad + col * (size + pad) + size // 2, pad + row * (size + pad) + size // 2))


def test_the_grid_shows_each_sample_then_its_nearest_training_images() -> None:
    train_colours = [(10 * i, 200 - 10 * i, 60) for i in range(12)]
    samples = [(0, 200, 60), (104, 96, 60), (200, 0, 60)]  # = train 0; between 10 and 11; far beyond 11
    train, fake = _solid(train_colours).float().mean((2, 3)), _solid(samples).float().mean((2, 3))
    idx, _ = nearest_neighbours(fake.numpy(), train.numpy(), 3)
    assert idx.tolist() == [[0, 1, 2], [10, 11, 9], [11, 10, 9]]
    grid = memorization_grid(_solid(samples), _solid(train_colours)[torch.from_numpy(idx)])
    assert grid.size == (4 * 10 + 2, 3 * 10 + 2)  # 4 columns (sample + 3), 3 rows, 8 px cells, 2 px padding
    for r, (sample, row) in enumerate(zip(samples, idx, strict=True)):
        assert [_cell(grid, r, c) for c in range(4)] == [sample, *(train_colours[i] for i in row)]


# ---- the evaluator: solid colours, mean-colour features -----------------------------------------------------


class MeanColour(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3))


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def _constant_generator(run_dir: Path, step: int, colour: float) -> tuple[int, int, int]:
    """A snapshot whose G draws one solid colour (tanh(bias) of a zeroed output layer); returns that colour."""
    net = NetConfig(resolution=32, width=8, latent_dim=16)
    g, _ = build(net)
    with torch.no_grad():
        g.last_layer.weight.zero_()
        g.last_layer.bias.copy_(torch.tensor([colour, -colour, 0.25]))
    state = {"net": dataclasses.asdict(net), "classes": ["dog"], "G": g.state_dict(), "ema": False}
    save_checkpoint(run_dir / "generators", step, state, keep=0)
    pixel = to_uint8(g.eval()(torch.randn(1, 16), None))[0, :, 0, 0]
    return tuple(pixel.tolist())


@pytest.fixture
def solid_run(tmp_path: Path) -> dict:
    """A dataset of solid colours whose first training image is the colour the step-1 G draws."""
    copied = _constant_generator(tmp_path / "run", 1, 0.5)
    far = _constant_generator(tmp_path / "run", 2, -0.9)
    train = [copied, *((20 * i, 180 - 15 * i, 30 + 9 * i) for i in range(11))]
    holdout = [train[5], (255, 0, 255), (0, 255, 255), (255, 255, 0)]  # one duplicate of a training image
    store = LocalStorage(tmp_path / "data")
    splits = {
        name: [dataclasses.asdict(s) for s in write_shards(store, samples, max_count=5)]
        for name, samples in (
            ("train", [{"__key__": f"t{i:03d}", "png": _png(c), "cls": 0} for i, c in enumerate(train)]),
            ("holdout", [{"__key__": f"h{i:03d}", "png": _png(c), "cls": 0} for i, c in enumerate(holdout)]),
        )
    }
    index = DatasetIndex(version="solid", index={"classes": ["dog"], "splits": splits, "counts": {}}, key="")
    return {"store": store, "index": index, "run": tmp_path / "run", "train": train, "copied": copied, "far": far}


def _evaluator(run: dict, train_samples: int) -> Evaluator:
    settings = EvalSettings(
        num_samples=20, batch_size=8, kid_subset_size=4, device="cpu", memorization_train_samples=train_samples
    )
    return Evaluator(run["store"], run["index"], MeanColour(), "f" * 64, settings)


def test_memorization_finds_the_copied_training_image(solid_run: dict) -> None:
    (_, copier), (_, original) = list_snapshots(solid_run["run"])
    evaluator = _evaluator(solid_run, train_samples=8)
    score = evaluator.score(1, copier)  # features kept for the memorisation check: no second sampling
    assert score.precision == 1.0 and score.recall == 0.0  # every sample is a real colour; one colour of many
    memo = evaluator.memorization(1, copier)
    assert memo is not None and not memo.cached
    assert memo.copy_rate == 1.0 and memo.num_samples == 20 and memo.num_train == 8  # the cap, not all 12
    assert memo.holdout_copy_rate == 0.25 and memo.num_holdout == 4  # the holdout's duplicate, and only it
    assert len(memo.rows) == GRID_ROWS and all(r["copy_ratio"] < 1e-6 for r in memo.rows)
    assert all(r["distances"][0] < 1e-6 for r in memo.rows)
    with Image.open(io.BytesIO(memo.grid_png)) as grid:
        assert grid.size == ((GRID_NEIGHBOURS + 1) * 34 + 2, GRID_ROWS * 34 + 2)  # 32 px cells, 2 px padding
        colour = np.asarray(grid.convert("RGB"))
    first, train = solid_run["copied"], solid_run["train"]
    by_distance = sorted(train[:8], key=lambda c: math.dist(c, first))  # the first 8 training images only
    for r in range(GRID_ROWS):
        cells = [tuple(colour[2 + r * 34 + 16, 2 + c * 34 + 16]) for c in range(GRID_NEIGHBOURS + 1)]
        assert cells == [first, *by_distance[:GRID_NEIGHBOURS]]
    store, key = solid_run["store"], evaluator.train_key("dog")
    assert store.exists(key) and evaluator.train_reused == {"dog": False}

    # Again (a new evaluator, as a later run): the check and its grid come from storage.
    again = _evaluator(solid_run, train_samples=8).memorization(1, copier)
    assert again is not None and again.cached and again.grid_png == memo.grid_png and again.copy_rate == 1.0

    # Fewer training images reuse the stored features; more extract them again, up to all there are (12).
    fewer = _evaluator(solid_run, train_samples=5)
    assert fewer.train_features("dog", 5).shape == (5, 3) and fewer.train_reused == {"dog": True}
    more = _evaluator(solid_run, train_samples=50)
    far = more.memorization(2, original)
    assert more.train_reused == {"dog": False} and far is not None and far.num_train == 12
    assert far.copy_rate == 0.0 and far.holdout_copy_rate == 0.25  # its colour is far from every training one
    assert len(_evaluator(solid_run, 50).train_features("dog", 50)) == 12  # complete: not extracted again


def test_settings_reject_a_single_training_image() -> None:
    assert EvalSettings(memorization_train_samples=0).identity() == EvalSettings().identity()
    with pytest.raises(ValueError, match="0 \\(off\\) or at least 2"):
        EvalSettings(memorization_train_samples=1)


def test_a_breed_conditional_snapshot_is_sampled_over_every_label(solid_run: dict) -> None:
    """A label_field run's net labels are its vocabulary (here 3 breeds), not the dataset classes (1): every
    label gets an equal share of the samples, and they are scored together against the class's holdout."""
    net = NetConfig(resolution=32, width=8, latent_dim=16, num_classes=3)
    torch.manual_seed(0)
    g, _ = build(net)
    state = {
        "net": dataclasses.asdict(net),
        "classes": ["dog"],
        "label_field": "breed",
        "labels": ["beagle", "hound", "other"],
        "G": g.state_dict(),
        "ema": False,
    }
    save_checkpoint(solid_run["run"] / "breeds" / "generators", 3, state, keep=0)
    [(_, path)] = list_snapshots(solid_run["run"] / "breeds")
    evaluator = _evaluator(solid_run, train_samples=0)
    _, images, labels, by_class = evaluator._sample(path)
    assert labels is not None and sorted(set(labels.tolist())) == [0, 1, 2] and not by_class
    assert [int((labels == i).sum()) for i in range(3)] == [7, 7, 6] and len(images) == 20
    score = evaluator.score(3, path)
    assert score.classes == ["dog"] and score.fid is not None and score.per_class == {}
