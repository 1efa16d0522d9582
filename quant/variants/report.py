"""`quant report`: compare float vs the variants from the committed .info/.json (no recomputation).

Prints a table and writes a PNG chart (accuracy, output error, size, per-layer error).
"""

from __future__ import annotations

from pathlib import Path

from quant import folder
from quant.errors import UserError


def add_arguments(p) -> None:
    p.add_argument("--models-dir", type=Path, default=folder.MODELS, metavar="DIR",
                   help="folder with gesture_model_<variant>/ (default models/)")
    p.add_argument("--png", type=Path, metavar="PATH", help="chart to write (default DIR/variants.png)")


def load(models: Path, names=folder.VARIANTS) -> list[dict]:
    """[{variant, info, json}] for each variant folder present under `models` (read through quant.folder)."""
    rows = []
    for name in folder.present(models, names):
        info = folder.read_info(name, models)
        rows.append({"variant": name, "info": {"quality": info.quality, "model": info.model,
                                               "budgets": {k: b.as_table() for k, b in info.budgets.items()}},
                     "json": folder.read_meta(name, models)})
    return rows


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy p measured on n images."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def advice(rows: list[dict]) -> list[str]:
    """One line per variant on when to choose it, from its measured error, estimated latency and size, against
    the first variant of the list and the best of each figure."""
    figs = {r["variant"]: (r["info"]["quality"]["output_noise_signal"], r["info"]["budgets"]["latency_us"]["basis"],
                           r["info"]["model"]["espdl_bytes"]) for r in rows}
    base = rows[0]["variant"]
    names = ("output error", "latency", "flash")
    best = [min(figs, key=lambda v: figs[v][i]) for i in range(3)]
    out = []
    for v, f in figs.items():
        wins = [names[i] for i in range(3) if best[i] == v]
        if v == base:
            head = f"{v}: the baseline"
        else:
            head = f"{v}: " + ", ".join(f"{f[i] / figs[base][i]:.2f}x {base}'s {names[i]}" for i in range(3))
        out.append(head + (f"; choose it for the lowest {' and '.join(wins)}" if wins else
                           "; no figure is the best of the set"))
    return out


def table(models: Path, names=folder.VARIANTS) -> str:
    rows = load(models, names)
    if not rows:
        return f"no variant folders in {models}"
    head = ("model", "top-1 (95% CI)", "drop pts", "floor", "noise/signal", "quant n/s", ".espdl B", "int16 ops",
            "latency us*", "PSRAM B*")
    first = rows[0]["info"]["quality"]
    n = first["heldout_images"]

    def top1(p):
        lo, hi = wilson(p, n)
        return f"{p * 100:.2f}% ({lo * 100:.1f}-{hi * 100:.1f})"

    lines = [("float", top1(first["float_top1"]), "-", "-", "-", "-", "-", "-", "-", "-")]
    for r in rows:
        q, m, b = r["info"]["quality"], r["info"]["model"], r["info"]["budgets"]
        lines.append((r["variant"], top1(q["top1"]), f"{q['top1_drop_points']:.2f}", f"{q['floor_drop_points']:g}",
                      f"{q['output_noise_signal']:.2e}", f"{q['quantization_noise_signal']:.2e}", f"{m['espdl_bytes']:,}",
                      str(len(r["json"]["int16_layers"])), f"{b['latency_us']['basis']:,}", f"{b['psram_bytes']['basis']:,}"))
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [fmt(head), "  ".join("-" * w for w in widths), *[fmt(x) for x in lines]]
    out.append(f"top-1 on {n} held-out images (PPQ simulator; one image = {100 / n:.3f} points); noise/signal: logits "
               "vs the float model; quant n/s: vs the float graph the variant quantizes (after balanced's edits);\n"
               f"* {rows[0]['info']['budgets']['latency_us']['provenance']} per inference and model PSRAM, before headroom")
    out += advice(rows)
    return "\n".join(out)


def chart(models: Path, png: Path, names=folder.VARIANTS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load(models, names)
    if not rows:
        raise UserError(f"no variant folders in {models}; run `quant build` first")
    labels = [r["variant"] for r in rows]
    q = [r["info"]["quality"] for r in rows]
    fig, ax = plt.subplots(2, 3, figsize=(16, 8))
    ax[0, 0].bar(["float", *labels], [q[0]["float_top1"] * 100] + [x["top1"] * 100 for x in q], color="C0")
    ax[0, 0].set_ylim(min([x["top1"] for x in q] + [q[0]["float_top1"]]) * 100 - 2, 100.5)
    ax[0, 0].set_title("top-1 accuracy, held-out (%)")
    ax[0, 1].bar(labels, [x["output_noise_signal"] for x in q], color="C1")
    ax[0, 1].set_yscale("log")
    ax[0, 1].set_title("logits noise/signal vs float (lower is better)")
    ax[1, 0].bar(labels, [r["info"]["model"]["espdl_bytes"] / 1024 for r in rows], color="C2")
    ax[1, 0].set_title(".espdl size (KiB)")
    for i, r in enumerate(rows):
        w = r["info"]["quality"]["worst_layers"]
        ax[1, 1].barh([f"{r['variant']}: {x['op'][-28:]}" for x in w][::-1], [x["noise_signal"] for x in w][::-1],
                      color=f"C{i + 3}")
    ax[1, 1].set_xscale("log")
    ax[1, 1].set_title("5 worst layer groups (noise/signal)")
    ax[1, 1].tick_params(axis="y", labelsize=7)
    pareto = next((r for r in rows if (r["json"].get("sensitivity") or {}).get("pareto")), None)
    if pareto is not None:
        s = pareto["json"]["sensitivity"]
        pts = s["pareto"]
        ax[0, 2].scatter([p["latency_us"] / 1000 for p in pts], [p["noise_signal"] for p in pts],
                         s=[p["espdl_bytes"] / 1000 for p in pts], alpha=0.5, color="C1", label="int16 search steps")
        for p in pts:
            ax[0, 2].annotate(str(p["int16_op_count"]), (p["latency_us"] / 1000, p["noise_signal"]), fontsize=7)
        chosen = next(p for p in pts if p["int16_op_count"] == s["chosen_int16_op_count"])
        ax[0, 2].scatter([chosen["latency_us"] / 1000], [chosen["noise_signal"]], marker="*", s=250, color="C3",
                         label=f"chosen ({pareto['variant']})")
        if s.get("latency_cap_us"):
            ax[0, 2].axvline(s["latency_cap_us"] / 1000, color="grey", ls="--", label="latency cap")
        ax[0, 2].axhline(pareto["json"]["spec"]["sensitivity"]["target_noise_signal"], color="grey", ls=":",
                         label="error target")
        ax[0, 2].set_xlabel("estimated latency (ms)")
        ax[0, 2].set_ylabel("output noise/signal (calibration set)")
        ax[0, 2].set_title("int16 search: error vs latency\n(marker area: .espdl size; label: int16 ops)", fontsize=9)
        ax[0, 2].legend(fontsize=7)
    else:
        ax[0, 2].axis("off")
    lat = [r["info"]["budgets"]["latency_us"]["basis"] / 1000 for r in rows]
    ax[1, 2].bar(labels, lat, color="C4")
    ax[1, 2].set_title(f"latency per inference (ms, {rows[0]['info']['budgets']['latency_us']['provenance']})")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return png


def run(args) -> int:
    models = Path(args.models_dir)
    if not load(models):
        raise UserError(f"no variant folders in {models}; run `quant build` first")
    print(table(models))
    png = chart(models, args.png or models / "variants.png")
    print(f"chart: {png}")
    return 0
