"""How to sample the averaged (EMA) generator: its BatchNorm statistics decide what it draws.

Run by hand, with nothing else running: ``python benchmarks/bench_ema_sampling.py [--steps 500] [--seeds 2]``.

Trains the small-data recipe of ``bench_train_quality.py`` (bce, real targets 0.9, DiffAugment
``color,translation,cutout``, EMA 0.999 with warm-up, width 64, batch 64) at 32 px on the curated fixture dogs
minus every image quality_metric.py holds out, and scores four samplers of the same run, at the last three
tenths of the steps, on the same 1,000 latents, with quality_metric.py (FD, precision, recall against the
held-out real dogs; lower FD is better):

- ``raw G``: the trained G in eval mode (its own running statistics);
- ``EMA, live G's statistics``: the averaged weights with the live G's running statistics, as every frame,
  snapshot and score was sampled before issue 13;
- ``EMA, standing statistics``: the averaged weights with statistics recomputed on them over 1,024 fresh
  latents (what ``ganmodels/ema.py`` does now);
- ``EMA, batch statistics``: the averaged weights in train mode, normalising each batch of 250 by itself.

Prints the table (mean and spread over snapshots and seeds) and writes an 8x8 grid per sampler (first seed,
last step) to ``benchmarks/quality/ema/``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from bench_train_quality import make_config
from fixture_data import DOG_FOLDERS, FIXTURES, NULL_FOLDERS, TILE_FOLDERS, curate_fixtures, write_dataset
from quality_metric import MetricSettings, load_metric, metric_data
from torch import nn

from ganmodels.frames import make_grid, save_frame
from ganmodels.train import Trainer, shard_batches

GRIDS = Path(__file__).resolve().parent / "quality" / "ema"
SAMPLERS = ("raw G", "EMA, live G's statistics", "EMA, standing statistics", "EMA, batch statistics")


def samplers(trainer: Trainer) -> dict[str, nn.Module]:
    """The four ways to sample one training state (module docstring), as separate copies."""
    assert trainer.ema is not None
    raw = copy.deepcopy(trainer.G).eval()
    live = copy.deepcopy(trainer.ema._module)  # the averaged weights, before their statistics are recomputed
    live_buffers = dict(trainer.G.named_buffers())
    with torch.no_grad():
        for name, buf in live.named_buffers():
            buf.copy_(live_buffers[name])
    standing = copy.deepcopy(trainer.ema.module)
    batch = copy.deepcopy(trainer.ema.module).train()
    return dict(zip(SAMPLERS, (raw, live.eval(), standing, batch), strict=True))


@torch.no_grad()
def generate(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(z[i : i + 250]) for i in range(0, len(z), 250)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500, help="training steps per seed")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not FIXTURES.is_dir():
        sys.exit(f"skipped: no fixture images at {FIXTURES} (this benchmark needs real photos)")
    torch.set_num_threads(args.threads)
    checkpoints = sorted({round(args.steps * f) for f in (0.8, 0.9, 1.0)})
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in SAMPLERS}
    with tempfile.TemporaryDirectory(prefix="bench-ema-sampling-") as tmp:
        curated = curate_fixtures(Path(tmp), {"dogs": DOG_FOLDERS, "null": NULL_FOLDERS, "satellite": TILE_FOLDERS})
        settings = MetricSettings()
        metric = load_metric(settings, data=metric_data(curated, settings))
        dataset = write_dataset(curated, ["dogs"], 32, exclude=metric.heldout_keys)
        print(f"GAN training set: {dataset.counts['train']} (none of the metric's held-out images)")
        for seed in range(args.seeds):
            cfg = make_config(args.steps, args.threads, seed)
            batches, names = shard_batches(dataset.root_url, dataset.version, cfg)
            trainer = Trainer(cfg, batches, Path(tmp) / f"run-{seed}", class_names=names)
            z = torch.randn(args.samples, cfg.net.latent_dim, generator=torch.Generator().manual_seed(1000 + seed))
            while trainer.step < args.steps:
                trainer.train_step()
                if trainer.step not in checkpoints:
                    continue
                for name, net in samplers(trainer).items():
                    images = generate(net, z)
                    scores[name].append(metric.score(images))
                    if seed == 0 and trainer.step == args.steps:
                        GRIDS.mkdir(parents=True, exist_ok=True)
                        slug = name.lower().replace(",", "").replace("'", "").replace(" ", "-")
                        save_frame(make_grid(images[:64], 8), GRIDS / f"{slug}.png")
                line = ", ".join(f"{n}: FD {scores[n][-1]['fd']:.2f}" for n in SAMPLERS)
                print(f"seed {seed} step {trainer.step}: {line}", flush=True)

    print(f"\n{args.steps} steps, snapshots {checkpoints}, {args.seeds} seeds, {args.samples} samples each")
    print("| sampler | FD (mean +- sd) | precision | recall |")
    print("| --- | ---: | ---: | ---: |")
    for name in SAMPLERS:
        fd, precision, recall = ([s[key] for s in scores[name]] for key in ("fd", "precision", "recall"))
        print(
            f"| {name} | {statistics.mean(fd):.2f} +- {statistics.pstdev(fd):.2f} | "
            f"{statistics.mean(precision):.3f} | {statistics.mean(recall):.3f} |"
        )


if __name__ == "__main__":
    main()
