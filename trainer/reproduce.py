"""``bci-train reproduce``: the paper's protocol as a config file, run as one sweep.

The config (TOML or JSON) names the data (THINGS-EEG2 and/or THINGS-MEG), the backbones
(each with its weights and candidate layers), the subjects, seeds and modes (intra:
trained and tested on the same subject; inter: leave-one-subject-out), and the training
defaults.  Every (modality, mode, backbone, layer, subject, seed) is one run, each a
``fit`` of one layer (as the paper trains one model per layer).  The report is the paper's:

* per modality and mode, per backbone: the layer chosen on *validation* concepts (the
  best mean validation top-1 over subjects and seeds), its test top-1/top-5 as mean ± s.d.
  over subjects and seeds, and the final layer's beside it (``reproduce.md``,
  ``reproduce.csv`` with every run, ``reproduce.json``);
* the scaling plot: test top-1 against ln(parameters) for the chosen and the final layers,
  with Pearson's r (``scaling_<modality>_<mode>.png``);
* each modality and mode's layer table and top-1-against-depth plot (``sweep.md``).

Example config: ``configs/reproduce/paper.toml`` (the paper's eight backbones).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import FitConfig, default_cache_dir
from .errors import DataFormatError, UsageError
from .files import atomic_path, atomic_write_text
from .plots import new_figure, save_plot
from .progress import Progress
from .sweep import Engine, SweepRun, plan_runs, run_sweep, write_report

__all__ = ["Protocol", "load_protocol", "plan_protocol", "reproduce"]

logger = logging.getLogger("trainer")

MODES = ("intra", "inter")
_BACKBONE_KEYS = {"name", "weights", "layers", "trust_remote_code", "image_size"}


@dataclass
class Protocol:
    """What ``bci-train reproduce`` runs (see the module docstring)."""

    out: str
    eeg: str = ""
    meg: str = ""
    subjects: list[int] = field(default_factory=list)
    meg_subjects: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    modes: list[str] = field(default_factory=lambda: ["intra"])
    backbones: list[dict] = field(default_factory=list)
    fit: dict = field(default_factory=dict)


def load_protocol(path: str | Path, *, out: str | None = None) -> Protocol:
    """Read a protocol file (TOML or JSON): top-level ``out``, ``eeg``, ``meg``,
    ``subjects``, ``meg_subjects``, ``seeds``, ``modes``; a ``[fit]`` table of training
    settings (``bci-train fit``'s option names with underscores); one ``[[backbone]]``
    table per backbone (``name``, and optionally ``weights``, ``layers``,
    ``trust_remote_code``, ``image_size``).  Relative paths (data, out, ``hf:`` folders,
    weights files) are relative to the file's folder.  ``out`` overrides the file's."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as err:
        raise DataFormatError(path, None, f"cannot read the protocol ({err.strerror or err})") from err
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import tomllib

            raw = tomllib.loads(text)
    except ValueError as err:
        raise DataFormatError(path, None, f"not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {err}") from err
    here = path.resolve().parent

    def local(value: str) -> str:
        if not value:
            return value
        p = Path(value).expanduser()
        return os.path.normpath(p if p.is_absolute() else here / p)

    known = {f.name for f in dataclasses.fields(Protocol)} | {"backbone"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataFormatError(path, unknown[0], f"unknown key (known: {', '.join(sorted(known - {'backbones'}))})")
    backbones = []
    for i, b in enumerate(raw.get("backbone", [])):
        if not isinstance(b, dict) or not isinstance(b.get("name"), str):
            raise DataFormatError(path, f"backbone[{i}]", "each [[backbone]] needs a name")
        extra = sorted(set(b) - _BACKBONE_KEYS)
        if extra:
            raise DataFormatError(path, f"backbone[{i}].{extra[0]}", f"unknown key (known: {', '.join(sorted(_BACKBONE_KEYS))})")
        b = dict(b)
        if b["name"].startswith("hf:"):
            b["name"] = "hf:" + local(b["name"][3:])
        if b.get("weights") not in (None, "random", "hub"):
            b["weights"] = local(b["weights"])
        backbones.append(b)
    fit = dict(raw.get("fit", {}))
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    bad = sorted(set(fit) - fields)
    if bad:
        raise DataFormatError(path, f"fit.{bad[0]}", "not a setting of bci-train fit")
    owned = sorted(set(fit) & {"data", "out", "subject", "seed", "backbone", "weights", "layer", "layers", "inter",
                               "train_subjects", "source", "fusion", "fusion_layers"})
    if owned:
        raise DataFormatError(path, f"fit.{owned[0]}", "set by the protocol itself (top-level keys and [[backbone]]); "
                                                       "a protocol sweeps single layers, so fusion is not one of its settings")
    protocol = Protocol(out=out or local(raw.get("out", "")), eeg=local(raw.get("eeg", "")), meg=local(raw.get("meg", "")),
                        subjects=list(raw.get("subjects", [])), meg_subjects=list(raw.get("meg_subjects", [])),
                        seeds=list(raw.get("seeds", [0])), modes=list(raw.get("modes", ["intra"])), backbones=backbones,
                        fit=fit)
    return check_protocol(protocol, path)


def check_protocol(p: Protocol, source: Path | str = "protocol") -> Protocol:
    if not p.out:
        raise UsageError(f"{source}: give the output folder (out = ... or --out)")
    if not p.eeg and not p.meg:
        raise UsageError(f"{source}: give the data: eeg = THINGS-EEG2 folder and/or meg = THINGS-MEG folder")
    if p.eeg and not p.subjects:
        raise UsageError(f"{source}: subjects = [...] (the EEG subjects)")
    if p.meg and not p.meg_subjects:
        raise UsageError(f"{source}: meg_subjects = [...] (the MEG subjects)")
    if not p.backbones:
        raise UsageError(f"{source}: at least one [[backbone]]")
    if not p.seeds:
        raise UsageError(f"{source}: seeds = [...]")
    bad = [m for m in p.modes if m not in MODES]
    if bad or not p.modes:
        raise UsageError(f"{source}: modes must be a non-empty list of {', '.join(MODES)}, got {p.modes!r}")
    for name in ("subjects", "meg_subjects", "seeds"):
        values = getattr(p, name)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise UsageError(f"{source}: {name} must be a list of integers, got {values!r}")
    return p


def plan_protocol(p: Protocol, *, cache: str = "") -> tuple[list[SweepRun], dict]:
    """Every run of the protocol and the feature passes they need (see :func:`plan_runs`)."""
    runs: list[SweepRun] = []
    features: dict = {}
    described: dict = {}  # each backbone is described once, for every modality and mode
    data = [("eeg", p.eeg, p.subjects, "auto"), ("meg", p.meg, p.meg_subjects, "meg")]
    for modality, folder, subjects, source in data:
        if not folder:
            continue
        for mode in p.modes:
            for b in p.backbones:
                base = FitConfig(**{**p.fit, "data": folder, "out": p.out, "source": source, "inter": mode == "inter",
                                    "weights": b.get("weights", "hub"), "trust_remote_code": bool(b.get("trust_remote_code")),
                                    "image_size": int(b.get("image_size", 0)), "cache": cache or p.fit.get("cache", "")})
                base.validate()
                r, f = plan_runs(base, backbones=[b["name"]], subjects=subjects, seeds=p.seeds,
                                 layers=str(b.get("layers", "auto")), folder=f"{modality}/{mode}",
                                 extra={"modality": modality, "mode": mode}, described=described)
                runs += r
                features.update(f)
    return runs, features


def reproduce(p: Protocol, *, engine: Engine | None = None, overwrite: bool = False,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run the protocol (finished runs are kept: run it again to complete it) and write the
    report into ``p.out``; returns the summary (also ``reproduce.json``)."""
    check_protocol(p)
    out = Path(p.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache = str(Path(p.fit["cache"]).expanduser() if p.fit.get("cache") else default_cache_dir())
    runs, features = plan_protocol(p, cache=cache)
    logger.info("reproduce: %d runs, %d feature pass(es)", len(runs), len(features))
    rows = run_sweep(runs, features, engine=(engine or Engine()).check(), overwrite=overwrite, progress=progress, root=out)
    return write_protocol_report(rows, out)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def write_protocol_report(rows: list[dict], out: Path) -> dict[str, Any]:
    """``reproduce.csv`` (every run), ``reproduce.md`` and ``reproduce.json`` (per modality
    and mode, per backbone: the validation-chosen layer and the final layer, test top-1 and
    top-5 as mean ± s.d. over subjects and seeds), ``scaling_<modality>_<mode>.png`` and
    each modality and mode's layer tables (``<modality>/<mode>/sweep.md``)."""
    import csv

    out = Path(out)
    with atomic_path(out / "reproduce.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    summary: dict[str, Any] = {"groups": []}
    lines = ["# Reproduction", "",
             "Zero-shot retrieval of the test images, repetitions averaged. The layer is chosen on validation concepts "
             "(best mean validation top-1 over subjects and seeds); test figures are mean ± s.d. over subjects and seeds.",
             ""]
    groups = sorted({(r["modality"], r["mode"]) for r in rows})
    for modality, mode in groups:
        part = [r for r in rows if (r["modality"], r["mode"]) == (modality, mode)]
        write_report(part, out / modality / mode)
        n_way = part[0]["n_way"]
        lines += [f"## {modality.upper()}, {mode}-subject ({n_way}-way)", "",
                  "| backbone | params | layers | chosen layer (depth) | top-1 | top-5 | final layer top-1 | runs |",
                  "|---|---|---|---|---|---|---|---|"]
        table = []
        for backbone in dict.fromkeys(r["backbone"] for r in part):
            mine = [r for r in part if r["backbone"] == backbone]
            inter_layers = sorted({r["layer"] for r in mine if r["layer"] != "final"})
            candidates = inter_layers or ["final"]
            chosen = max(candidates, key=lambda k: np.mean([r["val_top1"] for r in mine if r["layer"] == k]))
            best = [r for r in mine if r["layer"] == chosen]
            final = [r for r in mine if r["layer"] == "final"]
            top1, top1_sd = _mean_sd([r["test_top1"] for r in best])
            top5, top5_sd = _mean_sd([r["test_top5"] for r in best])
            entry = {"modality": modality, "mode": mode, "backbone": backbone, "n_params": mine[0]["n_params"],
                     "n_layers": mine[0]["n_layers"], "chosen_layer": chosen, "depth": best[0]["depth"],
                     "top1": top1, "top1_sd": top1_sd, "top5": top5, "top5_sd": top5_sd, "n_runs": len(best)}
            if final:
                entry["final_top1"], entry["final_top1_sd"] = _mean_sd([r["test_top1"] for r in final])
            table.append(entry)
            depth = "" if entry["depth"] is None else f" ({100 * entry['depth']:.0f} %)"
            final_s = f"{100 * entry['final_top1']:.1f} ± {100 * entry['final_top1_sd']:.1f}" if final else "-"
            lines.append(f"| {backbone} | {entry['n_params'] / 1e6:.1f} M | {entry['n_layers']} | {chosen}{depth} | "
                         f"{100 * top1:.1f} ± {100 * top1_sd:.1f} | {100 * top5:.1f} ± {100 * top5_sd:.1f} | {final_s} | "
                         f"{len(best)} |")
        scaling = _scaling_plot(table, out / f"scaling_{modality}_{mode}.png", f"{modality.upper()}, {mode}")
        few = " (with two backbones r is ±1 whatever the numbers)" if len(table) == 2 else ""
        lines += ["", f"Test top-1 against ln(parameters) over {len(table)} backbone(s): chosen layer r = "
                      f"{scaling['r_chosen']:.2f}, final layer r = {scaling['r_final']:.2f}{few} (the paper, EEG intra, "
                      f"eight backbones: 0.90 and 0.13).", "",
                  f"![scaling](scaling_{modality}_{mode}.png)", "",
                  f"Per layer: [{modality}/{mode}/sweep.md]({modality}/{mode}/sweep.md)", ""]
        summary["groups"].append({"modality": modality, "mode": mode, "backbones": table,
                                  **{k: (None if math.isnan(v) else v) for k, v in scaling.items()}})
    atomic_write_text(out / "reproduce.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "reproduce.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 2 or np.ptp(y) == 0 or np.ptp(x) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _scaling_plot(table: list[dict], path: Path, title: str) -> dict[str, float]:
    x = [math.log(t["n_params"]) for t in table]
    chosen = [t["top1"] for t in table]
    finals = [(xi, t["final_top1"]) for xi, t in zip(x, table) if "final_top1" in t]
    r_chosen = _pearson(x, chosen)
    r_final = _pearson([a for a, _ in finals], [b for _, b in finals])
    fig, ax = new_figure()
    ax.errorbar(x, chosen, yerr=[t["top1_sd"] for t in table], fmt="o", capsize=3,
                label=f"layer chosen on validation (r = {r_chosen:.2f})")
    if finals:
        ax.errorbar([a for a, _ in finals], [b for _, b in finals],
                    yerr=[t["final_top1_sd"] for t in table if "final_top1" in t], fmt="*", markersize=10, capsize=3,
                    label=f"final layer (r = {r_final:.2f})")
    for xi, t in zip(x, table):
        ax.annotate(t["backbone"], (xi, t["top1"]), fontsize=6)
    ax.set_title(title)
    save_plot(fig, ax, path, "ln(parameters)", "test top-1 (mean ± s.d. over subjects and seeds)")
    return {"r_chosen": r_chosen, "r_final": r_final}
