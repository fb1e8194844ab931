"""The benchmark realism metric (benchmarks/quality_metric.py) and the GAN quality harness built on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("webdataset")
pytest.importorskip("yaml")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_gan_quality as bgq  # noqa: E402
import quality_metric as qm  # noqa: E402
from fixture_data import FIXTURES, build_fixture_dataset, curate_fixtures  # noqa: E402

from ganmodels.train import TrainConfig  # noqa: E402
from tests.tiny_dataset import write_dataset  # noqa: E402


def _metric(reference_features: np.ndarray, k: int = 3) -> qm.QualityMetric:
    """A metric whose reference features are given (the classifier is never run by score_features)."""
    settings = qm.MetricSettings(width=2, k=k)
    return qm.QualityMetric(qm.DogClassifier(2), settings, [], [], "test", reference_features=reference_features)


def test_fd_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(300, 16))
    assert _metric(feats).score_features(feats)["fd"] == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("n", [16, 400])  # fewer and more samples than dimensions: both FD routes
def test_fd_of_shifted_scaled_gaussians_is_the_closed_form(n):
    """Samples whitened to mean 0, covariance I exactly; 2x + m has covariance 4I: FD = |m|^2 + d (2 - 1)^2."""
    d = 24
    z = np.random.default_rng(1).normal(size=(n, d))
    z -= z.mean(axis=0)
    if n > d:
        z = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / (n - 1))).T
    m = np.linspace(-1.0, 2.0, d)
    fd = _metric(z).score_features(2 * z + m)["fd"]
    if n > d:
        assert fd == pytest.approx(m @ m + d, rel=1e-9)
    else:  # rank-deficient covariances: the closed form of the sample statistics, S_b = 4 S_a
        cov = z.T @ z / (n - 1)
        assert fd == pytest.approx(m @ m + np.trace(cov) * (1 + 4 - 4), rel=1e-9)


def test_precision_recall_on_a_line():
    """Reals 0..3 (k = 3 radii 3, 2, 2, 3: the manifold is [-3, 6]); fakes at -2.9, 5.5 inside, 6.5, 7 out."""
    real = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    fake = np.array([[-2.9, 0.0], [5.5, 0.0], [6.5, 0.0], [7.0, 0.0]])
    score = _metric(real).score_features(fake)
    assert (score["precision"], score["recall"]) == (0.5, 1.0)


def test_precision_recall_of_one_covered_mode_of_two():
    """Reals in two far clusters, fakes jittered around one of them: all fakes realistic, half the reals covered."""
    rng = np.random.default_rng(2)
    a = rng.normal(scale=0.1, size=(20, 8))
    b = rng.normal(scale=0.1, size=(20, 8)) + 100.0
    real = np.concatenate([a, b])[rng.permutation(40)]
    fake = np.concatenate([a + rng.normal(scale=0.01, size=a.shape)] * 2)
    score = _metric(real).score_features(fake)
    assert (score["precision"], score["recall"], score["n"]) == (1.0, 0.5, 40)
    far = _metric(real).score_features(fake + 1000.0)
    assert (far["precision"], far["recall"]) == (0.0, 0.0)


def test_pixel_shuffle_keeps_each_images_pixels_but_not_their_places():
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    out = qm.pixel_shuffle(images, torch.Generator().manual_seed(0))

    def pixels(x: torch.Tensor) -> list[list[tuple[float, ...]]]:
        return [sorted(map(tuple, img.reshape(3, -1).T.tolist())) for img in x]

    assert out.shape == images.shape
    assert pixels(out) == pixels(images)  # the same RGB triples: one permutation for all channels
    assert all(not torch.equal(o, i) for o, i in zip(out, images, strict=True))
    assert torch.equal(out, qm.pixel_shuffle(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, qm.pixel_shuffle(images, torch.Generator().manual_seed(1)))


def test_split_depends_on_the_sha256_only_and_follows_the_shares():
    settings = qm.MetricSettings()
    keys = [f"{i:064x}" for i in range(4000)]
    splits = [qm.split_of(k, settings) for k in keys]
    assert splits == [qm.split_of(k, settings) for k in keys]
    shares = {s: splits.count(s) / len(keys) for s in qm.SPLITS}
    assert shares["reference"] == pytest.approx(0.25, abs=0.03)
    assert shares["calibration"] == pytest.approx(0.25, abs=0.03)
    other = [qm.split_of(k, qm.MetricSettings(salt="other")) for k in keys]
    assert sum(a != b for a, b in zip(splits, other, strict=True)) > 1000


def _tiny_metric_data(n_train: int = 32, n_ref: int = 64) -> qm.MetricData:
    gen = torch.Generator().manual_seed(0)
    return qm.MetricData(
        train=torch.rand(n_train, 3, 32, 32, generator=gen) * 2 - 1,
        train_labels=torch.arange(n_train) % 2,
        train_keys=[f"t{i}" for i in range(n_train)],
        reference=torch.rand(n_ref, 3, 32, 32, generator=gen) * 2 - 1,
        reference_keys=[f"r{i}" for i in range(n_ref)],
        heldout_keys=[f"r{i}" for i in range(n_ref)],
    )


def test_load_metric_trains_once_then_loads_the_cached_classifier(tmp_path):
    settings = qm.MetricSettings(width=4, epochs=1, batch_size=16)
    data = _tiny_metric_data()
    logs: list[str] = []
    first = qm.load_metric(settings, data=data, cache_dir=tmp_path, log=logs.append)
    again = qm.load_metric(settings, data=data, cache_dir=tmp_path, log=logs.append)
    assert first.path == again.path == qm.cache_path(tmp_path, first.key)
    assert sum("training" in line for line in logs) == 1 and "cached" in logs[-1]
    np.testing.assert_array_equal(first.reference_features, again.reference_features)
    assert first.features(data.reference).shape == (64, settings.feature_dim)
    own = again.score(data.reference)
    assert own["fd"] == pytest.approx(0.0, abs=1e-6) and (own["precision"], own["recall"], own["n"]) == (1.0, 1.0, 64)
    other = qm.load_metric(qm.MetricSettings(width=4, epochs=1, batch_size=16, seed=1), data=data, cache_dir=tmp_path)
    assert other.key != first.key
    with pytest.raises(ValueError, match="32, 32"):
        first.features(torch.zeros(2, 3, 16, 16))


def test_every_available_variant_is_a_valid_32px_train_config():
    chosen = bgq.variants()
    names = [v.name for v in chosen]
    assert names[:2] == ["tutorial", "dcgan"] and set(bgq.TRICKS) <= set(names)
    assert {"recipe:dogs", "recipe:conditional_all", "recipe:dog_breeds"} <= set(names)
    # satellite is the dogs recipe for another class, and both train on dogs here: one row, named for both
    assert "recipe:satellite" not in names and "also satellite" in chosen[names.index("recipe:dogs")].note
    dogs = chosen[names.index("recipe:dogs")].config
    for name, overrides in bgq.ON_DOGS.items():
        config = chosen[names.index(name)].config
        assert config == bgq._merge(dogs, overrides) and config != dogs, name
    for v in chosen:
        if v.config is None or v.unavailable:
            continue
        cfg = TrainConfig.from_dict({**v.config, **bgq.HARNESS, "device": "cpu"})
        assert cfg.net.resolution == 32, v.name
        assert "dogs" in cfg.classes, v.name
        if not cfg.net.conditional:
            assert cfg.classes == ("dogs",), v.name
    assert bgq.fractions(3, 0.1) == [0.8, 0.9, 1.0]


@pytest.mark.slow
def test_harness_runs_the_tutorial_and_a_trainer_variant_end_to_end(tmp_path):
    """Two ~6 s runs in subprocesses on random images with a tiny classifier: JSONs, grids, the table."""
    write_dataset(tmp_path / "data", n=384, per_shard=48, resolution=32)
    metric = qm.load_metric(
        qm.MetricSettings(width=4, epochs=1, batch_size=16), data=_tiny_metric_data(), cache_dir=tmp_path, log=print
    )
    chosen = [v for v in bgq.variants(dog="dog") if v.name in ("tutorial", "ema")]
    settings = bgq.RunSettings(minutes=0.1, samples=64, last=2, spacing=0.5, threads=1, workers=0)
    out, grids = tmp_path / "out", tmp_path / "grids"
    results = bgq.run_variants(
        chosen,
        [0],
        settings,
        root_url=(tmp_path / "data").as_uri(),
        version="v1",
        metric_path=metric.path,
        out=out,
        grids=grids,
        dog="dog",
    )
    assert [r["variant"] for r in results] == ["tutorial", "ema"]
    for r in results:
        assert "error" not in r, r
        assert r["steps"] > 0 and r["train_s"] >= 6.0  # a step may overshoot the budget on a loaded machine
        assert [s["fraction"] for s in r["snapshots"]] == [0.5, 1.0]
        assert [s["elapsed_s"] >= s["fraction"] * 6.0 for s in r["snapshots"]] == [True, True]
        assert all(np.isfinite(s["fd"]) and 0 <= s["precision"] <= 1 and s["n"] == 64 for s in r["snapshots"])
        assert json.loads(bgq.result_path(out, r["variant"], 0).read_text()) == r
    assert results[0]["config"]["batch_size"] == 128 and results[1]["config"]["ema_decay"] == 0.999
    from PIL import Image

    for name in ("tutorial", "ema"):
        with Image.open(grids / f"{name}.png") as grid:
            assert grid.size == (8 * 32 + 9 * 2,) * 2
    text, rows = bgq.table(out, settings, chosen)
    assert [r["variant"] for r in rows] == ["tutorial", "ema"] and rows[0]["fd_ratio"] == 1.0
    assert text.count("\n") == 3

    # A second sitting reuses what is done with the same settings; other settings run again.
    lines: list[str] = []
    kwargs = {"root_url": (tmp_path / "data").as_uri(), "version": "v1", "metric_path": metric.path, "out": out}
    again = bgq.run_variants(chosen[:1], [0], settings, **kwargs, grids=None, dog="dog", log=lines.append)
    assert again == results[:1] and lines == ["tutorial seed 0: done before (tutorial.seed0.json), not run again"]


@pytest.mark.realdata
def test_dogs_large_builds_through_curation(tmp_path):
    """dogs-large holds one JPEG under two names: curation drops the copy, so the shard writer never sees it twice."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real-image fixtures not found at {FIXTURES}")
    ds = build_fixture_dataset(tmp_path, 32, {"dogs": ("dogs-large",)})
    assert ds.curated.decisions["dogs"] == {"accept": 1999, "exact_duplicate": 1}
    assert ds.train_images + sum(ds.counts["holdout"].values()) == 1999


def test_a_pinned_curation_is_what_later_runs_train_on(tmp_path):
    """The first run writes the pin; a later run trains on the pinned rows even when today's curation differs."""
    folders = {"dogs": ("no-such-fixture-folder",)}  # synthetic stand-ins: the same 12 random images each time
    pin = tmp_path / "pin.parquet"
    first = curate_fixtures(tmp_path / "a", folders, synthetic=12, pin=pin)
    assert pin.exists() and first.pinned.startswith("curation pinned to") and len(first.accepted) == 12

    again = curate_fixtures(tmp_path / "b", folders, synthetic=12, pin=pin)
    assert again.accepted == first.accepted and "would" not in again.pinned

    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(pin).slice(1), pin)  # a pin from a curation that rejected one more image
    fewer = curate_fixtures(tmp_path / "c", folders, synthetic=12, pin=pin)
    assert fewer.accepted == first.accepted[1:] and fewer.decisions == {"dogs": {"accept": 11}}
    assert "today's curation would add 1 and drop 0" in fewer.pinned

    table = pq.read_table(pin)
    keys = ["raw/gone", *table.column("storage_key").to_pylist()[1:]]  # one pinned image no longer in the store
    pq.write_table(table.set_column(table.schema.get_field_index("storage_key"), "storage_key", [keys]), pin)
    with pytest.raises(FileNotFoundError, match="1 pinned images are not in the fixtures"):
        curate_fixtures(tmp_path / "d", folders, synthetic=12, pin=pin)
