"""Vision targets: a frozen backbone and pooled features of its intermediate layers.

Shallow alignment trains the EEG encoder against a pooled *intermediate* layer ``h^(l)``
of a frozen vision model instead of its final embedding.  This package

* builds the backbone (:func:`load_backbone`): a timm model (:mod:`.timm_models`) or a
  Hugging Face transformers vision tower from a local folder, ``hf:FOLDER``
  (:mod:`.hf_models`), with random weights (tests, offline work), pretrained weights or
  weights from a local file or folder;
* computes, in **one** forward pass per image batch, every requested intermediate layer
  and the model's own final embedding (:func:`extract_features`);
* caches each (backbone, weights, layer, pooling, preprocessing, image set) result as one
  safetensors file (:func:`cached_features`), so a layer sweep pays for the images once.

Layers and pooling are described in :mod:`.features`.
"""

from .backbone import (
    FEATURE_PRECISIONS,
    HF_PREFIX,
    Backbone,
    check_model_name,
    describe_backbone,
    dtype_name,
    feature_dtype,
    load_backbone,
    precision_of,
    resolve_device,
)
from .features import (
    POOLINGS,
    SHARD_SIZE,
    auto_batch_size,
    cached_features,
    check_pooling,
    compute_feature_shards,
    extract_features,
    feature_cache_key,
)
from .timm_models import create_model

__all__ = [
    "Backbone",
    "FEATURE_PRECISIONS",
    "HF_PREFIX",
    "POOLINGS",
    "SHARD_SIZE",
    "auto_batch_size",
    "cached_features",
    "check_model_name",
    "check_pooling",
    "compute_feature_shards",
    "create_model",
    "describe_backbone",
    "dtype_name",
    "extract_features",
    "feature_cache_key",
    "feature_dtype",
    "load_backbone",
    "precision_of",
    "resolve_device",
]
