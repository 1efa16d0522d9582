"""The fixed test vectors shared by every variant: models/test_vectors.bin + models/test_vectors.json.

Each vector is 1x1x96x96 float32 in [0, 1]. Vector 0 is a real gesture image: it is the one esp-ppq
embeds in the .espdl as ESP-DL's `model->test()` value. The .bin is raw little-endian float32,
vector after vector, no header (the firmware embeds it as is). Regenerate with
`python -m quant.variants.vectors` (deterministic: the committed files must not change).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from quant.errors import UserError
from quant.paths import MODELS

SHAPE = (1, 1, 96, 96)
NOISE_SEED = 7
CHECKER = 8  # checkerboard square size in pixels
# held-out images (index in the HELDOUT_SEED stream; its class is index % len(CLASSES))
GESTURE_INDICES = (5, 2, 6, 7)
BIN_NAME = "test_vectors.bin"
META_NAME = "test_vectors.json"


def _patterns() -> list[tuple[str, np.ndarray]]:
    h, w = SHAPE[2:]
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    return [
        ("zeros", np.zeros((h, w), np.float32)),
        ("ones", np.ones((h, w), np.float32)),
        ("gradient_h", np.broadcast_to(ramp[None, :], (h, w)).astype(np.float32)),
        ("checkerboard", (((yy // CHECKER) + (xx // CHECKER)) % 2).astype(np.float32)),
        ("noise_uniform", np.random.default_rng(NOISE_SEED).random((h, w), dtype=np.float32)),
    ]


def make_vectors() -> tuple[np.ndarray, list[dict]]:
    """(x [N,1,96,96] float32, meta [{name, kind, label}]): gestures first (vector 0 is a gesture)."""
    from quant.variants import data

    gx, gy = data.synthetic(max(GESTURE_INDICES) + 1, data.HELDOUT_SEED)
    images, meta = [], []
    for i in GESTURE_INDICES:
        label = int(gy[i])
        images.append(gx[i, 0])
        meta.append({"name": f"heldout_{i}_{data.CLASSES[label]}", "kind": "gesture", "label": label})
    for name, img in _patterns():
        images.append(img)
        meta.append({"name": name, "kind": "pattern", "label": None})
    x = np.stack(images)[:, None].astype("<f4")
    return x, meta


def _meta_doc(x: np.ndarray, meta: list[dict]) -> dict:
    return {
        "format": 1,
        "shape": list(SHAPE),
        "dtype": "float32",
        "count": len(meta),
        "vectors": meta,
        "sha256": hashlib.sha256(x.astype("<f4").tobytes()).hexdigest(),
    }


def write_vectors(directory=MODELS) -> tuple[Path, Path]:
    """Write test_vectors.bin and test_vectors.json into `directory`; returns their paths."""
    x, meta = make_vectors()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bin_path, meta_path = directory / BIN_NAME, directory / META_NAME
    bin_path.write_bytes(x.astype("<f4").tobytes())
    meta_path.write_text(json.dumps(_meta_doc(x, meta), indent=2) + "\n")
    return bin_path, meta_path


def load_vectors(models_dir=MODELS) -> tuple[np.ndarray, list[dict]]:
    """Read and check the committed vectors -> (x [N,1,96,96] float32, meta)."""
    models_dir = Path(models_dir)
    bin_path, meta_path = models_dir / BIN_NAME, models_dir / META_NAME
    fix = "restore it from git or regenerate with `python -m quant.variants.vectors`"
    for p in (bin_path, meta_path):
        if not p.is_file():
            raise UserError(f"test vectors file {p} is missing; {fix}")
    try:
        doc = json.loads(meta_path.read_text())
        vectors, expected_sha = doc["vectors"], doc["sha256"]
        shape = tuple(doc["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{meta_path} is not a valid test-vector description ({exc}); {fix}") from None
    if shape != SHAPE or doc.get("dtype") != "float32":
        raise UserError(f"{meta_path} describes {shape} {doc.get('dtype')}, expected {SHAPE} float32; {fix}")
    raw = bin_path.read_bytes()
    per = int(np.prod(SHAPE)) * 4
    if len(raw) != per * len(vectors):
        raise UserError(f"{bin_path} has {len(raw)} bytes, expected {per * len(vectors)} for {len(vectors)} vectors; {fix}")
    if hashlib.sha256(raw).hexdigest() != expected_sha:
        raise UserError(f"{bin_path} does not match the sha256 in {meta_path}; {fix}")
    x = np.frombuffer(raw, "<f4").reshape(len(vectors), *SHAPE[1:]).astype(np.float32)
    return x, vectors


if __name__ == "__main__":
    for path in write_vectors():
        print(f"wrote {path}")
