"""The live decoder: bundle encoder on the chosen device, cosine similarity to the
gallery, confidences from the bundle's calibrated temperatures (its training temperature
when it has no calibration: :attr:`Decoder.calibrated`), top-k; a running average of the
epochs of each stimulus id gives the averaged-repetition prediction beside the
single-trial one.  Markers are mapped to stimulus ids here (:class:`StimulusMap`)."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.bundle import Bundle
from trainer.encoders import EEGEncoder
from trainer.errors import UsageError
from trainer.model import normalised_embedding
from trainer.vision import resolve_device

from .sessions import CATCH_CODE

__all__ = ["Decoder", "Prediction", "StimulusMap"]

logger = logging.getLogger("bci_app")


class StimulusMap:
    """Marker value -> gallery stimulus id.

    Integer codes (or strings of digits) are ids; other strings are matched against the
    gallery's ``concept/file``, file name, file stem, and concept name (when one image of
    that concept is in the gallery).  Anything else is unknown (None); the catch code
    99999 and the label ``catch`` are catch trials (None as well)."""

    def __init__(self, bundle: Bundle):
        self.ids = {int(i) for i in bundle.gallery_ids}
        self.by_text: dict[str, int] = {}
        concepts: dict[str, list[int]] = {}
        for item in bundle.items:
            name = item.file.replace("\\", "/")
            stem = name.rsplit("/", 1)[-1]
            for key in (name, stem, stem.rsplit(".", 1)[0]):
                self.by_text.setdefault(key, item.id)
            concepts.setdefault(item.concept, []).append(item.id)
        for concept, ids in concepts.items():
            if len(ids) == 1:
                self.by_text.setdefault(concept, ids[0])

    @staticmethod
    def is_catch(value: Any) -> bool:
        if isinstance(value, str):
            return value.strip().lower() == "catch" or value.strip() == str(CATCH_CODE)
        try:
            return int(value) == CATCH_CODE
        except (TypeError, ValueError, OverflowError):
            return False

    def __call__(self, value: Any) -> int | None:
        if isinstance(value, (int, np.integer)) or (isinstance(value, float) and math.isfinite(value) and value == int(value)):
            code = int(value)
            return code if code in self.ids else None
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit():
                code = int(text)
                return code if code in self.ids else None
            return self.by_text.get(text)
        return None


@dataclass
class Prediction:
    topk: list[int]
    confidence: list[float]
    avg_topk: list[int] | None = None
    avg_confidence: list[float] | None = None
    n_averaged: int = 0


class Decoder:
    """Runs the bundle on epochs.

    Parameters
    ----------
    bundle : Bundle
    device : 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    top_k : int
        Candidates reported per epoch (at most the gallery size).
    """

    def __init__(self, bundle: Bundle, *, device: str = "auto", top_k: int = 5):
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise UsageError(f"top_k must be an integer >= 1, got {top_k!r}")
        # calibrated on validation concepts when the bundle says how (trainer.confidence),
        # else the training temperature, whose softmax is no probability
        temperatures = (bundle.confidence_temperature("single_trial"), bundle.confidence_temperature("averaged"))
        for temperature in temperatures:
            if not (math.isfinite(temperature) and temperature > 0):
                raise UsageError(f"the bundle's temperature must be a positive number, got {temperature!r}")
        self.bundle = bundle
        self.device = resolve_device(device)
        # a copy of its own: the bundle's module stays where it is for other users
        self.model = copy.deepcopy(bundle.brain).to(self.device).eval()
        # stored transposed, (proj_dim, N) contiguous: scoring one embedding against a large
        # gallery is then a single pass over memory in the order it is laid out (twice as
        # fast on a CPU as the (N, proj_dim) layout for 100 000 images)
        self.gallery_t = torch.from_numpy(np.ascontiguousarray(bundle.gallery.T)).to(self.device)
        self.ids = torch.from_numpy(np.asarray(bundle.gallery_ids, dtype=np.int64))
        self.temperature, self.avg_temperature = temperatures
        # the provisional stages (--windows): (end, samples, single-trial temperature)
        self.stages = [(float(w["end"]), int(w["n_times"]), float(w["single_trial"]["temperature"])) for w in bundle.windows]
        #: whether the confidences are calibrated probabilities (the bundle has a calibration)
        self.calibrated = bundle.confidence is not None
        self.top_k = min(top_k, len(bundle.gallery_ids))
        # running sums per stimulus id (float64, on the device) of the encoder's input-layer
        # outputs, or of the epochs when it has none
        self._sums: dict[int, tuple[torch.Tensor, int]] = {}
        self._linear = self._first_layer()
        if self._linear is not None:
            encoder, projector = self.model.encoder, self.model.projector
            self._rest = lambda h: projector(encoder.after_input_linear(h))
        self.warm_up()
        self.reset_averages()

    def warm_up(self, n: int = 3) -> None:
        """Run the model a few times so the first real epoch pays no start-up cost."""
        x = np.zeros((1, self.bundle.n_chans, self.bundle.n_times), dtype=np.float32)
        for _ in range(n):
            self.decode(x, [None])

    def _first_layer(self):
        """The encoder's input linear layer when averages can be kept after it (see
        :meth:`trainer.encoders.EEGEncoder.input_linear`), else None."""
        encoder = getattr(self.model, "encoder", None)
        if not isinstance(encoder, EEGEncoder) or not hasattr(self.model, "projector"):
            return None
        return encoder.input_linear()

    def _scores(self, z: torch.Tensor, n_single: int, temperature: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and confidences of embeddings ``z`` (n, proj_dim), on the device, the
        first ``n_single`` of single trials, the others of averages (each at its temperature;
        ``temperature`` instead for the single trials of a provisional stage): the softmax of
        the k best only (``exp(logit - logsumexp)``), so a large gallery's scores are passed
        over twice (normaliser, top-k) and never copied."""
        logits = z @ self.gallery_t
        logits[:n_single] /= self.temperature if temperature is None else temperature
        logits[n_single:] /= self.avg_temperature
        top, idx = torch.topk(logits, self.top_k, dim=1)
        conf = torch.exp(top - torch.logsumexp(logits, dim=1, keepdim=True)).cpu().numpy()
        if not np.isfinite(conf).all():  # finite epochs, finite weights: cannot happen, never emit it
            raise RuntimeError("the decoder produced non-finite confidences")
        return self.ids[idx.cpu()].numpy(), conf

    def decode_stage(self, epochs: np.ndarray, stage: int) -> list[Prediction]:
        """Provisional predictions for epochs (n, C, T_stage) of provisional stage ``stage``
        (the epoch's first samples; padded with zeros to the model's input, as it learnt
        them): single trials only, at the stage's calibrated temperature; the running
        averages are neither used nor updated (they take whole epochs)."""
        from trainer.windows import zero_padded

        if not 0 <= stage < len(self.stages):
            raise UsageError(f"stage must be 0..{len(self.stages) - 1} (the bundle's provisional windows), got {stage!r}")
        end, n_stage, temperature = self.stages[stage]
        epochs = np.asarray(epochs, dtype=np.float32)
        if epochs.ndim != 3 or epochs.shape[1:] != (self.bundle.n_chans, n_stage):
            raise UsageError(f"epochs of the {end:g} s window must be (n, {self.bundle.n_chans}, {n_stage}), got {epochs.shape}")
        with torch.inference_mode():
            x = torch.from_numpy(zero_padded(epochs, self.bundle.n_times)).to(self.device)
            ids, conf = self._scores(normalised_embedding(self.model, x), len(x), temperature)
        return [Prediction(ids[i].tolist(), conf[i].tolist()) for i in range(len(epochs))]

    def reset_averages(self) -> None:
        self._sums.clear()

    def decode(self, epochs: np.ndarray, stimulus_ids: list[int | None]) -> list[Prediction]:
        """Predictions for a batch of epochs (n, C, T); epochs with a known stimulus id
        also update its running average and get the averaged prediction.

        When the encoder begins with a linear layer (EEGProject, linear), the averages are
        kept after it, as sums of its outputs: the averaged prediction then costs the rest
        of the network only, not a second pass through the largest layer."""
        epochs = np.asarray(epochs, dtype=np.float32)
        if epochs.ndim != 3 or epochs.shape[1:] != (self.bundle.n_chans, self.bundle.n_times):
            raise UsageError(f"epochs must be (n, {self.bundle.n_chans}, {self.bundle.n_times}), got {epochs.shape}")
        if len(stimulus_ids) != len(epochs):
            raise UsageError("one stimulus id (or None) per epoch")
        n = len(epochs)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(epochs)).to(self.device)
            if self._linear is not None:
                h = self._linear(x.flatten(1))  # what the averages are kept of
                rest = self._rest
            else:
                h, rest = x, self.model
            averaged, rows = [], []
            for i, sid in enumerate(stimulus_ids):
                if sid is None:
                    continue
                total, count = self._sums.get(sid, (None, 0))
                total = h[i].double() if total is None else total + h[i].double()
                self._sums[sid] = (total, count + 1)
                averaged.append((total / (count + 1)).float())
                rows.append((i, count + 1))
            batch = torch.cat([h, torch.stack(averaged)]) if averaged else h
            ids, conf = self._scores(normalised_embedding(rest, batch), n)
        out = [Prediction(ids[i].tolist(), conf[i].tolist()) for i in range(n)]
        for k, (i, count) in enumerate(rows):
            j = n + k
            out[i].avg_topk, out[i].avg_confidence, out[i].n_averaged = ids[j].tolist(), conf[j].tolist(), count
        return out
