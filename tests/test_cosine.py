"""metric="cosine": spherical k-means, end to end."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dask_kmeans as dk
from dask_kmeans import KMeans
from tests import reference as ref


def directions(n=3000, d=8, k=5, seed=0, dtype=np.float64):
    """Rows pointing in k directions, with random positive lengths."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(k, d))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    X = axes[rng.integers(0, k, n)] + 0.25 * rng.normal(size=(n, d))
    return (X * rng.uniform(0.1, 50, size=(n, 1))).astype(dtype)


@pytest.fixture(scope="module")
def data():
    X = directions()
    C0 = X[np.random.default_rng(1).choice(len(X), 5, replace=False)].copy()
    return X, C0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_numpy_spherical_kmeans(data, dtype):
    X, C0 = data
    km = KMeans(5, init=C0, metric="cosine").fit(X.astype(dtype))
    C, labels, inertia, n_iter = ref.spherical_lloyd(X.astype(dtype), C0)
    rtol = ref.RTOL[np.dtype(dtype)]
    assert km.cluster_centers_.dtype == dtype
    np.testing.assert_allclose(km.cluster_centers_, C, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1, rtol=rtol)
    np.testing.assert_allclose(km.inertia_, inertia, rtol=rtol * 10)
    np.testing.assert_array_equal(km.labels_, labels)
    assert km.n_iter_ == n_iter


def test_weighted_matches_reference(data):
    X, C0 = data
    w = np.random.default_rng(3).uniform(0.1, 4, size=len(X))
    km = KMeans(5, init=C0, metric="cosine", tol=0).fit(X, sample_weight=w)
    C, _, inertia, _ = ref.spherical_lloyd(X, C0, w, tol=0)
    np.testing.assert_allclose(km.cluster_centers_, C, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(km.inertia_, inertia, rtol=1e-7)


def test_rescaling_rows_changes_nothing(data):
    X, C0 = data
    scale = np.random.default_rng(5).uniform(1e-3, 1e3, size=(len(X), 1))
    a = KMeans(5, random_state=0, metric="cosine").fit(X)
    b = KMeans(5, random_state=0, metric="cosine").fit(X * scale)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(b.labels_, a.labels_)
    np.testing.assert_allclose(b.inertia_, a.inertia_, rtol=1e-7)


@pytest.mark.parametrize("lazy", [False, True])
def test_rows_too_small_or_too_large_to_square_keep_their_direction(data, lazy):
    """Rows scaled by 1e-170 or 1e170 (their squared norms underflow or overflow in float64)
    cluster as the unscaled rows do, k-means|| included."""
    X, _ = data
    scale = np.ones((len(X), 1))
    scale[::3], scale[1::3] = 1e-170, 1e170
    a = KMeans(5, random_state=0, metric="cosine").fit(X)
    Y = X * scale
    b = KMeans(5, random_state=0, metric="cosine").fit(da.from_array(Y, chunks=700) if lazy
                                                       else Y)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(b.labels_), a.labels_)
    np.testing.assert_allclose(b.inertia_, a.inertia_, rtol=1e-7)
    np.testing.assert_array_equal(b.predict(Y), a.labels_)
    # Below float64's reach for 1 / |row| (subnormal values) a row has zero norm, named.
    Y[[4, 9]] = 1e-320
    with pytest.raises(ValueError, match=r"2 row\(s\).*zero norm.*rows 4, 9"):
        KMeans(5, random_state=0, metric="cosine").fit(Y)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=2999), max_size=6, unique=True))
def test_any_chunking_gives_the_same_result(data, cuts):
    X, _ = data
    bounds = [0, *sorted(cuts), len(X)]
    chunks = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    lazy = KMeans(5, random_state=2, metric="cosine", tol=0, max_iter=30).fit(
        da.from_array(X, chunks=(chunks, X.shape[1])))
    eager = KMeans(5, random_state=2, metric="cosine", tol=0, max_iter=30).fit(X)
    np.testing.assert_allclose(lazy.cluster_centers_, eager.cluster_centers_, rtol=1e-7,
                               atol=1e-9)
    np.testing.assert_array_equal(lazy.labels_.compute(), eager.labels_)


def test_transform_predict_score_are_cosine(data):
    X, C0 = data
    km = KMeans(5, init=C0, metric="cosine").fit(X)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    D = km.transform(X)
    np.testing.assert_allclose(D, 1 - U @ km.cluster_centers_.T, atol=1e-12)
    labels, dist = km.predict(X, return_distance=True)
    np.testing.assert_array_equal(labels, km.labels_)
    np.testing.assert_allclose(dist, D.min(axis=1), atol=1e-12)
    np.testing.assert_allclose(-km.score(X), km.inertia_, rtol=1e-9)
    Xd = da.from_array(X, chunks=700)
    np.testing.assert_allclose(km.transform(Xd).compute(), D, atol=1e-12)
    np.testing.assert_array_equal(km.predict(Xd).compute(), labels)


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_initialisations_give_unit_centres_and_good_clusters(data, init):
    X, _ = data
    km = KMeans(5, init=init, random_state=0, n_init=1, metric="cosine").fit(X)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1, rtol=1e-9)
    if init != "random":
        # five well-separated directions: every cluster is found
        assert len(np.unique(km.labels_)) == 5
        assert km.inertia_ < 0.25 * len(X)  # noise alone gives 1 - cos of about 0.17


def test_kmeans_parallel_cosine_is_chunking_independent(data):
    X, _ = data
    a = dk.kmeans_parallel_init(da.from_array(X, chunks=500), 5, random_state=4,
                                metric="cosine")
    b = dk.kmeans_parallel_init(da.from_array(X, chunks=1300), 5, random_state=4,
                                metric="cosine")
    np.testing.assert_array_equal(a, b)


def test_zero_norm_rows_are_named(data):
    X, C0 = data
    bad = X.copy()
    bad[[7, 1234]] = 0
    with pytest.raises(ValueError, match=r"2 row\(s\).*zero norm.*rows 7, 1234"):
        KMeans(5, init=C0, metric="cosine").fit(bad)
    with pytest.raises(ValueError, match=r"rows 7, 1234"):
        KMeans(5, random_state=0, metric="cosine").fit(da.from_array(bad, chunks=1000))
    for seed in range(3):  # k-means|| alone: the same error, whichever first centre
        with pytest.raises(ValueError, match=r"2 row\(s\).*zero norm.*rows 7, 1234"):
            dk.kmeans_parallel_init(da.from_array(bad, chunks=1000), 5, metric="cosine",
                                    random_state=seed)
    km = KMeans(5, init=C0, metric="cosine").fit(X)
    # New data too, NumPy or dask, whatever the method (dask predict labelled them -1,
    # score left them out and transform gave 1): the rows are named, by global index.
    lazy = da.from_array(bad, chunks=1000)
    calls = [lambda: km.predict(bad), lambda: km.score(bad), lambda: km.transform(bad),
             lambda: km.predict(lazy).compute(), lambda: km.score(lazy),
             lambda: km.transform(lazy).compute(),
             lambda: km.predict(lazy, return_distance=True)[1].compute()]
    for call in calls:
        with pytest.raises(ValueError, match=r"zero norm \(rows (7|1234)"):
            call()


def test_saved_model_keeps_the_metric(data, local_store):
    X, C0 = data
    km = KMeans(5, init=C0, metric="cosine").fit(X)
    km.save(local_store.url("m"))
    assert '"metric": "cosine"' in local_store.get_bytes("m/metadata.json").decode()
    loaded = dk.load(local_store.url("m"))
    assert loaded.metric == "cosine"
    np.testing.assert_array_equal(loaded.predict(X * 3), km.labels_)


def test_on_a_process_cluster(client, data):
    X, _ = data
    remote = KMeans(5, random_state=1, metric="cosine").fit(da.from_array(X, chunks=1500))
    local = KMeans(5, random_state=1, metric="cosine").fit(X)
    np.testing.assert_allclose(remote.cluster_centers_, local.cluster_centers_, rtol=1e-7,
                               atol=1e-9)


def test_parquet_missing_drop_can_drop_zero_norm_rows(local_store):
    import pandas as pd

    X = directions(n=400, d=4, k=3, seed=9)
    X[[3, 100]] = 0
    df = pd.DataFrame(X, columns=list("abcd"))
    df.insert(0, "id", np.arange(len(df)))
    url = local_store.write_parquet("d/part-0.parquet", df)
    src = dk.open_parquet(url, key_columns="id", missing="drop", drop_zero_norm=True)
    assert src.n_rows == 398
    assert 3 not in set(src.keys.compute()["id"])
    km = KMeans(3, random_state=0, metric="cosine").fit(src)
    assert np.isfinite(km.inertia_)
    with pytest.raises(ValueError, match="zero norm"):
        KMeans(3, random_state=0, metric="cosine").fit(dk.open_parquet(url, list("abcd")))
    with pytest.raises(ValueError, match="needs missing='drop'"):
        dk.open_parquet(url, drop_zero_norm=True)
    assert dk.read_parquet(url, list("abcd"), missing="drop", drop_zero_norm=True).shape == \
        (398, 4)


# scikit-learn's check of the NumPy input sums inf and -inf
@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce:RuntimeWarning")
@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random", "array"])
def test_infinite_values_are_not_called_zero_norm(data, init):
    """A row holding an infinity has no norm either: dask input (not scanned in advance) got
    the zero-norm error, whose remedy (drop_zero_norm=True) does not apply. It gets the error
    for NaN or infinity, naming the rows, before any zero-norm row; NumPy input is refused by
    scikit-learn's check as before."""
    X, C0 = data
    bad = X.copy()
    bad[37, 1] = np.inf
    bad[1234, 0] = -np.inf
    bad[7] = 0
    lazy = da.from_array(bad, chunks=1000)
    params = dict(init=C0 if init == "array" else init, n_init=1, random_state=0,
                  metric="cosine")
    match = r"Input X contains NaN or infinity: 2 row\(s\) \(rows 37, 1234\)"
    with pytest.raises(ValueError, match=match):
        KMeans(5, **params).fit(lazy)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        KMeans(5, **params).fit(bad)
    if init == "k-means||":
        with pytest.raises(ValueError, match=match):
            dk.kmeans_parallel_init(lazy, 5, metric="cosine", random_state=0)
        with pytest.raises(ValueError, match=match):
            dk.sweep(lazy, [2, 3], metric="cosine", random_state=0)
    # Zero-norm rows alone still get their own error.
    bad[[37, 1234]] = X[[37, 1234]]
    with pytest.raises(ValueError, match=r"1 row\(s\) of X have zero norm \(rows 7\)"):
        KMeans(5, **params).fit(da.from_array(bad, chunks=1000))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kmeans_plusplus_names_nonfinite_rows_it_reads(data, metric, monkeypatch):
    """k-means++ brings dask rows to the driver, where NaN or infinity made every draw NaN:
    the rows at hand are checked, and named (those of the sample, for large input)."""
    from dask_kmeans import _init

    X, _ = data
    bad = X.copy()
    bad[37, 1] = np.inf
    bad[40] = np.nan
    params = dict(init="k-means++", n_init=1, random_state=0, metric=metric)
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity: 2 row\(s\) "
                                         r"\(rows 37, 40\)"):
        KMeans(5, **params).fit(da.from_array(bad, chunks=1000))
    bad[::10, 2] = np.inf
    monkeypatch.setattr(_init, "KMEANS_PP_MAX_ROWS", 1000)
    with pytest.warns(UserWarning, match="uniform sample"), \
            pytest.raises(ValueError, match=r"Input X contains NaN or infinity: \d+ row\(s\) of "
                                            r"the 1000 sampled for init='k-means\+\+' \(rows "):
        KMeans(5, **params).fit(da.from_array(bad, chunks=1000))
