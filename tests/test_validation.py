"""Input checks of dask input: sample weights, non-finite rows in new data."""

from __future__ import annotations

import re
import warnings

import dask
import dask.array as da
import numpy as np
import pytest

from dask_kmeans import KMeans, sweep
from tests.conftest import blobs
from tests.test_estimator import _CountComputes


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


def _weights_cases():
    rng = np.random.default_rng(7)
    w = rng.uniform(0.5, 2, 300)
    negative, nan = w.copy(), w.copy()
    negative[100] = -50.0
    nan[160] = np.nan
    return [
        (negative, r"Negative values in sample_weight: 1 of the 70 rows from row 70 "
                   r"\(first at row 100\)"),
        (nan, r"sample_weight contains NaN or infinity \(first at row 160\)"),
        (np.zeros(300), "Sample weights must contain at least one non-zero number"),
    ]


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("params", [
    dict(init="array"), dict(init="array", persist=True), dict(init="array", standardize=True),
    dict(init="k-means||"), dict(init="k-means++"), dict(init="random"),
])
def test_dask_weights_are_checked_as_numpy_weights_are(case, params):
    w, match = _weights_cases()[case]
    X = blobs(n=300, d=2, k=3)
    params = {**params, "init": X[[0, 150, 299]]} if params["init"] == "array" else params
    Xd = da.from_array(X, chunks=70)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the error alone, no warning first
        with pytest.raises(ValueError, match=match):
            KMeans(3, random_state=0, **params).fit(Xd, sample_weight=da.from_array(w, chunks=70))
    # NumPy X with dask weights: checked at once, with NumPy's messages
    with pytest.raises(ValueError, match=match.replace("the 70 rows from row 70", "300 rows")):
        KMeans(3, random_state=0, **params).fit(X, sample_weight=da.from_array(w, chunks=70))
    with pytest.raises(ValueError, match=match.replace("the 70 rows from row 70", "300 rows")):
        KMeans(3, random_state=0, **params).fit(X, sample_weight=w)


@pytest.mark.parametrize("case", range(3))
def test_dask_weights_are_checked_by_score_and_sweep(case):
    w, match = _weights_cases()[case]
    X = blobs(n=300, d=2, k=3)
    Xd, wd = da.from_array(X, chunks=70), da.from_array(w, chunks=70)
    km = KMeans(3, init=X[[0, 150, 299]]).fit(X)
    with pytest.raises(ValueError, match=match):
        km.score(Xd, sample_weight=wd)
    with pytest.raises(ValueError, match=match):
        sweep(Xd, [2, 3], sample_weight=wd, random_state=0)


def test_valid_dask_weights_cost_no_extra_compute():
    X = blobs(n=300, d=2, k=3)
    w = np.random.default_rng(0).uniform(0.5, 2, 300)
    Xd, wd = da.from_array(X, chunks=70), da.from_array(w, chunks=70)
    counts = []
    for weights in (None, wd):
        with dask.config.set(scheduler="threads"), _CountComputes() as cc:
            KMeans(3, init=X[[0, 150, 299]], tol=0, max_iter=3, persist=False).fit(
                Xd, sample_weight=weights)
        counts.append(cc.n)
    assert counts[0] == counts[1]
    a = KMeans(3, init=X[[0, 150, 299]]).fit(Xd, sample_weight=wd)
    b = KMeans(3, init=X[[0, 150, 299]]).fit(X, sample_weight=w)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-7)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_score_transform_refuse_dask_rows_with_nan_or_inf(metric, bad):
    X = blobs(n=200, d=3, k=2) + 1.0
    km = KMeans(2, random_state=0, metric=metric).fit(X)
    Xn = X.copy()
    Xn[73, 1] = bad
    Xn[75] = bad
    Xd = da.from_array(Xn, chunks=30)  # rows 73 and 75 are in the third chunk
    # The count is the chunk's, and says so (it read as the total: 1 row(s) of 2 in 2 chunks)
    match = (r"Input X contains NaN or infinity: 2 row\(s\) among rows 60-89, one chunk of "
             r"the input \(rows 73, 75\)")
    with pytest.raises(ValueError, match=match):
        km.predict(Xd).compute()
    with pytest.raises(ValueError, match=match):
        km.predict(Xd, return_distance=True)[1].compute()
    with pytest.raises(ValueError, match=match):
        km.score(Xd)
    with pytest.raises(ValueError, match=match):
        km.transform(Xd).compute()
    with pytest.raises(ValueError, match="NaN|infinity"):  # as NumPy input is refused
        km.predict(Xn)
    with pytest.raises(ValueError, match="NaN|infinity"):
        km.transform(Xn)
    # finite rows far enough for their squared distance to overflow are still labelled
    far = np.full((4, 3), 1e200)
    np.testing.assert_array_equal(km.predict(da.from_array(far, chunks=2)).compute(),
                                  km.predict(far))


def test_parameters_another_leaves_without_effect_are_refused_or_warned():
    """resume without a checkpoint cannot resume anything: refused. k-means|| options with
    another init warn that they are ignored (as n_init with an array init does), and the
    defaults never warn."""
    X = blobs(n=200, d=2, k=3)
    with pytest.raises(ValueError, match="'resume' .* checkpoint is None"):
        KMeans(3, resume=True, random_state=0).fit(X)
    for init, shown in (("random", "'random'"), ("k-means++", "'k-means++'"),
                        (X[[0, 100, 199]], "an array")):
        with pytest.warns(RuntimeWarning, match=rf"oversampling_factor=3.0 and init_rounds=2 "
                                                rf"only apply to init='k-means\|\|': ignored "
                                                rf"with init={re.escape(shown)}"):
            KMeans(3, init=init, oversampling_factor=3.0, init_rounds=2, n_init=1,
                   random_state=0).fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            KMeans(3, init=init, n_init=1, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KMeans(3, oversampling_factor=3.0, init_rounds=2, random_state=0).fit(X)


def _weights_part(i):
    """One partition of a dask Series of weights made on the worker (nothing in the graph)."""
    import pandas as pd

    rng = np.random.default_rng(i)
    return pd.Series(rng.uniform(0.5, 2.0, 20_000), index=np.arange(20_000) + 20_000 * i,
                     name="w")


def test_dask_series_weights_stay_lazy_and_fit_as_numpy_weights():
    """A dask Series of weights was computed whole on the driver and put into the graph
    (np.asarray): it is converted with to_dask_array instead, as a dask DataFrame X is."""
    import cloudpickle
    import dask.dataframe as dd
    import pandas as pd

    from dask_kmeans import _validation as V

    ws = dd.from_map(_weights_part, range(3))
    w = np.concatenate([_weights_part(i).to_numpy() for i in range(3)])
    X = blobs(n=60_000, d=2, k=3)
    Xd = da.from_array(X, chunks=20_000)
    checked = V.check_sample_weight(ws, Xd)
    assert isinstance(checked, da.Array) and checked.chunks == (Xd.chunks[0],)
    # The 480 KB of weights are not in the graph: only the function making them is.
    assert len(cloudpickle.dumps(dict(checked.__dask_graph__()))) < 50_000
    np.testing.assert_array_equal(checked.compute(), w)
    init = X[[0, 100, 200]]
    a = KMeans(3, init=init, n_init=1).fit(Xd, sample_weight=ws)
    b = KMeans(3, init=init, n_init=1).fit(X, sample_weight=w)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-7)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-7)
    # A column of the same dask DataFrame as X, the usual case.
    df = pd.DataFrame({"a": X[:300, 0], "b": X[:300, 1], "w": w[:300]})
    ddf = dd.from_pandas(df, npartitions=3)
    a = KMeans(3, init=init, n_init=1).fit(ddf[["a", "b"]], sample_weight=ddf["w"])
    b = KMeans(3, init=init, n_init=1).fit(df[["a", "b"]], sample_weight=df["w"])
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-7)


def test_dask_series_weights_are_checked_and_other_collections_named():
    import dask.bag as db
    import dask.dataframe as dd
    import pandas as pd

    X = blobs(n=100, d=2, k=2)
    Xd = da.from_array(X, chunks=25)
    missing = dd.from_pandas(pd.Series(pd.array([1.0] * 60 + [None] + [1.0] * 39,
                                                dtype="Float64")), npartitions=4)
    with pytest.raises(ValueError, match=r"sample_weight contains NaN or infinity \(first at "
                                         r"row 60\)"):
        KMeans(2, init=X[:2], n_init=1).fit(Xd, sample_weight=missing)
    text = dd.from_pandas(pd.Series(["1"] * 100), npartitions=2)
    with pytest.raises(ValueError, match="sample_weight must be numeric; got a dask Series "
                                         "of dtype"):
        KMeans(2).fit(Xd, sample_weight=text)
    for name, X_, w in (("sample_weight", Xd, dask.delayed(np.ones)(100)),
                        ("sample_weight", Xd, db.from_sequence([1.0] * 100)),
                        ("X", dask.delayed(np.ones)((100, 2)), None)):
        with pytest.raises(ValueError, match=rf"{name} is a dask (Delayed|Bag), which KMeans "
                                             r"cannot read without computing it"):
            KMeans(2).fit(X_, sample_weight=w)
    # A dask Series as X is named as one (it said "Expected a 2-D array", after a pass
    # computing its partition lengths).
    series = dd.from_pandas(pd.Series(np.arange(100.0)), npartitions=2)
    fitted = KMeans(2).fit(Xd)
    with dask.config.set(scheduler=lambda *a, **k: pytest.fail("computed")):
        for call in (lambda: KMeans(2).fit(series), lambda: fitted.predict(series)):
            with pytest.raises(ValueError, match=r"X is a dask Series, one column: KMeans needs "
                                                 r"2-D input .*series.to_frame\(\)"):
                call()


class _FakeXarray:
    """Stands for a dask-backed xarray.DataArray (xarray is not installed): ``.data``."""

    def __init__(self, data):
        self.data = data

    def __dask_graph__(self):
        return self.data.__dask_graph__()


_FakeXarray.__module__ = "xarray.core.dataarray"


def test_dask_backed_xarray_is_read_through_its_data():
    X = blobs(n=100, d=2, k=2)
    w = np.linspace(0.5, 1.5, 100)
    a = KMeans(2, init=X[:2], n_init=1).fit(
        _FakeXarray(da.from_array(X, chunks=25)),
        sample_weight=_FakeXarray(da.from_array(w, chunks=25)))
    b = KMeans(2, init=X[:2], n_init=1).fit(X, sample_weight=w)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-7)


@pytest.mark.parametrize("dtype", ["Int64", "Float64", "boolean"])
def test_dask_dataframe_with_nullable_dtypes_and_missing_values(dtype):
    """pandas' nullable dtypes gave to_dask_array an object array, whose pd.NA failed the cast
    to float (TypeError: float() argument must be ... not 'NAType'): the columns are cast
    first, so a missing value is NaN and refused as in any dask input, in fit and predict."""
    import dask.dataframe as dd
    import pandas as pd

    from dask_kmeans import _validation as V

    n = 200
    values = {"Int64": np.arange(n) % 7, "Float64": np.arange(n) / 3.0,
              "boolean": np.arange(n) % 3 == 0}[dtype]
    full = pd.DataFrame({"a": pd.array(values, dtype=dtype), "b": np.arange(n, dtype=float)})
    gaps = full.copy()
    gaps.loc[[5, 50], "a"] = pd.NA  # both in the first partition
    lazy, lazy_gaps = (dd.from_pandas(f, npartitions=2) for f in (full, gaps))
    # Without missing values: float64 all along, as the same values in NumPy.
    Xv = V.check_X(KMeans(2), lazy, reset=True)
    assert Xv.dtype == np.float64 and Xv.compute().dtype == np.float64
    dense = full.astype(np.float64).to_numpy()
    init = dense[[0, 199]]
    a = KMeans(2, init=init, n_init=1).fit(lazy)
    b = KMeans(2, init=init, n_init=1).fit(dense)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-7)
    np.testing.assert_array_equal(a.predict(lazy).compute(), b.predict(dense))
    with pytest.raises(ValueError, match="Input X contains NaN"):  # pandas: scikit-learn's
        KMeans(2).fit(gaps)
    for start in ("k-means||", "k-means++", "random", init):
        with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
            KMeans(2, init=start, n_init=1, random_state=0).fit(lazy_gaps)
    with pytest.raises(ValueError, match=r"Input X contains NaN or infinity: 2 row\(s\) "
                                         r"among rows 0-99, one chunk of the input "
                                         r"\(rows 5, 50\)"):
        a.predict(lazy_gaps).compute()


@pytest.mark.parametrize("name, value, expected", [
    ("verbose", "yes", "a bool or an int >= 0"),
    ("verbose", -1, "a bool or an int >= 0"),
    ("verbose", 1.5, "a bool or an int >= 0"),
    ("random_state", "a", r"None, an int in \[0, 2\*\*32 - 1\] or a numpy.random.RandomState"),
    ("random_state", -1, "None, an int in"),
    ("random_state", 2**32, "None, an int in"),
    ("random_state", True, "None, an int in"),
    ("random_state", np.random.default_rng(0), "None, an int in"),
])
def test_verbose_and_random_state_are_validated_by_name(name, value, expected):
    """verbose='yes' was accepted, and a bad random_state got scikit-learn's "'a' cannot be
    used to seed", naming no parameter (a bool was taken as a seed): both are checked with
    the other parameters, in fit and sweep."""
    X = blobs(n=50, d=2, k=2)
    match = rf"The '{name}' parameter of KMeans must be {expected}.* Got "
    with pytest.raises(ValueError, match=match):
        KMeans(2, **{name: value}).fit(X)
    with pytest.raises(ValueError, match=match):
        KMeans(2, **{name: value}).fit(da.from_array(X, chunks=25))
    if name == "random_state":
        with pytest.raises(ValueError, match=match):
            sweep(X, [2, 3], random_state=value)


@pytest.mark.parametrize("params", [{"n_clusters": "3"}, {"max_iter": 0}, {"tol": -1.0},
                                    {"init": "kmeans"}, {"metric": "manhattan"},
                                    {"resume": True}])
def test_bad_parameters_raise_scikit_learns_invalid_parameter_error(params):
    """A plain ValueError, where scikit-learn raises InvalidParameterError (a ValueError and
    a TypeError): code catching TypeError for n_clusters="3", as it works with
    scikit-learn, did not catch ours."""
    from sklearn.utils._param_validation import InvalidParameterError

    X = blobs(n=50, d=2, k=2)
    with pytest.raises(InvalidParameterError, match=f"'{next(iter(params))}' parameter") as info:
        KMeans(**{"n_clusters": 2, **params}).fit(X)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_valid_verbose_and_random_state_values_are_accepted():
    X = blobs(n=50, d=2, k=2)
    for params in (dict(verbose=True), dict(verbose=np.int64(2)), dict(verbose=0),
                   dict(random_state=np.random.RandomState(0)),
                   dict(random_state=np.uint32(5)), dict(random_state=2**32 - 1)):
        KMeans(2, n_init=1, **params).fit(X)


def test_columns_of_dd_read_parquet_fit(tmp_path):
    """dask merges the partitions of small Parquet files once a projection is optimised:
    ``to_dask_array(lengths=True)`` counted the merged ones (2) against the frame's (5),
    and a fit of one column of ``dd.read_parquet``, or of its columns with a weight
    column, failed with "The number of items in 'lengths' does not match the number of
    partitions. 2 != 5"."""
    import dask.dataframe as dd
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(6000, 3)), columns=list("abc"))
    df["w"] = rng.uniform(0.5, 2.0, len(df))
    dd.from_pandas(df, npartitions=5).to_parquet(tmp_path / "pq", write_index=False)
    ddf = dd.read_parquet(tmp_path / "pq")
    init = df[["a"]].to_numpy()[:3]
    for X, w, Xn, wn in ((ddf[["a"]], None, df[["a"]], None),
                         (ddf[["a"]], ddf["w"], df[["a"]], df["w"]),
                         (ddf[list("abc")], ddf["w"], df[list("abc")], df["w"])):
        start = init if X.shape[1] == 1 else df[list("abc")].to_numpy()[:3]
        a = KMeans(3, init=start, n_init=1, max_iter=5).fit(X, sample_weight=w)
        b = KMeans(3, init=start, n_init=1, max_iter=5).fit(Xn, sample_weight=wn)
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-9)
        assert a.labels_.compute().tolist() == b.labels_.tolist()
        # The report reads such a frame too (it counted the merged partitions as well).
        from dask_kmeans.report import profile

        pd.testing.assert_frame_equal(profile(a, X, sample_weight=w),
                                      profile(a, Xn, sample_weight=wn))
