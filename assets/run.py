"""``gan-pipelines run``: materialise every asset, in dependency order, for today, on a Dagster instance.

This is the README's one command for the whole pipeline. Runs are recorded in the instance at
``$DAGSTER_HOME`` (a project-local SQLite instance by default), so ``gan-pipelines dev`` (the Dagster
UI on the same instance) shows them after.
"""

import argparse
import os
import shutil
import sys
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

import dagster as dg

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
    after a failure are skipped.
    """
    graph = defs.resolve_asset_graph()
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]  # type: ignore[union-attr]
    by_key = {k: a for a in assets for k in a.keys}
    resources = defs.resources or {}
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
            for pk in partition_keys(by_key[key], day, only):
                label = f"{name}[{pk}]" if pk else name
                print(f"==> materialising {label}", flush=True)
                result = dg.materialize(
                    assets,
                    selection=[key],
                    partition_key=pk,
                    run_config={"ops": {name: op_config}} if (op_config := (run_config or {}).get(name)) else None,
                    instance=instance,
                    resources=resources,
                    raise_on_error=False,
                    tags={"gan-pipelines/launcher": "run_all"},
                )
                status = "ok" if result.success else "FAILED"
                print(f"<== {label}: {status} (run {result.run_id})", flush=True)
                if not result.success:
                    ok = False
                    for ev in result.all_events:
                        if ev.is_step_failure and ev.step_failure_data:
                            print(f"    {ev.step_failure_data.error.message.strip()}", file=sys.stderr)
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
        help="generated images per checkpoint for FID/KID (default: gan_evaluation's own, 1000)",
    )
    run.add_argument("--experiments", nargs="+", help="train and evaluate only these experiments (default: every one)")
    dev = sub.add_parser("dev", help="the Dagster UI and daemon (dagster dev) on the same instance")
    dev.add_argument("dagster_args", nargs=argparse.REMAINDER, help="passed on to dagster dev, e.g. -p 3001")
    args = parser.parse_args(argv)

    ensure_dagster_home()
    if args.cmd == "dev":
        workspace = str(project_dir() / "workspace.yaml")
        dagster = shutil.which("dagster", path=os.path.dirname(sys.executable)) or "dagster"
        os.execv(dagster, [dagster, "dev", "-w", workspace, *args.dagster_args])

    from assets.definitions import defs

    with dg.DagsterInstance.get() as instance:
        overrides: dict[str, dict] = {}
        if args.train_steps is not None:
            overrides["gan_generator"] = {"config": {"steps": args.train_steps}}
        if args.eval_samples is not None:
            overrides["gan_evaluation"] = {"config": {"num_samples": args.eval_samples}}
        only = {"": set(args.experiments)} if args.experiments else None
        ok = run_all(defs, instance, args.date, set(args.select) if args.select else None, overrides or None, only)
    print("pipeline finished" if ok else "pipeline FAILED: see the messages above", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
