"""Dask graphs built from the chunk kernels. Nothing here computes.

Every Lloyd pass is one ``blockwise`` layer (each chunk against the centres,
which ride inside the tasks or enter the graph once as a single-chunk array)
followed by a tree ``sum`` over packed fixed-size partials, so only ``k * d``
numbers leave each chunk.

Every pass keeps the chunks' column index ``j`` in its output (one block wide,
its size adjusted) instead of contracting it: dask's blockwise optimisation
fuses a layer into the next only when that one takes its blocks one for one,
so a pass then fuses with what made its chunks (the reading of a Parquet part,
a scaling), whatever else it takes (weights, k-means|| state).
"""

from __future__ import annotations

import threading
import uuid
from functools import partial

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.layers import ArrayValuesDep

from . import _kernels as K
from ._runtime import pool_empty, tree_levels

#: Up to this many bytes (centres x chunks), the centres ride inside each task.
INLINE_CENTERS_BYTES = 4 * 2**20


def centers_array(centers: np.ndarray) -> da.Array:
    """The centres as one dask key, shipped once per pass whatever the chunk count."""
    return da.from_array(centers, chunks=centers.shape)


def centers_args(centers, X: da.Array) -> list:
    """``[centres, index]`` for ``blockwise`` over the chunks of ``X``.

    While centres x chunks stay under :data:`INLINE_CENTERS_BYTES`, the
    centres ride inside every task, which then depends on its chunk alone: dask
    fuses such a pass with the task that reads the chunk (data read lazily from
    storage), one task per chunk instead of two and no chunk held between them
    (a pass over 40 Parquet parts on two workers: 0.56 s against 0.67 s).
    Larger, they are one dask key, shipped once per pass. A dask array is used
    as it is.
    """
    if isinstance(centers, da.Array):
        return [centers, "kj"]
    centers = np.asarray(centers)
    if X.numblocks[0] * centers.nbytes <= INLINE_CENTERS_BYTES:
        return [centers, None]
    return [centers_array(centers), "kj"]


def origins_args(at, X: da.Array) -> list:
    """:func:`centers_args` for the clusters' origins of the sums (``_kernels.Partials``),
    the same size as the centres and shipped the same way (``[None, None]`` for the
    default origins)."""
    return [None, None] if at is None else centers_args(at, X)


def row_offsets(X: da.Array) -> ArrayValuesDep:
    """Global index of the first row of every row chunk, as a one-element array per
    chunk: a ``blockwise`` argument (index ``"i"``, with ``align_arrays=False``) that
    is written into each task, with no task of its own (see :func:`centers_args`)."""
    starts = np.cumsum((0,) + X.chunks[0][:-1]).astype(np.int64)
    return ArrayValuesDep((X.chunks[0],),
                          {(i,): starts[i:i + 1] for i in range(len(starts))})


def _weights_args(sample_weight):
    return () if sample_weight is None else (sample_weight, "i")


def packed_size(k: int, d: int, with_moments: bool, sizes=None) -> int:
    """Length of packed partials: per model sums, counts, inertia, zero-norm rows, squared
    norms; [moments]."""
    sizes = (k,) if sizes is None else sizes
    return sum(m * d + 2 * m + 2 for m in sizes) + ((1 + 2 * d) if with_moments else 0)


def packed_chunk(x, c, at=None, w=None, *, with_moments, metric="euclidean", sizes=None):
    """Lloyd partials of one chunk, packed in a (1, P) float64 row.

    ``c`` may stack the centres of several models (a K sweep), ``sizes``
    giving each model's number of centres: the chunk is read once and serves
    every model. ``at``: the clusters' origins of the sums (``_kernels.Partials``),
    stacked as ``c``.
    """
    partials = []
    start = 0
    for m in ((c.shape[0],) if sizes is None else sizes):
        partials.append(K.lloyd_partials(x, c[start : start + m], w, metric,
                                         None if at is None else at[start : start + m]))
        start += m
    return pack(partials, x, with_moments, metric, c)


def moments_shift(centers) -> np.ndarray:
    """What :func:`pack` takes the moments about (Euclidean): the centres' mean, the same
    in every chunk of a pass."""
    return np.asarray(centers, np.float64).mean(axis=0)


def pack(partials, x, with_moments: bool, metric: str, centers) -> np.ndarray:
    """Partials of one chunk (one per model), and its moments if asked, as one (1, P) row.

    The moments are taken about the mean of ``centers`` (the same in every chunk of a
    pass; unit rows for cosine need no shift)."""
    parts = []
    for p in partials:
        parts += [p.sums.ravel(), p.counts, [p.inertia, p.n_zero], p.sq]
    if with_moments:
        shift = None if metric == "cosine" else moments_shift(centers)
        parts.append(K.moments(x, metric, shift))
    return np.concatenate(parts)[None, :]


def bounded_chunk(x, c, w, bounds, drift, s_half, *, with_moments, metric="euclidean",
                  exact=True, out=None, at=None):
    """Lloyd partials of one chunk by Hamerly's algorithm (``_kernels.bounded_partials``).

    Returns the packed (1, P) row of :func:`packed_chunk`, the rows' bounds
    for ``c`` and the number of rows compared with every centre. Without
    ``exact`` the inertia of a pass with bounds comes from the clusters' moments.
    ``out``: bounds no longer needed, whose row arrays the new ones reuse; ``at``: the
    clusters' origins of the sums.
    """
    p, bounds, n_compared = K.bounded_partials(x, c, w, bounds, drift, s_half, metric, exact,
                                               out, at)
    return pack([p], x, with_moments, metric, c), bounds, n_compared


def unpack_many(packed: np.ndarray, sizes, d: int, with_moments: bool):
    """Split a summed packed vector into ([Partials per model], moments or None)."""
    out = []
    pos = 0
    for k in sizes:
        sums = packed[pos : pos + k * d].reshape(k, d)
        counts = packed[pos + k * d : pos + k * d + k]
        inertia = float(packed[pos + k * d + k])
        n_zero = int(packed[pos + k * d + k + 1])
        sq = packed[pos + k * d + k + 2 : pos + k * d + 2 * k + 2]
        out.append(K.Partials(sums, counts, inertia, n_zero, sq))
        pos += k * d + 2 * k + 2
    return out, (packed[pos:] if with_moments else None)


def unpack(packed: np.ndarray, k: int, d: int, with_moments: bool):
    """Split a summed packed vector into (Partials, moments or None)."""
    (partials,), mom = unpack_many(packed, (k,), d, with_moments)
    return partials, mom


def lloyd_partials(
    X: da.Array, C, sample_weight=None, *, split_every=None, with_moments=False,
    metric="euclidean", sizes=None, at=None,
) -> da.Array:
    """Summed Lloyd partials of all chunks, as a lazy packed float64 vector.

    ``with_moments`` appends the unweighted row count, feature sums and sums
    of squares, for the convergence tolerance, in the same pass. ``sizes``
    splits ``C`` into several models (see ``packed_chunk``); ``at`` holds the
    clusters' origins of the sums, stacked as ``C``.
    """
    k, d = C.shape
    size = packed_size(k, d, with_moments, sizes)
    parts = da.blockwise(
        packed_chunk,
        "ij",
        X,
        "ij",
        *centers_args(C, X),
        *origins_args(at, X),
        *_weights_args(sample_weight),
        adjust_chunks={"i": 1, "j": size},
        align_arrays=False,
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
        with_moments=with_moments,
        metric=metric,
        sizes=sizes,
    )
    return parts.sum(axis=0, split_every=split_every)


def _assign_chunk(x, c, offset, w=None, *, metric="euclidean", refuse_zero_norm=False,
                  refuse_nonfinite=False, standardized=False):
    out = K.assign(x, c, w, metric)
    if refuse_nonfinite:  # first: rows holding an infinity have zero norm too
        K.refuse_nonfinite(x, out[1], int(offset[0]))
    if refuse_zero_norm and metric == "cosine":
        K.refuse_zero_norm(out[0] < 0, int(offset[0]), standardized)
    return out


def _labels_of(blocks):
    return blocks[0][0]  # the one block along j, then the labels of its result


def _inertia_of(blocks):
    return np.array([blocks[0][2]])


def _distances_of(blocks):
    return blocks[0][1]


def _of_results(func, res: da.Array, dtype, **kwargs) -> da.Array:
    """``func`` of each chunk's result in ``res`` (one block wide, of objects), one dimension:
    the results are handed over as they are, in a list of one (objects are not concatenated)."""
    return da.blockwise(func, "i", res, "ij", concatenate=False, dtype=dtype,
                        meta=np.empty((0,), dtype=dtype), **kwargs)


def assignment(X: da.Array, C, sample_weight=None, *, split_every=None,
               metric="euclidean", refuse_zero_norm=False, refuse_nonfinite=False,
               standardized=False):
    """Labels, squared distances and inertia from one shared pass.

    With ``refuse_zero_norm`` (cosine), a chunk holding rows of zero norm raises the
    error naming them instead of labelling them -1 (new data: ``predict``, ``score``;
    ``standardized``: rows of zero norm once standardised, see ``K.ZeroNormError``).
    With ``refuse_nonfinite``, a chunk holding rows with NaN or infinity raises the error
    naming them, found from the rows' distances without another pass (new data: dask
    input is not scanned in advance; ``fit`` finds them from its first pass's inertia).

    Returns
    -------
    labels : dask array of shape (n_samples,), int32
    sq_dist : dask array of shape (n_samples,), float64
    inertia : dask array of shape (), float64
    """
    # A fresh name per call: the same input assigned twice (fit, then predict)
    # must not reuse keys whose tasks may be held with another graph.
    res = da.blockwise(
        _assign_chunk,
        "ij",
        X,
        "ij",
        *centers_args(C, X),
        row_offsets(X),
        "i",
        *_weights_args(sample_weight),
        adjust_chunks={"j": 1},
        align_arrays=False,
        concatenate=True,
        dtype=object,
        meta=np.empty((0, 0), dtype=object),
        name=f"assign-{uuid.uuid4().hex}",
        metric=metric,
        refuse_zero_norm=refuse_zero_norm,
        refuse_nonfinite=refuse_nonfinite,
        standardized=standardized,
    )
    labels = _of_results(_labels_of, res, np.int32)
    sq_dist = _of_results(_distances_of, res, np.float64)
    inertia = _of_results(_inertia_of, res, np.float64,
                          adjust_chunks={"i": 1}).sum(split_every=split_every)
    return labels, sq_dist, inertia


def transform_chunk(x, c, offset=(0,), *, metric="euclidean", standardized=False):
    """Distances of a chunk's rows to every centre: Euclidean, or ``1 - cos``. Rows with
    NaN or infinity, and rows of zero norm for cosine, are refused, named by global index
    from ``offset`` (dask input is not scanned in advance; ``standardized``: see
    ``K.ZeroNormError``)."""
    first = int(offset[0])
    scales = None
    if metric == "cosine":  # the norms serve the checks and the distances
        scales = K.unit_scales(x)
        # Rows with NaN or infinity have a scale of 0 or NaN: name them as such first.
        K.refuse_nonfinite(x, np.where(scales > 0, 0.0, np.nan), first)
        K.refuse_zero_norm(scales == 0, first, standardized)
    # Euclidean float32 rows: squared in float64, then the distances in float32 again
    # (distances of 6e17 to 6e19 came out inf or 0, of 1e-25 all 0, where fit, predict
    # and score measured them exactly).
    work = np.float64 if metric != "cosine" and x.dtype == np.float32 else None
    with np.errstate(invalid="ignore", over="ignore"):  # such rows are refused below
        d = K.pairwise_sq_distances(x, c, metric, scales, work)
    if metric != "cosine" and d.shape[1]:
        # A row's distances are all non-finite exactly when it holds NaN or infinity
        # (or is too far for float64 squares, which refuse_nonfinite lets through).
        K.refuse_nonfinite(x, d[:, 0], first)
    return d if metric == "cosine" else np.sqrt(d).astype(x.dtype, copy=False)


def distances(X: da.Array, C, *, metric="euclidean", standardized=False) -> da.Array:
    """Distance of every row to every centre, shape (n_samples, k) (see ``transform_chunk``)."""
    k = C.shape[0]
    centers = centers_args(C, X)
    return da.blockwise(
        transform_chunk,
        "ij",
        X,
        "ij",
        *centers,
        row_offsets(X),
        "i",
        align_arrays=False,
        concatenate=True,
        dtype=X.dtype,
        meta=np.empty((0, 0), dtype=X.dtype),
        adjust_chunks={"j": k},
        metric=metric,
        standardized=standardized,
    )


def _found_chunk(x, offset, *, find, limit):
    return find(x, int(offset[0]), limit)[None, :]


def _found_rows(X: da.Array, find, width: int, limit: int) -> da.Array:
    """``find(chunk, offset, limit)``, a vector of ``width`` per chunk of ``X``: shape
    (n_chunks, width)."""
    return da.blockwise(
        _found_chunk, "ij", X, "ij", row_offsets(X), "i",
        adjust_chunks={"i": 1, "j": width}, align_arrays=False, concatenate=True,
        dtype=np.float64, meta=np.empty((0, 0), dtype=np.float64), find=find, limit=limit,
    )


def zero_norm_rows(X: da.Array, limit: int = 5) -> da.Array:
    """The rows of zero norm (cosine), one row per chunk of ``X``: shape (n_chunks,
    2 + 2 * limit), see ``_kernels.zero_norm_rows``."""
    return _found_rows(X, K.zero_norm_rows, 2 + 2 * limit, limit)


def nonfinite_rows(X: da.Array, limit: int = 5) -> da.Array:
    """The rows holding NaN or infinity, one row per chunk of ``X``: shape (n_chunks,
    1 + limit), see ``_kernels.nonfinite_rows``."""
    return _found_rows(X, K.nonfinite_rows, 1 + limit, limit)


def _far_chunk(x, c, at, offset, w=None, *, n_far, metric, n_rows):
    return K.farthest(x, c, w, n_far, int(offset[0]), metric, n_rows, at)


def farthest(X: da.Array, C, sample_weight, n_far: int,
             metric="euclidean", at=None) -> da.Array:
    """Candidates for empty-cluster relocation: each chunk's ``n_far`` farthest rows
    (``at``: the clusters' origins of the fit's sums).

    Returns a lazy (m, 4 + d) array (see ``_kernels.farthest``); at most
    ``n_far <= k`` rows per chunk, so no more than k * d numbers per chunk.
    """
    d = X.shape[1]
    return da.blockwise(
        _far_chunk,
        "ij",
        X,
        "ij",
        *centers_args(C, X),
        *origins_args(at, X),
        row_offsets(X),
        "i",
        *_weights_args(sample_weight),
        # zero-norm rows are left out
        adjust_chunks={"i": (np.nan,) * X.numblocks[0], "j": 4 + d},
        align_arrays=False,
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
        n_far=n_far,
        metric=metric,
        n_rows=int(X.shape[0]),
    )


# -- k-means|| ---------------------------------------------------------------
# Chunk functions take the chunk's global row offset as an int; the graph
# builders below pass it through ``_with_offset`` from a one-element block.


_scratch = threading.local()


def _spare_state(n: int) -> K.Nearest:
    """A k-means|| state of ``n`` rows that this thread writes over from one chunk to the
    next, for passes that do not keep the state: no 16 bytes a row allocated (and
    page-faulted in, in dask workers: see ``_kernels.bounded_partials``) per chunk, nor
    held in the chunk's result until the proposals are merged."""
    spare = getattr(_scratch, "nearest", None)
    if spare is None or spare.sq_dist.shape[0] < n:
        spare = K.Nearest(np.empty(n), np.empty(n, dtype=np.int64))
        _scratch.nearest = spare
    return K.Nearest(spare.sq_dist[:n], spare.index[:n])


def round_chunk(x, offset: int, w, state, centers, *, base, seed, stream, ell,
                metric="euclidean", out=None, keep=True):
    """One chunk of a k-means|| round: (new ``Nearest`` state, candidate rows, cost).
    ``out``: a state no longer needed, written over. Without ``keep`` the state is
    not returned (None) and the thread's spare one is written over instead; with it,
    a new state comes from Arrow's pool (see ``_runtime.pool_empty``: 2 ms of a 9 ms
    round over 250k x 8 rows went to paging in a fresh one)."""
    if out is None:
        n = x.shape[0]
        out = (K.Nearest(pool_empty((n,), np.float64), pool_empty((n,), np.int64)) if keep
               else _spare_state(n))
    nearest = K.nearest_update(x, centers, base, state, metric, out)
    rows, phi = K.oversample(x, nearest, w, K.row_draws(seed, stream, offset), offset, ell)
    if metric == "cosine":
        rows[:, 3:] = K.normalize_rows(rows[:, 3:])
    return (nearest if keep else None), rows, phi


def weights_chunk(x, offset: int, w, state, centers, *, base, n_candidates,
                  metric="euclidean", out=None):
    """One chunk's weight per candidate and its rows nearest to none (zero norm, cosine),
    as a (1, n_candidates + 1) row. ``out``: a state no longer needed, written over
    (by default the thread's spare one: the state is not returned)."""
    nearest = K.nearest_update(x, centers, base, state, metric,
                               _spare_state(x.shape[0]) if out is None else out)
    return K.candidate_weights(nearest, w, n_candidates)[None, :]


def choice_chunk(x, offset: int, w, *, seed, stream, size=1):
    """One chunk's ``size`` best exponential keys, their row indices and the rows,
    as (min(size, n), 2 + d) rows (see :func:`K.weighted_choice_keys`)."""
    u = K.row_uniforms(seed, stream, offset, x.shape[0])
    return K.weighted_choice_keys(x, w, u, offset, size)


def _with_offset(func, x, offset_block, *args, **kwargs):
    return func(x, int(offset_block[0]), *args, **kwargs)


def _row_args(X, sample_weight, state):
    args = [X, "ij", row_offsets(X), "i"]
    args += [sample_weight, "i"] if sample_weight is not None else [None, None]
    args += [state, "ij"] if state is not None else [None, None]  # one block wide
    return args


def part(t, i):
    """Item ``i`` (an index or a slice) of a per-chunk tuple."""
    return t[i]


#: Of a ``round_chunk`` result (see :func:`part`): the candidate rows and the cost,
#: without the state.
PROPOSALS = slice(-2, None)


def merge_round_results(*parts, ell):
    """``merge_proposals`` of ``round_chunk`` results or of earlier merges (their last
    two items are the rows and the cost)."""
    return K.merge_proposals(*(p[-2:] for p in parts), ell=ell)


def oversampling_round(X, sample_weight, state, candidates: np.ndarray, *, base: int,
                       seed: int, stream: int, ell: float, metric="euclidean",
                       keep: bool = True) -> da.Array:
    """One k-means|| pass: update each row's nearest candidate, then oversample.

    ``state`` is the previous pass's per-row state for ``candidates[:base]``
    (a lazy or persisted array of per-chunk
    :class:`~dask_kmeans._kernels.Nearest`), or ``None`` to compare every row
    with all ``candidates`` from scratch (``base`` = 0).

    Returns
    -------
    dask array with one ``round_chunk`` result per chunk, ``(Nearest, rows, phi)``,
    one block wide (index ``(i, 0)``).
    Take the next state with :func:`round_state` and the rows that join the
    candidates with :func:`chosen_rows`, from this array persisted when both
    are wanted (each would otherwise run the pass). Without ``keep`` the results
    hold no state (None), only the proposals.
    """
    return da.blockwise(
        partial(_with_offset, round_chunk), "ij", *_row_args(X, sample_weight, state),
        *centers_args(candidates, X), adjust_chunks={"j": 1}, align_arrays=False,
        concatenate=True, dtype=object, meta=np.empty((0, 0), dtype=object), base=base,
        seed=seed, stream=stream, ell=ell, metric=metric, keep=keep,
    )


def round_state(results: da.Array) -> da.Array:
    """The per-chunk ``Nearest`` state of :func:`oversampling_round` results."""
    return results.map_blocks(part, 0, dtype=object, meta=np.empty((0, 0), dtype=object))


def chosen_rows(results: da.Array, ell: float, split_every=None) -> Delayed:
    """``(rows, phi)`` of a k-means|| round: the rows that join the candidates (columns of
    ``_kernels.oversample``, in chunk order) and the cost against the candidates so far.

    The chunks' proposals meet in the tree of ``_runtime.tree_levels`` (the grouping
    of the other engines), each node keeping only the rows chosen for its cost so far
    (:func:`~dask_kmeans._kernels.merge_proposals`), the root too: the root, and so the
    driver, holds about ``ell`` rows whatever the number of chunks. One task per node,
    written straight into the graph.

    The tree starts from each chunk's proposals, taken from its results where they are:
    a node on another worker then fetches those, not a state that is 16 bytes a row
    (which would also stay there, a second copy, as long as the state is kept). On
    results not persisted, the taking fuses with the round's task.
    """
    proposals = results.map_blocks(part, PROPOSALS, dtype=object,
                                   meta=np.empty((0, 0), dtype=object))
    name = "kmeans-chosen-" + tokenize(proposals.name, ell, split_every)
    merge = partial(merge_round_results, ell=ell)
    dsk = {}

    def node(*group):
        key = (name, len(dsk))
        dsk[key] = (merge, *group)
        return key

    node(*tree_levels([(proposals.name, i, 0) for i in range(proposals.numblocks[0])],
                      split_every, node))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[proposals])
    return Delayed((name, len(dsk) - 1), graph, layer=name)


def candidate_weights(X, sample_weight, state, candidates: np.ndarray, *, base: int,
                      n_candidates: int, split_every=None, metric="euclidean") -> da.Array:
    """Total weight of the rows nearest to each candidate, then the number of rows
    nearest to none (zero norm, cosine): a fixed-size tree sum."""
    parts = da.blockwise(
        partial(_with_offset, weights_chunk), "ij", *_row_args(X, sample_weight, state),
        *centers_args(candidates, X), adjust_chunks={"i": 1, "j": n_candidates + 1},
        align_arrays=False, concatenate=True, dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64), base=base, n_candidates=n_candidates,
        metric=metric,
    )
    return parts.sum(axis=0, split_every=split_every)


def weighted_choice(X, sample_weight, *, seed: int, stream: int, size: int = 1) -> da.Array:
    """Per chunk, the ``size`` best exponential keys, their row indices and the rows:
    (sum of min(size, chunk rows), 2 + d)."""
    return da.blockwise(
        partial(_with_offset, choice_chunk), "ij", X, "ij", row_offsets(X), "i",
        sample_weight, "i",
        adjust_chunks={"i": lambda rows: min(rows, size), "j": 2 + X.shape[1]},
        align_arrays=False, concatenate=True, dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64), seed=seed, stream=stream, size=size,
    )
