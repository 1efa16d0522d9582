"""The synthetic gesture data and user image folders."""

import cv2
import numpy as np
import pytest

from quant.variants import data
from quant.errors import UserError


def test_synthetic_is_identical_for_the_same_seed_and_differs_for_another():
    a, ya = data.synthetic(24, seed=11)
    b, yb = data.synthetic(24, seed=11)
    c, _ = data.synthetic(24, seed=12)
    assert a.tobytes() == b.tobytes() and np.array_equal(ya, yb)
    assert all(not np.array_equal(a[i], c[i]) for i in range(24))


def test_a_shorter_stream_is_a_prefix_of_a_longer_one():
    short, _ = data.synthetic(5, seed=3)
    long, _ = data.synthetic(17, seed=3)
    assert short.tobytes() == long[:5].tobytes()


def test_synthetic_images_are_float32_in_unit_range_with_balanced_int64_labels():
    x, y = data.synthetic(10 * len(data.CLASSES), seed=5)
    assert x.shape == (80, 1, 96, 96) and x.dtype == np.float32
    assert y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y, minlength=len(data.CLASSES)).tolist() == [10] * len(data.CLASSES)
    assert len(set(data.CLASSES)) == len(data.CLASSES) >= 7
    assert data.CLASSES[:6] == tuple(f"fingers_{k}" for k in range(6))


def test_every_image_shows_a_hand_that_stands_out_from_the_background():
    x, _ = data.synthetic(16, seed=9)
    assert all(float(img.std()) > 0.05 for img in x)


def test_the_data_streams_are_disjoint():
    seeds = {data.TRAIN_SEED, data.CALIB_SEED, data.HELDOUT_SEED}
    assert len(seeds) == 3
    t, _ = data.synthetic(8, data.TRAIN_SEED)
    c, _ = data.calibration(8)
    h, _ = data.heldout(8)
    assert not np.array_equal(t, c) and not np.array_equal(c, h) and not np.array_equal(t, h)


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_image_folder_of_any_format_size_and_colour_loads_as_96x96_gray(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "b_open" / "1.png", rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))
    _write(tmp_path / "b_open" / "2.jpg", rng.integers(0, 256, (50, 40), dtype=np.uint8))
    _write(tmp_path / "a_fist" / "x.bmp", np.full((96, 96, 3), 255, np.uint8))
    _write(tmp_path / "a_fist" / "y.png", np.zeros((300, 17, 4), np.uint8))
    _write(tmp_path / "a_fist" / "z.PNG", np.full((10, 10), 65535, np.uint16))
    (tmp_path / "a_fist" / "notes.txt").write_text("not an image")
    x, y, classes = data.load_image_folder(tmp_path)
    assert classes == ("a_fist", "b_open")
    assert x.shape == (5, 1, 96, 96) and x.dtype == np.float32
    assert y.tolist() == [0, 0, 0, 1, 1]
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[0], 1.0)  # white bmp
    np.testing.assert_allclose(x[1], 0.0)  # black BGRA png
    np.testing.assert_allclose(x[2], 1.0)  # 16-bit white png
    gray = cv2.cvtColor(cv2.imread(str(tmp_path / "b_open" / "1.png")), cv2.COLOR_BGR2GRAY)
    expected = cv2.resize(gray.astype(np.float32) / 255.0, (96, 96), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(x[3, 0], expected, atol=1e-6)


def test_unreadable_files_are_skipped_when_the_class_has_a_readable_image(tmp_path):
    _write(tmp_path / "c" / "good.png", np.zeros((20, 20), np.uint8))
    (tmp_path / "c" / "broken.jpg").write_bytes(b"not a jpeg")
    x, y, classes = data.load_image_folder(tmp_path)
    assert (len(x), classes) == (1, ("c",))


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_image_folder(tmp_path / "nope")


def test_a_file_instead_of_a_folder_is_a_user_error(tmp_path):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="is not a folder"):
        data.load_image_folder(f)


def test_a_folder_without_class_subfolders_is_a_user_error(tmp_path):
    _write(tmp_path / "loose.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError, match="no class sub-folders"):
        data.load_image_folder(tmp_path)


def test_a_class_without_readable_images_is_a_user_error_naming_it(tmp_path):
    _write(tmp_path / "good" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="empty_class has no readable images") as err:
        data.load_image_folder(tmp_path)
    assert "\n" not in str(err.value)


def test_split_is_deterministic_disjoint_and_keeps_the_rest_for_heldout():
    x = np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1)
    y = np.arange(20, dtype=np.int64)
    cx, hx, hy = data.split(x, y, calib_n=6, seed=4)
    cx2, hx2, hy2 = data.split(x, y, calib_n=6, seed=4)
    assert np.array_equal(cx, cx2) and np.array_equal(hx, hx2)
    assert len(cx) == 6 and len(hx) == 14
    assert np.array_equal(hx.ravel(), hy.astype(np.float32))  # labels follow their images
    assert sorted(cx.ravel().tolist() + hx.ravel().tolist()) == list(range(20))


@pytest.mark.parametrize("calib_n", [0, 20, 25])
def test_split_without_images_for_both_parts_is_a_user_error(calib_n):
    x, y = np.zeros((20, 1, 96, 96), np.float32), np.zeros(20, np.int64)
    with pytest.raises(UserError, match="--calib"):
        data.split(x, y, calib_n=calib_n, seed=0)
