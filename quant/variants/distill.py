"""Knowledge distillation of an edited float graph back towards the original float model.

balanced replaces every ReLU6 by ReLU so that equalization can cross the activations; a network trained with
ReLU6 then computes another function (its activations reach far beyond 6). `distill` fine-tunes the edited
ONNX graph's weights so that its logits follow the original model's (the teacher) on unlabelled images:
loss = KL(softmax(teacher / T) || softmax(student / T)) x T^2. No labels are needed, so a user's image folder
works as well as the synthetic set. Deterministic: fixed seed, one thread, fixed batch order, CPU, and trained in
float64 (rounded to float32 at the end), so that CPU-specific float32 kernels cannot steer the weights apart
from one x86-64 machine to another.

The ONNX graph runs in torch through a small executor (`OnnxModule`) that covers the operators of
convolutional classifiers; another operator is a clear error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quant.errors import UserError


@dataclass(frozen=True)
class Distillation:
    """A short fine-tune of the edited float graph against the original float model's logits."""

    epochs: int = 12
    images: int = 256  # the first N calibration images (unlabelled)
    temperature: float = 2.0
    learning_rate: float = 1e-3
    batch: int = 32
    seed: int = 0
    logit_weight: float = 1.0  # + weight x mean squared logit error (what the output noise/signal measures)
    augment: bool = True  # random 8-pixel shifts and mirror images of the (unlabelled) images each epoch


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class OnnxModule(nn.Module):
        """Runs an ONNX graph in torch; the float initializers that Conv/Gemm read are trainable parameters."""

        def __init__(self, model):
            super().__init__()
            from onnx import numpy_helper

            self.graph = model.graph
            trainable = {n.input[i] for n in self.graph.node if n.op_type in ("Conv", "Gemm")
                         for i in range(1, len(n.input)) if n.input[i]}
            self.params = nn.ParameterDict()
            self.names = {}
            self.consts = {}
            for t in self.graph.initializer:
                arr = numpy_helper.to_array(t)
                if t.name in trainable and arr.dtype == np.float32:
                    key = f"p{len(self.params)}"
                    self.params[key] = nn.Parameter(torch.from_numpy(arr.astype(np.float64)))
                    self.names[t.name] = key
                else:
                    self.consts[t.name] = torch.from_numpy(np.array(arr, np.float64 if arr.dtype == np.float32 else None))
            for n in self.graph.node:
                if n.op_type == "Constant":
                    value = numpy_helper.to_array(_attrs(n)["value"])
                    self.consts[n.output[0]] = torch.from_numpy(
                        np.array(value, np.float64 if value.dtype == np.float32 else None))
            supported = {"Conv", "Relu", "Clip", "Add", "Sub", "Mul", "ReduceMean", "GlobalAveragePool", "Flatten",
                         "Gemm", "Reshape", "MatMul", "Softmax", "Constant", "Identity", "AveragePool", "MaxPool",
                         "Concat", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Transpose"}
            for n in self.graph.node:
                if n.op_type not in supported:
                    raise UserError(f"distillation cannot run operator {n.op_type} ({n.name}); drop the "
                                    f"distillation from the spec for this model, or use a model without it")

        def value(self, env, name):
            if name in env:
                return env[name]
            if name in self.names:
                return self.params[self.names[name]]
            return self.consts[name]

        def forward(self, x):
            env = {self.graph.input[0].name: x}
            for n in self.graph.node:
                if n.op_type == "Constant":
                    continue
                a = _attrs(n)
                ins = [self.value(env, i) if i else None for i in n.input]
                op = n.op_type
                if op == "Conv":
                    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
                    x, padding = ins[0], (top, left)
                    if (top, left) != (bottom, right):  # asymmetric: pad first (conv2d pads symmetrically)
                        x, padding = F.pad(x, (left, right, top, bottom)), 0
                    # conv2d's own zero padding, not a padded copy of the input: the same sums (bit-identical), no
                    # float64 copy of every activation (it was 30 % of the fine-tune's time)
                    y = F.conv2d(x, ins[1], ins[2] if len(ins) > 2 else None, a.get("strides", [1, 1]), padding,
                                 a.get("dilations", [1, 1]), a.get("group", 1))
                elif op == "Relu":
                    y = F.relu(ins[0])
                elif op == "Clip":
                    lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
                    hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
                    y = torch.clamp(ins[0], None if lo is None else float(lo), None if hi is None else float(hi))
                elif op in ("Add", "Sub", "Mul"):
                    y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}[op](ins[0], ins[1])
                elif op == "ReduceMean":
                    axes = [int(v) for v in (ins[1].tolist() if len(ins) > 1 and ins[1] is not None else a["axes"])]
                    y = torch.mean(ins[0], dim=axes, keepdim=bool(a.get("keepdims", 1)))
                elif op == "GlobalAveragePool":
                    y = torch.mean(ins[0], dim=(2, 3), keepdim=True)
                elif op == "Flatten":
                    y = torch.flatten(ins[0], a.get("axis", 1))
                elif op == "Gemm":
                    w = ins[1].t() if a.get("transB", 0) else ins[1]
                    xa = ins[0].t() if a.get("transA", 0) else ins[0]
                    y = a.get("alpha", 1.0) * xa @ w
                    if len(ins) > 2 and ins[2] is not None:
                        y = y + a.get("beta", 1.0) * ins[2]
                elif op == "Reshape":
                    shape = [int(s) for s in ins[1].tolist()]
                    shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
                    y = torch.reshape(ins[0], shape)
                elif op == "MatMul":
                    y = ins[0] @ ins[1]
                elif op == "Softmax":
                    y = torch.softmax(ins[0], a.get("axis", -1))
                elif op == "Identity":
                    y = ins[0]
                elif op == "AveragePool":
                    p = a.get("pads", [0, 0, 0, 0])
                    y = F.avg_pool2d(F.pad(ins[0], (p[1], p[3], p[0], p[2])), a["kernel_shape"],
                                     a.get("strides", a["kernel_shape"]), count_include_pad=True)
                elif op == "MaxPool":
                    p = a.get("pads", [0, 0, 0, 0])
                    y = F.max_pool2d(F.pad(ins[0], (p[1], p[3], p[0], p[2]), value=float("-inf")),
                                     a["kernel_shape"], a.get("strides", a["kernel_shape"]))
                elif op == "Concat":
                    y = torch.cat(ins, a.get("axis", 1))
                elif op == "Sigmoid":
                    y = torch.sigmoid(ins[0])
                elif op == "HardSigmoid":
                    y = torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)
                elif op == "HardSwish":
                    y = F.hardswish(ins[0])
                elif op == "LeakyRelu":
                    y = F.leaky_relu(ins[0], a.get("alpha", 0.01))
                else:  # Transpose
                    y = ins[0].permute(*a["perm"])
                env[n.output[0]] = y
            return env[self.graph.output[0].name]

    return OnnxModule


def distill(student: bytes, teacher_model: bytes, images: np.ndarray, cfg: Distillation) -> tuple[bytes, dict]:
    """Fine-tune the ONNX graph `student` towards the ONNX graph `teacher_model` (both bytes) on `images`;
    returns the new ONNX and a record."""
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load_from_string(student)
    torch.manual_seed(cfg.seed)
    module = _module_class()
    net = module(model)
    teacher = module(onnx.load_from_string(teacher_model)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(np.ascontiguousarray(images[: cfg.images], dtype=np.float64))
    with torch.no_grad():
        t = teacher(x).reshape(len(x), -1)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    steps = cfg.epochs * -(-len(x) // cfg.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    order = np.random.default_rng(cfg.seed)
    temp = cfg.temperature

    scale = float(t.pow(2).mean())

    def loss_of(out, target):
        kd = torch.nn.functional.kl_div(torch.log_softmax(out / temp, 1), torch.softmax(target / temp, 1),
                                        reduction="batchmean") * temp * temp
        return kd + cfg.logit_weight * (out - target).pow(2).mean() / scale

    with torch.no_grad():
        before = float(loss_of(net(x).reshape(len(x), -1), t))
    for _ in range(cfg.epochs):
        perm = order.permutation(len(x))
        for i in range(0, len(x), cfg.batch):
            idx = torch.from_numpy(perm[i : i + cfg.batch])
            xb, tb = x[idx], t[idx]
            if cfg.augment:  # the teacher labels the augmented image itself: no labels needed
                dy, dx = (int(v) for v in order.integers(-8, 9, 2))
                xb = torch.roll(xb, (dy, dx), (2, 3))
                if order.integers(0, 2):
                    xb = torch.flip(xb, (3,))
                with torch.no_grad():
                    tb = teacher(xb).reshape(len(idx), -1)
            opt.zero_grad()
            loss = loss_of(net(xb).reshape(len(idx), -1), tb)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        after = float(loss_of(net(x).reshape(len(x), -1), t))
    for init in model.graph.initializer:
        if init.name in net.names:
            weights = net.params[net.names[init.name]].detach().numpy().astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(weights, init.name))
    return model.SerializeToString(), {"kd_loss_before": before, "kd_loss_after": after}
