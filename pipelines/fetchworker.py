"""A fetch worker process of :class:`pipelines.fetchpool.FetchPool`: ``python -m pipelines.fetchworker``.

Reads pickled messages on stdin: first ``(storage, settings, threads, share, rank, known_hashes)``, then one
``(job, url, allow_local)`` per download, then :data:`STOP` (or end of file, if the parent died). Writes
``(None, None)`` once set up (or ``(None, "why not")``), then ``(job, FetchResult)`` on stdout as each
download finishes. Anything else the process prints goes to
stderr, so a stray print cannot corrupt the stream.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from multiprocessing.connection import Connection

STOP = None


def serve(inbox: Connection, outbox: Connection) -> None:
    from pipelines.fetch import Fetcher, FetchResult

    try:
        storage, settings, threads, share, rank, known = inbox.recv()
        fetcher = Fetcher(storage, settings, share=share, rank=rank)
    except Exception as e:  # say why, once, rather than die with a traceback the parent never reads
        outbox.send((None, f"{type(e).__name__}: {e}"))
        raise
    outbox.send((None, None))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
    send_lock = threading.Lock()

    def reply(job: int, fut: Future[FetchResult]) -> None:
        if fut.cancelled():  # dropped at shutdown: the parent cancels its side
            return
        with send_lock:
            outbox.send((job, fut.result()))  # fetch() never raises

    try:
        while True:
            try:
                msg = inbox.recv()
            except EOFError:  # the parent is gone
                break
            if msg is STOP:
                break
            job, url, allow_local = msg
            pool.submit(fetcher.fetch, url, known, allow_local=allow_local).add_done_callback(partial(reply, job))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        fetcher.close()
        outbox.close()


def main() -> None:
    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # print() and libraries' stdout now go to stderr
    sys.stdout = sys.stderr
    serve(inbox, outbox)


if __name__ == "__main__":
    main()
