"""Where things live by default: the project directory, its data root and its config files.

The defaults make a fresh clone work with no environment at all; every one can be overridden by an
environment variable so a deployment changes nothing in code.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence
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


#: ``dagster`` subcommands that execute runs on the instance the CLI opened before it imported the code.
_RUNNING_COMMANDS = {("asset", "materialize"), ("job", "execute")}


def warn_if_temporary_instance(argv: Sequence[str] | None = None) -> None:
    """Warn, once per command, when ``dagster asset materialize`` (or ``job execute``) runs without ``$DAGSTER_HOME``.

    Dagster's CLI opens its instance before it imports the definitions, so setting DAGSTER_HOME here would
    come too late; without it the run goes to a temporary instance deleted when the command exits, which
    neither ``gan-pipelines dev`` nor ``gan-pipelines status`` ever sees, and the CLI does not say so. The
    step worker processes the command starts stay quiet.
    """
    argv = sys.argv if argv is None else argv
    prog = Path(argv[0]) if argv else Path()
    is_dagster = prog.name == "dagster" or (prog.name == "__main__.py" and prog.parent.name == "dagster")
    if "DAGSTER_HOME" in os.environ or not is_dagster or tuple(argv[1:3]) not in _RUNNING_COMMANDS:
        return
    if multiprocessing.parent_process() is not None:  # a step worker: it inherits the command's argv
        return
    warnings.warn(
        f"DAGSTER_HOME is not set: `dagster {' '.join(argv[1:3])}` records this run in a temporary instance that "
        "is deleted when it exits, so neither `gan-pipelines dev` nor `gan-pipelines status` will show it. Use "
        f"the project's instance (the one `make run` fills): export DAGSTER_HOME={project_dir() / '.dagster_home'}",
        stacklevel=2,
    )


# First day of the daily partitions; backfills reach back to here.
PARTITIONS_START = os.environ.get("GAN_PARTITIONS_START", "2026-11-01")
