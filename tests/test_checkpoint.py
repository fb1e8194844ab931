"""Checkpoints: atomic under SIGKILL, the last K kept, damaged files passed over, RNG states exact."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ganmodels.checkpoint import (
    file_sha256,
    latest_checkpoint,
    list_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

REPO = Path(__file__).resolve().parents[1]


def test_save_keeps_last_k_and_latest_loads(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"w": torch.full((3,), float(step))}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    path, state = latest_checkpoint(tmp_path)
    assert path.name == "step-00000040.pt" and state["step"] == 40 and torch.equal(state["w"], torch.full((3,), 40.0))
    assert not list(tmp_path.glob(".*.tmp"))


def test_damaged_latest_falls_back_to_the_one_before(tmp_path, caplog):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    newest = save_checkpoint(tmp_path, 2, {"w": torch.zeros(2)})
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])  # copied half-way by hand
    _, state = latest_checkpoint(tmp_path)
    assert state["step"] == 1 and "does not load" in caplog.text
    assert latest_checkpoint(tmp_path / "none") is None


def test_sigkill_during_save_leaves_the_previous_checkpoint(tmp_path):
    """Killed inside torch.save: the new step never appears, the old one still loads."""
    save_checkpoint(tmp_path, 5, {"w": torch.ones(4)})
    code = (
        "import os, signal, torch\n"
        "from pathlib import Path\n"
        "import ganmodels.checkpoint as c\n"
        "real = torch.save\n"
        "def dying(obj, f):\n"
        "    f.write(b'partial bytes')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.torch.save = dying\n"
        f"c.save_checkpoint(Path({str(tmp_path)!r}), 6, {{'w': torch.zeros(4)}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False)
    assert proc.returncode == -9
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    _, state = latest_checkpoint(tmp_path)
    assert state["step"] == 5


def test_rng_state_round_trip_through_a_checkpoint_is_exact(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), np.random.randn(), torch.rand(1)
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    expected = (random.random(), np.random.rand(5).tolist(), np.random.randn(), torch.rand(5).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(latest_checkpoint(tmp_path)[1]["rng"])
    assert (random.random(), np.random.rand(5).tolist(), np.random.randn(), torch.rand(5).tolist()) == expected


def test_file_sha256_names_the_content(tmp_path):
    a = save_checkpoint(tmp_path / "a", 1, {"w": torch.ones(2)})
    b = save_checkpoint(tmp_path / "b", 1, {"w": torch.ones(2)})
    c = save_checkpoint(tmp_path / "c", 1, {"w": torch.zeros(2)})
    assert file_sha256(a) == file_sha256(b) != file_sha256(c)
