"""``assets.status``: materialised, stale, failed, running and missing, read from a real (SQLite) instance."""

from datetime import datetime

import dagster as dg

from assets.status import FAILED, MATERIALISED, MISSING, RUNNING, STALE, StatusRow, asset_status, format_status

DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2025-01-01")  # 366 days


class UpstreamConfig(dg.Config):
    version: str = "1"


@dg.asset(code_version="1")
def upstream(config: UpstreamConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion(f"upstream-v{config.version}"))


@dg.asset(deps=[upstream], code_version="1")
def downstream() -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion("0123456789abcdef"))


class BrokenConfig(dg.Config):
    fail: bool = True


@dg.asset
def broken(config: BrokenConfig) -> None:
    if config.fail:
        try:
            raise OSError("disk on fire")
        except OSError as e:
            raise RuntimeError("the known error message") from e


@dg.asset
def never() -> None:
    """Not materialised by the test."""


@dg.asset(partitions_def=DAYS)
def daily() -> None:
    """One day of it is materialised: the other 365 are one line."""


DEFS = dg.Definitions(assets=[upstream, downstream, broken, never, daily])


def _materialise(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], instance=instance, raise_on_error=False, **kwargs)


def _rows_of(rows: list[StatusRow], asset: str) -> list[StatusRow]:
    return [r for r in rows if r.asset == asset]


def test_status_of_each_state(instance):
    assert _materialise(instance, upstream).success
    assert _materialise(instance, downstream).success
    # a new upstream data version makes downstream stale
    assert _materialise(instance, upstream, run_config={"ops": {"upstream": {"config": {"version": "2"}}}}).success
    # materialised once, then a failed run: FAILED, with the last materialisation still shown
    assert _materialise(instance, broken, run_config={"ops": {"broken": {"config": {"fail": False}}}}).success
    failed_run = _materialise(instance, broken).run_id
    assert _materialise(instance, daily, partition_key="2024-03-01").success

    rows = asset_status(DEFS, instance)

    [up] = _rows_of(rows, "upstream")
    assert (up.partition, up.state, up.data_version) == (None, MATERIALISED, "upstream-v2")
    assert isinstance(up.materialised_at, datetime)

    [down] = _rows_of(rows, "downstream")
    assert down.state == STALE and down.data_version == "0123456789ab"  # short
    assert down.detail == "upstream has a new data version"

    [bad] = _rows_of(rows, "broken")
    assert bad.state == FAILED and bad.materialised_at is not None
    assert bad.detail == f"RuntimeError: the known error message (run {failed_run[:8]})"

    assert _rows_of(rows, "never") == [StatusRow("never", None, MISSING)]
    day, rest = _rows_of(rows, "daily")
    assert (day.partition, day.state) == ("2024-03-01", MATERIALISED)
    assert (rest.partition, rest.state, rest.count) == (None, MISSING, 365)

    table = format_status(rows).splitlines()
    assert len(table) == 1 + len(rows)
    assert table[0].split() == ["ASSET", "PARTITION", "STATE", "MATERIALISED", "DATA", "VERSION", "DETAIL"]
    assert [line.split()[0] for line in table[1:]] == [r.asset for r in rows]  # upstream assets first
    assert rows[-1] == down
    assert ["daily", "(365", "partitions)", "missing"] in [line.split() for line in table]
    assert table[-1].split()[:3] == ["downstream", "-", "stale"]
    assert table[-1].endswith("0123456789ab  upstream has a new data version")


def test_a_running_partition(instance):
    """Status read from inside a run: its own partition is running."""
    seen: list[StatusRow] = []

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]))
    def watcher(context: dg.AssetExecutionContext) -> None:
        seen.extend(asset_status(dg.Definitions(assets=[watcher]), context.instance))

    result = _materialise(instance, watcher, partition_key="b")
    assert result.success
    assert [(r.partition, r.state, r.count) for r in seen] == [("b", RUNNING, None), (None, MISSING, 1)]
    assert seen[0].detail == f"run {result.run_id[:8]}"
    assert format_status(seen).splitlines()[-1].split() == ["watcher", "(1", "partition)", "missing"]
