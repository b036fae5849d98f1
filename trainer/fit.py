"""Shallow-alignment training (``bci-train fit``) and the retrieval evaluation shared with
``bci-train eval``.

For each candidate layer of the backbone, an EEG/MEG encoder + linear projector and an
image-side linear projector are trained with symmetric InfoNCE on (repetition-averaged
EEG, pooled layer features) pairs.  The best epoch and, with ``--layer auto``, the best
layer are chosen on *validation concepts* held out from the training set; the test set is
only evaluated once, for the chosen model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ._io import atomic_path, atomic_write_text
from .bundle import save_bundle
from .config import FitConfig, default_cache_dir, layer_key, layer_list, parse_layer
from .data.splits import validation_split
from .datasets import SubjectData, load_fit_data
from .losses import clip_loss
from .metrics import kway_accuracy, topk_accuracy
from .model import AlignmentModel

__all__ = ["FitConfig", "default_cache_dir", "evaluate_bundle", "evaluate_retrieval", "fit", "parse_layer"]

logger = logging.getLogger("trainer")

CHECKPOINT_SECONDS = 30.0


def _candidate_layers(cfg: FitConfig, n_layers: int) -> list[str | int]:
    """--layer K / final trains that layer; --layer auto the --layers list, or the paper's sweep."""
    layer = parse_layer(cfg.layer)
    if layer == "auto":
        return layer_list(cfg.layers or "auto", n_layers, name=f"layers ({cfg.backbone})")
    return layer_list(str(layer), n_layers, name=f"layer ({cfg.backbone})")


# -- evaluation -----------------------------------------------------------------------------


def _embed(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, device: torch.device, batch: int = 2048) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            z = fn(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32)).to(device))
            out.append(torch.nn.functional.normalize(z, dim=1).float().cpu().numpy())
    return np.concatenate(out)


def evaluate_retrieval(
    embed: Callable[[torch.Tensor], torch.Tensor],
    test: np.ndarray,
    gallery: np.ndarray,
    targets: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    kways: tuple[int, ...] = (2, 4, 10),
) -> dict[str, Any]:
    """Zero-shot retrieval of test epochs against a gallery of image embeddings.

    Parameters
    ----------
    embed : callable
        Epoch tensor (B, C, T) -> embedding (B, D).
    test : array (n_images, n_repetitions, C, T)
        Normalised test epochs; row i shows gallery item ``targets[i]``.
    gallery : array (N, D)
        L2-normalised gallery embeddings.

    Returns
    -------
    dict with ``n_way``, ``chance_top1``, ``averaged`` and ``single_trial`` (top1/top5),
    and ``kway`` (top-1 of 2/4/10-way subsets, averaged repetitions).
    """
    device = torch.device(device)
    n_img, n_rep = test.shape[:2]
    avg = _embed(embed, test.mean(axis=1), device)
    sim_avg = avg @ gallery.T
    single = _embed(embed, test.reshape(n_img * n_rep, *test.shape[2:]), device)
    sim_single = single @ gallery.T
    n_way = gallery.shape[0]
    result = {
        "n_way": int(n_way),
        "chance_top1": 1.0 / n_way,
        "n_test_images": int(n_img),
        "n_repetitions": int(n_rep),
        "averaged": topk_accuracy(sim_avg, targets),
        "single_trial": topk_accuracy(sim_single, np.repeat(targets, n_rep)),
        "kway": {str(k): kway_accuracy(sim_avg, targets, k)["top1"] for k in kways if k < n_way},
    }
    return result


# -- checkpoints ----------------------------------------------------------------------------


def _save_checkpoint(path: Path, model: torch.nn.Module, best_state: dict, opt: torch.optim.Optimizer, info: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    tensors["rng.cpu"] = torch.get_rng_state()  # dropout draws continue as in an uninterrupted run
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    opt_state = opt.state_dict()
    steps = {}
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"opt.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                steps[f"{idx}.{name}"] = float(value)
    info = dict(info, opt_scalars=steps, param_groups=[{k: v for k, v in g.items() if k != "params"} for g in opt_state["param_groups"]])
    token = uuid.uuid4().hex
    info["token"] = token
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"token": token})
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=1))


def _load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, fingerprint: str) -> tuple[dict, dict] | None:
    from safetensors import safe_open

    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        info = json.loads(meta_path.read_text())
        with safe_open(str(path), framework="pt") as fh:
            if fh.metadata().get("token") != info.get("token"):
                raise ValueError("checkpoint files are from different saves")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        logger.warning("ignoring unreadable checkpoint %s (%s); starting that layer again", path, err)
        return None
    if info.get("fingerprint") != fingerprint:
        logger.info("checkpoint %s is from other settings; starting that layer again", path)
        return None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    state = opt.state_dict()
    for idx_s in {k.split(".")[1] for k in tensors if k.startswith("opt.")} | {k.split(".")[0] for k in info["opt_scalars"]}:
        idx = int(idx_s)
        entry = {}
        for k, v in tensors.items():
            if k.startswith(f"opt.{idx}."):
                entry[k.split(".", 2)[2]] = v
        for k, v in info["opt_scalars"].items():
            if k.startswith(f"{idx}."):
                entry[k.split(".", 1)[1]] = torch.tensor(v)
        state["state"][idx] = entry
    for group, saved in zip(state["param_groups"], info["param_groups"]):
        group.update(saved)
    opt.load_state_dict(state)
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda"))]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return info, best


# -- training -------------------------------------------------------------------------------


@dataclass
class LayerResult:
    layer: str | int
    best_val_top1: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=dict, repr=False)


@dataclass
class _Split:
    """Training EEG split into fit and validation rows, put on the device once for all layers."""

    x_fit: torch.Tensor
    fit_images: np.ndarray
    x_val: np.ndarray
    val_images: np.ndarray
    val_targets: np.ndarray

    @classmethod
    def of(cls, data: SubjectData, fit_rows: np.ndarray, val_rows: np.ndarray, device: torch.device) -> "_Split":
        val_images, val_targets = np.unique(data.train_image_ids[val_rows], return_inverse=True)
        return cls(x_fit=torch.from_numpy(data.train[fit_rows]).to(device), fit_images=data.train_image_ids[fit_rows],
                   x_val=data.train[val_rows], val_images=val_images, val_targets=val_targets)


def _train_layer(
    cfg: FitConfig,
    layer: str | int,
    data: SubjectData,
    features: np.ndarray,
    split: _Split,
    device: torch.device,
    ckpt_dir: Path,
    fingerprint: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[LayerResult, AlignmentModel]:
    from tqdm import tqdm

    n_chans, n_times = data.train.shape[1:]
    enc_cfg = {"name": cfg.encoder, "n_chans": int(n_chans), "n_times": int(n_times), "embed_dim": cfg.embed_dim}
    torch.manual_seed(cfg.seed)
    model = AlignmentModel(enc_cfg, features.shape[1], cfg.proj_dim, temperature=cfg.temperature,
                           learn_temperature=cfg.learn_temperature).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # the whole training set lives on the device as tensors: no per-sample Python loop
    x_fit, x_val, val_targets = split.x_fit, split.x_val, split.val_targets
    # image features standardised with the statistics of the fitting images (pooled
    # activations share a large positive mean that would otherwise dominate the cosine);
    # folded into the image projector at the end, so the model takes raw features
    f_fit = torch.from_numpy(features[split.fit_images]).to(device)
    f_mean, f_std = f_fit.mean(dim=0), f_fit.std(dim=0).clamp_min(1e-6 * float(f_fit.std()) + 1e-12)
    f_fit = (f_fit - f_mean) / f_std
    f_val = (torch.from_numpy(features[split.val_images]).to(device) - f_mean) / f_std

    ckpt = ckpt_dir / f"{layer_key(layer)}.safetensors"
    result = LayerResult(layer=layer, best_val_top1=-1.0, best_epoch=-1)
    start = 0
    resumed = _load_checkpoint(ckpt, model, opt, fingerprint)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resumed is not None:
        info, best_state = resumed
        start = int(info["epoch"]) + 1
        result.best_val_top1, result.best_epoch, result.history = info["best_val_top1"], info["best_epoch"], info["history"]
        logger.info("%s: resuming after epoch %d", layer_key(layer), start)
    n = len(x_fit)
    n_batches = max(1, math.ceil(n / cfg.batch_size))
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(start):  # keep the shuffling sequence of an uninterrupted run
        torch.randperm(n, generator=gen)
    bar = tqdm(range(start, cfg.epochs), desc=f"{layer_key(layer)}", unit="epoch", file=sys.stderr,
               disable=None, leave=False, dynamic_ncols=True, initial=start, total=cfg.epochs)
    last_save = time.perf_counter()
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for idx in torch.tensor_split(order, n_batches):
            loss = clip_loss(model.embed_brain(x_fit[idx]), model.embed_images(f_fit[idx]), model.logit_scale())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.logit_scale.clamp_()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.inference_mode():
            gal = torch.nn.functional.normalize(model.embed_images(f_val), dim=1).cpu().numpy()
        val = topk_accuracy(_embed(model.embed_brain, x_val, device) @ gal.T, val_targets)["top1"]
        result.history.append({"epoch": epoch, "loss": total / n, "val_top1": val,
                               "temperature": float(model.logit_scale.temperature)})
        if val > result.best_val_top1:
            result.best_val_top1, result.best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{total / n:.3f}", val_top1=f"{val:.3f}", best=f"{result.best_val_top1:.3f}")
        if progress is not None:
            progress(f"training {layer_key(layer)}", epoch + 1, cfg.epochs)
        # checkpoint at most every CHECKPOINT_SECONDS (and after the last epoch): an
        # interruption loses little, and small runs are not slowed by writing weights each epoch
        if epoch == cfg.epochs - 1 or time.perf_counter() - last_save >= CHECKPOINT_SECONDS:
            _save_checkpoint(ckpt, model, best_state, opt, {
                "epoch": epoch, "best_val_top1": result.best_val_top1, "best_epoch": result.best_epoch,
                "history": result.history, "fingerprint": fingerprint,
            })
            last_save = time.perf_counter()
    bar.close()
    model.load_state_dict(best_state)
    model.fold_feature_standardisation(f_mean, f_std)
    model.eval()
    result.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result, model


def _fingerprint(cfg: FitConfig, layer_key: str, extra: dict) -> str:
    ignored = ("out", "device", "cache", "image_batch_size", "epochs", "layer", "layers")
    keep = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignored}
    return hashlib.sha256(json.dumps([keep, layer_key, extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_features(backbone, cfg: FitConfig, train_images, test_images, layers, cache: Path,
                   report: Callable[[str, int, int], None] | None = None) -> tuple[dict, dict]:
    """Pooled features of the training and test images for ``layers`` (one backbone pass
    per image set for all layers; cached on disk)."""
    from tqdm import tqdm

    from .vision import cached_features

    data_id = hashlib.sha256(str(Path(cfg.data).expanduser().resolve()).encode()).hexdigest()[:12]
    out = []
    for part, images in (("training", train_images), ("test", test_images)):
        bar = tqdm(total=len(images), desc=f"{backbone.name} features ({part})", unit="img", file=sys.stderr,
                   disable=None, leave=False, dynamic_ncols=True)

        def progress(done: int, total: int, bar=bar, part=part) -> None:
            bar.n = done
            bar.refresh()
            if report is not None:
                report(f"image features ({part})", done, total)

        try:
            out.append(cached_features(backbone, images, layers, pooling=cfg.pooling, cache_dir=cache / "features",
                                       image_set_id=f"{data_id}-{part}-{len(images)}", batch_size=cfg.image_batch_size,
                                       progress=progress))
        finally:
            bar.close()
    return out[0], out[1]


def fit(cfg: FitConfig, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Train, select on validation concepts, evaluate on the test set, write the bundle.

    ``progress(phase, done, total)``, when given, is called as image features are computed
    and after every training epoch of every candidate layer.
    Returns the metrics (also in ``RUN/metrics.json``)."""
    from .vision import load_backbone, resolve_device

    cfg.validate()
    started = time.perf_counter()
    out = Path(cfg.out).expanduser()
    cache = Path(cfg.cache).expanduser() if cfg.cache else default_cache_dir()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    # random backbone weights are seeded apart from training, so seeds vary training only
    backbone = load_backbone(cfg.backbone, cfg.weights, device=device, seed=0,
                             model_kwargs={"img_size": cfg.image_size} if cfg.image_size else None)
    candidates = _candidate_layers(cfg, backbone.n_layers)  # bad names and layers fail before any data work
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    data = load_fit_data(cfg.data, cfg.subject, source=cfg.source, spec=cfg.spec, inter=cfg.inter,
                         cache_dir=cache / "epochs")
    logger.info("data: %d training images (subjects %s), %d test images x %d repetitions, %d channels x %d times (%s)",
                len(data.train), data.subjects_train, data.test.shape[0], data.test.shape[1], data.train.shape[1],
                data.train.shape[2], data.source)

    keys = [layer_key(k) for k in candidates]
    cache.mkdir(parents=True, exist_ok=True)
    feats_train, feats_test = image_features(backbone, cfg, data.train_images, data.test_images, candidates, cache,
                                            report=progress)

    concepts = data.train_images.concept_index[data.train_image_ids]
    fit_rows, val_rows = validation_split(concepts, fraction=cfg.val_fraction, seed=cfg.seed)
    results = []
    best: tuple[LayerResult, AlignmentModel] | None = None
    split = _Split.of(data, fit_rows, val_rows, device)
    extra = {"backbone": backbone.weights_id, "n_train": len(data.train), "spec": data.spec.to_dict()}
    for layer, key in zip(candidates, keys):
        res, model = _train_layer(cfg, layer, data, feats_train[key], split, device,
                                  out / "checkpoints", _fingerprint(cfg, key, extra), progress=progress)
        results.append(res)
        logger.info("%s (depth %s): best validation top-1 %.3f at epoch %d", key,
                    "final" if layer == "final" else f"{(layer + 1) / backbone.n_layers:.2f}", res.best_val_top1, res.best_epoch)
        if best is None or res.best_val_top1 > best[0].best_val_top1:
            best = (res, model)
    chosen, model = best
    key = layer_key(chosen.layer)
    with torch.inference_mode():
        gallery = torch.nn.functional.normalize(
            model.embed_images(torch.from_numpy(feats_test[key]).to(device)), dim=1).cpu().numpy()
    targets = data.test_image_ids  # row i shows test image test_image_ids[i]; gallery is in image order
    metrics = evaluate_retrieval(model.embed_brain, data.test, gallery, targets, device=device)
    metrics.update({
        "subject": cfg.subject,
        "inter_subject": cfg.inter,
        "train_subjects": data.subjects_train,
        "layer": chosen.layer,
        "layer_depth": None if chosen.layer == "final" else (chosen.layer + 1) / backbone.n_layers,
        "n_layers": backbone.n_layers,
        "val_top1": chosen.best_val_top1,
        "best_epoch": chosen.best_epoch,
        "n_val_concepts": int(len(np.unique(concepts[val_rows]))),
        "layer_sweep": [{"layer": r.layer, "val_top1": r.best_val_top1, "best_epoch": r.best_epoch} for r in results],
        "history": chosen.history,
        "seconds": round(time.perf_counter() - started, 1),
    })
    test_images = data.test_images
    save_bundle(
        out,
        model=model,
        spec=data.spec,
        gallery_features=feats_test[key],
        gallery_ids=np.arange(1, len(test_images) + 1),
        gallery_concepts=test_images.concept_names,
        gallery_files=[str(Path(c) / f) for c, f in zip(test_images.concepts, test_images.files)],
        gallery_images=[(lambda i=i: test_images.open(i)) for i in range(len(test_images))],
        backbone={"name": backbone.name, "weights": cfg.weights, "weights_id": backbone.weights_id, "image_size": cfg.image_size,
                  "n_params": backbone.n_params, "n_layers": backbone.n_layers,
                  "preprocessing_id": backbone.preprocessing_id()},
        layer=chosen.layer,
        pooling=cfg.pooling,
        provenance={"data": str(Path(cfg.data).expanduser().resolve()), "subject": cfg.subject, "inter": cfg.inter,
                    "train_subjects": data.subjects_train, "source": data.source, "seed": cfg.seed,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__},
        metrics={k: metrics[k] for k in ("n_way", "averaged", "single_trial", "kway", "layer", "val_top1")},
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_bundle(bundle_path: str | Path, data: str | Path, subject: int, *, source: str = "auto",
                    device: str = "auto", cache: str | Path | None = None) -> dict[str, Any]:
    """Reproduce a run's test metrics from its bundle alone (``bci-train eval``)."""
    from .bundle import load_bundle
    from .datasets import load_test_data
    from .errors import DataFormatError
    from .vision import resolve_device

    bundle = load_bundle(bundle_path)
    if source == "auto":
        source = bundle.config["provenance"].get("source", "auto")
    cache_dir = Path(cache).expanduser() if cache else default_cache_dir()
    test, image_ids = load_test_data(data, subject, bundle.spec, source=source, cache_dir=cache_dir / "epochs")
    lookup = {int(g): i for i, g in enumerate(bundle.gallery_ids)}
    missing = [int(i) + 1 for i in image_ids if int(i) + 1 not in lookup]
    if missing:
        raise DataFormatError(bundle.path / "gallery.json", "items",
                              f"test image(s) {missing[:5]} of the data are not in the bundle's gallery")
    targets = np.array([lookup[int(i) + 1] for i in image_ids])
    dev = resolve_device(device)
    brain = bundle.brain.to(dev)
    metrics = evaluate_retrieval(brain, test, bundle.gallery, targets, device=dev)
    metrics.update({"subject": subject, "bundle": str(bundle.path), "layer": bundle.config["layer"]})
    return metrics
