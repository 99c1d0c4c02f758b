"""Round trip of one pass over persisted chunks, with an empty kernel: the three engines.

Run with ``python benchmarks/round_trip.py``. On a ``LocalCluster`` of 2 worker processes
with 1 thread each, 2 persisted chunks, it times what a Lloyd pass costs besides the kernel:

- a dask-array graph computed every time (the graph engine);
- ``Client.map`` onto the chunk futures and a gather (the futures engine);
- one call to a per-worker actor holding the chunks (``dask_kmeans._passes.ChunkGroup``'s way).

The kernel returns a vector of the size Lloyd partials have (k*d + k + 2), so only the
overhead is timed. Prints the median over ``--repeats`` passes of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def empty_kernel(x, c):
    return np.zeros((1, c.shape[0] * c.shape[1] + c.shape[0] + 2)) + x[0, 0]


class Holder:
    """One worker's chunks, as an actor."""

    def __init__(self, chunks):
        self.chunks = chunks

    def run(self, c):
        return [empty_kernel(x, c) for x in self.chunks]


def median_ms(f, repeats: int) -> float:
    f()  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d", type=int, default=32)
    args = p.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster, futures_of, wait

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        X = client.persist(da.random.default_rng(0).normal(size=(20_000, args.d),
                                                           chunks=(10_000, args.d)))
        wait(X)
        futures = futures_of(X)
        c = np.random.default_rng(1).normal(size=(args.k, args.d))
        C = da.from_array(c, chunks=c.shape)

        def graph():
            parts = da.blockwise(empty_kernel, "ij", X, "ik", C, "jk", concatenate=True,
                                 dtype=float, adjust_chunks={"j": lambda _: 1},
                                 new_axes={}, align_arrays=False)
            return parts.sum(axis=0).compute()

        def by_futures():
            return np.sum(client.gather(client.map(empty_kernel, futures, [c] * len(futures),
                                                   pure=False)), axis=0)

        holders = client.who_has(futures)
        by_worker: dict[str, list] = {}
        for f in futures:
            by_worker.setdefault(holders[f.key][0], []).append(f)
        actors = [client.submit(Holder, fs, workers=[w], actor=True).result()
                  for w, fs in by_worker.items()]

        def by_actors():
            calls = [a.run(c) for a in actors]
            return np.sum([p for call in calls for p in call.result()], axis=0)

        print(f"{len(futures)} chunks on {len(by_worker)} workers, median of {args.repeats}")
        for name, f in (("dask-array graph", graph), ("Client.map + gather", by_futures),
                        ("actor calls", by_actors)):
            print(f"{name:<22}{median_ms(f, args.repeats):8.2f} ms")


if __name__ == "__main__":
    main()
