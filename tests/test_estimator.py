from __future__ import annotations

import logging
import os
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from dask.callbacks import Callback
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans as SKKMeans
from sklearn.exceptions import ConvergenceWarning

from dask_kmeans import KMeans
from tests import reference as ref
from tests.conftest import blobs


def _rtol(dtype):
    return ref.RTOL[np.dtype(dtype)]


def _close(a, b, dtype):
    rtol = _rtol(dtype)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max()))


@pytest.fixture(scope="module")
def data():
    X = blobs(n=4000, d=6, k=5, seed=3, spread=3.0)
    C0 = X[np.random.default_rng(0).choice(len(X), 5, replace=False)].copy()
    return X, C0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference_and_sklearn(data, dtype):
    X, C0 = data
    X = X.astype(dtype)
    ours = KMeans(5, init=C0, tol=1e-4).fit(X)
    C, labels, inertia, n_iter = ref.lloyd(X, C0, tol=1e-4)
    sk = SKKMeans(5, init=C0.astype(dtype), n_init=1, algorithm="lloyd", tol=1e-4).fit(X)
    assert ours.cluster_centers_.dtype == dtype
    _close(ours.cluster_centers_, C, dtype)
    _close(ours.cluster_centers_, sk.cluster_centers_, dtype)
    np.testing.assert_allclose(ours.inertia_, inertia, rtol=_rtol(dtype))
    np.testing.assert_allclose(ours.inertia_, sk.inertia_, rtol=_rtol(dtype))
    assert ours.n_iter_ == n_iter == sk.n_iter_
    np.testing.assert_array_equal(ours.labels_, labels)
    assert isinstance(ours.labels_, np.ndarray)


@pytest.mark.parametrize(("dtype", "offset"), [(np.float32, 1e4), (np.float64, 1e9)])
def test_data_far_from_the_origin_matches_sklearn(data, dtype, offset):
    """Features in the thousands (float32) or billions (float64, unix times in ns...)
    around a spread of a few units: the same fit as scikit-learn's, which centres the
    data first, and predict gives labels_ back (the scores once rounded in proportion to
    |x|^2, which left rows on the wrong centre and fits running to max_iter)."""
    X, C0 = data
    X, C0 = (X + offset).astype(dtype), (C0 + offset).astype(dtype)
    ours = KMeans(5, init=C0, tol=1e-4).fit(X)
    sk = SKKMeans(5, init=C0, n_init=1, algorithm="lloyd", tol=1e-4).fit(X)
    np.testing.assert_allclose(ours.cluster_centers_ - offset, sk.cluster_centers_ - offset,
                               atol=1e-2 if dtype == np.float32 else 1e-5)
    np.testing.assert_allclose(ours.inertia_, sk.inertia_, rtol=1e-3)
    assert ours.n_iter_ == sk.n_iter_
    np.testing.assert_array_equal(ours.labels_, sk.labels_)
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)


def test_empty_cluster_relocation_does_not_depend_on_the_chunking():
    """Rows equally far from their centre: the one that refills an empty cluster is the
    lowest global row, whatever the chunks (each chunk offered any of its tied rows)."""
    X = np.concatenate([np.zeros(20),
                        np.random.default_rng(0).choice([10.0, -10.0], 80)])[:, None]
    init = np.array([[0.0], [0.0]])  # the second cluster is empty from the start
    want = KMeans(2, init=init, max_iter=1).fit(X).cluster_centers_
    first_far = X[np.flatnonzero(np.abs(X[:, 0]) == 10)[0], 0]
    assert want[1, 0] == first_far
    for rows in (30, 7, 1):
        got = KMeans(2, init=init, max_iter=1, persist=False).fit(
            da.from_array(X, chunks=(rows, 1))).cluster_centers_
        np.testing.assert_array_equal(got, want)


def test_dask_input_gives_dask_labels_matching_numpy(data):
    X, C0 = data
    ours = KMeans(5, init=C0).fit(da.from_array(X, chunks=(700, 3)))  # columns split too
    np_fit = KMeans(5, init=C0).fit(X)
    assert isinstance(ours.labels_, da.Array)
    _close(ours.cluster_centers_, np_fit.cluster_centers_, np.float64)
    np.testing.assert_array_equal(ours.labels_.compute(), np_fit.labels_)
    assert ours.n_iter_ == np_fit.n_iter_


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=1199), max_size=8, unique=True),
       persist=st.sampled_from(["auto", False]))
def test_any_row_chunking_equals_numpy(cuts, persist):
    X = blobs(n=1200, d=3, k=4, seed=5)
    C0 = X[[0, 1, 2, 3]]
    bounds = [0, *sorted(cuts), len(X)]
    chunks = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    Xd = da.from_array(X, chunks=(chunks, 3))
    ours = KMeans(4, init=C0, tol=0, max_iter=20, persist=persist).fit(Xd)
    C, labels, inertia, n_iter = ref.lloyd(X, C0, tol=0, max_iter=20)
    _close(ours.cluster_centers_, C, np.float64)
    np.testing.assert_allclose(ours.inertia_, inertia, rtol=1e-7)
    np.testing.assert_array_equal(ours.labels_.compute(), labels)
    assert ours.n_iter_ == n_iter


def test_weighted_rows_equal_repeated_rows():
    X = blobs(n=500, d=3, k=3, seed=7)
    reps = np.random.default_rng(0).integers(0, 4, size=len(X))
    C0 = X[[0, 1, 2]]
    weighted = KMeans(3, init=C0, tol=0).fit(X, sample_weight=reps.astype(float))
    repeated = KMeans(3, init=C0, tol=0).fit(np.repeat(X, reps, axis=0))
    _close(weighted.cluster_centers_, repeated.cluster_centers_, np.float64)
    np.testing.assert_allclose(weighted.inertia_, repeated.inertia_, rtol=1e-7)
    # and with dask weights on a dask array
    w = da.from_array(reps.astype(float), chunks=100)
    lazy = KMeans(3, init=C0, tol=0).fit(da.from_array(X, chunks=(100, 3)), sample_weight=w)
    _close(lazy.cluster_centers_, repeated.cluster_centers_, np.float64)


def test_weighted_matches_reference_and_sklearn(data):
    X, C0 = data
    w = np.random.default_rng(2).uniform(0.2, 5.0, size=len(X))
    ours = KMeans(5, init=C0).fit(X, sample_weight=w)
    C, _, inertia, n_iter = ref.lloyd(X, C0, w)
    sk = SKKMeans(5, init=C0, n_init=1).fit(X, sample_weight=w)
    _close(ours.cluster_centers_, C, np.float64)
    _close(ours.cluster_centers_, sk.cluster_centers_, np.float64)
    np.testing.assert_allclose(ours.inertia_, inertia, rtol=1e-7)
    np.testing.assert_allclose(ours.score(X, sample_weight=w), -inertia, rtol=1e-7)
    assert ours.n_iter_ == n_iter


@pytest.mark.parametrize("lazy", [False, True])
def test_empty_cluster_is_relocated_to_far_point(lazy):
    X = blobs(n=600, d=2, k=3, seed=11)
    C0 = np.vstack([X[:2], [[1e3, 1e3]]])  # the third centre attracts nobody
    Xin = da.from_array(X, chunks=(128, 2)) if lazy else X
    ours = KMeans(3, init=C0, tol=0, max_iter=1).fit(Xin)
    C, _, _, _ = ref.lloyd(X, C0, tol=0, max_iter=1)
    assert np.all(np.isfinite(ours.cluster_centers_))
    _close(ours.cluster_centers_, C, np.float64)
    # the relocated centre is a data row, far from the origin
    assert any(np.allclose(ours.cluster_centers_[2], row) for row in X)
    full = KMeans(3, init=C0, tol=0).fit(Xin)
    C, _, inertia, _ = ref.lloyd(X, C0, tol=0)
    _close(full.cluster_centers_, C, np.float64)
    np.testing.assert_allclose(full.inertia_, inertia, rtol=1e-7)


@pytest.mark.parametrize("persist", [None, "auto", False])
def test_rows_of_zero_weight_never_refill_an_empty_cluster(persist):
    """A row of weight 0 counts as absent: the farthest row has weight 0 here, and the
    empty cluster goes to the farthest row of positive weight instead (it kept its
    centre before; scikit-learn moves it to the origin)."""
    X = blobs(n=300, d=2, k=2, seed=3)
    X[7] = [40.0, -40.0]  # farthest from every centre, but weightless
    w = np.ones(len(X))
    w[7] = 0.0
    C0 = np.vstack([X[:2], [[1e3, 1e3]]])  # the third centre attracts nobody
    Xin = X if persist is None else da.from_array(X, chunks=(64, 2))
    kw = {} if persist is None else {"persist": persist}
    ours = KMeans(3, init=C0, tol=0, max_iter=1, **kw).fit(Xin, sample_weight=w)
    kept = w > 0
    without = KMeans(3, init=C0, tol=0, max_iter=1).fit(X[kept])
    _close(ours.cluster_centers_, without.cluster_centers_, np.float64)
    assert not np.allclose(ours.cluster_centers_[2], C0[2])
    C, _, _, _ = ref.lloyd(X, C0, w, tol=0, max_iter=1)
    _close(ours.cluster_centers_, C, np.float64)
    full = KMeans(3, init=C0, tol=0, **kw).fit(Xin, sample_weight=w)
    C, _, inertia, n_iter = ref.lloyd(X, C0, w, tol=0)
    _close(full.cluster_centers_, C, np.float64)
    np.testing.assert_allclose(full.inertia_, inertia, rtol=1e-7)
    assert full.n_iter_ == n_iter


def test_predict_transform_score_agree_with_fit(data):
    X, C0 = data
    km = KMeans(5, init=C0).fit(X)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    np.testing.assert_array_equal(km.fit_predict(X), km.labels_)
    D = km.transform(X)
    np.testing.assert_allclose(D, np.sqrt(ref.sq_distances(X, km.cluster_centers_)), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(km.fit_transform(X), D)
    np.testing.assert_allclose(-km.score(X), km.inertia_, rtol=1e-9)
    Xd = da.from_array(X, chunks=(1000, 6))
    np.testing.assert_array_equal(km.predict(Xd).compute(), km.labels_)
    np.testing.assert_allclose(km.transform(Xd).compute(), D, rtol=1e-9)
    np.testing.assert_allclose(km.score(Xd), km.score(X), rtol=1e-9)


class _CountComputes(Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


def test_transform_columns_are_named_and_pandas_output_works_in_a_pipeline(data):
    """get_feature_names_out names transform's columns as scikit-learn does, so
    set_output(transform="pandas") works alone and in a Pipeline."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, C0 = data
    df = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])],
                      index=np.arange(len(X)) + 100)
    km = KMeans(5, init=C0)
    pipe = make_pipeline(StandardScaler(), km).set_output(transform="pandas")
    out = pipe.fit_transform(df)
    names = [f"kmeans{j}" for j in range(5)]
    assert list(out.columns) == names
    assert list(km.get_feature_names_out()) == names
    pd.testing.assert_index_equal(out.index, df.index)
    np.testing.assert_allclose(out.to_numpy(), km.transform(pipe[0].transform(df)))
    sk = SKKMeans(5, init=C0, n_init=1).fit(X)
    assert list(sk.get_feature_names_out()) == names
    alone = KMeans(5, init=C0).set_output(transform="pandas").fit(df).transform(df)
    assert list(alone.columns) == names


def test_pandas_output_of_dask_input_is_a_lazy_dask_dataframe(data):
    """scikit-learn's wrapper made a pandas DataFrame of the dask result: the whole
    distance matrix computed into memory, and the dask DataFrame's index lost."""
    import dask
    import dask.dataframe as dd
    import sklearn

    X, C0 = data
    names = [f"kmeans{j}" for j in range(5)]
    ddf = dd.from_pandas(pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])],
                                      index=np.arange(len(X)) + 100), npartitions=3)
    km = KMeans(5, init=C0).fit(X)
    expected = km.transform(X)
    for how in ("estimator", "global"):
        model = KMeans(5, init=C0)
        if how == "estimator":
            model.set_output(transform="pandas")
        with sklearn.config_context(transform_output="pandas" if how == "global" else "default"):
            fitted = model.fit(ddf)
            Xd = da.from_array(X, chunks=1000)
            with dask.config.set(scheduler=_no_compute), \
                    pytest.warns(UserWarning, match="valid feature names"):  # lazy
                arr = model.transform(Xd)
            out = model.transform(ddf)  # (the partition lengths are computed)
            assert isinstance(out, dd.DataFrame) and isinstance(arr, dd.DataFrame)
            assert list(out.columns) == names == list(arr.columns)
            frame = out.compute()
            pd.testing.assert_index_equal(frame.index, ddf.index.compute())
            np.testing.assert_allclose(frame.to_numpy(), expected, rtol=1e-12)
            np.testing.assert_allclose(arr.compute().to_numpy(), expected, rtol=1e-12)
            both = fitted.fit_transform(ddf)
            assert isinstance(both, dd.DataFrame)
            pd.testing.assert_frame_equal(both.compute(), frame)
    assert isinstance(KMeans(5, init=C0).set_output(transform="default").fit(ddf)
                      .transform(ddf), da.Array)
    with pytest.raises(ValueError, match="transform='polars'.*dask input.*'pandas'"):
        KMeans(5, init=C0).set_output(transform="polars").fit(ddf).transform(ddf)
    with pytest.raises(ValueError, match="transform='arrow'"):
        KMeans(5).set_output(transform="arrow")
    chosen = KMeans(5).set_output(transform="pandas")
    assert sklearn.base.clone(chosen)._sklearn_output_config == {"transform": "pandas"}


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("computed")


def test_exactly_one_compute_per_iteration():
    X = np.random.default_rng(0).normal(size=(4000, 6))  # no structure: converges slowly
    C0 = X[:5]
    Xin = da.from_array(X, chunks=(500, 6))
    counts = {}
    for max_iter in (2, 6):
        with dask.config.set(scheduler="threads"), _CountComputes() as cc:
            km = KMeans(5, init=C0, tol=0, max_iter=max_iter, persist=False).fit(Xin)
        assert km.n_iter_ == max_iter
        counts[max_iter] = cc.n
    assert counts[6] - counts[2] == 4
    # init from an array: no compute; then one per iteration and one final assignment
    assert counts[2] == 2 + 1


def test_numpy_input_makes_one_local_pass_per_iteration_and_no_graph(monkeypatch):
    """Without a distributed client, NumPy input stays in this process: each iteration is
    one pass over its chunks in a local thread pool (the bounded kernel), no dask graph,
    and the same fit as the graph engine on the same chunks."""
    from dask_kmeans import _passes

    X = np.random.default_rng(0).normal(size=(4000, 6))
    C0 = X[:5]
    passes = []
    original = _passes.LocalChunks._each

    async def spy(self, func):
        passes.append(func)
        return await original(self, func)

    monkeypatch.setattr(_passes.LocalChunks, "_each", spy)
    counts = {}
    for max_iter in (2, 6):
        passes.clear()
        with dask.config.set(scheduler="threads"), _CountComputes() as cc:
            km = KMeans(5, init=C0, tol=0, max_iter=max_iter).fit(X)
        counts[max_iter] = (cc.n, len(passes))
    assert counts[6][1] - counts[2][1] == 4, "one local pass per iteration"
    assert counts[6][0] == counts[2][0] == 1, "one compute in all: taking the chunks"
    on_graphs = KMeans(5, init=C0, tol=0, max_iter=6, persist=False).fit(
        da.from_array(X, chunks=(2000, 6)))  # read lazily: dask graphs, the plain kernel
    np.testing.assert_allclose(km.cluster_centers_, on_graphs.cluster_centers_, rtol=1e-12,
                               atol=1e-14)
    assert km.inertia_ == pytest.approx(on_graphs.inertia_, rel=1e-12)
    np.testing.assert_array_equal(km.labels_, on_graphs.labels_.compute())


def test_float32_close_to_float64(data):
    X, C0 = data
    a = KMeans(5, init=C0, tol=0, max_iter=10).fit(X.astype(np.float32))
    b = KMeans(5, init=C0, tol=0, max_iter=10).fit(X)
    assert a.cluster_centers_.dtype == np.float32
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-4)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_far_initial_centre_does_not_spoil_the_tolerance(lazy):
    """The first pass's moments are taken about the centres' mean: a far initial centre
    moved it far from the data, the variance cancelled away (tolerance 8.8e3 where
    scikit-learn's is 2.3e-3), and the fit stopped after 2 iterations, 7% worse."""
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([c + rng.normal(size=(2000, 2)) for c in base]) + 1e9
    C0 = np.vstack([base + 1e9, [[1e12, 1e9]]])
    sk = SKKMeans(4, init=C0, n_init=1, algorithm="lloyd").fit(X)
    km = KMeans(4, init=C0).fit(da.from_array(X, chunks=1500) if lazy else X)
    assert km.n_iter_ == sk.n_iter_
    assert km.inertia_ == pytest.approx(sk.inertia_, rel=1e-6)


def test_tolerance_follows_sklearn(data):
    X, C0 = data
    for tol in (1e-1, 1e-3, 0.0):
        ours = KMeans(5, init=C0, tol=tol).fit(X)
        sk = SKKMeans(5, init=C0, n_init=1, tol=tol).fit(X)
        assert ours.n_iter_ == sk.n_iter_, tol


def test_random_init_is_reproducible_and_n_init_keeps_best(data):
    X, _ = data
    a = KMeans(5, init="random", n_init=1, random_state=4).fit(X)
    b = KMeans(5, init="random", n_init=1, random_state=4).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    several = KMeans(5, init="random", n_init=4, random_state=4).fit(X)
    singles = [KMeans(5, init="random", n_init=1, random_state=s) for s in range(3)]
    assert several.inertia_ <= min(km.fit(X).inertia_ for km in singles) * 1.5
    assert KMeans(5, init="random", random_state=0)._n_init() == 10


def test_callable_init(data):
    X, C0 = data
    seen = {}

    def init(X_, k, random_state):
        seen["k"] = k
        return C0

    km = KMeans(5, init=init, n_init=1).fit(X)
    assert seen["k"] == 5
    _close(km.cluster_centers_, KMeans(5, init=C0).fit(X).cluster_centers_, np.float64)


def record_process_start():
    """dask's multiprocessing initializer in the test below: one line per process."""
    with open(os.environ["DASK_KMEANS_TEST_STARTS"], "a") as f:
        f.write(f"{os.getpid()}\n")


def test_processes_scheduler_starts_one_pool_per_fit(tmp_path, monkeypatch):
    """dask's "processes" scheduler started a pool for every compute, each process
    importing numpy, numba and dask_kmeans again: 12 iterations of 2,000 rows not
    persisted took 37 s (3.5-5.5 s with one pool)."""
    starts = tmp_path / "starts.txt"
    monkeypatch.setenv("DASK_KMEANS_TEST_STARTS", str(starts))
    X = blobs(n=2000, d=3, k=3, seed=1)
    init = X[[0, 800, 1500]]
    reference = KMeans(3, init=init, n_init=1).fit(X)
    with dask.config.set(scheduler="processes", num_workers=2,
                         **{"multiprocessing.initializer": record_process_start}):
        km = KMeans(3, init=init, n_init=1, persist=False).fit(da.from_array(X, chunks=500))
    assert km.n_iter_ > 2
    np.testing.assert_allclose(km.cluster_centers_, reference.cluster_centers_, rtol=1e-12)
    assert 1 <= len(starts.read_text().split()) <= 2  # one pool of 2 for the whole fit
    assert dask.config.get("pool", None) is None


def test_polars_input_and_output_as_scikit_learn(data):
    """A polars DataFrame was refused ("non-numeric column(s): 'f0' (Float64), ...": its
    dtypes are no pandas dtypes), and set_output(transform="polars") had no test."""
    import polars as pl  # a test extra
    X, C0 = data
    cols = [f"f{i}" for i in range(X.shape[1])]
    frame = pl.DataFrame(X, schema=cols)
    km = KMeans(5, init=C0, n_init=1).set_output(transform="polars").fit(frame)
    ref = SKKMeans(5, init=C0, n_init=1).set_output(transform="polars").fit(frame)
    _close(km.cluster_centers_, ref.cluster_centers_, np.float64)
    assert list(km.feature_names_in_) == cols
    np.testing.assert_array_equal(km.predict(frame), ref.predict(frame))
    out = km.transform(frame)
    assert isinstance(out, pl.DataFrame) and out.columns == ref.transform(frame).columns
    _close(out.to_numpy(), ref.transform(frame).to_numpy(), np.float64)
    assert isinstance(km.fit_transform(frame), pl.DataFrame)
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        km.predict(frame.select(cols[::-1]))
    with pytest.raises(ValueError, match=r"not numbers: 'word' \(could not convert"):
        KMeans(5).fit(frame.with_columns(pl.lit("x").alias("word")))


def test_callable_init_takes_random_state_as_scikit_learn_passes_it(data):
    """scikit-learn calls init(X, n_clusters, random_state=random_state): a function written
    for it with a keyword-only random_state failed with "takes 2 positional arguments but 3
    were given". Any name in third place keeps working."""
    X, C0 = data
    seen = []

    def keyword_only(X_, k, *, random_state):
        seen.append(type(random_state).__name__)
        return C0

    def any_keywords(X_, k, rs, **kwargs):  # third, by position: not in kwargs
        seen.append(type(rs).__name__)
        return C0

    def third(X_, k, rs):
        seen.append(type(rs).__name__)
        return C0

    for init in (keyword_only, any_keywords, third):
        KMeans(5, init=init, n_init=1, random_state=0).fit(X)
    assert seen == ["RandomState"] * 3


def test_pandas_and_dask_dataframes_record_feature_names(data):
    X, C0 = data
    cols = [f"f{i}" for i in range(6)]
    df = pd.DataFrame(X, columns=cols)
    km = KMeans(5, init=C0).fit(df)
    assert list(km.feature_names_in_) == cols and km.n_features_in_ == 6
    import dask.dataframe as dd

    ddf = dd.from_pandas(df, npartitions=3)
    lazy = KMeans(5, init=C0).fit(ddf)
    assert list(lazy.feature_names_in_) == cols
    _close(lazy.cluster_centers_, km.cluster_centers_, np.float64)
    np.testing.assert_array_equal(lazy.predict(ddf).compute(), km.labels_)
    with pytest.raises(ValueError, match="feature names"):
        lazy.predict(ddf[cols[::-1]])


def test_dask_input_gets_sklearns_feature_name_checks(data, tmp_path):
    """Dask input skipped them: names at predict time and none at fit, or the other way
    round, passed in silence, and mixed str/int column names were taken as no names."""
    import warnings

    import dask.dataframe as dd

    X, C0 = data
    cols = [f"f{i}" for i in range(6)]
    ddf = dd.from_pandas(pd.DataFrame(X, columns=cols), npartitions=3)
    Xd = da.from_array(X, chunks=1000)
    named, plain = KMeans(5, init=C0).fit(ddf), KMeans(5, init=C0).fit(X)
    sk_named = SKKMeans(5, init=C0, n_init=1).fit(pd.DataFrame(X, columns=cols))
    with pytest.warns(UserWarning, match="X does not have valid feature names, but KMeans "
                                         "was fitted with feature names"):
        sk_named.predict(X)  # scikit-learn's own words
    for model, other in ((named, Xd), (plain, ddf)):
        pattern = ("X does not have valid feature names, but KMeans was fitted with feature "
                   "names") if model is named else \
            "X has feature names, but KMeans was fitted without feature names"
        with pytest.warns(UserWarning, match=pattern) as record:
            labels = model.predict(other)
        assert record[0].filename == __file__  # the caller's line
        np.testing.assert_array_equal(labels.compute(), plain.labels_)
    # A Parquet source has names too: matched by name to a named model, by position (with
    # the warning) to a model fitted without names.
    from dask_kmeans.io import open_parquet

    pd.DataFrame(X, columns=cols).to_parquet(tmp_path / "x.parquet")
    with pytest.warns(UserWarning, match="X has feature names, but KMeans was fitted "
                                         "without feature names") as record:
        labels = plain.predict(open_parquet(str(tmp_path / "x.parquet")))
    assert record[0].filename == __file__
    np.testing.assert_array_equal(labels.compute(), plain.labels_)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named.predict(ddf).compute()
        plain.predict(Xd).compute()
        named.predict(open_parquet(str(tmp_path / "x.parquet"))).compute()
        KMeans(5, init=C0).fit(ddf.rename(columns={c: i for i, c in enumerate(cols)}))
    mixed = ddf.rename(columns={"f0": 0})
    for fit in (lambda: KMeans(5, init=C0).fit(mixed), lambda: named.predict(mixed)):
        with pytest.raises(TypeError, match=r"only supported if all input features have "
                                            r"string names.*\['int', 'str'\]"):
            fit()
    with pytest.raises(TypeError, match=r"\['int', 'str'\]"):
        SKKMeans(5, init=C0, n_init=1).fit(mixed.compute())


@pytest.mark.parametrize(("dtypes", "expected"), [
    (["float32", "float32"], np.float32), (["Float32", "Float32"], np.float32),
    (["float32[pyarrow]", "Float32"], np.float32), (["float32", "float64"], np.float64),
    (["Float32", "int32"], np.float64), (["Int64", "boolean"], np.float64)])
def test_pandas_and_dask_dataframes_of_one_dtype_give_one_dtype(dtypes, expected):
    """pandas' nullable Float32 columns gave float64 centres from a pandas DataFrame and
    float32 from a dask DataFrame of it."""
    import dask.dataframe as dd

    X = np.random.default_rng(0).normal(size=(60, 2)) * 5
    df = pd.DataFrame({f"f{j}": pd.Series(X[:, j] > 0 if t == "boolean" else
                                          X[:, j].round() if "Int" in t else X[:, j]).astype(t)
                       for j, t in enumerate(dtypes)})
    for frame in (df, dd.from_pandas(df, npartitions=2)):
        km = KMeans(2, random_state=0).fit(frame)
        assert km.cluster_centers_.dtype == expected, (type(frame), dtypes)
        assert np.asarray(km.transform(frame)).dtype == expected


def test_sparse_input_is_refused_as_the_docs_say():
    import scipy.sparse as sp

    X = sp.random(20, 3, density=0.5, format="csr", random_state=0)
    with pytest.raises(TypeError, match="Sparse data was passed for X, but dense data is "
                                        "required"):
        KMeans(2).fit(X)
    km = KMeans(2, random_state=0).fit(X.toarray())
    with pytest.raises(TypeError, match="Sparse data"):
        km.predict(X)


def test_return_distance_is_not_routed_metadata():
    """predict(return_distance=...) showed up in metadata routing, with a
    set_predict_request method, which scikit-learn's KMeans has not."""
    import sklearn

    with sklearn.config_context(enable_metadata_routing=True):
        routing = KMeans(2).get_metadata_routing()
        assert "return_distance" not in str(routing.predict)
        assert not hasattr(KMeans(2), "set_predict_request")
        assert hasattr(KMeans(2), "set_fit_request")  # sample_weight is metadata


def test_non_numeric_column_is_named():
    df = pd.DataFrame({"age": [1.0, 2.0, 3.0], "city": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="'city'"):
        KMeans(2).fit(df)
    import dask.dataframe as dd

    with pytest.raises(ValueError, match="'city'"):
        KMeans(2).fit(dd.from_pandas(df, npartitions=1))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_clusters": 0}, "n_clusters"),
        ({"n_clusters": 2.5}, "n_clusters"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"n_init": 0}, "n_init"),
        ({"init": "kmeans"}, "init"),
        ({"split_every": 1}, "split_every"),
        ({"persist": "yes"}, "persist"),
        ({"persist": 1.0}, "persist"),  # == True, and was taken for it
        ({"persist": 0}, "persist"),
        ({"oversampling_factor": 0}, "oversampling_factor"),
        ({"init_rounds": 0}, "init_rounds"),
    ],
)
def test_bad_parameters_are_named(params, match):
    X = blobs(n=50, d=2, k=2)
    with pytest.raises(ValueError, match=match):
        KMeans(**{"n_clusters": 2, **params}).fit(X)


def test_bad_inputs():
    X = blobs(n=50, d=2, k=2)
    # Ragged or non-numeric centres, given or from a callable: NumPy's words alone before.
    with pytest.raises(ValueError, match=r"initial centers are not an array of shape "
                                         r"\(n_clusters, n_features\) = \(2, 2\): rows of"):
        KMeans(2, init=[[0.0, 0.0], [1.0]]).fit(X)
    with pytest.raises(ValueError, match="initial centers the init callable returned are not"):
        KMeans(2, init=lambda X, k, rs: [[0.0, 0.0], [1.0]], n_init=1).fit(X)
    with pytest.raises(ValueError, match="the init callable returned must be numbers; got an "
                                         "array of dtype object"):
        KMeans(2, init=lambda X, k, rs: [[0.0, object()], [1.0, 2.0]], n_init=1).fit(X)
    with pytest.raises(ValueError, match="must be numbers; got an array of dtype <U"):
        KMeans(2, init=[["0", "0"], ["1", "1"]]).fit(X)
    from decimal import Decimal

    km = KMeans(2, init=np.array([[Decimal(0), Decimal(0)], [Decimal(1), Decimal(1)]]),
                max_iter=1).fit(X)
    assert km.cluster_centers_.dtype == np.float64
    with pytest.raises(ValueError, match="n_samples=50 should be >= n_clusters=51"):
        KMeans(51).fit(X)
    with pytest.raises(ValueError, match=r"shape of the initial centers \(2, 3\)"):
        KMeans(2, init=np.zeros((2, 3))).fit(X)
    with pytest.raises(ValueError, match="sample_weight"):
        KMeans(2).fit(X, sample_weight=np.ones(49))
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KMeans(2).fit(bad)
    with pytest.raises(ValueError, match="NaN or infinity"):
        KMeans(2, init=X[:2]).fit(da.from_array(bad, chunks=10))
    with pytest.raises(ValueError, match="2-D"):
        KMeans(2).fit(da.ones(10, chunks=5))


def test_fewer_distinct_points_than_clusters_warns_and_stays_finite():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 10, axis=0)
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        km = KMeans(3, init="random", n_init=1, random_state=0).fit(X)
    assert np.all(np.isfinite(km.cluster_centers_))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("persist", [None, True, False])
@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random", "array"])
def test_fewer_distinct_rows_than_clusters_converge_at_once(metric, persist, init,
                                                           monkeypatch):
    """4 distinct rows (coded or categorical data), 6 clusters: the empty clusters were
    moved onto rows that sit on a centre at every iteration, took those rows on the tie,
    left the other twin empty, and the fit ran to max_iter (300 iterations, two passes
    each, where scikit-learn takes 1-8)."""
    rng = np.random.default_rng(15)
    X = rng.normal(size=(4, 3))[rng.integers(0, 4, 2000)] + 0.5
    C0 = X[:6] if init == "array" else init  # rows 0-5: repeated rows among them
    Xin = X if persist is None else da.from_array(X, chunks=(300, 3))
    kw = {} if persist is None else {"persist": persist}
    started, initial = [], KMeans._initial_centers
    monkeypatch.setattr(KMeans, "_initial_centers",
                        lambda *a: started.append(initial(*a)) or started[-1])
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        km = KMeans(6, init=C0, n_init=1, random_state=0, metric=metric, **kw).fit(Xin)
    assert km.n_iter_ <= 3
    lloyd = ref.lloyd if metric == "euclidean" else ref.spherical_lloyd
    C, labels, inertia, n_iter = lloyd(X, started[0])
    _close(km.cluster_centers_, C, np.float64)
    assert km.n_iter_ == n_iter
    # Twin centres may differ by rounding, which then decides between them: each row's
    # centre is the same point.
    _close(km.cluster_centers_[np.asarray(km.labels_)], C[labels], np.float64)
    assert km.inertia_ == pytest.approx(inertia, abs=1e-9)


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lazy", [False, True])
def test_duplicate_points_warn_although_the_means_round(init, dtype, lazy):
    """With points whose mean of 50 copies is not the point to the last bit, the empty
    cluster's centre differed from its twin by ~1e-16 and the warning was not given."""
    X = np.repeat(np.random.default_rng(0).normal(size=(2, 3)), 50, axis=0).astype(dtype)
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(2\) found smaller than "
                                                r"n_clusters \(3\)"):
        km = KMeans(3, init=init, random_state=0).fit(da.from_array(X, chunks=30) if lazy
                                                      else X)
    assert np.all(np.isfinite(km.cluster_centers_))


@pytest.mark.parametrize("lazy", [False, True])
def test_kmeans_parallel_init_warns_of_repeated_centres(lazy):
    """The public initialiser gave repeated centres without a word (fit warns)."""
    from dask_kmeans import kmeans_parallel_init
    from dask_kmeans._kernels import count_distinct

    X = np.repeat(np.random.default_rng(0).normal(size=(2, 3)), 50, axis=0)
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(2\) found smaller than "
                                                r"n_clusters \(3\)") as record:
        C = kmeans_parallel_init(da.from_array(X, chunks=30) if lazy else X, 3, random_state=0)
    assert record[0].filename == __file__, "the warning points at the caller"
    assert count_distinct(C) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kmeans_parallel_init(X, 2, random_state=0)  # as many distinct rows: no warning


def test_count_distinct_tells_rounding_from_separation():
    from dask_kmeans._kernels import count_distinct

    rng = np.random.default_rng(1)
    c = rng.normal(size=(3000, 4)) * 1e4
    assert count_distinct(c) == 3000
    twins = np.vstack([c, c[:5] * (1 + 2e-16), c[7:8]])  # a unit in the last place
    assert count_distinct(twins) == 3000
    # With the origins their sums were taken about: the rounding of a mean of copies,
    # up to 1e-10 of the distance from the origin, is no distinction either.
    at = c + 1e3
    far_twins = np.vstack([c, c[:5] + 5e-11 * (c[:5] - at[:5])])
    assert count_distinct(far_twins) == 3005
    assert count_distinct(far_twins, np.vstack([at, at[:5]])) == 3000
    # float32 centres far from the origin, one unit apart: distinct.
    assert count_distinct((1e4 + np.arange(10.0)[:, None] * np.ones((10, 3)))
                          .astype(np.float32)) == 10
    assert count_distinct(c[:1]) == 1
    # Two centres 0.05 apart near the origin are two, whatever centre lies far away (the
    # largest norm, 1e9, made them one, and fit warned of duplicate points).
    assert count_distinct(np.array([[0.0, 0.0], [0.05, 0.0], [1e9, 1e9]])) == 3
    assert count_distinct(np.array([[1e9, 1e9], [1e9 * (1 + 1e-15), 1e9]])) == 1


@pytest.mark.parametrize("standardize", [True, False])
def test_a_failed_refit_leaves_the_fitted_model_as_it_was(standardize):
    """The scaling of a refit that then failed (NaN found by the first pass) replaced the
    model's, or was deleted, and the old centres predicted garbage without an error."""
    X = np.random.default_rng(0).normal(size=(200, 3)) * [1, 100, 1000]
    km = KMeans(3, random_state=0, standardize=True).fit(X)
    state = {k: v for k, v in vars(km).items() if k.endswith("_")}
    before = km.predict(X)
    bad = X[:, :2].copy() if standardize else X.copy()  # other features, too
    bad[3, 0] = np.nan
    km.set_params(standardize=standardize, n_clusters=4)
    with pytest.raises(ValueError, match="NaN or infinity"):
        km.fit(da.from_array(bad, chunks=50))
    assert {k for k in vars(km) if k.endswith("_")} == set(state)
    for name, value in state.items():
        assert getattr(km, name) is value
    np.testing.assert_array_equal(km.set_params(standardize=True).predict(X), before)


def test_verbose_logs_one_line_per_iteration(data, caplog):
    X, C0 = data
    with caplog.at_level(logging.INFO, logger="dask_kmeans"):
        km = KMeans(5, init=C0, verbose=1, max_iter=3, tol=0).fit(X)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration")]
    assert len(lines) == km.n_iter_ == 3
    assert "inertia" in lines[0] and "center shift" in lines[0]


def test_verbose_tells_empty_clusters_from_relocated_ones(caplog):
    """Empty clusters that stay (every row sits on a centre) are not called relocated."""
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0]]), 5, axis=0)
    C0 = np.array([[0.0, 1.0], [2.0, 3.0], [0.0, 1.0]])
    with caplog.at_level(logging.INFO, logger="dask_kmeans"), \
            pytest.warns(ConvergenceWarning, match="distinct clusters"):
        KMeans(3, init=C0, verbose=1).fit(X)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration")]
    assert len(lines) == 1 and "1 empty clusters (0 relocated)" in lines[0], lines


def test_on_a_process_local_cluster(client, data):
    X, C0 = data
    Xd = da.from_array(X, chunks=(1000, 6))
    km = KMeans(5, init=C0, split_every=2).fit(Xd)
    local = KMeans(5, init=C0).fit(X)
    _close(km.cluster_centers_, local.cluster_centers_, np.float64)
    np.testing.assert_array_equal(km.labels_.compute(), local.labels_)
    assert km.n_iter_ == local.n_iter_
    # numpy input on the cluster, too
    on_cluster = KMeans(5, init=C0).fit(X)
    _close(on_cluster.cluster_centers_, local.cluster_centers_, np.float64)


def test_refitting_the_same_weighted_data_submits_no_key_twice(client):
    """A persisted fit's labels keep its weight keys on the scheduler, fused into other
    tasks; fitting the same dask weights again (not persisted, or scoring them) sent the
    same keys with other tasks: distributed's "Detected different `run_spec`" warning,
    which it says "can cause failures and deadlocks"."""
    seen = []

    class Spy(logging.Handler):
        def emit(self, record):
            if "run_spec" in record.getMessage():
                seen.append(record.getMessage()[:200])

    X = blobs(n=3000, d=3, k=4, seed=2)
    w = np.random.default_rng(2).uniform(0, 2, len(X))
    spy = Spy()
    logger = logging.getLogger("distributed.scheduler")
    logger.addHandler(spy)
    try:
        models = []
        for persist in (True, False, True):
            Xd, wd = da.from_array(X, chunks=500), da.from_array(w, chunks=500)
            km = KMeans(4, n_init=1, max_iter=3, random_state=3, standardize=True,
                        persist=persist).fit(Xd, sample_weight=wd)
            km.score(Xd, sample_weight=wd)
            models.append(km)  # their labels stay on the cluster
        assert np.allclose(models[0].cluster_centers_, models[1].cluster_centers_)
    finally:
        logger.removeHandler(spy)
    assert seen == []


def test_one_exchange_per_iteration_on_a_cluster(client, monkeypatch):
    """Persisted data: one round of actor calls per iteration (or, without actors, one gather)."""
    from dask_kmeans import _passes

    X = np.random.default_rng(0).normal(size=(4000, 6))
    Xd = client.persist(da.from_array(X, chunks=1000))
    gathers, rounds = [], []
    original_gather, original_sum = type(client).gather, _passes.sum_in_order

    def counting_gather(self, *args, **kwargs):
        gathers.append(1)
        return original_gather(self, *args, **kwargs)

    def counting_sum(*args, **kwargs):
        rounds.append(1)
        return original_sum(*args, **kwargs)

    monkeypatch.setattr(type(client), "gather", counting_gather)
    monkeypatch.setattr(_passes, "sum_in_order", counting_sum)

    def counts(max_iter):
        gathers.clear()
        rounds.clear()
        km = KMeans(5, init=X[:5], tol=0, max_iter=max_iter).fit(Xd)
        assert km.n_iter_ == max_iter
        return len(gathers), len(rounds), km

    (g2, r2, _), (g6, r6, with_actors) = counts(2), counts(6)
    assert (g6 - g2, r6 - r2) == (0, 4), "one round of actor calls per iteration, no gather"

    # Without actors (as after a worker loss): one gather of the tree sum per iteration,
    # and the same fit (the actors' bounded passes add the rows in another order).
    monkeypatch.setattr(_passes.Passes, "_actors", lambda self: None)
    (g2, r2, _), (g6, r6, with_futures) = counts(2), counts(6)
    assert (g6 - g2, r6 - r2) == (4, 0)
    np.testing.assert_allclose(with_actors.cluster_centers_, with_futures.cluster_centers_,
                               rtol=1e-12, atol=1e-14)
    assert with_actors.inertia_ == pytest.approx(with_futures.inertia_, rel=1e-12)


def test_actor_passes_add_chunks_in_order_wherever_they_live(client):
    """Chunks spread over workers in any order: the actor pass equals the futures pass."""
    from distributed import wait

    from dask_kmeans._passes import Passes

    X = da.from_array(np.random.default_rng(1).normal(size=(7000, 4)), chunks=(1000, 4))
    w = da.from_array(np.random.default_rng(2).uniform(0.5, 2, 7000), chunks=1000)
    X, w = client.persist([X, w])
    wait([X, w])
    centers = np.random.default_rng(3).normal(size=(6, 4))
    actors = Passes(X, w, split_every=2)
    assert actors.on_futures
    by_actors = actors.lloyd(centers, True)
    assert actors._groups and sum(len(idx) for _, idx in actors._groups) == 7
    futures = Passes(X, w, split_every=2)
    futures._groups = False  # as after a failed actor call
    np.testing.assert_array_equal(by_actors, futures.lloyd(centers, True))
    # The same for cosine (a first pass compares every row, adding them in row order).
    unit = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    cos_actors, cos_futures = Passes(X, w, metric="cosine"), Passes(X, w, metric="cosine")
    cos_futures._groups = False
    np.testing.assert_array_equal(cos_actors.lloyd(unit, False), cos_futures.lloyd(unit, False))


def test_one_set_of_actors_serves_every_initialisation_and_run_of_a_fit(client, monkeypatch):
    """n_init runs of k-means|| and Lloyd share one Passes (one ChunkGroup per worker),
    and give what separate ones give: each initialisation starts from no state, and the
    labels are the best run's."""
    from distributed import wait

    from dask_kmeans import _init, _passes

    rng = np.random.default_rng(4)
    X = da.from_array(rng.normal(size=(9000, 5)) + rng.normal(scale=3, size=(6, 5))[
        rng.integers(6, size=9000)], chunks=(3000, 5))
    X = client.persist(X)
    wait(X)
    made = []
    original = _passes.Passes._actors

    def spy(self):
        if self._groups is None:
            made.append(self)
        return original(self)

    monkeypatch.setattr(_passes.Passes, "_actors", spy)
    shared = KMeans(6, n_init=3, random_state=5).fit(X)
    assert len(made) == 1, "one set of actors for 3 initialisations and 3 Lloyd runs"
    # The same three runs, each with fresh actors: the best of them is the shared fit's.
    rs = np.random.RandomState(5)
    runs = []
    for _ in range(3):
        centres = _init.kmeans_parallel(X, None, 6, rs, keep_state=True)
        runs.append(KMeans(6, init=centres, n_init=1).fit(X))
    best = min(runs, key=lambda m: m.inertia_)
    np.testing.assert_allclose(shared.cluster_centers_, best.cluster_centers_, rtol=1e-10)
    assert shared.inertia_ == pytest.approx(best.inertia_, rel=1e-12)
    # Only the best run is labelled (after the last run): its labels, not the last run's.
    assert len({round(m.inertia_, 6) for m in runs}) > 1, "the runs differ"
    np.testing.assert_array_equal(shared.labels_.compute(), best.labels_.compute())
    np.testing.assert_array_equal(shared.labels_.compute(), shared.predict(X).compute())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_labels_agree_with_predict_on_float32_near_ties(metric, client):
    """Rows about 8 directions with noise 1e-3, 40 clusters: a row's nearest centres are
    closer than float32 scores can tell. labels_ (the last bounded pass in this process,
    or an assignment on the cluster) and predict (a plain pass) both take the exact
    nearest centre; they used to disagree on 400-760 of the 40,000 rows."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 16))
    X = (base[rng.integers(8, size=40_000)]
         + 1e-3 * rng.normal(size=(40_000, 16))).astype(np.float32)
    km = KMeans(40, metric=metric, random_state=0).fit(X)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    Xd = da.from_array(X, chunks=(7_000, 16))
    lazy = KMeans(40, metric=metric, init=km.cluster_centers_, n_init=1, max_iter=1,
                  persist=False).fit(Xd)
    np.testing.assert_array_equal(lazy.labels_.compute(), lazy.predict(X))


@pytest.mark.parametrize("kw", [{}, {"standardize": True, "persist": False}])
def test_numpy_input_goes_to_the_workers_once(kw, local_cluster_client):
    """NumPy input on a cluster is persisted there in row chunks, once ("Sending large
    graph" at most once: the graph lets the scheduler rebuild a dead worker's chunks). With
    standardize=True and persist=False the graph holding the array went to the workers at
    every pass: 20 warnings and 3.2x the time for 2M x 32 rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300_000, 8))  # 19 MB: above distributed's 10 MB warning
    w = rng.uniform(0.5, 2.0, size=len(X))
    with warnings.catch_warnings(record=True) as caught, local_cluster_client.as_current():
        warnings.simplefilter("always")
        km = KMeans(5, random_state=0, max_iter=5, tol=0, **kw).fit(X, sample_weight=w)
    assert len([c for c in caught if "large graph" in str(c.message)]) <= 1
    local = KMeans(5, random_state=0, max_iter=5, tol=0, **kw).fit(X, sample_weight=w)
    np.testing.assert_allclose(km.cluster_centers_, local.cluster_centers_, rtol=1e-9)
    np.testing.assert_array_equal(km.labels_, local.labels_)


def test_standardised_numpy_input_beyond_the_budget_goes_to_the_workers_once(
        local_cluster_client, monkeypatch):
    """persist="auto" with data beyond the memory budget persists neither the scaled chunks
    nor (before) the raw ones: the graph holding the array went to the workers at every
    pass (30 large-graph warnings, against 1; from a review)."""
    from dask_kmeans import _runtime as R

    monkeypatch.setattr(R, "memory_budget", lambda client=None: 1e6)
    X = np.random.default_rng(0).normal(size=(300_000, 8))  # 19 MB
    with warnings.catch_warnings(record=True) as caught, local_cluster_client.as_current():
        warnings.simplefilter("always")
        km = KMeans(5, standardize=True, random_state=0, max_iter=5, tol=0).fit(X)
    assert len([c for c in caught if "large graph" in str(c.message)]) <= 1
    local = KMeans(5, standardize=True, random_state=0, max_iter=5, tol=0).fit(X)
    np.testing.assert_allclose(km.cluster_centers_, local.cluster_centers_, rtol=1e-9)


# The graph holding the array goes to the cluster for the moments, then for the persist.
@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")
def test_standardised_numpy_input_is_held_once_on_the_workers(local_cluster_client):
    """standardize=True persists the scaled chunks; the raw chunks are persisted too only
    with persist=False (where they are all the workers hold). Persisting both kept two
    copies of the data on the workers for the whole fit."""
    client = local_cluster_client
    X = np.random.default_rng(0).normal(size=(200_000, 8))
    held = []

    def in_memory():  # bytes the workers hold, as the scheduler counts them
        return client.run_on_scheduler(lambda dask_scheduler: sum(
            ts.nbytes for ts in dask_scheduler.tasks.values() if ts.state == "memory"))

    class Watch(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("iteration ") and not held:
                held.append(in_memory() - before)  # less what other tests left

    logger = logging.getLogger("dask_kmeans")
    watch = Watch()
    logger.addHandler(watch)
    try:
        for persist in (True, False):
            held.clear()
            before = in_memory()
            with client.as_current():
                KMeans(4, standardize=True, persist=persist, random_state=0, max_iter=2,
                       verbose=True).fit(X)
            assert held and held[0] < 1.3 * X.nbytes, (persist, held, X.nbytes)
    finally:
        logger.removeHandler(watch)


def test_public_names_match_the_lazy_exports():
    import dask_kmeans

    assert set(dask_kmeans.__all__) == set(dask_kmeans._EXPORTS) | {"__version__"}
    for name in dask_kmeans.__all__:
        assert getattr(dask_kmeans, name) is not None


def test_numpy_fit_works_inside_a_running_event_loop():
    """As in a notebook: the local passes need no event loop of their own."""
    import asyncio

    X = np.random.default_rng(5).normal(size=(3000, 3))

    async def main():
        return KMeans(4, random_state=0).fit(X)

    km = asyncio.run(main())
    np.testing.assert_array_equal(km.labels_, km.predict(X))


def test_a_failed_refit_keeps_the_input_url_and_a_complex_init_is_refused(tmp_path):
    """A refit on a Parquet source that failed still set the model's input URL (saved with
    the model); a complex init array lost its imaginary parts with only a warning."""
    from dask_kmeans.io import open_parquet

    X = np.random.default_rng(0).normal(size=(30, 2))
    km = KMeans(2, random_state=0).fit(X)
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_parquet(tmp_path / "one.parquet")
    with pytest.raises(ValueError, match="n_samples=1 should be >= n_clusters=2"):
        km.fit(open_parquet(str(tmp_path / "one.parquet")))
    assert km._input_url is None
    with pytest.raises(ValueError, match="The initial centers are complex"):
        KMeans(2, init=X[:2] + 1j).fit(X)


@pytest.mark.parametrize("case", ["sample", "n_init", "init_rounds", "distinct",
                                  "distinct fit_predict", "distinct fit_transform"])
def test_fit_warnings_point_at_the_callers_line(case, monkeypatch):
    """They pointed at estimator.py (fit calls _fit): not silenced by a filter on the
    user's module, and shown once for fits anywhere."""
    import warnings

    from dask_kmeans import _init

    monkeypatch.setattr(_init, "KMEANS_PP_MAX_ROWS", 500)
    X = np.random.default_rng(0).normal(size=(2000, 3))
    fits = {
        "sample": lambda: KMeans(4, init="k-means++", max_iter=2, random_state=0).fit(
            da.from_array(X, chunks=500)),
        "n_init": lambda: KMeans(2, init=X[:2], n_init=3).fit(X),
        "init_rounds": lambda: KMeans(2, init="random", init_rounds=3, n_init=1).fit(X),
        "distinct": lambda: KMeans(3, random_state=0).fit(np.repeat(X[:2], 50, axis=0)),
        # (these pointed at estimator.py, which calls fit)
        "distinct fit_predict": lambda: KMeans(3, random_state=0).fit_predict(
            np.repeat(X[:2], 50, axis=0)),
        "distinct fit_transform": lambda: KMeans(3, random_state=0).fit_transform(
            np.repeat(X[:2], 50, axis=0)),
    }
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fits[case]()
    assert record and all(w.filename == __file__ for w in record), \
        [(w.filename, str(w.message)[:60]) for w in record]


@pytest.mark.parametrize("lazy", [False, True])
def test_clusters_that_end_empty_are_warned_of_as_scikit_learn_does(lazy):
    """Clusters that ended empty kept their initial centres, distinct ones, and the fit
    passed in silence where scikit-learn (which counts distinct labels) warns: 600 rows of
    3 distinct points, k = 5; or 3 rows of positive weight among 600, k = 5."""
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(0)
    points = np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]])
    X = points[np.repeat([0, 1, 2], [300, 200, 100])]
    C = np.vstack([points, [[20.0, 20.0], [-20.0, 20.0]]])
    Y = rng.normal(size=(600, 2))
    w = np.zeros(600)
    w[:3] = 1.0
    for data, init, sw in ((X, C, None), (Y, Y[:5], w)):
        wrap = (lambda a: da.from_array(a, chunks=250)) if lazy else (lambda a: a)
        with pytest.warns(ConvergenceWarning, match=r"Number of distinct clusters \(3\) found "
                                                    r"smaller than n_clusters \(5\)"):
            KMeans(5, init=init, n_init=1).fit(wrap(data),
                                               sample_weight=None if sw is None else wrap(sw))
    with warnings.catch_warnings():  # five clusters of rows: no warning
        warnings.simplefilter("error")
        KMeans(5, init=Y[[0, 100, 200, 300, 400]], n_init=1).fit(wrap(Y))


@pytest.mark.parametrize("scale", [1e19, 1e-25])
@pytest.mark.parametrize("lazy", [False, True])
def test_float32_transform_keeps_distances_that_float32_holds(scale, lazy):
    """transform squared float32 rows in float32: distances of 6e17 to 6e19 came out inf or
    0, of 1e-25 all 0, where fit, predict and score measured them exactly."""
    X = (blobs(n=3000, d=3, k=4) * scale).astype(np.float32)
    km = KMeans(4, init=X[[0, 1, 2, 3]], n_init=1, max_iter=3).fit(X)
    got = km.transform(da.from_array(X, chunks=1000) if lazy else X)
    got = got.compute() if lazy else got
    assert got.dtype == np.float32
    exact = np.sqrt(ref.sq_distances(X.astype(np.float64),
                                     km.cluster_centers_.astype(np.float64)))
    np.testing.assert_allclose(got, exact, rtol=1e-6)
