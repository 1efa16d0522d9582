"""The fixed test vectors shared by every variant."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from quant.variants import data

from quant.variants import vectors
from quant.errors import UserError
from quant.folder import MODELS, VECTORS_BIN, VECTORS_META, load_vectors


def test_committed_vectors_match_make_vectors_byte_for_byte():
    x, meta = vectors.make_vectors()
    assert VECTORS_BIN.read_bytes() == x.astype("<f4").tobytes()
    doc = json.loads(VECTORS_META.read_text())
    assert doc["vectors"] == meta
    assert doc["sha256"] == hashlib.sha256(VECTORS_BIN.read_bytes()).hexdigest()
    assert (doc["format"], doc["shape"], doc["dtype"]) == (1, [1, 1, 96, 96], "float32")


def test_vectors_are_a_small_set_of_unit_range_images_with_a_gesture_first():
    x, meta = load_vectors()
    assert 8 <= len(x) <= 12 and x.shape[1:] == (1, 96, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert meta[0]["kind"] == "gesture"
    gestures = [m for m in meta if m["kind"] == "gesture"]
    assert len({m["label"] for m in gestures}) == len(gestures) >= 3
    assert {m["name"] for m in meta} >= {"zeros", "ones", "gradient_h", "checkerboard", "noise_uniform"}
    assert all(m["label"] is None for m in meta if m["kind"] == "pattern")


def test_gesture_vectors_are_heldout_images_with_their_labels():
    x, meta = load_vectors()
    hx, hy = data.heldout(max(vectors.GESTURE_INDICES) + 1)
    for k, i in enumerate(vectors.GESTURE_INDICES):
        assert np.array_equal(x[k], hx[i]) and meta[k]["label"] == int(hy[i])


def test_a_tampered_vector_file_is_a_user_error(tmp_path):
    for name in (vectors.BIN_NAME, vectors.META_NAME):
        shutil.copy(MODELS / name, tmp_path / name)
    raw = bytearray((tmp_path / vectors.BIN_NAME).read_bytes())
    raw[100] ^= 1
    (tmp_path / vectors.BIN_NAME).write_bytes(bytes(raw))
    with pytest.raises(UserError, match="does not match the sha256"):
        load_vectors(tmp_path)


def test_a_truncated_vector_file_is_a_user_error(tmp_path):
    shutil.copy(MODELS / vectors.META_NAME, tmp_path / vectors.META_NAME)
    (tmp_path / vectors.BIN_NAME).write_bytes(VECTORS_BIN.read_bytes()[:-4])
    with pytest.raises(UserError, match="bytes, expected"):
        load_vectors(tmp_path)


def test_missing_vector_files_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is missing"):
        load_vectors(tmp_path)


def _image_folder(root, per_class=(3, 2)):
    import cv2

    for c, n in zip(("open", "fist"), per_class):
        (root / c).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / c / f"{i}.png"), np.full((40, 50), 30 * i + 20 * len(c), np.uint8))
    return root


def test_quant_vectors_takes_the_users_images_first_then_the_patterns(tmp_path, quant_cli):
    imgs = _image_folder(tmp_path / "imgs")
    proc = quant_cli("vectors", "--data", str(imgs), "--count", "3", "--models-dir", str(tmp_path / "mine"))
    assert proc.returncode == 0, proc.stderr
    x, meta = load_vectors(tmp_path / "mine")
    assert [m["kind"] for m in meta] == ["image"] * 3 + ["pattern"] * 5
    assert [m["label"] for m in meta[:3]] == [0, 1, 0]  # one class after the other; vector 0 is a user image
    assert x.shape == (8, 1, 96, 96) and "embedded self-test input" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["--count", "9"], "has only 5 images; pass --count 5 or fewer"),
    (["--count", "0"], "pass --count between 1"),
    (["--models-dir", str(MODELS)], "default model's folder"),
])
def test_quant_vectors_bad_input_is_one_line_and_writes_nothing(tmp_path, quant_cli, args, needle):
    imgs = _image_folder(tmp_path / "imgs")
    before = VECTORS_BIN.read_bytes()
    if "--models-dir" not in args:
        args = [*args, "--models-dir", str(tmp_path / "mine")]
    proc = quant_cli("vectors", "--data", str(imgs), *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "mine").exists() and VECTORS_BIN.read_bytes() == before


def test_the_module_help_does_not_rewrite_the_committed_vectors(quant_cli):
    import subprocess
    import sys

    before = VECTORS_BIN.stat().st_mtime_ns, VECTORS_META.stat().st_mtime_ns
    for args in (["--help"], []):
        proc = subprocess.run([sys.executable, "-m", "quant.variants.vectors", *args], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert (VECTORS_BIN.stat().st_mtime_ns, VECTORS_META.stat().st_mtime_ns) == before
