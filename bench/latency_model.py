"""Print the per-operator latency model's fit (each published ESP32-S3 point, the fit, the leave-one-out
prediction and its error) and the committed variants' estimates, old single-rate method against the new model.

    .venv/bin/python bench/latency_model.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quant.espdl import reader  # noqa: E402
from quant.paths import VARIANTS, variant_file  # noqa: E402
from quant.variants import info, latency  # noqa: E402


def main() -> None:
    coef = latency.fit()
    print("coefficients (us per unit):", ", ".join(f"{k} {v:.4g}" for k, v in coef.items()))
    print(f"\n{'published point':45s} {'published us':>13s} {'fit us':>9s} {'LOO us':>9s} {'LOO error':>10s}")
    for r in latency.fit_table():
        print(f"{r['point']:45s} {r['published_us']:>13,.0f} {r['fit_us']:>9,.0f} {r['loo_us']:>9,.0f} {r['loo_error']:>+10.1%}")
    rate, _ = info.mac_rate()
    print(f"\n{'variant':10s} {'nodes':>6s} {'old: MACs/rate us':>18s} {'new: per-op us':>15s}")
    for v in VARIANTS:
        model = reader.load(variant_file(v, ".espdl"))
        total, per = latency.estimate(model, coef)
        nodes = latency.nodes(model)
        m8 = sum(n.macs for n in nodes if n.elem_bytes != 2)
        m16 = sum(n.macs for n in nodes if n.elem_bytes == 2)
        old = (m8 + info.INT16_MAC_COST * m16) / rate * 1e6
        print(f"{v:10s} {len(per):>6d} {old:>18,.0f} {total:>15,.0f}")


if __name__ == "__main__":
    main()
