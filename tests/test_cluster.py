"""Cluster configs, their schema, and connecting to real local schedulers.

Every scheduler and worker here listens on 127.0.0.1 only. SSH, Kubernetes and SLURM clusters
are never built: only the schema of their configs and the errors for missing packages are
tested.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dask
import psutil
import pytest
import yaml

from dask_kmeans import cluster as cluster_module
from dask_kmeans._schema import load_yaml
from dask_kmeans.cluster import (
    KINDS,
    ClusterConfigError,
    ClusterError,
    connect,
    load_cluster_config,
    validate_cluster_config,
)
from tests.conftest import stop_processes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "cluster-config").glob("*.yaml"))
DOC = ROOT / "docs" / "clusters.md"
SCHEMA = yaml.safe_load((ROOT / "dask_kmeans" / "cluster_schema.yaml").read_text())
KIND_KEYS = {kind: SCHEMA["keys"]["cluster"]["keys"][kind]["keys"] for kind in KINDS}
DASK = Path(sys.executable).with_name("dask")


# --- helpers and fixtures -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout} s:\n{log.read_text()}")


@pytest.fixture
def spawn(tmp_path):
    """Start `dask ...` subprocesses; terminate them all at teardown."""
    procs = []

    def start(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{args[0]}-{len(procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(DASK), *args], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})
        procs.append(proc)
        return proc, log

    yield start
    stop_processes(procs)


def start_scheduler_and_worker(spawn, scheme: str = "tcp", tls: list[str] = ()) -> str:
    port = free_port()
    env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"} if tls else None
    sched, log = spawn("scheduler", "--protocol", scheme, "--host", "127.0.0.1",
                       "--port", str(port), "--no-dashboard", *tls, env=env)
    wait_for_port(port, sched, log)
    address = f"{scheme}://127.0.0.1:{port}"
    spawn("worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
          "--no-dashboard", *tls, env=env)
    return address


def _tls_files_cryptography(directory: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject, issuer, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - day).not_valid_after(now + day)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (builder(name("dask-kmeans test CA"), name("dask-kmeans test CA"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (builder(name("127.0.0.1"), ca.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca_file": directory / "ca.pem", "cert": directory / "cert.pem",
             "key": directory / "key.pem"}
    files["ca_file"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def _tls_files_openssl(directory: Path) -> dict[str, Path]:
    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=dask-kmeans test CA")
    run("req", *ec, "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=127.0.0.1")
    (directory / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "extendedKeyUsage=serverAuth,clientAuth\nauthorityKeyIdentifier=keyid\n")
    run("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
        "-CAcreateserial", "-out", "cert.pem", "-days", "1", "-extfile", "ext.cnf")
    return {"ca_file": directory / "ca.pem", "cert": directory / "cert.pem",
            "key": directory / "key.pem"}


HAVE_CRYPTOGRAPHY = importlib.util.find_spec("cryptography") is not None
HAVE_OPENSSL = shutil.which("openssl") is not None


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA and one certificate for 127.0.0.1 signed by it, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    if HAVE_CRYPTOGRAPHY:
        return _tls_files_cryptography(directory)
    if HAVE_OPENSSL:
        return _tls_files_openssl(directory)
    pytest.skip("neither the cryptography package nor the openssl command is available")


def tls_config(address: str, ca_file, cert, key, timeout="30s") -> dict:
    return {"cluster": {"kind": "tls", "tls": {
        "address": address, "ca_file": str(ca_file), "client_cert": str(cert),
        "client_key": str(key), "timeout": timeout}}}


def no_traceback_noise(exc: BaseException) -> bool:
    """Whether ``exc`` prints without a chained "During handling ..." traceback."""
    return exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def section_keys(path: Path) -> tuple[str, dict]:
    raw = load_yaml(path.read_text())
    kind = raw["cluster"]["kind"]
    return kind, raw["cluster"][kind]


# --- the example configs and the docs ----------------------------------------------------------

def test_one_example_config_per_kind():
    assert sorted(p.stem for p in CONFIGS) == sorted(KINDS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates(path):
    config = load_cluster_config(path)
    kind = config["cluster"]["kind"]
    assert set(config["cluster"]) == {"kind", kind}
    assert set(config["cluster"][kind]) == set(KIND_KEYS[kind])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_shows_and_explains_every_option(path):
    kind, section = section_keys(path)
    assert path.stem == kind
    assert set(section) == set(KIND_KEYS[kind]), "set every option, null for a default"
    lines = path.read_text().splitlines()
    for key in [*KIND_KEYS[kind], "kind"]:
        (i,) = [i for i, line in enumerate(lines) if re.match(rf"\s*{key}:", line)]
        assert "#" in lines[i] or lines[i - 1].lstrip().startswith("#"), (
            f"{path.name}: '{key}' has no comment")


def test_example_hosts_are_placeholders():
    for path in CONFIGS:
        for host in re.findall(r"(?:://|^\s*-\s*)([A-Za-z][\w.-]*\.[A-Za-z]+)\b",
                               path.read_text(), re.MULTILINE):
            assert host.endswith(".example.internal"), f"{path.name}: {host}"


def test_schema_documents_every_option():
    def walk(node, path):
        if path.count(".") >= 2:
            assert node.get("doc"), f"{path} has no doc in cluster_schema.yaml"
        for key, sub in node.get("keys", {}).items():
            walk(sub, f"{path}.{key}")

    walk(SCHEMA["keys"]["cluster"], "cluster")


def doc_yaml_blocks() -> list[str]:
    text = DOC.read_text()
    return re.findall(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_docs_explain_every_kind_and_option():
    text = DOC.read_text()
    for kind, keys in KIND_KEYS.items():
        assert f"`{kind}`" in text, kind
        for key in keys:
            assert f"`{key}`" in text, f"docs/clusters.md does not mention `{key}` ({kind})"


def test_docs_yaml_examples_validate():
    blocks = doc_yaml_blocks()
    kinds = [validate_cluster_config(load_yaml(b))["cluster"]["kind"] for b in blocks]
    assert set(kinds) == set(KINDS)


# --- validation errors ---------------------------------------------------------------------

def local(**opts):
    return {"cluster": {"kind": "local", "local": opts}}


TLS_OK = {"address": "tls://127.0.0.1:8786", "ca_file": "ca.pem", "client_cert": "c.pem",
          "client_key": "k.pem"}

BAD = [
    ("wrong type", local(n_workers="two"),
     "cluster.local.n_workers", "expected an int >= 1 or null, got 'two'"),
    ("bool is no int", local(n_workers=True), "cluster.local.n_workers", "got true"),
    # It passed validate, then failed to start as "cluster unreachable" (exit 3).
    ("dashboard not an address", local(dashboard_address="abc"),
     "cluster.local.dashboard_address", "expected an address like ':8787' or "
                                        "'127.0.0.1:8787', with a port up to 65535 or "
                                        "null, got 'abc'"),
    # These passed validate and failed only when the cluster started.
    ("dashboard port too large", local(dashboard_address=":99999"),
     "cluster.local.dashboard_address", "with a port up to 65535 or null, got ':99999'"),
    ("empty kubernetes name", {"cluster": {"kind": "kubernetes", "kubernetes": {"name": ""}}},
     "cluster.kubernetes.name", "expected a Kubernetes name: lowercase letters, digits and '-'"),
    ("kubernetes name with capitals", {"cluster": {"kind": "kubernetes", "kubernetes": {
        "name": "My_Cluster"}}}, "cluster.kubernetes.name", "got 'My_Cluster'"),
    ("empty image", {"cluster": {"kind": "kubernetes", "kubernetes": {"name": "km", "image": ""}}},
     "cluster.kubernetes.image", "expected a non-empty string or null, got ''"),
    ("empty ssh host", {"cluster": {"kind": "ssh", "ssh": {"hosts": ["a", ""]}}},
     "cluster.ssh.hosts[1]", "expected a non-empty string, got ''"),
    ("blank slurm queue", {"cluster": {"kind": "slurm", "slurm": {
        "cores": 2, "memory": "2GiB", "queue": " "}}},
     "cluster.slurm.queue", "expected a non-empty string or null, got ' '"),
    ("empty tls file", {"cluster": {"kind": "tls", "tls": {**TLS_OK, "client_key": ""}}},
     "cluster.tls.client_key", "expected a non-empty string, got ''"),
    ("below minimum", local(threads_per_worker=0), "cluster.local.threads_per_worker",
     "expected an int >= 1"),
    ("not a bool", local(processes="yes"), "cluster.local.processes",
     "expected true or false, got 'yes'"),
    ("bad memory", local(memory_limit="lots"), "cluster.local.memory_limit", "'auto', a size"),
    ("unknown key", {"cluster": {"kind": "tls", "tls": {**TLS_OK, "ca_fil": "x"}}},
     "cluster.tls.ca_fil", "unknown key 'ca_fil'; did you mean 'ca_file'?"),
    ("unknown top-level key", {"cluster": {"kind": "local"}, "clusters": {}},
     "clusters", "unknown key 'clusters'; did you mean 'cluster'?"),
    ("missing required key",
     {"cluster": {"kind": "tls", "tls": {k: v for k, v in TLS_OK.items() if k != "ca_file"}}},
     "cluster.tls.ca_file", "missing required key"),
    ("missing kind", {"cluster": {"local": {}}}, "cluster.kind", "missing required key"),
    ("bad kind", {"cluster": {"kind": "loca"}}, "cluster.kind",
     "expected one of local, scheduler, tls, ssh, kubernetes, slurm, got 'loca'; "
     "did you mean 'local'?"),
    ("section of another kind", {"cluster": {"kind": "local", "ssh": {"hosts": ["a", "b"]}}},
     "cluster.ssh", "options for kind 'ssh', but kind is 'local'"),
    ("missing section", {"cluster": {"kind": "slurm"}}, "cluster.slurm",
     "missing required key: kind 'slurm' needs cores, memory"),
    ("address without a port",
     {"cluster": {"kind": "scheduler", "scheduler": {"address": "localhost"}}},
     "cluster.scheduler.address", "expected an address like tcp://host:port or tls://host:port"),
    ("tls without its scheme",  # a bare host:port is tcp, which tls refuses
     {"cluster": {"kind": "tls", "tls": {**TLS_OK, "address": "localhost:8786"}}},
     "cluster.tls.address", "expected an address like tls://host:port"),
    ("tls needs tls://", {"cluster": {"kind": "tls", "tls": {**TLS_OK,
                                                             "address": "tcp://h:8786"}}},
     "cluster.tls.address", "expected an address like tls://host:port"),
    ("bad timeout", {"cluster": {"kind": "scheduler", "scheduler": {
        "address": "tcp://h:8786", "timeout": "soon"}}},
     "cluster.scheduler.timeout", "expected a duration"),
    ("one ssh host", {"cluster": {"kind": "ssh", "ssh": {"hosts": ["a"]}}},
     "cluster.ssh.hosts", "a list of strings with at least 2 entries"),
    ("list item", {"cluster": {"kind": "ssh", "ssh": {"hosts": ["a", 7]}}},
     "cluster.ssh.hosts[1]", "expected a non-empty string, got 7"),
    ("nested unknown key", {"cluster": {"kind": "kubernetes", "kubernetes": {
        "name": "x", "resources": {"limit": {"cpu": 1}}}}},
     "cluster.kubernetes.resources.limit", "did you mean 'limits'?"),
    ("bad choice", {"cluster": {"kind": "kubernetes", "kubernetes": {
        "name": "x", "scheduler_service_type": "clusterip"}}},
     "cluster.kubernetes.scheduler_service_type", "did you mean 'ClusterIP'?"),
    ("bad size", {"cluster": {"kind": "slurm", "slurm": {"cores": 4, "memory": "lots"}}},
     "cluster.slurm.memory", "a size like '16GiB'"),
    ("not a mapping", ["local"], "", "expected a mapping, got a list of 1"),
]


@pytest.mark.parametrize("config, path, message", [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_config_names_the_path(config, path, message):
    with pytest.raises(ClusterConfigError) as info:
        validate_cluster_config(config)
    assert (path, ) == tuple(p for p, m in info.value.errors if p == path), info.value.errors
    problem = dict(info.value.errors)[path]
    assert message in problem
    assert f"{path or '(top level)'}: {problem}" in str(info.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ClusterConfigError, match="^3 problems in the cluster config:") as info:
        validate_cluster_config(local(n_workers=0, processes=1, dashbord_address=":8787"))
    assert [p for p, _ in info.value.errors] == [
        "cluster.local.n_workers", "cluster.local.processes", "cluster.local.dashbord_address"]


def test_defaults_are_filled_in():
    config = validate_cluster_config({"cluster": {"kind": "local"}})
    assert config["cluster"]["local"] == {"n_workers": None, "threads_per_worker": None,
                                          "memory_limit": "auto", "processes": True,
                                          "dashboard_address": None}
    slurm = validate_cluster_config({"cluster": {"kind": "slurm", "slurm": {
        "cores": 4, "memory": "8GiB"}}})["cluster"]["slurm"]
    assert slurm["jobs"] == 1 and slurm["job_extra_directives"] is None


def test_slurm_leaves_the_sites_jobqueue_settings_to_dask_jobqueue(monkeypatch):
    """The defaults [] and {} reached SLURMCluster, which reads the site's
    jobqueue.slurm.* settings only for None: a prologue like "module load python", extra
    directives and scheduler options were dropped without a word. A fake dask_jobqueue
    records what it is given (the real package is not installed here)."""
    import importlib.machinery
    import types

    import dask

    given = []

    class SLURMCluster:
        def __init__(self, **kwargs):
            given.append(kwargs)
            raise RuntimeError("a fake: no cluster")

    fake = types.ModuleType("dask_jobqueue")
    fake.__spec__ = importlib.machinery.ModuleSpec("dask_jobqueue", None)
    fake.SLURMCluster = SLURMCluster
    monkeypatch.setitem(sys.modules, "dask_jobqueue", fake)
    for options, passed in (({}, {}),
                            ({"job_script_prologue": [], "scheduler_options": {"port": 1}},
                             {"job_script_prologue": [], "scheduler_options": {"port": 1}})):
        given.clear()
        config = {"cluster": {"kind": "slurm", "slurm": {"cores": 4, "memory": "8GiB",
                                                          **options}}}
        with dask.config.set({"jobqueue.slurm.job-script-prologue": ["module load python"]}):
            with pytest.raises(ClusterError, match="a fake: no cluster"):
                with connect(config):
                    pytest.fail("no cluster should start")
        kwargs = given[0]
        for key in ("job_extra_directives", "job_script_prologue", "scheduler_options"):
            assert kwargs.get(key) == passed.get(key), (key, kwargs)


def test_validation_does_not_modify_its_input():
    raw = local(n_workers=2)
    validate_cluster_config(raw)
    assert raw == local(n_workers=2)


def test_load_names_the_file_and_resolves_tls_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  kind: local\n  local:\n    n_workers: two\n")
    with pytest.raises(ClusterConfigError, match=r"bad\.yaml: cluster\.local\.n_workers: "):
        load_cluster_config(bad)

    broken = tmp_path / "broken.yaml"
    broken.write_text("cluster:\n  kind: local\n   local: {}\n")
    with pytest.raises(ClusterConfigError, match=r"broken\.yaml: line 3: not valid YAML"):
        load_cluster_config(broken)

    # Plain values are typed as in job files: YAML 1.1 read 0800 as 512 (octal) and
    # refused it as an env value; yes/no/on/off are refused unquoted.
    kube = tmp_path / "kube.yaml"
    kube.write_text("cluster:\n  kind: kubernetes\n  kubernetes:\n    name: k\n"
                    "    image: img:2024.1\n"
                    "    env: {TZ_OFFSET: 0800, SINCE: 2024-01-01, FLAG: 'on'}\n")
    assert load_cluster_config(kube)["cluster"]["kubernetes"]["env"] == {
        "TZ_OFFSET": "0800", "SINCE": "2024-01-01", "FLAG": "on"}
    ambiguous = tmp_path / "ambiguous.yaml"
    ambiguous.write_text("cluster:\n  kind: local\n  local:\n    processes: yes\n")
    with pytest.raises(ClusterConfigError, match=r"ambiguous\.yaml: line 4: not valid YAML: "
                                                 r"'yes' is ambiguous, which YAML 1\.1"):
        load_cluster_config(ambiguous)
    # A null in a free-form mapping is a value like any other (it crashed the validator).
    ssh = tmp_path / "ssh.yaml"
    ssh.write_text("cluster:\n  kind: ssh\n  ssh:\n    hosts: [a, b]\n"
                   "    connect_options: {known_hosts: ~, port: 22}\n")
    assert load_cluster_config(ssh)["cluster"]["ssh"]["connect_options"] == {
        "known_hosts": None, "port": 22}

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ClusterConfigError, match="the config is empty"):
        load_cluster_config(empty)

    with pytest.raises(ClusterError, match="cluster config file not found: .*nope.yaml"):
        load_cluster_config(tmp_path / "nope.yaml")

    good = tmp_path / "sub" / "tls.yaml"
    good.parent.mkdir()
    good.write_text(yaml.safe_dump({"cluster": {"kind": "tls", "tls": {
        **TLS_OK, "client_key": "/abs/k.pem"}}}))
    tls = load_cluster_config(good)["cluster"]["tls"]
    assert tls["ca_file"] == str(good.parent / "ca.pem")
    assert tls["client_key"] == "/abs/k.pem"

    blank = tmp_path / "blank.yaml"
    blank.write_text("cluster:\n  kind: local\n  local:\n    # n_workers: 2\n")
    assert load_cluster_config(blank)["cluster"]["local"]["processes"] is True


def test_connect_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        with connect(local(), scheduler="tcp://127.0.0.1:8786"):
            pass
    # A usage mistake (exit code 2 on the command line), not a cluster out of reach.
    from dask_kmeans.cluster import ClusterConfigUnreadable, load_cluster_config

    address = r"'tcp://127.0.0.1:1' looks like a scheduler address, not a cluster config file: "
    with pytest.raises(ClusterConfigUnreadable, match=address + r"pass it as --scheduler "
                       r"tcp://127.0.0.1:1 on the command line, or as connect\(scheduler="):
        with connect("tcp://127.0.0.1:1"):
            pass
    with pytest.raises(ClusterConfigUnreadable, match=address):  # was "not found: tcp:/..."
        load_cluster_config("tcp://127.0.0.1:1")
    with pytest.raises(ClusterConfigError, match="^scheduler: expected an address like tcp://"
                                                 ".*got 'notanaddress'"):
        with connect(scheduler="notanaddress"):
            pass
    # A bare host:port is tcp, as for distributed.Client (it was refused as the above),
    # wherever an address goes: connect(scheduler=), cluster configs, a job's cluster.
    from dask_kmeans.jobs import validate_job

    with pytest.raises(ClusterConfigUnreadable, match="'127.0.0.1:1' looks like a scheduler "
                                                      "address, not a cluster config file"):
        load_cluster_config("127.0.0.1:1")
    bare = {"cluster": {"kind": "scheduler", "scheduler": {"address": "10.0.0.5:8786"}}}
    assert validate_cluster_config(bare)["cluster"]["scheduler"]["address"] == \
        "tcp://10.0.0.5:8786"
    job = validate_job({"job": {"kind": "fit", "input": {"url": "d"},
                                "params": {"n_clusters": 2},
                                "cluster": {"scheduler": "[::1]:8786"}}})
    assert job["job"]["cluster"] == {"scheduler": "tcp://[::1]:8786"}
    port = free_port()
    with pytest.raises(ClusterError, match=f"could not connect to the Dask scheduler at "
                                           f"tcp://127.0.0.1:{port} "):
        with connect(scheduler=f"127.0.0.1:{port}", timeout="1s"):
            pass
    with pytest.raises(ClusterError, match="needs TLS credentials.*kind 'tls'"):
        with connect(scheduler="tls://127.0.0.1:8786"):
            pass
    with pytest.raises(ValueError, match="timeout must be a duration"):
        with connect(scheduler="tcp://127.0.0.1:8786", timeout="soon"):
            pass
    missing = tls_config("tls://127.0.0.1:8786", tmp_path / "ca.pem", tmp_path / "c.pem",
                         tmp_path / "k.pem")
    with pytest.raises(ClusterConfigError) as info:
        with connect(missing):
            pass
    assert [p for p, _ in info.value.errors] == [
        "cluster.tls.ca_file", "cluster.tls.client_cert", "cluster.tls.client_key"]
    assert "no such file" in str(info.value)
    # From a file: the file is named too (it named the key and the PEM path only).
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(missing))
    with pytest.raises(ClusterConfigError) as info:
        with connect(path):
            pass
    assert info.value.source == str(path) and str(path) in str(info.value)


# --- optional packages -------------------------------------------------------------------------

@pytest.mark.parametrize("kind, module, package", [
    ("ssh", "asyncssh", "asyncssh"),
    ("kubernetes", "dask_kubernetes", "dask-kubernetes"),
    ("slurm", "dask_jobqueue", "dask-jobqueue"),
])
def test_missing_optional_package_says_what_to_install(kind, module, package):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed; this test never builds a {kind} cluster")
    with pytest.raises(ClusterError) as info:
        with connect(ROOT / "cluster-config" / f"{kind}.yaml"):
            pytest.fail("no cluster should start")
    assert f"pip install {package}" in str(info.value)
    assert no_traceback_noise(info.value)


# --- real clusters on this machine -------------------------------------------------------------

def _closed(client, pids):
    assert client.status == "closed"
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)],
                                 timeout=10)
    assert not alive, f"worker processes still running: {alive}"


def test_connect_local_config_starts_and_closes_worker_processes():
    config = local(n_workers=2, threads_per_worker=1)
    with connect(config) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == 2
        assert all(w["nthreads"] == 1 for w in info.values())
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        assert client.submit(sum, [1, 2, 3]).result() == 6
        cluster = client.cluster
    assert cluster.status.name == "closed"
    _closed(client, pids)


def test_connect_without_arguments_sizes_a_local_cluster_to_the_machine():
    from distributed.deploy.utils import nprocesses_nthreads

    n_workers, n_threads = nprocesses_nthreads()
    with connect() as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == n_workers
        assert {w["nthreads"] for w in info.values()} == {n_threads}
        pids = set(client.run(os.getpid).values())
        assert os.getpid() not in pids
    _closed(client, pids)


def test_connect_to_a_running_scheduler(spawn):
    address = start_scheduler_and_worker(spawn)
    with connect(scheduler=address, timeout="30s") as client:
        assert client.scheduler.address == address
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert client.status == "closed"


def test_connect_with_tls(spawn, tmp_path):
    files = make_tls_files(tmp_path / "certs")
    tls = ["--tls-ca-file", str(files["ca_file"]), "--tls-cert", str(files["cert"]),
           "--tls-key", str(files["key"])]
    address = start_scheduler_and_worker(spawn, "tls", tls)
    config_file = tmp_path / "tls.yaml"
    # Relative paths: load_cluster_config takes them relative to the config file.
    config_file.write_text(yaml.safe_dump(tls_config(
        address, "certs/ca.pem", "certs/cert.pem", "certs/key.pem")))
    with connect(config_file) as client:
        assert client.scheduler.address.startswith("tls://")
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2, 3]).result() == 6

    # The scheduler speaks TLS only; the client checks the scheduler's certificate against
    # its CA, and the scheduler the client's.
    with pytest.raises(ClusterError, match=f"at tcp://127.0.0.1:{address.rsplit(':', 1)[1]}"):
        with connect(scheduler=address.replace("tls://", "tcp://"), timeout="2s"):
            pass
    other = make_tls_files(tmp_path / "other")
    for ca_file in (other["ca_file"], files["ca_file"]):  # the client's CA, then the scheduler's
        with pytest.raises(ClusterError, match=rf"at {address} \(timeout 2s\): .*certificate"):
            with connect(tls_config(address, ca_file, other["cert"], other["key"],
                                    timeout="2s")):
                pass


@pytest.mark.skipif(not (HAVE_CRYPTOGRAPHY and HAVE_OPENSSL), reason="needs both backends")
@pytest.mark.parametrize("make", [_tls_files_cryptography, _tls_files_openssl])
def test_throwaway_certificates_load(make, tmp_path):
    files = make(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca_file"]))
    ctx.load_cert_chain(str(files["cert"]), str(files["key"]))


@pytest.mark.parametrize("via", ["argument", "config", "both"])
def test_unreachable_scheduler_fails_within_the_timeout(via, tmp_path):
    """The timeout given to connect wins; else the config's; else 10 s."""
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    if via == "argument":
        context, timeout = connect(scheduler=address, timeout="1.5s"), "1.5s"
    else:
        path = tmp_path / "scheduler.yaml"
        path.write_text(yaml.safe_dump({"cluster": {"kind": "scheduler", "scheduler": {
            "address": address, "timeout": 1 if via == "config" else 60}}}))
        context, timeout = ((connect(path), "1 s") if via == "config"
                            else (connect(path, timeout="1.5s"), "1.5s"))
    start = time.monotonic()
    with pytest.raises(ClusterError) as info:
        with context:
            pytest.fail("connected to nothing")
    elapsed = time.monotonic() - start
    assert elapsed < 8
    message = str(info.value)
    assert message.startswith(f"could not connect to the Dask scheduler at {address} "
                              f"(timeout {timeout}): ")
    assert no_traceback_noise(info.value)


def _listener(answer: bytes | None):
    """A loopback port that accepts and then never answers (``None``), or answers every
    connection with ``answer`` and closes it; returns (address, stop)."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if answer is None:
                held.append(conn)
                continue
            try:
                conn.recv(65536)
                conn.sendall(answer)
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()

    def stop():
        server.close()
        for conn in held:
            conn.close()

    return f"tcp://127.0.0.1:{server.getsockname()[1]}", stop


@pytest.mark.parametrize("answer", [None, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"])
def test_a_port_that_is_no_scheduler_fails_within_the_timeout_in_one_line(answer):
    """A port that accepts and never answers (a dead tunnel or port-forward) hung the
    connect for ever, whatever the timeout; an HTTP server's reply, read as a Dask
    message, ended in a 73-line traceback about allocating 3.07 EiB."""
    address, stop = _listener(answer)
    try:
        start = time.monotonic()
        with pytest.raises(ClusterError) as info:
            with connect(scheduler=address, timeout="1.5s"):
                pytest.fail("connected to no scheduler")
        assert time.monotonic() - start < 10
    finally:
        stop()
    message = str(info.value)
    assert "\n" not in message and no_traceback_noise(info.value)
    if answer is None:
        assert message.startswith(f"could not connect to the Dask scheduler at {address} "
                                  "(timeout 1.5s): no answer within 1.5 s")
    else:
        assert message.startswith(f"{address} answers, but not as a Dask scheduler"), message


def test_tls_to_a_port_that_does_not_speak_tls_says_so(tmp_path):
    """A TLS handshake with an HTTP server (or a tcp:// scheduler) failed with an empty
    reason: "(timeout 3s): . Check that ..."."""
    files = make_tls_files(tmp_path / "certs")
    address, stop = _listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    address = address.replace("tcp://", "tls://")
    try:
        with pytest.raises(ClusterError) as info:
            with connect(tls_config(address, files["ca_file"], files["cert"], files["key"],
                                    timeout="3s")):
                pytest.fail("connected to no scheduler")
    finally:
        stop()
    assert str(info.value).startswith(
        f"could not connect to the Dask scheduler at {address} (timeout 3s): the TLS "
        "handshake failed (WRONG_VERSION_NUMBER): what listens there does not speak TLS"), \
        str(info.value)


def test_a_workers_address_is_named_as_such(spawn):
    """A worker's address given for the scheduler's failed with "Worker.identity() got an
    unexpected keyword argument 'n_workers'"."""
    address = start_scheduler_and_worker(spawn)
    port = free_port()
    proc, log = spawn("worker", address, "--host", "127.0.0.1", "--worker-port", str(port),
                      "--nthreads", "1", "--no-nanny", "--no-dashboard")
    wait_for_port(port, proc, log)
    worker = f"tcp://127.0.0.1:{port}"
    with pytest.raises(ClusterError, match=r"answers, but not as a Dask scheduler \(a Dask "
                                           r"Worker\): give the scheduler's address"):
        with connect(scheduler=worker, timeout="5s"):
            pytest.fail("connected to a worker")


@pytest.mark.parametrize("processes", [False, True])
def test_a_local_cluster_listens_on_loopback_only(processes):
    """With processes: false the workers' HTTP server listened on every interface."""
    def listening(pids):
        return {(c.laddr.ip, c.laddr.port) for pid in pids
                for c in psutil.Process(pid).net_connections("inet")
                if c.status == psutil.CONN_LISTEN}

    before = listening([os.getpid()])  # other tests' servers in this process
    config = local(n_workers=1, threads_per_worker=1, processes=processes)
    with connect(config) as client:
        new = listening({os.getpid(), *client.run(os.getpid).values()}) - before
    assert new and {ip for ip, _ in new} == {"127.0.0.1"}, new


def test_a_local_cluster_encrypts_when_the_dask_config_requires_it():
    """With distributed.comm.require-encryption set (DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION),
    the local kind failed with "Scheduler failed to start.", hiding the reason."""
    with dask.config.set({"distributed.comm.require-encryption": True}):
        config = local(n_workers=1, threads_per_worker=1, processes=False)
        with connect(config) as client:
            assert client.scheduler.address.startswith("tls://")
            assert client.submit(sum, [1, 2, 3]).result() == 6


def test_a_cluster_that_fails_to_start_gives_the_reason_beneath():
    def start():
        try:
            raise TypeError("TLS expects a `ssl_context` argument")
        except TypeError as exc:
            raise RuntimeError("Scheduler failed to start.") from exc

    with pytest.raises(ClusterError) as info, ExitStack() as stack:
        cluster_module._start("local", start, stack)
    assert str(info.value) == (
        "could not start the local cluster: RuntimeError: Scheduler failed to start. "
        "(TypeError: TLS expects a `ssl_context` argument)")


def test_local_worker_processes_leave_ctrl_c_to_this_process(tmp_path):
    """A Ctrl-C at a terminal reaches the whole process group: every worker process printed
    a KeyboardInterrupt traceback while this process stopped the job and closed them. The
    preload that makes them ignore it keeps the site's own preloads."""
    import signal

    mark = tmp_path / "site_preload.py"
    mark.write_text("def dask_setup(worker):\n    worker.site_preload_ran = True\n")
    before = signal.getsignal(signal.SIGINT)
    with dask.config.set({"distributed.worker.preload": [str(mark)]}), \
            connect(local(n_workers=1, threads_per_worker=1)) as client:
        handlers = client.run(lambda: int(signal.getsignal(signal.SIGINT) == signal.SIG_IGN))
        site = client.run(lambda dask_worker: getattr(dask_worker, "site_preload_ran", False))
    assert list(handlers.values()) == [1]
    assert list(site.values()) == [True]
    assert signal.getsignal(signal.SIGINT) is before  # this process's own is back


@pytest.mark.parametrize("parent", [True, False])
def test_worker_processes_ignore_ctrl_c_from_their_first_import(parent):
    """The preload made workers ignore Ctrl-C a second after they started: in that second
    each printed a traceback. They import dask_kmeans first, which ignores it when the
    process that spawned them asks (and only then: not for any other process)."""
    import dask_kmeans

    code = ("import signal, dask_kmeans; "
            "print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)")
    env = {**os.environ, dask_kmeans.WORKERS_IGNORE_CTRL_C: str(os.getpid() if parent else 1)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(parent)


def test_ctrl_c_while_a_local_cluster_starts_stops_it(monkeypatch):
    """The worker processes ignored Ctrl-C by inheriting SIGINT ignored from this process,
    which ignored it too for the 2-3 s the cluster took to start: a Ctrl-C then was lost."""
    import signal

    import distributed

    real = distributed.LocalCluster

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C while it starts
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with connect(local(n_workers=1, threads_per_worker=1)):
            pytest.fail("the Ctrl-C was lost")
