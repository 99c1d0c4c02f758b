from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import dask.config
import numpy as np
import pytest

# A scheduler named in the environment or a user's Dask config (DASK_SCHEDULER_ADDRESS) would
# take the place of the clusters the tests start: none, here and in the commands they run.
os.environ["DASK_SCHEDULER_ADDRESS"] = ""
dask.config.set({"scheduler-address": None})


def stop_processes(procs, timeout: float = 15) -> None:
    """Terminate ``procs`` last-started first, killing any that outlive ``timeout`` seconds.

    Workers are started after their scheduler, so they stop first: a worker whose
    scheduler is gone keeps trying to reach it instead of exiting.
    """
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def png_size(path) -> tuple[int, int]:
    """Width and height of the PNG file at ``path``, asserting it is one of a sensible size."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 300 <= width <= 3000 and 300 <= height <= 3000, (width, height)
    return width, height


def blobs(n=3000, d=4, k=5, *, seed=0, spread=6.0, dtype=np.float64):
    """A Gaussian mixture with well-separated centres and unit noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(0, k, size=n)
    X = centers[labels] + rng.normal(size=(n, d))
    return X.astype(dtype)


@pytest.fixture(scope="session")
def local_cluster_client():
    """A real 2-process LocalCluster with one thread per worker."""
    from distributed import Client, LocalCluster

    # No dashboard; the scheduler's HTTP routes on a free loopback port, not 8787, which a
    # cluster that a test or a docs example starts would then find taken.
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def client(local_cluster_client):
    """The session's LocalCluster client, set as the default for this test only."""
    with local_cluster_client.as_current():
        yield local_cluster_client


# --------------------------------------------------------------------------- storage for io tests

_S3_REGION = "eu-west-1"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_auth(endpoint_url: str, count: str) -> None:
    """Set how many more requests moto serves without checking credentials ("0": none)."""
    import urllib.request

    req = urllib.request.Request(f"{endpoint_url}/moto-api/reset-auth", data=count.encode(),
                                 method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as response:
        response.read()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 that checks credentials.

    An IAM user with full access is created before authentication is switched
    on, so requests signed with any other key or secret are refused (403).
    Credentials travel only in ``storage_options``, never in the environment.
    Yields a dict: ``endpoint_url``, ``storage_options``, ``secret``.
    """
    import contextlib
    import json

    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")

    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint_url = f"http://127.0.0.1:{port}"
    try:
        # Before authentication is on, moto accepts any credentials: these set up the user.
        iam = boto3.client("iam", endpoint_url=endpoint_url, region_name=_S3_REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="dask-kmeans-tests")
        iam.put_user_policy(UserName="dask-kmeans-tests", PolicyName="all",
                            PolicyDocument=json.dumps({
                                "Version": "2012-10-17",
                                "Statement": [{"Effect": "Allow", "Action": "*",
                                               "Resource": "*"}]}))
        key = iam.create_access_key(UserName="dask-kmeans-tests")["AccessKey"]
        _moto_auth(endpoint_url, "0")
        storage_options = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"],
                           "endpoint_url": endpoint_url,
                           "client_kwargs": {"region_name": _S3_REGION}}
        yield {"endpoint_url": endpoint_url, "storage_options": storage_options,
               "secret": key["SecretAccessKey"]}
    finally:
        with contextlib.suppress(Exception):
            _moto_auth(endpoint_url, "inf")
        server.stop()


class Store:
    """Where a test puts its files: a local directory (bare paths or file:// URLs) or a bucket."""

    def __init__(self, kind, root, fs, storage_options, secret):
        self.kind = kind
        self.root = root
        self.fs = fs
        self.storage_options = storage_options
        self.secret = secret

    def url(self, *names) -> str:
        return "/".join([self.root, *names])

    def path(self, *names) -> str:
        """The path of ``names`` for ``self.fs`` (no protocol)."""
        return self.fs._strip_protocol(self.url(*names))

    def write_parquet(self, name, data, **kwargs) -> str:
        """Write a pandas DataFrame or pyarrow Table to ``name``; return its URL."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(
            data, preserve_index=False)
        path = self.path(name)
        if "/" in path:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f:
            pq.write_table(table, f, **kwargs)
        self.fs.invalidate_cache()
        return self.url(name)

    def put_bytes(self, name, data: bytes) -> str:
        path = self.path(name)
        if "/" in path:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)
        self.fs.invalidate_cache()
        return self.url(name)

    def get_bytes(self, name) -> bytes:
        self.fs.invalidate_cache()
        return self.fs.cat_file(self.path(name))

    def listdir(self, *names) -> list[str]:
        """Base names directly under ``names`` (empty when it does not exist)."""
        self.fs.invalidate_cache()
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1]
                          for p in self.fs.ls(self.path(*names), detail=False))
        except FileNotFoundError:
            return []

    def all_bytes(self) -> bytes:
        """Every byte stored under the root, for checking that no secret was written."""
        self.fs.invalidate_cache()
        return b"".join(self.fs.cat_file(p) for p in self.fs.find(self.path()))


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the moto server, with s3fs caches cleared around the test."""
    import uuid

    s3fs = pytest.importorskip("s3fs")
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    fs.mkdir(bucket)
    fs.invalidate_cache()
    yield Store("s3", f"s3://{bucket}", fs, dict(s3_server["storage_options"]),
                s3_server["secret"])
    fs.invalidate_cache()
    s3fs.S3FileSystem.clear_instance_cache()


LOCAL_SECRET = "local-marker-secret-6f1d0c2b"


def _local_store(kind, tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    root = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    # LocalFileSystem ignores unknown options: a marker secret rides along to prove it never
    # reaches a message, repr or file.
    options = {"secret_token": LOCAL_SECRET}
    if kind == "file":
        root = "file://" + root
    return Store(kind, root, LocalFileSystem(), options, LOCAL_SECRET)


@pytest.fixture(params=["local", "file", "s3"])
def store(request, tmp_path):
    """Each storage kind in turn: bare local paths, file:// URLs, and S3 on moto."""
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket")
    return _local_store(request.param, tmp_path)


@pytest.fixture
def local_store(tmp_path):
    """A local directory addressed by bare paths."""
    return _local_store("local", tmp_path)
