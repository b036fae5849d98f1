"""Layer (and backbone, subject, seed) sweeps: ``bci-train sweep``.

One feature pass per backbone computes every swept layer (cached), then one training run
per (backbone, subject, seed, layer), each in its own process when ``jobs > 1``.  The
table reports, per run, the validation top-1 (what model selection sees) and the test
top-1/top-5 (for analysis, as in the paper's layer tables; never used to choose).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import FitConfig, default_cache_dir, layer_key, layer_list

__all__ = ["sweep", "write_report"]

logger = logging.getLogger("trainer")


def sweep(
    base: FitConfig,
    *,
    backbones: Sequence[str],
    subjects: Sequence[int],
    seeds: Sequence[int],
    layers: str = "auto",
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Run the sweep into ``base.out``; returns the table rows (also written as
    ``sweep.csv``, ``sweep.md`` and plots)."""
    from .datasets import load_fit_data
    from .fit import fit, image_features
    from .vision import load_backbone

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if not backbones or not subjects or not seeds:
        raise ValueError("sweep: give at least one backbone, subject and seed")
    out = Path(base.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(base.cache).expanduser() if base.cache else default_cache_dir()
    base = dataclasses.replace(base, cache=str(cache))
    runs: list[tuple[FitConfig, dict]] = []
    for name in backbones:
        backbone = load_backbone(name, base.weights, device=base.device, seed=0,
                                 model_kwargs={"img_size": base.image_size} if base.image_size else None)
        swept = layer_list(layers, backbone.n_layers)
        # one pass over the images for every swept layer; the runs then read the cache
        data = load_fit_data(base.data, subjects[0], source=base.source, spec=base.spec, cache_dir=cache / "epochs")
        image_features(backbone, dataclasses.replace(base, backbone=name), data.train_images, data.test_images, swept, cache)
        info = {"backbone": name, "n_params": backbone.n_params, "n_layers": backbone.n_layers}
        for subject in subjects:
            for seed in seeds:
                for layer in swept:
                    key = layer_key(layer)
                    run_dir = out / name / f"sub-{subject:02d}" / f"seed-{seed}" / key
                    cfg = dataclasses.replace(base, backbone=name, subject=subject, seed=seed, layer=str(layer),
                                              layers="", out=str(run_dir))
                    runs.append((cfg, dict(info, subject=subject, seed=seed, layer=layer)))
    logger.info("sweep: %d runs (%d backbone(s), %d subject(s), %d seed(s)), %d at a time", len(runs),
                len(backbones), len(subjects), len(seeds), jobs)

    def run(item: tuple[FitConfig, dict]) -> dict:
        cfg, info = item
        run_dir = Path(cfg.out)
        if jobs == 1:
            metrics = fit(cfg)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "sweep-config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
            with open(run_dir / "log.txt", "w") as log:
                proc = subprocess.run([sys.executable, "-m", "trainer.cli", "fit", "--config", str(run_dir / "sweep-config.json"),
                                       "--data", cfg.data, "--out", cfg.out], stdout=log, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs))))
            if proc.returncode != 0:
                raise RuntimeError(f"sweep run {run_dir} failed (exit {proc.returncode}); see {run_dir / 'log.txt'}")
            metrics = json.loads((run_dir / "metrics.json").read_text())
        depth = None if info["layer"] == "final" else (info["layer"] + 1) / info["n_layers"]
        return {
            "backbone": info["backbone"], "n_params": info["n_params"], "n_layers": info["n_layers"],
            "subject": info["subject"], "seed": info["seed"], "layer": info["layer"], "depth": depth,
            "val_top1": metrics["val_top1"], "test_top1": metrics["averaged"]["top1"],
            "test_top5": metrics["averaged"]["top5"], "single_top1": metrics["single_trial"]["top1"],
            "n_way": metrics["n_way"], "run": str(run_dir.relative_to(out)),
        }

    if jobs == 1:
        rows = [run(item) for item in runs]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(run, runs))
    write_report(rows, out)
    return rows


def _mean_by(rows: list[dict], keys: tuple[str, ...], value: str) -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r[value])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def _save_plot(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], out: Path) -> None:
    """``sweep.csv``, ``sweep.md`` and the plots ``top1_vs_depth.png`` and (with several
    backbones) ``top1_vs_params.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fields = list(rows[0]) if rows else []
    with open(out / "sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    test = _mean_by(rows, ("backbone", "layer"), "test_top1")
    val = _mean_by(rows, ("backbone", "layer"), "val_top1")
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    info = {r["backbone"]: r for r in rows}
    lines = ["# Layer sweep", "",
             f"Zero-shot {rows[0]['n_way'] if rows else '?'}-way retrieval, averaged repetitions; mean over "
             f"{len({r['subject'] for r in rows})} subject(s) x {len({r['seed'] for r in rows})} seed(s). "
             "Validation top-1 is on held-out training concepts; test top-1 is reported for analysis only.", "",
             "| backbone | layer | depth | validation top-1 | test top-1 |", "|---|---|---|---|---|"]
    summary = []
    for b in backbones:
        layer_list = [k[1] for k in test if k[0] == b]
        for layer in layer_list:
            depth = "final" if layer == "final" else f"{(layer + 1) / info[b]['n_layers']:.2f}"
            lines.append(f"| {b} | {layer} | {depth} | {val[(b, layer)]:.3f} | {test[(b, layer)]:.3f} |")
        inter = [k for k in layer_list if k != "final"]
        if inter:
            best = max(inter, key=lambda k: val[(b, k)])
            summary.append((b, info[b]["n_params"], best, test[(b, best)], test.get((b, "final"))))
    lines += ["", "| backbone | params | best layer (by validation) | its test top-1 | final layer test top-1 |",
              "|---|---|---|---|---|"]
    for b, n_params, best, best_top1, final in summary:
        final_s = "-" if final is None else f"{final:.3f}"
        lines.append(f"| {b} | {n_params / 1e6:.1f}M | {best} | {best_top1:.3f} | {final_s} |")

    fig, ax = plt.subplots(figsize=(6, 4))
    for b in backbones:
        pts = sorted(((k + 1) / info[b]["n_layers"], test[(b, k)]) for (bb, k) in test if bb == b and k != "final")
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)[0]
        if (b, "final") in test:
            ax.plot([1.05], [test[(b, "final")]], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    _save_plot(fig, ax, out / "top1_vs_depth.png", "relative depth of the aligned layer (star: final layer)",
               "test top-1 (averaged repetitions)")

    if len(summary) >= 2:
        x = np.log([s[1] for s in summary])
        best_y = np.array([s[3] for s in summary])
        fig, ax = plt.subplots(figsize=(6, 4))
        r_best = float(np.corrcoef(x, best_y)[0, 1]) if np.ptp(best_y) > 0 else float("nan")
        ax.scatter(x, best_y, label=f"best intermediate layer (r = {r_best:.2f})")
        finals = [(xi, s[4]) for xi, s in zip(x, summary) if s[4] is not None]
        r_final = float("nan")
        if len(finals) >= 2:
            fx, fy = np.array(finals).T
            r_final = float(np.corrcoef(fx, fy)[0, 1]) if np.ptp(fy) > 0 else float("nan")
            ax.scatter(fx, fy, marker="*", label=f"final layer (r = {r_final:.2f})")
        for xi, s in zip(x, summary):
            ax.annotate(s[0], (xi, s[3]), fontsize=6)
        _save_plot(fig, ax, out / "top1_vs_params.png", "ln(parameters)", "test top-1")
        lines += ["", f"Correlation of test top-1 with ln(parameters): best intermediate layer r = {r_best:.2f}, "
                      f"final layer r = {r_final:.2f}."]
    lines += ["", "![top-1 vs depth](top1_vs_depth.png)"]
    if len(summary) >= 2:
        lines.append("![top-1 vs parameters](top1_vs_params.png)")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
