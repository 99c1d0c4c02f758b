"""Initial centres: k-means|| (out-of-core), k-means++, random rows, a user array or callable."""

from __future__ import annotations

import inspect
import logging
import warnings

import dask
import dask.array as da
import numpy as np

from . import _kernels as K
from ._lloyd import raise_nonfinite, raise_zero_norm
from ._passes import Passes
from ._progress import emit
from ._runtime import compute
from ._validation import check_init_array, check_weight_total

logger = logging.getLogger("dask_kmeans")

#: init="k-means++" runs on the driver; larger dask input is sampled down to this.
KMEANS_PP_MAX_ROWS = 200_000
#: Weighted Lloyd steps that refine the k-means++ seeding of the k-means|| candidates.
REFINE_ITER = 10
#: Extra k-means|| rounds allowed when the rounds asked for found fewer than k candidates
#: (each oversampling at least twice the number missing).
MAX_EXTRA_ROUNDS = 10


def take_rows(X, idx: np.ndarray, sample_weight=None):
    """Rows ``idx`` of ``X`` (and their weights), in the order of ``idx``.

    Returns
    -------
    rows : ndarray of shape (len(idx), n_features)
    weights : ndarray of shape (len(idx),) or None
    """
    idx = np.asarray(idx, dtype=np.int64)
    if not isinstance(X, da.Array):
        return np.array(X[idx]), None if sample_weight is None else np.asarray(sample_weight)[idx]
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    if sample_weight is None:
        (rows,) = compute(X[sorted_idx])
        w = None
    else:
        rows, w_sorted = compute(X[sorted_idx], sample_weight[sorted_idx])
        w = np.empty_like(w_sorted)
        w[order] = w_sorted
    out = np.empty_like(rows)
    out[order] = rows
    return out, w


def random_rows(X, sample_weight, n_clusters: int, random_state,
                passes: Passes | None) -> np.ndarray:
    """``n_clusters`` distinct rows drawn at random (weighted by ``sample_weight``).

    Unweighted: a uniform sample of row indices in O(n_clusters) memory, and
    only the chunks holding them are read. Weighted: one pass over the data
    keeps each chunk's ``n_clusters`` rows of largest exponential key (see
    :func:`K.weighted_choice_keys`); the driver keeps the largest of those, so
    no weight reaches it. The same ``random_state`` gives the same rows for
    NumPy and dask input, however chunked. ``passes`` runs over ``X`` (as a dask
    array) and its weights; unweighted draws do not use it.
    """
    n = X.shape[0]
    if sample_weight is None:
        return take_rows(X, K.sample_indices(n, n_clusters, random_state))[0]
    seed = int(random_state.randint(0, 2**62, dtype=np.int64))
    rows = _weighted_rows(passes, seed, n_clusters, X.dtype)
    if len(rows) < n_clusters:  # every row of positive weight was kept
        raise ValueError(f"Only {len(rows)} rows have a positive sample_weight; "
                         f"init='random' needs at least n_clusters={n_clusters}.")
    return rows


def _weighted_rows(passes: Passes, seed: int, size: int, dtype) -> np.ndarray:
    """``size`` rows drawn without replacement in proportion to their weights, in one
    pass (all rows of positive weight when there are fewer), as ``dtype``.

    Raises
    ------
    ValueError
        If no weight is positive.
    """
    chosen = K.best_keys(passes.weighted_choice(seed=seed, stream=0, size=size), size)
    check_weight_total(len(chosen))  # a row of weight 0 has key -inf
    return chosen[:, 2:].astype(dtype)


def _takes_random_state_by_name(init) -> bool:
    try:
        params = inspect.signature(init).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): as scikit-learn
        return True
    named = params.get("random_state")  # (not **kwargs: init(X, k, rs, **kw) takes it third)
    return named is not None and named.kind in (named.KEYWORD_ONLY, named.POSITIONAL_OR_KEYWORD)


def user_centers(init, X, n_clusters: int, random_state) -> np.ndarray:
    """Centres from an array or a callable ``init(X, n_clusters, random_state)``."""
    what = "The initial centers"
    if callable(init):
        if _takes_random_state_by_name(init):  # scikit-learn passes it so: (..., *, random_state)
            init = init(X, n_clusters, random_state=random_state)
        else:  # any name in third place: lambda X, k, rs: ...
            init = init(X, n_clusters, random_state)
        if isinstance(init, da.Array):
            (init,) = compute(init)
        what = "The initial centers the init callable returned"
    return check_init_array(init, n_clusters, X.shape[1], X.dtype, what)


def _count_positive(w):
    return np.array([np.count_nonzero(w > 0)], dtype=np.int64)


def _positive_at(w, ranks, offset):
    return np.flatnonzero(w > 0)[ranks] + offset


def positive_rows(sample_weight: da.Array, size: int, random_state) -> tuple[np.ndarray, int]:
    """Global indices of the rows of positive weight, or of a uniform sample of ``size`` of
    them when there are more, sorted; and how many there are. Two passes over the weights
    alone: their counts per chunk, then the indices; memory in proportion to ``size``.

    Raises
    ------
    ValueError
        If no weight is positive.
    """
    nblocks = sample_weight.numblocks[0]
    (counts,) = compute(sample_weight.map_blocks(
        _count_positive, chunks=((1,) * nblocks,), dtype=np.int64))
    total = int(counts.sum())
    check_weight_total(total)
    ranks = np.arange(total) if total <= size else K.sample_indices(total, size, random_state)
    starts = np.concatenate([[0], np.cumsum(counts)])
    offsets = np.concatenate([[0], np.cumsum(sample_weight.chunks[0])])
    cuts = np.searchsorted(ranks, starts)
    pieces = [dask.delayed(_positive_at)(block, ranks[cuts[i]:cuts[i + 1]] - starts[i],
                                         int(offsets[i]))
              for i, block in enumerate(sample_weight.to_delayed()) if cuts[i + 1] > cuts[i]]
    return np.concatenate(compute(*pieces)), total


def kmeans_plusplus(X, sample_weight, n_clusters: int, random_state,
                    metric: str = "euclidean") -> np.ndarray:
    """Exact greedy k-means++ on the driver; large dask input is sampled first.

    k-means++ is sequential (k passes), so it runs in memory on the driver. Dask
    input with more than :data:`KMEANS_PP_MAX_ROWS` rows is reduced to a
    uniform sample of that many rows, with a warning; with sample weights, of
    that many of the rows of positive weight (all of them when there are no
    more: rows of weight 0 take no part). ``init="k-means||"`` uses every row.
    """
    w = sample_weight
    if isinstance(X, da.Array):
        n = X.shape[0]
        if n > KMEANS_PP_MAX_ROWS:
            if w is None:
                idx, among = K.sample_indices(n, KMEANS_PP_MAX_ROWS, random_state), n
            else:
                idx, among = positive_rows(w, KMEANS_PP_MAX_ROWS, random_state)
            if among > KMEANS_PP_MAX_ROWS:
                of = f"the {among} rows" if w is None else \
                    f"the {among} rows of positive sample_weight"
                warnings.warn(
                    f"init='k-means++' runs on the driver: it uses a uniform sample of "
                    f"{KMEANS_PP_MAX_ROWS} of {of}. init='k-means||' seeds from all rows "
                    "in a few passes.", UserWarning, stacklevel=5)
            X, w = take_rows(X, idx, sample_weight)
            among = f"of the {len(idx)} sampled for init='k-means++'"
        else:
            X, w = compute(X, sample_weight)
            idx, among = None, ""
            if w is not None:
                check_weight_total(np.any(w > 0))
        # Dask input is not scanned in advance; these rows are at hand, and NaN or infinity
        # would make every draw below NaN.
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        if bad.size:
            rows = bad if idx is None else np.sort(idx[bad])
            raise K.nonfinite_rows_error(bad.size, rows[:5], among)
    return K.kmeans_plusplus(X, n_clusters, random_state, w, metric=metric)


def _first_center(passes: Passes, random_state, seed: int) -> np.ndarray:
    X = passes.X
    if passes.sample_weight is None:
        # Uniform: one row, from the actors when the data is persisted on a cluster,
        # else by reading only the chunk holding it.
        index = np.array([random_state.randint(X.shape[0])])
        row = passes.rows(index)
        return take_rows(X, index)[0] if row is None else row
    return _weighted_rows(passes, seed, 1, X.dtype)


def kmeans_parallel(
    X: da.Array,
    sample_weight,
    n_clusters: int,
    random_state,
    *,
    oversampling_factor: float = 2.0,
    init_rounds: int = 5,
    keep_state: bool = False,
    split_every: int | None = None,
    metric: str = "euclidean",
    return_candidates: bool = False,
    passes: Passes | None = None,
) -> np.ndarray:
    """k-means|| (Bahmani et al., "Scalable K-Means++", VLDB 2012) on a dask array.

    One centre is drawn at random; then each of ``init_rounds`` passes
    over the data computes every row's squared distance ``d^2`` to the
    candidates so far and the cost ``phi`` (in the same pass), and each row
    joins the candidates with probability ``min(1, l * w * d^2 / phi)``,
    ``l = oversampling_factor * n_clusters``. A last pass weights each
    candidate by the rows nearest to it; a weighted k-means++ and a few
    weighted Lloyd steps on the driver reduce the candidates to
    ``n_clusters`` centres. At most ``init_rounds + 2`` passes, and nothing
    larger than the candidate set reaches the driver.

    With ``metric="cosine"`` distances are ``1 - cos`` and the candidates
    are unit vectors.

    Each row's random draws depend only on the seed and its global index, so
    the result does not depend on the chunking or on the number of workers.
    With ``keep_state`` (persisted data), each row's nearest-candidate state
    stays on the workers between passes and a pass compares rows only with
    the candidates added by the previous one.

    ``passes`` (over ``X`` and its weights, with this ``split_every`` and
    ``metric``) lets a fit share one set of actors between its passes.

    Returns
    -------
    ndarray of shape (n_clusters, n_features), dtype of ``X``
        Or, with ``return_candidates``, the candidates and their weights
        (for several values of k from one set, as a K sweep does).
    """
    ell = float(oversampling_factor) * n_clusters
    seed = int(random_state.randint(0, 2**62, dtype=np.int64))
    if passes is None:
        passes = Passes(X, sample_weight, split_every=split_every, metric=metric)
    passes.keep_state = keep_state
    first = _first_center(passes, random_state, seed)
    candidates = [K.normalize_rows(first) if metric == "cosine" else first]
    n_cand, base, n_passes = 1, 0, 0
    for rnd in range(1, init_rounds + MAX_EXTRA_ROUNDS + 1):
        if rnd > init_rounds and n_cand >= n_clusters:
            break
        # An extra round (fewer than k candidates so far) expects twice the missing number.
        ell_round = ell if rnd <= init_rounds else max(ell, 2.0 * (n_clusters - n_cand))
        rows, phi = passes.oversample(np.vstack(candidates), base, seed=seed, stream=rnd,
                                      ell=ell_round)
        n_passes = rnd
        if not np.isfinite(phi):  # NaN in any row makes it NaN from the first round
            raise_nonfinite(X, "the k-means|| cost")
        if phi <= 0:  # every row sits on a candidate: nothing left to sample
            break
        chosen = rows[np.argsort(rows[:, 0], kind="stable")]  # in row order
        new = chosen[:, 3:].astype(X.dtype)
        base = n_cand
        n_cand += len(new)
        candidates.append(new)
        logger.debug("k-means|| round %d: cost %.6g, %d new candidates", rnd, phi, len(new))
        emit("init", n_passes, max(init_rounds, n_passes) + 1, candidates=n_cand)
    all_candidates = np.vstack(candidates)
    weights, n_zero = passes.candidate_weights(all_candidates, base)
    if n_zero:
        raise_zero_norm(X, n_zero)
    emit("init", n_passes + 1, n_passes + 1, candidates=n_cand)
    if return_candidates:
        return all_candidates, weights
    return reduce_candidates(all_candidates, weights, n_clusters, random_state, metric)


def reduce_candidates(candidates: np.ndarray, weights: np.ndarray, n_clusters: int,
                      random_state, metric: str = "euclidean") -> np.ndarray:
    """k centres from weighted k-means|| candidates: weighted k-means++, then Lloyd steps."""
    centers = K.kmeans_plusplus(candidates, n_clusters, random_state, weights, metric=metric)
    return K.weighted_lloyd(candidates, weights, centers, REFINE_ITER, metric)

