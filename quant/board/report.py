"""The report of a target run: results/<UTC timestamp>/report.md, report.json and report.png.

Written by conftest.py at the end of every run with a board (real or virtual). Per variant: the
board's identity, virtual or chip, the outputs verdict, latency and memory against the `.info`
budgets, the self-test, the problems, and each test's outcome. Virtual runs are marked virtual in
every file (their latency and memory are the `.info` estimates, not measurements), and
`quant update-budgets` refuses them. When GITHUB_STEP_SUMMARY is set, the markdown table is
appended there too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from quant.board import budgets as _budgets
from quant.folder import BUDGETS, VARIANTS, load_budgets, variant_file

FORMAT = 1
TESTS = (
    ("test_outputs_match_simulator", "outputs"),
    ("test_model_hash_matches_committed_espdl", "model hash"),
    ("test_selftest_passed", "self-test"),
    ("test_latency_within_budget", "latency"),
    ("test_memory_within_budget", "memory"),
)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def variant_entry(outcome: Any, results: Mapping[str, tuple[str, str]] | None = None) -> dict:
    """The JSON-able record of one variant's board session (a quant.board.session.BoardOutcome)."""
    run = outcome.run
    entry: dict[str, Any] = {
        "board": outcome.kind,
        "claims": outcome.claims,  # measured | virtual | emulated (quant.board.boards)
        "error": outcome.error,
        "dut_log": outcome.log_path,
        "tests": {name: {"outcome": o, "message": m} for name, (o, m) in sorted((results or {}).items())},
        "identity": None, "model": None, "selftest": None, "outputs": None,
        "measurements": None, "budgets": None, "problems": [],
    }
    if outcome.error:
        entry["problems"] = outcome.error.splitlines()
    if run is None:
        return entry
    entry["identity"] = dict(run.boot or {})
    committed = _sha256(variant_file(outcome.variant, ".espdl", outcome.models))
    entry["model"] = {
        "sha256": run.model_sha256,
        "bytes": (run.model or {}).get("bytes"),
        "committed_sha256": committed,
        "matches": run.model_sha256 is not None and run.model_sha256 == committed,
    }
    entry["selftest"] = run.selftest
    if outcome.compare_error:
        entry["outputs"] = {"verdict": "not compared", "message": outcome.compare_error, "bisect": None}
    elif outcome.verdict is not None:
        entry["outputs"] = {
            "verdict": "match" if outcome.verdict.ok else "mismatch",
            "message": outcome.verdict.message(outcome.tolerance),
            "bisect": outcome.bisect_note,
        }
    measured = _budgets.measure(run)
    entry["measurements"] = measured
    try:
        limits = load_budgets(outcome.variant, outcome.models)
    except Exception as exc:  # noqa: BLE001  (the budget tests fail with it; the report says so)
        entry["problems"].append(str(exc))
        return entry
    entry["budgets"] = {
        name: {
            "value": b.value, "provenance": b.provenance, "method": b.method, "headroom": b.headroom,
            "measured": measured.get(name),
            "within": None if measured.get(name) is None else measured[name] <= b.value,
        }
        for name, b in limits.items()
    }
    return entry


def build_report(outcomes: Mapping[str, Any], results: Mapping[str, Mapping[str, tuple[str, str]]], *,
                 created: str, fault: str | None = None, junit: str | None = None,
                 dut_logs: str | None = None) -> dict:
    order = sorted(outcomes, key=lambda v: (VARIANTS.index(v) if v in VARIANTS else 99, v))
    variants = {v: variant_entry(outcomes[v], results.get(v)) for v in order}
    kinds = {e["board"] for e in variants.values()}
    # passed: every test passed; on an emulated board a skip (latency is QEMU time) or an expected failure
    # (a layer QEMU computes wrongly) is neither a pass nor a failure, and is counted in the title instead
    allowed = lambda e: ("passed", "skipped", "xfailed") if e["claims"] == "emulated" else ("passed",)  # noqa: E731
    passed = all(
        not e["error"] and e["tests"] and all(t["outcome"] in allowed(e) for t in e["tests"].values())
        and any(t["outcome"] == "passed" for t in e["tests"].values())
        for e in variants.values()
    )
    return {
        "kind": "target-run", "format": FORMAT, "created": created,
        "board": kinds.pop() if len(kinds) == 1 else "mixed",
        "fault": fault, "passed": passed, "junit": junit, "dut_logs": dut_logs,
        "variants": variants,
    }


# ---------------------------------------------------------------------------------------------
# markdown


def _cell_test(entry: dict, name: str) -> str:
    t = entry["tests"].get(name)
    if t is None:
        return "–"
    return {"passed": "pass", "failed": "**FAIL**", "skipped": "skip",
            "xfailed": "not checkable (emulator)"}.get(t["outcome"], t["outcome"])


def _cell_budget(entry: dict, name: str) -> str:
    b = (entry.get("budgets") or {}).get(name)
    if b is None:
        return "–"
    m = b["measured"]
    if m is None:
        return f"? / {b['value']}"
    if name == "latency_us" and entry.get("claims") == "emulated":
        return f"{m} / {b['value']} (emulator time, not gated)"
    flag = "" if b["within"] else " **over**"
    return f"{m} / {b['value']}{flag}"


def markdown_table(report: dict) -> str:
    rows = [
        "| variant | board | outputs | model hash | self-test | latency us (used / budget) "
        "| internal RAM bytes | PSRAM bytes | flash bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, e in report["variants"].items():
        board = "chip" if e["board"] == "chip" else f"{e['board']} ({e['claims']})"
        if e["board"] == "virtual":  # where its outputs come from (the .espdl interpreter)
            source = (e.get("identity") or {}).get("source")
            board = f"virtual ({source})" if source else "virtual"
        rows.append(
            f"| {v} | {board} | {_cell_test(e, 'test_outputs_match_simulator')} "
            f"| {_cell_test(e, 'test_model_hash_matches_committed_espdl')} | {_cell_test(e, 'test_selftest_passed')} "
            f"| {_cell_budget(e, 'latency_us')} | {_cell_budget(e, 'internal_ram_bytes')} "
            f"| {_cell_budget(e, 'psram_bytes')} | {_cell_budget(e, 'flash_bytes')} |"
        )
    return "\n".join(rows) + "\n"


def _title(report: dict) -> str:
    kind = {"virtual": "virtual board (latency and memory are .info estimates, not measurements)",
            "chip": "ESP32-S3 board", "mixed": "virtual board and chip",
            "qemu": "emulated ESP32-S3 (the real firmware on Espressif's QEMU; latency is emulator time)",
            }.get(report["board"], f"{report['board']} board")
    fault = f", injected fault: {report['fault']}" if report.get("fault") not in (None, "none") else ""
    verdict = "PASSED" if report["passed"] else "FAILED"
    tests = [t["outcome"] for e in report["variants"].values() for t in e["tests"].values()]
    if report["passed"] and ("xfailed" in tests or "skipped" in tests):
        verdict += (f" ({tests.count('passed')} checks passed, {tests.count('xfailed')} not checkable on the "
                    f"emulator, {tests.count('skipped')} skipped)")
    article = "an" if kind[0] in "aeiou" else "a"
    return f"Target run {report['created']}: {verdict} on {article} {kind}{fault}"


def markdown(report: dict) -> str:
    out = [f"# {_title(report)}", "", markdown_table(report)]
    for v, e in report["variants"].items():
        out.append(f"## {v} ({ {'virtual': 'virtual board', 'chip': 'chip'}.get(e['board'], e['board'] + ', ' + e['claims']) })")
        ident = e.get("identity") or {}
        if ident:
            out.append("- identity: " + ", ".join(f"{k}={ident[k]}" for k in sorted(ident)))
        if e.get("model"):
            m = e["model"]
            out.append(f"- model: sha256 {m['sha256']} ({m['bytes']} bytes); committed .espdl "
                       f"{'matches' if m['matches'] else 'DIFFERS: ' + str(m['committed_sha256'])}")
        if e.get("outputs"):
            out.append(f"- outputs: {e['outputs']['verdict']}")
        for name, b in (e.get("budgets") or {}).items():
            what, unit = BUDGETS[name]
            label = {"virtual": "virtual estimate", "emulated": "emulated"}.get(e["claims"], "measured")
            out.append(f"- {name}: {b['measured']} {unit} ({label}) vs budget {b['value']} "
                       f"({b['provenance']}{', ' + b['method'] if b['method'] else ''})")
        if e.get("dut_log"):
            out.append(f"- DUT log: {e['dut_log']}")
        failed = [(n, t["message"]) for n, t in e["tests"].items() if t["outcome"] == "failed"]
        for name, t in e["tests"].items():
            if t["outcome"] == "xfailed":
                out += ["", f"{name}: not checkable on the emulator:", "", "```", t["message"], "```"]
        if e.get("error"):
            out += ["", "Board session failed:", "", "```", e["error"], "```"]
        else:
            for name, msg in failed:
                out += ["", f"{name} failed:", "", "```", msg, "```"]
        if e.get("outputs") and e["outputs"].get("bisect"):
            out += ["", f"Bisect: {e['outputs']['bisect']}"]
        out.append("")
    if report.get("junit"):
        out.append(f"JUnit XML: {report['junit']}  ")
    if report.get("dut_logs"):
        out.append(f"DUT logs: {report['dut_logs']}")
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# chart


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(BUDGETS)
    variants = list(report["variants"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6))
    for ax, name in zip(axes, names):
        what, unit = BUDGETS[name]
        for i, v in enumerate(variants):
            e = report["variants"][v]
            b = (e.get("budgets") or {}).get(name)
            if b is None:
                ax.text(i, 0, "no data", ha="center", va="bottom", fontsize=8)
                continue
            measured = b["measured"] or 0
            color = "#4a9a4a" if b["within"] else "#c0392b"
            ax.bar(i, measured, width=0.6, color=color, hatch="//" if e["board"] == "virtual" else None,
                   edgecolor="white" if e["board"] == "virtual" else color)
            ax.hlines(b["value"], i - 0.4, i + 0.4, colors="black", linewidth=2)
        ax.set_xticks(range(len(variants)), variants)
        ax.set_title(f"{name} ({unit})", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
    virtual = report["board"] != "chip"
    fig.suptitle(
        ("VIRTUAL board: estimates, not measurements. " if virtual else "")
        + "Bars: used; black line: .info budget; red: over budget",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def write_run_report(run_dir: Path, outcomes: Mapping[str, Any], results: Mapping[str, Mapping[str, tuple[str, str]]],
                     *, fault: str | None = None, junit: str | None = None, dut_logs: str | None = None,
                     created: str | None = None) -> list[Path]:
    created = created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = build_report(outcomes, results, created=created, fault=fault, junit=junit, dut_logs=dut_logs)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = run_dir / "report.md", run_dir / "report.json", run_dir / "report.png"
    text = markdown(report)
    md.write_text(text)
    js.write_text(json.dumps(report, indent=2, default=str) + "\n")  # (insertion order: variants in VARIANTS order)
    chart(report, png)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as fh:
            fh.write(f"### {_title(report)}\n\n{markdown_table(report)}\nFull report: {md}\n\n")
    return [md, js, png]
