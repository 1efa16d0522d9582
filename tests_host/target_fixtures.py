"""Small variant folders and board transcripts for the target-harness tests (no real models needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from quant.board.protocol import Emitter, parse_transcript

CLASSES = 7
VECTORS = 4
BUDGETS = {"latency_us": (14000, 12174), "internal_ram_bytes": (60000, 52000),
           "psram_bytes": (300000, 260000), "flash_bytes": (80000, 1028)}
INFO_HEAD = "# a fixture .info\nformat = 1\nvariant = \"{v}\"\n\n[model]\nespdl_bytes = 1028   # size\n"


def logits(vec: int) -> list[int]:
    return [(37 * vec + 11 * j) % 255 - 127 for j in range(CLASSES)]


def make_models(root: Path, variants=("int8", "mixed", "balanced")) -> Path:
    for v in variants:
        folder = root / f"gesture_model_{v}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"gesture_model_{v}"
        Path(f"{stem}.espdl").write_bytes(b"EDL2" + bytes(range(256)) * 4)
        info = [INFO_HEAD.format(v=v)]
        for key, (value, basis) in BUDGETS.items():
            info.append(f"\n[budgets.{key}]                 # what it is\nvalue = {value}                    # the budget\n"
                        f"basis = {basis}\nheadroom = 0.15\nprovenance = \"estimated\"\nmethod = \"a guess\"\n")
        Path(f"{stem}.info").write_text("".join(info))
        config = {"input": {"name": "image", "dtype": "int8", "exponent": -7}, "outputs": [{"name": "logits"}],
                  "tolerance": {"int8_lsb": 0, "int16_lsb": 1, "same_exponent": True, "same_top1": True, "reason": None}}
        Path(f"{stem}.json").write_text(json.dumps(config))
        outputs = [{"vector": i, "name": f"pattern{i}", "top1": max(range(CLASSES), key=logits(i).__getitem__),
                    "tensors": {"logits": {"dtype": "int8", "shape": [1, CLASSES], "exponent": -4, "data": logits(i)}}}
                   for i in range(VECTORS)]
        Path(f"{stem}.reference.json").write_text(json.dumps({"format": 1, "variant": v, "outputs": outputs}))
    return root


def espdl_sha(root: Path, variant: str = "int8") -> str:
    return hashlib.sha256((root / f"gesture_model_{variant}" / f"gesture_model_{variant}.espdl").read_bytes()).hexdigest()


def transcript(*, variant="int8", board="chip", sha="0" * 64, model_bytes=1028, med_us=(12000, 12500, 11000, 12100),
               before=(380000, 8300000), low=(330000, 8040000), selftest="pass") -> str:
    out: list[str] = []
    e = Emitter(out.append)
    e.line("BOOT", fw="1.0.0", variant=variant, target="esp32s3", idf="v5.3.1", espdl="3.1.0", cpu_mhz=240,
           psram_bytes=8388608, cores=1, runs=10, vectors=VECTORS, board=board)
    e.line("READY", cmd="run")
    e.line("MODEL", sha256=sha, bytes=model_bytes, location="rodata")
    e.line("MEM", stage="before_load", internal_free=before[0], psram_free=before[1])
    e.line("MEM", stage="after_load", internal_free=before[0] - 1000, psram_free=before[1] - 1000)
    for vec in range(VECTORS):
        e.line("INPUT", vec=vec, name=f"pattern{vec}", exp=-7, dtype="int8")
        e.tensor(vec, "logits", "int8", (1, CLASSES), -4, logits(vec))
        e.line("LAT", vec=vec, runs=10, min_us=med_us[vec] - 10, med_us=med_us[vec], max_us=med_us[vec] + 10)
    e.line("MEM", stage="after_runs", internal_free=before[0] - 1000, psram_free=before[1] - 1000)
    e.line("MEM", stage="low_water", internal_free=low[0], psram_free=low[1])
    e.line("SELFTEST", result=selftest)
    e.end_line(VECTORS, VECTORS, True)
    return "".join(out)


def board_run(**kw):
    run = parse_transcript(transcript(**kw))
    assert run.problems() == [], run.problems()
    return run


# an ESP-IDF app image with an .espdl embedded (quant.board.flash_faults patches such images)
ESPDL = b"EDL2" + (0).to_bytes(4, "little") + (1234).to_bytes(4, "little") + bytes(range(256)) * 20


def app_image(payload: bytes = ESPDL, digest: bool = True) -> bytes:
    """An ESP32-S3 app image written by esptool itself: an IRAM segment and a DROM segment holding `payload`."""
    from esptool.bin_image import ELFSection, ESP32S3FirmwareImage

    image = ESP32S3FirmwareImage()
    image.entrypoint = 0x40378000
    image.append_digest = digest
    image.segments = [ELFSection(b".iram0.text", 0x40378000, b"\x36\x41\x00" * 100, 0),
                      ELFSection(b".flash.rodata", 0x3C020000, b"rodata" + payload + b"tail", 0)]
    return image.save(None)  # (esptool 5: the image's bytes)
