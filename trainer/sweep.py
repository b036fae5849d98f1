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
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._checks import check_positive
from .config import FitConfig, default_cache_dir, layer_key, layer_list
from .errors import BCIError, UsageError
from .files import atomic_path, atomic_write_text
from .progress import JobProgress, Progress

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
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run the sweep into ``base.out``; returns the table rows (also written as
    ``sweep.csv``, ``sweep.md`` and plots).

    Each run is a :func:`trainer.fit.fit` into its own folder, with its rules: a finished
    run of the same settings is kept (a sweep run again completes what is missing), an
    interrupted one resumes, one of other settings is refused unless ``overwrite``.
    ``progress(phase, done, total)`` follows each backbone's feature pass (in images), then
    all the runs as one job."""
    from .datasets import load_image_sets
    from .fit import fit, image_features
    from .vision import load_backbone

    check_positive(jobs, "--jobs (jobs)", integer=True)
    if not backbones or not subjects or not seeds:
        raise UsageError("sweep: give at least one backbone, subject and seed (--backbones, --subjects, --seeds)")
    out = Path(base.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(base.cache).expanduser() if base.cache else default_cache_dir()
    base = dataclasses.replace(base, cache=str(cache))
    runs: list[tuple[FitConfig, dict]] = []
    for name in backbones:
        backbone = load_backbone(name, base.weights, device=base.device, seed=0,
                                 model_kwargs={"img_size": base.image_size} if base.image_size else None,
                                 trust_remote_code=base.trust_remote_code, precision=base.feature_precision)
        swept = layer_list(layers, backbone.n_layers)
        # one pass over the images for every swept layer; the runs then read the cache
        train_images, test_images = load_image_sets(base.data, "meg" if base.source == "meg" else "auto")
        image_features(backbone, dataclasses.replace(base, backbone=name), train_images, test_images, swept, cache,
                       report=progress)
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
    # every run counts the same in the sweep's progress (one layer each)
    labels = [f"run {i + 1}/{len(runs)} ({info['backbone']} sub-{info['subject']:02d} seed {info['seed']} "
              f"{layer_key(info['layer'])})" for i, (_, info) in enumerate(runs)]
    job = JobProgress(progress, dict.fromkeys(labels, 1.0))
    lock = threading.Lock()

    def report(label: str, phase: str, done: int, total: int) -> None:
        with lock:
            job.update(label, done, total, phase)

    def run(item: tuple[tuple[FitConfig, dict], str]) -> dict:
        (cfg, info), label = item
        run_dir = Path(cfg.out)
        if jobs == 1:
            metrics = fit(cfg, lambda phase, done, total: report(label, f"{label}: {phase}", done, total),
                          overwrite=overwrite)
        else:
            metrics = _fit_in_process(cfg, jobs, overwrite)
            report(label, f"{label}: done", 1, 1)
        depth = None if info["layer"] == "final" else (info["layer"] + 1) / info["n_layers"]
        return {
            "backbone": info["backbone"], "n_params": info["n_params"], "n_layers": info["n_layers"],
            "subject": info["subject"], "seed": info["seed"], "layer": info["layer"], "depth": depth,
            "val_top1": metrics["val_top1"], "test_top1": metrics["averaged"]["top1"],
            "test_top5": metrics["averaged"]["top5"], "single_top1": metrics["single_trial"]["top1"],
            "n_way": metrics["n_way"], "run": str(run_dir.relative_to(out)),
        }

    if jobs == 1:
        rows = [run(item) for item in zip(runs, labels)]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(run, zip(runs, labels)))
    write_report(rows, out)
    return rows


def _fit_in_process(cfg: FitConfig, jobs: int, overwrite: bool) -> dict:
    """``bci-train fit`` for one sweep run in its own process (output in ``RUN/log.txt``);
    its metrics.  A user error of the run (exit code 2) is a BCIError naming the run."""
    run_dir = Path(cfg.out)
    config = run_dir / "sweep-config.json"
    atomic_write_text(config, json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    log_path = run_dir / "log.txt"
    with open(log_path, "w") as log:  # a log the run streams into (read it while it runs), not an artefact
        proc = subprocess.run([sys.executable, "-m", "trainer.cli", "fit", "--config", str(config), "--data", cfg.data,
                               "--out", cfg.out, *(["--overwrite"] if overwrite else [])],
                              stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs))))
    if proc.returncode == 2:  # bci-train's one-line user errors
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        raise BCIError(f"sweep run {run_dir} failed: {lines[-1] if lines else 'no output'} (log: {log_path})")
    if proc.returncode != 0:
        raise RuntimeError(f"sweep run {run_dir} failed (exit {proc.returncode}); see its traceback in {log_path}")
    return json.loads((run_dir / "metrics.json").read_text())


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(rows: list[dict], out: Path) -> None:
    """``sweep.csv``, ``sweep.md`` and the plots ``top1_vs_depth.png`` and (with several
    backbones) ``top1_vs_params.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fields = list(rows[0]) if rows else []
    with atomic_path(out / "sweep.csv") as tmp, open(tmp, "w", newline="") as fh:
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
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
