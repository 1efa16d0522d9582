"""`make bench`: how long `quant build` takes and how much memory it needs (a measurement, not a test).

Builds all three variants from the committed float model into a temporary --models-dir, then rebuilds with
nothing changed, and prints wall time per variant, the total and its user + sys CPU time, the no-op rebuild and
the peak RSS (resource.getrusage of the child processes) against the targets.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"total_s": 60.0, "noop_s": 3.0, "peak_rss_mb": 2048.0}


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def quant_build(out: str) -> tuple[float, float, str]:
    """(wall s, user + sys CPU s, stdout) of one `quant build` into `out`."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    start, cpu0 = time.perf_counter(), cpu_children()
    proc = subprocess.run([sys.executable, "-m", "quant", "build", "--models-dir", out], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, cpu_children() - cpu0
    if proc.returncode != 0:
        sys.exit(f"quant build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, cpu, proc.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-build-") as out:
        for p in ("test_vectors.bin", "test_vectors.json"):  # the committed fixed vectors, as in models/
            shutil.copyfile(REPO / "models" / p, Path(out) / p)
        total, cpu, log = quant_build(out)
        per_variant = {m[1]: float(m[2]) for m in re.finditer(r"^(\w+): done in ([\d.]+) s", log, re.M)}
        noop, _, log2 = quant_build(out)
        if log2.count("up to date") != 3:
            sys.exit(f"the second build was not a no-op:\n{log2}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = [(f"build {v}", f"{s:.1f} s", "") for v, s in per_variant.items()]
    rows += [
        ("build all three (wall, incl. start-up and data)", f"{total:.1f} s", f"<= {TARGETS['total_s']:g} s"),
        ("build all three (user + sys CPU: what a shared machine cannot inflate)", f"{cpu:.1f} s", ""),
        ("no-op rebuild (wall)", f"{noop:.2f} s", f"<= {TARGETS['noop_s']:g} s"),
        ("peak RSS of a build", f"{peak_mb:.0f} MB", f"<= {TARGETS['peak_rss_mb']:g} MB"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'step':<{w}}  {'measured':>10}  target")
    for name, value, target in rows:
        print(f"{name:<{w}}  {value:>10}  {target}")
    print(f"cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
