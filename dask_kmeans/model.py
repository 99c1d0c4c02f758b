"""Save and load a fitted model in a portable, pickle-free format.

A model directory holds:

``centers.parquet``
    One row per cluster, one column per feature (named by the feature names),
    in the dtype of the centres.
``metadata.json``
    The caller's metadata as JSON. Every model holds ``feature_names`` (the
    columns of the centres, in order), ``inertia`` (a float) and ``n_iter`` (an
    int >= 0): what loading a fitted estimator needs. Anything else (dtype,
    parameters, library version, input URL...) is the caller's.
``_SUCCESS``
    Written last: the format, the shape and dtype of the centres, and sha256
    checksums of both files and of the centres' bytes. :func:`read_model`
    requires it and checks every checksum, so an incomplete write or a file
    changed afterwards is refused. The checksums detect accidents and partial
    edits; they are not a signature.

Reading runs no code from the files: only JSON and Parquet are parsed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .io import (
    CREDENTIAL_KEY,
    LABELS_FORMAT,
    MODEL_FORMAT,
    _Commit,
    _fs_errors,
    _read_marker,
    _resolve,
    strip_credentials,
)

__all__ = ["read_model", "write_model"]

MODEL_FORMAT_VERSION = 1
CENTERS_FILE = "centers.parquet"
METADATA_FILE = "metadata.json"
CENTER_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_sha256(centers: np.ndarray) -> str:
    # Fixed byte order and layout, so the checksum does not depend on the machine.
    return _sha256(np.ascontiguousarray(centers, dtype=centers.dtype.newbyteorder("<")).tobytes())


def _check_centers(centers) -> np.ndarray:
    centers = np.asarray(centers)
    if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
        raise ValueError("centers must be an ndarray of shape (n_clusters, n_features) with at "
                         f"least one cluster and one feature; got shape {centers.shape}.")
    if centers.dtype not in CENTER_DTYPES:
        raise ValueError(f"centers must be float32 or float64, got dtype {centers.dtype}.")
    if not np.all(np.isfinite(centers)):
        raise ValueError("centers contain NaN or infinity; a fitted model has finite centres.")
    return np.ascontiguousarray(centers)


def _json_clean(value: Any, where: str) -> Any:
    """A JSON-ready copy of ``value``; ValueError naming ``where`` for anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"metadata{where} has the key {key!r} of type "
                                 f"{type(key).__name__}; JSON keys must be str.")
            if CREDENTIAL_KEY.search(key) or key == "storage_options":
                raise ValueError(f"metadata{where} has the key {key!r}, which is named like a "
                                 "credential; a model must not store credentials. Remove it.")
            out[key] = _json_clean(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_json_clean(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metadata{where} is {value}, which JSON cannot represent; "
                             "use None or a finite number.")
        return value
    if isinstance(value, str):
        if strip_credentials(value) != value:
            raise ValueError(f"metadata{where} is a URL holding credentials; store "
                             "strip_credentials(url) instead.")
        return value
    hint = " (convert it with .tolist())" if isinstance(value, np.ndarray) else ""
    raise ValueError(f"metadata{where} is a {type(value).__name__}, which is not "
                     f"JSON-serialisable{hint}.")


def _check_feature_names(names, n_features: int, where: str) -> list[str]:
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where} must be a list of str, got {names!r}.")
    if len(names) != n_features:
        raise ValueError(f"{where} has {len(names)} name(s) but the centres have "
                         f"{n_features} feature(s).")
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"{where} repeats the name(s) {dup}; feature names must be unique.")
    return list(names)


def _check_fit_stats(metadata: dict[str, Any], where: str) -> None:
    """``inertia`` and ``n_iter``, which every model holds, are there and of their types;
    ``inertia`` becomes a float."""
    missing = [key for key in ("inertia", "n_iter") if key not in metadata]
    if missing:
        raise ValueError(f"{where} must contain 'inertia' and 'n_iter' (the fit's inertia, a "
                         "finite number, and its number of iterations, an int >= 0), which "
                         f"loading a model needs; it has no {' or '.join(map(repr, missing))}.")
    inertia, n_iter = metadata["inertia"], metadata["n_iter"]
    try:
        finite = not isinstance(inertia, bool) and isinstance(inertia, int | float) \
            and math.isfinite(inertia)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise ValueError(f"{where}['inertia'] must be a finite number (the fit's inertia), "
                         f"got {inertia!r}.")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"{where}['n_iter'] must be an int >= 0 (the fit's number of "
                         f"iterations), got {n_iter!r}.")
    metadata["inertia"] = float(inertia)


def _check_metadata(metadata, centers: np.ndarray) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}.")
    clean = _json_clean(metadata, "")
    if "feature_names" not in clean:
        raise ValueError("metadata must contain 'feature_names': the column names of the "
                         "centres, in order.")
    _check_feature_names(clean["feature_names"], centers.shape[1], "metadata['feature_names']")
    _check_consistent(clean, centers, "metadata")
    _check_fit_stats(clean, "metadata")
    return clean


def _check_consistent(metadata: Mapping[str, Any], centers: np.ndarray, what: str) -> None:
    """Optional metadata entries (dtype, n_clusters, n_features) must match the centres."""
    expected = {"dtype": centers.dtype.name, "n_clusters": centers.shape[0],
                "n_features": centers.shape[1]}
    for key, value in expected.items():
        if key in metadata and metadata[key] != value:
            raise ValueError(f"{what}[{key!r}] is {metadata[key]!r} but the centres have "
                             f"{key} {value!r}.")


def _centers_bytes(centers: np.ndarray, names: list[str]) -> bytes:
    table = pa.table({name: centers[:, j] for j, name in enumerate(names)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


#: Files a replaced model leaves behind that describe it: removed when it is replaced.
_OLD_MODEL_FILES = re.compile(r"profile\.(csv|md)$")


def write_model(url: str, centers: np.ndarray, metadata: Mapping[str, Any], *,
                storage_options: Mapping[str, Any] | None = None,
                overwrite: bool = False) -> str:
    """Save cluster centres and metadata as Parquet + JSON, committed by a checksummed marker.

    The files are written under ``url/_temporary-<uuid>/``, moved into ``url``,
    and ``url/_SUCCESS`` (with the checksums) is written last.

    Parameters
    ----------
    url : str
        Model directory on any fsspec URL.
    centers : ndarray of shape (n_clusters, n_features)
        float32 or float64, finite.
    metadata : dict
        JSON-serialisable (NumPy scalars are converted), with
        ``"feature_names"``: a list of n_features unique str,
        ``"inertia"``: a finite number (stored as a float), and ``"n_iter"``:
        an int >= 0; :func:`read_model` refuses a model without them. Keys
        named like credentials (``secret``, ``token``, ``password``,
        ``storage_options``...) and URLs holding a password are refused.
        Optional ``"dtype"``, ``"n_clusters"`` and ``"n_features"`` must match
        ``centers``.
    storage_options : dict, optional
        Passed to the fsspec file system; never written.
    overwrite : bool, default=False
        Replace an existing model at ``url``; otherwise FileExistsError. The
        profile files written next to the old model (``profile.csv``,
        ``profile.md``) describe its clusters, so they go with it. Labels, or
        anything else that is not a model, are refused even then (see
        :func:`dask_kmeans.io.check_output`).

    Returns
    -------
    str
        ``url`` without credentials.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "model")
    >>> centers = np.array([[0.0, 1.0], [2.0, 3.0]])
    >>> meta = {"feature_names": ["x", "y"], "inertia": 1.5, "n_iter": 3}
    >>> _ = write_model(path, centers, meta)
    >>> C, meta = read_model(path)
    >>> C
    array([[0., 1.],
           [2., 3.]])
    >>> meta["feature_names"], meta["inertia"], meta["n_iter"]
    (['x', 'y'], 1.5, 3)
    """
    centers = _check_centers(centers)
    clean = _check_metadata(metadata, centers)
    centers_data = _centers_bytes(centers, clean["feature_names"])
    metadata_data = json.dumps(clean, indent=2, sort_keys=True, allow_nan=False).encode()
    marker = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "centers": {"shape": list(centers.shape), "dtype": centers.dtype.name,
                    "sha256": _array_sha256(centers)},
        "files": {CENTERS_FILE: {"sha256": _sha256(centers_data), "size": len(centers_data)},
                  METADATA_FILE: {"sha256": _sha256(metadata_data), "size": len(metadata_data)}},
    }
    loc = _resolve(url, storage_options)
    with _Commit(loc, overwrite, "model") as commit:
        with _fs_errors(loc.url, loc.secrets, "writing"):
            loc.fs.pipe_file(commit.path(CENTERS_FILE), centers_data)
            loc.fs.pipe_file(commit.path(METADATA_FILE), metadata_data)
        commit.commit([CENTERS_FILE, METADATA_FILE], marker, stale=_OLD_MODEL_FILES)
    return loc.url


def _modified(url: str, detail: str) -> ValueError:
    return ValueError(f"The model at {url} is incomplete or has been modified: {detail}. "
                      "Write it again (KMeans.save, or fit --output on the command line).")


def read_model(url: str, *,
               storage_options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict]:
    """Load a model written by :func:`write_model`, verifying it is complete and unmodified.

    Parameters
    ----------
    url : str
        Model directory on any fsspec URL.
    storage_options : dict, optional
        Passed to the fsspec file system.

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features)
        In the dtype they were written in.
    metadata : dict
        The metadata as written. It holds at least ``"feature_names"`` (a list
        of n_features unique str, the columns of the centres in order),
        ``"inertia"`` (a finite float) and ``"n_iter"`` (an int >= 0).
        ``"dtype"``, ``"n_clusters"`` and ``"n_features"``, when present, match
        the centres; the other keys are not checked.

    Raises
    ------
    FileNotFoundError
        Nothing at ``url``.
    ValueError
        No ``_SUCCESS`` marker, one that does not record the files' and the
        centres' checksums (in the JSON types :func:`write_model` writes), a
        checksum that does not match, centres and metadata that disagree
        (shape, feature names, dtype), or metadata without ``inertia`` or
        ``n_iter`` of their types: the model is incomplete or has been
        modified.
    """
    loc = _resolve(url, storage_options)
    marker = _read_marker(loc, "model")
    if isinstance(marker, dict) and marker.get("format") == LABELS_FORMAT:
        raise ValueError(f"{loc.url} holds dask_kmeans labels, not a model: give the "
                         "directory a fit wrote its model to.")
    if not isinstance(marker, dict) or marker.get("format") != MODEL_FORMAT:
        raise _modified(loc.url, f"its _SUCCESS marker is not a {MODEL_FORMAT} marker")
    if marker.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"The model at {loc.url} has format version "
                         f"{marker.get('format_version')!r}; this version of dask_kmeans reads "
                         f"version {MODEL_FORMAT_VERSION}.")
    # A marker edited into other JSON types is refused as modified, not with an AttributeError.
    files, recorded = marker.get("files"), marker.get("centers")
    if not isinstance(files, dict) or not all(
            isinstance(files.get(name), dict) and isinstance(files[name].get("sha256"), str)
            for name in (CENTERS_FILE, METADATA_FILE)):
        raise _modified(loc.url, "its _SUCCESS marker does not record the files' checksums")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("dtype"), str) \
            or not isinstance(recorded.get("sha256"), str) \
            or not isinstance(recorded.get("shape"), list):
        raise _modified(loc.url, "its _SUCCESS marker does not record the centres' shape, "
                                 "dtype and checksum")
    data = {}
    for name in (CENTERS_FILE, METADATA_FILE):
        expected = files[name]
        try:
            with _fs_errors(loc.display(loc.join(name)), loc.secrets, "reading"):
                data[name] = loc.fs.cat_file(loc.join(name))
        except FileNotFoundError:
            raise _modified(loc.url, f"{name} is missing") from None
        if _sha256(data[name]) != expected.get("sha256"):
            raise _modified(loc.url, f"the checksum of {name} does not match the one recorded "
                                     "in _SUCCESS")
    try:
        metadata = json.loads(data[METADATA_FILE])
        table = pq.read_table(pa.BufferReader(data[CENTERS_FILE]))
    except (ValueError, pa.ArrowException) as e:
        raise _modified(loc.url, f"a file cannot be parsed ({type(e).__name__})") from None
    if not isinstance(metadata, dict) or "feature_names" not in metadata:
        raise _modified(loc.url, f"{METADATA_FILE} has no 'feature_names'")
    arrow_type = {"float32": pa.float32(), "float64": pa.float64()}.get(recorded.get("dtype"))
    if arrow_type is None or any(t != arrow_type for t in table.schema.types):
        raise _modified(loc.url, f"{CENTERS_FILE} has column types "
                                 f"{sorted({str(t) for t in table.schema.types})}, _SUCCESS "
                                 f"records {recorded.get('dtype')!r}")
    dtype = np.dtype(recorded["dtype"])
    centers = np.empty((table.num_rows, table.num_columns), dtype=dtype)
    for j in range(table.num_columns):
        centers[:, j] = table.column(j).to_numpy()
    if list(centers.shape) != recorded.get("shape"):
        raise _modified(loc.url, f"{CENTERS_FILE} has shape {centers.shape}, _SUCCESS records "
                                 f"{recorded.get('shape')}")
    if _array_sha256(centers) != recorded.get("sha256"):
        raise _modified(loc.url, "the centres' values do not match their recorded checksum")
    try:
        names = _check_feature_names(metadata["feature_names"], centers.shape[1],
                                     "metadata['feature_names']")
        _check_consistent(metadata, centers, "metadata")
        _check_fit_stats(metadata, "metadata")
    except ValueError as e:
        raise _modified(loc.url, str(e)) from None
    if table.column_names != names:
        raise _modified(loc.url, f"the columns of {CENTERS_FILE} {table.column_names} differ "
                                 f"from metadata['feature_names'] {names}")
    return centers, metadata
