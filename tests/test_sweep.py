"""dask_kmeans.sweep: every K fitted at once, sharing the passes over the data."""

from __future__ import annotations

import warnings

import dask
import dask.array
import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import dask_kmeans as dk
from dask_kmeans.report import suggest_k
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
        np.testing.assert_array_equal(model.labels_, alone.labels_)
    assert all(a >= b for a, b in zip(res.inertias, res.inertias[1:], strict=False))


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_a_sweep_past_the_distinct_rows_stops_each_k_at_once():
    """Ks beyond the 4 distinct rows ran to max_iter, each empty cluster moved onto a row
    sitting on a centre at every iteration (see test_estimator's
    test_fewer_distinct_rows_than_clusters_converge_at_once)."""
    rng = np.random.default_rng(15)
    X = rng.normal(size=(4, 3))[rng.integers(0, 4, 2000)]
    res = dk.sweep(da.from_array(X, chunks=500), [3, 4, 6, 8], random_state=0)
    assert max(res.n_iter) <= 3, res.n_iter
    np.testing.assert_allclose(res.inertias[1:], 0.0, atol=1e-9)


def test_a_sweep_warns_of_ks_with_fewer_distinct_clusters_as_a_fit_does():
    """KMeans(5).fit warned of 3 distinct clusters; the sweep said nothing, and its table
    showed K=4 and K=5 as perfect (inertia 0, silhouette 1)."""
    X = np.repeat(np.random.default_rng(0).normal(size=(3, 2)), 20, axis=0)
    with pytest.warns(ConvergenceWarning, match=r"Number of distinct clusters found smaller "
                                                r"than K for K=4 \(3\), K=5 \(3\)\.") as record:
        dk.sweep(X, [2, 3, 4, 5], random_state=0)
    assert len(record) == 1 and record[0].filename == __file__


def test_a_standardised_sweep_counts_distinct_centres_where_it_measures():
    """The sweep counted distinct centres in original units (three groups 0.03 apart near
    1e9 were 'one cluster' there) where fit counts the standardised ones, and warned."""
    rng = np.random.default_rng(0)
    X = np.concatenate([1e9 + c + rng.normal(scale=0.002, size=(300, 1))
                        for c in (0.0, 0.03, 0.06)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = dk.sweep(X, [2, 3, 4], standardize=True, random_state=0)
        dk.KMeans(3, standardize=True, random_state=0).fit(X)
    assert sorted(np.bincount(res.models[1].labels_)) == [300, 300, 300]


def test_a_sweep_of_two_ks_says_how_it_chose():
    """With fewer than three K the reason said only that there was no elbow, whether the
    silhouette chose or, without one, the largest K."""
    X = blobs(n=600, d=2, k=3, seed=1, spread=6.0)
    res = dk.sweep(X, [2, 3], random_state=0)
    best = max(zip(res.silhouettes, res.ks, strict=True))[1]
    assert res.suggested_k == best, res
    assert f"K={best} has the best silhouette (" in res.reason, res.reason
    res = dk.sweep(X, [2, 3], random_state=0, silhouette_rows=None)
    assert res.suggested_k == 3 and "no silhouette to compare; K=3, the largest" in res.reason
    # A tie goes to the smaller K, as in suggest_k (both score 1 on 3 distinct points).
    dup = np.repeat(np.random.default_rng(0).normal(size=(3, 2)), 20, axis=0)
    with pytest.warns(ConvergenceWarning):
        res = dk.sweep(dup, [4, 5], random_state=0)
    assert res.silhouettes[0] == res.silhouettes[1] and res.suggested_k == 4, res


def test_a_k_without_a_silhouette_scores_none_and_the_sweep_goes_on():
    """K equal to the rows, or a cluster the silhouette's sample misses, left one K
    without a silhouette: that raised after every model was fitted."""
    X = blobs(n=6, d=2, k=2, seed=1)
    res = dk.sweep(X, [2, 3, 6], random_state=0)
    assert res.silhouettes[2] is None and all(s is not None for s in res.silhouettes[:2])
    assert res.suggested_k in (2, 3)
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(2000, 2)), [[1e4, 1e4]]])  # K=2 isolates the far row
    res = dk.sweep(X, [2, 3], random_state=0, silhouette_rows=100)
    assert res.models[0].labels_[-1] != res.models[0].labels_[0]
    assert res.silhouettes[0] is None and res.silhouettes[1] is not None
    assert res.suggested_k == 3


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_sweep_from_k_1_scores_every_other_k(metric):
    """A sweep that included K=1 dropped the silhouette of every K."""
    X = blobs(n=2000, d=3, k=4, seed=8, spread=5.0)
    with_one = dk.sweep(X, range(1, 8), random_state=0, metric=metric)
    without = dk.sweep(X, range(2, 8), random_state=0, metric=metric)
    assert with_one.silhouettes[0] is None
    assert all(s is not None for s in with_one.silhouettes[1:])
    for k, sil in zip(with_one.ks[1:], with_one.silhouettes[1:], strict=True):
        model = with_one.models[k - 1]
        # Each K's silhouette is that of its model, on the sweep's sample of rows.
        assert -1 <= sil <= 1 and model.n_clusters == k
    best = with_one.ks[1 + int(np.argmax(with_one.silhouettes[1:]))]
    assert best == without.ks[int(np.argmax(without.silhouettes))]
    k, reason = suggest_k(with_one.ks, with_one.inertias, with_one.silhouettes)
    assert (k, reason) == (with_one.suggested_k, with_one.reason)
    if metric == "euclidean":
        assert with_one.suggested_k == 4 and "silhouette" in with_one.reason
    # Two values of K, one of them 1: the other is suggested.
    two = dk.sweep(X, [1, 4], random_state=0, metric=metric)
    assert two.silhouettes[0] is None and two.silhouettes[1] is not None
    assert two.suggested_k == 4


def test_a_cosine_sweep_scores_silhouettes_with_cosine_distances():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(2)
    directions = rng.normal(size=(3, 4))
    X = directions[rng.integers(3, size=600)] + 0.2 * rng.normal(size=(600, 4))
    X *= rng.uniform(0.1, 20.0, size=(600, 1))  # lengths that spherical k-means ignores
    res = dk.sweep(X, [2, 3, 4], metric="cosine", random_state=0, silhouette_rows=600)
    want = [silhouette_score(X, m.labels_, metric="cosine") for m in res.models]
    np.testing.assert_allclose(res.silhouettes, want, rtol=1e-10)
    assert res.suggested_k == 3
    # silhouette_sample takes the model's metric too
    from dask_kmeans.report import silhouette_sample

    assert silhouette_sample(X, model=res.models[1], max_points=600) == \
        pytest.approx(want[1], rel=1e-10)
    assert silhouette_sample(X, res.models[1].labels_, max_points=600) == \
        pytest.approx(silhouette_score(X, res.models[1].labels_), rel=1e-10)


@pytest.mark.parametrize("ks", [[2.9, 3.9], [2, 3.0], [], [0, 2], [True, 2], "23"])
def test_ks_that_are_not_integers_from_1_are_refused(ks):
    """[2.9, 3.9] was swept as K=2 and K=3."""
    X = blobs(n=100, d=2, k=2, seed=0)
    with pytest.raises(ValueError, match=r"ks must hold integers >= 1, got "):
        dk.sweep(X, ks)
    assert dk.sweep(X, np.array([3, 2]), random_state=0).ks == [2, 3]  # NumPy ints are ints


@pytest.mark.parametrize("rows", [-5, 2.5, True, "5000"])
def test_bad_silhouette_rows_are_refused_before_any_fit(rows, monkeypatch):
    """silhouette_rows was used only after every K was fitted: -5, 2.5, True or "5000"
    failed then ("Negative dimensions are not allowed", ...), naming no parameter, every pass
    over the data wasted."""
    from dask_kmeans import _lloyd

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before checking silhouette_rows")

    monkeypatch.setattr(_lloyd, "lloyd_many", no_fit)
    with pytest.raises(ValueError, match=r"silhouette_rows must be None or an int >= 0, got "):
        dk.sweep(blobs(n=100, d=2, k=2, seed=0), [2, 3], silhouette_rows=rows)


def test_a_k_given_twice_is_refused():
    """[2, 2, 3] was swept as [2, 3], and a job reported 2 values of K."""
    from dask_kmeans.jobs import JobSpecError, parse_k, validate_job

    with pytest.raises(ValueError, match=r"ks holds a value of K more than once: \[2, 2, 3\]"):
        dk.sweep(blobs(n=100, d=2, k=2, seed=0), [2, 2, 3])
    with pytest.raises(ValueError, match=r"K=3 is given more than once in \[3, 2, 3\]"):
        parse_k([3, 2, 3])
    with pytest.raises(JobSpecError, match=r"job\.k: names 2 more than once"):
        validate_job({"job": {"kind": "sweep", "input": {"url": "d"}, "k": [2, 2, 3]}})


def test_a_sweep_of_one_k_scores_its_silhouette():
    """A sweep of a single K >= 2 left its silhouette out, as if K were 1."""
    X = blobs(n=600, d=2, k=3, seed=0, spread=6.0)
    res = dk.sweep(X, [3], random_state=0)
    assert res.suggested_k == 3 and len(res.silhouettes) == 1 and res.silhouettes[0] > 0.5
    assert dk.sweep(X, [1], random_state=0).silhouettes is None


class _ChoiceSpy(np.random.RandomState):
    """A RandomState that records the size of every population ``choice`` draws from."""

    def __init__(self, seed):
        super().__init__(seed)
        self.populations = []

    def choice(self, a, *args, **kwargs):
        self.populations.append(a if np.ndim(a) == 0 else len(a))
        return super().choice(a, *args, **kwargs)


def test_the_silhouette_sample_is_drawn_without_permuting_every_row():
    """The sweep drew its silhouette rows with ``choice(n_rows, size, replace=False)``,
    which permutes every row index on the driver: 8 GB for 10**9 rows."""
    X = blobs(n=40_000, d=2, k=3, seed=4, spread=5.0)
    spy = _ChoiceSpy(0)
    res = dk.sweep(X, [2, 3, 4], random_state=spy, silhouette_rows=500)
    assert all(s is not None for s in res.silhouettes)
    assert spy.populations and max(spy.populations) < 2 * 500, spy.populations


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


def _sweep_both_ways(X, monkeypatch, **kw):
    """A sweep with each model's bounds kept between passes, then with the stacked plain
    passes (as when the bounds would not fit in memory), and the passes each one made."""
    from dask_kmeans import _passes

    calls = []
    original = _passes.Passes._on_actors

    def spy(self, method, *args):
        calls.append(method)
        return original(self, method, *args)

    monkeypatch.setattr(_passes.Passes, "_on_actors", spy)
    bounded = dk.sweep(X, range(2, 9), random_state=0, **kw)
    bounded_calls, calls[:] = list(calls), []
    monkeypatch.setattr(_passes.Passes, "_bounds_fit", lambda self, n: False)
    plain = dk.sweep(X, range(2, 9), random_state=0, **kw)
    return bounded, plain, bounded_calls, list(calls)


def _same_models(a, b):
    assert a.n_iter == b.n_iter
    for ma, mb in zip(a.models, b.models, strict=True):
        np.testing.assert_allclose(ma.cluster_centers_, mb.cluster_centers_, rtol=1e-12,
                                   atol=1e-12)
    np.testing.assert_allclose(a.inertias, b.inertias, rtol=1e-12)
    assert a.suggested_k == b.suggested_k


def test_sweep_keeps_each_models_bounds_in_this_process(monkeypatch):
    """NumPy input without a cluster: the sweep's passes carry one set of bounds per model
    (lloyd_models on the local pool) and give the stacked plain passes' models."""
    X = blobs(n=6000, d=4, k=5, seed=2, spread=3.0)
    bounded, plain, bounded_calls, plain_calls = _sweep_both_ways(X, monkeypatch)
    assert "lloyd_models" in bounded_calls and "lloyd_models" not in plain_calls
    _same_models(bounded, plain)


def test_sweep_keeps_each_models_bounds_on_the_actors(client, monkeypatch):
    from distributed import wait

    X = client.persist(dask.array.from_array(blobs(n=6000, d=4, k=5, seed=2, spread=3.0),
                                             chunks=(2000, 4)))
    wait(X)
    bounded, plain, bounded_calls, plain_calls = _sweep_both_ways(X, monkeypatch)
    assert "lloyd_models" in bounded_calls and "lloyd_models" not in plain_calls
    _same_models(bounded, plain)


@pytest.mark.parametrize("standardize", [False, True])
def test_persist_false_gives_the_result_of_auto(standardize):
    """sweep took no persist (it was always "auto"), so a sweep job's params.persist passed
    validation and then failed the run."""
    X = dask.array.from_array(blobs(n=3000, d=3, k=4, seed=3), chunks=(500, 3))
    runs = {p: dk.sweep(X, [2, 3, 4, 5], random_state=0, persist=p, standardize=standardize)
            for p in ("auto", False, True)}
    auto = runs["auto"]
    for persist, res in runs.items():
        assert res.ks == auto.ks and res.n_iter == auto.n_iter
        assert res.suggested_k == auto.suggested_k
        np.testing.assert_allclose(res.inertias, auto.inertias, rtol=1e-9)
        np.testing.assert_allclose(res.silhouettes, auto.silhouettes, rtol=1e-9)
        for a, b in zip(res.models, auto.models, strict=True):
            np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-9)
            assert a.persist == persist
    with pytest.raises(ValueError, match="persist"):
        dk.sweep(X, [2, 3], persist="always")


def test_sweep_of_numpy_input_gives_numpy_labels(client):
    """They were lazy dask arrays on the cluster: a copy of the input stayed on the workers
    while the result lived, and they failed ("Missing dependency") after the client closed."""
    X = blobs(n=600, d=2, k=3, seed=0)
    result = dk.sweep(X, [2, 3], random_state=0)
    for model in result.models:
        assert isinstance(model.labels_, np.ndarray) and model.labels_.dtype == np.int32
        np.testing.assert_array_equal(model.labels_, model.predict(X))
    lazy = dk.sweep(da.from_array(X, chunks=200), [2, 3], random_state=0)
    assert all(isinstance(m.labels_, da.Array) for m in lazy.models)
