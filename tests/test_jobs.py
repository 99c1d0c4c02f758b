"""dask_kmeans.jobs: job specs, their schema and overrides, and running them on every store."""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from pathlib import Path
from unittest import mock

import cloudpickle
import dask
import numpy as np
import pandas as pd
import pytest
import yaml

import dask_kmeans as dk
from dask_kmeans._schema import load_yaml
from dask_kmeans.io import DEFAULT_CHUNK_BYTES
from dask_kmeans.jobs import (
    MAX_K_VALUES,
    JobSpecError,
    UnknownJobError,
    apply_overrides,
    cluster_target,
    job_status,
    load_job,
    param_defaults,
    parse_assignment,
    parse_k,
    run_job,
    secrets,
    submit_job,
    validate_job,
)
from tests.conftest import LOCAL_SECRET, blobs

ROOT = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((ROOT / "jobs").glob("*.yaml"))
SCHEMA = yaml.safe_load((ROOT / "dask_kmeans" / "job_schema.yaml").read_text())
FEATURES = ["age", "income", "score"]


def fit_spec(url, **sections):
    job = {"kind": "fit", "input": {"url": url}, "params": {"n_clusters": 3},
           "output": {"model": "model"}}
    for name, value in sections.items():
        job[name] = value
    return {"job": job}


def write_dataset(store, name="train", n=1500, parts=3, seed=0):
    """A few Parquet parts with a key column, three features and a text column."""
    X = blobs(n=n, d=3, k=3, seed=seed)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "customer_id", np.arange(n) + 10_000 * seed)
    df["segment"] = "x"
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        store.write_parquet(f"{name}/part-{i}.parquet", df.iloc[a:b])
    return store.url(name), df


# --------------------------------------------------------------------------- the schema

BAD = [
    ("wrong type", fit_spec("d", params={"n_clusters": "eight"}),
     "job.params.n_clusters", "expected an int >= 1, got 'eight'"),
    ("below minimum", fit_spec("d", params={"n_clusters": 0}),
     "job.params.n_clusters", "expected an int >= 1, got 0"),
    ("missing n_clusters", fit_spec("d", params={}), "job.params.n_clusters",
     "missing required key"),
    ("unknown key", fit_spec("d", output={"modle": "m"}), "job.output.modle",
     "unknown key 'modle'; did you mean 'model'?"),
    ("unknown kind", {"job": {"kind": "fitt"}}, "job.kind",
     "expected one of fit, predict, sweep, got 'fitt'; did you mean 'fit'?"),
    ("no kind", {"job": {"input": {"url": "d"}}}, "job.kind", "missing required key"),
    ("no job", {"jobs": {}}, "jobs", "unknown key 'jobs'; did you mean 'job'?"),
    ("empty url", fit_spec(""), "job.input.url", "expected a non-empty string, got ''"),
    ("bad dtype", fit_spec("d", input={"url": "d", "dtype": "float16"}), "job.input.dtype",
     "expected one of float64, float32 or null, got 'float16'"),
    ("bad init", fit_spec("d", params={"n_clusters": 2, "init": "kmeans++"}),
     "job.params.init", "did you mean 'k-means++'?"),
    ("n_init", fit_spec("d", params={"n_clusters": 2, "n_init": 0}), "job.params.n_init",
     "expected 'auto' or an int >= 1, got 0"),
    ("persist", fit_spec("d", params={"n_clusters": 2, "persist": "yes"}),
     "job.params.persist", "expected 'auto' or true or false, got 'yes'"),
    ("oversampling", fit_spec("d", params={"n_clusters": 2, "oversampling_factor": 0}),
     "job.params.oversampling_factor", "expected a number > 0, got 0"),
    ("init_rounds", fit_spec("d", params={"n_clusters": 2, "init_rounds": 0}),
     "job.params.init_rounds", "expected an int >= 1, got 0"),
    ("columns not a list", fit_spec("d", input={"url": "d", "columns": "a,b"}),
     "job.input.columns", "expected a non-empty list of strings or null, got 'a,b'"),
    ("labels key for sweep", {"job": {"kind": "sweep", "input": {"url": "d"}, "k": [2],
                                      "output": {"table": "t.csv", "labels": "l"}}},
     "job.output.labels", "unknown key 'labels'"),
    ("n_clusters in a sweep", {"job": {"kind": "sweep", "input": {"url": "d"}, "k": [2],
                                       "params": {"n_clusters": 3},
                                       "output": {"table": "t.csv"}}},
     "job.params.n_clusters", "unknown key 'n_clusters'"),
    # init and n_init passed validate, then run refused them with exit code 1.
    *[(f"{name} in a sweep", {"job": {"kind": "sweep", "input": {"url": "d"}, "k": [2],
                                      "params": {name: value}}},
       f"job.params.{name}", f"a sweep does not take {name}: every K starts from one shared "
                             "k-means|| candidate set")
      for name, value in (("init", "k-means||"), ("init", "random"), ("n_init", 1),
                          ("n_init", "auto"))],
    # A seed numpy refuses passed validation and failed after the data was opened.
    ("seed too large", fit_spec("d", params={"n_clusters": 2, "random_state": 2**32}),
     "job.params.random_state", "expected an int >= 0 and <= 4294967295 or null, got "
                                "4294967296"),
    ("sweep seed too large", {"job": {"kind": "sweep", "input": {"url": "d"}, "k": [2],
                                      "params": {"random_state": 99999999999}}},
     "job.params.random_state", "<= 4294967295"),
    # Accepted, then ignored: no scatter, no resume, and random or k-means++ never reads
    # the k-means|| options (the fit command refused the same as options already).
    ("plot_features without plot", fit_spec("d", output={"plot_features": ["a", "b"]}),
     "job.output.plot_features", "chooses the axes of the output.plot scatter, but "
                                 "output.plot is null, so it would be ignored"),
    ("resume without checkpoint", fit_spec("d", params={"n_clusters": 2, "resume": True}),
     "job.params.resume", "params.checkpoint is null, so it would be ignored"),
    *[(f"{name} with init {init}", fit_spec("d", params={"n_clusters": 2, "init": init,
                                                         name: value}),
       f"job.params.{name}", f"applies to init k-means|| only; with init {init} it would be "
                             f"ignored: remove {name}")
      for name, value, init in (("oversampling_factor", 4, "random"),
                                ("init_rounds", 2, "k-means++"))],
    ("k item", {"job": {"kind": "sweep", "input": {"url": "d"}, "k": [2, 0],
                        "output": {"table": "t"}}}, "job.k[1]", "expected an int >= 1, got 0"),
    ("k text", {"job": {"kind": "sweep", "input": {"url": "d"}, "k": "two to five",
                        "output": {"table": "t"}}}, "job.k", "or a range like '2..12'"),
    ("k range", {"job": {"kind": "sweep", "input": {"url": "d"}, "k": "5..2",
                         "output": {"table": "t"}}}, "job.k", "'5..2' is empty"),
    ("predict needs a model", {"job": {"kind": "predict", "input": {"url": "d"},
                                       "output": {"labels": "l"}}}, "job.model",
     "missing required key"),
    ("chunk_bytes zero", fit_spec("d", input={"url": "d", "chunk_bytes": 0}),
     "job.input.chunk_bytes", "a size like '16GiB' or a number of bytes > 0"),
    ("inline cluster", fit_spec("d", cluster={"kind": "local", "local": {"n_workers": "two"}}),
     "job.cluster.local.n_workers", "expected an int >= 1 or null, got 'two'"),
    ("scheduler address", fit_spec("d", cluster={"scheduler": "localhost"}),
     "job.cluster.scheduler", "expected an address like tcp://host:port"),
    ("bare address as a path", fit_spec("d", cluster="localhost:8786"), "job.cluster",
     "looks like a scheduler address"),
    ("address as a path", fit_spec("d", cluster="tcp://127.0.0.1:8786"), "job.cluster",
     "looks like a scheduler address"),
    ("missing cluster file", fit_spec("d", cluster="nope/cluster.yaml"), "job.cluster",
     "cluster config file not found"),
    ("cluster of another shape", fit_spec("d", cluster={"workers": 2}), "job.cluster",
     "expected the path of a cluster-config file"),
]


@pytest.mark.parametrize("spec, path, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_names_the_path(spec, path, message):
    with pytest.raises(JobSpecError) as info:
        validate_job(spec)
    problems = dict(info.value.errors)
    assert path in problems, info.value.errors
    assert message in problems[path]
    assert f"{path}: {problems[path]}" in str(info.value)


def test_keys_that_matter_only_with_another_are_accepted_with_it():
    """The refusals of keys that would be ignored (see BAD) leave alone the same keys where
    they take effect, a default value (it changes nothing), and a spec validated once,
    whose defaults are filled in, when it is validated again."""
    specs = [
        fit_spec("d", output={"plot": "c.png", "plot_features": ["a", "b"]}),
        fit_spec("d", params={"n_clusters": 2, "checkpoint": "ck", "resume": True}),
        fit_spec("d", params={"n_clusters": 2, "checkpoint": "ck", "resume": False}),
        fit_spec("d", params={"n_clusters": 2, "resume": False}),
        fit_spec("d", params={"n_clusters": 2, "oversampling_factor": 4, "init_rounds": 2}),
        fit_spec("d", params={"n_clusters": 2, "init": "random", "oversampling_factor": 2,
                              "init_rounds": 5}),
        fit_spec("d", params={"n_clusters": 2, "init": "k-means++"}),
        {"job": {"kind": "sweep", "input": {"url": "d"}, "k": [2],
                 "params": {"oversampling_factor": 4, "init_rounds": 2}}},
    ]
    for spec in specs:
        once = validate_job(spec)
        assert validate_job(once) == once


def test_a_key_that_would_be_ignored_is_reported_with_the_other_problems():
    spec = fit_spec("d", params={"n_clusters": "two", "init": "random", "init_rounds": 3},
                    output={"plot": 5, "plot_features": ["a", "b"]})
    with pytest.raises(JobSpecError) as info:
        validate_job(spec)
    # output.plot is wrong already: plot_features is not blamed for it.
    assert [p for p, _ in info.value.errors] == [
        "job.params.n_clusters", "job.output.plot", "job.params.init_rounds"]


def test_a_repeated_column_or_plot_feature_is_refused_before_any_work():
    """plot_features [age, age] passed validation, the whole fit ran and wrote its model and
    labels, and only the plot then failed (exit 1, outputs left behind)."""
    spec = fit_spec("d", input={"url": "d", "columns": ["a", "b", "a"],
                                "key_columns": ["id", "id"]},
                    output={"model": "m", "plot": "p.png", "plot_features": ["age", "age"]})
    with pytest.raises(JobSpecError) as info:
        validate_job(spec)
    assert info.value.errors == [
        ("job.input.columns", "names 'a' more than once; each entry must differ"),
        ("job.input.key_columns", "names 'id' more than once; each entry must differ"),
        ("job.output.plot_features", "names 'age' more than once; each entry must differ")]
    ok = fit_spec("d", input={"url": "d", "columns": ["a", "b"]},
                  output={"plot": "p.png", "plot_features": ["a", "b"]})
    assert validate_job(ok)["job"]["output"]["plot_features"] == ["a", "b"]


def test_key_columns_that_would_do_nothing_are_refused(local_store):
    """input.key_columns does two things: it keeps the key columns out of the default
    features, and copies them next to the labels. With input.columns given, a sweep (no
    labels) or a fit without output.labels did neither, and accepted it silently."""
    url, df = write_dataset(local_store, n=300)
    keyed = {"url": url, "columns": FEATURES, "key_columns": ["customer_id"]}
    sweep = {"job": {"kind": "sweep", "input": dict(keyed), "k": [2, 3], "output": {}}}
    fit = fit_spec(url, input=dict(keyed), params={"n_clusters": 2, "random_state": 0},
                   output={"model": local_store.url("m")})
    for spec, why in ((sweep, "a sweep writes no labels"),
                      (fit, "output.labels is null")):
        with pytest.raises(JobSpecError) as info:
            validate_job(spec)
        [(path, problem)] = info.value.errors
        assert path == "job.input.key_columns"
        assert f"input.columns names the features and {why}, so it would be ignored" in problem
    # Where it does something it is accepted: labels written, or no input.columns.
    fit["job"]["output"]["labels"] = local_store.url("l")
    assert run_job(fit)["labels"] == local_store.url("l")
    assert list(dk.read_labels(local_store.url("l")).columns)[0] == "customer_id"
    for spec in (sweep, fit):
        del spec["job"]["input"]["columns"]
        spec["job"]["output"].pop("labels", None)
        spec["job"]["output"]["overwrite"] = True
        assert run_job(spec)["features"] == FEATURES  # not customer_id


def test_every_problem_is_reported_at_once():
    spec = fit_spec("d", params={"n_clusters": "eight", "tol": -1}, output={"modle": "m"})
    with pytest.raises(JobSpecError, match="^job.yaml: 3 problems in the job spec:") as info:
        validate_job(spec, source="job.yaml")
    assert [p for p, _ in info.value.errors] == [
        "job.params.n_clusters", "job.params.tol", "job.output.modle"]
    with pytest.raises(JobSpecError, match="the job spec is empty"):
        validate_job(None)


def test_defaults_are_kmeans_own_and_filled_in():
    params = dk.KMeans().get_params()
    expected = {k: v for k, v in params.items() if k not in ("n_clusters", "verbose")}
    assert param_defaults() == expected, "job_schema.yaml's params are out of step with KMeans"
    variants = SCHEMA["keys"]["job"]["variants"]
    # One checkpoint for several K cannot work: each fit would refuse the other's. Every K
    # starts from one k-means|| candidate set, once: no init, no n_init.
    sweep = {k: v for k, v in expected.items()
             if k not in ("checkpoint", "resume", "init", "n_init")}
    assert set(sweep) | {"X", "ks", "sample_weight", "silhouette_rows"} == set(
        inspect.signature(dk.sweep).parameters), "sweep's params are out of step with sweep"
    assert set(variants["sweep"]["keys"]["params"]["keys"]) == set(sweep)

    spec = validate_job({"job": {"kind": "sweep", "input": {"url": "d"}, "k": "2..3",
                                 "output": {"table": "t.csv"}}})
    job = spec["job"]
    assert job["params"] == sweep
    # The input's defaults are open_parquet's.
    assert job["input"] == {"url": "d", "columns": None, "key_columns": [], "dtype": None,
                            "missing": "error", "chunk_bytes": DEFAULT_CHUNK_BYTES,
                            "storage_options": {}}
    assert job["output"] == {"table": "t.csv", "plot": None, "overwrite": False,
                             "storage_options": None}
    assert job["cluster"] is None


def test_schema_documents_every_key():
    def walk(node, path):
        assert node.get("doc") or path.count(".") < 1 or "[" in path, f"{path} has no doc"
        for key, sub in node.get("keys", {}).items():
            walk(sub, f"{path}.{key}")
        for kind, sub in node.get("variants", {}).items():
            walk(sub, f"{path}<{kind}>")

    walk(SCHEMA["keys"]["job"], "job")


def test_the_result_profile_keeps_every_digit(local_store, client):
    """The result's profile (--json, and the table the command prints) came through
    pandas' to_json, 10 decimal places: a mean of 2e-12 mol/L became 0, one in epoch
    nanoseconds lost its last digits; profile.csv kept them."""
    from dask_kmeans.report import profile

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"conc": rng.normal(5e-12, 2e-12, 400),
                       "t_ns": 1.7e18 + rng.normal(0, 3e9, 400)})
    local_store.write_parquet("tiny/part-0.parquet", df)
    url = local_store.url("tiny")
    result = run_job(fit_spec(url, input={"url": url},
                              params={"n_clusters": 2, "random_state": 0, "standardize": True},
                              output={"model": local_store.url("m")}))
    table = profile(dk.load(result["model"]), dk.open_parquet(url))
    for record, (cluster, row) in zip(result["profile"], table.iterrows(), strict=True):
        assert record["cluster"] == cluster
        for column in ("conc_mean", "conc_std", "t_ns_mean", "t_ns_std"):
            assert record[column] == row[column], column  # to the bit
    assert 1e-12 < result["profile"][0]["conc_mean"] < 1e-11
    json.dumps(result)  # plain JSON types


def test_a_fit_job_without_output_prints_the_centres(local_store, client):
    """A fit job had to say `output: {}` to write nothing (job.output: missing required key),
    although no key of output is required."""
    url, _ = write_dataset(local_store, n=300)
    spec = {"job": {"kind": "fit", "input": {"url": url},
                    "params": {"n_clusters": 2, "random_state": 0}}}
    result = run_job(spec)
    assert result["model"] is None and len(result["centers"]) == 2
    assert sorted(p.name for p in Path(local_store.url()).iterdir()) == ["train"]


def test_a_cluster_file_named_like_an_address_is_found_next_to_the_job(tmp_path,
                                                                       monkeypatch):
    """A job's cluster: e:8786 was looked for in the working directory to tell a file from
    an address, but read next to the job: the same job validated or not by where it ran."""
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "e:8786").write_text("cluster:\n  kind: local\n")
    job = tmp_path / "j" / "job.yaml"
    job.write_text(yaml.safe_dump({"job": {"kind": "fit", "input": {"url": "d"},
                                           "params": {"n_clusters": 2},
                                           "cluster": "e:8786"}}))
    for cwd in (tmp_path, tmp_path / "j"):
        monkeypatch.chdir(cwd)
        assert load_job(job)["job"]["cluster"] == str(tmp_path / "j" / "e:8786")
    (tmp_path / "j" / "e:8786").unlink()
    with pytest.raises(JobSpecError, match="'e:8786' looks like a scheduler address"):
        load_job(job)


def test_validation_does_not_modify_its_input():
    spec = fit_spec("d", cluster={"kind": "local"})
    before = json.loads(json.dumps(spec))
    validate_job(spec)
    assert spec == before


def test_parse_k():
    assert parse_k("2..5") == [2, 3, 4, 5]
    assert parse_k(" 3 .. 3 ") == [3]
    assert parse_k([8, 4]) == [8, 4]
    with pytest.raises(ValueError, match="empty or starts below 1"):
        parse_k("0..3")
    assert len(parse_k(f"1..{MAX_K_VALUES}")) == MAX_K_VALUES == 1000


@pytest.mark.parametrize("k", ["2..3000000000", "1..1001", list(range(1, 1002))])
def test_too_many_k_values_are_refused_before_any_list_is_built(k, monkeypatch):
    """k: 2..3000000000 was expanded into a list until memory ran out, before any check."""
    import dask_kmeans.jobs

    def small_range(*args):
        values = range(*args)
        assert len(values) <= MAX_K_VALUES, f"a range of {len(values):,} values was made"
        return values

    # Fail instead of filling this machine's memory when the range is built first.
    monkeypatch.setattr(dask_kmeans.jobs, "range", small_range, raising=False)
    with pytest.raises(ValueError, match="a sweep takes at most 1,000"):
        parse_k(k)
    with pytest.raises(JobSpecError) as info:
        validate_job({"job": {"kind": "sweep", "input": {"url": "d"}, "k": k}})
    assert "at most 1,000" in dict(info.value.errors)["job.k"]


# --------------------------------------------------------------------------- files, overrides


def write_job(tmp_path, spec, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_overrides_are_applied_before_validation(tmp_path):
    path = write_job(tmp_path, fit_spec("data"))
    spec = load_job(path, ["params.n_clusters=5", "job.params.tol=1e-3",
                           "input.storage_options.client_kwargs.region_name=eu-west-1",
                           "input.key_columns=[id, other]", "output.labels=labels",
                           "params.random_state=null"])
    job = spec["job"]
    assert job["params"]["n_clusters"] == 5 and job["params"]["tol"] == 0.001
    assert job["input"]["storage_options"] == {"client_kwargs": {"region_name": "eu-west-1"}}
    assert job["input"]["key_columns"] == ["id", "other"]
    assert job["output"]["labels"] == "labels" and job["params"]["random_state"] is None

    with pytest.raises(JobSpecError) as info:
        load_job(path, ["params.n_clusters=eight"])
    assert str(info.value) == (f"{path}: job.params.n_clusters: expected an int >= 1, "
                               "got 'eight'")
    with pytest.raises(JobSpecError, match="expected key.path=value"):
        load_job(path, ["params.n_clusters"])
    with pytest.raises(JobSpecError, match=r"job\.input\.url is 'data', not a mapping"):
        load_job(path, ["input.url.x=1"])
    with pytest.raises(JobSpecError, match="not valid YAML") as info:
        load_job(path, ["input.storage_options.token=[unclosed-s3cr3t"])
    assert "s3cr3t" not in str(info.value)


def test_command_line_values_are_typed_conservatively(tmp_path):
    """--set and --storage-option values went through YAML 1.1, which silently turned
    password=0123 into 83 (octal), 12:30:00 into 45000 (base 60), 2024_01 into 202401,
    'ab #cd' into 'ab' (a comment) and no into False."""
    kept = ["0123", "12:30:00", "2024_01", "ab #cd", "yEs", "y", "n", "~", "",
            " 5", "0x1f", "1_000", "00.5", ".inf", "nan", "2024-01-01", "a: b"]
    for text in kept:
        assert parse_assignment(f"password={text}", "--storage-option") == (
            ["password"], text), text
    typed = {"true": True, "False": False, "TRUE": True, "null": None, "Null": None,
             "0": 0, "42": 42, "-7": -7, "+3": 3, "1.5": 1.5, "-0.25": -0.25, ".5": 0.5,
             "1e-4": 1e-4, "2.5E3": 2500.0, "[2, 4, 8]": [2, 4, 8],
             "[id, 0123, 'no', '7']": ["id", "0123", "no", "7"],
             "{region_name: eu-west-1, retries: 3, anon: }":
                 {"region_name": "eu-west-1", "retries": 3, "anon": None}}
    for text, value in typed.items():
        got = parse_assignment(f"a.b={text}")
        assert got == (["a", "b"], value) and type(got[1]) is type(value), text
    spec = apply_overrides(fit_spec("data"), ["input.storage_options.profile=2024_01",
                                              "input.storage_options.secret=12:30:00"])
    assert spec["job"]["input"]["storage_options"] == {"profile": "2024_01",
                                                       "secret": "12:30:00"}


@pytest.mark.parametrize("text", ["no", "yes", "On", "OFF", "[a, no]", "{anon: yes}"])
def test_a_plain_yes_no_on_off_value_is_refused(text):
    """--storage-option anon=no was the text 'no', which s3fs takes as true; YAML 1.1 would
    read it as false. Neither is safe to guess: quote it for text, or write true/false."""
    with pytest.raises(JobSpecError) as info:
        parse_assignment(f"anon={text}", "--storage-option")
    (path, problem), = info.value.errors
    assert path == "anon" and problem.startswith("the value given by --storage-option anon: ")
    assert "is ambiguous, which YAML 1.1 reads as a boolean: write true or false for a " \
           "boolean, or put it in quotes for text" in problem
    assert parse_assignment("anon='no'", "--storage-option")[1] == "no"
    assert parse_assignment("x=[a, 'no']")[1] == ["a", "no"]


def test_a_key_given_twice_in_a_file_is_refused_naming_both_lines(tmp_path):
    """YAML kept the last of two equal keys: a second params block dropped the first
    one's n_clusters without a word. Keys a << merge brings in may still be overridden."""
    path = tmp_path / "job.yaml"
    path.write_text("job:\n  kind: fit\n  input: {url: data}\n  params:\n    n_clusters: 3\n"
                    "  output: {}\n  params:\n    n_clusters: 4\n")
    with pytest.raises(JobSpecError, match=r"line 7: not valid YAML: the key 'params' is "
                                           r"given twice \(first on line 4\); YAML would keep "
                                           r"only the last"):
        load_job(path)
    path.write_text("base: &b {n_clusters: 3, tol: 0.5}\njob:\n  kind: fit\n"
                    "  input: {url: data}\n  params:\n    <<: *b\n    n_clusters: 5\n"
                    "  output: {}\n")
    assert load_yaml(path.read_text())["job"]["params"] == {"n_clusters": 5, "tol": 0.5}
    with pytest.raises(yaml.YAMLError, match="the key 'a' is given twice"):
        load_yaml("{a: 1, a: 2}")
    with pytest.raises(JobSpecError, match="is not valid YAML"):  # the value is not shown
        parse_assignment("params={n_clusters: 2, n_clusters: 3}")


def test_job_files_type_plain_values_as_the_command_line_does(tmp_path):
    """Job files were read as YAML 1.1: in storage_options, password: 0123 arrived as 83,
    profile: 2024_01 as 202401, secret: 12:30:00 as 45000 and a date as a datetime.date,
    silently; anon: no as False, which is now refused unquoted."""
    path = tmp_path / "job.yaml"
    head = "job:\n  kind: fit\n  input:\n    url: data\n    storage_options:\n"
    tail = ("  params: {n_clusters: 3, tol: 1e-4, random_state: ~}\n"
            "  output: {model: model}\n")
    options = ("      password: 0123\n      profile: 2024_01\n      secret: 12:30:00\n"
               "      since: 2024-01-01\n      retries: 3\n      ratio: 0.5\n"
               "      anon: FALSE\n      region:\n      flag: 'no'\n      zone: ~\n")
    path.write_text(head + options + tail)
    job = load_job(path)["job"]
    assert job["input"]["storage_options"] == {
        "password": "0123", "profile": "2024_01", "secret": "12:30:00", "since": "2024-01-01",
        "retries": 3, "ratio": 0.5, "anon": False, "region": None, "flag": "no", "zone": None}
    assert job["params"]["tol"] == 1e-4 and job["params"]["random_state"] is None
    path.write_text(head + "      anon: no\n" + tail)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.errors == [("line 6", "not valid YAML: 'no' is ambiguous, which YAML 1.1 "
                                  "reads as a boolean: write true or false for a boolean, or "
                                  "put it in quotes for text")]
    # Anchors and merge keys still work.
    path.write_text("base: &io {url: data}\njob:\n  kind: fit\n  input: {<<: *io}\n"
                    "  params: {n_clusters: 3}\n  output: {model: model}\n")
    with pytest.raises(JobSpecError, match="unknown key 'base'"):
        load_job(path)


def test_a_quoted_command_line_value_is_the_exact_text_inside():
    """--storage-option profile=2024 and --set output.model=2024 gave the int 2024, and
    no value could be forced to be text."""
    quoted = {"'2024'": "2024", '"2024"': "2024", "'true'": "true", '"null"': "null",
              "'1e-4'": "1e-4", "''": "", '""': "", "'[2, 4]'": "[2, 4]", "' sp '": " sp ",
              "''x''": "'x'", "'a'b'": "a'b", '"it\'s"': "it's", "'\\n'": "\\n"}
    not_quoted = ["'", '"', "'abc\"", "\"abc'", " '2024'", "'2024' ", "'2024", "2024'"]
    for text, value in [*quoted.items(), *((t, t) for t in not_quoted)]:
        assert parse_assignment(f"profile={text}", "--storage-option") == (
            ["profile"], value), text
    # Items of a list or mapping are quoted by YAML's rules.
    assert parse_assignment("input.columns=['2024', ' sp', 'a,b', \"x\\ty\"]")[1] == [
        "2024", " sp", "a,b", "x\ty"]
    spec = apply_overrides(fit_spec("data"), ["input.storage_options.profile='2024'",
                                              "output.model=\"2024\""])
    assert spec["job"]["input"]["storage_options"] == {"profile": "2024"}
    assert validate_job(spec)["job"]["output"]["model"] == "2024"


@pytest.mark.parametrize("override, path, shown", [
    ("output.model=2024", "job.output.model", "2024"),
    ("output.labels=true", "job.output.labels", "true"),
    ("input.url=1.5", "job.input.url", "1.5"),
    ("input.columns=[age, 2024]", "job.input.columns[1]", "2024"),
    ("input.key_columns=[false]", "job.input.key_columns[0]", "false"),
])
def test_a_number_for_a_text_key_is_refused_with_a_hint_to_quote_it(tmp_path, override, path,
                                                                    shown):
    """Accepted as its text, 0123 in a YAML file would have named the column '83': so a
    number or a bool where the schema wants text is refused, saying how to write text."""
    job = write_job(tmp_path, fit_spec("data"))
    with pytest.raises(JobSpecError) as info:
        load_job(job, [override])
    problem = dict(info.value.errors)[path]
    assert problem.endswith(f", got {shown}; to give it as text, write it in quotes: "
                            f"'{shown}'"), problem
    key, _, value = override.partition("=")
    quoted = value.replace(shown, f"'{shown}'")
    assert load_job(job, [f"{key}={quoted}"])  # and quoted, it is taken


def test_a_number_for_a_key_of_choices_gets_no_quoting_hint():
    with pytest.raises(JobSpecError) as info:
        validate_job(fit_spec("d", input={"url": "d", "dtype": 64}))
    assert dict(info.value.errors)["job.input.dtype"] == (
        "expected one of float64, float32 or null, got 64")


def test_apply_overrides_copies():
    spec = {"job": {"params": {"n_clusters": 8}}}
    out = apply_overrides(spec, ["params.n_clusters=2"])
    assert spec["job"]["params"]["n_clusters"] == 8 and out["job"]["params"]["n_clusters"] == 2


def test_yaml_floats_in_scientific_notation(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("job:\n  kind: fit\n  input: {url: d}\n  params: {n_clusters: 2, tol: 1e-6}"
                    "\n  output: {}\n")
    assert load_job(path)["job"]["params"]["tol"] == 1e-6


def test_load_job_file_errors(tmp_path):
    with pytest.raises(JobSpecError, match=r"nope\.yaml: .*no such file"):
        load_job(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("job:\n  kind: fit\n   input: {}\n")
    with pytest.raises(JobSpecError, match=r"broken\.yaml: line 3: not valid YAML"):
        load_job(broken)
    # A UnicodeDecodeError (a ValueError: exit code 1) that did not name the file.
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"job:\n  kind: fit  # caf\xe9\n")
    with pytest.raises(JobSpecError, match=r"latin1\.yaml: .*not UTF-8 text \(byte 0xe9 at "
                                           r"offset 23\)"):
        load_job(latin1)
    with pytest.raises(JobSpecError, match=r": \(top level\): cannot read it: Is a directory"):
        load_job(tmp_path)


def test_cluster_entry_forms(tmp_path):
    sub = tmp_path / "jobs"
    sub.mkdir()
    (tmp_path / "local.yaml").write_text("cluster:\n  kind: local\n")
    spec = load_job(write_job(sub, fit_spec("d", cluster="../local.yaml")))
    assert spec["job"]["cluster"] == str(sub / ".." / "local.yaml")
    assert cluster_target(spec) == {"config_or_path": str(sub / ".." / "local.yaml")}

    spec = validate_job(fit_spec("d", cluster={"scheduler": "tcp://127.0.0.1:8786"}))
    assert cluster_target(spec) == {"scheduler": "tcp://127.0.0.1:8786"}

    for inline in ({"kind": "local", "local": {"n_workers": 1}},
                   {"cluster": {"kind": "local", "local": {"n_workers": 1}}}):
        target = cluster_target(validate_job(fit_spec("d", cluster=inline)))
        assert target["config_or_path"]["cluster"]["local"]["n_workers"] == 1
        assert target["config_or_path"]["cluster"]["local"]["processes"] is True

    (tmp_path / "bad.yaml").write_text("cluster:\n  kind: local\n  local: {n_workers: two}\n")
    with pytest.raises(JobSpecError) as info:
        load_job(write_job(sub, fit_spec("d", cluster="../bad.yaml"), "b.yaml"))
    assert "job.cluster: " in str(info.value) and "cluster.local.n_workers" in str(info.value)
    assert cluster_target(validate_job(fit_spec("d"))) == {}


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.name for p in JOB_FILES])
def test_example_job_validates(path):
    spec = load_job(path)
    assert spec["job"]["kind"] in ("fit", "predict", "sweep")
    assert not secrets(spec), f"{path.name} holds credentials"


def test_the_examples_cover_every_kind():
    kinds = {load_job(p)["job"]["kind"] for p in JOB_FILES}
    assert kinds == {"fit", "predict", "sweep"}
    assert {p.name for p in JOB_FILES} >= {"demo.yaml", "fit_s3.yaml", "predict.yaml",
                                           "sweep.yaml"}


def test_secrets_are_found_at_any_depth():
    spec = fit_spec("s3://user:pa55word@bucket/x", input={
        "url": "s3://user:pa55word@bucket/x",
        "storage_options": {"key": "AKIA1", "secret": "s3cr3t-value", "endpoint_url": "http://e",
                            "client_kwargs": {"aws_session_token": "tok-123"}}})
    assert set(secrets(spec)) == {"pa55word", "AKIA1", "s3cr3t-value", "tok-123"}


# --------------------------------------------------------------------------- running jobs


def reference_fit(url, storage_options, k=3, **params):
    src = dk.open_parquet(url, FEATURES, storage_options=storage_options,
                          key_columns="customer_id")
    return dk.KMeans(k, random_state=0, **params).fit(src)


def test_fit_predict_sweep_on_every_store(store, client, caplog):
    caplog.set_level(logging.DEBUG, logger="dask_kmeans")
    url, df = write_dataset(store)
    opts = store.storage_options
    inp = {"url": url, "columns": FEATURES, "key_columns": ["customer_id"],
           "storage_options": opts}

    fit = run_job({"job": {"kind": "fit", "input": inp,
                           "params": {"n_clusters": 3, "random_state": 0},
                           "output": {"model": store.url("model"),
                                      "labels": store.url("labels")}}})
    assert fit["kind"] == "fit" and fit["n_rows"] == len(df) and fit["features"] == FEATURES
    assert fit["model"] == store.url("model") and fit["labels"] == store.url("labels")
    assert fit["seconds"] > 0 and "centers" not in fit
    model = dk.load(store.url("model"), storage_options=opts)
    ref = reference_fit(url, opts)
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-7)
    assert fit["inertia"] == pytest.approx(ref.inertia_, rel=1e-7)
    assert fit["n_iter"] == ref.n_iter_
    labels = dk.read_labels(fit["labels"], storage_options=opts).compute()
    assert list(labels.columns) == ["customer_id", "cluster", "distance"]
    np.testing.assert_array_equal(labels["customer_id"], df["customer_id"])
    np.testing.assert_array_equal(labels["cluster"], model.predict(df[FEATURES]))

    pred = run_job({"job": {"kind": "predict", "model": store.url("model"),
                            "input": {k: v for k, v in inp.items() if k != "columns"},
                            "output": {"labels": store.url("predicted")}}})
    assert pred == {"kind": "predict", "model": store.url("model"), "input": url,
                    "n_rows": len(df), "n_clusters": 3, "labels": store.url("predicted"),
                    "seconds": pred["seconds"]}
    again = dk.read_labels(pred["labels"], storage_options=opts).compute()
    np.testing.assert_array_equal(again["cluster"], labels["cluster"])
    np.testing.assert_allclose(again["distance"], labels["distance"], rtol=1e-12)

    sweep = run_job({"job": {"kind": "sweep", "k": "2..3",
                             "input": {k: v for k, v in inp.items() if k != "key_columns"},
                             "params": {"random_state": 0},
                             "output": {"table": store.url("sweep.csv")}}})
    assert [r["k"] for r in sweep["results"]] == [2, 3]
    # every K is seeded from one shared k-means|| candidate set, so K=3 reaches the same
    # optimum as a separate fit here, not necessarily from the same start
    assert sweep["results"][1]["inertia"] == pytest.approx(ref.inertia_, rel=1e-3)
    assert sweep["suggested_k"] in (2, 3) and sweep["reason"]
    assert sweep["results"][0]["inertia"] > sweep["results"][1]["inertia"]
    table = pd.read_csv(pd.io.common.BytesIO(store.get_bytes("sweep.csv")))
    assert list(table.columns) == ["k", "inertia", "n_iter", "silhouette"]
    np.testing.assert_allclose(table["inertia"], [r["inertia"] for r in sweep["results"]])

    everything = json.dumps([fit, pred, sweep]) + caplog.text
    assert store.secret not in everything
    assert store.secret.encode() not in store.all_bytes()


def test_fit_without_a_model_returns_the_centres_and_sweep_writes_parquet(local_store, client):
    url, _ = write_dataset(local_store, n=600)
    fit = run_job(fit_spec(url, input={"url": url, "columns": FEATURES},
                           params={"n_clusters": 3, "random_state": 0}, output={}))
    ref = reference_fit(url, None)
    np.testing.assert_allclose(fit["centers"], ref.cluster_centers_, rtol=1e-7)
    assert fit["model"] is None and fit["labels"] is None

    sweep = run_job({"job": {"kind": "sweep", "input": {"url": url}, "k": [3, 2],
                             "output": {"table": local_store.url("out", "sweep.parquet")}}})
    table = pd.read_parquet(local_store.url("out", "sweep.parquet"))
    assert table["k"].tolist() == [2, 3] == [r["k"] for r in sweep["results"]]  # sorted
    assert sweep["features"] == ["customer_id", *FEATURES], "numeric columns by default"


def test_input_chunk_bytes_splits_a_large_file_into_chunks(local_store, client):
    """A file of 4 row groups read 2 at a time: 2 chunks, so 2 labels parts."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"id": np.arange(4000), "a": rng.normal(size=4000),
                       "b": rng.normal(size=4000)})
    url = local_store.write_parquet("big.parquet", df, row_group_size=1000)
    labels = local_store.url("labels")
    fit = run_job(fit_spec(url, input={"url": url, "columns": ["a", "b"],
                                       "key_columns": ["id"], "chunk_bytes": "32kB"},
                           params={"n_clusters": 3, "random_state": 0},
                           output={"labels": labels}))
    parts = sorted(n.rsplit("/", 1)[-1] for n in local_store.fs.ls(local_store.path("labels")))
    assert parts[0] == "_SUCCESS" and len(parts) == 3
    assert all(re.fullmatch(rf"part-0000{i}-[0-9a-f]{{12}}\.parquet", parts[1 + i])
               for i in range(2)), parts
    back = dk.read_labels(labels).compute()
    assert back["id"].tolist() == list(range(4000)) and fit["n_rows"] == 4000


def test_a_fit_job_cancels_the_labels_it_does_not_use(local_store, client, monkeypatch):
    """fit --no-profile without labels left labels_ computing in the background; the CLI
    then closed its cluster under them and distributed logged a CommClosedError."""
    from distributed import futures_of

    from dask_kmeans import _runtime

    url, _ = write_dataset(local_store, n=600)
    seen = []
    original = _runtime.cancel
    monkeypatch.setattr(_runtime, "cancel",
                        lambda c: seen.append(futures_of(c)) or original(c))
    run_job(fit_spec(url, params={"n_clusters": 3, "random_state": 0},
                     output={"model": local_store.url("m"), "profile": False}))
    (futures,) = seen
    assert futures and {f.status for f in futures} == {"cancelled"}
    assert original(np.zeros(3)) == 0 and original(None) == 0  # nothing on a cluster


def test_missing_drop_skips_rows_of_zero_norm_under_the_cosine_metric(local_store, client):
    """A cosine fit or predict of data with an all-zero row could not skip it from a job or
    the command line: only open_parquet(drop_zero_norm=True) could."""
    import dask_kmeans as dk

    X = blobs(n=300, d=3, k=3, seed=1)
    X[[5, 200]] = 0.0
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "customer_id", np.arange(len(df)))
    local_store.write_parquet("z/part-0.parquet", df)
    url = local_store.url("z")
    spec = fit_spec(url, input={"url": url, "key_columns": ["customer_id"]},
                    params={"n_clusters": 3, "metric": "cosine", "random_state": 0},
                    output={"model": local_store.url("m"), "labels": local_store.url("l")})
    with pytest.raises(ValueError, match=r"2 row\(s\) of X have zero norm .*input.missing: "
                                         r"drop in a job and --missing drop"):
        run_job(spec)
    assert not Path(local_store.url("m")).exists()
    spec["job"]["input"]["missing"] = "drop"
    result = run_job(spec)
    ref = dk.KMeans(3, metric="cosine", random_state=0).fit(np.delete(X, [5, 200], axis=0))
    np.testing.assert_allclose(dk.load(result["model"]).cluster_centers_,
                               ref.cluster_centers_, rtol=1e-7)
    labels = dk.read_labels(result["labels"]).compute()
    assert sorted(set(range(300)) - set(labels["customer_id"])) == [5, 200]
    predict = {"job": {"kind": "predict", "model": result["model"],
                       "input": {"url": url, "key_columns": ["customer_id"],
                                 "missing": "drop"},
                       "output": {"labels": local_store.url("p")}}}
    labels = dk.read_labels(run_job(predict)["labels"]).compute()
    assert len(labels) == 298 and 5 not in set(labels["customer_id"])


def test_missing_drop_with_standardize_keeps_rows_that_standardising_gives_a_direction(
        local_store, client):
    """With standardize, missing: drop dropped the rows of zero norm as read, which have
    a direction once standardised, and kept the row equal to the feature means, which has
    none: then refused with advice (--missing drop) that could not remove it."""
    import dask_kmeans as dk

    rows = [(0.0, 0.0)] * 100 + [(2.0, 2.0)] * 100 + [(0.0, 2.0)] * 100 + [(2.0, 0.0)] * 100
    df = pd.DataFrame(rows + [(1.0, 1.0)], columns=["a", "b"])  # the last: the means
    df.insert(0, "id", np.arange(len(df)))
    local_store.write_parquet("s/part-0.parquet", df)
    url = local_store.url("s")
    spec = fit_spec(url, input={"url": url, "key_columns": ["id"], "missing": "drop"},
                    params={"n_clusters": 2, "metric": "cosine", "standardize": True,
                            "random_state": 0},
                    output={"model": local_store.url("m"), "labels": local_store.url("l")})
    with pytest.raises(ValueError, match=r"1 row\(s\) of X have zero norm after "
                                         r"standardize=True \(rows 400\): they equal the "
                                         r"feature means"):
        run_job(spec)
    assert not Path(local_store.url("m")).exists() and not Path(local_store.url("l")).exists()
    local_store.write_parquet("s/part-0.parquet", df.iloc[:400])
    result = run_job(spec)
    assert result["n_rows"] == 400  # the (0, 0) rows too
    ref = dk.KMeans(2, metric="cosine", standardize=True, random_state=0).fit(
        np.asarray(rows))
    np.testing.assert_allclose(dk.load(result["model"]).cluster_centers_,
                               ref.cluster_centers_, rtol=1e-7)
    predict = {"job": {"kind": "predict", "model": result["model"],
                       "input": {"url": url, "key_columns": ["id"], "missing": "drop"},
                       "output": {"labels": local_store.url("p")}}}
    assert len(dk.read_labels(run_job(predict)["labels"]).compute()) == 400


def test_existing_outputs_are_refused_before_any_work(local_store, client):
    url, _ = write_dataset(local_store, n=300)
    spec = fit_spec(url, params={"n_clusters": 2, "random_state": 0},
                    output={"model": local_store.url("m"), "labels": local_store.url("l")})
    run_job(spec)
    stamp = (Path(local_store.url("m")) / "_SUCCESS").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match=r"m already exists: set output.overwrite: true"):
        run_job(spec)
    assert (Path(local_store.url("m")) / "_SUCCESS").stat().st_mtime_ns == stamp
    spec["job"]["output"]["overwrite"] = True
    assert run_job(spec)["model"] == local_store.url("m")
    # Output of the other kind, even with overwrite: refused before the fit, not after it.
    swapped = fit_spec(url, params={"n_clusters": 2, "random_state": 0},
                       output={"model": local_store.url("l"), "overwrite": True})
    with pytest.raises(FileExistsError, match=r"holds dask_kmeans labels, not a model"):
        with mock.patch("dask_kmeans.estimator.KMeans.fit", side_effect=AssertionError):
            run_job(swapped)
    run_job(fit_spec(url, params={"n_clusters": 2, "random_state": 0},
                     output={"model": local_store.url("m2")}))
    predict = {"job": {"kind": "predict", "model": local_store.url("m"),
                       "input": {"url": url},
                       "output": {"labels": local_store.url("m2"), "overwrite": True}}}
    with pytest.raises(FileExistsError, match=r"holds a dask_kmeans model, not labels"):
        with mock.patch("dask_kmeans.estimator.load", side_effect=AssertionError):
            run_job(predict)

    table = {"job": {"kind": "sweep", "input": {"url": url}, "k": [2],
                     "output": {"table": local_store.url("t.json")}}}
    run_job(table)
    assert json.loads(Path(local_store.url("t.json")).read_text())[0]["k"] == 2
    with pytest.raises(FileExistsError, match=r"t\.json already exists"):
        run_job(table)


def test_outputs_that_would_overwrite_each_other_or_the_input_are_refused_first(local_store):
    """Same directory for the model and the labels (the labels' commit replaced the model,
    and the job said it succeeded), labels inside the input, a predict into its model: all
    refused before anything is read or written. No client: nothing may get that far. Those
    the URLs show are refused by validate_job too (validate said OK to them, from a
    review)."""
    url, _ = write_dataset(local_store, n=300)
    same = local_store.url("out")
    cases = [
        (fit_spec(url, output={"model": same, "labels": same, "overwrite": True}),
         r"job\.output\.model: .*out and output\.labels \(.*out\) are the same location"),
        (fit_spec(url, output={"model": local_store.url("m"),
                               "labels": local_store.url("train", "labels")}),
         r"job\.output\.labels: .* and input\.url \(.*train\) .*one is inside the other"),
        (fit_spec(url, output={"model": same, "plot": local_store.url("out", "c.png")}),
         r"job\.output\.model: .* and output\.plot"),
        ({"job": {"kind": "predict", "model": same, "input": {"url": url},
                  "output": {"labels": local_store.url("out", "labels")}}},
         r"job\.output\.labels: .* and model \("),
        # an output that a glob input matches (labels.parquet/ holds files the glob would
        # not read, but the folder is a match); a checkpoint is an output too (its
        # checkpoint.json in the input made every later read of it fail)
        (fit_spec(url + "/*.parquet",
                  output={"labels": local_store.url("train", "labels.parquet")}),
         r"job\.output\.labels: .* and input\.url .*one is inside the other"),
        (fit_spec(url, params={"n_clusters": 2, "checkpoint": url}, output={}),
         r"job\.params\.checkpoint: .* and input\.url .*same location"),
        (fit_spec(url, params={"n_clusters": 2, "checkpoint": same}, output={"model": same}),
         r"job\.output\.model: .* and params\.checkpoint"),
    ]
    # Two names of one place: a symlinked directory (the fit ran, then failed on the
    # labels with the model written; a sweep's plot overwrote its table, exit 0), and a
    # link to the input (labels written inside it).
    Path(local_store.url("real")).mkdir()
    Path(local_store.url("alias")).symlink_to(local_store.url("real"))
    Path(local_store.url("data")).symlink_to(url)
    cases += [
        (fit_spec(url, output={"model": local_store.url("real", "model"),
                               "labels": local_store.url("alias", "model")}),
         r"job\.output\.model: .* and output\.labels .* are the same location"),
        ({"job": {"kind": "sweep", "input": {"url": url}, "k": [2, 3],
                  "output": {"table": local_store.url("real", "k"),
                             "plot": local_store.url("alias", "k", "e.png")}}},
         r"job\.output\.table: .* and output\.plot .* are the same location"),
        (fit_spec(url, output={"labels": local_store.url("data", "labels")}),
         r"job\.output\.labels: .* and input\.url .*one is inside the other"),
    ]
    for spec, message in cases:
        with pytest.raises(JobSpecError, match=message):
            validate_job(spec)
        with pytest.raises(JobSpecError, match=message):
            run_job(spec)
        # Where the URLs alone cannot tell (a file system not installed where the spec is
        # validated), the run compares them as its file systems see them.
        with mock.patch("dask_kmeans.jobs._where_in_spec", return_value=None):
            with pytest.raises(ValueError, match=message.replace(r"job\.", "", 1)):
                run_job(spec)
    assert sorted(p.name for p in Path(local_store.url()).iterdir()) == \
        ["alias", "data", "real", "train"]
    assert not any(Path(local_store.url("real")).iterdir())


def test_validate_refuses_what_the_run_would_refuse_from_the_spec_alone(tmp_path,
                                                                        monkeypatch):
    """validate said OK to specs that run then refused before any work, for reasons the
    spec shows: a plot named .jpg, the model in the labels directory or in the input,
    plot_features not among input.columns, a key column named cluster with labels. Now
    validate_job refuses them (so validate, run and submit), naming the key."""
    monkeypatch.chdir(tmp_path)
    cases = [
        (fit_spec("data", output={"plot": "p.jpg"}), "job.output.plot",
         r"PNG, PDF or SVG, chosen by its extension .*'p\.jpg' has the extension \.jpg"),
        ({"job": {"kind": "sweep", "input": {"url": "data"}, "k": [2, 3],
                  "output": {"plot": "elbow"}}}, "job.output.plot", r"'elbow' has none"),
        (fit_spec("data", output={"model": "out", "labels": "out"}), "job.output.model",
         r"^out and output\.labels \(out\) are the same location or one is inside"),
        (fit_spec("data", output={"model": "out/m", "labels": "out"}), "job.output.model",
         r"^out/m and output\.labels \(out\) are the same location or one is inside"),
        (fit_spec("data", output={"model": "./data/m"}), "job.output.model",
         r"and input\.url \(data\) are the same location"),
        (fit_spec("file://" + str(tmp_path / "data"), output={"model": "data/m"}),
         "job.output.model", r"and input\.url \(file://.*data\) are the same"),
        (fit_spec("s3://b/data/*.parquet", output={"labels": "s3://b/data/l.parquet"}),
         "job.output.labels", r"input\.url"),  # a name the glob matches
        (fit_spec("s3://b/data/*/x.parquet", output={"labels": "s3://b/data/l"}),
         "job.output.labels", r"input\.url"),  # a folder the glob may look into
        ({"job": {"kind": "predict", "model": "m", "input": {"url": "data"},
                  "output": {"labels": "m/l"}}}, "job.output.labels", r"and model \(m\)"),
        (fit_spec("data", input={"url": "data", "columns": ["age", "income"]},
                  output={"plot": "p.png", "plot_features": ["age", "incom"]}),
         "job.output.plot_features",
         r"'incom' is not a feature of this fit; did you mean 'income'\? The features "
         r"\(input.columns\) are age, income"),
        (fit_spec("data", input={"url": "data", "key_columns": ["cluster"]},
                  output={"labels": "l"}), "job.input.key_columns",
         r"\['cluster'\] clash with the labels' columns"),
    ]
    for spec, path, problem in cases:
        with pytest.raises(JobSpecError) as info:
            validate_job(spec)
        assert [p for p, _ in info.value.errors] == [path], info.value.errors
        assert re.search(problem, info.value.errors[0][1]), info.value.errors
    # Refused before, each glob or output taken for its folder: an input glob and outputs
    # its matches cannot be, hold or be inside, and an output named like a glob (written as
    # named) beside another output.
    for spec in (fit_spec("s3://b/data/*.parquet", output={"labels": "s3://b/data/l"}),
                 fit_spec("*.parquet", output={"model": "out/model"}),
                 fit_spec("data", output={"model": "out/model", "plot": "out/run[1].png"})):
        validate_job(spec)
    # What the spec does not show is left to the run: the features when input.columns is
    # null, other protocols, and separate places.
    for spec in (fit_spec("data", output={"plot": "p.png", "plot_features": ["a", "zz"]}),
                 fit_spec("data", output={"model": "s3://b/data", "labels": "data2"}),
                 fit_spec("data", input={"url": "data", "key_columns": ["cluster"]},
                          output={"model": "m"}),
                 fit_spec("data/", output={"model": "data2/m", "plot": "data2.png"})):
        validate_job(spec)


def test_predict_columns_other_than_the_models_are_refused_before_any_work(local_store):
    """predict --columns with a column the model was not fitted on read it and checked it
    for NaN for nothing: with missing='drop' its NaN dropped rows from the labels, exit 0.
    A ParquetSource with such columns is refused by predict too."""
    from dask_kmeans import KMeans
    from dask_kmeans.io import open_parquet

    url, df = write_dataset(local_store, n=300)
    model = local_store.url("m")
    run_job(fit_spec(url, input={"url": url, "columns": FEATURES[:2]},
                     params={"n_clusters": 2, "random_state": 0}, output={"model": model}))
    labels = local_store.url("l")
    for columns in ([*FEATURES[:2], "customer_id"], FEATURES[:1]):
        spec = {"job": {"kind": "predict", "model": model,
                        "input": {"url": url, "columns": columns, "missing": "drop"},
                        "output": {"labels": labels}}}
        with pytest.raises(ValueError, match=r"input\.columns \(--columns\) .* are not the "
                                             r"features of the model at .*m: \['age'"):
            with mock.patch("dask_kmeans.io.open_parquet", side_effect=AssertionError):
                run_job(spec)
        assert not Path(labels).exists()
    reordered = {"job": {"kind": "predict", "model": model,
                         "input": {"url": url, "columns": FEATURES[1::-1]},
                         "output": {"labels": labels}}}
    assert run_job(reordered)["n_rows"] == 300
    km = KMeans(2, random_state=0).fit(df[FEATURES[:2]])
    with pytest.raises(ValueError, match=r"has feature column\(s\) \['customer_id'\] that "
                                         r"the model was not fitted on"):
        km.predict(open_parquet(url, [*FEATURES[:2], "customer_id"]))


def test_a_checkpoint_at_a_file_is_refused_before_the_input_is_opened(local_store):
    url, _ = write_dataset(local_store, n=300)
    Path(local_store.url("afile")).write_text("hi")
    spec = fit_spec(url, params={"n_clusters": 2, "checkpoint": local_store.url("afile")},
                    output={"model": local_store.url("m")})
    with pytest.raises(ValueError, match=r"checkpoint='.*afile' cannot hold the checkpoint"):
        with mock.patch("dask_kmeans.io.open_parquet", side_effect=AssertionError):
            run_job(spec)
    assert not Path(local_store.url("m")).exists()


def test_a_fit_job_that_fails_late_leaves_no_output_and_keeps_the_old_model(local_store):
    """The fit job saved its model first: a labels pass that failed left a new model
    (replacing an old one with overwrite), a plot that failed left model and labels."""
    url, _ = write_dataset(local_store, n=300)
    model, labels, plot = (local_store.url(n) for n in ("m", "l", "p.png"))
    spec = fit_spec(url, params={"n_clusters": 2, "random_state": 0},
                    output={"model": model, "labels": labels, "plot": plot})
    with mock.patch("dask_kmeans.report.plot_clusters", side_effect=RuntimeError("late")):
        with pytest.raises(RuntimeError, match="late"):
            run_job(spec)
    assert sorted(p.name for p in Path(local_store.url()).iterdir()) == ["train"]
    run_job(fit_spec(url, params={"n_clusters": 2, "random_state": 0},
                     output={"model": model}))
    old = dk.load(model).cluster_centers_
    spec["job"]["params"]["n_clusters"] = 3
    spec["job"]["output"]["overwrite"] = True
    with mock.patch("dask_kmeans.io.write_labels", side_effect=RuntimeError("labels")):
        with pytest.raises(RuntimeError, match="labels"):
            run_job(spec)
    np.testing.assert_array_equal(dk.load(model).cluster_centers_, old)
    assert sorted(p.name for p in Path(local_store.url()).iterdir()) == ["m", "train"]
    sweep = {"job": {"kind": "sweep", "input": {"url": url}, "k": [2, 3],
                     "output": {"table": local_store.url("t.csv"), "plot": plot}}}
    with mock.patch("dask_kmeans.report.plot_elbow", side_effect=RuntimeError("late")):
        with pytest.raises(RuntimeError, match="late"):
            run_job(sweep)
    assert sorted(p.name for p in Path(local_store.url()).iterdir()) == ["m", "train"]


def test_a_failed_job_also_removes_the_directories_it_made_for_its_outputs(local_store):
    """The labels were removed when a later output failed, but the new parent directory
    made for them stayed, empty; one that held something before the job stays."""
    url, _ = write_dataset(local_store, n=300)
    root = Path(local_store.url())
    (root / "kept").mkdir()
    spec = fit_spec(url, params={"n_clusters": 2, "random_state": 0},
                    output={"labels": local_store.url("new/deep/labels"),
                            "model": local_store.url("kept/m"),
                            "plot": local_store.url("other/p.png")})
    with mock.patch("dask_kmeans.report.plot_clusters", side_effect=RuntimeError("late")):
        with pytest.raises(RuntimeError, match="late"):
            run_job(spec)
    assert sorted(p.name for p in root.iterdir()) == ["kept", "train"]
    assert not any((root / "kept").iterdir())
    sweep = {"job": {"kind": "sweep", "input": {"url": url}, "k": [2, 3],
                     "output": {"table": local_store.url("t/t.csv"),
                                "plot": local_store.url("p.png")}}}
    with mock.patch("dask_kmeans.report.plot_elbow", side_effect=RuntimeError("late")):
        with pytest.raises(RuntimeError, match="late"):
            run_job(sweep)
    assert sorted(p.name for p in root.iterdir()) == ["kept", "train"]


def test_a_failed_job_empties_again_the_empty_directories_it_wrote_into(store):
    """An output directory that existed but was empty (made by hand) counted as something
    there before the job: a fit whose plot then failed left a complete model (and labels)
    in it, which the same job, rerun, refused as existing output. What the job wrote into
    such a directory is removed again; the directory stays, as it was."""
    url, _ = write_dataset(store, n=300)
    for name in ("m", "l"):
        store.fs.makedirs(store.path(name), exist_ok=True)
        if store.kind == "s3":  # an object store's empty "directory": a folder marker
            store.fs.pipe_file(store.path(name) + "/", b"")
    spec = fit_spec(url, input={"url": url, "key_columns": ["customer_id"],
                                "storage_options": store.storage_options},
                    params={"n_clusters": 2, "random_state": 0},
                    output={"model": store.url("m"), "labels": store.url("l"),
                            "plot": store.url("p.png")})

    def listing(name):
        store.fs.invalidate_cache()
        return [p for p in store.fs.find(store.path(name), withdirs=True)
                if p.rstrip("/") != store.path(name).rstrip("/")]

    with mock.patch("dask_kmeans.report.plot_clusters", side_effect=OSError("disk full")):
        with pytest.raises(OSError, match="disk full"):
            run_job(spec)
    assert listing("m") == [] and listing("l") == []
    if store.kind != "s3":  # (whose labels commit may remove a folder marker: no matter)
        assert store.fs.isdir(store.path("m")) and store.fs.isdir(store.path("l"))
    assert not store.fs.exists(store.path("p.png"))
    assert run_job(spec)["n_rows"] == 300  # the rerun is not refused


def test_a_plot_of_an_unknown_format_is_refused_before_the_input_is_opened(local_store):
    url, _ = write_dataset(local_store, n=300)
    for spec in (fit_spec(url, output={"plot": local_store.url("p.jpg")}),
                 {"job": {"kind": "sweep", "input": {"url": url}, "k": [2, 3],
                          "output": {"plot": local_store.url("elbow")}}}):
        with pytest.raises(ValueError, match=r"PNG, PDF or SVG, chosen by its extension"):
            with mock.patch("dask_kmeans.io.open_parquet", side_effect=AssertionError):
                run_job(spec)
    assert sorted(p.name for p in Path(local_store.url()).iterdir()) == ["train"]


def test_key_columns_named_as_the_label_columns_are_refused_before_the_fit(local_store):
    url, df = write_dataset(local_store, n=300)
    renamed = df.rename(columns={"customer_id": "distance"})
    local_store.write_parquet("renamed/part-0.parquet", renamed)
    spec = fit_spec(local_store.url("renamed"),
                    input={"url": local_store.url("renamed"), "key_columns": ["distance"]},
                    output={"model": local_store.url("m"), "labels": local_store.url("l")})
    with pytest.raises(ValueError, match=r"\['distance'\] clash with the labels' columns"):
        run_job(spec)
    assert not Path(local_store.url("m")).exists() and not Path(local_store.url("l")).exists()


def test_errors_name_the_problem_without_credentials(store, client):
    url, _ = write_dataset(store, n=300)
    opts = store.storage_options
    cases = [
        (fit_spec(store.url("missing"), input={"url": store.url("missing"),
                                                "storage_options": opts}),
         FileNotFoundError, "missing"),
        (fit_spec(url, input={"url": url, "columns": ["age", "segment"],
                              "storage_options": opts}),
         ValueError, "'segment'"),
        (fit_spec(url, input={"url": url, "storage_options": opts},
                  params={"n_clusters": 301}),
         ValueError, "n_clusters=301"),
        ({"job": {"kind": "sweep", "input": {"url": url, "storage_options": opts},
                  "k": [2, 400], "output": {"table": store.url("t.csv")}}},
         ValueError, "k=400 is more than the 300 rows"),
    ]
    for spec, error, text in cases:
        with pytest.raises(error) as info:
            run_job(spec)
        assert text in str(info.value)
        assert store.secret not in str(info.value)


def test_the_s3_example_runs_with_credentials_from_the_environment(s3_bucket, client,
                                                                    monkeypatch):
    url, df = write_dataset(s3_bucket)
    opts = s3_bucket.storage_options
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", opts["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", opts["secret"])
    # The workers are separate processes: they get the credentials with the job's options,
    # which here hold none, so they are handed the environment's the way a deployment would.
    client.run(lambda: __import__("os").environ.update(
        AWS_ACCESS_KEY_ID=opts["key"], AWS_SECRET_ACCESS_KEY=opts["secret"]))
    try:
        spec = load_job(ROOT / "jobs" / "fit_s3.yaml", [
            f"input.url={url}", f"input.storage_options.endpoint_url={opts['endpoint_url']}",
            f"output.model={s3_bucket.url('model')}", f"output.labels={s3_bucket.url('labels')}",
            "params.n_clusters=3", "input.columns=[age, income, score]"])
        result = run_job(spec)
    finally:
        client.run(lambda: [__import__("os").environ.pop(k, None)
                            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")])
    assert result["model"] == s3_bucket.url("model")
    ref = reference_fit(url, opts)
    model = dk.load(s3_bucket.url("model"), storage_options=opts)
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-7)
    assert len(dk.read_labels(result["labels"], storage_options=opts)) == len(df)


# --------------------------------------------------------------------------- submitted jobs


def test_a_submitted_job_gets_every_local_output_path_absolute(tmp_path, monkeypatch):
    """Workers have their own current directory: the model, labels, table and plot paths
    (and the input and checkpoint) are resolved where the job was submitted."""
    from dask_kmeans.jobs import _for_cluster

    monkeypatch.chdir(tmp_path)
    fit = validate_job(fit_spec("in", params={"n_clusters": 2, "checkpoint": "ck"},
                                output={"model": "m", "labels": "l", "plot": "c.png"}))
    sweep = validate_job({"job": {"kind": "sweep", "input": {"url": "s3://b/in"}, "k": [2],
                                  "output": {"table": "t.csv", "plot": "e.png"}}})
    job = _for_cluster(fit)["job"]
    assert [job["output"][k] for k in ("model", "labels", "plot")] == \
        [str(tmp_path / n) for n in ("m", "l", "c.png")]
    assert job["input"]["url"] == str(tmp_path / "in")
    assert job["params"]["checkpoint"] == str(tmp_path / "ck")
    job = _for_cluster(sweep)["job"]
    assert [job["output"][k] for k in ("table", "plot")] == \
        [str(tmp_path / "t.csv"), str(tmp_path / "e.png")]
    assert job["input"]["url"] == "s3://b/in"


def wait_for(job_id, client, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = job_status(job_id, client)
        if record["state"] not in ("submitted", "running"):
            return record
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish in {timeout} s: {record}")


def test_submit_runs_the_job_on_the_cluster(local_store, client, monkeypatch):
    url, _ = write_dataset(local_store, n=900)
    # Relative paths are made absolute where the job is submitted.
    monkeypatch.chdir(local_store.url())
    spec = fit_spec("train", input={"url": "train", "columns": FEATURES,
                                    "storage_options": local_store.storage_options},
                    params={"n_clusters": 3, "random_state": 0},
                    output={"model": "model", "labels": "labels"})
    job_id = submit_job(spec, client)
    assert job_id.startswith("fit-")
    record = wait_for(job_id, client)
    assert record["state"] == "finished", record
    assert record["kind"] == "fit" and record["worker"] in client.scheduler_info()["workers"]
    result = record["result"]
    assert result["model"] == local_store.url("model")
    ref = reference_fit(url, None)
    model = dk.load(result["model"])
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-7)
    assert no_secret(record)

    # A job that fails records why, without credentials.
    job_id = submit_job(spec, client)
    record = wait_for(job_id, client)
    assert record["state"] == "failed"
    assert record["error"].startswith("FileExistsError: ") and "already exists" in record["error"]
    assert no_secret(record)

    with pytest.raises(UnknownJobError, match="no job 'fit-000000000000'"):
        job_status("fit-000000000000", client)


def _fit_with_labels(store, overwrite=False):
    """A validated fit spec writing a model and labels into ``store``, and their URLs."""
    url, _ = write_dataset(store, n=900)
    model, labels = store.url("model"), store.url("labels")
    spec = validate_job(fit_spec(url, input={"url": url, "columns": FEATURES,
                                             "key_columns": ["customer_id"],
                                             "storage_options": store.storage_options},
                                 params={"n_clusters": 3, "random_state": 0},
                                 output={"model": model, "labels": labels,
                                         "overwrite": overwrite}))
    return spec, model, labels


def test_a_rerun_replaces_only_the_outputs_its_earlier_attempt_noted(local_store, client):
    """When a job's worker dies, the scheduler runs the job task again with the same id.
    That attempt first removes what the earlier one noted in the record before writing
    (``claimed``) where nothing was before the job, whole or half written, and nothing
    else; so when it fails, those outputs are gone, as a failed first attempt leaves none;
    and a job whose record says it ended (its worker died before the scheduler heard) is
    not run again (from a review: a rerun replaced an output claimed as there before, kept
    the dead attempt's outputs when it failed, and turned a finished job into a failed
    one)."""
    from dask_kmeans.jobs import METADATA_KEY, _for_cluster, _run_submitted, run_job

    spec, model, labels = _fit_with_labels(local_store)
    write_both = validate_job({"job": {**spec["job"],
                                       "output": {**spec["job"]["output"], "overwrite": True}}})
    run_job(write_both)  # both outputs exist, as a dead attempt would leave them

    def attempt(job_id, state, claimed):
        record = {"job_id": job_id, "kind": "fit", "state": "submitted"}
        # What the dead attempt left on the scheduler.
        client.set_metadata([METADATA_KEY, job_id], {**record, "state": state,
                                                     "claimed": claimed})
        client.submit(_run_submitted, _for_cluster(spec), job_id, record, None,
                      pure=False).result()
        return client.get_metadata([METADATA_KEY, job_id])

    def there(url):
        return local_store.fs.exists(local_store.fs._strip_protocol(url))

    # The labels were there before the job: not its own to replace. The model it made goes.
    record = attempt("fit-rerun-a", "running", {labels: True, model: False})
    assert record["state"] == "failed" and record["attempts"] == 2
    assert record["error"].startswith("FileExistsError: ") and "labels" in record["error"]
    assert there(labels) and not there(model)

    run_job(write_both)
    before = local_store.fs.cat(local_store.path("labels", "_SUCCESS"))
    # The worker died while saving the model: files without their marker, which a write
    # refuses even with overwrite (the rerun failed on them; a review of CI's run).
    local_store.fs.rm(local_store.path("model", "_SUCCESS"))
    record = attempt("fit-rerun-b", "running", {labels: False, model: False})
    assert record["state"] == "finished", record
    assert record["attempts"] == 2 and record["claimed"] == {labels: False, model: False}
    assert local_store.fs.cat(local_store.path("labels", "_SUCCESS")) != before  # new commit
    assert dk.load(model).n_clusters == 3

    # A job that ended already is not run again: its record stands.
    ended = {"job_id": "fit-ended", "kind": "fit", "state": "finished", "claimed": {}}
    client.set_metadata([METADATA_KEY, "fit-ended"], ended)
    client.submit(_run_submitted, _for_cluster(spec), "fit-ended", {"job_id": "fit-ended"},
                  None, pure=False).result()
    assert client.get_metadata([METADATA_KEY, "fit-ended"]) == ended

    # A first attempt notes what it writes, may replace nothing and removes nothing.
    record = attempt("fit-first", "submitted", {})
    assert record["state"] == "failed" and record["attempts"] == 1 and record["claimed"] == {}
    assert there(labels) and there(model)


def test_a_rerun_with_overwrite_removes_what_its_dead_attempt_half_replaced(local_store,
                                                                            client):
    """With output.overwrite, a model there before the job and half replaced by the dead
    attempt (no marker) was refused by the rerun even with overwrite: the job may replace
    it, so the rerun removes it first (from a review)."""
    from dask_kmeans.jobs import METADATA_KEY, _for_cluster, _run_submitted, run_job

    spec, model, labels = _fit_with_labels(local_store, overwrite=True)
    run_job(spec)
    local_store.fs.rm(local_store.path("model", "_SUCCESS"))
    record = {"job_id": "fit-overwrite", "kind": "fit", "state": "submitted"}
    client.set_metadata([METADATA_KEY, "fit-overwrite"],
                        {**record, "state": "running", "claimed": {labels: True, model: True}})
    client.submit(_run_submitted, _for_cluster(spec), "fit-overwrite", record, None,
                  pure=False).result()
    record = client.get_metadata([METADATA_KEY, "fit-overwrite"])
    assert record["state"] == "finished" and record["attempts"] == 2, record
    assert dk.load(model).n_clusters == 3


def test_a_failed_rerun_removes_its_outputs_where_nothing_was_before_the_job(local_store):
    """What was there before the job is what its first attempt noted, not what the dead
    attempt left: a rerun that failed after writing over a leftover it could not remove
    took the leftover for a previous output and kept its own (from a review)."""
    from dask_kmeans.jobs import _CLAIMS, _Claims, _new_outputs_undone

    labels = local_store.url("labels")
    local_store.fs.makedirs(local_store.path("labels"), exist_ok=True)
    local_store.fs.pipe_file(local_store.path("labels", "part-0.parquet"), b"left over")
    job = {"input": {"url": labels, "storage_options": local_store.storage_options},
           "output": {"storage_options": None}}
    token = _CLAIMS.set(_Claims({labels: False}, lambda claimed: None))
    try:
        with pytest.raises(RuntimeError), _new_outputs_undone(job, [labels]) as made:
            made(labels, labels)
            raise RuntimeError("the model save failed")
    finally:
        _CLAIMS.reset(token)
    assert not local_store.fs.exists(local_store.path("labels"))


def test_the_scheduler_keeps_the_most_recently_ended_job_records():
    """Records of finished jobs, each with its result summary, were kept until the scheduler
    restarted. A job's end now stores its record on the scheduler and forgets those of ended
    jobs beyond the newest ``keep``, in the order the scheduler saw them end."""
    from types import SimpleNamespace

    from dask_kmeans.jobs import FORGOTTEN_KEY, METADATA_KEY, _ender

    def rec(state, second=None):
        return {"state": state,
                **({"finished": f"2026-01-01T00:00:{second:02d}+00:00"} if second else {})}

    records = {"c": rec("running"), "d": rec("submitted"),
               "old": rec("finished", 9)}  # stored plainly, without a number
    scheduler = SimpleNamespace(task_metadata={METADATA_KEY: records})
    assert _ender("a", rec("finished", 5), 2)(scheduler) == 0
    # b's worker clock is behind: b still counts as newer than a.
    assert _ender("b", rec("failed", 1), 2)(scheduler) == 1
    assert sorted(records) == ["a", "b", "c", "d"]  # running and submitted jobs stay
    info = scheduler.task_metadata[FORGOTTEN_KEY]
    assert (info["count"], info["keep"], info["newest"]) == (1, 2, "2026-01-01T00:00:09+00:00")
    assert _ender("e", rec("finished", 3), 1)(scheduler) == 2
    assert sorted(records) == ["c", "d", "e"] and records["e"] == rec("finished", 3)
    info = scheduler.task_metadata[FORGOTTEN_KEY]
    assert (info["count"], info["keep"], info["seq"], info["order"]) == (3, 1, 3, {"e": 3})
    assert _ender("f", rec("failed", 4), None)(scheduler) == 0  # null keeps every record
    assert sorted(records) == ["c", "d", "e", "f"]
    fresh = SimpleNamespace(task_metadata={METADATA_KEY: "not a mapping"})
    assert _ender("g", rec("finished", 2), 1)(fresh) == 0
    assert fresh.task_metadata[METADATA_KEY] == {"g": rec("finished", 2)}


def test_the_scheduler_runs_the_job_end_without_importing_dask_kmeans(tmp_path):
    """The function travels pickled by value: a scheduler without dask_kmeans runs it."""
    import subprocess
    import sys

    from dask_kmeans.jobs import _ender

    (tmp_path / "end.pkl").write_bytes(cloudpickle.dumps(_ender("a", {"state": "failed"}, 1)))
    script = ("import pickle, sys, types; sys.modules['dask_kmeans'] = None\n"
              "end = pickle.loads(open(sys.argv[1], 'rb').read())\n"
              "s = types.SimpleNamespace(task_metadata={})\n"
              "end(s); print(sorted(s.task_metadata['dask-kmeans-jobs']))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "end.pkl")],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "['a']"), out.stderr


def test_a_scheduler_that_refuses_the_job_end_keeps_every_record_with_a_warning(caplog):
    from dask_kmeans.jobs import METADATA_KEY, _record_end

    class Refusing:
        stored = {}

        def run_on_scheduler(self, function):
            raise RuntimeError("run_on_scheduler is not allowed here")

        def set_metadata(self, keys, value):
            self.stored[tuple(keys)] = value

    client = Refusing()
    with caplog.at_level("WARNING", logger="dask_kmeans.jobs"):
        _record_end(client, "fit-1", {"state": "finished"}, 5)
    assert "the scheduler keeps every job record: forgetting old ones failed (RuntimeError: " \
        "run_on_scheduler is not allowed here)" in caplog.text
    assert client.stored == {(METADATA_KEY, "fit-1"): {"state": "finished"}}


@pytest.mark.parametrize("value", [0, -3, "ten", 2.5, True])
def test_keep_finished_must_be_a_positive_int_or_null(value):
    from dask_kmeans.jobs import JobConfigError, keep_finished

    assert keep_finished() == 100
    with dask.config.set({"dask-kmeans.jobs.keep-finished": value}):
        with pytest.raises(JobConfigError, match=r"^dask-kmeans\.jobs\.keep-finished: "
                           r"expected an int >= 1 or null, got "):
            keep_finished()
    with dask.config.set({"dask-kmeans.jobs.keep-finished": None}):
        assert keep_finished() is None


def no_secret(record) -> bool:
    return LOCAL_SECRET not in json.dumps(record)


# --------------------------------------------------------------------------- docs/cli.md

DOC = ROOT / "docs" / "cli.md"


def doc_yaml_blocks() -> list[str]:
    import re

    return re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)


def test_docs_yaml_examples_are_valid_job_specs():
    blocks = doc_yaml_blocks()
    kinds = [validate_job(load_yaml(b), base_dir=DOC.parent)["job"]["kind"]
             for b in blocks]
    assert set(kinds) == {"fit", "predict", "sweep"}


def test_docs_explain_every_key():
    text = DOC.read_text()

    def walk(node, path):
        for key, sub in node.get("keys", {}).items():
            name = f"{path}.{key}" if path else key
            if "keys" in sub:
                walk(sub, name)
            else:
                assert f"`{name}`" in text, f"docs/cli.md does not mention `{name}`"

    for variant in SCHEMA["keys"]["job"]["variants"].values():
        walk(variant, "")


def test_the_demo_jobs_run_on_the_demo_data(tmp_path, client, monkeypatch):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), "--write-parquet",
                          "demo-output/customers", "--rows", "3000"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "wrote 3,000 customers to demo-output/customers" in out.stdout
    # The specs' relative paths are relative to where the command runs.
    monkeypatch.chdir(tmp_path)
    fit = run_job(load_job(ROOT / "jobs" / "demo.yaml"))
    assert fit["n_rows"] == 3000 and fit["model"] == "demo-output/model"
    model = dk.load("demo-output/model")
    assert model.get_params()["standardize"] is True
    # Five segments of customers: every centre has a distinct mean age.
    assert len(np.unique(np.round(model.cluster_centers_[:, 0]))) == 5

    pred = run_job(load_job(ROOT / "jobs" / "predict.yaml"))
    a = dk.read_labels(fit["labels"]).compute()
    b = dk.read_labels(pred["labels"]).compute()
    np.testing.assert_array_equal(a["cluster"], b["cluster"])
    np.testing.assert_array_equal(a["customer_id"], np.arange(3000))

    sweep = run_job(load_job(ROOT / "jobs" / "sweep.yaml", ["k=[2, 5]"]))
    assert sweep["results"][1]["inertia"] == pytest.approx(fit["inertia"], rel=1e-3)  # shared seeds
    assert pd.read_csv(tmp_path / "demo-output" / "sweep.csv")["k"].tolist() == [2, 5]


def test_a_fit_with_labels_and_profile_sends_each_task_one_way(local_store, client, caplog):
    """The fit persists the parts merged into larger chunks, then the labels and the
    profile read them again: each part's read task must be the same in every graph, or
    the scheduler warns of a "different run_spec" (which can deadlock), as every
    command-line fit printed."""
    url, df = write_dataset(local_store, parts=12)
    caplog.set_level(logging.WARNING, logger="distributed.scheduler")
    fit = run_job({"job": {"kind": "fit",
                           "input": {"url": url, "columns": FEATURES,
                                     "key_columns": ["customer_id"]},
                           "params": {"n_clusters": 3, "random_state": 0},
                           "output": {"model": local_store.url("model"),
                                      "labels": local_store.url("labels")}}})
    assert fit["profile"] and fit["n_rows"] == len(df)
    assert "run_spec" not in caplog.text


def test_outputs_that_cannot_be_written_or_would_clobber_files_are_refused_first(local_store):
    """Found before any work, nothing written: a labels directory holding files that are
    not our output (its commit replaced and deleted the user's part-N.parquet files, and
    exited 0), even with overwrite; a file where an output directory or a parent must be
    (the fit ran, committed the model and labels, then failed on the plot)."""
    url, _ = write_dataset(local_store, n=300)
    root = Path(local_store.url(""))
    theirs = root / "theirs"
    theirs.mkdir()
    for i in range(3):
        (theirs / f"part-{i}.parquet").write_bytes(b"user data")
    blocker = root / "f"
    blocker.write_text("a file")
    cases = [
        ({"labels": str(theirs)}, FileExistsError, r"holds files that are not dask_kmeans"),
        ({"labels": str(theirs), "overwrite": True}, FileExistsError,
         r"such as 'part-0\.parquet'"),
        ({"model": str(root / "m"), "plot": str(blocker / "k3.png")}, NotADirectoryError,
         r"f is a file, so .*k3\.png cannot be made"),
        ({"model": str(root / "m"), "labels": str(blocker)}, NotADirectoryError,
         r"f is a file; the output is a directory"),
        ({"model": str(blocker / "m")}, NotADirectoryError, r"f is a file, so"),
        ({"model": str(root / "m"), "plot": str(root / "dir.png")}, IsADirectoryError,
         r"dir\.png is a directory; the output is a file"),
    ]
    (root / "dir.png").mkdir()
    for output, error, message in cases:
        spec = fit_spec(url, params={"n_clusters": 2, "random_state": 0}, output=output)
        with pytest.raises(error, match=message):
            run_job(spec)  # no client: nothing may get as far as the fit
        assert not (root / "m").exists()
    assert sorted(p.name for p in theirs.iterdir()) == [f"part-{i}.parquet" for i in range(3)]
    assert all(p.read_bytes() == b"user data" for p in theirs.iterdir())
    with pytest.raises(FileExistsError, match="not dask_kmeans output"):
        dk.KMeans(2, random_state=0).fit(np.eye(3)).save(theirs, overwrite=True)


def test_a_lost_job_names_the_outputs_it_may_have_left(monkeypatch):
    """A job whose worker died more often than the scheduler allows was "lost" with no word
    of its committed labels and model, left where nothing was before; the same job submitted
    again then failed with "already exists"."""
    from dask_kmeans import jobs

    record = {"state": "running", "kind": "fit",
              "claimed": {"/data/out/labels": False, "/data/out/model": False,
                          "/data/out/old.png": True}}

    class Scheduler:
        address = "tcp://127.0.0.1:1"

    class Client:
        scheduler = Scheduler()

        def get_metadata(self, keys, default=None):
            return record

    monkeypatch.setattr(jobs, "_task_state", lambda client, key: (None, None))
    status = jobs.job_status("fit-1", Client())
    assert status["state"] == "lost"
    assert status["error"] == (
        "the job's task is no longer on the scheduler and never finished; what it may have "
        "written where nothing was before the job is left as it is: /data/out/labels, "
        "/data/out/model (remove it, or set output.overwrite: true, before running the job "
        "again)")
    record["claimed"] = {}
    assert jobs.job_status("fit-1", Client())["error"] == (
        "the job's task is no longer on the scheduler and never finished")
