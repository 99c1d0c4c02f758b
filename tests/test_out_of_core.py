"""A fit on one Parquet file three times larger than the workers' total memory limit.

2 worker processes with a 768 MiB memory limit each (a worker process with numba, scipy,
pyarrow and pandas loaded already takes about 330 MiB); one file of more than 4.5 GiB, in
row groups of 250,000 rows (16 MB), on local disk, opened with ``chunk_bytes="64MiB"``: 4
row groups a chunk, read one at a time into it. With the default 128 MiB chunks the
workers peaked at 535 MiB, too close to the 614 MiB at which they pause. Every pass
(k-means|| rounds and Lloyd iterations) re-reads the file chunk by chunk. The fit
completes, no worker pauses or restarts for memory, and the centres equal those of the
same data held in memory. Two Lloyd iterations are enough to show that the iterations
re-read the file too: the fit makes about ten passes, about 3 s each here (13-20 s each
before the k-means|| round kernel ran its argmax across rows and the passes fused with the
reading of each part), and the test is the suite's longest.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dask_kmeans as dk

pytestmark = pytest.mark.slow

N_PARTS = 304
ROWS_PER_PART = 250_000
MEMORY_LIMIT = 768 * 2**20
D = 8
K = 6
MAX_ITER = 2


def _part(i):
    rng = np.random.default_rng(1000 + i)
    centers = np.random.default_rng(7).normal(scale=4.0, size=(K, D))
    return centers[rng.integers(0, K, ROWS_PER_PART)] + rng.normal(size=(ROWS_PER_PART, D))


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    names = [f"f{j}" for j in range(D)]

    def table(i):
        X = _part(i)
        return pa.table({n: X[:, j] for j, n in enumerate(names)})

    # The next row groups are made in a thread while one is written (NumPy's generators
    # and Arrow's writer release the GIL), a few at a time.
    with ThreadPoolExecutor(2) as pool, \
            pq.ParquetWriter(path, table(0).schema, compression="NONE") as writer:
        for start in range(0, N_PARTS, 4):
            for t in pool.map(table, range(start, min(start + 4, N_PARTS))):
                writer.write_table(t, row_group_size=ROWS_PER_PART)
    size = path.stat().st_size
    assert size >= 3 * 2 * MEMORY_LIMIT
    assert pq.ParquetFile(path).metadata.num_row_groups == N_PARTS
    return str(path), size


def _rss(dask_worker=None):
    import psutil

    return psutil.Process().memory_info().rss


def test_fit_larger_than_cluster_memory(big_dataset):
    from distributed import Client, LocalCluster

    url, size = big_dataset
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=MEMORY_LIMIT, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        workers_before = set(client.scheduler_info()["workers"])
        total_limit = sum(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
        assert size >= 3 * total_limit

        peaks: dict[str, int] = {}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                try:
                    for addr, rss in client.run(_rss).items():
                        peaks[addr] = max(peaks.get(addr, 0), rss)
                except Exception:
                    pass
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        try:
            src = dk.open_parquet(url, chunk_bytes="64MiB")  # 4 row groups a chunk
            assert src.features.chunks[0] == (4 * ROWS_PER_PART,) * (N_PARTS // 4)
            km = dk.KMeans(K, random_state=0, max_iter=MAX_ITER, tol=0).fit(src)
        finally:
            stop.set()
            watcher.join()
        elapsed = time.perf_counter() - t0

        assert km.n_iter_ == MAX_ITER
        assert set(client.scheduler_info()["workers"]) == workers_before  # none restarted
        logs = client.get_worker_logs()
        text = "\n".join(msg for lines in logs.values() for _, msg in lines)
        assert "Pausing worker" not in text and "Restarting worker" not in text
        assert max(peaks.values()) < MEMORY_LIMIT
        print(f"\nout-of-core fit: {size / 2**30:.2f} GiB of Parquet, {elapsed:.1f} s, "
              f"peak worker RSS {', '.join(f'{v / 2**20:.0f} MiB' for v in peaks.values())}")

    # The same rows held in memory, from the same seed: the same centres.
    X = np.empty((N_PARTS * ROWS_PER_PART, D))

    def fill(i):
        X[i * ROWS_PER_PART:(i + 1) * ROWS_PER_PART] = _part(i)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(fill, range(N_PARTS)))
    mem = dk.KMeans(K, random_state=0, max_iter=MAX_ITER, tol=0).fit(X)
    np.testing.assert_allclose(km.cluster_centers_, mem.cluster_centers_, rtol=1e-6, atol=1e-9)
