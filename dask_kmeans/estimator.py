"""The scikit-learn compatible :class:`KMeans` estimator."""

from __future__ import annotations

import contextlib
import logging
import numbers
import uuid
import warnings
from dataclasses import dataclass
from typing import Literal

import dask.array as da
import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state, metadata_routing
from sklearn.utils.validation import check_is_fitted

from . import _graph as G
from . import _init, _lloyd
from . import _kernels as K
from . import _runtime as R
from . import _validation as V
from ._checkpoint import Checkpoint, check_location, data_fingerprint, params_fingerprint
from ._passes import Passes, closing_passes
from ._progress import emit
from .io import scrub_url, strip_credentials

logger = logging.getLogger("dask_kmeans")


#: What ``set_output(transform=...)`` accepts, as in scikit-learn.
OUTPUT_CONTAINERS = ("default", "pandas", "polars")


# Not scikit-learn's wrapping of transform (auto_wrap_output_keys=None): it made a pandas
# DataFrame of a dask result, computing the whole distance matrix into memory.
class KMeans(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator,
             auto_wrap_output_keys=None):
    """K-means clustering whose Lloyd iterations are map-reduces over Dask chunks.

    Each iteration sends the current centres to every chunk once; every chunk
    returns per-cluster weighted sums, counts and inertia (``k * d`` numbers),
    a tree reduction adds them, and the driver forms the new centres. Works on
    NumPy arrays, pandas DataFrames, dask arrays and dask DataFrames, on the
    active scheduler (a ``distributed.Client`` or dask's local schedulers).

    Parameters
    ----------
    n_clusters : int, default=8
        The number of clusters ``k``.
    init : {"k-means||", "k-means++", "random"}, ndarray or callable, default="k-means||"
        "k-means||" is scalable k-means++ (Bahmani et al. 2012): ``init_rounds``
        passes over the data oversample candidates, then a weighted k-means++
        on the driver picks ``n_clusters`` of them; it works on data larger
        than memory and gives the same centres for any chunking. "k-means++"
        is the exact sequential algorithm with greedy local trials, run on the
        driver (dask input larger than 200,000 rows is sampled down, with a
        warning). "random" picks ``n_clusters`` distinct rows at random
        (weighted by ``sample_weight``). An ndarray of shape (n_clusters,
        n_features) gives the centres; a callable is called as
        ``init(X, n_clusters, random_state)`` and returns them.
    n_init : "auto" or int, default="auto"
        Number of initialisations; the run with the lowest inertia is kept.
        "auto" means 10 for "random" or a callable and 1 otherwise, as in
        scikit-learn. An explicit array always runs once.
    max_iter : int, default=300
        Maximum number of Lloyd iterations per run.
    tol : float, default=1e-4
        Convergence when the squared shift of all centres is at most ``tol``
        times the mean variance of the features (scikit-learn's definition; for
        ``metric="cosine"``, of the rows divided by their norms). The variance is
        taken in the first iteration's pass over the data.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation.
    oversampling_factor : float, default=2.0
        k-means|| only: each round samples about ``oversampling_factor * k``
        candidates. Another value with another ``init`` warns that it is ignored.
    init_rounds : int, default=5
        k-means|| only: number of sampling rounds (a warning, as above, with
        another ``init``).
    split_every : int or None, default=None
        Fan-in of the tree reduction that adds the per-chunk statistics
        (dask's default when None).
    persist : "auto", True or False, default="auto"
        For dask input: hold the data in the cluster's memory between passes.
        "auto" persists when it fits in half of the workers' free memory (their
        limits up to where they spill, less what their processes hold);
        otherwise every pass re-reads the source chunk by chunk.
    metric : {"euclidean", "cosine"}, default="euclidean"
        "cosine" is spherical k-means, for direction-only data such as text
        embeddings: rows are divided by their norm on the fly inside the
        chunk kernel (no normalised copy), each row goes to the centre of
        largest ``x . c``, each centre is the normalised mean of its members
        (a unit vector), ``inertia_`` sums ``1 - cos`` and ``transform``
        returns cosine distances. Rows of zero norm are an error. The
        initialisations sample by cosine distance.
    standardize : bool, default=False
        Cluster standardised features, ``(x - mean) / std`` with the mean and
        (population) standard deviation of each feature from one pass over the
        data (weighted by ``sample_weight``). The scaling is applied to each
        chunk as it is read, so no scaled copy of the data is kept beyond what
        ``persist`` holds. ``cluster_centers_`` are reported in the original
        units; ``inertia_``, ``transform`` and ``score`` are in standardised
        units, as with a ``StandardScaler`` + ``KMeans`` pipeline. Needed
        when features have different units (age against income).
    checkpoint : str or None, default=None
        A directory URL (any fsspec URL) where the fit records, atomically after
        every iteration, the centres, the iteration, the initial centres and
        the random state, with a fingerprint of the data (paths, sizes and
        modification times for Parquet; content or graph for arrays) and of
        the parameters. JSON only, no pickle. It takes no storage options: an
        object store's endpoint and credentials come from the environment or
        fsspec's configuration (``FSSPEC_S3='{"endpoint_url": ...}'``).
    resume : bool, default=False
        With ``checkpoint``: continue from the checkpoint if there is one. A
        fit whose driver was killed then ends with exactly the centres,
        inertia and total ``n_iter_`` of an uninterrupted fit on dask input
        read again by every pass (``persist=False``); on data held in memory
        (NumPy input, persisted dask input), whose passes update the cluster
        sums and bounds incrementally and start them afresh on resume, only to
        rounding (about 1e-14 relative), which can rarely change the
        convergence iteration or, with ``n_init > 1``, which of two runs of
        nearly equal inertia is kept. A checkpoint written for other
        data or parameters is refused with a ``ValueError`` naming what
        differs. Without ``resume`` an existing checkpoint is overwritten;
        ``resume=True`` without ``checkpoint`` is a ``ValueError``.
    verbose : bool or int >= 0, default=False
        Log one line per iteration to the ``dask_kmeans`` logger (a stderr
        handler is added when logging is not configured).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        In the input's float dtype (float32 stays float32).
    labels_ : ndarray or dask array of shape (n_samples,)
        A dask array for dask input, an ndarray for NumPy or pandas input.
    inertia_ : float
        Weighted sum of exact squared distances of rows to their centre.
    n_iter_ : int
        Lloyd iterations of the kept run.
    n_features_in_ : int
    feature_mean_, feature_scale_ : ndarray of shape (n_features_in_,)
        With ``standardize=True``: the mean and standard deviation used (a
        feature with zero variance gets scale 1).
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only for DataFrame input with string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_kmeans import KMeans
    >>> X = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 0.0],
    ...               [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]])
    >>> km = KMeans(n_clusters=2, init=X[[0, 3]], random_state=0).fit(X)
    >>> km.cluster_centers_
    array([[ 1.,  2.],
           [10.,  2.]])
    >>> km.predict([[0.0, 0.0], [12.0, 3.0]])
    array([0, 1], dtype=int32)
    """

    # predict's return_distance chooses the output; it is not metadata to route (as
    # scikit-learn's KMeans has none there: no set_predict_request).
    __metadata_request__predict = {"return_distance": metadata_routing.UNUSED}

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init="k-means||",
        n_init: Literal["auto"] | int = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state=None,
        oversampling_factor: float = 2.0,
        init_rounds: int = 5,
        split_every: int | None = None,
        persist: Literal["auto"] | bool = "auto",
        verbose: bool | int = False,
        metric: Literal["euclidean", "cosine"] = "euclidean",
        standardize: bool = False,
        checkpoint: str | None = None,
        resume: bool = False,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.oversampling_factor = oversampling_factor
        self.init_rounds = init_rounds
        self.split_every = split_every
        self.persist = persist
        self.verbose = verbose
        self.metric = metric
        self.standardize = standardize
        self.checkpoint = checkpoint
        self.resume = resume

    # -- fitting -----------------------------------------------------------------

    def _n_init(self) -> int:
        explicit = not (isinstance(self.init, str) or callable(self.init))
        if explicit:
            if self.n_init not in ("auto", 1):
                warnings.warn(
                    "Explicit initial center position passed: performing only one init in "
                    f"KMeans instead of n_init={self.n_init}.", RuntimeWarning, stacklevel=4)
            return 1
        if self.n_init == "auto":
            return 10 if (self.init == "random" or callable(self.init)) else 1
        return self.n_init

    def _initial_centers(self, data, random_state, passes=None) -> np.ndarray:
        (X, w), (Xd, wd), in_memory, (X0, w0) = data
        if not isinstance(self.init, str):
            # A callable sees the validated input, not the standardised one, and like an
            # array gives centres in original units; the fit works in standardised ones.
            centers = _init.user_centers(self.init, X0, self.n_clusters, random_state)
            centers = self._working_centers(centers)
        elif self.init == "k-means||":
            centers = _init.kmeans_parallel(
                Xd, wd, self.n_clusters, random_state,
                oversampling_factor=self.oversampling_factor, init_rounds=self.init_rounds,
                keep_state=R.keep_row_state(Xd.shape[0], in_memory),
                split_every=self.split_every, metric=self.metric, passes=passes)
        elif self.init == "k-means++":
            if self.standardize and not isinstance(X0, da.Array):
                X, w = self._scale(X0), w0  # NumPy input is used whole, scaled or not
            centers = _init.kmeans_plusplus(X, w, self.n_clusters, random_state, self.metric)
        else:
            centers = _init.random_rows(X, w, self.n_clusters, random_state, passes)
        # Spherical k-means keeps unit centres from the start.
        return K.normalize_rows(centers) if self.metric == "cosine" else centers

    def __repr__(self, N_CHAR_MAX=700):
        # scikit-learn's, without the credentials a checkpoint URL may hold.
        return scrub_url(super().__repr__(N_CHAR_MAX), self.checkpoint)

    # The views a notebook shows (IPython's display protocol), scrubbed as the text one:
    # scikit-learn's HTML view lists every parameter's value.
    @property
    def _repr_html_(self):
        view = super()._repr_html_  # AttributeError when scikit-learn shows text only
        return lambda: scrub_url(view(), self.checkpoint)

    def _repr_mimebundle_(self, **kwargs):
        return {kind: scrub_url(view, self.checkpoint) if isinstance(view, str) else view
                for kind, view in super()._repr_mimebundle_(**kwargs).items()}

    def fit(self, X, y=None, sample_weight=None):
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like, dask array or DataFrame of shape (n_samples, n_features)
            Numeric rows. Dask arrays whose columns are split are rechunked.
        y : Ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Weights of the rows: weighted means and a weighted inertia.
            Weighting a row by 2 is the same as repeating it (from the same initial
            centres, with ``tol=0``: the tolerance uses the unweighted variance).

        Returns
        -------
        self : KMeans

        A fit that raises leaves the estimator as it was: a fitted model still predicts as
        before, with its own scaling.
        """
        before = self._fitted_state()
        try:
            # The fit's actors go with it, not at the next GC.
            with closing_passes(), _zero_norm_once_standardized(self.standardize):
                return self._fit(X, sample_weight)
        except BaseException:
            for name in self._fitted_state():
                delattr(self, name)
            self.__dict__.update(before)
            raise

    def _fitted_state(self) -> dict:
        """The attributes a fit sets (scikit-learn's trailing underscore)."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def _fit(self, X, sample_weight):
        V.check_params(self)
        V.check_param_combinations(self)
        Xv = V.check_X(self, X, reset=True)
        input_url = X.url if V.is_parquet_source(X) else None
        lazy = isinstance(Xv, da.Array)
        n_samples = Xv.shape[0]
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        weights = V.check_sample_weight(sample_weight, Xv)
        if self.checkpoint is not None:
            check_location(self.checkpoint)
        random_state = check_random_state(self.random_state)
        n_init = self._n_init()
        persist = self.persist
        original = (Xv, weights)
        if self.standardize:
            Xv, weights, persist = self._standardized(Xv, weights, lazy)
        elif hasattr(self, "feature_mean_"):
            del self.feature_mean_, self.feature_scale_
        if self.verbose:
            _ensure_log_handler()

        client = R.active_client()
        if client is not None:
            R.prepare_client(client)
        Xd, wd, persisted = R.place_data(Xv, weights, persist, client)

        # Samplers that run on the driver read NumPy input directly.
        direct = (Xv, weights) if not isinstance(Xv, da.Array) else (Xd, wd)
        data = ((Xd, wd) if lazy else direct, (Xd, wd), persisted, original)
        ckpt = None
        if self.checkpoint is not None:
            params = {k: v for k, v in self.get_params().items()
                      if k not in ("verbose", "checkpoint", "resume")}
            ckpt = Checkpoint(self.checkpoint, data_fingerprint(X, sample_weight),
                              params_fingerprint(params))
        state = ckpt.load((self.n_clusters, Xv.shape[1]), n_init, self.max_iter) \
            if (ckpt is not None and self.resume) else None
        # One set of passes (and of per-worker actors) serves every initialisation and run.
        passes = Passes(Xd, wd, split_every=self.split_every, metric=self.metric,
                        in_memory=persisted)
        best, first_run = None, 0
        if state is not None:
            first_run = state["run"]
            random_state.set_state(state["rng_before"])
            if state["best_centers"] is not None:
                restored = _lloyd.LloydResult(state["best_centers"].astype(Xd.dtype),
                                              state["best_n_iter"], state["best_converged"])
                best = (restored, None, state["best_inertia"])
            if first_run < n_init:
                logger.info("resuming from the checkpoint at %s: run %d, iteration %d",
                            strip_credentials(self.checkpoint), first_run + 1, state["n_iter"])
            else:
                logger.info("resuming from the checkpoint at %s: all %d runs had finished; "
                            "the best is kept", strip_credentials(self.checkpoint), n_init)
        for run in range(first_run, n_init):
            emit("run", run + 1, n_init)
            rng_before = random_state.get_state()
            resumed = state is not None and run == state["run"] and state["centers"] is not None
            if resumed:
                random_state.set_state(state["rng_after"])
                centers0 = state["centers"].astype(Xd.dtype)
                start, tol_abs, done = state["n_iter"], state["tol_abs"], state["converged"]
                origin = state.get("origin")  # None: before the first pass
            else:
                centers0 = self._initial_centers(data, random_state, passes)
                start, tol_abs, done, origin = 0, None, False, None
            rng_after = random_state.get_state()
            best_saved = None if best is None else (best[0].centers, best[2], best[0].n_iter,
                                                    best[0].converged)
            on_iteration = None
            if ckpt is not None:
                def on_iteration(n_iter, centers, tol_abs, converged, origin=None, run=run,
                                 rng_before=rng_before, rng_after=rng_after, best=best_saved):
                    ckpt.save(run=run, rng_before=rng_before, rng_after=rng_after,
                              centers=centers, n_iter=n_iter, tol_abs=tol_abs,
                              converged=converged, best=best, origin=origin)
                if not resumed:
                    on_iteration(0, centers0, None, False)
            if done or start >= self.max_iter:
                result = _lloyd.LloydResult(centers0, start, done)
            else:
                result = _lloyd.lloyd(Xd, wd, centers0, max_iter=self.max_iter, tol=self.tol,
                                      final_inertia=persisted,
                                      split_every=self.split_every,
                                      verbose=bool(self.verbose), metric=self.metric,
                                      start_iter=start, tol_abs=tol_abs,
                                      on_iteration=on_iteration, passes=passes,
                                      origin=origin)
            if result.inertia is not None:
                # Persisted data: the exact inertia came with the run; only the best run's
                # labels are computed, after the last run, so that no losing run's labels
                # compete with the next runs for the workers.
                labels, inertia = None, result.inertia
            else:
                labels, inertia = self._final_assignment(Xd, wd, result.centers, lazy,
                                                         persisted)
            if best is None or inertia < best[2]:
                best = (result, labels, inertia)
                if n_init > 1:
                    emit("best", run + 1, n_init)
            if ckpt is not None:
                ckpt.save(run=run + 1, rng_before=random_state.get_state(),
                          best=(best[0].centers, best[2], best[0].n_iter, best[0].converged))

        used = self._working_centers(self._to_original_units(best[0].centers))
        if used is not best[0].centers and not np.array_equal(used, best[0].centers):
            # standardize=True: predict, score and transform measure against the centres
            # in original units brought back, which round differently (float32 data far
            # from 0 by a part in ~1e-4 of a standard deviation): so do labels_ and inertia_.
            best = (best[0], *self._final_assignment(Xd, wd, used, lazy, persisted))
        elif best[1] is None and best[0].labels is not None:
            # The last pass ran on chunks held in this process: its bounds are the labels.
            labels = best[0].labels
            if lazy:
                labels = da.from_array(labels, chunks=(Xd.chunks[0],))
            best = (best[0], labels, best[2])
        elif best[1] is None:  # label the best run's centres (its inertia is known)
            best = (best[0], *self._final_assignment(Xd, wd, best[0].centers, lazy, persisted,
                                                     best[2]))
        result, labels, inertia = best
        if isinstance(labels, np.ndarray) and not isinstance(weights, da.Array):
            # Every row's cluster; a row of weight 0 counts as absent, as everywhere.
            rows = labels >= 0
            filled = np.bincount(labels[rows], minlength=self.n_clusters,
                                 weights=None if weights is None else
                                 np.asarray(weights, dtype=np.float64)[rows]) > 0
        else:  # the last pass's (after relocation): a cluster empty then stays empty
            filled = None if result.counts is None else result.counts > 0
        _warn_few_distinct(result.centers, self.n_clusters, filled, result.origins)
        self.cluster_centers_ = self._to_original_units(result.centers)
        self.labels_ = labels
        self.inertia_ = inertia
        self.n_iter_ = result.n_iter
        self._input_url = input_url  # only now: a failed fit leaves the model as it was
        if self.verbose:
            logger.info("fit done: %d iterations, inertia %.6g, converged=%s",
                        result.n_iter, inertia, result.converged)
        return self

    def _final_assignment(self, Xd, wd, centers, lazy: bool, persisted: bool,
                          inertia: float | None = None):
        """Labels and inertia against the final centres: one pass, as sklearn's last E-step.

        For persisted dask input the labels are persisted and computed in the background;
        ``inertia``, when the Lloyd driver already has it, spares waiting for them.
        """
        labels, _, total = G.assignment(Xd, centers, wd,
                                        split_every=self.split_every, metric=self.metric)
        if not lazy:
            if inertia is None:
                labels, inertia = R.compute(labels, total)
            else:  # known already (the run's last pass): the same figure as before a resume
                (labels,) = R.compute(labels)
            labels = np.asarray(labels)
        elif persisted:
            if inertia is not None:
                (labels,) = R.dask_persist(labels)
                return labels, float(inertia)
            labels, total = R.dask_persist(labels, total)
            (inertia,) = R.compute(total)
        else:
            (inertia,) = R.compute(total)
        return labels, float(inertia)

    def _standardized(self, Xv, weights, lazy: bool):
        """Lazily standardised input, and the persist policy to use with it."""
        Xd, wd, persist = Xv, weights, self.persist
        if not lazy:
            client = R.active_client()
            if client is None:  # on local threads: scaled chunk by chunk at every pass,
                persist = False  # not held as a scaled copy
            elif persist == "auto":  # decided here, for the raw chunks and the scaled ones
                persist = Xv.nbytes <= R.memory_budget(client)
            # On a cluster, when the scaled chunks will not be persisted, the raw ones are
            # (NumPy input is held in memory anyway): a graph holding the array would carry
            # it to the workers at every pass. Otherwise the scaled chunks are, and the raw
            # ones would be a second copy for the whole fit.
            rows = R.target_row_chunks(Xv.shape[0], Xv.shape[1] * Xv.itemsize,
                                       R.total_threads(client))
            Xd, wd = R.numpy_chunks(Xv, weights, rows, None if persist else client)
        if wd is not None and not isinstance(wd, da.Array):
            wd = da.from_array(wd, chunks=(Xd.chunks[0],))
        # Moments about the first row, which is near the data: about 0, E[x^2] - E[x]^2
        # cancels away for features far from the origin (unix times in seconds).
        x64 = Xd.astype(np.float64) - Xd[0].astype(np.float64)
        if wd is None:
            mean, sq = x64.mean(axis=0), (x64**2).mean(axis=0)
            first, mean, sq = R.compute(Xd[0], mean, sq)  # one pass for all
        else:
            # Divided on the driver once the total is known to be positive (no warning
            # from the workers before the error when every weight is 0).
            first, s1, s2, total = R.compute(Xd[0], (x64 * wd[:, None]).sum(axis=0),
                                             (x64**2 * wd[:, None]).sum(axis=0), wd.sum())
            V.check_weight_total(total > 0)
            mean, sq = s1 / total, s2 / total
        std = np.sqrt(np.maximum(sq - mean**2, 0.0))
        self.feature_mean_ = first.astype(np.float64) + mean
        self.feature_scale_ = np.where(std > 0, std, 1.0)
        return self._scale(Xd), wd, persist

    def _scale(self, X):
        if not hasattr(self, "feature_mean_"):
            return X
        mean = self.feature_mean_.astype(X.dtype)
        scale = self.feature_scale_.astype(X.dtype)
        if isinstance(X, da.Array):
            # A name of its own per call: a later predict on the same source must not reuse
            # the keys of the fit's (optimised, persisted, then released) graph.
            return X.map_blocks(_standardize_block, mean, scale, dtype=X.dtype,
                                name=f"standardize-{uuid.uuid4().hex}")
        return _standardize_block(X, mean, scale)

    @property
    def _standardizes(self) -> bool:
        """Whether the fitted model measures standardised rows."""
        return hasattr(self, "feature_mean_")

    def _to_original_units(self, centers: np.ndarray) -> np.ndarray:
        if not hasattr(self, "feature_mean_"):
            return centers
        out = centers.astype(np.float64) * self.feature_scale_ + self.feature_mean_
        return out.astype(centers.dtype)

    def _working_centers(self, centers=None) -> np.ndarray:
        """Centres (the fitted ones by default) in the space distances are measured in."""
        centers = self.cluster_centers_ if centers is None else centers
        if not hasattr(self, "feature_mean_"):
            return centers
        c = (centers.astype(np.float64) - self.feature_mean_) / self.feature_scale_
        return c.astype(centers.dtype)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit and return ``labels_``.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
        """
        return self.fit(X, sample_weight=sample_weight).labels_

    def fit_transform(self, X, y=None, sample_weight=None):
        """Fit and return the distances of every row to every centre.

        Returns
        -------
        distances : ndarray or dask array of shape (n_samples, n_clusters)
        """
        return self.fit(X, sample_weight=sample_weight).transform(X)

    @property
    def _n_features_out(self):
        # get_feature_names_out (ClassNamePrefixFeaturesOutMixin): transform's
        # columns are "kmeans0" .. "kmeans{k-1}", as scikit-learn names them.
        return self.cluster_centers_.shape[0]

    # -- using a fitted model -------------------------------------------------

    def _validated(self, X):
        check_is_fitted(self)
        Xv = self._scale(V.check_X(self, X, reset=False))
        if isinstance(Xv, da.Array):
            # The passes of predict, transform and score run on the cluster too: one BLAS
            # thread per worker thread there as well (only fit set it).
            client = R.active_client()
            if client is not None:
                R.prepare_client(client)
        return Xv

    def predict(self, X, return_distance: bool = False):
        """Index of the nearest centre of every row.

        Parameters
        ----------
        X : array-like, dask array, DataFrame or ParquetSource of shape (n_samples, n_features)
            A ``ParquetSource`` (``dask_kmeans.open_parquet``) is matched to the
            fitted feature names by name, whatever the column order.
        return_distance : bool, default=False
            Also return the distance of each row to its centre (Euclidean, or
            ``1 - cos`` for ``metric="cosine"``).

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,), int32
            A lazy dask array for dask input.
        distances : ndarray or dask array of shape (n_samples,), float64
            Only with ``return_distance=True``.
        """
        Xv = self._validated(X)
        cosine = self.metric == "cosine"
        if isinstance(Xv, da.Array):
            labels, sq, _ = G.assignment(Xv, self._working_centers(),
                                         metric=self.metric, refuse_zero_norm=True,
                                         refuse_nonfinite=True, standardized=self._standardizes)
            return (labels, sq if cosine else da.sqrt(sq)) if return_distance else labels
        labels, sq, _ = K.assign(Xv, self._working_centers(), metric=self.metric)
        if cosine:
            K.refuse_zero_norm(labels < 0, standardized=self._standardizes)
        return (labels, sq if cosine else np.sqrt(sq)) if return_distance else labels

    def transform(self, X):
        """Distance of every row to every centre: Euclidean, or ``1 - cos`` for "cosine".

        Returns
        -------
        distances : ndarray or dask array of shape (n_samples, n_clusters)
        """
        Xv = self._validated(X)
        if isinstance(Xv, da.Array):
            out = G.distances(Xv, self._working_centers(), metric=self.metric,
                              standardized=self._standardizes)
        else:
            out = G.transform_chunk(Xv, self._working_centers(), metric=self.metric,
                                    standardized=self._standardizes)
        return self._output_container(out, X)

    def set_output(self, *, transform=None):
        """Set the container ``transform`` and ``fit_transform`` return, as scikit-learn's
        ``set_output``: "default" (NumPy, or a dask array for dask input), "pandas" (a
        pandas DataFrame; for dask input a lazy dask DataFrame, with the index of a dask
        DataFrame input), "polars" (in-memory input only), or None (unchanged). Without
        it, scikit-learn's ``transform_output`` setting applies.

        Returns
        -------
        self
        """
        if transform is None:
            return self
        if transform not in OUTPUT_CONTAINERS:
            raise ValueError(f"set_output(transform={transform!r}): expected one of "
                             f"{list(OUTPUT_CONTAINERS)} or None.")
        if not hasattr(self, "_sklearn_output_config"):
            self._sklearn_output_config = {}
        self._sklearn_output_config["transform"] = transform
        return self

    def _output_container(self, out, X):
        """``transform``'s result in the container :meth:`set_output` chose."""
        import sklearn

        how = getattr(self, "_sklearn_output_config", {}).get(
            "transform", sklearn.get_config()["transform_output"])
        if how == "default":
            return out
        columns = list(self.get_feature_names_out())
        if isinstance(out, da.Array):
            if how != "pandas":
                raise ValueError(
                    f"set_output(transform={how!r}) needs in-memory input: transform of dask "
                    "input is lazy. Use transform='pandas' (a dask DataFrame) or compute X.")
            import dask.dataframe as dd

            index = X.index if V.is_dask_frame(X) else None
            return dd.from_dask_array(out, columns=columns, index=index)
        if how == "pandas":
            import pandas as pd

            index = X.index if isinstance(X, (pd.DataFrame, pd.Series)) else None
            return pd.DataFrame(out, index=index, columns=columns)
        import polars as pl

        return pl.DataFrame(out, schema=columns, orient="row")

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the (weighted) inertia of ``X`` against the fitted centres.

        Returns
        -------
        score : float
        """
        Xv = self._validated(X)
        weights = V.check_sample_weight(sample_weight, Xv)
        if isinstance(Xv, da.Array):
            _, _, inertia = G.assignment(Xv, self._working_centers(), weights,
                                         split_every=self.split_every, metric=self.metric,
                                         refuse_zero_norm=True, refuse_nonfinite=True,
                                         standardized=self._standardizes)
            if weights is None:
                (inertia,) = R.compute(inertia)
            else:  # the weights are read by the same pass
                inertia, positive = R.compute(inertia, (weights > 0).any())
                V.check_weight_total(positive)
            return -float(inertia)
        labels, _, inertia = K.assign(Xv, self._working_centers(), weights, self.metric)
        if self.metric == "cosine":
            K.refuse_zero_norm(labels < 0, standardized=self._standardizes)
        return -inertia

    # -- model files -------------------------------------------------------------

    def save(self, url: str, *, storage_options=None, overwrite: bool = False) -> str:
        """Save the fitted model: centres as Parquet, metadata as JSON, no pickle.

        The metadata holds the feature names and order, dtype, parameters,
        inertia, iterations, library version and the input's URL without
        credentials. The files are committed by a checksummed ``_SUCCESS``
        marker written last, which :func:`dask_kmeans.load` requires.

        Parameters
        ----------
        url : str
            A directory on any fsspec URL (local path, ``file://``, ``s3://``...).
        storage_options : dict, optional
            Passed to fsspec (credentials, ``endpoint_url``...); never stored.
        overwrite : bool, default=False
            Replace a model already committed at ``url``.

        Returns
        -------
        url : str
            Where the model was written, without credentials.
        """
        from . import __version__
        from .model import write_model

        check_is_fitted(self)
        names = getattr(self, "feature_names_in_", None)
        names = ([str(n) for n in names] if names is not None
                 else [f"x{i}" for i in range(self.n_features_in_)])
        params = {k: v for k, v in self.get_params().items() if k != "init"}
        params["init"] = self.init if isinstance(self.init, str) else "array"
        if isinstance(params.get("checkpoint"), str):  # where it was: without credentials
            params["checkpoint"] = strip_credentials(params["checkpoint"])
        seed = params.get("random_state")
        # A RandomState instance cannot be saved (its state moves); an int of any kind can.
        params["random_state"] = (int(seed) if isinstance(seed, numbers.Integral)
                                  and not isinstance(seed, bool | np.bool_) else None)
        metadata = {
            "format": "dask_kmeans.model/1",
            "library_version": __version__,
            "feature_names": names,
            "feature_names_given": getattr(self, "feature_names_in_", None) is not None,
            "dtype": self.cluster_centers_.dtype.name,
            "n_clusters": int(self.cluster_centers_.shape[0]),
            "n_features": int(self.cluster_centers_.shape[1]),
            "params": params,
            "inertia": float(self.inertia_),
            "n_iter": int(self.n_iter_),
            "input_url": getattr(self, "_input_url", None),
        }
        if hasattr(self, "feature_mean_"):
            metadata["feature_mean"] = [float(v) for v in self.feature_mean_]
            metadata["feature_scale"] = [float(v) for v in self.feature_scale_]
        if not isinstance(self.init, str) and not callable(self.init):
            # The initial centres themselves, so that the loaded model's parameters are the
            # saved one's (JSON floats are written with repr: float64 round-trips exactly).
            init = np.asarray(self.init)
            metadata["init_array"] = init.astype(np.float64).tolist()
            metadata["init_dtype"] = init.dtype.name if init.dtype.kind in "fiu" else "float64"
        return write_model(url, self.cluster_centers_, metadata,
                           storage_options=storage_options, overwrite=overwrite)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


def _n_distinct(centers: np.ndarray, filled=None, at=None) -> int:
    """Distinct centres among those of the clusters that ``filled`` says hold rows (all
    when None), ``at`` their sums' origins (``_kernels.count_distinct``). Clusters that
    ended empty kept their initial centres, distinct, and passed in silence where
    scikit-learn, which counts distinct labels, warns."""
    if filled is not None:
        filled = np.asarray(filled, dtype=bool)
        centers = np.asarray(centers)[filled]
        at = None if at is None else np.asarray(at)[filled]
    return K.count_distinct(centers, at)


def _warn_few_distinct(centers: np.ndarray, n_clusters: int, filled=None, at=None) -> None:
    """scikit-learn's warning for fewer distinct clusters than asked for (duplicate rows),
    counted by :func:`_n_distinct`."""
    n_distinct = _n_distinct(centers, filled, at)
    if n_distinct < n_clusters:
        warnings.warn(
            f"Number of distinct clusters ({n_distinct}) found smaller than "
            f"n_clusters ({n_clusters}). Possibly due to duplicate points in X.",
            ConvergenceWarning, stacklevel=V.caller_stacklevel())


@closing_passes()
def kmeans_parallel_init(
    X,
    n_clusters: int,
    *,
    sample_weight=None,
    oversampling_factor: float = 2.0,
    init_rounds: int = 5,
    random_state=None,
    metric: Literal["euclidean", "cosine"] = "euclidean",
) -> np.ndarray:
    """Initial centres by k-means|| (scalable k-means++), for any KMeans-like use.

    Parameters
    ----------
    X : array-like, dask array or DataFrame of shape (n_samples, n_features)
        Dask input is never brought to the driver: each round is one pass.
    n_clusters : int
    sample_weight : array-like or dask array of shape (n_samples,), optional
    oversampling_factor : float, default=2.0
        Each round samples about ``oversampling_factor * n_clusters`` rows.
    init_rounds : int, default=5
    random_state : int, RandomState instance or None
        The same seed gives the same centres for any chunking.
    metric : {"euclidean", "cosine"}, default="euclidean"
        Sample by squared Euclidean or by cosine distance (unit centres).

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features)
        With fewer distinct rows than ``n_clusters``, some repeat, with a
        ``ConvergenceWarning`` (as :meth:`KMeans.fit` gives).

    Examples
    --------
    >>> import numpy as np
    >>> from dask_kmeans import kmeans_parallel_init
    >>> X = np.vstack([np.zeros((50, 2)), np.full((50, 2), 10.0)])
    >>> C = kmeans_parallel_init(X, 2, random_state=0)
    >>> sorted(C[:, 0].tolist())
    [0.0, 10.0]
    """
    est = KMeans(n_clusters, oversampling_factor=oversampling_factor, init_rounds=init_rounds,
                 metric=metric, random_state=random_state)
    V.check_params(est)
    Xv = V.check_X(est, X, reset=True)
    if Xv.shape[0] < n_clusters:
        raise ValueError(f"n_samples={Xv.shape[0]} should be >= n_clusters={n_clusters}.")
    w = V.check_sample_weight(sample_weight, Xv)
    client = R.active_client()
    if client is not None:
        R.prepare_client(client)
    Xd, wd, in_memory = R.place_data(Xv, w, "auto", client)
    centers = _init.kmeans_parallel(Xd, wd, n_clusters, check_random_state(random_state),
                                    oversampling_factor=oversampling_factor,
                                    init_rounds=init_rounds,
                                    keep_state=R.keep_row_state(Xd.shape[0], in_memory, client),
                                    metric=metric,
                                    passes=Passes(Xd, wd, metric=metric, in_memory=in_memory))
    _warn_few_distinct(centers, n_clusters)
    return centers


def load(url: str, *, storage_options=None) -> KMeans:
    """Load a model saved by :meth:`KMeans.save`; it predicts exactly as the saved one.

    Only Parquet and JSON are read (no pickle, so loading never runs code), and
    the checksums in ``_SUCCESS`` are verified: a model that is incomplete or
    was modified is refused with a ``ValueError``.

    Parameters
    ----------
    url : str
        The directory given to :meth:`KMeans.save`.
    storage_options : dict, optional
        Passed to fsspec.

    Returns
    -------
    KMeans
        Fitted: ``cluster_centers_``, ``inertia_``, ``n_iter_``,
        ``n_features_in_`` and, when the model was fitted with names,
        ``feature_names_in_``. ``labels_`` is not stored. Its parameters are the
        saved model's, an ``init`` array too; a callable ``init`` (which is not
        stored) is replaced by the fitted centres.
    """
    from .model import read_model

    centers, meta = read_model(url, storage_options=storage_options)
    _check_load_metadata(meta, centers.shape[1])
    params = dict(meta.get("params", {}))
    if params.get("init") == "array" and "init_array" in meta:
        init = np.asarray(meta["init_array"], dtype=np.float64)
        if init.shape != centers.shape:
            raise ValueError(f"The model's metadata['init_array'] has shape {init.shape} but "
                             f"the centres have shape {centers.shape}.")
        params["init"] = init.astype(meta.get("init_dtype", "float64"))
    elif params.get("init") == "array":
        # A callable init, or a model saved by a version that did not store the init
        # array: the fitted centres stand for it.
        params["init"] = centers.copy()
    known = KMeans().get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"The model at {meta.get('input_url') or 'this URL'} was saved with "
                         f"parameters this version does not know: {unknown}.")
    km = KMeans(**params)
    km.cluster_centers_ = centers
    km.inertia_ = float(meta["inertia"])
    km.n_iter_ = int(meta["n_iter"])
    km.n_features_in_ = centers.shape[1]
    if meta.get("feature_names_given", True):
        km.feature_names_in_ = np.asarray(meta["feature_names"], dtype=object)
    if "feature_mean" in meta:
        km.feature_mean_ = np.asarray(meta["feature_mean"], dtype=np.float64)
        km.feature_scale_ = np.asarray(meta["feature_scale"], dtype=np.float64)
    km._input_url = meta.get("input_url")
    return km


def _check_load_metadata(meta: dict, n_features: int) -> None:
    """Refuse metadata that :meth:`KMeans.save` would not have written, naming the key:
    ``read_model`` checks what every model holds, this what a KMeans needs besides."""
    def bad(key: str, problem: str) -> ValueError:
        return ValueError(f"The model's metadata['{key}'] {problem}; it was not written by "
                          "KMeans.save, or was modified.")

    if not isinstance(meta.get("params", {}), dict):
        raise bad("params", "is not a mapping of parameter names to values")
    if not isinstance(meta.get("feature_names_given", True), bool):
        raise bad("feature_names_given", "is not true or false")
    if meta.get("init_dtype", "float64") not in ("float32", "float64"):
        raise bad("init_dtype", "is not 'float32' or 'float64'")
    if ("feature_mean" in meta) != ("feature_scale" in meta):
        raise bad("feature_mean" if "feature_mean" not in meta else "feature_scale",
                  "is missing while the other standardisation key is there")
    for key in ("feature_mean", "feature_scale"):
        if key in meta:
            try:
                values = np.asarray(meta[key], dtype=np.float64)
            except (TypeError, ValueError):
                values = None
            if values is None or values.shape != (n_features,) or \
                    not np.all(np.isfinite(values)) or (key == "feature_scale"
                                                        and not np.all(values > 0)):
                raise bad(key, f"is not {n_features} finite "
                               + ("positive numbers" if key == "feature_scale" else "numbers"))


@contextlib.contextmanager
def _zero_norm_once_standardized(standardize: bool):
    """Rows of zero norm that the passes of a fit with ``standardize`` find are rows of
    zero norm once standardised: say so (see ``K.ZeroNormError``)."""
    try:
        yield
    except K.ZeroNormError as exc:
        if not standardize or exc.args[2]:
            raise
        raise K.ZeroNormError(*exc.args[:2], True) from None


def _standardize_block(x, mean, scale):
    return (x - mean) / scale


def _ensure_log_handler() -> None:
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s dask_kmeans %(message)s"))
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


@dataclass
class SweepResult:
    """What :func:`sweep` found for every K.

    Attributes
    ----------
    ks : list of int
    inertias : list of float
        Weighted inertia of each model against its final centres.
    n_iter : list of int
    silhouettes : list of float or None
        Silhouette score of each model on a uniform sample of rows (``1 - cos``
        distances for "cosine"); None for a model whose sampled rows fall in
        fewer than 2 or more than ``n - 1`` clusters (always for K=1). None
        when not computed (``silhouette_rows`` 0 or None, or only K=1).
    models : list of KMeans
        Fitted models (``labels_`` is lazy). Each one's ``init`` is the centres
        its run started from, so refitting it alone repeats the run.
    suggested_k : int
    reason : str
        Why ``suggested_k`` was chosen.
    """

    ks: list
    inertias: list
    n_iter: list
    silhouettes: list | None
    models: list
    suggested_k: int
    reason: str


@closing_passes()
def sweep(X, ks, *, sample_weight=None, random_state=None, max_iter: int = 300,
          tol: float = 1e-4, metric: Literal["euclidean", "cosine"] = "euclidean",
          oversampling_factor: float = 2.0, init_rounds: int = 5,
          silhouette_rows: int | None = 5000, split_every: int | None = None,
          standardize: bool = False,
          persist: Literal["auto"] | bool = "auto") -> SweepResult:
    """Fit K-means for every K in ``ks`` at once, sharing the passes over the data.

    One k-means|| pass sequence oversamples candidates for the largest K; each
    K is seeded from those candidates on the driver; then every Lloyd pass
    serves all models that have not converged yet, and one last pass gives
    every model's inertia. The data is read about as often as for one fit,
    not once per K. The silhouette score is computed on a uniform sample of
    at most ``silhouette_rows`` rows; ``suggested_k`` comes from the elbow of
    the inertia curve, refined by the silhouette.

    Parameters
    ----------
    X : array-like, dask array, DataFrame or ParquetSource of shape (n_samples, n_features)
    ks : iterable of int
        At least three values for a suggestion by the elbow.
    standardize : bool, default=False
        As in :class:`KMeans`: every K clusters standardised features; the
        models' centres are in original units, inertias in standardised ones.
    persist : "auto", True or False, default="auto"
        As in :class:`KMeans`: for dask input, hold the data in the cluster's
        memory between the shared passes (True), read it again at every pass
        (False), or hold it when it fits in half of the memory ("auto"). The
        same results either way.

    Returns
    -------
    SweepResult

    Examples
    --------
    >>> import numpy as np
    >>> from dask_kmeans import sweep
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(c, 0.3, (100, 2)) for c in ((0, 0), (5, 5), (0, 5))])
    >>> sweep(X, range(2, 7), random_state=0).suggested_k
    3
    """
    from .report import silhouettes as silhouette_scores
    from .report import suggest_k

    given = list(ks) if not isinstance(ks, str) else [ks]
    if not given or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool | np.bool_)
                            and k >= 1 for k in given):
        # int(2.9) would be 2: a K that was not asked for.
        raise ValueError(f"ks must hold integers >= 1, got {given!r}.")
    ks = sorted({int(k) for k in given})
    if len(ks) < len(given):
        raise ValueError(f"ks holds a value of K more than once: {given!r}.")
    est = KMeans(max(ks), max_iter=max_iter, tol=tol, random_state=random_state,
                 oversampling_factor=oversampling_factor, init_rounds=init_rounds,
                 metric=metric, split_every=split_every, standardize=standardize,
                 persist=persist)
    V.check_params(est)
    V.check_silhouette_rows(silhouette_rows)
    Xv = V.check_X(est, X, reset=True)
    lazy = isinstance(Xv, da.Array)
    if Xv.shape[0] < max(ks):
        raise ValueError(f"n_samples={Xv.shape[0]} should be >= the largest K={max(ks)}.")
    weights = V.check_sample_weight(sample_weight, Xv)
    rng = check_random_state(random_state)
    if standardize:
        Xv, weights, persist = est._standardized(Xv, weights, isinstance(Xv, da.Array))
    with _zero_norm_once_standardized(standardize):
        client = R.active_client()
        if client is not None:
            R.prepare_client(client)
        Xd, wd, in_memory = R.place_data(Xv, weights, persist, client)
        passes = Passes(Xd, wd, split_every=split_every, metric=metric, in_memory=in_memory)
        cands, cand_w = _init.kmeans_parallel(
            Xd, wd, max(ks), rng, oversampling_factor=oversampling_factor, init_rounds=init_rounds,
            keep_state=R.keep_row_state(Xd.shape[0], in_memory, client), split_every=split_every,
            metric=metric, return_candidates=True, passes=passes)
        starts = [_init.reduce_candidates(cands, cand_w, k, rng, metric) for k in ks]
        results = _lloyd.lloyd_many(Xd, wd, starts, max_iter=max_iter, tol=tol,
                                    split_every=split_every, metric=metric, passes=passes)
        # What the models' predict measures against (standardize: the centres in original
        # units brought back), so that their labels_ and inertia_ agree with it.
        finals = [est._working_centers(est._to_original_units(r.centers)) for r in results]
        packed = passes.lloyd(np.vstack(finals), False, tuple(ks))
        parts, _ = G.unpack_many(packed, tuple(ks), Xd.shape[1], False)
        inertias = [p.inertia for p in parts]

        models = []
        for k, start, r, final, inertia in zip(ks, starts, results, finals, inertias, strict=True):
            # ``init`` holds the model's starting centres (original units): refitting it
            # alone repeats its run.
            km = KMeans(k, init=est._to_original_units(start), n_init=1, max_iter=max_iter,
                        tol=tol, metric=metric, split_every=split_every, standardize=standardize,
                        persist=persist)
            for attr in ("n_features_in_", "feature_names_in_", "feature_mean_", "feature_scale_"):
                if hasattr(est, attr):
                    setattr(km, attr, getattr(est, attr))
            km.cluster_centers_ = est._to_original_units(r.centers)
            km.inertia_, km.n_iter_ = float(inertia), r.n_iter
            km.labels_ = G.assignment(Xd, final, metric=metric)[0]
            models.append(km)
        if not lazy:  # NumPy or pandas input: NumPy labels, as KMeans.fit gives, computed
            # together (lazy ones lived on the cluster: lost with its client, and holding a
            # copy of the input on the workers for as long as the result was kept)
            for km, labels in zip(models, R.compute(*(m.labels_ for m in models)), strict=True):
                km.labels_ = np.asarray(labels)

    # K=1 has no silhouette: report.silhouettes scores it None, and the other K still count.
    silhouettes = None
    if silhouette_rows and ks != [1]:
        n = Xd.shape[0]
        idx = K.sample_indices(n, min(n, silhouette_rows), rng)  # O(rows drawn) memory
        sample = _init.take_rows(Xd, idx)[0]
        labelings = [K.assign(sample, final, metric=metric)[0] for final in finals]
        if metric == "cosine":  # rows without a direction belong to no cluster
            keep = labelings[0] >= 0
            sample, labelings = sample[keep], [lab[keep] for lab in labelings]
        silhouettes = silhouette_scores(sample, labelings, metric)
    if len(ks) >= 3:
        suggested, reason = suggest_k(ks, inertias, silhouettes)
    else:
        scored = [(s, k) for k, s in zip(ks, silhouettes or [], strict=False) if s is not None]
        if scored:  # the best silhouette; on a tie the smaller K, as suggest_k
            best, suggested = max(scored, key=lambda sk: (sk[0], -sk[1]))
            reason = (f"Fewer than three values of K, so no elbow to find; K={suggested} has "
                      f"the best silhouette ({best:.3f}).")
        else:
            suggested = ks[-1]
            reason = (f"Fewer than three values of K, so no elbow to find, and no silhouette "
                      f"to compare; K={suggested}, the largest, is suggested.")
    # Of the centres where the models measure (standardised), as fit counts them.
    fewer = [(k, n) for k, r in zip(ks, results, strict=True)
             if (n := _n_distinct(r.centers, None if r.counts is None else r.counts > 0,
                                  r.origins)) < k]
    if fewer:  # scikit-learn's warning of a single fit, for each K it concerns
        warnings.warn("Number of distinct clusters found smaller than K for "
                      + ", ".join(f"K={k} ({n})" for k, n in fewer)
                      + ". Possibly due to duplicate points in X.", ConvergenceWarning,
                      stacklevel=V.caller_stacklevel())
    return SweepResult(ks, [float(v) for v in inertias], [r.n_iter for r in results],
                       silhouettes, models, int(suggested), reason)
