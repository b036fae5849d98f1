"""Training configuration (no torch import: the command line builds its options from it)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .datasets import SOURCES
from .errors import UsageError

__all__ = ["FINAL", "FitConfig", "default_cache_dir", "layer_key", "layer_list", "layer_of_key", "parse_layer"]

#: the name of a backbone's own final (pooled pre-logits) embedding among its layers
FINAL = "final"


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
    image_size: int = 0
    layer: str = "auto"
    layers: str = ""
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
    inter: bool = False
    val_fraction: float = 0.1
    image_batch_size: int = 64
    cache: str = ""

    def validate(self) -> "FitConfig":
        if not self.data:
            raise ValueError("data: give the data folder (--data DIR)")
        if not self.out:
            raise ValueError("out: give the run folder (--out RUN)")
        if not isinstance(self.subject, int) or self.subject < 1:
            raise ValueError(f"subject must be a positive integer, got {self.subject!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        from .encoders import list_encoders

        if self.encoder not in list_encoders():
            raise ValueError(f"encoder: unknown {self.encoder!r} (valid: {', '.join(list_encoders())})")
        parse_layer(self.layer)
        if not isinstance(self.image_size, int) or self.image_size < 0:
            raise ValueError(f"image_size must be 0 (the model's own) or a positive integer, got {self.image_size!r}")
        for name in ("embed_dim", "proj_dim", "epochs", "batch_size", "image_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> dict:
        """Defaults from a TOML or JSON file (keys = field names); unknown keys refused."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ValueError(f"config file {path}: {err.strerror or err}") from None
        try:
            if path.suffix == ".toml":
                import tomllib

                values = tomllib.loads(text)
            else:
                values = json.loads(text)
        except Exception as err:
            raise ValueError(f"config file {path}: cannot parse ({err})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path}: must hold a table/object of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
        return values


def parse_layer(value: str | int) -> str | int:
    """'auto', 'final' or a block index (int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value in ("auto", "final"):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"layer must be 'auto', 'final' or a block index, got {value!r}") from None


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
    from the end; out-of-range ones raise ValueError with the valid range."""
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
            raise ValueError(f"{name}: give 'all', 'auto' or block indices and/or 'final', got {spec!r}")
        if isinstance(k, int) and not -n_layers <= k < n_layers:
            raise ValueError(f"{name}: {k} is out of range: valid 0..{n_layers - 1} (or 'final')")
        out.append(k if k == "final" else k % n_layers)
    return list(dict.fromkeys(out))
