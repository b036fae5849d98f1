"""Layer (and backbone, subject, seed) sweeps: ``bci-train sweep``, on this machine or on
a Ray cluster.

One feature pass per backbone computes every swept layer (cached), then one training run
per (backbone, subject, seed, layer).  The local engine runs them in this process or
``jobs`` processes at a time; the Ray engine (``engine="ray"``, the ``[ray]`` extra) makes
each feature pass (``feature_workers`` shards of it) and each run a Ray task with its
resource request, the runs depending on their backbone's features, on a cluster whose
nodes share the cache folder.  The table reports, per run, the validation top-1 (what
model selection sees) and the test top-1/top-5 (for analysis, as in the paper's layer
tables; never used to choose).  Finished runs are skipped on a re-run, whatever the engine.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._checks import check_option, check_positive
from .config import FitConfig, default_cache_dir, layer_key, layer_list
from .errors import BCIError, UsageError
from .files import atomic_path, atomic_write_text
from .progress import JobProgress, Progress

__all__ = ["ENGINES", "Engine", "SweepRun", "feature_key", "plan_runs", "run_sweep", "sweep", "write_report"]

logger = logging.getLogger("trainer")

#: where the runs of a sweep execute
ENGINES = ("local", "ray")
_RAY_INSTALL = "pip install 'shallow-bci[ray]' (or: pip install ray)"


@dataclass
class SweepRun:
    """One training run of a sweep: its settings (``cfg.out`` is its folder) and what the
    table says of it (backbone, n_params, n_layers, subject, seed, layer, ...)."""

    cfg: FitConfig
    info: dict[str, Any]


@dataclass
class Engine:
    """Where and how the runs execute.

    ``kind`` 'local': ``jobs`` runs at a time (each in its own process when more than 1).
    ``kind`` 'ray': every run a Ray task of ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs
    (a fraction shares a GPU), retried up to ``retries`` times when its worker dies; each
    backbone's feature pass ``feature_workers`` tasks of 1 GPU (when runs ask for GPUs) or
    ``cpus_per_run`` CPUs.  ``address``: the cluster to join (``ray.init(address=...)``,
    e.g. 'auto' on a cluster node); empty: a local Ray instance on this machine's cores."""

    kind: str = "local"
    jobs: int = 1
    address: str = ""
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    feature_workers: int = 1
    retries: int = 2

    def check(self) -> "Engine":
        check_option(self.kind, ENGINES, "--engine (engine)")
        check_positive(self.jobs, "--jobs (jobs)", integer=True)
        check_positive(self.cpus_per_run, "--cpus-per-run (cpus_per_run)")
        check_positive(self.gpus_per_run, "--gpus-per-run (gpus_per_run)", strict=False)
        check_positive(self.feature_workers, "--feature-workers (feature_workers)", integer=True)
        check_positive(self.retries, "retries", strict=False, integer=True)
        if self.kind == "local" and (self.address or self.gpus_per_run):
            raise UsageError("--address and --gpus-per-run are for --engine ray")
        return self


def plan_runs(base: FitConfig, *, backbones: Sequence[str], subjects: Sequence[int], seeds: Sequence[int],
              layers: str = "auto", folder: str = "", extra: dict | None = None, described: dict | None = None
              ) -> tuple[list[SweepRun], dict[tuple[str, str], FitConfig]]:
    """The runs of a sweep, and per (data, backbone) the settings of its feature pass (its
    swept layers in ``layers``).  Backbones are described from their architecture alone (no
    weights are loaded here; ``described``, a dict the caller keeps, holds the descriptions
    for its next calls: building a large architecture takes seconds).  Run folders:
    ``<base.out>/<folder>/<backbone>/sub-NN/seed-S/<layer>``."""
    from .vision import describe_backbone

    if not backbones or not subjects or not seeds:
        raise UsageError("sweep: give at least one backbone, subject and seed (--backbones, --subjects, --seeds)")
    out = Path(base.out).expanduser() / folder if folder else Path(base.out).expanduser()
    runs: list[SweepRun] = []
    features: dict[tuple[str, str], FitConfig] = {}
    described = {} if described is None else described
    for name in backbones:
        key = (name, base.image_size, base.trust_remote_code and name.startswith("hf:"))
        if key not in described:
            described[key] = describe_backbone(name, model_kwargs={"img_size": base.image_size} if base.image_size else None,
                                               trust_remote_code=key[2])
        info = described[key]
        swept = layer_list(layers, info["n_layers"], name=f"--layers for {name}")
        features[feature_key(base.data, name)] = dataclasses.replace(base, backbone=name, layers=",".join(map(str, swept)),
                                                                     out="-")
        common = {"backbone": name, "n_params": info["n_params"], "n_layers": info["n_layers"], **(extra or {})}
        for subject in subjects:
            for seed in seeds:
                for layer in swept:
                    run_dir = out / _safe_name(name) / f"sub-{subject:02d}" / f"seed-{seed}" / layer_key(layer)
                    cfg = dataclasses.replace(base, backbone=name, subject=subject, seed=seed, layer=str(layer),
                                              layers="", out=str(run_dir))
                    runs.append(SweepRun(cfg, dict(common, subject=subject, seed=seed, layer=layer)))
    return runs, features


def feature_key(data: str, backbone: str) -> tuple[str, str]:
    """Which feature pass a run needs: its data folder's and its backbone's."""
    return str(Path(data).expanduser().resolve()), backbone


def _safe_name(name: str) -> str:
    """A backbone name as one folder name (an hf: name holds a path)."""
    if name.startswith("hf:"):
        return "hf-" + Path(name[3:]).name
    return name.replace("/", "_")


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
    engine: Engine | None = None,
) -> list[dict[str, Any]]:
    """Run the sweep into ``base.out``; returns the table rows (also written as
    ``sweep.csv``, ``sweep.md`` and plots).

    Each run is a :func:`trainer.fit.fit` into its own folder, with its rules: a finished
    run of the same settings is kept (a sweep run again completes what is missing), an
    interrupted one resumes, one of other settings is refused unless ``overwrite``.
    ``progress(phase, done, total)`` follows each backbone's feature pass (in images), then
    all the runs as one job.  ``engine``: where the runs execute (default: locally,
    ``jobs`` at a time)."""
    engine = (engine or Engine(jobs=jobs)).check()
    out = Path(base.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(base.cache).expanduser() if base.cache else default_cache_dir()
    base = dataclasses.replace(base, cache=str(cache))
    runs, features = plan_runs(base, backbones=backbones, subjects=subjects, seeds=seeds, layers=layers)
    logger.info("sweep: %d runs (%d backbone(s), %d subject(s), %d seed(s)), engine %s", len(runs), len(backbones),
                len(subjects), len(seeds), engine.kind)
    rows = run_sweep(runs, features, engine=engine, overwrite=overwrite, progress=progress, root=out)
    write_report(rows, out)
    return rows


def run_sweep(runs: list[SweepRun], features: dict[tuple[str, str], FitConfig], *, engine: Engine, overwrite: bool = False,
              progress: Progress | None = None, root: Path) -> list[dict[str, Any]]:
    """Execute planned runs (after their backbones' feature passes) on ``engine``; the table
    rows in the order of ``runs`` (run folders relative to ``root``).  Runs already finished
    with the same settings are not run again (nor their feature passes)."""
    from .fit import finished_run

    engine.check()
    done: dict[int, dict] = {}
    if not overwrite:
        for i, r in enumerate(runs):
            metrics = finished_run(r.cfg)
            if metrics is not None:
                done[i] = metrics
    todo = [i for i in range(len(runs)) if i not in done]
    if done:
        logger.info("sweep: %d of %d runs finished before; %d to run", len(done), len(runs), len(todo))
    needed = {feature_key(runs[i].cfg.data, runs[i].cfg.backbone) for i in todo}
    labels = {i: f"run {i + 1}/{len(runs)} ({r.info['backbone']} sub-{r.info['subject']:02d} seed {r.info['seed']} "
                 f"{layer_key(r.info['layer'])})" for i, r in enumerate(runs)}
    if todo:
        if engine.kind == "ray":
            done.update(_run_on_ray(runs, todo, {b: c for b, c in features.items() if b in needed}, engine, overwrite,
                                    progress, labels))
        else:
            for key, cfg in features.items():
                if key in needed:
                    _feature_pass(cfg, progress)
            done.update(_run_locally(runs, todo, engine.jobs, overwrite, progress, labels))
    return [_row(runs[i], done[i], root) for i in range(len(runs))]


def _feature_pass(cfg: FitConfig, progress: Progress | None, rank: int = 0, world: int = 1) -> bool:
    from .feature_pass import feature_pass

    return feature_pass(cfg, rank=rank, world=world, progress=progress)["complete"]


def _row(run: SweepRun, metrics: dict, root: Path) -> dict[str, Any]:
    info = run.info
    depth = None if info["layer"] == "final" else (info["layer"] + 1) / info["n_layers"]
    row = {k: v for k, v in info.items() if k not in ("backbone", "n_params", "n_layers", "subject", "seed", "layer")}
    return {
        **row, "backbone": info["backbone"], "n_params": info["n_params"], "n_layers": info["n_layers"],
        "subject": info["subject"], "seed": info["seed"], "layer": info["layer"], "depth": depth,
        "val_top1": metrics["val_top1"], "test_top1": metrics["averaged"]["top1"],
        "test_top5": metrics["averaged"]["top5"], "single_top1": metrics["single_trial"]["top1"],
        "n_way": metrics["n_way"], "run": str(Path(run.cfg.out).expanduser().relative_to(root)),
    }


def _run_locally(runs: list[SweepRun], todo: list[int], jobs: int, overwrite: bool, progress: Progress | None,
                 labels: dict[int, str]) -> dict[int, dict]:
    from .fit import fit

    # every run counts the same in the sweep's progress (one layer each)
    job = JobProgress(progress, {labels[i]: 1.0 for i in todo})
    lock = threading.Lock()

    def report(label: str, phase: str, n: int, total: int) -> None:
        with lock:
            job.update(label, n, total, phase)

    def run(i: int) -> dict:
        cfg, label = runs[i].cfg, labels[i]
        if jobs == 1:
            return fit(cfg, lambda phase, n, total: report(label, f"{label}: {phase}", n, total), overwrite=overwrite)
        metrics = _fit_in_process(cfg, jobs, overwrite)
        report(label, f"{label}: done", 1, 1)
        return metrics

    if jobs == 1:
        return {i: run(i) for i in todo}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(zip(todo, pool.map(run, todo)))


def _fit_in_process(cfg: FitConfig, jobs: int, overwrite: bool) -> dict:
    """``bci-train fit`` for one sweep run in its own process (output in ``RUN/log.txt``);
    its metrics.  A user error of the run (exit code 2) is a BCIError naming the run."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
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


# -- Ray ------------------------------------------------------------------------------------

def _ray_feature_task(cfg: dict, rank: int, world: int) -> bool:
    """A Ray task: worker ``rank`` of ``world`` of one backbone's feature pass."""
    _task_logging()
    return _feature_pass(FitConfig(**cfg), None, rank, world)


def _ray_fit_task(cfg: dict, overwrite: bool, *features_done: bool) -> dict:
    """A Ray task: one run (after the feature pass it depends on); its metrics.  A user
    error comes back as a BCIError with the message, not as a Ray traceback."""
    from .fit import fit

    _task_logging()
    try:
        return fit(FitConfig(**cfg), overwrite=overwrite)
    except BCIError as err:  # not retried: the same settings fail the same way
        return {"error": f"{type(err).__name__}: {err}"}


def _task_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")


def _require_ray():
    try:
        import ray
    except ImportError as err:
        raise BCIError(f"--engine ray needs the ray package, which is not installed: {_RAY_INSTALL}") from err
    return ray


def _run_on_ray(runs: list[SweepRun], todo: list[int], features: dict[tuple[str, str], FitConfig], engine: Engine, overwrite: bool,
                progress: Progress | None, labels: dict[int, str]) -> dict[int, dict]:
    ray = _require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        env = {k: os.environ[k] for k in ("SHALLOW_BCI_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "HF_MODULES_CACHE", "TORCH_HOME")
               if k in os.environ}
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                                      runtime_env={"env_vars": env} if env else None)
        if engine.address:
            kwargs["address"] = engine.address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        logger.info("sweep: starting Ray (%s)", engine.address or "a local instance on this machine")
        ray.init(**kwargs)
    try:
        feature_gpus = 1 if engine.gpus_per_run > 0 else 0
        feature_task = ray.remote(_ray_feature_task).options(num_cpus=engine.cpus_per_run, num_gpus=feature_gpus,
                                                              max_retries=engine.retries)
        fit_task = ray.remote(_ray_fit_task).options(num_cpus=engine.cpus_per_run, num_gpus=engine.gpus_per_run,
                                                      max_retries=engine.retries)
        deps = {key: [feature_task.remote(dataclasses.asdict(cfg), rank, engine.feature_workers)
                      for rank in range(engine.feature_workers)] for key, cfg in features.items()}
        pending = {fit_task.remote(dataclasses.asdict(runs[i].cfg), overwrite,
                                   *deps[feature_key(runs[i].cfg.data, runs[i].cfg.backbone)]): i for i in todo}
        logger.info("sweep: %d feature task(s) and %d run task(s) submitted to Ray", sum(map(len, deps.values())),
                    len(pending))
        job = JobProgress(progress, {labels[i]: 1.0 for i in todo})
        results: dict[int, dict] = {}
        failures: list[str] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=10.0)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    metrics = ray.get(ref)
                except Exception as err:  # a task that crashed more than `retries` times
                    metrics = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"}
                if "error" in metrics:
                    failures.append(f"{runs[i].cfg.out}: {metrics['error']}")
                else:
                    results[i] = metrics
                job.update(labels[i], 1, 1, f"{labels[i]}: {'failed' if 'error' in metrics else 'done'} (Ray)")
    finally:
        if started_here:
            ray.shutdown()
    if failures:
        raise BCIError(f"{len(failures)} sweep run(s) failed on Ray (the others are kept; run the sweep again to retry "
                       f"them): " + "; ".join(failures[:3]) + (" ..." if len(failures) > 3 else ""))
    return results


def _mean_by(rows: list[dict], keys: tuple[str, ...], value: str) -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r[value])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def write_report(rows: list[dict], out: Path) -> None:
    """``sweep.csv``, ``sweep.md`` and the plots ``top1_vs_depth.png`` and (with several
    backbones) ``top1_vs_params.png``."""
    from .plots import new_figure, save_plot

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

    fig, ax = new_figure()
    for b in backbones:
        pts = sorted(((k + 1) / info[b]["n_layers"], test[(b, k)]) for (bb, k) in test if bb == b and k != "final")
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)[0]
        if (b, "final") in test:
            ax.plot([1.05], [test[(b, "final")]], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    save_plot(fig, ax, out / "top1_vs_depth.png", "relative depth of the aligned layer (star: final layer)",
               "test top-1 (averaged repetitions)")

    if len(summary) >= 2:
        x = np.log([s[1] for s in summary])
        best_y = np.array([s[3] for s in summary])
        fig, ax = new_figure()
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
        save_plot(fig, ax, out / "top1_vs_params.png", "ln(parameters)", "test top-1")
        lines += ["", f"Correlation of test top-1 with ln(parameters): best intermediate layer r = {r_best:.2f}, "
                      f"final layer r = {r_final:.2f}."]
    lines += ["", "![top-1 vs depth](top1_vs_depth.png)"]
    if len(summary) >= 2:
        lines.append("![top-1 vs parameters](top1_vs_params.png)")
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
