"""The GAN training loop (plain PyTorch, no Dagster): seeded, resumable bit for bit, observable.

Usage::

    cfg = TrainConfig.from_dict(yaml.safe_load(open("train.yaml")))
    result = Trainer(cfg, data, out_dir).run()

``data`` is any iterable of ``(images, labels)`` batches (images ``(N, C, R, R)`` in ``[-1, 1]``, int64
labels ``(N,)``); it is re-iterated when it runs out. :func:`shard_batches` builds the real one from a
storage root and a dataset version.

One training *step* is one iteration of the update schedule: ``d`` discriminator updates (each on a new
data batch) then ``g`` generator updates, ``(d, g)`` from :class:`~ganmodels.adaptive.UpdateSchedule`.

Reproducibility and exact resume
--------------------------------
Nets are built after ``torch.manual_seed(seed)``. Every random draw of the loop comes from its own CPU
``torch.Generator`` seeded from ``seed``: ``noise`` (z), ``labels`` (G's class labels and BCE soft/noisy
targets), ``gp`` (WGAN-GP interpolation eps), ``augment`` (DiffAugment or ADA) and ``replay`` (the buffer's
own). Checkpoints (``out_dir/checkpoints/step-XXXXXXXX.pt``, atomic, the last ``keep_checkpoints``
kept) hold those generators, the global RNG states, G, D, both optimisers, EMA, replay buffer, update
schedule, ADA's probability and pending statistics, the AMP scalers, the failure monitors, the step and
the number of data batches consumed.
A checkpoint is written at step 0, every ``checkpoint_every`` steps and at the end; a new Trainer on
the same ``out_dir`` resumes from the newest loadable one.

Data position: if ``data`` has a ``start_at(batch_index)`` method it is called with the number of
batches consumed so far before iterating, and must then yield exactly the batches an uninterrupted run
would have seen from there (a dataset indexed by batch number does this; the tests use one). With such
data, on CPU, ``2N`` steps straight and ``N`` steps + kill + resume + ``N`` steps give identical weights
and losses. The shard loader (:class:`ShardBatches`) cannot seek inside a shuffled WebDataset stream:
on resume it restarts with a fresh epoch whose shard order and shuffle are seeded from the resume
batch index, so a resumed run is deterministic for a given resume point (same checkpoint, same data
order) but does not see the exact batches the uninterrupted run would have seen after that point.

Extra negatives (``negatives_class``)
-------------------------------------
Batches carry labels. When ``negatives_class`` names a class (e.g. ``"null"``), the samples of that class
are split off each real batch and shown to D as extra negatives (``negative_logits`` of the D loss, weight
``negative_weight``) instead of as reals; G is never asked to generate that class. Load that class's
shards with the others (``shard_batches`` does so) so that they arrive in the batches.

Class-conditional labels
------------------------
A conditional net's label ``i`` is the ``i``-th trained class (``classes``, or every data class but the
negatives class), whatever id the dataset gives it, so ``net.num_classes`` counts trained classes and a
subset of a dataset's classes trains a smaller label space. Extra negatives shown to a conditional D
carry a random trained label ("not an image of class c").

With ``label_field`` (e.g. ``breed``) the labels come from that field of each sample's metadata instead:
:func:`shard_batches` derives the vocabulary from the training split (rare values share an ``other``
label), ``net.num_classes`` 0 (``auto``) becomes its size, frames show one row per label, snapshots
record it as ``labels`` (``classes`` stay the dataset classes) and a resume refuses a changed vocabulary.

Failure detection
-----------------
A NaN/inf loss raises :class:`TrainingDiverged` before the optimiser step; nothing is saved after the
bad step, so the newest checkpoint on disk (at worst the step-0 one) is the last good state.
D's loss staying within ``stuck_d_loss_eps`` of zero for ``stuck_d_loss_steps`` steps, and the mean
pairwise distance of the fixed-noise samples (measured at frame time) falling below ``collapse_ratio``
times its first measured value, are logged as warnings and listed in :attr:`TrainResult.warnings`.

Distributed training (``torchrun``)
-----------------------------------
When a ``torch.distributed`` process group with more than one rank is up (``ganmodels.cli`` starts it),
the Trainer runs data-parallel: G and D are wrapped in ``DistributedDataParallel`` (identical initial
weights: same seed on every rank, and DDP broadcasts rank 0's anyway) with
``forward_sync_buffers=False`` (formerly ``broadcast_buffers=False``), so BatchNorm running statistics
stay per rank (training-mode BN normalises with batch statistics, so the weights stay identical; only
rank 0's running stats are saved) and D may be called several times (real, fake, negatives) before one
backward: the default buffer broadcast at every forward would modify BN buffers in place between those
calls. ``find_unused_parameters`` stays False: every parameter gets a gradient in each synced backward.
Only D's own step and G's step go through the DDP wrappers; G's pass in D's step is under ``no_grad``,
and G's loss goes through the plain D (its D gradients are discarded), as does the WGAN-GP penalty.
The R1 penalty is taken through D's DDP forward on the reals (``autograd.grad`` with ``create_graph``
adds no parameter gradient of its own, so DDP's all-reduce runs once, in the step's backward), and
ADA's E[sign(D(real))] is summed over the ranks, so every rank has the same p. Each rank reads its
own shards (the loader splits by rank) and draws its own noise, labels, augmentation and dropout
(stream seeds offset by rank; rank 0 draws exactly what a single process would). Rank 0 alone writes
checkpoints, frames and TensorBoard; every rank resumes from the same newest checkpoint and then
reseeds its streams. A non-finite loss on any rank stops every rank, and the adaptive schedule plans
from the ranks' averaged D accuracies, so no rank waits forever in a collective.

Device: ``"auto"`` picks CUDA when available. On CUDA: AMP (``torch.autocast`` float16 + one
``GradScaler`` per net), ``channels_last`` and ``cudnn.benchmark``; on CPU: ``torch.set_num_threads``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ganmodels.ada import AdaptiveAugment
from ganmodels.adaptive import UpdateSchedule
from ganmodels.augment import diff_augment, parse_policy
from ganmodels.checkpoint import (
    checkpoint_path,
    file_sha256,
    latest_checkpoint,
    list_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ganmodels.ema import EMA
from ganmodels.frames import frame_path, make_grid, mean_pairwise_distance, save_frame
from ganmodels.losses import LabelSettings, get_losses, gradient_penalty, r1_penalty
from ganmodels.nets import NetConfig, build
from ganmodels.replay import ReplayBuffer

__all__ = ["ShardBatches", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "shard_batches"]

log = logging.getLogger(__name__)

LOSSES = ("bce", "wgan-gp", "hinge")
_STREAMS = ("noise", "labels", "gp", "augment", "replay", "frames")
# Samples the EMA generator's BatchNorm statistics are recomputed from (BigGAN used 16 batches of its batch size).
STANDING_SAMPLES = 1024


def _default_threads() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every training option; build from a YAML mapping with :meth:`from_dict` (unknown keys are errors)."""

    net: NetConfig = dataclasses.field(default_factory=NetConfig)
    loss: str = "bce"
    # LabelSettings fields (bce only)
    real_range: tuple[float, float] = (1.0, 1.0)
    fake_range: tuple[float, float] = (0.0, 0.0)
    flip_prob: float = 0.0
    clamp_targets: bool = True
    gp_weight: float = 10.0
    d_steps: int = 1
    g_steps: int = 1
    adaptive: bool = False
    adaptive_threshold: float = 0.6
    replay_capacity: int = 0  # 0 = no replay buffer
    replay_share: float = 0.5
    negatives_class: str | None = None
    negative_weight: float = 1.0
    mixed_batch: bool = False  # real + fake (+ negatives) in one D forward, else separate forwards
    # The textbook loop: G's step reuses the fakes of the last D step (one G forward per iteration, not two;
    # ~4% faster at 64 px on a CPU) instead of drawing fresh noise. Off: G's step sees samples D has not.
    reuse_fakes: bool = False
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    ema_decay: float = 0.0  # 0 = off
    ema_warmup: bool = True
    diffaugment: str = ""  # "" = off, else e.g. "color,translation,cutout"
    # ADA (ganmodels.ada), the alternative to diffaugment: augmentation probability p tuned so that
    # E[sign(D(real))] (a bce/hinge logit's sign) stays at ada_target (0 = off; the paper uses 0.6), adjusted
    # every ada_interval D steps, at most a full [0, 1] sweep per ada_kimg thousand images. StyleGAN2-ADA's 500
    # suits GPU runs of millions of images; a CPU run here sees ~200k (3000 steps x 64), in which p could not
    # pass 0.4: 100 lets p sweep [0, 1] within half such a run.
    ada_target: float = 0.0
    ada_interval: int = 4
    ada_kimg: float = 100.0
    # Lazy R1 penalty gamma/2 * E||grad D(real)||^2 (0 = off), every r1_every D steps, scaled by r1_every.
    r1_gamma: float = 0.0
    r1_every: int = 16
    batch_size: int = 64
    steps: int = 10_000
    seed: int = 0
    threads: int = dataclasses.field(default_factory=_default_threads)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    frame_every: int = 500  # 0 = no frames
    frame_count: int = 64  # derived (labels x frame_nrow) when label_field is set
    frame_nrow: int = 8  # images per row; with label_field, samples per label (one row per label)
    log_every: int = 50
    classes: tuple[str, ...] | None = None  # None = every class of the data
    # Conditional labels from a field of each sample's json metadata (e.g. "breed") instead of the class;
    # the vocabulary comes from the training split (ganmodels.data.LabelVocabulary). net.num_classes is its
    # size: 0 or "auto" fills it in, any other number must equal it.
    label_field: str | None = None
    label_min_count: int = 20  # values with fewer training samples go to the "other" label
    label_other: bool = True  # False: drop those samples (and the ones without the field) instead
    device: str = "auto"
    stuck_d_loss_eps: float = 1e-3
    stuck_d_loss_steps: int = 200
    collapse_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        self.label_settings  # validates ranges and flip_prob  # noqa: B018
        if self.loss != "bce" and not self.label_settings.is_default:
            raise ValueError(f"label smoothing / flipping only applies to the 'bce' loss, not {self.loss!r}")
        for name in ("d_steps", "batch_size", "threads", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("g_steps", "steps", "replay_capacity", "frame_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.frame_count < 1 or self.frame_nrow < 1:
            raise ValueError("frame_count and frame_nrow must be >= 1")
        if not 0.0 <= self.replay_share <= 1.0:
            raise ValueError(f"replay_share must be in [0, 1], got {self.replay_share}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ValueError("lr_g and lr_d must be > 0")
        parse_policy(self.diffaugment)
        if not 0.0 <= self.ada_target < 1.0:
            raise ValueError(f"ada_target must be in [0, 1) (0 = off), got {self.ada_target}")
        if self.ada_target > 0 and parse_policy(self.diffaugment):
            raise ValueError(
                "ada_target and diffaugment are alternatives (both augment every image D sees): "
                "set diffaugment: '' to use ADA, or ada_target: 0 to use DiffAugment"
            )
        if self.ada_interval < 1 or self.ada_kimg <= 0:
            raise ValueError(f"need ada_interval >= 1 and ada_kimg > 0, got {self.ada_interval}, {self.ada_kimg}")
        if self.r1_gamma < 0 or self.r1_every < 1:
            raise ValueError(f"need r1_gamma >= 0 (0 = off) and r1_every >= 1, got {self.r1_gamma}, {self.r1_every}")
        if self.device != "auto":
            torch.device(self.device)  # raises on nonsense
        if self.classes is not None and self.negatives_class is not None and self.negatives_class in self.classes:
            raise ValueError("negatives_class must not be one of the trained classes")
        if self.label_field is not None:
            if not self.label_field:
                raise ValueError("label_field must be a metadata field name (e.g. breed) or null")
            if self.classes is None:
                raise ValueError(
                    "label_field needs `classes`: the dataset classes whose samples carry the field (e.g. [dogs])"
                )
            if self.label_min_count < 1:
                raise ValueError(f"label_min_count must be >= 1, got {self.label_min_count!r}")

    @property
    def label_settings(self) -> LabelSettings:
        return LabelSettings(
            real_range=tuple(self.real_range),  # type: ignore[arg-type]
            fake_range=tuple(self.fake_range),  # type: ignore[arg-type]
            flip_prob=self.flip_prob,
            clamp_targets=self.clamp_targets,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping (e.g. parsed YAML); ``net`` is a nested mapping of NetConfig fields."""
        if not isinstance(data, dict):
            raise TypeError(f"training config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; known keys: {sorted(known)}")
        kwargs = dict(data)
        net = kwargs.get("net", {})
        if isinstance(net, dict):
            if net.get("num_classes") == "auto":
                if not kwargs.get("label_field"):
                    raise ValueError("net.num_classes: auto needs label_field (its label vocabulary sets the count)")
                net = {**net, "num_classes": 0}
            net_known = {f.name for f in dataclasses.fields(NetConfig)}
            net_unknown = sorted(set(net) - net_known)
            if net_unknown:
                raise ValueError(f"unknown net config key(s) {net_unknown}; known keys: {sorted(net_known)}")
            kwargs["net"] = NetConfig(**net)
        elif not isinstance(net, NetConfig):
            raise TypeError(f"net must be a mapping, got {type(net).__name__}")
        for name in ("real_range", "fake_range", "betas"):
            if name in kwargs:
                kwargs[name] = tuple(float(v) for v in kwargs[name])
        if kwargs.get("classes") is not None:
            kwargs["classes"] = tuple(str(c) for c in kwargs["classes"])
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-friendly mapping; ``from_dict(to_dict())`` gives back an equal config."""
        d = dataclasses.asdict(self)
        for name in ("real_range", "fake_range", "betas"):
            d[name] = list(d[name])
        if d["classes"] is not None:
            d["classes"] = list(d["classes"])
        return d


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf; ``checkpoint`` is the last good checkpoint left on disk."""

    def __init__(self, message: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


@dataclasses.dataclass
class TrainResult:
    step: int
    d_loss: float
    g_loss: float
    images_per_s: float
    checkpoint: Path
    checkpoint_sha256: str
    device: str
    resumed_from: int | None = None  # step of the checkpoint this run resumed from
    warnings: list[str] = dataclasses.field(default_factory=list)
    history: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)  # (step, d, g) this run


# ---- data ---------------------------------------------------------------------------------------------


class ShardBatches:
    """Endless batches from a :func:`ganmodels.data.make_loader` loader, one epoch after another.

    Epoch ``k`` after ``start_at(b)`` is shuffled with epoch number ``b * 1_000_003 + k`` (see the module
    docstring for what exactness means on resume).
    """

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader = loader
        self._base = 0

    def start_at(self, batch_index: int) -> None:
        self._base = batch_index

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            self.loader.dataset.set_epoch(self._base * 1_000_003 + epoch)  # type: ignore[attr-defined]
            got = False
            for batch in self.loader:
                got = True
                yield batch
            if not got:
                raise RuntimeError("the shard loader yielded no batch in a whole epoch")
            epoch += 1


def shard_batches(
    root_url: str,
    version: str | None,
    config: TrainConfig,
    *,
    num_workers: int = 2,
    endpoint_url: str | None = None,
    shuffle_buffer: int = 1000,
) -> tuple[ShardBatches, list[str]]:
    """The training batches of a dataset version (its ``train`` split) and the dataset's class names.

    Loads ``config.classes`` (all when None) plus ``config.negatives_class``; labels are indices into
    the returned class list, which is what :class:`Trainer` wants as ``class_names``. With
    ``config.label_field`` the list is the label vocabulary of the training split instead
    (:class:`~ganmodels.data.LabelVocabulary`), plus the negatives class, last.
    """
    from ganmodels.data import LabelVocabulary, count_field_values, make_loader
    from pipelines.dataset import load_index
    from pipelines.storage import open_storage

    index = load_index(open_storage(root_url, endpoint_url=endpoint_url), version)
    names: list[str] = list(index.index["classes"])
    wanted = list(config.classes) if config.classes is not None else list(names)
    if config.negatives_class is not None and config.negatives_class not in wanted:
        wanted.append(config.negatives_class)
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ValueError(f"classes {missing} are not in dataset {index.version} (it has {names})")
    resolution = index.index["preprocessing"]["resolution"]
    if resolution != config.net.resolution:
        raise ValueError(
            f"dataset {index.version} holds {resolution} px images but the experiment's net is "
            f"{config.net.resolution} px: set net.resolution to {resolution}, or build a dataset at "
            f"{config.net.resolution} px (webdataset_shards config: resolution)"
        )
    keys = [s["key"] for s in index.index["splits"]["train"]]
    classes = [names.index(c) for c in wanted]
    field_labels = None
    if config.label_field is not None:
        assert config.classes is not None  # TrainConfig requires classes with label_field
        trained_ids = [names.index(c) for c in config.classes]
        counts = count_field_values(root_url, keys, config.label_field, classes=trained_ids, endpoint_url=endpoint_url)
        vocab = LabelVocabulary.from_counts(
            config.label_field, counts, min_count=config.label_min_count, other=config.label_other
        )
        log.info(
            "%d %s labels from dataset %s: %s%s",
            len(vocab.names),
            config.label_field,
            index.version,
            ", ".join(f"{n} ({c})" for n, c in zip(vocab.names, vocab.counts, strict=True)),
            f"; {vocab.dropped} samples dropped (label_other: false)" if vocab.dropped else "",
        )
        labels = list(vocab.names)
        negatives = {}
        if config.negatives_class is not None:  # its samples keep one label of their own, after the vocabulary
            if config.negatives_class in labels:
                raise ValueError(f"{config.label_field} value {config.negatives_class!r} is also the negatives class")
            negatives = {names.index(config.negatives_class): len(labels)}
            labels.append(config.negatives_class)
        field_labels = vocab.field_labels(negatives)
        names = labels
    loader = make_loader(
        root_url,
        keys,
        batch_size=config.batch_size,
        num_workers=num_workers,
        classes=classes,
        shuffle_buffer=shuffle_buffer,
        seed=config.seed,
        endpoint_url=endpoint_url,
        image_size=config.net.resolution,
        field_labels=field_labels,
    )
    return ShardBatches(loader), names


# ---- the trainer ---------------------------------------------------------------------------------------


class _NullWriter:
    """Stands in for SummaryWriter on ranks other than 0, which write nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _label_change(before: Sequence[str], after: Sequence[str]) -> str:
    """What differs between two label lists, briefly (a breed vocabulary has a hundred names)."""

    def few(names: Sequence[str]) -> str:
        return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")

    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    if not added and not removed:
        return f"the same labels in another order: {few(after)}"
    return "; ".join(f"{word}: {few(names)}" for word, names in (("new", added), ("gone", removed)) if names)


def _grad_norm(module: nn.Module) -> float:
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class Trainer:
    """Trains G and D on ``data`` into ``out_dir`` (checkpoints/, generators/, frames/, tensorboard/).

    ``generators/step-N.pt`` holds, for every checkpoint step, only the sampling generator (EMA G when
    EMA is on) with its net config and class names: what evaluation needs, never pruned.

    ``class_names`` maps label index -> class name for the data's labels (defaults to
    ``config.classes``); it is needed to resolve ``classes`` and ``negatives_class`` to label indices.
    With ``config.label_field`` it is required and names the data's labels (what :func:`shard_batches`
    returns): every one but the negatives class is trained, and ``net.num_classes`` 0 becomes their count.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Iterable[tuple[torch.Tensor, torch.Tensor]],
        out_dir: str | Path,
        *,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.config = cfg = config
        self.data = data
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.frames_dir = self.out_dir / "frames"
        self.tb_dir = self.out_dir / "tensorboard"
        self.gen_dir = self.out_dir / "generators"

        labelled = cfg.label_field is not None
        if labelled and class_names is None:
            raise ValueError("a label_field run needs its label names as class_names (shard_batches returns them)")
        names = list(class_names) if class_names is not None else list(cfg.classes or [])
        self.class_names = names
        if cfg.classes is not None and not labelled:
            trained = list(cfg.classes)
        else:  # every class of the data, or with label_field every label: cfg.classes filtered the dataset
            trained = [n for n in names if n != cfg.negatives_class]
        for c in trained + ([cfg.negatives_class] if cfg.negatives_class else []):
            if c not in names:
                raise ValueError(f"class {c!r} is not among the data's classes {names}")
        # A conditional net's label i is the i-th trained class (``self.trained``), whatever the data's ids:
        # data labels are mapped through ``label_map`` (data id -> net label, -1 for the negatives class).
        self.trained = trained
        self.label_map = torch.full((max(len(names), 1),), -1, dtype=torch.int64)
        for i, c in enumerate(trained):
            self.label_map[names.index(c)] = i
        self.train_labels = torch.arange(len(trained), dtype=torch.int64)
        self.negative_label = names.index(cfg.negatives_class) if cfg.negatives_class else None
        if labelled:
            if not trained:
                raise ValueError(f"label_field {cfg.label_field!r}: no label to train (class_names {names})")
            if cfg.net.num_classes == 0:  # "auto": the vocabulary's size
                self.config = cfg = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, num_classes=len(trained)))
            elif cfg.net.num_classes != len(trained):
                shown = ", ".join(trained[:10]) + (", ..." if len(trained) > 10 else "")
                raise ValueError(
                    f"net.num_classes={cfg.net.num_classes}, but the {cfg.label_field} vocabulary has {len(trained)} "
                    f"labels ({shown}): set net.num_classes: auto"
                )
        # What a generator snapshot says about its labels: net label i is labels[i]; ``classes`` are the dataset
        # classes it was trained on (the holdout an evaluation compares with).
        self.label_info: dict[str, Any] = (
            {"classes": list(cfg.classes or []), "label_field": cfg.label_field, "labels": list(trained)}
            if labelled
            else {"classes": list(trained)}
        )
        if cfg.net.conditional:
            if not trained:
                raise ValueError("a conditional net needs class names (config.classes or class_names)")
            if cfg.net.num_classes < len(trained):
                raise ValueError(f"net.num_classes={cfg.net.num_classes} < {len(trained)} trained classes {trained}")

        # Under torchrun (a process group is up): every rank trains, only rank 0 writes (module docstring).
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        if self.distributed and labelled:
            # Each rank counted the vocabulary itself: label i must mean the same value on every rank.
            everyone: list[Any] = [None] * self.world_size
            dist.all_gather_object(everyone, trained)
            if any(other != trained for other in everyone):
                raise ValueError(f"the ranks derived different {cfg.label_field} vocabularies: {everyone}")
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if self.distributed and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK by the CLI
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        else:
            torch.set_num_threads(cfg.threads)

        torch.manual_seed(cfg.seed)
        g, d = build(cfg.net)
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.G = g.to(self.device, memory_format=self.memory_format)
        self.D = d.to(self.device, memory_format=self.memory_format)
        # Forward passes whose gradients must be averaged over ranks go through these; self.G / self.D stay
        # the plain modules (state dicts, EMA, frames, GP and G's pass through D, whose D grads are dropped).
        self.g_fwd: nn.Module = self.G
        self.d_fwd: nn.Module = self.D
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # No buffer sync at each forward (buffers are still synced once at init): BN running stats stay
            # per rank (training BN uses batch stats anyway), and D is called several times before one
            # backward, which in-place buffer broadcasts in between would break.
            self.g_fwd = DDP(self.G, device_ids=ids, forward_sync_buffers=False)
            self.d_fwd = DDP(self.D, device_ids=ids, forward_sync_buffers=False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.cuda)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.cuda)
        self.d_loss_fn, self.g_loss_fn = get_losses(cfg.loss)
        self.labels = cfg.label_settings

        self.gens = {name: torch.Generator().manual_seed(self._stream_seed(i, name)) for i, name in enumerate(_STREAMS)}
        self.ema = (
            EMA(self.G, cfg.ema_decay, warmup=cfg.ema_warmup, calibrate_inputs=self._standing_inputs)
            if cfg.ema_decay > 0
            else None
        )
        self.replay = ReplayBuffer(cfg.replay_capacity, self.gens["replay"]) if cfg.replay_capacity > 0 else None
        self.ada = AdaptiveAugment(cfg.ada_target, cfg.ada_interval, cfg.ada_kimg) if cfg.ada_target > 0 else None
        self.schedule = UpdateSchedule(
            cfg.d_steps, cfg.g_steps, adaptive=cfg.adaptive, threshold=cfg.adaptive_threshold
        )

        # Fixed frame batch: drawn once from its own stream, identical for every run with this seed.
        fg = self.gens.pop("frames")
        # With label_field: one row of frame_nrow samples per label, so every label (e.g. breed) shows.
        frame_count = len(trained) * cfg.frame_nrow if labelled else cfg.frame_count
        self.frame_z = torch.randn(frame_count, cfg.net.latent_dim, generator=fg).to(self.device)
        if labelled:
            self.frame_labels: torch.Tensor | None = self.train_labels.repeat_interleave(cfg.frame_nrow).to(self.device)
        elif cfg.net.conditional:
            self.frame_labels = self.train_labels[torch.arange(frame_count) % len(self.train_labels)].to(self.device)
        else:
            self.frame_labels = None

        self.step = 0
        self.batches = 0  # data batches consumed
        self.d_updates = 0  # D steps taken (lazy R1 runs on every r1_every-th)
        self.monitor: dict[str, Any] = {"early_diversity": None, "stuck": 0, "warnings": []}
        self.resumed_from: int | None = None
        self._data_iter: Iterator | None = None
        self._kept_fakes: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def _standing_inputs(self, update: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Latents (and every trained label equally) for the EMA G's own BatchNorm statistics after ``update``
        updates (ganmodels/ema.py): batches of the training batch size, from an RNG seeded by ``update`` alone,
        so a resumed run computes the same statistics and no training stream is touched."""
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + update * 7_919 + 17)
        bs = self.config.batch_size
        for start in range(0, STANDING_SAMPLES, bs):
            n = min(bs, STANDING_SAMPLES - start)
            z = torch.randn(n, self.config.net.latent_dim, generator=gen).to(self.device)
            labels = None
            if self.config.net.conditional:
                labels = self.train_labels[torch.arange(start, start + n) % len(self.train_labels)].to(self.device)
            yield z, labels

    def _stream_seed(self, i: int, name: str, step: int = 0) -> int:
        """Seed of RNG stream ``i``: rank 0 (and a single process) uses the classic one; other ranks differ.

        ``frames`` is the same everywhere (only rank 0 renders). ``step`` varies the seeds on resume, where
        rank 0's saved stream states must not be copied to the other ranks.
        """
        seed = self.config.seed * 1000 + i + 1
        if self.rank and name != "frames":
            seed += self.rank * 1_000_003 + step * 7_919
        return seed

    def _reseed_other_rank(self) -> None:
        """After loading rank 0's checkpoint on rank > 0: give this rank its own noise/label/dropout draws."""
        for i, name in enumerate(_STREAMS):
            if name in self.gens:
                self.gens[name].manual_seed(self._stream_seed(i, name, self.step))
        torch.manual_seed(self._stream_seed(len(_STREAMS), "global", self.step))

    # ---- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "labels": list(self.trained),  # net label i = labels[i]; a resume must derive the same
            "batches": self.batches,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "replay": self.replay.state_dict() if self.replay is not None else None,
            "schedule": self.schedule.state_dict(),
            "ada": self.ada.state_dict() if self.ada is not None else None,
            "d_updates": self.d_updates,
            "generators": {k: g.get_state() for k, g in self.gens.items()},
            "rng": rng_state(),
            "monitor": {**self.monitor, "warnings": list(self.monitor["warnings"])},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_labels = state.get("labels")
        if saved_labels is not None and saved_labels != self.trained:
            what = f"{self.config.label_field} vocabulary" if self.config.label_field else "trained classes"
            raise ValueError(
                f"cannot resume from step {state['step']}: the data's {what} changed since "
                f"({_label_change(saved_labels, self.trained)}); train on the checkpoint's dataset version, "
                "or start a new run in another directory"
            )
        saved_net = {"arch": "dcgan", **state["config"]["net"]}  # checkpoints from before `arch` are DCGANs
        if saved_net != dataclasses.asdict(self.config.net):
            raise ValueError(f"checkpoint was trained with net {saved_net}, this config has {self.config.net}")
        self.step = int(state["step"])
        self.batches = int(state["batches"])
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler_g"):
            self.scaler_g.load_state_dict(state["scaler_g"])
            self.scaler_d.load_state_dict(state["scaler_d"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.replay is not None and state["replay"] is not None:
            self.replay.load_state_dict(state["replay"])
        self.schedule.load_state_dict(state["schedule"])
        # Other ranks take rank 0's partial ADA interval sums for their own (their resume is not exact anyway).
        if self.ada is not None and state.get("ada") is not None:
            self.ada.load_state_dict(state["ada"])
        self.d_updates = int(state.get("d_updates", 0))
        for k, s in state["generators"].items():
            self.gens[k].set_state(s)
        set_rng_state(state["rng"])
        self.monitor = {**state["monitor"], "warnings": list(state["monitor"]["warnings"])}
        if self.rank:
            self._reseed_other_rank()

    def save(self) -> Path:
        """Write a checkpoint (rank 0 only; other ranks get the path rank 0 writes)."""
        if not self.is_main:
            return checkpoint_path(self.ckpt_dir, self.step)
        # The sampling generator of this step, kept forever (small) for evaluation over steps; written
        # first, so every checkpoint has its snapshot.
        net = self.ema.module if self.ema is not None else self.G
        snapshot = {"net": dataclasses.asdict(self.config.net), **self.label_info, "G": net.state_dict()}
        save_checkpoint(self.gen_dir, self.step, {**snapshot, "ema": self.ema is not None}, keep=0)
        return save_checkpoint(self.ckpt_dir, self.step, self.state_dict(), keep=self.config.keep_checkpoints)

    def _resume(self) -> None:
        found = latest_checkpoint(self.ckpt_dir, map_location="cpu")
        if found is None:
            return
        path, state = found
        self.load_state_dict(state)
        self.resumed_from = self.step
        log.info("resumed from %s (step %d)", path, self.step)

    # ---- data ----------------------------------------------------------------------------------------

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._data_iter is None:
            start_at = getattr(self.data, "start_at", None)
            if start_at is not None:
                start_at(self.batches)
            self._data_iter = iter(self.data)
        for _ in range(2):
            try:
                images, labels = next(self._data_iter)
                self.batches += 1
                return images, labels.long()
            except StopIteration:
                self._data_iter = iter(self.data)  # finite iterable: next epoch
        raise RuntimeError("the training data yielded no batch")

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(reals, their labels, negatives or None) on the device; skips batches that hold only negatives."""
        for _ in range(100):
            images, labels = self._next_batch()
            images = images.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
            negatives = None
            if self.negative_label is not None:
                is_neg = labels == self.negative_label  # labels stay on the CPU until mapped
                if bool(is_neg.any()):
                    on_device = is_neg.to(self.device)
                    negatives = images[on_device]
                    images, labels = images[~on_device], labels[~is_neg]
            mapped = self.label_map[labels]
            if self.config.net.conditional and bool((mapped < 0).any()):
                bad = sorted({self.class_names[i] for i in labels[mapped < 0].tolist()})
                raise ValueError(
                    f"a batch holds class {', '.join(map(repr, bad))}, which is not trained: filter the data"
                )
            labels = mapped.to(self.device)
            if images.shape[0] > 0:
                return images, labels, negatives
        raise RuntimeError("100 batches in a row held only negatives-class samples")

    # ---- one step ------------------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda)

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.net.latent_dim, generator=self.gens["noise"]).to(self.device)

    def _fake_labels(self, n: int) -> torch.Tensor | None:
        if not self.config.net.conditional:
            return None
        idx = torch.randint(0, len(self.train_labels), (n,), generator=self.gens["labels"])
        return self.train_labels[idx].to(self.device)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        """Augment an image batch D is about to see: ADA at its current p, DiffAugment, or neither."""
        if self.ada is not None:
            return self.ada(x, self.gens["augment"])
        if not self.config.diffaugment:
            return x
        return diff_augment(x, self.config.diffaugment, self.gens["augment"])

    def _check(self, name: str, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.distributed:  # every rank must stop together, or the others hang in the next all-reduce
            flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item())
        if not finite:
            last = list_checkpoints(self.ckpt_dir)
            ckpt = last[-1][1] if last else None
            value = float(loss.detach())
            what = str(value) if not math.isfinite(value) else f"not finite on another rank (here {value})"
            msg = f"training diverged at step {self.step + 1}: {name} loss is {what}; last good checkpoint: {ckpt}"
            log.error(msg)
            raise TrainingDiverged(msg, self.step + 1, ckpt)

    def _d_step(self, stats: dict[str, float], want_stats: bool, keep_fakes: bool = False) -> float:
        cfg = self.config
        cond = cfg.net.conditional
        real, real_labels, negatives = self._real_batch()
        n = real.shape[0]
        # Fakes share the reals' labels in D's step, so real/fake pairs (and GP interpolates) match classes.
        fake_labels = real_labels if cond else None
        if keep_fakes:  # reuse_fakes: made with grad, kept for the G step (D sees them detached)
            with self._autocast():
                made = self.g_fwd(self._z(n), fake_labels)
            self._kept_fakes = (made, fake_labels)
            fake = made.detach().float()
        else:
            with torch.no_grad(), self._autocast():
                fake = self.G(self._z(n), fake_labels).float()  # no grad: no DDP sync needed
        fresh, fresh_labels = fake, fake_labels
        if self.replay is not None:
            if cond:
                fake, fake_labels = self.replay.mix_with_labels(fake, fake_labels, cfg.replay_share)
            else:
                fake = self.replay.mix(fake, cfg.replay_share)
        r1_due = cfg.r1_gamma > 0 and self.d_updates % cfg.r1_every == 0
        if r1_due:  # R1's gradient is taken w.r.t. the reals before augmentation, as in StyleGAN2-ADA
            real = real.detach().requires_grad_(True)
        real_in, fake_in = self._aug(real), self._aug(fake)
        neg_in = self._aug(negatives) if negatives is not None else None
        # A conditional D sees each negative as "not an image of class c" for a random trained class c.
        neg_labels = self._fake_labels(neg_in.shape[0]) if neg_in is not None and cond else None
        with self._autocast():
            if cfg.mixed_batch:
                parts = [real_in, fake_in] + ([neg_in] if neg_in is not None else [])
                lab = [real_labels, fake_labels] + ([neg_labels] if neg_in is not None else []) if cond else None
                logits = self.d_fwd(torch.cat(parts), torch.cat(lab) if lab is not None else None).float()
                real_logits, fake_logits = logits[:n], logits[n : 2 * n]
                neg_logits = logits[2 * n :] if neg_in is not None else None
            else:
                real_logits = self.d_fwd(real_in, real_labels if cond else None).float()
                fake_logits = self.d_fwd(fake_in, fake_labels).float()
                neg_logits = self.d_fwd(neg_in, neg_labels).float() if neg_in is not None else None
            loss = self.d_loss_fn(
                real_logits,
                fake_logits,
                self.labels,
                self.gens["labels"],
                negative_logits=neg_logits,
                negative_weight=cfg.negative_weight,
            )
        if cfg.loss == "wgan-gp":
            gp = gradient_penalty(
                self.D, real_in.float(), fake_in.float(), real_labels if cond else None, cfg.gp_weight, self.gens["gp"]
            )
            loss = loss + gp
        if r1_due:  # lazy: gamma * r1_every every r1_every-th step (StyleGAN2)
            gamma = cfg.r1_gamma * cfg.r1_every
            loss = loss + r1_penalty(real_logits, real, gamma)
        self._check("D", loss)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        if want_stats:
            self.scaler_d.unscale_(self.opt_d)
            stats["grad_norm/d_first"] = _grad_norm(self.D.first_layer)
            stats["grad_norm/d_last"] = _grad_norm(self.D.last_layer)
            rl, fl = real_logits.detach(), fake_logits.detach()
            if cfg.loss == "bce":
                rl, fl = torch.sigmoid(rl), torch.sigmoid(fl)
            stats["d/real"] = float(rl.mean())
            stats["d/fake"] = float(fl.mean())
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        self.schedule.observe(real_logits, fake_logits)
        if self.distributed and cfg.adaptive:  # every rank must plan the same number of D steps
            acc = torch.tensor([self.schedule.acc_real, self.schedule.acc_fake], device=self.device)
            dist.all_reduce(acc)
            self.schedule.acc_real, self.schedule.acc_fake = (float(a) / self.world_size for a in acc)
        if self.ada is not None:  # sign statistics summed over ranks: every rank gets the same p
            self.ada.observe(real_logits, dist.all_reduce if self.distributed else None)
            stats["ada/p"] = self.ada.p
            if self.ada.rt is not None:
                stats["ada/rt"] = self.ada.rt
        self.d_updates += 1
        if self.replay is not None:
            self.replay.push(fresh, fresh_labels)
        stats["images"] = stats.get("images", 0.0) + n
        return float(loss.detach())

    def _g_step(self, stats: dict[str, float], want_stats: bool) -> float:
        kept, self._kept_fakes = self._kept_fakes, None
        with self._autocast():
            if kept is not None:
                fake, labels = kept
            else:
                labels = self._fake_labels(self.config.batch_size)
                fake = self.g_fwd(self._z(self.config.batch_size), labels)
            # Plain D: its grads from G's loss are thrown away, so they need no all-reduce.
            loss = self.g_loss_fn(self.D(self._aug(fake), labels).float())
        self._check("G", loss)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        if want_stats:
            self.scaler_g.unscale_(self.opt_g)
            stats["grad_norm/g_first"] = _grad_norm(self.G.first_layer)
            stats["grad_norm/g_last"] = _grad_norm(self.G.last_layer)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        if self.ema is not None:
            self.ema.update(self.G)
        return float(loss.detach())

    def train_step(self, want_stats: bool = False) -> tuple[float, float, dict[str, float]]:
        """One schedule iteration; returns (last D loss, last G loss or NaN when g_steps=0, stats)."""
        stats: dict[str, float] = {}
        d_n, g_n = self.schedule.plan()
        d_loss = g_loss = math.nan
        for i in range(d_n):
            keep = self.config.reuse_fakes and g_n > 0 and i == d_n - 1
            d_loss = self._d_step(stats, want_stats and i == d_n - 1, keep_fakes=keep)
        for i in range(g_n):
            g_loss = self._g_step(stats, want_stats and i == g_n - 1)
        self.D.zero_grad(set_to_none=True)  # G's step left grads in D; never carry them over
        self.step += 1
        return d_loss, g_loss, stats

    # ---- frames and monitors -------------------------------------------------------------------------

    @torch.no_grad()
    def render_frame(self) -> torch.Tensor:
        """The fixed noise batch through EMA G (or G in eval mode), as images in [-1, 1] on CPU."""
        net = self.ema.module if self.ema is not None else self.G
        was_training = net.training
        net.eval()
        try:
            images = net(self.frame_z, self.frame_labels).float().cpu()
        finally:
            net.train(was_training)
        return images

    def _edge_frame(self, writer: Any) -> None:
        """The first (step 0) and last frames, whatever ``frame_every`` is: a short run still has a
        time-lapse that starts from noise and ends at the returned checkpoint."""
        if self.config.frame_every and self.is_main and not frame_path(self.frames_dir, self.step).exists():
            self._frame(writer)

    def _warn(self, msg: str) -> None:
        log.warning(msg)
        self.monitor["warnings"].append(msg)

    def _frame(self, writer: Any) -> None:
        images = self.render_frame()
        grid = make_grid(images, self.config.frame_nrow)
        save_frame(grid, frame_path(self.frames_dir, self.step))
        arr = np.asarray(grid)
        writer.add_image("samples", arr if arr.ndim == 3 else arr[:, :, None], self.step, dataformats="HWC")
        diversity = mean_pairwise_distance(images)
        writer.add_scalar("samples/diversity", diversity, self.step)
        if self.step == 0:
            return  # the untrained G's diversity is no baseline for mode collapse
        early = self.monitor["early_diversity"]
        if early is None:
            self.monitor["early_diversity"] = diversity
        elif diversity < self.config.collapse_ratio * early and not self.monitor.get("collapse_warned"):
            self.monitor["collapse_warned"] = True
            self._warn(
                f"step {self.step}: sample diversity collapsed to {diversity:.4g} "
                f"(< {self.config.collapse_ratio} x early value {early:.4g}): likely mode collapse"
            )

    def _watch_d_loss(self, d_loss: float) -> None:
        cfg = self.config
        if abs(d_loss) < cfg.stuck_d_loss_eps:
            self.monitor["stuck"] += 1
            if self.monitor["stuck"] == cfg.stuck_d_loss_steps:
                self._warn(
                    f"step {self.step}: D loss has been within {cfg.stuck_d_loss_eps} of zero for "
                    f"{cfg.stuck_d_loss_steps} steps: D has won, G gets no useful gradient"
                )
        else:
            self.monitor["stuck"] = 0

    # ---- the loop ------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.config
        self._resume()
        if self.distributed:
            dist.barrier()  # every rank has read the newest checkpoint before rank 0 writes another
        if self.resumed_from is None:
            self.save()  # step 0: a last good state exists even if the very first step diverges
        writer: Any = (
            SummaryWriter(str(self.tb_dir), purge_step=self.step if self.resumed_from else None)
            if self.is_main
            else _NullWriter()
        )
        history: list[tuple[int, float, float]] = []
        d_loss = g_loss = math.nan
        images = 0.0
        t0 = time.perf_counter()
        win_t, win_images = t0, 0.0
        path: Path | None = None
        log.info("training on %s from step %d to %d", self.device, self.step, cfg.steps)
        if self.step == 0:
            self._edge_frame(writer)
        try:
            while self.step < cfg.steps:
                want = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == cfg.steps
                d_loss, g_loss, stats = self.train_step(want_stats=want)
                history.append((self.step, d_loss, g_loss))
                images += stats["images"]
                win_images += stats["images"]
                self._watch_d_loss(d_loss)
                if want:
                    now = time.perf_counter()
                    ips = win_images / max(now - win_t, 1e-9)
                    win_t, win_images = now, 0.0
                    writer.add_scalar("loss/d", d_loss, self.step)
                    if not math.isnan(g_loss):
                        writer.add_scalar("loss/g", g_loss, self.step)
                    for k, v in stats.items():
                        if k != "images":
                            writer.add_scalar(k, v, self.step)
                    writer.add_scalar("lr/g", self.opt_g.param_groups[0]["lr"], self.step)
                    writer.add_scalar("lr/d", self.opt_d.param_groups[0]["lr"], self.step)
                    writer.add_scalar("perf/images_per_s", ips, self.step)
                    log.info(
                        "step %d/%d  d_loss %.4f  g_loss %.4f  D(x) %.3f  D(G(z)) %.3f  %.1f img/s",
                        self.step,
                        cfg.steps,
                        d_loss,
                        g_loss,
                        stats.get("d/real", math.nan),
                        stats.get("d/fake", math.nan),
                        ips,
                    )
                if cfg.frame_every and self.step % cfg.frame_every == 0 and self.is_main:
                    self._frame(writer)
                elif self.step == cfg.steps:
                    self._edge_frame(writer)
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    path = self.save()
                    writer.flush()
            path = self.save()
            if self.distributed:
                dist.barrier()  # rank 0's final checkpoint is on disk before anyone hashes it
        finally:
            writer.close()
        elapsed = time.perf_counter() - t0
        sha = file_sha256(path)
        log.info("finished at step %d; checkpoint %s (sha256 %s)", self.step, path, sha)
        return TrainResult(
            step=self.step,
            d_loss=d_loss,
            g_loss=g_loss,
            images_per_s=images * self.world_size / elapsed if elapsed > 0 else 0.0,  # all ranks (approx.)
            checkpoint=path,
            checkpoint_sha256=sha,
            device=str(self.device),
            resumed_from=self.resumed_from,
            warnings=list(self.monitor["warnings"]),
            history=history,
        )


if __name__ == "__main__":
    from ganmodels.cli import main

    raise SystemExit(main())
