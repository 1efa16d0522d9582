"""Old name of `quant.folder`, which owns the paths (kept only so that modules still importing
`quant.paths` keep working while they move; new code imports quant.folder)."""

from quant.folder import (  # noqa: F401
    FIRMWARE,
    FLOAT_META,
    FLOAT_ONNX,
    MODELS,
    REPO,
    VARIANTS,
    VECTORS_BIN,
    VECTORS_META,
    variant_dir,
    variant_file,
)
