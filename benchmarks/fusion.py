"""Beyond one layer (issue 15, parts 1 and 2): multi-layer fusion against today's
single-layer recipe, and the calibration of the confidences, over subjects and seeds.

For each subject and seed, three real ``bci-train fit`` runs with the same settings
(``resnet10t``: its 5 stages + final are the candidates; fit's defaults otherwise):

- ``single``: today's recipe, ``--layer auto`` (the ridge proxy chooses one layer, trained);
- ``concat`` and ``weighted``: ``--fusion concat|weighted --fusion-layers auto`` (the 2 and 3
  best candidates by the proxy, and all 6, each trained; validation concepts choose the set).

``--fusion auto`` keeps whichever of the single layer and the six fusions is best on
validation (top-1, then mean rank); as training is deterministic, its choice and test
figures are read off the three runs (each run tested only its own validation choice).
Test figures (50-way on ``small``) are read for this report only.

Also reported from the ``single`` runs: the expected calibration error of the test
confidences at the training temperature and at the temperatures fitted on validation
concepts (single trials and averaged repetitions).

Results go to ``OUT/results.json`` as they come (a second run skips finished runs); the
tables are printed and written to ``OUT/table.md``, the plot of the learned layer weights
against depth to ``OUT/layer_weights.png``.

Usage::

    python benchmarks/fusion.py --out DIR --data DATA --weights WEIGHTS --image-size 64 \\
        [--subjects 1,2] [--seeds 0,1,2] [--epochs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {"single": {}, "concat": {"fusion": "concat"}, "weighted": {"fusion": "weighted"}}


def _config(args, out: Path, subject: int, seed: int, **kw):
    from trainer.config import FitConfig

    return FitConfig(data=args.data, subject=subject, out=str(out), backbone="resnet10t", weights=args.weights,
                     image_size=args.image_size, layer="auto", layers="all", epochs=args.epochs, seed=seed,
                     cache=str(Path(args.out) / "cache"), device="cpu", **kw)


def _summary(m: dict) -> dict:
    out = {"layer": m["layer"], "val_top1": m["val_top1"], "test_top1": m["averaged"]["top1"],
           "test_top5": m["averaged"]["top5"], "single_top1": m["single_trial"]["top1"],
           "single_top5": m["single_trial"]["top5"], "confidence": m.get("confidence"), "fusion": m.get("fusion"),
           "seconds": m["seconds"]}
    sweep = m.get("fusion_sweep") or []
    chosen = max(sweep, key=lambda r: (r["val_top1"], r["val_rank"])) if sweep else None
    out["val_rank"] = chosen["val_rank"] if chosen else next(
        (r.get("val_rank") for r in m["layer_sweep"] if r["layer"] == m["layer"] and "val_rank" in r), None)
    return out


def _ms(values) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1 if len(v) > 1 else 0):.1f}"


def _auto(res: dict) -> dict:
    """What --fusion auto keeps: the best of the three runs' choices on validation."""
    return max((res[v] for v in VARIANTS), key=lambda r: (r["val_top1"], r["val_rank"] or 0.0))


def _tables(results: dict) -> str:
    keys = sorted(results)
    lines = ["| recipe | runs | test top-1 (averaged) | test top-5 | single-trial top-1 | single-trial top-5 "
             "| wins / ties / losses vs single (top-1) |", "|---|---|---|---|---|---|---|"]
    rows = {v: [results[k][v] for k in keys] for v in VARIANTS}
    rows["auto"] = [_auto(results[k]) for k in keys]
    for name, label in (("single", "single layer, chosen on validation (today)"), ("concat", "fusion: concat"),
                        ("weighted", "fusion: weighted"), ("auto", "--fusion auto (validation chooses)")):
        rs = rows[name]
        cmp = [np.sign(r["test_top1"] - s["test_top1"]) for r, s in zip(rs, rows["single"])]
        wtl = "–" if name == "single" else f"{cmp.count(1)} / {cmp.count(0)} / {cmp.count(-1)}"
        lines.append(f"| {label} | {len(rs)} | {_ms(r['test_top1'] for r in rs)} % | {_ms(r['test_top5'] for r in rs)} % "
                     f"| {_ms(r['single_top1'] for r in rs)} % | {_ms(r['single_top5'] for r in rs)} % | {wtl} |")
    lines += ["", "| subject | seed | single: layer, top-1 | concat: layers, top-1 | weighted: layers, weights, top-1 "
                  "| auto keeps |", "|---|---|---|---|---|---|"]
    for k in keys:
        r = results[k]
        w = r["weighted"]["fusion"] or {}
        auto = next(v for v in VARIANTS if r[v] is _auto(r))
        lines.append(f"| {k.split('-')[0][1:]} | {k.split('-')[1][4:]} | {r['single']['layer']}, "
                     f"{100 * r['single']['test_top1']:.0f} % | {r['concat']['layer']}, {100 * r['concat']['test_top1']:.0f} % "
                     f"| {r['weighted']['layer']}, {[round(x, 2) for x in w.get('weights', [])]}, "
                     f"{100 * r['weighted']['test_top1']:.0f} % | {auto} |")
    lines += ["", "| confidence (single-layer runs, test set) | ECE at the training temperature | ECE calibrated "
                  "| mean confidence before → after | top-1 |", "|---|---|---|---|---|"]
    for cond, label in (("single_trial", "single trials"), ("averaged", "averaged repetitions")):
        cs = [results[k]["single"]["confidence"][cond] for k in keys]
        lines.append(f"| {label} | {_ms(c['before']['ece'] for c in cs)} % | {_ms(c['after']['ece'] for c in cs)} % "
                     f"| {_ms(c['before']['mean_confidence'] for c in cs)} → {_ms(c['after']['mean_confidence'] for c in cs)} % "
                     f"| {_ms(c['after']['top1'] for c in cs)} % |")
    better = sum(results[k]["single"]["confidence"]["single_trial"]["after"]["ece"]
                 <= results[k]["single"]["confidence"]["single_trial"]["before"]["ece"] for k in keys)
    lines.append(f"\nSingle-trial ECE lower after calibration in {better} of {len(keys)} runs.")
    return "\n".join(lines)


def _weights_plot(results: dict, path: Path) -> None:
    from trainer.plots import new_figure, save_plot

    fig, ax = new_figure(size=(6, 4))
    depth = {0: 0.2, 1: 0.4, 2: 0.6, 3: 0.8, 4: 1.0, "final": 1.1}
    for k in sorted(results):
        f = results[k]["weighted"]["fusion"]
        if f:
            ax.plot([depth[x] for x in f["layers"]], f["weights"], marker="o", alpha=0.7, label=k)
    ax.set_xticks(list(depth.values()), ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "final"])
    save_plot(fig, ax, path, "resnet10t layer (relative depth)", "learned layer weight (softmax)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", default="random")
    p.add_argument("--image-size", type=int, default=0)
    p.add_argument("--subjects", default="1,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from trainer.fit import fit

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for subject in map(int, args.subjects.split(",")):
        for seed in map(int, args.seeds.split(",")):
            key = f"s{subject}-seed{seed}"
            for variant, kw in VARIANTS.items():
                if variant in results.get(key, {}):
                    continue
                started = time.perf_counter()
                metrics = fit(_config(args, out / "runs" / key / variant, subject, seed, **kw))
                results.setdefault(key, {})[variant] = _summary(metrics)
                print(f"{key} {variant}: layer {metrics['layer']}, test top-1 {metrics['averaged']['top1']:.3f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
                path.write_text(json.dumps(results, indent=1))
    done = {k: v for k, v in results.items() if all(x in v for x in VARIANTS)}
    table = _tables(done)
    header = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, "
              f"one thread; {' '.join(sys.argv)}\n\n")
    (out / "table.md").write_text(header + table + "\n")
    _weights_plot(done, out / "layer_weights.png")
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
