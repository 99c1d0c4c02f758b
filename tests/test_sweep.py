"""dask_kmeans.sweep: every K fitted at once, sharing the passes over the data."""

from __future__ import annotations

import dask
import numpy as np

import dask_kmeans as dk
from tests.conftest import blobs
from tests.test_init import _CountingSource


def test_sweep_matches_separate_fits_and_suggests_the_true_k():
    X = blobs(n=4000, d=3, k=4, seed=8, spread=5.0)
    res = dk.sweep(X, range(2, 9), random_state=0)
    assert res.ks == list(range(2, 9))
    assert res.suggested_k == 4 and "4" in res.reason
    assert len(res.silhouettes) == 7 and max(res.silhouettes) == res.silhouettes[2]
    for model, inertia, n_iter in zip(res.models, res.inertias, res.n_iter, strict=True):
        alone = dk.KMeans(**model.get_params()).fit(X)
        np.testing.assert_allclose(alone.cluster_centers_, model.cluster_centers_, rtol=1e-7)
        np.testing.assert_allclose(alone.inertia_, inertia, rtol=1e-7)
        assert alone.n_iter_ == n_iter
        np.testing.assert_array_equal(model.labels_.compute(), alone.labels_)
    assert all(a >= b for a, b in zip(res.inertias, res.inertias[1:], strict=False))


def test_sweep_reads_the_data_about_as_often_as_one_fit():
    X = blobs(n=20000, d=3, k=4, seed=3, spread=5.0)
    with dask.config.set(scheduler="threads"):
        one = _CountingSource(X, rows=2500)
        km = dk.KMeans(8, random_state=0, persist=False).fit(one.array)
        single = max(one.reads.values())
        many = _CountingSource(X, rows=2500)
        res = dk.sweep(many.array, range(2, 9), random_state=0, silhouette_rows=None)
        swept = max(many.reads.values())
    # init passes + the slowest model's iterations + one inertia pass, against
    # seven separate fits that would read it about 7 * single times
    assert swept <= 7 + max(res.n_iter) + 2
    assert swept < 2 * single + 10, (swept, single, km.n_iter_)
