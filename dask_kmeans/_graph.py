"""Dask graphs built from the chunk kernels. Nothing here computes.

Every Lloyd pass is one ``blockwise`` layer (each chunk against the centres,
which enter the graph once as a single-chunk array) followed by a tree ``sum``
over packed fixed-size partials, so only ``k * d`` numbers leave each chunk.
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np

from . import _kernels as K


def centers_array(centers: np.ndarray) -> da.Array:
    """The centres as one dask key, shipped once per pass whatever the chunk count."""
    return da.from_array(centers, chunks=centers.shape)


def row_offsets(X: da.Array) -> da.Array:
    """Global index of the first row of every row chunk, one block per chunk."""
    starts = np.cumsum((0,) + X.chunks[0][:-1]).astype(np.int64)
    return da.from_array(starts, chunks=1)


def _weights_args(sample_weight):
    return () if sample_weight is None else (sample_weight, "i")


def packed_size(k: int, d: int, with_moments: bool) -> int:
    return k * d + k + 1 + ((1 + 2 * d) if with_moments else 0)


def packed_chunk(x, c, w=None, *, with_moments):
    """Lloyd partials of one chunk, packed in a (1, P) float64 row."""
    p = K.lloyd_partials(x, c, w)
    parts = [p.sums.ravel(), p.counts, [p.inertia]]
    if with_moments:
        parts.append(K.moments(x))
    return np.concatenate(parts)[None, :]


def unpack(packed: np.ndarray, k: int, d: int, with_moments: bool):
    """Split a summed packed vector into (Partials, moments or None)."""
    sums = packed[: k * d].reshape(k, d)
    counts = packed[k * d : k * d + k]
    inertia = float(packed[k * d + k])
    mom = packed[k * d + k + 1 :] if with_moments else None
    return K.Partials(sums, counts, inertia), mom


def lloyd_partials(
    X: da.Array, C: da.Array, sample_weight=None, *, split_every=None, with_moments=False
) -> da.Array:
    """Summed Lloyd partials of all chunks, as a lazy packed float64 vector.

    ``with_moments`` appends the unweighted row count, feature sums and sums
    of squares, for the convergence tolerance, in the same pass.
    """
    k, d = C.shape
    size = packed_size(k, d, with_moments)
    parts = da.blockwise(
        packed_chunk,
        "ip",
        X,
        "ij",
        C,
        "kj",
        *_weights_args(sample_weight),
        new_axes={"p": size},
        adjust_chunks={"i": 1},
        align_arrays=False,
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
        with_moments=with_moments,
    )
    return parts.sum(axis=0, split_every=split_every)


def _assign_chunk(x, c, w=None):
    return K.assign(x, c, w)


def _labels_of(t):
    return t[0]


def _inertia_of(t):
    return np.array([t[2]])


def _distances_of(t):
    return t[1]


def assignment(X: da.Array, C: da.Array, sample_weight=None, *, split_every=None):
    """Labels, squared distances and inertia from one shared pass.

    Returns
    -------
    labels : dask array of shape (n_samples,), int32
    sq_dist : dask array of shape (n_samples,), float64
    inertia : dask array of shape (), float64
    """
    res = da.blockwise(
        _assign_chunk,
        "i",
        X,
        "ij",
        C,
        "kj",
        *_weights_args(sample_weight),
        align_arrays=False,
        concatenate=True,
        dtype=object,
        meta=np.empty((0,), dtype=object),
    )
    labels = res.map_blocks(_labels_of, dtype=np.int32, meta=np.empty((0,), np.int32))
    sq_dist = res.map_blocks(_distances_of, dtype=np.float64, meta=np.empty((0,), np.float64))
    inertia = res.map_blocks(
        _inertia_of, chunks=(1,), dtype=np.float64, meta=np.empty((0,), np.float64)
    ).sum(split_every=split_every)
    return labels, sq_dist, inertia


def _transform_chunk(x, c):
    return np.sqrt(K.pairwise_sq_distances(x, c))


def distances(X: da.Array, C: da.Array) -> da.Array:
    """Euclidean distance of every row to every centre, shape (n_samples, k)."""
    k = C.shape[0]
    return da.blockwise(
        _transform_chunk,
        "ik",
        X,
        "ij",
        C,
        "kj",
        align_arrays=False,
        concatenate=True,
        dtype=X.dtype,
        meta=np.empty((0, 0), dtype=X.dtype),
        adjust_chunks={"k": k},
    )


def _far_chunk(x, c, offset, w=None, *, n_far):
    return K.farthest(x, c, w, n_far, int(offset[0]))


def farthest(X: da.Array, C: da.Array, sample_weight, n_far: int) -> da.Array:
    """Candidates for empty-cluster relocation: each chunk's ``n_far`` farthest rows.

    Returns a lazy (m, 4 + d) array (see ``_kernels.farthest``); at most
    ``n_far <= k`` rows per chunk, so no more than k * d numbers per chunk.
    """
    d = X.shape[1]
    sizes = tuple(min(n_far, s) for s in X.chunks[0])
    return da.blockwise(
        _far_chunk,
        "ip",
        X,
        "ij",
        C,
        "kj",
        row_offsets(X),
        "i",
        *_weights_args(sample_weight),
        new_axes={"p": 4 + d},
        adjust_chunks={"i": sizes},
        align_arrays=False,
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
        n_far=n_far,
    )


# -- k-means|| ---------------------------------------------------------------
# Chunk functions take the chunk's global row offset as an int; the graph
# builders below pass it through ``_with_offset`` from a one-element block.


def round_chunk(x, offset: int, w, state, centers, *, base, seed, stream, ell):
    """One chunk of a k-means|| round: (new ``Nearest`` state, candidate rows, cost)."""
    nearest = K.nearest_update(x, centers, base, state)
    u = K.row_uniforms(seed, stream, offset, x.shape[0])
    rows, phi = K.oversample(x, nearest, w, u, offset, ell)
    return nearest, rows, phi


def weights_chunk(x, offset: int, w, state, centers, *, base, n_candidates):
    """One chunk's weight per candidate, as a (1, n_candidates) row."""
    nearest = K.nearest_update(x, centers, base, state)
    return K.candidate_weights(nearest, w, n_candidates)[None, :]


def choice_chunk(x, offset: int, w, *, seed, stream):
    """One chunk's best exponential key, its row index and the row, as a (1, 2 + d) row."""
    u = K.row_uniforms(seed, stream, offset, x.shape[0])
    return K.weighted_choice_key(x, w, u, offset)[None, :]


def _with_offset(func, x, offset_block, *args, **kwargs):
    return func(x, int(offset_block[0]), *args, **kwargs)


def _row_args(X, sample_weight, state):
    args = [X, "ij", row_offsets(X), "i"]
    for a in (sample_weight, state):
        args += [a, "i"] if a is not None else [None, None]
    return args


def part(t, i):
    """Item ``i`` of a per-chunk tuple."""
    return t[i]


def _scalar_part(t, i):
    return np.array([t[i]], dtype=np.float64)


def oversampling_round(X, sample_weight, state, candidates: np.ndarray, *, base: int,
                       seed: int, stream: int, ell: float, split_every=None):
    """One k-means|| pass: update each row's nearest candidate, then oversample.

    ``state`` is the previous pass's per-row state for ``candidates[:base]``
    (a lazy or persisted array of per-chunk
    :class:`~dask_kmeans._kernels.Nearest`), or ``None`` to compare every row
    with all ``candidates`` from scratch (``base`` = 0).

    Returns
    -------
    state : dask array with one ``Nearest`` per chunk
    rows : dask array of shape (nan, 3 + n_features), the possible candidates
    phi : dask array of shape (), the cost against the candidates so far
    """
    res = da.blockwise(
        partial(_with_offset, round_chunk), "i", *_row_args(X, sample_weight, state),
        centers_array(candidates), "kj", align_arrays=False, concatenate=True, dtype=object,
        meta=np.empty((0,), dtype=object), base=base, seed=seed, stream=stream, ell=ell,
    )
    nb = X.numblocks[0]
    width = 3 + X.shape[1]
    state = res.map_blocks(part, 0, dtype=object, meta=np.empty((0,), dtype=object))
    rows = res.map_blocks(part, 1, new_axis=1, chunks=((np.nan,) * nb, (width,)),
                          dtype=np.float64, meta=np.empty((0, 0), dtype=np.float64))
    phi = res.map_blocks(_scalar_part, 2, chunks=(1,), dtype=np.float64,
                         meta=np.empty((0,), np.float64)).sum(split_every=split_every)
    return state, rows, phi


def candidate_weights(X, sample_weight, state, candidates: np.ndarray, *, base: int,
                      n_candidates: int, split_every=None) -> da.Array:
    """Total weight of the rows nearest to each candidate: a fixed-size tree sum."""
    parts = da.blockwise(
        partial(_with_offset, weights_chunk), "ip", *_row_args(X, sample_weight, state),
        centers_array(candidates), "kj", new_axes={"p": n_candidates},
        adjust_chunks={"i": 1}, align_arrays=False, concatenate=True, dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64), base=base, n_candidates=n_candidates,
    )
    return parts.sum(axis=0, split_every=split_every)


def weighted_choice(X, sample_weight, *, seed: int, stream: int) -> da.Array:
    """Per-chunk best exponential key, its row index and the row: (n_chunks, 2 + d)."""
    return da.blockwise(
        partial(_with_offset, choice_chunk), "ip", X, "ij", row_offsets(X), "i",
        sample_weight, "i", new_axes={"p": 2 + X.shape[1]}, adjust_chunks={"i": 1},
        align_arrays=False, concatenate=True, dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64), seed=seed, stream=stream,
    )
