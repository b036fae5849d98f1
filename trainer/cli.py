"""``bci-train``: the offline command line (data set generation and inspection for now)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

logger = logging.getLogger("trainer")


def _build_parser() -> argparse.ArgumentParser:
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
                   help="size: tiny (seconds, for tests), small (the demo), full (THINGS-EEG2 sizes; "
                        "see docs/data.md for time and disk). Default: tiny")
    p.add_argument("--subjects", type=int, default=None, help="number of subjects (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--variants", default="official",
                   help=f"comma-separated preprocessed variants to write: {', '.join(VARIANT_FOLDERS)} "
                        "(default: official)")
    p.add_argument("--meg", action="store_true", help="also write THINGS-MEG-like preprocessed_P{n}-epo.fif files")
    p.add_argument("--snr", type=float, default=None,
                   help="scale of the informative brain responses (default 2.0; 1.0 makes single trials about "
                        "as hard as in real THINGS-EEG2, see docs/data.md)")

    p = sub.add_parser("info", help="show what a THINGS-EEG2 folder (real or synthetic) contains",
                       description="List subjects, raw sessions, preprocessed files, images and MEG files of a data folder.")
    p.add_argument("data", type=Path, help="data folder")
    return parser


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .synth import generate

    if args.subjects is not None and args.subjects < 1:
        raise ValueError(f"--subjects must be at least 1, got {args.subjects}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    preset = args.preset
    if args.snr is not None:
        from dataclasses import replace

        from .synth import PRESETS

        if not args.snr > 0 or args.snr != args.snr or args.snr == float("inf"):
            raise ValueError(f"--snr must be a positive number, got {args.snr}")
        preset = replace(PRESETS[args.preset], snr=args.snr)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="", leave=False, file=sys.stderr,
                                     disable=None, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    summary = generate(args.out, preset, subjects=args.subjects, seed=args.seed, variants=variants,
                       meg=args.meg, progress=progress)
    for bar in bars.values():
        bar.close()
    print(f"wrote a synthetic THINGS-like data set to {args.out} in {summary['seconds']:.0f} s "
          f"(preset {args.preset}, seed {args.seed})")
    return _cmd_info(argparse.Namespace(data=args.out))


def _cmd_info(args: argparse.Namespace) -> int:
    from .data import ThingsEEG2
    from .data.describe import describe

    print(describe(ThingsEEG2(args.data)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bci-train``; returns the exit code."""
    from .errors import BCIError

    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    commands = {"synth": _cmd_synth, "info": _cmd_info}
    try:
        return commands[args.command](args)
    except (BCIError, ValueError, TypeError, FileNotFoundError, PermissionError) as err:
        print(f"bci-train {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"bci-train {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bci-train {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
