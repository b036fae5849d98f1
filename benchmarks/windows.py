"""Decide sooner (issue 15, part 3): retrieval accuracy against decision time, single trial
and averaged, for models trained with ``--windows`` against today's whole-epoch recipe.

For each subject and seed, three real ``bci-train fit`` runs with the same settings
(``resnet10t``, ``--layer auto`` with the ridge proxy, fit's defaults otherwise):

- ``whole``: today's recipe (decides at the epoch's end only); its model is also tested on
  the epochs' first samples (the rest zeroed), which it was not trained for;
- ``windows``: ``--windows 0.3,0.5`` (the stages the app shows by default);
- ``dense``: ``--windows 0.1,0.2,...,0.9`` (the shape of the curve).

The decision time of a stage is when its raw window is in after the marker (its end plus
the resampling kernel's half-width at the recording's rate: ``trainer.windows.stage_spec``)
plus the live decision latency measured in docs/benchmarks.md (3 ms at p50).

Results go to ``OUT/results.json`` as they come (finished runs are skipped); the table to
``OUT/table.md``, the curve to ``OUT/accuracy_vs_time.png``.

Usage::

    python benchmarks/windows.py --out DIR --data DATA --weights WEIGHTS --image-size 64 \\
        [--subjects 1,2] [--seeds 0,1,2] [--rate 1000]
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

DENSE = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
VARIANTS = {"whole": "", "windows": "0.3,0.5", "dense": DENSE}
DECISION_LATENCY = 0.003  # s, live p50 (docs/benchmarks.md)


def _config(args, out: Path, subject: int, seed: int, windows: str):
    from trainer.config import FitConfig

    return FitConfig(data=args.data, subject=subject, out=str(out), backbone="resnet10t", weights=args.weights,
                     image_size=args.image_size, layer="auto", layers="all", seed=seed, windows=windows,
                     cache=str(Path(args.out) / "cache"), device="cpu")


def _stages(metrics: dict) -> list[dict]:
    return [{"end": w["end"], "averaged": w["averaged"]["top1"], "single": w["single_trial"]["top1"],
             "averaged5": w["averaged"]["top5"], "single5": w["single_trial"]["top5"]} for w in metrics["windows"]]


def _masked_whole(run: Path, data: str, subject: int, cache: Path) -> list[dict]:
    """The whole-epoch model tested on the dense stages' first samples."""
    from trainer.bundle import load_bundle
    from trainer.datasets import load_test_data
    from trainer.fit import evaluate_stages
    from trainer.windows import parse_windows

    bundle = load_bundle(run)
    test, image_ids = load_test_data(data, subject, bundle.spec, cache_dir=cache / "epochs")
    lookup = {int(g): i for i, g in enumerate(bundle.gallery_ids)}
    targets = np.array([lookup[int(i) + 1] for i in image_ids])
    stages = evaluate_stages(bundle.brain, test, bundle.gallery, targets, bundle.spec,
                             [(end, None) for end in parse_windows(DENSE)], device="cpu")
    return [{"end": w["end"], "averaged": w["averaged"]["top1"], "single": w["single_trial"]["top1"],
             "averaged5": w["averaged"]["top5"], "single5": w["single_trial"]["top5"]} for w in stages]


def _decision_time(spec, end: float, rate: float) -> float:
    from trainer.windows import stage_spec

    start, n_in = stage_spec(spec, end).window(rate)
    return (start + n_in) / rate + DECISION_LATENCY


def _ms(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1 if len(v) > 1 else 0):.1f}"


def _curves(results: dict) -> dict[str, dict[float, dict[str, list]]]:
    out: dict[str, dict[float, dict[str, list]]] = {}
    for res in results.values():
        for variant in ("whole_masked", "windows", "dense"):
            for st in res[variant]:
                cell = out.setdefault(variant, {}).setdefault(st["end"], {"single": [], "averaged": []})
                cell["single"].append(st["single"])
                cell["averaged"].append(st["averaged"])
        cell = out.setdefault("whole", {}).setdefault(res["whole"]["end"], {"single": [], "averaged": []})
        cell["single"].append(res["whole"]["single"])
        cell["averaged"].append(res["whole"]["averaged"])
    return out


def _table(results: dict, times: dict[float, float]) -> str:
    curves = _curves(results)
    lines = ["| model | window (s after the marker) | decision at (s) | single-trial top-1 | averaged top-1 |",
             "|---|---|---|---|---|"]
    names = {"whole": "today: whole epoch", "whole_masked": "today's model on the first samples",
             "windows": "--windows 0.3,0.5", "dense": f"--windows {DENSE}"}
    for variant in ("whole", "windows", "dense", "whole_masked"):
        for end, cell in sorted(curves.get(variant, {}).items()):
            lines.append(f"| {names[variant]} | {end:g} | {times[end]:.3f} | {_ms(cell['single'])} % | "
                         f"{_ms(cell['averaged'])} % |")
    return "\n".join(lines)


def _plot(results: dict, times: dict[float, float], path: Path) -> None:
    from trainer.plots import new_figure, save_figure

    curves = _curves(results)
    fig, axes = new_figure(ncols=2, size=(10, 4))
    styles = {"dense": ("-o", f"--windows {DENSE}"), "windows": ("s", "--windows 0.3,0.5"),
              "whole": ("*", "today: whole epoch"), "whole_masked": (":x", "today's model on the first samples")}
    for ax, cond, title in zip(axes, ("single", "averaged"), ("single trial", "averaged repetitions")):
        for variant, (fmt, label) in styles.items():
            ends = sorted(curves.get(variant, {}))
            if not ends:
                continue
            mean = [100 * np.mean(curves[variant][e][cond]) for e in ends]
            sd = [100 * np.std(curves[variant][e][cond]) for e in ends]
            ax.errorbar([times[e] for e in ends], mean, yerr=sd, fmt=fmt, capsize=3, ms=8 if variant == "whole" else 5,
                        label=label, alpha=0.85)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("decision time after the marker (s)")
        ax.set_ylabel("test top-1 (%), mean ± s.d. over subjects and seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", default="random")
    p.add_argument("--image-size", type=int, default=0)
    p.add_argument("--subjects", default="1,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rate", type=float, default=1000.0, help="the recording's sampling rate (for the decision times)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from trainer.bundle import load_bundle
    from trainer.fit import fit
    from trainer.windows import parse_windows

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    spec = None
    for subject in map(int, args.subjects.split(",")):
        for seed in map(int, args.seeds.split(",")):
            key = f"s{subject}-seed{seed}"
            res = results.setdefault(key, {})
            for variant, windows in VARIANTS.items():
                run = out / "runs" / key / variant
                if variant not in res:
                    started = time.perf_counter()
                    m = fit(_config(args, run, subject, seed, windows))
                    res[variant] = ({"end": 1.0, "single": m["single_trial"]["top1"], "averaged": m["averaged"]["top1"]}
                                    if variant == "whole" else _stages(m))
                    print(f"{key} {variant}: {time.perf_counter() - started:.0f} s", flush=True)
                if variant == "whole" and "whole_masked" not in res:
                    res["whole_masked"] = _masked_whole(run, args.data, subject, out / "cache")
                path.write_text(json.dumps(results, indent=1))
                spec = spec or load_bundle(run).spec
    ends = sorted(set(parse_windows(DENSE)) | {1.0})
    times = {e: _decision_time(spec, e, args.rate) for e in ends}
    table = _table(results, times)
    header = (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, one "
              f"thread; {' '.join(sys.argv)}\n\n")
    (out / "table.md").write_text(header + table + "\n")
    _plot(results, times, out / "accuracy_vs_time.png")
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
