"""How much Hamerly's bounds save, pass by pass, on one chunk of the Lloyd benchmark's data.

Run with ``python benchmarks/bounds.py``. On one thread (one BLAS thread), one chunk of
``--rows`` rows of the Gaussian mixture of ``benchmarks/lloyd.py`` goes through
``--iterations`` Lloyd passes from the same initial centres, each pass made twice side by
side: with the bounds (``_kernels.bounded_partials(..., exact=False)``, as a fit's iterations
run it: rows that keep their centre are not read) and with the plain fused kernel
(``_kernels.lloyd_partials``). It prints, per iteration, the share of rows the bounds could
not skip and both times (median of ``--repeats``); the first pass also loads the compiled
kernel from numba's cache.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--iterations", type=int, default=21)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from lloyd import mixture
    from threadpoolctl import threadpool_limits

    from dask_kmeans import _kernels as K

    X = mixture(2 * args.rows, args.d, args.k)
    x = X[:args.rows]
    c = X[np.random.default_rng(1).choice(len(X), args.k, replace=False)].copy()
    bounds = previous = None
    print(f"{'iteration':>9}  {'compared':>8}  {'bounded ms':>10}  {'plain ms':>8}")
    with threadpool_limits(1):
        for it in range(1, args.iterations + 1):
            drift, s_half = K.center_geometry(c, previous)
            times_b, times_p = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                partials, new_bounds, n = K.bounded_partials(x, c, None, bounds, drift, s_half,
                                                                exact=False)
                t1 = time.perf_counter()
                K.lloyd_partials(x, c)
                times_b.append(t1 - t0)
                times_p.append(time.perf_counter() - t1)
            print(f"{it:>9}  {n / len(x):>8.3f}  {1000 * np.median(times_b):>10.1f}  "
                  f"{1000 * np.median(times_p):>8.1f}")
            previous, bounds = c, new_bounds
            c = K.finalize_centers(partials.sums, partials.counts, c, "euclidean",
                                   new_bounds.origin)


if __name__ == "__main__":
    main()
