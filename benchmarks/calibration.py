"""Calibration for a new person (issue 12) on the synthetic set: how much does adapting a
base bundle on a calibration block of N minutes help, against the base bundle alone and
against a brain side trained from scratch on the same block?

1. Data: ``bci-train synth DATA --preset tiny --subjects 4`` (made when missing).
2. Base bundle: ``bci-train fit --data DATA --subject 1 --train-subjects all --out BASE
   --backbone resnet10t --weights random`` (the repo's tiny default recipe, on all four
   subjects of the set).
3. New participants: ``SimulatedSubject.open(DATA, 1, person=S)`` for each person seed S,
   people in no data set.  For each, recorded sessions made faster than real time with
   :func:`bci_app.simulate.record_simulated_session` (the folder ``bci-app --record``
   writes while ``bci-app present --labels --pause 2`` shows the images to ``bci-replay
   --simulate --subject-seed S``):

   - calibration blocks of the training images, as ``bci-app present --set train
     --repetitions 5 --seed S --duration MIN`` orders them (each block is the first MIN
     minutes of the same session: noise seed 0);
   - one test session: every test image ``--test-repetitions`` times (noise seed 1, its own
     presentation order).

4. For each (person, minutes): ``adapt_bundle(base, [block])`` (adapted) and
   ``adapt_bundle(base, [block], from_scratch=True)`` (scratch), and every bundle decodes
   the person's test session offline (:func:`trainer.adapt.evaluate_recordings`, the live
   app's epoching).  The base bundle also decodes a test session of subject 1 of the set
   (a person it was trained on) for reference.

Results go to ``OUT/results.json`` as they come (a second run skips what is done), then a
markdown table (mean +- sd over the persons) is printed and written to ``OUT/table.md``,
and the plot to ``OUT/calibration.png``.

Usage::

    python benchmarks/calibration.py --out DIR [--quick] [--data DATA] [--persons 101,102,103]
        [--minutes 2,5,10,20] [--test-repetitions 10] [--epochs 40] [--base-epochs N]

``--quick``: one person, 2 and 5 minutes (to check that the script runs).  ``--report-only``:
the table and plot of what ``OUT/results.json`` holds (a run stopped early: rows with fewer
persons say so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PAUSE_S = 2.0
CAL_REPETITIONS = 5  # enough training images for 20 minutes (960 images x 5 in 6 s per 20)
CAL_NOISE_SEED, TEST_NOISE_SEED = 0, 1
REFERENCE_SUBJECT = 1  # a subject of the set (trained on by the base bundle)
MODELS = ("base", "adapted", "scratch")


def _run(cmd: list[str], log: Path) -> float:
    """Run a command, its output to ``log``; returns its seconds (exits on failure)."""
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"failed ({code}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - started


def ensure_data(data: Path, out: Path) -> None:
    if (data / "synth.json").is_file():
        return
    _run([sys.executable, "-m", "trainer.cli", "synth", str(data), "--preset", "tiny", "--subjects", "4"],
         out / "synth.log")


def base_command(data: Path, base: Path, epochs: int | None) -> list[str]:
    cmd = ["bci-train", "fit", "--data", str(data), "--subject", "1", "--train-subjects", "all", "--out", str(base),
           "--backbone", "resnet10t", "--weights", "random"]
    return cmd + (["--epochs", str(epochs)] if epochs else [])


def ensure_base(data: Path, base: Path, epochs: int | None, out: Path) -> float | None:
    if (base / "bundle.json").is_file():
        return None
    cmd = base_command(data, base, epochs)
    return _run([sys.executable, "-m", "trainer.cli"] + cmd[1:], out / "base.log")


def record_sessions(data: Path, person: int | None, folder: Path, minutes: list[float], test_reps: int) -> dict:
    """The calibration blocks (one per duration) and the test session of one person
    (``person`` None: the set's reference subject); returns {'cal': {min: path}, 'test': path}."""
    from bci_app.simulate import record_simulated_session
    from bci_app.stimuli import FrameTiming, limit_duration, load_stimuli, make_sequences
    from trainer.synth.live import SimulatedSubject

    subject = SimulatedSubject.open(data, REFERENCE_SUBJECT, person=person)
    seed = 0 if person is None else person
    timing = FrameTiming.for_display(60.0)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"cal": {}}
    train = make_sequences(load_stimuli(data, "training"), repetitions=CAL_REPETITIONS, seed=seed)
    for m in minutes:
        path = folder / f"cal-{m:g}min"
        if not (path / "recording-raw.fif").is_file():
            shutil.rmtree(path, ignore_errors=True)
            record_simulated_session(subject, limit_duration(train, timing, m, PAUSE_S), path, timing=timing,
                                     pause_s=PAUSE_S, seed=CAL_NOISE_SEED, image_set="training")
        out["cal"][m] = path
    path = folder / "test"
    if not (path / "recording-raw.fif").is_file():
        shutil.rmtree(path, ignore_errors=True)
        test = make_sequences(load_stimuli(data, "test"), repetitions=test_reps, seed=seed + 1000)
        record_simulated_session(subject, test, path, timing=timing, pause_s=PAUSE_S, seed=TEST_NOISE_SEED,
                                 image_set="test")
    out["test"] = path
    return out


def _metrics(m: dict) -> dict:
    return {"single_top1": m["single_trial"]["top1"], "single_top5": m["single_trial"]["top5"],
            "avg_top1": m["averaged"]["top1"], "avg_top5": m["averaged"]["top5"], "n_trials": m["n_trials"],
            "n_repetitions": m["n_repetitions"], "n_way": m["n_way"], "chance_top1": m["chance_top1"]}


def _save(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def run(args) -> dict:
    from trainer.adapt import adapt_bundle, evaluate_recordings

    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).expanduser().resolve() if args.data else out / "tiny4"
    base = Path(args.base).expanduser().resolve() if args.base else out / "base"
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results.setdefault("runs", {})
    ensure_data(data, out)
    if args.base and not (base / "bundle.json").is_file():
        sys.exit(f"--base {base}: not a bundle (no bundle.json)")
    seconds = ensure_base(data, base, args.base_epochs, out)
    if seconds is not None:
        results["base_seconds"] = round(seconds, 1)
    if args.base:
        cfg = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
        results["base_command"] = (f"{base} (given; fitted with " + ", ".join(f"{k}={cfg[k]}" for k in (
            "data", "subject", "train_subjects", "inter", "backbone", "weights", "epochs", "layer") if k in cfg) + ")")
    else:
        results["base_command"] = "`" + " ".join(base_command(data, base, args.base_epochs)) + "`"
    results["base_metrics"] = json.loads((base / "metrics.json").read_text()) if (base / "metrics.json").is_file() else None
    runs = results["runs"]

    if "reference" not in results:
        t = time.perf_counter()
        ref = record_sessions(data, None, out / "sessions" / f"subject{REFERENCE_SUBJECT}", [], args.test_repetitions)
        results["reference"] = _metrics(evaluate_recordings(base, [ref["test"]], data, device="cpu"))
        print(f"reference (subject {REFERENCE_SUBJECT} of the set, base): {results['reference']} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        _save(results, results_path)

    sessions = {}
    for person in args.persons:  # sessions first (seconds), then the base, then adaptations by duration
        t = time.perf_counter()
        sessions[person] = record_sessions(data, person, out / "sessions" / f"person{person}", args.minutes,
                                           args.test_repetitions)
        print(f"person {person}: sessions recorded ({time.perf_counter() - t:.0f} s)", flush=True)
        key = f"{person}/base"
        if key not in runs:
            runs[key] = _metrics(evaluate_recordings(base, [sessions[person]["test"]], data, device="cpu"))
            print(key, runs[key], flush=True)
            _save(results, results_path)
    for m in args.minutes:  # every person at one duration before the next: a run cut short has whole rows
        for person in args.persons:
            for model in ("adapted", "scratch"):
                key = f"{person}/{model}/{m:g}"
                if key in runs:
                    continue
                bundle = out / "bundles" / f"person{person}-{model}-{m:g}min"
                shutil.rmtree(bundle, ignore_errors=True)
                summary = adapt_bundle(base, [sessions[person]["cal"][m]], data, bundle, from_scratch=model == "scratch",
                                       epochs=args.epochs, batch_size=args.batch_size, seed=0, device="cpu")
                row = _metrics(evaluate_recordings(bundle, [sessions[person]["test"]], data, device="cpu"))
                row.update({f"cal_{k}": summary[k] for k in ("n_trials", "n_fit", "n_val", "minutes") if k in summary})
                row.update({k: summary[k] for k in ("best_epoch", "seconds", "epochs_run") if k in summary},
                           val_before=summary["before"], val_after=summary["after"])
                runs[key] = row
                print(key, {k: v for k, v in row.items() if k not in ("val_before", "val_after")}, flush=True)
                _save(results, results_path)
                if not args.keep_bundles:
                    shutil.rmtree(bundle, ignore_errors=True)
    results.update(persons=args.persons, minutes=args.minutes, test_repetitions=args.test_repetitions,
                   epochs=args.epochs, quick=args.quick, date=time.strftime("%Y-%m-%d"),
                   machine=f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}")
    _save(results, results_path)
    return results


def _cell(values: list[float], pct: bool = True) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return "–"
    f = 100.0 if pct else 1.0
    if len(v) == 1:
        return f"{f * v[0]:.1f}" if pct else f"{v[0]:.0f}"
    return f"{f * v.mean():.1f} ± {f * v.std(ddof=1):.1f}" if pct else f"{v.mean():.0f} ± {v.std(ddof=1):.0f}"


def table(results: dict) -> str:
    runs, persons, minutes = results["runs"], results["persons"], results["minutes"]
    head = ("| calibration | model | single-trial top-1 % | single-trial top-5 % | averaged top-1 % | averaged top-5 % "
            "| adaptation s | best epoch |")
    lines = [head, "|" + "---|" * 8]

    def row(label: str, model: str, rows: list[dict]) -> None:
        lines.append(f"| {label} | {model} | " + " | ".join(_cell([r[k] for r in rows]) for k in
                     ("single_top1", "single_top5", "avg_top1", "avg_top5"))
                     + f" | {_cell([r.get('seconds') for r in rows], pct=False)}"
                     + f" | {_cell([r.get('best_epoch') for r in rows], pct=False)} |")

    row("none", "base", [runs[f"{p}/base"] for p in persons])
    for m in minutes:
        for model in ("adapted", "scratch"):
            done = [runs[f"{p}/{model}/{m:g}"] for p in persons if f"{p}/{model}/{m:g}" in runs]
            if done:
                row(f"{m:g} min" + (f" ({len(done)} of {len(persons)} persons)" if len(done) < len(persons) else ""),
                    model, done)
    ref = results.get("reference")
    if ref:
        row(f"(subject {REFERENCE_SUBJECT} of the set)", "base", [ref])
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs, persons, minutes = results["runs"], results["persons"], results["minutes"]
    chance = runs[f"{persons[0]}/base"]["chance_top1"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in zip(axes, ("avg_top1", "single_top1"), ("averaged repetitions", "single trial")):
        base = np.array([runs[f"{p}/base"][key] for p in persons]) * 100
        ax.axhspan(base.mean() - (base.std(ddof=1) if len(base) > 1 else 0),
                   base.mean() + (base.std(ddof=1) if len(base) > 1 else 0), color="0.85")
        ax.axhline(base.mean(), color="0.3", label="base (no calibration)")
        for model, style in (("adapted", "o-"), ("scratch", "s--")):
            xs, mean, sd = [], [], []
            for m in minutes:
                v = [100 * runs[f"{p}/{model}/{m:g}"][key] for p in persons if f"{p}/{model}/{m:g}" in runs]
                if v:
                    xs.append(m)
                    mean.append(np.mean(v))
                    sd.append(np.std(v, ddof=1) if len(v) > 1 else 0.0)
            ax.errorbar(xs, mean, yerr=sd, fmt=style, capsize=3,
                        label="adapted from base" if model == "adapted" else "from scratch")
        ref = results.get("reference")
        if ref:
            ax.axhline(ref[key] * 100, color="tab:green", ls=":", label=f"base on subject {REFERENCE_SUBJECT} (trained on)")
        ax.axhline(chance * 100, color="k", ls=":", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("calibration (minutes of RSVP)")
        ax.set_title(f"test top-1, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"top-1 % ({runs[f'{persons[0]}/base']['n_way']}-way)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"new persons (n={len(persons)}, mean ± sd), tiny synthetic set", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="working folder (data, bundles, sessions, results)")
    p.add_argument("--data", help="a tiny synthetic set with 4 subjects (default: OUT/tiny4, made when missing)")
    p.add_argument("--base", help="the base bundle (default: OUT/base, fitted when missing)")
    p.add_argument("--quick", action="store_true", help="one person, 2 and 5 minutes")
    p.add_argument("--persons", default="101,102,103", help="person seeds")
    p.add_argument("--minutes", default="2,5,10,20", help="calibration durations")
    p.add_argument("--test-repetitions", type=int, default=20)
    p.add_argument("--epochs", type=int, default=40, help="adaptation epochs (at most)")
    p.add_argument("--batch-size", type=int, default=64, help="adaptation batch size")
    p.add_argument("--base-epochs", type=int, default=None, help="base fit epochs (default: the fit's)")
    p.add_argument("--keep-bundles", action="store_true")
    p.add_argument("--plot", help="PNG to write (default: OUT/calibration.png)")
    p.add_argument("--report-only", action="store_true", help="only the table and plot of OUT/results.json")
    args = p.parse_args()
    args.persons = [int(s) for s in args.persons.split(",")]
    args.minutes = [float(s) for s in args.minutes.split(",")]
    if args.quick:
        args.persons, args.minutes = args.persons[:1], [2.0, 5.0]
    started = time.perf_counter()
    if args.report_only:  # the table and plot of what OUT/results.json holds (a run cut short, too)
        results = json.loads((Path(args.out) / "results.json").read_text())
        results.setdefault("persons", args.persons)
        results.setdefault("minutes", args.minutes)
        results.setdefault("test_repetitions", args.test_repetitions)
        results.setdefault("date", time.strftime("%Y-%m-%d"))
        results.setdefault("machine", f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}")
    else:
        results = run(args)
    md = table(results)
    png = Path(args.plot) if args.plot else Path(args.out) / "calibration.png"
    plot(results, png)
    header = (f"{results['date']}, {results['machine']}; {len(results['persons'])} person(s) {results['persons']}, "
              f"calibration {', '.join(f'{m:g}' for m in results['minutes'])} min, test: every test image x "
              f"{results['test_repetitions']}; total {time.perf_counter() - started:.0f} s")
    text = f"{header}\n\nbase: {results['base_command']}\n\n{md}\n"
    (Path(args.out) / "table.md").write_text(text)
    print("\n" + text)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
