"""``bci-train``: the offline command line: synthetic data sets, data inspection, training
(fit, sweep, pretrain), evaluation, re-targeting and calibration (adapt) of model bundles."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from .errors import MissingFileError, UsageError

__all__ = ["build_parser", "main"]

logger = logging.getLogger("trainer")


def build_parser() -> argparse.ArgumentParser:
    """The ``bci-train`` command line (every sub-command and its options)."""
    from .synth.dataset import PRESETS, VARIANT_FOLDERS

    parser = argparse.ArgumentParser(
        prog="bci-train",
        description="Offline side of shallow-alignment EEG/MEG visual decoding: data sets, training, evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "synth",
        help="generate a synthetic THINGS-like data set",
        description=(
            "Write a synthetic data set in the exact THINGS-EEG2 layout and formats: raw sessions at 1000 Hz "
            "with a stim row and the real 63 channel names, preprocessed files, procedural images in THINGS "
            "folder naming and image_metadata.npy; optionally THINGS-MEG-like -epo.fif files. Deterministic "
            "for a seed."
        ),
    )
    p.add_argument("out", type=Path, help="output folder (created; existing files are overwritten)")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny",
                   help="size: tiny (seconds; the tests and the bci-app --demo), small (about a minute and a "
                        "half), full (THINGS-EEG2 sizes; see docs/data.md for time and disk). Default: tiny")
    p.add_argument("--subjects", type=int, default=None, help="number of subjects (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--variants", default="official",
                   help=f"comma-separated preprocessed variants to write: {', '.join(VARIANT_FOLDERS)} "
                        "(default: official)")
    p.add_argument("--meg", action="store_true", help="also write THINGS-MEG-like preprocessed_P{n}-epo.fif files")
    p.add_argument("--snr", type=float, default=None,
                   help="scale of the informative brain responses (default 2.0; 1.0 makes single trials about "
                        "as hard as in real THINGS-EEG2, see docs/data.md)")

    _add_fit_parser(sub)
    _add_sweep_parser(sub)
    _add_features_parser(sub)
    _add_reproduce_parser(sub)
    p = sub.add_parser(
        "backbones", help="describe backbones: provider, layers, parameters (without loading weights)",
        description="For each backbone name (a timm model, or hf:FOLDER for a local transformers model folder), "
                    "what fit would see: its provider, the kind of its layers, how many layers --layer can index, "
                    "its parameter count and input size. The architecture is built without weights or memory "
                    "(PyTorch's meta device), so the largest models are described in seconds on any machine.")
    p.add_argument("names", nargs="+", help="backbone names")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let an hf: folder that ships its own model code run it (it runs with your rights)")
    p.add_argument("--json", action="store_true", help="print one JSON object per backbone")
    p = sub.add_parser(
        "pretrain", help="pretrain a timm backbone on the training concepts (when no pretrained weights exist)",
        description="Train a timm backbone from random initialisation to classify the TRAINING concepts of an "
                    "image set, and save a timm state dict (safetensors) that 'bci-train fit --weights FILE' "
                    "loads. For machines and data sets without pretrained weights (offline, synthetic images); "
                    "test concepts are never seen, so retrieval stays zero-shot.",
    )
    p.add_argument("--data", type=Path, required=True, help="data folder (THINGS-EEG2 layout) or an image_set folder")
    p.add_argument("--backbone", required=True, help="timm model name")
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.safetensors; a .json summary goes beside it)")
    p.add_argument("--image-size", type=int, default=64, help="training and feature image size (default 64)")
    p.add_argument("--epochs", type=int, default=15, help="epochs (default 15)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, one-cycle schedule (default 2e-3)")
    p.add_argument("--color-jitter", type=float, default=1.0,
                   help="share of batches whose colour channels are swapped and rescaled (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p = sub.add_parser("eval", help="reproduce a run's test metrics from its bundle alone",
                       description="Evaluate a model bundle on a subject's test set (zero-shot retrieval): "
                                   "top-1/top-5 for averaged repetitions and single trials, and 2/4/10-way top-1.")
    p.add_argument("--bundle", type=Path, required=True, help="run / bundle folder")
    p.add_argument("--data", type=Path, required=True, help="data folder (THINGS-EEG2 layout, or THINGS-MEG)")
    p.add_argument("--subject", type=int, required=True, help="subject to test on")
    p.add_argument("--source", choices=["auto", "raw", "preprocessed", "meg"], default="auto",
                   help="where the test epochs come from (default: as the bundle was trained)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: $SHALLOW_BCI_CACHE or ~/.cache/shallow-bci)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("retarget", help="copy a bundle with a new gallery of images",
                       description="Embed other candidate images with the bundle's backbone, layer, pooling and "
                                   "image projector, and write a copy of the bundle with that gallery (ids 1..N in "
                                   "file-name order; concept = each image's folder name). Needs the backbone "
                                   "weights the bundle was trained with.")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    p.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively: jpg, jpeg, png)")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder")
    p.add_argument("--weights", default=None, help="where to load the backbone weights from (default: as recorded)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let an hf: backbone whose folder ships its own model code run it (it runs with your rights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")

    _add_adapt_parser(sub)
    p = sub.add_parser("info", help="show what a THINGS-EEG2 folder (real or synthetic) contains",
                       description="List subjects, raw sessions, preprocessed files, images and MEG files of a data folder.")
    p.add_argument("data", type=Path, help="data folder")
    for command in sub.choices.values():  # -v after the command too ('bci-train fit ... -v'); SUPPRESS keeps one before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log more detail to stderr")
    return parser


_FIT_HELP = {
    "data": "data folder (THINGS-EEG2 layout, real or synthetic; a THINGS-MEG folder with --source meg)",
    "subject": "subject number (tested on; also trained on unless --inter or --train-subjects)",
    "out": "run folder: the bundle, metrics.json and config.json go here (checkpoints go to the cache while it "
           "trains). Run the same command again to resume an interrupted run; on a finished run with the same "
           "settings it only prints the metrics; a folder holding a run of other settings is refused (see --overwrite)",
    "source": "epochs from 'raw' sessions with --spec (what the live app reproduces), the official "
              "'preprocessed' files, or 'meg'; 'auto' takes raw when there is raw data",
    "spec": "preprocessing spec for raw data: paper (17 ch, 250 Hz, 0-1 s), 63ch-250hz, official",
    "backbone": "timm model name (any model with forward_intermediates), or hf:FOLDER, a local Hugging Face transformers "
                "vision model folder (config.json, weights, preprocessor_config.json)",
    "weights": "backbone weights: 'hub' (for hf: backbones the folder's own), 'random' (tests, demo) or a local weights "
               "file (for hf: backbones, the folder the model has moved to)",
    "trust_remote_code": "let an hf: backbone whose folder ships its own model code (InternViT-6B's does) run that code; "
                         "it runs with your rights: read it first",
    "image_size": "input size for ViT-style backbones built at another resolution (0: the model's own)",
    "layer": "'auto' (chosen on validation concepts), 'final', or a block index",
    "layers": "with --layer auto: comma-separated candidate blocks (and/or 'final'); default ~10 evenly spaced + final",
    "layer_search": "with --layer auto: 'proxy' scores every candidate by a ridge regression from the EEG to its features "
                    "on the validation concepts (seconds) and trains only the best; 'full' trains every candidate and "
                    "keeps the best validation top-1 (one training per candidate)",
    "fusion": "align with several layers at once: 'concat' (their features side by side into one projector) or "
              "'weighted' (a projector per layer, mixed by learned softmax layer weights) of --fusion-layers; 'auto' "
              "trains both and the single layer --layer chooses, and validation concepts choose among them; 'none': "
              "one layer",
    "fusion_layers": "with --fusion: comma-separated blocks (and/or 'final') to fuse, or 'auto': the 2 and the 3 "
                     "candidate layers the ridge proxy ranks best and all candidates, each trained (validation "
                     "concepts choose)",
    "windows": "decide before the epoch ends: comma-separated window ends in seconds after the onset (e.g. "
               "0.3,0.5); one encoder learns them and the whole epoch (the samples after a random window end are zeroed "
               "while it trains), the app shows a provisional prediction as each window completes; '' (default): at "
               "the epoch's end only",
    "pooling": "token pooling: mean, cls or mean+cls (CNN stages: global average)",
    "encoder": "EEG encoder",
    "embed_dim": "encoder output size",
    "proj_dim": "size of the shared embedding (both projectors)",
    "epochs": "training epochs per layer",
    "batch_size": "batch size",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "temperature": "initial InfoNCE temperature",
    "learn_temperature": "learn the temperature (use --fixed-temperature to keep it fixed)",
    "seed": "random seed",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "arithmetic of the training steps: 'bf16' (encoder and projectors under bfloat16 autocast, loss in "
                 "float32), 'fp32', or 'auto': bf16 on a CUDA GPU that supports it, fp32 elsewhere (validation, test "
                 "and bundle are float32 in every case)",
    "inter": "leave-one-subject-out: train on all other subjects, test on --subject",
    "train_subjects": "train on these subjects instead: 'all' (the base bundle for new people: see bci-train adapt) or "
                      "comma-separated numbers; tested on --subject",
    "val_fraction": "share of training concepts held out for validation",
    "image_batch_size": "batch size of the backbone feature pass; 0: automatic (32 on a CPU; on a GPU what fits in its "
                        "free memory, halved whenever a batch runs out of it)",
    "feature_precision": "arithmetic of the backbone's feature pass (its weights and activations): bf16, fp16, fp32, or "
                         "'auto': bf16 on a CUDA GPU that supports it, fp16 on another, fp32 on a CPU; features of a bf16 "
                         "or fp16 pass are cached as float16",
    "cache": "cache folder for features, epochs and the checkpoints of unfinished runs "
             "(default: $SHALLOW_BCI_CACHE or ~/.cache/shallow-bci)",
}

_OVERWRITE_HELP = ("train from the start and replace what the run folder holds, even a finished run of other settings "
                   "(without it, such a folder is refused)")


def _add_fit_parser(sub) -> None:
    p = sub.add_parser(
        "fit", help="train an encoder by shallow alignment and write a model bundle",
        description="Align an EEG/MEG encoder with a pooled intermediate layer of a frozen vision backbone "
                    "(symmetric InfoNCE), choose the epoch and layer on held-out training concepts, evaluate "
                    "zero-shot retrieval on the test set, and write the bundle to --out. Defaults follow the "
                    "paper; a --config file (TOML or JSON) may set defaults, flags override it.",
    )
    p.add_argument("--config", type=Path, default=None, help="TOML/JSON file of defaults (keys = option names with _)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    _add_config_options(p, required=("data", "out"))


#: the settings of a run that its feature pass depends on (and where and how it computes)
_FEATURE_SETTINGS = ("data", "source", "backbone", "weights", "trust_remote_code", "image_size", "layers", "pooling",
                     "device", "feature_precision", "image_batch_size", "cache")


def _add_features_parser(sub) -> None:
    import dataclasses

    from .config import FitConfig

    p = sub.add_parser(
        "features", help="compute the backbone features of a data set's images into the cache, on several GPUs or nodes",
        description="The feature pass of fit and sweep on its own: the pooled features of the training and test images "
                    "for the candidate layers, written to the cache fit and sweep read. The pass is written in shards "
                    "of 2048 images: run the same command again to resume a killed pass. --devices cuda:0,cuda:1 runs "
                    "one worker per device; on a cluster, run one worker per GPU with --rank I --world N, all with "
                    "the same --cache on shared storage: the last to finish merges the shards.")
    p.add_argument("--config", type=Path, default=None, help="TOML/JSON file of defaults (keys = option names with _)")
    p.add_argument("--devices", default="", help="comma-separated devices, one worker each (e.g. cuda:0,cuda:1)")
    p.add_argument("--rank", type=int, default=0, help="this worker's number, 0..world-1 (default 0)")
    p.add_argument("--world", type=int, default=1, help="how many workers share the pass (default 1)")
    p.add_argument("--shard-size", type=int, default=0,
                   help="images per shard; every worker of a pass must use the same (default 0: 2048)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_config_options(p, skip=tuple(f.name for f in dataclasses.fields(FitConfig) if f.name not in _FEATURE_SETTINGS),
                        required=("data",))


def _cmd_features(args: argparse.Namespace) -> int:
    import json

    from .config import FitConfig
    from .feature_pass import feature_pass
    from .progress import ProgressBars

    values = _config_values(args)
    values.setdefault("out", "-")
    cfg = FitConfig(**{k: v for k, v in values.items() if k in _FEATURE_SETTINGS or k == "out"})
    with ProgressBars() as progress:
        summary = feature_pass(cfg, devices=args.devices.split(",") if args.devices else (), rank=args.rank,
                               world=args.world, shard_size=args.shard_size, progress=progress)
    if args.json:
        print(json.dumps(summary))
    else:
        state = "complete" if summary["complete"] else "this worker's shards written; waiting for the other workers"
        print(f"features of {summary['backbone']}: {', '.join(summary['layers'])} for {summary['n_images']} images, "
              f"{summary['seconds']:.1f} s, {state} ({summary['cache']})")
    return 0


def _add_config_options(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """One option per FitConfig field (fit and sweep share them); None means 'not given'."""
    import dataclasses

    from .config import FitConfig

    defaults = FitConfig()
    for f in dataclasses.fields(FitConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = _FIT_HELP.get(f.name, "")
        if f.name == "learn_temperature":
            p.add_argument("--fixed-temperature", dest="learn_temperature", action="store_false", default=None,
                           help="keep the temperature fixed at --temperature")
        elif f.name in ("inter", "trust_remote_code"):
            p.add_argument(flag, dest=f.name, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, dest=f.name, type=type(default) if default != "" else str, default=None,
                           help=f"{text} (default: {default!r})" if default != "" else text,
                           required=f.name in required)


def _config_values(args: argparse.Namespace, *, skip: tuple[str, ...] = ()) -> dict:
    """Settings from --config, overridden by the options given on the command line."""
    import dataclasses

    from .config import FitConfig

    values = FitConfig.from_file(args.config) if args.config else {}
    for f in dataclasses.fields(FitConfig):
        value = None if f.name in skip else getattr(args, f.name, None)
        if value is not None:
            values[f.name] = str(value) if isinstance(value, Path) else value
    return values


def _add_adapt_parser(sub) -> None:
    from .adapt import ADAPT_PARTS, MIN_FIT_TRIALS, MIN_VAL_CONCEPTS

    p = sub.add_parser(
        "adapt", help="calibrate a bundle to a new person from recorded calibration blocks",
        description="Fine-tune a bundle's brain side on 'bci-app --record' recordings made while the presenter showed "
                    "training-concept images to the person: epochs cut with the bundle's own preprocessing, targets "
                    "from its own backbone, layer and image projector, the same loss; the epoch is chosen on "
                    "held-out calibration concepts (never the test images), and the gallery is the bundle's. "
                    "Markers naming test images are skipped, their epochs never cut. Adapting an adapted bundle continues from it "
                    "with its recordings and the new ones. See docs/calibration.md.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="the bundle to start from (an inter-subject one, or an adapted one)")
    p.add_argument("--recording", type=Path, nargs="+", required=True,
                   help="calibration recordings: bci-app --record folders (or MNE-readable files with marker annotations)")
    p.add_argument("--images", type=Path, required=True,
                   help="the images the markers name: the data folder the presenter showed (THINGS layout) or an image folder")
    p.add_argument("--out", type=Path, required=True, help="the new bundle folder (new or empty)")
    p.add_argument("--adapt", choices=ADAPT_PARTS, default="all",
                   help="what of the brain side to train: all of it, its last layer and projector (head), the "
                        "projector, or only a re-mixing of the input channels (input: linear and eegproject encoders) "
                        "(default all)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the brain side from random weights on the same data instead (a comparison)")
    p.add_argument("--epochs", type=int, default=40, help="at most this many epochs (default 40)")
    p.add_argument("--patience", type=int, default=10, help="stop after this many epochs without a better validation rank (default 10)")
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default 1e-4; 1e-3 with --from-scratch or --adapt input)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help=f"share of calibration concepts held out for validation, at least {MIN_VAL_CONCEPTS} "
                        f"(default 0.2); at least {MIN_FIT_TRIALS} trials must remain to fit")
    p.add_argument("--set", dest="image_set", choices=("train", "test"), default=None,
                   help="the image part numeric markers count in (default: as the recording says; label markers "
                        "need none)")
    p.add_argument("--weights", default=None, help="where to load the backbone weights from (default: as the bundle records)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let an hf: backbone whose folder ships its own model code run it (it runs with your rights)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder for image features (default: $SHALLOW_BCI_CACHE or ~/.cache/shallow-bci)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _cmd_adapt(args: argparse.Namespace) -> int:
    import json

    from .adapt import adapt_bundle
    from .progress import ProgressBars

    with ProgressBars() as progress:
        s = adapt_bundle(args.bundle, args.recording, args.images, args.out, adapt=args.adapt,
                         from_scratch=args.from_scratch, epochs=args.epochs, patience=args.patience, lr=args.lr,
                         batch_size=args.batch_size, val_fraction=args.val_fraction, seed=args.seed, device=args.device,
                         weights=args.weights, trust_remote_code=args.trust_remote_code, image_set=args.image_set,
                         cache=args.cache, overwrite=args.overwrite, progress=progress)
    if args.json:
        print(json.dumps({k: v for k, v in s.items() if k != "history"}, indent=2))
        return 0
    how = "from scratch" if s["from_scratch"] else f"adapted ({s['adapt']})"
    print(f"wrote {args.out}: {how} on {s['n_trials']} trials ({s['n_images']} images, {s['n_concepts']} concepts, "
          f"{s['minutes']:.1f} min in {len(s['recordings'])} recording(s)) in {s['seconds']:.0f} s")
    b, a = s["before"], s["after"]
    print(f"  validation on {s['n_val_concepts']} held-out concepts ({s['n_val']} trials, chance top-1 "
          f"{s['val_chance_top1']:.3f}):")
    print(f"    before: top-1 {b['top1']:.3f}  top-5 {b['top5']:.3f}  mean rank {b['rank']:.3f}  loss {b['loss']:.3f}")
    print(f"    after:  top-1 {a['top1']:.3f}  top-5 {a['top5']:.3f}  mean rank {a['rank']:.3f}  loss {a['loss']:.3f}  "
          f"(epoch {s['best_epoch']})")
    if s["best_epoch"] == 0:
        print("  no epoch beat the starting model on the held-out concepts: the new bundle keeps its weights")
    return 0


_SWEEP_OWN = ("data", "out", "subject", "backbone", "layer", "layers", "layer_search", "fusion", "fusion_layers", "seed")


def _add_sweep_parser(sub) -> None:
    from .config import FitConfig

    p = sub.add_parser(
        "sweep", help="train one model per layer (and backbone, subject, seed); table and plots",
        description="Sweep layers, backbones, subjects and seeds: one feature pass per backbone for all layers, "
                    "one training run per combination (in parallel processes with --jobs, or as Ray tasks with "
                    "--engine ray), then sweep.csv, "
                    "sweep.md and plots (top-1 vs relative depth with the final layer marked; top-1 vs "
                    "ln(parameters) across backbones with the correlation). Test accuracy is reported for "
                    "analysis; nothing is selected on it.",
    )
    p.add_argument("--data", type=Path, required=True, help=_FIT_HELP["data"])
    p.add_argument("--out", type=Path, required=True, help="sweep folder (one run folder per combination inside)")
    p.add_argument("--backbones", default=FitConfig.backbone, help="comma-separated backbone names (timm, or hf:FOLDER)")
    p.add_argument("--subjects", default="1", help="comma-separated subject numbers (default 1)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--layers", default="auto",
                   help="'all' blocks, 'auto' (~10 evenly spaced, as in the paper), or a list such as 2,4,6,final "
                        "(default auto; the final layer is included by all/auto)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    _add_engine_options(p)
    p.add_argument("--config", type=Path, default=None, help="TOML/JSON file of training defaults")
    p.add_argument("--overwrite", action="store_true",
                   help="train every run from the start and replace what its folder holds (without it, finished runs "
                        "of the same settings are kept, interrupted ones resume, and runs of other settings are refused)")
    _add_config_options(p, skip=_SWEEP_OWN)


def _add_reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="run the paper's protocol from a config file: every backbone, layer, subject, seed and mode",
        description="Run a protocol (a TOML/JSON file: data, backbones with their layers, subjects, seeds, intra and/or "
                    "inter, EEG and/or MEG, training settings; configs/reproduce/paper.toml is the paper's) as one "
                    "sweep, locally or on Ray, and write the paper-style table (per backbone: the layer chosen on "
                    "validation concepts and the final layer, test top-1 and top-5 as mean +- s.d. over subjects and "
                    "seeds) and the scaling plot (top-1 against ln parameters, with r). Run it again to complete an "
                    "interrupted protocol: finished runs are kept.")
    p.add_argument("--config", type=Path, required=True, help="the protocol file (TOML or JSON)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the protocol's out)")
    p.add_argument("--jobs", type=int, default=1, help="with --engine local: runs at a time, each in its own process (default 1)")
    _add_engine_options(p)
    p.add_argument("--overwrite", action="store_true", help="train every run again and replace what its folder holds")
    p.add_argument("--dry-run", action="store_true", help="print the runs it would make and the feature passes, and stop")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .progress import ProgressBars
    from .reproduce import load_protocol, plan_protocol, reproduce

    protocol = load_protocol(args.config, out=str(args.out) if args.out else None)
    if args.dry_run:
        runs, features = plan_protocol(protocol)
        groups: dict[tuple, list] = {}
        for r in runs:
            groups.setdefault((r.info["modality"], r.info["mode"], r.info["backbone"]), []).append(r)
        print(f"{len(runs)} runs, {len(features)} feature pass(es), into {protocol.out}")
        for (modality, mode, backbone), rs in groups.items():
            layers = ",".join(dict.fromkeys(str(r.info["layer"]) for r in rs))
            print(f"  {modality} {mode} {backbone} ({rs[0].info['n_params'] / 1e6:.1f} M parameters): {len(rs)} runs, "
                  f"layers {layers}")
        return 0
    with ProgressBars() as progress:
        summary = reproduce(protocol, engine=_engine(args), overwrite=args.overwrite, progress=progress)
    print((Path(protocol.out) / "reproduce.md").read_text())
    print(f"{sum(len(g['backbones']) for g in summary['groups'])} rows; every run: {Path(protocol.out) / 'reproduce.csv'}")
    return 0


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where the runs execute: 'local' (this machine, --jobs at a time) or 'ray' (each feature pass "
                        "and each run a Ray task, on a local Ray instance or the cluster at --address; needs "
                        "pip install 'shallow-bci[ray]'; the cache folder must be on storage every node sees) "
                        "(default local)")
    p.add_argument("--address", default="", help="with --engine ray: the Ray cluster to join (e.g. 'auto' on one of its "
                                                 "nodes, or ray://HEAD:10001); default: a local Ray instance")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="with --engine ray: CPUs each run asks for (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="with --engine ray: GPUs each run asks for; a fraction shares a GPU, e.g. 0.25 (default 0); "
                        "the feature passes then ask for one GPU each")
    p.add_argument("--feature-workers", type=int, default=1,
                   help="with --engine ray: Ray tasks each backbone's feature pass is split into (default 1)")


def _engine(args: argparse.Namespace):
    from .sweep import Engine

    return Engine(kind=args.engine, jobs=args.jobs, address=args.address, cpus_per_run=args.cpus_per_run,
                  gpus_per_run=args.gpus_per_run, feature_workers=args.feature_workers).check()


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name} must be comma-separated integers, got {text!r}") from None


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .config import FitConfig
    from .progress import ProgressBars
    from .sweep import sweep

    values = _config_values(args, skip=_SWEEP_OWN)
    values.update(data=str(args.data), out=str(args.out))
    base = FitConfig(**values).validate()
    with ProgressBars() as progress:
        rows = sweep(base, backbones=[b.strip() for b in args.backbones.split(",") if b.strip()],
                     subjects=_int_list(args.subjects, "--subjects"), seeds=_int_list(args.seeds, "--seeds"),
                     layers=args.layers, overwrite=args.overwrite, progress=progress, engine=_engine(args))
    print((Path(args.out) / "sweep.md").read_text())
    print(f"{len(rows)} runs; table: {Path(args.out) / 'sweep.csv'}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import pretrain_backbone
    from .progress import ProgressBars

    with ProgressBars() as progress:
        summary = pretrain_backbone(args.data, args.backbone, args.out, image_size=args.image_size, epochs=args.epochs,
                                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                                    color_jitter=args.color_jitter, progress=progress)
    print(f"pretrained {summary['backbone']} on {summary['images']} images of {summary['classes']} training concepts "
          f"in {summary['seconds']:.0f} s: training accuracy {summary['train_accuracy']:.3f}")
    print(f"weights: {summary['weights']}")
    print(f"use with: bci-train fit --data DIR --subject N --out RUN {summary['fit_options']}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .config import FitConfig
    from .fit import fit
    from .progress import ProgressBars

    values = _config_values(args)
    cfg = FitConfig(**values)
    with ProgressBars() as progress:
        metrics = fit(cfg, progress, overwrite=args.overwrite)
    _print_metrics(metrics, header=f"run {cfg.out}: layer {metrics['layer']}, validation top-1 {metrics['val_top1']:.3f}")
    return 0


def _print_metrics(m: dict, header: str) -> None:
    print(header)
    print(f"  {m['n_way']}-way zero-shot retrieval on {m['n_test_images']} test images (chance top-1 {m['chance_top1']:.3f})")
    print(f"  averaged {m['n_repetitions']} repetitions: top-1 {m['averaged']['top1']:.3f}  top-5 {m['averaged']['top5']:.3f}")
    print(f"  single trials:           top-1 {m['single_trial']['top1']:.3f}  top-5 {m['single_trial']['top5']:.3f}")
    if m.get("kway"):
        print("  k-way top-1 (averaged): " + ", ".join(f"{k}-way {v:.3f}" for k, v in m["kway"].items()))
    for cond, name in (("single_trial", "single trials"), ("averaged", "averaged")):
        c = (m.get("confidence") or {}).get(cond)
        if c:
            print(f"  confidence, {name}: expected calibration error {c['before']['ece']:.3f} at the training temperature, "
                  f"{c['after']['ece']:.3f} calibrated (mean confidence {c['after']['mean_confidence']:.3f}, "
                  f"top-1 {c['after']['top1']:.3f})")
    for w in m.get("windows") or []:
        print(f"  first {w['end']:g} s: top-1 averaged {w['averaged']['top1']:.3f}, single trials {w['single_trial']['top1']:.3f}")


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .fit import evaluate_bundle

    metrics = evaluate_bundle(args.bundle, args.data, args.subject, source=args.source, device=args.device,
                              cache=args.cache)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics, header=f"bundle {args.bundle} on subject {args.subject}")
    return 0


def _cmd_retarget(args: argparse.Namespace) -> int:
    from .bundle import retarget_bundle

    if not args.images.is_dir():
        raise MissingFileError(f"--images: {args.images} is not a folder")
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())
    if not paths:
        raise UsageError(f"--images: no .jpg/.jpeg/.png files in {args.images}")
    out = retarget_bundle(args.bundle, args.out, paths, weights=args.weights, device=args.device,
                          trust_remote_code=args.trust_remote_code)
    print(f"wrote {out} with a gallery of {len(paths)} images")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .progress import ProgressBars
    from .synth import generate

    if args.subjects is not None and args.subjects < 1:
        raise UsageError(f"--subjects must be at least 1, got {args.subjects}")
    from .synth.dataset import VARIANT_FOLDERS

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants or [""]:
        if v not in VARIANT_FOLDERS:
            raise UsageError(f"--variants: unknown {v!r} (choose from {', '.join(VARIANT_FOLDERS)})")
    preset = args.preset
    if args.snr is not None:
        from dataclasses import replace

        from .synth import PRESETS

        if not args.snr > 0 or args.snr != args.snr or args.snr == float("inf"):
            raise UsageError(f"--snr must be a positive number, got {args.snr}")
        preset = replace(PRESETS[args.preset], snr=args.snr)
    with ProgressBars() as progress:
        summary = generate(args.out, preset, subjects=args.subjects, seed=args.seed, variants=variants,
                           meg=args.meg, progress=progress)
    print(f"wrote a synthetic THINGS-like data set to {args.out} in {summary['seconds']:.0f} s "
          f"(preset {args.preset}, seed {args.seed})")
    return _cmd_info(argparse.Namespace(data=args.out))


def _cmd_backbones(args: argparse.Namespace) -> int:
    import json

    from .vision import describe_backbone

    rows = [describe_backbone(name, trust_remote_code=args.trust_remote_code and name.startswith("hf:"), flops=True)
            for name in args.names]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'backbone':<{width}}  provider  kind  layers  parameters  input    GFLOPs/image")
    for r in rows:
        size = "x".join(str(v) for v in r["input_size"][1:])
        gflops = "?" if r["gflops"] is None else f"{r['gflops']:.1f}"
        print(f"{r['name']:<{width}}  {r['provider']:<8}  {r['kind']:<4}  {r['n_layers']:>6}  {r['n_params'] / 1e6:>9.1f}M"
              f"  {size:<7}  {gflops:>12}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .data import ThingsEEG2
    from .data.describe import describe

    print(describe(ThingsEEG2(args.data)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bci-train``; returns the exit code."""
    from .errors import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    commands = {"synth": _cmd_synth, "info": _cmd_info, "fit": _cmd_fit, "eval": _cmd_eval, "sweep": _cmd_sweep,
                "pretrain": _cmd_pretrain, "retarget": _cmd_retarget, "adapt": _cmd_adapt, "backbones": _cmd_backbones,
                "features": _cmd_features, "reproduce": _cmd_reproduce}
    return run_command(f"bci-train {args.command}", lambda: commands[args.command](args), verbose=args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
