"""`quant build` is deterministic, incremental and atomic.

One real, small build is shared by the tests: variant int8 on a tiny user data folder, with the spec
made cheap for the test (one calibration candidate; no quality floor, since 8 held-out images cannot
measure a 1-point drop). The pipeline code is the real one.
"""

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from quant import folder as qf
from quant.variants import build as qbuild
from quant.variants import data
from quant.errors import UserError
from quant.variants.specs import get

ONNX, VECTORS = qf.FLOAT_ONNX, qf.MODELS
STEM = "gesture_model_int8"
SUFFIXES = qf.SUFFIXES
needs_float_model = pytest.mark.skipif(not ONNX.is_file() or not qf.VECTORS_BIN.is_file(),
                                       reason="models/gesture_float.onnx and models/test_vectors.bin not built yet")


def cheap(spec):
    """The int8 spec made cheap: one calibration candidate, no quality floor (as CHEAP_INT8 does)."""
    return dataclasses.replace(spec, floor_drop_points=100.0,
                               calibration=dataclasses.replace(spec.calibration, candidates=("minmax",)))


# `quant build ARGS` through the real argument parser, with build.run(specs=[cheap int8]) (no global is changed)
CHEAP_INT8 = """
import dataclasses, sys
from quant.cli import _parser
from quant.errors import UserError
from quant.variants import build, specs
spec = specs.get("int8")
cheap = dataclasses.replace(spec, floor_drop_points=100.0,
                            calibration=dataclasses.replace(spec.calibration, candidates=("minmax",)))
args = _parser().parse_args(["build", *sys.argv[1:]])
try:
    rc = build.run(args, specs=[cheap])
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    rc = 2
print("imported:", sorted(m for m in ("esp_ppq", "torch") if m in sys.modules))
sys.exit(rc)
"""


def seed_vectors(models: Path) -> Path:
    """A models folder with the default fixed vectors (folders are self-contained)."""
    import shutil

    models.mkdir(parents=True, exist_ok=True)
    for p in (qf.VECTORS_BIN, qf.VECTORS_META):
        shutil.copyfile(p, models / p.name)
    return models


def quant_build(*args):
    """`quant build ARGS` with the cheap int8 spec, in a fresh interpreter with PYTHONHASHSEED=0."""
    args = (*args, "--onnx", str(ONNX))
    return subprocess.run([sys.executable, "-c", CHEAP_INT8, *args], cwd=qf.REPO,
                          env=dict(os.environ, PYTHONHASHSEED="0"), capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """2 synthetic images per class, as PNG files in class folders."""
    root = tmp_path_factory.mktemp("data")
    x, y = data.synthetic(2 * len(data.CLASSES), seed=11)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / data.CLASSES[label]
        d.mkdir(exist_ok=True)
        cv2.imwrite(str(d / f"{i:03d}.png"), np.round(img[0] * 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def first_build(tmp_path_factory, images):
    out = seed_vectors(tmp_path_factory.mktemp("out1"))
    proc = quant_build("--variant", "int8", "--data", str(images), "--calib", "8", "--models-dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


@needs_float_model
def test_a_build_writes_all_five_files_and_prints_the_table(first_build):
    out, proc = first_build
    assert sorted(p.name for p in (out / STEM).iterdir()) == sorted(STEM + s for s in SUFFIXES)
    assert "calibration minmax" in proc.stdout and re.search(r"^int8 +\d", proc.stdout, re.M), proc.stdout
    assert not list(out.glob(".*")), "staging left behind"


@needs_float_model
def test_two_builds_are_byte_identical(first_build, images, tmp_path):
    out1, _ = first_build
    proc = quant_build("--variant", "int8", "--data", str(images), "--calib", "8", "--models-dir",
                       str(seed_vectors(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(tmp_path / STEM) == snapshot(out1 / STEM)


@needs_float_model
def test_a_new_folder_gets_vectors_from_the_users_images(images, tmp_path):
    from quant.variants import vectors

    out = tmp_path / "mine"
    proc = quant_build("--variant", "int8", "--data", str(images), "--calib", "8", "--models-dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    x, meta = qf.load_vectors(out)
    expected_x, expected_meta = vectors.make_user_vectors(data.load_image_folder(images))
    assert meta == expected_meta and meta[0]["kind"] == "image" and (x == expected_x).all()
    ref = __import__("json").loads((out / STEM / f"{STEM}.reference.json").read_text())
    assert ref["vectors_sha256"] == qf.sha256_file(out / "test_vectors.bin")
    check = quant_build("--variant", "int8", "--data", str(images), "--calib", "8", "--models-dir", str(out), "--check")
    assert check.returncode == 0 and f"checking {out.resolve()}" in check.stdout, check.stdout + check.stderr
    other = quant_build("--variant", "int8", "--models-dir", str(out), "--check")  # the default data: not this folder's
    assert other.returncode == 2 and "was built from other data" in other.stderr and "stale" not in other.stdout


@needs_float_model
def test_a_rebuild_with_nothing_changed_does_not_quantize(first_build, images):
    out, _ = first_build
    before = snapshot(out / STEM)
    proc = quant_build("--variant", "int8", "--data", str(images), "--calib", "8", "--models-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "int8: up to date" in proc.stdout and "imported: []" in proc.stdout
    assert snapshot(out / STEM) == before


@needs_float_model
def test_a_changed_input_is_rebuilt(first_build, images, tmp_path):
    import shutil

    shutil.copytree(first_build[0] / STEM, tmp_path / STEM)
    spec = get("int8")
    v = qf.sha256_file(first_build[0] / "test_vectors.bin")
    key = qbuild.build_key(_args(images, tmp_path, calib=8), cheap(spec), v)
    assert qbuild.up_to_date(tmp_path / STEM, STEM, key)
    assert not qbuild.up_to_date(tmp_path / STEM, STEM, qbuild.build_key(_args(images, tmp_path, calib=9), cheap(spec), v))
    assert not qbuild.up_to_date(tmp_path / STEM, STEM, qbuild.build_key(_args(images, tmp_path, calib=8), spec, v))
    assert not qbuild.up_to_date(tmp_path / STEM, STEM, qbuild.build_key(_args(images, tmp_path, calib=8), cheap(spec), "0" * 64))
    (tmp_path / STEM / f"{STEM}.espdl").write_bytes(b"EDL2 damaged")
    assert not qbuild.up_to_date(tmp_path / STEM, STEM, key)


def _args(images, out, calib):
    return argparse.Namespace(variant=["int8"], onnx=ONNX, data=images, calib=calib, models_dir=out, check=False)


@needs_float_model
@pytest.mark.parametrize("failure", ["interrupt", "gate"])
def test_a_failed_build_leaves_the_last_good_folder(first_build, images, tmp_path, monkeypatch, failure):
    import shutil

    from quant.variants import quantize

    shutil.copytree(first_build[0] / STEM, tmp_path / STEM)
    seed_vectors(tmp_path)
    before = snapshot(tmp_path / STEM)
    espdl = tmp_path / "x.espdl"
    espdl.write_bytes(b"EDL2")

    monkeypatch.setattr(quantize.Quantizer, "__init__", lambda self, inputs, workdir: setattr(self, "inputs", inputs))
    monkeypatch.setattr(quantize.Quantizer, "run", lambda self, spec: argparse.Namespace(
        spec=spec, sensitivity=None, attempt=argparse.Namespace(espdl=espdl)))

    def measure(quantizer, result, ctx, key, kept, kept_build=None):
        return argparse.Namespace(quality={"top1_drop_points": 5.0, "float_top1": 0.99, "top1": 0.94,
                                           "worst_layers": [{"op": "/stem/Conv", "noise_signal": 0.5}]})

    def write_variant(files, folder, stem, key):
        (folder / f"{stem}.espdl").write_bytes(b"half-written")
        if failure == "interrupt":
            raise KeyboardInterrupt

    monkeypatch.setattr(qbuild, "measure", measure)
    monkeypatch.setattr(qbuild, "serialise", lambda m: {})
    monkeypatch.setattr(qbuild, "write_variant", write_variant)
    args = _args(images, tmp_path, calib=9)  # a different input: the folder is stale
    expected = KeyboardInterrupt if failure == "interrupt" else UserError
    with pytest.raises(expected) as exc:
        qbuild.run(args)
    if failure == "gate":
        assert "variant int8: top-1 drop 5.00 points exceeds its floor of 1.0" in str(exc.value)
        assert "/stem/Conv" in str(exc.value)
    assert snapshot(tmp_path / STEM) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([STEM, "x.espdl", "test_vectors.bin", "test_vectors.json"])


def test_an_interrupted_swap_is_recovered(tmp_path):
    target = tmp_path / STEM
    target.mkdir()
    (target / "a").write_text("old")
    staging = tmp_path / f".{STEM}.staging-1"
    staging.mkdir()
    (staging / "a").write_text("new")
    os.replace(target, tmp_path / f".{STEM}.old-1")  # the first rename of replace_dir, then a crash
    qbuild.recover(tmp_path, "int8")
    assert (target / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [STEM]
    staging.mkdir()
    (staging / "a").write_text("new")
    qbuild.replace_dir(staging, target)
    assert (target / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [STEM]


@needs_float_model
def test_measured_budgets_survive_and_do_not_make_the_folder_stale(first_build, images, tmp_path):
    import json
    import shutil

    from quant.folder import measured_budgets, rewrite_budgets

    shutil.copytree(first_build[0] / STEM, tmp_path / STEM)
    info = tmp_path / STEM / f"{STEM}.info"
    measured = {"value": 999, "basis": 900, "headroom": 0.11, "provenance": "measured", "method": "board=test"}
    info.write_text(rewrite_budgets(info.read_text(), {"latency_us": measured}))
    key = json.loads((tmp_path / STEM / f"{STEM}.json").read_text())["hashes"]["build"]
    assert qbuild.up_to_date(tmp_path / STEM, STEM, key)
    espdl_sha = qbuild._sha_file(tmp_path / STEM / f"{STEM}.espdl")
    assert measured_budgets("int8", tmp_path, espdl_sha) == {"latency_us": measured}
    assert measured_budgets("int8", tmp_path, "0" * 64) == {}  # another model: estimates again
