"""The fixed test vectors of a models folder: <models>/test_vectors.bin + test_vectors.json (read and
written by `quant.folder`), and `quant vectors`, which makes them from your own images.

Each vector is 1x1x96x96 float32 in [0, 1]: first real images of the model's classes, then the plain
patterns (zeros, ones, gradient, checkerboard, noise). Vector 0 is a real image: it is the one esp-ppq
embeds in the .espdl as ESP-DL's `model->test()` value. The default models/ folder holds held-out
synthetic gestures (`make_vectors`; rewrite them with `python -m quant.variants.vectors --write-default`,
deterministic: the committed files must not change); `quant vectors --data DIR --models-dir DIR` picks
one image per class in turn from your image folder instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from quant import folder
from quant.errors import UserError
from quant.folder import MODELS

SHAPE = (1, 1, 96, 96)
NOISE_SEED = 7
CHECKER = 8  # checkerboard square size in pixels
# held-out images (index in the HELDOUT_SEED stream; its class is index % len(CLASSES))
GESTURE_INDICES = (5, 2, 6, 7)
BIN_NAME, META_NAME = folder.VECTORS_BIN_NAME, folder.VECTORS_META_NAME
DEFAULT_USER_IMAGES = 4  # user images in the vectors (`quant vectors --count`)
MAX_USER_IMAGES = 16


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


def make_user_vectors(user, count: int = DEFAULT_USER_IMAGES) -> tuple[np.ndarray, list[dict]]:
    """Vectors from a user's image folder (`quant.variants.data.load_image_folder`'s (x, y, classes)): `count`
    images, one class after the other (the first image of each class in file order, then the second, ...),
    then the plain patterns. Vector 0, the embedded self-test input, is the first image of the first class."""
    x, y, classes = user
    if not 1 <= count <= MAX_USER_IMAGES:
        raise UserError(f"--count {count} is out of range; pass --count between 1 and {MAX_USER_IMAGES}")
    if count > len(x):
        raise UserError(f"--count {count}: the data folder has only {len(x)} images; pass --count {len(x)} or fewer")
    per_class = [list(np.flatnonzero(np.asarray(y) == c)) for c in range(len(classes))]
    order, rank = [], 0
    while len(order) < count:
        order += [idx[rank] for idx in per_class if rank < len(idx)][: count - len(order)]
        rank += 1
    images, meta = [], []
    for i in order:
        label = int(y[i])
        images.append(np.asarray(x[i, 0], np.float32))
        meta.append({"name": f"image_{i}_{classes[label]}", "kind": "image", "label": label})
    for name, img in _patterns():
        images.append(img)
        meta.append({"name": name, "kind": "pattern", "label": None})
    return np.stack(images)[:, None].astype("<f4"), meta


def write_vectors(directory=MODELS) -> tuple[Path, Path]:
    """Write the default (gesture) test_vectors.bin and .json into `directory`; returns their paths."""
    x, meta = make_vectors()
    return folder.write_vectors(Path(directory), x, meta)


# ----------------------------------------------------------------------------- `quant vectors`


def add_arguments(p) -> None:
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="your images, one sub-folder per class (the classes of your model, in its output order)")
    p.add_argument("--count", type=int, default=DEFAULT_USER_IMAGES, metavar="N",
                   help=f"images to take (one class after the other; default {DEFAULT_USER_IMAGES}, at most "
                        f"{MAX_USER_IMAGES}); the plain patterns are added after them")
    p.add_argument("--models-dir", type=Path, required=True, metavar="DIR",
                   help="models folder to write test_vectors.bin/.json into (variants in it become stale)")


def run(args) -> int:
    from quant.variants import data

    models = Path(args.models_dir)
    if folder.is_default(models):
        raise UserError(f"{models} is the default model's folder, whose vectors are committed; pass --models-dir DIR "
                        f"to your own models folder")
    if models.exists() and not models.is_dir():
        raise UserError(f"models folder {models} is a file; pass --models-dir DIR to a folder")
    x, meta = make_user_vectors(data.load_image_folder(args.data), args.count)  # validates before writing
    for path in folder.write_vectors(models, x, meta):
        print(f"wrote {path}")
    print(f"{len(meta)} vectors ({args.count} images from {args.data}, {len(meta) - args.count} patterns); vector 0 "
          f"({meta[0]['name']}) is the .espdl's embedded self-test input; rebuild with `quant build --models-dir {models}`")
    return 0


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m quant.variants.vectors",
                                description="rewrite the default models/test_vectors.bin/.json (deterministic); "
                                            "for your own images use `quant vectors`")
    p.add_argument("--write-default", action="store_true", help="write models/test_vectors.* (default: print only)")
    args = p.parse_args(argv)
    if not args.write_default:
        x, meta = make_vectors()
        print(f"{len(meta)} default vectors, sha256 {hashlib.sha256(x.tobytes()).hexdigest()}; pass --write-default to "
              f"write them into {MODELS}")
        return 0
    for path in write_vectors():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
