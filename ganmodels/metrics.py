"""FID and KID on FID-Inception pool3 features, numerically the same as torch-fidelity 0.4.0.

Published FID/KID numbers are only comparable when every step matches: the TF Inception graph and its
resize (:mod:`ganmodels.inception`), the uint8 quantisation of generator output, and the statistics. This
module reproduces torch-fidelity's choices (tested against it to 1e-3 relative); where it computes the same
quantity differently (FID's matrix square root, float64 throughout) the docstring says so.

API (stable; ``ganmodels/evaluate.py`` builds on it)::

    to_uint8(images: Tensor) -> Tensor                       # [-1, 1] float -> uint8, torch-fidelity's way
    extract_features(model, batches, *, device, progress=None) -> np.ndarray   # (N, 2048) float64
    FeatureStats.from_features(features) -> FeatureStats     # mu (2048,), sigma (2048, 2048), n
    FeatureStats.to_bytes() -> bytes; FeatureStats.from_bytes(data) -> FeatureStats   # .npz, any storage
    fid(a: FeatureStats, b: FeatureStats) -> float
    fid_from_features(feats_a, feats_b) -> float              # the same, fast for sets smaller than D
    kid(feats_a, feats_b, *, subsets=100, subset_size=1000, degree=3, gamma=None, coef0=1.0, seed=2020)
        -> tuple[float, float]                               # (mean, std) over subsets
    precision_recall(fake, real, *, k=3) -> tuple[float, float]   # k-NN manifolds, Kynkaanniemi et al. 2019
    copy_ratios(fake, train) -> np.ndarray                    # < 1: inside a training image's 1-NN ball
    nearest_neighbours(query, ref, k) -> (indices, distances)  # (N, k) each, nearest first
    distance_blocks(a, b) -> Iterator[(start, block)]         # Euclidean distances, a block of rows at a time

Typical use::

    model = load_inception(resolve_weights(), device)
    real = extract_features(model, real_uint8_batches, device=device)
    fake = extract_features(model, (to_uint8(G(z)) for z in latents), device=device)
    score = fid(FeatureStats.from_features(real), FeatureStats.from_features(fake))
    kid_mean, kid_std = kid(real, fake, subset_size=min(1000, len(real), len(fake)))
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "KID_SEED",
    "PR_K",
    "FeatureStats",
    "copy_ratios",
    "distance_blocks",
    "extract_features",
    "fid",
    "kid",
    "knn_radii",
    "nearest_neighbours",
    "precision_recall",
    "to_uint8",
]

KID_SEED = 2020  # torch-fidelity's default rng_seed, so default KID subsets are the same draws
PR_K = 3  # neighbourhood size of precision/recall, as StyleGAN2-ADA's pr50k3
#: Largest distance block held at once (10,000 x 10,000 distances go through 838 rows at a time).
_BLOCK_BYTES = 64 << 20


def to_uint8(images: Tensor) -> Tensor:
    """Generator output in [-1, 1] -> uint8 [0, 255] exactly as torch-fidelity's GAN example hands it over.

    torch-fidelity only accepts uint8 and leaves quantisation to the model; its reference generator
    (``examples/sngan_cifar10.py``) does ``(255 * (x.clamp(-1, 1) * 0.5 + 0.5)).to(torch.uint8)``, which
    truncates (floors, values being >= 0) rather than rounds. Matching it keeps our FIDs comparable to
    numbers computed that way; rounding would shift every pixel by up to one level.
    """
    return (255 * (images.clamp(-1, 1) * 0.5 + 0.5)).to(torch.uint8)


def extract_features(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    device: str | torch.device,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Pool3 features of every image in ``batches`` (uint8 ``(N, 3, H, W)`` tensors), as one (N, 2048) float64 array.

    ``model`` (a :class:`~ganmodels.inception.FIDInceptionV3`) is moved to ``device`` and run without
    autograd. float64 so the statistics downstream are computed in double precision; the network itself
    runs in float32 like torch-fidelity's, so the values are the same. ``progress`` is called after each
    batch with the number of images done so far.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    out: list[np.ndarray] = []
    done = 0
    with torch.inference_mode():
        for batch in batches:
            images = batch.to(device, non_blocking=device.type == "cuda")
            out.append(model(images).to("cpu", torch.float64).numpy())
            done += len(batch)
            if progress is not None:
                progress(done)
    return np.concatenate(out) if out else np.empty((0, 2048), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean and covariance of a feature set: all FID needs, so a dataset's side is computed once and stored.

    ``eq=False``: comparing arrays with ``==`` has no single truth value; compare fields with numpy.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        """Mean and unbiased covariance (``np.cov``, as torch-fidelity), in float64."""
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise ValueError(f"need a (N >= 2, D) feature array, got shape {feats.shape}")
        return cls(mu=feats.mean(axis=0), sigma=np.cov(feats, rowvar=False), n=len(feats))

    def to_bytes(self) -> bytes:
        """An in-memory ``.npz`` (keys mu, sigma, n), so the caller can put it in any storage."""
        buf = io.BytesIO()
        np.savez(buf, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureStats:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            mu, sigma, n = z["mu"], z["sigma"], int(z["n"])
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"inconsistent feature stats: mu {mu.shape}, sigma {sigma.shape}")
        return cls(mu=mu, sigma=sigma, n=n)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; rounding-negative eigenvalues count as 0."""
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(w.clip(min=0))) @ v.T


def fid(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)``.

    torch-fidelity takes ``tr sqrt(S_a S_b)`` as the sum of square roots of the (complex) eigenvalues of
    ``S_a S_b``; those are the eigenvalues of the symmetric PSD ``sqrt(S_a) S_b sqrt(S_a)`` (a similar
    matrix), which ``eigh`` finds about 3x faster at 2048-d and without complex round-off. Rounding-negative
    eigenvalues contribute 0 in both.
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape} vs {b.mu.shape}")
    root_a = _psd_sqrt(a.sigma)
    eig = np.linalg.eigvalsh(root_a @ b.sigma @ root_a)
    tr_covmean = np.sqrt(eig.clip(min=0)).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """:func:`fid` of two feature sets; much faster than via :class:`FeatureStats` when the sets are small.

    With ``A``, ``B`` the centred features scaled by ``1/sqrt(n - 1)`` (so ``S_a = A^T A``, ``S_b = B^T B``),
    ``tr sqrt(S_a S_b)`` is the nuclear norm of ``A B^T`` (the eigenvalues of ``S_a S_b`` are the squared
    singular values of ``A B^T``), so FID needs an ``n_a x n_b`` SVD instead of two ``D x D`` eigen-
    decompositions: milliseconds instead of seconds for a few hundred holdout images at D = 2048. Sets
    larger than D go through the covariance route, which is cheaper there.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two (N >= 2, D) feature arrays with the same D, got {a.shape} and {b.shape}")
    if max(len(a), len(b)) > a.shape[1]:
        return fid(FeatureStats.from_features(a), FeatureStats.from_features(b))
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca = (a - mu_a) / np.sqrt(len(a) - 1)
    cb = (b - mu_b) / np.sqrt(len(b) - 1)
    nuclear = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2 * nuclear)


def _poly_mmd2(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    """Unbiased MMD^2 with kernel ``(gamma <x, y> + coef0) ** degree`` (diagonals of K_xx, K_yy left out)."""
    m = len(x)
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    return float(within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, population std) of unbiased polynomial-kernel MMD^2 over random subsets.

    Same estimator and draws as torch-fidelity: ``gamma`` defaults to ``1 / D``; each subset takes
    ``subset_size`` rows of ``feats_a`` then of ``feats_b`` without replacement from one
    ``np.random.RandomState(seed)``. Like torch-fidelity it raises ``ValueError`` when either set has
    fewer than ``subset_size`` rows, rather than silently changing the estimator; pass
    ``subset_size=min(1000, len(a), len(b))`` for small sets. Computed in float64 (torch-fidelity: float32).
    KID can be slightly negative for near-identical distributions.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature arrays with the same D, got {a.shape} and {b.shape}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    if len(a) < subset_size or len(b) < subset_size:
        raise ValueError(
            f"KID subset_size {subset_size} is larger than a feature set ({len(a)} and {len(b)} samples); "
            f"pass subset_size <= {min(len(a), len(b))}"
        )
    g = 1.0 / a.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), subset_size, replace=False)]
        y = b[rng.choice(len(b), subset_size, replace=False)]
        mmds[i] = _poly_mmd2(x, y, degree, g, coef0)
    return float(mmds.mean()), float(mmds.std())


# ---- nearest neighbours: precision/recall and memorisation ---------------------------------------------------


def distance_blocks(
    a: np.ndarray, b: np.ndarray, *, block_bytes: int = _BLOCK_BYTES
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, D)`` with ``D[i, j]`` the Euclidean distance of ``a[start + i]`` and ``b[j]``, rows in blocks.

    Each block holds at most ``block_bytes`` of float64 distances (at least one row), so memory stays linear in
    the set sizes: 10k x 10k features never need the 800 MB matrix. Computed as ``|x|^2 + |y|^2 - 2 x.y`` in
    float64 (one matrix product per block); rounding leaves identical vectors a distance of about 1e-7 of their
    norm, far below any distance between different images' features.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature arrays with the same D, got {a.shape} and {b.shape}")
    b_sq = np.einsum("ij,ij->i", b, b)
    rows = max(1, block_bytes // (8 * max(1, len(b))))
    for start in range(0, len(a), rows):
        x = a[start : start + rows]
        block = x @ b.T
        block *= -2.0
        block += np.einsum("ij,ij->i", x, x)[:, None]
        block += b_sq
        np.maximum(block, 0.0, out=block)
        yield start, np.sqrt(block, out=block)


def knn_radii(feats: np.ndarray, k: int, *, block_bytes: int = _BLOCK_BYTES) -> np.ndarray:
    """Each point's distance to its ``k``-th nearest other point of the same set: the radius of its k-NN ball."""
    if not 1 <= k < len(feats):
        raise ValueError(f"the {k}-th nearest neighbour needs more than {k} points, got {len(feats)}")
    out = np.empty(len(feats))
    for start, block in distance_blocks(feats, feats, block_bytes=block_bytes):
        out[start : start + len(block)] = np.partition(block, k, axis=1)[:, k]  # index 0: the point itself
    return out


def _inside(probes: np.ndarray, centres: np.ndarray, radii: np.ndarray, block_bytes: int) -> np.ndarray:
    """Whether each probe lies in some centre's ball (distance <= its radius, as the reference implementation)."""
    inside = np.empty(len(probes), dtype=bool)
    for start, block in distance_blocks(probes, centres, block_bytes=block_bytes):
        inside[start : start + len(block)] = (block <= radii).any(axis=1)
    return inside


def precision_recall(
    fake: np.ndarray, real: np.ndarray, *, k: int = PR_K, block_bytes: int = _BLOCK_BYTES
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of k-NN balls.

    Precision is the share of generated samples inside the real manifold (are samples realistic?), recall the
    share of real images inside the generated manifold (is the real variety covered?). StyleGAN2-ADA's
    ``pr50k3`` computes the same with k = 3 on VGG16 features and 50k images; here the features are FID's
    Inception ones, so the values rank runs but are not comparable with published pr50k3 numbers.
    """
    precision = _inside(fake, real, knn_radii(real, k, block_bytes=block_bytes), block_bytes).mean()
    recall = _inside(real, fake, knn_radii(fake, k, block_bytes=block_bytes), block_bytes).mean()
    return float(precision), float(recall)


def copy_ratios(fake: np.ndarray, train: np.ndarray, *, block_bytes: int = _BLOCK_BYTES) -> np.ndarray:
    """Per generated sample, ``min_j d(sample, t_j) / r_j`` with ``r_j`` training image j's 1-NN distance.

    Below 1 the sample lies inside a training image's nearest-neighbour ball: closer to that image than any
    other training image is, which is what a copy looks like (the copy rate is the share below 1). Radii are
    clipped at 1e-12, so exact duplicates in the training set do not divide by zero.
    """
    radii = np.maximum(knn_radii(train, 1, block_bytes=block_bytes), 1e-12)
    out = np.empty(len(fake))
    for start, block in distance_blocks(fake, train, block_bytes=block_bytes):
        out[start : start + len(block)] = (block / radii).min(axis=1)
    return out


def nearest_neighbours(
    query: np.ndarray, ref: np.ndarray, k: int, *, block_bytes: int = _BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, distances)``, each ``(len(query), k)``: each query's ``k`` nearest rows of ``ref``, nearest first."""
    if not 1 <= k <= len(ref):
        raise ValueError(f"{k} nearest neighbours need at least {k} reference points, got {len(ref)}")
    idx = np.empty((len(query), k), dtype=np.int64)
    dist = np.empty((len(query), k))
    for start, block in distance_blocks(query, ref, block_bytes=block_bytes):
        part = np.argpartition(block, k - 1, axis=1)[:, :k]
        part_d = np.take_along_axis(block, part, axis=1)
        order = np.argsort(part_d, axis=1, kind="stable")
        idx[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        dist[start : start + len(block)] = np.take_along_axis(part_d, order, axis=1)
    return idx, dist
