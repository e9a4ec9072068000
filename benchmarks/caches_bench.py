"""A first run's caches phase (``worker.prepare.caches.warm_all``) of the embedded aligned base, for two
source trees side by side: each run in a fresh ``TUNEGATE_HOME`` that holds only the converted and the
aligned model (hard links of this home's), so the shipped caches are installed and the rest is computed as
on a first run.

    python benchmarks/caches_bench.py --tree before=/path/to/old/checkout --tree after=. [--repeats 1]

Alternates the trees ``--repeats`` times and prints each run's wall time, the best of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import print_machine

CHILD = """
import time
from tunegate.settings import get_settings
from worker.prepare import caches

if __name__ == "__main__":
    t = time.perf_counter()
    caches.warm_all("smollm2-135m-aligned", get_settings())
    print(f"WARM_ALL_S={time.perf_counter() - t:.2f}")
"""


def fresh_home(root: Path, models: Path) -> Path:
    """A home whose models folder holds hard links of the converted and the aligned model only."""
    home = root / "home"
    for name in ("smollm2", "smollm2-aligned"):
        shutil.copytree(models / name, home / "models" / name, copy_function=os.link)
    return home


def one_run(tree: Path, models: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        home = fresh_home(Path(tmp), models)
        script = Path(tmp) / "warm.py"  # a file: the spawned pieces import the parent's main module
        script.write_text(CHILD)
        env = {**os.environ, "TUNEGATE_HOME": str(home), "PYTHONPATH": str(tree.resolve())}
        out = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True, cwd=tmp
        )
        line = next(x for x in out.stdout.splitlines() if x.startswith("WARM_ALL_S="))
        return float(line.split("=", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", required=True, help="name=path of a source checkout")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models", default=str(Path.home() / ".tunegate" / "models"))
    args = ap.parse_args()
    print_machine()
    trees = dict(t.split("=", 1) for t in args.tree)
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, path in trees.items():
            times[name].append(one_run(Path(path), Path(args.models)))
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    best = {name: min(t) for name, t in times.items()}
    first = next(iter(best))
    print(json.dumps({"best_s": best, "ratio_to_" + first: {n: b / best[first] for n, b in best.items()}}))


if __name__ == "__main__":
    main()
