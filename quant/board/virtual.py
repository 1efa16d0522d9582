"""A virtual ESP32-S3 test app on a pseudo-terminal: the target tests' path without hardware.

`quant virtual-board --variant int8 [--fault NAME] [--models-dir DIR]` opens a pty, prints its path (and writes it to
`--pty-file`), and then behaves like `firmware/` on a real board: silent until the host sends
`reset` (the esp service's hard reset; pyserial flushes input when it opens the port, so anything
printed earlier would be lost), then an ESP-IDF-like boot log, `BOOT` and `READY`; `run` / `run dump`
print the result protocol (docs/protocol.md) through quant.board.protocol.Emitter, the Python twin of
the firmware's gm::Emitter (same chunking, same END line count).

What is virtual (and labelled so): `BOOT board=virtual source=interpreter`; the outputs are always
computed by the host .espdl interpreter (quant.espdl.interpreter, the chip's integer arithmetic) on the
folder's own fixed vectors (DIR/test_vectors.bin + .json); a folder without valid vectors is an error,
never a replay of the stored reference. Latency and memory are the .info *estimates* with a small
deterministic jitter, never measurements. `FAULTS` injects every fault a bench shows.

Library: `with start("int8", fault="panic", models_dir=DIR) as proc: ... proc.port ...`;
quant.board.boards.VirtualBoard is the board the target tests use.
The .espdl is read and interpreted lazily (when a run first needs an output), so the board answers its
first reset in a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quant.board.protocol import Emitter
from quant.errors import UserError
from quant.espdl import interpreter, reader
from quant.folder import MODELS, REPO, VARIANTS, load_budgets, load_expectations, load_vectors, variant_file
from quant.tensor import Tensor, Tolerance, diff

FAULTS: dict[str, str] = {
    "none": "a correct board",
    "off_by_one": "one output element of one vector is one LSB off (int8: +1)",
    "wrong_exponent": "one vector's output exponent is off by one",
    "reset": "the board resets in the middle of a run (ROM banner rst:0xc), then boots again",
    "panic": "Guru Meditation Error (LoadProhibited) mid-run, backtrace, reboot banner, boots again",
    "truncated": "one TENSOR line is cut in the middle (bytes lost on the UART)",
    "bad_checksum": "one payload line has a flipped digit and a checksum that no longer matches",
    "silent": "the board stops printing in the middle of a run and never ends",
    "slow_latency": "median latency 30 % above the budget",
    "memory_over": "the low-water mark shows 25 % more internal RAM used than the budget",
    "stale_model": "the board reports the SHA-256 of another model (stale flash)",
    "chatter": "unrelated log lines interleaved, some mentioning TENSOR without the magic, "
    "log prefixes before valid lines (must still pass)",
    "version": "every protocol line carries another protocol version (@gm2)",
    "selftest_fail": "ESP-DL model->test() fails on the embedded test value",
    "layer_fault": "one intermediate layer computes wrong values; every tensor downstream and "
    "every output differ (for the bisect path: `run dump` shows the first diverging layer)",
}

FAULT_VECTOR = 3  # the vector a fault strikes (clamped to the vector count)
FAULT_ELEMENT = 2  # the output element off_by_one changes (clamped to the output size)
LIFETIME_S = 3600.0  # a forgotten board exits after this long
CPU_MHZ = 240
PSRAM_BYTES = 8 * 1024 * 1024
INTERNAL_FREE_BEFORE_LOAD = 381_612  # a plausible ESP32-S3 free internal heap at app_main (virtual)
PSRAM_FREE_BEFORE_LOAD = 8_321_028  # a plausible free PSRAM at app_main (virtual)
VECTORS_FIX = ("make them with `quant vectors --data IMAGES --models-dir {dir}` (then rebuild the folder with "
               "`quant build --models-dir {dir}`)")


# ---------------------------------------------------------------------------------------------
# What the board knows: the variant's files
# ---------------------------------------------------------------------------------------------


@dataclass
class VariantData:
    variant: str
    espdl_bytes: bytes
    input_name: str
    input_exponent: int
    input_dtype: str
    vector_names: list[str]
    output_names: list[str]  # the graph outputs, in the reference's order
    output_size: int  # elements of the first output (off_by_one's element is clamped to it)
    latency_basis_us: int
    latency_budget_us: int
    internal_basis: int
    internal_budget: int
    psram_basis: int
    psram_budget: int
    tolerance: Tolerance
    embedded: dict[str, Tensor] = field(default_factory=dict)  # the .espdl's test outputs (vector 0)
    interpreter: Interpreted | None = None  # computes outputs and intermediates from the .espdl
    source: str = "interpreter"  # where outputs come from (BOOT source=, SELFTEST basis=): always computed

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.espdl_bytes).hexdigest()

    def outputs(self, vec: int) -> list[Tensor]:
        return self.interpreter.outputs(vec)

    def intermediates(self) -> list[Tensor]:
        """Vector 0: the input as quantized, then every node output in execution order (no graph outputs)."""
        return self.interpreter.intermediates()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} is missing ({what}); run `quant build` first") from None


def _basis_and_value(budget) -> tuple[int, int]:
    """(basis, value) of a quant.board.budgets.Budget: the estimate the board pretends to measure, and the limit."""
    return round(float(budget.value if budget.basis is None else budget.basis)), budget.value


def load_variant(variant: str, models_dir: Path = MODELS, fault: str = "none") -> VariantData:
    """Read what the board needs from DIR/gesture_model_<variant>/ and DIR's fixed vectors (UserError,
    naming the folder and the fix, when they are missing or do not belong together). The outputs are
    computed from the .espdl by quant.espdl.interpreter (what a chip computes), vector by vector when the
    run reaches it. `fault` matters only for layer_fault, which the interpreter injects into one layer
    (its node hook) so that everything downstream is computed from it."""
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    models_dir = Path(models_dir)
    espdl_path = variant_file(variant, ".espdl", models_dir)
    json_path = variant_file(variant, ".json", models_dir)
    ref_path = variant_file(variant, ".reference.json", models_dir)
    espdl = _read(espdl_path, "the deployable model")
    reference, config = load_expectations(variant, models_dir)
    limits = load_budgets(variant, models_dir)
    try:
        names = [o["name"] for o in reference["outputs"]]
        ref_outputs = [
            [
                Tensor.of(t["dtype"], t["shape"], t["exponent"], t["data"], n)
                for n, t in o["tensors"].items()
            ]
            for o in reference["outputs"]
        ]
        inp = config["input"]
        if not ref_outputs or not all(ref_outputs):
            raise ValueError("no vectors")
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{ref_path} or {json_path} does not follow docs/quantization.md, 'Producing the variants'; rebuild with `quant build`") from None
    lat = _basis_and_value(limits["latency_us"])
    ram = _basis_and_value(limits["internal_ram_bytes"])
    psram = _basis_and_value(limits["psram_bytes"])
    data = VariantData(
        variant=variant,
        espdl_bytes=espdl,
        input_name=str(inp.get("name", "input")),
        input_exponent=int(inp["exponent"]),
        input_dtype=str(inp.get("dtype", "int8")),
        vector_names=names,
        output_names=[t.name for t in ref_outputs[0]],
        output_size=ref_outputs[0][0].size,
        latency_basis_us=lat[0],
        latency_budget_us=lat[1],
        internal_basis=ram[0],
        internal_budget=ram[1],
        psram_basis=psram[0],
        psram_budget=psram[1],
        tolerance=Tolerance.of(config.get("tolerance")),
    )
    data.interpreter = Interpreted.open(data, espdl_path, models_dir, fault)  # first: the folder's own vectors
    data.embedded = _embedded_test_outputs(espdl, espdl_path)
    return data


def check_folder(variant: str, models_dir: Path = MODELS) -> None:
    """UserError (one line: the folder and the fix) unless the virtual board can compute `variant` from
    `models_dir`: its .espdl, reference, .info budgets and the folder's own valid fixed vectors."""
    load_variant(variant, models_dir)


def _embedded_test_outputs(espdl: bytes, path: Path) -> dict[str, Tensor]:
    """The test outputs esp-ppq embedded in the .espdl (what ESP-DL's model->test() compares with)."""

    model = reader.loads(espdl, name=str(path), path=path)
    return {
        name: t.tensor() for name, t in model.test_outputs.items()
    }


class Interpreted:
    """Outputs computed from the .espdl by the host interpreter (quant.espdl.interpreter, ESP32-S3 integer
    semantics), vector by vector when the run reaches it (a few tens of ms each), as a chip computes
    them. With layer_fault, one node's output is perturbed inside the interpreter and every later node
    computes from it, as on a chip with one broken kernel."""

    def __init__(self, espdl_bytes: bytes, espdl_path: Path, vectors, out_names: list[str], input_name: str,
                 fault: str):
        self.espdl_bytes, self.espdl_path, self.vectors = espdl_bytes, espdl_path, vectors
        self.out_names, self.input_name, self.fault = out_names, input_name, fault
        self._interpreter = None
        self.fault_node: str | None = None  # the node layer_fault breaks
        self.fault_value: str | None = None  # its output value (the name the dump prints)
        self._outputs: dict[int, list[Tensor]] = {}
        self._intermediates: list[Tensor] | None = None

    @classmethod
    def open(cls, data: VariantData, espdl_path: Path, models_dir: Path, fault: str) -> Interpreted:
        """UserError when `models_dir` has no valid fixed vectors, or not the ones its reference was computed on."""

        fix = VECTORS_FIX.format(dir=models_dir)
        try:
            x, meta = load_vectors(models_dir)
        except UserError as exc:
            raise UserError(f"the virtual board computes its outputs from {models_dir}'s own fixed vectors and "
                            f"they are not usable ({exc}); {fix}") from None
        names = [str(m.get("name", "")) if isinstance(m, dict) else "" for m in meta]
        if names != data.vector_names:
            raise UserError(f"the fixed vectors in {models_dir} ({len(names)}: {', '.join(names[:3])}...) are not the "
                            f"ones {espdl_path.parent.name}'s reference was computed on ({len(data.vector_names)}: "
                            f"{', '.join(data.vector_names[:3])}...); rebuild the variant on these vectors with "
                            f"`quant build --variant {data.variant} --models-dir {models_dir}`")
        vectors = x[:, None]  # each one 1x1x96x96
        return cls(data.espdl_bytes, espdl_path, vectors, data.output_names, data.input_name, fault)

    def _load(self):
        from quant.espdl import reader as espdl

        model = espdl.loads(self.espdl_bytes, name=str(self.espdl_path), path=self.espdl_path)
        hook = None
        if self.fault == "layer_fault":
            graph_outputs = {o.name for o in model.outputs}
            inner = [n for n in model.nodes if n.outputs and n.outputs[0] not in graph_outputs]
            node = inner[len(inner) // 2]
            self.fault_node, self.fault_value = node.name, node.outputs[0]

            def hook(n, outs, name=node.name):  # a broken kernel: this node's outputs, every later node reads them
                if n.name != name:
                    return outs
                return [q.replace(data=_perturb_array(q.data, q.dtype)) for q in outs]

        return interpreter.Interpreter(model, node_hook=hook)  # exact_average=False: the chip's arithmetic

    def _compute(self, vec: int) -> None:
        if self._interpreter is None:
            self._interpreter = self._load()
        result = self._interpreter.run_full(self.vectors[vec]).tensors  # input first, then node order
        self._outputs[vec] = [_tensor(n, result[n]) for n in self.out_names]
        if vec == 0:
            self._intermediates = [_tensor(n, q) for n, q in result.items()
                                   if n not in self.out_names and q.dtype in ("int8", "int16", "int32")]

    def outputs(self, vec: int) -> list[Tensor]:
        if vec not in self._outputs:
            self._compute(vec)
        return self._outputs[vec]

    def intermediates(self) -> list[Tensor]:
        if self._intermediates is None:
            self._compute(0)
        return self._intermediates or []

    @property
    def layer_fault_value(self) -> str | None:
        if self._interpreter is None:
            self._interpreter = self._load()
        return self.fault_value


def _tensor(name: str, q: Tensor) -> Tensor:
    """An interpreter value as the board prints it (shape as held, NHWC), under its graph name."""
    return q.replace(name=name)


# ---------------------------------------------------------------------------------------------
# The app: what it prints for `reset`, `run`, `run dump` (pure: returns text, no I/O)
# ---------------------------------------------------------------------------------------------


@dataclass
class Stop:
    """Marks the point where a silent board stops printing for good (until the next reset)."""


class App:
    """The test app's behaviour, with a fault. Methods return the text the board prints."""

    def __init__(self, data: VariantData, fault: str = "none", runs: int = 10):
        if fault not in FAULTS:
            raise UserError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
        if runs < 1:
            raise UserError(f"--runs must be at least 1, not {runs}")
        self.data, self.fault, self.runs = data, fault, runs

        self._new_emitter = lambda: Emitter(version=2 if fault == "version" else 1)
        self.emitter = self._new_emitter()  # counts the lines since BOOT (END carries the count)
        self.chatter_lines = 0
        self.fault_vector = min(FAULT_VECTOR, len(data.vector_names) - 1)
        self.fault_element = min(FAULT_ELEMENT, data.output_size - 1)
        self.millis = 0  # the fake esp_log timestamp
        self.boots = 0
        self.waiting = False  # True between READY and the command, as app_main's wait_for_command()

    # -- formatting ----------------------------------------------------------------------------
    def _line(self, tag: str, **fields) -> str:
        return self._chatty(self.emitter.line(tag, **fields))

    def _chatty(self, text: str) -> str:
        """With the chatter fault: other tasks' logs before every protocol line of `text`."""
        if self.fault != "chatter":
            return text
        out = []
        for line in text.splitlines(keepends=True):
            self.chatter_lines += 1
            words = line.split()  # "@gm1 TAG key=value ... *crc"
            out.append(self._chatter(words[1] if len(words) > 1 else "") + line)
        return "".join(out)

    def _log(self, level: str, tag: str, msg: str, step: int = 3) -> str:
        self.millis += step
        return f"{level} ({self.millis}) {tag}: {msg}\n"

    def _chatter(self, tag: str) -> str:
        """Other tasks' logs around (and in front of) valid lines: none carries the magic."""
        k = self.chatter_lines
        noise = [
            self._log("I", "wifi", f"station: idle, rssi=-{40 + k % 30}"),
            f"TENSOR vec={k % 10} name=logits dtype=int8 data=1,2,3 (debug echo, not a result)\n",
            self._log("W", "gesture", f"heap check {k}: gm1 {tag} seen"),
        ]
        prefix = self._log("I", "gesture", "result: ", step=1).rstrip("\n")
        return "".join(noise[: 1 + k % 3]) + (prefix if k % 4 == 0 else "")

    # -- boot ------------------------------------------------------------------------------------
    def _rom_banner(self, reason: str) -> str:
        self.millis = 0
        saved_pc = "Saved PC:0x40376b2d\n" if "POWERON" not in reason else ""
        return (
            "ESP-ROM:esp32s3-20210327\n"
            "Build:Mar 27 2021\n"
            f"rst:{reason},boot:0x8 (SPI_FAST_FLASH_BOOT)\n"
            f"{saved_pc}"
            "SPIWP:0xee\n"
            "mode:DIO, clock div:1\n"
            "load:0x3fce3818,len:0x178c\n"
            "load:0x403c9700,len:0x4\n"
            "load:0x403c9704,len:0xcbc\n"
            "load:0x403cc700,len:0x2db0\n"
            "entry 0x403c9914\n"
        )

    def boot(self, reason: str = "0x1 (POWERON)") -> str:
        """Hard reset (or a reboot after a fault): ROM banner, IDF logs, BOOT, READY."""
        self.boots += 1
        self.emitter = self._new_emitter()
        self.waiting = True
        text = self._rom_banner(reason)
        for tag, msg, step in [
            ("boot", "ESP-IDF 2nd stage bootloader (virtual board: no chip, no bootloader ran)", 27),
            ("boot", "chip revision: v0.2 (virtual)", 4),
            ("esp_psram", f"Found {PSRAM_BYTES // (1024 * 1024)}MB PSRAM device (virtual)", 60),
            ("cpu_start", "Pro cpu start user code", 30),
            ("cpu_start", f"cpu freq: {CPU_MHZ * 1_000_000} Hz", 1),
            ("app_init", "Project name:     gesture_test_app", 1),
            ("main_task", "Calling app_main()", 12),
            ("gesture", f"virtual board, variant {self.data.variant}, outputs from the {self.data.source}", 5),
        ]:
            text += self._log("I", tag, msg, step)
        text += self._line(
            "BOOT", fw="1.0.0", variant=self.data.variant, target="esp32s3", idf="virtual", espdl="virtual",
            cpu_mhz=CPU_MHZ, psram_bytes=PSRAM_BYTES, cores=1, runs=self.runs,
            vectors=len(self.data.vector_names), board="virtual", source=self.data.source,
        )
        text += self._line("READY", cmd="run")
        return text

    def _reset_banner(self) -> str:
        return self.boot("0xc (RTC_SW_CPU_RST)")

    def _panic(self) -> str:
        regs = (
            "PC      : 0x42011b3e  PS      : 0x00060c30  A0      : 0x82010a5c  A1      : 0x3fcf3d60  \n"
            "A2      : 0x00000000  A3      : 0x3fcf3dd0  A4      : 0x00000040  A5      : 0x3c0a1e10  \n"
            "EXCCAUSE: 0x0000001c  EXCVADDR: 0x00000008  LBEG    : 0x40056f5c  LEND    : 0x40056f72  \n"
        )
        return (
            "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.\n\n"
            "Core  0 register dump:\n" + regs + "\n"
            "Backtrace: 0x42011b3b:0x3fcf3d60 0x42010a59:0x3fcf3d90 0x4200a1f2:0x3fcf3dd0 "
            "0x4037c1a5:0x3fcf3e00\n\n"
            "ELF file SHA256: 5e0f3a9b1c7d2e44\n\n"
            "Rebooting...\n" + self.boot("0xc (RTC_SW_CPU_RST)")
        )

    # -- run -------------------------------------------------------------------------------------
    def _tensor_lines(self, vec: int, t: Tensor) -> list[str]:
        text = self._chatty(self.emitter.tensor(vec, t.name, t.dtype, t.shape, t.exponent, t.data))
        return text.splitlines(keepends=True)

    def _outputs(self, vec: int) -> list[Tensor]:
        tensors = list(self.data.outputs(vec))
        t = tensors[0]
        if self.fault == "off_by_one" and vec == self.fault_vector:
            lsb = self.data.tolerance.allowed_lsb(t.dtype) + 1  # int8: 1; beyond tolerance
            hi = (1 << (int(t.dtype[3:]) - 1)) - 1 if t.dtype.startswith("int") else 127
            data = np.array(t.data, dtype=np.int64)  # a copy: the computed outputs stay as they are
            flat, i = data.reshape(-1), self.fault_element
            flat[i] = flat[i] + lsb if flat[i] + lsb <= hi else flat[i] - lsb
            tensors[0] = t.replace(data=data)
        if self.fault == "wrong_exponent" and vec == self.fault_vector:
            tensors[0] = t.replace(exponent=t.exponent + 1)
        return tensors  # layer_fault is computed inside the interpreter (its node hook), not painted on

    @property
    def fault_layer(self) -> str | None:
        """The value layer_fault breaks (the first that diverges in a dump): the middle node output."""
        return self.data.interpreter.layer_fault_value

    def _intermediates(self) -> list[Tensor]:
        return self.data.intermediates()

    def _latency(self, vec: int) -> tuple[int, int, int]:
        h = int(hashlib.sha256(f"{self.data.variant}:{vec}".encode()).hexdigest()[:8], 16)
        med = self.data.latency_basis_us * (1 + ((h % 41) - 20) / 2000)  # +-1 % of the estimate
        if self.fault == "slow_latency":
            med = self.data.latency_budget_us * 1.3
        return math.floor(med * 0.985), math.floor(med), math.ceil(med * 1.03)

    def run(self, dump: bool = False) -> Iterator[str | Stop]:
        """The output of `run` / `run dump`, piece by piece as it is computed; a Stop ends it for good."""
        d = self.data
        self.waiting = False  # one run per boot, like the firmware (a reboot inside waits again)
        sha = d.sha256 if self.fault != "stale_model" else hashlib.sha256(d.espdl_bytes + b"stale").hexdigest()
        yield self._line("MODEL", sha256=sha, bytes=len(d.espdl_bytes), location="rodata")
        internal_used = d.internal_basis if self.fault != "memory_over" else math.ceil(d.internal_budget * 1.25)
        before = (INTERNAL_FREE_BEFORE_LOAD, PSRAM_FREE_BEFORE_LOAD)
        after_load = (before[0] - internal_used // 2, before[1] - d.psram_basis // 2)
        low = (before[0] - internal_used, before[1] - d.psram_basis)
        yield self._line("MEM", stage="before_load", internal_free=before[0], psram_free=before[1])
        yield self._line("MEM", stage="after_load", internal_free=after_load[0], psram_free=after_load[1])
        tensors = 0
        for vec, name in enumerate(d.vector_names):
            strike = vec == self.fault_vector
            yield self._line("INPUT", vec=vec, name=name, exp=d.input_exponent, dtype=d.input_dtype)
            if strike and self.fault in ("reset", "panic", "silent"):
                yield {"reset": self._reset_banner, "panic": self._panic, "silent": Stop}[self.fault]()
                return
            outputs = self._outputs(vec)
            lines = [line for t in outputs for line in self._tensor_lines(vec, t)]
            tensors += len(outputs)
            if strike and self.fault == "truncated":
                lines[0] = lines[0][: len(lines[0]) // 2] + "\n"
            if strike and self.fault == "bad_checksum":
                lines[0] = _flip_digit(lines[0])
            yield "".join(lines)
            lo, med, hi = self._latency(vec)
            yield self._line("LAT", vec=vec, runs=self.runs, min_us=lo, med_us=med, max_us=hi)
        yield self._line("MEM", stage="after_runs", internal_free=after_load[0], psram_free=after_load[1])
        yield self._line("MEM", stage="low_water", internal_free=low[0], psram_free=low[1])
        vectors = len(d.vector_names)
        if dump:  # like the firmware: vector 0's input as quantized, then every node output
            for t in self._intermediates():
                yield "".join(self._tensor_lines(0, t))
                tensors += 1
        passed = self._selftest() and self.fault != "selftest_fail"
        if not passed:
            yield self._log("E", "dl::Model", "Test output 0 does not match", step=40)
        yield self._line("SELFTEST", result="pass" if passed else "fail", basis=d.source)
        yield self._end(vectors, tensors, ok=True)

    def _selftest(self) -> bool:
        """ESP-DL's model->test(): vector 0's outputs against the test outputs embedded in the .espdl
        (same dtype, shape and exponent; int8 exact, int16 within 1 LSB).

        The outputs are the interpreter's, so this checks the board's own computation (SELFTEST basis=interpreter).
        A .espdl without test outputs fails, as ESP-DL's test() has nothing to pass.
        """
        if not self.data.embedded:
            return False
        board = {t.name: t for t in self._outputs(0)}
        return all(name in board and diff(board[name], want).ok for name, want in self.data.embedded.items())

    def _end(self, vectors: int, tensors: int, ok: bool) -> str:
        return self._chatty(self.emitter.end_line(vectors, tensors, ok))  # END is not counted: it carries the count


def _perturb_array(data, dtype: str):
    """A broken kernel inside the interpreter: every element off by 8..30 LSB (deterministic, in
    range), large enough that the error survives the following layers to the outputs."""

    flat = data.reshape(-1).astype(np.int64)
    hi = (1 << (int(dtype[3:]) - 1)) - 1
    delta = 8 + np.arange(flat.size) % 23
    out = np.where(flat + delta <= hi, flat + delta, np.maximum(-hi - 1, flat - delta))
    return out.reshape(data.shape).astype(data.dtype)


def _flip_digit(line: str) -> str:
    """Change one digit of the data, keep the old checksum: a valid-looking, corrupt line."""
    body, star, rest = line.rpartition(" *")
    i = body.rfind("data=") + len("data=")
    while i < len(body) and not body[i].isdigit():
        i += 1
    digit = body[i]
    swapped = "1" if digit == "0" else "0" if digit != "8" else "9"
    return body[:i] + swapped + body[i + 1 :] + star + rest


# ---------------------------------------------------------------------------------------------
# The process: pty, commands, parent death
# ---------------------------------------------------------------------------------------------


def _commands(buffer: bytearray) -> list[str]:
    """Complete lines from `buffer` (consumed); esptool SYNC frames (up to the last 0xC0) dropped."""
    out = []
    while True:
        ends = [i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0]
        if not ends:
            if len(buffer) > 4096:  # garbage without a newline: drop it, keep memory bounded
                del buffer[:]
            return out
        cut = min(ends)
        raw = bytes(buffer[:cut])
        del buffer[: cut + 1]
        raw = raw[raw.rfind(b"\xc0") + 1 :]
        text = raw.decode("ascii", "ignore").strip()
        if text:
            out.append(text)


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: PLC0415

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        raise SystemExit(0)


def serve(app: App, *, pty_file: Path | None = None, parent: int = 0, lifetime_s: float = LIFETIME_S) -> None:
    """Open the pty, publish its path, answer commands until SIGTERM, parent death or lifetime."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    path = os.ttyname(slave)
    if pty_file is not None:
        tmp = Path(f"{pty_file}.tmp{os.getpid()}")
        tmp.write_text(path + "\n")
        os.replace(tmp, pty_file)
    print(path, flush=True)
    pending = bytearray()  # bytes the host has not read yet
    inbox = bytearray()
    running: Iterator[str | Stop] | None = None  # the run in progress, produced piece by piece
    stuck_since = None
    deadline = time.monotonic() + lifetime_s
    try:
        while time.monotonic() < deadline:
            if parent and os.getppid() != parent:
                return
            busy = running is not None and len(pending) < 65536
            want_write = [master] if pending else []
            readable, writable, _ = select.select([master], want_write, [], 0 if busy else 0.2)
            if readable:
                try:
                    chunk = os.read(master, 4096)
                except (BlockingIOError, InterruptedError):
                    chunk = b""
                except OSError:  # EIO: no process has the port open right now
                    chunk = b""
                    time.sleep(0.05)
                inbox += chunk
                for command in _commands(inbox):
                    if command == "reset":  # the esp service's hard reset (RTS/EN)
                        pending.clear()  # a reset discards what the UART had not sent yet
                        running = None
                        pending += app.boot().encode()
                    elif not app.waiting:
                        continue  # before the first reset, while running, hung, or done: deaf
                    elif command in ("run", "run dump"):
                        running = app.run(dump=command == "run dump")
                    else:
                        pending += f"gm: unknown command '{command}'; send 'run' or 'run dump'\n".encode()
            if running is not None and len(pending) < 65536:
                piece = next(running, None)
                if piece is None or isinstance(piece, Stop):
                    running = None  # done, or hung for good (until the next reset)
                else:
                    pending += piece.encode()
            if pending and writable:
                try:
                    n = os.write(master, pending[:4096])
                    del pending[:n]
                    stuck_since = None
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pending.clear()
            if pending and not writable:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 5.0:  # nobody reads: the UART sends into the void
                    pending.clear()
                    stuck_since = None
    finally:
        os.close(master)
        os.close(slave)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, choices=VARIANTS, help="which model the board runs")
    parser.add_argument("--fault", default="none", choices=list(FAULTS), help="inject a bench fault")
    parser.add_argument("--models-dir", type=Path, default=MODELS, metavar="DIR",
                        help="the variant folders and their fixed vectors (default: models/)")
    parser.add_argument("--runs", type=int, default=10, help="inferences per vector the app reports")
    parser.add_argument("--pty-file", type=Path, help="also write the pty path to this file (atomically)")
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=LIFETIME_S, help="exit after this many seconds")


def run(args: argparse.Namespace) -> int:
    app = App(load_variant(args.variant, args.models_dir, args.fault), args.fault, args.runs)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # unplugging the board is not an error
        signal.signal(sig, lambda *_: sys.exit(0))
    _die_with_parent(args.parent_pid)
    serve(app, pty_file=args.pty_file, parent=args.parent_pid, lifetime_s=args.lifetime)
    return 0


# ---------------------------------------------------------------------------------------------
# Library: start a board as a separate process, like plugging one in
# ---------------------------------------------------------------------------------------------


class VirtualProcess:
    """A running `quant virtual-board` process; `.port` is its pty (pass it as --port=...)."""

    def __init__(self, proc: subprocess.Popen, port: str, workdir: tempfile.TemporaryDirectory, fault: str):
        self.proc, self.port, self._workdir, self.fault = proc, port, workdir, fault

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Terminate, wait (bounded), kill if needed; never leaves a zombie."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        self._workdir.cleanup()

    def __enter__(self) -> VirtualProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(variant: str, *, fault: str | None = None, models_dir: Path = MODELS, runs: int = 10,
          timeout_s: float = 10.0) -> VirtualProcess:
    """Start a virtual board process for `variant` (with `fault`) and return once its port exists."""
    fault = fault or "none"
    if fault not in FAULTS:
        raise UserError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    workdir = tempfile.TemporaryDirectory(prefix="vboard-")
    pty_file = Path(workdir.name) / "port"
    log = open(Path(workdir.name) / "stderr.txt", "w+b")  # noqa: SIM115  (read on failure)
    cmd = [
        sys.executable, "-m", "quant.board.virtual", "--variant", variant, "--fault", fault,
        "--models-dir", str(models_dir), "--runs", str(runs),
        "--pty-file", str(pty_file), "--parent-pid", str(os.getpid()),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.monotonic() + timeout_s
    try:
        while not pty_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=3)
                log.seek(0)
                err = log.read().decode(errors="replace").strip().splitlines()
                reason = err[-1] if err else f"no port after {timeout_s:.0f} s"
                raise UserError(f"the virtual board for {variant} did not start: {reason}")
            time.sleep(0.01)
    except BaseException:
        log.close()
        workdir.cleanup()
        raise
    log.close()
    return VirtualProcess(proc, pty_file.read_text().strip(), workdir, fault)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant virtual-board", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
