"""Map a function over items on every core: worker processes started as ``python -m pipelines.procmap``.

Curation decodes and hashes every new image; Pillow releases the GIL while decoding, but the hashing and
measuring around it is Python and numpy on small arrays, so threads keep to about one core. Why not
``multiprocessing``: spawn re-imports the calling program's ``__main__`` (for a Dagster step, Dagster
itself) and fork copies a process full of threads. Each worker here is a fresh interpreter that imports
only what the function needs (the same reasoning as pipelines/fetchpool.py).

Protocol (pickled over stdin/stdout): the function once, then one list of items per request, answered
by the list of results; end of file stops the worker. A worker that dies mid-chunk (a decoder crash, the
OOM killer) is replaced and that chunk's items are run again one at a time, each in a fresh worker; an
item that kills its worker again gets ``crashed(item)`` as its result, and the rest go on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The package's parent, so that ``python -m pipelines.procmap`` finds this copy of the package.
_ROOT = str(Path(__file__).resolve().parents[1])


def available_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0))


class WorkerError(RuntimeError):
    """A worker process could not be started or could not run the function at all."""


class _Died(Exception):
    pass


class _Worker:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.procmap"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.send = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.recv = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        try:
            self.send.send(fn)
            ok, why = self.recv.recv()
        except (EOFError, OSError):
            ok, why = False, f"it exited at start with code {self.process.wait()} (its stderr says why)"
        if not ok:
            self.close()
            raise WorkerError(f"a worker process cannot run {getattr(fn, '__name__', fn)!r}: {why}")

    def run(self, items: Sequence[Any]) -> list[Any]:
        try:
            self.send.send(list(items))
            ok, out = self.recv.recv()
        except (EOFError, OSError) as e:
            raise _Died from e
        if not ok:
            raise WorkerError(out)
        return out

    def close(self) -> None:
        for conn in (self.send, self.recv):
            conn.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def process_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    processes: int,
    crashed: Callable[[T], R],
    chunk: int = 64,
) -> Iterator[R]:
    """``map(fn, items)`` in order, over ``processes`` worker processes, ``chunk`` items per request.

    ``fn`` must be picklable by reference (a module-level function, or a partial of one with picklable
    arguments) and should turn bad items into results rather than raise: an exception fails the map with
    :class:`WorkerError`. With one process or one chunk it simply runs here.
    """
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    if processes <= 1 or len(chunks) <= 1:
        yield from map(fn, items)
        return
    results: dict[int, list[R]] = {}
    failure: list[BaseException] = []
    done = threading.Condition()
    order = itertools.count()  # next() on a count is atomic: each chunk goes to exactly one thread
    stop = threading.Event()  # the consumer stopped early: finish the chunk at hand and quit

    def one_by_one(batch: Sequence[T]) -> list[R]:
        out = []
        for item in batch:
            worker = _Worker(fn)
            try:
                out.extend(worker.run([item]))
            except _Died:
                out.append(crashed(item))
            finally:
                worker.close()
        return out

    def drive() -> None:
        worker = None
        try:
            while not stop.is_set() and (k := next(order)) < len(chunks):
                worker = worker or _Worker(fn)
                try:
                    out = worker.run(chunks[k])
                except _Died:
                    worker.close()
                    worker = None
                    out = one_by_one(chunks[k])
                with done:
                    results[k] = out
                    done.notify_all()
        except BaseException as e:  # handed to the consuming thread, which raises it
            with done:
                failure.append(e)
                done.notify_all()
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=drive, daemon=True, name="procmap") for _ in range(min(processes, len(chunks)))]
    for t in threads:
        t.start()
    try:
        for k in range(len(chunks)):
            with done:
                done.wait_for(lambda k=k: k in results or bool(failure))
                if failure:
                    raise WorkerError(f"worker processes failed: {failure[0]}") from failure[0]
                out = results.pop(k)
            yield from out
    finally:
        stop.set()
        for t in threads:
            t.join()


def _serve(inbox: Connection, outbox: Connection) -> None:
    try:
        fn = inbox.recv()
    except EOFError:  # the parent could not even send the function
        return
    except Exception as e:  # e.g. the function's module does not import here
        outbox.send((False, f"{type(e).__name__}: {e}"))
        return
    outbox.send((True, None))
    while True:
        try:
            items = inbox.recv()
        except EOFError:  # the parent is done (or gone)
            return
        try:
            reply = (True, [fn(item) for item in items])
        except Exception as e:  # say why; the parent raises it
            reply = (False, f"{type(e).__name__}: {e}")
        outbox.send(reply)


def main() -> None:
    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # print() and libraries' stdout now go to stderr, never into the result stream
    sys.stdout = sys.stderr
    with contextlib.suppress(BrokenPipeError):  # the parent stopped listening: it has what it needs
        _serve(inbox, outbox)


if __name__ == "__main__":
    main()
