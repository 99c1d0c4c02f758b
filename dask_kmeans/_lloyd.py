"""The Lloyd driver: one compute per iteration, convergence, logging."""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import dask.array as da
import numpy as np

from . import _graph as G
from . import _kernels as K
from ._passes import Passes
from ._progress import emit
from ._runtime import compute
from ._validation import check_weight_total

logger = logging.getLogger("dask_kmeans")


class LloydResult(NamedTuple):
    centers: np.ndarray
    n_iter: int
    converged: bool
    #: Inertia against the final ``centers``, when ``lloyd(final_inertia=True)`` made that
    #: pass on the persisted chunks; else None.
    inertia: float | None = None
    #: Labels against the final ``centers`` (an ndarray), when that pass ran on chunks held
    #: in this process: the bounds it leaves name every row's centre. Else None.
    labels: np.ndarray | None = None
    #: Each cluster's weight in the last pass (against ``centers`` with ``final_inertia``,
    #: else the pass before, after relocation): which clusters ended empty. Or None.
    counts: np.ndarray | None = None
    #: The clusters' origins of the last pass's sums (``_kernels.Partials``), or None.
    origins: np.ndarray | None = None


def tolerance_from_moments(mom: np.ndarray, tol: float) -> float:
    """scikit-learn's tolerance: ``tol`` times the mean feature variance (``mom`` as from
    ``_kernels.moments``, about any shift)."""
    n = mom[0]
    d = (len(mom) - 1) // 2
    mean = mom[1 : 1 + d] / n
    var = np.maximum(mom[1 + d :] / n - mean**2, 0.0)
    return float(np.mean(var) * tol)


def _tolerance(X, mom: np.ndarray, tol: float) -> float:
    """:func:`tolerance_from_moments`, refused when the variance overflowed (a NaN
    tolerance ran the fit to max_iter: its rows' distances to their own centres, about
    which the inertia and the sums are taken, need not overflow)."""
    tol_abs = tolerance_from_moments(mom, tol)
    if not np.isfinite(tol_abs):
        raise_nonfinite(X, "the variance of the features (for tol)")
    return tol_abs


#: How much larger than a feature's variance the square of its mean's distance from the
#: moments' shift may be before the variance, E[(x-s)^2] - E[x-s]^2, has cancelled away.
FAR_SHIFT = 1e4


def _mostly_rounding(off2: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
    """Where moments about a point (``off2``, the squared distance of the mean from it;
    ``mean_sq``, the mean squared distance of the rows from it) give a variance,
    ``mean_sq - off2``, that the point's distance has cancelled to rounding."""
    return off2 > FAR_SHIFT * np.maximum(mean_sq - off2, 0.0)


def _shift_too_far(mom: np.ndarray) -> bool:
    """Whether moments (as from ``_kernels.moments``) were taken about a shift so far from
    the data that the variance they give is mostly rounding."""
    n = mom[0]
    d = (len(mom) - 1) // 2
    return bool(np.any(_mostly_rounding((mom[1 : 1 + d] / n) ** 2, mom[1 + d :] / n)))


def anchored(at: np.ndarray, partials: K.Partials, new_centers: np.ndarray) -> np.ndarray:
    """The clusters' origins for the sums of the next pass (``partials`` were about
    ``at``; ``new_centers`` from them): ``at``, but for a cluster whose mean lies more than
    ``sqrt(FAR_SHIFT)`` of its rows' standard deviations from its origin (a far initial
    centre that drew rows: its variance about the origin then cancels to rounding): its
    new centre. Origins change rarely, so that the same labels give the same centres to
    the bit. (The pass's inertia could not tell: while far centres held the rows, it was
    made of the same far distances, and the sums stayed about 1e12 away.)"""
    counts = partials.counts
    if partials.sq is None or counts.shape[0] == 0:
        return at
    filled = counts > 0
    n = np.where(filled, counts, 1.0)
    far = filled & _mostly_rounding(((partials.sums / n[:, None]) ** 2).sum(axis=1),
                                    partials.sq / n)
    if not far.any():
        return at
    at = at.copy()
    at[far] = new_centers[far]
    return at


def raise_nonfinite(X, what: str):
    """Raise the error for a pass whose cost, ``what``, is not finite, saying why (one more
    pass, over dask input): the rows holding NaN or infinity, or values too large to
    square in float64."""
    if isinstance(X, da.Array):
        (found,) = compute(G.nonfinite_rows(X))
    else:
        found = K.nonfinite_rows(np.asarray(X), 0)
    raise K.nonfinite_cost_error(found, what)


def _check_finite(X, inertia: float) -> None:
    if not np.isfinite(inertia):
        raise_nonfinite(X, "the inertia of a Lloyd pass")


def _step(X, sample_weight, centers, partials, metric, at):
    """New centres from summed partials (about the clusters' origins ``at``), relocating
    empty clusters (an extra pass, rarely); their shift, how many clusters were empty and
    how many of those were moved, the origins for the next pass, and the clusters'
    weights after relocation."""
    sums, counts = partials.sums, partials.counts
    n_empty = n_moved = int(np.count_nonzero(counts == 0))
    if n_empty:
        (cand,) = compute(G.farthest(X, centers, sample_weight, n_empty, metric, at))
        sums, counts, at = K.relocate_empty(sums, counts, cand, at, metric)
        n_moved = min(n_empty, len(cand))  # rows sitting on their centres are not offered
    new_centers = K.finalize_centers(sums, counts, centers, metric, at)
    shift = float(np.sum((new_centers.astype(np.float64) - centers) ** 2))
    if metric != "cosine":  # (a refilled cluster: sums 0 about its row, sq 0, stays)
        at = anchored(at, K.Partials(sums, counts, partials.inertia, sq=partials.sq),
                      new_centers)
    return new_centers, shift, (n_empty, n_moved), at, counts


def raise_zero_norm(X, n_zero: int):
    """Raise the error for the ``n_zero`` rows that a pass under ``metric="cosine"`` found
    of zero norm, saying where they are (one more pass). Rows holding an infinity, which
    have no norm either, get the error for NaN or infinity instead."""
    (found,) = compute(G.zero_norm_rows(X))
    raise K.zero_norm_rows_error(found, n_zero)


def lloyd(
    X,
    sample_weight,
    centers: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    split_every: int | None = None,
    verbose: bool = False,
    metric: str = "euclidean",
    start_iter: int = 0,
    tol_abs: float | None = None,
    on_iteration=None,
    final_inertia: bool = False,
    passes: Passes | None = None,
    origin: np.ndarray | None = None,
) -> LloydResult:
    """Run Lloyd iterations on a row-chunked dask array from ``centers``.

    Each iteration is exactly one ``compute`` of one map-reduce, except an
    iteration in which a cluster empties: that one makes a second, smaller
    pass to find the rows farthest from their centres. With
    ``metric="cosine"`` (spherical k-means) the centres are unit vectors.

    A resumed fit passes the iterations already done as ``start_iter`` and
    the tolerance computed then as ``tol_abs``. ``on_iteration(n_iter,
    centers, tol_abs, converged)`` is called after every iteration (for
    checkpoints).

    With ``final_inertia`` and data persisted on a cluster (or held in this
    process), one more pass on the persisted chunks (the per-worker actors, or
    the local pool) gives the inertia against the final centres, which a dask
    graph would take several times longer to; in this process it also gives
    the labels.

    ``passes`` (over ``X`` and its weights, with this ``split_every`` and
    ``metric``) lets a fit's initialisation and runs share one set of actors.

    Every pass sums each cluster's rows less its origin (``_kernels.Partials``): its
    initial centre, the row a relocation moved it onto, or its centre when it moved far
    (:func:`anchored`); a resumed fit passes the ones it had as ``origin``.
    ``on_iteration`` gets them too, as its last argument.
    """
    k, d = centers.shape
    dtype = centers.dtype
    known_tol = tol_abs is not None
    tol_abs = tol_abs if known_tol else 0.0
    converged = False
    n_iter = start_iter
    if passes is None:
        passes = Passes(X, sample_weight, split_every=split_every, metric=metric)
    at = K.origin(centers, metric) if origin is None else np.asarray(origin, np.float64)
    counts = None
    for it in range(start_iter, max_iter):
        t0 = time.perf_counter()
        with_moments = not known_tol and it == start_iter and tol > 0
        # The inertia of each iteration is only shown (progress, log): a pass with bounds
        # may take it from the clusters' moments and leave unread the rows that keep
        # their centre. The fitted inertia comes from an exact pass.
        packed = passes.lloyd(centers, with_moments, exact_inertia=False, at=at)
        partials, mom = G.unpack(packed, k, d, with_moments)
        _check_finite(X, partials.inertia)
        if partials.n_zero:
            raise_zero_norm(X, partials.n_zero)
        if it == start_iter and sample_weight is not None:
            # The counts add up to the total weight: dask weights are first seen whole here.
            check_weight_total(partials.counts.any())
        if with_moments:
            if metric != "cosine" and _shift_too_far(mom):
                # The moments are taken about the centres' mean, which a far initial centre
                # drags away from the data: once more, about the data's mean (one pass).
                data_mean = G.moments_shift(centers) + mom[1 : 1 + d] / mom[0]
                packed = passes.lloyd(data_mean[None, :].astype(dtype), True, sizes=(1,))
                _, mom = G.unpack_many(packed, (1,), d, True)
            tol_abs = _tolerance(X, mom, tol)
        new_centers, shift, (n_empty, n_moved), at, counts = _step(
            X, sample_weight, centers, partials, metric, at)
        centers = new_centers
        n_iter = it + 1
        if verbose:
            logger.info(
                "iteration %d: inertia %.6g, center shift %.3g (tolerance %.3g), "
                "%d empty clusters (%d relocated), %.3f s",
                n_iter, partials.inertia, shift, tol_abs, n_empty, n_moved,
                time.perf_counter() - t0,
            )
        converged = shift <= tol_abs
        emit("iteration", n_iter, max_iter, inertia=partials.inertia, shift=shift, tol=tol_abs,
             converged=converged)
        if on_iteration is not None:
            on_iteration(n_iter, centers, tol_abs, converged, at)
        if converged:
            break
    centers = centers.astype(dtype, copy=False)
    inertia = labels = None
    if final_inertia and (passes.on_futures or passes.local):
        partials, _ = G.unpack(passes.lloyd(centers, False, at=at), k, d, False)
        inertia, counts = partials.inertia, partials.counts
        labels = passes.local_labels()
    return LloydResult(centers, n_iter, converged, inertia, labels, counts, at)


def lloyd_many(X, sample_weight, centers_list, *, max_iter: int, tol: float,
               split_every: int | None = None, verbose: bool = False,
               metric: str = "euclidean", passes: Passes | None = None) -> list[LloydResult]:
    """Lloyd iterations of several models (a K sweep) sharing every pass over the data.

    Each pass stacks the centres of the models that have not converged yet; a
    chunk is read once and serves all of them, so a sweep reads the data about
    as often as the slowest single fit.
    """
    d = centers_list[0].shape[1]
    centers = [np.asarray(c) for c in centers_list]
    n_iter = [0] * len(centers)
    results: list[LloydResult | None] = [None] * len(centers)
    active = list(range(len(centers)))
    tol_abs = 0.0
    if passes is None:
        passes = Passes(X, sample_weight, split_every=split_every, metric=metric)
    at = [K.origin(c, metric) for c in centers]  # each model's, as lloyd keeps them
    counts: list = [None] * len(centers)
    for it in range(max_iter):
        if not active:
            break
        t0 = time.perf_counter()
        with_moments = it == 0 and tol > 0
        sizes = tuple(centers[i].shape[0] for i in active)
        packed = passes.lloyd_models({i: centers[i] for i in active}, with_moments,
                                     {i: at[i] for i in active})
        parts, mom = G.unpack_many(packed, sizes, d, with_moments)
        _check_finite(X, sum(p.inertia for p in parts))
        if parts[0].n_zero:
            raise_zero_norm(X, parts[0].n_zero)
        if it == 0 and sample_weight is not None:
            check_weight_total(parts[0].counts.any())
        if with_moments:
            tol_abs = _tolerance(X, mom, tol)
        still = []
        for i, partials in zip(active, parts, strict=True):
            centers[i], shift, _, at[i], counts[i] = _step(X, sample_weight, centers[i],
                                                           partials, metric, at[i])
            n_iter[i] = it + 1
            if shift <= tol_abs:
                results[i] = LloydResult(centers[i], n_iter[i], True, counts=counts[i],
                                         origins=at[i])
            else:
                still.append(i)
        emit("sweep", it + 1, max_iter, moving=len(still), models=len(centers))
        if verbose:
            logger.info("sweep iteration %d: %d of %d models still moving, %.3f s",
                        it + 1, len(still), len(centers), time.perf_counter() - t0)
        active = still
    for i in active:
        results[i] = LloydResult(centers[i], n_iter[i], False, counts=counts[i],
                                 origins=at[i])
    return results
