"""``gan-pipelines run``: materialise every asset, in dependency order, for today, on a Dagster instance.

This is the README's one command for the whole pipeline. Runs are recorded in the instance at
``$DAGSTER_HOME`` (a project-local SQLite instance by default), so ``gan-pipelines dev`` (the Dagster
UI on the same instance) shows them after, and ``gan-pipelines status`` sums them up.

The terminal gets one line per partition started and finished, the assets' own log lines (``context.log``,
the trainer's progress through Pipes) and, on failure, the user's error on one line; Dagster's event
stream with its tracebacks goes to ``$DAGSTER_HOME/run_logs/<run id>.log`` (and, as always, to the instance).
"""

import argparse
import contextlib
import logging
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster._core.definitions.materialize import EPHEMERAL_JOB_NAME
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR

from assets.errors import cause_line, run_error
from assets.settings import ensure_dagster_home, project_dir


def partition_keys(
    asset: dg.AssetsDefinition, day: str, only: Mapping[str, Collection[str]] | None = None
) -> list[str | None]:
    """The partitions one run of the pipeline fills: today's for daily dimensions, all static keys.

    ``only`` narrows static keys: ``{"class": {"satellite"}}`` for a dimension of that name, and
    ``{"": {"satellite"}}`` for a single static partitions definition (the experiments).
    """
    only = only or {}

    def static(name: str, pdef: dg.PartitionsDefinition) -> list[str]:
        keys = list(pdef.get_partition_keys())
        return [k for k in keys if k in only[name]] if name in only else keys

    pdef = asset.partitions_def
    if pdef is None:
        return [None]
    if isinstance(pdef, dg.MultiPartitionsDefinition):
        keys: list[dict[str, str]] = [{}]
        for dim in pdef.partitions_defs:
            is_time = isinstance(dim.partitions_def, dg.TimeWindowPartitionsDefinition)
            values = [day] if is_time else static(dim.name, dim.partitions_def)
            keys = [{**k, dim.name: v} for k in keys for v in values]
        return [dg.MultiPartitionKey(k) for k in keys]
    if isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        return [day]
    return static("", pdef)


def _console_line(record: logging.LogRecord) -> str | None:
    """What the terminal shows of a Dagster log record: what the asset's code logged (``context.log``, the
    trainer through Pipes) and failed checks; None for Dagster's other events (step started, output handled...).
    """
    meta = getattr(record, LOG_RECORD_METADATA_ATTR, None)
    if meta is None:
        return None
    event = meta["dagster_event"]
    if event is None:
        if record.levelno < logging.INFO:
            return None
        return f"    {'' if record.levelno < logging.WARNING else record.levelname + ': '}{meta['orig_message']}"
    if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not event.asset_check_evaluation_data.passed:
        check = event.asset_check_evaluation_data
        return f"    {check.severity.value}: check {check.check_name} failed" + (
            f": {check.description}" if check.description else ""
        )
    return None


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _console_line(record) or ""


def _logger(name: str, level: int, handler: logging.Handler) -> logging.Logger:
    logger = logging.Logger(name, level)  # outside logging's hierarchy, like Dagster's own console logger
    logger.addHandler(handler)
    return logger


@contextlib.contextmanager
def _run_loggers(log_path: Path) -> Iterator[dict[str, dg.LoggerDefinition]]:
    """Dagster loggers for one run: the asset's log lines (:func:`_console_line`) on stderr, every event with its
    traceback in ``log_path``.

    They replace Dagster's default console logger, which prints each event and every traceback in full.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setFormatter(_ConsoleFormatter())
    to_console.addFilter(lambda record: _console_line(record) is not None)
    try:
        yield {
            "console": dg.LoggerDefinition(lambda _: _logger("gan_pipelines.console", logging.DEBUG, to_console)),
            "file": dg.LoggerDefinition(lambda _: _logger("gan_pipelines.file", logging.DEBUG, to_file)),
        }
    finally:
        to_file.close()


def run_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    day: str,
    select: set[str] | None = None,
    run_config: dict[str, dict] | None = None,
    only: Mapping[str, Collection[str]] | None = None,
) -> bool:
    """Materialise each asset (and its checks) partition by partition; returns True if all succeeded.

    Every partition of a level is tried (one class failing does not stop the others), but the levels
    after a failure are skipped. Each run's full log is ``<instance directory>/run_logs/<run id>.log`` (not
    ``logs/``: Dagster keeps its telemetry there).
    """
    graph = defs.resolve_asset_graph()
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]  # type: ignore[union-attr]
    by_key = {k: a for a in assets for k in a.keys}
    resources = defs.resources or {}
    log_dir = Path(instance.root_directory) / "run_logs"
    ok = True
    for level in graph.toposorted_asset_keys_by_level:
        if not ok:  # downstream of a failure would build on missing data
            for key in sorted(level):
                if key in by_key and not (select and key.to_user_string() not in select):
                    print(f"--- skipping {key.to_user_string()}: an upstream asset failed", flush=True)
            continue
        for key in sorted(level):
            if key not in by_key or (select and key.to_user_string() not in select):
                continue
            name = key.to_user_string()
            op_config = (run_config or {}).get(name)
            for pk in partition_keys(by_key[key], day, only):
                label = f"{name}[{pk}]" if pk else name
                print(f"==> materialising {label}", flush=True)
                run_id = str(uuid.uuid4())
                log_path = log_dir / f"{run_id}.log"
                with _run_loggers(log_path) as loggers, warnings.catch_warnings():
                    # Dagster's Pipes client calls a preview API of Dagster's own, and says so on every training
                    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
                    # what dg.materialize does, with these loggers instead of the default console one
                    job = dg.Definitions(
                        assets=assets,
                        jobs=[dg.define_asset_job(EPHEMERAL_JOB_NAME, selection=[key])],
                        resources=resources,
                        loggers=loggers,
                    ).resolve_job_def(EPHEMERAL_JOB_NAME)
                    result = job.execute_in_process(
                        # a logger runs only when the run config names it; unnamed, Dagster's default one would
                        run_config={"loggers": {logger: {} for logger in loggers}}
                        | ({"ops": {name: op_config}} if op_config else {}),
                        instance=instance,
                        partition_key=pk,
                        raise_on_error=False,
                        run_id=run_id,
                        tags={"gan-pipelines/launcher": "run_all"},
                    )
                print(f"<== {label}: {'ok' if result.success else 'FAILED'} (run {run_id})", flush=True)
                if not result.success:
                    ok = False
                    error = run_error(result.all_events, step_key=key.to_python_identifier())
                    cause = cause_line(error) if error else "the run failed"
                    print(f"    {label}: {cause} (traceback in {log_path})", file=sys.stderr, flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gan-pipelines", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="materialise every asset for one day (default: today, UTC)")
    run.add_argument(
        "--date", default=datetime.now(UTC).date().isoformat(), help="the day to fill (default: today, UTC)"
    )
    run.add_argument("--select", nargs="*", help="only these asset keys")
    run.add_argument(
        "--train-steps",
        type=int,
        help="train each experiment to this many steps instead of its own count (a later, larger value resumes)",
    )
    run.add_argument(
        "--eval-samples",
        type=int,
        help="generated images per checkpoint for FID/KID (default: what the last evaluation used, else 1000)",
    )
    run.add_argument("--experiments", nargs="+", help="train and evaluate only these experiments (default: every one)")
    sub.add_parser("status", help="per asset and partition: materialised, stale, failed (with the error) or missing")
    # listed for --help; its own parser (assets/demo.py) reads its arguments, before the others' setup
    sub.add_parser("demo", help="the whole pipeline offline on the shipped NASA tiles, in .demo/ (demo -h: options)")
    dev = sub.add_parser("dev", help="the Dagster UI and daemon (dagster dev) on the same instance")
    dev.add_argument("dagster_args", nargs=argparse.REMAINDER, help="passed on to dagster dev, e.g. -p 3001")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:  # before ensure_dagster_home: the demo has an instance of its own
        from assets.demo import main as demo_main

        return demo_main(argv[1:])
    args = parser.parse_args(argv)

    ensure_dagster_home()
    if args.cmd == "dev":
        workspace = str(project_dir() / "workspace.yaml")
        dagster = shutil.which("dagster", path=os.path.dirname(sys.executable)) or "dagster"
        os.execv(dagster, [dagster, "dev", "-w", workspace, *args.dagster_args])

    from assets.definitions import defs

    if args.cmd == "status":
        from assets.status import asset_status, format_status

        with dg.DagsterInstance.get() as instance:
            print(format_status(asset_status(defs, instance)), flush=True)
        return 0

    with dg.DagsterInstance.get() as instance:
        overrides: dict[str, dict] = {}
        if args.train_steps is not None:
            overrides["gan_generator"] = {"config": {"steps": args.train_steps}}
        if args.eval_samples is not None:
            overrides["gan_evaluation"] = {"config": {"num_samples": args.eval_samples}}
        only = {"": set(args.experiments)} if args.experiments else None
        ok = run_all(defs, instance, args.date, set(args.select) if args.select else None, overrides or None, only)
    print("pipeline finished" if ok else "pipeline FAILED: see the messages above, or gan-pipelines status", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
