"""Gesture images: the synthetic data set (drawn with OpenCV) and user image folders.

Every image is float32 [1, 96, 96] in [0, 1] (NCHW with C=1), the model's input.

Synthetic images are deterministic: image i of `synthetic(n, seed)` depends only on (seed, i)
(its own `numpy.random.default_rng([seed, i])`), and its label is `i % len(CLASSES)`. So classes are
balanced, the same call gives identical bytes on any run, and `synthetic(m, seed)` is a prefix
of `synthetic(n, seed)` for m <= n. The three streams (train, calibration, held-out) use
different seeds, so they never share an image.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from quant.errors import UserError

SIZE = 96
CLASSES: tuple[str, ...] = (
    "fingers_0",
    "fingers_1",
    "fingers_2",
    "fingers_3",
    "fingers_4",
    "fingers_5",
    "thumb_up",
    "ok",
)
TRAIN_SEED = 1
CALIB_SEED = 2
HELDOUT_SEED = 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# Hand geometry in units of the palm size, hand-local frame (x right, y down, palm centre at 0,0,
# fingers pointing up). Finger slots: (base x, base y, direction from vertical in degrees, length).
_FINGERS = {
    "index": (-0.30, -0.42, -20.0, 1.00),
    "middle": (-0.10, -0.50, -6.0, 1.10),
    "ring": (0.11, -0.47, 8.0, 1.00),
    "pinky": (0.30, -0.36, 22.0, 0.80),
}
_THUMB = (-0.44, 0.05, -60.0, 0.80)
_FINGER_WIDTH = 0.18
_THUMB_WIDTH = 0.25
# which fingers are extended, per class (alternatives picked at random)
_EXTENDED = {
    "fingers_0": [()],
    "fingers_1": [("index",), ("index",), ("middle",)],
    "fingers_2": [("index", "middle"), ("index", "middle"), ("thumb", "index")],
    "fingers_3": [("index", "middle", "ring"), ("thumb", "index", "middle")],
    "fingers_4": [("index", "middle", "ring", "pinky")],
    "fingers_5": [("thumb", "index", "middle", "ring", "pinky")],
}
_SHIFT = 4  # OpenCV sub-pixel bits for drawing
_ONE = 1 << _SHIFT


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


class _Pen:
    """Draws hand-local shapes into a uint8 mask through a similarity transform."""

    def __init__(self, mask: np.ndarray, centre, scale: float, angle_deg: float, mirror: bool):
        self.mask, self.centre, self.scale = mask, np.asarray(centre, np.float64), scale
        a = math.radians(angle_deg)
        self.rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.mirror = -1.0 if mirror else 1.0
        self.angle = angle_deg

    def map(self, x: float, y: float) -> np.ndarray:
        return self.centre + self.scale * (self.rot @ np.array([x * self.mirror, y]))

    def ellipse(self, x, y, ax, ay, tilt=0.0):
        axes = (int(round(ax * self.scale * _ONE)), int(round(ay * self.scale * _ONE)))
        ang = self.angle + tilt * self.mirror
        cv2.ellipse(self.mask, _pt(self.map(x, y)), axes, ang, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)

    def capsule(self, x, y, direction_deg, length, width):
        d = math.radians(direction_deg)
        tip = (x + length * math.sin(d), y - length * math.cos(d))
        thick = max(1, int(round(width * self.scale)))
        cv2.line(self.mask, _pt(self.map(x, y)), _pt(self.map(*tip)), 255, thick, cv2.LINE_AA, _SHIFT)

    def ring(self, x, y, radius, width):
        thick = max(1, int(round(width * self.scale)))
        r = int(round(radius * self.scale * _ONE))
        cv2.circle(self.mask, _pt(self.map(x, y)), r, 255, thick, cv2.LINE_AA, _SHIFT)

    def quad(self, pts):
        poly = np.array([_pt(self.map(x, y)) for x, y in pts], np.int32)
        cv2.fillPoly(self.mask, [poly], 255, cv2.LINE_AA, _SHIFT)


def _draw_hand(pen: _Pen, name: str, rng: np.random.Generator) -> None:
    jitter = lambda s: float(rng.uniform(-s, s))  # noqa: E731
    if rng.random() < 0.7:  # wrist / forearm down to the edge
        w = 0.30 + jitter(0.05)
        pen.quad([(-w, 0.2), (w, 0.2), (w * 1.1, 3.0), (-w * 1.1, 3.0)])
    if name == "thumb_up":
        # a fist seen from the side: knuckles stacked on one side, thumb pointing up
        pen.ellipse(0.0, 0.05, 0.58 + jitter(0.05), 0.45 + jitter(0.05))
        for k in range(4):
            pen.ellipse(0.52, -0.30 + 0.21 * k, 0.20, 0.10)
        pen.capsule(-0.20 + jitter(0.05), -0.30, jitter(12.0), 0.75 + jitter(0.1), 0.28)
        return
    pen.ellipse(0.0, 0.0, 0.50 + jitter(0.04), 0.55 + jitter(0.04), tilt=jitter(8.0))
    if name == "ok":
        # thumb and index tips touch: a ring at the top-left, the other three fingers extended
        pen.ring(-0.42 + jitter(0.04), -0.72 + jitter(0.05), 0.27 + jitter(0.04), 0.17)
        extended: tuple[str, ...] = ("middle", "ring", "pinky")
    else:
        options = _EXTENDED[name]
        extended = options[int(rng.integers(len(options)))]
    spread = 1.0 + jitter(0.25)
    for finger, (x, y, direction, length) in _FINGERS.items():
        if finger in extended:
            pen.capsule(x, y, direction * spread + jitter(4.0), length * (1 + jitter(0.1)), _FINGER_WIDTH)
        elif name != "ok" or finger != "index":
            pen.capsule(x, y, direction, 0.12, _FINGER_WIDTH)  # folded: a knuckle bump
    x, y, direction, length = _THUMB
    if "thumb" in extended:
        pen.capsule(x, y, direction + jitter(12.0), length * (1 + jitter(0.1)), _THUMB_WIDTH)
    elif name != "ok":
        pen.capsule(x, y + 0.1, 40.0 + jitter(10.0), 0.40, _THUMB_WIDTH)  # folded across the palm


def _clutter(img: np.ndarray, rng: np.random.Generator, bg: float, fg: float) -> None:
    """Up to six shapes, either polarity, but never closer to the hand's level than to the background's."""
    toward_hand = math.copysign(1.0, fg - bg)
    for _ in range(int(rng.integers(0, 7))):
        level = float(np.clip(bg + toward_hand * rng.uniform(-0.3, 0.5 * abs(fg - bg)), 0.0, 1.0))
        kind = int(rng.integers(3))
        p = rng.uniform(0, SIZE, 4)
        if kind == 0:
            cv2.line(img, _pt(p[:2]), _pt(p[2:]), level, int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            r = int(rng.uniform(3, 18) * _ONE)
            cv2.circle(img, _pt(p[:2]), r, level, int(rng.choice([-1, 1, 2])), cv2.LINE_AA, _SHIFT)
        else:
            cv2.rectangle(img, _pt(p[:2]), _pt(p[2:]), level, int(rng.choice([-1, 1])), cv2.LINE_AA, _SHIFT)


def render(label: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic image of class `label` as float32 [96, 96] in [0, 1]."""
    name = CLASSES[label]
    # background: a level, a linear gradient and clutter
    bg = float(rng.uniform(0.0, 1.0))
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    ramp = np.linspace(-0.5, 0.5, SIZE, dtype=np.float32)
    img = (bg + gx * ramp[None, :] + gy * ramp[:, None]).astype(np.float32)
    # hand level: clearly apart from the background, either darker or brighter
    fg = bg + float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.35, 0.8))
    if fg < 0.0 or fg > 1.0:
        fg = bg - (fg - bg)
    fg = float(np.clip(fg, 0.0, 1.0))
    _clutter(img, rng, bg, fg)
    # hand mask: pose (rotation, mirror), scale and position
    mask = np.zeros((SIZE, SIZE), np.uint8)
    scale = float(rng.uniform(18.0, 25.0))
    angle = float(rng.uniform(-30.0, 30.0))
    a = math.radians(angle)
    # put the middle of the hand (0.45 palm sizes above the palm centre) near the image centre
    offset = np.array([0.45 * scale * math.sin(a), -0.45 * scale * math.cos(a)])
    centre = np.array([SIZE / 2, SIZE / 2]) - offset + rng.uniform(-7.0, 7.0, 2)
    _draw_hand(_Pen(mask, centre, scale, angle, bool(rng.random() < 0.5)), name, rng)
    if rng.random() < 0.15:  # outline only instead of a filled silhouette
        k = int(rng.integers(3, 5))
        mask = cv2.subtract(mask, cv2.erode(mask, np.ones((k, k), np.uint8)))
    m = mask.astype(np.float32) / 255.0
    shade = fg + float(rng.uniform(-0.1, 0.1)) * ramp[None, :]
    img = img * (1.0 - m) + shade * m
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.0)))
    img = img + float(rng.uniform(0.0, 0.06)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images [n,1,96,96] float32 and labels [n] int64; image i has class i % len(CLASSES)."""
    x = np.empty((n, 1, SIZE, SIZE), np.float32)
    y = np.arange(n, dtype=np.int64) % len(CLASSES)
    for i in range(n):
        x[i, 0] = render(int(y[i]), np.random.default_rng([seed, i]))
    return x, y


def heldout(n: int = 1200) -> tuple[np.ndarray, np.ndarray]:
    """The held-out set the float accuracy and every variant's accuracy are measured on."""
    return synthetic(n, HELDOUT_SEED)


def calibration(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The default calibration images for quantization (disjoint from training and held-out)."""
    return synthetic(n, CALIB_SEED)


# ---------------------------------------------------------------- user image folders


def to_input(img: np.ndarray) -> np.ndarray:
    """Any OpenCV image (gray, BGR or BGRA; uint8/uint16/float) -> float32 [96, 96] in [0, 1]."""
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif img.ndim == 3:
        img = img[:, :, 0]
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        scale = 1.0
    img = img.astype(np.float32) / scale
    img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def load_image_folder(path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images from `path/<class>/*.{png,jpg,jpeg,bmp}` -> (x [n,1,96,96] float32, y [n] int64, classes).

    Classes are the sub-folder names, sorted; files are read in sorted order. Files OpenCV cannot
    decode are skipped; a class folder without a single readable image is an error.
    Hidden entries (names starting with '.') are ignored.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; pass --data DIR with one sub-folder per class")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder; pass a folder with one sub-folder of images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"data folder {root} has no class sub-folders; put each class's images in {root}/<class>/")
    xs, ys = [], []
    for label, cdir in enumerate(class_dirs):
        files = sorted(
            p for p in cdir.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        count = 0
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if img is None or img.size == 0:
                continue
            xs.append(to_input(img))
            ys.append(label)
            count += 1
        if count == 0:
            raise UserError(
                f"class folder {cdir} has no readable images ({len(files)} candidate files); "
                f"add png, jpg or bmp images or remove the folder"
            )
    x = np.stack(xs)[:, None].astype(np.float32)
    return x, np.asarray(ys, np.int64), tuple(p.name for p in class_dirs)


def split(x: np.ndarray, y: np.ndarray, calib_n: int, seed: int = CALIB_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split user images into calibration images and a held-out set -> (calib_x, heldout_x, heldout_y).

    A seeded permutation (numpy PCG64, `seed`) orders the images; the first `calib_n` calibrate
    and the rest measure accuracy. At least one image must be left for the held-out set.
    """
    n = len(x)
    if calib_n < 1:
        raise UserError(f"--calib {calib_n} is too small; use at least 1 calibration image")
    if calib_n >= n:
        raise UserError(
            f"--calib {calib_n} leaves no held-out images out of {n}; use --calib {max(1, n // 2)} or add images"
        )
    order = np.random.default_rng(seed).permutation(n)
    calib, rest = order[:calib_n], np.sort(order[calib_n:])
    return x[calib], x[rest], y[rest]
