"""Checkpoints of a running fit: JSON on any fsspec URL, written atomically, no pickle.

A checkpoint records what a killed driver needs to finish the fit as an
uninterrupted one would (to the bit when every pass reads the data again; to
rounding on data held in memory, whose passes keep incremental sums and bounds
that a resume starts afresh): the run of ``n_init`` in progress, the random state
before and after its initialisation, the current centres (float64 written with
``repr``, so they round-trip bit for bit), the iteration count, the convergence
tolerance, the best finished run so far, and a fingerprint of the data and of
the parameters, so that a checkpoint from other data or parameters is refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import dask.array as da
import fsspec
import numpy as np

from .io import (
    check_directory_location,
    scrub_url,
    storage_errors,
    strip_credentials,
    write_bytes_atomic,
)

FORMAT = "dask_kmeans.checkpoint/1"
FILE = "checkpoint.json"


def _hash_array(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def data_fingerprint(X, sample_weight=None) -> dict[str, Any]:
    """What identifies the input: paths, sizes, mtimes (Parquet); content or graph otherwise."""
    def one(obj):
        if obj is None:
            return None
        if hasattr(obj, "fingerprint") and hasattr(obj, "feature_names"):
            # With how it was opened: the same files give other rows with other options
            # (missing, drop_zero_norm: in the fingerprint) or dtype.
            return {"parquet": obj.fingerprint(), "features": list(obj.feature_names),
                    "dtype": str(obj.features.dtype), "rows": int(obj.n_rows)}
        if isinstance(obj, da.Array):  # the graph's deterministic name
            return {"dask": obj.name, "shape": [None if s != s else int(s) for s in obj.shape]}
        if hasattr(obj, "dask"):
            # A DataFrame or Series: not ``obj.name``, which is a column called "name" if
            # there is one, or a Series' label, which other Series share; nor ``obj.shape``,
            # whose length is lazy.
            return {"dask": str(obj._name), "shape": [None, *([len(obj.columns)]
                                                           if obj.ndim == 2 else [])]}
        arr = np.asarray(obj)
        if arr.dtype == object:  # bool or nullable columns of a DataFrame: hash the values
            # (an object array's bytes are addresses, different at every call)
            arr = (obj.to_numpy(dtype=np.float64, na_value=np.nan) if hasattr(obj, "to_numpy")
                   else arr.astype(np.float64))
        return {"sha256": _hash_array(arr)}
    return {"X": one(X), "sample_weight": one(sample_weight)}


def params_fingerprint(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON; arrays by content hash, callables by qualified name."""
    out = {}
    for key, value in sorted(params.items()):
        if isinstance(value, np.generic):  # np.int64(3) is 3, not an array nor the text "3"
            value = value.item()
        if hasattr(value, "__array__") and not isinstance(value, str):
            value = {"array_sha256": _hash_array(np.asarray(value, dtype=np.float64))}
        elif callable(value):
            value = {"callable": _callable_fingerprint(value)}
        elif isinstance(value, np.random.RandomState):
            # Not its state, which the interrupted fit moved on: the checkpoint keeps the
            # states the fit needs (a Ctrl-C, then resume=True with the same object, was
            # refused as other parameters).
            value = {"random_state": "a RandomState instance"}
        out[key] = value
    return json.loads(json.dumps(out, default=str))


def _callable_fingerprint(value) -> str:
    """A function importable by name, by its name; any other callable (a lambda, a
    closure, a ``functools.partial``, an object with ``__call__``), by the hash of its
    pickle, which holds its code and the values it closes over (two lambdas, or two
    closures of one factory, were one name)."""
    name = getattr(value, "__qualname__", None)
    module = getattr(value, "__module__", None)
    if name and module and "<" not in name and module != "__main__":
        return f"{module}.{name}"
    import cloudpickle

    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:
        raise ValueError(f"init={value!r} cannot be told apart from another callable for the "
                         f"checkpoint (it cannot be pickled: {exc}); give an importable "
                         "function or the initial centres as an array.") from exc
    return f"{module}.{name or type(value).__qualname__}:" + hashlib.sha256(data).hexdigest()


def _rng_to_json(state) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _rng_from_json(state) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)


def check_location(url: str) -> None:
    """Before any work: a checkpoint can be written at ``url`` (the first one is written
    only after the initialisation, and a file there failed then with a bare errno)."""
    try:
        check_directory_location(url)
    except (OSError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint={strip_credentials(url)!r} cannot hold the checkpoint: "
                         f"{scrub_url(str(exc), url)}") from None


def _checked_state(state: dict[str, Any], shape, n_init, max_iter) -> dict[str, Any]:
    """``state`` with its random states and centres as the fit uses them, checked against
    what the fit expects; KeyError, TypeError, ValueError or IndexError when it does not."""
    def whole(key, low, high):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) \
                or not low <= value <= (high if high is not None else value):
            raise ValueError(f"{key} {value!r} is not an int from {low} to {high}")
        return value

    whole("run", 0, n_init)
    whole("n_iter", 0, max_iter)
    state["rng_before"] = _rng_from_json(state["rng_before"])
    np.random.RandomState().set_state(state["rng_before"])  # refuses a malformed one
    if state.get("rng_after") is not None:
        state["rng_after"] = _rng_from_json(state["rng_after"])
        np.random.RandomState().set_state(state["rng_after"])
    for key, want in (("centers", shape), ("best_centers", shape),
                      ("origin", shape)):
        if state.get(key) is not None:
            value = np.asarray(state[key], dtype=np.float64)
            if want is not None and value.shape != tuple(want):
                raise ValueError(f"{key} has shape {value.shape}, expected {tuple(want)}")
            if not np.isfinite(value).all():
                raise ValueError(f"{key} holds NaN or infinity")
            state[key] = value
    if state.get("best_centers") is not None:
        whole("best_n_iter", 0, max_iter)
        if not np.isfinite(float(state["best_inertia"])):
            raise ValueError("best_inertia is not finite")
        # Written since the flag was kept (a fit that ran to max_iter was restored as
        # converged); a checkpoint from before passes as it was read then.
        state["best_converged"] = state.get("best_converged", True)
        if not isinstance(state["best_converged"], bool):
            raise ValueError("best_converged is not true or false")
    elif n_init is not None and state["run"] >= n_init:
        raise ValueError(f"run {state['run']} of {n_init} is finished, but no best run is kept")
    if state.get("tol_abs") is not None and not float(state["tol_abs"]) >= 0:
        raise ValueError("tol_abs is not a number >= 0")
    return state


class Checkpoint:
    """Read and write the checkpoint of one fit at ``url``."""

    def __init__(self, url: str, data: dict[str, Any], params: dict[str, Any]):
        self.url = url.rstrip("/")
        self.data = data
        self.params = params
        self._fs, self._root = fsspec.core.url_to_fs(self.url)

    @property
    def _path(self) -> str:
        return f"{self._root}/{FILE}"

    @property
    def shown(self) -> str:
        """The checkpoint's URL without credentials, for messages."""
        return strip_credentials(self.url)

    def load(self, shape: tuple[int, int] | None = None, n_init: int | None = None,
             max_iter: int | None = None) -> dict[str, Any] | None:
        """The saved state, or None when there is none; ValueError when it does not match,
        or is damaged: not the state of a fit whose centres have ``shape`` and which runs
        ``n_init`` times ``max_iter`` iterations at most (a hand-edited file was trusted:
        2 centres resumed a fit of 4)."""
        try:
            with storage_errors(self.url, "reading the checkpoint at"):
                raw = self._fs.cat_file(self._path)
        except FileNotFoundError:
            return None
        try:
            state = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"The checkpoint at {self.shown} is not valid JSON; delete it to "
                             "start afresh.") from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"The checkpoint at {self.shown} has format {found!r}, "
                             f"expected {FORMAT!r}.")
        for what, mine, theirs in (("data", self.data, state.get("data")),
                                   ("parameters", self.params, state.get("params"))):
            if mine != theirs:
                keys = sorted(k for k in set(mine) | set(theirs or {})
                              if mine.get(k) != (theirs or {}).get(k))
                raise ValueError(
                    f"The checkpoint at {self.shown} was written for other {what} "
                    f"(different: {', '.join(keys)}); resume with the same input and "
                    "parameters, or remove the checkpoint to start afresh.")
        try:
            return _checked_state(state, shape, n_init, max_iter)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"The checkpoint at {self.shown} is damaged ({exc}); delete it to "
                             "start afresh.") from None

    def save(self, *, run: int, rng_before, rng_after=None, centers=None, n_iter: int = 0,
             tol_abs: float | None = None, converged: bool = False,
             best: tuple | None = None, origin=None) -> None:
        """Atomically replace the checkpoint (write a temporary file, then move it)."""
        state = {
            "format": FORMAT,
            "data": self.data,
            "params": self.params,
            "run": run,
            "rng_before": _rng_to_json(rng_before),
            "rng_after": None if rng_after is None else _rng_to_json(rng_after),
            "centers": None if centers is None else np.asarray(centers, np.float64).tolist(),
            # What the run's passes sum the rows about (None before its first pass).
            "origin": None if origin is None else np.asarray(origin, np.float64).tolist(),
            "n_iter": n_iter,
            "tol_abs": tol_abs,
            "converged": bool(converged),
            "best_centers": None if best is None else np.asarray(best[0], np.float64).tolist(),
            "best_inertia": None if best is None else float(best[1]),
            "best_n_iter": None if best is None else int(best[2]),
            "best_converged": None if best is None else bool(best[3]),
        }
        data = json.dumps(state).encode()
        with storage_errors(self.url, "writing the checkpoint at"):
            self._fs.makedirs(self._root, exist_ok=True)
            write_bytes_atomic(self._fs, self._path, data)
