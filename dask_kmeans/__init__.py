"""Distributed K-means on Dask: map-reduce Lloyd iterations and k-means|| initialisation."""

from __future__ import annotations

from .estimator import KMeans, kmeans_parallel_init

__version__ = "0.1.0"

__all__ = ["KMeans", "kmeans_parallel_init", "__version__"]
