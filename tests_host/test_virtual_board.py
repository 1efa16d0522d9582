"""The virtual board speaks protocol v1, serves the reference, injects each fault as described,
starts fast, and never outlives its owner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from quant.board import virtual as vb
from quant.errors import UserError
from quant.paths import REPO, variant_file
from quant.board.protocol import parse_transcript

from vboard_fixtures import BUDGETS, VARIANT, VECTORS, make_models


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return make_models(tmp_path_factory.mktemp("models"))


def transcript(models: Path, fault: str = "none", dump: bool = False, data: vb.VariantData | None = None) -> str:
    app = vb.App(data or vb.load_variant(VARIANT, models, "reference"), fault)
    pieces = [app.boot(), *app.run(dump=dump)]
    return "".join(p for p in pieces if isinstance(p, str))


def reference(models: Path) -> list[list[int]]:
    ref = json.loads((models / f"gesture_model_{VARIANT}" / f"gesture_model_{VARIANT}.reference.json").read_text())
    return [o["tensors"]["logits"]["data"] for o in ref["outputs"]]


def test_a_correct_board_speaks_valid_protocol_and_serves_the_reference(models):
    run = parse_transcript(transcript(models))
    assert run.problems() == []
    assert run.complete and run.virtual and run.boot["source"] == "reference"
    assert [run.tensors[v]["logits"].data.reshape(-1).tolist() for v in range(VECTORS)] == reference(models)
    assert run.selftest == "pass"
    assert run.internal_used == BUDGETS["internal_ram_bytes"][1]  # the estimate, labelled virtual
    assert abs(run.latency_median_us - BUDGETS["latency_us"][1]) <= BUDGETS["latency_us"][1] * 0.01


def test_every_fault_has_a_description_and_the_agreed_names():
    assert set(vb.FAULTS) == {"none", "off_by_one", "wrong_exponent", "reset", "panic", "truncated",
                              "bad_checksum", "silent", "slow_latency", "memory_over", "stale_model", "chatter",
                              "version", "selftest_fail", "layer_fault"}


def _diff(models, fault):
    good, bad = parse_transcript(transcript(models)), parse_transcript(transcript(models, fault))
    return good, bad


def test_off_by_one_changes_one_element_of_one_vector_by_one(models):
    good, bad = _diff(models, "off_by_one")
    changed = [(v, i, int(b) - int(a)) for v in range(VECTORS)
               for i, (a, b) in enumerate(zip(good.tensors[v]["logits"].data.reshape(-1),
                                              bad.tensors[v]["logits"].data.reshape(-1)))
               if a != b]
    assert len(changed) == 1 and abs(changed[0][2]) == 1 and changed[0][:2] == (vb.FAULT_VECTOR, vb.FAULT_ELEMENT)
    assert bad.problems() == []  # well-formed: only the comparison can catch it


def test_wrong_exponent_changes_one_exponent_and_no_data(models):
    good, bad = _diff(models, "wrong_exponent")
    exps = [(v, bad.tensors[v]["logits"].exponent - good.tensors[v]["logits"].exponent) for v in range(VECTORS)]
    assert [e for e in exps if e[1]] == [(vb.FAULT_VECTOR, 1)]
    assert all((good.tensors[v]["logits"].data == bad.tensors[v]["logits"].data).all() for v in range(VECTORS))


@pytest.mark.parametrize("fault", ["reset", "panic"])
def test_reset_and_panic_reboot_the_board_during_the_fault_vector(models, fault):
    text = transcript(models, fault)
    run = parse_transcript(text)
    assert {r.where for r in run.resets} == {f"during vector {vb.FAULT_VECTOR}"}
    assert run.boots == 2 and "rst:0xc (RTC_SW_CPU_RST)" in text
    assert ("Guru Meditation Error: Core  0 panic'ed (LoadProhibited)" in text) == (fault == "panic")


@pytest.mark.parametrize("fault", ["truncated", "bad_checksum"])
def test_a_damaged_line_is_corrupt_and_its_data_never_arrives(models, fault):
    run = parse_transcript(transcript(models, fault))
    assert len(run.corrupt) == 1 and "TENSOR" in run.corrupt[0].text
    assert "logits" not in run.tensors.get(vb.FAULT_VECTOR, {})
    assert any(p.startswith("corrupt line") for p in run.problems())


def test_a_silent_board_stops_mid_run_and_never_ends(models):
    app = vb.App(vb.load_variant(VARIANT, models, "reference"), "silent")
    app.boot()
    pieces = list(app.run())
    assert isinstance(pieces[-1], vb.Stop)
    run = parse_transcript(app.boot() + "".join(p for p in pieces[:-1]))
    assert run.end is None and max(run.inputs) == vb.FAULT_VECTOR and max(run.latency) == vb.FAULT_VECTOR - 1


def test_slow_latency_exceeds_the_budget_and_memory_over_exceeds_the_ram_budget(models):
    slow = parse_transcript(transcript(models, "slow_latency"))
    assert slow.latency_median_us > BUDGETS["latency_us"][0] and slow.problems() == []
    mem = parse_transcript(transcript(models, "memory_over"))
    assert mem.internal_used > BUDGETS["internal_ram_bytes"][0] and mem.problems() == []


def test_stale_model_reports_another_hash_and_selftest_fail_reports_fail(models):
    good, stale = _diff(models, "stale_model")
    assert stale.model_sha256 != good.model_sha256 and stale.model["bytes"] == good.model["bytes"]
    assert parse_transcript(transcript(models, "selftest_fail")).selftest == "fail"


def test_chatter_interleaves_logs_yet_the_run_is_identical(models):
    text = transcript(models, "chatter")
    run, good = parse_transcript(text), parse_transcript(transcript(models))
    assert run.problems() == [] and run.log_lines > good.log_lines + 40
    assert any(line.startswith("TENSOR ") for line in text.splitlines())  # TENSOR without the magic
    assert any("@gm1" in line and not line.startswith("@gm1") for line in text.splitlines())  # log prefix
    assert all((run.tensors[v]["logits"].data == good.tensors[v]["logits"].data).all() for v in range(VECTORS))


def test_version_fault_speaks_another_protocol_version(models):
    run = parse_transcript(transcript(models, "version"))
    assert run.boot is None and run.foreign and "protocol version 2" in run.problems()[0]


def test_dump_without_the_interpreter_is_reported_unsupported(models):
    run = parse_transcript(transcript(models, dump=True))
    assert [e[1] for e in run.errors] == ["dump_unsupported"] and run.end["status"] == "error"


class StandInInterpreter:
    """Serves the reference and six dumped tensors (input + five layers), as quant.espdl.interpreter would."""

    def __init__(self, data: vb.VariantData):
        self.data = data

    def outputs(self, vec: int) -> list[vb.Tensor]:
        return self.data.reference[vec]

    def intermediates(self) -> list[vb.Tensor]:
        image = vb.Tensor("image", "int8", [1, 96, 96, 1], -7, [(j * 7) % 256 - 128 for j in range(96 * 96)])
        return [image] + [vb.Tensor(f"/conv{k}/Conv_output_0", "int8", [1, 4, 4, 2], -5,
                                    [(k * 31 + j) % 200 - 100 for j in range(32)]) for k in range(5)]


def _with_intermediates(models) -> vb.VariantData:
    data = vb.load_variant(VARIANT, models, "reference")
    data.interpreter, data.dump_error = StandInInterpreter(data), ""
    return data


def test_layer_fault_breaks_one_layer_and_everything_downstream(models):
    good = parse_transcript(transcript(models, dump=True, data=_with_intermediates(models)))
    bad = parse_transcript(transcript(models, "layer_fault", dump=True, data=_with_intermediates(models)))
    assert good.problems() == [] and bad.problems() == []
    names = ["image"] + [f"/conv{k}/Conv_output_0" for k in range(5)]
    differs = [bool((good.tensors[0][n].data != bad.tensors[0][n].data).any()) for n in names]
    assert differs == [False, False, False, True, True, True]  # the middle layer is the first to diverge
    assert good.end["tensors"] == VECTORS + 6 and good.boot["source"] == "interpreter"
    assert all((good.tensors[v]["logits"].data != bad.tensors[v]["logits"].data).any() for v in range(VECTORS))


def test_unknown_fault_and_missing_models_are_user_errors(models, tmp_path):
    with pytest.raises(UserError, match="unknown fault"):
        vb.start(VARIANT, fault="gremlins", models_dir=models)
    with pytest.raises(UserError, match="quant build"):
        vb.load_variant(VARIANT, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "quant", "virtual-board", "--variant", VARIANT, "--models",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _read_until(port: serial.Serial, token: bytes, timeout: float = 5.0) -> bytes:
    buf, deadline = b"", time.monotonic() + timeout
    while token not in buf and time.monotonic() < deadline:
        buf += port.read(4096)
    return buf


def test_the_board_starts_fast_is_silent_until_reset_and_ignores_sync_garbage(models):
    t0 = time.monotonic()
    with vb.start(VARIANT, models_dir=models) as board:
        started = time.monotonic() - t0
        with serial.Serial(board.port, 115200, timeout=0.2) as port:
            port.write(b"run\n")
            assert port.read(4096) == b""  # not booted: a real board would not have been reset yet
            port.write(b"\xc0\x00\x08\x24\x00\x00\x00\x00\x07\x07\x12\x20\xc0reset\n")
            boot = _read_until(port, b"READY")
            port.write(b"hello?\nrun\n")
            text = boot + _read_until(port, b"END")
    assert started < 1.0
    run = parse_transcript(text)
    assert run.problems() == [] and run.virtual and len(run.latency) == VECTORS


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_stop_and_sigterm_end_the_board_without_a_zombie(models):
    board = vb.start(VARIANT, models_dir=models)
    os.kill(board.pid, signal.SIGTERM)
    assert board.proc.wait(timeout=3) == 0
    board.stop()
    assert _state(board.pid) == "gone"
    with vb.start(VARIANT, models_dir=models) as board:
        pid = board.pid
    assert _state(pid) == "gone"


def test_the_board_exits_when_its_parent_dies(models, tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom quant.board import virtual as vb\n"
         f"b = vb.start('{VARIANT}', models_dir=Path(sys.argv[1]))\nprint(b.pid, flush=True)\ntime.sleep(60)",
         str(models)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait(timeout=5)
    deadline = time.monotonic() + 5
    while _state(pid) not in ("gone", "Z", "X") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(pid) in ("gone", "Z", "X")  # exited (a zombie only until init reaps the orphan)


def test_selftest_passes_only_when_the_embedded_test_output_matches(tmp_path):
    assert parse_transcript(transcript(make_models(tmp_path / "a"))).selftest == "pass"
    assert parse_transcript(transcript(make_models(tmp_path / "b", embedded_delta=1))).selftest == "fail"


@pytest.mark.skipif(not variant_file(VARIANT, ".espdl").exists(), reason="the committed models are missing: run `quant build`")
def test_a_layer_fault_board_computes_every_output_from_the_broken_layer():
    """Through the process and the pty, on the committed model, with the host interpreter."""
    clean = vb.load_variant(VARIANT, source="interpreter")
    with vb.start(VARIANT, fault="layer_fault", source="interpreter") as board:
        with serial.Serial(board.port, 115200, timeout=0.2) as port:
            port.write(b"reset\n")
            boot = _read_until(port, b"READY")
            port.write(b"run\n")
            run = parse_transcript(boot + _read_until(port, b"END", timeout=20))
    assert run.problems() == [] and run.boot["source"] == "interpreter"
    for vec in range(len(clean.reference)):
        want = clean.outputs(vec)[0]
        assert (run.tensors[vec][want.name].data.reshape(-1) != want.data).any(), f"vector {vec} unchanged"
