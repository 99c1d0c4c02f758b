"""What one chunk's share of a k-means|| initialisation costs, in plain Lloyd passes.

Run with ``python benchmarks/init_cost.py``. On one thread (one BLAS thread), one chunk of
``--rows`` rows of the Gaussian mixture of ``benchmarks/init_quality.py`` goes through the
chunk work of a k-means|| initialisation, as a worker runs it with the state kept
(``_graph.round_chunk`` for each of ``--rounds`` rounds, then ``_graph.weights_chunk``),
each pass timed side by side with a plain Lloyd pass over the same rows against ``k``
centres (``_kernels.lloyd_partials``), medians of ``--repeats``. One chunk's cost is the
whole cost, so every row sampled for a round joins the candidates. Columns: the candidates
the pass compares rows with (``new``), the share of rows that found a nearer one among them
(``changed``), the pass's time, the Lloyd pass's and their ratio.

It also times the two GEMMs the passes are made of, in blocks of 256 rows as the kernels
run them: the rows in float32 against ``oversampling * k`` candidates (a k-means|| round
after the first) and in float64 against ``k`` centres (a Lloyd pass). The GEMMs of the rounds
after the first and of the weights pass, plus reading the rows in every pass (what the first
round, against one candidate, costs), are a floor for the initialisation in Lloyd passes,
before any float64 check or sampling. No cluster: the driver's work and the calls to the
workers come on top (see ``benchmarks/init_quality.py`` for the whole initialisation on a
cluster).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np


def _ms(func) -> float:
    """One call's time, in milliseconds."""
    t0 = time.perf_counter()
    func()
    return 1000 * (time.perf_counter() - t0)


def _blocked_gemm():
    import numba

    @numba.njit(nogil=True)
    def gemm(x, ct, out):
        rows = out.shape[0]
        for start in range(0, x.shape[0], rows):
            m = min(rows, x.shape[0] - start)
            np.dot(x[start:start + m], ct, out[:m])

    return gemm


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=250_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--spread", type=float, default=2.0,
                   help="standard deviation of the mixture's centres (unit noise)")
    p.add_argument("--oversampling", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from init_quality import mixture
    from round_trip import median_ms
    from threadpoolctl import threadpool_limits

    from dask_kmeans import _graph as G
    from dask_kmeans import _kernels as K

    x = mixture(args.rows, args.d, args.k, args.spread, seed=args.seed)
    ell = args.oversampling * args.k
    centres = x[np.random.default_rng(args.seed + 1).choice(len(x), args.k, replace=False)]
    first = x[[int(np.random.default_rng(args.seed + 2).integers(len(x)))]]
    if args.metric == "cosine":
        first = K.normalize_rows(first)
        centres = K.normalize_rows(centres)
    gemm = _blocked_gemm()
    n_new = max(1, int(round(ell)))
    x32 = x.astype(np.float32)
    cand_t = np.ascontiguousarray(x32[:n_new].T)
    cent_t = np.ascontiguousarray(centres.T)
    out32 = np.empty((K.BLOCK_ROWS, n_new), dtype=np.float32)
    out64 = np.empty((K.BLOCK_ROWS, args.k))

    def lloyd():
        K.lloyd_partials(x, centres, None, args.metric)

    print(f"{args.rows:,} rows x {args.d}, k = {args.k}, l = {ell:g}, {args.rounds} rounds, "
          f"{args.metric}, centre sd {args.spread:g}; medians of {args.repeats}")
    print(f"{'pass':>7}  {'new':>4}  {'changed':>7}  {'pass ms':>7}  {'Lloyd ms':>8}  "
          f"{'in Lloyd passes':>15}")
    with threadpool_limits(1):
        lloyd()  # compiled (or loaded from numba's cache) before timing
        candidates, base, state, total, all_lloyd = first, 0, None, 0.0, []
        # The state the pass before wrote, which the next one writes over (as the workers do).
        spare = K.Nearest(np.empty(len(x)), np.empty(len(x), dtype=np.int64))
        for rnd in range(1, args.rounds + 2):
            last = rnd > args.rounds
            if last:
                one = partial(G.weights_chunk, x, 0, None, state, candidates, base=base,
                              n_candidates=len(candidates), metric=args.metric, out=spare)
            else:
                one = partial(G.round_chunk, x, 0, None, state, candidates, base=base,
                              seed=args.seed, stream=rnd, ell=ell, metric=args.metric,
                              out=spare)
            one()  # the first call of a kernel loads it from numba's cache: not timed
            t_pass, t_lloyd = [], []
            for _ in range(args.repeats):  # side by side: the machine's noise hits both
                t_pass.append(_ms(one))
                t_lloyd.append(_ms(lloyd))
            ms, lloyd_ms = float(np.median(t_pass)), float(np.median(t_lloyd))
            all_lloyd += t_lloyd
            if rnd == 1:  # one candidate: reading the rows and one distance each
                read = ms / lloyd_ms
            total += ms / lloyd_ms
            new = len(candidates) - base
            if last:
                changed = "-"
            else:
                nearest, rows, phi = one()
                changed = ("-" if state is None
                           else f"{np.mean(nearest.index != state.index):.3f}")
                spare, state = (state if state is not None else K.Nearest(
                    np.empty(len(x)), np.empty(len(x), dtype=np.int64))), nearest
                base = len(candidates)
                candidates = np.vstack([candidates, K.chosen(rows, phi, ell)[:, 3:]])
            name = "weights" if last else f"round {rnd}"
            print(f"{name:>7}  {new:>4}  {changed:>7}  {ms:>7.1f}  {lloyd_ms:>8.1f}  "
                  f"{ms / lloyd_ms:>15.2f}")
        print(f"chunk work of the initialisation: {total:.2f} plain Lloyd passes "
              f"({len(candidates)} candidates)")
        g32 = median_ms(lambda: gemm(x32, cand_t, out32), args.repeats)  # warmed up first
        g64 = median_ms(lambda: gemm(x, cent_t, out64), args.repeats)
        flops = 2.0 * args.rows * args.d
        print(f"GEMM, blocks of {K.BLOCK_ROWS} rows: float32 x {n_new} candidates {g32:.1f} ms "
              f"({flops * n_new / g32 / 1e6:.0f} GFLOP/s), float64 x {args.k} centres "
              f"{g64:.1f} ms ({flops * args.k / g64 / 1e6:.0f} GFLOP/s); "
              f"ratio {g32 / g64:.2f}")
        gemms = args.rounds * g32 / float(np.median(all_lloyd))
        print(f"a floor, in plain Lloyd passes: the GEMMs of rounds 2-{args.rounds} and of the "
              f"weights pass alone {gemms:.2f}; with {args.rounds + 1} passes reading the rows "
              f"as round 1 does ({read:.2f} each) {gemms + (args.rounds + 1) * read:.2f}")


if __name__ == "__main__":
    main()
