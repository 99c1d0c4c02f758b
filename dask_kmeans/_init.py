"""Initial centres: random rows, a user array, or a user callable."""

from __future__ import annotations

import dask.array as da
import numpy as np

from ._runtime import compute
from ._validation import check_init_array


def take_rows(X, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of ``X`` (ndarray or dask array), in the order of ``idx``."""
    if not isinstance(X, da.Array):
        return np.array(X[idx])
    order = np.argsort(idx, kind="stable")
    (rows,) = compute(X[idx[order]])
    out = np.empty_like(rows)
    out[order] = rows
    return out


def random_rows(X, sample_weight, n_clusters: int, random_state) -> np.ndarray:
    """``n_clusters`` distinct rows drawn at random (weighted by ``sample_weight``)."""
    n = X.shape[0]
    if sample_weight is None:
        idx = random_state.choice(n, size=n_clusters, replace=False)
    else:
        (w,) = compute(sample_weight) if isinstance(sample_weight, da.Array) else (sample_weight,)
        positive = int(np.count_nonzero(w > 0))
        if positive < n_clusters:
            raise ValueError(f"Only {positive} rows have a positive sample_weight; init='random' "
                             f"needs at least n_clusters={n_clusters}.")
        idx = random_state.choice(n, size=n_clusters, replace=False, p=w / w.sum())
    return take_rows(X, idx)


def user_centers(init, X, n_clusters: int, random_state) -> np.ndarray:
    """Centres from an array or a callable ``init(X, n_clusters, random_state)``."""
    if callable(init):
        init = init(X, n_clusters, random_state)
        if isinstance(init, da.Array):
            (init,) = compute(init)
    return check_init_array(init, n_clusters, X.shape[1], X.dtype)
