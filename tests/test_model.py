"""dask_kmeans.model: Parquet + JSON models with a checksummed _SUCCESS marker."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_kmeans.model import read_model, write_model


def fitted(dtype=np.float64, k=3, d=4, seed=0):
    centers = np.random.default_rng(seed).normal(size=(k, d)).astype(dtype)
    metadata = {
        "feature_names": [f"f{j}" for j in range(d)],
        "dtype": np.dtype(dtype).name,
        "n_clusters": k,
        "n_features": d,
        "params": {"n_clusters": k, "init": "k-means||", "tol": 1e-4, "random_state": 0},
        "inertia": np.float64(12.5),
        "n_iter": np.int64(7),
        "version": "0.1.0",
        "input_url": "s3://bucket/data/",
    }
    return centers, metadata


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip(store, dtype):
    so = store.storage_options
    centers, metadata = fitted(dtype)
    url = store.url("model")
    assert write_model(url, centers, metadata, storage_options=so) == url
    assert store.listdir("model") == ["_SUCCESS", "centers.parquet", "metadata.json"]
    got, meta = read_model(url, storage_options=so)
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, centers)
    assert meta["feature_names"] == metadata["feature_names"]
    assert meta["inertia"] == 12.5 and meta["n_iter"] == 7 and meta["params"]["init"] == "k-means||"
    # Portable: any Parquet reader sees one row per cluster, one column per feature.
    df = pd.read_parquet(pa.BufferReader(store.get_bytes("model/centers.parquet")))
    assert list(df.columns) == metadata["feature_names"] and len(df) == 3
    assert set(df.dtypes) == {np.dtype(dtype)}
    assert json.loads(store.get_bytes("model/metadata.json"))["version"] == "0.1.0"
    assert store.secret.encode() not in store.all_bytes()


def test_overwrite(local_store):
    url = local_store.url("model")
    centers, metadata = fitted()
    write_model(url, centers, metadata)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_model(url, centers + 1, metadata)
    # The old model's profile describes clusters that are gone: it goes with the model;
    # other files stay.
    for name in ("profile.csv", "profile.md", "notes.txt"):
        local_store.put_bytes(f"model/{name}", b"old")
    write_model(url, centers + 1, metadata, overwrite=True)
    np.testing.assert_array_equal(read_model(url)[0], centers + 1)
    assert local_store.listdir("model") == ["_SUCCESS", "centers.parquet", "metadata.json",
                                            "notes.txt"]


def tamper_centers(store):
    table = pq.read_table(pa.BufferReader(store.get_bytes("model/centers.parquet")))
    df = table.to_pandas()
    df.iloc[0, 0] += 1.0
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    store.put_bytes("model/centers.parquet", sink.getvalue().to_pybytes())


def tamper_metadata(store):
    meta = json.loads(store.get_bytes("model/metadata.json"))
    meta["inertia"] = 0.0
    store.put_bytes("model/metadata.json", json.dumps(meta).encode())


@pytest.mark.parametrize("tamper", [tamper_centers, tamper_metadata])
def test_tampering_detected(store, tamper):
    so = store.storage_options
    write_model(store.url("model"), *fitted(), storage_options=so)
    tamper(store)
    with pytest.raises(ValueError, match=r"incomplete or has been modified.*checksum.*Write it "
                                         r"again \(KMeans.save, or fit --output") as e:
        read_model(store.url("model"), storage_options=so)
    assert store.secret not in str(e.value)


def test_consistent_edit_still_checked_against_centers(local_store):
    """Even with recomputed checksums, names and shapes must agree with the centres."""
    url = local_store.url("model")
    write_model(url, *fitted())
    meta = json.loads(local_store.get_bytes("model/metadata.json"))
    meta["feature_names"] = ["a", "b", "c", "d"]
    data = json.dumps(meta).encode()
    local_store.put_bytes("model/metadata.json", data)
    marker = json.loads(local_store.get_bytes("model/_SUCCESS"))
    marker["files"]["metadata.json"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                        "size": len(data)}
    local_store.put_bytes("model/_SUCCESS", json.dumps(marker).encode())
    with pytest.raises(ValueError, match=r"columns of centers.parquet \['f0'.*differ"):
        read_model(url)


def test_missing_success_or_files(store):
    so = store.storage_options
    url = store.url("model")
    with pytest.raises(FileNotFoundError, match="No model at"):
        read_model(url, storage_options=so)
    write_model(url, *fitted(), storage_options=so)
    store.fs.rm(store.path("model", "metadata.json"))
    with pytest.raises(ValueError, match="metadata.json is missing"):
        read_model(url, storage_options=so)
    store.fs.rm(store.path("model", "_SUCCESS"))
    store.fs.invalidate_cache()
    with pytest.raises(ValueError, match="incomplete: it has no _SUCCESS marker"):
        read_model(url, storage_options=so)


def test_labels_read_as_a_model_are_called_labels(local_store):
    """Labels given where a model goes said "incomplete or has been modified ... Write it
    again with write_model"."""
    import dask.array as da

    from dask_kmeans import KMeans
    from dask_kmeans.io import open_parquet, write_labels

    local_store.write_parquet("d/part-0.parquet", pd.DataFrame({"a": np.arange(6.0)}))
    src = open_parquet(local_store.url("d"))
    km = KMeans(2, random_state=0).fit(src)
    labels = write_labels(src, km.labels_, da.zeros(6, chunks=6), local_store.url("l"))
    with pytest.raises(ValueError, match=r"l holds dask_kmeans labels, not a model: give the "
                                         r"directory a fit wrote its model to"):
        read_model(labels)


def test_corrupted_marker(local_store):
    url = local_store.url("model")
    write_model(url, *fitted())
    local_store.put_bytes("model/_SUCCESS", b"not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_model(url)


@pytest.mark.parametrize("edit", [
    {"files": "x"},
    {"files": None},
    {"files": {"centers.parquet": "abc", "metadata.json": "abc"}},
    {"files": {"centers.parquet": {"sha256": 1}, "metadata.json": {"sha256": 1}}},
    {"centers": [1]},
    {"centers": {"shape": [3, 4], "dtype": ["float64"], "sha256": "0"}},
    {"centers": {"shape": "3x4", "dtype": "float64", "sha256": "0"}},
    {"centers": {"shape": [3, 4], "dtype": "float64", "sha256": None}},
])
def test_marker_of_the_wrong_json_types_is_refused_as_modified(local_store, edit):
    """A marker edited into other JSON types raised AttributeError ('str' object has no
    attribute 'get') or TypeError (unhashable type: 'list') instead of the documented error."""
    url = local_store.url("model")
    write_model(url, *fitted())
    marker = json.loads(local_store.get_bytes("model/_SUCCESS"))
    local_store.put_bytes("model/_SUCCESS", json.dumps({**marker, **edit}).encode())
    with pytest.raises(ValueError, match=re.escape(f"The model at {url} is incomplete or has "
                                                   "been modified")):
        read_model(url)


FIT = {"inertia": 1.5, "n_iter": 3}


@pytest.mark.parametrize(("metadata", "match"), [
    ({"feature_names": ["a", "b"], "w": np.ones(2)}, r"metadata\['w'\] is a ndarray.*tolist"),
    ({"feature_names": ["a", "b"], "p": {"f": object()}}, r"metadata\['p'\]\['f'\] is a object"),
    ({"feature_names": ["a", "b"], "inertia": float("nan")}, r"metadata\['inertia'\] is nan"),
    ({"feature_names": ["a", "b"], "storage": {"secret": "x"}}, r"key 'secret'.*credential"),
    ({"feature_names": ["a", "b"], "aws_access_key_id": "x"}, "credential"),
    ({"feature_names": ["a", "b"], "storage_options": {}}, "credential"),
    ({"feature_names": ["a", "b"], "url": "s3://k:pw@b/x"}, "URL holding credentials"),
    ({"feature_names": ["a"]}, "has 1 name.*2 feature"),
    ({"feature_names": ["a", "a"]}, "repeats the name"),
    ({**FIT}, "must contain 'feature_names'"),
    ({"feature_names": ["a", "b"], "dtype": "float32"}, r"metadata\['dtype'\] is 'float32'"),
    ({"feature_names": ["a", "b"], 3: "x"}, "JSON keys must be str"),
    ({"feature_names": ["a", "b"]}, "must contain 'inertia' and 'n_iter'.*no 'inertia' or"),
    ({"feature_names": ["a", "b"], "inertia": 1.0}, "has no 'n_iter'"),
    ({**FIT, "feature_names": ["a", "b"], "inertia": "1.5"}, r"\['inertia'\] must be a finite"),
    ({**FIT, "feature_names": ["a", "b"], "inertia": True}, r"\['inertia'\] must be a finite"),
    ({**FIT, "feature_names": ["a", "b"], "inertia": 10**400}, r"\['inertia'\] must be a finite"),
    ({**FIT, "feature_names": ["a", "b"], "n_iter": 2.0}, r"\['n_iter'\] must be an int >= 0"),
    ({**FIT, "feature_names": ["a", "b"], "n_iter": -1}, r"\['n_iter'\] must be an int >= 0"),
    ({**FIT, "feature_names": ["a", "b"], "n_iter": np.True_}, r"\['n_iter'\] must be an int"),
])
def test_bad_metadata(local_store, metadata, match):
    with pytest.raises(ValueError, match=match):
        write_model(local_store.url("model"), np.zeros((2, 2)), metadata)
    assert local_store.listdir("model") == []


def rewrite_metadata(store, meta):
    """Replace the model's metadata.json, recomputing its checksum in _SUCCESS."""
    data = json.dumps(meta).encode()
    store.put_bytes("model/metadata.json", data)
    marker = json.loads(store.get_bytes("model/_SUCCESS"))
    marker["files"]["metadata.json"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                        "size": len(data)}
    store.put_bytes("model/_SUCCESS", json.dumps(marker).encode())


@pytest.mark.parametrize(("edit", "match"), [
    ({"inertia": None}, "has no 'inertia'"),
    ({"n_iter": None}, "has no 'n_iter'"),
    ({"inertia": "12.5"}, r"metadata\['inertia'\] must be a finite number"),
    ({"inertia": float("nan")}, r"metadata\['inertia'\] must be a finite number"),
    ({"n_iter": 7.5}, r"metadata\['n_iter'\] must be an int >= 0"),
])
def test_a_model_holds_its_inertia_and_iterations(local_store, edit, match):
    """write_model accepted metadata with feature_names alone and read_model returned it,
    but dask_kmeans.load then failed with KeyError: 'inertia'. Now write_model requires
    inertia and n_iter and read_model refuses metadata without them, before load uses it."""
    import dask_kmeans as dk

    url = local_store.url("model")
    with pytest.raises(ValueError, match="must contain 'inertia' and 'n_iter'"):
        write_model(url, np.zeros((2, 2)), {"feature_names": ["a", "b"]})
    assert local_store.listdir("model") == []
    centers, metadata = fitted()
    write_model(url, centers, {**metadata, "inertia": 12, "n_iter": np.int32(7)})
    meta = read_model(url)[1]
    assert meta["inertia"] == 12.0 and type(meta["inertia"]) is float
    assert meta["n_iter"] == 7 and type(meta["n_iter"]) is int
    # Written by hand (or by a version that did not require them), with checksums that match.
    meta = {k: v for k, v in {**meta, **edit}.items() if v is not None}
    rewrite_metadata(local_store, meta)
    for read in (read_model, dk.load):
        with pytest.raises(ValueError, match=f"incomplete or has been modified: .*{match}"):
            read(url)


@pytest.mark.parametrize(("centers", "match"), [
    (np.zeros(3), "shape"),
    (np.zeros((2, 2), dtype=np.int64), "float32 or float64"),
    (np.array([[0.0, np.nan]]), "NaN or infinity"),
])
def test_bad_centers(local_store, centers, match):
    with pytest.raises(ValueError, match=match):
        write_model(local_store.url("model"), centers, {"feature_names": ["a", "b"]})


def test_wrong_credentials(s3_bucket):
    url = s3_bucket.url("model")
    write_model(url, *fitted(), storage_options=s3_bucket.storage_options)
    wrong = dict(s3_bucket.storage_options, secret="not-the-secret-987654")
    with pytest.raises(PermissionError, match=url) as e:
        read_model(url, storage_options=wrong)
    assert "not-the-secret-987654" not in str(e.value)
    with pytest.raises(PermissionError):
        write_model(s3_bucket.url("other"), *fitted(), storage_options=wrong)


def test_write_into_missing_bucket(s3_bucket):
    url = "s3://no-such-bucket-dask-kmeans/model"
    with pytest.raises(FileNotFoundError, match=url):
        write_model(url, *fitted(), storage_options=s3_bucket.storage_options)
    assert not s3_bucket.fs.exists("no-such-bucket-dask-kmeans")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loaded_model_keeps_an_explicit_init_array(tmp_path, dtype):
    import dask_kmeans as dk

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2))
    X[:100] += 4
    init = (X[[0, 1, 2]] + rng.normal(size=(3, 2)) * 1e-3).astype(dtype)
    km = dk.KMeans(3, init=init).fit(X)
    km.save(str(tmp_path / "m"))
    loaded = dk.load(str(tmp_path / "m"))
    assert loaded.init.dtype == dtype
    np.testing.assert_array_equal(loaded.init, init)  # exactly, not the final centres
    assert set(loaded.get_params()) == set(km.get_params())
    refit = dk.KMeans(**loaded.get_params()).fit(X)
    assert refit.n_iter_ == km.n_iter_
    np.testing.assert_array_equal(refit.cluster_centers_, km.cluster_centers_)

    # A model saved without the init array (by an earlier version) loads as before: the
    # fitted centres stand for the init.
    centers, meta = read_model(str(tmp_path / "m"))
    del meta["init_array"], meta["init_dtype"]
    write_model(str(tmp_path / "old"), centers, meta)
    old = dk.load(str(tmp_path / "old"))
    np.testing.assert_array_equal(old.init, km.cluster_centers_)
    np.testing.assert_array_equal(old.predict(X), km.predict(X))


def test_loaded_model_of_a_callable_init_has_the_centres_as_init(tmp_path):
    import dask_kmeans as dk

    X = np.random.default_rng(1).normal(size=(200, 2))
    km = dk.KMeans(2, init=lambda X, k, rs: X[:k]).fit(X)
    km.save(str(tmp_path / "m"))
    np.testing.assert_array_equal(dk.load(str(tmp_path / "m")).init, km.cluster_centers_)


def test_a_numpy_integer_seed_is_saved(tmp_path):
    """random_state=np.int64(0) was saved as null, so the loaded model's get_params()
    differed; a RandomState instance cannot be saved and still is null."""
    import dask_kmeans as dk

    X = np.random.default_rng(1).normal(size=(200, 2))
    km = dk.KMeans(2, random_state=np.int64(7)).fit(X)
    km.save(str(tmp_path / "m"))
    loaded = dk.load(str(tmp_path / "m")).get_params()
    assert loaded["random_state"] == 7 and type(loaded["random_state"]) is int
    km.set_params(random_state=np.random.RandomState(0)).save(str(tmp_path / "r"))
    assert dk.load(str(tmp_path / "r")).get_params()["random_state"] is None


@pytest.mark.parametrize("extra, key", [
    ({"params": ["n_clusters", 3]}, "params"),
    ({"feature_names_given": "yes"}, "feature_names_given"),
    ({"init_dtype": "int8"}, "init_dtype"),
    ({"feature_mean": [0.0, 0.0, 0.0, 0.0]}, "feature_scale"),
    ({"feature_mean": [0.0] * 4, "feature_scale": [1.0, 0.0, 1.0, 1.0]}, "feature_scale"),
    ({"feature_mean": [0.0] * 3, "feature_scale": [1.0] * 4}, "feature_mean"),
])
def test_load_names_metadata_that_save_would_not_write(tmp_path, extra, key):
    """A model written with write_model and odd optional keys loaded with a TypeError, or
    into a KMeans that failed later (a scale of 0 divides by zero in predict)."""
    import dask_kmeans as dk

    centers, metadata = fitted()
    write_model(str(tmp_path / "m"), centers, {**metadata, **extra})
    with pytest.raises(ValueError, match=rf"metadata\['{key}'\] .*not written by KMeans.save"):
        dk.load(str(tmp_path / "m"))


def test_kmeans_parallel_init_names_a_bad_random_state():
    import dask_kmeans as dk

    with pytest.raises(ValueError, match="random_state"):
        dk.kmeans_parallel_init(np.random.default_rng(0).normal(size=(50, 2)), 2,
                                random_state="a")
