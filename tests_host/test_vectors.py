"""The fixed test vectors shared by every variant."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from quant.variants import data

from quant.variants import vectors
from quant.errors import UserError
from quant.folder import MODELS, VECTORS_BIN, VECTORS_META


def test_committed_vectors_match_make_vectors_byte_for_byte():
    x, meta = vectors.make_vectors()
    assert VECTORS_BIN.read_bytes() == x.astype("<f4").tobytes()
    doc = json.loads(VECTORS_META.read_text())
    assert doc["vectors"] == meta
    assert doc["sha256"] == hashlib.sha256(VECTORS_BIN.read_bytes()).hexdigest()
    assert (doc["format"], doc["shape"], doc["dtype"]) == (1, [1, 1, 96, 96], "float32")


def test_vectors_are_a_small_set_of_unit_range_images_with_a_gesture_first():
    x, meta = vectors.load_vectors()
    assert 8 <= len(x) <= 12 and x.shape[1:] == (1, 96, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert meta[0]["kind"] == "gesture"
    gestures = [m for m in meta if m["kind"] == "gesture"]
    assert len({m["label"] for m in gestures}) == len(gestures) >= 3
    assert {m["name"] for m in meta} >= {"zeros", "ones", "gradient_h", "checkerboard", "noise_uniform"}
    assert all(m["label"] is None for m in meta if m["kind"] == "pattern")


def test_gesture_vectors_are_heldout_images_with_their_labels():
    x, meta = vectors.load_vectors()
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
        vectors.load_vectors(tmp_path)


def test_a_truncated_vector_file_is_a_user_error(tmp_path):
    shutil.copy(MODELS / vectors.META_NAME, tmp_path / vectors.META_NAME)
    (tmp_path / vectors.BIN_NAME).write_bytes(VECTORS_BIN.read_bytes()[:-4])
    with pytest.raises(UserError, match="bytes, expected"):
        vectors.load_vectors(tmp_path)


def test_missing_vector_files_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is missing"):
        vectors.load_vectors(tmp_path)
