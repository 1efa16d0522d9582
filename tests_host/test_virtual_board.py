"""The virtual board speaks protocol v1 through quant.board.protocol.Emitter, computes its outputs with
the host interpreter on the folder's own vectors (or refuses to start), injects each fault as described,
starts fast, and never outlives its owner. Runs on the committed models (the interpreter needs a real .espdl)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import serial

from quant.board import virtual as vb
from quant.errors import UserError
from quant.espdl import reader as espdl
from quant.espdl.interpreter import Interpreter
from quant.folder import MODELS, REPO, VARIANTS, load_budgets, load_vectors, variant_file
from quant.board.protocol import parse_transcript

from target_fixtures import make_models

VARIANT = "int8"
pytestmark = pytest.mark.skipif(not all(variant_file(v, ".espdl").exists() for v in VARIANTS),
                                reason="the committed models are missing: run `quant build` (or `make models`)")


@pytest.fixture(scope="module")
def models() -> Path:
    return MODELS


_DATA: dict = {}


def _data(models: Path) -> vb.VariantData:
    """One loaded variant per module (its interpreter caches each vector's outputs)."""
    if models not in _DATA:
        _DATA[models] = vb.load_variant(VARIANT, models)
    return _DATA[models]


def transcript(models: Path, fault: str = "none", dump: bool = False, data: vb.VariantData | None = None) -> str:
    app = vb.App(data or (_data(models) if fault != "layer_fault" else vb.load_variant(VARIANT, models, fault)), fault)
    pieces = [app.boot(), *app.run(dump=dump)]
    return "".join(p for p in pieces if isinstance(p, str))


@pytest.fixture(scope="module")
def computed(models) -> list[dict]:
    """What the chip's arithmetic gives on the folder's vectors: quant.espdl.interpreter, run here."""
    model = espdl.load(variant_file(VARIANT, ".espdl", models))
    x, _ = load_vectors(models)
    interp = Interpreter(model)
    return [{n: q.data.reshape(-1).tolist() for n, q in interp.run(v[None]).items()} for v in x]


def test_a_correct_board_speaks_valid_protocol_and_computes_with_the_interpreter(models, computed):
    run = parse_transcript(transcript(models))
    limits = load_budgets(VARIANT, models)
    assert run.problems() == []
    assert run.complete and run.virtual and run.boot["source"] == "interpreter"
    names = list(computed[0])
    assert [[run.tensors[v][n].data.reshape(-1).tolist() for n in names] for v in range(len(computed))] == \
        [[c[n] for n in names] for c in computed]
    assert run.selftest == "pass"
    assert run.internal_used == round(limits["internal_ram_bytes"].basis)  # the estimate, labelled virtual
    basis = limits["latency_us"].basis
    assert abs(run.latency_median_us - basis) <= basis * 0.01


def test_the_board_emits_through_the_protocol_emitter(models):
    """Same lines as quant.board.protocol.Emitter (the C++ twin the golden transcript checks) gives."""
    from quant.board.protocol import Emitter

    text = transcript(models)
    run = parse_transcript(text)
    emitter = Emitter()
    t = run.tensors[0][next(iter(run.tensors[0]))]
    expected = emitter.tensor(0, t.name, t.dtype, t.shape, t.exponent, t.data)
    assert expected in text
    assert run.end["lines"] == run.lines_received


def test_every_fault_has_a_description_and_the_agreed_names():
    assert set(vb.FAULTS) == {"none", "off_by_one", "wrong_exponent", "reset", "panic", "truncated",
                              "bad_checksum", "silent", "slow_latency", "memory_over", "stale_model", "chatter",
                              "version", "selftest_fail", "layer_fault"}


def _n(models) -> int:
    return len(_data(models).vector_names)


def _diff(models, fault):
    good, bad = parse_transcript(transcript(models)), parse_transcript(transcript(models, fault))
    return good, bad


def test_off_by_one_changes_one_element_of_one_vector_by_one(models):
    good, bad = _diff(models, "off_by_one")
    changed = [(v, i, int(b) - int(a)) for v in range(_n(models))
               for i, (a, b) in enumerate(zip(good.tensors[v]["logits"].data.reshape(-1),
                                              bad.tensors[v]["logits"].data.reshape(-1)))
               if a != b]
    assert len(changed) == 1 and abs(changed[0][2]) == 1 and changed[0][:2] == (vb.FAULT_VECTOR, vb.FAULT_ELEMENT)
    assert bad.problems() == []  # well-formed: only the comparison can catch it


def test_wrong_exponent_changes_one_exponent_and_no_data(models):
    good, bad = _diff(models, "wrong_exponent")
    exps = [(v, bad.tensors[v]["logits"].exponent - good.tensors[v]["logits"].exponent) for v in range(_n(models))]
    assert [e for e in exps if e[1]] == [(vb.FAULT_VECTOR, 1)]
    assert all((good.tensors[v]["logits"].data == bad.tensors[v]["logits"].data).all() for v in range(_n(models)))


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
    app = vb.App(_data(models), "silent")
    app.boot()
    pieces = list(app.run())
    assert isinstance(pieces[-1], vb.Stop)
    run = parse_transcript(app.boot() + "".join(p for p in pieces[:-1]))
    assert run.end is None and max(run.inputs) == vb.FAULT_VECTOR and max(run.latency) == vb.FAULT_VECTOR - 1


def test_slow_latency_exceeds_the_budget_and_memory_over_exceeds_the_ram_budget(models):
    limits = load_budgets(VARIANT, models)
    slow = parse_transcript(transcript(models, "slow_latency"))
    assert slow.latency_median_us > limits["latency_us"].value and slow.problems() == []
    mem = parse_transcript(transcript(models, "memory_over"))
    assert mem.internal_used > limits["internal_ram_bytes"].value and mem.problems() == []


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
    assert all((run.tensors[v]["logits"].data == good.tensors[v]["logits"].data).all() for v in range(_n(models)))


def test_version_fault_speaks_another_protocol_version(models):
    run = parse_transcript(transcript(models, "version"))
    assert run.boot is None and run.foreign and "protocol version 2" in run.problems()[0]


def test_layer_fault_breaks_one_layer_and_everything_downstream(models):
    good = parse_transcript(transcript(models, dump=True))
    bad_app = vb.App(vb.load_variant(VARIANT, models, "layer_fault"), "layer_fault")
    bad = parse_transcript("".join(p for p in [bad_app.boot(), *bad_app.run(dump=True)] if isinstance(p, str)))
    assert good.problems() == [] and bad.problems() == []
    outputs = _data(models).output_names
    names = [n for n in good.tensors[0] if n not in outputs]  # the dump: input, then every node in order
    differs = [bool((good.tensors[0][n].data != bad.tensors[0][n].data).any()) for n in names]
    first = differs.index(True)
    assert names[first] == bad_app.fault_layer  # the broken layer is the first to diverge ...
    assert 0 < first and all(differs[first:first + 3])  # ... the ones before agree, the next ones differ
    assert good.boot["source"] == "interpreter"
    assert all(any((good.tensors[v][n].data != bad.tensors[v][n].data).any() for n in bad.tensors[v])
               for v in range(_n(models)))


def test_a_folder_without_its_own_vectors_is_a_one_line_error_never_a_replay(tmp_path):
    folder = make_models(tmp_path / "m", (VARIANT,))  # a variant folder, no test_vectors.bin beside it
    with pytest.raises(UserError) as exc:
        vb.load_variant(VARIANT, folder)
    message = str(exc.value)
    assert "\n" not in message and str(folder) in message and f"--models-dir {folder}" in message
    proc = subprocess.run([sys.executable, "-m", "quant", "virtual-board", "--variant", VARIANT, "--models-dir",
                           str(folder)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "fixed vectors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_fault_and_missing_models_are_user_errors(models, tmp_path):
    with pytest.raises(UserError, match="unknown fault"):
        vb.start(VARIANT, fault="gremlins", models_dir=models)
    with pytest.raises(UserError, match="quant build"):
        vb.load_variant(VARIANT, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "quant", "virtual-board", "--variant", VARIANT, "--models-dir",
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
    assert run.problems() == [] and run.virtual and len(run.latency) == _n(models)


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


def test_selftest_passes_only_when_the_embedded_test_output_matches(models):
    assert parse_transcript(transcript(models)).selftest == "pass"
    data = vb.load_variant(VARIANT, models)
    name = next(iter(data.embedded))
    t = data.embedded[name]
    changed = np.array(t.data, dtype=np.int64)
    changed.reshape(-1)[0] += 2
    data.embedded[name] = t.replace(data=changed)
    assert parse_transcript(transcript(models, data=data)).selftest == "fail"


def test_a_layer_fault_board_computes_every_output_from_the_broken_layer(models):
    """Through the process and the pty, on the committed model, with the host interpreter."""
    clean = _data(models)
    with vb.start(VARIANT, fault="layer_fault", models_dir=models) as board:
        with serial.Serial(board.port, 115200, timeout=0.2) as port:
            port.write(b"reset\n")
            boot = _read_until(port, b"READY")
            port.write(b"run\n")
            run = parse_transcript(boot + _read_until(port, b"END", timeout=20))
    assert run.problems() == [] and run.boot["source"] == "interpreter"
    for vec in range(len(clean.vector_names)):
        want = clean.outputs(vec)[0]
        assert (run.tensors[vec][want.name].data.reshape(-1) != want.data).any(), f"vector {vec} unchanged"
