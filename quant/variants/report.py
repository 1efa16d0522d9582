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


def table(models: Path, names=folder.VARIANTS) -> str:
    rows = load(models, names)
    if not rows:
        return f"no variant folders in {models}"
    head = ("model", "top-1", "drop pts", "floor", "noise/signal", "quant n/s", "cosine", ".espdl B", "int16 ops",
            "latency us*")
    first = rows[0]["info"]["quality"]
    lines = [("float", f"{first['float_top1'] * 100:.2f}%", "-", "-", "-", "-", "-", "-", "-", "-")]
    for r in rows:
        q, m, b = r["info"]["quality"], r["info"]["model"], r["info"]["budgets"]
        lines.append((r["variant"], f"{q['top1'] * 100:.2f}%", f"{q['top1_drop_points']:.2f}", f"{q['floor_drop_points']:g}",
                      f"{q['output_noise_signal']:.2e}", f"{q['quantization_noise_signal']:.2e}", f"{q['output_cosine']:.5f}", f"{m['espdl_bytes']:,}",
                      str(len(r["json"]["int16_layers"])), f"{b['latency_us']['value']:,}"))
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [fmt(head), "  ".join("-" * w for w in widths), *[fmt(x) for x in lines]]
    n = first["heldout_images"]
    out.append(f"top-1 on {n} held-out images (PPQ simulator); noise/signal and cosine: logits vs the float model; "
               "quant n/s: vs the float graph the variant quantizes (after balanced's ReLU6 -> ReLU);\n"
               f"* latency budget, {rows[0]['info']['budgets']['latency_us']['provenance']}")
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
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
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
