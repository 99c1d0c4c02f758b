from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

from dask_kmeans import KMeans
from dask_kmeans import _kernels as K
from tests import reference as ref
from tests.conftest import blobs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_lloyd_partials_match_reference(dtype, weighted):
    X = blobs(n=1000, d=7, k=6, dtype=dtype)  # 1000 rows: several 256-row blocks plus a tail
    rng = np.random.default_rng(1)
    C = X[rng.choice(len(X), 6, replace=False)]
    w = rng.uniform(0.1, 3.0, size=len(X)) if weighted else None
    got = K.lloyd_partials(X, C, w)
    sums, counts, inertia, _, _ = ref.partials(X, C, w)
    sums -= counts[:, None] * C.astype(np.float64)  # each cluster's about its centre
    rtol = ref.RTOL[np.dtype(dtype)]
    assert got.sums.dtype == np.float64 and got.counts.dtype == np.float64
    np.testing.assert_allclose(got.sums, sums, rtol=rtol, atol=rtol * np.abs(sums).max())
    np.testing.assert_allclose(got.counts, counts, rtol=1e-12)
    np.testing.assert_allclose(got.inertia, inertia, rtol=rtol)


@pytest.mark.parametrize(("dtype", "offset"), [(np.float32, 1e4), (np.float64, 1e9)])
def test_kernels_keep_their_precision_far_from_the_origin(dtype, offset):
    """Far from the origin x.c - |c|^2 / 2 in the input's dtype cannot tell the centres
    apart (float32 near 1e4: errors of ~100 against gaps of ~10): the kernels score
    against the centres less their mean, so every row whose two nearest centres are
    clearly apart gets the nearer, in the plain and the bounded pass, and the bounds
    still prune once the centres settle. Distances too are taken about the centres."""
    X = (blobs(n=3000, d=4, k=5, spread=3.0) + offset).astype(dtype)
    C = X[np.random.default_rng(1).choice(len(X), 5, replace=False)].astype(np.float64)

    def rounding(C):  # the scores' rounding, |x| |c - mean| eps (d + 2), with room
        spread = np.sqrt(((C - C.mean(axis=0)) ** 2).sum(axis=1)).max()
        return 8 * float(np.finfo(dtype).eps) * 6 * np.abs(X).max() * spread

    def check(labels, C):
        d = ref.sq_distances(X, C)
        two = np.sort(d, axis=1)[:, :2]
        clear = two[:, 1] - two[:, 0] > rounding(C)
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(labels[clear], d.argmin(axis=1)[clear])

    labels, mind, _ = K.assign(X, C)
    check(labels, C)
    # Each row's distance is the exact one to its centre.
    np.testing.assert_allclose(mind, ref.sq_distances(X, C)[np.arange(len(X)), labels],
                               rtol=1e-12)
    np.testing.assert_allclose(K.pairwise_sq_distances(X, C), ref.sq_distances(X, C),
                               rtol=0, atol=rounding(C))
    assert K.pairwise_sq_distances(X, C[:0]).shape == (len(X), 0)  # no centres, no mean
    bounds, previous, at = None, None, K.origin(C)  # one origin for every pass, as a fit
    for _ in range(8):
        drift, s_half = K.center_geometry(C, previous)
        partials, bounds, compared = K.bounded_partials(X, C, None, bounds, drift, s_half)
        check(bounds.labels, C)
        previous, C = C, K.finalize_centers(partials.sums, partials.counts, C, "euclidean", at)
    assert compared < 0.5 * len(X)


def _near_ties(dtype, metric, n=4000):
    """Rows about 8 directions with noise 1e-3 and 40 centres among them: the float32
    scores of a row's nearest centres differ by less than their rounding."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(8, 16))
    X = (base[rng.integers(8, size=n)] + 1e-3 * rng.normal(size=(n, 16))).astype(dtype)
    C = X[rng.choice(n, 40, replace=False)]
    if metric == "cosine":  # unit centres, as the passes take them: in the rows' dtype
        C = K.normalize_rows(C).astype(dtype)
        unit = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1)[:, None]
        d = ref.sq_distances(unit, C)
    else:
        d = ref.sq_distances(X, C)
    return X, C, d.argmin(axis=1)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_near_ties_are_decided_by_exact_distances(dtype, metric):
    """Every pass gives every row its exact nearest centre, whatever the BLAS blocking:
    the scores only propose one, and the exact float64 distances decide between the
    centres that score within their rounding of the best. Float32 passes used to take
    the best score's centre: hundreds of the rows here (and 400-700 of 40,000 rows
    between a fit's labels_ and its predict) got another centre."""
    X, C, nearest = _near_ties(dtype, metric)
    labels, mind, _ = K.assign(X, C, metric=metric)
    np.testing.assert_array_equal(labels, nearest)
    # Other blockings of the same rows (the 256-row GEMM blocks start elsewhere).
    np.testing.assert_array_equal(K.assign(X[37:], C, metric=metric)[0], nearest[37:])
    _, s_half = K.center_geometry(C, None)
    first = K.bounded_partials(X, C, None, None, None, s_half, metric)[1]
    np.testing.assert_array_equal(first.labels, nearest)
    # A pass with bounds, against centres moved a little: those rows it compares, too.
    moved = (C + 1e-4 * np.random.default_rng(4).normal(size=C.shape)).astype(dtype)
    if metric == "cosine":
        moved = K.normalize_rows(moved).astype(dtype)
    drift, s_half = K.center_geometry(moved, C)
    again = K.bounded_partials(X, moved, None, first, drift, s_half, metric)[1]
    np.testing.assert_array_equal(again.labels, K.assign(X, moved, metric=metric)[0])
    # The plain Lloyd pass's statistics come from the same labels.
    counts = np.bincount(nearest, minlength=len(C)).astype(np.float64)
    np.testing.assert_array_equal(K.lloyd_partials(X, C, metric=metric).counts, counts)


def _exact_nearest(X, C, metric="euclidean"):
    """The float64 reference: each row's nearest centre (rows divided by their largest
    value first for cosine, so that rows of subnormal numbers keep their direction)."""
    X64, C64 = np.asarray(X, dtype=np.float64), np.asarray(C, dtype=np.float64)
    if metric == "cosine":
        X64 = X64 / np.abs(X64).max(axis=1, keepdims=True)
        X64 /= np.sqrt((X64 * X64).sum(axis=1, keepdims=True))
    return ref.sq_distances(X64, C64).argmin(axis=1)


def _labels_of_every_pass(X, C, metric="euclidean"):
    C = np.asarray(C, dtype=X.dtype)
    _, s_half = K.center_geometry(C, None)
    bounded = K.bounded_partials(X, C, None, None, None, s_half, metric)[1].labels
    counts = K.lloyd_partials(X, C, metric=metric).counts
    return K.assign(X, C, metric=metric)[0], bounded, counts


@pytest.mark.parametrize("case", ["cosine subnormal", "euclidean 1e-22", "overflow",
                                  "cosine overflow"])
def test_scores_below_or_beyond_the_normal_range_leave_the_choice_to_exact_distances(case):
    """Float32 scores of rows of subnormal numbers carry an absolute error, not a relative
    one, and scores of rows near 1e19 overflow (two centres both at inf, the first won):
    1042 of 4000 cosine rows, 544 of 3000 Euclidean rows and these overflow rows got
    another centre than the nearest (from a review)."""
    rng = np.random.default_rng(5)
    metric = "cosine" if case.startswith("cosine") else "euclidean"
    if case == "cosine subnormal":  # multiples of 2**-149, directions between 64 centres
        ints = rng.integers(1, 200, size=(4000, 2)).astype(np.float64)
        X = (ints * 2.0**-149).astype(np.float32)
        th = np.sort(rng.uniform(0.0, np.pi / 2, size=64))
        C = np.stack([np.cos(th), np.sin(th)], 1).astype(np.float32)
    elif case == "euclidean 1e-22":
        base = rng.normal(size=(8, 3))
        X = (1e-22 * (base[rng.integers(8, size=3000)]
                      + 0.3 * rng.normal(size=(3000, 3)))).astype(np.float32)
        C = X[rng.choice(3000, 30, replace=False)]
    elif case == "overflow":
        X = np.array([[4e19, 0.0]], dtype=np.float32)
        C = np.array([[1e19, 1e18], [1e19, 0.0], [-2e19, -1e18]], dtype=np.float32)
    else:
        X = np.array([[3e38, 2.9e38]], dtype=np.float32)
        C = K.normalize_rows(np.array([[1.0, 1.0], [3.0, 2.9]])).astype(np.float32)
    nearest = _exact_nearest(X, C, metric)
    if case.endswith("overflow"):
        assert nearest.tolist() == [1]
    labels, bounded, counts = _labels_of_every_pass(X, C, metric)
    np.testing.assert_array_equal(labels, nearest)
    np.testing.assert_array_equal(bounded, nearest)
    np.testing.assert_array_equal(counts, np.bincount(nearest, minlength=len(C)))


@pytest.mark.parametrize("case", ["one score overflows", "shifted, one score overflows",
                                  "cosine block overflows"])
def test_a_score_that_overflows_alone_is_not_taken_for_the_nearest(case):
    """A single +inf score (the row's product with one centre, or a GEMM partial sum, past
    float32's range) was taken as the best without a look at the others: here the wrong
    centre, and for cosine rows near 3e38 a different centre by the BLAS blocking (a block
    of 256 such rows against the row alone). From a review."""
    if case == "cosine block overflows":
        x = np.array([[1.8098548e38, 3.0772233e38, 7.2925992e37, -1.9106273e38]], np.float32)
        C = np.array([[-0.16215929, 0.58399457, -0.010215282, -0.79533035],
                      [0.41031802, 0.80488008, 0.32063854, 0.28460175]], np.float32)
        X, metric = np.repeat(x, 256, axis=0), "cosine"
    else:
        S = 4e20 if case.startswith("shifted") else 0.0  # offset / spread 62: shifted
        C = np.array([[S + 6.39e18, 0.0], [S, 1e18], [S - 6.39e18, -1e18]], dtype=np.float32)
        X, metric = np.array([[S + 5.4e19, 3.39e20]], dtype=np.float32), "euclidean"
        assert K._prepare(X, C, metric).shifted == (S > 0)
    nearest = _exact_nearest(X, C, metric)
    labels, bounded, counts = _labels_of_every_pass(X, C, metric)
    np.testing.assert_array_equal(labels, nearest)
    np.testing.assert_array_equal(bounded, nearest)
    np.testing.assert_array_equal(counts, np.bincount(nearest, minlength=len(C)))


@pytest.mark.parametrize("case", ["untrusted", "equal centres"])
def test_bounds_keep_no_row_on_a_centre_that_is_not_its_nearest(case):
    """Centres whose scores could overflow (float32 near 1e20): the best finite score was
    taken as a lower bound for centres scored -inf, and in the next pass a row kept a
    centre another had come nearer to. Two equal centres (half their separation 0): a row
    on them kept the higher index by its bounds, where assign gives the lower."""
    if case == "untrusted":
        C1 = np.array([[1.0e20], [1.3e20], [1.31e20], [0.39e20]], dtype=np.float32)
        X = np.array([[1.304e20]], dtype=np.float32)
        C2 = C1.copy()
        C2[2] = X[0]  # centre 2 moves onto the row
        assert not K._prepare(X, C1, "euclidean").trusted
    else:
        X = np.array([[1.0]])
        C1, C2 = np.array([[0.0], [1.0], [5.0]]), np.array([[1.0], [1.0], [5.0]])
    _, s1 = K.center_geometry(C1, None)
    first = K.bounded_partials(X, C1, None, None, None, s1)[1]
    true = np.sqrt(ref.sq_distances(X, C1))[0]
    assert first.lower[0] <= np.delete(true, first.labels[0]).min()
    drift, s2 = K.center_geometry(C2, C1)
    partials, second, _ = K.bounded_partials(X, C2, None, first, drift, s2)
    np.testing.assert_array_equal(second.labels, K.assign(X, C2)[0])
    np.testing.assert_array_equal(second.labels, _exact_nearest(X, C2))
    np.testing.assert_array_equal(partials.counts, K.lloyd_partials(X, C2).counts)


def test_a_close_pair_of_centres_far_from_the_others_is_not_taken_for_far_apart():
    """Half the distance to a centre's nearest other, which lets a row keep its centre
    unread, came from the expanded form: for two centres 1e-3 apart among centres 1.3e8
    away it was 0.25, 500 times the truth, and a row kept the farther of the two."""
    a, b, far = -72.13099306616272, -72.13200014630917, 134441344.469158
    C1, C2 = np.array([[a], [-60.0], [far]]), np.array([[a], [b], [far]])
    _, s1 = K.center_geometry(C1, None)
    drift, s2 = K.center_geometry(C2, C1)
    assert s2[0] <= abs(a - b) / 2
    X = np.array([[a - 0.0009]])  # nearer a in the first pass, nearer b in the second
    first = K.bounded_partials(X, C1, None, None, None, s1)[1]
    partials, second, _ = K.bounded_partials(X, C2, None, first, drift, s2)
    assert first.labels.tolist() == [0] and second.labels.tolist() == [1]
    np.testing.assert_array_equal(partials.counts, [0.0, 1.0, 0.0])


def test_inputs_are_not_modified():
    X = blobs(n=300, d=3, k=3)
    C = X[:3].copy()
    X0, C0 = X.copy(), C.copy()
    K.lloyd_partials(X, C)
    K.assign(X, C)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(C, C0)


def test_inertia_is_exact_when_points_sit_on_far_away_centres():
    # The expanded form |x|^2 - 2x.c + |c|^2 cancels catastrophically here
    # (it can even pick the wrong centre, as in scikit-learn); the distance
    # reported for the chosen centre must still be exact.
    X = np.full((10, 3), 1e8) + np.arange(10)[:, None] * 1e-3
    C = X[[0, 9]]
    labels, mind, inertia = K.assign(X, C)
    exact = ((X - C[labels]) ** 2).sum(axis=1)
    np.testing.assert_allclose(mind, exact, rtol=1e-9, atol=1e-20)
    np.testing.assert_allclose(inertia, exact.sum(), rtol=1e-9)
    expanded = (X**2).sum(1) - 2 * (X * C[labels]).sum(1) + (C[labels] ** 2).sum(1)
    assert np.abs(expanded - exact).max() > 1.0  # what the exact recomputation avoids


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_assign_and_distances_match_reference(dtype):
    X = blobs(n=777, d=5, k=4, dtype=dtype)
    C = X[[1, 100, 200, 300]]
    labels, mind, _ = K.assign(X, C)
    ref_labels, ref_mind, _ = ref.assign(X, C)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(mind, ref_mind, rtol=ref.RTOL[np.dtype(dtype)], atol=1e-3)
    d = K.pairwise_sq_distances(X, C)
    assert d.dtype == dtype and d.shape == (777, 4)
    np.testing.assert_allclose(d, ref.sq_distances(X, C), rtol=ref.RTOL[np.dtype(dtype)] * 10,
                               atol=1e-3)


def test_relocate_empty_takes_farthest_rows_in_order():
    X = np.array([[0.0], [1.0], [10.0], [20.0]])
    C = np.array([[0.5], [100.0], [200.0]])
    p = K.lloyd_partials(X, C)
    assert list(p.counts) == [4, 0, 0]
    cand = K.farthest(X, C, None, 2, offset=0)
    sums, counts, at = K.relocate_empty(p.sums, p.counts, cand, K.origin(C))
    new = K.finalize_centers(sums, counts, C, at=at)
    np.testing.assert_allclose(new[:, 0], [0.5, 20.0, 10.0])
    np.testing.assert_allclose(counts, [2, 1, 1])
    assert np.all(np.isfinite(new))


def test_relocation_never_puts_a_centre_on_a_row_that_sits_on_one():
    """Every row sits on a centre (to rounding): an empty cluster moved onto one only
    doubled that centre, took its rows on the tie by the lower index, emptied the other,
    and so on at every iteration (fits with fewer distinct rows than clusters ran to
    max_iter). Such rows are offered to no empty cluster, which keeps its centre; rows
    off every centre still refill it."""
    X = np.repeat(np.array([[0.1], [0.7]]), 3, axis=0)
    C = np.array([[0.1], [0.7 * (1 + 2**-52)], [5.0]])  # row 1 sits on centre 1, to rounding
    p = K.lloyd_partials(X, C)
    assert 0.0 < K.assign(X, C)[1].max() < 1e-30
    cand = K.farthest(X, C, None, 1, offset=0)
    assert len(cand) == 0
    sums, counts, at = K.relocate_empty(p.sums, p.counts, cand, K.origin(C))
    np.testing.assert_array_equal(counts, [3, 3, 0])
    np.testing.assert_array_equal(K.finalize_centers(sums, counts, C, at=at)[2], [5.0])
    X[5] = 0.8  # now off every centre: it refills the empty cluster
    cand = K.farthest(X, C, None, 1, offset=0)
    p = K.lloyd_partials(X, C)
    sums, counts, at = K.relocate_empty(p.sums, p.counts, cand, K.origin(C))
    np.testing.assert_array_equal(counts, [3, 2, 1])
    np.testing.assert_array_equal(K.finalize_centers(sums, counts, C, at=at)[2], [0.8])


@pytest.mark.parametrize("lazy", [False, True])
def test_a_far_centre_does_not_keep_rows_near_the_origin_from_refilling(lazy):
    """Whether a row sits on its centre was judged against the largest centre norm: the
    empty cluster's own stale centre at 1e12 made every row "on its centre", nothing was
    relocated, and the fit ended at inertia 1.015 where scikit-learn's reaches 0.015.
    Rows near 1e9 a few hundredths apart refill as well."""
    from sklearn.cluster import KMeans as SKKMeans

    for X, C0 in ((np.array([[0.0], [0.1], [1.0], [1.1], [5.0], [5.1]]),
                   np.array([[0.0], [5.0], [1e12]])),
                  (1e9 + np.array([[0.0], [0.0], [0.5], [0.5], [1.0], [1.0]]),
                   1e9 + np.array([[0.0], [0.5], [50.0]]))):
        sk = SKKMeans(3, init=C0, n_init=1, tol=0).fit(X)
        km = KMeans(3, init=C0, tol=0).fit(da.from_array(X, chunks=2) if lazy else X)
        np.testing.assert_allclose(np.sort(km.cluster_centers_[:, 0]),
                                   np.sort(sk.cluster_centers_[:, 0]), rtol=1e-12)
        assert km.inertia_ == pytest.approx(sk.inertia_, abs=1e-6)
        np.testing.assert_allclose(km.cluster_centers_, ref.lloyd(X, C0, tol=0)[0],
                                   rtol=1e-12)
    # Rows at 1e9 that sit on their centre and rows near the origin that do not: a chunk
    # whose farthest rows sat offered nothing, though it held rows that refill.
    rng = np.random.default_rng(0)
    X = np.vstack([np.full((1000, 2), 1e9), rng.uniform(-0.01, 0.01, (1000, 2))])
    C0 = np.array([[1e9, 1e9], [0.0, 0.0], [-1e12, -1e12]])
    C, _, inertia, n_iter = ref.lloyd(X, C0, tol=0)
    assert C[2, 0] > -1.0  # refilled
    for chunks in ((2000, 2), (1000, 2), (700, 2)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # three distinct centres: no warning
            km = KMeans(3, init=C0, tol=0).fit(da.from_array(X, chunks=chunks) if lazy else X)
        np.testing.assert_allclose(km.cluster_centers_, C, rtol=1e-9, atol=1e-9)
        assert km.n_iter_ == n_iter and km.inertia_ == pytest.approx(inertia, rel=1e-9)


def test_relocation_that_takes_every_row_of_a_weighted_cluster_leaves_it_empty():
    """Rows of weights 0.1 and 0.2, cluster 1's only members, refill clusters 2 and 3:
    0.1 + 0.2 - 0.1 - 0.2 left a residue of ~1e-17, and residue / residue (-64 here,
    outside the data) was its centre, a different one per summation order."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.uniform(-1, 1, 20), [60.0, 61.0]])[:, None]
    w = np.concatenate([np.ones(20), [0.1, 0.2]])
    C = np.array([[0.0], [100.0], [1000.0], [-1000.0]])
    p = K.lloyd_partials(X, C, w)
    cand = K.farthest(X, C, w, 2, offset=0)
    sums, counts, at = K.relocate_empty(p.sums, p.counts, cand, K.origin(C))
    assert counts[1] == 0 and not sums[1].any()
    new = K.finalize_centers(sums, counts, C, at=at)
    np.testing.assert_array_equal(new[1:, 0], [100.0, 60.0, 61.0])
    ref_centers = ref.lloyd(X, C, w, max_iter=1, tol=0)[0]
    np.testing.assert_allclose(new, ref_centers, rtol=1e-12)
    for Xin, win in ((X, w), (da.from_array(X, chunks=(5, -1)), da.from_array(w, chunks=5))):
        km = KMeans(4, init=C, max_iter=1, tol=0).fit(Xin, sample_weight=win)
        np.testing.assert_allclose(km.cluster_centers_, ref_centers, rtol=1e-12)


def test_moments():
    X = blobs(n=100, d=3, k=2)
    m = K.moments(X)
    assert m[0] == 100
    np.testing.assert_allclose(m[1:4], X.sum(axis=0))
    np.testing.assert_allclose(m[4:], (X**2).sum(axis=0))
    shift = np.array([1.0, -2.0, 3.0])
    m = K.moments(X, shift=shift)
    np.testing.assert_allclose(m[1:4], (X - shift).sum(axis=0))
    np.testing.assert_allclose(m[4:], ((X - shift) ** 2).sum(axis=0))


def test_tolerance_from_moments_far_from_the_origin():
    """Unix times in seconds spread over a minute: the variance about 0 cancels away
    (E[x^2] - E[x]^2 near 1e18), about the centres' mean it is the variance."""
    from dask_kmeans._lloyd import tolerance_from_moments

    X = np.column_stack([1.7e9 + np.random.default_rng(0).uniform(0, 60, 5000),
                         np.random.default_rng(1).normal(size=5000)])
    want = 1e-4 * np.var(X, axis=0).mean()
    got = tolerance_from_moments(K.moments(X, shift=X[:7].mean(axis=0)), 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("exact", [True, False])
def test_bounded_partials_equal_plain_lloyd_pass_after_pass(dtype, weighted, metric, exact):
    """Hamerly's bounds skip rows, never change the result: labels, sums, counts, inertia.

    Without ``exact`` the statistics are carried from pass to pass (only rows that change
    centre move) and the inertia comes from the clusters' moments: still the same sums and
    counts, exactly zero for an emptied cluster, and the inertia to the expanded form's
    rounding (1e-10 relative here).
    """
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=2.0, size=(12, 6))  # overlapping clusters: near-ties happen
    x = (centres[rng.integers(12, size=20_000)] + rng.normal(size=(20_000, 6))).astype(dtype)
    w = rng.uniform(0.2, 3.0, len(x)) if weighted else None
    cosine = metric == "cosine"
    unit = K.normalize_rows if cosine else (lambda a: a)
    c = unit(x[:12].copy())
    at = K.origin(c, metric)  # one origin for every pass, as a fit keeps
    bounds, previous, compared = None, None, []
    spare = None  # without exact, as a fit's passes: each pass writes over the one before last
    for it in range(15):
        if it == 8:  # a relocated centre jumps far: its drift must cover it
            c = c.copy()
            c[3] = unit(x[rng.integers(len(x))][None] * -3)[0]
        drift, s_half = K.center_geometry(c, previous)
        before = bounds
        p, bounds, n = K.bounded_partials(x, c, w, bounds, drift, s_half, metric, exact,
                                          out=None if exact else spare, at=at)
        if not exact:
            if spare is not None:  # the rows' arrays of the pass before last, written over
                assert bounds.labels is spare.labels and bounds.upper is spare.upper
            spare = before
        plain = K.lloyd_partials(x, c, w, metric, at)
        labels = K.assign(x, c, metric=metric)[0]
        np.testing.assert_array_equal(bounds.labels, labels)
        np.testing.assert_allclose(p.sums, plain.sums, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(p.counts, plain.counts, rtol=1e-12)
        np.testing.assert_array_equal(p.counts == 0, plain.counts == 0)
        np.testing.assert_array_equal(bounds.members, np.bincount(labels[labels >= 0],
                                                                  minlength=len(c)))
        assert p.inertia == pytest.approx(plain.inertia, rel=1e-12 if exact or it == 0 else 1e-10)
        # The bounds hold: exact distance to the own centre <= upper, to others >= lower.
        rows = unit(x.astype(np.float64))
        diff = rows[:, None, :] - c.astype(dtype).astype(np.float64)[None]
        d = np.sqrt((diff**2).sum(axis=2))  # exact, not the expanded form
        own = d[np.arange(len(x)), bounds.labels]
        assert np.all(own <= bounds.upper * (1 + 1e-9) + 1e-9)
        d[np.arange(len(x)), bounds.labels] = np.inf
        assert np.all(d.min(axis=1) >= bounds.lower * (1 - 1e-9) - 1e-9)
        compared.append(n)
        previous = c
        c = K.finalize_centers(p.sums, p.counts, c, metric, at).astype(dtype)
    assert compared[0] == len(x), "no bounds yet: every row"
    assert min(compared[4:8]) < 0.5 * len(x), "most rows skipped once centres settle"
    assert compared[8] > compared[7], "the jump makes rows near the moved centre look again"
    if dtype == np.float64 and not weighted and metric == "euclidean":
        assert exact or np.any(plain.counts == 0), "the jump empties a cluster"


def test_bounded_pass_never_writes_over_the_bounds_it_reads():
    x = blobs(n=2000, d=3, k=4, seed=2)
    c = x[:4].copy()
    drift, s_half = K.center_geometry(c, None)
    _, first, _ = K.bounded_partials(x, c, None, None, drift, s_half)
    kept = first.labels.copy(), first.upper.copy(), first.lower.copy()
    c2 = c + 0.01
    drift, s_half = K.center_geometry(c2, c)
    _, second, _ = K.bounded_partials(x, c2, None, first, drift, s_half, out=first)
    assert second.labels is not first.labels, "out holds the bounds read: not used"
    for a, b in zip(kept, (first.labels, first.upper, first.lower), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bounded_pass_without_exact_inertia_leaves_rows_that_keep_their_centre_unread():
    rng = np.random.default_rng(8)
    centres = rng.normal(scale=4.0, size=(8, 5))
    x = centres[rng.integers(8, size=5000)] + rng.normal(size=(5000, 5))
    c = x[:8].copy()
    drift, s_half = K.center_geometry(c, None)
    p, bounds, _ = K.bounded_partials(x, c, None, None, drift, s_half)
    c2 = K.finalize_centers(p.sums, p.counts, c, "euclidean")
    # The rows whose bounds will prove their centre in the next pass, before reading them:
    drift, s_half = K.center_geometry(c2, c)
    order = np.argsort(drift)[::-1]
    upper = bounds.upper + drift[bounds.labels]
    lower = bounds.lower - np.where(bounds.labels == order[0], drift[order[1]], drift[order[0]])
    kept = upper <= np.maximum(lower, s_half[bounds.labels])
    assert 0.3 < kept.mean() < 1.0
    poisoned = x.copy()
    poisoned[kept] = np.nan  # any read of these rows would spread NaN
    p2, _, n = K.bounded_partials(poisoned, c2, None, bounds, drift, s_half, exact=False)
    plain = K.lloyd_partials(x, c2, at=K.origin(c))  # the bounds' origin, kept
    assert n < len(x)
    np.testing.assert_allclose(p2.sums, plain.sums, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(p2.counts, plain.counts)
    assert p2.inertia == pytest.approx(plain.inertia, rel=1e-10)
    with pytest.raises(AssertionError):  # the exact inertia reads every row
        p3 = K.bounded_partials(poisoned, c2, None, bounds, drift, s_half, exact=True)[0]
        assert np.isfinite(p3.inertia)


def test_center_geometry():
    c = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    drift, s_half = K.center_geometry(c, c + [[0, 1], [0, 0], [2, 0]])
    np.testing.assert_allclose(drift, [1.0, 0.0, 2.0])
    np.testing.assert_allclose(s_half, [0.5, np.sqrt(18) / 2, 0.5], rtol=1e-8)
    assert K.center_geometry(c, None)[0] is None
    assert K.center_geometry(c[:1], None)[1][0] == np.inf


def test_bounded_cosine_pass_counts_zero_norm_rows_and_leaves_them_out():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 4))
    x[[5, 700, 2999]] = 0.0
    c = K.normalize_rows(x[10:14].copy())
    drift, s_half = K.center_geometry(c, None)
    p, bounds, _ = K.bounded_partials(x, c, None, None, drift, s_half, "cosine")
    plain = K.lloyd_partials(x, c, None, "cosine")
    assert p.n_zero == plain.n_zero == 3
    assert set(np.flatnonzero(bounds.labels < 0)) == {5, 700, 2999}
    np.testing.assert_allclose(p.sums, plain.sums, rtol=1e-12)
    drift, s_half = K.center_geometry(c * 1.0, c)  # no movement: bounded pass, same rows out
    p2, _, n = K.bounded_partials(x, c, None, bounds, drift, s_half, "cosine")
    assert p2.n_zero == 3 and n < len(x)
    assert p2.inertia == pytest.approx(plain.inertia, rel=1e-12)


def _nearest_reference(x, cands, base, previous, metric):
    """Brute force in float64: every row against every new candidate, then the merge."""
    c = np.asarray(cands[base:], dtype=x.dtype).astype(np.float64)  # as the kernel rounds them
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    d = ((x[:, None, :] - c[None]) ** 2).sum(axis=2) * (0.5 if metric == "cosine" else 1.0)
    best = d.min(axis=1)
    if previous is None:
        return d, best
    return d, np.minimum(best, previous.sq_dist)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("metric", "offset"),
                         [("euclidean", 0.0), ("euclidean", 1e6), ("cosine", 0.0)])
def test_nearest_update_finds_the_exact_nearest_candidate(dtype, metric, offset):
    """The float32 GEMM only proposes: the candidate and distance are the exact ones,
    also far from the origin (offset 1e6, where float32 alone could not tell rows apart)
    and with rows equally near two candidates."""
    rng = np.random.default_rng(11)
    centres = rng.normal(scale=1.5, size=(20, 8))
    x = (offset + centres[rng.integers(20, size=6000)] + rng.normal(size=(6000, 8))).astype(dtype)
    cands = x[rng.choice(len(x), 40, replace=False)].astype(np.float64)
    if metric == "cosine":
        cands = K.normalize_rows(cands)
    cands[25] = cands[7]  # an exact tie: the earlier candidate keeps the rows
    state = K.nearest_update(x, cands[:1], 0, metric=metric)
    for base, stop in ((1, 12), (12, 40)):
        new = K.nearest_update(x, cands[:stop], base, state, metric)
        d, want = _nearest_reference(x, cands[:stop], base, state, metric)
        np.testing.assert_allclose(new.sq_dist, want, rtol=1e-12, atol=1e-12 * (1 + offset**2))
        moved = new.index != state.index
        chosen = d[np.flatnonzero(moved), new.index[moved] - base]
        np.testing.assert_allclose(chosen, d[moved].min(axis=1), rtol=1e-12,
                                   atol=1e-12 * (1 + offset**2))
        assert np.all(new.sq_dist[~moved] == state.sq_dist[~moved])
        assert not np.any(new.index == 25), "ties keep the earlier candidate"
        state = new
    assert np.any(state.index == 7)


def test_nearest_update_does_not_depend_on_the_blocks():
    """Rows give the same state however the chunk is cut (blocks of 256 rows inside)."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3000, 6)) + rng.normal(scale=3, size=(10, 6))[rng.integers(10, size=3000)]
    cands = x[rng.choice(len(x), 30, replace=False)]
    whole = K.nearest_update(x, cands, 5, K.nearest_update(x, cands[:5], 0))
    cuts = [0, 1, 257, 1000, 1001, 3000]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        part = K.nearest_update(x[a:b], cands, 5, K.nearest_update(x[a:b], cands[:5], 0))
        np.testing.assert_array_equal(part.index, whole.index[a:b])
        np.testing.assert_array_equal(part.sq_dist, whole.sq_dist[a:b])


def test_nearest_update_writes_over_a_spare_state_never_the_previous_one():
    x = blobs(n=3000, d=4, k=6, seed=4)
    cand = x[[1, 500, 900, 1700, 2500]]
    first = K.nearest_update(x, cand[:2], 0)
    spare = K.Nearest(np.full(len(x), -7.0), np.full(len(x), -7, dtype=np.int64))
    kept = first.sq_dist.copy(), first.index.copy()
    again = K.nearest_update(x, cand, 2, first, out=spare)
    assert again.sq_dist is spare.sq_dist and again.index is spare.index
    fresh = K.nearest_update(x, cand, 2, first)
    np.testing.assert_array_equal(again.sq_dist, fresh.sq_dist)
    np.testing.assert_array_equal(again.index, fresh.index)
    refused = K.nearest_update(x, cand, 2, first, out=first)
    assert refused.sq_dist is not first.sq_dist
    np.testing.assert_array_equal(first.sq_dist, kept[0])
    np.testing.assert_array_equal(first.index, kept[1])


def test_nearest_update_gives_zero_norm_rows_distance_zero_and_nan_rows_nan():
    x = np.random.default_rng(3).normal(size=(600, 4))
    x[[3, 400]] = 0.0
    state = K.nearest_update(x, K.normalize_rows(x[10:13]), 0, metric="cosine")
    assert state.sq_dist[3] == state.sq_dist[400] == 0.0
    assert set(np.flatnonzero(state.index < 0)) == {3, 400}, "no candidate stands for them"
    for first in (x[10:11], x[10:14]):  # one candidate (no GEMM), several, with a state
        again = K.nearest_update(x, K.normalize_rows(np.vstack([x[10:13], first])), 3,
                                 state, metric="cosine")
        assert set(np.flatnonzero(again.index < 0)) == {3, 400}
    weights = K.candidate_weights(state, None, 3)
    assert weights[-1] == 2 and weights[:-1].sum() == 598
    x[7, 2] = np.nan
    for first in (x[10:11], x[10:13]):  # no GEMM, GEMM: the cost of the round is NaN
        state = K.nearest_update(x, first, 0)
        assert np.isnan(state.sq_dist[7]) and np.isfinite(np.delete(state.sq_dist, 7)).all()


def test_nearest_update_resolves_what_float32_cannot_see():
    """Rows 1e-9 (relative) nearer to one candidate than to another: float32 scores
    prefer the wrong one for about an eighth of them (measured with the error window
    set to zero); the float64 check must give every row the right one."""
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3, size=(20_000, 8))
    x[:, 0] = 0.0
    right, wrong = np.zeros(8), np.zeros(8)
    right[0], wrong[0] = 1.0, -(1 + 1e-9)
    far = rng.normal(scale=50, size=(3, 8))  # moves the shift off the bisecting plane
    state = K.nearest_update(x, np.vstack([far[:1], wrong, right, far[1:]]), 0)
    assert np.all(state.index == 2)


@pytest.mark.parametrize("n_previous", [1, 2])
def test_nearest_update_with_state_switches_only_to_a_strictly_nearer_candidate(n_previous):
    """With a previous state, the float32 threshold that lets rows skip the new
    candidates must still let through a candidate 1e-9 (relative) nearer, and a
    candidate 1e-9 farther must not take the row. After one candidate rows go
    straight to their best score instead (no threshold): the same must hold."""
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3, size=(20_000, 8))
    x[:, 0] = 0.0
    near, far_side = np.zeros(8), np.zeros(8)
    near[0], far_side[0] = 1.0, -(1 + 1e-9)
    others = rng.normal(scale=50, size=(3, 8))
    remote = np.full((n_previous - 1, 8), 1e3)  # a previous candidate no row is near
    for first, second, expected in ((far_side, near, n_previous + 3), (near, far_side, 0)):
        previous = np.vstack([first, remote])
        state = K.nearest_update(x, previous, 0)
        new = K.nearest_update(x, np.vstack([previous, others, second]), n_previous, state)
        assert np.all(new.index == expected)
        # Either way the row's candidate is ``near``, at its exact distance.
        np.testing.assert_allclose(new.sq_dist, ((x - near) ** 2).sum(axis=1), rtol=1e-12)


def test_nearest_update_scans_a_blocks_few_unsettled_rows_alone_and_many_together():
    """With a state, a row with more than ``FEW_HITS`` candidates that may beat its
    previous one, or too large for float32 scores, needs its best score: found for
    that row alone when few rows of its block need it (block 0: rows 17 and 30), for
    the whole block when many do (block 1). Both give the exact nearest candidate,
    the earlier one on a tie."""
    rng = np.random.default_rng(5)
    far = np.full(4, 5.0)
    x = rng.normal(scale=0.1, size=(2 * K.BLOCK_ROWS, 4))
    x[K.BLOCK_ROWS:] += far
    x[17] += far
    x[30] = 1e16  # its squared norm is beyond F32_SAFE
    new = far + rng.normal(size=(10, 4))
    new[6] = new[2]
    # Two previous candidates (after one, no row is spared the scan).
    cands = np.vstack([np.zeros((1, 4)), np.full((1, 4), -50.0), new])
    state = K.nearest_update(x, cands[:2], 0)
    got = K.nearest_update(x, cands, 2, state)
    d, want = _nearest_reference(x, cands, 2, state, "euclidean")
    np.testing.assert_allclose(got.sq_dist, want, rtol=1e-12)
    np.testing.assert_array_equal(got.index[K.BLOCK_ROWS:], 2 + d[K.BLOCK_ROWS:].argmin(axis=1))
    for row in (17, 30):
        assert got.index[row] == 2 + d[row].argmin()
    assert np.all(np.delete(got.index[:K.BLOCK_ROWS], [17, 30]) == 0)
    assert not np.any(got.index == 8), "ties keep the earlier candidate"


def test_float32_below_is_never_above_its_float64():
    rng = np.random.default_rng(0)
    tiny = float(np.finfo(np.float32).tiny)
    v = np.concatenate([rng.normal(size=2000) * 10.0 ** rng.uniform(-44, 37, 2000),
                        [0.0, -0.0, tiny, -tiny, 1e-45, -1e-45, 1.0, -1.0, 3e38, -3e38]])
    got64 = np.array([K._float32_below(t) for t in v])  # numba returns float32 as float
    got = got64.astype(np.float32)
    np.testing.assert_array_equal(got.astype(np.float64), got64)  # a float32 value
    assert np.all(got.astype(np.float64) <= v)
    # ... and a few float32 steps below it: at most 7 (4.5 + 2 near the smallest normal)
    up = got
    for _ in range(7):
        up = np.nextafter(up, np.float32(np.inf))
    assert np.all((up.astype(np.float64) >= v) | (np.abs(v) < 2.0**-140))


def test_a_cluster_left_with_rows_of_zero_weight_has_exactly_zero_weight():
    """Carried statistics: the rounding left by rows that moved out must not make a
    cluster holding only zero-weight rows look non-empty (the plain kernel gives 0)."""
    x = np.array([[0.0], [4.0], [4.0]])
    w = np.array([0.0, 0.1, 0.2])
    c = np.array([[0.0], [10.0]])
    drift, s_half = K.center_geometry(c, None)
    _, bounds, _ = K.bounded_partials(x, c, w, None, drift, s_half)
    c2 = np.array([[0.0], [5.0]])
    drift, s_half = K.center_geometry(c2, c)
    p, _, _ = K.bounded_partials(x, c2, w, bounds, drift, s_half, exact=False)
    plain = K.lloyd_partials(x, c2, w)
    np.testing.assert_array_equal(p.counts, plain.counts)
    assert p.counts[0] == 0.0 and np.all(p.sums[0] == 0.0)


@pytest.mark.parametrize("scale", [1e-22, 1e20])
@pytest.mark.parametrize("base", [0, 1, 2])
def test_nearest_update_is_exact_beyond_float32s_range(scale, base):
    """Values whose float32 products underflow (1e-22) or overflow (1e20): the float64
    check still gives the exact nearest candidate, from no state or from the state of
    ``base`` candidates."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, 4)) * scale
    cands = x[rng.choice(len(x), 30, replace=False)]
    with_state = base > 0
    state = K.nearest_update(x, cands[:base], 0) if with_state else None
    with np.errstate(over="raise"):  # no overflow warning escapes either
        new = K.nearest_update(x, cands, base, state)
    d, want = _nearest_reference(x, cands, base, state, "euclidean")
    np.testing.assert_allclose(new.sq_dist, want, rtol=1e-12, atol=0)
    moved = np.flatnonzero(new.index != (state.index if with_state else -1))
    np.testing.assert_allclose(d[moved, new.index[moved] - base], d[moved].min(axis=1),
                               rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_centres_of_data_far_from_zero_are_as_exact_as_scikit_learns(lazy):
    """The sums were taken about 0: float64 rows near 1e12 with unit spread lost their
    differences to the rounding (centres 0.34 off the exact means after one iteration, 0.1
    on dask input, against scikit-learn's 6e-5), and the fit ended 24% worse. Now about
    one origin near the data, kept for the whole fit."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20_000, 2))
    offset = 1e12
    X = base + offset  # X - offset == base exactly (float64)
    C0 = X[:4].copy()
    km = KMeans(4, init=C0, max_iter=1, tol=0).fit(da.from_array(X, chunks=5000) if lazy else X)
    labels = K.assign(X, C0)[0]
    exact = np.array([base[labels == j].mean(axis=0) for j in range(4)])
    err = np.abs((km.cluster_centers_ - offset) - exact).max()
    assert err < 4 * np.spacing(offset), err  # a few units in the last place of 1e12


@pytest.mark.parametrize(("dtype", "offset"), [(np.float64, 1.7e9), (np.float32, 1e5)])
def test_clusters_a_tenth_apart_far_from_zero_are_distinct(dtype, offset):
    """Centres within 1e-10 (16 eps for float32) of their norm counted as one: three
    clusters 0.1 apart near 1.7e9 (float64) or 1e5 (float32), 1,000 rows each, fitted
    like scikit-learn's, came with "Number of distinct clusters (2) found smaller than
    n_clusters (3)". Rounding is now judged against the spread about the sums' origins."""
    rng = np.random.default_rng(0)
    X = (offset + np.repeat([0.0, 0.1, 0.2], 1000)[:, None]
         + rng.normal(scale=0.005, size=(3000, 1))).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        km = KMeans(3, init=X[[0, 1000, 2000]], n_init=1).fit(X)
    assert np.bincount(km.labels_).tolist() == [1000, 1000, 1000]
    assert K.count_distinct(km.cluster_centers_) == 3
    twins = np.vstack([km.cluster_centers_, km.cluster_centers_[:1]])
    assert K.count_distinct(twins) == 3  # an exact copy still counts once


@pytest.mark.parametrize("lazy", [False, True])
def test_far_initial_centres_that_draw_rows_get_origins_near_them(lazy):
    """Six initial centres 1e12 from the data, all drawing rows: their sums' origins stayed
    1e12 away (the pass's inertia, made of the same far distances, hid it), so the centres
    were 1.7e-3 off their rows' means, and every row of those clusters looked as if it sat
    on its centre: an emptied cluster took the wrong row (inertia 20.7% above
    scikit-learn's). Found by a review."""
    from sklearn.cluster import KMeans as SKKMeans

    rng = np.random.default_rng(4)
    for _ in range(159):  # the reviewer's 159th draw
        X = rng.normal(0, 1, (600, 2)) + rng.normal(0, 4, (3, 2))[rng.integers(0, 3, 600)]
        ang = rng.uniform(0, 2 * np.pi, 6)
        init = 1e12 * np.c_[np.cos(ang), np.sin(ang)]
    sk = SKKMeans(6, init=init, n_init=1, tol=0, algorithm="lloyd").fit(X)
    km = KMeans(6, init=init, n_init=1, tol=0).fit(da.from_array(X, chunks=200) if lazy else X)
    assert km.inertia_ == pytest.approx(sk.inertia_, rel=1e-12)
    labels = np.asarray(km.labels_)
    means = np.array([X[labels == j].mean(axis=0) for j in range(6)])
    np.testing.assert_allclose(km.cluster_centers_, means, rtol=0, atol=1e-13)


def test_clusters_apart_by_50_deviations_far_from_the_others_are_distinct():
    """count_distinct took the rounding allowance from the centres' median: two clusters
    5e-5 apart near 1e6 (spread 1e-6) among three near 0 were called one, and the fit
    warned "(4) found smaller than n_clusters (5)". Found by a review."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0], [1.0], [2.0], [1e6], [1e6 + 5e-5]])
    X = centres[np.repeat(np.arange(5), 200)] + rng.normal(0, 1e-6, (1000, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        km = KMeans(5, init=centres, n_init=1).fit(X)
    assert len(set(km.labels_.tolist())) == 5
