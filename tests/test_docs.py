"""Run every ```python code block of README.md and docs/*.md, so the docs stay true.

Each block runs on its own, in a fresh namespace, so every block must do its own
imports. Blocks that are not meant to run use another language tag (```text,
```bash). Tracebacks point at the Markdown file and its line numbers.
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


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file.

    Returns
    -------
    list of (line, code)
        ``line`` is the 1-based line number of the block's first line of code.
    """
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if match["lang"] == "python":
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
        exec(compiled, {"__name__": "__docs__"})
