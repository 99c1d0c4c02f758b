"""What a pass costs when it re-reads Parquet, beside the same pass on persisted rows.

Run with ``python benchmarks/parquet_pass.py``. Writes ``--parts`` Parquet files of
``--rows`` x ``--d`` float64 (uncompressed, on local disk: the page cache, so the read is
decoding, not I/O) and, on a ``LocalCluster`` of 2 worker processes x 1 thread, times one
plain Lloyd pass against ``--k`` centres three ways, in turn, medians of ``--repeats``:

- over ``dask_kmeans.open_parquet`` (what ``KMeans(persist=False)`` does, and every pass of
  data larger than memory): each task reads its chunk and computes on it, with one chunk
  per file (``chunk_bytes=None``) and with the default chunks of up to 128 MiB (consecutive
  files together);
- over ``dask.dataframe.read_parquet(...).to_dask_array(lengths=True)``, the way to
  hand Parquet to dask-ml: the same kernel after dask's own reader;
- over the same rows persisted on the workers (the unit: the kernel and the scheduling).

It also times, inside the workers (both at once, as in a pass), the pieces of our read of
one part: the Parquet read into Arrow and the conversion to a row-major matrix.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from round_trip import median_ms


def write_parts(root: str, parts: int, rows: int, d: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(parts):
        X = np.random.default_rng(i).normal(size=(rows, d))
        pq.write_table(pa.table({f"f{j}": X[:, j] for j in range(d)}),
                       os.path.join(root, f"part-{i:04d}.parquet"), compression="NONE")


def read_pieces(path: str, d: int, repeats: int) -> tuple[float, float]:
    """In a worker: the read of one part into Arrow, and its conversion to a matrix (ms)."""
    from dask_kmeans import io

    columns = [f"f{j}" for j in range(d)]
    table = [None]

    def read():
        import pyarrow.parquet as pq

        table[0] = pq.read_table(path, columns=columns, use_threads=False)

    read_ms = median_ms(read, repeats)
    matrix_ms = median_ms(lambda: io._to_matrix(table[0], columns, np.dtype(np.float64)), repeats)
    return read_ms, matrix_ms


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=int, default=40)
    p.add_argument("--rows", type=int, default=250_000)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()

    import dask.dataframe as dd
    from distributed import Client, LocalCluster, wait

    import dask_kmeans as dk
    from dask_kmeans._passes import Passes

    centers = np.random.default_rng(1).normal(size=(args.k, args.d))
    with tempfile.TemporaryDirectory() as root, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        write_parts(root, args.parts, args.rows, args.d)
        per_file = Passes(dk.open_parquet(root, chunk_bytes=None).features, None)
        ours = Passes(dk.open_parquet(root).features, None)
        theirs = Passes(dd.read_parquet(root).to_dask_array(lengths=True), None)
        persisted = client.persist(dk.open_parquet(root).features)
        wait(persisted)
        kept = Passes(persisted, None)
        timed = {name: median_ms(lambda passes=passes: passes.lloyd(centers, False),
                                 args.repeats)
                 for name, passes in [("open_parquet", ours), ("per file", per_file),
                                      ("dask.dataframe", theirs), ("persisted", kept)]}
        pieces = client.run(read_pieces, os.path.join(root, "part-0000.parquet"), args.d,
                            args.repeats)

    print(f"{args.parts} Parquet parts of {args.rows:,} x {args.d} float64, k = {args.k}, "
          f"2 workers x 1 thread; medians of {args.repeats}")
    print(f"{'pass over':<16} {'ms':>7} {'x persisted':>12}")
    for name, ms in timed.items():
        print(f"{name:<16} {ms:7.0f} {ms / timed['persisted']:12.2f}")
    print(f"open_parquet against dask.dataframe: "
          f"{timed['open_parquet'] / timed['dask.dataframe']:.2f} (per file: "
          f"{timed['per file'] / timed['dask.dataframe']:.2f})")
    for worker, (read_ms, matrix_ms) in pieces.items():
        print(f"in {worker}: one part read into Arrow {read_ms:.1f} ms, "
              f"to a matrix {matrix_ms:.1f} ms")


if __name__ == "__main__":
    main()
