"""Training quality on the CPU in under 30 minutes: a 32 px DCGAN on the real photos of one class.

Run by hand: ``python benchmarks/bench_train_quality.py [--minutes 22] [--steps N]``. Builds a 32 px dataset
version from ``../shared/fixtures/dogs`` (500 dog photos, one class; ``--folder`` for another) in a temp dir
through the pipeline's ingest, curation and dataset builder (``fixture_data.py``), trains through the real
path (``shard_batches`` + ``Trainer``) and reports what a person looking at a GAN run would check first:

- the fixed-noise grid at the start and at the end (``benchmarks/quality/grid-start.png``, ``grid-end.png``);
- a loss-curve summary: D and G loss means over the first, middle and last tenth of the steps, D(x) and
  D(G(z)) (sigmoid of D's logits) at the end, from the Trainer's TensorBoard scalars;
- sample diversity over time (mean pairwise L2 distance of the fixed-noise samples, the Trainer's
  ``samples/diversity``) beside the same measure on real images (a collapsed G falls far below it);
- images/s, wall time and the Trainer's warnings; all of it also in ``benchmarks/quality/summary.json``.

Small-data tricks used (500 images are far too few for a plain DCGAN, whose D memorises them):
DiffAugment ``color,translation,cutout`` on every image D sees (Zhao et al. 2020, made for this case),
EMA of G's weights (decay 0.999, with warm-up) for the samples, and one-sided label smoothing
(real targets 0.9). Unless ``--steps`` is given, the step count is sized from a short measured run to
fit ``--minutes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from fixture_data import FIXTURES, build_fixture_dataset, decisions_line

from ganmodels.frames import frame_path, make_grid, mean_pairwise_distance, save_frame
from ganmodels.nets import NetConfig
from ganmodels.train import TrainConfig, Trainer, shard_batches

OUT = Path(__file__).resolve().parent / "quality"
RESOLUTION = 32


def make_config(steps: int, threads: int, seed: int) -> TrainConfig:
    """The small-data recipe (module docstring); frames 20 times and stats 100 times over the run."""
    return TrainConfig(
        net=NetConfig(resolution=RESOLUTION),
        loss="bce",
        real_range=(0.9, 0.9),
        diffaugment="color,translation,cutout",
        ema_decay=0.999,
        batch_size=64,
        steps=steps,
        seed=seed,
        threads=threads,
        checkpoint_every=max(steps, 1),
        keep_checkpoints=1,
        frame_every=max(steps // 20, 1),
        log_every=max(steps // 100, 1),
        device="cpu",
    )


def measure_rate(root_url: str, version: str, cfg: TrainConfig, out_dir: Path, steps: int) -> float:
    """Seconds per training step through the real loader, after 2 warm-up steps (worker start-up)."""
    batches, names = shard_batches(root_url, version, cfg)
    trainer = Trainer(cfg, batches, out_dir, class_names=names)
    for _ in range(2):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - t0) / steps


def tenth_means(history: list[tuple[int, float, float]]) -> dict[str, dict[str, float]]:
    """D and G loss means over the first, middle and last tenth of the steps."""
    n = len(history)
    k = max(n // 10, 1)
    parts = {"first": history[:k], "middle": history[n // 2 - k // 2 : n // 2 - k // 2 + k], "last": history[-k:]}
    return {
        name: {"d_loss": statistics.fmean(h[1] for h in part), "g_loss": statistics.fmean(h[2] for h in part)}
        for name, part in parts.items()
    }


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series the Trainer wrote to TensorBoard, as (step, value) lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=22.0, help="training time budget when --steps is not given")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: sized to --minutes)")
    ap.add_argument("--rate-steps", type=int, default=10, help="steps timed to size the run")
    ap.add_argument("--threads", type=int, default=TrainConfig().threads, help="torch threads (Trainer default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", default="dogs", help="fixture folder under ../shared/fixtures (one class)")
    ap.add_argument("--out", type=Path, default=OUT, help="where the grids and summary.json go")
    args = ap.parse_args()
    if not (FIXTURES / args.folder).is_dir():
        sys.exit(f"skipped: no fixture images at {FIXTURES / args.folder} (this benchmark needs real photos)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} torch threads, 2 loader workers")

    with tempfile.TemporaryDirectory(prefix="bench-train-quality-") as tmp_str:
        tmp = Path(tmp_str)
        ds = build_fixture_dataset(tmp, RESOLUTION, {"dogs": (args.folder,)})
        root_url, version = ds.root_url, ds.version
        print(decisions_line(ds.curated))
        print(f"dataset: {ds.train_images} train images from {args.folder}/ at {RESOLUTION} px -> version {version}")

        steps = args.steps
        rate = None
        if steps is None:
            rate = measure_rate(
                root_url, version, make_config(10**6, args.threads, args.seed), tmp / "rate", args.rate_steps
            )
            # 8% margin for frames, stats steps and the two checkpoint writes.
            steps = max(int(args.minutes * 60 / rate * 0.92), 10)
            print(f"measured {rate:.2f} s/step ({64 / rate:.1f} img/s): {steps} steps fit {args.minutes:g} min")
        cfg = make_config(steps, args.threads, args.seed)
        print(f"config: {json.dumps({k: v for k, v in cfg.to_dict().items() if k != 'net'})}")

        batches, names = shard_batches(root_url, version, cfg)
        real = next(iter(shard_batches(root_url, version, dataclasses.replace(cfg, seed=cfg.seed + 1))[0]))[0]
        real_diversity = mean_pairwise_distance(real)
        run_dir = tmp / "run"
        trainer = Trainer(cfg, batches, run_dir, class_names=names)
        args.out.mkdir(parents=True, exist_ok=True)
        # The Trainer renders frames after steps only: step 0 is rendered here (no RNG is drawn, so the run
        # is unchanged), the last step by the Trainer when steps is a multiple of frame_every, else here.
        start = trainer.render_frame()
        save_frame(make_grid(start, cfg.frame_nrow), args.out / "grid-start.png")
        t0 = time.perf_counter()
        result = trainer.run()
        train_s = time.perf_counter() - t0
        last = frame_path(run_dir / "frames", result.step)
        if last.exists():
            shutil.copyfile(last, args.out / "grid-end.png")
        else:
            save_frame(make_grid(trainer.render_frame(), cfg.frame_nrow), args.out / "grid-end.png")
        end_diversity = mean_pairwise_distance(trainer.render_frame())
        tb = scalars(run_dir / "tensorboard")

    tenths = tenth_means(result.history)
    d_real = tb.get("d/real", [(0, math.nan)])[-1]
    d_fake = tb.get("d/fake", [(0, math.nan)])[-1]
    diversity = [(0, mean_pairwise_distance(start)), *tb.get("samples/diversity", [])]
    summary = {
        "dataset": {
            "folder": args.folder,
            "images": ds.curated.ingested,
            "curation": ds.curated.decisions,
            "counts": ds.counts,
            "resolution": RESOLUTION,
            "version": version,
        },
        "config": cfg.to_dict(),
        "steps": result.step,
        "measured_s_per_step_before": rate,
        "train_wall_s": train_s,
        "total_wall_s": time.perf_counter() - t_start,
        "images_per_s": result.images_per_s,
        "loss_means_by_tenth": tenths,
        "end": {
            "step": d_real[0],
            "D(x)": d_real[1],
            "D(G(z))": d_fake[1],
            "d_loss": result.d_loss,
            "g_loss": result.g_loss,
        },
        "diversity": {"real_batch": real_diversity, "fixed_noise_end": end_diversity, "over_steps": diversity},
        "warnings": result.warnings,
        "load_average_end": os.getloadavg()[0],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    print(f"\n{result.step} steps in {train_s / 60:.1f} min ({result.images_per_s:.1f} img/s, 2 checkpoints included)")
    print("loss means      D loss   G loss")
    for name, m in tenths.items():
        print(f"  {name:<6} tenth {m['d_loss']:7.3f}  {m['g_loss']:7.3f}")
    print(f"at step {d_real[0]}: D(x) {d_real[1]:.3f}  D(G(z)) {d_fake[1]:.3f}")
    every = max(len(diversity) // 8, 1)
    series = ", ".join(
        f"{s}: {v:.1f}" for s, v in diversity[::every] + ([diversity[-1]] if (len(diversity) - 1) % every else [])
    )
    print(f"sample diversity (mean pairwise L2 of the fixed-noise samples; real images {real_diversity:.1f}): {series}")
    print(f"warnings: {result.warnings or 'none'}")
    print(f"grids: {args.out / 'grid-start.png'}, {args.out / 'grid-end.png'}; summary: {args.out / 'summary.json'}")
    print(f"total {summary['total_wall_s'] / 60:.1f} min; load average at end {summary['load_average_end']:.2f}")


if __name__ == "__main__":
    main()
