"""Curation's hashing pass on every core, side by side with imagehash alone and imagededup, on the same images.

Run by hand, with nothing else running: ``python benchmarks/bench_features.py [--imagededup-python PY]``.

The images are real JPEGs of ../shared/fixtures, never copied into the project: with ``--set thumbnails``
(the default) the 128x128 ones of ``dogs``, ``null`` and ``dogs-large`` (3,000 photos); with ``--set photos``
the photos at their published sizes in ``dogs-photos`` and ``null-photos`` (about 500, median 400x375, up
to 2400x1600: what the Dog CEO API and photo sites serve, where a draft decode saves most). They are
written once to a temporary folder that serves as the storage (as the ingest stores them) and as the folder
imagededup reads, ``--copies`` times under other names (so that the worker processes' start-up, about half
a second, weighs as little as in a real curation).
Contenders, in alternating rounds, the best round of each counting:

- ``imagehash alone``: ``imagehash.phash(Image.open(path))`` over the files in one process: what a user's
  loop does, and the reference of every ratio;
- ``imagehash, N processes``: the same on a ``multiprocessing`` pool of N (the obvious parallel version);
- ``project, 1 process`` and ``project, N processes``: curation's feature pass (``_compute_features``: draft
  decode, EXIF rotation, letterbox trimming, pHash of the picture and of its mirror image, the quality
  and keep-best measures), in its worker processes (``pipelines/procmap.py``);
- ``imagededup PHash``: ``PHash().encode_images(folder)`` (its default: a pool over all cores), run in its own
  virtualenv (it needs torch and torchvision, which stay out of the project's install) and timed inside
  that process, imports excluded. Skipped without ``--imagededup-python``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagehash
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.curate import _compute_features
from pipelines.procmap import available_cores
from pipelines.storage import LocalStorage

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SETS = {  # name -> (fixture folders, what they are)
    "thumbnails": (("dogs", "null", "dogs-large"), "real 128x128 JPEGs"),
    "photos": (("dogs-photos", "null-photos"), "real photos at their published sizes (median 400x375)"),
}
IMAGEDEDUP = """
import sys, time
from imagededup.methods import PHash
hasher = PHash(verbose=False)
t0 = time.perf_counter()
encodings = hasher.encode_images(image_dir=sys.argv[1])
print(len(encodings), time.perf_counter() - t0)
"""


def phash_file(path: str) -> str:
    with Image.open(path) as img:
        return str(imagehash.phash(img))


def imagehash_alone(paths: list[str]) -> None:
    for p in paths:
        phash_file(p)


def imagehash_pool(processes: int) -> Callable[[list[str]], None]:
    def run(paths: list[str]) -> None:
        with mp.get_context("spawn").Pool(processes) as pool:
            pool.map(phash_file, paths, chunksize=64)

    return run


def project(storage: LocalStorage, keys: dict[str, str], processes: int) -> Callable[[list[str]], None]:
    def run(_: list[str]) -> None:
        rows = _compute_features(storage, keys, "phash", processes, lambda _: None)
        assert len(rows) == len(keys) and not any(r["error"] for r in rows)

    return run


def imagededup(python: str, folder: Path) -> Callable[[list[str]], float]:
    def run(paths: list[str]) -> float:
        out = subprocess.run([python, "-c", IMAGEDEDUP, str(folder)], capture_output=True, text=True, check=True)
        count, seconds = out.stdout.split()[-2:]
        assert int(count) == len(paths), out.stdout
        return float(seconds)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each contender counts")
    ap.add_argument("--imagededup-python", help="a python with imagededup installed (a separate virtualenv)")
    ap.add_argument("--copies", type=int, default=4, help="each image this many times, under other names: a longer run")
    ap.add_argument("--set", choices=sorted(SETS), default="thumbnails", help="which fixture images (see above)")
    args = ap.parse_args()
    if not FIXTURES.is_dir():
        sys.exit(f"skipped: no fixture images at {FIXTURES}")
    cores = available_cores()
    folders, what = SETS[args.set]
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        keys: dict[str, str] = {}
        storage = LocalStorage(tmp)
        for copy in range(args.copies):
            for d in folders:
                for p in sorted((FIXTURES / d).glob("*.jpg")):
                    name = f"{copy}-{d}-{p.name}"
                    (folder / name).write_bytes(p.read_bytes())
                    keys[name] = f"images/{name}"
        paths = [str(folder / n) for n in keys]
        print(
            f"{len(paths)} {what} ({', '.join(folders)}, {args.copies} copies of each), {cores} cores,"
            f" best of {args.rounds} rounds"
        )
        contenders: dict[str, Callable[[list[str]], float | None]] = {
            "imagehash alone (pHash, 1 process)": imagehash_alone,
            f"imagehash, {cores} processes (multiprocessing.Pool)": imagehash_pool(cores),
            "project, 1 process (full feature set)": project(storage, keys, 1),
            f"project, {cores} processes (full feature set)": project(storage, keys, cores),
        }
        if args.imagededup_python:
            contenders[f"imagededup {_version(args.imagededup_python)} PHash (its default pool)"] = imagededup(
                args.imagededup_python, folder
            )
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, run in contenders.items():
                t0 = time.perf_counter()
                inner = run(paths)
                elapsed = inner if isinstance(inner, float) else time.perf_counter() - t0
                best[name] = min(best.get(name, float("inf")), elapsed)
                print(f"round {r + 1}: {name}: {len(paths) / elapsed:,.0f} images/s", flush=True)
    ref = len(paths) / best["imagehash alone (pHash, 1 process)"]
    print("\n| hashing | images/s | vs imagehash alone |\n| --- | ---: | ---: |")
    for name, seconds in best.items():
        rate = len(paths) / seconds
        print(f"| {name} | {rate:,.0f} | {rate / ref:.2f}x |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def _version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import imagededup; print(imagededup.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    main()
