"""Chunk kernels: pure NumPy + numba, no dask.

Every function here takes ndarrays, returns new ndarrays (or a NamedTuple of
them) and never modifies its inputs. Partial statistics have a fixed shape for
all ``k`` clusters, so combining partials from any number of chunks, in any
order, is an elementwise sum.

The hot loop is :func:`_fused_pass`: a GEMM of a small row block against the
centres into a buffer that stays in cache, then, in the same compiled pass,
the argmax of ``x.c - |c|^2/2`` (the nearest centre), the exact squared
distance to that centre and the per-cluster weighted sums.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

#: Rows per GEMM block: 256 x k distances stay in L1/L2 for any k we expect.
BLOCK_ROWS = 256
#: k-means|| state update: up to this many new candidates that may beat a row's previous
#: one are measured directly; more, and the best score's candidate is found first.
FEW_HITS = 4
#: Empty-cluster relocation: a cluster whose weight falls to this share of what it was
#: lost every row (what is left is rounding: at most ~2k float64 steps of its sum).
RELOCATE_RESIDUE = 2.0**-36
#: Squared norms from which float32 scores could overflow: such rows are measured exactly.
F32_SAFE = 1e30
#: Passes score rows less the centres' mean when that mean's share of the scores' rounding
#: window exceeds this share of the centres' spread (see :class:`_Scoring`).
SHIFT_SHARE = 1e-4
#: k-means|| oversampling draws and tests this many rows at a time (64 KB of draws).
OVERSAMPLE_BLOCK = 8192
#: In a block of a k-means|| pass, when fewer than one row in this many needs every
#: candidate's score scanned, those rows are scanned one by one (:func:`_row_scores`)
#: instead of the whole block's rows at once.
SCAN_ROWS_SHARE = 8


def origin(centers: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """The default points that Lloyd partials sum each cluster's rows about: ``centers``
    themselves in float64, or 0 for "cosine" (unit rows); shape (k, d). A fit keeps its
    clusters' origins from pass to pass (see ``_lloyd.lloyd``), so that the same labels
    give the same centres to the bit. Summed about 0 instead, rows far from it lost their
    differences to the sums' rounding (float64 data near 1e12 with unit spread: centres
    0.34 off after one iteration, and a 24% worse inertia than scikit-learn's after 30)."""
    c = np.array(centers, dtype=np.float64, ndmin=2)
    return np.zeros_like(c) if metric == "cosine" else c


def _origin(centers, metric: str, at) -> np.ndarray:
    return origin(centers, metric) if at is None else np.ascontiguousarray(at, np.float64)


class Partials(NamedTuple):
    """Per-chunk (or combined) Lloyd statistics for all ``k`` clusters.

    The sums are of each cluster's rows less its origin, the same for every chunk (so
    that partials still add up elementwise): :func:`origin` unless the pass was given
    them."""

    sums: np.ndarray  # (k, d) float64, weighted sums of member rows less their origin
    counts: np.ndarray  # (k,) float64, total weight of members
    inertia: float  # weighted sum of squared distances to the nearest centre
    n_zero: int = 0  # cosine only: rows of zero norm (left out of everything else)
    #: (k,) float64: weighted sums of the squared norms of the member rows less their
    #: origin (unit rows for cosine); with the sums, each cluster's spread about its mean
    #: and whether its origin is so far that the sums are mostly rounding. Or None.
    sq: np.ndarray | None = None


METRICS = ("euclidean", "cosine")


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _sq_dist(row, scale, centre):
    """Exact squared distance from ``row * scale`` to ``centre``, in float64.

    The expanded form |x|^2 - 2x.c + |c|^2 cancels badly when points sit
    close to their centre, so the kernels recompute it this way.
    """
    dist = 0.0
    for f in range(row.shape[0]):
        diff = np.float64(row[f]) * scale - np.float64(centre[f])
        dist += diff * diff
    return dist


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _unit_scale(row):
    """``1 / |row|`` in float64, what divides a row into a unit vector (cosine); 0 for a
    row of zero norm (NaN for a row holding NaN).

    A row whose squared norm underflows to 0 or overflows (float64 values below about
    1e-154 or above 1e154) is measured again divided by its largest value, so that
    only rows of zeros, and rows too small for ``1 / |row|`` (below about 1e-308) or
    holding an infinity, have zero norm. ``zero_norm_rows`` uses this same test.
    """
    norm = 0.0
    for f in range(row.shape[0]):
        norm += np.float64(row[f]) * np.float64(row[f])
    if norm > 0.0 and norm < np.inf:
        return 1.0 / np.sqrt(norm)
    if norm != norm:
        return norm
    big = 0.0
    for f in range(row.shape[0]):
        big = max(big, abs(np.float64(row[f])))
    if big == 0.0 or big == np.inf:
        return 0.0
    norm = 0.0
    for f in range(row.shape[0]):
        v = np.float64(row[f]) / big
        norm += v * v
    scale = 1.0 / (big * np.sqrt(norm))
    return scale if scale < np.inf else 0.0


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _near_window(dist, scale, eps, far, tiny, cosine):
    """How far below a row's best score another centre's may be and still be the
    nearest, given the rounding of the scores (see :class:`_Scoring`), from the exact
    squared distance ``dist`` to the best-scoring centre."""
    if cosine:  # unit rows and centres: |x/|x| - c|^2 = 2 - 2 scale x.c
        return 4.0 * eps / scale + 2.0 * tiny
    return eps * (2.0 * dist + far) + 2.0 * tiny


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _undecided(top, second, window, trusted):
    """Whether the scores leave a row's nearest centre open: another scores within
    ``window`` of the best, or the scores cannot be trusted (NaN, or an overflow: of the
    best score itself, or of a partial sum, is +inf)."""
    return not (np.float64(top) - np.float64(second) > window) or not trusted \
        or not (np.float64(top) < np.inf)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _resolve_near(db, half, r, row, scale, c, best, dist, top, window, trusted):
    """The exact nearest of the centres whose score for ``row`` (column ``r`` of ``db``)
    is within ``window`` of the best score ``top`` (of every centre when the scores are
    not finite or not ``trusted``), given the proposed ``best`` at exact squared
    distance ``dist``: the exact float64 distances decide, the lower index when equal."""
    low = np.float64(top) - window
    every = not trusted or not (low > -np.inf and np.float64(top) < np.inf)
    proposed = best
    for j in range(db.shape[0]):
        if j != proposed and (every or db[j, r] - half[j] >= low):
            dj = _sq_dist(row, scale, c[j])
            if dj < dist or (dj == dist and j < best):
                dist = dj
                best = j
    return best, dist


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _shifted_block(x, start, m, shift, out):
    """Rows ``start .. start + m - 1`` of ``x`` less ``shift``, into ``out`` (x's dtype)."""
    for r in range(m):
        for f in range(x.shape[1]):
            out[r, f] = np.float64(x[start + r, f]) - shift[f]


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _fused_pass(x, cs, c, half_cnorm, w, labels, mind, sums, counts, sq, orig, shift,
                shifted, eps, far, tiny, trusted, cosine):
    """Assign rows of ``x`` to the nearest centre and accumulate statistics.

    ``cs``, ``half_cnorm``, ``shift`` and ``shifted`` are :class:`_Scoring`'s (with
    ``shifted`` the GEMM takes the rows less ``shift``, a block at a time). ``w`` has
    length 0 for unit weights. The sums are of the rows less their cluster's row of
    ``orig`` (float64).
    ``sums``/``counts`` have length 0 when only labels are wanted. ``labels``
    and ``mind`` are filled in place (they are fresh buffers owned by the
    caller), or have length 0 when only the statistics are wanted: no memory
    in proportion to the rows (fresh pages in dask workers, see
    :func:`bounded_partials`). With ``cosine`` the centres are unit vectors,
    ``half_cnorm`` is zero, and each row is divided by its norm on the fly:
    the distance is ``1 - cos = |x/|x| - c|^2 / 2`` and the sums add unit
    rows. Rows of zero norm get label -1 and distance NaN and are counted,
    not accumulated.

    The scores of a block of rows are laid out centre by centre (the GEMM
    ``cs . x^T``), so that every row's best centre is found across the block
    at once (:func:`_top_scores`, vectorised): the first of the best scores,
    as a scalar argmax per row finds it. The scores only propose a centre: when
    another scores within their rounding error of the best (``eps``, ``far`` and
    ``tiny`` of :class:`_Scoring`), or the scores overflowed (not ``trusted``, or
    not finite), the exact float64 distances decide (the lower index when equal),
    so that every pass, whatever its BLAS, blocking or dtype, gives a row the same
    centre.
    Returns the weighted inertia and the number of zero-norm rows.
    """
    n, d = x.shape
    k = c.shape[0]
    want_stats = sums.shape[0] > 0
    want_rows = labels.shape[0] > 0
    weighted = w.shape[0] > 0
    flat = np.empty(k * BLOCK_ROWS, dtype=x.dtype)
    top = np.empty(BLOCK_ROWS, dtype=x.dtype)
    second = np.empty(BLOCK_ROWS, dtype=x.dtype)
    arg = np.empty(BLOCK_ROWS, dtype=np.int32)
    xb = np.empty((BLOCK_ROWS if shifted else 0, d), dtype=x.dtype)
    inertia = 0.0
    n_zero = 0
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        m = stop - start
        db = flat[:k * m].reshape((k, m))  # a row per centre, a column per row
        if shifted:
            _shifted_block(x, start, m, shift, xb)
            np.dot(cs, xb[:m].T, db)
        else:
            np.dot(cs, x[start:stop].T, db)
        _top_scores(db, half_cnorm, m, top, arg, second)
        for r in range(m):
            i = start + r
            scale = 1.0
            if cosine:
                scale = _unit_scale(x[i])
                if scale == 0.0:
                    n_zero += 1
                    if want_rows:
                        labels[i] = -1
                        mind[i] = np.nan
                    continue
            best = arg[r]
            dist = _sq_dist(x[i], scale, c[best])
            window = _near_window(dist, scale, eps, far, tiny, cosine)
            if _undecided(top[r], second[r], window, trusted):
                best, dist = _resolve_near(db, half_cnorm, r, x[i], scale, c, best, dist,
                                           top[r], window, trusted)
            if cosine:
                dist *= 0.5
            wi = w[i] if weighted else 1.0
            if want_rows:
                labels[i] = best
                mind[i] = dist
            inertia += wi * dist
            if want_stats:  # less the origin, as _move adds them
                counts[best] += wi
                rr = 0.0
                for f in range(d):
                    v = np.float64(x[i, f]) * scale - orig[best, f]
                    sums[best, f] += wi * v
                    rr += v * v
                sq[best] += wi * rr
    return inertia, n_zero


class _Scoring(NamedTuple):
    """How a pass scores rows against centres (:func:`_prepare`), and the rounding of
    those scores.

    The scores are ``x.c' - half`` with ``c' = c - s`` (``cs``), ``s`` the centres'
    mean (``shift``) and ``half = s.c' + |c'|^2 / 2``: the same order as
    ``x.c - |c|^2 / 2`` (they differ by ``x.s - |s|^2 / 2``, the same for every centre)
    but rounded in proportion to ``|x| |c'|`` instead of ``|x| |c|``, so that data far
    from the origin (float32 near 1e4, float64 near 1e9) is still told apart; the GEMM
    reads the rows in place. When the centres' mean is farther from the origin than
    their spread, and far enough for its share of the rounding to matter (``shifted``:
    data with a large common offset, see :data:`SHIFT_SHARE`), the GEMM takes the rows
    less ``s`` instead, copied a block at a time, and ``half = |c'|^2 / 2``: the
    scores then round in proportion to ``|x - s| |c'|``, and far fewer rows are left
    for the exact distances to decide (float32 rows near 1e4: most rows before).

    A squared distance taken from a score (``|x - s|^2 - 2 score``) is within
    ``eps * (cmax * (2 |y| + snorm + cmax) + |x - s|^2) + 2 tiny`` of the exact one
    (``4 eps + 2 tiny / |x|`` between unit vectors), with ``y = x`` and ``snorm = |s|``,
    or ``y = x - s`` and ``snorm = 0`` when ``shifted``; ``cmax`` is the largest
    ``|c'|`` and ``tiny`` covers products below the dtype's normal range. With ``|x -
    s| <= sqrt(dist) + cmax`` (``dist`` to any centre) and ``4 cmax sqrt(dist) <= dist
    + 4 cmax^2``, that is at most ``eps * (2 dist + far) + 2 tiny``: a window found
    without a square root per row. ``trusted`` is False when the centres alone could
    overflow the scores.
    """

    x: np.ndarray
    c: np.ndarray  # the centres in x's dtype
    cs: np.ndarray  # c', in x's dtype
    half: np.ndarray  # in x's dtype
    shift: np.ndarray  # float64
    shifted: bool
    eps: float
    cmax: float
    snorm: float
    far: float
    tiny: float
    trusted: bool


def _prepare(x: np.ndarray, centers: np.ndarray, metric: str) -> _Scoring:
    x = np.ascontiguousarray(x)
    c = np.ascontiguousarray(centers, dtype=x.dtype)
    d = x.shape[1]
    info = np.finfo(x.dtype)
    eps = 4.0 * float(info.eps) * (d + 2)
    tiny = 4.0 * (d + 2) * float(info.smallest_subnormal)
    if metric == "cosine":  # unit rows and centres: nothing far from the origin
        return _Scoring(x, c, c, np.zeros(c.shape[0], dtype=x.dtype), np.zeros(d), False,
                        eps, 1.0, 0.0, 0.0, tiny, True)
    c64 = c.astype(np.float64)
    shift = c64.mean(axis=0)
    cs = c64 - shift
    sq = np.einsum("ij,ij->i", cs, cs)
    cmax = float(np.sqrt(sq.max(initial=0.0)))
    snorm = float(np.sqrt(shift @ shift))
    # Shifted when the offset's share of the window (about eps |s| cmax) would put more than
    # a few rows in it: about 1e-4 of the centres' spread cmax^2 (float32 near 1e3 and
    # beyond; float64 only near 1e11 and beyond, where the copy would cost 20-30% for
    # nothing at d = 4).
    shifted = snorm > cmax and eps * snorm > SHIFT_SHARE * cmax
    half = 0.5 * sq if shifted else cs @ shift + 0.5 * sq
    if shifted:
        snorm = 0.0
    trusted = bool(cmax * (cmax + snorm) < 0.125 * float(info.max))
    with np.errstate(over="ignore"):  # overflowing centres: not trusted, measured exactly
        return _Scoring(x, c, np.ascontiguousarray(cs, dtype=x.dtype), half.astype(x.dtype),
                        shift, shifted, eps, cmax, snorm, cmax * (8.0 * cmax + 3.0 * snorm),
                        tiny, trusted)


def _weights(sample_weight: np.ndarray | None) -> np.ndarray:
    if sample_weight is None:
        return np.empty(0, dtype=np.float64)
    return np.ascontiguousarray(sample_weight, dtype=np.float64)


def lloyd_partials(
    x: np.ndarray, centers: np.ndarray, sample_weight: np.ndarray | None = None,
    metric: str = "euclidean", at: np.ndarray | None = None,
) -> Partials:
    """Per-cluster weighted sums, counts and inertia of one chunk.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
        float32 or float64 rows.
    centers : ndarray of shape (n_clusters, n_features)
        Unit vectors for ``metric="cosine"``.
    sample_weight : ndarray of shape (n_samples,), optional
    metric : {"euclidean", "cosine"}
        For "cosine" the sums add rows divided by their norm and the inertia
        sums ``1 - cos``.
    at : ndarray of shape (n_clusters, n_features), optional
        Each cluster's origin, that its sums are taken about (default :func:`origin`).

    Returns
    -------
    Partials
        ``sums`` (less the origin) of shape (n_clusters, n_features) and ``counts``
        of shape (n_clusters,), both float64, and the float ``inertia``.
    """
    sc = _prepare(x, centers, metric)
    k, d = sc.c.shape
    sums = np.zeros((k, d), dtype=np.float64)
    counts = np.zeros(k, dtype=np.float64)
    sq = np.zeros(k, dtype=np.float64)
    inertia, n_zero = _fused_pass(sc.x, sc.cs, sc.c, sc.half, _weights(sample_weight),
                                  np.empty(0, dtype=np.int32), np.empty(0), sums, counts, sq,
                                  _origin(centers, metric, at), sc.shift, sc.shifted, sc.eps,
                                  sc.far, sc.tiny, sc.trusted, metric == "cosine")
    return Partials(sums, counts, float(inertia), int(n_zero), sq)


class Bounds(NamedTuple):
    """Per-row state of a bounded Lloyd pass (Hamerly's algorithm), for one chunk.

    ``labels`` is each row's centre; ``upper`` bounds its distance (not
    squared) to that centre from above, ``lower`` its distance to every other
    centre from below. Valid for the centres of the pass that made them.
    The chunk's per-cluster statistics for those labels ride along, so that
    the next pass only moves the rows that change centre: ``sums`` and
    ``counts`` (weighted, as in :class:`Partials`), ``sq`` (weighted squared
    norms of the rows, unit rows for cosine) and ``members`` (rows of positive
    weight, to know exactly when a cluster's weight is zero: then its
    statistics are set back to exact zeros, as the plain kernel has them).
    ``sums`` and ``sq`` are of the rows less ``origin`` (see :class:`Partials`).
    """

    labels: np.ndarray  # (n,) int32
    upper: np.ndarray  # (n,) float64
    lower: np.ndarray  # (n,) float64
    sums: np.ndarray  # (k, d) float64
    counts: np.ndarray  # (k,) float64
    sq: np.ndarray  # (k,) float64
    members: np.ndarray  # (k,) int64
    origin: np.ndarray  # (k, d) float64


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _move(sums, counts, sq, members, orig, x, i, scale, wi, label, sign):
    """Add (``sign`` 1) or take away (-1) row ``i``, less the cluster's origin (its row of
    ``orig``), to or from cluster ``label``."""
    ws = sign * wi
    rr = 0.0
    for f in range(x.shape[1]):
        # As the plain kernel adds them; scaled first: |x|^2 alone may overflow (cosine).
        v = np.float64(x[i, f]) * scale - orig[label, f]
        sums[label, f] += ws * v
        rr += v * v
    counts[label] += sign * wi
    sq[label] += sign * wi * rr
    if wi > 0.0:  # rows of zero weight leave the statistics as they are
        members[label] += 1 if sign > 0.0 else -1


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _norms_and_distance(rows, r, c, best, shift):
    """For row ``r`` of ``rows``, in float64: its squared norm, its squared distance to
    centre ``best`` and its squared distance to ``shift``. (Its own function: inside
    :func:`_bounded_pass` the loop was not vectorised and cost 8 ms per 250,000 rows of
    32 features, against 1 ms.)"""
    xx = 0.0
    dist = 0.0
    xs = 0.0
    for f in range(rows.shape[1]):
        xf = np.float64(rows[r, f])
        xx += xf * xf
        diff = xf - np.float64(c[best, f])
        dist += diff * diff
        v = xf - shift[f]
        xs += v * v
    return xx, dist, xs


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _bounded_pass(x, cs, c, half_cnorm, w, old_labels, old_upper, old_lower, labels, upper,
                  lower, drift, drift1, arg1, drift2, s_half, has_old, full, exact, eps, cmax,
                  snorm, shift, shifted, tiny, trusted, sums, counts, sq, members, orig,
                  row_dist, cosine):
    """Hamerly's Lloyd pass over one chunk.

    Each row's bounds move by the centres' drift; a row whose bounds prove its
    centre nearest is not compared with the others, the rest are compared with
    every centre by one small GEMM per block of such rows, laid out centre by
    centre so that their best and second-best scores are found across the block
    at once (:func:`_top_scores`, vectorised). With ``full`` every
    row is compared; so is the rest of the chunk once more than 60% of the
    rows seen (after the first eighth) needed comparing.

    ``sums``, ``counts``, ``sq`` and ``members`` hold the chunk's statistics
    for ``old_labels`` when ``has_old`` (zero otherwise) and are updated in
    place: a row that changes centre moves from one to the other, a row that
    keeps it is not even read, unless ``exact`` asks for every row's exact
    distance: then each row's weighted distance goes to ``row_dist`` (length
    ``n``, zeros), for a sum in row order whatever the bounds skipped. Returns
    the inertia added as the rows come (meaningful without ``has_old``, when
    every row is measured), the number of rows compared and the number of
    zero-norm rows.

    With ``cosine`` rows are divided by their norm on the fly, as in
    :func:`_fused_pass`: the bounds are Euclidean distances between unit
    vectors, the inertia adds ``1 - cos = |x/|x| - c|^2 / 2``, and rows of zero
    norm get label -1 and are only counted. The new bounds go to ``labels``,
    ``upper`` and ``lower``; the ``old_`` ones are only read (unused without
    ``has_old``).

    Conservative throughout: the upper bound is an exact distance, the lower
    one the expanded-form distance minus its worst rounding error, so a row
    keeps its centre only when that centre is provably the nearest.
    """
    n, d = x.shape
    k = c.shape[0]
    weighted = w.shape[0] > 0
    flat = np.empty(k * BLOCK_ROWS, dtype=x.dtype)
    top = np.empty(BLOCK_ROWS, dtype=x.dtype)
    second = np.empty(BLOCK_ROWS, dtype=x.dtype)
    arg = np.empty(BLOCK_ROWS, dtype=np.int32)
    rows = np.empty((BLOCK_ROWS, d), dtype=x.dtype)
    which = np.empty(BLOCK_ROWS, dtype=np.int64)
    inertia = 0.0
    n_compared = 0
    n_zero = 0
    half = 0.5 if cosine else 1.0
    i = 0
    while i < n:
        m = 0
        if not full and i >= n // 8 and n_compared > 0.6 * i:
            # Most rows so far failed their bounds (the centres still move a lot): the rest
            # of the chunk is cheaper compared outright, and gets fresh bounds.
            full = True
        if full:  # every row of the block, read in place (less the shift: copied)
            m = min(BLOCK_ROWS, n - i)
            for r in range(m):
                which[r] = i + r
            if shifted:
                _shifted_block(x, i, m, shift, rows)
                src = rows[:m]
            else:
                src = x[i:i + m]
            i += m
        while not full and i < n and m < BLOCK_ROWS:
            a = old_labels[i]
            labels[i] = a
            if a < 0:  # a zero-norm row (cosine): nobody's
                n_zero += 1
                i += 1
                continue
            u = old_upper[i] + drift[a]
            lo = old_lower[i] - (drift2 if a == arg1 else drift1)
            z = max(lo, s_half[a])
            upper[i] = u
            lower[i] = lo
            # Strictly: a row on two equal centres (z 0) is compared, and gets the lower.
            if u < z and not exact:  # keeps its centre, unread
                i += 1
                continue
            scale = _unit_scale(x[i]) if cosine else 1.0
            dist = _sq_dist(x[i], scale, c[a])
            if u > z:  # tighten: the exact distance to its centre
                u = np.sqrt(dist)
                upper[i] = u
            if u < z:  # keeps its centre
                wi = w[i] if weighted else 1.0
                inertia += wi * dist * half
                if exact:
                    row_dist[i] = wi * dist * half
                i += 1
                continue
            which[m] = i
            if shifted:
                for f in range(d):
                    rows[m, f] = np.float64(x[i, f]) - shift[f]
            else:
                for f in range(d):
                    rows[m, f] = x[i, f]
            m += 1
            i += 1
        if m == 0:
            continue
        if not full:
            src = rows[:m]
        db = flat[:k * m].reshape((k, m))  # a row per centre, a column per row
        np.dot(cs, src.T, db)
        _top_scores(db, half_cnorm, m, top, arg, second)
        for r in range(m):
            row = which[r]  # the GEMM read src; everything else reads x
            xx = 0.0
            scale = 1.0
            if cosine:
                scale = _unit_scale(x[row])
                if scale == 0.0:
                    n_zero += 1
                    labels[row] = -1
                    continue
            best = arg[r]
            second_val = np.float64(second[r])
            xs = 0.0
            if cosine:
                dist = _sq_dist(x[row], scale, c[best])
                err = eps * 4.0 + 2.0 * tiny * scale
                window = err / scale
            else:
                xx, dist, xs = _norms_and_distance(x, row, c, best, shift)
                y = np.sqrt(xs) if shifted else np.sqrt(xx)  # what the GEMM read
                err = eps * (cmax * (2.0 * y + snorm + cmax) + xs) + 2.0 * tiny
                window = err
            if _undecided(top[r], second_val, window, trusted):
                # Another centre may be as near: the exact distances decide (as in
                # _fused_pass), and the best score bounds every centre from below.
                best, dist = _resolve_near(db, half_cnorm, r, x[row], scale, c, best, dist,
                                           top[r], window, trusted)
                # Untrusted scores (-inf, NaN) bound nothing: a lower bound of 0.
                second_val = np.float64(top[r]) if trusted else np.inf
            labels[row] = best
            upper[row] = np.sqrt(dist)
            # With c' = c - s (see _Scoring): |x - c|^2 = |x - s|^2 - 2 (x.c' - s.c' -
            # |c'|^2 / 2), or - 2 ((x - s).c' - |c'|^2 / 2) when shifted, less its rounding
            # error (the GEMM's is within eps |y| |c'| / 2, the offsets' within
            # eps (|s| |c'| + |c'|^2) / 4, snorm 0 when shifted); for cosine
            # |x/|x| - c|^2 = 2 - 2 x.c / |x| (unit centres, half_cnorm zero). A score
            # that is NaN or an overflow leaves a lower bound of 0 (sq2 is not > 0).
            if cosine:
                sq2 = 2.0 - 2.0 * second_val * scale - err
            else:
                sq2 = xs - 2.0 * second_val - err
            lower[row] = np.sqrt(sq2) if sq2 > 0.0 else 0.0
            wi = w[row] if weighted else 1.0
            inertia += wi * dist * half
            if exact:
                row_dist[row] = wi * dist * half
            a = old_labels[row] if has_old else -1
            if best != a:
                if a >= 0:
                    _move(sums, counts, sq, members, orig, x, row, scale, wi, a, -1.0)
                _move(sums, counts, sq, members, orig, x, row, scale, wi, best, 1.0)
        n_compared += m
    return inertia, n_compared, n_zero


def center_geometry(centers: np.ndarray, previous: np.ndarray | None):
    """What a bounded pass needs to know of the centres: how far each moved since
    ``previous`` (None: no bounds to move) and half the distance to its nearest other."""
    c = np.asarray(centers, dtype=np.float64)
    drift = None
    if previous is not None:
        drift = np.sqrt(((c - np.asarray(previous, dtype=np.float64)) ** 2).sum(axis=1))
    k = c.shape[0]
    if k == 1:
        s_half = np.full(1, np.inf)
    else:
        # The expanded form about the centres' mean, less its worst rounding: two close
        # centres far from the others (1e-3 apart among centres 1e8 away) cancel to far
        # more than their separation, and an overestimate would let a row keep the
        # wrong one of them.
        cs = c - c.mean(axis=0)
        norms = np.einsum("ij,ij->i", cs, cs)
        err = 4.0 * (c.shape[1] + 2) * float(np.finfo(np.float64).eps) \
            * (norms[:, None] + norms[None, :])
        sep = np.sqrt(np.maximum(pairwise_sq_distances(c, c) - err, 0.0))
        np.fill_diagonal(sep, np.inf)
        # A hair under half the separation: rounding must not prove a wrong centre nearest.
        s_half = 0.5 * sep.min(axis=1) * (1.0 - 1e-9)
    return drift, s_half


def bounded_partials(x: np.ndarray, centers: np.ndarray, sample_weight: np.ndarray | None,
                     bounds: Bounds | None, drift: np.ndarray | None,
                     s_half: np.ndarray, metric: str = "euclidean", exact: bool = True,
                     out: Bounds | None = None, at: np.ndarray | None = None,
                     ) -> tuple[Partials, Bounds, int]:
    """:func:`lloyd_partials` by Hamerly's algorithm, with per-row bounds.

    ``bounds`` are the rows' bounds (and the chunk's statistics) for the
    previous centres and ``drift`` how far each centre moved since (both None
    on a first pass: every row is compared with every centre). Rows whose
    bounds prove their centre still nearest are not compared again, and only
    the rows that change centre move in the statistics. The same sums and
    counts as :func:`lloyd_partials` up to the order of the additions (both
    give every row its exact nearest centre). With ``metric="cosine"`` rows are
    normalised on the fly and the bounds are distances between unit vectors,
    as :func:`lloyd_partials` measures them.

    The inertia is exact (every row's exact distance) with ``exact`` or on a
    first pass. Otherwise rows that keep their centre are not read at all and
    the inertia comes from the clusters' moments,
    ``sum_j (sq_j - 2 c_j . sums_j + counts_j |c_j|^2)`` (halved for cosine),
    which carries the expanded form's rounding: enough to follow a fit, not
    for the fitted ``inertia_``.

    ``at``: the origin the statistics are taken about (:class:`Partials`; default:
    that of ``bounds``, else :func:`origin`); bounds whose statistics are about another
    are not used (every row is compared).

    ``out``, bounds of an earlier pass that are no longer needed (not
    ``bounds``), lends its row arrays to the new bounds, which overwrite
    them: a pass then allocates no memory in proportion to the rows. (Dask
    workers set ``MALLOC_TRIM_THRESHOLD_``, which makes every large
    allocation fresh pages from the system; faulting in 10 MB of new bounds
    per 500,000 rows made the pass a third slower there.)

    Returns
    -------
    (Partials, Bounds, int)
        The partials, the bounds for ``centers``, and how many rows were
        compared with every centre.
    """
    sc = _prepare(x, centers, metric)
    x, c = sc.x, sc.c
    n = x.shape[0]
    k, d = c.shape
    at = _origin(centers, metric, bounds.origin if at is None and bounds is not None else at)
    if bounds is not None and not np.array_equal(bounds.origin, at):
        drift = None  # statistics about another origin: counted afresh
    has_old = bounds is not None and drift is not None
    if out is not None and out.labels.shape == (n,) \
            and (bounds is None or out.labels is not bounds.labels):
        rows = (out.labels, out.upper, out.lower)  # every row is written below
    else:
        rows = (np.empty(n, dtype=np.int32), np.empty(n), np.empty(n))
    if has_old:
        new = Bounds(*rows, bounds.sums.copy(), bounds.counts.copy(), bounds.sq.copy(),
                     bounds.members.copy(), at)
    else:
        new = Bounds(*rows, np.zeros((k, d)), np.zeros(k), np.zeros(k),
                     np.zeros(k, dtype=np.int64), at)
        bounds = new  # its rows are not read
        drift = np.zeros(k)
    order = np.argsort(drift)[::-1]
    drift1 = float(drift[order[0]])
    drift2 = float(drift[order[1]]) if k > 1 else 0.0
    # With exact and bounds: every row's distance, summed after the pass, so that the
    # inertia does not depend on which rows the bounds let through (a resumed fit, with
    # fresh bounds, gives the uninterrupted fit's inertia to the bit). A first pass
    # measures the rows in order and adds them as the plain kernel does.
    by_row = exact and has_old
    row_dist = np.zeros(n if by_row else 0)
    inertia, n_compared, n_zero = _bounded_pass(
        x, sc.cs, c, sc.half, _weights(sample_weight), bounds.labels, bounds.upper,
        bounds.lower, new.labels, new.upper, new.lower, np.asarray(drift, dtype=np.float64),
        drift1, int(order[0]), drift2, np.asarray(s_half, dtype=np.float64), has_old,
        not has_old, by_row, sc.eps, sc.cmax, sc.snorm, sc.shift, sc.shifted, sc.tiny,
        sc.trusted, new.sums, new.counts, new.sq, new.members, at, row_dist,
        metric == "cosine")
    empty = new.members == 0  # exactly zero, whatever the additions left behind
    new.sums[empty] = 0.0
    new.counts[empty] = 0.0
    new.sq[empty] = 0.0
    if by_row:
        inertia = float(row_dist.sum())
    elif has_old and not exact:  # the moments about the origin
        c64 = c.astype(np.float64) - at
        per_cluster = (new.sq - 2.0 * np.einsum("ij,ij->i", c64, new.sums)
                       + new.counts * np.einsum("ij,ij->i", c64, c64))
        inertia = float(np.maximum(per_cluster, 0.0).sum()) * (0.5 if metric == "cosine" else 1.0)
    partials = Partials(new.sums.copy(), new.counts.copy(), float(inertia), int(n_zero),
                        new.sq.copy())
    return partials, new, int(n_compared)


def assign(
    x: np.ndarray, centers: np.ndarray, sample_weight: np.ndarray | None = None,
    metric: str = "euclidean",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Nearest centre of every row.

    Returns
    -------
    labels : ndarray of shape (n_samples,), int32
        -1 for zero-norm rows with ``metric="cosine"``.
    sq_dist : ndarray of shape (n_samples,), float64
        Exact squared distance of each row to its centre (``1 - cos`` for
        "cosine"; NaN for zero-norm rows).
    inertia : float
        ``sum(sample_weight * sq_dist)`` (over rows of non-zero norm).
    """
    sc = _prepare(x, centers, metric)
    n = sc.x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    mind = np.empty(n, dtype=np.float64)
    empty_sums = np.empty((0, 0), dtype=np.float64)
    empty_counts = np.empty(0, dtype=np.float64)
    inertia, _ = _fused_pass(
        sc.x, sc.cs, sc.c, sc.half, _weights(sample_weight), labels, mind, empty_sums,
        empty_counts, np.empty(0), np.empty((0, 0)), sc.shift, sc.shifted, sc.eps, sc.far, sc.tiny,
        sc.trusted, metric == "cosine",
    )
    return labels, mind, float(inertia)


@numba.njit(nogil=True, cache=True)
def _unit_scales(x, out):
    for i in range(x.shape[0]):
        out[i] = _unit_scale(x[i])


def unit_scales(x: np.ndarray) -> np.ndarray:
    """Every row's ``1 / |row|`` (0 for zero norm, NaN with NaN), float64: the kernels' test."""
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape[0])
    _unit_scales(x, out)
    return out


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their Euclidean norm (rows of zero norm, as the kernels see it, stay
    as they are); a new array."""
    x = np.asarray(x)
    return _scaled(x, unit_scales(x))


def _scaled(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows times their :func:`unit_scales` (rows of zero norm as they are), in ``x``'s dtype."""
    return (x * np.where(scale > 0, scale, 1.0)[:, None]).astype(x.dtype, copy=False)


def pairwise_sq_distances(x: np.ndarray, centers: np.ndarray,
                          metric: str = "euclidean", scales: np.ndarray | None = None,
                          dtype=None) -> np.ndarray:
    """Distances of every row to every centre: squared Euclidean, or ``1 - cos``.

    Computed block by block with BLAS so temporaries stay bounded; clipped at
    zero because the expanded form can go slightly negative. Euclidean
    distances are taken between rows and centres less the centres' mean, so
    that data far from the origin keeps its precision. For "cosine" the
    centres must be unit vectors; rows are normalised block by block, by
    ``scales`` (their :func:`unit_scales`) when the caller has them already. ``dtype``:
    what to compute in, block by block (default ``x``'s; float64 for float32 rows whose
    squares leave float32's range, as in ``transform``).

    Returns
    -------
    ndarray of shape (n_samples, n_clusters), ``dtype`` (default: that of ``x``)
    """
    x = np.asarray(x)
    work = x.dtype if dtype is None else np.dtype(dtype)
    c = np.asarray(centers, dtype=work)
    if metric != "cosine":
        shift = c.mean(axis=0, dtype=np.float64) if c.shape[0] else np.zeros(c.shape[1])
        c = (c - shift).astype(work)
    cnorm = np.einsum("ij,ij->i", c, c)
    out = np.empty((x.shape[0], c.shape[0]), dtype=work)
    step = 8192
    for s in range(0, x.shape[0], step):
        xb = x[s : s + step]
        block = out[s : s + step]
        if metric == "cosine":
            unit = normalize_rows(xb) if scales is None else _scaled(xb, scales[s : s + step])
            np.dot(unit.astype(work, copy=False), c.T, out=block)
            np.subtract(1, block, out=block)
        else:
            xb = (xb.astype(work, copy=False) - shift).astype(work, copy=False)
            np.dot(xb, c.T, out=block)
            block *= -2
            block += cnorm
            block += np.einsum("ij,ij->i", xb, xb)[:, None]
        np.maximum(block, 0, out=block)
    return out


def _first_rows(n: int, rows) -> str:
    """``"rows 3, 17, ..."``: the first five of ``rows`` (global indices) out of ``n``."""
    shown = ", ".join(str(int(r)) for r in np.sort(np.asarray(rows))[:5])
    return f"rows {shown}{', ...' if n > 5 else ''}"


class ZeroNormError(ValueError):
    """Rows of zero norm under ``metric="cosine"``. Its arguments, which it keeps as they
    are so that it comes back whole from a worker: how many rows, the first few as text
    (``"rows 3, 17"``), and whether they have zero norm only after ``standardize=True``
    (they equal the feature means: dropping rows of zero norm as read does not remove
    them, and drops rows that are not of zero norm once standardised)."""

    def __str__(self) -> str:
        n_zero, rows, standardized = self.args
        if standardized:
            return (f"{n_zero} row(s) of X have zero norm after standardize=True ({rows}): "
                    "they equal the feature means, and metric='cosine' gives them no "
                    "direction. Remove them from the data first, or fit without standardize, "
                    "or with metric='euclidean' (missing='drop' does not remove them: it "
                    "drops rows of zero norm as read, which standardize moves off the "
                    "origin).")
        return (f"{n_zero} row(s) of X have zero norm ({rows}); metric='cosine' gives them no "
                "direction. Drop them first (dask_kmeans.open_parquet(..., missing='drop', "
                "drop_zero_norm=True) does, and so do input.missing: drop in a job and "
                "--missing drop on the command line) or use metric='euclidean'.")


def zero_norm_error(n_zero: int, rows, standardized: bool = False) -> ZeroNormError:
    """The error for rows of zero norm under ``metric="cosine"``: how many, and the first
    few global row indices (see :class:`ZeroNormError`)."""
    return ZeroNormError(n_zero, _first_rows(n_zero, rows), standardized)


def refuse_zero_norm(zero: np.ndarray, offset: int = 0, standardized: bool = False) -> None:
    """Raise :func:`zero_norm_error` when any of a chunk's rows is marked in ``zero``
    (rows named by global index, from ``offset``)."""
    if zero.any():
        raise zero_norm_error(int(zero.sum()), np.flatnonzero(zero)[:5] + offset, standardized)


def nonfinite_rows_error(n_bad: int, rows, among: str = "") -> ValueError:
    """The error for rows of dask input holding NaN or infinity: how many (``among`` the
    rows so described, when only some were read), and the first few global row indices."""
    among = f" {among}" if among else ""
    return ValueError(
        f"Input X contains NaN or infinity: {n_bad} row(s){among} ({_first_rows(n_bad, rows)}). "
        "Drop or impute the missing values first (dask_kmeans.open_parquet(..., "
        "missing='drop') drops them).")


def nonfinite_rows(x: np.ndarray, offset: int, limit: int = 5) -> np.ndarray:
    """How many rows of a chunk hold NaN or infinity, then the global indices (from
    ``offset``) of the first ``limit`` of them, padded with -1 (for
    :func:`nonfinite_cost_error`, one row per chunk)."""
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    out = np.full(1 + limit, -1.0)
    out[0] = bad.size
    out[1 : 1 + min(bad.size, limit)] = bad[:limit] + offset
    return out


def nonfinite_cost_error(found: np.ndarray, what: str) -> ValueError:
    """The error for a pass whose cost (``what``) came out NaN or infinite, given what
    :func:`nonfinite_rows` found, chunk by chunk: the rows holding NaN or infinity, or,
    when every value is finite, values so large that squared distances overflow."""
    found = np.asarray(found, dtype=np.float64).reshape(-1, np.shape(found)[-1])
    n_bad = int(found[:, 0].sum())
    if n_bad:
        rows = found[:, 1:].ravel()
        return nonfinite_rows_error(n_bad, rows[rows >= 0])
    return values_too_large_error(what)


def values_too_large_error(what: str) -> ValueError:
    """The error for a cost (``what``) that overflowed although the data is finite."""
    return ValueError(
        f"Values too large for float64 distances: {what} overflowed although every value "
        "of X is finite (a squared distance, or its product with sample_weight, above "
        "1.8e308; features beyond about 1e154 in absolute value give that). Scale the "
        "features (or the weights) down first.")


def refuse_nonfinite(x: np.ndarray, sq_dist: np.ndarray, offset: int = 0) -> None:
    """Raise :func:`nonfinite_rows_error` when rows of a chunk hold NaN or infinity (named
    by global index, from ``offset``).

    Such rows, and only such rows or rows of zero norm (cosine) or too far for their
    squared distance (above about 1e154), have a non-finite distance to their centre
    (``assign``'s ``sq_dist``): only those few rows of ``x`` are read again.
    """
    suspect = np.flatnonzero(~np.isfinite(sq_dist))
    if suspect.size:
        bad = suspect[~np.isfinite(x[suspect]).all(axis=1)]
        if bad.size:  # the count is this chunk's: say so (it read as the total)
            raise nonfinite_rows_error(
                bad.size, bad[:5] + offset,
                f"among rows {offset}-{offset + len(x) - 1}, one chunk of the input")


def zero_norm_rows(x: np.ndarray, offset: int, limit: int = 5) -> np.ndarray:
    """The rows of a chunk that the cosine kernels count as of zero norm (see
    ``_unit_scale``), told apart: rows holding an infinity, and finite rows.

    Returns
    -------
    ndarray of shape (2 + 2 * limit,), float64
        How many rows hold an infinity, how many finite rows have zero norm, then the
        global indices (from ``offset``) of the first ``limit`` rows of each kind, padded
        with -1. :func:`zero_norm_rows_error` reads these rows, one per chunk.
    """
    rows = np.flatnonzero(unit_scales(x) == 0)
    infinite = ~np.isfinite(x[rows]).all(axis=1)
    out = np.full(2 + 2 * limit, -1.0)
    out[0], out[1] = np.count_nonzero(infinite), np.count_nonzero(~infinite)
    for at, kind in ((2, rows[infinite]), (2 + limit, rows[~infinite])):
        first = kind[:limit] + offset
        out[at : at + first.size] = first
    return out


def zero_norm_rows_error(found: np.ndarray, n_zero: int = 0) -> ValueError:
    """The error for the rows that :func:`zero_norm_rows` found, chunk by chunk (one row of
    ``found`` each): :func:`nonfinite_rows_error` when any holds an infinity (dask input is
    not scanned for them, and a row with an infinity has no norm either; dropping it as of
    zero norm is not the remedy), else :func:`zero_norm_error`. ``n_zero``, the count that a
    pass gave, stands when ``found`` holds no row."""
    found = np.asarray(found, dtype=np.float64).reshape(-1, found.shape[-1])
    limit = (found.shape[1] - 2) // 2
    n_infinite, n_finite = int(found[:, 0].sum()), int(found[:, 1].sum())
    infinite, finite = found[:, 2 : 2 + limit].ravel(), found[:, 2 + limit :].ravel()
    if n_infinite:
        return nonfinite_rows_error(n_infinite, infinite[infinite >= 0])
    return zero_norm_error(n_finite or n_zero, finite[finite >= 0])


def moments(x: np.ndarray, metric: str = "euclidean",
            shift: np.ndarray | None = None) -> np.ndarray:
    """Unweighted row count, per-feature sums and sums of squares of ``x - shift``, in
    float64.

    For "cosine", of the rows divided by their norms (the space the centres live in).
    Every chunk of a pass takes the same ``shift`` (near the data: the centres' mean),
    so that the variance ``E[(x - s)^2] - E[x - s]^2`` does not cancel away for data
    far from the origin, as it does about 0 (a column of unix times in seconds).

    Returns
    -------
    ndarray of shape (1 + 2 * n_features,)
    """
    x64 = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x64 = normalize_rows(x64)
    if shift is not None:
        x64 = x64 - shift
    return np.concatenate([[x64.shape[0]], x64.sum(axis=0), np.einsum("ij,ij->j", x64, x64)])


def farthest(
    x: np.ndarray,
    centers: np.ndarray,
    sample_weight: np.ndarray | None,
    n_far: int,
    offset: int,
    metric: str = "euclidean",
    n_rows: int = 0,
    at: np.ndarray | None = None,
) -> np.ndarray:
    """The ``n_far`` rows of a chunk farthest from their nearest centre.

    Used to relocate empty clusters, as scikit-learn does. ``offset`` is the
    global index of the chunk's first row, used to break ties the same way
    whatever the chunking.

    Unlike scikit-learn, a row that sits on its centre (:func:`_sitting`; ``n_rows``,
    the rows of the whole data, and ``at``, the origin of the fit's sums, set the rounding
    allowed) is no candidate: a centre
    moved onto it would double that centre, take its rows on the tie by the lower
    index and leave the other twin empty, to be moved again at the next iteration,
    and so on to ``max_iter`` with fewer distinct rows than clusters. Left out here,
    before the chunk's ``n_far`` are taken, so that the chunking cannot change which
    rows refill.

    Returns
    -------
    ndarray of shape (m, 4 + n_features), float64, m <= n_far
        Columns: distance, global row index, label, weight, then the row
        (normalised for "cosine"). Zero-norm rows and rows of zero weight are
        never candidates: a row of weight 0 counts as absent everywhere, so it
        cannot refill a cluster either.
    """
    labels, mind, _ = assign(x, centers, metric=metric)
    absent = np.isnan(mind)
    with np.errstate(invalid="ignore"):  # NaN rows are absent already
        absent |= _sitting(x, centers, labels, mind, metric, n_rows, at)
    if sample_weight is not None:
        absent |= np.asarray(sample_weight) <= 0
    mind = np.where(absent, -np.inf, mind)
    m = min(n_far, x.shape[0])
    if m == 0:
        return np.empty((0, 4 + x.shape[1]), dtype=np.float64)
    if m < x.shape[0]:
        # The m largest, ties at the m-th by lower row index (argpartition takes any of
        # them), so that the chunking cannot change which rows are offered.
        cut = mind[np.argpartition(-mind, m - 1)[m - 1]]
        above = np.flatnonzero(mind > cut)
        idx = np.concatenate([above, np.flatnonzero(mind == cut)[: m - len(above)]])
    else:
        idx = np.arange(x.shape[0])
    w = np.ones(len(idx)) if sample_weight is None else np.asarray(sample_weight)[idx]
    out = np.empty((len(idx), 4 + x.shape[1]), dtype=np.float64)
    out[:, 0] = mind[idx]
    out[:, 1] = idx + offset
    out[:, 2] = labels[idx]
    out[:, 3] = w
    out[:, 4:] = np.asarray(x)[idx]
    if metric == "cosine":
        out[:, 4:] = normalize_rows(out[:, 4:])
    return out[np.isfinite(out[:, 0])]


#: Rows whose float64 mean the 1e-10 of :func:`_same_point_share` covers; beyond, it grows
#: with them (the rounding of a sum grows with its terms: 1.4e-11 to 4.4e-11 of the row's
#: distance from the sums' origin measured for 2 million copies of a row).
SAME_POINT_ROWS = 2_000_000


def _same_point_share(dtype, n_rows: int = 0) -> tuple[float, float]:
    """How far apart two points may be and still be the same point, as shares of the
    larger of their norms and of their distances from the origin of the sums (see
    :class:`Partials`): ``4 eps`` (``eps`` of ``dtype``: a centre is stored in it, within
    half a unit in the last place of each coordinate, at most ``eps`` of the norm) and
    ``1e-10``, the rounding of a float64 mean of up to :data:`SAME_POINT_ROWS` copies of
    one row summed about that origin, in proportion beyond (``n_rows``)."""
    dtype = np.dtype(dtype)
    eps = np.finfo(dtype).eps if dtype.kind == "f" else np.finfo(float).eps
    return 4 * eps, 1e-10 * max(1.0, n_rows / SAME_POINT_ROWS)


def _sitting(x: np.ndarray, centers: np.ndarray, labels: np.ndarray, mind: np.ndarray,
             metric: str, n_rows: int, at: np.ndarray | None = None) -> np.ndarray:
    """Which rows sit on their centre: within :func:`_same_point_share` (of the larger of
    the row's norm and its centre's, and of the row's distance from its cluster's row of
    ``at``, the sums' origins; the row and its centre alone: a far centre elsewhere
    changes nothing). ``mind``: squared distances, ``1 - cos = |u - c|^2 / 2`` for cosine
    (rows and centres of unit norm)."""
    of_norm, of_spread = _same_point_share(x.dtype, n_rows)
    if metric == "cosine":
        share = of_norm + of_spread
        return mind <= 0.5 * share * share
    c = np.asarray(centers, dtype=np.float64)
    xs = np.asarray(x, dtype=np.float64)
    own = np.maximum(labels, 0)
    size2 = np.maximum(np.einsum("ij,ij->i", xs, xs), np.einsum("ij,ij->i", c, c)[own])
    off = xs - _origin(centers, metric, at)[own]
    allowed = of_norm * np.sqrt(size2) + of_spread * np.sqrt(np.einsum("ij,ij->i", off, off))
    return mind <= allowed * allowed


def count_distinct(centers: np.ndarray, at: np.ndarray | None = None) -> int:
    """How many of ``centers`` are distinct, those that differ only by rounding counting
    once: a centre that is the mean of many copies of a point and another that is the
    point itself (an empty cluster relocated onto a duplicate) are the same centre.

    Two centres are the same when they are within :func:`_same_point_share` of each
    other: ``4 eps`` (of their dtype) of the larger of their norms plus ``1e-10`` of the
    larger of their distances from their origins ``at``, what their sums were taken about
    (:class:`Partials`; unknown, None: the norms' share alone), far below any separation of
    clusters that the data's precision could tell apart (the two centres alone: a far
    centre elsewhere changes nothing; before, 1e-10 of the norms called clusters 0.1 apart
    near 1.7e9 one). Compared block by block, k x 1024 at most.
    """
    centers = np.asarray(centers)
    k = centers.shape[0]
    if k < 2:
        return k
    c = centers.astype(np.float64)
    of_norm, of_spread = _same_point_share(centers.dtype)
    norms = np.sqrt(np.einsum("ij,ij->i", c, c))
    if at is None:
        devs = np.zeros(k)
    else:
        dev = c - np.asarray(at, dtype=np.float64)
        devs = np.sqrt(np.einsum("ij,ij->i", dev, dev))
    cs = c - c.mean(axis=0)
    sq = np.einsum("ij,ij->i", cs, cs)
    same = np.zeros(k, dtype=bool)  # a copy of a centre before it
    for start in range(0, k, 1024):
        block = slice(start, min(start + 1024, k))
        tol = of_norm * np.maximum(norms[block, None], norms[None, :]) \
            + of_spread * np.maximum(devs[block, None], devs[None, :])
        # Expanded distances (rounding up to a few eps of the norms) pick the candidate
        # pairs; their exact differences decide.
        d2 = sq[block, None] + sq[None, :] - 2.0 * (cs[block] @ cs.T)
        slack = tol**2 + 8 * np.finfo(float).eps * (sq[block, None] + sq[None, :])
        for i, j in zip(*np.nonzero(d2 <= slack), strict=True):
            i += start
            if j < i and not same[j] and \
                    np.sqrt(((c[i] - c[j]) ** 2).sum()) <= tol[i - start, j]:
                same[i] = True
    return int(k - same.sum())


def relocate_empty(
    sums: np.ndarray, counts: np.ndarray, candidates: np.ndarray, at: np.ndarray,
    metric: str = "euclidean",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move each empty cluster onto one of the rows farthest from its centre.

    Follows scikit-learn: the farthest row leaves its cluster (its weighted
    contribution is removed from that cluster's sums) and becomes the only
    member of the empty one. ``candidates`` is the output of :func:`farthest`
    for all chunks, concatenated; ``at`` holds the clusters' origins of the sums.

    With fewer candidates than empty clusters (:func:`farthest` offers no row that
    sits on its centre), the clusters left over stay empty and keep their centres.

    Returns
    -------
    sums, counts, at : new arrays of shapes (k, d), (k,) and (k, d)
        A refilled cluster's origin is its row (Euclidean), so that its centre is that
        row exactly: pass ``at`` on to :func:`finalize_centers` and to the next passes.
    """
    sums = sums.copy()
    counts = counts.copy()
    at = np.array(at, dtype=np.float64)
    before = counts.copy()
    empty = np.flatnonzero(counts == 0)
    # Farthest first; ties by lower global row index so chunking cannot matter.
    order = np.lexsort((candidates[:, 1], -candidates[:, 0]))
    left = np.zeros(len(counts), dtype=bool)
    for cluster, row in zip(empty, candidates[order], strict=False):
        old = int(row[2])
        w = row[3]
        point = row[4:]
        sums[old] -= w * (point - at[old])
        counts[old] -= w
        left[old] = True
        if metric == "cosine":  # the sums of unit rows, about 0
            sums[cluster] = w * point
        else:
            sums[cluster] = 0.0
            at[cluster] = point
        counts[cluster] = w
    # A cluster whose every row moved keeps a rounding residue of its weights (0.1 + 0.2
    # - 0.1 - 0.2 > 0), and residue / residue would be its centre: make it empty, so
    # that it keeps its centre, whatever the order the engine summed in.
    gone = left & (counts <= RELOCATE_RESIDUE * before)
    sums[gone] = 0.0
    counts[gone] = 0.0
    return sums, counts, at


def finalize_centers(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray,
                     metric: str = "euclidean", at: np.ndarray | None = None) -> np.ndarray:
    """New centres: weighted means (normalised for "cosine"), in the dtype of ``previous``,
    from sums about the clusters' origins ``at`` (default: :func:`origin` of ``previous``).

    A cluster that is still empty (with fewer rows of positive weight than
    clusters, or after :func:`relocate_empty` moved all its rows) keeps its
    previous centre; so does a cosine cluster whose members' directions
    cancel exactly.

    Returns
    -------
    ndarray of shape (n_clusters, n_features)
    """
    empty = counts <= 0
    if metric == "cosine":
        norm = np.sqrt(np.einsum("ij,ij->i", sums, sums))
        empty |= norm == 0
        new = sums / np.where(empty, 1.0, norm)[:, None]
    else:
        new = _origin(previous, metric, at) + sums / np.where(empty, 1.0, counts)[:, None]
    new[empty] = previous[empty]
    return new.astype(previous.dtype, copy=False)


def sample_indices(n: int, size: int, random_state: np.random.RandomState) -> np.ndarray:
    """Sorted indices of a uniform sample of ``size`` of ``n`` rows without replacement
    (``size <= n``), in O(size) memory whatever ``n`` (``RandomState.choice`` without
    replacement permutes all ``n``)."""
    if size > n // 4:
        return np.sort(random_state.choice(n, size=size, replace=False))
    # Draw with replacement until there are enough distinct rows, then keep a random
    # subset of them: every subset of `size` rows is equally likely.
    distinct = np.unique(random_state.randint(0, n, size=size + size // 8 + 16))
    while distinct.size < size:
        distinct = np.union1d(distinct, random_state.randint(0, n, size=size))
    return np.sort(random_state.choice(distinct, size=size, replace=False))


# -- k-means|| ---------------------------------------------------------------


def row_draws(seed: int, stream: int, offset: int) -> np.random.Generator:
    """A generator whose uniform draws (``.random``) are those of global rows
    ``offset, offset + 1, ...`` in turn.

    Counter-based (Philox): the draw of a row depends only on ``seed``,
    ``stream`` and the row's global index, never on how rows are chunked or
    which worker runs the chunk. Row ``r`` is lane ``r % 4`` of block ``r // 4``.
    """
    bitgen = np.random.Philox(key=[seed, stream], counter=[offset // 4, 0, 0, 0])
    if offset % 4:
        bitgen.random_raw(offset % 4)  # the lanes of the rows before ``offset``
    # Each double is the top 53 bits of one 64-bit output, as ``(raw >> 11) / 2**53``,
    # drawn by NumPy's own loop: three times faster than ``random_raw`` and a shift.
    return np.random.Generator(bitgen)


def row_uniforms(seed: int, stream: int, offset: int, n: int) -> np.ndarray:
    """Uniform draws in [0, 1) for global rows ``offset .. offset + n - 1``
    (see :func:`row_draws`).

    Returns
    -------
    ndarray of shape (n,), float64
    """
    return row_draws(seed, stream, offset).random(n)


class Nearest(NamedTuple):
    """Per-row state of k-means||: distance to and index of the nearest candidate."""

    sq_dist: np.ndarray  # (n,) float64
    index: np.ndarray  # (n,) int64, into the list of all candidates so far


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _load_block(x, start, m, shift, cosine, xs, scales, norms):
    """Rows ``start .. start + m - 1`` of ``x`` less ``shift`` (divided by their norms for
    cosine) into the float32 rows of ``xs``; each row's scale (0 for a zero-norm row with
    cosine) into ``scales`` and the squared norm of the shifted row into ``norms``, in
    float64. (Indexed in two dimensions: taking a view of each row cost ~30 ns a row,
    as much as the whole load.)"""
    d = x.shape[1]
    for r in range(m):
        i = start + r
        scale = _unit_scale(x[i]) if cosine else 1.0
        xx = 0.0
        if cosine and scale == 0.0:  # no direction (an infinity times 0 would be NaN)
            for f in range(d):
                xs[r, f] = 0.0
        else:
            for f in range(d):
                v = (np.float64(x[i, f]) - shift[f]) * scale
                xs[r, f] = v
                xx += v * v
        scales[r] = scale
        norms[r] = xx


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _settle(out_sq, out_idx, i, dist, index, prev_sq, keep, has_prev):
    """Row ``i``'s new state: candidate ``index`` at ``dist``, unless its previous
    candidate ``keep`` is at most as far."""
    if has_prev and not dist < prev_sq[i]:
        out_sq[i] = prev_sq[i]
        out_idx[i] = keep
    else:
        out_sq[i] = dist
        out_idx[i] = index


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _float32_below(v):
    """A float32 at most ``v`` (float64, within float32's range), at most seven float32
    steps below it: a threshold float32 scores can be compared with (vectorised)
    that lets through every score the float64 one would."""
    return np.float32(v - abs(v) * 2.0**-22 - 2.0**-148)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _count_hits(db, half, thr, m, hits, first):
    """For each of the ``m`` rows (columns of ``db``), how many candidates score at least
    its ``thr``, and the first of them (``k`` for none)."""
    k = db.shape[0]
    for r in range(m):
        hits[r] = 0
        first[r] = k
    for j in range(k):
        hj = half[j]
        sj = db[j]
        for r in range(m):  # across rows: elementwise, vectorised
            hit = sj[r] - hj >= thr[r]
            hits[r] += np.int32(1) if hit else np.int32(0)
            first[r] = min(first[r], np.int32(j) if hit else np.int32(k))


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _top_scores(db, half, m, top, arg, second):
    """For each of the ``m`` rows (columns of ``db``), its best score and the first
    candidate with it: the comparisons of a scalar argmax, row by row (NaN never
    wins, candidate 0 stays), made across rows at once. With ``second`` of length
    ``m``, also each row's best score among the other candidates (``-inf`` with one
    candidate); of length 0, not (tracking it costs the passes that need no second
    score 5-12%)."""
    k = db.shape[0]
    want_second = second.shape[0] > 0
    h0 = half[0]
    s0 = db[0]
    for r in range(m):
        top[r] = s0[r] - h0
        arg[r] = 0
        if want_second:
            second[r] = -np.inf
    for j in range(1, k):
        hj = half[j]
        sj = db[j]
        if want_second:
            for r in range(m):
                v = sj[r] - hj
                better = v > top[r]
                second[r] = top[r] if better else max(second[r], v)
                top[r] = v if better else top[r]
                arg[r] = np.int32(j) if better else arg[r]
        else:
            for r in range(m):
                v = sj[r] - hj
                better = v > top[r]
                top[r] = v if better else top[r]
                arg[r] = np.int32(j) if better else arg[r]


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _count_near(db, half, low, m, near):
    """For each of the ``m`` rows (columns of ``db``), how many candidates score at least
    its ``low``."""
    k = db.shape[0]
    for r in range(m):
        near[r] = 0
    for j in range(k):
        hj = half[j]
        sj = db[j]
        for r in range(m):
            near[r] += np.int32(1) if sj[r] - hj >= low[r] else np.int32(0)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"}, inline="always")
def _score_floor(top, window):
    """The lowest score that may still be the best, given the best float32 score ``top``
    and the row's error ``window``: in float64, and as a float32 to compare scores with."""
    low = np.float64(top) - window
    return low, (_float32_below(low) if low > -np.inf and low < np.inf else np.float32(low))


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _row_scores(db, half, r, window, top, arg, lows, low32, near):
    """What :func:`_top_scores`, :func:`_score_floor` and :func:`_count_near` find for
    the rows of a block, for its row ``r`` alone (the same comparisons, in the same
    order): for the few rows of a block that need them."""
    best = db[0, r] - half[0]
    at = 0
    for j in range(1, db.shape[0]):
        v = db[j, r] - half[j]
        if v > best:
            best = v
            at = j
    top[r] = best
    arg[r] = at
    lows[r], low32[r] = _score_floor(best, window)
    count = 0
    for j in range(db.shape[0]):
        count += db[j, r] - half[j] >= low32[r]
    near[r] = count


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
def _candidate_pass(x, cs, half, shift, err_row, err_const, f32_ok, c, base, prev_sq,
                    prev_idx, has_prev, count_hits, out_sq, out_idx, cosine):
    """Nearest of the candidates ``c`` for every row, merged with the previous state.

    The GEMM runs in float32 on rows and candidates less ``shift`` (``cs``:
    the shifted candidates, ``half``: their halved squared norms, both
    float32): it only proposes a candidate. A score
    ``x.c - |c|^2 / 2`` may be off by half of ``err_row * |x - shift| +
    err_const``, so when another candidate scores within that of the best,
    those candidates are measured exactly too; the exact float64 distance
    decides (the first candidate on ties). So the result is the exact
    nearest candidate, whatever the BLAS or the blocking. With ``has_prev``
    a row keeps its previous candidate unless a new one is strictly closer;
    with ``count_hits`` too, a row whose scores all stay clear of that is not
    measured at all, and one with up to ``FEW_HITS`` candidates that may be
    closer has just those measured. Rows or candidates whose squared norms
    reach ``F32_SAFE`` (float32 products would overflow; ``f32_ok`` False
    for the candidates) are measured against every candidate.
    Rows of zero norm (cosine) get distance 0 and candidate -1 (none stands
    for a row without direction); rows with NaN get distance NaN (so does
    the cost of the pass, which then stops the initialisation), and keep their
    previous candidate (``base`` without one).

    The scores of a block of rows are laid out candidate by candidate (the
    GEMM ``cs . xs^T``), so that the best score, its candidate and the
    counts are found for all the block's rows at once, in loops across rows
    that vectorise: a scalar argmax over each row's scores cost most of the
    pass (2.5x the time on 250k x 32 float32 rows and 64 candidates). With
    ``count_hits``, few rows need a best score at all (0.1-1.7% of them from
    the third round, on the overlapping mixture): when fewer than one in
    ``SCAN_ROWS_SHARE`` of a block does, just those rows are scanned, each
    alone (:func:`_row_scores`).
    """
    n, d = x.shape
    k = c.shape[0]
    if k == 1:  # one candidate (the first round): its exact distance, no GEMM
        for i in range(n):
            keep = prev_idx[i] if has_prev else base
            scale = _unit_scale(x[i]) if cosine else 1.0
            if cosine and scale == 0.0:  # no direction: no candidate stands for it
                out_sq[i] = 0.0
                out_idx[i] = -1
                continue
            dist = _sq_dist(x[i], scale, c[0]) * (0.5 if cosine else 1.0)
            _settle(out_sq, out_idx, i, dist, base, prev_sq, keep, has_prev)
        return
    flat = np.empty(k * BLOCK_ROWS, dtype=np.float32)
    xs = np.empty((BLOCK_ROWS, d), dtype=np.float32)
    scales = np.empty(BLOCK_ROWS)
    norms = np.empty(BLOCK_ROWS)
    windows = np.empty(BLOCK_ROWS)
    lows = np.empty(BLOCK_ROWS)
    thr = np.empty(BLOCK_ROWS, dtype=np.float32)
    hits = np.empty(BLOCK_ROWS, dtype=np.int32)
    first = np.empty(BLOCK_ROWS, dtype=np.int32)
    top = np.empty(BLOCK_ROWS, dtype=np.float32)
    arg = np.empty(BLOCK_ROWS, dtype=np.int32)
    low32 = np.empty(BLOCK_ROWS, dtype=np.float32)
    near = np.empty(BLOCK_ROWS, dtype=np.int32)
    for start in range(0, n, BLOCK_ROWS):
        m = min(BLOCK_ROWS, n - start)
        _load_block(x, start, m, shift, cosine, xs, scales, norms)
        for r in range(m):  # how far a row's float32 score may be off
            windows[r] = err_row * np.sqrt(norms[r]) + err_const
        db = flat[:k * m].reshape((k, m))  # a row per candidate, a column per row
        np.dot(cs, xs[:m].T, db)  # x.c; the scores below take the half norms away
        rest = m  # rows the few-hits path below does not settle
        if count_hits:
            # Closer than the previous candidate means a score above
            # (|x|^2 - d_prev^2) / 2; most rows have none and keep it, unmeasured.
            for r in range(m):
                prev_full = prev_sq[start + r] * (2.0 if cosine else 1.0)
                thr[r] = _float32_below(0.5 * (norms[r] - prev_full) - windows[r])
            _count_hits(db, half, thr, m, hits, first)
            rest = 0
            for r in range(m):
                if hits[r] > FEW_HITS or not (f32_ok and norms[r] < F32_SAFE):
                    rest += 1
        if rest * SCAN_ROWS_SHARE > m:  # across the block's rows at once
            _top_scores(db, half, m, top, arg, top[:0])
            for r in range(m):
                lows[r], low32[r] = _score_floor(top[r], windows[r])
            _count_near(db, half, low32, m, near)
        elif count_hits and rest:  # one row at a time, just those rows
            for r in range(m):
                if hits[r] > FEW_HITS or not (f32_ok and norms[r] < F32_SAFE):
                    _row_scores(db, half, r, windows[r], top, arg, lows, low32, near)
        for r in range(m):
            i = start + r
            keep = prev_idx[i] if has_prev else base
            scale = scales[r]
            if cosine and scale == 0.0:
                out_sq[i] = 0.0
                out_idx[i] = -1
                continue
            # Values too large for float32 products: every candidate is measured.
            trusted = f32_ok and norms[r] < F32_SAFE
            if count_hits and trusted:
                if hits[r] == 0:
                    out_sq[i] = prev_sq[i]
                    out_idx[i] = keep
                    continue
                if hits[r] <= FEW_HITS:  # measure just those
                    best = first[r]
                    dist = _sq_dist(x[i], scale, c[best])
                    if hits[r] > 1:
                        for j in range(best + 1, k):
                            if db[j, r] - half[j] >= thr[r]:
                                dj = _sq_dist(x[i], scale, c[j])
                                if dj < dist:
                                    dist = dj
                                    best = j
                    if cosine:
                        dist *= 0.5
                    _settle(out_sq, out_idx, i, dist, best + base, prev_sq, keep, True)
                    continue
            best = arg[r]
            finite = lows[r] > -np.inf and lows[r] < np.inf
            dist = _sq_dist(x[i], scale, c[best])
            if near[r] > 1 or not trusted or not finite:
                check_all = not trusted or not finite
                proposed = best
                for j in range(k):
                    if j != proposed and (check_all or db[j, r] - half[j] >= low32[r]):
                        dj = _sq_dist(x[i], scale, c[j])
                        if dj < dist or (dj == dist and j < best):
                            dist = dj
                            best = j
            if cosine:
                dist *= 0.5
            _settle(out_sq, out_idx, i, dist, best + base, prev_sq, keep, has_prev)


def _f32_scores(candidates: np.ndarray, metric: str):
    """What :func:`_candidate_pass` needs of the candidates: the shift (their mean;
    zero for cosine), the shifted candidates and their halved squared norms in float32,
    and the score error bound ``(err_row, err_const)``.

    A float32 score of ``d`` terms, rows and candidates rounded to float32 first,
    then the half norm taken away, is within ``(d + 5) * 2**-24 * (|x| cmax +
    cmax**2 / 2)`` of the exact one (``cmax`` the largest shifted candidate
    norm); two scores are compared, and twice that again is allowed.
    """
    c = np.asarray(candidates, dtype=np.float64)
    d = c.shape[1]
    shift = np.zeros(d) if metric == "cosine" else c.mean(axis=0)
    cs = c - shift
    sq = np.einsum("ij,ij->i", cs, cs)
    cmax2 = float(sq.max())
    unit = 4.0 * (d + 5) * 2.0**-24
    # Below float32's normal range, products and their roundings lose relative
    # precision (or flush to zero): allow an absolute error of the smallest normal
    # number per term, in proportion to the factors' sizes.
    tiny = 4.0 * (d + 2) * float(np.finfo(np.float32).tiny)
    cmax = np.sqrt(cmax2)
    f32_ok = cmax2 < F32_SAFE
    with np.errstate(over="ignore"):  # such candidates are measured in float64 anyway
        cs32 = cs.astype(np.float32)
        half = (0.5 * sq).astype(np.float32)
    return (shift, cs32, half, unit * cmax + tiny, unit * 0.5 * cmax2 + tiny * (1.0 + cmax),
            f32_ok)


def nearest_update(
    x: np.ndarray, candidates: np.ndarray, base: int, previous: Nearest | None = None,
    metric: str = "euclidean", out: Nearest | None = None,
) -> Nearest:
    """Nearest candidate of every row once ``candidates[base:]`` join the candidates.

    ``previous`` is the state for ``candidates[:base]`` (None when ``base`` is
    0). Only the new candidates are compared with the rows, by a float32 GEMM
    whose proposals are checked in float64 (:func:`_candidate_pass`): the
    exact nearest candidate and exact squared distance (``1 - cos`` for
    "cosine"), in about 0.65 of the time of a float64 GEMM pass; ties keep
    the earlier candidate. Zero-norm rows (cosine) get distance 0, which
    keeps them out of the sampling, and candidate -1; rows holding NaN get
    distance NaN.

    ``out``, a state no longer needed (not ``previous``), is written over
    instead of allocating a new one (see :func:`bounded_partials` on why
    that matters in dask workers).

    (Skipping new candidates by the triangle inequality was tried: on
    overlapping mixtures 13-35% of the distances remained and the scalar loop
    was no faster than the GEMM over all of them.)
    """
    new = candidates[base:]
    if previous is not None and new.shape[0] == 0:
        return previous
    x = np.ascontiguousarray(x)
    c = np.ascontiguousarray(new, dtype=x.dtype)
    shift, cs, half, err_row, err_const, f32_ok = _f32_scores(c, metric)
    n = x.shape[0]
    has_prev = previous is not None
    prev_sq = previous.sq_dist if has_prev else np.empty(0)
    prev_idx = previous.index if has_prev else np.empty(0, dtype=np.int64)
    if out is None or out.sq_dist.shape != (n,) \
            or (has_prev and out.sq_dist is previous.sq_dist):
        out = Nearest(np.empty(n), np.empty(n, dtype=np.int64))  # every row is written
    # After one candidate (the first k-means|| round) almost every row has many new
    # ones nearer: counting them would cost more than it saves.
    count_hits = has_prev and base > 1
    _candidate_pass(x, cs, half, shift, err_row, err_const, f32_ok, c, base, prev_sq,
                    prev_idx, has_prev, count_hits, out.sq_dist, out.index,
                    metric == "cosine")
    return out


def oversample(
    x: np.ndarray,
    nearest: Nearest,
    sample_weight: np.ndarray | None,
    draws: np.random.Generator,
    offset: int,
    ell: float,
) -> tuple[np.ndarray, float]:
    """Rows of a chunk that may join the k-means|| candidates, and the chunk's cost.

    A row joins with probability ``min(1, ell * w * d^2 / phi)`` where ``phi``
    is the cost over *all* chunks, known only after the pass. Since
    ``phi >= phi_chunk``, every row with ``u < ell * w * d^2 / phi_chunk`` is
    returned (about ``ell`` rows at most, in expectation), and the rows
    :func:`chosen` for the total cost join the candidates (see
    :func:`merge_proposals`). ``u`` is the row's next draw from ``draws``
    (:func:`row_draws` at the chunk's first row), taken
    :data:`OVERSAMPLE_BLOCK` rows at a time into one small buffer: no memory
    in proportion to the rows (fresh pages in dask workers, see
    :func:`bounded_partials`).

    Returns
    -------
    rows : ndarray of shape (m, 3 + n_features), float64
        Columns: global row index, ``u``, ``w * d^2``, then the row.
    phi_chunk : float
        ``sum(w * d^2)`` over the chunk.
    """
    wd2 = nearest.sq_dist if sample_weight is None else nearest.sq_dist * sample_weight
    phi = float(wd2.sum())
    n = wd2.shape[0]
    keep, u_keep = [np.empty(0, dtype=np.int64)], [np.empty(0)]
    if phi > 0:
        u = np.empty(min(n, OVERSAMPLE_BLOCK))
        for start in range(0, n, OVERSAMPLE_BLOCK):
            m = min(OVERSAMPLE_BLOCK, n - start)
            ub = draws.random(out=u[:m])
            hit = np.flatnonzero(ub * phi < ell * wd2[start : start + m])
            keep.append(hit + start)
            u_keep.append(ub[hit])
    keep = np.concatenate(keep)
    rows = np.empty((len(keep), 3 + x.shape[1]), dtype=np.float64)
    rows[:, 0] = keep + offset
    rows[:, 1] = np.concatenate(u_keep)
    rows[:, 2] = wd2[keep]
    rows[:, 3:] = np.asarray(x)[keep]
    return rows, phi


def chosen(rows: np.ndarray, phi: float, ell: float) -> np.ndarray:
    """The rows of :func:`oversample` that join the candidates when the cost over all
    chunks is ``phi``: ``u * phi < ell * w * d^2`` (none when ``phi`` is 0)."""
    if not phi > 0:
        return rows[:0]
    return rows[rows[:, 1] * phi < ell * rows[:, 2]]


def merge_proposals(*parts: tuple[np.ndarray, float], ell: float) -> tuple[np.ndarray, float]:
    """The rows and cost of several chunks' :func:`oversample`, as one.

    The cost is their sum, and only the rows :func:`chosen` for that cost are
    kept: about ``ell`` rows, however many chunks. A tree of merges loses no row
    the root keeps, since a subtree's cost is at most the root's (a sum of
    non-negative numbers never decreases, in floating point too).
    """
    phi = sum(p for _, p in parts)
    return chosen(np.concatenate([r for r, _ in parts]), phi, ell), phi


def candidate_weights(
    nearest: Nearest, sample_weight: np.ndarray | None, n_candidates: int
) -> np.ndarray:
    """Total weight of the rows nearest to each candidate, then the number of rows
    nearest to none (zero norm, cosine): shape (n_candidates + 1,)."""
    none = nearest.index < 0
    n_none = int(np.count_nonzero(none))
    index, w = nearest.index, sample_weight
    if n_none:
        index = index[~none]
        w = None if w is None else np.asarray(w)[~none]
    out = np.empty(n_candidates + 1)
    out[:-1] = np.bincount(index, weights=w, minlength=n_candidates)
    out[-1] = n_none
    return out


def weighted_choice_keys(
    x: np.ndarray, sample_weight: np.ndarray, u: np.ndarray, offset: int, size: int = 1
) -> np.ndarray:
    """The chunk's best rows for drawing ``size`` rows without replacement with
    probabilities proportional to weight.

    Uses exponential keys (Efraimidis and Spirakis): the ``size`` rows with the
    largest keys over all chunks are a weighted draw without replacement (the same
    law as drawing one row at a time, each in proportion to its weight among the rows
    left). The key is ``log(w) - log(-log(u))``, in the order of ``log(u) / w``
    without its overflow (weights of 1e-320 made every key ``-inf``, and the draw
    said no weight was positive). A row of weight 0 has key ``-inf``. Ties at the
    chunk's ``size``-th key go to the lower row index, as in :func:`best_keys`.

    Returns
    -------
    ndarray of shape (min(size, n_rows), 2 + n_features)
        Per row, largest key first: the key, the global row index, then the row itself.
    """
    w = np.asarray(sample_weight, dtype=np.float64)
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)) - np.log(-np.log(u)), -np.inf)
    n = keys.shape[0]
    size = min(size, n)
    if 0 < size < n:
        cut = -np.partition(-keys, size - 1)[size - 1]  # the size-th largest key
        above = np.flatnonzero(keys > cut)
        best = np.concatenate([above, np.flatnonzero(keys == cut)[: size - len(above)]])
    else:
        best = np.arange(size)
    best = best[np.lexsort((best, -keys[best]))]
    out = np.empty((size, 2 + x.shape[1]), dtype=np.float64)
    out[:, 0] = keys[best]
    out[:, 1] = best + offset
    out[:, 2:] = x[best]
    return out


def best_keys(parts: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` rows of largest finite key among per-chunk
    :func:`weighted_choice_keys` results (fewer when fewer keys are finite),
    ties to the lower row index: the same rows however the data is chunked."""
    parts = parts[np.isfinite(parts[:, 0])]
    return parts[np.lexsort((parts[:, 1], -parts[:, 0]))[:size]]


def kmeans_plusplus(
    x: np.ndarray,
    n_clusters: int,
    random_state: np.random.RandomState,
    sample_weight: np.ndarray | None = None,
    n_local_trials: int | None = None,
    metric: str = "euclidean",
) -> np.ndarray:
    """Greedy weighted k-means++ (Arthur and Vassilvitskii, with local trials).

    Each step draws ``n_local_trials`` rows with probability proportional to
    ``w * d^2`` and keeps the one that lowers the total cost most, as
    scikit-learn does. Rows with zero weight are never chosen. For "cosine"
    the rows are normalised first and ``d^2`` is ``1 - cos``.

    Returns
    -------
    ndarray of shape (n_clusters, n_features), dtype of ``x``
    """
    x = normalize_rows(x) if metric == "cosine" else np.asarray(x)
    n = x.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, x.shape[1]), dtype=x.dtype)
    with np.errstate(over="ignore"):
        if not np.isfinite(w.sum()):  # NumPy said "probabilities do not sum to 1"
            raise values_too_large_error("the k-means++ cost")
        first = random_state.choice(n, p=w / w.sum())
        centers[0] = x[first]
        closest = pairwise_sq_distances(x, x[first : first + 1], metric)[:, 0].astype(
            np.float64)
        pot = float(np.dot(w, closest))
    if not np.isfinite(pot):
        raise values_too_large_error("the k-means++ cost")
    for c in range(1, n_clusters):
        if pot <= 0:
            # Every remaining row coincides with a centre: repeat rows (the
            # caller warns about fewer distinct clusters than requested).
            centers[c:] = x[random_state.choice(n, size=n_clusters - c, p=w / w.sum())]
            break
        draws = random_state.uniform(size=n_local_trials) * pot
        trial = np.searchsorted(np.cumsum(w * closest), draws)
        np.clip(trial, 0, n - 1, out=trial)
        d_trial = pairwise_sq_distances(x, x[trial], metric).T.astype(np.float64)
        np.minimum(closest, d_trial, out=d_trial)
        pots = d_trial @ w
        best = int(np.argmin(pots))
        pot = float(pots[best])
        closest = d_trial[best]
        centers[c] = x[trial[best]]
    return centers


def weighted_lloyd(
    x: np.ndarray, sample_weight: np.ndarray, centers: np.ndarray, n_iter: int,
    metric: str = "euclidean",
) -> np.ndarray:
    """A few in-memory weighted Lloyd steps (refines k-means|| on its candidates).

    Returns
    -------
    ndarray of shape (n_clusters, n_features)
    """
    at = origin(centers, metric)  # the same for every step, as a fit keeps them
    for _ in range(n_iter):
        p = lloyd_partials(x, centers, sample_weight, metric, at)
        new = finalize_centers(p.sums, p.counts, centers, metric, at)
        if np.array_equal(new, centers):
            break
        centers = new
    return centers


def combine(*parts: np.ndarray) -> np.ndarray:
    """Elementwise sum of fixed-shape partials (the tree reduction's combine)."""
    return np.sum(parts, axis=0)
