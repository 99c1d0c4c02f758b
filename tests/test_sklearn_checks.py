"""scikit-learn's own estimator checks, run on KMeans."""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import (
    check_global_output_transform_pandas,
    check_set_output_transform,
    check_set_output_transform_pandas,
    parametrize_with_checks,
)

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


@pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names")
@pytest.mark.parametrize("check", [check_set_output_transform, check_set_output_transform_pandas,
                                   check_global_output_transform_pandas])
def test_sklearn_set_output_checks(check):
    """scikit-learn's checks of ``set_output``, which ``parametrize_with_checks`` does not
    yield for a clusterer: KMeans has its own ``set_output`` (see
    test_estimator.py::test_pandas_output_of_dask_input_is_a_lazy_dask_dataframe)."""
    check("KMeans", KMeans(n_clusters=3, n_init=2, max_iter=20))
