"""A float64 NumPy Lloyd, written for clarity, as the reference for every test.

Same semantics as dask_kmeans: scikit-learn's tolerance (tol * mean feature
variance, compared with the squared shift of all centres), empty clusters
relocated onto the rows farthest from their centres (ties by lower row index; never onto
a row that sits on a centre, to rounding: see ``on_centre``),
and a final assignment so labels and inertia agree with the final centres.
"""

from __future__ import annotations

import numpy as np

# Tolerances per dtype, relative: float64 results match to rounding of sums in
# a different order; float32 distances and GEMMs round at ~1e-7 per operation.
RTOL = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 1e-4}


def sq_distances(X, C):
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    return ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=-1)


def assign(X, C, w=None):
    d = sq_distances(X, C)
    labels = d.argmin(axis=1)
    mind = d[np.arange(len(X)), labels]
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    return labels, mind, float(np.sum(w * mind))


def partials(X, C, w=None):
    X = np.asarray(X, dtype=np.float64)
    k = len(C)
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    labels, mind, inertia = assign(X, C, w)
    sums = np.zeros((k, X.shape[1]))
    counts = np.zeros(k)
    for j in range(k):
        member = labels == j
        sums[j] = (w[member, None] * X[member]).sum(axis=0)
        counts[j] = w[member].sum()
    return sums, counts, inertia, labels, mind


def on_centre(row, centre, dtype) -> bool:
    """Whether a row sits on its centre: within rounding (4 eps of the data's dtype, plus
    1e-11 for this reference's sums about 0 of up to 1e5 copies of a row) of the larger of
    their norms. An empty cluster is not moved onto such a row (it would only double that
    centre)."""
    eps = np.finfo(dtype).eps if np.dtype(dtype).kind == "f" else np.finfo(float).eps
    size = max(np.linalg.norm(row), np.linalg.norm(centre))
    return bool(np.linalg.norm(row - centre) <= (4 * eps + 1e-11) * size)


def lloyd(X, C0, w=None, *, max_iter=300, tol=1e-4):
    """Returns (centers, labels, inertia, n_iter), all float64."""
    dtype = np.asarray(X).dtype
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    tol_abs = float(np.mean(np.var(X, axis=0)) * tol)
    C = np.array(C0, dtype=np.float64)
    n_iter = 0
    for it in range(max_iter):
        sums, counts, _, labels, mind = partials(X, C, w)
        # Farthest rows first, lower row index first on ties.
        # (rows of weight 0 count as absent: they never refill a cluster)
        order = np.lexsort((np.arange(len(X)), -np.where(w > 0, mind, -np.inf)))
        moved = np.zeros(len(X), dtype=bool)
        order = (far for far in order if not on_centre(X[far], C[labels[far]], dtype))
        for j, far in zip(np.flatnonzero(counts == 0), order, strict=False):
            old = labels[far]
            sums[old] -= w[far] * X[far]
            counts[old] -= w[far]
            sums[j] = w[far] * X[far]
            counts[j] = w[far]
            moved[far] = True
            if not np.any((labels == old) & ~moved & (w > 0)):  # every row of it moved:
                sums[old], counts[old] = 0.0, 0.0  # empty, it keeps its centre
        new = C.copy()
        nz = counts > 0
        new[nz] = sums[nz] / counts[nz, None]
        shift = float(((new - C) ** 2).sum())
        C = new
        n_iter = it + 1
        if shift <= tol_abs:
            break
    labels, _, inertia = assign(X, C, w)
    return C, labels, inertia, n_iter


def spherical_lloyd(X, C0, w=None, *, max_iter=300, tol=1e-4):
    """Spherical k-means (cosine), float64: returns (centers, labels, inertia, n_iter).

    Rows are divided by their norms; each row goes to the centre of largest
    cosine; each centre is the normalised weighted sum of its unit rows; the
    inertia sums ``w * (1 - cos)``; empty clusters take the rows of largest
    ``1 - cos`` (lower index first on ties); tol is relative to the mean
    variance of the unit rows.
    """
    dtype = np.asarray(X).dtype
    X = np.asarray(X, dtype=np.float64)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    tol_abs = float(np.mean(np.var(U, axis=0)) * tol)
    C = np.array(C0, dtype=np.float64)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    n_iter = 0
    for it in range(max_iter):
        cos = U @ C.T
        labels = cos.argmax(axis=1)
        dist = 1 - cos[np.arange(len(U)), labels]
        sums = np.zeros_like(C)
        counts = np.zeros(len(C))
        for j in range(len(C)):
            sums[j] = (w[labels == j, None] * U[labels == j]).sum(axis=0)
            counts[j] = w[labels == j].sum()
        order = np.lexsort((np.arange(len(U)), -np.where(w > 0, dist, -np.inf)))
        order = (far for far in order if not on_centre(U[far], C[labels[far]], dtype))
        for j, far in zip(np.flatnonzero(counts == 0), order, strict=False):
            sums[labels[far]] -= w[far] * U[far]
            counts[labels[far]] -= w[far]
            sums[j] = w[far] * U[far]
            counts[j] = w[far]
        new = C.copy()
        norm = np.linalg.norm(sums, axis=1)
        ok = (counts > 0) & (norm > 0)
        new[ok] = sums[ok] / norm[ok, None]
        shift = float(((new - C) ** 2).sum())
        C = new
        n_iter = it + 1
        if shift <= tol_abs:
            break
    cos = U @ C.T
    labels = cos.argmax(axis=1)
    inertia = float(np.sum(w * (1 - cos[np.arange(len(U)), labels])))
    return C, labels, inertia, n_iter
