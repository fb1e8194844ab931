"""Where things live by default: the project directory, its data root and its config files.

The defaults make a fresh clone work with no environment at all; every one can be overridden by an
environment variable so a deployment changes nothing in code.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The repository root when running from a checkout (editable install), else the working directory."""
    if "GAN_PROJECT_DIR" in os.environ:
        return Path(os.environ["GAN_PROJECT_DIR"]).resolve()
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd().resolve()


def default_data_root() -> str:
    return os.environ.get("GAN_DATA_ROOT") or (project_dir() / "data").as_uri()


def default_sources_file() -> str:
    return os.environ.get("GAN_SOURCES_FILE") or str(project_dir() / "config" / "sources.yaml")


#: The local instance: Dagster's embedded SQLite storage, plus the limits that keep backfills polite.
LOCAL_DAGSTER_YAML = """\
# Dagster's embedded defaults (SQLite storage in this folder; docker/ has the Postgres setup), plus:
concurrency:
  pools:
    # gan_generator runs in the `gpu` pool: one training at a time. With N GPUs:
    #   dagster instance concurrency set gpu N
    default_limit: 1
  runs:
    tag_concurrency_limits:
      # One raw_images run per class at a time, so a backfill of many days never hits a class's source
      # hosts with parallel runs (within a run the fetch resource limits each host).
      - key: dagster/partition/class
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` (default: ``.dagster_home/`` in the project), created with a ``dagster.yaml``.

    A missing dagster.yaml is written as :data:`LOCAL_DAGSTER_YAML`; an existing one is the user's and is
    left alone.
    """
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(project_dir() / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_DAGSTER_YAML)
    return home


# First day of the daily partitions; backfills reach back to here.
PARTITIONS_START = os.environ.get("GAN_PARTITIONS_START", "2026-11-01")
