"""--precision: what the training steps compute in (trainer.fit.train_epoch).

fp32 must reproduce the plain float32 loop bit for bit; bf16 must really run the encoder and
projectors under bfloat16 autocast, keep the loss and everything after training in float32,
and still learn."""

import json

import pytest
import torch

from trainer import fit as fit_module
from trainer.config import FitConfig
from trainer.errors import UsageError
from trainer.fit import resolve_precision, train_epoch
from trainer.losses import clip_loss
from trainer.model import AlignmentModel, embed_epochs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(n=96, c=3, t=10, d=12, seed=0):
    """EEG that is a noisy linear image of its paired features: a retrieval problem a few
    epochs solve."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g)
    x = (feats @ torch.randn(d, c * t, generator=g)).reshape(n, c, t) + 0.1 * torch.randn(n, c, t, generator=g)
    return x, feats


def _model_and_opt(c=3, t=10, d=12):
    torch.manual_seed(0)
    model = AlignmentModel({"name": "eegproject", "n_chans": c, "n_times": t, "embed_dim": 32}, d, 16)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)


def _batches(n, epoch, size=32):
    return list(torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).split(size))


def test_auto_is_fp32_on_cpu_and_names_are_checked():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert FitConfig(data="d", out="o").precision == "auto"
    with pytest.raises(UsageError, match=r"--precision \(precision\) must be one of 'auto', 'bf16', 'fp32'; got 'fp16'"):
        FitConfig(data="d", out="o", precision="fp16").validate()


def test_fp32_epoch_is_bit_identical_to_the_plain_float32_loop():
    """The loop as it was before --precision (a float() of the loss every step)."""
    x, feats = _problem()
    ours, ours_opt = _model_and_opt()
    plain, plain_opt = _model_and_opt()
    for epoch in range(3):
        batches = _batches(len(x), epoch)
        total = 0.0
        torch.manual_seed(epoch)  # the same dropout draws for both
        plain.train()
        for idx in batches:
            loss = clip_loss(plain.embed_brain(x[idx]), plain.embed_images(feats[idx]), plain.logit_scale())
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()
            plain.logit_scale.clamp_()
            total += float(loss.detach()) * len(idx)
        torch.manual_seed(epoch)
        ours.train()
        assert train_epoch(ours, ours_opt, x, feats, batches, "fp32") == total / len(x)
    for key, value in plain.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_bf16_runs_the_linear_layers_under_autocast_and_the_loss_in_float32(monkeypatch):
    x, feats = _problem()
    model, opt = _model_and_opt()
    seen: dict[str, set] = {"encoder": set(), "brain": set(), "images": set(), "loss": set()}
    hooks = [module.register_forward_hook(lambda m, i, out, name=name: seen[name].add(out.dtype))
             for name, module in (("encoder", model.brain.encoder.head.proj), ("brain", model.brain.projector),
                                  ("images", model.image_projector))]

    def recording_loss(eeg, img, scale):
        seen["loss"].update({eeg.dtype, img.dtype})
        return clip_loss(eeg, img, scale)

    monkeypatch.setattr(fit_module, "clip_loss", recording_loss)
    model.train()
    train_epoch(model, opt, x, feats, _batches(len(x), 0), "bf16")
    assert seen == {"encoder": {torch.bfloat16}, "brain": {torch.bfloat16}, "images": {torch.bfloat16},
                    "loss": {torch.float32}}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # autocast casts copies; weights stay float32
    # after training, embeddings (validation, test, bundle, live app) are float32 computations
    for name in seen:
        seen[name].clear()
    model.eval()
    embed_epochs(model.embed_brain, x.numpy(), device="cpu")
    assert seen["encoder"] == {torch.float32} and seen["brain"] == {torch.float32}
    for hook in hooks:
        hook.remove()


def test_bf16_training_learns_the_tiny_problem():
    x, feats = _problem()
    model, opt = _model_and_opt()
    model.train()
    losses = [train_epoch(model, opt, x, feats, _batches(len(x), epoch), "bf16") for epoch in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        sim = torch.nn.functional.normalize(model.embed_brain(x), dim=1) @ torch.nn.functional.normalize(
            model.embed_images(feats), dim=1).T
    top1 = float((sim.argmax(1) == torch.arange(len(x))).float().mean())
    assert top1 > 0.5  # chance: 1/96


def test_fit_trains_with_the_precision_it_is_given(tiny_dataset, tmp_path, monkeypatch):
    used = []

    def recording_epoch(*args):
        used.append(args[5])  # (model, opt, x, features, batches, precision, masks)
        return train_epoch(*args)

    monkeypatch.setattr(fit_module, "train_epoch", recording_epoch)
    cfg = FitConfig(data=str(tiny_dataset), subject=1, out=str(tmp_path / "run"), backbone="resnet10t", weights="random",
                    image_size=32, layer="1", epochs=2, batch_size=128, embed_dim=32, proj_dim=16, precision="bf16",
                    cache=str(tmp_path / "cache"), device="cpu")
    metrics = fit_module.fit(cfg)
    assert used == ["bf16", "bf16"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "bf16"
    assert len(metrics["history"]) == 2 and 0 <= metrics["averaged"]["top1"] <= 1
