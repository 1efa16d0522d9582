"""conftest.py: without a board every board test skips with the how-to and `pytest` exits 0;
documented commands avoid the `--port /dev/...` and `-m` (exit 5) traps. (The same tests against the
virtual board run in `make test`: `pytest --virtual-board`.)"""

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from quant.folder import MODELS, REPO, variant_dir, variant_file

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


def test_a_qemu_fault_needs_the_qemu_board_and_a_known_name():
    proc = pytest_run("tests_target", "--qemu-fault=model_refused")
    assert proc.returncode == 4 and "--qemu-fault needs --qemu" in proc.stderr
    proc = pytest_run("tests_target", "--qemu", "--qemu-fault=flipped_bits")
    assert proc.returncode == 4 and ("--qemu-fault 'flipped_bits' is unknown; choose one of stale_image, model_refused, "
                                     "model_assert") in proc.stderr


def _one_variant_folder(root, with_vectors: bool):
    if not variant_file("int8", ".espdl").exists():
        pytest.skip("the committed models are missing: run `quant build` (or `make models`)")
    shutil.copytree(variant_dir("int8"), variant_dir("int8", root))
    if with_vectors:
        for name in ("test_vectors.bin", "test_vectors.json"):
            shutil.copy(MODELS / name, root / name)
    return root


def _outcomes(junit) -> dict[str, tuple[str, str]]:
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        for kind in ("failure", "skipped", "error"):
            el = case.find(kind)
            if el is not None:
                out[case.get("name")] = (kind, el.get("message") or "")
                break
        else:
            out[case.get("name")] = ("passed", "")
    return out


def test_one_built_variant_runs_and_the_missing_ones_skip_with_the_build_command(tmp_path):
    models = _one_variant_folder(tmp_path / "mine", with_vectors=True)
    junit = tmp_path / "junit.xml"
    proc = pytest_run("tests_target", "--virtual-board", f"--models-dir={models}", f"--junitxml={junit}",
                      f"--results-dir={tmp_path / 'results'}", "-rs")
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = _outcomes(junit)
    assert {n: o for n, (o, _) in got.items() if "[int8]" in n} == {n: "passed" for n in got if "[int8]" in n}
    others = [m for n, (o, m) in got.items() if "[int8]" not in n]
    assert len(others) == BOARD_TESTS - 5
    for v in ("mixed", "balanced"):
        hint = f"quant build --variant {v} --models-dir {models}"
        assert sum(hint in m for m in others) == 5, others


def test_a_folder_without_its_own_vectors_fails_its_tests_with_the_fix_never_a_replay(tmp_path):
    models = _one_variant_folder(tmp_path / "mine", with_vectors=False)
    junit = tmp_path / "junit.xml"
    proc = pytest_run("tests_target", "--virtual-board", f"--models-dir={models}", f"--junitxml={junit}",
                      f"--results-dir={tmp_path / 'results'}", "-k", "int8")
    assert proc.returncode == 1, proc.stdout[-3000:]
    got = _outcomes(junit)
    assert len(got) == 5 and {o for o, _ in got.values()} == {"failure"}, got
    for _, message in got.values():
        first = message.splitlines()[0]
        assert "fixed vectors" in first and f"--models-dir {models}" in first, message


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
