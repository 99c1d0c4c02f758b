"""Parameter constraints and input checks, with messages that name the problem."""

from __future__ import annotations

import contextlib
import inspect
import numbers
import os
import sys
import uuid
import warnings

import dask
import dask.array as da
import numpy as np
from sklearn.utils.validation import validate_data

INIT_NAMES = ("k-means||", "k-means++", "random")
FLOAT_DTYPES = (np.float64, np.float32)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_silhouette_rows(value) -> None:
    """``sweep``'s ``silhouette_rows``: None or an int >= 0, checked before any fit (it is
    used only after every K is fitted: a bad value wasted every pass over the data)."""
    if value is not None and not (_is_int(value) and value >= 0):
        raise InvalidParameterError(f"silhouette_rows must be None or an int >= 0, got "
                                    f"{value!r}.")


try:  # what scikit-learn's estimators raise: a ValueError and a TypeError both
    from sklearn.utils._param_validation import InvalidParameterError
except ImportError:  # pragma: no cover - a scikit-learn that moved it
    class InvalidParameterError(ValueError, TypeError):
        """A hyper-parameter of the wrong type or value."""


def _require(cond: bool, name: str, value, expected: str) -> None:
    if not cond:
        raise InvalidParameterError(
            f"The '{name}' parameter of KMeans must be {expected}. Got {value!r} instead."
        )


def check_params(est) -> None:
    """Validate the estimator's hyper-parameters; called at the start of ``fit``."""
    _require(_is_int(est.n_clusters) and est.n_clusters >= 1, "n_clusters", est.n_clusters,
             "an int >= 1")
    _require(_is_int(est.max_iter) and est.max_iter >= 1, "max_iter", est.max_iter, "an int >= 1")
    _require(isinstance(est.tol, numbers.Real) and not isinstance(est.tol, bool)
             and np.isfinite(est.tol) and est.tol >= 0, "tol", est.tol, "a float >= 0")
    _require(est.n_init == "auto" or (_is_int(est.n_init) and est.n_init >= 1), "n_init",
             est.n_init, "'auto' or an int >= 1")
    init = est.init
    _require((isinstance(init, str) and init in INIT_NAMES) or callable(init)
             or hasattr(init, "__array__") or isinstance(init, list | tuple), "init", init,
             f"one of {INIT_NAMES}, an array of shape (n_clusters, n_features) or a callable")
    _require(isinstance(est.oversampling_factor, numbers.Real)
             and not isinstance(est.oversampling_factor, bool)
             and np.isfinite(est.oversampling_factor) and est.oversampling_factor > 0,
             "oversampling_factor", est.oversampling_factor, "a float > 0")
    _require(_is_int(est.init_rounds) and est.init_rounds >= 1, "init_rounds", est.init_rounds,
             "an int >= 1")
    _require(est.split_every is None or (_is_int(est.split_every) and est.split_every >= 2),
             "split_every", est.split_every, "None or an int >= 2")
    # Not ``in ("auto", True, False)``: 1.0 and 0 equal True and False.
    _require(isinstance(est.persist, bool | np.bool_)
             or (isinstance(est.persist, str) and est.persist == "auto"), "persist",
             est.persist, "'auto', True or False")
    _require(est.metric in ("euclidean", "cosine"), "metric", est.metric,
             "'euclidean' or 'cosine'")
    _require(isinstance(est.standardize, bool | np.bool_), "standardize", est.standardize,
             "True or False")
    _require(est.checkpoint is None or (isinstance(est.checkpoint, str)
                                        and est.checkpoint.strip() != ""),
             "checkpoint", est.checkpoint, "None or a non-empty URL string")
    _require(isinstance(est.resume, bool | np.bool_), "resume", est.resume, "True or False")
    _require(isinstance(est.verbose, bool | np.bool_) or (_is_int(est.verbose)
                                                          and est.verbose >= 0),
             "verbose", est.verbose, "a bool or an int >= 0")
    # scikit-learn's check_random_state would take a bool as a seed, and name no parameter.
    rs = est.random_state
    _require(rs is None or isinstance(rs, np.random.RandomState)
             or (_is_int(rs) and 0 <= rs <= 2**32 - 1), "random_state", rs,
             "None, an int in [0, 2**32 - 1] or a numpy.random.RandomState instance")


def check_param_combinations(est) -> None:
    """Parameters that another one's value leaves without effect, at the start of ``fit``.

    ``resume=True`` without a ``checkpoint`` is refused; ``oversampling_factor`` or
    ``init_rounds`` other than the default with an ``init`` other than "k-means||" warn,
    as ``n_init`` does with an array ``init`` (scikit-learn's way: a grid over ``init``
    keeps working).
    """
    if est.resume and est.checkpoint is None:
        raise InvalidParameterError("The 'resume' parameter of KMeans continues a fit from its "
                         "checkpoint, but checkpoint is None: set checkpoint to a directory "
                         "URL, or leave resume=False.")
    init = est.init
    if isinstance(init, str) and init == "k-means||":
        return
    defaults = inspect.signature(type(est)).parameters
    changed = [f"{name}={getattr(est, name)!r}" for name in ("oversampling_factor", "init_rounds")
               if getattr(est, name) != defaults[name].default]
    if changed:
        shown = repr(init) if isinstance(init, str) else \
            "a callable" if callable(init) else "an array"
        warnings.warn(f"{' and '.join(changed)} only apply to init='k-means||': ignored with "
                      f"init={shown}.", RuntimeWarning, stacklevel=4)


def is_lazy(X) -> bool:
    """Whether ``X`` is a dask collection (array, DataFrame, Series or any other)."""
    return dask.is_dask_collection(X)


def _lazy_array(X, name: str) -> da.Array:
    """A dask collection as a dask array, computing nothing but the partition lengths of a
    dask DataFrame or Series (its array's ``compute_chunk_sizes``)."""
    if isinstance(X, da.Array):
        return X
    if is_dask_frame(X, series=True):
        # The lengths of the array's own chunks: to_dask_array(lengths=True) counts the
        # rows of an optimised graph, which may merge partitions after a column projection
        # (dd.read_parquet(...)[["a"]]: "The number of items in 'lengths' does not match
        # the number of partitions. 2 != 5").
        return X.to_dask_array().compute_chunk_sizes()
    if type(X).__module__.split(".")[0] == "xarray" and isinstance(getattr(X, "data", None),
                                                                   da.Array):
        return X.data  # as da.asarray does
    raise ValueError(f"{name} is a dask {type(X).__name__}, which KMeans cannot read without "
                     f"computing it: give a dask array, DataFrame or Series (for instance "
                     f"da.from_delayed(value, shape, dtype) for a Delayed, or bag.to_dataframe() "
                     f"for a Bag).")


def is_dask_frame(X, *, series: bool = False) -> bool:
    """Whether ``X`` is a dask DataFrame (or, with ``series``, also a dask Series or Index)."""
    try:
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - dataframe extra is a core dependency
        return False
    return isinstance(X, (dd.DataFrame, dd.Series, dd.Index) if series else dd.DataFrame)


def _numeric_or_raise(columns, dtypes, *, numbers_as_objects: bool = False) -> None:
    """Refuse non-numeric columns by name; with ``numbers_as_objects``, object columns
    pass (scikit-learn converts those that hold numbers; see :func:`check_X`)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype, is_object_dtype

    bad = [f"{c!r} ({t})" for c, t in zip(columns, dtypes, strict=True)
           if not (is_numeric_dtype(t) or is_bool_dtype(t)
                   or (numbers_as_objects and is_object_dtype(t)))]
    if bad:
        raise ValueError(f"KMeans needs numeric features; non-numeric column(s): {', '.join(bad)}. "
                         "Select the numeric columns or encode these first.")


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"Complex data not supported (dtype {dtype}).")
    return dtype if dtype in FLOAT_DTYPES else np.dtype(np.float64)


def _frame_float_dtype(dtypes) -> np.dtype:
    """The float dtype that numeric columns of these dtypes become, as an array of their
    common dtype would: float32 when all are float32 (NumPy's or pandas' ``Float32``),
    else float64. pandas' nullable and Arrow dtypes count as their NumPy dtype."""
    base = []
    for t in dtypes:
        try:
            base.append(np.dtype(getattr(t, "numpy_dtype", t)))
        except TypeError:  # an extension dtype with no NumPy equivalent (sparse, say)
            base.append(np.dtype(np.float64))
    return _float_dtype(np.result_type(*base)) if base else np.dtype(np.float64)


def _frame_names(columns) -> np.ndarray | None:
    """Column names as scikit-learn keeps them (``feature_names_in_``): when all are
    strings; None when none is; names of mixed types refused, as scikit-learn refuses them
    in pandas input."""
    columns = list(columns)
    strings = sum(isinstance(c, str) for c in columns)
    if columns and strings == len(columns):
        return np.asarray(columns, dtype=object)
    if strings:
        types = sorted({type(c).__name__ for c in columns})
        raise TypeError(
            "Feature names are only supported if all input features have string names, but "
            f"your input has {types} as feature name / column name types. If you want feature "
            "names to be stored and validated, you must convert them all to strings, by using "
            "X.columns = X.columns.astype(str) for example. Otherwise you can remove feature / "
            "column names from your input data, or convert them all to a non-string data type.")
    return None


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_SKLEARN = os.sep + "sklearn" + os.sep
_CONTEXTLIB = contextlib.__file__  # the frames of a context manager used as a decorator


def caller_stacklevel() -> int:
    """The ``stacklevel`` at which a warning raised by the function calling this one
    points at the first caller outside this package and scikit-learn's wrappers
    (``set_output``'s around ``transform``), however deep the call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE)
                                 or _SKLEARN in frame.f_code.co_filename
                                 or frame.f_code.co_filename == _CONTEXTLIB):
        frame, level = frame.f_back, level + 1
    return level


def _check_names(est, names) -> None:
    """scikit-learn's checks of the feature names at predict time, for dask input."""
    fitted = getattr(est, "feature_names_in_", None)
    if names is None and fitted is None:
        return
    if names is None:
        warnings.warn(f"X does not have valid feature names, but {type(est).__name__} was "
                      "fitted with feature names", UserWarning, stacklevel=caller_stacklevel())
    elif fitted is None:
        warnings.warn(f"X has feature names, but {type(est).__name__} was fitted without "
                      "feature names", UserWarning, stacklevel=caller_stacklevel())
    elif list(fitted) != list(names):
        missing = [c for c in fitted if c not in list(names)]
        extra = [c for c in names if c not in list(fitted)]
        detail = "".join([f" Missing: {missing}." if missing else "",
                          f" Not seen at fit time: {extra}." if extra else ""])
        raise ValueError("The feature names should match those that were passed during fit, "
                         f"in the same order: expected {list(fitted)}, got {list(names)}."
                         + detail)


def _check_dask(est, X, *, reset: bool) -> da.Array:
    names = None
    if is_dask_frame(X, series=True) and X.ndim == 1:  # before its lengths are computed
        raise ValueError(f"X is a dask {type(X).__name__}, one column: KMeans needs 2-D input "
                         "of shape (n_samples, n_features); give a DataFrame (series.to_frame() "
                         "for one feature).")
    if is_dask_frame(X):
        _numeric_or_raise(list(X.columns), list(X.dtypes))
        names = _frame_names(X.columns)
        dtype = _frame_float_dtype(X.dtypes)
        if any(t != dtype for t in X.dtypes):
            # Cast the columns first: pandas' nullable dtypes (Int64, Float64, boolean) would
            # give to_dask_array an object array, in which a missing value (pd.NA) cannot be
            # converted; cast, it is NaN, refused lazily as in any other dask input.
            X = X.astype(dtype)
    X = _lazy_array(X, "X")
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D array of shape (n_samples, n_features), got {X.ndim}-D "
                         f"with shape {X.shape}.")
    dtype = _float_dtype(X.dtype)
    if any(np.isnan(c) for c in X.chunks[0]):
        X = X.compute_chunk_sizes()
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    if X.dtype != dtype:
        X = X.astype(dtype)
    if reset:
        est.n_features_in_ = X.shape[1]
        if names is not None:
            est.feature_names_in_ = names
        elif hasattr(est, "feature_names_in_"):
            del est.feature_names_in_
    else:
        _check_names(est, names)
        if X.shape[1] != est.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but KMeans is expecting "
                             f"{est.n_features_in_} features as input.")
    if X.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 "
                         "is required by KMeans.")
    if X.shape[1] == 0:  # as scikit-learn refuses NumPy input
        raise ValueError(f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 "
                         "is required by KMeans.")
    return X


def is_parquet_source(X) -> bool:
    """Whether ``X`` is a ``dask_kmeans.io.ParquetSource`` (duck-typed; a dask Delayed, which
    has every attribute, is not)."""
    return (not is_lazy(X) and hasattr(X, "features") and hasattr(X, "feature_names")
            and hasattr(X, "parts"))


def _check_source(est, source, *, reset: bool) -> da.Array:
    names = list(source.feature_names)
    X = source.features
    if reset:
        est.n_features_in_ = X.shape[1]
        est.feature_names_in_ = np.asarray(names, dtype=object)
        return X
    fitted = getattr(est, "feature_names_in_", None)
    if fitted is None:
        _check_names(est, names)  # scikit-learn's warning: X has names, the model none
        if X.shape[1] != est.n_features_in_:
            raise ValueError(f"The Parquet input has {X.shape[1]} feature columns, but KMeans "
                             f"is expecting {est.n_features_in_} features as input.")
        return X
    fitted = list(fitted)
    missing = [c for c in fitted if c not in names]
    if missing:
        raise ValueError(f"The Parquet input lacks the feature column(s) {missing} that the "
                         f"model was fitted on; it has {names}.")
    extra = [c for c in names if c not in fitted]
    if extra:
        # They would be read and checked for missing values for nothing (a NaN there
        # dropped or refused a row), as pandas input with them is refused.
        raise ValueError(f"The Parquet input has feature column(s) {extra} that the model "
                         f"was not fitted on; open it with the model's columns {fitted}.")
    # Columns are matched by name, whatever their order in the files.
    order = [names.index(c) for c in fitted]
    return X if order == list(range(len(names))) and len(names) == len(fitted) else X[:, order]


def check_X(est, X, *, reset: bool):
    """Validated input: a dask array (row-chunked, float) or a C-ordered ndarray.

    NumPy and pandas input go through scikit-learn's ``validate_data`` (finite
    values, feature names); dask input is checked without computing anything.
    A ``ParquetSource`` gives its feature array, matched to the fitted
    feature names by name.
    """
    if is_parquet_source(X):
        return _check_source(est, X, reset=reset)
    if is_lazy(X):
        return _check_dask(est, X, reset=reset)
    dtype = list(FLOAT_DTYPES)
    if _is_pandas_frame(X):
        # Object columns of numbers (pandas' result of mixing types, say) are converted as
        # scikit-learn does; other non-numeric columns are refused by name.
        _numeric_or_raise(list(X.columns), list(X.dtypes), numbers_as_objects=True)
        # As a dask DataFrame's: pandas' Float32 and Arrow float32 columns stay float32
        # (scikit-learn's validate_data makes them float64).
        dtype = _frame_float_dtype(X.dtypes)
    # Other frames (polars: its dtypes are no pandas dtypes, and its Float64 columns were
    # called non-numeric) are read by validate_data as scikit-learn reads them.
    try:
        return validate_data(est, X, reset=reset, dtype=dtype, order="C",
                             accept_large_sparse=False)
    except (ValueError, TypeError) as exc:
        if not hasattr(X, "columns"):
            raise
        bad = [repr(c) for c in X.columns if not _holds_numbers(X[c])]
        if not bad:
            raise
        raise ValueError(f"KMeans needs numeric features; column(s) holding values that are "
                         f"not numbers: {', '.join(bad)} ({exc}). Select the numeric columns "
                         "or encode these first.") from None


def _is_pandas_frame(X) -> bool:
    import sys

    pd = sys.modules.get("pandas")  # not imported: no pandas input
    return pd is not None and isinstance(X, pd.DataFrame)


def _holds_numbers(column) -> bool:
    try:
        np.asarray(column, dtype=np.float64)
    except (ValueError, TypeError):
        return False
    return True


ZERO_WEIGHTS = "Sample weights must contain at least one non-zero number."


def check_weight_total(any_positive) -> None:
    """Raise the error for weights that are all zero, given whether any is positive."""
    if not any_positive:
        raise ValueError(ZERO_WEIGHTS)


def _check_weight_values(w: np.ndarray, start: int | None = None) -> None:
    """The checks that the weights, or a chunk of them starting at global row ``start``,
    can make on their own."""
    chunk = start is not None
    start = start or 0
    finite = np.isfinite(w)
    if not finite.all():
        first = start + int(np.argmin(finite))
        raise ValueError(f"sample_weight contains NaN or infinity (first at row {first}).")
    negative = w < 0
    if negative.any():
        where = (f"the {w.shape[0]} rows from row {start}" if chunk else f"{w.shape[0]} rows")
        raise ValueError(f"Negative values in sample_weight: {int(negative.sum())} of {where} "
                         f"(first at row {start + int(np.argmax(negative))}).")


def checked_weights_block(w: np.ndarray, block_info=None) -> np.ndarray:
    """``w`` itself, once it is found finite and non-negative (a chunk of dask weights,
    checked when a pass reads it)."""
    _check_weight_values(w, 0 if block_info is None
                         else int(block_info[0]["array-location"][0][0]))
    return w


def check_sample_weight(sample_weight, X):
    """``None``, or float64 weights aligned with ``X`` (same row chunks for dask).

    Weights must be finite and non-negative, and not all zero. Dask weights (an
    array, or a Series whose missing values become NaN) stay lazy: only a Series'
    partition lengths are computed. NumPy weights (and dask weights for NumPy
    ``X``, computed here) are checked now. Dask weights for
    dask ``X`` are checked chunk by chunk when a pass reads them, at no extra pass;
    that not all are zero is checked where their total is at hand (the first pass
    of the initialisation or of Lloyd, the standardisation's moments, ``score``),
    see :func:`check_weight_total`.
    """
    if sample_weight is None:
        return None
    n = X.shape[0]
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n, float(sample_weight))
    if is_lazy(sample_weight):
        w = sample_weight
        if is_dask_frame(w, series=True) and w.ndim == 1:
            # A dask Series, kept lazy: as float64 first, so that a nullable dtype's missing
            # values become NaN (refused below, chunk by chunk) rather than objects.
            from pandas.api.types import is_bool_dtype, is_numeric_dtype

            if not (is_numeric_dtype(w.dtype) or is_bool_dtype(w.dtype)):
                raise ValueError(f"sample_weight must be numeric; got a dask Series of dtype "
                                 f"{w.dtype}.")
            w = w.astype(np.float64)
        w = _lazy_array(w, "sample_weight")
        if w.ndim == 1 and any(np.isnan(c) for c in w.chunks[0]):
            # Filtered by a mask, as X may be (whose chunk sizes are computed the same way).
            w = w.compute_chunk_sizes()
        if w.ndim != 1 or w.shape[0] != n:
            raise ValueError(f"sample_weight.shape == {w.shape}, expected ({n},)!")
        w = w.astype(np.float64)
        if not isinstance(X, da.Array):
            return check_sample_weight(w.compute(), X)
        w = w.rechunk((X.chunks[0],))
        # A fresh name per call: a persisted fit fuses this layer into other tasks under
        # the same keys, which the scheduler keeps (the fit's labels depend on them); the
        # same weights fitted again must not submit those keys with another task.
        return w.map_blocks(checked_weights_block, dtype=np.float64,
                            meta=np.empty((0,), dtype=np.float64),
                            name=f"checked-weights-{uuid.uuid4().hex}")
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError("Sample weights must be 1D array or scalar")
    if w.shape[0] != n:
        raise ValueError(f"sample_weight.shape == {w.shape}, expected ({n},)!")
    _check_weight_values(w)
    check_weight_total(np.any(w > 0))
    if isinstance(X, da.Array):
        return da.from_array(w, chunks=(X.chunks[0],))
    return w


def check_init_array(init, n_clusters: int, n_features: int, dtype,
                     what: str = "The initial centers") -> np.ndarray:
    """An explicit initial centres array (``what``: the init array, or what the init
    callable returned), checked for shape, numbers and finiteness."""
    expected = f"(n_clusters, n_features) = ({n_clusters}, {n_features})"
    try:
        centers = np.asarray(init)
    except ValueError as exc:  # rows of different lengths: NumPy's words only
        raise ValueError(f"{what} are not an array of shape {expected}: rows of different "
                         f"lengths? ({exc})") from None
    if np.iscomplexobj(centers):  # NumPy would drop the imaginary parts, with a warning
        raise ValueError(f"{what} are complex; give real numbers, as X is.")
    if centers.ndim != 2 or centers.shape != (n_clusters, n_features):
        raise ValueError(f"The shape of {what[0].lower() + what[1:]} {centers.shape} does not "
                         f"match {expected}.")
    if centers.dtype.kind == "O":  # Python numbers (Decimal, fractions) are numbers
        try:
            centers = centers.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if centers.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numbers; got an array of dtype {centers.dtype}.")
    centers = np.array(centers, dtype=dtype, order="C")
    if not np.all(np.isfinite(centers)):
        raise ValueError(f"{what} contain NaN or infinity.")
    return centers
