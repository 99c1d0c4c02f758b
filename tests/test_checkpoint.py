"""KMeans(checkpoint=..., resume=True): a killed driver resumes to the uninterrupted result."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import dask_kmeans as dk

ROOT = Path(__file__).resolve().parent.parent

# Slow-converging data: no cluster structure, many clusters.
SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    import dask_kmeans as dk
    from dask_kmeans import _lloyd

    X = np.random.default_rng(0).normal(size=(20000, 4))
    slow = float(sys.argv[2])
    if slow:  # give the parent time to kill us mid-fit
        run = _lloyd.Passes.lloyd
        def lloyd(self, *a, **k):
            time.sleep(slow)
            return run(self, *a, **k)
        _lloyd.Passes.lloyd = lloyd
    km = dk.KMeans(12, random_state=3, n_init=2, tol=0, max_iter=60,
                   checkpoint=sys.argv[1], resume=True).fit(X)
    np.save(sys.argv[3], km.cluster_centers_)
    print(km.n_iter_, repr(km.inertia_))
""")


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_driver_resumes_to_the_uninterrupted_result(tmp_path):
    ref = _run([tmp_path / "ref-ckpt", 0, tmp_path / "ref.npy"])
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    ref_iter, ref_inertia = out.split()

    ckpt = tmp_path / "ckpt"
    proc = _run([ckpt, 0.05, tmp_path / "killed.npy"])
    state_file = ckpt / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill in the second run, mid-Lloyd
        if state_file.exists():
            state = json.loads(state_file.read_text())
            if state["run"] == 1 and state["n_iter"] >= 5:
                break
        time.sleep(0.05)
    else:
        pytest.fail("the checkpoint never reached run 2, iteration 5")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (tmp_path / "killed.npy").exists()

    resumed = _run([ckpt, 0, tmp_path / "resumed.npy"])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    n_iter, inertia = out.split()
    assert n_iter == ref_iter
    assert inertia == ref_inertia
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "ref.npy"))


def test_checkpoint_from_other_data_or_parameters_is_refused(tmp_path):
    X = np.random.default_rng(0).normal(size=(500, 3))
    url = str(tmp_path / "c")
    dk.KMeans(3, random_state=0, checkpoint=url).fit(X)
    with pytest.raises(ValueError, match="other data"):
        dk.KMeans(3, random_state=0, checkpoint=url, resume=True).fit(X + 1)
    with pytest.raises(ValueError, match=r"other parameters \(different: n_clusters\)"):
        dk.KMeans(4, random_state=0, checkpoint=url, resume=True).fit(X)
    # without resume the old checkpoint is simply replaced
    dk.KMeans(4, random_state=0, checkpoint=url).fit(X)


@pytest.mark.parametrize("resume", [False, True])
def test_a_checkpoint_location_that_cannot_hold_one_is_refused_before_any_work(
        tmp_path, resume, monkeypatch):
    """A file at the checkpoint URL, or in the way of its path: refused before the
    initialisation (it failed after it with "[Errno 17] File exists"; with resume,
    "[Errno 20] Not a directory"), naming the parameter."""
    from dask_kmeans import _init

    (tmp_path / "afile").write_text("hi")
    monkeypatch.setattr(_init, "kmeans_parallel", None)  # no initialisation may start
    X = np.random.default_rng(0).normal(size=(200, 3))
    for url, why in ((tmp_path / "afile", "it is a file, not a directory"),
                     (tmp_path / "afile" / "c", "afile is a file, so .* cannot be made")):
        with pytest.raises(ValueError, match=rf"checkpoint='.*' cannot hold the checkpoint: "
                                             rf"Cannot write .*{why}"):
            dk.KMeans(3, random_state=0, checkpoint=str(url), resume=resume).fit(X)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_resume_of_a_finished_fit_gives_the_same_model(tmp_path):
    X = np.random.default_rng(1).normal(size=(800, 3))
    url = str(tmp_path / "c")
    a = dk.KMeans(5, random_state=0, n_init=3, checkpoint=url).fit(X)
    b = dk.KMeans(5, random_state=0, n_init=3, checkpoint=url, resume=True).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.n_iter_ == b.n_iter_ and a.inertia_ == b.inertia_
    text = (tmp_path / "c" / "checkpoint.json").read_text()
    assert "pickle" not in text


def test_a_checkpoint_on_an_object_store_takes_fsspecs_configuration(s3_bucket, monkeypatch):
    """A checkpoint URL takes no storage options: an S3 endpoint and credentials come from
    fsspec's configuration (FSSPEC_S3='{"endpoint_url": ...}' or ~/.config/fsspec), as
    docs/api.md says; a store that needs them was only reachable so."""
    import fsspec.config

    monkeypatch.setitem(fsspec.config.conf, "s3", dict(s3_bucket.storage_options))
    X = np.random.default_rng(1).normal(size=(800, 3))
    url = s3_bucket.url("ck")
    a = dk.KMeans(5, random_state=0, n_init=2, checkpoint=url).fit(X)
    assert s3_bucket.fs.exists(s3_bucket.path("ck", "checkpoint.json"))
    b = dk.KMeans(5, random_state=0, n_init=2, checkpoint=url, resume=True).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert s3_bucket.secret not in repr(b)


@pytest.mark.parametrize("max_iter", [2, 300])
def test_resume_of_a_finished_fit_says_so_and_keeps_whether_it_converged(tmp_path, caplog,
                                                                         max_iter):
    """The log said "run 4, iteration 0" of a fit of 3 runs, and the best run kept was
    reported converged although it had stopped at max_iter."""
    X = np.random.default_rng(1).normal(size=(800, 3))
    url = str(tmp_path / "c")
    params = dict(random_state=0, n_init=3, max_iter=max_iter, tol=0, checkpoint=url)
    with caplog.at_level("INFO", logger="dask_kmeans"):
        first = dk.KMeans(5, verbose=1, **params).fit(X)
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fit done")]
    caplog.clear()
    with caplog.at_level("INFO", logger="dask_kmeans"):
        again = dk.KMeans(5, verbose=1, resume=True, **params).fit(X)
    lines = [r.getMessage() for r in caplog.records]
    assert f"resuming from the checkpoint at {url}: all 3 runs had finished; the best is " \
           "kept" in lines, lines
    assert not any("run 4" in line for line in lines), lines
    assert done == [line for line in lines if line.startswith("fit done")], lines
    assert f"converged={max_iter != 2}" in done[0]
    assert again.n_iter_ == first.n_iter_ and again.inertia_ == first.inertia_


def test_parquet_fingerprint_detects_a_changed_file(local_store):
    import pandas as pd

    rng = np.random.default_rng(2)
    url = local_store.write_parquet("d/p.parquet", pd.DataFrame(rng.normal(size=(300, 2)),
                                                                columns=["a", "b"]))
    ckpt = local_store.url("ck")
    dk.KMeans(2, random_state=0, checkpoint=ckpt).fit(dk.open_parquet(url))
    time.sleep(0.01)
    local_store.write_parquet("d/p.parquet", pd.DataFrame(rng.normal(size=(301, 2)),
                                                          columns=["a", "b"]))
    with pytest.raises(ValueError, match="other data"):
        dk.KMeans(2, random_state=0, checkpoint=ckpt, resume=True).fit(dk.open_parquet(url))


def test_dask_frame_with_a_column_called_name(tmp_path):
    import dask.dataframe as dd
    import pandas as pd

    from dask_kmeans._checkpoint import data_fingerprint

    pdf = pd.DataFrame({"name": [1.0, 2, 10, 11, 3, 12], "b": [1.0, 2, 10, 11, 1.5, 9]})
    ddf = dd.from_pandas(pdf, npartitions=2)
    url = str(tmp_path / "c")
    a = dk.KMeans(2, random_state=0, checkpoint=url).fit(ddf)
    b = dk.KMeans(2, random_state=0, checkpoint=url, resume=True).fit(ddf)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_
    # Two weight Series of one label are different data.
    w1 = dd.from_pandas(pd.Series([1.0] * 6, name="w"), npartitions=2)
    w2 = dd.from_pandas(pd.Series([2.0] * 6, name="w"), npartitions=2)
    assert data_fingerprint(ddf, w1) != data_fingerprint(ddf, w2)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_resume_on_re_read_data_is_bit_identical(tmp_path, monkeypatch, metric):
    """Dask input not held in memory (persist=False): every pass recomputes the cluster
    sums from the rows, so a resumed fit repeats the uninterrupted one to the bit (data
    held in memory keeps Hamerly's bounds and updates the sums incrementally: a resume,
    which starts them afresh, agrees only to rounding)."""
    import dask.array as da

    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(c, 1.5, (300, 2)) for c in ((0, 0), (5, 5), (0, 5), (5, 0))])
    Xd = da.from_array(X + 3.0, chunks=300)
    params = dict(init="random", n_init=2, random_state=0, metric=metric, persist=False)
    full = dk.KMeans(4, **params).fit(Xd)

    url = str(tmp_path / "c")
    with _killed_after_saves(monkeypatch, 4):
        dk.KMeans(4, checkpoint=url, **params).fit(Xd)
    resumed = dk.KMeans(4, checkpoint=url, resume=True, **params).fit(Xd)
    np.testing.assert_array_equal(resumed.cluster_centers_, full.cluster_centers_)
    assert resumed.inertia_ == full.inertia_ and resumed.n_iter_ == full.n_iter_
    np.testing.assert_array_equal(resumed.labels_.compute(), full.labels_.compute())


def test_fingerprints_tell_inputs_and_callables_apart_and_stay_stable(tmp_path):
    """A DataFrame with a bool column hashed object addresses (resume always refused); a
    Parquet source opened with other options or dtype (other rows) was resumed silently;
    a functools.partial init crashed the fit (no __qualname__) and two lambdas were one."""
    import functools

    import pandas as pd

    from dask_kmeans._checkpoint import data_fingerprint, params_fingerprint
    from dask_kmeans.io import open_parquet

    frame = pd.DataFrame({"a": np.arange(6.0), "flag": [True, False] * 3,
                          "n": pd.array([1, None, 3, 4, 5, 6], dtype="Int64")})
    assert data_fingerprint(frame) == data_fingerprint(frame.copy())
    assert data_fingerprint(frame) != data_fingerprint(frame.assign(flag=True))

    rng = np.random.default_rng(0)
    data = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    data.loc[:9, ["a", "b"]] = 0.0  # rows of zero norm
    data.to_parquet(tmp_path / "d.parquet")
    url = str(tmp_path / "d.parquet")
    opened = [open_parquet(url, missing="drop"),
              open_parquet(url, missing="drop", drop_zero_norm=True),
              open_parquet(url, dtype="float32")]
    prints = [data_fingerprint(src) for src in opened]
    assert len({str(p) for p in prints}) == 3
    assert data_fingerprint(open_parquet(url, missing="drop")) == prints[0]
    ckpt = str(tmp_path / "c")
    dk.KMeans(2, random_state=0, checkpoint=ckpt).fit(opened[0])
    with pytest.raises(ValueError, match="other data"):
        dk.KMeans(2, random_state=0, checkpoint=ckpt, resume=True).fit(opened[1])

    def first(X, k, random_state):
        return X[:k]

    def last(X, k, random_state):
        return X[-k:]

    lambdas = [lambda X, k, random_state: X[:k], lambda X, k, random_state: X[-k:]]
    for a, b in ((first, last), tuple(lambdas),
                 (functools.partial(first), functools.partial(last))):
        assert params_fingerprint({"init": a}) == params_fingerprint({"init": a})
        assert params_fingerprint({"init": a}) != params_fingerprint({"init": b})
    X = rng.normal(size=(50, 2))
    dk.KMeans(2, init=functools.partial(first), n_init=1, checkpoint=str(tmp_path / "p")).fit(X)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_checkpoint_is_refused_naming_it(value):
    with pytest.raises(ValueError, match=r"checkpoint.*None or a non-empty URL string"):
        dk.KMeans(2, checkpoint=value).fit(np.random.default_rng(0).normal(size=(20, 2)))


def test_credentials_in_the_checkpoint_url_stay_out_of_repr_model_and_messages(tmp_path):
    """A password in the checkpoint URL made the fitted model unsavable (its metadata held
    the URL: every fit job with a model output failed at the end) and showed in the repr,
    in the refusal messages and in the error of a location that cannot hold one."""
    from dask_kmeans._checkpoint import Checkpoint, check_location

    url = "ftp://user:S3CRET@127.0.0.1:1/ck"
    km = dk.KMeans(2, random_state=0).fit(np.random.default_rng(0).normal(size=(50, 2)))
    km.set_params(checkpoint=url)
    assert "S3CRET" not in repr(km) and "ftp://user:***@127.0.0.1:1/ck" in repr(km)
    km.save(str(tmp_path / "m"))
    meta = (tmp_path / "m" / "metadata.json").read_text()
    assert "S3CRET" not in meta and "ftp://127.0.0.1:1/ck" in meta
    with pytest.raises(ValueError, match="cannot hold the checkpoint") as info:
        check_location(url)
    assert "S3CRET" not in str(info.value)
    assert "S3CRET" not in Checkpoint("memory://user:S3CRET@/ck", {}, {}).shown


@pytest.mark.parametrize("doing", ["load", "save"])
def test_storage_library_errors_of_the_checkpoint_are_one_line(tmp_path, monkeypatch, doing):
    """Reading and writing the checkpoint let a storage library's own error through (a
    botocore EndpointConnectionError when the store went away mid-fit), a traceback from
    the command line, where opening and writing data give one OSError line."""
    from botocore.exceptions import EndpointConnectionError

    from dask_kmeans._checkpoint import Checkpoint

    url = f"file://{tmp_path}/ck?token=S3CRET"
    ckpt = Checkpoint(f"file://{tmp_path}/ck", {}, {})
    ckpt.url = url

    def unreachable(*args, **kwargs):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/?token=S3CRET")

    monkeypatch.setattr(ckpt._fs, "cat_file", unreachable)
    monkeypatch.setattr(ckpt._fs, "makedirs", unreachable)
    with pytest.raises(OSError) as info:
        ckpt.load() if doing == "load" else ckpt.save(run=0, rng_before=np.random.RandomState(
            0).get_state())
    message = str(info.value)
    assert message.startswith(f"Storage error while {'reading' if doing == 'load' else 'writing'}"
                              f" the checkpoint at file://{tmp_path}/ck"), message
    assert "EndpointConnectionError: Could not connect to the endpoint URL" in message
    assert "S3CRET" not in message and "\n" not in message


@pytest.mark.parametrize("secret", ["S3CRET", "a&b<c>'d\\e"])
def test_credentials_in_the_checkpoint_url_stay_out_of_the_notebook_views(secret):
    """scikit-learn's HTML view (what a notebook shows) lists every parameter's value, the
    checkpoint URL with its password and token among them; HTML escapes them."""
    import html

    import sklearn

    km = dk.KMeans(2, checkpoint=f"s3://user:{secret}@bucket/ck?token=T0KEN")
    views = [km._repr_html_(), *km._repr_mimebundle_().values(), repr(km)]
    assert len(views) == 4 and "checkpoint" in views[0] and "s3://user:***@bucket" in views[0]
    for view in views:
        for form in (secret, html.escape(secret), repr(secret)[1:-1], "T0KEN"):
            assert form not in view
    with sklearn.config_context(display="text"):  # scikit-learn's own choice stands
        assert not hasattr(km, "_repr_html_")


class _Killed(Exception):
    pass


@contextlib.contextmanager
def _killed_after_saves(monkeypatch, n: int = 3):
    """Around a fit: it stops with _Killed after its ``n``-th checkpoint is saved."""
    from dask_kmeans import _checkpoint

    save, calls = _checkpoint.Checkpoint.save, []

    def crash(self, **kw):
        save(self, **kw)
        calls.append(1)
        if len(calls) == n:
            raise _Killed

    monkeypatch.setattr(_checkpoint.Checkpoint, "save", crash)
    with pytest.raises(_Killed):
        yield
    monkeypatch.setattr(_checkpoint.Checkpoint, "save", save)


def _saved_checkpoint(tmp_path, monkeypatch):
    """A checkpoint of an interrupted 4-cluster fit, as JSON, and its path."""
    X = np.random.default_rng(0).normal(size=(200, 3))
    with _killed_after_saves(monkeypatch):
        dk.KMeans(4, random_state=0, tol=0, checkpoint=str(tmp_path / "c")).fit(X)
    path = tmp_path / "c" / "checkpoint.json"
    return X, path, json.loads(path.read_text())


def test_a_damaged_checkpoint_is_refused_naming_it(tmp_path, monkeypatch):
    """A checkpoint that is JSON but not one of this fit was trusted (2 centres resumed a fit
    of 4 and ended with 2) or crashed (AttributeError, KeyError, TypeError, IndexError)."""
    X, path, state = _saved_checkpoint(tmp_path, monkeypatch)
    url = str(tmp_path / "c")

    def resume():
        return dk.KMeans(4, random_state=0, tol=0, checkpoint=url, resume=True).fit(X)

    for edit, message in (
            (lambda s: s.update(centers=s["centers"][:2]), r"centers has shape \(2, 3\), "
                                                             r"expected \(4, 3\)"),
            (lambda s: s.update(centers=[[float("nan")] * 3] * 4), "centers holds NaN"),
            (lambda s: s.pop("rng_before"), "rng_before"),
            (lambda s: s.update(run=7), r"run 7 is not an int from 0 to 1"),
            (lambda s: s.update(n_iter=-1), "n_iter -1"),
            (lambda s: s.update(rng_before=["MT19937", [1, 2], 0, 0, 0.0]), ".")):
        broken = json.loads(json.dumps(state))
        edit(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=rf"The checkpoint at {url} is damaged \(.*"
                                             rf"{message}"):
            resume()
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"has format 'list'"):
        resume()
    path.write_text(json.dumps(state))
    assert resume().cluster_centers_.shape == (4, 3)


def test_the_same_parameters_in_other_forms_resume(tmp_path, monkeypatch):
    """A RandomState instance moved on by the interrupted fit, and np.int64(4) against 4,
    were 'other parameters'."""
    X = np.random.default_rng(0).normal(size=(200, 3))
    rng = np.random.RandomState(0)
    url = str(tmp_path / "c")
    with _killed_after_saves(monkeypatch):
        dk.KMeans(np.int64(4), random_state=rng, tol=0, checkpoint=url).fit(X)
    km = dk.KMeans(4, random_state=rng, tol=0, checkpoint=url, resume=True).fit(X)
    assert km.cluster_centers_.shape == (4, 3)


def test_a_memory_file_system_input_has_a_time_in_its_fingerprint():
    """memory:// (and HTTP) infos name their time otherwise ("created", "Last-Modified"):
    the fingerprint held the size alone, and a file rewritten with the same size resumed."""
    import fsspec
    import pandas as pd

    fs = fsspec.filesystem("memory")
    with fs.open("/fp-test/p.parquet", "wb") as f:
        pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(f)
    try:
        fp = dk.open_parquet("memory://fp-test/p.parquet").fingerprint()
        assert all(part["mtime"] is not None for part in fp["parts"])
    finally:
        fs.rm("/fp-test", recursive=True)
