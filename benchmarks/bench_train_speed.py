"""Training speed of ``ganmodels.train.Trainer`` against the textbook DCGAN loop, on the CPU, in one run.

Run by hand: ``python benchmarks/bench_train_speed.py``. Both sides train the same nets
(``ganmodels.nets.build(NetConfig(resolution=64))``, default width 64) at batch 64 with the same thread
count; short windows of steps alternate (order rotated every round) so that all sides see the same
machine state, and the figure is the median over rounds of the paired ratio ours/ref (wall clock, and
CPU time of this process, the steadier figure when other jobs share the cores).

- ``ref``: the PyTorch DCGAN tutorial's loop written out plainly: BCE, Adam(lr 2e-4, betas 0.5/0.999),
  D on a real batch then on ``fake.detach()``, one D step, then one G step through D on the same ``fake``.
- ``ours``: a :class:`Trainer` with every trick off (bce, hard labels, d_steps = g_steps = 1, no replay,
  EMA, DiffAugment or mixed batch, frames off) and ``reuse_fakes`` on, i.e. the tutorial's algorithm: G's
  step reuses the D step's fakes. Timed over windows of ``Trainer.train_step()`` (exactly what
  ``Trainer.run`` calls per step): the step-0 and final checkpoint writes of ``run`` are one-off costs
  outside the steady state, so they are left out here and reported once separately.
- ``ours-fresh``: the Trainer's default (``reuse_fakes`` off): D's fakes are drawn under ``no_grad`` and
  G's step draws new ones, one more G forward per step than the tutorial; shown for what that choice costs.
- ``ref+G`` (attribution only): ``ref`` plus one no-grad G forward on fresh noise per step: the tutorial
  loop doing the same work as ``ours-fresh``.

Two data sources:

(a) one in-memory batch of real images, reused every step: pure compute;
(b) the real loader, ``shard_batches`` over a dataset version built in a temp dir from the fixture
    photos (``../shared/fixtures/dogs``; synthetic images when absent) through the pipeline's ingest,
    curation and ``pipelines.dataset.build_dataset`` (``fixture_data.py``), 2 loader workers: the time
    each step waits in ``next()`` on the loader iterator, as a share of the step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from fixture_data import build_fixture_dataset, decisions_line
from torch import nn

from ganmodels.nets import NetConfig, build
from ganmodels.train import TrainConfig, Trainer, shard_batches

BATCH = 64

Batch = tuple[torch.Tensor, torch.Tensor]


class TimedIter:
    """Wraps a batch iterable and adds up the time spent in ``next()`` (the step's wait for data)."""

    def __init__(self, data: Iterable[Batch]) -> None:
        self.data = data
        self.wait = 0.0

    def start_at(self, batch_index: int) -> None:
        start_at = getattr(self.data, "start_at", None)
        if start_at is not None:
            start_at(batch_index)

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self.data)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.wait += time.perf_counter() - t0
            yield batch


# ---- the two loops -------------------------------------------------------------------------------------


class ReferenceLoop:
    """The PyTorch DCGAN tutorial's training step, on the project's nets (D returns logits: BCE-with-logits)."""

    def __init__(self, net: NetConfig, data: Iterable[Batch], seed: int = 0, *, extra_g_forward: bool = False) -> None:
        torch.manual_seed(seed)
        self.extra_g_forward = extra_g_forward  # attribution only: add the Trainer's extra no-grad G pass
        self.netG, self.netD = build(net)
        self.nz = net.latent_dim
        self.criterion = nn.BCEWithLogitsLoss()
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.data = data
        self.it = iter(data)

    def train_step(self) -> None:
        real = next(self.it)[0]
        b = real.shape[0]
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        self.netD.zero_grad()
        label = torch.full((b,), 1.0)
        output = self.netD(real).view(-1)
        err_d_real = self.criterion(output, label)
        err_d_real.backward()
        noise = torch.randn(b, self.nz)
        fake = self.netG(noise)
        if self.extra_g_forward:
            with torch.no_grad():
                self.netG(torch.randn(b, self.nz))
        label.fill_(0.0)
        output = self.netD(fake.detach()).view(-1)
        err_d_fake = self.criterion(output, label)
        err_d_fake.backward()
        self.optD.step()
        # (2) Update G: maximize log(D(G(z)))
        self.netG.zero_grad()
        label.fill_(1.0)
        output = self.netD(fake).view(-1)
        err_g = self.criterion(output, label)
        err_g.backward()
        self.optG.step()
        self.last = ((err_d_real + err_d_fake).item(), err_g.item())  # the tutorial's per-step .item() logging


def ours_config(threads: int, width: int, reuse_fakes: bool = True) -> TrainConfig:
    """Every trick off; checkpoints, frames and logging out of the way."""
    return TrainConfig(
        reuse_fakes=reuse_fakes,
        net=NetConfig(resolution=64, width=width),
        loss="bce",
        d_steps=1,
        g_steps=1,
        replay_capacity=0,
        ema_decay=0.0,
        diffaugment="",
        mixed_batch=False,
        batch_size=BATCH,
        steps=10**9,
        threads=threads,
        checkpoint_every=10**9,
        frame_every=0,
        log_every=10**9,
        device="cpu",
    )


def window(step: Callable[[], object], n: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all its threads; not loader workers) for ``n`` steps.

    CPU time is the steadier figure when other jobs share the cores: it does not count time spent
    descheduled (but does count OpenMP threads spinning while they wait for a core).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return time.perf_counter() - t0, time.process_time() - c0


def compare(
    name: str,
    sides: dict[str, Callable[[], object]],
    timers: dict[str, TimedIter] | None,
    rounds: int,
    steps: int,
    warmup: int,
) -> dict[str, dict[str, list[float]]]:
    """Alternate windows of ``steps`` steps (order rotated every round); wall and CPU seconds per step per side.

    Short windows, many rounds: the machine's load changes within seconds, and the paired ratio of
    adjacent windows cancels most of it; data-wait shares come from ``timers`` when given.
    """
    for fn in sides.values():
        window(fn, warmup)
    names = list(sides)
    out: dict[str, dict[str, list[float]]] = {side: {"wall": [], "cpu": [], "wait": []} for side in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for side in order:
            w0 = timers[side].wait if timers else 0.0
            wall, cpu = window(sides[side], steps)
            out[side]["wall"].append(wall / steps)
            out[side]["cpu"].append(cpu / steps)
            if timers:
                out[side]["wait"].append((timers[side].wait - w0) / wall)
        line = "  ".join(f"{side} {BATCH / out[side]['wall'][-1]:5.1f}" for side in names)
        waits = (
            "  data wait " + " ".join(f"{side} {100 * out[side]['wait'][-1]:.1f}%" for side in names) if timers else ""
        )
        print(f"  {name} round {r + 1:>2}/{rounds} img/s: {line}{waits}", flush=True)
    return out


def summarise(name: str, out: dict[str, dict[str, list[float]]], base: str = "ref") -> dict[str, float]:
    """Per side: median and best images/s, median paired ratio to ``base`` (by wall and by CPU time)."""
    figures: dict[str, float] = {}
    for side, t in out.items():
        ratio = [b / o for b, o in zip(out[base]["wall"], t["wall"], strict=True)]
        cpu_ratio = [b / o for b, o in zip(out[base]["cpu"], t["cpu"], strict=True)]
        med, best = BATCH / statistics.median(t["wall"]), BATCH / min(t["wall"])
        figures[side] = statistics.median(ratio)
        text = (
            f"{name} {side:<8}: median {med:5.1f} img/s ({1000 * BATCH / med:5.0f} ms/step), best {best:5.1f} img/s; "
            f"CPU {1000 * statistics.median(t['cpu']):5.0f} ms/step"
        )
        if side != base:
            text += (
                f"; vs {base}: median paired ratio {statistics.median(ratio):.3f} (quartiles "
                f"{_quartiles(ratio)}), best/best {min(out[base]['wall']) / min(t['wall']):.3f}, "
                f"by CPU time {statistics.median(cpu_ratio):.3f}"
            )
        if t["wait"]:
            share = sum(w * s for w, s in zip(t["wait"], t["wall"], strict=True)) / sum(t["wall"])
            text += f"; waited for data {100 * share:.2f}% of step time (worst window {100 * max(t['wait']):.1f}%)"
        print(text)
    return figures


def _quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{q[0]:.3f}-{q[2]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--threads",
        type=int,
        default=TrainConfig().threads,
        help="torch threads, both sides (default: the Trainer's own, CPUs - 1, leaving a core to the loader)",
    )
    ap.add_argument("--width", type=int, default=64, help="net width (DCGAN ngf = ndf)")
    ap.add_argument("--rounds", type=int, default=24, help="alternating window rounds, in-memory data")
    ap.add_argument("--steps", type=int, default=1, help="steps per window")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    ap.add_argument("--loader-rounds", type=int, default=8, help="window rounds fed by the shard loader (0: skip)")
    ap.add_argument("--loader-steps", type=int, default=2, help="steps per loader window")
    ap.add_argument("--workers", type=int, default=2, help="loader workers")
    ap.add_argument("--folder", default="dogs", help="fixture folder under ../shared/fixtures")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} torch threads, 64 px DCGAN width "
        f"{args.width}, batch {BATCH}; load average at start {os.getloadavg()[0]:.2f}"
    )
    t_start = time.perf_counter()
    net = NetConfig(resolution=64, width=args.width)
    cfg = ours_config(args.threads, args.width)
    with tempfile.TemporaryDirectory(prefix="bench-train-speed-") as tmp_str:
        tmp = Path(tmp_str)
        t0 = time.perf_counter()
        ds = build_fixture_dataset(tmp, 64, {"dogs": (args.folder,)}, synthetic=512)
        root_url, version = ds.root_url, ds.version
        print(decisions_line(ds.curated))
        print(f"dataset: {ds.train_images} train images -> version {version} in {time.perf_counter() - t0:.1f} s")

        # (a) in-memory: one real batch (from the loader) reused every step, by both sides.
        batches, names = shard_batches(root_url, version, cfg, num_workers=args.workers)
        fixed = next(iter(batches))
        ref = ReferenceLoop(net, itertools.repeat(fixed))
        ours = Trainer(cfg, itertools.repeat(fixed), tmp / "run-a", class_names=names)
        print(f"\n(a) in-memory batch: {args.rounds} rounds x {args.steps} steps per side, after {args.warmup} warm-up")
        ref_g = ReferenceLoop(net, itertools.repeat(fixed), extra_g_forward=True)
        fresh_cfg = ours_config(args.threads, args.width, reuse_fakes=False)
        fresh = Trainer(fresh_cfg, itertools.repeat(fixed), tmp / "run-a2", class_names=names)
        sides_a = {"ref": ref.train_step, "ours": ours.train_step, "ours-fresh": fresh.train_step}
        sides_a["ref+G"] = ref_g.train_step
        res_a = compare("(a)", sides_a, None, args.rounds, args.steps, args.warmup)
        fig = summarise("(a)", res_a)
        print(
            f"(a) ours/ref {fig['ours']:.3f}: target >= 0.95 {'MET' if fig['ours'] >= 0.95 else 'NOT met'}. "
            f"ours-fresh (the default, fresh noise for G's step) / ref {fig['ours-fresh']:.3f}, and ref+G (the "
            f"tutorial loop with that same extra G forward) / ref {fig['ref+G']:.3f}: the price of the extra forward"
        )

        # (b) the real shard loader, one per side (separate worker pools), waits timed in next().
        if args.loader_rounds:
            timers = {
                "ref": TimedIter(shard_batches(root_url, version, cfg, num_workers=args.workers)[0]),
                "ours": TimedIter(shard_batches(root_url, version, cfg, num_workers=args.workers)[0]),
            }
            ref_b = ReferenceLoop(net, timers["ref"])
            ours_b = Trainer(cfg, timers["ours"], tmp / "run-b", class_names=names)
            print(
                f"\n(b) shard loader ({args.workers} workers each, {ds.train_images} images, 1 class): "
                f"{args.loader_rounds} rounds x {args.loader_steps} steps per side"
            )
            sides_b = {"ref": ref_b.train_step, "ours": ours_b.train_step}
            res_b = compare("(b)", sides_b, timers, args.loader_rounds, args.loader_steps, args.warmup)
            summarise("(b)", res_b)
            print(
                f"(b) loader-fed / in-memory step time, ours: "
                f"{statistics.median(res_b['ours']['wall']) / statistics.median(res_a['ours']['wall']):.3f} "
                f"(the loader workers take CPU from the step beyond the wait)"
            )

        # One short full Trainer.run, to show what the step-0 and final checkpoints add to a run.
        t0 = time.perf_counter()
        short = Trainer(dataclasses.replace(cfg, steps=4), itertools.repeat(fixed), tmp / "run-c", class_names=names)
        result = short.run()
        print(
            f"\nTrainer.run of 4 steps (2 checkpoint writes): {time.perf_counter() - t0:.1f} s, "
            f"TrainResult.images_per_s {result.images_per_s:.1f}"
        )
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
