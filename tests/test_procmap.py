"""process_map: order, a worker killed by one item, and the errors that fail the whole map."""

from __future__ import annotations

import os

import pytest

from pipelines.procmap import WorkerError, process_map


def square(x: int) -> int:
    return x * x


def square_or_die(x: int) -> tuple[int, int]:
    if x == 7:
        os._exit(3)  # a decoder segfault, as the parent sees it
    return (x, os.getpid())


def fail_on_five(x: int) -> int:
    if x == 5:
        raise RuntimeError("five is not allowed")
    return x


def crashed(x: int) -> str:
    return f"crashed {x}"


def test_results_come_back_in_order_from_several_processes():
    out = list(process_map(square_or_die, list(range(40)), processes=2, chunk=3, crashed=crashed))
    assert [r[0] if isinstance(r, tuple) else r for r in out] == [x if x != 7 else "crashed 7" for x in range(40)]
    assert os.getpid() not in {r[1] for r in out if isinstance(r, tuple)}  # all of it ran in the workers
    assert len({r[1] for r in out if isinstance(r, tuple)}) >= 2


def test_one_process_or_one_chunk_runs_here():
    assert list(process_map(square, [1, 2, 3], processes=1, crashed=crashed)) == [1, 4, 9]
    assert list(process_map(square, [1, 2, 3], processes=4, chunk=8, crashed=crashed)) == [1, 4, 9]


def test_an_exception_fails_the_map_and_names_it():
    with pytest.raises(WorkerError, match="five is not allowed"):
        list(process_map(fail_on_five, list(range(20)), processes=2, chunk=4, crashed=crashed))


def test_a_function_the_workers_cannot_load_fails_the_map():
    with pytest.raises(WorkerError):
        list(process_map(lambda x: x, list(range(20)), processes=2, chunk=4, crashed=crashed))
