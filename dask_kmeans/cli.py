"""The ``dask-kmeans`` command (also ``dask kmeans``): thin glue over jobs, cluster and io.

Every command builds or loads a job spec (`dask_kmeans.jobs`), connects to a cluster
(`dask_kmeans.cluster.connect`) and runs, submits or inspects the job; a Python user can make
the same calls. Errors end the command with one line on stderr and a non-zero exit code (see
:data:`EXIT_CODES`), never a traceback (but for an unexpected error with
:data:`TRACEBACK_ENV` set), and never with a credential in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click
import yaml
from dask.utils import parse_bytes, parse_timedelta

from . import __version__, jobs
from ._progress import listening
from ._schema import SchemaError, load_yaml, parses, show
from .cluster import (
    ClusterConfigUnreadable,
    ClusterError,
    connect,
    default_scheduler,
    load_cluster_config,
    missing_tls_files,
)
from .io import DEFAULT_CHUNK_BYTES

#: What each exit code means.
EXIT_CODES = {
    0: "success (for status: the job finished or is still running)",
    1: "the job failed: bad input data, an output that exists, an I/O error, workers that "
       "died (most likely out of memory), an unexpected error (for status: the job failed or "
       "was lost)",
    2: "bad usage: a job spec or cluster config that is missing or does not follow its schema, "
       "a bad dask-kmeans setting, conflicting options (for status: no job with that id, or "
       "one forgotten)",
    3: "the cluster could not be reached or started, or was lost while the job ran",
    130: "interrupted (Ctrl-C): the job stopped, its outputs left as a failed job leaves them",
}
_SECRETS = "dask_kmeans.secrets"
#: Environment variable: when set (not to 0), an unexpected error's traceback is printed
#: above its one line.
TRACEBACK_ENV = "DASK_KMEANS_TRACEBACK"
_PERSISTENT_KINDS = ("scheduler", "tls")


class CommandError(click.ClickException):
    """A failure reported as ``Error: <one line>`` on stderr with a given exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SchemaError) and len(exc.errors) > 1:
        head = f"{exc.source}: " if exc.source else ""
        problems = "; ".join(f"{p or '(top level)'}: {m}" for p, m in exc.errors)
        text = f"{head}{len(exc.errors)} problems in the {exc.what}: {problems}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class _Group(click.Group):
    """A group whose commands turn known errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings(), _quiet_reconnects():
                # One line each too, "Warning: ...", not Python's two (file:line, source).
                warnings.showwarning = lambda message, *_, **__: click.echo(
                    f"Warning: {jobs.scrub(_one_line(message), _secrets_of(ctx))}", err=True)
                return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort,
                click.exceptions.Exit):
            raise
        except KeyboardInterrupt:  # click's "Aborted!" and exit 1 said the job failed
            raise CommandError("interrupted", 130) from None
        except (SchemaError, jobs.UnknownJobError, ClusterConfigUnreadable) as exc:
            raise self._error(ctx, exc, 2) from None
        except ClusterError as exc:
            raise self._error(ctx, exc, 3) from None
        except BrokenPipeError as exc:
            if not ctx.meta.get(_READER_GONE):  # a connection of the job's: it failed
                raise self._error(ctx, exc, 1) from None
            # The reader stopped early (``| head -1``): the command's work was done before
            # it printed, and the rest of its output has nobody to read it. Not a failed
            # job: exit 0, quietly (stdout to /dev/null, or Python reports the pipe again
            # at exit).
            with contextlib.suppress(OSError, ValueError):  # (a stream without a file)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(ctx.meta.get(_EXIT_CODE, 0)) from None
        except Exception as exc:
            lost = _cluster_lost(exc)
            if lost is not None:
                raise self._error(ctx, ClusterError(lost), 3) from None
            if isinstance(exc, (ValueError, TypeError, OSError, ImportError)):
                raise self._error(ctx, exc, 1) from None
            died = _out_of_memory(exc)
            if died is not None:
                raise CommandError(jobs.scrub(died, _secrets_of(ctx)), 1) from None
            # Anything else is unexpected (a bug, or a failure not foreseen here): one line
            # too, naming the exception's type; the traceback on request, to find where.
            if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
                text = "".join(traceback.format_exception(exc)).rstrip()
                click.echo(jobs.scrub(text, _secrets_of(ctx)), err=True)
                hint = ""
            else:
                hint = f" (set {TRACEBACK_ENV}=1 to see the traceback)"
            raise CommandError(jobs.scrub(f"unexpected {type(exc).__name__}: "
                                          f"{_one_line(exc)}{hint}", _secrets_of(ctx)),
                               1) from None

    @staticmethod
    def _error(ctx: click.Context, exc: BaseException, code: int) -> CommandError:
        return CommandError(jobs.scrub(_one_line(exc), _secrets_of(ctx)), code)


def _not_a_lost_connection(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, (asyncio.CancelledError, OSError))  # CommClosedError too


@contextlib.contextmanager
def _quiet_reconnects() -> Iterator[None]:
    """While a command runs, the client's reports of its lost connection to the scheduler
    (a traceback of 35 lines as it tried to reconnect) are left out: the command reports a
    lost cluster itself, in one line (exit 3), or carries on if the connection comes back."""
    logger = logging.getLogger("distributed.client")
    logger.addFilter(_not_a_lost_connection)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_lost_connection)


def _cluster_lost(exc: BaseException) -> str | None:
    """What to say when ``exc`` means the Dask cluster went away under the job (the
    scheduler stopped or the connection to it closed): its computations cancelled with
    "reason: unknown", or the connection closed; else None."""
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError

    if isinstance(exc, (CancelledError, CommClosedError)):
        return (f"lost the Dask cluster while the job ran ({type(exc).__name__}: {exc}): "
                "the scheduler stopped, restarted or became unreachable; run the job again "
                "once it is back")
    return None


def _out_of_memory(exc: BaseException) -> str | None:
    """What to say when ``exc`` means the job ran out of memory: workers that died running
    its tasks (distributed's ``KilledWorker``: most often the nanny killed them for going
    over their memory limit), or a ``MemoryError``; else None."""
    from distributed.scheduler import KilledWorker

    advice = ("give each worker more memory (the cluster config's memory_limit, or its "
              "memory per job or container) or read smaller chunks (input.chunk_bytes, "
              "--chunk-bytes)")
    if isinstance(exc, KilledWorker):
        tries = exc.allowed_failures + 1
        how = (f"was tried on {tries} workers, which all died" if tries > 1
               else "ran on a worker that died")
        return (f"the workers running the job died: task {exc.task!r} {how} (KilledWorker), "
                f"most likely out of memory (their logs say why): {advice}")
    if isinstance(exc, MemoryError):
        return f"out of memory ({_one_line(exc)}): {advice}"
    return None


def _secrets_of(ctx: click.Context) -> list[str]:
    """The secrets the command was given, longest first (to scrub from what it prints)."""
    return sorted(ctx.meta.get(_SECRETS, ()), key=len, reverse=True)


#: ``ctx.meta`` keys: standard output's reader went away while the command printed; the
#: exit code the command ends with then (``status`` of a failed job: 1).
_READER_GONE = "dask_kmeans.reader_gone"
_EXIT_CODE = "dask_kmeans.exit_code"


def _out(text: str = "") -> None:
    """Print a result to standard output (only done once the command's work is done): a
    reader that went away is noted, for :class:`_Group` to end the command quietly."""
    try:
        click.echo(text)
    except BrokenPipeError:
        click.get_current_context().meta[_READER_GONE] = True
        raise


def _remember_secrets(spec: dict) -> None:
    click.get_current_context().meta.setdefault(_SECRETS, set()).update(jobs.secrets(spec))


# --------------------------------------------------------------------------- shared options


def _check_timeout(ctx, param, value):
    if value is None:  # not given: the cluster config's timeout, else 10s (connect's rule)
        return None
    try:
        if parse_timedelta(value) > 0:
            return value
    except (ValueError, KeyError, TypeError):
        pass
    raise click.BadParameter("expected a duration like '10s' or a number of seconds > 0")


def _not_empty(ctx, param, value):
    """An empty --scheduler or --cluster (an unset shell variable) was taken for none
    given, and the job ran on a local cluster started here."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty: give an address or a file, or leave the option "
                                 "out")
    return value


def _cluster_options(f: Callable) -> Callable:
    f = click.option("--timeout", default=None, callback=_check_timeout, metavar="DURATION",
                     help="How long to try to reach the scheduler, like 10s or 1min; wins "
                          "over a cluster config's timeout. Default: the config's timeout, "
                          "else 10s.")(f)
    f = click.option("--scheduler", metavar="ADDRESS", callback=_not_empty,
                     help="Address of a running scheduler, like tcp://10.0.0.5:8786.")(f)
    f = click.option("--cluster", "cluster_file", metavar="FILE.yaml", callback=_not_empty,
                     help="A cluster-config file (see cluster-config/). Without --cluster or "
                          "--scheduler: the job's cluster entry, else the scheduler at "
                          "DASK_SCHEDULER_ADDRESS (Dask's scheduler-address setting), else "
                          "local worker processes sized to this machine.")(f)
    return f


def _json_option(f: Callable) -> Callable:
    f = click.option("--no-progress", "progress", is_flag=True, flag_value=False, default=True,
                     help="No progress bars or dashboard link on stderr.")(f)
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result summary as JSON.")(f)


def _target(cluster_file: str | None, scheduler: str | None,
            spec: dict | None = None) -> dict[str, Any]:
    if cluster_file and scheduler:
        raise CommandError("--cluster and --scheduler cannot be used together: give one", 2)
    if cluster_file:
        return {"config_or_path": cluster_file}
    if scheduler:
        return {"scheduler": scheduler}
    # {}: connect() finds the scheduler at DASK_SCHEDULER_ADDRESS, else starts a local one.
    return jobs.cluster_target(spec) if spec is not None else {}


def _require_persistent(target: dict[str, Any], command: str) -> None:
    """Refuse a cluster that this process would start, and stop again, for submit/status."""
    if "scheduler" in target:
        return
    config = target.get("config_or_path")
    if isinstance(config, dict):
        kind = config["cluster"]["kind"]
    elif config is not None:
        kind = load_cluster_config(config)["cluster"]["kind"]
    else:  # what connect() reaches: DASK_SCHEDULER_ADDRESS's scheduler, else a local cluster
        kind = "local" if default_scheduler() is None else "scheduler"
    if kind not in _PERSISTENT_KINDS:
        # The setting would be used only where nothing names a cluster.
        setting = ", or set DASK_SCHEDULER_ADDRESS" if config is None else ""
        raise CommandError(
            f"{command} needs a scheduler that keeps running after this command exits: give "
            f"--scheduler ADDRESS or --cluster with a config of kind 'scheduler' or 'tls'"
            f"{setting} (a '{kind}' cluster started here would stop with it)", 2)


@contextlib.contextmanager
def _connected(target: dict[str, Any], timeout: str | None) -> Iterator[Any]:
    """Connect to ``target``; an explicit ``timeout`` (--timeout) wins over a config's."""
    with connect(**target, timeout=timeout) as client:
        yield client


#: How --set and --storage-option type a value (jobs.parse_value), for their --help.
_VALUE_HELP = ("true/false, null and plain numbers are typed, [a, b] is a list, yes/no/on/off "
               "are refused; a value in quotes is the exact text inside, like '2024' (for "
               "the shell: \"KEY='2024'\").")


def _storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for text in pairs:
        keys, value = jobs.parse_assignment(text, "--storage-option")
        target = options
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise CommandError(f"--storage-option {'.'.join(keys)}: "
                                   f"{'.'.join(keys[:-1])} is set to a value already", 2)
        target[keys[-1]] = value
    return options


#: How --columns, --key and --plot-features take a name that a comma list cannot hold.
_NAMES_HELP = ("A name with a comma or spaces at its ends goes in quotes (\"'a,b'\" for "
               "the shell), or the value is a list like \"[' sp', 'a,b', c]\".")


def _names(values: Sequence[str] | str | None, option: str = "--columns") -> list[str] | None:
    """Column names from the occurrences of a column option, None when there are none.

    An occurrence is names separated by commas, spaces around each dropped; or, read by
    `dask_kmeans.jobs.parse_value`, one name in quotes (``'a,b'``, exact) or a YAML flow
    list (``[' sp', 'a,b', age]``), whose items are exact names.
    """
    if not values:
        return None
    items = [values] if isinstance(values, str) else list(values)
    names: list[str] = []
    for item in items:
        if not (jobs.is_quoted(item) or item.lstrip().startswith("[")):
            given = [n.strip() for n in item.split(",") if n.strip()]
            if not given:  # it meant "the default" (every numeric column), unsaid
                raise click.BadParameter(f"{item!r} names no column: give names, or leave "
                                         "the option out", param_hint=f"'{option}'")
            names.extend(given)
            continue
        try:
            value = jobs.parse_value(item)
        except yaml.YAMLError as exc:
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise click.BadParameter(f"{item!r} starts with [ but is not a YAML flow list of "
                                     f"names ({problem}), like \"[' sp', 'a,b']\"",
                                     param_hint=f"'{option}'") from None
        for name in [value] if isinstance(value, str) else value:
            if not isinstance(name, str) or not name:
                what = ("an empty name" if name == "" else "a list" if isinstance(name, list)
                        else "a mapping" if isinstance(name, dict) else
                        f"{show(name)}, which is not text")
                raise click.BadParameter(f"{item!r} holds {what}: give names, quoting one "
                                         "that looks like a number, true, false or null, "
                                         "like '2024'", param_hint=f"'{option}'")
            names.append(name)
        if isinstance(value, list) and not value:
            raise click.BadParameter(f"{item!r} names no column: give names, or leave the "
                                     "option out", param_hint=f"'{option}'")
    return names or None


def _column_names(ctx, param, value):
    return _names(value, param.opts[0])


# --------------------------------------------------------------------------- output


def _number(value: float) -> str:
    return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"


def _print_profile(records: list[dict]) -> None:
    import pandas as pd

    from .report import format_profile

    _out("clusters:")
    _out(format_profile(pd.DataFrame(records).set_index("cluster")))


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _out(json.dumps(result, indent=2))
        return
    kind = result["kind"]
    rows = f"{result['n_rows']:,} rows of {result['input']}"
    if kind == "fit":
        _out(f"fit: k={result['n_clusters']} on {rows}")
        _out(f"iterations: {result['n_iter']}")
        _out(f"inertia:    {_number(result['inertia'])}")
        if result["model"]:
            _out(f"model:      {result['model']}")
        else:
            _out("model:      not saved (no --output); centres:")
            for center in result["centers"]:
                _out("  " + "  ".join(f"{v:.6g}" for v in center))
        _out(f"labels:     {result['labels'] or 'not written (no --labels)'}")
        for url in result["profile_files"]:
            _out(f"profile:    {url}")
        if result["plot"]:
            _out(f"plot:       {result['plot']}")
        if result["profile"]:
            _print_profile(result["profile"])
    elif kind == "predict":
        _out(f"predict: {rows} with the model at {result['model']} "
                   f"(k={result['n_clusters']})")
        _out(f"labels:  {result['labels']}")
    else:
        _out(f"sweep: {len(result['results'])} values of K on {rows}")
        _out(f"{'k':>6}  {'inertia':>16}  {'silhouette':>10}  {'n_iter':>6}")
        for row in result["results"]:
            sil = "" if row["silhouette"] is None else f"{row['silhouette']:.3f}"
            mark = "  <- suggested" if row["k"] == result["suggested_k"] else ""
            _out(f"{row['k']:>6}  {_number(row['inertia']):>16}  {sil:>10}  "
                       f"{row['n_iter']:>6}{mark}")
        _out(f"suggested K: {result['suggested_k']} ({result['reason']})")
        if result["table"]:
            _out(f"table: {result['table']}")
        if result["plot"]:
            _out(f"plot:  {result['plot']}")
    _out(f"time:       {result['seconds']:.2f} s" if kind == "fit"
               else f"time: {result['seconds']:.2f} s")


class _ProgressDisplay:
    """Live progress bars on stderr, fed by the drivers' progress events.

    One bar for the k-means|| passes and one for the Lloyd iterations (or the shared passes
    of a sweep), each with the latest figures; a run of ``n_init`` > 1 starts both again.
    On a terminal the bars move; elsewhere (a log file, CI) their final state is printed
    once. :meth:`summary` is the closing line.
    """

    _NAMES = {"init": "k-means||", "iteration": "Lloyd", "sweep": "sweep"}

    def __init__(self, console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.progress = Progress(TextColumn("{task.description:<12}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[info]}"), console=console)
        self.tasks: dict[str, Any] = {}
        self.last: dict[str, tuple[int, int | None, dict]] = {}
        self.run = (1, 1)
        #: With n_init > 1: each run's last events, and which run is best so far.
        self.runs: dict[int, dict[str, tuple[int, int | None, dict]]] = {}
        self.best: int | None = None

    def __enter__(self) -> _ProgressDisplay:
        return self

    def __exit__(self, *exc) -> None:
        if self.last:  # started by the first event: an error before any prints nothing
            self.progress.stop()

    def _task(self, stage: str):
        if stage not in self.tasks:
            name = self._NAMES[stage]
            if self.run[1] > 1:
                name += f" {self.run[0]}/{self.run[1]}"
            self.tasks[stage] = self.progress.add_task(name, total=None, info="")
        return self.tasks[stage]

    def __call__(self, stage: str, step: int, total: int | None, info: dict) -> None:
        if stage == "run":
            self.run = (step, total or 1)
            if step > 1:  # a new initialisation: fresh bars under the old ones
                self.tasks.clear()
            return
        if stage == "best":
            self.best = step
            return
        if not self.last:
            self.progress.start()
        self.last[stage] = (step, total, info)
        self.runs.setdefault(self.run[0], {})[stage] = (step, total, info)
        if stage == "init":
            text = f"{info['candidates']:,} candidates"
        elif stage == "iteration":
            text = (f"inertia {info['inertia']:.6g}  shift {info['shift']:.3g}"
                    f" (tol {info['tol']:.3g})")
            if info["converged"]:
                total = step
        else:
            text = f"{info['moving']} of {info['models']} models still moving"
            if info["moving"] == 0:
                total = step
        self.progress.update(self._task(stage), completed=step, total=total, info=text)

    def summary(self) -> str | None:
        """One line on how the fit went: passes, iterations, convergence (of the run kept,
        when there were several)."""
        parts = []
        last = self.runs.get(self.best, self.last) if self.best is not None else self.last
        if "init" in last:
            step, _, info = last["init"]
            parts.append(f"k-means|| {step} passes, {info['candidates']:,} candidates")
        if "iteration" in last:
            step, total, info = last["iteration"]
            state = ("converged" if info["converged"]
                     else f"stopped at max_iter={total} before converging")
            parts.append(f"{step} Lloyd iterations, {state}")
        if "sweep" in self.last:
            step, total, info = self.last["sweep"]
            state = ("all converged" if info["moving"] == 0
                     else f"{info['moving']} stopped at max_iter={total}")
            parts.append(f"{step} shared passes for {info['models']} models, {state}")
        if self.run[1] > 1:
            parts.append(f"run {self.best} best of {self.run[1]}" if self.best is not None
                         else f"best of {self.run[1]} runs")
        return "; ".join(parts) or None


def dashboard_link(client, timeout: float = 2.0) -> str | None:
    """The Dask dashboard's URL when this machine can open it, else None.

    A scheduler serves HTTP (health checks, metrics) with or without a dashboard, and
    reports its port either way; without bokeh its status page only says to install it.
    So the page is asked for once, and the link is given only when the answer is a page
    that is not that message.
    """
    import urllib.error
    import urllib.request

    try:
        link = client.dashboard_link if client is not None else None
    except Exception:  # the scheduler reports no HTTP service
        return None
    if not link:
        return None
    try:
        with urllib.request.urlopen(link, timeout=timeout) as response:  # noqa: S310
            page = response.read(4096).decode("utf-8", "replace")
    except (OSError, ValueError):  # refused, timed out, or an HTTP error (turned off: 404)
        return None
    return None if "needs bokeh" in page.lower() else link


@contextlib.contextmanager
def _progress(enabled: bool, client) -> Iterator[_ProgressDisplay | None]:
    """Show the dashboard link and live progress bars on stderr while the job runs."""
    if not enabled:
        yield None
        return
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    link = dashboard_link(client)
    if link:
        console.print(f"dashboard: {link}")
    with _ProgressDisplay(console) as display, listening(display):
        yield display
    line = display.summary()
    if line:
        console.print(line)


def _run(spec: dict, cluster_file, scheduler, timeout, as_json: bool,
         progress: bool = True) -> None:
    _remember_secrets(spec)
    with _connected(_target(cluster_file, scheduler, spec), timeout) as client, \
            _progress(progress, client):
        result = jobs.run_job(spec)
    _print_result(result, as_json)


# --------------------------------------------------------------------------- commands


@click.group(name="kmeans", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dask-kmeans")
def main() -> None:
    """Distributed K-means on Dask: fit, predict and sweep K on Parquet data.

    Also available as `dask kmeans`. Exit codes: 0 success, 1 the job failed (bad input,
    existing output), 2 bad usage or a spec/config that does not validate, 3 the cluster
    could not be reached or started.
    """


_DEFAULTS = jobs.param_defaults()


def _finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"expected a finite number, got {value!r}")
    return value


def _chunk_bytes(ctx, param, value):
    """``none`` for one chunk per file, else a size: refused here, in the option's words
    (the job schema would name ``job.input.chunk_bytes`` and ``null``)."""
    if value is None or value.strip().lower() == "none":
        return None
    if not parses(parse_bytes, value):
        raise click.BadParameter(
            f"expected a size like '128MiB', a number of bytes > 0 or none, got {value!r}")
    return value


def _chunk_bytes_option(f: Callable) -> Callable:
    return click.option(
        "--chunk-bytes", metavar="SIZE", callback=_chunk_bytes, default=DEFAULT_CHUNK_BYTES,
        show_default=True,
        help="The most a chunk's features may take: consecutive small files share a chunk, "
             "a larger file is read in runs of its row groups; none: one chunk per file."
    )(f)


def _data_options(f: Callable) -> Callable:
    """Options shared by fit and sweep: the features, how they are read, the K-means params."""
    options = [
        click.option("--columns", multiple=True, callback=_column_names, metavar="A,B,...",
                     help="Feature columns; repeat or comma-separate. Default: every numeric "
                          "column that is not a key. " + _NAMES_HELP),
        click.option("--max-iter", type=click.IntRange(min=1), default=_DEFAULTS["max_iter"],
                     show_default=True, help="Maximum Lloyd iterations."),
        click.option("--tol", type=click.FloatRange(min=0), default=_DEFAULTS["tol"],
                     show_default=True,
                     help="Convergence tolerance (relative to the variance)."),
        click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None,
                     help="Random seed from 0 to 2**32 - 1: the same seed gives the same "
                          "centres."),
        click.option("--metric", type=click.Choice(["euclidean", "cosine"]),
                     default=_DEFAULTS["metric"], show_default=True,
                     help="cosine: spherical k-means, for direction-only data."),
        click.option("--standardize", is_flag=True,
                     help="Cluster (x - mean) / std of each feature; centres stay in "
                          "original units."),
        click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
                     show_default=True, help="Float type of the features in memory."),
        click.option("--missing", type=click.Choice(["error", "drop"]), default="error",
                     show_default=True,
                     help="Rows with NaN, inf or null features: stop, or skip them (with "
                          "--metric cosine and without --standardize, rows of zero norm "
                          "too)."),
        _chunk_bytes_option,
        click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                     help="fsspec option for the input (and outputs on the same storage); "
                          "repeat. Dotted keys nest: client_kwargs.region_name=eu-west-1. "
                          + _VALUE_HELP),
        click.option("--oversampling-factor", type=click.FloatRange(min=0, min_open=True),
                     callback=_finite, default=None, metavar="X",
                     help="k-means||: rows sampled per round, as a multiple of K. Default: 2."),
        click.option("--init-rounds", type=click.IntRange(min=1), default=None, metavar="N",
                     help="k-means||: sampling rounds (passes over the data). Default: 5."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _data_spec(input_url, columns, keys, dtype, missing, chunk_bytes, storage_options, max_iter,
               tol, seed, metric, standardize, oversampling_factor,
               init_rounds) -> tuple[dict, dict]:
    """The ``input`` and ``params`` entries of a job spec from :func:`_data_options`."""
    inp = {"url": input_url, "columns": columns, "key_columns": keys or [],
           "dtype": dtype, "missing": missing, "chunk_bytes": chunk_bytes,
           "storage_options": _storage_options(storage_options)}
    params = {"max_iter": max_iter, "tol": tol, "random_state": seed, "metric": metric,
              "standardize": standardize}
    for name, value in (("oversampling_factor", oversampling_factor),
                        ("init_rounds", init_rounds)):
        if value is not None:  # else the job's default
            params[name] = value
    return inp, params


@main.command()
@click.argument("input_url")
@click.option("--k", "n_clusters", type=click.IntRange(min=1), required=True,
              help="Number of clusters.")
@click.option("--key", "keys", multiple=True, metavar="COLUMN", callback=_column_names,
              help="Key column copied next to each label; repeat or comma-separate. "
                   + _NAMES_HELP)
@click.option("--init", type=click.Choice(["k-means||", "k-means++", "random"]),
              default=_DEFAULTS["init"], show_default=True, help="Initialisation.")
@click.option("--n-init", type=click.IntRange(min=1), default=None,
              help="Number of initialisations, the best kept. Default: 10 for random, else 1.")
@_data_options
@click.option("--output", "-o", "model_url", metavar="MODEL_URL",
              help="Where to save the model (a directory, local or fsspec URL).")
@click.option("--labels", "labels_url", metavar="URL",
              help="Where to write each row's cluster and distance, next to its keys.")
@click.option("--no-profile", "profile", is_flag=True, flag_value=False, default=True,
              help="Skip the cluster profile (one more pass over the data), printed and "
                   "written as profile.csv and profile.md into the model directory.")
@click.option("--plot", "plot_url", metavar="FILE.png",
              help="Write a scatter of a sample of rows coloured by cluster (needs matplotlib).")
@click.option("--plot-features", metavar="X,Y", callback=_column_names,
              help="The two features on the scatter's axes. Default: a PCA projection. "
                   + _NAMES_HELP)
@click.option("--overwrite", is_flag=True,
              help="Replace a model, labels or plot already there.")
@_json_option
@_cluster_options
def fit(input_url, n_clusters, keys, init, n_init, columns, max_iter, tol, seed, metric,
        standardize, dtype, missing, chunk_bytes, storage_options, oversampling_factor,
        init_rounds,
        model_url, labels_url, profile, plot_url, plot_features, overwrite, as_json, progress,
        cluster_file, scheduler, timeout):
    """Fit K-means on the Parquet data at INPUT_URL; save the model and labels.

    Prints each cluster's size, share, feature means and a description, and writes them
    as profile.csv and profile.md into the model directory.

    \b
    dask-kmeans fit data/customers/ --k 5 --standardize --key customer_id \\
        --seed 0 --output models/k5 --labels labels/k5 --plot k5.png
    """
    if plot_features and not plot_url:
        raise click.UsageError("--plot-features chooses the axes of the --plot scatter: give "
                               "--plot FILE.png too, or leave --plot-features out")
    if init != "k-means||":
        for option, value in (("--oversampling-factor", oversampling_factor),
                              ("--init-rounds", init_rounds)):
            if value is not None:
                raise click.UsageError(f"{option} applies to --init k-means|| only; with "
                                       f"--init {init} it would be ignored: leave it out")
    inp, params = _data_spec(input_url, columns, keys, dtype, missing, chunk_bytes,
                             storage_options, max_iter, tol, seed, metric, standardize,
                             oversampling_factor, init_rounds)
    params.update(n_clusters=n_clusters, init=init)
    if n_init is not None:
        params["n_init"] = n_init
    spec = {"job": {
        "kind": "fit", "input": inp, "params": params,
        "output": {"model": model_url, "labels": labels_url, "profile": profile,
                   "plot": plot_url, "plot_features": plot_features,
                   "overwrite": overwrite},
    }}
    _remember_secrets(spec)
    _run(jobs.validate_job(spec, source="the command line"), cluster_file, scheduler, timeout,
         as_json, progress)


@main.command()
@click.argument("model_url")
@click.argument("input_url")
@click.option("--output", "-o", "labels_url", metavar="URL", required=True,
              help="Where to write each row's cluster and distance, next to its keys.")
@click.option("--key", "keys", multiple=True, metavar="COLUMN", callback=_column_names,
              help="Key column copied next to each label; repeat or comma-separate. "
                   + _NAMES_HELP)
@click.option("--columns", multiple=True, callback=_column_names, metavar="A,B,...",
              help="Feature columns; repeat or comma-separate. Default: the model's. "
                   + _NAMES_HELP)
@click.option("--missing", type=click.Choice(["error", "drop"]), default="error",
              show_default=True, help="Rows with NaN, inf or null features: stop, or skip them "
                                      "(for a cosine model that does not standardize, rows "
                                      "of zero norm too).")
@_chunk_bytes_option
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
              help="fsspec option for the input (and the model and output on the same "
                   "storage); repeat. " + _VALUE_HELP)
@click.option("--overwrite", is_flag=True, help="Replace labels already there.")
@_json_option
@_cluster_options
def predict(model_url, input_url, labels_url, keys, columns, missing, chunk_bytes,
            storage_options, overwrite, as_json, progress, cluster_file, scheduler, timeout):
    """Label the Parquet data at INPUT_URL with the model saved at MODEL_URL.

    \b
    dask-kmeans predict models/k5 data/new-customers/ --key customer_id \\
        --output labels/new-k5
    """
    spec = {"job": {
        "kind": "predict",
        "model": model_url,
        "input": {"url": input_url, "columns": columns, "key_columns": keys or [],
                  "missing": missing, "chunk_bytes": chunk_bytes,
                  "storage_options": _storage_options(storage_options)},
        "output": {"labels": labels_url, "overwrite": overwrite},
    }}
    _remember_secrets(spec)
    _run(jobs.validate_job(spec, source="the command line"), cluster_file, scheduler, timeout,
         as_json, progress)


def _k_values(ctx, param, value):
    try:
        if ".." in value:
            jobs.parse_k(value)  # checks the size before building the list
            return value
        ks = jobs.parse_k([int(v) for v in value.split(",") if v.strip()])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"expected a range like 2..12 or a list like 2,4,8 of "
                                 f"values >= 1, got {value!r}")
    return ks


@main.command(name="sweep")
@click.argument("input_url")
@click.option("--k", "ks", required=True, metavar="LO..HI", callback=_k_values,
              help="The values of K: an inclusive range like 2..12 or a list like 2,4,8.")
@click.option("--key", "keys", multiple=True, metavar="COLUMN", callback=_column_names,
              help="Identifier column, left out of the default features; repeat or "
                   "comma-separate. " + _NAMES_HELP)
@_data_options
@click.option("--plot", "plot_url", default="elbow.png", show_default=True,
              metavar="FILE.png", help="Where to save the elbow plot (needs matplotlib).")
@click.option("--no-plot", is_flag=True, help="Save no elbow plot.")
@click.option("--table", "table_url", metavar="FILE",
              help="Also write the table of K, inertia, n_iter and silhouette: CSV (.csv), "
                   "JSON (.json) or else Parquet.")
@click.option("--overwrite", is_flag=True, help="Replace a plot or table already there.")
@_json_option
@_cluster_options
def sweep(input_url, ks, keys, columns, max_iter, tol, seed, metric, standardize, dtype,
          missing, chunk_bytes, storage_options, oversampling_factor, init_rounds, plot_url,
          no_plot,
          table_url, overwrite, as_json, progress, cluster_file, scheduler, timeout):
    """Fit every K at once on the Parquet data at INPUT_URL and suggest one.

    Prints the inertia and the silhouette (on a sample of rows) of each K, the suggested K
    and why, and saves the elbow plot. Every pass over the data serves every K, so the
    sweep reads the data about as often as one fit.

    \b
    dask-kmeans sweep data/customers/ --k 2..12 --standardize --key customer_id --seed 0
    dask-kmeans sweep data/customers/ --k 2,4,8,16 --key customer_id --plot k.png \\
        --table k.csv
    """
    source = click.get_current_context().get_parameter_source("plot_url")
    if no_plot and source is not None and source.name != "DEFAULT":
        raise click.UsageError("--no-plot saves no elbow plot, so --plot would be ignored: "
                               "give one or the other")
    inp, params = _data_spec(input_url, columns, keys, dtype, missing, chunk_bytes,
                             storage_options, max_iter, tol, seed, metric, standardize,
                             oversampling_factor, init_rounds)
    spec = {"job": {
        "kind": "sweep", "input": inp, "k": ks, "params": params,
        "output": {"table": table_url, "plot": None if no_plot else plot_url,
                   "overwrite": overwrite},
    }}
    _remember_secrets(spec)
    _run(jobs.validate_job(spec, source="the command line"), cluster_file, scheduler, timeout,
         as_json, progress)


def _set_option(f: Callable) -> Callable:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a key of the job, like params.n_clusters=5; repeat. "
                             + _VALUE_HELP)(f)


@main.command()
@click.argument("job_file", metavar="JOB.yaml")
@_set_option
@click.option("--resume", is_flag=True,
              help="Continue from the checkpoint in the job's params.checkpoint, if one was "
                   "written there (the same as --set params.resume=true).")
@_json_option
@_cluster_options
def run(job_file, overrides, resume, as_json, progress, cluster_file, scheduler, timeout):
    """Run the job described in JOB.yaml here, and wait for it.

    \b
    dask-kmeans run jobs/demo.yaml --set params.n_clusters=6
    dask-kmeans run job.yaml --set params.checkpoint=ckpt/ --resume
    """
    spec = jobs.load_job(job_file, overrides)
    if resume:
        job = spec["job"]
        if job["kind"] != "fit":
            raise click.UsageError(f"--resume continues a fit job from its params.checkpoint, "
                                   f"but {job_file} is a {job['kind']} job, which keeps no "
                                   "checkpoint: leave --resume out")
        if job["params"]["checkpoint"] is None:
            raise click.UsageError(f"--resume continues a fit job from its params.checkpoint, "
                                   f"but it has none: set params.checkpoint in {job_file} or "
                                   "with --set params.checkpoint=DIR, or leave --resume out")
        spec = jobs.validate_job({**spec, "job": {**job, "params": {**job["params"],
                                                                     "resume": True}}})
    _run(spec, cluster_file, scheduler, timeout, as_json, progress)


@main.command()
@click.argument("job_file", metavar="JOB.yaml")
@_set_option
@_cluster_options
def submit(job_file, overrides, cluster_file, scheduler, timeout):
    """Start the job in JOB.yaml on a running cluster and print its id.

    The job runs as a task on the cluster and carries on after this command exits; follow
    it with `dask-kmeans status JOB_ID`.

    \b
    dask-kmeans submit jobs/fit_s3.yaml --scheduler tcp://10.0.0.5:8786
    """
    spec = jobs.load_job(job_file, overrides)
    _remember_secrets(spec)
    target = _target(cluster_file, scheduler, spec)
    _require_persistent(target, "submit")
    jobs.keep_finished()  # a bad setting is bad usage, whether the scheduler answers or not
    with _connected(target, timeout) as client:
        job_id = jobs.submit_job(spec, client)
    _out(job_id)


@main.command()
@click.argument("job_id")
@_cluster_options
def status(job_id, cluster_file, scheduler, timeout):
    """Print the state and result of a submitted job as JSON.

    Exit code 0 when the job finished or is still running, 1 when it failed, 2 when the
    scheduler has no job of that id (the scheduler keeps the records of the most recently
    finished jobs only: the Dask setting dask-kmeans.jobs.keep-finished, 100 by default).

    \b
    dask-kmeans status fit-3f2c9a1b7d4e --scheduler tcp://10.0.0.5:8786
    """
    target = _target(cluster_file, scheduler)
    _require_persistent(target, "status")
    with _connected(target, timeout) as client:
        record = jobs.job_status(job_id, client)
    code = 1 if record["state"] in ("failed", "lost") else 0
    click.get_current_context().meta[_EXIT_CODE] = code  # also if nobody reads the record
    _out(json.dumps(record, indent=2))
    if code:
        raise click.exceptions.Exit(code)


def _warn_missing_tls_files(config: dict, where: str = "") -> None:
    """A valid TLS config may name files that exist on another machine only: say so."""
    for path, problem in missing_tls_files(config):
        click.echo(f"Warning: {where}{path}: {problem}: connecting from this machine will "
                   f"fail", err=True)


@main.command()
@click.argument("file", metavar="FILE.yaml")
@_set_option
def validate(file, overrides):
    """Check a job spec or a cluster config (told apart by the top-level key).

    \b
    dask-kmeans validate jobs/demo.yaml
    dask-kmeans validate cluster-config/tls.yaml
    """
    try:
        with open(file, encoding="utf-8") as f:
            raw = load_yaml(f)
    except FileNotFoundError:
        raise CommandError(f"{file}: no such file", 2) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        # A directory, an unreadable or non-UTF-8 file, bad YAML: the job loader below
        # reports it, naming the file, with exit code 2 as `run` does.
        raw = None
    top = set(raw) if isinstance(raw, dict) else set()
    if "cluster" in top and "job" not in top:
        if overrides:
            raise CommandError("--set applies to job specs only", 2)
        config = load_cluster_config(file)
        _out(f"OK: {file} is a valid cluster config (kind {config['cluster']['kind']})")
        _warn_missing_tls_files(config)
    elif "job" in top or raw is None:
        spec = jobs.load_job(file, overrides)
        _out(f"OK: {file} is a valid job spec (kind {spec['job']['kind']})")
        config = jobs.cluster_target(spec).get("config_or_path")
        if config is not None:
            _warn_missing_tls_files(load_cluster_config(config) if isinstance(config, str)
                                    else config, "job.cluster: ")
    else:
        raise CommandError(f"{file}: neither a job spec (top-level key 'job') nor a cluster "
                           f"config (top-level key 'cluster'); its top-level keys are "
                           f"{', '.join(map(str, top)) or 'none'}", 2)


if __name__ == "__main__":  # pragma: no cover
    main()
