"""Which GAN recipe gives the most realistic 32 px dogs for the same CPU time? Scored by quality_metric.py.

Run by hand, with nothing else running (the comparison is by wall clock)::

    python benchmarks/bench_gan_quality.py --list                 # the variants and their overrides
    python benchmarks/bench_gan_quality.py                        # all of them: hours
    python benchmarks/bench_gan_quality.py --only tutorial --only ema --minutes 10 --seeds 2

Every variant trains for ``--minutes`` of wall-clock time (default 10) with 2 torch threads, on the same 32 px
training set: the curated fixture dogs (``fixture_data.py``: the pipeline's ingest, curation and dataset
builder) minus every image the metric holds out, so no GAN sees the real dogs it is compared with (checked
on the built dataset). The curation is pinned (``--pin``, in ``benchmarks/out/``): the first run stores the
accepted rows and later runs train on exactly those, so a change to the curation logic does not void hours
of stored runs (the log says what today's curation would change; delete the pin to adopt it). Variants:

- ``tutorial``: the PyTorch DCGAN tutorial's loop written plainly below (its Generator and Discriminator
  with one block dropped for 32 px, sigmoid + BCELoss with real label 1 and fake label 0, Adam 2e-4
  (0.5, 0.999), batch 128, N(0, 0.02) init, no tricks); the reference for the FD ratio;
- ``dcgan``: the project's ``Trainer`` with every trick off (TrainConfig defaults at 32 px: bce, hard
  labels, Adam 2e-4 (0.5, 0.999), batch 64, width 64), then each trick alone on top of it (:data:`TRICKS`,
  one line per variant; a variant whose fields this checkout's TrainConfig lacks is listed as unavailable);
- ``recipe:<name>``: every experiment of ``config/experiments.yaml`` with ``net.resolution`` 32 and
  everything else kept, trained on dogs (a recipe made for other classes keeps its hyperparameters); a
  class-conditional recipe keeps its classes (dogs, not-dogs and tiles are all in the dataset) and only
  its dog label is sampled and scored; one whose labels come from a metadata field of the dogs
  (``label_field``) is sampled over all its labels; a recipe whose 32 px settings equal an earlier one's
  (``satellite`` is ``dogs`` for another class) is that row;
- ``dogs+<option>``: ``recipe:dogs`` with one modern option (:data:`ON_DOGS`: the ResNet nets, ADA in place
  of DiffAugment, lazy R1), which decides whether it becomes the recipe's default; ``dogs-<part>``: the
  recipe without DiffAugment, or with BCE and the plain DCGAN's D and learning rates in place of hinge,
  spectral norm and TTUR (ablations: whether each part is needed in the set).

Each run is its own subprocess (``--run SPEC``), one at a time, so runs share no state and never compete
for the cores. The clock starts before the first step (the loader's start-up counts, the same for all).
Within the budget it snapshots the sampling G (EMA G when EMA is on) at the last ``--last`` of the
fractions 0.1, 0.2, ..., 1.0 of the time (``--spacing``); after it, each snapshot is sampled in eval mode
(BatchNorm running statistics, as the Trainer's frames; the tutorial samples in train mode, all runs are
treated alike here) on the same ``--samples`` latents per seed and scored. The table averages those K
snapshots over ``--seeds`` seeds; images/s counts the real images D saw.

Outputs: one JSON per run in ``benchmarks/out/gan_quality/`` (git-ignored) with its logs; ``results.md`` and
``summary.json`` there, over every run JSON made with the same settings, metric and dataset (so runs made
one ``--only`` at a time add up); an 8x8 grid of the last snapshot's first samples per variant (first
seed) in ``benchmarks/quality/gan/``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq
import torch
import yaml
from fixture_data import DOG_FOLDERS, FIXTURES, NULL_FOLDERS, TILE_FOLDERS, curate_fixtures, write_dataset
from quality_metric import MetricSettings, QualityMetric, load_metric, metric_data
from torch import nn

from ganmodels.frames import make_grid, save_frame
from ganmodels.nets import NetConfig
from ganmodels.train import TrainConfig, Trainer, shard_batches
from pipelines.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out" / "gan_quality"
GRIDS = Path(__file__).resolve().parent / "quality" / "gan"
PIN = OUT.parent / "gan_quality_curation.parquet"
EXPERIMENTS = ROOT / "config" / "experiments.yaml"
RESOLUTION = 32
CLASSES = ("dogs", "null", "satellite")  # the pipeline's class names, in its order

# The project's plain DCGAN ("dcgan": TrainConfig defaults) and each trick switched on alone:
# name -> TrainConfig overrides ("net" is merged into NetConfig). Adding a variant is one line.
TRICKS: dict[str, dict[str, Any]] = {
    "dcgan": {},
    "soft_labels": {"real_range": [0.9, 0.9]},  # one-sided (Salimans et al. 2016)
    "noisy_labels": {"real_range": [0.7, 1.2], "fake_range": [0.0, 0.3], "flip_prob": 0.05},  # ganhacks
    "diffaugment": {"diffaugment": "color,translation,cutout"},
    "ema": {"ema_decay": 0.999},
    "replay": {"replay_capacity": 1024, "replay_share": 0.25},
    "adaptive_d": {"adaptive": True, "adaptive_threshold": 0.6},
    "null_negatives": {"negatives_class": "null", "negative_weight": 0.5},
    "hinge_sn_ttur": {"loss": "hinge", "net": {"spectral_norm": True}, "lr_g": 1e-4, "lr_d": 4e-4, "betas": [0.0, 0.9]},
    "wgan_gp": {"loss": "wgan-gp", "gp_weight": 10.0, "d_steps": 5, "lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.0, 0.9]},
    "resnet": {"net": {"arch": "resnet", "width": 32}},  # ganmodels/resnets.py: half DCGAN's width on a CPU
    "ada": {"ada_target": 0.6},  # Karras et al. 2020's target
    "r1": {"r1_gamma": 0.01},  # StyleGAN2-ADA's gamma for CIFAR-10 (32 px)
}
# The modern options on top of the shipped dogs recipe, which decide whether they become its defaults, and two
# ablations of it:
# name -> overrides of recipe:dogs (ADA replaces DiffAugment: the two are alternatives).
ON_DOGS: dict[str, dict[str, Any]] = {
    "dogs+resnet": {"net": {"arch": "resnet"}},  # the recipe's width 32
    "dogs+ada": {"diffaugment": "", "ada_target": 0.6},
    "dogs+r1": {"r1_gamma": 0.01},
    # ablations: is each part that hurts the plain DCGAN alone needed in the recipe?
    "dogs-diffaugment": {"diffaugment": ""},
    "dogs-hinge_sn_ttur": {
        "loss": "bce",
        "net": {"spectral_norm": False},
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "betas": [0.5, 0.999],
    },
}
# What every Trainer run gets: no checkpoints, frames or TensorBoard steps inside the timed loop.
HARNESS = {"steps": 10**9, "checkpoint_every": 10**9, "keep_checkpoints": 1, "frame_every": 0, "log_every": 10**9}


# ---- the PyTorch DCGAN tutorial, at 32 px ---------------------------------------------------------------


class TutorialGenerator(nn.Module):
    """The tutorial's Generator without its 64 px block: nz -> ngf*4 (4x4) -> ngf*2 -> ngf -> 3 (32x32)."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class TutorialDiscriminator(nn.Module):
    """The tutorial's Discriminator without its 64 px block: 3 -> ndf (16x16) -> ndf*2 -> ndf*4 (4x4) -> sigmoid."""

    def __init__(self, ndf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def weights_init(m: nn.Module) -> None:
    """The tutorial's init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class TutorialRun:
    """The tutorial's training loop, one batch per :meth:`step`."""

    batch_size = 128
    nz = 100

    def __init__(self, data: Iterable[tuple[torch.Tensor, torch.Tensor]], seed: int) -> None:
        torch.manual_seed(seed)
        self.netG = TutorialGenerator(self.nz)
        self.netG.apply(weights_init)
        self.netD = TutorialDiscriminator()
        self.netD.apply(weights_init)
        self.criterion = nn.BCELoss()
        self.optimizerD = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optimizerG = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.data = data
        self.it = iter(data)

    def _batch(self) -> torch.Tensor:
        try:
            return next(self.it)[0]
        except StopIteration:  # the tutorial's outer loop over epochs
            self.it = iter(self.data)
            return next(self.it)[0]

    def step(self) -> tuple[int, float, float]:
        real_label, fake_label = 1.0, 0.0
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        self.netD.zero_grad()
        real_cpu = self._batch()
        b_size = real_cpu.size(0)
        label = torch.full((b_size,), real_label, dtype=torch.float)
        output = self.netD(real_cpu).view(-1)
        err_d_real = self.criterion(output, label)
        err_d_real.backward()
        noise = torch.randn(b_size, self.nz, 1, 1)
        fake = self.netG(noise)
        label.fill_(fake_label)
        output = self.netD(fake.detach()).view(-1)
        err_d_fake = self.criterion(output, label)
        err_d_fake.backward()
        self.optimizerD.step()
        # (2) Update G network: maximize log(D(G(z)))
        self.netG.zero_grad()
        label.fill_(real_label)
        output = self.netD(fake).view(-1)
        err_g = self.criterion(output, label)
        err_g.backward()
        self.optimizerG.step()
        return b_size, (err_d_real + err_d_fake).item(), err_g.item()

    def sampling_net(self) -> nn.Module:
        return self.netG

    def sample(self, net: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return net(z[:, :, None, None])


class TrainerRun:
    """A project :class:`Trainer`, one ``train_step`` per :meth:`step`.

    A class-conditional G is sampled with its dog label only; one whose labels come from a metadata field
    of the dogs (``label_field``, e.g. breeds) with all its labels in turn.
    """

    def __init__(self, cfg: TrainConfig, root_url: str, version: str, workers: int, out_dir: Path, dog: str) -> None:
        batches, names = shard_batches(root_url, version, cfg, num_workers=workers)
        self.trainer = Trainer(cfg, batches, out_dir, class_names=names)
        trained, net = self.trainer.trained, self.trainer.config.net  # the Trainer resolves num_classes: auto
        self.labels = None
        if net.conditional:
            self.labels = torch.arange(len(trained)) if cfg.label_field else torch.tensor([trained.index(dog)])

    def step(self) -> tuple[int, float, float]:
        d_loss, g_loss, stats = self.trainer.train_step()
        return int(stats["images"]), d_loss, g_loss

    def sampling_net(self) -> nn.Module:
        return self.trainer.ema.module if self.trainer.ema is not None else self.trainer.G

    def sample(self, net: nn.Module, z: torch.Tensor) -> torch.Tensor:
        labels = None if self.labels is None else self.labels[torch.arange(len(z)) % len(self.labels)]
        return net(z, labels)


# ---- variants ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    config: dict[str, Any] | None  # TrainConfig mapping without the per-run fields; None: the tutorial loop
    note: str
    unavailable: str | None = None  # why this checkout cannot run it


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``; the ``net`` mappings are merged key by key."""
    out = {**base, **overrides}
    if "net" in base or "net" in overrides:
        out["net"] = {**base.get("net", {}), **overrides.get("net", {})}
    return out


def _unknown_fields(config: dict[str, Any]) -> list[str]:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    net_known = {f.name for f in dataclasses.fields(NetConfig)}
    return sorted(set(config) - known) + sorted(f"net.{k}" for k in set(config.get("net", {})) - net_known)


def _variant(name: str, config: dict[str, Any], note: str) -> Variant:
    unknown = _unknown_fields(config)
    why = f"this checkout's TrainConfig has no {', '.join(unknown)}" if unknown else None
    return Variant(name, config, note, why)


def variants(dog: str = "dogs") -> list[Variant]:
    """The tutorial, the project's plain DCGAN and its tricks one by one, then every experiments.yaml recipe."""
    out = [Variant("tutorial", None, "PyTorch DCGAN tutorial loop, batch 128")]
    base = {"net": {"resolution": RESOLUTION}, "classes": [dog]}
    for name, overrides in TRICKS.items():
        note = json.dumps(overrides) if overrides else "TrainConfig defaults: bce, no tricks, batch 64, width 64"
        out.append(_variant(name, _merge(base, overrides), note))
    recipes: dict[str, Variant] = {}
    for name, recipe in (yaml.safe_load(EXPERIMENTS.read_text()) or {}).items():
        config = _merge(recipe, {"net": {"resolution": RESOLUTION}})
        if config.get("label_field"):
            note = f"labels from the samples' {config['label_field']!r} (the fixtures carry none: one label)"
        elif config["net"].get("num_classes"):
            note = f"classes {config['classes']}, the {dog} label scored"
        else:
            config["classes"] = [dog]
            note = f"trained on {dog}"
        same = next((k for k, v in recipes.items() if v.config == config), None)
        if same is not None:  # e.g. satellite: the dogs settings, and both are trained on dogs here
            recipes[same] = dataclasses.replace(recipes[same], note=f"{recipes[same].note}; also {name}: same settings")
            continue
        recipes[name] = _variant(f"recipe:{name}", config, f"config/experiments.yaml {name}, 32 px, {note}")
    out += recipes.values()
    if "dogs" in recipes:
        for name, overrides in ON_DOGS.items():
            config = _merge(recipes["dogs"].config, overrides)
            out.append(_variant(name, config, f"recipe:dogs + {json.dumps(overrides)}"))
    return out


# ---- one run (in its own process) ----------------------------------------------------------------------


def fractions(last: int, spacing: float) -> list[float]:
    """The wall-clock fractions at which G is snapshotted: the last ``last`` multiples of ``spacing`` up to 1."""
    return [round(1.0 - i * spacing, 6) for i in reversed(range(last))]


@torch.no_grad()
def generate(run: TutorialRun | TrainerRun, net: nn.Module, z: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Samples of ``net`` in eval mode (BatchNorm running statistics, as the Trainer's frames), on ``z``."""
    net.eval()
    return torch.cat([run.sample(net, z[i : i + batch]).float() for i in range(0, len(z), batch)])


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one variant for ``spec["seconds"]``, snapshot, then score the snapshots; the run's result."""
    torch.set_num_threads(spec["threads"])
    seed = spec["seed"]
    metric = QualityMetric.load(Path(spec["metric"]))
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gan-quality-run-") as tmp:
        if spec["config"] is None:
            cfg = TrainConfig(
                net=NetConfig(resolution=RESOLUTION),
                batch_size=TutorialRun.batch_size,
                classes=(spec["dog"],),
                seed=seed,
            )
            batches, _ = shard_batches(spec["root_url"], spec["version"], cfg, num_workers=spec["workers"])
            run: TutorialRun | TrainerRun = TutorialRun(batches, seed)
            latent_dim = TutorialRun.nz
        else:
            config = {**spec["config"], **HARNESS, "seed": seed, "threads": spec["threads"], "device": "cpu"}
            cfg = TrainConfig.from_dict(config)
            run = TrainerRun(cfg, spec["root_url"], spec["version"], spec["workers"], Path(tmp), spec["dog"])
            latent_dim = cfg.net.latent_dim
        due = [f * spec["seconds"] for f in spec["fractions"]]
        snapshots: list[dict[str, Any]] = []
        steps = images = 0
        t0 = time.perf_counter()
        while len(snapshots) < len(due):
            n, d_loss, g_loss = run.step()
            steps, images = steps + 1, images + n
            elapsed = time.perf_counter() - t0
            while len(snapshots) < len(due) and elapsed >= due[len(snapshots)]:
                fraction = spec["fractions"][len(snapshots)]
                net = copy.deepcopy(run.sampling_net())
                snapshots.append({"fraction": fraction, "step": steps, "elapsed_s": elapsed, "net": net})
        train_s = time.perf_counter() - t0
    load_end = os.getloadavg()[0]

    z = torch.randn(spec["samples"], latent_dim, generator=torch.Generator().manual_seed(10_000 + seed))
    for snap in snapshots:
        samples = generate(run, snap.pop("net"), z)
        snap.update(metric.score(samples))
    if spec.get("grid"):
        save_frame(make_grid(samples[:64], 8), Path(spec["grid"]))
    return {
        "variant": spec["variant"],
        "seed": seed,
        "settings": spec["settings"],
        "config": cfg.to_dict(),
        "tutorial": spec["config"] is None,
        "steps": steps,
        "images": images,
        "train_s": train_s,
        "images_per_s": images / train_s,
        "last_losses": {"d": d_loss, "g": g_loss},
        "snapshots": snapshots,
        "load_average": {"start": load_start, "end": load_end},
        "torch": torch.__version__,
    }


# ---- the harness ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What makes runs comparable: a run's JSON is only tabled with runs of equal settings."""

    minutes: float = 10.0
    samples: int = 1000
    last: int = 3
    spacing: float = 0.1
    threads: int = 2
    workers: int = 1
    metric_key: str = ""
    dataset_version: str = ""


def result_path(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant.replace(':', '-')}.seed{seed}.json"


def run_variants(
    chosen: Sequence[Variant],
    seeds: Sequence[int],
    settings: RunSettings,
    *,
    root_url: str,
    version: str,
    metric_path: Path,
    out: Path,
    grids: Path | None,
    dog: str = "dogs",
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Each (variant, seed) in its own subprocess, one after the other; their result JSONs (written to ``out``).

    A run that fails leaves a JSON with its error and the tail of its log, and the others go on. A run whose
    JSON is already there with the same settings, the same variant config and no error is not run again: the
    hours a full table takes can be spread over several sittings.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    results = []
    for variant in chosen:
        for seed in seeds:
            path = result_path(out, variant.name, seed)
            if path.exists():
                done = json.loads(path.read_text())
                same = (
                    done.get("settings") == dataclasses.asdict(settings)
                    and done.get("variant_config") == variant.config
                )
                if same and "error" not in done:
                    log(f"{variant.name} seed {seed}: done before ({path.name}), not run again")
                    results.append(done)
                    continue
            spec = {
                "variant": variant.name,
                "config": variant.config,
                "seed": seed,
                "settings": dataclasses.asdict(settings),
                "seconds": settings.minutes * 60,
                "fractions": fractions(settings.last, settings.spacing),
                "samples": settings.samples,
                "threads": settings.threads,
                "workers": settings.workers,
                "root_url": root_url,
                "version": version,
                "metric": str(metric_path),
                "dog": dog,
                "grid": str(grids / f"{variant.name.replace(':', '-')}.png") if grids and seed == seeds[0] else None,
                "result": str(path),
            }
            spec_path = out / "logs" / f"{path.stem}.spec.json"
            spec_path.write_text(json.dumps(spec, indent=1))
            log_path = out / "logs" / f"{path.stem}.log"
            log(f"{variant.name} seed {seed}: {settings.minutes:g} min ...")
            t0 = time.perf_counter()
            with open(log_path, "w") as f:
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--run", str(spec_path)], stdout=f, stderr=f
                )
            if proc.returncode != 0:
                tail = log_path.read_text().strip().splitlines()[-3:]
                result = {"variant": variant.name, "seed": seed, "settings": spec["settings"], "error": tail}
                path.write_text(json.dumps(result, indent=1))
                log(f"  FAILED (exit {proc.returncode}, {log_path}): {' | '.join(tail)}")
            else:
                # recorded so that a changed recipe runs again
                result = json.loads(path.read_text()) | {"variant_config": variant.config}
                path.write_text(json.dumps(result, indent=1))
                last = result["snapshots"][-1]
                log(
                    f"  {result['steps']} steps, {result['images_per_s']:.0f} img/s; last snapshot FD "
                    f"{last['fd']:.2f}, precision {last['precision']:.3f}, recall {last['recall']:.3f} "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
            results.append(result)
    return results


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: Iterable[dict[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
    """Per variant: runs, steps, images/s, FD (mean, sd over snapshots and seeds), ratio to the tutorial, P, R."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["variant"], []).append(r)
    rows = []
    for name in sorted(by, key=lambda v: order.index(v) if v in order else len(order)):
        runs = [r for r in by[name] if "error" not in r]
        row: dict[str, Any] = {"variant": name, "runs": len(runs), "failed": len(by[name]) - len(runs)}
        if runs:
            snaps = [s for r in runs for s in r["snapshots"]]
            fd, fd_sd = _mean_sd([s["fd"] for s in snaps])
            row.update(
                steps=statistics.fmean(r["steps"] for r in runs),
                images_per_s=statistics.fmean(r["images_per_s"] for r in runs),
                fd=fd,
                fd_sd=fd_sd,
                precision=statistics.fmean(s["precision"] for s in snaps),
                recall=statistics.fmean(s["recall"] for s in snaps),
            )
        rows.append(row)
    ref = next((r.get("fd") for r in rows if r["variant"] == "tutorial"), None)
    for row in rows:
        row["fd_ratio"] = row["fd"] / ref if ref and "fd" in row else None
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| variant | runs | steps | images/s | FD (mean +- sd) | FD / tutorial | precision | recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if not r["runs"]:
            lines.append(f"| {r['variant']} | 0 ({r['failed']} failed) | | | | | | |")
            continue
        ratio = f"{r['fd_ratio']:.2f}" if r["fd_ratio"] is not None else ""
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(
            f"| {r['variant']} | {r['runs']}{failed} | {r['steps']:.0f} | {r['images_per_s']:.0f} | "
            f"{r['fd']:.2f} +- {r['fd_sd']:.2f} | {ratio} | {r['precision']:.3f} | {r['recall']:.3f} |"
        )
    return "\n".join(lines)


def table(out: Path, settings: RunSettings, every: Sequence[Variant]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table over every run JSON in ``out`` made with ``settings`` and its variant's current config."""
    wanted = dataclasses.asdict(settings)
    configs = {v.name: v.config for v in every}
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.seed*.json"))]
    current = [r for r in results if r.get("variant") in configs and r.get("variant_config") == configs[r["variant"]]]
    rows = summarise([r for r in current if r.get("settings") == wanted], [v.name for v in every])
    return markdown(rows), rows


def _train_keys(root_url: str, version: str) -> set[str]:
    """sha256 keys of a dataset version's train split, from its samples table."""
    storage = open_storage(root_url)
    table_ = pq.read_table(io.BytesIO(storage.get_bytes(f"datasets/versions/{version}/samples.parquet")))
    return {r["key"] for r in table_.to_pylist() if r["split"] == "train"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training time per run")
    ap.add_argument("--seeds", type=int, default=2, help="runs per variant (seeds 0, 1, ...)")
    ap.add_argument("--samples", type=int, default=1000, help="generated samples scored per snapshot")
    ap.add_argument("--last", type=int, default=3, help="snapshots scored: the last K of the fractions")
    ap.add_argument("--spacing", type=float, default=0.1, help="snapshot fractions are multiples of this")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run")
    ap.add_argument("--workers", type=int, default=1, help="loader worker processes per run")
    ap.add_argument("--only", action="append", default=[], help="run only this variant (repeatable, run in this order)")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("--out", type=Path, default=OUT, help="run JSONs, logs, results.md, summary.json")
    ap.add_argument("--grids", type=Path, default=GRIDS, help="sample grids, one PNG per variant")
    ap.add_argument(
        "--pin",
        type=Path,
        default=PIN,
        help="accepted fixture rows the runs train on: written on first use, so later curation changes keep the runs",
    )
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # internal: one run, in this process
    args = ap.parse_args()
    if args.last < 1 or args.spacing <= 0 or args.spacing * (args.last - 1) >= 1:
        ap.error(f"--last {args.last} snapshots --spacing {args.spacing} apart do not fit in (0, 1] of the time")

    if args.run:
        spec = json.loads(args.run.read_text())
        Path(spec["result"]).write_text(json.dumps(run_one(spec), indent=1))
        return
    every = variants()
    if args.list:
        for v in every:
            state = f"UNAVAILABLE ({v.unavailable})" if v.unavailable else ""
            print(f"{v.name:<28} {v.note} {state}")
        return
    names = [v.name for v in every]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; see --list")
    by_name = {v.name: v for v in every}
    chosen = [by_name[n] for n in dict.fromkeys(args.only)] if args.only else every  # in the order asked
    for v in chosen:
        if v.unavailable:
            print(f"skipping {v.name}: {v.unavailable}")
    chosen = [v for v in chosen if not v.unavailable]
    if not FIXTURES.is_dir():
        sys.exit(f"skipped: no fixture images at {FIXTURES} (this benchmark needs real photos)")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-gan-quality-") as tmp:
        folders = {"dogs": DOG_FOLDERS, "null": NULL_FOLDERS, "satellite": TILE_FOLDERS}
        curated = curate_fixtures(Path(tmp), folders, pin=args.pin)
        print(curated.pinned)
        metric_settings = MetricSettings()
        metric = load_metric(metric_settings, data=metric_data(curated, metric_settings))
        dataset = write_dataset(curated, CLASSES, RESOLUTION, exclude=metric.heldout_keys)
        leaked = _train_keys(dataset.root_url, dataset.version) & set(metric.heldout_keys)
        if leaked:
            sys.exit(f"{len(leaked)} of the metric's held-out images are in the GAN training set")
        print(
            f"GAN training set: version {dataset.version}, train split {dataset.counts['train']} "
            f"(none of the metric's {len(metric.heldout_keys)} held-out images); "
            f"scored against {len(metric.reference_keys)} held-out real dogs"
        )
        settings = RunSettings(
            minutes=args.minutes,
            samples=args.samples,
            last=args.last,
            spacing=args.spacing,
            threads=args.threads,
            workers=args.workers,
            metric_key=metric.key,
            dataset_version=dataset.version,
        )
        print(
            f"{len(chosen)} variants x {args.seeds} seeds x {args.minutes:g} min, one at a time; "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
        run_variants(
            chosen,
            list(range(args.seeds)),
            settings,
            root_url=dataset.root_url,
            version=dataset.version,
            metric_path=metric.path,
            out=args.out,
            grids=args.grids,
        )

    text, rows = table(args.out, settings, every)
    header = (
        f"{args.minutes:g} min per run, {args.threads} torch threads; FD, precision and recall of "
        f"{args.samples} samples against {len(metric.reference_keys)} held-out real dogs (benchmarks/quality_metric.py,"
        f" metric {metric.key}), averaged over the snapshots at {fractions(args.last, args.spacing)} of the time "
        f"and over seeds"
    )
    (args.out / "results.md").write_text(header + "\n\n" + text + "\n")
    (args.out / "summary.json").write_text(
        json.dumps({"settings": dataclasses.asdict(settings), "rows": rows}, indent=1)
    )
    print(f"\n{header}\n\n{text}\n\ntotal {(time.perf_counter() - t_start) / 60:.1f} min; {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
