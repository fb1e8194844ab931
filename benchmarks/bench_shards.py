"""Shard writing and training-loader throughput, against loose files, on the real photos.

Run by hand: ``python benchmarks/bench_shards.py``. Uses the fixtures in ../shared/fixtures (read-only):
class 0 = ``dogs-large/`` (2000 128x128 JPEGs) + ``dogs-photos/`` (266 full-size), class 1 = ``null/``
(500 128x128) + ``null-photos/`` (237 full-size).

1. Preprocess every image once to 64x64 (centre crop + LANCZOS), JPEG q95, and write shards through
   LocalStorage (fsync on, as in production): shard-writing MB/s.
2. Loader throughput, images/s, batch 64, 2 workers, epochs interleaved so all loaders see the same
   machine state:
   - ``shards``: ganmodels.data.make_loader over those shards;
   - ``loose64``: an ImageFolder-style map-style Dataset over the same 64x64 JPEGs as loose files;
   - ``loose-orig``: the same Dataset over the original files (what a user without the pipeline does:
     PIL open + convert + centre crop + resize to 64 + to tensor, per image, per epoch).
3. A DCGAN training step (64x64, batch 64, CPU) alone, then the same steps fed by each loader, timing
   how long each step waits in ``next(loader)``: does a step ever wait on data?
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image
from torch import nn

from ganmodels.data import make_loader
from pipelines.shards import write_shards
from pipelines.storage import LocalStorage

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
CLASSES = {0: ["dogs-large", "dogs-photos"], 1: ["null", "null-photos"]}
SIZE = 64
BATCH = 64
WORKERS = 2


def centre_crop_resize(im: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Largest centred square, resized to ``size``."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((size, size), resample)


def source_files(limit: int | None) -> list[tuple[Path, int]]:
    files = []
    for label, folders in CLASSES.items():
        for folder in folders:
            files += [(p, label) for p in sorted((FIXTURES / folder).glob("*.jpg"))]
    files.sort(key=lambda f: f[0].name)  # mix the classes, deterministically
    return files[:limit] if limit else files


def preprocess(files: list[tuple[Path, int]]) -> list[dict]:
    """The curated-dataset step: 64x64 JPEGs keyed by content, in webdataset sample form."""
    samples, seen = [], set()
    for path, label in files:
        with Image.open(path) as im:
            small = centre_crop_resize(im.convert("RGB"), SIZE, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=95)
        data = buf.getvalue()
        key = hashlib.sha256(data).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        samples.append({"__key__": key, "jpg": data, "cls": label, "json": {"source": path.name}})
    return samples


class LooseImageFolder(torch.utils.data.Dataset):
    """torchvision-free ImageFolder: ``root/<class>/<file>``, decoded, cropped, resized per access."""

    def __init__(self, root: Path, size: int = SIZE) -> None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.items = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        with Image.open(path) as im:
            # BILINEAR: torchvision's default Resize, what a user would get.
            im = centre_crop_resize(im.convert("RGB"), self.size, Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return x, label


def loose_loader(root: Path) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        LooseImageFolder(root), batch_size=BATCH, shuffle=True, num_workers=WORKERS, drop_last=True
    )


def _cpu() -> float:
    """CPU seconds of this process plus its reaped children (the DataLoader workers, joined per epoch)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_epoch(loader: torch.utils.data.DataLoader) -> tuple[int, float, float]:
    """Images, wall seconds and CPU seconds (main + workers) for one epoch."""
    c0, t0 = _cpu(), time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    wall = time.perf_counter() - t0
    del x
    return n, wall, _cpu() - c0


# ---- a DCGAN (Radford et al.) at 64x64 -----------------------------------------------------------


def generator(nz: int = 100, ngf: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh(),
    )  # fmt: skip


def discriminator(ndf: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Flatten(),
    )  # fmt: skip


class DCGANStep:
    """One standard non-saturating GAN step: D on real + fake, then G."""

    def __init__(self, width: int) -> None:
        torch.manual_seed(0)
        self.g, self.d = generator(ngf=width), discriminator(ndf=width)
        self.opt_g = torch.optim.Adam(self.g.parameters(), 2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), 2e-4, betas=(0.5, 0.999))
        self.loss = nn.BCEWithLogitsLoss()

    def __call__(self, real: torch.Tensor) -> None:
        b = real.shape[0]
        ones, zeros = torch.ones(b, 1), torch.zeros(b, 1)
        fake = self.g(torch.randn(b, 100, 1, 1))
        self.opt_d.zero_grad(set_to_none=True)
        (self.loss(self.d(real), ones) + self.loss(self.d(fake.detach()), zeros)).backward()
        self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        self.loss(self.d(fake), ones).backward()
        self.opt_g.step()


def time_steps(step: DCGANStep, batches, steps: int) -> dict[str, float]:
    """Step times (median and min: the min is what the machine can do when nothing else runs) and the time each
    step spent waiting in ``next()`` for its batch, over ``steps`` steps after one warm-up."""
    it = iter(batches)
    step(next(it)[0])  # warm-up: allocator, workers started
    waits, totals = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        x, _ = next(it)
        t1 = time.perf_counter()
        step(x)
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        totals.append(t2 - t0)
    return {
        "median": statistics.median(totals),
        "min": min(totals),
        "wait": statistics.mean(waits),
        "worst": max(waits),
        "share": sum(waits) / sum(totals),
    }


def forever(loader: torch.utils.data.DataLoader):
    epoch = 0
    while True:
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="use only this many source images")
    ap.add_argument("--epochs", type=int, default=2, help="measured loader epochs (after one warm-up)")
    ap.add_argument("--steps", type=int, default=10, help="training steps timed per configuration (0: skip)")
    ap.add_argument("--shard-count", type=int, default=256, help="samples per shard")
    args = ap.parse_args()
    if not FIXTURES.is_dir():
        sys.exit(f"no fixtures at {FIXTURES}")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

    files = source_files(args.limit)
    t0 = time.perf_counter()
    samples = preprocess(files)
    t_pre = time.perf_counter() - t0
    orig_mb = sum(p.stat().st_size for p, _ in files) / 1e6
    print(f"\n{len(files)} source files ({orig_mb:.1f} MB), {len(samples)} distinct after 64x64 preprocessing")
    print(f"preprocess (decode + crop + LANCZOS 64 + JPEG q95): {t_pre:.2f} s = {len(files) / t_pre:.0f} images/s")

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp_str:
        tmp = Path(tmp_str)
        # ---- 1. shard writing
        times = []
        for rep in range(3):  # fresh storage each time: a re-write into the same one would skip the uploads
            storage = LocalStorage(tmp / f"store{rep}")
            t0 = time.perf_counter()
            infos = write_shards(storage, samples, max_count=args.shard_count)
            times.append(time.perf_counter() - t0)
        total = sum(i.bytes for i in infos)
        payload = sum(len(s["jpg"]) for s in samples)
        t_write = statistics.median(times)
        print(
            f"\nshard writing: {len(infos)} shards, {total / 1e6:.2f} MB of tar ({payload / 1e6:.2f} MB of JPEG), "
            f"median of 3: {t_write:.3f} s = {total / 1e6 / t_write:.1f} MB/s = {len(samples) / t_write:.0f} samples/s"
            f" (runs: {', '.join(f'{t:.3f}' for t in times)} s)"
        )
        keys = [i.key for i in infos]
        root = storage.root_url

        # ---- loose-file trees: the same 64x64 JPEGs, and the originals (symlinked into class folders)
        for s in samples:
            d = tmp / "loose64" / str(s["cls"])
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{s['__key__']}.jpg").write_bytes(s["jpg"])
        for i, (p, label) in enumerate(files):
            d = tmp / "orig" / str(label)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:05d}-{p.name}").symlink_to(p)

        # ---- 2. loader throughput, epochs interleaved
        loaders = {
            "shards": make_loader(root, keys, batch_size=BATCH, num_workers=WORKERS, shuffle_buffer=1000),
            "loose64": loose_loader(tmp / "loose64"),
            "loose-orig": loose_loader(tmp / "orig"),
        }
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        cpu: dict[str, list[float]] = {name: [] for name in loaders}
        print(f"\nloader throughput, batch {BATCH}, {WORKERS} workers, 1 warm-up + {args.epochs} measured epochs:")
        for epoch in range(args.epochs + 1):
            for name, loader in loaders.items():
                if hasattr(loader.dataset, "set_epoch"):
                    loader.dataset.set_epoch(epoch)
                n, dt, cpu_s = run_epoch(loader)
                tag = "warm-up" if epoch == 0 else f"epoch {epoch}"
                print(
                    f"  {name:<10} {tag:<8} {n:>5} images in {dt:6.2f} s = {n / dt:7.0f} images/s, "
                    f"CPU {1e6 * cpu_s / n:5.0f} us/image (main + workers)"
                )
                if epoch:
                    rates[name].append(n / dt)
                    cpu[name].append(cpu_s / n)
        mean = {name: statistics.mean(r) for name, r in rates.items()}
        per = {name: statistics.mean(c) for name, c in cpu.items()}
        print("\n  loader       images/s   ms/batch   vs loose-orig   vs loose64   CPU us/image   CPU vs loose-orig")
        for name in loaders:
            print(
                f"  {name:<10} {mean[name]:>10.0f} {1000 * BATCH / mean[name]:>10.1f} "
                f"{mean[name] / mean['loose-orig']:>14.2f}x {mean[name] / mean['loose64']:>11.2f}x "
                f"{1e6 * per[name]:>14.0f} {per['loose-orig'] / per[name]:>18.2f}x"
            )
        verdict = "MET" if mean["shards"] >= 2 * mean["loose-orig"] else "NOT met"
        print(
            f"  target (shards >= 2x loose files): vs originals {mean['shards'] / mean['loose-orig']:.2f}x {verdict}; "
            f"vs the same 64x64 files loose {mean['shards'] / mean['loose64']:.2f}x"
        )
        load = os.getloadavg()
        print(f"  (load average during the run: {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} CPUs)")

        # ---- 3. training step vs data
        if args.steps < 1:
            return
        print(f"\nDCGAN step (G+D, 64x64, batch {BATCH}, CPU, {torch.get_num_threads()} threads), {args.steps} steps:")
        fixed = torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1
        for width in (64, 32):
            step = DCGANStep(width)
            r = time_steps(step, iter(lambda: (fixed, None), None), args.steps)
            print(
                f"  ngf=ndf={width}: in-memory batch     : {r['median'] * 1000:6.0f} ms/step median, "
                f"{r['min'] * 1000:6.0f} min"
            )
            for name in ("shards", "loose-orig"):
                r = time_steps(step, forever(loaders[name]), args.steps)
                print(
                    f"  ngf=ndf={width}: fed by {name:<11}: {r['median'] * 1000:6.0f} ms/step median, "
                    f"{r['min'] * 1000:6.0f} min; waited for data {r['wait'] * 1000:5.1f} ms/step on average "
                    f"({100 * r['share']:.1f}% of the time), worst {r['worst'] * 1000:5.1f} ms; "
                    f"the loader alone makes a batch every {1000 * BATCH / mean[name]:.1f} ms"
                )


if __name__ == "__main__":
    main()
