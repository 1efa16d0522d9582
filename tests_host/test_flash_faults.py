"""Faults made from a real build's flash for drills on the QEMU board: the patched app image is still one the
bootloader accepts (esptool's own image reader is the judge), and only the embedded model's mode word changes."""

import hashlib

import pytest
from esptool.bin_image import LoadFirmwareImage
from target_fixtures import ESPDL, app_image

from quant.board import flash_faults
from quant.errors import UserError

def esptool_accepts(data: bytes) -> bool:
    img = LoadFirmwareImage("esp32s3", data)
    ok = img.checksum == img.calculate_checksum()
    return ok and (not img.append_digest or img.stored_digest == img.calc_digest)


@pytest.mark.parametrize("digest", [True, False])
@pytest.mark.parametrize("fault", ["model_refused", "model_assert"])
def test_a_patched_image_is_an_app_image_esptool_accepts_with_only_the_mode_word_changed(fault, digest):
    image = app_image(digest=digest)
    assert esptool_accepts(image) and flash_faults.is_sealed(image)
    patched = flash_faults.patch_model_mode(image, ESPDL, flash_faults.MODE_WORD[fault])
    assert esptool_accepts(patched) and flash_faults.is_sealed(patched)
    at = image.find(ESPDL)
    changed = [i for i in range(len(image)) if image[i] != patched[i]]
    seal = len(image) - 33 if digest else len(image) - 1
    assert set(changed) - set(range(len(image) - 32, len(image))) <= {at + 4, seal}
    assert patched[at + 4:at + 8] == flash_faults.MODE_WORD[fault].to_bytes(4, "little")
    assert patched[:at + 4] == image[:at + 4] and patched[at + 8:seal] == image[at + 8:seal]


def test_an_image_that_does_not_embed_the_model_or_is_damaged_is_refused():
    image = app_image()
    with pytest.raises(UserError, match="does not embed the variant's .espdl exactly once"):
        flash_faults.patch_model_mode(image, b"EDL2" + b"\x07" * 64, 1)
    with pytest.raises(UserError, match="exactly once"):
        flash_faults.patch_model_mode(app_image(ESPDL + ESPDL), ESPDL, 1)
    broken = bytearray(image)
    broken[40] ^= 0xFF
    assert not esptool_accepts(bytes(broken)) and not flash_faults.is_sealed(bytes(broken))
    with pytest.raises(UserError, match="checksum or digest does not match before patching"):
        flash_faults.patch_model_mode(bytes(broken), ESPDL, 1)
    with pytest.raises(UserError, match="not an ESP-IDF app image"):
        flash_faults.patch_model_mode(b"\x00" * 64, ESPDL, 1)


def test_the_seal_is_the_one_esp_idf_documents():
    image = app_image()
    assert image[-32:] == hashlib.sha256(image[:-32]).digest()
    assert image[len(image) - 33] == flash_faults.checksum(image)
