"""The CLI against a real multi-process cluster: a scheduler and two workers as OS processes.

`dask-kmeans run` (the job runs in the command's process, its tasks on the workers) and
`dask-kmeans submit` + `status` (the job itself runs as a task on a worker, and the command
exits at once) must give the same model as an in-process fit with the same seed, over plain
TCP and over mutual TLS. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import dask_kmeans as dk
from dask_kmeans.cluster import connect
from dask_kmeans.jobs import METADATA_KEY
from tests.conftest import blobs, stop_processes
from tests.test_cluster import free_port, make_tls_files, tls_config, wait_for_port

BIN = Path(sys.executable).parent
FEATURES = ["age", "income", "score"]
MARKER = "multinode-marker-secret-5d2e81c0"


class Cluster:
    """A scheduler and two single-threaded workers started with the `dask` command."""

    def __init__(self, directory: Path, scheme: str = "tcp", tls: dict | None = None):
        self.directory = directory
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        args, env = [], {}
        if tls is not None:
            args = ["--tls-ca-file", str(tls["ca_file"]), "--tls-cert", str(tls["cert"]),
                    "--tls-key", str(tls["key"])]
            env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
        port = free_port()
        self.address = f"{scheme}://127.0.0.1:{port}"
        scheduler = self._spawn("scheduler", "--protocol", scheme, "--host", "127.0.0.1",
                                "--port", str(port), "--no-dashboard",
                                "--dashboard-address", "127.0.0.1:0", *args, env=env)
        wait_for_port(port, scheduler, self.logs[0])
        for _ in range(2):
            self._spawn("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                        "--no-dashboard", "--dashboard-address", "127.0.0.1:0", *args, env=env)

    def _spawn(self, *args: str, env: dict) -> subprocess.Popen:
        log = self.directory / f"{args[0]}-{len(self.procs)}.log"
        with open(log, "w") as out:
            # The workers run in a directory of their own: relative paths must not reach them.
            proc = subprocess.Popen([str(BIN / "dask"), *args], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.directory,
                                    env={**os.environ, **env})
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def wait_for_workers(self, client) -> None:
        try:
            client.wait_for_workers(2, timeout=90)
        except TimeoutError:
            pytest.fail("two workers did not connect:\n" + self.log_text())

    def log_text(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in self.logs)

    def stop(self) -> None:
        stop_processes(self.procs, timeout=20)


@pytest.fixture
def tcp_cluster(tmp_path):
    (tmp_path / "cluster").mkdir()
    cluster = Cluster(tmp_path / "cluster")
    try:
        with connect(scheduler=cluster.address, timeout="30s") as client:
            cluster.wait_for_workers(client)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def tls_cluster(tmp_path):
    (tmp_path / "cluster").mkdir()
    files = make_tls_files(tmp_path / "client" / "certs")
    cluster = Cluster(tmp_path / "cluster", "tls", files)
    try:
        config = tmp_path / "client" / "tls.yaml"
        # Relative to the config file, as a user would keep certificates next to it.
        config.write_text(yaml.safe_dump(tls_config(cluster.address, "certs/ca.pem",
                                                    "certs/cert.pem", "certs/key.pem")))
        cluster.config = config
        with connect(config) as client:
            cluster.wait_for_workers(client)
        yield cluster
    finally:
        cluster.stop()


def write_job(client_dir: Path) -> pd.DataFrame:
    """Parquet data and a fit job in ``client_dir``, both addressed by relative paths."""
    X = blobs(n=1500, d=3, k=3, seed=3)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "customer_id", np.arange(len(df)))
    (client_dir / "data").mkdir(parents=True)
    for i, rows in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[rows].to_parquet(client_dir / "data" / f"part-{i}.parquet", index=False)
    (client_dir / "job.yaml").write_text(yaml.safe_dump({"job": {
        "kind": "fit",
        "input": {"url": "data", "key_columns": ["customer_id"],
                  "storage_options": {"secret_token": MARKER}},
        "params": {"n_clusters": 3, "random_state": 0},
        "output": {"model": "out/run-model", "labels": "out/run-labels"}}}))
    return df


def cli(client_dir: Path, *args: str, timeout: float = 300,
        env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / "dask-kmeans"), *args], cwd=client_dir,
                         capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert MARKER not in out.stdout + out.stderr
    return out


def poll_status(client_dir: Path, job_id: str, *where: str, timeout: float = 180) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cli(client_dir, "status", job_id, *where)
        record = json.loads(out.stdout)
        if record["state"] not in ("submitted", "running"):
            return out.returncode, record
        assert out.returncode == 0, out.stderr
        time.sleep(1)
    pytest.fail(f"job {job_id} still {record['state']} after {timeout} s")


def run_and_submit(client_dir: Path, cluster: Cluster, *where: str) -> str:
    df = write_job(client_dir)
    ran = cli(client_dir, "run", "job.yaml", *where, "--json")
    assert ran.returncode == 0, ran.stderr + cluster.log_text()
    result = json.loads(ran.stdout)
    assert result["model"] == "out/run-model" and result["n_rows"] == len(df)

    submitted = cli(client_dir, "submit", "job.yaml", *where,
                    "--set", "output.model=out/submit-model",
                    "--set", "output.labels=out/submit-labels")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("fit-") and "\n" not in job_id
    code, record = poll_status(client_dir, job_id, *where)
    assert (code, record["state"]) == (0, "finished"), record
    assert record["result"]["model"] == str(client_dir / "out" / "submit-model")
    assert record["worker"].startswith(cluster.address.split("://")[0] + "://127.0.0.1:")

    reference = dk.KMeans(3, random_state=0).fit(dk.open_parquet(
        str(client_dir / "data"), FEATURES, key_columns="customer_id"))
    for name in ("run", "submit"):
        model = dk.load(str(client_dir / "out" / f"{name}-model"))
        np.testing.assert_allclose(model.cluster_centers_, reference.cluster_centers_,
                                   rtol=1e-7)
        labels = dk.read_labels(str(client_dir / "out" / f"{name}-labels")).compute()
        np.testing.assert_array_equal(labels["customer_id"], df["customer_id"])
        np.testing.assert_array_equal(labels["cluster"], reference.predict(df[FEATURES]))
    assert record["result"]["inertia"] == pytest.approx(reference.inertia_, rel=1e-7)
    assert result["n_iter"] == record["result"]["n_iter"] == reference.n_iter_
    return job_id


def test_run_and_submit_on_separate_processes(tcp_cluster, tmp_path):
    client_dir = tmp_path / "client"
    where = ("--scheduler", tcp_cluster.address, "--timeout", "30s")
    first = run_and_submit(client_dir, tcp_cluster, *where)

    # The same outputs again, without overwrite: the job fails on the cluster, and says why.
    submitted = cli(client_dir, "submit", "job.yaml", *where)
    code, record = poll_status(client_dir, submitted.stdout.strip(), *where)
    assert (code, record["state"]) == (1, "failed")
    assert record["error"].startswith("FileExistsError: ")
    assert str(client_dir / "out" / "run-model") in record["error"]

    unknown = cli(client_dir, "status", "fit-000000000000", *where)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        f"Error: no job 'fit-000000000000' on the scheduler at {tcp_cluster.address}: check "
        "the id and the scheduler (a restarted scheduler forgets its jobs)"]

    # A bad setting is refused before anything reaches the scheduler.
    setting = "DASK_DASK_KMEANS__JOBS__KEEP_FINISHED"
    bad = cli(client_dir, "submit", "job.yaml", *where, env={setting: "0"})
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "Error: dask-kmeans.jobs.keep-finished: expected an int >= 1 or null, got 0")
    # Keeping one record, the job that ends next makes the scheduler forget the two before.
    last = cli(client_dir, "submit", "job.yaml", *where, env={setting: "1"}).stdout.strip()
    assert poll_status(client_dir, last, *where)[1]["state"] == "failed"
    gone = cli(client_dir, "status", first, *where)
    assert gone.returncode == 2
    assert gone.stderr.strip().startswith(f"Error: no job {first!r} on the scheduler")
    assert "it has forgotten the records of 2 ended jobs, which finished by 20" in gone.stderr
    assert gone.stderr.strip().endswith(
        ", keeping the 1 most recent (dask-kmeans.jobs.keep-finished where the job that last "
        "made it forget was submitted)")
    with connect(scheduler=tcp_cluster.address, timeout="30s") as client:
        assert list(client.get_metadata([METADATA_KEY])) == [last]
    assert MARKER not in tcp_cluster.log_text()


def test_run_and_submit_over_tls(tls_cluster, tmp_path):
    client_dir = tmp_path / "client"
    run_and_submit(client_dir, tls_cluster, "--cluster", "tls.yaml")
    assert MARKER not in tls_cluster.log_text()
    # Without the client certificate the scheduler cannot be reached.
    plain = cli(client_dir, "status", "fit-0", "--scheduler",
                tls_cluster.address.replace("tls://", "tcp://"), "--timeout", "2s")
    assert plain.returncode == 3 and len(plain.stderr.strip().splitlines()) == 1
