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
