"""scikit-learn's own estimator checks, run on KMeans."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from dask_kmeans import KMeans

# Checks that cannot pass by design, with the reason. Keep this list short.
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": (
        "the random initialisation draws different rows for weighted and for repeated data "
        "from one seed (scikit-learn's KMeans fails it for the same reason); from the same "
        "initial centres weighted rows equal repeated rows, see "
        "test_estimator.py::test_weighted_rows_equal_repeated_rows"
    ),
}


@parametrize_with_checks(
    [KMeans(n_clusters=3, n_init=2, max_iter=20)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
