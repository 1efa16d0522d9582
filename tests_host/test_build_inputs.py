"""Bad input to `quant build`: one line naming problem and fix, exit 2, no traceback, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.folder import REPO


def tiny_onnx(path: Path, shape=(1, 1, 96, 96), classes=8) -> Path:
    """A valid float model: Conv -> GlobalAveragePool -> Flatten, input `image`, output `logits`."""
    w = numpy_helper.from_array(np.ones((classes, shape[1], 3, 3), np.float32) * 0.01, "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["logits"], name="flat")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def build(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, "-m", "quant", "build", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def good_onnx(tmp_path):
    return tiny_onnx(tmp_path / "good.onnx")


def assert_user_error(proc, *needles, out: Path | None = None):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for n in needles:
        assert n in lines[0], lines[0]
    if out is not None:
        assert not list(out.glob("*gesture_model_*")), "partial output written"


def test_three_channel_model_is_rejected_with_its_shape(tmp_path):
    proc = build("--onnx", str(tiny_onnx(tmp_path / "rgb.onnx", (1, 3, 96, 96))), "--models-dir", str(tmp_path / "o"))
    assert_user_error(proc, "1x3x96x96 float32", "needs 1x1x96x96", "re-export", out=tmp_path / "o")


def test_64x64_model_is_rejected_with_its_shape(tmp_path):
    proc = build("--onnx", str(tiny_onnx(tmp_path / "small.onnx", (1, 1, 64, 64))), "--models-dir", str(tmp_path / "o"))
    assert_user_error(proc, "1x1x64x64", "re-export", out=tmp_path / "o")


def test_a_file_that_is_not_onnx_is_rejected(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a protobuf\n" * 10)
    assert_user_error(build("--onnx", str(fake), "--models-dir", str(tmp_path / "o")), "is not an ONNX model", "--onnx")


def test_missing_model_file_is_named(tmp_path):
    assert_user_error(build("--onnx", str(tmp_path / "nope.onnx")), "does not exist", "--onnx")


def test_unknown_variant_lists_the_known_ones(good_onnx):
    assert_user_error(build("--variant", "int4", "--onnx", str(good_onnx)), "'int4'", "int8, mixed, balanced")


def test_zero_jobs_is_refused(tmp_path, good_onnx):
    assert_user_error(build("--jobs", "0", "--onnx", str(good_onnx), "--models-dir", str(tmp_path / "m")),
                      "--jobs 0", "--jobs 1 or more", out=tmp_path)


def test_the_variants_fall_in_groups_that_share_work():
    from quant.variants import build as qbuild
    from quant.variants import specs

    groups = qbuild.share_groups([specs.get(n) for n in ("int8", "balanced", "mixed")])
    assert [[s.name for s in g] for g in groups] == [["int8", "mixed"], ["balanced"]]


def test_missing_data_folder(tmp_path, good_onnx):
    proc = build("--onnx", str(good_onnx), "--data", str(tmp_path / "none"), "--models-dir", str(tmp_path / "o"))
    assert_user_error(proc, "does not exist", "--data", out=tmp_path / "o")


def test_empty_data_folder(tmp_path, good_onnx):
    (tmp_path / "empty").mkdir()
    proc = build("--onnx", str(good_onnx), "--data", str(tmp_path / "empty"), "--models-dir", str(tmp_path / "o"))
    assert_user_error(proc, "no class sub-folders", out=tmp_path / "o")


def test_folder_without_readable_images(tmp_path, good_onnx):
    cls = tmp_path / "data" / "fist"
    cls.mkdir(parents=True)
    (cls / "a.png").write_bytes(b"not a png")
    (cls / "notes.txt").write_text("hello")
    proc = build("--onnx", str(good_onnx), "--data", str(tmp_path / "data"), "--models-dir", str(tmp_path / "o"))
    assert_user_error(proc, "no readable images", out=tmp_path / "o")


def test_output_folder_that_cannot_be_written(tmp_path, good_onnx):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(build("--onnx", str(good_onnx), "--models-dir", str(blocker / "models")), "cannot be written", "--models-dir")


def test_class_count_must_match_the_model(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", classes=3)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "data" / name / f"{i}.png"), np.full((20, 30), 40 * i, np.uint8))
    proc = build("--onnx", str(model), "--data", str(tmp_path / "data"), "--models-dir", str(tmp_path / "o"))
    assert_user_error(proc, "3 outputs", "2 classes", out=tmp_path / "o")


def test_too_few_calibration_images(tmp_path, good_onnx):
    assert_user_error(build("--onnx", str(good_onnx), "--calib", "3", "--models-dir", str(tmp_path / "o")),
                      "3 calibration images are too few", "at least 8", out=tmp_path / "o")


def test_a_dynamic_batch_dimension_is_accepted(tmp_path):
    from quant.variants.build import check_onnx

    path = tiny_onnx(tmp_path / "dyn.onnx", ("N", 1, 96, 96))
    assert check_onnx(path) == ("image", ("logits",), 8)


def _images(root: Path, per_class: int, classes=("a", "b")) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i}.png"), np.full((20, 30), 40 * i + 7, np.uint8))
    return root


def test_too_small_a_data_folder_asks_for_images_whatever_calib_says(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", classes=2)
    data = _images(tmp_path / "data", per_class=1)
    for calib in ([], ["--calib", "8"], ["--calib", "4"], ["--calib", "1"]):
        proc = build("--onnx", str(model), "--data", str(data), *calib, "--models-dir", str(tmp_path / "o"))
        assert_user_error(proc, "has 2 images", "needs at least 9", "add images", out=tmp_path / "o")
        assert "--calib" not in proc.stderr.split(":", 2)[-1]  # no hint to another --calib that is refused too
        assert not (tmp_path / "o").exists()


def test_calib_out_of_range_names_the_one_range_that_works(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", classes=2)
    data = _images(tmp_path / "data", per_class=5)
    for calib in ("4", "10"):
        proc = build("--onnx", str(model), "--data", str(data), "--calib", calib, "--models-dir", str(tmp_path / "o"))
        assert_user_error(proc, f"--calib {calib}", "pass --calib between 8 and 9", out=tmp_path / "o")
        assert not (tmp_path / "o").exists()
