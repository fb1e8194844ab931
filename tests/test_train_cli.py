"""``python -m ganmodels.train``: one process and ``torchrun`` (gloo, 2 CPU ranks) on a tiny shard dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ganmodels.checkpoint import file_sha256, list_checkpoints, load_checkpoint
from tests.tiny_dataset import tiny_experiment, write_dataset

REPO = Path(__file__).resolve().parents[1]

CONFIG = tiny_experiment(classes=None, steps=4, keep_checkpoints=5)  # every class of the dataset

# Under torchrun: the normal entry point, plus each rank dumping the weights it holds at the end, so the
# test can check that DDP kept the ranks in lockstep.
_DUMPING_ENTRY = """
import sys
import torch
import ganmodels.train as T

_run = T.Trainer.run

def run(self):
    result = _run(self)
    torch.save({{"G": self.G.state_dict(), "D": self.D.state_dict()}}, {dump!r} + f"/rank{{self.rank}}.pt")
    return result

T.Trainer.run = run
from ganmodels.cli import main

raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_dataset(root)
    return root


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("GAN_S3_ENDPOINT_URL", None)
    return env


def cli(*args: str | Path, launcher: tuple[str, ...] = ("-m", "ganmodels.train")) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, *(str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)


def torchrun(*args: str | Path, entry: tuple[str, ...] = ("-m", "ganmodels.train")) -> subprocess.CompletedProcess:
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *entry)
    return cli(*args, launcher=launcher)


def only_json_line(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def assert_run_dir(out: Path, result: dict) -> None:
    ckpt = Path(result["checkpoint"])
    assert ckpt.parent == out / "checkpoints" and ckpt.is_file()
    assert file_sha256(ckpt) == result["checkpoint_sha256"]
    assert load_checkpoint(ckpt)["step"] == result["step"]
    assert any((out / "frames").glob("step-*.png"))
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))


def test_single_process_trains_prints_json_and_resumes(dataset, config_file, tmp_path):
    out = tmp_path / "run"
    common = ("--config", config_file, "--data-root", f"file://{dataset}", "--out", out, "--workers", "0")
    proc = cli(*common)
    result = only_json_line(proc)
    assert result["step"] == 4 and result["resumed_from"] is None
    assert result["dataset_version"] == "v1" and result["device"] == "cpu" and result["world_size"] == 1
    assert result["images_per_s"] > 0 and isinstance(result["d_loss"], float) and result["warnings"] == []
    assert_run_dir(out, result)
    assert "step 4/4" in proc.stderr  # progress via logging on stderr

    again = only_json_line(cli(*common, "--steps", "6", "--dataset-version", "v1"))
    assert again["step"] == 6 and again["resumed_from"] == 4
    assert again["checkpoint_sha256"] != result["checkpoint_sha256"]
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [0, 2, 4, 6]


def test_no_dataset_at_the_root_exits_1(config_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli("--config", config_file, "--data-root", empty, "--out", tmp_path / "run", "--workers", "0")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "no dataset (datasets/latest.json) under" in proc.stderr and "Traceback" not in proc.stderr


def test_divergence_exits_2(dataset, tmp_path):
    config = tmp_path / "diverge.yaml"
    overrides = {"loss": "wgan-gp", "gp_weight": 0.0, "lr_d": 1e12, "lr_g": 1e12, "steps": 8, "frame_every": 0}
    config.write_text(yaml.safe_dump({**CONFIG, **overrides}))
    proc = cli("--config", config, "--data-root", dataset, "--out", tmp_path / "run", "--workers", "0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "training diverged at step" in proc.stderr and "last good checkpoint" in proc.stderr


def test_torchrun_two_ranks_gloo(dataset, config_file, tmp_path):
    """2 CPU ranks: one JSON line, files from rank 0 only, weights identical on both ranks; then a resume."""
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    script = tmp_path / "entry.py"
    script.write_text(_DUMPING_ENTRY.format(dump=str(dump)))
    common = ("--config", config_file, "--data-root", f"file://{dataset}", "--out", out, "--workers", "0")
    result = only_json_line(torchrun(*common, entry=(str(script),)))
    assert result["step"] == 4 and result["world_size"] == 2
    assert_run_dir(out, result)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 1 writes none
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [0, 2, 4]
    assert not list(out.rglob("*.tmp"))

    saved = load_checkpoint(Path(result["checkpoint"]))
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for net in ("G", "D"):
        params = [k for k in saved[net] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert params
        for k in params:
            assert torch.equal(ranks[0][net][k], ranks[1][net][k]), f"{net}.{k} differs between ranks"
            assert torch.equal(saved[net][k], ranks[1][net][k]), f"{net}.{k}: checkpoint != rank 1"
        initial = load_checkpoint(out / "checkpoints" / "step-00000000.pt")[net]
        assert any(not torch.equal(initial[k], saved[net][k]) for k in params)  # it did train

    again = only_json_line(torchrun(*common, "--steps", "6"))  # the plain entry point resumes on both ranks
    assert again["step"] == 6 and again["resumed_from"] == 4 and again["world_size"] == 2
    assert_run_dir(out, again)


def test_example_experiment_config_loads() -> None:
    """The README's example config is valid (every key known) and is the shipped `dogs` recipe at 64 px."""
    from ganmodels.train import TrainConfig

    root = Path(__file__).resolve().parents[1] / "config"
    cfg = TrainConfig.from_yaml(root / "experiment.example.yaml")
    dogs = TrainConfig.from_dict(yaml.safe_load((root / "experiments.yaml").read_text())["dogs"])
    assert cfg.classes == dogs.classes == ("dogs",) and cfg.negatives_class is None
    same = ("loss", "diffaugment", "ema_decay", "lr_g", "lr_d", "betas", "batch_size")
    assert all(getattr(cfg, k) == getattr(dogs, k) for k in same)
    assert cfg.net.spectral_norm and cfg.net.upsample == dogs.net.upsample and cfg.net.width == 2 * dogs.net.width
