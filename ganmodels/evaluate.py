"""Scoring a training run: FID and KID of every generator snapshot against its dataset's holdout split.

A run directory holds ``generators/step-N.pt`` for every checkpoint step (written by the trainer: the
sampling generator, its net config and its class names). :class:`Evaluator` scores each snapshot:

- **real features** of the holdout split, per class, are extracted once per (dataset version, FID
  weights) and stored at ``eval/real/<dataset version>/<weights sha256[:16]>/<class>.npz`` (the features,
  their mean and covariance); every later evaluation of every model trained on that version loads them;
- **generated features**: ``num_samples`` images from a fixed, seeded noise batch (a conditional G gets
  equal blocks of each of its classes), quantised to uint8 like the reference implementations;
- **scores**: FID, KID and precision/recall (k-NN manifolds, k = 3) against the union of the trained classes'
  holdout images, and for a conditional G FID and KID also per class. A snapshot's scores are stored under its
  own sha256 and the evaluation settings (``eval/scores/<snapshot sha256>/<identity>.json``), so a snapshot is
  never scored twice.
- **memorisation** (:meth:`Evaluator.memorization`, the final snapshot): the copy rate, the share of
  generated samples inside some training image's nearest-neighbour ball (closer to it than any other training
  image is), beside the same share of the real holdout images (what a generator that copies nothing scores),
  and a grid of the most copy-like samples with their nearest training images. Features of the first
  ``memorization_train_samples`` training images (split evenly over the classes; the training split is stored
  in a seeded hash order, so these are a random sample) are extracted once per (dataset version, FID weights)
  and class, at ``eval/train/<dataset version>/<weights sha256[:16]>/<class>.npz``, and extended when more are
  asked for. The result and its grid are stored at ``eval/memorization/<snapshot sha256>/<identity>.json|.png``.

Without FID weights (``extractor=None``) FID, KID, precision/recall and the memorisation check are skipped,
never estimated with other features: the scores hold ``None`` there and the sample diversity (below) is
still computed.

Every score also carries the **sample diversity**: the mean pairwise L2 distance of the generated images
(pixels in [-1, 1]), beside the same measure on the real holdout images. It needs no weights; a value far
below the real one is mode collapse.

Nothing here imports dagster: ``assets/evaluation.py`` calls it, and a script can too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ganmodels.checkpoint import file_sha256, list_checkpoints, load_checkpoint
from ganmodels.data import ShardImageDataset
from ganmodels.frames import make_grid, mean_pairwise_distance
from ganmodels.metrics import (
    PR_K,
    FeatureStats,
    copy_ratios,
    extract_features,
    fid_from_features,
    kid,
    nearest_neighbours,
    precision_recall,
    to_uint8,
)
from ganmodels.nets import NetConfig, build
from pipelines.dataset import DatasetIndex
from pipelines.storage import Storage

log = logging.getLogger(__name__)

__all__ = [
    "GRID_NEIGHBOURS",
    "GRID_ROWS",
    "EvalSettings",
    "Evaluator",
    "MemorizationCheck",
    "SnapshotScore",
    "list_snapshots",
    "load_generator",
    "memorization_grid",
]

#: Pairwise distances are quadratic in the count; this many images give the diversity to about 1%.
_DIVERSITY_IMAGES = 512
#: The memorisation grid: this many of the most copy-like samples, each with its nearest training images.
GRID_ROWS = 8
GRID_NEIGHBOURS = 3


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What changes a score (all but ``batch_size`` and ``device`` are part of a score's identity)."""

    num_samples: int = 1000
    batch_size: int = 50
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    device: str = "auto"
    #: Training images the memorisation check compares with (0: no check); identifies that check only.
    memorization_train_samples: int = 2000

    def __post_init__(self) -> None:
        if self.num_samples < 2 or self.batch_size < 1 or self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise ValueError(f"evaluation settings out of range: {self}")
        if self.memorization_train_samples == 1 or self.memorization_train_samples < 0:
            raise ValueError(f"memorization_train_samples must be 0 (off) or at least 2: {self}")

    def identity(self) -> dict[str, int]:
        """The settings a snapshot's scores depend on (changing the memorisation check rescores nothing)."""
        skip = ("batch_size", "device", "memorization_train_samples")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclasses.dataclass
class SnapshotScore:
    """One snapshot's scores; ``fid``/``kid``/``kid_std`` are None when FID was skipped (no weights)."""

    step: int
    snapshot_sha256: str
    fid: float | None
    kid: float | None
    kid_std: float | None
    num_samples: int
    num_real: int
    kid_subset_size: int
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    diversity: float | None = None  # mean pairwise L2 distance of the generated images (absent in old records)
    real_diversity: float | None = None  # the same of the real holdout images
    precision: float | None = None  # share of samples inside the real k-NN manifold (None: FID skipped)
    recall: float | None = None  # share of real images inside the generated k-NN manifold
    cached: bool = False  # loaded from storage, not computed now

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "cached"}


@dataclasses.dataclass
class MemorizationCheck:
    """Whether one snapshot's samples copy training images (module docstring), and the grid that shows it.

    ``rows``: the grid's rows, most copy-like sample first: the sample's index among the generated ones, its
    copy ratio (below 1: inside a training image's nearest-neighbour ball) and the distances of its nearest
    training images, nearest first (the grid's columns after the sample).
    """

    step: int
    snapshot_sha256: str
    classes: list[str]  # whose training and holdout images were compared with
    copy_rate: float
    holdout_copy_rate: float  # the real holdout images, which the generator never saw, measured the same way
    num_samples: int
    num_train: int  # training images compared with (the cap, or all there are)
    num_holdout: int
    rows: list[dict[str, Any]]
    grid_png: bytes = b""
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("grid_png", "cached")}


def list_snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every generator snapshot of a run, oldest first."""
    return list_checkpoints(Path(run_dir) / "generators")


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A snapshot's generator in eval mode and the snapshot's other fields (step, net, classes, ema)."""
    state = load_checkpoint(Path(path), map_location="cpu")
    net = NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["net"].items()})
    g, _ = build(net)
    g.load_state_dict(state["G"])
    info = {k: v for k, v in state.items() if k != "G"}
    return g.to(device).eval(), info


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


class Evaluator:
    """Scores generator snapshots of runs trained on one dataset version (module docstring).

    ``extractor`` is the FID Inception network (:func:`ganmodels.inception.load_inception`) and
    ``weights_sha256`` names its weights: features from other weights are other features. Both None: FID
    and KID are skipped, the diversity is still measured.
    """

    def __init__(
        self,
        store: Storage,
        index: DatasetIndex,
        extractor: torch.nn.Module | None,
        weights_sha256: str | None,
        settings: EvalSettings,
        *,
        endpoint_url: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.extractor = extractor
        self.weights_id = weights_sha256[:16] if weights_sha256 else "no-fid"
        self.settings = settings
        self.endpoint_url = endpoint_url
        self.device = _device(settings.device)
        self.progress = progress or log.info
        self.real_reused: dict[str, bool] = {}  # class -> loaded from storage (True) or extracted now
        self.train_reused: dict[str, bool] = {}  # the same for the training features
        self._real: dict[str, np.ndarray] = {}
        self._real_pixels: dict[str, tuple[int, float]] = {}  # class -> (holdout count, diversity)
        # The last snapshot scored now: (sha256, classes, images, features), for its memorisation check.
        self._last_samples: tuple[str, list[str], torch.Tensor, np.ndarray] | None = None

    # ---- real images -------------------------------------------------------------------------------------

    def real_key(self, cls: str) -> str:
        return f"eval/real/{self.index.version}/{self.weights_id}/{cls}.npz"

    def _holdout_batches(self, cls: str) -> Iterator[torch.Tensor]:
        if not self.index.index["splits"].get("holdout"):
            raise ValueError(
                f"dataset {self.index.version} has no holdout split to evaluate against: build it with "
                "holdout_fraction > 0 (webdataset_shards config)"
            )
        return self._split_batches("holdout", cls)

    def _split_batches(self, split: str, cls: str) -> Iterator[torch.Tensor]:
        """One class's images of a split as uint8 batches, always in the same order (shards as listed)."""
        names = list(self.index.index["classes"])
        keys = [s["key"] for s in self.index.index["splits"].get(split, [])]
        if not keys:
            return
        data = ShardImageDataset(
            self.store.root_url,
            keys,
            classes=[names.index(cls)],
            shuffle_shards=False,
            shuffle_buffer=0,
            endpoint_url=self.endpoint_url,
        )
        loader = torch.utils.data.DataLoader(data, batch_size=self.settings.batch_size, num_workers=0)
        for images, _ in loader:  # decoded as x / 127.5 - 1: this recovers the stored uint8 pixels exactly
            yield images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)

    def real_pixels(self, classes: Sequence[str]) -> tuple[int, float]:
        """(holdout image count, diversity) of the union of ``classes``: what needs no FID weights."""
        key = ",".join(classes)
        if key not in self._real_pixels:
            seen = 0
            kept: list[torch.Tensor] = []
            for cls in classes:
                for batch in self._holdout_batches(cls):
                    seen += len(batch)
                    kept.append(batch[: max(0, _DIVERSITY_IMAGES - sum(len(k) for k in kept))])
            images = torch.cat(kept) if kept else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
            self._real_pixels[key] = (seen, _diversity(images))
        return self._real_pixels[key]

    def real_features(self, cls: str) -> np.ndarray:
        """The holdout features of one class: loaded when stored, else extracted and stored (atomically)."""
        assert self.extractor is not None, "real features need the FID network"
        if cls in self._real:
            return self._real[cls]
        key = self.real_key(cls)
        if self.store.exists(key):
            with np.load(io.BytesIO(self.store.get_bytes(key))) as z:
                self.real_reused[cls] = True
                self._real[cls] = z["features"]
                return self._real[cls]
        self.progress(f"extracting holdout features of {cls!r} ({self.index.version})")
        feats = extract_features(
            self.extractor, self._holdout_batches(cls), device=self.device, progress=self._counter(f"holdout {cls}")
        )
        if len(feats) < 2:
            raise ValueError(
                f"dataset {self.index.version} has {len(feats)} holdout image(s) of class {cls!r}; FID needs at "
                "least 2 (raise holdout_fraction or add images)"
            )
        stats = FeatureStats.from_features(feats)
        buf = io.BytesIO()
        np.savez(buf, features=feats, mu=stats.mu, sigma=stats.sigma)
        self.store.put_bytes(key, buf.getvalue())
        self.real_reused[cls] = False
        self._real[cls] = feats
        return feats

    # ---- training images (the memorisation check) ------------------------------------------------------------

    def train_key(self, cls: str) -> str:
        return f"eval/train/{self.index.version}/{self.weights_id}/{cls}.npz"

    def _first_train(self, cls: str, n: int) -> Iterator[torch.Tensor]:
        """The first ``n`` training images of a class (a random sample: the split is stored in hash order)."""
        left = n
        for batch in self._split_batches("train", cls):
            yield batch[:left]
            left -= len(batch[:left])
            if left == 0:
                return

    def train_features(self, cls: str, n: int) -> np.ndarray:
        """Features of a class's first ``n`` training images (all, when it has fewer), float32 as the network's.

        Stored like the holdout's, once per dataset version and weights; a later request for more images than
        are stored extracts them all again (the same first ones come first) and replaces the file.
        """
        assert self.extractor is not None, "training features need the FID network"
        key = self.train_key(cls)
        if self.store.exists(key):
            with np.load(io.BytesIO(self.store.get_bytes(key))) as z:
                feats, complete = z["features"], bool(z["complete"])
            if len(feats) >= n or complete:
                self.train_reused[cls] = True
                return feats[:n]
        self.progress(f"extracting features of {n} training images of {cls!r} ({self.index.version})")
        feats = extract_features(
            self.extractor, self._first_train(cls, n), device=self.device, progress=self._counter(f"train {cls}")
        ).astype(np.float32)  # the network's own precision: nothing is lost, half the bytes of float64
        buf = io.BytesIO()
        np.savez(buf, features=feats, complete=np.bool_(len(feats) < n))
        self.store.put_bytes(key, buf.getvalue())
        self.train_reused[cls] = False
        return feats

    def _train_images(self, classes: Sequence[str], counts: Sequence[int], indices: np.ndarray) -> torch.Tensor:
        """The training images at ``indices`` of the concatenation of each class's first ``counts`` images."""
        wanted = {int(i) for i in indices.ravel()}
        found: dict[int, torch.Tensor] = {}
        offset = 0
        for cls, count in zip(classes, counts, strict=True):
            if any(offset <= i < offset + count for i in wanted):
                position = offset
                for batch in self._first_train(cls, max(i for i in wanted if i < offset + count) - offset + 1):
                    found.update({position + j: im for j, im in enumerate(batch) if position + j in wanted})
                    position += len(batch)
            offset += count
        images = [found[int(i)] for i in indices.ravel()]
        return torch.stack(images).reshape(*indices.shape, *images[0].shape)

    # ---- generated images --------------------------------------------------------------------------------

    def _counter(self, what: str) -> Callable[[int], None]:
        def report(done: int) -> None:
            self.progress(f"{what}: {done} images")

        return report

    @torch.no_grad()
    def _generated(self, g: torch.nn.Module, net: dict, labels: torch.Tensor | None) -> torch.Tensor:
        """``num_samples`` images from the fixed, seeded noise, as uint8 (N, C, H, W) on the CPU."""
        s = self.settings
        noise = torch.Generator().manual_seed(s.seed)
        out = []
        for start in range(0, s.num_samples, s.batch_size):
            n = min(s.batch_size, s.num_samples - start)
            z = torch.randn(n, net["latent_dim"], generator=noise).to(self.device)
            y = labels[start : start + n].to(self.device) if labels is not None else None
            out.append(to_uint8(g(z, y).float().cpu()))
        return torch.cat(out)

    # ---- scoring -----------------------------------------------------------------------------------------

    def _identity_digest(self, **extra: int) -> str:
        ident = {"dataset": self.index.version, "weights": self.weights_id, **self.settings.identity(), **extra}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def score_key(self, snapshot_sha256: str) -> str:
        return f"eval/scores/{snapshot_sha256}/{self._identity_digest(pr_k=PR_K)}.json"

    def memorization_key(self, snapshot_sha256: str, suffix: str = ".json") -> str:
        digest = self._identity_digest(
            train_samples=self.settings.memorization_train_samples, rows=GRID_ROWS, neighbours=GRID_NEIGHBOURS
        )
        return f"eval/memorization/{snapshot_sha256}/{digest}{suffix}"

    def _kid(self, fake: np.ndarray, real: np.ndarray) -> tuple[float, float, int]:
        size = min(self.settings.kid_subset_size, len(fake), len(real))
        mean, std = kid(fake, real, subsets=self.settings.kid_subsets, subset_size=size)
        return mean, std, size

    def score(self, step: int, path: Path) -> SnapshotScore:
        """The scores of one snapshot (from storage when this snapshot was scored with these settings)."""
        sha = file_sha256(path)
        key = self.score_key(sha)
        if self.store.exists(key):
            return SnapshotScore(**json.loads(self.store.get_bytes(key)), cached=True)
        self.progress(f"step {step}: sampling {self.settings.num_samples} images")
        classes, images, labels, by_class = self._sample(path)
        num_real, real_diversity = self.real_pixels(classes)
        result = SnapshotScore(
            step=step,
            snapshot_sha256=sha,
            fid=None,
            kid=None,
            kid_std=None,
            num_samples=len(images),
            num_real=num_real,
            kid_subset_size=0,
            classes=classes,
            per_class={},
            diversity=_diversity(images),
            real_diversity=real_diversity,
        )
        if self.extractor is not None:
            fake = self._features(images, f"step {step} samples")
            self._last_samples = (sha, classes, images, fake)
            self._fid_kid(result, fake, labels if by_class else None)
        self.store.put_bytes(key, json.dumps(result.to_dict(), indent=1).encode())
        fid = "skipped" if result.fid is None else f"{result.fid:.3f}"
        self.progress(f"step {step}: FID {fid}, diversity {result.diversity:.2f} (real {real_diversity:.2f})")
        return result

    def _sample(self, path: Path) -> tuple[list[str], torch.Tensor, torch.Tensor | None, bool]:
        """A snapshot's classes, its ``num_samples`` images, their labels (None: unconditional G), and whether
        label i is class i (else the labels are a label_field's values, e.g. breeds, scored together)."""
        g, info = load_generator(path, self.device)
        classes: list[str] = list(info["classes"])
        conditional = info["net"]["num_classes"] > 0
        # Net label i is the i-th class, or with a label_field (e.g. breed) the i-th label: every one in equal share.
        names = info.get("labels") or classes
        labels = torch.arange(len(names)).repeat_interleave(math.ceil(self.settings.num_samples / len(names)))
        labels = labels[: self.settings.num_samples] if conditional else None
        return classes, self._generated(g, info["net"], labels), labels, "labels" not in info

    def _features(self, images: torch.Tensor, what: str) -> np.ndarray:
        assert self.extractor is not None
        s = self.settings
        return extract_features(
            self.extractor,
            (images[i : i + s.batch_size] for i in range(0, len(images), s.batch_size)),
            device=self.device,
            progress=self._counter(what),
        )

    def _fid_kid(self, result: SnapshotScore, fake: np.ndarray, labels: torch.Tensor | None) -> None:
        """Fill in FID, KID and precision/recall (and per class FID and KID for a conditional G)."""
        real = {c: self.real_features(c) for c in result.classes}
        real_all = np.concatenate([real[c] for c in result.classes])
        result.fid = fid_from_features(fake, real_all)
        result.kid, result.kid_std, result.kid_subset_size = self._kid(fake, real_all)
        if min(len(fake), len(real_all)) > PR_K:  # each set needs a k-th nearest neighbour
            result.precision, result.recall = precision_recall(fake, real_all, k=PR_K)
        if labels is not None and len(result.classes) > 1:
            for i, c in enumerate(result.classes):
                mine = fake[(labels == i).numpy()]
                c_mean, c_std, _ = self._kid(mine, real[c])
                result.per_class[c] = {"fid": fid_from_features(mine, real[c]), "kid": c_mean, "kid_std": c_std}

    def memorization(self, step: int, path: Path) -> MemorizationCheck | None:
        """The memorisation check of one snapshot (module docstring), from storage when it was made before.

        None when there are fewer training images than the grid shows beside each sample (``GRID_NEIGHBOURS``).
        Needs the FID network, like the scores.
        """
        assert self.extractor is not None, "the memorisation check needs the FID network"
        assert self.settings.memorization_train_samples > 0, "the memorisation check is off"
        sha = file_sha256(path)
        key = self.memorization_key(sha)
        if self.store.exists(key):
            record = json.loads(self.store.get_bytes(key))
            grid = self.store.get_bytes(self.memorization_key(sha, ".png"))
            return MemorizationCheck(**record, grid_png=grid, cached=True)
        if self._last_samples is not None and self._last_samples[0] == sha:
            _, classes, images, fake = self._last_samples
        else:  # its scores came from storage: sample again (the same seeded noise) for the features
            classes, images, _, _ = self._sample(path)
            fake = self._features(images, f"step {step} samples")
        share, extra = divmod(self.settings.memorization_train_samples, len(classes))
        per_class = [self.train_features(c, share + (i < extra)) for i, c in enumerate(classes)]
        train = np.concatenate(per_class)
        if len(train) < max(2, GRID_NEIGHBOURS):  # a nearest-neighbour ball needs a neighbour, too
            return None
        holdout = np.concatenate([self.real_features(c) for c in classes])
        ratios = copy_ratios(fake, train)
        shown = np.argsort(ratios, kind="stable")[:GRID_ROWS]
        neighbours, distances = nearest_neighbours(fake[shown], train, GRID_NEIGHBOURS)
        grid = memorization_grid(images[shown], self._train_images(classes, [len(f) for f in per_class], neighbours))
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        result = MemorizationCheck(
            step=step,
            snapshot_sha256=sha,
            classes=classes,
            copy_rate=float((ratios < 1).mean()),
            holdout_copy_rate=float((copy_ratios(holdout, train) < 1).mean()),
            num_samples=len(fake),
            num_train=len(train),
            num_holdout=len(holdout),
            rows=[
                {"sample": int(i), "copy_ratio": float(ratios[i]), "distances": [float(d) for d in dist]}
                for i, dist in zip(shown, distances, strict=True)
            ],
            grid_png=buf.getvalue(),
        )
        self.store.put_bytes(self.memorization_key(sha, ".png"), result.grid_png)  # before the record: it names it
        self.store.put_bytes(key, json.dumps(result.to_dict(), indent=1).encode())
        self.progress(
            f"step {step}: copy rate {result.copy_rate:.3f} of {result.num_samples} samples against "
            f"{result.num_train} training images (holdout {result.holdout_copy_rate:.3f})"
        )
        return result

    def score_run(self, run_dir: str | Path, up_to_step: int | None = None) -> list[SnapshotScore]:
        """Every snapshot of a run (up to ``up_to_step``), oldest first; already-scored ones are loaded."""
        snapshots = [(s, p) for s, p in list_snapshots(run_dir) if up_to_step is None or s <= up_to_step]
        if not snapshots:
            raise FileNotFoundError(f"{run_dir}: no generator snapshots (generators/step-*.pt) to evaluate")
        return [self.score(step, path) for step, path in snapshots]


def _diversity(images: torch.Tensor) -> float:
    """Mean pairwise L2 distance of up to ``_DIVERSITY_IMAGES`` uint8 images, on pixels scaled to [-1, 1]."""
    sample = images[:_DIVERSITY_IMAGES].float().div(127.5).sub(1.0)
    return mean_pairwise_distance(sample) if len(sample) > 1 else math.nan


def memorization_grid(samples: torch.Tensor, neighbours: torch.Tensor) -> Image.Image:
    """One row per sample: the uint8 ``samples[i]`` (C, H, W), then its uint8 ``neighbours[i]`` (K, C, H, W)."""
    rows = torch.cat([samples.unsqueeze(1), neighbours], dim=1)
    return make_grid(rows.flatten(0, 1).float().div(127.5).sub(1.0), nrow=rows.shape[1])
