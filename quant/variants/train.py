"""`quant train`: train the default float model on synthetic gestures, reproducibly, on the CPU.

Writes the ONNX (input `image` [1,1,96,96], output `logits`) and a JSON beside it with the classes,
the held-out accuracy (PyTorch and onnxruntime must agree), the recipe and the ONNX's sha256.
Never downloads anything.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from quant.folder import FLOAT_ONNX
from quant.errors import UserError
from quant.variants.info import op_macs

DEFAULT_EPOCHS = 6
DEFAULT_IMAGES = 20000
DEFAULT_SEED = 0
BATCH = 64
LR = 5e-3
WEIGHT_DECAY = 1e-4
LABEL_SMOOTHING = 0.05
THREADS = 1  # fixed: the float summation order (hence the exact weights) depends on it; 1 is also fastest on a busy CPU
HELDOUT_IMAGES = 1200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"passes over the data (default {DEFAULT_EPOCHS})")
    parser.add_argument(
        "--images", type=int, default=DEFAULT_IMAGES, help=f"synthetic training images (default {DEFAULT_IMAGES})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"torch seed: weights init and batch order (default {DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=FLOAT_ONNX, help=f"ONNX to write; the .json goes beside it (default {FLOAT_ONNX})")


def evaluate_onnx(onnx_path, x, y) -> float:
    """Top-1 accuracy of an ONNX classifier (input `image`, batch 1) with onnxruntime."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.array([int(np.argmax(sess.run(None, {name: x[i : i + 1]})[0])) for i in range(len(x))])
    return float(np.mean(pred == y))


@dataclass(frozen=True)
class Recipe:
    """One training run of the default float model (everything that decides its bytes)."""

    epochs: int
    images: int
    seed: int
    out: Path


def run(args) -> int:
    """`quant train`: check the options, then `train(Recipe(...))`."""
    import os

    from quant.variants import data

    if args.epochs < 1 or args.images < len(data.CLASSES):
        raise UserError(f"--epochs must be >= 1 and --images >= {len(data.CLASSES)}; got {args.epochs} and {args.images}")
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out} must end in .onnx; the .json is written beside it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out.parent} ({exc.strerror}); pass a writable --out") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"folder {out.parent} is not writable; pass a writable --out")
    train(Recipe(args.epochs, args.images, args.seed, out))
    return 0


def train(recipe: Recipe) -> dict:
    """Train, export `recipe.out` (+ its .json) and return the .json document."""
    import hashlib
    import json
    import sys
    import time

    import cv2
    import numpy as np
    import onnx
    import onnxruntime
    import torch
    from torch import nn

    from quant.variants import data
    from quant.variants.model import INPUT_NAME, INPUT_SHAPE, OUTPUT_NAME, build_model, count_params, export_onnx

    out = Path(recipe.out)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(recipe.seed)
    t0 = time.time()

    print(f"generating {recipe.images} training images (seed {data.TRAIN_SEED}) ...", flush=True)
    x_np, y_np = data.synthetic(recipe.images, data.TRAIN_SEED)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    hx, hy = data.heldout(HELDOUT_IMAGES)

    # channels-last runs the depthwise convolutions about 1.6x faster on the CPU
    cl = torch.channels_last
    model = build_model(len(data.CLASSES)).to(memory_format=cl)
    steps_per_epoch = (len(x) + BATCH - 1) // BATCH
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    gen = torch.Generator().manual_seed(recipe.seed)

    def heldout_top1() -> float:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(torch.from_numpy(hx[i : i + 200])).argmax(1) for i in range(0, len(hx), 200)])
        model.train()
        return float((pred.numpy() == hy).mean())

    for epoch in range(recipe.epochs):
        order = torch.randperm(len(x), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for step in range(steps_per_epoch):
            idx = order[step * BATCH : (step + 1) * BATCH]
            xb, yb = x[idx].contiguous(memory_format=cl), y[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(loss.detach()) * len(idx)
            if sys.stdout.isatty():
                print(f"\repoch {epoch + 1}/{recipe.epochs} step {step + 1}/{steps_per_epoch}", end="", flush=True)
        if sys.stdout.isatty():
            print("\r", end="")
        print(
            f"epoch {epoch + 1}/{recipe.epochs}: loss {loss_sum / total:.4f} train top-1 {correct / total:.4f} "
            f"held-out top-1 {heldout_top1():.4f} ({time.time() - t0:.0f} s)",
            flush=True,
        )
    seconds = time.time() - t0

    top1 = heldout_top1()
    export_onnx(model.to(memory_format=torch.contiguous_format), out)
    ort_top1 = evaluate_onnx(out, hx, hy)
    if abs(ort_top1 - top1) > 1.0 / len(hy) + 1e-9:
        raise RuntimeError(f"onnxruntime top-1 {ort_top1:.4f} disagrees with PyTorch {top1:.4f}")
    meta = {
        "format": 1,
        "classes": list(data.CLASSES),
        "input": {"name": INPUT_NAME, "shape": list(INPUT_SHAPE), "range": [0, 1], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [1, len(data.CLASSES)]},
        "heldout": {"seed": data.HELDOUT_SEED, "images": len(hy), "top1": round(ort_top1, 6), "top1_torch": round(top1, 6)},
        "training": {
            "seed": recipe.seed,
            "data_seed": data.TRAIN_SEED,
            "epochs": recipe.epochs,
            "images": recipe.images,
            "batch": BATCH,
            "optimizer": f"AdamW lr {LR} wd {WEIGHT_DECAY}, one-cycle, label smoothing {LABEL_SMOOTHING}",
            "threads": THREADS,
            "seconds": round(seconds, 1),
        },
        "model": {"parameters": count_params(model), "macs": sum(op_macs(out).values())},
        "onnx_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(
        f"held-out top-1 {ort_top1:.4f} on {len(hy)} images (onnxruntime; PyTorch {top1:.4f}); "
        f"{meta['model']['parameters']} parameters, {meta['model']['macs']} MACs; trained in {seconds:.0f} s"
    )
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return meta
