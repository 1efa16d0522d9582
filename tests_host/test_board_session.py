"""The board session driver: reset, READY, run, END; every fault ends it with a message naming what
happened and the DUT log, within the timeout."""

import re
import time

import pexpect
import pytest
from target_fixtures import transcript

from quant.board.boards import VirtualBoard
from quant.errors import UserError
from quant.board.session import BoardSessionError, run_board
from quant.board.protocol import format_line
from quant.folder import MODELS

VIRTUAL = VirtualBoard(MODELS)  # resets with `reset` on every session, claims "virtual"


class FakeDut:
    """A pytest-embedded dut stand-in: answers `reset` with the boot lines and `run` with the rest."""

    logfile = "/logs/dut.log"

    def __init__(self, text: str, after_run: str = ""):
        lines = text.splitlines(keepends=True)
        cut = next(i for i, ln in enumerate(lines) if " READY " in ln) + 1
        self.boot, self.rest = "".join(lines[:cut]), "".join(lines[cut:]) + after_run
        self.buffer, self.written = b"", []
        self.pexpect_proc = self

    def write(self, s: str) -> None:
        self.written.append(s)
        self.buffer += {"reset": self.boot, "run": self.rest}.get(s, "").encode()

    def expect(self, pattern, timeout):
        m = pattern.search(self.buffer)
        if m is None:
            time.sleep(timeout)
            raise pexpect.TIMEOUT("Not found")
        self.buffer = self.buffer[m.end():]
        return m


def test_a_correct_board_is_reset_run_and_read_until_end():
    dut = FakeDut(transcript())
    run = run_board(dut, VIRTUAL, timeout_s=1)
    assert dut.written == ["reset", "run"]
    assert run.end["status"] == "ok" and sorted(run.tensors) == [0, 1, 2, 3]


def cut_after(text: str, tag: str, vec: int) -> str:
    lines = text.splitlines(keepends=True)
    i = next(i for i, ln in enumerate(lines) if f" {tag} vec={vec} " in ln)
    return "".join(lines[: i + 1])


def test_a_panic_mid_run_says_the_board_reset_during_that_vector_with_the_log_path():
    text = cut_after(transcript(), "INPUT", 2) + "Guru Meditation Error: Core  0 panic'ed (LoadProhibited)\n"
    with pytest.raises(BoardSessionError) as err:
        run_board(FakeDut(text), VIRTUAL, timeout_s=1)
    assert str(err.value).startswith("the board reset during vector 2 (panic: Guru Meditation Error")
    assert str(err.value).endswith("DUT log: /logs/dut.log")


def test_a_silent_board_fails_within_the_timeout():
    dut = FakeDut(cut_after(transcript(), "INPUT", 1))
    t0 = time.monotonic()
    with pytest.raises(BoardSessionError, match=r"the board went silent: no output for 0 s while waiting for the results"):
        run_board(dut, VIRTUAL, timeout_s=0.3)
    assert time.monotonic() - t0 < 2


def test_a_corrupt_line_fails_the_session_and_is_not_data():
    text = transcript()
    line = next(ln for ln in text.splitlines() if " TENSOR vec=1 " in ln)
    broken = text.replace(line, re.sub(r"data=(-?\d+)", lambda m: f"data={int(m.group(1)) ^ 1}", line, count=1))
    with pytest.raises(BoardSessionError, match=r"(?s)the board's output is corrupt.*checksum mismatch"):
        run_board(FakeDut(broken), VIRTUAL, timeout_s=1)


def test_an_error_line_is_named_in_the_failure():
    lines = transcript().splitlines(keepends=True)
    lines.insert(3, format_line("ERROR", {"code": "model_load", "msg": "no_PSRAM"}) + "\n")
    with pytest.raises(BoardSessionError, match=r"the test app reported ERROR code=model_load msg=no PSRAM"):
        run_board(FakeDut("".join(lines)), VIRTUAL, timeout_s=1)


def test_each_board_says_what_it_claims_and_resets_its_own_way(tmp_path):
    from types import SimpleNamespace

    from quant.board import boards

    resets = []
    dut = SimpleNamespace(write=resets.append, serial=SimpleNamespace(hard_reset=lambda: resets.append("hard")))
    chip, virtual = boards.ChipBoard(MODELS, port="/dev/ttyUSB0"), boards.VirtualBoard(MODELS)
    assert (chip.claims, virtual.claims) == ("measured", "virtual")
    assert all(cls.claims in boards.CLAIMS for cls in boards.KINDS.values())
    chip.reset(dut, again=False)  # the esp service reset it when it opened the port
    chip.reset(dut, again=True)
    virtual.reset(dut, again=False)
    assert resets == ["hard", "reset"]
    assert chip.services_for(None) == "esp,idf" and virtual.services_for("esp,idf") == "serial"
    options = {"virtual_board": True, "port": None}
    assert isinstance(boards.select(options.get, MODELS), boards.VirtualBoard)
    options.update(virtual_board=False, port="/dev/ttyUSB0")
    assert isinstance(boards.select(options.get, MODELS), boards.ChipBoard)
    options.update(virtual_board=True)
    with pytest.raises(UserError, match="--virtual-board and --port exclude each other"):
        boards.select(options.get, MODELS)
    assert boards.missing_variant("mixed", tmp_path) == (
        f"mixed: {tmp_path}/gesture_model_mixed/gesture_model_mixed.espdl is missing: build it with "
        f"`quant build --variant mixed --models-dir {tmp_path}` (or test only the variants you built: -k)")


def test_the_qemu_board_runs_the_qemu_build_with_the_s3_arguments_and_resets_over_qmp(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from quant import folder
    from quant.board import boards, firmware

    monkeypatch.setattr(folder, "FIRMWARE", tmp_path)
    monkeypatch.setattr(firmware.qf, "FIRMWARE", tmp_path)
    qemu = boards.QemuBoard(MODELS)
    assert (qemu.claims, qemu.services_for("esp,idf"), qemu.start("int8")) == ("emulated", "idf,qemu", None)
    assert qemu.build_dir("int8") == str(tmp_path / "build_esp32s3_int8_qemu") == str(firmware.build_dir("int8", qemu=True))
    assert firmware.config_files("int8", qemu=True) == ["sdkconfig.defaults", "sdkconfig.ci.int8", "sdkconfig.qemu"]
    args = qemu.qemu_extra_args("int8")
    efuse = tmp_path / "build_esp32s3_int8_qemu" / "qemu_efuse.bin"
    assert efuse.stat().st_size == 1024  # ESP-IDF's size; not --qemu-efuse-path, which straps download mode
    for part in ("-m 32M", "driver=ssi_psram,property=is_octal,value=true", f"file={efuse},if=none,format=raw,id=efuse",
                 "driver=nvram.esp32s3.efuse,property=drive,value=efuse", "wdt_disable,value=true"):
        assert part in args
    resets = []
    qemu.reset(SimpleNamespace(hard_reset=lambda: resets.append("qmp")), again=False)  # it boots when QEMU starts
    qemu.reset(SimpleNamespace(hard_reset=lambda: resets.append("qmp")), again=True)
    assert resets == ["qmp"]
    options = {"qemu": True, "virtual_board": False, "port": None}
    assert isinstance(boards.select(options.get, MODELS), boards.QemuBoard)
    options.update(virtual_board=True)
    with pytest.raises(UserError, match="--virtual-board and --qemu exclude each other"):
        boards.select(options.get, MODELS)


def test_the_qemu_config_sets_what_qemu_needs_and_nothing_a_chip_needs(monkeypatch):
    from quant.board import firmware
    from quant.folder import FIRMWARE

    lines = {ln.split("=")[0]: ln.split("=", 1)[1] for ln in (FIRMWARE / firmware.QEMU_CONFIG).read_text().splitlines()
             if ln.startswith("CONFIG_")}
    assert lines == {"CONFIG_ESPTOOLPY_FLASHMODE_DIO": "y", "CONFIG_GM_RUNS": "1"}
    assert FIRMWARE / firmware.QEMU_CONFIG in firmware.sources("int8", qemu=True)
    assert FIRMWARE / firmware.QEMU_CONFIG not in firmware.sources("int8")


def test_without_qemu_on_the_path_the_qemu_board_says_how_to_install_it(monkeypatch, tmp_path):
    from quant.board import boards

    monkeypatch.setenv("PATH", str(tmp_path))
    reason = boards.QemuBoard(MODELS).unavailable()
    assert reason.startswith("--qemu needs Espressif's QEMU for ESP32-S3 and qemu-system-xtensa is not on the PATH")
    assert "idf_tools.py install qemu-xtensa" in reason
    assert boards.VirtualBoard(MODELS).unavailable() is None


def test_the_qemu_board_explains_a_mismatch_only_at_a_layer_qemu_computes_wrongly():
    from quant.board import boards

    qemu = boards.QemuBoard(MODELS)
    stem = qemu.explains("int8", "/stem/stem.0/Conv")
    assert stem.startswith("emulated, not a chip result: Espressif QEMU esp-develop 9.2.2 computes 1 layer(s)")
    assert "output channels [2, 5, 7] of 8" in stem and "docs/qemu.md" in stem
    assert qemu.explains("int8", "/blocks/blocks.0/conv/conv.1/conv.1.0/Conv") is None  # depthwise: faithful
    assert "computes 7 layer(s)" in qemu.explains("int8", None)  # a failed self-test: any wrong layer explains it
    assert boards.ChipBoard(MODELS).explains("int8", "/stem/stem.0/Conv") is None  # a chip's mismatch always counts


def test_a_machine_s_own_sdkconfig_is_layered_last_and_counts_as_a_source(monkeypatch, tmp_path):
    from quant.board import firmware

    local = tmp_path / "sdkconfig.local"
    local.write_text("CONFIG_MBEDTLS_FS_IO=n\n")
    monkeypatch.setenv(firmware.EXTRA_ENV, str(local))
    assert firmware.config_files("mixed", qemu=True)[-2:] == ["sdkconfig.qemu", str(local)]
    assert local in firmware.sources("mixed")
    monkeypatch.delenv(firmware.EXTRA_ENV)
    assert firmware.config_files("mixed") == ["sdkconfig.defaults", "sdkconfig.ci.mixed"]


def test_the_error_esp_idf_logged_before_the_apps_error_is_named_with_it():
    lines = transcript().splitlines(keepends=True)
    lines[3:3] = ["\x1b[0;31mE (312) FbsLoader: This is a cryptographic model, please enter the secret key!\x1b[0m\n",
                  format_line("ERROR", {"code": "model_load", "msg": "ESP-DL_could_not_load_the_model"}) + "\n"]
    with pytest.raises(BoardSessionError) as err:
        run_board(FakeDut("".join(lines)), VIRTUAL, timeout_s=1)
    head, second = str(err.value).splitlines()[:2]
    assert head == "the test app reported ERROR code=model_load msg=ESP-DL could not load the model"
    assert second == "  ESP-IDF's last error log: E (312) FbsLoader: This is a cryptographic model, please enter the secret key!"


ADDR2LINE = r'''#!/bin/sh
# what xtensa-esp32s3-elf-addr2line -pfiaC -e ELF PC... prints, one frame per PC
[ "$1" = "-pfiaC" ] && [ "$2" = "-e" ] || exit 2
shift 3
for pc in "$@"; do
  case "$pc" in
    0x40376a1b) echo "$pc: panic_abort at /idf/components/esp_system/panic.c:463" ;;
    0x4200c3f5) echo "$pc: dl::Model::load(fbs::FbsModel*) at /fw/managed_components/espressif__esp-dl/dl/model/src/dl_model_base.cpp:140" ;;
    *) echo "$pc: ?? ??:0" ;;
  esac
done
'''


def test_a_chip_boards_panic_names_the_decoded_backtrace(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    from quant.board.boards import ChipBoard

    class Bench(ChipBoard):  # a chip whose (fake) dut boots when it is told to
        def reset(self, dut, *, again):
            dut.write("reset")

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "xtensa-esp32s3-elf-addr2line").write_text(ADDR2LINE)
    (bindir / "xtensa-esp32s3-elf-addr2line").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    (tmp_path / "project_description.json").write_text(json.dumps({"monitor_toolprefix": "xtensa-esp32s3-elf-"}))
    (tmp_path / "app.elf").write_bytes(b"\x7fELF")
    text = cut_after(transcript(), "INPUT", 0) + (
        "assert failed: create_fbs_model fbs_loader.cpp:328 (mode == 0 || mode == 1)\n\n"
        "Backtrace: 0x40376a1b:0x3fc9a0e0 0x4200c3f5:0x3fc9a100 0x40000000:0x3fc9a120\n")
    dut = FakeDut(text)
    dut.app = SimpleNamespace(elf_file=str(tmp_path / "app.elf"), binary_path=str(tmp_path))
    with pytest.raises(BoardSessionError) as err:
        run_board(dut, Bench(MODELS, port="/dev/null"), timeout_s=1)
    lines = str(err.value).splitlines()
    assert lines[0] == ("the board reset during vector 0 (panic: assert failed: create_fbs_model fbs_loader.cpp:328 "
                        "(mode == 0 || mode == 1))")
    assert lines[1] == ("  backtrace (decoded with the app's ELF): panic_abort (panic.c:463) <- "
                        "dl::Model::load(fbs::FbsModel*) (dl_model_base.cpp:140) <- ??")
    dut.app = SimpleNamespace()  # no ELF (a virtual board's app): the panic is still named, not decoded
    with pytest.raises(BoardSessionError) as err:
        run_board(dut, Bench(MODELS, port="/dev/null"), timeout_s=1)
    assert "backtrace" not in str(err.value).splitlines()[1]


def test_the_session_waits_for_a_panics_backtrace_that_comes_after_its_first_line(tmp_path, monkeypatch):
    class LateDut(FakeDut):  # the panic handler prints the backtrace a moment after the assert line
        later = b"\nBacktrace: 0x40376a1b:0x3fc9a0e0 0x4200c3f5:0x3fc9a100\n"

        def expect(self, pattern, timeout):
            if pattern.search(self.buffer) is None and self.later:
                self.buffer, self.later = self.buffer + self.later, b""
            return super().expect(pattern, timeout)

    seen = []
    monkeypatch.setattr(VirtualBoard, "decode_backtrace", lambda self, dut, line: seen.append(line) or "f (x.c:1)")
    text = cut_after(transcript(), "INPUT", 0) + "assert failed: 0x42050421 <cached disabled>:328\n"
    with pytest.raises(BoardSessionError) as err:
        run_board(LateDut(text), VIRTUAL, timeout_s=1)
    assert seen == [LateDut.later.decode().strip()] and "backtrace (decoded with the app's ELF): f (x.c:1)" in str(err.value)
