"""Distributed K-means on Dask: map-reduce Lloyd iterations and k-means|| initialisation.

The public names are imported on first use, so worker processes that only
run the chunk kernels and Parquet readers do not load scikit-learn (about
100 MiB of memory each).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

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
