"""Initialisation quality, in the spirit of Bahmani et al. (VLDB 2012), tables 1-4.

For Gaussian mixtures (n=1,000,000, d=32, k=32 by default), one well separated
and one overlapping (centres drawn with standard deviation 2 against unit
noise), every row of the table gives medians over ``--seeds`` seeds of:
- seed cost: the inertia of the initial centres,
- final inertia after Lloyd (tol=1e-4, max_iter=300),
- Lloyd iterations,
- initialisation time, also in units of one full Lloyd pass measured in the same run,
- time to solution: initialisation plus the Lloyd fit that follows it.

Rows: random, exact k-means++ (on the driver, all rows), and k-means|| for
l in {0.5k, k, 2k, 10k} and rounds in {1, 2, 5, 8}; then scikit-learn's
KMeans(init="k-means++", n_init=1) and dask-ml's KMeans for the final inertia.

The data is persisted on a LocalCluster of 2 worker processes with 1 thread each.

Run: ``python benchmarks/init_quality.py [--n 1000000] [--seeds 5] [--markdown out.md]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def mixture(n, d, k, spread, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    return centers[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def _cell(text):
    """A Markdown table cell: ``|`` escaped (k-means||)."""
    return text.replace("|", "\\|")


def one_dataset(client, label, spread, args):
    """The Markdown table for one mixture."""
    import dask.array as da
    from distributed import wait
    from sklearn.cluster import KMeans as SKKMeans
    from sklearn.utils import check_random_state
    from threadpoolctl import threadpool_limits

    from dask_kmeans import KMeans, kmeans_parallel_init
    from dask_kmeans import _kernels as K

    try:
        import dask_ml.cluster as dml
    except ImportError:
        dml = None

    k = args.k
    X = mixture(args.n, args.d, k, spread)
    Xd = client.persist(da.from_array(X, chunks=(-(-args.n // 4), args.d)))

    def lloyd(C0):
        t = time.perf_counter()
        km = KMeans(k, init=C0, tol=1e-4, max_iter=300).fit(Xd)
        t_fit = time.perf_counter() - t
        wait(km.labels_)  # computed in the background: out of both timings
        return km.inertia_, km.n_iter_, t_fit

    # One Lloyd iteration, measured here: (t(11) - t(1)) / 10, each the median of 3 fits
    # from the same random rows with tol=0, waiting for the labels outside the timing.
    # Hamerly's bounds make later iterations cheaper than the first, so the unit of the
    # init-time column is one full Lloyd pass instead: every row against every centre (the
    # plain fused kernel on the workers' actors, as the first iteration of a fit), median of 5.
    from dask_kmeans._passes import Passes

    C1 = X[np.random.default_rng(1).choice(args.n, k, replace=False)]

    def fit_time(max_iter):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            km = KMeans(k, init=C1, max_iter=max_iter, tol=0).fit(Xd)
            times.append(time.perf_counter() - t)
            wait(km.labels_)
        return float(np.median(times))

    fit_time(2)  # warm up: kernels loaded on the workers
    iter_s = (fit_time(11) - fit_time(1)) / 10
    passes = Passes(Xd)
    full = []
    for _ in range(6):
        t = time.perf_counter()
        passes.lloyd(C1, False, (k,))  # sizes=(k,): the plain kernel, never bounded
        full.append(time.perf_counter() - t)
    pass_s = float(np.median(full[1:]))
    del passes

    def row(name, make_init, seeds):
        vals = []
        for s in range(seeds):
            t = time.perf_counter()
            C = make_init(s)
            t_init = time.perf_counter() - t
            seed_cost = K.assign(X, C)[2]
            inertia, n_iter, t_fit = lloyd(C)
            vals.append((seed_cost, inertia, n_iter, t_init, t_init + t_fit))
        m = np.median(np.array(vals), axis=0)
        return (name, *m)

    table = [
        row("random", lambda s: X[np.random.default_rng(s).choice(args.n, k, replace=False)],
            args.seeds),
        row("k-means++ (exact)", lambda s: K.kmeans_plusplus(X, k, check_random_state(s)),
            args.seeds),
    ]
    for factor in (0.5, 1, 2, 10):
        for rounds in (1, 2, 5, 8):
            table.append(row(
                f"k-means|| l={factor:g}k r={rounds}",
                lambda s, f=factor, r=rounds: kmeans_parallel_init(
                    Xd, k, oversampling_factor=f, init_rounds=r, random_state=s),
                args.seeds))

    peers = []
    sk = []
    for s in range(args.peer_seeds):
        t = time.perf_counter()
        with threadpool_limits(2):
            m = SKKMeans(k, init="k-means++", n_init=1, random_state=s).fit(X)
        sk.append((m.inertia_, m.n_iter_, time.perf_counter() - t))
    peers.append(("scikit-learn KMeans(k-means++)", *np.median(sk, axis=0)))
    if dml is not None:
        dm = []
        for s in range(args.peer_seeds):
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = dml.KMeans(n_clusters=k, random_state=s).fit(Xd)
            t = time.perf_counter() - t
            # dask-ml's inertia_ sums unsquared distances: recompute the usual one.
            dm.append((K.assign(X, np.asarray(m.cluster_centers_))[2], m.n_iter_, t))
        peers.append(("dask-ml KMeans(k-means||)", *np.median(dm, axis=0)))
    client.cancel(Xd)

    lines = [f"\n### {label}\n",
             f"One full Lloyd pass of ours (every row against every centre): {pass_s:.3f} s; "
             f"one Lloyd iteration with the bounds (iterations 2-11 from random rows): "
             f"{iter_s:.3f} s (both measured in this run)\n",
             "| init | seed cost | final inertia | Lloyd iterations | init time (s) "
             "| init time (full Lloyd passes) | init + Lloyd (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, cost, inertia, n_iter, t_init, t_total in table:
        lines.append(f"| {_cell(name)} | {cost:.4e} | {inertia:.4e} | {n_iter:.0f} | "
                     f"{t_init:.2f} | {t_init / pass_s:.1f} | {t_total:.2f} |")
    lines += ["", "| peer | final inertia | Lloyd iterations | fit time (s) |",
              "|---|---:|---:|---:|"]
    for name, inertia, n_iter, t_fit in peers:
        lines.append(f"| {_cell(name)} | {inertia:.4e} | {n_iter:.0f} | {t_fit:.2f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--peer-seeds", type=int, default=5, help="seeds for sklearn and dask-ml")
    p.add_argument("--markdown", help="also write the tables to this Markdown file")
    args = p.parse_args()

    from distributed import Client, LocalCluster

    k = args.k
    out = [f"n={args.n}, d={args.d}, k={k}; medians over {args.seeds} seeds "
           f"({args.peer_seeds} for the peers)\n"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for label, spread in (("well separated (centre sd 8)", 8.0),
                              ("overlapping (centre sd 2)", 2.0)):
            text = one_dataset(client, label, spread, args)
            print(text, flush=True)
            out.append(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
