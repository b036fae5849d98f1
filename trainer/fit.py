"""Shallow-alignment training (``bci-train fit``) and the retrieval evaluation shared with
``bci-train eval``.

An EEG/MEG encoder + linear projector and an image-side linear projector are trained with
symmetric InfoNCE on (repetition-averaged EEG, pooled layer features) pairs.  The best
epoch and, with ``--layer auto``, the layer are chosen on *validation concepts* held out
from the training set: by default every candidate layer is scored by a ridge regression
from the EEG to its features (:mod:`trainer.layer_search`) and only the best is trained;
``--layer-search full`` trains one model per candidate and keeps the best.  The test set is
only evaluated once, for the chosen model.

The run folder (``--out``) receives the bundle, ``config.json`` and ``metrics.json``, and
nothing else: per-layer checkpoints (model, best model and optimiser state, for resuming
an interrupted run) live in the cache (:func:`checkpoint_dir`) and are deleted when the run
finishes.  A folder holding a finished run is never overwritten by other settings without
``overwrite`` (see :func:`fit`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .bundle import save_bundle
from .config import FitConfig, default_cache_dir, layer_key, layer_list, option_name, parse_layer, parse_subjects
from .data.splits import validation_split
from .datasets import SubjectData, load_fit_data
from .errors import UsageError
from .files import atomic_path, atomic_write_text
from .layer_search import rank_layers, ridge_layer_scores
from .losses import clip_loss
from .metrics import kway_accuracy, mean_rank, topk_accuracy
from .model import FUSIONS, AlignmentModel, WeightedLayerFusion, embed_epochs, normalised_embedding
from .progress import JobProgress, Progress
from .windows import parse_windows, stage_ends, stage_masks, stage_samples

__all__ = ["FitConfig", "Target", "checkpoint_dir", "default_cache_dir", "evaluate_bundle", "evaluate_retrieval",
           "feature_image_sets", "finished_run", "fit", "fit_confidence", "fusion_record", "image_features", "parse_layer",
           "evaluate_stages", "resolve_precision", "train_epoch"]

logger = logging.getLogger("trainer")

CHECKPOINT_SECONDS = 30.0
#: how much faster than --lr the layer weights of a weighted fusion learn (see _train_layer)
FUSION_LR_SCALE = 100.0


def _candidate_layers(cfg: FitConfig, n_layers: int) -> list[str | int]:
    """--layer K / final trains that layer; --layer auto the --layers list, or the paper's sweep."""
    layer = parse_layer(cfg.layer)
    if layer == "auto":
        return layer_list(cfg.layers or "auto", n_layers, name=f"--layers for {cfg.backbone}")
    return layer_list(str(layer), n_layers, name=f"--layer for {cfg.backbone}")


def _fusion_sets(cfg: FitConfig, candidates: list, n_layers: int, ranked: list | None = None) -> list[list]:
    """The layer sets ``--fusion`` tries, each in depth order: the ``--fusion-layers`` given,
    or (auto) the 2 and the 3 best candidates by the proxy (``ranked``, best first; before
    the proxy has ranked them, the first candidates, which are as many sets) and all of
    them, without repeats."""
    if cfg.fusion_layers != "auto":
        return [layer_list(cfg.fusion_layers, n_layers, name=f"--fusion-layers for {cfg.backbone}")]
    if len(candidates) < 2:
        raise UsageError(f"{option_name('fusion')} with {option_name('fusion_layers')} 'auto' fuses candidate layers: "
                         "give --layer auto (and --layers), or the layers with --fusion-layers")
    order = ranked or candidates
    sets: list[list] = []
    for n in (2, 3, len(candidates)):
        top = [k for k in candidates if k in order[:n]]
        if len(top) >= 2 and top not in sets:
            sets.append(top)
    return sets


def fusion_record(model: AlignmentModel, target: Target) -> dict | None:
    """What a bundle and metrics.json record of a fused target: the kind, the layers, each
    layer's feature size and, for "weighted", the learned layer weights; None for one layer."""
    if target.fusion is None:
        return None
    out = {"kind": target.fusion, "layers": list(target.layers), "feature_dims": list(model.feature_dims)}
    if isinstance(model.image_projector, WeightedLayerFusion):
        out["weights"] = [float(w) for w in model.image_projector.weights().detach().cpu()]
    return out


def _relative_depth(layer, n_layers: int):
    """(block + 1) / n_layers; None for the final embedding; a list for fused layers."""
    if isinstance(layer, list):
        return [_relative_depth(k, n_layers) for k in layer]
    return None if layer == "final" else (layer + 1) / n_layers


def _depth(layer: str | int, n_layers: int) -> str:
    return "final" if layer == "final" else f"{(layer + 1) / n_layers:.2f}"


def _layer_weights_plot(fusion: dict, n_layers: int, path: Path) -> None:
    """The learned layer weights of a weighted fusion against the layers' relative depth."""
    from .plots import new_figure, save_plot

    depth = [1.0 + 0.5 / n_layers if k == "final" else (k + 1) / n_layers for k in fusion["layers"]]
    fig, ax = new_figure(size=(5, 3.5))
    ax.bar(depth, fusion["weights"], width=0.6 / n_layers, label="learned weight (softmax)")
    ax.axhline(1 / len(depth), color="0.5", ls="--", lw=1, label="uniform")
    ax.set_xticks(depth, [str(k) for k in fusion["layers"]])
    save_plot(fig, ax, path, "layer (by relative depth; 'final': the pooled final embedding)", "weight")


# -- evaluation -----------------------------------------------------------------------------


def evaluate_retrieval(
    embed: Callable[[torch.Tensor], torch.Tensor],
    test: np.ndarray,
    gallery: np.ndarray,
    targets: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    kways: tuple[int, ...] = (2, 4, 10),
    temperatures: dict[str, dict[str, float]] | None = None,
    reliability_png: Path | None = None,
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

    temperatures : {"single_trial": {name: T, ...}, "averaged": {...}}, optional
        Softmax temperatures whose confidences to measure (e.g. "before": the training
        temperature, "after": the calibrated one): ``confidence`` then holds, per
        condition and name, the expected calibration error, mean top-1 confidence and top-1
        (:func:`trainer.confidence.calibration_record`); ``reliability_png`` draws their
        reliability diagrams.

    Returns
    -------
    dict with ``n_way``, ``chance_top1``, ``averaged`` and ``single_trial`` (top1/top5),
    ``kway`` (top-1 of 2/4/10-way subsets, averaged repetitions), and ``confidence`` when
    ``temperatures`` are given.
    """
    device = torch.device(device)
    n_img, n_rep = test.shape[:2]
    avg = embed_epochs(embed, test.mean(axis=1), device=device)
    sim_avg = avg @ gallery.T
    single = embed_epochs(embed, test.reshape(n_img * n_rep, *test.shape[2:]), device=device)
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
    if temperatures:
        from .confidence import calibration_record, reliability_plot

        panels, result["confidence"] = {}, {}
        for cond, sim, tg in (("single_trial", sim_single, np.repeat(targets, n_rep)), ("averaged", sim_avg, targets)):
            records = calibration_record(sim, tg, temperatures[cond])
            label = "single trials" if cond == "single_trial" else f"averaged over {n_rep} repetitions"
            panels[f"test, {label} ({n_way}-way)"] = records
            result["confidence"][cond] = {name: {k: v for k, v in rec.items() if k != "bins"} for name, rec in records.items()}
        if reliability_png is not None:
            reliability_plot(panels, reliability_png)
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


@dataclass(frozen=True)
class Target:
    """What the image side is aligned with: one layer (``fusion`` None), or several layers'
    features side by side, combined by ``fusion`` ("concat" or "weighted": trainer.model)."""

    layers: tuple
    fusion: str | None = None

    @property
    def key(self) -> str:
        """Its name in checkpoints and logs: ``layer_3``, ``weighted-layer_2+layer_3+final``."""
        if self.fusion is None:
            return layer_key(self.layers[0])
        return f"{self.fusion}-" + "+".join(layer_key(k) for k in self.layers)

    @property
    def layer(self) -> str | int | list:
        """As metrics and the bundle record it: the layer, or the list of fused layers."""
        return self.layers[0] if self.fusion is None else list(self.layers)

    def features(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """Its features (n, sum of the layers' sizes) from per-layer features."""
        parts = [feats[layer_key(k)] for k in self.layers]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def dims(self, feats: dict[str, np.ndarray]) -> list[int]:
        return [int(feats[layer_key(k)].shape[1]) for k in self.layers]


@dataclass
class LayerResult:
    target: Target
    best_val_top1: float
    best_epoch: int
    best_val_rank: float = 0.0  # mean percentile rank of the true image at the best epoch (1 = first)
    history: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=dict, repr=False)

    @property
    def layer(self) -> str | int | list:
        return self.target.layer

    def better_than(self, other: "LayerResult | None") -> bool:
        """Validation top-1, ties broken by the mean rank (the first of full equals stays)."""
        return other is None or (self.best_val_top1, self.best_val_rank) > (other.best_val_top1, other.best_val_rank)


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``--precision`` as the training steps run it: "bf16" or "fp32"; "auto" is bf16 on a
    CUDA GPU that supports it and fp32 elsewhere (on a CPU without native bf16, autocast
    runs the linear layers several times slower than fp32: docs/benchmarks.md)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def train_epoch(model: AlignmentModel, opt: torch.optim.Optimizer, x: torch.Tensor, features: torch.Tensor,
                batches: list[torch.Tensor], precision: str, masks: torch.Tensor | None = None) -> float:
    """One epoch of symmetric-InfoNCE steps, one per index tensor of ``batches`` (rows of
    ``x`` and ``features``, on their device); the mean loss per sample.

    With ``precision`` "bf16" the encoder and both projectors run under bfloat16 autocast
    (their linear layers multiply in bfloat16; the ops between them follow autocast's rules
    for the device; the weights and the optimiser state stay float32) and the loss, with its
    softmax, is computed in float32; "fp32" runs everything in float32, as training always
    did.  The losses stay on the device until the epoch ends: no step waits for the host.

    ``masks`` (n_stages, T) on the device, for ``--windows`` (:mod:`trainer.windows`): each
    epoch of a batch is multiplied by one of them, drawn at random (torch's global generator)."""
    losses = []
    for idx in batches:
        xb = x[idx]
        if masks is not None:
            xb = xb * masks[torch.randint(len(masks), (len(idx),)).to(x.device)][:, None, :]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            brain, images = model.embed_brain(xb), model.embed_images(features[idx])
        loss = clip_loss(brain.float(), images.float(), model.logit_scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.logit_scale.clamp_()
        losses.append(loss.detach())
    # summed on the host in float64, batch by batch, as the loss was always reported
    return sum(value * len(idx) for value, idx in zip(torch.stack(losses).cpu().tolist(), batches)) / sum(map(len, batches))


def _train_layer(
    cfg: FitConfig,
    target: Target,
    data: SubjectData,
    feats: dict[str, np.ndarray],
    split: _Split,
    device: torch.device,
    ckpt_dir: Path,
    fingerprint: str,
    job: JobProgress,
    label: str,
    masks: np.ndarray | None = None,
) -> tuple[LayerResult, AlignmentModel]:
    """Train one target's model (resuming from its checkpoint) on ``feats`` (per layer key);
    ``job`` step ``label`` follows its epochs.  With ``masks`` (``--windows``) it learns every
    stage, and the best epoch is the one of the best mean validation top-1 over the stages."""
    n_chans, n_times = data.train.shape[1:]
    enc_cfg = {"name": cfg.encoder, "n_chans": int(n_chans), "n_times": int(n_times), "embed_dim": cfg.embed_dim}
    features = target.features(feats)
    torch.manual_seed(cfg.seed)
    model = AlignmentModel(enc_cfg, target.dims(feats), cfg.proj_dim, temperature=cfg.temperature,
                           learn_temperature=cfg.learn_temperature, fusion=target.fusion).to(device)
    # fused AdamW on a GPU (one kernel for all parameters); on a CPU the default, whose
    # results a fused step would not reproduce bit for bit
    # a weighted fusion's layer weights learn FUSION_LR_SCALE times faster than the rest:
    # AdamW moves a parameter about lr per step, and at lr 1e-4 the few hundred steps of a run
    # leave softmax weights uniform within 1 % (measured: docs/training.md)
    gate = [p for name, p in model.named_parameters() if name == "image_projector.logits"]
    rest = [p for name, p in model.named_parameters() if name != "image_projector.logits"]
    groups = [{"params": rest}] + [{"params": gate, "lr": cfg.lr * FUSION_LR_SCALE, "weight_decay": 0.0}] * bool(gate)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)
    precision = resolve_precision(cfg.precision, device)
    logger.debug("%s: training steps in %s on %s", target.key, precision, device)
    # the whole training set lives on the device as tensors: no per-sample Python loop
    x_fit, x_val, val_targets = split.x_fit, split.x_val, split.val_targets
    # image features standardised with the statistics of the fitting images (pooled
    # activations share a large positive mean that would otherwise dominate the cosine);
    # folded into the image projector at the end, so the model takes raw features
    f_fit = torch.from_numpy(features[split.fit_images]).to(device)
    f_mean, f_std = f_fit.mean(dim=0), f_fit.std(dim=0).clamp_min(1e-6 * float(f_fit.std()) + 1e-12)
    f_fit = (f_fit - f_mean) / f_std
    f_val = (torch.from_numpy(features[split.val_images]).to(device) - f_mean) / f_std

    ckpt = ckpt_dir / f"{target.key}.safetensors"
    result = LayerResult(target=target, best_val_top1=-1.0, best_epoch=-1)
    start = 0
    resumed = _load_checkpoint(ckpt, model, opt, fingerprint)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resumed is not None:
        info, best_state = resumed
        start = min(int(info["epoch"]) + 1, cfg.epochs)
        result.best_val_top1, result.best_epoch, result.history = info["best_val_top1"], info["best_epoch"], info["history"]
        result.best_val_rank = info.get("best_val_rank", 0.0)
        logger.info("%s: resuming after epoch %d", target.key, start)
    job.skip(label, start / cfg.epochs)  # epochs already trained are no work left
    n = len(x_fit)
    n_batches = max(1, math.ceil(n / cfg.batch_size))
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(start):  # keep the shuffling sequence of an uninterrupted run
        torch.randperm(n, generator=gen)
    last_save = time.perf_counter()
    mask_t = None if masks is None else torch.from_numpy(masks).to(device)
    stage_val = [x_val] if masks is None else [x_val * m for m in masks]
    for epoch in range(start, cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        loss = train_epoch(model, opt, x_fit, f_fit, list(torch.tensor_split(order, n_batches)), precision, mask_t)
        model.eval()
        with torch.inference_mode():
            gal = normalised_embedding(model.embed_images, f_val).cpu().numpy()
        sims = [embed_epochs(model.embed_brain, xv, device=device) @ gal.T for xv in stage_val]
        per_stage = [topk_accuracy(sim, val_targets)["top1"] for sim in sims]
        val = float(np.mean(per_stage))
        result.history.append({"epoch": epoch, "loss": loss, "val_top1": val,
                               "temperature": float(model.logit_scale.temperature)})
        if masks is not None:
            result.history[-1]["val_top1_stages"] = per_stage
        if val > result.best_val_top1:
            result.best_val_top1, result.best_epoch = val, epoch
            result.best_val_rank = float(np.mean([mean_rank(sim, val_targets) for sim in sims]))
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # checkpoint at most every CHECKPOINT_SECONDS (and after the last epoch): an
        # interruption loses little, and small runs are not slowed by writing weights each
        # epoch; before the progress report, which may stop the run (a cancelled task)
        if epoch == cfg.epochs - 1 or time.perf_counter() - last_save >= CHECKPOINT_SECONDS:
            _save_checkpoint(ckpt, model, best_state, opt, {
                "epoch": epoch, "best_val_top1": result.best_val_top1, "best_epoch": result.best_epoch,
                "best_val_rank": result.best_val_rank, "history": result.history, "fingerprint": fingerprint,
            })
            last_save = time.perf_counter()
        job.update(label, epoch + 1 - start, cfg.epochs - start,
                   f"{label}: epoch {epoch + 1}/{cfg.epochs}, validation top-1 {val:.3f} "
                   f"(best {result.best_val_top1:.3f})")
    model.load_state_dict(best_state)
    model.fold_feature_standardisation(f_mean, f_std)
    model.eval()
    result.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result, model


def _fingerprint(cfg: FitConfig, layer_key: str, extra: dict) -> str:
    ignored = _NOT_SETTINGS + _RESUMABLE
    keep = {k: v for k, v in _resolved(cfg).items() if k not in ignored}
    return hashlib.sha256(json.dumps([keep, layer_key, extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_features(backbone, cfg: FitConfig, train_images, test_images, layers, cache: Path,
                   report: Progress | None = None) -> tuple[dict, dict]:
    """Pooled features of the training and test images for ``layers`` (one backbone pass
    per image set for all layers; cached on disk).

    ``report(phase, done, total)`` counts the images computed over both sets; it is not
    called for a set whose features were all in the cache."""
    from .vision import cached_features

    n_all = len(train_images) + len(test_images)
    out = []
    offset = 0
    for part, images, image_set_id in feature_image_sets(cfg, train_images, test_images):
        def progress(done: int, total: int, part=part, offset=offset) -> None:
            if report is not None:
                report(f"image features of {backbone.name} ({part} images)", offset + done, n_all)

        out.append(cached_features(backbone, images, layers, pooling=cfg.pooling, cache_dir=cache / "features",
                                   image_set_id=image_set_id, batch_size=cfg.image_batch_size, progress=progress))
        offset += len(images)
    return out[0], out[1]


def feature_image_sets(cfg: FitConfig, train_images, test_images) -> list[tuple[str, Any, str]]:
    """(part, images, image-set id of the feature cache) of the training and the test
    images of ``cfg.data``: what :func:`image_features` and ``bci-train features`` cache."""
    data_id = hashlib.sha256(str(Path(cfg.data).expanduser().resolve()).encode()).hexdigest()[:12]
    return [(part, images, f"{data_id}-{part}-{len(images)}") for part, images in (("training", train_images),
                                                                                 ("test", test_images))]


# -- the run folder -------------------------------------------------------------------------

#: settings that say where or how a run computes, not what it computes
_NOT_SETTINGS = ("out", "device", "cache", "image_batch_size", "trust_remote_code")
#: settings an interrupted run may change and still resume: each layer's checkpoint
#: carries its own epoch, so a resumed layer trains on to the new --epochs
_RESUMABLE = ("epochs", "layer", "layers")


def checkpoint_dir(out: str | Path, cache: str | Path | None = None) -> Path:
    """Where the checkpoints of the run whose folder is ``out`` live while it trains:
    ``<cache>/checkpoints/<hash of out's absolute path>`` (``cache``: ``--cache``, or
    :func:`default_cache_dir`).  Deleted when the run finishes."""
    out = Path(out).expanduser().resolve()
    cache = Path(cache).expanduser() if cache else default_cache_dir()
    return cache / "checkpoints" / hashlib.sha256(str(out).encode()).hexdigest()[:16]


def _resolved(cfg: FitConfig) -> dict[str, Any]:
    """The settings as ``config.json`` records them: paths absolute."""
    values = dataclasses.asdict(cfg)
    for key in ("data", "out", "cache"):
        if values[key]:
            values[key] = str(Path(values[key]).expanduser().resolve())
    if values["weights"] not in ("random", "hub"):
        values["weights"] = str(Path(values["weights"]).expanduser().resolve())
    return values


def _differences(before: dict, now: dict, ignore: tuple[str, ...]) -> list[str]:
    """``key: old -> new`` for every setting of ``now`` that ``before`` (a config.json)
    has otherwise; a key it lacks had its default value."""
    defaults = dataclasses.asdict(FitConfig())
    changed = []
    for key, value in now.items():
        if key in ignore:
            continue
        old = before.get(key, defaults.get(key))
        if key in ("data", "weights") and isinstance(old, str) and old not in ("", "random", "hub"):
            old = str(Path(old).expanduser().resolve())
        if old != value:
            changed.append(f"{key}: {old!r} -> {value!r}")
    return changed


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finished_run(cfg: FitConfig) -> dict | None:
    """The metrics of the run ``cfg`` when its folder holds it finished with the same
    settings (what :func:`fit` would return without training), else None; a UsageError
    when the folder holds a run of other settings.  Nothing is loaded or changed."""
    out = Path(cfg.out).expanduser()
    cache = Path(cfg.cache).expanduser() if cfg.cache else default_cache_dir()
    return _check_run_folder(cfg, out, checkpoint_dir(out, cache), overwrite=False)


def _check_run_folder(cfg: FitConfig, out: Path, ckpts: Path, overwrite: bool) -> dict | None:
    """Decide what to do with what ``out`` holds (see :func:`fit`): the stored metrics when
    it holds this very run finished, None to train; a UsageError when training would
    replace a finished run, or an interrupted one, of other settings."""
    finished = (out / "bundle.json").is_file() or (out / "metrics.json").is_file()
    if overwrite:
        # the folder becomes an unfinished run of the new settings at once, so that an
        # interruption does not leave the old bundle beside the new config.json
        for name in ("metrics.json", "bundle.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(ckpts, ignore_errors=True)
        return None
    before, now = _read_json(out / "config.json"), _resolved(cfg)
    replace = "give another --out, or --overwrite to replace it (overwrite=True in Python)"
    if finished:
        if before is None:
            raise UsageError(f"{out} holds a model bundle of unknown settings (no readable config.json); {replace}")
        changed = _differences(before, now, _NOT_SETTINGS)
        if changed:
            raise UsageError(f"{out} holds a finished run with other settings ({'; '.join(changed)}); {replace}")
        metrics = _read_json(out / "metrics.json") if (out / "bundle.json").is_file() else None
        if metrics is not None:
            logger.info("%s already holds this run, finished: nothing to train (--overwrite trains it again)", out)
            return metrics
        return None  # stopped while writing the bundle: finish it
    if before is not None and any(ckpts.glob("*.safetensors")):
        changed = _differences(before, now, _NOT_SETTINGS + _RESUMABLE)
        if changed:
            raise UsageError(f"{out} holds an interrupted run with other settings ({'; '.join(changed)}); run it "
                             f"again with its own settings to resume it, or {replace}")
    return None


# -- fit ------------------------------------------------------------------------------------

#: relative costs of the work of a run, for the time left shown while a run is young (seconds
#: on a 2-core CPU, only their ratios matter): a backbone forward pass per image, per million
#: parameters at 224 x 224 px (timm's resnet10t at its 176 px: about 20 ms), and an epoch,
#: per training sample and million encoder weights (EEGProject on 17 x 250 samples: about
#: 0.17 s for the 864 samples of the tiny set); measured on the demo's first run, where the
#: image features were a fifth of the fit
_IMAGE_COST = 0.006
_EPOCH_SAMPLE_COST = 0.000033
_BUNDLE_COST = 0.02  # per gallery image: embedding, thumbnail


def _job(cfg: FitConfig, backbone, data: SubjectData, n_fit: int, labels: list[str], report: Progress | None) -> JobProgress:
    """The steps of a run (the feature pass, one training per label, the bundle) and their
    estimated costs (see the constants above)."""
    pixels = float(np.prod(backbone.data_config["input_size"][1:])) / 224**2
    n_images = len(data.train_images) + len(data.test_images)
    enc_weights = (data.train.shape[1] * data.train.shape[2] + cfg.embed_dim + cfg.proj_dim) * cfg.embed_dim
    costs = {"features": n_images * _IMAGE_COST * backbone.n_params / 1e6 * pixels}
    for label in labels:
        costs[label] = cfg.epochs * n_fit * _EPOCH_SAMPLE_COST * enc_weights / 1e6
    costs["bundle"] = len(data.test_images) * _BUNDLE_COST
    return JobProgress(report, costs)


def fit(cfg: FitConfig, progress: Progress | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Train, select on validation concepts, evaluate on the test set, write the bundle.

    ``cfg.out`` is the run folder.  When it holds a finished run (``bundle.json`` /
    ``metrics.json``) of the same settings (all but where and how it computes: ``out``,
    ``device``, ``cache``, ``image_batch_size``), nothing is trained and its metrics are
    returned; of other settings, or unknown ones, a UsageError names the folder and the
    settings that differ.  An interrupted run resumes after the last checkpointed epoch of
    each layer, with the same settings (``epochs``, ``layer`` and ``layers`` may change);
    with others, a UsageError too.  ``overwrite=True`` (``--overwrite``) trains from the
    start whatever the folder holds and replaces it.  Checkpoints live in
    :func:`checkpoint_dir` and are deleted when the run finishes.

    ``progress(phase, done, total)``, when given, receives the progress of the whole run
    (image features, every epoch of every candidate layer, the bundle) in ``done`` /
    ``total``, and what is being done in ``phase`` (e.g. ``"layer_2 (3/6): epoch 13/50,
    ..."``); :class:`trainer.progress.ProgressBars` draws it.
    Returns the metrics (also in ``RUN/metrics.json``)."""
    from .vision import check_pooling, load_backbone, resolve_device

    cfg.validate()
    started = time.perf_counter()
    out = Path(cfg.out).expanduser()
    cache = Path(cfg.cache).expanduser() if cfg.cache else default_cache_dir()
    ckpts = checkpoint_dir(out, cache)
    stored = _check_run_folder(cfg, out, ckpts, overwrite)
    if stored is not None:
        return stored
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    # random backbone weights are seeded apart from training, so seeds vary training only
    backbone = load_backbone(cfg.backbone, cfg.weights, device=device, seed=0,
                             model_kwargs={"img_size": cfg.image_size} if cfg.image_size else None,
                             trust_remote_code=cfg.trust_remote_code, precision=cfg.feature_precision,
                             lazy=True)  # the weights are read only if a feature is not in the cache
    candidates = _candidate_layers(cfg, backbone.n_layers)  # bad names and layers fail before any data work
    kinds = (FUSIONS if cfg.fusion == "auto" else (cfg.fusion,)) if cfg.fusion != "none" else ()
    fused_sets = _fusion_sets(cfg, candidates, backbone.n_layers) if kinds else []  # how many (the proxy orders them)
    n_fused = len(fused_sets) * len(kinds)
    if any(k != "final" for k in candidates + [k for layers in fused_sets for k in layers]):
        check_pooling(backbone, cfg.pooling)
    atomic_write_text(out / "config.json", json.dumps(_resolved(cfg), indent=2) + "\n")
    if progress is not None:
        progress("loading the EEG epochs", 0, 1)
    data = load_fit_data(cfg.data, cfg.subject, source=cfg.source, spec=cfg.spec, inter=cfg.inter,
                         train_subjects=parse_subjects(cfg.train_subjects), cache_dir=cache / "epochs")
    logger.info("data: %d training images (subjects %s), %d test images x %d repetitions, %d channels x %d times (%s)",
                len(data.train), data.subjects_train, data.test.shape[0], data.test.shape[1], data.train.shape[1],
                data.train.shape[2], data.source)
    ends = stage_ends(data.spec, parse_windows(cfg.windows))  # the decision stages, the epoch's end last (checked now)

    keys = [layer_key(k) for k in candidates]
    concepts = data.train_images.concept_index[data.train_image_ids]
    fit_rows, val_rows = validation_split(concepts, fraction=cfg.val_fraction, seed=cfg.seed)
    # a single candidate needs no search; the proxy trains one layer, the full search all
    search = "fixed" if len(candidates) == 1 else cfg.layer_search
    # one layer's model unless --fusion concat/weighted asks for a fusion (auto weighs both)
    single = cfg.fusion in ("none", "auto")
    steps = (["chosen layer"] if search == "proxy" else keys) * single + [f"fusion {i + 1}" for i in range(n_fused)]
    labels = [f"{name} ({i + 1}/{len(steps)})" for i, name in enumerate(steps)]  # the job's steps, one per training
    job = _job(cfg, backbone, data, len(fit_rows), labels, progress)
    cache.mkdir(parents=True, exist_ok=True)
    needed = list(dict.fromkeys(candidates + [k for layers in fused_sets for k in layers]))
    feats_train, feats_test = image_features(backbone, cfg, data.train_images, data.test_images, needed, cache,
                                            report=job.callback("features"))
    if job.fraction["features"] == 0:
        job.skip("features")  # all cached
    split = _Split.of(data, fit_rows, val_rows, device)
    masks = stage_masks(data.spec, ends) if len(ends) > 1 else None
    proxy: dict[str, dict] = {}
    ranked = candidates
    if (single and search == "proxy") or (kinds and cfg.fusion_layers == "auto"):
        # training rows only: the test features stay untouched until the chosen model is tested
        scores = ridge_layer_scores(data.train[fit_rows], split.x_val, {k: feats_train[k][split.fit_images] for k in keys},
                                    {k: feats_train[k][split.val_images] for k in keys}, split.val_targets)
        proxy = {s.layer: s.to_dict() for s in scores}
        for s in scores:
            logger.info("%s: ridge proxy mean rank %.3f, top-1 %.3f (alpha %g)", s.layer, s.mean_rank, s.top1, s.alpha)
        ranked = [candidates[keys.index(key)] for key in rank_layers(scores)]
    targets = ([Target((ranked[0],))] if search == "proxy" else [Target((layer,)) for layer in candidates]) if single else []
    fused_sets = _fusion_sets(cfg, candidates, backbone.n_layers, ranked) if kinds else []
    targets += [Target(tuple(layers), kind) for kind in kinds for layers in fused_sets]
    results = []
    best: tuple[LayerResult, AlignmentModel] | None = None
    atomic_write_text(ckpts / "run.json", json.dumps({"out": str(out.resolve())}) + "\n")  # whose checkpoints these are
    extra = {"backbone": backbone.weights_id, "n_train": len(data.train), "spec": data.spec.to_dict()}
    for target, label in zip(targets, labels):
        res, model = _train_layer(cfg, target, data, feats_train, split, device, ckpts,
                                  _fingerprint(cfg, target.key, extra), job, label, masks)
        results.append(res)
        logger.info("%s (depth %s): best validation top-1 %.3f (mean rank %.3f) at epoch %d", target.key,
                    ", ".join(_depth(k, backbone.n_layers) for k in target.layers), res.best_val_top1, res.best_val_rank,
                    res.best_epoch)
        if res.better_than(best and best[0]):
            best = (res, model)
    chosen, model = best
    name = chosen.target.key
    job.update("bundle", 0, 1, f"calibrating the confidences of {name} on validation concepts")
    val_features = chosen.target.features(feats_train)[split.val_images]
    confidence = fit_confidence(model, data, val_rows, val_features, len(data.test_images), device, seed=cfg.seed)
    # the provisional stages: each its own calibration, on its own share of the validation epochs
    windows = [{"end": end, "n_times": stage_samples(data.spec, end),
                "confidence": fit_confidence(model, data, val_rows, val_features, len(data.test_images), device,
                                             seed=cfg.seed, mask=mask)}
               for end, mask in zip(ends[:-1], masks if masks is not None else [])]
    logger.info("confidence: temperature %.4g (training) -> %.4g single trials, %.4g averaged (validation ECE %.3f -> %.3f "
                "single trials)", confidence["training_temperature"], confidence["single_trial"]["temperature"],
                confidence["averaged"]["temperature"], confidence["single_trial"]["val_ece_before"],
                confidence["single_trial"]["val_ece_after"])
    job.update("bundle", 0, 1, f"testing {name} and writing the bundle")
    metrics = _test_and_save(cfg, out, data, backbone, model, chosen, chosen.target.features(feats_test), device,
                             layer_search=search, confidence=confidence, windows=windows)
    by_key = {r.target.key: r for r in results}
    metrics.update({
        "n_val_concepts": int(len(np.unique(concepts[val_rows]))),
        "layer_search": search,
        "confidence_fit": confidence,
        # every candidate; the proxy's scores for each, validation top-1 for each trained one
        "layer_sweep": [dict({"layer": layer}, **proxy.get(key, {}),
                             **({"val_top1": by_key[key].best_val_top1, "val_rank": by_key[key].best_val_rank,
                                 "best_epoch": by_key[key].best_epoch} if key in by_key else {}))
                        for layer, key in zip(candidates, keys)],
        "history": chosen.history,
        "seconds": round(time.perf_counter() - started, 1),
    })
    if cfg.fusion != "none":  # every target tried, single and fused, with its validation scores
        metrics["fusion_sweep"] = [{"fusion": r.target.fusion or "none", "layers": list(r.target.layers),
                                    "val_top1": r.best_val_top1, "val_rank": r.best_val_rank, "best_epoch": r.best_epoch}
                                   for r in results]
    if chosen.target.fusion == "weighted":
        _layer_weights_plot(metrics["fusion"], backbone.n_layers, out / "layer_weights.png")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(ckpts, ignore_errors=True)  # finished: the bundle is all that is kept
    job.update("bundle", 1, 1, "done")
    return metrics


def fit_confidence(model: AlignmentModel, data: SubjectData, val_rows: np.ndarray, val_features: np.ndarray,
                   n_way: int, device: torch.device, *, seed: int = 0, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Calibrate the trained model's confidences on validation concepts (never the test
    images): a temperature for single trials and one for repetition-averaged epochs, each
    minimising the negative log-likelihood of the shown image among ``n_way`` validation
    images (:func:`trainer.confidence.fit_temperature`); ``val_features`` are the raw layer
    features of the validation images, ``np.unique`` of the rows' image ids in order.

    ``mask`` (T,): calibrate a provisional stage (``--windows``), the epochs masked by it.
    Returns what the bundle records under ``confidence``, with the validation ECE before
    (the training temperature) and after."""
    from .confidence import calibrate

    val_images, targets = np.unique(data.train_image_ids[val_rows], return_inverse=True)
    if len(val_features) != len(val_images):
        raise ValueError(f"fit_confidence: {len(val_features)} feature rows for {len(val_images)} validation images")
    with torch.inference_mode():
        gallery = normalised_embedding(model.embed_images, torch.from_numpy(val_features).to(device)).cpu().numpy()
    single = data.train_single_trials(val_rows)
    averaged = data.train[val_rows]
    if mask is not None:
        single, averaged = single * mask, averaged * mask
    reps = single.shape[1]
    conditions = {
        "single_trial": (embed_epochs(model.embed_brain, single.reshape(-1, *single.shape[2:]), device=device) @ gallery.T,
                         np.repeat(targets, reps)),
        "averaged": (embed_epochs(model.embed_brain, averaged, device=device) @ gallery.T, targets),
    }
    trained = float(model.logit_scale.temperature)
    out: dict[str, Any] = {"method": "temperature", "n_way": int(n_way), "fitted_on": "validation concepts",
                           "n_val_images": int(len(val_images)), "training_temperature": trained}
    for cond, (sim, tg) in conditions.items():
        out[cond] = calibrate(sim, tg, n_way, trained, seed=seed)
    out["averaged"]["n_repetitions"] = int(reps)
    return out


def _test_and_save(cfg: FitConfig, out: Path, data: SubjectData, backbone, model: AlignmentModel, chosen: LayerResult,
                   gallery_features: np.ndarray, device: torch.device, *, layer_search: str = "fixed",
                   confidence: dict | None = None, windows: list[dict] | None = None) -> dict[str, Any]:
    """Evaluate the chosen model on the test set (once) and write the bundle; the test
    metrics.  ``confidence`` (:func:`fit_confidence`) goes into the bundle, and the test
    confidences are measured at the training and the calibrated temperatures
    (``metrics["confidence"]``, ``RUN/reliability.png``).  ``windows``: the provisional
    stages (``--windows``: end, n_times, confidence), each tested too (``metrics["windows"]``,
    the whole epoch last) and recorded in the bundle."""
    from .vision import dtype_name

    with torch.inference_mode():
        gallery = normalised_embedding(model.embed_images, torch.from_numpy(gallery_features).to(device)).cpu().numpy()
    targets = data.test_image_ids  # row i shows test image test_image_ids[i]; gallery is in image order
    temperatures = None
    if confidence is not None:
        trained = float(model.logit_scale.temperature)
        temperatures = {cond: {"before": trained, "after": confidence[cond]["temperature"]} for cond in ("single_trial", "averaged")}
    metrics = evaluate_retrieval(model.embed_brain, data.test, gallery, targets, device=device, temperatures=temperatures,
                                 reliability_png=out / "reliability.png" if confidence is not None else None)
    metrics.update({
        "subject": cfg.subject,
        "inter_subject": cfg.inter,
        "train_subjects": data.subjects_train,
        "layer": chosen.layer,
        "layer_depth": _relative_depth(chosen.layer, backbone.n_layers),
        "n_layers": backbone.n_layers,
        "val_top1": chosen.best_val_top1,
        "best_epoch": chosen.best_epoch,
    })
    fusion = fusion_record(model, chosen.target)
    if fusion is not None:
        metrics["fusion"] = fusion
    if windows:
        metrics["windows"] = evaluate_stages(model.embed_brain, data.test, gallery, targets, data.spec, [
            (w["end"], {cond: {"before": float(model.logit_scale.temperature), "after": w["confidence"][cond]["temperature"]}
                        for cond in ("single_trial", "averaged")}) for w in windows], device=device) + [_stage_of(metrics, data.spec)]
    test_images = data.test_images
    save_bundle(
        out,
        model=model,
        spec=data.spec,
        gallery_features=gallery_features,
        gallery_ids=np.arange(1, len(test_images) + 1),
        gallery_concepts=test_images.concept_names,
        gallery_files=[str(Path(c) / f) for c, f in zip(test_images.concepts, test_images.files)],
        gallery_images=[(lambda i=i: test_images.open(i)) for i in range(len(test_images))],
        backbone={"name": backbone.name, "provider": backbone.provider, "weights": cfg.weights, "weights_id": backbone.weights_id,
                  "image_size": cfg.image_size, "dtype": dtype_name(backbone.dtype),
                  "n_params": backbone.n_params, "n_layers": backbone.n_layers,
                  "preprocessing_id": backbone.preprocessing_id()},
        layer=chosen.layer,
        pooling=cfg.pooling,
        provenance={"data": str(Path(cfg.data).expanduser().resolve()), "subject": cfg.subject, "inter": cfg.inter,
                    "train_subjects": data.subjects_train, "source": data.source, "seed": cfg.seed, "layer_search": layer_search,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__},
        metrics={k: metrics[k] for k in ("n_way", "averaged", "single_trial", "kway", "layer", "val_top1", "confidence")
                 if k in metrics},
        confidence=confidence,
        fusion=fusion,
        windows=[{"end": w["end"], "n_times": w["n_times"],
                  **{cond: {"temperature": w["confidence"][cond]["temperature"]} for cond in ("single_trial", "averaged")}}
                 for w in windows or []] or None,
    )
    return metrics


def evaluate_stages(embed, test: np.ndarray, gallery: np.ndarray, targets: np.ndarray, spec, stages: list[tuple],
                    *, device: torch.device | str) -> list[dict[str, Any]]:
    """Test figures of the provisional stages ``stages`` [(end, temperatures)] (``--windows``):
    :func:`evaluate_retrieval` on the test epochs up to each end (the rest zeroed)."""
    out = []
    for end, temperatures in stages:
        mask = stage_masks(spec, [end])[0]
        m = evaluate_retrieval(embed, test * mask, gallery, targets, device=device, temperatures=temperatures)
        out.append({"end": end, "n_times": stage_samples(spec, end), "averaged": m["averaged"],
                    "single_trial": m["single_trial"], "confidence": m.get("confidence")})
    return out


def _stage_of(metrics: dict, spec) -> dict[str, Any]:
    """The whole epoch as the last stage of ``metrics["windows"]``."""
    return {"end": float(spec.tmax), "n_times": spec.n_times, "averaged": metrics["averaged"],
            "single_trial": metrics["single_trial"], "confidence": metrics.get("confidence")}


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
    brain, dev = bundle.brain_on(resolve_device(device))
    temperatures = None
    if bundle.confidence is not None:  # its confidences measured at the training and the calibrated temperatures
        temperatures = {cond: {"before": bundle.temperature, "after": bundle.confidence_temperature(cond)}
                        for cond in ("single_trial", "averaged")}
    metrics = evaluate_retrieval(brain, test, bundle.gallery, targets, device=dev, temperatures=temperatures)
    if bundle.windows:
        metrics["windows"] = evaluate_stages(brain, test, bundle.gallery, targets, bundle.spec, [
            (w["end"], {cond: {"before": bundle.temperature, "after": w[cond]["temperature"]} for cond in ("single_trial", "averaged")})
            for w in bundle.windows], device=dev) + [_stage_of(metrics, bundle.spec)]
    metrics.update({"subject": subject, "bundle": str(bundle.path), "layer": bundle.config["layer"]})
    return metrics
