"""Bench faults in a real firmware build's flash, for drills on the QEMU board (`--qemu-fault NAME`).

The unchanged target tests must fail loudly, naming the fault, when the flash is not what they think it is.
Each fault is made from a real, up-to-date QEMU build (`quant firmware --qemu`), never by rebuilding:

- `stale_image`: the flash holds another variant's app, as after flashing the wrong build folder.
- `model_refused`: the .espdl inside the app says it is AES-encrypted (EDL2 header word 1, `mode`, = 1);
  ESP-DL's loader refuses it ("This is a cryptographic model, please enter the secret key!",
  esp-dl 3.3.9 `fbs_loader/src/fbs_loader.cpp` create_fbs_model) and the app prints ERROR.
- `model_assert`: the same word = 2; the loader's `assert(mode == 0 || mode == 1)` aborts: a panic with
  a backtrace, which the chip and QEMU boards decode with the build's ELF.

For the two model faults the app image is copied into `<build>_fault_<name>/` with the flash files it needs,
the embedded model's header word changed, and the image's checksum and SHA-256 recomputed (the ESP-IDF app
image format: esptool's `image_info` accepts the result), so the bootloader boots it and ESP-DL is what fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

from quant.errors import UserError

FAULTS = {
    "stale_image": "the flash holds another variant's app (a stale flash)",
    "model_refused": "the embedded .espdl claims AES encryption: ESP-DL refuses to load it",
    "model_assert": "the embedded .espdl has an invalid mode word: ESP-DL's loader asserts (a panic)",
}
MODE_WORD = {"model_refused": 1, "model_assert": 2}  # EDL2 header: "EDL2", mode, size, ... (little-endian u32)
IMAGE_MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
COPIED = ("flasher_args.json", "flash_args", "flash_project_args", "project_description.json",
          "config/sdkconfig.json")


def _segments(image: bytes) -> list[tuple[int, int]]:
    """(offset of the data, length) of each segment of an ESP app image; UserError if it is not one."""
    if len(image) < 24 or image[0] != IMAGE_MAGIC:
        raise UserError("the app binary is not an ESP-IDF app image (no 0xE9 header): rebuild it with `quant firmware --qemu`")
    pos, out = 24, []
    for _ in range(image[1]):
        _addr, size = struct.unpack_from("<II", image, pos)
        out.append((pos + 8, size))
        pos += 8 + size
    if pos > len(image):
        raise UserError("the app image is truncated: rebuild it with `quant firmware --qemu`")
    return out


def _seal_at(image: bytes) -> tuple[int, bool]:
    """(index of the checksum byte, whether a SHA-256 digest follows it)."""
    digest = image[23] == 1  # extended header: hash_appended
    return (len(image) - 33 if digest else len(image) - 1), digest


def checksum(image: bytes) -> int:
    value = CHECKSUM_SEED
    for start, size in _segments(image):
        for b in image[start:start + size]:
            value ^= b
    return value


def is_sealed(image: bytes) -> bool:
    """The image's checksum byte and (if present) its SHA-256 digest match its contents."""
    at, digest = _seal_at(image)
    ok = image[at] == checksum(image)
    return ok and (not digest or image[-32:] == hashlib.sha256(image[:-32]).digest())


def patch_model_mode(image: bytes, espdl: bytes, mode: int) -> bytes:
    """The app image with the embedded `espdl`'s header mode word set to `mode`, resealed."""
    if not is_sealed(image):
        raise UserError("the app image's checksum or digest does not match before patching: rebuild it")
    where = image.find(espdl[:4096])
    if where < 0 or image.find(espdl[:4096], where + 1) >= 0:
        raise UserError("the app image does not embed the variant's .espdl exactly once: rebuild it with `quant firmware --qemu`")
    if not any(start <= where and where + 8 <= start + size for start, size in _segments(image)):
        raise UserError("the embedded .espdl is not inside one segment of the app image")
    out = bytearray(image)
    struct.pack_into("<I", out, where + 4, mode)
    at, digest = _seal_at(image)
    out[at] = checksum(bytes(out))
    if digest:
        out[-32:] = hashlib.sha256(bytes(out[:-32])).digest()
    return bytes(out)


def folder(fault: str, variant: str, build: Path, other_builds: dict[str, Path]) -> Path:
    """The build folder pytest-embedded flashes for `fault` (pure: `prepare` makes it). `build`: the variant's
    QEMU build; `other_builds`: the other variants' up-to-date QEMU builds, in order."""
    if fault not in FAULTS:
        raise UserError(f"unknown QEMU fault {fault!r}; choose one of {', '.join(FAULTS)}")
    if fault == "stale_image":
        if not other_builds:
            raise UserError(f"the stale_image fault flashes another variant's app, and no other variant's QEMU build "
                            f"is up to date: `quant firmware --qemu --variant {'mixed' if variant != 'mixed' else 'int8'}`")
        return next(iter(other_builds.values()))
    return build.parent / f"{build.name}_fault_{fault}"


def prepare(fault: str, variant: str, build: Path, espdl: Path, other_builds: dict[str, Path]) -> Path:
    """Make `folder(...)` from the variant's up-to-date QEMU build `build` and its `.espdl`."""
    target = folder(fault, variant, build, other_builds)
    if fault == "stale_image":
        return target
    if target.exists():
        shutil.rmtree(target)
    flasher = json.loads((build / "flasher_args.json").read_text())
    files = [*COPIED, *flasher["flash_files"].values(), *(p.name for p in build.glob("*.elf"))]
    for rel in dict.fromkeys(files):
        src = build / rel
        if src.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / rel)
    app = target / flasher["app"]["file"]
    app.write_bytes(patch_model_mode(app.read_bytes(), espdl.read_bytes(), MODE_WORD[fault]))
    return target
