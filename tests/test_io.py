"""dask_kmeans.io: Parquet on local paths, file:// and S3 (a real moto server) as dask arrays."""

from __future__ import annotations

import os
import pickle
import re

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dask_kmeans.io import (
    ParquetSource,
    open_parquet,
    read_labels,
    read_parquet,
    strip_credentials,
    write_labels,
)


def labels_part(store, out: str, i: int, name: bool = False) -> str:
    """The path (or the name) of part ``i`` of the labels at ``out``, as their marker lists it
    (each commit names its parts: part-NNNNN-<token>.parquet)."""
    import json

    parts = json.loads(store.fs.cat_file(store.path(out, "_SUCCESS")))["parts"]
    found = parts[i]["name"]
    assert re.fullmatch(rf"part-{i:05d}-[0-9a-f]{{12}}\.parquet", found), found
    return found if name else store.path(out, found)

def frame(n, *, seed=0, start=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(start, start + n, dtype=np.int64),
        "name": [f"row{i}" for i in range(start, start + n)],
        "x": rng.normal(size=n),
        "y": rng.normal(size=n).astype(np.float32),
        "z": rng.integers(-5, 5, size=n, dtype=np.int32),
    })


def write_dir(store, sizes, prefix="data", seed=0):
    """One file per size (zero allowed) under ``prefix``; returns the URL and the full frame."""
    frames, start = [], 0
    for i, n in enumerate(sizes):
        df = frame(n, seed=seed + i, start=start)
        store.write_parquet(f"{prefix}/part-{i}.parquet", df)
        frames.append(df)
        start += n
    return store.url(prefix), pd.concat(frames, ignore_index=True)


def assert_clean(text, store):
    assert store.secret not in text


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://AKIA:s3cr3t@bucket/x.parquet", "s3://bucket/x.parquet"),
    ("https://user:pw@host:8080/a/b?v=1", "https://host:8080/a/b?v=1"),
    ("https://host/x?sig=abc&X-Amz-Signature=def&X-Amz-Credential=ghi&part=2",
     "https://host/x?part=2"),
    ("abfs://container@account.dfs.core.windows.net/x", "abfs://container@account.dfs.core.windows.net/x"),  # noqa: E501
    ("/tmp/a:b@c/file.parquet", "/tmp/a:b@c/file.parquet"),
    ("file:///tmp/x.parquet", "file:///tmp/x.parquet"),
])
def test_strip_credentials(url, expected):
    assert strip_credentials(url) == expected


# --------------------------------------------------------------------------- reading


def test_single_file(store):
    df = frame(7)
    url = store.write_parquet("one.parquet", df)
    src = open_parquet(url, storage_options=store.storage_options)
    assert isinstance(src, ParquetSource)
    # Default: every numeric column; the string column is skipped.
    assert src.feature_names == ["id", "x", "y", "z"]
    assert src.features.chunks == ((7,), (4,))
    assert src.features.dtype == np.float64
    assert src.parts[0].endswith("one.parquet") and len(src.parts) == 1
    assert src.keys is None
    np.testing.assert_array_equal(src.features.compute(),
                                  df[["id", "x", "y", "z"]].to_numpy(np.float64))
    assert_clean(repr(src), store)


def test_directory_chunks_follow_files_with_zero_row_parts(store):
    url, df = write_dir(store, [4, 0, 3, 5])
    # Not data: markers and temporary or hidden files are skipped.
    store.put_bytes("data/_SUCCESS", b"")
    store.put_bytes("data/_temporary-1/part-9.parquet", b"junk")
    store.put_bytes("data/.hidden.parquet", b"junk")
    so = store.storage_options
    X = open_parquet(url, ["x", "z"], storage_options=so, chunk_bytes=None).features
    assert X.chunks == ((4, 0, 3, 5), (2,))
    np.testing.assert_array_equal(X.compute(), df[["x", "z"]].to_numpy(np.float64))
    # By default small files share a chunk, up to chunk_bytes.
    X = read_parquet(url, ["x", "z"], storage_options=so)
    assert X.chunks == ((12,), (2,))
    np.testing.assert_array_equal(X.compute(), df[["x", "z"]].to_numpy(np.float64))
    # read_parquet takes chunk_bytes too (it had none, nor drop_zero_norm).
    assert read_parquet(url, ["x", "z"], storage_options=so, chunk_bytes=None).chunks == \
        ((4, 0, 3, 5), (2,))


def test_parts_in_natural_order(local_store):
    for i in (10, 2, 1):
        local_store.write_parquet(f"d/part-{i}.parquet", pd.DataFrame({"a": [float(i)]}))
    src = open_parquet(local_store.url("d"))
    assert [p.rsplit("/", 1)[-1] for p in src.parts] == [
        "part-1.parquet", "part-2.parquet", "part-10.parquet"]
    np.testing.assert_array_equal(src.features.compute().ravel(), [1.0, 2.0, 10.0])


def test_glob(store):
    url, df = write_dir(store, [2, 3, 4])
    store.put_bytes("data/notes.txt", b"not parquet")
    X = read_parquet(store.url("data", "part-[12].parquet"), ["x"],
                     storage_options=store.storage_options)
    assert X.chunks == ((7,), (1,))  # two small files, one chunk
    np.testing.assert_array_equal(X.compute().ravel(), df["x"].to_numpy()[2:])
    with pytest.raises(FileNotFoundError, match="No files match"):
        read_parquet(store.url("data", "*.nothing"), storage_options=store.storage_options)


def test_a_glob_that_matches_only_directories_says_so(store):
    """data/* over hive partitions said "No Parquet files found under data/*", leaving the
    user to guess that the pattern matched the partition folders and no file."""
    for zone in (1, 2):
        store.write_parquet(f"data/zone={zone}/part-0.parquet", pd.DataFrame({"x": [1.0]}))
    with pytest.raises(ValueError, match=r"data/\* matches only directories \(.*zone=1, "
                                         r".*zone=2\): a pattern selects files.*"
                                         r"data/\*/\*\.parquet") as info:
        read_parquet(store.url("data", "*"), storage_options=store.storage_options)
    assert store.secret not in str(info.value)
    X = read_parquet(store.url("data", "*", "*.parquet"), storage_options=store.storage_options)
    assert X.shape == (2, 1)


def test_a_glob_that_matches_folders_beside_files_does_not_drop_their_files(store):
    """x/*.parquet over Spark's a.parquet/ and b.parquet/ folders and a file c.parquet read
    c.parquet alone: 1 row of 7, in silence."""
    for name in ("a", "b"):
        store.write_parquet(f"x/{name}.parquet/part-0.snappy.parquet",
                            pd.DataFrame({"v": [1.0, 2.0, 3.0]}))
        store.put_bytes(f"x/{name}.parquet/_SUCCESS", b"")
    store.write_parquet("x/c.parquet", pd.DataFrame({"v": [9.0]}))
    options = store.storage_options
    with pytest.raises(ValueError, match=r"matches directories whose files it does not match "
                                         r"\(.*a\.parquet, .*b\.parquet\)") as info:
        read_parquet(store.url("x", "*.parquet"), storage_options=options)
    assert store.secret not in str(info.value)
    assert read_parquet(store.url("x", "**", "*.parquet"), storage_options=options).shape == (7, 1)
    assert read_parquet(store.url("x"), storage_options=options).shape == (7, 1)


def test_an_existing_path_with_glob_characters_is_taken_literally(store):
    """A directory or file named like a glob (run[1]) is opened as it is; a pattern that
    matches nothing by that name is still a glob."""
    url, df = write_dir(store, [2, 3], prefix="run[1]")
    src = open_parquet(url, ["x"], storage_options=store.storage_options)
    np.testing.assert_array_equal(src.features.compute()[:, 0], df["x"])
    one = open_parquet(f"{url}/part-0.parquet", ["x"], storage_options=store.storage_options)
    np.testing.assert_array_equal(one.features.compute()[:, 0], df["x"][:2])
    assert len(open_parquet(store.url("run[[]1]/*.parquet"), ["x"],
                            storage_options=store.storage_options).parts) == 2


def test_hive_partitioned(store):
    for region, year, n in [("eu", 2020, 3), ("eu", 2021, 0), ("us", 2020, 2)]:
        df = pd.DataFrame({"a": np.arange(n, dtype=float), "b": np.full(n, year * 1.0)})
        store.write_parquet(f"hive/region={region}/year={year}/part-0.parquet", df)
    url = store.url("hive")
    so = store.storage_options
    src = open_parquet(url, storage_options=so, key_columns=["region"])
    # Partition columns are not features by default.
    assert src.feature_names == ["a", "b"]
    assert src.features.chunks == ((5,), (2,))
    keys = src.keys.compute()
    assert list(keys["region"]) == ["eu"] * 3 + ["us"] * 2
    # A numeric partition column is a feature when named.
    X = read_parquet(url, ["a", "year"], storage_options=so).compute()
    np.testing.assert_array_equal(X[:, 1], [2020] * 3 + [2020] * 2)
    with pytest.raises(ValueError, match=r"'region' \(string\)"):
        open_parquet(url, ["a", "region"], storage_options=so)


def test_a_null_hive_partition_keeps_an_integer_key_exact(local_store):
    """Spark writes a null partition value as k=__HIVE_DEFAULT_PARTITION__: that integer key
    came as float64 (1.0, NaN), and the labels carried it as double."""
    import pyarrow.parquet as pq

    for k in ("1", "__HIVE_DEFAULT_PARTITION__", "3"):
        local_store.write_parquet(f"hn/k={k}/part-0.parquet", pd.DataFrame({"a": [1.0]}))
    src = open_parquet(local_store.url("hn"), key_columns="k", chunk_bytes=None)
    keys = src.keys.compute()["k"]
    assert keys.dtype == pd.Int32Dtype() and keys.tolist()[:2] == [1, 3] and keys.isna().tolist()[2]
    write_labels(src, np.zeros(3, dtype=int), np.zeros(3), local_store.url("hn-labels"))
    written = pq.read_table(labels_part(local_store, "hn-labels", 2)).column("k")
    assert written.type == pa.int32() and written.to_pylist() == [None]
    # Without nulls, the key stays a NumPy column.
    for k in ("1", "3"):
        local_store.write_parquet(f"hn2/k={k}/part-0.parquet", pd.DataFrame({"a": [1.0]}))
    src = open_parquet(local_store.url("hn2"), key_columns="k")
    assert src.keys.compute()["k"].dtype == np.int32


def test_hive_partition_values_arrive_as_written(local_store):
    """pyarrow's discovery typed every partition value that parses as an integer as int32:
    zip=02134 came as 2134 and code=007 as 7, in the keys and in the labels written with
    them. Such a key is text now, on every path that reads it."""
    import pyarrow.parquet as pq

    for i, (zip_code, code) in enumerate([("02134", "007"), ("10001", "12")]):
        local_store.write_parquet(f"hz/zip={zip_code}/code={code}/part-0.parquet",
                                  pd.DataFrame({"a": [float(i), np.nan]}))
    url = local_store.url("hz")
    src = open_parquet(url, key_columns=["zip", "code"], missing="drop")
    assert src.feature_names == ["a"]
    np.testing.assert_array_equal(src.features.compute(), [[0.0], [1.0]])
    keys = src.keys.compute()
    assert keys["zip"].tolist() == ["02134", "10001"] and keys["code"].tolist() == ["007", "12"]
    write_labels(src, np.zeros(2, dtype=int), np.zeros(2), local_store.url("hz-labels"))
    labels = read_labels(local_store.url("hz-labels")).compute()
    assert labels["zip"].tolist() == ["02134", "10001"] and labels["code"].tolist() == ["007", "12"]
    written = pq.read_table(labels_part(local_store, "hz-labels", 0))
    assert written.column("zip").to_pylist() == ["02134", "10001"]
    # Text is not a feature, rather than 2134.
    with pytest.raises(ValueError, match=r"'zip' \(string\)"):
        open_parquet(url, ["a", "zip"], missing="drop")


@pytest.mark.parametrize("values, want", [
    (["2020", "-5", "0"], [2020, -5, 0]),  # plain integers stay int32, as before
    (["007", "12"], ["007", "12"]),
    (["-0", "1"], ["-0", "1"]),
    (["-007", "1"], ["-007", "1"]),
    (["+5", "1_000"], ["+5", "1_000"]),
    (["%2B5", "2147483648"], ["+5", "2147483648"]),  # URI-decoded; beyond int32
    (["__HIVE_DEFAULT_PARTITION__", "3"], [None, 3]),
    (["__HIVE_DEFAULT_PARTITION__", "03"], [None, "03"]),
    (["__HIVE_DEFAULT_PARTITION__"], [None]),  # pyarrow's discovery refused it
])
def test_hive_partition_is_an_integer_only_when_every_value_reads_back(local_store, values,
                                                                      want):
    for i, v in enumerate(values):
        local_store.write_parquet(f"hk/k={v}/part-{i}.parquet", pd.DataFrame({"a": [1.0]}))
    src = open_parquet(local_store.url("hk"), key_columns="k")
    got = src.keys.compute()["k"]
    assert pd.api.types.is_integer_dtype(got.dtype) == any(isinstance(w, int) for w in want)
    # One row per part-<i>.parquet, whose value is values[i]; the parts come in path order.
    order = [int(p.rsplit("-", 1)[-1].split(".")[0]) for p in src.parts]
    assert [None if pd.isna(g) else g for g in got.tolist()] == [want[i] for i in order]


def test_pandas_index_columns_are_not_features_by_default(local_store):
    """pandas writes the index of a filtered frame as __index_level_0__, and a named index
    under its name: row labels, not features, unless named (they were used, before)."""
    df = pd.DataFrame({"age": [30.0, 20.0, 50.0, 70.0], "income": [1.0, 2.0, 3.0, 4.0]})
    df[df.age > 25].to_parquet(local_store.path("filtered.parquet"))
    src = open_parquet(local_store.url("filtered.parquet"))
    assert src.feature_names == ["age", "income"]
    np.testing.assert_array_equal(src.features.compute(), [[30, 1], [50, 3], [70, 4]])
    named = df.assign(rid=[7, 3, 9, 1]).set_index("rid")
    named.to_parquet(local_store.path("named.parquet"))
    assert open_parquet(local_store.url("named.parquet")).feature_names == ["age", "income"]
    # Named, an index column is a feature or a key like any other.
    src = open_parquet(local_store.url("named.parquet"), ["age", "rid"], key_columns="rid")
    np.testing.assert_array_equal(src.features.compute()[:, 1], [7, 3, 9, 1])
    assert list(src.keys.compute()["rid"]) == [7, 3, 9, 1]
    named[["age"]].astype(str).to_parquet(local_store.path("text.parquet"))
    with pytest.raises(ValueError, match=r"No numeric columns.*index column\(s\) \['rid'\]"):
        open_parquet(local_store.url("text.parquet"))


def test_a_hive_partition_also_stored_in_the_files_is_named(local_store):
    """Files that still hold their partition column (pandas writes int64 and large_string,
    the directories read as int32 and string) failed with a bare ArrowTypeError "Unable to
    merge: Field year has incompatible types"."""
    for year in (2020, 2021):
        local_store.write_parquet(f"hd/year={year}/part-0.parquet",
                                  pd.DataFrame({"a": [1.0], "year": [year]}))
    with pytest.raises(ValueError, match=r"Column 'year' of part .*year=2020/part-0\.parquet "
                                         r"\(int64\) is also a hive partition .*year=2020.* "
                                         r"glob such as .*hd/\*/\*\.parquet"):
        open_parquet(local_store.url("hd"))
    src = open_parquet(local_store.url("hd", "*", "*.parquet"), ["a", "year"])
    np.testing.assert_array_equal(src.features.compute(), [[1, 2020], [1, 2021]])


@pytest.mark.parametrize("dtype", ["float32", np.float64])
def test_columns_by_name_and_dtype(store, dtype):
    url, df = write_dir(store, [3, 4])
    src = open_parquet(url, ["z", "x"], dtype=dtype, storage_options=store.storage_options)
    assert src.feature_names == ["z", "x"]
    assert src.features.dtype == np.dtype(dtype)
    got = src.features.compute()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, df[["z", "x"]].to_numpy().astype(dtype))


@pytest.mark.parametrize("missing", ["error", "drop"])
def test_values_beyond_float32_are_refused_not_taken_for_missing(local_store, missing):
    """A finite 1e39 read as float32 became an infinity: "column 'a' has 1 NaN, inf or
    null value(s)", or its row silently dropped with missing='drop' (keys too); a float32
    column, an int64 column and a column in range are read as before."""
    table = pa.table({"id": np.arange(6), "a": [1.0, 2.0, -5e39, 3.0, 4e39, np.nan],
                      "b": np.arange(6, dtype=np.float32), "c": np.arange(6) * 10**15})
    url = local_store.write_parquet("big/part-0.parquet", table)
    message = (r"beyond float32's range in part .*part-0\.parquet: column 'a' has 2 \(first: "
               r"-5e\+39\), which float32 would make infinite")
    with pytest.raises(ValueError, match=message):  # "drop" counts the rows at the open
        open_parquet(url, ["a", "b"], dtype="float32", missing=missing).features.compute()
    src = open_parquet(url, ["b", "c"], dtype="float32", missing=missing)
    np.testing.assert_array_equal(src.features.compute(),
                                  np.column_stack([np.arange(6), np.arange(6) * 10.0**15])
                                  .astype(np.float32))
    got = open_parquet(url, ["a"], missing="drop").features.compute()  # float64: as is
    np.testing.assert_array_equal(got.ravel(), [1.0, 2.0, -5e39, 3.0, 4e39])


def test_keys_carried_and_aligned(store):
    url, df = write_dir(store, [3, 0, 4])
    src = open_parquet(url, key_columns=["id", "name"], storage_options=store.storage_options)
    # Key columns are not features by default.
    assert src.feature_names == ["x", "y", "z"]
    assert src.keys.npartitions == src.features.numblocks[0]
    lengths = [len(p) for p in dask.compute(*src.keys.to_delayed())]
    assert tuple(lengths) == src.features.chunks[0]
    keys = src.keys.compute()
    assert list(keys.index) == list(range(7))
    pd.testing.assert_series_equal(keys["id"].reset_index(drop=True), df["id"])
    assert list(keys["name"]) == list(df["name"])


def test_graph_pickles_and_reads_only_its_part(store):
    url, df = write_dir(store, [2, 3])
    src = open_parquet(url, ["x"], storage_options=store.storage_options, chunk_bytes=None)
    # What a distributed worker receives: the graph, pickled, file system included.
    X = pickle.loads(pickle.dumps(src.features))
    np.testing.assert_array_equal(X.blocks[1].compute().ravel(), df["x"].to_numpy()[2:])
    # Each task carries only its own part.
    (block,) = dask.optimize(X.blocks[1])
    graph = pickle.dumps(dict(block.__dask_graph__()))
    assert b"part-1.parquet" in graph and b"part-0.parquet" not in graph


def test_fingerprint(local_store):
    url, _ = write_dir(local_store, [2, 3])
    src = open_parquet(url)
    fp = src.fingerprint()
    assert fp["url"] == url
    assert [p["path"] for p in fp["parts"]] == src.parts
    assert all(p["size"] > 0 and p["mtime"] is not None for p in fp["parts"])
    local_store.write_parquet("data/part-1.parquet", frame(9))
    assert open_parquet(url).fingerprint() != fp


def test_fingerprint_s3(s3_bucket):
    url, _ = write_dir(s3_bucket, [2])
    fp = open_parquet(url, storage_options=s3_bucket.storage_options).fingerprint()
    (part,) = fp["parts"]
    assert part["path"].startswith("s3://") and part["size"] > 0
    assert part["mtime"] and part["etag"]


def test_key_columns_of_other_types_in_other_parts_keep_their_values(local_store):
    """An int64 id in one part and a double one in the next (pandas writes an id column
    with a missing value as double) read as float64, two ids beyond 2**53 as one; a
    9999-12-31 date in ms beside a part in ns wrapped to 1816. Keys are never changed:
    refused, naming the column and part; ids that a double holds exactly are read."""
    big = [1234567890123456789, 1234567890123456791]
    local_store.write_parquet("ids/part-0.parquet", pd.DataFrame({"id": big, "x": [1.0, 2.0]}))
    local_store.write_parquet("ids/part-1.parquet",
                              pd.DataFrame({"id": [7.0, np.nan], "x": [3.0, 4.0]}))
    src = open_parquet(local_store.url("ids"), ["x"], key_columns="id")
    with pytest.raises(ValueError, match=r"Key column 'id' is int64 in part .*part-0.parquet, "
                                         r"and reading it as double, the type the parts share, "
                                         r"would change its values"):
        src.keys.compute()
    np.testing.assert_array_equal(src.features.compute()[:, 0], [1, 2, 3, 4])
    local_store.write_parquet("ids/part-0.parquet", pd.DataFrame({"id": [5, 6], "x": [1.0, 2.0]}))
    keys = open_parquet(local_store.url("ids"), ["x"], key_columns="id").keys.compute()
    assert keys["id"].tolist()[:3] == [5, 6, 7]
    import pyarrow as pa

    local_store.write_parquet("t/a.parquet", pa.table({
        "valid_to": pa.array([253402214400000], pa.timestamp("ms")), "x": [1.0]}))
    local_store.write_parquet("t/b.parquet", pa.table({
        "valid_to": pa.array([1704067200000000000], pa.timestamp("ns")), "x": [2.0]}))
    src = open_parquet(local_store.url("t"), ["x"], key_columns="valid_to")
    with pytest.raises(ValueError, match=r"Key column 'valid_to' is timestamp\[ms\] .*would "
                                         r"change its values"):
        src.keys.compute()


def test_s3_folder_markers_are_no_files(s3_bucket):
    """An empty key ending in "/" (the S3 console's "Create folder") was listed as a file
    of the dataset: opening failed with "no such file, directory or bucket", and an
    output folder made that way was refused as holding foreign files."""
    import dask_kmeans as dk

    so = s3_bucket.storage_options

    def folder(name):  # an empty object whose key ends in "/"
        s3_bucket.fs.pipe_file(f"{s3_bucket.path()}/{name}/", b"")
        s3_bucket.fs.invalidate_cache()

    folder("data")
    url, df = write_dir(s3_bucket, [3, 2])
    folder("hive/k=1")
    s3_bucket.write_parquet("hive/k=1/part-0.parquet", df.iloc[:3])
    src = open_parquet(url, ["x", "y"], key_columns="id", storage_options=so)
    assert src.n_rows == 5
    assert open_parquet(s3_bucket.url("hive"), ["x"], storage_options=so).n_rows == 3
    folder("labels")
    folder("model")
    assert write_labels(src, np.zeros(5, dtype=np.int32), np.zeros(5), s3_bucket.url("labels"),
                        storage_options=so) == s3_bucket.url("labels")
    km = dk.KMeans(2, random_state=0).fit(src)
    assert km.save(s3_bucket.url("model"), storage_options=so) == s3_bucket.url("model")


def test_s3_reopening_a_dataset_sees_what_changed_in_its_folders(s3_bucket):
    """A second open in the same process trusted the listing of each partition folder
    that the first one cached: a file added to a partition was missed (then 'not found'
    when read), one rewritten failed with FileExpired."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    so = s3_bucket.storage_options
    # Another writer: its own client, which leaves this process' cached listings alone.
    other = s3fs.S3FileSystem(**so, skip_instance_cache=True)

    def write(name, n, seed):
        with other.open(f"{s3_bucket.path()}/ds/{name}", "wb") as f:
            pq.write_table(pa.Table.from_pandas(frame(n, seed=seed), preserve_index=False), f)

    write("day=1/part-0.parquet", 2, 0)
    write("day=2/part-0.parquet", 1, 1)
    url = s3_bucket.url("ds")
    assert open_parquet(url, ["x"], storage_options=so).features.compute().shape == (3, 1)
    write("day=2/part-1.parquet", 1, 2)
    assert open_parquet(url, ["x"], storage_options=so).features.compute().shape == (4, 1)
    write("day=1/part-0.parquet", 3, 3)
    assert open_parquet(url, ["x"], storage_options=so).features.compute().shape == (5, 1)


# --------------------------------------------------------------------------- bad input


def test_missing_column_names_it_and_lists_available(store):
    url, _ = write_dir(store, [3])
    with pytest.raises(ValueError, match=r"\['nope'\].*Available columns: id \(int64\), "
                                         r"name \((large_)?string\), x \(double\)") as e:
        open_parquet(url, ["x", "nope"], storage_options=store.storage_options)
    assert_clean(str(e.value), store)
    with pytest.raises(ValueError, match=r"\['ghost'\] requested by 'key_columns'"):
        open_parquet(url, key_columns="ghost", storage_options=store.storage_options)


def test_missing_column_suggests_the_closest_and_lists_a_bounded_number(local_store):
    """With 1,000 columns the message listed every one of them (about 15,000 characters);
    it names the closest existing column now, even one beyond those listed."""
    wide = pd.DataFrame({**{f"feature_{i:03d}": [0.0] for i in range(998)},
                         "age": [30.0], "income": [1.0]})
    url = local_store.write_parquet("wide.parquet", wide)
    with pytest.raises(ValueError) as e:
        open_parquet(url, ["agee"])
    message = str(e.value)
    assert message.startswith(f"Column(s) ['agee'] requested by 'columns' not found in {url}; "
                              "did you mean 'age'? Available columns: feature_000 (double), ")
    assert message.endswith("feature_019 (double), ... and 980 more.")
    assert len(message) < 800
    with pytest.raises(ValueError, match=r"\['incme', 'zzz', 'agee'\] requested by "
                                         r"'key_columns' not found in .*wide\.parquet; did you "
                                         r"mean 'income' for 'incme', 'age' for 'agee'\? "
                                         r"Available columns: feature_000"):
        open_parquet(url, key_columns=["incme", "zzz", "agee"])
    with pytest.raises(ValueError, match=r"\['zzz'\] requested by 'columns' not found in "
                                         r".*wide\.parquet\. Available columns: feature_000"):
        open_parquet(url, ["zzz"])
    # The message for a dataset without numeric columns lists a bounded number too.
    url = local_store.write_parquet("text.parquet", wide.astype(str))
    with pytest.raises(ValueError, match=r"No numeric columns .*feature_019 \((large_)?string\), "
                                         r"\.\.\. and 980 more\. Name the feature"):
        open_parquet(url)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_parts_whose_types_differ_are_read_in_the_promoted_type(local_store, order):
    """pandas writes an integer column as double once it meets a NaN, an empty frame's
    object column as null: the parts are read in one type that holds them all, whatever
    the files' order (the dataset's own schema is its first file's)."""
    big = 2**40
    tables = [pa.table({"x": pa.array([1, big], pa.int64()), "y": pa.array([1, 2], pa.int32()),
                        "e": pa.array([None, None], pa.null())}),
              pa.table({"x": pa.array([1.5, 2.5]), "y": pa.array([3, big], pa.int64()),
                        "e": pa.array([0.5, 0.25])})]
    for name, i in zip("ab", order, strict=True):
        local_store.write_parquet(f"mixed/{name}.parquet", tables[i])
    src = open_parquet(local_store.url("mixed"), ["x", "y"])
    want = np.vstack([np.column_stack([t.column("x").to_numpy().astype(float),
                                       t.column("y").to_numpy().astype(float)])
                      for t in (tables[order[0]], tables[order[1]])])
    np.testing.assert_array_equal(src.features.compute(), want)
    # The all-null column of one part takes the other part's type: numeric, so a feature.
    assert open_parquet(local_store.url("mixed")).feature_names == ["x", "y", "e"]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_promotion_between_parts_loses_no_values(local_store, order):
    """Arrow promotes uint64 with int64 to int64, and a decimal with float32 to float32:
    2**63 + 5 was read as -9.2e18 (a key too), 12345678.91 as 12345679, and a decimal with
    float16 failed with a bare ArrowNotImplementedError."""
    import decimal

    big = 2**63 + 5
    tables = [pa.table({"u": pa.array([big], pa.uint64()), "id": pa.array([big], pa.uint64()),
                        "d": pa.array([decimal.Decimal("12345678.91")], pa.decimal128(10, 2)),
                        "h": pa.array([decimal.Decimal("1234.5")], pa.decimal128(5, 1))}),
              pa.table({"u": pa.array([-1], pa.int64()), "id": pa.array([-1], pa.int64()),
                        "d": pa.array([0.5], pa.float32()),
                        "h": pa.array(np.array([0.5], np.float16))})]
    for name, i in zip("ab", order, strict=True):
        local_store.write_parquet(f"mixed/{name}.parquet", tables[i])
    src = open_parquet(local_store.url("mixed"), ["u", "d", "h"], key_columns="id")
    rows = {0: [float(big), 12345678.91, 1234.5], 1: [-1.0, 0.5, 0.5]}
    np.testing.assert_array_equal(src.features.compute(), [rows[i] for i in order])
    ids = {0: big, 1: -1}
    assert [int(v) for v in src.keys.compute()["id"]] == [ids[i] for i in order]


def _decimals(n, digits, scale, *, seed=0, nulls=False):
    """``n`` random decimals of up to ``digits`` digits (signs mixed, some 0 and the extremes)
    at ``scale``, every tenth one None with ``nulls``."""
    import decimal

    rng = np.random.default_rng(seed)
    top = 10**digits - 1
    unscaled = [int(v) for v in rng.integers(-(2**62), 2**62, n)]
    # Beyond int64: products of draws, cut to the digits.
    unscaled = [(u * int(rng.integers(1, 2**62)) ** (digits // 18)) % (2 * top + 1) - top
                for u in unscaled]
    unscaled[:3] = [0, top, -top]
    values = [decimal.Decimal(f"{u}e{-scale}") for u in unscaled]  # exact: not scaleb's 28 digits
    return [None if nulls and i % 10 == 5 else v for i, v in enumerate(values)]


#: Up to 15 digits and scales up to 22 (exact doubles), and beyond either, of every width.
DECIMAL_TYPES = [pa.decimal128(15, 0), pa.decimal128(15, 4), pa.decimal128(15, 15),
                 pa.decimal128(12, 22), pa.decimal128(5, -3), pa.decimal256(15, 6),
                 pa.decimal128(20, 4), pa.decimal128(18, 18), pa.decimal128(38, 10),
                 pa.decimal128(38, 30), pa.decimal128(16, 23), pa.decimal256(76, 30),
                 pa.decimal256(40, 0),
                 *([pa.decimal32(9, 2), pa.decimal64(15, 3), pa.decimal64(18, 5)]
                   if hasattr(pa, "decimal32") else [])]


@pytest.mark.parametrize("dtype", DECIMAL_TYPES, ids=str)
def test_decimals_become_the_nearest_double(dtype):
    """Arrow's cast of decimals to float64 is not correctly rounded: 6162 of 20,000
    decimal128(20, 4) values came one ulp off float(Decimal) (and pandas). Now the nearest
    double, with nulls kept, in slices of arrays too (an offset into the buffer)."""
    from dask_kmeans.io import _decimal_to_float64

    values = _decimals(5000, dtype.precision, dtype.scale, nulls=True)
    array = pa.array(values, dtype)
    for part in (array, array.slice(7, 3001), array.slice(4990)):
        got = _decimal_to_float64(part)
        assert got.type == pa.float64() and got.null_count == part.null_count
        want = [None if v is None else float(v) for v in part.to_pylist()]
        assert got.to_pylist() == want


def test_a_decimal_key_read_as_another_parts_double_stays_exact_or_is_refused(local_store):
    """A decimal key in one part and a double in another were read as doubles in silence,
    2**60 + 1 as 2**60 (Arrow's safe cast does not check decimals); keys are exact."""
    import decimal

    import pyarrow.parquet as pq

    def write(name, ids, id_type):
        pq.write_table(pa.table({"id": pa.array(ids, id_type), "x": [1.0] * len(ids)}),
                       local_store.path("k", name))

    os.makedirs(local_store.path("k"))
    write("b.parquet", [3.0, 4.0], pa.float64())
    write("a.parquet", [decimal.Decimal(2), decimal.Decimal("2.5"), None], pa.decimal128(30, 1))
    src = open_parquet(local_store.url("k"), columns=["x"], key_columns=["id"])
    assert src.keys.compute()["id"].tolist()[:2] == [2.0, 2.5]  # exact as doubles: kept
    write("a.parquet", [decimal.Decimal(2**60 + 1)], pa.decimal128(30, 0))
    with pytest.raises(ValueError, match=r"Key column 'id' is decimal128\(30, 0\) in part "
                                         r".*a\.parquet.*would change its values "
                                         r"\(1152921504606846977 would become"):
        open_parquet(local_store.url("k"), columns=["x"], key_columns=["id"]).keys.compute()


def test_decimal_features_are_the_nearest_double(local_store):
    """Decimal features were read through Arrow's cast to float64, one ulp off the nearest
    double for a third of them (the docs promise the nearest); in a part beside a part of
    doubles (read as float64 then) too."""
    values = _decimals(20000, 15, 4, seed=1)
    local_store.write_parquet("dec/a.parquet", pa.table({"d": pa.array(values,
                                                                       pa.decimal128(20, 4))}))
    want = np.array([float(v) for v in values])
    np.testing.assert_array_equal(read_parquet(local_store.url("dec")).compute().ravel(), want)
    local_store.write_parquet("dec/b.parquet", pa.table({"d": [0.5]}))
    np.testing.assert_array_equal(read_parquet(local_store.url("dec")).compute().ravel(),
                                  [*want, 0.5])
    with_nulls = _decimals(1000, 38, 10, seed=2, nulls=True)
    local_store.write_parquet("decn/a.parquet", pa.table({"d": pa.array(with_nulls,
                                                                        pa.decimal128(38, 10))}))
    got = read_parquet(local_store.url("decn"), missing="drop").compute().ravel()
    np.testing.assert_array_equal(got, [float(v) for v in with_nulls if v is not None])


def test_parts_whose_types_cannot_be_promoted_name_the_column_and_parts(local_store):
    local_store.write_parquet("clash/a.parquet", pa.table({"x": [1.0], "note": ["n"]}))
    local_store.write_parquet("clash/b.parquet", pa.table({"x": ["one"], "note": [2.0]}))
    with pytest.raises(ValueError, match=r"Column 'x' is double in part .*a\.parquet but "
                                         r"(large_)?string in part .*b\.parquet"):
        open_parquet(local_store.url("clash"), ["x"])
    # Chosen by type, a column numeric in one part is refused too...
    local_store.write_parquet("clash2/a.parquet", pa.table({"x": [1.0], "note": ["n"]}))
    local_store.write_parquet("clash2/b.parquet", pa.table({"x": [2.0], "note": [2.0]}))
    with pytest.raises(ValueError, match=r"Column 'note' is (large_)?string .* but double.*"
                                         r"name the feature columns"):
        open_parquet(local_store.url("clash2"))
    # ... and one that is not used is left alone.
    local_store.write_parquet("ok/a.parquet", pa.table({"x": [1.0], "note": ["n"]}))
    local_store.write_parquet("ok/b.parquet", pa.table({"x": [2.0], "note": [b"raw"]}))
    np.testing.assert_array_equal(open_parquet(local_store.url("ok"), ["x"]).features.compute(),
                                  [[1.0], [2.0]])


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_column_missing_from_some_parts_is_refused_in_any_order(local_store, order):
    tables = [pa.table({"x": [1.0]}), pa.table({"x": [2.0], "extra": [3.0]})]
    for name, i in zip("ab", order, strict=True):
        local_store.write_parquet(f"cols/{name}.parquet", tables[i])
    with pytest.raises(ValueError, match=r"\['extra'\] missing from part .*present in other"):
        open_parquet(local_store.url("cols"))


def test_a_repeated_column_name_is_named_with_its_part(local_store):
    """pyarrow writes tables with two columns of one name; opening one said only "Can't
    unify schema with duplicate field names" (first part) or KeyError 'Column y does not
    exist in schema' (a later part)."""
    twice = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0]), pa.array([3.0])],
                                 names=["x", "y", "y"])
    local_store.write_parquet("dup1/a.parquet", twice)
    for kwargs in ({}, {"columns": ["y"]}, {"columns": ["x"], "key_columns": "y"}):
        with pytest.raises(ValueError, match=r"\['y'\] appear more than once in part "
                                             r".*dup1/a"):
            open_parquet(local_store.url("dup1"), **kwargs)
    local_store.write_parquet("dup2/a.parquet", pa.table({"x": [0.0], "y": [0.5]}))
    local_store.write_parquet("dup2/b.parquet", twice)
    for kwargs in ({}, {"columns": ["y"]}, {"columns": ["x"], "key_columns": "y"}):
        with pytest.raises(ValueError, match=r"\['y'\] appear more than once in part "
                                             r".*dup2/b\.parquet"):
            open_parquet(local_store.url("dup2"), **kwargs)
    # In a later part and not used, it is left alone.
    np.testing.assert_array_equal(
        open_parquet(local_store.url("dup2"), ["x"]).features.compute(), [[0.0], [1.0]])


@pytest.mark.parametrize("hive", [False, True])
def test_an_unused_repeated_column_name_is_read_past_in_any_part(local_store, hive):
    """A part with a repeated column name that is not read was refused when it was the
    first part (Arrow could not make the dataset's schema from it, and every repeated name
    was refused then) and read past when it came later: now read past wherever it is, and
    refused wherever it is when read."""
    twice = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0]),
                                  pa.array([5.0, 6.0])], names=["a", "a", "b"])
    once = pa.table({"a": [7.0], "b": [8.0]})
    for order in ((twice, once), (once, twice)):
        root = f"dup-{hive}-{order[0] is twice}"
        names = [f"k={i}/part-{i}.parquet" if hive else f"part-{i}.parquet" for i in range(2)]
        for name, table in zip(names, order, strict=True):
            local_store.write_parquet(f"{root}/{name}", table)
        url = local_store.url(root)
        src = open_parquet(url, ["b"], key_columns="k" if hive else None)
        expected = [8.0, 5.0, 6.0] if order[0] is once else [5.0, 6.0, 8.0]
        assert src.features.compute().ravel().tolist() == expected
        if hive:
            assert src.keys.compute()["k"].tolist() == ([0, 1, 1] if order[0] is once
                                                        else [0, 0, 1])
        where = names[order.index(twice)].replace(".", r"\.")
        for kwargs in ({}, {"columns": ["a"]}, {"columns": ["b"], "key_columns": "a"}):
            with pytest.raises(ValueError, match=rf"\['a'\] appear more than once in part "
                                                 rf".*{root}/{where}"):
                open_parquet(url, **kwargs)


def test_nullable_integer_keys_stay_exact(local_store):
    """An integer key column with nulls must not go through float (2**53 + 1 would change
    and the labels could no longer be joined back to the input)."""
    ids = pa.array([2**53 + 1, 2**53 + 3, None], pa.int64())
    local_store.write_parquet("nk/a.parquet", pa.table({"id": ids, "plain": [1, 2, 3],
                                                        "x": [0.5, 1.5, 2.5]}))
    src = open_parquet(local_store.url("nk"), ["x"], key_columns=["id", "plain"])
    keys = src.keys.compute()
    assert keys["id"].dtype == pd.Int64Dtype()
    assert keys["id"].tolist()[:2] == [2**53 + 1, 2**53 + 3] and keys["id"].isna().tolist()[2]
    assert keys["plain"].dtype == np.int64  # no nulls counted: a plain NumPy column
    out = local_store.url("nk-labels")
    write_labels(src, np.zeros(3, dtype=int), np.zeros(3), out)
    import pyarrow.parquet as pq
    got = pq.read_table(labels_part(local_store, "nk-labels", 0))
    assert got.schema.field("id").type == pa.int64()
    assert got.column("id").to_pylist() == ids.to_pylist()


def test_keys_of_any_type_are_written_back_in_their_type(local_store):
    """Decimal ids, dates, times, bytes, lists: pandas holds them as Python objects, which
    dask turned into text, so the labels carried '123456789012345678' for a decimal id and
    a date as a string (no longer joinable to the input), and bytes that are not UTF-8
    failed with a UnicodeDecodeError."""
    import datetime
    import decimal

    import pyarrow.parquet as pq

    keys = pa.table({
        "dec": pa.array([decimal.Decimal("123456789012345678"), None], pa.decimal128(18, 0)),
        "day": pa.array([datetime.date(2024, 2, 29), None]),
        "at": pa.array([datetime.time(1, 2), datetime.time(3, 4)]),
        "raw": pa.array([b"\x00\x01", b"\xff"]),
        "fixed": pa.array([b"ab", b"\xfe\xff"], pa.binary(2)),
        "tags": pa.array([[1, 2], None]),
    })
    local_store.write_parquet("kt/a.parquet", keys.append_column("x", pa.array([0.5, 1.5])))
    src = open_parquet(local_store.url("kt"), ["x"], key_columns=keys.column_names)
    got = src.keys.compute()
    for name in keys.column_names:
        assert got[name].dtype == pd.ArrowDtype(keys.schema.field(name).type), name
    write_labels(src, np.array([0, 1]), np.array([0.1, 0.2]), local_store.url("kt-labels"))
    written = pq.read_table(labels_part(local_store, "kt-labels", 0))
    assert written.select(keys.column_names).equals(keys)
    back = read_labels(local_store.url("kt-labels")).compute()
    assert pa.Table.from_pandas(back[keys.column_names], preserve_index=False).equals(keys)


def test_non_numeric_column(local_store):
    url, _ = write_dir(local_store, [3])
    with pytest.raises(ValueError, match=r"'name' \((large_)?string\)"):
        open_parquet(url, ["x", "name"])


def test_no_numeric_columns(local_store):
    url = local_store.write_parquet("s.parquet", pd.DataFrame({"s": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"No numeric columns.*s \((large_)?string\)"):
        open_parquet(url)


def test_bad_parameters(local_store):
    url, _ = write_dir(local_store, [3])
    with pytest.raises(ValueError, match="'missing' parameter.*'skip'"):
        open_parquet(url, missing="skip")
    with pytest.raises(ValueError, match="'dtype' parameter.*int64"):
        open_parquet(url, dtype="int64")
    with pytest.raises(ValueError, match="'dtype' parameter.*None"):
        open_parquet(url, dtype=None)
    with pytest.raises(ValueError, match="'columns' parameter names column.*'x'"):
        open_parquet(url, ["x", "x"])


def nan_parts(store, *, with_null=False):
    """Two parts; the second has NaN and inf (NaN as a float, not a Parquet null) and,
    ``with_null``, a null."""
    good = pa.table({"k": [0, 1, 2], "a": [1.0, 2.0, 3.0], "b": [1.0, 1.0, 1.0]})
    b = pa.array(np.array([1.0, np.nan, np.nan, 2.0]),
                 mask=np.array([False, with_null, False, False]))
    bad = pa.table({"k": [3, 4, 5, 6], "a": np.array([np.nan, 5.0, np.inf, 7.0]), "b": b})
    store.write_parquet("nan/part-0.parquet", good)
    store.write_parquet("nan/part-1.parquet", bad)
    return store.url("nan")


def test_nan_error_is_lazy_and_names_column_count_and_part(store):
    url = nan_parts(store)
    # NaN is not null: the statistics cannot tell, so opening reads no data and succeeds.
    src = open_parquet(url, ["a", "b"], storage_options=store.storage_options, chunk_bytes=None)
    np.testing.assert_array_equal(src.features.blocks[0].compute()[:, 0], [1, 2, 3])
    # In a chunk of several files too, the message names the file.
    src = open_parquet(url, ["a", "b"], storage_options=store.storage_options)
    assert src.features.numblocks[0] == 1
    with pytest.raises(ValueError) as e:
        src.features.compute()
    msg = str(e.value)
    assert "column 'a' has 2" in msg and "column 'b' has 2" in msg
    assert "part-1.parquet" in msg and "missing='drop'" in msg
    assert_clean(msg, store)


def test_nulls_fail_early_from_statistics(local_store):
    df = pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64"), "b": [1.0, 2.0, 3.0]})
    url = local_store.write_parquet("nulls.parquet", df)
    with pytest.raises(ValueError, match=r"nulls.parquet: column 'a' has 1 null"):
        open_parquet(url)


def test_nulls_without_statistics_fail_lazily(local_store):
    df = pd.DataFrame({"a": pd.array([1.0, None, 3.0], dtype="Float64")})
    url = local_store.write_parquet("nostats.parquet", df, write_statistics=False)
    X = read_parquet(url)
    with pytest.raises(ValueError, match=r"column 'a' has 1 NaN, inf or null"):
        X.compute()


def test_missing_drop(store):
    url = nan_parts(store, with_null=True)
    src = open_parquet(url, ["a", "b"], missing="drop", key_columns="k",
                       storage_options=store.storage_options)
    # Chunk sizes are counted at open, so they are known.
    assert src.features.chunks == ((4,), (2,))  # 3 and 1 rows left, one chunk
    np.testing.assert_array_equal(src.features.compute(), [[1, 1], [2, 1], [3, 1], [7, 2]])
    keys = src.keys.compute()
    assert list(keys["k"]) == [0, 1, 2, 6]
    # The index is the row number in the dataset before dropping.
    assert list(keys.index) == [0, 1, 2, 6]
    assert src.keys.npartitions == 1


@pytest.mark.parametrize("missing", ["error", "drop"])
def test_values_whose_sum_overflows_are_not_missing(local_store, missing):
    """A part is first checked by the sum of its values; one that overflows to infinity
    from finite values (1e308 + 1e308) is looked at value by value: nothing is missing."""
    df = pd.DataFrame({"a": [1e308, 1e308, -3.0], "b": [1.0, np.nan, 2.0]})
    url = local_store.write_parquet("big.parquet", df[["a"]])
    X = open_parquet(url, missing=missing).features.compute()
    np.testing.assert_array_equal(X[:, 0], df["a"].to_numpy())
    # Overflow and a NaN in the same part: the NaN is still found (NaN, not a null, which
    # the statistics would give away at open).
    url = local_store.write_parquet(
        "both.parquet", pa.table({"a": df["a"].to_numpy(), "b": df["b"].to_numpy()}))
    if missing == "error":
        with pytest.raises(ValueError, match=r"column 'b' has 1 NaN"):
            read_parquet(url, missing=missing).compute()
    else:
        np.testing.assert_array_equal(read_parquet(url, missing=missing).compute(),
                                      df.iloc[[0, 2]].to_numpy())


def test_missing_drop_leaving_nothing(local_store):
    url = local_store.write_parquet("allnan.parquet", pd.DataFrame({"a": [np.nan, np.inf]}))
    with pytest.raises(ValueError, match="no rows after dropping"):
        open_parquet(url, missing="drop")


def test_empty_dataset(store):
    so = store.storage_options
    write_dir(store, [0, 0], prefix="zero")
    with pytest.raises(ValueError, match="has no rows"):
        open_parquet(store.url("zero"), storage_options=so)
    store.put_bytes("nofiles/_SUCCESS", b"")
    with pytest.raises(ValueError, match="No Parquet files found under"):
        open_parquet(store.url("nofiles"), storage_options=so)


def test_corrupted_file_names_it(store):
    url, _ = write_dir(store, [3, 3])
    store.put_bytes("data/part-2.parquet", b"this is not parquet at all" * 10)
    with pytest.raises(ValueError, match=r"part-2\.parquet") as e:
        open_parquet(url, storage_options=store.storage_options)
    assert_clean(str(e.value), store)
    # The first file is also the one whose schema is inspected.
    store.put_bytes("bad-first/part-0.parquet", b"garbage")
    store.write_parquet("bad-first/part-1.parquet", frame(2))
    with pytest.raises(ValueError, match=r"bad-first/part-0\.parquet"):
        open_parquet(store.url("bad-first"), storage_options=store.storage_options)


def test_a_stray_file_in_a_directory_gets_a_glob_hint(store):
    """A README or CSV next to the Parquet parts failed with Arrow's footer error alone."""
    url, _ = write_dir(store, [3, 3])
    so = store.storage_options
    store.put_bytes("data/NOTES.txt", b"made by hand")  # sorts before the parts too
    with pytest.raises(ValueError) as e:
        open_parquet(url, storage_options=so)
    message = str(e.value)
    assert re.match(r"Invalid Parquet data while reading the Parquet footer of \S+/data/"
                    r"NOTES\.txt: ", message), message
    assert message.endswith(f". NOTES.txt is not named like a Parquet file: move it out of "
                            f"{url}, or open a glob that matches the Parquet files only, such "
                            f"as {url}/*.parquet")
    assert_clean(message, store)
    assert open_parquet(f"{url}/*.parquet", storage_options=so).n_rows == 6
    # Partitioned: the glob goes as deep as the parts, and reads no partition columns.
    for region in ("eu", "us"):
        store.write_parquet(f"hive/region={region}/part-0.parquet", frame(2))
    store.put_bytes("hive/region=eu/export.csv", b"a,b\n1,2\n")
    with pytest.raises(ValueError, match=re.escape(
            f"export.csv is not named like a Parquet file: move it out of {store.url('hive')}, "
            f"or open a glob that matches the Parquet files only, such as "
            f"{store.url('hive')}/*/*.parquet (a glob reads no hive partition columns)")):
        open_parquet(store.url("hive"), storage_options=so)
    assert open_parquet(store.url("hive/*/*.parquet"), storage_options=so).n_rows == 4
    # The glob is escaped where the directory's name holds glob characters: run[1]/*.parquet
    # would read run1/.
    store.write_parquet("run[1]/part-0.parquet", frame(2))
    store.write_parquet("run1/part-0.parquet", frame(5))
    store.put_bytes("run[1]/notes.txt", b"by hand")
    escaped = store.url("run[[]1]/*.parquet")
    with pytest.raises(ValueError, match=re.escape(f"such as {escaped}")):
        open_parquet(store.url("run[1]"), storage_options=so)
    assert open_parquet(escaped, storage_options=so).n_rows == 2
    # Parts with two suffixes: no one glob lists them all, so none is offered.
    store.write_parquet("mixed/a.parquet", frame(2))
    store.write_parquet("mixed/b.pq", frame(3))
    store.put_bytes("mixed/notes.txt", b"by hand")
    with pytest.raises(ValueError) as e:
        open_parquet(store.url("mixed"), storage_options=so)
    assert str(e.value).endswith(f"notes.txt is not named like a Parquet file: move it out of "
                                 f"{store.url('mixed')}")
    # A part named like Parquet that is not: no hint, the name is not the problem.
    store.put_bytes("data/part-2.parquet", b"garbage")
    with pytest.raises(ValueError, match=r"part-2\.parquet") as e:
        open_parquet(f"{url}/*.parquet", storage_options=so)
    assert "not named like" not in str(e.value)


def test_a_glob_skips_hidden_folders_below_its_fixed_part(store):
    """data/*/*.parquet read a Delta log's checkpoints and staging files, which opening the
    directory skips."""
    so = store.storage_options
    store.write_parquet("hv/region=eu/part-0.parquet", frame(2))
    store.write_parquet("hv/_delta_log/0.checkpoint.parquet", frame(5))
    store.write_parquet("hv/.staging/part-0.parquet", frame(7))
    assert open_parquet(store.url("hv"), storage_options=so).n_rows == 2
    assert open_parquet(store.url("hv/*/*.parquet"), storage_options=so).n_rows == 2
    # A hidden folder named before the wildcards is read: the user chose it.
    assert open_parquet(store.url("hv/_delta_log/*.parquet"), storage_options=so).n_rows == 5


def test_truncated_file_names_it(store):
    url, _ = write_dir(store, [5, 5])
    data = store.get_bytes("data/part-1.parquet")
    store.put_bytes("data/part-1.parquet", data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"part-1\.parquet"):
        open_parquet(url, storage_options=store.storage_options)


@pytest.mark.parametrize("missing", ["error", "drop"])
@pytest.mark.parametrize("chunk_bytes", [None, "128MiB"])
def test_part_changed_after_open(local_store, missing, chunk_bytes):
    """Alone in its chunk or sharing one: the file that changed is named, before its rows
    are written anywhere."""
    url, _ = write_dir(local_store, [3, 3])
    src = open_parquet(url, ["x"], missing=missing, chunk_bytes=chunk_bytes)
    assert src.features.numblocks[0] == (2 if chunk_bytes is None else 1)
    local_store.write_parquet("data/part-1.parquet", frame(5))
    with pytest.raises(ValueError, match=r"part-1\.parquet has 5 rows now but had 3 "
                                         "when it was opened: the data changed after"):
        src.features.compute()


def test_missing_path(store):
    so = store.storage_options
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_parquet(store.url("nowhere"), storage_options=so)


def test_missing_bucket(s3_bucket):
    url = "s3://no-such-bucket-dask-kmeans/data"
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-dask-kmeans/data") as e:
        open_parquet(url, storage_options=s3_bucket.storage_options)
    assert_clean(str(e.value), s3_bucket)


def test_write_into_missing_bucket(s3_bucket):
    url, _ = write_dir(s3_bucket, [2])
    src = open_parquet(url, storage_options=s3_bucket.storage_options)
    out = "s3://no-such-bucket-dask-kmeans/out"
    with pytest.raises(FileNotFoundError, match=out):
        write_labels(src, *labels_for(src), out)
    assert not s3_bucket.fs.exists("no-such-bucket-dask-kmeans")


def test_wrong_credentials(s3_bucket):
    url, _ = write_dir(s3_bucket, [3])
    wrong = dict(s3_bucket.storage_options, secret="wrong-secret-0123456789")
    with pytest.raises(PermissionError, match=url) as e:
        open_parquet(url, storage_options=wrong)
    assert "wrong-secret-0123456789" not in str(e.value)
    wrong_key = dict(s3_bucket.storage_options, key="AKIANOSUCHKEY0000000")
    with pytest.raises(PermissionError, match="storage_options"):
        read_parquet(url, storage_options=wrong_key)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: One attempt, a short connect timeout: an endpoint that cannot be reached fails at once.
QUICK = {"config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}


def storage_failures(s3_server):
    """(url, storage_options, what the message names) that botocore refuses with errors of
    its own (not OSError): a bucket name S3 does not allow, a profile that does not exist, a
    key without its secret, an endpoint nothing listens on."""
    so = dict(s3_server["storage_options"], **QUICK)
    return [
        ("s3://Bad_Bucket!/data", so, "Invalid bucket name"),
        ("s3://bkt/data", dict(so, profile="no-such-profile-dask-kmeans"),
         "no-such-profile-dask-kmeans"),
        ("s3://bkt/data", {k: v for k, v in so.items() if k != "secret"},
         "PartialCredentialsError"),
        ("s3://bkt/data", dict(so, endpoint_url=f"http://127.0.0.1:{_closed_port()}"),
         "EndpointConnectionError"),
    ]


def test_storage_library_errors_are_one_line_os_errors_naming_the_url(s3_server):
    """botocore's own errors (ParamValidationError, ProfileNotFound, PartialCredentialsError,
    EndpointConnectionError) passed through open_parquet and write_labels untouched, as
    tracebacks the command line did not catch; now an OSError naming the URL and the problem,
    without the secret."""
    for url, so, named in storage_failures(s3_server):
        with pytest.raises(OSError) as e:
            open_parquet(url, storage_options=so)
        text = str(e.value)
        assert text.startswith(f"Storage error while opening {url}: ") and named in text, text
        assert "\n" not in text and s3_server["secret"] not in text
        assert e.value.__cause__ is None and e.value.__suppress_context__


def test_storage_library_errors_when_writing_and_in_tasks(s3_bucket):
    """A labels output at a bucket name S3 refuses, and a read task whose endpoint went
    away, raised botocore's errors; now an OSError naming the output, or the part."""
    from moto.server import ThreadedMotoServer

    url, _ = write_dir(s3_bucket, [3])
    so = s3_bucket.storage_options
    src = open_parquet(url, storage_options=so)
    with pytest.raises(OSError, match=r"^Storage error while checking s3://Bad_Bucket!/out: "
                                      "ParamValidationError") as e:
        write_labels(src, np.zeros(3, np.int32), np.zeros(3), "s3://Bad_Bucket!/out")
    assert_clean(str(e.value), s3_bucket)

    # A second endpoint onto the same (in-process) moto backend, which goes away after the open.
    port = _closed_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        src = open_parquet(url, ["x"], key_columns="id", storage_options=dict(
            so, endpoint_url=f"http://127.0.0.1:{port}", **QUICK))
    finally:
        server.stop()
    for what in (src.features, src.keys):
        with pytest.raises(OSError, match=rf"^Storage error while reading {re.escape(url)}/"
                                          r"part-0\.parquet: EndpointConnectionError") as e:
            what.compute(scheduler="sync")
        assert_clean(str(e.value), s3_bucket)


@pytest.mark.parametrize("url", ["s3://AKIAFAKE:s3cr3tVALUE@bucket/data",
                                 "gs://user:s3cr3tVALUE@bucket/data"])
def test_credentials_in_an_object_store_url_are_refused(url):
    """s3fs and gcsfs do not read a URL's user:password@: they took it for part of the bucket
    name, and botocore's error about that name printed the password. Refused, pointing to
    storage_options, without the password."""
    with pytest.raises(ValueError, match=r"cannot carry credentials .* storage_options") as e:
        open_parquet(url)
    assert "s3cr3tVALUE" not in str(e.value) and "://bucket/data" in str(e.value)


def test_secret_never_in_reprs_messages_or_files(store):
    so = store.storage_options
    url, _ = write_dir(store, [3, 2])
    src = open_parquet(url, key_columns="id", storage_options=so)
    texts = [repr(src), str(src), repr(src.features), repr(src.keys), str(src.fingerprint()),
             str(vars(src).keys())]
    for call in (lambda: open_parquet(url, ["nope"], storage_options=so),
                 lambda: open_parquet(store.url("missing"), storage_options=so),
                 lambda: open_parquet(url, missing="maybe", storage_options=so)):
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            call()
        texts.append(str(e.value))
    n = src.n_rows
    write_labels(src, np.zeros(n, dtype=int), np.ones(n), store.url("labels"))
    for text in texts:
        assert_clean(text, store)
    assert store.secret.encode() not in store.all_bytes()


# --------------------------------------------------------------------------- write_labels


def labels_for(src):
    X = src.features
    labels = (X[:, 0] > 0).astype(np.int64)
    distances = da.sqrt((X ** 2).sum(axis=1))
    return labels, distances


def test_write_and_read_labels(store):
    so = store.storage_options
    url, df = write_dir(store, [3, 0, 4])
    src = open_parquet(url, ["x", "y"], key_columns=["id", "name"], storage_options=so,
                       chunk_bytes=None)
    labels, distances = labels_for(src)
    out = store.url("out")
    assert write_labels(src, labels, distances, out, storage_options=so) == out
    assert store.listdir("out") == ["_SUCCESS", *(labels_part(store, "out", i, name=True)
                                                  for i in range(3))]
    got = read_labels(out, storage_options=so)
    assert got.npartitions == 3
    got = got.compute().reset_index(drop=True)
    assert list(got.columns) == ["id", "name", "cluster", "distance"]
    assert got["cluster"].dtype == np.int32 and got["distance"].dtype == np.float64
    np.testing.assert_array_equal(got["id"], df["id"])
    np.testing.assert_array_equal(got["cluster"], (df["x"] > 0).astype(int))
    np.testing.assert_allclose(got["distance"], np.hypot(df["x"], df["y"].astype(np.float32)),
                               rtol=1e-6)


def test_write_labels_after_drop_without_keys(local_store):
    url = nan_parts(local_store)
    src = open_parquet(url, ["a"], missing="drop")
    labels, distances = labels_for(src)
    write_labels(src, labels, distances, local_store.url("out"))
    got = read_labels(local_store.url("out")).compute()
    assert list(got.columns) == ["cluster", "distance"]
    np.testing.assert_array_equal(got["distance"], [1, 2, 3, 5, 7])


def test_write_labels_refuses_overwrite_and_replaces_stale_parts(local_store):
    url, _ = write_dir(local_store, [2, 2, 2])
    src = open_parquet(url)
    out = local_store.url("out")
    write_labels(src, *labels_for(src), out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_labels(src, *labels_for(src), out)
    one = open_parquet(local_store.write_parquet("one.parquet", frame(4)))
    write_labels(one, *labels_for(one), out, overwrite=True)
    assert local_store.listdir("out") == ["_SUCCESS", labels_part(local_store, "out", 0,
                                                                  name=True)]
    assert len(read_labels(out).compute()) == 4


def failing_labels(src, bad_block=1):
    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == bad_block:
            raise RuntimeError("simulated failure while labelling")
        return np.zeros(block.shape[0], dtype=np.int64)

    return src.features.map_blocks(boom, drop_axis=1, dtype=np.int64)


def test_write_labels_failure_leaves_nothing(store):
    so = store.storage_options
    url, _ = write_dir(store, [3, 3, 3, 3])
    src = open_parquet(url, key_columns="id", storage_options=so, chunk_bytes=None)
    _, distances = labels_for(src)
    out = store.url("out")
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_labels(src, failing_labels(src), distances, out, storage_options=so)
    assert store.listdir("out") == []
    with pytest.raises(FileNotFoundError):
        read_labels(out, storage_options=so)
    # Nor the parent directories made for it.
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_labels(src, failing_labels(src), distances, store.url("sub", "deeper", "out"),
                     storage_options=so)
    store.fs.invalidate_cache()
    assert not store.fs.exists(store.path("sub"))


def test_failed_overwrite_keeps_previous_output(store):
    so = store.storage_options
    url, _ = write_dir(store, [3, 3])
    src = open_parquet(url, storage_options=so, chunk_bytes=None)
    out = store.url("out")
    write_labels(src, *labels_for(src), out, storage_options=so)
    before = read_labels(out, storage_options=so).compute()
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_labels(src, failing_labels(src), labels_for(src)[1], out, storage_options=so,
                     overwrite=True)
    assert not [n for n in store.listdir("out") if n.startswith("_temporary")]
    pd.testing.assert_frame_equal(read_labels(out, storage_options=so).compute(), before)


def test_an_overwrite_that_fails_while_committing_keeps_the_previous_output(store,
                                                                           monkeypatch):
    """The commit deleted the old marker and parts, then moved the new parts over one by
    one: an error on the second move (or a kill) left one new part beside old ones, and
    neither output, and a retry was refused ("files that are not dask_kmeans output").
    Parts are named by their commit now, and the old ones go only after the new marker."""
    so = store.storage_options
    url, _ = write_dir(store, [3, 3, 2])
    src = open_parquet(url, storage_options=so, chunk_bytes=None)
    out = store.url("out")
    write_labels(src, *labels_for(src), out, storage_options=so)
    before = read_labels(out, storage_options=so).compute()
    lazy_old = read_labels(out, storage_options=so)
    real_mv, moves = type(store.fs).mv, []

    def mv_fails_second(self, *args, **kwargs):
        moves.append(args)
        if len(moves) == 2:
            raise OSError("simulated I/O error")
        return real_mv(self, *args, **kwargs)

    monkeypatch.setattr(type(store.fs), "mv", mv_fails_second)
    labels, distances = labels_for(src)
    with pytest.raises(OSError, match="simulated I/O error"):
        write_labels(src, 1 - labels, distances, out, storage_options=so, overwrite=True)
    monkeypatch.undo()
    store.fs.invalidate_cache()
    pd.testing.assert_frame_equal(read_labels(out, storage_options=so).compute(), before)
    # A retry is allowed, and leaves only its own parts (the failed commit's are removed).
    write_labels(src, 1 - labels, distances, out, storage_options=so, overwrite=True)
    after = read_labels(out, storage_options=so).compute()
    np.testing.assert_array_equal(after["cluster"], 1 - before["cluster"])
    assert store.listdir("out") == ["_SUCCESS", *(labels_part(store, "out", i, name=True)
                                                  for i in range(3))]
    # A reader opened on the old labels finds its parts gone: an error, not a mix.
    with pytest.raises(FileNotFoundError):
        lazy_old.compute()


def test_labels_committed_by_another_writer_meanwhile_are_not_replaced_without_overwrite(
        local_store, monkeypatch):
    """overwrite=False was checked only before the pass: labels another writer committed
    while this one computed were silently replaced."""
    from dask_kmeans import io

    url, _ = write_dir(local_store, [3, 3])
    src = open_parquet(url, chunk_bytes=None)
    out = local_store.url("out")
    labels, distances = labels_for(src)
    real, others = io._compute_all, []

    def another_writer_first(tasks):
        if not others:
            others.append("writing")
            write_labels(src, 1 - labels, distances, out)
        return real(tasks)

    monkeypatch.setattr(io, "_compute_all", another_writer_first)
    with pytest.raises(FileExistsError, match=r"out was written by another writer while this "
                                              r"one ran; without overwrite it is left as it is"):
        write_labels(src, labels, distances, out)
    theirs = read_labels(out).compute()
    np.testing.assert_array_equal(theirs["cluster"], 1 - labels.compute())
    assert local_store.listdir("out") == ["_SUCCESS", *(labels_part(
        local_store, "out", i, name=True) for i in range(2))]


def test_two_overwrites_committing_at_once_leave_one_whole_output(local_store, monkeypatch):
    """Each writer removed every part not its own after its marker, the other's moved-in
    parts included: both jobs finished, and the marker listed parts that were gone."""
    from dask_kmeans import io

    url, _ = write_dir(local_store, [3, 3, 2])
    src = open_parquet(url, chunk_bytes=None)
    out = local_store.url("out")
    labels, distances = labels_for(src)
    write_labels(src, labels, distances, out)
    real, inner = io.write_bytes_atomic, []

    def other_writer_commits_first(fs, path, data):
        if path.endswith("_SUCCESS") and not inner:  # this writer's parts are in place
            inner.append("writing")
            write_labels(src, 1 - labels, distances, out, overwrite=True)
        return real(fs, path, data)

    monkeypatch.setattr(io, "write_bytes_atomic", other_writer_commits_first)
    write_labels(src, labels, distances, out, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_labels(out).compute()["cluster"], labels.compute())
    assert len([n for n in local_store.listdir("out") if n.startswith("part-")]) == 3


def test_a_directory_left_by_an_interrupted_first_commit_can_be_written(local_store):
    """Parts of a commit killed before its marker (named by the commit) and a temporary
    prefix are ours: writing there is allowed, and removes those parts; a temporary prefix,
    and the parts of its commit, may be another writer's at work: they stay."""
    url, _ = write_dir(local_store, [3])
    src = open_parquet(url)
    out = local_store.url("out")
    local_store.put_bytes("out/part-00000-0123456789ab.parquet", b"debris")
    # Another writer at work: its prefix is there, and so is the part it moved already.
    local_store.put_bytes("out/_temporary-abcdefabcdef/part-00001-abcdefabcdef.parquet", b"x")
    local_store.put_bytes("out/part-00000-abcdefabcdef.parquet", b"theirs, in progress")
    write_labels(src, *labels_for(src), out)
    assert local_store.listdir("out") == sorted([
        "_SUCCESS", "_temporary-abcdefabcdef", labels_part(local_store, "out", 0, name=True),
        "part-00000-abcdefabcdef.parquet"])
    local_store.put_bytes("other/part-00000.parquet", b"theirs")  # not named by a commit
    with pytest.raises(FileExistsError, match="not dask_kmeans output"):
        write_labels(src, *labels_for(src), local_store.url("other"), overwrite=True)


MODEL_METADATA = {"feature_names": ["a", "b"], "inertia": 0.0, "n_iter": 1}


def test_output_of_the_other_kind_is_refused_even_with_overwrite(store):
    """Labels written over a model (predict -o models/k3 --overwrite), or a model over labels,
    left both kinds' files in one directory, which no reader read: each commit removes only
    the stale files of its own kind."""
    from dask_kmeans.io import check_output
    from dask_kmeans.model import read_model, write_model

    so = store.storage_options
    url, _ = write_dir(store, [2, 2])
    src = open_parquet(url, storage_options=so)
    labels, model = store.url("labels"), store.url("model")
    write_labels(src, *labels_for(src), labels, storage_options=so)
    write_model(model, np.zeros((2, 2)), MODEL_METADATA, storage_options=so)
    before = {name: store.listdir(name) for name in ("labels", "model")}
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=re.escape(
                f"{model} holds a dask_kmeans model, not labels")) as e:
            write_labels(src, *labels_for(src), model, storage_options=so, overwrite=overwrite)
        assert "delete the model first" in str(e.value)
        with pytest.raises(FileExistsError, match=re.escape(
                f"{labels} holds dask_kmeans labels, not a model")) as e:
            write_model(labels, np.ones((2, 2)), MODEL_METADATA, storage_options=so,
                        overwrite=overwrite)
        assert "delete the labels first" in str(e.value)
        # The check a job makes before any work.
        with pytest.raises(FileExistsError, match="holds a dask_kmeans model, not labels"):
            check_output(model, so, overwrite=overwrite, kind="labels")
        with pytest.raises(FileExistsError, match="holds dask_kmeans labels, not a model"):
            check_output(labels, so, overwrite=overwrite, kind="model")
    assert {name: store.listdir(name) for name in ("labels", "model")} == before
    assert len(read_labels(labels, storage_options=so).compute()) == 4
    np.testing.assert_array_equal(read_model(model, storage_options=so)[0], np.zeros((2, 2)))
    # Output of the same kind, or of either kind when none is named, is replaced as before.
    for out, kind in ((labels, "labels"), (model, "model")):
        check_output(out, so, overwrite=True, kind=kind)
        check_output(out, so, overwrite=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        check_output(model, so, overwrite=True, kind="plot")


@pytest.mark.parametrize("marker", [b"", b"not json", b'{"format": "other"}', b"[1]"])
def test_output_of_another_program_is_refused_even_with_overwrite(store, marker):
    """An empty _SUCCESS (as Spark and Hadoop write) was taken for a dask_kmeans marker:
    labels written over Spark's output with overwrite left its parts next to ours."""
    from dask_kmeans.model import write_model

    so = store.storage_options
    url, _ = write_dir(store, [2, 2])
    src = open_parquet(url, storage_options=so)
    store.put_bytes("spark/_SUCCESS", marker)
    store.put_bytes("spark/part-00000-1b2c-c000.snappy.parquet", b"theirs")
    out = store.url("spark")
    with pytest.raises(FileExistsError, match=re.escape(
            f"{out} has a _SUCCESS marker that dask_kmeans did not write")):
        write_labels(src, *labels_for(src), out, storage_options=so, overwrite=True)
    with pytest.raises(FileExistsError, match="did not write"):
        write_model(out, np.zeros((2, 2)), MODEL_METADATA, storage_options=so, overwrite=True)
    assert store.listdir("spark") == ["_SUCCESS", "part-00000-1b2c-c000.snappy.parquet"]
    assert store.get_bytes("spark/_SUCCESS") == marker


def test_read_labels_refuses_uncommitted_or_damaged(local_store):
    url, _ = write_dir(local_store, [2, 2])
    src = open_parquet(url, chunk_bytes=None)
    out = local_store.url("out")
    write_labels(src, *labels_for(src), out)
    local_store.fs.rm(labels_part(local_store, "out", 1))
    with pytest.raises(ValueError, match=r"part-00001-[0-9a-f]{12}\.parquet is missing"):
        read_labels(out)
    local_store.fs.rm(local_store.path("out", "_SUCCESS"))
    with pytest.raises(ValueError, match="incomplete.*_SUCCESS"):
        read_labels(out)


@pytest.mark.parametrize(("edit", "match"), [
    ([1], "is not a labels output of dask_kmeans"),
    ("dask-kmeans-labels", "is not a labels output of dask_kmeans"),
    ({"parts": "part-00000.parquet"}, "incomplete or has been modified"),
    ({"parts": {"name": "part-00000.parquet"}}, "incomplete or has been modified"),
    ({"parts": [["part-00000.parquet"]]}, "incomplete or has been modified"),
    ({"parts": [{"name": ["part-00000.parquet"]}]}, "incomplete or has been modified"),
    ({"parts": [{"size": 10}]}, "incomplete or has been modified"),
])
def test_labels_marker_of_the_wrong_json_types_is_refused_as_modified(local_store, edit, match):
    """A marker edited into other JSON types raised AttributeError ('list' object has no
    attribute 'get') or TypeError (unhashable type) instead of the documented error."""
    import json

    url, _ = write_dir(local_store, [2, 2])
    src = open_parquet(url)
    out = local_store.url("out")
    write_labels(src, *labels_for(src), out)
    marker = json.loads(local_store.get_bytes("out/_SUCCESS"))
    local_store.put_bytes("out/_SUCCESS", json.dumps(
        {**marker, **edit} if isinstance(edit, dict) else edit).encode())
    with pytest.raises(ValueError, match=match):
        read_labels(out)


def test_write_labels_checks_inputs(local_store):
    url, _ = write_dir(local_store, [2, 2])
    src = open_parquet(url)
    with pytest.raises(ValueError, match="'labels' has 3 rows but the source has 4"):
        write_labels(src, np.zeros(3), np.zeros(4), local_store.url("out"))
    with pytest.raises(TypeError, match="ParquetSource"):
        write_labels(src.features, np.zeros(4), np.zeros(4), local_store.url("out"))
    assert local_store.listdir("out") == []


def test_labels_with_distributed_client(s3_bucket, client):
    so = s3_bucket.storage_options
    url, df = write_dir(s3_bucket, [3, 4])
    src = open_parquet(url, ["x"], key_columns="id", storage_options=so)
    np.testing.assert_array_equal(src.features.compute().ravel(), df["x"])
    out = s3_bucket.url("out")
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_labels(src, failing_labels(src, 0), labels_for(src)[1], out)
    assert s3_bucket.listdir("out") == []
    write_labels(src, *labels_for(src), out)
    got = read_labels(out, storage_options=so).compute()
    np.testing.assert_array_equal(got["id"], df["id"])


def test_arrow_types_converted(local_store):
    table = pa.table({
        "i8": pa.array([1, 2], pa.int8()),
        "u64": pa.array([3, 4], pa.uint64()),
        "f16": pa.array(np.array([0.5, 1.5], dtype=np.float16)),
        "dec": pa.array([1, 2], pa.decimal128(5, 2)),
        "flag": pa.array([True, False]),
    })
    url = local_store.write_parquet("types.parquet", table)
    src = open_parquet(url)
    assert src.feature_names == ["i8", "u64", "f16", "dec"]
    np.testing.assert_array_equal(src.features.compute(), [[1, 3, 0.5, 1], [2, 4, 1.5, 2]])
    np.testing.assert_array_equal(read_parquet(url, ["flag"]).compute().ravel(), [1, 0])


def test_tasks_know_the_secrets_to_scrub(s3_bucket):
    """Chunk tasks scrub their file system's secrets from messages without carrying them."""
    from dask_kmeans.io import _arrow_fs, _task_secrets

    assert s3_bucket.secret in _task_secrets(_arrow_fs(s3_bucket.fs))
    assert s3_bucket.secret in _task_secrets(s3_bucket.fs)


def test_any_fsspec_url_memory_filesystem():
    """Any fsspec file system works through pyarrow's FSSpecHandler: here memory://."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/dask-kmeans-{uuid.uuid4().hex}"
    try:
        for i, n in enumerate([2, 3]):
            with fs.open(f"{root}/k=1/part-{i}.parquet", "wb") as f:
                pd.DataFrame({"a": np.arange(n, dtype=float)}).to_parquet(f)
        src = open_parquet(f"memory://{root}", key_columns="k")
        assert src.features.chunks == ((5,), (1,))
        np.testing.assert_array_equal(src.features.compute().ravel(), [0, 1, 0, 1, 2])
        assert list(src.keys.compute()["k"]) == [1] * 5
        write_labels(src, np.arange(5), np.zeros(5), f"memory://{root}/out")
        assert list(read_labels(f"memory://{root}/out").compute()["cluster"]) == [0, 1, 2, 3, 4]
    finally:
        fs.rm(root, recursive=True)


@pytest.mark.parametrize(("url", "package"), [("gs://bucket/data", "gcsfs"),
                                              ("abfs://c@account.dfs.core.windows.net/d", "adlfs")])
def test_missing_protocol_package(url, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ImportError, match=f"{package}"):
        open_parquet(url)


def test_pathlib_paths_are_accepted(tmp_path):
    """A pathlib.Path works wherever a local path does: reading, labels, models, profiles."""
    import dask_kmeans as dk
    from dask_kmeans.report import profile, write_profile

    frame(40).to_parquet(tmp_path / "a.parquet", index=False)
    src = open_parquet(tmp_path / "a.parquet", ["x", "y"], key_columns="id")
    km = dk.KMeans(2, random_state=0).fit(src)
    assert km.save(tmp_path / "m") == str(tmp_path / "m")
    np.testing.assert_array_equal(dk.load(tmp_path / "m").cluster_centers_, km.cluster_centers_)
    labels, distances = km.predict(src, return_distance=True)
    assert write_labels(src, labels, distances, tmp_path / "l") == str(tmp_path / "l")
    assert len(read_labels(tmp_path / "l").compute()) == 40
    write_profile(profile(km, src), tmp_path / "m")
    assert (tmp_path / "m" / "profile.csv").exists()
    with pytest.raises(TypeError, match=r"non-empty str or os\.PathLike, got int"):
        open_parquet(3)


def test_local_part_urls_are_shown_without_dot_segments(tmp_path):
    """A path through ``..`` names its parts by their plain path in messages."""
    (tmp_path / "a").mkdir()
    (tmp_path / "e").mkdir()
    pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, None]}).to_parquet(tmp_path / "a" / "p0.parquet")
    with pytest.raises(ValueError) as info:
        open_parquet(str(tmp_path / "e" / ".." / "a"))
    assert f"part file://{tmp_path}/a/p0.parquet: column 'y'" in str(info.value)


def test_a_failed_local_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """write_bytes_atomic (models, labels' markers, profiles, sweep tables, checkpoints):
    when the final rename fails, the temporary copy is removed and the error goes on."""
    from fsspec.implementations.local import LocalFileSystem

    from dask_kmeans.io import write_bytes_atomic

    def refuse(*args, **kwargs):
        raise PermissionError("rename refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError, match="rename refused"):
        write_bytes_atomic(LocalFileSystem(), str(tmp_path / "table.csv"), b"k,inertia\n")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # A directory of that name: shutil.move (fsspec's mv) put the file inside it and succeeded.
    (tmp_path / "e.png").mkdir()
    with pytest.raises(IsADirectoryError):
        write_bytes_atomic(LocalFileSystem(), str(tmp_path / "e.png"), b"png")
    assert [p.name for p in tmp_path.iterdir()] == ["e.png"]
    assert list((tmp_path / "e.png").iterdir()) == []


# --------------------------------------------------------------------------- passes over storage


def test_each_pass_reads_a_part_in_the_task_that_computes_on_it(local_store, client):
    """A fit on data read from storage (not persisted) fuses every pass, k-means|| rounds
    included, with the reading of each part: a part is never read by a task of its own
    whose 16 MB-a-part result a second task would then wait for (one task per part and
    pass instead of two). Only the first centre, one row, is read on its own."""
    from distributed import get_task_stream

    from dask_kmeans import KMeans

    url, df = write_dir(local_store, [400, 300, 500, 350])
    src = open_parquet(url, ["x", "y", "z"], chunk_bytes=None)
    with get_task_stream(client) as ts:
        km = KMeans(3, max_iter=3, tol=0, random_state=0, persist=False).fit(src)
    names = [t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in ts.data]
    alone = [n for n in names if re.fullmatch(r"read-parquet-[0-9a-f]+", n)]
    assert len(alone) <= 1, alone
    # The passes did run, each task reading its part: 5 k-means|| rounds of 4 parts.
    assert sum(n.startswith("with_offset-") for n in names) >= 4 * 5, names
    np.testing.assert_allclose(
        km.cluster_centers_,
        KMeans(3, max_iter=3, tol=0, random_state=0).fit(
            df[["x", "y", "z"]].to_numpy(np.float64)).cluster_centers_, rtol=1e-9, atol=1e-9)


def test_centres_ride_in_the_tasks_unless_large():
    import dask_kmeans._graph as G

    X = da.zeros((100, 600), chunks=(50, 600))
    small = np.zeros((3, 600))
    assert G.centers_args(small, X)[1] is None and G.centers_args(small, X)[0] is small
    # 2 chunks x 2.4 MB: above INLINE_CENTERS_BYTES, one dask key shipped once.
    big = np.zeros((500, 600))
    arg, index = G.centers_args(big, X)
    assert isinstance(arg, da.Array) and index == "kj"
    np.testing.assert_array_equal(arg.compute(), big)
    # Either way, the same pass.
    for c in (small, big):
        labels, _, inertia = G.assignment(X, c)
        assert labels.compute().tolist() == [0] * 100 and float(inertia.compute()) == 0.0
    # The sums' origins, as large as the centres, travel as they do (they were a keyword
    # argument, written into every task whatever their size).
    assert G.origins_args(None, X) == [None, None]
    assert G.origins_args(small, X)[1] is None
    assert G.origins_args(big, X)[1] == "kj"
    packed = G.lloyd_partials(X, big, at=big + 1.0).compute()
    partials, _ = G.unpack(packed, 500, 600, False)
    assert partials.counts[0] == 100 and np.all(partials.sums[0] == -100.0)


def test_parts_become_matrices_chunk_by_chunk_in_arrows_pool():
    """A part's columns may come in several chunks (row groups), each of its own type
    (dictionary, integer, with nulls); each chunk is written straight into the matrix,
    as NumPy would convert the whole column. The matrix lives in Arrow's memory pool,
    which reuses memory where a dask worker's NumPy allocations each map fresh pages."""
    from dask_kmeans.io import _to_matrix

    x = pa.chunked_array([pa.array([1.5, None, 3.0]), pa.array([4.0, 5.0])])
    y = pa.chunked_array([pa.array([2**53 + 1, 7], pa.int64()), pa.array([None, 8, 9], pa.int64())])
    z = pa.chunked_array([pa.array([0.25, 0.5], pa.float32()).dictionary_encode(),
                          pa.array([0.5, None, 0.75], pa.float32()).dictionary_encode()])
    table = pa.table({"x": x, "y": y, "z": z})
    expected = np.column_stack([
        np.array([1.5, np.nan, 3.0, 4.0, 5.0]),
        np.array([2**53 + 1, 7, np.nan, 8, 9], dtype=np.float64),
        np.array([0.25, 0.5, 0.5, np.nan, 0.75]),
    ])
    for dtype in (np.float64, np.float32):
        before = pa.total_allocated_bytes()
        got = _to_matrix(table, ["x", "y", "z"], np.dtype(dtype))
        assert pa.total_allocated_bytes() - before >= got.nbytes
        assert got.dtype == dtype and got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, expected.astype(dtype))
        # Only some columns, in another order.
        np.testing.assert_array_equal(_to_matrix(table, ["z", "x"], np.dtype(dtype)),
                                      expected[:, [2, 0]].astype(dtype))
        del got
    assert _to_matrix(table.slice(0, 0), ["x"], np.dtype(np.float64)).shape == (0, 1)


# --------------------------------------------------------------------------- large files


def _grouped(store, name="big/part-0.parquet", n=10_000, groups=1000, seed=3, nan_at=None):
    """A file of ``n`` rows in row groups of ``groups`` rows: id, then 4 float64 features."""
    df = frame(n, seed=seed)[["id", "x"]]
    rng = np.random.default_rng(seed)
    for c in ("a", "b", "c"):
        df[c] = rng.normal(size=n)
    if nan_at is not None:
        df.loc[nan_at, "b"] = np.nan
    # NaN values, not nulls (which the footers count, so that they are found at open).
    table = pa.table({c: pa.array(df[c].to_numpy()) for c in df.columns})
    store.write_parquet(name, table, row_group_size=groups)
    return df


def test_a_file_larger_than_chunk_bytes_is_read_in_runs_of_row_groups(store):
    """10 row groups of 1,000 rows x 4 float64 (32 kB each): at most 70 kB a chunk makes 5
    chunks of 2 row groups; a small file beside it stays whole. The rows, the keys, the
    labels written back and a fit are those of one chunk per file."""
    from dask_kmeans import KMeans

    big = _grouped(store)
    small = _grouped(store, "big/part-1.parquet", n=300, seed=4)
    whole = pd.concat([big, small], ignore_index=True)
    cols = ["x", "a", "b", "c"]
    so = store.storage_options

    def opened(**kw):
        return open_parquet(store.url("big"), cols, storage_options=so, **kw)

    src = opened(key_columns="id", chunk_bytes=70_000)
    assert src.features.chunks == ((2000,) * 5 + (300,), (4,))
    assert len(src.parts) == 2  # the files
    np.testing.assert_array_equal(src.features.compute(), whole[cols].to_numpy())
    np.testing.assert_array_equal(src.keys.compute()["id"].to_numpy(), whole["id"].to_numpy())
    # A size in words.
    for size in ("64 kB", 64_000):
        assert opened(chunk_bytes=size).features.numblocks[0] == 6
    assert opened(chunk_bytes=None).features.chunks[0] == (10_000, 300)
    assert opened().features.chunks[0] == (10_300,)  # 128 MiB: both files, one chunk

    km = KMeans(3, max_iter=5, tol=0, random_state=0).fit(src)
    ref = KMeans(3, max_iter=5, tol=0, random_state=0).fit(opened(chunk_bytes=None))
    np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_, rtol=1e-12, atol=1e-12)

    out = write_labels(src, km.labels_, np.zeros(len(whole)), store.url("labels"))
    back = read_labels(out, storage_options=so).compute()
    assert store.fs.ls(store.path("labels"), detail=False).__len__() == 6 + 1  # + _SUCCESS
    np.testing.assert_array_equal(back["id"].to_numpy(), whole["id"].to_numpy())
    np.testing.assert_array_equal(back["cluster"].to_numpy(), np.asarray(km.labels_))


def test_consecutive_small_files_share_chunks_up_to_chunk_bytes(store):
    """Files of 100, 100, 0, 150, 100 and 60 rows x 2 float64 (16 bytes a row) in chunks of
    at most 3,500 bytes: [100, 100, 0], [150], [100, 60]; the rows, keys and labels are
    those of one chunk per file, and each task reads only its own files."""
    so = store.storage_options
    url, df = write_dir(store, [100, 100, 0, 150, 100, 60])
    src = open_parquet(url, ["x", "z"], key_columns="id", storage_options=so, chunk_bytes=3500)
    assert src.features.chunks == ((200, 150, 160), (2,))
    np.testing.assert_array_equal(src.features.compute(), df[["x", "z"]].to_numpy(np.float64))
    keys = src.keys.compute()
    np.testing.assert_array_equal(keys["id"], df["id"])
    assert list(keys.index) == list(range(len(df)))
    (block,) = dask.optimize(src.features.blocks[2])
    graph = pickle.dumps(dict(block.__dask_graph__()))
    assert b"part-4.parquet" in graph and b"part-5.parquet" in graph
    assert b"part-3.parquet" not in graph
    out = store.url("out")
    write_labels(src, np.arange(len(df)) % 3, np.zeros(len(df)), out, storage_options=so)
    assert store.listdir("out") == ["_SUCCESS", *(labels_part(store, "out", i, name=True)
                                                  for i in range(3))]
    got = read_labels(out, storage_options=so).compute()
    np.testing.assert_array_equal(got["id"], df["id"])
    np.testing.assert_array_equal(got["cluster"], np.arange(len(df)) % 3)


def test_a_row_group_larger_than_chunk_bytes_is_a_chunk_of_its_own(local_store):
    _grouped(local_store, n=5000, groups=3000)  # row groups of 3,000 and 2,000 rows
    src = open_parquet(local_store.url("big"), ["x", "a"], chunk_bytes=1000)
    assert src.features.chunks[0] == (3000, 2000)


def test_split_files_drop_missing_rows_run_by_run_and_name_the_row_groups(local_store):
    """Rows dropped for NaN are counted per run; with missing="error" the message names
    the file and the row groups where the value is."""
    df = _grouped(local_store, nan_at=[10, 4500, 4501])
    cols = ["x", "a", "b", "c"]
    src = open_parquet(local_store.url("big"), cols, key_columns="id", missing="drop",
                       chunk_bytes=70_000)
    assert src.features.chunks[0] == (1999, 2000, 1998, 2000, 2000)
    kept = df.dropna()
    np.testing.assert_array_equal(src.features.compute(), kept[cols].to_numpy())
    np.testing.assert_array_equal(src.keys.compute()["id"].to_numpy(), kept["id"].to_numpy())
    strict = open_parquet(local_store.url("big"), cols, chunk_bytes=70_000)
    with pytest.raises(ValueError, match=r"part-0\.parquet \(row groups 4-5\): column 'b' has 2 "):
        strict.features.blocks[2].compute()
    with pytest.raises(ValueError, match=r"part-0\.parquet \(row groups 0-1\): column 'b' has 1 "):
        strict.features.blocks[0].compute()
    # Read a row group at a time, a part's values are still counted over all of them.
    whole = open_parquet(local_store.url("big"), cols, chunk_bytes=None)
    with pytest.raises(ValueError, match=r"part-0\.parquet: column 'b' has 3 "):
        whole.features.compute()


def test_a_part_whose_usable_rows_grew_is_named_with_its_rows_now(local_store):
    """The same rows, but the missing values filled in since the open (missing="drop"):
    its rows are read a row group at a time into the chunk, and the extra ones are
    counted, not written past its rows."""
    _grouped(local_store, n=4000, nan_at=[5, 3500])
    src = open_parquet(local_store.url("big"), ["x", "b"], missing="drop", chunk_bytes=None)
    _grouped(local_store, n=4000)
    with pytest.raises(ValueError, match="has 4000 usable rows now but had 3998 when it was "
                                         "opened: the data changed after open_parquet"):
        src.features.compute()


def _write_groups(store, sizes, name="big/part-0.parquet"):
    """``_grouped``'s rows again, in row groups of the given sizes."""
    import pyarrow.parquet as pq

    df = _grouped(store, name, n=sum(sizes))
    table = pa.Table.from_pandas(df, preserve_index=False)
    with store.fs.open(store.path(name), "wb") as f, pq.ParquetWriter(f, table.schema) as w:
        start = 0
        for n in sizes:
            w.write_table(table.slice(start, n), row_group_size=max(n, 1))
            start += n
    store.fs.invalidate_cache()


@pytest.mark.parametrize("missing", ["error", "drop"])
@pytest.mark.parametrize(("change", "block", "message"), [
    ([1000] * 11, 0, r"\(row groups 0-1\) has 11000 rows now but had 10000 when it was opened"),
    ([1500] * 6 + [1000], 4, r"\(row groups 8-9\): its file has 7 row groups now, fewer than "
                             "when it was opened"),
    ([1000, 2000] + [1000] * 7, 1, r"\(row groups 2-3\) holds rows 3000-4999 of its file now "
                                  "but held rows 2000-3999 when it was opened"),
    ([], 2, r"\(row groups 4-5\) has 0 rows now but had 10000 when it was opened"),
], ids=["grew", "fewer-row-groups", "row-groups-moved", "emptied"])
def test_a_split_file_that_changed_after_open_is_refused(local_store, missing, change, block,
                                                         message):
    """A part reads some of its file's row groups: a file that grew, or whose row groups
    no longer hold the part's rows, is refused by its features and its keys with the
    part named (a file that grew was read without its new rows, one with fewer row
    groups failed with Arrow's IndexError)."""
    _grouped(local_store, n=10_000)
    src = open_parquet(local_store.url("big"), ["x", "a"], key_columns="id", missing=missing,
                       chunk_bytes=40_000)
    assert src.features.chunks[0] == (2000,) * 5
    _write_groups(local_store, change)
    message += ": the data changed after open_parquet"
    with pytest.raises(ValueError, match=message):
        src.features.blocks[block].compute()
    with pytest.raises(ValueError, match=message):
        src.keys.partitions[block].compute()


def test_a_file_empty_at_open_that_has_rows_now_is_refused(local_store):
    url, _ = write_dir(local_store, [3, 0])
    src = open_parquet(url, ["x"])
    local_store.write_parquet("data/part-1.parquet", frame(2))
    with pytest.raises(ValueError, match=r"part-1\.parquet has 2 rows now but had 0 "):
        src.features.compute()


def test_parts_without_rows_join_the_chunk_before_them(local_store):
    """Files of 10, 0 and 4 rows and a file of row groups of 4, 0 and 2 rows, one row a
    chunk at most: the empty file and row group make no chunk (a task per pass, and an
    empty labels part) of their own."""
    write_dir(local_store, [10, 0, 4])
    src = open_parquet(local_store.url("data"), ["x"], chunk_bytes=1)
    assert src.features.chunks[0] == (10, 4)
    assert open_parquet(local_store.url("data"), ["x"], chunk_bytes=None).features.chunks[0] \
        == (10, 0, 4)
    _write_groups(local_store, [4, 0, 2])
    src = open_parquet(local_store.url("big"), ["x"], chunk_bytes=1)
    assert src.features.chunks[0] == (4, 2)
    np.testing.assert_array_equal(src.features.compute()[:, 0],
                                  _grouped(local_store, "check/part-0.parquet", n=6)["x"])


def test_missing_drop_counts_a_chunks_rows_in_one_task(local_store, monkeypatch):
    """The count at the open runs a task per chunk, as the reads do: not one per file."""
    import dask_kmeans.io as io

    url, df = write_dir(local_store, [5, 0, 7, 3])
    calls = []
    count = io._count_valid
    monkeypatch.setattr(io, "_count_valid",
                        lambda parts, **kw: calls.append(len(parts)) or count(parts, **kw))
    src = open_parquet(url, ["x"], missing="drop")
    assert calls == [4] and src.n_rows == 15


@pytest.mark.parametrize("bad", [0, -5, "lots", True, 1.5])
def test_chunk_bytes_must_be_a_positive_size(local_store, bad):
    _grouped(local_store, n=100)
    with pytest.raises(ValueError, match="'chunk_bytes' parameter must be a size"):
        open_parquet(local_store.url("big"), chunk_bytes=bad)


def test_small_row_groups_are_read_together(local_store):
    """A file of many small row groups was read one request per row group, at every pass
    (400 groups of a 0.5 MB file: 402 S3 requests and 2.6 s against pyarrow's 8 and 0.28 s):
    consecutive small groups are read together, large ones alone, values unchanged."""
    from dask_kmeans.io import READ_BATCH_BYTES, _batches

    assert _batches([10] * 400, list(range(400)), 2) == [list(range(400))]
    big = READ_BATCH_BYTES // 8
    assert _batches([big, 5, 5, big, 5], [0, 1, 2, 3, 4], 1) == [[0], [1, 2], [3], [4]]
    assert _batches([5] * 6, [0, 1, 3, 4], 1) == [[0, 1], [3, 4]]  # runs stay consecutive
    df = frame(4000)
    url = local_store.write_parquet("many.parquet", df, row_group_size=10)
    X = open_parquet(url, ["x", "z"], chunk_bytes=10_000).features
    assert X.numblocks[0] > 1
    np.testing.assert_array_equal(X.compute(), df[["x", "z"]].to_numpy(np.float64))


@pytest.mark.parametrize(("step", "code", "most"), [
    ("features", "open_parquet(path, cols).features.compute(scheduler='sync')", 1.6),
    ("count", "open_parquet(path, cols, missing='drop')", 0.5),
    ("keys", "open_parquet(path, cols, key_columns='id', missing='drop')"
             ".keys.compute(scheduler='sync')", 0.75),
])
def test_a_part_is_read_a_row_group_at_a_time(tmp_path, step, code, most):
    """A task holds its chunk and one row group's Arrow table, not the whole part's table
    too: Arrow's peak in a fresh process reading 8 row groups of 2 MB into a 16 MB chunk
    (1.45x the chunk; about twice the chunk when the part was read whole). Counting the
    usable rows at the open (missing="drop") and reading the keys of the usable rows
    need no chunk at all (2.2x and 2.3x when the part was read whole)."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    path = tmp_path / "groups.parquet"
    X = np.random.default_rng(0).normal(size=(250_000, 8))
    columns = {f"f{j}": X[:, j] for j in range(8)}
    pq.write_table(pa.table({**columns, "id": np.arange(len(X))}), path,
                   row_group_size=31_250, compression="NONE")
    script = (
        "import pyarrow as pa\n"
        "from dask_kmeans import open_parquet\n"
        f"path, cols = {str(path)!r}, {list(columns)!r}\n"
        f"out = {code}\n"
        "print(pa.default_memory_pool().max_memory(), getattr(out, 'n_rows', None) or len(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120)
    peak, rows = map(int, out.stdout.split())
    assert rows == len(X)
    assert peak < most * X.nbytes, (peak, X.nbytes)


def test_removing_an_output_whose_name_looks_like_a_glob_removes_it_alone(s3_bucket):
    """fsspec's rm takes [, * and ? for a glob on object stores: removing out/t[1].csv
    removed out/t1.csv and kept itself, and sweep-*.csv removed every sweep table (from a
    review of job reruns)."""
    from dask_kmeans.io import remove_exactly

    fs = s3_bucket.fs
    for name in ("t1.csv", "t[1].csv", "sweep-1.csv", "sweep-*.csv", "d1/a", "d[1]/a",
                 "d[1]/b"):
        fs.pipe_file(s3_bucket.path("out", name), b"x")
    for name in ("t[1].csv", "sweep-*.csv", "d[1]"):
        remove_exactly(fs, s3_bucket.path("out", name))
    fs.invalidate_cache()
    left = sorted(p.rsplit("/out/", 1)[1] for p in fs.find(s3_bucket.path("out")))
    assert left == ["d1/a", "sweep-1.csv", "t1.csv"]
