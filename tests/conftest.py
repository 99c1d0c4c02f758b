from __future__ import annotations

import numpy as np
import pytest


def blobs(n=3000, d=4, k=5, *, seed=0, spread=6.0, dtype=np.float64):
    """A Gaussian mixture with well-separated centres and unit noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(0, k, size=n)
    X = centers[labels] + rng.normal(size=(n, d))
    return X.astype(dtype)


@pytest.fixture(scope="session")
def local_cluster_client():
    """A real 2-process LocalCluster with one thread per worker."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def client(local_cluster_client):
    """The session's LocalCluster client, set as the default for this test only."""
    with local_cluster_client.as_current():
        yield local_cluster_client
