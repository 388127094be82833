"""Ordered, deterministic map for per-item work: a process pool, or Dask tasks on a cluster.

Results come back in input order whatever the number of workers, so outputs do not
depend on it. Project errors raised in a worker are re-raised in the caller as the same
exception (``DataFormatError`` does not survive pickling by itself).

Where the work runs:

* **In a Dask task** (a node run by ``cxr_spurious.runner.DaskRunner``: ``distributed``'s
  ``get_worker()`` answers in the calling thread), the items are cut into chunks that are
  submitted to the cluster as Dask tasks (keys ``"{CHUNK_KEY_PREFIX}-<label>-<token>-<i>"``)
  through ``distributed.worker_client()``: the calling task secedes from its worker's
  thread pool while it waits (its slot runs other tasks, its own chunks included) and
  rejoins when the map ends. The function is sent to the cluster once (scattered), not with
  every chunk. ``workers`` bounds the chunks in flight (``None``: twice the cluster's
  threads); ``workers=1`` keeps the work in the calling task.
* **Elsewhere**, a pool of forked processes (one per core by default), or this process for
  ``workers=1`` and for jobs below ``min_items``. A pool worker that dies (killed by the
  out-of-memory killer, a segfault in a C extension, ``os._exit``) stops the map with
  ``WorkerLostError`` naming the items whose results were lost, rather than leaving it
  waiting for them forever (``multiprocessing.Pool`` replaced the worker and never
  returned its items).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import sys
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2

from cxr_spurious.errors import CxrSpuriousError, DataFormatError, ParameterError, check_integer
from cxr_spurious.progress import progress_bar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MIN_ITEMS_FOR_POOL = 16  # below this, starting workers costs more than it saves
#: Chunks in flight per pool worker: enough to keep every worker busy while the oldest
#: chunk's results wait to be consumed, few enough to hold results one window at a time.
CHUNKS_PER_WORKER = 4
#: Key prefix of the Dask tasks that ``ordered_map`` submits for its chunks.
CHUNK_KEY_PREFIX = "cxr-chunk"

# glibc mallopt parameters for the workers: a full-size map is allocated and freed several
# times per heatmap (~27 MB float + ~7 MB uint8 arrays at 2,500 x 2,700 px). Serving them from
# a heap that is neither trimmed nor bypassed by mmap keeps their pages mapped between maps
# instead of faulting in and zeroing fresh ones (measured: 290 -> 40 page faults and
# 2.1 -> 0.8 sys-ms per map on the 2,340-map benchmark).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
WORKER_MALLOPT: dict[int, int] = {
    _M_MMAP_THRESHOLD: 32 << 20,  # glibc's largest allowed value on 64-bit
    _M_TRIM_THRESHOLD: 512 << 20,
    _M_TOP_PAD: 64 << 20,
}


class WorkerLostError(RuntimeError):
    """A process of ``ordered_map``'s pool died before returning its items' results (killed,
    e.g. by the out-of-memory killer, or crashed in a C extension): the message names the
    items whose results were lost."""


@dataclass(frozen=True)
class _Failure:
    kind: str
    args: tuple[Any, ...]
    text: str


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None, n_items: int, min_items: int = MIN_ITEMS_FOR_POOL) -> int:
    """Number of processes: ``None`` = one per core; 1 (or fewer than ``min_items``) = in-process.

    Raises:
        ParameterError: ``workers`` < 1.
    """
    if workers is not None:  # null: one per core
        workers = check_integer(workers, "localization.workers", low=1, nullable=True)
    n = available_cores() if workers is None else int(workers)
    return 1 if n_items < min_items else max(1, min(n, n_items))


def on_dask_worker() -> bool:
    """Whether this thread runs a Dask task (``distributed.get_worker()`` answers).

    A Dask worker has ``distributed`` imported already: where it is not, the answer is
    no, without importing it (0.6 s).
    """
    if "distributed" not in sys.modules:
        return False
    try:
        from distributed import get_worker
    except ImportError:  # the `dask` extra is not installed: never on a worker
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


def _context() -> mp.context.BaseContext:
    """Fork where available (no interpreter start-up, ~3 s with torch), else spawn."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def tune_worker_malloc() -> bool:
    """Apply ``WORKER_MALLOPT`` to this process's glibc allocator.

    Only called in pool workers (the caller's process is left alone). Returns False where
    the C library is not glibc or refuses a value; the work is then unchanged, only slower.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in WORKER_MALLOPT.items())


def _init_worker() -> None:
    """Workers run cv2 single-threaded (one worker per core) and never enter torch's
    OpenMP regions (they only deserialise tensors), so no inherited thread pool is used;
    their allocator keeps full-size arrays' pages between maps (``tune_worker_malloc``)."""
    if cv2.getNumThreads() != 1:  # spawned workers; forked ones inherit 1 (see ``_start_pool``)
        cv2.setNumThreads(1)
    if not tune_worker_malloc():
        logger.debug("glibc mallopt not available; workers keep the default allocator settings")


def _no_op() -> None:
    """A first task for a new pool: submitting it starts the workers (see ``_start_pool``)."""


@contextmanager
def _start_pool(n: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``n`` workers, forked while cv2 has no worker threads.

    cv2's thread pool does not survive ``fork`` (a child touching it hangs), so this
    process drops to one cv2 thread while the workers are forked (a fork-context executor
    forks them all at its first submission, made here) and restores its setting right
    after. A ``ProcessPoolExecutor`` rather than ``multiprocessing.Pool``: when a worker
    dies, its futures fail with ``BrokenProcessPool`` instead of never completing.

    On leaving normally the idle workers exit; on an error, or a consumer that stops
    early, the queued chunks are cancelled and the workers terminated at once (as
    ``Pool.terminate`` did), not left to finish work nobody reads.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        pool = ProcessPoolExecutor(n, mp_context=_context(), initializer=_init_worker)
        pool.submit(_no_op)
    finally:
        cv2.setNumThreads(previous)
    finished = False
    try:
        yield pool
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _terminate_pool(pool)


def _terminate_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel ``pool``'s queued work and terminate its workers now.

    What Python 3.14's ``ProcessPoolExecutor.terminate_workers`` does, for the Pythons
    before it: the worker processes are read from ``_processes`` before ``shutdown``
    drops them; the executor sees them end, fails what was in flight and reaps them.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with suppress(ProcessLookupError, ValueError):  # already gone / closed
            if process.is_alive():
                process.terminate()


class _Guarded:
    """Picklable wrapper that turns worker exceptions into ``_Failure`` values."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def __call__(self, item: Any) -> Any:
        try:
            return self.func(item)
        except DataFormatError as exc:
            return _Failure("DataFormatError", (exc.source, exc.problem, exc.where), "")
        except ParameterError as exc:
            return _Failure("ParameterError", (exc.key, exc.problem), "")
        except CxrSpuriousError as exc:  # the project's other errors pickle as themselves
            return _Failure("CxrSpuriousError", (exc,), traceback.format_exc())
        except Exception as exc:  # re-raised in the parent with the worker's traceback
            return _Failure(type(exc).__name__, (str(exc),), traceback.format_exc())


def _raise(failure: _Failure) -> None:
    if failure.kind == "DataFormatError":
        source, problem, where = failure.args
        raise DataFormatError(source, problem, where=where)
    if failure.kind == "ParameterError":
        raise ParameterError(*failure.args)
    if failure.kind == "CxrSpuriousError":
        raise failure.args[0]
    raise RuntimeError(f"worker failed with {failure.kind}: {failure.args[0]}\n{failure.text}")


def _run_chunk(func: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    """One Dask task: ``func`` (a ``_Guarded``) over the items of one chunk."""
    return [func(item) for item in chunk]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _label(desc: str, func: Callable[..., Any]) -> str:
    """A key-safe label of the map: its description, else the function's name."""
    name = desc or getattr(func, "__name__", type(func).__name__)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_") or "map"


def _dask_map(
    guarded: _Guarded,
    items: Iterable[Any],
    *,
    n_items: int,
    workers: int | None,
    chunksize: int,
    label: str,
) -> Iterator[Any]:
    """Chunks of ``items`` as Dask tasks, results in input order (see the module docstring).

    At most ``workers`` chunks (``None``: twice the cluster's threads) are in flight: the
    next is submitted when the oldest has been consumed, so results are held one window
    at a time and ``items`` is read lazily.

    The last chunk's results are yielded after ``worker_client`` has been left: a consumer
    that stops at the last item without asking for the end (``zip(jobs, results)``) leaves
    this generator suspended, and its finalisation, possibly in another thread, must not
    run Dask's ``rejoin`` (which needs the task's own thread).
    """
    from distributed import worker_client

    last: list[Any] = []
    with worker_client() as client:
        if workers is None:
            threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
            window = max(2, 2 * threads)
            # about four chunks per thread, so that the cluster's threads share the work
            size = max(1, min(int(chunksize), -(-n_items // max(1, 4 * threads))))
        else:
            window, size = max(1, int(workers)), max(1, int(chunksize))
        token = f"{CHUNK_KEY_PREFIX}-{label}-{uuid.uuid4().hex[:12]}"
        func_future = client.scatter(guarded, hash=False)
        pending: deque[Any] = deque()
        chunks = _chunks(items, size)
        try:
            for i, chunk in enumerate(chunks):
                pending.append(
                    client.submit(_run_chunk, func_future, chunk, key=f"{token}-{i}", pure=False)
                )
                if len(pending) >= window:
                    yield from pending.popleft().result()
            while len(pending) > 1:
                yield from pending.popleft().result()
            if pending:
                last = pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early or a chunk failed
                future.cancel()
            func_future.release()
    yield from last


def ordered_map(
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    n_items: int,
    workers: int | None = None,
    chunksize: int = 8,
    desc: str = "",
    progress: bool = True,
    min_items: int = MIN_ITEMS_FOR_POOL,
) -> Iterator[R]:
    """``map(func, items)`` over processes or Dask tasks, yielding results in input order.

    Args:
        func: A picklable (module-level) function of one item.
        items: The inputs (consumed lazily by the chunk submitter).
        n_items: Number of items (for the progress bar and the pool decision).
        workers: Processes (Dask: chunks in flight); ``None`` = one per available core
            (Dask: twice the cluster's threads); 1 = in this process (this task).
        chunksize: Items sent to a worker at a time (Dask: at most, per chunk task).
        desc: Progress-bar label.
        progress: Show a tqdm bar.
        min_items: Fewer items than this run in this process (a pool or chunk tasks would
            cost more than they save; 16 suits per-map work of milliseconds, per-batch
            work of seconds warrants 2).

    Yields:
        ``func(item)`` for each item, in order.

    Raises:
        DataFormatError: re-raised from a worker.
        ParameterError: re-raised from a worker, or bad ``workers``.
        WorkerLostError: a pool worker process died (killed or crashed), naming the items
            whose results were lost.
    """
    n = resolve_workers(workers, n_items, min_items)
    guarded = _Guarded(func)
    bar = progress_bar(total=n_items, desc=desc, disable=not progress)
    try:
        if workers != 1 and n_items >= min_items and on_dask_worker():
            chunks = _dask_map(
                guarded,
                items,
                n_items=n_items,
                workers=workers,
                chunksize=chunksize,
                label=_label(desc, func),
            )
            for res in chunks:
                if isinstance(res, _Failure):
                    _raise(res)
                bar.update(1)
                yield res
            return
        if n == 1:  # in this process: errors propagate as raised
            for item in items:
                res = func(item)
                bar.update(1)
                yield res
            return
        for res in _pool_map(guarded, items, n=n, n_items=n_items, chunksize=chunksize):
            if isinstance(res, _Failure):
                _raise(res)
            bar.update(1)
            yield res
    finally:
        bar.close()


def _pool_map(
    guarded: _Guarded, items: Iterable[Any], *, n: int, n_items: int, chunksize: int
) -> Iterator[Any]:
    """Chunks of ``items`` on a pool of ``n`` processes, results in input order.

    At most ``CHUNKS_PER_WORKER * n`` chunks are in flight: the next is submitted when the
    oldest has been consumed, so ``items`` is read lazily.

    Raises:
        WorkerLostError: a worker process died; names the positions of the items whose
            results it took with it (those of the chunks in flight that had not finished:
            the item it was running is among them).
    """
    size = max(1, int(chunksize))
    window = CHUNKS_PER_WORKER * n
    with _start_pool(n) as pool:
        pending: deque[tuple[range, Future[list[Any]]]] = deque()  # item positions, future
        submitted = 0  # items submitted so far
        chunks = _chunks(items, size)
        while True:
            while len(pending) < window and (chunk := next(chunks, None)) is not None:
                positions = range(submitted, submitted + len(chunk))
                pending.append((positions, pool.submit(_run_chunk, guarded, chunk)))
                submitted += len(chunk)
            if not pending:
                return
            future = pending[0][1]
            try:
                results = future.result()
            except BrokenProcessPool as exc:
                raise WorkerLostError(_lost_items_message(guarded, pending, n_items)) from exc
            pending.popleft()
            del future
            yield from results


def _lost_items_message(
    guarded: _Guarded, pending: Iterable[tuple[range, Future[list[Any]]]], n_items: int
) -> str:
    """What ``WorkerLostError`` says: the items of the chunks in flight that a broken pool
    failed (it fails every one not finished when a worker died)."""
    chunks = list(pending)
    wait([future for _, future in chunks])  # a broken pool fails them all at once
    lost = [p for p, future in chunks if future.cancelled() or future.exception() is not None]
    spans: list[list[int]] = []
    for positions in lost:
        if spans and spans[-1][1] + 1 == positions.start:
            spans[-1][1] = positions.stop - 1
        else:
            spans.append([positions.start, positions.stop - 1])
    which = ", ".join(f"#{a}" if a == b else f"#{a} to #{b}" for a, b in spans)
    count = sum(len(positions) for positions in lost)
    name = getattr(guarded.func, "__qualname__", type(guarded.func).__name__)
    return (
        f"a worker process of the pool running {name} died, and the results of "
        f"{'item' if count == 1 else 'items'} {which} (of {n_items} items, counted from 0), "
        "queued or running then, were lost with it: it was killed (e.g. by the "
        "out-of-memory killer: see the kernel log) or crashed (e.g. a segfault in a C "
        "extension). Run with fewer workers to use less memory, or with workers: 1 to see "
        "the failing item's own error"
    )
