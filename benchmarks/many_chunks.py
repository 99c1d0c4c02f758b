"""Scheduling cost per Lloyd iteration: persisted data in 2, 64 and 20,000 row chunks.

The same rows (n=1,000,000, d=16 float64, k=16 by default) are persisted on a
LocalCluster of 2 worker processes x 1 thread, split into each number of row
chunks in turn, and every Lloyd iteration is timed four ways:

- ``persist=True``: what ``KMeans`` does by default with data held in memory.
  It rechunks data with far more chunks than worker threads into about one
  chunk per thread (at most ~128 MiB each, ``_runtime.target_row_chunks``)
  before iterating, so the per-iteration cost does not depend on the chunks
  given; the rechunk is a one-time cost, in ``t(max_iter=1)``.
- ``persist=False`` on the already persisted array: ``KMeans`` then keeps the
  chunks as they are, and the passes still go straight onto the persisted
  chunk futures (the futures engine of ``_passes``): one task per chunk per
  iteration plus a tree of ``combine`` tasks. This is how to measure what many
  chunks cost through ``KMeans`` itself.
- ``Passes(X).lloyd(centers, False)``: the same pass called directly, one call
  per iteration (no convergence bookkeeping, no final assignment).
- The dask-graph engine for the same pass (``_graph.lloyd_partials`` computed
  as one dask graph), which the scheduler has to unpack at every iteration: the
  path taken on dask's local schedulers and for data that is not persisted.

Per-iteration time through ``KMeans`` is the median over ``--repeats`` of
(t(max_iter=6) - t(max_iter=1)) / 5 from the same initial centres with tol=0,
so set-up, validation and the final assignment cancel out, and also the median
of the iterations' own times from the verbose log (the difference of two fit
times is noisy when a fit's fixed cost, such as a rechunk of 20,000 chunks,
is far larger than its iterations); the direct passes are the median of
``--calls`` calls. Each figure is also given per chunk per iteration.

Check that the machine is otherwise idle first (``cat /proc/loadavg``): the
figures are milliseconds per task and move with any other load.

Run: ``python benchmarks/many_chunks.py [--n 1000000] [--chunks 2,64,20000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

import numpy as np


class IterationTimes(logging.Handler):
    """Collects the seconds of each iteration from the ``dask_kmeans`` verbose log lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seconds: list[float] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("iteration "):
            self.seconds.append(float(msg.rsplit(", ", 1)[1].removesuffix(" s")))


#: Installed on the ``dask_kmeans`` logger for the whole run (so that ``verbose=True``
#: adds no stderr handler of its own).
WATCH = IterationTimes()


def per_iteration(fit, repeats: int, iters: int = 5) -> tuple[float, float, float]:
    """Three views of one fit's cost, each the median over ``repeats``.

    Returns ``(t(iters + 1) - t(1)) / iters``, the median of the iterations'
    own times from the verbose log (after the first iteration of the
    longer fit) and ``t(1)``, which holds the fixed costs (validation, any
    rechunk, the final assignment) plus one iteration.
    """
    diff, logged, first = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit(1)
        t1 = time.perf_counter()
        WATCH.seconds.clear()
        fit(iters + 1)
        t2 = time.perf_counter()
        diff.append(((t2 - t1) - (t1 - t0)) / iters)
        logged.append(float(np.median(WATCH.seconds[1:])))
        first.append(t1 - t0)
    return float(np.median(diff)), float(np.median(logged)), float(np.median(first))


def per_call(call, calls: int) -> float:
    """Median seconds of ``calls`` calls, after one warm-up call."""
    call()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--chunks", default="2,64,20000",
                   help="comma-separated numbers of row chunks (default 2,64,20000)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each KMeans timing")
    p.add_argument("--calls", type=int, default=5, help="calls of each direct pass")
    p.add_argument("--many", type=int, default=5000,
                   help="from this many chunks on, use --repeats-many and --calls-many "
                   "(an iteration then takes tens of seconds)")
    p.add_argument("--repeats-many", type=int, default=1)
    p.add_argument("--calls-many", type=int, default=3)
    p.add_argument("--skip-graph-engine", action="store_true",
                   help="do not time the dask-graph engine (slow with many chunks)")
    args = p.parse_args()
    # The rows are sent once as a graph of two chunks: dask warns about its size.
    warnings.filterwarnings("ignore", message="Sending large graph")
    counts = [int(c) for c in args.chunks.split(",")]

    import dask.array as da
    from distributed import Client, LocalCluster, wait

    from dask_kmeans import KMeans
    from dask_kmeans import _graph as G
    from dask_kmeans._passes import Passes
    from dask_kmeans._runtime import compute, target_row_chunks

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=2.0, size=(args.k, args.d))
    X = centers[rng.integers(0, args.k, size=args.n)] + rng.normal(size=(args.n, args.d))
    C0 = X[np.random.default_rng(1).choice(args.n, args.k, replace=False)].copy()
    rows_kmeans = target_row_chunks(args.n, args.d * 8, 2)
    logger = logging.getLogger("dask_kmeans")
    logger.addHandler(WATCH)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    print(f"n={args.n} d={args.d} k={args.k} float64 ({X.nbytes / 2**20:.0f} MiB), "
          f"LocalCluster 2 processes x 1 thread, tol=0, load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print(f"KMeans(persist=True) rechunks to {rows_kmeans} rows per chunk "
          f"({-(-args.n // rows_kmeans)} chunks) when given far more chunks than threads")
    print(f"per iteration: median of {args.repeats} x (t(max_iter=6) - t(max_iter=1)) / 5; "
          f"direct passes: median of {args.calls} calls (from {args.many} chunks: "
          f"{args.repeats_many} and {args.calls_many}; the graph engine half as many calls)\n")
    header = (f"{'chunks':>7} {'rows/chunk':>10}  {'how':<40} {'chunks':>7} "
              f"{'s/iter (t6-t1)/5':>17} {'s/iter (log)':>13} {'ms/chunk/iter':>14} "
              f"{'t(max_iter=1) s':>16}")
    print(header)
    print("-" * len(header))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        # Send the rows once, in two chunks; each chunking is made from them on the workers.
        base = client.persist(da.from_array(X, chunks=(-(-args.n // 2), args.d)))
        wait(base)
        # Compile the kernel on both workers before timing anything.
        KMeans(args.k, init=C0, tol=0, max_iter=2).fit(base)
        for n_chunks in counts:
            rows = -(-args.n // n_chunks)
            Xd = client.persist(base.rechunk((rows, args.d)))
            wait(Xd)
            assert Xd.numblocks[0] == -(-args.n // rows)
            assert Passes(Xd).on_futures

            many = Xd.numblocks[0] >= args.many
            repeats = args.repeats_many if many else args.repeats
            calls = args.calls_many if many else args.calls

            def fit(max_iter, persist, Xd=Xd):
                km = KMeans(args.k, init=C0, tol=0, max_iter=max_iter, persist=persist,
                            verbose=True).fit(Xd)
                assert km.n_iter_ == max_iter

            # What place_data does with persist=True on 2 threads.
            given = Xd.numblocks[0]
            target = -(-args.n // rows_kmeans)
            true_chunks = target if given > 2 * target or given < min(2, target) else given
            note = f"  [{repeats} repeat(s), {calls} call(s)]" if many else ""

            def row(how, used, diff, logged=None, first=None, given=given, rows=rows,
                    note=note):
                per = logged if logged is not None else diff
                cells = [f"{diff:17.3f}", "" if logged is None else f"{logged:13.3f}",
                         f"{1e3 * per / used:14.3f}", "" if first is None else f"{first:16.2f}"]
                print(f"{given:>7} {rows:>10}  {how:<40} {used:>7} {cells[0]} {cells[1]:>13} "
                      f"{cells[2]} {cells[3]:>16}{note}", flush=True)

            row("KMeans(persist=True): rechunked", true_chunks,
                *per_iteration(lambda m: fit(m, True), args.repeats))
            row("KMeans(persist=False): chunks kept", given,
                *per_iteration(lambda m: fit(m, False), repeats))
            passes = Passes(Xd)
            row("Passes(X).lloyd, futures engine", given,
                per_call(lambda p=passes: p.lloyd(C0, False), calls))
            graph = G.lloyd_partials(Xd, G.centers_array(C0), None)
            if not args.skip_graph_engine:
                row("lloyd_partials graph, dask-graph engine", given,
                    per_call(lambda g=graph: compute(g), max(1, calls // 2)))
            del Xd, passes, graph
    print("\ns/iter (log): median of the iterations' own times in the verbose log (the first "
          "left out);\nms/chunk/iter divides it (or the direct call's time) by the chunks "
          "actually used;\nt(max_iter=1): validation, any rechunk and persist, one iteration "
          "and the final assignment.")


if __name__ == "__main__":
    main()
