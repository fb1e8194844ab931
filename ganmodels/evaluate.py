"""Scoring a training run: FID and KID of every generator snapshot against its dataset's holdout split.

A run directory holds ``generators/step-N.pt`` for every checkpoint step (written by the trainer: the
sampling generator, its net config and its class names). :class:`Evaluator` scores each snapshot:

- **real features** of the holdout split, per class, are extracted once per (dataset version, FID
  weights) and stored at ``eval/real/<dataset version>/<weights sha256[:16]>/<class>.npz`` (the features,
  their mean and covariance); every later evaluation of every model trained on that version loads them;
- **generated features**: ``num_samples`` images from a fixed, seeded noise batch (a conditional G gets
  equal blocks of each of its classes), quantised to uint8 like the reference implementations;
- **scores**: FID and KID against the union of the trained classes' holdout images, and for a
  conditional G also per class. A snapshot's scores are stored under its own sha256 and the evaluation
  settings (``eval/scores/<snapshot sha256>/<identity>.json``), so a snapshot is never scored twice.

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

from ganmodels.checkpoint import file_sha256, list_checkpoints, load_checkpoint
from ganmodels.data import ShardImageDataset
from ganmodels.metrics import FeatureStats, extract_features, fid_from_features, kid, to_uint8
from ganmodels.nets import NetConfig, build
from pipelines.dataset import DatasetIndex
from pipelines.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["EvalSettings", "Evaluator", "SnapshotScore", "fid_curve_png", "list_snapshots", "load_generator"]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What changes a score (all but ``batch_size`` and ``device`` are part of a score's identity)."""

    num_samples: int = 1000
    batch_size: int = 50
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.num_samples < 2 or self.batch_size < 1 or self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise ValueError(f"evaluation settings out of range: {self}")

    def identity(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("batch_size", "device")}


@dataclasses.dataclass
class SnapshotScore:
    step: int
    snapshot_sha256: str
    fid: float
    kid: float
    kid_std: float
    num_samples: int
    num_real: int
    kid_subset_size: int
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    cached: bool = False  # loaded from storage, not computed now

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "cached"}


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
    ``weights_sha256`` names its weights: features from other weights are other features.
    """

    def __init__(
        self,
        store: Storage,
        index: DatasetIndex,
        extractor: torch.nn.Module,
        weights_sha256: str,
        settings: EvalSettings,
        *,
        endpoint_url: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.extractor = extractor
        self.weights_id = weights_sha256[:16]
        self.settings = settings
        self.endpoint_url = endpoint_url
        self.device = _device(settings.device)
        self.progress = progress or log.info
        self.real_reused: dict[str, bool] = {}  # class -> loaded from storage (True) or extracted now
        self._real: dict[str, np.ndarray] = {}

    # ---- real images -------------------------------------------------------------------------------------

    def real_key(self, cls: str) -> str:
        return f"eval/real/{self.index.version}/{self.weights_id}/{cls}.npz"

    def _holdout_batches(self, cls: str) -> Iterator[torch.Tensor]:
        names = list(self.index.index["classes"])
        keys = [s["key"] for s in self.index.index["splits"].get("holdout", [])]
        if not keys:
            raise ValueError(
                f"dataset {self.index.version} has no holdout split to evaluate against: build it with "
                "holdout_fraction > 0 (webdataset_shards config)"
            )
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

    def real_features(self, cls: str) -> np.ndarray:
        """The holdout features of one class: loaded when stored, else extracted and stored (atomically)."""
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

    # ---- generated images --------------------------------------------------------------------------------

    def _counter(self, what: str) -> Callable[[int], None]:
        def report(done: int) -> None:
            self.progress(f"{what}: {done} images")

        return report

    @torch.no_grad()
    def _generated(self, g: torch.nn.Module, net: dict, labels: torch.Tensor | None) -> Iterator[torch.Tensor]:
        s = self.settings
        noise = torch.Generator().manual_seed(s.seed)
        for start in range(0, s.num_samples, s.batch_size):
            n = min(s.batch_size, s.num_samples - start)
            z = torch.randn(n, net["latent_dim"], generator=noise).to(self.device)
            y = labels[start : start + n].to(self.device) if labels is not None else None
            yield to_uint8(g(z, y).float().cpu())

    # ---- scoring -----------------------------------------------------------------------------------------

    def score_key(self, snapshot_sha256: str) -> str:
        ident = {"dataset": self.index.version, "weights": self.weights_id, **self.settings.identity()}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return f"eval/scores/{snapshot_sha256}/{digest}.json"

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
        g, info = load_generator(path, self.device)
        classes: list[str] = list(info["classes"])
        real = {c: self.real_features(c) for c in classes}
        conditional = info["net"]["num_classes"] > 0
        labels = torch.arange(len(classes)).repeat_interleave(math.ceil(self.settings.num_samples / len(classes)))
        labels = labels[: self.settings.num_samples] if conditional else None
        self.progress(f"step {step}: sampling and extracting {self.settings.num_samples} images")
        fake = extract_features(
            self.extractor,
            self._generated(g, info["net"], labels),
            device=self.device,
            progress=self._counter(f"step {step} samples"),
        )
        real_all = np.concatenate([real[c] for c in classes])
        k_mean, k_std, size = self._kid(fake, real_all)
        per_class: dict[str, dict[str, float]] = {}
        if conditional and len(classes) > 1:
            for i, c in enumerate(classes):
                mine = fake[(labels == i).numpy()]
                c_mean, c_std, _ = self._kid(mine, real[c])
                per_class[c] = {
                    "fid": fid_from_features(mine, real[c]),
                    "kid": c_mean,
                    "kid_std": c_std,
                }
        result = SnapshotScore(
            step=step,
            snapshot_sha256=sha,
            fid=fid_from_features(fake, real_all),
            kid=k_mean,
            kid_std=k_std,
            num_samples=len(fake),
            num_real=len(real_all),
            kid_subset_size=size,
            classes=classes,
            per_class=per_class,
        )
        self.store.put_bytes(key, json.dumps(result.to_dict(), indent=1).encode())
        self.progress(f"step {step}: FID {result.fid:.3f}  KID {result.kid:.5f} ± {result.kid_std:.5f}")
        return result

    def score_run(self, run_dir: str | Path, up_to_step: int | None = None) -> list[SnapshotScore]:
        """Every snapshot of a run (up to ``up_to_step``), oldest first; already-scored ones are loaded."""
        snapshots = [(s, p) for s, p in list_snapshots(run_dir) if up_to_step is None or s <= up_to_step]
        if not snapshots:
            raise FileNotFoundError(f"{run_dir}: no generator snapshots (generators/step-*.pt) to evaluate")
        return [self.score(step, path) for step, path in snapshots]


def fid_curve_png(scores: Sequence[SnapshotScore], title: str) -> bytes:
    """FID (and per-class FID) over training steps as a PNG line plot."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        steps = [s.step for s in scores]
        ax.plot(steps, [s.fid for s in scores], marker="o", label="FID")
        for c in scores[-1].per_class if scores else []:
            ax.plot(steps, [s.per_class.get(c, {}).get("fid", math.nan) for s in scores], ls="--", label=f"FID {c}")
        ax.set_xlabel("training step")
        ax.set_ylabel("FID (lower is better)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
