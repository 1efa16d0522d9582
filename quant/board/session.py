"""Drive one board session over a pytest-embedded `dut` and turn it into a trusted BoardRun.

    run = run_board(dut, virtual=False, timeout_s=25)     # raises BoardSessionError on any fault

The session (docs/protocol.md): a real board is reset by the `esp` service when the port opens; a
virtual board is silent until it receives `reset` (pyserial flushes input on open), so we send it.
Then we wait for `READY`, send `run` (or `run dump`) and read until `END`. Every byte goes through
`quant.board.protocol.Session`; the run fails, with the DUT log path, when the board resets or panics
(the message says during which vector), goes silent for `timeout_s` seconds, speaks another protocol
version, prints corrupt lines, reports ERROR, or ends without a complete, consistent transcript.
Nothing here can hang: every wait is bounded by `timeout_s` of silence and a total deadline.

`run_variant` is what the target tests call once per variant: the run, the output comparison and,
when outputs mismatch, a second `run dump` session whose intermediates localize the first diverging
layer (quant.espdl.bisect).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.board import protocol
from quant.errors import UserError
from quant.folder import MODELS

DEFAULT_TIMEOUT_S = 25.0  # the longest silence a healthy board shows (boot, one vector's runs)
TOTAL_FACTOR = 10  # a run may take at most TOTAL_FACTOR * timeout_s in all (dump: DUMP_FACTOR)
DUMP_FACTOR = 40
READ_PAUSE_S = 0.005  # pexpect's pause after each read of the DUT log (its default 0.1 ms busy-polls)
_LINES = re.compile(rb"(?:[^\n]*\n)+")  # every complete line in the buffer at once


class BoardSessionError(Exception):
    """The board session failed; the message says why and where the DUT log is."""


@dataclass
class BoardOutcome:
    """What the target tests of one variant read (cached: the board runs once per variant)."""

    variant: str
    virtual: bool
    models: Path = MODELS  # the variant folders the run is held to
    run: protocol.BoardRun | None = None
    error: str | None = None  # the session failed: every test of the variant fails with this
    log_path: str | None = None
    verdict: Any = None  # quant.board.judge.Verdict
    tolerance: dict | None = None
    compare_error: str | None = None  # the reference could not be read
    bisect_note: str | None = None  # first diverging layer (or why it could not be localized)


def _log_hint(dut: Any) -> str:
    path = getattr(dut, "logfile", None)
    return f"DUT log: {path}" if path else "DUT log: (none)"


class _Silence(Exception):
    """No complete line within the timeout; `.pending` holds an unfinished line, if any."""

    def __init__(self, pending: bytes = b""):
        super().__init__("silent")
        self.pending = pending


class _ExpectSource:
    """Complete lines through pytest-embedded's pexpect stream (every byte also lands in the DUT log)."""

    def __init__(self, dut: Any):
        self.dut, self.proc = dut, getattr(dut, "pexpect_proc", None)
        self.saved = getattr(self.proc, "delayafterread", None)
        if self.proc is not None:  # pexpect polls the (always readable) log file: pause 5 ms per read, not 0.1
            self.proc.delayafterread = READ_PAUSE_S

    def read(self, timeout: float) -> bytes:
        import pexpect  # pytest-embedded's dependency; imported here so the module imports fast

        try:
            return self.dut.expect(_LINES, timeout=timeout).group(0)
        except pexpect.TIMEOUT:
            raise _Silence(bytes(getattr(self.proc, "buffer", b"") or b"")) from None
        except pexpect.EOF:
            raise BoardSessionError(f"the serial port closed; {_log_hint(self.dut)}") from None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.delayafterread = self.saved


class _PortSource:
    """Complete lines read from the port directly, for `run dump`'s megabytes: pytest-embedded's reader
    thread takes at most what the tty buffers every 50 ms (4 KB on a pty: ~80 KB/s, 30 s per dump). The
    thread is paused, what we read is appended to the DUT log, and the thread resumes on close."""

    def __init__(self, dut: Any):
        self.dut, self.serial = dut, dut.serial
        self.serial.stop_redirect_thread()
        self.port = self.serial.proc
        self.pending = b""
        self.log = open(dut.logfile, "ab") if getattr(dut, "logfile", None) else None  # noqa: SIM115

    @staticmethod
    def usable(dut: Any) -> bool:
        serial = getattr(dut, "serial", None)
        return all(hasattr(serial, a) for a in ("stop_redirect_thread", "start_redirect_thread", "proc"))

    def read(self, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        while True:
            self.port.timeout = max(0.0, min(0.05, end - time.monotonic()))
            try:
                chunk = self.port.read(1 << 16)
            except OSError as exc:
                raise BoardSessionError(f"the serial port failed ({exc}); {_log_hint(self.dut)}") from None
            if chunk and self.log:
                self.log.write(chunk)
                self.log.flush()
            self.pending += chunk
            cut = self.pending.rfind(b"\n")
            if cut >= 0:
                lines, self.pending = self.pending[: cut + 1], self.pending[cut + 1:]
                return lines
            if time.monotonic() >= end:
                raise _Silence(self.pending)

    def close(self) -> None:
        if self.log:
            self.log.close()
        self.serial.start_redirect_thread()


def _read(source, dut: Any, session: protocol.Session, done, *, phase: str, timeout_s: float, deadline: float) -> None:
    """Feed the board's lines to `session` until `done(session.run)` or a fault; bounded."""
    while not done(session.run):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BoardSessionError(
                f"the board did not finish in time: still {phase} after the total limit "
                f"({session.line_no} lines received; the last protocol line was {session.run.last_tag or 'none'}); "
                f"it prints without ever ending; {_log_hint(dut)}"
            )
        try:
            session.feed(source.read(min(timeout_s, remaining)))
        except _Silence as silence:
            if deadline - time.monotonic() <= 0:
                continue  # reported as the total limit above
            tail = f"; an unfinished line is pending: {silence.pending[-120:]!r}" if silence.pending else ""
            raise BoardSessionError(
                f"the board went silent: no output for {timeout_s:.0f} s while {phase} "
                f"({session.line_no} lines received; the last protocol line was "
                f"{session.run.last_tag or 'none'}{tail}); check that the board runs the test app, "
                f"or raise --board-timeout if one vector's runs legitimately take longer; {_log_hint(dut)}"
            ) from None


def _stop_reading(run: protocol.BoardRun) -> bool:
    return bool(run.resets or run.foreign)


def run_board(dut: Any, *, virtual: bool, dump: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
              total_s: float | None = None, reset: bool = False) -> protocol.BoardRun:
    """One session: reset (a virtual board always; a chip when `reset`, else the esp service just did),
    wait for READY, send `run` / `run dump`, read until END. A trusted run, or BoardSessionError."""
    total_s = total_s or timeout_s * (DUMP_FACTOR if dump else TOTAL_FACTOR)
    deadline = time.monotonic() + total_s
    source = _PortSource(dut) if dump and _PortSource.usable(dut) else _ExpectSource(dut)
    try:
        if virtual:
            dut.write("reset")  # the virtual board's equivalent of the esp service's hard reset
        elif reset:
            hard_reset = getattr(getattr(dut, "serial", None), "hard_reset", None)
            if hard_reset is None:
                raise BoardSessionError("cannot reset the board for a second session: use the esp,idf services")
            hard_reset()
        session = protocol.Session()
        _read(source, dut, session, lambda r: r.ready or r.end is not None or _stop_reading(r),
              phase="waiting for the test app to boot (BOOT, READY)", timeout_s=timeout_s, deadline=deadline)
        if session.run.ready and not _stop_reading(session.run):
            dut.write("run dump" if dump else "run")
            _read(source, dut, session, lambda r: r.end is not None or _stop_reading(r),
                  phase="waiting for the results (until END)", timeout_s=timeout_s, deadline=deadline)
    finally:
        source.close()
    run = session.finish()
    problems = run.problems()
    if problems:
        raise BoardSessionError(_explain(run, problems, dut))
    return run


def _explain(run: protocol.BoardRun, problems: list[str], dut: Any) -> str:
    if run.resets:
        r = run.resets[0]
        kind = "panic" if any(m in r.evidence for m in protocol.PANIC_MARKERS) else "reset"
        head = f"the board reset {r.where} ({kind}: {r.evidence.strip()[:120]})"
    elif run.foreign:
        head = "the board speaks another protocol version than this harness (protocol v1)"
    elif run.corrupt:
        head = (f"the board's output is corrupt: {len(run.corrupt)} protocol line(s) failed the checksum or "
                "format and were not used as data (a flaky UART or baud rate?)")
    elif run.errors:
        _, code, msg = run.errors[0]
        head = f"the test app reported ERROR code={code} msg={msg.replace('_', ' ')}"
    else:
        head = "the board's transcript is incomplete or inconsistent"
    return "\n".join([head, *(f"  - {p}" for p in problems), _log_hint(dut)])


# ---------------------------------------------------------------------------------------------
# once per variant: run, compare, localize


def localize(dut: Any, variant: str, *, virtual: bool, timeout_s: float, models: Path = MODELS,
             tolerance: dict | None = None, bad_vectors: tuple[int, ...] = (0,)) -> str:
    """Run the board again in dump mode and name the first layer where its intermediates (vector 0)
    leave the host interpreter's (quant.espdl.bisect; ESP32-S3 integer arithmetic on the committed .espdl)."""
    try:
        from quant.espdl import bisect
        from quant.espdl import reader as espdl
        from quant.espdl.interpreter import Interpreter
        from quant.folder import load_vectors
    except ImportError as exc:
        return f"first diverging layer: not localized ({exc.name} is not available in this checkout)"
    try:
        dump = run_board(dut, virtual=virtual, dump=True, timeout_s=timeout_s, reset=True)
    except BoardSessionError as exc:
        return f"first diverging layer: not localized (the `run dump` session failed: {str(exc).splitlines()[0]})"
    try:
        from quant.folder import variant_file

        model = espdl.load(variant_file(variant, ".espdl", models))
        x = load_vectors(models)[0][0][None]
        board = dump.tensors.get(0, {})
        # the chip's arithmetic; then, when vector 0 itself mismatched, the simulator's (exact averages)
        for exact in (False, True) if 0 in bad_vectors else (False,):
            host = Interpreter(model, exact_average=exact).run_full(x).tensors
            found = bisect.first_divergence(model, board, host, tolerance)
            if found is not None:
                break
    except UserError as exc:
        return f"first diverging layer: not localized ({exc})"
    if found is None:
        return ("first diverging layer: not found: in `run dump` mode every intermediate of vector 0 agrees with "
                f"the host interpreter; the dump covers vector 0 only, the mismatching vectors are {list(bad_vectors)}")
    s = found.stat
    label = "host interpreter, simulator arithmetic" if exact else "host interpreter"
    report = bisect.format_report(model, board, host, tolerance, label_a="board", label_b=label)
    note = ("; the board agrees with the host interpreter's ESP32-S3 arithmetic on every layer, so this is where "
            "the chip's arithmetic and the PPQ simulator's differ" if exact else "")
    return (f"first diverging layer (board `run dump` vs {label}, vector 0): {s.op_type} {s.node} -> "
            f"{s.value} ({found.agreed_before} earlier layers agree){note}\n{report}")


def run_variant(dut: Any, variant: str, *, virtual: bool, timeout_s: float = DEFAULT_TIMEOUT_S,
                models: Path = MODELS, bisect: bool = True) -> BoardOutcome:
    from quant.board import judge as compare

    outcome = BoardOutcome(variant=variant, virtual=virtual, models=Path(models), log_path=getattr(dut, "logfile", None))
    try:
        outcome.run = run_board(dut, virtual=virtual, timeout_s=timeout_s)
    except BoardSessionError as exc:
        outcome.error = f"{variant}: {exc}"
        return outcome
    outcome.virtual = virtual or outcome.run.virtual
    try:
        outcome.verdict, outcome.tolerance = compare.compare_run(outcome.run, variant, models)
    except UserError as exc:
        outcome.compare_error = str(exc)
        return outcome
    if bisect and not outcome.verdict.ok:
        outcome.bisect_note = localize(dut, variant, virtual=virtual, timeout_s=timeout_s, models=models,
                                       tolerance=outcome.tolerance, bad_vectors=tuple(outcome.verdict.bad_vectors))
    return outcome


# ---------------------------------------------------------------------------------------------
# the firmware a bench flashes


def ensure_firmware(variant: str) -> str | None:
    """Make sure firmware/build_esp32s3_<variant>/ exists and is current, building it with ESP-IDF
    when it is missing or older than its sources (quant.board.firmware). None when ready, else what to do."""
    from quant.board import firmware

    reason = firmware.needs_build(variant)
    if reason is None:
        return None
    try:
        firmware.build(variant)
    except UserError as exc:
        return f"the test app must be built before flashing ({reason}), and it cannot be built here: {exc}"
    return None
