"""Cluster one million synthetic customers on a local two-process Dask cluster.

Run with ``python jobs/demo.py`` (or ``make demo``). The script

1. builds a customers table of 1,000,000 rows (age, income, spending_score,
   visits_per_month, tenure_years) drawn from five segments, as a dask
   DataFrame of 8 partitions generated on the workers;
2. standardises the features, because K-means uses Euclidean distances and
   income (tens of thousands) would otherwise outweigh every other column;
3. fits ``dask_kmeans.KMeans(n_clusters=5)`` on a
   ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``;
4. prints the size, share and mean features (in the original units) of every
   cluster, then the number of iterations, the inertia and the times.

``python jobs/demo.py --write-parquet demo-output/customers [--rows N]`` instead writes
the same customers table as Parquet files (one per partition) with a ``customer_id``
column, for the command-line jobs in ``jobs/*.yaml`` (``dask-kmeans run jobs/demo.yaml``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster

from dask_kmeans import KMeans

N_ROWS = 1_000_000
N_PARTITIONS = 8
N_CLUSTERS = 5
SEED = 0
FEATURES = ["age", "income", "spending_score", "visits_per_month", "tenure_years"]

#: name: (share of customers, mean and standard deviation of age, income,
#: spending score, visits per month and tenure in years)
SEGMENTS: dict[str, tuple[float, list[tuple[float, float]]]] = {
    "students": (0.20, [(22, 3), (16_000, 6_000), (60, 12), (6, 2), (1.0, 0.8)]),
    "young professionals": (0.25, [(31, 4), (58_000, 12_000), (72, 10), (10, 3), (3, 1.5)]),
    "families": (0.25, [(43, 6), (68_000, 15_000), (42, 10), (4, 1.5), (9, 3)]),
    "high earners": (0.10, [(50, 7), (160_000, 30_000), (82, 8), (3, 1), (12, 4)]),
    "retirees": (0.20, [(71, 6), (30_000, 8_000), (28, 9), (2, 1), (18, 5)]),
}
#: Physical bounds of every feature, applied after the noise.
BOUNDS = {
    "age": (18, 95),
    "income": (0, None),
    "spending_score": (1, 100),
    "visits_per_month": (0, None),
    "tenure_years": (0, None),
}


def partition_sizes(n_rows: int, n_partitions: int) -> list[int]:
    """Rows per partition: as equal as possible, summing to ``n_rows``."""
    base, extra = divmod(n_rows, n_partitions)
    return [base + (i < extra) for i in range(n_partitions)]


def make_customers(n_rows: int, seed: int) -> pd.DataFrame:
    """One partition of the customers table: ``n_rows`` rows from :data:`SEGMENTS`.

    Parameters
    ----------
    n_rows : int
    seed : int or sequence of int
        Seed of this partition's ``numpy.random.Generator``.

    Returns
    -------
    pandas.DataFrame of shape (n_rows, 5)
        The columns of :data:`FEATURES`, float64.
    """
    rng = np.random.default_rng(seed)
    shares = np.array([share for share, _ in SEGMENTS.values()])
    params = np.array([p for _, p in SEGMENTS.values()])  # (segment, feature, mean/std)
    segment = rng.choice(len(SEGMENTS), size=n_rows, p=shares / shares.sum())
    values = rng.normal(params[segment, :, 0], params[segment, :, 1])
    table = pd.DataFrame(values, columns=FEATURES)
    for name, (low, high) in BOUNDS.items():
        table[name] = table[name].clip(low, high)
    table["spending_score"] = table["spending_score"].round()
    table["visits_per_month"] = table["visits_per_month"].round()
    return table


def customers(n_rows: int = N_ROWS, n_partitions: int = N_PARTITIONS, seed: int = SEED):
    """The customers table as a lazy dask DataFrame, generated partition by partition.

    Each partition is built by a task on a worker from its own seed, so the
    client never holds the data and the table is the same for any scheduler.

    Returns
    -------
    ddf : dask.dataframe.DataFrame of shape (n_rows, 5)
    sizes : list of int
        Rows per partition.
    """
    sizes = partition_sizes(n_rows, n_partitions)
    meta = pd.DataFrame({name: pd.Series(dtype="float64") for name in FEATURES})
    ddf = dd.from_map(make_customers, sizes, [(seed, i) for i in range(n_partitions)],
                      meta=meta, enforce_metadata=False)
    return ddf, sizes


def cluster_profiles(ddf, labels, sizes: list[int]) -> pd.DataFrame:
    """Size, share and mean features of every cluster, computed on the cluster.

    ``labels`` is a dask array of one label per row; it is given the row
    chunks of ``ddf``'s partitions so that it can become a column of ``ddf``.
    """
    labels = labels.rechunk((tuple(sizes),))
    grouped = ddf.assign(cluster=labels).groupby("cluster")
    size, means = dask.compute(grouped.size(), grouped[FEATURES].mean())
    table = pd.DataFrame({"size": size, "share": size / size.sum()}).join(means)
    return table.sort_index()


def main() -> None:
    t_start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        print(f"cluster: {len(client.scheduler_info()['workers'])} worker processes, "
              f"{sum(client.nthreads().values())} threads")

        ddf, sizes = customers()
        ddf = ddf.persist()
        mean, std = dask.compute(ddf.mean(), ddf.std())
        # NumPy operands broadcast along the rows of every partition.
        scaled = (ddf - mean.to_numpy()) / std.to_numpy()
        t_ready = time.perf_counter()

        km = KMeans(n_clusters=N_CLUSTERS, random_state=SEED)
        km.fit(scaled)
        t_fit = time.perf_counter() - t_ready

        profiles = cluster_profiles(ddf, km.labels_, sizes)
        # The centres are means of standardised features; back in original units
        # they match the per-cluster means of the final labels up to the centres'
        # last movement, a check that the two routes agree.
        centres = km.cluster_centers_ * std.to_numpy() + mean.to_numpy()
        gap = np.abs(centres - profiles[FEATURES].to_numpy()).max(axis=0) / std.to_numpy()

    formats = {"size": "{:,.0f}".format, "share": "{:.1%}".format,
               "income": "{:,.0f}".format}
    print(f"\n{N_ROWS:,} customers, {N_PARTITIONS} partitions, KMeans(n_clusters={N_CLUSTERS}, "
          f"random_state={SEED})\n")
    print(profiles.to_string(formatters=formats, float_format="{:.1f}".format))
    print(f"\niterations: {km.n_iter_}")
    print(f"inertia:    {km.inertia_:,.1f} (standardised features)")
    print(f"centres vs. cluster means: at most {gap.max():.2g} standard deviations apart")
    print(f"fit time:   {t_fit:.2f} s")
    print(f"total time: {time.perf_counter() - t_start:.2f} s "
          "(cluster start-up, data generation, fit, profiles)")


def write_parquet(directory: str, n_rows: int = N_ROWS, n_partitions: int = N_PARTITIONS,
                  seed: int = SEED) -> list[Path]:
    """Write the customers table as Parquet files ``part-00000.parquet``... in ``directory``.

    Columns: ``customer_id`` (int64, 0 to n_rows - 1) and the :data:`FEATURES`, in
    their original units. Part files already in ``directory`` are replaced.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    written, start = [], 0
    for i, size in enumerate(partition_sizes(n_rows, n_partitions)):
        # The same seeds as customers(): the same table the demo clusters.
        table = make_customers(size, (seed, i))
        table.insert(0, "customer_id", np.arange(start, start + size, dtype=np.int64))
        path = out / f"part-{i:05d}.parquet"
        table.to_parquet(path, index=False)
        written.append(path)
        start += size
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-parquet", metavar="DIR",
                        help="write the customers table as Parquet files in DIR and exit")
    parser.add_argument("--rows", type=int, default=N_ROWS,
                        help=f"rows to write with --write-parquet (default {N_ROWS:,})")
    args = parser.parse_args()
    if args.write_parquet:
        files = write_parquet(args.write_parquet, n_rows=args.rows)
        print(f"wrote {args.rows:,} customers to {args.write_parquet} ({len(files)} Parquet files)")
    else:
        main()
