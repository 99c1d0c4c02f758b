"""The dask-kmeans command: click's CliRunner in this process, and real subprocesses."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import dask
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

import dask_kmeans as dk
from dask_kmeans.cli import main
from tests.conftest import blobs, png_size

BIN = Path(sys.executable).parent
FEATURES = ["age", "income", "score"]
MARKER = "cli-marker-secret-93b1f07e"
# LocalFileSystem ignores options it does not know: the marker rides along to every read.
SECRET_OPTION = f"secret_token={MARKER}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three Parquet parts: a key, three features, a text column; and a 1-worker config."""
    root = tmp_path_factory.mktemp("cli")
    X = blobs(n=1200, d=3, k=3, seed=0)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "customer_id", np.arange(len(df)))
    df["segment"] = "x"
    (root / "train").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(root / "train" / f"part-{i}.parquet", index=False)
    config = root / "local.yaml"
    # Threads of this process: starts in a fraction of a second.
    config.write_text(yaml.safe_dump({"cluster": {"kind": "local", "local": {
        "n_workers": 1, "threads_per_worker": 2, "processes": False}}}))
    return {"root": root, "url": str(root / "train"), "frame": df, "config": str(config)}


def invoke(*args):
    # A LocalCluster in this process limits BLAS threads on its workers for good: restore.
    with threadpool_limits(limits=None):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, code):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in result.stderr
    return lines[0]


def no_marker(*texts, root=None):
    for text in texts:
        assert MARKER not in text
    if root is not None:
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert MARKER.encode() not in path.read_bytes(), path


def reference(url, k=3):
    return dk.KMeans(k, random_state=0).fit(dk.open_parquet(url, FEATURES))


# --------------------------------------------------------------------------- fit, predict


def test_fit_then_predict(data, tmp_path):
    out = tmp_path / "out"
    result = invoke("fit", data["url"], "--k", 3, "--key", "customer_id", "--seed", 0,
                    "--output", out / "model", "--labels", out / "labels",
                    "--storage-option", SECRET_OPTION, "--cluster", data["config"], "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["features"] == FEATURES, "numeric columns that are not keys"
    assert summary["model"] == str(out / "model") and summary["labels"] == str(out / "labels")

    # The same centres as the Python API with the same seed.
    ref = reference(data["url"])
    model = dk.load(str(out / "model"))
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-7)
    assert summary["inertia"] == pytest.approx(ref.inertia_, rel=1e-7)
    assert summary["n_iter"] == ref.n_iter_
    labels = dk.read_labels(str(out / "labels")).compute()
    np.testing.assert_array_equal(labels["customer_id"], data["frame"]["customer_id"])
    np.testing.assert_array_equal(labels["cluster"], ref.predict(data["frame"][FEATURES]))

    result = invoke("predict", out / "model", data["url"], "--output", out / "predicted",
                    "--key", "customer_id", "--storage-option", SECRET_OPTION,
                    "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    assert f"labels:  {out / 'predicted'}" in result.stdout
    again = dk.read_labels(str(out / "predicted")).compute()
    np.testing.assert_array_equal(again["cluster"], labels["cluster"])

    # The human summary, and --overwrite.
    result = invoke("fit", data["url"], "--k", 3, "--seed", 0, "--columns", "age,income,score",
                    "--output", out / "model", "--overwrite", "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"fit: k=3 on 1,200 rows of {data['url']}"
    assert lines[1] == f"iterations: {ref.n_iter_}"
    assert lines[3] == f"model:      {out / 'model'}"
    assert lines[4] == "labels:     not written (no --labels)"
    no_marker(result.stdout, result.stderr, root=out)


def test_columns_may_be_repeated(data):
    """--columns given twice adds up, as --key does (click kept only the last one)."""
    result = invoke("fit", data["url"], "--k", 2, "--seed", 1, "--columns", "age",
                    "--columns", "income,score", "--json", "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["features"] == ["age", "income", "score"]


def test_missing_columns_are_named_by_what_asked_for_them(data, tmp_path):
    """Errors said "requested by 'columns'" (and 'key_columns') on the command line, where
    neither was given by that name, and for a predict whose input lacks a feature of the
    model, which nobody had named at all."""
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--columns", "age,incme",
                                 "--cluster", data["config"]), 1)
    assert "Column(s) ['incme'] requested by input.columns (--columns) not found" in line
    assert "did you mean 'income'?" in line
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--key", "custid",
                                 "--cluster", data["config"]), 1)
    assert "Column(s) ['custid'] requested by input.key_columns (--key) not found" in line
    model = tmp_path / "model"
    assert invoke("fit", data["url"], "--k", 2, "--output", model, "--key", "customer_id",
                  "--cluster", data["config"]).exit_code == 0
    data["frame"].drop(columns=["score"]).to_parquet(tmp_path / "no-score.parquet")
    line = one_line_error(invoke("predict", model, tmp_path / "no-score.parquet", "--output",
                                 tmp_path / "labels", "--cluster", data["config"]), 1)
    assert "Column(s) ['score'] requested by the model's features not found" in line
    assert not (tmp_path / "labels").exists()
    # The Python API keeps the parameters' names.
    with pytest.raises(ValueError, match=r"\['incme'\] requested by 'columns'"):
        dk.open_parquet(data["url"], ["age", "incme"])


def test_fit_without_output_prints_the_centres(data):
    result = invoke("fit", data["url"], "--k", 2, "--seed", 1, "--columns", "age",
                    "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    i = lines.index("model:      not saved (no --output); centres:")
    centres = sorted(float(line) for line in lines[i + 1:i + 3])
    ref = dk.KMeans(2, random_state=1).fit(dk.open_parquet(data["url"], ["age"]))
    np.testing.assert_allclose(centres, np.sort(ref.cluster_centers_[:, 0]), rtol=1e-5)
    assert lines[i + 3].startswith("labels:")


def test_fit_prints_and_writes_the_profile_and_the_scatter(data, tmp_path):
    out = tmp_path / "out"
    result = invoke("fit", data["url"], "--k", 3, "--seed", 0, "--columns", "age,income,score",
                    "--output", out / "model", "--plot", out / "scatter.png",
                    "--plot-features", "income,age", "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    ref = reference(data["url"])
    expected = dk.profile(ref, data["frame"][FEATURES])
    # The profile against a pandas groupby of the same rows by the reference's labels.
    groups = data["frame"][FEATURES].groupby(ref.predict(data["frame"][FEATURES]))
    written = pd.read_csv(out / "model" / "profile.csv", index_col="cluster")
    np.testing.assert_array_equal(written["size"], groups.size())
    np.testing.assert_allclose(written[[f"{f}_mean" for f in FEATURES]],
                               groups.mean().to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(written[[f"{f}_std" for f in FEATURES]],
                               groups.std(ddof=0).to_numpy(), rtol=1e-7)
    assert written["description"].tolist() == expected["description"].tolist()
    markdown = (out / "model" / "profile.md").read_text()
    assert markdown.startswith("| cluster | size | share |") and markdown.count("\n") == 5
    # Printed after the summary, one line per cluster under a header and a rule.
    lines = result.stdout.splitlines()
    assert f"profile:    {out / 'model' / 'profile.csv'}" in lines
    assert f"plot:       {out / 'scatter.png'}" in lines
    table = lines[lines.index("clusters:") + 1:]
    assert table[0].startswith("cluster  size  share  age (mean ± std)")
    for cluster, row in written.iterrows():
        line = table[2 + cluster]
        assert line.split()[:2] == [str(cluster), f"{row['size']:,}"]
        assert line.endswith(row["description"])
    assert png_size(out / "scatter.png") == (800, 600)
    dk.load(str(out / "model"))  # the profile files leave the model loadable

    # --no-profile: no extra pass, nothing printed or written.
    result = invoke("fit", data["url"], "--k", 3, "--seed", 0, "--no-profile", "--json",
                    "--output", out / "model2", "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["profile"] is None and summary["profile_files"] == []
    assert not (out / "model2" / "profile.csv").exists()


def test_fit_shows_progress_bars_and_a_summary_on_stderr(data):
    result = invoke("fit", data["url"], "--k", 3, "--seed", 0, "--columns", "age,income,score",
                    "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    ref = reference(data["url"])
    lines = result.stderr.splitlines()
    # Not a terminal: each bar is printed once, in its final state.
    (init,) = [line for line in lines if line.startswith("k-means||  ")]
    assert " 6/6 " in init and "candidates" in init, init  # 5 rounds + the weights pass
    (lloyd,) = [line for line in lines if line.startswith("Lloyd")]
    assert f" {ref.n_iter_}/{ref.n_iter_} " in lloyd and "inertia" in lloyd, lloyd
    assert lines[-1].startswith("k-means|| 6 passes, ")
    assert lines[-1].endswith(f"; {ref.n_iter_} Lloyd iterations, converged")
    assert "dashboard:" not in result.stderr, "this cluster serves no dashboard"
    assert "clusters:" in result.stdout

    result = invoke("fit", data["url"], "--k", 3, "--seed", 0, "--init", "random",
                    "--n-init", 2, "--max-iter", 1, "--tol", 0, "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    assert [line.split()[:2] for line in result.stderr.splitlines()[:2]] == [
        ["Lloyd", "1/2"], ["Lloyd", "2/2"]]
    assert re.fullmatch(r"1 Lloyd iterations, stopped at max_iter=1 before converging; run "
                        r"[12] best of 2", result.stderr.splitlines()[-1])

    result = invoke("fit", data["url"], "--k", 3, "--no-progress", "--cluster", data["config"])
    assert result.exit_code == 0 and result.stderr == ""


def test_the_summary_of_several_runs_is_that_of_the_run_kept():
    """With --n-init 3 the summary gave the last run's iterations (45) for a fit that kept
    run 2 (30 iterations)."""
    from rich.console import Console

    from dask_kmeans._progress import listening
    from dask_kmeans.cli import _ProgressDisplay

    X = blobs(n=3000, d=2, k=6, seed=4, spread=1.5)
    for seed in range(6):
        display = _ProgressDisplay(Console(file=open(os.devnull, "w")))  # noqa: SIM115
        with display, listening(display):
            km = dk.KMeans(6, init="random", n_init=3, random_state=seed, tol=0).fit(X)
        iterations = {run: events["iteration"][0] for run, events in display.runs.items()}
        if iterations[display.best] != iterations[3]:
            break
    else:
        pytest.skip("every seed kept a run with as many iterations as the last")
    assert iterations[display.best] == km.n_iter_
    assert display.summary() == (f"{km.n_iter_} Lloyd iterations, converged; run "
                                 f"{display.best} best of 3")


def test_fit_passes_the_kmeans_parallel_options_on(data):
    result = invoke("fit", data["url"], "--k", 3, "--seed", 0, "--init-rounds", 2,
                    "--oversampling-factor", 0.5, "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    (init,) = [line for line in result.stderr.splitlines() if line.startswith("k-means||  ")]
    assert " 3/3 " in init, init  # 2 rounds + the weights pass
    # l = 0.5 k = 1.5 rows a round: a handful of candidates, not the ~13 of l = 2k.
    assert int(re.search(r"(\d+) candidates", init).group(1)) <= 6, init


@pytest.mark.parametrize("command", ["fit", "submit"])
def test_a_scheduler_address_given_as_cluster_points_to_scheduler(data, command, tmp_path):
    """It exited 3 ("cluster unreachable") advising connect(scheduler=...), and submit said
    "cluster config file not found: tcp:/127.0.0.1:1"."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "fit", "input": {"url": data["url"]}, "params": {"n_clusters": 2},
        "output": {"model": str(tmp_path / "m")}}}))
    args = ("fit", data["url"], "--k", 2) if command == "fit" else ("submit", job)
    result = invoke(*args, "--cluster", "tcp://127.0.0.1:1")
    text = one_line_error(result, 2)
    assert "looks like a scheduler address, not a cluster config file: pass it as " \
        "--scheduler tcp://127.0.0.1:1" in text, text


def test_a_cluster_nobody_named_is_the_scheduler_at_dask_scheduler_address(
        data, tmp_path, local_cluster_client):
    """As distributed's Client() does, the commands find the scheduler in Dask's
    scheduler-address setting (DASK_SCHEDULER_ADDRESS) when neither --cluster, --scheduler
    nor the job names one. They used to start a local cluster, and submit refused to run."""
    from dask_kmeans.jobs import job_status

    address = local_cluster_client.scheduler.address
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "fit", "input": {"url": data["url"], "columns": FEATURES},
        "params": {"n_clusters": 3, "random_state": 0},
        "output": {"model": str(tmp_path / "m")}}}))
    with dask.config.set({"scheduler-address": address}):
        result = invoke("submit", job)
        assert result.exit_code == 0, result.stderr
        job_id = result.stdout.strip()
        deadline = time.monotonic() + 120
        while (record := job_status(job_id, local_cluster_client))["state"] in (
                "submitted", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert record["state"] == "finished", record
        result = invoke("status", job_id)
        assert result.exit_code == 0 and json.loads(result.stdout)["state"] == "finished"
        # fit runs its tasks there too: the scheduler saw them.
        before = local_cluster_client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.transition_counter)
        result = invoke("fit", data["url"], "--k", 3, "--columns", ",".join(FEATURES))
        assert result.exit_code == 0, result.stderr
        after = local_cluster_client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.transition_counter)
        assert after > before
    with dask.config.set({"scheduler-address": address.removeprefix("tcp://")}):
        # host:port, as distributed takes it: over TCP.
        assert invoke("status", job_id).exit_code == 0
    # So does --scheduler (it was refused: "expected an address like tcp://host:port").
    result = invoke("status", job_id, "--scheduler", address.removeprefix("tcp://"))
    assert result.exit_code == 0, result.stderr
    with dask.config.set({"scheduler-address": "udp://not an address"}):
        line = one_line_error(invoke("fit", data["url"], "--k", 2), 2)
    assert "scheduler-address (the Dask setting; DASK_SCHEDULER_ADDRESS)" in line, line
    with dask.config.set({"scheduler-address": "notanaddress"}):
        line = one_line_error(invoke("fit", data["url"], "--k", 2), 2)
    assert "got 'notanaddress'" in line, line  # what was given, not 'tcp://notanaddress'

    with dask.config.set({"scheduler-address": f"tcp://127.0.0.1:{free_port()}"}):
        line = one_line_error(invoke("fit", data["url"], "--k", 2, "--timeout", "1s"), 3)
    assert "could not connect to the Dask scheduler at tcp://127.0.0.1:" in line


@pytest.mark.parametrize("args, wanted", [
    (("--oversampling-factor", 0), "Invalid value for '--oversampling-factor': 0.0 is not in "
                                   "the range x>0."),
    (("--oversampling-factor", "inf"), "Invalid value for '--oversampling-factor': expected a "
                                       "finite number, got inf"),
    (("--init-rounds", 0), "Invalid value for '--init-rounds': 0 is not in the range x>=1."),
])
@pytest.mark.parametrize("command", ["fit", "sweep"])
def test_bad_kmeans_parallel_options_are_refused(data, command, args, wanted):
    k = ("--k", 3) if command == "fit" else ("--k", "2..3")
    result = invoke(command, data["url"], *k, *args, "--cluster", data["config"])
    assert result.exit_code == 2 and wanted in result.stderr, result.stderr


def test_sweep_passes_the_kmeans_parallel_options_on(data):
    result = invoke("sweep", data["url"], "--k", "2..3", "--no-plot", "--seed", 0,
                    "--init-rounds", 2, "--oversampling-factor", 1, "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    (init,) = [line for line in result.stderr.splitlines() if line.startswith("k-means||  ")]
    assert " 3/3 " in init, init  # 2 rounds + the weights pass
    # l = 1 * 3 rows a round for the largest K: about 7 candidates, not the ~13 of l = 2k.
    assert int(re.search(r"(\d+) candidates", init).group(1)) <= 9, init


@pytest.mark.parametrize("k", ["2..2000000000", ",".join(map(str, range(1, 1002)))])
def test_sweep_refuses_too_many_values_of_k_at_once(data, k):
    """--k 2..2000000000 was expanded into a Python list until memory ran out."""
    result = invoke("sweep", data["url"], "--k", k, "--no-plot")
    assert result.exit_code == 2, result.stderr
    assert "Invalid value for '--k'" in result.stderr
    assert "a sweep takes at most 1,000" in result.stderr


def test_sweep_leaves_key_columns_out_of_the_features(data):
    """Without --key the integer id column is clustered as a feature, as in fit."""
    def features(*extra):
        result = invoke("sweep", data["url"], "--k", "2", "--no-plot", "--seed", 0, "--json",
                        *extra, "--cluster", data["config"])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["features"]

    assert features("--key", "customer_id") == FEATURES
    assert features() == ["customer_id", *FEATURES]


def test_fit_refuses_a_bad_plot_before_any_work(data, tmp_path, monkeypatch):
    common = ["--output", tmp_path / "model", "--cluster", data["config"]]
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--plot", tmp_path / "p.png",
                                 "--plot-features", "age,height", *common), 1)
    assert "output.plot_features (--plot-features): 'height' is not a feature" in line
    assert "; the features are" in line and "income" in line
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--plot", tmp_path / "p.png",
                                 "--plot-features", "age,incom", *common), 1)
    assert "'incom' is not a feature of this fit; did you mean 'income'? The features" in line
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--plot", tmp_path / "p.png",
                                 "--plot-features", "age", *common), 2)
    assert "job.output.plot_features: expected a list of 2 strings or null, got a list of 1" in line
    (tmp_path / "p.png").write_bytes(b"an earlier plot")
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--plot", tmp_path / "p.png",
                                 *common), 1)
    assert f"{tmp_path / 'p.png'} already exists" in line
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--plot", tmp_path / "q.png",
                                 *common), 1)
    assert 'pip install "dask-kmeans[plot]"' in line
    assert not (tmp_path / "model").exists() and not (tmp_path / "q.png").exists()
    assert (tmp_path / "p.png").read_bytes() == b"an earlier plot"


# --------------------------------------------------------------------------- sweep


def test_sweep_prints_inertia_silhouette_and_a_suggestion_and_saves_the_elbow(data, tmp_path,
                                                                             monkeypatch):
    plot, table = tmp_path / "k" / "elbow.png", tmp_path / "k.csv"
    result = invoke("sweep", data["url"], "--k", "2..5", "--seed", 0, "--columns",
                    "age,income,score", "--plot", plot, "--table", table,
                    "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    ref = dk.sweep(dk.open_parquet(data["url"], FEATURES), range(2, 6), random_state=0)
    lines = result.stdout.splitlines()
    assert lines[0] == f"sweep: 4 values of K on 1,200 rows of {data['url']}"
    assert lines[1].split() == ["k", "inertia", "silhouette", "n_iter"]
    for line, k, inertia, sil in zip(lines[2:6], ref.ks, ref.inertias, ref.silhouettes,
                                     strict=True):
        cells = line.split()
        assert int(cells[0]) == k
        assert float(cells[1].replace(",", "")) == pytest.approx(inertia, rel=1e-5)
        assert float(cells[2]) == pytest.approx(sil, abs=1e-3)
        assert line.endswith("<- suggested") == (k == ref.suggested_k)
    assert lines[6] == f"suggested K: {ref.suggested_k} ({ref.reason})"
    png_size(plot)
    written = pd.read_csv(table)
    np.testing.assert_allclose(written["inertia"], ref.inertias, rtol=1e-9)
    assert "4 models" in result.stderr.splitlines()[-1]

    # A list of K, the default plot name in the working directory, JSON.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = invoke("sweep", data["url"], "--k", "4,2", "--json", "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [r["k"] for r in summary["results"]] == [2, 4]
    assert summary["plot"] == "elbow.png" and summary["table"] is None
    png_size(cwd / "elbow.png")
    again = invoke("sweep", data["url"], "--k", "2..3", "--cluster", data["config"])
    assert "elbow.png already exists" in one_line_error(again, 1)

    result = invoke("sweep", data["url"], "--k", "2,3", "--no-plot", "--no-progress",
                    "--cluster", data["config"])
    assert result.exit_code == 0 and "plot" not in result.stdout and result.stderr == ""
    for bad in ("5..2", "two", "0,3", "2.."):
        result = invoke("sweep", data["url"], "--k", bad)  # click's usage error
        assert result.exit_code == 2 and "Invalid value for '--k'" in result.stderr, bad
    line = one_line_error(invoke("sweep", data["url"], "--k", "2,1300", "--no-plot",
                                 "--cluster", data["config"]), 1)
    assert "k=1300 is more than the 1200 rows" in line


# --------------------------------------------------------------------------- dashboard


class _Page:
    """A one-page HTTP server on loopback, serving ``body`` at every path."""

    def __init__(self, body: bytes, status: int = 200):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.link = f"http://127.0.0.1:{self.server.server_port}/status"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _Client:
    def __init__(self, link):
        self.dashboard_link = link


def test_dashboard_link_only_when_a_dashboard_answers():
    from dask_kmeans.cli import dashboard_link

    page = _Page(b"<html><title>Dask: Status</title></html>")
    missing = _Page(b"<p>Dask needs bokeh>=3.1.0 for the dashboard.</p>")
    off = _Page(b"not found", status=404)
    try:
        assert dashboard_link(_Client(page.link)) == page.link
        assert dashboard_link(_Client(missing.link)) is None
        assert dashboard_link(_Client(off.link)) is None
    finally:
        for server in (page, missing, off):
            server.close()
    assert dashboard_link(_Client(f"http://127.0.0.1:{free_port()}/status")) is None
    assert dashboard_link(_Client("")) is None and dashboard_link(None) is None
    # A real scheduler started without a dashboard answers 404 on its HTTP port.
    from dask_kmeans.cluster import connect

    with threadpool_limits(limits=None), connect(config_or_path={"cluster": {
            "kind": "local", "local": {"n_workers": 1, "processes": False}}}) as client:
        assert client.dashboard_link and dashboard_link(client) is None


def test_column_names_with_a_comma_or_spaces_at_the_ends(data, tmp_path):
    """--columns, --key and --plot-features split on commas and strip spaces, so the
    columns " sp" and "a,b" could not be named (" sp" silently became "sp")."""
    X = blobs(n=600, d=3, k=2, seed=3)
    frame = pd.DataFrame({"id, region": np.arange(600), " sp": X[:, 0], "a,b": X[:, 1],
                          "sp": X[:, 2]})
    (tmp_path / "in").mkdir()
    frame.to_parquet(tmp_path / "in" / "part-0.parquet", index=False)
    url, out, names = str(tmp_path / "in"), tmp_path / "out", [" sp", "a,b"]
    cluster = ("--cluster", data["config"], "--json", "--no-progress")

    result = invoke("fit", url, "--k", 2, "--seed", 0, "--columns", "[' sp', 'a,b']",
                    "--key", "'id, region'", "--output", out / "model",
                    "--labels", out / "labels", "--plot", out / "k2.png",
                    "--plot-features", '["a,b", " sp"]', *cluster)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["features"] == names
    ref = dk.KMeans(2, random_state=0).fit(dk.open_parquet(url, names))
    np.testing.assert_allclose(dk.load(str(out / "model")).cluster_centers_,
                               ref.cluster_centers_, rtol=1e-7)
    labels = dk.read_labels(str(out / "labels")).compute()
    assert list(labels.columns) == ["id, region", "cluster", "distance"]
    np.testing.assert_array_equal(labels["cluster"], ref.labels_)
    png_size(out / "k2.png")

    result = invoke("predict", out / "model", url, "--output", out / "predicted",
                    "--key", "['id, region']", "--columns", '[" sp", "a,b"]',
                    *cluster)
    assert result.exit_code == 0, result.stderr
    again = dk.read_labels(str(out / "predicted")).compute()
    assert list(again.columns) == ["id, region", "cluster", "distance"]
    np.testing.assert_array_equal(again["cluster"], labels["cluster"])

    result = invoke("sweep", url, "--k", "2,3", "--columns", "[' sp', 'a,b']", "--no-plot",
                    *cluster)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["features"] == names
    # A sweep's key columns are kept out of the default features (with --columns, which
    # names the features, they would do nothing and are refused).
    result = invoke("sweep", url, "--k", "2,3", "--no-plot", "--key", "'id, region'",
                    *cluster)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["features"] == [*names, "sp"]
    line = one_line_error(invoke("sweep", url, "--k", "2,3", "--no-plot", "--columns", "sp",
                                 "--key", "'id, region'", *cluster), 2)
    assert "job.input.key_columns: keeps key columns out of the default features" in line
    # Plain names, comma-separated, as before: the spaces around a name are dropped.
    result = invoke("sweep", url, "--k", "2", "--columns", " sp ,", "--no-plot", *cluster)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["features"] == ["sp"]


def test_column_options_read_commas_quotes_and_lists():
    from dask_kmeans.cli import _names

    assert _names(None) is None and _names(()) is None and _names("") is None
    assert _names(" age, income ,") == ["age", "income"]
    assert _names(("id", "a, b")) == ["id", "a", "b"]
    assert _names(("' sp'", '"a,b"', "['c, d', ' e ', f]", "g,h")) == [
        " sp", "a,b", "c, d", " e ", "f", "g", "h"]
    assert _names("['2024', 'true', \"null\"]") == ["2024", "true", "null"]
    for nothing in ("[]", ("",), " , "):  # meant "every numeric column" before, unsaid
        with pytest.raises(click.BadParameter, match="names no column"):
            _names(nothing)
    assert _names(()) is None, "the option not given"
    assert _names("'a,b") == ["'a", "b"], "no matching pair: plain names"


@pytest.mark.parametrize("option, value, wanted", [
    ("--columns", "[age, 2024]", "holds 2024, which is not text: give names, quoting one "
                                 "that looks like a number"),
    ("--columns", "[age, null]", "holds null, which is not text"),
    ("--key", "[[a, b]]", "holds a list"),
    ("--columns", "['']", "holds an empty name"),
    ("--columns", "[age, income", "starts with [ but is not a YAML flow list"),
    ("--plot-features", "[age, true]", "holds true, which is not text"),
    ("--columns", "", "'' names no column: give names, or leave the option out"),
    ("--plot-features", " , ", "names no column"),
    ("--key", "[]", "names no column"),
])
def test_a_bad_list_of_column_names_is_a_usage_error(data, option, value, wanted):
    extra = ("--plot", "p.png") if option == "--plot-features" else ()
    result = invoke("fit", data["url"], "--k", 2, option, value, *extra,
                    "--cluster", data["config"])
    assert result.exit_code == 2 and result.stdout == "", result.stderr
    text = " ".join(result.stderr.split())
    assert f"Invalid value for '{option}'" in text and wanted in text, text


# --------------------------------------------------------------------------- run, validate


def test_run_a_job_file_with_overrides(data, tmp_path):
    job = tmp_path / "spec" / "job.yaml"  # holds the marker; the outputs must not
    job.parent.mkdir()
    out = tmp_path / "out"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "sweep",
        "cluster": {"kind": "local", "local": {"n_workers": 1, "processes": False}},
        "input": {"url": data["url"], "columns": FEATURES,
                  "storage_options": {"secret_token": MARKER}},
        "k": [2, 3], "params": {"random_state": 0},
        "output": {"table": str(out / "sweep.csv")}}}))
    result = invoke("run", job, "--set", "k=2..4")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"sweep: 3 values of K on 1,200 rows of {data['url']}"
    table = pd.read_csv(out / "sweep.csv")
    assert table["k"].tolist() == [2, 3, 4]
    # the sweep seeds every K from shared candidates: the same optimum, not the same start
    assert table["inertia"][1] == pytest.approx(reference(data["url"]).inertia_, rel=1e-3)

    # --cluster on the command line wins over the job's cluster entry.
    result = invoke("run", job, "--set", "k=[2]", "--set", "output.overwrite=true", "--json",
                    "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    assert [r["k"] for r in json.loads(result.stdout)["results"]] == [2]
    no_marker(result.stdout, result.stderr, root=out)


def test_sweep_params_are_checked_by_validate_and_persist_runs(data, tmp_path):
    """validate accepted a sweep's init, n_init and persist and an out-of-range seed; run
    then refused them with exit code 1 ("does not take these params"), after the cluster
    had started and the data was opened."""
    job = tmp_path / "sweep.yaml"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "sweep", "input": {"url": data["url"], "columns": FEATURES}, "k": "2..3",
        "params": {"random_state": 0, "persist": False}}}))
    assert invoke("validate", job).exit_code == 0
    result = invoke("run", job, "--json", "--no-progress", "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    ref = dk.sweep(dk.open_parquet(data["url"], FEATURES), [2, 3], random_state=0)
    assert [r["inertia"] for r in json.loads(result.stdout)["results"]] == pytest.approx(
        ref.inertias, rel=1e-9)
    for command in ("validate", "run"):
        for setting in ("init=random", "init=k-means||", "n_init=3"):
            line = one_line_error(invoke(command, job, "--set", f"params.{setting}"), 2)
            name = setting.split("=")[0]
            assert f"job.params.{name}: a sweep does not take {name}" in line
        line = one_line_error(invoke(command, job, "--set", "params.random_state=99999999999"),
                              2)
        assert "job.params.random_state: expected an int >= 0 and <= 4294967295" in line
    for command, k in (("fit", "3"), ("sweep", "2..3")):
        result = invoke(command, data["url"], "--k", k, "--seed", 2**32)
        assert result.exit_code == 2 and "Invalid value for '--seed'" in result.stderr


def test_validate(data, tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = invoke("validate", root / "jobs" / "demo.yaml")
    assert result.exit_code == 0 and "is a valid job spec (kind fit)" in result.stdout
    result = invoke("validate", data["config"])
    assert result.exit_code == 0 and "is a valid cluster config (kind local)" in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("job:\n  kind: fit\n  input: {url: d}\n  params: {n_clusters: eight}\n"
                   "  output: {}\n")
    line = one_line_error(invoke("validate", bad), 2)
    assert line == (f"Error: {bad}: job.params.n_clusters: expected an int >= 1, "
                    "got 'eight'")
    line = one_line_error(invoke("validate", bad, "--set", "params.n_clusters=2",
                                 "--set", "params.tol=-1", "--set", "input.urll=x"), 2)
    assert line.startswith(f"Error: {bad}: 2 problems in the job spec: job.input.urll: "
                           "unknown key 'urll'; did you mean 'url'?")
    assert line.endswith("; job.params.tol: expected a number >= 0, got -1")

    other = tmp_path / "other.yaml"
    other.write_text("clusters: {}\n")
    assert "neither a job spec" in one_line_error(invoke("validate", other), 2)
    badc = tmp_path / "badc.yaml"
    badc.write_text("cluster:\n  kind: local\n  local: {n_workers: two}\n")
    assert "cluster.local.n_workers: expected an int" in one_line_error(
        invoke("validate", badc), 2)


def test_validate_warns_of_tls_files_missing_here(tmp_path):
    """validate said OK of a TLS config whose files do not exist, which connect refuses:
    the files are looked for relative to the config, and each missing one is named."""
    config = tmp_path / "tls.yaml"
    config.write_text("cluster:\n  kind: tls\n  tls:\n    address: tls://127.0.0.1:8786\n"
                      "    ca_file: certs/ca.pem\n    client_cert: certs/c.pem\n"
                      "    client_key: certs/k.pem\n")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "c.pem").write_text("x")
    result = invoke("validate", config)
    assert result.exit_code == 0 and "is a valid cluster config (kind tls)" in result.stdout
    warnings = result.stderr.strip().splitlines()
    assert warnings == [
        f"Warning: cluster.tls.{key}: no such file: {tmp_path / 'certs' / name}: connecting "
        f"from this machine will fail" for key, name in (("ca_file", "ca.pem"),
                                                          ("client_key", "k.pem"))]
    job = tmp_path / "job.yaml"  # a job naming that config
    job.write_text("job:\n  kind: fit\n  cluster: tls.yaml\n  input: {url: d}\n"
                   "  params: {n_clusters: 2}\n  output: {model: m}\n")
    result = invoke("validate", job)
    assert result.exit_code == 0 and "is a valid job spec (kind fit)" in result.stdout
    assert result.stderr.strip().splitlines() == [f"Warning: job.cluster: {w[9:]}"
                                                  for w in warnings]
    for name in ("ca.pem", "k.pem"):
        (tmp_path / "certs" / name).write_text("x")
    for file in (config, job):
        result = invoke("validate", file)
        assert result.exit_code == 0 and result.stderr == ""


# --------------------------------------------------------------------------- failures


def test_a_spec_that_cannot_be_read_is_exit_2_naming_the_file(data, tmp_path):
    """validate on a directory or an unreadable file exited 1 where run exited 2, and a
    file that is not UTF-8 exited 1 with a codec message that did not name it."""
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)  # unreadable for root too: too many levels of symbolic links
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("job:\n  kind: fit\n  input: {url: caf\u00e9}\n".encode("latin-1"))
    for path, problem in ((folder, "cannot read it"), (loop, "cannot read it"),
                          (latin1, "not UTF-8 text (byte 0xe9 at offset 35)")):
        for command in ("validate", "run"):
            line = one_line_error(invoke(command, path, "--cluster", data["config"])
                                  if command == "run" else invoke(command, path), 2)
            assert line.startswith(f"Error: {path}: ") and problem in line, line
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--cluster", latin1), 2)
    assert f"cannot read the cluster config {latin1}: not UTF-8 text" in line




def test_chunk_bytes_sets_the_chunks_and_so_the_labels_parts(data, tmp_path):
    """Three files of 400 rows x 4 numeric columns (12,800 bytes of float64 features each):
    one chunk by default, one per file with none or with less than two files' bytes; a size
    that is no size is refused."""
    def parts(name):
        return sorted(p.name for p in (tmp_path / name).glob("part-*.parquet"))

    common = ["--seed", 0, "--cluster", data["config"]]
    for i, (option, n) in enumerate([([], 1), (["--chunk-bytes", "none"], 3),
                                     (["--chunk-bytes", "15kB"], 3),
                                     (["--chunk-bytes", "30kB"], 2)]):
        name = f"labels-{i}"
        result = invoke("fit", data["url"], "--k", 3, "--labels", tmp_path / name, *option,
                        *common)
        assert result.exit_code == 0, result.stderr
        assert len(parts(name)) == n, (option, parts(name))
    invoke("fit", data["url"], "--k", 3, "--output", tmp_path / "m", *common)
    result = invoke("predict", tmp_path / "m", data["url"], "--output", tmp_path / "p",
                    "--chunk-bytes", "NONE", "--cluster", data["config"])
    assert result.exit_code == 0, result.stderr
    assert len(parts("p")) == 3
    for size in ("lots", "0", "-1kB"):  # a usage error, in the option's words
        result = invoke("sweep", data["url"], "--k", "2..3", "--chunk-bytes", size, "--no-plot",
                        *common)
        assert result.exit_code == 2, result.stderr
        assert (f"Invalid value for '--chunk-bytes': expected a size like '128MiB', a number "
                f"of bytes > 0 or none, got {size!r}") in result.stderr, result.stderr
        assert "job." not in result.stderr and "null" not in result.stderr


def test_errors_are_one_line_with_an_exit_code(data, tmp_path):
    common = ["--storage-option", SECRET_OPTION, "--cluster", data["config"]]
    missing = tmp_path / "nothing-here"
    line = one_line_error(invoke("fit", missing, "--k", 2, *common), 1)
    assert str(missing) in line and "Not found" in line

    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--columns", "age,segment",
                                 *common), 1)
    assert "'segment'" in line and "must be numeric" in line

    line = one_line_error(invoke("fit", data["url"], "--k", 5000, *common), 1)
    assert "n_clusters=5000" in line and "1200" in line

    bad_job = tmp_path / "job.yaml"
    bad_job.write_text("job:\n  kind: fit\n  input: {url: d}\n  params: {n_clusters: eight}\n"
                       "  output: {}\n")
    line = one_line_error(invoke("run", bad_job, "--cluster", data["config"]), 2)
    assert "job.params.n_clusters: expected an int >= 1, got 'eight'" in line

    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--cluster", data["config"],
                                 "--scheduler", "tcp://127.0.0.1:1"), 2)
    assert "cannot be used together" in line

    invoke("fit", data["url"], "--k", 2, "--output", tmp_path / "m", *common)
    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--output", tmp_path / "m",
                                 *common), 1)
    assert "already exists" in line and "--overwrite" in line

    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--storage-option", "novalue"),
                          2)
    assert "--storage-option novalue: expected key.path=value" in line

    line = one_line_error(invoke("submit", bad_job), 2)
    assert "job.params.n_clusters" in line
    good_job = tmp_path / "good.yaml"
    good_job.write_text(f"job:\n  kind: fit\n  input: {{url: {data['url']}}}\n"
                        "  params: {n_clusters: 2}\n  output: {}\n")
    line = one_line_error(invoke("submit", good_job), 2)
    assert "submit needs a scheduler that keeps running" in line
    with dask.config.set({"dask-kmeans.jobs.keep-finished": "all"}):  # before connecting
        line = one_line_error(invoke("submit", good_job, "--scheduler",
                                     f"tcp://127.0.0.1:{free_port()}"), 2)
    assert line == ("Error: dask-kmeans.jobs.keep-finished: expected an int >= 1 or null, "
                    "got 'all'")
    line = one_line_error(invoke("status", "fit-0", "--cluster", data["config"]), 2)
    assert "status needs a scheduler that keeps running" in line

    line = one_line_error(invoke("fit", data["url"], "--k", 2, "--cluster",
                                 tmp_path / "no-cluster.yaml"), 2)
    assert "cluster config file not found" in line
    no_marker(line, root=tmp_path)


def _option_args(options, prefix=""):
    """--storage-option arguments for a dict of storage options (dotted keys nest)."""
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _option_args(value, f"{prefix}{key}.")
        else:
            yield from ("--storage-option", f"{prefix}{key}={value}")


def test_storage_library_errors_are_one_line_exit_1(s3_server, data):
    """An invalid bucket name, a profile that does not exist, a key without its secret and
    an endpoint nothing listens on ended the command with botocore's traceback (exit 1 by
    Python, not by the command); credentials in an s3:// URL were printed in it. Now one
    line naming the URL, exit 1 (an I/O error), and no secret."""
    from tests.test_io import storage_failures

    for url, options, named in storage_failures(s3_server):
        line = one_line_error(invoke("fit", url, "--k", 2, *_option_args(options),
                                     "--cluster", data["config"]), 1)
        assert line.startswith(f"Error: Storage error while opening {url}: ") and named in line
        assert s3_server["secret"] not in line
    line = one_line_error(invoke("fit", "s3://AKIAFAKE:s3cr3tVALUE@bkt/data", "--k", 2,
                                 "--cluster", data["config"]), 1)
    assert "Cannot open s3://bkt/data: s3:// URLs cannot carry credentials" in line
    assert "s3cr3tVALUE" not in line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, named", [
    (("fit", "--k", 2, "--plot-features", "age,income"), ("--plot-features", "--plot")),
    (("fit", "--k", 2, "--init", "random", "--oversampling-factor", 1),
     ("--oversampling-factor", "--init random")),
    (("fit", "--k", 2, "--init", "k-means++", "--init-rounds", 2),
     ("--init-rounds", "--init k-means++")),
    (("sweep", "--k", "2..3", "--plot", "k.png", "--no-plot"), ("--no-plot", "--plot")),
    (("sweep", "--k", "2..3", "--plot", "elbow.png", "--no-plot"), ("--no-plot", "--plot")),
])
def test_options_that_would_be_ignored_are_refused(data, args, named):
    """These were accepted, then ignored: no scatter, and a random or k-means++ init never
    reads the k-means|| options."""
    command, *rest = args
    result = invoke(command, data["url"], *rest, "--cluster", data["config"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("Usage: ") and "Traceback" not in result.stderr
    for name in named:
        assert name in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["validate", "run"])
def test_job_keys_that_would_be_ignored_are_refused(data, tmp_path, command):
    """A job's output.plot_features without output.plot was accepted and the fit drew no
    scatter, where fit --plot-features without --plot is refused; so were params.resume
    without a checkpoint and the k-means|| options with another init."""
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "fit", "input": {"url": data["url"], "columns": FEATURES},
        "params": {"n_clusters": 2}, "output": {"model": str(out / "model"),
                                                "plot_features": ["age", "income"]}}}))
    line = one_line_error(invoke(command, job, "--cluster", data["config"])
                          if command == "run" else invoke(command, job), 2)
    assert line == (f"Error: {job}: job.output.plot_features: chooses the axes of the "
                    "output.plot scatter, but output.plot is null, so it would be ignored: "
                    "set output.plot to a PNG file, or remove output.plot_features")
    for setting, named in (("params.resume=true", ("job.params.resume", "params.checkpoint")),
                           ("params.init=random", ("job.params.init_rounds", "init random"))):
        extra = ["--set", "params.init_rounds=3"] if "init" in setting else []
        result = invoke(command, job, "--set", "output.plot_features=null", "--set", setting,
                        *extra)
        line = one_line_error(result, 2)
        for name in named:
            assert name in line, line
    assert not out.exists() and result.stdout == ""


def test_resume_without_a_checkpoint_is_refused(data, tmp_path):
    """run --resume on a job without params.checkpoint resumed nothing and said nothing."""
    fit = tmp_path / "fit.yaml"
    fit.write_text(yaml.safe_dump({"job": {
        "kind": "fit", "input": {"url": data["url"]}, "params": {"n_clusters": 2},
        "output": {}}}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"job": {
        "kind": "sweep", "input": {"url": data["url"]}, "k": [2, 3]}}))
    for job, what in ((fit, "but it has none: set params.checkpoint"),
                      (sweep, "is a sweep job, which keeps no checkpoint: leave --resume "
                              "out")):
        result = invoke("run", job, "--resume", "--cluster", data["config"])
        assert result.exit_code == 2, (result.stdout, result.stderr)
        assert "--resume" in result.stderr and "params.checkpoint" in result.stderr
        assert what in result.stderr and result.stdout == ""
    # A sweep job refuses params.checkpoint: the advice to set it could not be followed.
    assert "--set params.checkpoint" not in invoke("run", sweep, "--resume").stderr


def test_an_explicit_timeout_wins_over_the_cluster_configs(data, tmp_path):
    """A cluster config's timeout silently replaced --timeout."""
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    config = tmp_path / "scheduler.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"kind": "scheduler", "scheduler": {
        "address": address, "timeout": "2s"}}}))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "fit", "cluster": {"kind": "scheduler", "scheduler": {
            "address": address, "timeout": "40s"}},
        "input": {"url": data["url"]}, "params": {"n_clusters": 2}, "output": {}}}))
    for args, shown in ((("fit", data["url"], "--k", 2, "--cluster", config), "2s"),
                        (("fit", data["url"], "--k", 2, "--cluster", config,
                          "--timeout", "1s"), "1s"),
                        (("run", job, "--timeout", "1s"), "1s")):
        start = time.monotonic()
        line = one_line_error(invoke(*args), 3)
        assert f"at {address} (timeout {shown}): " in line, line
        assert time.monotonic() - start < 20


def test_unreachable_scheduler_in_a_real_process(data):
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    out = subprocess.run(
        [sys.executable, "-m", "dask_kmeans.cli", "fit", data["url"], "--k", "2",
         "--scheduler", address, "--timeout", "1s", "--storage-option", SECRET_OPTION],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"Error: could not connect to the Dask scheduler at {address} "
                               "(timeout 1s)")
    no_marker(out.stderr)


def test_the_local_workers_leave_out_task_failures_and_heartbeats_at_shutdown():
    """What the CLI's own workers leave out of the terminal: the report of a failed task
    and a heartbeat that met the scheduler closing after it; other errors stay."""
    import logging

    from dask_kmeans._runtime import _not_a_task_failure

    def record(msg):
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg,
                                 None, None)

    assert not _not_a_task_failure(record("Compute Failed\nKey: ('x', 0)"))
    assert not _not_a_task_failure(
        record("Failed to communicate with scheduler during heartbeat."))
    assert _not_a_task_failure(record("Worker is at 95% memory usage. Pausing worker."))
    # A running task cancelled (the rest of a failed pass), from the state machine's logger.
    assert not _not_a_task_failure(record(
        "Async instruction for <Task cancelled name='execute(('x', 0))' coro=<...>> ended "
        "with CancelledError"))
    assert _not_a_task_failure(record("Async instruction for <Task> ended with KeyError"))
    from dask_kmeans._runtime import _QUIET_LOGGERS

    assert "distributed.worker.state_machine" in _QUIET_LOGGERS


def test_a_data_error_in_worker_processes_is_one_line(tmp_path):
    """A NaN found by a task in a worker process (the default local cluster): the workers
    share the terminal, and their "Compute Failed" report with its traceback must not
    come before the one-line error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": pa.array([1.0, np.nan, 3.0, 4.0], from_pandas=False),
                             "y": [1.0, 2.0, 3.0, 4.0]}), tmp_path / "nan.parquet")
    out = subprocess.run(
        [str(BIN / "dask-kmeans"), "fit", str(tmp_path / "nan.parquet"), "--k", "2",
         "--no-progress"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Missing or non-finite feature "
                                                   "values"), out.stderr
    assert "--missing drop on the command line" in lines[0]  # its spelling here


def test_warnings_are_one_line_too(tmp_path):
    """A ConvergenceWarning took two lines on stderr, the first naming jobs.py and its line,
    the second that line of source."""
    X = np.repeat(np.array([[0.0, 1.0], [5.0, 6.0]]), 50, axis=0)
    pd.DataFrame(X, columns=["a", "b"]).to_parquet(tmp_path / "two.parquet")
    config = tmp_path / "local.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"kind": "local", "local": {
        "n_workers": 1, "threads_per_worker": 1, "processes": False}}}))
    result = invoke("fit", tmp_path / "two.parquet", "--k", 3, "--seed", 0, "--no-progress",
                    "--cluster", config)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["Warning: Number of distinct clusters (2) found smaller than n_clusters "
                     "(3). Possibly due to duplicate points in X."], result.stderr


def test_a_reader_that_stops_early_does_not_fail_the_job(data, tmp_path):
    """``fit ... | head -1``: the summary met a closed pipe, and the command printed
    "Error: [Errno 32] Broken pipe" and exited 1 ("the job failed") with the model
    written. The reader here closes its end before the command prints anything."""
    proc = subprocess.Popen(
        [str(BIN / "dask-kmeans"), "fit", data["url"], "--k", "3", "--seed", "0",
         "--output", str(tmp_path / "model"), "--cluster", data["config"], "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Error" not in err and "Broken pipe" not in err and "Traceback" not in err, err
    assert dk.load(str(tmp_path / "model")).cluster_centers_.shape[0] == 3


def test_status_of_a_failed_job_exits_1_even_when_nobody_reads_it(monkeypatch):
    """status printed the record first: a reader that had gone made it exit 0 for a
    failed job."""
    import contextlib

    import click

    from dask_kmeans import cli, jobs

    echo = click.echo

    def closed_stdout(message=None, *args, err=False, **kwargs):
        if not err:
            raise BrokenPipeError(32, "Broken pipe")
        return echo(message, *args, err=err, **kwargs)

    monkeypatch.setattr(cli, "_connected", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(cli, "_require_persistent", lambda *a: None)
    monkeypatch.setattr(click, "echo", closed_stdout)
    for state, code in (("failed", 1), ("lost", 1), ("finished", 0)):
        monkeypatch.setattr(jobs, "job_status", lambda job_id, client, s=state: {"state": s})
        result = invoke("status", "fit-1", "--scheduler", "tcp://127.0.0.1:1")
        assert result.exit_code == code, (state, result.stderr)


def test_a_broken_pipe_in_the_job_is_its_failure(data, monkeypatch, tmp_path):
    """A BrokenPipeError from the job's own connections (storage, say), not from printing
    the result, is the job's failure, exit 1, even when standard output has no reader."""
    from dask_kmeans import jobs

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe (storage)")

    monkeypatch.setattr(jobs, "run_job", broken)
    result = invoke("fit", data["url"], "--k", 2, "--cluster", data["config"])
    assert "Broken pipe (storage)" in one_line_error(result, 1)
    script = ("import sys; from dask_kmeans import jobs, cli\n"
              "def broken(*a, **k): raise BrokenPipeError(32, 'Broken pipe (storage)')\n"
              "jobs.run_job = broken\n"
              "sys.argv = ['dask-kmeans'] + sys.argv[1:]\n"
              "cli.main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "fit", data["url"], "--k", "2",
                             "--cluster", data["config"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # no reader either: still the job's failure
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Broken pipe (storage)" in err, err


def test_the_installed_script_fits(data, tmp_path):
    out = subprocess.run(
        [str(BIN / "dask-kmeans"), "fit", data["url"], "--k", "3", "--seed", "0",
         "--key", "customer_id", "--output", str(tmp_path / "model"),
         "--cluster", data["config"], "--json",
         "--storage-option", SECRET_OPTION],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"] == str(tmp_path / "model")
    np.testing.assert_allclose(dk.load(str(tmp_path / "model")).cluster_centers_,
                               reference(data["url"]).cluster_centers_, rtol=1e-7)
    no_marker(out.stdout, out.stderr, root=tmp_path)


def test_dask_kmeans_is_a_dask_subcommand():
    out = subprocess.run([str(BIN / "dask"), "kmeans", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: dask kmeans [OPTIONS] COMMAND [ARGS]...")
    for command in ("fit", "predict", "run", "submit", "status", "validate"):
        assert f"  {command} " in out.stdout
    assert "kmeans" in subprocess.run([str(BIN / "dask"), "--help"], capture_output=True,
                                      text=True, timeout=120).stdout


def test_a_quoted_value_of_set_or_storage_option_is_text(data, tmp_path):
    """profile=2024 or output.model=2024 became the int 2024, with no way to say text."""
    from dask_kmeans.cli import _storage_options

    assert _storage_options(["profile='2024'", 'region="1"', "retries=3", "anon=true",
                             "client_kwargs.region_name='eu-west-1'"]) == {
        "profile": "2024", "region": "1", "retries": 3, "anon": True,
        "client_kwargs": {"region_name": "eu-west-1"}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "fit", "input": {"url": data["url"]}, "params": {"n_clusters": 2},
        "output": {}}}))
    line = one_line_error(invoke("validate", job, "--set", "output.model=2024"), 2)
    assert line == (f"Error: {job}: job.output.model: expected a non-empty string or null, "
                    "got 2024; to give it as text, write it in quotes: '2024'")
    result = invoke("validate", job, "--set", "output.model='2024'",
                    "--set", "input.storage_options.profile=\"2024\"")
    assert result.exit_code == 0, result.stderr
    for command, option in (("fit", "--storage-option"), ("predict", "--storage-option"),
                            ("sweep", "--storage-option"), ("run", "--set"),
                            ("submit", "--set"), ("validate", "--set")):
        text = " ".join(invoke(command, "--help").stdout.split())
        assert "a value in quotes is the exact text inside, like '2024'" in text, command
        assert option in text


def test_version_and_help():
    assert invoke("--version").stdout.strip() == f"dask-kmeans, version {dk.__version__}"
    assert "--storage-option KEY=VALUE" in invoke("fit", "--help").stdout


def test_docs_describe_every_command_and_option():
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for name, command in main.commands.items():
        assert f"## `{name}`" in text or f"`{name}`" in text.split("## Job specs")[0], name
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}" in text, f"docs/cli.md does not mention {opt} ({name})"
    for code in range(4):
        assert f"| {code} |" in text


def test_run_resume_continues_from_the_checkpoint(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"job": {
        "kind": "fit",
        "cluster": {"kind": "local", "local": {"n_workers": 1, "processes": False}},
        "input": {"url": data["url"], "columns": FEATURES},
        "params": {"n_clusters": 3, "random_state": 0, "checkpoint": str(ckpt)},
        "output": {}}}))
    first = invoke("run", job, "--json")
    assert first.exit_code == 0, first.stderr
    assert (ckpt / "checkpoint.json").exists()
    again = invoke("run", job, "--resume", "--json")
    assert again.exit_code == 0, again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["centers"] == b["centers"] and a["n_iter"] == b["n_iter"]
    # a checkpoint of other parameters is refused, in one line
    bad = invoke("run", job, "--resume", "--set", "params.n_clusters=4")
    one_line_error(bad, 1)
    assert "other parameters" in bad.stderr


@pytest.mark.parametrize("error", ["cancelled", "closed"])
def test_a_cluster_lost_while_the_job_runs_is_exit_code_3_in_one_line(data, tmp_path,
                                                                       monkeypatch, error):
    """The scheduler stopping mid-fit ended in a 55-line traceback about a
    FutureCancelledError "reason: unknown" and exit 1 ("bad input")."""
    import asyncio
    import logging

    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    import dask_kmeans

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record)

    def lost(self, *args, **kwargs):
        # As the client logs its failed reconnections before the job's error: 35 lines of
        # traceback on stderr before the one line (seen with a scheduler killed mid-fit).
        try:
            raise asyncio.CancelledError()
        except asyncio.CancelledError:
            logging.getLogger("distributed.client").exception("")
        if error == "cancelled":
            raise FutureCancelledError("packed_chunk-0", "unknown")
        raise CommClosedError("in <TCP (closed) ConnectionPool.gather local=tcp://127.0.0.1>")

    kept = Kept()
    client_log = logging.getLogger("distributed.client")
    client_log.addHandler(kept)
    try:
        monkeypatch.setattr(dask_kmeans.KMeans, "fit", lost)
        line = one_line_error(invoke("fit", data["url"], "--k", 3, "--output", tmp_path / "m",
                                     "--cluster", data["config"]), 3)
        assert kept.records == []  # the client's reconnection traceback was left out
        client_log.error("after the command")  # and only while the command ran
        assert [r.getMessage() for r in kept.records] == ["after the command"]
    finally:
        client_log.removeHandler(kept)
    assert line.startswith("Error: lost the Dask cluster while the job ran ("), line
    assert "run the job again once it is back" in line
    assert not (tmp_path / "m").exists()


def test_workers_that_die_running_the_job_are_one_line_with_advice(data, tmp_path,
                                                                   monkeypatch):
    """Workers killed for going over their memory limit ended the command with distributed's
    KilledWorker as a full traceback (exit 1). It is one line now, saying the workers died,
    most likely out of memory, and what to change. A real KilledWorker: a task that ends
    its worker process, on a cluster that allows no failure."""
    import dask_kmeans

    def dies(self, *args, **kwargs):
        from distributed import get_client

        get_client().submit(os._exit, 1, pure=False).result()

    config = tmp_path / "processes.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"kind": "local", "local": {
        "n_workers": 1, "threads_per_worker": 1, "processes": True}}}))
    monkeypatch.setattr(dask_kmeans.KMeans, "fit", dies)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        line = one_line_error(invoke("fit", data["url"], "--k", 3, "--output", tmp_path / "m",
                                     "--no-progress", "--cluster", config), 1)
    assert line.startswith("Error: the workers running the job died: task '_exit-"), line
    assert "ran on a worker that died (KilledWorker), most likely out of memory" in line
    assert "more memory (the cluster config's memory_limit" in line
    assert "smaller chunks (input.chunk_bytes, --chunk-bytes)" in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("error", [IndexError("index 1 is out of bounds"), KeyError("k"),
                                   RuntimeError(f"boom with {MARKER}"),
                                   MemoryError("Unable to allocate 8.00 GiB")])
def test_an_unexpected_error_is_one_line_naming_its_type(data, tmp_path, monkeypatch, error):
    """An error of a type the command did not foresee (IndexError, KeyError, RuntimeError,
    MemoryError) ended it with a full traceback. Now it is one line naming the type
    (MemoryError: what to change), exit 1, without credentials; DASK_KMEANS_TRACEBACK=1
    prints the traceback above it, for a bug report."""
    import dask_kmeans

    def fails(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(dask_kmeans.KMeans, "fit", fails)
    args = ("fit", data["url"], "--k", 3, "--output", tmp_path / "m", "--no-progress",
            "--storage-option", f"secret_token={MARKER}", "--cluster", data["config"])
    line = one_line_error(invoke(*args), 1)
    name = type(error).__name__
    if isinstance(error, MemoryError):
        assert line == ("Error: out of memory (Unable to allocate 8.00 GiB): give each worker "
                        "more memory (the cluster config's memory_limit, or its memory per "
                        "job or container) or read smaller chunks (input.chunk_bytes, "
                        "--chunk-bytes)")
        return
    assert line.startswith(f"Error: unexpected {name}: "), line
    assert line.endswith("(set DASK_KMEANS_TRACEBACK=1 to see the traceback)"), line
    no_marker(line)
    monkeypatch.setenv("DASK_KMEANS_TRACEBACK", "1")
    result = invoke(*args)
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "in fails" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: unexpected {name}: ")
    no_marker(result.stderr)


@pytest.mark.parametrize("option", ["--scheduler", "--cluster"])
@pytest.mark.parametrize("command", ["fit", "sweep", "predict", "run", "submit", "status"])
def test_an_empty_scheduler_or_cluster_is_a_usage_error(option, command, tmp_path):
    """``--scheduler "$SCHED"`` with SCHED unset was taken for no option: the job ran on a
    local cluster started here, exit 0."""
    args = {"fit": ["data", "--k", 2], "sweep": ["data", "--k", "2..3"],
            "predict": ["model", "data"], "run": ["job.yaml"], "submit": ["job.yaml"],
            "status": ["some-id"]}[command]
    result = invoke(command, *args, option, "")
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert f"Invalid value for '{option}': is empty" in result.stderr


def test_ctrl_c_is_exit_code_130_in_one_line(data, tmp_path, monkeypatch):
    """Ctrl-C printed click's "Aborted!" with exit code 1, which says the job failed."""
    import dask_kmeans

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dask_kmeans.KMeans, "fit", interrupted)
    line = one_line_error(invoke("fit", data["url"], "--k", 3, "--output", tmp_path / "m",
                                 "--cluster", data["config"]), 130)
    assert line == "Error: interrupted"
    assert not (tmp_path / "m").exists()
