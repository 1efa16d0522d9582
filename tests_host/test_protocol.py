"""Result protocol v1: the C++ emitter and the Python parser agree on one golden transcript, and the
parser turns every kind of damage into a named problem."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from quant.board import protocol as p
from quant.folder import FIRMWARE

GOLDEN = Path(__file__).parent / "golden"
TRANSCRIPT = (GOLDEN / "transcript.txt").read_text()
LINES = TRANSCRIPT.splitlines(keepends=True)
CONV = "/stem/conv/Conv_output_0"
SAMPLES_RE = re.compile(r"raw latency samples vec (\d+): ([\d,]+)")


@pytest.fixture(scope="module")
def emit_golden(tmp_path_factory) -> Path:
    """tests_host/golden/emit_golden.cpp + firmware/main/result_protocol.cpp built with the host g++."""
    if shutil.which("g++") is None:
        pytest.skip("no host g++: install g++ (e.g. apt-get install g++) to check the C++ emitter")
    exe = tmp_path_factory.mktemp("golden") / "emit_golden"
    cmd = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{FIRMWARE / 'main'}",
           "-o", str(exe), str(GOLDEN / "emit_golden.cpp"), str(FIRMWARE / "main" / "result_protocol.cpp")]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr}"
    return exe


def _emit(exe: Path, *args: str, stdin: bytes = b"") -> str:
    out = subprocess.run([str(exe), *args], input=stdin, capture_output=True, timeout=30, check=True)
    return out.stdout.decode("ascii")


def _samples(text: str) -> dict[int, list[int]]:
    return {int(m[1]): [int(x) for x in m[2].split(",")] for m in SAMPLES_RE.finditer(text)}


def _drop(pred) -> str:
    return "".join(line for line in LINES if not pred(line))


def _insert_after(pred, *new: str) -> str:
    out, done = [], False
    for line in LINES:
        out.append(line)
        if not done and pred(line):
            out.extend(new)
            done = True
    assert done
    return "".join(out)


def _problems(text: str | bytes) -> list[str]:
    return p.parse_transcript(text).problems()


# --- one transcript, two sides ------------------------------------------------------------------


def test_cpp_emitter_prints_the_committed_golden_transcript(emit_golden):
    assert _emit(emit_golden) == TRANSCRIPT


def test_golden_transcript_parses_to_the_values_the_driver_emitted():
    run = p.parse_transcript(TRANSCRIPT)
    assert run.problems() == [] and run.complete
    assert run.boot == {"fw": "1.0.0", "variant": "mixed", "target": "esp32s3", "idf": "v5.5.5",
                        "espdl": "3.3.9", "cpu_mhz": 240, "psram_bytes": 8388608, "cores": 1, "runs": 10,
                        "vectors": 2, "board": "chip"}
    assert not run.virtual and run.ready and run.selftest == "pass"
    assert run.model == {"sha256": "3f1c0a9e5b7d2c4e6a8b0d1f3e5c7a9b2d4f6e8a0c1b3d5f7e9a2c4b6d8f0e1a",
                         "bytes": 81344, "location": "rodata"}
    assert run.memory["before_load"] == p.Memory(internal_free=372216, psram_free=8254464)
    assert run.memory["low_water"] == p.Memory(internal_free=351480, psram_free=8102912)
    assert (run.internal_used, run.psram_used) == (372216 - 351480, 8254464 - 8102912)
    assert run.inputs == {0: p.Input("zeros", -7, "int8"), 1: p.Input("swipe_left_0", -7, "int8")}
    logits = run.tensors[0]["logits"]
    assert (logits.dtype, logits.shape, logits.exponent, logits.data.dtype) == ("int16", (1, 7), -10, np.int16)
    assert logits.data.tolist() == [[1893, -402, 377, -1290, -1610, -181, 64]]
    assert run.tensors[1]["logits"].data.tolist() == [[-733, 2210, -95, 12, -1544, 303, -870]]
    assert logits.real()[0, 0] == 1893 / 1024
    conv = run.tensors[0][CONV]  # 144 elements in 3 chunks, one behind another task's log prefix
    expected = np.array([(i * 37 + 11) % 256 - 128 for i in range(144)], dtype=np.int8).reshape(1, 6, 6, 4)
    assert conv.data.dtype == np.int8 and conv.exponent == -5 and np.array_equal(conv.data, expected)
    assert sum(line.count("TENSOR vec=0 name=/stem") for line in LINES) == 3
    for vec, samples in _samples(TRANSCRIPT).items():  # median rule: lower middle, both sides
        lo, med, hi = p.latency_stats(samples)
        assert run.latency[vec] == p.Latency(len(samples), lo, med, hi)
    assert run.latency[0].med_us == 10250  # even n: lower middle (the upper one is 10257)
    assert run.latency_median_us == min(run.latency[0].med_us, run.latency[1].med_us)
    assert run.end == {"vectors": 2, "tensors": 3, "lines": 17, "status": "ok"}
    assert [m.reason for m in run.markers] == ["ESP-ROM:", "rst:0x"]  # the ROM banner before BOOT is normal
    assert run.resets == []


def test_python_formatter_prints_every_golden_line_byte_for_byte():
    records = [r for r in map(p.parse_line, LINES) if r is not None]
    assert len(records) == 18
    for record in records:
        assert p.format_line(record.tag, record.fields) == record.text


def test_python_emitter_replays_the_golden_session_byte_for_byte():
    """Same calls as emit_golden.cpp, through the Python Emitter: chunking, LAT from raw samples,
    and END's line count come out identical."""
    run, samples, out = p.parse_transcript(TRANSCRIPT), _samples(TRANSCRIPT), []
    em, started = p.Emitter(out.append), set()
    for r in filter(None, map(p.parse_line, LINES)):
        f = r.fields
        if r.tag == "TENSOR":
            if (f["vec"], f["name"]) not in started:
                started.add((f["vec"], f["name"]))
                t = run.tensors[f["vec"]][f["name"]]
                em.tensor(f["vec"], t.name, t.dtype, t.shape, t.exponent, t.data)
        elif r.tag == "LAT":
            em.latency(f["vec"], samples[f["vec"]])
        elif r.tag == "END":
            em.end_line(f["vectors"], f["tensors"], f["status"] == "ok")
        else:
            em.line(r.tag, **f)
    payload = [line[line.index("@gm"):] for line in LINES if "@gm" in line]
    assert out == payload


def test_edge_cases_format_identically_in_cpp_and_python(emit_golden):
    out: list[str] = []
    em = p.Emitter(out.append)
    em.line("ERROR", code="sanitize", msg="a b*c=d@e\tf\r\ngéh", empty="")
    em.line("MEM", a=0, b=-1, c=-(2**63), d=2**63 - 1, e=2**64 - 1, f=4294967295, g=-(2**31))
    em.tensor(0, "empty", "int32", (1, 0), 0, [])
    em.tensor(0, "scalar", "int32", (), -2, [-5])
    big = [(2**31 - 1 - i) if i % 2 == 0 else (-(2**31) + i) for i in range(129)]
    for k, n in enumerate((64, 65, 129)):
        em.tensor(k, "chunks", "int32", (n,), 3, big[:n])
    em.line("TOO_LONG_TAG_NAME_X", v="v" * 1099)
    em.line("EXACT", v="w" * 1001)
    em.line("OVER", v="w" * 1003)
    em.latency(0, [])
    em.latency(1, [7])
    em.latency(2, [9, 3])
    em.error("model_load", "dl::Model returned nullptr")
    em.end_line(3, 4, False)
    cpp = _emit(emit_golden, "edge")
    assert "".join(out) == cpp
    lines = cpp.splitlines()
    assert lines[10].startswith("@gm1 ERROR code=line_too_long msg=TOO_LONG_TAG_NA ")
    assert len(lines[11]) == p.MAX_LINE_BYTES and lines[11].startswith("@gm1 EXACT")
    assert lines[12].startswith("@gm1 ERROR code=line_too_long msg=OVER ")
    assert lines[-1].startswith("@gm1 END vectors=3 tensors=4 lines=17 status=error")


@pytest.mark.parametrize("data", [b"", b"a", b"123456789", bytes(range(256)), b"@gm1 READY cmd=run",
                                  bytes((i * 7919) % 256 for i in range(100_000))],
                         ids=["empty", "a", "check", "all-bytes", "line", "100k"])
def test_crc32_agrees_with_zlib(emit_golden, data):
    assert _emit(emit_golden, "crc", stdin=data).strip() == f"{p.crc32(data):08x}"
    assert p.crc32(b"123456789") == 0xCBF43926  # the CRC-32/IEEE check value


@pytest.mark.parametrize("samples", [[], [5], [9, 3], [3, 9, 1], [4, 4, 4, 4], [2, 1, 4, 3],
                                     [4294967295, 0, 4294967295, 1], list(range(255, -1, -1))],
                         ids=["none", "one", "two", "three", "equal", "even", "extremes", "256"])
def test_latency_stats_agree(emit_golden, samples):
    cpp = tuple(int(x) for x in _emit(emit_golden, "stats", *map(str, samples)).split())
    assert cpp == p.latency_stats(samples)
    if samples:
        s = sorted(samples)
        assert cpp == (s[0], s[(len(s) - 1) // 2], s[-1])


def test_cpp_and_python_constants_agree():
    header = (FIRMWARE / "main" / "result_protocol.hpp").read_text()

    def const(name: str) -> int:
        return int(re.search(rf"{name} = (\d+);", header)[1])

    assert const("kProtocolVersion") == p.PROTOCOL_VERSION
    assert const("kMaxTensorElementsPerLine") == p.MAX_TENSOR_ELEMENTS_PER_LINE
    assert const("kMaxLineBytes") == p.MAX_LINE_BYTES


def test_docs_protocol_md_defines_exactly_the_tags_and_fields_the_parser_knows():
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    table = {}
    for tag, fields in re.findall(r"^\| `([A-Z]+)` \| ([^|]*)\|", doc, re.M):
        fields = re.sub(r"\([^)]*\)", "", fields)  # "(`pass`/`fail`)" lists values, not fields
        table[tag] = set(re.findall(r"`([a-z0-9_]+)(?:=[^`]*)?`", fields))
    assert table == {tag: set(fields) for tag, fields in p.SCHEMA.items()}


# --- one line --------------------------------------------------------------------------------

READY = p.format_line("READY", {"cmd": "run"})


def test_log_lines_are_not_protocol():
    for text in ["I (312) main_task: Calling app_main()", "", "mail me at someone@gmail.com", "@gm", "gm1 READY"]:
        assert p.parse_line(text) is None


def test_text_before_the_magic_and_crlf_are_ignored():
    for text in [READY, READY + "\r\n", "I (9) x: tick " + READY + "\n", (READY + "\r\n").encode()]:
        record = p.parse_line(text)
        assert (record.tag, record.fields, record.text) == ("READY", {"cmd": "run"}, READY)


def test_unknown_fields_are_ignored_and_unknown_tags_are_kept_apart():
    record = p.parse_line(p.format_line("READY", {"cmd": "run", "extra": "1"}))
    assert record.known and record.fields["cmd"] == "run"
    future = p.parse_line(p.format_line("TEMP", {"celsius": 41}))
    assert (future.tag, future.known, future.fields) == ("TEMP", False, {"celsius": "41"})


def _reformat(line: str) -> str:
    """A line with a correct checksum over whatever body it has (to reach the format checks)."""
    body = line.rsplit(" *", 1)[0]
    return f"{body} *{p.crc32(body):08x}"


TENSOR = p.format_line("TENSOR", {"vec": 0, "name": "logits", "dtype": "int8", "shape": (1, 3), "exp": -4,
                                  "off": 0, "count": 3, "total": 3, "data": (1, -2, 3)})


@pytest.mark.parametrize("line, reason", [
    (READY[:-1] + ("0" if READY[-1] != "0" else "1"), "checksum mismatch"),
    (READY[:-3], "no ' *<8 hex digits>' checksum"),
    (READY.upper().replace("@GM1", "@gm1"), "checksum"),  # upper-case hex is not the checksum
    (READY.split(" *")[0], "no ' *<8 hex digits>' checksum"),
    (_reformat("@gm1 READY  cmd=run"), "is not key=value"),
    (_reformat("@gm1 ready cmd=run"), "not an upper-case word"),
    (_reformat("@gm1 READY"), "field cmd is missing"),
    (_reformat("@gm1 READY cmd=run cmd=run"), "appears twice"),
    (_reformat("@gm1 SELFTEST result=maybe"), "not one of pass/fail"),
    (_reformat("@gm1 LAT vec=01 runs=1 min_us=1 med_us=1 max_us=1"), "not a non-negative integer"),
    (_reformat(TENSOR.replace("count=3", "count=2")), "count=2 but 3 values"),
    (_reformat(TENSOR.replace("data=1,-2,3", "data=1,-2,300")), "outside the int8 range"),
    (_reformat(TENSOR.replace("shape=1x3", "shape=1x4")), "does not hold total=3"),
    (_reformat(TENSOR.replace("off=0", "off=1")), "beyond total=3"),
    (_reformat(TENSOR.replace("dtype=int8", "dtype=float32")), "not one of int8/int16/int32"),
    (_reformat("@gm1 MODEL sha256=ABC bytes=1 location=rodata"), "not 64 lower-case hex"),
    (_reformat("@gm1 ERROR code=x msg=" + "m" * 1100), "over the 1024-byte limit"),
    ("@gm1x READY cmd=run *00000000", "checksum"),
])
def test_damaged_lines_are_corrupt_with_a_reason(line, reason):
    with pytest.raises(p.CorruptLine, match=re.escape(reason)):
        p.parse_line(line)


def test_another_version_is_a_version_mismatch_but_a_garbled_version_digit_is_corruption():
    with pytest.raises(p.VersionMismatch, match="protocol version 2 .this harness speaks version 1") as exc:
        p.parse_line(p.format_line("READY", {"cmd": "run"}, version=2))
    assert exc.value.version == 2
    with pytest.raises(p.VersionMismatch):
        p.parse_line("@gm3 something entirely different")
    with pytest.raises(p.CorruptLine, match="checksum"):
        p.parse_line(READY.replace("@gm1", "@gm2"))


def test_formatter_sanitizes_values_and_rejects_non_values():
    assert p.format_line("ERROR", {"code": "", "msg": "no model @ 0x3c000000"}).startswith(
        "@gm1 ERROR code=_ msg=no_model___0x3c000000 *")
    assert p.sanitize("é") == "__"  # per UTF-8 byte, as the C++ emitter does
    for bad in [True, 1.5, None]:
        with pytest.raises(TypeError):
            p.format_line("MEM", {"x": bad})
    with pytest.raises(ValueError, match="1024-byte limit"):
        p.format_line("ERROR", {"msg": "x" * 1100})


# --- a whole run -----------------------------------------------------------------------------


def test_bytes_with_crlf_parse_like_text():
    run = p.parse_transcript(TRANSCRIPT.replace("\n", "\r\n").encode())
    assert run.problems() == [] and run.complete and run.tensors[0][CONV].data.size == 144


def test_streamed_line_by_line_gives_the_same_run():
    session = p.TranscriptParser()
    for line in LINES:
        session.feed(line.encode())
    run = session.finish()
    assert run.complete and run.problems() == [] and run.latency == p.parse_transcript(TRANSCRIPT).latency


def test_a_panic_during_a_vector_is_a_reset_during_that_vector():
    text = _insert_after(lambda line: "INPUT vec=1" in line,
                         "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\n",
                         "Backtrace: 0x42008a1e:0x3fc9a2b0\n", "ESP-ROM:esp32s3-20210327\n",
                         "rst:0xc (RTC_SW_CPU_RST),boot:0x8 (SPI_FAST_FLASH_BOOT)\n")
    text = text.split("@gm1 TENSOR vec=1")[0]
    run = p.parse_transcript(text)
    assert len(run.resets) == 1 and run.resets[0].vec == 1  # four markers, one event
    problems = run.problems()
    assert problems[0].startswith("board reset during vector 1 (line ")
    assert "Guru Meditation Error" in problems[0]
    assert any(x.startswith("no END line") for x in problems)


def test_a_second_boot_is_a_reboot_and_the_data_start_afresh():
    boot = next(line for line in LINES if "@gm1 BOOT" in line)
    text = _insert_after(lambda line: "TENSOR vec=0 name=logits" in line, boot)
    run = p.parse_transcript(text)
    assert run.boots == 2 and run.resets[0].vec == 0 and run.resets[0].rebooted
    assert run.problems()[0].startswith("board rebooted during vector 0: a second BOOT at line ")
    assert run.inputs.keys() == {1} and not run.complete  # vector 0 belonged to the first boot


def test_a_reset_before_the_model_is_loaded_says_so():
    text = _insert_after(lambda line: "READY" in line, "abort() was called at PC 0x42001234 on core 0\n")
    assert _problems(text)[0].startswith("board reset before the model was loaded (line 8: abort() was called")


def test_a_reset_between_before_load_and_after_load_is_in_esp_dls_loader():
    text = _insert_after(lambda line: "stage=before_load" in line, "assert failed: 0x42050421 <cached disabled>:328\n")
    assert _problems(text)[0].startswith("board reset while ESP-DL loaded the model (line ")


def test_a_corrupt_line_is_reported_with_its_number_and_never_used():
    damaged = TRANSCRIPT.replace("data=1893,-402", "data=1893,-403")
    run = p.parse_transcript(damaged)
    assert 0 not in run.tensors or "logits" not in run.tensors[0]
    problems = run.problems()
    assert problems[0].startswith("corrupt line 13 (checksum mismatch")
    assert "TENSOR vec=0 name=logits" in problems[0]
    assert any("vectors but" in x or "tensors but" in x for x in problems)


def test_a_lost_line_is_a_line_count_mismatch():
    problems = _problems(_drop(lambda line: "MEM stage=after_runs" in line))
    assert problems == ["line count mismatch: END counts 17 protocol lines, 16 arrived (1 lost)"]


def test_a_lost_chunk_is_an_incomplete_tensor():
    problems = _problems(_drop(lambda line: "off=64 count=64 total=144" in line))
    assert "TENSOR vec=0 name=/stem/conv/Conv_output_0 (from line 14) is incomplete: 64 of 144 elements " \
           "missing (first missing: element 64)" in problems


def test_overlapping_or_inconsistent_chunks_are_reported():
    chunk = next(line for line in LINES if "off=64 count=64" in line)
    overlap = _insert_after(lambda line: "off=64 count=64" in line, chunk)
    assert any("elements 64..127 were already received" in x for x in _problems(overlap))
    other_exp = p.format_line("TENSOR", {**p.parse_line(chunk).fields, "exp": -4}) + "\n"
    text = TRANSCRIPT.replace(chunk[chunk.index("@gm"):], other_exp)
    assert any("exp=-4" in x and "exp=-5" in x for x in _problems(text))


def test_a_missing_end_is_reported():
    problems = _problems(_drop(lambda line: "END" in line))
    assert problems == ["no END line: the run did not finish (17 protocol lines after BOOT, last: SELFTEST)"]


def test_a_missing_boot_is_reported():
    problems = _problems(_drop(lambda line: "@gm1 BOOT" in line))
    assert problems[0].startswith("17 protocol line(s) before any BOOT, ignored (first: line 6:")
    assert problems[1].startswith("no BOOT line: the test app never started or its output was lost; "
                                  "last reset/panic marker: line 3: rst:0x1")


def test_a_board_error_and_an_error_status_are_reported():
    em = p.Emitter()
    text = "".join([em.line("BOOT", **p.parse_transcript(TRANSCRIPT).boot), em.line("READY", cmd="run"),
                    em.error("model_load", "dl::Model returned nullptr"), em.end_line(0, 0, False)])
    problems = _problems(text)
    assert problems[0] == "the board reported ERROR code=model_load msg=dl::Model_returned_nullptr (line 3)"
    assert "BOOT announced 2 vectors, END reports 0" in problems


def test_another_protocol_version_is_reported_once_with_the_fix():
    text = re.sub(r"@gm1 ([^\n]*) \*[0-9a-f]{8}", lambda m: p.format_line(
        p.parse_line(m[0]).tag, p.parse_line(m[0]).fields, version=2), TRANSCRIPT)
    problems = _problems(text)
    assert problems[0].startswith("the board speaks another protocol: protocol version 2 (this harness "
                                  "speaks version 1) on 18 line(s), first line 6:")
    assert "flash a test app built from this repository" in problems[0]


def test_an_unknown_tag_is_reported_not_used():
    text = _insert_after(lambda line: "READY" in line, p.format_line("TEMP", {"celsius": 41}) + "\n")
    problems = _problems(text)
    assert problems[0].startswith("line 8: unknown tag TEMP, not used")
    assert problems[1] == "line count mismatch: END counts 17 protocol lines, 18 arrived (1 unexpected extra)"


def test_duplicate_records_are_reported():
    lat = next(line for line in LINES if "LAT vec=0" in line)
    assert "line 19: LAT vec=0 appears twice" in _problems(_insert_after(lambda line: "LAT vec=0" in line, lat))


def test_a_virtual_board_says_so_in_boot():
    boot = {**p.parse_transcript(TRANSCRIPT).boot, "board": "virtual", "source": "reference"}
    run = p.parse_transcript(p.format_line("BOOT", boot))
    assert run.virtual and run.boot["source"] == "reference"
    assert not p.parse_transcript(TRANSCRIPT).virtual


def test_a_reset_after_the_runs_says_so():
    text = _insert_after(lambda line: "low_water" in line, "rst:0xc (RTC_SW_CPU_RST),boot:0x8\n")
    assert _problems(text)[0].startswith("board reset after the runs (during the intermediate dump or "
                                         "model->test()) (line 25: rst:0xc")


def test_vectors_and_runs_must_match_boot():
    boot = p.parse_line(next(line for line in LINES if "@gm1 BOOT" in line))
    text = TRANSCRIPT.replace(boot.text, p.format_line("BOOT", {**boot.fields, "vectors": 1, "runs": 9}))
    problems = _problems(text)
    assert "line 19: INPUT vec=1 but BOOT announced 1 vectors" in problems
    assert "line 18: LAT vec=0 runs=10 but BOOT announced runs=9" in problems
    assert "BOOT announced 1 vectors, END reports 2" in problems


def test_lines_after_end_are_ignored():
    run = p.parse_transcript(TRANSCRIPT + "Guru Meditation Error: Core 0\n" + READY + "\n")
    assert run.problems() == [] and run.complete and run.after_end == 2
