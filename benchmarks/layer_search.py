"""Choosing the layer cheaply (issue 13): does ``bci-train fit --layer auto`` with the ridge
proxy (``--layer-search proxy``: score every candidate in closed form, train one) choose as
well as the full search (``--layer-search full``: train every candidate), and for what cost?

For each synthetic set, subject and seed, two real ``fit`` runs with the same settings
(features computed beforehand, so both read them from the cache):

- ``full``: every candidate layer trained, the best validation top-1 kept;
- ``proxy``: the ridge proxy chooses on the same validation concepts, one layer trained.

Reported per set: how often the two choose the same layer, the test top-1 each chosen
model reaches (averaged repetitions; test data is only ever used for this report), and the
wall-clock of each run (proxy: search + one training; full: every training), and the proxy
run against a run that trains one given layer (the proxy run less the search, timed alone).  Results go to
``OUT/results.json`` as they come (a second run skips what is done); the markdown table is
printed and written to ``OUT/table.md``.

Usage::

    python benchmarks/layer_search.py --out DIR --set tiny=DATA[:WEIGHTS[:SIZE]] [--set small=...]
        [--subjects 1,2] [--seeds 0,1,2] [--epochs 50] [--batch-size 1024] [--proj-dim 512]

``DATA`` is a ``bci-train synth`` folder; ``WEIGHTS`` is ``random`` (default) or a
``bci-train pretrain`` weights file, ``SIZE`` the ``--image-size`` (0: the model's own; 64 for
weights pretrained at 64 px).  Backbone ``resnet10t`` (5 stages + final = 6
candidates); training settings are fit's defaults (the paper's: EEGProject, 50 epochs, batch
1024, 512-d shared space) unless given.  Runs are sequential on one thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

BACKBONE = "resnet10t"


def _config(args, data: str, weights: str, size: int, out: Path, cache: Path, subject: int, seed: int, search: str):
    from trainer.config import FitConfig

    return FitConfig(data=data, subject=subject, out=str(out), backbone=BACKBONE, weights=weights, image_size=size, layer="auto",
                     layer_search=search, epochs=args.epochs, batch_size=args.batch_size, proj_dim=args.proj_dim, seed=seed,
                     cache=str(cache), device="cpu")


def _warm_features(cfg, cache: Path) -> None:
    """Every candidate's features in the cache, so that no timed run computes them."""
    from trainer.config import layer_list
    from trainer.datasets import load_fit_data
    from trainer.fit import image_features
    from trainer.vision import load_backbone

    backbone = load_backbone(cfg.backbone, cfg.weights, device="cpu", seed=0,
                             model_kwargs={"img_size": cfg.image_size} if cfg.image_size else None)
    data = load_fit_data(cfg.data, cfg.subject, cache_dir=cache / "epochs")
    image_features(backbone, cfg, data.train_images, data.test_images, layer_list("auto", backbone.n_layers), cache)


def _run(cfg) -> dict:
    from trainer.fit import fit

    started = time.perf_counter()
    metrics = fit(cfg, overwrite=True)
    return {"layer": metrics["layer"], "test_top1": metrics["averaged"]["top1"], "val_top1": metrics["val_top1"],
            "seconds": time.perf_counter() - started, "layer_sweep": metrics["layer_sweep"]}


def _table(results: dict, sets: list[str]) -> str:
    lines = ["| set (backbone weights) | runs | same layer as full | test top-1, proxy's choice | test top-1, full's choice "
             "| proxy run: search + 1 training | full run: all trainings | proxy / full | proxy / one-layer run | search alone |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in sets:
        rows = [r for r in results.values() if r["set"] == name and "proxy" in r and "full" in r]
        if not rows:
            continue
        same = sum(r["proxy"]["layer"] == r["full"]["layer"] for r in rows)
        tp, tf = (np.array([r[k]["test_top1"] for r in rows]) * 100 for k in ("proxy", "full"))
        sp, sf = (np.array([r[k]["seconds"] for r in rows]) for k in ("proxy", "full"))
        search = np.array([r["search_seconds"] for r in rows])
        lines.append(f"| {name} ({rows[0]['weights_label']}) | {len(rows)} | {same}/{len(rows)} | {tp.mean():.1f} ± {tp.std():.1f} % "
                     f"| {tf.mean():.1f} ± {tf.std():.1f} % | {sp.mean():.0f} s | {sf.mean():.0f} s | {(sp / sf).mean():.2f} "
                     f"| {(sp / (sp - search)).mean():.2f} | {search.mean():.1f} s |")
    lines += ["", "| set | subject | seed | proxy's layer | full's layer | test top-1 proxy / full | proxy mean rank per layer "
              "| validation top-1 per layer (full) |", "|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        if "proxy" not in r or "full" not in r:
            continue
        ranks = " ".join(f"{e['proxy_mean_rank']:.3f}" for e in r["proxy"]["layer_sweep"])
        vals = " ".join(f"{e['val_top1']:.3f}" for e in r["full"]["layer_sweep"])
        lines.append(f"| {r['set']} | {r['subject']} | {r['seed']} | {r['proxy']['layer']} | {r['full']['layer']} "
                     f"| {r['proxy']['test_top1'] * 100:.0f} / {r['full']['test_top1'] * 100:.0f} % | {ranks} | {vals} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", action="append", required=True, help="NAME=DATA[:WEIGHTS[:SIZE]]")
    p.add_argument("--subjects", default="1,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--proj-dim", type=int, default=512)
    p.add_argument("--report-only", action="store_true", help="only print the table of what OUT/results.json holds")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from trainer.layer_search import choose_layer, ridge_layer_scores  # noqa: F401  (fail early when missing)

    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    sets = []
    for item in args.set:
        name, _, rest = item.partition("=")
        data, _, rest = rest.partition(":")
        weights, _, size = rest.partition(":")
        weights, size = weights or "random", int(size or 0)
        sets.append(name)
        if args.report_only:
            continue
        for subject in (int(s) for s in args.subjects.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                key = f"{name}/sub-{subject}/seed-{seed}"
                row = results.setdefault(key, {"set": name, "subject": subject, "seed": seed,
                                               "weights_label": "random" if weights == "random" else "pretrained"})
                if "proxy" in row and "full" in row:
                    continue
                base = _config(args, data, weights, size, out / "runs" / key / "proxy", cache, subject, seed, "proxy")
                _warm_features(base, cache)
                row["proxy"] = _run(base)
                # the search alone: the proxy run's time less its one training, which the full run also does
                row["full"] = _run(dataclasses.replace(base, layer_search="full", out=str(out / "runs" / key / "full")))
                print(f"{key}: proxy {row['proxy']['layer']} ({row['proxy']['seconds']:.0f} s, test "
                      f"{row['proxy']['test_top1']:.3f}), full {row['full']['layer']} ({row['full']['seconds']:.0f} s, "
                      f"test {row['full']['test_top1']:.3f})", flush=True)
                row["search_seconds"] = _search_seconds(base, cache)
                store.write_text(json.dumps(results, indent=1))
    table = _table(results, sets)
    header = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{BACKBONE}, {args.epochs} epochs, batch {args.batch_size}, shared space {args.proj_dim}-d, 1 thread; "
              f"command: python {' '.join(sys.argv)}")
    print(header + "\n\n" + table)
    (out / "table.md").write_text(header + "\n\n" + table + "\n")
    return 0


def _search_seconds(cfg, cache: Path) -> float:
    """Wall-clock of the proxy search alone (data in memory, features from the cache)."""
    from trainer.config import layer_key, layer_list
    from trainer.data.splits import validation_split
    from trainer.datasets import load_fit_data
    from trainer.fit import image_features
    from trainer.layer_search import choose_layer, ridge_layer_scores
    from trainer.vision import load_backbone

    backbone = load_backbone(cfg.backbone, cfg.weights, device="cpu", seed=0,
                             model_kwargs={"img_size": cfg.image_size} if cfg.image_size else None)
    data = load_fit_data(cfg.data, cfg.subject, cache_dir=cache / "epochs")
    layers = layer_list("auto", backbone.n_layers)
    feats, _ = image_features(backbone, cfg, data.train_images, data.test_images, layers, cache)
    keys = [layer_key(k) for k in layers]
    concepts = data.train_images.concept_index[data.train_image_ids]
    fit_rows, val_rows = validation_split(concepts, fraction=cfg.val_fraction, seed=cfg.seed)
    val_images, val_targets = np.unique(data.train_image_ids[val_rows], return_inverse=True)
    started = time.perf_counter()
    choose_layer(ridge_layer_scores(data.train[fit_rows], data.train[val_rows],
                                    {k: feats[k][data.train_image_ids[fit_rows]] for k in keys},
                                    {k: feats[k][val_images] for k in keys}, val_targets))
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
