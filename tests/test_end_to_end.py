"""Parquet on object storage -> fit -> labels and model -> load -> predict, on every store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dask_kmeans as dk
from tests.conftest import blobs


def _dataset(store, name, n=3000, seed=0, parts=3, hive=False):
    X = blobs(n=n, d=3, k=4, seed=seed)
    df = pd.DataFrame(X, columns=["age", "income", "score"])
    df.insert(0, "customer_id", np.arange(n) + 1000 * seed)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        sub = f"{name}/region={'eu' if i % 2 else 'us'}/part-{i}.parquet" if hive else \
            f"{name}/part-{i}.parquet"
        store.write_parquet(sub, df.iloc[a:b])
    return store.url(name), df


@pytest.mark.parametrize("hive", [False, True])
def test_fit_write_labels_save_load_predict(store, hive):
    url, df = _dataset(store, "train", hive=hive)
    opts = store.storage_options
    src = dk.open_parquet(url, key_columns="customer_id", storage_options=opts)
    km = dk.KMeans(4, random_state=0).fit(src)
    assert list(km.feature_names_in_) == ["age", "income", "score"]

    # the same data held in memory, in the dataset's row order, gives the same centres
    keys = src.keys.compute()["customer_id"].to_numpy()
    df = df.set_index("customer_id").loc[keys].reset_index()
    X = df[["age", "income", "score"]].to_numpy()
    mem = dk.KMeans(4, random_state=0).fit(X)
    np.testing.assert_allclose(km.cluster_centers_, mem.cluster_centers_, rtol=1e-7)

    labels, dist = km.predict(src, return_distance=True)
    out = dk.write_labels(src, labels, dist, store.url("labels"), storage_options=opts)
    got = dk.read_labels(out, storage_options=opts).compute()
    assert len(got) == len(df)
    np.testing.assert_array_equal(got["customer_id"].to_numpy(), keys)
    np.testing.assert_array_equal(got["cluster"].to_numpy(), mem.predict(X))
    np.testing.assert_allclose(got["distance"].to_numpy(),
                               np.sqrt(((X - mem.cluster_centers_[mem.predict(X)]) ** 2).sum(1)),
                               rtol=1e-9)
    assert store.secret not in store.all_bytes().decode("latin-1")

    km.save(store.url("model"), storage_options=opts)
    loaded = dk.load(store.url("model"), storage_options=opts)
    np.testing.assert_array_equal(loaded.cluster_centers_, km.cluster_centers_)
    assert loaded.inertia_ == km.inertia_ and loaded.n_iter_ == km.n_iter_

    # a second dataset with its columns in another order: matched by name
    url2, df2 = _dataset(store, "new", seed=1)
    df2 = df2[["score", "customer_id", "income", "age"]]
    store.fs.rm(store.path("new"), recursive=True)
    store.write_parquet("new/part-0.parquet", df2)
    new = dk.open_parquet(store.url("new"), key_columns="customer_id", storage_options=opts)
    expected = km.predict(df2[["age", "income", "score"]])
    np.testing.assert_array_equal(loaded.predict(new).compute(), expected)
    np.testing.assert_array_equal(km.predict(new).compute(), expected)


def test_predict_names_missing_feature_columns(local_store):
    url, df = _dataset(local_store, "train")
    km = dk.KMeans(4, random_state=0).fit(dk.open_parquet(url, key_columns="customer_id"))
    local_store.write_parquet("other/part-0.parquet", df[["customer_id", "age", "score"]])
    other = dk.open_parquet(local_store.url("other"), key_columns="customer_id")
    with pytest.raises(ValueError, match="income"):
        km.predict(other)


def test_saved_metadata_has_no_credentials_and_tampering_is_refused(store):
    url, _ = _dataset(store, "train")
    src = dk.open_parquet(url, storage_options=store.storage_options)
    km = dk.KMeans(4, random_state=0).fit(src)
    km.save(store.url("model"), storage_options=store.storage_options)
    meta = store.get_bytes("model/metadata.json").decode()
    assert store.secret not in meta
    assert '"input_url"' in meta and "train" in meta
    store.put_bytes("model/metadata.json", meta.replace('"inertia": ', '"inertia": 1').encode())
    with pytest.raises(ValueError, match="modified"):
        dk.load(store.url("model"), storage_options=store.storage_options)


def test_numpy_fitted_model_round_trips(local_store):
    X = blobs(n=500, d=3, k=3)
    km = dk.KMeans(3, init=X[:3], random_state=0).fit(X.astype(np.float32))
    km.save(local_store.url("m"))
    loaded = dk.load(local_store.url("m"))
    assert loaded.cluster_centers_.dtype == np.float32
    assert not hasattr(loaded, "feature_names_in_")
    np.testing.assert_array_equal(loaded.predict(X.astype(np.float32)), km.labels_)
    with pytest.raises(FileExistsError):
        km.save(local_store.url("m"))
    km.save(local_store.url("m"), overwrite=True)
