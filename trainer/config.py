"""Training configuration (no torch import: the command line builds its options from it)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ._checks import check_option, check_positive, check_type
from .datasets import SOURCES
from .errors import DataFormatError, MissingFileError, UsageError
from .preprocessing import NAMED_SPECS

__all__ = ["ADAPT_PARTS", "FEATURE_PRECISIONS", "FINAL", "FUSION_CHOICES", "LAYER_SEARCHES", "POOLINGS", "PRECISIONS", "FitConfig",
           "default_cache_dir", "layer_key", "layer_list", "layer_of_key", "option_name", "parse_layer", "parse_subjects"]

#: the name of a backbone's own final (pooled pre-logits) embedding among its layers
FINAL = "final"
#: the largest logit scale (1 / temperature) training allows: trainer.losses.LogitScale
#: clamps to it; the temperatures training keeps to are 1/100..100, and a bundle refuses
#: others (trainer.bundle.TEMPERATURE_RANGE)
MAX_LOGIT_SCALE = 100.0
MIN_TEMPERATURE, MAX_TEMPERATURE = 1.0 / MAX_LOGIT_SCALE, MAX_LOGIT_SCALE
#: what ``bci-train adapt --adapt`` may train (trainer.adapt): every brain weight, the
#: encoder's last layer and the projector ("head"), the projector alone, or ("input") only
#: a re-mixing of the input channels (C x C + C numbers, folded into the encoder's first
#: linear layer)
ADAPT_PARTS = ("all", "head", "projector", "input")
#: how a transformer layer's tokens are pooled (a CNN stage's map is averaged: "mean"); see trainer.vision
POOLINGS = ("mean", "cls", "mean+cls")
#: the arithmetic of the training steps (trainer.fit.resolve_precision): "bf16" runs the
#: encoder and projectors under bfloat16 autocast (the loss stays float32), "fp32" runs all in
#: float32, "auto" takes bf16 on a CUDA GPU that supports it and fp32 elsewhere (on a CPU
#: without native bf16, bf16 is several times slower: docs/benchmarks.md); validation, the
#: test and the bundle are float32 in every case
PRECISIONS = ("auto", "bf16", "fp32")
#: the arithmetic of the backbone's feature pass (trainer.vision.feature_dtype): "auto" is
#: bf16 on a CUDA GPU that supports it, fp16 on another CUDA GPU, fp32 on a CPU
FEATURE_PRECISIONS = ("auto", "bf16", "fp16", "fp32")
#: how ``--layer auto`` chooses among the candidate layers: "proxy" scores every candidate by
#: a closed-form ridge regression from the EEG to its features (trainer.layer_search) and
#: trains only the best; "full" trains every candidate and keeps the best validation top-1
LAYER_SEARCHES = ("proxy", "full")
#: ``--fusion``: train on one layer ("none"), on several layers' features combined side by
#: side ("concat") or by learned, softmax-normalised layer weights ("weighted"; trainer.model),
#: or try both and the single best layer and keep what validation prefers ("auto")
FUSION_CHOICES = ("none", "auto", "concat", "weighted")


def default_cache_dir() -> Path:
    """Where features and epochs are cached: ``$SHALLOW_BCI_CACHE`` or the user cache."""
    env = os.environ.get("SHALLOW_BCI_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shallow-bci"


@dataclass
class FitConfig:
    """Everything a training run depends on; written resolved to ``RUN/config.json``.

    Defaults follow the paper: AdamW, lr 1e-4, weight decay 1e-4, batch 1024, 50 epochs,
    EEGProject, repetitions averaged, layer chosen on validation concepts.
    """

    data: str = ""
    subject: int = 1
    out: str = ""
    source: str = "auto"
    spec: str = "paper"
    backbone: str = "vit_base_patch16_clip_224.openai"
    weights: str = "hub"
    trust_remote_code: bool = False
    image_size: int = 0
    layer: str = "auto"
    layers: str = ""
    layer_search: str = "proxy"
    fusion: str = "none"
    fusion_layers: str = "auto"
    windows: str = ""
    pooling: str = "mean"
    encoder: str = "eegproject"
    embed_dim: int = 1024
    proj_dim: int = 512
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 1e-4
    weight_decay: float = 1e-4
    temperature: float = 0.07
    learn_temperature: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    feature_precision: str = "auto"
    inter: bool = False
    train_subjects: str = ""
    val_fraction: float = 0.1
    image_batch_size: int = 0
    cache: str = ""

    def validate(self) -> "FitConfig":
        """Check every setting; a bad one is a :class:`~trainer.errors.UsageError` (or
        :class:`~trainer.errors.UsageTypeError` for a wrong type, e.g. from a config file)
        naming its command-line option and its field."""
        defaults = FitConfig()
        for f in dataclasses.fields(self):
            default = getattr(defaults, f.name)
            types = (int, float) if isinstance(default, float) else (str, int) if f.name == "layer" else type(default)
            check_type(getattr(self, f.name), types, option_name(f.name))
        if not self.data:
            raise UsageError("data: give the data folder (--data DIR)")
        if not self.out:
            raise UsageError("out: give the run folder (--out RUN)")
        check_positive(self.subject, option_name("subject"), integer=True)
        parse_subjects(self.train_subjects)
        if self.inter and self.train_subjects:
            raise UsageError(f"{option_name('inter')} and {option_name('train_subjects')} both say whom to train on: "
                             "give one of them")
        check_option(self.source, SOURCES, option_name("source"))
        check_option(self.spec, NAMED_SPECS, option_name("spec"))
        check_option(self.pooling, POOLINGS, option_name("pooling"))
        check_option(self.precision, PRECISIONS, option_name("precision"))
        check_option(self.feature_precision, FEATURE_PRECISIONS, option_name("feature_precision"))
        check_option(self.layer_search, LAYER_SEARCHES, option_name("layer_search"))
        check_option(self.fusion, FUSION_CHOICES, option_name("fusion"))
        if self.fusion_layers != "auto":
            parts = [p.strip() for p in self.fusion_layers.split(",") if p.strip()]
            if len(parts) < 2 or any(parse_layer(p) == "auto" for p in parts):
                raise UsageError(f"{option_name('fusion_layers')} must be 'auto' or at least two comma-separated blocks "
                                 f"(and/or 'final'), got {self.fusion_layers!r}")
        from .windows import parse_windows

        parse_windows(self.windows)
        if self.fusion == "none" and self.fusion_layers != "auto":
            raise UsageError(f"{option_name('fusion_layers')} names layers to fuse: give {option_name('fusion')} "
                             "concat, weighted or auto too")
        from .encoders import list_encoders

        check_option(self.encoder, list_encoders(), option_name("encoder"))
        parse_layer(self.layer)
        check_positive(self.image_size, f"{option_name('image_size')} (0: the model's own)", strict=False, integer=True)
        check_positive(self.image_batch_size, f"{option_name('image_batch_size')} (0: automatic)", strict=False, integer=True)
        for name in ("embed_dim", "proj_dim", "epochs", "batch_size"):
            check_positive(getattr(self, name), option_name(name), integer=True)
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            check_positive(value, option_name(name))
            if not math.isfinite(value):
                raise UsageError(f"{option_name(name)} must be a finite number, got {value!r}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise UsageError(f"{option_name('temperature')} must be within {MIN_TEMPERATURE} and {MAX_TEMPERATURE:g} "
                             f"(a logit scale within {1 / MAX_TEMPERATURE:g}..{1 / MIN_TEMPERATURE:g}, as CLIP clamps it), "
                             f"got {self.temperature!r}")
        check_positive(self.weight_decay, option_name("weight_decay"), strict=False)
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"{option_name('val_fraction')} must be between 0 and 1, got {self.val_fraction!r}")
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> dict:
        """Defaults from a TOML or JSON file (keys = field names); unknown keys refused.

        A missing file is a :class:`~trainer.errors.MissingFileError`, one that cannot be
        parsed or holds unknown keys a :class:`~trainer.errors.DataFormatError` naming it."""
        path = Path(path).expanduser()
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise MissingFileError(f"config file {path} does not exist") from None
        except UnicodeDecodeError as err:
            raise DataFormatError(path, None, f"not a text file ({err})") from None
        try:
            if path.suffix == ".toml":
                import tomllib

                values = tomllib.loads(text)
            else:
                values = json.loads(text)
        except ValueError as err:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
            raise DataFormatError(path, None, f"cannot parse it as {'TOML' if path.suffix == '.toml' else 'JSON'} "
                                              f"({err})") from None
        if not isinstance(values, dict):
            raise DataFormatError(path, None, "must hold a table/object of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataFormatError(path, None, f"unknown setting(s) {', '.join(unknown)} "
                                              f"(known: {', '.join(sorted(known))})")
        return values


def option_name(field: str) -> str:
    """How an error names a setting for both audiences: ``--batch-size (batch_size)``."""
    return f"--{field.replace('_', '-')} ({field})"


def parse_subjects(value: str) -> str | list[int] | None:
    """``--train-subjects``: '' (None: the tested subject, or the others with --inter),
    'all', or comma-separated subject numbers."""
    text = str(value).strip()
    if not text:
        return None
    if text == "all":
        return "all"
    try:
        subjects = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        subjects = []
    if not subjects or any(s < 1 for s in subjects):
        raise UsageError(f"{option_name('train_subjects')} must be 'all' or comma-separated subject numbers, got {value!r}")
    return sorted(set(subjects))


def parse_layer(value: str | int) -> str | int:
    """'auto', 'final' or a block index (int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value in ("auto", "final"):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--layer (layer) must be 'auto', 'final' or a block index, got {value!r}") from None


def layer_key(layer: str | int) -> str:
    """The one name of a layer in feature caches, checkpoints and run folders:
    ``"layer_K"`` for block ``K`` (non-negative), ``"final"`` for the final embedding."""
    if layer == FINAL:
        return FINAL
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise UsageError(f"a layer is a non-negative block index or 'final', got {layer!r}")
    return f"layer_{layer}"


def layer_of_key(key: str) -> str | int:
    """The layer a :func:`layer_key` names (``"layer_3"`` -> 3, ``"final"`` -> ``"final"``)."""
    if key == FINAL:
        return FINAL
    if key.startswith("layer_") and key[6:].isdigit():
        return int(key[6:])
    raise UsageError(f"a layer key is 'layer_K' or 'final', got {key!r}")


def layer_list(spec: str, n_layers: int, *, name: str = "layers") -> list[str | int]:
    """Layers named by ``spec``: 'all' blocks, 'auto' (every stage of a CNN, ~10 evenly
    spaced blocks of a ViT, as the paper sweeps), 'final', a block index, or a
    comma-separated list; 'all' and 'auto' include the final layer.  Indices may count
    from the end; out-of-range ones raise a UsageError (a ValueError) with the valid range."""
    import numpy as np

    if spec == "all":
        return list(range(n_layers)) + ["final"]
    if spec == "auto":
        idx = range(n_layers) if n_layers <= 10 else np.unique(np.round(np.linspace(0, n_layers - 1, 10)).astype(int))
        return [int(k) for k in idx] + ["final"]
    out: list[str | int] = []
    for part in str(spec).split(","):
        k = parse_layer(part.strip())
        if k == "auto":
            raise UsageError(f"{name}: give 'all', 'auto' or block indices and/or 'final', got {spec!r}")
        if isinstance(k, int) and not -n_layers <= k < n_layers:
            raise UsageError(f"{name}: {k} is out of range: valid 0..{n_layers - 1} (or 'final')")
        out.append(k if k == "final" else k % n_layers)
    return list(dict.fromkeys(out))
