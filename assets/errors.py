"""A failed step's error in the words a user acts on.

Dagster wraps the exception an asset raised ("DagsterExecutionStepExecutionError: Error occurred while
executing op ...") and keeps the user's exception as its ``cause``; printing only the outer message tells
the user nothing. Shared by ``gan-pipelines run``/``status`` and the failure sensor.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

__all__ = ["cause_line", "describe", "run_error", "user_error"]


def describe(error: SerializableErrorInfo) -> str:
    """The error and its causes ("Error occurred while executing op" wraps the user's exception)."""
    parts = []
    current: SerializableErrorInfo | None = error
    while current is not None:
        parts.append(current.message.strip())
        current = current.cause
    return " <- ".join(parts)


def user_error(error: SerializableErrorInfo) -> SerializableErrorInfo:
    """The outermost error of the chain that is not one of Dagster's wrappers around a cause.

    The outermost, not the innermost: ``raise SourceUnavailable("source 'x': cannot resolve ...") from e``
    says more than the ``gaierror`` it came from.
    """
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    return error


def cause_line(error: SerializableErrorInfo, limit: int = 400) -> str:
    """:func:`user_error` on one line: ``RuntimeError: text`` (a ``dg.Failure``: its description alone)."""
    error = user_error(error)
    name = error.cls_name or "Error"
    text = " ".join(error.message.split())  # "package.module.Name: text", possibly over several lines
    head, sep, rest = text.partition(": ")
    if head.rsplit(".", 1)[-1] == name:
        text = rest if sep else ""
    line = text if name == "Failure" and text else f"{name}: {text}" if text else name
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_error(events: Iterable[dg.DagsterEvent], step_key: str | None = None) -> SerializableErrorInfo | None:
    """The error of a failed run: ``step_key``'s failure, else the first failed step's, else the run's own."""
    step_errors: dict[str | None, SerializableErrorInfo] = {}
    run_failure = None
    for event in events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            step_errors.setdefault(event.step_key, event.step_failure_data.error)
        elif event.is_run_failure and event.job_failure_data is not None:
            run_failure = event.job_failure_data.error
    if step_key in step_errors:
        return step_errors[step_key]
    return next(iter(step_errors.values()), run_failure)
