"""The chunk kernels of this checkout side by side with those of earlier commits.

Run with ``python benchmarks/kernel_versions.py --rev 074db4c --rev cafee48`` from the
repository. Each ``--rev``'s ``dask_kmeans/_kernels.py`` (a module of NumPy and numba
only) is taken with ``git show`` into a temporary directory and imported beside this
checkout's. On one thread (one BLAS thread), for each configuration (dtype, a common
offset added to every feature, ``d``, ``k``) of a Gaussian mixture of ``--rows`` rows,
the plain pass (``assign``, ``lloyd_partials``) and a first bounded pass
(``bounded_partials``) of every version are timed in turn, ``--repeats`` times; the table
gives this checkout's median in milliseconds and its ratio to each revision's median. The
machine is shared and noisy: read the ratios, and run it twice.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache needs the module importable by name
    spec.loader.exec_module(module)
    return module


def _kernels_at(rev: str, directory: Path):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:dask_kmeans/_kernels.py"],
                            check=True, capture_output=True, text=True).stdout
    path = directory / f"kernels_{rev.replace('/', '_')}.py"
    path.write_text(source)
    return _load(path, path.stem)


def _passes(mod, x, c):
    """The three timed calls of one kernel module."""
    def bounded(x, c):
        _, s_half = mod.center_geometry(c, None)
        mod.bounded_partials(x, c, None, None, None, s_half)

    return {"assign": lambda: mod.assign(x, c), "lloyd": lambda: mod.lloyd_partials(x, c),
            "bounded": lambda: bounded(x, c)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", action="append", required=True,
                   help="a git revision to compare with (repeatable)")
    p.add_argument("--rows", type=int, default=250_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--config", action="append",
                   help="DTYPE:OFFSET:D:K, like float32:1e4:32:32 (repeatable); default: "
                        "float32 and float64, near 0 and offset (1e4 / 1e9), d=4 k=8 and "
                        "d=32 k=32")
    args = p.parse_args()
    configs = [c.split(":") for c in args.config] if args.config else [
        (dt, off, d, k) for dt, off in (("float32", "0"), ("float32", "1e4"),
                                        ("float64", "0"), ("float64", "1e9"))
        for d, k in (("4", "8"), ("32", "32"))]

    from threadpoolctl import threadpool_limits

    from dask_kmeans import _kernels as current

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        older = [_kernels_at(rev, Path(tmp)) for rev in args.rev]
        print(f"{'dtype':8s} {'offset':>7s} {'d':>3s} {'k':>4s} {'pass':8s} {'ms':>7s}  "
              + "  ".join(f"x {rev:>10s}" for rev in args.rev))
        for dtype, offset, d, k in configs:
            d, k = int(d), int(k)
            centres = rng.normal(scale=3.0, size=(k, d))
            x = (centres[rng.integers(k, size=args.rows)] + rng.normal(size=(args.rows, d))
                 + float(offset)).astype(dtype)
            c = x[rng.choice(len(x), k, replace=False)]
            versions = [_passes(m, x, c) for m in (current, *older)]
            for name in versions[0]:
                calls = [v[name] for v in versions]
                for call in calls:  # compile and warm up
                    call()
                times = [[] for _ in calls]
                for _ in range(args.repeats):
                    for i, call in enumerate(calls):
                        t0 = time.perf_counter()
                        call()
                        times[i].append(time.perf_counter() - t0)
                med = [float(np.median(t)) for t in times]
                print(f"{dtype:8s} {offset:>7s} {d:3d} {k:4d} {name:8s} {1000 * med[0]:7.2f}  "
                      + "  ".join(f"{med[0] / m:12.2f}" for m in med[1:]), flush=True)


if __name__ == "__main__":
    main()
