"""dask_kmeans.report: profiles against pandas, tables and files, PNG plots, choosing K."""

from __future__ import annotations

import builtins
import threading
from pathlib import Path

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_kmeans import KMeans, open_parquet, sweep
from dask_kmeans.report import (
    _merge_quartiles,
    _sample_indices,
    _sketch_block,
    format_profile,
    plot_clusters,
    plot_elbow,
    profile,
    silhouette_sample,
    suggest_k,
    write_profile,
)
from tests.conftest import blobs, png_size

RTOL = 1e-9  # float64 sums of a few hundred rows


@pytest.fixture(scope="module")
def fitted():
    """Four blobs in three named features and a model fitted on them."""
    X = blobs(n=600, d=3, k=4, seed=1)
    X[:, 2] += 1e4  # a large mean against a unit spread: the std must not cancel
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    return frame, KMeans(n_clusters=4, random_state=0).fit(frame)


@pytest.fixture(scope="module")
def people():
    """Young rich, old poor and middle-aged middle-income people: three clear clusters."""
    rng = np.random.default_rng(3)
    groups = [(25, 90_000), (60, 30_000), (42, 60_000)]
    frame = pd.concat([pd.DataFrame({"age": rng.normal(age, 2.0, 200),
                                     "income": rng.normal(income, 3_000, 200)})
                       for age, income in groups], ignore_index=True)
    km = KMeans(n_clusters=3, init=np.array(groups, dtype=float)).fit(frame)
    return frame, km


def as_kind(frame: pd.DataFrame, kind: str):
    if kind == "numpy":
        return frame.to_numpy()
    if kind == "pandas":
        return frame
    if kind == "dask_array":
        return da.from_array(frame.to_numpy(), chunks=(130, -1))
    return dd.from_pandas(frame, npartitions=4)


def groupby_reference(frame: pd.DataFrame, labels, weights=None) -> pd.DataFrame:
    """size, mean and std (ddof=0) by pandas; integer weights as repeated rows."""
    frame = frame.assign(cluster=labels)
    if weights is not None:
        frame = frame.loc[frame.index.repeat(weights)]
    groups = frame.groupby("cluster")
    out = pd.DataFrame({"size": groups.size()})
    mean, std = groups.mean(), groups.std(ddof=0)
    for name in mean.columns:
        out[f"{name}_mean"] = mean[name]
        out[f"{name}_std"] = std[name]
    return out


def assert_matches(table: pd.DataFrame, reference: pd.DataFrame, k: int) -> None:
    reference = reference.reindex(range(k))
    np.testing.assert_array_equal(table["size"], reference["size"].fillna(0))
    np.testing.assert_allclose(table["share"], table["size"] / table["size"].sum(), rtol=RTOL)
    for column in reference.columns.drop("size"):
        np.testing.assert_allclose(table[column], reference[column], rtol=RTOL, atol=1e-12,
                                   err_msg=column)


# --------------------------------------------------------------------------- profile


@pytest.mark.parametrize("kind", ["numpy", "pandas", "dask_array", "dask_frame"])
def test_profile_matches_pandas_groupby(fitted, kind):
    frame, km = fitted
    table = profile(km, as_kind(frame, kind))
    assert list(table.columns) == ["size", "share", "a_mean", "a_std", "b_mean", "b_std",
                                   "c_mean", "c_std", "description"]
    assert table.index.name == "cluster"
    assert table["size"].dtype == np.int64
    assert table.attrs["exact_quartiles"] is (kind in ("numpy", "pandas"))
    assert_matches(table, groupby_reference(frame, km.predict(frame)), 4)


@pytest.mark.parametrize("kind", ["pandas", "dask_array"])
def test_profile_weighted_equals_repeated_rows(fitted, kind):
    frame, km = fitted
    weights = np.random.default_rng(0).integers(0, 4, size=len(frame))
    given = da.from_array(weights, chunks=100) if kind == "dask_array" else weights
    table = profile(km, as_kind(frame, kind), sample_weight=given)
    assert table["size"].dtype == np.float64
    assert_matches(table, groupby_reference(frame, km.predict(frame), weights), 4)


def test_profile_of_parquet_source_matches_by_column_name(fitted, tmp_path):
    frame, km = fitted
    for i, start in enumerate(range(0, len(frame), 200)):
        frame[["c", "a", "b"]].iloc[start:start + 200].to_parquet(tmp_path / f"part-{i}.parquet")
    table = profile(km, open_parquet(str(tmp_path)))
    assert_matches(table, groupby_reference(frame, km.predict(frame)), 4)


def test_profile_reads_each_chunk_once(fitted):
    frame, km = fitted
    reads, lock = [], threading.Lock()

    def read(block, block_info=None):
        with lock:
            reads.append(block_info[None]["chunk-location"])
        return block

    X = da.from_array(frame.to_numpy(), chunks=(100, -1)).map_blocks(read, dtype=np.float64)
    profile(km, X)
    assert sorted(reads) == [(i, 0) for i in range(6)]


@pytest.mark.parametrize("kind", ["pandas", "dask_array"])
def test_descriptions(people, kind):
    frame, km = people
    table = profile(km, as_kind(frame, kind))
    assert table["description"].tolist() == [
        "age: low, income: high", "age: high, income: low", "typical"]


#: Continuous features, and discrete ones whose values many rows share (jumps of the CDF).
FEATURES = {
    "normal": lambda rng, n: rng.normal(size=n),
    "lognormal": lambda rng, n: rng.lognormal(sigma=1.5, size=n),
    "poisson": lambda rng, n: rng.poisson(3.0, size=n).astype(float),
    "zero_or_ten": lambda rng, n: rng.choice([0.0, 10.0], size=n, p=[0.7, 0.3]),
    "small_ints": lambda rng, n: rng.integers(0, 5, size=n).astype(float),
}


def merged_quartiles(chunks) -> np.ndarray:
    return _merge_quartiles(np.vstack([_sketch_block(c) for c in chunks]), chunks[0].shape[1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 3000),
       cuts=st.lists(st.floats(0.0, 1.0), max_size=12), ordered=st.booleans())
def test_merged_quartiles_within_a_percentile_point_of_numpy(seed, n, cuts, ordered):
    """Any chunking (empty chunks too; sorted rows give chunks of different ranges)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([make(rng, n) for make in FEATURES.values()])
    if ordered:
        X = np.sort(X, axis=0)
    got = merged_quartiles(np.split(X, sorted(int(c * n) for c in cuts)))
    for j, name in enumerate(FEATURES):
        for row, q in enumerate((25, 75)):
            low, high = np.percentile(X[:, j], [max(q - 1, 0), min(q + 1, 100)])
            assert low <= got[row, j] <= high, (name, q, got[row, j], low, high)


@pytest.mark.parametrize("chunks", [(1000,) * 4, (1, 999, 2500, 500), (3300, 650, 50),
                                    (37,) * 108 + (4,), "parquet"])
def test_dask_quartiles_of_shared_values_are_numpys(chunks, tmp_path):
    """Counts, zeros and small integers: the quartiles and descriptions of in-memory data."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({name: make(rng, 4000) for name, make in FEATURES.items()
                          if name not in ("normal", "lognormal")})
    km = KMeans(n_clusters=3, random_state=0).fit(frame)
    if chunks == "parquet":
        for i in range(8):
            frame.iloc[i * 500:(i + 1) * 500].to_parquet(tmp_path / f"part-{i}.parquet")
        data = open_parquet(str(tmp_path))
    else:
        data = da.from_array(frame.to_numpy(), chunks=(chunks, -1))
    table, exact = profile(km, data), profile(km, frame)
    assert table.attrs["exact_quartiles"] is False
    for name, quartiles in exact.attrs["quartiles"].items():
        np.testing.assert_allclose(table.attrs["quartiles"][name], quartiles, rtol=1e-12,
                                   err_msg=name)
    assert table["description"].tolist() == exact["description"].tolist()


@pytest.mark.parametrize("name", ["normal", "lognormal"])
def test_dask_quartiles_of_continuous_features(name):
    X = FEATURES[name](np.random.default_rng(5), 100_000)[:, None]
    got = merged_quartiles(np.array_split(X, 7))
    np.testing.assert_allclose(got[:, 0], np.percentile(X, [25, 75]), rtol=2e-3)
    # One chunk: NumPy's quartiles.
    np.testing.assert_array_equal(merged_quartiles([X]), np.percentile(X, [25, 75], axis=0))


def test_empty_cluster_and_feature_names(fitted):
    frame, km = fitted
    X = frame.to_numpy()[:, :2]
    far = KMeans(n_clusters=3, init=np.array([[-50.0, 0.0], [50.0, 0.0], [1e6, 1e6]]),
                 max_iter=1).fit(np.vstack([X, [[1e6, 1e6]]]))
    table = profile(far, X)  # no row of X is near the third centre
    assert list(table.columns[2:4]) == ["x0_mean", "x0_std"]
    assert table.loc[2, "size"] == 0 and table.loc[2, "share"] == 0
    assert np.isnan(table.loc[2, ["x0_mean", "x0_std", "x1_mean", "x1_std"]].astype(float)).all()
    assert table.loc[2, "description"] == "empty"
    assert "-" in format_profile(table).splitlines()[-1]


def test_profile_errors_name_the_problem(fitted):
    frame, km = fitted
    with pytest.raises(ValueError, match=r"lacks the feature column\(s\) \['b'\]"):
        profile(km, frame.drop(columns="b"))
    with pytest.raises(ValueError, match="has 2 features but the model was fitted on 3"):
        profile(km, frame.to_numpy()[:, :2])
    with pytest.raises(ValueError, match="'sample_weight' has 3 rows but the data has 600"):
        profile(km, frame, sample_weight=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        profile(km, frame, sample_weight=-np.ones(len(frame)))


def test_profile_on_a_distributed_cluster(fitted, client):
    frame, km = fitted
    X = da.from_array(frame.to_numpy(), chunks=(200, -1))
    weights = da.from_array(np.arange(len(frame)) % 3, chunks=300)
    table = profile(km, X, sample_weight=weights)
    expected = profile(km, frame, sample_weight=np.arange(len(frame)) % 3)
    pd.testing.assert_frame_equal(table.drop(columns="description"),
                                  expected.drop(columns="description"), rtol=RTOL)
    assert silhouette_sample(X, model=km, max_points=200) > 0.5


# --------------------------------------------------------------------------- tables and files


def test_format_profile(people):
    frame, km = people
    lines = format_profile(profile(km, frame)).splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].split()[:3] == ["cluster", "size", "share"]
    assert "age (mean ± std)" in lines[0] and set(lines[1]) == {"-", " "}
    assert lines[2].split()[:3] == ["0", "200", "33.3%"]
    assert lines[2].endswith("age: low, income: high")


def test_format_profile_shows_a_mean_to_two_digits_of_its_std():
    """Also for a std below 1e-3, so that close means stay apart, and for tiny means."""
    df = pd.DataFrame({"size": [10, 10, 10], "share": [1 / 3] * 3,
                       "x_mean": [12.3456, 12.3462, 25.5], "x_std": [0.0005, 0.0005, 2.25],
                       "y_mean": [1.00001e-5, 1.00003e-5, 0.5], "y_std": [1e-9, 1e-9, 1e-6]},
                      index=pd.RangeIndex(3, name="cluster"))
    rows = [line.split("  ") for line in format_profile(df).splitlines()[2:]]
    cells = [[c.strip() for c in row if c.strip()][3:] for row in rows]
    assert cells == [["12.34560 ± 5.000e-04", "1.00001e-05 ± 1.000e-09"],
                     ["12.34620 ± 5.000e-04", "1.00003e-05 ± 1.000e-09"],
                     ["25.50 ± 2.250", "0.5000000 ± 1.000e-06"]]


def test_write_profile(people, tmp_path):
    frame, km = people
    table = profile(km, frame)
    out = tmp_path / "reports" / "run"  # created
    written = write_profile(table, str(out))
    csv, md = out / "profile.csv", out / "profile.md"
    assert written == [str(csv), str(md)]

    back = pd.read_csv(csv, index_col="cluster")
    assert list(back.columns) == list(table.columns)
    assert back["description"].tolist() == table["description"].tolist()
    np.testing.assert_allclose(back.drop(columns="description").to_numpy(),
                               table.drop(columns="description").to_numpy(dtype=float),
                               rtol=1e-15)

    lines = md.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ("| cluster | size | share | age (mean ± std) | income (mean ± std) "
                        "| description |")
    assert lines[1] == "|---:|---:|---:|---:|---:|:---|"
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| 0 | 200 | 33.3% | 25.")
    assert lines[2].endswith("| age: low, income: high |")



def test_write_profile_and_plot_to_any_store(people, store):
    """Local paths, file:// URLs and S3 (where no bucket or directory is created)."""
    frame, km = people
    table = profile(km, frame)
    written = write_profile(table, store.url("reports"), storage_options=store.storage_options)
    assert written == [store.url("reports", "profile.csv"), store.url("reports", "profile.md")]
    assert store.listdir("reports") == ["profile.csv", "profile.md"]
    assert store.get_bytes("reports/profile.csv").startswith(b"cluster,size,share,age_mean,")
    url = plot_elbow([2, 3, 4], [3.0, 2.0, 1.5], store.url("plots", "elbow.png"),
                     storage_options=store.storage_options)
    assert url == store.url("plots", "elbow.png")
    assert store.get_bytes("plots/elbow.png").startswith(b"\x89PNG\r\n\x1a\n")
    assert store.secret not in " ".join([*written, url])

# --------------------------------------------------------------------------- plots


def test_plot_clusters_pca(tmp_path):
    X = da.from_array(blobs(n=3000, d=5, k=4, seed=2), chunks=(1000, -1))
    km = KMeans(n_clusters=4, random_state=0).fit(X)
    path = tmp_path / "plots" / "pca.png"  # the directory is created
    assert plot_clusters(km, X, str(path), max_points=500) == str(path)
    assert png_size(path) == (800, 600)


def test_plot_clusters_named_features(people, tmp_path):
    frame, km = people
    path = plot_clusters(km, frame, str(tmp_path / "named.png"), features=["income", "age"])
    assert png_size(path) == (800, 600)
    with pytest.raises(ValueError, match=r"two different features.*\['age', 'income'\]"):
        plot_clusters(km, frame, str(tmp_path / "bad.png"), features=["age", "height"])


def _drawn(monkeypatch):
    """The figures the plots would save, kept to look at."""
    from dask_kmeans import report

    figures = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, path, so: figures.append(fig) or path)
    return figures


def test_plot_clusters_draws_where_the_model_measures(monkeypatch, tmp_path):
    """A cosine model's stars (unit-vector centroids) sat at the origin, far from every
    cluster; the PCA of a standardize=True model ran on raw units (income alone: "PC1
    (100% variance)", "PC2 (0% variance)"), and its axes had units of different lengths."""
    rng = np.random.default_rng(0)
    centres = np.array([[25.0, 30_000.0, 1.0], [60.0, 90_000.0, 3.0], [40.0, 60_000.0, 9.0]])
    X = np.vstack([c + rng.normal(size=(300, 3)) * [5.0, 5_000.0, 0.5] for c in centres])
    frame = pd.DataFrame(X, columns=["age", "income", "visits"])
    figures = _drawn(monkeypatch)
    cosine = KMeans(3, metric="cosine", random_state=0).fit(frame)
    plot_clusters(cosine, frame, str(tmp_path / "c.png"), features=["age", "income"])
    stars = figures[-1].axes[0].collections[-1].get_offsets()
    labels = cosine.predict(frame)
    for c in range(3):
        np.testing.assert_allclose(stars[c], X[labels == c][:, :2].mean(axis=0), rtol=1e-9)
    standardised = KMeans(3, standardize=True, random_state=0).fit(frame)
    plot_clusters(standardised, frame, str(tmp_path / "s.png"))
    ax = figures[-1].axes[0]
    assert "of the standardised features" in ax.get_xlabel()
    assert "100%" not in ax.get_xlabel() and "0% variance" not in ax.get_ylabel()
    assert ax.get_aspect() == 1.0
    plot_clusters(cosine, frame, str(tmp_path / "cp.png"))
    assert "of the unit rows" in figures[-1].axes[0].get_xlabel()
    from dask_kmeans.report import _share

    assert _share(0.001) == "<1%" and _share(0.0) == "0%" and _share(0.5) == "50%"
    assert _share(0.005) == "<1%" and _share(0.995) == ">99%" and _share(1.0) == "100%"


def test_plot_clusters_one_feature(tmp_path):
    X = np.concatenate([np.zeros((20, 1)), np.ones((20, 1))])
    km = KMeans(n_clusters=2, init=np.array([[0.0], [1.0]])).fit(X)
    assert png_size(plot_clusters(km, X, str(tmp_path / "one.png"))) == (800, 600)


@pytest.mark.parametrize("n_rows, n_features", [(1, 3), (1, 1), (1, 2), (2, 3), (2, 1)])
def test_plot_clusters_of_one_or_two_rows(monkeypatch, tmp_path, n_rows, n_features):
    """A fit of one row with output.plot failed after the fit with IndexError: the PCA of a
    one-row sample has one principal axis, and the scatter asked for a second. The second
    axis is zero now: a strip along the first, labelled with 0% of the variance."""
    X = np.random.default_rng(0).normal(size=(n_rows, n_features))
    km = KMeans(n_clusters=n_rows, random_state=0).fit(X)
    figures = _drawn(monkeypatch)
    plot_clusters(km, X, str(tmp_path / "few.png"))
    ax = figures[-1].axes[0]
    points = np.vstack([c.get_offsets() for c in ax.collections])
    assert np.isfinite(points).all() and len(points) == 2 * n_rows  # rows and stars
    if n_rows == 1 and n_features == 3:
        assert ax.get_ylabel() == "PC2 (0% variance)"
        np.testing.assert_array_equal(points[:, 1], 0.0)
    monkeypatch.undo()
    assert png_size(plot_clusters(km, X, str(tmp_path / "few.png"))) == (800, 600)


def test_plot_elbow(tmp_path):
    path = plot_elbow([2, 3, 4, 5], [100.0, 40.0, 12.0, 10.0], str(tmp_path / "elbow.png"),
                      silhouettes=[0.5, 0.6, 0.8, None], suggested_k=4)
    assert png_size(path) == (800, 600)
    with pytest.raises(ValueError, match=r"suggested_k=7 is not one of ks \[2, 3, 4, 5\]"):
        plot_elbow([2, 3, 4, 5], [1.0, 0.5, 0.3, 0.2], str(tmp_path / "x.png"), suggested_k=7)


def test_the_elbow_plot_labels_a_long_sweep_readably(monkeypatch, tmp_path):
    """Every K was a tick label: K=2..80 overlapped into a smear."""
    figures = _drawn(monkeypatch)
    ks = list(range(2, 81))
    plot_elbow(ks, [1000.0 / k for k in ks], str(tmp_path / "e.png"))
    ticks = figures[-1].axes[0].get_xticks()
    assert len(ticks) <= 22 and all(float(t).is_integer() for t in ticks), ticks
    plot_elbow([2, 3, 4], [3.0, 2.0, 1.5], str(tmp_path / "few.png"))
    assert list(figures[-1].axes[0].get_xticks()) == [2, 3, 4]
    # Few but close among far: 2, 3, 4, 5 ran together into "2345".
    plot_elbow([2, 3, 4, 5, 50, 100], [9.0, 7.0, 5.0, 4.0, 2.0, 1.0], str(tmp_path / "s.png"))
    assert list(figures[-1].axes[0].get_xticks()) != [2, 3, 4, 5, 50, 100]


def test_a_plots_format_follows_its_extension(people, tmp_path, monkeypatch):
    """PNG bytes went into a file named .pdf; .pdf and .svg now write those formats (as
    matplotlib's savefig does), and another extension is refused before any work."""
    frame, km = people
    for name, head in (("e.PDF", b"%PDF"), ("e.svg", b"<?xml")):
        path = plot_elbow([2, 3], [10.0, 5.0], str(tmp_path / name))
        assert Path(path).read_bytes().startswith(head)
    assert Path(plot_clusters(km, frame, str(tmp_path / "c.pdf"))).read_bytes()[:4] == b"%PDF"
    monkeypatch.setattr(km, "predict", None)  # no work may start
    for name, ext in (("c.jpg", "the extension .jpg"), ("plot", "none")):
        with pytest.raises(ValueError, match=rf"PNG, PDF or SVG, chosen by its extension "
                                             rf"\(\.png, \.pdf, \.svg\); '{name}' has {ext}"):
            plot_clusters(km, frame, str(tmp_path / name))
        with pytest.raises(ValueError, match=rf"'{name}' has {ext}"):
            plot_elbow([2, 3], [10.0, 5.0], str(tmp_path / name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pdf", "e.PDF", "e.svg"]


def test_missing_matplotlib_gives_the_pip_hint(people, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    frame, km = people
    hint = r'pip install "dask-kmeans\[plot\]"'
    with pytest.raises(ImportError, match=hint):
        plot_elbow([2, 3, 4], [3.0, 2.0, 1.5], str(tmp_path / "elbow.png"))
    with pytest.raises(ImportError, match=hint):
        plot_clusters(km, frame, str(tmp_path / "clusters.png"))
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- choosing K


def test_suggest_k_finds_four_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    X = np.concatenate([c + rng.normal(size=(300, 2)) for c in centres])
    ks = list(range(2, 9))
    models = [KMeans(n_clusters=k, random_state=0).fit(X) for k in ks]
    inertias = [m.inertia_ for m in models]

    k, reason = suggest_k(ks, inertias)
    assert k == 4 and "K=4" in reason

    silhouettes = [silhouette_sample(X, m.labels_, max_points=600) for m in models]
    k, reason = suggest_k(ks, inertias, silhouettes)
    assert k == 4 and "K=4" in reason and f"{silhouettes[2]:.3f}" in reason


def test_suggest_k_prefers_a_better_silhouette_next_to_the_elbow():
    k, reason = suggest_k([5, 2, 3, 4], [3.5, 10.0, 5.0, 4.0], [0.4, 0.5, 0.6, 0.7])
    assert k == 4
    assert "bends most at K=3" in reason and "so K=4" in reason and "0.700" in reason


def test_suggest_k_edge_cases():
    k, reason = suggest_k([1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0])
    assert k == 1 and "no elbow" in reason
    # A point above the line is no elbow: K=4's inertia rose (a poor local optimum), and
    # a stretch bending the other way; both were chosen as "the curve bends most".
    k, reason = suggest_k([2, 3, 4, 5, 6], [100.0, 60.0, 110.0, 40.0, 35.0])
    assert k == 3 and "bends most at K=3" in reason, reason
    k, reason = suggest_k([2, 3, 4, 5, 6], [100.0, 99.5, 99.0, 98.0, 5.0])
    assert k == 2 and "no elbow" in reason, reason
    with pytest.raises(ValueError, match="at least 3 values of K"):
        suggest_k([2, 3], [2.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        suggest_k([2, 3, 4], [2.0, 1.0])
    with pytest.raises(ValueError, match="repeats"):
        suggest_k([2, 2, 4], [3.0, 2.0, 1.0])


# --------------------------------------------------------------------------- silhouette


def test_silhouette_sample(fitted):
    from sklearn.metrics import silhouette_score

    frame, km = fitted
    labels = km.predict(frame)
    exact = silhouette_score(frame.to_numpy(), labels)
    assert silhouette_sample(frame, labels) == pytest.approx(exact, rel=1e-12)

    X = da.from_array(frame.to_numpy(), chunks=(100, -1))
    sampled = silhouette_sample(X, da.from_array(labels, chunks=150), max_points=300)
    assert sampled == silhouette_sample(X, model=km, max_points=300)  # same rows and labels
    assert abs(sampled - exact) < 0.05

    with pytest.raises(ValueError, match="needs labels, or a fitted model"):
        silhouette_sample(frame)
    with pytest.raises(ValueError, match="from 2 to n_rows - 1 distinct clusters"):
        silhouette_sample(frame, np.zeros(len(frame), dtype=int))


def test_max_points_takes_any_integer_but_a_bool(fitted, tmp_path):
    frame, km = fitted
    labels = km.predict(frame)
    want = silhouette_sample(frame, labels, max_points=300)
    for n in (np.int64(300), np.int32(300), np.uint16(300)):
        assert silhouette_sample(frame, labels, max_points=n) == want
    path = tmp_path / "clusters.png"
    assert png_size(plot_clusters(km, frame, str(path), max_points=np.int64(200))) == (800, 600)
    for bad in (True, np.bool_(True), 300.0, np.int64(0), "300"):
        with pytest.raises(ValueError, match="max_points must be an int >= 1"):
            silhouette_sample(frame, labels, max_points=bad)
        with pytest.raises(ValueError, match="max_points must be an int >= 1"):
            plot_clusters(km, frame, str(tmp_path / "bad.png"), max_points=bad)


def test_sample_indices_are_uniform_distinct_and_bounded():
    assert _sample_indices(10, 20, 0) is None
    for n in (1_000, 10**15):  # the second must not allocate n of anything
        idx = _sample_indices(n, 500, 0)
        assert idx.shape == (500,) and np.unique(idx).size == 500
        assert (np.diff(idx) > 0).all() and idx[0] >= 0 and idx[-1] < n
    # Every row equally likely: each of 10 rows is drawn about 3/10 of the time.
    rng = np.random.RandomState(0)
    counts = np.bincount(np.concatenate([_sample_indices(10, 3, rng) for _ in range(2000)]))
    assert np.allclose(counts / 2000, 0.3, atol=0.05)



def test_silhouettes_of_several_labelings_share_the_distances(monkeypatch):
    """One distance matrix for every labeling: the scores of separate silhouette_score
    calls, also when the matrix would be too large and each score makes its own."""
    from sklearn.metrics import silhouette_score

    from dask_kmeans import report

    rng = np.random.default_rng(3)
    sample = rng.normal(size=(600, 4)) + rng.normal(scale=4, size=(5, 4))[rng.integers(5, size=600)]
    labelings = [KMeans(k, random_state=0).fit(sample).labels_ for k in (2, 3, 5)]
    want = [silhouette_score(sample, lab) for lab in labelings]
    np.testing.assert_allclose(report.silhouettes(sample, labelings), want, rtol=1e-12)
    monkeypatch.setattr(report, "SHARED_DISTANCES_BYTES", 0)
    np.testing.assert_allclose(report.silhouettes(sample, labelings), want, rtol=1e-12)
    # A labeling without a silhouette on these rows scores None; the others are scored.
    got = report.silhouettes(sample, [np.zeros(600, dtype=int), labelings[1]])
    assert got[0] is None and got[1] == pytest.approx(want[1], rel=1e-12)
    assert report.silhouettes(sample, [np.arange(600)]) == [None]
    cosine = [silhouette_score(sample, lab, metric="cosine") for lab in labelings]
    np.testing.assert_allclose(report.silhouettes(sample, labelings, "cosine"), cosine,
                               rtol=1e-12)
    monkeypatch.setattr(report, "SHARED_DISTANCES_BYTES", 2**40)
    np.testing.assert_allclose(report.silhouettes(sample, labelings, "cosine"), cosine,
                               rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_profile_std_is_exact_when_the_centres_are_far_from_the_means(lazy):
    """The sums of squares were taken about the centres: a cosine model's are unit vectors,
    so at an offset of 1e8 the std came out 2.0 against 0.96 (and 0 for the other cluster);
    data drifted since the fit too. They are taken again about the means then."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(200, 2)) + [1e8, 0], rng.normal(size=(200, 2)) + [0, 1e8]])
    km = KMeans(2, random_state=0, metric="cosine").fit(X)
    labels = km.predict(X)
    table = profile(km, da.from_array(X, chunks=(70, -1)) if lazy else X)
    for c in range(2):
        rows = X[labels == c]
        np.testing.assert_allclose(table.loc[c, ["x0_mean", "x1_mean"]].astype(float),
                                   rows.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(table.loc[c, ["x0_std", "x1_std"]].astype(float),
                                   rows.std(axis=0), rtol=1e-9)
    drifted = KMeans(2, random_state=0).fit(X)
    moved = X + 3e8
    table = profile(drifted, moved)
    for c, rows in enumerate(moved[drifted.predict(moved) == c] for c in range(2)):
        np.testing.assert_allclose(table.loc[c, ["x0_std", "x1_std"]].astype(float),
                                   rows.std(axis=0), rtol=1e-9)


def test_silhouette_of_a_dask_frame_with_a_bool_column_and_of_a_standardized_model():
    """A dask DataFrame of bool and float columns became an object array that predict
    refused; and silhouette_sample(X, model=m) scored raw units where a standardize=True
    model (and sweep's silhouettes) measure standardised ones."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": np.r_[rng.normal(size=100), rng.normal(size=100) + 5],
                          "flag": np.r_[np.zeros(100, bool), np.ones(100, bool)]})
    km = KMeans(2, random_state=0).fit(frame)
    expected = silhouette_sample(frame, model=km)
    assert silhouette_sample(dd.from_pandas(frame, npartitions=3), model=km) == \
        pytest.approx(expected)
    X = np.column_stack([rng.normal(size=300), 100 * rng.normal(size=300)])
    X[:100, 0] += 4
    result = sweep(X, [2, 3, 4], random_state=0, standardize=True)
    for model, score in zip(result.models, result.silhouettes, strict=True):
        assert silhouette_sample(X, model=model) == pytest.approx(score, rel=1e-9)
