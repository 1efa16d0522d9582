"""The chip (or the virtual board) against the PPQ simulator and the .info budgets, per variant.

The board runs once per variant (the `board` fixture in conftest.py caches the session); each test
below checks one thing of that run. Run: `pytest --target esp32s3 --port=/dev/ttyUSB0 tests_target`
at a bench, `pytest --target esp32s3 --qemu tests_target` on Espressif's QEMU, `pytest --virtual-board
tests_target` without either. On QEMU (claims "emulated") a mismatch that the board explains by a layer
QEMU is known to compute wrongly (quant.board.qemu) is an expected failure with that reason: neither a
pass nor a chip failure.
"""

import hashlib

import pytest

from quant.board import budgets
from quant.folder import VARIANTS, load_budgets, variant_file

pytestmark = [pytest.mark.board, pytest.mark.esp32s3, pytest.mark.parametrize("config", VARIANTS, indirect=True)]


def another_model(board) -> str | None:
    """Why this run says nothing about the variant: the board loaded another model than the committed .espdl."""
    espdl = variant_file(board.variant, ".espdl", board.models)
    committed = hashlib.sha256(espdl.read_bytes()).hexdigest()
    ran, says = board.run.model_sha256, board.run.boot.get("variant")
    if ran == committed:
        return None
    return (f"{board.variant}: the board runs another model: it loaded sha256 {ran} (its app says variant={says}), the "
            f"committed {espdl.name} is {committed}; the flash is stale: rebuild and reflash "
            f"firmware/build_esp32s3_{board.variant} (pytest rebuilds it when ESP-IDF is installed)")


def same_model(board):
    """Every check of a run is about the committed model: a board that runs another one fails them all with that."""
    stale = another_model(board)
    if stale:
        pytest.fail(f"not checked: {stale}", pytrace=False)


def test_outputs_match_simulator(board):
    same_model(board)
    if board.compare_error:
        pytest.fail(f"{board.variant}: {board.compare_error}", pytrace=False)
    if not board.verdict.ok:
        note = f"\n{board.bisect_note}" if board.bisect_note else ""
        if board.emulator_note:  # the first diverging layer is one the emulator computes wrongly
            pytest.xfail(f"{board.variant}: outputs differ: {board.emulator_note}{note}")
        pytest.fail(f"{board.verdict.message(board.tolerance)}{note}\nDUT log: {board.log_path}", pytrace=False)


def test_model_hash_matches_committed_espdl(board):
    stale = another_model(board)
    if stale:
        pytest.fail(stale, pytrace=False)


def test_selftest_passed(board):
    same_model(board)
    if board.run.selftest == "fail" and board.selftest_note:
        pytest.xfail(f"{board.variant}: ESP-DL model->test() failed: {board.selftest_note}")
    if board.run.selftest != "pass":
        pytest.fail(
            f"{board.variant}: ESP-DL model->test() on the test value embedded in the .espdl "
            f"{'failed' if board.run.selftest == 'fail' else 'was not reported'} on the board; "
            f"DUT log: {board.log_path}",
            pytrace=False,
        )


def test_latency_within_budget(board):
    same_model(board)
    if board.claims == "emulated":
        pytest.skip(f"{board.variant}: latency on an emulated board is emulator time, not chip time: not gated")
    problems = budgets.check(budgets.measure(board.run), load_budgets(board.variant, board.models), ("latency_us",),
                             claims=board.claims, variant=board.variant)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_memory_within_budget(board):
    same_model(board)
    problems = budgets.check(budgets.measure(board.run), load_budgets(board.variant, board.models),
                             ("internal_ram_bytes", "psram_bytes", "flash_bytes"),
                             claims=board.claims, variant=board.variant)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
