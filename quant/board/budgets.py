"""Budgets: read them from a variant's `.info`, check a board run against them, and rewrite them
from a real board's measurements (`quant update-budgets`).

What is measured (one definition, used by the target tests, the report and this command):
- `latency_us`: per inference. The board prints, per vector, min/median/max over `runs` runs; the
  measurement is the **largest per-vector median** (the slowest vector's typical inference), so a
  budget holds for every vector, not only on average.
- `internal_ram_bytes`: internal free heap before load minus its low-water mark (`MEM stage=low_water`),
  i.e. the peak the model took (load + inference). `psram_bytes`: the same for PSRAM.
- `flash_bytes`: the `.espdl` bytes the app loaded (`MODEL bytes=`); the app binary is not counted.
On a virtual board these numbers come from the `.info` estimates, and every message says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from quant.errors import UserError
from quant.folder import (  # the .info and its budgets are read and written by quant.folder
    BUDGETS,
    MODELS,
    VARIANTS,
    Budget,
    load_budgets,
    rewrite_budgets,
    variant_file,
    write_text_atomic,
)
from quant.variants.info import budget

DEFAULT_HEADROOM = 0.15


# ---------------------------------------------------------------------------------------------
# measuring a BoardRun


def measure(run: Any) -> dict[str, int | None]:
    """Measurements of a `quant.board.protocol.BoardRun` (None where the board did not print the data)."""
    out: dict[str, int | None] = {name: None for name in BUDGETS}
    out["latency_vector"] = None
    if run.latency:
        vec, worst = max(run.latency.items(), key=lambda item: (item[1].med_us, -item[0]))
        out["latency_us"], out["latency_vector"] = int(worst.med_us), int(vec)
    out["internal_ram_bytes"] = run.internal_used
    out["psram_bytes"] = run.psram_used
    if run.model is not None:
        out["flash_bytes"] = int(run.model["bytes"])
    return out


CLAIM_TEXT = {
    "measured": "measured on the chip",
    "virtual": "virtual board: derived from the .info estimate, not measured",
    "emulated": "emulated board: the real firmware on QEMU, not chip time",
}


def check(
    measured: Mapping[str, int | None],
    budgets: Mapping[str, Budget],
    names: tuple[str, ...],
    *,
    claims: str,
    variant: str,
) -> list[str]:
    """One message per budget in `names` that is exceeded or could not be measured; `claims` is what the
    board's figures are (quant.board.boards: measured, virtual, emulated) and every message says so."""
    how = CLAIM_TEXT[claims]
    problems = []
    for name in names:
        what, unit = BUDGETS[name]
        budget, value = budgets[name], measured.get(name)
        if value is None:
            problems.append(f"{variant}: budgets.{name}: the board did not report {what}; see the DUT log")
            continue
        if value > budget.value:
            extra = ""
            if name == "latency_us" and measured.get("latency_vector") is not None:
                extra = f" on vector {measured['latency_vector']}"
            excess = value - budget.value
            problems.append(
                f"{variant}: {what} is {value} {unit}{extra} ({how}), over the budget "
                f"budgets.{name} = {budget.describe()} by {excess} {unit} ({excess / budget.value:.1%}); "
                f"optimize the model or, if the new value is intended, re-measure on a board and run "
                f"`quant update-budgets --results results/<run>/report.json`"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# `quant update-budgets`


def add_arguments(parser) -> None:
    parser.add_argument("--results", required=True, metavar="PATH",
                        help="a target run's report.json (or the results/<timestamp>/ folder holding it)")
    parser.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                        help="budget = ceil(measurement * (1 + headroom)); default %(default)s")
    parser.add_argument("--variant", action="append", choices=VARIANTS,
                        help="update only this variant (repeatable; default: every variant in the report)")
    parser.add_argument("--models-dir", type=Path, default=MODELS, metavar="DIR",
                        help="models folder whose .info files are rewritten (default: models/)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes without writing")


def _load_report(path: Path) -> tuple[Path, dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: pass --results results/<timestamp>/report.json from a board run") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a target-run report ({exc}): pass a report.json written by pytest") from None
    if doc.get("kind") != "target-run" or not isinstance(doc.get("variants"), dict):
        raise UserError(f"{path} is not a target-run report: pass a report.json written by the target tests")
    return path, doc


def new_budget(name: str, measured: int, headroom: float, identity: Mapping[str, Any], date: str, source: str) -> dict:
    """A measured budget: value = ceil(measured * (1 + headroom)) (quant.variants.info's rule), with the board's identity."""

    keys = ("board", "fw", "target", "idf", "espdl", "cpu_mhz", "psram_bytes", "cores")
    board = " ".join(f"{k}={identity[k]}" for k in keys if identity.get(k) not in (None, ""))
    return dict(budget(measured, headroom, f"{board} date={date} (from {source})"), provenance="measured")


def _fmt_budget(b: Mapping[str, Any] | Budget) -> str:
    if isinstance(b, Budget):
        b = {"value": b.value, "basis": b.basis, "headroom": b.headroom, "provenance": b.provenance}
    head = b.get("headroom")
    return f"{b['value']} ({b.get('provenance')}, basis {b.get('basis')}, headroom {head if head is None else f'{head:.0%}'})"


def update_from_report(report_path: Path, *, headroom: float, variants: list[str] | None, models: Path,
                       dry_run: bool, out=print) -> int:
    if not 0 <= headroom <= 5:
        raise UserError(f"--headroom {headroom} is out of range: give a fraction such as 0.15 (= +15%)")
    path, doc = _load_report(report_path)
    chosen = variants or sorted(doc["variants"], key=lambda v: VARIANTS.index(v) if v in VARIANTS else 99)
    missing = [v for v in chosen if v not in doc["variants"]]
    if missing:
        raise UserError(f"{path} has no results for {', '.join(missing)}: run the target tests for it first")
    virtual = [v for v in chosen if doc["variants"][v].get("claims", "measured" if doc["variants"][v].get("board") == "chip"
                                                             else "virtual") != "measured"]
    if virtual:
        raise UserError(
            f"{path} is not a chip run ({', '.join(virtual)}: virtual or emulated): its latency and memory are not "
            "the chip's; run the target tests on a real board (`pytest --target esp32s3 --port=/dev/ttyUSB0`) "
            "and pass that run's report"
        )
    date = str(doc.get("created", ""))[:10] or _dt.date.today().isoformat()
    plans = []
    for v in chosen:
        entry = doc["variants"][v]
        if entry.get("error"):
            raise UserError(f"{path}: the {v} board session failed ({entry['error'].splitlines()[0]}): nothing to measure; fix the run first")
        model = entry.get("model") or {}
        committed = variant_file(v, ".espdl", models)
        if not committed.exists():
            raise UserError(f"{committed} is missing: run `quant build` first")
        sha = hashlib.sha256(committed.read_bytes()).hexdigest()
        if model.get("sha256") != sha:
            raise UserError(
                f"{path}: the {v} board ran model {str(model.get('sha256'))[:12]}..., the committed "
                f"{committed.name} is {sha[:12]}...: re-run the target tests on the current model first"
            )
        measured = entry.get("measurements") or {}
        absent = [n for n in BUDGETS if measured.get(n) is None]
        if absent:
            raise UserError(f"{path}: the {v} run has no measurement for {', '.join(absent)}: re-run the target tests")
        current = load_budgets(v, models)
        updates = {n: new_budget(n, int(measured[n]), headroom, entry.get("identity") or {}, date, str(path))
                   for n in BUDGETS}
        plans.append((v, current, updates))
    for v, current, updates in plans:
        info = variant_file(v, ".info", models)
        out(f"{info}:")
        for n, new in updates.items():
            change = "unchanged" if new["value"] == current[n].value else f"{new['value'] - current[n].value:+d}"
            out(f"  budgets.{n}: {_fmt_budget(current[n])} -> {_fmt_budget(new)}  [{change}]")
        out(f"  provenance: {updates['latency_us']['method']}")
        if not dry_run:
            write_text_atomic(info, rewrite_budgets(info.read_text(), updates))
    out("dry run: nothing written" if dry_run else f"updated {len(plans)} .info file(s)")
    return 0


def run(args) -> int:
    return update_from_report(Path(args.results), headroom=args.headroom, variants=args.variant,
                              models=args.models_dir, dry_run=args.dry_run)
