"""Fetch throughput: images/s through the real ingest path against a loopback server.

Run by hand; prints its figures. Two measurements:

``python benchmarks/bench_fetch.py`` (``make bench-fetch``): images/s by concurrency. The server
(tests/fakeweb.py) runs in its own process so that serving does not compete with the fetcher for
the GIL; it answers 256x256 JPEGs after a fixed latency. Each measurement ingests distinct URLs
(a ``url_list`` source) into a fresh local storage: download, decode, sha256, atomic store
(fsync on), and the Parquet manifest, exactly what the ``raw_images`` asset does.

``python benchmarks/bench_fetch.py vs-img2dataset``: the project's ingest side by side with
img2dataset (installed on first use in ``benchmarks/out/img2dataset-venv``, never a project
dependency) on the same URL list of distinct JPEGs re-encoded from the real photos of
``../shared/fixtures``, behind the same latency; both run as subprocesses in alternating rounds, so
the whole command and the CPU time of each process tree are measured alike.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from pipelines.fetch import Fetcher, FetchSettings
from pipelines.httpclient import HttpSettings
from pipelines.ingest import ingest_partition
from pipelines.sources.local import UrlListSource
from pipelines.storage import LocalStorage

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
PHOTO_DIRS = ("dogs-photos", "null-photos")
LONG_SIDES = (640, 560, 480, 400, 320)  # each photo at five sizes: distinct bytes, common web image sizes
OUT = Path(__file__).resolve().parent / "out"
I2D_VENV = OUT / "img2dataset-venv"
I2D_VERSION = "1.47.0"


def _serve(latency: float, ports: mp.Queue, stop: mp.Event) -> None:
    from tests.fakeweb import FakeWeb

    with FakeWeb(latency=latency, image_size=256) as fw:
        ports.put(fw.port)
        stop.wait()


def _settings(concurrency: int) -> FetchSettings:
    """Defaults but loopback allowed, per-host limits lifted (one loopback host stands in for many), no robots.txt."""
    return FetchSettings(
        http=HttpSettings(pool_size=max(concurrency, 4), allowed_networks=("127.0.0.0/8",)),
        per_host_concurrency=concurrency,
        per_host_rate=0,
        respect_robots=False,
    )


def _ingest(urls: Path, root: Path, concurrency: int, processes: int = 1) -> tuple[int, float]:
    """Ok count and seconds of one ``ingest_partition`` over the URL list into a fresh local storage."""
    storage = LocalStorage(root)
    fetcher = Fetcher(storage, _settings(concurrency))
    try:
        t0 = time.perf_counter()
        report = ingest_partition(
            storage,
            fetcher,
            "bench",
            date(2026, 11, 24),
            [(UrlListSource(str(urls)), len(urls.read_text().split()))],
            concurrency=concurrency,
            processes=processes,
            log=lambda _: None,
        )
        elapsed = time.perf_counter() - t0
    finally:
        fetcher.close()
    return report.counts.get("ok", 0), elapsed


def measure(base_url: str, concurrency: int, count: int, tag: str) -> tuple[float, int]:
    """Images/s and ok count for ``count`` distinct URLs fetched at ``concurrency``."""
    with tempfile.TemporaryDirectory() as tmp:
        urls = Path(tmp) / "urls.txt"
        urls.write_text("\n".join(f"{base_url}/img/bench/{tag}/{i}.jpg" for i in range(count)))
        ok, elapsed = _ingest(urls, Path(tmp) / "data", concurrency)
    return ok / elapsed, ok


def by_concurrency(args: argparse.Namespace) -> None:
    """The table by concurrency, then the CPU-bound limit (no latency) and the share of it reached."""
    ctx = mp.get_context("spawn")
    results: dict[str, float] = {}
    for latency in (args.latency, 0.0):
        ports, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=_serve, args=(latency, ports, stop), daemon=True)
        server.start()
        base = f"http://127.0.0.1:{ports.get(timeout=30)}"
        measure(base, 8, 64, f"warmup-{latency}")  # the server caches encoded images per name; warm the pool
        levels = args.concurrency if latency else [max(args.concurrency)]
        for c in levels:
            expected = min(c / latency, 800.0) if latency else 800.0
            count = max(50, int(expected * args.seconds))
            rate, ok = measure(base, c, count, f"{latency}-{c}")
            results[f"{latency}:{c}"] = rate
            print(
                f"latency {latency * 1000:4.0f} ms  concurrency {c:3d}  {count:5d} images  {rate:7.1f} images/s"
                f"  ({ok} ok)",
                flush=True,
            )
        stop.set()
        server.join(timeout=10)

    lat, top = args.latency, max(args.concurrency)
    cpu_limit = results[f"0.0:{top}"]
    ideal = min(top / lat, cpu_limit)
    got = results[f"{lat}:{top}"]
    print(f"\nCPU-bound limit (no latency, concurrency {top}): {cpu_limit:.1f} images/s")
    print(
        f"concurrency {top} at {lat * 1000:.0f} ms: {got:.1f} images/s = {got / ideal:.0%} of "
        f"min({top}/{lat:g} s, CPU limit) = {ideal:.1f}  (target >= 70%)"
    )
    print(f"speed-up over one connection: {got / results[f'{lat}:1']:.1f}x")


# -- side by side with img2dataset -----------------------------------------------------------------


def make_jpegs(count: int) -> list[bytes]:
    """``count`` distinct JPEGs (quality 85) re-encoded from the fixtures' real photos, each at several sizes."""
    photos = sorted(p for d in PHOTO_DIRS for p in (FIXTURES / d).glob("*.jpg"))
    if not photos:
        sys.exit(f"no photos under {FIXTURES}: the side-by-side run needs ../shared/fixtures")
    out: list[bytes] = []
    for i in range(count):
        photo = photos[i // len(LONG_SIDES) % len(photos)]
        side = LONG_SIDES[i % len(LONG_SIDES)] + i // (len(LONG_SIDES) * len(photos))  # distinct past the set
        with Image.open(photo) as img:
            img.draft("RGB", (side, side))
            rgb = img.convert("RGB")
        scale = side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        buf = io.BytesIO()
        rgb.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


class _Latent(asyncio.Protocol):
    """Minimal HTTP/1.1, keep-alive or ``Connection: close``: each answer leaves ``latency`` s after its request.

    asyncio rather than tests/fakeweb.py's thread per connection: on two cores the server's CPU is
    taken from the clients, and this one costs several times less per request.
    """

    def __init__(self, files: dict[bytes, bytes], latency: float) -> None:
        self.files, self.latency = files, latency
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        loop = asyncio.get_running_loop()
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            line, _, headers = head.partition(b"\r\n")
            parts = line.split()
            body = self.files.get(parts[1]) if len(parts) == 3 else None
            status = b"200 OK" if body is not None else b"404 Not Found"
            ctype = b"image/jpeg" if body is not None else b"text/plain"
            body = body if body is not None else b"not found\n"
            close = b"connection: close" in headers.lower()
            header = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
                status,
                ctype,
                len(body),
                b"Connection: close\r\n" if close else b"",
            )
            loop.call_later(self.latency, self._answer, header, body, close)

    def _answer(self, header: bytes, body: bytes, close: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(header)
        t.write(body)
        if close:
            t.close()


def _serve_files(count: int, latency: float, ready: mp.Queue, stop: mp.Event) -> None:
    """Serve ``make_jpegs(count)`` at ``/img/00000.jpg`` ... until ``stop``; put (port, total bytes) on ``ready``."""
    files = {f"/img/{i:05d}.jpg".encode(): data for i, data in enumerate(make_jpegs(count))}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Latent(files, latency), "127.0.0.1", 0, backlog=1024)
        ready.put((server.sockets[0].getsockname()[1], sum(map(len, files.values()))))
        while not stop.is_set():
            await asyncio.sleep(0.2)
        server.close()

    asyncio.run(run())


def _proc_cpu(pid: int) -> float:
    """User + system seconds of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds all processes of the machine have used so far (Linux /proc/stat: all but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One command's figures."""

    side: str
    ok: int = 0
    phase_s: float = 0.0  # the download phase, as the command itself reports it
    wall_s: float = 0.0  # the whole command, start-up included
    cpu_s: float = 0.0  # user + system of the command's whole process tree
    server_cpu_s: float = 0.0
    others_cpu_s: float = 0.0  # what everything else on the machine used meanwhile


def _timed(run: Run, cmd: list[str], log: Path, server_pid: int, env: dict[str, str] | None = None) -> None:
    """Run ``cmd``, filling in ``run``'s wall time and CPU seconds: of the command's process tree (its
    children are waited for, so RUSAGE_CHILDREN has them), of the server, and of everything else."""
    before, server0, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), _proc_cpu(server_pid), _machine_busy()
    t0 = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    run.wall_s = time.perf_counter() - t0
    after, busy = resource.getrusage(resource.RUSAGE_CHILDREN), _machine_busy() - busy0
    if done.returncode:
        sys.exit(f"{cmd[0]} failed ({done.returncode}); see {log}")
    run.cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    run.server_cpu_s = _proc_cpu(server_pid) - server0
    run.others_cpu_s = max(0.0, busy - run.cpu_s - run.server_cpu_s)


def run_ours(urls: Path, work: Path, concurrency: int, processes: int, server_pid: int) -> Run:
    log, run = work.with_suffix(".log"), Run("ours")
    cmd = [sys.executable, __file__, "ingest", str(urls), str(work), "--concurrency", str(concurrency)]
    cmd += ["--processes", str(processes)]
    _timed(run, cmd, log, server_pid)
    result = json.loads(log.read_text().splitlines()[-1])
    run.ok, run.phase_s = result["ok"], result["seconds"]
    return run


def _img2dataset() -> Path:
    """The img2dataset command, installed into its own venv on first use."""
    exe = I2D_VENV / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset=={I2D_VERSION} into {I2D_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(I2D_VENV)], check=True)
        pip = [str(I2D_VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"img2dataset=={I2D_VERSION}"]
        subprocess.run(pip, check=True)
    return exe


def run_img2dataset(urls: Path, work: Path, args: argparse.Namespace, server_pid: int) -> Run:
    count = len(urls.read_text().split())
    cmd = [
        str(_img2dataset()),
        f"--url_list={urls}",
        "--input_format=txt",
        f"--output_folder={work}",
        "--output_format=files",
        f"--processes_count={args.processes}",
        f"--thread_count={args.threads}",
        f"--number_sample_per_shard={-(-count // args.processes)}",  # one shard per process
        "--resize_mode=no",
        "--skip_reencode=True",  # store the downloaded bytes, as the project does
        "--enable_wandb=False",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}  # no update check over the (absent) internet
    run = Run("img2dataset")
    _timed(run, cmd, work.with_suffix(".log"), server_pid, env)
    stats = [json.loads(p.read_text()) for p in work.glob("*_stats.json")]
    run.ok = sum(s["successes"] for s in stats)
    run.phase_s = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return run


def versus_img2dataset(args: argparse.Namespace) -> None:
    _img2dataset()
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve_files, args=(args.count, args.latency, ready, stop), daemon=True)
    server.start()
    while True:  # making the images takes a while; a server that died must not leave us waiting
        try:
            port, total_bytes = ready.get(timeout=1)
            break
        except queue.Empty:
            if not server.is_alive():
                sys.exit("the image server failed; see above")
    assert server.pid is not None
    print(
        f"{args.count} distinct JPEGs ({total_bytes / args.count / 1024:.1f} KiB mean) behind "
        f"{args.latency * 1000:.0f} ms; ours: concurrency {args.concurrency}; img2dataset: "
        f"{args.processes} processes x {args.threads} threads; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        lists = {}
        for name, n in (("warmup", min(200, args.count)), ("all", args.count)):
            lists[name] = Path(tmp) / f"{name}.txt"
            lists[name].write_text("".join(f"http://127.0.0.1:{port}/img/{i:05d}.jpg\n" for i in range(n)))
        sides = {
            "ours": lambda urls, work: run_ours(urls, work, args.concurrency, args.our_processes, server.pid),
            "img2dataset": lambda urls, work: run_img2dataset(urls, work, args, server.pid),
        }
        for name, side in sides.items():  # warm the page cache for both interpreters' imports
            side(lists["warmup"], Path(tmp) / f"warmup-{name}")
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                work = Path(tmp) / f"{r}-{name}"
                run = sides[name](lists["all"], work)
                shutil.rmtree(work, ignore_errors=True)
                runs.append(run)
                print(
                    f"round {r + 1} {name:12s} {run.ok:5d} ok  download {run.ok / run.phase_s:6.1f} images/s"
                    f" ({run.phase_s:5.2f} s)  whole command {run.ok / run.wall_s:6.1f} images/s ({run.wall_s:5.2f} s)"
                    f"  CPU {run.cpu_s / run.ok * 1000:5.2f} ms/image  server CPU {run.server_cpu_s:4.2f} s"
                    f"  others {run.others_cpu_s / run.wall_s:4.2f} cores",
                    flush=True,
                )
                time.sleep(1)
    stop.set()
    server.join(timeout=10)

    figures = {
        "download images/s": lambda r: r.ok / r.phase_s,
        "whole command images/s": lambda r: r.ok / r.wall_s,
        "CPU ms/image": lambda r: r.cpu_s / r.ok * 1000,
    }
    others = statistics.mean(r.others_cpu_s / r.wall_s for r in runs)
    print(f"\nmedians of {args.rounds} rounds (other processes used {others:.2f} cores on average):")
    print("  (a round's ratio compares the two runs of that round, which ran back to back)")
    for label, fn in figures.items():
        ours = [fn(r) for r in runs if r.side == "ours"]
        theirs = [fn(r) for r in runs if r.side == "img2dataset"]
        paired = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
        print(
            f"  {label:24s} ours {statistics.median(ours):7.2f}  img2dataset {statistics.median(theirs):7.2f}"
            f"  ours/img2dataset: of the medians {statistics.median(ours) / statistics.median(theirs):.2f}x,"
            f" median of the rounds' ratios {paired:.2f}x"
        )


def ingest_command(args: argparse.Namespace) -> None:
    """The project's side of the comparison, in a process of its own: prints ``{"ok": n, "seconds": s}``."""
    ok, seconds = _ingest(Path(args.urls), Path(args.root), args.concurrency, args.processes)
    print(json.dumps({"ok": ok, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=6.0, help="rough length of each measurement")
    parser.set_defaults(run=by_concurrency)
    sub = parser.add_subparsers()
    vs = sub.add_parser("vs-img2dataset", help="side by side with img2dataset on the same URL list")
    vs.add_argument("--count", type=int, default=2500, help="distinct images in the URL list")
    vs.add_argument("--latency", type=float, default=0.05)
    vs.add_argument("--rounds", type=int, default=3)
    vs.add_argument("--concurrency", type=int, default=64, help="the project's download threads")
    vs.add_argument("--our-processes", type=int, default=2, help="the project's fetch processes")
    vs.add_argument("--processes", type=int, default=2, help="img2dataset --processes_count")
    vs.add_argument("--threads", type=int, default=32, help="img2dataset --thread_count")
    vs.set_defaults(run=versus_img2dataset)
    ing = sub.add_parser("ingest", help="one ingest of a URL list (what vs-img2dataset runs as a subprocess)")
    ing.add_argument("urls")
    ing.add_argument("root", help="a new local storage folder")
    ing.add_argument("--concurrency", type=int, default=64)
    ing.add_argument("--processes", type=int, default=2)
    ing.set_defaults(run=ingest_command)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
