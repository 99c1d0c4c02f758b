"""Where the computation runs: the active scheduler, its size and BLAS threads.

The drivers (``_lloyd``, ``_init``, the estimator) call :func:`compute` and
:func:`persist` here instead of ``dask.compute`` so that BLAS runs one thread
per Dask worker thread, set once per worker or once per call, never per task.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import dask
import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin
from threadpoolctl import ThreadpoolController

#: Fraction of the cluster's free memory that ``persist="auto"`` may fill: rechunking
#: holds a chunk's pieces and the merged chunk at once, and passes allocate per chunk.
PERSIST_FRACTION = 0.5
#: What a worker process holds once a fit has run on it (numba, scipy, pyarrow, pandas
#: loaded: about 330 MiB measured), counted when the worker reports less (a fresh one).
WORKER_BASELINE_BYTES = 350 * 2**20
#: Target size of one persisted chunk: large enough that per-task overhead
#: (milliseconds on small machines) is small next to the kernel.
TARGET_CHUNK_BYTES = 128 * 2**20

_controller: ThreadpoolController | None = None
_PLUGIN_NAME = "dask-kmeans-single-blas-thread"


def active_client():
    """The ``distributed.Client`` that ``dask.compute`` would use now, or ``None``.

    Mirrors dask's own choice: an explicit ``scheduler`` in dask's config wins,
    then ``distributed.get_client()`` (the current or default client, or the
    worker's client when running inside a task).
    """
    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


#: Workers of this process under :class:`SingleBlasThread`, and the limiter that the first
#: one set (workers of a cluster with ``processes=False`` share this process, the user's).
_blas_workers: dict[str, Any] = {"count": 0, "limiter": None}


class SingleBlasThread(WorkerPlugin):
    """Worker plugin: one BLAS thread per worker thread, set once at start-up, lifted when
    the last worker of the process closes (in a cluster with ``processes=False`` the
    workers are threads of the user's process, whose BLAS stayed at one thread after the
    cluster closed)."""

    name = _PLUGIN_NAME

    def setup(self, worker):
        if _blas_workers["count"] == 0:
            _blas_workers["limiter"] = ThreadpoolController().limit(limits=1, user_api="blas")
        _blas_workers["count"] += 1

    def teardown(self, worker):
        _blas_workers["count"] -= 1
        if _blas_workers["count"] == 0 and _blas_workers["limiter"] is not None:
            _blas_workers["limiter"].restore_original_limits()
            _blas_workers["limiter"] = None


#: What the workers of the command line's own local cluster leave out of the terminal
#: they share with it: a task's "Compute Failed" report (the error reaches the command as
#: an exception, printed as one line), a heartbeat that met the scheduler closing as
#: the command shuts the cluster down after that error (a traceback, 1 run in ~15), and a
#: running task's cancellation (the other tasks of a pass that failed, or results no
#: output used: a warning line in 11 of 12 failed predicts, and after some fits).
_QUIET_PREFIXES = ("Compute Failed", "Failed to communicate with scheduler during heartbeat")
_CANCELLED = ("Async instruction for ", "ended with CancelledError")
#: The loggers these come from.
_QUIET_LOGGERS = ("distributed.worker", "distributed.worker.state_machine")


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    return not (msg.startswith(_QUIET_PREFIXES)
                or (msg.startswith(_CANCELLED[0]) and msg.endswith(_CANCELLED[1])))


class QuietTaskFailures(WorkerPlugin):
    """Worker plugin for the local cluster the command line starts: its workers write to
    the same terminal, and a task's error reaches the command as an exception (printed as
    one line), so the workers' own reports of it are left out (see
    :data:`_QUIET_PREFIXES`)."""

    name = "dask-kmeans-quiet-task-failures"

    def setup(self, worker):
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).addFilter(_not_a_task_failure)

    def teardown(self, worker):
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).removeFilter(_not_a_task_failure)


def dask_setup(worker) -> None:
    """Preload hook (``preload=["dask_kmeans._runtime"]``) of the worker processes of the
    local cluster that the command line starts: they ignore SIGINT. A Ctrl-C at a terminal
    reaches the whole process group, and each worker printed its KeyboardInterrupt traceback
    (about 70 lines) while the command stopped the job and closed them anyway. Set in each
    worker rather than inherited (SIG_IGN in the command while it started them), so that a
    Ctrl-C while the cluster starts still stops the command."""
    from . import _ignore_ctrl_c

    _ignore_ctrl_c()


def prepare_client(client) -> None:
    """Limit BLAS threads on every worker of ``client`` (idempotent, by name)."""
    client.register_plugin(SingleBlasThread(), name=_PLUGIN_NAME)


@contextlib.contextmanager
def _local_blas_limit(client):
    global _controller
    if client is not None:
        yield
        return
    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def one_process_pool():
    """Context manager: under dask's "processes" scheduler, one pool of processes serves
    every compute inside. dask starts a new pool for each compute unless ``pool`` is set,
    and each process imports numpy, numba and this package again: about 3 s a Lloyd
    iteration on data that is not persisted (12 iterations of 2,000 rows took 37 s)."""
    import os
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    import dask.base
    import dask.multiprocessing as mp

    if dask.base.get_scheduler() is not mp.get or dask.config.get("pool", None) is not None:
        yield
        return
    if os.environ.get("PYTHONHASHSEED") in (None, "0"):
        # What dask sets before it starts a pool (its processes must hash alike).
        os.environ["PYTHONHASHSEED"] = "6640"
    initializer = partial(mp.initialize_worker_process,
                          user_initializer=dask.config.get("multiprocessing.initializer", None))
    workers = dask.config.get("num_workers", None) or dask.system.CPU_COUNT
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(), initializer=initializer) \
            as pool, dask.config.set({"pool": pool, "multiprocessing.initializer": None}):
        yield  # (the initializer is the pool's: dask warns of one given beside a pool)


def single_blas_thread():
    """Context manager: one BLAS thread in this process (for local thread pools)."""
    return _local_blas_limit(None)


def compute(*args):
    """``dask.compute`` with one BLAS thread per worker thread."""
    with _local_blas_limit(active_client()):
        return dask.compute(*args)


def dask_persist(*args):
    """``dask.persist`` with one BLAS thread per worker thread."""
    with _local_blas_limit(active_client()):
        return dask.persist(*args)


def cancel(collection) -> int:
    """Cancel the tasks of a collection persisted on a cluster that nothing will read (a
    fit's ``labels_``, computed in the background when only the model is wanted): a
    cluster closed under them logs errors. How many futures were cancelled."""
    try:
        from distributed import futures_of
    except ImportError:
        return 0
    futures = futures_of(collection) if collection is not None else []
    if futures:
        futures[0].client.cancel(futures)
    return len(futures)


def total_threads(client=None) -> int:
    """Threads available to tasks: the cluster's, or this machine's."""
    client = client if client is not None else active_client()
    if client is not None:
        info = client.scheduler_info(n_workers=-1)["workers"]
        return max(1, sum(w.get("nthreads", 1) for w in info.values()))
    return max(1, dask.system.CPU_COUNT)


def memory_budget(client=None) -> float:
    """Bytes that ``persist="auto"`` may fill on the cluster (or this machine).

    On a distributed cluster, :data:`PERSIST_FRACTION` of the room its tightest worker
    thread has, times the threads: persisted chunks are spread about evenly over the
    threads, not by room, so a small worker beside large ones takes as much as they do
    (the sum of the rooms persisted 800 MiB on a 3 GiB and a 450 MiB worker, and the small
    one paused). A worker's room is what it can take before it spills (see
    :func:`_worker_room`); one without a memory limit has the memory available on its
    host. A cluster without workers yet has none: nothing is persisted. Without a
    cluster, that fraction of the memory available here.
    """
    client = client if client is not None else active_client()
    if client is not None:
        info = client.scheduler_info(n_workers=-1)["workers"]
        if not info:
            return 0.0
        # Each worker's own settings and host: the workers', not this process's.
        spill = client.run(_spill_fraction, on_error="ignore")
        unlimited = [addr for addr, w in info.items() if not w.get("memory_limit")]
        free = client.run(_available_memory, workers=unlimited, on_error="ignore") \
            if unlimited else {}
        default = dask.config.get("distributed.worker.memory.spill", 0.7)
        per_thread, threads = [], 0
        for addr, w in info.items():
            if w.get("memory_limit"):
                room = _worker_room(w, spill.get(addr, default))
            else:  # no limit: what its host has free (none when it could not tell)
                room = float(free.get(addr, 0))
            nthreads = max(1, w.get("nthreads", 1))
            per_thread.append(room / nthreads)
            threads += nthreads
        return PERSIST_FRACTION * min(per_thread) * threads
    return PERSIST_FRACTION * float(_available_memory())


def _available_memory() -> int:
    """The memory available on this host (run on a worker without a memory limit)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _spill_fraction(dask_worker) -> float | bool:
    """A worker's ``distributed.worker.memory.spill``, as its memory manager read it."""
    return dask_worker.memory_manager.memory_spill_fraction


def _worker_room(worker: dict, spill: float | bool) -> float:
    """Bytes a worker can take before it starts spilling to disk: its memory limit times
    its ``spill`` fraction (the whole limit when spilling is off: False), less what its
    process holds (at least :data:`WORKER_BASELINE_BYTES`).

    Half of the limits alone was too much for small workers: with 768 MiB each, 640 MB
    of data was persisted, the workers paused, and one was restarted at 95%.
    """
    limit = float(worker["memory_limit"]) * (float(spill) if spill else 1.0)
    used = (worker.get("metrics") or {}).get("memory") or 0
    return max(0.0, limit - max(float(used), WORKER_BASELINE_BYTES))


def pool_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-ordered ndarray in Arrow's memory pool, which reuses its memory.

    For arrays a task makes per chunk in a dask worker: the nanny starts workers with
    ``MALLOC_TRIM_THRESHOLD_`` set, which turns off glibc's adaptive mmap threshold, so
    every NumPy allocation of a chunk's size is a fresh mapping, paged in at first touch:
    1.7 ms against 0.25 ms to allocate and fill 16 MB here, at every pass.
    """
    import pyarrow as pa

    dtype = np.dtype(dtype)
    size = math.prod(shape)
    buf = pa.allocate_buffer(max(size * dtype.itemsize, 1))
    return np.frombuffer(buf, dtype=dtype, count=size).reshape(shape)


def target_row_chunks(n_rows: int, row_bytes: int, threads: int) -> int:
    """Rows per chunk for data held in memory: one chunk per thread, at most ~128 MiB each.

    Every task costs milliseconds of scheduling; measured on 2 workers, 2
    chunks of 500,000 x 32 float64 rows cost 66 ms per Lloyd pass against
    80 ms for 4 chunks.
    """
    by_size = max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1))
    by_threads = math.ceil(n_rows / threads)
    # Tiny inputs stay in one chunk: tasks cost more than the arithmetic.
    return int(max(min(by_size, by_threads), min(n_rows, 4096), 1))


def place_data(X, sample_weight, persist, client=None):
    """Put the input where the Lloyd passes will read it.

    NumPy input becomes a dask array of a few large row chunks (sent to the
    workers once when a distributed client is active). Dask input is persisted
    when ``persist`` is True, or "auto" and it fits in :data:`PERSIST_FRACTION`
    of the cluster's memory; persisted data is first rechunked into a few large
    chunks per thread, because every task costs milliseconds. Otherwise every
    pass re-reads the source chunk by chunk.

    Returns
    -------
    X, sample_weight : dask arrays with the same row chunks
    in_memory : bool
        Whether the data is held in memory (NumPy input, or persisted).
    """
    import dask.array as da

    threads = total_threads(client)
    row_bytes = X.shape[1] * X.dtype.itemsize
    if not isinstance(X, da.Array):
        rows = target_row_chunks(X.shape[0], row_bytes, threads)
        Xd, wd = numpy_chunks(X, sample_weight, rows, client)
        return Xd, wd, True
    if persist == "auto":
        persist = X.nbytes <= memory_budget(client)
    if not persist:
        return X, sample_weight, False
    rows = target_row_chunks(X.shape[0], row_bytes, threads)
    target_blocks = math.ceil(X.shape[0] / rows)
    if X.numblocks[0] > 2 * target_blocks or X.numblocks[0] < min(threads, target_blocks):
        X = X.rechunk({0: rows})
        if sample_weight is not None:
            sample_weight = sample_weight.rechunk((X.chunks[0],))
    X, sample_weight = dask_persist(X, sample_weight)
    return X, sample_weight, True


def numpy_chunks(X: np.ndarray, sample_weight: np.ndarray | None, rows: int, client=None):
    """NumPy ``X`` (and its weights) as dask arrays of ``rows``-row chunks, persisted on the
    workers when there is a ``client``: sent once, inside the graph, which lets the
    scheduler rebuild a chunk a dead worker held. (Scattering them instead spared the
    scheduler the copy and the "Sending large graph" warning, but a fit then failed when
    a worker died, and before any worker had joined.)"""
    import dask.array as da

    Xd = da.from_array(X, chunks=(rows, -1))
    wd = None if sample_weight is None else da.from_array(sample_weight, chunks=(Xd.chunks[0],))
    if client is not None:
        Xd, wd = dask_persist(Xd, wd)
    return Xd, wd


def chunk_futures(client, X):
    """The futures holding the row chunks of a persisted ``X``, in row order, or None.

    None when ``X`` is not fully persisted on ``client`` (then the caller
    builds ordinary dask graphs).
    """
    if client is None or X is None:
        return None
    from dask.core import flatten
    from distributed import futures_of

    held = {f.key: f for f in futures_of(X)}
    keys = list(flatten(X.__dask_keys__()))
    if not keys or not all(k in held for k in keys):
        return None
    return [held[k] for k in keys]


def tree_levels(parts: list, split_every, combine) -> list:
    """Combine ``parts`` by groups of ``split_every`` until at most that many remain.

    The one grouping both :func:`tree_sum` (on the workers) and :func:`sum_in_order` (on
    the driver) use, so that both add the same numbers in the same order.
    """
    fan_in = split_every or dask.config.get("split_every", 4)
    while len(parts) > fan_in:
        parts = [combine(*parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts


def tree_sum(client, futures, split_every=None) -> np.ndarray:
    """Tree reduction of partial futures with ``_kernels.combine``, gathered.

    Levels of ``split_every`` partials are combined on the workers until at
    most ``split_every`` remain; the driver gathers and adds those, which
    saves the last hop to a worker and back.
    """
    from ._kernels import combine

    futures = tree_levels(futures, split_every,
                          lambda *group: client.submit(combine, *group, pure=False))
    return combine(*client.gather(futures))


def tree_merge(client, futures, split_every, merge):
    """``merge`` of ``futures`` by the tree of :func:`tree_levels`, then of what remains
    at a root (a worker too, even over one part), gathered: the driver receives only the
    root's result."""
    futures = tree_levels(futures, split_every,
                          lambda *group: client.submit(merge, *group, pure=False))
    return client.submit(merge, *futures, pure=False).result()


def sum_in_order(parts: list, split_every=None) -> np.ndarray:
    """The sum :func:`tree_sum` makes of ``parts``, grouped the same way, on the driver."""
    from ._kernels import combine

    return combine(*tree_levels(parts, split_every, combine))


#: Bytes per row of the k-means|| state (squared distance and candidate index).
ROW_STATE_BYTES = 16


def keep_row_state(n_rows: int, in_memory: bool, client=None) -> bool:
    """Whether k-means|| keeps per-row state on the workers between passes.

    Always for data held in memory; for data re-read from its source, when
    the state (16 bytes a row, a fraction of the data) fits in a quarter of
    the memory budget. Without state every pass compares each row with every
    candidate so far, which costs several Lloyd iterations more.
    """
    return in_memory or n_rows * ROW_STATE_BYTES <= 0.25 * memory_budget(client)
