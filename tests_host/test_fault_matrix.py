"""The fault matrix: the unchanged target tests, run against a virtual board with each bench fault,
fail with the right, actionable message (or pass, for a correct or merely chatty board), and never
hang: every run is a bounded subprocess, and its time to fail is recorded.

Each fault runs the int8 variant (the fastest); the correct board runs all three variants. The runs
are independent processes, started together (a few at a time) so the matrix takes about as long as
its slowest row.

The boards compute their outputs with the host interpreter on the committed vectors, as every virtual
board does (there is no replay of the stored reference): the correct board's row is therefore also the
check that the chip's arithmetic (the interpreter) matches the PPQ simulator on all three variants.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from quant.board import virtual as vb
from quant.folder import MODELS, REPO, VARIANTS, variant_file

VARIANT = "int8"
MODELS_DIR = MODELS
BOARD_TIMEOUT_S = 5.0  # --board-timeout: the silence after which a board run fails
RUN_LIMIT_S = 150.0  # no row may take longer than this (a hang fails the row, it does not hang the suite)
WORKERS = 3

pytestmark = pytest.mark.skipif(
    not all(variant_file(v, ".espdl", MODELS_DIR).exists() for v in VARIANTS),
    reason="the committed models are missing: run `quant build` (or `make models`) first",
)


def _layer_fault_value() -> str:
    """The value the layer_fault board breaks (its interpreter's node hook)."""
    return vb.App(vb.load_variant(VARIANT, MODELS_DIR, "layer_fault"), "layer_fault").fault_layer


def expectations() -> dict[str, list[str]]:
    """fault -> regex fragments the target tests' output must contain (empty: the run must pass)."""
    k, i = vb.FAULT_VECTOR, vb.FAULT_ELEMENT
    reset = [rf"the board reset during vector {k} \(", r"DUT log: \S+dut\.log"]
    layer = _layer_fault_value()
    return {
        "none": [],
        "chatter": [],
        "off_by_one": [rf"vector {k} '[^']*', tensor '[^']+' \(int8", rf"worst: element {i} at NHWC", r"[+-]1 LSB"],
        "wrong_exponent": [rf"vector {k} '[^']*', tensor '[^']+'.*: exponent -?\d+ on the board, -?\d+ in the simulator"],
        "reset": [*reset, r"\(reset: ESP-ROM:esp32s3"],
        "panic": [*reset, r"\(panic: Guru Meditation Error"],
        "truncated": [r"the board's output is corrupt", r"corrupt line \d+ .*not used as data"],
        "bad_checksum": [r"the board's output is corrupt", r"checksum mismatch"],
        "silent": [rf"the board went silent: no output for {BOARD_TIMEOUT_S:.0f} s", r"DUT log: \S+dut\.log"],
        "slow_latency": [r"latency per inference .* is \d+ us on vector \d+ \(virtual board",
                         r"over the budget budgets\.latency_us = \d+"],
        "memory_over": [r"internal RAM used by the model .* is \d+ bytes \(virtual board",
                        r"over the budget budgets\.internal_ram_bytes = \d+"],
        "stale_model": [r"the board runs another model: it loaded sha256 [0-9a-f]{64}.*, the committed",
                        r"not checked: int8: the board runs another model"],  # (every other check defers to it)
        "version": [r"the board speaks another protocol version", r"protocol version 2"],
        "selftest_fail": [r"ESP-DL model->test\(\) .* failed on the board"],
        "layer_fault": [r"first diverging layer \(board `run dump` vs [^)]*\): "
                        rf"\S+ \S+ -> {re.escape(layer)} "],
    }


def run_target_tests(fault: str, variants: tuple[str, ...], results: Path) -> tuple[int, str, float]:
    """`pytest --virtual-board --virtual-fault <fault> tests_target` in a subprocess: (exit code, output, seconds)."""
    cmd = [sys.executable, "-m", "pytest", "tests_target", "--virtual-board", "--virtual-fault", fault,
           "--board-timeout", str(BOARD_TIMEOUT_S), "--models-dir", str(MODELS_DIR), "--results-dir", str(results), "-p", "no:cacheprovider",
           "-q", "--show-capture=no", "-k", " or ".join(variants)]
    t0 = time.monotonic()
    try:
        env = dict(os.environ, PYTHONHASHSEED="0")
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return -1, f"HUNG: no result after {RUN_LIMIT_S:.0f} s\n{out}", time.monotonic() - t0


ROWS = [("none", VARIANTS)] + [(f, (VARIANT,)) for f in vb.FAULTS if f != "none"]


@pytest.fixture(scope="module")
def matrix(request, tmp_path_factory) -> dict[str, Future]:
    """Start every selected row at once (WORKERS at a time); each test waits for its own row."""
    wanted = {item.callspec.params["fault"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")}
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    request.addfinalizer(lambda: pool.shutdown(wait=True, cancel_futures=True))
    root = tmp_path_factory.mktemp("fault-matrix")
    return {fault: pool.submit(run_target_tests, fault, variants, root / fault)
            for fault, variants in ROWS if fault in wanted}


@pytest.fixture(scope="module")
def expected() -> dict[str, list[str]]:
    return expectations()


@pytest.mark.parametrize("fault", [f for f, _ in ROWS])
def test_target_tests_fail_loudly_on_each_bench_fault(fault, matrix, expected, record_property):
    code, out, seconds = matrix[fault].result()
    record_property("seconds", round(seconds, 1))
    summary = out.strip().splitlines()[-1] if out.strip() else "(no output)"
    assert code != -1, f"{fault}: the target tests hung ({seconds:.0f} s)"
    if not expected[fault]:
        assert code == 0 and re.search(r"\d+ passed", summary) and "failed" not in summary, f"{fault}: {summary}\n{out[-3000:]}"
        return
    assert code == 1, f"{fault}: a faulty board must fail the target tests (exit {code}): {summary}\n{out[-3000:]}"
    missing = [p for p in expected[fault] if not re.search(p, out)]
    assert not missing, f"{fault}: the failure does not say {missing}\n{out[-4000:]}"
    if fault == "stale_model":
        assert "first diverging layer" not in out, "a layer dump of another model was bisected against this one"
    if fault in ("truncated", "bad_checksum"):
        assert "differ from the PPQ simulator" not in out, "a corrupt line was used as data"
