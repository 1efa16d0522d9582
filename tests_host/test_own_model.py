"""The README's "Your own model, end to end", run as a user would, on a 5-class model of our own making and its
image folder: quant vectors -> quant build -> quant verify -> quant report -> pytest --virtual-board, each through
the command line, in a models folder of its own (the repository's models/ is never touched). One variant (int8)
keeps it to about half a minute; the other variants take the same code path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from quant import folder

CLASSES = ("bars", "blob", "cross", "frame", "ring")
PER_CLASS = 80


def _image(label: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    img = np.full((96, 96), int(rng.integers(0, 60)), np.uint8)
    c, r, fg = [int(v) for v in rng.integers(30, 66, 2)], int(rng.integers(14, 26)), int(rng.integers(170, 255))
    if label == 0:
        for x in range(8, 90, 16):
            cv2.line(img, (x, 6), (x, 90), fg, 4)
    elif label == 1:
        cv2.circle(img, tuple(c), r, fg, -1)
    elif label == 2:
        cv2.line(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), fg, 5)
        cv2.line(img, (c[0] - r, c[1] + r), (c[0] + r, c[1] - r), fg, 5)
    elif label == 3:
        cv2.rectangle(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), fg, 4)
    else:
        cv2.circle(img, tuple(c), r, fg, 4)
    noise = rng.normal(0, 8, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _make_images(root):
    import cv2

    rng = np.random.default_rng(5)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), _image(label, rng))


def _train_onnx(images, path):
    """A small 5-class CNN of our own, trained for a few seconds on the folder, exported with a logits head."""
    import torch
    from torch import nn

    from quant.variants import data

    x, y, classes = data.load_image_folder(images)
    assert classes == CLASSES
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    for _ in range(60):
        for i in range(0, len(xt), 32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[i : i + 32]), yt[i : i + 32]).backward()
            opt.step()
    net.eval()
    torch.onnx.export(net, torch.zeros(1, 1, 96, 96), str(path), input_names=["image"], output_names=["logits"],
                      opset_version=18, dynamo=False)
    with torch.no_grad():
        return float((net(xt).argmax(1) == yt).float().mean())


def _quant(*args, cwd):
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, "-m", "quant", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    images, models, onnx_path = root / "my_images", root / "my_models", root / "my.onnx"
    _make_images(images)
    accuracy = _train_onnx(images, onnx_path)
    assert accuracy > 0.9, f"the example model did not learn its 5 classes ({accuracy:.2f})"
    steps = {"vectors": _quant("vectors", "--data", images, "--count", 4, "--models-dir", models, cwd=root)}
    steps["build"] = _quant("build", "--onnx", onnx_path, "--data", images, "--variant", "int8", "--models-dir", models,
                            cwd=root)
    return root, images, models, steps


def test_your_own_vectors_and_variant_are_built_in_your_folder(own):
    root, images, models, steps = own
    for name, proc in steps.items():
        assert proc.returncode == 0, f"quant {name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    meta = json.loads((models / folder.VECTORS_META.name).read_text())
    vectors = meta["vectors"] if isinstance(meta, dict) else meta
    assert vectors[0]["kind"] == "image"  # the .espdl's embedded self-test input is one of the user's images
    cfg = json.loads(folder.variant_file("int8", ".json", models).read_text())
    assert cfg["classes"] == list(CLASSES) and cfg["source"]["data"] == "user image folder"


def test_your_own_espdl_verifies_and_reports(own):
    root, _, models, _ = own
    verify = _quant("verify", folder.variant_file("int8", ".espdl", models), cwd=root)
    assert verify.returncode == 0 and verify.stdout.startswith("PASS"), verify.stdout + verify.stderr
    report = _quant("report", "--models-dir", models, cwd=root)
    assert report.returncode == 0 and "int8" in report.stdout, report.stdout + report.stderr
    assert (models / "variants.png").is_file()


def _target(models, *extra):
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--virtual-board",
                           f"--models-dir={models}", "-k", "int8", *extra, str(folder.REPO / "tests_target")],
                          cwd=folder.REPO, env=env, capture_output=True, text=True, timeout=600)


def test_the_target_tests_compute_your_model_on_the_virtual_board(own):
    _, _, models, _ = own
    proc = _target(models)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "5 passed" in proc.stdout and "board: virtual" in proc.stdout


def test_an_injected_fault_fails_them(own):
    _, _, models, _ = own
    proc = _target(models, "--virtual-fault", "off_by_one")
    assert proc.returncode == 1 and "1 LSB" in proc.stdout, proc.stdout[-3000:]


def test_a_softmax_head_is_one_line_exit_2_and_leaves_no_folder(own):
    import torch
    from torch import nn

    root, images, _, _ = own
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
                        nn.Softmax(1)).eval()
    torch.onnx.export(net, torch.zeros(1, 1, 96, 96), str(root / "softmax.onnx"), input_names=["image"],
                      output_names=["probs"], opset_version=18, dynamo=False)
    proc = _quant("build", "--onnx", root / "softmax.onnx", "--data", images, "--variant", "int8", "--models-dir",
                  root / "softmax_models", cwd=root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Softmax" in proc.stderr
    assert not (root / "softmax_models").exists()
