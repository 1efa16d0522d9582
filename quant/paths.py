"""Where things live in the repository (one definition each)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
FIRMWARE = REPO / "firmware"
FLOAT_ONNX = MODELS / "gesture_float.onnx"
FLOAT_META = MODELS / "gesture_float.json"
VECTORS_BIN = MODELS / "test_vectors.bin"
VECTORS_META = MODELS / "test_vectors.json"
VARIANTS = ("int8", "mixed", "balanced")


def variant_dir(variant: str, models: Path = MODELS) -> Path:
    return Path(models) / f"gesture_model_{variant}"


def variant_file(variant: str, suffix: str, models: Path = MODELS) -> Path:
    """`suffix` is one of '.espdl', '.info', '.json', '.reference.json', '.graph.txt'."""
    return variant_dir(variant, models) / f"gesture_model_{variant}{suffix}"
