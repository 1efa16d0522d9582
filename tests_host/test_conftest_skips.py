"""conftest.py: without a board every board test skips with the how-to and `pytest` exits 0;
documented commands avoid the `--port /dev/...` and `-m` (exit 5) traps. (The same tests against the
virtual board run in `make test`: `pytest --virtual-board`.)"""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from quant.paths import REPO

BOARD_TESTS = 5 * 3  # five checks x three variants


def pytest_run(*args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("ESPPORT", "GITHUB_STEP_SUMMARY", "PYTEST_ADDOPTS")}
    env.update(PYTHONHASHSEED="0", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_without_a_board_every_board_test_skips_with_the_how_to_and_pytest_exits_0(tmp_path):
    junit = tmp_path / "junit.xml"
    results = set((REPO / "results").glob("*"))
    proc = pytest_run("tests_target", f"--junitxml={junit}")
    assert proc.returncode == 0, proc.stdout[-2000:]
    cases = list(ET.parse(junit).iter("testcase"))
    assert len(cases) == BOARD_TESTS
    reasons = {case.find("skipped").get("message") for case in cases}
    assert len(reasons) == 1
    reason = reasons.pop()
    assert "pytest --target esp32s3 --port=/dev/ttyUSB0" in reason and "pytest --virtual-board" in reason
    assert set((REPO / "results").glob("*")) == results  # a run without a board writes no report


def test_a_virtual_fault_without_the_virtual_board_is_a_usage_error():
    proc = pytest_run("tests_target", "--virtual-fault=panic")
    assert proc.returncode == 4 and "--virtual-fault needs --virtual-board" in proc.stderr


def documented_pytest_commands():
    files = [REPO / "README.md", REPO / "Makefile", REPO / ".ci" / "run", *sorted((REPO / "docs" / "readme").glob("*.md")),
             *sorted((REPO / ".github" / "workflows").glob("*.y*ml"))]
    for path in files:
        if path.exists():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\bpytest\b\s+-", line) or re.search(r"\bpytest\s+--", line):
                    yield f"{path.relative_to(REPO)}:{n}", line


def test_documented_pytest_commands_avoid_the_port_and_deselect_traps():
    commands = list(documented_pytest_commands())
    assert any("--port=" in line for _, line in commands), "the bench command should be documented"
    for where, line in commands:
        assert not re.search(r"--(port|app-path|build-dir)\s+[^-\s]", line), f"{where}: write --port=... with '=': {line}"
        assert not re.search(r"\s-m\s", line), f"{where}: `-m` that deselects everything exits 5: {line}"
