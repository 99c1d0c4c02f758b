"""Faults and bad input: worker loss mid-fit, secrets on every path, edge-case shapes.

The worker-loss tests run a real scheduler and two worker processes started with
``dask scheduler`` / ``dask worker --no-nanny`` (so that SIGKILL really removes a worker:
no nanny restarts it) and kill one of them while ``KMeans.fit`` iterates.
See docs/reliability.md for the table of every fault the suite tries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning

import dask_kmeans as dk
from dask_kmeans import KMeans
from tests.conftest import blobs, stop_processes

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")

# --------------------------------------------------------------------------- a killable cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class KillableCluster:
    """A scheduler and two ``--no-nanny`` workers as OS processes, on 127.0.0.1 only."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.client = None
        self.pids: dict[str, int] = {}

    def _spawn(self, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.tmp_path / f"{args[0]}-{len(self.procs)}.log"
        # Workers unpickle functions of this module by reference: put the repository first.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log, "w") as out:
            proc = subprocess.Popen([str(DASK), *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(self.tmp_path))
        self.procs.append((proc, log))
        return proc, log

    def start(self, n_workers: int = 2) -> None:
        from distributed import Client

        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        # Even without a dashboard each process serves HTTP (health, metrics): on 127.0.0.1 too.
        local_http = ("--no-dashboard", "--dashboard-address", "127.0.0.1:0")
        self._spawn("scheduler", "--host", "127.0.0.1", "--port", str(port), *local_http)
        for _ in range(n_workers):
            self._spawn("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                        "--nworkers", "1", "--no-nanny", *local_http)
        deadline = time.monotonic() + 90
        while True:
            for proc, log in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{log.name} exited early:\n{_tail(log)}")
            try:
                self.client = Client(self.address, timeout=5, set_as_default=False)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self.client.wait_for_workers(n_workers, timeout=90)
        self.pids = self.client.run(os.getpid)

    def kill(self, worker_address: str) -> None:
        """SIGKILL one worker process and wait for it to exit."""
        pid = self.pids[worker_address]
        os.kill(pid, signal.SIGKILL)
        for proc, _ in self.procs:
            if proc.pid == pid:
                proc.wait(timeout=30)

    def alive_workers(self) -> set[str]:
        return set(self.client.scheduler_info(n_workers=-1)["workers"])

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{_tail(log)}" for _, log in self.procs)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close(timeout=10)
        stop_processes([proc for proc, _ in self.procs])


@pytest.fixture
def killable_cluster(tmp_path):
    """A fresh scheduler + 2 single-thread workers, each a separate killable OS process."""
    cluster = KillableCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class _IterationWatch(logging.Handler):
    """Records the ``dask_kmeans`` iteration lines; sets ``reached`` at iteration ``at``."""

    def __init__(self, at: int):
        super().__init__(logging.INFO)
        self.at = at
        self.reached = threading.Event()
        self.lines: list[tuple[float, str]] = []
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        self.messages.append(msg)
        if msg.startswith("iteration "):
            self.lines.append((time.monotonic(), msg))
            if int(msg.split()[1].rstrip(":")) >= self.at:
                self.reached.set()


def _fit_killing_a_worker(cluster: KillableCluster, make_estimator, X, victim: str,
                          kill_at: int = 4):
    """Fit in a thread; SIGKILL ``victim`` once ``kill_at`` iterations are logged."""
    logger = logging.getLogger("dask_kmeans")
    watch = _IterationWatch(kill_at)
    level = logger.level
    logger.addHandler(watch)
    result: dict = {}

    def run():
        try:
            with cluster.client.as_current():
                result["km"] = make_estimator(verbose=True).fit(X)
        except BaseException as e:  # re-raised in the test thread
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        assert watch.reached.wait(120), "the fit never reached the iteration to kill at"
        assert thread.is_alive(), "the fit ended before the worker could be killed"
        killed_at = time.monotonic()
        cluster.kill(victim)
        thread.join(180)
        assert not thread.is_alive(), f"fit still running 180 s after the kill\n{cluster.logs()}"
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)
    if "error" in result:
        raise result["error"]
    after = [m for t, m in watch.lines if t > killed_at]
    return result["km"], after, watch.messages


def _seeded_block(block_id=None, *, rows: int, d: int, seed: int):
    """A deterministic chunk: the same rows whenever (and wherever) it is recomputed."""
    rng = np.random.default_rng([seed, block_id[0]])
    return rng.normal(size=(rows, d))


@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")
def test_worker_killed_mid_fit_on_persisted_data(killable_cluster):
    """Futures engine: lost persisted chunks are recomputed and the fit gives the same centres."""
    from distributed import futures_of, wait

    from dask_kmeans._passes import Passes

    cluster, client = killable_cluster, killable_cluster.client
    X_np = np.random.default_rng(0).normal(size=(300_000, 8))
    X = client.persist(da.from_array(X_np, chunks=(75_000, 8)))
    with client.as_current():
        wait(X)  # every chunk in worker memory before timing anything

    def make(verbose=False):
        return KMeans(8, random_state=0, tol=0, max_iter=40, verbose=verbose)

    with client.as_current():
        assert Passes(X).on_futures  # the persisted chunks go straight to Client.map
        reference = make().fit(X)
    assert reference.n_iter_ == 40

    holders = client.who_has(futures_of(X))
    victim = next(iter(next(iter(holders.values()))))
    km, after, messages = _fit_killing_a_worker(cluster, make, X, victim)

    assert len(after) >= reference.n_iter_ // 2, "the worker was not killed mid-fit"
    # The dead worker's actor failed the pass; the futures engine took over.
    assert any(m.startswith("passes go through the scheduler from now on") for m in messages)
    assert cluster.alive_workers() == set(cluster.pids) - {victim}
    np.testing.assert_allclose(km.cluster_centers_, reference.cluster_centers_, rtol=1e-7)
    np.testing.assert_allclose(km.inertia_, reference.inertia_, rtol=1e-7)
    assert km.n_iter_ == reference.n_iter_
    # the lost chunks came back from the graph: the data is intact, on the survivor
    np.testing.assert_array_equal(client.compute(X).result(), X_np)


def test_worker_killed_mid_fit_on_data_read_from_its_source(killable_cluster):
    """persist=False: every pass recomputes the chunks; tasks of the dead worker are re-run."""
    from functools import partial

    from dask_kmeans._passes import Passes

    cluster, client = killable_cluster, killable_cluster.client
    rows, n_blocks, d = 40_000, 6, 8
    X = da.map_blocks(partial(_seeded_block, rows=rows, d=d, seed=7),
                      chunks=((rows,) * n_blocks, (d,)), dtype=np.float64,
                      meta=np.empty((0, d)))

    def make(verbose=False):
        return KMeans(8, random_state=0, tol=0, max_iter=15, persist=False, verbose=verbose)

    with client.as_current():
        assert not Passes(X).on_futures  # dask graphs that read (here: generate) every chunk
        reference = make().fit(X)
    assert reference.n_iter_ == 15
    victim = sorted(cluster.pids)[0]
    km, after, _ = _fit_killing_a_worker(cluster, make, X, victim, kill_at=3)

    assert len(after) >= reference.n_iter_ // 2, "the worker was not killed mid-fit"
    assert cluster.alive_workers() == set(cluster.pids) - {victim}
    np.testing.assert_allclose(km.cluster_centers_, reference.cluster_centers_, rtol=1e-7)
    np.testing.assert_allclose(km.inertia_, reference.inertia_, rtol=1e-7)
    assert km.n_iter_ == reference.n_iter_


def test_a_submitted_job_whose_worker_dies_after_writing_labels_is_rerun_to_the_end(
        killable_cluster, tmp_path):
    """The job's worker is SIGKILLed once the labels are committed, while the model and the
    plot are still to come. The scheduler runs the job again on the other worker; that
    attempt used to fail with FileExistsError on the labels the dead one wrote, leaving the
    job failed and its labels behind. The job's record notes its outputs before it writes
    them, so the rerun replaces those and finishes."""
    from dask_kmeans.jobs import METADATA_KEY, job_status, submit_job

    cluster, client = killable_cluster, killable_cluster.client
    data = tmp_path / "data"
    data.mkdir()
    X = blobs(n=4000, d=3, k=3, seed=4)
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df.insert(0, "id", np.arange(len(df)))
    df.to_parquet(data / "part-0.parquet", index=False)
    out = {"model": str(tmp_path / "model"), "labels": str(tmp_path / "labels"),
           "plot": str(tmp_path / "clusters.png")}
    spec = {"job": {"kind": "fit",
                    "input": {"url": str(data), "key_columns": ["id"]},
                    "params": {"n_clusters": 3, "random_state": 0},
                    "output": out}}
    job_id = submit_job(spec, client)
    marker = tmp_path / "labels" / "_SUCCESS"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, f"no labels after 120 s\n{cluster.logs()}"
        time.sleep(0.005)
    record = client.get_metadata([METADATA_KEY, job_id])
    # The model and the plot (matplotlib's import, a pass over the data) take a second more:
    # the job has not ended (whether the plot exists yet does not matter to the rerun).
    assert record["state"] == "running", record
    assert record["claimed"] == {url: False for url in out.values()}
    victim = record["worker"]
    cluster.kill(victim)

    deadline = time.monotonic() + 180
    while (record := job_status(job_id, client))["state"] in ("submitted", "running") \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record["state"] == "finished", (record, cluster.logs())
    assert record["attempts"] == 2 and record["worker"] != victim
    model = dk.load(out["model"])
    labels = dk.read_labels(out["labels"]).compute()
    np.testing.assert_array_equal(np.sort(labels["id"].to_numpy()), np.arange(len(df)))
    assert model.n_clusters == 3 and Path(out["plot"]).stat().st_size > 0


# --------------------------------------------------------------------------- secrets

#: A credential that is wrong, so that it must appear nowhere either.
WRONG_SECRET = "wrong-marker-secret-5e9a41d7c3"


def _exception_text(exc: BaseException) -> str:
    """Everything a user could see of an exception: message, repr, formatted traceback."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


def _customers(store, name: str, n: int = 600, parts: int = 3, drop: tuple = ()) -> str:
    X = blobs(n=n, d=3, k=3, seed=2)
    df = pd.DataFrame(X, columns=["a", "b", "c"]).drop(columns=list(drop))
    df.insert(0, "id", np.arange(n))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        store.write_parquet(f"{name}/part-{i}.parquet", df.iloc[lo:hi])
    return store.url(name)


def _failures(store, km, url: str) -> list[BaseException]:
    """Deliberately failing reads and writes; returns the exceptions raised."""
    so = store.storage_options
    caught: list[BaseException] = []

    def expect(kinds, call):
        with pytest.raises(kinds) as info:
            call()
        caught.append(info.value)

    expect(ValueError, lambda: dk.open_parquet(url, ["a", "nope"], storage_options=so))
    expect(FileNotFoundError, lambda: dk.open_parquet(store.url("missing"), storage_options=so))
    expect(FileNotFoundError, lambda: dk.load(store.url("no-model"), storage_options=so))
    lacking = dk.open_parquet(_customers(store, "lacking", drop=("c",)), key_columns="id",
                              storage_options=so)
    expect(ValueError, lambda: km.predict(lacking))
    expect(FileExistsError, lambda: km.save(store.url("model"), storage_options=so))
    # A chunk task that fails when computed: its part changed after open_parquet.
    changing = dk.open_parquet(_customers(store, "changing"), storage_options=so)
    _customers(store, "changing", n=900)
    expect(ValueError, lambda: changing.features.compute())
    if store.kind == "s3":
        wrong = dict(so, secret=WRONG_SECRET)
        expect(PermissionError, lambda: dk.open_parquet(url, storage_options=wrong))
        expect(PermissionError, lambda: dk.load(store.url("model"), storage_options=wrong))
        expect(PermissionError, lambda: km.save(store.url("model2"), storage_options=wrong))
    return caught


def _assert_nowhere(secrets, texts, store):
    stored = store.all_bytes()
    for secret in secrets:
        for i, text in enumerate(texts):
            assert secret not in text, f"secret found in text #{i}: {text[:2000]}"
        assert secret.encode() not in stored, "secret written to the store"


def test_secret_never_reaches_logs_output_errors_or_files(store, caplog, capsys, tmp_path):
    caplog.set_level(logging.DEBUG)  # the root logger: s3fs, botocore, fsspec, dask...
    caplog.set_level(logging.DEBUG, logger="dask_kmeans")
    so = store.storage_options
    url = _customers(store, "data")
    src = dk.open_parquet(url, key_columns="id", storage_options=so)
    checkpoint = tmp_path / "checkpoint"  # records a fingerprint of the source
    km = KMeans(3, random_state=0, max_iter=5, verbose=True, checkpoint=str(checkpoint)).fit(src)
    labels, distances = km.predict(src, return_distance=True)
    out = dk.write_labels(src, labels, distances, store.url("labels"), storage_options=so)
    got = dk.read_labels(out, storage_options=so)
    assert len(got.compute()) == src.n_rows
    saved = km.save(store.url("model"), storage_options=so)
    loaded = dk.load(saved, storage_options=so)
    np.testing.assert_array_equal(loaded.cluster_centers_, km.cluster_centers_)
    errors = _failures(store, km, url)

    captured = capsys.readouterr()
    texts = [repr(src), str(src), str(src.fingerprint()), repr(km), repr(km.get_params()),
             out, repr(got), saved, repr(loaded), repr(vars(loaded)),
             captured.out, captured.err, caplog.text,
             *(r.getMessage() + (r.exc_text or "") for r in caplog.records),
             *(_exception_text(e) for e in errors)]
    assert any("iteration 1" in r.getMessage() for r in caplog.records)
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    assert files
    texts += [p.read_bytes().decode("latin-1") for p in files]
    _assert_nowhere([store.secret, WRONG_SECRET], texts, store)


def test_secret_stays_out_of_worker_and_scheduler_logs(s3_bucket, client):
    """On a cluster the credentials travel inside tasks; no worker or scheduler log shows them."""
    so = s3_bucket.storage_options
    url = _customers(s3_bucket, "data")
    src = dk.open_parquet(url, key_columns="id", storage_options=so)
    km = KMeans(3, random_state=0, max_iter=5).fit(src)
    labels, distances = km.predict(src, return_distance=True)
    dk.write_labels(src, labels, distances, s3_bucket.url("labels"), storage_options=so)
    km.save(s3_bucket.url("model"), storage_options=so)
    errors = _failures(s3_bucket, km, url)  # includes a task failing on a worker
    worker_logs = client.get_worker_logs()
    texts = [msg for lines in worker_logs.values() for _, msg in lines]
    texts += [msg for _, msg in client.get_scheduler_logs()]
    texts += [_exception_text(e) for e in errors]
    # the worker logged the failed task ("Compute Failed", with the exception)
    assert any("changed after open_parquet" in msg
               for lines in worker_logs.values() for _, msg in lines)
    _assert_nowhere([s3_bucket.secret, WRONG_SECRET], texts, s3_bucket)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small():
    return blobs(n=1000, d=3, k=4, seed=1)


def _masked(X, keep):
    """``X[keep]`` as a dask array whose row chunk sizes are unknown (NaN) until computed."""
    Xd = da.from_array(X, chunks=(100, X.shape[1]))
    mask = da.from_array(keep, chunks=100)
    out = Xd[mask]
    assert np.isnan(out.chunks[0][0])
    return out


@pytest.mark.parametrize("kind", ["dask array", "unknown chunk sizes", "dask DataFrame"])
def test_more_clusters_than_rows_of_dask_input(small, kind):
    X = small[:50]
    if kind == "dask array":
        Xin = da.from_array(X, chunks=(20, 3))
    elif kind == "unknown chunk sizes":
        Xin = _masked(small, np.arange(len(small)) < 50)
    else:
        import dask.dataframe as dd

        Xin = dd.from_pandas(pd.DataFrame(X, columns=["a", "b", "c"]), npartitions=3)
    with pytest.raises(ValueError, match="n_samples=50 should be >= n_clusters=51"):
        KMeans(51).fit(Xin)
    with pytest.raises(ValueError, match="n_samples=50 should be >= n_clusters=51"):
        dk.kmeans_parallel_init(Xin, 51)


@pytest.mark.parametrize("kind", ["known shape", "all rows filtered out", "dask DataFrame"])
def test_empty_dask_input_is_refused(small, kind):
    if kind == "known shape":
        Xin = da.zeros((0, 3), chunks=(5, 3))
    elif kind == "all rows filtered out":
        Xin = _masked(small, np.zeros(len(small), dtype=bool))
    else:
        import dask.dataframe as dd

        Xin = dd.from_pandas(pd.DataFrame(np.zeros((0, 3)), columns=["a", "b", "c"]),
                             npartitions=1)
    match = r"Found array with 0 sample\(s\) \(shape=\(0, 3\)\)"
    with pytest.raises(ValueError, match=match):
        KMeans(2).fit(Xin)
    with pytest.raises(ValueError, match=match):
        dk.kmeans_parallel_init(Xin, 2)
    fitted = KMeans(2, random_state=0).fit(small)
    named = contextlib.nullcontext() if kind != "dask DataFrame" else pytest.warns(
        UserWarning, match="X has feature names, but KMeans was fitted without")  # as sklearn
    with pytest.raises(ValueError, match=match), named:
        fitted.predict(Xin)


@pytest.mark.parametrize("kind", ["numpy", "dask array", "dask DataFrame"])
def test_input_without_features_is_refused(kind):
    """Dask input of shape (10, 0) fitted, with RuntimeWarnings, to (2, 0) centres, where
    NumPy input is refused: it is refused in the same words."""
    import warnings

    import dask.dataframe as dd

    Xin = {"numpy": lambda: np.zeros((10, 0)),
           "dask array": lambda: da.zeros((10, 0), chunks=5),
           "dask DataFrame": lambda: dd.from_pandas(pd.DataFrame(index=range(10)),
                                                    npartitions=2)}[kind]()
    match = r"Found array with 0 feature\(s\) \(shape=\(10, 0\)\) while a minimum of 1 is " \
            r"required by KMeans"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for call in (lambda: KMeans(2).fit(Xin), lambda: dk.kmeans_parallel_init(Xin, 2),
                     lambda: dk.sweep(Xin, [2])):
            with pytest.raises(ValueError, match=match):
                call()


ZERO_ROW_CHUNKS = (0, 300, 0, 0, 500, 200, 0)


@pytest.mark.parametrize("persist", [False, True])
@pytest.mark.parametrize("init", ["array", "k-means||"])
def test_zero_row_chunks_fit_like_numpy(small, persist, init):
    C0 = small[[0, 1, 2, 3]]
    Xd = da.from_array(small, chunks=(ZERO_ROW_CHUNKS, 3))
    kw = dict(init=C0 if init == "array" else init, random_state=0, tol=0, max_iter=20)
    ours = KMeans(4, persist=persist, **kw).fit(Xd)
    mem = KMeans(4, **kw).fit(small)
    np.testing.assert_allclose(ours.cluster_centers_, mem.cluster_centers_, rtol=1e-7)
    np.testing.assert_allclose(ours.inertia_, mem.inertia_, rtol=1e-7)
    np.testing.assert_array_equal(ours.labels_.compute(), mem.labels_)
    assert ours.n_iter_ == mem.n_iter_


def test_zero_row_chunks_on_a_cluster_futures_engine(client, small):
    from dask_kmeans._passes import Passes

    Xd = client.persist(da.from_array(small, chunks=(ZERO_ROW_CHUNKS, 3)))
    assert Passes(Xd).on_futures
    mem = KMeans(4, random_state=0, tol=0, max_iter=20).fit(small)
    for persist in ("auto", False):
        ours = KMeans(4, random_state=0, tol=0, max_iter=20, persist=persist).fit(Xd)
        np.testing.assert_allclose(ours.cluster_centers_, mem.cluster_centers_, rtol=1e-7)
        np.testing.assert_array_equal(ours.labels_.compute(), mem.labels_)


def test_unknown_chunk_sizes_with_empty_chunks_fit_like_numpy(small):
    keep = (small[:, 0] > np.median(small[:, 0])) & (np.arange(len(small)) % 300 < 200)
    Xin = _masked(small, keep)
    ours = KMeans(4, random_state=0, tol=0, max_iter=20).fit(Xin)
    mem = KMeans(4, random_state=0, tol=0, max_iter=20).fit(small[keep])
    np.testing.assert_allclose(ours.cluster_centers_, mem.cluster_centers_, rtol=1e-7)
    np.testing.assert_array_equal(ours.labels_.compute(), mem.labels_)


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_fewer_distinct_points_than_clusters_with_dask_input(init):
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 10, axis=0)
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(2\) found smaller than "
                                                r"n_clusters \(3\)"):
        km = KMeans(3, init=init, n_init=1, random_state=0).fit(da.from_array(X, chunks=7))
    assert np.all(np.isfinite(km.cluster_centers_)) and np.isfinite(km.inertia_)
    assert km.inertia_ == 0.0
    assert {tuple(c) for c in km.cluster_centers_} == {(0.0, 0.0), (5.0, 5.0)}
    np.testing.assert_array_equal(km.predict(X), km.labels_.compute())


@pytest.fixture(scope="module")
def named_model(small):
    df = pd.DataFrame(small, columns=["a", "b", "c"])
    return KMeans(4, random_state=0).fit(df), df


@pytest.mark.parametrize(("change", "match"), [
    (lambda df: df[["c", "a", "b"]], "Feature names must be in the same order as they were in fit"),
    (lambda df: df[["a", "b"]], r"Feature names seen at fit time, yet now missing:\n- c"),
    (lambda df: df.assign(d=1.0), r"Feature names unseen at fit time:\n- d"),
    (lambda df: df.rename(columns={"c": "z"}), r"unseen at fit time:\n- z\n.*missing:\n- c"),
    (lambda df: df.assign(c="x"), r"non-numeric column\(s\): 'c'"),
], ids=["reordered", "missing", "extra", "renamed", "non-numeric"])
@pytest.mark.parametrize("method", ["predict", "transform", "score"])
def test_pandas_columns_differing_from_fit_are_refused(named_model, change, match, method):
    km, df = named_model
    with pytest.raises(ValueError, match=match):
        getattr(km, method)(change(df))


def test_pandas_object_columns_of_numbers_are_converted_as_scikit_learn_does(small):
    """A pandas column of numbers of dtype object (what mixing types gives) was refused as
    non-numeric, where scikit-learn converts it; one with a string in it is still refused,
    naming the column and the value."""
    df = pd.DataFrame(small, columns=["a", "b", "c"])
    objects = df.astype({"b": object})
    km = KMeans(4, random_state=0).fit(objects)
    reference = KMeans(4, random_state=0).fit(df)
    np.testing.assert_array_equal(km.cluster_centers_, reference.cluster_centers_)
    np.testing.assert_array_equal(km.predict(objects), reference.labels_)
    words = objects.assign(b=objects["b"].where(objects.index != 3, "three"))
    for call in (lambda: KMeans(4).fit(words), lambda: km.predict(words)):
        with pytest.raises(ValueError, match=r"column\(s\) holding values that are not "
                                             r"numbers: 'b' \(.*'three'\)"):
            call()
    # Other values that are no numbers are named too (pd.NA, complex: a bare TypeError)
    for odd in (pd.NA, 1 + 2j, [1.0]):
        bad = objects.assign(c=pd.Series([1.0] * len(objects), dtype=object))
        bad.loc[5, "c"] = odd
        with pytest.raises(ValueError, match=r"not numbers: 'c' \("):
            KMeans(4).fit(bad)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda df: df[["c", "a", "b"]], "['c', 'a', 'b']"),
    (lambda df: df.rename(columns={"c": "z"}), "['a', 'b', 'z']"),
], ids=["reordered", "renamed"])
def test_dask_dataframe_columns_differing_from_fit_are_refused(named_model, change, expected):
    import dask.dataframe as dd

    km, df = named_model
    with pytest.raises(ValueError, match="feature names should match") as info:
        km.predict(dd.from_pandas(change(df), npartitions=2))
    assert expected in str(info.value)


@pytest.mark.parametrize(("change", "column"), [
    (lambda df: df[["a", "b"]], "'c'"),
    (lambda df: df.assign(d=1.0), "'d'"),
], ids=["missing", "extra"])
def test_dask_dataframe_missing_or_extra_column_is_named(named_model, change, column):
    import dask.dataframe as dd

    km, df = named_model
    with pytest.raises(ValueError) as info:
        km.predict(dd.from_pandas(change(df), npartitions=2))
    assert column in str(info.value)


def test_worker_room_is_the_limit_before_spilling_less_what_the_process_holds():
    from dask_kmeans._runtime import WORKER_BASELINE_BYTES, _worker_room

    gib = 2**30
    worker = {"memory_limit": 4 * gib, "metrics": {"memory": 1 * gib}}
    assert _worker_room(worker, 0.7) == pytest.approx(0.7 * 4 * gib - gib)
    # A fresh worker reports less than a fit's libraries will take.
    fresh = {"memory_limit": 4 * gib, "metrics": {"memory": 60 * 2**20}}
    assert _worker_room(fresh, 0.7) == pytest.approx(0.7 * 4 * gib - WORKER_BASELINE_BYTES)
    # A worker already past the point where it spills has no room.
    assert _worker_room({"memory_limit": gib, "metrics": {"memory": gib}}, 0.7) == 0
    # Spilling off: the whole limit.
    assert _worker_room(worker, False) == pytest.approx(3 * gib)


def test_memory_budget_takes_each_workers_own_spill_fraction(client):
    """The spill fraction is the workers' setting, not the client's: here the workers
    spill at 70% while this process's configuration says 20%."""
    import dask

    from dask_kmeans._runtime import PERSIST_FRACTION, _worker_room, memory_budget

    spills = client.run(lambda dask_worker: dask_worker.memory_manager.memory_spill_fraction)
    assert set(spills.values()) == {0.7}
    with dask.config.set({"distributed.worker.memory.spill": 0.2}):
        budget = memory_budget(client)
    info = client.scheduler_info(n_workers=-1)["workers"]
    # The workers' memory moves between the two looks at it: a few percent at most.
    expected = PERSIST_FRACTION * len(info) * min(_worker_room(w, 0.7) / w["nthreads"]
                                                  for w in info.values())
    assert budget == pytest.approx(expected, rel=0.05)


class _FakeClient:
    """What memory_budget asks a client: the workers, and what runs on them."""

    def __init__(self, workers, free):
        self.workers, self.free = workers, free

    def scheduler_info(self, n_workers=-1):
        return {"workers": self.workers}

    def run(self, function, workers=None, on_error="raise"):
        if function.__name__ == "_spill_fraction":
            return {addr: 0.7 for addr in self.workers}
        return {addr: self.free for addr in (workers or self.workers)}


def test_memory_budget_follows_the_tightest_worker_thread_and_unlimited_hosts():
    """Chunks are spread about evenly over threads: the sum of the rooms persisted 800 MiB on
    a 3 GiB and a 450 MiB worker (the small one paused). A worker without a memory limit
    made the budget this process's free memory, and a cluster without workers yet too."""
    from dask_kmeans._runtime import PERSIST_FRACTION, _worker_room, memory_budget

    mib = 2**20

    def worker(limit, nthreads=1):
        return {"memory_limit": limit, "nthreads": nthreads, "metrics": {"memory": 100 * mib}}

    big, small = worker(3 * 1024 * mib), worker(450 * mib)
    budget = memory_budget(_FakeClient({"a": big, "b": small}, 0))
    assert budget == pytest.approx(PERSIST_FRACTION * 2 * _worker_room(small, 0.7))
    assert budget < 800 * mib
    two_threads = worker(3 * 1024 * mib, nthreads=2)  # half its room per thread
    assert memory_budget(_FakeClient({"a": two_threads, "b": big}, 0)) == pytest.approx(
        PERSIST_FRACTION * 3 * _worker_room(big, 0.7) / 2)
    unlimited = worker(0)
    assert memory_budget(_FakeClient({"a": unlimited, "b": small}, 8 * 1024 * mib)) == \
        pytest.approx(PERSIST_FRACTION * 2 * _worker_room(small, 0.7))
    assert memory_budget(_FakeClient({"a": unlimited}, 1024 * mib)) == \
        pytest.approx(PERSIST_FRACTION * 1024 * mib)
    assert memory_budget(_FakeClient({}, 0)) == 0


def test_auto_persist_leaves_small_workers_room():
    """640 MB fits in half of two 768 MiB limits, but not next to what the worker processes
    hold: persisting it paused both workers and restarted one. It is read from its source
    instead; data that fits what is left is persisted."""
    from distributed import Client, LocalCluster

    from dask_kmeans._runtime import place_data

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="768MiB", processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        big = da.zeros((10_000_000, 8), chunks=(250_000, 8))
        assert big.nbytes <= 0.5 * 2 * 768 * 2**20  # the old rule would have persisted it
        X, _, in_memory = place_data(big, None, "auto", client)
        assert not in_memory and X is big
        small = da.zeros((1_000_000, 8), chunks=(250_000, 8))  # 64 MB
        X, _, in_memory = place_data(small, None, "auto", client)
        assert in_memory
        client.cancel(X)


def test_row_state_and_bounds_are_kept_when_they_fit_a_quarter_of_the_budget(monkeypatch):
    """k-means|| keeps its per-row state for data re-read from storage, and the Lloyd
    passes keep Hamerly's bounds, only within a quarter of the memory budget each (the
    bounds counted twice: old and new are alive during a pass); data held in memory
    always keeps the k-means|| state."""
    from dask_kmeans import _passes
    from dask_kmeans import _runtime as R

    budget = 4.0 * R.ROW_STATE_BYTES * 1000
    monkeypatch.setattr(R, "memory_budget", lambda client=None: budget)
    assert R.keep_row_state(1000, in_memory=False)
    assert not R.keep_row_state(1001, in_memory=False)
    assert R.keep_row_state(10**9, in_memory=True)

    n = 1000
    monkeypatch.setattr(_passes, "memory_budget",
                        lambda client=None: 4.0 * 2 * n * _passes.BOUND_BYTES * 3)
    passes = _passes.Passes(da.from_array(np.zeros((n, 2)), chunks=500), in_memory=True)
    assert passes._bounds_fit(3) and not passes._bounds_fit(4)


def test_blas_is_one_thread_in_workers_for_predict_and_restored_after_the_cluster():
    """predict, transform and score never set one BLAS thread per worker thread on workers
    that no fit had prepared (2 x 2 threads on 2 cores with `dask worker --no-nanny`), and
    the limit stayed in this process after a cluster of threads (processes=False) closed."""
    import dask.array as da
    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_info, threadpool_limits

    import dask_kmeans as dk

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    def prepared(dask_worker):
        return "dask-kmeans-single-blas-thread" in dask_worker.plugins

    km = dk.KMeans(2, random_state=0).fit(np.random.default_rng(0).normal(size=(300, 3)))
    X = da.from_array(np.random.default_rng(1).normal(size=(300, 3)), chunks=100)
    from dask_kmeans._runtime import SingleBlasThread

    with threadpool_limits(limits=2, user_api="blas"):
        first, second = SingleBlasThread(), SingleBlasThread()  # two workers, one process
        first.setup(None)
        second.setup(None)
        assert blas_threads() == {1}
        first.teardown(None)
        assert blas_threads() == {1}, "a worker of the process is still open"
        second.teardown(None)
        assert blas_threads() == {2}, "the limit outlived the workers"
        for method in ("predict", "transform", "score"):
            with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                              dashboard_address=None) as c, Client(c) as client:
                assert not any(client.run(prepared).values())
                getattr(km, method)(X)
                assert all(client.run(prepared).values()), method


def test_a_fits_actors_are_released_when_it_returns_or_raises(client):
    """Their handles sit in reference cycles: a fit's actors (and the Hamerly bounds they
    hold) lived until the garbage collector ran, piling up fit after fit (1, 2, 3 a worker),
    and retire_workers refused the workers meanwhile."""
    import gc

    import dask.array as da

    import dask_kmeans as dk

    def actors(dask_worker):
        return len(dask_worker.state.actors)

    def no_actors_soon():  # the release reaches the workers a moment after the cancel
        deadline = time.monotonic() + 10
        while set(client.run(actors).values()) != {0}:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    X = da.from_array(np.random.default_rng(0).normal(size=(20_000, 4)), chunks=(5000, -1))
    gc.disable()
    try:
        for k in (3, 4):
            dk.KMeans(k, random_state=0, persist=True).fit(X)
            assert no_actors_soon(), k
        dk.sweep(X, [2, 3], random_state=0, persist=True)
        assert no_actors_soon()
        dk.kmeans_parallel_init(client.persist(X), 3, random_state=0)
        assert no_actors_soon()
    finally:
        gc.enable()


def test_closed_passes_hold_no_data_even_from_a_copied_context():
    """Event-loop handles made during a submitted job keep a copy of its context, whose list
    of open passes held them, and their data on the workers, after the job (1-3 chunks a
    job, seen on a worker's own client)."""
    import contextvars

    import dask.array as da

    from dask_kmeans import _passes

    X = da.from_array(np.ones((10, 2)), chunks=5)
    with _passes.closing_passes():
        passes = _passes.Passes(X)
        copied = contextvars.copy_context()
    assert copied[_passes._open_passes] == []
    assert passes.X is None and passes._xf == [] and passes._local is None
