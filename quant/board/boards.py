"""A board is one interface with one class per kind: what the target tests run on.

    board = boards.select(config)      # ChipBoard (--port=/ESPPORT), VirtualBoard (--virtual-board), QemuBoard (--qemu), or None
    board.build(variant)               # None when the variant can run, else what is missing and how to fix it
    port = board.start(variant)        # flash-or-start: the port pytest-embedded opens (the chip flashes there)
    board.reset(dut, again=False)      # before each session
    source = board.transport(dut, dump=False)   # complete lines from the DUT
    board.stop(variant)                # teardown

Every board says what its results may claim (`claims`): "measured" (a chip), "virtual" (our own process:
latency and memory are .info estimates), "emulated" (QEMU: outputs, self-test, hash and heap are real
firmware; latency is emulator time). The session code and the tests read `claims`, never the kind.
QemuBoard (`--qemu`) runs the real firmware on Espressif's QEMU (`idf,qemu`) and says where QEMU is wrong.

Transports work on any pytest-embedded `dut`: `ExpectTransport` through pexpect (every byte also lands in
the DUT log), `PortTransport` straight from the serial port for `run dump`'s megabytes.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from collections.abc import Callable
from typing import Any

from quant.errors import UserError
from quant.folder import VARIANTS, variant_file

TARGET = "esp32s3"
READ_PAUSE_S = 0.005  # pexpect's pause after each read of the DUT log (its default 0.1 ms busy-polls)
CLAIMS = ("measured", "virtual", "emulated")


class BoardSessionError(Exception):
    """The board session failed; the message says why and where the DUT log is."""


def log_hint(dut: Any) -> str:
    path = getattr(dut, "logfile", None)
    return f"DUT log: {path}" if path else "DUT log: (none)"


def missing_variant(variant: str, models: Path) -> str | None:
    """One line when `models` has no `variant` to run (with the command that makes it), else None."""
    if variant_file(variant, ".espdl", models).is_file():
        return None
    return (f"{variant}: {variant_file(variant, '.espdl', models)} is missing: build it with "
            f"`quant build --variant {variant} --models-dir {models}` (or test only the variants you built: -k)")


# ---------------------------------------------------------------------------------------------
# transports


class Silence(Exception):
    """No complete line within the timeout; `.pending` holds an unfinished line, if any."""

    def __init__(self, pending: bytes = b""):
        super().__init__("silent")
        self.pending = pending


class ExpectTransport:
    """Complete lines through pytest-embedded's pexpect stream (every byte also lands in the DUT log)."""

    def __init__(self, dut: Any):
        import re  # noqa: PLC0415

        self._lines = re.compile(rb"(?:[^\n]*\n)+")  # every complete line in the buffer at once
        self.dut, self.proc = dut, getattr(dut, "pexpect_proc", None)
        self.saved = getattr(self.proc, "delayafterread", None)
        if self.proc is not None:  # pexpect polls the (always readable) log file: pause 5 ms per read, not 0.1
            self.proc.delayafterread = READ_PAUSE_S

    def read(self, timeout: float) -> bytes:
        import pexpect  # noqa: PLC0415  (pytest-embedded's dependency; imported here so the module imports fast)

        try:
            return self.dut.expect(self._lines, timeout=timeout).group(0)
        except pexpect.TIMEOUT:
            raise Silence(bytes(getattr(self.proc, "buffer", b"") or b"")) from None
        except pexpect.EOF:
            raise BoardSessionError(f"the serial port closed; {log_hint(self.dut)}") from None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.delayafterread = self.saved


class PortTransport:
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
                raise BoardSessionError(f"the serial port failed ({exc}); {log_hint(self.dut)}") from None
            if chunk and self.log:
                self.log.write(chunk)
                self.log.flush()
            self.pending += chunk
            cut = self.pending.rfind(b"\n")
            if cut >= 0:
                lines, self.pending = self.pending[: cut + 1], self.pending[cut + 1:]
                return lines
            if time.monotonic() >= end:
                raise Silence(self.pending)

    def close(self) -> None:
        if self.log:
            self.log.close()
        self.serial.start_redirect_thread()


# ---------------------------------------------------------------------------------------------
# the interface


class Board(ABC):
    """One kind of board for the target tests."""

    kind: str  # "chip", "virtual" (report.json's `board`)
    claims: str  # "measured" | "virtual" | "emulated"
    services: str  # pytest-embedded's --embedded-services for this board
    flag: tuple[str, str] | None = None  # the pytest option that picks this board (conftest.py adds it), its help

    @classmethod
    @abstractmethod
    def from_options(cls, option: Callable[[str], Any], models: Path) -> Board | None:
        """This board when the run's options ask for it (`option(name)`: pytest's getoption), else None."""

    def __init__(self, models: Path, *, target: str = TARGET, port: str | None = None):
        self.models, self.target, self.given_port = Path(models), target, port

    def services_for(self, given: str | None) -> str:
        """pytest-embedded's services for this board (`given`: --embedded-services, if any)."""
        return self.services

    def build(self, variant: str) -> str | None:
        """Make `variant` runnable on this board; None when ready, else the one-line problem and fix."""
        return missing_variant(variant, self.models)

    def build_dir(self, variant: str) -> str | None:
        """The build folder pytest-embedded reads (None: pytest-embedded's default)."""
        return None

    @abstractmethod
    def start(self, variant: str) -> str | None:
        """Flash-or-start: the port pytest-embedded opens for `variant` (a chip flashes when it opens)."""

    @abstractmethod
    def reset(self, dut: Any, *, again: bool) -> None:
        """Before a session: the first one of a `dut` (`again` False) or a later one (`run dump`)."""

    def transport(self, dut: Any, *, dump: bool) -> ExpectTransport | PortTransport:
        return PortTransport(dut) if dump and PortTransport.usable(dut) else ExpectTransport(dut)

    def stop(self, variant: str) -> None:
        """Teardown after the variant's session (nothing for a chip)."""

    def open_failed(self, variant: str) -> str:
        """What to check when pytest-embedded could not open the board (appended to the error)."""
        return ""

    def unavailable(self) -> str | None:
        """Why this board cannot run on this machine (its tests skip with this reason), or None."""
        return None

    def qemu_extra_args(self, variant: str) -> str | None:
        """pytest-embedded-qemu's --qemu-extra-args for `variant` (boards without QEMU: None)."""
        return None

    def explains(self, variant: str, node: str | None) -> str | None:
        """For an emulated board: why a mismatch at `node` is the emulator's, not the chip's (None: it counts)."""
        return None

    def decode_backtrace(self, dut: Any, line: str) -> str | None:
        """A panic's `Backtrace:` line as 'function (file:line)' frames, or None when it cannot be decoded."""
        return None


class ChipBoard(Board):
    """An ESP32-S3 at a bench through pytest-embedded's `esp,idf` services: `quant firmware` builds
    firmware/build_esp32s3_<variant>/ from the models folder, the esp service flashes and hard-resets it
    when the port opens."""

    kind, claims, services = "chip", "measured", "esp,idf"

    @classmethod
    def from_options(cls, option, models):
        port = option("port") or os.environ.get("ESPPORT")
        return cls(models, port=port) if port else None

    def services_for(self, given: str | None) -> str:
        return given or self.services  # e.g. a bench that needs other services says so on the command line

    qemu = False  # the firmware build for Espressif's QEMU (QemuBoard) instead of a chip

    def build(self, variant: str) -> str | None:
        from quant.board import firmware  # noqa: PLC0415

        missing = missing_variant(variant, self.models)
        if missing:
            return missing
        reason = firmware.needs_build(variant, self.models, qemu=self.qemu)
        if reason is None:
            return None
        try:
            firmware.build(variant, self.models, qemu=self.qemu)
        except UserError as exc:
            return f"{variant}: the test app must be built first ({reason}), and it cannot be built here: {exc}"
        return None

    def build_dir(self, variant: str) -> str | None:
        from quant.board import firmware  # noqa: PLC0415

        return str(firmware.build_dir(variant, self.qemu))

    def start(self, variant: str) -> str | None:
        return self.given_port or os.environ.get("ESPPORT")

    def reset(self, dut: Any, *, again: bool) -> None:
        if not again:
            return  # the esp service hard-reset the chip when it opened the port
        hard_reset = getattr(getattr(dut, "serial", None), "hard_reset", None)
        if hard_reset is None:
            raise BoardSessionError("cannot reset the board for a second session: use the esp,idf services")
        hard_reset()

    def decode_backtrace(self, dut: Any, line: str) -> str | None:
        """What `idf.py monitor` shows for a panic: the backtrace's PCs through the toolchain's addr2line with the
        app's ELF (pytest-embedded-idf decodes panics on RISC-V targets only). None without ELF or toolchain."""
        import json  # noqa: PLC0415
        import re  # noqa: PLC0415
        import shutil  # noqa: PLC0415
        import subprocess  # noqa: PLC0415

        pcs = re.findall(r"(0x[0-9a-fA-F]{8}):0x[0-9a-fA-F]{8}", line)
        app = getattr(dut, "app", None)
        elf, build = getattr(app, "elf_file", None), getattr(app, "binary_path", None)
        if not pcs or not elf or not build:
            return None
        try:
            prefix = json.loads((Path(build) / "project_description.json").read_text())["monitor_toolprefix"]
            tool = shutil.which(f"{prefix}addr2line")
            out = subprocess.run([tool, "-pfiaC", "-e", elf, *pcs], capture_output=True, text=True, timeout=60,
                                 check=True).stdout if tool else ""
        except (OSError, ValueError, KeyError, subprocess.SubprocessError):
            return None
        frames = []
        for row in out.splitlines():  # "0x4037...: func at /path/file.c:123" (inlined frames: " (inlined by) ...")
            if row.startswith("0x"):
                where = row.split(": ", 1)[-1]
                func, _, loc = where.partition(" at ") if " at " in where else (where.split(" ")[0], "", "")
                frames.append(f"{func} ({Path(loc).name})" if loc and "??" not in loc else func)
        return " <- ".join(frames[:8]) or None

    def open_failed(self, variant: str) -> str:
        return (f" (flashing {self.build_dir(variant)}); check the cable, the port (--port=/dev/ttyUSB0) and "
                "that nothing else holds it")


class VirtualBoard(Board):
    """Our own process on a pty (quant.board.virtual) through pytest-embedded's `serial` service: outputs
    computed by the host interpreter on the folder's own vectors, latency and memory from the .info."""

    kind, claims, services = "virtual", "virtual", "serial"
    flag = ("--virtual-board", "run the board tests against a virtual board (quant virtual-board) instead of a chip")

    @classmethod
    def from_options(cls, option, models):
        return cls(models, fault=option("virtual_fault") or "none") if option("virtual_board") else None

    def __init__(self, models: Path, *, fault: str = "none", **kw):
        super().__init__(models, **kw)
        self.fault = fault
        self._running: dict[str, Any] = {}  # variant -> quant.board.virtual.VirtualProcess

    def build(self, variant: str) -> str | None:
        missing = missing_variant(variant, self.models)
        if missing:
            return missing
        from quant.board import virtual  # noqa: PLC0415

        try:
            virtual.check_folder(variant, self.models)
        except UserError as exc:
            return f"{variant}: {exc}"
        return None

    def start(self, variant: str) -> str | None:
        from quant.board import virtual  # noqa: PLC0415

        if variant not in self._running:
            self._running[variant] = virtual.start(variant, fault=self.fault, models_dir=self.models)
        return self._running[variant].port

    def reset(self, dut: Any, *, again: bool) -> None:
        dut.write("reset")  # silent until reset (pyserial flushes input on open): the esp service's hard reset

    def stop(self, variant: str) -> None:
        proc = self._running.pop(variant, None)
        if proc is not None:
            proc.stop()


class QemuBoard(ChipBoard):
    """The real firmware on Espressif's QEMU (`qemu-system-xtensa -M esp32s3`) through pytest-embedded's
    `idf,qemu` services. `quant firmware --qemu` builds firmware/build_esp32s3_<variant>_qemu (the variant's
    configuration with firmware/sdkconfig.qemu last: DIO flash, one timed run per vector); the qemu service
    merges the flash image from it and starts QEMU with ESP-IDF's arguments for the S3 (32 MB octal PSRAM,
    eFuses, watchdog off); the console is QEMU's stdio. Results are emulated: outputs, self-test, hash and
    heap are the real firmware's on an emulated CPU, latency is QEMU time. Where QEMU itself computes a
    layer wrongly (quant.board.qemu), `explains` says so, and such a mismatch is neither a pass nor a chip
    failure (docs/qemu.md)."""

    kind, claims, services = "qemu", "emulated", "idf,qemu"
    flag = ("--qemu", "run the board tests on the real firmware in Espressif's QEMU for ESP32-S3 "
                      "(qemu-system-xtensa on the PATH; ESP-IDF exported to build the firmware)")
    PROGRAM = "qemu-system-xtensa"
    PSRAM = "32M"  # the R8 modules' 8 MB and more: ESP-IDF's `idf.py qemu` passes -m 32M too
    qemu = True

    @classmethod
    def from_options(cls, option, models):
        return cls(models, fault=option("qemu_fault") or "none") if option("qemu") else None

    def __init__(self, models: Path, *, fault: str = "none", **kw):
        super().__init__(models, **kw)
        self.fault = fault  # quant.board.flash_faults: a drill on the real firmware ("none": the build as it is)

    def _others(self, variant: str) -> dict[str, Path]:
        from quant.board import firmware  # noqa: PLC0415

        return {v: firmware.build_dir(v, True) for v in VARIANTS
                if v != variant and firmware.needs_build(v, self.models, qemu=True) is None}

    def build(self, variant: str) -> str | None:
        problem = super().build(variant)
        if problem or self.fault == "none":
            return problem
        from quant.board import firmware, flash_faults  # noqa: PLC0415

        try:
            flash_faults.prepare(self.fault, variant, firmware.build_dir(variant, True),
                                 variant_file(variant, ".espdl", self.models), self._others(variant))
        except UserError as exc:
            return f"{variant}: the {self.fault} fault cannot be made: {exc}"
        return None

    def build_dir(self, variant: str) -> str | None:
        if self.fault == "none":
            return super().build_dir(variant)
        from quant.board import firmware, flash_faults  # noqa: PLC0415

        try:
            return str(flash_faults.folder(self.fault, variant, firmware.build_dir(variant, True), self._others(variant)))
        except UserError:
            return super().build_dir(variant)  # build() says why

    def unavailable(self) -> str | None:
        import shutil  # noqa: PLC0415

        if shutil.which(self.PROGRAM) is None:
            return (f"--qemu needs Espressif's QEMU for ESP32-S3 and {self.PROGRAM} is not on the PATH: install it "
                    f"with ESP-IDF's `idf_tools.py install qemu-xtensa`, then `. $IDF_PATH/export.sh` (docs/qemu.md)")
        try:
            import pytest_embedded_qemu  # noqa: F401, PLC0415
        except ImportError:
            return "--qemu needs pytest-embedded-qemu: `make setup-board` (requirements-board.txt)"
        return None

    def services_for(self, given: str | None) -> str:
        return self.services

    def qemu_extra_args(self, variant: str) -> str:
        """What ESP-IDF's `idf.py qemu` adds for an S3 besides the flash drive (pytest-embedded adds that):
        PSRAM, octal mode, the eFuse block (written from pytest-embedded's default for the S3 if missing;
        not through --qemu-efuse-path, which also straps the chip into download mode) and no watchdog."""
        from pytest_embedded_qemu.qemu import QEMU_TARGETS  # noqa: PLC0415

        efuse = Path(self.build_dir(variant)) / "qemu_efuse.bin"
        if not efuse.is_file():
            efuse.parent.mkdir(parents=True, exist_ok=True)
            efuse.write_bytes(QEMU_TARGETS[self.target].default_efuse)
        return " ".join([
            f"-m {self.PSRAM}", "-global driver=ssi_psram,property=is_octal,value=true",
            f"-drive file={efuse},if=none,format=raw,id=efuse",
            f"-global driver=nvram.{self.target}.efuse,property=drive,value=efuse",
            f"-global driver=timer.{self.target}.timg,property=wdt_disable,value=true",
        ])

    def start(self, variant: str) -> str | None:
        return None  # the qemu service starts QEMU when the dut opens; its console is QEMU's stdio

    def reset(self, dut: Any, *, again: bool) -> None:
        if again:
            dut.hard_reset()  # QMP system_reset

    def explains(self, variant: str, node: str | None) -> str | None:
        """Why a mismatch says nothing about the chip: `node` (the first diverging layer; None: not localized,
        e.g. the self-test) is, or the model has, a layer QEMU computes wrongly. None: QEMU is not known to
        be wrong here, so the mismatch counts."""
        from quant.board import qemu  # noqa: PLC0415
        from quant.espdl import reader  # noqa: PLC0415

        wrong = qemu.unfaithful_nodes(reader.load(variant_file(variant, ".espdl", self.models)))
        hit = [w for w in wrong if node is None or w.node == node]
        if not hit:
            return None
        return (f"emulated, not a chip result: {qemu.QEMU_VERSION} computes {len(hit)} layer(s) of this model wrongly "
                f"({'; '.join(w.describe() for w in hit[:3])}{'; ...' if len(hit) > 3 else ''}): {qemu.REASON}; "
                "QEMU cannot check these numbers (docs/qemu.md)")

    def open_failed(self, variant: str) -> str:
        return f" (QEMU on {self.build_dir(variant)}/flash_image.bin)"


# Every kind of board, in the order `select` asks them (a board picked by its own flag before the chip,
# which a --port picks). A new kind is one class here; conftest.py adds its `flag`.
KINDS: dict[str, type[Board]] = {"virtual": VirtualBoard, "qemu": QemuBoard, "chip": ChipBoard}


def select(option: Callable[[str], Any], models: Path) -> Board | None:
    """The board a run uses, from its options (`option(name)`, pytest's getoption): the first kind whose
    options ask for it, or None (board tests skip). UserError when two flagged boards are asked for."""
    flagged = [k.flag[0] for k in KINDS.values() if k.flag and option(k.flag[0].lstrip("-").replace("-", "_"))]
    if len(flagged) > 1:
        raise UserError(f"{' and '.join(flagged)} exclude each other: pick one board")
    if flagged and option("port"):
        raise UserError(f"{flagged[0]} and --port exclude each other: pick one board ({flagged[0]}, or a chip on --port=...)")
    for kind in KINDS.values():
        board = kind.from_options(option, models)
        if board is not None:
            return board
    return None


__all__ = ["Board", "BoardSessionError", "ChipBoard", "QemuBoard", "VirtualBoard", "KINDS", "CLAIMS", "TARGET", "VARIANTS",
           "select", "missing_variant", "ExpectTransport", "PortTransport", "Silence", "log_hint"]
