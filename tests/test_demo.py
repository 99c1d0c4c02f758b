"""The demos, run here as subprocesses as a newcomer would: jobs/demo.py and `make demo`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import png_size

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_prints_the_profile_table():
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1,000,000 customers" in out.stdout
    assert "income" in out.stdout and "share" in out.stdout
    assert out.stdout.count("%") >= 5  # one share per cluster


def test_make_demo_writes_the_profile_and_both_plots_in_under_a_minute(tmp_path):
    """`make demo` as the README says, its files sent to a temporary directory.

    The .venv that runs this suite is the one `make` would create, so no install happens.
    """
    import shutil
    import time

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if Path(sys.executable).parent != ROOT / ".venv" / "bin":
        pytest.skip("runs with the repository's .venv, which `make demo` uses")
    start = time.perf_counter()
    out = subprocess.run(["make", "--no-print-directory", "demo", f"DEMO_DIR={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    assert seconds < 60, f"make demo took {seconds:.0f} s"
    stdout = out.stdout
    assert f"wrote 1,000,000 customers to {tmp_path}/customers" in stdout
    # The profile table: a header, a rule, one line per cluster with its share.
    lines = stdout.splitlines()
    header = lines.index("clusters:") + 1
    assert lines[header].startswith("cluster     size  share  age (mean ± std)")
    rows = lines[header + 2:header + 7]
    assert [row.split()[0] for row in rows] == ["0", "1", "2", "3", "4"]
    shares = [float(row.split()[2].rstrip("%")) for row in rows]
    assert sum(shares) == pytest.approx(100, abs=0.3)
    assert "suggested K: 5 " in stdout
    assert f"demo files in {tmp_path}/" in stdout
    png_size(tmp_path / "clusters.png")
    png_size(tmp_path / "elbow.png")
    for name in ("profile.csv", "profile.md", "_SUCCESS"):
        assert (tmp_path / "model" / name).is_file(), name
    assert (tmp_path / "labels" / "_SUCCESS").is_file()
    assert "k-means|| 6 passes" in out.stderr
