"""Drive one board session over a pytest-embedded `dut` and turn it into a trusted BoardRun.

    run = run_board(dut, board, timeout_s=25)     # raises BoardSessionError on any fault

`board` is a quant.board.boards.Board: it resets the DUT before a session (a chip is reset by the `esp`
service when the port opens; the virtual board is silent until it receives `reset`), gives the transport
and says what the results may claim. Then we wait for `READY`, send `run` (or `run dump`) and read until
`END`. Every byte goes through `quant.board.protocol.TranscriptParser`; the run fails, with the DUT log
path, when the board resets or panics (the message says during which vector), goes silent for `timeout_s`
seconds, speaks another protocol version, prints corrupt lines, reports ERROR, or ends without a complete,
consistent transcript. Nothing here can hang: every wait is bounded by `timeout_s` of silence and a total
deadline.

`run_variant` is what the target tests call once per variant: the run, the output comparison and,
when outputs mismatch, a second `run dump` session whose intermediates localize the first diverging
layer (quant.espdl.bisect).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.board import protocol
from quant.board.boards import Board, BoardSessionError, Silence, log_hint
from quant.errors import UserError
from quant.folder import MODELS
from quant.espdl import bisect
from quant.espdl.interpreter import Interpreter
from quant.folder import load_vectors
from quant.folder import sha256_file, variant_file
from quant.board import judge as compare

DEFAULT_TIMEOUT_S = 25.0  # the longest silence a healthy board shows (boot, one vector's runs)
TOTAL_FACTOR = 10  # a run may take at most TOTAL_FACTOR * timeout_s in all (dump: DUMP_FACTOR)
DUMP_FACTOR = 40


@dataclass
class BoardOutcome:
    """What the target tests of one variant read (cached: the board runs once per variant)."""

    variant: str
    claims: str  # what the results may claim: "measured", "virtual" or "emulated" (quant.board.boards)
    kind: str = "chip"  # which board ran: "chip", "virtual", ...
    models: Path = MODELS  # the variant folders the run is held to
    run: protocol.BoardRun | None = None
    error: str | None = None  # the session failed: every test of the variant fails with this
    log_path: str | None = None
    verdict: Any = None  # quant.board.judge.Verdict
    tolerance: dict | None = None
    compare_error: str | None = None  # the reference could not be read
    bisect_note: str | None = None  # first diverging layer (or why it could not be localized)
    diverged_at: str | None = None  # that layer's node name, when localized
    emulator_note: str | None = None  # an emulated board: why its mismatch is the emulator's (Board.explains)
    selftest_note: str | None = None  # likewise for a failed model->test() (not localized: any wrong layer)


def failed(board: Board, variant: str, error: str) -> BoardOutcome:
    """The outcome of a variant whose session could not run: every test of the variant fails with `error`."""
    return BoardOutcome(variant, claims=board.claims, kind=board.kind, models=board.models, error=error)


def _read(source, dut: Any, session: protocol.TranscriptParser, done, *, phase: str, timeout_s: float, deadline: float) -> None:
    """Feed the board's lines to `session` until `done(session.run)` or a fault; bounded."""
    while not done(session.run):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BoardSessionError(
                f"the board did not finish in time: still {phase} after the total limit "
                f"({session.line_no} lines received; the last protocol line was {session.run.last_tag or 'none'}); "
                f"it prints without ever ending; {log_hint(dut)}"
            )
        try:
            session.feed(source.read(min(timeout_s, remaining)))
        except Silence as silence:
            if deadline - time.monotonic() <= 0:
                continue  # reported as the total limit above
            tail = f"; an unfinished line is pending: {silence.pending[-120:]!r}" if silence.pending else ""
            raise BoardSessionError(
                f"the board went silent: no output for {timeout_s:.0f} s while {phase} "
                f"({session.line_no} lines received; the last protocol line was "
                f"{session.run.last_tag or 'none'}{tail}); check that the board runs the test app, "
                f"or raise --board-timeout if one vector's runs legitimately take longer; {log_hint(dut)}"
            ) from None


def _stop_reading(run: protocol.BoardRun) -> bool:
    return bool(run.resets or run.foreign)


PANIC_TAIL_S = 3.0  # after a panic's first line: how long to wait for the panic handler's `Backtrace:` line


def _backtrace(run: protocol.BoardRun) -> str | None:
    """The `Backtrace:` line of the run's first reset (a panic), if it has arrived."""
    first = run.resets[0] if run.resets else None
    return next((m.text for m in run.markers if m.reason == "Backtrace:" and m.line_no >= first.line_no), None) \
        if first is not None else None


def _read_backtrace(source, session: protocol.TranscriptParser) -> None:
    """After a panic marker, keep reading (bounded) until its backtrace line arrives, so it can be decoded."""
    run = session.run
    if not run.resets or run.resets[0].marker not in protocol.PANIC_MARKERS:
        return
    end = time.monotonic() + PANIC_TAIL_S
    while _backtrace(run) is None:
        left = end - time.monotonic()
        if left <= 0:
            return
        try:
            session.feed(source.read(left))
        except Silence:
            return


def run_board(dut: Any, board: Board, *, dump: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
              total_s: float | None = None, again: bool = False) -> protocol.BoardRun:
    """One session: `board.reset` (`again`: not the first session of this dut), wait for READY, send
    `run` / `run dump`, read until END. A trusted run, or BoardSessionError."""
    total_s = total_s or timeout_s * (DUMP_FACTOR if dump else TOTAL_FACTOR)
    deadline = time.monotonic() + total_s
    source = board.transport(dut, dump=dump)
    try:
        board.reset(dut, again=again)
        session = protocol.TranscriptParser()
        _read(source, dut, session, lambda r: r.ready or r.end is not None or _stop_reading(r),
              phase="waiting for the test app to boot (BOOT, READY)", timeout_s=timeout_s, deadline=deadline)
        if session.run.ready and not _stop_reading(session.run):
            dut.write("run dump" if dump else "run")
            _read(source, dut, session, lambda r: r.end is not None or _stop_reading(r),
                  phase="waiting for the results (until END)", timeout_s=timeout_s, deadline=deadline)
        _read_backtrace(source, session)
    finally:
        source.close()
    run = session.finish()
    problems = run.problems()
    if problems:
        raise BoardSessionError(_explain(run, problems, dut, board))
    return run


def _explain(run: protocol.BoardRun, problems: list[str], dut: Any, board: Board) -> str:
    extra = []
    if run.resets:
        r = run.resets[0]
        kind = "panic" if any(m in r.evidence for m in protocol.PANIC_MARKERS) else "reset"
        head = f"the board reset {r.where} ({kind}: {r.evidence.strip()[:120]})"
        trace = _backtrace(run)
        frames = board.decode_backtrace(dut, trace) if trace else None
        if frames:
            extra.append(f"  backtrace (decoded with the app's ELF): {frames}")
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
    if run.log_errors:
        extra.append(f"  ESP-IDF's last error log: {run.log_errors[-1]}")
    return "\n".join([head, *extra, *(f"  - {p}" for p in problems), log_hint(dut)])


# ---------------------------------------------------------------------------------------------
# once per variant: run, compare, localize


def localize(dut: Any, board: Board, variant: str, *, timeout_s: float, models: Path = MODELS,
             tolerance: dict | None = None, bad_vectors: tuple[int, ...] = (0,)) -> tuple[str, str | None]:
    """Run the board again in dump mode and name the first layer where its intermediates (vector 0)
    leave the host interpreter's (quant.espdl.bisect; ESP32-S3 integer arithmetic on the committed .espdl):
    (the note, that layer's node or None)."""
    from quant.espdl import reader as espdl

    try:
        dump = run_board(dut, board, dump=True, timeout_s=timeout_s, again=True)
    except BoardSessionError as exc:
        return f"first diverging layer: not localized (the `run dump` session failed: {str(exc).splitlines()[0]})", None
    try:

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
        return f"first diverging layer: not localized ({exc})", None
    if found is None:
        return ("first diverging layer: not found: in `run dump` mode every intermediate of vector 0 agrees with "
                f"the host interpreter; the dump covers vector 0 only, the mismatching vectors are {list(bad_vectors)}"), None
    s = found.stat
    label = "host interpreter, simulator arithmetic" if exact else "host interpreter"
    report = bisect.format_report(model, board, host, tolerance, label_a="board", label_b=label)
    note = ("; the board agrees with the host interpreter's ESP32-S3 arithmetic on every layer, so this is where "
            "the chip's arithmetic and the PPQ simulator's differ" if exact else "")
    return (f"first diverging layer (board `run dump` vs {label}, vector 0): {s.op_type} {s.node} -> "
            f"{s.value} ({found.agreed_before} earlier layers agree){note}\n{report}"), s.node


def run_variant(dut: Any, board: Board, variant: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                bisect: bool = True) -> BoardOutcome:

    models = board.models
    outcome = BoardOutcome(variant=variant, claims=board.claims, kind=board.kind, models=models,
                           log_path=getattr(dut, "logfile", None))
    try:
        outcome.run = run_board(dut, board, timeout_s=timeout_s)
    except BoardSessionError as exc:
        outcome.error = f"{variant}: {exc}"
        return outcome
    if outcome.run.virtual and outcome.claims != "virtual":  # a virtual board on a chip's port claims nothing more
        outcome.claims, outcome.kind = "virtual", "virtual"
    if outcome.run.selftest == "fail":
        outcome.selftest_note = board.explains(variant, None)
    try:
        outcome.verdict, outcome.tolerance = compare.compare_run(outcome.run, variant, models)
    except UserError as exc:
        outcome.compare_error = str(exc)
        return outcome
    if bisect and not outcome.verdict.ok and outcome.run.model_sha256 == sha256_file(variant_file(variant, ".espdl", models)):
        # (a board that runs another model is named by the hash check; a layer dump of that model says nothing)
        outcome.bisect_note, outcome.diverged_at = localize(
            dut, board, variant, timeout_s=timeout_s, models=models, tolerance=outcome.tolerance,
            bad_vectors=tuple(outcome.verdict.bad_vectors))
    if not outcome.verdict.ok and outcome.diverged_at is not None:
        outcome.emulator_note = board.explains(variant, outcome.diverged_at)
    return outcome
