"""Distributed K-means on Dask: map-reduce Lloyd iterations and k-means|| initialisation.

The public names are imported on first use, so worker processes that only
run the chunk kernels and Parquet readers do not load scikit-learn (about
100 MiB of memory each).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Set by `dask_kmeans.cluster` to its own process id while a local cluster's worker
#: processes start. Spawned, they import this package first thing (they re-run the main
#: script) and, if their parent set it, ignore the terminal's Ctrl-C from then on: the
#: worker preload (`dask_kmeans._runtime.dask_setup`) comes a second later, and a Ctrl-C
#: in that second printed a traceback per worker.
WORKERS_IGNORE_CTRL_C = "DASK_KMEANS_WORKERS_IGNORE_CTRL_C"


def _ignore_ctrl_c() -> None:
    """SIGINT ignored in this process (from its main thread, where handlers are set)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if os.environ.get(WORKERS_IGNORE_CTRL_C) == str(os.getppid()):
    _ignore_ctrl_c()

_EXPORTS = {
    "KMeans": "estimator",
    "kmeans_parallel_init": "estimator",
    "load": "estimator",
    "sweep": "estimator",
    "ParquetSource": "io",
    "open_parquet": "io",
    "read_parquet": "io",
    "read_labels": "io",
    "write_labels": "io",
    "profile": "report",
}

__all__ = [
    "KMeans",
    "ParquetSource",
    "__version__",
    "kmeans_parallel_init",
    "load",
    "open_parquet",
    "profile",
    "read_labels",
    "read_parquet",
    "sweep",
    "write_labels",
]

if TYPE_CHECKING:  # pragma: no cover
    from .estimator import KMeans, kmeans_parallel_init, load, sweep
    from .io import ParquetSource, open_parquet, read_labels, read_parquet, write_labels
    from .report import profile


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
