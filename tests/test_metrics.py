"""FID/KID and the FID Inception against torch-fidelity 0.4.0 (the reference), and weights resolution.

The reference is installed by the Makefile into ``.venv/reference`` (no deps, out of site-packages: its
wheel ships a top-level ``tests`` package, and its ``__init__`` imports torchvision). Its modules are
loaded under a stand-in ``torch_fidelity`` package whose ``__init__`` never runs; ``torch_fidelity.utils``
(torchvision, dataloaders) is stubbed, since the metric modules only import names from it.

Real Inception weights cannot be downloaded here, so the agreement tests use a seeded random init saved
as a weights file, loaded by both extractors. Scaled (He) init and perturbed BatchNorm statistics keep the
random network's features varied rather than vanishing through 90-odd layers.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ganmodels.inception import (
    WEIGHTS_ENV_VAR,
    WEIGHTS_FILENAME,
    FIDInceptionV3,
    FIDWeightsUnavailable,
    load_inception,
    resize_like_tf1,
    resolve_weights,
)
from ganmodels.metrics import FeatureStats, extract_features, fid, fid_from_features, kid, to_uint8
from tests.fakeweb import free_port

REFERENCE_DIR = Path(__file__).resolve().parents[1] / ".venv" / "reference" / "torch_fidelity"


# --------------------------------------------------------------------------------------------------
# The reference, loaded without its package __init__
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref() -> Iterator[types.SimpleNamespace]:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"torch-fidelity reference not installed at {REFERENCE_DIR} (run `make test` to install it)")
    before = {k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")}
    assert not before, "a real torch_fidelity is already imported; the stand-in package would mix with it"
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = [str(REFERENCE_DIR)]
    utils = types.ModuleType("torch_fidelity.utils")  # metric_fid/metric_kid import these names, unused here
    for name in (
        "cache_lookup_one_recompute_on_miss",
        "create_feature_extractor",
        "extract_featuresdict_from_input_id_cached",
        "get_cacheable_input_name",
        "resolve_feature_extractor",
        "resolve_feature_layer_for_metric",
    ):
        setattr(utils, name, None)
    sys.modules["torch_fidelity"] = pkg
    sys.modules["torch_fidelity.utils"] = utils
    try:
        from torch_fidelity import interpolate_compat_tensorflow, metric_fid, metric_kid
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        yield types.SimpleNamespace(
            Extractor=FeatureExtractorInceptionV3,
            resize=interpolate_compat_tensorflow.interpolate_bilinear_2d_like_tensorflow1x,
            fid_stats=metric_fid.fid_features_to_statistics,
            fid_metric=metric_fid.fid_statistics_to_metric,
            kid_metric=metric_kid.kid_features_to_metric,
        )
    finally:
        for k in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
            del sys.modules[k]


def ref_fid(ref: types.SimpleNamespace, a: np.ndarray, b: np.ndarray) -> float:
    stats = [ref.fid_stats(torch.from_numpy(np.ascontiguousarray(f))) for f in (a, b)]
    return ref.fid_metric(*stats, verbose=False)["frechet_inception_distance"]


def ref_kid(ref: types.SimpleNamespace, a: np.ndarray, b: np.ndarray, **kw: Any) -> tuple[float, float]:
    out = ref.kid_metric(torch.from_numpy(a), torch.from_numpy(b), verbose=False, **kw)
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


def synthetic_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Correlated, non-negative features (like pooled ReLUs), float32-exact like the reference's."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(0).normal(size=(d, d)) / np.sqrt(d)
    return np.abs(rng.normal(size=(n, d)) @ mix + shift).astype(np.float32).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# Agreement with torch-fidelity
# --------------------------------------------------------------------------------------------------


def test_to_uint8_matches_torch_fidelity_quantisation() -> None:
    x = torch.cat([torch.linspace(-1.2, 1.2, 10001), torch.tensor([-1.0, 0.0, 1.0, 2 / 255 - 1])])
    # torch-fidelity's examples/sngan_cifar10.py Generator.forward in eval mode, verbatim:
    expected = (255 * (x.clamp(-1, 1) * 0.5 + 0.5)).to(torch.uint8)
    got = to_uint8(x)
    assert got.dtype == torch.uint8
    assert torch.equal(got, expected)
    assert got[-4:].tolist() == [0, 127, 255, 0]  # truncation: 127.5 -> 127, 0.99999 -> 0


@pytest.mark.parametrize(("h", "w"), [(64, 64), (75, 100), (512, 384), (299, 299), (1, 7)])
def test_resize_is_bit_exact_with_reference(ref: types.SimpleNamespace, h: int, w: int) -> None:
    x = torch.randint(0, 256, (2, 3, h, w), generator=torch.Generator().manual_seed(h * w)).float()
    expected = ref.resize(x, size=(299, 299), align_corners=False)
    assert torch.equal(resize_like_tf1(x, 299), expected)


def test_fid_weights_loads_strictly_into_both(ref: types.SimpleNamespace, fid_weights: Path) -> None:
    reference = ref.Extractor("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(fid_weights))
    ours = load_inception(fid_weights)
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    ref_sd, our_sd = reference.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd)
    assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)


@pytest.mark.slow
def test_features_fid_kid_match_torch_fidelity(ref: types.SimpleNamespace, fid_weights: Path) -> None:
    g = torch.Generator().manual_seed(7)
    # Two image sets of different sizes (both resized to 299) and different content: noise vs smooth blobs.
    set_a = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    low = torch.rand(8, 3, 5, 7, generator=g) * 255
    set_b = torch.nn.functional.interpolate(low, size=(75, 100), mode="bilinear").to(torch.uint8)

    reference = ref.Extractor("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(fid_weights))
    model = load_inception(fid_weights)
    seen: list[int] = []
    ours, theirs = {}, {}
    with torch.no_grad():
        for name, images in (("a", set_a), ("b", set_b)):
            theirs[name] = reference(images)[0].numpy()  # float32, what the reference's statistics get
            ours[name] = extract_features(model, images.split(3), device="cpu", progress=seen.append)
    assert seen == [3, 6, 8, 3, 6, 8]

    for name in ("a", "b"):
        assert ours[name].dtype == np.float64 and ours[name].shape == (8, 2048)
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6 * np.abs(theirs[name]).max())
        assert ours[name].std(axis=0).mean() > 1e-3 * np.abs(ours[name]).mean()  # features are not degenerate

    expected_fid = ref_fid(ref, theirs["a"], theirs["b"])
    got_fid = fid(FeatureStats.from_features(ours["a"]), FeatureStats.from_features(ours["b"]))
    assert expected_fid > 1.0
    assert got_fid == pytest.approx(expected_fid, rel=1e-3)

    exp_mean, exp_std = ref_kid(ref, theirs["a"], theirs["b"], kid_subsets=20, kid_subset_size=6)
    got_mean, got_std = kid(ours["a"], ours["b"], subsets=20, subset_size=6)
    assert exp_mean > 0
    assert got_mean == pytest.approx(exp_mean, rel=1e-3)
    assert got_std == pytest.approx(exp_std, rel=1e-3)


@pytest.mark.parametrize(("n_a", "n_b", "d"), [(400, 300, 64), (40, 50, 64)])  # full rank; rank-deficient
def test_fid_matches_reference_formula(ref: types.SimpleNamespace, n_a: int, n_b: int, d: int) -> None:
    a, b = synthetic_features(n_a, d, seed=1), synthetic_features(n_b, d, seed=2, shift=0.3)
    got = fid(FeatureStats.from_features(a), FeatureStats.from_features(b))
    assert got == pytest.approx(ref_fid(ref, a, b), rel=1e-3)
    assert fid_from_features(a, b) == pytest.approx(ref_fid(ref, a, b), rel=1e-3)  # either route


def test_kid_matches_reference_including_seeded_subsets(ref: types.SimpleNamespace) -> None:
    a, b = synthetic_features(120, 32, seed=3), synthetic_features(90, 32, seed=4, shift=0.2)
    for kw in ({"subsets": 30, "subset_size": 50}, {"subsets": 5, "subset_size": 90, "seed": 11}):
        ref_kw = {"kid_subsets": kw["subsets"], "kid_subset_size": kw["subset_size"], "rng_seed": kw.get("seed", 2020)}
        exp_mean, exp_std = ref_kid(ref, a.astype(np.float32), b.astype(np.float32), **ref_kw)
        got_mean, got_std = kid(a, b, **kw)
        assert got_mean == pytest.approx(exp_mean, rel=1e-3)
        assert got_std == pytest.approx(exp_std, rel=1e-3)


def test_kid_too_few_samples_is_an_error_like_the_reference(ref: types.SimpleNamespace) -> None:
    a, b = synthetic_features(20, 8, seed=5), synthetic_features(30, 8, seed=6)
    with pytest.raises(ValueError, match="subset size"):
        ref_kid(ref, a.astype(np.float32), b.astype(np.float32), kid_subset_size=25)
    with pytest.raises(ValueError, match=r"subset_size 25 .*pass subset_size <= 20"):
        kid(a, b, subset_size=25)
    with pytest.raises(ValueError, match="subset_size >= 2"):
        kid(a, b, subset_size=1)


# --------------------------------------------------------------------------------------------------
# Sanity and plumbing
# --------------------------------------------------------------------------------------------------


def test_fid_self_zero_symmetric_and_grows_with_shift() -> None:
    a, b = synthetic_features(300, 48, seed=8), synthetic_features(300, 48, seed=9, shift=0.5)
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    scale = np.trace(sa.sigma)
    assert abs(fid(sa, sa)) < 1e-6 * scale
    assert fid(sa, sb) == pytest.approx(fid(sb, sa), rel=1e-6)
    near = FeatureStats.from_features(synthetic_features(300, 48, seed=10))
    assert 0 < fid(sa, near) < fid(sa, sb)
    with pytest.raises(ValueError, match="dimensions differ"):
        fid(sa, FeatureStats.from_features(a[:, :10]))


def test_kid_near_zero_for_same_distribution_and_positive_otherwise() -> None:
    a, a2 = synthetic_features(200, 32, seed=12), synthetic_features(200, 32, seed=13)
    b = synthetic_features(200, 32, seed=14, shift=0.5)
    same_mean, same_std = kid(a, a2, subsets=20, subset_size=100)
    diff_mean, _ = kid(a, b, subsets=20, subset_size=100)
    swapped_mean, _ = kid(b, a, subsets=20, subset_size=100)
    assert abs(same_mean) < 3 * same_std + 1e-12 and diff_mean > 10 * abs(same_mean)
    assert swapped_mean == pytest.approx(diff_mean, rel=0.2)  # same estimator, other subset draws
    assert kid(a, b, subsets=3, subset_size=50) == kid(a, b, subsets=3, subset_size=50)  # seeded


def test_feature_stats_round_trip_and_validation() -> None:
    stats = FeatureStats.from_features(synthetic_features(50, 16, seed=15))
    back = FeatureStats.from_bytes(stats.to_bytes())
    assert back.n == 50 and back.mu.dtype == np.float64
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureStats.from_features(np.zeros((1, 16)))
    bad = FeatureStats(mu=stats.mu, sigma=stats.sigma[:4], n=50)
    with pytest.raises(ValueError, match="inconsistent"):
        FeatureStats.from_bytes(bad.to_bytes())


class _MeanFeatures(torch.nn.Module):
    """Stands in for the Inception: checks what extract_features hands it, returns (N, 2048)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and not torch.is_grad_enabled()
        return x.float().mean(dim=(1, 2, 3), keepdim=True).squeeze(-1).squeeze(-1).expand(-1, 2048)


def test_extract_features_concatenates_batches_as_float64() -> None:
    batches = [torch.full((n, 3, 8, 8), v, dtype=torch.uint8) for n, v in ((3, 10), (2, 200))]
    progress: list[int] = []
    feats = extract_features(_MeanFeatures(), iter(batches), device="cpu", progress=progress.append)
    assert feats.dtype == np.float64 and feats.shape == (5, 2048)
    assert feats[:, 0].tolist() == [10, 10, 10, 200, 200] and progress == [3, 5]
    assert extract_features(_MeanFeatures(), [], device="cpu").shape == (0, 2048)


def test_inception_rejects_float_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        FIDInceptionV3()(torch.zeros(1, 3, 8, 8))


# --------------------------------------------------------------------------------------------------
# Weights resolution
# --------------------------------------------------------------------------------------------------


class _FileServer:
    """http.server on 127.0.0.1 in a thread, serving ``files`` (path -> bytes) and 404 for anything else."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


PAYLOAD = b"not really inception weights\n" * 5000
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server() -> Iterator[_FileServer]:
    with _FileServer({f"/{WEIGHTS_FILENAME}": PAYLOAD}) as s:
        yield s


@pytest.fixture
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/{WEIGHTS_FILENAME}"  # nothing listens: connection refused


def test_explicit_path_wins_and_must_exist(tmp_path: Path, dead_url: str) -> None:
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / WEIGHTS_FILENAME).write_bytes(b"cached")
    assert resolve_weights(str(explicit), cache_dir=tmp_path / "cache", url=dead_url) == explicit
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        resolve_weights(tmp_path / "missing.pth", cache_dir=tmp_path / "cache", url=dead_url)


def test_cached_file_used_without_download(tmp_path: Path, dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / WEIGHTS_FILENAME).write_bytes(b"cached")
    assert resolve_weights(cache_dir=tmp_path, url=dead_url) == tmp_path / WEIGHTS_FILENAME
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path))
    assert resolve_weights(url=dead_url, allow_download=False) == tmp_path / WEIGHTS_FILENAME


def test_nothing_available_says_how_to_provide_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path / "envcache"))
    with pytest.raises(FIDWeightsUnavailable) as info:
        resolve_weights(allow_download=False)
    msg = str(info.value)
    assert "downloads are disabled" in msg
    assert f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILENAME}" in msg
    assert str(tmp_path / "envcache" / WEIGHTS_FILENAME) in msg and WEIGHTS_ENV_VAR in msg and "path" in msg
    assert isinstance(info.value, RuntimeError) and not (tmp_path / "envcache").exists()


def test_download_with_good_digest_lands_in_cache(tmp_path: Path, server: _FileServer) -> None:
    cache = tmp_path / "cache"
    got = resolve_weights(cache_dir=cache, url=f"{server.url}/{WEIGHTS_FILENAME}", sha256=PAYLOAD_SHA256)
    assert got == cache / WEIGHTS_FILENAME and got.read_bytes() == PAYLOAD
    assert [p.name for p in cache.iterdir()] == [WEIGHTS_FILENAME]  # no temp file left
    assert resolve_weights(cache_dir=cache, url=f"{server.url}/{WEIGHTS_FILENAME}") == got  # now cached
    assert server.requests == [f"/{WEIGHTS_FILENAME}"]


def test_download_with_bad_digest_leaves_nothing(tmp_path: Path, server: _FileServer) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FIDWeightsUnavailable, match=f"expected {'0' * 64}"):
        resolve_weights(cache_dir=cache, url=f"{server.url}/{WEIGHTS_FILENAME}", sha256="0" * 64)
    assert not cache.exists() or not any(cache.iterdir())
    assert server.requests == [f"/{WEIGHTS_FILENAME}"]


def test_download_server_down_or_404(tmp_path: Path, server: _FileServer, dead_url: str) -> None:
    with pytest.raises(FIDWeightsUnavailable, match="download failed"):
        resolve_weights(cache_dir=tmp_path, url=dead_url, sha256=PAYLOAD_SHA256, timeout=5)
    with pytest.raises(FIDWeightsUnavailable, match="404"):
        resolve_weights(cache_dir=tmp_path, url=f"{server.url}/elsewhere.pth", sha256=PAYLOAD_SHA256)
    assert not any(tmp_path.iterdir())
