"""`make demo` runs jobs/demo.py: run it here as a subprocess, as a newcomer would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_prints_the_profile_table():
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1,000,000 customers" in out.stdout
    assert "income" in out.stdout and "share" in out.stdout
    assert out.stdout.count("%") >= 5  # one share per cluster
