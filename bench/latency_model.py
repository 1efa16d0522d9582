"""Print the per-operator latency model's fit (each published ESP32-S3 point, the fit, the leave-one-out
prediction and its error) and the committed variants' estimates.

    .venv/bin/python bench/latency_model.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quant.espdl import reader  # noqa: E402
from quant.folder import VARIANTS, variant_file  # noqa: E402
from quant.variants import latency  # noqa: E402


def main() -> None:
    coef = latency.fit()
    print("coefficients (us per unit):", ", ".join(f"{k} {v:.4g}" for k, v in coef.items()))
    print(f"\n{'published point':45s} {'published us':>13s} {'fit us':>9s} {'LOO us':>9s} {'LOO error':>10s}")
    for r in latency.fit_table():
        print(f"{r['point']:45s} {r['published_us']:>13,.0f} {r['fit_us']:>9,.0f} {r['loo_us']:>9,.0f} {r['loo_error']:>+10.1%}")
    print(f"\n{'variant':10s} {'nodes':>6s} {'estimated us':>13s}  slowest nodes")
    for v in VARIANTS:
        total, per = latency.estimate(reader.load(variant_file(v, ".espdl")), coef)
        top = ", ".join(f"{n.op_type} {us:,.0f}" for n, us in sorted(per, key=lambda p: -p[1])[:3])
        print(f"{v:10s} {len(per):>6d} {total:>13,.0f}  {top}")


if __name__ == "__main__":
    main()
