"""Seconds per vector of the host .espdl interpreter, on one core.

    python bench/bench_interpreter.py [MODEL.espdl ...]   (default: the committed variants)

BLAS and OpenMP are pinned to one thread before numpy loads, so the figure is single-core.
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quant.espdl.reader import load  # noqa: E402
from quant.espdl.interpreter import Interpreter  # noqa: E402
from quant.folder import VARIANTS, variant_file  # noqa: E402

REPEATS = 20


def bench(path: Path) -> float:
    model = load(path)
    interp = Interpreter(model)
    shape = model.inputs[0].shape  # NHWC
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    interp.run(x)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(REPEATS):
            interp.run(x)
        best = min(best, (time.perf_counter() - t0) / REPEATS)
    return best


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [variant_file(v, ".espdl") for v in VARIANTS]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"missing: {', '.join(map(str, missing))} (run `quant build` or pass model paths)")
        return 2
    for p in paths:
        print(f"{p.name}: {bench(p):.4f} s per vector (1 thread, best of 3 x {REPEATS})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
