"""The ESP-IDF test app (firmware/) is complete and agrees with the Python side.

No ESP-IDF is needed. The syntax check against the real ESP-IDF/ESP-DL headers and the
idf-build-apps discovery run when the trees are available (FWCHECK_IDF, FWCHECK_ESPDL,
FWCHECK_SCRIPT; see docs/firmware.md) and are skipped with that instruction otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import quant
import quant.errors
from quant import folder as qf
from quant.board import firmware

FW = qf.FIRMWARE
MAIN = FW / "main"
APP = MAIN / "app_main.cpp"
KCONFIG = MAIN / "Kconfig.projbuild"
IDF_TREE = Path(os.environ.get("FWCHECK_IDF", "/work/scratch/esp-idf"))
ESPDL_TREE = Path(os.environ.get("FWCHECK_ESPDL", "/work/scratch/esp-dl"))
SYNTAX_SCRIPT = Path(os.environ.get("FWCHECK_SCRIPT") or next(
    (p for p in (qf.REPO.parent / "shared" / "tools" / "firmware_syntax.sh",
                 Path("/work/shared/tools/firmware_syntax.sh")) if p.is_file()),
    Path("firmware_syntax.sh (not found)")))
TREES_HOWTO = (
    "needs ESP-IDF and ESP-DL source trees and firmware_syntax.sh: set FWCHECK_IDF, FWCHECK_ESPDL and "
    "FWCHECK_SCRIPT (see docs/firmware.md, 'Checking the sources without a toolchain')"
)


def _sdkconfig(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip('"')
    return out


def _kconfig_options() -> dict[str, dict]:
    """GM_* options of Kconfig.projbuild: name -> {type, default, choice}."""
    options, current, choice = {}, None, None
    for raw in KCONFIG.read_text().splitlines():
        line = raw.strip()
        if m := re.match(r"^choice (\w+)", line):
            choice, current = {"name": m.group(1), "default": None}, None
            continue
        if line == "endchoice":
            choice, current = None, None
            continue
        if m := re.match(r"^config (\w+)", line):
            current = options[m.group(1)] = {"type": None, "default": None, "choice": choice}
            continue
        if m := re.match(r"^(bool|int|string)\b", line):
            if current is not None:
                current["type"] = m.group(1)
            continue
        if m := re.match(r"^default (.+)$", line):
            if choice is not None and current is None:
                choice["default"] = m.group(1)
            elif current is not None:
                current["default"] = m.group(1)
    return options


def _kconfig_defines() -> list[str]:
    """-D flags for the Kconfig defaults, as sdkconfig.h would define them (bool n -> absent)."""
    flags = []
    for name, opt in _kconfig_options().items():
        if opt["choice"] is not None:
            if opt["choice"]["default"] == name:
                flags.append(f"-DCONFIG_{name}=1")
        elif opt["type"] == "bool":
            if opt["default"] == "y":
                flags.append(f"-DCONFIG_{name}=1")
        else:
            flags.append(f"-DCONFIG_{name}={opt['default']}")
    return flags


def _need_models(*files: Path) -> None:
    missing = [str(f.relative_to(qf.REPO)) for f in files if not f.exists()]
    if missing:
        pytest.skip(f"models not produced yet ({', '.join(missing)}): run 'make models'")


# ------------------------------------------------------------------ configurations and constants


def test_one_ci_config_per_variant_naming_that_variant():
    configs = {p.name.removeprefix("sdkconfig.ci."): p for p in FW.glob("sdkconfig.ci.*")}
    assert sorted(configs) == sorted(qf.VARIANTS)
    for variant, path in configs.items():
        assert _sdkconfig(path)["CONFIG_GM_VARIANT"] == variant, f"{path.name} builds another variant"
    for path in [*FW.glob("sdkconfig.ci.*"), *FW.glob("sdkconfig.defaults*"), FW / "sdkconfig.qemu"]:
        assert "CONFIG_GM_SELFTEST_ONLY" not in _sdkconfig(path), f"{path.name}: a calibration build runs no vectors"


def test_firmware_version_is_the_quant_version():
    assert (FW / "version.txt").read_text().strip() == quant.__version__


def test_project_name_gives_the_app_binary_quant_firmware_looks_for():
    m = re.search(r"^project\((\w+)\)", (FW / "CMakeLists.txt").read_text(), re.M)
    assert m and m.group(1) == firmware.PROJECT


def test_cmake_embeds_the_files_quant_folder_names():
    text = (MAIN / "CMakeLists.txt").read_text()
    sets = dict(re.findall(r'^set\((gm_model|gm_vectors_bin|gm_vectors_json) "([^"]+)"\)', text, re.M))
    default = re.search(r'^set\(GM_MODELS_DIR "\$\{CMAKE_CURRENT_LIST_DIR\}/([^"]+)" CACHE PATH', text, re.M)
    assert default, "GM_MODELS_DIR must be a CMake cache variable defaulting to the repository's models/"
    assert (MAIN / default.group(1)).resolve() == qf.MODELS
    for variant in qf.VARIANTS:
        model = sets["gm_model"].replace("${gm_models}", str(qf.MODELS)).replace("${gm_variant}", variant)
        assert Path(model) == qf.variant_file(variant, ".espdl")
    assert Path(sets["gm_vectors_bin"].replace("${gm_models}", str(qf.MODELS))) == qf.VECTORS_BIN
    assert Path(sets["gm_vectors_json"].replace("${gm_models}", str(qf.MODELS))) == qf.VECTORS_META
    # the embedded symbols the app declares are the ones CMake creates
    for name in re.findall(r"RENAME_TO (\w+)\)", text):
        assert f'asm("_binary_{name}_start")' in APP.read_text()
        assert f'asm("_binary_{name}_end")' in APP.read_text()


def test_build_sources_quant_firmware_watches_exist():
    for name in firmware.FIRMWARE_SOURCES:
        assert (FW / name).is_file(), f"quant.board.firmware watches firmware/{name}, which does not exist"
    srcs = re.search(r"SRCS ([^\n]+)", (MAIN / "CMakeLists.txt").read_text()).group(1)
    for src in re.findall(r'"([^"]+)"', srcs):
        assert (MAIN / src).is_file(), f"main/CMakeLists.txt compiles {src}, which does not exist"


def test_every_kconfig_option_the_sources_use_is_declared_and_every_declared_one_is_used():
    declared = {f"CONFIG_{name}" for name in _kconfig_options()}
    texts = [APP.read_text(), (MAIN / "CMakeLists.txt").read_text()]
    texts += [p.read_text() for p in FW.glob("sdkconfig.*")]
    used = set()
    for text in texts:
        used |= set(re.findall(r"\bCONFIG_GM_\w+", text))
    assert used <= declared, f"used but not in Kconfig.projbuild: {sorted(used - declared)}"
    in_code = set(re.findall(r"\bCONFIG_GM_\w+", texts[0] + texts[1]))
    assert declared <= in_code, f"declared but never used by the app: {sorted(declared - in_code)}"


def test_app_prints_the_tags_and_fields_of_docs_protocol():
    doc = (qf.REPO / "docs" / "protocol.md").read_text()
    table = {}
    for tag, fields in re.findall(r"^\| `([A-Z]+)` \| ([^|]*)\|", doc, re.M):
        fields = re.sub(r"\([^)]*\)", "", fields)  # "(`pass`/`fail`)" lists values, not fields
        table[tag] = set(re.findall(r"`([a-z0-9_]+)(?:=[^`]*)?`", fields))
    app = APP.read_text()
    printed = {}
    for tag, body in re.findall(r'em\.begin\("([A-Z]+)"\);(.*?)em\.end\(\);', app, re.S):
        printed.setdefault(tag, set()).update(re.findall(r'em\.field(?:_u)?\("([a-z0-9_]+)"', body))
    assert printed, "no em.begin(...) ... em.end() blocks found in app_main.cpp"
    for tag, fields in printed.items():
        assert tag in table, f"app_main.cpp prints {tag}, which docs/protocol.md does not define"
        assert fields == table[tag], f"{tag}: app prints {sorted(fields)}, protocol.md says {sorted(table[tag])}"
    stages = set(re.findall(r'mem_line\(em, "([a-z_]+)"', app))
    assert stages == {"before_load", "after_load", "after_runs", "low_water"}
    assert "@gm1" not in app, "protocol lines come from result_protocol.cpp only"


def test_partitions_hold_the_app_with_model_and_vectors_inside_the_flash():
    rows = [r for r in csv.reader(io.StringIO((FW / "partitions.csv").read_text()))
            if r and not r[0].lstrip().startswith("#")]
    parts = {r[0].strip(): (int(r[3], 0), int(r[4], 0)) for r in rows}
    flash = _sdkconfig(FW / "sdkconfig.defaults.esp32s3")
    flash_mb = [int(k.split("_")[-1][:-2]) for k in flash if re.match(r"CONFIG_ESPTOOLPY_FLASHSIZE_\d+MB$", k)]
    assert len(flash_mb) == 1
    end = 0
    for name, (offset, size) in sorted(parts.items(), key=lambda kv: kv[1][0]):
        assert offset >= end, f"partition {name} overlaps the one before it"
        end = offset + size
    assert end <= flash_mb[0] << 20, "partition table is larger than the configured flash"
    offset, size = parts["factory"]
    assert offset % 0x10000 == 0, "app partitions must be 64 KB aligned"
    espdl = [qf.variant_file(v, ".espdl") for v in qf.VARIANTS]
    _need_models(*espdl, qf.VECTORS_BIN)
    embedded = max(f.stat().st_size for f in espdl) + qf.VECTORS_BIN.stat().st_size
    code_allowance = 3 << 20  # ESP-IDF + ESP-DL code: an estimate (ESP-DL's own apps use 2-8 MB app partitions)
    assert embedded + code_allowance <= size, (
        f"factory partition ({size} B) too small for {embedded} B of model+vectors plus {code_allowance} B of code"
    )


def test_vectors_satisfy_the_firmware_build_rules():
    _need_models(qf.VECTORS_META, qf.VECTORS_BIN)
    doc = json.loads(qf.VECTORS_META.read_text())
    assert doc["format"] == 1 and doc["dtype"] == "float32" and len(doc["shape"]) == 4
    elements = doc["shape"][1] * doc["shape"][2] * doc["shape"][3]
    assert qf.VECTORS_BIN.stat().st_size == len(doc["vectors"]) * elements * 4
    for v in doc["vectors"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", v["name"]), f"vector name {v['name']!r} breaks gm_vectors.h"
    for variant in qf.VARIANTS:
        meta = qf.variant_file(variant, ".json")
        if meta.exists():
            shape = json.loads(meta.read_text())["input"]["shape_nchw"]
            assert shape[1] * shape[2] * shape[3] == elements, f"{variant}: model input size != vector size"


# ------------------------------------------------------------------ quant firmware


def test_quant_firmware_without_esp_idf_says_how_to_get_it():
    env = {k: v for k, v in os.environ.items() if k not in ("IDF_PATH", "IDF_PYTHON_ENV_PATH")}
    result = subprocess.run([sys.executable, "-m", "quant", "firmware"], capture_output=True, text=True,
                            env=env, cwd=qf.REPO, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "ESP-IDF" in result.stderr and "export.sh" in result.stderr


FAKE_IDF_PY = r'''#!{python}
import json, os, pathlib, sys
args = sys.argv[1:]
build = pathlib.Path(args[args.index("-B") + 1])
if "size" in args:  # `idf.py size --format json2 --output-file F`: esp-idf-size's summary of the app built
    layout = [{{"name": "DIRAM", "used": 90000, "total": 341760}}, {{"name": "IRAM", "used": 16384, "total": 16384}},
              {{"name": "Flash Code", "used": int(os.environ.get("FAKE_APP_BYTES", "3")), "total": 0}},
              {{"name": "RTC SLOW", "used": 0, "total": 0}}]
    pathlib.Path(args[args.index("--output-file") + 1]).write_text(json.dumps({{"version": "1.2", "layout": layout}}))
    sys.exit(0)
defaults = next(a for a in args if a.startswith("-DSDKCONFIG_DEFAULTS=")).split("=", 1)[1]
variant = defaults.rsplit("sdkconfig.ci.", 1)[1].split(";")[0]
(build / "config").mkdir(parents=True, exist_ok=True)
(build / "config" / "sdkconfig.json").write_text(json.dumps({{"GM_VARIANT": variant}}))
(build / "flasher_args.json").write_text("{{}}")
(build / "gesture_test_app.bin").write_bytes(b"a" * int(os.environ.get("FAKE_APP_BYTES", "3")))
(build / "project_description.json").write_text(json.dumps({{"git_revision": "v5.5.5", "c_compiler": "",
                                                             "build_components": ["main", "esp-dl"]}}))
(build / "argv.json").write_text(json.dumps(args))
models = next(a for a in args if a.startswith("-DGM_MODELS_DIR=")).split("=", 1)[1]
(build / "CMakeCache.txt").write_text("GM_MODELS_DIR:PATH=" + models + "\n")  # as CMake records the cache variable
'''


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A copy of firmware/ with stand-in models, and an 'exported ESP-IDF' whose idf.py fakes a build."""
    import shutil

    from conftest import make_fake_models

    repo = tmp_path / "repo"
    shutil.copytree(FW, repo / "firmware", ignore=shutil.ignore_patterns("build*", "managed_components"))
    models = make_fake_models(repo / "models")
    (models / "test_vectors.bin").write_bytes(b"\0" * 16)
    (models / "test_vectors.json").write_text("{}")
    for name, value in {"REPO": repo, "MODELS": models, "FIRMWARE": repo / "firmware",
                        "VECTORS_BIN": models / "test_vectors.bin", "VECTORS_META": models / "test_vectors.json"}.items():
        monkeypatch.setattr(qf, name, value)
    idf = tmp_path / "idf"
    (idf / "tools").mkdir(parents=True)
    (idf / "tools" / "idf.py").write_text("")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "idf.py").write_text(FAKE_IDF_PY.format(python=sys.executable))
    (bindir / "idf.py").chmod(0o755)
    monkeypatch.setenv("IDF_PATH", str(idf))
    monkeypatch.delenv("IDF_PYTHON_ENV_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return repo


def test_build_runs_idf_py_per_variant_into_the_folder_pytest_embedded_reads(fake_repo):
    assert firmware.needs_build("mixed") == "firmware/build_esp32s3_mixed has no flasher_args.json (not built yet)"
    folder = firmware.build("mixed")
    assert folder == fake_repo / "firmware" / "build_esp32s3_mixed"
    argv = json.loads((folder / "argv.json").read_text())
    assert argv[-1] == "build" and "-DIDF_TARGET=esp32s3" in argv
    assert "-DSDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.ci.mixed" in argv
    assert f"-DGM_MODELS_DIR={fake_repo / 'models'}" in argv
    assert firmware.needs_build("mixed") is None


def test_quant_firmware_models_dir_embeds_that_folder_and_a_build_of_another_folder_is_stale(fake_repo, tmp_path):
    mine = tmp_path / "mine"
    shutil.copytree(fake_repo / "models", mine)
    firmware.build("int8")
    assert firmware.needs_build("int8", mine) == f"firmware/build_esp32s3_int8 embeds the models of models, not {mine}"
    import argparse

    parser = argparse.ArgumentParser()
    firmware.add_arguments(parser)  # what `quant firmware` parses
    assert firmware.run(parser.parse_args(["--variant", "int8", "--models-dir", str(mine)])) == 0
    argv = json.loads((firmware.build_dir("int8") / "argv.json").read_text())
    assert f"-DGM_MODELS_DIR={mine}" in argv
    assert firmware.needs_build("int8", mine) is None
    assert firmware.needs_build("int8") == f"firmware/build_esp32s3_int8 embeds the models of {mine}, not models"


def test_the_chip_board_builds_the_firmware_of_its_models_folder_before_flashing(fake_repo, tmp_path):
    from quant.board.boards import ChipBoard

    mine = tmp_path / "mine"
    shutil.copytree(fake_repo / "models", mine)
    board = ChipBoard(mine, port="/dev/ttyUSB0")
    assert board.build("int8") is None  # built now, with the folder in the command
    assert f"-DGM_MODELS_DIR={mine}" in json.loads((firmware.build_dir("int8") / "argv.json").read_text())
    assert board.build_dir("int8") == str(firmware.build_dir("int8"))
    shutil.rmtree(qf.variant_dir("mixed", mine))
    assert board.build("mixed").endswith(f"build it with `quant build --variant mixed --models-dir {mine}` "
                                         "(or test only the variants you built: -k)")


def test_a_changed_sdkconfig_default_starts_a_fresh_sdkconfig_and_an_unchanged_one_keeps_it(fake_repo):
    sdkconfig = firmware.build_dir("balanced") / "sdkconfig"
    sdkconfig.parent.mkdir(parents=True)
    sdkconfig.write_text("CONFIG_GM_RUNS=3\n")
    firmware.build("balanced")
    assert sdkconfig.exists(), "an sdkconfig newer than every default must be kept (incremental build)"
    os.utime(sdkconfig, (1, 1))  # now sdkconfig.ci.balanced & co. are newer
    firmware.build("balanced")
    assert not sdkconfig.exists()


def test_a_newer_model_makes_the_build_stale(fake_repo):
    firmware.build("int8")
    model = qf.variant_file("int8", ".espdl", qf.MODELS)
    app = firmware.build_dir("int8") / "gesture_test_app.bin"
    os.utime(model, (app.stat().st_mtime + 10, app.stat().st_mtime + 10))
    assert firmware.needs_build("int8") == (
        "models/gesture_model_int8/gesture_model_int8.espdl is newer than firmware/build_esp32s3_int8/gesture_test_app.bin"
    )


def test_a_build_folder_of_another_variant_is_stale(fake_repo):
    firmware.build("int8")
    config = firmware.build_dir("int8") / "config" / "sdkconfig.json"
    config.write_text(json.dumps({"GM_VARIANT": "balanced"}))
    os.utime(config, (0, 0))
    assert firmware.needs_build("int8") == "firmware/build_esp32s3_int8 was configured for variant 'balanced'"


def test_a_build_records_the_apps_real_sizes_in_the_info_and_keeps_everything_else(fake_repo, capsys):
    info = qf.variant_file("int8", ".info", qf.MODELS)
    before, budgets = info.read_text(), qf.load_budgets("int8", qf.MODELS)
    firmware.build("int8")
    after = info.read_text()
    assert after.startswith(before.rstrip("\n") + "\n\n[build]"), "only a [build] table is appended"
    assert qf.info_digest(after) == qf.info_digest(before)  # not damage, not a reason to rebuild
    assert qf.load_budgets("int8", qf.MODELS) == budgets
    record = qf.read_build("int8", qf.MODELS)
    assert record["provenance"] == "build" and record["idf_version"] == "v5.5.5" and record["components"] == 2
    assert record["app_bytes"] == 3 and record["app_partition_bytes"] == 0x700000  # firmware/partitions.csv
    assert record["espdl_sha256"] == qf.sha256_file(qf.variant_file("int8", ".espdl", qf.MODELS))
    assert [m["name"] for m in record["memory"]] == ["DIRAM", "IRAM", "Flash Code"]  # an all-zero type is dropped
    assert "app 3 B of the 7,340,032 B partition (100% free); static use: DIRAM 90,000 of 341,760" in capsys.readouterr().out
    firmware.build("int8")  # again: the table is replaced, not repeated
    assert info.read_text() == after


def test_a_qemu_build_keeps_its_sizes_in_its_build_folder(fake_repo):
    before = qf.variant_file("mixed", ".info", qf.MODELS).read_text()
    folder = firmware.build("mixed", qemu=True)
    assert (folder / firmware.SIZE_FILE).is_file()
    assert qf.variant_file("mixed", ".info", qf.MODELS).read_text() == before


def test_an_app_larger_than_its_partition_fails_the_build_and_leaves_the_info(fake_repo, monkeypatch):
    info = qf.variant_file("balanced", ".info", qf.MODELS)
    before = info.read_text()
    monkeypatch.setenv("FAKE_APP_BYTES", str(0x700000 + 1))
    with pytest.raises(quant.errors.UserError) as exc:
        firmware.build("balanced")
    assert str(exc.value) == ("the balanced app is 7340033 B, more than its 7340032 B factory partition "
                              "(firmware/partitions.csv): make the model smaller or the partition larger (the flash is 8 MB)")
    assert info.read_text() == before
    assert firmware.needs_build("balanced") == ("firmware/build_esp32s3_balanced has no gesture_test_app.bin "
                                                "(not built yet)")  # so no board flashes it


def test_the_qemu_boards_faults_are_made_from_the_real_qemu_builds(fake_repo):
    from target_fixtures import ESPDL, app_image

    from quant.board import flash_faults
    from quant.board.boards import QemuBoard

    stale = QemuBoard(qf.MODELS, fault="stale_image")
    assert stale.build("int8") == ("int8: the stale_image fault cannot be made: the stale_image fault flashes another "
                                   "variant's app, and no other variant's QEMU build is up to date: "
                                   "`quant firmware --qemu --variant mixed`")
    firmware.build("balanced", qemu=True)
    assert stale.build("int8") is None
    assert stale.build_dir("int8") == str(firmware.build_dir("balanced", qemu=True))  # flashes balanced's app

    qf.variant_file("int8", ".espdl", qf.MODELS).write_bytes(ESPDL)
    build = firmware.build("int8", qemu=True)
    (build / "gesture_test_app.bin").write_bytes(app_image())
    (build / "flasher_args.json").write_text(json.dumps({"app": {"offset": "0x10000", "file": "gesture_test_app.bin"},
                                                         "flash_files": {"0x10000": "gesture_test_app.bin"}}))
    refused = QemuBoard(qf.MODELS, fault="model_refused")
    assert refused.build("int8") is None
    folder = Path(refused.build_dir("int8"))
    assert folder == build.parent / "build_esp32s3_int8_qemu_fault_model_refused"
    app = (folder / "gesture_test_app.bin").read_bytes()
    assert flash_faults.is_sealed(app) and app[app.find(ESPDL[:4]) + 4] == 1
    assert (folder / "config" / "sdkconfig.json").is_file() and (folder / "project_description.json").is_file()
    assert (build / "gesture_test_app.bin").read_bytes() == app_image()  # the real build is untouched


def test_the_build_record_reads_what_esp_idf_size_really_writes(fake_repo):
    """tests_host/golden/esp_idf_size_1.7.1_int8_json2.json: `idf.py size --format json2` of the int8 app
    (ESP-IDF v5.5.5, esp-idf-size 1.7.1), the summary the [build] table is made of."""
    folder = firmware.build("int8")
    shutil.copyfile(Path(__file__).parent / "golden" / "esp_idf_size_1.7.1_int8_json2.json", folder / firmware.SIZE_FILE)
    memory = {m["name"]: (m["used"], m["total"]) for m in firmware.build_record("int8", folder)["memory"]}
    assert memory == {"Flash Code": (828796, 0), "Flash Data": (501756, 0), "DIRAM": (92795, 341760),
                      "RTC SLOW": (32, 8192), "RTC FAST": (24, 8192)}  # IRAM (0 of 0 on the S3) is dropped


def test_partition_sizes_are_read_as_esp_idf_reads_them():
    assert [firmware._csv_int(t) for t in ("0x700000", "7M", "28K", "4096", " 0x10000 ")] == [
        0x700000, 0x700000, 28 * 1024, 4096, 0x10000]


def test_update_budgets_and_a_rebuild_keep_the_build_record(fake_repo):
    firmware.build("int8")
    text = qf.variant_file("int8", ".info", qf.MODELS).read_text()
    record = qf.read_build("int8", qf.MODELS)
    rewritten = qf.rewrite_budgets(text, {"latency_us": {"value": 1234, "provenance": "measured"}})
    assert rewritten.endswith(text[text.index("\n[build]"):])  # the budgets' rewrite stops at [build]
    sha = record["espdl_sha256"]
    assert qf.kept_build("int8", qf.MODELS, sha) == record  # quant build keeps it while the .espdl is the same
    assert qf.kept_build("int8", qf.MODELS, "0" * 64) is None
    assert qf.kept_build("mixed", qf.MODELS, sha) is None  # never measured


# ------------------------------------------------------------------ with ESP-IDF / ESP-DL trees


def _trees_or_skip():
    if not (IDF_TREE / "components" / "esp_system").is_dir() or not ESPDL_TREE.is_dir() or not SYNTAX_SCRIPT.is_file():
        pytest.skip(f"firmware syntax check {TREES_HOWTO}")


@pytest.mark.parametrize("run_mode", ["GM_RUN_SINGLE_CORE", "GM_RUN_MULTI_CORE", "GM_RUN_SINGLE_CORE GM_SELFTEST_ONLY"])
def test_firmware_sources_compile_against_the_real_esp_idf_and_esp_dl_headers(tmp_path, run_mode):
    _trees_or_skip()
    names = ["stub"]
    if qf.VECTORS_META.exists():
        names = [v["name"] for v in json.loads(qf.VECTORS_META.read_text())["vectors"]]
    (tmp_path / "gm_vectors.h").write_text(  # what main/CMakeLists.txt generates
        f"#pragma once\n#define GM_VECTOR_COUNT {len(names)}\n#define GM_VECTOR_ELEMENTS 9216\n"
        "static const char *const kGmVectorNames[GM_VECTOR_COUNT] = {"
        + ", ".join(f'"{n}"' for n in names) + "};\n"
    )
    defines = [d for d in _kconfig_defines() if not d.startswith("-DCONFIG_GM_RUN_")] + [f"-DCONFIG_{m}=1" for m in run_mode.split()]
    env = dict(os.environ, FWCHECK_WERROR="1",
               FWCHECK_EXTRA_COMPONENTS="esp_driver_uart esp_driver_usb_serial_jtag vfs",
               FWCHECK_EXTRA_CXXFLAGS=" ".join([f"-I{tmp_path}", '-DGM_ESPDL_VERSION="3.3.9"', *defines]))
    sources = sorted(str(p) for p in MAIN.glob("*.cpp"))
    result = subprocess.run(["bash", str(SYNTAX_SCRIPT), str(IDF_TREE), str(ESPDL_TREE), *sources],
                            capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(sources)} passed, 0 failed" in result.stdout


def test_idf_build_apps_finds_one_app_per_variant():
    if not (IDF_TREE / "tools" / "idf_py_actions").is_dir():
        pytest.skip(f"idf-build-apps discovery {TREES_HOWTO}")
    env = dict(os.environ, IDF_PATH=str(IDF_TREE))
    result = subprocess.run([sys.executable, "-m", "idf_build_apps", "find"], capture_output=True, text=True,
                            env=env, cwd=qf.REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    found = sorted(re.findall(r"build in firmware/(build_esp32s3_\w+)", result.stdout))
    assert found == sorted(firmware.build_dir(v).name for v in qf.VARIANTS)


def test_sdkconfig_defaults_only_set_options_esp_idf_declares():
    """ESP-IDF ignores an unknown CONFIG_ in sdkconfig.defaults with a warning: a typo would go unnoticed."""
    if not (IDF_TREE / "Kconfig").is_file():
        pytest.skip(f"sdkconfig option check {TREES_HOWTO}")
    declared = set(_kconfig_options())
    for kconfig in [IDF_TREE / "Kconfig", *(IDF_TREE / "components").rglob("Kconfig*")]:
        if kconfig.is_file():
            declared |= set(re.findall(r"^\s*(?:menuconfig|config|choice)\s+(\w+)", kconfig.read_text(errors="replace"), re.M))
    for path in [*FW.glob("sdkconfig.defaults*"), *FW.glob("sdkconfig.ci.*")]:
        unknown = [k for k in _sdkconfig(path) if k.removeprefix("CONFIG_") not in declared]
        assert not unknown, f"{path.name} sets options ESP-IDF {IDF_TREE.name} does not declare: {unknown}"


# ------------------------------------------------------------------ main/CMakeLists.txt, run by the host's CMake

CMAKE_HARNESS = r"""
cmake_minimum_required(VERSION 3.19)
# stand-ins for the ESP-IDF build system functions main/CMakeLists.txt calls
set(CONFIG_GM_VARIANT "{variant}")
set(COMPONENT_LIB __idf_main)
function(idf_component_register)
endfunction()
function(idf_build_get_property var property)
    set(${{var}} "___idf_espressif__esp-dl" PARENT_SCOPE)
endfunction()
function(idf_component_get_property var component property)
    set(${{var}} "{espdl}" PARENT_SCOPE)
endfunction()
function(set_property)
endfunction()
function(target_include_directories)
endfunction()
function(target_compile_definitions target scope definition)
    file(APPEND "{calls}" "define ${{definition}}\n")
endfunction()
include("{main}/CMakeLists.txt")
"""

# ESP-DL's helper, recorded instead of generating assembly
FAKE_UTILITIES = r"""
function(target_add_aligned_binary_data target embed_file embed_type)
    cmake_parse_arguments(_ "" "RENAME_TO" "DEPENDS" ${ARGN})
    file(APPEND "CALLS" "embed ${embed_file} ${embed_type} ${__RENAME_TO}\n")
endfunction()
"""


def _cmake_or_skip() -> str:
    cmake = shutil.which("cmake")
    if not cmake:
        pytest.skip("main/CMakeLists.txt check needs cmake >= 3.19 on PATH (apt-get install cmake)")
    version = re.search(r"(\d+)\.(\d+)", subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout)
    if (int(version.group(1)), int(version.group(2))) < (3, 19):
        pytest.skip("main/CMakeLists.txt check needs cmake >= 3.19 (string(JSON))")
    return cmake


@pytest.fixture
def cmake_project(tmp_path):
    """firmware/main copied next to stand-in models and an esp-dl component folder; run(variant) configures it."""
    import hashlib

    cmake = _cmake_or_skip()
    repo = tmp_path / "repo"
    shutil.copytree(MAIN, repo / "firmware" / "main")
    models = repo / "models"
    qf.variant_file("int8", ".espdl", models).parent.mkdir(parents=True)
    qf.variant_file("int8", ".espdl", models).write_bytes(b"EDL2" + bytes(12))
    vectors = bytes(range(2 * 4 * 3 * 4))  # 2 vectors of [1,1,4,3] float32
    (models / "test_vectors.bin").write_bytes(vectors)
    doc = {"format": 1, "shape": [1, 1, 4, 3], "dtype": "float32", "sha256": hashlib.sha256(vectors).hexdigest(),
           "vectors": [{"name": "heldout_5_ok", "kind": "gesture", "label": 7},
                       {"name": "zeros", "kind": "pattern", "label": None}]}
    (models / "test_vectors.json").write_text(json.dumps(doc))
    espdl = tmp_path / "espressif__esp-dl"
    (espdl / "fbs_loader" / "cmake").mkdir(parents=True)
    (espdl / "idf_component.yml").write_text('version: "3.3.9"\nlicense: "MIT"\n')
    calls = tmp_path / "calls.txt"
    (espdl / "fbs_loader" / "cmake" / "utilities.cmake").write_text(FAKE_UTILITIES.replace("CALLS", str(calls)))
    out = tmp_path / "out"
    out.mkdir()

    def run(variant="int8", models_dir=None):
        calls.unlink(missing_ok=True)
        harness = tmp_path / "harness.cmake"
        harness.write_text(CMAKE_HARNESS.format(variant=variant, espdl=espdl, calls=calls, main=repo / "firmware" / "main"))
        given = [f"-DGM_MODELS_DIR={models_dir}"] if models_dir else []
        result = subprocess.run([cmake, *given, "-P", str(harness)], capture_output=True, text=True, cwd=out, timeout=60)
        result.stderr = " ".join(result.stderr.split())  # CMake wraps long messages
        return result, (calls.read_text() if calls.exists() else ""), out / "gm_vectors.h"

    run.repo, run.models = repo, models
    return run


def test_cmake_generates_the_vector_header_and_embeds_model_and_vectors(cmake_project):
    result, calls, header = cmake_project()
    assert result.returncode == 0, result.stderr
    text = header.read_text()
    assert "#define GM_VECTOR_COUNT 2\n" in text and "#define GM_VECTOR_ELEMENTS 12\n" in text
    assert '"heldout_5_ok",\n    "zeros",\n}' in text
    if shutil.which("g++"):
        check = subprocess.run(["g++", "-std=gnu++2b", "-fsyntax-only", "-Werror", "-x", "c++", "-"], input=(
            f'#include "{header}"\nstatic_assert(GM_VECTOR_COUNT * GM_VECTOR_ELEMENTS == 24);\n'
            "const char *first() { return kGmVectorNames[0]; }\n"), capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    models = cmake_project.models
    assert calls.splitlines() == [
        'define GM_ESPDL_VERSION="3.3.9"',
        f"embed {qf.variant_file('int8', '.espdl', models)} BINARY gm_model",
        f"embed {models / 'test_vectors.bin'} BINARY gm_vectors",
    ]


def test_cmake_refuses_vectors_that_do_not_match_their_json(cmake_project):
    (cmake_project.models / "test_vectors.bin").write_bytes(bytes(96))  # right size, wrong bytes
    result, _, _ = cmake_project()
    assert result.returncode != 0 and "does not match the sha256 in test_vectors.json" in result.stderr


def test_cmake_names_the_missing_model_and_the_command_that_makes_it(cmake_project):
    result, _, _ = cmake_project("mixed")
    assert result.returncode != 0
    assert "gesture_model_mixed.espdl is missing" in result.stderr and "make models" in result.stderr
    assert f"quant build --variant mixed --out {cmake_project.models}" in result.stderr


def test_cmake_embeds_the_folder_gm_models_dir_names(cmake_project, tmp_path):
    mine = tmp_path / "elsewhere"
    shutil.copytree(cmake_project.models, mine)
    shutil.rmtree(cmake_project.models)  # nothing may come from the default folder
    result, calls, _ = cmake_project(models_dir=mine)
    assert result.returncode == 0, result.stderr
    assert calls.splitlines()[1:] == [f"embed {qf.variant_file('int8', '.espdl', mine)} BINARY gm_model",
                                      f"embed {mine / 'test_vectors.bin'} BINARY gm_vectors"]
    result, _, _ = cmake_project(models_dir=tmp_path / "nowhere")
    assert result.returncode != 0 and "is not a folder" in result.stderr and "--models-dir" in result.stderr


def test_the_component_manifest_pins_every_component_exactly():
    """A user's build resolves the ESP-DL this project was checked against, not the registry's newest 3.3.x."""
    import yaml

    manifest = yaml.safe_load((Path(quant.__file__).resolve().parent.parent / "firmware" / "main" / "idf_component.yml").read_text())
    deps = {name: spec for name, spec in manifest["dependencies"].items() if name != "idf"}
    assert deps["espressif/esp-dl"] == "==3.3.9"
    assert {"espressif/dl_fft", "espressif/esp_new_jpeg"} <= set(deps)
    assert all(isinstance(spec, str) and spec.startswith("==") for spec in deps.values()), deps
