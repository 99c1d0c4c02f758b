"""Progress events: what the drivers tell a listener (the CLI's progress bars)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from dask_kmeans import KMeans, sweep
from dask_kmeans._progress import emit, listening
from tests.conftest import blobs


def record():
    events = []
    return events, lambda stage, step, total, info: events.append((stage, step, total, info))


def test_fit_reports_the_run_the_kmeans_parallel_passes_and_every_iteration():
    X = da.from_array(blobs(n=4000, d=3, k=4, seed=1), chunks=(1000, -1))
    events, listener = record()
    with listening(listener):
        km = KMeans(4, init_rounds=3, random_state=0).fit(X)
    assert events[0] == ("run", 1, 1, {})
    init = [e for e in events if e[0] == "init"]
    # Three oversampling passes, then the candidate-weights pass closes the bar.
    assert [(s, t) for _, s, t, _ in init] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(info["candidates"] >= 1 for *_, info in init)
    iters = [e for e in events if e[0] == "iteration"]
    assert [s for _, s, _, _ in iters] == list(range(1, km.n_iter_ + 1))
    assert all(t == km.max_iter for _, _, t, _ in iters)
    assert iters[-1][3]["converged"] and not any(i["converged"] for *_, i in iters[:-1])
    # Each iteration reports the inertia of the centres it started from: never rising, and
    # the last one just above the final centres' inertia.
    inertias = [i["inertia"] for *_, i in iters]
    assert inertias == sorted(inertias, reverse=True)
    assert km.inertia_ <= inertias[-1] <= km.inertia_ * (1 + 1e-3)
    assert all(i["shift"] >= 0 and i["tol"] > 0 for *_, i in iters)


def test_every_initialisation_run_is_announced():
    X = blobs(n=600, d=2, k=3, seed=2)
    events, listener = record()
    with listening(listener):
        KMeans(3, init="random", n_init=3, max_iter=2, random_state=0).fit(X)
    assert [(s, t) for stage, s, t, _ in events if stage == "run"] == [(1, 3), (2, 3), (3, 3)]
    assert not [e for e in events if e[0] == "init"], "random init makes no k-means|| pass"
    # max_iter=2 and no convergence in between: each run reports two iterations.
    assert sum(1 for e in events if e[0] == "iteration") <= 6


def test_a_sweep_reports_shared_passes_until_every_model_stops():
    X = da.from_array(blobs(n=3000, d=2, k=3, seed=3), chunks=(1000, -1))
    events, listener = record()
    with listening(listener):
        res = sweep(X, [2, 3, 4], random_state=0)
    passes = [e for e in events if e[0] == "sweep"]
    assert [s for _, s, _, _ in passes] == list(range(1, max(res.n_iter) + 1))
    assert all(info["models"] == 3 for *_, info in passes)
    moving = [info["moving"] for *_, info in passes]
    assert moving == sorted(moving, reverse=True) and moving[-1] == 0


def test_listeners_nest_and_stop_with_their_block():
    outer, inner = [], []
    with listening(lambda *e: outer.append(e)):
        emit("init", 1, 2, candidates=5)
        with listening(lambda *e: inner.append(e)):
            emit("init", 2, 2, candidates=9)
        emit("iteration", 1, 10, inertia=1.0, shift=0.5, tol=0.1, converged=False)
    emit("iteration", 2, 10, inertia=1.0, shift=0.0, tol=0.1, converged=True)  # nobody
    assert [e[:2] for e in outer] == [("init", 1), ("init", 2), ("iteration", 1)]
    assert inner == [("init", 2, 2, {"candidates": 9})]


def test_a_listener_that_raises_stops_the_fit():
    X = np.random.default_rng(0).normal(size=(500, 2))

    def stop(stage, step, total, info):
        if stage == "iteration" and step == 2:
            raise KeyboardInterrupt

    with listening(stop), pytest.raises(KeyboardInterrupt):
        KMeans(3, random_state=0, tol=0).fit(X)
