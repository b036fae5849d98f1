"""A readable summary of a THINGS-EEG2 folder (``bci-train info``)."""

from __future__ import annotations

import json

import numpy as np

from ..errors import DataFormatError
from .safe_npy import load_npy_dict
from .things_eeg2 import CATCH_CODE, PREPROCESSED_KEYS, RAW_KEYS, ThingsEEG2, check_preprocessed_dict, check_raw_dict

__all__ = ["describe"]


def describe(ds: ThingsEEG2) -> str:
    """Summarise images, subjects, raw sessions, preprocessed files and MEG files.

    Reads headers and the stim row only (large arrays stay memory-mapped)."""
    lines = [f"data folder: {ds.root}"]
    synth = ds.root / "synth.json"
    if synth.is_file():
        try:
            info = json.loads(synth.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise DataFormatError(synth, None, f"unreadable ({type(err).__name__}: {str(err)[:200]})") from None
        if not isinstance(info, dict) or not isinstance(info.get("config", {}), dict):
            raise DataFormatError(synth, None, "must hold a JSON object with a 'config' object")
        lines.append(f"  synthetic (preset {info.get('preset')}, seed {info.get('config', {}).get('seed')}, units {info.get('units')})")
    for part in ("training", "test"):
        images = ds.image_set(part)
        example = f"  (e.g. {images.path(0).relative_to(ds.root)})" if len(images) else ""
        lines.append(f"  {part} images: {len(images)} in {images.n_concepts} concepts{example}")
    subjects = ds.subjects()
    lines.append(f"  subjects: {', '.join(f'sub-{s:02d}' for s in subjects) or 'none'}")
    for s in subjects:
        lines.append(f"  sub-{s:02d}")
        raw_dir = ds.root / "raw_data" / f"sub-{s:02d}"
        for path in sorted(raw_dir.glob("ses-*/raw_eeg_*.npy")):
            data, names, _, sfreq = check_raw_dict(load_npy_dict(path, required=RAW_KEYS), path)
            stim = np.asarray(data[names.index("stim")])
            onsets = np.flatnonzero((stim != 0) & (np.concatenate([[0], stim[:-1]]) != stim))
            codes = stim[onsets]
            n_catch = int((codes == CATCH_CODE).sum())
            lines.append(
                f"    raw {path.relative_to(ds.root)}: {data.shape[0] - 1} channels + stim, {sfreq:g} Hz, "
                f"{data.shape[1] / sfreq / 60:.1f} min, {len(codes) - n_catch} image trials, {n_catch} catch"
            )
        for folder in sorted(p.name for p in ds.root.glob("preprocessed_data*") if p.is_dir()):
            for path in sorted((ds.root / folder / f"sub-{s:02d}").glob("preprocessed_eeg_*.npy")):
                data, _, times, rate = check_preprocessed_dict(load_npy_dict(path, required=PREPROCESSED_KEYS), path)
                shape = data.shape
                lines.append(
                    f"    {path.relative_to(ds.root)}: {shape[0]} images x {shape[1]} repetitions x "
                    f"{shape[2]} channels x {shape[3]} times ({rate:.0f} Hz, {times[0]:+.2f}..{times[-1]:+.3f} s)"
                )
    meg = sorted(ds.root.glob("**/preprocessed_P*-epo.fif"))
    for path in meg:
        lines.append(f"  MEG: {path.relative_to(ds.root)} ({path.stat().st_size / 1e6:.0f} MB)")
    return "\n".join(lines)
