"""Check every code block of README.md and docs/*.md, so the docs stay true.

- ```python blocks run, each on its own in a fresh namespace (so every block does its
  own imports); tracebacks point at the Markdown file and its line numbers.
- ```yaml blocks are validated: job specs against the job schema, cluster configs against
  the cluster schema.
- ```bash blocks: every ``dask-kmeans`` command is parsed by the real command-line parser
  (its options, their types and choices, the required arguments), without running it,
  since the examples name data and schedulers that are not here. Synopsis lines (with
  ``[optional]`` parts) are skipped; other commands (``make``, ``pip``) are not checked.
- ```text blocks are sample output, not code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
                    re.MULTILINE | re.DOTALL)


def python_blocks(path: Path, lang: str = "python") -> list[tuple[int, str]]:
    """The ```python (or other ``lang``) blocks of a Markdown file.

    Returns
    -------
    list of (line, code)
        ``line`` is the 1-based line number of the block's first line of code.
    """
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if match["lang"] == lang:
            line = text.count("\n", 0, match.start("body")) + 1
            blocks.append((line, match["body"]))
    return blocks


BLOCKS = [(path, line, code) for path in DOCS for line, code in python_blocks(path)]


def test_docs_have_python_blocks():
    files = {path.name for path, _, _ in BLOCKS}
    assert {"README.md", "api.md"} <= files, f"no ```python block found in some docs: {files}"


@pytest.mark.parametrize(
    "path, line, code", BLOCKS,
    ids=[f"{path.relative_to(ROOT)}:{line}" for path, line, _ in BLOCKS],
)
def test_code_block_runs(path, line, code):
    # Leading newlines make the line numbers of tracebacks those of the Markdown file.
    compiled = compile("\n" * (line - 1) + code, str(path), "exec")
    # A LocalCluster(processes=False) runs its workers in this process, and fit limits BLAS
    # threads on every worker for good: restore this process's limits afterwards.
    with threadpool_limits(limits=None):
        exec(compiled, {"__name__": "__main__"})  # as a script runs: its guard holds


YAML = [(path, line, code) for path in DOCS for line, code in python_blocks(path, "yaml")]


@pytest.mark.parametrize(
    "path, line, code", YAML,
    ids=[f"{path.relative_to(ROOT)}:{line}" for path, line, _ in YAML],
)
def test_yaml_block_is_a_valid_spec_or_config(path, line, code):
    from dask_kmeans._schema import load_yaml
    from dask_kmeans.cluster import validate_cluster_config
    from dask_kmeans.jobs import validate_job

    doc = load_yaml(code)
    assert isinstance(doc, dict) and ({"job"} <= set(doc) or {"cluster"} <= set(doc)), (
        f"{path.name}:{line}: neither a job spec nor a cluster config")
    if "job" in doc:
        # Relative cluster files in the examples are relative to jobs/, where they live.
        validate_job(doc, base_dir=ROOT / "jobs", source=f"{path.name}:{line}")
    else:
        validate_cluster_config(doc)


def shell_commands() -> list[tuple[Path, int, str]]:
    """The dask-kmeans command lines of ```bash blocks, continuation lines joined."""
    found = []
    for path in DOCS:
        for line, code in python_blocks(path, "bash"):
            pending, start = "", line
            for i, text in enumerate(code.splitlines()):
                text = text.split("  #", 1)[0].rstrip()
                if not pending:
                    start = line + i
                pending += text.rstrip("\\") + " "
                if text.endswith("\\"):
                    continue
                command, pending = pending.strip(), ""
                words = command.split()
                if words[:1] == ["dask-kmeans"] or words[:2] == ["dask", "kmeans"]:
                    if "[" not in command:  # a synopsis with optional parts
                        found.append((path, start, command))
    return found


COMMANDS = shell_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10, COMMANDS


@pytest.mark.parametrize(
    "path, line, command", COMMANDS,
    ids=[f"{path.relative_to(ROOT)}:{line}" for path, line, _ in COMMANDS],
)
def test_shell_command_parses(path, line, command):
    import shlex

    import click

    from dask_kmeans.cli import main

    words = shlex.split(command)
    args = words[1:] if words[0] == "dask-kmeans" else words[2:]
    parent = click.Context(main, info_name="dask-kmeans")
    sub = main.get_command(parent, args[0])
    assert sub is not None, f"{path.name}:{line}: no command {args[0]!r}"
    try:
        sub.make_context(args[0], args[1:], parent=parent)
    except click.ClickException as exc:
        pytest.fail(f"{path.name}:{line}: {command}\n{exc.format_message()}")


def test_shell_command_check_catches_a_wrong_option():
    with pytest.raises(pytest.fail.Exception, match="No such option '--kk'"):
        test_shell_command_parses(ROOT / "README.md", 1, "dask-kmeans fit data/ --kk 5")
    with pytest.raises(pytest.fail.Exception, match="'--k'"):
        test_shell_command_parses(ROOT / "README.md", 1, "dask-kmeans fit data/ --k five")


_TEST_REF = re.compile(r"`(test_\w+\.py)::(\w+)(?:\[[^\]]*\])?`")


def test_every_test_the_docs_name_exists():
    """The reliability table and the other docs cite tests as `file::test`: each must be a
    test function of that file (one was overwritten by another and still cited)."""
    refs = {(m[1], m[2]) for path in DOCS for m in _TEST_REF.finditer(path.read_text())}
    assert len(refs) > 50
    missing = [f"{file}::{name}" for file, name in sorted(refs)
               if not re.search(rf"^(async )?def {name}\(", (ROOT / "tests" / file).read_text()
                                if (ROOT / "tests" / file).exists() else "", re.MULTILINE)]
    assert not missing, missing
