"""standardize=True: clustering (x - mean) / std without a scaled copy, in original units."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import dask_kmeans as dk


def customers(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    age = np.concatenate([rng.normal(25, 3, n // 2), rng.normal(60, 4, n - n // 2)])
    income = rng.normal(50_000, 20_000, n)  # unrelated to the clusters, but huge
    return np.column_stack([age, income])


@pytest.mark.parametrize("lazy", [False, True])
def test_matches_a_standard_scaler_pipeline_from_the_same_centres(lazy):
    X = customers()
    C0 = X[[0, 1, 2000]]
    scaler = StandardScaler().fit(X)
    pipe = make_pipeline(StandardScaler(), SKKMeans(3, init=scaler.transform(C0), n_init=1,
                                                    algorithm="lloyd")).fit(X)
    sk = pipe[-1]
    Xin = da.from_array(X, chunks=700) if lazy else X
    km = dk.KMeans(3, init=C0, standardize=True).fit(Xin)
    np.testing.assert_allclose(km.feature_mean_, scaler.mean_, rtol=1e-10)
    np.testing.assert_allclose(km.feature_scale_, scaler.scale_, rtol=1e-10)
    np.testing.assert_allclose(km.cluster_centers_, scaler.inverse_transform(sk.cluster_centers_),
                               rtol=1e-7)
    np.testing.assert_allclose(km.inertia_, sk.inertia_, rtol=1e-7)
    assert km.n_iter_ == sk.n_iter_
    labels = km.labels_.compute() if lazy else km.labels_
    np.testing.assert_array_equal(labels, sk.labels_)
    np.testing.assert_array_equal(km.predict(X), sk.labels_)
    np.testing.assert_allclose(km.transform(X), pipe.transform(X), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(km.score(X), pipe.score(X), rtol=1e-7)


def test_without_scaling_income_alone_decides():
    X = customers()
    true = np.repeat([0, 1], len(X) // 2)
    raw = dk.KMeans(2, random_state=0).fit(X)
    std = dk.KMeans(2, random_state=0, standardize=True).fit(X)
    agree = lambda a: max(np.mean(a == true), np.mean(a != true))  # noqa: E731
    assert agree(std.labels_) > 0.99
    assert agree(raw.labels_) < 0.8
    # centres in years and currency, not standard deviations
    assert 20 < std.cluster_centers_[:, 0].min() < 30 and 55 < std.cluster_centers_[:, 0].max()


def test_weighted_scaling_and_saved_model(local_store):
    X = customers(n=1000)
    w = np.random.default_rng(1).uniform(0.5, 2, len(X))
    km = dk.KMeans(2, random_state=0, standardize=True).fit(X, sample_weight=w)
    mean = np.average(X, axis=0, weights=w)
    np.testing.assert_allclose(km.feature_mean_, mean, rtol=1e-10)
    np.testing.assert_allclose(km.feature_scale_,
                               np.sqrt(np.average((X - mean) ** 2, axis=0, weights=w)), rtol=1e-8)
    km.save(local_store.url("m"))
    loaded = dk.load(local_store.url("m"))
    np.testing.assert_array_equal(loaded.predict(X), km.predict(X))
    np.testing.assert_allclose(loaded.transform(X), km.transform(X))


def test_constant_feature_gets_unit_scale():
    X = customers(n=500)
    X = np.column_stack([X, np.full(len(X), 7.0)])
    km = dk.KMeans(2, random_state=0, standardize=True).fit(X)
    assert km.feature_scale_[2] == 1.0
    np.testing.assert_allclose(km.cluster_centers_[:, 2], 7.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_scaling_far_from_the_origin(weighted):
    """A column of unix times over a minute and a constant 0.1: the variance about 0,
    E[x^2] - E[x]^2, cancels away (a scale of 22.6 instead of 17.1, and ~1e-9 instead of
    1 for the constant); the moments are taken about the first row instead."""
    rng = np.random.default_rng(0)
    X = np.column_stack([1.7e9 + rng.uniform(0, 60, 2000), rng.normal(size=2000),
                         np.full(2000, 0.1)])
    w = rng.uniform(0.5, 2, len(X)) if weighted else None
    km = dk.KMeans(2, random_state=0, standardize=True).fit(X, sample_weight=w)
    mean = np.average(X, axis=0, weights=w)
    std = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=w))
    np.testing.assert_allclose(km.feature_mean_, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(km.feature_scale_[:2], std[:2], rtol=1e-9)
    assert km.feature_scale_[2] == 1.0


def test_a_callable_init_sees_the_input_and_gives_original_units():
    """Like an array init, a callable's centres are in original units, and it is called
    with the validated input (NumPy here), not the standardised dask array."""
    X = customers(n=1000)
    idx = [0, 999]
    seen = []

    def init(data, k, random_state):
        seen.append(type(data))
        return data[idx]

    by_array = dk.KMeans(2, init=X[idx], standardize=True).fit(X)
    by_callable = dk.KMeans(2, init=init, n_init=1, standardize=True).fit(X)
    assert seen == [np.ndarray]
    np.testing.assert_array_equal(by_callable.cluster_centers_, by_array.cluster_centers_)
    assert by_callable.n_iter_ == by_array.n_iter_


def test_kmeans_plusplus_uses_all_rows_of_numpy_input(recwarn):
    """Standardising turns NumPy input into a dask array inside the fit; k-means++ must
    still use every row (and not warn of a sample, which is for dask input)."""
    X = np.random.default_rng(0).normal(size=(200_001, 2))
    km = dk.KMeans(2, init="k-means++", standardize=True, random_state=0, max_iter=2).fit(X)
    assert not [w for w in recwarn if "sample" in str(w.message)]
    assert km.cluster_centers_.shape == (2, 2)


@pytest.mark.parametrize("lazy", [False, True])
def test_labels_and_inertia_agree_with_predict_and_score_in_float32(lazy):
    """labels_ and inertia_ came from the internal standardised centres, predict and score
    from cluster_centers_ (float32, in original units) brought back, which round apart
    for data far from 0: 11 of 20,000 labels differed, and the inertias by 3e-6."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(20_000, 2)) + [[1e4, -3e4]]).astype(np.float32)
    Xin = da.from_array(X, chunks=(5000, -1)) if lazy else X
    km = dk.KMeans(8, random_state=0, standardize=True).fit(Xin)
    np.testing.assert_array_equal(np.asarray(km.labels_), km.predict(X))
    np.testing.assert_allclose(km.inertia_, -km.score(X), rtol=1e-12)
    result = dk.sweep(Xin, [3, 8], random_state=0, standardize=True, silhouette_rows=None)
    for model in result.models:
        np.testing.assert_array_equal(np.asarray(model.labels_), model.predict(X))
        np.testing.assert_allclose(model.inertia_, -model.score(X), rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_cosine_rows_equal_to_the_means_are_named_as_standardised(lazy):
    """A row equal to the feature means has zero norm once standardised: the error said
    to drop rows of zero norm (missing='drop'), which drops rows as read and left it."""
    rows = np.array([(0.0, 0.0), (2.0, 2.0), (0.0, 2.0), (2.0, 0.0)] * 25 + [(1.0, 1.0)])
    X = da.from_array(rows, chunks=30) if lazy else rows
    standardised = r"1 row\(s\) of X have zero norm after standardize=True \(rows 100\): " \
                   r"they equal the feature means"
    for fit in (lambda: dk.KMeans(2, metric="cosine", standardize=True,
                                  random_state=0).fit(X),
                lambda: dk.sweep(X, [2, 3], metric="cosine", standardize=True,
                                 random_state=0)):
        with pytest.raises(ValueError, match=standardised):
            fit()
    km = dk.KMeans(2, metric="cosine", standardize=True, random_state=0).fit(rows[:100])
    new = da.from_array(rows[95:], chunks=3) if lazy else rows[95:]
    with pytest.raises(ValueError, match=standardised.replace("100", "5")):
        labels = km.predict(new)
        if lazy:
            labels.compute()
    with pytest.raises(ValueError, match=standardised.replace("100", "5")):
        km.score(new)
    with pytest.raises(ValueError, match=standardised.replace("100", "5")):
        out = km.transform(new)
        if lazy:
            out.compute()
    plain = dk.KMeans(2, metric="cosine", random_state=0).fit(rows[:100] + 1.0)
    with pytest.raises(ValueError, match=r"have zero norm \(rows 5\); metric='cosine'"):
        plain.predict(np.vstack([rows[95:100] + 1, [(0.0, 0.0)]]))
