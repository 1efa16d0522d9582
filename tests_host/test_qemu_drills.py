"""Drills on the real firmware in Espressif's QEMU: the unchanged target tests, run against a flash that is not
what they expect (quant.board.flash_faults), fail with the message that names the fault.

Needs qemu-system-xtensa on the PATH, pytest-embedded-qemu and up-to-date QEMU builds of int8 and one other
variant (`quant firmware --qemu --variant int8 --variant mixed`); skips otherwise, saying which.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from quant.board import boards, firmware
from quant.folder import MODELS, REPO, VARIANTS

VARIANT = "int8"
EXPECTED = {  # fault -> what the failure must say
    "stale_image": [r"the board runs another model: it loaded sha256 [0-9a-f]{64} \(its app says variant=(mixed|balanced)\)"],
    "model_refused": [r"the test app reported ERROR code=model_load msg=ESP-DL could not load the model",
                      r"ESP-IDF's last error log: E \(\d+\) FbsLoader: This is a cryptographic model, please enter the secret key!"],
    # (ESP-IDF's panic handler prints the assert's function and file as addresses: "assert failed: 0x4205... <cached
    # disabled>:328"; the decoded backtrace names them)
    "model_assert": [r"the board reset while ESP-DL loaded the model \(panic: assert failed: 0x[0-9a-f]+ .*:328",
                     r"backtrace \(decoded with the app's ELF\): panic_abort \(panic\.c:\d+\) <- .*"
                     r"fbs::create_fbs_model\(.*\) \(fbs_loader\.cpp:328.* <- app_main \(app_main\.cpp:\d+"],
}


def _missing() -> str | None:
    board = boards.QemuBoard(MODELS)
    if board.unavailable():
        return board.unavailable()
    built = [v for v in VARIANTS if firmware.needs_build(v, MODELS, qemu=True) is None]
    if VARIANT not in built or len(built) < 2:
        return (f"the drills need up-to-date QEMU builds of {VARIANT} and one other variant (built: "
                f"{', '.join(built) or 'none'}): `quant firmware --qemu --variant int8 --variant mixed` (or run "
                f"`pytest --target esp32s3 --qemu tests_target` first)")
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_the_target_tests_name_each_fault_of_the_real_firmware(fault, tmp_path):
    cmd = [sys.executable, "-m", "pytest", "tests_target", "--target", "esp32s3", "--qemu", "--qemu-fault", fault,
           "-k", VARIANT, "--results-dir", str(tmp_path / "results"), "-p", "no:cacheprovider", "-q"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONHASHSEED="0"), capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"{fault}: a faulty flash must fail the target tests (exit {proc.returncode})\n{out[-3000:]}"
    missing = [p for p in EXPECTED[fault] if not re.search(p, out)]
    assert not missing, f"{fault}: the failure does not say {missing}\n{out[-4000:]}"
