"""Start or connect to a Dask cluster from a cluster-config YAML file.

A cluster-config file names one kind of cluster and holds that kind's options under a key
of the same name::

    cluster:
      kind: local
      local:
        n_workers: 2

The kinds are ``local``, ``scheduler``, ``tls``, ``ssh``, ``kubernetes`` and ``slurm``.
Their options, types and defaults are in ``cluster_schema.yaml`` next to this module, and
explained in ``docs/clusters.md``; ``cluster-config/`` holds one commented example per kind.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.config
import yaml
from dask.utils import parse_timedelta

from . import WORKERS_IGNORE_CTRL_C
from . import _schema as S

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "KINDS",
    "ClusterConfigError",
    "ClusterError",
    "connect",
    "load_cluster_config",
    "validate_cluster_config",
]

KINDS: tuple[str, ...] = ("local", "scheduler", "tls", "ssh", "kubernetes", "slurm")

# kind -> (module to look for, package to pip install, module holding the class, class name)
_OPTIONAL = {
    "ssh": ("asyncssh", "asyncssh", "distributed.deploy.ssh", "SSHCluster"),
    "kubernetes": ("dask_kubernetes", "dask-kubernetes", "dask_kubernetes.operator",
                   "KubeCluster"),
    "slurm": ("dask_jobqueue", "dask-jobqueue", "dask_jobqueue", "SLURMCluster"),
}
_TLS_FILES = ("ca_file", "client_cert", "client_key")


class ClusterError(Exception):
    """A cluster could not be started or reached, or its configuration is wrong."""


class ClusterConfigUnreadable(ClusterError):
    """The cluster-config file is missing or cannot be read: a usage mistake (exit code 2
    on the command line, as for a job spec naming such a file), not a cluster out of reach."""


class ClusterConfigError(ClusterError, S.SchemaError):
    """A cluster config does not follow the schema.

    Parameters and attributes as `dask_kmeans._schema.SchemaError`; paths are
    dotted like ``cluster.local.n_workers``.
    """

    what = "cluster config"


# --- the schema (checked by the generic validator in _schema.py) ----------------------------

@cache
def _schema() -> dict:
    text = Path(__file__).with_name("cluster_schema.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _kind_schema(kind: str) -> dict:
    return _schema()["keys"]["cluster"]["keys"][kind]


def _validate(config: Any, source: str | None = None) -> dict:
    errors: list[tuple[str, str]] = []
    if config is None:
        raise ClusterConfigError([("", "the config is empty; it needs a 'cluster' mapping "
                                       "with a 'kind', like {cluster: {kind: local}}")], source)
    section = config.get("cluster") if isinstance(config, Mapping) else None
    if isinstance(section, Mapping):
        # An empty section (every option commented out) means "all defaults".
        section = {k: ({} if k in KINDS and v is None else v) for k, v in section.items()}
        config = {**config, "cluster": section}
    out = S.walk(_schema(), config, "", errors)
    cluster = (out or {}).get("cluster")
    kind = cluster.get("kind") if isinstance(cluster, dict) else None
    if kind in KINDS:
        for other in KINDS:
            if other != kind and other in cluster:
                errors.append((f"cluster.{other}", f"options for kind '{other}', but kind is "
                                                   f"'{kind}': remove them or set kind: {other}"))
        if kind not in cluster:
            required = _kind_schema(kind).get("required")
            if required:
                errors.append((f"cluster.{kind}", f"missing required key: kind '{kind}' needs "
                                                  f"{', '.join(required)}"))
            else:
                cluster[kind] = S.walk(_kind_schema(kind), {}, f"cluster.{kind}", errors)
    if errors:
        raise ClusterConfigError(errors, source)
    return out


def validate_cluster_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a cluster config against the schema and fill in the defaults.

    Parameters
    ----------
    config : mapping
        A config as read from YAML: ``{"cluster": {"kind": ..., <kind>: {...}}}``.

    Returns
    -------
    dict
        A copy of ``config`` in which every option of the chosen kind that has a default
        is present.

    Raises
    ------
    ClusterConfigError
        Listing every problem with the dotted path of the key at fault: unknown keys (with
        the closest allowed name), values of the wrong type, missing required keys, an
        unknown kind, or options given for another kind than the chosen one.

    Examples
    --------
    >>> from dask_kmeans.cluster import validate_cluster_config
    >>> cfg = validate_cluster_config({"cluster": {"kind": "local", "local": {"n_workers": 2}}})
    >>> cfg["cluster"]["local"]["processes"]
    True
    >>> validate_cluster_config({"cluster": {"kind": "local", "local": {"n_workers": "two"}}})
    Traceback (most recent call last):
    ...
    dask_kmeans.cluster.ClusterConfigError: cluster.local.n_workers: expected an int >= 1 or null, got 'two'
    """  # noqa: E501
    return _validate(config)


def load_cluster_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a cluster-config YAML file.

    Relative paths of TLS files (``ca_file``, ``client_cert``, ``client_key``) are taken
    relative to the directory of the config file, so a config and its certificates can move
    together.

    Parameters
    ----------
    path : str or path-like
        The YAML file.

    Returns
    -------
    dict
        The validated config, defaults filled in (see `validate_cluster_config`).

    Raises
    ------
    ClusterConfigUnreadable
        If the file is missing or cannot be read (a `ClusterError`).
    ClusterConfigError
        If it is not valid YAML or does not follow the schema; the message starts with the
        file name.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from dask_kmeans.cluster import load_cluster_config
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = pathlib.Path(tmp, "c.yaml")
    ...     _ = p.write_text("cluster:\\n  kind: scheduler\\n  scheduler:\\n"
    ...                      "    address: tcp://127.0.0.1:8786\\n")
    ...     load_cluster_config(p)["cluster"]["scheduler"]
    {'address': 'tcp://127.0.0.1:8786', 'timeout': None}
    """
    if isinstance(path, str) and ("://" in path or (
            S.HOST_PORT.fullmatch(path) and not os.path.exists(path))):
        raise _address_not_config(path)  # (Path() would make tcp:// into tcp:/)
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterConfigUnreadable(f"cluster config file not found: {p}") from None
    except OSError as exc:
        raise ClusterConfigUnreadable(f"cannot read the cluster config {p}: {exc}") from None
    except UnicodeDecodeError as exc:  # a ValueError, which would read as a failed job
        raise ClusterConfigUnreadable(
            f"cannot read the cluster config {p}: {S.not_utf8(exc)}") from None
    try:
        raw = S.load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ClusterConfigError([(where, f"not valid YAML: {problem}")], str(p)) from None
    config = _validate(raw, str(p))
    tls = config["cluster"].get("tls")
    if tls is not None:
        for key in _TLS_FILES:
            tls[key] = str(p.parent / Path(tls[key]).expanduser())
    return config


# --- starting and connecting ------------------------------------------------------------

def _timeout_text(timeout: str | float) -> str:
    return timeout if isinstance(timeout, str) else f"{timeout:g} s"


def _identity(address: str, seconds: float, security: Any) -> dict:
    """What answers at ``address``: its ``identity`` reply, within ``seconds`` in all (the
    client's own timeout bounds only the TCP connection: a port that accepts and never
    answers, a dead tunnel or port-forward, hung it for ever). In a thread of its own, so
    that it runs whether or not the caller has an event loop."""
    import asyncio
    import threading

    from distributed.comm import connect

    async def ask() -> dict:
        args = security.get_connection_args("client") if security is not None else {}
        comm = await connect(address, timeout=seconds, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    out: dict = {}

    def run() -> None:
        try:
            out["reply"] = asyncio.run(asyncio.wait_for(ask(), seconds))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=run, name="dask-kmeans-identity", daemon=True)
    thread.start()
    thread.join(seconds + 5.0)  # wait_for gives up at ``seconds``; a margin for the loop
    if thread.is_alive() or isinstance(out.get("error"), asyncio.TimeoutError):
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in out:
        raise out["error"]
    return out["reply"]


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words: distributed's comm errors often carry no message
    of their own (a TLS handshake with a port that does not speak TLS read as ""), the
    cause they wrap does."""
    import ssl

    seen: list[BaseException] = []
    while exc is not None and exc not in seen and not str(exc).strip():
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    if exc is None or exc in seen:
        return f"{type(seen[0]).__name__} (no reason given)"
    why = str(exc)
    if isinstance(exc, ssl.SSLError) and exc.reason in ("WRONG_VERSION_NUMBER",
                                                        "UNEXPECTED_EOF_WHILE_READING",
                                                        "RECORD_LAYER_FAILURE",
                                                        "PACKET_LENGTH_TOO_LONG"):
        why = (f"the TLS handshake failed ({exc.reason}): what listens there does not speak "
               "TLS (a tcp:// scheduler or another service?)")
    return why


def _client(target: Any, address: str, timeout: str | float, stack: ExitStack,
            security: Any = None) -> Client:
    from distributed import Client

    advice = "Check that a Dask scheduler is running there and that this machine can reach it"
    if address.startswith("tls://"):
        advice += (", and that the certificate authority and client certificate match the "
                   "scheduler's")

    def unreachable(why: str) -> ClusterError:
        return ClusterError(f"could not connect to the Dask scheduler at {address} (timeout "
                            f"{_timeout_text(timeout)}): {why}. {advice}.")

    try:
        if isinstance(target, str):  # an address: ask what answers there first
            try:
                reply = _identity(target, parse_timedelta(timeout), security)
            except (OSError, TimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001 - an HTTP server's reply read as a
                # Dask message asked for 3 EiB: one line, not a traceback
                why = f"{type(exc).__name__}: {exc}"
                raise ClusterError(
                    f"{address} answers, but not as a Dask scheduler "
                    f"({why[:200]}): give the scheduler's address (a web server or another "
                    "service listens there).") from None
            kind = reply.get("type") if isinstance(reply, dict) else None
            if kind != "Scheduler":
                raise ClusterError(
                    f"{address} answers, but not as a Dask scheduler"
                    f"{f' (a Dask {kind})' if isinstance(kind, str) else ''}: give the "
                    "scheduler's address (a worker's or the dashboard's port is not it).")
        client = Client(target, timeout=timeout, security=security)
    except ClusterError:
        raise
    except (OSError, TimeoutError) as exc:
        raise unreachable(_reason(exc)) from None
    except Exception as exc:  # noqa: BLE001 - what answered spoke something else
        # An HTTP server's reply read as a Dask message (a 3 EiB allocation), encryption
        # required by the Dask config for a tcp:// address, ...: one line, not a traceback.
        raise unreachable(f"{type(exc).__name__}: {exc}") from None
    stack.callback(client.close)
    return client


def _start(kind: str, factory: Callable[[], Any], stack: ExitStack) -> Any:
    from distributed.deploy.spec import SpecCluster

    before = set(SpecCluster._instances)
    try:
        cluster = factory()
    except KeyboardInterrupt:
        # A Ctrl-C while it starts: close what was started, quietly (distributed's own
        # close at exit asserted on workers still starting: 20 lines of traceback).
        for half in set(SpecCluster._instances) - before:
            half.shutdown_on_close = False
            with contextlib.suppress(Exception):
                half.close(timeout=5)
        raise
    except ClusterError:
        raise
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        root = exc
        while (root.__cause__ or root.__context__) is not None and len(why) < 2000:
            root = root.__cause__ or root.__context__  # "Scheduler failed to start." says
            why += f" ({type(root).__name__}: {root})"  # nothing: the reason is deeper
        raise ClusterError(f"could not start the {kind} cluster: {why}") from exc
    stack.callback(cluster.close)
    return cluster


def _cluster_class(kind: str):
    module, package, home, name = _OPTIONAL[kind]
    hint = f"cluster kind '{kind}' needs the optional package {package}: pip install {package}"
    if importlib.util.find_spec(module) is None:
        raise ClusterError(f"{hint} (it is not installed in this environment)")
    try:
        return getattr(importlib.import_module(home), name)
    except ImportError as exc:
        raise ClusterError(f"{hint} (importing it failed: {exc})") from None


def _given(opts: dict, *leave_out: str) -> dict:
    # null means "the library's own default": pass nothing rather than None.
    return {k: v for k, v in opts.items() if v is not None and k not in leave_out}


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _connect_local(opts: dict, timeout, stack: ExitStack) -> Client:
    from distributed import LocalCluster

    kwargs = _given(opts, "dashboard_address")
    if opts["dashboard_address"] is None:
        # No dashboard; the scheduler's HTTP routes (health, metrics) still need a port:
        # a free one on loopback rather than 8787 (taken by any other scheduler here).
        kwargs["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0"}
    if not opts["processes"]:
        # Workers in this process have no host of their own to put their HTTP routes on:
        # they listened on every interface, where worker processes use loopback.
        kwargs["worker_dashboard_address"] = "127.0.0.1:0"
    if dask.config.get("distributed.comm.require-encryption", False):
        # The site's Dask config asks for encrypted comms (a plain local cluster then failed
        # with "Scheduler failed to start."): TLS with temporary self-signed credentials.
        kwargs["security"] = True
    spawning = contextlib.nullcontext()
    if opts["processes"]:  # the worker processes ignore the terminal's Ctrl-C
        kwargs["preload"] = [*dask.config.get("distributed.worker.preload", []),
                             "dask_kmeans._runtime"]
        spawning = _environ(WORKERS_IGNORE_CTRL_C, str(os.getpid()))  # from their start
    with spawning:
        cluster = _start("local", lambda: LocalCluster(
            dashboard_address=opts["dashboard_address"], **kwargs), stack)
    client = _client(cluster, cluster.scheduler_address, timeout, stack)
    from ._runtime import QuietTaskFailures

    client.register_plugin(QuietTaskFailures())
    return client


def _connect_scheduler(opts: dict, timeout, stack: ExitStack) -> Client:
    address = opts["address"]
    if address.startswith("tls://"):
        from distributed.security import Security

        # Without a tls section, the credentials can only come from Dask's configuration.
        if Security().get_connection_args("client").get("ssl_context") is None:
            raise ClusterError(
                f"{address} needs TLS credentials, and Dask's configuration has none "
                "(distributed.comm.tls.*): use a config of kind 'tls' with ca_file, "
                "client_cert and client_key")
    return _client(address, address, timeout, stack)


def missing_tls_files(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The TLS files of a validated ``tls`` config that are not files on this machine, as
    ``(dotted path, "no such file: <path>")`` pairs; empty for the other kinds."""
    opts = config["cluster"].get("tls") or {}
    return [(f"cluster.tls.{key}", f"no such file: {os.path.expanduser(opts[key])}")
            for key in _TLS_FILES if key in opts
            and not os.path.isfile(os.path.expanduser(opts[key]))]


def _connect_tls(opts: dict, timeout, stack: ExitStack) -> Client:
    from distributed.security import Security

    missing = missing_tls_files({"cluster": {"tls": opts}})
    if missing:
        raise ClusterConfigError(missing)
    files = {key: os.path.expanduser(opts[key]) for key in _TLS_FILES}
    security = Security(tls_ca_file=files["ca_file"], tls_client_cert=files["client_cert"],
                        tls_client_key=files["client_key"], require_encryption=True)
    return _client(opts["address"], opts["address"], timeout, stack, security=security)


def _connect_ssh(opts: dict, timeout, stack: ExitStack) -> Client:
    cls = _cluster_class("ssh")
    cluster = _start("ssh", lambda: cls(**opts), stack)
    return _client(cluster, cluster.scheduler_address, timeout, stack)


def _connect_kubernetes(opts: dict, timeout, stack: ExitStack) -> Client:
    cls = _cluster_class("kubernetes")
    cluster = _start("kubernetes", lambda: cls(**_given(opts)), stack)
    return _client(cluster, cluster.scheduler_address, timeout, stack)


def _connect_slurm(opts: dict, timeout, stack: ExitStack) -> Client:
    cls = _cluster_class("slurm")
    cluster = _start("slurm", lambda: cls(**_given(opts, "jobs")), stack)
    cluster.scale(jobs=opts["jobs"])
    return _client(cluster, cluster.scheduler_address, timeout, stack)


_CONNECT = {
    "local": _connect_local,
    "scheduler": _connect_scheduler,
    "tls": _connect_tls,
    "ssh": _connect_ssh,
    "kubernetes": _connect_kubernetes,
    "slurm": _connect_slurm,
}


#: The Dask setting of the default scheduler (``Client()`` connects to it), as
#: ``DASK_SCHEDULER_ADDRESS`` sets it.
SCHEDULER_ADDRESS = "scheduler-address"


def default_scheduler() -> str | None:
    """The address in Dask's ``scheduler-address`` setting (``DASK_SCHEDULER_ADDRESS``),
    where a cluster nobody named is found (``tcp://`` added to a bare ``host:port``); None
    when it is not set."""
    address = dask.config.get(SCHEDULER_ADDRESS, None)
    if address in (None, ""):
        return None
    return S.over_tcp(address)


def _config_for(config_or_path, scheduler) -> dict:
    where = "scheduler"
    if scheduler is None and config_or_path is None:
        scheduler = default_scheduler()
        where = f"{SCHEDULER_ADDRESS} (the Dask setting; DASK_SCHEDULER_ADDRESS)"
    if scheduler is not None:
        if config_or_path is not None:
            raise ValueError("connect() takes a config or scheduler=, not both")
        errors: list[tuple[str, str]] = []
        S.walk(_kind_schema("scheduler")["keys"]["address"], scheduler, where, errors)
        if errors:
            raise ClusterConfigError(errors)
        return _validate({"cluster": {"kind": "scheduler",
                                      "scheduler": {"address": scheduler}}})
    if config_or_path is None:
        return _validate({"cluster": {"kind": "local"}})
    if isinstance(config_or_path, Mapping):
        return _validate(config_or_path)
    return load_cluster_config(config_or_path)


def _address_not_config(address: str) -> ClusterConfigUnreadable:
    """A scheduler address given where a cluster-config file goes: a usage mistake."""
    return ClusterConfigUnreadable(
        f"{address!r} looks like a scheduler address, not a cluster config file: pass it "
        f"as --scheduler {address} on the command line, or as connect(scheduler="
        f"{address!r}) in Python")


@contextmanager
def connect(config_or_path: Mapping[str, Any] | str | os.PathLike[str] | None = None, *,
            scheduler: str | None = None, timeout: str | float | None = None,
            ) -> Iterator[Client]:
    """Start or reach a Dask cluster and yield a `distributed.Client` connected to it.

    On exit the client is closed, and so is the cluster if this call started it (a local,
    SSH, Kubernetes or SLURM cluster). A scheduler that was already running is left running.

    Parameters
    ----------
    config_or_path : mapping, str, path-like or None, default=None
        A cluster config (see `validate_cluster_config`) or the path of a cluster-config
        YAML file. With neither this nor ``scheduler``: the scheduler in Dask's
        ``scheduler-address`` setting (``DASK_SCHEDULER_ADDRESS``), as ``Client()`` finds
        it, else a local cluster of worker processes sized to this machine's cores (kind
        ``local`` with its defaults).
    scheduler : str, optional
        Address of a running scheduler, like ``"tcp://10.0.0.5:8786"``; the same as a
        config of kind ``scheduler``.
    timeout : str, float or None, default=None
        How long the client tries to reach the scheduler, as a duration string or seconds.
        None: the ``timeout`` option of a ``scheduler`` or ``tls`` config when it sets one,
        else ``"10s"``. Given here, it wins over the config's.

    Yields
    ------
    distributed.Client
        The client, also the default scheduler for dask computations inside the block.

    Raises
    ------
    ClusterConfigError
        If the config does not follow the schema, a TLS file does not exist, or (with
        neither config nor ``scheduler``) the ``scheduler-address`` setting is not a tcp or
        tls address.
    ClusterError
        If the scheduler cannot be reached within the timeout (the message names the
        address and the timeout), if the cluster cannot be started, or if the kind needs an
        optional package that is not installed (the message says what to ``pip install``).

    Examples
    --------
    >>> from dask_kmeans.cluster import connect
    >>> config = {"cluster": {"kind": "local",
    ...                       "local": {"n_workers": 1, "threads_per_worker": 1}}}
    >>> with connect(config) as client:
    ...     client.submit(sum, [1, 2, 3]).result()
    6
    """
    if timeout is not None and not ((isinstance(timeout, str) or S.is_number(timeout))
                                    and S.parses(parse_timedelta, timeout)):
        raise ValueError(f"timeout must be a duration like '10s' or a number of seconds > 0, "
                         f"got {timeout!r}")
    config = _config_for(config_or_path, scheduler)
    kind = config["cluster"]["kind"]
    opts = config["cluster"][kind]
    if timeout is None:
        timeout = "10s" if opts.get("timeout") is None else opts["timeout"]
    source = (str(config_or_path) if isinstance(config_or_path, (str, os.PathLike))
              else None)
    with ExitStack() as stack:
        try:
            client = _CONNECT[kind](opts, timeout, stack)
        except ClusterConfigError as exc:  # a TLS file missing: name the config file too
            if exc.source is None and source is not None:
                raise ClusterConfigError(exc.errors, source) from None
            raise
        yield client
