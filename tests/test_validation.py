"""Input checks of dask input: sample weights, non-finite rows in new data."""

from __future__ import annotations

import dask.array as da
import numpy as np

from dask_kmeans import KMeans
from tests.conftest import blobs


def test_weights_filtered_by_the_mask_of_x_are_accepted():
    X = blobs(n=400, d=2, k=2)
    w = np.random.default_rng(0).uniform(0.5, 1.5, 400)
    Xd, wd = da.from_array(X, chunks=100), da.from_array(w, chunks=100)
    m = Xd[:, 0] > np.median(X[:, 0])
    keep = X[:, 0] > np.median(X[:, 0])
    a = KMeans(2, init=X[keep][:2], n_init=1).fit(Xd[m], sample_weight=wd[m])
    b = KMeans(2, init=X[keep][:2], n_init=1).fit(X[keep], sample_weight=w[keep])
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-7)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-7)
