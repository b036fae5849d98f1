"""Training samples/s of bci-train's loop against a peer's: NeuroBridge's ``train.py`` loop,
rebuilt here from its published description (no code of it is copied).

The peer, as described: EEGProject = flatten C x T -> Linear(C*T, 512) -> residual
[GELU, Linear(512, 512), Dropout 0.3] -> LayerNorm; a Linear(512, 512) projector on each
side (the image features are 512-d here); a learnable logit scale (CLIP's log(1/0.07));
symmetric InfoNCE (the CLIP loss); AdamW lr 1e-4, weight decay 1e-4; batch 1024; the
pairs come from a ``torch.utils.data.DataLoader`` (shuffled, ``num_workers=0``) over a
Dataset that returns ``(eeg_i, feature_i)`` per index, collated into batches, and the loss
is read with ``loss.item()`` every step.

Ours: ``trainer.fit.train_epoch`` (the steps ``bci-train fit`` runs) on an
``AlignmentModel`` with the ``eegproject`` encoder at the same sizes (embed_dim 512,
proj_dim 512, 512-d features), the training set on the device as tensors, batches by
``torch.randperm`` as ``_train_layer`` makes them, at ``--precision`` fp32 and each other
one asked for.  The per-epoch validation of either loop is not timed.

Data: random normal arrays of 16 540 x 17 x T (THINGS-EEG2's training images and 17
channels) for T = 100 and 250, random 512-d features.  Runs alternate (peer, ours, peer,
ours, ...) so that both see the same machine load; each run is one epoch (or ``--batches``
batches) on a fresh model, after one untimed warm-up run of each.

    python benchmarks/training_peer.py [--threads 1] [--rounds 3] [--times 100,250] [--precisions fp32,auto]
    python benchmarks/training_peer.py --precisions bf16 --batches 4 --rounds 2   # bf16 is slow on AVX2 CPUs
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer.fit import resolve_precision, train_epoch
from trainer.model import AlignmentModel

HIDDEN = 512


# -- the peer, rebuilt from its description --------------------------------------------------


class PeerEEGProject(nn.Module):
    def __init__(self, n_inputs: int, hidden: int = HIDDEN, dropout: float = 0.3):
        super().__init__()
        self.inp = nn.Linear(n_inputs, hidden)
        self.block = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, eeg: torch.Tensor) -> torch.Tensor:
        h = self.inp(eeg.reshape(eeg.shape[0], -1))
        return self.norm(h + self.block(h))


class PeerModel(nn.Module):
    def __init__(self, n_inputs: int, feature_dim: int):
        super().__init__()
        self.encoder = PeerEEGProject(n_inputs)
        self.eeg_head = nn.Linear(HIDDEN, HIDDEN)
        self.image_head = nn.Linear(feature_dim, HIDDEN)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


class PairDataset(Dataset):
    def __init__(self, eeg: torch.Tensor, features: torch.Tensor):
        self.eeg, self.features = eeg, features

    def __len__(self) -> int:
        return len(self.eeg)

    def __getitem__(self, i: int):
        return self.eeg[i], self.features[i]


def peer_run(eeg: torch.Tensor, features: torch.Tensor, device: torch.device, max_batches: int) -> tuple[int, float]:
    """One peer epoch (or ``max_batches`` batches): samples trained and seconds."""
    model = PeerModel(eeg.shape[1] * eeg.shape[2], features.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loader = DataLoader(PairDataset(eeg, features), batch_size=1024, shuffle=True, num_workers=0)
    model.train()
    done, total = 0, 0.0
    start = time.perf_counter()
    for step, (x, f) in enumerate(loader):
        if max_batches and step == max_batches:
            break
        x, f = x.to(device), f.to(device)
        e = F.normalize(model.eeg_head(model.encoder(x)), dim=-1)
        v = F.normalize(model.image_head(f), dim=-1)
        logits = model.log_scale.exp() * e @ v.T
        target = torch.arange(len(x), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
        done += len(x)
    return done, time.perf_counter() - start


# -- ours: the steps bci-train fit runs ------------------------------------------------------


def our_run(eeg: torch.Tensor, features: torch.Tensor, device: torch.device, max_batches: int, precision: str) -> tuple[int, float]:
    """One epoch of ``trainer.fit.train_epoch`` (or ``max_batches`` batches): samples and seconds."""
    n, c, t = eeg.shape
    model = AlignmentModel({"name": "eegproject", "n_chans": c, "n_times": t, "embed_dim": HIDDEN}, features.shape[1],
                           HIDDEN).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda" or None)
    x, f = eeg.to(device), features.to(device)  # once per layer in bci-train fit, not per epoch
    model.train()
    start = time.perf_counter()
    order = torch.randperm(n).to(device)
    batches = list(torch.tensor_split(order, max(1, math.ceil(n / 1024))))
    if max_batches:
        batches = batches[:max_batches]
    train_epoch(model, opt, x, f, batches, precision)
    return sum(map(len, batches)), time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=16540)
    parser.add_argument("--times", default="100,250", help="comma-separated samples per epoch (T)")
    parser.add_argument("--precisions", default="fp32,auto", help="--precision values of our loop to measure")
    parser.add_argument("--rounds", type=int, default=3, help="alternating (peer, ours) rounds per setting")
    parser.add_argument("--batches", type=int, default=0, help="batches per run (0: a whole epoch)")
    parser.add_argument("--feature-dim", type=int, default=HIDDEN)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for t in [int(v) for v in args.times.split(",")]:
        gen = torch.Generator().manual_seed(0)
        eeg = torch.randn(args.n_train, 17, t, generator=gen)
        features = torch.randn(args.n_train, args.feature_dim, generator=gen)
        for precision in args.precisions.split(","):
            resolved = resolve_precision(precision, device)
            peer_run(eeg, features, device, 2)  # warm-up (allocator, kernels)
            our_run(eeg, features, device, 2, resolved)
            peer, ours = [], []
            for _ in range(args.rounds):
                n, s = peer_run(eeg, features, device, args.batches)
                peer.append(n / s)
                n, s = our_run(eeg, features, device, args.batches, resolved)
                ours.append(n / s)
            row = {"T": t, "precision": precision, "resolved": resolved, "threads": torch.get_num_threads(),
                   "peer_samples_per_s": [round(v) for v in peer], "ours_samples_per_s": [round(v) for v in ours],
                   "ratio_per_round": [round(o / p, 2) for o, p in zip(ours, peer)],
                   "ratio_of_medians": round(statistics.median(ours) / statistics.median(peer), 2)}
            results.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"device": str(device), "torch": torch.__version__, "n_train": args.n_train,
                      "batches_per_run": args.batches or "epoch", "data": "random normal arrays"}))


if __name__ == "__main__":
    main()
