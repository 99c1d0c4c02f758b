from __future__ import annotations

import threading
import warnings
import weakref

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.utils import check_random_state

from dask_kmeans import KMeans, _init
from dask_kmeans import _kernels as K
from tests.conftest import blobs


def _cost(X, C):
    return K.assign(X, C)[2]


@pytest.fixture(scope="module")
def X():
    return blobs(n=20000, d=5, k=12, seed=21, spread=2.0)


def test_row_uniforms_do_not_depend_on_chunking():
    whole = K.row_uniforms(7, 3, 0, 1000)
    parts = np.concatenate([K.row_uniforms(7, 3, a, b - a)
                            for a, b in [(0, 1), (1, 6), (6, 333), (333, 1000)]])
    np.testing.assert_array_equal(whole, parts)
    assert 0 <= whole.min() and whole.max() < 1
    assert abs(whole.mean() - 0.5) < 0.05
    assert not np.array_equal(whole, K.row_uniforms(7, 4, 0, 1000))


def test_row_uniforms_are_the_top_bits_of_philox_lanes():
    # Row r is lane r % 4 of Philox block r // 4, keyed by (seed, stream): pinned,
    # so that a faster way of drawing them cannot change anyone's initial centres.
    raw = np.random.Philox(key=[7, 3]).random_raw(1003)
    expected = (raw >> np.uint64(11)) * (1.0 / 2**53)
    for offset in (0, 1, 2, 3, 5, 997):
        np.testing.assert_array_equal(K.row_uniforms(7, 3, offset, 6),
                                      expected[offset : offset + 6])


@pytest.mark.parametrize("n", [0, 5, K.OVERSAMPLE_BLOCK, 2 * K.OVERSAMPLE_BLOCK + 7])
@pytest.mark.parametrize("weighted", [False, True])
def test_oversample_draws_each_row_its_own_uniform(n, weighted):
    """Drawn a block at a time, a chunk's draws are still those of its global rows:
    the proposals equal the test written out over ``row_uniforms``."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, 3))
    near = K.Nearest(rng.exponential(size=n), np.zeros(n, dtype=np.int64))
    w = rng.uniform(0.5, 2.0, size=n) if weighted else None
    offset, ell = 4001, 30.0
    rows, phi = K.oversample(x, near, w, K.row_draws(9, 2, offset), offset, ell)
    wd2 = near.sq_dist * (1.0 if w is None else w)
    u = K.row_uniforms(9, 2, offset, n)
    keep = np.flatnonzero(u * wd2.sum() < ell * wd2)
    assert phi == wd2.sum()
    np.testing.assert_array_equal(rows[:, 0], keep + offset)
    np.testing.assert_array_equal(rows[:, 1], u[keep])
    np.testing.assert_array_equal(rows[:, 2], wd2[keep])
    np.testing.assert_array_equal(rows[:, 3:], x[keep])
    assert n < 100 or len(keep) > ell / 2  # about ell rows proposed (at least ell / 2)


@pytest.mark.parametrize("keep_state", [True, False])
def test_same_seed_same_centres_for_any_chunking(X, keep_state):
    results = []
    for chunks in [(20000,), (7000, 7000, 6000), (1000,) * 20, (1, 4999, 15000)]:
        Xd = da.from_array(X, chunks=(chunks, 5))
        if keep_state:
            Xd = Xd.persist()
        results.append(_init.kmeans_parallel(Xd, None, 12, check_random_state(5),
                                             keep_state=keep_state))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    other = _init.kmeans_parallel(da.from_array(X, chunks=5000), None, 12,
                                  check_random_state(6))
    assert not np.array_equal(other, results[0])


def test_weighted_same_candidates_for_any_chunking(X):
    """With sample weights the same rows become candidates for any chunking; their weights,
    and so the centres, differ only by the rounding of sums taken in chunk order."""
    w = np.random.default_rng(0).uniform(0, 3, size=len(X))
    out = []
    for chunks in [(20000,), (7000, 7000, 6000), (1, 4999, 15000)]:
        out.append(_init.kmeans_parallel(
            da.from_array(X, chunks=(chunks, 5)), da.from_array(w, chunks=(chunks,)), 12,
            check_random_state(5), return_candidates=True))
    for cand, weights in out[1:]:
        np.testing.assert_array_equal(cand, out[0][0])
        np.testing.assert_allclose(weights, out[0][1], rtol=1e-13)
    centres = [_init.reduce_candidates(c, wt, 12, check_random_state(1)) for c, wt in out]
    for c in centres[1:]:
        np.testing.assert_allclose(c, centres[0], rtol=1e-12, atol=1e-12)


def test_same_centres_on_a_process_cluster(client, X):
    local = KMeans(12, random_state=3, max_iter=1).fit(da.from_array(X, chunks=3000))
    # The cluster run: other chunking, other workers, persisted with row state.
    remote = KMeans(12, random_state=3, max_iter=1).fit(da.from_array(X, chunks=7000))
    np.testing.assert_allclose(remote.cluster_centers_, local.cluster_centers_, rtol=1e-12)


def test_seeding_cost_close_to_kmeans_plusplus(X):
    par, pp = [], []
    for seed in range(5):
        Xd = da.from_array(X, chunks=4000)
        par.append(_cost(X, _init.kmeans_parallel(Xd, None, 12, check_random_state(seed))))
        pp.append(_cost(X, K.kmeans_plusplus(X, 12, check_random_state(seed))))
    # Bahmani et al.: k-means|| with l = 2k and 5 rounds seeds as well as k-means++.
    assert np.median(par) <= 1.1 * np.median(pp)
    rand = [_cost(X, _init.random_rows(X, None, 12, check_random_state(s), None)) for s in range(5)]
    assert np.median(par) < np.median(rand)


class _CountingSource:
    """A dask array whose chunks are produced on demand, counting every read."""

    def __init__(self, X, rows):
        self.X, self.reads, self.lock = X, {}, threading.Lock()
        self.live = self.peak = 0  # chunks read and not yet freed: now, at most
        nb = -(-len(X) // rows)
        chunks = tuple(min(rows, len(X) - i * rows) for i in range(nb))
        self.array = da.map_blocks(self._read, dtype=X.dtype,
                                   chunks=(chunks, (X.shape[1],)),
                                   meta=np.empty((0, 0), X.dtype))

    def _read(self, block_info=None):
        (start, stop), _ = block_info[None]["array-location"]
        chunk = self.X[start:stop].copy()
        with self.lock:
            self.reads[start] = self.reads.get(start, 0) + 1
            self.live += 1
            self.peak = max(self.peak, self.live)
        weakref.finalize(chunk, self._freed)
        return chunk

    def _freed(self):
        with self.lock:
            self.live -= 1


@pytest.mark.parametrize("keep_state", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_never_persisted_input_takes_at_most_rounds_plus_two_passes(X, weighted, keep_state,
                                                                    monkeypatch):
    src = _CountingSource(X, rows=2500)
    w = da.from_array(np.linspace(0.5, 2, len(X)), chunks=(src.array.chunks[0],)) \
        if weighted else None
    compared = []  # chunk comparisons with candidates: once per chunk and pass
    original = K.nearest_update
    monkeypatch.setattr(K, "nearest_update",
                        lambda x, *a, **kw: compared.append(len(x)) or original(x, *a, **kw))
    with dask.config.set(scheduler="threads"):
        C = _init.kmeans_parallel(src.array, w, 12, check_random_state(0), init_rounds=3,
                                  keep_state=keep_state)
    assert C.shape == (12, 5)
    assert len(src.reads) == 8
    assert max(src.reads.values()) <= 3 + 2
    assert len(compared) == 8 * (3 + 1) and sum(compared) == 4 * len(X)
    assert src.live == 0
    # Same candidates for another chunking; weighted candidate weights are sums
    # of floats in another order, so the refined centres agree to rounding.
    other = _init.kmeans_parallel(da.from_array(X, chunks=3000),
                                  None if w is None else w.rechunk(3000), 12,
                                  check_random_state(0), init_rounds=3)
    np.testing.assert_allclose(C, other, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("keep_state", [False, True])
def test_never_persisted_input_is_held_a_few_chunks_at_a_time(X, keep_state):
    """Out of core: each pass re-reads the source and frees each chunk once compared, so
    no more chunks are alive at once than the scheduler runs tasks (2 threads here)."""
    src = _CountingSource(X, rows=500)  # 40 chunks
    with dask.config.set(scheduler="threads", num_workers=2):
        _init.kmeans_parallel(src.array, None, 12, check_random_state(0), init_rounds=3,
                              keep_state=keep_state)
    assert len(src.reads) == 40 and min(src.reads.values()) >= 4
    assert src.peak <= 4, src.peak
    assert src.live == 0


def test_candidate_weights_sum_to_total_weight(X):
    w = np.random.default_rng(0).uniform(0, 3, size=len(X))
    Xd = da.from_array(X, chunks=5000)
    wd = da.from_array(w, chunks=5000)
    cand, weights = _init.kmeans_parallel(Xd, wd, 12, check_random_state(0),
                                          return_candidates=True)
    assert weights.sum() == pytest.approx(w.sum(), rel=1e-12)
    # Each candidate weighs the rows nearest to it (the first on ties), exactly.
    d2 = ((X[:, None, :] - cand[None]) ** 2).sum(-1)
    np.testing.assert_allclose(weights, np.bincount(d2.argmin(1), w, len(cand)), rtol=1e-9)
    C = _init.kmeans_parallel(Xd, wd, 12, check_random_state(0))
    assert np.all(np.isfinite(C))
    # weighting changes the result
    assert not np.array_equal(C, _init.kmeans_parallel(Xd, None, 12, check_random_state(0)))


@pytest.mark.parametrize("factor", [0.5, 2.0, 10.0])
def test_oversampling_factor_sets_the_candidates_per_round(X, factor):
    """About l = factor * k rows join per round: 1 + rounds * l candidates in all."""
    cand, _ = _init.kmeans_parallel(da.from_array(X, chunks=5000), None, 12,
                                    check_random_state(1), oversampling_factor=factor,
                                    init_rounds=4, return_candidates=True)
    expected = 4 * factor * 12
    assert 0.6 * expected < len(cand) - 1 < 1.3 * expected


def test_too_few_candidates_triggers_extra_rounds():
    X = blobs(n=3000, d=3, k=10, seed=2)
    C = _init.kmeans_parallel(da.from_array(X, chunks=1000), None, 10, check_random_state(0),
                              oversampling_factor=0.1, init_rounds=1)
    assert len(np.unique(C, axis=0)) == 10


def test_extra_rounds_oversample_what_is_missing(monkeypatch):
    """l = 0.1 expects half a candidate in five rounds: the extra round samples twice the
    number missing, so one extra pass suffices and k distinct centres come out."""
    from dask_kmeans._passes import Passes

    X = blobs(n=5000, d=4, k=10, seed=3)
    ells = []
    original = Passes.oversample

    def spy(self, *args, ell, **kw):
        ells.append(ell)
        return original(self, *args, ell=ell, **kw)

    monkeypatch.setattr(Passes, "oversample", spy)
    C = _init.kmeans_parallel(da.from_array(X, chunks=1000), None, 10, check_random_state(0),
                              oversampling_factor=0.01)
    assert len(np.unique(C, axis=0)) == 10
    assert ells[:5] == [0.1] * 5 and len(ells) == 6 and ells[5] >= 2 * 8


def test_kmeans_plusplus_samples_large_dask_input_with_a_warning(X, monkeypatch):
    monkeypatch.setattr(_init, "KMEANS_PP_MAX_ROWS", 5000)
    with pytest.warns(UserWarning, match="uniform sample of 5000"):
        km = KMeans(12, init="k-means++", random_state=0, max_iter=2).fit(
            da.from_array(X, chunks=4000))
    assert km.cluster_centers_.shape == (12, 5)


def test_kmeans_plusplus_on_large_weighted_dask_input_samples_rows_of_positive_weight(
        X, monkeypatch):
    """Rows of weight 0 take no part: when no more than the sample's size have a positive
    weight, all of them are used, no warning, and the centres are NumPy's; weights all 0
    get the clear error (a uniform sample used to hold no row of positive weight and fail
    with "probabilities contain NaN")."""
    monkeypatch.setattr(_init, "KMEANS_PP_MAX_ROWS", 5000)
    w = np.zeros(len(X))
    w[np.random.default_rng(3).choice(len(X), 300, replace=False)] = 2.5
    Xd, wd = da.from_array(X, chunks=3000), da.from_array(w, chunks=4000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C = _init.kmeans_plusplus(Xd, wd, 12, check_random_state(0))
    np.testing.assert_array_equal(C, K.kmeans_plusplus(X, 12, check_random_state(0), w))
    with pytest.raises(ValueError, match="at least one non-zero"):
        KMeans(12, init="k-means++", random_state=0).fit(Xd, sample_weight=np.zeros(len(X)))
    with pytest.raises(ValueError, match="at least one non-zero"):
        _init.kmeans_plusplus(Xd, da.zeros(len(X), chunks=4000), 12, check_random_state(0))
    w[:6000] = 1.0  # more rows of positive weight than the sample holds
    match = f"sample of 5000 of the {np.count_nonzero(w)} rows of positive sample_weight"
    with pytest.warns(UserWarning, match=match):
        C = _init.kmeans_plusplus(Xd, da.from_array(w, chunks=4000), 12, check_random_state(0))
    assert C.shape == (12, 5) and {tuple(r) for r in C} <= {tuple(r) for r in X[w > 0]}


def test_positive_rows_sample_is_uniform_and_bounded():
    w = np.zeros(10_000)
    w[::3] = 1.0
    idx, total = _init.positive_rows(da.from_array(w, chunks=700), 500, check_random_state(1))
    assert total == 3334 and idx.shape == (500,) and np.all(np.diff(idx) > 0)
    assert np.all(w[idx] > 0)
    idx, total = _init.positive_rows(da.from_array(w, chunks=700), 5000, check_random_state(1))
    np.testing.assert_array_equal(idx, np.flatnonzero(w))
    # memory in proportion to the sample, not to the rows (choice without replacement
    # would permute all 10**12)
    big = K.sample_indices(10**12, 1000, check_random_state(0))
    assert big.shape == (1000,) and np.all(np.diff(big) > 0) and big[-1] < 10**12
    # uniform: every row of positive weight is about as likely (n=200 samples of 10 of 40)
    w2 = np.zeros(60)
    w2[::3] = 1.0
    w2[:10] = 1.0
    wd2 = da.from_array(w2, chunks=7)
    hits = np.zeros(len(w2))
    for seed in range(200):
        hits[_init.positive_rows(wd2, 6, check_random_state(seed))[0]] += 1
    # 24 rows of positive weight, 6 drawn 200 times: each row ~50 times
    assert hits[w2 == 0].sum() == 0 and 25 < hits[w2 > 0].min() and hits[w2 > 0].max() < 80


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_each_init_runs_on_numpy_and_dask(X, init):
    a = KMeans(12, init=init, random_state=0, n_init=1).fit(X)
    b = KMeans(12, init=init, random_state=0, n_init=1).fit(da.from_array(X, chunks=5000))
    assert a.inertia_ > 0 and b.inertia_ > 0
    if init != "random":
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_plusplus_is_scikit_learns_greedy_kmeans_plusplus(X, weighted):
    """The same seed picks the same centres as sklearn.cluster.kmeans_plusplus (greedy,
    2 + log(k) local trials), with and without sample weights."""
    from sklearn.cluster import kmeans_plusplus

    w = np.random.default_rng(0).uniform(0.1, 3, size=len(X)) if weighted else None
    for seed in range(3):
        ours = K.kmeans_plusplus(X, 12, check_random_state(seed), w)
        theirs, _ = kmeans_plusplus(X, 12, sample_weight=w, random_state=seed)
        np.testing.assert_array_equal(ours, theirs)


def test_kmeans_plusplus_kernel_picks_distinct_rows_with_positive_weight():
    X = blobs(n=500, d=2, k=4, seed=1)
    w = np.ones(500)
    w[:250] = 0
    C = K.kmeans_plusplus(X, 4, check_random_state(0), w)
    rows = {tuple(r) for r in X[250:]}
    assert all(tuple(c) in rows for c in C)
    assert len(np.unique(C, axis=0)) == 4


@pytest.mark.parametrize("init", ["k-means||", "random"])
def test_nan_in_lazy_input_is_reported_with_its_rows(init):
    """The k-means|| cost (any NaN row makes it NaN from the first round) and the Lloyd
    inertia name the rows (they said only "NaN or infinity" before)."""
    X = blobs(n=500, d=2, k=2)
    X[10, 0] = np.nan
    X[312, 1] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinity: 2 row\(s\) \(rows 10, 312\)"):
        KMeans(2, init=init, random_state=0).fit(da.from_array(X, chunks=100))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunks", [10, 25, 40])
def test_kmeans_parallel_refuses_nan_rows_wherever_they_are(seed, chunks):
    """NaN rows used to get distance 0: they were never sampled, their weight went to some
    candidate and the centres came back finite with no error; and when the first centre
    was a NaN row, every distance was NaN, hence 0, and the centres were NaN."""
    X = blobs(n=40, d=2, k=3)
    bad = [3, 17, 30] if seed % 2 else list(range(0, 40, 2))  # half the rows: some first
    X[bad, 1] = np.nan
    from dask_kmeans import kmeans_parallel_init

    with dask.config.set(scheduler="sync"):
        with pytest.raises(ValueError, match=rf"NaN or infinity: {len(bad)} row\(s\) "
                                             rf"\(rows {', '.join(map(str, bad[:5]))}"):
            kmeans_parallel_init(da.from_array(X, chunks=chunks), 3, random_state=seed)


@pytest.mark.parametrize("init", ["k-means||", "random", "k-means++"])
@pytest.mark.parametrize("lazy", [False, True])
def test_values_too_large_to_square_are_called_that(init, lazy):
    """A finite row of 1e200 makes squared distances overflow: the error said "contains
    NaN or infinity" of data that holds neither."""
    X = blobs(n=200, d=3, k=3)
    X[7] = 1e200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # k-means++ on the driver
        with pytest.raises(ValueError, match=r"Values too large for float64 distances: the "
                                             r"(k-means\|\| cost|k-means\+\+ cost|inertia of a "
                                             r"Lloyd pass|variance of the features \(for tol\)) "
                                             r"overflowed although every value of X is finite"):
            KMeans(3, init=init, random_state=0).fit(
                da.from_array(X, chunks=50) if lazy else X)


@pytest.mark.parametrize("keep_state", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_futures_engine_gives_the_graph_engines_centres(client, X, keep_state, weighted):
    from dask_kmeans._passes import Passes

    w = np.linspace(0.5, 2, len(X)) if weighted else None
    with dask.config.set(scheduler="threads"):
        local = _init.kmeans_parallel(
            da.from_array(X, chunks=5000), None if w is None else da.from_array(w, chunks=5000),
            12, check_random_state(9), keep_state=keep_state)
    Xd = client.persist(da.from_array(X, chunks=7000))
    wd = None if w is None else client.persist(da.from_array(w, chunks=7000))
    assert Passes(Xd, wd).on_futures
    remote = _init.kmeans_parallel(Xd, wd, 12, check_random_state(9), keep_state=keep_state)
    if w is None:  # other chunks, other workers: the same centres to the bit
        np.testing.assert_array_equal(remote, local)
    else:  # weight sums are rounded in the order of their chunks
        np.testing.assert_allclose(remote, local, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("weighted", [False, True])
def test_actors_give_the_futures_engines_centres(client, X, weighted, monkeypatch):
    """k-means|| passes on per-worker actors: to the bit what Client.map passes give."""
    from dask_kmeans import _passes

    w = np.linspace(0.5, 2, len(X)) if weighted else None
    Xd = client.persist(da.from_array(X, chunks=6000))
    wd = None if w is None else client.persist(da.from_array(w, chunks=6000))
    calls = []
    original = _passes.Passes._on_actors

    def spy(self, method, *args):
        out = original(self, method, *args)
        calls.append((method, out is not None))
        return out

    monkeypatch.setattr(_passes.Passes, "_on_actors", spy)
    on_actors = _init.kmeans_parallel(Xd, wd, 12, check_random_state(4), keep_state=True)
    wanted = {"oversample", "candidate_weights", "weighted_choice" if weighted else "rows"}
    assert {m for m, used in calls if used} >= wanted
    assert all(used for _, used in calls)
    monkeypatch.setattr(_passes.Passes, "_actors", lambda self: None)
    on_futures = _init.kmeans_parallel(Xd, wd, 12, check_random_state(4), keep_state=True)
    np.testing.assert_array_equal(on_actors, on_futures)


def test_actors_fetch_rows_in_the_order_asked(client, X):
    from dask_kmeans._passes import Passes

    Xd = client.persist(da.from_array(X, chunks=6000))
    index = np.array([len(X) - 1, 0, 6000, 5999, 12_345])
    np.testing.assert_array_equal(Passes(Xd).rows(index), X[index])
    assert Passes(da.from_array(X, chunks=6000)).rows(index) is None, "not persisted: no actors"


class _DeadActor:
    """Stands for the actor of a worker that died: every call fails."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise OSError("Unable to contact Actor's worker")
        return call


def test_an_actor_lost_between_rounds_costs_a_full_comparison_not_the_result(client, X):
    """The rows' nearest-candidate state dies with the actors: the futures engine rebuilds it."""
    from dask_kmeans._passes import Passes

    Xd = client.persist(da.from_array(X, chunks=6000))
    rng = np.random.default_rng(0)
    first, second = X[rng.choice(len(X), 3)], X[rng.choice(len(X), 5)]
    both = np.vstack([first, second])
    kw = dict(seed=11, ell=8.0)

    broken = Passes(Xd, keep_state=True)
    rows1, phi1 = broken.oversample(first, 0, stream=1, **kw)
    assert broken._groups and broken._state_on_actors
    broken._groups = [(_DeadActor(), idx) for _, idx in broken._groups]
    rows2, phi2 = broken.oversample(both, 3, stream=2, **kw)  # falls back, compares all 8
    assert broken._groups is False
    weights, n_zero = broken.candidate_weights(both, 8)
    assert n_zero == 0

    healthy = Passes(Xd, keep_state=True)
    healthy._groups = False  # futures from the start, state kept between rounds
    ref1, ref_phi1 = healthy.oversample(first, 0, stream=1, **kw)
    ref2, ref_phi2 = healthy.oversample(both, 3, stream=2, **kw)
    np.testing.assert_array_equal(rows1, ref1)
    assert phi1 == ref_phi1
    np.testing.assert_array_equal(rows2[:, :1], ref2[:, :1])  # the same rows sampled
    np.testing.assert_allclose(rows2, ref2, rtol=1e-9)
    assert phi2 == pytest.approx(ref_phi2, rel=1e-12)
    np.testing.assert_allclose(weights, healthy.candidate_weights(both, 8)[0], rtol=1e-12)
    assert weights.sum() == len(X)


def test_a_tree_of_merges_keeps_the_rows_chosen_for_the_total_cost():
    """Each merge keeps the rows chosen for its subtree's cost; the root's are those chosen
    for the total, whatever the grouping (no row the root keeps is lost on the way)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 3))
    ell = 10.0
    parts = []
    for start in range(0, len(x), 250):
        near = K.Nearest(rng.exponential(size=250), np.zeros(250, dtype=np.int64))
        parts.append(K.oversample(x[start : start + 250], near, None, rng, start, ell))
    flat_rows = np.concatenate([r for r, _ in parts])
    phi = sum(p for _, p in parts)
    wanted = K.chosen(flat_rows, phi, ell)
    assert 0 < len(wanted) < 3 * ell < len(flat_rows) / 3  # proposals: ~ell per chunk
    for fan_in in (2, 3, 16):
        level = parts
        while len(level) > 1:
            level = [K.merge_proposals(*level[i : i + fan_in], ell=ell)
                     for i in range(0, len(level), fan_in)]
        rows, root_phi = level[0]
        assert root_phi == pytest.approx(phi, rel=1e-13)
        np.testing.assert_array_equal(rows, wanted)


def _expected_candidates(X, candidates, seed, stream, ell):
    """Global indices of the rows one k-means|| round chooses, in NumPy."""
    d2 = np.min(((X[:, None, :] - candidates[None]) ** 2).sum(-1), axis=1)
    u = K.row_uniforms(seed, stream, 0, len(X))
    return np.flatnonzero(u * d2.sum() < ell * d2)


@pytest.mark.parametrize("engine", ["graph", "local", "actors", "futures"])
def test_the_driver_receives_only_the_rows_chosen(engine, X, request):
    """With 200 chunks a round proposes about l rows per chunk; only the ~l chosen ones
    come back, on every engine."""
    from dask_kmeans._passes import Passes

    ell, seed = 8.0, 3
    candidates = X[[10, 5000, 15000]]
    expected = _expected_candidates(X, candidates, seed, 1, ell)
    Xd = da.from_array(X, chunks=100)
    if engine in ("actors", "futures"):
        client = request.getfixturevalue("client")
        passes = Passes(client.persist(Xd))
        if engine == "futures":
            passes._groups = False
        rows, phi = passes.oversample(candidates, 0, seed=seed, stream=1, ell=ell)
        assert (passes._groups is False) == (engine == "futures")
    else:
        with dask.config.set(scheduler="threads"):
            passes = Passes(Xd, in_memory=engine == "local")
            assert (passes._local is not None) == (engine == "local")
            rows, phi = passes.oversample(candidates, 0, seed=seed, stream=1, ell=ell)
    np.testing.assert_array_equal(rows[:, 0], expected)
    np.testing.assert_array_equal(rows[:, 3:], X[expected])
    assert len(expected) < 3 * ell


class _DiesBeforeChoosing:
    """An actor whose worker dies after the pass, before the rows are chosen."""

    def __init__(self, actor):
        self.actor = actor

    def __getattr__(self, name):
        if name == "chosen":
            return _DeadActor().chosen
        return getattr(self.actor, name)


def test_an_actor_lost_before_choosing_makes_the_round_again(client, X):
    from dask_kmeans._passes import Passes

    Xd = client.persist(da.from_array(X, chunks=6000))
    first = X[[3, 9000]]
    kw = dict(seed=2, stream=1, ell=8.0)
    broken = Passes(Xd, keep_state=True)
    broken._actors()
    broken._groups = [(_DiesBeforeChoosing(actor), idx) for actor, idx in broken._groups]
    rows, phi = broken.oversample(first, 0, **kw)
    assert broken._groups is False
    healthy = Passes(Xd, keep_state=True)
    ref_rows, ref_phi = healthy.oversample(first, 0, **kw)
    assert healthy._groups
    np.testing.assert_array_equal(rows, ref_rows)
    assert phi == ref_phi
    np.testing.assert_array_equal(rows[:, 0], _expected_candidates(X, first, 2, 1, 8.0))


# -- init="random" -------------------------------------------------------------------------


def test_weighted_random_rows_follow_successive_sampling():
    """Exponential keys merged across chunks draw k rows without replacement, each in
    proportion to its weight among the rows left (numpy's choice(replace=False, p=...))."""
    from dask_kmeans import _graph as G

    w = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 2.0])
    x = np.arange(len(w), dtype=np.float64)[:, None]
    p = w / w.sum()
    # P(i among 2 draws) = p_i + sum_j p_j * p_i / (1 - p_j)
    inclusion = p + np.array([sum(p[j] * p[i] / (1 - p[j]) for j in range(len(w)) if j != i)
                              for i in range(len(w))])
    seeds = 4000
    hits = np.zeros(len(w))
    for seed in range(seeds):
        parts = np.concatenate([G.choice_chunk(x[a:b], a, w[a:b], seed=seed, stream=0, size=2)
                                for a, b in ((0, 3), (3, 4), (4, 7))])
        best = K.best_keys(parts, 2)
        assert len(best) == 2 and len(set(best[:, 1])) == 2
        np.testing.assert_array_equal(best[:, 2], best[:, 1])  # each row comes with its index
        hits[best[:, 1].astype(int)] += 1
    sigma = np.sqrt(seeds * inclusion * (1 - inclusion))
    assert hits[w == 0].sum() == 0
    assert np.all(np.abs(hits - seeds * inclusion) < 4 * sigma + 1)


@pytest.mark.parametrize("engine", ["graph", "local", "actors", "futures"])
def test_weighted_random_rows_are_the_largest_keys_on_every_engine(engine, X, request):
    """The same rows as the largest keys log(u) / w over the whole array, whatever the
    engine and chunking, and no larger array than k rows per chunk reaches the driver
    (the weights stay on the workers)."""
    from dask_kmeans import _passes
    from dask_kmeans._passes import Passes

    w = np.random.default_rng(2).uniform(0, 3, len(X))
    w[::3] = 0
    k, seed_of = 7, check_random_state(9).randint(0, 2**62, dtype=np.int64)
    with np.errstate(divide="ignore"):
        keys = np.log(K.row_uniforms(int(seed_of), 0, 0, len(X))) / w
    expected = np.argsort(-keys, kind="stable")[:k]
    Xd, wd = da.from_array(X, chunks=100), da.from_array(w, chunks=100)
    largest = []
    for module in (_init, _passes):
        original = module.compute

        def spy(*args, _original=original, **kwargs):
            out = _original(*args, **kwargs)
            largest.extend(np.shape(o)[0] for o in out if np.ndim(o))
            return out

        request.getfixturevalue("monkeypatch").setattr(module, "compute", spy)
    if engine in ("actors", "futures"):
        client = request.getfixturevalue("client")
        passes = Passes(client.persist(Xd), client.persist(wd))
        if engine == "futures":
            passes._groups = False
        rows = _init.random_rows(X, w, k, check_random_state(9), passes)
    else:
        with dask.config.set(scheduler="threads"):
            passes = Passes(Xd, wd, in_memory=engine == "local")
            rows = _init.random_rows(Xd, wd, k, check_random_state(9), passes)
    np.testing.assert_array_equal(rows, X[expected])
    assert max(largest, default=0) <= 200 * k < len(X)


@pytest.mark.parametrize("weighted", [False, True])
def test_random_init_same_rows_for_numpy_and_any_chunking(X, weighted):
    w = np.random.default_rng(3).uniform(0, 2, len(X)) if weighted else None
    fits = [KMeans(6, init="random", n_init=1, max_iter=1, random_state=5).fit(X, sample_weight=w)]
    for chunks in (20000, 3001, 640):
        fits.append(KMeans(6, init="random", n_init=1, max_iter=1, random_state=5).fit(
            da.from_array(X, chunks=chunks),
            sample_weight=None if w is None else da.from_array(w, chunks=chunks)))
    for other in fits[1:]:
        np.testing.assert_allclose(other.cluster_centers_, fits[0].cluster_centers_, rtol=1e-12)


@pytest.mark.parametrize("dask_input", [False, True])
def test_random_init_needs_k_rows_of_positive_weight(dask_input):
    X = np.random.default_rng(0).normal(size=(40, 2))
    w = np.zeros(40)
    w[[3, 17, 33]] = 1.0
    wrap = (lambda a: da.from_array(a, chunks=7)) if dask_input else (lambda a: a)
    km = KMeans(4, init="random", n_init=1, random_state=0)
    with pytest.raises(ValueError, match=r"Only 3 rows have a positive sample_weight; "
                                         r"init='random' needs at least n_clusters=4"):
        km.fit(wrap(X), sample_weight=wrap(w))
    with pytest.raises(ValueError, match="Sample weights must contain at least one non-zero"):
        km.fit(wrap(X), sample_weight=wrap(np.zeros(40)))
    centres = KMeans(3, init="random", n_init=1, max_iter=1, random_state=0).fit(
        wrap(X), sample_weight=wrap(w)).cluster_centers_
    # The rows themselves, to the rounding of the sums about their mean (as scikit-learn's).
    np.testing.assert_allclose(np.sort(centres, axis=0), np.sort(X[[3, 17, 33]], axis=0),
                               rtol=1e-14, atol=1e-15)


def test_a_round_that_keeps_no_state_writes_over_one_spare_per_thread():
    """Without ``keep`` a round returns no per-row state (16 bytes a row held in every
    chunk's result until the merge) and writes each chunk's state over the same spare,
    with the same proposals and cost; so does the weights pass, which returns no state."""
    from dask_kmeans import _graph as G

    X = blobs(n=900, d=3, k=4, seed=5)
    cands = X[[0, 10, 20]]
    kw = dict(base=0, seed=7, stream=1, ell=6.0)
    spares = []
    for a, b in [(0, 500), (500, 900), (0, 500)]:
        state, rows, phi = G.round_chunk(X[a:b], a, None, None, cands, **kw)
        none, rows2, phi2 = G.round_chunk(X[a:b], a, None, None, cands, keep=False, **kw)
        assert none is None and phi2 == phi
        np.testing.assert_array_equal(rows2, rows)
        spares.append(G._spare_state(b - a).sq_dist.base)
        np.testing.assert_array_equal(G._spare_state(b - a).sq_dist, state.sq_dist)
        np.testing.assert_array_equal(
            G.weights_chunk(X[a:b], a, None, None, cands, base=0, n_candidates=3),
            K.candidate_weights(state, None, 3)[None, :])
    assert spares[0] is spares[1] is spares[2]  # one buffer for chunks of up to 500 rows


def test_a_round_that_keeps_its_state_takes_it_from_arrows_pool():
    """A kept state is new at every round: from Arrow's pool, which reuses memory where a
    dask worker's NumPy allocations each page in fresh memory; the same state as one
    written over a NumPy array."""
    import pyarrow as pa

    from dask_kmeans import _graph as G

    X = blobs(n=900, d=3, k=4, seed=5)
    kw = dict(base=0, seed=7, stream=1, ell=6.0)
    before = pa.total_allocated_bytes()
    state, rows, phi = G.round_chunk(X, 0, None, None, X[[0, 10, 20]], **kw)
    assert pa.total_allocated_bytes() - before >= 16 * len(X)
    out = K.Nearest(np.empty(len(X)), np.empty(len(X), dtype=np.int64))
    again = G.round_chunk(X, 0, None, None, X[[0, 10, 20]], out=out, **kw)
    assert again[0] is out and again[2] == phi
    np.testing.assert_array_equal(out.sq_dist, state.sq_dist)
    np.testing.assert_array_equal(out.index, state.index)
    np.testing.assert_array_equal(again[1], rows)


def _made_where_read(block_info=None):
    """A chunk made by the task that reads it: no chunk to fetch from another worker."""
    (start, stop), _ = block_info[None]["array-location"]
    rng = np.random.default_rng(start)
    return rng.normal(size=(stop - start, 5)) + 6.0 * (np.arange(start, stop) % 4)[:, None]


@pytest.mark.parametrize("engine", ["graphs", "futures"])
def test_merging_proposals_leaves_each_chunks_state_on_its_worker(client, engine):
    """With the state kept, the tree that merges a round's proposals fetches only the
    proposals from the other worker: a chunk's state (16 bytes a row) is never copied
    there (the whole round result was, a second copy of the state held until released)."""
    from distributed import wait

    from dask_kmeans._passes import Passes

    Xd = da.map_blocks(_made_where_read, dtype=np.float64, chunks=((2500,) * 8, (5,)),
                       meta=np.empty((0, 0)))
    if engine == "futures":  # persisted, without actors (as after an actor failed)
        Xd = client.persist(Xd)
        wait(Xd)
    passes = Passes(Xd, None)
    if engine == "futures":
        passes._groups = False
    assert passes._on_graphs == (engine == "graphs")

    def clear(dask_worker):
        dask_worker.transfer_incoming_log.clear()

    def fetched(dask_worker):
        return [n for entry in dask_worker.transfer_incoming_log
                for n in entry["keys"].values()]

    client.run(clear)
    C = _init.kmeans_parallel(Xd, None, 12, check_random_state(0), keep_state=True,
                              passes=passes)
    sizes = [n for sizes in client.run(fetched).values() for n in sizes]
    assert sizes  # the merges did fetch across the workers
    assert max(sizes) < 2500 * 16, sorted(sizes)[-3:]
    np.testing.assert_array_equal(C, _init.kmeans_parallel(
        da.from_array(Xd.compute(), chunks=5000), None, 12, check_random_state(0)))


def test_weighted_draw_keys_tie_to_the_lower_row_and_do_not_overflow():
    """Each chunk offered its best keys by argpartition, which breaks ties by no rule (the
    first centre depended on the chunking when two keys were equal); and log(u) / w
    overflowed for weights of 1e-320, so that every row looked weightless ("Sample weights
    must contain at least one non-zero number" from k-means|| and random)."""
    from dask_kmeans import _kernels as K

    x = np.arange(20.0)[:, None]
    u = np.full(20, 0.5)  # every key the same
    for offset in (0, 40):
        got = K.weighted_choice_keys(x, np.ones(20), u, offset, size=3)
        assert got[:, 1].tolist() == [offset, offset + 1, offset + 2]
    both = np.vstack([K.weighted_choice_keys(x[10:], np.ones(10), u[10:], 10, 2),
                      K.weighted_choice_keys(x[:10], np.ones(10), u[:10], 0, 2)])
    assert K.best_keys(both, 2)[:, 1].tolist() == [0, 1]
    X = blobs(n=2000, d=2, k=4)
    for init in ("k-means||", "random", "k-means++"):
        fits = [KMeans(4, init=init, n_init=1, random_state=0, max_iter=3).fit(
            X, sample_weight=np.full(len(X), scale)) for scale in (1.0, 1e-320)]
        # The same draws, then sums and costs of subnormal weights, which keep fewer
        # digits: near, not equal.
        np.testing.assert_allclose(fits[1].cluster_centers_, fits[0].cluster_centers_,
                                   rtol=1e-4, err_msg=init)


@pytest.mark.parametrize("init", ["k-means||", "random", "k-means++"])
def test_weights_too_large_for_float64_are_called_that(init):
    """k-means++ gave NumPy's "probabilities do not sum to 1" for weights of 1e306."""
    X = blobs(n=200, d=2, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"Values too large for float64 distances: .* "
                                             r"Scale the features \(or the weights\) down"):
            KMeans(3, init=init, n_init=1, random_state=0).fit(
                X, sample_weight=np.full(len(X), 1e306))
