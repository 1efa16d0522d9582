"""Budgets are read from .info, a board run is measured and checked against them, and
`quant update-budgets` turns a real board's report into new budgets (never a virtual one's)."""

import json
import subprocess
import sys
import tomllib

import pytest
from conftest import FAKE_BUDGETS as BUDGETS
from conftest import run_quant
from target_fixtures import board_run, espdl_sha

from quant.board import budgets
from quant.board.report import write_run_report
from quant.board.session import BoardOutcome
from quant.errors import UserError
from quant.folder import REPO, load_budgets


@pytest.fixture
def models(fake_models):
    return fake_models


def test_measure_takes_the_slowest_vectors_median_and_ram_down_to_the_low_water_mark():
    m = budgets.measure(board_run(med_us=(12000, 12500, 11000, 12100), before=(380000, 8300000), low=(330000, 8040000)))
    assert m == {"latency_us": 12500, "latency_vector": 1, "internal_ram_bytes": 50000, "psram_bytes": 260000,
                 "flash_bytes": 1028}


def test_a_run_within_budget_has_no_problems(models):
    limits = load_budgets("int8", models)
    assert limits["latency_us"].value == BUDGETS["latency_us"][0] and limits["latency_us"].provenance == "estimated"
    assert budgets.check(budgets.measure(board_run()), limits, tuple(budgets.BUDGETS), claims="measured", variant="int8") == []


def test_an_over_budget_latency_names_budget_provenance_measurement_and_excess(models):
    run = board_run(med_us=(12000, 15400, 11000, 12100))
    problems = budgets.check(budgets.measure(run), load_budgets("int8", models), ("latency_us",),
                             claims="measured", variant="int8")
    assert len(problems) == 1
    text = problems[0]
    assert "15400 us on vector 1 (measured on the chip)" in text
    assert "budgets.latency_us = 14000 us (estimated, headroom 15%: a guess)" in text
    assert "by 1400 us (10.0%)" in text


def test_over_budget_memory_on_a_virtual_board_says_it_is_not_a_measurement(models):
    run = board_run(board="virtual", low=(300000, 8040000))
    problems = budgets.check(budgets.measure(run), load_budgets("int8", models),
                             ("internal_ram_bytes", "psram_bytes", "flash_bytes"), claims="virtual", variant="int8")
    assert len(problems) == 1 and "80000 bytes (virtual board: derived from the .info estimate, not measured)" in problems[0]
    assert "budgets.internal_ram_bytes = 60000" in problems[0] and "by 20000 bytes" in problems[0]


def test_a_missing_budget_is_a_user_error(models):
    info = models / "gesture_model_int8" / "gesture_model_int8.info"
    info.write_text(info.read_text().replace("[budgets.psram_bytes]", "[budgets.other]"))
    with pytest.raises(UserError, match=r"no \[budgets.psram_bytes\] value"):
        load_budgets("int8", models)


def report_of(models, tmp_path, board="chip", sha=None):
    run = board_run(board=board, sha=sha or espdl_sha(models))
    outcome = BoardOutcome("int8", claims="virtual" if board == "virtual" else "measured", kind=board, models=models, run=run)
    write_run_report(tmp_path / "run", {"int8": outcome}, {}, created="2026-11-29T18:00:00Z")
    return tmp_path / "run" / "report.json"


def test_update_budgets_rewrites_values_with_headroom_and_provenance_and_keeps_the_rest(models, tmp_path, capsys):
    report = report_of(models, tmp_path)
    info = models / "gesture_model_int8" / "gesture_model_int8.info"
    before = info.read_text()
    assert budgets.update_from_report(report, headroom=0.2, variants=None, models=models, dry_run=False) == 0
    after = info.read_text()
    doc = tomllib.loads(after)["budgets"]
    assert doc["latency_us"] == {
        "value": 15000, "basis": 12500, "headroom": 0.2, "provenance": "measured",
        "method": f"board=chip fw=1.0.0 target=esp32s3 idf=v5.3.1 espdl=3.1.0 cpu_mhz=240 psram_bytes=8388608 "
                  f"cores=1 date=2026-11-29 (from {report})"}
    assert (doc["internal_ram_bytes"]["value"], doc["psram_bytes"]["value"], doc["flash_bytes"]["value"]) == (60000, 312000, 1234)
    # only budget values changed: every other line, comment and table is byte-identical
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines())
    assert {a.split("=")[0].strip() for a, _ in changed} <= {"value", "basis", "headroom", "provenance", "method"}
    old_line = next(ln for ln in before.splitlines() if ln.startswith("value = 14000 "))
    assert old_line.replace("value = 14000", "value = 15000") in after.splitlines()  # the comment kept its column
    out = capsys.readouterr().out
    assert "budgets.latency_us: 14000 (estimated, basis 12174, headroom 15%) -> 15000 (measured, basis 12500, headroom 20%)" in out


def test_dry_run_prints_the_diff_and_writes_nothing(models, tmp_path, capsys):
    info = models / "gesture_model_int8" / "gesture_model_int8.info"
    before = info.read_text()
    budgets.update_from_report(report_of(models, tmp_path).parent, headroom=0.15, variants=["int8"], models=models, dry_run=True)
    assert info.read_text() == before
    assert "-> 14375 (measured" in capsys.readouterr().out


def test_update_budgets_refuses_a_virtual_run_with_one_line(models, tmp_path):
    report = report_of(models, tmp_path, board="virtual")
    proc = run_quant("update-budgets", "--results", str(report),
                           "--models-dir", str(models), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "is not a chip run (int8: virtual or emulated)" in proc.stderr and "not the chip's" in proc.stderr


def test_update_budgets_refuses_measurements_of_another_model(models, tmp_path):
    report = report_of(models, tmp_path, sha="ab" * 32)
    with pytest.raises(UserError, match="ran model abababababab"):
        budgets.update_from_report(report, headroom=0.15, variants=None, models=models, dry_run=False)


def test_update_budgets_refuses_a_file_that_is_not_a_report(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not a target-run report"):
        budgets.update_from_report(tmp_path, headroom=0.15, variants=None, models=tmp_path, dry_run=True)
