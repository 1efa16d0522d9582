"""Every target run writes report.md/.json/.png (and the GitHub step summary); virtual runs say so."""

import json

import pytest
from target_fixtures import board_run, espdl_sha, make_models

from quant.board.report import write_run_report
from quant.board.session import BoardOutcome
from quant.board.judge import compare_run

PASSED = {name: ("passed", "") for name in ("test_outputs_match_simulator", "test_model_hash_matches_committed_espdl",
                                            "test_selftest_passed", "test_latency_within_budget",
                                            "test_memory_within_budget")}


@pytest.fixture
def models(tmp_path):
    return make_models(tmp_path / "models")


def outcome(models, variant, board="chip", **kw):
    run = board_run(variant=variant, board=board, sha=espdl_sha(models, variant), **kw)
    verdict, tol = compare_run(run, variant, models)
    return BoardOutcome(variant, claims="virtual" if board == "virtual" else "measured", kind=board, models=models, run=run, verdict=verdict, tolerance=tol,
                        log_path="/logs/dut.log")


def test_a_chip_run_reports_identity_verdicts_and_budgets(models, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    outcomes = {"mixed": outcome(models, "mixed", med_us=(12000, 15000, 11000, 12100)),
                "balanced": outcome(models, "balanced"), "int8": outcome(models, "int8")}
    results = {"int8": PASSED, "balanced": PASSED, "mixed": dict(PASSED, test_latency_within_budget=("failed", "mixed: latency ... over"))}
    paths = write_run_report(tmp_path / "run", outcomes, results, created="2026-11-29T18:00:00Z")
    assert [p.name for p in paths] == ["report.md", "report.json", "report.png"]
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["kind"] == "target-run" and doc["board"] == "chip" and doc["passed"] is False
    assert list(doc["variants"]) == ["int8", "mixed", "balanced"]  # variant order, not arrival or alphabetical
    mixed = doc["variants"]["mixed"]
    assert mixed["identity"]["idf"] == "v5.3.1" and mixed["model"]["matches"] is True
    assert mixed["outputs"]["verdict"] == "match" and mixed["selftest"] == "pass"
    assert mixed["budgets"]["latency_us"] == {"value": 14000, "measured": 15000, "within": False, "provenance": "estimated",
                                              "method": "a guess", "headroom": 0.15}
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| mixed | chip | pass | pass | pass | 15000 / 14000 **over** | 50000 / 60000 | 260000 / 300000 | 1028 / 80000 |" in md
    assert "test_latency_within_budget failed" in md and "FAILED" in md.splitlines()[0]
    assert (tmp_path / "run" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| int8 | chip |" in summary.read_text()


def test_a_virtual_run_is_marked_virtual_everywhere(models, tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    write_run_report(tmp_path / "run", {"int8": outcome(models, "int8", board="virtual")}, {"int8": PASSED},
                     fault="none", created="2026-11-29T18:00:00Z")
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["board"] == "virtual" and doc["variants"]["int8"]["board"] == "virtual" and doc["passed"] is True
    md = (tmp_path / "run" / "report.md").read_text()
    assert "PASSED on a virtual board (latency and memory are .info estimates, not measurements)" in md
    assert "| int8 | virtual |" in md and "(virtual estimate)" in md and "(measured)" not in md


def test_a_failed_session_is_reported_with_its_reason(models, tmp_path):
    failed = BoardOutcome("int8", claims="virtual", kind="virtual", models=models, error="int8: the board reset during vector 3\nDUT log: x")
    write_run_report(tmp_path / "run", {"int8": failed}, {}, created="2026-11-29T18:00:00Z")
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["passed"] is False and doc["variants"]["int8"]["problems"][0] == "int8: the board reset during vector 3"
    assert "Board session failed" in (tmp_path / "run" / "report.md").read_text()
