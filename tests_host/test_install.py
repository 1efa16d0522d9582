"""The install: one torch pin, the board environment's pins agree with pyproject.toml, and a board run
imports nothing that requirements-board.txt leaves out (no torch, no esp-ppq)."""

import re
import subprocess
import sys
import tomllib

from quant.folder import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


PROJECT_PINS = _pins(PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["test"])
BOARD_PINS = _pins((REPO / "requirements-board.txt").read_text().splitlines())


def test_makefile_installs_the_pyproject_torch_pin():
    version = re.search(r"^TORCH_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert version == PROJECT_PINS["torch"]


def test_board_requirements_pin_what_pyproject_pins_and_leave_out_the_quantizer():
    assert BOARD_PINS, "requirements-board.txt is empty"
    for name, version in BOARD_PINS.items():
        assert PROJECT_PINS.get(name) == version, f"{name}: requirements-board.txt {version}, pyproject.toml {PROJECT_PINS.get(name)}"
    assert not {"torch", "esp-ppq", "onnx", "onnxruntime", "opencv-python-headless"} & BOARD_PINS.keys()


def test_the_board_side_imports_no_module_the_board_environment_lacks():
    code = (
        "import sys, conftest, tests_target.test_board\n"
        "import quant.board.session, quant.board.virtual, quant.board.report, quant.board.judge, quant.board.budgets\n"
        "import quant.espdl.bisect, quant.espdl.interpreter, quant.espdl.reader, quant.variants.vectors, quant.variants.info\n"
        "heavy = {'torch', 'esp_ppq', 'onnx', 'onnxruntime', 'cv2'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_board_ci_job_sets_up_the_board_environment_only():
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    board = ci[ci.index("  board-test:"):]
    assert "make setup-board" in board and ".venv-board/bin/pytest --target esp32s3" in board
    assert "make setup\n" not in board
