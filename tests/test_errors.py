"""``assets.errors``: the user's exception in one line, from the error Dagster records for a failed step."""

from collections.abc import Callable

import dagster as dg
import pytest
from dagster_shared.error import SerializableErrorInfo

from assets.errors import cause_line, describe, run_error


def _recorded(fail: Callable[[], None]) -> SerializableErrorInfo:
    """The error Dagster records when an asset calls ``fail``."""

    @dg.asset
    def failing() -> None:
        fail()

    result = dg.materialize([failing], raise_on_error=False)
    error = run_error(result.all_events, step_key="failing")
    assert error is not None
    return error


def _raise(error: BaseException) -> Callable[[], None]:
    def fail() -> None:
        raise error

    return fail


def _chained() -> None:
    try:
        raise OSError("disk on fire")
    except OSError as e:
        raise RuntimeError("cannot write the manifest") from e


@pytest.mark.parametrize(
    ("fail", "line"),
    [
        (_raise(ValueError("bad value")), "ValueError: bad value"),
        (_chained, "RuntimeError: cannot write the manifest"),  # the user's own message, not the OSError under it
        (_raise(dg.Failure(description="source 'x': offline")), "source 'x': offline"),  # a deliberate failure
        (_raise(KeyError("k")), "KeyError: 'k'"),
        (_raise(RuntimeError()), "RuntimeError"),
        (_raise(RuntimeError("two\n  lines")), "RuntimeError: two lines"),
    ],
)
def test_cause_line(fail, line):
    assert cause_line(_recorded(fail)) == line


def test_cause_line_is_bounded():
    line = cause_line(_recorded(_raise(RuntimeError("x" * 1000))), limit=50)
    assert len(line) == 50 and line.startswith("RuntimeError: xxx") and line.endswith("…")


def test_describe_keeps_the_whole_chain():
    text = describe(_recorded(_chained))
    assert text.startswith("dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred")
    assert text.endswith("RuntimeError: cannot write the manifest <- OSError: disk on fire")
