"""Seconds per Lloyd iteration: dask_kmeans vs scikit-learn, dask-ml and FAISS, side by side.

One Gaussian mixture (n=1,000,000, d=32, k=32 by default), the same initial
centres for everyone, tol=0. The data is persisted on a LocalCluster of 2
worker processes with 1 thread each for the Dask implementations;
scikit-learn and FAISS run in this process with both cores, and so does
dask_kmeans on the NumPy array without a cluster (dask's threaded scheduler).

Per-iteration time is measured as (t(max_iter=21) - t(max_iter=1)) / 20, so
set-up, initialisation and final assignment cancel out; each measurement is
repeated and the median is printed, with ratios against scikit-learn taken
in the same run (this machine is shared and noisy: quote ratios).

Run: ``python benchmarks/lloyd.py [--n 1000000] [--repeats 5] [--plot FILE.png]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def mixture(n, d, k, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(k, d))
    X = centers[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))
    return X.astype(dtype)


def per_iteration(fit, repeats, iters=20):
    """Median over ``repeats`` of (t(iters + 1) - t(1)) / iters.

    ``fit(max_iter)`` may return a callable that waits for work the fit left running in
    the background (dask_kmeans' labels of persisted data): it is called after the
    timing, so that this work neither counts nor runs into the next measurement.
    """
    out = []
    for _ in range(repeats):
        times = []
        for max_iter in (1, iters + 1):
            t = time.perf_counter()
            settle = fit(max_iter)
            times.append(time.perf_counter() - t)
            if settle is not None:
                settle()
        out.append((times[1] - times[0]) / iters)
    return float(np.median(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunks", type=int, default=2,
                   help="row chunks of the persisted array (dask_kmeans picks one per "
                   "worker thread)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the seconds per iteration of every implementation as bars")
    args = p.parse_args()
    if args.plot:
        from dask_kmeans.report import check_plotting

        check_plotting()  # before minutes of measuring

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait
    from sklearn.cluster import KMeans as SKKMeans
    from threadpoolctl import threadpool_limits

    from dask_kmeans import KMeans

    try:
        import dask_ml.cluster as dml
    except ImportError:
        dml = None
    try:
        import faiss
    except ImportError:
        faiss = None

    print(f"n={args.n} d={args.d} k={args.k}, 20 iterations, tol=0, median of {args.repeats}")
    results = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for dtype in (np.float64, np.float32):
            X = mixture(args.n, args.d, args.k, dtype=dtype)
            C0 = X[np.random.default_rng(1).choice(args.n, args.k, replace=False)].copy()
            Xd = client.persist(da.from_array(X, chunks=(-(-args.n // args.chunks), args.d)))
            rows = {}

            def ours(it, Xd=Xd, C0=C0):
                # fit returns before the labels of persisted data are computed.
                km = KMeans(args.k, init=C0, max_iter=it, tol=0).fit(Xd)
                return lambda: wait(km.labels_)

            rows["dask_kmeans (2 workers)"] = per_iteration(ours, args.repeats)

            def local(it, X=X, C0=C0):
                # NumPy input without a cluster: passes in a local pool of 2 threads.
                with dask.config.set(scheduler="threads", num_workers=2):
                    KMeans(args.k, init=C0, max_iter=it, tol=0).fit(X)

            rows["dask_kmeans NumPy, no cluster"] = per_iteration(local, args.repeats)

            if dtype == np.float64:
                # Spherical k-means normalises rows inside the kernel; compare with the
                # Euclidean kernel on rows normalised beforehand.
                U = X / np.linalg.norm(X, axis=1, keepdims=True)
                Ud = client.persist(da.from_array(U, chunks=Xd.chunks))
                C0n = C0 / np.linalg.norm(C0, axis=1, keepdims=True)

                def cos(it, Xd=Xd, C0=C0n):
                    km = KMeans(args.k, init=C0, max_iter=it, tol=0, metric="cosine").fit(Xd)
                    return lambda: wait(km.labels_)

                def pre(it, Ud=Ud, C0=C0n):
                    km = KMeans(args.k, init=C0, max_iter=it, tol=0).fit(Ud)
                    return lambda: wait(km.labels_)

                rows["dask_kmeans cosine"] = per_iteration(cos, args.repeats)
                rows["dask_kmeans euclid. on normalised"] = per_iteration(pre, args.repeats)
                client.cancel(Ud)

            def sk(it, X=X, C0=C0):
                with threadpool_limits(2):
                    SKKMeans(args.k, init=C0, n_init=1, max_iter=it, tol=0,
                             algorithm="lloyd").fit(X)

            rows["scikit-learn (2 threads)"] = per_iteration(sk, args.repeats)

            if dml is not None and dtype == np.float64:
                def dm(it, Xd=Xd, C0=C0):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        dml.KMeans(n_clusters=args.k, init=C0, max_iter=it, tol=0).fit(Xd)

                try:
                    rows["dask-ml (2 workers)"] = per_iteration(dm, max(1, args.repeats - 1))
                except Exception as exc:  # report, keep the other rows
                    print(f"dask-ml failed: {type(exc).__name__}: {exc}")

            if faiss is not None and dtype == np.float32:
                def fa(it, X=X, C0=C0):
                    km = faiss.Kmeans(args.d, args.k, niter=it, max_points_per_centroid=10**9,
                                      seed=0)
                    km.train(np.ascontiguousarray(X), init_centroids=C0)

                rows["FAISS (2 threads)"] = per_iteration(fa, args.repeats)

            results[np.dtype(dtype).name] = rows
            base = rows["scikit-learn (2 threads)"]
            print(f"\n{np.dtype(dtype).name}")
            print(f"{'implementation':<36}{'s/iteration':>12}{'vs sklearn':>12}")
            for name, t in rows.items():
                print(f"{name:<36}{t:>12.4f}{t / base:>11.2f}x")
            if "dask-ml (2 workers)" in rows:
                ratio = rows["dask_kmeans (2 workers)"] / rows["dask-ml (2 workers)"]
                print(f"dask_kmeans / dask-ml: {ratio:.3f}x")
            client.cancel(Xd)
    if args.plot:
        plot(results, args, args.plot)


def plot(results: dict[str, dict[str, float]], args, path: str) -> None:
    """Horizontal bars of seconds per iteration, one panel per dtype, sharing the x axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 1.2 + 0.45 * sum(len(r) for r in results.values())), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 1, sharex=True, squeeze=False,
                        height_ratios=[len(r) for r in results.values()])[:, 0]
    for ax, (dtype, rows) in zip(axes, results.items(), strict=True):
        names = list(rows)[::-1]
        times = [rows[n] for n in names]
        colours = ["tab:blue" if n.startswith("dask_kmeans") else "tab:gray" for n in names]
        ax.barh(names, times, color=colours)
        base = rows["scikit-learn (2 threads)"]
        for y, t in enumerate(times):
            ax.text(t, y, f" {t:.3f} s ({t / base:.2f}x)", va="center", fontsize=8)
        ax.set_title(f"{dtype}", fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("seconds per Lloyd iteration (median; lower is better)")
    axes[-1].set_xlim(0, 1.35 * max(max(r.values()) for r in results.values()))
    fig.suptitle(f"One Lloyd iteration, n={args.n:,} d={args.d} k={args.k}, 2 cores",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
