"""Checkpoints a killed run can resume from exactly: atomic files, the last K kept, RNG states included.

A checkpoint is one ``torch.save`` file, ``step-00001000.pt``, written to a temp file in the same
directory, fsynced and renamed, so a kill at any moment leaves either the previous checkpoint or the
new one, never half of one. Loading uses ``weights_only=True`` (no pickled code runs), so everything
saved is tensors, numbers, strings and containers of them; the numpy RNG state is stored as a tensor
for that reason. A checkpoint that does not load (a disk error, a file copied half-way by hand) is
skipped with a warning in favour of the one before it.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.storage import atomic_file

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], *, keep: int = 3) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep only the newest ``keep``."""
    path = checkpoint_path(directory, step)
    with atomic_file(path) as f:
        torch.save({"step": step, **state}, f)
    if keep > 0:
        for _, old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, or None; broken ones are reported and passed over."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path, map_location)
        except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... on damaged files
            log.warning("checkpoint %s (step %d) does not load, trying the one before: %s", path, step, e)
    return None


def file_sha256(path: Path) -> str:
    """The checkpoint's identity: downstream assets use it as the model's data version."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every random number generator a training step may draw from (python, numpy, torch, CUDA)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples; a round trip through torch.save may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value
