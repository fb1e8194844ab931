"""``gan-pipelines run`` and ``status`` as a user meets them: a short terminal, the traceback in a log file;
and ``dagster asset materialize`` warning when it would use a temporary instance.

Dagster's default console logger printed every event of every run and each traceback in full, twice (step
and run failure): an offline ``make run`` was one useful line in ~430.
"""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.run import run_all
from assets.settings import LOCAL_DAGSTER_YAML, warn_if_temporary_instance

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-20"


@dg.asset(check_specs=[dg.AssetCheckSpec("few_things", asset="chatty")])
def chatty(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    context.log.info("chatty: counted 3 things")
    context.log.debug("chatty: a detail for the log file")
    return dg.MaterializeResult(
        check_results=[dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description="3 is a lot")]
    )


@dg.asset(deps=[chatty])
def broken(context: dg.AssetExecutionContext) -> None:
    context.log.info("broken: about to fail")
    try:
        raise OSError("disk on fire")
    except OSError as e:
        raise RuntimeError("the known error message") from e


def test_a_failed_run_prints_its_cause_and_logs_its_traceback(instance, capsys):
    assert run_all(dg.Definitions(assets=[chatty, broken]), instance, DAY) is False
    out, err = capsys.readouterr()
    assert re.fullmatch(
        r"==> materialising chatty\n<== chatty: ok \(run [-0-9a-f]{36}\)\n"
        r"==> materialising broken\n<== broken: FAILED \(run [-0-9a-f]{36}\)\n",
        out,
    ), out
    chatty_run, broken_run = re.findall(r"\(run ([-0-9a-f]{36})\)", out)
    assert instance.get_run_by_id(broken_run).status == dg.DagsterRunStatus.FAILURE  # recorded as ever

    # the assets' own lines, a failed check, and one line for the failure: the user's exception, not Dagster's wrapper
    lines = err.splitlines()
    assert lines[:3] == [
        "    chatty: counted 3 things",
        "    WARN: check few_things failed: 3 is a lot",
        "    broken: about to fail",
    ], err
    [failure] = lines[3:]
    match = re.fullmatch(r"    broken: RuntimeError: the known error message \(traceback in (.+)\)", failure)
    assert match, failure

    log_dir = Path(instance.root_directory) / "run_logs"
    assert Path(match[1]) == log_dir / f"{broken_run}.log"
    text = (log_dir / f"{broken_run}.log").read_text()
    assert "STEP_FAILURE" in text and 'raise RuntimeError("the known error message") from e' in text
    assert "OSError: disk on fire" in text  # the whole chain
    text = (log_dir / f"{chatty_run}.log").read_text()
    assert "chatty: a detail for the log file" in text and "STEP_SUCCESS" in text  # DEBUG and Dagster's events


def _env(tmp_path: Path) -> dict[str, str]:
    """An offline sources file, data and a Dagster instance in tmp_path (telemetry off: no first-run banner)."""
    spec = {
        "classes": {
            c: [{"name": "gone", "kind": "dog_ceo", "base_url": "http://nohost.invalid/api"}]
            for c in ("dogs", "null", "satellite")
        }
    }
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(LOCAL_DAGSTER_YAML + "telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "GAN_"))}
    env.update(
        DAGSTER_HOME=str(home),
        GAN_DATA_ROOT=(tmp_path / "data").as_uri(),
        GAN_SOURCES_FILE=str(tmp_path / "sources.yaml"),
    )
    return env


def test_offline_run_is_a_few_lines_and_status_shows_what_failed(tmp_path):
    cli = str(Path(sys.executable).parent / "gan-pipelines")
    env = _env(tmp_path)
    proc = subprocess.run(
        [cli, "run", "--date", DAY, "--select", "raw_images"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("]: FAILED (run ") == 3 and "pipeline FAILED" in proc.stdout
    # per class: the asset's "sources ..." line and the cause, naming the log file with the traceback
    lines = proc.stderr.splitlines()
    assert len(lines) == 6, proc.stderr
    causes = [line for line in lines if "cannot resolve the host of http://nohost.invalid" in line]
    assert len(causes) == 3 and all("Is this machine offline?" in c for c in causes), proc.stderr
    log = Path(re.search(r"\(traceback in (.+)\)$", causes[0])[1])
    assert log.parent == tmp_path / "home" / "run_logs"
    assert "Stack Trace" in log.read_text() and "socket.gaierror" in log.read_text()

    proc = subprocess.run([cli, "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert rows[0] == ["ASSET", "PARTITION", "STATE", "MATERIALISED", "DATA", "VERSION", "DETAIL"]
    failed = [r for r in rows if r[0] == "raw_images" and r[2] == "FAILED"]
    assert [r[1] for r in failed] == [f"{c}|{DAY}" for c in ("dogs", "null", "satellite")], proc.stdout
    assert all("cannot resolve the host" in " ".join(r) for r in failed)
    assert ["curated_images", "-", "missing"] in rows and ["webdataset_shards", "-", "missing"] in rows


def test_dagster_materialize_without_dagster_home_warns_once(tmp_path):
    """The CLI opens its (temporary) instance before importing the definitions: they can only warn."""
    env = _env(tmp_path)
    del env["DAGSTER_HOME"]
    dagster = str(Path(sys.executable).parent / "dagster")
    cmd = [dagster, "asset", "materialize", "-m", "assets.definitions", "--select", "raw_images"]
    proc = subprocess.run(
        [*cmd, "--partition", f"dogs|{DAY}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert "cannot resolve the host" in proc.stderr  # it did run (offline), in the temporary instance
    assert proc.stderr.count("DAGSTER_HOME is not set") == 1, proc.stderr  # not again in the step's worker
    assert f"export DAGSTER_HOME={REPO / '.dagster_home'}" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["/venv/bin/pytest", "tests"],
        ["/venv/bin/dagster", "definitions", "validate", "-m", "assets.definitions"],
        ["/venv/lib/python3.11/site-packages/dagster/__main__.py", "api", "grpc"],  # a code server
    ],
)
def test_no_warning_elsewhere(monkeypatch, argv):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_temporary_instance(argv)


def test_no_warning_with_dagster_home(monkeypatch):
    argv = ["/venv/bin/dagster", "asset", "materialize", "-m", "assets.definitions"]
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.warns(UserWarning, match="DAGSTER_HOME is not set"):
        warn_if_temporary_instance(argv)
    monkeypatch.setenv("DAGSTER_HOME", "/somewhere")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_temporary_instance(argv)
