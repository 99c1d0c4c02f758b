"""Parquet on fsspec URLs as dask arrays, and atomically committed Parquet outputs.

:func:`open_parquet` turns a Parquet file, directory or hive-partitioned
dataset on any fsspec URL (local paths, ``file://``, ``s3://``, ``gs://``,
``abfs://``...) into a :class:`ParquetSource`: a row-chunked dask array of the
feature columns in chunks of up to ``chunk_bytes`` (consecutive small files
together, a large file in runs of its row groups), whose sizes come from the
Parquet footers, plus optional key columns aligned with it. Nothing but the
footers is read until the array is computed.

:func:`write_labels` writes one labelled Parquet part per input chunk into a
temporary prefix, moves the parts into place and writes a ``_SUCCESS`` marker
last; :func:`read_labels` refuses output without that marker.

Credentials travel in ``storage_options`` (or, for the file systems that read
them from a URL, ``ftp://``, ``sftp://``, ``smb://`` and ``http(s)://``, in its
``user:password@``; object-store URLs holding a password are refused, see
:data:`URL_CREDENTIALS_REFUSED`) and never appear in a message, a ``repr`` or a
written file. Errors of the storage libraries (an unreachable endpoint, an
unknown profile, missing credentials, an invalid bucket name) are raised as
:class:`OSError` naming the URL (see :func:`storage_error_types`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import glob
import html
import json
import os
import posixpath
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import dask
import dask.array as da
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from dask.base import tokenize
from dask.layers import ArrayValuesDep
from dask.utils import parse_bytes
from fsspec.implementations.local import LocalFileSystem

from ._runtime import pool_empty
from ._schema import did_you_mean

__all__ = [
    "ParquetSource",
    "open_parquet",
    "read_labels",
    "read_parquet",
    "strip_credentials",
    "write_labels",
]

MissingPolicy = Literal["error", "drop"]
MISSING_POLICIES = ("error", "drop")
FEATURE_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
#: Name of the marker that commits an output directory; readers require it.
SUCCESS_MARKER = "_SUCCESS"
LABELS_FORMAT = "dask-kmeans-labels"
#: The format a model's marker records (see :mod:`dask_kmeans.model`).
MODEL_FORMAT = "dask-kmeans-model"
#: The kinds of committed output, and the format each one's marker records.
OutputKind = Literal["labels", "model"]
_OUTPUT_FORMATS: dict[str, str] = {"labels": LABELS_FORMAT, "model": MODEL_FORMAT}
_HELD = {"labels": "dask_kmeans labels", "model": "a dask_kmeans model"}
_WANTED = {"labels": "labels", "model": "a model"}
LABEL_COLUMN = "cluster"
DISTANCE_COLUMN = "distance"
_PART_NAME = re.compile(r"^part-\d+(-[0-9a-f]{12})?\.parquet$")
#: A labels part of an interrupted commit (named by its commit, listed by no marker).
_COMMIT_PART = re.compile(r"^part-\d+-([0-9a-f]{12})\.parquet$")
#: Keys of ``storage_options`` (at any depth) whose values are treated as secrets.
CREDENTIAL_KEY = re.compile(
    r"secret|passw|token|credential|signature|session|connection_string|"
    r"access_?key|account_?key|private_?key|api_?key|(^|_)(key|sig|pwd|sas)$",
    re.IGNORECASE,
)
_METADATA_THREADS = 16


# --------------------------------------------------------------------------- credentials


def strip_credentials(url: str) -> str:
    """The URL without a ``user:password@`` part and without credential query parameters.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path.

    Returns
    -------
    str
        ``url`` with the password-bearing user info removed (a bare user name
        such as an Azure container, ``abfs://container@account...``, is kept) and
        with query parameters named like credentials (``sig``, ``token``,
        ``X-Amz-Signature``...) removed.

    Examples
    --------
    >>> strip_credentials("s3://AKIA:s3cr3t@bucket/data.parquet")
    's3://bucket/data.parquet'
    >>> strip_credentials("https://host/x.parquet?sig=abc&v=1")
    'https://host/x.parquet?v=1'
    >>> strip_credentials("/tmp/data.parquet")
    '/tmp/data.parquet'
    """
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = host
    query = parts.query
    if query:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                if not CREDENTIAL_KEY.search(k.replace("-", "_"))]
        query = urlencode(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _url_secrets(url: str) -> list[str]:
    """The password and the values of credential-named query parameters of a URL."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
              if v and CREDENTIAL_KEY.search(k.replace("-", "_"))]
    return found


def secret_values(obj: Any, url: str = "", *, urls_in_values: bool = False) -> tuple[str, ...]:
    """The secret strings to keep out of messages, longest first.

    The values of keys named like credentials (``key``, ``secret``, ``token``,
    ``password``...) at any depth of ``obj`` (mappings, lists; str or bytes), the
    password and credential query values of ``url``, and, with ``urls_in_values``,
    those of every URL among the other strings of ``obj`` (a job spec's URLs).
    Longest first, so that a secret containing another is replaced whole.
    """
    found: list[str] = []

    def walk(obj: Any, key: str = "") -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, str(k))
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, str | bytes) and obj:
            if key and CREDENTIAL_KEY.search(key):
                found.append(obj.decode(errors="replace") if isinstance(obj, bytes) else obj)
            elif urls_in_values and isinstance(obj, str) and "://" in obj:
                found.extend(_url_secrets(obj))

    walk(obj or {})
    if "://" in url:
        found.extend(_url_secrets(url))
    return tuple(sorted(set(found), key=len, reverse=True))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def scrub_url(text: str, url: Any) -> str:
    """``text`` without the password and credential query values of ``url`` (none when
    ``url`` is not a URL string), also where they appear as in a ``repr`` or in HTML (a
    notebook's view of an estimator escapes them)."""
    if not (isinstance(url, str) and "://" in url):
        return text
    forms = {form for secret in _url_secrets(url)
             for form in (secret, repr(secret)[1:-1], html.escape(secret),
                          html.escape(repr(secret)[1:-1]))}
    return _scrub(text, sorted(forms, key=len, reverse=True))


# --------------------------------------------------------------------------- locations

#: Object-store URL schemes whose file systems do not read credentials from a URL's
#: ``user:password@`` (s3fs and gcsfs take it for part of the bucket name, adlfs for part
#: of the container's), with the storage options that carry them there instead.
URL_CREDENTIALS_REFUSED = {
    "s3": "'key' and 'secret'", "s3a": "'key' and 'secret'",
    "gs": "'token'", "gcs": "'token'",
    "abfs": "'account_key' or 'sas_token'", "abfss": "'account_key' or 'sas_token'",
    "az": "'account_key' or 'sas_token'",
}

#: The errors that storage libraries behind fsspec raise besides OSError, as (module,
#: class): an invalid bucket name, an unknown profile, missing credentials, an endpoint
#: that cannot be reached (botocore), failed authentication (google-auth, Azure), an
#: HTTP error (gcsfs, aiohttp).
_STORAGE_ERRORS = (
    ("botocore.exceptions", "BotoCoreError"), ("botocore.exceptions", "ClientError"),
    ("google.auth.exceptions", "GoogleAuthError"), ("gcsfs.retry", "HttpError"),
    ("azure.core.exceptions", "AzureError"), ("aiohttp", "ClientError"),
)


def storage_error_types() -> tuple[type[BaseException], ...]:
    """The base classes of the errors of the storage libraries (:data:`_STORAGE_ERRORS`)
    that are imported: a library that was never imported raised nothing, and none of
    them is a dependency, so none is imported here."""
    found = []
    for module, name in _STORAGE_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)



class _Location:
    """A resolved URL: the fsspec file system, its path, a printable URL and the secrets."""

    __slots__ = ("fs", "path", "url", "secrets")

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, url: str,
                 secrets: tuple[str, ...]):
        self.fs = fs
        self.path = path
        self.url = url
        self.secrets = secrets

    def __repr__(self) -> str:
        return f"_Location({self.url!r})"

    def join(self, *names: str) -> str:
        return "/".join([self.path.rstrip("/"), *names])

    def display(self, path: str) -> str:
        """A printable URL for a path of this file system (no credentials); local paths
        without ``..`` or ``.`` segments."""
        if self.is_local:
            path = posixpath.normpath(path)
        return strip_credentials(self.fs.unstrip_protocol(path))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)


def _resolve(url: str | os.PathLike, storage_options: Mapping[str, Any] | None) -> _Location:
    if isinstance(url, os.PathLike):  # a pathlib.Path: a local path
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise TypeError("Expected a URL or path as a non-empty str or os.PathLike, got "
                        f"{type(url).__name__}.")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise TypeError("The 'storage_options' parameter must be a dict or None, got "
                        f"{type(storage_options).__name__}.")
    safe = strip_credentials(url)
    secrets = secret_values(storage_options, url)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in URL_CREDENTIALS_REFUSED and urlsplit(url).password is not None:
        raise ValueError(
            f"Cannot open {safe}: {scheme}:// URLs cannot carry credentials (user:password@): "
            "their file system would take them for part of the location's name. Give them in "
            f"storage_options ({URL_CREDENTIALS_REFUSED[scheme]}) instead.")
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as e:
        raise ImportError(f"Cannot open {safe}: {_scrub(str(e), secrets)}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"Cannot open {safe}: {_scrub(str(e), secrets)}") from None
    return _Location(fs, path, safe, secrets)


@contextlib.contextmanager
def _fs_errors(url: str, secrets: Sequence[str], doing: str) -> Iterator[None]:
    """Re-raise file-system errors, and the storage libraries' own (as OSError: see
    :func:`storage_error_types`), with a message naming ``url`` and no credentials.

    The original exception is not chained: its text, which we do not control,
    is included only after scrubbing the secrets out of it.
    """
    try:
        yield
    except FileNotFoundError as e:
        detail = _scrub(str(e), secrets)
        raise FileNotFoundError(
            f"Not found while {doing} {url}: no such file, directory or bucket ({detail})."
        ) from None
    except PermissionError as e:
        detail = _scrub(str(e), secrets)
        raise PermissionError(
            f"Access denied while {doing} {url} ({detail}). Check the credentials given in "
            "storage_options and the permissions on that location."
        ) from None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"Invalid Parquet data while {doing} {url}: "
                         f"{_scrub(str(e), secrets)}") from None
    except OSError as e:
        raise OSError(f"I/O error while {doing} {url}: {type(e).__name__}: "
                      f"{_scrub(str(e), secrets)}") from None
    except storage_error_types() as e:
        raise OSError(storage_error_message(e, url, secrets, doing)) from None


def storage_errors(url: str, doing: str):
    """Context manager: the errors of file systems and storage libraries met while
    ``doing`` something with ``url`` (a URL without storage options: a checkpoint's), as
    :func:`_fs_errors` raises them: naming the URL, without credentials."""
    return _fs_errors(strip_credentials(url), secret_values(None, url), doing)


def storage_error_message(exc: BaseException, url: str, secrets: Sequence[str],
                          doing: str) -> str:
    """One line for an error of a storage library (see :func:`storage_error_types`) while
    ``doing`` something with ``url``, without ``secrets``."""
    detail = " ".join(_scrub(str(exc), secrets).split()) or "(no message)"
    return (f"Storage error while {doing} {url}: {type(exc).__name__}: {detail}. Check the "
            "URL and the storage_options (endpoint, credentials, profile).")


def _arrow_fs(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _hidden(relative: str) -> bool:
    """Files or directories whose name starts with ``_`` or ``.`` are not data (Spark, Hive)."""
    return any(seg.startswith(("_", ".")) for seg in relative.split("/") if seg)


def _glob_root(pattern: str) -> str:
    """The folders of a glob pattern before its first segment with wildcards."""
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        if glob.has_magic(segment):
            return "/".join(segments[:i])
    return pattern


def _glob_under(url: str, depth: int | None, suffix: str = ".parquet") -> str:
    """A glob of the files ending with ``suffix`` ``depth`` folders below the directory
    ``url`` (None: at any depth), the directory's own name escaped (``run[1]``)."""
    return (glob.escape(url.rstrip("/")) + "/" + ("**/" if depth is None else "*/" * depth)
            + "*" + suffix)


def _folders_not_read(fs, folders: Sequence[str], infos: Mapping[str, Any],
                      hidden: Callable[[str], bool], loc: _Location) -> list[str]:
    """The folders a glob matched (not ``hidden``) that hold data files the glob did not
    match."""
    out = []
    for folder in folders:
        if hidden(folder):
            continue
        with _fs_errors(loc.url, loc.secrets, "listing"):
            inside = fs.find(folder, withdirs=False)
        base = folder.rstrip("/")
        if any(p not in infos and not p.endswith("/") and not _hidden(p[len(base):])
               for p in inside):
            out.append(folder)
    return out


def _list_parts(loc: _Location) -> tuple[list[str], dict[str, dict], str | None]:
    """Data files under ``loc`` in natural order, their infos, and the partition base dir."""
    fs = loc.fs
    literal = False
    if glob.has_magic(loc.path):  # unless a file or directory has that very name (run[1])
        with _fs_errors(loc.url, loc.secrets, "opening"):
            fs.invalidate_cache()
            literal = fs.exists(loc.path)
    if glob.has_magic(loc.path) and not literal:
        with _fs_errors(loc.url, loc.secrets, "listing"):  # the cache was emptied just above
            found = fs.glob(loc.path, detail=True)
        # Hidden names below the pattern's fixed folders are skipped, files and folders
        # (data/*/*.parquet skips data/_delta_log/...), as in a directory.
        root = _glob_root(loc.path)

        def hidden(p: str) -> bool:
            return _hidden(p[len(root):] if p.startswith(root) else p.rsplit("/", 1)[-1])

        infos = {p: i for p, i in found.items()
                 if i.get("type", "file") == "file" and not p.endswith("/") and not hidden(p)}
        if not found:
            raise FileNotFoundError(f"No files match {loc.url}.")
        folders = sorted((p for p, i in found.items() if i.get("type") == "directory"),
                         key=_natural_key)

        def shown(paths: Sequence[str]) -> str:  # the first few
            more = ", ..." if len(paths) > 3 else ""
            return ", ".join(loc.display(p) for p in paths[:3]) + more

        if not infos and folders:  # it said "No Parquet files found", the folders unnamed
            raise ValueError(
                f"{loc.url} matches only directories ({shown(folders)}): a pattern selects "
                "files. Give the directory above them, or a pattern of files such as "
                f"{loc.url.rstrip('/')}/*.parquet.")
        left_out = _folders_not_read(fs, folders, infos, hidden, loc)
        if left_out:  # x/*.parquet over Spark's a.parquet/ folders read only x/c.parquet
            raise ValueError(
                f"{loc.url} matches directories whose files it does not match "
                f"({shown(left_out)}): a pattern reads only the files it matches, so theirs "
                "would be left out. Give the directory above them, or a pattern that matches "
                "their files too (one ending in **/*.parquet, say).")
        return sorted(infos, key=_natural_key), infos, None
    with _fs_errors(loc.url, loc.secrets, "opening"):
        # All of it: a listing of a folder below (a hive partition) cached by an earlier
        # open would hide files added or replaced there since.
        fs.invalidate_cache()
        info = fs.info(loc.path)
        if info.get("type") != "directory":
            return [loc.path], {loc.path: info}, None
        found = fs.find(loc.path, withdirs=False, detail=True)
    base = loc.path.rstrip("/")
    infos = {}
    for path, item in found.items():
        relative = path[len(base):].lstrip("/") if path.startswith(base) else path
        # A key ending in "/" is an object store's folder marker (the S3 console's "Create
        # folder"), an empty object and no file of the dataset.
        if item.get("type", "file") == "file" and not path.endswith("/") \
                and not _hidden(relative):
            infos[path] = item
    parts = sorted(infos, key=_natural_key)
    return parts, infos, base


def _mtime(info: Mapping[str, Any]) -> float | str | None:
    # (memory:// has only "created"; HTTP servers give "Last-Modified")
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "mtime_ns",
                "Last-Modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime.datetime):
            return value.isoformat()
        if isinstance(value, int | float | str):
            return value
        return str(value)
    return None


def _fingerprint_entry(url: str, info: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": url, "size": info.get("size"), "mtime": _mtime(info)}
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag is not None:
        entry["etag"] = str(etag).strip('"')
    return entry


# --------------------------------------------------------------------------- schema checks


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_numeric(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _as_name_list(value, name: str) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise TypeError(f"The '{name}' parameter must hold column names (str); got {bad!r}.")
    dup = sorted({v for v in names if names.count(v) > 1})
    if dup:
        raise ValueError(f"The '{name}' parameter names column(s) {dup} more than once.")
    return names


#: How many columns a message lists: a dataset may have thousands.
_LISTED_COLUMNS = 20


def _describe(schema: pa.Schema, limit: int = _LISTED_COLUMNS) -> str:
    """The first ``limit`` columns of ``schema`` with their types, and how many more there are."""
    shown = ", ".join(f"{f.name} ({f.type})" for f in list(schema)[:limit])
    more = len(schema) - limit
    return f"{shown}, ... and {more} more" if more > 0 else shown


_PANDAS_INDEX_NAME = re.compile(r"^__index_level_\d+__$")


def _pandas_index_columns(schemas: Sequence[pa.Schema]) -> set[str]:
    """The columns that pandas (or dask) wrote as a DataFrame's index in any of ``schemas``:
    ``__index_level_0__`` for an unnamed index that is not a RangeIndex (the index of a
    filtered frame), or the index's own name (``set_index("customer_id")``)."""
    out = set()
    for schema in schemas:
        out.update(name for name in schema.names if _PANDAS_INDEX_NAME.match(name))
        try:
            meta = schema.pandas_metadata or {}
        except ValueError:  # metadata that is not JSON: no index to learn from it
            continue
        out.update(c for c in meta.get("index_columns", []) if isinstance(c, str))
    return out


#: What the errors of :func:`open_parquet` call its ``columns`` and ``key_columns``: the
#: parameters' names, or what the caller asked for them with (see :func:`column_labels`).
_COLUMN_LABELS: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "dask_kmeans_column_labels", default=("'columns'", "'key_columns'"))


@contextlib.contextmanager
def column_labels(columns: str, key_columns: str) -> Iterator[None]:
    """Within it, a column that :func:`open_parquet` does not find is said to be requested
    by ``columns`` or ``key_columns`` (a job's or the command line's words for them, or
    "the model's features" when a predict asks for those)."""
    token = _COLUMN_LABELS.set((columns, key_columns))
    try:
        yield
    finally:
        _COLUMN_LABELS.reset(token)


def _select_features(schema: pa.Schema, columns: list[str] | None, keys: list[str],
                     partition_fields: set[str], url: str,
                     index_columns: set[str]) -> list[str]:
    available = schema.names
    for label, names in zip(_COLUMN_LABELS.get(), (columns or [], keys), strict=True):
        missing = [c for c in names if c not in available]
        if missing:
            raise ValueError(f"Column(s) {missing} requested by {label} not found in {url}"
                             f"{did_you_mean(missing, available) or '.'} Available columns: "
                             f"{_describe(schema)}.")
    if columns is None:
        # A pandas index holds row labels (row numbers, for a filtered frame), not features.
        columns = [f.name for f in schema
                   if f.name not in partition_fields and f.name not in keys
                   and f.name not in index_columns and _is_numeric(f.type)]
        if not columns:
            skipped = sorted(index_columns & set(available))
            note = (f" The pandas index column(s) {skipped} are not used unless named."
                    if skipped else "")
            raise ValueError(f"No numeric columns to use as features in {url}. "
                             f"Available columns: {_describe(schema)}.{note} Name the feature "
                             "columns with 'columns=' after converting them to numbers.")
        return columns
    if not columns:
        raise ValueError("The 'columns' parameter is empty: name at least one feature column.")
    bad = [f"'{c}' ({schema.field(c).type})" for c in columns
           if not (_is_numeric(schema.field(c).type)
                   or pa.types.is_boolean(_value_type(schema.field(c).type)))]
    if bad:
        raise ValueError(f"Feature columns must be numeric; in {url} the column(s) "
                         f"{', '.join(bad)} are not. Drop them from 'columns' or convert them "
                         "to numbers first.")
    return columns


def _null_stats(metadata: pq.FileMetaData,
                columns: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per column: the nulls the Parquet statistics count, and in how many row groups
    they count them (columns no row group counts are left out)."""
    wanted = set(columns)
    stats_of: dict[str, tuple[int, int]] = {}
    for r in range(metadata.num_row_groups):
        group = metadata.row_group(r)
        for j in range(group.num_columns):
            chunk = group.column(j)
            name = chunk.path_in_schema
            stats = chunk.statistics
            if name in wanted and stats is not None and stats.has_null_count:
                nulls, groups = stats_of.get(name, (0, 0))
                stats_of[name] = (nulls + int(stats.null_count), groups + 1)
    return stats_of


def _null_counts(metadata: pq.FileMetaData, columns: Sequence[str]) -> dict[str, int]:
    """Nulls per column from the Parquet statistics (columns without statistics are skipped)."""
    return {k: nulls for k, (nulls, _) in _null_stats(metadata, columns).items() if nulls}


def _promote(a: pa.Field, b: pa.Field) -> pa.Field:
    """Arrow's permissive promotion of two types, except where it loses values: uint64 with
    a signed integer is int64 for Arrow (values from 2**63 would wrap to negative ones),
    here decimal128(20, 0), which holds both; a decimal with a float16 or float32 is that
    float for Arrow (12345678.91 would read 12345679), here float64."""
    merged = pa.unify_schemas([pa.schema([a]), pa.schema([b])],
                              promote_options="permissive").field(0)
    types = (_value_type(a.type), _value_type(b.type))
    if (any(pa.types.is_uint64(t) for t in types)
            and any(pa.types.is_signed_integer(t) for t in types)):
        return merged.with_type(pa.decimal128(20, 0))
    if pa.types.is_floating(merged.type) and any(pa.types.is_decimal(t) for t in types):
        return merged.with_type(pa.float64())
    return merged


def _merged_schema(schemas: Sequence[pa.Schema], urls: Sequence[str]):
    """One schema for parts whose types may differ (int64 in one file, double in the
    next where pandas met a NaN; null in an empty file): each column's types promoted
    to one that holds them all, in order of first appearance. Returns the schema and,
    for columns whose types cannot be promoted (string and double), the first two
    types with a part of each."""
    fields: dict[str, tuple[pa.Field, str]] = {}
    conflicts: dict[str, tuple[pa.DataType, str, pa.DataType, str]] = {}
    for schema, url in zip(schemas, urls, strict=True):
        for field in schema:
            name = field.name
            if name in conflicts:
                continue
            if name not in fields:
                fields[name] = (field, url)
                continue
            held, held_url = fields[name]
            if held.type.equals(field.type):
                continue
            try:
                merged = _promote(held, field)
            except (pa.ArrowTypeError, pa.ArrowInvalid, NotImplementedError):
                conflicts[name] = (held.type, held_url, field.type, url)
                continue
            fields[name] = (merged, held_url)
    return pa.schema([f for name, (f, _) in fields.items() if name not in conflicts]), conflicts


def _check_conflicts(conflicts, columns: list[str] | None, keys: list[str], url: str) -> None:
    """Refuse a column whose types differ beyond promotion between parts when it is used:
    named in ``columns`` or ``keys``, or numeric somewhere when features are chosen by type."""
    for name, (type_a, url_a, type_b, url_b) in conflicts.items():
        named = name in (columns or []) or name in keys
        if named or (columns is None and (_is_numeric(type_a) or _is_numeric(type_b))):
            raise ValueError(f"Column '{name}' is {type_a} in part {url_a} but {type_b} in part "
                             f"{url_b}: the parts of {url} must agree on the type of every "
                             "column used. Convert it in the files that differ"
                             + ("." if named else ", or name the feature columns with "
                                "'columns=' without it."))


#: Integer and boolean key columns that hold nulls become these pandas types, which keep
#: the values exact (NumPy's would turn them into floats).
_NULLABLE_KEY_TYPES = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(),
                       pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(),
                       pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
                       pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(),
                       pa.bool_(): pd.BooleanDtype()}


def _nullable_keys(metadata: Sequence[pq.FileMetaData], schema: pa.Schema,
                   keys: Sequence[str], partition_fields: set[str],
                   partition_values: Sequence[Mapping[str, Any]]) -> list[str]:
    """The integer or boolean key columns that may hold nulls: some part counts nulls in
    them, or does not say (no statistics); for a hive partition key, some part with rows
    has no value for it (``k=__HIVE_DEFAULT_PARTITION__``, or no ``k=`` directory)."""
    candidates = [name for name in keys if schema.field(name).type in _NULLABLE_KEY_TYPES]
    out = set()
    for md, values in zip(metadata, partition_values, strict=True):
        if not md.num_rows:
            continue
        stats_of = _null_stats(md, candidates)
        for name in candidates:
            if name in partition_fields:
                if values.get(name) is None:
                    out.add(name)
                continue
            nulls, groups = stats_of.get(name, (0, 0))
            if nulls or groups < md.num_row_groups:
                out.add(name)
    return [name for name in candidates if name in out]


def _has_numpy_type(t: pa.DataType) -> bool:
    """Arrow types that pandas holds in a NumPy (or categorical, or string) column of their
    own rather than as Python objects."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_timestamp(t) or pa.types.is_duration(t)
            or pa.types.is_dictionary(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _key_type_mapper(nullable: bool):
    def mapper(t: pa.DataType):
        if nullable and t in _NULLABLE_KEY_TYPES:
            return _NULLABLE_KEY_TYPES[t]
        # Decimals, dates, times, binary, lists: pandas would hold Python objects, which dask
        # turns into text (convert-string), so that an 18-digit decimal id or a date would be
        # written next to the labels as a string, and bytes would not decode. pandas'
        # Arrow-backed types keep the values and the Parquet type as they are.
        return None if _has_numpy_type(t) else pd.ArrowDtype(t)

    return mapper


def _keys_frame(table: pa.Table, nullable: Sequence[str]) -> pd.DataFrame:
    """Key columns as pandas: those in ``nullable`` as pandas' nullable types, those that
    NumPy cannot hold as pandas' Arrow-backed types."""
    return pd.DataFrame({
        name: table.column(name).to_pandas(types_mapper=_key_type_mapper(name in nullable))
        for name in table.column_names})


def _missing_message(counts: Mapping[str, int], part_url: str, what: str) -> str:
    detail = ", ".join(f"column '{c}' has {n} {what} value(s)" for c, n in counts.items())
    return (f"Missing or non-finite feature values in part {part_url}: {detail}. "
            "Pass missing='drop' to drop those rows (input.missing: drop in a job, --missing "
            "drop on the command line), or clean the data first.")


# --------------------------------------------------------------------------- chunk loaders


class _Part(NamedTuple):
    """What a chunk task needs to read one input file, or some of its row groups."""

    index: int
    url: str  # printable, for messages
    path: str  # for the file system
    partition_expression: Any  # pyarrow Expression with the hive partition values
    rows: int  # rows expected (after dropping, for missing="drop")
    offset: int  # row number of the part's first row in the dataset
    schema: pa.Schema | None  # the part's own types of the columns read (None: no rows)
    row_groups: tuple[int, ...] | None  # of the file, when it is split; None: all
    file_rows: int  # rows of the whole file when it was opened
    span: tuple[int, int]  # (first, stop): the rows of the file the part covered then


def _task_secrets(filesystem) -> tuple[str, ...]:
    """Secrets of the file system a task holds, so they stay out of its messages."""
    if isinstance(filesystem, pafs.PyFileSystem):
        filesystem = filesystem.handler.fs
    return secret_values(getattr(filesystem, "storage_options", None))


def _changed(what: str) -> ValueError:
    return ValueError(f"{what}: the data changed after open_parquet. Open it again.")


def _check_unchanged(part: _Part, metadata: pq.FileMetaData) -> None:
    """Refuse a file whose rows, or whose row groups holding the part, are not those of
    the open (a split file that grew would otherwise be read without its new rows)."""
    if metadata.num_rows != part.file_rows:
        raise _changed(f"Part {part.url} has {metadata.num_rows} rows now but had "
                       f"{part.file_rows} when it was opened")
    if part.row_groups is None:
        return
    first, last = part.row_groups[0], part.row_groups[-1]
    if last >= metadata.num_row_groups:
        raise _changed(f"Part {part.url}: its file has {metadata.num_row_groups} row "
                       "groups now, fewer than when it was opened")
    rows = [metadata.row_group(g).num_rows for g in range(last + 1)]
    now = (sum(rows[:first]), sum(rows))
    if now != part.span:
        raise _changed(f"Part {part.url} holds rows {now[0]}-{now[1] - 1} of its file now "
                       f"but held rows {part.span[0]}-{part.span[1] - 1} when it was opened")


#: The largest power of ten that a double holds exactly (10**23 it does not).
_EXACT_POWER_OF_TEN = 22


def _unscaled_int64(chunk: pa.Array) -> np.ndarray | None:
    """The unscaled integers of a decimal array (its values times 10**scale) as int64,
    read from its buffer (Arrow's native-endian two's complement, 4 to 32 bytes a value);
    None when some do not fit in int64. Null slots hold whatever the buffer holds."""
    width = chunk.type.byte_width
    n, offset = len(chunk), chunk.offset
    buffer = chunk.buffers()[1]
    if width <= 8:
        return np.frombuffer(buffer, dtype=f"=i{width}", count=offset + n)[offset:] \
            .astype(np.int64, copy=False)
    words = width // 8  # little-endian: the lowest 64-bit word first
    parts = np.frombuffer(buffer, dtype=np.int64, count=(offset + n) * words)[offset * words:]
    parts = parts.reshape(n, words)
    low = parts[:, 0]
    # It fits when the higher words only repeat the low word's sign.
    if not (parts[:, 1:] == (low >> 63)[:, None]).all():
        return None
    return low


def _decimal_to_float64(chunk: pa.Array) -> pa.Array:
    """A decimal array as the nearest doubles, nulls kept.

    Arrow's cast to float64 is not correctly rounded (a third of 20,000 decimal128(20, 4)
    values came one ulp off the nearest double). Unscaled integers up to 2**53 and powers
    of ten up to 10**22 are exact doubles, so that one division (or multiplication) by
    the power rounds once, to the nearest double (3 ms for a million values). Others go
    through text, which Arrow prints exactly and parses to the nearest double (130 ms).
    """
    scale = chunk.type.scale
    if sys.byteorder == "little" and abs(scale) <= _EXACT_POWER_OF_TEN and len(chunk):
        unscaled = _unscaled_int64(chunk)
        if unscaled is not None:
            valid = None if not chunk.null_count else \
                chunk.is_valid().to_numpy(zero_copy_only=False)
            magnitude = np.abs(unscaled if valid is None else unscaled[valid])
            # (int64's minimum stays negative under abs: not below 2**53 either)
            if not magnitude.size or (0 <= magnitude.min() and magnitude.max() <= 2**53):
                values = unscaled.astype(np.float64)
                if scale >= 0:
                    values /= 10.0 ** scale
                else:
                    values *= 10.0 ** -scale
                return pa.array(values, mask=None if valid is None else ~valid)
    return chunk.cast(pa.string()).cast(pa.float64())


def _refuse_inexact_decimals(decimals: Sequence[pa.Array], floats: Sequence[pa.Array]) -> None:
    """ArrowInvalid unless every double of ``floats`` reads back as its decimal (at the
    decimal's scale): a key of 2**60 + 1 would become 2**60."""
    for dec, flt in zip(decimals, floats, strict=True):
        back = pc.cast(flt, dec.type, safe=False)
        same = pc.equal(back, dec)
        if not pc.all(pc.or_kleene(same, pc.is_null(dec))).as_py():
            first = pc.index(same, False).as_py()
            raise pa.ArrowInvalid(f"{dec[first].as_py()} would become {flt[first].as_py()!r}")


def _cast_exactly(table: pa.Table, target: pa.Schema, exact: Sequence[str],
                  part_url: str) -> pa.Table:
    """``table`` as ``target``: the ``exact`` columns (keys) only where no value changes
    (an int64 id beyond 2**53 read as the double of another part, a date in ms beyond the
    range of another part's ns, would change: refused, naming them), the others unsafely
    (features: an int64 beyond 2**53 in a part where the others hold doubles)."""
    columns = []
    for field in target:
        column = table.column(field.name)
        if column.type.equals(field.type):
            columns.append(column)
            continue
        try:
            if pa.types.is_decimal(column.type) and pa.types.is_float64(field.type):
                floats = [_decimal_to_float64(c) for c in column.chunks]
                if field.name in exact:  # Arrow's safe cast lets 2**60 + 1 become 2**60
                    _refuse_inexact_decimals(column.chunks, floats)
                columns.append(pa.chunked_array(floats, pa.float64()))
            else:
                columns.append(column.cast(field.type, safe=field.name in exact))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"Key column '{field.name}' is {column.type} in part {part_url}, and reading it "
                f"as {field.type}, the type the parts share, would change its values ({exc}). "
                "Write it with one type in every part.") from None
    return pa.table(columns, schema=target)


#: Consecutive row groups whose columns take at most this together (8 bytes a value) are
#: read together: one request each cost a pass over a 0.5 MB file of 400 row groups 402 S3
#: requests and 2.6 s (moto), against 0.04 s now. Small, so that a task's peak stays the
#: chunk and about one row group.
READ_BATCH_BYTES = 2**20


def _batches(rows: Sequence[int], groups: Sequence[int], width: int) -> list[list[int]]:
    """``groups`` (row group indices, of ``rows`` rows each) in runs of consecutive ones
    whose ``width`` columns take at most :data:`READ_BATCH_BYTES` (a larger one alone)."""
    runs: list[list[int]] = []
    size = 0
    for group in groups:
        cost = rows[group] * width * 8
        if runs and group == runs[-1][-1] + 1 and size + cost <= READ_BATCH_BYTES:
            runs[-1].append(group)
            size += cost
        else:
            runs.append([group])
            size = cost
    return runs


def _read_row_groups(part: _Part, *, filesystem: pafs.FileSystem, schema: pa.Schema,
                     columns: Sequence[str], exact: Sequence[str] = ()) -> Iterator[pa.Table]:
    """The part's ``columns``, of the dataset's types, a row group at a time, or a run of
    small consecutive ones (:func:`_batches`) at a time (its footer read once, and checked
    against the open's); one empty table for a file without rows. ``exact``: columns cast
    only without changing a value (see :func:`_cast_exactly`)."""
    target = pa.schema([schema.field(c) for c in columns])
    fragment = ds.ParquetFileFormat().make_fragment(
        part.path, filesystem=filesystem, partition_expression=part.partition_expression)
    secrets = _task_secrets(filesystem)
    with _fs_errors(part.url, secrets, "reading"):
        fragment.ensure_complete_metadata()
    _check_unchanged(part, fragment.metadata)
    if part.schema is None:  # a file without rows
        yield target.empty_table()
        return
    groups = range(fragment.num_row_groups) if part.row_groups is None else part.row_groups
    metadata = fragment.metadata
    rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    with _fs_errors(part.url, secrets, "reading"):
        for run in _batches(rows, list(groups), len(columns)):
            table = fragment.subset(row_group_ids=run).to_table(
                columns=list(columns), schema=part.schema)
            yield table if table.schema.equals(target) else \
                _cast_exactly(table, target, exact, part.url)


#: The largest float32: finite values beyond it would be read as infinities.
F32_MAX = float(np.finfo(np.float32).max)


def _refuse_float32_overflow(values: np.ndarray, column: str, part_url: str) -> None:
    """Raise when finite float64 ``values`` of a column are beyond float32's range: read
    as float32 they would be infinities, and then taken for missing values (dropped by
    missing='drop'). NumPy's min and max, not Arrow's (0.04 ms against 0.7 ms for 250k)."""
    if not values.size or (-F32_MAX <= values.min() and values.max() <= F32_MAX):
        return  # (NaN fails the test: looked at closer)
    with np.errstate(invalid="ignore"):
        big = values[np.isfinite(values) & (np.abs(values) > F32_MAX)]
    if big.size:
        raise ValueError(
            f"Feature values beyond float32's range in part {part_url}: column '{column}' "
            f"has {big.size} (first: {big[0]:g}), which float32 would make infinite. "
            "Cluster in float64 (dtype='float64', --dtype float64) or scale the column down.")


def _to_matrix(table: pa.Table, columns: Sequence[str], dtype: np.dtype,
               out: np.ndarray | None = None, part_url: str = "") -> np.ndarray:
    """The columns of ``table`` as an ndarray of shape (n_rows, len(columns)); nulls become NaN.

    Written chunk by chunk (a column of several chunks is not concatenated first) into
    ``out``, by default new memory from Arrow's pool (see
    :func:`~dask_kmeans._runtime.pool_empty`). For float32, a finite value beyond its
    range is an error (naming ``part_url``), not an infinity.
    """
    if out is None:
        out = pool_empty((table.num_rows, len(columns)), dtype)
    narrow = out.dtype == np.float32
    for j, name in enumerate(columns):
        start = 0
        for chunk in table.column(name).chunks:
            if pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_decode()
            in_range = not narrow or chunk.type in (pa.float32(), pa.float16())
            if pa.types.is_decimal(chunk.type):
                chunk = _decimal_to_float64(chunk)
            elif chunk.type != pa.float64():
                # Unsafe: precision loss from int64 to float is accepted, as in NumPy.
                chunk = chunk.cast(pa.float64(), safe=False)
            if chunk.null_count:
                chunk = pc.fill_null(chunk, np.nan)
            values = chunk.to_numpy(zero_copy_only=False)
            if not in_range:
                _refuse_float32_overflow(values, name, part_url)
            stop = start + len(chunk)
            with np.errstate(all="ignore"):
                out[start:stop, j] = values
            start = stop
    return out


def _usable_rows(X: np.ndarray, drop_zero_norm: bool) -> np.ndarray:
    """Rows with only finite values (and, with ``drop_zero_norm``, not all zero)."""
    keep = np.isfinite(X).all(axis=1)
    if drop_zero_norm:
        keep &= np.any(X != 0, axis=1)
    return keep


def _all_finite(X: np.ndarray) -> bool:
    """Whether the sum of ``X`` is finite: then no value is NaN or infinite, found without a
    boolean matrix per part (fresh pages in dask workers: 1.3 ms against 0.3 ms for
    250k x 8). A sum that only overflowed has to be looked at value by value."""
    with np.errstate(all="ignore"):
        return bool(np.isfinite(X.sum()))


def _nonfinite_counts(X: np.ndarray, columns: Sequence[str]) -> dict[str, int]:
    """Per column, the NaN or infinite values of ``X`` (columns without any left out)."""
    if _all_finite(X):
        return {}
    per_column = (~np.isfinite(X)).sum(axis=0)
    return {c: int(n) for c, n in zip(columns, per_column, strict=True) if n}


def _finite_mask(X: np.ndarray, columns: Sequence[str], part_url: str,
                 missing: str, drop_zero_norm: bool = False) -> np.ndarray | None:
    """None when every row is usable; raise for ``missing="error"``; else the rows to keep."""
    if missing == "error":
        counts = _nonfinite_counts(X, columns)
        if counts:
            raise ValueError(_missing_message(counts, part_url, "NaN, inf or null"))
        return None
    if not drop_zero_norm and _all_finite(X):
        return None
    keep = _usable_rows(X, drop_zero_norm)
    return None if keep.all() else keep


def _check_rows(n: int, part: _Part) -> None:
    if n != part.rows:
        raise _changed(f"Part {part.url} has {n} usable rows now but had {part.rows} when "
                       "it was opened")


def _load_features(chunk: np.ndarray, **kwargs) -> np.ndarray:
    """A chunk: the usable rows of its consecutive parts (files, or runs of a file's row
    groups), an ndarray of shape (their rows, len(columns)). ``chunk`` holds the tuple of
    parts; for ``kwargs`` see :func:`_load_part`."""
    (parts,) = chunk
    if len(parts) == 1:
        return _load_part(parts[0], None, **kwargs)
    out = pool_empty((sum(part.rows for part in parts), len(kwargs["columns"])),
                     kwargs["out_dtype"])
    start = 0
    for part in parts:
        _load_part(part, out[start:start + part.rows], **kwargs)
        start += part.rows
    return out


def _load_part(part: _Part, out: np.ndarray | None, *, filesystem: pafs.FileSystem,
               schema: pa.Schema, columns: Sequence[str], out_dtype: np.dtype, missing: str,
               drop_zero_norm: bool = False) -> np.ndarray:
    """The usable rows of one part, written into ``out`` (its rows in a chunk; new when
    None) a row group at a time: a task holds the chunk and one row group's Arrow table,
    not the whole part's as well (a 128 MB part of 8 row groups peaked at 279 MB in
    Arrow's pool read whole, 166 MB this way, and read faster).

    Rows go straight into ``out`` when none can be dropped. A part that changed since
    the open is read to its end first, writing nothing past its rows, so that the message
    gives its usable rows now; NaN and infinities are counted over the whole part too.
    """
    if out is None:
        out = pool_empty((part.rows, len(columns)), out_dtype)
    start = 0  # usable rows so far
    bad: dict[str, int] = {}  # missing="error": NaN and infinities per column
    for table in _read_row_groups(part, filesystem=filesystem, schema=schema,
                                  columns=columns):
        n = table.num_rows
        direct = missing == "error" and not bad and start + n <= len(out)
        X = _to_matrix(table, columns, out_dtype, out[start:start + n] if direct else None,
                       part.url)
        if missing == "error":
            for column, count in _nonfinite_counts(X, columns).items():
                bad[column] = bad.get(column, 0) + count
        else:
            keep = _finite_mask(X, columns, part.url, missing, drop_zero_norm)
            if keep is not None:
                X = X[keep]
            if start + len(X) <= len(out):
                out[start:start + len(X)] = X
        start += len(X)
    if bad:
        raise ValueError(_missing_message(bad, part.url, "NaN, inf or null"))
    _check_rows(start, part)
    return out


def _count_valid(parts: tuple[_Part, ...], *, filesystem: pafs.FileSystem,
                 schema: pa.Schema, columns: Sequence[str], out_dtype: np.dtype,
                 drop_zero_norm: bool = False) -> list[int]:
    """The usable rows of each of a chunk's parts, read a row group at a time."""
    return [sum(int(_usable_rows(_to_matrix(table, columns, out_dtype, part_url=part.url),
                                 drop_zero_norm).sum())
                for table in _read_row_groups(part, filesystem=filesystem, schema=schema,
                                              columns=columns))
            for part in parts]


def _load_keys(parts: tuple[_Part, ...], **kwargs) -> pd.DataFrame:
    """The key columns of a chunk's parts, indexed by row number in the dataset."""
    frames = [_part_keys(part, **kwargs) for part in parts]
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def _part_keys(part: _Part, *, filesystem: pafs.FileSystem, schema: pa.Schema,
               key_columns: Sequence[str], feature_columns: Sequence[str],
               out_dtype: np.dtype, missing: str, nullable: Sequence[str] = (),
               drop_zero_norm: bool = False) -> pd.DataFrame:
    """The key columns of one part, indexed by row number in the dataset; with
    ``missing="drop"``, of its usable rows, found a row group at a time."""
    read = functools.partial(_read_row_groups, part, filesystem=filesystem, schema=schema,
                             exact=key_columns)
    if missing == "drop":
        tables, kept, start = [], [], part.offset
        for table in read(columns=list(dict.fromkeys([*key_columns, *feature_columns]))):
            keep = _usable_rows(_to_matrix(table, feature_columns, out_dtype, part_url=part.url),
                                drop_zero_norm)
            tables.append(table.select(list(key_columns)).filter(pa.array(keep)))
            kept.append(start + np.flatnonzero(keep))
            start += table.num_rows
        table = pa.concat_tables(tables)
        index = pd.Index(np.concatenate(kept), dtype=np.int64)
    else:
        table = pa.concat_tables(read(columns=key_columns))
        index = pd.RangeIndex(part.offset, part.offset + table.num_rows)
    frame = _keys_frame(table, nullable)
    frame.index = index
    _check_rows(len(frame), part)
    return frame


# --------------------------------------------------------------------------- ParquetSource


class ParquetSource:
    """A Parquet dataset opened lazily as a row-chunked dask array of features.

    Built by :func:`open_parquet`; not meant to be constructed directly.

    Attributes
    ----------
    features : dask.array.Array of shape (n_rows, n_features)
        Row chunks of consecutive files, or runs of a large file's row groups, of at
        most ``chunk_bytes`` each (see :func:`open_parquet`), one column chunk, known
        chunk sizes, dtype float32 or float64.
    feature_names : list of str
        The feature columns, in the order of ``features``' columns.
    keys : dask.dataframe.DataFrame or None
        The key columns, one partition per chunk of ``features`` (partition ``i``
        holds the rows of chunk ``i``). Its index is the row number in the
        dataset before any rows were dropped (``missing="drop"``). Integer and
        boolean columns that may hold nulls come as pandas' nullable types;
        decimal, date, time, binary and nested ones as ``pd.ArrowDtype``.
    key_columns : list of str
        The names of the key columns (empty when ``keys`` is None).
    url : str
        The input URL with any credentials removed.
    parts : list of str
        The URL of each input file, in chunk order.
    missing : {"error", "drop"}
        The policy for NaN, inf and null feature values.
    """

    def __init__(self, *, features: da.Array, feature_names: list[str],
                 keys: dd.DataFrame | None, key_columns: list[str], url: str,
                 parts: list[str], fingerprint: dict[str, Any], missing: str,
                 location: _Location, storage_options: Mapping[str, Any] | None):
        self.features = features
        self.feature_names = feature_names
        self.keys = keys
        self.key_columns = key_columns
        self.url = url
        self.parts = parts
        self.missing = missing
        self._fingerprint = fingerprint
        self._location = location
        self._storage_options = dict(storage_options or {})

    @property
    def n_rows(self) -> int:
        """Number of rows (after dropping, for ``missing="drop"``)."""
        return int(self.features.shape[0])

    @property
    def protocol(self) -> str:
        """The main fsspec protocol of the input ("file", "s3", "gs"...)."""
        protocol = self._location.fs.protocol
        return protocol if isinstance(protocol, str) else protocol[0]

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the input's data, for validating checkpoints and caches.

        Taken from the file listing when the source was opened (no extra I/O).

        Returns
        -------
        dict
            ``{"url": str, "parts": [{"path": str, "size": int, "mtime": float
            or str, "etag": str (when the store gives one)}, ...]}``, JSON
            serialisable, without credentials.
        """
        return json.loads(json.dumps(self._fingerprint))

    def __repr__(self) -> str:
        # storage_options are deliberately absent: they may hold credentials.
        rows, d = self.features.shape
        keys = f", key_columns={self.key_columns!r}" if self.key_columns else ""
        return (f"ParquetSource(url={self.url!r}, n_rows={rows}, n_features={d}, "
                f"dtype={self.features.dtype.name}, feature_names={self.feature_names!r}"
                f"{keys}, n_parts={len(self.parts)}, missing={self.missing!r})")


def _refuse_repeated_names(schemas: Sequence[pa.Schema], urls: Sequence[str],
                           used: Sequence[str] | None = None) -> None:
    """Refuse a column name that a part holds twice (among ``used``, if given)."""
    for schema, url in zip(schemas, urls, strict=True):
        names = schema.names
        repeated = sorted({n for n in names if names.count(n) > 1
                           and (used is None or n in used)})
        if repeated:
            raise ValueError(f"Column name(s) {repeated} appear more than once in part {url}: "
                             "columns of one name cannot be told apart. Rename them in that "
                             "file.")


#: How Hive and Spark write a null partition value (pyarrow's ``null_fallback``).
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _partition_dirs(path: str, base: str) -> list[str]:
    """The directory names between the partition base dir ``base`` and the file ``path``."""
    return path[len(base):].strip("/").split("/")[:-1]


def _hive_key(segment: str) -> tuple[str, str | None] | None:
    """The key and value of a ``key=value`` directory name, URI-decoded as pyarrow decodes
    them (None for a null value); None for a directory name that is not one."""
    if "=" not in segment:
        return None
    name, value = (unquote(s) for s in segment.split("=", 1))
    return name, None if value == _HIVE_NULL else value


def _round_trips_as_int32(value: str) -> bool:
    try:
        number = int(value)
    except ValueError:
        return False
    return str(number) == value and -(2**31) <= number < 2**31


def _hive_partitioning(paths: Sequence[str], base: str) -> ds.Partitioning:
    """The hive partitioning of ``paths``, typed from their directory names.

    A key is int32 when every value of it is an integer written as int32 prints it
    (``year=2020``, ``k=-5``), as pyarrow's discovery would type it; otherwise it is text,
    so that its values arrive exactly as written: pyarrow's discovery reads every value
    that parses as an integer as int32, so ``zip=02134`` would be 2134 and ``code=007``
    7. A key without any non-null value is text too (discovery refuses it). Keys come in
    order of first appearance, as discovery orders them.
    """
    values: dict[str, list[str]] = {}
    for path in paths:
        for segment in _partition_dirs(path, base):
            key = _hive_key(segment)
            if key is not None:
                name, value = key
                values.setdefault(name, []).extend([] if value is None else [value])
    return ds.partitioning(pa.schema([
        (name, pa.int32() if found and all(map(_round_trips_as_int32, found)) else pa.string())
        for name, found in values.items()]), flavor="hive")


def _refuse_partition_clash(schemas: Sequence[pa.Schema], paths: Sequence[str],
                            urls: Sequence[str], base: str, url: str) -> None:
    """Refuse a hive partition key that is also a column of the files, in another type
    (Arrow cannot merge the two): name it, the file, and the ways out."""
    for schema, path, part_url in zip(schemas, paths, urls, strict=True):
        dirs = _partition_dirs(path, base)
        for segment in dirs:
            key = _hive_key(segment)
            if key is not None and key[0] in schema.names:
                name = key[0]
                glob_url = _glob_under(url, len(dirs))
                raise ValueError(
                    f"Column '{name}' of part {part_url} ({schema.field(name).type}) is also a "
                    f"hive partition of {url} (the directory {segment}), in another type. "
                    "Remove the column from the files, or open them with a glob such as "
                    f"{glob_url} to read the files' column without the partitions.")


def _check_dtype(dtype) -> np.dtype:
    try:
        # np.dtype(None) is float64: None is refused rather than silently read as that.
        out = None if dtype is None else np.dtype(dtype)
    except TypeError:
        out = None
    if out is None or out not in FEATURE_DTYPES:
        raise ValueError(f"The 'dtype' parameter must be 'float32' or 'float64', got {dtype!r}.")
    return out


def _check_missing(missing) -> str:
    if missing not in MISSING_POLICIES:
        raise ValueError(f"The 'missing' parameter must be one of {MISSING_POLICIES}, "
                         f"got {missing!r}.")
    return missing


def _check_chunk_bytes(chunk_bytes) -> int | None:
    if chunk_bytes is None:
        return None
    try:
        value = parse_bytes(chunk_bytes) if isinstance(chunk_bytes, str) else chunk_bytes
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError("The 'chunk_bytes' parameter must be a size like '128MiB', a number "
                         f"of bytes > 0, or None (one chunk per file), got {chunk_bytes!r}.")
    return int(value)


def _row_group_runs(metadata: pq.FileMetaData, row_bytes: int,
                    chunk_bytes: int | None) -> list[tuple[tuple[int, ...] | None, int]]:
    """How one file becomes chunks: (row groups, rows) per chunk, in order.

    The whole file (row groups None) when its features fit in ``chunk_bytes``; otherwise
    runs of consecutive row groups of at most ``chunk_bytes`` each, grouped as
    :func:`_chunks` groups files (a row group larger than that is a chunk of its own: a
    file is never split inside a row group).
    """
    if chunk_bytes is None or metadata.num_row_groups <= 1 \
            or metadata.num_rows * row_bytes <= chunk_bytes:
        return [(None, metadata.num_rows)]
    rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    return [(tuple(run), sum(rows[g] for g in run))
            for run in _chunks(rows, row_bytes, chunk_bytes)]


def _chunks(rows: Sequence[int], row_bytes: int, chunk_bytes: int | None) -> list[list[int]]:
    """Consecutive items (parts, or a file's row groups) of ``rows`` rows each grouped
    into chunks of at most ``chunk_bytes`` (an item larger than that alone), as lists of
    item indices."""
    chunks: list[list[int]] = []
    size = 0
    for i, n in enumerate(rows):
        # An item without rows joins the chunk before it (a chunk of its own would be a
        # task per pass, and a labels part, for nothing).
        if not chunks or chunk_bytes is None or (n and size + n * row_bytes > chunk_bytes):
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += n * row_bytes
    return chunks


#: The most a chunk's features take by default (see :func:`open_parquet`'s ``chunk_bytes``):
#: as data persisted in memory is chunked (``_runtime.TARGET_CHUNK_BYTES``).
DEFAULT_CHUNK_BYTES = "128MiB"

#: File name endings of Parquet data, for :func:`_stray_file_hint`.
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def _stray_file_hint(loc: _Location, paths: Sequence[str], base: str | None, i: int) -> str:
    """What to add when part ``i`` of the directory ``loc`` cannot be read as Parquet and
    its name is not one (a README, a CSV export) while other parts' names are: move it, or
    open a glob, offered only when it lists exactly the Parquet-named parts."""
    named = [p.lower().endswith(PARQUET_SUFFIXES) for p in paths]
    if base is None or named[i] or not any(named):
        return ""
    name = paths[i].rsplit("/", 1)[-1]
    hint = f". {name} is not named like a Parquet file: move it out of {loc.url}"
    parquet = [p for p, ok in zip(paths, named, strict=True) if ok]
    suffixes = {"." + p.rsplit(".", 1)[-1] for p in parquet}
    depths = {len(_partition_dirs(p, base)) for p in parquet}
    if len(suffixes) == 1:  # one glob can list them all
        depth = depths.pop() if len(depths) == 1 else None
        suffix = suffixes.pop()
        glob_url = _glob_under(loc.url, depth, suffix)
        try:  # the glob as open_parquet would list it, on the same file system
            matched, _, _ = _list_parts(_Location(loc.fs, _glob_under(base, depth, suffix),
                                                  glob_url, loc.secrets))
        except (OSError, ValueError):
            matched = []
        if sorted(matched) == sorted(parquet):
            partitioned = any(_hive_key(d) is not None
                              for p in parquet for d in _partition_dirs(p, base))
            hint += (", or open a glob that matches the Parquet files only, such as "
                     f"{glob_url}" + (" (a glob reads no hive partition columns)"
                                      if partitioned else ""))
    return _scrub(hint, loc.secrets)


def _load_metadata(fragments: list, urls: list[str], secrets: Sequence[str],
                   hint: Callable[[int], str] | None = None) -> list:
    def load(i: int) -> pq.FileMetaData:
        try:
            with _fs_errors(urls[i], secrets, "reading the Parquet footer of"):
                return fragments[i].metadata
        except ValueError as e:
            extra = hint(i) if hint is not None else ""
            if not extra:
                raise
            raise ValueError(f"{e}{extra}") from None

    if len(fragments) == 1:
        return [load(0)]
    with ThreadPoolExecutor(min(_METADATA_THREADS, len(fragments))) as pool:
        return list(pool.map(load, range(len(fragments))))


def open_parquet(url: str, columns: str | Sequence[str] | None = None, *,
                 dtype: str | np.dtype | type = "float64",
                 storage_options: Mapping[str, Any] | None = None,
                 missing: MissingPolicy = "error",
                 key_columns: str | Sequence[str] | None = None,
                 drop_zero_norm: bool = False,
                 chunk_bytes: int | str | None = DEFAULT_CHUNK_BYTES) -> ParquetSource:
    """Open Parquet data on any fsspec URL as a lazily read, row-chunked dask array.

    Only the listing and the Parquet footers are read here (plus, for
    ``missing="drop"``, one pass over the feature columns to count the rows
    that remain). Each chunk of the result reads its own file (or run of row
    groups of a large file) and only the columns it needs when computed.

    Parameters
    ----------
    url : str or os.PathLike
        A file, a directory of files or a hive-partitioned directory
        (``region=eu/part-0.parquet``): a local path (a ``pathlib.Path`` too), ``file://``, ``s3://``
        (needs s3fs), ``gs://`` (gcsfs), ``abfs://`` (adlfs) or any other fsspec
        URL. Files and directories whose name starts with ``_`` or ``.`` are
        skipped (``_SUCCESS``, ``_temporary``...). A glob pattern
        (``data/*.parquet``) selects files; hive partitions are then not parsed.
        A path that exists is taken as it is, even with glob characters (``run[1]``).
        A hive partition key is int32 when all its values are integers written as int32
        prints them (``year=2020``), else text exactly as written (``zip=02134``).
    columns : str or list of str, optional
        The feature columns, in order. By default every numeric column of the
        files (integer, floating or decimal), except the key columns, the
        hive partition columns and the columns that hold a pandas index
        (``__index_level_0__``, written for a frame whose index is not a
        RangeIndex, or a named index). Those are used only when named here,
        and must then be numeric.
    dtype : {"float64", "float32"}, default="float64"
        The dtype of the feature array.
    storage_options : dict, optional
        Passed to the fsspec file system, e.g. ``{"key": ..., "secret": ...,
        "endpoint_url": ...}`` for s3fs. Never shown in messages or reprs. (An
        ``s3://``, ``gs://`` or ``abfs://`` URL holding a password is refused:
        those file systems do not read it.)
    missing : {"error", "drop"}, default="error"
        What to do with NaN, inf or null feature values. "error" raises a
        ValueError naming the column, the count and the file when that chunk is
        computed (or already here when the Parquet statistics count nulls).
        "drop" drops those rows from the features and the keys; the chunk sizes
        are then counted here in one pass over the feature columns.
    key_columns : str or list of str, optional
        Columns to carry alongside the features (identifiers for the output of
        :func:`write_labels`); any type, partition columns included.
    drop_zero_norm : bool, default=False
        With ``missing="drop"``, also drop rows whose features are all zero
        (they have no direction for ``KMeans(metric="cosine")``).
    chunk_bytes : int, str or None, default="128MiB"
        The most a chunk's features may take (rows x features x the dtype's
        size). Consecutive files share a chunk while they fit in it: every
        chunk is a task at every pass, a few milliseconds each, which many
        small files made the bulk of a pass. A file larger than that is split
        into runs of consecutive row groups of at most this size each (a row
        group is never split), so that a pass over data larger than memory
        holds a few such chunks per worker, however large the files. A size
        like ``"64MiB"`` or a number of bytes; None keeps one chunk per file.

    Returns
    -------
    ParquetSource
        ``features`` is a dask array of shape (n_rows, n_features) in row chunks
        of at most ``chunk_bytes`` (but for a row group larger than that).

    Raises
    ------
    FileNotFoundError
        The path or bucket does not exist.
    PermissionError
        The credentials are refused.
    OSError
        Another I/O error, or an error of the storage library (an invalid bucket
        name, an unknown profile, missing credentials, an unreachable endpoint).
    ValueError
        Bad parameters, unknown or non-numeric columns, no rows, no files, or a
        corrupted or truncated file (the message names the file).

    Examples
    --------
    >>> import os, tempfile
    >>> import pandas as pd
    >>> d = tempfile.mkdtemp()
    >>> pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0], "y": [3, 4]}).to_parquet(
    ...     os.path.join(d, "part-0.parquet"))
    >>> src = open_parquet(d, key_columns="id")
    >>> src.feature_names, src.features.chunks
    (['x', 'y'], ((2,), (2,)))
    >>> src.features.compute()
    array([[1., 3.],
           [2., 4.]])
    """
    dtype = _check_dtype(dtype)
    missing = _check_missing(missing)
    if drop_zero_norm and missing != "drop":
        raise ValueError("drop_zero_norm=True drops rows, so it needs missing='drop'.")
    drop_zero_norm = bool(drop_zero_norm)
    chunk_bytes = _check_chunk_bytes(chunk_bytes)
    columns = _as_name_list(columns, "columns")
    keys = _as_name_list(key_columns, "key_columns") or []
    loc = _resolve(url, storage_options)
    paths, infos, base = _list_parts(loc)
    part_urls = [loc.display(p) for p in paths]
    if not paths:
        raise ValueError(f"No Parquet files found under {loc.url} (names starting with '_' or "
                         "'.' are skipped).")

    filesystem = _arrow_fs(loc.fs)

    def stray_hint(i: int) -> str:
        return _stray_file_hint(loc, paths, base, i)

    partitioning = _hive_partitioning(paths, base) if base is not None else None

    def make_dataset(schema: pa.Schema | None = None) -> ds.Dataset:
        with _fs_errors(loc.url, loc.secrets, "opening"):
            return ds.dataset(paths, schema=schema, filesystem=filesystem, format="parquet",
                              partitioning=partitioning, partition_base_dir=base)

    try:
        dataset = make_dataset()
    except (ValueError, pa.ArrowTypeError) as e:
        # Name the file that cannot be read, or the column, rather than the dataset.
        schemas = [md.schema.to_arrow_schema() for md in _load_metadata(
            [ds.ParquetFileFormat().make_fragment(p, filesystem=filesystem) for p in paths],
            part_urls, loc.secrets, stray_hint)]
        first = schemas[0]
        if len(set(first.names)) == len(first.names):
            if base is not None:
                _refuse_partition_clash(schemas, paths, part_urls, base, loc.url)
            if isinstance(e, pa.ArrowTypeError):
                raise ValueError(f"Cannot open {loc.url} as one dataset: "
                                 f"{_scrub(str(e), loc.secrets)}") from None
            raise
        # Arrow inspects the first part only, and cannot make a schema of its repeated
        # names: given one of its distinct names, the repeated ones are refused below only
        # if read, as in any other part (a first part whose repeated column was not read
        # was refused, the same part second was read).
        fields = {}
        for field in first:
            fields.setdefault(field.name, field)
        distinct = pa.schema(list(fields.values()), metadata=first.metadata)
        try:
            schema = pa.unify_schemas([distinct] if partitioning is None
                                      else [distinct, partitioning.schema])
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            _refuse_partition_clash(schemas, paths, part_urls, base, loc.url)
            raise
        dataset = make_dataset(schema)
    fragments = list(dataset.get_fragments())
    metadata = _load_metadata(fragments, part_urls, loc.secrets, stray_hint)
    physical_schemas = [f.physical_schema for f in fragments]
    partition_fields = set(dataset.schema.names) - set(physical_schemas[0].names)
    # Types promoted across the parts (the dataset's are the first part's alone). Parts
    # without rows say little (pandas writes an empty text column as double): left out.
    filled = [i for i, md in enumerate(metadata) if md.num_rows] or list(range(len(paths)))
    merged, conflicts = _merged_schema([physical_schemas[i] for i in filled],
                                       [part_urls[i] for i in filled])
    schema = pa.schema([*merged, *(f for f in dataset.schema if f.name in partition_fields)])
    _check_conflicts(conflicts, columns, keys, loc.url)
    feature_names = _select_features(schema, columns, keys, partition_fields, loc.url,
                                     _pandas_index_columns(physical_schemas))

    needed = list(dict.fromkeys([*feature_names, *keys]))
    physical = [c for c in needed if c not in partition_fields]
    # The dataset checked the first part's names only.
    _refuse_repeated_names(physical_schemas, part_urls, physical)
    for fragment, part_url in zip(fragments, part_urls, strict=True):
        absent = [c for c in physical if c not in fragment.physical_schema.names]
        if absent:
            raise ValueError(f"Column(s) {absent} missing from part {part_url} (present in "
                             f"other parts of {loc.url}). All parts must have the same "
                             "columns.")
    if missing == "error":
        for md, part_url in zip(metadata, part_urls, strict=True):
            nulls = _null_counts(md, [c for c in feature_names if c not in partition_fields])
            if nulls:
                raise ValueError(_missing_message(nulls, part_url, "null"))

    read_schema = pa.schema([schema.field(c) for c in needed])
    fingerprint = {"url": loc.url,
                   "parts": [_fingerprint_entry(u, infos[p])
                             for u, p in zip(part_urls, paths, strict=True)],
                   "missing": missing, "drop_zero_norm": drop_zero_norm}
    # Unique per open: two opens of one dataset carry different file-system objects, and
    # equal keys with different tasks confuse a scheduler that still holds the first.
    token = tokenize(fingerprint, feature_names, keys, dtype.str, missing, drop_zero_norm,
                     uuid.uuid4().hex)
    common = {"filesystem": filesystem, "schema": read_schema}

    def part_schema(i: int) -> pa.Schema | None:
        if not metadata[i].num_rows:
            return None  # nothing to read: an empty table of the dataset's types
        return pa.schema([physical_schemas[i].field(c) if c not in partition_fields
                          else schema.field(c) for c in needed])

    row_bytes = len(feature_names) * dtype.itemsize
    parts, offset = [], 0
    for i, (u, f, md) in enumerate(zip(part_urls, fragments, metadata, strict=True)):
        first = 0  # in the file
        for groups, n in _row_group_runs(md, row_bytes, chunk_bytes):
            # A file split into several chunks: messages name the row groups too.
            where = u if groups is None else f"{u} (row groups {groups[0]}-{groups[-1]})"
            parts.append(_Part(len(parts), where, f.path, f.partition_expression, n, offset,
                               part_schema(i), groups, md.num_rows, (first, first + n)))
            offset += n
            first += n
    # Grouped by the rows read (what a task holds), before any are dropped.
    groups = _chunks([part.rows for part in parts], row_bytes, chunk_bytes)
    if missing == "drop":  # a task per chunk, as the reads
        counts = [dask.delayed(_count_valid)(tuple(parts[i] for i in group),
                                             columns=feature_names, out_dtype=dtype,
                                             drop_zero_norm=drop_zero_norm,
                                             dask_key_name=f"count-valid-{token}-{c}", **common)
                  for c, group in enumerate(groups)]
        counted = [n for chunk in dask.compute(*counts) for n in chunk]
        parts = [part._replace(rows=n) for part, n in zip(parts, counted, strict=True)]
    chunks = [tuple(parts[i] for i in group) for group in groups]
    rows = [sum(part.rows for part in chunk) for chunk in chunks]
    if sum(rows) == 0:
        detail = " after dropping rows with missing values" if missing == "drop" else ""
        raise ValueError(f"The Parquet data at {loc.url} has no rows{detail} "
                         f"({len(paths)} file(s)).")

    # One task per chunk (files, or runs of a file's row groups), carrying only its own
    # parts, with no task before it: a chain (parts -> read) is fused by some graphs and
    # not by others, and a scheduler that still knows the key from one warns of a
    # "different run_spec" (which can deadlock) when the other comes (a fit's rechunked
    # persist, then the profile).
    # A blockwise layer whose parts are written into its tasks (ArrayValuesDep): dask
    # fuses it into the blockwise pass that reads each chunk, whatever else that pass
    # takes (k-means|| state, weights), and never as a chain of keys.
    d = len(feature_names)
    name = f"read-parquet-{token}"
    load = functools.partial(_load_features, columns=feature_names, out_dtype=dtype,
                             missing=missing, drop_zero_norm=drop_zero_norm, **common)
    values = {}
    for i, chunk in enumerate(chunks):
        one = np.empty(1, dtype=object)  # an array: a literal in the task, not a tuple
        one[0] = chunk
        values[(i, 0)] = one
    features = da.blockwise(load, "ij", ArrayValuesDep((tuple(rows), (d,)), values), "ij",
                            align_arrays=False, name=name, dtype=dtype,
                            meta=np.empty((0, d), dtype=dtype))

    key_frame = None
    if keys:
        nullable = _nullable_keys(metadata, schema, keys, partition_fields,
                                  [ds.get_partition_keys(f.partition_expression)
                                   for f in fragments])
        meta = _keys_frame(read_schema.empty_table().select(keys), nullable)
        meta.index = pd.RangeIndex(0)
        key_frame = dd.from_map(_load_keys, chunks, meta=meta, label="read-parquet-keys",
                                key_columns=keys, feature_columns=feature_names,
                                out_dtype=dtype, missing=missing, nullable=nullable,
                                enforce_metadata=False,
                                drop_zero_norm=drop_zero_norm, **common)
    return ParquetSource(features=features, feature_names=feature_names, keys=key_frame,
                         key_columns=keys, url=loc.url, parts=part_urls,
                         fingerprint=fingerprint, missing=missing, location=loc,
                         storage_options=storage_options)


def read_parquet(url: str, columns: str | Sequence[str] | None = None, *,
                 dtype: str | np.dtype | type = "float64",
                 storage_options: Mapping[str, Any] | None = None,
                 missing: MissingPolicy = "error", drop_zero_norm: bool = False,
                 chunk_bytes: int | str | None = DEFAULT_CHUNK_BYTES) -> da.Array:
    """Parquet feature columns on any fsspec URL as a dask array of shape (n_rows, n_features).

    Shorthand for ``open_parquet(...).features``; see :func:`open_parquet` for
    the parameters (all but ``key_columns``, which an array does not carry).

    Returns
    -------
    dask.array.Array of shape (n_rows, n_features)
        Row chunks of at most ``chunk_bytes`` (consecutive files together, a large file
        in runs of its row groups), known chunk sizes.

    Examples
    --------
    >>> import os, tempfile
    >>> import pandas as pd
    >>> path = os.path.join(tempfile.mkdtemp(), "x.parquet")
    >>> pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, 0.25]}).to_parquet(path)
    >>> read_parquet(path, ["b"], dtype="float32").compute()
    array([[0.5 ],
           [0.25]], dtype=float32)
    """
    return open_parquet(url, columns, dtype=dtype, storage_options=storage_options,
                        missing=missing, drop_zero_norm=drop_zero_norm,
                        chunk_bytes=chunk_bytes).features


# --------------------------------------------------------------------------- committed outputs


def _compute_all(tasks: Sequence) -> tuple:
    """Compute ``tasks`` and return only once no task is running any more, even on failure.

    A failed write must not leave a straggling task that writes into the
    temporary prefix after it was removed: on error we wait for the tasks
    already running before re-raising.
    """
    from ._runtime import active_client

    client = active_client()
    if client is not None:
        from distributed import wait

        futures = client.compute(list(tasks))
        try:
            return tuple(client.gather(futures))
        except BaseException:
            wait(futures)
            raise
    if dask.config.get("scheduler", None) in (None, "threads", "threading"):
        # Leaving the executor's block waits for the tasks still running.
        with ThreadPoolExecutor(max(1, dask.system.CPU_COUNT)) as pool:
            return dask.compute(*tasks, scheduler="threads", pool=pool)
    return dask.compute(*tasks)


_OVERWRITE_HINT = "pass overwrite=True to replace it"


def check_output(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False, directory: bool = True,
                 hint: str = _OVERWRITE_HINT, kind: OutputKind | None = None) -> None:
    """Refuse, before any work, an output location that writing would damage or fail on.

    A directory output (labels, a model) may go where nothing is, into an
    empty directory, or over committed dask_kmeans output (a ``_SUCCESS``
    marker that :func:`write_labels` or :func:`dask_kmeans.model.write_model`
    wrote) of the same ``kind`` with ``overwrite``. Refused even with
    ``overwrite``: a directory holding anything else, since committing there
    would replace or delete files that are not ours (a ``_SUCCESS`` marker
    that another program wrote, as Spark and Hadoop do, included), and
    output of the other kind (labels where a model goes, or a model where
    labels go), since the commit replaces only files of its own kind and
    would leave both in one directory, readable as neither. A file output (a
    plot, a table) may replace a file with ``overwrite``, never a directory.
    On a local disk, a file in the way of the path, or a directory that
    cannot be written, is refused too. ``hint`` says how to allow the
    replacement (the command line's own words).

    Parameters
    ----------
    url : str or PathLike
    storage_options : dict, optional
    overwrite : bool, default=False
    directory : bool, default=True
        Whether the output is a directory (labels, a model) or a file.
    hint : str
    kind : {"labels", "model"}, optional
        The directory output to be written there. None accepts committed
        output of either kind.

    Raises
    ------
    FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError
    """
    if kind is not None and kind not in _OUTPUT_FORMATS:
        raise ValueError(f"kind must be one of {sorted(_OUTPUT_FORMATS)} or None, got {kind!r}.")
    _check_writable(_resolve(url, storage_options), overwrite, directory=directory, hint=hint,
                    kind=kind)


def _missing_dirs(path: str) -> list[str]:
    """A local ``path`` and its parents that do not exist, deepest first."""
    missing = []
    here = path.rstrip("/")
    while here and not os.path.exists(here):
        missing.append(here)
        parent = os.path.dirname(here)
        here = parent if parent != here else ""
    return missing


def _refuse_blocked_local(loc: _Location) -> None:
    """Refuse a local output path that cannot be written: a file where a directory must be
    made, or a directory without write permission."""
    here = loc.path.rstrip("/") or "/"
    missing = _missing_dirs(here)
    nearest = os.path.dirname(missing[-1]) if missing else here  # what exists of the path
    if not nearest:
        return
    if missing and not os.path.isdir(nearest):
        raise NotADirectoryError(f"Cannot write {loc.url}: {nearest} is a file, so {here} "
                                 "cannot be made.")
    if not os.access(nearest, os.W_OK | os.X_OK if missing else os.W_OK):
        raise PermissionError(f"Cannot write {loc.url}: {nearest} is not writable.")


def check_directory_location(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse, before any work, a location where a directory of ours (a checkpoint) cannot
    be: a file there, or on a local disk a file in the way of the path, or a directory that
    cannot be written. What is in the directory is the caller's to judge.

    Raises
    ------
    NotADirectoryError, PermissionError
    """
    loc = _resolve(url, storage_options)
    with _fs_errors(loc.url, loc.secrets, "checking"):
        is_file = loc.fs.isfile(loc.path)
    if is_file:
        raise NotADirectoryError(f"Cannot write {loc.url}: it is a file, not a directory.")
    if loc.is_local:
        _refuse_blocked_local(loc)


def _committed_kind(loc: _Location) -> str | None:
    """The kind of dask_kmeans output whose ``_SUCCESS`` marker is at ``loc``; None for a
    marker that dask_kmeans did not write (Spark and Hadoop write an empty one)."""
    with _fs_errors(loc.url, loc.secrets, "checking"):
        data = loc.fs.cat_file(loc.join(SUCCESS_MARKER))
    try:
        marker = json.loads(data)
    except ValueError:  # not JSON, or not UTF-8
        return None
    found = marker.get("format") if isinstance(marker, dict) else None
    return next((kind for kind, fmt in _OUTPUT_FORMATS.items() if fmt == found), None)


def _check_writable(loc: _Location, overwrite: bool, *, directory: bool = True,
                    hint: str = _OVERWRITE_HINT, kind: str | None = None) -> None:
    """See :func:`check_output`."""
    fs = loc.fs
    if loc.is_local:
        _refuse_blocked_local(loc)
    with _fs_errors(loc.url, loc.secrets, "checking"):
        fs.invalidate_cache()
        try:
            info = fs.info(loc.path)
        except FileNotFoundError:
            info = None
        is_dir = info is not None and info.get("type") == "directory"
        names = sorted(_listed_names(loc)) if is_dir and directory else []
    if info is None:
        return
    if not directory:
        if is_dir:
            raise IsADirectoryError(f"{loc.url} is a directory; the output is a file: "
                                    "choose a file name.")
        if not overwrite:
            raise FileExistsError(f"{loc.url} already exists: {hint}, or choose another "
                                  "location.")
        return
    if not is_dir:
        raise NotADirectoryError(f"{loc.url} is a file; the output is a directory: "
                                 "choose another location.")
    if SUCCESS_MARKER in names:
        held = _committed_kind(loc)
        if held is None:
            raise FileExistsError(
                f"{loc.url} has a {SUCCESS_MARKER} marker that dask_kmeans did not write, so "
                "it holds another program's output: writing there would replace or delete "
                "some of its files, even with overwrite. Choose an empty or new location.")
        if kind is not None and held != kind:
            # Refused even with overwrite: the commit removes only stale files of its own
            # kind, so the old output's files would stay next to the new ones.
            raise FileExistsError(
                f"{loc.url} holds {_HELD[held]}, not {_WANTED[kind]}: writing {_WANTED[kind]} "
                "there would leave both in one directory, readable as neither, even with "
                f"overwrite. Choose another location, or delete the {held} first.")
        if not overwrite:
            raise FileExistsError(f"{loc.url} already exists: {hint}, or choose another "
                                  "location.")
        return
    # What interrupted writes of ours leave: their temporary prefix, or the parts of a
    # labels commit that stopped before its marker.
    foreign = [n for n in names if not n.startswith("_temporary-") and not _COMMIT_PART.match(n)]
    if foreign:
        raise FileExistsError(
            f"{loc.url} holds files that are not dask_kmeans output (no {SUCCESS_MARKER} "
            f"marker), such as {foreign[0]!r}: writing there would replace or delete some of "
            "them, even with overwrite. Choose an empty or new location.")


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """One object written whole or not at all: a rename on local disks, a single PUT on
    object stores. A failed local write leaves no temporary file behind."""
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        fs.pipe_file(tmp, data)
        # Not fs.mv: shutil.move puts a file *into* a directory of that name and succeeds.
        os.replace(fs._strip_protocol(tmp), fs._strip_protocol(path))
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise


def _listed_names(loc: _Location) -> list[str]:
    """The names of what is in the directory at ``loc`` now (its listing not cached); not
    the directory's own folder marker on an object store (a key ending in "/")."""
    loc.fs.invalidate_cache(loc.path)
    here = loc.fs._strip_protocol(loc.path).rstrip("/")
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in loc.fs.ls(loc.path, detail=False)
            if p.rstrip("/") != here]


def remove_exactly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove the file or the directory tree at ``path`` itself. fsspec's ``rm`` takes
    ``[``, ``*`` and ``?`` in a path for a glob on object stores (``out/t[1].csv`` removed
    ``out/t1.csv``): such paths are removed file by file, as listed."""
    if isinstance(fs, LocalFileSystem) or not glob.has_magic(path):
        fs.rm(path, recursive=True)
        return
    files = fs.find(path) if fs.isdir(path) else []
    for name in files or [path]:
        fs.rm_file(name)


def missing_parents(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """The parent directories of a local ``path`` that do not exist yet, deepest first
    (for :func:`remove_empty_dirs` to take away again); none on object stores, which
    have no directories."""
    return _missing_dirs(posixpath.dirname(path.rstrip("/"))) \
        if isinstance(fs, LocalFileSystem) else []


def remove_empty_dirs(fs: fsspec.AbstractFileSystem, dirs: Sequence[str]) -> None:
    """Remove ``dirs`` (deepest first) while they are empty: the directories a failed
    write made, and no further than the first that holds something."""
    for path in dirs:
        if not fs.exists(path):
            continue
        if fs.ls(path, detail=False):
            break
        fs.rmdir(path)


def _remove_quietly(loc: _Location, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        remove_exactly(loc.fs, path)


class _Commit:
    """Write into ``<url>/_temporary-<uuid>/``, then move into ``<url>`` and mark ``_SUCCESS``.

    Used as a context manager around the writes: on any failure the temporary
    prefix is removed (and ``<url>`` itself when this commit created it) and
    no marker is written.
    """

    def __init__(self, loc: _Location, overwrite: bool, kind: OutputKind):
        self.loc = loc
        self.overwrite = overwrite
        self.kind = kind
        self.token = uuid.uuid4().hex[:12]  # names this commit's own files (see commit)
        self.tmp = loc.join(f"_temporary-{self.token}")
        self.created: list[str] = []  # directories this commit makes, deepest first

    def __enter__(self) -> _Commit:
        _check_writable(self.loc, self.overwrite, kind=self.kind)
        fs = self.loc.fs
        if self.loc.is_local:
            # Object stores have no directories; there, makedirs would create a missing bucket.
            with _fs_errors(self.loc.url, self.loc.secrets, "writing"):
                self.created = _missing_dirs(self.loc.path)
                fs.makedirs(self.tmp, exist_ok=True)
        return self

    def path(self, name: str) -> str:
        return f"{self.tmp}/{name}"

    def commit(self, names: Sequence[str], marker: Mapping[str, Any],
               stale: re.Pattern | None = None) -> None:
        """Move ``names`` from the temporary prefix into place, write the marker, and remove
        the files of the old output that match ``stale`` and are not among ``names``.

        Names that hold this commit's :attr:`token` (labels parts) cannot be those of the
        output in place, so the old output stays whole, and readable through its marker,
        until the new marker replaces it in one write: an overwrite that fails or is killed
        at any point leaves the old output or the new one, never a mix (the old files were
        deleted first and the new ones moved over them one by one: a failure on the way
        left neither). Other names (a model's) replace the old files: the old marker is
        removed first, so no reader takes old and new files for one output.
        """
        loc, fs = self.loc, self.loc.fs
        fresh = all(self.token in name for name in names)
        with _fs_errors(loc.url, loc.secrets, "checking"):
            fs.invalidate_cache(loc.path)
            taken = not self.overwrite and fs.exists(loc.join(SUCCESS_MARKER))
        if taken:  # another writer committed here while this one computed: theirs stays
            raise FileExistsError(f"{loc.url} was written by another writer while this one "
                                  "ran; without overwrite it is left as it is.")
        data = json.dumps(marker, indent=2, sort_keys=True).encode()
        marker_path = loc.join(SUCCESS_MARKER)
        with _fs_errors(loc.url, loc.secrets, "committing"):
            if not fresh:  # un-commit, replace the files, commit
                _remove_quietly(loc, marker_path)
                self._remove_stale(names, stale)
                self._move_in(names)
                _remove_quietly(loc, self.tmp)
                write_bytes_atomic(fs, marker_path, data)
            else:  # add the files, commit, then take the old ones away
                self._move_in(names)
                write_bytes_atomic(fs, marker_path, data)
                # The prefix goes only now: while it is there, this commit's parts are not
                # taken for what an interrupted one left by another writer cleaning up.
                _remove_quietly(loc, self.tmp)
                self._remove_stale(names, stale)
                survived = (set(names) <= set(_listed_names(loc))
                            and fs.cat_file(marker_path) == data)
            fs.invalidate_cache(loc.path)
        if fresh and not survived:
            # Another writer committed here at the same time: the last marker wins, and
            # this output is not the one left (or lost parts to the other's clean-up).
            raise FileExistsError(f"{loc.url} was written by another writer at the same time; "
                                  "these labels are not the ones left there. Write again.")

    def _move_in(self, names: Sequence[str]) -> None:
        for name in names:
            self.loc.fs.mv(self.path(name), self.loc.join(name))

    def _remove_stale(self, names: Sequence[str], stale: re.Pattern | None) -> None:
        """The old output's files matching ``stale`` but not in ``names``, with the parts an
        interrupted commit left; not the parts of a commit whose temporary prefix is still
        there (another writer at work), and not the temporary prefixes."""
        if stale is None:
            return
        here = _listed_names(self.loc)
        at_work = {n[len("_temporary-"):] for n in here if n.startswith("_temporary-")}
        for name in here:
            committing = _COMMIT_PART.match(name)
            if name in names or not stale.match(name) or (
                    committing and committing.group(1) in at_work):
                continue
            _remove_quietly(self.loc, self.loc.join(name))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        loc = self.loc
        with contextlib.suppress(Exception):
            _remove_quietly(loc, self.tmp)
            remove_empty_dirs(loc.fs, self.created)  # the output and its parents made for it
            loc.fs.invalidate_cache(loc.path)


def _write_part(keys: pd.DataFrame | None, labels: np.ndarray, distances: np.ndarray, *,
                fs: fsspec.AbstractFileSystem, path: str, part_url: str) -> dict[str, Any]:
    labels = np.asarray(labels)
    distances = np.asarray(distances)
    if labels.shape != distances.shape or labels.ndim != 1:
        raise ValueError(f"labels and distances for part {part_url} must be 1-D of the same "
                         f"length; got shapes {labels.shape} and {distances.shape}.")
    if keys is not None and len(keys) != len(labels):
        raise ValueError(f"Part {part_url} has {len(keys)} key rows but {len(labels)} labels.")
    outputs = {LABEL_COLUMN: pa.array(labels.astype(np.int32, copy=False)),
               DISTANCE_COLUMN: pa.array(distances.astype(np.float64, copy=False))}
    if keys is None:
        table = pa.table(outputs)
    else:
        table = pa.Table.from_pandas(keys, preserve_index=False)
        for name, column in outputs.items():
            table = table.append_column(name, column)
    with _fs_errors(part_url, _task_secrets(fs), "writing"), fs.open(path, "wb") as f:
        pq.write_table(table, f)
        size = f.tell()
    return {"rows": int(table.num_rows), "size": int(size)}


def _as_chunked(values, chunks: tuple[int, ...], name: str) -> da.Array:
    if not isinstance(values, da.Array):
        values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"'{name}' must be 1-D of shape (n_rows,), got {values.ndim}-D.")
    if values.shape[0] != sum(chunks):
        raise ValueError(f"'{name}' has {values.shape[0]} rows but the source has "
                         f"{sum(chunks)}.")
    if not isinstance(values, da.Array):
        return da.from_array(values, chunks=(chunks,))
    return values if values.chunks[0] == chunks else values.rechunk((chunks,))


def check_label_keys(key_columns: Sequence[str]) -> None:
    """Refuse key columns named as the labels' own columns (they could not be written)."""
    clash = {LABEL_COLUMN, DISTANCE_COLUMN} & set(key_columns)
    if clash:
        raise ValueError(f"Key column(s) {sorted(clash)} clash with the labels' columns "
                         f"'{LABEL_COLUMN}' and '{DISTANCE_COLUMN}': rename them or leave "
                         "them out of the key columns.")


def write_labels(source: ParquetSource, labels, distances, out_url: str, *,
                 storage_options: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> str:
    """Write cluster labels next to the source's keys: one Parquet part per input chunk.

    Every part holds the key columns of ``source`` (if any), ``cluster``
    (int32) and ``distance`` (float64). Parts are written under
    ``out_url/_temporary-<token>/``, moved to ``out_url/part-NNNNN-<token>.parquet``
    (``NNNNN`` = the input chunk's index: consecutive files, or a run of row groups
    of a large file, see ``open_parquet``'s ``chunk_bytes``; ``<token>`` names the
    commit) and committed by writing ``out_url/_SUCCESS``, which lists them, last;
    only then are the parts of labels that were there removed. On a local disk
    each move is a rename; on object storage the ``_SUCCESS`` marker is the
    commit, which :func:`read_labels` requires. On failure the temporary prefix
    is removed and no marker is written; labels that were there stay readable.

    Parameters
    ----------
    source : ParquetSource
        What the labels were computed from (see :func:`open_parquet`).
    labels : dask.array.Array or ndarray of shape (n_rows,)
        Cluster indices; rechunked to ``source.features``' row chunks if needed.
    distances : dask.array.Array or ndarray of shape (n_rows,)
        Distance of each row to its centre.
    out_url : str
        Output directory (any fsspec URL).
    storage_options : dict, optional
        For ``out_url``. When None and ``out_url`` has the same protocol as the
        source, the source's storage_options are used.
    overwrite : bool, default=False
        Replace existing labels. Otherwise FileExistsError. A model, or
        anything else that is not labels, is refused even then (see
        :func:`check_output`).

    Returns
    -------
    str
        ``out_url`` without credentials.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, pandas as pd
    >>> d = tempfile.mkdtemp()
    >>> pd.DataFrame({"id": [7, 8], "x": [0.0, 5.0]}).to_parquet(os.path.join(d, "in.parquet"))
    >>> src = open_parquet(os.path.join(d, "in.parquet"), key_columns="id")
    >>> _ = write_labels(src, np.array([0, 1]), np.array([0.1, 0.2]), os.path.join(d, "out"))
    >>> read_labels(os.path.join(d, "out")).compute()
       id  cluster  distance
    0   7        0       0.1
    1   8        1       0.2
    """
    if not isinstance(source, ParquetSource):
        raise TypeError("write_labels needs the ParquetSource returned by open_parquet, got "
                        f"{type(source).__name__}.")
    if storage_options is None and _same_protocol(source, out_url):
        storage_options = source._storage_options
    check_label_keys(source.key_columns)
    chunks = source.features.chunks[0]
    labels = _as_chunked(labels, chunks, "labels")
    distances = _as_chunked(distances, chunks, "distances")
    loc = _resolve(out_url, storage_options)
    key_parts = source.keys.to_delayed() if source.keys is not None else [None] * len(chunks)

    with _Commit(loc, overwrite, "labels") as commit:
        # Named by the commit, so that they never replace the parts of the labels in place.
        names = [f"part-{i:05d}-{commit.token}.parquet" for i in range(len(chunks))]
        tasks = [dask.delayed(_write_part)(k, lab, dist, fs=loc.fs, path=commit.path(name),
                                           part_url=loc.display(loc.join(name)),
                                           dask_key_name=f"write-labels-{commit.tmp[-32:]}-{i}")
                 for i, (k, lab, dist, name) in enumerate(zip(
                     key_parts, labels.to_delayed().ravel(), distances.to_delayed().ravel(),
                     names, strict=True))]
        written = _compute_all(tasks)
        marker = {
            "format": LABELS_FORMAT,
            "format_version": 1,
            "source": source.url,
            "columns": [*source.key_columns, LABEL_COLUMN, DISTANCE_COLUMN],
            "n_rows": int(sum(w["rows"] for w in written)),
            "parts": [{"name": n, **w} for n, w in zip(names, written, strict=True)],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        commit.commit(names, marker, stale=_PART_NAME)
    return loc.url


def _same_protocol(source: ParquetSource, url: str) -> bool:
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    known = source._location.fs.protocol
    return protocol in ((known,) if isinstance(known, str) else tuple(known))


def _read_marker(loc: _Location, kind: str) -> dict[str, Any]:
    """The parsed ``_SUCCESS`` marker of a committed output, or an error saying why not."""
    marker = loc.join(SUCCESS_MARKER)
    with _fs_errors(loc.url, loc.secrets, "reading"):
        loc.fs.invalidate_cache(loc.path)
        committed = loc.fs.exists(marker)
        present = committed or loc.fs.exists(loc.path)
    if not present:
        raise FileNotFoundError(f"No {kind} at {loc.url}: nothing exists there.")
    if not committed:
        raise ValueError(f"The {kind} at {loc.url} is incomplete: it has no {SUCCESS_MARKER} "
                         "marker, so it is still being written or its write failed.")
    with _fs_errors(loc.url, loc.secrets, "reading"):
        data = loc.fs.cat_file(marker)
    try:
        return json.loads(data)
    except ValueError:
        raise ValueError(f"The {SUCCESS_MARKER} marker of the {kind} at {loc.url} is not valid "
                         "JSON: the output is incomplete or has been modified.") from None


def _labels_frame(table: pa.Table) -> pd.DataFrame:
    """A labels part as pandas: the key columns in the types they were read in (see
    :func:`_keys_frame`; the pandas metadata cannot name every Arrow-backed type)."""
    return table.to_pandas(types_mapper=_key_type_mapper(False))


def _read_labels_part(item: tuple[str, str], *, fs: fsspec.AbstractFileSystem) -> pd.DataFrame:
    path, part_url = item
    with _fs_errors(part_url, _task_secrets(fs), "reading"), fs.open(path, "rb") as f:
        return _labels_frame(pq.read_table(f))


def read_labels(url: str, storage_options: Mapping[str, Any] | None = None) -> dd.DataFrame:
    """Read the output of :func:`write_labels`, refusing it unless it was committed.

    Parameters
    ----------
    url : str
        The ``out_url`` given to :func:`write_labels`.
    storage_options : dict, optional
        Passed to the fsspec file system.

    Returns
    -------
    dask.dataframe.DataFrame
        The key columns, ``cluster`` and ``distance``, one partition per part.

    Raises
    ------
    FileNotFoundError
        Nothing at ``url``.
    ValueError
        No ``_SUCCESS`` marker (the write is incomplete or failed), a marker that
        is not a labels output's or does not list the parts by name, or parts
        listed in it that are missing or have another size.
    """
    loc = _resolve(url, storage_options)
    marker = _read_marker(loc, "labels output")
    if not isinstance(marker, dict) or marker.get("format") != LABELS_FORMAT:
        found = marker.get("format") if isinstance(marker, dict) else None
        raise ValueError(f"{loc.url} is not a labels output of dask_kmeans (format "
                         f"{found!r}).")
    with _fs_errors(loc.url, loc.secrets, "reading"):
        listing = {info["name"].rstrip("/").rsplit("/", 1)[-1]: info
                   for info in loc.fs.ls(loc.path, detail=True)}
    parts = marker.get("parts")
    # A marker edited into other JSON types is refused as modified, not with an AttributeError.
    if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) for p in parts):
        raise ValueError(f"The labels output at {loc.url} is incomplete or has been modified: "
                         f"its {SUCCESS_MARKER} marker does not list its parts by name.")
    for part in parts:
        info = listing.get(part.get("name"))
        if info is None or int(info.get("size", -1)) != part.get("size"):
            raise ValueError(f"The labels output at {loc.url} is incomplete or has been modified: "
                             f"part {part.get('name')} is missing or its size differs from when "
                             "it was committed.")
    if not parts:
        raise ValueError(f"The {SUCCESS_MARKER} marker of {loc.url} lists no parts: the output "
                         "is incomplete or has been modified.")
    items = [(loc.join(p["name"]), loc.display(loc.join(p["name"]))) for p in parts]
    with _fs_errors(items[0][1], loc.secrets, "reading"), loc.fs.open(items[0][0], "rb") as f:
        meta = _labels_frame(pq.read_schema(f).empty_table())
    return dd.from_map(_read_labels_part, items, meta=meta, label="read-labels",
                       enforce_metadata=False, fs=loc.fs)
