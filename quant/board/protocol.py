"""Result protocol v1 (chip -> host): the one parser, and the formatter the virtual board uses.

The definition is docs/protocol.md; the chip side is firmware/main/result_protocol.cpp. Both sides
are checked against one golden transcript (tests_host/golden/).

    run = parse_transcript(dut_log_text)        # or: s = TranscriptParser(); s.feed(line)...; run = s.finish()
    for reason in run.problems(): ...           # why the run cannot be trusted (empty when it can)
    run.tensors[0]["logits"].data               # numpy int array, shape as the chip reported it

Formatting: `format_line(tag, fields)` gives one line without its newline; `Emitter` mirrors the
C++ Emitter (TENSOR chunking, LAT from raw samples, END with the line count).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from quant.tensor import Tensor

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1024  # from '@' to the last checksum digit, newline excluded
MAX_TENSOR_ELEMENTS_PER_LINE = 64
MAX_TENSOR_ELEMENTS = 1 << 24  # a sanity bound for the parser (16 Mi elements)
MAGIC = "@gm"
PANIC_MARKERS = ("Guru Meditation Error", "abort() was called", "assert failed:", "Backtrace:")
RESET_MARKERS = ("rst:0x", "ESP-ROM:")
DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32}
MEM_STAGES = ("before_load", "after_load", "after_runs", "low_water")


class ProtocolError(Exception):
    """A line that looks like protocol but cannot be used as data."""


class CorruptLine(ProtocolError):
    """A protocol line that fails the checksum or the format."""


class VersionMismatch(ProtocolError):
    """A protocol line of another protocol version."""

    def __init__(self, version: int, message: str):
        super().__init__(message)
        self.version = version


# ---------------------------------------------------------------------------------------------
# Field types and the tags of protocol v1

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # ESP-IDF's log colours
_ESP_LOG_ERROR_RE = re.compile(r"E \(\d+\) [^:]+: ")
_INT_RE = re.compile(r"0|-?[1-9][0-9]*")
_UINT_RE = re.compile(r"0|[1-9][0-9]*")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_KEY_RE = re.compile(r"[a-z0-9_]+")
_TAG_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_VALUE_RE = re.compile(r"[!-)+-<>-?A-~]+")  # printable ASCII without '*', '=', '@'
_MAGIC_RE = re.compile(r"@gm([0-9]+)")
_FRAME_RE = re.compile(r"(@gm[0-9]+ [!-~ ]*) \*([0-9a-f]{8})")


def _int(v: str) -> int:
    if not _INT_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


def _uint(v: str) -> int:
    if not _UINT_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a non-negative integer")
    return int(v)


def _str(v: str) -> str:
    return v


def _hex64(v: str) -> str:
    if not _HEX64_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not 64 lower-case hex digits")
    return v


def _shape(v: str) -> tuple[int, ...]:
    return () if v == "_" else tuple(_uint(d) for d in v.split("x"))


def _ints(v: str) -> tuple[int, ...]:
    return () if v == "_" else tuple(_int(d) for d in v.split(","))


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in choices:
            raise ValueError(f"{v!r} is not one of {'/'.join(choices)}")
        return v

    check.choices = choices  # type: ignore[attr-defined]
    return check


_DTYPE = _one_of(*DTYPES)

# tag -> {key: parser}; every key is required. BOOT's `source` is optional (virtual board only).
SCHEMA: dict[str, dict[str, Callable[[str], Any]]] = {
    "BOOT": {"fw": _str, "variant": _str, "target": _str, "idf": _str, "espdl": _str,
             "cpu_mhz": _uint, "psram_bytes": _uint, "cores": _uint, "runs": _uint,
             "vectors": _uint, "board": _one_of("chip", "virtual")},
    "READY": {"cmd": _str},
    "MODEL": {"sha256": _hex64, "bytes": _uint, "location": _str},
    "MEM": {"stage": _one_of(*MEM_STAGES), "internal_free": _uint, "psram_free": _uint},
    "INPUT": {"vec": _uint, "name": _str, "exp": _int, "dtype": _DTYPE},
    "TENSOR": {"vec": _uint, "name": _str, "dtype": _DTYPE, "shape": _shape, "exp": _int,
               "off": _uint, "count": _uint, "total": _uint, "data": _ints},
    "LAT": {"vec": _uint, "runs": _uint, "min_us": _uint, "med_us": _uint, "max_us": _uint},
    "SELFTEST": {"result": _one_of("pass", "fail")},
    "ERROR": {"code": _str, "msg": _str},
    "END": {"vectors": _uint, "tensors": _uint, "lines": _uint, "status": _one_of("ok", "error")},
}
OPTIONAL: dict[str, dict[str, Callable[[str], Any]]] = {"BOOT": {"source": _str}}


@dataclass(frozen=True)
class Record:
    """One valid protocol line. `fields` holds typed values of the tag's fields (ints, str,
    tuples for shape/data) and, as raw strings, any field this version does not know."""

    tag: str
    fields: dict[str, Any]
    text: str  # the payload, from '@gm' to the last checksum digit
    known: bool = True  # False for a tag protocol v1 does not define


# ---------------------------------------------------------------------------------------------
# Formatting


def crc32(data: bytes | str) -> int:
    """CRC-32 (IEEE 802.3), the checksum of protocol lines; == gm::crc32."""
    return zlib.crc32(data.encode("utf-8") if isinstance(data, str) else data) & 0xFFFFFFFF


def latency_stats(samples: Iterable[int]) -> tuple[int, int, int]:
    """(min, median, max); median = the lower middle of the sorted samples, sorted[(n - 1) // 2]
    (== gm::latency_stats and statistics.median_low). No samples gives (0, 0, 0)."""
    s = sorted(int(x) for x in samples)
    if not s:
        return (0, 0, 0)
    return (s[0], s[(len(s) - 1) // 2], s[-1])


def sanitize(value: str) -> str:
    """The value as both emitters print it: every byte of its UTF-8 form outside printable ASCII,
    and '*', '=', '@', becomes '_'; an empty value becomes '_'."""
    out = "".join(chr(b) if 0x21 <= b <= 0x7E and b not in b"*=@" else "_" for b in value.encode("utf-8"))
    return out or "_"


def _format_value(tag: str, key: str, value: Any) -> str:
    if isinstance(value, str):
        return sanitize(value)
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{tag} {key}: booleans are not protocol values; use a word")
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [str(_index(tag, key, v)) for v in np.asarray(value).reshape(-1).tolist()]
        sep = "x" if SCHEMA.get(tag, {}).get(key) is _shape else ","
        return sep.join(items) or "_"
    return str(_index(tag, key, value))


def _index(tag: str, key: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{tag} {key}: {value!r} is not an integer")
    return int(value)


def format_line(tag: str, fields: dict[str, Any], version: int = PROTOCOL_VERSION) -> str:
    """One protocol line, without its newline, byte-identical to the C++ Emitter's.

    Values: str (sanitized), int, or a sequence of ints (shape: 'x'-joined; others ','-joined;
    empty: '_'). `version` exists so tests and the virtual board can produce foreign lines."""
    if not _TAG_RE.fullmatch(tag):
        raise ValueError(f"tag {tag!r} is not an upper-case word")
    parts = [f"{MAGIC}{version}", tag]
    for key, value in fields.items():
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"{tag}: key {key!r} is not [a-z0-9_]+")
        parts.append(f"{key}={_format_value(tag, key, value)}")
    body = " ".join(parts)
    line = f"{body} *{crc32(body):08x}"
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"{tag} line is {len(line)} bytes, over the {MAX_LINE_BYTES}-byte limit")
    return line


class Emitter:
    """The Python twin of gm::Emitter: formats lines, counts them for END, hands each line
    (newline included) to `write`. Every method returns the text it emitted."""

    def __init__(self, write: Callable[[str], Any] | None = None, version: int = PROTOCOL_VERSION):
        self.lines = 0
        self._write = write
        self._version = version

    def _emit(self, line: str) -> str:
        text = line + "\n"
        if self._write is not None:
            self._write(text)
        return text

    def line(self, tag: str, **fields: Any) -> str:
        try:
            line = format_line(tag, fields, self._version)
        except ValueError:
            if not _TAG_RE.fullmatch(tag) or not all(_KEY_RE.fullmatch(k) for k in fields):
                raise
            line = format_line("ERROR", {"code": "line_too_long", "msg": tag[:15]}, self._version)
        self.lines += 1
        return self._emit(line)

    def tensor(self, vec: int, name: str, dtype: str, shape: Iterable[int], exponent: int,
               data: Any) -> str:
        flat = np.asarray(data).reshape(-1).tolist()
        shape = tuple(int(d) for d in shape)
        out, off = [], 0
        while True:  # a tensor without elements still gets one line
            chunk = flat[off:off + MAX_TENSOR_ELEMENTS_PER_LINE]
            out.append(self.line("TENSOR", vec=vec, name=name, dtype=dtype, shape=shape, exp=exponent,
                                 off=off, count=len(chunk), total=len(flat), data=chunk))
            off += len(chunk)
            if off >= len(flat):
                return "".join(out)

    def latency(self, vec: int, samples_us: Iterable[int]) -> str:
        samples = list(samples_us)
        lo, med, hi = latency_stats(samples)
        return self.line("LAT", vec=vec, runs=len(samples), min_us=lo, med_us=med, max_us=hi)

    def error(self, code: str, msg: str) -> str:
        return self.line("ERROR", code=code, msg=msg)

    def end_line(self, vectors: int, tensors: int, ok: bool) -> str:
        fields = {"vectors": vectors, "tensors": tensors, "lines": self.lines,
                  "status": "ok" if ok else "error"}
        return self._emit(format_line("END", fields, self._version))


# ---------------------------------------------------------------------------------------------
# Parsing one line


def _as_text(line: str | bytes) -> str:
    return line.decode("utf-8", errors="replace") if isinstance(line, (bytes, bytearray)) else line


def parse_line(line: str | bytes) -> Record | None:
    """The record on `line`, or None for an ordinary log line (no '@gm' followed by a digit).

    Raises CorruptLine (bad checksum, bad framing, malformed fields) or VersionMismatch."""
    text = _as_text(line).rstrip(" \t\r\n")
    m = _MAGIC_RE.search(text)
    if m is None:
        return None
    payload = text[m.start():]
    frame = _FRAME_RE.fullmatch(payload)
    version = int(m.group(1)) if len(m.group(1)) < 10 else -1
    if version != PROTOCOL_VERSION:
        # A line framed like v1 but whose checksum fails is a damaged v1 line, not a foreign one.
        if frame is None or crc32(frame.group(1)) == int(frame.group(2), 16):
            raise VersionMismatch(version, f"protocol version {m.group(1)[:9]} "
                                           f"(this harness speaks version {PROTOCOL_VERSION})")
    if len(payload) > MAX_LINE_BYTES:
        raise CorruptLine(f"line is {len(payload)} bytes, over the {MAX_LINE_BYTES}-byte limit")
    if frame is None:
        raise CorruptLine("no ' *<8 hex digits>' checksum at the end (truncated or garbled)")
    body, crc = frame.group(1), int(frame.group(2), 16)
    if crc32(body) != crc:
        raise CorruptLine(f"checksum mismatch: line says {crc:08x}, content gives {crc32(body):08x}")
    tokens = body.split(" ")
    tag = tokens[1]
    if not _TAG_RE.fullmatch(tag):
        raise CorruptLine(f"tag {tag!r} is not an upper-case word")
    raw: dict[str, str] = {}
    for token in tokens[2:]:
        key, sep, value = token.partition("=")
        if not sep or not _KEY_RE.fullmatch(key) or not _VALUE_RE.fullmatch(value):
            raise CorruptLine(f"{tag}: field {token!r} is not key=value")
        if key in raw:
            raise CorruptLine(f"{tag}: field {key} appears twice")
        raw[key] = value
    schema = SCHEMA.get(tag)
    if schema is None:
        return Record(tag, dict(raw), payload, known=False)
    fields: dict[str, Any] = dict(raw)
    for key, conv in (schema | OPTIONAL.get(tag, {})).items():
        if key not in raw:
            if key in schema:
                raise CorruptLine(f"{tag}: field {key} is missing")
            continue
        try:
            fields[key] = conv(raw[key])
        except ValueError as exc:
            raise CorruptLine(f"{tag} {key}: {exc}") from None
    if tag == "TENSOR":
        _check_tensor_line(fields)
    return Record(tag, fields, payload)


def _check_tensor_line(f: dict[str, Any]) -> None:
    problem = None
    info = np.iinfo(DTYPES[f["dtype"]])
    if f["count"] != len(f["data"]):
        problem = f"count={f['count']} but {len(f['data'])} values"
    elif f["count"] > MAX_TENSOR_ELEMENTS_PER_LINE:
        problem = f"count={f['count']} is over {MAX_TENSOR_ELEMENTS_PER_LINE} elements per line"
    elif f["off"] + f["count"] > f["total"]:
        problem = f"off={f['off']} + count={f['count']} is beyond total={f['total']}"
    elif f["total"] > MAX_TENSOR_ELEMENTS:
        problem = f"total={f['total']} is over the {MAX_TENSOR_ELEMENTS}-element limit"
    elif math.prod(f["shape"]) != f["total"]:
        problem = f"shape {'x'.join(map(str, f['shape'])) or '()'} does not hold total={f['total']} elements"
    elif any(not info.min <= v <= info.max for v in f["data"]):
        problem = f"a value is outside the {f['dtype']} range"
    if problem:
        raise CorruptLine(f"TENSOR vec={f['vec']} name={f['name']}: {problem}")


# ---------------------------------------------------------------------------------------------
# A whole run


@dataclass(frozen=True)
class Memory:
    internal_free: int
    psram_free: int


@dataclass(frozen=True)
class Latency:
    runs: int
    min_us: int
    med_us: int
    max_us: int


@dataclass(frozen=True)
class Input:
    name: str
    exponent: int
    dtype: str


@dataclass(frozen=True)
class BadLine:
    line_no: int  # 1-based, counting every line fed to the TranscriptParser
    text: str
    reason: str


@dataclass
class Reset:
    """The board reset or panicked after BOOT: a marker in the log and/or a second BOOT."""

    line_no: int
    where: str  # "during vector 3", "before the model was loaded", ...
    vec: int | None  # the vector being processed, if any
    evidence: str  # the first marker line, or the second BOOT line
    marker: str | None = None  # the marker found in `evidence`; None: only a second BOOT
    rebooted: bool = False


@dataclass
class BoardRun:
    """Everything a TranscriptParser collected. Data fields describe the latest boot."""

    boot: dict[str, Any] | None = None
    boots: int = 0
    ready: bool = False
    model: dict[str, Any] | None = None
    memory: dict[str, Memory] = field(default_factory=dict)
    inputs: dict[int, Input] = field(default_factory=dict)
    tensors: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    latency: dict[int, Latency] = field(default_factory=dict)
    selftest: str | None = None
    end: dict[str, Any] | None = None
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (line_no, code, msg) of ERROR
    lines_received: int = 0  # protocol lines since the latest BOOT (BOOT included, END excluded)
    # bookkeeping
    corrupt: list[BadLine] = field(default_factory=list)
    foreign: list[BadLine] = field(default_factory=list)  # other protocol versions
    unknown: list[BadLine] = field(default_factory=list)  # tags protocol v1 does not define
    inconsistencies: list[str] = field(default_factory=list)
    markers: list[BadLine] = field(default_factory=list)  # every reset/panic marker, even pre-BOOT
    resets: list[Reset] = field(default_factory=list)
    pre_boot: list[BadLine] = field(default_factory=list)  # protocol lines before any BOOT
    log_lines: int = 0
    log_errors: list[str] = field(default_factory=list)  # ESP-IDF error log lines ("E (ms) tag: ...") after BOOT
    after_end: int = 0  # lines after END (ignored: the run is closed at END)
    last_tag: str | None = None  # of the latest protocol line before END

    # --- derived values -------------------------------------------------------------------
    @property
    def virtual(self) -> bool:
        return bool(self.boot) and self.boot.get("board") == "virtual"

    @property
    def model_sha256(self) -> str | None:
        return self.model["sha256"] if self.model else None

    def _used(self, attr: str) -> int | None:
        before, low = self.memory.get("before_load"), self.memory.get("low_water")
        return None if before is None or low is None else getattr(before, attr) - getattr(low, attr)

    @property
    def internal_used(self) -> int | None:
        """Internal RAM used by the model: free before load - lowest free ever (bytes)."""
        return self._used("internal_free")

    @property
    def psram_used(self) -> int | None:
        """PSRAM used by the model: free before load - lowest free ever (bytes)."""
        return self._used("psram_free")

    @property
    def latency_median_us(self) -> int | None:
        """Lower median over the vectors of each vector's median latency (us per inference)."""
        meds = [lat.med_us for lat in self.latency.values()]
        return latency_stats(meds)[1] if meds else None

    @property
    def complete(self) -> bool:
        """END seen after a BOOT, and its line count equals the protocol lines received."""
        return self.boot is not None and self.end is not None and self.end["lines"] == self.lines_received

    # --- trust ----------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """One line per reason why this run cannot be trusted; empty when it can."""
        out: list[str] = []
        if self.foreign:
            f = self.foreign[0]
            out.append(f"the board speaks another protocol: {f.reason} on {len(self.foreign)} line(s), "
                       f"first line {f.line_no}: {_clip(f.text)}; flash a test app built from this "
                       f"repository (or update quant/board/protocol.py)")
        for r in self.resets:
            if r.marker is None:
                out.append(f"board rebooted {r.where}: a second BOOT at line {r.line_no}")
            else:
                then = ", then rebooted" if r.rebooted else ""
                out.append(f"board reset {r.where}{then} (line {r.line_no}: {_clip(r.evidence)})")
        if self.pre_boot:
            b = self.pre_boot[0]
            out.append(f"{len(self.pre_boot)} protocol line(s) before any BOOT, ignored (first: line "
                       f"{b.line_no}: {_clip(b.text)})")
        for b in self.corrupt[:5]:
            out.append(f"corrupt line {b.line_no} ({b.reason}), not used as data: {_clip(b.text)}")
        if len(self.corrupt) > 5:
            out.append(f"... and {len(self.corrupt) - 5} more corrupt lines")
        for b in self.unknown[:5]:
            out.append(f"line {b.line_no}: unknown tag {b.reason}, not used (firmware newer than "
                       f"quant/board/protocol.py?): {_clip(b.text)}")
        for line_no, code, msg in self.errors:
            out.append(f"the board reported ERROR code={code} msg={msg} (line {line_no})")
        out.extend(self.inconsistencies)
        if self.boot is None:
            hint = f"; last reset/panic marker: line {self.markers[-1].line_no}: " \
                   f"{_clip(self.markers[-1].text)}" if self.markers else ""
            out.append(f"no BOOT line: the test app never started or its output was lost{hint}")
        elif self.end is None:
            out.append(f"no END line: the run did not finish ({self.lines_received} protocol lines "
                       f"after BOOT, last: {self.last_tag or 'BOOT'})")
        else:
            end = self.end
            if end["lines"] != self.lines_received:
                diff = end["lines"] - self.lines_received
                what = f"{diff} lost" if diff > 0 else f"{-diff} unexpected extra"
                out.append(f"line count mismatch: END counts {end['lines']} protocol lines, "
                           f"{self.lines_received} arrived ({what})")
            if end["status"] != "ok" and not self.errors:
                out.append("END status=error: the test app reported a failure")
            if end["vectors"] != len(self.latency):
                out.append(f"END reports {end['vectors']} vectors but LAT arrived for {len(self.latency)}")
            n_tensors = sum(len(t) for t in self.tensors.values())
            if end["tensors"] != n_tensors:
                out.append(f"END reports {end['tensors']} tensors but {n_tensors} arrived complete")
            if end["vectors"] != self.boot["vectors"]:
                out.append(f"BOOT announced {self.boot['vectors']} vectors, END reports {end['vectors']}")
        return out


def _clip(text: str, limit: int = 120) -> str:
    """A line for a one-line message: stripped, control characters escaped, clipped."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text.strip())
    return text if len(text) <= limit else text[:limit] + "..."


# On a second BOOT the data start afresh; these (the evidence) are kept.
_KEPT_ACROSS_BOOTS = ("boots", "errors", "corrupt", "foreign", "unknown", "inconsistencies", "markers",
                      "resets", "pre_boot", "log_lines")


class _TensorBuilder:
    def __init__(self, f: dict[str, Any], line_no: int):
        self.name, self.dtype, self.shape, self.exp, self.total = (
            f["name"], f["dtype"], f["shape"], f["exp"], f["total"])
        self.data = np.zeros(self.total, dtype=DTYPES[self.dtype])
        self.seen = np.zeros(self.total, dtype=bool)
        self.first_line = line_no

    def add(self, f: dict[str, Any], line_no: int) -> str | None:
        header = (f["dtype"], f["shape"], f["exp"], f["total"])
        if header != (self.dtype, self.shape, self.exp, self.total):
            return (f"line {line_no}: TENSOR vec={f['vec']} name={self.name} says dtype={f['dtype']} "
                    f"shape={'x'.join(map(str, f['shape']))} exp={f['exp']} total={f['total']}, line "
                    f"{self.first_line} said dtype={self.dtype} shape={'x'.join(map(str, self.shape))} "
                    f"exp={self.exp} total={self.total}")
        sl = slice(f["off"], f["off"] + f["count"])
        if self.seen[sl].any():
            return (f"line {line_no}: TENSOR vec={f['vec']} name={self.name} elements "
                    f"{f['off']}..{f['off'] + f['count'] - 1} were already received")
        self.seen[sl] = True
        self.data[sl] = f["data"]
        return None

    def missing(self) -> str | None:
        gaps = np.flatnonzero(~self.seen)
        if gaps.size == 0:
            return None
        return f"{gaps.size} of {self.total} elements missing (first missing: element {gaps[0]})"

    def tensor(self) -> Tensor:
        return Tensor(self.data.reshape(self.shape), self.exp, self.dtype, self.name)


class TranscriptParser:
    """Streaming parser: feed it the DUT's output (str or bytes, one or more lines, CR/LF, any
    log lines interleaved), then `finish()` gives the BoardRun. Feeding never raises."""

    def __init__(self) -> None:
        self.run = BoardRun()
        self.line_no = 0
        self._builders: dict[tuple[int, str], _TensorBuilder] = {}
        self._active_vec: int | None = None  # INPUT seen, LAT not yet
        self._last_vec: int | None = None
        self._open_reset: Reset | None = None  # markers since the last protocol line
        self._finished = False

    def feed(self, data: str | bytes) -> None:
        text = _as_text(data)
        parts = text.split("\n")
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # the newline that ends the last line
        for part in parts:
            self._line(part)

    def finish(self) -> BoardRun:
        """Completes tensors still being assembled (gaps become inconsistencies); idempotent."""
        if not self._finished:
            self._finalize_tensors()
            self._finished = True
        return self.run

    # --- internals --------------------------------------------------------------------------
    def _line(self, raw: str) -> None:
        self.line_no += 1
        n, run = self.line_no, self.run
        if run.end is not None:  # the run is closed at END
            run.after_end += 1
            return
        try:
            rec = parse_line(raw)
        except VersionMismatch as exc:
            self._count_protocol_line()
            run.foreign.append(BadLine(n, raw, str(exc)))
            return
        except ProtocolError as exc:
            self._count_protocol_line()
            run.corrupt.append(BadLine(n, raw, str(exc)))
            return
        if rec is None:
            self._log_line(raw)
            return
        if not rec.known:
            self._count_protocol_line()
            run.unknown.append(BadLine(n, raw, rec.tag))
            return
        if rec.tag == "BOOT":
            self._boot(rec)  # consumes an open reset: one event, reported once
            return
        self._open_reset = None
        if run.boot is None:
            run.pre_boot.append(BadLine(n, raw, rec.tag))
            return
        if rec.tag == "END":
            run.end = dict(rec.fields)
            self._finalize_tensors()
            return
        run.lines_received += 1
        run.last_tag = rec.tag
        getattr(self, "_tag_" + rec.tag.lower())(rec.fields, n)

    def _count_protocol_line(self) -> None:
        if self.run.boot is not None:
            self.run.lines_received += 1

    def _where(self) -> tuple[str, int | None]:
        run = self.run
        if self._active_vec is not None:
            return f"during vector {self._active_vec}", self._active_vec
        if "after_runs" in run.memory:
            return "after the runs (during the intermediate dump or model->test())", None
        if self._last_vec is not None:
            return f"after vector {self._last_vec} had finished", None
        if run.model is None or "before_load" not in run.memory:
            return "before the model was loaded", None
        if "after_load" not in run.memory:
            return "while ESP-DL loaded the model", None
        return "after loading the model, before the first vector", None

    def _log_line(self, raw: str) -> None:
        run = self.run
        run.log_lines += 1
        text = _ANSI_RE.sub("", raw).strip()
        if run.boot is not None and _ESP_LOG_ERROR_RE.match(text):
            run.log_errors = [*run.log_errors[-4:], text]  # e.g. ESP-DL's reason before the app's ERROR
        marker = next((m for m in PANIC_MARKERS + RESET_MARKERS if m in raw), None)
        if marker is None:
            return
        run.markers.append(BadLine(self.line_no, raw, marker))
        if run.boot is None or self._open_reset is not None:
            return  # the ROM banner before BOOT is normal; later markers belong to the same event
        where, vec = self._where()
        self._open_reset = Reset(self.line_no, where, vec, raw, marker)
        run.resets.append(self._open_reset)

    def _boot(self, rec: Record) -> None:
        run = self.run
        if run.boot is not None:  # a second BOOT: the board rebooted
            if self._open_reset is not None:
                self._open_reset.rebooted = True
            else:
                where, vec = self._where()
                run.resets.append(Reset(self.line_no, where, vec, rec.text, rebooted=True))
            self._finalize_tensors()
            self.run = BoardRun(**{k: getattr(run, k) for k in _KEPT_ACROSS_BOOTS})
            self._builders.clear()
            self._active_vec = self._last_vec = None
            run = self.run
        run.boot = dict(rec.fields)
        run.boots += 1
        run.lines_received = 1
        run.last_tag = "BOOT"
        self._open_reset = None

    def _tag_ready(self, f: dict[str, Any], n: int) -> None:
        self.run.ready = True

    def _tag_model(self, f: dict[str, Any], n: int) -> None:
        self._once(self.run.model is not None, n, "MODEL")
        self.run.model = dict(f)

    def _tag_mem(self, f: dict[str, Any], n: int) -> None:
        self._once(f["stage"] in self.run.memory, n, f"MEM stage={f['stage']}")
        self.run.memory[f["stage"]] = Memory(f["internal_free"], f["psram_free"])

    def _tag_input(self, f: dict[str, Any], n: int) -> None:
        self._once(f["vec"] in self.run.inputs, n, f"INPUT vec={f['vec']}")
        self._in_range(f["vec"], n, "INPUT")
        self.run.inputs[f["vec"]] = Input(f["name"], f["exp"], f["dtype"])
        self._active_vec = f["vec"]

    def _tag_tensor(self, f: dict[str, Any], n: int) -> None:
        key = (f["vec"], f["name"])
        if key in self.run.tensors.get(f["vec"], {}):
            self.run.inconsistencies.append(f"line {n}: TENSOR vec={f['vec']} name={f['name']} after the "
                                            f"tensor was complete")
            return
        builder = self._builders.get(key)
        if builder is None:
            builder = self._builders[key] = _TensorBuilder(f, n)
        problem = builder.add(f, n)
        if problem:
            self.run.inconsistencies.append(problem)
        elif builder.seen.all():
            self.run.tensors.setdefault(f["vec"], {})[f["name"]] = builder.tensor()
            del self._builders[key]

    def _tag_lat(self, f: dict[str, Any], n: int) -> None:
        self._once(f["vec"] in self.run.latency, n, f"LAT vec={f['vec']}")
        self._in_range(f["vec"], n, "LAT")
        if f["runs"] != self.run.boot["runs"]:
            self.run.inconsistencies.append(f"line {n}: LAT vec={f['vec']} runs={f['runs']} but BOOT "
                                            f"announced runs={self.run.boot['runs']}")
        if not f["min_us"] <= f["med_us"] <= f["max_us"]:
            self.run.inconsistencies.append(f"line {n}: LAT vec={f['vec']} has min/med/max out of order")
        self.run.latency[f["vec"]] = Latency(f["runs"], f["min_us"], f["med_us"], f["max_us"])
        if self._active_vec == f["vec"]:
            self._active_vec = None
        self._last_vec = f["vec"]

    def _tag_selftest(self, f: dict[str, Any], n: int) -> None:
        self._once(self.run.selftest is not None, n, "SELFTEST")
        self.run.selftest = f["result"]

    def _tag_error(self, f: dict[str, Any], n: int) -> None:
        self.run.errors.append((n, f["code"], f["msg"]))

    def _in_range(self, vec: int, n: int, tag: str) -> None:
        if vec >= self.run.boot["vectors"]:
            self.run.inconsistencies.append(f"line {n}: {tag} vec={vec} but BOOT announced "
                                            f"{self.run.boot['vectors']} vectors")

    def _once(self, seen: bool, n: int, what: str) -> None:
        if seen:
            self.run.inconsistencies.append(f"line {n}: {what} appears twice")

    def _finalize_tensors(self) -> None:
        for (vec, name), builder in sorted(self._builders.items()):
            self.run.inconsistencies.append(f"TENSOR vec={vec} name={name} (from line "
                                            f"{builder.first_line}) is incomplete: {builder.missing()}")
        self._builders.clear()


def parse_transcript(text: str | bytes) -> BoardRun:
    """The BoardRun of a whole DUT log."""
    session = TranscriptParser()
    session.feed(text)
    return session.finish()
