"""``python -m ganmodels.train``: train a GAN from a YAML config on a stored dataset version.

Plain (one process)::

    python -m ganmodels.train --config experiment.yaml --data-root s3://bucket/gan --out runs/exp1

Distributed (one process per GPU, or per CPU slot with gloo)::

    torchrun --nproc_per_node=2 -m ganmodels.train --config experiment.yaml --data-root ... --out runs/exp1

Progress goes to stderr through ``logging``; the run resumes from ``--out`` when it holds checkpoints.
At the end rank 0 prints exactly one JSON line on stdout (the :class:`~ganmodels.train.TrainResult`
fields plus ``dataset_version``) for a caller such as Dagster Pipes to parse. Exit codes: 0 success,
2 training diverged, 1 any other error (message on stderr). No Dagster in here: this runs anywhere
PyTorch does.

Under Dagster Pipes (launched by a ``PipesSubprocessClient``; detected from the environment it sets, via
the dependency-free ``dagster_pipes`` package), rank 0 sends its log records (and its error message) to
Dagster instead of stderr -- Dagster shows them in its console and event log, and the subprocess client
also forwards stderr to the same terminal, so both would print every line twice -- and, on success,
reports the asset materialization: dataset version, config, steps, losses, images/s, device, checkpoint
path and sha256, warnings and the last sample grid, with the checkpoint sha256 as the data version.
Without Pipes nothing changes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipelines.storage import atomic_file

__all__ = ["FAILURE_FILE", "build_parser", "main", "result_json"]

log = logging.getLogger("ganmodels.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ganmodels.train",
        description="Train a GAN on a dataset version; prints one JSON result line on stdout.",
    )
    p.add_argument("--config", required=True, help="TrainConfig YAML file")
    p.add_argument("--data-root", required=True, help="storage root holding the datasets (file://... or s3://...)")
    p.add_argument(
        "--endpoint-url",
        default=os.environ.get("GAN_S3_ENDPOINT_URL"),
        help="S3-compatible endpoint (default: $GAN_S3_ENDPOINT_URL)",
    )
    p.add_argument("--dataset-version", default=None, help="dataset version (default: datasets/latest.json)")
    p.add_argument("--out", required=True, help="run directory (checkpoints/, frames/, tensorboard/); resumed")
    p.add_argument("--steps", type=int, default=None, help="override the config's steps (total, not additional)")
    p.add_argument("--workers", type=int, default=2, help="data loader worker processes per rank")
    return p


def _world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, 0, 1) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _setup_logging(rank: int, world_size: int) -> None:
    """INFO to stderr from rank 0; other ranks only warn, so the log reads like one run's."""
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # NaN/inf are not JSON


def result_json(result: Any, dataset_version: str, world_size: int = 1) -> str:
    """One JSON line from a TrainResult (without the per-step history, which the TensorBoard log holds)."""
    return json.dumps(
        {
            "step": result.step,
            "d_loss": _finite_or_none(result.d_loss),
            "g_loss": _finite_or_none(result.g_loss),
            "images_per_s": result.images_per_s,
            "checkpoint": str(result.checkpoint),
            "checkpoint_sha256": result.checkpoint_sha256,
            "device": result.device,
            "dataset_version": dataset_version,
            "resumed_from": result.resumed_from,
            "world_size": world_size,
            "warnings": list(result.warnings),
        }
    )


def _init_distributed(local_rank: int) -> None:
    """nccl on GPUs (one per local rank), gloo on CPU; rendezvous from torchrun's environment."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def _load_config(args: argparse.Namespace) -> Any:
    from ganmodels.train import TrainConfig

    config = TrainConfig.from_yaml(args.config)
    if args.steps is not None:
        config = dataclasses.replace(config, steps=args.steps)
    return config


def _train(args: argparse.Namespace, world_size: int) -> tuple[Any, str]:
    from ganmodels.train import Trainer, shard_batches
    from pipelines.dataset import load_index
    from pipelines.storage import StorageError, open_storage

    config = _load_config(args)
    try:
        version = load_index(open_storage(args.data_root, endpoint_url=args.endpoint_url), args.dataset_version).version
    except StorageError as e:
        what = f"dataset version {args.dataset_version!r}" if args.dataset_version else "dataset (datasets/latest.json)"
        raise RuntimeError(f"no {what} under {args.data_root}: {e}") from e
    log.info("dataset %s from %s; %d rank(s); run dir %s", version, args.data_root, world_size, args.out)
    data, names = shard_batches(
        args.data_root, version, config, num_workers=args.workers, endpoint_url=args.endpoint_url
    )
    return Trainer(config, data, args.out, class_names=names).run(), version


# ---- Dagster Pipes (optional) -------------------------------------------------------------------------

_MAX_INLINE_PNG = 1_000_000  # bytes; a bigger sample grid is downscaled before it goes into the metadata


def _is_pipes_process() -> bool:
    """Whether a Dagster Pipes orchestrator launched this process (its context is in the environment)."""
    try:
        from dagster_pipes import PipesEnvVarParamsLoader
    except ImportError:  # a training-only install without dagster-pipes
        return False
    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


class _PipesLogHandler(logging.Handler):
    """Forwards log records to Dagster through ``pipes.log`` (a logger outside the root hierarchy)."""

    def __init__(self, pipes: Any) -> None:
        super().__init__(level=logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pipes.log.log(record.levelno, "%s: %s", record.name, record.getMessage())
        except Exception:  # never let reporting break training
            self.handleError(record)


def _open_pipes() -> tuple[Any, list[logging.Handler]] | None:
    """Open the Pipes connection and send logging there instead of to stderr (see the module docstring);
    None outside Pipes. Returns the connection and the handlers it replaced."""
    if not _is_pipes_process():
        return None
    from dagster_pipes import open_dagster_pipes

    pipes = open_dagster_pipes()
    root = logging.getLogger()
    replaced = list(root.handlers)
    for handler in replaced:
        root.removeHandler(handler)
    root.addHandler(_PipesLogHandler(pipes))
    return pipes, replaced


def _close_pipes(opened: tuple[Any, list[logging.Handler]]) -> None:
    """Close the connection and give logging its handlers back."""
    pipes, replaced = opened
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _PipesLogHandler):
            root.removeHandler(handler)
    for handler in replaced:
        root.addHandler(handler)
    pipes.close()


def _sample_grid_md(out_dir: str) -> str | None:
    """The newest sample grid in ``out_dir/frames`` as an inline Markdown image, or None."""
    import base64
    import io
    from pathlib import Path

    frames = sorted(Path(out_dir, "frames").glob("step-*.png"))
    if not frames:
        return None
    png = frames[-1].read_bytes()
    if len(png) > _MAX_INLINE_PNG:
        from PIL import Image

        with Image.open(io.BytesIO(png)) as im:
            while len(png) > _MAX_INLINE_PNG and min(im.size) > 16:
                im = im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, format="PNG", optimize=True)
                png = buf.getvalue()
    return f"![samples {frames[-1].stem}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _typed(value: Any, kind: str) -> dict[str, Any]:
    """A Pipes metadata value of an explicit type; ``null`` when there is no value (e.g. a NaN loss)."""
    return {"raw_value": value, "type": kind if value is not None else "null"}


def _report_materialization(pipes: Any, args: argparse.Namespace, result: Any, version: str) -> None:
    """The asset materialization for Dagster; its data version is the checkpoint's sha256."""
    config = _load_config(args)
    losses = f"D loss {result.d_loss:.3f}, G loss {result.g_loss:.3f}" if math.isfinite(result.g_loss) else ""
    metadata: dict[str, Any] = {
        "summary": ", ".join(
            filter(None, [f"step {result.step} on dataset {version}", f"{result.images_per_s:.1f} images/s", losses])
        ),
        "dataset_version": version,
        "experiment_config": {"raw_value": config.to_dict(), "type": "json"},
        "steps": result.step,
        "resumed_from": _typed(result.resumed_from, "int"),
        "d_loss": _typed(_finite_or_none(result.d_loss), "float"),
        "g_loss": _typed(_finite_or_none(result.g_loss), "float"),
        "images_per_s": float(result.images_per_s),
        "device": result.device,
        "checkpoint": {"raw_value": str(result.checkpoint), "type": "path"},
        "checkpoint_sha256": result.checkpoint_sha256,
        "warnings": {"raw_value": list(result.warnings), "type": "json"},
    }
    grid = _sample_grid_md(args.out)
    if grid:
        metadata["samples"] = {"raw_value": grid, "type": "md"}
    pipes.report_asset_materialization(metadata=metadata, data_version=result.checkpoint_sha256)


#: The last failure of a run, one line, in its output directory: what a launcher shows as the cause (its own
#: error is only "the process exited with 1").
FAILURE_FILE = "last_failure.txt"


def _record_failure(out: str, rank: int, message: str) -> None:
    if rank == 0:
        with contextlib.suppress(OSError):
            os.makedirs(out, exist_ok=True)
            with atomic_file(Path(out) / FAILURE_FILE) as f:
                f.write(message.encode())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 1 error, 2 diverged)."""
    from ganmodels.train import TrainingDiverged

    args = build_parser().parse_args(argv)
    rank, local_rank, world_size = _world()
    _setup_logging(rank, world_size)
    pipes = _open_pipes() if rank == 0 else None  # one Pipes writer: rank 0 speaks for the run
    try:
        if world_size > 1:
            _init_distributed(local_rank)
        result, version = _train(args, world_size)
        if rank == 0:
            print(result_json(result, version, world_size), flush=True)
            if pipes is not None:
                _report_materialization(pipes[0], args, result, version)
        return 0
    except TrainingDiverged as e:
        log.error("%s", e)
        _record_failure(args.out, rank, f"{type(e).__name__}: {e}")
        return 2
    except Exception as e:
        log.debug("traceback", exc_info=True)
        if pipes is not None:  # shown by Dagster; on stderr too it would be printed twice
            pipes[0].log.error("error: %s: %s", type(e).__name__, e)
        else:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        _record_failure(args.out, rank, f"{type(e).__name__}: {e}")
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if pipes is not None:
            _close_pipes(pipes)


if __name__ == "__main__":
    raise SystemExit(main())
