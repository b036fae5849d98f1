"""Pretraining a timm backbone on the *training* concepts of an image set
(``bci-train pretrain``).

Shallow alignment needs a pretrained vision model.  Where no pretrained weights can be
had (an offline machine, the tests, the demo on synthetic images), this trains the timm
model itself to classify the training concepts and saves an ordinary timm state dict as a
local weights file, which ``--weights FILE`` then loads through timm's own pretrained-file
path.  Test concepts are never seen, so retrieval of test images stays zero-shot.  As with
natural-image pretraining, the final layer becomes concept-specific while earlier layers
keep lower-level detail.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ._checks import check_path, check_positive, check_type
from .config import option_name
from .errors import BCIError, UsageError
from .files import atomic_path, atomic_write_text

__all__ = ["pretrain_backbone"]

logger = logging.getLogger("trainer")


def _load_images(images, size: int, mean, std) -> torch.Tensor:
    from PIL import Image

    out = torch.empty((len(images), 3, size, size), dtype=torch.float32)
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    for i in range(len(images)):
        img = images.open(i).resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out[i] = (x - mean) / std
    return out


def pretrain_backbone(
    data: str | os.PathLike,
    backbone: str,
    out: str | os.PathLike,
    *,
    image_size: int = 64,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    device: str = "auto",
    color_jitter: float = 1.0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``backbone`` (random init) to classify the training concepts of ``data``'s
    image set and write its state dict to ``out`` (safetensors) with ``out``.json beside it.

    ``progress(phase, done, total)``, when given, is called after every batch (``done``
    and ``total`` count batches; ``phase`` names the epoch and the last epoch's loss and
    accuracy).  Returns a summary (also in the JSON): classes, images, final training
    accuracy and loss, seconds, and the ``bci-train fit`` options that load the weights."""
    import timm
    from safetensors.torch import save_file

    from .data import ThingsEEG2, load_image_set
    from .vision import HF_PREFIX, check_model_name, create_model, resolve_device

    for name, value in (("image_size", image_size), ("epochs", epochs), ("batch_size", batch_size)):
        check_positive(value, option_name(name), integer=True)
    check_positive(lr, option_name("lr"))
    check_type(color_jitter, (int, float), option_name("color_jitter"))
    if not 0 <= color_jitter <= 1:
        raise UsageError(f"{option_name('color_jitter')} must be a probability (0..1), got {color_jitter!r}")
    out = check_path(out, option_name("out"))
    if out.suffix != ".safetensors":
        raise UsageError(f"{option_name('out')} must end in .safetensors, got {out.name!r}")
    root = Path(data).expanduser()
    if (root / "image_metadata.npy").is_file():
        images = load_image_set(root, "training")
    else:
        images = ThingsEEG2(root).image_set("training")
    if backbone.startswith(HF_PREFIX):
        raise UsageError(f"pretrain builds timm backbones; {backbone!r} is a transformers model (train it with "
                         f"transformers, then pass its folder as hf:FOLDER)")
    check_model_name(backbone)
    dev = resolve_device(device)
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = create_model(backbone, pretrained=False, img_size=image_size)
    n_out = getattr(model, "num_classes", 0)
    labels = torch.from_numpy(images.concept_index)
    n_classes = int(labels.max()) + 1
    if n_out < n_classes:
        raise BCIError(f"{backbone} has {n_out} outputs, fewer than the {n_classes} training concepts")
    cfg = timm.data.resolve_model_data_config(model)
    x_all = _load_images(images, image_size, cfg["mean"], cfg["std"])
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(x_all) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    history = []
    report = progress or (lambda *_: None)
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        total, correct = 0.0, 0
        last = f", loss {history[-1]['loss']:.3f}, accuracy {history[-1]['accuracy']:.3f}" if history else ""
        for idx in torch.split(order, batch_size):
            x = x_all[idx]
            # light augmentation: random flips and shifts keep it from memorising pixels
            if torch.rand(1, generator=gen).item() < 0.5:
                x = x.flip(3)
            shift = torch.randint(-image_size // 8, image_size // 8 + 1, (2,), generator=gen)
            x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            if color_jitter > 0 and torch.rand(1, generator=gen).item() < color_jitter:
                # swap colour channels and rescale them: concepts must be told apart by shape and
                # texture too, not by palette alone (as photographs vary in colour and lighting)
                perm = torch.randperm(3, generator=gen)
                gain = 1.0 + 0.3 * (torch.rand(3, generator=gen) - 0.5)
                x = x[:, perm] * gain[None, :, None, None]
            x = x.to(dev)
            y = labels[idx].to(dev)
            # train on the first n_classes outputs: the saved state dict keeps timm's own head shape
            logits = model(x)[:, :n_classes]
            loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            step += 1
            report(f"pretrain {backbone}: epoch {epoch + 1}/{epochs}{last}", step, steps)
        history.append({"epoch": epoch, "loss": total / len(x_all), "accuracy": correct / len(x_all)})
    model.eval().cpu()
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"backbone": backbone, "image_size": str(image_size), "classes": str(n_classes)})
    summary = {
        "backbone": backbone, "weights": str(out), "image_size": image_size, "classes": n_classes,
        "images": len(x_all), "epochs": epochs, "color_jitter": color_jitter, "train_accuracy": history[-1]["accuracy"],
        "train_loss": history[-1]["loss"], "history": history, "seconds": round(time.perf_counter() - started, 1),
        "fit_options": f"--backbone {backbone} --weights {out} --image-size {image_size}",
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return summary
