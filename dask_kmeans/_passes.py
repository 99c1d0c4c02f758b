"""Passes over the data for the drivers, each one compute, on the best engine.

Two interchangeable engines run the same chunk functions from ``_graph``:

- the dask-graph engine builds graphs with ``_graph`` and computes them on
  the active scheduler (threads, processes, synchronous or distributed);
- the futures engine, for data persisted on a distributed cluster, maps the
  chunk functions straight onto the futures of the persisted chunks with
  ``Client.map`` and adds partials with a tree of ``Client.submit``.

Measured on a 2-worker LocalCluster: a pass of 2 tasks costs ~12 ms of
overhead with futures against ~55 ms for computing the equivalent dask-array
graph, which the scheduler has to unpack every time. A Lloyd fit makes one
pass per iteration, so that difference is most of the gap to scikit-learn.

Passes over persisted data go one step further: one ``distributed`` Actor
per worker (:class:`ChunkGroup`) knows the keys of that worker's chunks, and a
pass is one direct call to each actor, which runs the chunk function on every
chunk in the worker's own thread pool and answers with the per-chunk results;
the driver adds them in chunk order with the tree's grouping. That skips the
scheduler: ~2.5 ms per pass instead of ~11 ms. The actors also keep per-row
state next to the rows (k-means|| nearest candidates, Hamerly's bounds for
Lloyd, one set per model of a K sweep). An actor dies with its worker, so any
failure of an actor call drops the actors for good and the pass is made again
with futures, which the scheduler can recompute from lost chunks.

Without a distributed client, data held in this process (NumPy input, or
persisted under the threaded scheduler) gets the same treatment from
:class:`LocalChunks`: a ChunkGroup whose chunks are the arrays themselves,
run in a local thread pool, with the same per-chunk state. Only data read
lazily from its source goes through dask graphs on a local scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import dask
import numpy as np

from . import _graph as G
from . import _kernels as K
from ._runtime import (
    active_client,
    chunk_futures,
    compute,
    dask_persist,
    memory_budget,
    one_process_pool,
    single_blas_thread,
    sum_in_order,
    total_threads,
    tree_levels,
    tree_merge,
    tree_sum,
)

#: Per row and model: Hamerly's bounds (label, upper and lower bound).
BOUND_BYTES = 20

logger = logging.getLogger("dask_kmeans")


class ChunkGroup:
    """The persisted chunks of one worker, answering passes as a ``distributed`` Actor.

    Knows the keys of the chunks the worker already has (and their weights and
    global row offsets). Each method runs the ``_graph`` chunk function of a
    pass on every one of them, in the worker's thread pool (so a worker with
    several threads works on several chunks at once), and returns the
    per-chunk results, which the driver puts back in chunk order and adds as
    the futures engine does. The chunks are looked up in the worker's data at
    each call, not held: a worker may still spill them. Between passes each
    chunk's nearest-candidate state (k-means||) or row bounds (Lloyd) stay
    here, next to its rows. A chunk that left the worker fails the call, and
    the driver goes on with futures.
    """

    def __init__(self, keys, weights, offsets):
        self.keys = list(keys)
        self.weights = list(weights)  # small: held, copied here if they lived elsewhere
        self.offsets = list(offsets)
        self.state = [None] * len(self.keys)
        self.spare_state = [None] * len(self.keys)  # k-means|| state of the pass before, to reuse
        self.proposals = [None] * len(self.keys)  # k-means|| rows awaiting the total cost
        # Lloyd by Hamerly's algorithm: each chunk's row bounds, for the centres of the
        # pass numbered ``bounds_version``.
        self.bounds = [None] * len(self.keys)
        self.spare = [None] * len(self.keys)  # bounds of the pass before, to write over
        self.bounds_version = None
        # The models of a K sweep: model -> (pass number, each chunk's bounds), and the
        # bounds of each model's pass before, to write over.
        self.model_bounds = {}
        self.model_spare = {}

    async def _each(self, func) -> list:
        """``func(i, x, w)`` for every chunk, in the worker's thread pool."""
        from distributed import get_worker

        worker = get_worker()
        chunks = [worker.data[key] for key in self.keys]  # on the event loop, as tasks do
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(
            loop.run_in_executor(worker.executor, func, i, x, w)
            for i, (x, w) in enumerate(zip(chunks, self.weights, strict=True)))))

    async def lloyd(self, centers, with_moments, metric, sizes, at):
        return await self._each(lambda i, x, w: G.packed_chunk(
            x, centers, at, w, with_moments=with_moments, metric=metric, sizes=sizes))

    async def lloyd_bounded(self, centers, with_moments, metric, drift, s_half, previous,
                            version, exact, at):
        """Lloyd partials per chunk, skipping rows whose bounds prove their centre.

        The bounds are used when they belong to the centres of pass ``previous``;
        otherwise every row is compared (and bounds made for the next pass).
        Without ``exact`` rows that keep their centre are not read and the
        inertia comes from the clusters' moments.
        """
        usable = drift is not None and self.bounds_version == previous

        def one(i, x, w):
            bounded = usable and self.bounds[i] is not None
            packed, new, _ = G.bounded_chunk(
                x, centers, w, self.bounds[i] if bounded else None,
                drift if bounded else None, s_half, with_moments=with_moments, metric=metric,
                exact=exact, out=self.spare[i], at=at)
            # The bounds before these are free: the next pass writes its bounds into them.
            self.spare[i], self.bounds[i] = self.bounds[i], new
            return packed

        self.bounds_version = None  # until every chunk has its new bounds
        out = await self._each(one)
        self.bounds_version = version
        return out

    async def lloyd_models(self, models, with_moments, metric):
        """Lloyd partials of several models per chunk (a K sweep), each by Hamerly's
        algorithm with its own bounds, packed one model after the other.

        ``models`` holds ``(model, centers, drift, s_half, previous, version, at)``
        per model; a model's bounds are used when they belong to its pass
        ``previous``. Rows that keep their centre are not read, and each
        model's inertia comes from its clusters' moments. Models left out of
        the call (converged) drop their bounds.
        """
        held, self.model_bounds = self.model_bounds, {}  # until every chunk has new ones
        spare, self.model_spare = self.model_spare, {}
        usable = {}
        for mid, _centers, drift, _s_half, previous, _version, _at in models:
            version_and_bounds = held.get(mid)
            if drift is not None and version_and_bounds is not None \
                    and version_and_bounds[0] == previous:
                usable[mid] = version_and_bounds[1]
        new_bounds = {m[0]: [None] * len(self.keys) for m in models}

        def one(i, x, w):
            parts = []
            for mid, centers, drift, s_half, _previous, _version, at in models:
                old = usable[mid][i] if mid in usable else None
                p, new_bounds[mid][i], _ = K.bounded_partials(
                    x, centers, w, old, drift if old is not None else None, s_half, metric,
                    exact=False, out=spare[mid][i] if mid in spare else None, at=at)
                parts.append(p)
            return G.pack(parts, x, with_moments, metric, models[0][1])

        out = await self._each(one)
        self.model_bounds = {m[0]: (m[5], new_bounds[m[0]]) for m in models}
        # Each model's bounds before these: the next pass writes its bounds into them.
        self.model_spare = {m[0]: held[m[0]][1] for m in models if m[0] in held}
        return out

    async def oversample(self, candidates, keep_state, kw):
        """A k-means|| pass over every chunk: each chunk's cost; its proposed rows stay
        here until :meth:`chosen` says which join the candidates."""
        first = kw["base"] == 0  # a new initialisation: no state to build on

        def one(i, x, w):
            nearest, self.proposals[i], phi = G.round_chunk(
                x, self.offsets[i], w, self.state[i] if keep_state and not first else None,
                candidates, out=self.spare_state[i], **kw)
            # The state before is free: the next pass writes its state into it.
            if not keep_state:
                self.spare_state[i] = nearest
            elif nearest is not self.state[i]:  # (the same when no candidate was new)
                self.spare_state[i], self.state[i] = self.state[i], nearest
            return phi

        self.proposals = [None] * len(self.keys)
        return await self._each(one)

    async def chosen(self, phi, ell):
        """Each chunk's proposed rows that join the candidates for the total cost ``phi``."""
        out = [K.chosen(rows, phi, ell) for rows in self.proposals]
        self.proposals = [None] * len(self.keys)
        return out

    async def candidate_weights(self, candidates, keep_state, kw):
        out = await self._each(lambda i, x, w: G.weights_chunk(
            x, self.offsets[i], w, self.state[i] if keep_state else None, candidates,
            out=self.spare_state[i], **kw))
        self.state = [None] * len(self.keys)  # the initialisation is over: free the rows'
        self.spare_state = [None] * len(self.keys)
        return out

    async def rows(self, index):
        def one(i, x, w):
            lo = self.offsets[i]
            mine = index[(index >= lo) & (index < lo + x.shape[0])]
            return mine, np.asarray(x[mine - lo])

        return await self._each(one)

    async def weighted_choice(self, kw):
        return await self._each(lambda i, x, w: G.choice_chunk(x, self.offsets[i], w, **kw))


class LocalChunks(ChunkGroup):
    """The chunks of data held in this process, answering passes as a ChunkGroup.

    For NumPy input (or a dask array persisted without a distributed client)
    the chunks are arrays here already: each pass runs the same chunk
    functions as the actors, one chunk per thread of a local pool (the kernels
    release the GIL), and the per-chunk state (k-means|| nearest candidates,
    Hamerly's bounds) stays in this object between passes. No dask graph per
    pass, and the bounded Lloyd kernel serves a fit without a cluster too.
    """

    def __init__(self, blocks, weights, offsets, threads: int):
        super().__init__([None] * len(blocks), weights, offsets)
        # C order once (a copy only for other layouts, as scikit-learn makes), not per pass.
        self.blocks = [np.ascontiguousarray(b) for b in blocks]
        self.threads = max(1, min(int(threads), len(self.blocks)))

    async def _each(self, func) -> list:
        """``func(i, x, w)`` for every chunk, in a local thread pool. Never suspends:
        the coroutine finishes at its first step (see :func:`_run_now`)."""
        n = len(self.blocks)
        with single_blas_thread():
            if self.threads == 1:
                return [func(i, self.blocks[i], self.weights[i]) for i in range(n)]
            with ThreadPoolExecutor(self.threads) as pool:
                return list(pool.map(lambda i: func(i, self.blocks[i], self.weights[i]),
                                     range(n)))


def _run_now(coro):
    """The value of a coroutine that never suspends (LocalChunks' methods), without an
    event loop, so that a fit also works inside one (a notebook)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a local pass was expected to finish without waiting")


#: The Passes made inside :func:`closing_passes`, to close on the way out.
_open_passes: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "dask_kmeans_open_passes", default=None)


@contextlib.contextmanager
def closing_passes():
    """Context manager (or decorator): every :class:`Passes` made inside is closed on the
    way out, returning or raising (see :meth:`Passes.close`); under dask's "processes"
    scheduler one pool of processes serves them all (:func:`one_process_pool`)."""
    token = _open_passes.set([])
    try:
        with one_process_pool():
            yield
    finally:
        opened = _open_passes.get()
        for passes in opened:
            passes.close()
        # Emptied too: copies of this context (kept by event-loop handles made meanwhile)
        # share the list, and held the passes, and their data, on the workers after a job.
        opened.clear()
        _open_passes.reset(token)


class Passes:
    """One-compute passes over ``X`` (a row-chunked dask array) and its weights.

    Parameters
    ----------
    X : dask array of shape (n_samples, n_features)
    sample_weight : dask array of shape (n_samples,) or None
        Same row chunks as ``X``.
    split_every : int or None
        Fan-in of the tree reductions.
    keep_state : bool
        k-means|| keeps each row's nearest-candidate state on the workers
        between passes (for data held in memory). May be set between
        initialisations; the first round of each starts from no state.
    in_memory : bool
        ``X`` is held in memory in this process (NumPy input, or persisted
        without a distributed client): its chunks are taken once and passes
        run on them in a local thread pool (:class:`LocalChunks`) instead of
        through dask graphs. Never set it for data read lazily from storage.
    """

    def __init__(self, X, sample_weight=None, *, split_every=None, keep_state=False,
                 metric="euclidean", in_memory=False):
        self.X = X
        self.metric = metric
        self.sample_weight = sample_weight
        self.split_every = split_every
        self.keep_state = keep_state
        self._state = None
        client = active_client()
        xf = chunk_futures(client, X)
        wf = None if sample_weight is None else chunk_futures(client, sample_weight)
        if xf is not None and (sample_weight is None or wf is not None):
            self._client = client
            self._xf = xf
            self._wf = [None] * len(xf) if wf is None else wf
            starts = np.cumsum((0,) + X.chunks[0][:-1])
            self._offsets = [int(s) for s in starts]
        else:
            self._client = None
        self._local = None
        if self._client is None and in_memory and client is None:
            blocks = compute(*X.to_delayed().ravel())
            weights = ([None] * len(blocks) if sample_weight is None
                       else compute(*sample_weight.to_delayed().ravel()))
            starts = np.cumsum((0,) + X.chunks[0][:-1])
            self._local = LocalChunks(blocks, weights, [int(s) for s in starts],
                                      total_threads(None))
        self._groups = None  # ChunkGroup actors, made at the first pass; False: none
        self._group_futures = None
        self._state_on_actors = False
        self._sent = None  # (number, centres) of the last bounded Lloyd pass
        self._sent_models = {}  # the same per model of a K sweep
        self._bounds_budget = None
        opened = _open_passes.get()
        if opened is not None:
            opened.append(self)

    def close(self) -> None:
        """Release the actors, with the per-row state they hold, and the k-means|| state
        kept on futures, now. Left to Python, they lived until its garbage collector ran
        (distributed's actor handles sit in reference cycles): 1 to 3 actors a worker after
        five fits, 57 MiB of bounds each, and workers that could not be retired. The passes
        are not used after this."""
        state = self._state if isinstance(self._state, list) else []  # futures engine's
        futures = [*(self._group_futures or ()), *state]
        self._group_futures, self._groups, self._state = None, False, None
        self._state_on_actors = False
        if futures and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.cancel(futures)
        # What is left holds the data (its futures, or its chunks in this process).
        self.X = self.sample_weight = self._local = None
        self._xf, self._wf = [], []

    def _actors(self):
        """One ChunkGroup actor per worker holding chunks (made once), or None."""
        if self._groups is None:
            from distributed import wait

            client = self._client
            wait(self._xf + [f for f in self._wf if f is not None])
            who = client.who_has(self._xf)
            by_worker: dict[str, list[int]] = {}
            for i, f in enumerate(self._xf):
                holders = who.get(f.key) or ()
                if not holders:
                    self._groups = False
                    return None
                by_worker.setdefault(holders[0], []).append(i)
            self._group_futures = [
                client.submit(ChunkGroup, [self._xf[i].key for i in idx],
                              [self._wf[i] for i in idx], [self._offsets[i] for i in idx],
                              workers=[address], allow_other_workers=False, actor=True,
                              pure=False)
                for address, idx in by_worker.items()]
            self._groups = [(f.result(), idx)
                            for f, idx in zip(self._group_futures, by_worker.values(),
                                              strict=True)]
        return self._groups or None

    def _on_actors(self, method: str, *args) -> list | None:
        """Per-chunk results of ``ChunkGroup.<method>`` in chunk order, or None.

        None when there are no actors (data not persisted on a cluster) or when
        a call failed (a worker died): the actors are then dropped for good and
        the caller makes the pass with futures.
        """
        if self._local is not None:  # in this process: errors are errors, no fallback
            return _run_now(getattr(self._local, method)(*args))
        if not self.on_futures or self._groups is False:
            return None
        try:
            groups = self._actors()
            if not groups:
                return None
            calls = [(getattr(actor, method)(*args), idx) for actor, idx in groups]
            out = [None] * len(self._xf)
            for call, idx in calls:
                for i, result in zip(idx, call.result(), strict=True):
                    out[i] = result
            return out
        except Exception as exc:  # a worker died or left: the futures engine copes
            logger.info("passes go through the scheduler from now on: an actor call failed "
                        "(%s: %s)", type(exc).__name__, exc)
            self._groups, self._group_futures = False, None
            return None

    @property
    def _on_graphs(self) -> bool:
        """Whether passes are dask graphs computed on the active scheduler."""
        return self._client is None and self._local is None

    @property
    def local(self) -> bool:
        """Whether passes run on chunks held in this process (:class:`LocalChunks`)."""
        return self._local is not None

    @property
    def on_futures(self) -> bool:
        """Whether passes go straight onto persisted chunk futures."""
        return self._client is not None

    # -- futures engine helpers --------------------------------------------------

    def _centers_arg(self, centers: np.ndarray):
        if len(self._xf) * centers.nbytes > G.INLINE_CENTERS_BYTES:
            # Many chunks: send the centres to every worker once, ahead of the tasks.
            return self._client.scatter(centers, broadcast=True, hash=False)
        # Few chunks: inside the task messages, which saves a dependency hop.
        return centers

    def _map(self, func, *per_chunk, **kwargs):
        n = len(self._xf)
        args = [a if isinstance(a, list) else [a] * n for a in per_chunk]
        return self._client.map(func, self._xf, *args, pure=False, **kwargs)

    # -- passes ----------------------------------------------------------------

    def lloyd(self, centers: np.ndarray, with_moments: bool, sizes=None,
              exact_inertia: bool = True, at: np.ndarray | None = None) -> np.ndarray:
        """Summed Lloyd partials against ``centers`` (see ``_graph.unpack``), their sums
        about the clusters' origins ``at`` (``_kernels.Partials``).

        ``sizes`` splits stacked centres into several models served by one pass.
        Without ``exact_inertia`` a pass with Hamerly's bounds (on the actors)
        reads only the rows that may change centre, and its inertia comes from
        the clusters' moments (the expanded form's rounding; for following a
        fit, not for the fitted ``inertia_``).
        """
        if self._on_graphs:
            graph = G.lloyd_partials(self.X, centers, self.sample_weight,
                                     split_every=self.split_every, with_moments=with_moments,
                                     metric=self.metric, sizes=sizes, at=at)
            return compute(graph)[0]
        if sizes is None:
            # Hamerly's algorithm on the actors, where each chunk's row bounds can stay.
            used, drift, s_half, previous, version = self._bounded_step(centers, self._sent)
            parts = self._on_actors("lloyd_bounded", centers, with_moments, self.metric,
                                    drift, s_half, previous, version, exact_inertia, at)
            self._sent = (version, used)
        else:
            parts = self._on_actors("lloyd", centers, with_moments, self.metric, sizes, at)
        if parts is not None:
            return sum_in_order(parts, self.split_every).ravel()
        # The origins travel as the centres do (in the tasks, or scattered once when large).
        parts = self._map(G.packed_chunk, self._centers_arg(centers),
                          None if at is None else self._centers_arg(at), self._wf,
                          with_moments=with_moments, metric=self.metric, sizes=sizes)
        return tree_sum(self._client, parts, self.split_every).ravel()

    def lloyd_models(self, centers_by_model: dict, with_moments: bool,
                     at_by_model: dict | None = None) -> np.ndarray:
        """Summed Lloyd partials of several models in one pass (a K sweep), packed in the
        order of ``centers_by_model`` (see ``_graph.unpack_many``), their sums about each
        model's origins in ``at_by_model``.

        On the actors or the local pool each model keeps its own Hamerly bounds
        between passes, while all of them fit in a quarter of the memory budget
        (20 bytes a row and model): rows that keep their centre are not read,
        and each model's inertia comes from its clusters' moments. Otherwise
        one plain pass against the stacked centres.
        """
        ids = list(centers_by_model)
        if self._bounds_fit(len(ids)):
            models, sent = [], {}
            for mid in ids:
                used, drift, s_half, previous, version = self._bounded_step(
                    centers_by_model[mid], self._sent_models.get(mid))
                models.append((mid, used, drift, s_half, previous, version,
                               None if at_by_model is None else at_by_model[mid]))
                sent[mid] = (version, used)
            parts = self._on_actors("lloyd_models", models, with_moments, self.metric)
            if parts is not None:
                self._sent_models = sent
                return sum_in_order(parts, self.split_every).ravel()
            self._sent_models = {}
        stacked = np.vstack([centers_by_model[mid] for mid in ids])
        sizes = tuple(len(centers_by_model[mid]) for mid in ids)
        at = None if at_by_model is None else np.vstack([at_by_model[mid] for mid in ids])
        return self.lloyd(stacked, with_moments, sizes, at=at)

    def _bounded_step(self, centers, sent):
        """What a bounded pass against ``centers`` needs, given ``sent`` = (number, centres)
        of the previous one (or None): the centres in the data's dtype, their drift since
        then (None when there are no bounds to move) and half-separations, the number of
        the pass whose bounds may be used (None) and this pass's number."""
        used = np.asarray(centers, dtype=self.X.dtype)
        same = sent is not None and sent[1].shape == used.shape
        drift, s_half = K.center_geometry(used, sent[1] if same else None)
        version = sent[0] + 1 if sent is not None else 0
        return used, drift, s_half, sent[0] if same else None, version

    def _bounds_fit(self, n_models: int) -> bool:
        """Whether ``n_models`` models' row bounds fit where the chunks are held."""
        if self._local is None and not self.on_futures:
            return False
        if self._bounds_budget is None:
            self._bounds_budget = 0.25 * memory_budget(self._client)
        # Twice: during a pass each model's old and new bounds are both alive.
        return 2 * self.X.shape[0] * BOUND_BYTES * n_models <= self._bounds_budget

    def oversample(self, candidates: np.ndarray, base: int, *,
                   seed: int, stream: int, ell: float) -> tuple[np.ndarray, float]:
        """One k-means|| round: the rows that join the candidates, and the cost ``phi``.

        With ``keep_state`` rows are compared only with ``candidates[base:]``,
        the ones added since the previous pass; otherwise with all of them.
        Rows come back in chunk order, as columns of ``_kernels.oversample``
        (global index, ``u``, ``w * d^2``, the row). The chunks' proposed rows
        are narrowed down to those chosen on the workers: the driver receives
        about ``ell`` rows, whatever the number of chunks. The costs are added
        in the tree of ``tree_levels``, the same on every engine.
        """
        base = base if self.keep_state else 0
        if base == 0:  # the first round of an initialisation starts from no state
            self._state, self._state_on_actors = None, False
        kw = dict(base=base, seed=seed, stream=stream, ell=ell, metric=self.metric)
        if self._on_graphs:
            res = G.oversampling_round(self.X, self.sample_weight, self._state, candidates,
                                       keep=self.keep_state, **kw)
            if self.keep_state:  # the pass runs once, for the state and the rows both
                (res,) = dask_persist(res)
                self._state = G.round_state(res)
            else:
                # The array's own optimisation, which the Delayed of chosen_rows on top of
                # it does not get: each chunk's round fuses with the reading of the chunk.
                (res,) = dask.optimize(res)
            (rows, phi), = compute(G.chosen_rows(res, ell, self.split_every))
            return rows, float(phi)
        costs = self._on_actors("oversample", candidates, self.keep_state, kw)
        if costs is not None:
            # Added as the merges of the other engines add them (same tree, same order).
            phi = float(sum(tree_levels(list(costs), self.split_every, lambda *g: sum(g))))
            rows = self._on_actors("chosen", phi, ell)
            if rows is not None:
                self._state_on_actors = self.keep_state
                return np.concatenate(rows), phi
        if self._state_on_actors:  # lost with an actor: compare with every candidate again
            kw["base"], self._state, self._state_on_actors = 0, None, False
        prev = self._state if self._state is not None else [None] * len(self._xf)
        res = self._map(G.round_chunk, self._offsets, self._wf, prev,
                        self._centers_arg(candidates), keep=self.keep_state, **kw)
        if self.keep_state:
            self._state = self._client.map(G.part, res, [0] * len(res), pure=False)
            # The merges fetch the proposals, not the states (see G.chosen_rows).
            res = self._client.map(G.part, res, [G.PROPOSALS] * len(res), pure=False)
        rows, phi = tree_merge(self._client, res, self.split_every,
                               partial(G.merge_round_results, ell=ell))
        del res
        return rows, float(phi)

    def candidate_weights(self, candidates: np.ndarray,
                          base: int) -> tuple[np.ndarray, int]:
        """Total weight of the rows nearest to each candidate, shape (n_candidates,), and
        the number of rows nearest to none (zero norm, for "cosine")."""
        base = base if self.keep_state else 0
        kw = dict(base=base, n_candidates=len(candidates), metric=self.metric)
        if self._on_graphs:
            graph = G.candidate_weights(self.X, self.sample_weight, self._state, candidates,
                                        split_every=self.split_every, **kw)
            out = compute(graph)[0]
        elif (parts := self._on_actors("candidate_weights", candidates, self.keep_state,
                                       kw)) is not None:
            out = sum_in_order(parts, self.split_every).ravel()
        else:
            if self._state_on_actors:  # lost with an actor: compare with every candidate
                kw["base"], self._state = 0, None
            prev = self._state if self._state is not None else [None] * len(self._xf)
            parts = self._map(G.weights_chunk, self._offsets, self._wf, prev,
                              self._centers_arg(candidates), **kw)
            out = tree_sum(self._client, parts, self.split_every).ravel()
        self._state, self._state_on_actors = None, False
        return out[:-1], int(out[-1])

    def rows(self, index: np.ndarray) -> np.ndarray | None:
        """Rows ``index`` (global, distinct) of persisted data, in that order, from the
        actors (one call); None without actors, for the caller to read them otherwise."""
        index = np.asarray(index, dtype=np.int64)
        parts = self._on_actors("rows", index)
        if parts is None:
            return None
        out = np.empty((len(index), self.X.shape[1]), dtype=self.X.dtype)
        where = {int(r): j for j, r in enumerate(index)}
        filled = 0
        for found, values in parts:
            for r, v in zip(found, values, strict=True):
                out[where[int(r)]] = v
                filled += 1
        if filled != len(where):
            raise IndexError(f"rows {sorted(where)} are not all within the {self.X.shape[0]} "
                             "rows of the data")
        return out

    def local_labels(self) -> np.ndarray | None:
        """Every row's centre after the last bounded Lloyd pass on chunks held in this
        process (its bounds name them), as one int32 array; None otherwise."""
        group = self._local
        if group is None or group.bounds_version is None or any(b is None for b in group.bounds):
            return None
        return np.concatenate([b.labels for b in group.bounds])

    def weighted_choice(self, *, seed: int, stream: int, size: int = 1) -> np.ndarray:
        """Per chunk, the ``size`` best exponential keys, their row indices and the
        rows, shape (sum of min(size, chunk rows), 2 + d); see :func:`K.best_keys`."""
        kw = dict(seed=seed, stream=stream, size=size)
        if self._on_graphs:
            return compute(G.weighted_choice(self.X, self.sample_weight, **kw))[0]
        parts = self._on_actors("weighted_choice", kw)
        if parts is None:
            parts = self._client.gather(self._map(G.choice_chunk, self._offsets, self._wf, **kw))
        return np.concatenate(parts)
