"""The models folder and its variant folders: the one owner of their layout and file formats.

A models folder (default `models/`, any folder given as `--models-dir`) is complete and self-contained:

    <models>/test_vectors.bin, test_vectors.json      the fixed vectors every variant was computed on
    <models>/gesture_model_<variant>/gesture_model_<variant>{.espdl,.info,.json,.reference.json,.graph.txt}

Everything that reads or writes those files goes through here: the paths, the single variant list
(`VARIANTS`, derived from `quant.variants.specs.VARIANTS`: adding a variant is one edit there), the fixed
vectors, the `.info` (TOML) and `.json` documents, the one TOML writer, the float precision rule and the
`.info` digest contract. Callers: build, report, budgets, judge, bisect, the board session and the virtual board.

**Float precision.** Every float written into a `.info` or `.json` goes through `stable`: it is rounded
to `FLOAT_DIGITS` significant digits, so a rebuild on another CPU (whose float summation may differ in the
6th-7th digit) writes the same bytes.

**The `.info` digest contract.** A `.info` is the identity part (everything the build computed) followed
by the `[budgets.*]` tables, then at most a `[build]` table (`render_info` writes it so and checks it). `quant
update-budgets` rewrites only the budgets part (`rewrite_budgets`) and `quant firmware` only the `[build]` table
(`record_build`: the test app's sizes from its real build), so `info_digest` hashes the identity part only: the
text before `BUDGETS_MARKER`. Neither update is damage nor a reason to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from quant.errors import UserError
from quant.variants.specs import VARIANTS as _SPECS

# ------------------------------------------------------------------------------------ paths

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
FIRMWARE = REPO / "firmware"
FLOAT_ONNX = MODELS / "gesture_float.onnx"
FLOAT_META = MODELS / "gesture_float.json"
VECTORS_BIN_NAME = "test_vectors.bin"
VECTORS_META_NAME = "test_vectors.json"
VECTORS_BIN = MODELS / VECTORS_BIN_NAME  # the default models folder's vectors
VECTORS_META = MODELS / VECTORS_META_NAME
VARIANTS: tuple[str, ...] = tuple(_SPECS)  # the one list: quant.variants.specs.VARIANTS
SUFFIXES = (".espdl", ".info", ".json", ".reference.json", ".graph.txt")  # the five files of a variant folder
STEM_PREFIX = "gesture_model_"


def variant_dir(variant: str, models: Path = MODELS) -> Path:
    return Path(models) / f"{STEM_PREFIX}{variant}"


def variant_file(variant: str, suffix: str, models: Path = MODELS) -> Path:
    """`suffix` is one of `SUFFIXES`."""
    return variant_dir(variant, models) / f"{STEM_PREFIX}{variant}{suffix}"


def vectors_files(models: Path = MODELS) -> tuple[Path, Path]:
    """(test_vectors.bin, test_vectors.json) of a models folder."""
    return Path(models) / VECTORS_BIN_NAME, Path(models) / VECTORS_META_NAME


def is_default(models: Path) -> bool:
    """True for the repository's own models/ folder (the committed default model's assets)."""
    try:
        return Path(models).resolve() == MODELS.resolve()
    except OSError:
        return False


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ floats

FLOAT_DIGITS = 4


def stable(v: Any) -> Any:
    """`v` with every float rounded to FLOAT_DIGITS significant digits (recursively in dicts, lists, tuples)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if not math.isfinite(f) or f == 0.0 else float(f"{f:.{FLOAT_DIGITS}g}")
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, dict):
        return {k: stable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [stable(x) for x in v]
    return v


# ------------------------------------------------------------------------------------ TOML (the one writer)


def toml_value(v: Any) -> str:
    """A TOML value for the types a .info holds (floats at the stable precision)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(stable(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string is a JSON string for our characters
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def toml_line(key: str, value: Any, comment: str = "") -> str:
    text = f"{key} = {toml_value(value)}"
    return f"{text:<40} # {comment}" if comment else text


# ------------------------------------------------------------------------------------ budgets records

# budget name -> (what it is, unit); a .info has exactly these [budgets.<name>] tables, in this order
BUDGETS = {
    "latency_us": ("latency per inference (slowest vector's median)", "us"),
    "internal_ram_bytes": ("internal RAM used by the model (free before load - low water)", "bytes"),
    "psram_bytes": ("PSRAM used by the model (free before load - low water)", "bytes"),
    "flash_bytes": ("model bytes in flash (.espdl)", "bytes"),
}
BUDGET_NOTES = {
    "latency_us": "per inference, median",
    "internal_ram_bytes": "internal RAM used by the model (free before load - low water)",
    "psram_bytes": "PSRAM used by the model (free before load - low water)",
    "flash_bytes": ".espdl bytes in flash (the app binary is not counted)",
}
BUDGET_KEY_NOTES = {"value": "the budget the target tests check against",
                    "basis": "the estimate (or measurement) the budget was derived from",
                    "headroom": "value = ceil(basis * (1 + headroom))"}
BUDGETS_MARKER = "\n[budgets."


@dataclass(frozen=True)
class Budget:
    name: str
    value: int
    basis: float | None
    headroom: float | None
    provenance: str
    method: str

    def describe(self) -> str:
        head = f"{self.provenance}" + (f", headroom {self.headroom:.0%}" if self.headroom is not None else "")
        return f"{self.value} {BUDGETS[self.name][1]} ({head}: {self.method})" if self.method else f"{self.value} ({head})"

    def as_table(self) -> dict:
        return {"value": self.value, "basis": self.basis, "headroom": self.headroom, "provenance": self.provenance,
                "method": self.method}


# ------------------------------------------------------------------------------------ .info


@dataclass(frozen=True)
class Info:
    """A parsed .info: the tables as dicts, the budgets as records."""

    path: Path
    variant: str
    quality: dict
    model: dict
    budgets: dict[str, Budget]


def render_info(variant: str, quality: Mapping, model: Mapping, budgets: Mapping[str, Mapping], worst_source: str,
                build: Mapping | None = None) -> str:
    """The .info text (pure). The budgets tables come last, then the `[build]` record if there is one: see the
    digest contract in the module doc."""
    q, m = quality, model
    line = toml_line
    head = [
        f"# {variant}: quality, size, cost and budgets of {STEM_PREFIX}{variant}.espdl (written by `quant build`).",
        "# Parse with tomllib. Budgets marked 'estimated' are replaced by board measurements via `quant update-budgets`.",
        line("format", 1),
        line("variant", variant),
        "",
        "[quality]                                # held-out set: PPQ simulator (variant) vs onnxruntime (float)",
        line("heldout_images", q["heldout_images"]),
        line("float_top1", q["float_top1"], "top-1 accuracy of the float model"),
        line("top1", q["top1"], "top-1 accuracy of this variant"),
        line("top1_drop_points", q["top1_drop_points"], "(float_top1 - top1) * 100"),
        line("floor_drop_points", q["floor_drop_points"], "the spec's gate: the build fails above it"),
        line("output_noise_signal", q["output_noise_signal"], "logits noise/signal power vs float (lower is better)"),
        line("output_cosine", q["output_cosine"], "mean cosine similarity of the logits vs float"),
        line("quantization_noise_signal", q["quantization_noise_signal"],
             "logits noise/signal vs the float graph this variant quantizes (after any ReLU6 swap)"),
        f"# five worst layer groups: {worst_source}",
        "worst_layers = [",
        *[f"  {toml_value(w)}," for w in q["worst_layers"]],
        "]",
        "",
        "[model]",
        line("espdl_bytes", m["espdl_bytes"], "size of the .espdl file"),
        line("parameter_bytes", m["parameter_bytes"], "weights + biases as stored in the .espdl"),
        line("macs", m["macs"], "multiply-accumulates per inference (Conv, Gemm)"),
        line("int16_macs", m["int16_macs"], "of which in 16-bit layers"),
        line("int16_ops", m["int16_ops"], "ops dispatched to the S3 int16 platform (ESPDL_S3_H_PRE_INT16)"),
        line("peak_activation_bytes", m["peak_activation_bytes"], "estimate: max over ops of live activation bytes"),
    ]
    if any("[budgets." in ln for ln in head):
        raise ValueError("the identity part of a .info must not contain a [budgets. table")
    tail = []
    if set(budgets) != set(BUDGETS):
        raise ValueError(f"a .info needs exactly the budgets {', '.join(BUDGETS)}, got {', '.join(budgets)}")
    for name in BUDGETS:
        tail += ["", f"[budgets.{name}]".ljust(40) + f" # {BUDGET_NOTES[name]}"]
        tail += [toml_line(k, v, BUDGET_KEY_NOTES.get(k, "")) for k, v in budgets[name].items()]
    return "\n".join(head + tail) + "\n" + (render_build(build) if build else "")


# the [build] table: what `quant firmware` measured of the test app it built with this .espdl embedded
BUILD_TABLE = "[build]"
BUILD_KEY_NOTES = {
    "provenance": "'build': read off a real ESP-IDF build (esp-idf-size), not estimated",
    "espdl_sha256": "the .espdl the app embeds (a rebuild keeps this table while the .espdl is the same)",
    "idf_version": "ESP-IDF of the build",
    "compiler": "the toolchain of the build",
    "components": "ESP-IDF components in the build",
    "app_bytes": "the app image (gesture_test_app.bin); the build fails when it exceeds the partition",
    "app_partition_bytes": "the factory app partition (firmware/partitions.csv)",
    "memory": "static use per memory type, esp-idf-size --format json2 (bytes)",
}


def render_build(record: Mapping) -> str:
    lines = ["", BUILD_TABLE.ljust(40) + " # the test app built with this .espdl embedded (written by `quant firmware`)"]
    lines += [toml_line(k, v, BUILD_KEY_NOTES.get(k, "")) for k, v in record.items()]
    return "\n".join(lines) + "\n"


def _without_build(text: str) -> str:
    """The .info text without its [build] table (the table is last: see the digest contract)."""
    cut = text.find("\n" + BUILD_TABLE)
    return text if cut < 0 else text[: cut + 1].rstrip("\n") + "\n"


def read_build(variant: str, models: Path = MODELS) -> dict | None:
    """The [build] record of a variant's .info, or None when its test app was never measured."""
    build = _parse_info(variant_file(variant, ".info", models)).get("build")
    return build if isinstance(build, dict) else None


def kept_build(variant: str, models: Path, espdl_sha: str) -> dict | None:
    """The [build] record of an existing variant folder if it was measured with the .espdl `espdl_sha`."""
    try:
        build = read_build(variant, models)
    except UserError:
        return None
    return build if build and build.get("espdl_sha256") == espdl_sha else None


def record_build(variant: str, models: Path, record: Mapping) -> Path:
    """Replace the [build] table of a variant's .info with `record` (the rest is kept byte for byte)."""
    path = variant_file(variant, ".info", models)
    out = _without_build(path.read_text()) + render_build(record)
    if tomllib.loads(out).get("build") != stable(dict(record)):  # never write a file we cannot read back exactly
        raise UserError(f"could not write the [build] table of {path}; rebuild it with `quant build`")
    write_text_atomic(path, out)
    return path


def info_digest(path_or_text: Path | str) -> str:
    """sha256 of a .info's identity part (before `BUDGETS_MARKER`; see the module doc)."""
    text = path_or_text if isinstance(path_or_text, str) else Path(path_or_text).read_text()
    cut = text.find(BUDGETS_MARKER)
    return hashlib.sha256((text if cut < 0 else text[: cut + 1]).encode()).hexdigest()


def _parse_info(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run `quant build` to produce the variant folder") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc}): rebuild it with `quant build`") from None


def _budget_records(path: Path, doc: Mapping) -> dict[str, Budget]:
    out = {}
    for name in BUDGETS:
        table = (doc.get("budgets") or {}).get(name)
        if not isinstance(table, dict) or "value" not in table:
            raise UserError(f"{path} has no [budgets.{name}] value: rebuild it with `quant build`")
        out[name] = Budget(name, int(table["value"]), table.get("basis"), table.get("headroom"),
                           str(table.get("provenance", "unknown")), str(table.get("method", "")))
    return out


def read_info(variant: str, models: Path = MODELS) -> Info:
    path = variant_file(variant, ".info", models)
    doc = _parse_info(path)
    for table in ("quality", "model"):
        if not isinstance(doc.get(table), dict):
            raise UserError(f"{path} has no [{table}] table: rebuild it with `quant build`")
    return Info(path, str(doc.get("variant", variant)), doc["quality"], doc["model"], _budget_records(path, doc))


def load_budgets(variant: str, models: Path = MODELS) -> dict[str, Budget]:
    """The budgets of a variant's .info (needs only the [budgets.*] tables)."""
    path = variant_file(variant, ".info", models)
    return _budget_records(path, _parse_info(path))


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rewrite_budgets(text: str, updates: Mapping[str, Mapping[str, Any]]) -> str:
    """Rewrite the values of [budgets.<name>] keys in a .info text, keeping everything else (comments,
    spacing, order, the identity part) byte for byte; missing keys are appended to their table."""
    import re

    key_line = re.compile(r'^(\s*([A-Za-z0-9_]+)\s*=\s*)("(?:[^"\\]|\\.)*"|[^\s#]+)(.*)$', re.S)
    cut = text.find(BUDGETS_MARKER)
    if cut < 0:
        raise UserError("the .info has no [budgets.*] tables: rebuild it with `quant build`")
    identity, lines = text[: cut + 1], text[cut + 1:].splitlines(keepends=True)
    for name, values in updates.items():
        header = f"[budgets.{name}]"
        start = next((i for i, ln in enumerate(lines) if ln.split("#")[0].strip() == header), None)
        if start is None:
            raise UserError(f"the .info has no {header} table: rebuild it with `quant build`")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        pending = dict(values)
        last_key = start
        for i in range(start + 1, end):
            m = key_line.match(lines[i])
            if not m:
                continue
            last_key = i
            if m.group(2) in pending:
                head, value, rest = m.group(1), toml_value(pending.pop(m.group(2))), m.group(4)
                comment = rest.lstrip(" \t")
                if comment.startswith("#"):  # keep the comment's column when there is room
                    column = len(head) + len(m.group(3)) + len(rest) - len(comment)
                    rest = " " * max(1, column - len(head) - len(value)) + comment
                lines[i] = head + value + rest
        if pending:
            if not lines[last_key].endswith("\n"):
                lines[last_key] += "\n"
            lines[last_key + 1:last_key + 1] = [f"{k} = {toml_value(v)}\n" for k, v in pending.items()]
    out = identity + "".join(lines)
    doc = tomllib.loads(out)  # never write a file we cannot read back exactly
    for name, values in updates.items():
        for k, v in values.items():
            if doc["budgets"][name][k] != stable(v):
                raise UserError(f"could not rewrite budgets.{name}.{k} in the .info text; edit it by hand")
    return out


def measured_budgets(variant: str, models: Path, espdl_sha: str) -> dict:
    """The measured budgets of an existing variant folder, if its .espdl is `espdl_sha` (else {})."""
    try:
        if read_meta(variant, models)["hashes"]["espdl"] != espdl_sha:
            return {}
        budgets = load_budgets(variant, models)
    except (UserError, KeyError, TypeError):
        return {}
    return {k: b.as_table() for k, b in budgets.items() if b.provenance == "measured"}


# ------------------------------------------------------------------------------------ .json


def dump_json(doc: Any) -> str:
    """The one JSON form of a variant .json: sorted keys, indent 2, floats at the stable precision."""
    return json.dumps(stable(doc), indent=2, sort_keys=True) + "\n"


def read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing ({what}): run `quant build` to produce the variant folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): rebuild it with `quant build`") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not a JSON object ({what}): rebuild it with `quant build`")
    return doc


def read_meta(variant: str, models: Path = MODELS) -> dict:
    """A variant's .json (spec, platform, calibration, tolerance, hashes, ...)."""
    return read_json(variant_file(variant, ".json", models), "the model config")


def load_expectations(variant: str, models: Path = MODELS) -> tuple[dict, dict]:
    """(reference document, model config document) of a variant."""
    ref_path = variant_file(variant, ".reference.json", models)
    ref = read_json(ref_path, "the simulator reference")
    cfg = read_meta(variant, models)
    if not isinstance(ref.get("outputs"), list):
        raise UserError(f"{ref_path} has no 'outputs' list: rebuild it")
    return ref, cfg


def present(models: Path, names=None) -> list[str]:
    """The variants (in VARIANTS order) whose .info and .json exist under `models`."""
    return [v for v in (names or VARIANTS)
            if variant_file(v, ".info", models).is_file() and variant_file(v, ".json", models).is_file()]


# ------------------------------------------------------------------------------------ fixed vectors

VECTOR_SHAPE = (1, 1, 96, 96)


def vectors_doc(x: np.ndarray, meta: list[dict]) -> dict:
    return {
        "format": 1,
        "shape": list(VECTOR_SHAPE),
        "dtype": "float32",
        "count": len(meta),
        "vectors": meta,
        "sha256": hashlib.sha256(np.asarray(x, "<f4").tobytes()).hexdigest(),
    }


def write_vectors(models: Path, x: np.ndarray, meta: list[dict]) -> tuple[Path, Path]:
    """Write a models folder's test_vectors.bin (raw little-endian float32, no header) and .json."""
    bin_path, meta_path = vectors_files(models)
    Path(models).mkdir(parents=True, exist_ok=True)
    write_bytes = np.asarray(x, "<f4").tobytes()
    fd, tmp = tempfile.mkstemp(prefix=f".{bin_path.name}.", dir=bin_path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(write_bytes)
    os.replace(tmp, bin_path)
    write_text_atomic(meta_path, json.dumps(vectors_doc(x, meta), indent=2) + "\n")
    return bin_path, meta_path


def load_vectors(models: Path = MODELS) -> tuple[np.ndarray, list[dict]]:
    """Read and check a models folder's fixed vectors -> (x [N,1,96,96] float32, meta)."""
    bin_path, meta_path = vectors_files(models)
    fix = (f"make them with `quant vectors --data DIR --models-dir {models}`"
           + (" or restore them from git" if is_default(models) else ""))
    for p in (bin_path, meta_path):
        if not p.is_file():
            raise UserError(f"test vectors file {p} is missing; {fix}")
    try:
        doc = json.loads(meta_path.read_text())
        vectors, expected_sha = doc["vectors"], doc["sha256"]
        shape = tuple(doc["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{meta_path} is not a valid test-vector description ({exc}); {fix}") from None
    if shape != VECTOR_SHAPE or doc.get("dtype") != "float32":
        raise UserError(f"{meta_path} describes {shape} {doc.get('dtype')}, expected {VECTOR_SHAPE} float32; {fix}")
    raw = bin_path.read_bytes()
    per = int(np.prod(VECTOR_SHAPE)) * 4
    if len(raw) != per * len(vectors):
        raise UserError(f"{bin_path} has {len(raw)} bytes, expected {per * len(vectors)} for {len(vectors)} vectors; {fix}")
    if hashlib.sha256(raw).hexdigest() != expected_sha:
        raise UserError(f"{bin_path} does not match the sha256 in {meta_path}; {fix}")
    x = np.frombuffer(raw, "<f4").reshape(len(vectors), *VECTOR_SHAPE[1:]).astype(np.float32)
    return x, vectors
