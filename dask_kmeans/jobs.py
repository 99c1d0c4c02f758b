"""Job specs: a fit, predict or K sweep described in YAML, validated, then run or submitted.

A job spec is one ``job`` mapping whose ``kind`` says what to do::

    job:
      kind: fit
      cluster: ../cluster-config/local.yaml
      input:
        url: s3://bucket/customers/
        key_columns: [customer_id]
      params:
        n_clusters: 8
        random_state: 0
      output:
        model: s3://bucket/models/customers-k8
        labels: s3://bucket/labels/customers-k8

The keys of each kind, their types and defaults are in ``job_schema.yaml`` next to this
module and explained in ``docs/cli.md``; ``jobs/`` holds an example of each kind.

:func:`load_job` reads and validates a file (with ``key.path=value`` overrides),
:func:`run_job` runs a validated spec with whatever Dask client is active, and
:func:`submit_job` runs it as a task on a cluster so that the submitting process may exit;
:func:`job_status` finds its state and result again from any client of that cluster.

Credentials belong in ``storage_options`` only. They travel to the workers with the job, but
never appear in a result summary, a log line, a job status or an error message.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import datetime
import fnmatch
import glob
import io as _stdio
import json
import logging
import math
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.config
import yaml

from . import _schema as S
from .cluster import (
    ClusterConfigError,
    ClusterError,
    load_cluster_config,
    validate_cluster_config,
)
from .io import (
    check_label_keys,
    remove_exactly,
    secret_values,
    storage_error_message,
    storage_error_types,
    strip_credentials,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "KEEP_FINISHED",
    "KINDS",
    "MAX_K_VALUES",
    "JobConfigError",
    "JobSpecError",
    "UnknownJobError",
    "apply_overrides",
    "cluster_target",
    "job_status",
    "keep_finished",
    "load_job",
    "param_defaults",
    "parse_assignment",
    "parse_k",
    "parse_value",
    "run_job",
    "scrub",
    "secrets",
    "submit_job",
    "validate_job",
]

KINDS: tuple[str, ...] = ("fit", "predict", "sweep")
#: Job states recorded on the scheduler by :func:`submit_job`.
STATES: tuple[str, ...] = ("submitted", "running", "finished", "failed", "lost")
#: Top-level key of the scheduler's metadata under which submitted jobs are recorded.
METADATA_KEY = "dask-kmeans-jobs"
#: Metadata key of the bookkeeping of ended jobs: ``seq`` (jobs ended so far), ``order``
#: (the number of each kept job's end) and, once some are forgotten, ``count``, ``keep`` (as
#: the job that last made the scheduler forget) and ``newest`` (when the newest forgotten job
#: finished).
FORGOTTEN_KEY = "dask-kmeans-jobs-forgotten"
#: Dask config key: how many records of finished or failed jobs the scheduler keeps.
KEEP_FINISHED = "dask-kmeans.jobs.keep-finished"
_TASK_PREFIX = "dask-kmeans-job-"
_K_RANGE = re.compile(r"\s*(\d+)\s*\.\.\s*(\d+)\s*")
#: Most values of K one sweep takes: a range like 2..2000000000 was expanded into a list
#: until memory ran out, before any check.
MAX_K_VALUES = 1000

logger = logging.getLogger("dask_kmeans.jobs")


class JobSpecError(S.SchemaError):
    """A job spec does not follow the schema.

    Parameters and attributes as `dask_kmeans._schema.SchemaError`; paths are
    dotted like ``job.params.n_clusters``.

    Examples
    --------
    >>> from dask_kmeans.jobs import validate_job
    >>> validate_job({"job": {"kind": "fit", "input": {"url": "data/"},
    ...                       "params": {"n_clusters": "eight"}, "output": {}}})
    Traceback (most recent call last):
    ...
    dask_kmeans.jobs.JobSpecError: job.params.n_clusters: expected an int >= 1, got 'eight'
    """

    what = "job spec"


class UnknownJobError(LookupError):
    """No job with this id was submitted to this scheduler (or it restarted since, or it
    finished long enough ago to be forgotten)."""


class JobConfigError(S.SchemaError):
    """A ``dask-kmeans`` setting of the Dask configuration is not valid.

    Parameters and attributes as `dask_kmeans._schema.SchemaError`; paths are config keys.
    """

    what = "Dask configuration"


def _config_defaults() -> None:
    """Add this package's defaults (``dask-kmeans.yaml``) beneath the user's settings."""
    text = Path(__file__).with_name("dask-kmeans.yaml").read_text(encoding="utf-8")
    dask.config.update_defaults(S.load_yaml(text))


_config_defaults()


# --------------------------------------------------------------------------- YAML


def is_quoted(text: str) -> bool:
    """Whether a command-line value is wrapped in a matching pair of single or double
    quotes, which :func:`parse_value` reads as the exact text inside."""
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def parse_value(text: str) -> Any:
    """A command-line value, typed conservatively.

    A value wrapped in a matching pair of single or double quotes (``'2024'``,
    ``"true"``) is the exact string inside, typed no further: the way to give text that
    would otherwise be a number, a bool or null (``''x''`` is ``'x'``; no escapes).
    Otherwise ``true``/``false`` (any case) are bools, ``null`` (any case) is None, plain
    decimal integers without leading zeros are ints, plain decimal floats (``1.5``,
    ``1e-4``) are floats, and a value starting with ``[`` or ``{`` is a YAML flow list or
    mapping, whose items follow the same rule, except that a quoted item is YAML's quoted
    scalar (in ``"..."`` a backslash starts an escape; in ``'...'`` write ``''`` for
    ``'``). A plain ``yes``, ``no``, ``on`` or ``off`` (YAML 1.1's other booleans, as
    job files spell them) is refused: quote it for text. Anything else is the exact
    string given: ``0123``, ``12:30:00``, ``2024_01``, ``ab #cd`` and an empty value stay
    strings. Job files type their plain values by the same rule (:func:`_schema.load_yaml`).

    Raises
    ------
    yaml.YAMLError
        If a value starting with ``[`` or ``{`` is not a YAML flow collection, or the value
        (or an item) is a plain yes/no/on/off (``_schema.AmbiguousBool``).

    Examples
    --------
    >>> [parse_value(v) for v in ["True", "null", "5", "-1e-4", "0123", "'no'", "[2, 4]"]]
    [True, None, 5, -0.0001, '0123', 'no', [2, 4]]
    >>> [parse_value(v) for v in ["'2024'", '"true"', "''", "['2024', ' sp', 'a,b', c]"]]
    ['2024', 'true', '', ['2024', ' sp', 'a,b', 'c']]
    """
    if is_quoted(text):
        return text[1:-1]
    if S.BOOL.fullmatch(text):
        return text.lower() == "true"
    if S.NULL.fullmatch(text):
        return None
    if S.INT.fullmatch(text):
        return int(text)
    if S.FLOAT.fullmatch(text):
        return float(text)
    if S.AMBIGUOUS_BOOL.fullmatch(text):
        raise S.AmbiguousBool(text)
    if text.lstrip().startswith(("[", "{")):
        return yaml.load(text, Loader=S.FlowLoader)  # a SafeLoader subclass
    return text


# --------------------------------------------------------------------------- validation


@cache
def _schema() -> dict:
    return yaml.safe_load(Path(__file__).with_name("job_schema.yaml").read_text("utf-8"))


def param_defaults() -> dict[str, Any]:
    """The defaults of a job's ``params`` (KMeans' own), as ``job_schema.yaml`` has them.

    Examples
    --------
    >>> param_defaults()["init"]
    'k-means||'
    """
    keys = _schema()["keys"]["job"]["variants"]["fit"]["keys"]["params"]["keys"]
    return {k: copy.deepcopy(node["default"]) for k, node in keys.items() if "default" in node}


def parse_k(k: str | Sequence[int]) -> list[int]:
    """The values of K of a sweep: a list as given, or an inclusive range ``"lo..hi"``.

    Raises
    ------
    ValueError
        If the range is malformed or empty, or there would be more than
        :data:`MAX_K_VALUES` values (checked before any list is built).

    Examples
    --------
    >>> parse_k("2..5")
    [2, 3, 4, 5]
    >>> parse_k([8, 2, 4])
    [8, 2, 4]
    """
    if isinstance(k, str):
        match = _K_RANGE.fullmatch(k)
        if match is None:
            raise ValueError(f"k must be a list of ints or a range like '2..12', got {k!r}")
        lo, hi = int(match[1]), int(match[2])
        if not 1 <= lo <= hi:
            raise ValueError(f"the range {k!r} is empty or starts below 1: write it as "
                             "'lo..hi' with 1 <= lo <= hi")
        if hi - lo + 1 > MAX_K_VALUES:
            raise ValueError(f"the range {k.strip()!r} holds {hi - lo + 1:,} values of K; a "
                             f"sweep takes at most {MAX_K_VALUES:,}: narrow the range, or list "
                             "a few values to try")
        return list(range(lo, hi + 1))
    if len(k) > MAX_K_VALUES:
        raise ValueError(f"{len(k):,} values of K are given; a sweep takes at most "
                         f"{MAX_K_VALUES:,}")
    ks = [int(v) for v in k]
    repeated = sorted({v for v in ks if ks.count(v) > 1})
    if repeated:  # was fitted once, and the job then reported fewer values than given
        raise ValueError(f"K={repeated[0]} is given more than once in {ks}; give each once")
    return ks


def _check_cluster_entry(value: Any, base_dir: Path | None, errors: list) -> Any:
    """Validate ``job.cluster``; return it with a relative config path made absolute."""
    path = "job.cluster"
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        file = Path(value).expanduser()
        if not file.is_absolute() and base_dir is not None:
            file = base_dir / file  # as the config is read: next to the job
        if "://" in value or (S.HOST_PORT.fullmatch(value) and not file.exists()):
            errors.append((path, f"{value!r} looks like a scheduler address: write "
                                 f"cluster: {{scheduler: {value}}}"))
            return None
        try:
            load_cluster_config(file)
        except ClusterConfigError as exc:
            errors.extend((path, f"{exc.source}: {p or '(top level)'}: {m}")
                          for p, m in exc.errors)
        except ClusterError as exc:  # not found, unreadable
            errors.append((path, str(exc)))
        return str(file)
    if isinstance(value, Mapping) and set(value) == {"scheduler"}:
        node = {"type": "address", "schemes": ["tcp", "tls"]}
        return {"scheduler": S.walk(node, value["scheduler"], f"{path}.scheduler", errors)}
    if isinstance(value, Mapping) and ("kind" in value or set(value) == {"cluster"}):
        inline = value if set(value) == {"cluster"} else {"cluster": value}
        prefix = path if set(value) != {"cluster"} else f"{path}.cluster"
        try:
            config = validate_cluster_config(inline)
        except ClusterConfigError as exc:
            errors.extend((prefix + p[len("cluster"):] if p.startswith("cluster") else
                           S.join(prefix, p) if p else prefix, m) for p, m in exc.errors)
            return None
        tls = config["cluster"].get("tls")
        if tls is not None and base_dir is not None:
            for key in ("ca_file", "client_cert", "client_key"):
                tls[key] = str(base_dir / Path(tls[key]).expanduser())
        return config
    errors.append((path, "expected the path of a cluster-config file, an inline cluster "
                         "config like {kind: local, local: {n_workers: 2}}, or "
                         f"{{scheduler: tcp://host:8786}}, got {S.show(value)}"))
    return None


# Params of a fit that a sweep has no use for: said why, not only "unknown key".
_SWEEP_REFUSES = {
    f"job.params.{name}": (f"a sweep does not take {name}: every K starts from one shared "
                           "k-means|| candidate set and is fitted once; remove it (or run a "
                           "fit job for each K)")
    for name in ("init", "n_init")
}


def _refuse_ignored(job: Mapping[str, Any], errors: list) -> None:
    """Refuse keys that another key's value would leave without effect: a fit's, and a
    sweep's ``input.key_columns``.

    Checked on the validated values, so a value equal to the default passes (it changes
    nothing, and a spec validated once, defaults filled in, validates again); keys
    already reported as wrong are left to that report.
    """
    bad = {path for path, _ in errors}
    inp = job.get("input") if isinstance(job.get("input"), dict) else {}
    if (inp.get("key_columns") and inp.get("columns")
            and not {"job.input.key_columns", "job.input.columns", "job.output",
                     "job.output.labels"} & bad):
        # Key columns are copied next to the labels and kept out of the default features;
        # they are not used otherwise (not by the profile, nor the model).
        if job.get("kind") == "sweep":
            errors.append(("job.input.key_columns", "keeps key columns out of the default "
                                                    "features and is copied next to labels, "
                                                    "but input.columns names the features "
                                                    "and a sweep writes no labels, so it "
                                                    "would be ignored: remove "
                                                    "input.key_columns (--key)"))
        elif job.get("kind") == "fit" and isinstance(job.get("output"), dict) \
                and job["output"].get("labels") is None:
            errors.append(("job.input.key_columns", "keeps key columns out of the default "
                                                    "features and is copied next to the "
                                                    "labels, but input.columns names the "
                                                    "features and output.labels is null, so "
                                                    "it would be ignored: set output.labels "
                                                    "(--labels), or remove "
                                                    "input.key_columns (--key)"))
    if job.get("kind") != "fit":
        return
    params = job.get("params") if isinstance(job.get("params"), dict) else {}
    out = job.get("output") if isinstance(job.get("output"), dict) else {}
    defaults = param_defaults()
    init = params.get("init")
    if init is not None and init != "k-means||" and "job.params.init" not in bad:
        for name in ("oversampling_factor", "init_rounds"):
            path = f"job.params.{name}"
            if path not in bad and params.get(name, defaults[name]) != defaults[name]:
                errors.append((path, f"applies to init k-means|| only; with init {init} it "
                                     f"would be ignored: remove {name}, or use init "
                                     "k-means||"))
    if (params.get("resume") and params.get("checkpoint") is None
            and not {"job.params.resume", "job.params.checkpoint"} & bad):
        errors.append(("job.params.resume", "continues a fit from params.checkpoint, but "
                                            "params.checkpoint is null, so it would be "
                                            "ignored: set params.checkpoint to a directory, "
                                            "or remove resume"))
    if (out.get("plot_features") is not None and out.get("plot") is None
            and not {"job.output.plot_features", "job.output.plot"} & bad):
        errors.append(("job.output.plot_features", "chooses the axes of the output.plot "
                                                   "scatter, but output.plot is null, so it "
                                                   "would be ignored: set output.plot to a "
                                                   "PNG file, or remove "
                                                   "output.plot_features"))


def validate_job(spec: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
                 source: str | None = None) -> dict[str, Any]:
    """Check a job spec against the schema and fill in the defaults.

    Parameters
    ----------
    spec : mapping
        A spec as read from YAML: ``{"job": {"kind": ..., ...}}``.
    base_dir : str or path-like, optional
        Directory against which a relative ``job.cluster`` path is resolved (the job
        file's); the current directory when None.
    source : str, optional
        Where the spec came from, for the messages.

    Returns
    -------
    dict
        A copy of ``spec`` with every default filled in and ``job.cluster`` resolved: an
        absolute path, ``{"scheduler": address}``, or a validated cluster config
        ``{"cluster": {...}}``.

    Raises
    ------
    JobSpecError
        Listing every problem with the dotted path of the key at fault, like
        ``job.params.n_clusters: expected an int >= 1, got 'eight'``. A fit's key that
        another key would leave without effect is a problem too: ``output.plot_features``
        without ``output.plot``, ``params.resume: true`` without ``params.checkpoint``, and
        an ``oversampling_factor`` or ``init_rounds`` other than the default with an
        ``init`` other than ``k-means||``. So is what :func:`run_job` would refuse before
        any work for reasons the spec shows: a plot format, overlapping outputs, a
        ``plot_features`` name outside an explicit ``input.columns``, key columns named as
        the labels' columns.

    Examples
    --------
    >>> from dask_kmeans.jobs import validate_job
    >>> spec = validate_job({"job": {"kind": "sweep", "input": {"url": "data/"},
    ...                              "k": "2..4", "output": {"table": "sweep.csv"}}})
    >>> spec["job"]["params"]["max_iter"], spec["job"]["output"]["overwrite"]
    (300, False)
    """
    errors: list[tuple[str, str]] = []
    if spec is None:
        raise JobSpecError([("", "the job spec is empty; it needs a 'job' mapping with a "
                                 "'kind', like {job: {kind: fit, ...}}")], source)
    out = S.walk(_schema(), spec, "", errors)
    if isinstance(spec, Mapping) and isinstance(spec.get("job"), Mapping) \
            and spec["job"].get("kind") == "sweep":
        errors = [(path, _SWEEP_REFUSES[path]) if path in _SWEEP_REFUSES else (path, problem)
                  for path, problem in errors]
    job = (out or {}).get("job")
    if isinstance(job, dict):
        base = Path(base_dir) if base_dir is not None else None
        job["cluster"] = _check_cluster_entry(job.get("cluster"), base, errors)
        k = job.get("k")
        # A list's items were checked above; only its length is left (and None marks an
        # item that was wrong).
        if isinstance(k, str) or (isinstance(k, list) and len(k) > MAX_K_VALUES):
            try:
                parse_k(k)
            except ValueError as exc:
                errors.append(("job.k", str(exc)))
        # No parameter accepted and ignored: the same rule as the fit command's options.
        _refuse_ignored(job, errors)
        _refuse_at_run(job, errors)
    if errors:
        raise JobSpecError(errors, source)
    return out


def parse_assignment(text: str, option: str = "--set") -> tuple[list[str], Any]:
    """Split ``"key.path=value"`` into its keys and its value (see :func:`parse_value`).

    Parameters
    ----------
    text : str
        The assignment.
    option : str, default="--set"
        The command-line option it came from, for the messages.

    Raises
    ------
    JobSpecError
        If there is no ``=``, a key is empty, or a value starting with ``[`` or ``{`` is
        not a YAML flow collection (the message does not repeat the value: it may be a
        credential).

    Examples
    --------
    >>> parse_assignment("client_kwargs.region_name=eu-west-1")
    (['client_kwargs', 'region_name'], 'eu-west-1')
    >>> parse_assignment("params.tol=1e-4")
    (['params', 'tol'], 0.0001)
    >>> parse_assignment("password=0123", "--storage-option")
    (['password'], '0123')
    >>> parse_assignment("profile='2024'", "--storage-option")
    (['profile'], '2024')
    """
    what = f"{option} {text.split('=', 1)[0].strip()}"
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise JobSpecError([(what, "expected key.path=value, like params.n_clusters=5")])
    try:
        value = parse_value(raw)
    except S.AmbiguousBool as exc:
        raise JobSpecError([(key, f"the value given by {what}: {exc.problem}")]) from None
    except yaml.YAMLError:
        # The value is not echoed: it may be a credential.
        raise JobSpecError([(key, f"the value given by {what} starts with [ or {{ but is not "
                                  "valid YAML (a flow list or mapping)")]) from None
    return key.split("."), value


def apply_overrides(spec: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of ``spec`` with ``key.path=value`` assignments applied.

    Paths are relative to ``job`` (a leading ``job.`` is allowed); missing mappings on the
    way are created. Values are typed by :func:`parse_value`: ``5`` is an int, ``1e-4`` a
    float, ``true`` a bool, ``[2, 4]`` a list, ``null`` None, a quoted value like ``'5'``
    the string inside, and anything else a string.

    Examples
    --------
    >>> apply_overrides({"job": {"params": {"n_clusters": 8}}},
    ...                 ["params.n_clusters=5", "job.params.tol=1e-3"])
    {'job': {'params': {'n_clusters': 5, 'tol': 0.001}}}
    """
    out = copy.deepcopy(dict(spec)) if spec is not None else {}
    for text in overrides:
        keys, value = parse_assignment(text)
        if keys[0] == "job":
            keys = keys[1:]
        if not keys:
            raise JobSpecError([("job", "--set cannot replace the whole job")])
        if not isinstance(out.get("job"), dict):
            out["job"] = {}
        target = out["job"]
        for i, key in enumerate(keys[:-1]):
            if target.get(key) is None:
                target[key] = {}
            if not isinstance(target[key], dict):
                where = ".".join(["job", *keys[: i + 1]])
                raise JobSpecError([(where, f"--set {'.'.join(keys)}: {where} is "
                                            f"{S.show(target[key])}, not a mapping")])
            target = target[key]
        target[keys[-1]] = value
    return out


def load_job(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a job spec file, apply ``key.path=value`` overrides, and validate the result.

    Parameters
    ----------
    path : str or path-like
        The YAML file.
    overrides : sequence of str
        Assignments like ``"params.n_clusters=5"`` (see :func:`apply_overrides`), applied
        before validation.

    Returns
    -------
    dict
        The validated spec (see :func:`validate_job`); a relative ``job.cluster`` path is
        taken relative to the file's directory.

    Raises
    ------
    JobSpecError
        If the file cannot be read (missing, a directory, not UTF-8), is not YAML, or the
        spec does not follow the schema; the message starts with the file name.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = pathlib.Path(tmp, "job.yaml")
    ...     _ = p.write_text("job:\\n  kind: fit\\n  input: {url: data/}\\n"
    ...                      "  params: {n_clusters: 8}\\n  output: {model: model/}\\n")
    ...     load_job(p, ["params.n_clusters=5"])["job"]["params"]["n_clusters"]
    5
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobSpecError([("", "no such file")], str(p)) from None
    except OSError as exc:
        raise JobSpecError([("", f"cannot read it: {exc.strerror or exc}")], str(p)) from None
    except UnicodeDecodeError as exc:
        raise JobSpecError([("", S.not_utf8(exc))], str(p)) from None
    try:
        raw = S.load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobSpecError([(where, f"not valid YAML: {problem}")], str(p)) from None
    if overrides:
        if raw is not None and not isinstance(raw, Mapping):
            raise JobSpecError([("", f"expected a mapping, got {S.show(raw)}")], str(p))
        raw = apply_overrides(raw or {}, overrides)
    return validate_job(raw, base_dir=p.parent, source=str(p))


def cluster_target(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `dask_kmeans.cluster.connect` for a validated spec.

    ``{}`` when the spec names no cluster (``connect()`` then reaches the scheduler at
    ``DASK_SCHEDULER_ADDRESS``, else starts a local cluster); otherwise
    ``{"config_or_path": path or config}`` or ``{"scheduler": address}``.
    """
    entry = spec["job"].get("cluster")
    if entry is None:
        return {}
    if isinstance(entry, Mapping) and set(entry) == {"scheduler"}:
        return {"scheduler": entry["scheduler"]}
    return {"config_or_path": entry}


# --------------------------------------------------------------------------- credentials


def secrets(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The credential values in a spec, longest first, to keep out of any message.

    Values of ``storage_options`` keys named like credentials (``key``, ``secret``,
    ``token``, ``password``...), at any depth, and passwords in URLs.
    """
    return secret_values(spec, urls_in_values=True)


def scrub(text: str, values: Sequence[str]) -> str:
    """``text`` with every one of ``values`` replaced by ``***``."""
    for value in values:
        text = text.replace(value, "***")
    return text


def _scrub_all(obj: Any, values: Sequence[str]) -> Any:
    if isinstance(obj, str):
        return scrub(obj, values)
    if isinstance(obj, dict):
        return {k: _scrub_all(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub_all(v, values) for v in obj]
    return obj


@contextlib.contextmanager
def _io_errors(url: str, values: Sequence[str], doing: str) -> Iterator[None]:
    """File-system errors of this module, re-raised naming ``url`` without credentials."""
    try:
        yield
    except (FileNotFoundError, PermissionError) as exc:
        raise type(exc)(f"{type(exc).__name__} while {doing} {strip_credentials(url)}: "
                        f"{scrub(str(exc), values)}") from None
    except OSError as exc:
        raise OSError(f"I/O error while {doing} {strip_credentials(url)}: "
                      f"{type(exc).__name__}: {scrub(str(exc), values)}") from None
    except storage_error_types() as exc:
        raise OSError(storage_error_message(exc, strip_credentials(url), values,
                                            doing)) from None


# --------------------------------------------------------------------------- running


def _protocol(url: str) -> str:
    import fsspec

    return fsspec.core.split_protocol(url)[0] or "file"


def _input_options(url: str, job: Mapping) -> dict:
    """Options for reading ``url``: the input's when on the same kind of storage."""
    inp = job["input"]
    return dict(inp["storage_options"]) if _protocol(url) == _protocol(inp["url"]) else {}


def _output_options(url: str, job: Mapping) -> dict:
    """Options for writing ``url``: output.storage_options, else the input's (same protocol)."""
    given = job["output"].get("storage_options")
    return dict(given) if given is not None else _input_options(url, job)


class _Claims:
    """The outputs a submitted job is about to write, noted in its record on the scheduler
    (``claimed``: each URL without credentials, and whether something was there before the
    job), so that when its worker dies and the scheduler runs the job again, the new attempt
    first removes what the dead one may have left where nothing was before the job, whole
    or half written (:func:`_remove_earlier_outputs`), and nothing else."""

    def __init__(self, earlier: Mapping[str, bool], note: Callable[[dict], None]):
        self.earlier = dict(earlier)
        self.noted = dict(earlier)
        self._note = note

    def before(self, url: str) -> bool | None:
        """Whether something was at ``url`` before the job (None: no earlier claim)."""
        return self.earlier.get(strip_credentials(url))

    def claim(self, existed: Mapping[str, bool]) -> None:
        new = {strip_credentials(url): was for url, was in existed.items()
               if strip_credentials(url) not in self.noted}
        if new:
            self.noted.update(new)
            self._note(dict(self.noted))


#: The claims of the submitted job running in this context (None outside one).
_CLAIMS: contextvars.ContextVar[_Claims | None] = contextvars.ContextVar(
    "dask_kmeans_job_claims", default=None)


def _refuse_existing(url: str, options: Mapping, overwrite: bool, *, directory: bool,
                     kind: str | None = None) -> None:
    """Stop before any work when an output is already there and may not be replaced, or
    cannot be written there at all, or holds output of another ``kind`` ("model" or
    "labels", directories only; see :func:`dask_kmeans.io.check_output`)."""
    from .io import check_output

    check_output(url, options, overwrite=overwrite, directory=directory, kind=kind,
                 hint="set output.overwrite: true (--overwrite or --set output.overwrite=true) "
                      "to replace it")


def _place(protocol: str, path: str, pattern: bool = False) -> tuple[str, str, bool]:
    """A location as :func:`_overlapping` compares them: ``(protocol, path, is a glob)``.
    An input's glob keeps its wildcards, compared segment by segment (a ``**`` stands for
    the directory before it); an output's name is taken as written (its writers do). The
    fixed folders of a local path are resolved (two names of one place: a symlink)."""
    segments = path.strip("/").split("/")
    magic = [i for i, seg in enumerate(segments) if glob.has_magic(seg)] if pattern else []
    deep = [i for i in magic if "**" in segments[i]]
    if deep:
        segments, magic = segments[:deep[0]], []
    fixed, rest = (segments[:magic[0]], segments[magic[0]:]) if magic else (segments, [])
    path = posixpath.normpath("/" + "/".join(fixed))
    if protocol in ("file", "local"):
        path = os.path.realpath(path)
    return protocol, "/".join([path.rstrip("/"), *rest]) if rest else path, bool(rest)


def _overlap(a: tuple[str, str, bool], b: tuple[str, str, bool]) -> bool:
    """Whether two places are the same or one is inside the other; against a glob, whether
    the other could be, hold or be inside a match (input ``*.parquet`` and output
    ``out/model`` in the same folder do not overlap; they did, the glob taken for its
    folder)."""
    if a[0] != b[0]:
        return False
    if not (a[2] or b[2]):
        return a[1] == b[1] or a[1].startswith(b[1].rstrip("/") + "/") \
            or b[1].startswith(a[1].rstrip("/") + "/")
    # At most one is a glob: only inputs are, and two inputs are not compared.
    pattern, other = (a[1], b[1]) if a[2] else (b[1], a[1])
    g, o = pattern.strip("/").split("/"), other.strip("/").split("/")
    return all(fnmatch.fnmatchcase(o[i], g[i]) for i in range(min(len(g), len(o))))


def _where(url: str, options: Mapping, values: Sequence[str],
           is_input: bool) -> tuple[str, str, bool]:
    """A URL's file system and normalised absolute path, to compare locations."""
    import fsspec

    with _io_errors(url, values, "checking"):
        fs, path = fsspec.core.url_to_fs(url, **options)
    return _place(fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0], path,
                  is_input)


def _where_in_spec(url: str, is_input: bool) -> tuple[str, str, bool] | None:
    """:func:`_where` from the URL alone, for :func:`validate_job`; None where that takes
    more (a chained URL, a file system whose package is not installed here): the run
    compares those."""
    import fsspec

    if "::" in url:
        return None
    try:
        cls = fsspec.get_filesystem_class(fsspec.core.split_protocol(url)[0] or "file")
        path = cls._strip_protocol(url)
    except Exception:  # noqa: BLE001 - an unknown protocol or a missing package
        return None
    return _place(cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0], path,
                  is_input)


def _locations(job: Mapping) -> list[tuple[str, str, bool]]:
    """A job's outputs, then its inputs, as ``(key, url, is_input)``: the places that
    must not overlap (``params.checkpoint`` is written, so it is an output)."""
    out, params = job.get("output") or {}, job.get("params") or {}
    outputs = {"fit": ("model", "labels", "plot"), "predict": ("labels",),
               "sweep": ("table", "plot")}.get(job.get("kind"), ())
    places = [(f"output.{name}", out.get(name), False) for name in outputs]
    places.append(("params.checkpoint", params.get("checkpoint"), False))
    places += [("input.url", (job.get("input") or {}).get("url"), True),
               ("model", job.get("model"), True)]
    return [(key, url, is_input) for key, url, is_input in places if isinstance(url, str)]


def _overlapping(places: Sequence[tuple[str, str, bool, tuple[str, str, bool] | None]]):
    """The pairs of ``places`` (``(key, url, is_input, where)``, outputs first) that are
    the same location or one inside the other, but for two inputs: writing one would
    replace or damage the other (a fit with the same model and labels directory left
    neither usable, and exited 0)."""
    for i, (key_a, url_a, input_a, where_a) in enumerate(places):
        for key_b, url_b, input_b, where_b in places[i + 1:]:
            if (input_a and input_b) or where_a is None or where_b is None:
                continue
            if _overlap(where_a, where_b):
                yield key_a, url_a, key_b, url_b


def _overlap_problem(url_a: str, key_b: str, url_b: str) -> str:
    return (f"{strip_credentials(url_a)} and {key_b} ({strip_credentials(url_b)}) are the same "
            "location or one is inside the other: writing one would replace or damage the "
            "other. Choose separate locations.")


def _refuse_overlaps(job: Mapping, values: Sequence[str]) -> None:
    """Stop before any work when two of the job's outputs, or an output and an input,
    overlap (:func:`_overlapping`). :func:`validate_job` refuses those it can tell from
    the URLs alone; this compares the URLs as the file systems see them."""
    places = [(key, url, is_input,
               _where(url, _input_options(url, job) if is_input else _output_options(url, job),
                      values, is_input))
              for key, url, is_input in _locations(job)]
    for key_a, url_a, key_b, url_b in _overlapping(places):
        raise ValueError(f"{key_a}: {_overlap_problem(url_a, key_b, url_b)}")


def _refuse_at_run(job: dict[str, Any], errors: list) -> None:
    """Refuse what :func:`run_job` would refuse before any work for reasons the spec alone
    shows: a plot of a format by its extension that is not written, outputs that overlap
    each other or an input (where the URLs alone tell: not a chained URL, nor a file
    system not installed here), a ``plot_features`` entry that is not among an explicit
    ``input.columns``, and key columns named as the labels' columns when labels are
    written. Keys already reported as wrong are left to that report."""
    from .report import plot_format

    bad = [path for path, _ in errors]

    def wrong(key: str) -> bool:  # the key, or an item in it, is reported already
        return any(p == key or p.startswith((key + ".", key + "[")) for p in bad)

    if wrong("job.kind"):
        return
    inp, out = job.get("input") or {}, job.get("output") or {}
    if isinstance(out.get("plot"), str) and not wrong("job.output.plot"):
        try:
            plot_format(out["plot"])
        except ValueError as exc:
            errors.append(("job.output.plot", str(exc)))
    places = [(key, url, is_input, _where_in_spec(url, is_input))
              for key, url, is_input in _locations(job) if not wrong(f"job.{key}")]
    for key_a, url_a, key_b, url_b in _overlapping(places):
        errors.append((f"job.{key_a}", _overlap_problem(url_a, key_b, url_b)))
    columns, wanted = inp.get("columns"), out.get("plot_features")
    if columns and wanted and not (wrong("job.input.columns")
                                   or wrong("job.output.plot_features")):
        unknown = [f for f in wanted if f not in columns]
        if unknown:
            hint = S.did_you_mean(unknown, columns)
            errors.append(("job.output.plot_features",
                           f"{', '.join(map(repr, unknown))} is not a feature of this fit"
                           f"{hint + ' The' if hint else '; the'} features (input.columns) "
                           f"are {', '.join(columns)}."))
    if out.get("labels") and inp.get("key_columns") and not wrong("job.input.key_columns"):
        try:
            check_label_keys(inp["key_columns"])
        except ValueError as exc:
            errors.append(("job.input.key_columns", str(exc)))


def _open(job: Mapping, metric: str, standardize: bool, *, columns=None, dtype=None):
    """The job's input; with ``missing: drop`` and the cosine metric, rows of zero norm
    (no direction) are skipped too, unless the rows are standardised: those are not of
    zero norm then, and the rows that are (equal to the feature means) are refused by
    the fit (``K.ZeroNormError``). ``columns``: the model's features, when the job names
    none (a predict)."""
    from .io import column_labels, open_parquet

    inp = job["input"]
    labels = ("input.columns (--columns)" if inp["columns"] or not columns
              else "the model's features", "input.key_columns (--key)")
    with column_labels(*labels):
        return open_parquet(inp["url"], inp["columns"] or columns,
                            dtype=inp["dtype"] or dtype or "float64",
                            storage_options=inp["storage_options"], missing=inp["missing"],
                            key_columns=inp["key_columns"] or None,
                            drop_zero_norm=(inp["missing"] == "drop" and metric == "cosine"
                                            and not standardize),
                            chunk_bytes=inp["chunk_bytes"])


def _kmeans(params: Mapping, n_clusters: int):
    from .estimator import KMeans

    return KMeans(n_clusters=n_clusters, **{k: v for k, v in params.items()
                                            if k != "n_clusters"})


def _check_plot(url: str | None, job: Mapping) -> None:
    """Before any work: matplotlib is there, and the plot may be written there in a format
    its extension names."""
    if url:
        from .report import check_plotting, plot_format

        check_plotting()
        _refuse_existing(url, _output_options(url, job), job["output"]["overwrite"],
                         directory=False)
        plot_format(url)


def _before_job(fs, path: str) -> bool | frozenset[str]:
    """What is at an output's ``path`` before the job writes it: False for nothing; the
    names in a directory that holds no committed output (empty, or what interrupted writes
    left: ``check_output`` lets a job write into it as into a new location); True for
    anything else (a file, or output the job replaces with ``output.overwrite``)."""
    from .io import SUCCESS_MARKER

    if not fs.exists(path):
        return False
    if not fs.isdir(path):
        return True
    names = frozenset(_names_in(fs, path))
    return True if SUCCESS_MARKER in names else names


def _names_in(fs, path: str) -> list[str]:
    """The names in the directory ``path``, listed afresh (not an object store's marker
    of the folder itself)."""
    fs.invalidate_cache(path)
    here = fs._strip_protocol(path).rstrip("/")
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)
            if p.rstrip("/") != here]


def _undo(fs, path: str, before: bool | frozenset[str], parents: Sequence[str]) -> None:
    """Remove what a failed job wrote at ``path``, given what was there :func:`_before_job`:
    the whole output and the directories made for it where nothing was; what is new in a
    directory that held no output (the directory itself stays, as the user made it)."""
    from .io import remove_empty_dirs

    if before is False:
        remove_exactly(fs, path)
        remove_empty_dirs(fs, parents)
    elif before is not True and fs.isdir(path):
        here = fs._strip_protocol(path).rstrip("/")
        for name in _names_in(fs, path):
            if name not in before:
                with contextlib.suppress(Exception):
                    remove_exactly(fs, posixpath.join(here, name))


@contextlib.contextmanager
def _new_outputs_undone(job: Mapping, urls: Sequence[str | None]):
    """Around a job's writes: when one fails, the outputs written before it where nothing
    was, or into a directory that held no output (an empty one), are removed again, so that
    a failed job leaves none of its outputs behind (one it replaced cannot be brought back;
    the job writes those after what may fail). Yields ``made(url, result)``, to call as
    each output is written; it returns ``result``.

    In a submitted job the outputs are first noted in its record (:class:`_Claims`)."""
    import fsspec

    from .io import missing_parents

    claims = _CLAIMS.get()
    existed = {}
    for url in filter(None, urls):
        fs, path = fsspec.core.url_to_fs(url, **_output_options(url, job))
        # In a rerun, what was there before the job, not what the dead attempt left.
        before = claims.before(url) if claims is not None else None
        existed[url] = (fs, path, _before_job(fs, path) if before is None else before,
                        missing_parents(fs, path))
    if claims is not None:
        # A directory that held no output counts as nothing there: a rerun removes what
        # the dead attempt wrote into it (and the directory, made again by the write).
        claims.claim({url: was is True for url, (_, _, was, _) in existed.items()})
    written: list[str] = []

    def made(url: str, result):
        written.append(url)
        return result

    try:
        yield made
    except BaseException:
        for url in written:
            with contextlib.suppress(Exception):
                _undo(*existed[url])
        raise


def _records(table) -> list[dict[str, Any]]:
    """A profile table as JSON records, every float to the bit (pandas' ``to_json`` keeps
    10 decimal places: a mean of 2e-12 became 0, one of 1.70000000504e18 lost digits),
    NaN (an empty cluster) as null."""
    import numpy as np

    def plain(value):
        value = value.item() if isinstance(value, np.generic) else value
        return None if isinstance(value, float) and math.isnan(value) else value

    return [{str(k): plain(v) for k, v in row.items()}
            for row in table.reset_index().to_dict(orient="records")]


def _run_fit(job: Mapping, values: Sequence[str]) -> dict[str, Any]:
    from .io import write_labels

    out = job["output"]
    _refuse_overlaps(job, values)
    for name in ("model", "labels"):
        if out[name]:
            _refuse_existing(out[name], _output_options(out[name], job), out["overwrite"],
                             directory=True, kind=name)
    _check_plot(out["plot"], job)
    if job["params"].get("checkpoint"):
        from ._checkpoint import check_location

        check_location(job["params"]["checkpoint"])
    src = _open(job, job["params"]["metric"], job["params"].get("standardize", False))
    if out["labels"]:  # before any work, as write_labels would only after the fit
        check_label_keys(src.key_columns)
    if out["plot_features"]:
        unknown = [f for f in out["plot_features"] if f not in src.feature_names]
        if unknown:
            hint = S.did_you_mean(unknown, src.feature_names)
            raise ValueError(f"output.plot_features (--plot-features): "
                             f"{', '.join(map(repr, unknown))} is not a feature of this fit"
                             f"{hint + ' The' if hint else '; the'} features are "
                             f"{', '.join(src.feature_names)}.")
    params = job["params"]
    logger.info("fit: %d rows of %s, k=%d", src.n_rows, src.url, params["n_clusters"])
    km = _kmeans(params, params["n_clusters"]).fit(src)
    result: dict[str, Any] = {
        "kind": "fit", "input": src.url, "n_rows": src.n_rows,
        "features": list(src.feature_names), "n_clusters": int(params["n_clusters"]),
        "n_iter": int(km.n_iter_), "inertia": float(km.inertia_), "model": None,
        "labels": None, "profile": None, "profile_files": [], "plot": None,
    }
    if not out["model"]:
        result["centers"] = km.cluster_centers_.tolist()
    # The passes that may fail come before the outputs they would leave half made: the
    # profile's, then the labels' (written whole or not at all), then the model.
    table = None
    if out["profile"]:
        from .report import profile

        table = profile(km, src)
        result["profile"] = _records(table)
    with _new_outputs_undone(job, [out["labels"], out["model"], out["plot"]]) as made:
        if out["labels"]:
            labels, distances = km.predict(src, return_distance=True)
            result["labels"] = made(out["labels"], write_labels(
                src, labels, distances, out["labels"], overwrite=out["overwrite"],
                storage_options=_output_options(out["labels"], job)))
        if out["model"]:
            result["model"] = made(out["model"], km.save(
                out["model"], overwrite=out["overwrite"],
                storage_options=_output_options(out["model"], job)))
            if table is not None:
                from .report import write_profile

                result["profile_files"] = write_profile(
                    table, out["model"], storage_options=_output_options(out["model"], job))
        if out["plot"]:
            from .report import plot_clusters

            result["plot"] = made(out["plot"], plot_clusters(
                km, src, out["plot"], features=out["plot_features"],
                random_state=params["random_state"] or 0,
                storage_options=_output_options(out["plot"], job)))
    from . import _runtime as R

    R.cancel(km.labels_)  # still computing when no output used them; the job has no use
    return result


def _run_predict(job: Mapping, values: Sequence[str]) -> dict[str, Any]:
    from .estimator import load
    from .io import write_labels

    out = job["output"]
    _refuse_overlaps(job, values)
    _refuse_existing(out["labels"], _output_options(out["labels"], job), out["overwrite"],
                     directory=True, kind="labels")
    km = load(job["model"], storage_options=_input_options(job["model"], job))
    names = getattr(km, "feature_names_in_", None)
    given = job["input"]["columns"]
    if given and names is not None and sorted(given) != sorted(str(n) for n in names):
        raise ValueError(
            f"input.columns (--columns) {list(given)} are not the features of the model at "
            f"{strip_credentials(job['model'])}: {[str(n) for n in names]}. Leave them out "
            "to read the model's.")
    src = _open(job, km.metric, hasattr(km, "feature_mean_"),
                columns=None if names is None else [str(n) for n in names],
                dtype=km.cluster_centers_.dtype.name)
    if out["labels"]:  # before any work, as write_labels would only after the pass
        check_label_keys(src.key_columns)
    logger.info("predict: %d rows of %s with the model at %s", src.n_rows, src.url,
                strip_credentials(job["model"]))
    labels, distances = km.predict(src, return_distance=True)
    with _new_outputs_undone(job, [out["labels"]]) as made:
        url = made(out["labels"], write_labels(
            src, labels, distances, out["labels"], overwrite=out["overwrite"],
            storage_options=_output_options(out["labels"], job)))
    return {"kind": "predict", "model": strip_credentials(job["model"]), "input": src.url,
            "n_rows": src.n_rows, "n_clusters": int(km.cluster_centers_.shape[0]),
            "labels": url}


def _table_bytes(url: str, rows: list[dict]) -> bytes:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["k", "inertia", "n_iter", "silhouette"])
    name = url.split("?", 1)[0].lower()
    if name.endswith(".csv"):
        return frame.to_csv(index=False).encode()
    if name.endswith(".json"):
        return (json.dumps(rows, indent=2) + "\n").encode()
    buffer = _stdio.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _write_table(url: str, rows: list[dict], options: Mapping, overwrite: bool,
                 values: Sequence[str]) -> str:
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    from .io import write_bytes_atomic

    _refuse_existing(url, options, overwrite, directory=False)
    data = _table_bytes(url, rows)
    with _io_errors(url, values, "writing"):
        fs, path = fsspec.core.url_to_fs(url, **options)
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(fs._parent(path), exist_ok=True)
        write_bytes_atomic(fs, path, data)
    return strip_credentials(url)


def _run_sweep(job: Mapping, values: Sequence[str]) -> dict[str, Any]:
    out = job["output"]
    _refuse_overlaps(job, values)
    if out["table"]:
        _refuse_existing(out["table"], _output_options(out["table"], job), out["overwrite"],
                         directory=False)
    _check_plot(out["plot"], job)
    ks = parse_k(job["k"])
    src = _open(job, job["params"]["metric"], job["params"].get("standardize", False))
    if max(ks) > src.n_rows:
        raise ValueError(f"k={max(ks)} is more than the {src.n_rows} rows of {src.url}: every "
                         "cluster needs at least one row; lower the largest K.")
    from .estimator import sweep

    start = time.perf_counter()
    # The schema lets through only the params that sweep takes (validate_job).
    res = sweep(src, ks, **job["params"])
    seconds = round(time.perf_counter() - start, 3)
    rows = [{"k": k, "inertia": inertia, "n_iter": n_iter,
             "silhouette": None if sil is None else float(sil)}
            for k, inertia, n_iter, sil in zip(
                res.ks, res.inertias, res.n_iter,
                res.silhouettes or [None] * len(res.ks), strict=True)]
    for row in rows:
        logger.info("sweep: k=%d inertia=%.6g n_iter=%d", row["k"], row["inertia"],
                    row["n_iter"])
    logger.info("sweep: suggested k=%d (%s)", res.suggested_k, res.reason)
    table = plot = None
    with _new_outputs_undone(job, [out["table"], out["plot"]]) as made:
        if out["table"]:
            table = made(out["table"], _write_table(
                out["table"], rows, _output_options(out["table"], job), out["overwrite"],
                values))
        if out["plot"]:
            from .report import plot_elbow

            plot = made(out["plot"], plot_elbow(
                res.ks, res.inertias, out["plot"], silhouettes=res.silhouettes,
                suggested_k=res.suggested_k, storage_options=_output_options(out["plot"], job)))
    return {"kind": "sweep", "input": src.url, "n_rows": src.n_rows,
            "features": list(src.feature_names), "table": table, "plot": plot,
            "results": rows, "suggested_k": res.suggested_k, "reason": res.reason,
            "seconds": seconds}


_RUNNERS = {"fit": _run_fit, "predict": _run_predict, "sweep": _run_sweep}


def run_job(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run a job with the active Dask client and return a summary of what it did.

    The caller chooses where the work runs: inside ``with connect(...)`` (see
    `dask_kmeans.cluster.connect`), with any ``distributed.Client`` as default, or else on
    dask's local threads. ``spec["job"]["cluster"]`` is not used here.

    Parameters
    ----------
    spec : mapping
        A job spec; validated again here, so a spec written as a dict works too.

    Returns
    -------
    dict
        JSON-serialisable, without credentials. Always ``kind``, ``input`` (URL),
        ``n_rows`` and ``seconds``. fit: ``features``, ``n_clusters``, ``n_iter``,
        ``inertia``, ``model``, ``labels`` and ``plot`` (URLs or None), ``profile`` (one
        record per cluster, or None with ``output.profile: false``), ``profile_files`` and,
        when no model was saved, ``centers``. predict: ``model``, ``n_clusters``,
        ``labels``. sweep: ``features``, ``table`` and ``plot`` (URLs or None),
        ``results`` (a list of ``{k, inertia, n_iter, silhouette}``), ``suggested_k`` and
        ``reason``.

    Raises
    ------
    JobSpecError
        If the spec does not follow the schema.
    FileExistsError
        If an output exists and ``output.overwrite`` is false (checked before any work).
    ValueError, FileNotFoundError, PermissionError, OSError
        From reading the input, fitting or writing (see `dask_kmeans.open_parquet`,
        `dask_kmeans.KMeans`); their messages hold no credentials.
    """
    spec = validate_job(spec)
    job = spec["job"]
    values = secrets(spec)
    start = time.perf_counter()
    result = _RUNNERS[job["kind"]](job, values)
    result["seconds"] = round(time.perf_counter() - start, 3)
    # Every URL above was stripped already; this is the last line of defence.
    return _scrub_all(result, values)


# --------------------------------------------------------------------------- submitted jobs


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _for_cluster(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as the job task gets it: no cluster entry, local paths made absolute.

    Workers have their own current directory, so relative paths are resolved here, where
    the user wrote them.
    """
    out = copy.deepcopy(dict(spec))
    job = out["job"]
    job["cluster"] = None

    def absolute(url):
        return os.path.abspath(os.path.expanduser(url)) if url and "://" not in url else url

    job["input"]["url"] = absolute(job["input"]["url"])
    if "model" in job:
        job["model"] = absolute(job["model"])
    for key in ("model", "labels", "table", "plot"):
        if job["output"].get(key):
            job["output"][key] = absolute(job["output"][key])
    if job.get("params", {}).get("checkpoint"):
        job["params"]["checkpoint"] = absolute(job["params"]["checkpoint"])
    return out


def _one_line(exc: BaseException, values: Sequence[str]) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {scrub(text, values)}"


def keep_finished() -> int | None:
    """The setting :data:`KEEP_FINISHED`, checked: an int >= 1, or None to keep every record.

    Raises
    ------
    JobConfigError
        If it is anything else.
    """
    value = dask.config.get(KEEP_FINISHED, 100)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise JobConfigError([(KEEP_FINISHED, f"expected an int >= 1 or null, got {value!r}")])


def _ender(job_id: str, record: dict[str, Any], keep: int | None):
    """The function the scheduler runs (``Client.run_on_scheduler``) when a job ends: it
    stores the job's final ``record``, numbered after every job that ended before it, then
    forgets the records of ended (finished or failed) jobs beyond the ``keep`` most recent.

    It runs in the scheduler's event loop, so no other record changes meanwhile, and jobs
    ending together are numbered in the order the scheduler sees them, whatever the workers'
    clocks. Records of submitted or running jobs are kept. Returns how many it forgot.
    Defined in here so that it is pickled by value: the scheduler need not import dask_kmeans.
    """

    def end(dask_scheduler, root=METADATA_KEY, info_key=FORGOTTEN_KEY, job_id=job_id,
            record=record, keep=keep) -> int:
        meta = dask_scheduler.task_metadata
        if not isinstance(meta.get(root), dict):
            meta[root] = {}
        records = meta[root]
        info = meta.get(info_key)
        info = dict(info) if isinstance(info, dict) else {}
        order = dict(info.get("order") or {})  # job id -> number of its end
        info["seq"] = int(info.get("seq") or 0) + 1
        order[job_id] = info["seq"]
        records[job_id] = record
        drop = []
        if keep is not None:
            # Oldest first: by number; records ended without one (a scheduler that refused
            # this function then) before, by their own clocks.
            ended = sorted((order.get(jid, 0), str(r.get("finished") or ""), jid)
                           for jid, r in records.items()
                           if isinstance(r, dict) and r.get("state") in ("finished", "failed"))
            drop = ended[:max(0, len(ended) - keep)]
        for _, _, jid in drop:
            del records[jid]
            order.pop(jid, None)
        if drop:
            info["count"] = int(info.get("count") or 0) + len(drop)
            info["keep"] = keep
            info["newest"] = max([when for _, when, _ in drop] + [str(info.get("newest") or "")])
        info["order"] = {jid: n for jid, n in order.items() if jid in records}
        meta[info_key] = info
        return len(drop)

    return end


def _record_end(client: Client, job_id: str, record: dict[str, Any], keep: int | None) -> None:
    """Store a job's final record through :func:`_ender`; where the scheduler refuses to run
    it, store the record plainly and forget nothing, with a warning in the log."""
    try:
        client.run_on_scheduler(_ender(job_id, record, keep))
    except Exception as exc:
        logger.warning("the scheduler keeps every job record: forgetting old ones failed "
                       "(%s)", _one_line(exc, ()))
        client.set_metadata([METADATA_KEY, job_id], record)


def _run_submitted(spec: dict[str, Any], job_id: str, record: dict[str, Any],
                   keep: int | None = None) -> None:
    """The job task: run the job on this worker and record its progress on the scheduler;
    then the scheduler forgets records of finished jobs beyond the ``keep`` most recent."""
    from distributed import get_worker, worker_client

    values = secrets(spec)
    # worker_client() secedes this thread from the worker's pool while the job waits for
    # its own tasks, so that a worker with one thread can still run them.
    with worker_client() as client:
        # A record still "running" is an earlier attempt's, whose worker died: the scheduler
        # runs the job again, and this attempt first removes the outputs that one noted
        # where nothing was before the job (a model killed half written would be refused
        # even with overwrite). One that ended already died before the scheduler heard of
        # it: the job is done.
        earlier = client.get_metadata([METADATA_KEY, job_id], None) or {}
        if earlier.get("state") in ("finished", "failed"):
            return
        rerun = earlier.get("state") == "running"
        record = {**record, "state": "running", "started": _now(),
                  "worker": get_worker().address,
                  "attempts": int(earlier.get("attempts", 1)) + 1 if rerun else 1,
                  "claimed": dict(earlier.get("claimed") or {}) if rerun else {}}
        client.set_metadata([METADATA_KEY, job_id], record)

        def note(outputs: dict) -> None:
            record["claimed"] = outputs
            client.set_metadata([METADATA_KEY, job_id], record)

        if rerun:
            _remove_earlier_outputs(spec, record["claimed"])
        claims = _CLAIMS.set(_Claims(record["claimed"], note))
        try:
            result = run_job(spec)
        except Exception as exc:  # every failure is recorded for `status`
            logger.warning("job %s failed: %s", job_id, _one_line(exc, values))
            record = {**record, "state": "failed", "finished": _now(),
                      "error": _one_line(exc, values)}
        else:
            record = {**record, "state": "finished", "finished": _now(), "result": result}
        finally:
            _CLAIMS.reset(claims)
        _record_end(client, job_id, record, keep)


def _remove_earlier_outputs(spec: Mapping[str, Any], claimed: Mapping[str, bool]) -> None:
    """Remove what a job's earlier attempt, whose worker died, may have written, whole or
    half written (a model directory without its marker is refused even with overwrite):
    where nothing was before the job, or anywhere with ``output.overwrite``, which lets
    the job replace what was there. Best effort: what cannot be removed stays, and the
    rerun then stops at it as at any existing output (without overwrite)."""
    import fsspec

    job = spec["job"]
    out = job["output"]
    for name in ("model", "labels", "plot", "table"):
        url = out.get(name)
        before = claimed.get(strip_credentials(url)) if url else None
        if before is False or (before is True and out["overwrite"]):
            with contextlib.suppress(Exception):
                fs, path = fsspec.core.url_to_fs(url, **_output_options(url, job))
                if fs.exists(path):
                    remove_exactly(fs, path)


def _task_state(client: Client, key: str) -> tuple[str | None, str | None] | None:
    """The scheduler's state of a task and its exception text; None when it cannot tell."""

    # Defined here so that it is pickled by value: the scheduler need not import dask_kmeans.
    def state(dask_scheduler, key=key):
        ts = dask_scheduler.tasks.get(key)
        return (None, None) if ts is None else (ts.state, ts.exception_text or None)

    try:
        return tuple(client.run_on_scheduler(state))
    except Exception:  # e.g. a scheduler that refuses pickled functions
        return None


def submit_job(spec: Mapping[str, Any], client: Client, *, timeout: float = 30) -> str:
    """Run a job as a task on ``client``'s cluster, which carries on when this process exits.

    The job's progress and result are recorded on the scheduler under its id, where
    :func:`job_status` finds them from any client of the same scheduler. When it ends, the
    scheduler forgets the records of finished or failed jobs beyond the most recent
    ``dask-kmeans.jobs.keep-finished`` (a Dask setting, read in this process; 100 by
    default). Inside the task the
    job runs with the worker's own client (the fit's tasks go to the same cluster).

    Parameters
    ----------
    spec : mapping
        A job spec (validated here). Relative local paths are made absolute against this
        process's directory, because workers have their own.
    client : distributed.Client
        A client of a scheduler that outlives this process (not a ``LocalCluster`` this
        process started: closing it would end the job).
    timeout : float, default=30
        Seconds to wait for the scheduler to acknowledge the task.

    Returns
    -------
    str
        The job id, like ``"fit-3f2c9a1b7d4e"``.

    Raises
    ------
    JobSpecError
        If the spec does not follow the schema.
    JobConfigError
        If ``dask-kmeans.jobs.keep-finished`` is not an int >= 1 or null.
    """
    from distributed import fire_and_forget

    spec = validate_job(spec)
    keep = keep_finished()
    job = spec["job"]
    job_id = f"{job['kind']}-{uuid.uuid4().hex[:12]}"
    payload = _for_cluster(spec)
    record = {"job_id": job_id, "kind": job["kind"], "state": "submitted",
              "submitted": _now(), "input": strip_credentials(payload["job"]["input"]["url"])}
    client.set_metadata([METADATA_KEY, job_id], record)
    key = _TASK_PREFIX + job_id
    future = client.submit(_run_submitted, payload, job_id, record, keep, key=key, pure=False)
    fire_and_forget(future)
    # Wait until the scheduler holds the task, so that this process may exit at once.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _task_state(client, key)
        current = client.get_metadata([METADATA_KEY, job_id], None) or {}
        if state is None or state[0] is not None or current.get("state") != "submitted":
            break
        time.sleep(0.05)
    del future
    return job_id


def job_status(job_id: str, client: Client) -> dict[str, Any]:
    """The state of a submitted job and, once finished, its result summary.

    Parameters
    ----------
    job_id : str
        As returned by :func:`submit_job`.
    client : distributed.Client
        A client of the scheduler the job was submitted to.

    Returns
    -------
    dict
        ``job_id``, ``kind``, ``state`` (one of :data:`STATES`), ``submitted``, and as they
        become known ``started``, ``worker``, ``attempts`` (runs of the job: its worker
        died when more than 1; a rerun first removes what the earlier attempt left where
        nothing was before the job), ``claimed`` (the outputs it noted before writing them,
        each URL with whether something was there before the job), ``finished``,
        ``result`` (the summary of :func:`run_job`) or ``error`` (one line, without
        credentials). ``lost`` means the
        scheduler no longer has the job's task although it never finished, for instance
        because its worker died more often than the scheduler allows.

    Raises
    ------
    UnknownJobError
        If the scheduler has no job of that id: it never had, it restarted since, or the job
        finished before the most recent ``dask-kmeans.jobs.keep-finished`` jobs and its record
        was forgotten (the message says how many it forgot).
    """
    record = client.get_metadata([METADATA_KEY, job_id], None)
    if record is None:
        forgotten = client.get_metadata([FORGOTTEN_KEY], None)
        why = ""
        if isinstance(forgotten, dict) and forgotten.get("count"):
            why = (f"; it has forgotten the records of {forgotten['count']} ended jobs, which "
                   f"finished by {forgotten['newest']}, keeping the {forgotten['keep']} most "
                   f"recent ({KEEP_FINISHED} where the job that last made it forget was "
                   "submitted)")
        raise UnknownJobError(f"no job {job_id!r} on the scheduler at {client.scheduler.address}"
                              ": check the id and the scheduler (a restarted scheduler forgets "
                              f"its jobs){why}")
    record = dict(record)
    if record.get("state") in ("submitted", "running"):
        state = _task_state(client, _TASK_PREFIX + job_id)
        if state is not None and state[0] in (None, "erred", "forgotten"):
            # The task is gone or failed outside run_job; read the record once more in case
            # it finished in between.
            again = dict(client.get_metadata([METADATA_KEY, job_id], record))
            if again.get("state") in ("submitted", "running"):
                again["state"] = "failed" if state[0] == "erred" else "lost"
                again["error"] = " ".join((state[1] or "the job's task is no longer on the "
                                           "scheduler and never finished").split())
                # Nothing of the job runs any more to remove what it wrote (a rerun would,
                # a failure in run_job does): say what may be left, which a new submission
                # of the same job would stop at.
                left = [url for url, before in (again.get("claimed") or {}).items()
                        if before is False]
                if left:
                    again["error"] += (
                        f"; what it may have written where nothing was before the job is "
                        f"left as it is: {', '.join(left)} (remove it, or set "
                        "output.overwrite: true, before running the job again)")
            record = again
    return record
