"""`quant firmware [--models-dir DIR]`: build the ESP-IDF test app once per variant -> firmware/build_esp32s3_<variant>/.

Needs an installed ESP-IDF (>= 5.3) exported in the shell (`. $IDF_PATH/export.sh`). Each variant is
one `idf.py` build of firmware/ with `sdkconfig.defaults;sdkconfig.ci.<variant>`, the same folders
and configurations that `idf-build-apps build` (CI, .idf_build_apps.toml) produces. The app embeds the
variant's .espdl and the fixed vectors of the models folder DIR (default models/), passed to CMake as
the cache variable GM_MODELS_DIR (firmware/main/CMakeLists.txt).

Used by the target tests at a bench (quant.board.boards.ChipBoard): `needs_build(variant, models)` says
why a build folder is missing or stale (None when it is up to date) and `build(variant, models)` rebuilds it.
After each build `idf.py size --format json2` gives the app's real sizes: the build fails when the app does
not fit, and a chip build's figures become the `[build]` table of the variant's .info (quant.folder.record_build).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from quant.errors import UserError
from quant import folder as qf
from quant.folder import VARIANTS

TARGET = "esp32s3"
PROJECT = "gesture_test_app"  # project() in firmware/CMakeLists.txt: the app binary is <PROJECT>.bin
FIRMWARE_SOURCES = (
    "CMakeLists.txt",
    "version.txt",
    "partitions.csv",
    "sdkconfig.defaults",
    f"sdkconfig.defaults.{TARGET}",
)
INSTALL_HINT = (
    "install ESP-IDF >= 5.3 and export it in this shell ('. $IDF_PATH/export.sh'); "
    "see docs/firmware.md, 'Building'"
)


QEMU_CONFIG = "sdkconfig.qemu"  # layered last for a QEMU build (DIO flash, one timed run per vector)


def build_dir(variant: str, qemu: bool = False) -> Path:
    """firmware/build_esp32s3_<variant>: idf-build-apps' build_@t_@w, what pytest-embedded flashes
    (`qemu`: firmware/build_esp32s3_<variant>_qemu, the same app configured for Espressif's QEMU)."""
    return qf.FIRMWARE / f"build_{TARGET}_{variant}{'_qemu' if qemu else ''}"


EXTRA_ENV = "QUANT_SDKCONFIG_EXTRA"  # ';'-separated sdkconfig files of this machine, layered after ours


def local_configs() -> list[Path]:
    """This machine's own sdkconfig overrides ($QUANT_SDKCONFIG_EXTRA), e.g. what a locally built ESP-IDF
    or toolchain needs; they are layered last and count as sources of the build."""
    return [Path(p).resolve() for p in os.environ.get(EXTRA_ENV, "").split(";") if p.strip()]


def config_files(variant: str, qemu: bool = False) -> list[str]:
    """SDKCONFIG_DEFAULTS of a build, in order (ESP-IDF adds each file's .esp32s3 sibling itself)."""
    return ["sdkconfig.defaults", f"sdkconfig.ci.{variant}", *([QEMU_CONFIG] if qemu else []),
            *(str(p) for p in local_configs())]


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise UserError(f"unknown variant '{variant}'; use one of {', '.join(VARIANTS)}")


def _rel(path: Path) -> str:
    try:
        return str(Path(path).relative_to(qf.REPO))
    except ValueError:
        return str(path)


def _models(models: Path | None) -> Path:
    return Path(models if models is not None else qf.MODELS).resolve()


def configured_models(folder: Path) -> Path | None:
    """The GM_MODELS_DIR a build folder was configured with (its CMakeCache.txt), or None if unknown."""
    try:
        text = (folder / "CMakeCache.txt").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("GM_MODELS_DIR:"):
            return Path(line.split("=", 1)[1]).resolve()
    return None


def sources(variant: str, models: Path | None = None, qemu: bool = False) -> list[Path]:
    """Every file a variant's build depends on: its .espdl, the vectors and the firmware sources."""
    _check_variant(variant)
    models = _models(models)
    files = [qf.variant_file(variant, ".espdl", models), models / qf.VECTORS_BIN.name,
             models / qf.VECTORS_META.name]
    files += [qf.FIRMWARE / name for name in (*FIRMWARE_SOURCES, f"sdkconfig.ci.{variant}",
                                               *([QEMU_CONFIG] if qemu else []))]
    files += local_configs()
    files += sorted(p for p in (qf.FIRMWARE / "main").iterdir() if p.is_file())
    return files


def needs_build(variant: str, models: Path | None = None, qemu: bool = False) -> str | None:
    """Why firmware/build_esp32s3_<variant>[_qemu] must be (re)built for the models folder `models`, or None
    when it is up to date."""
    models = _models(models)
    folder = build_dir(variant, qemu)
    app = folder / f"{PROJECT}.bin"
    for required in (folder / "flasher_args.json", app, folder / "config" / "sdkconfig.json"):
        if not required.is_file():
            return f"{_rel(folder)} has no {required.relative_to(folder)} (not built yet)"
    built = app.stat().st_mtime
    embedded = configured_models(folder)
    if embedded is not None and embedded != models:
        return f"{_rel(folder)} embeds the models of {_rel(embedded)}, not {_rel(models)}"
    for src in sources(variant, models, qemu):
        if not src.exists():
            return f"{_rel(src)} is missing"
        if src.stat().st_mtime > built:
            return f"{_rel(src)} is newer than {_rel(app)}"
    configured = json.loads((folder / "config" / "sdkconfig.json").read_text()).get("GM_VARIANT")
    if configured != variant:
        return f"{_rel(folder)} was configured for variant {configured!r}"
    return None


def idf_command() -> list[str]:
    """The idf.py command of the exported ESP-IDF; UserError when ESP-IDF is not installed/exported."""
    idf_path = os.environ.get("IDF_PATH")
    if not idf_path:
        raise UserError(f"building the firmware needs ESP-IDF, and IDF_PATH is not set: {INSTALL_HINT}")
    idf_py = Path(idf_path) / "tools" / "idf.py"
    if not idf_py.is_file():
        raise UserError(f"IDF_PATH={idf_path} has no tools/idf.py: {INSTALL_HINT}")
    # export.sh records ESP-IDF's own Python environment; idf.py needs it (not this project's venv)
    env_python = Path(os.environ.get("IDF_PYTHON_ENV_PATH", "")) / "bin" / "python"
    if os.environ.get("IDF_PYTHON_ENV_PATH") and env_python.is_file():
        return [str(env_python), str(idf_py)]
    on_path = shutil.which("idf.py")
    if on_path:
        return [on_path]
    raise UserError(f"ESP-IDF at {idf_path} is not exported in this shell (no idf.py on PATH): {INSTALL_HINT}")


def build(variant: str, models: Path | None = None, qemu: bool = False) -> Path:
    """Build one variant's test app, embedding the models folder `models` (default models/), into
    firmware/build_esp32s3_<variant> (`qemu`: <...>_qemu with sdkconfig.qemu layered last); returns that folder."""
    _check_variant(variant)
    models = _models(models)
    command = idf_command()
    for src in sources(variant, models, qemu):
        if not src.exists():
            raise UserError(f"{_rel(src)} is missing: produce the models first "
                            f"(`quant build --variant {variant} --models-dir {_rel(models)}`, or 'make models')")
    folder = build_dir(variant, qemu)
    folder.mkdir(parents=True, exist_ok=True)
    # defaults only fill options an existing sdkconfig lacks: start a fresh one when they changed
    sdkconfig = folder / "sdkconfig"
    defaults = [*qf.FIRMWARE.glob("sdkconfig.defaults*"), *(qf.FIRMWARE / n for n in config_files(variant, qemu)),
                qf.FIRMWARE / "main" / "Kconfig.projbuild"]
    if sdkconfig.exists() and any(d.stat().st_mtime > sdkconfig.stat().st_mtime for d in defaults):
        sdkconfig.unlink()
    command += [
        "-C", str(qf.FIRMWARE),
        "-B", str(folder),
        f"-DIDF_TARGET={TARGET}",
        f"-DSDKCONFIG={folder / 'sdkconfig'}",
        f"-DSDKCONFIG_DEFAULTS={';'.join(config_files(variant, qemu))}",
        f"-DGM_MODELS_DIR={models}",
    ]
    print(f"[firmware] {variant}: {' '.join(command + ['build'])}", flush=True)
    result = subprocess.run(command + ["build"], cwd=qf.FIRMWARE, check=False)
    if result.returncode != 0:
        raise UserError(
            f"the {variant} firmware build failed (idf.py exit {result.returncode}); "
            f"see the output above and {_rel(folder / 'log')}"
        )
    reason = needs_build(variant, models, qemu)
    if reason:
        raise UserError(f"the {variant} firmware build finished but is incomplete: {reason}")
    # esp-idf-size's figures of the app just built (ESP-IDF's own `idf.py size`, its json2 summary)
    size = subprocess.run(command + ["size", "--format", "json2", "--output-file", str(folder / SIZE_FILE)],
                          cwd=qf.FIRMWARE, check=False, capture_output=True, text=True)
    if size.returncode != 0 or not (folder / SIZE_FILE).is_file():
        last = ((size.stderr or size.stdout).strip().splitlines() or ["no output"])[-1]
        fix = ("ESP-IDF 5.x's `idf.py size` needs esp-idf-size 1.x (2.x has no esp_idf_size.ng): "
               "`python -m pip install 'esp-idf-size<2'` in ESP-IDF's Python environment" if "Legacy esp-idf-size" in last
               else "install ESP-IDF's Python requirements (esp-idf-size) with its install.sh")
        raise UserError(f"the {variant} firmware built, but `idf.py size` failed (exit {size.returncode}: {last}); {fix}")
    record = build_record(variant, folder, models)
    print(f"[firmware] {variant}: {describe(record)}", flush=True)
    over = [m for m in record["memory"] if m["total"] and m["used"] > m["total"]]
    misfit = None
    if record["app_bytes"] > record["app_partition_bytes"]:
        misfit = (f"the {variant} app is {record['app_bytes']} B, more than its {record['app_partition_bytes']} B "
                  f"factory partition (firmware/partitions.csv): make the model smaller or the partition larger "
                  f"(the flash is {FLASH_BYTES // 2**20} MB)")
    elif over:
        misfit = (f"the {variant} app does not fit the chip's {over[0]['name']}: {over[0]['used']} B of "
                  f"{over[0]['total']} B (esp-idf-size, {_rel(folder / SIZE_FILE)})")
    if misfit:
        (folder / f"{PROJECT}.bin").unlink()  # never flashed as if it were built (needs_build: not built)
        raise UserError(misfit)
    if not qemu:  # the QEMU configuration is not the app a chip runs: its sizes stay in its build folder
        qf.record_build(variant, models, record)
    return folder


SIZE_FILE = "size.json"  # `idf.py size --format json2` of a build, in its build folder
FLASH_BYTES = 8 * 2**20  # CONFIG_ESPTOOLPY_FLASHSIZE_8MB (sdkconfig.defaults.esp32s3)


def _csv_int(text: str) -> int:
    """A partition-table number: decimal or 0x hex, optionally with a K or M suffix (ESP-IDF's gen_esp32part)."""
    t = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20}.get(t[-1:], 1)
    t = t[:-1] if scale > 1 else t
    return int(t, 16 if t.startswith("0X") else 10) * scale


def app_partition_bytes() -> int:
    """The size of the factory app partition of firmware/partitions.csv."""
    for line in (qf.FIRMWARE / "partitions.csv").read_text().splitlines():
        cells = [c.strip() for c in line.split("#", 1)[0].split(",")]
        if len(cells) >= 5 and cells[1] == "app" and cells[2] == "factory":
            return _csv_int(cells[4])
    raise UserError("firmware/partitions.csv has no factory app partition: add one (see docs/firmware.md)")


def _compiler(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0].strip() if out.strip() else "unknown"


def build_record(variant: str, folder: Path, models: Path | None = None) -> dict:
    """The [build] record of a finished build folder: app image vs partition, and esp-idf-size's static use
    per memory type (what `quant firmware` writes into the variant's .info)."""
    models = _models(models)
    try:
        size = json.loads((folder / SIZE_FILE).read_text())
        layout = size["layout"]
        desc = json.loads((folder / "project_description.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{_rel(folder)} has no readable {SIZE_FILE} / project_description.json ({exc}): "
                        f"rebuild it with `quant firmware --variant {variant}`") from None
    return {
        "provenance": "build",
        "espdl_sha256": qf.sha256_file(qf.variant_file(variant, ".espdl", models)),
        "idf_version": str(desc.get("git_revision", "unknown")),
        "compiler": _compiler(str(desc.get("c_compiler", ""))),
        "components": len(desc.get("build_components") or []),
        "app_bytes": (folder / f"{PROJECT}.bin").stat().st_size,
        "app_partition_bytes": app_partition_bytes(),
        "memory": [{"name": str(m["name"]), "used": int(m["used"]), "total": int(m["total"])} for m in layout
                   if m.get("used") or m.get("total")],
    }


def describe(record: dict) -> str:
    """One line of a [build] record: the app vs its partition, then each memory type's static use."""
    app, part = record["app_bytes"], record["app_partition_bytes"]
    mem = ", ".join(f"{m['name']} {m['used']:,}" + (f" of {m['total']:,}" if m["total"] else "") for m in record["memory"])
    return f"app {app:,} B of the {part:,} B partition ({1 - app / part:.0%} free); static use: {mem} B"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, metavar="V",
        help=f"build only this variant (repeatable; default: all of {', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=None, metavar="DIR",
        help="the models folder whose variants and fixed vectors the app embeds (default: models/)",
    )
    parser.add_argument(
        "--qemu", action="store_true",
        help=f"build for Espressif's QEMU instead of a chip: firmware/build_{TARGET}_<variant>_qemu, "
             f"with firmware/{QEMU_CONFIG} layered last (docs/qemu.md)",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="do not build: say which build folders are missing or stale (exit 1 if any); needs no ESP-IDF",
    )


def run(args) -> int:
    variants = tuple(dict.fromkeys(args.variant or VARIANTS))
    models = _models(args.models_dir)
    if not models.is_dir():
        raise UserError(f"--models-dir {args.models_dir} is not a folder: give the folder `quant build --models-dir` wrote")
    if args.check:
        stale = 0
        for variant in variants:
            reason = needs_build(variant, models, args.qemu)
            stale += reason is not None
            print(f"{variant}: up to date ({_rel(build_dir(variant, args.qemu))})" if reason is None else f"{variant}: needs a build: {reason}")
        return 1 if stale else 0
    idf_command()  # fail before building anything when ESP-IDF is missing
    for variant in variants:
        folder = build(variant, models, args.qemu)
        print(f"[firmware] {variant}: built {_rel(folder)}")
    return 0
