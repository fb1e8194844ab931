"""A realism measure for 32 px dog images that runs on this machine: no weights to download.

FID needs Inception weights that cannot be fetched here, and FID with random weights means nothing. So
the project trains its own feature extractor: a small CNN that tells dogs (``dogs-large``, ``dogs-photos``,
``dogs``) from not-dogs (``null``, ``null-photos``) at 32 px, on the CPU, in about three minutes, with an
auxiliary task (which quarter turn an image was given) that makes its features see shape, not only colour
and texture. Its penultimate layer (128 global-average-pooled conv features) gives

- a Frechet distance (FD, FID's formula) between generated samples and held-out real dogs;
- precision and recall in the style of Kynkaanniemi et al. 2019 (k-NN manifolds, k = 3 as StyleGAN2-ADA's
  ``pr50k3``): precision is the share of samples inside the real dogs' manifold (realism), recall the share
  of real dogs inside the samples' manifold (variety). Both sets are cut to the same size first.

Data: the fixture folders go through the pipeline's ingest and curation (``fixture_data.py``: exact,
pixel and perceptual duplicates removed) and the pipeline's preprocessing (``pipelines.dataset.preprocess``:
centre crop, LANCZOS to 32 px, JPEG q95: the pixels a GAN trained on a dataset version sees). Each
accepted image falls, by a salted hash of its sha256, into one of three splits, the same for every class:
``reference`` (25%: the real dogs that generated samples are compared with), ``calibration`` (25%: the
second real set of the calibration table) and ``train`` (50%: what the classifier learns from, and the
only images a benchmark may train a GAN on; ``QualityMetric.heldout_keys`` lists the others). The split
ignores the dataset builder's own holdout, and near duplicates cannot straddle it: curation keeps one of
each.

The trained classifier, with the reference features, is cached in ``benchmarks/out/quality_metric/``
(git-ignored) under a hash of the exact training images, their labels and the settings, so the same
data and settings load the same weights; training is seeded and deterministic on a given machine.

Run by hand: ``python benchmarks/quality_metric.py`` trains (or loads) the classifier and prints the
calibration table: real dogs against the reference should score an FD near 0 with high precision and
recall; degraded dogs (pixel-shuffled, blurred), noise, not-dog photos and map tiles far worse. FD is
the figure to rank by. Precision is the weakest part with a reference of ~650 images: a few odd real
"dogs" (a logo, a cut-out) have huge k-NN balls, and inputs the classifier never saw, whose features
all land in one spot, are inside such a ball or not as a whole (uniform noise: precision 0.51, recall 0).

API::

    metric = load_metric()                       # MetricSettings(), fixture data, cached weights
    metric.features(images)                      # (N, 3, 32, 32) in [-1, 1] -> (N, D) float64
    metric.score(fake_images)                    # {"fd", "precision", "recall", "n"}
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from fixture_data import DOG_FOLDERS, NULL_FOLDERS, TILE_FOLDERS, Curated, curate_fixtures, decisions_line
from torch import nn

from ganmodels.data import decode_image
from ganmodels.metrics import fid_from_features, precision_recall
from pipelines.dataset import preprocess

CACHE = Path(__file__).resolve().parent / "out" / "quality_metric"
FORMAT = 1  # bump when the cached file's layout or the training procedure changes
SPLITS = ("reference", "calibration", "train")


@dataclasses.dataclass(frozen=True)
class MetricSettings:
    """Everything that changes the trained classifier or the split (all of it goes into the cache key)."""

    resolution: int = 32
    width: int = 32  # feature maps of the first conv; the features are 4 * width wide
    epochs: int = 12
    rotation_weight: float = 1.0  # the auxiliary rotation task (see train_classifier); 0 = dog / not-dog only
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    reference_share: float = 0.25
    calibration_share: float = 0.25
    k: int = 3  # precision/recall neighbourhood
    salt: str = "quality-metric-v1"  # changing it draws a different split

    @property
    def feature_dim(self) -> int:
        return 4 * self.width


def split_of(sha256: str, settings: MetricSettings) -> str:
    """``reference``, ``calibration`` or ``train``, from a salted hash of the image's sha256 alone."""
    u = int(hashlib.sha256(f"{settings.salt}:{sha256}".encode()).hexdigest()[:16], 16) / 2**64
    if u < settings.reference_share:
        return "reference"
    return "calibration" if u < settings.reference_share + settings.calibration_share else "train"


# ---- data ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MetricData:
    """Images in [-1, 1], (N, 3, R, R), by role; keys are the raw images' sha256."""

    train: torch.Tensor
    train_labels: torch.Tensor  # 1 = dog, 0 = not a dog
    train_keys: list[str]
    reference: torch.Tensor  # held-out real dogs
    reference_keys: list[str]
    heldout_keys: list[str]  # every image of every class outside the train split: no GAN may train on these
    calibration: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # name -> held-out images

    def fingerprint(self, settings: MetricSettings) -> str:
        """Hash of the training images (keys, labels), the reference keys and the settings: the cache key."""
        h = hashlib.sha256(json.dumps([FORMAT, dataclasses.asdict(settings)], sort_keys=True).encode())
        for key, label in sorted(zip(self.train_keys, self.train_labels.tolist(), strict=True)):
            h.update(f"{key}:{label}\n".encode())
        for key in sorted(self.reference_keys):
            h.update(f"ref:{key}\n".encode())
        return h.hexdigest()[:16]


def _load_images(curated: Curated, rows: list[dict], resolution: int) -> torch.Tensor:
    """The pipeline's preprocessing of each row's raw image, decoded as the training loader decodes it."""

    def one(row: dict) -> torch.Tensor:
        return decode_image(preprocess(curated.storage.get_bytes(row["storage_key"]), resolution))

    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(pool.map(one, rows))
    return torch.stack(images) if images else torch.empty(0, 3, resolution, resolution)


def metric_data(curated: Curated, settings: MetricSettings) -> MetricData:
    """Split curated dogs (``dogs``), not-dogs (``null``) and tiles (``satellite``) into the metric's roles.

    Dogs: reference / calibration / classifier training. Not-dogs: calibration, classifier training.
    Tiles: calibration only (the classifier never sees them, so they test it out of its training domain).
    Within a role, rows are in sha256 order, so every run sees the same images in the same order.
    """
    by: dict[tuple[str, str], list[dict]] = {}
    for row in sorted(curated.accepted, key=lambda r: r["sha256"]):
        by.setdefault((row["class"], split_of(row["sha256"], settings)), []).append(row)

    def rows(class_name: str, *splits: str) -> list[dict]:
        return [r for s in splits for r in by.get((class_name, s), [])]

    dogs, others = rows("dogs", "train"), rows("null", "train")
    train = _load_images(curated, dogs + others, settings.resolution)
    heldout = [r["sha256"] for r in curated.accepted if split_of(r["sha256"], settings) != "train"]
    return MetricData(
        train=train,
        train_labels=torch.tensor([1] * len(dogs) + [0] * len(others), dtype=torch.int64),
        train_keys=[r["sha256"] for r in dogs + others],
        reference=_load_images(curated, rows("dogs", "reference"), settings.resolution),
        reference_keys=[r["sha256"] for r in rows("dogs", "reference")],
        heldout_keys=sorted(heldout),
        calibration={
            "dogs": _load_images(curated, rows("dogs", "calibration"), settings.resolution),
            "null": _load_images(curated, rows("null", "reference", "calibration"), settings.resolution),
            "tiles": _load_images(curated, rows("satellite", "reference", "calibration"), settings.resolution),
        },
    )


def fixture_metric_data(settings: MetricSettings, log: Callable[[str], None] = print) -> MetricData:
    """:func:`metric_data` of every dog, not-dog and tile fixture, curated in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="quality-metric-") as tmp:
        folders = {"dogs": DOG_FOLDERS, "null": NULL_FOLDERS, "satellite": TILE_FOLDERS}
        curated = curate_fixtures(Path(tmp), folders)
        log(decisions_line(curated))
        return metric_data(curated, settings)


# ---- the classifier ------------------------------------------------------------------------------------


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DogClassifier(nn.Module):
    """Five 3x3 conv layers (32 -> 16 -> 8 px), global average pooling, one linear layer to 2 logits.

    The first layer is a single conv: at 32x32 a second one would cost more than the rest of the net.
    ``rotation`` predicts which of 4 quarter turns an image was given (training only).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            *_conv(3, w),
            nn.MaxPool2d(2),
            *_conv(w, 2 * w),
            *_conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w),
            *_conv(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, 2)
        self.rotation = nn.Linear(4 * w, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 px (reflect padding): 2,000 images go further."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    r = x.shape[-1]
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2, len(x)), generator=gen).tolist()
    return torch.stack([padded[i, :, b : b + r, a : a + r] for i, (a, b) in enumerate(zip(dx, dy, strict=True))])


def _rotate(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for k in range(1, 4):
        chosen = quarter_turns == k
        out[chosen] = torch.rot90(x[chosen], k, (2, 3))
    return out


def train_classifier(data: MetricData, settings: MetricSettings, log: Callable[[str], None] = print) -> DogClassifier:
    """Seeded Adam with cosine decay and class-balanced cross-entropy (there are more dogs than not-dogs).

    Each batch also goes through the net turned by random quarter turns, and the ``rotation`` head learns
    which (Gidaris et al. 2018, self-supervised). Telling dogs from cats at 32 px with 1,800 images leaves
    features that ignore shape: without this task, pixel-shuffled dogs scored precision 0.97 (as real
    dogs do); with it 0.23, for less CPU time (12 epochs with it, 20 without).
    """
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    net = DogClassifier(settings.width)
    counts = torch.bincount(data.train_labels, minlength=2).float()
    weight = counts.sum() / (2 * counts.clamp(min=1))
    steps_per_epoch = max(len(data.train) // settings.batch_size, 1)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    net.train()
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(data.train), generator=gen)
        total, correct, turned = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
            x, y = _augment(data.train[idx], gen), data.train_labels[idx]
            if settings.rotation_weight:
                turns = torch.randint(0, 4, (len(x),), generator=gen)
                feats = net.body(torch.cat([x, _rotate(x, turns)]))
                logits, rot_logits = net.head(feats[: len(x)]), net.rotation(feats[len(x) :])
                rot_loss = F.cross_entropy(rot_logits, turns)
                turned += int((rot_logits.argmax(1) == turns).sum())
            else:
                logits, rot_loss = net(x), torch.zeros(())
            loss = F.cross_entropy(logits, y, weight=weight) + settings.rotation_weight * rot_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        seen = steps_per_epoch * settings.batch_size
        log(
            f"  epoch {epoch + 1:>2}/{settings.epochs}: loss {total / seen:.3f}, train accuracy {correct / seen:.3f},"
            f" rotation accuracy {turned / seen:.3f} ({time.perf_counter() - t0:.0f} s)"
        )
    return net.eval()


# ---- the metric ----------------------------------------------------------------------------------------


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels a saved image has: real images are 8-bit, generated ones must be too."""
    return torch.round((images.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


class QualityMetric:
    """The trained classifier's features, and FD / precision / recall against the held-out real dogs."""

    def __init__(
        self,
        net: DogClassifier,
        settings: MetricSettings,
        reference_keys: list[str],
        heldout_keys: list[str],
        key: str,
        reference_features: np.ndarray | None = None,
        reference: torch.Tensor | None = None,
    ) -> None:
        self.net = net.eval()
        self.settings = settings
        self.reference_keys = reference_keys
        self.heldout_keys = heldout_keys
        self.key = key
        self.path: Path | None = None  # the cached file, once saved or loaded
        if reference_features is None:
            if reference is None:
                raise ValueError("need the reference images or their features")
            reference_features = self.features(reference)
        self.reference_features = reference_features

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 500) -> np.ndarray:
        """Penultimate-layer features (N, 4 * width), float64, of images in [-1, 1] quantised to 8 bits."""
        r = self.settings.resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, r, r):
            raise ValueError(f"images must be (N, 3, {r}, {r}) in [-1, 1], got {tuple(images.shape)}")
        out = [self.net.body(quantize(images[i : i + batch].float())) for i in range(0, len(images), batch)]
        return torch.cat(out).double().numpy() if out else np.empty((0, self.settings.feature_dim))

    def score_features(self, feats: np.ndarray) -> dict[str, float]:
        """FD on every sample; precision and recall on the first min(N, reference) of each set."""
        ref = self.reference_features
        n = min(len(feats), len(ref))
        precision, recall = precision_recall(feats[:n], ref[:n], k=self.settings.k)
        return {"fd": fid_from_features(feats, ref), "precision": precision, "recall": recall, "n": len(feats)}

    def score(self, fake_images: torch.Tensor) -> dict[str, float]:
        """``{"fd", "precision", "recall", "n"}`` of images in [-1, 1] against the held-out real dogs."""
        return self.score_features(self.features(fake_images))

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, label: int) -> float:
        """Share of ``images`` the classifier puts in class ``label`` (1 = dog)."""
        logits = torch.cat([self.net(quantize(images[i : i + 500])) for i in range(0, len(images), 500)])
        return float((logits.argmax(1) == label).float().mean())

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "format": FORMAT,
                "settings": dataclasses.asdict(self.settings),
                "state_dict": self.net.state_dict(),
                "reference_features": torch.from_numpy(self.reference_features),
                "reference_keys": self.reference_keys,
                "heldout_keys": self.heldout_keys,
                "key": self.key,
            },
            tmp,
        )
        tmp.replace(path)
        self.path = path

    @classmethod
    def load(cls, path: Path) -> QualityMetric:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["format"] != FORMAT:
            raise ValueError(f"{path} is metric format {state['format']}, this code reads {FORMAT}: retrain")
        settings = MetricSettings(**state["settings"])
        net = DogClassifier(settings.width)
        net.load_state_dict(state["state_dict"])
        metric = cls(
            net,
            settings,
            list(state["reference_keys"]),
            list(state["heldout_keys"]),
            state["key"],
            reference_features=state["reference_features"].numpy(),
        )
        metric.path = path
        return metric


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"metric-{key}.pt"


def load_metric(
    settings: MetricSettings | None = None,
    *,
    data: MetricData | None = None,
    cache_dir: Path = CACHE,
    log: Callable[[str], None] = print,
) -> QualityMetric:
    """The metric for ``data`` (default: the fixtures, curated), from the cache or trained and cached."""
    settings = settings or MetricSettings()
    if data is None:
        data = fixture_metric_data(settings, log)
    key = data.fingerprint(settings)
    path = cache_path(cache_dir, key)
    if path.exists():
        log(f"metric: cached classifier {path}")
        return QualityMetric.load(path)
    log(
        f"metric: training the classifier on {int(data.train_labels.sum())} dogs and "
        f"{int((data.train_labels == 0).sum())} not-dogs at {settings.resolution} px ({settings.epochs} epochs)"
    )
    net = train_classifier(data, settings, log)
    metric = QualityMetric(net, settings, data.reference_keys, data.heldout_keys, key, reference=data.reference)
    metric.save(path)
    log(f"metric: saved {path}")
    return metric


# ---- calibration ---------------------------------------------------------------------------------------


def pixel_shuffle(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image's pixels moved to random places (one permutation per image, all channels alike).

    Colours and their histogram stay, every spatial structure goes: what a metric blind to shape misses.
    """
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)
    perm = torch.stack([torch.randperm(h * w, generator=gen) for _ in range(n)])
    return torch.gather(flat, 2, perm[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius 3 sigma, reflect padding) of images (N, C, H, W)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    out = F.conv2d(
        F.pad(images, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c
    )
    return F.conv2d(
        F.pad(out, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )


def calibration_sets(data: MetricData, seed: int) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, images) of every calibration row; degraded dogs are degraded calibration-split dogs."""
    gen = torch.Generator().manual_seed(seed)
    dogs = data.calibration["dogs"]
    seen_dogs = data.train[data.train_labels == 1][: len(data.reference)]
    yield "real dogs, calibration split (unseen by the classifier)", dogs
    yield "real dogs, classifier's training split (a GAN's training set)", seen_dogs
    yield "real dogs, calibration split, first 250 (n effect)", dogs[:250]
    yield "dogs, Gaussian blur sigma 0.5 px", gaussian_blur(dogs, 0.5)
    yield "dogs, Gaussian blur sigma 1 px", gaussian_blur(dogs, 1.0)
    yield "dogs, pixel-shuffled", pixel_shuffle(dogs, gen)
    yield "mode collapse: 8 real dogs, each repeated", dogs[:8].repeat_interleave(math.ceil(len(dogs) / 8), 0)
    yield "uniform noise", torch.rand(dogs.shape, generator=gen) * 2 - 1
    yield "not-dogs: held-out null + null-photos", data.calibration["null"]
    yield "map tiles, held-out", data.calibration["tiles"]


def calibrate(metric: QualityMetric, data: MetricData, seed: int) -> list[dict[str, object]]:
    """One scored row per calibration set."""
    return [{"set": name, **metric.score(images)} for name, images in calibration_sets(data, seed)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--epochs", type=int, default=MetricSettings().epochs)
    ap.add_argument("--seed", type=int, default=0, help="classifier seed (and the calibration's random draws)")
    ap.add_argument("--cache-dir", type=Path, default=CACHE)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    settings = MetricSettings(epochs=args.epochs, seed=args.seed)
    data = fixture_metric_data(settings)
    print(
        f"splits: classifier trains on {len(data.train)} images, reference {len(data.reference)} dogs, calibration "
        + ", ".join(f"{k} {len(v)}" for k, v in data.calibration.items())
        + f" ({time.perf_counter() - t0:.0f} s)"
    )
    metric = load_metric(settings, data=data, cache_dir=args.cache_dir)
    acc_dogs = metric.accuracy(torch.cat([data.reference, data.calibration["dogs"]]), 1)
    acc_null = metric.accuracy(data.calibration["null"], 0)
    print(
        f"held-out accuracy: dogs {acc_dogs:.3f}, not-dogs {acc_null:.3f} (balanced {(acc_dogs + acc_null) / 2:.3f});"
        f" tiles called not-dog {metric.accuracy(data.calibration['tiles'], 0):.3f}"
    )
    rows = calibrate(metric, data, args.seed)
    print(
        f"\nagainst the {len(data.reference)} reference dogs ({settings.feature_dim}-d features, k = {settings.k}):\n"
    )
    print("| set | n | FD | precision | recall |\n| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['set']} | {r['n']} | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    spread = float(np.trace(np.cov(metric.reference_features, rowvar=False)))
    print(f"\nFD of samples whose features all sat at the reference mean: tr(cov) = {spread:.2f} (recall 0)")
    print(f"key {metric.key}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
