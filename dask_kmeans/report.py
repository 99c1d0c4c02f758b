"""Reports on a fitted model: cluster profiles, the elbow curve, scatter plots of the clusters.

:func:`profile` describes every cluster (size, share, mean and standard
deviation of each feature, a short text) in one pass over dask data.
:func:`format_profile` and :func:`write_profile` print or store it.
:func:`suggest_k` and :func:`silhouette_sample` help choose K from a sweep;
:func:`plot_elbow` and :func:`plot_clusters` draw PNG files.

The plots need matplotlib, the optional ``plot`` extra
(``pip install "dask-kmeans[plot]"``); it is imported only by the plotting
functions. scikit-learn is imported only where it is used, so dask workers
that run the chunk functions of this module do not load it.
"""

from __future__ import annotations

import io as _stdio
import math
import numbers
import posixpath
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd

from .io import ParquetSource, _fs_errors, _resolve, write_bytes_atomic

__all__ = [
    "format_profile",
    "plot_clusters",
    "plot_elbow",
    "profile",
    "silhouette_sample",
    "suggest_k",
    "write_profile",
]

PLOT_HINT = ('Plotting needs matplotlib, an optional dependency of dask-kmeans: '
             'pip install "dask-kmeans[plot]"')
#: Percentiles each chunk keeps of every feature, to merge into approximate quartiles.
SKETCH_PERCENTILES = np.linspace(0.0, 100.0, 101)
#: Rows of a chunk's sketch of one feature: the rows' values at SKETCH_PERCENTILES, the numbers
#: of rows below and at most each, and the feature's exact quartiles in the chunk.
_SKETCH_ROWS = 3 * SKETCH_PERCENTILES.size + 2
FIGSIZE = (8.0, 6.0)
DPI = 100


# --------------------------------------------------------------------------- input


def _feature_names(model) -> list[str]:
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    return [f"x{i}" for i in range(np.shape(model.cluster_centers_)[1])]


def _check_fitted(model) -> None:
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "cluster_centers_")


def _check_numeric(columns, dtypes) -> None:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    bad = [f"{c!r} ({t})" for c, t in zip(columns, dtypes, strict=True)
           if not (is_numeric_dtype(t) or is_bool_dtype(t))]
    if bad:
        raise ValueError(f"The features must be numeric; non-numeric column(s): {', '.join(bad)}. "
                         "Select the model's feature columns.")


def _missing_columns(columns: list, wanted: list, what: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{what} lacks the feature column(s) {missing} that the model was "
                         f"fitted on; it has {columns}.")


def _as_matrix(data, fitted_names=None, n_features: int | None = None):
    """``data`` as a 2-D ndarray (float64) or a dask array with known row chunks and one column
    chunk, its columns in the model's order.

    Columns of DataFrames and Parquet sources are matched to ``fitted_names`` by name.
    """
    wanted = None if fitted_names is None else [str(n) for n in fitted_names]
    if isinstance(data, ParquetSource):
        X, columns = data.features, list(data.feature_names)
        if wanted is not None:
            _missing_columns(columns, wanted, "The Parquet input")
            order = [columns.index(c) for c in wanted]
            if order != list(range(X.shape[1])):
                X = X[:, order]
    elif isinstance(data, dd.DataFrame | pd.DataFrame):
        if wanted is not None:
            _missing_columns(list(data.columns), wanted, "The DataFrame")
            data = data[wanted]
        _check_numeric(list(data.columns), list(data.dtypes))
        # As float64 first: a dask DataFrame of bool and float columns made an object array.
        # Its chunk sizes below: not to_dask_array(lengths=True), which counts the rows of
        # the optimised graph (merged partitions after a projection of dd.read_parquet).
        X = (data.astype(np.float64).to_dask_array()
             if isinstance(data, dd.DataFrame) else data.to_numpy(dtype=np.float64))
    elif isinstance(data, da.Array):
        X = data
    else:
        X = np.asarray(data, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"Expected data of shape (n_samples, n_features), got {X.ndim}-D data "
                         f"of shape {X.shape}.")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"The data has {X.shape[1]} features but the model was fitted on "
                         f"{n_features}.")
    if isinstance(X, da.Array):
        if any(math.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})
    if X.shape[0] == 0:
        raise ValueError("The data has no rows.")
    return X


def _model_matrix(model, data):
    _check_fitted(model)
    return _as_matrix(data, getattr(model, "feature_names_in_", None),
                      np.shape(model.cluster_centers_)[1])


def _predict(model, X):
    """``model.predict`` on a matrix from :func:`_model_matrix` (columns in the model's order)."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return model.predict(X)
    if not isinstance(X, da.Array):
        # Named columns, so that a model fitted on a DataFrame does not warn.
        return np.asarray(model.predict(pd.DataFrame(X, columns=names, copy=False)))
    # A dask matrix whose columns are already in the model's order: a dask DataFrame
    # around it would cost a pass for its partition lengths, so scikit-learn's warning
    # that it has no names is silenced instead.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
        return model.predict(X)


def _rows(values, n: int, name: str, X):
    """A 1-D per-row array: an ndarray, or a dask array in ``X``'s row chunks when X is dask."""
    if isinstance(values, dd.Series | dd.DataFrame):
        values = values.to_dask_array()  # chunk sizes below, as for X
    if not isinstance(values, da.Array):
        values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"'{name}' must be 1-D of shape (n_samples,), got shape {values.shape}.")
    if isinstance(values, da.Array) and any(math.isnan(c) for c in values.chunks[0]):
        values = values.compute_chunk_sizes()
    if values.shape[0] != n:
        raise ValueError(f"'{name}' has {values.shape[0]} rows but the data has {n}.")
    if isinstance(X, da.Array):
        if not isinstance(values, da.Array):
            return da.from_array(values, chunks=(X.chunks[0],))
        return values if values.chunks[0] == X.chunks[0] else values.rechunk((X.chunks[0],))
    return values.compute() if isinstance(values, da.Array) else values


def _check_weights(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise ValueError(f"sample_weight must be finite and >= 0; {int(bad.sum())} row(s) are "
                         f"not, e.g. {w[bad][0]!r}.")
    return w


# --------------------------------------------------------------------------- profile


def _stats_block(x, labels, centers, w=None) -> np.ndarray:
    """Per-cluster weighted counts, sums and sums of squares of one chunk, packed in a (1, P) row.

    The sums are of deviations from the cluster's centre, so the sums of
    squares do not cancel catastrophically when a feature's mean is large
    against its spread.
    """
    k, d = centers.shape
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.intp)
    w = np.ones(labels.shape[0]) if w is None else _check_weights(w)
    dev = x - centers[labels]
    wdev = w[:, None] * dev
    cell = (labels[:, None] * d + np.arange(d)).ravel()
    counts = np.bincount(labels, weights=w, minlength=k)
    sums = np.bincount(cell, weights=wdev.ravel(), minlength=k * d)
    squares = np.bincount(cell, weights=(wdev * dev).ravel(), minlength=k * d)
    return np.concatenate([counts, sums, squares])[None, :]


#: Squared distance from a cluster's reference point to its mean, over its variance, above
#: which the variance taken from sums of squares about that point has lost digits to
#: cancellation (relative error ~1e-16 times the ratio).
_CANCEL_RATIO = 1e6


def _moments(totals: np.ndarray, reference: np.ndarray):
    """Per-cluster means and standard deviations from the sums of :func:`_stats_block`
    taken about ``reference`` (NaN for empty clusters), and whether the variance of an
    occupied cluster may have cancelled (its mean too far from ``reference``)."""
    k, d = reference.shape
    counts = totals[:k]
    occupied = counts[:, None] > 0
    shift = np.divide(totals[k:k + k * d].reshape(k, d), counts[:, None],
                      out=np.full((k, d), np.nan), where=occupied)
    squares = np.divide(totals[k + k * d:].reshape(k, d), counts[:, None],
                        out=np.full((k, d), np.nan), where=occupied)
    var = np.subtract(squares, shift**2, out=np.full((k, d), np.nan), where=occupied)
    with np.errstate(invalid="ignore"):
        cancelled = bool(np.any(occupied & (shift**2 > _CANCEL_RATIO * np.maximum(var, 0.0))))
    stds = np.sqrt(np.maximum(var, 0.0, where=occupied, out=np.full((k, d), np.nan)))
    return reference + shift, stds, cancelled


def _sketch_block(x) -> np.ndarray:
    """Row count and a sketch of every column of one chunk, in a (1, 1 + _SKETCH_ROWS * d) row.

    A column's sketch holds the values of the rows nearest to
    SKETCH_PERCENTILES of its sorted rows, how many rows are below each value
    and how many at most each, and the column's quartiles (NumPy's). The
    counts place a value that many rows hold (a count, a zero) exactly: they
    say where its rows start and end, which its percentiles alone do not.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    out = np.full((1, 1 + _SKETCH_ROWS * d), np.nan)
    out[0, 0] = n
    if n:
        columns = np.sort(x.T, axis=1)
        ranks = np.round(SKETCH_PERCENTILES / 100.0 * (n - 1)).astype(np.intp)
        values = columns[:, ranks]
        below = [np.searchsorted(c, v, side="left") for c, v in zip(columns, values, strict=True)]
        upto = [np.searchsorted(c, v, side="right") for c, v in zip(columns, values, strict=True)]
        quartiles = np.percentile(columns, [25, 75], axis=1)
        out[0, 1:] = np.concatenate([values.T, np.transpose(below), np.transpose(upto),
                                     quartiles]).ravel()
    return out


def _sketch_counts(values, below, upto, u: float) -> tuple[float, float]:
    """How many rows of all chunks are below ``u``, and at most ``u``, from their sketches of a
    feature (arrays of shape (n_chunks, SKETCH_PERCENTILES.size)).

    Exact where ``u`` is in a chunk's sketch; between two of its values, the
    chunk's rows strictly between them are taken as spread evenly.
    """
    p = values.shape[1]
    first = (values < u).sum(axis=1)
    found = (values <= u).sum(axis=1) > first
    chunk = np.arange(values.shape[0])
    at = np.minimum(first, p - 1)
    i = np.clip(first, 1, p - 1)
    start, gap = values[chunk, i - 1], values[chunk, i] - values[chunk, i - 1]
    along = np.divide(u - start, gap, out=np.zeros(gap.shape), where=gap > 0)
    between = upto[chunk, i - 1] + along * (below[chunk, i] - upto[chunk, i - 1])
    between = np.where(first == 0, 0.0, np.where(first == p, upto[:, -1], between))
    return (float(np.where(found, below[chunk, at], between).sum()),
            float(np.where(found, upto[chunk, at], between).sum()))


def _merge_quartiles(sketches: np.ndarray, d: int) -> np.ndarray:
    """Approximate quartiles, shape (2, d), from the chunks' sketches (see :func:`_sketch_block`).

    A value ``u`` of any chunk's sketch is held by the sorted rows (of all
    chunks) from position ``below(u)`` to ``upto(u) - 1``, with the counts of
    :func:`_sketch_counts`; between two such values the rows' values are
    interpolated linearly, as NumPy's percentile does between two rows. The
    quartiles are read at positions ``q * (n - 1)``, found by bisection over
    the sketches' values. Exact for one chunk, and where the rows near a
    quartile are in every chunk's sketch: chunks of at most 101 rows, values
    that fill a percentile of every chunk holding them (counts, zeros);
    otherwise within one percentile point of rank.
    """
    n = sketches[:, 0]
    grids = sketches[n > 0, 1:].reshape(-1, _SKETCH_ROWS, d)
    n = n[n > 0]
    if len(n) == 1:
        return grids[0, -2:]
    p = SKETCH_PERCENTILES.size
    out = np.empty((2, d))
    for j in range(d):
        values, below, upto = grids[:, :p, j], grids[:, p:2 * p, j], grids[:, 2 * p:3 * p, j]
        points = np.unique(values)
        for row, position in enumerate(np.array([0.25, 0.75]) * (n.sum() - 1)):
            # The first value whose last position reaches the quartile's (the largest does).
            lo, hi = 0, points.size - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if _sketch_counts(values, below, upto, points[mid])[1] - 1 >= position:
                    hi = mid
                else:
                    lo = mid + 1
            starts = _sketch_counts(values, below, upto, points[lo])[0]
            if lo == 0 or starts <= position:
                out[row, j] = points[lo]
                continue
            ends = _sketch_counts(values, below, upto, points[lo - 1])[1] - 1
            along = (position - ends) / (starts - ends)
            out[row, j] = points[lo - 1] + along * (points[lo] - points[lo - 1])
    return out


def _describe(means: np.ndarray, quartiles: np.ndarray, names: list[str]) -> str:
    if np.isnan(means).all():
        return "empty"
    parts = []
    for name, m, lo, hi in zip(names, means, quartiles[0], quartiles[1], strict=True):
        if m < lo:
            parts.append(f"{name}: low")
        elif m > hi:
            parts.append(f"{name}: high")
    return ", ".join(parts) or "typical"


def profile(model, data, *, sample_weight=None) -> pd.DataFrame:
    """One row per cluster: size, share, mean and std of every feature, and a description.

    The labels are ``model.predict(data)``. For dask input (a dask array or
    DataFrame, or a :class:`~dask_kmeans.io.ParquetSource`) the prediction
    and every statistic are one dask graph computed once, so each chunk of
    the data is read once: a ``blockwise`` layer returns per-cluster weighted
    counts, sums and sums of squares of each chunk (added by a tree sum), a
    second one a percentile sketch of each chunk's features. A dask DataFrame
    or a dask array with unknown chunk sizes first has its chunk lengths
    counted, as ``KMeans.predict`` does.

    Parameters
    ----------
    model : KMeans
        A fitted :class:`dask_kmeans.KMeans` (anything with ``cluster_centers_``
        and a ``predict`` that accepts ``data`` also works).
    data : array-like, dask array, DataFrame or ParquetSource of shape (n_samples, n_features)
        The rows to describe, in the units the model was fitted in. Columns of
        DataFrames and Parquet sources are matched to ``model.feature_names_in_``
        by name; others are taken in order.
    sample_weight : array-like or dask array of shape (n_samples,), default=None
        Row weights: the sizes are sums of weights and the means and standard
        deviations are weighted (a weight of 2 is the same as repeating the row).
        The quartiles behind the descriptions are of the rows, unweighted.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``cluster`` (0 to n_clusters - 1), with the columns:

        - ``size``: the number of rows (int64), or the sum of their weights
          (float64) with ``sample_weight``;
        - ``share``: ``size`` over the total, between 0 and 1;
        - ``<feature>_mean`` and ``<feature>_std`` for every feature in the
          model's order: the weighted mean and population standard deviation
          (``ddof=0``) in the data's units; NaN for an empty cluster;
        - ``description``: the features whose cluster mean is below the
          feature's overall 25th percentile ("low") or above its 75th
          ("high"), as ``"age: low, income: high"``; "typical" when there are
          none, "empty" for a cluster without rows.

        Feature names are ``model.feature_names_in_``, else ``x0``, ``x1``...
        ``attrs["quartiles"]`` maps each feature to its ``[q25, q75]``;
        ``attrs["exact_quartiles"]`` is True for in-memory input (NumPy's
        percentiles) and False for dask input, where sketches of the chunks
        (every percentile's value and how many rows are below and at most
        it) are merged: exact for one chunk and for values that many rows
        hold (counts, zeros), otherwise within one percentile point of rank.

    Examples
    --------
    >>> import pandas as pd
    >>> from dask_kmeans import KMeans
    >>> X = pd.DataFrame({"age": [22.0, 25, 24, 61, 58, 63],
    ...                   "income": [80e3, 90e3, 85e3, 30e3, 35e3, 32e3]})
    >>> km = KMeans(n_clusters=2, init=X.to_numpy()[[0, 3]]).fit(X)
    >>> table = profile(km, X)
    >>> table[["size", "share", "age_mean", "description"]]  # doctest: +NORMALIZE_WHITESPACE
             size  share   age_mean             description
    cluster
    0           3    0.5  23.666667  age: low, income: high
    1           3    0.5  60.666667  age: high, income: low
    """
    X = _model_matrix(model, data)
    names = _feature_names(model)
    centers = np.asarray(model.cluster_centers_, dtype=np.float64)
    k, d = centers.shape
    weights = None
    if sample_weight is not None:
        weights = _rows(sample_weight, X.shape[0], "sample_weight", X)
        if not isinstance(weights, da.Array):
            weights = _check_weights(weights)
    labels = _predict(model, X)

    if isinstance(X, da.Array):
        labels = labels if labels.chunks[0] == X.chunks[0] else labels.rechunk((X.chunks[0],))
        extra = () if weights is None else (weights, "i")

        def stats(reference):
            return da.blockwise(
                _stats_block, "ip", X, "ij", labels, "i",
                da.from_array(reference, chunks=reference.shape), "kj", *extra,
                new_axes={"p": k + 2 * k * d}, adjust_chunks={"i": 1}, align_arrays=False,
                concatenate=True, dtype=np.float64,
                meta=np.empty((0, 0), dtype=np.float64)).sum(axis=0)

        sketches = da.blockwise(
            _sketch_block, "ip", X, "ij", new_axes={"p": 1 + _SKETCH_ROWS * d},
            adjust_chunks={"i": 1}, concatenate=True, dtype=np.float64,
            meta=np.empty((0, 0), dtype=np.float64))
        totals, sketches = dask.compute(stats(centers), sketches)
        quartiles = _merge_quartiles(sketches, d)
        exact = False
    else:
        def stats(reference):
            return _stats_block(X, labels, reference, weights)[0]

        totals = stats(centers)
        quartiles = np.percentile(X, [25, 75], axis=0)
        exact = True

    counts = totals[:k]
    if not counts.sum() > 0:
        raise ValueError("sample_weight sums to zero: no cluster has any weight.")
    means, stds, cancelled = _moments(totals, centers)
    if cancelled:
        # The centres are far from their clusters' means against the spread (cosine
        # centres are unit vectors; data drifted since the fit): the squares about them
        # lost the variance. Once more about the means (a second pass over dask input).
        reference = np.nan_to_num(means)
        means, stds, _ = _moments(dask.compute(stats(reference))[0]
                                  if isinstance(X, da.Array) else stats(reference), reference)

    columns: dict[str, Any] = {
        "size": counts.round().astype(np.int64) if weights is None else counts,
        "share": counts / counts.sum(),
    }
    for j, name in enumerate(names):
        columns[f"{name}_mean"] = means[:, j]
        columns[f"{name}_std"] = stds[:, j]
    columns["description"] = [_describe(means[c], quartiles, names) for c in range(k)]
    out = pd.DataFrame(columns, index=pd.RangeIndex(k, name="cluster"))
    out.attrs["quartiles"] = {name: [float(quartiles[0, j]), float(quartiles[1, j])]
                              for j, name in enumerate(names)}
    out.attrs["exact_quartiles"] = exact
    return out


# --------------------------------------------------------------------------- tables


def _decimals(value: float, digits: int) -> int | None:
    """Decimals that show ``digits`` significant digits of ``value``; None outside the range
    where fixed notation reads well."""
    magnitude = abs(float(value))
    if not 1e-3 <= magnitude < 1e15:
        return None
    return max(0, digits - 1 - math.floor(math.log10(magnitude)))


#: Significant digits that tell every float64 apart; more would only print rounding noise.
_MAX_DIGITS = 17


def _number(value, decimals: int | None = None) -> str:
    """About four significant digits, thousands separated; at least down to the ``decimals``-th
    decimal place (a negative one counts tens, hundreds...) when given."""
    if value is None or not np.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    own = _decimals(value, 4)
    exponent = math.floor(math.log10(abs(float(value))))
    # The digits down to the decimals-th place, beyond the first.
    more = 0 if decimals is None else min(exponent + decimals, _MAX_DIGITS - 1)
    if own is None:
        return f"{value:.{max(3, more)}e}"
    return f"{value:,.{max(own, more - exponent)}f}"


def _mean_std(mean, std) -> str:
    if not np.isfinite(mean):
        return "-"
    # The mean is shown at least to the precision of two significant digits of its spread,
    # so that clusters whose means differ by less than the mean's magnitude stay apart.
    decimals = 1 - math.floor(math.log10(std)) if np.isfinite(std) and std > 0 else None
    return f"{_number(mean, decimals)} ± {_number(std)}"


def _cells(df: pd.DataFrame) -> tuple[list[str], list[bool], list[list[str]]]:
    """Header, right-alignment flags and text cells of a profile, a feature's mean and std
    in one "mean ± std" cell."""
    features = {c[:-5] for c in df.columns
                if isinstance(c, str) and c.endswith("_mean") and f"{c[:-5]}_std" in df.columns}
    header, right, columns = [str(df.index.name or "cluster")], [True], [
        [str(i) for i in df.index]]
    for c in df.columns:
        if isinstance(c, str) and c.endswith("_std") and c[:-4] in features:
            continue
        values = df[c]
        if isinstance(c, str) and c.endswith("_mean") and c[:-5] in features:
            std = df[f"{c[:-5]}_std"]
            header.append(f"{c[:-5]} (mean ± std)")
            cells = [_mean_std(m, s) for m, s in zip(values, std, strict=True)]
        elif c == "share":
            header.append("share")
            cells = [f"{v:.1%}" if np.isfinite(v) else "-" for v in values]
        elif pd.api.types.is_integer_dtype(values):
            header.append(str(c))
            cells = [f"{v:,}" for v in values]
        elif pd.api.types.is_numeric_dtype(values):
            header.append(str(c))
            cells = [_number(v) for v in values]
        else:
            header.append(str(c))
            right.append(False)
            columns.append([str(v) for v in values])
            continue
        right.append(True)
        columns.append(cells)
    rows = [list(r) for r in zip(*columns, strict=True)]
    return header, right, rows


def format_profile(df: pd.DataFrame) -> str:
    """A profile from :func:`profile` as a plain-text table for terminals.

    Each feature's mean and standard deviation share one "mean ± std" column;
    ``share`` is a percentage; numbers keep about four significant digits.

    Parameters
    ----------
    df : pandas.DataFrame
        A profile (other columns are shown as they are).

    Returns
    -------
    str
        The table, one line per cluster after a header and a rule, without a
        trailing newline.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"size": [30, 10], "share": [0.75, 0.25],
    ...                    "age_mean": [25.5, 61.0], "age_std": [2.25, 3.0],
    ...                    "description": ["age: low", "age: high"]},
    ...                   index=pd.RangeIndex(2, name="cluster"))
    >>> print(format_profile(df))
    cluster  size  share  age (mean ± std)  description
    -------  ----  -----  ----------------  -----------
          0    30  75.0%     25.50 ± 2.250  age: low
          1    10  25.0%     61.00 ± 3.000  age: high
    """
    header, right, rows = _cells(df)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _markdown(df: pd.DataFrame) -> str:
    header, right, rows = _cells(df)

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if r else ":---" for r in right) + "|"
    return "\n".join([line(header), rule, *map(line, rows)]) + "\n"


def write_profile(df: pd.DataFrame, directory_or_url: str, *,
                  storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Write a profile as ``profile.csv`` and ``profile.md`` into a directory.

    ``profile.csv`` holds every column at full precision, with the
    ``cluster`` index as first column (``pd.read_csv(url, index_col="cluster")``
    reads it back); ``profile.md`` is the table of :func:`format_profile` as
    Markdown. Each file is written whole (renamed into place on a local disk,
    one PUT on object storage), replacing an existing one. A missing local
    directory is created; on object storage the bucket must exist.

    Parameters
    ----------
    df : pandas.DataFrame
        A profile from :func:`profile`.
    directory_or_url : str
        A local directory or any fsspec URL (``s3://bucket/reports``...).
    storage_options : dict, optional
        Passed to fsspec (credentials, ``endpoint_url``...).

    Returns
    -------
    list of str
        The URLs of the two files, without credentials.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"write_profile needs the DataFrame from profile(), got "
                        f"{type(df).__name__}.")
    files = {"profile.csv": df.to_csv(index_label=df.index.name or "cluster").encode(),
             "profile.md": _markdown(df).encode()}
    loc = _resolve(directory_or_url, storage_options)
    with _fs_errors(loc.url, loc.secrets, "writing"):
        if loc.is_local:
            # Object stores have no directories; there, makedirs would create a missing bucket.
            loc.fs.makedirs(loc.path, exist_ok=True)
        for name, data in files.items():
            write_bytes_atomic(loc.fs, loc.join(name), data)
    return [f"{loc.url.rstrip('/')}/{name}" for name in files]


# --------------------------------------------------------------------------- sampling


def _sample_indices(n: int, size: int, random_state) -> np.ndarray | None:
    """Sorted indices of a uniform sample of ``size`` of ``n`` rows without replacement,
    or None when every row is kept. Memory is O(size), whatever ``n``."""
    from sklearn.utils import check_random_state

    from ._kernels import sample_indices

    if size >= n:
        return None
    return sample_indices(n, size, check_random_state(random_state))


def _sample(arrays: Sequence, max_points: int, random_state) -> list[np.ndarray]:
    """The same uniformly sampled rows of every array, computed together as ndarrays."""
    # Any integer (a NumPy one from a computation or a config) except a bool.
    if (isinstance(max_points, bool) or not isinstance(max_points, numbers.Integral)
            or max_points < 1):
        raise ValueError(f"max_points must be an int >= 1, got {max_points!r}.")
    idx = _sample_indices(arrays[0].shape[0], int(max_points), random_state)
    picked = [a if idx is None else a[idx] for a in arrays]
    picked = dask.compute(*picked)
    return [np.asarray(a) for a in picked]


def silhouette_sample(data, labels=None, *, model=None, max_points: int = 5000,
                      random_state=0, metric: str | None = None) -> float:
    """Silhouette score of a bounded uniform sample of rows.

    The silhouette costs O(n²) distances, so it is computed on at most
    ``max_points`` rows drawn uniformly without replacement (for dask input
    only those rows are brought to the driver) with
    :func:`sklearn.metrics.silhouette_score`.

    Parameters
    ----------
    data : array-like, dask array, DataFrame or ParquetSource of shape (n_samples, n_features)
    labels : array-like or dask array of shape (n_samples,), optional
        The cluster of every row, e.g. ``km.labels_``. When None, ``model``
        predicts the sampled rows only.
    model : KMeans, optional
        Needed when ``labels`` is None; when given, columns of ``data`` are
        matched to its feature names.
    max_points : int, default=5000
        Largest number of rows used.
    random_state : int, RandomState instance or None, default=0
        Seeds the sample.
    metric : {"euclidean", "cosine"} or None, default=None
        The distance between rows: the model's metric (``1 - cos`` for a
        cosine model, whose clusters ignore the rows' lengths), else
        "euclidean".

    Returns
    -------
    float
        Between -1 and 1; higher means better separated clusters.

    Raises
    ------
    ValueError
        Neither ``labels`` nor ``model``, or fewer than 2 or more than
        (sampled rows - 1) distinct clusters among the sampled rows.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    >>> round(silhouette_sample(X, [0, 0, 1, 1]), 3)
    0.9
    """
    from sklearn.metrics import silhouette_score

    if labels is None and model is None:
        raise ValueError("silhouette_sample needs labels, or a fitted model to predict them.")
    X = _model_matrix(model, data) if model is not None else _as_matrix(data)
    if labels is None:
        (sample,) = _sample([X], max_points, random_state)
        sample_labels = np.asarray(_predict(model, sample))
    else:
        sample, sample_labels = _sample([X, _rows(labels, X.shape[0], "labels", X)], max_points,
                                        random_state)
    if metric is None:
        metric = getattr(model, "metric", "euclidean")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}.")
    if model is not None:
        # standardize=True: distances where the model measures them, as sweep's silhouettes.
        sample = _standardised(model, sample)
    n_labels = np.unique(sample_labels).size
    if not _scorable(n_labels, sample.shape[0]):
        raise ValueError(f"The silhouette needs from 2 to n_rows - 1 distinct clusters; the "
                         f"{sample.shape[0]} sampled rows hold {n_labels}. Raise max_points "
                         "or check the labels.")
    return float(silhouette_score(sample, sample_labels, metric=metric))


def _scorable(n_labels: int, n_rows: int) -> bool:
    """Whether a silhouette is defined: from 2 to ``n_rows - 1`` distinct clusters."""
    return 2 <= n_labels <= n_rows - 1


#: Largest distance matrix :func:`silhouettes` keeps for all labelings at once.
SHARED_DISTANCES_BYTES = 256 * 2**20


def silhouettes(sample: np.ndarray, labelings: Sequence,
                metric: str = "euclidean") -> list[float | None]:
    """Silhouette scores of several labelings of the same rows (the models of a K sweep).

    The rows' pairwise distances (Euclidean, or ``1 - cos`` for "cosine")
    are computed once and shared by every labeling when their matrix fits in
    :data:`SHARED_DISTANCES_BYTES` (5,000 rows: 200 MB); otherwise each score
    recomputes them in chunks, as :func:`sklearn.metrics.silhouette_score`
    does. The same scores either way. A labeling without a silhouette on
    these rows (fewer than 2 or more than ``n_rows - 1`` distinct clusters
    among them: a K as large as the sample, or the sample missing a small
    cluster) scores None, and the others are still scored.
    """
    from sklearn.metrics import pairwise_distances, silhouette_score

    sample = np.asarray(sample)
    labelings = [np.asarray(lab) for lab in labelings]
    ok = [_scorable(np.unique(lab).size, sample.shape[0]) for lab in labelings]
    if not any(ok):
        return [None] * len(labelings)
    if sample.shape[0] ** 2 * 8 > SHARED_DISTANCES_BYTES:
        rows, how = sample, metric
    else:
        rows, how = pairwise_distances(sample, metric=metric), "precomputed"
    return [float(silhouette_score(rows, lab, metric=how)) if good else None
            for lab, good in zip(labelings, ok, strict=True)]


# --------------------------------------------------------------------------- choosing K


def _curve(ks, values, name: str) -> tuple[np.ndarray, np.ndarray]:
    ks = np.asarray(ks)
    values = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    if ks.ndim != 1 or values.shape != ks.shape:
        raise ValueError(f"ks and {name} must be 1-D of the same length; got shapes "
                         f"{ks.shape} and {values.shape}.")
    if ks.size == 0 or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks.tolist()!r}.")
    if np.unique(ks).size != ks.size:
        raise ValueError(f"ks repeats values: {ks.tolist()}.")
    return ks, values


def suggest_k(ks, inertias, silhouettes=None) -> tuple[int, str]:
    """Choose K from a sweep: the elbow of the inertia curve, refined by the silhouette.

    Both axes are scaled to [0, 1] (K from the smallest to the largest,
    inertia from its minimum to its maximum); the elbow is the K whose point
    lies farthest below the straight line joining the first and last points
    (a point above it, a bump of the inertia or a stretch that bends the other
    way, is no elbow).
    With ``silhouettes``, the K with the best silhouette among the elbow and
    its neighbours in ``ks`` (the K just below and just above) is chosen
    instead; K values whose silhouette is None or NaN are skipped.

    Parameters
    ----------
    ks : sequence of int
        At least 3 distinct values of K, in any order.
    inertias : sequence of float
        The inertia of the model fitted with each K.
    silhouettes : sequence of float or None, optional
        The silhouette score of each model (see :func:`silhouette_sample`).

    Returns
    -------
    k : int
    reason : str
        One sentence naming the chosen K and the numbers behind it.

    Examples
    --------
    >>> k, reason = suggest_k([1, 2, 3, 4, 5, 6], [1000.0, 420.0, 130.0, 110.0, 95.0, 85.0])
    >>> k
    3
    >>> print(reason)  # doctest: +NORMALIZE_WHITESPACE
    The inertia curve bends most at K=3 (distance 0.39 from the line joining K=1 and K=6,
    both axes scaled to [0, 1]).
    """
    ks, inertias = _curve(ks, inertias, "inertias")
    order = np.argsort(ks)
    ks, inertias = ks[order], inertias[order]
    if ks.size < 3:
        raise ValueError(f"suggest_k needs the inertia for at least 3 values of K to find an "
                         f"elbow, got K={ks.tolist()}.")
    if not np.isfinite(inertias).all():
        raise ValueError(f"inertias must be finite, got {inertias.tolist()}.")
    sil = None
    if silhouettes is not None:
        _, sil = _curve(ks, silhouettes, "silhouettes")
        sil = sil[order]

    span = inertias.max() - inertias.min()
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (inertias - inertias.min()) / span if span > 0 else np.zeros_like(inertias)
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    # Signed: positive below the line (x runs from 0 to 1, so dx > 0).
    distance = (dy * (x - x[0]) - dx * (y - y[0])) / math.hypot(dx, dy)
    elbow = int(np.argmax(distance))
    k_elbow = int(ks[elbow])
    if distance[elbow] < 1e-9:
        return int(ks[0]), (f"No point of the inertia curve lies below the straight line "
                            f"from K={ks[0]} to K={ks[-1]}, so there is no elbow; "
                            f"K={ks[0]}, the smallest, is suggested.")
    bend = (f"The inertia curve bends most at K={k_elbow} (distance {distance[elbow]:.2f} from "
            f"the line joining K={ks[0]} and K={ks[-1]}, both axes scaled to [0, 1])")
    if sil is None:
        return k_elbow, bend + "."
    near = [i for i in range(max(elbow - 1, 0), min(elbow + 2, ks.size)) if np.isfinite(sil[i])]
    if not near:
        return k_elbow, bend + f"; no silhouette is given around it, so K={k_elbow}."
    best = max(near, key=lambda i: (sil[i], -i))
    listed = ", ".join(f"K={ks[i]}" for i in near)
    if best == elbow:
        return k_elbow, bend + (f", and its silhouette {sil[elbow]:.3f} is the best among "
                                f"{listed}.")
    k_best = int(ks[best])
    at_elbow = (f"{sil[elbow]:.3f} at K={k_elbow}" if np.isfinite(sil[elbow])
                else f"none at K={k_elbow}")
    return k_best, bend + (f", but K={k_best} next to it has the best silhouette among "
                           f"{listed} ({sil[best]:.3f} against {at_elbow}), so K={k_best}.")


# --------------------------------------------------------------------------- plots


def check_plotting() -> None:
    """Raise ImportError saying how to install matplotlib when it is missing.

    Callers that plot after long work (a fit, a sweep) call this first, so that a missing
    optional dependency stops them before any work and before any output is written.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(PLOT_HINT) from e


def _figure():
    """A matplotlib Figure drawn by the Agg canvas: no display and no pyplot state."""
    check_plotting()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


#: A plot's file format, chosen by its extension as matplotlib's ``savefig`` does.
PLOT_FORMATS = ("png", "pdf", "svg")


def plot_format(path: str) -> str:
    """The format of the plot file at ``path``, from its extension: ValueError for one that
    is not in :data:`PLOT_FORMATS` (PNG bytes went into a file named ``.pdf``)."""
    name = posixpath.basename(str(path).split("?", 1)[0])
    ext = posixpath.splitext(name)[1].lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise ValueError(f"A plot is written as PNG, PDF or SVG, chosen by its extension "
                         f"(.png, .pdf, .svg); {name!r} has "
                         f"{'the extension .' + ext if ext else 'none'}.")
    return ext


def _save_figure(fig, path: str, storage_options: Mapping[str, Any] | None) -> str:
    buffer = _stdio.BytesIO()
    fig.savefig(buffer, format=plot_format(path), dpi=DPI)
    loc = _resolve(path, storage_options)
    with _fs_errors(loc.url, loc.secrets, "writing"):
        if loc.is_local:
            loc.fs.makedirs(posixpath.dirname(loc.path), exist_ok=True)
        write_bytes_atomic(loc.fs, loc.path, buffer.getvalue())
    return loc.url


def _colours(k: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    return [cmap(i if k <= 20 else i / max(k - 1, 1)) for i in range(k)]


def _standardised(model, rows: np.ndarray) -> np.ndarray:
    """``rows`` as a ``standardize=True`` model measures them (less its feature means,
    divided by its scales); as they are for other models."""
    if not hasattr(model, "feature_mean_"):
        return rows
    return (np.asarray(rows, dtype=np.float64) - model.feature_mean_) / model.feature_scale_


def _share(part: float) -> str:
    """A share of the variance as a percentage: "<1%" and ">99%" rather than a "0%" or
    "100%" that is not."""
    if 0 < part < 0.01:
        return "<1%"
    if 0.99 < part < 1:
        return ">99%"
    return f"{100 * part:.0f}%"


def _pca(sample: np.ndarray, centers: np.ndarray, what: str = ""):
    """The sample and the centres projected on the sample's first two principal axes.

    A sample of one row has one axis only (the SVD's rank): the second is zero, and the
    plot a strip along the first (PC2 of 0% variance)."""
    mean = sample.mean(axis=0)
    _, s, vt = np.linalg.svd(sample - mean, full_matrices=False)
    missing = 2 - len(vt[:2])
    axes = np.vstack([vt[:2], np.zeros((missing, vt.shape[1]))])
    s = np.concatenate([s[:2], np.zeros(missing)])
    # Each axis points towards its largest loading, so that reruns do not mirror the plot.
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    total = float((s**2).sum())
    explained = s[:2] ** 2 / total if total > 0 else np.zeros(2)
    labels = [f"PC{i + 1}{what} ({_share(explained[i])} variance)" for i in range(2)]
    return (sample - mean) @ axes.T, (centers - mean) @ axes.T, labels


def plot_clusters(model, data, path: str, *, features: Sequence[str] | None = None,
                  max_points: int = 20_000, random_state=0,
                  storage_options: Mapping[str, Any] | None = None) -> str:
    """Scatter plot of a uniform sample of rows coloured by cluster, with the centroids as stars.

    At most ``max_points`` rows are drawn uniformly without replacement (for
    dask input only those rows are brought to the driver) and labelled by
    ``model.predict``. The axes are the two ``features`` given; or the two
    features of a two-feature model; or, with more features, the first two
    principal components of the sample where the model measures it (an SVD
    of the centred sample: standardised for a ``standardize=True`` model,
    rows of unit length for a cosine one; one unit is as long on both axes),
    onto which the centroids are projected the same way. A one-feature model
    is drawn as the feature against the cluster. The stars are the centroids;
    on feature axes, for a cosine model (whose centroids are directions, unit
    vectors), the means of each cluster's sampled rows.

    Parameters
    ----------
    model : KMeans
        A fitted model.
    data : array-like, dask array, DataFrame or ParquetSource of shape (n_samples, n_features)
    path : str
        The file to write, PNG, PDF or SVG by its extension: a local path
        (missing directories are created) or any fsspec URL.
    features : pair of str, optional
        Two of the model's feature names (``x0``, ``x1``... when it has none).
    max_points : int, default=20_000
        Largest number of rows drawn.
    random_state : int, RandomState instance or None, default=0
        Seeds the sample.
    storage_options : dict, optional
        Passed to fsspec for ``path``.

    Returns
    -------
    str
        ``path`` without credentials. The image is 800 x 600 pixels.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install "dask-kmeans[plot]"``).
    ValueError
        ``path`` does not end in .png, .pdf or .svg (checked first).
    """
    plot_format(path)
    fig = _figure()
    X = _model_matrix(model, data)
    names = _feature_names(model)
    centers = np.asarray(model.cluster_centers_, dtype=np.float64)
    k, d = centers.shape
    if features is not None:
        features = [features] if isinstance(features, str) else list(features)
        unknown = [f for f in features if f not in names]
        if len(features) != 2 or len(set(features)) != 2 or unknown:
            raise ValueError(f"features must name two different features of the model, got "
                             f"{features!r}; the features are {names}.")
    elif d == 2:
        features = names
    (sample,) = _sample([X], max_points, random_state)
    labels = np.asarray(_predict(model, sample))

    cosine = getattr(model, "metric", "euclidean") == "cosine"
    if cosine and (features is not None or d == 1):
        # Directions, not points of the data: each cluster's mean of the drawn rows stands
        # for it (the unit centroids sat at the origin, far from every cluster).
        centers = np.array([np.asarray(sample[labels == c], dtype=np.float64).mean(axis=0)
                            if np.any(labels == c) else np.full(d, np.nan) for c in range(k)])
    pca = features is None and d > 1
    if features is not None:
        cols = [names.index(f) for f in features]
        xy, cxy, axis_labels = sample[:, cols], centers[:, cols], list(features)
    elif d == 1:
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=len(labels))
        xy = np.column_stack([sample[:, 0], labels + jitter])
        cxy = np.column_stack([centers[:, 0], np.arange(k)])
        axis_labels = [names[0], "cluster"]
    else:
        # Where the model measures: standardised, and of unit length for cosine (its
        # centres are unit vectors there already).
        rows = _standardised(model, sample)
        where = [" of the standardised features"] if hasattr(model, "feature_mean_") else []
        if cosine:
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            rows = rows / np.where(norms > 0, norms, 1.0)
            where.append(" of the unit rows")
        xy, cxy, axis_labels = _pca(rows, _standardised(model, centers), ",".join(where))

    ax = fig.subplots()
    colours = _colours(k)
    size = 12 if len(labels) <= 2_000 else 4
    for c in range(k):
        rows = labels == c
        ax.scatter(xy[rows, 0], xy[rows, 1], s=size, alpha=0.5, color=colours[c],
                   linewidths=0, rasterized=True)
    ax.scatter(cxy[:, 0], cxy[:, 1], marker="*", s=400, c=colours, edgecolors="black",
               linewidths=1.2, zorder=3)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if pca:  # distances as the model sees them: a unit is as long on both axes
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"{k} clusters: {len(labels):,} of {X.shape[0]:,} rows")
    if k <= 12:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], linestyle="none", marker="o", markersize=6, color=colours[c],
                          label=f"cluster {c}") for c in range(k)]
        handles.append(Line2D([], [], linestyle="none", marker="*", markersize=14,
                              markerfacecolor="lightgrey", markeredgecolor="black",
                              label="centroids"))
        ax.legend(handles=handles, loc="best", fontsize="small", framealpha=0.8)
    fig.tight_layout()
    return _save_figure(fig, path, storage_options)


#: The most values of K that the elbow plot labels one by one.
MAX_K_TICKS = 20


def plot_elbow(ks, inertias, path: str, *, silhouettes=None, suggested_k: int | None = None,
               storage_options: Mapping[str, Any] | None = None) -> str:
    """The elbow curve: inertia against K, optionally the silhouette on a second axis.

    Parameters
    ----------
    ks : sequence of int
        The values of K, in any order.
    inertias : sequence of float
        The inertia of the model fitted with each K.
    path : str
        The file to write, PNG, PDF or SVG by its extension: a local path
        (missing directories are created) or any fsspec URL.
    silhouettes : sequence of float or None, optional
        The silhouette of each model, drawn against a right-hand axis; None or
        NaN entries leave a gap.
    suggested_k : int, optional
        One of ``ks``, marked by a vertical line and a ring (see :func:`suggest_k`).
    storage_options : dict, optional
        Passed to fsspec for ``path``.

    Returns
    -------
    str
        ``path`` without credentials. The image is 800 x 600 pixels.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install "dask-kmeans[plot]"``).
    ValueError
        ``path`` does not end in .png, .pdf or .svg (checked first).
    """
    plot_format(path)
    fig = _figure()
    ks, inertias = _curve(ks, inertias, "inertias")
    order = np.argsort(ks)
    ks, inertias = ks[order], inertias[order]
    if suggested_k is not None and suggested_k not in ks:
        raise ValueError(f"suggested_k={suggested_k!r} is not one of ks {ks.tolist()}.")

    ax = fig.subplots()
    handles = ax.plot(ks, inertias, "o-", color="C0", label="inertia")
    ax.set_xlabel("K (number of clusters)")
    ax.set_ylabel("inertia (weighted sum of squared distances)")
    gaps = np.diff(np.sort(ks))
    if len(ks) <= MAX_K_TICKS and (len(ks) < 2 or gaps.min() * MAX_K_TICKS >= np.ptp(ks)):
        ax.set_xticks(ks)
    else:  # every K (or close ones among far) would smear: whole numbers, as many as fit
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_K_TICKS, integer=True))
    ax.grid(True, alpha=0.3)
    if silhouettes is not None:
        _, sil = _curve(ks, silhouettes, "silhouettes")
        right = ax.twinx()
        handles += right.plot(ks, sil[order], "s--", color="C1", label="silhouette")
        right.set_ylabel("silhouette score")
    if suggested_k is not None:
        handles.append(ax.axvline(suggested_k, color="C2", linestyle=":",
                                  label=f"suggested K = {suggested_k}"))
        ax.plot([suggested_k], inertias[ks == suggested_k], "o", markersize=16,
                markerfacecolor="none", markeredgecolor="C2", markeredgewidth=2)
    ax.legend(handles=handles, loc="upper right", fontsize="small")
    ax.set_title("Elbow curve")
    fig.tight_layout()
    return _save_figure(fig, path, storage_options)
