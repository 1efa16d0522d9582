"""Property-based tests of the protocol parser: arbitrary input never crashes it, a damaged line is
never accepted as data, and every valid record survives format -> parse unchanged."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant.board import protocol as p

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # repeatable, writes nothing
TRANSCRIPT = (Path(__file__).parent / "golden" / "transcript.txt").read_text()
PAYLOADS = [line[line.index("@gm"):] for line in TRANSCRIPT.splitlines() if "@gm" in line]

# --- valid records ---------------------------------------------------------------------------
value_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="*=@"),
                     min_size=1, max_size=24)
uint = st.integers(0, 2**63)
sint = st.integers(-(2**63), 2**63)
DTYPE_RANGE = {"int8": (-128, 127), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}


@st.composite
def tensor_fields(draw):
    dtype = draw(st.sampled_from(sorted(DTYPE_RANGE)))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    total = math.prod(shape)
    off = draw(st.integers(0, total))
    count = draw(st.integers(0, min(p.MAX_TENSOR_ELEMENTS_PER_LINE, total - off)))
    lo, hi = DTYPE_RANGE[dtype]
    data = tuple(draw(st.lists(st.integers(lo, hi), min_size=count, max_size=count)))
    return {"vec": draw(uint), "name": draw(value_text), "dtype": dtype, "shape": shape, "exp": draw(sint),
            "off": off, "count": count, "total": total, "data": data}


def _fields(tag: str):
    if tag == "TENSOR":
        return tensor_fields()
    per_key = {}
    for key, conv in p.SCHEMA[tag].items():
        if conv is p._uint:
            per_key[key] = uint
        elif conv is p._int:
            per_key[key] = sint
        elif conv is p._hex64:
            per_key[key] = st.text("0123456789abcdef", min_size=64, max_size=64)
        elif hasattr(conv, "choices"):
            per_key[key] = st.sampled_from(conv.choices)
        else:
            per_key[key] = value_text
    return st.fixed_dictionaries(per_key)


records = st.sampled_from(sorted(p.SCHEMA)).flatmap(lambda tag: st.tuples(st.just(tag), _fields(tag)))


@SETTINGS
@given(records)
def test_every_valid_record_survives_format_then_parse(record):
    tag, fields = record
    line = p.format_line(tag, fields)
    parsed = p.parse_line(line)
    assert (parsed.tag, parsed.fields, parsed.text, parsed.known) == (tag, fields, line, True)
    assert p.format_line(parsed.tag, parsed.fields) == line


# --- damage ----------------------------------------------------------------------------------


@st.composite
def corrupted(draw, lines):
    line = draw(lines)
    i = draw(st.integers(0, len(line) - 1))
    c = draw(st.characters(codec="utf-8").filter(lambda ch: ch != line[i]))
    return line, line[:i] + c + line[i + 1:]


valid_lines = st.one_of(st.sampled_from(PAYLOADS), records.map(lambda r: p.format_line(*r)))


@SETTINGS
@given(corrupted(valid_lines))
def test_a_line_with_any_one_character_changed_is_never_accepted_as_data(case):
    original, damaged = case
    try:
        record = p.parse_line(damaged)
    except p.ProtocolError:
        return
    assert record is None, f"accepted as data: {damaged!r} (from {original!r})"


@SETTINGS
@given(st.integers(0, len(PAYLOADS) - 1), st.data())
def test_a_golden_run_with_one_damaged_line_is_never_trusted(index, data):
    line = PAYLOADS[index]
    _, damaged = data.draw(corrupted(st.just(line)))
    run = p.parse_transcript(TRANSCRIPT.replace(line, damaged, 1))
    assert run.problems(), f"a run with {damaged!r} instead of {line!r} was trusted"


# --- arbitrary input -------------------------------------------------------------------------
protocolish = st.lists(st.one_of(st.sampled_from(PAYLOADS), st.sampled_from(["@gm1 ", "@gm", " *", "=", ",", "x",
                                                                               "\n", "\r\n", "Guru Meditation Error",
                                                                               "rst:0x1", "@gm2 "]),
                                 st.text(max_size=20)), max_size=30).map("".join)


@SETTINGS
@given(st.one_of(st.text(max_size=300), protocolish))
def test_parse_line_raises_nothing_but_protocol_errors(text):
    try:
        result = p.parse_line(text)
    except p.ProtocolError:
        return
    assert result is None or isinstance(result, p.Record)


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=200), protocolish, protocolish.map(str.encode)), max_size=12))
def test_feeding_a_session_anything_never_raises(chunks):
    session = p.TranscriptParser()
    for chunk in chunks:
        session.feed(chunk)
    run = session.finish()
    problems = run.problems()
    assert all(isinstance(x, str) and x.isprintable() for x in problems)  # one line, XML-safe
    if run.complete and not problems:  # only a genuine transcript is trusted
        assert run.boot is not None and run.end["lines"] == run.lines_received


@SETTINGS
@given(st.lists(st.sampled_from(TRANSCRIPT.splitlines(keepends=True)), max_size=40))
def test_golden_lines_in_any_order_and_number_are_trusted_only_when_all_arrive_once(lines):
    run = p.parse_transcript("".join(lines))
    payloads = [line[line.index("@gm"):].rstrip("\n") for line in lines if "@gm" in line]
    if "END" in "".join(payloads):  # lines after END are not part of the run
        payloads = payloads[:next(i for i, x in enumerate(payloads) if " END " in x) + 1]
    if not run.problems():
        assert sorted(payloads) == sorted(PAYLOADS)
